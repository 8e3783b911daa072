/* dsad's request decoder and response encoder (daemon/request.c): valid payloads decode to
 * private NUL-terminated copies; every kind of lie is -EINVAL; seeded random damage never reads
 * out of bounds; responses round-trip per include/dsa/ring.h on the bundled model and match the
 * engine called directly; batched runs equal single runs; short caps give -ENOBUFS.
 * The registry and logging are stubbed here, so the test links only the data plane. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon.h"
#include "engine/tokenizer.h"
#include "testutil.h"

/* ---- stubs for what request.c and session.c need from the control plane */
struct dsad_model {
        struct dsa_model *engine;
        int refs;
        bool loaded;
};
const struct dsa_model *dsad_model_engine(const struct dsad_model *m) {
        return m ? m->engine : NULL;
}
struct dsad_model *dsad_model_ref(struct dsad_model *m) {
        __atomic_fetch_add(&m->refs, 1, __ATOMIC_RELAXED);
        return m;
}
void dsad_model_unref(struct dsad_model *m) {
        if (m)
                __atomic_fetch_sub(&m->refs, 1, __ATOMIC_RELAXED);
}
bool dsad_model_loaded(const struct dsad_model *m) {
        return m && m->loaded;
}
int dsad_registry_load(struct dsad *d, const char *name, struct dsad_model **ret) {
        return -ENOENT;
}
/* No variant ladder: the scheduler runs the model's engine as it is. */
struct dsad_ladder *dsad_model_ladder(const struct dsad_model *m) {
        return NULL;
}
void dsad_adaptive_wake(struct dsad *d) {
}
void dsad_api_sessions_changed(struct dsad *d) {
}
void dsad_log(int priority, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}
int dsad_log_errno(int priority, int r, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return r;
}

/* ---- payload builder */
struct buf {
        uint8_t b[8192];
        size_t n;
};
static void put32(struct buf *b, uint32_t v) {
        memcpy(b->b + b->n, &v, 4);
        b->n += 4;
}
static void put_texts(struct buf *b, const char *const *t, size_t n) {
        put32(b, (uint32_t) n);
        for (size_t i = 0; i < n; i++) {
                put32(b, (uint32_t) strlen(t[i]));
                memcpy(b->b + b->n, t[i], strlen(t[i]));
                b->n += strlen(t[i]);
        }
}
static struct dsa_ring_sqe sqe_for(uint32_t op, const struct buf *b) {
        return (struct dsa_ring_sqe) { .user_data = 42, .op = op, .slot = 1, .len = (uint32_t) b->n };
}
static int decode(const struct dsa_ring_sqe *sqe, const struct buf *b, struct dsad_request **ret) {
        /* An exact-size copy so ASan catches a read past the payload. */
        uint8_t *p = malloc(b->n ? b->n : 1);
        int r;

        memcpy(p, b->b, b->n);
        r = dsad_request_decode(sqe, p, b->n, 4, ret);
        free(p);
        return r;
}
static void expect_einval(const struct dsa_ring_sqe *sqe, const struct buf *b) {
        struct dsad_request *r = NULL;
        assert_int_equal(decode(sqe, b, &r), -EINVAL);
        assert_null(r);
}

static const char *const texts[] = { "a great movie", "terrible, boring and far too long", "ok" };

static void test_decode_valid(void **state) {
        struct buf b = {};
        struct dsad_request *r = NULL;

        put_texts(&b, texts, 3);
        struct dsa_ring_sqe sqe = sqe_for(DSA_RING_OP_EMBED, &b);
        sqe.pool = DSA_RING_POOL_MEAN;
        assert_int_equal(decode(&sqe, &b, &r), 0);
        assert_non_null(r);
        assert_int_equal(r->op, DSA_RING_OP_EMBED);
        assert_int_equal(r->pool, DSA_RING_POOL_MEAN);
        assert_int_equal(r->slot, 1);
        assert_int_equal(r->user_data, 42);
        assert_int_equal(r->n_texts, 3);
        for (size_t i = 0; i < 3; i++) {
                assert_int_equal(r->lens[i], strlen(texts[i]));
                assert_string_equal(r->texts[i], texts[i]);
        }
        assert_null(r->session);
        assert_null(r->model);
        dsad_request_free(r);

        /* EMBED without pooling. */
        sqe.pool = DSA_RING_POOL_NONE;
        assert_int_equal(decode(&sqe, &b, &r), 0);
        assert_int_equal(r->pool, DSA_RING_POOL_NONE);
        dsad_request_free(r);

        /* Tokenize with NO_SPECIAL, an empty text, UTF-8. */
        static const char *const t2[] = { "", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80" };
        b.n = 0;
        put_texts(&b, t2, 2);
        sqe = sqe_for(DSA_RING_OP_TOKENIZE, &b);
        sqe.flags = DSA_RING_SQE_NO_SPECIAL;
        assert_int_equal(decode(&sqe, &b, &r), 0);
        assert_int_equal(r->n_texts, 2);
        assert_string_equal(r->texts[0], "");
        assert_string_equal(r->texts[1], t2[1]);
        dsad_request_free(r);

        /* NOP: empty. */
        b.n = 0;
        sqe = sqe_for(DSA_RING_OP_NOP, &b);
        assert_int_equal(decode(&sqe, &b, &r), 0);
        assert_int_equal(r->n_texts, 0);
        dsad_request_free(r);

        /* 1024 empty texts is the most. */
        b.n = 0;
        put32(&b, 1024);
        for (int i = 0; i < 1024; i++)
                put32(&b, 0);
        sqe = sqe_for(DSA_RING_OP_CLASSIFY, &b);
        assert_int_equal(decode(&sqe, &b, &r), 0);
        assert_int_equal(r->n_texts, 1024);
        dsad_request_free(r);
}

static void test_decode_lies(void **state) {
        struct buf good = {}, b;
        struct dsa_ring_sqe sqe;

        put_texts(&good, texts, 2);

#define WITH(op_, ...)                          \
        do {                                    \
                b = good;                       \
                sqe = sqe_for(op_, &b);         \
                __VA_ARGS__;                    \
                expect_einval(&sqe, &b);        \
        } while (0)
        /* counts */
        WITH(DSA_RING_OP_CLASSIFY, { uint32_t v = 0; memcpy(b.b, &v, 4); });
        WITH(DSA_RING_OP_CLASSIFY, { uint32_t v = 3; memcpy(b.b, &v, 4); });
        WITH(DSA_RING_OP_CLASSIFY, { uint32_t v = 1; memcpy(b.b, &v, 4); }); /* trailing text */
        WITH(DSA_RING_OP_CLASSIFY, { uint32_t v = 0xffffffffu; memcpy(b.b, &v, 4); });
        WITH(DSA_RING_OP_CLASSIFY, { uint32_t v = 1025; memcpy(b.b, &v, 4); });
        /* lengths */
        WITH(DSA_RING_OP_CLASSIFY, { uint32_t v = 14; memcpy(b.b + 4, &v, 4); });
        WITH(DSA_RING_OP_CLASSIFY, { uint32_t v = 12; memcpy(b.b + 4, &v, 4); });
        WITH(DSA_RING_OP_CLASSIFY, { uint32_t v = 0xffffffffu; memcpy(b.b + 4, &v, 4); });
        WITH(DSA_RING_OP_CLASSIFY, { uint32_t v = 0x7ffffffcu; memcpy(b.b + 4, &v, 4); });
        /* short / trailing bytes; SQE len disagreeing with the payload */
        WITH(DSA_RING_OP_CLASSIFY, { b.n = 3; sqe.len = 3; });
        WITH(DSA_RING_OP_CLASSIFY, { b.n = 0; sqe.len = 0; });
        WITH(DSA_RING_OP_CLASSIFY, { b.n -= 1; sqe.len = (uint32_t) b.n; });
        WITH(DSA_RING_OP_CLASSIFY, { b.n = 4 + 4 + 13 + 2; sqe.len = (uint32_t) b.n; }); /* length cut */
        WITH(DSA_RING_OP_CLASSIFY, { b.b[b.n++] = 0; sqe.len = (uint32_t) b.n; });
        WITH(DSA_RING_OP_CLASSIFY, { sqe.len += 1; });
        WITH(DSA_RING_OP_CLASSIFY, { sqe.len -= 1; });
        WITH(DSA_RING_OP_NOP, {});
        /* op, flags, pool, slot, reserved */
        WITH(4, {});
        WITH(0xffffffffu, {});
        WITH(DSA_RING_OP_TOKENIZE, { sqe.flags = 2; });
        WITH(DSA_RING_OP_TOKENIZE, { sqe.flags = 0x80000001u; });
        WITH(DSA_RING_OP_CLASSIFY, { sqe.flags = DSA_RING_SQE_NO_SPECIAL; });
        WITH(DSA_RING_OP_EMBED, { sqe.pool = DSA_RING_POOL_NONE + 1; });
        WITH(DSA_RING_OP_TOKENIZE, { sqe.pool = DSA_RING_POOL_NONE; });
        WITH(DSA_RING_OP_EMBED, { sqe.pool = 0xffffffffu; });
        WITH(DSA_RING_OP_CLASSIFY, { sqe.pool = DSA_RING_POOL_CLS; });
        WITH(DSA_RING_OP_CLASSIFY, { sqe.slot = 4; });
        WITH(DSA_RING_OP_CLASSIFY, { sqe.slot = 0xffffffffu; });
        WITH(DSA_RING_OP_CLASSIFY, { sqe.reserved[5] = 1; });
        /* text bytes: NUL inside, invalid UTF-8 (bad lead, truncated, overlong, surrogate, > U+10FFFF) */
        WITH(DSA_RING_OP_CLASSIFY, { b.b[10] = 0; });
        WITH(DSA_RING_OP_CLASSIFY, { b.b[10] = (uint8_t) 0xff; });
        WITH(DSA_RING_OP_CLASSIFY, { b.b[8 + 12] = (uint8_t) 0xc3; });
        WITH(DSA_RING_OP_CLASSIFY, { b.b[9] = (uint8_t) 0xc0; b.b[10] = (uint8_t) 0xa0; });
        WITH(DSA_RING_OP_CLASSIFY, { b.b[9] = (uint8_t) 0xed; b.b[10] = (uint8_t) 0xa0; b.b[11] = (uint8_t) 0x80; });
        WITH(DSA_RING_OP_CLASSIFY, { b.b[9] = (uint8_t) 0xf4; b.b[10] = (uint8_t) 0x90; b.b[11] = (uint8_t) 0x80; b.b[12] = (uint8_t) 0x80; });
#undef WITH

        /* NULL arguments */
        struct dsad_request *r = NULL;
        sqe = sqe_for(DSA_RING_OP_CLASSIFY, &good);
        assert_int_equal(dsad_request_decode(NULL, good.b, good.n, 4, &r), -EINVAL);
        assert_int_equal(dsad_request_decode(&sqe, NULL, good.n, 4, &r), -EINVAL);
        assert_int_equal(dsad_request_decode(&sqe, good.b, good.n, 4, NULL), -EINVAL);
        assert_null(dsad_request_free(NULL));
}

/* Seeded random damage: decoding must never read outside the payload (ASan) and anything that
 * decodes must be self-consistent. */
static void test_decode_random(void **state) {
        struct dsa_test_rng rng = { 0x5eed };
        struct buf good = {};

        put_texts(&good, texts, 3);
        for (int it = 0; it < 20000; it++) {
                struct buf b = good;
                struct dsa_ring_sqe sqe = sqe_for(1 + (uint32_t) (dsa_test_rng_u64(&rng) % 3), &b);
                struct dsad_request *r = NULL;
                int flips = 1 + (int) (dsa_test_rng_u64(&rng) % 4);

                for (int f = 0; f < flips; f++) {
                        size_t at = dsa_test_rng_u64(&rng) % b.n;
                        b.b[at] = (uint8_t) dsa_test_rng_u64(&rng);
                }
                if (dsa_test_rng_u64(&rng) % 4 == 0)
                        b.n = dsa_test_rng_u64(&rng) % (b.n + 1);
                sqe.len = (uint32_t) b.n;
                if (decode(&sqe, &b, &r) < 0) {
                        assert_null(r);
                        continue;
                }
                size_t sum = 4;
                for (size_t i = 0; i < r->n_texts; i++) {
                        assert_int_equal(strlen(r->texts[i]), r->lens[i]);
                        sum += 4 + r->lens[i];
                }
                assert_int_equal(sum, b.n);
                dsad_request_free(r);
        }
}

/* ---- running on the bundled model */
static struct dsad_model model;

static int setup_model(void **state) {
        const char *src = getenv("DSA_SOURCE_DIR");
        char path[4096];

        snprintf(path, sizeof(path), "%s/models/sst2-bert-4l256.gguf", src ? src : ".");
        if (access(path, R_OK) < 0) {
                fprintf(stderr, "SKIP: %s not found\n", path);
                return 0;
        }
        if (dsa_model_open(path, &model.engine) < 0)
                return -1;
        dsa_model_set_threads(model.engine, 1);
        model.loaded = true;
        return 0;
}

static int teardown_model(void **state) {
        dsa_model_free(model.engine);
        return 0;
}

static struct dsad_request *make(uint32_t op, uint32_t flags, uint32_t pool, const char *const *t, size_t n) {
        struct buf b = {};
        struct dsad_request *r = NULL;

        if (op != DSA_RING_OP_NOP)
                put_texts(&b, t, n);
        struct dsa_ring_sqe sqe = sqe_for(op, &b);
        sqe.flags = flags;
        sqe.pool = pool;
        assert_int_equal(decode(&sqe, &b, &r), 0);
        r->model = dsad_model_ref(&model);
        r->reply_cap = 1 << 20;
        return r;
}

static uint32_t get32(const uint8_t *p) {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
}

static void test_run_classify(void **state) {
        static uint8_t out[1 << 16];
        const struct dsa_bert_config *c;
        float want[3 * 8];

        if (!model.engine)
                skip();
        c = dsa_model_bert_config(model.engine);
        assert_true(c->n_labels > 0 && c->n_labels <= 8);
        assert_int_equal(dsa_model_classify_texts(model.engine, texts, NULL, 3, want), 0);

        struct dsad_request *r = make(DSA_RING_OP_CLASSIFY, 0, 0, texts, 3);
        ssize_t len = dsad_request_run(r, out, sizeof(out));
        assert_int_equal(len, 8 + 3 * (4 + 4 * c->n_labels));
        assert_int_equal(get32(out), 3);
        assert_int_equal(get32(out + 4), c->n_labels);
        for (size_t i = 0; i < 3; i++) {
                const uint8_t *row = out + 8 + i * (4 + 4 * c->n_labels);
                float got[8];
                uint32_t best = 0;
                memcpy(got, row + 4, 4 * c->n_labels);
                for (uint32_t j = 1; j < c->n_labels; j++)
                        if (want[i * c->n_labels + j] > want[i * c->n_labels + best])
                                best = j;
                assert_int_equal(get32(row), best);
                assert_true(dsa_test_check_tensor("logits", got, want + i * c->n_labels, c->n_labels, 1e-5f, 1e-4f));
        }
        /* -ENOBUFS one byte short, and for a zero cap. */
        assert_int_equal(dsad_request_run(r, out, (size_t) len - 1), -ENOBUFS);
        assert_int_equal(dsad_request_run(r, out, 0), -ENOBUFS);
        /* An unloaded model. */
        model.loaded = false;
        assert_int_equal(dsad_request_run(r, out, sizeof(out)), -ENOENT);
        model.loaded = true;
        dsad_request_free(r);
}

static void test_run_embed(void **state) {
        static uint8_t out[1 << 16];
        static float want[3 * 1024];
        static const struct {
                uint32_t ring;
                int engine; /* -1: the model's default */
        } pools[] = {
                { DSA_RING_POOL_DEFAULT, -1 },
                { DSA_RING_POOL_CLS, DSA_POOL_CLS },
                { DSA_RING_POOL_MEAN, DSA_POOL_MEAN },
        };

        if (!model.engine)
                skip();
        const size_t C = dsa_model_bert_config(model.engine)->n_embd;
        assert_true(C <= 1024);
        for (size_t p = 0; p < ELEMENTSOF(pools); p++) {
                enum dsa_pool mode = pools[p].engine < 0 ? dsa_model_default_pool(model.engine)
                                                         : (enum dsa_pool) pools[p].engine;
                assert_int_equal(dsa_model_embed_texts(model.engine, texts, 3, mode, want), 0);
                struct dsad_request *r = make(DSA_RING_OP_EMBED, 0, pools[p].ring, texts, 3);
                ssize_t len = dsad_request_run(r, out, sizeof(out));
                assert_int_equal(len, 8 + 3 * 4 * C);
                assert_int_equal(get32(out), 3);
                assert_int_equal(get32(out + 4), C);
                float *got = malloc(3 * C * sizeof(float));
                memcpy(got, out + 8, 3 * C * sizeof(float));
                assert_true(dsa_test_check_tensor("embedding", got, want, 3 * C, 1e-5f, 1e-4f));
                free(got);
                assert_int_equal(dsad_request_run(r, out, 8 + 3 * 4 * C - 4), -ENOBUFS);
                dsad_request_free(r);
        }
}

static void test_run_tokenize(void **state) {
        static uint8_t out[1 << 16];
        const struct dsa_tokenizer *t;

        if (!model.engine)
                skip();
        t = dsa_model_tokenizer(model.engine);
        for (int special = 0; special < 2; special++) {
                struct dsad_request *r =
                        make(DSA_RING_OP_TOKENIZE, special ? 0 : DSA_RING_SQE_NO_SPECIAL, 0, texts, 3);
                ssize_t len = dsad_request_run(r, out, sizeof(out));
                size_t off = 4;
                assert_true(len > 4);
                assert_int_equal(get32(out), 3);
                for (size_t i = 0; i < 3; i++) {
                        struct dsa_encoding e = {};
                        assert_int_equal(dsa_tokenizer_encode(t, texts[i], strlen(texts[i]), NULL, 0,
                                                              special ? DSA_ENCODE_SPECIAL : 0, 0, &e), 0);
                        assert_int_equal(get32(out + off), e.n);
                        assert_memory_equal(out + off + 4, e.ids, e.n * 4);
                        off += 4 + 4 * e.n;
                        /* Then each token's vocabulary string. */
                        for (size_t j = 0; j < e.n; j++) {
                                const char *tok = dsa_tokenizer_token(t, e.ids[j]);
                                assert_non_null(tok);
                                assert_int_equal(get32(out + off), strlen(tok));
                                assert_memory_equal(out + off + 4, tok, strlen(tok));
                                off += 4 + strlen(tok);
                        }
                        if (special) {
                                assert_true(e.n >= 2);
                                assert_int_equal(get32(out + off - 4 - strlen("[SEP]")), 5);
                        }
                        dsa_encoding_clear(&e);
                }
                assert_int_equal(off, len);
                assert_int_equal(dsad_request_run(r, out, (size_t) len - 1), -ENOBUFS);
                assert_int_equal(dsad_request_run(r, out, (size_t) len - 6), -ENOBUFS);
                assert_int_equal(dsad_request_run(r, out, 3), -ENOBUFS);
                dsad_request_free(r);
        }
}

/* EMBED without pooling: per text its tokens' last hidden states, as a forward pass of that
 * text alone computes them. */
static void test_run_embed_tokens(void **state) {
        static uint8_t out[1 << 20];
        const struct dsa_bert_config *c;
        const struct dsa_tokenizer *t;

        if (!model.engine)
                skip();
        c = dsa_model_bert_config(model.engine);
        t = dsa_model_tokenizer(model.engine);
        struct dsad_request *r = make(DSA_RING_OP_EMBED, 0, DSA_RING_POOL_NONE, texts, 3);
        ssize_t len = dsad_request_run(r, out, sizeof(out));
        size_t off = 8;
        assert_true(len > 8);
        assert_int_equal(get32(out), 3);
        assert_int_equal(get32(out + 4), c->n_embd);
        for (size_t i = 0; i < 3; i++) {
                struct dsa_encoding e = {};
                assert_int_equal(dsa_tokenizer_encode(t, texts[i], strlen(texts[i]), NULL, 0, DSA_ENCODE_SPECIAL,
                                                      c->n_ctx, &e), 0);
                assert_int_equal(get32(out + off), e.n);
                off += 4;
                float *want = malloc(e.n * c->n_embd * sizeof(float));
                float *got = malloc(e.n * c->n_embd * sizeof(float));
                uint8_t *mask = malloc(e.n);
                memset(mask, 1, e.n);
                struct dsa_batch b = { .B = 1, .T = e.n, .ids = e.ids, .type_ids = e.type_ids, .mask = mask };
                assert_int_equal(dsa_model_forward(model.engine, &b, want, NULL), 0);
                memcpy(got, out + off, e.n * c->n_embd * sizeof(float));
                assert_true(dsa_test_check_tensor("hidden", got, want, e.n * c->n_embd, 1e-5f, 1e-4f));
                off += e.n * c->n_embd * sizeof(float);
                free(want);
                free(got);
                free(mask);
                dsa_encoding_clear(&e);
        }
        assert_int_equal(off, len);
        assert_int_equal(dsad_request_run(r, out, (size_t) len - 1), -ENOBUFS);
        assert_int_equal(dsad_request_run(r, out, 8), -ENOBUFS);
        dsad_request_free(r);
}

static void test_run_nop(void **state) {
        uint8_t out[4];
        struct dsad_request *r = make(DSA_RING_OP_NOP, 0, 0, NULL, 0);

        if (!model.engine) {
                dsad_request_free(r);
                skip();
        }
        assert_int_equal(dsad_request_run(r, out, 0), 0);
        dsad_request_free(r);
}

/* ---- batching: one engine call for several requests equals one call each */
struct collected {
        size_t n;
        struct dsad_request *req[8];
        int status[8];
        uint8_t *payload[8];
        size_t len[8];
};

static void collect(struct dsad_request *req, int status, const void *payload, size_t len, void *userdata) {
        struct collected *c = userdata;

        assert_true(c->n < 8);
        c->req[c->n] = req;
        c->status[c->n] = status;
        c->len[c->n] = len;
        c->payload[c->n] = malloc(len ? len : 1);
        if (len)
                memcpy(c->payload[c->n], payload, len);
        c->n++;
}

static void test_run_batch(void **state) {
        static const char *const a[] = { "the best film of the year" };
        static const char *const b[] = { "dull", "an utter mess of a movie, avoid it" };
        static const char *const cc[] = { "fine", "quite good", "not bad at all", "bad" };
        static uint8_t single[1 << 16];

        if (!model.engine)
                skip();
        for (uint32_t op = DSA_RING_OP_CLASSIFY; op <= DSA_RING_OP_EMBED; op++) {
                struct dsad_request *reqs[3] = {
                        make(op, 0, 0, a, 1),
                        make(op, 0, 0, b, 2),
                        make(op, 0, 0, cc, 4),
                };
                struct collected got = {};

                reqs[1]->reply_cap = 8; /* too small: only this one fails */
                dsad_request_run_batch(model.engine, reqs, 3, collect, &got);
                assert_int_equal(got.n, 3);
                for (size_t i = 0; i < 3; i++) {
                        assert_ptr_equal(got.req[i], reqs[i]);
                        if (i == 1) {
                                assert_int_equal(got.status[i], -ENOBUFS);
                                free(got.payload[i]);
                                continue;
                        }
                        assert_int_equal(got.status[i], 0);
                        ssize_t len = dsad_request_run(reqs[i], single, sizeof(single));
                        assert_int_equal(len, got.len[i]);
                        /* Same numbers up to the engine's batching tolerance. */
                        size_t nf = (got.len[i] - 8) / 4;
                        float *x = malloc(nf * 4), *y = malloc(nf * 4);
                        memcpy(x, got.payload[i] + 8, nf * 4);
                        memcpy(y, single + 8, nf * 4);
                        assert_memory_equal(got.payload[i], single, 8);
                        if (op == DSA_RING_OP_CLASSIFY)
                                for (size_t k = 0; k < nf; k += 1 + dsa_model_bert_config(model.engine)->n_labels) {
                                        /* The label id: an integer, equal. */
                                        assert_memory_equal(got.payload[i] + 8 + 4 * k, single + 8 + 4 * k, 4);
                                        x[k] = y[k] = 0;
                                }
                        assert_true(dsa_test_check_tensor("batched", x, y, nf, 1e-4f, 1e-3f));
                        free(x);
                        free(y);
                        free(got.payload[i]);
                }
                for (size_t i = 0; i < 3; i++)
                        dsad_request_free(reqs[i]);
        }
        assert_int_equal(model.refs, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_decode_valid),
                cmocka_unit_test(test_decode_lies),
                cmocka_unit_test(test_decode_random),
                cmocka_unit_test(test_run_classify),
                cmocka_unit_test(test_run_embed),
                cmocka_unit_test(test_run_tokenize),
                cmocka_unit_test(test_run_embed_tokens),
                cmocka_unit_test(test_run_nop),
                cmocka_unit_test(test_run_batch),
        };
        return cmocka_run_group_tests(tests, setup_model, teardown_model);
}
