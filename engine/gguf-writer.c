/* GGUF writer. Each key/value pair is encoded into its file bytes when it is set, so writing is
 * concatenation: header, pairs, tensor infos, padding, then every tensor's data at the next
 * multiple of the alignment. The file is committed atomically: written to a temp file in the
 * target's folder, fsynced, renamed over the target, and the folder fsynced; any failure
 * removes the temp file and leaves the old target as it was. */
#define _GNU_SOURCE /* mkostemp */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "gguf.h"

struct wkv {
        char *key;
        uint32_t type;
        uint8_t *payload; /* the value as it goes into the file, after the type */
        size_t payload_size;
};

struct wtensor {
        char *name;
        enum dsa_type type;
        uint32_t n_dims;
        uint64_t ne[DSA_MAX_DIMS];
        const void *data;
        uint64_t nbytes;
};

struct dsa_gguf_writer {
        struct wkv *kvs;
        size_t n_kv, cap_kv;
        struct wtensor *tensors;
        size_t n_tensors, cap_tensors;
};

/* A growable byte buffer; a failed append leaves it poisoned (oom) and later appends no-ops. */
struct buf {
        uint8_t *p;
        size_t size, cap;
        bool oom;
};

static void buf_put(struct buf *b, const void *p, size_t n) {
        size_t need;

        if (b->oom || n == 0)
                return;
        if (!size_add_ok(b->size, n, &need)) {
                b->oom = true;
                return;
        }
        if (need > b->cap) {
                size_t cap = MAX(need, b->cap * 2);
                uint8_t *q = realloc(b->p, MAX(cap, (size_t) 64));

                if (!q) {
                        b->oom = true;
                        return;
                }
                b->p = q;
                b->cap = MAX(cap, (size_t) 64);
        }
        memcpy(b->p + b->size, p, n);
        b->size += n;
}

static void buf_u32(struct buf *b, uint32_t v) {
        buf_put(b, &v, sizeof(v));
}

static void buf_u64(struct buf *b, uint64_t v) {
        buf_put(b, &v, sizeof(v));
}

static void buf_str(struct buf *b, const char *s, size_t len) {
        buf_u64(b, len);
        buf_put(b, s, len);
}

struct dsa_gguf_writer *dsa_gguf_writer_new(void) {
        return calloc(1, sizeof(struct dsa_gguf_writer));
}

struct dsa_gguf_writer *dsa_gguf_writer_free(struct dsa_gguf_writer *w) {
        if (!w)
                return NULL;
        for (size_t i = 0; i < w->n_kv; i++) {
                free(w->kvs[i].key);
                free(w->kvs[i].payload);
        }
        for (size_t i = 0; i < w->n_tensors; i++)
                free(w->tensors[i].name);
        free(w->kvs);
        free(w->tensors);
        free(w);
        return NULL;
}

static int check_name(const char *name, const char *what) {
        size_t len = strlen(name);

        if (len == 0 || len > DSA_GGUF_MAX_KEY)
                return dsa__error(-EINVAL, "%s '%.64s' is empty or longer than %u bytes", what, name,
                                  DSA_GGUF_MAX_KEY);
        return 0;
}

/* Takes ownership of payload (also on failure). */
static int add_kv(struct dsa_gguf_writer *w, const char *key, uint32_t type, struct buf *payload) {
        _cleanup_free_ uint8_t *p = payload->p;
        char *k;
        int r;

        if (!w || !key)
                return -EINVAL;
        if (payload->oom)
                return -ENOMEM;
        r = check_name(key, "key");
        if (r < 0)
                return r;
        for (size_t i = 0; i < w->n_kv; i++)
                if (strcmp(w->kvs[i].key, key) == 0)
                        return dsa__error(-EEXIST, "key '%s' is already set", key);
        if (w->n_kv == w->cap_kv) {
                size_t cap = MAX(w->cap_kv * 2, (size_t) 16);
                struct wkv *q = reallocarray(w->kvs, cap, sizeof(*q));

                if (!q)
                        return -ENOMEM;
                w->kvs = q;
                w->cap_kv = cap;
        }
        k = strdup(key);
        if (!k)
                return -ENOMEM;
        w->kvs[w->n_kv++] = (struct wkv) {
                .key = k, .type = type, .payload = TAKE_PTR(p), .payload_size = payload->size,
        };
        return 0;
}

static int set_scalar(struct dsa_gguf_writer *w, const char *key, enum dsa_gguf_vtype type,
                      const void *v) {
        struct buf b = {};

        buf_put(&b, v, dsa_gguf_vtype_size(type));
        return add_kv(w, key, type, &b);
}

int dsa_gguf_writer_set_u32(struct dsa_gguf_writer *w, const char *key, uint32_t v) {
        return set_scalar(w, key, DSA_GGUF_UINT32, &v);
}

int dsa_gguf_writer_set_i32(struct dsa_gguf_writer *w, const char *key, int32_t v) {
        return set_scalar(w, key, DSA_GGUF_INT32, &v);
}

int dsa_gguf_writer_set_u64(struct dsa_gguf_writer *w, const char *key, uint64_t v) {
        return set_scalar(w, key, DSA_GGUF_UINT64, &v);
}

int dsa_gguf_writer_set_f32(struct dsa_gguf_writer *w, const char *key, float v) {
        return set_scalar(w, key, DSA_GGUF_FLOAT32, &v);
}

int dsa_gguf_writer_set_bool(struct dsa_gguf_writer *w, const char *key, bool v) {
        uint8_t b = v;

        return set_scalar(w, key, DSA_GGUF_BOOL, &b);
}

int dsa_gguf_writer_set_str(struct dsa_gguf_writer *w, const char *key, const char *v) {
        struct buf b = {};
        size_t len;

        if (!v)
                return -EINVAL;
        len = strlen(v);
        if (len > DSA_GGUF_MAX_STR)
                return dsa__error(-EINVAL, "value of '%s' is longer than %u bytes", key ? key : "",
                                  DSA_GGUF_MAX_STR);
        buf_str(&b, v, len);
        return add_kv(w, key, DSA_GGUF_STRING, &b);
}

int dsa_gguf_writer_set_arr_str(struct dsa_gguf_writer *w, const char *key, const char *const *v,
                                size_t n) {
        struct buf b = {};

        if (!v && n > 0)
                return -EINVAL;
        buf_u32(&b, DSA_GGUF_STRING);
        buf_u64(&b, n);
        for (size_t i = 0; i < n; i++) {
                size_t len;

                if (!v[i]) {
                        free(b.p);
                        return -EINVAL;
                }
                len = strlen(v[i]);
                if (len > DSA_GGUF_MAX_STR) {
                        free(b.p);
                        return dsa__error(-EINVAL, "element %zu of '%s' is longer than %u bytes", i,
                                          key ? key : "", DSA_GGUF_MAX_STR);
                }
                buf_str(&b, v[i], len);
        }
        return add_kv(w, key, DSA_GGUF_ARRAY, &b);
}

int dsa_gguf_writer_set_arr(struct dsa_gguf_writer *w, const char *key, enum dsa_gguf_vtype type,
                            const void *data, size_t n) {
        struct buf b = {};
        size_t esz = dsa_gguf_vtype_size(type), bytes;

        if (esz == 0 || (!data && n > 0) || !size_mul_ok(n, esz, &bytes))
                return -EINVAL;
        buf_u32(&b, type);
        buf_u64(&b, n);
        buf_put(&b, data, bytes);
        return add_kv(w, key, DSA_GGUF_ARRAY, &b);
}

int dsa_gguf_writer_add_tensor(struct dsa_gguf_writer *w, const char *name, enum dsa_type type,
                               uint32_t n_dims, const uint64_t *ne, const void *data) {
        struct wtensor t = { .type = type, .n_dims = n_dims, .data = data };
        struct dsa_tensor_view v = { .n_dims = n_dims };
        uint64_t n;
        int r;

        if (!w || !name || !ne || n_dims < 1 || n_dims > DSA_MAX_DIMS || !dsa_type_name(type))
                return -EINVAL;
        r = check_name(name, "tensor name");
        if (r < 0)
                return r;
        for (uint32_t d = 0; d < DSA_MAX_DIMS; d++) {
                t.ne[d] = v.ne[d] = d < n_dims ? ne[d] : 1;
                if (t.ne[d] > INT64_MAX)
                        return -EINVAL;
        }
        if (t.ne[0] % dsa_type_block_elems(type) != 0)
                return dsa__error(-EINVAL, "tensor '%s' row of %llu is not a whole number of %s blocks",
                                  name, (unsigned long long) t.ne[0], dsa_type_name(type));
        n = dsa_tensor_nelems(&v);
        if (n == 0 && t.ne[0] && t.ne[1] && t.ne[2] && t.ne[3])
                return -EOVERFLOW;
        r = dsa_type_nbytes(type, n, &t.nbytes);
        if (r < 0)
                return r;
        if (!data && t.nbytes > 0)
                return -EINVAL;
        for (size_t i = 0; i < w->n_tensors; i++)
                if (strcmp(w->tensors[i].name, name) == 0)
                        return dsa__error(-EEXIST, "tensor '%s' is already added", name);
        if (w->n_tensors == w->cap_tensors) {
                size_t cap = MAX(w->cap_tensors * 2, (size_t) 16);
                struct wtensor *q = reallocarray(w->tensors, cap, sizeof(*q));

                if (!q)
                        return -ENOMEM;
                w->tensors = q;
                w->cap_tensors = cap;
        }
        t.name = strdup(name);
        if (!t.name)
                return -ENOMEM;
        w->tensors[w->n_tensors++] = t;
        return 0;
}

static int writer_alignment(const struct dsa_gguf_writer *w, uint32_t *ret) {
        for (size_t i = 0; i < w->n_kv; i++) {
                uint32_t a;

                if (strcmp(w->kvs[i].key, "general.alignment") != 0)
                        continue;
                if (w->kvs[i].type != DSA_GGUF_UINT32)
                        return dsa__error(-EINVAL, "general.alignment must be set as uint32");
                memcpy(&a, w->kvs[i].payload, sizeof(a));
                if (a == 0 || (a & (a - 1)) != 0)
                        return dsa__error(-EINVAL, "general.alignment %u is not a power of two", a);
                *ret = a;
                return 0;
        }
        *ret = DSA_GGUF_DEFAULT_ALIGNMENT;
        return 0;
}

/* Everything before the first tensor's data: header, pairs, infos, padding. Assigns offsets. */
static int build_header(const struct dsa_gguf_writer *w, uint32_t align, struct buf *b,
                        uint64_t *offsets) {
        static const uint8_t zeros[64] = {};
        uint64_t off = 0;

        buf_put(b, "GGUF", 4);
        buf_u32(b, 3);
        buf_u64(b, w->n_tensors);
        buf_u64(b, w->n_kv);
        for (size_t i = 0; i < w->n_kv; i++) {
                buf_str(b, w->kvs[i].key, strlen(w->kvs[i].key));
                buf_u32(b, w->kvs[i].type);
                buf_put(b, w->kvs[i].payload, w->kvs[i].payload_size);
        }
        for (size_t i = 0; i < w->n_tensors; i++) {
                const struct wtensor *t = &w->tensors[i];

                buf_str(b, t->name, strlen(t->name));
                buf_u32(b, t->n_dims);
                for (uint32_t d = 0; d < t->n_dims; d++)
                        buf_u64(b, t->ne[d]);
                buf_u32(b, t->type);
                buf_u64(b, off);
                offsets[i] = off;
                if (__builtin_add_overflow(off, t->nbytes, &off) ||
                    __builtin_add_overflow(off, (uint64_t) align - 1, &off))
                        return -EOVERFLOW;
                off = off / align * align;
        }
        while (!b->oom && b->size % align != 0)
                buf_put(b, zeros, MIN(sizeof(zeros), align - b->size % align));
        return b->oom ? -ENOMEM : 0;
}

static int write_all(int fd, const void *p, uint64_t n) {
        const uint8_t *q = p;

        while (n > 0) {
                ssize_t k = write(fd, q, MIN(n, (uint64_t) (1u << 30)));

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -EIO;
                q += k;
                n -= (uint64_t) k;
        }
        return 0;
}

static int write_zeros(int fd, uint64_t n) {
        static const uint8_t zeros[4096] = {};
        int r;

        while (n > 0) {
                uint64_t k = MIN(n, (uint64_t) sizeof(zeros));

                r = write_all(fd, zeros, k);
                if (r < 0)
                        return r;
                n -= k;
        }
        return 0;
}

static int write_body(const struct dsa_gguf_writer *w, int fd, const struct buf *header,
                      const uint64_t *offsets) {
        uint64_t pos = 0; /* relative to the data section */
        int r;

        r = write_all(fd, header->p, header->size);
        if (r < 0)
                return r;
        for (size_t i = 0; i < w->n_tensors; i++) {
                r = write_zeros(fd, offsets[i] - pos);
                if (r < 0)
                        return r;
                r = write_all(fd, w->tensors[i].data, w->tensors[i].nbytes);
                if (r < 0)
                        return r;
                pos = offsets[i] + w->tensors[i].nbytes;
        }
        if (fsync(fd) < 0)
                return -errno;
        return 0;
}

/* The folder path lives in, for the temp file and the final fsync. */
static int path_dir(const char *path, char **ret) {
        const char *slash = strrchr(path, '/');
        char *d;

        if (!slash)
                d = strdup(".");
        else if (slash == path)
                d = strdup("/");
        else
                d = strndup(path, slash - path);
        if (!d)
                return -ENOMEM;
        *ret = d;
        return 0;
}

int dsa_gguf_writer_write(struct dsa_gguf_writer *w, const char *path) {
        _cleanup_free_ uint64_t *offsets = NULL;
        _cleanup_free_ char *tmp = NULL, *dir = NULL;
        _cleanup_close_ int fd = -EBADF, dfd = -EBADF;
        struct buf header = {};
        uint32_t align = DSA_GGUF_DEFAULT_ALIGNMENT;
        int r;

        if (!w || !path || !*path)
                return -EINVAL;
        r = writer_alignment(w, &align);
        if (r < 0)
                return r;
        offsets = malloc(MAX(w->n_tensors, 1) * sizeof(*offsets));
        if (!offsets)
                return -ENOMEM;
        r = build_header(w, align, &header, offsets);
        if (r < 0) {
                free(header.p);
                return r;
        }
        r = path_dir(path, &dir);
        if (r >= 0) {
                size_t n = strlen(path) + sizeof(".XXXXXX");

                tmp = malloc(n);
                if (tmp)
                        snprintf(tmp, n, "%s.XXXXXX", path);
                else
                        r = -ENOMEM;
        }
        if (r < 0) {
                free(header.p);
                return r;
        }

        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                free(header.p);
                return dsa__error(r, "cannot create a temp file next to '%s': %s", path, strerror(-r));
        }
        /* mkostemp makes the file 0600; models are meant to be read by the daemon's user too. */
        if (fchmod(fd, 0644) < 0)
                r = -errno;
        if (r >= 0)
                r = write_body(w, fd, &header, offsets);
        free(header.p);
        if (r >= 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlink(tmp);
                return dsa__error(r, "cannot write '%s': %s", path, strerror(-r));
        }

        /* The rename is durable only once the folder is on disk; the file itself is complete,
         * so a failure here is reported but the new file stays. */
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0)
                return dsa__error(-errno, "cannot sync folder '%s': %s", dir, strerror(errno));
        return 0;
}
