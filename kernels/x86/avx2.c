/* AVX2 + FMA + F16C kernels, 8 floats a vector. Ragged tails go through masked loads and
 * stores (_mm256_maskload_ps never touches the masked lanes' memory, so reading a row that ends
 * at the end of a mapping is safe). exp(), erf() and the GELUs are in x86/vecmath-avx2.h,
 * shared with the GEMM epilogue. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../kernels-internal.h"
#include "attention-blocked.h"
#include "vecmath-avx2.h"

/* x (N,C) rows: mean, then variance around it, then the affine map; see kernels.h. */
void dsa_layernorm_f32_avx2(float *out, const float *inp, const float *gamma, const float *beta,
                            size_t N, size_t C, float eps) {
        const size_t rem = C % 8, body = C - rem;
        const __m256i m = tail_mask(rem);

        for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * C;
                float *y = out + n * C;
                __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
                size_t c = 0;

                if (C == 0)
                        continue;
                for (; c + 16 <= body; c += 16) {
                        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + c));
                        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + c + 8));
                }
                for (; c < body; c += 8)
                        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + c));
                if (rem)
                        s1 = _mm256_add_ps(s1, _mm256_maskload_ps(x + body, m));
                float mean = hsum(_mm256_add_ps(s0, s1)) / (float) C;
                __m256 vmean = _mm256_set1_ps(mean);

                s0 = _mm256_setzero_ps();
                s1 = _mm256_setzero_ps();
                for (c = 0; c + 16 <= body; c += 16) {
                        __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + c), vmean);
                        __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + c + 8), vmean);
                        s0 = _mm256_fmadd_ps(d0, d0, s0);
                        s1 = _mm256_fmadd_ps(d1, d1, s1);
                }
                for (; c < body; c += 8) {
                        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + c), vmean);
                        s0 = _mm256_fmadd_ps(d, d, s0);
                }
                if (rem) {
                        /* The masked lanes load 0; zero their difference too. */
                        __m256 d = _mm256_sub_ps(_mm256_maskload_ps(x + body, m), vmean);
                        d = _mm256_and_ps(d, _mm256_castsi256_ps(m));
                        s1 = _mm256_fmadd_ps(d, d, s1);
                }
                float var = hsum(_mm256_add_ps(s0, s1)) / (float) C;
                __m256 rstd = _mm256_set1_ps((float) (1.0 / sqrt((double) var + eps)));

                for (c = 0; c < body; c += 8) {
                        __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), vmean), rstd);
                        _mm256_storeu_ps(y + c, _mm256_fmadd_ps(d, _mm256_loadu_ps(gamma + c),
                                                                _mm256_loadu_ps(beta + c)));
                }
                if (rem) {
                        __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + body, m), vmean), rstd);
                        d = _mm256_fmadd_ps(d, _mm256_maskload_ps(gamma + body, m),
                                            _mm256_maskload_ps(beta + body, m));
                        _mm256_maskstore_ps(y + body, m, d);
                }
        }
}

/* x (N,C) rows: sum of squares, then gamma * x * rstd; see kernels.h. */
void dsa_rmsnorm_f32_avx2(float *out, const float *inp, const float *gamma, size_t N, size_t C, float eps) {
        const size_t rem = C % 8, body = C - rem;
        const __m256i m = tail_mask(rem);

        for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * C;
                float *y = out + n * C;
                __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
                size_t c = 0;

                if (C == 0)
                        continue;
                for (; c + 16 <= body; c += 16) {
                        __m256 a = _mm256_loadu_ps(x + c), b = _mm256_loadu_ps(x + c + 8);
                        s0 = _mm256_fmadd_ps(a, a, s0);
                        s1 = _mm256_fmadd_ps(b, b, s1);
                }
                for (; c < body; c += 8) {
                        __m256 a = _mm256_loadu_ps(x + c);
                        s0 = _mm256_fmadd_ps(a, a, s0);
                }
                if (rem) {
                        __m256 a = _mm256_maskload_ps(x + body, m);
                        s1 = _mm256_fmadd_ps(a, a, s1);
                }
                __m256 r = _mm256_set1_ps((float) (1.0 / sqrt((double) hsum(_mm256_add_ps(s0, s1)) / (double) C + eps)));
                for (c = 0; c < body; c += 8)
                        _mm256_storeu_ps(y + c, _mm256_mul_ps(_mm256_loadu_ps(gamma + c),
                                                              _mm256_mul_ps(_mm256_loadu_ps(x + c), r)));
                if (rem)
                        _mm256_maskstore_ps(y + body, m, _mm256_mul_ps(_mm256_maskload_ps(gamma + body, m),
                                                                       _mm256_mul_ps(_mm256_maskload_ps(x + body, m), r)));
        }
}

/* silu(g) * u = g * u / (1 + e^-g); e^-g is +inf for g < -88.7, giving -0 * u, as the limit. */
static inline __m256 silu_mul_ps(__m256 g, __m256 u) {
        __m256 d = _mm256_add_ps(_mm256_set1_ps(1.0f), exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g)));
        return _mm256_div_ps(_mm256_mul_ps(g, u), d);
}

/* a (n) + b (n) -> out (n), may alias; see kernels.h. */
void dsa_add_f32_avx2(float *out, const float *a, const float *b, size_t n) {
        size_t i = 0;

        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
        if (i < n) {
                __m256i m = tail_mask(n - i);
                _mm256_maskstore_ps(out + i, m, _mm256_add_ps(_mm256_maskload_ps(a + i, m),
                                                              _mm256_maskload_ps(b + i, m)));
        }
}

/* Pairs swapped with vpermilps within each 128-bit lane, then x c + swapped s; HS even, so a
 * masked tail holds whole pairs. */
void dsa_rope_f32_avx2(float *x, size_t n, size_t HS, const float *c, const float *s) {
        for (size_t v = 0; v < n; v++)
                for (size_t d = 0; d < HS; d += 8) {
                        const __m256i m = tail_mask(HS - d < 8 ? HS - d : 8);
                        float *p = x + v * HS + d;
                        const __m256 xv = _mm256_maskload_ps(p, m), xs = _mm256_permute_ps(xv, 0xB1);
                        const __m256 a = _mm256_mul_ps(xv, _mm256_maskload_ps(c + d, m));
                        const __m256 b = _mm256_mul_ps(xs, _mm256_maskload_ps(s + d, m));
                        _mm256_maskstore_ps(p, m, _mm256_add_ps(a, b));
                }
}

void dsa_silu_mul_f32_avx2(float *out, const float *gate, const float *up, size_t n) {
        size_t i = 0;

        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(out + i, silu_mul_ps(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
        if (i < n) {
                __m256i m = tail_mask(n - i);
                _mm256_maskstore_ps(out + i, m, silu_mul_ps(_mm256_maskload_ps(gate + i, m),
                                                            _mm256_maskload_ps(up + i, m)));
        }
}

void dsa_gelu_erf_f32_avx2(float *x, size_t n) {
        size_t i = 0;

        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(x + i, gelu_erf_ps(_mm256_loadu_ps(x + i)));
        if (i < n) {
                __m256i m = tail_mask(n - i);
                _mm256_maskstore_ps(x + i, m, gelu_erf_ps(_mm256_maskload_ps(x + i, m)));
        }
}

void dsa_gelu_tanh_f32_avx2(float *x, size_t n) {
        size_t i = 0;

        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(x + i, gelu_tanh_ps(_mm256_loadu_ps(x + i)));
        if (i < n) {
                __m256i m = tail_mask(n - i);
                _mm256_maskstore_ps(x + i, m, gelu_tanh_ps(_mm256_maskload_ps(x + i, m)));
        }
}

/* One row of C >= 1 in place: max, then exp(x - max) stored; returns 1 / their sum. */
static float softmax_row_exp(float *x, size_t C) {
        const size_t rem = C % 8, body = C - rem;
        const __m256i m = tail_mask(rem);
        const __m256 ninf = _mm256_set1_ps(-INFINITY);
        __m256 vmax = ninf, sum = _mm256_setzero_ps();

        for (size_t c = 0; c < body; c += 8)
                vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + c));
        if (rem)
                vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + body, m),
                                                             _mm256_castsi256_ps(m)));
        __m256 max = _mm256_set1_ps(hmax(vmax));

        for (size_t c = 0; c < body; c += 8) {
                __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), max));
                sum = _mm256_add_ps(sum, e);
                _mm256_storeu_ps(x + c, e);
        }
        if (rem) {
                __m256 e = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + body, m), max));
                e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
                sum = _mm256_add_ps(sum, e);
                _mm256_maskstore_ps(x + body, m, e);
        }
        return 1.0f / hsum(sum);
}

/* One row of C in place: softmax_row_exp, then one multiply. */
static void softmax_row(float *x, size_t C) {
        const size_t rem = C % 8, body = C - rem;
        const __m256i m = tail_mask(rem);

        if (C == 0)
                return;
        const __m256 inv = _mm256_set1_ps(softmax_row_exp(x, C));
        for (size_t c = 0; c < body; c += 8)
                _mm256_storeu_ps(x + c, _mm256_mul_ps(_mm256_loadu_ps(x + c), inv));
        if (rem)
                _mm256_maskstore_ps(x + body, m, _mm256_mul_ps(_mm256_maskload_ps(x + body, m), inv));
}

void dsa_softmax_f32_avx2(float *x, size_t N, size_t C) {
        for (size_t n = 0; n < N; n++)
                softmax_row(x + n * C, C);
}

#define SUM_ROWS 16 /* rows of softmax_sum a pass of the sums takes */
#define EXP_ROWS 4  /* rows whose max and exps run interleaved (16 registers) */

/* softmax_row_exp of R rows of C at once, as the AVX-512 one: the same operations in the same
 * order per row, so the same bits. */
static inline __attribute__((always_inline)) void softmax_rows_exp(float *x, size_t C, float *inv, const size_t R) {
        const __m256 ninf = _mm256_set1_ps(-INFINITY);
        __m256 vmax[EXP_ROWS], sum[EXP_ROWS], max[EXP_ROWS];

        _Pragma("GCC unroll 4") for (size_t n = 0; n < R; n++)
                vmax[n] = ninf, sum[n] = _mm256_setzero_ps();
        for (size_t c = 0; c < C; c += 8) {
                const __m256i m = tail_mask(C - c < 8 ? C - c : 8);
                _Pragma("GCC unroll 4") for (size_t n = 0; n < R; n++) {
                        const float *xr = x + n * C + c;
                        vmax[n] = _mm256_max_ps(vmax[n], c + 8 <= C ? _mm256_loadu_ps(xr)
                                                                   : _mm256_blendv_ps(ninf, _mm256_maskload_ps(xr, m),
                                                                                      _mm256_castsi256_ps(m)));
                }
        }
        _Pragma("GCC unroll 4") for (size_t n = 0; n < R; n++)
                max[n] = _mm256_set1_ps(hmax(vmax[n]));
        for (size_t c = 0; c < C; c += 8) {
                const __m256i m = tail_mask(C - c < 8 ? C - c : 8);
                _Pragma("GCC unroll 4") for (size_t n = 0; n < R; n++) {
                        float *xr = x + n * C + c;
                        if (c + 8 <= C) {
                                const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(xr), max[n]));
                                sum[n] = _mm256_add_ps(sum[n], e);
                                _mm256_storeu_ps(xr, e);
                        } else {
                                __m256 e = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(xr, m), max[n]));
                                e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
                                sum[n] = _mm256_add_ps(sum[n], e);
                                _mm256_maskstore_ps(xr, m, e);
                        }
                }
        }
        _Pragma("GCC unroll 4") for (size_t n = 0; n < R; n++)
                inv[n] = 1.0f / hsum(sum[n]);
}

/* As the AVX-512 one: each row's exps and 1/sum (EXP_ROWS rows interleaved), then acc += e inv
 * row by row in one pass over acc, the product kept from fusing into the add. */
void dsa_softmax_sum_f32_avx2(float *acc, float *x, size_t N, size_t C) {
        float inv[SUM_ROWS];

        for (size_t n0 = 0; n0 < N && C > 0; n0 += SUM_ROWS) {
                const size_t nr = N - n0 < SUM_ROWS ? N - n0 : SUM_ROWS;
                size_t n = 0;
                for (; n + EXP_ROWS <= nr; n += EXP_ROWS)
                        softmax_rows_exp(x + (n0 + n) * C, C, inv + n, EXP_ROWS);
                for (; n < nr; n++)
                        softmax_rows_exp(x + (n0 + n) * C, C, inv + n, 1);
                for (size_t c = 0; c < C; c += 8) {
                        const __m256i m = tail_mask(C - c < 8 ? C - c : 8);
                        __m256 a = _mm256_maskload_ps(acc + c, m);
                        for (size_t k = 0; k < nr; k++) {
                                __m256 p = _mm256_mul_ps(_mm256_maskload_ps(x + (n0 + k) * C + c, m),
                                                         _mm256_set1_ps(inv[k]));
                                __asm__("" : "+x"(p));
                                a = _mm256_add_ps(a, p);
                        }
                        _mm256_maskstore_ps(acc + c, m, a);
                }
        }
}

void dsa_f16_to_f32_avx2(float *dst, const uint16_t *src, size_t n) {
        size_t i = 0;

        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (src + i))));
        for (; i < n; i++) /* the reference is bit-exact with F16C, NaN payloads included */
                dst[i] = dsa__f16_to_f32_one(src[i]);
}

void dsa_bf16_to_f32_avx2(float *dst, const uint16_t *src, size_t n) {
        size_t i = 0;

        for (; i + 8 <= n; i += 8) {
                __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *) (src + i)));
                _mm256_storeu_si256((__m256i *) (dst + i), _mm256_slli_epi32(w, 16));
        }
        for (; i < n; i++) {
                uint32_t bits = (uint32_t) src[i] << 16;
                memcpy(&dst[i], &bits, sizeof(float));
        }
}

/* See kernels.h for the layout, x86/attention-blocked.h for the method: blocks of query rows,
 * scores and the weighted sum of values both on the 6 x 16 GEMM microkernel. */
void dsa_attention_f32_avx2(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                            size_t ldk, const float *v, size_t ldv, const uint8_t *valid, size_t T,
                            size_t HS, float scale, float *probs, float *scratch) {
        attention_blocked(out, ldo, q, ldq, k, ldk, v, ldv, valid, T, HS, scale, probs, scratch,
                          DSA__GEMM_NR_AVX2, DSA__GEMM_MR_AVX2, dsa__gemm_panel_f32_avx2, softmax_row);
}

const struct dsa_kernels dsa__kernels_avx2 = {
        .isa = DSA_ISA_AVX2,
        .name = "avx2",
        .layernorm_f32 = dsa_layernorm_f32_avx2,
        .rmsnorm_f32 = dsa_rmsnorm_f32_avx2,
        .add_f32 = dsa_add_f32_avx2,
        .silu_mul_f32 = dsa_silu_mul_f32_avx2,
        .rope_f32 = dsa_rope_f32_avx2,
        .gelu_erf_f32 = dsa_gelu_erf_f32_avx2,
        .gelu_tanh_f32 = dsa_gelu_tanh_f32_avx2,
        .softmax_f32 = dsa_softmax_f32_avx2,
        .softmax_sum_f32 = dsa_softmax_sum_f32_avx2,
        .f16_to_f32 = dsa_f16_to_f32_avx2,
        .bf16_to_f32 = dsa_bf16_to_f32_avx2,
        .attention_f32 = dsa_attention_f32_avx2,
};
