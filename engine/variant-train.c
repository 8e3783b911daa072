/* The parts of dsactl optimize that train (train.h): gradient head importance for structured
 * pruning, recovery fine-tuning after it, and the learned token-pruning score. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "bert.h"
#include "model-internal.h"
#include "prune.h"
#include "train.h"
#include "calib.h"
#include "distill.h"
#include "variant.h"

#define GRAD_BATCH 32
#define GRAD_MAX_LEN 128

int dsa__head_importance_grad(const struct dsa_model *m, const struct dsa_optimize_opts *o, double *ret_imp) {
        const struct dsa_bert_config *c = &m->bert->cfg;
        const size_t n = o->n_calib, L = c->n_labels;
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        _cleanup_(dsa_train_set_freep) struct dsa_train_set *s = NULL;
        _cleanup_free_ float *logits = NULL;
        _cleanup_free_ int32_t *labels = NULL;
        struct dsa_train_opts to;
        struct dsa_train_batch bb = { 0 };
        int r;

        if (L == 0)
                return dsa__error(-EOPNOTSUPP, "gradient head importance needs a classifier head");
        logits = malloc(n * L * sizeof(float));
        labels = malloc(n * sizeof(int32_t));
        if (!logits || !labels)
                return -ENOMEM;
        /* The model's own predictions are the labels: calibration text carries none. */
        if ((r = dsa_model_classify_texts(m, o->calib, o->calib_pairs, n, logits)) < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                size_t best = 0;
                for (size_t k = 1; k < L; k++)
                        if (logits[i * L + k] > logits[i * L + best])
                                best = k;
                labels[i] = (int32_t) best;
        }
        dsa_train_opts_default(&to);
        to.dropout = to.attn_dropout = 0.0f;
        if ((r = dsa_trainer_new(m, &to, &t)) < 0 ||
            (r = dsa_train_set_new(m, o->calib, o->calib_pairs, labels, n, GRAD_MAX_LEN, &s)) < 0)
                return r;
        for (size_t i = 0; i < n && r >= 0; i += GRAD_BATCH) {
                if ((r = dsa_train_set_slice(s, i, n - i < GRAD_BATCH ? n - i : GRAD_BATCH, &bb)) >= 0 &&
                    (r = dsa_trainer_forward(t, &bb.b, bb.labels, false, NULL, NULL)) >= 0)
                        r = dsa_trainer_backward(t, ret_imp);
                dsa_trainer_zero_grad(t);
        }
        dsa_train_batch_clear(&bb);
        return r < 0 ? r : 0;
}

int dsa__recover_teacher(const struct dsa_model *m, const struct dsa_optimize_opts *o, struct dsa_trainer **ret) {
        struct dsa_train_opts to;

        if (!o->recover_texts || !o->recover_labels || o->n_recover == 0)
                return dsa__error(-EINVAL, "recovery fine-tuning needs labelled training texts");
        if (o->prune_heads <= 0 && o->prune_ffn <= 0 && o->token_keep < 0)
                return dsa__error(-EINVAL, "recovery fine-tuning follows structured pruning (heads, FFN) or "
                                           "token pruning");
        /* It trains and writes back fp32 weights: a quantized, sparse or token-pruned input
         * would silently lose what it was. */
        for (size_t l = 0; l < m->bert->cfg.n_layer; l++)
                for (int j = 0; j < _DSA__LIN_MAX; j++) {
                        enum dsa_wformat f = dsa__bert_linear(m->bert, l, (enum dsa__bert_lin) j)->fmt;
                        if (f == DSA_WFORMAT_Q8 || f == DSA_WFORMAT_SPARSE || m->bert->layers[l].token_keep < 1.0f)
                                return dsa__error(-EINVAL, "recovery fine-tuning needs a model that is not int8, "
                                                           "sparse or token-pruned (layer %zu)", l);
                }
        dsa_train_opts_default(&to);
        return dsa_trainer_new(m, &to, ret);
}

static int recover_batch(void *userdata, const struct dsa_batch *b, const int32_t *labels, float *ret_loss) {
        struct dsa_distill_losses l;
        int r = dsa_distiller_batch(userdata, b, labels, &l);
        if (r >= 0)
                *ret_loss = l.total;
        return r;
}

/* The labels' cross-entropy alone pulls an already fine-tuned model away from what it learnt
 * (on SST-2 it cost 1.7 points where distillation kept them), so the pruned model learns the
 * unpruned one's softened logits and hidden states (identity projections: same width). */
int dsa__model_recover(struct dsa_model *m, const struct dsa_optimize_opts *o, struct dsa_trainer *unpruned) {
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        _cleanup_(dsa_distiller_freep) struct dsa_distiller *d = NULL;
        _cleanup_(dsa_train_set_freep) struct dsa_train_set *s = NULL;
        _cleanup_(dsa_model_freep) struct dsa_model *out = NULL;
        struct dsa_train_opts to;
        struct dsa_distill_opts dop;
        int r;

        if (!unpruned)
                return -EINVAL;
        dsa_train_opts_default(&to);
        to.lr = o->recover_lr > 0.0f ? o->recover_lr : 5e-5f;
        to.total_steps = o->recover_steps;
        to.warmup_steps = o->recover_steps / 10;
        to.dropout = to.attn_dropout = 0.0f;
        dsa_distill_opts_default(&dop);
        dop.w_hard = 0.0f;
        dop.w_feature = 1.0f;
        if ((r = dsa_trainer_new(m, &to, &t)) < 0 || (r = dsa_distiller_new(unpruned, t, &dop, &d)) < 0 ||
            (r = dsa_train_set_new(m, o->recover_texts, o->recover_pairs, o->recover_labels, o->n_recover, GRAD_MAX_LEN,
                                   &s)) < 0)
                return r;
        const struct dsa_fit f = {
                .batch = GRAD_BATCH, .total_steps = o->recover_steps, .seed = to.seed, .batch_fn = recover_batch,
                .batch_userdata = d,
        };
        if ((r = dsa_trainer_fit(t, s, &f)) < 0 || (r = dsa_trainer_export(t, &out)) < 0)
                return r;
        /* The trained encoder replaces m's; its tokenizer stays m's own. */
        struct dsa_bert *b = out->bert;
        out->bert = NULL;
        b->att = m->bert->att;
        dsa__att_init(&m->bert->att);
        dsa__bert_free(m->bert);
        m->bert = b;
        dsa__variant_log(o, "recovery: %llu steps distilled from the unpruned model on %zu examples",
                         (unsigned long long) o->recover_steps, o->n_recover);
        return 0;
}

/* ---- learned token scores */

/* The decision margin's gradient on the logits g (NL) of one row: +1 on the predicted class, -1
 * on the runner-up (a single logit: +1 on it). */
static void margin_grad(float *g, const float *logits, size_t NL) {
        size_t a = 0, b = NL > 1 ? 1 : 0;

        if (NL > 1 && logits[1] > logits[0])
                a = 1, b = 0;
        for (size_t k = 2; k < NL; k++) {
                if (logits[k] > logits[a])
                        b = a, a = k;
                else if (logits[k] > logits[b])
                        b = k;
        }
        memset(g, 0, NL * sizeof(float));
        g[a] = 1.0f;
        if (NL > 1)
                g[b] = -1.0f;
}

static double norm(const float *x, size_t n) {
        double s = 0.0;
        for (size_t i = 0; i < n; i++)
                s += (double) x[i] * x[i];
        return sqrt(s);
}

/* The least-squares system of one layer's score: A (C+1, C+1) += x^T x, rhs (C+1) += x^T y,
 * yy += y^2 over its rows. */
struct score_fit {
        double *A, *rhs, yy;
        size_t rows;
};

/* Adds one batch of layer l's rows: for each alive token but [CLS], x = (h, 1) with h its state
 * after the layer, y = log(n s / sum s + 1e-4), s the norm of the margin's gradient at that
 * state (dh) and n the row's alive tokens, the sum over them. x: scratch (B T, C + 1). */
static void score_fit_add(struct score_fit *f, float *x, const float *h, const float *dh, const uint8_t *alive,
                          size_t B, size_t T, size_t C) {
        size_t rows = 0;

        for (size_t b = 0; b < B; b++) {
                double sum = 0.0;
                size_t n = 0;
                for (size_t k = 0; k < T; k++)
                        if (alive[b * T + k])
                                sum += norm(dh + (b * T + k) * C, C), n++;
                for (size_t k = 1; k < T && sum > 0.0; k++) {
                        const size_t i = b * T + k;
                        if (!alive[i])
                                continue;
                        const double y = log((double) n * norm(dh + i * C, C) / sum + 1e-4);
                        float *xr = x + rows * (C + 1);
                        memcpy(xr, h + i * C, C * sizeof(float));
                        xr[C] = 1.0f;
                        for (size_t c = 0; c <= C; c++)
                                f->rhs[c] += y * xr[c];
                        f->yy += y * y;
                        rows++;
                }
        }
        dsa_prune_stats_add(NULL, f->A, x, rows, C + 1);
        f->rows += rows;
}

/* Solves (A + lambda I) w = rhs, lambda = 1e-3 of A's mean diagonal, into w (C + 1) as fp32;
 * logs the fit's R^2. */
static int score_fit_solve(struct score_fit *f, float *w, size_t C, size_t layer, const struct dsa_optimize_opts *o) {
        const size_t n = C + 1;
        _cleanup_free_ double *L = malloc(n * n * sizeof(double)), *z = malloc(n * sizeof(double));
        double tr = 0.0, sse, sy = f->rhs[C];
        int r;

        if (!L || !z)
                return -ENOMEM;
        if (f->rows < 2)
                return dsa__error(-EINVAL, "the calibration texts have %zu tokens past [CLS] to fit a token score on",
                                  f->rows);
        for (size_t i = 0; i < n; i++)
                tr += f->A[i * n + i];
        memcpy(L, f->A, n * n * sizeof(double));
        for (size_t i = 0; i < n; i++)
                L[i * n + i] += 1e-3 * tr / (double) n;
        if ((r = dsa__cholesky_lower(L, n)) < 0)
                return dsa__error(r, "token score of layer %zu: the least-squares system is singular", layer);
        memcpy(z, f->rhs, n * sizeof(double));
        cblas_dtrsv(CblasRowMajor, CblasLower, CblasNoTrans, CblasNonUnit, (int) n, L, (int) n, z, 1);
        cblas_dtrsv(CblasRowMajor, CblasLower, CblasTrans, CblasNonUnit, (int) n, L, (int) n, z, 1);
        /* SSE = yy - 2 w.rhs + w^T A w. */
        sse = f->yy;
        for (size_t i = 0; i < n; i++) {
                double aw = 0.0;
                for (size_t j = 0; j < n; j++)
                        aw += f->A[i * n + j] * z[j];
                sse += z[i] * aw - 2.0 * z[i] * f->rhs[i];
                w[i] = (float) z[i];
        }
        for (size_t i = 0; i < n; i++)
                if (!isfinite(w[i]))
                        return dsa__error(-EDOM, "token score of layer %zu is not finite", layer);
        const double sst = f->yy - sy * sy / (double) f->rows;
        dsa__variant_log(o, "token score: layer %zu fitted on %zu tokens, R^2 %.3f", layer, f->rows,
                         sst > 0 ? 1.0 - sse / sst : 0.0);
        return 0;
}

int dsa__token_score_fit(struct dsa_model *m, const struct dsa_optimize_opts *o) {
        struct dsa_bert *bert = m->bert;
        const size_t L = bert->cfg.n_layer, C = bert->cfg.n_embd, NL = bert->cfg.n_labels, n = o->n_calib;
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        _cleanup_(dsa_train_set_freep) struct dsa_train_set *s = NULL;
        _cleanup_free_ int32_t *labels = NULL;
        _cleanup_free_ float *x = NULL;
        _cleanup_free_ struct score_fit *fit = NULL;
        _cleanup_free_ float **dh = NULL;
        struct dsa_train_opts to;
        struct dsa_train_batch bb = { 0 };
        size_t cap = 0;
        int r;

        if ((r = dsa__calib_need(o, "--token-score learned")) < 0)
                return r;
        if (NL == 0)
                return dsa__error(-EOPNOTSUPP, "a learned token score needs a classifier head");
        if (L < 2)
                return dsa__error(-EINVAL, "a one-layer model has no layer to prune tokens after");
        /* Fitted on the model without token pruning: every later layer sees every token. */
        for (size_t l = 0; l < L; l++)
                bert->layers[l].token_keep = 1.0f;
        dsa__bert_drop_token_scores(bert);
        labels = calloc(n, sizeof(int32_t)); /* unused: the backward starts from the margin */
        fit = calloc(L, sizeof(*fit));
        dh = calloc(L + 1, sizeof(float *));
        if (!labels || !fit || !dh)
                return -ENOMEM;
        for (size_t l = 0; l + 1 < L; l++) {
                fit[l].A = calloc((C + 1) * (C + 1), sizeof(double));
                fit[l].rhs = calloc(C + 1, sizeof(double));
                if (!fit[l].A || !fit[l].rhs) {
                        r = -ENOMEM;
                        goto out;
                }
        }
        dsa_train_opts_default(&to);
        to.dropout = to.attn_dropout = 0.0f;
        if ((r = dsa_trainer_new(m, &to, &t)) < 0 ||
            (r = dsa_train_set_new(m, o->calib, o->calib_pairs, labels, n, GRAD_MAX_LEN, &s)) < 0)
                goto out;
        for (size_t i = 0; i < n; i += GRAD_BATCH) {
                if ((r = dsa_train_set_slice(s, i, MIN(n - i, (size_t) GRAD_BATCH), &bb)) < 0 ||
                    (r = dsa_trainer_forward(t, &bb.b, NULL, false, NULL, NULL)) < 0)
                        goto out;
                const size_t B = bb.b.B, T = bb.b.T;
                if (B * T > cap) {
                        bool ok;
                        cap = B * T;
                        free(x);
                        ok = (x = malloc(cap * (C + 1) * sizeof(float))) != NULL;
                        for (size_t l = 1; l < L; l++) { /* d hidden[l] after each layer but the last */
                                free(dh[l]);
                                ok &= (dh[l] = malloc(cap * C * sizeof(float))) != NULL;
                        }
                        if (!ok) {
                                r = -ENOMEM;
                                goto out;
                        }
                }
                const float *logits = dsa_trainer_logits(t);
                float *g = dsa_trainer_grad_logits(t);
                for (size_t b = 0; b < B; b++)
                        margin_grad(g + b * NL, logits + b * NL, NL);
                if ((r = dsa_trainer_backward_capture(t, NULL, dh)) < 0)
                        goto out;
                dsa_trainer_zero_grad(t);
                for (size_t l = 0; l + 1 < L; l++)
                        score_fit_add(&fit[l], x, dsa_trainer_hidden(t, l + 1), dh[l + 1],
                                      dsa_trainer_hidden_mask(t, l + 1), B, T, C);
        }
        for (size_t l = 0; l + 1 < L; l++) {
                float *w = malloc((C + 1) * sizeof(float));
                if (!w) {
                        r = -ENOMEM;
                        goto out;
                }
                if ((r = score_fit_solve(&fit[l], w, C, l, o)) < 0) {
                        free(w);
                        goto out;
                }
                bert->layers[l].token_score = w;
        }
        r = 0;
out:
        if (r < 0)
                dsa__bert_drop_token_scores(bert);
        for (size_t l = 0; l < L; l++)
                free(fit[l].A), free(fit[l].rhs);
        for (size_t l = 0; l <= L; l++)
                free(dh[l]);
        dsa_train_batch_clear(&bb);
        return r;
}
