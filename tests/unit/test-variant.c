/* The forward's packed (ragged) and first-token-only modes and the variant operations, each
 * against an equivalent that is obviously right, on the SST-2 teacher (4 layers, C 256, 8 heads):
 *  - a ragged batch gives the padded forward's hidden states on every real token (padding rows
 *    zeros), and first_only gives the same [CLS] rows and logits;
 *  - removing heads equals zeroing those heads' columns of the output dense (their only way
 *    into the residual stream), removing FFN neurons equals zeroing their columns of W_down;
 *  - a saved variant (int8, f16, pruned shapes, sparse, token pruning) reloads to bitwise
 *    identical logits, and its recorded facts survive;
 *  - token pruning with keep 1 changes nothing; with keep < 1 the dropped tokens' rows hold an
 *    earlier layer's state and [CLS] is always kept.
 * Skips (77) without ../shared. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/error.h"
#include "engine/model-internal.h"
#include "engine/tokenizer.h"
#include "engine/variant.h"
#include "testutil.h"

static const char *teacher;

static const char *const texts[] = {
        "a gorgeous, witty, seductive movie.",
        "the plot is nothing but boilerplate clichés from start to finish,",
        "it's slow -- very , very slow .",
        "a sometimes tedious film .",
        "unflinchingly bleak and desperate",
        "good",
};
#define N_TEXTS (sizeof(texts) / sizeof(texts[0]))

struct batch {
        struct dsa_batch b;
        int32_t *ids, *types;
        uint8_t *mask;
};

static void batch_free(struct batch *x) {
        free(x->ids);
        free(x->types);
        free(x->mask);
}

/* The texts tokenized and padded to the longest. */
static struct batch make_batch(const struct dsa_model *m) {
        struct dsa_encoding e[N_TEXTS];
        size_t T = 0;
        struct batch x = { 0 };

        for (size_t i = 0; i < N_TEXTS; i++) {
                assert_int_equal(dsa_tokenizer_encode(dsa_model_tokenizer(m), texts[i], strlen(texts[i]), NULL, 0,
                                                      DSA_ENCODE_SPECIAL, 128, &e[i]),
                                 0);
                T = e[i].n > T ? e[i].n : T;
        }
        x.ids = calloc(N_TEXTS * T, sizeof(int32_t));
        x.types = calloc(N_TEXTS * T, sizeof(int32_t));
        x.mask = calloc(N_TEXTS * T, 1);
        assert_non_null(x.ids);
        for (size_t i = 0; i < N_TEXTS; i++) {
                for (size_t t = 0; t < e[i].n; t++) {
                        x.ids[i * T + t] = e[i].ids[t];
                        x.mask[i * T + t] = 1;
                }
                dsa_encoding_clear(&e[i]);
        }
        x.b = (struct dsa_batch) { .B = N_TEXTS, .T = T, .ids = x.ids, .type_ids = x.types, .mask = x.mask };
        return x;
}

static float *forward(const struct dsa_model *m, const struct dsa_batch *b) {
        const size_t C = dsa_model_bert_config(m)->n_embd;
        float *h = malloc(b->B * b->T * C * sizeof(float));

        assert_non_null(h);
        assert_int_equal(dsa_model_forward(m, b, h, NULL), 0);
        return h;
}

static float *logits_of(const struct dsa_model *m) {
        float *l = malloc(N_TEXTS * 2 * sizeof(float));

        assert_non_null(l);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N_TEXTS, l), 0);
        return l;
}

static void test_ragged_and_first_only(void **state) {
        (void) state;
        struct dsa_model *m = dsa_test_model_open(teacher);
        struct batch x = make_batch(m);
        const size_t C = dsa_model_bert_config(m)->n_embd, T = x.b.T;

        float *padded = forward(m, &x.b);
        x.b.ragged = true;
        float *ragged = forward(m, &x.b);
        for (size_t i = 0; i < N_TEXTS * T; i++) {
                const float *want = padded + i * C, *got = ragged + i * C;
                if (x.mask[i])
                        assert_true(dsa_test_check_tensor("ragged row", got, want, C, 1e-5f, 1e-5f));
                else
                        for (size_t c = 0; c < C; c++)
                                assert_true(got[c] == 0.0f);
        }
        x.b.first_only = true;
        float *first = forward(m, &x.b);
        for (size_t b = 0; b < N_TEXTS; b++)
                assert_true(dsa_test_check_tensor("first-only [CLS]", first + b * T * C, padded + b * T * C, C, 1e-5f,
                                                  1e-5f));
        /* Through the pooler and classifier too. */
        float want[N_TEXTS * 2], got[N_TEXTS * 2];
        x.b.first_only = false;
        assert_int_equal(dsa_model_classify(m, &x.b, padded, want), 0);
        assert_int_equal(dsa_model_classify(m, &x.b, first, got), 0);
        assert_true(dsa_test_check_tensor("first-only logits", got, want, N_TEXTS * 2, 1e-5f, 1e-5f));
        free(padded);
        free(ragged);
        free(first);
        batch_free(&x);
        dsa_model_free(m);
}

/* Zeroes columns [c0, c1) of matrix (l, which) of m in place (unpack, zero, repack). */
static void zero_columns(struct dsa_model *m, size_t l, enum dsa__bert_lin which, size_t c0, size_t c1) {
        struct dsa__linear *lin = dsa__bert_linear(m->bert, l, which);
        const size_t OC = lin->OC, C = lin->C;
        float *w = malloc(OC * C * sizeof(float));

        assert_non_null(w);
        assert_int_equal(dsa__linear_unpack(lin, w), 0);
        for (size_t o = 0; o < OC; o++)
                for (size_t c = c0; c < c1; c++)
                        w[o * C + c] = 0.0f;
        dsa__linear_clear(lin);
        assert_int_equal(dsa__linear_init(lin, w, OC, C, DSA_WFORMAT_F32, 0.0f), 0);
        free(w);
}

static const char *const *calib(size_t *n) {
        static const char *const c[] = {
                "the film is a masterpiece of understatement and grace , with a cast that never misses",
                "an utterly forgettable and lifeless exercise in genre conventions .",
                "funny , touching and smartly written , this is the best comedy of the year",
                "the characters are thin , the dialogue is clumsy and the ending is a mess .",
                "a thoughtful , beautifully shot meditation on grief and memory .",
                "it never rises above the level of a mediocre television movie .",
        };
        *n = sizeof(c) / sizeof(c[0]);
        return c;
}

static void test_structured_equals_zeroing(void **state) {
        (void) state;
        struct dsa_model *pruned = dsa_test_model_open(teacher), *zeroed = dsa_test_model_open(teacher);
        const struct dsa_bert_config *cfg = dsa_model_bert_config(pruned);
        const size_t HS = cfg->n_embd / cfg->n_head;
        struct dsa_optimize_opts o = { .quant = DSA_WFORMAT_F32, .prune_heads = 0.25, .prune_ffn = 0.25,
                                       .token_keep = -1, .act_percentile = 99.99 };
        o.calib = calib(&o.n_calib);

        /* Which heads and neurons go is decided by the calibration pass; to know them, prune,
         * then compare the kept rows of Q with the original's. */
        assert_int_equal(dsa_model_optimize(pruned, &o), 0);
        for (size_t l = 0; l < cfg->n_layer; l++) {
                const struct dsa_bert_layer *y = &pruned->bert->layers[l], *z = &zeroed->bert->layers[l];
                assert_true(y->n_ff <= cfg->n_ff);
                /* Recover the kept head indices from Q's biases (distinct in a trained model). */
                size_t h1 = 0;
                for (size_t h = 0; h < z->n_head; h++) {
                        bool kept = h1 < y->n_head &&
                                    !memcmp(y->qkv_b + h1 * HS, z->qkv_b + h * HS, HS * sizeof(float));
                        if (kept)
                                h1++;
                        else
                                zero_columns(zeroed, l, DSA__LIN_O, h * HS, (h + 1) * HS);
                }
                assert_int_equal(h1, y->n_head);
                size_t j1 = 0;
                for (size_t j = 0; j < z->n_ff; j++) {
                        if (j1 < y->n_ff && y->up_b[j1] == z->up_b[j])
                                j1++;
                        else
                                zero_columns(zeroed, l, DSA__LIN_DOWN, j, j + 1);
                }
                assert_int_equal(j1, y->n_ff);
        }
        size_t heads = 0;
        for (size_t l = 0; l < cfg->n_layer; l++)
                heads += pruned->bert->layers[l].n_head;
        assert_int_equal(heads, cfg->n_layer * cfg->n_head - (size_t) llround(0.25 * cfg->n_layer * cfg->n_head));

        float *a = logits_of(pruned), *b = logits_of(zeroed);
        assert_true(dsa_test_check_tensor("pruned vs zeroed logits", a, b, N_TEXTS * 2, 1e-4f, 1e-4f));
        free(a);
        free(b);
        dsa_model_free(pruned);
        dsa_model_free(zeroed);
}

/* optimize with o, save, reload: identical logits and recorded facts. */
static void roundtrip(const struct dsa_optimize_opts *o, const char *what) {
        struct dsa_model *m = dsa_test_model_open(teacher);
        char path[] = "/tmp/dsa-test-variant-XXXXXX";
        int fd = mkstemp(path);

        assert_true(fd >= 0);
        close(fd);
        dsa_error_clear();
        int r = dsa_model_optimize(m, o);
        if (r < 0)
                fail_msg("%s: optimize: %s", what, dsa_error_message(r));
        assert_int_equal(dsa_model_save_variant(m, path), 0);
        struct dsa_model *back = dsa_test_model_open(path);
        float *a = logits_of(m), *b = logits_of(back);
        assert_memory_equal(a, b, N_TEXTS * 2 * sizeof(float));
        assert_string_equal(dsa_model_info(back, "method"), dsa_model_info(m, "method"));
        assert_int_equal(dsa_model_weight_bytes(back), dsa_model_weight_bytes(m));
        printf("%-24s method %-32s weights %8zu bytes, logit[0] %.4f\n", what, dsa_model_info(back, "method"),
               dsa_model_weight_bytes(back), (double) b[0]);
        free(a);
        free(b);
        dsa_model_free(back);
        dsa_model_free(m);
        unlink(path);
}

static void test_roundtrips(void **state) {
        (void) state;
        struct dsa_optimize_opts o = { .token_keep = -1, .act_percentile = 99.99 };
        o.calib = calib(&o.n_calib);

        o.quant = DSA_WFORMAT_F16;
        roundtrip(&o, "f16");
        o.quant = DSA_WFORMAT_BF16;
        roundtrip(&o, "bf16");
        o.quant = DSA_WFORMAT_Q8;
        roundtrip(&o, "int8 dynamic");
        o.act = DSA_ACT_PERCENTILE;
        roundtrip(&o, "int8 static percentile");
        o.act = DSA_ACT_DYNAMIC, o.quant = DSA_WFORMAT_F32, o.prune_heads = 0.3, o.prune_ffn = 0.3;
        roundtrip(&o, "heads+ffn");
        o.prune_heads = o.prune_ffn = 0, o.sparsity = 0.5, o.sparsity_pattern = DSA_SPARSE_BLOCK16;
        roundtrip(&o, "block16 sparse");
        o.sparsity = 0, o.token_keep = 0.7;
        roundtrip(&o, "token keep 0.7");
        o.token_learned = true;
        roundtrip(&o, "token keep 0.7 learned");
        o.token_learned = false;
        o.quant = DSA_WFORMAT_Q8, o.prune_heads = 0.3, o.prune_ffn = 0.3;
        roundtrip(&o, "combined");
}

static void test_token_pruning(void **state) {
        (void) state;
        struct dsa_model *m = dsa_test_model_open(teacher);
        struct batch x = make_batch(m);
        const struct dsa_bert_config *cfg = dsa_model_bert_config(m);
        const size_t C = cfg->n_embd, T = x.b.T, L = cfg->n_layer;
        float *hidden[16] = { 0 };
        struct dsa_trace tr = { .hidden = hidden };

        for (size_t l = 0; l <= L; l++)
                assert_non_null(hidden[l] = malloc(N_TEXTS * T * C * sizeof(float)));
        float *full = malloc(N_TEXTS * T * C * sizeof(float));
        assert_int_equal(dsa_model_forward(m, &x.b, full, &tr), 0);

        /* keep 1 everywhere: nothing changes (the packed path, no pruning) */
        for (size_t l = 0; l < L; l++)
                m->bert->layers[l].token_keep = 1.0f;
        float *same = forward(m, &x.b);
        for (size_t i = 0; i < N_TEXTS * T; i++)
                if (x.mask[i])
                        assert_true(dsa_test_check_tensor("keep 1", same + i * C, full + i * C, C, 1e-5f, 1e-5f));

        /* keep 0.5 after layer 0 only: the dropped half of each row's tokens hold their state
         * after layer 0 (hidden[1]); the kept ones went on through the other layers. */
        m->bert->layers[0].token_keep = 0.5f;
        float *pr = forward(m, &x.b);
        for (size_t b = 0; b < N_TEXTS; b++) {
                size_t n = 0, dropped = 0;
                for (size_t t = 0; t < T; t++)
                        n += x.mask[b * T + t];
                for (size_t t = 0; t < n; t++) {
                        const float *row = pr + (b * T + t) * C, *l1 = hidden[1] + (b * T + t) * C;
                        float err = 0;
                        for (size_t c = 0; c < C; c++)
                                err = fmaxf(err, fabsf(row[c] - l1[c]));
                        dropped += err < 1e-4f; /* packed vs padded arithmetic differ by ~1e-6 */
                }
                size_t kept = (size_t) ceilf(0.5f * (float) n);
                assert_int_equal(dropped, n - kept);
                /* [CLS] was kept: its row moved on past layer 1, to close to the full forward's */
                float err = 0;
                for (size_t c = 0; c < C; c++)
                        err = fmaxf(err, fabsf(pr[b * T * C + c] - hidden[1][b * T * C + c]));
                assert_true(err > 1e-2f);
        }
        for (size_t l = 0; l <= L; l++)
                free(hidden[l]);
        free(full);
        free(same);
        free(pr);
        batch_free(&x);
        dsa_model_free(m);
}

/* --token-score learned: a score on the pruning layer only, recorded; the engine drops exactly
 * the tokens of lowest score (dsa__token_score of each token's state after layer 0, from an
 * unpruned forward), ties to the later token. */
static void test_token_score_learned(void **state) {
        (void) state;
        struct dsa_model *m = dsa_test_model_open(teacher);
        const struct dsa_bert_config *cfg = dsa_model_bert_config(m);
        const size_t C = cfg->n_embd, L = cfg->n_layer;
        float keep[16];
        struct dsa_optimize_opts o = { .quant = DSA_WFORMAT_F32, .token_keep = 0.5, .token_learned = true,
                                       .token_layers = keep, .n_token_layers = L - 1, .act_percentile = 99.99 };
        int r;

        assert_true(L >= 2 && L <= 16);
        for (size_t l = 0; l + 1 < L; l++)
                keep[l] = l == 0 ? 0.5f : 1.0f;
        o.calib = calib(&o.n_calib);
        if ((r = dsa_model_optimize(m, &o)) < 0)
                fail_msg("optimize: %s", dsa_error_message(r));
        const float *w = m->bert->layers[0].token_score;
        assert_non_null(w);
        for (size_t l = 1; l < L; l++)
                assert_null(m->bert->layers[l].token_score);
        assert_string_equal(dsa_model_info(m, "token_score"), "learned");
        assert_non_null(strstr(dsa_model_info(m, "method"), "tokens-learned-0.50"));
        double wn = 0;
        for (size_t c = 0; c < C; c++)
                wn += (double) w[c] * w[c];
        assert_true(wn > 0 && isfinite(wn));

        struct batch x = make_batch(m);
        const size_t T = x.b.T;
        float *hidden[17] = { 0 };
        struct dsa_trace tr = { .hidden = hidden };
        for (size_t l = 0; l <= L; l++)
                assert_non_null(hidden[l] = malloc(N_TEXTS * T * C * sizeof(float)));
        float *full = malloc(N_TEXTS * T * C * sizeof(float));
        assert_int_equal(dsa_model_forward(m, &x.b, full, &tr), 0); /* a trace: no pruning */
        float *pr = forward(m, &x.b);
        size_t dropped_all = 0;
        for (size_t b = 0; b < N_TEXTS; b++) {
                size_t n = 0;
                for (size_t t = 0; t < T; t++)
                        n += x.mask[b * T + t];
                const size_t kept = (size_t) ceilf(0.5f * (float) n);
                for (size_t t = 1; t < n; t++) {
                        const float *row = pr + (b * T + t) * C, *l1 = hidden[1] + (b * T + t) * C;
                        const float s = dsa__token_score(w, l1, C);
                        size_t rank = 1; /* [CLS] first */
                        for (size_t u = 1; u < n; u++) {
                                const float su = dsa__token_score(w, hidden[1] + (b * T + u) * C, C);
                                rank += su > s || (su == s && u < t);
                        }
                        float err = 0;
                        for (size_t c = 0; c < C; c++)
                                err = fmaxf(err, fabsf(row[c] - l1[c]));
                        if ((err < 1e-4f) != (rank >= kept))
                                fail_msg("text %zu token %zu: rank %zu of %zu by the learned score, kept %zu, but it "
                                         "was %s", b, t, rank, n, kept, err < 1e-4f ? "dropped" : "kept");
                        dropped_all += err < 1e-4f;
                }
        }
        assert_true(dropped_all > 0);
        for (size_t l = 0; l <= L; l++)
                free(hidden[l]);
        free(full);
        free(pr);
        batch_free(&x);
        dsa_model_free(m);
}

int main(void) {
        const char *shared = dsa_test_require_shared("variants need the SST-2 teacher");
        static char path[4096];

        snprintf(path, sizeof(path), "%s/fixtures/trained/sst2-bert-4l256", shared);
        teacher = path;
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_ragged_and_first_only),
                cmocka_unit_test(test_structured_equals_zeroing),
                cmocka_unit_test(test_roundtrips),
                cmocka_unit_test(test_token_pruning),
                cmocka_unit_test(test_token_score_learned),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
