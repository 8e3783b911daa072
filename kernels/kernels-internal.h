/* Declarations shared between the kernel files but not with the rest of dsa: every variant of
 * every kernel, the per-ISA table constructors that dispatch.c calls, and the small scalar
 * helpers the SIMD files reuse for their tails. */
#pragma once

#include "kernels.h"

/* Scalar references, ref.c. The SIMD variants are tested against these. */
void dsa_layernorm_f32_ref(float *out, const float *inp, const float *gamma, const float *beta,
                           size_t N, size_t C, float eps);
void dsa_gelu_erf_f32_ref(float *x, size_t n);
void dsa_gelu_tanh_f32_ref(float *x, size_t n);
void dsa_softmax_f32_ref(float *x, size_t N, size_t C);
void dsa_f16_to_f32_ref(float *dst, const uint16_t *src, size_t n);
void dsa_bf16_to_f32_ref(float *dst, const uint16_t *src, size_t n);
void dsa_attention_f32_ref(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                           size_t ldk, const float *v, size_t ldv, const uint8_t *valid, size_t T,
                           size_t HS, float scale, float *probs, float *scratch);

/* One IEEE half (any value: subnormal, inf, nan, -0) to fp32, bit for bit. */
float dsa__f16_to_f32_one(uint16_t h);

/* AVX2 + FMA + F16C, x86/avx2.c. */
void dsa_layernorm_f32_avx2(float *out, const float *inp, const float *gamma, const float *beta,
                            size_t N, size_t C, float eps);
void dsa_gelu_erf_f32_avx2(float *x, size_t n);
void dsa_gelu_tanh_f32_avx2(float *x, size_t n);
void dsa_softmax_f32_avx2(float *x, size_t N, size_t C);
void dsa_f16_to_f32_avx2(float *dst, const uint16_t *src, size_t n);
void dsa_bf16_to_f32_avx2(float *dst, const uint16_t *src, size_t n);
void dsa_attention_f32_avx2(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                            size_t ldk, const float *v, size_t ldv, const uint8_t *valid, size_t T,
                            size_t HS, float scale, float *probs, float *scratch);

/* AVX-512 F/BW/DQ/VL, x86/avx512.c. */
void dsa_layernorm_f32_avx512(float *out, const float *inp, const float *gamma, const float *beta,
                              size_t N, size_t C, float eps);
void dsa_gelu_erf_f32_avx512(float *x, size_t n);
void dsa_gelu_tanh_f32_avx512(float *x, size_t n);
void dsa_softmax_f32_avx512(float *x, size_t N, size_t C);
void dsa_f16_to_f32_avx512(float *dst, const uint16_t *src, size_t n);
void dsa_bf16_to_f32_avx512(float *dst, const uint16_t *src, size_t n);
void dsa_attention_f32_avx512(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                              size_t ldk, const float *v, size_t ldv, const uint8_t *valid,
                              size_t T, size_t HS, float scale, float *probs, float *scratch);

/* The complete table of each ISA; dispatch.c decides whether the CPU may use it. */
extern const struct dsa_kernels dsa__kernels_ref;
extern const struct dsa_kernels dsa__kernels_avx2;
extern const struct dsa_kernels dsa__kernels_avx512;
