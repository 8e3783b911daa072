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

/* ---- Pre-packed fp32 GEMM, gemm-packed.c and x86/gemm-*.c.
 *
 * Packed layout (every ISA): the (OC,C) weight is cut into ceil(OC/NR) panels of NR output
 * channels; panel j holds C rows of NR floats, b[j][k][l] = weight[j*NR + l][k], the last
 * panel's missing channels zero. A panel is C*NR*4 bytes, a multiple of 64, so every panel and
 * every k row of it stays 64-byte aligned in the 64-byte aligned block. */

/* One K block of one panel against rows [0, N) of inp, the per-ISA inner loops:
 * inp (N, ldi) already offset to the block's first column, b the panel's first k row of the
 * block (kc rows of NR floats, 64-byte aligned), out (N, ldo) offset to the panel's first
 * column, nr <= NR the columns of out written. first: out = bias (nr, or 0 when NULL) + inp*b,
 * else out += inp*b. ep is applied to the sums in registers before they are stored, so the
 * driver passes it with the last K block only (DSA_EPILOGUE_NONE with the others).
 * Also the two products of the blocked attention (x86/attention-blocked.h). */
typedef void dsa__gemm_panel_f32_fn(float *out, size_t ldo, const float *inp, size_t ldi,
                                    const float *b, size_t N, size_t kc, size_t nr,
                                    const float *bias, bool first, enum dsa_epilogue ep);

#define DSA__GEMM_NR_REF 16
#define DSA__GEMM_NR_AVX2 16
#define DSA__GEMM_NR_AVX512 32
/* Rows of out per register tile of the SIMD microkernels. */
#define DSA__GEMM_MR_AVX2 6
#define DSA__GEMM_MR_AVX512 12

/* The blocked attention's bounds over every variant, for dsa_attention_scratch(): the widest
 * panel (NR) and the most query rows per block (4 register tiles of the widest MR). */
#define DSA__ATTENTION_NR_MAX 32
#define DSA__ATTENTION_QB_MAX (4 * DSA__GEMM_MR_AVX512)

dsa__gemm_panel_f32_fn dsa__gemm_panel_f32_ref;
dsa__gemm_panel_f32_fn dsa__gemm_panel_f32_avx2;
dsa__gemm_panel_f32_fn dsa__gemm_panel_f32_avx512;

/* dsa_packed_f32_new for the microkernel of a given ISA, so tests can run each variant:
 * -EOPNOTSUPP when it was not built or this CPU cannot run it. */
int dsa__packed_f32_new_isa(enum dsa_isa isa, const float *weight, size_t OC, size_t C,
                            struct dsa_packed_f32 **ret);
enum dsa_isa dsa__packed_f32_isa(const struct dsa_packed_f32 *p);
