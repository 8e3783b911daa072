/* Vector math shared by the AVX2 + FMA kernel files (x86/avx2.c, x86/gemm-*avx2.c), one copy of
 * each helper: ragged-tail masks, horizontal reductions, exp() and the two GELUs. exp() is
 * Cephes-style (range reduction by ln 2, degree-5 polynomial, relative error ~1e-7); erf() is
 * Abramowitz-Stegun 7.1.26 (absolute error 1.5e-7), evaluated in its erfc form so GELU of
 * negative inputs loses no digits to cancellation. Include only from files compiled with
 * -mavx2 -mfma. */
#pragma once

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

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

/* e^x. Below ln(FLT_MIN) the result is exactly 0 (so exp(-inf) = 0 and a masked score never
 * leaks weight), above 88.72 it is +inf, and in between it saturates at e^88 so that 2^n stays
 * a normal float; NaN stays NaN (min returns its second operand when one is NaN, so x goes
 * second). The lanes below ln(FLT_MIN) are computed as e^0 before they are zeroed: clamped to
 * ln(FLT_MIN) instead, p * 2^-126 can come out subnormal, and a subnormal result costs a
 * microcode assist of ~100 cycles on Intel cores (masked keys made softmax rows 3x slower). */
static inline __m256 exp_ps(__m256 x) {
        const __m256 lo = _mm256_set1_ps(-87.33654475f), hi = _mm256_set1_ps(88.72283906f);
        __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        __m256 overflow = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
        __m256 n, r, p;
        __m256i e;

        x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_blendv_ps(x, _mm256_setzero_ps(), underflow));
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
