/* Damaged model files for the model loader (engine/model.c open_gguf, engine/bert-load.c), in
 * the style of test-formats-corrupt: tiny BERTs of each variant format (fuzz/tiny-bert.c: F32
 * with a tokenizer, F16, int8 with scales and input scales, structurally pruned, token pruning
 * with the sparse kernel) are cut at many lengths, flipped at seeded random positions, and lied
 * about one variant key or scale at a time. Every damaged file must either load into a model
 * that runs, or fail with a negative errno and a reason; the lies must fail with the reason they
 * deserve. Run under ASan+UBSan in CI. */
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
#include "testutil.h"
#include "tiny-bert.h"

#define SEED 20240917u
#define N_FLIPS 500
#define N_TOK 4

static const uint32_t pruned_heads[] = { 1, 2 }, pruned_ffs[] = { 8, 16 };
static const float keep_half[] = { 0.5f, 1.0f };

static const struct {
        const char *name;
        struct dsa_test_tiny_bert o;
} seeds[] = {
        { "f32", { .tokenizer = true } },
        { "f16", { .wtype = DSA_TYPE_F16, .etype = DSA_TYPE_F16 } },
        { "int8", { .wtype = DSA_TYPE_I8, .etype = DSA_TYPE_I8, .input_scale = true } },
        { "pruned", { .heads = pruned_heads, .n_heads = 2, .ffs = pruned_ffs, .n_ffs = 2 } },
        { "token-keep-sparse", { .sparse = true, .token_keep = keep_half, .n_token_keep = 2 } },
};
enum { SEED_F32, SEED_F16, SEED_INT8, SEED_PRUNED, SEED_KEEP, N_SEEDS };

struct file {
        uint8_t *p;
        size_t n;
};

static struct file files[N_SEEDS];

/* The file o describes, in memory. */
static struct file build(const struct dsa_test_tiny_bert *o) {
        char path[] = "/tmp/dsa-test-model-corrupt-XXXXXX";
        struct file f = { 0 };
        char *data = NULL;
        int fd = mkstemp(path), r;

        assert_true(fd >= 0);
        close(fd);
        r = dsa_test_tiny_bert_write(o, path);
        if (r < 0)
                fail_msg("cannot write a tiny BERT: %s", dsa_error_message(r));
        assert_int_equal(dsa_test_read_file(path, &data, &f.n), 0);
        unlink(path);
        f.p = (uint8_t *) data;
        return f;
}

/* A model that loaded must run: padded, then ragged with a padding token, then classify. */
static void run(const struct dsa_model *m) {
        const struct dsa_bert_config *c = dsa_model_bert_config(m);
        const uint8_t full[N_TOK] = { 1, 1, 1, 1 }, pad[N_TOK] = { 1, 1, 1, 0 };
        int32_t ids[N_TOK];

        if ((double) c->n_layer * c->n_embd * c->n_ff > 1e6)
                return;
        for (size_t t = 0; t < N_TOK; t++)
                ids[t] = (int32_t) ((t * 5 + 2) % c->n_vocab);
        float *hidden = calloc((size_t) N_TOK * c->n_embd, sizeof(float));
        float *logits = calloc(c->n_labels + 1, sizeof(float));
        assert_non_null(hidden);
        assert_non_null(logits);
        struct dsa_batch b = { .B = 1, .T = N_TOK, .ids = ids, .mask = full };
        if (dsa_model_forward(m, &b, hidden, NULL) >= 0 && c->n_labels > 0)
                (void) dsa_model_classify(m, &b, hidden, logits);
        struct dsa_batch rb = { .B = 1, .T = N_TOK, .ids = ids, .mask = pad, .ragged = true, .first_only = true };
        if (dsa_model_forward(m, &rb, hidden, NULL) >= 0 && c->n_labels > 0)
                (void) dsa_model_classify(m, &rb, hidden, logits);
        free(hidden);
        free(logits);
}

/* Opens p; a failure must be a negative errno with a reason and no model, a success must run.
 * Returns the code. */
static int try_model(const uint8_t *p, size_t n) {
        struct dsa_model *m = NULL;
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
                assert_true(strlen(dsa_error_message(r)) > 0);
        } else {
                assert_int_equal(r, 0);
                assert_non_null(m);
                run(m);
                dsa_model_free(m);
        }
        free(copy);
        return r;
}

/* A file of o must fail with a reason containing want. */
static void expect_fail(const struct file *f, const char *what, const char *want) {
        int r = try_model(f->p, f->n);

        if (r >= 0)
                fail_msg("%s: opened (want error '%s')", what, want);
        if (!strstr(dsa_error_message(r), want))
                fail_msg("%s: reason '%s' lacks '%s'", what, dsa_error_message(r), want);
}

static void expect_fail_o(const struct dsa_test_tiny_bert *o, const char *what, const char *want) {
        struct file f = build(o);

        expect_fail(&f, what, want);
        free(f.p);
}

/* Where the bytes of tensor name start in f, and its size. */
static size_t tensor_at(const struct file *f, const char *name, size_t *ret_nbytes) {
        struct dsa_gguf *g = NULL;
        const struct dsa_tensor_view *v;
        size_t at;

        assert_int_equal(dsa_gguf_open_memory(f->p, f->n, &g), 0);
        v = dsa_gguf_find_tensor(g, name);
        if (!v)
                fail_msg("no tensor '%s'", name);
        at = (size_t) ((const uint8_t *) v->data - f->p);
        if (ret_nbytes)
                *ret_nbytes = v->nbytes;
        dsa_gguf_free(g);
        return at;
}

/* Where the elements of numeric array key start in f (after name, type, element type, count). */
static size_t array_at(const struct file *f, const char *key) {
        const size_t len = strlen(key);

        for (size_t i = 8; i + len + 16 <= f->n; i++) {
                uint64_t n;

                memcpy(&n, f->p + i - 8, 8);
                if (n == len && !memcmp(f->p + i, key, len))
                        return i + len + 4 + 4 + 8;
        }
        fail_msg("no key '%s'", key);
        return 0;
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

static void test_valid(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++) {
                struct dsa_model *m = NULL;
                int r = dsa__model_open_gguf_memory(files[i].p, files[i].n, &m);

                if (r < 0)
                        fail_msg("%s: %s", seeds[i].name, dsa_error_message(r));
                const struct dsa_bert_config *c = dsa_model_bert_config(m);
                assert_int_equal(c->n_vocab, DSA_TEST_TINY_V);
                assert_int_equal(c->n_embd, DSA_TEST_TINY_C);
                assert_int_equal(c->n_labels, DSA_TEST_TINY_LABELS);
                assert_true(c->has_pooler);

                /* Finite logits, whatever the format. */
                const int32_t ids[N_TOK] = { 2, 5, 7, 3 };
                const uint8_t mask[N_TOK] = { 1, 1, 1, 1 };
                struct dsa_batch b = { .B = 1, .T = N_TOK, .ids = ids, .mask = mask };
                float hidden[N_TOK * DSA_TEST_TINY_C], logits[DSA_TEST_TINY_LABELS];
                assert_int_equal(dsa_model_forward(m, &b, hidden, NULL), 0);
                assert_int_equal(dsa_model_classify(m, &b, hidden, logits), 0);
                assert_true(isfinite(logits[0]) && isfinite(logits[1]));
                printf("%-18s %5zu bytes, logits %+.4f %+.4f\n", seeds[i].name, files[i].n, (double) logits[0],
                       (double) logits[1]);

                const struct dsa_bert_layer *y = m->bert->layers;
                switch (i) {
                case SEED_F32:
                        assert_non_null(dsa_model_tokenizer(m));
                        break;
                case SEED_F16:
                        assert_int_equal(y[0].qkv.fmt, DSA_WFORMAT_F16);
                        assert_int_equal(m->bert->wte.fmt, DSA_WFORMAT_F16);
                        break;
                case SEED_INT8:
                        assert_int_equal(y[1].down.fmt, DSA_WFORMAT_Q8);
                        assert_true(y[1].down.act_scale > 0.0f);
                        assert_int_equal(m->bert->wte.fmt, DSA_WFORMAT_Q8);
                        break;
                case SEED_PRUNED:
                        assert_int_equal(y[0].n_head, 1);
                        assert_int_equal(y[1].n_head, 2);
                        assert_int_equal(y[0].n_ff, 8);
                        assert_int_equal(y[1].n_ff, 16);
                        break;
                case SEED_KEEP:
                        assert_true(y[0].token_keep == 0.5f && y[1].token_keep == 1.0f);
                        assert_int_equal(y[0].up.fmt, DSA_WFORMAT_SPARSE);
                        break;
                }
                dsa_model_free(m);
        }
}

static void test_truncated(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++) {
                const struct file *f = &files[i];
                size_t start, end;

                /* Every length through the header, then every 7th byte of the data. */
                data_range(f, &start, &end);
                for (size_t n = 0; n < end; n += n < start ? 1 : 7)
                        if (try_model(f->p, n) >= 0)
                                fail_msg("%s cut at %zu of %zu bytes opened", seeds[i].name, n, f->n);
        }
}

static void test_random(void **state) {
        struct dsa_test_rng rng = { SEED };
        size_t ok = 0, bad = 0, generic = 0;

        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++) {
                const struct file *f = &files[i];
                uint8_t *q = malloc(f->n);
                size_t start, end;

                data_range(f, &start, &end);

                assert_non_null(q);
                for (int it = 0; it < N_FLIPS; it++) {
                        int k = 1 + (int) (dsa_test_rng_u64(&rng) % 8);
                        size_t n = f->n;
                        int r;

                        memcpy(q, f->p, f->n);
                        /* Half the flips in the header, where the structure is; the rest anywhere,
                         * so scales, counts and weights get NaNs and huge values too. */
                        for (int j = 0; j < k; j++) {
                                size_t at = dsa_test_rng_u64(&rng) % (j % 2 ? f->n : start);
                                q[at] ^= (uint8_t) (1 + dsa_test_rng_u64(&rng) % 255);
                        }
                        if (dsa_test_rng_u64(&rng) % 8 == 0)
                                n = dsa_test_rng_u64(&rng) % (f->n + 1);
                        r = try_model(q, n);
                        if (r >= 0)
                                ok++;
                        else {
                                bad++;
                                /* A reason the engine did not write: only strerror() of the code. */
                                if (!strcmp(dsa_error_message(r), strerror(-r)))
                                        generic++;
                        }
                }
                free(q);
        }
        print_message("model: %zu damaged variants loaded and ran, %zu rejected (%zu without a reason of "
                      "their own)\n", ok, bad, generic);
        assert_true(bad > 0);
}

static void test_lies(void **state) {
        struct file c;
        size_t at;
        const float nan = NAN, neg = -1.0f, inf = INFINITY;

        (void) state;
        /* A scale tensor removed by renaming it: int8 needs every ".scale". */
        c = files[SEED_INT8], c.p = malloc(c.n), memcpy(c.p, files[SEED_INT8].p, c.n);
        {
                uint8_t *s = memmem(c.p, c.n, "blk.0.attn_k.scale", 18);
                assert_non_null(s);
                s[17] = 'f';
                expect_fail(&c, "blk.0.attn_k.scale renamed", "blk.0.attn_k.scale");
                s[17] = 'e';
                s = memmem(c.p, c.n, "token_embd.scale", 16);
                assert_non_null(s);
                s[15] = 'f';
                expect_fail(&c, "token_embd.scale renamed", "token_embd.scale");
                s[15] = 'e';
                /* An input scale is optional: without one the matrix quantizes its input
                 * dynamically. */
                s = memmem(c.p, c.n, "blk.1.ffn_up.input_scale", 24);
                assert_non_null(s);
                s[23] = 'f';
                assert_int_equal(try_model(c.p, c.n), 0);
                s[23] = 'e';
        }

        /* NaN, infinite and negative scales, per row, per input and per embedding row. */
        const struct {
                const char *tensor;
                size_t index;
                const float *v;
                const char *want;
        } scales[] = {
                { "blk.1.ffn_down.scale", 3, &nan, "non-finite scale" },
                { "blk.0.attn_q.scale", 0, &neg, "negative" },
                { "blk.0.attn_v.scale", 1, &inf, "non-finite" },
                { "blk.1.attn_output.input_scale", 0, &neg, "negative or not finite" },
                { "blk.0.ffn_up.input_scale", 0, &nan, "not finite" },
                { "token_embd.scale", 5, &nan, "non-finite" },
                { "token_embd.scale", 0, &inf, "non-finite" },
        };
        for (size_t i = 0; i < ELEMENTSOF(scales); i++) {
                char what[96];
                float old;

                at = tensor_at(&c, scales[i].tensor, NULL) + 4 * scales[i].index;
                memcpy(&old, c.p + at, 4);
                memcpy(c.p + at, scales[i].v, 4);
                snprintf(what, sizeof(what), "%s[%zu] = %g", scales[i].tensor, scales[i].index, (double) *scales[i].v);
                expect_fail(&c, what, scales[i].want);
                memcpy(c.p + at, &old, 4);
        }
        assert_int_equal(try_model(c.p, c.n), 0);
        free(c.p);

        /* Per-layer head and FFN counts above the config's, or not matching the tensors. */
        c = files[SEED_PRUNED], c.p = malloc(c.n), memcpy(c.p, files[SEED_PRUNED].p, c.n);
        const struct {
                const char *key;
                size_t index;
                uint32_t v;
                const char *want;
        } counts[] = {
                { "dsa.bert.head_count_per_layer", 1, 3, "layer 1 has 3 heads" },
                { "dsa.bert.head_count_per_layer", 0, UINT32_MAX, "layer 0 has 4294967295 heads" },
                { "dsa.bert.feed_forward_length_per_layer", 1, 17, "layer 1 has 17 FFN neurons" },
                { "dsa.bert.feed_forward_length_per_layer", 0, 1u << 31, "layer 0 has 2147483648 FFN neurons" },
                { "dsa.bert.head_count_per_layer", 0, 2, "has shape" },
                { "dsa.bert.head_count_per_layer", 1, 1, "has shape" },
                { "dsa.bert.feed_forward_length_per_layer", 0, 16, "has shape" },
                { "dsa.bert.feed_forward_length_per_layer", 1, 8, "has shape" },
        };
        for (size_t i = 0; i < ELEMENTSOF(counts); i++) {
                char what[96];
                uint32_t old;

                at = array_at(&c, counts[i].key) + 4 * counts[i].index;
                memcpy(&old, c.p + at, 4);
                memcpy(c.p + at, &counts[i].v, 4);
                snprintf(what, sizeof(what), "%s[%zu] = %u", counts[i].key, counts[i].index, counts[i].v);
                expect_fail(&c, what, counts[i].want);
                memcpy(c.p + at, &old, 4);
        }
        assert_int_equal(try_model(c.p, c.n), 0);
        free(c.p);

        /* Token keep fractions outside (0, 1]. */
        c = files[SEED_KEEP], c.p = malloc(c.n), memcpy(c.p, files[SEED_KEEP].p, c.n);
        const float keeps[] = { 0.0f, -0.0f, NAN, -0.5f, 1.0001f, INFINITY, -INFINITY };
        for (size_t i = 0; i < ELEMENTSOF(keeps); i++) {
                char what[64];

                at = array_at(&c, "dsa.prune.token_keep");
                memcpy(c.p + at + 4 * (i % 2), &keeps[i], 4);
                snprintf(what, sizeof(what), "token_keep[%zu] = %g", i % 2, (double) keeps[i]);
                expect_fail(&c, what, "not in (0, 1]");
                memcpy(c.p + at, keep_half, sizeof(keep_half));
        }
        assert_int_equal(try_model(c.p, c.n), 0);
        free(c.p);

        /* Per-layer arrays of the wrong length or element type (the tensors keep the config's
         * shapes, so only the key is wrong). */
        const uint32_t three[] = { 2, 2, 2 }, one[] = { 2 };
        const float keep3[] = { 1, 1, 1 }, keep1[] = { 1 };
        struct dsa_test_tiny_bert o = { .heads = one, .n_heads = 1 };
        expect_fail_o(&o, "1 head count for 2 layers", "dsa.bert.head_count_per_layer");
        o = (struct dsa_test_tiny_bert) { .heads = three, .n_heads = 3 };
        expect_fail_o(&o, "3 head counts for 2 layers", "not an array of 2 uint32");
        o = (struct dsa_test_tiny_bert) { .heads = three, .n_heads = 0 };
        expect_fail_o(&o, "0 head counts for 2 layers", "not an array of 2 uint32");
        o = (struct dsa_test_tiny_bert) { .ffs = three, .n_ffs = 3 };
        expect_fail_o(&o, "3 FFN sizes for 2 layers", "dsa.bert.feed_forward_length_per_layer");
        o = (struct dsa_test_tiny_bert) { .ffs = one, .n_ffs = 1 };
        expect_fail_o(&o, "1 FFN size for 2 layers", "not an array of 2 uint32");
        o = (struct dsa_test_tiny_bert) { .token_keep = keep3, .n_token_keep = 3 };
        expect_fail_o(&o, "3 keep fractions for 2 layers", "not an array of 2 float32");
        o = (struct dsa_test_tiny_bert) { .token_keep = keep1, .n_token_keep = 1 };
        expect_fail_o(&o, "1 keep fraction for 2 layers", "dsa.prune.token_keep");

        /* The right length with the wrong element type: the head counts as float32. */
        c = files[SEED_PRUNED], c.p = malloc(c.n), memcpy(c.p, files[SEED_PRUNED].p, c.n);
        at = array_at(&c, "dsa.bert.head_count_per_layer");
        uint32_t f32type = DSA_GGUF_FLOAT32;
        memcpy(c.p + at - 12, &f32type, 4);
        expect_fail(&c, "head counts as float32", "not an array of 2 uint32");
        free(c.p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_valid),
                cmocka_unit_test(test_truncated),
                cmocka_unit_test(test_random),
                cmocka_unit_test(test_lies),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
