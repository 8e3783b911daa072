/* safetensors reader: an 8-byte little-endian header length N, N bytes of JSON mapping tensor
 * names to {dtype, shape, data_offsets}, then the data section. N is capped before json-c sees
 * the header; each tensor's shape, dtype and byte range is checked (inside the data section,
 * size matching shape, no two ranges overlapping) before its view is handed out. A sharded
 * checkpoint is several such files named by model.safetensors.index.json; they are merged into
 * one handle with one name table. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "basic/io-util.h"
#include "basic/macro.h"
#include "safetensors.h"
#include "tensor-internal.h"
#include "json-util.h"

#define ST_MAX_HEADER (100u * 1024u * 1024u)
#define ST_MAX_INDEX (100u * 1024u * 1024u)

struct st_map {
        const uint8_t *base;
        size_t size;
        bool mapped;
};

struct dsa_safetensors {
        struct st_map *maps;
        size_t n_maps;
        struct dsa_tensor_view *tensors; /* names are malloc'd */
        size_t n_tensors, cap_tensors;
        size_t *sorted; /* indices into tensors, by name */
};

static const struct {
        const char *name;
        enum dsa_type type;
} dtypes[] = {
        { "F32", DSA_TYPE_F32 }, { "F16", DSA_TYPE_F16 }, { "BF16", DSA_TYPE_BF16 },
        { "F64", DSA_TYPE_F64 }, { "I8", DSA_TYPE_I8 },   { "I16", DSA_TYPE_I16 },
        { "I32", DSA_TYPE_I32 }, { "I64", DSA_TYPE_I64 },
};


struct dsa_safetensors *dsa_safetensors_free(struct dsa_safetensors *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < s->n_tensors; i++)
                free((char *) s->tensors[i].name);
        for (size_t i = 0; i < s->n_maps; i++)
                if (s->maps[i].mapped)
                        munmap((void *) s->maps[i].base, s->maps[i].size);
        free(s->maps);
        free(s->tensors);
        free(s->sorted);
        free(s);
        return NULL;
}


/* Parses JSON text of exactly len bytes (no NUL inside; trailing whitespace allowed, as
 * writers pad the header with spaces). */
static int json_parse(const char *p, size_t len, const char *what, struct json_object **ret) {
        _cleanup_(json_tokener_freep) struct json_tokener *tok = NULL;
        struct json_object *o;
        size_t end;

        if (len > INT32_MAX)
                return -EFBIG;
        if (memchr(p, 0, len))
                return dsa__error(-EBADMSG, "%s contains a NUL byte", what);
        tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        o = json_tokener_parse_ex(tok, p, (int) len);
        if (!o) {
                enum json_tokener_error e = json_tokener_get_error(tok);

                return dsa__error(-EBADMSG, "%s is not valid JSON: %s", what,
                                  e == json_tokener_continue ? "unexpected end" : json_tokener_error_desc(e));
        }
        for (end = json_tokener_get_parse_end(tok); end < len; end++)
                if (!strchr(" \t\r\n", p[end])) {
                        json_object_put(o);
                        return dsa__error(-EBADMSG, "%s has trailing bytes after the JSON object", what);
                }
        *ret = o;
        return 0;
}

/* A JSON non-negative integer. */
static bool json_u64(struct json_object *o, uint64_t *ret) {
        if (!json_object_is_type(o, json_type_int) || json_object_get_int64(o) < 0)
                return false;
        *ret = json_object_get_uint64(o);
        return true;
}

static int add_tensor(struct dsa_safetensors *s, const struct dsa_tensor_view *v) {
        if (s->n_tensors == s->cap_tensors) {
                size_t cap = MAX(s->cap_tensors * 2, (size_t) 64);
                struct dsa_tensor_view *q = reallocarray(s->tensors, cap, sizeof(*q));

                if (!q)
                        return -ENOMEM;
                s->tensors = q;
                s->cap_tensors = cap;
        }
        s->tensors[s->n_tensors++] = *v;
        return 0;
}

/* One entry of the header: validates it and fills v (name not set). begin/end are relative
 * to the data section, which holds data_size bytes at data. */
static int parse_entry(const char *name, struct json_object *e, const uint8_t *data,
                       uint64_t data_size, struct dsa_tensor_view *v, uint64_t *ret_begin) {
        struct json_object *dtype, *shape, *offs;
        uint64_t begin, end, n;
        const char *ds;
        size_t nd;
        int r;

        if (!json_object_is_type(e, json_type_object) ||
            !json_object_object_get_ex(e, "dtype", &dtype) ||
            !json_object_object_get_ex(e, "shape", &shape) ||
            !json_object_object_get_ex(e, "data_offsets", &offs) ||
            !json_object_is_type(dtype, json_type_string) || !json_object_is_type(shape, json_type_array) ||
            !json_object_is_type(offs, json_type_array))
                return dsa__error(-EBADMSG, "tensor '%s' needs dtype, shape and data_offsets", name);

        ds = json_object_get_string(dtype);
        v->type = (enum dsa_type) -1;
        for (size_t i = 0; i < ELEMENTSOF(dtypes); i++)
                if (strcmp(ds, dtypes[i].name) == 0)
                        v->type = dtypes[i].type;
        if (!dsa_type_name(v->type))
                return dsa__error(-EBADMSG, "tensor '%s' has unsupported dtype '%.32s'", name, ds);

        nd = json_object_array_length(shape);
        if (nd > DSA_MAX_DIMS)
                return dsa__error(-EBADMSG, "tensor '%s' has %zu dimensions, at most %d are supported",
                                  name, nd, DSA_MAX_DIMS);
        /* A scalar (shape []) is one element: ne {1}. ggml order: ne[0] is the last dim. */
        v->n_dims = nd > 0 ? (uint32_t) nd : 1;
        for (size_t d = 0; d < DSA_MAX_DIMS; d++)
                v->ne[d] = 1;
        for (size_t d = 0; d < nd; d++) {
                uint64_t x;

                if (!json_u64(json_object_array_get_idx(shape, d), &x) || x > INT64_MAX)
                        return dsa__error(-EBADMSG, "tensor '%s' shape[%zu] is not a non-negative integer",
                                          name, d);
                v->ne[nd - 1 - d] = x;
        }
        n = dsa_tensor_nelems(v);
        if (n == 0 && v->ne[0] && v->ne[1] && v->ne[2] && v->ne[3])
                return dsa__error(-EBADMSG, "tensor '%s' shape overflows 64 bits", name);
        r = dsa_type_nbytes(v->type, n, &v->nbytes);
        if (r < 0)
                return dsa__error(-EBADMSG, "tensor '%s' size overflows 64 bits", name);

        if (json_object_array_length(offs) != 2 || !json_u64(json_object_array_get_idx(offs, 0), &begin) ||
            !json_u64(json_object_array_get_idx(offs, 1), &end))
                return dsa__error(-EBADMSG, "tensor '%s' data_offsets is not [begin, end]", name);
        if (begin > end || end > data_size)
                return dsa__error(-EBADMSG,
                                  "tensor '%s' data_offsets [%llu, %llu] lie outside the data section (%llu bytes)",
                                  name, (unsigned long long) begin, (unsigned long long) end,
                                  (unsigned long long) data_size);
        if (end - begin != v->nbytes)
                return dsa__error(-EBADMSG,
                                  "tensor '%s' has %llu bytes of data but its dtype and shape need %llu",
                                  name, (unsigned long long) (end - begin), (unsigned long long) v->nbytes);
        v->data = data + begin;
        *ret_begin = begin;
        return 0;
}

/* Parses one file's bytes and appends its tensors to s. label names it in reasons. */
static int parse_file(struct dsa_safetensors *s, const uint8_t *p, size_t size, const char *label) {
        _cleanup_(json_object_putp) struct json_object *root = NULL;
        _cleanup_free_ struct dsa__byte_range *ranges = NULL;
        size_t n_ranges = 0, k;
        uint64_t hlen, data_size;
        int r;

        if (size < 8)
                return dsa__error(-EBADMSG, "%s is %zu bytes, too short for a safetensors header", label, size);
        memcpy(&hlen, p, 8);
        if (hlen > ST_MAX_HEADER || hlen > size - 8)
                return dsa__error(-EBADMSG, "%s header claims %llu bytes but the file has %zu (limit %u)",
                                  label, (unsigned long long) hlen, size, ST_MAX_HEADER);
        r = json_parse((const char *) p + 8, hlen, label, &root);
        if (r < 0)
                return r;
        if (!json_object_is_type(root, json_type_object))
                return dsa__error(-EBADMSG, "%s header is not a JSON object", label);
        data_size = size - 8 - hlen;

        ranges = calloc(MAX((size_t) json_object_object_length(root), (size_t) 1), sizeof(*ranges));
        if (!ranges)
                return -ENOMEM;
        json_object_object_foreach(root, key, val) {
                struct dsa_tensor_view v = {};
                uint64_t begin = 0;

                if (strcmp(key, "__metadata__") == 0) {
                        if (!json_object_is_type(val, json_type_object))
                                return dsa__error(-EBADMSG, "%s __metadata__ is not an object", label);
                        json_object_object_foreach(val, mk, mv)
                                if (!json_object_is_type(mv, json_type_string))
                                        return dsa__error(-EBADMSG, "%s __metadata__ '%s' is not a string",
                                                          label, mk);
                        continue;
                }
                if (!*key)
                        return dsa__error(-EBADMSG, "%s has a tensor with an empty name", label);
                r = parse_entry(key, val, p + 8 + hlen, data_size, &v, &begin);
                if (r < 0)
                        return r;
                v.name = strdup(key);
                if (!v.name)
                        return -ENOMEM;
                r = add_tensor(s, &v);
                if (r < 0) {
                        free((char *) v.name);
                        return r;
                }
                ranges[n_ranges++] = (struct dsa__byte_range) { begin, begin + v.nbytes, s->n_tensors - 1 };
        }

        if (dsa__byte_ranges_overlap(ranges, n_ranges, &k))
                return dsa__error(-EBADMSG, "%s tensor '%s' data overlaps another tensor's", label,
                                  s->tensors[k].name);
        return 0;
}

/* Builds the sorted name index; a name seen in two shards is an error. (A key repeated inside
 * one header never gets here: json-c keeps the last value, as serde does.) */
static int build_index(struct dsa_safetensors *s) {
        return dsa__name_index_new(DSA__NAME_TABLE(s->tensors, s->n_tensors), "tensor '%s' appears twice",
                                   &s->sorted);
}

static int add_map(struct dsa_safetensors *s, const uint8_t *base, size_t size, bool mapped) {
        struct st_map *q = reallocarray(s->maps, s->n_maps + 1, sizeof(*q));

        if (!q)
                return -ENOMEM;
        s->maps = q;
        s->maps[s->n_maps++] = (struct st_map) { base, size, mapped };
        return 0;
}

/* Maps the file at dirfd/path read-only and records the mapping in s. */
static int map_file(struct dsa_safetensors *s, int dirfd, const char *path, const uint8_t **ret,
                    size_t *ret_size) {
        const uint8_t *p;
        size_t size;
        int r;

        r = dsa__map_file(dirfd, path, 8, "a safetensors header", &p, &size);
        if (r < 0)
                return r;
        r = add_map(s, p, size, true);
        if (r < 0) {
                munmap((void *) p, size);
                return r;
        }
        *ret = p;
        *ret_size = size;
        return 0;
}

/* One file's bytes into the fresh handle s: its tensors, then the name index. */
static int parse_single(struct dsa_safetensors *s, const uint8_t *p, size_t size, const char *label) {
        int r;

        r = parse_file(s, p, size, label);
        if (r < 0)
                return r;
        return build_index(s);
}

/* Maps and parses the one file dirfd/path (dsa_safetensors_open(), and open_dir without an
 * index). */
static int open_single(int dirfd, const char *path, struct dsa_safetensors **ret) {
        _cleanup_(dsa_safetensors_freep) struct dsa_safetensors *s = NULL;
        const uint8_t *p;
        size_t size;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        r = map_file(s, dirfd, path, &p, &size);
        if (r < 0)
                return r;
        r = parse_single(s, p, size, path);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

int dsa_safetensors_open_memory(const void *data, size_t size, struct dsa_safetensors **ret) {
        _cleanup_(dsa_safetensors_freep) struct dsa_safetensors *s = NULL;
        int r;

        if ((!data && size > 0) || !ret)
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        r = add_map(s, data, size, false);
        if (r < 0)
                return r;
        r = parse_single(s, data, size, "safetensors data");
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

int dsa_safetensors_open(const char *path, struct dsa_safetensors **ret) {
        if (!path || !ret)
                return -EINVAL;
        return open_single(AT_FDCWD, path, ret);
}

/* Shard names come from a file we did not write: only plain names inside dir are accepted. */
static bool shard_name_ok(const char *f) {
        return *f && !strchr(f, '/') && !strstr(f, "..") && strcmp(f, ".") != 0;
}

static int str_cmp(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static int read_index(int dfd, const char *dir, struct json_object **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *text = NULL;
        struct stat st;
        ssize_t k;
        size_t got;

        fd = openat(dfd, "model.safetensors.index.json", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || st.st_size > ST_MAX_INDEX)
                return dsa__error(-EBADMSG, "%s/model.safetensors.index.json is not a regular file of at most %u bytes",
                                  dir, ST_MAX_INDEX);
        text = malloc(st.st_size + 1);
        if (!text)
                return -ENOMEM;
        k = dsa_read_full(fd, text, (size_t) st.st_size);
        if (k < 0)
                return (int) k;
        got = (size_t) k;
        return json_parse(text, got, "model.safetensors.index.json", ret);
}

static int open_sharded(int dfd, const char *dir, struct json_object *index,
                        struct dsa_safetensors **ret) {
        _cleanup_(dsa_safetensors_freep) struct dsa_safetensors *s = NULL;
        _cleanup_free_ const char **files = NULL;
        _cleanup_free_ size_t *shard_first = NULL, *shard_end = NULL;
        struct json_object *map;
        size_t n = 0, n_files = 0;
        int r;

        if (!json_object_is_type(index, json_type_object) ||
            !json_object_object_get_ex(index, "weight_map", &map) ||
            !json_object_is_type(map, json_type_object))
                return dsa__error(-EBADMSG, "%s/model.safetensors.index.json has no weight_map object", dir);

        files = malloc(MAX((size_t) json_object_object_length(map), (size_t) 1) * sizeof(*files));
        if (!files)
                return -ENOMEM;
        json_object_object_foreach(map, name, file) {
                if (!json_object_is_type(file, json_type_string) || !shard_name_ok(json_object_get_string(file)))
                        return dsa__error(-EBADMSG, "weight_map entry '%s' does not name a file in %s",
                                          name, dir);
                files[n++] = json_object_get_string(file);
        }
        qsort(files, n, sizeof(*files), str_cmp);
        for (size_t i = 0; i < n; i++)
                if (i == 0 || strcmp(files[i], files[n_files - 1]) != 0)
                        files[n_files++] = files[i];

        s = calloc(1, sizeof(*s));
        shard_first = calloc(MAX(n_files, 1), sizeof(size_t));
        shard_end = calloc(MAX(n_files, 1), sizeof(size_t));
        if (!s || !shard_first || !shard_end)
                return -ENOMEM;
        for (size_t i = 0; i < n_files; i++) {
                const uint8_t *p;
                size_t size;

                r = map_file(s, dfd, files[i], &p, &size);
                if (r < 0)
                        return r;
                shard_first[i] = s->n_tensors;
                r = parse_file(s, p, size, files[i]);
                if (r < 0)
                        return r;
                shard_end[i] = s->n_tensors;
        }
        r = build_index(s);
        if (r < 0)
                return r;

        /* Every tensor the index names must be in the shard it names. */
        json_object_object_foreach(map, name2, file2) {
                const struct dsa_tensor_view *t = dsa_safetensors_find(s, name2);
                const char *f = json_object_get_string(file2);
                const char **hit = bsearch(&f, files, n_files, sizeof(*files), str_cmp);
                size_t k = hit - files, ti;

                ti = t ? (size_t) (t - s->tensors) : 0;
                if (!t || ti < shard_first[k] || ti >= shard_end[k])
                        return dsa__error(-EBADMSG, "tensor '%s' listed in the index is missing from shard '%s'",
                                          name2, f);
        }
        *ret = TAKE_PTR(s);
        return 0;
}

int dsa_safetensors_open_dir(const char *dir, struct dsa_safetensors **ret) {
        _cleanup_(json_object_putp) struct json_object *index = NULL;
        _cleanup_close_ int dfd = -EBADF;
        int r;

        if (!dir || !ret)
                return -EINVAL;
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return dsa__error(-errno, "cannot open folder '%s': %s", dir, strerror(errno));
        r = read_index(dfd, dir, &index);
        if (r == -ENOENT)
                return open_single(dfd, "model.safetensors", ret);
        if (r < 0)
                return r;
        return open_sharded(dfd, dir, index, ret);
}

size_t dsa_safetensors_n_tensors(const struct dsa_safetensors *s) {
        return s ? s->n_tensors : 0;
}

const struct dsa_tensor_view *dsa_safetensors_tensor(const struct dsa_safetensors *s, size_t i) {
        return s && i < s->n_tensors ? &s->tensors[i] : NULL;
}

const struct dsa_tensor_view *dsa_safetensors_find(const struct dsa_safetensors *s, const char *name) {
        if (!s || !name || !s->sorted)
                return NULL;
        return dsa__name_index_find(DSA__NAME_TABLE(s->tensors, s->n_tensors), s->sorted, name);
}
