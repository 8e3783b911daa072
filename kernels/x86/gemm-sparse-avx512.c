/* The AVX-512 panel loop of the sparse packed fp32 GEMM (driver and layout: gemm-sparse.c,
 * gemm-sparse.h). Panels are 16 wide in every variant (one kept k row is one 16x1 block), so a
 * row of the tile is one zmm: a 16 x 16 tile of out lives in 16 zmm accumulators; each step over
 * the panel's kept rows loads the column index and one vector of the packed row, broadcasts
 * inp[r][idx] for each of the 16 rows and does 16 FMAs. 16 chains cover the FMA latency on two
 * ports; 16 + 1 + 1 registers of 32. Ragged columns use mask registers (masked loads and stores
 * never touch the masked lanes). The GELU epilogue runs on the accumulators before the store
 * (gemm-tile-avx512.h). */
#include <immintrin.h>

#include "../gemm-sparse.h"
#include "gemm-tile-avx512.h"

#define MR DSA__SPARSE_MR_AVX512
#define NR DSA__SPARSE_NR

/* inp (mr, lda) at the kept columns idx (nk) x b (nk, NR) -> c (mr, ldc), nr <= NR columns,
 * then ep on the sums; mr a constant after inlining. Loads, epilogue and stores of the tile
 * (one zmm a row): gemm-tile-avx512.h. */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const float *a,
                                                       size_t lda, const float *b,
                                                       const uint32_t *idx, size_t nk, size_t nr,
                                                       const float *bias, bool first,
                                                       enum dsa_epilogue ep, const int mr) {
        __mmask16 m[2];
        __m512 acc[MR];

        tile_masks(nr, m, 1);
        tile_load(acc, c, ldc, m, bias, first, mr, 1);
#pragma GCC unroll 2
        for (size_t t = 0; t < nk; t++) {
                const __m512 w[2] = { _mm512_load_ps(b + t * NR) };
                tile_fma(acc, a, lda, idx[t], w, mr, 1);
        }
        tile_store(acc, c, ldc, m, ep, mr, 1);
}

/* inp (N, ldi) at the columns idx (nk) x kept rows b (nk, 16) [+ bias] -> out (N, ldo), nr <= 16
 * columns; see dsa__gemm_sparse_panel_f32_fn. Rows in tiles of 16, the last 1-15 rows in one
 * narrower tile, the next tile's rows of out prefetched when they are read back
 * (TILE_ROWS_AVX512). */
void dsa__gemm_sparse_panel_f32_avx512(float *out, size_t ldo, const float *inp, size_t ldi,
                                       const float *b, const uint32_t *idx, size_t nk, size_t N,
                                       size_t nr, const float *bias, bool first,
                                       enum dsa_epilogue ep) {
#define TILE(n, rows) tile(out + (n) * ldo, ldo, inp + (n) * ldi, ldi, b, idx, nk, nr, bias, first, ep, rows)
        TILE_ROWS_AVX512(N, TILE, out, ldo, !first, 1);
#undef TILE
}
