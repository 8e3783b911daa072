/* safetensors reader: one file, or a Hugging Face sharded set described by
 * model.safetensors.index.json. Files are mmapped read-only; the JSON header is parsed with
 * json-c after its length is checked, and every tensor's dtype, shape and byte range is
 * validated (inside the data section, no overlap, size matches shape) before use. */
#pragma once

#include <stddef.h>

#include "basic/macro.h"

#include "tensor.h"

struct dsa_safetensors;

/* All openers return 0 and a handle, or -errno (-EBADMSG for a malformed file, -ENOENT for a
 * missing one) with the reason in dsa_error_message(). path is a .safetensors file. */
int dsa_safetensors_open(const char *path, struct dsa_safetensors **ret);
/* dir holds model.safetensors, or model.safetensors.index.json and the shards it names.
 * Tensor names must be unique across shards. */
int dsa_safetensors_open_dir(const char *dir, struct dsa_safetensors **ret);
/* A caller-owned buffer holding one file (fuzzing, tests); data must outlive the handle. */
int dsa_safetensors_open_memory(const void *data, size_t size, struct dsa_safetensors **ret);
struct dsa_safetensors *dsa_safetensors_free(struct dsa_safetensors *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_safetensors *, dsa_safetensors_free);

/* Views use ggml's order: ne[0] is the LAST safetensors dimension; a scalar (shape []) is
 * n_dims 1, ne[0] 1. Supported dtypes: F32, F16, BF16, F64, I8, I16, I32, I64 (others give
 * -EBADMSG at open, naming the dtype). The data section starts right after the header, so a
 * view's data is aligned only as far as the writer padded the header (Hugging Face pads to 8);
 * read through memcpy or dsa_tensor_to_f32() when in doubt. Views live as long as s. */
size_t dsa_safetensors_n_tensors(const struct dsa_safetensors *s);
const struct dsa_tensor_view *dsa_safetensors_tensor(const struct dsa_safetensors *s, size_t i);
const struct dsa_tensor_view *dsa_safetensors_find(const struct dsa_safetensors *s, const char *name);
