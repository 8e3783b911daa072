/* The BERT trainer (engine/train.h) and distillation (engine/distill.h) end to end, on a tiny
 * classifier written in memory with the engine's GGUF writer (fuzz/tiny-gguf.c), so no
 * ../shared: C 32, 4 heads, FFN 64, 2 layers, context 16, a 32-token WordPiece vocabulary,
 * pooler and 2 labels. The task is synthetic: label 1 iff the token MARK occurs in a random
 * sequence of random length, batches built as dsa_batch directly. Checked: the trainer learns
 * it (loss and accuracy on fresh examples); a checkpoint resumes bit for bit, with dropout and
 * with QAT; the export runs in the inference engine with the trainer's logits and hidden
 * states (fp32 and QAT's int8, padded and packed batches) and survives a save and reopen; the
 * gradient of every kind of parameter against central differences of the loss; head importance
 * against the derivative of the loss by a head's scale; the student config parser, a student of
 * the teacher's own shape that reproduces it, and distillation with every loss at once; damaged
 * checkpoints refused or loaded, never a crash (ASan in CI), other shapes and plain models
 * refused; and the training loop stopping with its step callback's error. */
#include <errno.h>
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
#include "basic/macro.h"
#include "corrupt.h"
#include "engine/distill.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/train.h"
#include "engine/variant.h"
#include "testutil.h"
#include "tiny-gguf.h"

/* The model: N_VOCAB tokens (5 special, then words), context CTX. */
#define N_VOCAB 32u
#define CTX 16u
#define N_LABELS 2u
#define PAD 0
#define CLS 2
#define SEP 3
#define WORD0 5
#define MARK 8 /* "▁great" */

/* Batches: B rows of at most T_MAX tokens ([CLS], 1..T_MAX - 2 words, [SEP], padding). */
#define B_MAX 64
#define T_MAX 12

/* a: the task is learnt within TASK_STEPS steps of TASK_BATCH examples: the mean loss of the
 * last 20 steps below LOSS_DROP times that of the first 20, accuracy on EVAL_N fresh examples
 * above MIN_ACCURACY. */
#define LR 1e-3f
#define TASK_STEPS 200
#define TASK_BATCH 32
#define LOSS_DROP 0.5
#define EVAL_N 512
#define MIN_ACCURACY 0.9

/* b: steps of the straight run (the resumed one saves after half of them). */
#define RESUME_STEPS 10

/* c: the exported model in the inference engine against the trainer's eval forward, logits
 * (max) and the last hidden state over real tokens (mean and max). fp32: the same arithmetic in
 * another order (packed GEMMs, fused attention), a few ulps (measured: logits 2.4e-7, hidden
 * mean 9.4e-8, max 2.3e-6). int8 against QAT's own eval forward: both put every matmul input on
 * the same static grid (x * (127 / range), rounded to nearest even, clamped) and the weights on
 * the same per-row grid, and the int8 kernels' integer dot products are exact, so what can
 * differ is the fp32 rounding of an input before it goes to the grid, which now and then moves
 * a value lying on a grid midpoint by one step (range/127, ~0.03): ~3e-3 at most in one hidden
 * value, nothing in the mean. Measured: logits 4.8e-7, hidden mean 8.9e-8, max 7.2e-7 (no such
 * flip on this batch). The mean is the sharp check: input scales off by 1/127 (range/126) move
 * it to 1.7e-3 (and the logits by 1e-4 only), int8 against fp32 of the same values is 3.7e-2. */
#define EXPORT_TOL 1e-4f
#define EXPORT_HIDDEN_MEAN_TOL 1e-5
#define EXPORT_HIDDEN_MAX_TOL 1e-4
#define QAT_EXPORT_TOL 5e-4f
#define QAT_HIDDEN_MEAN_TOL 1e-4
#define QAT_HIDDEN_MAX_TOL 2e-2
#define QAT_STEPS 100
#define QAT_MIN_EFFECT 1e-3f /* int8 moves the logits at least this much from fp32's (1.8e-3) */

/* d: gradients against the 5-point central difference of the loss (error O(h^4)) with step
 * FD_STEP. One weight moves the loss almost linearly, so a step this large costs no accuracy,
 * and it keeps the fp32 loss's rounding (~6e-8 of ~0.7) at ~1e-6 in the difference:
 * |analytic - numeric| <= GRAD_RTOL max(|a|, |n|) + GRAD_ATOL. Measured: at most 0.6% off for
 * gradients above 1e-4, 1.3e-5 absolute (the largest, ~2e-2), ~1e-6 below. Each element is the
 * largest gradient of GRAD_DRAWS random ones of its tensor (or third of the fused Q/K/V). */
#define FD_STEP 5e-2
#define GRAD_RTOL 2e-2
#define GRAD_ATOL 5e-6
#define GRAD_B 4
#define GRAD_TRAIN_STEPS 5
#define GRAD_DRAWS 8

/* e: head importance against the central difference of the loss by a head's scale alpha:
 * within IMP_RTOL of it (plus IMP_ATOL of the largest importance, for heads that barely
 * matter); against sum(dW * W) over the head's columns of the output dense, which is the
 * same derivative computed from the weight gradient instead, within IMP_EXACT_RTOL. */
#define FD_ALPHA 5e-2
#define IMP_RTOL 0.05
#define IMP_ATOL 1e-3
#define IMP_EXACT_RTOL 1e-4

/* f: a same-shape student reproduces its teacher within STUDENT_TOL; distillation's total
 * loss, mean of the last 10 of DISTILL_STEPS steps below DISTILL_DROP of the first 10's. */
#define STUDENT_TOL 1e-5f
#define TEACHER_STEPS 150
#define DISTILL_STEPS 100
#define DISTILL_DROP 0.7

/* g: damaged checkpoints: cuts at every byte of the first CUT_EVERY_BYTE, every CUT_STRIDE-th
 * through the rest of the header (~9 KB of tensor names and shapes), CUTS_IN_DATA seeded ones in
 * the tensor data; N_FLIPS copies with 1 to 8 bytes changed. */
#define CUT_EVERY_BYTE 512
#define CUT_STRIDE 7
#define CUTS_IN_DATA 200
#define N_FLIPS 300
#define SEED 20250611u

static const char *const words[N_VOCAB - WORD0] = {
        "the",  "a",     "movie", "great", "bad",  "is",    "not", "good", "film", "plot", "acting", "fun", "dull", "story",
        "long", "short", "and",   "but",   "very", "quite", "so",  "it",   "was",  "this", "that",   "one", "two",
};

/* ---- the tiny model */

struct tiny {
        uint32_t C, H, F, L;
        const uint32_t *heads; /* per layer (dsa.bert.head_count_per_layer), or NULL */
};

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
                        snprintf(tok_buf[i], sizeof(tok_buf[i]), "\xe2\x96\x81%s", words[i - WORD0]);
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
static void tmp_path(char path[static 64], const char *what) {
        snprintf(path, 64, "/tmp/dsa-test-train-%s-XXXXXX", what);
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        close(fd);
}

static struct dsa_model *tiny_open(const struct tiny *o) {
        char path[64];

        tmp_path(path, "model");
        int r = dsa_test_tiny_gguf_write(path, 4242u, tiny_fill, o);
        if (r < 0)
                fail_msg("cannot write the tiny model: %s", dsa_error_message(r));
        struct dsa_model *m = dsa_test_model_open(path);
        unlink(path);
        return m;
}

static void write_bytes(const char *path, const void *p, size_t n) {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(p, 1, n, f), n);
        assert_int_equal(fclose(f), 0);
}

static struct dsa_model *model; /* C 32, 4 heads, FFN 64, 2 layers */

static const struct tiny main_shape = { .C = 32, .H = 4, .F = 64, .L = 2 };

/* ---- the synthetic task */

struct tbatch {
        int32_t ids[B_MAX * T_MAX];
        uint8_t mask[B_MAX * T_MAX];
        int32_t labels[B_MAX];
        struct dsa_batch b;
};

/* B rows padded to T: [CLS], 1..T-2 random words, [SEP]; label 1 (half of the rows) iff MARK is
 * among the words. */
static void make_batch(struct dsa_test_rng *rng, size_t B, size_t T, struct tbatch *x) {
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

static struct tbatch *batch_new(struct dsa_test_rng *rng, size_t B, size_t T) {
        struct tbatch *x = malloc(sizeof(*x));
        assert_non_null(x);
        make_batch(rng, B, T, x);
        return x;
}

/* Row e of x as a batch of its own (same padding). */
static struct tbatch *batch_slice(const struct tbatch *x, size_t e) {
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

static struct dsa_train_opts opts(bool dropout, bool qat) {
        struct dsa_train_opts o;

        dsa_train_opts_default(&o);
        o.lr = LR;
        o.threads = 1;
        o.qat = qat;
        if (!dropout)
                o.dropout = o.attn_dropout = 0.0f;
        return o;
}

static struct dsa_trainer *trainer(const struct dsa_model *m, const struct dsa_train_opts *o) {
        struct dsa_trainer *t = NULL;
        int r = dsa_trainer_new(m, o, &t);
        if (r < 0)
                fail_msg("dsa_trainer_new: %s", dsa_error_message(r));
        return t;
}

/* One optimizer step on x; returns the loss. */
static float train_step(struct dsa_trainer *t, const struct tbatch *x) {
        float loss;

        assert_int_equal(dsa_trainer_forward(t, &x->b, x->labels, true, &loss, NULL), 0);
        assert_int_equal(dsa_trainer_backward(t, NULL), 0);
        assert_int_equal(dsa_trainer_step(t, NULL, NULL), 0);
        return loss;
}

/* steps steps of fresh TASK_BATCH x T_MAX batches; losses (steps) or NULL. */
static void train_task(struct dsa_trainer *t, struct dsa_test_rng *rng, size_t steps, float *losses) {
        struct tbatch *x = malloc(sizeof(*x));

        assert_non_null(x);
        for (size_t s = 0; s < steps; s++) {
                make_batch(rng, TASK_BATCH, T_MAX, x);
                float loss = train_step(t, x);
                if (losses)
                        losses[s] = loss;
        }
        free(x);
}

/* Accuracy of t (eval mode) on n fresh examples. */
static double accuracy(struct dsa_trainer *t, struct dsa_test_rng *rng, size_t n) {
        struct tbatch *x = malloc(sizeof(*x));
        float logits[B_MAX * N_LABELS];
        size_t right = 0;

        assert_non_null(x);
        for (size_t done = 0; done < n; done += B_MAX) {
                make_batch(rng, B_MAX, T_MAX, x);
                assert_int_equal(dsa_trainer_forward(t, &x->b, NULL, false, NULL, logits), 0);
                for (size_t i = 0; i < B_MAX; i++)
                        right += (logits[2 * i + 1] > logits[2 * i]) == (x->labels[i] == 1);
        }
        free(x);
        return (double) right / (double) ((n + B_MAX - 1) / B_MAX * B_MAX);
}

static double mean(const float *x, size_t n) {
        double s = 0;
        for (size_t i = 0; i < n; i++)
                s += x[i];
        return s / (double) n;
}

/* ---- a. learning */

static void test_learns(void **state) {
        struct dsa_train_opts o = opts(true, false);
        struct dsa_trainer *t = trainer(model, &o);
        struct dsa_test_rng rng = { 1 };
        float losses[TASK_STEPS];

        train_task(t, &rng, TASK_STEPS, losses);
        assert_int_equal(dsa_trainer_steps_done(t), TASK_STEPS);
        const double first = mean(losses, 20), last = mean(losses + TASK_STEPS - 20, 20);
        const double acc = accuracy(t, &rng, EVAL_N);
        printf("learns: loss %.4f (first 20 steps) -> %.4f (last 20), accuracy %.4f on %d fresh examples\n", first,
               last, acc, EVAL_N);
        if (!(last < LOSS_DROP * first))
                fail_msg("the loss fell from %.4f to %.4f only (want below %.2f x)", first, last, LOSS_DROP);
        if (!(acc > MIN_ACCURACY))
                fail_msg("accuracy %.4f <= %.2f", acc, MIN_ACCURACY);
        dsa_trainer_free(t);
}

/* ---- b. checkpoints resume exactly */

static size_t params_differ(const struct dsa_trainer *a, const struct dsa_trainer *b, const char **ret_name) {
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

static void check_resume(bool qat) {
        struct dsa_train_opts o = opts(true, qat);
        struct dsa_test_rng rng = { 2 };
        struct tbatch *x[RESUME_STEPS];
        const char *name = NULL;
        char path[64];

        o.total_steps = RESUME_STEPS; /* a schedule, so the step count matters */
        o.warmup_steps = 2;
        for (size_t s = 0; s < RESUME_STEPS; s++)
                x[s] = batch_new(&rng, 8, T_MAX);
        struct dsa_trainer *straight = trainer(model, &o), *first = trainer(model, &o), *resumed = trainer(model, &o);
        for (size_t s = 0; s < RESUME_STEPS; s++)
                train_step(straight, x[s]);
        for (size_t s = 0; s < RESUME_STEPS / 2; s++)
                train_step(first, x[s]);
        tmp_path(path, "ckpt");
        assert_int_equal(dsa_trainer_save_checkpoint(first, path), 0);
        /* The freshly made trainer differs from the one that took the steps... */
        assert_true(params_differ(first, resumed, NULL) > 0);
        int r = dsa_trainer_load_checkpoint(resumed, path);
        if (r < 0)
                fail_msg("loading the checkpoint: %s", dsa_error_message(r));
        unlink(path);
        /* ...and after the load, no longer. */
        assert_int_equal(params_differ(first, resumed, &name), 0);
        assert_int_equal(dsa_trainer_steps_done(resumed), RESUME_STEPS / 2);
        for (size_t s = RESUME_STEPS / 2; s < RESUME_STEPS; s++) {
                train_step(resumed, x[s]);
                train_step(first, x[s]);
        }
        size_t bad = params_differ(straight, resumed, &name);
        if (bad)
                fail_msg("%s: after resuming, %zu parameters differ from the straight run's (first: %s)",
                         qat ? "QAT" : "fp32", bad, name);
        /* Saving does not disturb the trainer that saved. */
        bad = params_differ(straight, first, &name);
        if (bad)
                fail_msg("%s: the trainer that saved a checkpoint went on differently (%zu parameters, first %s)",
                         qat ? "QAT" : "fp32", bad, name);
        assert_int_equal(dsa_trainer_steps_done(resumed), RESUME_STEPS);
        dsa_trainer_free(straight);
        dsa_trainer_free(first);
        dsa_trainer_free(resumed);
        for (size_t s = 0; s < RESUME_STEPS; s++)
                free(x[s]);
}

static void test_resume(void **state) {
        check_resume(false);
}

static void test_resume_qat(void **state) {
        check_resume(true);
}

/* ---- c. export */

/* The logits of m (inference engine) for x; ret_hidden (B,T,C) or NULL: the last hidden state. */
static void model_logits(const struct dsa_model *m, const struct tbatch *x, float *logits, float *ret_hidden) {
        const size_t C = dsa_model_bert_config(m)->n_embd;
        float *hidden = calloc(x->b.B * x->b.T * C, sizeof(float));

        assert_non_null(hidden);
        int r = dsa_model_forward(m, &x->b, hidden, NULL);
        if (r < 0)
                fail_msg("dsa_model_forward: %s", dsa_error_message(r));
        r = dsa_model_classify(m, &x->b, hidden, logits);
        if (r < 0)
                fail_msg("dsa_model_classify: %s", dsa_error_message(r));
        if (ret_hidden)
                memcpy(ret_hidden, hidden, x->b.B * x->b.T * C * sizeof(float));
        free(hidden);
}

/* Mean and max |a - b| over the real tokens of x, rows of C. */
static void hidden_diff(const float *a, const float *b, const struct tbatch *x, size_t C, double *ret_mean,
                        double *ret_max) {
        double sum = 0, mx = 0;
        size_t n = 0;
        for (size_t i = 0; i < x->b.B * x->b.T; i++)
                if (x->mask[i])
                        for (size_t c = 0; c < C; c++, n++) {
                                const double d = fabs((double) a[i * C + c] - b[i * C + c]);
                                sum += d;
                                mx = isnan(d) ? INFINITY : fmax(mx, d);
                        }
        *ret_mean = sum / (double) n;
        *ret_max = mx;
}

static float max_abs_diff(const float *a, const float *b, size_t n, size_t *ret_worst) {
        float worst = 0;
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
                const float d = fabsf(a[i] - b[i]);
                if (!(d <= worst)) { /* NaN counts as worst */
                        worst = d;
                        at = i;
                }
        }
        if (ret_worst)
                *ret_worst = at;
        return worst;
}

/* Every parameter of src into dst (the same model's shape). */
static void copy_params(struct dsa_trainer *dst, const struct dsa_trainer *src) {
        assert_int_equal(dsa_trainer_n_params(dst), dsa_trainer_n_params(src));
        for (size_t i = 0; i < dsa_trainer_n_params(src); i++) {
                size_t ne0, ne1;
                float *a, *b;
                assert_int_equal(dsa_trainer_param(src, i, NULL, &ne0, &ne1, &a, NULL), 0);
                assert_int_equal(dsa_trainer_param(dst, i, NULL, NULL, NULL, &b, NULL), 0);
                memcpy(b, a, ne0 * ne1 * sizeof(float));
        }
}

static void check_export(bool qat, float tol, double mean_tol, double max_tol) {
        struct dsa_train_opts o = opts(true, qat);
        struct dsa_test_rng rng = { 3 };
        float want[B_MAX * N_LABELS], got[B_MAX * N_LABELS], again[B_MAX * N_LABELS];
        struct dsa_model *m = NULL, *reopened = NULL;
        struct tbatch *x = malloc(sizeof(*x));
        const char *what = qat ? "int8 (QAT) export" : "fp32 export";
        char path[64];
        size_t at;

        assert_non_null(x);
        struct dsa_trainer *t = trainer(model, &o);
        train_task(t, &rng, QAT_STEPS, NULL);
        make_batch(&rng, B_MAX, T_MAX, x);
        assert_int_equal(dsa_trainer_forward(t, &x->b, NULL, false, NULL, want), 0);
        const size_t C = dsa_trainer_config(t)->n_embd, NH = x->b.B * x->b.T * C;
        float *hidden = malloc(NH * sizeof(float)), *hidden_t = malloc(NH * sizeof(float));
        assert_true(hidden && hidden_t);
        memcpy(hidden_t, dsa_trainer_hidden(t, dsa_trainer_config(t)->n_layer), NH * sizeof(float));
        int r = dsa_trainer_export(t, &m);
        if (r < 0)
                fail_msg("dsa_trainer_export: %s", dsa_error_message(r));
        model_logits(m, x, got, hidden);
        float d = max_abs_diff(got, want, B_MAX * N_LABELS, &at);
        printf("%s: max |logit - trainer's| %.3g (tolerance %.0e) at %zu: %.6f vs %.6f\n", what, (double) d,
               (double) tol, at, (double) got[at], (double) want[at]);
        if (!(d <= tol))
                fail_msg("%s: logits differ from the trainer's by %g at %zu (%g vs %g)", what, (double) d, at,
                         (double) got[at], (double) want[at]);
        double h_mean, h_max;
        hidden_diff(hidden, hidden_t, x, C, &h_mean, &h_max);
        printf("%s: last hidden state, mean |h - trainer's| %.3g (tolerance %.0e), max %.3g (%.0e)\n", what, h_mean,
               mean_tol, h_max, max_tol);
        if (!(h_mean <= mean_tol && h_max <= max_tol))
                fail_msg("%s: the last hidden state differs from the trainer's by %g on average, %g at most", what,
                         h_mean, h_max);
        /* The packed path that dsactl and dsad take: padding skipped, the last layer for [CLS] only. */
        struct tbatch *xr = malloc(sizeof(*xr));
        assert_non_null(xr);
        *xr = *x;
        xr->b.ids = xr->ids, xr->b.mask = xr->mask;
        xr->b.ragged = xr->b.first_only = true;
        model_logits(m, xr, again, NULL);
        d = max_abs_diff(again, want, B_MAX * N_LABELS, &at);
        if (!(d <= tol))
                fail_msg("%s, ragged first-only batch: logits differ from the trainer's by %g at %zu", what, (double) d,
                         at);
        free(xr);

        if (qat) {
                /* Not the fp32 model in disguise: the same values in a trainer without QAT give
                 * other logits, and their export holds about four times the weight bytes. */
                struct dsa_train_opts of = opts(true, false);
                struct dsa_trainer *u = trainer(model, &of);
                struct dsa_model *mf = NULL;
                float fp32[B_MAX * N_LABELS];
                copy_params(u, t);
                assert_int_equal(dsa_trainer_forward(u, &x->b, NULL, false, NULL, fp32), 0);
                double f_mean, f_max;
                hidden_diff(dsa_trainer_hidden(u, dsa_trainer_config(u)->n_layer), hidden_t, x, C, &f_mean, &f_max);
                printf("%s: last hidden state, mean |h - fp32's| %.3g, max %.3g\n", what, f_mean, f_max);
                assert_int_equal(dsa_trainer_export(u, &mf), 0);
                const float e = max_abs_diff(fp32, want, B_MAX * N_LABELS, NULL);
                const size_t bytes = dsa_model_weight_bytes(m), bytes_f = dsa_model_weight_bytes(mf);
                printf("%s: max |logit - fp32 logit of the same values| %.3g; %zu weight bytes (fp32: %zu)\n", what,
                       (double) e, bytes, bytes_f);
                assert_true(e > QAT_MIN_EFFECT && f_mean > 10 * mean_tol);
                assert_true(2 * bytes < bytes_f);
                dsa_model_free(mf);
                dsa_trainer_free(u);
        }

        /* Saved and reopened, the same model to the bit. */
        tmp_path(path, "export");
        r = dsa_model_save_variant(m, path);
        if (r < 0)
                fail_msg("dsa_model_save_variant: %s", dsa_error_message(r));
        reopened = dsa_test_model_open(path);
        unlink(path);
        if (qat) {
                /* int8 matrices with their trained static input scales. */
                assert_string_equal(dsa_model_info(reopened, "quant"), "int8");
                assert_string_equal(dsa_model_info(reopened, "method"), "qat");
        }
        model_logits(reopened, x, again, NULL);
        d = max_abs_diff(again, got, B_MAX * N_LABELS, &at);
        if (d != 0.0f)
                fail_msg("%s: reopened from its file, logits differ by %g at %zu", what, (double) d, at);
        dsa_model_free(reopened);
        dsa_model_free(m);
        dsa_trainer_free(t);
        free(hidden), free(hidden_t);
        free(x);
}

static void test_export(void **state) {
        check_export(false, EXPORT_TOL, EXPORT_HIDDEN_MEAN_TOL, EXPORT_HIDDEN_MAX_TOL);
}

static void test_export_qat(void **state) {
        check_export(true, QAT_EXPORT_TOL, QAT_HIDDEN_MEAN_TOL, QAT_HIDDEN_MAX_TOL);
}

/* ---- d. gradients */

static float loss_of(struct dsa_trainer *t, const struct tbatch *x) {
        float loss;
        assert_int_equal(dsa_trainer_forward(t, &x->b, x->labels, false, &loss, NULL), 0);
        return loss;
}

/* The 5-point central difference of the loss by *w with step h; *w is restored. */
static double fd(struct dsa_trainer *t, const struct tbatch *x, float *w, double h) {
        const float w0 = *w;
        double l[4];
        static const double k[4] = { -2, -1, 1, 2 };

        for (size_t i = 0; i < 4; i++) {
                *w = (float) (w0 + k[i] * h);
                l[i] = loss_of(t, x);
        }
        *w = w0;
        return (l[0] - 8 * l[1] + 8 * l[2] - l[3]) / (12 * h);
}

static void test_gradients(void **state) {
        struct dsa_train_opts o = opts(false, false);
        struct dsa_trainer *t = trainer(model, &o);
        struct dsa_test_rng rng = { 4 };
        struct tbatch *x = batch_new(&rng, GRAD_B, T_MAX);
        const size_t n = dsa_trainer_n_params(t);
        double worst = 0;
        const char *worst_name = "";
        size_t worst_at = 0, checked = 0, above_floor = 0, bad = 0;
        double worst_a = 0, worst_n = 0;

        /* A few steps first, so that the classifier is no longer at its start. */
        train_task(t, &rng, GRAD_TRAIN_STEPS, NULL);
        assert_int_equal(dsa_trainer_forward(t, &x->b, x->labels, false, NULL, NULL), 0);
        assert_int_equal(dsa_trainer_backward(t, NULL), 0);
        for (size_t i = 0; i < n; i++) {
                const char *name;
                size_t ne0, ne1;
                float *w, *g;
                assert_int_equal(dsa_trainer_param(t, i, &name, &ne0, &ne1, &w, &g), 0);
                /* Fused Q/K/V: one element of each third. */
                const size_t parts = strstr(name, "attn_qkv") ? 3 : 1, size = ne0 * ne1;
                for (size_t p = 0; p < parts; p++) {
                        const size_t lo = p * size / parts, span = size / parts;
                        size_t at = lo + dsa_test_rng_u64(&rng) % span;
                        /* The largest gradient of a few random elements: one that says something
                         * (embedding rows of tokens not in the batch have none at all). */
                        for (int tries = 0; tries < GRAD_DRAWS; tries++) {
                                const size_t k = lo + dsa_test_rng_u64(&rng) % span;
                                if (fabsf(g[k]) > fabsf(g[at]))
                                        at = k;
                        }
                        const double a = g[at], num = fd(t, x, &w[at], FD_STEP);
                        const double err = fabs(a - num), tol = GRAD_RTOL * fmax(fabs(a), fabs(num)) + GRAD_ATOL;
                        checked++;
                        above_floor += fabs(num) > 10 * GRAD_ATOL;
                        /* DSA_TEST_VERBOSE=1: every element, not only those off. */
                        if (err > tol || getenv("DSA_TEST_VERBOSE"))
                                printf("  %s[%zu]: analytic %.6e numeric %.6e%s\n", name, at, a, num,
                                       err > tol ? " <- off" : "");
                        bad += err > tol;
                        if (err / tol > worst) {
                                worst = err / tol;
                                worst_name = name, worst_at = at, worst_a = a, worst_n = num;
                        }
                }
        }
        printf("gradients: %zu elements of %zu tensors (%zu with |numeric| > %.0e); worst %s[%zu]: analytic %.6e "
               "numeric %.6e (%.2f of the tolerance)\n",
               checked, n, above_floor, 10 * GRAD_ATOL, worst_name, worst_at, worst_a, worst_n, worst);
        if (bad)
                fail_msg("%zu gradients differ from the central difference of the loss", bad);
        /* Not a vacuous pass: most of the checked gradients are well above the floor. */
        assert_true(above_floor >= checked / 2);
        free(x);
        dsa_trainer_free(t);
}

/* ---- e. head importance */

static void test_head_importance(void **state) {
        struct dsa_train_opts o = opts(false, false);
        struct dsa_trainer *t = trainer(model, &o);
        const struct dsa_bert_config *c = dsa_trainer_config(t);
        const size_t L = c->n_layer, NH = c->n_head, C = c->n_embd, HS = C / NH;
        struct dsa_test_rng rng = { 5 };
        /* One example: its importance is |dL/d alpha| of its own loss, which a finite difference
         * checks; the batch of 8 below then checks the per-example sum. */
        struct tbatch *x = batch_new(&rng, 1, T_MAX), *x8 = batch_new(&rng, 8, T_MAX);
        double imp[L * NH], again[L * NH], top = 0;
        char name[64];

        train_task(t, &rng, GRAD_TRAIN_STEPS, NULL);
        memset(imp, 0, sizeof(imp));
        assert_int_equal(dsa_trainer_forward(t, &x->b, x->labels, false, NULL, NULL), 0);
        assert_int_equal(dsa_trainer_backward(t, imp), 0);
        for (size_t i = 0; i < L * NH; i++) {
                assert_true(isfinite(imp[i]) && imp[i] >= 0);
                top = fmax(top, imp[i]);
        }
        assert_true(top > 0);

        for (size_t l = 0; l < L; l++) {
                snprintf(name, sizeof(name), "blk.%zu.attn_output.weight", l);
                size_t k = SIZE_MAX;
                for (size_t i = 0; i < dsa_trainer_n_params(t); i++) {
                        const char *ni;
                        dsa_trainer_param(t, i, &ni, NULL, NULL, NULL, NULL);
                        if (!strcmp(ni, name))
                                k = i;
                }
                assert_true(k != SIZE_MAX);
                size_t A, rows;
                float *w, *g;
                assert_int_equal(dsa_trainer_param(t, k, NULL, &A, &rows, &w, &g), 0);
                assert_int_equal(rows, C);
                float *w0 = malloc(A * C * sizeof(float));
                assert_non_null(w0);
                memcpy(w0, w, A * C * sizeof(float));
                for (size_t h = 0; h < NH; h++) {
                        /* The same derivative from the weight gradient: d/d alpha of W[:, head] (1 + alpha). */
                        double exact = 0;
                        for (size_t r = 0; r < C; r++)
                                for (size_t d = h * HS; d < (h + 1) * HS; d++)
                                        exact += (double) g[r * A + d] * w0[r * A + d];
                        /* Central difference of the loss by alpha. */
                        double lp[4];
                        static const double kk[4] = { -2, -1, 1, 2 };
                        for (size_t s = 0; s < 4; s++) {
                                const float f = (float) (1.0 + kk[s] * FD_ALPHA);
                                for (size_t r = 0; r < C; r++)
                                        for (size_t d = h * HS; d < (h + 1) * HS; d++)
                                                w[r * A + d] = w0[r * A + d] * f;
                                lp[s] = loss_of(t, x);
                                memcpy(w, w0, A * C * sizeof(float));
                        }
                        const double num = fabs((lp[0] - 8 * lp[1] + 8 * lp[2] - lp[3]) / (12 * FD_ALPHA));
                        const double got = imp[l * NH + h];
                        printf("head importance layer %zu head %zu: %.6e, |dL/d alpha| %.6e, |sum dW W| %.6e\n", l, h,
                               got, num, fabs(exact));
                        if (fabs(got - num) > IMP_RTOL * num + IMP_ATOL * top)
                                fail_msg("layer %zu head %zu: importance %g, derivative of the loss %g", l, h, got, num);
                        if (fabs(got - fabs(exact)) > IMP_EXACT_RTOL * got + 1e-12)
                                fail_msg("layer %zu head %zu: importance %g, sum dW W %g", l, h, got, fabs(exact));
                }
                free(w0);
        }
        /* Importances add up over batches: a second backward of the same batch doubles them. */
        memcpy(again, imp, sizeof(imp));
        dsa_trainer_zero_grad(t);
        assert_int_equal(dsa_trainer_forward(t, &x->b, x->labels, false, NULL, NULL), 0);
        assert_int_equal(dsa_trainer_backward(t, again), 0);
        for (size_t i = 0; i < L * NH; i++)
                assert_true(fabs(again[i] - 2 * imp[i]) <= 1e-6 * imp[i] + 1e-15);
        /* A batch adds |dL/d mask_h| per example (signs of different examples do not cancel):
         * with the mean loss of 8 examples, it is the mean of their importances one by one. */
        double batch[L * NH], mean[L * NH];
        memset(batch, 0, sizeof(batch));
        memset(mean, 0, sizeof(mean));
        dsa_trainer_zero_grad(t);
        assert_int_equal(dsa_trainer_forward(t, &x8->b, x8->labels, false, NULL, NULL), 0);
        assert_int_equal(dsa_trainer_backward(t, batch), 0);
        for (size_t e = 0; e < 8; e++) {
                struct tbatch *one = batch_slice(x8, e);
                double single[L * NH];
                memset(single, 0, sizeof(single));
                dsa_trainer_zero_grad(t);
                assert_int_equal(dsa_trainer_forward(t, &one->b, one->labels, false, NULL, NULL), 0);
                assert_int_equal(dsa_trainer_backward(t, single), 0);
                for (size_t i = 0; i < L * NH; i++)
                        mean[i] += single[i] / 8;
                free(one);
        }
        for (size_t i = 0; i < L * NH; i++)
                if (fabs(batch[i] - mean[i]) > 1e-4 * mean[i] + 1e-12)
                        fail_msg("head %zu: batch importance %g, mean of the examples' %g", i, batch[i], mean[i]);
        free(x8);
        free(x);
        dsa_trainer_free(t);
}

/* ---- f. distillation */

static void test_student_config(void **state) {
        const struct dsa_bert_config *t = dsa_model_bert_config(model);
        struct dsa_bert_config c;
        static const char *const bad[] = {
                "layers=0", "hidden=15,heads=2", "foo=1", "layers=2,", "layers", "=2", "layers=", "layers=2x",
                "layers=2,,heads=2", "heads=-1",
        };

        assert_int_equal(dsa_student_config_parse("layers=1,hidden=16,heads=2,ffn=32", t, &c), 0);
        assert_int_equal(c.n_layer, 1);
        assert_int_equal(c.n_embd, 16);
        assert_int_equal(c.n_head, 2);
        assert_int_equal(c.n_ff, 32);
        /* The rest is the teacher's. */
        assert_int_equal(c.n_vocab, t->n_vocab);
        assert_int_equal(c.n_ctx, t->n_ctx);
        assert_int_equal(c.n_type, t->n_type);
        assert_int_equal(c.n_labels, t->n_labels);
        assert_int_equal(c.has_pooler, t->has_pooler);
        assert_int_equal(dsa_student_config_parse("heads=2", t, &c), 0);
        assert_int_equal(c.n_embd, t->n_embd);
        assert_int_equal(c.n_head, 2);
        size_t wrong = 0;
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                dsa_error_clear();
                int r = dsa_student_config_parse(bad[i], t, &c);
                if (r != -EINVAL || strlen(dsa_error_message(r)) == 0) {
                        printf("student config '%s': %d (want -EINVAL with a reason)\n", bad[i], r);
                        wrong++;
                }
        }
        if (wrong)
                fail_msg("%zu bad student configs not refused", wrong);
}

static void test_student_same_shape(void **state) {
        struct dsa_train_opts o = opts(false, false);
        struct dsa_trainer *t = trainer(model, &o), *s = NULL;
        struct dsa_test_rng rng = { 6 };
        struct tbatch *x[2] = { batch_new(&rng, 8, T_MAX), batch_new(&rng, 8, 7) }, *y = batch_new(&rng, B_MAX, T_MAX);
        const struct dsa_batch bs[2] = { x[0]->b, x[1]->b };
        const int32_t *labels[2] = { x[0]->labels, x[1]->labels };
        float want[B_MAX * N_LABELS], got[B_MAX * N_LABELS];
        const char *name = NULL;
        size_t at;

        train_task(t, &rng, 5, NULL);
        const struct dsa_bert_config cfg = *dsa_trainer_config(t);
        int r = dsa_distill_student_new(t, &cfg, &o, bs, labels, 2, true, &s);
        if (r < 0)
                fail_msg("dsa_distill_student_new: %s", dsa_error_message(r));
        assert_int_equal(dsa_trainer_forward(t, &y->b, NULL, false, NULL, want), 0);
        assert_int_equal(dsa_trainer_forward(s, &y->b, NULL, false, NULL, got), 0);
        const float d = max_abs_diff(got, want, B_MAX * N_LABELS, &at);
        const size_t bad = params_differ(t, s, &name);
        printf("same-shape student: max |logit - teacher's| %.3g, %zu parameters differ%s%s\n", (double) d, bad,
               bad ? ", first " : "", bad ? name : "");
        if (!(d <= STUDENT_TOL))
                fail_msg("the same-shape student's logits differ from the teacher's by %g (%zu parameters differ, "
                         "first %s)", (double) d, bad, bad ? name : "-");
        dsa_trainer_free(s);
        dsa_trainer_free(t);
        free(x[0]), free(x[1]), free(y);
}

static void test_distill(void **state) {
        struct dsa_train_opts o = opts(true, false);
        struct dsa_trainer *t = trainer(model, &o), *s = NULL;
        struct dsa_distiller *d = NULL;
        struct dsa_distill_opts dopt;
        struct dsa_bert_config scfg;
        struct dsa_test_rng rng = { 7 };
        struct tbatch *x[4];
        struct dsa_batch bs[4];
        const int32_t *labels[4];
        float total[DISTILL_STEPS];

        train_task(t, &rng, TEACHER_STEPS, NULL);
        for (size_t k = 0; k < 4; k++) {
                x[k] = batch_new(&rng, 16, T_MAX);
                bs[k] = x[k]->b;
                labels[k] = x[k]->labels;
        }
        assert_int_equal(dsa_student_config_parse("layers=1,hidden=16,heads=2,ffn=32", dsa_trainer_config(t), &scfg), 0);
        int r = dsa_distill_student_new(t, &scfg, &o, bs, labels, 4, true, &s);
        if (r < 0)
                fail_msg("dsa_distill_student_new: %s", dsa_error_message(r));
        dsa_distill_opts_default(&dopt);
        dopt.w_feature = 1.0f;
        dopt.w_relation = 1.0f;
        r = dsa_distiller_new(t, s, &dopt, &d);
        if (r < 0)
                fail_msg("dsa_distiller_new: %s", dsa_error_message(r));
        struct dsa_distill_losses l0 = { 0 }, l = { 0 };
        for (size_t k = 0; k < DISTILL_STEPS; k++) {
                make_batch(&rng, TASK_BATCH, T_MAX, x[0]);
                r = dsa_distiller_batch(d, &x[0]->b, x[0]->labels, &l);
                if (r < 0)
                        fail_msg("dsa_distiller_batch: %s", dsa_error_message(r));
                assert_int_equal(dsa_trainer_step(s, NULL, NULL), 0);
                assert_true(isfinite(l.total) && l.soft >= 0 && l.hard >= 0 && l.feature >= 0 && l.relation >= 0);
                if (k == 0)
                        l0 = l;
                total[k] = l.total;
        }
        const double first = mean(total, 10), last = mean(total + DISTILL_STEPS - 10, 10);
        printf("distill: total %.4f -> %.4f (soft %.4f -> %.4f, hard %.4f -> %.4f, feature %.4f -> %.4f, relation "
               "%.4f -> %.4f)\n",
               first, last, (double) l0.soft, (double) l.soft, (double) l0.hard, (double) l.hard, (double) l0.feature,
               (double) l.feature, (double) l0.relation, (double) l.relation);
        /* Every loss is on and measures something. */
        assert_true(l0.soft > 0 && l0.hard > 0 && l0.feature > 0 && l0.relation > 0);
        if (!(last < DISTILL_DROP * first))
                fail_msg("distillation's loss fell from %.4f to %.4f only (want below %.2f x)", first, last,
                         DISTILL_DROP);
        dsa_distiller_free(d);
        dsa_trainer_free(s);
        dsa_trainer_free(t);
        for (size_t k = 0; k < 4; k++)
                free(x[k]);
}

/* ---- g. damaged checkpoints */

/* Loads path into t, or into a fresh trainer of the main model when t is NULL (freed after);
 * a refusal must say why, and a trainer that loaded must run a step (whatever the values). */
static int try_load(struct dsa_trainer *into, const char *path, const struct tbatch *x) {
        struct dsa_train_opts o = opts(false, false);
        struct dsa_trainer *t = into ? into : trainer(model, &o);

        dsa_error_clear();
        int r = dsa_trainer_load_checkpoint(t, path);
        if (r < 0) {
                assert_true(r > -4096);
                if (strlen(dsa_error_message(r)) == 0)
                        fail_msg("refused (%d) without a reason", r);
        } else {
                assert_int_equal(r, 0);
                if (dsa_trainer_forward(t, &x->b, x->labels, true, NULL, NULL) >= 0 && dsa_trainer_backward(t, NULL) >= 0)
                        (void) dsa_trainer_step(t, NULL, NULL); /* -EDOM for NaNs is fine */
        }
        if (!into)
                dsa_trainer_free(t);
        return r;
}

static void test_corrupt_checkpoints(void **state) {
        struct dsa_train_opts o = opts(false, false);
        struct dsa_trainer *t = trainer(model, &o);
        struct dsa_test_rng rng = { SEED };
        struct tbatch *x = batch_new(&rng, 4, 8);
        char path[64], bad_path[64];
        char *data = NULL;
        size_t n, start, end, refused = 0, loaded = 0;

        train_task(t, &rng, 2, NULL);
        tmp_path(path, "ckpt");
        tmp_path(bad_path, "bad");
        assert_int_equal(dsa_trainer_save_checkpoint(t, path), 0);
        assert_int_equal(dsa_test_read_file(path, &data, &n), 0);
        assert_int_equal(try_load(NULL, path, x), 0);
        const struct dsa_test_file f = { (uint8_t *) data, n, NULL };
        dsa_test_file_data_range(&f, &start, &end);

        /* Cut: at every byte of the fixed header and the first keys, every CUT_STRIDE-th byte
         * through the rest of the header, at seeded places in the data; all incomplete. */
        size_t cuts = 0;
        for (size_t k = 0; k < start + CUTS_IN_DATA; k += k < CUT_EVERY_BYTE || k >= start ? 1 : CUT_STRIDE) {
                const size_t cut = k < start ? k : start + dsa_test_rng_u64(&rng) % (end - start);
                write_bytes(bad_path, data, cut);
                if (try_load(t, bad_path, x) >= 0)
                        fail_msg("a checkpoint cut at %zu of %zu bytes loaded", cut, n);
                cuts++;
        }
        /* Flipped: 1 to 8 bytes, half of them in the header; one in 8 also cut. */
        uint8_t *q = malloc(n);
        assert_non_null(q);
        for (int it = 0; it < N_FLIPS; it++) {
                const int k = 1 + (int) (dsa_test_rng_u64(&rng) % 8);
                size_t len = n;
                memcpy(q, data, n);
                for (int j = 0; j < k; j++)
                        q[dsa_test_rng_u64(&rng) % (j % 2 ? n : start)] ^= (uint8_t) (1 + dsa_test_rng_u64(&rng) % 255);
                if (dsa_test_rng_u64(&rng) % 8 == 0)
                        len = dsa_test_rng_u64(&rng) % (n + 1);
                write_bytes(bad_path, q, len);
                if (try_load(NULL, bad_path, x) < 0)
                        refused++;
                else
                        loaded++;
        }
        printf("damaged checkpoints (%zu bytes, header %zu): %zu cuts refused; %d flipped: %zu refused, %zu loaded\n", n,
               start, cuts, N_FLIPS, refused, loaded);
        free(q);

        /* The trainer whose loads failed still runs. */
        train_step(t, x);

        unlink(path);
        unlink(bad_path);
        free(data);
        free(x);
        dsa_trainer_free(t);
}

/* Checkpoints that are whole but not for this trainer: another shape, no checkpoint at all, the
 * other QAT setting, no file. Each refused; the trainer that refused them still trains. */
static void test_checkpoint_refused(void **state) {
        struct dsa_train_opts o = opts(false, false);
        struct dsa_trainer *t = trainer(model, &o);
        struct dsa_test_rng rng = { SEED + 1 };
        struct tbatch *x = batch_new(&rng, 4, 8);
        char path[64], bad_path[64];
        size_t wrong = 0;
        int r;

        train_step(t, x);
        tmp_path(path, "ckpt");
        tmp_path(bad_path, "other");
        assert_int_equal(dsa_trainer_save_checkpoint(t, path), 0);
        /* Another model's shape: narrower; the same width with a layer of fewer heads; the same
         * width and per-layer head counts (4) but 8 heads in the config, so heads of 4 channels
         * instead of 8 and Q/K/V of 16 rows each instead of 32. */
        static const uint32_t heads[] = { 2, 4 }, heads_of_8[] = { 4, 4 };
        const struct tiny other[] = {
                { .C = 16, .H = 2, .F = 32, .L = 2 },
                { .C = 32, .H = 4, .F = 64, .L = 2, .heads = heads },
                { .C = 32, .H = 8, .F = 64, .L = 2, .heads = heads_of_8 },
        };
        for (size_t i = 0; i < ELEMENTSOF(other); i++) {
                struct dsa_model *m = tiny_open(&other[i]);
                struct dsa_trainer *u = trainer(m, &o);
                assert_int_equal(dsa_trainer_save_checkpoint(u, bad_path), 0);
                dsa_error_clear();
                r = dsa_trainer_load_checkpoint(t, bad_path);
                printf("checkpoint of another shape (C %u, %u heads): %d %s\n", other[i].C, other[i].H, r,
                       dsa_error_message(r));
                wrong += r != -EINVAL;
                dsa_trainer_free(u);
                dsa_model_free(m);
        }
        /* A plain model file is no checkpoint. */
        assert_int_equal(dsa_model_save(model, bad_path, DSA_TYPE_F32), 0);
        r = dsa_trainer_load_checkpoint(t, bad_path);
        printf("plain model: %d %s\n", r, dsa_error_message(r));
        assert_int_equal(r, -EBADMSG);
        /* Nor is a checkpoint without QAT one to resume with QAT. */
        struct dsa_train_opts oq = opts(false, true);
        struct dsa_trainer *tq = trainer(model, &oq);
        assert_int_equal(dsa_trainer_load_checkpoint(tq, path), -EINVAL);
        dsa_trainer_free(tq);
        /* Missing file. */
        unlink(bad_path);
        assert_true(dsa_trainer_load_checkpoint(t, bad_path) < 0);
        /* The trainer whose loads failed still trains. */
        train_step(t, x);
        unlink(path);
        free(x);
        dsa_trainer_free(t);
        if (wrong)
                fail_msg("%zu checkpoints of another shape not refused with -EINVAL", wrong);
}

/* ---- h. the training loop */

struct counter {
        uint64_t calls, last_step, stop_at;
        size_t examples;
};

static int count_step(void *userdata, uint64_t step, float loss, float lr, size_t examples) {
        struct counter *c = userdata;

        c->calls++;
        assert_int_equal(step, c->last_step + 1);
        assert_true(isfinite(loss) && loss > 0 && lr > 0);
        c->last_step = step;
        c->examples += examples;
        return step == c->stop_at ? -ECANCELED : 0;
}

static void test_fit(void **state) {
        struct dsa_train_opts o = opts(true, false);
        struct dsa_trainer *t = trainer(model, &o);
        struct dsa_train_set *s = NULL;
        struct dsa_test_rng rng = { 8 };
        enum { N = 40 };
        char buf[N][128];
        const char *texts[N];
        int32_t labels[N];

        for (size_t i = 0; i < N; i++) {
                size_t len = 0, k = 1 + dsa_test_rng_u64(&rng) % 6;
                labels[i] = 0;
                buf[i][0] = '\0';
                for (size_t j = 0; j < k; j++) {
                        const char *w = words[dsa_test_rng_u64(&rng) % ELEMENTSOF(words)];
                        len += (size_t) snprintf(buf[i] + len, sizeof(buf[i]) - len, "%s%s", j ? " " : "", w);
                        labels[i] |= !strcmp(w, "great");
                }
                texts[i] = buf[i];
        }
        int r = dsa_train_set_new(model, texts, NULL, labels, N, CTX, &s);
        if (r < 0)
                fail_msg("dsa_train_set_new: %s", dsa_error_message(r));
        assert_int_equal(dsa_train_set_size(s), N);

        struct counter c = { .stop_at = 3 };
        struct dsa_fit f = { .batch = 8, .total_steps = 100, .seed = 1, .step_fn = count_step, .step_userdata = &c };
        assert_int_equal(dsa_trainer_fit(t, s, &f), -ECANCELED);
        assert_int_equal(dsa_trainer_steps_done(t), 3);
        assert_int_equal(c.calls, 3);
        assert_int_equal(c.examples, 24);

        /* Resumed: on to step 7 (into the second epoch of 5 batches), then nothing left to do. */
        c.stop_at = 0;
        f.total_steps = 7;
        assert_int_equal(dsa_trainer_fit(t, s, &f), 0);
        assert_int_equal(dsa_trainer_steps_done(t), 7);
        assert_int_equal(c.calls, 7);
        assert_int_equal(dsa_trainer_fit(t, s, &f), 0);
        assert_int_equal(c.calls, 7);

        /* Bad arguments. */
        f.batch = 0;
        assert_int_equal(dsa_trainer_fit(t, s, &f), -EINVAL);
        dsa_train_set_free(s);
        dsa_trainer_free(t);
}

static int setup(void **state) {
        model = tiny_open(&main_shape);
        return 0;
}

static int teardown(void **state) {
        dsa_model_free(model);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_learns),
                cmocka_unit_test(test_resume),
                cmocka_unit_test(test_resume_qat),
                cmocka_unit_test(test_export),
                cmocka_unit_test(test_export_qat),
                cmocka_unit_test(test_gradients),
                cmocka_unit_test(test_head_importance),
                cmocka_unit_test(test_student_config),
                cmocka_unit_test(test_student_same_shape),
                cmocka_unit_test(test_distill),
                cmocka_unit_test(test_corrupt_checkpoints),
                cmocka_unit_test(test_checkpoint_refused),
                cmocka_unit_test(test_fit),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
