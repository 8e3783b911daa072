/* The fp32 register tile of the AVX2 GEMM microkernels, one copy for the dense (x86/gemm-avx2.c),
 * block-sparse (x86/gemm-sparse-avx2.c) and int8 (x86/gemm-q8-avx2.c, its fp32 epilogue) panel
 * loops: a tile is mr rows of one 16-column panel, two ymm per row (acc[r][0] columns 0-7,
 * acc[r][1] columns 8-15), of which the first nr <= 16 columns are live. Full-width tiles use
 * plain loads and stores; ragged ones (nr < 16) masked ones, which never touch the columns past
 * nr (they may belong to another thread's block or be past the end of out) and load 0 there,
 * whose GELU is 0 and is not stored anyway. mr and ep are constants after inlining, so acc[][]
 * stays 2*mr registers and no branch is left inside the row loops. Include only from files
 * compiled with -mavx2 -mfma. */
#pragma once

#include <immintrin.h>
#include <stdbool.h>
#include <stddef.h>

#include "../kernels.h"
#include "vecmath-avx2.h"

#define TILE_AI static inline __attribute__((always_inline))

/* The masks of columns [0, nr) of a 16-wide row: columns 0-7 in *m0, 8-15 in *m1. */
TILE_AI void tile_masks(size_t nr, __m256i *m0, __m256i *m1) {
        *m0 = tail_mask(nr < 8 ? nr : 8);
        *m1 = tail_mask(nr > 8 ? nr - 8 : 0);
}

/* bias[0, nr) as the two vectors of a row; 0 past nr, or everywhere when bias is NULL. */
TILE_AI void tile_bias(const float *bias, size_t nr, __m256i m0, __m256i m1, __m256 *b0, __m256 *b1) {
        *b0 = _mm256_setzero_ps(), *b1 = _mm256_setzero_ps();
        if (bias && nr == 16) {
                *b0 = _mm256_loadu_ps(bias);
                *b1 = _mm256_loadu_ps(bias + 8);
        } else if (bias) {
                *b0 = _mm256_maskload_ps(bias, m0);
                *b1 = _mm256_maskload_ps(bias + 8, m1);
        }
}

/* The accumulators of a tile of c (mr, ldc): the bias in every row (first K block) or the
 * partial sums already in c. */
TILE_AI void tile_load(__m256 acc[][2], const float *c, size_t ldc, size_t nr, __m256i m0,
                       __m256i m1, const float *bias, bool first, const int mr) {
        if (first) {
                __m256 b0, b1;
                tile_bias(bias, nr, m0, m1, &b0, &b1);
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++)
                        acc[r][0] = b0, acc[r][1] = b1;
        } else if (nr == 16) {
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
}

/* One k step of an fp32 tile: acc[r] += a[r * lda + k] * (w0, w1) for its mr rows, one
 * broadcast (straight from a's row: an L1 hit along it) and two FMAs per row. */
TILE_AI void tile_fma(__m256 acc[][2], const float *a, size_t lda, size_t k, __m256 w0, __m256 w1,
                      const int mr) {
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
                const __m256 x = _mm256_broadcast_ss(a + r * lda + k);
                acc[r][0] = _mm256_fmadd_ps(x, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x, w1, acc[r][1]);
        }
}

/* ep on one row of the tile (the GELUs of vecmath-avx2.h, as dsa_gelu_*_f32_avx2). */
TILE_AI void tile_epilogue_row(__m256 *y0, __m256 *y1, enum dsa_epilogue ep) {
        if (ep == DSA_EPILOGUE_GELU_ERF) {
                *y0 = gelu_erf_ps(*y0);
                *y1 = gelu_erf_ps(*y1);
        } else if (ep == DSA_EPILOGUE_GELU_TANH) {
                *y0 = gelu_tanh_ps(*y0);
                *y1 = gelu_tanh_ps(*y1);
        }
}

/* One row of the tile to c, columns [0, nr). */
TILE_AI void tile_store_row(float *c, size_t nr, __m256i m0, __m256i m1, __m256 y0, __m256 y1) {
        if (nr == 16) {
                _mm256_storeu_ps(c, y0);
                _mm256_storeu_ps(c + 8, y1);
        } else {
                _mm256_maskstore_ps(c, m0, y0);
                _mm256_maskstore_ps(c + 8, m1, y1);
        }
}

/* ep on the whole tile, then its store to c (mr, ldc), columns [0, nr). The epilogue runs row
 * after row before the first store, each loop with its branch outside. */
TILE_AI void tile_store(__m256 acc[][2], float *c, size_t ldc, size_t nr, __m256i m0, __m256i m1,
                        enum dsa_epilogue ep, const int mr) {
        if (ep == DSA_EPILOGUE_GELU_ERF) {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++)
                        tile_epilogue_row(&acc[r][0], &acc[r][1], DSA_EPILOGUE_GELU_ERF);
        } else if (ep == DSA_EPILOGUE_GELU_TANH) {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++)
                        tile_epilogue_row(&acc[r][0], &acc[r][1], DSA_EPILOGUE_GELU_TANH);
        }

        if (nr == 16) {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++)
                        tile_store_row(c + r * ldc, 16, m0, m1, acc[r][0], acc[r][1]);
        } else {
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++)
                        tile_store_row(c + r * ldc, nr, m0, m1, acc[r][0], acc[r][1]);
        }
}

/* Before the full tile at row n of a panel of N rows: the next tile's rows of out, when this
 * K block reads them back (prefetch). Across K blocks they were last written a whole pass over
 * out ago and are in L2 or L3, and their rows are too far apart for the hardware prefetcher. */
TILE_AI void tile_prefetch_next(const float *out, size_t ldo, size_t n, size_t N, bool prefetch) {
        if (prefetch && n + 12 <= N)
                for (int r = 0; r < 6; r++)
                        _mm_prefetch((const char *) (out + (n + 6 + r) * ldo), _MM_HINT_T0);
}

/* Rows [0, N) of a panel in tiles of 6 rows (the MR of every AVX2 loop), the ragged end in
 * narrower ones: TILE(n, rows) runs the tile at row n with rows a constant, so each height is
 * its own unrolled code. One full tile stops early when 1-3 rows would be left: 6 + r rows as
 * two tiles of 3-5 rows keep 6-10 FMA chains busy and share each k step's loads among more
 * rows, where a lone 1-row tile would have 2 chains. Before each full tile, the next one's rows
 * of out (N, ldo) are prefetched when prefetch is true. */
#define TILE_ROWS_AVX2(N, TILE, out, ldo, prefetch)                                                            \
        do {                                                                                       \
                _Static_assert(MR == 6, "the tile heights below are 1 to 6");                      \
                const size_t full_ = (N) % 6 != 0 && (N) % 6 < 4 && (N) >= 6 ? (N) - 6 - (N) % 6  \
                                                                           : (N) - (N) % 6;        \
                size_t n_ = 0, rest_;                                                              \
                                                                                                   \
                for (; n_ < full_; n_ += 6) {                                                      \
                        tile_prefetch_next(out, ldo, n_, N, prefetch);                             \
                        TILE(n_, 6);                                                               \
                }                                                                                  \
                while ((rest_ = (N) - n_) > 0) {                                                   \
                        const size_t rows_ = rest_ > 6 ? rest_ - rest_ / 2 : rest_;                \
                        switch (rows_) {                                                           \
                        case 6: TILE(n_, 6); break;                                                \
                        case 5: TILE(n_, 5); break;                                                \
                        case 4: TILE(n_, 4); break;                                                \
                        case 3: TILE(n_, 3); break;                                                \
                        case 2: TILE(n_, 2); break;                                                \
                        default: TILE(n_, 1); break;                                               \
                        }                                                                          \
                        n_ += rows_;                                                               \
                }                                                                                  \
        } while (0)
