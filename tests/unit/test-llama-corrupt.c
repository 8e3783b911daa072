/* Damaged decoder files for the Llama loader (engine/llama-load.c, engine/attention-variant.c,
 * engine/model.c), in the style of test-model-corrupt: tiny Llamas (fuzz/tiny-llama.c) tied and
 * untied, F32 and F16, with a byte-level BPE tokenizer, and with each attention variant (local,
 * fixed, linear, DSA with a fitted scorer and with the heuristic one) are cut at many lengths,
 * flipped at seeded random positions, and damaged one key or tensor at a time. Every damaged file
 * must either fail with a negative errno and a reason, or load into a model whose forward runs;
 * the specific damage must fail with the reason it deserves, or, where the file is still
 * well-formed, give finite logits. Run under ASan+UBSan in CI. */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/gguf.h"
#include "engine/model-internal.h"
#include "engine/tokenizer.h"
#include "testutil.h"
#include "tiny-llama.h"

#define SEED 20250311u
#define N_FLIPS 300
#define N_TOK 12 /* three blocks of DSA_TEST_LLAMA_BLOCK */

static const struct {
        const char *name;
        struct dsa_test_tiny_llama o;
} seeds[] = {
        { "f32-tied", { 0 } },
        { "f16-untied", { .wtype = DSA_TYPE_F16, .untied = true } },
        { "tokenizer", { .tokenizer = true } },
        { "local", { .att = DSA_ATT_LOCAL } },
        { "fixed-f16", { .wtype = DSA_TYPE_F16, .att = DSA_ATT_FIXED } },
        { "linear-untied", { .att = DSA_ATT_LINEAR, .untied = true } },
        { "dsa", { .att = DSA_ATT_DSA } },
        { "dsa-heuristic", { .att = DSA_ATT_DSA, .heuristic = true, .untied = true } },
};
enum { SEED_F32, SEED_F16, SEED_TOK, SEED_LOCAL, SEED_FIXED, SEED_LINEAR, SEED_DSA, SEED_HEUR, N_SEEDS };

struct file {
        uint8_t *p;
        size_t n;
};

static struct file files[N_SEEDS];

static void write_file(const struct dsa_test_tiny_llama *o, const char *path) {
        int r = dsa_test_tiny_llama_write(o, path);

        if (r < 0)
                fail_msg("cannot write a tiny Llama: %s", dsa_error_message(r));
}

/* The file o describes, in memory. */
static struct file build(const struct dsa_test_tiny_llama *o) {
        char path[] = "/tmp/dsa-test-llama-corrupt-XXXXXX";
        struct file f = { 0 };
        char *data = NULL;
        int fd = mkstemp(path);

        assert_true(fd >= 0);
        close(fd);
        write_file(o, path);
        assert_int_equal(dsa_test_read_file(path, &data, &f.n), 0);
        unlink(path);
        f.p = (uint8_t *) data;
        return f;
}

static struct file copy_of(size_t seed) {
        struct file c = { malloc(files[seed].n), files[seed].n };

        assert_non_null(c.p);
        memcpy(c.p, files[seed].p, c.n);
        return c;
}

static bool all_finite(const float *x, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (!isfinite(x[i]))
                        return false;
        return true;
}

/* A model that loaded must run: logits and per-token NLL over min(N_TOK, n_ctx) ids, and a
 * sequence one past the context refused. Returns whether every output was finite. */
static bool run(const struct dsa_model *m) {
        const struct dsa_llama_config *c = dsa_model_llama_config(m);
        int32_t ids[N_TOK + 1];
        double nll[N_TOK];
        bool finite;
        int r;

        assert_non_null(c);
        if ((double) c->n_layer * c->n_embd * c->n_ff > 1e6 || (double) c->n_vocab * c->n_embd > 1e7)
                return true;
        const size_t T = MIN((size_t) N_TOK, (size_t) c->n_ctx);
        for (size_t t = 0; t <= N_TOK; t++)
                ids[t] = (int32_t) ((t * 7 + 3) % c->n_vocab);
        float *logits = malloc(T * c->n_vocab * sizeof(float)), *hidden = malloc(T * c->n_embd * sizeof(float));
        assert_non_null(logits);
        assert_non_null(hidden);
        r = dsa_model_lm_forward(m, ids, T, logits, hidden, NULL);
        if (r < 0)
                fail_msg("a model that loaded does not run: %s", dsa_error_message(r));
        finite = all_finite(logits, T * c->n_vocab) && all_finite(hidden, T * c->n_embd);
        if (T >= 2) {
                assert_int_equal(dsa_model_lm_nll(m, ids, T, nll, NULL), 0);
                for (size_t t = 0; t + 1 < T; t++)
                        finite = finite && isfinite(nll[t]);
        }
        if (c->n_ctx < N_TOK)
                assert_true(dsa_model_lm_forward(m, ids, c->n_ctx + 1, NULL, hidden, NULL) < 0);
        free(logits);
        free(hidden);
        return finite;
}

/* Opens p; a failure must be a negative errno with a reason and no model, a success must run
 * (with finite outputs when want_finite). Returns the code; ret_finite (or NULL) whether the
 * outputs were finite. */
static int try_model(const uint8_t *p, size_t n, bool want_finite, const char *what, bool *ret_finite) {
        struct dsa_model *m = NULL;
        bool finite = true;
        int r;

        /* An exact-size copy, so ASan sees a read past the end as one. */
        uint8_t *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, p, n);
        dsa_error_clear();
        r = dsa__model_open_gguf_memory(copy, n, &m);
        if (r < 0) {
                assert_null(m);
                assert_true(r > -4096);
                if (strlen(dsa_error_message(r)) == 0)
                        fail_msg("%s: refused (%d) without a reason", what, r);
        } else {
                assert_int_equal(r, 0);
                assert_non_null(m);
                assert_int_equal(dsa_model_arch(m), DSA_ARCH_LLAMA);
                finite = run(m);
                if (!finite && want_finite)
                        fail_msg("%s: loaded, but the forward gives a NaN or infinity", what);
                dsa_model_free(m);
        }
        free(copy);
        if (ret_finite)
                *ret_finite = finite;
        return r;
}

/* A well-formed file that must load and run with finite outputs. */
static void expect_ok(const struct file *f, const char *what) {
        int r = try_model(f->p, f->n, true, what, NULL);

        if (r < 0)
                fail_msg("%s: refused: %s", what, dsa_error_message(r));
}

/* f must fail with a reason containing want. */
static void expect_fail(const struct file *f, const char *what, const char *want) {
        int r = try_model(f->p, f->n, true, what, NULL);

        if (r >= 0)
                fail_msg("%s: opened (want error '%s')", what, want);
        if (!strstr(dsa_error_message(r), want))
                fail_msg("%s: reason '%s' lacks '%s'", what, dsa_error_message(r), want);
}

/* Where the name of key (or tensor) name starts in the header: after its u64 length. */
static size_t name_at(const struct file *f, const char *name) {
        const size_t len = strlen(name);

        for (size_t i = 8; i + len <= f->n; i++) {
                uint64_t n;

                memcpy(&n, f->p + i - 8, 8);
                if (n == len && !memcmp(f->p + i, name, len))
                        return i;
        }
        fail_msg("no key or tensor '%s'", name);
        return 0;
}

/* Where the value of scalar key starts (after its name and u32 type; a string's u64 length). */
static size_t value_at(const struct file *f, const char *key) {
        return name_at(f, key) + strlen(key) + 4;
}

/* Where ne[0] of tensor name's info starts (after its name and u32 n_dims). */
static size_t dims_at(const struct file *f, const char *name) {
        return name_at(f, name) + strlen(name) + 4;
}

/* Where the bytes of tensor name start in f. */
static size_t tensor_at(const struct file *f, const char *name) {
        struct dsa_gguf *g = NULL;
        const struct dsa_tensor_view *v;
        size_t at;

        assert_int_equal(dsa_gguf_open_memory(f->p, f->n, &g), 0);
        v = dsa_gguf_find_tensor(g, name);
        if (!v)
                fail_msg("no tensor '%s'", name);
        at = (size_t) ((const uint8_t *) v->data - f->p);
        dsa_gguf_free(g);
        return at;
}

/* Where the tensor data starts (the header ends before it) and the end of the last tensor's
 * bytes (every shorter file is incomplete). */
static void data_range(const struct file *f, size_t *ret_start, size_t *ret_end) {
        struct dsa_gguf *g = NULL;
        size_t start = f->n, end = 0;

        assert_int_equal(dsa_gguf_open_memory(f->p, f->n, &g), 0);
        for (size_t i = 0; i < dsa_gguf_n_tensors(g); i++) {
                const struct dsa_tensor_view *v = dsa_gguf_tensor(g, i);
                const size_t at = (size_t) ((const uint8_t *) v->data - f->p);
                start = MIN(start, at);
                end = MAX(end, at + v->nbytes);
        }
        dsa_gguf_free(g);
        *ret_start = start;
        *ret_end = end;
}

static int setup(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++)
                files[i] = build(&seeds[i].o);
        return 0;
}

static int teardown(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++)
                free(files[i].p);
        return 0;
}

/* Every seed opens from its file, runs with finite logits and NLL over the whole context, holds
 * what its options say, and survives dsa_model_save_variant() with the same logits. */
static void test_valid(void **state) {
        const size_t T = DSA_TEST_LLAMA_CTX;
        char path[] = "/tmp/dsa-test-llama-valid-XXXXXX", saved[64];
        int32_t ids[DSA_TEST_LLAMA_CTX];
        double nll[DSA_TEST_LLAMA_CTX];
        int fd = mkstemp(path);

        (void) state;
        assert_true(fd >= 0);
        close(fd);
        snprintf(saved, sizeof(saved), "%s.saved", path);
        for (size_t i = 0; i < N_SEEDS; i++) {
                const struct dsa_test_tiny_llama *o = &seeds[i].o;
                const uint32_t V = dsa_test_tiny_llama_n_vocab(o);
                _cleanup_(dsa_model_freep) struct dsa_model *m = NULL, *back = NULL;

                write_file(o, path);
                m = dsa_test_model_open(path);
                const struct dsa_llama_config *c = dsa_model_llama_config(m);
                assert_non_null(c);
                assert_null(dsa_model_bert_config(m));
                assert_int_equal(c->n_vocab, V);
                assert_int_equal(c->n_embd, DSA_TEST_LLAMA_C);
                assert_int_equal(c->n_head, DSA_TEST_LLAMA_H);
                assert_int_equal(c->n_head_kv, DSA_TEST_LLAMA_KV);
                assert_int_equal(c->head_dim, DSA_TEST_LLAMA_HS);
                assert_int_equal(c->n_ff, DSA_TEST_LLAMA_F);
                assert_int_equal(c->n_layer, DSA_TEST_LLAMA_L);
                assert_int_equal(c->n_ctx, DSA_TEST_LLAMA_CTX);

                const struct dsa_llama *l = m->llama;
                assert_int_equal(l->att.kind, o->att);
                assert_int_equal(l->layers[1].down.fmt, o->wtype == DSA_TYPE_F16 ? DSA_WFORMAT_F16 : DSA_WFORMAT_F32);
                assert_int_equal(l->wte.fmt, o->wtype == DSA_TYPE_F16 ? DSA_WFORMAT_F16 : DSA_WFORMAT_F32);
                if (o->att == DSA_ATT_DSA) {
                        assert_int_equal(l->att.heuristic, o->heuristic);
                        assert_int_equal(l->att.rank, o->heuristic ? 0 : DSA_TEST_LLAMA_RANK);
                        assert_int_equal(l->att.block, DSA_TEST_LLAMA_BLOCK);
                }
                assert_int_equal(dsa_model_tokenizer(m) != NULL, o->tokenizer);

                float *logits = malloc(T * V * sizeof(float)), *again = malloc(T * V * sizeof(float));
                struct dsa_lm_stats st = { 0 };
                assert_non_null(logits);
                assert_non_null(again);
                for (size_t t = 0; t < T; t++)
                        ids[t] = (int32_t) ((t * 11 + 1) % V);
                assert_int_equal(dsa_model_lm_forward(m, ids, T, logits, NULL, &st), 0);
                assert_true(all_finite(logits, T * V));
                assert_int_equal(dsa_model_lm_nll(m, ids, T, nll, NULL), 0);
                for (size_t t = 0; t + 1 < T; t++)
                        assert_true(isfinite(nll[t]) && nll[t] >= 0.0);
                /* Sparse variants skip blocks of the 16 a 64-token sequence has. */
                if (o->att == DSA_ATT_LOCAL || o->att == DSA_ATT_FIXED)
                        assert_true(st.blocks_kept < st.blocks_visible);
                assert_true(dsa_model_lm_forward(m, ids, T + 1, NULL, NULL, NULL) < 0);
                const int32_t id3 = ids[3];
                ids[3] = (int32_t) V;
                assert_true(dsa_model_lm_forward(m, ids, 4, logits, NULL, NULL) < 0);
                ids[3] = -1;
                assert_true(dsa_model_lm_forward(m, ids, 4, logits, NULL, NULL) < 0);
                ids[3] = id3;
                printf("%-14s %6zu bytes, logits[0] %+.4f, nll[T-2] %.4f, blocks %llu of %llu\n", seeds[i].name,
                       files[i].n, (double) logits[0], nll[T - 2], (unsigned long long) st.blocks_kept,
                       (unsigned long long) st.blocks_visible);

                /* What the engine writes back reads the same (the attention variant included). */
                assert_int_equal(dsa_model_save_variant(m, saved), 0);
                back = dsa_test_model_open(saved);
                assert_int_equal(back->llama->att.kind, o->att);
                assert_int_equal(dsa_model_lm_forward(back, ids, T, again, NULL, NULL), 0);
                assert_true(dsa_test_check_tensor(seeds[i].name, again, logits, T * V, 1e-6f, 1e-5f));
                unlink(saved);
                free(logits);
                free(again);

                /* The tokenizer: BOS, then the merges all the way up. */
                if (o->tokenizer) {
                        const struct dsa_tokenizer *tok = dsa_model_tokenizer(m);
                        struct dsa_encoding e = { 0 };
                        float *lg = malloc(3 * V * sizeof(float));

                        assert_non_null(lg);
                        assert_int_equal(dsa_tokenizer_encode(tok, "hello world", 11, NULL, 0, DSA_ENCODE_SPECIAL,
                                                              0, &e), 0);
                        assert_int_equal(e.n, 3);
                        assert_int_equal(e.ids[0], DSA_TEST_LLAMA_BOS);
                        assert_int_equal(e.ids[1], 259); /* "hello" */
                        assert_int_equal(e.ids[2], 264); /* "Ġworld" */
                        assert_int_equal(dsa_model_lm_forward(m, e.ids, e.n, lg, NULL, NULL), 0);
                        assert_true(all_finite(lg, 3 * V));
                        dsa_encoding_clear(&e);
                        /* Bytes without a merge are their own symbols, a control byte and UTF-8 too. */
                        assert_int_equal(dsa_tokenizer_encode(tok, "\x01\xc3\xa9~", 4, NULL, 0, 0, 0, &e), 0);
                        assert_int_equal(e.n, 4);
                        assert_true(e.ids[0] == 1 && e.ids[1] == 0xc3 && e.ids[2] == 0xa9 && e.ids[3] == '~');
                        dsa_encoding_clear(&e);
                        free(lg);
                }
        }
        unlink(path);
}

/* Every combination of the writer's options opens from its file and gives finite logits. */
static void test_combinations(void **state) {
        static const enum dsa_type wtypes[] = { DSA_TYPE_F32, DSA_TYPE_F16 };
        char path[] = "/tmp/dsa-test-llama-combo-XXXXXX";
        int32_t ids[DSA_TEST_LLAMA_CTX];
        int fd = mkstemp(path);
        size_t n = 0;

        (void) state;
        assert_true(fd >= 0);
        close(fd);
        for (size_t w = 0; w < ELEMENTSOF(wtypes); w++)
                for (unsigned bits = 0; bits < 4; bits++)
                        for (unsigned k = 0; k <= _DSA_ATT_MAX; k++, n++) { /* _MAX: DSA, heuristic */
                                const struct dsa_test_tiny_llama o = {
                                        .wtype = wtypes[w], .untied = bits & 1, .tokenizer = bits & 2,
                                        .att = k < _DSA_ATT_MAX ? k : DSA_ATT_DSA, .heuristic = k == _DSA_ATT_MAX,
                                };
                                const size_t V = dsa_test_tiny_llama_n_vocab(&o), T = DSA_TEST_LLAMA_CTX;
                                _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
                                float *logits = malloc(T * V * sizeof(float));

                                assert_non_null(logits);
                                write_file(&o, path);
                                m = dsa_test_model_open(path);
                                for (size_t t = 0; t < T; t++)
                                        ids[t] = (int32_t) ((t * 13 + w + bits) % V);
                                assert_int_equal(dsa_model_lm_forward(m, ids, T, logits, NULL, NULL), 0);
                                if (!all_finite(logits, T * V))
                                        fail_msg("combination %zu: a NaN or infinity in the logits", n);
                                free(logits);
                        }
        unlink(path);
        print_message("%zu option combinations opened and ran\n", n);
}

static void test_truncated(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++) {
                const struct file *f = &files[i];
                size_t start, end;

                /* Every length through the header, then every 7th byte of the data. */
                data_range(f, &start, &end);
                for (size_t n = 0; n < end; n += n < start ? 1 : 7)
                        if (try_model(f->p, n, false, seeds[i].name, NULL) >= 0)
                                fail_msg("%s cut at %zu of %zu bytes opened", seeds[i].name, n, f->n);
        }
}

/* Byte and bit flips: in the header, where the structure is, and anywhere, so keys, shapes, the
 * scorer and the weights all get NaNs and huge values. A weight made huge but finite may give
 * infinite logits; that is not the loader's to refuse, so finiteness is only counted here. */
static void test_random(void **state) {
        struct dsa_test_rng rng = { SEED };
        size_t ok = 0, bad = 0, generic = 0, nonfinite = 0;

        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++) {
                const struct file *f = &files[i];
                uint8_t *q = malloc(f->n);
                size_t start, end;

                assert_non_null(q);
                data_range(f, &start, &end);
                for (int it = 0; it < N_FLIPS; it++) {
                        const int k = 1 + (int) (dsa_test_rng_u64(&rng) % 8);
                        const bool bits = it % 2;
                        size_t n = f->n;
                        bool finite;
                        int r;

                        memcpy(q, f->p, f->n);
                        for (int j = 0; j < k; j++) {
                                const size_t at = dsa_test_rng_u64(&rng) % (j % 2 ? f->n : start);
                                if (bits)
                                        q[at] ^= (uint8_t) (1u << (dsa_test_rng_u64(&rng) % 8));
                                else
                                        q[at] ^= (uint8_t) (1 + dsa_test_rng_u64(&rng) % 255);
                        }
                        if (dsa_test_rng_u64(&rng) % 8 == 0)
                                n = dsa_test_rng_u64(&rng) % (f->n + 1);
                        r = try_model(q, n, false, seeds[i].name, &finite);
                        if (r < 0) {
                                bad++;
                                /* A reason the engine did not write: only strerror() of the code. */
                                if (!strcmp(dsa_error_message(r), strerror(-r)))
                                        generic++;
                                continue;
                        }
                        ok++;
                        nonfinite += !finite;
                }
                free(q);
        }
        print_message("llama: %zu damaged files loaded and ran (%zu with non-finite outputs), %zu rejected (%zu "
                      "without a reason of their own)\n", ok, nonfinite, bad, generic);
        assert_true(bad > 0 && ok > 0);
}

static void put_u32(struct file *f, size_t at, uint32_t v) {
        memcpy(f->p + at, &v, 4);
}

static void put_f32(struct file *f, size_t at, float v) {
        memcpy(f->p + at, &v, 4);
}

/* Keys: missing, contradicting each other, or out of range. */
static void test_keys(void **state) {
        struct file c = copy_of(SEED_F32);
        size_t at;

        (void) state;
        /* Each required key removed by renaming it. */
        static const char *const required[] = {
                "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.head_count",
        };
        for (size_t i = 0; i < ELEMENTSOF(required); i++) {
                at = name_at(&c, required[i]) + strlen(required[i]) - 1;
                c.p[at] ^= 0x20;
                expect_fail(&c, required[i], required[i]);
                c.p[at] ^= 0x20;
        }
        const struct {
                const char *key;
                uint32_t v;
                const char *want;
        } lies[] = {
                { "llama.attention.head_count_kv", 3, "not a multiple of 3" },
                { "llama.attention.head_count_kv", 0, "a size is zero" },
                { "llama.attention.head_count_kv", 8, "not a multiple of 8" },
                { "llama.attention.head_count_kv", 1, "blk.0.attn_k.weight" },
                { "llama.attention.head_count", 0, "head_count is 0" },
                { "llama.attention.head_count", 6, "blk.0.attn_q.weight" },
                { "llama.attention.key_length", 3, "partial rotary" },
                { "llama.rope.dimension_count", 2, "partial rotary" },
                { "llama.context_length", 1u << 31, "past this engine's limits" },
                { "llama.context_length", 0, "a size is zero" },
                { "llama.block_count", 3, "blk.2.attn_norm.weight" },
                { "llama.block_count", 100000, "past this engine's limits" },
                { "llama.embedding_length", 8, "has shape" },
                { "llama.feed_forward_length", UINT32_MAX, "past this engine's limits" },
        };
        for (size_t i = 0; i < ELEMENTSOF(lies); i++) {
                char what[96];
                uint32_t old;

                at = value_at(&c, lies[i].key);
                memcpy(&old, c.p + at, 4);
                put_u32(&c, at, lies[i].v);
                snprintf(what, sizeof(what), "%s = %u", lies[i].key, lies[i].v);
                expect_fail(&c, what, lies[i].want);
                put_u32(&c, at, old);
        }

        /* An odd head size, the rotary dimension agreeing with it. */
        at = value_at(&c, "llama.attention.key_length");
        const size_t at_rot = value_at(&c, "llama.rope.dimension_count");
        put_u32(&c, at, 3), put_u32(&c, at_rot, 3);
        expect_fail(&c, "head size 3", "head size 3 is odd");
        /* A context of 2^20 with heads of 1024: the tensors do not have that head size, and nothing
         * is allocated for the context before they are checked (the rotary tables stop at
         * DSA_LLAMA_ROPE_TABLE positions whatever the context). */
        const size_t at_ctx = value_at(&c, "llama.context_length");
        put_u32(&c, at, 1024), put_u32(&c, at_rot, 1024), put_u32(&c, at_ctx, 1u << 20);
        expect_fail(&c, "context 2^20 of head size 1024", "attn_q.weight");
        put_u32(&c, at, 4), put_u32(&c, at_rot, 4);
        expect_ok(&c, "context 2^20");
        put_u32(&c, at_ctx, DSA_TEST_LLAMA_CTX);

        /* Out-of-range epsilon and rotary base. */
        const struct {
                const char *key;
                float v;
        } floats[] = {
                { "llama.attention.layer_norm_rms_epsilon", 0.0f }, { "llama.attention.layer_norm_rms_epsilon", NAN },
                { "llama.attention.layer_norm_rms_epsilon", 2.0f }, { "llama.rope.freq_base", 1.0f },
                { "llama.rope.freq_base", INFINITY },
        };
        for (size_t i = 0; i < ELEMENTSOF(floats); i++) {
                char what[96];

                at = value_at(&c, floats[i].key);
                put_f32(&c, at, floats[i].v);
                snprintf(what, sizeof(what), "%s = %g", floats[i].key, (double) floats[i].v);
                expect_fail(&c, what, "out of range");
                put_f32(&c, at, floats[i].key[6] == 'a' ? 1e-5f : 10000.0f);
        }

        /* Optional keys removed: the defaults (head size C / NH, head_count_kv = head_count, the
         * rotary dimension the head size, epsilon 1e-5) still fit this model, except the
         * key/value heads. */
        static const char *const optional[] = {
                "llama.attention.key_length", "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon",
                "llama.rope.freq_base", "llama.vocab_size", "general.name",
        };
        for (size_t i = 0; i < ELEMENTSOF(optional); i++) {
                at = name_at(&c, optional[i]);
                c.p[at] ^= 0x20;
                expect_ok(&c, optional[i]);
                c.p[at] ^= 0x20;
        }
        at = name_at(&c, "llama.attention.head_count_kv");
        c.p[at] ^= 0x20;
        expect_fail(&c, "no head_count_kv", "blk.0.attn_k.weight");
        c.p[at] ^= 0x20;

        /* A key of the wrong type: block_count as a float32. */
        at = value_at(&c, "llama.block_count");
        put_u32(&c, at - 4, DSA_GGUF_FLOAT32);
        expect_fail(&c, "block_count as float32", "llama.block_count");
        put_u32(&c, at - 4, DSA_GGUF_UINT32);
        expect_ok(&c, "restored");
        free(c.p);
}

/* Tensors: missing, misshapen, or holding NaN or infinity. */
static void test_tensors(void **state) {
        (void) state;
        for (size_t s = 0; s < 2; s++) { /* tied F32, untied F16 */
                const size_t seed = s ? SEED_F16 : SEED_F32;
                struct file c = copy_of(seed);
                size_t at;

                static const char *const names[] = {
                        "blk.1.ffn_gate.weight", "blk.0.attn_norm.weight", "output_norm.weight",
                        "blk.0.attn_v.weight",   "blk.1.ffn_norm.weight",  "token_embd.weight",
                };
                for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                        at = name_at(&c, names[i]);
                        c.p[at] ^= 0x20;
                        expect_fail(&c, names[i], names[i]);
                        c.p[at] ^= 0x20;
                }
                /* ne[0] and ne[1] swapped: the same bytes, the wrong shape. */
                static const char *const swapped[] = { "blk.0.attn_k.weight", "blk.1.ffn_down.weight",
                                                       "token_embd.weight" };
                for (size_t i = 0; i < ELEMENTSOF(swapped); i++) {
                        uint64_t ne[2], sw[2];

                        at = dims_at(&c, swapped[i]);
                        memcpy(ne, c.p + at, 16);
                        sw[0] = ne[1], sw[1] = ne[0];
                        memcpy(c.p + at, sw, 16);
                        expect_fail(&c, swapped[i], i < 2 ? "has shape" : "token_embd.weight");
                        memcpy(c.p + at, ne, 16);
                }
                /* NaN and infinity in matrices, norm gains and the embedding. */
                const struct {
                        const char *tensor;
                        size_t index;
                        bool matrix;
                        float v;
                } bad[] = {
                        { "blk.1.ffn_down.weight", 5, true, NAN },  { "blk.0.attn_q.weight", 0, true, INFINITY },
                        { "blk.0.attn_k.weight", 9, true, -INFINITY }, { "blk.1.attn_output.weight", 3, true, NAN },
                        { "token_embd.weight", 17, true, NAN },     { "token_embd.weight", 0, true, INFINITY },
                        { "blk.0.attn_norm.weight", 2, false, NAN }, { "output_norm.weight", 15, false, INFINITY },
                        { "blk.1.ffn_norm.weight", 0, false, -INFINITY },
                };
                for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                        const size_t esize = bad[i].matrix && seed == SEED_F16 ? 2 : 4;
                        uint8_t old[4];
                        char what[96];

                        at = tensor_at(&c, bad[i].tensor) + esize * bad[i].index;
                        memcpy(old, c.p + at, esize);
                        if (esize == 2) {
                                const uint16_t h = isnan(bad[i].v) ? 0x7e00 : bad[i].v > 0 ? 0x7c00 : 0xfc00;
                                memcpy(c.p + at, &h, 2);
                        } else
                                put_f32(&c, at, bad[i].v);
                        snprintf(what, sizeof(what), "%s %s[%zu] = %g", seeds[seed].name, bad[i].tensor, bad[i].index,
                                 (double) bad[i].v);
                        expect_fail(&c, what, bad[i].tensor);
                        memcpy(c.p + at, old, esize);
                }
                if (seed == SEED_F16) {
                        at = tensor_at(&c, "output.weight") + 2 * 7;
                        const uint16_t h = 0x7e00;
                        memcpy(c.p + at, &h, 2);
                        expect_fail(&c, "NaN in output.weight", "output.weight");
                        free(c.p);
                        c = copy_of(seed);
                        /* Without output.weight the head is tied to token_embd. */
                        c.p[name_at(&c, "output.weight")] ^= 0x20;
                        expect_ok(&c, "untied made tied");
                        c.p[name_at(&c, "Output.weight")] ^= 0x20;
                }
                /* A matrix of a type the loader cannot convert (I32 bytes of the same size). */
                if (seed == SEED_F32) {
                        at = dims_at(&c, "blk.0.ffn_up.weight") + 16;
                        put_u32(&c, at, DSA_TYPE_I32);
                        expect_fail(&c, "ffn_up as I32", "blk.0.ffn_up.weight");
                        put_u32(&c, at, DSA_TYPE_F32);
                }
                expect_ok(&c, "restored");
                free(c.p);
        }
}

/* The attention variant's keys and the DSA scorer's tensors. */
static void test_attention(void **state) {
        struct file c = copy_of(SEED_DSA);
        size_t at;

        (void) state;
        /* Kinds: unknown, or another one (linear and dense ignore the scorer; local and fixed too). */
        at = value_at(&c, "dsa.attention.kind") + 8;
        assert_memory_equal(c.p + at, "dsa", 3);
        c.p[at + 2] = 'x';
        expect_fail(&c, "kind 'dsx'", "'dsx' is not known");
        memcpy(c.p + at, "DSA", 3);
        expect_fail(&c, "kind 'DSA'", "is not known");
        memcpy(c.p + at, "dsa", 3);
        at = value_at(&c, "dsa.attention.select") + 8;
        c.p[at] = 'M';
        expect_fail(&c, "select 'Mass'", "dsa.attention.select");
        c.p[at] = 'm';

        const struct {
                const char *key;
                uint32_t v;
                const char *want;
        } u32s[] = {
                { "dsa.attention.block", 0, "attention block 0" },
                { "dsa.attention.block", 100000, "attention block 100000" },
                { "dsa.attention.block", DSA_ATT_MAX_BLOCK + 1, "is not in [1," },
                { "dsa.attention.window", 0, "window" },
                { "dsa.attention.global", UINT32_MAX, "window" },
                { "dsa.attention.scorer_rank", 0, "needs a fitted scorer" },
                { "dsa.attention.scorer_rank", 3, "wrong shape" },
                { "dsa.attention.scorer_rank", 1, "wrong shape" },
                { "dsa.attention.scorer_rank", DSA_ATT_MAX_RANK + 1, "rank 65" },
                { "dsa.attention.scorer_rank", UINT32_MAX, "is not in [1, 64]" },
        };
        for (size_t i = 0; i < ELEMENTSOF(u32s); i++) {
                char what[96];
                uint32_t old;

                at = value_at(&c, u32s[i].key);
                memcpy(&old, c.p + at, 4);
                put_u32(&c, at, u32s[i].v);
                snprintf(what, sizeof(what), "%s = %u", u32s[i].key, u32s[i].v);
                expect_fail(&c, what, u32s[i].want);
                put_u32(&c, at, old);
        }
        /* Block sizes that fit: one block for the whole sequence, one token per block. */
        at = value_at(&c, "dsa.attention.block");
        put_u32(&c, at, 1);
        expect_ok(&c, "block 1");
        put_u32(&c, at, DSA_ATT_MAX_BLOCK);
        expect_ok(&c, "block 256");
        put_u32(&c, at, DSA_TEST_LLAMA_BLOCK);

        const float masses[] = { 0.0f, 2.0f, -0.5f, NAN, INFINITY, 1.0000001f };
        at = value_at(&c, "dsa.attention.mass");
        for (size_t i = 0; i < ELEMENTSOF(masses); i++) {
                char what[64];

                put_f32(&c, at, masses[i]);
                snprintf(what, sizeof(what), "mass %g", (double) masses[i]);
                expect_fail(&c, what, "mass target");
        }
        put_f32(&c, at, 1.0f);
        expect_ok(&c, "mass 1");
        put_f32(&c, at, 1e-6f);
        expect_ok(&c, "mass 1e-6");
        put_f32(&c, at, 0.9f);
        at = value_at(&c, "dsa.attention.fraction");
        put_f32(&c, at, 0.0f);
        expect_fail(&c, "fraction 0", "kept fraction");
        put_f32(&c, at, 0.5f);

        /* The oracle (the scorer is read and checked, then unused), the heuristic scorer with a
         * fitted one present (likewise), not both. */
        at = value_at(&c, "dsa.attention.oracle");
        c.p[at] = 1;
        expect_ok(&c, "oracle");
        const size_t at_h = value_at(&c, "dsa.attention.heuristic");
        c.p[at_h] = 1;
        expect_fail(&c, "oracle and heuristic", "either the oracle or the heuristic");
        c.p[at] = 0;
        expect_ok(&c, "heuristic with a scorer");
        c.p[at_h] = 0;

        /* The scorer: NaN and infinity, the wrong shape or type, missing for one layer. */
        const struct {
                const char *tensor;
                size_t index;
                float v;
        } bad[] = {
                { "blk.0.dsa_scorer_q.weight", 3, NAN },     { "blk.1.dsa_scorer_k.weight", 31, INFINITY },
                { "blk.1.dsa_scorer_bias.weight", 12, -INFINITY }, { "blk.0.dsa_scorer_bias.weight", 0, NAN },
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char what[96];
                float old;

                at = tensor_at(&c, bad[i].tensor) + 4 * bad[i].index;
                memcpy(&old, c.p + at, 4);
                put_f32(&c, at, bad[i].v);
                snprintf(what, sizeof(what), "%s[%zu] = %g", bad[i].tensor, bad[i].index, (double) bad[i].v);
                expect_fail(&c, what, "holds a NaN or infinity");
                put_f32(&c, at, old);
        }
        static const char *const scorer[] = { "blk.0.dsa_scorer_q.weight", "blk.1.dsa_scorer_k.weight",
                                              "blk.1.dsa_scorer_bias.weight" };
        for (size_t i = 0; i < ELEMENTSOF(scorer); i++) {
                uint64_t ne[2], sw[2];
                char what[96];

                at = name_at(&c, scorer[i]) + strlen(scorer[i]) - 1;
                c.p[at] ^= 0x20;
                snprintf(what, sizeof(what), "%s missing", scorer[i]);
                expect_fail(&c, what, "is missing");
                c.p[at] ^= 0x20;

                at = dims_at(&c, scorer[i]);
                memcpy(ne, c.p + at, 16);
                sw[0] = ne[1], sw[1] = ne[0];
                memcpy(c.p + at, sw, 16);
                snprintf(what, sizeof(what), "%s transposed", scorer[i]);
                expect_fail(&c, what, "wrong shape");
                memcpy(c.p + at, ne, 16);
        }
        at = dims_at(&c, "blk.1.dsa_scorer_q.weight") + 24;
        put_u32(&c, at, DSA_TYPE_I32);
        expect_fail(&c, "scorer as I32", "not an F32 tensor");
        put_u32(&c, at, DSA_TYPE_F32);
        expect_ok(&c, "restored");
        free(c.p);

        /* The heuristic scorer needs no tensors; without the flag it would need them. */
        c = copy_of(SEED_HEUR);
        expect_ok(&c, "heuristic");
        c.p[value_at(&c, "dsa.attention.heuristic")] = 0;
        expect_fail(&c, "DSA with no scorer", "needs a fitted scorer");
        free(c.p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_valid), cmocka_unit_test(test_combinations), cmocka_unit_test(test_truncated),
                cmocka_unit_test(test_random), cmocka_unit_test(test_keys),         cmocka_unit_test(test_tensors),
                cmocka_unit_test(test_attention),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
