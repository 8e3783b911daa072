/* libFuzzer target for training checkpoints (engine/train-io.c dsa_trainer_load_checkpoint(),
 * which dsactl train and distill --resume call): the input is written to a memfd and loaded into
 * a fresh trainer of a fixed tiny BERT (fuzz/tiny-bert.c, F32; the seed corpus's checkpoints,
 * gen-seeds.c, are of the same model). Any input must load or fail with a negative errno and a
 * reason; the trainer must then run a training step on whatever values it holds (forward,
 * backward with head importance, AdamW) and export them as a model, loaded or not (a refusal
 * may come after part of the checkpoint was read in), and free. So a count, shape or value the
 * loader let through that the trainer cannot take shows up as an out-of-bounds access here.
 * Built with -fsanitize=fuzzer under DSA_FUZZ, or with fuzz-main.c as a plain corpus replayer. */
#define _GNU_SOURCE /* memfd_create */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "basic/error.h"
#include "engine/model.h"
#include "engine/train.h"
#include "tiny-bert.h"

#define N_ROWS 2
#define N_TOK 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct dsa_model *model;
static int fd = -1;
static char path[64];

/* The model every trainer is made from, and the memfd the inputs go through: once. */
static void init(void) {
        char tmp[] = "/tmp/dsa-fuzz-checkpoint-XXXXXX";
        int t = mkstemp(tmp), r;

        if (t < 0)
                abort();
        close(t);
        r = dsa_test_tiny_bert_write(&(struct dsa_test_tiny_bert) { .tokenizer = true }, tmp);
        if (r >= 0)
                r = dsa_model_open(tmp, &model);
        unlink(tmp);
        if (r < 0) {
                fprintf(stderr, "fuzz-checkpoint: cannot make the tiny model: %s\n", dsa_error_message(r));
                abort();
        }
        fd = memfd_create("dsa-fuzz-checkpoint", MFD_CLOEXEC);
        if (fd < 0)
                abort();
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
}

static void put(const uint8_t *data, size_t size) {
        if (ftruncate(fd, 0) < 0)
                abort();
        for (size_t done = 0; done < size;) {
                ssize_t n = pwrite(fd, data + done, size - done, (off_t) done);
                if (n <= 0)
                        abort();
                done += (size_t) n;
        }
}

/* One step on the loaded values, whatever they are (NaNs make the step refuse, -EDOM). */
static void run(struct dsa_trainer *t) {
        static const int32_t ids[N_ROWS * N_TOK] = { 2, 5, 7, 3, 2, 14, 3, 0 }, labels[N_ROWS] = { 0, 1 };
        static const uint8_t mask[N_ROWS * N_TOK] = { 1, 1, 1, 1, 1, 1, 1, 0 };
        const struct dsa_batch b = { .B = N_ROWS, .T = N_TOK, .ids = ids, .mask = mask };
        double imp[DSA_TEST_TINY_L * DSA_TEST_TINY_H] = { 0 };
        struct dsa_model *m = NULL;

        if (dsa_trainer_forward(t, &b, labels, true, NULL, NULL) >= 0 && dsa_trainer_backward(t, imp) >= 0)
                (void) dsa_trainer_step(t, NULL, NULL);
        if (dsa_trainer_export(t, &m) >= 0)
                dsa_model_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dsa_trainer *t = NULL;
        struct dsa_train_opts o;
        int r;

        if (!model)
                init();
        put(data, size);
        dsa_train_opts_default(&o);
        o.threads = 1;
        o.total_steps = 10;
        if (dsa_trainer_new(model, &o, &t) < 0)
                abort();
        dsa_error_clear();
        r = dsa_trainer_load_checkpoint(t, path);
        /* Every refusal says why. */
        if (r < 0 && (r <= -4096 || !dsa_error_message(r) || !dsa_error_message(r)[0])) {
                fprintf(stderr, "load failed with %d and no reason\n", r);
                abort();
        }
        /* A trainer that loaded runs; so does one a refusal left half loaded. */
        run(t);
        dsa_trainer_free(t);
        return 0;
}
