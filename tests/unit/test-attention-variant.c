/* Attention variants (engine/attention-variant.c, attention-fit.c) on their own and through the
 * Llama forward:
 *   - block choice of every kind: dense/linear all visible blocks; local its window; fixed the
 *     window, the global blocks and exactly `random` others, the same draw every time; DSA the
 *     window and global blocks always, then by score: a fixed count, a fraction, or the mass
 *     target (a block carrying most of the predicted mass is enough), ascending, no repeats;
 *   - a forward whose variant keeps every block (local with a window past the sequence, DSA at
 *     mass 1) gives the dense forward's logits bit for bit, and a sparse one differs;
 *   - the DSA scorer fitted on text (llama-tiny), saved in a GGUF and loaded back: the same
 *     tensors and the same logits; a scorer holding a NaN, of the wrong shape, or an unknown
 *     kind is refused with a reason;
 *   - the BERT encoder path (bidirectional): every block = dense within rounding, a narrow
 *     window differs, linear runs, a DSA scorer fitted on texts survives a save and reload.
 * llama-tiny comes from ../shared (skipped with exit 77 without it, for those parts). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/macro.h"
#include "engine/attention-variant.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/variant.h"
#include "testutil.h"

static bool ascending_unique(const uint32_t *b, size_t n) {
        for (size_t i = 1; i < n; i++)
                if (b[i] <= b[i - 1])
                        return false;
        return true;
}

static bool has(const uint32_t *b, size_t n, uint32_t x) {
        for (size_t i = 0; i < n; i++)
                if (b[i] == x)
                        return true;
        return false;
}

static void test_select(void **state) {
        struct dsa__att a;
        uint32_t blocks[64], again[64];
        float scratch[3 * 64 + 16], nvis[64], u[4] = { 1, 0, 0, 0 }, w[64 * 4] = { 0 };
        size_t n;

        dsa__att_init(&a);
        for (size_t b = 0; b < 64; b++)
                nvis[b] = 64;
        /* dense: every causal block */
        n = dsa__att_select(&a, 0, 0, 9, 64, true, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 10);
        assert_true(ascending_unique(blocks, n));
        n = dsa__att_select(&a, 0, 0, 9, 64, false, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 64);
        /* local: window 3 -> 7, 8, 9; bidirectional 7..11 */
        a.kind = DSA_ATT_LOCAL, a.window = 3;
        n = dsa__att_select(&a, 0, 0, 9, 64, true, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 3);
        assert_int_equal(blocks[0], 7);
        assert_int_equal(blocks[2], 9);
        n = dsa__att_select(&a, 0, 0, 9, 64, false, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 5);
        /* fixed: window 2 + global 1 + random 3 = 6 distinct, reproducible */
        a.kind = DSA_ATT_FIXED, a.window = 2, a.global = 1, a.random = 3;
        n = dsa__att_select(&a, 1, 2, 30, 64, true, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 6);
        assert_true(ascending_unique(blocks, n));
        assert_true(has(blocks, n, 0) && has(blocks, n, 29) && has(blocks, n, 30));
        assert_int_equal(dsa__att_select(&a, 1, 2, 30, 64, true, NULL, NULL, 0, NULL, 0.25f, again, scratch), 6);
        assert_memory_equal(blocks, again, 6 * sizeof(uint32_t));
        /* more random blocks than exist: all of them, no repeats */
        a.random = 100;
        n = dsa__att_select(&a, 1, 2, 5, 64, true, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 6);

        /* DSA, heuristic scorer: block 17's mean key matches the query, the rest score 0 */
        a.kind = DSA_ATT_DSA, a.heuristic = true, a.window = 1, a.global = 1;
        w[17 * 4] = 40.0f;
        a.select = DSA_ATT_SELECT_MASS, a.mass = 0.5f;
        n = dsa__att_select(&a, 0, 0, 40, 64, true, u, w, 4, nvis, 0.25f, blocks, scratch);
        assert_int_equal(n, 3); /* 0, 17, 40 */
        assert_true(has(blocks, n, 0) && has(blocks, n, 17) && has(blocks, n, 40));
        a.select = DSA_ATT_SELECT_COUNT, a.count = 5;
        n = dsa__att_select(&a, 0, 0, 40, 64, true, u, w, 4, nvis, 0.25f, blocks, scratch);
        assert_int_equal(n, 5);
        assert_true(has(blocks, n, 17) && ascending_unique(blocks, n));
        a.select = DSA_ATT_SELECT_FRACTION, a.fraction = 0.5f;
        n = dsa__att_select(&a, 0, 0, 40, 64, true, u, w, 4, nvis, 0.25f, blocks, scratch);
        assert_int_equal(n, 21); /* ceil(0.5 * 41) */
        /* mass 1 (no cap): every visible block */
        a.select = DSA_ATT_SELECT_MASS, a.mass = 1.0f, a.count = 0;
        n = dsa__att_select(&a, 0, 0, 40, 64, true, u, w, 4, nvis, 0.25f, blocks, scratch);
        assert_int_equal(n, 41);

        /* checks */
        a.mass = 0.0f;
        assert_int_equal(dsa__att_check(&a, 1, 1, 4), -EINVAL);
        a.mass = 0.9f, a.heuristic = false;
        assert_int_equal(dsa__att_check(&a, 1, 1, 4), -EINVAL); /* no scorer */
        a.block = 0;
        assert_int_equal(dsa__att_check(&a, 1, 1, 4), -EINVAL);
}

static const char *tiny_dir(void) {
        const char *shared = dsa_test_shared_dir();
        return shared ? dsa_test_path(shared, "fixtures/hf/llama-tiny") : NULL;
}

/* The logits of ids (T) under the model's current attention. */
static float *logits_of(struct dsa_model *m, const int32_t *ids, size_t T, struct dsa_lm_stats *st) {
        const size_t V = dsa_model_llama_config(m)->n_vocab;
        float *z = malloc(T * V * sizeof(float));
        assert_non_null(z);
        assert_int_equal(dsa_model_lm_forward(m, ids, T, z, NULL, st), 0);
        return z;
}

static int optimize(struct dsa_model *m, const struct dsa__att *a, const char *const *texts, size_t n) {
        struct dsa_optimize_opts o = { .quant = DSA_WFORMAT_F32, .token_keep = -1, .attention = a, .scorer_rank = 4,
                                       .calib = texts, .n_calib = n };
        return dsa_model_optimize(m, &o);
}

static void test_forward_and_gguf(void **state) {
        const char *dir = tiny_dir();
        if (!dir) {
                printf("SKIP part: llama-tiny needs ../shared\n");
                skip();
        }
        struct dsa_model *m = dsa_test_model_open(dir);
        const size_t T = 200, V = dsa_model_llama_config(m)->n_vocab;
        int32_t ids[200];
        struct dsa__att a;
        struct dsa_lm_stats st = { 0 };

        for (size_t i = 0; i < T; i++)
                ids[i] = (int32_t) ((i * 7919 + 13) % V);
        float *dense = logits_of(m, ids, T, &st);
        assert_true(st.blocks_kept == st.blocks_visible);

        /* every block kept: dense, bit for bit at the same block size; at blocks of 16 the online
         * softmax adds in another order, within fp32 rounding */
        dsa__att_init(&a);
        a.kind = DSA_ATT_LOCAL, a.window = 100;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        float *z = logits_of(m, ids, T, NULL);
        assert_memory_equal(z, dense, T * V * sizeof(float));
        free(z);
        a.block = 16;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        float *dense16 = logits_of(m, ids, T, NULL);
        assert_true(dsa_test_check_tensor("dense, blocks of 16", dense16, dense, T * V, 1e-5f, 1e-5f));
        /* a narrow window: fewer blocks, other logits */
        a.window = 2;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        memset(&st, 0, sizeof(st));
        z = logits_of(m, ids, T, &st);
        assert_true(st.blocks_kept < st.blocks_visible);
        assert_memory_not_equal(z, dense, T * V * sizeof(float));
        free(z);

        /* DSA with the heuristic scorer (mean query . mean key, no fit): every block at mass 1,
         * fewer at 0.5, the same choice every run */
        a.kind = DSA_ATT_DSA, a.heuristic = true, a.window = 1, a.mass = 1.0f;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        z = logits_of(m, ids, T, NULL);
        assert_memory_equal(z, dense16, T * V * sizeof(float));
        free(z);
        a.mass = 0.5f;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        memset(&st, 0, sizeof(st));
        z = logits_of(m, ids, T, &st);
        float *z2 = logits_of(m, ids, T, NULL);
        assert_true(st.blocks_kept < st.blocks_visible);
        assert_memory_equal(z, z2, T * V * sizeof(float));
        free(z), free(z2);
        a.heuristic = false;

        /* DSA fitted on text: needs calibration */
        a.kind = DSA_ATT_DSA, a.window = 1, a.mass = 0.9f;
        assert_true(optimize(m, &a, NULL, 0) < 0);
        static const char *texts[] = {
                "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks "
                "were striking thirteen. All happy families are alike; each unhappy family is unhappy in its own "
                "way. Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in "
                "my purse, and nothing particular to interest me on shore, I thought I would sail about a little "
                "and see the watery part of the world. It is a truth universally acknowledged, that a single man in "
                "possession of a good fortune, must be in want of a wife.",
        };
        assert_int_equal(optimize(m, &a, texts, 1), 0);
        memset(&st, 0, sizeof(st));
        float *fitted = logits_of(m, ids, T, &st);
        assert_true(st.blocks_kept <= st.blocks_visible);
        assert_non_null(dsa_model_info(m, "scorer_kl"));
        assert_non_null(dsa_model_info(m, "attention"));

        /* saved and loaded: the same scorer, the same numbers */
        char tmp[] = "/tmp/dsa-att-XXXXXX", path[64], bad[64];
        assert_non_null(mkdtemp(tmp));
        snprintf(path, sizeof(path), "%s/dsa.gguf", tmp);
        assert_int_equal(dsa_model_save_variant(m, path), 0);
        struct dsa_model *g = dsa_test_model_open(path);
        z = logits_of(g, ids, T, NULL);
        assert_memory_equal(z, fitted, T * V * sizeof(float));
        free(z);
        assert_string_equal(dsa_model_info(g, "attention"), dsa_model_info(m, "attention"));
        /* mass 1 on the fitted scorer: dense again */
        a.mass = 1.0f;
        assert_int_equal(optimize(g, &a, NULL, 0), 0);
        z = logits_of(g, ids, T, NULL);
        assert_memory_equal(z, dense16, T * V * sizeof(float));
        free(z);
        dsa_model_free(g);

        /* a scorer with a NaN, and one for another shape: refused when read */
        struct dsa_gguf *gg = NULL;
        struct dsa__att s, back;
        dsa__att_init(&s);
        s.kind = DSA_ATT_DSA;
        assert_int_equal(dsa__att_scorer_alloc(&s, 2, 2, 4, 16), 0);
        struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        assert_int_equal(dsa__att_to_gguf(&s, w), 0);
        snprintf(bad, sizeof(bad), "%s/scorer.gguf", tmp);
        assert_int_equal(dsa_gguf_writer_write(w, bad), 0);
        dsa_gguf_writer_free(w);
        assert_int_equal(dsa_gguf_open(bad, &gg), 0);
        assert_int_equal(dsa__att_from_gguf(gg, 2, 4, 16, &back), 0);
        assert_int_equal(back.rank, 2);
        dsa__att_clear(&back);
        assert_int_equal(dsa__att_from_gguf(gg, 2, 8, 16, &back), -EBADMSG); /* 8 heads: wrong shape */
        assert_int_equal(dsa__att_from_gguf(gg, 3, 4, 16, &back), -ENOENT); /* layer 2 missing */
        dsa_gguf_free(gg);
        s.wk[5] = NAN;
        w = dsa_gguf_writer_new();
        assert_int_equal(dsa__att_to_gguf(&s, w), 0);
        assert_int_equal(dsa_gguf_writer_write(w, bad), 0);
        dsa_gguf_writer_free(w);
        assert_int_equal(dsa_gguf_open(bad, &gg), 0);
        assert_int_equal(dsa__att_from_gguf(gg, 2, 4, 16, &back), -EBADMSG);
        dsa_gguf_free(gg);
        w = dsa_gguf_writer_new();
        assert_int_equal(dsa_gguf_writer_set_str(w, "dsa.attention.kind", "quadratic"), 0);
        assert_int_equal(dsa_gguf_writer_write(w, bad), 0);
        dsa_gguf_writer_free(w);
        assert_int_equal(dsa_gguf_open(bad, &gg), 0);
        assert_int_equal(dsa__att_from_gguf(gg, 2, 4, 16, &back), -EOPNOTSUPP);
        dsa_gguf_free(gg);
        dsa__att_clear(&s);

        unlink(bad);
        unlink(path);
        rmdir(tmp);
        free(fitted);
        free(dense);
        free(dense16);
        dsa_model_free(m);
}

/* The encoder path: bert-tiny's classifier over texts long enough for several blocks of 16. */
static void test_bert(void **state) {
        const char *shared = dsa_test_shared_dir();
        if (!shared) {
                printf("SKIP part: bert-tiny needs ../shared\n");
                skip();
        }
        struct dsa_model *m = dsa_test_model_open(dsa_test_path(shared, "fixtures/hf/bert-tiny"));
        const size_t L = dsa_model_bert_config(m)->n_labels;
        static const char *texts[] = {
                "it 's a charming and often affecting journey , a film that takes its time and rewards the patience "
                "of everyone who sits through the long and winding middle act with a finale worth waiting for .",
                "unflinchingly bleak and desperate , the story never lets up and never gives its characters or its "
                "audience a moment of rest , which is both its strength and , for many , its undoing .",
                "short one .",
        };
        const size_t N = ELEMENTSOF(texts);
        float dense[3 * 8], z[3 * 8];
        struct dsa__att a;

        assert_true(L > 0 && L <= 8);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, dense), 0);
        /* all blocks, bidirectional: dense within fp32 rounding (another summation order) */
        dsa__att_init(&a);
        a.kind = DSA_ATT_LOCAL, a.block = 16, a.window = 100;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, z), 0);
        assert_true(dsa_test_check_tensor("bert local, every block", z, dense, N * L, 1e-5f, 1e-5f));
        /* a window of one block: other logits */
        a.window = 1;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, z), 0);
        assert_memory_not_equal(z, dense, N * L * sizeof(float));
        /* linear, and DSA fitted on the texts themselves; saved and reloaded alike */
        a.kind = DSA_ATT_LINEAR;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, z), 0);
        for (size_t i = 0; i < N * L; i++)
                assert_true(isfinite(z[i]));
        a.kind = DSA_ATT_DSA, a.window = 1, a.mass = 0.9f;
        assert_int_equal(optimize(m, &a, texts, N), 0);
        assert_non_null(dsa_model_info(m, "scorer_kl"));
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, z), 0);
        char tmp[] = "/tmp/dsa-attb-XXXXXX", path[64];
        float back[3 * 8];
        assert_non_null(mkdtemp(tmp));
        snprintf(path, sizeof(path), "%s/b.gguf", tmp);
        assert_int_equal(dsa_model_save_variant(m, path), 0);
        struct dsa_model *g = dsa_test_model_open(path);
        assert_int_equal(dsa_model_classify_texts(g, texts, NULL, N, back), 0);
        assert_memory_equal(back, z, N * L * sizeof(float));
        assert_string_equal(dsa_model_info(g, "attention"), dsa_model_info(m, "attention"));
        dsa_model_free(g);
        unlink(path);
        rmdir(tmp);
        dsa_model_free(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_select),
                cmocka_unit_test(test_forward_and_gguf),
                cmocka_unit_test(test_bert),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
