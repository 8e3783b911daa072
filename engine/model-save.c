/* Writing a model as GGUF: llama.cpp's BERT names and keys, plus ours under dsa.* for what
 * llama.cpp has no word for: per-layer head and FFN counts after structured pruning, the token
 * pruning schedule, the sparse kernel, the variant's recorded facts (dsa.variant.*). Each matrix
 * goes out in the format the model holds it in (dsa_model_save_variant) or, for a plain
 * conversion, as one type (dsa_model_save); int8 matrices always as I8 with a per-row F32
 * ".scale" tensor and, when calibrated, a one-element ".input_scale". */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "gguf.h"
#include "kernels/kernels.h"
#include "model-internal.h"
#include "tokenizer.h"

/* llama.cpp's enum llama_pooling_type and llama_ftype (general.file_type). */
enum {
        LLAMA_POOLING_NONE = 0,
        LLAMA_POOLING_MEAN = 1,
        LLAMA_POOLING_CLS = 2,
        LLAMA_POOLING_RANK = 4,
        LLAMA_FTYPE_ALL_F32 = 0,
        LLAMA_FTYPE_MOSTLY_F16 = 1,
        LLAMA_FTYPE_MOSTLY_Q8_0 = 7,
        LLAMA_FTYPE_MOSTLY_BF16 = 32,
};

void dsa__info_clear(struct dsa__info *info) {
        for (size_t i = 0; i < info->n; i++) {
                free(info->keys[i]);
                free(info->values[i]);
        }
        free(info->keys);
        free(info->values);
        *info = (struct dsa__info) { 0 };
}

int dsa__info_set(struct dsa__info *info, const char *name, const char *value) {
        char *v = strdup(value), *k;

        if (!v)
                return -ENOMEM;
        for (size_t i = 0; i < info->n; i++)
                if (!strcmp(info->keys[i], name)) {
                        free(info->values[i]);
                        info->values[i] = v;
                        return 0;
                }
        k = strdup(name);
        char **nk = realloc(info->keys, (info->n + 1) * sizeof(char *));
        if (nk)
                info->keys = nk;
        char **nv = nk ? realloc(info->values, (info->n + 1) * sizeof(char *)) : NULL;
        if (nv)
                info->values = nv;
        if (!k || !nk || !nv) {
                free(k);
                free(v);
                return -ENOMEM;
        }
        info->keys[info->n] = k;
        info->values[info->n++] = v;
        return 0;
}

int dsa__info_setf(struct dsa__info *info, const char *name, const char *fmt, ...) {
        char v[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(v, sizeof(v), fmt, ap);
        va_end(ap);
        return dsa__info_set(info, name, v);
}

void dsa__info_remove(struct dsa__info *info, const char *prefix) {
        size_t j = 0;

        for (size_t i = 0; i < info->n; i++) {
                if (!strncmp(info->keys[i], prefix, strlen(prefix))) {
                        free(info->keys[i]);
                        free(info->values[i]);
                        continue;
                }
                info->keys[j] = info->keys[i];
                info->values[j++] = info->values[i];
        }
        info->n = j;
}

const char *dsa__info_get(const struct dsa__info *info, const char *name) {
        for (size_t i = 0; i < info->n; i++)
                if (!strcmp(info->keys[i], name))
                        return info->values[i];
        return NULL;
}

struct saver {
        struct dsa_gguf_writer *w;
        bool keep;           /* each matrix in its own format */
        enum dsa_type wtype; /* else every matrix as this (F32, F16, BF16); int8 stays I8 */
        void **bufs;         /* what the writer reads from until the file is written */
        size_t n_bufs;
};

static void saver_clear(struct saver *s) {
        for (size_t i = 0; i < s->n_bufs; i++)
                free(s->bufs[i]);
        free(s->bufs);
}

/* A buffer of n bytes owned by the saver. */
static void *saver_alloc(struct saver *s, size_t n) {
        void **b = realloc(s->bufs, (s->n_bufs + 1) * sizeof(void *));
        if (!b)
                return NULL;
        s->bufs = b;
        b[s->n_bufs] = malloc(n ? n : 1);
        return b[s->n_bufs] ? b[s->n_bufs++] : NULL;
}

static int add(struct saver *s, const char *name, enum dsa_type type, uint64_t ne0, uint64_t ne1, const void *data) {
        uint64_t ne[2] = { ne0, ne1 ? ne1 : 1 };
        int r = dsa_gguf_writer_add_tensor(s->w, name, type, ne1 ? 2 : 1, ne, data);
        if (r < 0)
                return dsa__error(r, "cannot add tensor '%s' to the GGUF writer", name);
        return 0;
}

/* data (ne1, ne0) row-major fp32 as type (F32, F16, BF16); ne1 == 0 for a vector. */
static int save_f32_as(struct saver *s, const char *name, const float *data, uint64_t ne0, uint64_t ne1,
                       enum dsa_type type) {
        const size_t n = (size_t) (ne0 * (ne1 ? ne1 : 1));

        if (type == DSA_TYPE_F32)
                return add(s, name, type, ne0, ne1, data);
        uint16_t *o = saver_alloc(s, n * sizeof(uint16_t));
        if (!o)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                o[i] = type == DSA_TYPE_F16 ? dsa_f32_to_f16(data[i]) : dsa_f32_to_bf16(data[i]);
        return add(s, name, type, ne0, ne1, o);
}

static int save_vector(struct saver *s, const char *name, const float *data, uint64_t n) {
        return add(s, name, DSA_TYPE_F32, n, 0, data);
}

static enum dsa_type type_of(const struct saver *s, enum dsa_wformat f) {
        if (!s->keep || f == DSA_WFORMAT_SPARSE)
                return s->keep ? DSA_TYPE_F32 : s->wtype;
        return f == DSA_WFORMAT_F16 ? DSA_TYPE_F16 : f == DSA_WFORMAT_BF16 ? DSA_TYPE_BF16 : DSA_TYPE_F32;
}

/* general.file_type of a file whose first FFN matrix is in format f0. */
static uint32_t file_type(const struct saver *s, enum dsa_wformat f0) {
        if (!s->keep)
                return s->wtype == DSA_TYPE_F16    ? LLAMA_FTYPE_MOSTLY_F16
                       : s->wtype == DSA_TYPE_BF16 ? LLAMA_FTYPE_MOSTLY_BF16
                                                   : LLAMA_FTYPE_ALL_F32;
        return f0 == DSA_WFORMAT_F16    ? LLAMA_FTYPE_MOSTLY_F16
               : f0 == DSA_WFORMAT_BF16 ? LLAMA_FTYPE_MOSTLY_BF16
               : f0 == DSA_WFORMAT_Q8   ? LLAMA_FTYPE_MOSTLY_Q8_0 /* the nearest llama.cpp has */
                                        : LLAMA_FTYPE_ALL_F32;
}

/* Linear lin (OC,C) as n stacked tensors "<prefix><names[i]>.weight" of rows[i] rows each (int8:
 * with "<prefix><names[i]>.scale", and ".input_scale" when static). */
static int save_linear(struct saver *s, const char *prefix, const struct dsa__linear *lin, const char *const *names,
                       const size_t *rows, size_t n) {
        const size_t OC = lin->OC, C = lin->C;
        char name[96];
        size_t off = 0;
        int r;

        if (lin->fmt == DSA_WFORMAT_Q8) {
                int8_t *q = saver_alloc(s, OC * C);
                float *sc = saver_alloc(s, OC * sizeof(float)), *act = saver_alloc(s, sizeof(float));
                if (!q || !sc || !act)
                        return -ENOMEM;
                dsa__linear_unpack_q8(lin, q, sc);
                *act = lin->act_scale;
                for (size_t i = 0; i < n; i++) {
                        snprintf(name, sizeof(name), "%s%s.weight", prefix, names[i]);
                        if ((r = add(s, name, DSA_TYPE_I8, C, rows[i], q + off * C)) < 0)
                                return r;
                        snprintf(name, sizeof(name), "%s%s.scale", prefix, names[i]);
                        if ((r = save_vector(s, name, sc + off, rows[i])) < 0)
                                return r;
                        if (lin->act_scale > 0.0f) {
                                snprintf(name, sizeof(name), "%s%s.input_scale", prefix, names[i]);
                                if ((r = save_vector(s, name, act, 1)) < 0)
                                        return r;
                        }
                        off += rows[i];
                }
                return 0;
        }
        float *w = saver_alloc(s, OC * C * sizeof(float));
        if (!w || dsa__linear_unpack(lin, w) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                snprintf(name, sizeof(name), "%s%s.weight", prefix, names[i]);
                if ((r = save_f32_as(s, name, w + off * C, C, rows[i], type_of(s, lin->fmt))) < 0)
                        return r;
                off += rows[i];
        }
        return 0;
}

static int save_embed(struct saver *s, const struct dsa__embed *e) {
        const size_t V = e->rows, C = e->cols;
        int r;

        if (e->fmt == DSA_WFORMAT_Q8) {
                if ((r = add(s, "token_embd.weight", DSA_TYPE_I8, C, V, e->data)) < 0)
                        return r;
                return save_vector(s, "token_embd.scale", e->scales, V);
        }
        enum dsa_type t = type_of(s, e->fmt);
        if ((t == DSA_TYPE_F16 && e->fmt == DSA_WFORMAT_F16) || (t == DSA_TYPE_BF16 && e->fmt == DSA_WFORMAT_BF16) ||
            (t == DSA_TYPE_F32 && e->fmt == DSA_WFORMAT_F32))
                return add(s, "token_embd.weight", t, C, V, e->data);
        float *w = saver_alloc(s, V * C * sizeof(float));
        if (!w)
                return -ENOMEM;
        for (size_t i = 0; i < V; i++)
                dsa__embed_row(e, i, w + i * C);
        return save_f32_as(s, "token_embd.weight", w, C, V, t);
}

/* The tokenizer and the recorded facts, any architecture. */
static int save_common(const struct dsa_model *m, struct saver *s) {
        char name[160];
        int r;

        if (m->tok) {
                r = dsa_tokenizer_to_gguf(m->tok, s->w);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < m->info.n; i++) {
                snprintf(name, sizeof(name), DSA__INFO_PREFIX "%s", m->info.keys[i]);
                r = dsa_gguf_writer_set_str(s->w, name, m->info.values[i]);
                if (r < 0)
                        return dsa__error(r, "cannot set GGUF key '%s'", name);
        }
        return 0;
}

/* The per-layer keys, only when some layer differs from the config. */
static int save_layout(struct saver *s, const struct dsa_bert *b) {
        const struct dsa_bert_config *c = &b->cfg;
        uint32_t *heads = saver_alloc(s, c->n_layer * sizeof(uint32_t)), *ffs = saver_alloc(s, c->n_layer * 4);
        float *keep = saver_alloc(s, c->n_layer * sizeof(float));
        bool shaped = false, pruned = false, sparse = false;
        int r;

        if (!heads || !ffs || !keep)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_layer; i++) {
                const struct dsa_bert_layer *y = &b->layers[i];
                heads[i] = y->n_head, ffs[i] = y->n_ff, keep[i] = y->token_keep;
                shaped |= y->n_head != c->n_head || y->n_ff != c->n_ff;
                pruned |= y->token_keep < 1.0f;
                sparse |= y->qkv.fmt == DSA_WFORMAT_SPARSE || y->o.fmt == DSA_WFORMAT_SPARSE ||
                          y->up.fmt == DSA_WFORMAT_SPARSE || y->down.fmt == DSA_WFORMAT_SPARSE;
        }
        if (shaped &&
            ((r = dsa_gguf_writer_set_arr(s->w, "dsa.bert.head_count_per_layer", DSA_GGUF_UINT32, heads, c->n_layer)) < 0 ||
             (r = dsa_gguf_writer_set_arr(s->w, "dsa.bert.feed_forward_length_per_layer", DSA_GGUF_UINT32, ffs,
                                          c->n_layer)) < 0))
                return dsa__error(r, "cannot set the per-layer shape keys");
        if (pruned && (r = dsa_gguf_writer_set_arr(s->w, "dsa.prune.token_keep", DSA_GGUF_FLOAT32, keep, c->n_layer)) < 0)
                return dsa__error(r, "cannot set dsa.prune.token_keep");
        if (s->keep && sparse && (r = dsa_gguf_writer_set_bool(s->w, "dsa.prune.sparse_kernel", true)) < 0)
                return dsa__error(r, "cannot set dsa.prune.sparse_kernel");
        return 0;
}

static int save_bert(const struct dsa_model *m, struct saver *s) {
        const struct dsa_bert *b = m->bert;
        const struct dsa_bert_config *c = &b->cfg;
        const size_t C = c->n_embd, HS = C / c->n_head;
        struct dsa_gguf_writer *w = s->w;
        char name[96];
        int r;

        uint32_t pooling = c->n_labels > 0 && c->has_pooler ? LLAMA_POOLING_RANK : LLAMA_POOLING_CLS;
        switch (b->default_pool) {
        case DSA_POOL_MEAN:
                pooling = LLAMA_POOLING_MEAN;
                break;
        case DSA_POOL_NONE:
                pooling = LLAMA_POOLING_NONE;
                break;
        default:
                break;
        }
        const uint32_t ftype = file_type(s, b->layers[0].up.fmt);

        if ((r = dsa_gguf_writer_set_str(w, "general.architecture", "bert")) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "general.file_type", ftype)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.context_length", c->n_ctx)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.embedding_length", c->n_embd)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.feed_forward_length", c->n_ff)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.block_count", c->n_layer)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.attention.head_count", c->n_head)) < 0 ||
            (r = dsa_gguf_writer_set_f32(w, "bert.attention.layer_norm_epsilon", c->eps)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "bert.attention.causal", false)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.pooling_type", pooling)) < 0 ||
            (r = dsa_gguf_writer_set_str(w, "dsa.bert.hidden_act",
                                         c->act == DSA_ACT_GELU_TANH ? "gelu_tanh" : "gelu")) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "dsa.bert.type_vocab_size", c->n_type)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "dsa.bert.has_pooler", c->has_pooler)) < 0 ||
            (r = dsa_gguf_writer_set_str(w, "dsa.source", m->source ? m->source : "")) < 0)
                return dsa__error(r, "cannot set GGUF metadata");
        if (c->n_labels > 0) {
                r = dsa_gguf_writer_set_arr_str(w, "bert.classifier.output_labels", (const char *const *) b->labels,
                                                c->n_labels);
                if (r < 0)
                        return dsa__error(r, "cannot set bert.classifier.output_labels");
        }
        if ((r = save_common(m, s)) < 0 || (r = dsa__att_to_gguf(&b->att, w)) < 0)
                return r;
        if ((r = save_layout(s, b)) < 0)
                return r;

        if ((r = save_embed(s, &b->wte)) < 0 ||
            (r = add(s, "token_types.weight", DSA_TYPE_F32, C, c->n_type, b->wtt)) < 0 ||
            (r = add(s, "position_embd.weight", DSA_TYPE_F32, C, c->n_ctx, b->wpe)) < 0 ||
            (r = save_vector(s, "token_embd_norm.weight", b->emb_ln_g, C)) < 0 ||
            (r = save_vector(s, "token_embd_norm.bias", b->emb_ln_b, C)) < 0)
                return r;
        for (size_t i = 0; i < c->n_layer; i++) {
                const struct dsa_bert_layer *y = &b->layers[i];
                const size_t A = y->n_head * HS;
                static const char *const qkv[] = { "attn_q", "attn_k", "attn_v" };
                const size_t rows[3] = { A, A, A };
                const char *const o[] = { "attn_output" }, *const up[] = { "ffn_up" }, *const down[] = { "ffn_down" };
                const size_t rc[] = { C }, rf[] = { y->n_ff };

                char pre[32];
                snprintf(pre, sizeof(pre), "blk.%zu.", i);
                if ((r = save_linear(s, pre, &y->qkv, qkv, rows, 3)) < 0 || (r = save_linear(s, pre, &y->o, o, rc, 1)) < 0 ||
                    (r = save_linear(s, pre, &y->up, up, rf, 1)) < 0 ||
                    (r = save_linear(s, pre, &y->down, down, rc, 1)) < 0)
                        return r;
                const struct {
                        const char *name;
                        const float *v;
                        size_t n;
                } vec[] = {
                        { "attn_q.bias", y->qkv_b, A },         { "attn_k.bias", y->qkv_b + A, A },
                        { "attn_v.bias", y->qkv_b + 2 * A, A }, { "attn_output.bias", y->o_b, C },
                        { "attn_output_norm.weight", y->ln1_g, C }, { "attn_output_norm.bias", y->ln1_b, C },
                        { "ffn_up.bias", y->up_b, y->n_ff },    { "ffn_down.bias", y->down_b, C },
                        { "layer_output_norm.weight", y->ln2_g, C }, { "layer_output_norm.bias", y->ln2_b, C },
                };
                for (size_t j = 0; j < ELEMENTSOF(vec); j++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s", i, vec[j].name);
                        if ((r = save_vector(s, name, vec[j].v, vec[j].n)) < 0)
                                return r;
                }
                snprintf(name, sizeof(name), "blk.%zu.token_score.weight", i);
                if (y->token_score && (r = save_vector(s, name, y->token_score, C + 1)) < 0)
                        return r;
        }
        const enum dsa_type ht = s->keep ? DSA_TYPE_F32 : s->wtype;
        if (b->pool_w && ((r = save_f32_as(s, "cls.weight", b->pool_w, C, C, ht)) < 0 ||
                          (r = save_vector(s, "cls.bias", b->pool_b, C)) < 0))
                return r;
        if (b->cls_w && ((r = save_f32_as(s, "cls.output.weight", b->cls_w, C, c->n_labels, ht)) < 0 ||
                         (r = save_vector(s, "cls.output.bias", b->cls_b, c->n_labels)) < 0))
                return r;
        return 0;
}

/* llama.cpp's Llama names and keys (llama-load.c), the attention variant, tokenizer and facts. */
static int save_llama(const struct dsa_model *m, struct saver *s) {
        const struct dsa_llama *l = m->llama;
        const struct dsa_llama_config *c = &l->cfg;
        const size_t C = c->n_embd, NH = c->n_head, NKV = c->n_head_kv, HS = c->head_dim, F = c->n_ff;
        struct dsa_gguf_writer *w = s->w;
        char name[96];
        int r;

        if ((r = dsa_gguf_writer_set_str(w, "general.architecture", "llama")) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "general.file_type", file_type(s, l->layers[0].gate_up.fmt))) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.context_length", c->n_ctx)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.embedding_length", c->n_embd)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.block_count", c->n_layer)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.feed_forward_length", c->n_ff)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.attention.head_count", c->n_head)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.attention.head_count_kv", c->n_head_kv)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.attention.key_length", c->head_dim)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.attention.value_length", c->head_dim)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.rope.dimension_count", c->head_dim)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "llama.vocab_size", c->n_vocab)) < 0 ||
            (r = dsa_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", c->eps)) < 0 ||
            (r = dsa_gguf_writer_set_f32(w, "llama.rope.freq_base", c->rope_theta)) < 0 ||
            (r = dsa_gguf_writer_set_str(w, "dsa.source", m->source ? m->source : "")) < 0)
                return dsa__error(r, "cannot set GGUF metadata");
        if ((r = save_common(m, s)) < 0 || (r = dsa__att_to_gguf(&l->att, w)) < 0)
                return r;
        if ((r = save_embed(s, &l->wte)) < 0 || (r = save_vector(s, "output_norm.weight", l->out_norm, C)) < 0)
                return r;
        {
                static const char *const head[] = { "output" };
                const size_t rows[] = { l->lm_head.OC };
                if ((r = save_linear(s, "", &l->lm_head, head, rows, 1)) < 0)
                        return r;
        }
        for (size_t i = 0; i < c->n_layer; i++) {
                const struct dsa_llama_layer *y = &l->layers[i];
                static const char *const qkv[] = { "attn_q", "attn_k", "attn_v" }, *const o[] = { "attn_output" };
                static const char *const gu[] = { "ffn_gate", "ffn_up" }, *const dn[] = { "ffn_down" };
                const size_t rq[3] = { NH * HS, NKV * HS, NKV * HS }, rc[1] = { C }, rf[2] = { F, F };

                char pre[32];
                snprintf(pre, sizeof(pre), "blk.%zu.", i);
                if ((r = save_linear(s, pre, &y->qkv, qkv, rq, 3)) < 0 ||
                    (r = save_linear(s, pre, &y->o, o, rc, 1)) < 0 ||
                    (r = save_linear(s, pre, &y->gate_up, gu, rf, 2)) < 0 ||
                    (r = save_linear(s, pre, &y->down, dn, rc, 1)) < 0)
                        return r;
                snprintf(name, sizeof(name), "blk.%zu.attn_norm.weight", i);
                if ((r = save_vector(s, name, y->attn_norm, C)) < 0)
                        return r;
                snprintf(name, sizeof(name), "blk.%zu.ffn_norm.weight", i);
                if ((r = save_vector(s, name, y->ffn_norm, C)) < 0)
                        return r;
        }
        return 0;
}

static int save(const struct dsa_model *m, const char *path, bool keep, enum dsa_type wtype,
                int (*extra)(struct dsa_gguf_writer *w, void *userdata), void *userdata) {
        _cleanup_(dsa_gguf_writer_freep) struct dsa_gguf_writer *w = NULL;
        struct saver s = { .keep = keep, .wtype = wtype };
        int r;

        if (!m || (!m->bert && !m->llama) || !path)
                return -EINVAL;
        w = dsa_gguf_writer_new();
        if (!w)
                return -ENOMEM;
        s.w = w;
        r = m->llama ? save_llama(m, &s) : save_bert(m, &s);
        if (r >= 0 && extra)
                r = extra(w, userdata);
        if (r >= 0)
                r = dsa_gguf_writer_write(w, path);
        saver_clear(&s);
        return r < 0 ? r : 0;
}

int dsa_model_save(const struct dsa_model *m, const char *path, enum dsa_type wtype) {
        if (wtype != DSA_TYPE_F32 && wtype != DSA_TYPE_F16 && wtype != DSA_TYPE_BF16)
                return dsa__error(-EOPNOTSUPP, "cannot save weights as %s (F32, F16 or BF16)",
                                  dsa_type_name(wtype) ? dsa_type_name(wtype) : "an unknown type");
        return save(m, path, false, wtype, NULL, NULL);
}

int dsa_model_save_variant(const struct dsa_model *m, const char *path) {
        return save(m, path, true, DSA_TYPE_F32, NULL, NULL);
}

int dsa__model_save_with(const struct dsa_model *m, const char *path,
                         int (*extra)(struct dsa_gguf_writer *w, void *userdata), void *userdata) {
        return save(m, path, false, DSA_TYPE_F32, extra, userdata);
}
