/* The AVX-512 panel loop of the sparse packed fp32 GEMM (driver and layout: gemm-sparse.c,
 * gemm-sparse.h). Panels are 16 wide in every variant (one kept k row is one 16x1 block), so a
 * row of the tile is one zmm: a 16 x 16 tile of out lives in 16 zmm accumulators; each step over
 * the panel's kept rows loads the column index and one vector of the packed row, broadcasts
 * inp[r][idx] for each of the 16 rows and does 16 FMAs. 16 chains cover the FMA latency on two
 * ports; 16 + 1 + 1 registers of 32. Ragged columns use mask registers (masked loads and stores
 * never touch the masked lanes). The GELU epilogue runs on the accumulators before the store
 * (vecmath-avx512.h). */
#include <immintrin.h>

#include "../gemm-sparse.h"
#include "vecmath-avx512.h"

#define MR DSA__SPARSE_MR_AVX512
#define NR DSA__SPARSE_NR

/* inp (mr, lda) at the kept columns idx (nk) x b (nk, NR) -> c (mr, ldc), nr <= NR columns,
 * then ep on the sums (lanes past nr hold 0 and are not stored); mr a constant after inlining. */
static inline __attribute__((always_inline)) void tile(float *c, size_t ldc, const float *a,
                                                       size_t lda, const float *b,
                                                       const uint32_t *idx, size_t nk, size_t nr,
                                                       const float *bias, bool first,
                                                       enum dsa_epilogue ep, const int mr) {
        const __mmask16 m = tail_mask(nr);
        __m512 acc[MR];

        if (first) {
                const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m, bias) : _mm512_setzero_ps();
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
                        acc[r] = b0;
        } else {
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
                        acc[r] = _mm512_maskz_loadu_ps(m, c + r * ldc);
        }

#pragma GCC unroll 2
        for (size_t t = 0; t < nk; t++) {
                const size_t k = idx[t];
                const __m512 w = _mm512_load_ps(b + t * NR);
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
                        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * lda + k]), w, acc[r]);
        }

        if (ep == DSA_EPILOGUE_GELU_ERF) {
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
                        acc[r] = gelu_erf_ps(acc[r]);
        } else if (ep == DSA_EPILOGUE_GELU_TANH) {
#pragma GCC unroll 16
                for (int r = 0; r < mr; r++)
                        acc[r] = gelu_tanh_ps(acc[r]);
        }

#pragma GCC unroll 16
        for (int r = 0; r < mr; r++)
                _mm512_mask_storeu_ps(c + r * ldc, m, acc[r]);
}

/* inp (N, ldi) at the columns idx (nk) x kept rows b (nk, 16) [+ bias] -> out (N, ldo), nr <= 16
 * columns; see dsa__gemm_sparse_panel_f32_fn. Rows in tiles of 16, the last 1-15 rows in one
 * narrower tile; the next tile's rows of out are prefetched (see x86/gemm-avx2.c). */
void dsa__gemm_sparse_panel_f32_avx512(float *out, size_t ldo, const float *inp, size_t ldi,
                                       const float *b, const uint32_t *idx, size_t nk, size_t N,
                                       size_t nr, const float *bias, bool first,
                                       enum dsa_epilogue ep) {
        size_t n = 0;

#define TILE(rows) tile(out + n * ldo, ldo, inp + n * ldi, ldi, b, idx, nk, nr, bias, first, ep, rows)
        for (; n + MR <= N; n += MR) {
                if (!first && n + 2 * MR <= N)
                        for (int r = 0; r < MR; r++)
                                _mm_prefetch((const char *) (out + (n + MR + r) * ldo), _MM_HINT_T0);
                TILE(MR);
        }
        switch (N - n) {
        case 15: TILE(15); break;
        case 14: TILE(14); break;
        case 13: TILE(13); break;
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
        case 1: TILE(1); break;
        default: break;
        }
#undef TILE
}
