/* libdsa's checks on what dsad writes into shared memory, and its payload codecs, without dsad:
 * forged ring headers (by hand and from a seeded RNG), CQEs that lie (variants included),
 * responses whose counts lie, request/response round trips in ring.h's byte layout, and the
 * policy hints as the SQE carries them. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "libdsa-internal.h"

#define SEALS 0x000f /* F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE */

/* A ring as dsad would make it: 16 slots of 4096 bytes, SQ and CQ of 16 entries. */
static struct dsa_ring_header good_header(void) {
        struct dsa_ring_header h = {
                .magic = DSA_RING_MAGIC,
                .version = DSA_RING_VERSION,
                .sq_entries = 16,
                .cq_entries = 16,
                .n_slots = 16,
                .slot_size = 4096,
                .sq_offset = 4096,
                .cq_offset = 4096 + 16 * 64,
                .data_offset = 8192,
        };
        h.total_size = h.data_offset + 16 * 4096;
        return h;
}

static int validate(const struct dsa_ring_header *h, uint32_t slots, uint32_t slot_size) {
        struct dsa__ring_geometry g;
        const char *reason = NULL;
        /* The memfd's size (fstat) is the good ring's, whatever the forged header says. */
        int r = dsa__ring_validate(h, good_header().total_size, SEALS, slots, slot_size, &g, &reason);

        if (r < 0)
                assert_non_null(reason);
        return r;
}

static void test_header_good(void **state) {
        struct dsa_ring_header h = good_header();
        struct dsa__ring_geometry g;

        assert_int_equal(dsa__ring_validate(&h, h.total_size, SEALS, 16, 4096, &g, NULL), 0);
        assert_int_equal(g.n_slots, 16);
        assert_int_equal(g.slot_size, 4096);
        assert_int_equal(g.data_offset, 8192);
        assert_int_equal(validate(&h, 0, 0), 0); /* dsad's defaults accepted */
}

static void test_header_forged(void **state) {
        struct dsa_ring_header h;
        struct dsa__ring_geometry g;

#define EXPECT_BAD(stmt)                                             \
        do {                                                         \
                h = good_header();                                   \
                stmt;                                                \
                assert_int_equal(validate(&h, 16, 4096), -EPROTO);   \
        } while (0)

        EXPECT_BAD(h.magic = 0x12345678);
        EXPECT_BAD(h.version = DSA_RING_VERSION + 1);
        EXPECT_BAD(h.version = 1); /* before token strings: a different TOKENIZE response */
        EXPECT_BAD(h.sq_entries = 12);               /* not a power of two */
        EXPECT_BAD(h.sq_entries = 0);
        EXPECT_BAD(h.cq_entries = 24);
        EXPECT_BAD(h.cq_entries = 8);                /* fewer CQEs than slots */
        EXPECT_BAD(h.sq_entries = 1u << 31);         /* absurd */
        EXPECT_BAD(h.n_slots = 0);
        EXPECT_BAD(h.n_slots = 8);                   /* not what we asked for */
        EXPECT_BAD(h.slot_size = 4000);              /* not a multiple of 64 */
        EXPECT_BAD(h.slot_size = 8192);              /* not what we asked for */
        EXPECT_BAD(h.sq_offset = 100);               /* inside the header */
        EXPECT_BAD(h.sq_offset = 4096 + 8);          /* misaligned */
        EXPECT_BAD(h.cq_offset = h.total_size);      /* outside the file */
        EXPECT_BAD(h.data_offset = 8192 + 64);       /* last slot runs past the end */
        EXPECT_BAD(h.data_offset = UINT64_MAX - 63); /* wraps around */
        EXPECT_BAD(h.cq_offset = h.sq_offset);       /* overlap */
        EXPECT_BAD(h.data_offset = h.cq_offset);
        EXPECT_BAD(h.total_size += 4096);            /* differs from fstat */
#undef EXPECT_BAD

        /* The file smaller than the header says. */
        h = good_header();
        assert_int_equal(dsa__ring_validate(&h, h.total_size - 4096, SEALS, 16, 4096, &g, NULL), -EPROTO);
        /* Not sealed against shrinking: dsad could make us SIGBUS. */
        assert_int_equal(dsa__ring_validate(&h, h.total_size, 0, 16, 4096, &g, NULL), -EPROTO);
}

/* Seeded damage: whatever gets through must still satisfy every invariant we rely on. */
static void test_header_random(void **state) {
        uint64_t x = 0x9e3779b97f4a7c15ull;
        unsigned accepted = 0;

        for (int iter = 0; iter < 20000; iter++) {
                struct dsa_ring_header h = good_header();
                struct dsa__ring_geometry g;
                uint8_t *b = (uint8_t *) &h;
                int flips = 1 + iter % 4;

                for (int k = 0; k < flips; k++) {
                        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                        b[(x >> 8) % 56] ^= (uint8_t) (1u << (x % 8));
                }
                if (dsa__ring_validate(&h, h.total_size, SEALS, 0, 0, &g, NULL) < 0)
                        continue;
                accepted++;
                assert_true(g.sq_entries && !(g.sq_entries & (g.sq_entries - 1)));
                assert_true(g.cq_entries && !(g.cq_entries & (g.cq_entries - 1)));
                assert_true(g.cq_entries >= g.n_slots && g.n_slots > 0);
                assert_true(g.sq_offset >= DSA_RING_HEADER_SIZE);
                assert_true(g.sq_offset + (uint64_t) g.sq_entries * 64 <= g.total_size);
                assert_true(g.cq_offset + (uint64_t) g.cq_entries * 32 <= g.total_size);
                assert_true(g.data_offset + (uint64_t) g.n_slots * g.slot_size <= g.total_size);
        }
        assert_true(accepted > 0); /* e.g. flips that shrink a queue */
}

static void test_cqe(void **state) {
        struct dsa_ring_header h = good_header();
        struct dsa__ring_geometry g;
        struct dsa_ring_cqe c = { .user_data = 7, .status = 0, .slot = 15, .len = 4096 };

        assert_int_equal(dsa__ring_validate(&h, h.total_size, SEALS, 16, 4096, &g, NULL), 0);
        assert_int_equal(dsa__cqe_validate(&c, &g), 0);
        c.status = -ENOBUFS;
        assert_int_equal(dsa__cqe_validate(&c, &g), 0);
        c.status = 0;
        c.slot = 16;
        assert_int_equal(dsa__cqe_validate(&c, &g), -EPROTO);
        c.slot = UINT32_MAX;
        assert_int_equal(dsa__cqe_validate(&c, &g), -EPROTO);
        c.slot = 0;
        c.len = 4097;
        assert_int_equal(dsa__cqe_validate(&c, &g), -EPROTO);
        c.len = 0;
        c.status = 5;
        assert_int_equal(dsa__cqe_validate(&c, &g), -EPROTO);
        c.status = INT32_MIN;
        assert_int_equal(dsa__cqe_validate(&c, &g), -EPROTO);
}

/* CQE.variant: 0 (none) or 1 + an index into the model's Variants. */
static void test_cqe_variant(void **state) {
        struct dsa_ring_cqe c = { .user_data = 7, .slot = 0, .len = 0 };

        assert_int_equal(dsa__cqe_validate_variant(&c, 0), 0);
        assert_int_equal(dsa__cqe_validate_variant(&c, 3), 0);
        c.variant = 1;
        assert_int_equal(dsa__cqe_validate_variant(&c, 0), -EPROTO); /* dsad named no variants */
        assert_int_equal(dsa__cqe_validate_variant(&c, 1), 0);
        c.variant = 3;
        assert_int_equal(dsa__cqe_validate_variant(&c, 3), 0);
        c.variant = 4;
        assert_int_equal(dsa__cqe_validate_variant(&c, 3), -EPROTO);
        c.variant = UINT32_MAX;
        assert_int_equal(dsa__cqe_validate_variant(&c, DSA__MAX_VARIANTS), -EPROTO);
}

/* Hints through the SQE writer, read back at ring.h's byte offsets. */
static void test_hints_sqe(void **state) {
        const struct dsa__ring_hints none = {};
        struct dsa__ring_hints rh;
        struct dsa_ring_sqe sqe;
        uint8_t b[sizeof(sqe)];

        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .min_accuracy = 0.85, .max_latency_ms = 250,
                                                                 .priority = DSA_PRIORITY_HIGH },
                                           &rh),
                         0);
        dsa__sqe_init(&sqe, 0x1122334455667788ull, DSA_RING_OP_CLASSIFY, 0, 3, 40, 0, &rh);
        memcpy(b, &sqe, sizeof(b));
        assert_int_equal(dsa__u32_le(b + 8), DSA_RING_OP_CLASSIFY);
        assert_int_equal(dsa__u32_le(b + 16), 3);
        assert_int_equal(dsa__u32_le(b + 20), 40);
        assert_int_equal(dsa__u32_le(b + 28), 8500);   /* min_accuracy, 1/10000 */
        assert_int_equal(dsa__u32_le(b + 32), 250000); /* max_latency_us */
        assert_int_equal(dsa__u32_le(b + 36), DSA_RING_PRIORITY_HIGH);
        for (size_t k = 40; k < sizeof(b); k++)
                assert_int_equal(b[k], 0); /* reserved */
        /* Back: what dsad reads is what was asked, to the SQE's resolution. */
        assert_true(fabs(sqe.min_accuracy / 10000.0 - 0.85) <= 0.5e-4);
        assert_int_equal(sqe.max_latency_us / 1000, 250);

        /* Rounding to the nearest 1/10000, the bounds, LOW. */
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .min_accuracy = 0.33333,
                                                                 .priority = DSA_PRIORITY_LOW },
                                           &rh),
                         0);
        assert_int_equal(rh.min_accuracy, 3333);
        assert_int_equal(rh.priority, DSA_RING_PRIORITY_LOW);
        assert_int_equal(rh.max_latency_us, 0);
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .min_accuracy = 1.0 }, &rh), 0);
        assert_int_equal(rh.min_accuracy, 10000);
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .min_accuracy = 0.99996 }, &rh), 0);
        assert_int_equal(rh.min_accuracy, 10000);
        /* max_latency_ms * 1000 capped to what 32 bits hold. */
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .max_latency_ms = 4294967 }, &rh), 0);
        assert_int_equal(rh.max_latency_us, 4294967000u);
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .max_latency_ms = 4294968 }, &rh), 0);
        assert_int_equal(rh.max_latency_us, UINT32_MAX);
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .max_latency_ms = UINT32_MAX }, &rh), 0);
        assert_int_equal(rh.max_latency_us, UINT32_MAX);

        /* NULL: none, and an SQE without hints is all zero past pool. */
        rh.priority = 2;
        assert_int_equal(dsa__hints_encode(NULL, &rh), 0);
        assert_memory_equal(&rh, &none, sizeof(rh));
        dsa__sqe_init(&sqe, 1, DSA_RING_OP_NOP, 0, 0, 0, 0, &rh);
        memcpy(b, &sqe, sizeof(b));
        for (size_t k = 28; k < sizeof(b); k++)
                assert_int_equal(b[k], 0);

        /* Out of range: rejected, *ret untouched. */
        rh = (struct dsa__ring_hints) { .min_accuracy = 77 };
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .min_accuracy = NAN }, &rh), -EINVAL);
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .min_accuracy = -0.01 }, &rh), -EINVAL);
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .min_accuracy = 1.0001 }, &rh), -EINVAL);
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .min_accuracy = INFINITY }, &rh), -EINVAL);
        assert_int_equal(dsa__hints_encode(&(struct dsa_hints) { .priority = (enum dsa_priority) 3 }, &rh),
                         -EINVAL);
        assert_int_equal(rh.min_accuracy, 77);
}

static void test_request_encode(void **state) {
        const char *texts[] = { "hello", "", "wörld" };
        uint8_t buf[64];
        size_t len = 0;

        assert_int_equal(dsa__request_encode(buf, sizeof(buf), texts, 3, &len), 0);
        assert_int_equal(len, 4 + 4 + 5 + 4 + 0 + 4 + 6);
        assert_int_equal(dsa__u32_le(buf), 3);
        assert_int_equal(dsa__u32_le(buf + 4), 5);
        assert_memory_equal(buf + 8, "hello", 5);
        assert_int_equal(dsa__u32_le(buf + 13), 0);
        assert_int_equal(dsa__u32_le(buf + 17), 6);
        assert_memory_equal(buf + 21, "wörld", 6);

        assert_int_equal(dsa__request_encode(buf, len - 1, texts, 3, &len), -E2BIG);
        assert_int_equal(dsa__request_encode(buf, 3, texts, 1, &len), -E2BIG);
        assert_int_equal(dsa__request_encode(buf, sizeof(buf), texts, 0, &len), -EINVAL);
        assert_int_equal(dsa__request_encode(buf, sizeof(buf), texts, 1025, &len), -EINVAL);
        const char *with_null[] = { "a", NULL };
        assert_int_equal(dsa__request_encode(buf, sizeof(buf), with_null, 2, &len), -EINVAL);
}

/* Writes a CLASSIFY response: n texts, L labels, label ids and logits as given. */
static size_t put_classify(uint8_t *p, uint32_t n, uint32_t L, const uint32_t *ids, const float *logits) {
        size_t off = 8;

        dsa__put_u32_le(p, n);
        dsa__put_u32_le(p + 4, L);
        for (uint32_t i = 0; i < n; i++) {
                dsa__put_u32_le(p + off, ids[i]);
                off += 4;
                for (uint32_t k = 0; k < L; k++, off += 4) {
                        uint32_t u;
                        memcpy(&u, &logits[i * L + k], 4);
                        dsa__put_u32_le(p + off, u);
                }
        }
        return off;
}

static void test_classify_decode(void **state) {
        const uint32_t ids[] = { 1, 0 };
        const float logits[] = { -1.5f, 2.0f, 3.0f, 1000.0f - 1000.0f };
        const char *labels[] = { "negative", "positive" };
        struct dsa_classify_result *r = NULL;
        uint8_t p[256];
        size_t len = put_classify(p, 2, 2, ids, logits);

        assert_int_equal(dsa__classify_decode(p, len, 2, labels, 2, NULL, &r), 0);
        assert_int_equal(r[0].label_id, 1);
        assert_string_equal(r[0].label, "positive");
        assert_string_equal(r[1].label, "negative");
        assert_int_equal(r[1].n_labels, 2);
        assert_true(r[0].logits[0] == -1.5f && r[0].logits[1] == 2.0f);
        assert_true(fabsf(r[0].probs[0] + r[0].probs[1] - 1.0f) < 1e-6f);
        assert_true(fabsf(r[0].probs[1] - 1.0f / (1.0f + expf(-3.5f))) < 1e-6f);
        dsa_classify_result_free(r);

        /* The variant's name is copied into the results' block: it outlives the caller's. */
        char variant[] = "int8";
        assert_int_equal(dsa__classify_decode(p, len, 2, labels, 2, variant, &r), 0);
        memset(variant, 'x', 4);
        assert_string_equal(r[0].variant, "int8");
        assert_ptr_equal(r[0].variant, r[1].variant);
        assert_ptr_not_equal(r[0].variant, variant);
        assert_string_equal(r[1].label, "negative");
        dsa_classify_result_free(r);
        assert_int_equal(dsa__classify_decode(p, len, 2, NULL, 0, "base", &r), 0);
        assert_string_equal(r[1].variant, "base");
        assert_null(r[1].label);
        dsa_classify_result_free(r);
        assert_int_equal(dsa__classify_decode(p, len, 2, labels, 2, NULL, &r), 0);
        assert_null(r[0].variant);
        dsa_classify_result_free(r);

        /* Names only when the model names as many labels as dsad scored. */
        assert_int_equal(dsa__classify_decode(p, len, 2, labels, 1, NULL, &r), 0);
        assert_null(r[0].label);
        dsa_classify_result_free(r);
        assert_int_equal(dsa__classify_decode(p, len, 2, NULL, 0, NULL, &r), 0);
        assert_null(r[1].label);
        dsa_classify_result_free(r);

        /* Huge logits do not overflow the softmax. */
        const float big[] = { 1e30f, 1e30f };
        len = put_classify(p, 1, 2, ids, big);
        assert_int_equal(dsa__classify_decode(p, len, 1, NULL, 0, NULL, &r), 0);
        assert_true(fabsf(r[0].probs[0] - 0.5f) < 1e-6f);
        dsa_classify_result_free(r);

        /* Lies. */
        len = put_classify(p, 2, 2, ids, logits);
        r = NULL;
        assert_int_equal(dsa__classify_decode(p, len, 3, NULL, 0, NULL, &r), -EPROTO);     /* n */
        assert_int_equal(dsa__classify_decode(p, len - 1, 2, NULL, 0, NULL, &r), -EPROTO); /* short */
        assert_int_equal(dsa__classify_decode(p, len + 4, 2, NULL, 0, NULL, &r), -EPROTO); /* trailing */
        assert_int_equal(dsa__classify_decode(p, 7, 2, NULL, 0, NULL, &r), -EPROTO);
        dsa__put_u32_le(p + 4, 0x40000000); /* n_labels whose size overflows */
        assert_int_equal(dsa__classify_decode(p, len, 2, NULL, 0, NULL, &r), -EPROTO);
        const uint32_t bad_ids[] = { 2, 0 };
        len = put_classify(p, 2, 2, bad_ids, logits);
        assert_int_equal(dsa__classify_decode(p, len, 2, NULL, 0, NULL, &r), -EPROTO);
        assert_null(r);
}

static void test_embed_decode(void **state) {
        uint8_t p[8 + 2 * 3 * 4];
        float *e = NULL;
        size_t dim = 0;

        dsa__put_u32_le(p, 2);
        dsa__put_u32_le(p + 4, 3);
        for (int i = 0; i < 6; i++) {
                float f = (float) i * 0.5f - 1.0f;
                uint32_t u;
                memcpy(&u, &f, 4);
                dsa__put_u32_le(p + 8 + 4 * i, u);
        }
        assert_int_equal(dsa__embed_decode(p, sizeof(p), 2, &e, &dim), 0);
        assert_int_equal(dim, 3);
        for (int i = 0; i < 6; i++)
                assert_true(e[i] == (float) i * 0.5f - 1.0f);
        free(e);

        e = NULL;
        assert_int_equal(dsa__embed_decode(p, sizeof(p), 1, &e, &dim), -EPROTO);
        assert_int_equal(dsa__embed_decode(p, sizeof(p) - 4, 2, &e, &dim), -EPROTO);
        dsa__put_u32_le(p + 4, 0);
        assert_int_equal(dsa__embed_decode(p, sizeof(p), 2, &e, &dim), -EPROTO);
        dsa__put_u32_le(p + 4, 0x40000001); /* dim * n * 4 wraps in 32 bits */
        assert_int_equal(dsa__embed_decode(p, sizeof(p), 2, &e, &dim), -EPROTO);
        assert_null(e);
}

static size_t put_token(uint8_t *p, const char *tok) {
        size_t l = strlen(tok);

        dsa__put_u32_le(p, (uint32_t) l);
        memcpy(p + 4, tok, l);
        return 4 + l;
}

static void test_tokenize_decode(void **state) {
        uint8_t p[128];
        struct dsa_tokens *t = NULL;
        size_t off = 4, first_len;
        const int32_t a[] = { 101, 7592, 102 };
        const char *const s[] = { "[CLS]", "##ing", "" };

        dsa__put_u32_le(p, 2);
        dsa__put_u32_le(p + off, 3), off += 4;
        for (int i = 0; i < 3; i++, off += 4)
                dsa__put_u32_le(p + off, (uint32_t) a[i]);
        first_len = off + 4; /* where the first string's bytes start */
        for (int i = 0; i < 3; i++)
                off += put_token(p + off, s[i]);
        dsa__put_u32_le(p + off, 0), off += 4;

        assert_int_equal(dsa__tokenize_decode(p, off, 2, &t), 0);
        assert_int_equal(t[0].n_ids, 3);
        assert_memory_equal(t[0].ids, a, sizeof(a));
        for (int i = 0; i < 3; i++)
                assert_string_equal(t[0].tokens[i], s[i]);
        assert_int_equal(t[1].n_ids, 0);
        dsa_tokens_free(t);

        t = NULL;
        assert_int_equal(dsa__tokenize_decode(p, off + 1, 2, &t), -EPROTO); /* trailing */
        assert_int_equal(dsa__tokenize_decode(p, off - 4, 2, &t), -EPROTO); /* second count gone */
        assert_int_equal(dsa__tokenize_decode(p, off - 5, 2, &t), -EPROTO); /* a string cut */
        assert_int_equal(dsa__tokenize_decode(p, off, 3, &t), -EPROTO);
        /* A NUL inside a token. */
        p[first_len + 1] = 0;
        assert_int_equal(dsa__tokenize_decode(p, off, 2, &t), -EPROTO);
        p[first_len + 1] = 'C';
        /* A string length that runs past the end, and one that wraps. */
        dsa__put_u32_le(p + first_len - 4, 1000);
        assert_int_equal(dsa__tokenize_decode(p, off, 2, &t), -EPROTO);
        dsa__put_u32_le(p + first_len - 4, 0xfffffffcu);
        assert_int_equal(dsa__tokenize_decode(p, off, 2, &t), -EPROTO);
        dsa__put_u32_le(p + first_len - 4, 5);
        assert_int_equal(dsa__tokenize_decode(p, off, 2, &t), 0);
        dsa_tokens_free(t);
        t = NULL;
        dsa__put_u32_le(p + 4, 0xffffffffu); /* a count that runs past the end */
        assert_int_equal(dsa__tokenize_decode(p, off, 2, &t), -EPROTO);
        assert_null(t);
}

static void test_embed_tokens_decode(void **state) {
        uint8_t p[8 + 4 + 2 * 3 * 4 + 4 + 1 * 3 * 4];
        struct dsa_token_embeddings *e = NULL;
        size_t off = 8;

        dsa__put_u32_le(p, 2);
        dsa__put_u32_le(p + 4, 3);
        dsa__put_u32_le(p + off, 2), off += 4;
        for (int i = 0; i < 6; i++, off += 4) {
                float f = (float) i + 0.5f;
                memcpy(p + off, &f, 4);
        }
        dsa__put_u32_le(p + off, 1), off += 4;
        for (int i = 0; i < 3; i++, off += 4) {
                float f = -(float) i;
                memcpy(p + off, &f, 4);
        }
        assert_int_equal(off, sizeof(p));
        assert_int_equal(dsa__embed_tokens_decode(p, off, 2, &e), 0);
        assert_int_equal(e[0].n_tokens, 2);
        assert_int_equal(e[0].dim, 3);
        assert_int_equal(e[1].n_tokens, 1);
        assert_int_equal(e[1].dim, 3);
        assert_true(e[0].hidden[5] == 5.5f);
        assert_true(e[1].hidden[2] == -2.0f);
        dsa_token_embeddings_free(e);

        e = NULL;
        assert_int_equal(dsa__embed_tokens_decode(p, off - 1, 2, &e), -EPROTO);
        assert_int_equal(dsa__embed_tokens_decode(p, off, 1, &e), -EPROTO); /* trailing text */
        assert_int_equal(dsa__embed_tokens_decode(p, off, 3, &e), -EPROTO);
        dsa__put_u32_le(p + 8, 3); /* first text claims a token more */
        assert_int_equal(dsa__embed_tokens_decode(p, off, 2, &e), -EPROTO);
        dsa__put_u32_le(p + 8, 0x55555556u); /* k * dim * 4 wraps */
        assert_int_equal(dsa__embed_tokens_decode(p, off, 2, &e), -EPROTO);
        dsa__put_u32_le(p + 8, 2);
        dsa__put_u32_le(p + 4, 0);
        assert_int_equal(dsa__embed_tokens_decode(p, off, 2, &e), -EPROTO);
        assert_null(e);
}

/* Encode a request, decode it as dsad's side would (by ring.h), then encode a TOKENIZE response
 * with one id and one one-byte token per byte and decode it: the lengths come back. */
static void test_round_trip(void **state) {
        const char *texts[] = { "a", "bc", "def", "" };
        uint8_t req[128], resp[256];
        size_t len, off = 4, roff = 4;
        struct dsa_tokens *t = NULL;
        uint32_t n;

        assert_int_equal(dsa__request_encode(req, sizeof(req), texts, 4, &len), 0);
        n = dsa__u32_le(req);
        dsa__put_u32_le(resp, n);
        for (uint32_t i = 0; i < n; i++) {
                uint32_t l = dsa__u32_le(req + off);
                off += 4;
                dsa__put_u32_le(resp + roff, l), roff += 4;
                for (uint32_t k = 0; k < l; k++, roff += 4)
                        dsa__put_u32_le(resp + roff, req[off + k]);
                for (uint32_t k = 0; k < l; k++) {
                        dsa__put_u32_le(resp + roff, 1);
                        resp[roff + 4] = req[off + k];
                        roff += 5;
                }
                off += l;
        }
        assert_int_equal(off, len);
        assert_int_equal(dsa__tokenize_decode(resp, roff, 4, &t), 0);
        for (int i = 0; i < 4; i++) {
                assert_int_equal(t[i].n_ids, strlen(texts[i]));
                for (size_t k = 0; k < t[i].n_ids; k++) {
                        assert_int_equal(t[i].ids[k], (unsigned char) texts[i][k]);
                        assert_int_equal(strlen(t[i].tokens[k]), 1);
                        assert_int_equal(t[i].tokens[k][0], texts[i][k]);
                }
        }
        dsa_tokens_free(t);
}

static void test_errno_map(void **state) {
        assert_int_equal(dsa__errno_from_bus_error("org.dsa.Error.NoSuchModel", -EIO), -ENOENT);
        assert_int_equal(dsa__errno_from_bus_error("org.dsa.Error.BadModel", -EIO), -EBADMSG);
        assert_int_equal(dsa__errno_from_bus_error("org.dsa.Error.Busy", -EIO), -EBUSY);
        assert_int_equal(dsa__errno_from_bus_error("org.dsa.Error.InvalidArgs", -EIO), -EINVAL);
        assert_int_equal(dsa__errno_from_bus_error("org.dsa.Error.AccessDenied", -EIO), -EACCES);
        assert_int_equal(dsa__errno_from_bus_error("org.dsa.Error.LimitExceeded", -EIO), -EDQUOT);
        assert_int_equal(dsa__errno_from_bus_error("org.dsa.Error.NoSuchSession", -EIO), -ENOENT);
        assert_int_equal(dsa__errno_from_bus_error("org.dsa.Error.Future", -EIO), -EIO);
        assert_int_equal(dsa__errno_from_bus_error("org.freedesktop.DBus.Error.ServiceUnknown", -EHOSTUNREACH),
                         -ECONNREFUSED);
        assert_int_equal(dsa__errno_from_bus_error("org.freedesktop.DBus.Error.NameHasNoOwner", -ENXIO),
                         -ECONNREFUSED);
        assert_int_equal(dsa__errno_from_bus_error("org.freedesktop.DBus.Error.Disconnected", -ECONNRESET),
                         -ENOTCONN);
        assert_int_equal(dsa__errno_from_bus_error("org.example.Other", -EPERM), -EPERM);
        /* A dsad older than the call. */
        assert_int_equal(dsa__errno_from_bus_error("org.freedesktop.DBus.Error.UnknownMethod", -EBADR),
                         -EOPNOTSUPP);
        assert_int_equal(dsa__errno_from_bus_error("org.freedesktop.DBus.Error.UnknownProperty", -ENOENT),
                         -EOPNOTSUPP);
        assert_int_equal(dsa__errno_from_bus_error("org.freedesktop.DBus.Error.UnknownObject", -EBADR), -ENOENT);
        assert_int_equal(dsa__errno_from_bus_error(NULL, 0), -EIO);
}

/* Public entry points check their arguments and never touch NULL. */
static void test_public_args(void **state) {
        struct dsa_client *c = (struct dsa_client *) 1;

        assert_int_equal(dsa_client_new(NULL, NULL), -EINVAL);
        assert_null(dsa_client_free(NULL));
        assert_null(dsa_session_free(NULL));
        assert_null(dsa_client_error_message(NULL));
        assert_int_equal(dsa_session_open(NULL, "m", 0, 0, (struct dsa_session **) &c), -EINVAL);
        assert_int_equal(dsa_session_get_fd(NULL), -EINVAL);
        assert_int_equal(dsa_session_dispatch(NULL), -EINVAL);
        assert_int_equal(dsa_nop(NULL), -EINVAL);
        assert_int_equal(dsa_session_submit_nop(NULL, NULL, NULL, NULL), -EINVAL);
        assert_int_equal(dsa_embed_tokens(NULL, NULL, 0, NULL), -EINVAL);
        assert_int_equal(dsa_session_submit_embed_tokens(NULL, NULL, 0, NULL, NULL, NULL), -EINVAL);
        assert_null(dsa_token_embeddings_free(NULL));
        assert_null(dsa_model_info_free(NULL, 3));
        assert_null(dsa_session_info_free(NULL, 3));
        assert_null(dsa_status_free(NULL));
        assert_int_equal(dsa_session_set_hints(NULL, NULL), -EINVAL);
        assert_int_equal(dsa_session_get_variants(NULL, (const char *const **) &c), -EINVAL);
        assert_int_equal(dsa_client_get_policy(NULL, (struct dsa_policy **) &c), -EINVAL);
        assert_int_equal(dsa_client_get_variants(NULL, "m", (struct dsa_variant_info **) &c, (size_t *) &c),
                         -EINVAL);
        assert_int_equal(dsa_client_get_current_variant(NULL, "m", NULL, NULL), -EINVAL);
        assert_int_equal(dsa_client_set_latency_target(NULL, 100), -EINVAL);
        assert_int_equal(dsa_client_set_power_budget(NULL, 10), -EINVAL);
        assert_int_equal(dsa_client_set_min_accuracy(NULL, 0.9), -EINVAL);
        assert_int_equal(dsa_client_set_policy_mode(NULL, "adaptive"), -EINVAL);
        /* Values out of range fail before any bus traffic (c is not a real client). */
        assert_int_equal(dsa_client_set_latency_target(c, 0), -EINVAL);
        assert_int_equal(dsa_client_set_latency_target(c, NAN), -EINVAL);
        assert_int_equal(dsa_client_set_power_budget(c, -1), -EINVAL);
        assert_int_equal(dsa_client_set_power_budget(c, INFINITY), -EINVAL);
        assert_int_equal(dsa_client_set_min_accuracy(c, 1.5), -EINVAL);
        assert_int_equal(dsa_client_set_min_accuracy(c, NAN), -EINVAL);
        assert_int_equal(dsa_client_set_policy_mode(c, NULL), -EINVAL);
        assert_int_equal(dsa_client_set_policy_mode(c, "fastest"), -EINVAL);
        assert_null(dsa_policy_free(NULL));
        assert_null(dsa_variant_info_free(NULL, 3));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_header_good),
                cmocka_unit_test(test_header_forged),
                cmocka_unit_test(test_header_random),
                cmocka_unit_test(test_cqe),
                cmocka_unit_test(test_cqe_variant),
                cmocka_unit_test(test_hints_sqe),
                cmocka_unit_test(test_request_encode),
                cmocka_unit_test(test_classify_decode),
                cmocka_unit_test(test_embed_decode),
                cmocka_unit_test(test_tokenize_decode),
                cmocka_unit_test(test_embed_tokens_decode),
                cmocka_unit_test(test_round_trip),
                cmocka_unit_test(test_errno_map),
                cmocka_unit_test(test_public_args),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
