/* Tensor element types and a read-only view of one stored tensor, shared by the GGUF and
 * safetensors readers. Type numbers are ggml's, so they go into GGUF files unchanged. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DSA_MAX_DIMS 4

enum dsa_type {
        DSA_TYPE_F32 = 0,
        DSA_TYPE_F16 = 1,
        DSA_TYPE_Q8_0 = 8, /* blocks of 32: fp16 scale + 32 int8 */
        DSA_TYPE_I8 = 24,
        DSA_TYPE_I16 = 25,
        DSA_TYPE_I32 = 26,
        DSA_TYPE_I64 = 27,
        DSA_TYPE_F64 = 28,
        DSA_TYPE_BF16 = 30,
};

/* A tensor as stored: ne[0] is the innermost (contiguous) dimension, as in ggml and GGUF, so a
 * PyTorch weight of shape (OC, C) has ne = {C, OC}. data points into a mapping owned by the
 * reader that produced the view and lives as long as that reader. */
struct dsa_tensor_view {
        const char *name;
        enum dsa_type type;
        uint32_t n_dims;
        uint64_t ne[DSA_MAX_DIMS]; /* unused dims are 1 */
        const void *data;
        uint64_t nbytes;
};

/* "F32", "F16", ... or NULL for a type this build does not know. */
const char *dsa_type_name(enum dsa_type t);

/* Bytes per block and elements per block (1 for plain types); 0 for an unknown type. */
size_t dsa_type_block_bytes(enum dsa_type t);
size_t dsa_type_block_elems(enum dsa_type t);

/* Number of elements, or 0 when the product overflows. */
uint64_t dsa_tensor_nelems(const struct dsa_tensor_view *t);

/* Bytes n elements of type t take, into *ret; -EOVERFLOW, or -EINVAL when n is not a whole
 * number of blocks. */
int dsa_type_nbytes(enum dsa_type t, uint64_t n, uint64_t *ret);

/* Converts every element of t (F32, F16, BF16, Q8_0) to fp32 into out, which holds
 * dsa_tensor_nelems(t) floats. -EOPNOTSUPP for other types. */
int dsa_tensor_to_f32(const struct dsa_tensor_view *t, float *out);
