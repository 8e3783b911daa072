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

        /* x (n) in place: exact GELU 0.5*x*(1+erf(x/sqrt(2))) (HF "gelu"). */
        void (*gelu_erf_f32)(float *x, size_t n);

        /* x (n) in place: tanh approximation 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715x^3)))
         * (HF "gelu_new" / "gelu_pytorch_tanh"). */
        void (*gelu_tanh_f32)(float *x, size_t n);

        /* x (N,C) in place, softmax over each row of C. */
        void (*softmax_f32)(float *x, size_t N, size_t C);

        /* src (n) -> dst (n): IEEE half / bfloat16 to fp32. */
        void (*f16_to_f32)(float *dst, const uint16_t *src, size_t n);
        void (*bf16_to_f32)(float *dst, const uint16_t *src, size_t n);

        /* Scaled dot-product attention for one (batch row, head), fused: scores, padding mask,
         * softmax and the weighted sum of values, one query row at a time (no T x T matrix
         * except where probs is requested).
         * q (T, ldq), k (T, ldk), v (T, ldv): row t of head h starts at q + t*ldq (the caller
         * offsets the base by h*HS), HS values each. valid (T) or NULL: keys with valid[j] == 0
         * are masked out (weight exactly 0). out (T, ldo), HS values per row.
         * probs (T,T) or NULL: the softmax probabilities, for parity tests and diagnostics.
         * scratch: at least T floats. scale is usually 1/sqrt(HS).
         * A query row whose keys are all masked gets the mean of all values, as PyTorch's
         * softmax over a row of equal large negative scores does. */
        void (*attention_f32)(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                              size_t ldk, const float *v, size_t ldv, const uint8_t *valid, size_t T,
                              size_t HS, float scale, float *probs, float *scratch);
};

/* The best table this CPU can run; picked once, thread-safe. */
const struct dsa_kernels *dsa_kernels(void);

/* The table of one ISA, or NULL when it was not built or this CPU cannot run it. */
const struct dsa_kernels *dsa_kernels_for(enum dsa_isa isa);

/* inp (N,C) x weight (OC,C)^T + bias (OC or NULL) -> out (N,OC), through OpenBLAS cblas_sgemm.
 * ldo is out's row stride (>= OC), so a caller can write into a column slice. */
void dsa_linear_f32(float *out, size_t ldo, const float *inp, const float *weight, const float *bias,
                    size_t N, size_t C, size_t OC);

/* Sets the OpenBLAS thread count (n >= 1), so it and our own pool never oversubscribe. */
void dsa_blas_set_threads(int n);
