/* Declarations shared between the kernel files but not with the rest of dsa: every variant of
 * every kernel, the per-ISA table constructors that dispatch.c calls, and the small scalar
 * helpers the SIMD files reuse for their tails. */
#pragma once

#include <assert.h>

#include "kernels.h"

/* Scalar references, ref.c. The SIMD variants are tested against these. */
void dsa_layernorm_f32_ref(float *out, const float *inp, const float *gamma, const float *beta,
                           size_t N, size_t C, float eps);
void dsa_rmsnorm_f32_ref(float *out, const float *inp, const float *gamma, size_t N, size_t C, float eps);
void dsa_add_f32_ref(float *out, const float *a, const float *b, size_t n);
void dsa_silu_mul_f32_ref(float *out, const float *gate, const float *up, size_t n);
void dsa_rope_f32_ref(float *x, size_t n, size_t HS, const float *c, const float *s);
void dsa_gelu_erf_f32_ref(float *x, size_t n);
void dsa_gelu_tanh_f32_ref(float *x, size_t n);
void dsa_softmax_f32_ref(float *x, size_t N, size_t C);
void dsa_softmax_sum_f32_ref(float *acc, float *x, size_t N, size_t C);
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
void dsa_rmsnorm_f32_avx2(float *out, const float *inp, const float *gamma, size_t N, size_t C, float eps);
void dsa_add_f32_avx2(float *out, const float *a, const float *b, size_t n);
void dsa_silu_mul_f32_avx2(float *out, const float *gate, const float *up, size_t n);
void dsa_rope_f32_avx2(float *x, size_t n, size_t HS, const float *c, const float *s);
void dsa_gelu_erf_f32_avx2(float *x, size_t n);
void dsa_gelu_tanh_f32_avx2(float *x, size_t n);
void dsa_softmax_f32_avx2(float *x, size_t N, size_t C);
void dsa_softmax_sum_f32_avx2(float *acc, float *x, size_t N, size_t C);
void dsa_f16_to_f32_avx2(float *dst, const uint16_t *src, size_t n);
void dsa_bf16_to_f32_avx2(float *dst, const uint16_t *src, size_t n);
void dsa_attention_f32_avx2(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                            size_t ldk, const float *v, size_t ldv, const uint8_t *valid, size_t T,
                            size_t HS, float scale, float *probs, float *scratch);

/* AVX-512 F/BW/DQ/VL, x86/avx512.c. */
void dsa_layernorm_f32_avx512(float *out, const float *inp, const float *gamma, const float *beta,
                              size_t N, size_t C, float eps);
void dsa_rmsnorm_f32_avx512(float *out, const float *inp, const float *gamma, size_t N, size_t C, float eps);
void dsa_add_f32_avx512(float *out, const float *a, const float *b, size_t n);
void dsa_silu_mul_f32_avx512(float *out, const float *gate, const float *up, size_t n);
void dsa_rope_f32_avx512(float *x, size_t n, size_t HS, const float *c, const float *s);
void dsa_gelu_erf_f32_avx512(float *x, size_t n);
void dsa_gelu_tanh_f32_avx512(float *x, size_t n);
void dsa_softmax_f32_avx512(float *x, size_t N, size_t C);
void dsa_softmax_sum_f32_avx512(float *acc, float *x, size_t N, size_t C);
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
 * every k row of it stays 64-byte aligned in the 64-byte aligned block.
 *
 * 16-bit layouts (DSA_WTYPE_F16, DSA_WTYPE_BF16): the same panels of NR columns and C rows,
 * b[j][k][l] = round(weight[j*NR + l][k]) as one uint16_t (IEEE half or bfloat16 bits), the
 * last panel's missing channels +0. The panel stride is C*NR values rounded up to 32 (64 bytes),
 * so every panel starts 64-byte aligned; a k row is NR*2 bytes: 64 for AVX-512 (NR 32, every
 * row aligned), 32 for AVX2 and ref (NR 16, rows alternately 64- and 32-byte aligned, each
 * 16-byte half of it aligned for its vcvtph2ps load). BF16 rows are interleaved: value 2i of a
 * k row is column i, value 2i+1 column NR/2 + i, so the 32-bit lane i of a row loaded whole
 * holds (column i, column NR/2 + i), and a shift left by 16 and a mask of the high halves give
 * columns [0, NR/2) and [NR/2, NR) as fp32 (one load, two integer ops per row).
 *
 * DSA_WTYPE_BF16_DOT: bfloat16 in k pairs for vdpbf16ps: ceil(C/2) pair rows of NR pairs,
 * b[j][k/2][l][k%2] = bf16(weight[j*NR + l][k]), so the 32-bit lane l of a pair row is
 * (w[l][k] low half, w[l][k+1] high half); for odd C the last pair's high halves are +0. The
 * panel stride is 2*ceil(C/2)*NR values rounded up to 32. A K block starting at an even k0
 * starts k0*NR values into its panel in every layout (k0*NR floats for fp32), which is all the
 * driver needs; it keeps k0 even for BF16_DOT. */

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

/* The panel loops of 16-bit panels (layouts above), the same contract as
 * dsa__gemm_panel_f32_fn with b the panel's first k row of the block (k pair row for
 * BF16_DOT, kc may be odd only in the last block). F16 and BF16 widen each weight exactly to
 * fp32 and then compute exactly as the fp32 loop of the same ISA (same k order, same FMAs), so
 * their result is the fp32 GEMM's on the rounded weights. BF16_DOT rounds the activations to
 * bfloat16 too (dsa__f32_to_bf16_dot_one) and sums each k pair as vdpbf16ps does: per output,
 * acc = fma(x[k+1], w[k+1], acc) then acc = fma(x[k], w[k], acc) (products of bf16 are exact
 * in fp32), denormal inputs read as 0 and denormal results flushed to 0, round to nearest even
 * throughout; see dsa__gemm_panel_bf16dot_ref. */
typedef void dsa__gemm_panel_u16_fn(float *out, size_t ldo, const float *inp, size_t ldi,
                                    const uint16_t *b, size_t N, size_t kc, size_t nr,
                                    const float *bias, bool first, enum dsa_epilogue ep);

dsa__gemm_panel_u16_fn dsa__gemm_panel_f16_ref;
dsa__gemm_panel_u16_fn dsa__gemm_panel_bf16_ref;
dsa__gemm_panel_u16_fn dsa__gemm_panel_bf16dot_ref;
dsa__gemm_panel_u16_fn dsa__gemm_panel_f16_avx2;
dsa__gemm_panel_u16_fn dsa__gemm_panel_bf16_avx2;
dsa__gemm_panel_u16_fn dsa__gemm_panel_f16_avx512;
dsa__gemm_panel_u16_fn dsa__gemm_panel_bf16_avx512;
/* AVX-512 F/BW/DQ/VL + AVX512-BF16 (function target attribute, x86/gemm-avx512.c). */
dsa__gemm_panel_u16_fn dsa__gemm_panel_bf16dot_avx512bf16;

/* K block of each variant (the most k rows one panel call gets). */
#define DSA__GEMM_KC_REF 256
#define DSA__GEMM_KC_AVX2 768
#define DSA__GEMM_KC_AVX512 512

/* fp32 -> bfloat16 as vcvtneps2bf16 does (the activations of BF16_DOT): round to nearest
 * even, but a denormal input becomes a signed zero (DAZ); NaN quieted. */
uint16_t dsa__f32_to_bf16_dot_one(float f);
/* Whether this CPU runs dsa__gemm_panel_bf16dot_avx512bf16 (AVX-512 and AVX512-BF16). */
bool dsa__cpu_has_avx512bf16(void);

/* dsa_packed_f32_new for the microkernel of a given ISA, so tests can run each variant:
 * -EOPNOTSUPP when it was not built or this CPU cannot run it. */
int dsa__packed_f32_new_isa(enum dsa_isa isa, const float *weight, size_t OC, size_t C,
                            struct dsa_packed_f32 **ret);
/* The same for any storage type, from fp32 weight_f32 (rounded) or already rounded 16-bit
 * weight_u16 (exactly one of them non-NULL unless OC*C == 0; u16 only for 16-bit types, bf16
 * bits for BF16_DOT). -EOPNOTSUPP also for a type the ISA has no loop for (BF16_DOT: ref, and
 * AVX512 on CPUs with AVX512-BF16). */
int dsa__packed_new_isa_typed(enum dsa_isa isa, enum dsa_wtype type, const float *weight_f32,
                              const uint16_t *weight_u16, size_t OC, size_t C,
                              struct dsa_packed_f32 **ret);
enum dsa_isa dsa__packed_f32_isa(const struct dsa_packed_f32 *p);

/* ---- Driver pieces shared by the packed GEMMs (gemm-packed.c, gemm-sparse.c, gemm-q8.c). */

/* The argument checks of a packed GEMM call (our callers' invariants, hence asserts): columns
 * [oc0, oc1) of OC on panel boundaries of NR columns (or oc1 = OC), so a panel is never shared
 * between two callers splitting [0, OC); row strides ldo and ldi cover oc1 and the C values a
 * row is read for; a known epilogue. Returns the panels [*ret_p0, *ret_p1) the columns cover. */
static inline void dsa__gemm_panels(size_t N, size_t C, size_t OC, size_t NR, size_t ldo,
                                    size_t ldi, size_t oc0, size_t oc1, enum dsa_epilogue ep,
                                    size_t *ret_p0, size_t *ret_p1) {
        assert(oc0 <= oc1 && oc1 <= OC);
        assert((oc0 % NR == 0 || oc0 == oc1) && (oc1 % NR == 0 || oc1 == OC));
        assert(N <= 1 || (ldo >= oc1 && ldi >= C));
        assert((unsigned) ep <= DSA_EPILOGUE_GELU_TANH);
        *ret_p0 = oc0 / NR;
        *ret_p1 = oc1 / NR + (oc1 % NR != 0);
}

/* K blocks of equal size, at most kc_max: C = 3072 as 4 x 768, C = 1000 (kc_max 768) as
 * 2 x 500; C = 0 as one empty block. Returns the block size, the number of blocks in
 * *ret_nkb. */
static inline size_t dsa__gemm_k_blocks(size_t C, size_t kc_max, size_t *ret_nkb) {
        const size_t nkb = C == 0 ? 1 : C / kc_max + (C % kc_max != 0);

        *ret_nkb = nkb;
        return C / nkb + (C % nkb != 0);
}

/* ep on the n values of x with the GELUs of table k: the reference microkernels' epilogue on a
 * finished row (k = &dsa__kernels_ref), and the dense driver's pass over out for C = 0. */
static inline void dsa__epilogue_f32(const struct dsa_kernels *k, float *x, size_t n,
                                     enum dsa_epilogue ep) {
        if (ep == DSA_EPILOGUE_GELU_ERF)
                k->gelu_erf_f32(x, n);
        else if (ep == DSA_EPILOGUE_GELU_TANH)
                k->gelu_tanh_f32(x, n);
}
