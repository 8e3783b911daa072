/* Llama decoder weights: config checks, the loader shared by the Hugging Face and GGUF importers
 * (llama.cpp's tensor names and Q/K layout, see llama.h), the rotary tables, and writing the
 * model back as a GGUF llama.cpp reads.
 *
 * llama.cpp's Llama convention (gguf-py constants.py, llama-arch.cpp): token_embd, output_norm,
 * output (absent: tied to token_embd), blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
 * ffn_norm, ffn_gate, ffn_up, ffn_down}; keys llama.{context_length, embedding_length,
 * block_count, feed_forward_length, attention.head_count, attention.head_count_kv,
 * attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count, vocab_size}.
 * Matrices stored F16/BF16 stay so; I8 ones (a variant of ours: dsactl optimize --quant int8)
 * come with "<name>.scale" per row, as in the BERT files (bert-load.c), and stay int8; the rest
 * are read as fp32. llama.cpp itself does not read the I8 variants. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "gguf.h"
#include "kernels/kernels.h"
#include "llama.h"

int dsa__llama_config_check(const struct dsa_llama_config *c) {
        if (c->n_vocab == 0 || c->n_embd == 0 || c->n_head == 0 || c->n_head_kv == 0 || c->n_ff == 0 ||
            c->n_layer == 0 || c->n_ctx == 0 || c->head_dim == 0)
                return dsa__error(-EBADMSG, "llama config: a size is zero");
        if (c->n_vocab > (1u << 22) || c->n_embd > 65536 || c->n_head > 1024 || c->n_ff > (1u << 20) ||
            c->n_layer > 1024 || c->n_ctx > (1u << 20) || c->head_dim > 1024)
                return dsa__error(-EBADMSG, "llama config: a size is past this engine's limits");
        if (c->n_head % c->n_head_kv != 0)
                return dsa__error(-EBADMSG, "llama config: %u heads are not a multiple of %u key/value heads",
                                  c->n_head, c->n_head_kv);
        if (c->head_dim % 2 != 0)
                return dsa__error(-EBADMSG, "llama config: head size %u is odd (rotary pairs)", c->head_dim);
        if (!(c->eps > 0.0f && c->eps < 1.0f) || !(c->rope_theta > 1.0f && c->rope_theta < 1e12f))
                return dsa__error(-EBADMSG, "llama config: rms_norm_eps or rope_theta out of range");
        return 0;
}

struct dsa_llama *dsa__llama_free(struct dsa_llama *l) {
        if (!l)
                return NULL;
        if (l->layers)
                for (size_t i = 0; i < l->cfg.n_layer; i++) {
                        struct dsa_llama_layer *y = &l->layers[i];
                        dsa__linear_clear(&y->qkv);
                        dsa__linear_clear(&y->o);
                        dsa__linear_clear(&y->gate_up);
                        dsa__linear_clear(&y->down);
                }
        free(l->layers);
        dsa__embed_clear(&l->wte);
        dsa__linear_clear(&l->lm_head);
        dsa__att_clear(&l->att);
        dsa_threadpool_free(l->pool);
        free(l->arena);
        free(l);
        return NULL;
}

int dsa__llama_set_threads(struct dsa_llama *l, unsigned n) {
        if (!l)
                return -EINVAL;
        return dsa__pool_set_threads(&l->pool, n);
}

size_t dsa__llama_weight_bytes(const struct dsa_llama *l) {
        const struct dsa_llama_config *c = &l->cfg;
        size_t n = dsa__linear_bytes(&l->lm_head) + (size_t) c->n_embd * (2 * c->n_layer + 1) * sizeof(float);

        n += l->wte.rows * l->wte.cols *
             (l->wte.fmt == DSA_WFORMAT_F32 ? 4 : l->wte.fmt == DSA_WFORMAT_Q8 ? 1 : 2);
        for (size_t i = 0; i < c->n_layer; i++) {
                const struct dsa_llama_layer *y = &l->layers[i];
                n += dsa__linear_bytes(&y->qkv) + dsa__linear_bytes(&y->o) + dsa__linear_bytes(&y->gate_up) +
                     dsa__linear_bytes(&y->down);
        }
        return n;
}

/* -EBADMSG unless the n values read from tensor name are all finite. */
static int check_finite(const float *x, size_t n, const char *name) {
        for (size_t i = 0; i < n; i++)
                if (!isfinite(x[i]))
                        return dsa__error(-EBADMSG, "tensor '%s' holds a NaN or infinity", name);
        return 0;
}

/* rows (HS per head, n heads) of a Hugging Face Q or K matrix (rows, C) -> llama.cpp's order:
 * row 2i + j of a head <- row j * HS/2 + i (convert_hf_to_gguf.py's permute()). */
static void permute_heads(float *w, float *tmp, size_t n_head, size_t HS, size_t C) {
        for (size_t h = 0; h < n_head; h++) {
                float *base = w + h * HS * C;
                memcpy(tmp, base, HS * C * sizeof(float));
                for (size_t i = 0; i < HS / 2; i++)
                        for (size_t j = 0; j < 2; j++)
                                memcpy(base + (2 * i + j) * C, tmp + (j * HS / 2 + i) * C, C * sizeof(float));
        }
}

/* The format to keep a weight in, from how it is stored: 16-bit floats stay 16-bit, int8 stays
 * int8 (with its scales), the rest becomes fp32. */
static enum dsa_wformat stored_format(const struct dsa_tensor_view *v) {
        return v->type == DSA_TYPE_F16    ? DSA_WFORMAT_F16
               : v->type == DSA_TYPE_BF16 ? DSA_WFORMAT_BF16
               : v->type == DSA_TYPE_I8   ? DSA_WFORMAT_Q8
                                          : DSA_WFORMAT_F32;
}

/* names[i] (rows[i], C) stacked into one linear; the first n_perm of them get the Q/K permutation
 * with perm_heads[i] heads (fp32 sources only: Hugging Face folders). All parts share one type. */
static int load_linear(dsa__bert_lookup_fn lookup, void *ud, struct dsa__linear *lin, const char *const *names,
                       const size_t *rows, const size_t *perm_heads, size_t n, size_t C, size_t HS) {
        const struct dsa_tensor_view *v[3];
        size_t OC = 0, at = 0;
        int r;

        assert(n <= ELEMENTSOF(v));
        for (size_t i = 0; i < n; i++) {
                r = dsa__find_tensor(lookup, ud, names[i], C, rows[i], true, &v[i]);
                if (r < 0)
                        return r;
                if ((v[i]->type == DSA_TYPE_I8) != (v[0]->type == DSA_TYPE_I8))
                        return dsa__error(-EBADMSG, "tensors '%s' and '%s' are not both int8", names[0], names[i]);
                OC += rows[i];
        }
        const enum dsa_wformat fmt = stored_format(v[0]);
        if (fmt == DSA_WFORMAT_Q8) {
                if (perm_heads)
                        return dsa__error(-EBADMSG, "tensor '%s': int8 Q/K rows cannot be permuted", names[0]);
                return dsa__load_linear_q8(lookup, ud, lin, names, v, rows, n, C);
        }
        _cleanup_free_ float *w = malloc(OC * C * sizeof(float)), *tmp = NULL;
        if (!w)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = dsa__load_tensor_f32(lookup, ud, names[i], w + at * C, C, rows[i], true, NULL);
                if (r < 0)
                        return r;
                if ((r = check_finite(w + at * C, rows[i] * C, names[i])) < 0)
                        return r;
                if (perm_heads && perm_heads[i]) {
                        if (!tmp && !(tmp = malloc(HS * C * sizeof(float))))
                                return -ENOMEM;
                        permute_heads(w + at * C, tmp, perm_heads[i], HS, C);
                }
                at += rows[i];
        }
        return dsa__linear_init(lin, w, OC, C, fmt, 0.0f);
}

/* cos/sin of position p times inv_freq[i] = theta^(-2i/HS), as Hugging Face computes them: the
 * inverse frequencies and the product in fp32, the cosine of that fp32 angle. */
void dsa__llama_rope_row(const struct dsa_llama_config *c, size_t p, float *cs, float *sn) {
        const size_t half = c->head_dim / 2;

        for (size_t i = 0; i < half; i++) {
                float inv = 1.0f / powf(c->rope_theta, (float) (2 * i) / (float) c->head_dim);
                float ang = (float) p * inv;
                cs[i] = (float) cos((double) ang);
                sn[i] = (float) sin((double) ang);
        }
}

int dsa__llama_load(const struct dsa_llama_config *cfg, dsa__bert_lookup_fn lookup, void *ud, bool permute_qk,
                    struct dsa_llama **ret) {
        _cleanup_(dsa__llama_freep) struct dsa_llama *l = NULL;
        const size_t C = cfg->n_embd, NH = cfg->n_head, NKV = cfg->n_head_kv, HS = cfg->head_dim, F = cfg->n_ff;
        const size_t V = cfg->n_vocab, L = cfg->n_layer, half = HS / 2;
        const struct dsa_tensor_view *v;
        size_t floats;
        int r;

        r = dsa__llama_config_check(cfg);
        if (r < 0)
                return r;
        /* Every tensor's presence and shape first, so a config cannot ask for memory the file
         * does not back. */
        for (size_t i = 0; i < L; i++) {
                static const char *const what[] = { "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                    "ffn_norm", "ffn_gate", "ffn_up", "ffn_down" };
                const uint64_t ne[][2] = { { C, 0 }, { C, NH * HS }, { C, NKV * HS }, { C, NKV * HS },
                                           { NH * HS, C }, { C, 0 }, { C, F }, { C, F }, { F, C } };
                for (size_t k = 0; k < ELEMENTSOF(what); k++) {
                        char name[96];
                        snprintf(name, sizeof(name), "blk.%zu.%s.weight", i, what[k]);
                        if ((r = dsa__find_tensor(lookup, ud, name, ne[k][0], ne[k][1], true, &v)) < 0)
                                return r;
                }
        }
        if ((r = dsa__find_tensor(lookup, ud, "token_embd.weight", C, V, true, &v)) < 0 ||
            (r = dsa__find_tensor(lookup, ud, "output_norm.weight", C, 0, true, &v)) < 0 ||
            (r = dsa__find_tensor(lookup, ud, "output.weight", C, V, false, &v)) < 0)
                return r;
        const bool tied = v == NULL;

        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->cfg = *cfg;
        dsa__att_init(&l->att);
        /* The rotary tables cover the first DSA_LLAMA_ROPE_TABLE positions (a 2^20 context in a
         * small file must not cost gigabytes); the forward computes later ones on the fly. */
        const size_t rope_n = MIN((size_t) cfg->n_ctx, (size_t) DSA_LLAMA_ROPE_TABLE);
        floats = C * (2 * L + 1) + 2 * rope_n * half;
        l->arena = malloc(floats * sizeof(float));
        l->layers = calloc(L, sizeof(*l->layers));
        if (!l->arena || !l->layers)
                return dsa__error(-ENOMEM, "cannot allocate the model (%zu floats)", floats);
        float *cur = l->arena;
        l->out_norm = cur, cur += C;
        l->rope_n = rope_n;
        l->rope_cos = cur, cur += rope_n * half;
        l->rope_sin = cur, cur += rope_n * half;

        if ((r = dsa__embed_load(lookup, ud, &l->wte, V, C, false)) < 0 ||
            (r = dsa__load_tensor_f32(lookup, ud, "output_norm.weight", l->out_norm, C, 0, true, NULL)) < 0 ||
            (r = check_finite(l->out_norm, C, "output_norm.weight")) < 0)
                return r;
        /* Rows are read at run time: a NaN there would only show as NaN logits for some ids. */
        {
                _cleanup_free_ float *row = malloc(C * sizeof(float));
                if (!row)
                        return -ENOMEM;
                for (size_t i = 0; i < V; i++) {
                        dsa__embed_row(&l->wte, i, row);
                        if ((r = check_finite(row, C, "token_embd.weight")) < 0)
                                return r;
                }
        }
        {
                const char *names[1] = { tied ? "token_embd.weight" : "output.weight" };
                const size_t rows[1] = { V };
                if ((r = load_linear(lookup, ud, &l->lm_head, names, rows, NULL, 1, C, HS)) < 0)
                        return r;
        }
        for (size_t i = 0; i < L; i++) {
                struct dsa_llama_layer *y = &l->layers[i];
                char n[9][96];
                static const char *const what[] = { "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                    "ffn_norm", "ffn_gate", "ffn_up", "ffn_down" };
                for (size_t k = 0; k < 9; k++)
                        snprintf(n[k], sizeof(n[k]), "blk.%zu.%s.weight", i, what[k]);
                const char *qkv[3] = { n[1], n[2], n[3] }, *o[1] = { n[4] }, *gu[2] = { n[6], n[7] }, *dn[1] = { n[8] };
                const size_t qkv_rows[3] = { NH * HS, NKV * HS, NKV * HS }, perm[3] = { NH, NKV, 0 };
                const size_t o_rows[1] = { C }, gu_rows[2] = { F, F }, dn_rows[1] = { C };

                y->attn_norm = cur, cur += C;
                y->ffn_norm = cur, cur += C;
                if ((r = dsa__load_tensor_f32(lookup, ud, n[0], y->attn_norm, C, 0, true, NULL)) < 0 ||
                    (r = dsa__load_tensor_f32(lookup, ud, n[5], y->ffn_norm, C, 0, true, NULL)) < 0 ||
                    (r = check_finite(y->attn_norm, C, n[0])) < 0 || (r = check_finite(y->ffn_norm, C, n[5])) < 0 ||
                    (r = load_linear(lookup, ud, &y->qkv, qkv, qkv_rows, permute_qk ? perm : NULL, 3, C, HS)) < 0 ||
                    (r = load_linear(lookup, ud, &y->o, o, o_rows, NULL, 1, NH * HS, HS)) < 0 ||
                    (r = load_linear(lookup, ud, &y->gate_up, gu, gu_rows, NULL, 2, C, HS)) < 0 ||
                    (r = load_linear(lookup, ud, &y->down, dn, dn_rows, NULL, 1, F, HS)) < 0)
                        return r;
        }
        for (size_t p = 0; p < rope_n; p++)
                dsa__llama_rope_row(cfg, p, l->rope_cos + p * half, l->rope_sin + p * half);
        *ret = TAKE_PTR(l);
        return 0;
}

/* ---- GGUF */

static int key_u32(const struct dsa_gguf *g, const char *key, bool required, uint32_t *v) {
        int r = dsa_gguf_get_u32(g, key, v);
        if (r == -ENOENT && !required)
                return 0;
        if (r == -ENOENT)
                return dsa__error(r, "GGUF key '%s' is missing", key);
        return r < 0 ? dsa__error(r, "GGUF key '%s' is not an unsigned integer", key) : 0;
}

static const struct dsa_tensor_view *gguf_lookup(void *userdata, const char *name) {
        return dsa_gguf_find_tensor(userdata, name);
}

int dsa__llama_open_gguf(const struct dsa_gguf *g, struct dsa_llama **ret) {
        _cleanup_(dsa__llama_freep) struct dsa_llama *l = NULL;
        struct dsa_llama_config c = { .eps = 1e-5f, .rope_theta = 10000.0f };
        const struct dsa_tensor_view *v;
        uint32_t rot = 0;
        int r;

        if ((r = key_u32(g, "llama.context_length", true, &c.n_ctx)) < 0 ||
            (r = key_u32(g, "llama.embedding_length", true, &c.n_embd)) < 0 ||
            (r = key_u32(g, "llama.feed_forward_length", true, &c.n_ff)) < 0 ||
            (r = key_u32(g, "llama.block_count", true, &c.n_layer)) < 0 ||
            (r = key_u32(g, "llama.attention.head_count", true, &c.n_head)) < 0 ||
            (r = key_u32(g, "llama.rope.dimension_count", false, &rot)) < 0 ||
            (r = key_u32(g, "llama.attention.key_length", false, &c.head_dim)) < 0)
                return r;
        c.n_head_kv = c.n_head;
        if ((r = key_u32(g, "llama.attention.head_count_kv", false, &c.n_head_kv)) < 0)
                return r;
        r = dsa_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &c.eps);
        if (r < 0 && r != -ENOENT)
                return dsa__error(r, "GGUF key 'llama.attention.layer_norm_rms_epsilon' is not a number");
        r = dsa_gguf_get_f32(g, "llama.rope.freq_base", &c.rope_theta);
        if (r < 0 && r != -ENOENT)
                return dsa__error(r, "GGUF key 'llama.rope.freq_base' is not a number");
        if (c.n_head == 0)
                return dsa__error(-EBADMSG, "llama.attention.head_count is 0");
        if (c.head_dim == 0)
                c.head_dim = c.n_embd / c.n_head;
        if (rot && rot != c.head_dim)
                return dsa__error(-EOPNOTSUPP, "partial rotary (rope.dimension_count %u of head size %u) is not "
                                  "supported", rot, c.head_dim);
        v = dsa_gguf_find_tensor(g, "token_embd.weight");
        if (!v || v->n_dims != 2 || v->ne[1] == 0 || v->ne[1] > UINT32_MAX)
                return dsa__error(-EBADMSG, "tensor 'token_embd.weight' is missing or not a (vocab, hidden) matrix");
        c.n_vocab = (uint32_t) v->ne[1];

        r = dsa__llama_load(&c, gguf_lookup, (void *) g, false, &l);
        if (r < 0)
                return r;
        r = dsa__att_from_gguf(g, c.n_layer, c.n_head, c.head_dim, &l->att);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(l);
        return 0;
}
