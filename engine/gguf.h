/* GGUF, llama.cpp's container (header, key/value metadata, aligned tensor data), our native
 * on-disk format. The reader mmaps a file read-only and validates every count, length, type,
 * shape and offset before anything is used: any byte sequence gives either a usable handle or
 * -EBADMSG with a reason in dsa_error_message(), never a crash or a huge allocation.
 * The writer builds a file in memory-light fashion and commits it atomically (temp file in the
 * same folder, fsync, rename). Spec: github.com/ggml-org/ggml docs/gguf.md (version 3). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/macro.h"

#include "tensor.h"

enum dsa_gguf_vtype {
        DSA_GGUF_UINT8 = 0,
        DSA_GGUF_INT8 = 1,
        DSA_GGUF_UINT16 = 2,
        DSA_GGUF_INT16 = 3,
        DSA_GGUF_UINT32 = 4,
        DSA_GGUF_INT32 = 5,
        DSA_GGUF_FLOAT32 = 6,
        DSA_GGUF_BOOL = 7,
        DSA_GGUF_STRING = 8,
        DSA_GGUF_ARRAY = 9,
        DSA_GGUF_UINT64 = 10,
        DSA_GGUF_INT64 = 11,
        DSA_GGUF_FLOAT64 = 12,
};

struct dsa_gguf;

/* Limits the reader enforces and the writer respects, so whatever we write we can read. */
#define DSA_GGUF_MAX_KEY (64u * 1024u)        /* key and tensor name bytes */
#define DSA_GGUF_MAX_STR (16u * 1024u * 1024u) /* string value (and array element) bytes */
#define DSA_GGUF_DEFAULT_ALIGNMENT 32u

/* Bytes one value of a scalar type takes in the file; 0 for STRING, ARRAY and unknown types. */
size_t dsa_gguf_vtype_size(enum dsa_gguf_vtype t);

/* Maps and validates path. Returns 0 and a handle, or -errno (-EBADMSG for a malformed file)
 * with the reason in dsa_error_message(). Any thread; a handle is immutable once open, so
 * its getters may be called from several threads at once. */
int dsa_gguf_open(const char *path, struct dsa_gguf **ret);
/* Validates a caller-owned buffer (fuzzing, tests); data must outlive the handle. */
int dsa_gguf_open_memory(const void *data, size_t size, struct dsa_gguf **ret);
struct dsa_gguf *dsa_gguf_free(struct dsa_gguf *g);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_gguf *, dsa_gguf_free);
/* Drops the mapped file's pages from this process's resident set (MADV_DONTNEED on a private,
 * never written mapping: they stay in the page cache and come back on the next read). For a
 * handle kept open after a load read the whole file; nothing for an in-memory one. */
void dsa_gguf_release_pages(const struct dsa_gguf *g);

uint32_t dsa_gguf_version(const struct dsa_gguf *g);

/* Metadata. Keys are looked up by exact name; the getters return -ENOENT when the key is
 * absent and -EMEDIUMTYPE when its type differs (integer getters accept any integer type whose
 * value fits). Strings are returned as pointer + length into the mapping (not NUL-terminated). */
size_t dsa_gguf_n_kv(const struct dsa_gguf *g);
const char *dsa_gguf_kv_name(const struct dsa_gguf *g, size_t i); /* NUL-terminated copy; NULL past the end */
enum dsa_gguf_vtype dsa_gguf_kv_type(const struct dsa_gguf *g, size_t i); /* (enum) -1 past the end */
int dsa_gguf_find(const struct dsa_gguf *g, const char *key); /* index or -ENOENT */
int dsa_gguf_get_u64(const struct dsa_gguf *g, const char *key, uint64_t *ret);
int dsa_gguf_get_i64(const struct dsa_gguf *g, const char *key, int64_t *ret);
int dsa_gguf_get_u32(const struct dsa_gguf *g, const char *key, uint32_t *ret);
int dsa_gguf_get_f32(const struct dsa_gguf *g, const char *key, float *ret); /* f32 or f64 */
int dsa_gguf_get_bool(const struct dsa_gguf *g, const char *key, bool *ret);
int dsa_gguf_get_str(const struct dsa_gguf *g, const char *key, const char **ret, size_t *ret_len);
/* Arrays: element type and count; then elements by index. */
int dsa_gguf_get_arr(const struct dsa_gguf *g, const char *key, enum dsa_gguf_vtype *ret_type,
                     size_t *ret_n);
/* Element i of a string array, O(1); -ERANGE when i >= the count. */
int dsa_gguf_get_arr_str(const struct dsa_gguf *g, const char *key, size_t i, const char **ret,
                         size_t *ret_len);
/* Pointer to the packed elements of a numeric array (little-endian, as in the file; not
 * necessarily aligned to the element size, so read through memcpy). */
int dsa_gguf_get_arr_data(const struct dsa_gguf *g, const char *key, const void **ret);

/* Tensors. Views point into the mapping and live as long as g. Each tensor's data starts at a
 * multiple of the file's alignment (32 by default) from the start of the file. Keys and
 * tensors keep the order of the file. */
size_t dsa_gguf_n_tensors(const struct dsa_gguf *g);
const struct dsa_tensor_view *dsa_gguf_tensor(const struct dsa_gguf *g, size_t i);
const struct dsa_tensor_view *dsa_gguf_find_tensor(const struct dsa_gguf *g, const char *name);

/* Writer. Values are copied at the call; tensor data is referenced and must stay valid until
 * dsa_gguf_writer_write() returns. Adding a key or tensor name twice is -EEXIST. */
struct dsa_gguf_writer;
struct dsa_gguf_writer *dsa_gguf_writer_new(void);
struct dsa_gguf_writer *dsa_gguf_writer_free(struct dsa_gguf_writer *w);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_gguf_writer *, dsa_gguf_writer_free);
int dsa_gguf_writer_set_u32(struct dsa_gguf_writer *w, const char *key, uint32_t v);
int dsa_gguf_writer_set_i32(struct dsa_gguf_writer *w, const char *key, int32_t v);
int dsa_gguf_writer_set_u64(struct dsa_gguf_writer *w, const char *key, uint64_t v);
int dsa_gguf_writer_set_f32(struct dsa_gguf_writer *w, const char *key, float v);
int dsa_gguf_writer_set_bool(struct dsa_gguf_writer *w, const char *key, bool v);
int dsa_gguf_writer_set_str(struct dsa_gguf_writer *w, const char *key, const char *v);
int dsa_gguf_writer_set_arr_str(struct dsa_gguf_writer *w, const char *key, const char *const *v,
                                size_t n);
/* Numeric array: type one of the scalar vtypes, n elements packed at data. */
int dsa_gguf_writer_set_arr(struct dsa_gguf_writer *w, const char *key, enum dsa_gguf_vtype type,
                            const void *data, size_t n);
/* ne[0] innermost; n_dims 1..4; nbytes must equal what type and ne imply. */
int dsa_gguf_writer_add_tensor(struct dsa_gguf_writer *w, const char *name, enum dsa_type type,
                               uint32_t n_dims, const uint64_t *ne, const void *data);
/* Writes path atomically (same-folder temp file, fsync, rename; the temp file is removed on
 * any failure, so a full disk leaves the old file in place). Alignment 32 unless the key
 * general.alignment was set. */
int dsa_gguf_writer_write(struct dsa_gguf_writer *w, const char *path);
