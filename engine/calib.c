/* Calibration statistics for dsa_model_optimize() (calib.h): forward passes over the
 * calibration texts with a hook on every linear's input. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "calib.h"

void dsa__calib_free(struct dsa__calib *c) {
        const size_t L = c->b ? c->b->cfg.n_layer : 0;

        for (size_t l = 0; c->lin && l < L; l++)
                for (int j = 0; j < _DSA__LIN_MAX; j++) {
                        free(c->lin[l][j].hist);
                        free(c->lin[l][j].sq);
                        free(c->lin[l][j].H);
                }
        for (size_t l = 0; l < L; l++) {
                if (c->head_imp)
                        free(c->head_imp[l]);
                if (c->ffn_imp)
                        free(c->ffn_imp[l]);
                if (c->wo)
                        free(c->wo[l]);
        }
        free(c->lin);
        free(c->head_imp);
        free(c->ffn_imp);
        free(c->wo);
        free(c->rows);
        free(c->contrib);
        *c = (struct dsa__calib) { 0 };
}

void dsa__variant_log(const struct dsa_optimize_opts *o, const char *fmt, ...) {
        char line[256];
        va_list ap;

        if (!o->log)
                return;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        o->log(o->userdata, line);
}

/* Head h's contribution to the output dense for each row: att[:, h] (N, HS) x Wo[:, h]^T. */
static void add_head_importance(struct dsa__calib *c, size_t l, const float *x, size_t N) {
        const struct dsa_bert_layer *y = &c->b->layers[l];
        const size_t C = c->b->cfg.n_embd, HS = C / c->b->cfg.n_head, A = y->n_head * HS;
        const float *wo = c->wo[l];

        for (size_t n = 0; n < N; n++)
                for (size_t h = 0; h < y->n_head; h++) {
                        double s = 0;
                        for (size_t o = 0; o < C; o++) {
                                float acc = 0.0f;
                                for (size_t k = 0; k < HS; k++)
                                        acc += x[n * A + h * HS + k] * wo[o * A + h * HS + k];
                                s += (double) acc * acc;
                        }
                        c->head_imp[l][h] += sqrt(s);
                }
}

static void on_input(void *userdata, size_t l, enum dsa__bert_lin which, const float *x, size_t N, size_t C,
                     const uint8_t *valid) {
        struct dsa__calib *c = userdata;
        struct dsa__lin_stats *s = &c->lin[l][which];
        size_t n = 0;

        if (c->error)
                return;
        if (N * C > c->rows_cap) {
                free(c->rows);
                c->rows = malloc(N * C * sizeof(float));
                c->rows_cap = c->rows ? N * C : 0;
                if (!c->rows) {
                        c->error = -ENOMEM;
                        return;
                }
        }
        for (size_t i = 0; i < N; i++)
                if (!valid || valid[i])
                        memcpy(c->rows + n++ * C, x + i * C, C * sizeof(float));
        x = c->rows;

        if (c->want & (DSA__WANT_ABSMAX | DSA__WANT_HIST))
                for (size_t i = 0; i < n * C; i++) {
                        float a = fabsf(x[i]);
                        if (a > s->absmax)
                                s->absmax = a;
                        if (s->hist && s->hist_max > 0.0f) {
                                size_t bin = (size_t) (a / s->hist_max * (DSA__HIST_BINS - 1));
                                s->hist[MIN(bin, (size_t) DSA__HIST_BINS - 1)]++;
                        }
                }
        if (s->sq)
                dsa_prune_stats_add(s->sq, (c->want & DSA__WANT_HESS) && l == c->hess_layer ? s->H : NULL, x, n, C);
        if ((c->want & DSA__WANT_HEADS) && which == DSA__LIN_O)
                add_head_importance(c, l, x, n);
        if ((c->want & DSA__WANT_FFN) && which == DSA__LIN_DOWN) {
                /* |gelu(up)_j| times the norm of W_down's column j (added below, once). */
                for (size_t i = 0; i < n; i++)
                        for (size_t j = 0; j < C; j++)
                                c->ffn_imp[l][j] += fabsf(x[i * C + j]);
        }
}

/* Sets up c for what, allocating per-linear buffers as needed. */
int dsa__calib_init(struct dsa__calib *c, struct dsa_bert *b, unsigned want, size_t hess_layer) {
        const size_t L = b->cfg.n_layer, C = b->cfg.n_embd, HS = C / b->cfg.n_head;

        *c = (struct dsa__calib) { .b = b, .want = want, .hess_layer = hess_layer };
        c->lin = calloc(L, sizeof(*c->lin));
        c->head_imp = calloc(L, sizeof(double *));
        c->ffn_imp = calloc(L, sizeof(double *));
        c->wo = calloc(L, sizeof(float *));
        if (!c->lin || !c->head_imp || !c->ffn_imp || !c->wo)
                return -ENOMEM;
        for (size_t l = 0; l < L; l++) {
                const struct dsa_bert_layer *y = &b->layers[l];
                const size_t in[_DSA__LIN_MAX] = { C, y->n_head * HS, C, y->n_ff };
                for (int j = 0; j < _DSA__LIN_MAX; j++) {
                        struct dsa__lin_stats *s = &c->lin[l][j];
                        s->C = in[j];
                        if ((want & DSA__WANT_HIST) && !(s->hist = calloc(DSA__HIST_BINS, sizeof(uint64_t))))
                                return -ENOMEM;
                        if ((want & (DSA__WANT_SQ | DSA__WANT_HESS)) && !(s->sq = calloc(in[j] ? in[j] : 1, sizeof(double))))
                                return -ENOMEM;
                        if ((want & DSA__WANT_HESS) && l == hess_layer &&
                            !(s->H = calloc(in[j] * in[j] + 1, sizeof(double))))
                                return -ENOMEM;
                }
                if ((want & DSA__WANT_HEADS) &&
                    (!(c->head_imp[l] = calloc(y->n_head + 1, sizeof(double))) ||
                     !(c->wo[l] = malloc((C * y->n_head * HS + 1) * sizeof(float)))))
                        return -ENOMEM;
                if ((want & DSA__WANT_HEADS) && dsa__linear_unpack(&y->o, c->wo[l]) < 0)
                        return -ENOMEM;
                if ((want & DSA__WANT_FFN) && !(c->ffn_imp[l] = calloc(y->n_ff + 1, sizeof(double))))
                        return -ENOMEM;
        }
        return 0;
}

/* One pass over the calibration texts with c's hooks. */
int dsa__calib_run(struct dsa__calib *c, struct dsa_model *m, const struct dsa_optimize_opts *o) {
        struct dsa__bert_hooks h = { .userdata = c, .linear_input = on_input };
        int r = dsa__model_calibrate(m, o->calib, o->calib_pairs, o->n_calib, &h, NULL);

        if (r < 0)
                return r;
        return c->error;
}

int dsa__calib_need(const struct dsa_optimize_opts *o, const char *what) {
        if (!o->calib || o->n_calib == 0)
                return dsa__error(-EINVAL, "%s: calibration texts are needed (--calib)", what);
        return 0;
}
