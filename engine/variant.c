/* dsa_model_optimize(): the paper's compression techniques applied to a loaded model, in the
 * order that lets each see the model the next will run: structured pruning (heads, then FFN
 * neurons, scored on calibration text and physically removed), unstructured pruning (per
 * matrix, with the statistics of its own input in the already pruned model), the token-pruning
 * schedule, and last the weight format (int8 static scales are measured on the final model,
 * without token pruning: calibration passes see every token). Calibration statistics: calib.c. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "calib.h"
#include "kernels/gemm-q8.h"
#include "model-internal.h"
#include "train.h"
#include "variant.h"

/* ---- structured pruning */

/* Keeps heads keep[0..n_head) of layer l: Q, K, V rows and biases, the output dense's columns. */
static int remove_heads(struct dsa_bert *b, size_t l, const bool *keep) {
        struct dsa_bert_layer *y = &b->layers[l];
        const size_t C = b->cfg.n_embd, HS = C / b->cfg.n_head, A = y->n_head * HS;
        size_t nk = 0;
        int r;

        for (size_t h = 0; h < y->n_head; h++)
                nk += keep[h];
        const size_t A1 = nk * HS;
        _cleanup_free_ float *qkv = malloc((3 * A * C + 1) * sizeof(float));
        _cleanup_free_ float *o = malloc((C * A + 1) * sizeof(float));
        _cleanup_free_ float *qkv1 = malloc((3 * A1 * C + 1) * sizeof(float));
        _cleanup_free_ float *o1 = malloc((C * A1 + 1) * sizeof(float));
        _cleanup_free_ float *bias1 = malloc((3 * A1 + 1) * sizeof(float));
        if (!qkv || !o || !qkv1 || !o1 || !bias1)
                return -ENOMEM;
        if (dsa__linear_unpack(&y->qkv, qkv) < 0 || dsa__linear_unpack(&y->o, o) < 0)
                return -ENOMEM;
        for (size_t p = 0; p < 3; p++) {
                size_t h1 = 0;
                for (size_t h = 0; h < y->n_head; h++) {
                        if (!keep[h])
                                continue;
                        memcpy(qkv1 + (p * A1 + h1 * HS) * C, qkv + (p * A + h * HS) * C, HS * C * sizeof(float));
                        memcpy(bias1 + p * A1 + h1 * HS, y->qkv_b + p * A + h * HS, HS * sizeof(float));
                        h1++;
                }
        }
        for (size_t oc = 0; oc < C; oc++) {
                size_t h1 = 0;
                for (size_t h = 0; h < y->n_head; h++)
                        if (keep[h])
                                memcpy(o1 + oc * A1 + h1++ * HS, o + oc * A + h * HS, HS * sizeof(float));
        }
        enum dsa_wformat fq = y->qkv.fmt, fo = y->o.fmt;
        dsa__linear_clear(&y->qkv);
        dsa__linear_clear(&y->o);
        if ((r = dsa__linear_init(&y->qkv, qkv1, 3 * A1, C, fq == DSA_WFORMAT_Q8 ? DSA_WFORMAT_F32 : fq, 0.0f)) < 0 ||
            (r = dsa__linear_init(&y->o, o1, C, A1, fo == DSA_WFORMAT_Q8 ? DSA_WFORMAT_F32 : fo, 0.0f)) < 0)
                return r;
        /* The bias shrinks in place: its arena slot was sized for all heads. */
        memcpy(y->qkv_b, bias1, 3 * A1 * sizeof(float));
        y->n_head = (uint32_t) nk;
        return 0;
}

/* Keeps FFN neurons keep[0..n_ff) of layer l: up's rows and bias, down's columns. */
static int remove_neurons(struct dsa_bert *b, size_t l, const bool *keep) {
        struct dsa_bert_layer *y = &b->layers[l];
        const size_t C = b->cfg.n_embd, F = y->n_ff;
        size_t F1 = 0;
        int r;

        for (size_t j = 0; j < F; j++)
                F1 += keep[j];
        _cleanup_free_ float *up = malloc((F * C + 1) * sizeof(float));
        _cleanup_free_ float *down = malloc((C * F + 1) * sizeof(float));
        _cleanup_free_ float *up1 = malloc((F1 * C + 1) * sizeof(float));
        _cleanup_free_ float *down1 = malloc((C * F1 + 1) * sizeof(float));
        if (!up || !down || !up1 || !down1)
                return -ENOMEM;
        if (dsa__linear_unpack(&y->up, up) < 0 || dsa__linear_unpack(&y->down, down) < 0)
                return -ENOMEM;
        size_t j1 = 0;
        for (size_t j = 0; j < F; j++) {
                if (!keep[j])
                        continue;
                memcpy(up1 + j1 * C, up + j * C, C * sizeof(float));
                y->up_b[j1] = y->up_b[j]; /* j1 <= j: in place, front to back */
                for (size_t oc = 0; oc < C; oc++)
                        down1[oc * F1 + j1] = down[oc * F + j];
                j1++;
        }
        enum dsa_wformat fu = y->up.fmt, fd = y->down.fmt;
        dsa__linear_clear(&y->up);
        dsa__linear_clear(&y->down);
        if ((r = dsa__linear_init(&y->up, up1, F1, C, fu == DSA_WFORMAT_Q8 ? DSA_WFORMAT_F32 : fu, 0.0f)) < 0 ||
            (r = dsa__linear_init(&y->down, down1, C, F1, fd == DSA_WFORMAT_Q8 ? DSA_WFORMAT_F32 : fd, 0.0f)) < 0)
                return r;
        y->n_ff = (uint32_t) F1;
        return 0;
}

struct scored {
        double score;
        size_t layer, index;
};

static int cmp_scored(const void *a, const void *b) {
        const struct scored *x = a, *y = b;
        if (x->score != y->score)
                return x->score < y->score ? -1 : 1;
        if (x->layer != y->layer)
                return x->layer < y->layer ? -1 : 1;
        return (x->index > y->index) - (x->index < y->index);
}

/* Removes a fraction of all heads, lowest importance first. Importance is the mean norm of the
 * head's contribution to the output dense, normalized by the layer's L2 norm of importances
 * (as Michel et al. normalize), so layers compete on equal terms; every layer keeps one head. */
static int prune_heads(struct dsa_model *m, const struct dsa_optimize_opts *o) {
        struct dsa_bert *b = m->bert;
        const size_t L = b->cfg.n_layer;
        _cleanup_(dsa__calib_free) struct dsa__calib c = { 0 };
        size_t total = 0, n = 0;
        int r;

        if ((r = dsa__calib_need(o, "--prune-heads")) < 0 || (r = dsa__calib_init(&c, b, DSA__WANT_HEADS, 0)) < 0)
                return r;
        for (size_t l = 0; l < L; l++)
                total += b->layers[l].n_head;
        if (o->head_grad) {
                _cleanup_free_ double *g = calloc(total, sizeof(double));
                if (!g)
                        return -ENOMEM;
                if ((r = dsa__head_importance_grad(m, o, g)) < 0)
                        return r;
                for (size_t l = 0, k = 0; l < L; l++)
                        for (size_t h = 0; h < b->layers[l].n_head; h++)
                                c.head_imp[l][h] = g[k++];
        } else if ((r = dsa__calib_run(&c, m, o)) < 0)
                return r;
        _cleanup_free_ struct scored *s = calloc(total + 1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        for (size_t l = 0; l < L; l++) {
                double norm = 0;
                for (size_t h = 0; h < b->layers[l].n_head; h++)
                        norm += c.head_imp[l][h] * c.head_imp[l][h];
                norm = norm > 0 ? sqrt(norm) : 1;
                for (size_t h = 0; h < b->layers[l].n_head; h++)
                        s[n++] = (struct scored) { c.head_imp[l][h] / norm, l, h };
        }
        qsort(s, n, sizeof(*s), cmp_scored);

        size_t drop = (size_t) llround(o->prune_heads * (double) total), dropped = 0;
        _cleanup_free_ bool *keep = malloc(L * b->cfg.n_head * sizeof(bool));
        _cleanup_free_ size_t *left = malloc(L * sizeof(size_t));
        if (!keep || !left)
                return -ENOMEM;
        for (size_t l = 0; l < L; l++) {
                left[l] = b->layers[l].n_head;
                for (size_t h = 0; h < b->cfg.n_head; h++)
                        keep[l * b->cfg.n_head + h] = true;
        }
        for (size_t i = 0; i < n && dropped < drop; i++) {
                if (left[s[i].layer] <= 1)
                        continue;
                keep[s[i].layer * b->cfg.n_head + s[i].index] = false;
                left[s[i].layer]--;
                dropped++;
        }
        for (size_t l = 0; l < L; l++) {
                if ((r = remove_heads(b, l, keep + l * b->cfg.n_head)) < 0)
                        return r;
                dsa__variant_log(o, "layer %zu: %u heads kept", l, b->layers[l].n_head);
        }
        return 0;
}

/* Removes a fraction of each layer's FFN neurons: importance of neuron j is the mean |GELU
 * output| times the L2 norm of W_down's column j (what it can add to the residual). */
static int prune_ffn(struct dsa_model *m, const struct dsa_optimize_opts *o) {
        struct dsa_bert *b = m->bert;
        const size_t L = b->cfg.n_layer, C = b->cfg.n_embd;
        _cleanup_(dsa__calib_free) struct dsa__calib c = { 0 };
        int r;

        if ((r = dsa__calib_need(o, "--prune-ffn")) < 0 || (r = dsa__calib_init(&c, b, DSA__WANT_FFN, 0)) < 0 ||
            (r = dsa__calib_run(&c, m, o)) < 0)
                return r;
        for (size_t l = 0; l < L; l++) {
                const size_t F = b->layers[l].n_ff;
                _cleanup_free_ float *down = malloc((C * F + 1) * sizeof(float));
                _cleanup_free_ struct scored *s = calloc(F + 1, sizeof(*s));
                _cleanup_free_ bool *keep = malloc(F + 1);
                if (!down || !s || !keep || dsa__linear_unpack(&b->layers[l].down, down) < 0)
                        return -ENOMEM;
                for (size_t j = 0; j < F; j++) {
                        double nrm = 0;
                        for (size_t oc = 0; oc < C; oc++)
                                nrm += (double) down[oc * F + j] * down[oc * F + j];
                        s[j] = (struct scored) { c.ffn_imp[l][j] * sqrt(nrm), l, j };
                        keep[j] = true;
                }
                qsort(s, F, sizeof(*s), cmp_scored);
                size_t drop = (size_t) llround(o->prune_ffn * (double) F);
                drop = MIN(drop, F > 0 ? F - 1 : 0);
                for (size_t i = 0; i < drop; i++)
                        keep[s[i].index] = false;
                if ((r = remove_neurons(b, l, keep)) < 0)
                        return r;
                dsa__variant_log(o, "layer %zu: %u FFN neurons kept", l, b->layers[l].n_ff);
        }
        return 0;
}

/* ---- unstructured pruning */

static const char *const lin_names[_DSA__LIN_MAX] = { "qkv", "attn_output", "ffn_up", "ffn_down" };

/* Prunes every matrix of layer l; stats from a calibration pass over the model as pruned so far
 * (SparseGPT's sequential order), none for magnitude. */
static int sparsify_layer(struct dsa_model *m, const struct dsa_optimize_opts *o, size_t l) {
        struct dsa_bert *b = m->bert;
        _cleanup_(dsa__calib_free) struct dsa__calib c = { 0 };
        int r;

        if (o->sparsity_method != DSA_PRUNE_MAGNITUDE) {
                unsigned want = o->sparsity_method == DSA_PRUNE_SPARSEGPT ? DSA__WANT_HESS : DSA__WANT_SQ;
                if ((r = dsa__calib_init(&c, b, want, l)) < 0 || (r = dsa__calib_run(&c, m, o)) < 0)
                        return r;
        }
        for (int j = 0; j < _DSA__LIN_MAX; j++) {
                struct dsa__linear *lin = dsa__bert_linear(b, l, (enum dsa__bert_lin) j);
                const size_t OC = lin->OC, C = lin->C;
                _cleanup_free_ float *w = malloc((OC * C + 1) * sizeof(float));
                _cleanup_free_ float *xn = malloc((C + 1) * sizeof(float));
                if (!w || !xn)
                        return -ENOMEM;
                if (OC == 0 || C == 0)
                        continue;
                if (dsa__linear_unpack(lin, w) < 0)
                        return -ENOMEM;
                switch (o->sparsity_method) {
                case DSA_PRUNE_MAGNITUDE:
                        r = dsa_prune_magnitude(w, OC, C, (float) o->sparsity, o->sparsity_pattern);
                        break;
                case DSA_PRUNE_WANDA:
                        for (size_t k = 0; k < C; k++)
                                xn[k] = (float) sqrt(c.lin[l][j].sq[k]);
                        r = dsa_prune_wanda(w, OC, C, xn, (float) o->sparsity, o->sparsity_pattern);
                        break;
                default:
                        r = dsa_prune_sparsegpt(w, OC, C, c.lin[l][j].H, (float) o->sparsity, o->sparsity_pattern,
                                                0.01, 128);
                        break;
                }
                if (r < 0) {
                        char why[200];
                        snprintf(why, sizeof(why), "%s", dsa_error_message(r));
                        return dsa__error(r, "layer %zu %s: %s", l, lin_names[j], why);
                }
                dsa__linear_clear(lin);
                r = dsa__linear_init(lin, w, OC, C,
                                     o->sparsity_pattern == DSA_SPARSE_BLOCK16 ? DSA_WFORMAT_SPARSE : DSA_WFORMAT_F32,
                                     0.0f);
                if (r < 0)
                        return r;
        }
        dsa__variant_log(o, "layer %zu: %.0f%% of weights pruned", l, o->sparsity * 100);
        return 0;
}

/* ---- predictions on the calibration set */

static int predict(struct dsa_model *m, const struct dsa_optimize_opts *o, float *logits) {
        return dsa__model_calibrate(m, o->calib, o->calib_pairs, o->n_calib, NULL, logits);
}

static size_t argmax(const float *x, size_t n) {
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
                if (x[i] > x[best])
                        best = i;
        return best;
}

/* Fraction of texts whose predicted class in b equals a's. */
static double agreement(const float *a, const float *b, size_t n, size_t NL) {
        size_t same = 0;
        for (size_t i = 0; i < n; i++)
                same += argmax(a + i * NL, NL) == argmax(b + i * NL, NL);
        return n ? (double) same / (double) n : 1.0;
}

/* Mean KL(softmax(a) || softmax(b)) over the texts. */
static double mean_kl(const float *a, const float *b, size_t n, size_t NL) {
        double kl = 0;
        for (size_t i = 0; i < n; i++) {
                const float *x = a + i * NL, *y = b + i * NL;
                double mx = x[argmax(x, NL)], my = y[argmax(y, NL)], zx = 0, zy = 0;
                for (size_t k = 0; k < NL; k++) {
                        zx += exp(x[k] - mx);
                        zy += exp(y[k] - my);
                }
                for (size_t k = 0; k < NL; k++) {
                        double lp = x[k] - mx - log(zx), lq = y[k] - my - log(zy);
                        kl += exp(lp) * (lp - lq);
                }
        }
        return n ? kl / (double) n : 0;
}

/* ---- token pruning */

static void set_keep(struct dsa_bert *b, double keep) {
        for (size_t l = 0; l < b->cfg.n_layer; l++)
                b->layers[l].token_keep = l + 1 < b->cfg.n_layer ? (float) keep : 1.0f;
}

/* Relative cost of a schedule: the fraction of tokens entering each layer, summed (the last
 * layer's queries past [CLS] are skipped anyway for classification). */
static double schedule_cost(const float *keep, size_t L) {
        double frac = 1, cost = 0;
        for (size_t l = 0; l < L; l++) {
                cost += frac;
                frac *= keep[l];
        }
        return cost;
}

/* A per-layer schedule, greedily: start keeping everything; at each step try lowering each
 * layer's keep fraction by 0.1 (down to 0.1) and take the move that saves the most predicted
 * cost among those whose calibration predictions still agree with the unpruned model's on at
 * least token_target of the texts; stop when no move qualifies. Or, given a fraction, that
 * fraction after every layer but the last, or the listed fraction after each layer. */
static int token_schedule(struct dsa_model *m, const struct dsa_optimize_opts *o) {
        struct dsa_bert *b = m->bert;
        const size_t NL = b->cfg.n_labels, n = o->n_calib, L = b->cfg.n_layer;
        int r;

        if (o->token_learned && (r = dsa__token_score_fit(m, o)) < 0)
                return r;
        if (!o->token_learned)
                dsa__bert_drop_token_scores(b);

        if (o->token_keep > 0 && o->n_token_layers > 0) {
                if (o->n_token_layers + 1 != L)
                        return dsa__error(-EINVAL, "--token-keep lists %zu fractions; a model of %zu layers takes %zu",
                                          o->n_token_layers, L, L - 1);
                /* All checked before the model changes. */
                for (size_t l = 0; l + 1 < L; l++)
                        if (!(o->token_layers[l] > 0 && o->token_layers[l] <= 1))
                                return dsa__error(-EINVAL, "token keep fractions must be in (0, 1]");
                for (size_t l = 0; l < L; l++)
                        b->layers[l].token_keep = l + 1 < L ? o->token_layers[l] : 1.0f;
                dsa__variant_log(o, "token pruning: the listed fraction after each layer but the last");
                return 0;
        }
        if (o->token_keep > 0) {
                set_keep(b, o->token_keep);
                dsa__variant_log(o, "token pruning: keep %.2f after each layer", o->token_keep);
                return 0;
        }
        if ((r = dsa__calib_need(o, "--token-keep auto")) < 0)
                return r;
        if (NL == 0)
                return dsa__error(-EOPNOTSUPP, "searching a token-pruning schedule needs a classifier head");
        _cleanup_free_ float *ref = malloc(n * NL * sizeof(float)), *got = malloc(n * NL * sizeof(float));
        _cleanup_free_ float *keep = malloc(L * sizeof(float));
        if (!ref || !got || !keep)
                return -ENOMEM;
        set_keep(b, 1.0);
        if ((r = predict(m, o, ref)) < 0)
                return r;
        for (size_t l = 0; l < L; l++)
                keep[l] = 1.0f;
        for (;;) {
                size_t best = L;
                double best_cost = schedule_cost(keep, L), best_agree = 0;
                for (size_t l = 0; l + 1 < L; l++) {
                        if (keep[l] < 0.15f)
                                continue;
                        keep[l] -= 0.1f;
                        for (size_t i = 0; i < L; i++)
                                b->layers[i].token_keep = keep[i];
                        double cost = schedule_cost(keep, L), agree;
                        r = predict(m, o, got);
                        keep[l] += 0.1f;
                        if (r < 0)
                                return r;
                        agree = agreement(ref, got, n, NL);
                        if (agree >= o->token_target && cost < best_cost) {
                                best = l, best_cost = cost, best_agree = agree;
                        }
                }
                if (best == L)
                        break;
                keep[best] -= 0.1f;
                dsa__variant_log(o, "token pruning: layer %zu keeps %.1f (cost %.3f of unpruned, agreement %.4f)", best,
                     (double) keep[best], best_cost / (double) L, best_agree);
        }
        for (size_t l = 0; l < L; l++)
                b->layers[l].token_keep = keep[l];
        return 0;
}

/* ---- weight formats */

/* Static activation scale of one linear input from its statistics. */
static float act_scale(const struct dsa__lin_stats *s, const struct dsa_optimize_opts *o) {
        float top = s->absmax;

        if (o->act == DSA_ACT_PERCENTILE && s->hist) {
                uint64_t total = 0, acc = 0;
                for (size_t i = 0; i < DSA__HIST_BINS; i++)
                        total += s->hist[i];
                const double want = (double) total * o->act_percentile / 100.0;
                for (size_t i = 0; i < DSA__HIST_BINS; i++) {
                        acc += s->hist[i];
                        if ((double) acc >= want) {
                                top = s->hist_max * (float) (i + 1) / (DSA__HIST_BINS - 1);
                                break;
                        }
                }
                top = MIN(top, s->absmax);
        }
        return top > 0.0f ? top / 127.0f : 0.0f;
}

/* Re-forms matrix (l, j) as fmt; int8 gets scale (0: dynamic). */
static int reformat(struct dsa_bert *b, size_t l, int j, enum dsa_wformat fmt, float scale) {
        struct dsa__linear *lin = dsa__bert_linear(b, l, (enum dsa__bert_lin) j);
        int r;

        /* A sparse matrix stays sparse unless it becomes int8. */
        if (lin->fmt == DSA_WFORMAT_SPARSE && fmt != DSA_WFORMAT_Q8)
                return 0;
        r = dsa__linear_reformat(lin, fmt, scale);
        return r < 0 ? dsa__error(r, "cannot convert layer %zu %s to %s", l, lin_names[j], dsa_wformat_name(fmt)) : 0;
}

/* The token embedding table as fmt (Q8: int8 per row, symmetric). */
int dsa__embed_reformat(struct dsa__embed *e, enum dsa_wformat fmt) {
        struct dsa__embed n = { .fmt = fmt, .rows = e->rows, .cols = e->cols };
        const size_t V = e->rows, C = e->cols;
        _cleanup_free_ float *row = malloc(C * sizeof(float));

        if (!row)
                return -ENOMEM;
        if (fmt == DSA_WFORMAT_SPARSE)
                fmt = n.fmt = DSA_WFORMAT_F32;
        if (fmt == e->fmt)
                return 0;
        n.data = malloc(V * C * (fmt == DSA_WFORMAT_Q8 ? 1 : fmt == DSA_WFORMAT_F32 ? 4 : 2));
        if (fmt == DSA_WFORMAT_Q8)
                n.scales = malloc(V * sizeof(float));
        if (!n.data || (fmt == DSA_WFORMAT_Q8 && !n.scales)) {
                free(n.data);
                free(n.scales);
                return -ENOMEM;
        }
        for (size_t i = 0; i < V; i++) {
                dsa__embed_row(e, i, row);
                switch (fmt) {
                case DSA_WFORMAT_Q8:
                        dsa_quantize_weight_q8((int8_t *) n.data + i * C, n.scales + i, row, 1, C);
                        break;
                case DSA_WFORMAT_F16:
                case DSA_WFORMAT_BF16:
                        for (size_t k = 0; k < C; k++)
                                ((uint16_t *) n.data)[i * C + k] = fmt == DSA_WFORMAT_F16 ? dsa_f32_to_f16(row[k])
                                                                                          : dsa_f32_to_bf16(row[k]);
                        break;
                default:
                        memcpy((float *) n.data + i * C, row, C * sizeof(float));
                        break;
                }
        }
        dsa__embed_clear(e);
        *e = n;
        return 0;
}

/* Static int8 scales need max |x| (and for percentiles a histogram over [0, max]): two passes. */
static int measure_ranges(struct dsa_model *m, const struct dsa_optimize_opts *o, struct dsa__calib *c) {
        struct dsa__calib first = { 0 };
        int r;

        if ((r = dsa__calib_need(o, "static int8 activation scales")) < 0)
                return r;
        if (o->act == DSA_ACT_MINMAX)
                return dsa__calib_init(c, m->bert, DSA__WANT_ABSMAX, 0) < 0 ? -ENOMEM : dsa__calib_run(c, m, o);
        if ((r = dsa__calib_init(&first, m->bert, DSA__WANT_ABSMAX, 0)) < 0 || (r = dsa__calib_run(&first, m, o)) < 0 ||
            (r = dsa__calib_init(c, m->bert, DSA__WANT_HIST, 0)) < 0) {
                dsa__calib_free(&first);
                return r;
        }
        for (size_t l = 0; l < m->bert->cfg.n_layer; l++)
                for (int j = 0; j < _DSA__LIN_MAX; j++)
                        c->lin[l][j].hist_max = first.lin[l][j].absmax;
        dsa__calib_free(&first);
        return dsa__calib_run(c, m, o);
}

static int quantize(struct dsa_model *m, const struct dsa_optimize_opts *o) {
        struct dsa_bert *b = m->bert;
        const size_t L = b->cfg.n_layer;
        _cleanup_(dsa__calib_free) struct dsa__calib c = { 0 };
        int r;

        if (o->quant == DSA_WFORMAT_Q8 && o->act != DSA_ACT_DYNAMIC && (r = measure_ranges(m, o, &c)) < 0)
                return r;
        for (size_t l = 0; l < L; l++)
                for (int j = 0; j < _DSA__LIN_MAX; j++) {
                        float s = c.lin ? act_scale(&c.lin[l][j], o) : 0.0f;
                        if ((r = reformat(b, l, j, o->quant, s)) < 0)
                                return r;
                }
        return dsa__embed_reformat(&b->wte, o->quant);
}

/* Mixed precision: each matmul's sensitivity is the mean logit KL when it alone is int8; all
 * go int8, then the most sensitive return to fp32 one at a time until the calibration
 * predictions agree with the fp32 model's on mixed_target of the texts. */
static int quantize_mixed(struct dsa_model *m, const struct dsa_optimize_opts *o) {
        struct dsa_bert *b = m->bert;
        const size_t L = b->cfg.n_layer, NL = b->cfg.n_labels, n = o->n_calib, M = L * _DSA__LIN_MAX;
        int r;

        if ((r = dsa__calib_need(o, "--quant mixed")) < 0)
                return r;
        if (NL == 0)
                return dsa__error(-EOPNOTSUPP, "mixed precision needs a classifier head to score");
        _cleanup_free_ float *ref = malloc(n * NL * sizeof(float)), *got = malloc(n * NL * sizeof(float));
        _cleanup_free_ struct scored *s = calloc(M, sizeof(*s));
        if (!ref || !got || !s)
                return -ENOMEM;
        if ((r = predict(m, o, ref)) < 0)
                return r;
        for (size_t l = 0; l < L; l++)
                for (int j = 0; j < _DSA__LIN_MAX; j++) {
                        enum dsa_wformat was = dsa__bert_linear(b, l, (enum dsa__bert_lin) j)->fmt;
                        if ((r = reformat(b, l, j, DSA_WFORMAT_Q8, 0.0f)) < 0 || (r = predict(m, o, got)) < 0)
                                return r;
                        s[l * _DSA__LIN_MAX + j] = (struct scored) { mean_kl(ref, got, n, NL), l, (size_t) j };
                        dsa__variant_log(o, "layer %zu %s: int8 alone costs KL %.2e", l, lin_names[j], s[l * _DSA__LIN_MAX + j].score);
                        if ((r = reformat(b, l, j, was, 0.0f)) < 0)
                                return r;
                }
        qsort(s, M, sizeof(*s), cmp_scored);
        for (size_t i = 0; i < M; i++)
                if ((r = reformat(b, s[i].layer, (int) s[i].index, DSA_WFORMAT_Q8, 0.0f)) < 0)
                        return r;
        for (size_t kept = 0;; kept++) {
                double agree;
                if ((r = predict(m, o, got)) < 0)
                        return r;
                agree = agreement(ref, got, n, NL);
                dsa__variant_log(o, "mixed: %zu of %zu matmuls int8, agreement %.4f", M - kept, M, agree);
                if (agree >= o->mixed_target || kept == M)
                        break;
                const struct scored *worst = &s[M - 1 - kept];
                if ((r = reformat(b, worst->layer, (int) worst->index, DSA_WFORMAT_F32, 0.0f)) < 0)
                        return r;
        }
        return dsa__embed_reformat(&b->wte, DSA_WFORMAT_Q8);
}

/* ---- the pipeline */

static const char *const method_names[] = { "magnitude", "wanda", "sparsegpt" };
static const char *const pattern_names[] = { "unstructured", "2:4", "block16" };
static const char *const act_names[] = { "dynamic", "minmax", "percentile" };

/* Token pruning's schedule (token_schedule()), recorded in the method and dsa.* keys. */
static int tokens(struct dsa_model *m, const struct dsa_optimize_opts *o, char *method, size_t size) {
        char sched[128] = "";
        int r;

        if ((r = token_schedule(m, o)) < 0)
                return r;
        for (size_t l = 0; l < m->bert->cfg.n_layer; l++) {
                struct dsa_bert_layer *y = &m->bert->layers[l];
                snprintf(sched + strlen(sched), sizeof(sched) - strlen(sched), "%s%.2f", l ? "," : "",
                         (double) y->token_keep);
                if (!(y->token_keep < 1.0f)) { /* a score only where a layer prunes */
                        free(y->token_score);
                        y->token_score = NULL;
                }
        }
        snprintf(method + strlen(method), size - strlen(method), "%stokens-%s%s", *method ? "+" : "",
                 o->token_learned ? "learned-" : "", sched);
        if ((r = dsa__info_set(&m->info, "token_score", o->token_learned ? "learned" : "attention")) < 0)
                return r;
        return dsa__info_setf(&m->info, "token_keep", "%s", sched);
}

int dsa_model_optimize(struct dsa_model *m, const struct dsa_optimize_opts *o) {
        char method[256] = "", prev[256] = "";
        int r;

        if (!m || (!m->bert && !m->llama) || !o || (unsigned) o->quant >= _DSA_WFORMAT_MAX ||
            o->quant == DSA_WFORMAT_SPARSE)
                return -EINVAL;
        if (m->llama)
                return dsa__model_optimize_lm(m, o);
        if (!(o->prune_heads >= 0 && o->prune_heads < 1) || !(o->prune_ffn >= 0 && o->prune_ffn < 1) ||
            !(o->sparsity >= 0 && o->sparsity < 1) || !(o->token_keep <= 1))
                return dsa__error(-EINVAL, "pruning fractions must be in [0, 1)");

        /* What the input already was stays in the method; what was measured on it or how it was
         * calibrated does not describe the new variant. */
        snprintf(prev, sizeof(prev), "%s", dsa__info_get(&m->info, "method") ? dsa__info_get(&m->info, "method") : "");
        dsa__info_remove(&m->info, "eval.");
        dsa__info_remove(&m->info, "bench.");
        dsa__info_remove(&m->info, "act_quant");
        dsa__info_remove(&m->info, "calib_sha256");
        dsa__info_remove(&m->info, "calib_texts");
        if (o->attention)
                dsa__info_remove(&m->info, "scorer_kl");

#define APPEND(...) snprintf(method + strlen(method), sizeof(method) - strlen(method), __VA_ARGS__)
        /* Recovery distils the pruned model from the model as it was: keep a copy first. */
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *unpruned = NULL;
        if (o->recover_steps > 0 && (r = dsa__recover_teacher(m, o, &unpruned)) < 0)
                return r;
        if (o->prune_heads > 0) {
                if ((r = prune_heads(m, o)) < 0)
                        return r;
                APPEND("%sheads-%.0f%%", *method ? "+" : "", o->prune_heads * 100);
                if ((r = dsa__info_setf(&m->info, "prune_heads", "%g", o->prune_heads)) < 0)
                        return r;
        }
        if (o->prune_ffn > 0) {
                if ((r = prune_ffn(m, o)) < 0)
                        return r;
                APPEND("%sffn-%.0f%%", *method ? "+" : "", o->prune_ffn * 100);
                if ((r = dsa__info_setf(&m->info, "prune_ffn", "%g", o->prune_ffn)) < 0)
                        return r;
        }
        if (o->recover_steps > 0) {
                /* Recovery trains with the token schedule, so it comes first. */
                if (o->token_keep >= 0 && (r = tokens(m, o, method, sizeof(method))) < 0)
                        return r;
                if ((r = dsa__model_recover(m, o, unpruned)) < 0)
                        return r;
                APPEND("+recovered");
                if ((r = dsa__info_setf(&m->info, "recover_steps", "%llu", (unsigned long long) o->recover_steps)) < 0)
                        return r;
        }
        if (o->head_grad && o->prune_heads > 0 && (r = dsa__info_set(&m->info, "head_importance", "gradient")) < 0)
                return r;
        if (o->sparsity > 0) {
                if (o->sparsity_method != DSA_PRUNE_MAGNITUDE && (r = dsa__calib_need(o, "Wanda and SparseGPT")) < 0)
                        return r;
                for (size_t l = 0; l < m->bert->cfg.n_layer; l++)
                        if ((r = sparsify_layer(m, o, l)) < 0)
                                return r;
                APPEND("%s%s-%s-%.0f%%", *method ? "+" : "", method_names[o->sparsity_method],
                       pattern_names[o->sparsity_pattern], o->sparsity * 100);
                if ((r = dsa__info_setf(&m->info, "sparsity", "%g", o->sparsity)) < 0 ||
                    (r = dsa__info_setf(&m->info, "sparsity_method", "%s", method_names[o->sparsity_method])) < 0 ||
                    (r = dsa__info_setf(&m->info, "sparsity_pattern", "%s", pattern_names[o->sparsity_pattern])) < 0)
                        return r;
        }
        if (o->token_keep >= 0 && !o->recover_steps && (r = tokens(m, o, method, sizeof(method))) < 0)
                return r;
        if (o->attention) {
                if ((r = dsa__model_set_attention(m, o)) < 0)
                        return r;
                APPEND("%sattention-%s", *method ? "+" : "", dsa__info_get(&m->info, "attention"));
        }
        if (o->mixed) {
                if ((r = quantize_mixed(m, o)) < 0)
                        return r;
                APPEND("%smixed", *method ? "+" : "");
        } else if (o->quant != DSA_WFORMAT_F32 || (!*method && !*prev)) {
                if ((r = quantize(m, o)) < 0)
                        return r;
                APPEND("%s%s", *method ? "+" : "", dsa_wformat_name(o->quant));
                if (o->quant == DSA_WFORMAT_Q8 && o->act == DSA_ACT_MINMAX)
                        APPEND("-minmax");
                else if (o->quant == DSA_WFORMAT_Q8 && o->act == DSA_ACT_PERCENTILE)
                        APPEND("-p%g", o->act_percentile);
        }
#undef APPEND
        /* Sparse matrices stay fp32 unless they become int8. */
        const bool sparse_f32 = o->sparsity > 0 && o->sparsity_pattern == DSA_SPARSE_BLOCK16 && !o->mixed &&
                                o->quant != DSA_WFORMAT_Q8;
        char quant[64];
        snprintf(quant, sizeof(quant), "%s%s", o->mixed ? "mixed" : dsa_wformat_name(o->quant),
                 sparse_f32 && o->quant != DSA_WFORMAT_F32 ? " (sparse matrices f32)" : "");
        char full[sizeof(prev) + sizeof(method) + 1];
        snprintf(full, sizeof(full), "%s%s%s", prev, *prev && *method ? "+" : "", method);
        if ((r = dsa__info_setf(&m->info, "method", "%s", full)) < 0 ||
            (r = dsa__info_setf(&m->info, "quant", "%s", quant)) < 0 ||
            ((o->mixed || o->quant == DSA_WFORMAT_Q8) &&
             (r = dsa__info_setf(&m->info, "act_quant", "%s", o->mixed ? "dynamic" : act_names[o->act])) < 0) ||
            (o->calib_hash && (r = dsa__info_setf(&m->info, "calib_sha256", "%s", o->calib_hash)) < 0) ||
            (o->n_calib && (r = dsa__info_setf(&m->info, "calib_texts", "%zu", o->n_calib)) < 0) ||
            (r = dsa__info_setf(&m->info, "parent", "%s", o->parent ? o->parent : m->source ? m->source : "")) < 0 ||
            (r = dsa__info_setf(&m->info, "weight_bytes", "%zu", dsa__bert_weight_bytes(m->bert))) < 0)
                return r;
        return 0;
}

/* ---- facts and descriptions */

const char *dsa_model_info(const struct dsa_model *m, const char *name) {
        return m && name ? dsa__info_get(&m->info, name) : NULL;
}

int dsa_model_set_info(struct dsa_model *m, const char *name, const char *value) {
        if (!m || !name || !value)
                return -EINVAL;
        return dsa__info_set(&m->info, name, value);
}

size_t dsa_model_n_info(const struct dsa_model *m) {
        return m ? m->info.n : 0;
}

int dsa_model_info_at(const struct dsa_model *m, size_t i, const char **ret_name, const char **ret_value) {
        if (!m || i >= m->info.n)
                return -ERANGE;
        *ret_name = m->info.keys[i];
        *ret_value = m->info.values[i];
        return 0;
}

size_t dsa_model_weight_bytes(const struct dsa_model *m) {
        if (m && m->llama)
                return dsa__llama_weight_bytes(m->llama);
        return m && m->bert ? dsa__bert_weight_bytes(m->bert) : 0;
}

int dsa_model_describe_layer(const struct dsa_model *m, size_t layer, char *buf, size_t size) {
        if (m && m->llama && layer < m->llama->cfg.n_layer && buf && size > 0) {
                const struct dsa_llama_config *c = &m->llama->cfg;
                const struct dsa_llama_layer *y = &m->llama->layers[layer];
                char att[160];
                dsa__att_describe(&m->llama->att, att, sizeof(att));
                snprintf(buf, size, "layer %zu: heads %u (key/value %u), ffn %u, qkv %s, out %s, gate/up %s, down %s, "
                         "attention %s", layer, c->n_head, c->n_head_kv, c->n_ff, dsa_wformat_name(y->qkv.fmt),
                         dsa_wformat_name(y->o.fmt), dsa_wformat_name(y->gate_up.fmt), dsa_wformat_name(y->down.fmt),
                         att);
                return 0;
        }
        if (!m || !m->bert || layer >= m->bert->cfg.n_layer || !buf || size == 0)
                return -EINVAL;
        const struct dsa_bert_layer *y = &m->bert->layers[layer];
        snprintf(buf, size, "layer %zu: heads %u/%u, ffn %u/%u, qkv %s, out %s, up %s, down %s, tokens kept %.2f", layer,
                 y->n_head, m->bert->cfg.n_head, y->n_ff, m->bert->cfg.n_ff, dsa_wformat_name(y->qkv.fmt),
                 dsa_wformat_name(y->o.fmt), dsa_wformat_name(y->up.fmt), dsa_wformat_name(y->down.fmt),
                 (double) y->token_keep);
        return 0;
}
