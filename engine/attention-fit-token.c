/* The token-level DSA scorer's closed-form fit (attention-variant.h): per (layer, head) the
 * rank-R bilinear form closest to the attention's own q . k on the calibration tokens.
 *
 * With Cq = E[q q^T] and Ck = E[k k^T] (rotated queries and keys, the head's key/value head's
 * keys), whitened vectors x = Cq^-1/2 q and y = Ck^-1/2 k have identity second moments and
 * q . k = x^T M y, M = Cq^1/2 Ck^1/2. For x and y uncorrelated, the rank-R form that minimizes
 * E[(q . k - x^T M_R y)^2] is M's truncated SVD M_R = P_R S_R R_R^T (Eckart-Young in the
 * whitened space), so
 *
 *   Wq = S_R^1/2 P_R^T Cq^-1/2,   Wk = S_R^1/2 R_R^T Ck^-1/2,   (Wq q) . (Wk k) = x^T M_R y.
 *
 * The eigen-decompositions are cyclic Jacobi on HS x HS doubles (HS <= 256). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention-variant.h"
#include "basic/macro.h"

/* Symmetric a (n, n) -> eigenvalues on its diagonal, eigenvectors in v's columns. */
static void jacobi_eigen(double *a, double *v, size_t n) {
        for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < n; j++)
                        v[i * n + j] = i == j;
        for (int sweep = 0; sweep < 60; sweep++) {
                double off = 0, diag = 0;
                for (size_t i = 0; i < n; i++) {
                        diag += a[i * n + i] * a[i * n + i];
                        for (size_t j = i + 1; j < n; j++)
                                off += a[i * n + j] * a[i * n + j];
                }
                if (off <= 1e-30 * diag || off == 0)
                        return;
                for (size_t p = 0; p < n; p++)
                        for (size_t q = p + 1; q < n; q++) {
                                const double apq = a[p * n + q];
                                if (fabs(apq) < 1e-300)
                                        continue;
                                const double th = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                                const double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                                const double c = 1 / sqrt(t * t + 1), s = t * c;
                                for (size_t k = 0; k < n; k++) { /* columns p, q */
                                        const double akp = a[k * n + p], akq = a[k * n + q];
                                        a[k * n + p] = c * akp - s * akq;
                                        a[k * n + q] = s * akp + c * akq;
                                }
                                for (size_t k = 0; k < n; k++) { /* rows p, q */
                                        const double apk = a[p * n + k], aqk = a[q * n + k];
                                        a[p * n + k] = c * apk - s * aqk;
                                        a[q * n + k] = s * apk + c * aqk;
                                }
                                for (size_t k = 0; k < n; k++) {
                                        const double vkp = v[k * n + p], vkq = v[k * n + q];
                                        v[k * n + p] = c * vkp - s * vkq;
                                        v[k * n + q] = s * vkp + c * vkq;
                                }
                        }
        }
}

/* c (n, n) symmetric positive semi-definite -> c^(pw) for pw = +-1/2, eigenvalues below 1e-9 of
 * the largest raised to it (a direction the calibration never used stays finite). */
static int sym_power(const double *c, size_t n, double pw, double *out) {
        _cleanup_free_ double *a = malloc(n * n * sizeof(double)), *v = malloc(n * n * sizeof(double));
        _cleanup_free_ double *e = malloc(n * sizeof(double));
        double mx = 0;

        if (!a || !v || !e)
                return -ENOMEM;
        memcpy(a, c, n * n * sizeof(double));
        jacobi_eigen(a, v, n);
        for (size_t i = 0; i < n; i++)
                mx = MAX(mx, a[i * n + i]);
        for (size_t k = 0; k < n; k++)
                e[k] = pow(MAX(a[k * n + k], 1e-9 * mx + 1e-30), pw);
        for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < n; j++) {
                        double s = 0;
                        for (size_t k = 0; k < n; k++)
                                s += v[i * n + k] * e[k] * v[j * n + k];
                        out[i * n + j] = s;
                }
        return 0;
}

int dsa__att_fit_token_head(const double *cq, const double *ck, size_t HS, size_t R, float *wq, float *wk,
                            double *ret_share) {
        const size_t n = HS, nn = n * n;
        _cleanup_free_ double *buf = malloc(7 * nn * sizeof(double));
        _cleanup_free_ size_t *order = malloc(n * sizeof(size_t));
        int r;

        if (!buf || !order)
                return -ENOMEM;
        if (R == 0 || R > n)
                return -EINVAL;
        double *qh = buf, *qih = qh + nn, *kh = qih + nn, *kih = kh + nn, *m = kih + nn, *mtm = m + nn, *rv = mtm + nn;
        if ((r = sym_power(cq, n, 0.5, qh)) < 0 || (r = sym_power(cq, n, -0.5, qih)) < 0 ||
            (r = sym_power(ck, n, 0.5, kh)) < 0 || (r = sym_power(ck, n, -0.5, kih)) < 0)
                return r;
        for (size_t i = 0; i < n; i++) /* M = Cq^1/2 Ck^1/2 */
                for (size_t j = 0; j < n; j++) {
                        double s = 0;
                        for (size_t k = 0; k < n; k++)
                                s += qh[i * n + k] * kh[k * n + j];
                        m[i * n + j] = s;
                }
        for (size_t i = 0; i < n; i++) /* M^T M = R S^2 R^T */
                for (size_t j = 0; j < n; j++) {
                        double s = 0;
                        for (size_t k = 0; k < n; k++)
                                s += m[k * n + i] * m[k * n + j];
                        mtm[i * n + j] = s;
                }
        jacobi_eigen(mtm, rv, n);
        for (size_t i = 0; i < n; i++)
                order[i] = i;
        for (size_t i = 1; i < n; i++) /* descending singular values */
                for (size_t j = i; j > 0 && mtm[order[j] * n + order[j]] > mtm[order[j - 1] * n + order[j - 1]]; j--) {
                        const size_t t = order[j];
                        order[j] = order[j - 1], order[j - 1] = t;
                }
        double total = 0, kept = 0;
        for (size_t i = 0; i < n; i++) {
                const double sv = sqrt(MAX(mtm[order[i] * n + order[i]], 0.0));
                total += sv;
                kept += i < R ? sv : 0;
        }
        for (size_t t = 0; t < R; t++) {
                const size_t c = order[t];
                const double sv = sqrt(MAX(mtm[c * n + c], 0.0)), rs = sqrt(sv);
                for (size_t j = 0; j < n; j++) {
                        /* P_t = M r_t / s_t; Wq row t = s_t^1/2 P_t^T Cq^-1/2 = s_t^-1/2 (M r_t)^T Cq^-1/2 */
                        double a = 0, b = 0;
                        for (size_t i = 0; i < n; i++) {
                                double mr = 0;
                                for (size_t k = 0; k < n; k++)
                                        mr += m[i * n + k] * rv[k * n + c];
                                a += mr * qih[i * n + j];
                                b += rv[i * n + c] * kih[i * n + j];
                        }
                        wq[t * n + j] = sv > 0 ? (float) (a / rs) : 0.0f;
                        wk[t * n + j] = (float) (rs * b);
                }
        }
        if (ret_share)
                *ret_share = total > 0 ? kept / total : 0;
        return 0;
}
