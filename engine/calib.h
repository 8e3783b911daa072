/* Private to engine/variant.c and calib.c: calibration statistics collected through the
 * forward pass's hooks (bert.h): each linear's input, padding rows dropped, feeds what the
 * current step asks for (max |x|, a histogram of |x|, per-feature sums of squares, the Hessian
 * X^T X of one layer, head and FFN neuron importance). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model-internal.h"
#include "variant.h"

#define DSA__HIST_BINS 4096

enum {
        DSA__WANT_ABSMAX = 1 << 0,
        DSA__WANT_HIST = 1 << 1,
        DSA__WANT_SQ = 1 << 2,
        DSA__WANT_HESS = 1 << 3,
        DSA__WANT_HEADS = 1 << 4,
        DSA__WANT_FFN = 1 << 5,
};

struct dsa__lin_stats {
        float absmax;
        float hist_max; /* the histogram covers [0, hist_max] (from a previous absmax pass) */
        uint64_t *hist; /* DSA__HIST_BINS */
        double *sq;     /* (C) */
        double *H;      /* (C,C), only for the layer being pruned */
        size_t C;
};

struct dsa__calib {
        struct dsa_bert *b;
        unsigned want;
        size_t hess_layer;
        struct dsa__lin_stats (*lin)[_DSA__LIN_MAX]; /* (L) */
        double **head_imp;                       /* (L)(n_head) */
        double **ffn_imp;                        /* (L)(n_ff) */
        float **wo;                              /* (L) the output dense (C, A), for head importance */
        float *rows;                             /* compacted valid rows */
        size_t rows_cap;
        float *contrib;                          /* (C) */
        int error;
};

/* Frees what c holds; c is then empty. */
void dsa__calib_free(struct dsa__calib *c);
/* Sets c up to collect want (DSA__WANT_*), the Hessian for layer hess_layer only. */
int dsa__calib_init(struct dsa__calib *c, struct dsa_bert *b, unsigned want, size_t hess_layer);
/* One pass over o's calibration texts with c's hooks. */
int dsa__calib_run(struct dsa__calib *c, struct dsa_model *m, const struct dsa_optimize_opts *o);
/* -EINVAL with a reason naming what when o has no calibration texts. */
int dsa__calib_need(const struct dsa_optimize_opts *o, const char *what);
/* A progress line through o->log, printf-style. */
void dsa__variant_log(const struct dsa_optimize_opts *o, const char *fmt, ...) _printf_(2, 3);
