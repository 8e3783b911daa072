/* The fixture of the trainer's tests (tests/unit/test-train.c, test-train-checkpoint.c): a tiny
 * BERT classifier written in memory with the engine's GGUF writer (fuzz/tiny-gguf.c), so no
 * ../shared: C 32, 4 heads, FFN 64, 2 layers, context 16, a 32-token WordPiece vocabulary,
 * pooler and 2 labels; and the synthetic task, label 1 iff the token MARK occurs in a random
 * sequence of random length, batches built as dsa_batch directly. The helpers fail the running
 * cmocka test when the engine refuses what they ask. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"
#include "engine/train.h"
#include "testutil.h"

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

/* Every trainer's learning rate (tt_opts) and the examples in each of tt_train_task's batches. */
#define LR 1e-3f
#define TASK_BATCH 32

/* The vocabulary's words, token WORD0 on ("▁" dropped). */
extern const char *const tt_words[N_VOCAB - WORD0];

/* A model's shape: C channels, H heads, FFN F, L layers. */
struct tiny {
        uint32_t C, H, F, L;
        const uint32_t *heads; /* per layer (dsa.bert.head_count_per_layer), or NULL */
};

/* The main model (tt_main_shape), opened by tt_setup and freed by tt_teardown. */
extern struct dsa_model *tt_model;

/* C 32, 4 heads, FFN 64, 2 layers. */
extern const struct tiny tt_main_shape;

/* A batch of B_MAX x T_MAX at most, with its labels; b points into ids and mask. */
struct tbatch {
        int32_t ids[B_MAX * T_MAX];
        uint8_t mask[B_MAX * T_MAX];
        int32_t labels[B_MAX];
        struct dsa_batch b;
};

/* cmocka group setup and teardown: tt_model opened from tt_main_shape, then freed. */
int tt_setup(void **state);
int tt_teardown(void **state);

/* The tiny model of shape o, written (seed 4242) to a temporary file and opened. */
struct dsa_model *tt_tiny_open(const struct tiny *o);

/* A temporary file name /tmp/dsa-test-train-<what>-XXXXXX (created empty); unlink it when done. */
void tt_tmp_path(char path[static 64], const char *what);

/* The n bytes at p as the whole of the file path. */
void tt_write_bytes(const char *path, const void *p, size_t n);

/* B rows padded to T: [CLS], 1..T-2 random words, [SEP]; label 1 (half of the rows) iff MARK is
 * among the words. */
void tt_make_batch(struct dsa_test_rng *rng, size_t B, size_t T, struct tbatch *x);

/* tt_make_batch into a new batch (free() it). */
struct tbatch *tt_batch_new(struct dsa_test_rng *rng, size_t B, size_t T);

/* Row e of x as a batch of its own (same padding; free() it). */
struct tbatch *tt_batch_slice(const struct tbatch *x, size_t e);

/* Default options with LR, one thread, QAT if qat, no dropout at all unless dropout. */
struct dsa_train_opts tt_opts(bool dropout, bool qat);

/* A trainer of m with o. */
struct dsa_trainer *tt_trainer(const struct dsa_model *m, const struct dsa_train_opts *o);

/* One optimizer step on x; returns the loss. */
float tt_train_step(struct dsa_trainer *t, const struct tbatch *x);

/* steps steps of fresh TASK_BATCH x T_MAX batches; losses (steps) or NULL. */
void tt_train_task(struct dsa_trainer *t, struct dsa_test_rng *rng, size_t steps, float *losses);

/* Accuracy of t (eval mode) on n fresh examples (rounded up to batches of B_MAX). */
double tt_accuracy(struct dsa_trainer *t, struct dsa_test_rng *rng, size_t n);

/* The mean of x[0..n). */
double tt_mean(const float *x, size_t n);

/* How many parameters of a and b (same names and shapes) differ in any bit; *ret_name (or NULL):
 * the first that does. */
size_t tt_params_differ(const struct dsa_trainer *a, const struct dsa_trainer *b, const char **ret_name);

/* Every parameter of src into dst (the same model's shape). */
void tt_copy_params(struct dsa_trainer *dst, const struct dsa_trainer *src);

/* The eval-mode loss of t on x (no dropout, nothing trained). */
float tt_loss_of(struct dsa_trainer *t, const struct tbatch *x);
