/* The BERT encoder on fp32 weights, llm.c style: embeddings (word + token type + position,
 * LayerNorm); per layer one fused QKV GEMM, attention per (batch row, head) with the key-padding
 * mask, output dense + residual + LayerNorm, FFN up + GELU + down + residual + LayerNorm (post-LN);
 * then BERT's pooler and the classifier. Every weight lives in one arena filled at load, with
 * each tensor's shape checked against the config before a byte of it is read. A forward pass
 * allocates its own activations and only reads the model, so threads may share one model. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "bert.h"
#include "kernels/kernels.h"

/* Caps on sizes read from files: generous for any BERT, small enough that products of two or
 * three of them cannot overflow size_t before the explicit checks below. */
#define BERT_MAX_DIM (UINT32_C(1) << 24)
#define BERT_MAX_LAYERS 1024u
#define BERT_MAX_LABELS (UINT32_C(1) << 20)

int dsa__bert_config_check(const struct dsa_bert_config *c) {
        if (c->n_vocab == 0 || c->n_ctx == 0 || c->n_embd == 0 || c->n_head == 0 || c->n_ff == 0 ||
            c->n_layer == 0 || c->n_type == 0)
                return dsa__error(-EBADMSG, "BERT config has a zero size (vocab %u, context %u, hidden %u, "
                                  "heads %u, intermediate %u, layers %u, token types %u)",
                                  c->n_vocab, c->n_ctx, c->n_embd, c->n_head, c->n_ff, c->n_layer, c->n_type);
        if (c->n_vocab > BERT_MAX_DIM || c->n_ctx > BERT_MAX_DIM || c->n_embd > BERT_MAX_DIM ||
            c->n_ff > BERT_MAX_DIM || c->n_type > BERT_MAX_DIM || c->n_layer > BERT_MAX_LAYERS ||
            c->n_labels > BERT_MAX_LABELS)
                return dsa__error(-EBADMSG, "BERT config has an implausibly large size");
        if (c->n_embd % c->n_head != 0)
                return dsa__error(-EBADMSG, "hidden size %u is not a multiple of the head count %u",
                                  c->n_embd, c->n_head);
        if (!isfinite(c->eps) || c->eps <= 0.0f || c->eps >= 1.0f)
                return dsa__error(-EBADMSG, "layer_norm_eps %g is not in (0, 1)", (double) c->eps);
        if (c->act != DSA_ACT_GELU_ERF && c->act != DSA_ACT_GELU_TANH)
                return dsa__error(-EBADMSG, "unknown activation %d", (int) c->act);
        return 0;
}

struct dsa_bert *dsa__bert_free(struct dsa_bert *b) {
        if (!b)
                return NULL;
        if (b->labels)
                for (uint32_t i = 0; i < b->cfg.n_labels; i++)
                        free(b->labels[i]);
        free(b->labels);
        free(b->layers);
        free(b->arena);
        free(b);
        return NULL;
}

/* Adds a*b floats to *total; false on overflow. */
static bool arena_add(size_t *total, size_t a, size_t b) {
        size_t n;
        return size_mul_ok(a, b, &n) && size_add_ok(*total, n, total);
}

static float *carve(float **cursor, size_t n) {
        float *p = *cursor;
        *cursor += n;
        return p;
}

struct loader {
        dsa__bert_lookup_fn lookup;
        void *userdata;
};

/* Reads tensor name, which must have shape {ne0} (ne1 == 0) or {ne0, ne1} in ggml order, into
 * dst. Absent: -ENOENT with a reason when required, else 0 with *ret_found false. */
static int load_tensor(const struct loader *l, const char *name, float *dst, uint64_t ne0, uint64_t ne1,
                       bool required, bool *ret_found) {
        const struct dsa_tensor_view *v = l->lookup(l->userdata, name);
        uint64_t want[DSA_MAX_DIMS] = { ne0, ne1 ? ne1 : 1, 1, 1 };
        int r;

        if (ret_found)
                *ret_found = v != NULL;
        if (!v) {
                if (required)
                        return dsa__error(-ENOENT, "tensor '%s' is missing", name);
                return 0;
        }
        const char *shown = v->name ? v->name : name;
        if (v->n_dims > DSA_MAX_DIMS)
                return dsa__error(-EBADMSG, "tensor '%s' has %u dimensions", shown, v->n_dims);
        for (size_t i = 0; i < DSA_MAX_DIMS; i++) {
                uint64_t got = i < v->n_dims ? v->ne[i] : 1;
                if (got != want[i])
                        return dsa__error(-EBADMSG,
                                          "tensor '%s' has shape (%llu, %llu, %llu, %llu), expected (%llu, %llu) "
                                          "from the config (ggml order: ne[0] first)",
                                          shown, (unsigned long long) v->ne[0],
                                          (unsigned long long) (v->n_dims > 1 ? v->ne[1] : 1),
                                          (unsigned long long) (v->n_dims > 2 ? v->ne[2] : 1),
                                          (unsigned long long) (v->n_dims > 3 ? v->ne[3] : 1),
                                          (unsigned long long) want[0], (unsigned long long) want[1]);
        }
        r = dsa_tensor_to_f32(v, dst);
        if (r < 0) {
                const char *tn = dsa_type_name(v->type);
                return dsa__error(r, "tensor '%s': cannot convert type %s to F32", shown, tn ? tn : "?");
        }
        return 0;
}

int dsa__bert_load(const struct dsa_bert_config *cfg, dsa__bert_lookup_fn lookup, void *userdata,
                   struct dsa_bert **ret) {
        _cleanup_(dsa__bert_freep) struct dsa_bert *b = NULL;
        struct loader l = { lookup, userdata };
        size_t total = 0, per_layer = 0;
        char name[96];
        bool found;
        int r;

        if (!cfg || !lookup || !ret)
                return -EINVAL;
        r = dsa__bert_config_check(cfg);
        if (r < 0)
                return r;

        const size_t V = cfg->n_vocab, C = cfg->n_embd, F = cfg->n_ff, L = cfg->n_layer;
        const size_t NCTX = cfg->n_ctx, NT = cfg->n_type, NL = cfg->n_labels;

        bool ok = arena_add(&total, V, C) && arena_add(&total, NCTX, C) && arena_add(&total, NT, C) &&
                  arena_add(&total, 2, C) && arena_add(&per_layer, 4 * C, C) && arena_add(&per_layer, 2, F * C) &&
                  arena_add(&per_layer, 9, C) && arena_add(&per_layer, 1, F) && arena_add(&total, L, per_layer) &&
                  (!cfg->has_pooler || arena_add(&total, C + 1, C)) && arena_add(&total, NL, C + 1);
        size_t bytes;
        if (!ok || !size_mul_ok(total, sizeof(float), &bytes))
                return dsa__error(-EOVERFLOW, "BERT weights do not fit in memory");

        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->cfg = *cfg;
        b->default_pool = cfg->n_labels > 0 && cfg->has_pooler ? DSA_POOL_POOLER : DSA_POOL_CLS;
        b->layers = calloc(L, sizeof(*b->layers));
        if (!b->layers)
                return -ENOMEM;
        void *arena = NULL;
        if (posix_memalign(&arena, 64, bytes) != 0)
                return dsa__error(-ENOMEM, "cannot allocate %zu bytes for BERT weights", bytes);
        b->arena = arena;
        b->arena_floats = total;

        float *cur = b->arena;
        b->wte = carve(&cur, V * C);
        b->wpe = carve(&cur, NCTX * C);
        b->wtt = carve(&cur, NT * C);
        b->emb_ln_g = carve(&cur, C);
        b->emb_ln_b = carve(&cur, C);

        if ((r = load_tensor(&l, "token_embd.weight", b->wte, C, V, true, NULL)) < 0 ||
            (r = load_tensor(&l, "position_embd.weight", b->wpe, C, NCTX, true, NULL)) < 0 ||
            (r = load_tensor(&l, "token_types.weight", b->wtt, C, NT, false, &found)) < 0 ||
            (r = load_tensor(&l, "token_embd_norm.weight", b->emb_ln_g, C, 0, true, NULL)) < 0 ||
            (r = load_tensor(&l, "token_embd_norm.bias", b->emb_ln_b, C, 0, true, NULL)) < 0)
                return r;
        if (!found)
                memset(b->wtt, 0, NT * C * sizeof(float));

        for (size_t i = 0; i < L; i++) {
                struct dsa_bert_layer *y = &b->layers[i];
                static const struct {
                        const char *name;
                        size_t off;
                } qkv[] = { { "attn_q", 0 }, { "attn_k", 1 }, { "attn_v", 2 } };

                y->qkv_w = carve(&cur, 3 * C * C);
                y->qkv_b = carve(&cur, 3 * C);
                y->o_w = carve(&cur, C * C);
                y->o_b = carve(&cur, C);
                y->ln1_g = carve(&cur, C);
                y->ln1_b = carve(&cur, C);
                y->up_w = carve(&cur, F * C);
                y->up_b = carve(&cur, F);
                y->down_w = carve(&cur, C * F);
                y->down_b = carve(&cur, C);
                y->ln2_g = carve(&cur, C);
                y->ln2_b = carve(&cur, C);

                for (size_t j = 0; j < ELEMENTSOF(qkv); j++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s.weight", i, qkv[j].name);
                        r = load_tensor(&l, name, y->qkv_w + qkv[j].off * C * C, C, C, true, NULL);
                        if (r < 0)
                                return r;
                        snprintf(name, sizeof(name), "blk.%zu.%s.bias", i, qkv[j].name);
                        r = load_tensor(&l, name, y->qkv_b + qkv[j].off * C, C, 0, true, NULL);
                        if (r < 0)
                                return r;
                }

                const struct {
                        const char *name;
                        float *w, *bias;
                        size_t in, out;
                } rest[] = {
                        { "attn_output", y->o_w, y->o_b, C, C },
                        { "ffn_up", y->up_w, y->up_b, C, F },
                        { "ffn_down", y->down_w, y->down_b, F, C },
                        { "attn_output_norm", y->ln1_g, y->ln1_b, C, 0 },
                        { "layer_output_norm", y->ln2_g, y->ln2_b, C, 0 },
                };
                for (size_t j = 0; j < ELEMENTSOF(rest); j++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s.weight", i, rest[j].name);
                        r = load_tensor(&l, name, rest[j].w, rest[j].in, rest[j].out, true, NULL);
                        if (r < 0)
                                return r;
                        snprintf(name, sizeof(name), "blk.%zu.%s.bias", i, rest[j].name);
                        r = load_tensor(&l, name, rest[j].bias, rest[j].out ? rest[j].out : rest[j].in, 0,
                                        true, NULL);
                        if (r < 0)
                                return r;
                }
        }

        if (cfg->has_pooler) {
                b->pool_w = carve(&cur, C * C);
                b->pool_b = carve(&cur, C);
                if ((r = load_tensor(&l, "cls.weight", b->pool_w, C, C, true, NULL)) < 0 ||
                    (r = load_tensor(&l, "cls.bias", b->pool_b, C, 0, true, NULL)) < 0)
                        return r;
        }
        if (NL > 0) {
                b->cls_w = carve(&cur, NL * C);
                b->cls_b = carve(&cur, NL);
                if ((r = load_tensor(&l, "cls.output.weight", b->cls_w, C, NL, true, NULL)) < 0 ||
                    (r = load_tensor(&l, "cls.output.bias", b->cls_b, NL, 0, true, NULL)) < 0)
                        return r;
        }
        assert(cur == b->arena + total);

        *ret = TAKE_PTR(b);
        return 0;
}

/* Checks a batch against the model before any of it is used as an index. */
static int batch_check(const struct dsa_bert_config *cfg, const struct dsa_batch *b, size_t *ret_BT) {
        size_t BT;

        if (!b->ids || b->B == 0 || b->T == 0)
                return dsa__error(-EINVAL, "empty batch");
        if (b->T > cfg->n_ctx)
                return dsa__error(-EINVAL, "sequence of %zu tokens is longer than the model's context of %u",
                                  b->T, cfg->n_ctx);
        if (!size_mul_ok(b->B, b->T, &BT) || BT > SIZE_MAX / sizeof(float) / (3 * (size_t) cfg->n_embd + cfg->n_ff))
                return dsa__error(-EOVERFLOW, "batch of %zu x %zu tokens is too large", b->B, b->T);
        for (size_t i = 0; i < BT; i++) {
                if (b->ids[i] < 0 || (uint32_t) b->ids[i] >= cfg->n_vocab)
                        return dsa__error(-EINVAL, "token id %d at %zu is outside the vocabulary of %u",
                                          b->ids[i], i, cfg->n_vocab);
                if (b->type_ids && (b->type_ids[i] < 0 || (uint32_t) b->type_ids[i] >= cfg->n_type))
                        return dsa__error(-EINVAL, "token type %d at %zu is outside the model's %u types",
                                          b->type_ids[i], i, cfg->n_type);
        }
        *ret_BT = BT;
        return 0;
}

int dsa__bert_forward(const struct dsa_bert *bert, const struct dsa_batch *b, float *ret_hidden,
                      struct dsa_trace *trace) {
        const struct dsa_bert_config *cfg = &bert->cfg;
        const struct dsa_kernels *k = dsa_kernels();
        const size_t B = b->B, T = b->T, C = cfg->n_embd, NH = cfg->n_head, HS = C / NH, F = cfg->n_ff;
        const float eps = cfg->eps, scale = 1.0f / sqrtf((float) HS);
        size_t BT = 0;
        int r;

        r = batch_check(cfg, b, &BT);
        if (r < 0)
                return r;

        /* Activations: qkv (BT,3C), att (BT,C), tmp (BT,C), ff (BT,F), attention scratch (T).
         * batch_check bounded BT * (3C + F), so the sum below cannot overflow. */
        size_t n = BT * (5 * C + F) + T;
        _cleanup_free_ float *act = malloc(n * sizeof(float));
        if (!act)
                return dsa__error(-ENOMEM, "cannot allocate activations for %zu x %zu tokens", B, T);
        float *qkv = act, *att = qkv + BT * 3 * C, *tmp = att + BT * C, *ff = tmp + BT * C,
              *scratch = ff + BT * F;
        float *x = ret_hidden; /* the residual stream lives in the caller's output */

        for (size_t bt = 0; bt < BT; bt++) {
                const float *we = bert->wte + (size_t) b->ids[bt] * C;
                const float *wt = bert->wtt + (size_t) (b->type_ids ? b->type_ids[bt] : 0) * C;
                const float *wp = bert->wpe + (bt % T) * C;
                float *o = x + bt * C;
                /* HF adds word + token type first, then position. */
                for (size_t c = 0; c < C; c++)
                        o[c] = (we[c] + wt[c]) + wp[c];
        }
        k->layernorm_f32(x, x, bert->emb_ln_g, bert->emb_ln_b, BT, C, eps);
        if (trace && trace->hidden && trace->hidden[0])
                memcpy(trace->hidden[0], x, BT * C * sizeof(float));

        for (size_t l = 0; l < cfg->n_layer; l++) {
                const struct dsa_bert_layer *y = &bert->layers[l];
                float *probs = trace && trace->attn ? trace->attn[l] : NULL;

                dsa_linear_f32(qkv, 3 * C, x, y->qkv_w, y->qkv_b, BT, C, 3 * C);
                for (size_t bb = 0; bb < B; bb++) {
                        const float *q = qkv + bb * T * 3 * C;
                        const uint8_t *valid = b->mask ? b->mask + bb * T : NULL;
                        for (size_t h = 0; h < NH; h++)
                                k->attention_f32(att + bb * T * C + h * HS, C, q + h * HS, 3 * C, q + C + h * HS,
                                                 3 * C, q + 2 * C + h * HS, 3 * C, valid, T, HS, scale,
                                                 probs ? probs + (bb * NH + h) * T * T : NULL, scratch);
                }
                dsa_linear_f32(tmp, C, att, y->o_w, y->o_b, BT, C, C);
                for (size_t i = 0; i < BT * C; i++)
                        tmp[i] += x[i];
                k->layernorm_f32(x, tmp, y->ln1_g, y->ln1_b, BT, C, eps);

                dsa_linear_f32(ff, F, x, y->up_w, y->up_b, BT, C, F);
                if (cfg->act == DSA_ACT_GELU_TANH)
                        k->gelu_tanh_f32(ff, BT * F);
                else
                        k->gelu_erf_f32(ff, BT * F);
                dsa_linear_f32(tmp, C, ff, y->down_w, y->down_b, BT, F, C);
                for (size_t i = 0; i < BT * C; i++)
                        tmp[i] += x[i];
                k->layernorm_f32(x, tmp, y->ln2_g, y->ln2_b, BT, C, eps);

                if (trace && trace->hidden && trace->hidden[l + 1])
                        memcpy(trace->hidden[l + 1], x, BT * C * sizeof(float));
        }
        return 0;
}

/* out (B,C) = tanh(W h[CLS] + b) for each row. */
static int pooler(const struct dsa_bert *bert, size_t B, size_t T, const float *hidden, float *out) {
        const size_t C = bert->cfg.n_embd;
        _cleanup_free_ float *cls = calloc(B * C, sizeof(float));

        if (!cls)
                return -ENOMEM;
        for (size_t b = 0; b < B; b++)
                memcpy(cls + b * C, hidden + b * T * C, C * sizeof(float));
        dsa_linear_f32(out, C, cls, bert->pool_w, bert->pool_b, B, C, C);
        for (size_t i = 0; i < B * C; i++)
                out[i] = tanhf(out[i]);
        return 0;
}

int dsa__bert_pool(const struct dsa_bert *bert, const struct dsa_batch *b, const float *hidden,
                   enum dsa_pool mode, float *out) {
        const size_t B = b->B, T = b->T, C = bert->cfg.n_embd;

        switch (mode) {
        case DSA_POOL_CLS:
                for (size_t i = 0; i < B; i++)
                        memcpy(out + i * C, hidden + i * T * C, C * sizeof(float));
                return 0;
        case DSA_POOL_MEAN:
                for (size_t i = 0; i < B; i++) {
                        float *o = out + i * C;
                        size_t cnt = 0;
                        memset(o, 0, C * sizeof(float));
                        for (size_t t = 0; t < T; t++) {
                                if (b->mask && !b->mask[i * T + t])
                                        continue;
                                const float *h = hidden + (i * T + t) * C;
                                for (size_t c = 0; c < C; c++)
                                        o[c] += h[c];
                                cnt++;
                        }
                        if (cnt > 0)
                                for (size_t c = 0; c < C; c++)
                                        o[c] /= (float) cnt;
                }
                return 0;
        case DSA_POOL_POOLER:
                if (!bert->pool_w)
                        return dsa__error(-EOPNOTSUPP, "the model has no pooler");
                return pooler(bert, B, T, hidden, out);
        default:
                return dsa__error(-EINVAL, "pooling mode %d gives no single vector", (int) mode);
        }
}

int dsa__bert_classify(const struct dsa_bert *bert, const struct dsa_batch *b, const float *hidden,
                       float *ret_logits) {
        const size_t B = b->B, C = bert->cfg.n_embd;
        int r;

        if (!bert->cls_w)
                return dsa__error(-EOPNOTSUPP, "the model has no classifier head");
        _cleanup_free_ float *pooled = malloc(B * C * sizeof(float));
        if (!pooled)
                return -ENOMEM;
        /* Without a pooler (llama.cpp's converter drops BERT's), the classifier reads h[CLS]. */
        r = dsa__bert_pool(bert, b, hidden, bert->pool_w ? DSA_POOL_POOLER : DSA_POOL_CLS, pooled);
        if (r < 0)
                return r;
        dsa_linear_f32(ret_logits, bert->cfg.n_labels, pooled, bert->cls_w, bert->cls_b, B, C,
                       bert->cfg.n_labels);
        return 0;
}
