/* Pruning of fp32 weight matrices (prune.h): magnitude and Wanda score each weight (or 16x1
 * block) once and zero the lowest of each comparison group; SparseGPT sweeps the columns in
 * blocks, choosing each block's mask from the weights updated so far and spreading every pruned
 * weight's error over the row's remaining columns through the Cholesky factor of H^-1.
 *
 * Ranking: a score is a non-negative fp32 (or NaN), whose bit pattern orders like its value, so
 * (bits << 32 | index) sorts scores ascending with ties by index in one integer compare.
 *
 * SparseGPT's linear algebra is double, in row-major C x C buffers: H^-1's upper Cholesky factor
 * U (U^T U = H^-1) is computed without forming H^-1. With J the reversal permutation, the lower
 * Cholesky factor L of J H J gives H = R R^T with R = J L J upper, so H^-1 = R^-T R^-1 and
 * U = R^-1 = J L^-1 J: one Cholesky (blocked, its panels through cblas_dtrsm and cblas_dsyrk) and
 * one triangular inverse (cblas_dtrsm against the identity). The sweep works row by row inside a
 * column block (each row's updates touch only that row), and the block's errors update the
 * columns right of it in one cblas_dgemm. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "prune.h"

#define BLOCK_ROWS 16   /* DSA_SPARSE_BLOCK16's block height */
#define CHOLESKY_NB 64  /* diagonal block of the blocked Cholesky */
#define STATS_ROWS 256  /* rows of x converted to double per cblas_dsyrk */

/* round(sparsity * n), at most n. */
static size_t prune_count(float sparsity, size_t n) {
        double c = floor((double) sparsity * (double) n + 0.5);

        return c >= (double) n ? n : (size_t) c;
}

static uint64_t score_key(float score, size_t i) {
        uint32_t u;

        score = fabsf(score); /* -0.0 as +0.0; a NaN ranks above +inf */
        memcpy(&u, &score, sizeof(u));
        return (uint64_t) u << 32 | (uint64_t) i;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return (x > y) - (x < y);
}

/* score (n) -> ret_mask (n): true for the count lowest scores, ties to the lower index.
 * keys: n scratch. */
static void select_lowest(const float *score, size_t n, size_t count, uint64_t *keys, bool *ret_mask) {
        memset(ret_mask, count >= n, n * sizeof(bool));
        if (count == 0 || count >= n)
                return;
        for (size_t i = 0; i < n; i++)
                keys[i] = score_key(score[i], i);
        if (n <= 16) {
                for (size_t i = 1; i < n; i++)
                        for (size_t j = i; j > 0 && keys[j - 1] > keys[j]; j--) {
                                uint64_t t = keys[j];
                                keys[j] = keys[j - 1], keys[j - 1] = t;
                        }
        } else
                qsort(keys, n, sizeof(uint64_t), cmp_u64);
        for (size_t t = 0; t < count; t++)
                ret_mask[keys[t] & UINT32_MAX] = true;
}

static int check_args(const float *w, size_t OC, size_t C, float sparsity,
                      enum dsa_sparsity_pattern pat) {
        if (!w && OC > 0 && C > 0)
                return dsa__error(-EINVAL, "no weight matrix");
        if (!(sparsity >= 0.0f && sparsity <= 1.0f))
                return dsa__error(-EINVAL, "sparsity %g is not in [0, 1]", (double) sparsity);
        if (C > UINT32_MAX)
                return dsa__error(-EINVAL, "%zu inputs: too many to rank", C);
        switch (pat) {
        case DSA_SPARSE_UNSTRUCTURED:
        case DSA_SPARSE_BLOCK16:
                return 0;
        case DSA_SPARSE_2_4:
                if (sparsity != 0.5f)
                        return dsa__error(-EINVAL, "2:4 sparsity is 0.5, not %g", (double) sparsity);
                if (C % 4 != 0)
                        return dsa__error(-EINVAL, "2:4 needs inputs in groups of 4, not %zu", C);
                return 0;
        default:
                return dsa__error(-EINVAL, "unknown sparsity pattern %d", (int) pat);
        }
}

/* Magnitude (xnorm NULL) and Wanda: one score per candidate, the lowest of each group zeroed. */
static int prune_scored(float *w, size_t OC, size_t C, const float *xnorm, float sparsity,
                        enum dsa_sparsity_pattern pat) {
        _cleanup_free_ float *score = NULL;
        _cleanup_free_ uint64_t *keys = NULL;
        _cleanup_free_ bool *mask = NULL;
        int r;

        r = check_args(w, OC, C, sparsity, pat);
        if (r < 0)
                return r;
        if (OC == 0 || C == 0)
                return 0;
        score = malloc(C * sizeof(float));
        keys = malloc(C * sizeof(uint64_t));
        mask = malloc(C * sizeof(bool));
        if (!score || !keys || !mask)
                return dsa__error(-ENOMEM, "no memory to rank %zu inputs", C);

        switch (pat) {
        case DSA_SPARSE_UNSTRUCTURED:
                for (size_t o = 0; o < OC; o++) {
                        float *row = w + o * C;
                        for (size_t k = 0; k < C; k++)
                                score[k] = fabsf(row[k]) * (xnorm ? xnorm[k] : 1.0f);
                        select_lowest(score, C, prune_count(sparsity, C), keys, mask);
                        for (size_t k = 0; k < C; k++)
                                if (mask[k])
                                        row[k] = 0.0f;
                }
                break;
        case DSA_SPARSE_2_4:
                for (size_t o = 0; o < OC; o++)
                        for (size_t k0 = 0; k0 < C; k0 += 4) {
                                float *g = w + o * C + k0;
                                for (size_t q = 0; q < 4; q++)
                                        score[q] = fabsf(g[q]) * (xnorm ? xnorm[k0 + q] : 1.0f);
                                select_lowest(score, 4, 2, keys, mask);
                                for (size_t q = 0; q < 4; q++)
                                        if (mask[q])
                                                g[q] = 0.0f;
                        }
                break;
        case DSA_SPARSE_BLOCK16:
                for (size_t o0 = 0; o0 < OC; o0 += BLOCK_ROWS) {
                        size_t rows = MIN(OC - o0, (size_t) BLOCK_ROWS);
                        for (size_t k = 0; k < C; k++) {
                                double ss = 0;
                                for (size_t i = 0; i < rows; i++)
                                        ss += (double) w[(o0 + i) * C + k] * w[(o0 + i) * C + k];
                                score[k] = (float) sqrt(ss) * (xnorm ? xnorm[k] : 1.0f);
                        }
                        select_lowest(score, C, prune_count(sparsity, C), keys, mask);
                        for (size_t k = 0; k < C; k++)
                                if (mask[k])
                                        for (size_t i = 0; i < rows; i++)
                                                w[(o0 + i) * C + k] = 0.0f;
                }
                break;
        }
        return 0;
}

int dsa_prune_magnitude(float *w, size_t OC, size_t C, float sparsity, enum dsa_sparsity_pattern pat) {
        return prune_scored(w, OC, C, NULL, sparsity, pat);
}

int dsa_prune_wanda(float *w, size_t OC, size_t C, const float *xnorm, float sparsity,
                    enum dsa_sparsity_pattern pat) {
        if (!xnorm && C > 0)
                return dsa__error(-EINVAL, "no input norms");
        for (size_t k = 0; k < C; k++)
                if (!(xnorm[k] >= 0.0f))
                        return dsa__error(-EINVAL, "input norm %zu is %g", k, (double) xnorm[k]);
        return prune_scored(w, OC, C, xnorm, sparsity, pat);
}

void dsa_prune_stats_add(double *sq, double *H, const float *x, size_t N, size_t C) {
        _cleanup_free_ double *xd = NULL;

        if (!x || N == 0 || C == 0)
                return;
        for (size_t n = 0; sq && n < N; n++)
                for (size_t c = 0; c < C; c++)
                        sq[c] += (double) x[n * C + c] * x[n * C + c];
        if (!H)
                return;

        /* x^T x into the upper triangle, STATS_ROWS rows at a time; without the buffer, a plain
         * loop (slow, but this function has no way to fail). */
        xd = malloc(MIN(N, (size_t) STATS_ROWS) * C * sizeof(double));
        for (size_t n0 = 0; n0 < N; n0 += STATS_ROWS) {
                size_t nn = MIN(N - n0, (size_t) STATS_ROWS);
                if (xd) {
                        for (size_t i = 0; i < nn * C; i++)
                                xd[i] = x[n0 * C + i];
                        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int) C, (int) nn, 1.0, xd, (int) C,
                                    1.0, H, (int) C);
                } else
                        for (size_t n = n0; n < n0 + nn; n++)
                                for (size_t i = 0; i < C; i++)
                                        for (size_t j = i; j < C; j++)
                                                H[i * C + j] += (double) x[n * C + i] * x[n * C + j];
        }
        for (size_t i = 0; i < C; i++)
                for (size_t j = i + 1; j < C; j++)
                        H[j * C + i] = H[i * C + j];
}

int dsa__cholesky_lower(double *A, size_t n) {
        for (size_t k0 = 0; k0 < n; k0 += CHOLESKY_NB) {
                const size_t nb = MIN(n - k0, (size_t) CHOLESKY_NB), m = n - k0 - nb;
                double *A11 = A + k0 * n + k0;

                for (size_t j = 0; j < nb; j++) {
                        double d = A11[j * n + j];
                        for (size_t p = 0; p < j; p++)
                                d -= A11[j * n + p] * A11[j * n + p];
                        if (!(d > 0) || !isfinite(d))
                                return -EDOM;
                        d = sqrt(d);
                        A11[j * n + j] = d;
                        for (size_t i = j + 1; i < nb; i++) {
                                double s = A11[i * n + j];
                                for (size_t p = 0; p < j; p++)
                                        s -= A11[i * n + p] * A11[j * n + p];
                                A11[i * n + j] = s / d;
                        }
                }
                if (m == 0)
                        break;
                /* A21 := A21 L11^-T, then A22 -= A21 A21^T (lower triangle). */
                cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, (int) m, (int) nb,
                            1.0, A11, (int) n, A11 + nb * n, (int) n);
                cblas_dsyrk(CblasRowMajor, CblasLower, CblasNoTrans, (int) m, (int) nb, -1.0, A11 + nb * n,
                            (int) n, 1.0, A11 + nb * n + nb, (int) n);
        }
        return 0;
}

/* H (C,C) -> U (C,C) upper, U^T U = (H + lambda I)^-1, dead inputs' diagonal taken as 1 before
 * dampening (see the file comment). T: C*C scratch. */
static int hinv_cholesky_upper(double *U, double *T, const double *H, const bool *dead, size_t C,
                               double lambda) {
        int r;

        for (size_t i = 0; i < C; i++)
                for (size_t j = 0; j < C; j++)
                        U[i * C + j] = H[(C - 1 - i) * C + (C - 1 - j)];
        for (size_t i = 0; i < C; i++)
                U[i * C + i] = (dead[C - 1 - i] ? 1.0 : U[i * C + i]) + lambda;
        r = dsa__cholesky_lower(U, C);
        if (r < 0)
                return r;
        memset(T, 0, C * C * sizeof(double));
        for (size_t i = 0; i < C; i++)
                T[i * C + i] = 1.0;
        cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, (int) C, (int) C, 1.0,
                    U, (int) C, T, (int) C);
        for (size_t i = 0; i < C; i++)
                for (size_t j = 0; j < C; j++)
                        U[i * C + j] = j >= i ? T[(C - 1 - i) * C + (C - 1 - j)] : 0.0;
        return 0;
}

/* The OBS score of pruning W[.,k]: w^2 / U_kk^2, 0 for an input that is never active. */
static float obs_score(double w, const double *U, const bool *dead, size_t C, size_t k) {
        double d = U[k * C + k];

        return dead[k] ? 0.0f : (float) (w * w / (d * d));
}

int dsa_prune_sparsegpt(float *w, size_t OC, size_t C, const double *H, float sparsity,
                        enum dsa_sparsity_pattern pat, double damp, size_t blocksize) {
        _cleanup_free_ double *U = NULL, *T = NULL, *W = NULL, *E = NULL;
        _cleanup_free_ bool *dead = NULL, *mask = NULL;
        _cleanup_free_ float *score = NULL;
        _cleanup_free_ uint64_t *keys = NULL;
        double diag_sum = 0, lambda;
        size_t CC;
        int r;

        r = check_args(w, OC, C, sparsity, pat);
        if (r < 0)
                return r;
        if (!H && C > 0)
                return dsa__error(-EINVAL, "no Hessian");
        if (!(damp >= 0) || !isfinite(damp))
                return dsa__error(-EINVAL, "dampening %g is not a finite value >= 0", damp);
        if (blocksize == 0 || (pat == DSA_SPARSE_2_4 && blocksize % 4 != 0))
                return dsa__error(-EINVAL, "block size %zu is not a positive%s", blocksize,
                                  pat == DSA_SPARSE_2_4 ? " multiple of 4" : " number");
        if (OC == 0 || C == 0)
                return 0;
        if (C > INT_MAX || OC > INT_MAX || !size_mul_ok(C, C, &CC) || CC > SIZE_MAX / sizeof(double) ||
            OC > SIZE_MAX / sizeof(double) / C)
                return dsa__error(-ENOMEM, "%zu x %zu weights: too large", OC, C);
        blocksize = MIN(blocksize, C);

        U = malloc(CC * sizeof(double));
        T = malloc(CC * sizeof(double));
        W = malloc(OC * C * sizeof(double));
        E = malloc(OC * blocksize * sizeof(double));
        dead = malloc(C * sizeof(bool));
        mask = malloc(blocksize * sizeof(bool));
        score = malloc(blocksize * sizeof(float));
        keys = malloc(blocksize * sizeof(uint64_t));
        if (!U || !T || !W || !E || !dead || !mask || !score || !keys)
                return dsa__error(-ENOMEM, "no memory for SparseGPT on %zu x %zu weights", OC, C);

        for (size_t k = 0; k < C; k++) {
                dead[k] = H[k * C + k] == 0;
                diag_sum += dead[k] ? 1.0 : H[k * C + k];
        }
        lambda = damp * diag_sum / (double) C;
        r = hinv_cholesky_upper(U, T, H, dead, C, lambda);
        if (r < 0)
                return dsa__error(r, "Hessian is not positive definite after dampening by %g", lambda);
        free(TAKE_PTR(T));

        for (size_t i = 0; i < OC * C; i++)
                W[i] = w[i];

        const size_t group = pat == DSA_SPARSE_BLOCK16 ? BLOCK_ROWS : 1;
        for (size_t k0 = 0; k0 < C; k0 += blocksize) {
                const size_t k1 = MIN(C, k0 + blocksize), cnt = k1 - k0;
                const size_t n_block = prune_count(sparsity, k1) - prune_count(sparsity, k0);
                bool any = false;

                for (size_t o0 = 0; o0 < OC; o0 += group) {
                        const size_t rows = MIN(OC - o0, group);

                        if (pat != DSA_SPARSE_2_4) {
                                for (size_t i = 0; i < cnt; i++) {
                                        double ss = 0;
                                        for (size_t o = o0; o < o0 + rows; o++)
                                                ss += W[o * C + k0 + i] * W[o * C + k0 + i];
                                        score[i] = dead[k0 + i] ? 0.0f : (float) (ss / (U[(k0 + i) * C + k0 + i] *
                                                                                           U[(k0 + i) * C + k0 + i]));
                                }
                                select_lowest(score, cnt, MIN(n_block, cnt), keys, mask);
                        }

                        for (size_t o = o0; o < o0 + rows; o++) {
                                double *wr = W + o * C, *er = E + o * blocksize;

                                for (size_t i = 0; i < cnt; i++) {
                                        const size_t k = k0 + i;
                                        double err;

                                        if (pat == DSA_SPARSE_2_4 && i % 4 == 0) {
                                                for (size_t q = 0; q < 4; q++)
                                                        score[i + q] = obs_score(wr[k + q], U, dead, C, k + q);
                                                select_lowest(score + i, 4, 2, keys, mask + i);
                                        }
                                        if (!mask[i]) {
                                                er[i] = 0;
                                                continue;
                                        }
                                        err = wr[k] / U[k * C + k];
                                        wr[k] = 0;
                                        er[i] = err;
                                        any = true;
                                        for (size_t j = k + 1; j < k1; j++)
                                                wr[j] -= err * U[k * C + j];
                                }
                        }
                }
                /* The block's errors into the columns right of it: W[:, k1:] -= E U[k0:k1, k1:]. */
                if (any && k1 < C)
                        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) OC, (int) (C - k1), (int) cnt,
                                    -1.0, E, (int) blocksize, U + k0 * C + k1, (int) C, 1.0, W + k1, (int) C);
        }

        for (size_t i = 0; i < OC * C; i++)
                w[i] = (float) W[i];
        return 0;
}
