/* See tiny-bert.h. Weights are small deterministic pseudo-random values (LayerNorm gains 1), so
 * a forward gives finite outputs; tiny-gguf.c owns every buffer the writer reads until the file
 * is written. Tensors are added in the shapes dsa_model_save_variant() gives them. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "basic/macro.h"
#include "engine/gguf.h"
#include "tiny-bert.h"
#include "tiny-gguf.h"

struct tb {
        struct dsa_test_tiny_gguf *g;
        const struct dsa_test_tiny_bert *o;
};

/* A vector (ne1 == 0) or an (ne1, ne0) row-major matrix, as the saver adds them. */
static int tb_add(struct tb *t, const char *name, enum dsa_type type, uint64_t ne0, uint64_t ne1, const void *data) {
        const uint64_t ne[2] = { ne0, ne1 ? ne1 : 1 };

        return dsa_gguf_writer_add_tensor(t->g->w, name, type, ne1 ? 2 : 1, ne, data);
}

/* fp32 -> half / bfloat16 by truncation: the values here are small and need no rounding care. */
static uint16_t to_f16(float f) {
        uint32_t x, ax;
        uint16_t sign;

        memcpy(&x, &f, 4);
        sign = (uint16_t) ((x >> 16) & 0x8000u);
        ax = x & 0x7fffffffu;
        if (ax < 0x38800000u) /* below the smallest normal half: flush to zero */
                return sign;
        return sign | (uint16_t) ((ax - 0x38000000u) >> 13);
}

static uint16_t to_bf16(float f) {
        uint32_t x;

        memcpy(&x, &f, 4);
        return (uint16_t) (x >> 16);
}

/* A vector of n values: gain (all 1), else small random ones. */
static int tb_vector(struct tb *t, const char *name, size_t n, bool gain) {
        float *v = dsa_test_tiny_gguf_alloc(t->g, n * sizeof(float));

        if (!v)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                v[i] = gain ? 1.0f : 0.1f * dsa_test_tiny_gguf_rand(t->g);
        return tb_add(t, name, DSA_TYPE_F32, n, 0, v);
}

/* A (rows, cols) matrix "<base>.weight" of type, with "<base>.scale" (and ".input_scale") for
 * I8; zero_odd zeroes every odd input column, so 16 x 1 blocks are empty for the sparse kernel.
 * A matrix of no rows (a layer pruned to nothing) is stored as the loader and saver take it: a
 * vector of cols values. */
static int tb_matrix(struct tb *t, const char *base, enum dsa_type type, size_t rows, size_t cols, bool zero_odd,
                     bool input_scale) {
        const size_t n = (rows ? rows : 1) * cols;
        char name[128];
        int r;

        snprintf(name, sizeof(name), "%s.weight", base);
        if (type == DSA_TYPE_I8) {
                int8_t *q = dsa_test_tiny_gguf_alloc(t->g, n);
                float *s = dsa_test_tiny_gguf_alloc(t->g, rows * sizeof(float));
                float *act = dsa_test_tiny_gguf_alloc(t->g, sizeof(float));

                if (!q || !s || !act)
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++)
                        q[i] = (int8_t) (dsa_test_tiny_gguf_rand(t->g) * 254.0f);
                for (size_t i = 0; i < rows; i++)
                        s[i] = 0.5f / 127.0f;
                *act = 4.0f / 127.0f;
                if ((r = tb_add(t, name, DSA_TYPE_I8, cols, rows, q)) < 0)
                        return r;
                snprintf(name, sizeof(name), "%s.scale", base);
                if ((r = tb_add(t, name, DSA_TYPE_F32, rows, 0, s)) < 0)
                        return r;
                if (!input_scale)
                        return 0;
                snprintf(name, sizeof(name), "%s.input_scale", base);
                return tb_add(t, name, DSA_TYPE_F32, 1, 0, act);
        }

        float *w = dsa_test_tiny_gguf_alloc(t->g, n * sizeof(float));
        if (!w)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                w[i] = zero_odd && (i % cols) % 2 ? 0.0f : dsa_test_tiny_gguf_rand(t->g);
        if (type == DSA_TYPE_F32)
                return tb_add(t, name, type, cols, rows, w);
        uint16_t *h = dsa_test_tiny_gguf_alloc(t->g, n * sizeof(uint16_t));
        if (!h)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                h[i] = type == DSA_TYPE_F16 ? to_f16(w[i]) : to_bf16(w[i]);
        return tb_add(t, name, type, cols, rows, h);
}

static int tb_tokenizer(struct tb *t) {
        /* llama.cpp's convention: "▁" (W) starts a word, other normal tokens continue one. */
#define W "\xe2\x96\x81"
        static const char *const tokens[DSA_TEST_TINY_V] = {
                "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", W "the", W "a", W "movie", W "great", W "bad", W "is",
                "s", "ing", W "not", W "good", W "film",
        };
#undef W
        struct dsa_gguf_writer *w = t->g->w;
        int32_t types[DSA_TEST_TINY_V];
        int r = 0;

        for (size_t i = 0; i < DSA_TEST_TINY_V; i++)
                types[i] = i == 1 ? 2 : i < 5 ? 3 : 1; /* unknown, control, normal */
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "bert");
        r = r < 0 ? r : dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, DSA_TEST_TINY_V);
        r = r < 0 ? r : dsa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", DSA_GGUF_INT32, types,
                                                DSA_TEST_TINY_V);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", 0);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 1);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.cls_token_id", 2);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.seperator_token_id", 3);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.mask_token_id", 4);
        return r;
}

static int tb_keys(struct tb *t) {
        struct dsa_gguf_writer *w = t->g->w;
        static const char *const labels[DSA_TEST_TINY_LABELS] = { "negative", "positive" };
        const struct dsa_test_tiny_bert *o = t->o;
        int r = 0;

        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "general.architecture", "bert");
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.context_length", DSA_TEST_TINY_CTX);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.embedding_length", DSA_TEST_TINY_C);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.feed_forward_length", DSA_TEST_TINY_F);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.block_count", DSA_TEST_TINY_L);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.attention.head_count", DSA_TEST_TINY_H);
        r = r < 0 ? r : dsa_gguf_writer_set_f32(w, "bert.attention.layer_norm_epsilon", 1e-12f);
        r = r < 0 ? r : dsa_gguf_writer_set_bool(w, "bert.attention.causal", false);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.pooling_type", 4); /* rank: pooler + classifier */
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "dsa.bert.hidden_act", o->sparse ? "gelu_tanh" : "gelu");
        r = r < 0 ? r : dsa_gguf_writer_set_arr_str(w, "bert.classifier.output_labels", labels, DSA_TEST_TINY_LABELS);
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "dsa.variant.method", "fuzz seed");
        if (r >= 0 && o->heads)
                r = dsa_gguf_writer_set_arr(w, "dsa.bert.head_count_per_layer", DSA_GGUF_UINT32, o->heads, o->n_heads);
        if (r >= 0 && o->ffs)
                r = dsa_gguf_writer_set_arr(w, "dsa.bert.feed_forward_length_per_layer", DSA_GGUF_UINT32, o->ffs,
                                            o->n_ffs);
        if (r >= 0 && o->token_keep)
                r = dsa_gguf_writer_set_arr(w, "dsa.prune.token_keep", DSA_GGUF_FLOAT32, o->token_keep,
                                            o->n_token_keep);
        if (r >= 0 && o->sparse)
                r = dsa_gguf_writer_set_bool(w, "dsa.prune.sparse_kernel", true);
        if (r >= 0 && o->tokenizer)
                r = tb_tokenizer(t);
        return r;
}

static int tb_tensors(struct tb *t) {
        const struct dsa_test_tiny_bert *o = t->o;
        const size_t V = DSA_TEST_TINY_V, C = DSA_TEST_TINY_C, HS = C / DSA_TEST_TINY_H;
        const enum dsa_type wt = o->wtype, et = o->etype;
        char base[64], name[96];
        int r;

        /* I8: with "token_embd.scale", one per row. */
        if ((r = tb_matrix(t, "token_embd", et, V, C, false, false)) < 0 ||
            (r = tb_matrix(t, "token_types", DSA_TYPE_F32, 2, C, false, false)) < 0 ||
            (r = tb_matrix(t, "position_embd", DSA_TYPE_F32, DSA_TEST_TINY_CTX, C, false, false)) < 0 ||
            (r = tb_vector(t, "token_embd_norm.weight", C, true)) < 0 ||
            (r = tb_vector(t, "token_embd_norm.bias", C, false)) < 0)
                return r;

        for (size_t i = 0; i < DSA_TEST_TINY_L; i++) {
                const size_t NH = o->heads && o->n_heads == DSA_TEST_TINY_L ? o->heads[i] : DSA_TEST_TINY_H;
                const size_t A = NH * HS, FL = o->ffs && o->n_ffs == DSA_TEST_TINY_L ? o->ffs[i] : DSA_TEST_TINY_F;
                static const char *const qkv[] = { "attn_q", "attn_k", "attn_v" };

                for (size_t j = 0; j < 3; j++) {
                        snprintf(base, sizeof(base), "blk.%zu.%s", i, qkv[j]);
                        if ((r = tb_matrix(t, base, wt, A, C, o->sparse, o->input_scale)) < 0)
                                return r;
                }
                snprintf(base, sizeof(base), "blk.%zu.attn_output", i);
                if ((r = tb_matrix(t, base, wt, C, A, o->sparse, o->input_scale)) < 0)
                        return r;
                snprintf(base, sizeof(base), "blk.%zu.ffn_up", i);
                if ((r = tb_matrix(t, base, wt, FL, C, o->sparse, o->input_scale)) < 0)
                        return r;
                snprintf(base, sizeof(base), "blk.%zu.ffn_down", i);
                if ((r = tb_matrix(t, base, wt, C, FL, o->sparse, o->input_scale)) < 0)
                        return r;

                const struct {
                        const char *name;
                        size_t n;
                        bool gain;
                } vec[] = {
                        { "attn_q.bias", A, false },  { "attn_k.bias", A, false },
                        { "attn_v.bias", A, false },  { "attn_output.bias", C, false },
                        { "attn_output_norm.weight", C, true }, { "attn_output_norm.bias", C, false },
                        { "ffn_up.bias", FL, false }, { "ffn_down.bias", C, false },
                        { "layer_output_norm.weight", C, true }, { "layer_output_norm.bias", C, false },
                };
                for (size_t j = 0; j < ELEMENTSOF(vec); j++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s", i, vec[j].name);
                        if ((r = tb_vector(t, name, vec[j].n, vec[j].gain)) < 0)
                                return r;
                }
                snprintf(name, sizeof(name), "blk.%zu.token_score.weight", i);
                if (o->token_score && o->token_keep && i < o->n_token_keep && o->token_keep[i] < 1.0f &&
                    (r = tb_vector(t, name, C + 1, false)) < 0)
                        return r;
        }
        if ((r = tb_matrix(t, "cls", DSA_TYPE_F32, C, C, false, false)) < 0 ||
            (r = tb_vector(t, "cls.bias", C, false)) < 0 ||
            (r = tb_matrix(t, "cls.output", DSA_TYPE_F32, DSA_TEST_TINY_LABELS, C, false, false)) < 0 ||
            (r = tb_vector(t, "cls.output.bias", DSA_TEST_TINY_LABELS, false)) < 0)
                return r;
        return 0;
}

static int tb_fill(struct dsa_test_tiny_gguf *g, const void *userdata) {
        struct tb t = { .g = g, .o = userdata };
        int r = tb_keys(&t);

        return r < 0 ? r : tb_tensors(&t);
}

int dsa_test_tiny_bert_write(const struct dsa_test_tiny_bert *o, const char *path) {
        if (!o || !path)
                return -EINVAL;
        return dsa_test_tiny_gguf_write(path, 12345u, tb_fill, o);
}
