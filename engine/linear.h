/* Private to engine/: one linear layer's weight in whatever form a variant keeps it (dense
 * fp32/f16/bf16 panels, int8 per output channel, block-sparse fp32), behind one forward call
 * that splits the work across the model's thread pool. The forward pass and the variant tools
 * (engine/variant.c) see only this; the kernels of each form live in kernels/. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

struct dsa_threadpool;
struct dsa_packed_q8;
struct dsa_packed_sparse;

/* How a weight is kept in memory (and in a GGUF variant: see model.c's save). */
enum dsa_wformat {
        DSA_WFORMAT_F32,
        DSA_WFORMAT_F16,
        DSA_WFORMAT_BF16,
        DSA_WFORMAT_Q8,     /* int8, symmetric per output channel; activations int8 per row */
        DSA_WFORMAT_SPARSE, /* fp32, only the 16-channel x 1-input blocks that are not all zero */
        _DSA_WFORMAT_MAX,
};

const char *dsa_wformat_name(enum dsa_wformat f);
/* "f32", "f16", "bf16", "int8", "sparse" -> format; -EINVAL otherwise. */
int dsa_wformat_from_name(const char *s, enum dsa_wformat *ret);

struct dsa__linear {
        enum dsa_wformat fmt;
        size_t OC, C;
        struct dsa_packed_f32 *dense;     /* F32, F16, BF16 */
        struct dsa_packed_q8 *q8;         /* Q8 */
        struct dsa_packed_sparse *sparse; /* SPARSE */
        /* Q8 only: the static activation scale from calibration (every row quantized with it),
         * or 0 for dynamic per-row scales. */
        float act_scale;
};

/* weight (OC,C) fp32 row-major -> l in format fmt (Q8: quantized here, per output channel).
 * act_scale as in struct dsa__linear (Q8 only, else ignored). On failure l is left empty. */
int dsa__linear_init(struct dsa__linear *l, const float *weight, size_t OC, size_t C, enum dsa_wformat fmt,
                     float act_scale);
/* Q8 from int8 values q (OC,C) and per-channel scales (OC), as stored in a variant file. */
int dsa__linear_init_q8(struct dsa__linear *l, const int8_t *q, const float *scales, size_t OC, size_t C,
                        float act_scale);
/* l re-formed as fmt (act_scale as in dsa__linear_init), from its weights as fp32 (Q8's
 * dequantized). On failure l is unchanged. */
int dsa__linear_reformat(struct dsa__linear *l, enum dsa_wformat fmt, float act_scale);
/* Frees what l holds; l is then empty (fmt F32, no matrix). */
void dsa__linear_clear(struct dsa__linear *l);

/* The weight as fp32 (OC,C) (dequantized for Q8); -ENOMEM when Q8's scratch cannot be had. */
int dsa__linear_unpack(const struct dsa__linear *l, float *weight);
/* Q8 only: the int8 values (OC,C) and scales (OC) exactly as held. */
void dsa__linear_unpack_q8(const struct dsa__linear *l, int8_t *q, float *scales);
/* Resident bytes of the weight. */
size_t dsa__linear_bytes(const struct dsa__linear *l);

/* Bytes of scratch dsa__linear_forward() needs for N rows of C inputs (0 unless Q8). */
size_t dsa__linear_scratch(const struct dsa__linear *l, size_t N);

/* in (N, ldi) x W^T + bias (OC or NULL) -> out (N, ldo), then ep; on pool (NULL: this thread).
 * scratch: dsa__linear_scratch(l, N) bytes, 64-byte aligned (Q8: the quantized rows). */
void dsa__linear_forward(struct dsa_threadpool *pool, const struct dsa__linear *l, float *out, size_t ldo,
                         const float *in, size_t ldi, const float *bias, size_t N, enum dsa_epilogue ep,
                         void *scratch);
