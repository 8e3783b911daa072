/* The AVX2 + FMA long-context attention kernels (attention.h): the row operations of
 * x86/attention-stream.h on ymm vectors, and its drivers on the 6 x 16 GEMM microkernel
 * (dsa__gemm_panel_f32_avx2). Ragged row tails use masked loads and stores (vmaskmovps), so no
 * lane past a row's n is read or written; exp is vecmath-avx2.h's. */
#include <immintrin.h>
#include <math.h>

#include "../attention.h"
#include "vecmath-avx2.h"

#define ATT_AI_ROW static inline __attribute__((always_inline))

ATT_AI_ROW __m256 mask_ps(size_t n) {
        return _mm256_castsi256_ps(tail_mask(n));
}

ATT_AI_ROW float att_row_max(const float *s, size_t n) {
        __m256 mx = _mm256_set1_ps(-INFINITY);
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + j));
        if (j < n) /* masked lanes load 0: replace them by -inf */
                mx = _mm256_max_ps(mx, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY),
                                                        _mm256_maskload_ps(s + j, tail_mask(n - j)),
                                                        mask_ps(n - j)));
        return hmax(mx);
}

ATT_AI_ROW float att_row_exp(float *s, size_t ncols, size_t n, float m) {
        const __m256 vm = _mm256_set1_ps(m);
        __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
        size_t j = 0;

        for (; j + 16 <= n; j += 16) {
                const __m256 e0 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
                const __m256 e1 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j + 8), vm));
                _mm256_storeu_ps(s + j, e0);
                _mm256_storeu_ps(s + j + 8, e1);
                sum0 = _mm256_add_ps(sum0, e0);
                sum1 = _mm256_add_ps(sum1, e1);
        }
        for (; j < n; j += 8) {
                const size_t r = n - j < 8 ? n - j : 8;
                const __m256i mi = tail_mask(r);
                /* lanes past n: exp(0 - m) may be inf; the and makes them 0 */
                const __m256 e = _mm256_and_ps(exp_ps(_mm256_sub_ps(_mm256_maskload_ps(s + j, mi), vm)),
                                               _mm256_castsi256_ps(mi));
                _mm256_maskstore_ps(s + j, tail_mask(ncols - j < 8 ? ncols - j : 8), e);
                sum0 = _mm256_add_ps(sum0, e);
        }
        for (; j < ncols; j += 8)
                _mm256_maskstore_ps(s + j, tail_mask(ncols - j < 8 ? ncols - j : 8), _mm256_setzero_ps());
        return hsum(_mm256_add_ps(sum0, sum1));
}

ATT_AI_ROW float att_row_exp_sum(const float *s, size_t n, float m) {
        const __m256 vm = _mm256_set1_ps(m);
        __m256 sum = _mm256_setzero_ps();
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                sum = _mm256_add_ps(sum, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm)));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                sum = _mm256_add_ps(sum, _mm256_and_ps(exp_ps(_mm256_sub_ps(_mm256_maskload_ps(s + j, mi), vm)),
                                                       _mm256_castsi256_ps(mi)));
        }
        return hsum(sum);
}

ATT_AI_ROW float att_row_mask_sum(float *a, size_t ncols, size_t n) {
        __m256 sum = _mm256_setzero_ps();
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                sum = _mm256_add_ps(sum, _mm256_loadu_ps(a + j));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                const __m256 x = _mm256_maskload_ps(a + j, mi); /* 0 past n */
                sum = _mm256_add_ps(sum, x);
                _mm256_maskstore_ps(a + j, tail_mask(ncols - j < 8 ? ncols - j : 8), x);
                j += 8;
        }
        for (; j < ncols; j += 8)
                _mm256_maskstore_ps(a + j, tail_mask(ncols - j < 8 ? ncols - j : 8), _mm256_setzero_ps());
        return hsum(sum);
}

ATT_AI_ROW void att_row_scale(float *x, size_t n, float a) {
        const __m256 va = _mm256_set1_ps(a);
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), va));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                _mm256_maskstore_ps(x + j, mi, _mm256_mul_ps(_mm256_maskload_ps(x + j, mi), va));
        }
}

/* elu(x) + 1: x + 1 above 0, e^x at or below (exp of min(x, 0), so no lane overflows). */
ATT_AI_ROW __m256 phi_ps(__m256 x) {
        const __m256 pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ);
        return _mm256_blendv_ps(exp_ps(_mm256_min_ps(x, _mm256_setzero_ps())),
                                _mm256_add_ps(x, _mm256_set1_ps(1.0f)), pos);
}

ATT_AI_ROW void att_row_phi(float *dst, const float *src, size_t n) {
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                _mm256_storeu_ps(dst + j, phi_ps(_mm256_loadu_ps(src + j)));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                _mm256_maskstore_ps(dst + j, mi, phi_ps(_mm256_maskload_ps(src + j, mi)));
        }
}

ATT_AI_ROW void att_row_add(float *z, const float *x, size_t n) {
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                _mm256_storeu_ps(z + j, _mm256_add_ps(_mm256_loadu_ps(z + j), _mm256_loadu_ps(x + j)));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                _mm256_maskstore_ps(z + j, mi, _mm256_add_ps(_mm256_maskload_ps(z + j, mi),
                                                             _mm256_maskload_ps(x + j, mi)));
        }
}

ATT_AI_ROW float att_dot(const float *a, const float *b, size_t n) {
        __m256 sum = _mm256_setzero_ps();
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                sum = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), sum);
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                sum = _mm256_fmadd_ps(_mm256_maskload_ps(a + j, mi), _mm256_maskload_ps(b + j, mi), sum);
        }
        return hsum(sum);
}

/* s[j] = sum_r q[r] kt[r][j0 + j] for j < n: 32 keys (four independent sums) per step. */
ATT_AI_ROW void att_lr_scores(float *s, const float *q, const float *kt, size_t ldk, size_t j0, size_t n,
                                 size_t R) {
        size_t j = 0;

        for (; j + 32 <= n; j += 32) {
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                for (size_t r = 0; r < R; r++) {
                        const float *kr = kt + r * ldk + j0 + j;
                        const __m256 qr = _mm256_set1_ps(q[r]);
                        a0 = _mm256_fmadd_ps(qr, _mm256_loadu_ps(kr), a0);
                        a1 = _mm256_fmadd_ps(qr, _mm256_loadu_ps(kr + 8), a1);
                        a2 = _mm256_fmadd_ps(qr, _mm256_loadu_ps(kr + 16), a2);
                        a3 = _mm256_fmadd_ps(qr, _mm256_loadu_ps(kr + 24), a3);
                }
                _mm256_storeu_ps(s + j, a0);
                _mm256_storeu_ps(s + j + 8, a1);
                _mm256_storeu_ps(s + j + 16, a2);
                _mm256_storeu_ps(s + j + 24, a3);
        }
        for (; j < n; j += 8) {
                const __m256i mk = tail_mask(n - j < 8 ? n - j : 8);
                __m256 a = _mm256_setzero_ps();
                for (size_t r = 0; r < R; r++)
                        a = _mm256_fmadd_ps(_mm256_set1_ps(q[r]), _mm256_maskload_ps(kt + r * ldk + j0 + j, mk), a);
                _mm256_maskstore_ps(s + j, mk, a);
        }
}

#include "attention-stream.h"

#define NR DSA__GEMM_NR_AVX2
#define PANEL dsa__gemm_panel_f32_avx2

int dsa__attention_blocks_f32_avx2(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                                   size_t ldk, const float *v, size_t ldv, size_t nq, size_t pos0,
                                   const uint32_t *blocks, size_t nb, size_t bk, size_t Tk,
                                   size_t HS, float scale, bool causal, float *ret_lse,
                                   float *scratch) {
        return att_stream_blocks(out, ldo, q, ldq, k, ldk, v, ldv, nq, pos0, blocks, nb, bk, Tk, HS,
                                 scale, causal, ret_lse, scratch, NR, PANEL);
}

int dsa__attention_block_mass_f32_avx2(float *mass, const float *q, size_t ldq, const float *k,
                                       size_t ldk, size_t nq, size_t pos0, const uint32_t *blocks,
                                       size_t nb, size_t bk, size_t Tk, size_t HS, float scale,
                                       bool causal, const float *lse, float *scratch) {
        return att_stream_block_mass(mass, q, ldq, k, ldk, nq, pos0, blocks, nb, bk, Tk, HS, scale,
                                     causal, lse, scratch, NR, PANEL);
}

int dsa__attention_linear_f32_avx2(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                                   size_t ldk, const float *v, size_t ldv, size_t T, size_t HS,
                                   bool causal, float *scratch) {
        return att_linear(out, ldo, q, ldq, k, ldk, v, ldv, T, HS, causal, scratch, NR, PANEL);
}

int dsa__attention_block_max_lowrank_f32_avx2(float *out, size_t ldo, const float *qt, size_t ldq,
                                              const float *kt, size_t ldk, size_t nq, size_t bk,
                                              size_t Tk, size_t R) {
        return att_block_max_lowrank(out, ldo, qt, ldq, kt, ldk, nq, bk, Tk, R);
}
