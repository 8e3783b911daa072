/* The AVX-512 panel loop of the pre-packed fp32 GEMM (driver and layout: gemm-packed.c,
 * kernels-internal.h). A 12 x 32 tile of out lives in 24 zmm accumulators; each k step loads
 * two vectors of the packed panel and broadcasts one inp value per row straight from inp's
 * rows, then does 24 FMAs: 2 loads + 12 broadcasts per 24 FMAs fits two load ports under two
 * FMA ports, and 24 chains cover the FMA latency on both. 24 + 2 + 1 registers of 32. Ragged
 * columns use mask registers (masked loads and stores never touch the masked lanes). The GELU
 * epilogue runs on the accumulators of the last K block before the store (vecmath-avx512.h). */
#include <immintrin.h>

#include "../kernels-internal.h"
#include "vecmath-avx512.h"

#define MR DSA__GEMM_MR_AVX512
#define NR DSA__GEMM_NR_AVX512

static inline __mmask16 lanes(size_t n) {
        return n >= 16 ? (__mmask16) 0xffff : (__mmask16) ((1u << n) - 1);
}

/* inp (mr, lda) x b (kc, NR) -> c (mr, ldc), nr <= NR columns, then ep on the sums (lanes past
 * nr hold 0 and are not stored); mr a constant after inlining. */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const float *a,
                                                       size_t lda, const float *b, size_t kc,
                                                       size_t nr, const float *bias, bool first,
                                                       enum dsa_epilogue ep, const int mr) {
        const __mmask16 m0 = lanes(nr), m1 = lanes(nr > 16 ? nr - 16 : 0);
        __m512 acc[MR][2];

        if (first) {
                __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
                if (bias) {
                        b0 = _mm512_maskz_loadu_ps(m0, bias);
                        b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
                }
#pragma GCC unroll 12
                for (int r = 0; r < mr; r++)
                        acc[r][0] = b0, acc[r][1] = b1;
        } else {
#pragma GCC unroll 12
                for (int r = 0; r < mr; r++) {
                        acc[r][0] = _mm512_maskz_loadu_ps(m0, c + r * ldc);
                        acc[r][1] = _mm512_maskz_loadu_ps(m1, c + r * ldc + 16);
                }
        }

#pragma GCC unroll 2
        for (size_t k = 0; k < kc; k++) {
                const __m512 w0 = _mm512_load_ps(b + k * NR), w1 = _mm512_load_ps(b + k * NR + 16);
#pragma GCC unroll 12
                for (int r = 0; r < mr; r++) {
                        const __m512 x = _mm512_set1_ps(a[r * lda + k]);
                        acc[r][0] = _mm512_fmadd_ps(x, w0, acc[r][0]);
                        acc[r][1] = _mm512_fmadd_ps(x, w1, acc[r][1]);
                }
        }

        if (ep == DSA_EPILOGUE_GELU_ERF) {
#pragma GCC unroll 12
                for (int r = 0; r < mr; r++) {
                        acc[r][0] = gelu_erf_ps(acc[r][0]);
                        acc[r][1] = gelu_erf_ps(acc[r][1]);
                }
        } else if (ep == DSA_EPILOGUE_GELU_TANH) {
#pragma GCC unroll 12
                for (int r = 0; r < mr; r++) {
                        acc[r][0] = gelu_tanh_ps(acc[r][0]);
                        acc[r][1] = gelu_tanh_ps(acc[r][1]);
                }
        }

#pragma GCC unroll 12
        for (int r = 0; r < mr; r++) {
                _mm512_mask_storeu_ps(c + r * ldc, m0, acc[r][0]);
                _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc[r][1]);
        }
}

/* inp (N, ldi) x panel slice b (kc, 32) [+ bias] -> out (N, ldo), nr <= 32 columns; see
 * dsa__gemm_panel_f32_fn. Rows in tiles of 12, the last 1-11 rows in a narrower tile; the
 * next tile's rows of out are prefetched (see gemm-avx2.c). */
void dsa__gemm_panel_f32_avx512(float *out, size_t ldo, const float *inp, size_t ldi,
                                const float *b, size_t N, size_t kc, size_t nr, const float *bias,
                                bool first, enum dsa_epilogue ep) {
        size_t n = 0;

#define TILE(rows) tile(out + n * ldo, ldo, inp + n * ldi, ldi, b, kc, nr, bias, first, ep, rows)
        for (; n + MR <= N; n += MR) {
                if (!first && n + 2 * MR <= N)
                        for (int r = 0; r < MR; r++) {
                                _mm_prefetch((const char *) (out + (n + MR + r) * ldo), _MM_HINT_T0);
                                _mm_prefetch((const char *) (out + (n + MR + r) * ldo + 16), _MM_HINT_T0);
                        }
                TILE(MR);
        }
        switch (N - n) {
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
        case 1: TILE(1); break;
        default: break;
        }
#undef TILE
}
