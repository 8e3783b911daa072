/* The AVX2 + FMA panel loop of the pre-packed fp32 GEMM (driver and layout: gemm-packed.c,
 * kernels-internal.h). A 6 x 16 tile of out lives in 12 ymm accumulators; each k step loads
 * two vectors of the packed panel and broadcasts one inp value per row straight from inp's
 * rows (no packing of the activation side: the broadcasts are L1 hits along each row), then
 * does 12 FMAs: 2 loads + 6 broadcasts per 12 FMAs fits two load ports under two FMA ports,
 * and 12 independent chains cover the FMA latency (4-5 cycles) on both ports. The GELU
 * epilogue runs on the accumulators of the last K block before the store; the tile's loads,
 * epilogue and stores are gemm-tile-avx2.h's, shared with the sparse and int8 loops.
 *
 * Half and bfloat16 panels run the same loop with each pair of weight vectors widened on load
 * (vcvtph2ps; for bfloat16 one load, vpslld 16 and vpand): exact, so the sums are the fp32
 * loop's on the widened weights. The conversions go to other ports than the FMAs. */
#include <immintrin.h>

#include "../kernels-internal.h"
#include "gemm-tile-avx2.h"

#define MR DSA__GEMM_MR_AVX2
#define NR DSA__GEMM_NR_AVX2

enum wt { WT_F32, WT_F16, WT_BF16 };

/* k row k of a panel of type wt as two vectors of fp32, columns 0-7 and 8-15. A bfloat16 row
 * is stored with dword i = (column i, column 8 + i) (kernels-internal.h), so one load and two
 * integer ops widen it: shift left 16, and mask the high halves. */
static inline __attribute__((always_inline)) void load_w(const void *b, size_t k, __m256 *w0,
                                                         __m256 *w1, const enum wt wt) {
        if (wt == WT_F32) {
                *w0 = _mm256_load_ps((const float *) b + k * NR);
                *w1 = _mm256_load_ps((const float *) b + k * NR + 8);
        } else if (wt == WT_F16) {
                const __m128i *h = (const __m128i *) ((const uint16_t *) b + k * NR);
                *w0 = _mm256_cvtph_ps(_mm_load_si128(h));
                *w1 = _mm256_cvtph_ps(_mm_load_si128(h + 1));
        } else {
                const __m256i v = _mm256_load_si256((const __m256i *) ((const uint16_t *) b + k * NR));
                *w0 = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
                *w1 = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int) 0xffff0000u)));
        }
}

/* inp (mr, lda) x b (kc, NR) -> c (mr, ldc), nr <= NR columns, then ep on the sums; mr and wt
 * constants after inlining. Loads, epilogue and stores of the tile: gemm-tile-avx2.h. */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const float *a,
                                                       size_t lda, const void *b, size_t kc,
                                                       size_t nr, const float *bias, bool first,
                                                       enum dsa_epilogue ep, const int mr,
                                                       const enum wt wt) {
        __m256i m0, m1;
        __m256 acc[MR][2];

        tile_masks(nr, &m0, &m1);
        tile_load(acc, c, ldc, nr, m0, m1, bias, first, mr);
#pragma GCC unroll 4
        for (size_t k = 0; k < kc; k++) {
                __m256 w0, w1;
                load_w(b, k, &w0, &w1, wt);
                tile_fma(acc, a, lda, k, w0, w1, mr);
        }
        tile_store(acc, c, ldc, nr, m0, m1, ep, mr);
}

/* inp (N, ldi) x panel slice b (kc, 16) [+ bias] -> out (N, ldo), nr <= 16 columns; see
 * dsa__gemm_panel_f32_fn. Rows in tiles of 6, the ragged end in narrower ones, the next tile's
 * rows of out prefetched when they are read back (TILE_ROWS_AVX2). */
static inline __attribute__((always_inline)) void panel(float *out, size_t ldo, const float *inp,
                                                        size_t ldi, const void *b, size_t N,
                                                        size_t kc, size_t nr, const float *bias,
                                                        bool first, enum dsa_epilogue ep,
                                                        const enum wt wt) {
#define TILE(n, rows) tile(out + (n) * ldo, ldo, inp + (n) * ldi, ldi, b, kc, nr, bias, first, ep, rows, wt)
        TILE_ROWS_AVX2(N, TILE, out, ldo, !first);
#undef TILE
}

void dsa__gemm_panel_f32_avx2(float *out, size_t ldo, const float *inp, size_t ldi, const float *b,
                              size_t N, size_t kc, size_t nr, const float *bias, bool first,
                              enum dsa_epilogue ep) {
        panel(out, ldo, inp, ldi, b, N, kc, nr, bias, first, ep, WT_F32);
}

/* b (kc, 16) IEEE half; see dsa__gemm_panel_u16_fn. */
void dsa__gemm_panel_f16_avx2(float *out, size_t ldo, const float *inp, size_t ldi,
                              const uint16_t *b, size_t N, size_t kc, size_t nr, const float *bias,
                              bool first, enum dsa_epilogue ep) {
        panel(out, ldo, inp, ldi, b, N, kc, nr, bias, first, ep, WT_F16);
}

/* b (kc, 16) bfloat16; see dsa__gemm_panel_u16_fn. */
void dsa__gemm_panel_bf16_avx2(float *out, size_t ldo, const float *inp, size_t ldi,
                               const uint16_t *b, size_t N, size_t kc, size_t nr, const float *bias,
                               bool first, enum dsa_epilogue ep) {
        panel(out, ldo, inp, ldi, b, N, kc, nr, bias, first, ep, WT_BF16);
}
