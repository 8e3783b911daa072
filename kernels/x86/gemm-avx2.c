/* The AVX2 + FMA panel loop of the pre-packed fp32 GEMM (driver and layout: gemm-packed.c,
 * kernels-internal.h). A 6 x 16 tile of out lives in 12 ymm accumulators; each k step loads
 * two vectors of the packed panel and broadcasts one inp value per row straight from inp's
 * rows (no packing of the activation side: the broadcasts are L1 hits along each row), then
 * does 12 FMAs: 2 loads + 6 broadcasts per 12 FMAs fits two load ports under two FMA ports,
 * and 12 independent chains cover the FMA latency (4-5 cycles) on both ports. The GELU
 * epilogue runs on the accumulators of the last K block before the store (vecmath-avx2.h's
 * GELUs, the same code as dsa_gelu_*_f32_avx2).
 *
 * Half and bfloat16 panels run the same loop with each pair of weight vectors widened on load
 * (vcvtph2ps; for bfloat16 one load, vpslld 16 and vpand): exact, so the sums are the fp32
 * loop's on the widened weights. The conversions go to other ports than the FMAs. */
#include <immintrin.h>

#include "../kernels-internal.h"
#include "vecmath-avx2.h"

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

/* inp (mr, lda) x b (kc, NR) -> c (mr, ldc), nr <= NR columns, then ep on the sums; mr a
 * constant after inlining, so acc[][] is 2*mr registers. Full-width tiles use plain loads and
 * stores; the last panel's (nr < NR) use masked ones, which never touch the columns past nr
 * (they may belong to another thread's block or be past the end of out). Lanes past nr hold
 * 0 (masked loads), whose GELU is 0 and is not stored anyway. */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const float *a,
                                                       size_t lda, const void *b, size_t kc,
                                                       size_t nr, const float *bias, bool first,
                                                       enum dsa_epilogue ep, const int mr,
                                                       const enum wt wt) {
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
        for (size_t k = 0; k < kc; k++) {
                __m256 w0, w1;
                load_w(b, k, &w0, &w1, wt);
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

/* inp (N, ldi) x panel slice b (kc, 16) [+ bias] -> out (N, ldo), nr <= 16 columns; see
 * dsa__gemm_panel_f32_fn. Rows in tiles of 6, the ragged end in narrower ones. The next
 * tile's rows of out are prefetched: across K blocks they were last written a whole pass over
 * out ago and are in L2 or L3, and their rows are too far apart for the hardware prefetcher. */
static inline __attribute__((always_inline)) void panel(float *out, size_t ldo, const float *inp,
                                                        size_t ldi, const void *b, size_t N,
                                                        size_t kc, size_t nr, const float *bias,
                                                        bool first, enum dsa_epilogue ep,
                                                        const enum wt wt) {
        size_t n = 0, rest;

#define TILE(rows) tile(out + n * ldo, ldo, inp + n * ldi, ldi, b, kc, nr, bias, first, ep, rows, wt)
        /* Stop one full tile early when 1-3 rows would be left: 6 + r rows as two tiles of 3-5
         * rows keep 6-10 FMA chains busy, where a lone 1-row tile would have 2. */
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
