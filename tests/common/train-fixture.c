/* The trainer tests' fixture (train-fixture.h): the tiny BERT classifier and the synthetic task. */
#include <errno.h>
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
#include "basic/macro.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/train.h"
#include "testutil.h"
#include "tiny-gguf.h"
#include "train-fixture.h"

const char *const tt_words[N_VOCAB - WORD0] = {
        "the",  "a",     "movie", "great", "bad",  "is",    "not", "good", "film", "plot", "acting", "fun", "dull", "story",
        "long", "short", "and",   "but",   "very", "quite", "so",  "it",   "was",  "this", "that",   "one", "two",
};

/* ---- the tiny model */

static int tiny_add(struct dsa_test_tiny_gguf *g, const char *name, size_t ne0, size_t ne1, float scale, float base) {
        const uint64_t ne[2] = { ne0, ne1 ? ne1 : 1 };
        const size_t n = ne0 * (ne1 ? ne1 : 1);
        float *x = dsa_test_tiny_gguf_alloc(g, n * sizeof(float));

        if (!x)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                x[i] = base + scale * dsa_test_tiny_gguf_rand(g);
        return dsa_gguf_writer_add_tensor(g->w, name, DSA_TYPE_F32, ne1 ? 2 : 1, ne, x);
}

/* Values uniform in +-scale/2 around base: matrices with a std of ~0.03 (HF's 0.02 and a little
 * more, so that gradients are not all tiny), embeddings twice that, biases small, LayerNorm
 * gains near 1 but not exactly (their gradients then differ from the biases'). */
#define W_SCALE 0.1f
#define E_SCALE 0.2f
#define B_SCALE 0.05f
#define G_SCALE 0.2f

static int tiny_fill(struct dsa_test_tiny_gguf *g, const void *userdata) {
        const struct tiny *o = userdata;
        struct dsa_gguf_writer *w = g->w;
        static const char *const labels[N_LABELS] = { "negative", "positive" };
        const char *tokens[N_VOCAB];
        char tok_buf[N_VOCAB][32];
        int32_t types[N_VOCAB];
        char name[96];
        int r = 0;

        for (size_t i = 0; i < N_VOCAB; i++) {
                static const char *const special[WORD0] = { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" };
                /* llama.cpp's convention: "▁" starts a word. */
                if (i < WORD0)
                        snprintf(tok_buf[i], sizeof(tok_buf[i]), "%s", special[i]);
                else
                        snprintf(tok_buf[i], sizeof(tok_buf[i]), "\xe2\x96\x81%s", tt_words[i - WORD0]);
                tokens[i] = tok_buf[i];
                types[i] = i == 1 ? 2 : i < WORD0 ? 3 : 1; /* unknown, control, normal */
        }
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "general.architecture", "bert");
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.context_length", CTX);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.embedding_length", o->C);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.feed_forward_length", o->F);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.block_count", o->L);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.attention.head_count", o->H);
        r = r < 0 ? r : dsa_gguf_writer_set_f32(w, "bert.attention.layer_norm_epsilon", 1e-12f);
        r = r < 0 ? r : dsa_gguf_writer_set_bool(w, "bert.attention.causal", false);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.pooling_type", 4); /* rank: pooler + classifier */
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "dsa.bert.hidden_act", "gelu");
        r = r < 0 ? r : dsa_gguf_writer_set_arr_str(w, "bert.classifier.output_labels", labels, N_LABELS);
        if (r >= 0 && o->heads)
                r = dsa_gguf_writer_set_arr(w, "dsa.bert.head_count_per_layer", DSA_GGUF_UINT32, o->heads, o->L);
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "bert");
        r = r < 0 ? r : dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, N_VOCAB);
        r = r < 0 ? r : dsa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", DSA_GGUF_INT32, types, N_VOCAB);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", PAD);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 1);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.cls_token_id", CLS);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.seperator_token_id", SEP);
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "tokenizer.ggml.mask_token_id", 4);
        if (r < 0)
                return r;

        const size_t C = o->C, HS = C / o->H;
        if ((r = tiny_add(g, "token_embd.weight", C, N_VOCAB, E_SCALE, 0)) < 0 ||
            (r = tiny_add(g, "token_types.weight", C, 2, E_SCALE, 0)) < 0 ||
            (r = tiny_add(g, "position_embd.weight", C, CTX, E_SCALE, 0)) < 0 ||
            (r = tiny_add(g, "token_embd_norm.weight", C, 0, G_SCALE, 1)) < 0 ||
            (r = tiny_add(g, "token_embd_norm.bias", C, 0, B_SCALE, 0)) < 0)
                return r;
        for (size_t l = 0; l < o->L; l++) {
                const size_t A = (o->heads ? o->heads[l] : o->H) * HS;
                const struct {
                        const char *what;
                        size_t ne0, ne1;
                        float scale, base;
                } t[] = {
                        { "attn_q.weight", C, A, W_SCALE, 0 },
                        { "attn_q.bias", A, 0, B_SCALE, 0 },
                        { "attn_k.weight", C, A, W_SCALE, 0 },
                        { "attn_k.bias", A, 0, B_SCALE, 0 },
                        { "attn_v.weight", C, A, W_SCALE, 0 },
                        { "attn_v.bias", A, 0, B_SCALE, 0 },
                        { "attn_output.weight", A, C, W_SCALE, 0 },
                        { "attn_output.bias", C, 0, B_SCALE, 0 },
                        { "attn_output_norm.weight", C, 0, G_SCALE, 1 },
                        { "attn_output_norm.bias", C, 0, B_SCALE, 0 },
                        { "ffn_up.weight", C, o->F, W_SCALE, 0 },
                        { "ffn_up.bias", o->F, 0, B_SCALE, 0 },
                        { "ffn_down.weight", o->F, C, W_SCALE, 0 },
                        { "ffn_down.bias", C, 0, B_SCALE, 0 },
                        { "layer_output_norm.weight", C, 0, G_SCALE, 1 },
                        { "layer_output_norm.bias", C, 0, B_SCALE, 0 },
                };
                for (size_t i = 0; i < ELEMENTSOF(t); i++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s", l, t[i].what);
                        if ((r = tiny_add(g, name, t[i].ne0, t[i].ne1, t[i].scale, t[i].base)) < 0)
                                return r;
                }
        }
        if ((r = tiny_add(g, "cls.weight", C, C, W_SCALE, 0)) < 0 ||
            (r = tiny_add(g, "cls.bias", C, 0, B_SCALE, 0)) < 0 ||
            (r = tiny_add(g, "cls.output.weight", C, N_LABELS, W_SCALE, 0)) < 0 ||
            (r = tiny_add(g, "cls.output.bias", N_LABELS, 0, B_SCALE, 0)) < 0)
                return r;
        return 0;
}

/* A temporary file name (the file is created empty); unlink it when done. */
void tt_tmp_path(char path[static 64], const char *what) {
        snprintf(path, 64, "/tmp/dsa-test-train-%s-XXXXXX", what);
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        close(fd);
}

struct dsa_model *tt_tiny_open(const struct tiny *o) {
        char path[64];

        tt_tmp_path(path, "model");
        int r = dsa_test_tiny_gguf_write(path, 4242u, tiny_fill, o);
        if (r < 0)
                fail_msg("cannot write the tiny model: %s", dsa_error_message(r));
        struct dsa_model *m = dsa_test_model_open(path);
        unlink(path);
        return m;
}

void tt_write_bytes(const char *path, const void *p, size_t n) {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(p, 1, n, f), n);
        assert_int_equal(fclose(f), 0);
}

struct dsa_model *tt_model;

const struct tiny tt_main_shape = { .C = 32, .H = 4, .F = 64, .L = 2 };

int tt_setup(void **state) {
        tt_model = tt_tiny_open(&tt_main_shape);
        return 0;
}

int tt_teardown(void **state) {
        dsa_model_free(tt_model);
        return 0;
}

/* ---- the synthetic task */

/* B rows padded to T: [CLS], 1..T-2 random words, [SEP]; label 1 (half of the rows) iff MARK is
 * among the words. */
void tt_make_batch(struct dsa_test_rng *rng, size_t B, size_t T, struct tbatch *x) {
        assert_true(B <= B_MAX && T <= T_MAX && T >= 3);
        memset(x->ids, 0, sizeof(x->ids));
        memset(x->mask, 0, sizeof(x->mask));
        for (size_t i = 0; i < B; i++) {
                int32_t *ids = x->ids + i * T;
                const size_t n = 3 + dsa_test_rng_u64(rng) % (T - 2), words_n = n - 2;
                const int label = (int) (dsa_test_rng_u64(rng) % 2);
                ids[0] = CLS;
                for (size_t k = 1; k <= words_n; k++)
                        do
                                ids[k] = WORD0 + (int32_t) (dsa_test_rng_u64(rng) % (N_VOCAB - WORD0));
                        while (ids[k] == MARK);
                if (label)
                        ids[1 + dsa_test_rng_u64(rng) % words_n] = MARK;
                ids[n - 1] = SEP;
                memset(x->mask + i * T, 1, n);
                x->labels[i] = label;
        }
        x->b = (struct dsa_batch) { .B = B, .T = T, .ids = x->ids, .mask = x->mask };
}

struct tbatch *tt_batch_new(struct dsa_test_rng *rng, size_t B, size_t T) {
        struct tbatch *x = malloc(sizeof(*x));
        assert_non_null(x);
        tt_make_batch(rng, B, T, x);
        return x;
}

/* Row e of x as a batch of its own (same padding). */
struct tbatch *tt_batch_slice(const struct tbatch *x, size_t e) {
        const size_t T = x->b.T;
        struct tbatch *y = malloc(sizeof(*y));
        assert_non_null(y);
        assert_true(e < x->b.B);
        memcpy(y->ids, x->ids + e * T, T * sizeof(int32_t));
        memcpy(y->mask, x->mask + e * T, T);
        y->labels[0] = x->labels[e];
        y->b = x->b;
        y->b.B = 1;
        y->b.ids = y->ids;
        y->b.mask = y->mask;
        y->b.type_ids = NULL;
        return y;
}

struct dsa_train_opts tt_opts(bool dropout, bool qat) {
        struct dsa_train_opts o;

        dsa_train_opts_default(&o);
        o.lr = LR;
        o.threads = 1;
        o.qat = qat;
        if (!dropout)
                o.dropout = o.attn_dropout = 0.0f;
        return o;
}

struct dsa_trainer *tt_trainer(const struct dsa_model *m, const struct dsa_train_opts *o) {
        struct dsa_trainer *t = NULL;
        int r = dsa_trainer_new(m, o, &t);
        if (r < 0)
                fail_msg("dsa_trainer_new: %s", dsa_error_message(r));
        return t;
}

/* One optimizer step on x; returns the loss. */
float tt_train_step(struct dsa_trainer *t, const struct tbatch *x) {
        float loss;

        assert_int_equal(dsa_trainer_forward(t, &x->b, x->labels, true, &loss, NULL), 0);
        assert_int_equal(dsa_trainer_backward(t, NULL), 0);
        assert_int_equal(dsa_trainer_step(t, NULL, NULL), 0);
        return loss;
}

/* steps steps of fresh TASK_BATCH x T_MAX batches; losses (steps) or NULL. */
void tt_train_task(struct dsa_trainer *t, struct dsa_test_rng *rng, size_t steps, float *losses) {
        struct tbatch *x = malloc(sizeof(*x));

        assert_non_null(x);
        for (size_t s = 0; s < steps; s++) {
                tt_make_batch(rng, TASK_BATCH, T_MAX, x);
                float loss = tt_train_step(t, x);
                if (losses)
                        losses[s] = loss;
        }
        free(x);
}

/* Accuracy of t (eval mode) on n fresh examples. */
double tt_accuracy(struct dsa_trainer *t, struct dsa_test_rng *rng, size_t n) {
        struct tbatch *x = malloc(sizeof(*x));
        float logits[B_MAX * N_LABELS];
        size_t right = 0;

        assert_non_null(x);
        for (size_t done = 0; done < n; done += B_MAX) {
                tt_make_batch(rng, B_MAX, T_MAX, x);
                assert_int_equal(dsa_trainer_forward(t, &x->b, NULL, false, NULL, logits), 0);
                for (size_t i = 0; i < B_MAX; i++)
                        right += (logits[2 * i + 1] > logits[2 * i]) == (x->labels[i] == 1);
        }
        free(x);
        return (double) right / (double) ((n + B_MAX - 1) / B_MAX * B_MAX);
}

double tt_mean(const float *x, size_t n) {
        double s = 0;
        for (size_t i = 0; i < n; i++)
                s += x[i];
        return s / (double) n;
}

size_t tt_params_differ(const struct dsa_trainer *a, const struct dsa_trainer *b, const char **ret_name) {
        const size_t n = dsa_trainer_n_params(a);
        size_t bad = 0;

        assert_int_equal(n, dsa_trainer_n_params(b));
        for (size_t i = 0; i < n; i++) {
                const char *na, *nb;
                size_t a0, a1, b0, b1;
                float *wa, *wb;
                assert_int_equal(dsa_trainer_param(a, i, &na, &a0, &a1, &wa, NULL), 0);
                assert_int_equal(dsa_trainer_param(b, i, &nb, &b0, &b1, &wb, NULL), 0);
                assert_string_equal(na, nb);
                assert_true(a0 == b0 && a1 == b1);
                if (memcmp(wa, wb, a0 * a1 * sizeof(float))) {
                        if (!bad && ret_name)
                                *ret_name = na;
                        bad++;
                }
        }
        return bad;
}

/* Every parameter of src into dst (the same model's shape). */
void tt_copy_params(struct dsa_trainer *dst, const struct dsa_trainer *src) {
        assert_int_equal(dsa_trainer_n_params(dst), dsa_trainer_n_params(src));
        for (size_t i = 0; i < dsa_trainer_n_params(src); i++) {
                size_t ne0, ne1;
                float *a, *b;
                assert_int_equal(dsa_trainer_param(src, i, NULL, &ne0, &ne1, &a, NULL), 0);
                assert_int_equal(dsa_trainer_param(dst, i, NULL, NULL, NULL, &b, NULL), 0);
                memcpy(b, a, ne0 * ne1 * sizeof(float));
        }
}

float tt_loss_of(struct dsa_trainer *t, const struct tbatch *x) {
        float loss;
        assert_int_equal(dsa_trainer_forward(t, &x->b, x->labels, false, &loss, NULL), 0);
        return loss;
}
