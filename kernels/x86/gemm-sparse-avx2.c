/* The AVX2 + FMA panel loop of the sparse packed fp32 GEMM (driver and layout: gemm-sparse.c,
 * gemm-sparse.h). The dense microkernel's 6 x 16 tile of out in 12 ymm accumulators
 * (x86/gemm-avx2.c), with the k loop over the panel's kept rows only: each step loads the
 * row's column index and two vectors of the packed row, broadcasts inp[r][idx] for each of the
 * 6 rows and does 12 FMAs, so 9 loads per 12 FMAs still fit the load ports under the FMA ports.
 * The GELU epilogue runs on the accumulators before the store (gemm-tile-avx2.h). */
#include <immintrin.h>

#include "../gemm-sparse.h"
#include "gemm-tile-avx2.h"

#define MR DSA__SPARSE_MR_AVX2
#define NR DSA__SPARSE_NR

/* inp (mr, lda) at the kept columns idx (nk) x b (nk, NR) -> c (mr, ldc), nr <= NR columns,
 * then ep on the sums; mr a constant after inlining. Loads, epilogue and stores of the tile:
 * gemm-tile-avx2.h. */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const float *a,
                                                       size_t lda, const float *b,
                                                       const uint32_t *idx, size_t nk, size_t nr,
                                                       const float *bias, bool first,
                                                       enum dsa_epilogue ep, const int mr) {
        __m256i m0, m1;
        __m256 acc[MR][2];

        tile_masks(nr, &m0, &m1);
        tile_load(acc, c, ldc, nr, m0, m1, bias, first, mr);
#pragma GCC unroll 4
        for (size_t t = 0; t < nk; t++) {
                const __m256 w0 = _mm256_load_ps(b + t * NR), w1 = _mm256_load_ps(b + t * NR + 8);
                tile_fma(acc, a, lda, idx[t], w0, w1, mr);
        }
        tile_store(acc, c, ldc, nr, m0, m1, ep, mr);
}

/* inp (N, ldi) at the columns idx (nk) x kept rows b (nk, 16) [+ bias] -> out (N, ldo), nr <= 16
 * columns; see dsa__gemm_sparse_panel_f32_fn. Rows in tiles of 6 as the dense loop
 * (TILE_ROWS_AVX2: the ragged end as two tiles of 3-5 rows, the next tile's rows of out
 * prefetched). */
void dsa__gemm_sparse_panel_f32_avx2(float *out, size_t ldo, const float *inp, size_t ldi,
                                     const float *b, const uint32_t *idx, size_t nk, size_t N,
                                     size_t nr, const float *bias, bool first, enum dsa_epilogue ep) {
#define TILE(n, rows) tile(out + (n) * ldo, ldo, inp + (n) * ldi, ldi, b, idx, nk, nr, bias, first, ep, rows)
        TILE_ROWS_AVX2(N, TILE, out, ldo, !first);
#undef TILE
}
