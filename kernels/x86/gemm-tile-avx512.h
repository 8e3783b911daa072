/* The fp32 register tile of the AVX-512 GEMM microkernels, one copy for the dense
 * (x86/gemm-avx512.c: fp32, half, bfloat16 and the vdpbf16ps loop) and block-sparse
 * (x86/gemm-sparse-avx512.c) panel loops, whose masks, bias and row loop the int8 one
 * (x86/gemm-q8-avx512.c) shares too:
 * a tile is mr rows of nv zmm each (nv = 2: 32 columns, the dense and int8 tiles; nv = 1: 16,
 * the sparse one), row r at acc[r * nv], of which the first nr <= 16 * nv columns are live.
 * Ragged columns use mask registers: masked loads give 0 past nr (whose GELU is 0) and masked
 * stores never touch those lanes (they may belong to another thread's block or be past the end
 * of out). mr, nv and ep are constants after inlining, so acc[] stays mr * nv registers and no
 * branch is left inside the row loops. Include only from files compiled with -mavx512f. */
#pragma once

#include <immintrin.h>
#include <stdbool.h>
#include <stddef.h>

#include "../kernels.h"
#include "vecmath-avx512.h"

#define TILE_AI static inline __attribute__((always_inline))

/* The masks of columns [0, nr) of a row of nv vectors: columns 0-15 in m[0], 16-31 in m[1].
 * One vector has nr <= 16 and needs no clamp (one branch less in the tile keeps the 16-row
 * sparse loop's row pointers in registers). */
TILE_AI void tile_masks(size_t nr, __mmask16 m[2], const int nv) {
        m[0] = nv == 1 ? tail_mask(nr) : lanes(nr);
        m[1] = lanes(nr > 16 ? nr - 16 : 0);
}

/* bias[0, nr) as the nv vectors of a row; 0 past nr, or everywhere when bias is NULL. */
TILE_AI void tile_bias(const float *bias, const __mmask16 m[2], __m512 b[2], const int nv) {
        b[0] = _mm512_setzero_ps(), b[1] = _mm512_setzero_ps();
        if (bias) {
                b[0] = _mm512_maskz_loadu_ps(m[0], bias);
                if (nv == 2)
                        b[1] = _mm512_maskz_loadu_ps(m[1], bias + 16);
        }
}

/* The accumulators of a tile of c (mr, ldc): the bias in every row (first K block) or the
 * partial sums already in c. */
TILE_AI void tile_load(__m512 *acc, const float *c, size_t ldc, const __mmask16 m[2],
                       const float *bias, bool first, const int mr, const int nv) {
        if (first) {
                __m512 b[2];
                tile_bias(bias, m, b, nv);
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
#pragma GCC unroll 2
                        for (int v = 0; v < nv; v++)
                                acc[r * nv + v] = b[v];
        } else {
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
#pragma GCC unroll 2
                        for (int v = 0; v < nv; v++)
                                acc[r * nv + v] = _mm512_maskz_loadu_ps(m[v], c + r * ldc + 16 * v);
        }
}

/* One k step of an fp32 tile: acc[r] += a[r * lda + k] * w for its mr rows, one broadcast and
 * nv FMAs per row. */
TILE_AI void tile_fma(__m512 *acc, const float *a, size_t lda, size_t k, const __m512 w[2],
                      const int mr, const int nv) {
#pragma GCC unroll 16
        for (int r = 0; r < mr; r++) {
                const __m512 x = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 2
                for (int v = 0; v < nv; v++)
                        acc[r * nv + v] = _mm512_fmadd_ps(x, w[v], acc[r * nv + v]);
        }
}

/* ep on the whole tile, then its store to c (mr, ldc), columns [0, nr). The epilogue runs row
 * after row before the first store, each loop with its branch outside. */
TILE_AI void tile_store(__m512 *acc, float *c, size_t ldc, const __mmask16 m[2],
                        enum dsa_epilogue ep, const int mr, const int nv) {
        if (ep == DSA_EPILOGUE_GELU_ERF) {
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
#pragma GCC unroll 2
                        for (int v = 0; v < nv; v++)
                                acc[r * nv + v] = gelu_erf_ps(acc[r * nv + v]);
        } else if (ep == DSA_EPILOGUE_GELU_TANH) {
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
#pragma GCC unroll 2
                        for (int v = 0; v < nv; v++)
                                acc[r * nv + v] = gelu_tanh_ps(acc[r * nv + v]);
        }

#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
#pragma GCC unroll 2
                for (int v = 0; v < nv; v++)
                        _mm512_mask_storeu_ps(c + r * ldc + 16 * v, m[v], acc[r * nv + v]);
}

/* One row of an int8 tile's finished int32 sums, columns 0-15 in a0 and 16-31 in a1 -> c:
 * fp32, times sx * sw, + bias, the GELU of ep, masked stores (the VNNI and AMX kernels'
 * epilogue, x86/gemm-q8-*.c). Row by row, right after the conversion, so GCC keeps the
 * registers the narrower tiles' k loops need. */
TILE_AI void tile_q8_row(float *c, __m512i a0, __m512i a1, float sx, const __m512 sw[2], const __m512 bv[2],
                         const __mmask16 m[2], enum dsa_epilogue ep) {
        const __m512 s = _mm512_set1_ps(sx);
        __m512 y0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_mul_ps(s, sw[0]), bv[0]);
        __m512 y1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_mul_ps(s, sw[1]), bv[1]);

        if (ep == DSA_EPILOGUE_GELU_ERF) {
                y0 = gelu_erf_ps(y0);
                y1 = gelu_erf_ps(y1);
        } else if (ep == DSA_EPILOGUE_GELU_TANH) {
                y0 = gelu_tanh_ps(y0);
                y1 = gelu_tanh_ps(y1);
        }
        _mm512_mask_storeu_ps(c, m[0], y0);
        _mm512_mask_storeu_ps(c + 16, m[1], y1);
}

/* Before the full tile at row n of a panel of N rows: the next tile's rows of out (mr rows of
 * nv cache lines), when this K block reads them back (prefetch). Across K blocks they were
 * last written a whole pass over out ago and are in L2 or L3, and their rows are too far apart
 * for the hardware prefetcher. */
TILE_AI void tile_prefetch_next(const float *out, size_t ldo, size_t n, size_t N, bool prefetch,
                                const int mr, const int nv) {
        if (prefetch && n + 2 * mr <= N)
                for (int r = 0; r < mr; r++)
#pragma GCC unroll 2
                        for (int v = 0; v < nv; v++)
                                _mm_prefetch((const char *) (out + (n + mr + r) * ldo + 16 * v), _MM_HINT_T0);
}

/* Rows [0, N) of a panel in tiles of MR rows (12 or 16), the last 1 to MR - 1 rows in one
 * narrower tile: TILE(n, rows) runs the tile at row n with rows a constant, so each height is
 * its own unrolled code (heights of MR or more are never asked for, nor compiled). Before each
 * full tile, the next one's rows of out (N, ldo), nv lines each, are prefetched when prefetch
 * is true. */
#define TILE_ROWS_AVX512(N, TILE, out, ldo, prefetch, nv)                                          \
        do {                                                                                       \
                _Static_assert(MR >= 12 && MR <= 16, "the tile heights below are 1 to 15");       \
                size_t n_ = 0;                                                                     \
                                                                                                   \
                for (; n_ + MR <= (N); n_ += MR) {                                                 \
                        tile_prefetch_next(out, ldo, n_, N, prefetch, MR, nv);                     \
                        TILE(n_, MR);                                                              \
                }                                                                                  \
                switch ((N) - n_) {                                                                \
                case 15: if (15 < MR) TILE(n_, 15); break;                                         \
                case 14: if (14 < MR) TILE(n_, 14); break;                                         \
                case 13: if (13 < MR) TILE(n_, 13); break;                                         \
                case 12: if (12 < MR) TILE(n_, 12); break;                                         \
                case 11: TILE(n_, 11); break;                                                      \
                case 10: TILE(n_, 10); break;                                                      \
                case 9: TILE(n_, 9); break;                                                        \
                case 8: TILE(n_, 8); break;                                                        \
                case 7: TILE(n_, 7); break;                                                        \
                case 6: TILE(n_, 6); break;                                                        \
                case 5: TILE(n_, 5); break;                                                        \
                case 4: TILE(n_, 4); break;                                                        \
                case 3: TILE(n_, 3); break;                                                        \
                case 2: TILE(n_, 2); break;                                                        \
                case 1: TILE(n_, 1); break;                                                        \
                default: break;                                                                    \
                }                                                                                  \
        } while (0)
