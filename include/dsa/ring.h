/* dsa ring wire format: the shared-memory layout between dsad and libdsa.
 *
 * One session = one sealed memfd (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) mapped by both
 * sides, plus two doorbells: "submit", an eventfd (client -> daemon), and "complete", the read
 * end of a pipe (daemon -> client). dsad creates them in OpenSession and passes the memfd, the
 * eventfd and the pipe's read end over D-Bus as Unix fds; the pipe's write end never leaves
 * dsad.
 *
 * Layout of the memfd (all offsets from its start, all little-endian, as on the host):
 *
 *   [0, 4096)                 struct dsa_ring_header (geometry + the four indices)
 *   [sq_offset, +sq_entries*64)   submission queue: struct dsa_ring_sqe[sq_entries]
 *   [cq_offset, +cq_entries*32)   completion queue: struct dsa_ring_cqe[cq_entries]
 *   [data_offset, +n_slots*slot_size)  data slots, slot i at data_offset + i*slot_size
 *
 * Queues are single-producer single-consumer with free-running uint32_t indices masked by the
 * power-of-two entry count, like spa_ringbuffer: the producer writes the entry, then stores its
 * tail with release; the consumer loads the tail with acquire, reads the entry, then stores its
 * head with release. The SQ is produced by the client and consumed by dsad; the CQ the other way.
 *
 * A request: the client picks a free data slot it owns (slots are the client's to manage; one
 * request per slot at a time), writes the request payload there, fills an SQE naming the slot,
 * bumps sq_tail, and writes 1 to the submit eventfd. dsad copies the SQE and the payload out of
 * shared memory before validating anything (the client may rewrite them at any time), runs the
 * request, writes the response payload into the same slot, pushes a CQE and writes a byte to the
 * complete pipe (at least one per batch of completions; none while the pipe is full, since a
 * full pipe already means a wake-up is pending). The client reads the pipe empty (any number
 * of bytes; their values mean nothing) before it looks at cq_tail, so no CQE goes unnoticed.
 * The slot belongs to the client again once its CQE is visible.
 *
 * Shared memory is hostile in both directions: dsad never reads the header's geometry back (it
 * keeps its own copy from creation), reads each index once per pass and clamps everything to
 * the mapping; libdsa checks CQEs and response payloads against its own geometry too.
 *
 * Flow control: dsad keeps at most cq_entries requests of a session in flight; a client that
 * uses each slot for one request at a time and consumes its CQEs never sees a CQE overwritten.
 * Neither doorbell lets a client block dsad: dsad reads the submit eventfd with
 * preadv2(RWF_NOWAIT), which ignores the file status flags the client shares (it may set the
 * eventfd blocking or fill its counter), and writes completions into its own O_NONBLOCK write
 * end of the pipe, an open file description the client never sees, so a client that stops
 * reading only ever fills the pipe. Both fds reach the client O_NONBLOCK.
 *
 * What dsad rejects (CQE status -EINVAL unless said otherwise): slot >= n_slots (-EBADSLT);
 * len > slot_size; an unknown op; flags other than DSA_RING_SQE_NO_SPECIAL, or flags on an op
 * other than TOKENIZE; pool other than 0 on an op other than EMBED, or an unknown pool; any
 * reserved SQE field not zero (so later versions can give them meaning); min_accuracy > 10000 or
 * a priority outside enum dsa_ring_priority; a NOP with len != 0;
 * a payload whose counts or lengths disagree with len (0 or more than 1024 texts, a length
 * past the end, trailing bytes); a text that is not UTF-8 or contains NUL.
 *
 * Payloads (every integer u32 little-endian, no padding, lengths in bytes):
 *   request  CLASSIFY/EMBED/TOKENIZE: u32 n_texts, then n_texts times { u32 len, len bytes UTF-8 }
 *   response CLASSIFY: u32 n_texts, u32 n_labels, then per text { u32 label_id, f32 logits[n_labels] }
 *            EMBED:    u32 n_texts, u32 dim, then per text f32[dim]
 *            EMBED with pool DSA_RING_POOL_NONE (every token's last hidden state, special tokens
 *                      included, truncated to the model's context):
 *                      u32 n_texts, u32 dim, then per text { u32 n_tokens, f32[n_tokens * dim] }
 *            TOKENIZE: u32 n_texts, then per text { u32 n_ids, i32 ids[n_ids],
 *                      then n_ids times { u32 len, len bytes: the token's vocabulary string
 *                      ("##ing", "[CLS]"), UTF-8 without NUL } }
 *            NOP:      empty (request and response)
 * A request whose response would not fit in slot_size completes with -ENOBUFS. */
#pragma once

#include <stdint.h>

#define DSA_RING_MAGIC 0x52415344u /* "DSAR" */
#define DSA_RING_VERSION 3u /* 2: TOKENIZE responses carry token strings; EMBED pool NONE;
                              * 3: policy hints in the SQE, the variant in the CQE */
#define DSA_RING_HEADER_SIZE 4096u

enum dsa_ring_op {
        DSA_RING_OP_NOP = 0,      /* round trip with no work, for latency measurement */
        DSA_RING_OP_CLASSIFY = 1,
        DSA_RING_OP_EMBED = 2,
        DSA_RING_OP_TOKENIZE = 3,
};

enum dsa_ring_pool {
        DSA_RING_POOL_DEFAULT = 0, /* the model's own default */
        DSA_RING_POOL_CLS = 1,
        DSA_RING_POOL_MEAN = 2,
        DSA_RING_POOL_POOLER = 3,
        DSA_RING_POOL_NONE = 4,    /* no pooling: every token's hidden state (see EMBED below) */
};

enum dsa_ring_priority {
        DSA_RING_PRIORITY_NORMAL = 0,
        DSA_RING_PRIORITY_HIGH = 1, /* queued ahead of normal requests */
        DSA_RING_PRIORITY_LOW = 2,  /* queued behind every other request */
};

enum dsa_ring_sqe_flags {
        DSA_RING_SQE_NO_SPECIAL = 1u << 0, /* TOKENIZE: no [CLS]/[SEP] */
};

/* One request, 64 bytes. */
struct dsa_ring_sqe {
        uint64_t user_data; /* echoed in the CQE */
        uint32_t op;        /* enum dsa_ring_op */
        uint32_t flags;     /* enum dsa_ring_sqe_flags */
        uint32_t slot;      /* data slot holding the request payload; the response goes there */
        uint32_t len;       /* request payload bytes in the slot */
        uint32_t pool;      /* EMBED: enum dsa_ring_pool */
        /* Hints for dsad's adaptive policy (docs/dbus-api.md), 0 = none: */
        uint32_t min_accuracy;   /* lowest accuracy kept, in 1/10000 of the base model's (<= 10000) */
        uint32_t max_latency_us; /* submission to result */
        uint32_t priority;       /* enum dsa_ring_priority */
        uint32_t reserved[6]; /* zero */
};

/* One completion, 32 bytes. */
struct dsa_ring_cqe {
        uint64_t user_data; /* from the SQE */
        int32_t status;     /* 0, or a negative errno: -EINVAL malformed request, -ENOBUFS response
                             * does not fit, -EBADSLT bad slot, -ENOENT model gone, -EBUSY daemon
                             * queue full (retry later), -EOPNOTSUPP the model cannot do the op
                             * (no classifier head, no pooler), -ENOMEM, -EIO engine */
        uint32_t slot;      /* the SQE's slot */
        uint32_t len;       /* response payload bytes in the slot */
        uint32_t variant;   /* 1 + the index in the model's Variants property of the rung that ran
                             * the request; 0 when none did (NOP, TOKENIZE, errors) */
        uint32_t reserved[2];
};

/* The first page of the memfd. dsad writes the geometry once at creation; afterwards only the
 * indices change. Each index has a cache line of its own so the two sides do not false-share. */
struct dsa_ring_header {
        uint32_t magic;       /* DSA_RING_MAGIC */
        uint32_t version;     /* DSA_RING_VERSION */
        uint32_t sq_entries;  /* power of two */
        uint32_t cq_entries;  /* power of two, >= n_slots so completions never overflow */
        uint32_t n_slots;
        uint32_t slot_size;   /* bytes, multiple of 64 */
        uint64_t sq_offset;
        uint64_t cq_offset;
        uint64_t data_offset;
        uint64_t total_size;  /* size of the memfd */
        uint8_t pad0[64 - 56];

        uint32_t sq_head;     /* written by dsad (consumer), atomically */
        uint8_t pad1[60];
        uint32_t sq_tail;     /* written by the client (producer), atomically */
        uint8_t pad2[60];
        uint32_t cq_head;     /* written by the client (consumer), atomically */
        uint8_t pad3[60];
        uint32_t cq_tail;     /* written by dsad (producer), atomically */
        uint8_t pad4[60];
};

_Static_assert(sizeof(struct dsa_ring_sqe) == 64, "SQE is 64 bytes");
_Static_assert(sizeof(struct dsa_ring_cqe) == 32, "CQE is 32 bytes");
_Static_assert(__builtin_offsetof(struct dsa_ring_sqe, op) == 8, "SQE layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_sqe, slot) == 16, "SQE layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_sqe, len) == 20, "SQE layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_sqe, pool) == 24, "SQE layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_sqe, priority) == 36, "SQE layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_cqe, status) == 8, "CQE layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_cqe, slot) == 12, "CQE layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_cqe, len) == 16, "CQE layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_cqe, variant) == 20, "CQE layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_header, sq_offset) == 24, "header layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_header, total_size) == 48, "header layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_header, sq_head) == 64, "header layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_header, sq_tail) == 128, "header layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_header, cq_head) == 192, "header layout");
_Static_assert(__builtin_offsetof(struct dsa_ring_header, cq_tail) == 256, "header layout");
_Static_assert(sizeof(struct dsa_ring_header) == 320, "header layout");
_Static_assert(sizeof(struct dsa_ring_header) <= DSA_RING_HEADER_SIZE, "header fits its page");
