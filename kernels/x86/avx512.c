/* AVX-512 (F/BW/DQ/VL) kernels, 16 floats a vector; the same algorithms as x86/avx2.c, so the
 * two stay easy to compare. Ragged tails use mask registers: _mm512_maskz_loadu_ps reads
 * nothing in the masked lanes (no fault past the end of a row) and returns 0 there, and
 * _mm512_mask_storeu_ps writes only the active lanes. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../kernels-internal.h"
#include "attention-blocked.h"
#include "vecmath-avx512.h"

/* x (N,C) rows: mean, then variance around it, then the affine map; see kernels.h. */
void dsa_layernorm_f32_avx512(float *out, const float *inp, const float *gamma, const float *beta,
                              size_t N, size_t C, float eps) {
        const size_t rem = C % 16, body = C - rem;
        const __mmask16 m = tail_mask(rem);

        for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * C;
                float *y = out + n * C;
                __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
                size_t c = 0;

                if (C == 0)
                        continue;
                for (; c + 32 <= body; c += 32) {
                        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(x + c));
                        s1 = _mm512_add_ps(s1, _mm512_loadu_ps(x + c + 16));
                }
                for (; c < body; c += 16)
                        s0 = _mm512_add_ps(s0, _mm512_loadu_ps(x + c));
                if (rem)
                        s1 = _mm512_add_ps(s1, _mm512_maskz_loadu_ps(m, x + body));
                float mean = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / (float) C;
                __m512 vmean = _mm512_set1_ps(mean);

                s0 = _mm512_setzero_ps();
                s1 = _mm512_setzero_ps();
                for (c = 0; c + 32 <= body; c += 32) {
                        __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x + c), vmean);
                        __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(x + c + 16), vmean);
                        s0 = _mm512_fmadd_ps(d0, d0, s0);
                        s1 = _mm512_fmadd_ps(d1, d1, s1);
                }
                for (; c < body; c += 16) {
                        __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + c), vmean);
                        s0 = _mm512_fmadd_ps(d, d, s0);
                }
                if (rem) {
                        /* maskz_sub: the inactive lanes must add 0, not mean^2. */
                        __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + body), vmean);
                        s1 = _mm512_fmadd_ps(d, d, s1);
                }
                float var = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / (float) C;
                __m512 rstd = _mm512_set1_ps((float) (1.0 / sqrt((double) var + eps)));

                for (c = 0; c < body; c += 16) {
                        __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + c), vmean), rstd);
                        _mm512_storeu_ps(y + c, _mm512_fmadd_ps(d, _mm512_loadu_ps(gamma + c),
                                                                _mm512_loadu_ps(beta + c)));
                }
                if (rem) {
                        __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + body), vmean), rstd);
                        d = _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, gamma + body),
                                            _mm512_maskz_loadu_ps(m, beta + body));
                        _mm512_mask_storeu_ps(y + body, m, d);
                }
        }
}

/* x (N,C) rows: sum of squares, then gamma * x * rstd; see kernels.h. */
void dsa_rmsnorm_f32_avx512(float *out, const float *inp, const float *gamma, size_t N, size_t C, float eps) {
        const size_t rem = C % 16, body = C - rem;
        const __mmask16 m = (__mmask16) ((1u << rem) - 1);

        for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * C;
                float *y = out + n * C;
                __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
                size_t c = 0;

                if (C == 0)
                        continue;
                for (; c + 32 <= body; c += 32) {
                        __m512 a = _mm512_loadu_ps(x + c), b = _mm512_loadu_ps(x + c + 16);
                        s0 = _mm512_fmadd_ps(a, a, s0);
                        s1 = _mm512_fmadd_ps(b, b, s1);
                }
                for (; c < body; c += 16) {
                        __m512 a = _mm512_loadu_ps(x + c);
                        s0 = _mm512_fmadd_ps(a, a, s0);
                }
                if (rem) {
                        __m512 a = _mm512_maskz_loadu_ps(m, x + body);
                        s1 = _mm512_fmadd_ps(a, a, s1);
                }
                __m512 r = _mm512_set1_ps((float) (1.0 / sqrt((double) _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) /
                                                                 (double) C + eps)));
                for (c = 0; c < body; c += 16)
                        _mm512_storeu_ps(y + c, _mm512_mul_ps(_mm512_loadu_ps(gamma + c),
                                                              _mm512_mul_ps(_mm512_loadu_ps(x + c), r)));
                if (rem)
                        _mm512_mask_storeu_ps(y + body, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, gamma + body),
                                                                         _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + body), r)));
        }
}

/* silu(g) * u = g * u / (1 + e^-g); see the AVX2 version. */
static inline __m512 silu_mul_ps(__m512 g, __m512 u) {
        __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g)));
        return _mm512_div_ps(_mm512_mul_ps(g, u), d);
}

/* a (n) + b (n) -> out (n), may alias; see kernels.h. */
void dsa_add_f32_avx512(float *out, const float *a, const float *b, size_t n) {
        size_t i = 0;

        for (; i + 16 <= n; i += 16)
                _mm512_storeu_ps(out + i, _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
        if (i < n) {
                __mmask16 m = (__mmask16) ((1u << (n - i)) - 1);
                _mm512_mask_storeu_ps(out + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i),
                                                                _mm512_maskz_loadu_ps(m, b + i)));
        }
}

void dsa_silu_mul_f32_avx512(float *out, const float *gate, const float *up, size_t n) {
        size_t i = 0;

        for (; i + 16 <= n; i += 16)
                _mm512_storeu_ps(out + i, silu_mul_ps(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
        if (i < n) {
                __mmask16 m = (__mmask16) ((1u << (n - i)) - 1);
                _mm512_mask_storeu_ps(out + i, m, silu_mul_ps(_mm512_maskz_loadu_ps(m, gate + i),
                                                              _mm512_maskz_loadu_ps(m, up + i)));
        }
}

/* Pairs swapped with vpermilps within each 128-bit lane, then x c + swapped s. */
void dsa_rope_f32_avx512(float *x, size_t n, size_t HS, const float *c, const float *s) {
        for (size_t v = 0; v < n; v++)
                for (size_t d = 0; d < HS; d += 16) {
                        const __mmask16 m = tail_mask(HS - d < 16 ? HS - d : 16);
                        float *p = x + v * HS + d;
                        const __m512 xv = _mm512_maskz_loadu_ps(m, p), xs = _mm512_permute_ps(xv, 0xB1);
                        const __m512 a = _mm512_mul_ps(xv, _mm512_maskz_loadu_ps(m, c + d));
                        const __m512 b = _mm512_mul_ps(xs, _mm512_maskz_loadu_ps(m, s + d));
                        _mm512_mask_storeu_ps(p, m, _mm512_add_ps(a, b));
                }
}

void dsa_gelu_erf_f32_avx512(float *x, size_t n) {
        size_t i = 0;

        for (; i + 16 <= n; i += 16)
                _mm512_storeu_ps(x + i, gelu_erf_ps(_mm512_loadu_ps(x + i)));
        if (i < n) {
                __mmask16 m = tail_mask(n - i);
                _mm512_mask_storeu_ps(x + i, m, gelu_erf_ps(_mm512_maskz_loadu_ps(m, x + i)));
        }
}

void dsa_gelu_tanh_f32_avx512(float *x, size_t n) {
        size_t i = 0;

        for (; i + 16 <= n; i += 16)
                _mm512_storeu_ps(x + i, gelu_tanh_ps(_mm512_loadu_ps(x + i)));
        if (i < n) {
                __mmask16 m = tail_mask(n - i);
                _mm512_mask_storeu_ps(x + i, m, gelu_tanh_ps(_mm512_maskz_loadu_ps(m, x + i)));
        }
}

/* One row of C >= 1 in place: max, then exp(x - max) stored; returns 1 / their sum. */
static float softmax_row_exp(float *x, size_t C) {
        const size_t rem = C % 16, body = C - rem;
        const __mmask16 m = tail_mask(rem);
        __m512 vmax = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();

        for (size_t c = 0; c < body; c += 16)
                vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + c));
        if (rem) /* only the active lanes take part in the max */
                vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, x + body));
        __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));

        for (size_t c = 0; c < body; c += 16) {
                __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + c), max));
                sum = _mm512_add_ps(sum, e);
                _mm512_storeu_ps(x + c, e);
        }
        if (rem) {
                __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + body), max));
                e = _mm512_maskz_mov_ps(m, e);
                sum = _mm512_add_ps(sum, e);
                _mm512_mask_storeu_ps(x + body, m, e);
        }
        return 1.0f / _mm512_reduce_add_ps(sum);
}

/* One row of C in place: softmax_row_exp, then one multiply. */
static void softmax_row(float *x, size_t C) {
        const size_t rem = C % 16, body = C - rem;
        const __mmask16 m = tail_mask(rem);

        if (C == 0)
                return;
        const __m512 inv = _mm512_set1_ps(softmax_row_exp(x, C));
        for (size_t c = 0; c < body; c += 16)
                _mm512_storeu_ps(x + c, _mm512_mul_ps(_mm512_loadu_ps(x + c), inv));
        if (rem)
                _mm512_mask_storeu_ps(x + body, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + body), inv));
}

void dsa_softmax_f32_avx512(float *x, size_t N, size_t C) {
        for (size_t n = 0; n < N; n++)
                softmax_row(x + n * C, C);
}

#define SUM_ROWS 16 /* rows of softmax_sum a pass of the sums takes */
#define EXP_ROWS 8  /* rows whose max and exps run interleaved */

/* softmax_row_exp of R rows of C at once (R a constant where inlined): each step of one row is
 * independent of the others', so interleaving them keeps the vector ports busy where one row's
 * short chains (a max, a reduction, a few exps, another reduction) would leave them waiting.
 * Every row's operations and their order are softmax_row_exp's: the same bits. */
static inline __attribute__((always_inline)) void softmax_rows_exp(float *x, size_t C, float *inv, const size_t R) {
        __m512 vmax[EXP_ROWS], sum[EXP_ROWS], max[EXP_ROWS];

        _Pragma("GCC unroll 8") for (size_t n = 0; n < R; n++)
                vmax[n] = _mm512_set1_ps(-INFINITY), sum[n] = _mm512_setzero_ps();
        for (size_t c = 0; c < C; c += 16) {
                const __mmask16 m = lanes(C - c); /* only the active lanes take part in the max */
                _Pragma("GCC unroll 8") for (size_t n = 0; n < R; n++)
                        vmax[n] = _mm512_mask_max_ps(vmax[n], m, vmax[n], _mm512_maskz_loadu_ps(m, x + n * C + c));
        }
        _Pragma("GCC unroll 8") for (size_t n = 0; n < R; n++)
                max[n] = _mm512_set1_ps(_mm512_reduce_max_ps(vmax[n]));
        for (size_t c = 0; c < C; c += 16) {
                const __mmask16 m = lanes(C - c);
                _Pragma("GCC unroll 8") for (size_t n = 0; n < R; n++) {
                        const __m512 e = _mm512_maskz_mov_ps(
                                m, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + n * C + c), max[n])));
                        sum[n] = _mm512_add_ps(sum[n], e);
                        _mm512_mask_storeu_ps(x + n * C + c, m, e);
                }
        }
        _Pragma("GCC unroll 8") for (size_t n = 0; n < R; n++)
                inv[n] = 1.0f / _mm512_reduce_add_ps(sum[n]);
}

/* Each row's exps and 1/sum (softmax_row_exp, EXP_ROWS rows interleaved), then acc += e inv
 * row by row in one pass over acc: the product is kept from fusing into the add (a barrier),
 * as softmax_row's multiply and the caller's add would round each. */
void dsa_softmax_sum_f32_avx512(float *acc, float *x, size_t N, size_t C) {
        float inv[SUM_ROWS];

        for (size_t n0 = 0; n0 < N && C > 0; n0 += SUM_ROWS) {
                const size_t nr = N - n0 < SUM_ROWS ? N - n0 : SUM_ROWS;
                size_t n = 0;
                for (; n + EXP_ROWS <= nr; n += EXP_ROWS)
                        softmax_rows_exp(x + (n0 + n) * C, C, inv + n, EXP_ROWS);
                for (; n < nr; n++)
                        softmax_rows_exp(x + (n0 + n) * C, C, inv + n, 1);
                for (size_t c = 0; c < C; c += 16) {
                        const __mmask16 m = C - c < 16 ? tail_mask(C - c) : (__mmask16) 0xffff;
                        __m512 a = _mm512_maskz_loadu_ps(m, acc + c);
                        for (size_t k = 0; k < nr; k++) {
                                __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + (n0 + k) * C + c),
                                                         _mm512_set1_ps(inv[k]));
                                __asm__("" : "+v"(p));
                                a = _mm512_add_ps(a, p);
                        }
                        _mm512_mask_storeu_ps(acc + c, m, a);
                }
        }
}

void dsa_f16_to_f32_avx512(float *dst, const uint16_t *src, size_t n) {
        size_t i = 0;

        for (; i + 16 <= n; i += 16)
                _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (src + i))));
        if (i < n) {
                __mmask16 m = tail_mask(n - i);
                __m256i h = _mm256_maskz_loadu_epi16(m, src + i);
                _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(h));
        }
}

void dsa_bf16_to_f32_avx512(float *dst, const uint16_t *src, size_t n) {
        size_t i = 0;

        for (; i + 16 <= n; i += 16) {
                __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) (src + i)));
                _mm512_storeu_si512(dst + i, _mm512_slli_epi32(w, 16));
        }
        if (i < n) {
                __mmask16 m = tail_mask(n - i);
                __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
                _mm512_mask_storeu_epi32(dst + i, m, _mm512_slli_epi32(w, 16));
        }
}

/* See kernels.h for the layout, x86/attention-blocked.h for the method (shared with the AVX2
 * variant): blocks of query rows, scores and the weighted sum of values both on the 12 x 32
 * GEMM microkernel. */
void dsa_attention_f32_avx512(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                              size_t ldk, const float *v, size_t ldv, const uint8_t *valid,
                              size_t T, size_t HS, float scale, float *probs, float *scratch) {
        attention_blocked(out, ldo, q, ldq, k, ldk, v, ldv, valid, T, HS, scale, probs, scratch,
                          DSA__GEMM_NR_AVX512, DSA__GEMM_MR_AVX512, dsa__gemm_panel_f32_avx512,
                          softmax_row);
}

const struct dsa_kernels dsa__kernels_avx512 = {
        .isa = DSA_ISA_AVX512,
        .name = "avx512",
        .layernorm_f32 = dsa_layernorm_f32_avx512,
        .rmsnorm_f32 = dsa_rmsnorm_f32_avx512,
        .add_f32 = dsa_add_f32_avx512,
        .silu_mul_f32 = dsa_silu_mul_f32_avx512,
        .rope_f32 = dsa_rope_f32_avx512,
        .gelu_erf_f32 = dsa_gelu_erf_f32_avx512,
        .gelu_tanh_f32 = dsa_gelu_tanh_f32_avx512,
        .softmax_f32 = dsa_softmax_f32_avx512,
        .softmax_sum_f32 = dsa_softmax_sum_f32_avx512,
        .f16_to_f32 = dsa_f16_to_f32_avx512,
        .bf16_to_f32 = dsa_bf16_to_f32_avx512,
        .attention_f32 = dsa_attention_f32_avx512,
};
