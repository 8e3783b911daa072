/* Numeric kernels: the only place that knows about SIMD. No I/O, no model knowledge.
 *
 * Every kernel has a scalar reference (`_ref`, always built, obviously right) and AVX2 and
 * AVX-512 variants compiled with their own flags. dsa_kernels() returns the table picked once
 * from __builtin_cpu_supports(); tests get each variant's table with dsa_kernels_for().
 * All pointers are to fp32 row-major arrays unless stated; shapes use llm.c's letters:
 * B batch, T tokens, C channels, OC output channels, NH heads, HS head size (C = NH*HS).
 * Kernels never allocate except where a comment says so; scratch comes from the caller. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dsa_isa {
        DSA_ISA_REF,    /* portable scalar C */
        DSA_ISA_AVX2,   /* AVX2 + FMA + F16C */
        DSA_ISA_AVX512, /* AVX-512 F/BW/DQ/VL */
        _DSA_ISA_MAX,
};

struct dsa_kernels {
        enum dsa_isa isa;
        const char *name;

        /* inp (N,C), gamma (C), beta (C) -> out (N,C); out may alias inp.
         * out = (x - mean) / sqrt(var + eps) * gamma + beta, var the biased variance. */
        void (*layernorm_f32)(float *out, const float *inp, const float *gamma, const float *beta,
                              size_t N, size_t C, float eps);

        /* inp (N,C), gamma (C) -> out (N,C); out may alias inp. RMSNorm as Llama's:
         * out = gamma * (x / sqrt(mean(x^2) + eps)). */
        void (*rmsnorm_f32)(float *out, const float *inp, const float *gamma, size_t N, size_t C,
                            float eps);

        /* a (n), b (n) -> out (n); out may alias either: out = a + b (the residual add). */
        void (*add_f32)(float *out, const float *a, const float *b, size_t n);

        /* gate (n), up (n) -> out (n); out may alias either: out = silu(gate) * up, silu(x) =
         * x / (1 + e^-x) (SwiGLU's gating, HF "silu"). */
        void (*silu_mul_f32)(float *out, const float *gate, const float *up, size_t n);

        /* Rotary embedding of adjacent pairs, in place: x (n, HS) n vectors of HS values
         * (contiguous, HS even), c and s (HS) the pair's cosine on both its lanes and its sine
         * negated on the even one, so that x[d] = x[d] c[d] + x[d ^ 1] s[d] (the SIMD variants
         * may fuse one product into the sum: within an ulp or two of the reference's). */
        void (*rope_f32)(float *x, size_t n, size_t HS, const float *c, const float *s);

        /* x (n) in place: exact GELU 0.5*x*(1+erf(x/sqrt(2))) (HF "gelu"). */
        void (*gelu_erf_f32)(float *x, size_t n);

        /* x (n) in place: tanh approximation 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715x^3)))
         * (HF "gelu_new" / "gelu_pytorch_tanh"). */
        void (*gelu_tanh_f32)(float *x, size_t n);

        /* x (N,C) in place, softmax over each row of C. */
        void (*softmax_f32)(float *x, size_t N, size_t C);
        /* acc (C) += the softmax of each row of x (N,C), the rows added in order, each value as
         * softmax_f32 gives it and each add in fp32 (never fused): the same bits as softmax_f32
         * on x followed by acc[c] += x[n][c] for n = 0 .. N-1. x is left with unspecified
         * values (scratch). */
        void (*softmax_sum_f32)(float *acc, float *x, size_t N, size_t C);

        /* src (n) -> dst (n): IEEE half / bfloat16 to fp32. */
        void (*f16_to_f32)(float *dst, const uint16_t *src, size_t n);
        void (*bf16_to_f32)(float *dst, const uint16_t *src, size_t n);

        /* Scaled dot-product attention for one (batch row, head), fused: scores, padding mask,
         * softmax and the weighted sum of values, a block of query rows at a time (no T x T
         * matrix except where probs is requested).
         * q (T, ldq), k (T, ldk), v (T, ldv): row t of head h starts at q + t*ldq (the caller
         * offsets the base by h*HS), HS values each; k and v may be read in place from fused
         * QKV rows (the SIMD variants pack what they need into scratch). valid (T) or NULL:
         * keys with valid[j] == 0 are masked out (weight exactly 0). out (T, ldo), HS values
         * per row. probs (T,T) or NULL: the softmax probabilities, for parity tests and
         * diagnostics. scratch: dsa_attention_scratch(T, HS) floats, any alignment.
         * scale is usually 1/sqrt(HS).
         * A query row whose keys are all masked gets the mean of all values, as PyTorch's
         * softmax over a row of equal large negative scores does. */
        void (*attention_f32)(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                              size_t ldk, const float *v, size_t ldv, const uint8_t *valid, size_t T,
                              size_t HS, float scale, float *probs, float *scratch);
};

/* Floats of scratch attention_f32 needs for T tokens of head size HS, in every variant
 * (about 2 T HS + 50 T); SIZE_MAX when that does not fit in a size_t. */
size_t dsa_attention_scratch(size_t T, size_t HS);

/* One fp32 -> IEEE half / bfloat16, round to nearest even, IEEE semantics: subnormal results
 * kept (gradual underflow), overflow to inf, -0 kept, NaN stays NaN (quiet, top payload bits
 * kept), as F16C's vcvtps2ph with rounding mode 0 and PyTorch's float -> bfloat16. Scalar:
 * for packing and saving weights, not for hot loops. */
uint16_t dsa_f32_to_f16(float f);
uint16_t dsa_f32_to_bf16(float f);

/* The best table this CPU can run; picked once, thread-safe. */
const struct dsa_kernels *dsa_kernels(void);

/* The table of one ISA, or NULL when it was not built or this CPU cannot run it. */
const struct dsa_kernels *dsa_kernels_for(enum dsa_isa isa);

/* inp (N,C) x weight (OC,C)^T + bias (OC or NULL) -> out (N,OC), through OpenBLAS cblas_sgemm.
 * ldo is out's row stride (>= OC), so a caller can write into a column slice. */
void dsa_linear_f32(float *out, size_t ldo, const float *inp, const float *weight, const float *bias,
                    size_t N, size_t C, size_t OC);

/* c (M, ldc) = alpha * a (M, K; row stride lda) x b^T, b (N, K; row stride ldb), through
 * cblas_sgemm: any row strides, so a caller can multiply every s-th row or a column slice. */
void dsa_gemm_nt_f32(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                     size_t N, size_t K, float alpha);

/* Sets the OpenBLAS thread count (n >= 1), so it and our own pool never oversubscribe. */
void dsa_blas_set_threads(int n);

/* ---- Pre-packed fp32 GEMM (weights packed once at model load, as MLAS does; OpenBLAS has no
 * packed-weight API and re-packs the weight matrix on every call, ~15% of a BERT forward). */

/* A weight matrix (OC,C) row-major, repacked into the panel layout of the best microkernel this
 * CPU runs. Created at model load: the one kernel object that allocates. */
struct dsa_packed_f32;

/* Storage (and, for BF16_DOT, compute) type of the packed panels. Whatever the storage, inp,
 * bias and out stay fp32 and the sums are fp32.
 *   F32:  fp32 panels (dsa_packed_f32_new); 4 bytes per weight.
 *   F16:  IEEE half panels, 2 bytes per weight, widened exactly to fp32 in the microkernel
 *         (vcvtph2ps): the result is the fp32 GEMM's on the rounded weights, same k order.
 *   BF16: bfloat16 panels, 2 bytes per weight, widened exactly (a 16-bit shift); the same.
 *   BF16_DOT: bfloat16 panels in k pairs for vdpbf16ps (AVX512-BF16). Numerically NOT the
 *         fp32 GEMM on the rounded weights: the activations are rounded to bfloat16 too
 *         (nearest even, denormals to 0), a relative error of up to 2^-8 each (fp32: 2^-24),
 *         the size of the bf16 weights' own; so an output may move by up to ~2^-8 of
 *         sum_c |x_c w_c| from BF16's (typically far less, the errors having random signs).
 *         Products of two bf16 are exact in fp32; each k pair is added to the fp32 sum with two
 *         roundings, k+1 first; denormal weights and sums are flushed to 0. Twice the
 *         multiply-adds per instruction of the FMA loop. Only the AVX-512 table (on a CPU with
 *         AVX512-BF16) and the reference have it; elsewhere -EOPNOTSUPP.
 *         dsa_packed_f32_default_wtype() says whether to use it. */
enum dsa_wtype {
        DSA_WTYPE_F32,
        DSA_WTYPE_F16,
        DSA_WTYPE_BF16,
        DSA_WTYPE_BF16_DOT,
        _DSA_WTYPE_MAX,
};

/* weight (OC,C) fp32 row-major -> *ret, fp32 panels. 0, -EINVAL, -EOVERFLOW, -ENOMEM. */
int dsa_packed_f32_new(const float *weight, size_t OC, size_t C, struct dsa_packed_f32 **ret);
/* weight (OC,C) fp32 row-major, rounded to type (nearest even, IEEE: subnormals kept, overflow
 * to inf, NaN kept quiet) and packed for the table dsa_kernels() picked. 0, -EINVAL (bad type
 * or pointers), -EOPNOTSUPP (BF16_DOT where that table has no loop for it: a CPU without
 * AVX512-BF16, or DSA_ISA=avx2), -EOVERFLOW, -ENOMEM. */
int dsa_packed_f32_new_typed(const float *weight, size_t OC, size_t C, enum dsa_wtype type,
                             struct dsa_packed_f32 **ret);
/* weight (OC,C) row-major uint16, already IEEE half bits (type F16) or bfloat16 bits (BF16,
 * BF16_DOT), packed as they are: no fp32 copy of the matrix. type F32 is -EINVAL; otherwise as
 * dsa_packed_f32_new_typed. */
int dsa_packed_f32_new_u16(const uint16_t *weight, size_t OC, size_t C, enum dsa_wtype type,
                           struct dsa_packed_f32 **ret);
/* The type to pack weights stored as storage with on this CPU: BF16_DOT for BF16 where the
 * picked kernels are AVX-512 and the CPU has AVX512-BF16, storage itself otherwise. */
enum dsa_wtype dsa_packed_f32_default_wtype(enum dsa_wtype storage);
struct dsa_packed_f32 *dsa_packed_f32_free(struct dsa_packed_f32 *p);
/* The storage type (DSA_WTYPE_F32 for NULL). */
enum dsa_wtype dsa_packed_f32_wtype(const struct dsa_packed_f32 *p);
/* Bytes of the panels (the weight's resident size, padding included; 0 for NULL). */
size_t dsa_packed_f32_bytes(const struct dsa_packed_f32 *p);
/* Column granularity for splitting work: oc0/oc1 passed to dsa_linear_packed_f32 must be
 * multiples of it (oc1 may also be OC). */
size_t dsa_packed_f32_block(const struct dsa_packed_f32 *p);
size_t dsa_packed_f32_rows(const struct dsa_packed_f32 *p); /* OC */
size_t dsa_packed_f32_cols(const struct dsa_packed_f32 *p); /* C */

enum dsa_epilogue {
        DSA_EPILOGUE_NONE,
        DSA_EPILOGUE_GELU_ERF,  /* out = gelu_erf(x W^T + b) */
        DSA_EPILOGUE_GELU_TANH, /* out = gelu_tanh(x W^T + b) */
};

/* inp (N,C) with row stride ldi x W^T + bias (OC or NULL) -> out (N, ldo), only output columns
 * [oc0, oc1), then the epilogue on those columns; any storage type. Single-threaded: callers
 * split [0, OC) across a dsa_threadpool. */
void dsa_linear_packed_f32(float *out, size_t ldo, const float *inp, size_t ldi,
                           const struct dsa_packed_f32 *w, const float *bias, size_t N, size_t oc0,
                           size_t oc1, enum dsa_epilogue ep);

/* ---- Thread pool for intra-op parallelism (GEMM column blocks, attention heads, rows).
 * Named threadpool, not pool: C shares one tag namespace between structs and enums, and
 * engine/model.h's enum dsa_pool (the pooling mode) is public API. */

struct dsa_threadpool;

/* n_threads >= 1 (the caller's thread counts as one: n_threads - 1 workers are started).
 * Idle workers spin for at most ~50 us after a dispatch, then sleep on a futex. */
int dsa_threadpool_new(unsigned n_threads, struct dsa_threadpool **ret);
struct dsa_threadpool *dsa_threadpool_free(struct dsa_threadpool *p);
/* 1 for NULL. */
unsigned dsa_threadpool_threads(const struct dsa_threadpool *p);

/* Calls fn(arg, begin, end) over [0, n) split into chunks of at least grain items (grain 0
 * counts as 1), on the pool's threads and the caller's, and returns when all are done; every
 * index is passed exactly once. p may be NULL (runs inline). Safe to call from several threads
 * at once: a caller that finds the pool busy (another dispatch, or fn itself calling back in)
 * runs its work inline. Returns with fn's writes visible to the caller. */
void dsa_threadpool_for(struct dsa_threadpool *p, size_t n, size_t grain,
                        void (*fn)(void *arg, size_t begin, size_t end), void *arg);

/* Writes the (OC,C) row-major matrix back as fp32 (for saving a model): the original for F32,
 * the rounded weights, exactly widened, for the 16-bit types. */
void dsa_packed_f32_unpack(const struct dsa_packed_f32 *p, float *weight);
