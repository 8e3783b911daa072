/* The AVX-512 panel loop of the pre-packed fp32 GEMM (driver and layout: gemm-packed.c,
 * kernels-internal.h). A 12 x 32 tile of out lives in 24 zmm accumulators; each k step loads
 * two vectors of the packed panel and broadcasts one inp value per row straight from inp's
 * rows, then does 24 FMAs: 2 loads + 12 broadcasts per 24 FMAs fits two load ports under two
 * FMA ports, and 24 chains cover the FMA latency on both. 24 + 2 + 1 registers of 32. Ragged
 * columns use mask registers (masked loads and stores never touch the masked lanes). The GELU
 * epilogue runs on the accumulators of the last K block before the store; the tile's loads,
 * epilogue and stores are gemm-tile-avx512.h's, shared with the sparse and int8 loops.
 *
 * Half and bfloat16 panels run the same loop with each weight vector widened on load
 * (vcvtph2ps; for bfloat16 one load, vpslld 16 and vpandd), exactly, so the sums are the
 * fp32 loop's. BF16_DOT
 * (AVX512-BF16, a function target attribute so the file's flags stay those of every AVX-512
 * CPU) rounds the tile's activations to bfloat16 pairs once per tile (vcvtne2ps2bf16, into 12
 * KiB of stack) and does one vdpbf16ps per vector of 16 outputs per k pair: half the
 * instructions of the FMA loop for the same tile. */
#include <assert.h>
#include <immintrin.h>

#include "../kernels-internal.h"
#include "gemm-tile-avx512.h"

#define MR DSA__GEMM_MR_AVX512
#define NR DSA__GEMM_NR_AVX512

enum wt { WT_F32, WT_F16, WT_BF16 };

/* k row k of a panel of type wt as two vectors of fp32, columns 0-15 and 16-31; a bfloat16
 * row holds dword i = (column i, column 16 + i), see gemm-avx2.c. */
static inline __attribute__((always_inline)) void load_w(const void *b, size_t k, __m512 *w0,
                                                         __m512 *w1, const enum wt wt) {
        if (wt == WT_F32) {
                *w0 = _mm512_load_ps((const float *) b + k * NR);
                *w1 = _mm512_load_ps((const float *) b + k * NR + 16);
        } else if (wt == WT_F16) {
                const __m256i *h = (const __m256i *) ((const uint16_t *) b + k * NR);
                *w0 = _mm512_cvtph_ps(_mm256_load_si256(h));
                *w1 = _mm512_cvtph_ps(_mm256_load_si256(h + 1));
        } else {
                const __m512i v = _mm512_load_si512((const uint16_t *) b + k * NR);
                *w0 = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
                *w1 = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int) 0xffff0000u)));
        }
}

/* inp (mr, lda) x b (kc, NR) -> c (mr, ldc), nr <= NR columns, then ep on the sums; mr and wt
 * constants after inlining. Loads, epilogue and stores of the tile: gemm-tile-avx512.h. */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const float *a,
                                                       size_t lda, const void *b, size_t kc,
                                                       size_t nr, const float *bias, bool first,
                                                       enum dsa_epilogue ep, const int mr,
                                                       const enum wt wt) {
        __mmask16 m[2];
        __m512 acc[MR * 2];

        tile_masks(nr, m, 2);
        tile_load(acc, c, ldc, m, bias, first, mr, 2);
#pragma GCC unroll 2
        for (size_t k = 0; k < kc; k++) {
                __m512 w[2];
                load_w(b, k, &w[0], &w[1], wt);
                tile_fma(acc, a, lda, k, w, mr, 2);
        }
        tile_store(acc, c, ldc, m, ep, mr, 2);
}

/* inp (N, ldi) x panel slice b (kc, 32) [+ bias] -> out (N, ldo), nr <= 32 columns; see
 * dsa__gemm_panel_f32_fn. Rows in tiles of 12, the last 1-11 rows in a narrower tile, the next
 * tile's rows of out prefetched when they are read back (TILE_ROWS_AVX512). */
static inline __attribute__((always_inline)) void panel(float *out, size_t ldo, const float *inp,
                                                        size_t ldi, const void *b, size_t N,
                                                        size_t kc, size_t nr, const float *bias,
                                                        bool first, enum dsa_epilogue ep,
                                                        const enum wt wt) {
#define TILE(n, rows) tile(out + (n) * ldo, ldo, inp + (n) * ldi, ldi, b, kc, nr, bias, first, ep, rows, wt)
        TILE_ROWS_AVX512(N, TILE, out, ldo, !first, 2);
#undef TILE
}

void dsa__gemm_panel_f32_avx512(float *out, size_t ldo, const float *inp, size_t ldi,
                                const float *b, size_t N, size_t kc, size_t nr, const float *bias,
                                bool first, enum dsa_epilogue ep) {
        panel(out, ldo, inp, ldi, b, N, kc, nr, bias, first, ep, WT_F32);
}

/* b (kc, 32) IEEE half; see dsa__gemm_panel_u16_fn. */
void dsa__gemm_panel_f16_avx512(float *out, size_t ldo, const float *inp, size_t ldi,
                                const uint16_t *b, size_t N, size_t kc, size_t nr,
                                const float *bias, bool first, enum dsa_epilogue ep) {
        panel(out, ldo, inp, ldi, b, N, kc, nr, bias, first, ep, WT_F16);
}

/* b (kc, 32) bfloat16; see dsa__gemm_panel_u16_fn. */
void dsa__gemm_panel_bf16_avx512(float *out, size_t ldo, const float *inp, size_t ldi,
                                 const uint16_t *b, size_t N, size_t kc, size_t nr,
                                 const float *bias, bool first, enum dsa_epilogue ep) {
        panel(out, ldo, inp, ldi, b, N, kc, nr, bias, first, ep, WT_BF16);
}

/* ---- BF16_DOT. */
#define BF16DOT __attribute__((target("avx512bf16")))
#define KP_MAX (DSA__GEMM_KC_AVX512 / 2) /* k pairs per block, at most */

/* a (mr, KP_MAX) bf16 pairs x b (kp, NR pairs) -> c (mr, ldc), nr <= NR columns, then ep. Each
 * vdpbf16ps adds, per output lane, the two products of a k pair (layout: kernels-internal.h). */
static inline __attribute__((always_inline)) BF16DOT void tile_dot(float *c, size_t ldc,
                                                                   const uint32_t *a,
                                                                   const uint16_t *b, size_t kp,
                                                                   size_t nr, const float *bias,
                                                                   bool first, enum dsa_epilogue ep,
                                                                   const int mr) {
        __mmask16 m[2];
        __m512 acc[MR * 2];

        tile_masks(nr, m, 2);
        tile_load(acc, c, ldc, m, bias, first, mr, 2);
#pragma GCC unroll 2
        for (size_t k = 0; k < kp; k++) {
                const __m512bh w0 = (__m512bh) _mm512_load_si512(b + k * 2 * NR);
                const __m512bh w1 = (__m512bh) _mm512_load_si512(b + k * 2 * NR + 32);
#pragma GCC unroll 12
                for (int r = 0; r < mr; r++) {
                        const __m512bh x = (__m512bh) _mm512_set1_epi32((int) a[r * KP_MAX + k]);
                        acc[2 * r] = _mm512_dpbf16_ps(acc[2 * r], x, w0);
                        acc[2 * r + 1] = _mm512_dpbf16_ps(acc[2 * r + 1], x, w1);
                }
        }
        tile_store(acc, c, ldc, m, ep, mr, 2);
}

/* inp (rows, ldi), kc values a row -> a (rows, KP_MAX) bf16 pairs (x[2i] low, x[2i+1] high),
 * rounded as dsa__f32_to_bf16_dot_one; lanes past kc read as 0 (masked loads, never touching
 * inp past its kc columns). */
static inline BF16DOT void round_rows(uint32_t *a, const float *inp, size_t ldi, size_t rows,
                                      size_t kc) {
        for (size_t r = 0; r < rows; r++)
                for (size_t k0 = 0; k0 < kc; k0 += 32) {
                        const size_t left = kc - k0;
                        const __m512 lo = _mm512_maskz_loadu_ps(lanes(left), inp + r * ldi + k0);
                        const __m512 hi = _mm512_maskz_loadu_ps(lanes(left > 16 ? left - 16 : 0),
                                                                inp + r * ldi + k0 + 16);
                        _mm512_store_si512(a + r * KP_MAX + k0 / 2, (__m512i) _mm512_cvtne2ps_pbh(hi, lo));
                }
}

/* inp (N, ldi) x k-pair panel slice b (ceil(kc/2), 32 pairs) [+ bias] -> out (N, ldo), nr <= 32
 * columns; see dsa__gemm_panel_u16_fn. Tiles of 12 rows as the fp32 loop, each tile's
 * activations rounded once into a. */
BF16DOT void dsa__gemm_panel_bf16dot_avx512bf16(float *out, size_t ldo, const float *inp,
                                                size_t ldi, const uint16_t *b, size_t N, size_t kc,
                                                size_t nr, const float *bias, bool first,
                                                enum dsa_epilogue ep) {
        uint32_t a[MR * KP_MAX] __attribute__((aligned(64)));
        const size_t kp = (kc + 1) / 2;

        assert(kc <= DSA__GEMM_KC_AVX512);
        for (size_t n = 0; n < N; n += MR) {
                const size_t rows = N - n < MR ? N - n : MR;

                round_rows(a, inp + n * ldi, ldi, rows, kc);
#define TILE(r) tile_dot(out + n * ldo, ldo, a, b, kp, nr, bias, first, ep, r)
                switch (rows) {
                case 12: TILE(12); break;
                case 11: TILE(11); break;
                case 10: TILE(10); break;
                case 9: TILE(9); break;
                case 8: TILE(8); break;
                case 7: TILE(7); break;
                case 6: TILE(6); break;
                case 5: TILE(5); break;
                case 4: TILE(4); break;
                case 3: TILE(3); break;
                case 2: TILE(2); break;
                default: TILE(1); break;
                }
#undef TILE
        }
}
