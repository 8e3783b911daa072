/* Trainer checkpoints (engine/train.h) and the training loop, on the tiny classifier and
 * synthetic task of tests/common/train-fixture.h (no ../shared). Checked: a checkpoint resumes
 * bit for bit, with dropout and with QAT; damaged checkpoints refused or loaded, never a crash
 * (ASan in CI), other shapes and plain models refused; and the training loop stopping with its
 * step callback's error. */
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
#include "engine/model.h"
#include "engine/train.h"
#include "testutil.h"
#include "train-fixture.h"

/* b: steps of the straight run (the resumed one saves after half of them). */
#define RESUME_STEPS 10

/* g: damaged checkpoints: cuts at every byte of the first CUT_EVERY_BYTE, every CUT_STRIDE-th
 * through the rest of the header (~9 KB of tensor names and shapes), CUTS_IN_DATA seeded ones in
 * the tensor data; N_FLIPS copies with 1 to 8 bytes changed. */
#define CUT_EVERY_BYTE 512
#define CUT_STRIDE 7
#define CUTS_IN_DATA 200
#define N_FLIPS 300
#define SEED 20250611u

/* ---- b. checkpoints resume exactly */
static void check_resume(bool qat) {
        struct dsa_train_opts o = tt_opts(true, qat);
        struct dsa_test_rng rng = { 2 };
        struct tbatch *x[RESUME_STEPS];
        const char *name = NULL;
        char path[64];

        o.total_steps = RESUME_STEPS; /* a schedule, so the step count matters */
        o.warmup_steps = 2;
        for (size_t s = 0; s < RESUME_STEPS; s++)
                x[s] = tt_batch_new(&rng, 8, T_MAX);
        struct dsa_trainer *straight = tt_trainer(tt_model, &o), *first = tt_trainer(tt_model, &o),
                           *resumed = tt_trainer(tt_model, &o);
        for (size_t s = 0; s < RESUME_STEPS; s++)
                tt_train_step(straight, x[s]);
        for (size_t s = 0; s < RESUME_STEPS / 2; s++)
                tt_train_step(first, x[s]);
        tt_tmp_path(path, "ckpt");
        assert_int_equal(dsa_trainer_save_checkpoint(first, path), 0);
        /* The freshly made trainer differs from the one that took the steps... */
        assert_true(tt_params_differ(first, resumed, NULL) > 0);
        int r = dsa_trainer_load_checkpoint(resumed, path);
        if (r < 0)
                fail_msg("loading the checkpoint: %s", dsa_error_message(r));
        unlink(path);
        /* ...and after the load, no longer. */
        assert_int_equal(tt_params_differ(first, resumed, &name), 0);
        assert_int_equal(dsa_trainer_steps_done(resumed), RESUME_STEPS / 2);
        for (size_t s = RESUME_STEPS / 2; s < RESUME_STEPS; s++) {
                tt_train_step(resumed, x[s]);
                tt_train_step(first, x[s]);
        }
        size_t bad = tt_params_differ(straight, resumed, &name);
        if (bad)
                fail_msg("%s: after resuming, %zu parameters differ from the straight run's (first: %s)",
                         qat ? "QAT" : "fp32", bad, name);
        /* Saving does not disturb the trainer that saved. */
        bad = tt_params_differ(straight, first, &name);
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
/* ---- g. damaged checkpoints */

/* Loads path into t, or into a fresh trainer of the main model when t is NULL (freed after);
 * a refusal must say why, and a trainer that loaded must run a step (whatever the values). */
static int try_load(struct dsa_trainer *into, const char *path, const struct tbatch *x) {
        struct dsa_train_opts o = tt_opts(false, false);
        struct dsa_trainer *t = into ? into : tt_trainer(tt_model, &o);

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
        struct dsa_train_opts o = tt_opts(false, false);
        struct dsa_trainer *t = tt_trainer(tt_model, &o);
        struct dsa_test_rng rng = { SEED };
        struct tbatch *x = tt_batch_new(&rng, 4, 8);
        char path[64], bad_path[64];
        char *data = NULL;
        size_t n, start, end, refused = 0, loaded = 0;

        tt_train_task(t, &rng, 2, NULL);
        tt_tmp_path(path, "ckpt");
        tt_tmp_path(bad_path, "bad");
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
                tt_write_bytes(bad_path, data, cut);
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
                tt_write_bytes(bad_path, q, len);
                if (try_load(NULL, bad_path, x) < 0)
                        refused++;
                else
                        loaded++;
        }
        printf("damaged checkpoints (%zu bytes, header %zu): %zu cuts refused; %d flipped: %zu refused, %zu loaded\n", n,
               start, cuts, N_FLIPS, refused, loaded);
        free(q);

        /* The trainer whose loads failed still runs. */
        tt_train_step(t, x);

        unlink(path);
        unlink(bad_path);
        free(data);
        free(x);
        dsa_trainer_free(t);
}

/* Checkpoints that are whole but not for this trainer: another shape, no checkpoint at all, the
 * other QAT setting, no file. Each refused; the trainer that refused them still trains. */
static void test_checkpoint_refused(void **state) {
        struct dsa_train_opts o = tt_opts(false, false);
        struct dsa_trainer *t = tt_trainer(tt_model, &o);
        struct dsa_test_rng rng = { SEED + 1 };
        struct tbatch *x = tt_batch_new(&rng, 4, 8);
        char path[64], bad_path[64];
        size_t wrong = 0;
        int r;

        tt_train_step(t, x);
        tt_tmp_path(path, "ckpt");
        tt_tmp_path(bad_path, "other");
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
                struct dsa_model *m = tt_tiny_open(&other[i]);
                struct dsa_trainer *u = tt_trainer(m, &o);
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
        assert_int_equal(dsa_model_save(tt_model, bad_path, DSA_TYPE_F32), 0);
        r = dsa_trainer_load_checkpoint(t, bad_path);
        printf("plain model: %d %s\n", r, dsa_error_message(r));
        assert_int_equal(r, -EBADMSG);
        /* Nor is a checkpoint without QAT one to resume with QAT. */
        struct dsa_train_opts oq = tt_opts(false, true);
        struct dsa_trainer *tq = tt_trainer(tt_model, &oq);
        assert_int_equal(dsa_trainer_load_checkpoint(tq, path), -EINVAL);
        dsa_trainer_free(tq);
        /* Missing file. */
        unlink(bad_path);
        assert_true(dsa_trainer_load_checkpoint(t, bad_path) < 0);
        /* The trainer whose loads failed still trains. */
        tt_train_step(t, x);
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
        struct dsa_train_opts o = tt_opts(true, false);
        struct dsa_trainer *t = tt_trainer(tt_model, &o);
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
                        const char *w = tt_words[dsa_test_rng_u64(&rng) % ELEMENTSOF(tt_words)];
                        len += (size_t) snprintf(buf[i] + len, sizeof(buf[i]) - len, "%s%s", j ? " " : "", w);
                        labels[i] |= !strcmp(w, "great");
                }
                texts[i] = buf[i];
        }
        int r = dsa_train_set_new(tt_model, texts, NULL, labels, N, CTX, &s);
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
int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_resume),
                cmocka_unit_test(test_resume_qat),
                cmocka_unit_test(test_corrupt_checkpoints),
                cmocka_unit_test(test_checkpoint_refused),
                cmocka_unit_test(test_fit),
        };

        return cmocka_run_group_tests(tests, tt_setup, tt_teardown);
}
