/* Element types shared by the GGUF and safetensors readers: names, block sizes, byte counts,
 * and conversion of a stored tensor to fp32. Files are little-endian and so are the hosts we
 * run on, so stored values are read as they are (through memcpy, since a view's data need not
 * be aligned). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "kernels/kernels.h"
#include "tensor-internal.h"
#include "tensor.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dsa reads little-endian model files in place and supports only little-endian hosts"
#endif

#define Q8_0_ELEMS 32
#define Q8_0_BYTES (2 + Q8_0_ELEMS)

static const struct {
        const char *name;
        size_t block_bytes;
        size_t block_elems;
} type_table[] = {
        [DSA_TYPE_F32] = { "F32", 4, 1 },
        [DSA_TYPE_F16] = { "F16", 2, 1 },
        [DSA_TYPE_Q8_0] = { "Q8_0", Q8_0_BYTES, Q8_0_ELEMS },
        [DSA_TYPE_I8] = { "I8", 1, 1 },
        [DSA_TYPE_I16] = { "I16", 2, 1 },
        [DSA_TYPE_I32] = { "I32", 4, 1 },
        [DSA_TYPE_I64] = { "I64", 8, 1 },
        [DSA_TYPE_F64] = { "F64", 8, 1 },
        [DSA_TYPE_BF16] = { "BF16", 2, 1 },
};

/* Casting an arbitrary file value to the enum is fine; it is range-checked here, as unsigned,
 * so negative values land out of range too. */
static bool type_known(enum dsa_type t) {
        return (unsigned) t < ELEMENTSOF(type_table) && type_table[(unsigned) t].name;
}

const char *dsa_type_name(enum dsa_type t) {
        return type_known(t) ? type_table[(unsigned) t].name : NULL;
}

size_t dsa_type_block_bytes(enum dsa_type t) {
        return type_known(t) ? type_table[(unsigned) t].block_bytes : 0;
}

size_t dsa_type_block_elems(enum dsa_type t) {
        return type_known(t) ? type_table[(unsigned) t].block_elems : 0;
}

uint64_t dsa_tensor_nelems(const struct dsa_tensor_view *t) {
        uint64_t n = 1;

        if (!t || t->n_dims > DSA_MAX_DIMS)
                return 0;
        for (uint32_t i = 0; i < t->n_dims; i++)
                if (__builtin_mul_overflow(n, t->ne[i], &n))
                        return 0;
        return n;
}

int dsa_type_nbytes(enum dsa_type t, uint64_t n, uint64_t *ret) {
        uint64_t bytes;

        if (!ret || !type_known(t))
                return -EINVAL;
        if (n % dsa_type_block_elems(t) != 0)
                return -EINVAL;
        if (__builtin_mul_overflow(n / dsa_type_block_elems(t), (uint64_t) dsa_type_block_bytes(t),
                                   &bytes))
                return -EOVERFLOW;
        *ret = bytes;
        return 0;
}

int dsa_tensor_to_f32(const struct dsa_tensor_view *t, float *out) {
        const struct dsa_kernels *k;
        uint64_t n, nbytes;
        int r;

        if (!t || !out || (!t->data && t->nbytes > 0))
                return -EINVAL;
        n = dsa_tensor_nelems(t);
        r = dsa_type_nbytes(t->type, n, &nbytes);
        if (r < 0)
                return r;
        if (nbytes != t->nbytes || n > SIZE_MAX / sizeof(float))
                return -EINVAL;

        k = dsa_kernels();
        switch (t->type) {
        case DSA_TYPE_F32:
                if (n > 0)
                        memcpy(out, t->data, n * sizeof(float));
                return 0;
        case DSA_TYPE_F16:
        case DSA_TYPE_BF16: {
                /* The converters take uint16_t *, and the data may sit at an odd address
                 * (safetensors only aligns its data section to the header length), so go
                 * through an aligned bounce buffer in chunks. */
                const uint8_t *src = t->data;
                uint16_t buf[1024];

                for (uint64_t i = 0; i < n; i += ELEMENTSOF(buf)) {
                        size_t m = MIN(ELEMENTSOF(buf), (size_t) (n - i));

                        memcpy(buf, src + i * 2, m * 2);
                        if (t->type == DSA_TYPE_F16)
                                k->f16_to_f32(out + i, buf, m);
                        else
                                k->bf16_to_f32(out + i, buf, m);
                }
                return 0;
        }
        case DSA_TYPE_Q8_0: {
                /* Block: fp16 scale d, then 32 int8 q; x = d * q. */
                const uint8_t *b = t->data;

                for (uint64_t blk = 0; blk < n / Q8_0_ELEMS; blk++, b += Q8_0_BYTES) {
                        uint16_t dh;
                        float d;

                        memcpy(&dh, b, 2);
                        k->f16_to_f32(&d, &dh, 1);
                        for (size_t j = 0; j < Q8_0_ELEMS; j++)
                                out[blk * Q8_0_ELEMS + j] = d * (float) (int8_t) b[2 + j];
                }
                return 0;
        }
        default:
                return -EOPNOTSUPP;
        }
}

static const char *name_at(const struct dsa__name_table *t, size_t i) {
        const char *name;

        memcpy(&name, (const uint8_t *) t->elems + i * t->stride + t->name_offset, sizeof(name));
        return name;
}

/* qsort/bsearch over index arrays would need the table; a file-scope pointer would not be
 * thread-safe, so sort (name, index) pairs instead. */
struct name_ref {
        const char *name;
        size_t i;
};

static int name_ref_cmp(const void *a, const void *b) {
        return strcmp(((const struct name_ref *) a)->name, ((const struct name_ref *) b)->name);
}

int dsa__name_index_new(struct dsa__name_table t, const char *dup_fmt, size_t **ret_sorted) {
        _cleanup_free_ struct name_ref *refs = NULL;
        _cleanup_free_ size_t *idx = NULL;

        refs = malloc(MAX(t.n, 1) * sizeof(*refs));
        idx = malloc(MAX(t.n, 1) * sizeof(*idx));
        if (!refs || !idx)
                return -ENOMEM;
        for (size_t i = 0; i < t.n; i++)
                refs[i] = (struct name_ref) { name_at(&t, i), i };
        qsort(refs, t.n, sizeof(*refs), name_ref_cmp);
        for (size_t i = 0; i < t.n; i++) {
                if (i > 0 && strcmp(refs[i - 1].name, refs[i].name) == 0)
                        return dsa__error(-EBADMSG, dup_fmt, refs[i].name);
                idx[i] = refs[i].i;
        }
        *ret_sorted = TAKE_PTR(idx);
        return 0;
}

const void *dsa__name_index_find(struct dsa__name_table t, const size_t *sorted, const char *name) {
        size_t lo = 0, hi = t.n;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(name, name_at(&t, sorted[mid]));

                if (c == 0)
                        return (const uint8_t *) t.elems + sorted[mid] * t.stride;
                if (c < 0)
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return NULL;
}

static int byte_range_cmp(const void *a, const void *b) {
        const struct dsa__byte_range *x = a, *y = b;

        return x->begin < y->begin ? -1 : x->begin > y->begin;
}

bool dsa__byte_ranges_overlap(struct dsa__byte_range *r, size_t n, size_t *ret_i) {
        uint64_t end = 0;

        qsort(r, n, sizeof(*r), byte_range_cmp);
        for (size_t i = 0; i < n; i++) {
                if (r[i].begin == r[i].end)
                        continue;
                if (r[i].begin < end) {
                        *ret_i = r[i].i;
                        return true;
                }
                end = r[i].end;
        }
        return false;
}

int dsa__map_file(int dirfd, const char *path, size_t min_size, const char *what, const uint8_t **ret,
                  size_t *ret_size) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        void *p;

        fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return dsa__error(-errno, "cannot open '%s': %s", path, strerror(errno));
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return dsa__error(-EBADMSG, "'%s' is not a regular file", path);
        if ((uint64_t) st.st_size < min_size)
                return dsa__error(-EBADMSG, "'%s' is %lld bytes, smaller than %s", path, (long long) st.st_size,
                                  what);
        if ((uint64_t) st.st_size > SIZE_MAX)
                return -EFBIG;
        p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
                return dsa__error(-errno, "cannot map '%s': %s", path, strerror(errno));
        *ret = p;
        *ret_size = st.st_size;
        return 0;
}
