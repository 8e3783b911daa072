/* AVX-512 (F/BW/DQ/VL) kernels, 16 floats a vector; the same algorithms as x86/avx2.c, so the
 * two stay easy to compare. Ragged tails use mask registers: _mm512_maskz_loadu_ps reads
 * nothing in the masked lanes (no fault past the end of a row) and returns 0 there, and
 * _mm512_mask_storeu_ps writes only the active lanes. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../kernels-internal.h"

/* Lanes [0, n) set, n in [0, 16]. */
static inline __mmask16 tail_mask(size_t n) {
        return (__mmask16) ((1u << n) - 1);
}

/* The four horizontal sums of a, b, c, d, in that order: halve each to 8 lanes, then the
 * hadd tree of the AVX2 file. */
static inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
        __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
        __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
        __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
        __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
        __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
        return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* e^x, as exp_ps in x86/avx2.c: exactly 0 below ln(FLT_MIN), +inf above 88.72, saturated at
 * e^88 in between, NaN kept. */
static inline __m512 exp_ps(__m512 x) {
        const __m512 lo = _mm512_set1_ps(-87.33654475f), hi = _mm512_set1_ps(88.72283906f);
        __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
        __mmask16 overflow = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
        __m512 n, r, p;
        __m512i e;

        x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(lo, x));
        n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);

        p = _mm512_set1_ps(1.9875691500e-4f);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
        p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));

        e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
        p = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
        p = _mm512_mask_mov_ps(p, underflow, _mm512_setzero_ps());
        return _mm512_mask_mov_ps(p, overflow, _mm512_set1_ps(INFINITY));
}

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

/* 0.5*x*(1+erf(x/sqrt2)) in erfc form, as gelu_erf_ps in x86/avx2.c. */
static inline __m512 gelu_erf_ps(__m512 x) {
        __m512 a = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps((float) M_SQRT1_2));
        __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                                 _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
        __m512 p = _mm512_set1_ps(1.061405429f);

        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
        p = _mm512_mul_ps(p, t);
        __m512 halfy = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_set1_ps(0.5f)),
                                     exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a))));
        __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
        /* mask_blend takes the second operand where the mask is set */
        __m512 f = _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(1.0f), halfy), halfy);
        return _mm512_mul_ps(x, f);
}

/* x/(1+exp(-2u)), u = sqrt(2/pi)*(x+0.044715x^3), as gelu_tanh_ps in x86/avx2.c. */
static inline __m512 gelu_tanh_ps(__m512 x) {
        const __m512 k = _mm512_set1_ps(-2.0f * 0.7978845608028654f);
        __m512 x2 = _mm512_mul_ps(x, x);
        __m512 u = _mm512_mul_ps(_mm512_fmadd_ps(_mm512_mul_ps(x2, _mm512_set1_ps(0.044715f)), x, x), k);
        return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_ps(u)));
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

/* One row of C in place: max, exp(x - max) stored with its sum, then one multiply. */
static void softmax_row(float *x, size_t C) {
        const size_t rem = C % 16, body = C - rem;
        const __mmask16 m = tail_mask(rem);
        __m512 vmax = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();

        if (C == 0)
                return;
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
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));

        for (size_t c = 0; c < body; c += 16)
                _mm512_storeu_ps(x + c, _mm512_mul_ps(_mm512_loadu_ps(x + c), inv));
        if (rem)
                _mm512_mask_storeu_ps(x + body, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + body), inv));
}

void dsa_softmax_f32_avx512(float *x, size_t N, size_t C) {
        for (size_t n = 0; n < N; n++)
                softmax_row(x + n * C, C);
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

/* Dot products of one query row with four key rows, HS values each, the last HS % 16 through
 * masked loads of both operands. */
static inline __m128 dot4(const float *q, const float *k0, const float *k1, const float *k2,
                          const float *k3, size_t HS, __mmask16 m) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        const size_t body = HS & ~(size_t) 15;
        size_t d = 0;

        for (; d < body; d += 16) {
                __m512 qv = _mm512_loadu_ps(q + d);
                a0 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + d), a0);
                a1 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k1 + d), a1);
                a2 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k2 + d), a2);
                a3 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k3 + d), a3);
        }
        if (d < HS) {
                __m512 qv = _mm512_maskz_loadu_ps(m, q + d);
                a0 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k0 + d), a0);
                a1 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k1 + d), a1);
                a2 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k2 + d), a2);
                a3 = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(m, k3 + d), a3);
        }
        return hsum4(a0, a1, a2, a3);
}

/* out[0, HS) = sum_j p[j] * v[j], skipping keys of weight 0; 64 columns at a time, then 16,
 * then a masked tail that writes nothing past HS. */
static inline void weighted_sum(float *out, const float *p, const float *v, size_t ldv, size_t T,
                                size_t HS, __mmask16 m) {
        size_t d = 0;

        for (; d + 64 <= HS; d += 64) {
                __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
                __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
                for (size_t j = 0; j < T; j++) {
                        if (p[j] == 0.0f)
                                continue;
                        const float *vj = v + j * ldv + d;
                        __m512 pj = _mm512_set1_ps(p[j]);
                        a0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj), a0);
                        a1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16), a1);
                        a2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 32), a2);
                        a3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 48), a3);
                }
                _mm512_storeu_ps(out + d, a0);
                _mm512_storeu_ps(out + d + 16, a1);
                _mm512_storeu_ps(out + d + 32, a2);
                _mm512_storeu_ps(out + d + 48, a3);
        }
        for (; d + 16 <= HS; d += 16) {
                __m512 a = _mm512_setzero_ps();
                for (size_t j = 0; j < T; j++)
                        if (p[j] != 0.0f)
                                a = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_loadu_ps(v + j * ldv + d), a);
                _mm512_storeu_ps(out + d, a);
        }
        if (d < HS) {
                __m512 a = _mm512_setzero_ps();
                for (size_t j = 0; j < T; j++)
                        if (p[j] != 0.0f)
                                a = _mm512_fmadd_ps(_mm512_set1_ps(p[j]),
                                                    _mm512_maskz_loadu_ps(m, v + j * ldv + d), a);
                _mm512_mask_storeu_ps(out + d, m, a);
        }
}

/* See kernels.h and dsa_attention_f32_avx2: the same steps, 16 lanes wide. */
void dsa_attention_f32_avx512(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                              size_t ldk, const float *v, size_t ldv, const uint8_t *valid,
                              size_t T, size_t HS, float scale, float *probs, float *scratch) {
        const __mmask16 m = tail_mask(HS % 16);
        const __m128 vscale = _mm_set1_ps(scale);
        size_t nvalid = 0;

        for (size_t j = 0; j < T; j++)
                nvalid += !valid || valid[j];

        for (size_t i = 0; i < T; i++) {
                const float *qi = q + i * ldq;
                float *p = probs ? probs + i * T : scratch;
                size_t j = 0;

                if (nvalid == 0) {
                        for (j = 0; j < T; j++)
                                p[j] = 1.0f / (float) T;
                        weighted_sum(out + i * ldo, p, v, ldv, T, HS, m);
                        continue;
                }

                for (; j + 4 <= T; j += 4) {
                        const float *kj = k + j * ldk;
                        if (valid && !(valid[j] | valid[j + 1] | valid[j + 2] | valid[j + 3]))
                                continue; /* padding: set to -inf below, no dot products */
                        __m128 s = dot4(qi, kj, kj + ldk, kj + 2 * ldk, kj + 3 * ldk, HS, m);
                        _mm_storeu_ps(p + j, _mm_mul_ps(s, vscale));
                }
                for (; j < T; j++) {
                        const float *kj = k + j * ldk;
                        __m128 s = dot4(qi, kj, kj, kj, kj, HS, m);
                        p[j] = _mm_cvtss_f32(s) * scale;
                }
                if (valid)
                        for (j = 0; j < T; j++)
                                if (!valid[j])
                                        p[j] = -INFINITY;
                softmax_row(p, T);
                weighted_sum(out + i * ldo, p, v, ldv, T, HS, m);
        }
}

const struct dsa_kernels dsa__kernels_avx512 = {
        .isa = DSA_ISA_AVX512,
        .name = "avx512",
        .layernorm_f32 = dsa_layernorm_f32_avx512,
        .gelu_erf_f32 = dsa_gelu_erf_f32_avx512,
        .gelu_tanh_f32 = dsa_gelu_tanh_f32_avx512,
        .softmax_f32 = dsa_softmax_f32_avx512,
        .f16_to_f32 = dsa_f16_to_f32_avx512,
        .bf16_to_f32 = dsa_bf16_to_f32_avx512,
        .attention_f32 = dsa_attention_f32_avx512,
};
