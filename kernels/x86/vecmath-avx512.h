/* Vector math shared by the AVX-512 kernel files (x86/avx512.c, x86/gemm-*avx512.c), one copy of
 * each helper, the same algorithms as x86/vecmath-avx2.h: ragged-tail masks, exp() and the two
 * GELUs. Include only from files compiled with -mavx512f -mavx512dq -mavx512vl. */
#pragma once

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Lanes [0, n) set, n in [0, 16]. */
static inline __mmask16 tail_mask(size_t n) {
        return (__mmask16) ((1u << n) - 1);
}

/* Lanes [0, min(n, 16)) set, any n: the first vector's mask of a tail n long. */
static inline __mmask16 lanes(size_t n) {
        return n >= 16 ? (__mmask16) 0xffff : (__mmask16) ((1u << n) - 1);
}

/* e^x, as exp_ps in x86/vecmath-avx2.h: exactly 0 below ln(FLT_MIN), +inf above 88.72,
 * saturated at e^88 in between, NaN kept; lanes below ln(FLT_MIN) computed as e^0, never as a
 * subnormal. */
static inline __m512 exp_ps(__m512 x) {
        const __m512 lo = _mm512_set1_ps(-87.33654475f), hi = _mm512_set1_ps(88.72283906f);
        __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
        __mmask16 overflow = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
        __m512 n, r, p;
        __m512i e;

        x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_mask_mov_ps(x, underflow, _mm512_setzero_ps()));
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

/* 0.5*x*(1+erf(x/sqrt2)) in erfc form, as gelu_erf_ps in x86/vecmath-avx2.h. */
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

/* x/(1+exp(-2u)), u = sqrt(2/pi)*(x+0.044715x^3), as gelu_tanh_ps in x86/vecmath-avx2.h. */
static inline __m512 gelu_tanh_ps(__m512 x) {
        const __m512 k = _mm512_set1_ps(-2.0f * 0.7978845608028654f);
        __m512 x2 = _mm512_mul_ps(x, x);
        __m512 u = _mm512_mul_ps(_mm512_fmadd_ps(_mm512_mul_ps(x2, _mm512_set1_ps(0.044715f)), x, x), k);
        return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_ps(u)));
}
