/* See tiny-llama.h. Weights are small deterministic pseudo-random values (RMSNorm gains 1), so a
 * forward gives finite logits; tiny-gguf.c owns every buffer the writer reads until the file is
 * written. Keys and tensors are the ones llama.cpp's converter and dsa_model_save() write, the
 * attention variant's as dsa__att_to_gguf() writes them, spelled out here so that the reader is
 * checked against the format rather than against our own writer. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "engine/gguf.h"
#include "kernels/kernels.h"
#include "tiny-gguf.h"
#include "tiny-llama.h"

#define N_BYTES 256
#define N_SPECIAL 2 /* BOS, EOS; then reserved tokens up to DSA_TEST_LLAMA_V_TOK */

/* Byte-level BPE merges ("Ġ" is the space's symbol), over "hello world". */
#define G "\xc4\xa0"
static const char *const merges[] = { "h e", "l l", "ll o", "he llo", G " w", "o r", G "w or", "l d", G "wor ld" };
static const char *const merged[] = { "he", "ll", "llo", "hello", G "w", "or", G "wor", "ld", G "world" };
#undef G

struct tl {
        struct dsa_test_tiny_gguf *g;
        const struct dsa_test_tiny_llama *o;
};

uint32_t dsa_test_tiny_llama_n_vocab(const struct dsa_test_tiny_llama *o) {
        return o && o->tokenizer ? DSA_TEST_LLAMA_V_TOK : DSA_TEST_LLAMA_V;
}

/* n values: all 1 (a norm gain), else scale times random ones; F16 when type says so. ne[0] is
 * innermost, as in the file. */
static int tl_tensor(struct tl *t, const char *name, enum dsa_type type, uint32_t n_dims, const uint64_t *ne,
                     float scale, bool gain) {
        size_t n = 1;

        for (uint32_t d = 0; d < n_dims; d++)
                n *= ne[d];
        float *v = dsa_test_tiny_gguf_alloc(t->g, n * sizeof(float));
        if (!v)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                v[i] = gain ? 1.0f : scale * dsa_test_tiny_gguf_rand(t->g);
        if (type == DSA_TYPE_F32)
                return dsa_gguf_writer_add_tensor(t->g->w, name, type, n_dims, ne, v);
        uint16_t *h = dsa_test_tiny_gguf_alloc(t->g, n * sizeof(uint16_t));
        if (!h)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                h[i] = dsa_f32_to_f16(v[i]);
        return dsa_gguf_writer_add_tensor(t->g->w, name, type, n_dims, ne, h);
}

/* A (rows, cols) int8 matrix "X.weight" and its row scales "X.scale": random values quantized
 * per row, symmetric, scale = max |row| / 127 (the file format of linear.h's Q8 matrices). */
static int tl_matrix_i8(struct tl *t, const char *name, size_t rows, size_t cols) {
        const uint64_t ne[2] = { cols, rows }, sne[1] = { rows };
        int8_t *q = dsa_test_tiny_gguf_alloc(t->g, rows * cols);
        float *s = dsa_test_tiny_gguf_alloc(t->g, rows * sizeof(float)), *v = malloc(cols * sizeof(float));
        char sname[96];
        int r;

        if (!q || !s || !v) {
                free(v);
                return -ENOMEM;
        }
        for (size_t i = 0; i < rows; i++) {
                float max = 0.0f;
                for (size_t c = 0; c < cols; c++)
                        v[c] = dsa_test_tiny_gguf_rand(t->g), max = fmaxf(max, fabsf(v[c]));
                s[i] = max / 127.0f;
                for (size_t c = 0; c < cols; c++)
                        q[i * cols + c] = (int8_t) (s[i] > 0 ? lrintf(v[c] / s[i]) : 0);
        }
        free(v);
        snprintf(sname, sizeof(sname), "%.*s.scale", (int) (strlen(name) - strlen(".weight")), name);
        if ((r = dsa_gguf_writer_add_tensor(t->g->w, name, DSA_TYPE_I8, 2, ne, q)) < 0)
                return r;
        return dsa_gguf_writer_add_tensor(t->g->w, sname, DSA_TYPE_F32, 1, sne, s);
}

/* A (rows, cols) matrix: ne = { cols, rows }. */
static int tl_matrix(struct tl *t, const char *name, size_t rows, size_t cols) {
        const uint64_t ne[2] = { cols, rows };
        const enum dsa_type type = t->o->wtype == DSA_TYPE_F16 ? DSA_TYPE_F16 : DSA_TYPE_F32;

        if (t->o->wtype == DSA_TYPE_I8)
                return tl_matrix_i8(t, name, rows, cols);
        return tl_tensor(t, name, type, 2, ne, 1.0f, false);
}

static int tl_norm(struct tl *t, const char *name) {
        const uint64_t ne[1] = { DSA_TEST_LLAMA_C };

        return tl_tensor(t, name, DSA_TYPE_F32, 1, ne, 0.0f, true);
}

/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the others for
 * U+0100 upwards in byte order; as UTF-8 into s (3 bytes with the NUL). */
static void byte_symbol(unsigned b, char s[3]) {
        unsigned cp = b, n = 0;

        if (!((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff))) {
                for (unsigned x = 0; x < b; x++)
                        if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff)))
                                n++;
                cp = 0x100 + n;
        }
        if (cp < 0x80) {
                s[0] = (char) cp, s[1] = 0;
                return;
        }
        s[0] = (char) (0xc0 | (cp >> 6));
        s[1] = (char) (0x80 | (cp & 0x3f));
        s[2] = 0;
}

/* Tokens 0..255 the byte symbols, then the merges' results, BOS, EOS, and reserved control
 * tokens up to DSA_TEST_LLAMA_V_TOK, as Llama 3 lays its vocabulary out. */
static int tl_tokenizer(struct tl *t) {
        struct dsa_gguf_writer *w = t->g->w;
        const size_t V = DSA_TEST_LLAMA_V_TOK, NM = ELEMENTSOF(merges);
        const char **tokens = dsa_test_tiny_gguf_alloc(t->g, V * sizeof(char *));
        char *syms = dsa_test_tiny_gguf_alloc(t->g, N_BYTES * 3), *reserved = dsa_test_tiny_gguf_alloc(t->g, V * 32);
        int32_t *types = dsa_test_tiny_gguf_alloc(t->g, V * sizeof(int32_t));
        int r = 0;

        _Static_assert(N_BYTES + ELEMENTSOF(merges) == DSA_TEST_LLAMA_BOS, "BOS follows the merges");
        if (!tokens || !syms || !reserved || !types)
                return -ENOMEM;
        for (size_t i = 0; i < V; i++) {
                types[i] = 1; /* normal */
                if (i < N_BYTES) {
                        byte_symbol((unsigned) i, syms + 3 * i);
                        tokens[i] = syms + 3 * i;
                } else if (i < N_BYTES + NM)
                        tokens[i] = merged[i - N_BYTES];
                else {
                        types[i] = 3; /* control */
                        if (i == DSA_TEST_LLAMA_BOS)
                                tokens[i] = "<|begin_of_text|>";
                        else if (i == DSA_TEST_LLAMA_EOS)
                                tokens[i] = "<|end_of_text|>";
                        else {
                                snprintf(reserved + 32 * i, 32, "<|reserved_special_token_%zu|>",
                                         i - N_BYTES - NM - N_SPECIAL);
                                tokens[i] = reserved + 32 * i;
                        }
                }
        }
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "tokenizer.ggml.pre", "llama-bpe");
        r = r < 0 ? r : dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, V);
        r = r < 0 ? r : dsa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", DSA_GGUF_INT32, types, V);
        r = r < 0 ? r : dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, NM);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", DSA_TEST_LLAMA_BOS);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", DSA_TEST_LLAMA_EOS);
        r = r < 0 ? r : dsa_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
        return r;
}

#define KEY "dsa.attention."

static int tl_attention(struct tl *t) {
        struct dsa_gguf_writer *w = t->g->w;
        static const char *const kinds[] = {
                [DSA_ATT_LOCAL] = "local", [DSA_ATT_FIXED] = "fixed", [DSA_ATT_LINEAR] = "linear",
                [DSA_ATT_DSA] = "dsa",
        };
        const struct dsa_test_tiny_llama *o = t->o;
        const bool fitted = o->att == DSA_ATT_DSA && !o->heuristic;
        int r = 0;

        if (o->att == DSA_ATT_DENSE)
                return 0;
        if ((unsigned) o->att >= ELEMENTSOF(kinds))
                return -EINVAL;
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, KEY "kind", kinds[o->att]);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, KEY "block", DSA_TEST_LLAMA_BLOCK);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, KEY "window", 2);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, KEY "global", 1);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, KEY "random", 1);
        r = r < 0 ? r : dsa_gguf_writer_set_u64(w, KEY "seed", 7);
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, KEY "select", "mass");
        r = r < 0 ? r : dsa_gguf_writer_set_f32(w, KEY "mass", 0.9f);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, KEY "count", 0);
        r = r < 0 ? r : dsa_gguf_writer_set_f32(w, KEY "fraction", 0.5f);
        r = r < 0 ? r : dsa_gguf_writer_set_bool(w, KEY "heuristic", o->att == DSA_ATT_DSA && o->heuristic);
        r = r < 0 ? r : dsa_gguf_writer_set_bool(w, KEY "oracle", false);
        if (o->summary)
                r = r < 0 ? r : dsa_gguf_writer_set_bool(w, KEY "summary", true);
        if (fitted && o->token) {
                r = r < 0 ? r : dsa_gguf_writer_set_bool(w, KEY "token", true);
                r = r < 0 ? r : dsa_gguf_writer_set_u32(w, KEY "stride", 2);
        }
        if (r >= 0 && fitted)
                r = dsa_gguf_writer_set_u32(w, KEY "scorer_rank", DSA_TEST_LLAMA_RANK);
        return r;
}

static int tl_keys(struct tl *t) {
        struct dsa_gguf_writer *w = t->g->w;
        const struct dsa_test_tiny_llama *o = t->o;
        int r = 0;

        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "general.architecture", "llama");
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "general.name", "tiny-llama");
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "general.file_type", o->wtype == DSA_TYPE_F16 ? 1 : o->wtype == DSA_TYPE_I8 ? 7 : 0);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.context_length", DSA_TEST_LLAMA_CTX);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.embedding_length", DSA_TEST_LLAMA_C);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.block_count", DSA_TEST_LLAMA_L);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.feed_forward_length", DSA_TEST_LLAMA_F);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.attention.head_count", DSA_TEST_LLAMA_H);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.attention.head_count_kv", DSA_TEST_LLAMA_KV);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.attention.key_length", DSA_TEST_LLAMA_HS);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.attention.value_length", DSA_TEST_LLAMA_HS);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.rope.dimension_count", DSA_TEST_LLAMA_HS);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "llama.vocab_size", dsa_test_tiny_llama_n_vocab(o));
        r = r < 0 ? r : dsa_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
        r = r < 0 ? r : dsa_gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f);
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "dsa.variant.method", "fuzz seed");
        r = r < 0 ? r : tl_attention(t);
        if (r >= 0 && o->tokenizer)
                r = tl_tokenizer(t);
        return r;
}

static int tl_tensors(struct tl *t) {
        const struct dsa_test_tiny_llama *o = t->o;
        const size_t V = dsa_test_tiny_llama_n_vocab(o), C = DSA_TEST_LLAMA_C, F = DSA_TEST_LLAMA_F;
        const size_t NH = DSA_TEST_LLAMA_H, NKV = DSA_TEST_LLAMA_KV, HS = DSA_TEST_LLAMA_HS;
        char name[96];
        int r;

        if ((r = tl_matrix(t, "token_embd.weight", V, C)) < 0 || (r = tl_norm(t, "output_norm.weight")) < 0 ||
            (o->untied && (r = tl_matrix(t, "output.weight", V, C)) < 0))
                return r;
        for (size_t i = 0; i < DSA_TEST_LLAMA_L; i++) {
                const struct {
                        const char *name;
                        size_t rows, cols; /* 0 rows: a norm gain */
                } parts[] = {
                        { "attn_norm", 0, C },      { "attn_q", NH * HS, C }, { "attn_k", NKV * HS, C },
                        { "attn_v", NKV * HS, C },  { "attn_output", C, NH * HS }, { "ffn_norm", 0, C },
                        { "ffn_gate", F, C },       { "ffn_up", F, C },       { "ffn_down", C, F },
                };
                for (size_t j = 0; j < ELEMENTSOF(parts); j++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s.weight", i, parts[j].name);
                        r = parts[j].rows ? tl_matrix(t, name, parts[j].rows, parts[j].cols) : tl_norm(t, name);
                        if (r < 0)
                                return r;
                }
                if (o->att != DSA_ATT_DSA || o->heuristic)
                        continue;
                const uint64_t wne[3] = { HS, DSA_TEST_LLAMA_RANK, NH }, bne[2] = { DSA_ATT_NBINS, NH };
                snprintf(name, sizeof(name), "blk.%zu.dsa_scorer_q.weight", i);
                if ((r = tl_tensor(t, name, DSA_TYPE_F32, 3, wne, 1.0f, false)) < 0)
                        return r;
                snprintf(name, sizeof(name), "blk.%zu.dsa_scorer_k.weight", i);
                if ((r = tl_tensor(t, name, DSA_TYPE_F32, 3, wne, 1.0f, false)) < 0)
                        return r;
                snprintf(name, sizeof(name), "blk.%zu.dsa_scorer_bias.weight", i);
                if ((r = tl_tensor(t, name, DSA_TYPE_F32, 2, bne, 1.0f, false)) < 0)
                        return r;
        }
        return 0;
}

static int tl_fill(struct dsa_test_tiny_gguf *g, const void *userdata) {
        struct tl t = { .g = g, .o = userdata };
        int r = tl_keys(&t);

        return r < 0 ? r : tl_tensors(&t);
}

int dsa_test_tiny_llama_write(const struct dsa_test_tiny_llama *o, const char *path) {
        if (!o || !path || (o->wtype != DSA_TYPE_F32 && o->wtype != DSA_TYPE_F16 && o->wtype != DSA_TYPE_I8))
                return -EINVAL;
        return dsa_test_tiny_gguf_write(path, 4242u, tl_fill, o);
}
