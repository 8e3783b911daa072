/* The AVX2 panel loop and quantizer of the INT8 GEMM (driver and layout: gemm-q8.c, gemm-q8.h).
 *
 * AVX2 has no exact int8 dot product: vpmaddubsw (u8 x s8, pairs summed to int16) saturates
 * for u8 = s8 + 128 (2 * 255 * 127 > 32767). Sign trick instead: u = |w| (<= 127) as the
 * unsigned operand, x' = sign(x, w) (x negated where w < 0, zeroed where w == 0) as the signed
 * one, so u * x' = w * x and a pair is at most 2 * 127 * 127 = 32258 < 32767: never saturates
 * (x = -128 would, and never occurs: gemm-q8.h). vpmaddwd with ones then widens the pairs to
 * exact int32 per output channel, added to the accumulators. |w| is taken once per k-group and
 * shared by the MR rows; per row and k-group of 16 channels: one 4-byte broadcast, 2 vpsignb,
 * 2 vpmaddubsw, 2 vpmaddwd, 2 vpaddd for 64 multiply-adds.
 * Measured on the Zen 5 this was written on, in-L1 panel loop: this sign trick runs at ~143
 * GOPS per core, the alternative (sign-extend both sides to int16, vpmaddwd 16 MACs at a time:
 * 4 vpmaddwd + 4 vpaddd per 64 MACs, 4 int32 accumulators per row of 16 channels, so only 3-4
 * rows fit the 16 registers, plus the widening of both operands) at ~110. MR = 6 rows beat 4
 * and 5 by 2-3%, a 2x unrolled k loop gained nothing.
 * A 6 x 16 tile of out lives in 12 ymm int32 accumulators; the epilogue (int32 -> fp32, times
 * sx * sw, + bias, then the GELU and masked store of gemm-tile-avx2.h) runs in registers
 * before the one store. */
#include <immintrin.h>
#include <string.h>

#include "../gemm-q8.h"
#include "gemm-tile-avx2.h"

#define MR DSA__Q8_MR_AVX2
#define NR DSA__Q8_NR

/* q (mr, lda) rows x panel b (K4 groups of 16 x 4) -> c (mr, ldc), nr <= 16 columns; mr a
 * constant after inlining. Lanes past nr compute on zero weights and scales and are not
 * stored (masked stores never touch them: they may be another caller's columns). */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const int8_t *a,
                                                       size_t lda, const float *sx,
                                                       const int8_t *b, const float *sw,
                                                       const float *bias, size_t K4, size_t nr,
                                                       enum dsa_epilogue ep, const int mr) {
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i acc[MR][2];

#pragma GCC unroll 6
        for (int r = 0; r < mr; r++)
                acc[r][0] = acc[r][1] = _mm256_setzero_si256();

        for (size_t g = 0; g < K4; g++) {
                const __m256i w0 = _mm256_load_si256((const __m256i *) (b + g * 64));
                const __m256i w1 = _mm256_load_si256((const __m256i *) (b + g * 64 + 32));
                const __m256i u0 = _mm256_abs_epi8(w0), u1 = _mm256_abs_epi8(w1);
#pragma GCC unroll 6
                for (int r = 0; r < mr; r++) {
                        const __m256i x = _mm256_set1_epi32(dsa__q8_load4(a + r * lda + g * 4));
                        __m256i p0 = _mm256_maddubs_epi16(u0, _mm256_sign_epi8(x, w0));
                        __m256i p1 = _mm256_maddubs_epi16(u1, _mm256_sign_epi8(x, w1));
                        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(p0, ones));
                        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(p1, ones));
                }
        }

        __m256i m0, m1;
        __m256 b0, b1;
        tile_masks(nr, &m0, &m1);
        const __m256 sw0 = _mm256_load_ps(sw), sw1 = _mm256_load_ps(sw + 8);
        tile_bias(bias, nr, m0, m1, &b0, &b1);

#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
                const __m256 s = _mm256_set1_ps(sx[r]);
                __m256 y0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][0]), _mm256_mul_ps(s, sw0), b0);
                __m256 y1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][1]), _mm256_mul_ps(s, sw1), b1);
                tile_epilogue_row(&y0, &y1, ep);
                tile_store_row(c + r * ldc, nr, m0, m1, y0, y1);
        }
}

/* q (N, ldq) x panel b (K4, 16, 4) -> out (N, ldo), nr <= 16 columns; see
 * dsa__gemm_panel_q8_fn. Rows in tiles of 6, the ragged end in narrower ones (TILE_ROWS_AVX2;
 * no prefetch: out is written once). */
void dsa__gemm_panel_q8_avx2(float *out, size_t ldo, const int8_t *q, size_t ldq, const float *sx,
                             const int32_t *xsum, const int8_t *b, const float *sw,
                             const float *bias, size_t N, size_t K4, size_t nr,
                             enum dsa_epilogue ep) {
#define TILE(n, rows) tile(out + (n) * ldo, ldo, q + (n) * ldq, ldq, sx + (n), b, sw, bias, K4, nr, ep, rows)
        TILE_ROWS_AVX2(N, TILE, out, ldo, false);
#undef TILE
}

/* x (N, ldx) -> q (N, stride), scales (N); see gemm-q8.h. 32 values per step: four vectors of
 * int32 packed to bytes (vpackssdw, vpacksswb interleave the 128-bit lanes; one vpermd puts
 * them back in order). The clamp comes before the conversion, so vcvtps2dq never sees a value
 * out of int32 range; it rounds to nearest even, as dsa__q8_one does for the tail. */
void dsa__quantize_rows_q8_avx2(int8_t *q, float *scales, const float *x, size_t ldx, size_t N,
                                size_t C, float fixed_scale) {
        const size_t S = dsa_q8_row_stride(C);
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);

        for (size_t n = 0; n < N; n++) {
                const float *row = x + n * ldx;
                int8_t *o = q + n * S;
                float max = 0, inv;
                size_t c = 0;

                if (!(fixed_scale > 0)) {
                        __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
                        for (; c + 16 <= C; c += 16) {
                                m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(row + c), absmask));
                                m1 = _mm256_max_ps(m1, _mm256_and_ps(_mm256_loadu_ps(row + c + 8), absmask));
                        }
                        for (; c + 8 <= C; c += 8)
                                m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(row + c), absmask));
                        if (c < C) /* masked lanes load 0: no effect on the max */
                                m1 = _mm256_max_ps(m1, _mm256_and_ps(_mm256_maskload_ps(row + c, tail_mask(C - c)),
                                                                     absmask));
                        max = hmax(_mm256_max_ps(m0, m1));
                }
                dsa__q8_scale(max, fixed_scale, &scales[n], &inv);

                const __m256 vinv = _mm256_set1_ps(inv);
                for (c = 0; c + 32 <= C; c += 32) {
                        __m256i i[4];
                        for (int j = 0; j < 4; j++) {
                                __m256 y = _mm256_mul_ps(_mm256_loadu_ps(row + c + 8 * j), vinv);
                                i[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y, lo), hi));
                        }
                        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]),
                                                       _mm256_packs_epi32(i[2], i[3]));
                        _mm256_storeu_si256((__m256i *) (o + c), _mm256_permutevar8x32_epi32(p, order));
                }
                for (; c < C; c++)
                        o[c] = dsa__q8_one(row[c], inv);
                memset(o + C, 0, S - C);
        }
}
