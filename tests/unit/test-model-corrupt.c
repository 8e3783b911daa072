/* Damaged model files for the model loader (engine/model.c open_gguf, engine/bert-load.c), in
 * the style of test-formats-corrupt: tiny BERTs of each variant format (fuzz/tiny-bert.c: F32
 * with a tokenizer, F16, int8 with scales and input scales, structurally pruned, token pruning
 * with the sparse kernel) are cut at many lengths, flipped at seeded random positions, and lied
 * about one variant key or scale at a time. Every damaged file must either load into a model
 * that runs, or fail with a negative errno and a reason; the lies must fail with the reason they
 * deserve. Run under ASan+UBSan in CI. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "corrupt.h"
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
        { "token-score", { .token_keep = keep_half, .n_token_keep = 2, .token_score = true } },
};
enum { SEED_F32, SEED_F16, SEED_INT8, SEED_PRUNED, SEED_KEEP, SEED_SCORE, N_SEEDS };

static struct dsa_test_file files[N_SEEDS];

/* A model that loaded must run: padded, then ragged with a padding token, then classify. Its
 * outputs need not be finite here (returns true). */
static bool run(const struct dsa_model *m) {
        const struct dsa_bert_config *c = dsa_model_bert_config(m);
        const uint8_t full[N_TOK] = { 1, 1, 1, 1 }, pad[N_TOK] = { 1, 1, 1, 0 };
        int32_t ids[N_TOK];

        if ((double) c->n_layer * c->n_embd * c->n_ff > 1e6)
                return true;
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
        return true;
}

static int write_bert(const void *o, const char *path) {
        return dsa_test_tiny_bert_write(o, path);
}

static const struct dsa_test_file_kind bert = { "BERT", write_bert, run };

/* Where the elements of numeric array key start in f (after name, type, element type, count). */
static size_t array_at(const struct dsa_test_file *f, const char *key) {
        const size_t at = dsa_test_file_name_at(f, key) + strlen(key) + 4 + 4 + 8;

        assert_true(at <= f->n);
        return at;
}

static int setup(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++)
                files[i] = dsa_test_file_build(&bert, &seeds[i].o);
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
                        assert_null(y[0].token_score);
                        break;
                case SEED_SCORE:
                        assert_non_null(y[0].token_score);
                        assert_null(y[1].token_score);
                        break;
                }
                dsa_model_free(m);
        }
}

static void test_truncated(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++)
                dsa_test_file_check_truncated(&files[i], seeds[i].name);
}

static void test_random(void **state) {
        struct dsa_test_rng rng = { SEED };
        struct dsa_test_flips n = { 0 };

        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++)
                dsa_test_file_check_flips(&files[i], &rng, N_FLIPS, false, seeds[i].name, &n);
        print_message("model: %zu damaged variants loaded and ran, %zu rejected (%zu without a reason of "
                      "their own)\n", n.ok, n.bad, n.generic);
        assert_true(n.bad > 0);
}

static void test_lies(void **state) {
        struct dsa_test_file c;
        size_t at;

        (void) state;
        /* A scale tensor removed by renaming it: int8 needs every ".scale". An input scale is
         * optional: without one the matrix quantizes its input dynamically. */
        c = dsa_test_file_copy(&files[SEED_INT8]);
        const struct {
                const char *tensor;
                const char *want; /* NULL: loads */
        } renamed[] = {
                { "blk.0.attn_k.scale", "blk.0.attn_k.scale" },
                { "token_embd.scale", "token_embd.scale" },
                { "blk.1.ffn_up.input_scale", NULL },
        };
        for (size_t i = 0; i < ELEMENTSOF(renamed); i++) {
                char what[64];

                snprintf(what, sizeof(what), "%s renamed", renamed[i].tensor);
                dsa_test_file_expect_renamed(&c, renamed[i].tensor, strlen(renamed[i].tensor) - 1, what,
                                             renamed[i].want);
        }

        /* NaN, infinite and negative scales, per row, per input and per embedding row. */
        static const struct dsa_test_f32_patch scales[] = {
                { "blk.1.ffn_down.scale", 3, NAN, "non-finite scale" },
                { "blk.0.attn_q.scale", 0, -1.0f, "negative" },
                { "blk.0.attn_v.scale", 1, INFINITY, "non-finite" },
                { "blk.1.attn_output.input_scale", 0, -1.0f, "negative or not finite" },
                { "blk.0.ffn_up.input_scale", 0, NAN, "not finite" },
                { "token_embd.scale", 5, NAN, "non-finite" },
                { "token_embd.scale", 0, INFINITY, "non-finite" },
        };
        dsa_test_file_expect_f32_patches(&c, scales, ELEMENTSOF(scales));
        dsa_test_file_expect_ok(&c, "restored");
        free(c.p);

        /* Per-layer head and FFN counts above the config's, or not matching the tensors. */
        c = dsa_test_file_copy(&files[SEED_PRUNED]);
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

                at = array_at(&c, counts[i].key) + 4 * counts[i].index;
                snprintf(what, sizeof(what), "%s[%zu] = %u", counts[i].key, counts[i].index, counts[i].v);
                dsa_test_file_expect_patch(&c, at, &counts[i].v, 4, what, counts[i].want);
        }
        dsa_test_file_expect_ok(&c, "restored");

        /* The right length with the wrong element type: the head counts as float32. */
        const uint32_t f32type = DSA_GGUF_FLOAT32;
        at = array_at(&c, "dsa.bert.head_count_per_layer") - 12;
        dsa_test_file_expect_patch(&c, at, &f32type, 4, "head counts as float32", "not an array of 2 uint32");
        free(c.p);

        /* Token keep fractions outside (0, 1]. */
        c = dsa_test_file_copy(&files[SEED_KEEP]);
        const float keeps[] = { 0.0f, -0.0f, NAN, -0.5f, 1.0001f, INFINITY, -INFINITY };
        at = array_at(&c, "dsa.prune.token_keep");
        for (size_t i = 0; i < ELEMENTSOF(keeps); i++) {
                char what[64];

                snprintf(what, sizeof(what), "token_keep[%zu] = %g", i % 2, (double) keeps[i]);
                dsa_test_file_expect_patch(&c, at + 4 * (i % 2), &keeps[i], 4, what, "not in (0, 1]");
        }
        dsa_test_file_expect_ok(&c, "restored");
        free(c.p);

        /* Per-layer arrays of the wrong length or element type (the tensors keep the config's
         * shapes, so only the key is wrong). */
        const uint32_t three[] = { 2, 2, 2 }, one[] = { 2 };
        const float keep3[] = { 1, 1, 1 }, keep1[] = { 1 };
        const struct {
                struct dsa_test_tiny_bert o;
                const char *what;
                const char *want;
        } lengths[] = {
                { { .heads = one, .n_heads = 1 }, "1 head count for 2 layers", "dsa.bert.head_count_per_layer" },
                { { .heads = three, .n_heads = 3 }, "3 head counts for 2 layers", "not an array of 2 uint32" },
                { { .heads = three, .n_heads = 0 }, "0 head counts for 2 layers", "not an array of 2 uint32" },
                { { .ffs = three, .n_ffs = 3 }, "3 FFN sizes for 2 layers", "dsa.bert.feed_forward_length_per_layer" },
                { { .ffs = one, .n_ffs = 1 }, "1 FFN size for 2 layers", "not an array of 2 uint32" },
                { { .token_keep = keep3, .n_token_keep = 3 }, "3 keep fractions for 2 layers",
                  "not an array of 2 float32" },
                { { .token_keep = keep1, .n_token_keep = 1 }, "1 keep fraction for 2 layers", "dsa.prune.token_keep" },
        };
        for (size_t i = 0; i < ELEMENTSOF(lengths); i++) {
                c = dsa_test_file_build(&bert, &lengths[i].o);
                dsa_test_file_expect_fail(&c, lengths[i].what, lengths[i].want);
                free(c.p);
        }
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
