/* Training kernels (kernels/train.h): every backward against central differences of
 * L = sum(dout * forward(x)), element by element, on small ragged shapes; every forward against a
 * plain double-precision loop; backward accumulating (twice = double) and skipping NULL
 * gradients; the attention kernels on strided, fused (da and dc slices of one buffer) and
 * self-relation (a == c) layouts, with masked keys and a sequence with none valid, on both
 * their per-row (T < 8) and sgemm paths; dropout's rate, scale and determinism; AdamW against
 * PyTorch's formula in double. Each check prints its worst element and names its tolerance. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/train.h"
#include "testutil.h"

/* Finite differences: the 5-point stencil (error O(h^4)) with h = FD_STEP for |x| <= 1, scaled
 * by a power of two above. Inputs lie on a GRID, so x +- 2h is exact in float and the stencil
 * sees the perturbation it divides by. What is left is the forward's fp32 rounding over 12h. */
#define FD_STEP 0x1p-7
#define GRID 0x1p-10

/* Gradients: |analytic - numeric| <= TOL * max(1, |numeric|). */
#define MATMUL_GRAD_TOL 2e-5
#define LAYERNORM_GRAD_TOL 5e-5
#define GELU_GRAD_TOL 1e-5
#define TANH_GRAD_TOL 1e-5
#define SCORES_GRAD_TOL 2e-5
#define VALUES_GRAD_TOL 5e-5 /* with keep: att keep off the grid, |out| up to ~3 */
/* Forwards against double loops: |got - want| <= ATOL + RTOL * |want|. */
#define MATMUL_FWD_ATOL 1e-6
#define MATMUL_FWD_RTOL 1e-6
#define LAYERNORM_FWD_ATOL 2e-7
#define LAYERNORM_FWD_RTOL 2e-7
#define GELU_FWD_ATOL 5e-7 /* 1 + erf, 1 + tanh cancel for x < 0: |x|/2 ulp(1), |x| <= 5 */
#define GELU_FWD_RTOL 5e-7
#define SOFTMAX_FWD_ATOL 2e-8
#define SOFTMAX_FWD_RTOL 5e-7
#define SCORES_FWD_ATOL 5e-8
#define SCORES_FWD_RTOL 5e-7
#define VALUES_FWD_ATOL 5e-7
#define VALUES_FWD_RTOL 5e-7
/* A second backward call doubles the gradient: relative to max(1, |2 g|). */
#define ACCUM_TOL 1e-6
/* Dropout over DROPOUT_N draws: |zero fraction - p| (about 10 standard deviations at p = 0.5). */
#define DROPOUT_N 100000
#define DROPOUT_FRAC_TOL 0.01
#define DROPOUT_SCALE_RTOL 1e-7
/* AdamW in fp32 against double, three steps. */
#define ADAMW_ATOL 2e-9 /* m = b1 m + (1 - b1) g cancels: an ulp of terms ~1e-2 */
#define ADAMW_RTOL 3e-7
#define ADAMW_V_ATOL 1e-11 /* v ~ 1e-5 */

#define SENTINEL 1234.5f

/* Every buffer of a test, freed at its end. */
static void *allocs[256];
static size_t n_allocs;

static float *fnew(size_t n) {
        float *p = calloc(n ? n : 1, sizeof(float));

        assert_non_null(p);
        assert_true(n_allocs < sizeof(allocs) / sizeof(allocs[0]));
        allocs[n_allocs++] = p;
        return p;
}

static float *fcopy(const float *x, size_t n) {
        return memcpy(fnew(n), x, n * sizeof(float));
}

static void free_all(void) {
        while (n_allocs)
                free(allocs[--n_allocs]);
}

/* n uniform values in [lo, hi], rounded to GRID. */
static float *fgrid(struct dsa_test_rng *r, size_t n, float lo, float hi) {
        float *x = fnew(n);

        for (size_t i = 0; i < n; i++)
                x[i] = (float) (nearbyint(dsa_test_rng_uniform(r, lo, hi) / GRID) * GRID);
        return x;
}

/* Columns [w, ld) of every row of x (rows, ld) set to NaN: a kernel that reads past its slices
 * poisons its result, and the gradient check requires those columns' gradients to stay 0. */
static void pad_nan(float *x, size_t rows, size_t w, size_t ld) {
        for (size_t i = 0; i < rows; i++)
                for (size_t k = w; k < ld; k++)
                        x[i * ld + k] = NAN;
}

/* sum dout * out over the first w columns of rows of stride ld, in double. */
static double dot_cols(const float *dout, const float *out, size_t rows, size_t w, size_t ld) {
        double s = 0;

        for (size_t i = 0; i < rows; i++)
                for (size_t k = 0; k < w; k++)
                        s += (double) dout[i * ld + k] * out[i * ld + k];
        return s;
}

/* The gradient of loss(ctx) in every element of x (n) by the stencil, against grad; NaN
 * elements are padding whose gradient must be exactly 0. Prints the worst element. */
static void grad_check(const char *name, double (*loss)(void *), void *ctx, float *x, size_t n,
                       const float *grad, double tol) {
        static const int k[4] = { 1, -1, 2, -2 };
        double worst = 0, wnum = 0;
        size_t wi = 0;

        for (size_t i = 0; i < n; i++) {
                const float x0 = x[i];
                double f[4], num, err;
                int e;

                if (isnan(x0)) {
                        num = 0;
                        err = grad[i] == 0.0f ? 0 : INFINITY;
                } else {
                        frexp(x0, &e);
                        const double h = ldexp(FD_STEP, e > 0 ? e : 0);
                        for (int q = 0; q < 4; q++) {
                                x[i] = (float) (x0 + k[q] * h);
                                assert_true((double) x[i] == x0 + k[q] * h);
                                f[q] = loss(ctx);
                        }
                        x[i] = x0;
                        num = (8.0 * (f[0] - f[1]) - (f[2] - f[3])) / (12.0 * h);
                        err = fabs(num - grad[i]) / fmax(1.0, fabs(num));
                        if (isnan(err))
                                err = INFINITY;
                }
                if (err > worst || i == 0) {
                        worst = err;
                        wi = i;
                        wnum = num;
                }
        }
        printf("%s %-40s n=%-4zu worst %.2e at [%zu] (analytic %.7g numeric %.7g) tol %.0e\n",
               worst <= tol ? "ok  " : "FAIL", name, n, worst, wi, n ? grad[wi] : 0.0f, wnum, tol);
        assert_true(worst <= tol);
}

/* got (n) against want (n, double): |got - want| <= atol + rtol |want|; prints the worst. */
static void check_close(const char *name, const float *got, const double *want, size_t n, double atol,
                        double rtol) {
        double worst = 0, wabs = 0;
        size_t wi = 0;

        for (size_t i = 0; i < n; i++) {
                double err = fabs(got[i] - want[i]), ratio = err / (atol + rtol * fabs(want[i]));
                if (isnan(ratio))
                        ratio = INFINITY;
                if (ratio > worst || i == 0) {
                        worst = ratio;
                        wabs = err;
                        wi = i;
                }
        }
        printf("%s %-40s n=%-4zu worst %.2e = %.2f of tol at [%zu] (got %.9g want %.9g)\n",
               worst <= 1.0 ? "ok  " : "FAIL", name, n, wabs, worst, wi, n ? got[wi] : 0.0f,
               n ? want[wi] : 0.0);
        assert_true(worst <= 1.0);
}

/* After a second backward call, g2 (n) must be twice g1 (the first call's result from zeros). */
static void check_twice(const char *name, const float *g1, const float *g2, size_t n) {
        double worst = 0;
        size_t wi = 0;
        bool nonzero = false;

        for (size_t i = 0; i < n; i++) {
                double err = fabs(g2[i] - 2.0 * g1[i]) / fmax(1.0, fabs(2.0 * g1[i]));
                if (isnan(err))
                        err = INFINITY;
                if (err > worst)
                        worst = err, wi = i;
                nonzero |= g1[i] != 0.0f;
        }
        printf("%s %-40s n=%-4zu worst %.2e at [%zu] tol %.0e\n", worst <= ACCUM_TOL && nonzero ? "ok  " : "FAIL",
               name, n, worst, wi, ACCUM_TOL);
        assert_true(nonzero);
        assert_true(worst <= ACCUM_TOL);
}

static double *dnew(size_t n) {
        double *p = calloc(n ? n : 1, sizeof(double));

        assert_non_null(p);
        assert_true(n_allocs < sizeof(allocs) / sizeof(allocs[0]));
        allocs[n_allocs++] = p;
        return p;
}

/* --- matmul */

struct mm {
        float *out, *inp, *w, *b, *dout;
        size_t N, C, OC;
};

static double mm_loss(void *p) {
        struct mm *m = p;

        dsa_matmul_forward_f32(m->out, m->inp, m->w, m->b, m->N, m->C, m->OC);
        return dot_cols(m->dout, m->out, m->N, m->OC, m->OC);
}

static void matmul_case(struct dsa_test_rng *r, size_t N, size_t C, size_t OC) {
        struct mm m = { fnew(N * OC), fgrid(r, N * C, -1, 1), fgrid(r, OC * C, -1, 1), fgrid(r, OC, -1, 1),
                        fgrid(r, N * OC, -1, 1), N, C, OC };
        float *dinp = fnew(N * C), *dw = fnew(OC * C), *db = fnew(OC);
        double *want = dnew(N * OC);
        char name[64];

        mm_loss(&m);
        for (size_t n = 0; n < N; n++)
                for (size_t o = 0; o < OC; o++) {
                        double s = m.b[o];
                        for (size_t c = 0; c < C; c++)
                                s += (double) m.inp[n * C + c] * m.w[o * C + c];
                        want[n * OC + o] = s;
                }
        snprintf(name, sizeof(name), "matmul fwd %zux%zux%zu", N, C, OC);
        check_close(name, m.out, want, N * OC, MATMUL_FWD_ATOL, MATMUL_FWD_RTOL);

        dsa_matmul_backward_f32(dinp, dw, db, m.dout, m.inp, m.w, N, C, OC);
        float *g_inp = fcopy(dinp, N * C), *g_w = fcopy(dw, OC * C), *g_b = fcopy(db, OC);
        dsa_matmul_backward_f32(dinp, dw, db, m.dout, m.inp, m.w, N, C, OC);
        check_twice("matmul dinp twice", g_inp, dinp, N * C);
        check_twice("matmul dweight twice", g_w, dw, OC * C);
        check_twice("matmul dbias twice", g_b, db, OC);
        /* NULL gradients are skipped; the others come out as before. */
        memset(dw, 0, OC * C * sizeof(float));
        dsa_matmul_backward_f32(NULL, dw, NULL, m.dout, m.inp, m.w, N, C, OC);
        assert_memory_equal(dw, g_w, OC * C * sizeof(float));

        snprintf(name, sizeof(name), "matmul dinp %zux%zux%zu", N, C, OC);
        grad_check(name, mm_loss, &m, m.inp, N * C, g_inp, MATMUL_GRAD_TOL);
        snprintf(name, sizeof(name), "matmul dweight %zux%zux%zu", N, C, OC);
        grad_check(name, mm_loss, &m, m.w, OC * C, g_w, MATMUL_GRAD_TOL);
        snprintf(name, sizeof(name), "matmul dbias %zux%zux%zu", N, C, OC);
        grad_check(name, mm_loss, &m, m.b, OC, g_b, MATMUL_GRAD_TOL);
}

static void test_matmul(void **state) {
        struct dsa_test_rng r = { 1 };

        matmul_case(&r, 5, 7, 3);
        matmul_case(&r, 9, 17, 13);
        free_all();
}

/* --- layernorm */

struct ln {
        float *out, *mean, *rstd, *inp, *gamma, *beta, *dout;
        size_t N, C;
};

#define LN_EPS 1e-5f

static double ln_loss(void *p) {
        struct ln *l = p;

        dsa_layernorm_forward_f32(l->out, l->mean, l->rstd, l->inp, l->gamma, l->beta, l->N, l->C, LN_EPS);
        return dot_cols(l->dout, l->out, l->N, l->C, l->C);
}

static void layernorm_case(struct dsa_test_rng *r, size_t N, size_t C) {
        struct ln l = { fnew(N * C), fnew(N), fnew(N), fgrid(r, N * C, -2, 2), fgrid(r, C, 0.5f, 1.5f),
                        fgrid(r, C, -1, 1), fgrid(r, N * C, -1, 1), N, C };
        float *dinp = fnew(N * C), *dg = fnew(C), *dbeta = fnew(C);
        double *want = dnew(N * C), *wmean = dnew(N), *wrstd = dnew(N);
        char name[64];

        ln_loss(&l);
        for (size_t n = 0; n < N; n++) {
                double mu = 0, var = 0;
                for (size_t c = 0; c < C; c++)
                        mu += l.inp[n * C + c];
                mu /= (double) C;
                for (size_t c = 0; c < C; c++)
                        var += (l.inp[n * C + c] - mu) * (l.inp[n * C + c] - mu);
                wmean[n] = mu;
                wrstd[n] = 1.0 / sqrt(var / (double) C + LN_EPS);
                for (size_t c = 0; c < C; c++)
                        want[n * C + c] = (l.inp[n * C + c] - mu) * wrstd[n] * l.gamma[c] + l.beta[c];
        }
        snprintf(name, sizeof(name), "layernorm fwd %zux%zu", N, C);
        check_close(name, l.out, want, N * C, LAYERNORM_FWD_ATOL, LAYERNORM_FWD_RTOL);
        check_close("layernorm mean", l.mean, wmean, N, LAYERNORM_FWD_ATOL, LAYERNORM_FWD_RTOL);
        check_close("layernorm rstd", l.rstd, wrstd, N, LAYERNORM_FWD_ATOL, LAYERNORM_FWD_RTOL);

        dsa_layernorm_backward_f32(dinp, dg, dbeta, l.dout, l.inp, l.gamma, l.mean, l.rstd, N, C);
        float *g_inp = fcopy(dinp, N * C), *g_g = fcopy(dg, C), *g_b = fcopy(dbeta, C);
        dsa_layernorm_backward_f32(dinp, dg, dbeta, l.dout, l.inp, l.gamma, l.mean, l.rstd, N, C);
        check_twice("layernorm dinp twice", g_inp, dinp, N * C);
        check_twice("layernorm dgamma twice", g_g, dg, C);
        check_twice("layernorm dbeta twice", g_b, dbeta, C);
        memset(dinp, 0, N * C * sizeof(float));
        dsa_layernorm_backward_f32(dinp, NULL, NULL, l.dout, l.inp, l.gamma, l.mean, l.rstd, N, C);
        assert_memory_equal(dinp, g_inp, N * C * sizeof(float));

        snprintf(name, sizeof(name), "layernorm dinp %zux%zu", N, C);
        grad_check(name, ln_loss, &l, l.inp, N * C, g_inp, LAYERNORM_GRAD_TOL);
        snprintf(name, sizeof(name), "layernorm dgamma %zux%zu", N, C);
        grad_check(name, ln_loss, &l, l.gamma, C, g_g, LAYERNORM_GRAD_TOL);
        snprintf(name, sizeof(name), "layernorm dbeta %zux%zu", N, C);
        grad_check(name, ln_loss, &l, l.beta, C, g_b, LAYERNORM_GRAD_TOL);
}

static void test_layernorm(void **state) {
        struct dsa_test_rng r = { 2 };

        layernorm_case(&r, 5, 7);
        layernorm_case(&r, 3, 33);
        free_all();
}

/* --- gelu, tanh */

struct ew {
        float *out, *inp, *dout;
        size_t n;
        int kind; /* 0 gelu erf, 1 gelu tanh, 2 tanh */
};

static double ew_loss(void *p) {
        struct ew *e = p;

        if (e->kind == 2)
                dsa_tanh_forward_f32(e->out, e->inp, e->n);
        else
                dsa_gelu_forward_f32(e->out, e->inp, e->n, e->kind == 1);
        return dot_cols(e->dout, e->out, 1, e->n, e->n);
}

static void test_elementwise(void **state) {
        static const char *const names[] = { "gelu erf", "gelu tanh", "tanh" };
        static const double tols[] = { GELU_GRAD_TOL, GELU_GRAD_TOL, TANH_GRAD_TOL };
        struct dsa_test_rng r = { 3 };
        const size_t n = 67;
        char name[64];

        for (int kind = 0; kind < 3; kind++) {
                struct ew e = { fnew(n), fgrid(&r, n, -5, 5), fgrid(&r, n, -1, 1), n, kind };
                float *dinp = fnew(n);
                double *want = dnew(n);

                e.inp[0] = 0.0f, e.inp[1] = 3.0f, e.inp[2] = -3.0f, e.inp[3] = 0.5f;
                ew_loss(&e);
                for (size_t i = 0; i < n; i++) {
                        double x = e.inp[i];
                        want[i] = kind == 0 ? 0.5 * x * (1.0 + erf(x / sqrt(2.0)))
                                : kind == 1 ? 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)))
                                            : tanh(x);
                }
                snprintf(name, sizeof(name), "%s fwd", names[kind]);
                check_close(name, e.out, want, n, GELU_FWD_ATOL, GELU_FWD_RTOL);

                if (kind == 2)
                        dsa_tanh_backward_f32(dinp, e.out, e.dout, n);
                else
                        dsa_gelu_backward_f32(dinp, e.inp, e.dout, n, kind == 1);
                float *g = fcopy(dinp, n);
                if (kind == 2)
                        dsa_tanh_backward_f32(dinp, e.out, e.dout, n);
                else
                        dsa_gelu_backward_f32(dinp, e.inp, e.dout, n, kind == 1);
                snprintf(name, sizeof(name), "%s dinp twice", names[kind]);
                check_twice(name, g, dinp, n);
                snprintf(name, sizeof(name), "%s dinp", names[kind]);
                grad_check(name, ew_loss, &e, e.inp, n, g, tols[kind]);
        }
        free_all();
}

/* --- softmax rows */

static void test_softmax_rows(void **state) {
        static const float temps[] = { 1.0f, 0.5f, 3.0f };
        struct dsa_test_rng r = { 4 };
        const size_t N = 4, L = 11;
        float *x = fgrid(&r, N * L, -8, 8), *p = fnew(N * L);
        double *want = dnew(N * L);
        char name[64];

        for (size_t k = 0; k < 3; k++) {
                dsa_softmax_rows_f32(p, x, N, L, temps[k]);
                for (size_t n = 0; n < N; n++) {
                        double max = -INFINITY, sum = 0;
                        for (size_t l = 0; l < L; l++)
                                max = fmax(max, x[n * L + l] / (double) temps[k]);
                        for (size_t l = 0; l < L; l++)
                                sum += exp(x[n * L + l] / (double) temps[k] - max);
                        for (size_t l = 0; l < L; l++)
                                want[n * L + l] = exp(x[n * L + l] / (double) temps[k] - max) / sum;
                }
                snprintf(name, sizeof(name), "softmax rows T=%g", temps[k]);
                check_close(name, p, want, N * L, SOFTMAX_FWD_ATOL, SOFTMAX_FWD_RTOL);
        }
        /* In place, and large logits do not overflow. */
        for (size_t i = 0; i < L; i++)
                x[i] = 1000.0f + (float) i;
        memcpy(p, x, L * sizeof(float));
        dsa_softmax_rows_f32(p, p, 1, L, 1.0f);
        for (size_t l = 0; l < L; l++)
                want[l] = exp((double) l - (double) (L - 1)) / ((1 - exp(-(double) L)) / (1 - exp(-1.0)));
        check_close("softmax rows in place, logits ~1000", p, want, L, SOFTMAX_FWD_ATOL, SOFTMAX_FWD_RTOL);
        free_all();
}

/* --- scores softmax */

enum layout { LAYOUT_STRIDED, LAYOUT_FUSED, LAYOUT_SELF };
static const char *const layout_names[] = { "strided", "fused qkv", "self a==c" };

struct sc {
        float *att, *datt_up;
        const float *a, *c;
        size_t lda, ldc, B, T, H, D;
        const uint8_t *mask;
        float scale;
};

static double sc_loss(void *p) {
        struct sc *s = p;
        const size_t n = s->B * s->H * s->T * s->T;

        dsa_scores_softmax_forward_f32(s->att, s->a, s->lda, s->c, s->ldc, s->mask, s->B, s->T, s->H, s->D,
                                       s->scale);
        return dot_cols(s->datt_up, s->att, 1, n, n);
}

/* B = 3 sequences: all keys valid, the last two masked, none valid (with a mask). */
static void scores_case(struct dsa_test_rng *r, size_t T, enum layout layout, bool use_mask) {
        const size_t B = 3, H = 2, D = 3, HD = H * D, natt = B * H * T * T;
        struct sc s = { .att = fnew(natt), .datt_up = fgrid(r, natt, -1, 1), .B = B, .T = T, .H = H, .D = D,
                        .scale = 0.7f };
        float *abuf, *cbuf = NULL, *dabuf, *dcbuf = NULL, *da, *dc;
        uint8_t mask[3 * 16];
        double *want = dnew(natt);
        char name[96], what[64];

        assert_true(T <= 16);
        for (size_t b = 0; b < B; b++)
                for (size_t j = 0; j < T; j++)
                        mask[b * T + j] = b == 0 || (b == 1 && j + 2 < T);
        s.mask = use_mask ? mask : NULL;
        switch (layout) {
        case LAYOUT_STRIDED: /* own buffers, rows padded with NaN */
                s.lda = HD + 1, s.ldc = HD + 2;
                abuf = fgrid(r, B * T * s.lda, -1, 1), cbuf = fgrid(r, B * T * s.ldc, -1, 1);
                pad_nan(abuf, B * T, HD, s.lda), pad_nan(cbuf, B * T, HD, s.ldc);
                s.a = abuf, s.c = cbuf;
                da = dabuf = fnew(B * T * s.lda), dc = dcbuf = fnew(B * T * s.ldc);
                break;
        case LAYOUT_FUSED: /* Q and K slices of one (B,T,3HD) buffer, their gradients of another */
                s.lda = s.ldc = 3 * HD;
                abuf = fgrid(r, B * T * s.lda, -1, 1);
                s.a = abuf, s.c = abuf + HD;
                dabuf = fnew(B * T * s.lda);
                da = dabuf, dc = dabuf + HD;
                break;
        default: /* a relation Q Q^T: one input, one gradient */
                s.lda = s.ldc = HD + 1;
                abuf = fgrid(r, B * T * s.lda, -1, 1);
                pad_nan(abuf, B * T, HD, s.lda);
                s.a = s.c = abuf;
                da = dc = dabuf = fnew(B * T * s.lda);
                break;
        }
        snprintf(what, sizeof(what), "T=%zu %s%s", T, layout_names[layout], use_mask ? " masked" : "");

        sc_loss(&s);
        for (size_t b = 0; b < B; b++)
                for (size_t h = 0; h < H; h++)
                        for (size_t i = 0; i < T; i++) {
                                double *w = want + ((b * H + h) * T + i) * T, max = -INFINITY, sum = 0;
                                for (size_t j = 0; j < T; j++) {
                                        double d = 0;
                                        for (size_t k = 0; k < D; k++)
                                                d += (double) s.a[(b * T + i) * s.lda + h * D + k] *
                                                     s.c[(b * T + j) * s.ldc + h * D + k];
                                        w[j] = s.scale * d;
                                        if (!s.mask || s.mask[b * T + j])
                                                max = fmax(max, w[j]);
                                }
                                for (size_t j = 0; j < T; j++)
                                        sum += w[j] = !s.mask || s.mask[b * T + j] ? exp(w[j] - max) : 0.0;
                                for (size_t j = 0; j < T; j++) {
                                        w[j] = sum > 0 ? w[j] / sum : 0.0;
                                        /* masked keys and rows without any are exact zeros */
                                        const size_t e = ((b * H + h) * T + i) * T + j;
                                        if (w[j] == 0.0 && s.att[e] != 0.0f)
                                                fail_msg("scores %s: att[%zu] = %g, want exactly 0", what, e,
                                                         s.att[e]);
                                }
                        }
        snprintf(name, sizeof(name), "scores fwd %s", what);
        check_close(name, s.att, want, natt, SCORES_FWD_ATOL, SCORES_FWD_RTOL);

        const size_t na = B * T * s.lda, nc = B * T * s.ldc;
        dsa_scores_softmax_backward_f32(da, dc, s.datt_up, s.att, s.a, s.lda, s.c, s.ldc, B, T, H, D, s.scale);
        float *ga = fcopy(dabuf, na), *gc = dcbuf ? fcopy(dcbuf, nc) : NULL;
        dsa_scores_softmax_backward_f32(da, dc, s.datt_up, s.att, s.a, s.lda, s.c, s.ldc, B, T, H, D, s.scale);
        snprintf(name, sizeof(name), "scores da twice %s", what);
        check_twice(name, ga, dabuf, na);
        if (dcbuf) {
                snprintf(name, sizeof(name), "scores dc twice %s", what);
                check_twice(name, gc, dcbuf, nc);
        }
        if (layout == LAYOUT_STRIDED) {
                /* dc NULL: da alone, as before. */
                memset(dabuf, 0, na * sizeof(float));
                dsa_scores_softmax_backward_f32(da, NULL, s.datt_up, s.att, s.a, s.lda, s.c, s.ldc, B, T, H, D,
                                                s.scale);
                assert_memory_equal(dabuf, ga, na * sizeof(float));
        }

        snprintf(name, sizeof(name), "scores d%s %s", layout == LAYOUT_STRIDED ? "a" : "(a,c)", what);
        grad_check(name, sc_loss, &s, abuf, na, ga, SCORES_GRAD_TOL);
        if (cbuf) {
                snprintf(name, sizeof(name), "scores dc %s", what);
                grad_check(name, sc_loss, &s, cbuf, nc, gc, SCORES_GRAD_TOL);
        }
}

static void test_scores_softmax(void **state) {
        static const size_t Ts[] = { 5, 13 }; /* the per-row path and the sgemm path */
        struct dsa_test_rng r = { 5 };

        for (size_t t = 0; t < 2; t++)
                for (int layout = 0; layout < 3; layout++) {
                        scores_case(&r, Ts[t], layout, true);
                        free_all();
                }
        scores_case(&r, 5, LAYOUT_STRIDED, false);
        scores_case(&r, 13, LAYOUT_FUSED, false);
        free_all();
}

/* --- attention values */

struct av {
        float *out, *att, *keep, *v, *dout;
        size_t ldo, ldv, B, T, H, D;
};

static double av_loss(void *p) {
        struct av *a = p;

        dsa_attn_values_forward_f32(a->out, a->ldo, a->att, a->keep, a->v, a->ldv, a->B, a->T, a->H, a->D);
        return dot_cols(a->dout, a->out, a->B * a->T, a->H * a->D, a->ldo);
}

/* v the V slice of a (B,T,3HD) buffer; out and dout (B,T,HD+1), the extra column a sentinel in
 * out (must stay) and NaN in dout (must not be read). */
static void values_case(struct dsa_test_rng *r, size_t T, bool use_keep) {
        const size_t B = 2, H = 2, D = 3, HD = H * D, natt = B * H * T * T;
        const size_t ldv = 3 * HD, ldo = HD + 1, nv = B * T * ldv, no = B * T * ldo;
        float *qkv = fgrid(r, nv, -1, 1), *dqkv = fnew(nv), *datt = fnew(natt);
        struct av a = { fnew(no), fgrid(r, natt, 0, 1), NULL, qkv + 2 * HD, fgrid(r, no, -1, 1), ldo, ldv, B, T, H, D };
        double *want = dnew(no);
        char name[96], what[32];
        uint64_t seed = 42;

        if (use_keep) {
                a.keep = fnew(natt);
                dsa_dropout_mask_f32(a.keep, natt, 0.3f, &seed);
        }
        pad_nan(a.dout, B * T, HD, ldo);
        snprintf(what, sizeof(what), "T=%zu%s", T, use_keep ? " keep" : "");

        for (size_t i = 0; i < no; i++)
                a.out[i] = SENTINEL;
        av_loss(&a);
        for (size_t b = 0; b < B; b++)
                for (size_t i = 0; i < T; i++) {
                        for (size_t h = 0; h < H; h++)
                                for (size_t d = 0; d < D; d++) {
                                        double s = 0;
                                        for (size_t j = 0; j < T; j++) {
                                                size_t e = ((b * H + h) * T + i) * T + j;
                                                s += (double) a.att[e] * (a.keep ? a.keep[e] : 1.0f) *
                                                     a.v[(b * T + j) * ldv + h * D + d];
                                        }
                                        want[(b * T + i) * ldo + h * D + d] = s;
                                }
                        want[(b * T + i) * ldo + HD] = SENTINEL;
                }
        snprintf(name, sizeof(name), "attn values fwd %s", what);
        check_close(name, a.out, want, no, VALUES_FWD_ATOL, VALUES_FWD_RTOL);

        float *dv = dqkv + 2 * HD;
        dsa_attn_values_backward_f32(datt, dv, ldv, a.dout, ldo, a.att, a.keep, a.v, B, T, H, D);
        float *g_att = fcopy(datt, natt), *g_v = fcopy(dqkv, nv);
        dsa_attn_values_backward_f32(datt, dv, ldv, a.dout, ldo, a.att, a.keep, a.v, B, T, H, D);
        snprintf(name, sizeof(name), "attn values datt twice %s", what);
        check_twice(name, g_att, datt, natt);
        snprintf(name, sizeof(name), "attn values dv twice %s", what);
        check_twice(name, g_v, dqkv, nv);
        memset(dqkv, 0, nv * sizeof(float));
        dsa_attn_values_backward_f32(NULL, dv, ldv, a.dout, ldo, a.att, a.keep, a.v, B, T, H, D);
        assert_memory_equal(dqkv, g_v, nv * sizeof(float));

        snprintf(name, sizeof(name), "attn values datt %s", what);
        grad_check(name, av_loss, &a, a.att, natt, g_att, VALUES_GRAD_TOL);
        snprintf(name, sizeof(name), "attn values dv (fused) %s", what);
        grad_check(name, av_loss, &a, qkv, nv, g_v, VALUES_GRAD_TOL);
}

static void test_attn_values(void **state) {
        struct dsa_test_rng r = { 6 };

        values_case(&r, 5, false);
        values_case(&r, 5, true);
        values_case(&r, 13, false);
        values_case(&r, 13, true);
        free_all();
}

/* --- dropout */

/* An independent splitmix64: state += golden ratio, then the output function of the state. */
static uint64_t sm64(uint64_t *s) {
        uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static void test_dropout(void **state) {
        static const float ps[] = { 0.1f, 0.5f, 0.9f };
        float *k1 = fnew(DROPOUT_N), *k2 = fnew(DROPOUT_N);
        uint64_t s, s2;

        s = 0;
        assert_true(sm64(&s) == 0xe220a8397b1dcdafull); /* the published first output from seed 0 */

        for (size_t q = 0; q < 3; q++) {
                const float p = ps[q];
                const double scale = 1.0 / (1.0 - (double) p);
                size_t zeros = 0;

                s = 0x1234567 + q;
                dsa_dropout_mask_f32(k1, DROPOUT_N, p, &s);
                for (size_t i = 0; i < DROPOUT_N; i++) {
                        if (k1[i] == 0.0f)
                                zeros++;
                        else if (fabs(k1[i] - scale) > DROPOUT_SCALE_RTOL * scale)
                                fail_msg("dropout p=%g: keep[%zu] = %.9g, want 0 or %.9g", p, i, k1[i], scale);
                }
                double frac = (double) zeros / DROPOUT_N;
                printf("%s dropout p=%.1f zero fraction %.4f (tol %.2f), scale %.9g\n",
                       fabs(frac - p) <= DROPOUT_FRAC_TOL ? "ok  " : "FAIL", p, frac, DROPOUT_FRAC_TOL, scale);
                assert_true(fabs(frac - p) <= DROPOUT_FRAC_TOL);

                /* The state advanced by one draw per value; the same state gives the same mask,
                 * the advanced one another; each decision is the RNG's top 24 bits against p. */
                assert_true(s == 0x1234567 + q + (uint64_t) DROPOUT_N * 0x9e3779b97f4a7c15ull);
                s2 = 0x1234567 + q;
                dsa_dropout_mask_f32(k2, DROPOUT_N, p, &s2);
                assert_memory_equal(k1, k2, DROPOUT_N * sizeof(float));
                dsa_dropout_mask_f32(k2, DROPOUT_N, p, &s2);
                assert_true(memcmp(k1, k2, DROPOUT_N * sizeof(float)) != 0);
                s2 = 0x1234567 + q;
                for (size_t i = 0; i < 1000; i++)
                        assert_true((k1[i] == 0.0f) == ((double) (sm64(&s2) >> 40) / 16777216.0 < p));
        }

        /* p = 0: all kept at 1, the state untouched. */
        s = 99;
        dsa_dropout_mask_f32(k1, 1000, 0.0f, &s);
        assert_true(s == 99);
        for (size_t i = 0; i < 1000; i++)
                assert_true(k1[i] == 1.0f);
        free_all();
}

/* --- AdamW */

static void test_adamw(void **state) {
        struct dsa_test_rng r = { 7 };
        const size_t n = 37;
        const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
        float *p = fgrid(&r, n, -1, 1), *m = fnew(n), *v = fnew(n);
        double *wp = dnew(n), *wm = dnew(n), *wv = dnew(n);
        char name[64];

        for (size_t i = 0; i < n; i++)
                wp[i] = p[i];
        for (uint64_t t = 1; t <= 3; t++) {
                float *g = fgrid(&r, n, -0.1f, 0.1f);
                g[0] = 0.0f;
                dsa_adamw_f32(p, g, m, v, n, lr, b1, b2, eps, wd, t);
                for (size_t i = 0; i < n; i++) {
                        /* torch.optim.AdamW, in double */
                        wp[i] *= 1.0 - (double) lr * wd;
                        wm[i] = b1 * wm[i] + (1.0 - b1) * g[i];
                        wv[i] = b2 * wv[i] + (1.0 - b2) * (double) g[i] * g[i];
                        double mhat = wm[i] / (1.0 - pow(b1, (double) t));
                        double vhat = wv[i] / (1.0 - pow(b2, (double) t));
                        wp[i] -= lr * mhat / (sqrt(vhat) + eps);
                }
                snprintf(name, sizeof(name), "adamw param step %u", (unsigned) t);
                check_close(name, p, wp, n, ADAMW_ATOL, ADAMW_RTOL);
                snprintf(name, sizeof(name), "adamw m step %u", (unsigned) t);
                check_close(name, m, wm, n, ADAMW_ATOL, ADAMW_RTOL);
                snprintf(name, sizeof(name), "adamw v step %u", (unsigned) t);
                check_close(name, v, wv, n, ADAMW_V_ATOL, ADAMW_RTOL);
        }
        free_all();
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_matmul),      cmocka_unit_test(test_layernorm),
                cmocka_unit_test(test_elementwise), cmocka_unit_test(test_softmax_rows),
                cmocka_unit_test(test_scores_softmax), cmocka_unit_test(test_attn_values),
                cmocka_unit_test(test_dropout),     cmocka_unit_test(test_adamw),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
