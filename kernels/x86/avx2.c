/* AVX2 + FMA + F16C kernels, 8 floats a vector. Ragged tails go through masked loads and
 * stores (_mm256_maskload_ps never touches the masked lanes' memory, so reading a row that ends
 * at the end of a mapping is safe). exp() is Cephes-style (range reduction by ln 2, degree-5
 * polynomial, relative error ~1e-7); erf() is Abramowitz-Stegun 7.1.26 (absolute error
 * 1.5e-7), evaluated in its erfc form so GELU of negative inputs loses no digits to
 * cancellation. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../kernels-internal.h"

/* Lanes [0, n) set for n in [0, 8]: load 8 ints from tail_table + 8 - n. */
static const int32_t tail_table[16] = { -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0 };

static inline __m256i tail_mask(size_t n) {
        return _mm256_loadu_si256((const __m256i *) (tail_table + 8 - n));
}

static inline float hsum(__m256 v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
}

static inline float hmax(__m256 v) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
}

/* The four horizontal sums of a, b, c, d, in that order. */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
        __m256 ab = _mm256_hadd_ps(a, b); /* a01 a23 b01 b23 | a45 a67 b45 b67 */
        __m256 cd = _mm256_hadd_ps(c, d);
        __m256 abcd = _mm256_hadd_ps(ab, cd); /* a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7 */
        return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* e^x. Below ln(FLT_MIN) the result is exactly 0 (so exp(-inf) = 0 and a masked score never
 * leaks weight), above 88.72 it is +inf, and in between it saturates at e^88 so that 2^n stays
 * a normal float; NaN stays NaN (max/min return their second operand when one is NaN, so x
 * goes second). */
static inline __m256 exp_ps(__m256 x) {
        const __m256 lo = _mm256_set1_ps(-87.33654475f), hi = _mm256_set1_ps(88.72283906f);
        __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        __m256 overflow = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
        __m256 n, r, p;
        __m256i e;

        x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));
        n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        /* r = x - n ln2 in two steps: 0.693359375 has few bits, so n * it is exact. */
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);

        p = _mm256_set1_ps(1.9875691500e-4f);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
        p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));

        /* n is in [-126, 127] after the clamp, so 2^n is a normal float. */
        e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
        p = _mm256_andnot_ps(underflow, p);
        return _mm256_blendv_ps(p, _mm256_set1_ps(INFINITY), overflow);
}

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

/* 0.5*x*(1+erf(x/sqrt2)). With a = |x|/sqrt2 and y = erfc(a) = t*P(t)*exp(-a^2),
 * t = 1/(1+p*a): x >= 0 gives x*(1-y/2), x < 0 gives x*y/2. */
static inline __m256 gelu_erf_ps(__m256 x) {
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 a = _mm256_mul_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps((float) M_SQRT1_2));
        __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                                 _mm256_fmadd_ps(a, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
        __m256 p = _mm256_set1_ps(1.061405429f);

        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
        p = _mm256_mul_ps(p, t);
        __m256 halfy = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_set1_ps(0.5f)),
                                     exp_ps(_mm256_xor_ps(_mm256_mul_ps(a, a), sign)));
        __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
        __m256 f = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), halfy), halfy, neg);
        return _mm256_mul_ps(x, f);
}

/* 0.5*(1+tanh(u)) = 1/(1+exp(-2u)) exactly, so gelu_tanh(x) = x/(1+exp(-2u)) with
 * u = sqrt(2/pi)*(x+0.044715x^3): one exp, relative accuracy everywhere, no cancellation. */
static inline __m256 gelu_tanh_ps(__m256 x) {
        const __m256 k = _mm256_set1_ps(-2.0f * 0.7978845608028654f);
        __m256 x2 = _mm256_mul_ps(x, x);
        __m256 u = _mm256_mul_ps(_mm256_fmadd_ps(_mm256_mul_ps(x2, _mm256_set1_ps(0.044715f)), x, x), k);
        return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp_ps(u)));
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

/* One row of C in place: max, exp(x - max) stored with its sum, then one multiply. */
static void softmax_row(float *x, size_t C) {
        const size_t rem = C % 8, body = C - rem;
        const __m256i m = tail_mask(rem);
        const __m256 ninf = _mm256_set1_ps(-INFINITY);
        __m256 vmax = ninf, sum = _mm256_setzero_ps();

        if (C == 0)
                return;
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
        __m256 inv = _mm256_set1_ps(1.0f / hsum(sum));

        for (size_t c = 0; c < body; c += 8)
                _mm256_storeu_ps(x + c, _mm256_mul_ps(_mm256_loadu_ps(x + c), inv));
        if (rem)
                _mm256_maskstore_ps(x + body, m, _mm256_mul_ps(_mm256_maskload_ps(x + body, m), inv));
}

void dsa_softmax_f32_avx2(float *x, size_t N, size_t C) {
        for (size_t n = 0; n < N; n++)
                softmax_row(x + n * C, C);
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

/* Dot products of one query row with four key rows, HS values each; the last HS % 8 go through
 * a masked load of both operands, so nothing past a row's HS values is read. */
static inline __m128 dot4(const float *q, const float *k0, const float *k1, const float *k2,
                          const float *k3, size_t HS, __m256i m) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        const size_t body = HS & ~(size_t) 7;
        size_t d = 0;

        for (; d < body; d += 8) {
                __m256 qv = _mm256_loadu_ps(q + d);
                a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + d), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + d), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + d), a3);
        }
        if (d < HS) {
                __m256 qv = _mm256_maskload_ps(q + d, m);
                a0 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k0 + d, m), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k1 + d, m), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k2 + d, m), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_maskload_ps(k3 + d, m), a3);
        }
        return hsum4(a0, a1, a2, a3);
}

/* out[0, HS) = sum_j p[j] * v[j], skipping keys of weight 0 (masked, or underflowed, which
 * contribute exactly 0 either way). 32 columns at a time in four accumulators, then 8, then a
 * masked tail that writes nothing past HS (out rows often interleave heads). */
static inline void weighted_sum(float *out, const float *p, const float *v, size_t ldv, size_t T,
                                size_t HS, __m256i m) {
        size_t d = 0;

        for (; d + 32 <= HS; d += 32) {
                __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
                __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
                for (size_t j = 0; j < T; j++) {
                        if (p[j] == 0.0f)
                                continue;
                        const float *vj = v + j * ldv + d;
                        __m256 pj = _mm256_broadcast_ss(p + j);
                        a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a0);
                        a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a1);
                        a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), a2);
                        a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), a3);
                }
                _mm256_storeu_ps(out + d, a0);
                _mm256_storeu_ps(out + d + 8, a1);
                _mm256_storeu_ps(out + d + 16, a2);
                _mm256_storeu_ps(out + d + 24, a3);
        }
        for (; d + 8 <= HS; d += 8) {
                __m256 a = _mm256_setzero_ps();
                for (size_t j = 0; j < T; j++)
                        if (p[j] != 0.0f)
                                a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(v + j * ldv + d), a);
                _mm256_storeu_ps(out + d, a);
        }
        if (d < HS) {
                __m256 a = _mm256_setzero_ps();
                for (size_t j = 0; j < T; j++)
                        if (p[j] != 0.0f)
                                a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j),
                                                    _mm256_maskload_ps(v + j * ldv + d, m), a);
                _mm256_maskstore_ps(out + d, m, a);
        }
}

/* See kernels.h for the layout. Per query row: scores of the valid keys four at a time into
 * scratch (masked keys get -inf and no dot product, which exp_ps turns into exactly 0), the
 * row softmax in place, then the weighted sum of values. */
void dsa_attention_f32_avx2(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                            size_t ldk, const float *v, size_t ldv, const uint8_t *valid, size_t T,
                            size_t HS, float scale, float *probs, float *scratch) {
        const __m256i m = tail_mask(HS % 8);
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

const struct dsa_kernels dsa__kernels_avx2 = {
        .isa = DSA_ISA_AVX2,
        .name = "avx2",
        .layernorm_f32 = dsa_layernorm_f32_avx2,
        .gelu_erf_f32 = dsa_gelu_erf_f32_avx2,
        .gelu_tanh_f32 = dsa_gelu_tanh_f32_avx2,
        .softmax_f32 = dsa_softmax_f32_avx2,
        .f16_to_f32 = dsa_f16_to_f32_avx2,
        .bf16_to_f32 = dsa_bf16_to_f32_avx2,
        .attention_f32 = dsa_attention_f32_avx2,
};
