/* The wire side of libdsa: checks on the ring header and completions dsad writes into shared
 * memory, and the request/response payload codecs of include/dsa/ring.h. Everything here works
 * on private copies and private geometry, so it is testable without dsad. */
#include <fcntl.h>
#include <math.h>
#include <string.h>

#include "libdsa-internal.h"

#ifndef F_SEAL_SHRINK
#define F_SEAL_SHRINK 0x0002
#endif

static bool is_pow2(uint32_t x) {
        return x != 0 && (x & (x - 1)) == 0;
}

/* [off, off + len) lies within [DSA_RING_HEADER_SIZE, size), without overflow. */
static bool region_ok(uint64_t off, uint64_t len, uint64_t size) {
        uint64_t end;

        if (off < DSA_RING_HEADER_SIZE || off % 64 != 0)
                return false;
        if (__builtin_add_overflow(off, len, &end))
                return false;
        return end <= size;
}

static bool regions_disjoint(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
        return a + alen <= b || b + blen <= a; /* sums checked by region_ok() first */
}

static int fail(const char **ret_reason, const char *reason) {
        if (ret_reason)
                *ret_reason = reason;
        return -EPROTO;
}

int dsa__ring_validate(const struct dsa_ring_header *h, uint64_t file_size, int seals,
                       uint32_t want_slots, uint32_t want_slot_size,
                       struct dsa__ring_geometry *ret, const char **ret_reason) {
        struct dsa__ring_geometry g = {
                .sq_entries = h->sq_entries, .cq_entries = h->cq_entries,
                .n_slots = h->n_slots, .slot_size = h->slot_size,
                .sq_offset = h->sq_offset, .cq_offset = h->cq_offset,
                .data_offset = h->data_offset, .total_size = h->total_size,
        };
        uint64_t sq_len, cq_len, data_len;

        if (h->magic != DSA_RING_MAGIC)
                return fail(ret_reason, "bad magic");
        if (h->version != DSA_RING_VERSION)
                return fail(ret_reason, "unsupported ring version");
        if (!(seals & F_SEAL_SHRINK))
                return fail(ret_reason, "memfd not sealed against shrinking");
        if (g.total_size != file_size)
                return fail(ret_reason, "total_size differs from the memfd's size");
        if (!is_pow2(g.sq_entries) || g.sq_entries > DSA__MAX_QUEUE_ENTRIES)
                return fail(ret_reason, "sq_entries not a power of two");
        if (!is_pow2(g.cq_entries) || g.cq_entries > DSA__MAX_QUEUE_ENTRIES)
                return fail(ret_reason, "cq_entries not a power of two");
        if (g.n_slots == 0 || g.n_slots > DSA__MAX_SLOTS)
                return fail(ret_reason, "n_slots out of range");
        if (g.cq_entries < g.n_slots)
                return fail(ret_reason, "cq_entries smaller than n_slots");
        if (g.slot_size < 64 || g.slot_size % 64 != 0 || g.slot_size > DSA__MAX_SLOT_SIZE)
                return fail(ret_reason, "slot_size not a multiple of 64 within the cap");
        if (want_slots != 0 && g.n_slots != want_slots)
                return fail(ret_reason, "n_slots differs from the request");
        if (want_slot_size != 0 && g.slot_size != want_slot_size)
                return fail(ret_reason, "slot_size differs from the request");

        /* Products of values capped above: no overflow in 64 bits. */
        sq_len = (uint64_t) g.sq_entries * sizeof(struct dsa_ring_sqe);
        cq_len = (uint64_t) g.cq_entries * sizeof(struct dsa_ring_cqe);
        data_len = (uint64_t) g.n_slots * g.slot_size;
        if (!region_ok(g.sq_offset, sq_len, file_size))
                return fail(ret_reason, "submission queue outside the memfd");
        if (!region_ok(g.cq_offset, cq_len, file_size))
                return fail(ret_reason, "completion queue outside the memfd");
        if (!region_ok(g.data_offset, data_len, file_size))
                return fail(ret_reason, "data slots outside the memfd");
        if (!regions_disjoint(g.sq_offset, sq_len, g.cq_offset, cq_len) ||
            !regions_disjoint(g.sq_offset, sq_len, g.data_offset, data_len) ||
            !regions_disjoint(g.cq_offset, cq_len, g.data_offset, data_len))
                return fail(ret_reason, "ring regions overlap");

        *ret = g;
        return 0;
}

int dsa__cqe_validate(const struct dsa_ring_cqe *cqe, const struct dsa__ring_geometry *g) {
        if (cqe->slot >= g->n_slots)
                return -EPROTO;
        if (cqe->len > g->slot_size)
                return -EPROTO;
        if (cqe->status > 0 || cqe->status < -4095)
                return -EPROTO;
        return 0;
}

int dsa__cqe_validate_variant(const struct dsa_ring_cqe *cqe, size_t n_variants) {
        return cqe->variant <= n_variants ? 0 : -EPROTO;
}

int dsa__hints_encode(const struct dsa_hints *h, struct dsa__ring_hints *ret) {
        static const uint32_t priorities[] = {
                [DSA_PRIORITY_NORMAL] = DSA_RING_PRIORITY_NORMAL,
                [DSA_PRIORITY_HIGH] = DSA_RING_PRIORITY_HIGH,
                [DSA_PRIORITY_LOW] = DSA_RING_PRIORITY_LOW,
        };
        uint64_t us;

        if (!h) {
                *ret = (struct dsa__ring_hints) {};
                return 0;
        }
        /* Written so that NaN fails too. */
        if (!(h->min_accuracy >= 0.0 && h->min_accuracy <= 1.0))
                return -EINVAL;
        if ((unsigned) h->priority >= sizeof(priorities) / sizeof(priorities[0]))
                return -EINVAL;
        us = (uint64_t) h->max_latency_ms * 1000u;
        *ret = (struct dsa__ring_hints) {
                .min_accuracy = (uint32_t) lround(h->min_accuracy * 10000.0),
                .max_latency_us = us > UINT32_MAX ? UINT32_MAX : (uint32_t) us,
                .priority = priorities[h->priority],
        };
        return 0;
}

void dsa__sqe_init(struct dsa_ring_sqe *sqe, uint64_t user_data, uint32_t op, uint32_t flags,
                   uint32_t slot, uint32_t len, uint32_t pool, const struct dsa__ring_hints *hints) {
        *sqe = (struct dsa_ring_sqe) {
                .user_data = user_data,
                .op = op,
                .flags = flags,
                .slot = slot,
                .len = len,
                .pool = pool,
                .min_accuracy = hints->min_accuracy,
                .max_latency_us = hints->max_latency_us,
                .priority = hints->priority,
        };
}

int dsa__request_encode(uint8_t *buf, size_t cap, const char *const *texts, size_t n,
                        size_t *ret_len) {
        size_t off = 4;

        if (n == 0 || n > DSA__MAX_TEXTS || !texts)
                return -EINVAL;
        if (cap < 4)
                return -E2BIG;
        for (size_t i = 0; i < n; i++) {
                size_t len;

                if (!texts[i])
                        return -EINVAL;
                len = strlen(texts[i]);
                if (len > DSA__MAX_TEXT_BYTES)
                        return -EINVAL;
                if (cap - off < 4 || cap - off - 4 < len)
                        return -E2BIG;
                dsa__put_u32_le(buf + off, (uint32_t) len);
                memcpy(buf + off + 4, texts[i], len);
                off += 4 + len;
        }
        dsa__put_u32_le(buf, (uint32_t) n);
        *ret_len = off;
        return 0;
}

static float f32_le(const uint8_t *p) {
        uint32_t u = dsa__u32_le(p);
        float f;

        memcpy(&f, &u, sizeof(f));
        return f;
}

int dsa__classify_decode(const uint8_t *p, size_t len, size_t n, const char *const *labels,
                         size_t n_label_names, const char *variant,
                         struct dsa_classify_result **ret) {
        struct dsa_classify_result *r;
        size_t L, per_text, need, names_bytes = 0, variant_bytes = variant ? strlen(variant) + 1 : 0;
        float *f;
        char *names_at, *variant_at = NULL;
        const char **names = NULL;

        if (len < 8)
                return -EPROTO;
        if (dsa__u32_le(p) != n)
                return -EPROTO;
        L = dsa__u32_le(p + 4);
        if (L == 0 || L > DSA__MAX_LABELS)
                return -EPROTO;
        per_text = 4 + 4 * L;
        if (__builtin_mul_overflow(per_text, n, &need) || __builtin_add_overflow(need, 8, &need) ||
            need != len)
                return -EPROTO;

        /* Names only when the model names exactly as many labels as dsad scores. */
        if (labels && n_label_names == L)
                for (size_t k = 0; k < L; k++)
                        names_bytes += strlen(labels[k]) + 1;
        else
                labels = NULL;

        /* One block: results, then logits and probs (2 * n * L floats), then the name pointers,
         * the names and the variant's name, so the array outlives the session. Sizes are bounded
         * by len (and the variant's name by what the session accepted from dsad). */
        size_t floats_at = n * sizeof(*r);
        size_t names_ptr_at = floats_at + 2 * n * L * sizeof(float);
        size_t strings_at = names_ptr_at + (labels ? L * sizeof(char *) : 0);
        r = malloc(strings_at + names_bytes + variant_bytes);
        if (!r)
                return -ENOMEM;
        f = (float *) ((uint8_t *) r + floats_at);
        if (variant) {
                variant_at = (char *) r + strings_at + names_bytes;
                memcpy(variant_at, variant, variant_bytes);
        }
        if (labels) {
                names = (const char **) ((uint8_t *) r + names_ptr_at);
                names_at = (char *) r + strings_at;
                for (size_t k = 0; k < L; k++) {
                        size_t l = strlen(labels[k]) + 1;
                        memcpy(names_at, labels[k], l);
                        names[k] = names_at;
                        names_at += l;
                }
        }

        const uint8_t *q = p + 8;
        for (size_t i = 0; i < n; i++) {
                uint32_t id = dsa__u32_le(q);
                float max = -INFINITY;
                double sum = 0;

                if (id >= L) {
                        free(r);
                        return -EPROTO;
                }
                r[i] = (struct dsa_classify_result) {
                        .label_id = id,
                        .label = names ? names[id] : NULL,
                        .n_labels = L,
                        .logits = f + 2 * i * L,
                        .probs = f + 2 * i * L + L,
                        .variant = variant_at,
                };
                for (size_t k = 0; k < L; k++) {
                        r[i].logits[k] = f32_le(q + 4 + 4 * k);
                        if (r[i].logits[k] > max)
                                max = r[i].logits[k];
                }
                /* Softmax shifted by the max so large logits do not overflow. */
                for (size_t k = 0; k < L; k++) {
                        r[i].probs[k] = expf(r[i].logits[k] - max);
                        sum += r[i].probs[k];
                }
                for (size_t k = 0; k < L; k++)
                        r[i].probs[k] = sum > 0 && isfinite(sum) ? (float) (r[i].probs[k] / sum) : NAN;
                q += per_text;
        }
        *ret = r;
        return 0;
}

int dsa__embed_decode(const uint8_t *p, size_t len, size_t n, float **ret, size_t *ret_dim) {
        size_t dim, need;
        float *e;

        if (len < 8)
                return -EPROTO;
        if (dsa__u32_le(p) != n)
                return -EPROTO;
        dim = dsa__u32_le(p + 4);
        if (dim == 0 || dim > DSA__MAX_DIM)
                return -EPROTO;
        if (__builtin_mul_overflow(dim, n, &need) || __builtin_mul_overflow(need, 4, &need) ||
            __builtin_add_overflow(need, 8, &need) || need != len)
                return -EPROTO;
        e = malloc(n * dim * sizeof(float));
        if (!e)
                return -ENOMEM;
        for (size_t i = 0; i < n * dim; i++)
                e[i] = f32_le(p + 8 + 4 * i);
        *ret = e;
        *ret_dim = dim;
        return 0;
}

int dsa__embed_tokens_decode(const uint8_t *p, size_t len, size_t n,
                             struct dsa_token_embeddings **ret) {
        struct dsa_token_embeddings *e;
        size_t dim, off = 8, total = 0;
        float *f;

        if (len < 8 || dsa__u32_le(p) != n)
                return -EPROTO;
        dim = dsa__u32_le(p + 4);
        if (dim == 0 || dim > DSA__MAX_DIM)
                return -EPROTO;
        /* First pass: every count fits what is left (so total * dim <= len / 4), nothing
         * trails. */
        for (size_t i = 0; i < n; i++) {
                size_t k;

                if (len - off < 4)
                        return -EPROTO;
                k = dsa__u32_le(p + off);
                off += 4;
                if (k > (len - off) / 4 / dim)
                        return -EPROTO;
                off += 4 * k * dim;
                total += k;
        }
        if (off != len)
                return -EPROTO;

        e = malloc(n * sizeof(*e) + total * dim * sizeof(float));
        if (!e)
                return -ENOMEM;
        f = (float *) (e + n);
        off = 8;
        for (size_t i = 0; i < n; i++) {
                size_t k = dsa__u32_le(p + off);

                off += 4;
                e[i] = (struct dsa_token_embeddings) { .n_tokens = k, .dim = dim, .hidden = f };
                for (size_t j = 0; j < k * dim; j++)
                        f[j] = f32_le(p + off + 4 * j);
                f += k * dim;
                off += 4 * k * dim;
        }
        *ret = e;
        return 0;
}

int dsa__tokenize_decode(const uint8_t *p, size_t len, size_t n, struct dsa_tokens **ret) {
        struct dsa_tokens *t;
        size_t off = 4, total = 0, bytes = 0;
        int32_t *ids;
        char **strs, *at;

        if (len < 4 || dsa__u32_le(p) != n)
                return -EPROTO;
        /* First pass: every count and length fits what is left (so total <= len / 4 and the
         * strings hold fewer than len bytes), no token holds NUL, nothing trails. */
        for (size_t i = 0; i < n; i++) {
                size_t k;

                if (len - off < 4)
                        return -EPROTO;
                k = dsa__u32_le(p + off);
                off += 4;
                if (k > (len - off) / 4)
                        return -EPROTO;
                off += 4 * k;
                for (size_t j = 0; j < k; j++) {
                        size_t l;

                        if (len - off < 4)
                                return -EPROTO;
                        l = dsa__u32_le(p + off);
                        off += 4;
                        if (l > len - off || memchr(p + off, 0, l))
                                return -EPROTO;
                        off += l;
                        bytes += l + 1;
                }
                total += k;
        }
        if (off != len)
                return -EPROTO;

        /* One block: the n entries, the string pointers, the ids, the strings (each part
         * aligned for the next). Sizes are bounded by len. */
        t = malloc(n * sizeof(*t) + total * (sizeof(char *) + sizeof(int32_t)) + bytes);
        if (!t)
                return -ENOMEM;
        strs = (char **) (t + n);
        ids = (int32_t *) (strs + total);
        at = (char *) (ids + total);
        off = 4;
        for (size_t i = 0; i < n; i++) {
                size_t k = dsa__u32_le(p + off);

                off += 4;
                t[i] = (struct dsa_tokens) { .n_ids = k, .ids = ids, .tokens = strs };
                for (size_t j = 0; j < k; j++)
                        ids[j] = (int32_t) dsa__u32_le(p + off + 4 * j);
                off += 4 * k;
                for (size_t j = 0; j < k; j++) {
                        size_t l = dsa__u32_le(p + off);

                        memcpy(at, p + off + 4, l);
                        at[l] = 0;
                        strs[j] = at;
                        at += l + 1;
                        off += 4 + l;
                }
                ids += k;
                strs += k;
        }
        *ret = t;
        return 0;
}

int dsa__errno_from_bus_error(const char *name, int fallback) {
        static const struct {
                const char *name;
                int err;
        } map[] = {
                { "org.dsa.Error.NoSuchModel", ENOENT },
                { "org.dsa.Error.BadModel", EBADMSG },
                { "org.dsa.Error.NotLoaded", EALREADY },
                { "org.dsa.Error.NoSuchSession", ENOENT },
                { "org.dsa.Error.InvalidArgs", EINVAL },
                { "org.dsa.Error.Busy", EBUSY },
                { "org.dsa.Error.Failed", EIO },
                { "org.dsa.Error.AccessDenied", EACCES },
                { "org.dsa.Error.LimitExceeded", EDQUOT },
                { "org.freedesktop.DBus.Error.ServiceUnknown", ECONNREFUSED },
                { "org.freedesktop.DBus.Error.NameHasNoOwner", ECONNREFUSED },
                { "org.freedesktop.DBus.Error.Disconnected", ENOTCONN },
                { "org.freedesktop.DBus.Error.NoReply", ETIMEDOUT },
                { "org.freedesktop.DBus.Error.Timeout", ETIMEDOUT },
                { "org.freedesktop.DBus.Error.AccessDenied", EACCES },
                { "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", EACCES },
                /* A dsad older than the call: */
                { "org.freedesktop.DBus.Error.UnknownMethod", EOPNOTSUPP },
                { "org.freedesktop.DBus.Error.UnknownInterface", EOPNOTSUPP },
                { "org.freedesktop.DBus.Error.UnknownProperty", EOPNOTSUPP },
                { "org.freedesktop.DBus.Error.UnknownObject", ENOENT },
        };

        if (name)
                for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
                        if (strcmp(name, map[i].name) == 0)
                                return -map[i].err;
        if (name && strncmp(name, "org.dsa.Error.", 14) == 0)
                return -EIO;
        return fallback < 0 ? fallback : -EIO;
}
