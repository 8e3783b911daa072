/* INT8 GEMM for the linear layers of a quantized model: weights int8 symmetric per output
 * channel, activations int8 symmetric per row, exact int32 accumulation (no saturation
 * anywhere), then one fp32 epilogue per output: scale, bias, optional GELU.
 *
 *   out[n][o] = fma((float) dot(q[n], w[o]), sx[n] * sw[o], bias[o])   (then GELU)
 *
 * dot() is the exact integer sum in every variant, so with DSA_EPILOGUE_NONE the reference,
 * AVX2, AVX-512 VNNI and AMX kernels give the same bits; GELUs differ by the vector GELU's error
 * (kernels.h). Both quantizers round x * (1 / scale) to nearest even, all in fp32:
 *
 *   scale = max|row| / 127.0f         (fp32 division; 0 for an all-zero row)
 *   inv   = scale > 0 ? 1.0f / scale : 0
 *   q     = rne(clamp(x * inv, -127, 127))
 *
 * and every variant of dsa_quantize_rows_q8 gives the same bytes and scales. Inputs must be
 * finite. Values are in [-127, 127]: -128 never occurs (the AVX2 kernel relies on it).
 * Shapes use llm.c's letters: N rows (B*T tokens), C input channels, OC output channels. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/* The largest C accepted: every dot product of values in [-127, 127] then fits an int32
 * (127 * 127 * 131072 < 2^31), the bound the kernels' exactness rests on. */
#define DSA_Q8_MAX_C ((size_t) 131072)

/* w (OC,C) fp32 row-major -> q (OC,C) int8 and scales (OC), per output channel as above
 * (a zero row gets scale 0 and zeros). For model load; scalar, single-threaded. */
void dsa_quantize_weight_q8(int8_t *q, float *scales, const float *w, size_t OC, size_t C);

/* Bytes per quantized activation row the kernels read: C rounded up to a multiple of 4 (the
 * k-group of the packed layout); SIZE_MAX when that does not fit a size_t. The padding bytes
 * are read but multiply zero weights: any value there is harmless, and the quantizer writes 0. */
size_t dsa_q8_row_stride(size_t C);

/* x (N, ldx) fp32, ldx >= C -> q (N, dsa_q8_row_stride(C)) int8 and scales (N).
 * fixed_scale > 0: static quantization, every row with that scale (values clamped to
 * [-127, 127]); fixed_scale == 0: dynamic, each row's own scale = max|x_row| / 127.
 * Padding bytes [C, stride) written as 0. The widest variant this CPU runs (dsa_kernels()'s
 * ISA); every variant gives the same bytes and scales. Thread-safe, no allocation. */
void dsa_quantize_rows_q8(int8_t *q, float *scales, const float *x, size_t ldx, size_t N, size_t C,
                          float fixed_scale);

/* A quantized weight (OC,C) int8 with per-channel scales (OC), repacked once at load into the
 * layout every variant reads (below); the one q8 object that allocates. */
struct dsa_packed_q8;

/* q (OC,C) int8 row-major with values in [-127, 127], scales (OC) -> *ret. Copies both; the
 * microkernel is the one of dsa_kernels()'s ISA. Returns 0, -EINVAL (NULL ret, NULL q or scales
 * with OC*C > 0, a -128 in q), -EOVERFLOW (C > DSA_Q8_MAX_C or a size past SIZE_MAX) or
 * -ENOMEM; *ret is written only on success. */
int dsa_packed_q8_new(const int8_t *q, const float *scales, size_t OC, size_t C,
                      struct dsa_packed_q8 **ret);
/* Accepts NULL; returns NULL. */
struct dsa_packed_q8 *dsa_packed_q8_free(struct dsa_packed_q8 *p);

/* Column granularity for splitting work: the columns one kernel call computes, 16 (ref, AVX2)
 * or 32 (VNNI, AMX); 0 for NULL. oc0/oc1 passed to dsa_linear_packed_q8 must be multiples of
 * 16 (oc1 may also be OC); on multiples of this block no caller computes a half-used tile. */
size_t dsa_packed_q8_block(const struct dsa_packed_q8 *p);
size_t dsa_packed_q8_rows(const struct dsa_packed_q8 *p); /* OC; 0 for NULL */
size_t dsa_packed_q8_cols(const struct dsa_packed_q8 *p); /* C; 0 for NULL */
/* Bytes the object holds (packed weights, scales, the struct), for memory reports. */
size_t dsa_packed_q8_bytes(const struct dsa_packed_q8 *p);
/* Writes the original q (OC,C) and scales (OC) back, bit for bit (for saving a model). */
void dsa_packed_q8_unpack(const struct dsa_packed_q8 *p, int8_t *q, float *scales);

/* q (N, ldq) int8 rows (ldq >= dsa_q8_row_stride(C), values in [-127, 127]) with row scales
 * sx (N), times W^T, + bias (OC or NULL) -> out (N, ldo), only output columns [oc0, oc1), then
 * the epilogue on them; see the formula at the top. Columns outside [oc0, oc1) are never
 * touched. Single-threaded and allocation-free: callers split [0, OC) in blocks across a
 * dsa_threadpool. */
void dsa_linear_packed_q8(float *out, size_t ldo, const int8_t *q, size_t ldq, const float *sx,
                          const struct dsa_packed_q8 *w, const float *bias, size_t N, size_t oc0,
                          size_t oc1, enum dsa_epilogue ep);

/* ---- Internal: the variants, for kernels/ and the tests only.
 *
 * Packed layout (every ISA): the weight is cut into ceil(OC/16) panels of 16 output channels,
 * K in groups of 4 (K4 = dsa_q8_row_stride(C) / 4). Panel j holds K4 groups of 64 bytes,
 * b[j][g][l][i] = q[16j + l][4g + i]: AVX2 reads 32 bytes (8 channels x 4 k) at a time,
 * AVX-512 64. Missing channels and k past C are 0, so the kernels never branch on C. Panels
 * follow each other (panel j at j * K4 * 64); scales are padded with zeros to 16 per panel. */

#define DSA__Q8_NR 16 /* channels per panel */
#define DSA__Q8_KG 4  /* k per group */
/* Rows of out per register tile. */
#define DSA__Q8_MR_AVX2 6
#define DSA__Q8_MR_AVX512 12

/* Rows [0, N) of q against a group of panels: q (N, ldq) rows, sx (N) row scales, xsum (N)
 * each row's sum over all K4*4 bytes (only kernels that need it read it: VNNI), b the group's
 * first panel (the next at b + K4*64), sw its scales, bias its bias or NULL, out (N, ldo) at
 * the group's first column, nr <= the kernel's width (16; 32 for AVX-512) columns written.
 * Computes out = fma((float) dot, sx*sw, bias) then ep, one store per output. */
typedef void dsa__gemm_panel_q8_fn(float *out, size_t ldo, const int8_t *q, size_t ldq,
                                   const float *sx, const int32_t *xsum, const int8_t *b,
                                   const float *sw, const float *bias, size_t N, size_t K4,
                                   size_t nr, enum dsa_epilogue ep);

dsa__gemm_panel_q8_fn dsa__gemm_panel_q8_ref;
dsa__gemm_panel_q8_fn dsa__gemm_panel_q8_avx2;
dsa__gemm_panel_q8_fn dsa__gemm_panel_q8_avx512vnni;
dsa__gemm_panel_q8_fn dsa__gemm_panel_q8_amx;

/* q (N, ldq) -> xsum (N), each row's byte sum over S bytes: the VNNI kernel's row sums. */
typedef void dsa__q8_row_sums_fn(int32_t *xsum, const int8_t *q, size_t ldq, size_t N, size_t S);
dsa__q8_row_sums_fn dsa__q8_row_sums_avx512vnni;

/* Whether the AMX kernel can run: it was built (a compiler with -mamx-int8), the CPU has
 * AMX-TILE and AMX-INT8, the kernel granted this process the tile state (arch_prctl
 * ARCH_REQ_XCOMP_PERM, asked once here), and DSA_Q8_KERNEL is not avx512vnni (the VNNI kernel,
 * to test or compare it on an AMX machine; other values are ignored). */
bool dsa__q8_amx_usable(void);

/* dsa_quantize_rows_q8 of one variant. */
typedef void dsa__quantize_rows_q8_fn(int8_t *q, float *scales, const float *x, size_t ldx,
                                      size_t N, size_t C, float fixed_scale);
dsa__quantize_rows_q8_fn dsa__quantize_rows_q8_ref;
dsa__quantize_rows_q8_fn dsa__quantize_rows_q8_avx2;
dsa__quantize_rows_q8_fn dsa__quantize_rows_q8_avx512;

/* The quantizer of an ISA, or NULL when it was not built or this CPU cannot run it. */
dsa__quantize_rows_q8_fn *dsa__quantize_rows_q8_for(enum dsa_isa isa);

/* dsa_packed_q8_new for the kernel of a given ISA, so tests can run each variant:
 * DSA_ISA_AVX512 gets the AMX kernel where dsa__q8_amx_usable(), else the VNNI kernel where the
 * CPU has AVX-512 VNNI, else the AVX2 one. -EOPNOTSUPP when the ISA was not built or this CPU
 * cannot run it. */
int dsa__packed_q8_new_isa(enum dsa_isa isa, const int8_t *q, const float *scales, size_t OC,
                           size_t C, struct dsa_packed_q8 **ret);
/* "ref", "avx2", "avx512vnni" or "amx": the microkernel p runs. */
const char *dsa__packed_q8_kernel(const struct dsa_packed_q8 *p);

/* The quantization formula above, one copy for every variant's scalar path: the scale and its
 * inverse from a row's max|x| (fixed_scale > 0 overrides), and one value. */
static inline void dsa__q8_scale(float max_abs, float fixed_scale, float *ret_scale, float *ret_inv) {
        float scale = fixed_scale > 0 ? fixed_scale : max_abs / 127.0f;

        *ret_scale = scale;
        *ret_inv = scale > 0 ? 1.0f / scale : 0.0f;
}

/* The 4 bytes of a k-group of an activation row as one int32, for the kernels' broadcast (a
 * memcpy: the row is not 4-byte aligned when ldq is not a multiple of 4). */
static inline int32_t dsa__q8_load4(const int8_t *p) {
        int32_t v;

        __builtin_memcpy(&v, p, sizeof(v));
        return v;
}

static inline int8_t dsa__q8_one(float x, float inv) {
        float y = x * inv;

        y = y > 127.0f ? 127.0f : y < -127.0f ? -127.0f : y;
        return (int8_t) __builtin_nearbyintf(y); /* the default rounding mode: nearest even */
}
