/* Pruning (engine/prune.h): every method leaves exactly the pattern's count of zeros in each
 * comparison group (rows, groups of 4, 16x1 blocks); magnitude keeps the largest and leaves the
 * kept weights' bits alone; ties go to the lower index, the same on every run; Wanda with unit
 * norms is magnitude bit for bit; SparseGPT's reconstruction error ||X W^T - X W'^T|| on
 * correlated calibration data is clearly below magnitude's and Wanda's in every pattern, and at
 * sparsity 0 it leaves W as it was; the statistics match a naive double loop; bad arguments and
 * a Hessian that is not positive definite are refused with w untouched. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "basic/macro.h"
#include "engine/prune.h"
#include "testutil.h"

/* SparseGPT's error must be below this fraction of the better of magnitude's and Wanda's. */
#define SPARSEGPT_MAX_ERR_RATIO 0.7

static const char *const pat_names[] = { "unstructured", "2:4", "block16" };

enum method { METHOD_MAGNITUDE, METHOD_WANDA, METHOD_SPARSEGPT, _METHOD_MAX };
static const char *const method_names[] = { "magnitude", "wanda", "sparsegpt" };

static float *falloc(size_t n) {
        float *p = malloc((n ? n : 1) * sizeof(float));
        assert_non_null(p);
        return p;
}

static double *dalloc0(size_t n) {
        double *p = calloc(n ? n : 1, sizeof(double));
        assert_non_null(p);
        return p;
}

static size_t round_count(float s, size_t n) {
        return (size_t) floor((double) s * (double) n + 0.5);
}

/* Calibration data as transformer activations tend to be: x (N,C) = z (N,R) a (R,C) + noise,
 * R = C/4, so features are strongly correlated (a pruned feature's contribution can be carried
 * by others), with feature scales spread over 10x (what makes Wanda differ from magnitude). */
static float *calib_data(struct dsa_test_rng *rng, size_t N, size_t C) {
        const size_t R = MAX(C / 4, (size_t) 1);
        float *z = falloc(N * R), *a = falloc(R * C), *x = falloc(N * C);

        dsa_test_rng_fill(rng, z, N * R, -1.0f, 1.0f);
        dsa_test_rng_fill(rng, a, R * C, -1.0f, 1.0f);
        for (size_t n = 0; n < N; n++)
                for (size_t c = 0; c < C; c++) {
                        double acc = 0.1 * dsa_test_rng_uniform(rng, -1.0f, 1.0f);
                        for (size_t k = 0; k < R; k++)
                                acc += (double) z[n * R + k] * a[k * C + c];
                        x[n * C + c] = (float) (acc * (1.0 + 9.0 * (double) ((c * 37) % C) / (double) C));
                }
        free(z), free(a);
        return x;
}

static int run_method(enum method m, float *w, size_t OC, size_t C, const double *sq, const double *H,
                      float s, enum dsa_sparsity_pattern pat) {
        float *xnorm;
        int r;

        switch (m) {
        case METHOD_MAGNITUDE:
                return dsa_prune_magnitude(w, OC, C, s, pat);
        case METHOD_WANDA:
                xnorm = falloc(C);
                for (size_t k = 0; k < C; k++)
                        xnorm[k] = (float) sqrt(sq[k]);
                r = dsa_prune_wanda(w, OC, C, xnorm, s, pat);
                free(xnorm);
                return r;
        default:
                return dsa_prune_sparsegpt(w, OC, C, H, s, pat, 0.01, 128);
        }
}

/* Exactly the pattern's zeros: round(s*C) per row, 2 per group of 4, or round(s*C) whole
 * blocks per 16-row group with no other zero. The inputs have no zeros of their own. */
static void check_pattern(const float *w, size_t OC, size_t C, float s, enum dsa_sparsity_pattern pat,
                          const char *what) {
        switch (pat) {
        case DSA_SPARSE_UNSTRUCTURED:
                for (size_t o = 0; o < OC; o++) {
                        size_t z = 0;
                        for (size_t k = 0; k < C; k++)
                                z += w[o * C + k] == 0.0f;
                        if (z != round_count(s, C))
                                printf("FAIL %s: row %zu has %zu zeros, want %zu\n", what, o, z, round_count(s, C));
                        assert_int_equal(z, round_count(s, C));
                }
                break;
        case DSA_SPARSE_2_4:
                for (size_t i = 0; i < OC * C; i += 4) {
                        size_t z = 0;
                        for (size_t q = 0; q < 4; q++)
                                z += w[i + q] == 0.0f;
                        assert_int_equal(z, 2);
                }
                break;
        case DSA_SPARSE_BLOCK16:
                for (size_t o0 = 0; o0 < OC; o0 += 16) {
                        size_t blocks = 0;
                        for (size_t k = 0; k < C; k++) {
                                size_t z = 0, rows = MIN(OC - o0, (size_t) 16);
                                for (size_t o = o0; o < o0 + rows; o++)
                                        z += w[o * C + k] == 0.0f;
                                assert_true(z == 0 || z == rows);
                                blocks += z == rows;
                        }
                        if (blocks != round_count(s, C))
                                printf("FAIL %s: rows %zu.. have %zu empty blocks, want %zu\n", what, o0, blocks,
                                       round_count(s, C));
                        assert_int_equal(blocks, round_count(s, C));
                }
                break;
        }
}

/* Every method, pattern and a range of sparsities (and SparseGPT block sizes that do and do not
 * divide C) leave exactly the pattern's zeros. */
static void test_counts(void **state) {
        static const float sparsities[] = { 0.0f, 0.25f, 0.5f, 0.7f, 0.9f, 1.0f };
        static const size_t blocksizes[] = { 1, 4, 12, 16, 128 };
        const size_t N = 200, C = 48, OC = 37;
        struct dsa_test_rng rng = { 31 };
        float *x = calib_data(&rng, N, C), *w0 = falloc(OC * C), *w = falloc(OC * C);
        double *sq = dalloc0(C), *H = dalloc0(C * C);
        char what[128];

        dsa_prune_stats_add(sq, H, x, N, C);
        dsa_test_rng_fill(&rng, w0, OC * C, 0.1f, 1.0f);
        for (size_t i = 0; i < OC * C; i += 3)
                w0[i] = -w0[i];

        for (int m = 0; m < _METHOD_MAX; m++)
                for (int pat = 0; pat <= DSA_SPARSE_BLOCK16; pat++)
                        for (size_t si = 0; si < ELEMENTSOF(sparsities); si++) {
                                float s = sparsities[si];
                                if (pat == DSA_SPARSE_2_4 && s != 0.5f)
                                        continue;
                                memcpy(w, w0, OC * C * sizeof(float));
                                snprintf(what, sizeof(what), "%s %s %.2f", method_names[m], pat_names[pat], (double) s);
                                assert_int_equal(run_method((enum method) m, w, OC, C, sq, H, s,
                                                            (enum dsa_sparsity_pattern) pat), 0);
                                check_pattern(w, OC, C, s, (enum dsa_sparsity_pattern) pat, what);
                        }

        for (size_t bi = 0; bi < ELEMENTSOF(blocksizes); bi++)
                for (int pat = 0; pat <= DSA_SPARSE_BLOCK16; pat++) {
                        if (pat == DSA_SPARSE_2_4 && blocksizes[bi] % 4 != 0)
                                continue;
                        memcpy(w, w0, OC * C * sizeof(float));
                        snprintf(what, sizeof(what), "sparsegpt %s blocksize %zu", pat_names[pat], blocksizes[bi]);
                        assert_int_equal(dsa_prune_sparsegpt(w, OC, C, H, 0.5f, (enum dsa_sparsity_pattern) pat, 0.01,
                                                             blocksizes[bi]),
                                         0);
                        check_pattern(w, OC, C, 0.5f, (enum dsa_sparsity_pattern) pat, what);
                }
        free(x), free(w0), free(w), free(sq), free(H);
}

/* Magnitude keeps the largest of each group, and the kept weights bit for bit. */
static void test_magnitude_keeps_largest(void **state) {
        const size_t C = 64, OC = 40;
        struct dsa_test_rng rng = { 32 };
        float *w0 = falloc(OC * C), *w = falloc(OC * C);

        dsa_test_rng_fill(&rng, w0, OC * C, -1.0f, 1.0f);
        for (int pat = 0; pat <= DSA_SPARSE_BLOCK16; pat++) {
                memcpy(w, w0, OC * C * sizeof(float));
                assert_int_equal(dsa_prune_magnitude(w, OC, C, 0.5f, (enum dsa_sparsity_pattern) pat), 0);
                for (size_t i = 0; i < OC * C; i++)
                        assert_true(w[i] == 0.0f || memcmp(&w[i], &w0[i], sizeof(float)) == 0);

                if (pat == DSA_SPARSE_UNSTRUCTURED || pat == DSA_SPARSE_2_4) {
                        size_t g = pat == DSA_SPARSE_2_4 ? 4 : C;
                        for (size_t i0 = 0; i0 < OC * C; i0 += g) {
                                float max_pruned = 0, min_kept = INFINITY;
                                for (size_t i = i0; i < i0 + g; i++) {
                                        if (w[i] == 0.0f)
                                                max_pruned = MAX(max_pruned, fabsf(w0[i]));
                                        else
                                                min_kept = MIN(min_kept, fabsf(w0[i]));
                                }
                                assert_true(max_pruned <= min_kept);
                        }
                } else
                        for (size_t o0 = 0; o0 < OC; o0 += 16) {
                                double max_pruned = 0, min_kept = INFINITY;
                                for (size_t k = 0; k < C; k++) {
                                        double ss = 0;
                                        for (size_t o = o0; o < MIN(o0 + 16, OC); o++)
                                                ss += (double) w0[o * C + k] * w0[o * C + k];
                                        if (w[o0 * C + k] == 0.0f)
                                                max_pruned = MAX(max_pruned, ss);
                                        else
                                                min_kept = MIN(min_kept, ss);
                                }
                                assert_true(max_pruned <= min_kept);
                        }
        }
        free(w0), free(w);
}

/* Equal scores go to the lower index, whatever the sign, on every run; a NaN is never pruned
 * before a number. */
static void test_ties(void **state) {
        const size_t C = 8, OC = 32;
        float w[32 * 8];

        for (size_t i = 0; i < OC * C; i++)
                w[i] = i % 2 ? -1.0f : 1.0f;
        assert_int_equal(dsa_prune_magnitude(w, OC, C, 0.5f, DSA_SPARSE_UNSTRUCTURED), 0);
        for (size_t o = 0; o < OC; o++)
                for (size_t k = 0; k < C; k++)
                        assert_true((w[o * C + k] == 0.0f) == (k < 4));

        for (size_t i = 0; i < OC * C; i++)
                w[i] = 2.0f;
        assert_int_equal(dsa_prune_magnitude(w, OC, C, 0.5f, DSA_SPARSE_2_4), 0);
        for (size_t i = 0; i < OC * C; i++)
                assert_true((w[i] == 0.0f) == (i % 4 < 2));

        for (size_t i = 0; i < OC * C; i++)
                w[i] = 3.0f;
        assert_int_equal(dsa_prune_magnitude(w, OC, C, 0.25f, DSA_SPARSE_BLOCK16), 0);
        for (size_t i = 0; i < OC * C; i++)
                assert_true((w[i] == 0.0f) == (i % C < 2));

        for (size_t i = 0; i < 4; i++)
                w[i] = 1.0f;
        w[0] = NAN;
        assert_int_equal(dsa_prune_magnitude(w, 1, 4, 0.75f, DSA_SPARSE_UNSTRUCTURED), 0);
        assert_true(isnan(w[0]) && w[1] == 0.0f && w[2] == 0.0f && w[3] == 0.0f);
}

/* Wanda with every norm 1 is magnitude, bit for bit; with real norms it ranks |w| * norm. */
static void test_wanda(void **state) {
        const size_t C = 64, OC = 33;
        struct dsa_test_rng rng = { 33 };
        float *w0 = falloc(OC * C), *a = falloc(OC * C), *b = falloc(OC * C), *xn = falloc(C);

        dsa_test_rng_fill(&rng, w0, OC * C, -1.0f, 1.0f);
        for (int pat = 0; pat <= DSA_SPARSE_BLOCK16; pat++) {
                for (size_t k = 0; k < C; k++)
                        xn[k] = 1.0f;
                memcpy(a, w0, OC * C * sizeof(float));
                memcpy(b, w0, OC * C * sizeof(float));
                assert_int_equal(dsa_prune_magnitude(a, OC, C, 0.5f, (enum dsa_sparsity_pattern) pat), 0);
                assert_int_equal(dsa_prune_wanda(b, OC, C, xn, 0.5f, (enum dsa_sparsity_pattern) pat), 0);
                assert_memory_equal(a, b, OC * C * sizeof(float));

                dsa_test_rng_fill(&rng, xn, C, 0.0f, 5.0f);
                memcpy(b, w0, OC * C * sizeof(float));
                assert_int_equal(dsa_prune_wanda(b, OC, C, xn, 0.5f, (enum dsa_sparsity_pattern) pat), 0);
                assert_memory_not_equal(a, b, OC * C * sizeof(float));
                if (pat == DSA_SPARSE_UNSTRUCTURED)
                        for (size_t o = 0; o < OC; o++) {
                                float max_pruned = 0, min_kept = INFINITY;
                                for (size_t k = 0; k < C; k++) {
                                        float sc = fabsf(w0[o * C + k]) * xn[k];
                                        if (b[o * C + k] == 0.0f)
                                                max_pruned = MAX(max_pruned, sc);
                                        else
                                                min_kept = MIN(min_kept, sc);
                                }
                                assert_true(max_pruned <= min_kept);
                        }
        }
        free(w0), free(a), free(b), free(xn);
}

/* ||x w^T - x w'^T||_F. */
static double recon_error(const float *x, size_t N, size_t C, const float *w, const float *wp, size_t OC) {
        double sum = 0;

        for (size_t n = 0; n < N; n++)
                for (size_t o = 0; o < OC; o++) {
                        double d = 0;
                        for (size_t k = 0; k < C; k++)
                                d += (double) x[n * C + k] * ((double) w[o * C + k] - wp[o * C + k]);
                        sum += d * d;
                }
        return sqrt(sum);
}

/* At 50% SparseGPT reconstructs the layer's output on its calibration data clearly better than
 * magnitude and Wanda, in every pattern. */
static void test_sparsegpt_error(void **state) {
        const size_t N = 512, C = 96, OC = 48;
        struct dsa_test_rng rng = { 34 };
        float *x = calib_data(&rng, N, C), *w0 = falloc(OC * C), *w = falloc(OC * C);
        double *sq = dalloc0(C), *H = dalloc0(C * C);

        /* Two batches: the statistics accumulate. */
        dsa_prune_stats_add(sq, H, x, N / 2, C);
        dsa_prune_stats_add(sq, H, x + N / 2 * C, N - N / 2, C);
        dsa_test_rng_fill(&rng, w0, OC * C, -1.0f, 1.0f);

        for (int pat = 0; pat <= DSA_SPARSE_BLOCK16; pat++) {
                double err[_METHOD_MAX];
                for (int m = 0; m < _METHOD_MAX; m++) {
                        memcpy(w, w0, OC * C * sizeof(float));
                        assert_int_equal(run_method((enum method) m, w, OC, C, sq, H, 0.5f, (enum dsa_sparsity_pattern) pat),
                                         0);
                        err[m] = recon_error(x, N, C, w0, w, OC);
                }
                printf("%-12s 50%%: reconstruction error magnitude %.4g, wanda %.4g, sparsegpt %.4g (%.2fx of the better)\n",
                       pat_names[pat], err[METHOD_MAGNITUDE], err[METHOD_WANDA], err[METHOD_SPARSEGPT],
                       err[METHOD_SPARSEGPT] / MIN(err[METHOD_MAGNITUDE], err[METHOD_WANDA]));
                assert_true(err[METHOD_SPARSEGPT] < SPARSEGPT_MAX_ERR_RATIO * MIN(err[METHOD_MAGNITUDE], err[METHOD_WANDA]));
        }
        free(x), free(w0), free(w), free(sq), free(H);
}

/* Sparsity 0 leaves W bit for bit, whatever the block size; an input never active (zero
 * diagonal) is pruned first and changes nothing else. */
static void test_sparsegpt_zero(void **state) {
        const size_t N = 100, C = 40, OC = 20;
        struct dsa_test_rng rng = { 35 };
        float *x = calib_data(&rng, N, C), *w0 = falloc(OC * C), *w = falloc(OC * C);
        double *sq = dalloc0(C), *H = dalloc0(C * C);

        dsa_prune_stats_add(sq, H, x, N, C);
        dsa_test_rng_fill(&rng, w0, OC * C, -1.0f, 1.0f);
        for (int pat = 0; pat <= DSA_SPARSE_BLOCK16; pat += 2)
                for (size_t bs = 1; bs <= 64; bs *= 4) {
                        memcpy(w, w0, OC * C * sizeof(float));
                        assert_int_equal(dsa_prune_sparsegpt(w, OC, C, H, 0.0f, (enum dsa_sparsity_pattern) pat, 0.01, bs), 0);
                        assert_memory_equal(w, w0, OC * C * sizeof(float));
                }

        /* Input 7 never active: its row and column of H are 0. */
        for (size_t n = 0; n < N; n++)
                x[n * C + 7] = 0.0f;
        memset(H, 0, C * C * sizeof(double));
        memset(sq, 0, C * sizeof(double));
        dsa_prune_stats_add(sq, H, x, N, C);
        memcpy(w, w0, OC * C * sizeof(float));
        assert_int_equal(dsa_prune_sparsegpt(w, OC, C, H, 1.0f / (float) C, DSA_SPARSE_UNSTRUCTURED, 0.01, 64), 0);
        for (size_t o = 0; o < OC; o++)
                for (size_t k = 0; k < C; k++)
                        assert_true(k == 7 ? w[o * C + k] == 0.0f : w[o * C + k] == w0[o * C + k]);
        free(x), free(w0), free(w), free(sq), free(H);
}

/* Solves A x = b (n,n) in place by Gaussian elimination with partial pivoting; b becomes x. */
static void solve(double *A, double *b, size_t n) {
        for (size_t c = 0; c < n; c++) {
                size_t p = c;
                for (size_t i = c + 1; i < n; i++)
                        if (fabs(A[i * n + c]) > fabs(A[p * n + c]))
                                p = i;
                for (size_t j = 0; j < n; j++) {
                        double t = A[c * n + j];
                        A[c * n + j] = A[p * n + j], A[p * n + j] = t;
                }
                double t = b[c];
                b[c] = b[p], b[p] = t;
                for (size_t i = c + 1; i < n; i++) {
                        double f = A[i * n + c] / A[c * n + c];
                        for (size_t j = c; j < n; j++)
                                A[i * n + j] -= f * A[c * n + j];
                        b[i] -= f * b[c];
                }
        }
        for (size_t c = n; c-- > 0;) {
                for (size_t j = c + 1; j < n; j++)
                        b[c] -= A[c * n + j] * b[j];
                b[c] /= A[c * n + c];
        }
}

/* Pruning one weight w_m of a row, SparseGPT is the optimal brain surgeon update restricted to
 * the columns after m (the earlier ones are already final): the minimum of
 * d^T (H + lambda I) d with d_m = -w_m, d_<m = 0, i.e. d_K = (H_KK + lambda I)^-1 H_Km w_m for
 * K = (m, C). Checks the whole chain: dampening, the Cholesky, the inverse, the row update. */
static void test_sparsegpt_obs(void **state) {
        const size_t N = 400, C = 100, OC = 3, ms[3] = { 0, 50, 97 };
        const double damp = 0.01;
        struct dsa_test_rng rng = { 38 };
        float *x = calib_data(&rng, N, C), *w0 = falloc(OC * C), *w = falloc(OC * C);
        double *sq = dalloc0(C), *H = dalloc0(C * C), *A = dalloc0(C * C), *b = dalloc0(C), mean = 0;

        dsa_prune_stats_add(sq, H, x, N, C);
        for (size_t k = 0; k < C; k++)
                mean += H[k * C + k] / (double) C;
        dsa_test_rng_fill(&rng, w0, OC * C, 0.5f, 1.0f);
        for (size_t o = 0; o < OC; o++)
                w0[o * C + ms[o]] = 1e-4f; /* the one weight each row prunes */
        memcpy(w, w0, OC * C * sizeof(float));
        assert_int_equal(dsa_prune_sparsegpt(w, OC, C, H, 1.0f / (float) C, DSA_SPARSE_UNSTRUCTURED, damp, 128), 0);

        for (size_t o = 0; o < OC; o++) {
                const size_t m = ms[o], n = C - m - 1;
                for (size_t i = 0; i < n; i++) {
                        for (size_t j = 0; j < n; j++)
                                A[i * n + j] = H[(m + 1 + i) * C + (m + 1 + j)] + (i == j ? damp * mean : 0);
                        b[i] = H[(m + 1 + i) * C + m] * w0[o * C + m];
                }
                solve(A, b, n);
                for (size_t k = 0; k < C; k++) {
                        double want = k < m ? w0[o * C + k] : k == m ? 0.0 : w0[o * C + k] + b[k - m - 1];
                        if (!(fabs(w[o * C + k] - want) <= 1e-6 + 1e-5 * fabs(want)))
                                printf("FAIL row %zu (pruning %zu) column %zu: got %.9g want %.9g\n", o, m, k,
                                       (double) w[o * C + k], want);
                        assert_true(fabs(w[o * C + k] - want) <= 1e-6 + 1e-5 * fabs(want));
                }
        }
        free(x), free(w0), free(w), free(sq), free(H), free(A), free(b);
}

static void test_stats(void **state) {
        const size_t N = 300, C = 21;
        struct dsa_test_rng rng = { 36 };
        float *x = falloc(N * C);
        double *sq = dalloc0(C), *H = dalloc0(C * C), *sq2 = dalloc0(C);

        dsa_test_rng_fill(&rng, x, N * C, -2.0f, 2.0f);
        dsa_prune_stats_add(sq, H, x, 100, C);
        dsa_prune_stats_add(sq, H, x + 100 * C, N - 100, C);
        dsa_prune_stats_add(sq2, NULL, x, N, C);
        for (size_t i = 0; i < C; i++) {
                double want = 0;
                for (size_t n = 0; n < N; n++)
                        want += (double) x[n * C + i] * x[n * C + i];
                assert_true(fabs(sq[i] - want) <= 1e-12 * want);
                assert_true(fabs(sq2[i] - want) <= 1e-12 * want);
                for (size_t j = 0; j < C; j++) {
                        double h = 0;
                        for (size_t n = 0; n < N; n++)
                                h += (double) x[n * C + i] * x[n * C + j];
                        assert_true(fabs(H[i * C + j] - h) <= 1e-12 * sqrt(sq[i] * sq[j]));
                        assert_true(H[i * C + j] == H[j * C + i]);
                }
        }
        free(x), free(sq), free(H), free(sq2);
}

static void test_errors(void **state) {
        float w[4 * 8], w0[4 * 8], xn[8];
        double H[8 * 8] = { 0 };
        struct dsa_test_rng rng = { 37 };

        dsa_test_rng_fill(&rng, w0, ELEMENTSOF(w0), -1.0f, 1.0f);
        memcpy(w, w0, sizeof(w));
        for (size_t k = 0; k < 8; k++)
                xn[k] = 1.0f, H[k * 8 + k] = 1.0;

        assert_int_equal(dsa_prune_magnitude(NULL, 4, 8, 0.5f, DSA_SPARSE_UNSTRUCTURED), -EINVAL);
        assert_int_equal(dsa_prune_magnitude(w, 4, 8, -0.1f, DSA_SPARSE_UNSTRUCTURED), -EINVAL);
        assert_int_equal(dsa_prune_magnitude(w, 4, 8, 1.1f, DSA_SPARSE_UNSTRUCTURED), -EINVAL);
        assert_int_equal(dsa_prune_magnitude(w, 4, 8, NAN, DSA_SPARSE_BLOCK16), -EINVAL);
        assert_int_equal(dsa_prune_magnitude(w, 4, 8, 0.3f, DSA_SPARSE_2_4), -EINVAL);
        assert_int_equal(dsa_prune_magnitude(w, 4, 6, 0.5f, DSA_SPARSE_2_4), -EINVAL);
        assert_int_equal(dsa_prune_magnitude(w, 4, 8, 0.5f, (enum dsa_sparsity_pattern) 7), -EINVAL);
        assert_int_equal(dsa_prune_wanda(w, 4, 8, NULL, 0.5f, DSA_SPARSE_UNSTRUCTURED), -EINVAL);
        xn[3] = -1.0f;
        assert_int_equal(dsa_prune_wanda(w, 4, 8, xn, 0.5f, DSA_SPARSE_UNSTRUCTURED), -EINVAL);
        xn[3] = NAN;
        assert_int_equal(dsa_prune_wanda(w, 4, 8, xn, 0.5f, DSA_SPARSE_UNSTRUCTURED), -EINVAL);
        xn[3] = 1.0f;
        assert_int_equal(dsa_prune_sparsegpt(w, 4, 8, NULL, 0.5f, DSA_SPARSE_UNSTRUCTURED, 0.01, 4), -EINVAL);
        assert_int_equal(dsa_prune_sparsegpt(w, 4, 8, H, 0.5f, DSA_SPARSE_UNSTRUCTURED, -1, 4), -EINVAL);
        assert_int_equal(dsa_prune_sparsegpt(w, 4, 8, H, 0.5f, DSA_SPARSE_UNSTRUCTURED, NAN, 4), -EINVAL);
        assert_int_equal(dsa_prune_sparsegpt(w, 4, 8, H, 0.5f, DSA_SPARSE_UNSTRUCTURED, 0.01, 0), -EINVAL);
        assert_int_equal(dsa_prune_sparsegpt(w, 4, 8, H, 0.5f, DSA_SPARSE_2_4, 0.01, 6), -EINVAL);
        assert_int_equal(dsa_prune_sparsegpt(w, 4, 8, H, 2.0f, DSA_SPARSE_UNSTRUCTURED, 0.01, 4), -EINVAL);
        /* Indefinite: a 2x2 block [[1, 2], [2, 1]], no dampening. */
        H[0 * 8 + 1] = H[1 * 8 + 0] = 2.0;
        assert_int_equal(dsa_prune_sparsegpt(w, 4, 8, H, 0.5f, DSA_SPARSE_UNSTRUCTURED, 0, 4), -EDOM);
        assert_memory_equal(w, w0, sizeof(w));

        /* Empty matrices are no work. */
        assert_int_equal(dsa_prune_magnitude(NULL, 0, 8, 0.5f, DSA_SPARSE_UNSTRUCTURED), 0);
        assert_int_equal(dsa_prune_wanda(NULL, 4, 0, NULL, 0.5f, DSA_SPARSE_BLOCK16), 0);
        assert_int_equal(dsa_prune_sparsegpt(NULL, 0, 0, NULL, 0.5f, DSA_SPARSE_BLOCK16, 0.01, 4), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_stats),
                cmocka_unit_test(test_ties),
                cmocka_unit_test(test_magnitude_keeps_largest),
                cmocka_unit_test(test_wanda),
                cmocka_unit_test(test_counts),
                cmocka_unit_test(test_sparsegpt_zero),
                cmocka_unit_test(test_sparsegpt_obs),
                cmocka_unit_test(test_sparsegpt_error),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
