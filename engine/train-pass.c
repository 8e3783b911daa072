/* The trainer's forward (keeping every activation its backward needs) and backward, layer by layer
 * on kernels/train.h, as HF's BertForSequenceClassification computes them; QAT's fake
 * quantization of the four matmuls of each layer. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "kernels/gemm-q8.h"
#include "kernels/train.h"
#include "model-internal.h"
#include "train-internal.h"

#define QAT_MOMENTUM 0.99f

static int grow(float **p, size_t n) {
        free(*p);
        *p = calloc(n ? n : 1, sizeof(float));
        return *p ? 0 : -ENOMEM;
}

/* Makes room for a batch of B rows of T tokens. */
static int ensure_acts(struct dsa_trainer *t, size_t B, size_t T) {
        struct dsa__tacts *a = &t->a;
        const size_t L = t->cfg.n_layer, C = t->cfg.n_embd, NL = t->cfg.n_labels;
        int r = 0;

        const size_t N0 = B * T, TT0 = N0 * T;
        if (a->l && B <= a->cap_B && N0 <= a->cap_N && TT0 <= a->cap_TT) {
                a->B = B, a->T = T;
                return 0;
        }
        if (T > 0 && (N0 / T != B || TT0 / T != N0 || TT0 > SIZE_MAX / 4 / 64 / MAX(t->cfg.n_head, 1u)))
                return -EOVERFLOW;
        /* Grow to at least the largest batch seen, so alternating shapes do not reallocate. */
        const size_t N = MAX(N0, a->cap_N), TT = MAX(TT0, a->cap_TT);
        B = MAX(B, a->cap_B);
        size_t Amax = 0, Fmax = 0, NHmax = 0;
        for (size_t l = 0; l < L; l++) {
                Amax = MAX(Amax, t->layers[l].A);
                Fmax = MAX(Fmax, t->layers[l].F);
                NHmax = MAX(NHmax, t->layers[l].NH);
        }
        if (!a->l) {
                a->l = calloc(L, sizeof(*a->l));
                a->h = calloc(L + 1, sizeof(float *));
                a->dh_ext = calloc(L + 1, sizeof(float *));
                if (!a->l || !a->h || !a->dh_ext)
                        return -ENOMEM;
        }
        for (size_t l = 0; l < L; l++) {
                struct dsa__tlacts *y = &a->l[l];
                const size_t A = t->layers[l].A, F = t->layers[l].F, NH = t->layers[l].NH;
                if ((r = grow(&y->qkv, N * 3 * A)) < 0 || (r = grow(&y->att, NH * TT)) < 0 ||
                    (r = grow(&y->att_keep, NH * TT)) < 0 || (r = grow(&y->ctx, N * A)) < 0 ||
                    (r = grow(&y->ao, N * C)) < 0 || (r = grow(&y->ao_keep, N * C)) < 0 ||
                    (r = grow(&y->res1, N * C)) < 0 || (r = grow(&y->ln1_mean, N)) < 0 ||
                    (r = grow(&y->ln1_rstd, N)) < 0 || (r = grow(&y->a1, N * C)) < 0 ||
                    (r = grow(&y->up, N * F)) < 0 || (r = grow(&y->gl, N * F)) < 0 ||
                    (r = grow(&y->dn, N * C)) < 0 || (r = grow(&y->dn_keep, N * C)) < 0 ||
                    (r = grow(&y->res2, N * C)) < 0 || (r = grow(&y->ln2_mean, N)) < 0 ||
                    (r = grow(&y->ln2_rstd, N)) < 0 || (r = grow(&y->dqkv_ext, N * 3 * A)) < 0)
                        return r;
                if (t->opts.qat &&
                    ((r = grow(&y->xq_qkv, N * C)) < 0 || (r = grow(&y->xq_o, N * A)) < 0 ||
                     (r = grow(&y->xq_up, N * C)) < 0 || (r = grow(&y->xq_down, N * F)) < 0))
                        return r;
        }
        for (size_t l = 0; l <= L; l++)
                if ((r = grow(&a->h[l], N * C)) < 0 || (r = grow(&a->dh_ext[l], N * C)) < 0)
                        return r;
        if ((r = grow(&a->emb_in, N * C)) < 0 || (r = grow(&a->emb_mean, N)) < 0 || (r = grow(&a->emb_rstd, N)) < 0 ||
            (r = grow(&a->emb_ln, N * C)) < 0 || (r = grow(&a->emb_keep, N * C)) < 0 ||
            (r = grow(&a->cls_x, B * C)) < 0 || (r = grow(&a->pool_pre, B * C)) < 0 ||
            (r = grow(&a->pool_out, B * C)) < 0 || (r = grow(&a->pool_keep, B * C)) < 0 ||
            (r = grow(&a->pool_d, B * C)) < 0 || (r = grow(&a->logits, B * NL)) < 0 ||
            (r = grow(&a->probs, B * NL)) < 0 || (r = grow(&a->dlogits_ext, B * NL)) < 0 ||
            (r = grow(&a->dlogits, B * NL)) < 0 ||
            (r = grow(&a->d0, N * C)) < 0 || (r = grow(&a->d1, N * C)) < 0 || (r = grow(&a->d2, N * C)) < 0 ||
            (r = grow(&a->dF, N * Fmax)) < 0 || (r = grow(&a->dF2, N * MAX(Fmax, Amax))) < 0 ||
            (r = grow(&a->dA, N * 3 * Amax)) < 0 || (r = grow(&a->datt, NHmax * TT)) < 0 ||
            (r = grow(&a->tok_score, N)) < 0)
                return r;
        free(a->ids), free(a->types), free(a->mask), free(a->labels), free(a->alive);
        a->ids = calloc(N ? N : 1, sizeof(int32_t));
        a->types = calloc(N ? N : 1, sizeof(int32_t));
        a->mask = calloc(N ? N : 1, 1);
        a->alive = calloc(N * L > 0 ? N * L : 1, 1);
        a->labels = calloc(B ? B : 1, sizeof(int32_t));
        if (!a->ids || !a->types || !a->mask || !a->alive || !a->labels)
                return -ENOMEM;
        a->cap_B = B, a->cap_N = N, a->cap_TT = TT;
        a->B = N0 / T, a->T = T;
        return 0;
}

/* Dropout multipliers into keep (n) when training with p > 0; returns keep or NULL for none. */
static float *dropout(struct dsa_trainer *t, float *keep, size_t n, float p) {
        if (!t->a.train || p <= 0.0f)
                return NULL;
        dsa_dropout_mask_f32(keep, n, p, &t->rng);
        return keep;
}

/* out = x keep (keep NULL: 1), n values; out may be x. */
static void mul_into(float *out, const float *x, const float *keep, size_t n) {
        for (size_t i = 0; i < n; i++)
                out[i] = keep ? x[i] * keep[i] : x[i];
}

/* out = x + y * keep (keep NULL: 1), n values. */
static void residual(float *out, const float *x, const float *y, const float *keep, size_t n) {
        for (size_t i = 0; i < n; i++)
                out[i] = x[i] + (keep ? y[i] * keep[i] : y[i]);
}

/* ---- QAT */

static void quantize_weights(struct dsa_trainer *t, struct dsa__tlin *lin) {
        const size_t n = lin->in * lin->out;
        int8_t *q = malloc(n);
        float *s = malloc(lin->out * sizeof(float));
        if (!q || !s) {
                /* Keep the previous quantized weights: a stale copy is still a valid int8 grid. */
                free(q), free(s);
                return;
        }
        dsa_quantize_weight_q8(q, s, dsa__tw(t, lin->w), lin->out, lin->in);
        for (size_t o = 0; o < lin->out; o++)
                for (size_t i = 0; i < lin->in; i++)
                        lin->wq[o * lin->in + i] = (float) q[o * lin->in + i] * s[o];
        free(q), free(s);
}

/* x (N, in) -> xq, each value on the int8 grid of scale range / 127 (clamped), as
 * dsa_quantize_rows_q8 does with a static scale; range follows the valid rows' max |x| while
 * training. */
static void fake_quant_input(struct dsa_trainer *t, struct dsa__tlin *lin, float *xq, const float *x, size_t N) {
        const size_t C = lin->in;
        const uint8_t *mask = t->a.mask;
        float mx = 0.0f;
        for (size_t n = 0; n < N; n++)
                if (mask[n])
                        for (size_t i = 0; i < C; i++)
                                mx = fmaxf(mx, fabsf(x[n * C + i]));
        if (lin->range <= 0.0f)
                lin->range = mx;
        else if (t->a.train)
                lin->range = QAT_MOMENTUM * lin->range + (1.0f - QAT_MOMENTUM) * mx;
        const float scale = lin->range / 127.0f, inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (size_t i = 0; i < N * C; i++) {
                float q = nearbyintf(x[i] * inv);
                q = fminf(fmaxf(q, -127.0f), 127.0f);
                xq[i] = q * scale;
        }
}

/* out (N, lin->out) = in (N, lin->in) W^T + b; with QAT through the int8 grids (the quantized
 * input kept in xq for the backward). */
static void lin_forward(struct dsa_trainer *t, struct dsa__tlin *lin, float *out, const float *in, float *xq,
                        size_t N) {
        if (t->opts.qat && xq) {
                fake_quant_input(t, lin, xq, in, N);
                dsa_matmul_forward_f32(out, xq, lin->wq, dsa__tw(t, lin->b), N, lin->in, lin->out);
                return;
        }
        dsa_matmul_forward_f32(out, in, dsa__tw(t, lin->w), dsa__tw(t, lin->b), N, lin->in, lin->out);
}

/* The straight-through estimator: gradients pass the rounding as if it were the identity. */
static void lin_backward(struct dsa_trainer *t, const struct dsa__tlin *lin, float *din, const float *dout,
                         const float *in, const float *xq, size_t N) {
        const bool q = t->opts.qat && xq;
        dsa_matmul_backward_f32(din, dsa__tg(t, lin->w), dsa__tg(t, lin->b), dout, q ? xq : in,
                                q ? lin->wq : dsa__tw(t, lin->w), N, lin->in, lin->out);
}

static int qat_prepare(struct dsa_trainer *t) {
        if (!t->opts.qat)
                return 0;
        for (size_t l = 0; l < t->cfg.n_layer; l++) {
                struct dsa__tlayer *y = &t->layers[l];
                struct dsa__tlin *lins[] = { &y->qkv, &y->o, &y->up, &y->down };
                for (size_t j = 0; j < ELEMENTSOF(lins); j++) {
                        struct dsa__tlin *lin = lins[j];
                        if (!lin->wq) {
                                lin->wq = malloc(lin->in * lin->out * sizeof(float));
                                if (!lin->wq)
                                        return -ENOMEM;
                                quantize_weights(t, lin);
                        } else if (t->wq_stale)
                                quantize_weights(t, lin);
                }
        }
        t->wq_stale = false;
        return 0;
}

/* ---- forward */

/* Token pruning as the inference forward does it (engine/bert.c, prune_tokens): of the n tokens
 * of each row alive in layer l (alive), the first ([CLS]) and the ceil(keep n) - 1 others with
 * the highest score (B,T) stay alive for the next layer (next); ties go to the earlier token. The
 * others stay in the batch, but no later layer attends to them: what any kept token, [CLS]
 * included, computes is what it computes when they are gone, and a gradient flows through the
 * kept ones only. */
static void keep_tokens(uint8_t *next, const uint8_t *alive, const float *score, size_t B, size_t T, float keep) {
        for (size_t b = 0; b < B; b++) {
                const uint8_t *in = alive + b * T;
                const float *s = score + b * T;
                uint8_t *out = next + b * T;
                size_t n = 0;
                for (size_t k = 0; k < T; k++)
                        n += in[k] != 0;
                const size_t want = dsa__tokens_kept(keep, n);
                for (size_t k = 0; k < T; k++) {
                        size_t rank = 0;
                        for (size_t j = 0; in[k] && k > 0 && j < T; j++)
                                rank += in[j] && (j == 0 || s[j] > s[k] || (s[j] == s[k] && j < k));
                        out[k] = in[k] && rank < want;
                }
        }
}

/* score (B,T): the attention each alive token received in a layer (att: (B, NH, T, T)
 * probabilities, summed over heads and alive queries), the inference forward's default score. */
static void attention_received(float *score, const uint8_t *alive, const float *att, size_t B, size_t T, size_t NH) {
        for (size_t b = 0; b < B; b++) {
                const uint8_t *in = alive + b * T;
                for (size_t k = 0; k < T; k++) {
                        float s = 0.0f;
                        for (size_t h = 0; in[k] && h < NH; h++) {
                                const float *ph = att + (b * NH + h) * T * T;
                                for (size_t q = 0; q < T; q++)
                                        if (in[q])
                                                s += ph[q * T + k];
                        }
                        score[b * T + k] = s;
                }
        }
}

int dsa_trainer_forward(struct dsa_trainer *t, const struct dsa_batch *b, const int32_t *labels, bool train,
                        float *ret_loss, float *ret_logits) {
        const struct dsa_bert_config *c;
        int r;

        if (!t || !b || !b->ids || !b->mask || b->B == 0 || b->T == 0)
                return -EINVAL;
        c = &t->cfg;
        const size_t B = b->B, T = b->T, N = B * T, C = c->n_embd, L = c->n_layer, NL = c->n_labels;
        if (T > c->n_ctx)
                return dsa__error(-EINVAL, "%zu tokens, the model takes at most %u", T, c->n_ctx);
        for (size_t n = 0; n < N; n++) {
                if (b->ids[n] < 0 || (uint32_t) b->ids[n] >= c->n_vocab ||
                    (b->type_ids && (b->type_ids[n] < 0 || (uint32_t) b->type_ids[n] >= c->n_type)))
                        return dsa__error(-EINVAL, "token %zu: id or type out of range", n);
        }
        if (labels)
                for (size_t i = 0; i < B; i++)
                        if (labels[i] < 0 || (uint32_t) labels[i] >= NL)
                                return dsa__error(-EINVAL, "label %d out of range (%zu labels)", labels[i], NL);
        r = ensure_acts(t, B, T);
        if (r < 0)
                return r;
        if ((r = qat_prepare(t)) < 0)
                return r;
        struct dsa__tacts *a = &t->a;
        a->train = train;
        a->have_labels = labels != NULL;
        a->valid = true;
        memcpy(a->ids, b->ids, N * sizeof(int32_t));
        if (b->type_ids)
                memcpy(a->types, b->type_ids, N * sizeof(int32_t));
        else
                memset(a->types, 0, N * sizeof(int32_t));
        memcpy(a->mask, b->mask, N);
        memcpy(a->alive, b->mask, N);
        if (labels)
                memcpy(a->labels, labels, B * sizeof(int32_t));

        /* Embeddings. */
        const float *wte = dsa__tw(t, t->g_wte), *wpe = dsa__tw(t, t->g_wpe), *wtt = dsa__tw(t, t->g_wtt);
        for (size_t n = 0; n < N; n++) {
                const float *e = wte + (size_t) a->ids[n] * C, *p = wpe + (n % T) * C, *y = wtt + (size_t) a->types[n] * C;
                float *o = a->emb_in + n * C;
                for (size_t i = 0; i < C; i++)
                        o[i] = e[i] + p[i] + y[i];
                if (t->opts.qat) {
                        /* The exported table is int8 per row: train through that grid (STE). */
                        float mx = 0.0f;
                        for (size_t i = 0; i < C; i++)
                                mx = fmaxf(mx, fabsf(e[i]));
                        const float sc = mx / 127.0f, inv = sc > 0.0f ? 1.0f / sc : 0.0f;
                        for (size_t i = 0; i < C; i++)
                                o[i] += nearbyintf(e[i] * inv) * sc - e[i];
                }
        }
        dsa_layernorm_forward_f32(a->emb_ln, a->emb_mean, a->emb_rstd, a->emb_in, dsa__tw(t, t->g_eln_g),
                                  dsa__tw(t, t->g_eln_b), N, C, c->eps);
        mul_into(a->h[0], a->emb_ln, dropout(t, a->emb_keep, N * C, t->opts.dropout), N * C);

        const bool tanh_gelu = c->act == DSA_ACT_GELU_TANH;
        for (size_t l = 0; l < L; l++) {
                struct dsa__tlayer *y = &t->layers[l];
                struct dsa__tlacts *ya = &a->l[l];
                const size_t A = y->A, NH = y->NH, HS = A / NH, F = y->F;
                const uint8_t *keys = a->alive + l * N;
                lin_forward(t, &y->qkv, ya->qkv, a->h[l], ya->xq_qkv, N);
                dsa_scores_softmax_forward_f32(ya->att, ya->qkv, 3 * A, ya->qkv + A, 3 * A, keys, B, T, NH, HS,
                                               1.0f / sqrtf((float) HS));
                /* Tokens alive after this layer: now, by the attention they received, or once
                 * h[l + 1] is known, by the learned score. */
                const bool prune_here = l + 1 < L && y->token_keep < 1.0f;
                if (l + 1 < L && !prune_here)
                        memcpy(a->alive + (l + 1) * N, keys, N);
                if (prune_here && !y->token_score) {
                        attention_received(a->tok_score, keys, ya->att, B, T, NH);
                        keep_tokens(a->alive + (l + 1) * N, keys, a->tok_score, B, T, y->token_keep);
                }
                const float *akeep = dropout(t, ya->att_keep, B * NH * T * T, t->opts.attn_dropout);
                dsa_attn_values_forward_f32(ya->ctx, A, ya->att, akeep, ya->qkv + 2 * A, 3 * A, B, T, NH, HS);
                lin_forward(t, &y->o, ya->ao, ya->ctx, ya->xq_o, N);
                residual(ya->res1, a->h[l], ya->ao, dropout(t, ya->ao_keep, N * C, t->opts.dropout), N * C);
                dsa_layernorm_forward_f32(ya->a1, ya->ln1_mean, ya->ln1_rstd, ya->res1, dsa__tw(t, y->ln1_g),
                                          dsa__tw(t, y->ln1_b), N, C, c->eps);
                lin_forward(t, &y->up, ya->up, ya->a1, ya->xq_up, N);
                dsa_gelu_forward_f32(ya->gl, ya->up, N * F, tanh_gelu);
                lin_forward(t, &y->down, ya->dn, ya->gl, ya->xq_down, N);
                residual(ya->res2, ya->a1, ya->dn, dropout(t, ya->dn_keep, N * C, t->opts.dropout), N * C);
                dsa_layernorm_forward_f32(a->h[l + 1], ya->ln2_mean, ya->ln2_rstd, ya->res2, dsa__tw(t, y->ln2_g),
                                          dsa__tw(t, y->ln2_b), N, C, c->eps);
                if (prune_here && y->token_score) {
                        for (size_t n = 0; n < N; n++)
                                a->tok_score[n] = dsa__token_score(y->token_score, a->h[l + 1] + n * C, C);
                        keep_tokens(a->alive + (l + 1) * N, keys, a->tok_score, B, T, y->token_keep);
                }
                memset(ya->dqkv_ext, 0, N * 3 * A * sizeof(float));
        }

        /* Head: [CLS] -> pooler -> dropout -> classifier. */
        for (size_t i = 0; i < B; i++)
                memcpy(a->cls_x + i * C, a->h[L] + i * T * C, C * sizeof(float));
        if (c->has_pooler) {
                dsa_matmul_forward_f32(a->pool_pre, a->cls_x, dsa__tw(t, t->pool.w), dsa__tw(t, t->pool.b), B, C, C);
                dsa_tanh_forward_f32(a->pool_out, a->pool_pre, B * C);
        } else
                memcpy(a->pool_out, a->cls_x, B * C * sizeof(float));
        mul_into(a->pool_d, a->pool_out, dropout(t, a->pool_keep, B * C, t->opts.dropout), B * C);
        dsa_matmul_forward_f32(a->logits, a->pool_d, dsa__tw(t, t->cls.w), dsa__tw(t, t->cls.b), B, C, NL);
        dsa_softmax_rows_f32(a->probs, a->logits, B, NL, 1.0f);
        double loss = 0.0;
        if (labels)
                for (size_t i = 0; i < B; i++)
                        loss -= log(fmax((double) a->probs[i * NL + (size_t) labels[i]], 1e-30));
        a->loss = (float) (loss / (double) B);

        for (size_t l = 0; l <= L; l++)
                memset(a->dh_ext[l], 0, N * C * sizeof(float));
        memset(a->dlogits_ext, 0, B * NL * sizeof(float));
        if (ret_loss)
                *ret_loss = a->loss;
        if (ret_logits)
                memcpy(ret_logits, a->logits, B * NL * sizeof(float));
        return 0;
}

const float *dsa_trainer_hidden(const struct dsa_trainer *t, size_t l) {
        return t && t->a.valid && l <= t->cfg.n_layer ? t->a.h[l] : NULL;
}

const uint8_t *dsa_trainer_hidden_mask(const struct dsa_trainer *t, size_t l) {
        if (!t || !t->a.valid || l > t->cfg.n_layer)
                return NULL;
        return t->a.alive + (l > 0 ? l - 1 : 0) * t->a.B * t->a.T;
}

const float *dsa_trainer_qkv(const struct dsa_trainer *t, size_t layer, size_t *ret_A) {
        if (!t || !t->a.valid || layer >= t->cfg.n_layer)
                return NULL;
        if (ret_A)
                *ret_A = t->layers[layer].A;
        return t->a.l[layer].qkv;
}

const float *dsa_trainer_logits(const struct dsa_trainer *t) {
        return t && t->a.valid ? t->a.logits : NULL;
}

float *dsa_trainer_grad_hidden(struct dsa_trainer *t, size_t l) {
        return t && t->a.valid && l <= t->cfg.n_layer ? t->a.dh_ext[l] : NULL;
}

float *dsa_trainer_grad_qkv(struct dsa_trainer *t, size_t layer) {
        return t && t->a.valid && layer < t->cfg.n_layer ? t->a.l[layer].dqkv_ext : NULL;
}

float *dsa_trainer_grad_logits(struct dsa_trainer *t) {
        return t && t->a.valid ? t->a.dlogits_ext : NULL;
}

/* ---- backward */


int dsa_trainer_backward(struct dsa_trainer *t, double *head_importance) {
        return dsa_trainer_backward_capture(t, head_importance, NULL);
}

int dsa_trainer_backward_capture(struct dsa_trainer *t, double *head_importance, float *const *dh_out) {
        if (!t || !t->a.valid)
                return -EINVAL;
        const struct dsa_bert_config *c = &t->cfg;
        struct dsa__tacts *a = &t->a;
        const size_t B = a->B, T = a->T, N = B * T, C = c->n_embd, L = c->n_layer, NL = c->n_labels;
        const bool train = a->train, tanh_gelu = c->act == DSA_ACT_GELU_TANH;
        const bool drop_h = train && t->opts.dropout > 0.0f, drop_a = train && t->opts.attn_dropout > 0.0f;

        /* d logits: the extra gradient plus the mean cross-entropy's (in scratch, so a second
         * backward of the same forward adds the same gradients again). */
        float *dl = a->dlogits;
        memcpy(dl, a->dlogits_ext, B * NL * sizeof(float));
        if (a->have_labels)
                for (size_t i = 0; i < B; i++)
                        for (size_t k = 0; k < NL; k++)
                                dl[i * NL + k] += t->ce_weight *
                                                  (a->probs[i * NL + k] - (k == (size_t) a->labels[i] ? 1.0f : 0.0f)) /
                                                  (float) B;
        float *dpool = a->d1, *dcls = a->d2;
        memset(dpool, 0, B * C * sizeof(float));
        dsa_matmul_backward_f32(dpool, dsa__tg(t, t->cls.w), dsa__tg(t, t->cls.b), dl, a->pool_d, dsa__tw(t, t->cls.w),
                                B, C, NL);
        mul_into(dpool, dpool, drop_h ? a->pool_keep : NULL, B * C);
        memset(dcls, 0, B * C * sizeof(float));
        if (c->has_pooler) {
                float *dpre = a->d0;
                memset(dpre, 0, B * C * sizeof(float));
                dsa_tanh_backward_f32(dpre, a->pool_out, dpool, B * C);
                dsa_matmul_backward_f32(dcls, dsa__tg(t, t->pool.w), dsa__tg(t, t->pool.b), dpre, a->cls_x,
                                        dsa__tw(t, t->pool.w), B, C, C);
        } else
                memcpy(dcls, dpool, B * C * sizeof(float));

        float *dh = a->d0, *dres = a->d1, *dx = a->d2;
        memcpy(dh, a->dh_ext[L], N * C * sizeof(float));
        for (size_t i = 0; i < B; i++)
                for (size_t k = 0; k < C; k++)
                        dh[i * T * C + k] += dcls[i * C + k];

        for (size_t l = L; l-- > 0;) {
                struct dsa__tlayer *y = &t->layers[l];
                struct dsa__tlacts *ya = &a->l[l];
                const size_t A = y->A, NH = y->NH, HS = A / NH, F = y->F;

                if (dh_out && dh_out[l + 1])
                        memcpy(dh_out[l + 1], dh, N * C * sizeof(float));
                memset(dres, 0, N * C * sizeof(float));
                dsa_layernorm_backward_f32(dres, dsa__tg(t, y->ln2_g), dsa__tg(t, y->ln2_b), dh, ya->res2,
                                           dsa__tw(t, y->ln2_g), ya->ln2_mean, ya->ln2_rstd, N, C);
                memcpy(dx, dres, N * C * sizeof(float));                       /* d a1, residual path */
                mul_into(dh, dres, drop_h ? ya->dn_keep : NULL, N * C);        /* d dn */
                memset(a->dF, 0, N * F * sizeof(float));
                lin_backward(t, &y->down, a->dF, dh, ya->gl, ya->xq_down, N);
                memset(a->dF2, 0, N * F * sizeof(float));
                dsa_gelu_backward_f32(a->dF2, ya->up, a->dF, N * F, tanh_gelu);
                lin_backward(t, &y->up, dx, a->dF2, ya->a1, ya->xq_up, N);

                memset(dres, 0, N * C * sizeof(float));
                dsa_layernorm_backward_f32(dres, dsa__tg(t, y->ln1_g), dsa__tg(t, y->ln1_b), dx, ya->res1,
                                           dsa__tw(t, y->ln1_g), ya->ln1_mean, ya->ln1_rstd, N, C);
                memcpy(dx, dres, N * C * sizeof(float));                       /* d h[l], residual path */
                mul_into(dh, dres, drop_h ? ya->ao_keep : NULL, N * C);        /* d ao */
                float *dctx = a->dF2;
                memset(dctx, 0, N * A * sizeof(float));
                lin_backward(t, &y->o, dctx, dh, ya->ctx, ya->xq_o, N);
                if (head_importance) {
                        double *hi = head_importance;
                        for (size_t k = 0; k < l; k++)
                                hi += t->layers[k].NH;
                        /* Per example, as Michel et al. average |dL(x)/d mask_h| over examples x:
                         * the signs of different examples must not cancel. */
                        for (size_t bb = 0; bb < B; bb++)
                                for (size_t h = 0; h < NH; h++) {
                                        double s = 0.0;
                                        for (size_t n = bb * T; n < (bb + 1) * T; n++)
                                                for (size_t d = 0; d < HS; d++)
                                                        s += (double) dctx[n * A + h * HS + d] *
                                                             ya->ctx[n * A + h * HS + d];
                                        hi[h] += fabs(s);
                                }
                }
                float *dqkv = a->dA;
                memcpy(dqkv, ya->dqkv_ext, N * 3 * A * sizeof(float));
                memset(a->datt, 0, B * NH * T * T * sizeof(float));
                dsa_attn_values_backward_f32(a->datt, dqkv + 2 * A, 3 * A, dctx, A, ya->att, drop_a ? ya->att_keep : NULL,
                                             ya->qkv + 2 * A, B, T, NH, HS);
                dsa_scores_softmax_backward_f32(dqkv, dqkv + A, a->datt, ya->att, ya->qkv, 3 * A, ya->qkv + A, 3 * A, B,
                                                T, NH, HS, 1.0f / sqrtf((float) HS));
                lin_backward(t, &y->qkv, dx, dqkv, a->h[l], ya->xq_qkv, N);
                for (size_t i = 0; i < N * C; i++)
                        dx[i] += a->dh_ext[l][i];
                float *tmp = dh;
                dh = dx, dx = tmp;
        }

        /* Embeddings: dropout, LayerNorm, then the three tables. */
        mul_into(dh, dh, drop_h ? a->emb_keep : NULL, N * C);
        memset(dres, 0, N * C * sizeof(float));
        dsa_layernorm_backward_f32(dres, dsa__tg(t, t->g_eln_g), dsa__tg(t, t->g_eln_b), dh, a->emb_in,
                                   dsa__tw(t, t->g_eln_g), a->emb_mean, a->emb_rstd, N, C);
        float *gte = dsa__tg(t, t->g_wte), *gpe = dsa__tg(t, t->g_wpe), *gtt = dsa__tg(t, t->g_wtt);
        for (size_t n = 0; n < N; n++) {
                float *e = gte + (size_t) a->ids[n] * C, *p = gpe + (n % T) * C, *y = gtt + (size_t) a->types[n] * C;
                const float *d = dres + n * C;
                for (size_t i = 0; i < C; i++) {
                        e[i] += d[i];
                        p[i] += d[i];
                        y[i] += d[i];
                }
        }
        return 0;
}
