/* The BERT trainer (engine/train.h) and distillation (engine/distill.h) end to end, on the tiny
 * classifier and synthetic task of tests/common/train-fixture.h (no ../shared). Checked: the
 * trainer learns the task (loss and accuracy on fresh examples); the export runs in the
 * inference engine with the trainer's logits and hidden states (fp32 and QAT's int8, padded and
 * packed batches) and survives a save and reopen; the gradient of every kind of parameter
 * against central differences of the loss; head importance against the derivative of the loss
 * by a head's scale; the student config parser, a student of the teacher's own shape that
 * reproduces it, and distillation with every loss at once; a token-pruned model in the trainer
 * against the engine that drops the tokens. Checkpoints and the training loop:
 * test-train-checkpoint.c. */
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
#include "engine/distill.h"
#include "engine/model-internal.h"
#include "engine/model.h"
#include "engine/train.h"
#include "engine/variant.h"
#include "testutil.h"
#include "train-fixture.h"

/* a: the task is learnt within TASK_STEPS steps of TASK_BATCH (train-fixture.h) examples: the
 * mean loss of the last 20 steps below LOSS_DROP times that of the first 20, accuracy on EVAL_N
 * fresh examples above MIN_ACCURACY. */
#define TASK_STEPS 200
#define LOSS_DROP 0.5
#define EVAL_N 512
#define MIN_ACCURACY 0.9

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

/* g: a token-pruned model (TOKEN_KEEP after every layer but the last) in the trainer against
 * the inference engine's packed forward, which really drops the tokens: the same logits within
 * TOKEN_TOL (the same tokens are chosen, so only the arithmetic's order differs; measured
 * 2.4e-7). Pruning moves the logits of this tiny model little (measured 6.7e-4), so the check
 * is that it moves them by more than TOKEN_MIN_EFFECT: a trainer that ignored the schedule
 * would fail. */
#define TOKEN_KEEP 0.25
#define TOKEN_TOL 1e-5f
#define TOKEN_MIN_EFFECT 1e-4f

/* f: a same-shape student reproduces its teacher within STUDENT_TOL; distillation's total
 * loss, mean of the last 10 of DISTILL_STEPS steps below DISTILL_DROP of the first 10's. */
#define STUDENT_TOL 1e-5f
#define TEACHER_STEPS 150
#define DISTILL_STEPS 100
#define DISTILL_DROP 0.7

/* ---- a. learning */

static void test_learns(void **state) {
        struct dsa_train_opts o = tt_opts(true, false);
        struct dsa_trainer *t = tt_trainer(tt_model, &o);
        struct dsa_test_rng rng = { 1 };
        float losses[TASK_STEPS];

        tt_train_task(t, &rng, TASK_STEPS, losses);
        assert_int_equal(dsa_trainer_steps_done(t), TASK_STEPS);
        const double first = tt_mean(losses, 20), last = tt_mean(losses + TASK_STEPS - 20, 20);
        const double acc = tt_accuracy(t, &rng, EVAL_N);
        printf("learns: loss %.4f (first 20 steps) -> %.4f (last 20), accuracy %.4f on %d fresh examples\n", first,
               last, acc, EVAL_N);
        if (!(last < LOSS_DROP * first))
                fail_msg("the loss fell from %.4f to %.4f only (want below %.2f x)", first, last, LOSS_DROP);
        if (!(acc > MIN_ACCURACY))
                fail_msg("accuracy %.4f <= %.2f", acc, MIN_ACCURACY);
        dsa_trainer_free(t);
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

static void check_export(bool qat, float tol, double mean_tol, double max_tol) {
        struct dsa_train_opts o = tt_opts(true, qat);
        struct dsa_test_rng rng = { 3 };
        float want[B_MAX * N_LABELS], got[B_MAX * N_LABELS], again[B_MAX * N_LABELS];
        struct dsa_model *m = NULL, *reopened = NULL;
        struct tbatch *x = malloc(sizeof(*x));
        const char *what = qat ? "int8 (QAT) export" : "fp32 export";
        char path[64];
        size_t at;

        assert_non_null(x);
        struct dsa_trainer *t = tt_trainer(tt_model, &o);
        tt_train_task(t, &rng, QAT_STEPS, NULL);
        tt_make_batch(&rng, B_MAX, T_MAX, x);
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
                struct dsa_train_opts of = tt_opts(true, false);
                struct dsa_trainer *u = tt_trainer(tt_model, &of);
                struct dsa_model *mf = NULL;
                float fp32[B_MAX * N_LABELS];
                tt_copy_params(u, t);
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
        tt_tmp_path(path, "export");
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

/* ---- g. token pruning */

/* learned: every pruning layer ranks by a random learned score (bert.h) instead of attention. */
static void token_pruned(bool learned) {
        struct dsa_train_opts o = tt_opts(false, false);
        struct dsa_trainer *t = tt_trainer(tt_model, &o), *tp = NULL;
        struct dsa_test_rng rng = { 9 };
        struct tbatch *x = malloc(sizeof(*x)), *xr = malloc(sizeof(*xr));
        struct dsa_model *m = NULL, *back = NULL;
        float dense[B_MAX * N_LABELS], want[B_MAX * N_LABELS], got[B_MAX * N_LABELS];
        size_t at;
        int r;

        assert_true(x && xr);
        /* Trained a little, so that attention is not uniform and the choice means something. */
        tt_train_task(t, &rng, QAT_STEPS, NULL);
        tt_make_batch(&rng, B_MAX, T_MAX, x);
        assert_int_equal(dsa_trainer_forward(t, &x->b, NULL, false, NULL, dense), 0);
        assert_int_equal(dsa_trainer_export(t, &m), 0);
        struct dsa_optimize_opts op = { .quant = DSA_WFORMAT_F32, .token_keep = TOKEN_KEEP, .act_percentile = 99.99 };
        if ((r = dsa_model_optimize(m, &op)) < 0)
                fail_msg("dsa_model_optimize: %s", dsa_error_message(r));
        for (size_t l = 0; learned && l + 1 < m->bert->cfg.n_layer; l++) {
                const size_t C = m->bert->cfg.n_embd;
                float *w = malloc((C + 1) * sizeof(float));
                assert_non_null(w);
                for (size_t c = 0; c <= C; c++)
                        w[c] = dsa_test_rng_uniform(&rng, -1.0f, 1.0f);
                m->bert->layers[l].token_score = w;
        }

        /* The trainer of the token-pruned model: tokens leave the keys of later layers. */
        if ((r = dsa_trainer_new(m, &o, &tp)) < 0)
                fail_msg("dsa_trainer_new: %s", dsa_error_message(r));
        assert_int_equal(dsa_trainer_forward(tp, &x->b, NULL, false, NULL, want), 0);
        const size_t L = dsa_trainer_config(tp)->n_layer, T = x->b.T;
        for (size_t b = 0; b < x->b.B; b++) {
                size_t n = 0, kept = 0;
                const uint8_t *m1 = dsa_trainer_hidden_mask(tp, 2) + b * T;
                for (size_t k = 0; k < T; k++)
                        n += x->mask[b * T + k] != 0, kept += m1[k] != 0;
                /* After layer 0: [CLS] and the ceil(keep n) - 1 others. */
                assert_int_equal(kept, MIN(MAX((size_t) ceil(TOKEN_KEEP * (double) n), (size_t) 1), n));
                assert_true(m1[0] || n == 0);
        }
        assert_true(dsa_trainer_hidden_mask(tp, L) != NULL);

        /* The engine's packed path is the one that prunes. */
        *xr = *x;
        xr->b.ids = xr->ids, xr->b.mask = xr->mask;
        xr->b.ragged = xr->b.first_only = true;
        model_logits(m, xr, got, NULL);
        float d = max_abs_diff(got, want, B_MAX * N_LABELS, &at);
        const float effect = max_abs_diff(dense, want, B_MAX * N_LABELS, NULL);
        printf("token pruning %.2f (%s score): max |logit - trainer's| %.3g (tolerance %.0e) at %zu; pruning moved "
               "the logits by up to %.3g\n",
               TOKEN_KEEP, learned ? "learned" : "attention", (double) d, (double) TOKEN_TOL, at, (double) effect);
        if (!(d <= TOKEN_TOL))
                fail_msg("token-pruned logits differ from the trainer's by %g at %zu (%g vs %g)", (double) d, at,
                         (double) got[at], (double) want[at]);
        assert_true(effect > TOKEN_MIN_EFFECT);

        /* Its export keeps the schedule. */
        assert_int_equal(dsa_trainer_export(tp, &back), 0);
        model_logits(back, xr, got, NULL);
        d = max_abs_diff(got, want, B_MAX * N_LABELS, &at);
        if (!(d <= TOKEN_TOL))
                fail_msg("the trainer's export lost the token schedule: logits off by %g", (double) d);
        for (size_t l = 0; l < m->bert->cfg.n_layer; l++) {
                const float *a = m->bert->layers[l].token_score, *b = back->bert->layers[l].token_score;
                assert_true(!a == !b);
                if (a)
                        assert_memory_equal(a, b, (m->bert->cfg.n_embd + 1) * sizeof(float));
        }

        dsa_model_free(back);
        dsa_model_free(m);
        dsa_trainer_free(tp);
        dsa_trainer_free(t);
        free(x), free(xr);
}

static void test_token_pruned(void **state) {
        (void) state;
        token_pruned(false);
}

static void test_token_pruned_learned(void **state) {
        (void) state;
        token_pruned(true);
}

/* ---- d. gradients */
/* The 5-point central difference of the loss by *w with step h; *w is restored. */
static double fd(struct dsa_trainer *t, const struct tbatch *x, float *w, double h) {
        const float w0 = *w;
        double l[4];
        static const double k[4] = { -2, -1, 1, 2 };

        for (size_t i = 0; i < 4; i++) {
                *w = (float) (w0 + k[i] * h);
                l[i] = tt_loss_of(t, x);
        }
        *w = w0;
        return (l[0] - 8 * l[1] + 8 * l[2] - l[3]) / (12 * h);
}

static void test_gradients(void **state) {
        struct dsa_train_opts o = tt_opts(false, false);
        struct dsa_trainer *t = tt_trainer(tt_model, &o);
        struct dsa_test_rng rng = { 4 };
        struct tbatch *x = tt_batch_new(&rng, GRAD_B, T_MAX);
        const size_t n = dsa_trainer_n_params(t);
        double worst = 0;
        const char *worst_name = "";
        size_t worst_at = 0, checked = 0, above_floor = 0, bad = 0;
        double worst_a = 0, worst_n = 0;

        /* A few steps first, so that the classifier is no longer at its start. */
        tt_train_task(t, &rng, GRAD_TRAIN_STEPS, NULL);
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
        struct dsa_train_opts o = tt_opts(false, false);
        struct dsa_trainer *t = tt_trainer(tt_model, &o);
        const struct dsa_bert_config *c = dsa_trainer_config(t);
        const size_t L = c->n_layer, NH = c->n_head, C = c->n_embd, HS = C / NH;
        struct dsa_test_rng rng = { 5 };
        /* One example: its importance is |dL/d alpha| of its own loss, which a finite difference
         * checks; the batch of 8 below then checks the per-example sum. */
        struct tbatch *x = tt_batch_new(&rng, 1, T_MAX), *x8 = tt_batch_new(&rng, 8, T_MAX);
        double imp[L * NH], again[L * NH], top = 0;
        char name[64];

        tt_train_task(t, &rng, GRAD_TRAIN_STEPS, NULL);
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
                                lp[s] = tt_loss_of(t, x);
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
                struct tbatch *one = tt_batch_slice(x8, e);
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
        const struct dsa_bert_config *t = dsa_model_bert_config(tt_model);
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
        struct dsa_train_opts o = tt_opts(false, false);
        struct dsa_trainer *t = tt_trainer(tt_model, &o), *s = NULL;
        struct dsa_test_rng rng = { 6 };
        struct tbatch *x[2] = { tt_batch_new(&rng, 8, T_MAX), tt_batch_new(&rng, 8, 7) },
                      *y = tt_batch_new(&rng, B_MAX, T_MAX);
        const struct dsa_batch bs[2] = { x[0]->b, x[1]->b };
        const int32_t *labels[2] = { x[0]->labels, x[1]->labels };
        float want[B_MAX * N_LABELS], got[B_MAX * N_LABELS];
        const char *name = NULL;
        size_t at;

        tt_train_task(t, &rng, 5, NULL);
        const struct dsa_bert_config cfg = *dsa_trainer_config(t);
        int r = dsa_distill_student_new(t, &cfg, &o, bs, labels, 2, true, &s);
        if (r < 0)
                fail_msg("dsa_distill_student_new: %s", dsa_error_message(r));
        assert_int_equal(dsa_trainer_forward(t, &y->b, NULL, false, NULL, want), 0);
        assert_int_equal(dsa_trainer_forward(s, &y->b, NULL, false, NULL, got), 0);
        const float d = max_abs_diff(got, want, B_MAX * N_LABELS, &at);
        const size_t bad = tt_params_differ(t, s, &name);
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
        struct dsa_train_opts o = tt_opts(true, false);
        struct dsa_trainer *t = tt_trainer(tt_model, &o), *s = NULL;
        struct dsa_distiller *d = NULL;
        struct dsa_distill_opts dopt;
        struct dsa_bert_config scfg;
        struct dsa_test_rng rng = { 7 };
        struct tbatch *x[4];
        struct dsa_batch bs[4];
        const int32_t *labels[4];
        float total[DISTILL_STEPS];

        tt_train_task(t, &rng, TEACHER_STEPS, NULL);
        for (size_t k = 0; k < 4; k++) {
                x[k] = tt_batch_new(&rng, 16, T_MAX);
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
                tt_make_batch(&rng, TASK_BATCH, T_MAX, x[0]);
                r = dsa_distiller_batch(d, &x[0]->b, x[0]->labels, &l);
                if (r < 0)
                        fail_msg("dsa_distiller_batch: %s", dsa_error_message(r));
                assert_int_equal(dsa_trainer_step(s, NULL, NULL), 0);
                assert_true(isfinite(l.total) && l.soft >= 0 && l.hard >= 0 && l.feature >= 0 && l.relation >= 0);
                if (k == 0)
                        l0 = l;
                total[k] = l.total;
        }
        const double first = tt_mean(total, 10), last = tt_mean(total + DISTILL_STEPS - 10, 10);
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

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_learns),
                cmocka_unit_test(test_export),
                cmocka_unit_test(test_export_qat),
                cmocka_unit_test(test_gradients),
                cmocka_unit_test(test_head_importance),
                cmocka_unit_test(test_student_config),
                cmocka_unit_test(test_student_same_shape),
                cmocka_unit_test(test_distill),
                cmocka_unit_test(test_token_pruned),
                cmocka_unit_test(test_token_pruned_learned),
        };

        return cmocka_run_group_tests(tests, tt_setup, tt_teardown);
}
