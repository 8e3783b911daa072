/* GGUF reader. The file is mapped read-only and walked once at open with a bounds-checked
 * cursor: every count is checked against the bytes left before anything is allocated for it,
 * every length is capped, and every tensor's type, shape and byte range is validated, so the
 * getters afterwards only index tables built here. Keys and tensor names are kept in arrays
 * sorted by name: duplicates are found in O(n log n) and lookups are binary searches.
 * String arrays (tokenizer vocabularies) get a table of element offsets, so element i is O(1). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "gguf.h"
#include "tensor-internal.h"

struct gguf_kv {
        char *name;
        enum dsa_gguf_vtype type;
        enum dsa_gguf_vtype arr_type; /* arrays only */
        uint64_t n;                   /* arrays: element count */
        const uint8_t *value;         /* scalars: the value; strings: the bytes; arrays: element 0 */
        uint64_t len;                 /* strings: byte count */
        uint64_t *str_offs;           /* string arrays: offset of each element's u64 length */
};

struct dsa_gguf {
        const uint8_t *base;
        size_t size;
        bool mapped;
        uint32_t version;

        struct gguf_kv *kvs;
        size_t n_kv;
        size_t *kv_sorted; /* indices into kvs, sorted by name */

        struct dsa_tensor_view *tensors;
        size_t n_tensors;
        size_t *tensor_sorted;
};

struct cursor {
        const uint8_t *base;
        size_t size;
        size_t pos;
};

static size_t cursor_left(const struct cursor *c) {
        return c->size - c->pos;
}

/* Checks that n more bytes exist; what names the field for the reason. */
static int cursor_need(const struct cursor *c, uint64_t n, const char *what) {
        if (n > cursor_left(c))
                return dsa__error(-EBADMSG,
                                  "file ends inside %s (offset %zu, %llu bytes needed, %zu left)",
                                  what, c->pos, (unsigned long long) n, cursor_left(c));
        return 0;
}

static int cursor_read(struct cursor *c, void *dst, size_t n, const char *what) {
        int r = cursor_need(c, n, what);

        if (r < 0)
                return r;
        memcpy(dst, c->base + c->pos, n);
        c->pos += n;
        return 0;
}

static int cursor_u32(struct cursor *c, uint32_t *ret, const char *what) {
        return cursor_read(c, ret, sizeof(*ret), what);
}

static int cursor_u64(struct cursor *c, uint64_t *ret, const char *what) {
        return cursor_read(c, ret, sizeof(*ret), what);
}

/* A GGUF string: u64 length, then the bytes, at most max of them. */
static int cursor_str(struct cursor *c, uint64_t max, const char *what, const uint8_t **ret,
                      uint64_t *ret_len) {
        uint64_t len;
        int r;

        r = cursor_u64(c, &len, what);
        if (r < 0)
                return r;
        if (len > max)
                return dsa__error(-EBADMSG, "%s at offset %zu is %llu bytes long, more than the %llu allowed",
                                  what, c->pos - 8, (unsigned long long) len, (unsigned long long) max);
        r = cursor_need(c, len, what);
        if (r < 0)
                return r;
        *ret = c->base + c->pos;
        *ret_len = len;
        c->pos += len;
        return 0;
}

/* Names are copied NUL-terminated, so one with a NUL inside would silently become another. */
static int name_dup(const uint8_t *p, uint64_t len, const char *what, char **ret) {
        char *s;

        if (len == 0)
                return dsa__error(-EBADMSG, "%s is empty", what);
        if (memchr(p, 0, len))
                return dsa__error(-EBADMSG, "%s contains a NUL byte", what);
        s = malloc(len + 1);
        if (!s)
                return -ENOMEM;
        memcpy(s, p, len);
        s[len] = 0;
        *ret = s;
        return 0;
}

size_t dsa_gguf_vtype_size(enum dsa_gguf_vtype t) {
        switch (t) {
        case DSA_GGUF_UINT8:
        case DSA_GGUF_INT8:
        case DSA_GGUF_BOOL:
                return 1;
        case DSA_GGUF_UINT16:
        case DSA_GGUF_INT16:
                return 2;
        case DSA_GGUF_UINT32:
        case DSA_GGUF_INT32:
        case DSA_GGUF_FLOAT32:
                return 4;
        case DSA_GGUF_UINT64:
        case DSA_GGUF_INT64:
        case DSA_GGUF_FLOAT64:
                return 8;
        default:
                return 0; /* string, array, unknown */
        }
}

static int parse_value(struct cursor *c, struct gguf_kv *kv) {
        size_t esz;
        uint32_t t;
        int r;

        if (kv->type == DSA_GGUF_STRING)
                return cursor_str(c, DSA_GGUF_MAX_STR, "string value", &kv->value, &kv->len);
        if (kv->type != DSA_GGUF_ARRAY) {
                esz = dsa_gguf_vtype_size(kv->type);
                if (esz == 0)
                        return dsa__error(-EBADMSG, "key '%s' has unknown value type %u", kv->name,
                                          (unsigned) kv->type);
                r = cursor_need(c, esz, "a value");
                if (r < 0)
                        return r;
                kv->value = c->base + c->pos;
                c->pos += esz;
                return 0;
        }

        r = cursor_u32(c, &t, "an array type");
        if (r < 0)
                return r;
        r = cursor_u64(c, &kv->n, "an array count");
        if (r < 0)
                return r;
        kv->arr_type = (enum dsa_gguf_vtype) t;
        /* Nested arrays have no use in the files we read; rejecting them keeps this loop flat. */
        if (t == DSA_GGUF_ARRAY)
                return dsa__error(-EBADMSG, "key '%s' is a nested array, which is not supported",
                                  kv->name);
        kv->value = c->base + c->pos;

        if (t == DSA_GGUF_STRING) {
                /* Each element takes at least its 8-byte length, which bounds the table. */
                if (kv->n > cursor_left(c) / 8)
                        return dsa__error(-EBADMSG,
                                          "key '%s' claims %llu strings but only %zu bytes are left",
                                          kv->name, (unsigned long long) kv->n, cursor_left(c));
                kv->str_offs = malloc(MAX(kv->n, 1) * sizeof(uint64_t));
                if (!kv->str_offs)
                        return -ENOMEM;
                for (uint64_t i = 0; i < kv->n; i++) {
                        const uint8_t *s;
                        uint64_t len;

                        kv->str_offs[i] = c->pos;
                        r = cursor_str(c, DSA_GGUF_MAX_STR, "an array string", &s, &len);
                        if (r < 0)
                                return r;
                }
                return 0;
        }

        esz = dsa_gguf_vtype_size(kv->arr_type);
        if (esz == 0)
                return dsa__error(-EBADMSG, "key '%s' is an array of unknown type %u", kv->name, t);
        if (kv->n > cursor_left(c) / esz)
                return dsa__error(-EBADMSG,
                                  "key '%s' claims %llu elements of %zu bytes but only %zu bytes are left",
                                  kv->name, (unsigned long long) kv->n, esz, cursor_left(c));
        c->pos += kv->n * esz;
        return 0;
}

static int parse_kvs(struct dsa_gguf *g, struct cursor *c, uint64_t n_kv) {
        int r;

        /* Smallest pair: 8-byte key length, 1-byte key, 4-byte type, 1-byte value. */
        if (n_kv > cursor_left(c) / 14)
                return dsa__error(-EBADMSG, "header claims %llu key/value pairs but only %zu bytes follow",
                                  (unsigned long long) n_kv, cursor_left(c));
        g->kvs = calloc(MAX(n_kv, 1), sizeof(*g->kvs));
        if (!g->kvs)
                return -ENOMEM;

        for (uint64_t i = 0; i < n_kv; i++) {
                struct gguf_kv *kv = &g->kvs[i];
                const uint8_t *key;
                uint64_t len;
                uint32_t t;

                r = cursor_str(c, DSA_GGUF_MAX_KEY, "a key", &key, &len);
                if (r < 0)
                        return r;
                r = name_dup(key, len, "a key", &kv->name);
                if (r < 0)
                        return r;
                g->n_kv = i + 1; /* kv->name is now owned by g */
                r = cursor_u32(c, &t, "a value type");
                if (r < 0)
                        return r;
                kv->type = (enum dsa_gguf_vtype) t;
                r = parse_value(c, kv);
                if (r < 0)
                        return r;
        }
        return dsa__name_index_new(DSA__NAME_TABLE(g->kvs, g->n_kv), "duplicate key '%s'", &g->kv_sorted);
}

static const struct gguf_kv *kv_find(const struct dsa_gguf *g, const char *key) {
        return dsa__name_index_find(DSA__NAME_TABLE(g->kvs, g->n_kv), g->kv_sorted, key);
}

static int read_alignment(const struct dsa_gguf *g, uint32_t *ret) {
        const struct gguf_kv *kv = kv_find(g, "general.alignment");
        uint32_t a;

        if (!kv) {
                *ret = DSA_GGUF_DEFAULT_ALIGNMENT;
                return 0;
        }
        if (kv->type != DSA_GGUF_UINT32)
                return dsa__error(-EBADMSG, "general.alignment has type %u, not uint32",
                                  (unsigned) kv->type);
        memcpy(&a, kv->value, sizeof(a));
        if (a == 0 || (a & (a - 1)) != 0)
                return dsa__error(-EBADMSG, "general.alignment %u is not a power of two", a);
        *ret = a;
        return 0;
}

static int parse_tensor_info(struct cursor *c, struct dsa_tensor_view *t, uint64_t *ret_offset) {
        const uint8_t *name;
        uint64_t len, n, offset;
        uint32_t type;
        int r;

        r = cursor_str(c, DSA_GGUF_MAX_KEY, "a tensor name", &name, &len);
        if (r < 0)
                return r;
        r = name_dup(name, len, "a tensor name", (char **) &t->name);
        if (r < 0)
                return r;
        r = cursor_u32(c, &t->n_dims, "a tensor's dimension count");
        if (r < 0)
                return r;
        if (t->n_dims < 1 || t->n_dims > DSA_MAX_DIMS)
                return dsa__error(-EBADMSG, "tensor '%s' has %u dimensions, not 1 to %d", t->name,
                                  t->n_dims, DSA_MAX_DIMS);
        for (uint32_t d = 0; d < DSA_MAX_DIMS; d++) {
                t->ne[d] = 1;
                if (d >= t->n_dims)
                        continue;
                r = cursor_u64(c, &t->ne[d], "a tensor's shape");
                if (r < 0)
                        return r;
                if (t->ne[d] > INT64_MAX)
                        return dsa__error(-EBADMSG, "tensor '%s' dimension %u is negative", t->name, d);
        }
        r = cursor_u32(c, &type, "a tensor's type");
        if (r < 0)
                return r;
        r = cursor_u64(c, &offset, "a tensor's offset");
        if (r < 0)
                return r;

        t->type = (enum dsa_type) type;
        if (!dsa_type_name(t->type))
                return dsa__error(-EBADMSG, "tensor '%s' has unknown ggml type %u", t->name, type);
        n = dsa_tensor_nelems(t);
        if (n == 0 && t->ne[0] && t->ne[1] && t->ne[2] && t->ne[3])
                return dsa__error(-EBADMSG, "tensor '%s' shape overflows 64 bits", t->name);
        if (t->ne[0] % dsa_type_block_elems(t->type) != 0)
                return dsa__error(-EBADMSG, "tensor '%s' row of %llu is not a whole number of %s blocks",
                                  t->name, (unsigned long long) t->ne[0], dsa_type_name(t->type));
        r = dsa_type_nbytes(t->type, n, &t->nbytes);
        if (r < 0)
                return dsa__error(-EBADMSG, "tensor '%s' size overflows 64 bits", t->name);
        *ret_offset = offset;
        return 0;
}

static int parse_tensors(struct dsa_gguf *g, struct cursor *c, uint64_t n_tensors) {
        _cleanup_free_ struct dsa__byte_range *ranges = NULL;
        uint64_t data_start, data_size;
        uint32_t align = DSA_GGUF_DEFAULT_ALIGNMENT;
        size_t k;
        int r;

        r = read_alignment(g, &align);
        if (r < 0)
                return r;
        /* Smallest info: 8-byte name length, 1-byte name, n_dims, one ne, type, offset. */
        if (n_tensors > cursor_left(c) / 33)
                return dsa__error(-EBADMSG, "header claims %llu tensors but only %zu bytes follow",
                                  (unsigned long long) n_tensors, cursor_left(c));
        g->tensors = calloc(MAX(n_tensors, 1), sizeof(*g->tensors));
        ranges = calloc(MAX(n_tensors, 1), sizeof(*ranges));
        if (!g->tensors || !ranges)
                return -ENOMEM;

        for (uint64_t i = 0; i < n_tensors; i++) {
                g->n_tensors = i + 1;
                r = parse_tensor_info(c, &g->tensors[i], &ranges[i].begin);
                if (r < 0)
                        return r;
                ranges[i].i = i;
        }
        r = dsa__name_index_new(DSA__NAME_TABLE(g->tensors, g->n_tensors), "duplicate tensor '%s'",
                                &g->tensor_sorted);
        if (r < 0)
                return r;

        data_start = ALIGN_TO((uint64_t) c->pos, (uint64_t) align);
        data_size = data_start <= g->size ? g->size - data_start : 0;
        for (size_t i = 0; i < g->n_tensors; i++) {
                struct dsa_tensor_view *t = &g->tensors[i];
                uint64_t off = ranges[i].begin;

                if (off % align != 0)
                        return dsa__error(-EBADMSG, "tensor '%s' offset %llu is not a multiple of the alignment %u",
                                          t->name, (unsigned long long) off, align);
                if (off > data_size || t->nbytes > data_size - off)
                        return dsa__error(-EBADMSG,
                                          "tensor '%s' data (offset %llu, %llu bytes) runs past the end of the file (%zu bytes)",
                                          t->name, (unsigned long long) (data_start + off),
                                          (unsigned long long) t->nbytes, g->size);
                ranges[i].end = off + t->nbytes;
                t->data = g->base + data_start + off;
        }

        if (dsa__byte_ranges_overlap(ranges, g->n_tensors, &k))
                return dsa__error(-EBADMSG, "tensor '%s' data overlaps another tensor's", g->tensors[k].name);
        return 0;
}

static int gguf_parse(struct dsa_gguf *g) {
        struct cursor c = { .base = g->base, .size = g->size };
        uint64_t n_tensors, n_kv;
        uint8_t magic[4];
        int r;

        r = cursor_read(&c, magic, 4, "the magic");
        if (r < 0)
                return r;
        if (memcmp(magic, "GGUF", 4) != 0)
                return dsa__error(-EBADMSG, "not a GGUF file (bad magic)");
        r = cursor_u32(&c, &g->version, "the header");
        if (r < 0)
                return r;
        if (g->version != 2 && g->version != 3) {
                if ((g->version & 0xffff) == 0 && g->version != 0)
                        return dsa__error(-EBADMSG, "GGUF file is big-endian, which is not supported");
                return dsa__error(-EBADMSG, "GGUF version %u is not supported (only 2 and 3)", g->version);
        }
        r = cursor_u64(&c, &n_tensors, "the header");
        if (r < 0)
                return r;
        r = cursor_u64(&c, &n_kv, "the header");
        if (r < 0)
                return r;
        r = parse_kvs(g, &c, n_kv);
        if (r < 0)
                return r;
        return parse_tensors(g, &c, n_tensors);
}

struct dsa_gguf *dsa_gguf_free(struct dsa_gguf *g) {
        if (!g)
                return NULL;
        for (size_t i = 0; i < g->n_kv; i++) {
                free(g->kvs[i].name);
                free(g->kvs[i].str_offs);
        }
        for (size_t i = 0; i < g->n_tensors; i++)
                free((char *) g->tensors[i].name);
        free(g->kvs);
        free(g->kv_sorted);
        free(g->tensors);
        free(g->tensor_sorted);
        if (g->mapped)
                munmap((void *) g->base, g->size);
        free(g);
        return NULL;
}

void dsa_gguf_release_pages(const struct dsa_gguf *g) {
        if (g && g->mapped && g->size > 0)
                (void) madvise((void *) g->base, g->size, MADV_DONTNEED); /* advice: failure costs memory only */
}

int dsa_gguf_open_memory(const void *data, size_t size, struct dsa_gguf **ret) {
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = NULL;
        int r;

        if ((!data && size > 0) || !ret)
                return -EINVAL;
        g = calloc(1, sizeof(*g));
        if (!g)
                return -ENOMEM;
        g->base = data;
        g->size = size;
        r = gguf_parse(g);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(g);
        return 0;
}

int dsa_gguf_open(const char *path, struct dsa_gguf **ret) {
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = NULL;
        const uint8_t *p;
        size_t size;
        int r;

        if (!path || !ret)
                return -EINVAL;
        g = calloc(1, sizeof(*g));
        if (!g)
                return -ENOMEM;
        r = dsa__map_file(AT_FDCWD, path, 24, "a GGUF header", &p, &size);
        if (r < 0)
                return r;
        g->base = p;
        g->size = size;
        g->mapped = true;
        r = gguf_parse(g);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(g);
        return 0;
}

uint32_t dsa_gguf_version(const struct dsa_gguf *g) {
        return g ? g->version : 0;
}

size_t dsa_gguf_n_kv(const struct dsa_gguf *g) {
        return g ? g->n_kv : 0;
}

const char *dsa_gguf_kv_name(const struct dsa_gguf *g, size_t i) {
        return g && i < g->n_kv ? g->kvs[i].name : NULL;
}

enum dsa_gguf_vtype dsa_gguf_kv_type(const struct dsa_gguf *g, size_t i) {
        return g && i < g->n_kv ? g->kvs[i].type : (enum dsa_gguf_vtype) -1;
}

int dsa_gguf_find(const struct dsa_gguf *g, const char *key) {
        const struct gguf_kv *kv;

        if (!g || !key)
                return -EINVAL;
        kv = kv_find(g, key);
        if (!kv)
                return -ENOENT;
        if (kv - g->kvs > INT32_MAX)
                return -ERANGE;
        return (int) (kv - g->kvs);
}

#define VTYPE_BIT(t) (1u << (t))
#define VTYPES_INT                                                                              \
        (VTYPE_BIT(DSA_GGUF_UINT8) | VTYPE_BIT(DSA_GGUF_INT8) | VTYPE_BIT(DSA_GGUF_UINT16) |    \
         VTYPE_BIT(DSA_GGUF_INT16) | VTYPE_BIT(DSA_GGUF_UINT32) | VTYPE_BIT(DSA_GGUF_INT32) |   \
         VTYPE_BIT(DSA_GGUF_UINT64) | VTYPE_BIT(DSA_GGUF_INT64))
#define VTYPES_ANY UINT32_MAX

/* Types and array element types are below 32: open rejects any other. */
static bool vtype_in(enum dsa_gguf_vtype t, uint32_t mask) {
        return (unsigned) t < 32 && (mask & VTYPE_BIT((unsigned) t));
}

/* The start every getter shares: argument checks (have_ret: the caller's out-parameters are
 * there), the lookup, and the type check. types is the set of value types the getter reads;
 * for an array, arr_types the set of element types. The codes, in this order: -EINVAL,
 * -ENOENT, -EMEDIUMTYPE. */
static int kv_get(const struct dsa_gguf *g, const char *key, bool have_ret, uint32_t types,
                  uint32_t arr_types, const struct gguf_kv **ret) {
        const struct gguf_kv *kv;

        if (!have_ret || !g || !key)
                return -EINVAL;
        kv = kv_find(g, key);
        if (!kv)
                return -ENOENT;
        if (!vtype_in(kv->type, types) || (kv->type == DSA_GGUF_ARRAY && !vtype_in(kv->arr_type, arr_types)))
                return -EMEDIUMTYPE;
        *ret = kv;
        return 0;
}

/* kv_get() for the integer getters, which accept any integer type: the value goes as unsigned
 * into *u, or as signed into *s with *is_signed set. */
static int kv_get_int(const struct dsa_gguf *g, const char *key, bool have_ret, bool *is_signed,
                      uint64_t *u, int64_t *s) {
        const struct gguf_kv *kv;
        union {
                uint8_t u8;
                int8_t i8;
                uint16_t u16;
                int16_t i16;
                uint32_t u32;
                int32_t i32;
                uint64_t u64;
                int64_t i64;
        } v;
        int r;

        r = kv_get(g, key, have_ret, VTYPES_INT, 0, &kv);
        if (r < 0)
                return r;
        memcpy(&v, kv->value, dsa_gguf_vtype_size(kv->type));
        *is_signed = kv->type == DSA_GGUF_INT8 || kv->type == DSA_GGUF_INT16 ||
                     kv->type == DSA_GGUF_INT32 || kv->type == DSA_GGUF_INT64;
        switch (kv->type) {
        case DSA_GGUF_UINT8:
                *u = v.u8;
                break;
        case DSA_GGUF_UINT16:
                *u = v.u16;
                break;
        case DSA_GGUF_UINT32:
                *u = v.u32;
                break;
        case DSA_GGUF_UINT64:
                *u = v.u64;
                break;
        case DSA_GGUF_INT8:
                *s = v.i8;
                break;
        case DSA_GGUF_INT16:
                *s = v.i16;
                break;
        case DSA_GGUF_INT32:
                *s = v.i32;
                break;
        default: /* DSA_GGUF_INT64, the last integer type kv_get() lets through */
                *s = v.i64;
                break;
        }
        return 0;
}

int dsa_gguf_get_u64(const struct dsa_gguf *g, const char *key, uint64_t *ret) {
        bool is_signed;
        uint64_t u = 0;
        int64_t s = 0;
        int r;

        r = kv_get_int(g, key, ret, &is_signed, &u, &s);
        if (r < 0)
                return r;
        if (is_signed) {
                if (s < 0)
                        return -ERANGE;
                u = (uint64_t) s;
        }
        *ret = u;
        return 0;
}

int dsa_gguf_get_i64(const struct dsa_gguf *g, const char *key, int64_t *ret) {
        bool is_signed;
        uint64_t u = 0;
        int64_t s = 0;
        int r;

        r = kv_get_int(g, key, ret, &is_signed, &u, &s);
        if (r < 0)
                return r;
        if (!is_signed) {
                if (u > INT64_MAX)
                        return -ERANGE;
                s = (int64_t) u;
        }
        *ret = s;
        return 0;
}

int dsa_gguf_get_u32(const struct dsa_gguf *g, const char *key, uint32_t *ret) {
        uint64_t v;
        int r;

        if (!ret)
                return -EINVAL;
        r = dsa_gguf_get_u64(g, key, &v);
        if (r < 0)
                return r;
        if (v > UINT32_MAX)
                return -ERANGE;
        *ret = (uint32_t) v;
        return 0;
}

int dsa_gguf_get_f32(const struct dsa_gguf *g, const char *key, float *ret) {
        const struct gguf_kv *kv;
        double d;
        float f;
        int r;

        r = kv_get(g, key, ret, VTYPE_BIT(DSA_GGUF_FLOAT32) | VTYPE_BIT(DSA_GGUF_FLOAT64), 0, &kv);
        if (r < 0)
                return r;
        if (kv->type == DSA_GGUF_FLOAT32) {
                memcpy(&f, kv->value, sizeof(f));
                *ret = f;
        } else {
                memcpy(&d, kv->value, sizeof(d));
                *ret = (float) d;
        }
        return 0;
}

int dsa_gguf_get_bool(const struct dsa_gguf *g, const char *key, bool *ret) {
        const struct gguf_kv *kv;
        int r;

        r = kv_get(g, key, ret, VTYPE_BIT(DSA_GGUF_BOOL), 0, &kv);
        if (r < 0)
                return r;
        *ret = kv->value[0] != 0;
        return 0;
}

int dsa_gguf_get_str(const struct dsa_gguf *g, const char *key, const char **ret, size_t *ret_len) {
        const struct gguf_kv *kv;
        int r;

        r = kv_get(g, key, ret && ret_len, VTYPE_BIT(DSA_GGUF_STRING), 0, &kv);
        if (r < 0)
                return r;
        *ret = (const char *) kv->value;
        *ret_len = kv->len;
        return 0;
}

int dsa_gguf_get_arr(const struct dsa_gguf *g, const char *key, enum dsa_gguf_vtype *ret_type,
                     size_t *ret_n) {
        const struct gguf_kv *kv;
        int r;

        r = kv_get(g, key, ret_type && ret_n, VTYPE_BIT(DSA_GGUF_ARRAY), VTYPES_ANY, &kv);
        if (r < 0)
                return r;
        *ret_type = kv->arr_type;
        *ret_n = kv->n; /* bounded by the file size at open */
        return 0;
}

int dsa_gguf_get_arr_str(const struct dsa_gguf *g, const char *key, size_t i, const char **ret,
                         size_t *ret_len) {
        const struct gguf_kv *kv;
        uint64_t len;
        int r;

        r = kv_get(g, key, ret && ret_len, VTYPE_BIT(DSA_GGUF_ARRAY), VTYPE_BIT(DSA_GGUF_STRING), &kv);
        if (r < 0)
                return r;
        if (i >= kv->n)
                return -ERANGE;
        /* Validated at open: the length and the bytes lie inside the file. */
        memcpy(&len, g->base + kv->str_offs[i], sizeof(len));
        *ret = (const char *) g->base + kv->str_offs[i] + sizeof(len);
        *ret_len = len;
        return 0;
}

int dsa_gguf_get_arr_data(const struct dsa_gguf *g, const char *key, const void **ret) {
        const struct gguf_kv *kv;
        int r;

        r = kv_get(g, key, ret, VTYPE_BIT(DSA_GGUF_ARRAY), VTYPES_ANY & ~VTYPE_BIT(DSA_GGUF_STRING), &kv);
        if (r < 0)
                return r;
        *ret = kv->value;
        return 0;
}

size_t dsa_gguf_n_tensors(const struct dsa_gguf *g) {
        return g ? g->n_tensors : 0;
}

const struct dsa_tensor_view *dsa_gguf_tensor(const struct dsa_gguf *g, size_t i) {
        return g && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct dsa_tensor_view *dsa_gguf_find_tensor(const struct dsa_gguf *g, const char *name) {
        if (!g || !name)
                return NULL;
        return dsa__name_index_find(DSA__NAME_TABLE(g->tensors, g->n_tensors), g->tensor_sorted, name);
}
