/* The AVX2 + FMA panel loop of the sparse packed fp32 GEMM (driver and layout: gemm-sparse.c,
 * gemm-sparse.h). The dense microkernel's 6 x 16 tile of out in 12 ymm accumulators
 * (x86/gemm-avx2.c), with the k loop over the panel's kept rows only: each step loads the
 * row's column index and two vectors of the packed row, broadcasts inp[r][idx] for each of the
 * 6 rows and does 12 FMAs, so 9 loads per 12 FMAs still fit the load ports under the FMA ports.
 * The GELU epilogue runs on the accumulators before the store (vecmath-avx2.h). */
#include <immintrin.h>

#include "../gemm-sparse.h"
#include "vecmath-avx2.h"

#define MR DSA__SPARSE_MR_AVX2
#define NR DSA__SPARSE_NR

/* inp (mr, lda) at the kept columns idx (nk) x b (nk, NR) -> c (mr, ldc), nr <= NR columns,
 * then ep on the sums; mr a constant after inlining. Ragged columns (nr < NR) use masked loads
 * and stores, which never touch the columns past nr; those lanes hold 0. */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const float *a,
                                                       size_t lda, const float *b,
                                                       const uint32_t *idx, size_t nk, size_t nr,
                                                       const float *bias, bool first,
                                                       enum dsa_epilogue ep, const int mr) {
        const bool full = nr == NR;
        const __m256i m0 = tail_mask(nr < 8 ? nr : 8), m1 = tail_mask(nr > 8 ? nr - 8 : 0);
        __m256 acc[MR][2];

        if (first) {
                __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
                if (bias && full) {
                        b0 = _mm256_loadu_ps(bias);
                        b1 = _mm256_loadu_ps(bias + 8);
                } else if (bias) {
                        b0 = _mm256_maskload_ps(bias, m0);
                        b1 = _mm256_maskload_ps(bias + 8, m1);
                }
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++)
                        acc[r][0] = b0, acc[r][1] = b1;
        } else if (full) {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++) {
                        acc[r][0] = _mm256_loadu_ps(c + r * ldc);
                        acc[r][1] = _mm256_loadu_ps(c + r * ldc + 8);
                }
        } else {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++) {
                        acc[r][0] = _mm256_maskload_ps(c + r * ldc, m0);
                        acc[r][1] = _mm256_maskload_ps(c + r * ldc + 8, m1);
                }
        }

#pragma GCC unroll 4
        for (size_t t = 0; t < nk; t++) {
                const size_t k = idx[t];
                const __m256 w0 = _mm256_load_ps(b + t * NR), w1 = _mm256_load_ps(b + t * NR + 8);
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++) {
                        const __m256 x = _mm256_broadcast_ss(a + r * lda + k);
                        acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
                        acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
                }
        }

        if (ep == DSA_EPILOGUE_GELU_ERF) {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++) {
                        acc[r][0] = gelu_erf_ps(acc[r][0]);
                        acc[r][1] = gelu_erf_ps(acc[r][1]);
                }
        } else if (ep == DSA_EPILOGUE_GELU_TANH) {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++) {
                        acc[r][0] = gelu_tanh_ps(acc[r][0]);
                        acc[r][1] = gelu_tanh_ps(acc[r][1]);
                }
        }

        if (full) {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++) {
                        _mm256_storeu_ps(c + r * ldc, acc[r][0]);
                        _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
                }
        } else {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++) {
                        _mm256_maskstore_ps(c + r * ldc, m0, acc[r][0]);
                        _mm256_maskstore_ps(c + r * ldc + 8, m1, acc[r][1]);
                }
        }
}

/* inp (N, ldi) at the columns idx (nk) x kept rows b (nk, 16) [+ bias] -> out (N, ldo), nr <= 16
 * columns; see dsa__gemm_sparse_panel_f32_fn. Rows in tiles of 6, the ragged end split as in
 * x86/gemm-avx2.c (6 + 1..3 rows as two tiles of 3-5, which keep more FMA chains busy). */
void dsa__gemm_sparse_panel_f32_avx2(float *out, size_t ldo, const float *inp, size_t ldi,
                                     const float *b, const uint32_t *idx, size_t nk, size_t N,
                                     size_t nr, const float *bias, bool first, enum dsa_epilogue ep) {
        size_t n = 0, rest;

#define TILE(rows) tile(out + n * ldo, ldo, inp + n * ldi, ldi, b, idx, nk, nr, bias, first, ep, rows)
        const size_t full = N % MR != 0 && N % MR < 4 && N >= MR ? N - MR - N % MR : N - N % MR;

        for (; n < full; n += MR) {
                if (!first && n + 2 * MR <= N)
                        for (int r = 0; r < MR; r++)
                                _mm_prefetch((const char *) (out + (n + MR + r) * ldo), _MM_HINT_T0);
                TILE(MR);
        }
        while ((rest = N - n) > 0) {
                size_t rows = rest > MR ? rest - rest / 2 : rest;
                switch (rows) {
                case 6: TILE(6); break;
                case 5: TILE(5); break;
                case 4: TILE(4); break;
                case 3: TILE(3); break;
                case 2: TILE(2); break;
                default: TILE(1); break;
                }
                n += rows;
        }
#undef TILE
}
