/* libdsa's internals shared by its .c files and its unit test (which links the static archive,
 * where these hidden symbols are reachable): the checks on what dsad puts in shared memory and
 * the payload codecs of include/dsa/ring.h. Never installed. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "dsa/dsa.h"
#include "dsa/ring.h"

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void dsa__freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(dsa__freep)

static inline void dsa__closep(int *fd) {
        if (*fd >= 0)
                close(*fd);
}
#define _cleanup_close_ _cleanup_(dsa__closep)

#define DSA__TAKE_PTR(p)                        \
        ({                                      \
                __typeof__(p) _p_ = (p);        \
                (p) = NULL;                     \
                _p_;                            \
        })
#define DSA__TAKE_FD(fd)                        \
        ({                                      \
                int _fd_ = (fd);                \
                (fd) = -EBADF;                  \
                _fd_;                           \
        })

/* dsad's caps (docs/dbus-api.md), checked on our side too so a bad argument fails early. */
#define DSA__MAX_TEXTS 1024u
#define DSA__MAX_TEXT_BYTES (1u << 20)
#define DSA__MAX_SLOTS 256u
#define DSA__MAX_SLOT_SIZE (16u << 20)
/* Sanity caps on what dsad may claim: queue lengths, labels per model, embedding width. */
#define DSA__MAX_QUEUE_ENTRIES 65536u
#define DSA__MAX_LABELS 65536u
#define DSA__MAX_DIM (1u << 20)
/* Variants of one model (ladder rungs) a session believes dsad's Variants property about. */
#define DSA__MAX_VARIANTS 1024u

/* The ring's geometry as libdsa checked it at open: never read back from shared memory. */
struct dsa__ring_geometry {
        uint32_t sq_entries, cq_entries;
        uint32_t n_slots, slot_size;
        uint64_t sq_offset, cq_offset, data_offset, total_size;
};

/* Checks a private copy of the ring header against the size of the memfd (file_size), the
 * seals it carries and what the client asked for (want_slots / want_slot_size, 0 = dsad's
 * choice, within dsad's caps). On success fills *ret. -EPROTO with a static reason in
 * *ret_reason (may be NULL) otherwise. */
int dsa__ring_validate(const struct dsa_ring_header *h, uint64_t file_size, int seals,
                       uint32_t want_slots, uint32_t want_slot_size,
                       struct dsa__ring_geometry *ret, const char **ret_reason);

/* Checks a private copy of a CQE against the geometry: slot in range, len within the slot,
 * status 0 or a plausible negative errno. 0 or -EPROTO. */
int dsa__cqe_validate(const struct dsa_ring_cqe *cqe, const struct dsa__ring_geometry *g);

/* Checks the variant of a CQE that dsa__cqe_validate() accepted against the n_variants names of
 * the session's model: 0 (none) or 1..n_variants. 0 or -EPROTO (the request then fails with
 * it: the CQE is attributable, only its content is impossible). */
int dsa__cqe_validate_variant(const struct dsa_ring_cqe *cqe, size_t n_variants);

/* A session's hints as the SQE carries them (include/dsa/ring.h). */
struct dsa__ring_hints {
        uint32_t min_accuracy;   /* 1/10000 of the base's accuracy, <= 10000 */
        uint32_t max_latency_us;
        uint32_t priority;       /* enum dsa_ring_priority */
};

/* Encodes the public hints (NULL: none) for the ring: min_accuracy rounded to 1/10000,
 * max_latency_ms * 1000 capped to UINT32_MAX, the priority mapped. -EINVAL for min_accuracy
 * outside [0, 1] or NaN, or an unknown priority. */
int dsa__hints_encode(const struct dsa_hints *h, struct dsa__ring_hints *ret);

/* The SQE of one request, hints included, reserved fields zero. */
void dsa__sqe_init(struct dsa_ring_sqe *sqe, uint64_t user_data, uint32_t op, uint32_t flags,
                   uint32_t slot, uint32_t len, uint32_t pool, const struct dsa__ring_hints *hints);

/* Encodes a CLASSIFY/EMBED/TOKENIZE request into buf (cap bytes). -EINVAL for n outside
 * 1..1024, a NULL text or one over 1 MiB; -E2BIG when it does not fit cap. Returns the length. */
int dsa__request_encode(uint8_t *buf, size_t cap, const char *const *texts, size_t n,
                        size_t *ret_len);

/* Decoders of response payloads (private copies, len bytes). Each checks the counts against
 * what was asked (n texts) and that the payload is exactly as long as the counts say; -EPROTO
 * otherwise. labels: the session's label names (n_labels_names of them), may be NULL; variant:
 * the name of the variant that ran the request, or NULL (both copied into the results). */
int dsa__classify_decode(const uint8_t *p, size_t len, size_t n, const char *const *labels,
                         size_t n_label_names, const char *variant,
                         struct dsa_classify_result **ret);
int dsa__embed_decode(const uint8_t *p, size_t len, size_t n, float **ret, size_t *ret_dim);
/* TOKENIZE: ids and token strings; a token holding NUL is -EPROTO. */
int dsa__tokenize_decode(const uint8_t *p, size_t len, size_t n, struct dsa_tokens **ret);
/* EMBED with DSA_RING_POOL_NONE: per text its tokens' hidden states. */
int dsa__embed_tokens_decode(const uint8_t *p, size_t len, size_t n,
                             struct dsa_token_embeddings **ret);

/* Maps a D-Bus error name to a negative errno (fallback: the errno sd-bus would pick, else
 * -EIO). */
int dsa__errno_from_bus_error(const char *name, int fallback);

static inline uint32_t dsa__u32_le(const uint8_t *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

static inline void dsa__put_u32_le(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) v;
        p[1] = (uint8_t) (v >> 8);
        p[2] = (uint8_t) (v >> 16);
        p[3] = (uint8_t) (v >> 24);
}
