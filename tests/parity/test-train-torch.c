/* One training step of dsa's BERT trainer (engine/train.h) against PyTorch on
 * ../shared/fixtures/hf/bert-tiny: the first four texts of its tokenization.jsonl, padded to the
 * longest, labels {0,1,1,0}, no dropout. The trainer's loss, logits, every parameter gradient,
 * the gradient norm and the parameters after one AdamW step (lr 1e-3, decay 0.01, clip 1,
 * constant schedule) are written under Hugging Face's names to a safetensors file, which
 * tests/parity/train-step-torch.py compares with the same step in plain torch: loss and
 * gradients within 1e-4 of the tensor's largest reference value, parameters after the step
 * within 1e-5 (the script's header states each tolerance and why).
 *
 * The fused Q/K/V of the trainer ("blk.N.attn_qkv", rows Q, K, V) are split into HF's query,
 * key and value; the other names follow engine/hf.c's map. The comparison lives in Python so
 * that the reference is PyTorch's own autograd and optimizer, not a second C implementation.
 * Skips (77) without ../shared or without a python3 that imports torch and numpy ($DSA_PYTHON,
 * else python3 on PATH, else /usr/bin/python3, which Debian's python3-torch serves). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "engine/train.h"
#include "testutil.h"

#define N_TEXTS 4
#define LR 1e-3f

extern char **environ;

static const char *shared;
static const char *python;
static char script[4096];

/* One tensor of the output file; data is owned. */
struct st_entry {
        char name[160];
        const char *dtype; /* "F32" or "I32" */
        size_t shape[2], ndim;
        void *data;
        size_t size;
};

struct st_file {
        struct st_entry *e;
        size_t n, cap;
};

static void st_add(struct st_file *f, const char *name, const char *dtype, size_t ndim, size_t d0, size_t d1,
                   const void *data) {
        size_t count = ndim == 1 ? d0 : d0 * d1;

        if (f->n == f->cap) {
                f->cap = f->cap ? 2 * f->cap : 64;
                f->e = realloc(f->e, f->cap * sizeof(*f->e));
                assert_non_null(f->e);
        }
        struct st_entry *e = &f->e[f->n++];
        assert_true((size_t) snprintf(e->name, sizeof(e->name), "%s", name) < sizeof(e->name));
        e->dtype = dtype;
        e->ndim = ndim;
        e->shape[0] = d0;
        e->shape[1] = d1;
        e->size = count * 4; /* F32 and I32 alike */
        e->data = malloc(e->size ? e->size : 1);
        assert_non_null(e->data);
        memcpy(e->data, data, e->size);
}

static void st_free(struct st_file *f) {
        for (size_t i = 0; i < f->n; i++)
                free(f->e[i].data);
        free(f->e);
}

/* safetensors: u64 little-endian header length, the JSON header (padded with spaces to a
 * multiple of 8, as the format recommends), then the tensors back to back. x86 is
 * little-endian, so the data goes out as it is in memory. */
static void st_write(const struct st_file *f, const char *path) {
        struct json_object *h = json_object_new_object();
        size_t off = 0;

        for (size_t i = 0; i < f->n; i++) {
                const struct st_entry *e = &f->e[i];
                struct json_object *t = json_object_new_object(), *shape = json_object_new_array(),
                                   *offs = json_object_new_array();
                for (size_t d = 0; d < e->ndim; d++)
                        json_object_array_add(shape, json_object_new_int64((int64_t) e->shape[d]));
                json_object_array_add(offs, json_object_new_int64((int64_t) off));
                json_object_array_add(offs, json_object_new_int64((int64_t) (off + e->size)));
                json_object_object_add(t, "dtype", json_object_new_string(e->dtype));
                json_object_object_add(t, "shape", shape);
                json_object_object_add(t, "data_offsets", offs);
                json_object_object_add(h, e->name, t);
                off += e->size;
        }
        const char *js = json_object_to_json_string_ext(h, JSON_C_TO_STRING_PLAIN);
        size_t n = strlen(js), padded = (n + 7) / 8 * 8;
        uint8_t len[8];
        for (size_t i = 0; i < 8; i++)
                len[i] = (uint8_t) ((uint64_t) padded >> (8 * i));

        FILE *out = fopen(path, "wb");
        assert_non_null(out);
        assert_int_equal(fwrite(len, 1, 8, out), 8);
        assert_int_equal(fwrite(js, 1, n, out), n);
        for (size_t i = n; i < padded; i++)
                assert_int_equal(fputc(' ', out), ' ');
        for (size_t i = 0; i < f->n; i++)
                assert_int_equal(fwrite(f->e[i].data, 1, f->e[i].size, out), f->e[i].size);
        assert_int_equal(fclose(out), 0);
        json_object_put(h);
}

/* The trainer's name of a parameter -> Hugging Face's (engine/hf.c's map plus "bert."), with the
 * fused QKV left to the caller: returns 1 for "blk.N.attn_qkv.<suffix>" (prefix gets
 * "bert.encoder.layer.N.attention.self.", suffix "weight" or "bias"), 0 for the others, -ENOENT
 * for a name the map does not know. */
static int hf_name(const char *ll, char *out, size_t n, const char **ret_suffix) {
        static const struct {
                const char *ll, *hf;
        } top[] = {
                { "token_embd_norm.", "bert.embeddings.LayerNorm." },
                { "token_embd.", "bert.embeddings.word_embeddings." },
                { "position_embd.", "bert.embeddings.position_embeddings." },
                { "token_types.", "bert.embeddings.token_type_embeddings." },
                { "cls.output.", "classifier." },
                { "cls.", "bert.pooler.dense." },
        }, blk[] = {
                { "attn_output_norm.", "attention.output.LayerNorm." },
                { "attn_output.", "attention.output.dense." },
                { "ffn_up.", "intermediate.dense." },
                { "ffn_down.", "output.dense." },
                { "layer_output_norm.", "output.LayerNorm." },
        };
        unsigned long layer;
        int k;
        char *end;

        for (size_t i = 0; i < ELEMENTSOF(top); i++) {
                size_t p = strlen(top[i].ll);
                if (strncmp(ll, top[i].ll, p) == 0) {
                        k = snprintf(out, n, "%s%s", top[i].hf, ll + p);
                        return k >= 0 && (size_t) k < n ? 0 : -ENOENT;
                }
        }
        if (strncmp(ll, "blk.", 4) != 0)
                return -ENOENT;
        layer = strtoul(ll + 4, &end, 10);
        if (end == ll + 4 || *end != '.')
                return -ENOENT;
        end++;
        if (strncmp(end, "attn_qkv.", 9) == 0) {
                k = snprintf(out, n, "bert.encoder.layer.%lu.attention.self.", layer);
                *ret_suffix = end + 9;
                return k >= 0 && (size_t) k < n ? 1 : -ENOENT;
        }
        for (size_t i = 0; i < ELEMENTSOF(blk); i++) {
                size_t p = strlen(blk[i].ll);
                if (strncmp(end, blk[i].ll, p) == 0) {
                        k = snprintf(out, n, "bert.encoder.layer.%lu.%s%s", layer, blk[i].hf, end + p);
                        return k >= 0 && (size_t) k < n ? 0 : -ENOENT;
                }
        }
        return -ENOENT;
}

/* Adds x, one of the trainer's parameters or its gradient (ne0 innermost), under prefix + its
 * HF name: vectors as [ne0], matrices as [ne1, ne0] (PyTorch's (out, in)), the fused QKV split
 * into thirds of its rows (of its elements for the bias). */
static void add_param(struct st_file *f, const char *prefix, const char *name, size_t ne0, size_t ne1,
                      const float *x) {
        static const char *const qkv[3] = { "query", "key", "value" };
        const char *suffix = NULL;
        char hf[160], full[200];
        int r = hf_name(name, hf, sizeof(hf), &suffix);

        if (r < 0)
                fail_msg("trainer parameter '%s' has no Hugging Face name", name);
        if (r == 0) {
                snprintf(full, sizeof(full), "%s%s", prefix, hf);
                if (ne1 == 1)
                        st_add(f, full, "F32", 1, ne0, 0, x);
                else
                        st_add(f, full, "F32", 2, ne1, ne0, x);
                return;
        }
        for (size_t j = 0; j < 3; j++) {
                snprintf(full, sizeof(full), "%s%s%s.%s", prefix, hf, qkv[j], suffix);
                if (ne1 == 1) {
                        assert_int_equal(ne0 % 3, 0);
                        st_add(f, full, "F32", 1, ne0 / 3, 0, x + j * (ne0 / 3));
                } else {
                        assert_int_equal(ne1 % 3, 0);
                        st_add(f, full, "F32", 2, ne1 / 3, ne0, x + j * (ne1 / 3) * ne0);
                }
        }
}

/* Every parameter (or its gradient) of t under prefix. */
static void add_params(struct st_file *f, const struct dsa_trainer *t, const char *prefix, bool grad) {
        for (size_t i = 0; i < dsa_trainer_n_params(t); i++) {
                const char *name;
                size_t ne0, ne1;
                float *value, *g;
                assert_int_equal(dsa_trainer_param(t, i, &name, &ne0, &ne1, &value, &g), 0);
                add_param(f, prefix, name, ne0, ne1, grad ? g : value);
        }
}

/* The batch: ids of the first N_TEXTS lines of tokenization.jsonl, padded with the tokenizer's
 * pad id to the longest; type ids 0. */
struct batch {
        size_t B, T;
        int32_t ids[N_TEXTS * 512], types[N_TEXTS * 512], mask32[N_TEXTS * 512];
        uint8_t mask[N_TEXTS * 512];
};

static void batch_load(const char *dir, const struct dsa_model *m, struct batch *b) {
        int32_t pad = dsa_tokenizer_pad_id(dsa_model_tokenizer(m));
        struct json_object *rows[N_TEXTS];
        char *buf = NULL, *line, *save = NULL;

        assert_int_equal(dsa_test_read_file(dsa_test_path(dir, "tokenization.jsonl"), &buf, NULL), 0);
        b->B = N_TEXTS;
        b->T = 0;
        line = strtok_r(buf, "\n", &save);
        for (size_t i = 0; i < N_TEXTS; i++, line = strtok_r(NULL, "\n", &save)) {
                struct json_object *ids;
                assert_non_null(line);
                rows[i] = json_tokener_parse(line);
                assert_non_null(rows[i]);
                assert_true(json_object_object_get_ex(rows[i], "ids", &ids));
                size_t n = json_object_array_length(ids);
                b->T = n > b->T ? n : b->T;
        }
        assert_true(b->T > 0 && b->T <= 512);
        for (size_t i = 0; i < N_TEXTS; i++) {
                struct json_object *ids;
                json_object_object_get_ex(rows[i], "ids", &ids);
                size_t n = json_object_array_length(ids);
                for (size_t t = 0; t < b->T; t++) {
                        size_t k = i * b->T + t;
                        b->ids[k] = t < n ? json_object_get_int(json_object_array_get_idx(ids, t)) : pad;
                        b->types[k] = 0;
                        b->mask[k] = t < n;
                        b->mask32[k] = t < n;
                }
                json_object_put(rows[i]);
        }
        free(buf);
}

/* Runs argv, its output going to ours (or nowhere when quiet); returns the exit status, or -1
 * when it could not run or died of a signal. */
static int run_wait(char *const argv[], bool quiet) {
        posix_spawn_file_actions_t fa;
        pid_t pid;
        int status, r;

        fflush(stdout);
        fflush(stderr);
        posix_spawn_file_actions_init(&fa);
        if (quiet) {
                posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
                posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
        }
        r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        if (r != 0)
                return -1;
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The first python that imports torch and numpy, or NULL. */
static const char *find_python(void) {
        const char *env = getenv("DSA_PYTHON");
        const char *cands[] = { env && *env ? env : "python3", "python3", "/usr/bin/python3" };

        for (size_t i = 0; i < ELEMENTSOF(cands); i++) {
                char *argv[] = { (char *) cands[i], "-c", "import torch, numpy", NULL };
                if (run_wait(argv, true) == 0)
                        return cands[i];
        }
        return NULL;
}

static void test_train_step(void **state) {
        (void) state;
        char dir[512], tmpdir[] = "/tmp/dsa-train-torch-XXXXXX", path[600];
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL; /* outlives the trainer */
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        struct st_file f = { 0 };
        struct dsa_train_opts o;
        struct batch *b = calloc(1, sizeof(*b));
        const int32_t labels[N_TEXTS] = { 0, 1, 1, 0 };
        float loss = NAN, lr = NAN, gnorm = NAN;
        int r;

        assert_non_null(b);
        snprintf(dir, sizeof(dir), "%s/fixtures/hf/bert-tiny", shared);
        m = dsa_test_model_open(dir);
        const struct dsa_bert_config *c = dsa_model_bert_config(m);
        assert_non_null(c);
        assert_int_equal(c->n_labels, 2);
        const size_t NL = c->n_labels;
        batch_load(dir, m, b);
        const size_t B = b->B, T = b->T;

        dsa_train_opts_default(&o);
        o.lr = LR;
        o.weight_decay = 0.01f;
        o.beta1 = 0.9f;
        o.beta2 = 0.999f;
        o.adam_eps = 1e-8f;
        o.clip = 1.0f;
        o.dropout = 0;
        o.attn_dropout = 0;
        o.total_steps = 0; /* constant learning rate */
        o.warmup_steps = 0;
        o.threads = 1;
        dsa_error_clear();
        r = dsa_trainer_new(m, &o, &t);
        if (r < 0)
                fail_msg("dsa_trainer_new: %s", dsa_error_message(r));

        struct dsa_batch batch = { .B = B, .T = T, .ids = b->ids, .type_ids = b->types, .mask = b->mask };
        float logits[N_TEXTS * 16];
        assert_true(NL <= 16);
        r = dsa_trainer_forward(t, &batch, labels, true, &loss, logits);
        if (r < 0)
                fail_msg("dsa_trainer_forward: %s", dsa_error_message(r));
        r = dsa_trainer_backward(t, NULL);
        if (r < 0)
                fail_msg("dsa_trainer_backward: %s", dsa_error_message(r));
        printf("B=%zu T=%zu loss %.7g, %zu trainer parameters\n", B, T, loss, dsa_trainer_n_params(t));

        st_add(&f, "input_ids", "I32", 2, B, T, b->ids);
        st_add(&f, "attention_mask", "I32", 2, B, T, b->mask32);
        st_add(&f, "token_type_ids", "I32", 2, B, T, b->types);
        st_add(&f, "labels", "I32", 1, B, 0, labels);
        st_add(&f, "loss", "F32", 1, 1, 0, &loss);
        st_add(&f, "logits", "F32", 2, B, NL, logits);
        add_params(&f, t, "step0.", false);
        add_params(&f, t, "", true);

        r = dsa_trainer_step(t, &lr, &gnorm);
        if (r < 0)
                fail_msg("dsa_trainer_step: %s", dsa_error_message(r));
        printf("step: lr %.7g, gradient norm %.7g\n", lr, gnorm);
        st_add(&f, "lr", "F32", 1, 1, 0, &lr);
        st_add(&f, "gnorm", "F32", 1, 1, 0, &gnorm);
        add_params(&f, t, "step1.", false);

        assert_non_null(mkdtemp(tmpdir));
        snprintf(path, sizeof(path), "%s/step.safetensors", tmpdir);
        st_write(&f, path);
        struct dsa_safetensors *back = NULL;
        assert_int_equal(dsa_safetensors_open(path, &back), 0); /* the writer against our reader */
        assert_int_equal(dsa_safetensors_n_tensors(back), f.n);
        dsa_safetensors_free(back);
        st_free(&f);
        free(b);

        char *argv[] = { (char *) python, script, dir, path, NULL };
        printf("%s %s %s %s\n", python, script, dir, path);
        r = run_wait(argv, false);
        if (r != 0)
                fail_msg("train-step-torch.py exited %d; the engine's step is kept in %s", r, path);
        unlink(path);
        rmdir(tmpdir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_train_step),
        };
        const char *src = getenv("DSA_SOURCE_DIR");

        shared = dsa_test_require_shared("training parity against PyTorch");
        if (src && *src)
                snprintf(script, sizeof(script), "%s/tests/parity/train-step-torch.py", src);
        else {
                /* Run by hand outside ctest: the script sits next to this file. */
                const char *slash = strrchr(__FILE__, '/');
                snprintf(script, sizeof(script), "%.*strain-step-torch.py", slash ? (int) (slash - __FILE__ + 1) : 0,
                         __FILE__);
        }
        if (access(script, R_OK) < 0) {
                printf("SKIP: %s not found (set DSA_SOURCE_DIR)\n", script);
                return 77;
        }
        python = find_python();
        if (!python) {
                printf("SKIP: no python3 imports torch and numpy (install python3-torch python3-numpy, "
                       "or set DSA_PYTHON)\n");
                return 77;
        }
        return cmocka_run_group_tests(tests, NULL, NULL);
}
