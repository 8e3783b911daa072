/* fp32 GEMM through OpenBLAS: the linear layers of every model. Its thread count is set by the
 * caller (dsa_blas_set_threads), so BLAS threads and our own pool never oversubscribe. */
#include <assert.h>
#include <limits.h>
#include <string.h>

#include <cblas.h>

#include "kernels.h"

/* c (M, ldc) = alpha a b^T + beta c, a (M, K; lda), b (N, K; ldb), K >= 1: the one sgemm call
 * of this file (a single row or column may come with any stride: BLAS checks ld >= K). */
static void sgemm_nt(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb, size_t M, size_t N,
                     size_t K, float alpha, float beta) {
        assert(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint) M, (blasint) N, (blasint) K, alpha, a,
                    (blasint) (M > 1 ? lda : K), b, (blasint) (N > 1 ? ldb : K), beta, c, (blasint) ldc);
}

/* inp (N,C) row-major x weight (OC,C) row-major, i.e. PyTorch's Linear weight, transposed by
 * BLAS rather than in memory; bias (OC) or NULL; out (N,ldo), OC values per row, the rest of
 * each row untouched. With a bias the rows are filled with it first and sgemm accumulates onto
 * them (beta = 1), which saves a second pass over out. */
void dsa_linear_f32(float *out, size_t ldo, const float *inp, const float *weight, const float *bias,
                    size_t N, size_t C, size_t OC) {
        assert(ldo >= OC);

        if (N == 0 || OC == 0)
                return;

        for (size_t n = 0; n < N; n++) {
                if (bias)
                        memcpy(out + n * ldo, bias, OC * sizeof(float));
                else if (C == 0)
                        memset(out + n * ldo, 0, OC * sizeof(float));
        }
        if (C == 0)
                return;

        sgemm_nt(out, ldo, inp, C, weight, C, N, OC, C, 1.0f, bias ? 1.0f : 0.0f);
}

void dsa_gemm_nt_f32(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                     size_t N, size_t K, float alpha) {
        assert(ldc >= N && (M < 2 || lda >= K) && (N < 2 || ldb >= K));

        if (M == 0 || N == 0)
                return;
        if (K == 0) {
                for (size_t i = 0; i < M; i++)
                        memset(c + i * ldc, 0, N * sizeof(float));
                return;
        }
        sgemm_nt(c, ldc, a, lda, b, ldb, M, N, K, alpha, 0.0f);
}

void dsa_blas_set_threads(int n) {
        openblas_set_num_threads(n < 1 ? 1 : n);
}
