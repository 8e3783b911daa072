/* The AVX-512 VNNI panel loop and the AVX-512 quantizer of the INT8 GEMM (driver and layout:
 * gemm-q8.c, gemm-q8.h).
 *
 * vpdpbusd multiplies u8 by s8 and adds groups of 4 products to int32 lanes, without
 * saturation (the 's' form saturates; this one wraps). Its broadcastable operand is the
 * signed one, so the activations stay s8 and are broadcast 4 bytes at a time straight from
 * their rows, and the weights are made unsigned: w ^ 0x80 = w + 128 as u8, one xor per vector
 * shared by the MR rows. Then sum (w + 128) x = dot + 128 * sum x, and the driver's row sums
 * (xsum, over every byte of the row, padding included: padding meets zero weights, which
 * become 128) take the excess back out. Exact: the int32 arithmetic wraps modulo 2^32 and the
 * true dot fits an int32 (gemm-q8.h), so intermediate wrap-around cancels.
 * A 12 x 32 tile of out (two panels) lives in 24 zmm accumulators; 24 + 2 weights + 1 xor
 * constant of 32 registers. The epilogue (int32 -> fp32, times sx * sw, + bias, GELU) runs in
 * registers before one masked store per row: gemm-tile-avx512.h's tile_q8_row, with its masks
 * and bias. */
#include <immintrin.h>
#include <string.h>

#include "../gemm-q8.h"
#include "gemm-tile-avx512.h"

#define MR DSA__Q8_MR_AVX512
#define NR DSA__Q8_NR

/* q (mr, lda) rows x panels b, b + K4*64 -> c (mr, ldc), nr <= 32 columns; mr a constant
 * after inlining. With nr <= 16 the second panel may not exist: the first is read twice
 * instead and the second half of the tile is never stored. */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const int8_t *a,
                                                       size_t lda, const float *sx,
                                                       const int32_t *xsum, const int8_t *b,
                                                       const float *sw, const float *bias,
                                                       size_t K4, size_t nr,
                                                       enum dsa_epilogue ep, const int mr) {
        const __m512i flip = _mm512_set1_epi8((char) 0x80);
        const int8_t *b1 = nr > NR ? b + K4 * 64 : b;
        __m512i acc[MR][2];

#pragma GCC unroll 12
        for (int r = 0; r < mr; r++)
                acc[r][0] = acc[r][1] = _mm512_setzero_si512();

#pragma GCC unroll 2
        for (size_t g = 0; g < K4; g++) {
                const __m512i w0 = _mm512_xor_si512(_mm512_load_si512(b + g * 64), flip);
                const __m512i w1 = _mm512_xor_si512(_mm512_load_si512(b1 + g * 64), flip);
#pragma GCC unroll 12
                for (int r = 0; r < mr; r++) {
                        const __m512i x = _mm512_set1_epi32(dsa__q8_load4(a + r * lda + g * 4));
                        acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, x);
                        acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w1, x);
                }
        }

        __mmask16 m[2];
        __m512 bv[2], swv[2];
        tile_masks(nr, m, 2);
        swv[0] = _mm512_maskz_loadu_ps(m[0], sw), swv[1] = _mm512_maskz_loadu_ps(m[1], sw + NR);
        tile_bias(bias, m, bv, 2);

#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
                const __m512i corr = _mm512_slli_epi32(_mm512_set1_epi32(xsum[r]), 7);
                tile_q8_row(c + r * ldc, _mm512_sub_epi32(acc[r][0], corr), _mm512_sub_epi32(acc[r][1], corr), sx[r],
                            swv, bv, m, ep);
        }
}

/* q (N, ldq) x panels b (2 x K4 x 16 x 4) -> out (N, ldo), nr <= 32 columns; see
 * dsa__gemm_panel_q8_fn. Rows in tiles of 12, the last 1-11 in one narrower tile
 * (TILE_ROWS_AVX512; no prefetch: out is written once). */
void dsa__gemm_panel_q8_avx512vnni(float *out, size_t ldo, const int8_t *q, size_t ldq,
                                   const float *sx, const int32_t *xsum, const int8_t *b,
                                   const float *sw, const float *bias, size_t N, size_t K4,
                                   size_t nr, enum dsa_epilogue ep) {
#define TILE(n, rows) tile(out + (n) * ldo, ldo, q + (n) * ldq, ldq, sx + (n), xsum + (n), b, sw, bias, K4, nr, ep, rows)
        TILE_ROWS_AVX512(N, TILE, out, ldo, false, 2);
#undef TILE
}

/* q (N, ldq) -> xsum (N): each row's sum over its S bytes (S a multiple of 4), 64 bytes per
 * vpdpbusd against ones (u8 1 x s8 byte, 4 bytes to a lane), for the driver's xsum. */
void dsa__q8_row_sums_avx512vnni(int32_t *xsum, const int8_t *q, size_t ldq, size_t N, size_t S) {
        const __m512i ones = _mm512_set1_epi8(1);

        for (size_t n = 0; n < N; n++) {
                const int8_t *row = q + n * ldq;
                __m512i acc = _mm512_setzero_si512();
                size_t k = 0;

                for (; k + 64 <= S; k += 64)
                        acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(row + k));
                if (k < S)
                        acc = _mm512_dpbusd_epi32(acc, ones, _mm512_maskz_loadu_epi8(~0ULL >> (64 - (S - k)), row + k));
                xsum[n] = _mm512_reduce_add_epi32(acc);
        }
}

/* x (N, ldx) -> q (N, stride), scales (N); see gemm-q8.h and the AVX2 quantizer. 16 values
 * per step, the tail through masks (masked loads give 0, which leaves the max alone); the clamp
 * comes before the conversion, and after it vpmovdb's truncation is exact. */
void dsa__quantize_rows_q8_avx512(int8_t *q, float *scales, const float *x, size_t ldx, size_t N,
                                  size_t C, float fixed_scale) {
        const size_t S = dsa_q8_row_stride(C);
        const __m512 hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);

        for (size_t n = 0; n < N; n++) {
                const float *row = x + n * ldx;
                int8_t *o = q + n * S;
                float max = 0, inv;
                size_t c;

                if (!(fixed_scale > 0)) {
                        __m512 m0 = _mm512_setzero_ps(), m1 = _mm512_setzero_ps();
                        for (c = 0; c + 32 <= C; c += 32) {
                                m0 = _mm512_max_ps(m0, _mm512_abs_ps(_mm512_loadu_ps(row + c)));
                                m1 = _mm512_max_ps(m1, _mm512_abs_ps(_mm512_loadu_ps(row + c + 16)));
                        }
                        for (; c < C; c += 16)
                                m0 = _mm512_max_ps(m0, _mm512_abs_ps(_mm512_maskz_loadu_ps(lanes(C - c), row + c)));
                        max = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
                }
                dsa__q8_scale(max, fixed_scale, &scales[n], &inv);

                const __m512 vinv = _mm512_set1_ps(inv);
                for (c = 0; c < C; c += 16) {
                        const __mmask16 m = lanes(C - c);
                        __m512 y = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + c), vinv);
                        __m512i i = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(y, lo), hi));
                        _mm512_mask_cvtepi32_storeu_epi8(o + c, m, i);
                }
                memset(o + C, 0, S - C);
        }
}
