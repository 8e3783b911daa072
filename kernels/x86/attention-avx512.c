/* The AVX-512 long-context attention kernels (attention.h): the row operations of
 * x86/attention-stream.h on zmm vectors with mask registers for ragged tails (masked lanes are
 * neither read nor written), and its drivers on the 12 x 32 GEMM microkernel
 * (dsa__gemm_panel_f32_avx512). exp is vecmath-avx512.h's; the packers of attention-blocked.h
 * use ymm, also valid here. */
#include <immintrin.h>
#include <math.h>

#include "../attention.h"
#include "vecmath-avx512.h"

#define ATT_AI_ROW static inline __attribute__((always_inline))

ATT_AI_ROW float att_row_max(const float *s, size_t n) {
        __m512 mx = _mm512_set1_ps(-INFINITY);
        size_t j = 0;

        for (; j + 16 <= n; j += 16)
                mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
        if (j < n)
                mx = _mm512_mask_max_ps(mx, tail_mask(n - j), mx, _mm512_maskz_loadu_ps(tail_mask(n - j), s + j));
        return _mm512_reduce_max_ps(mx);
}

ATT_AI_ROW float att_row_exp(float *s, size_t ncols, size_t n, float m) {
        const __m512 vm = _mm512_set1_ps(m);
        __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
        size_t j = 0;

        for (; j + 32 <= n; j += 32) {
                const __m512 e0 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
                const __m512 e1 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j + 16), vm));
                _mm512_storeu_ps(s + j, e0);
                _mm512_storeu_ps(s + j + 16, e1);
                sum0 = _mm512_add_ps(sum0, e0);
                sum1 = _mm512_add_ps(sum1, e1);
        }
        for (; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                /* lanes past n: exp(0 - m) may be inf; maskz makes them 0 */
                const __m512 e = _mm512_maskz_mov_ps(mk, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + j), vm)));
                _mm512_mask_storeu_ps(s + j, lanes(ncols - j), e);
                sum0 = _mm512_add_ps(sum0, e);
        }
        for (; j < ncols; j += 16)
                _mm512_mask_storeu_ps(s + j, lanes(ncols - j), _mm512_setzero_ps());
        return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
}

ATT_AI_ROW float att_row_exp_sum(const float *s, size_t n, float m) {
        const __m512 vm = _mm512_set1_ps(m);
        __m512 sum = _mm512_setzero_ps();

        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mk, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + j), vm))));
        }
        return _mm512_reduce_add_ps(sum);
}

ATT_AI_ROW float att_row_mask_sum(float *a, size_t ncols, size_t n) {
        __m512 sum = _mm512_setzero_ps();

        for (size_t j = 0; j < ncols; j += 16) {
                const __m512 x = _mm512_maskz_loadu_ps(j < n ? lanes(n - j) : 0, a + j); /* 0 past n */
                sum = _mm512_add_ps(sum, x);
                _mm512_mask_storeu_ps(a + j, lanes(ncols - j), x);
        }
        return _mm512_reduce_add_ps(sum);
}

ATT_AI_ROW void att_row_scale(float *x, size_t n, float a) {
        const __m512 va = _mm512_set1_ps(a);

        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                _mm512_mask_storeu_ps(x + j, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + j), va));
        }
}

/* elu(x) + 1: x + 1 above 0, e^x at or below (exp of min(x, 0), so no lane overflows). */
ATT_AI_ROW __m512 phi_ps(__m512 x) {
        const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
        return _mm512_mask_add_ps(exp_ps(_mm512_min_ps(x, _mm512_setzero_ps())), pos, x, _mm512_set1_ps(1.0f));
}

ATT_AI_ROW void att_row_phi(float *dst, const float *src, size_t n) {
        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                _mm512_mask_storeu_ps(dst + j, mk, phi_ps(_mm512_maskz_loadu_ps(mk, src + j)));
        }
}

ATT_AI_ROW void att_row_add(float *z, const float *x, size_t n) {
        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                _mm512_mask_storeu_ps(z + j, mk, _mm512_add_ps(_mm512_maskz_loadu_ps(mk, z + j),
                                                               _mm512_maskz_loadu_ps(mk, x + j)));
        }
}

ATT_AI_ROW float att_dot(const float *a, const float *b, size_t n) {
        __m512 sum = _mm512_setzero_ps();

        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                sum = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + j), _mm512_maskz_loadu_ps(mk, b + j), sum);
        }
        return _mm512_reduce_add_ps(sum);
}

/* s[j] = sum_r q[r] kt[r][j0 + j] for j < n: 128 keys (eight independent sums, to cover the
 * FMA latency on two ports) per step, then 16 at a time. */
ATT_AI_ROW void att_lr_scores(float *s, const float *q, const float *kt, size_t ldk, size_t j0, size_t n,
                              size_t R) {
        size_t j = 0;

        for (; j + 128 <= n; j += 128) { /* named sums: an array of them would live in memory */
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
                for (size_t r = 0; r < R; r++) {
                        const float *kr = kt + r * ldk + j0 + j;
                        const __m512 qr = _mm512_set1_ps(q[r]);
                        a0 = _mm512_fmadd_ps(qr, _mm512_loadu_ps(kr), a0);
                        a1 = _mm512_fmadd_ps(qr, _mm512_loadu_ps(kr + 16), a1);
                        a2 = _mm512_fmadd_ps(qr, _mm512_loadu_ps(kr + 32), a2);
                        a3 = _mm512_fmadd_ps(qr, _mm512_loadu_ps(kr + 48), a3);
                        a4 = _mm512_fmadd_ps(qr, _mm512_loadu_ps(kr + 64), a4);
                        a5 = _mm512_fmadd_ps(qr, _mm512_loadu_ps(kr + 80), a5);
                        a6 = _mm512_fmadd_ps(qr, _mm512_loadu_ps(kr + 96), a6);
                        a7 = _mm512_fmadd_ps(qr, _mm512_loadu_ps(kr + 112), a7);
                }
                _mm512_storeu_ps(s + j, a0);
                _mm512_storeu_ps(s + j + 16, a1);
                _mm512_storeu_ps(s + j + 32, a2);
                _mm512_storeu_ps(s + j + 48, a3);
                _mm512_storeu_ps(s + j + 64, a4);
                _mm512_storeu_ps(s + j + 80, a5);
                _mm512_storeu_ps(s + j + 96, a6);
                _mm512_storeu_ps(s + j + 112, a7);
        }
        for (; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                __m512 a = _mm512_setzero_ps();
                for (size_t r = 0; r < R; r++)
                        a = _mm512_fmadd_ps(_mm512_set1_ps(q[r]), _mm512_maskz_loadu_ps(mk, kt + r * ldk + j0 + j), a);
                _mm512_mask_storeu_ps(s + j, mk, a);
        }
}

#include "attention-stream.h"

#define NR DSA__GEMM_NR_AVX512
#define PANEL dsa__gemm_panel_f32_avx512

int dsa__attention_blocks_f32_avx512(float *out, size_t ldo, const float *q, size_t ldq,
                                     const float *k, size_t ldk, const float *v, size_t ldv,
                                     size_t nq, size_t pos0, const uint32_t *blocks, size_t nb,
                                     size_t bk, size_t Tk, size_t HS, float scale, bool causal,
                                     float *ret_lse, float *scratch) {
        return att_stream_blocks(out, ldo, q, ldq, k, ldk, v, ldv, nq, pos0, blocks, nb, bk, Tk, HS,
                                 scale, causal, ret_lse, scratch, NR, PANEL);
}

int dsa__attention_block_mass_f32_avx512(float *mass, const float *q, size_t ldq, const float *k,
                                         size_t ldk, size_t nq, size_t pos0,
                                         const uint32_t *blocks, size_t nb, size_t bk, size_t Tk,
                                         size_t HS, float scale, bool causal, const float *lse,
                                         float *scratch) {
        return att_stream_block_mass(mass, q, ldq, k, ldk, nq, pos0, blocks, nb, bk, Tk, HS, scale,
                                     causal, lse, scratch, NR, PANEL);
}

int dsa__attention_linear_f32_avx512(float *out, size_t ldo, const float *q, size_t ldq,
                                     const float *k, size_t ldk, const float *v, size_t ldv,
                                     size_t T, size_t HS, bool causal, float *scratch) {
        return att_linear(out, ldo, q, ldq, k, ldk, v, ldv, T, HS, causal, scratch, NR, PANEL);
}

int dsa__attention_block_max_lowrank_f32_avx512(float *out, size_t ldo, const float *qt, size_t ldq,
                                                const float *kt, size_t ldk, size_t nq, size_t bk,
                                                size_t Tk, size_t R) {
        return att_block_max_lowrank(out, ldo, qt, ldq, kt, ldk, nq, bk, Tk, R);
}
