/* Damaged model files for the loader's corrupt-file tests (tests/unit/test-model-corrupt.c,
 * test-llama-corrupt.c), in the style of llama.cpp's test-gguf: a file is written by a tiny
 * model writer (tests/fuzz/tiny-*.c) and held in memory, then cut, flipped at seeded random
 * positions or patched one key or tensor at a time. Every damaged file is opened from an
 * exact-size copy (so ASan sees a read past the end as one) with dsa__model_open_gguf_memory()
 * and must either fail with a negative errno, no model and a reason, or load into a model that
 * its kind's run() runs. The dsa_test_file_expect_*() and _check_*() helpers fail the running
 * cmocka test, naming what was damaged. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dsa_model;
struct dsa_test_rng;

/* What writing, opening and running means for one kind of model. */
struct dsa_test_file_kind {
        const char *name; /* in messages: "BERT", "Llama" */
        /* Writes the model the writer's options o describe to path. Returns 0 or -errno. */
        int (*write)(const void *o, const char *path);
        /* Runs a model that loaded, failing the test on what must not happen. Returns whether
         * every output was finite. */
        bool (*run)(const struct dsa_model *m);
};

/* A model file in memory (malloc'd: free p), and the kind that opens it. */
struct dsa_test_file {
        uint8_t *p;
        size_t n;
        const struct dsa_test_file_kind *kind;
};

/* Counts of dsa_test_file_check_flips(), added to across calls. */
struct dsa_test_flips {
        size_t ok;        /* loaded and ran */
        size_t nonfinite; /* of those, with a NaN or infinity in the outputs */
        size_t bad;       /* refused */
        size_t generic;   /* of those, with only strerror() of the code as the reason */
};

/* Writes the model o describes to path, failing the test when the writer fails. */
void dsa_test_file_write(const struct dsa_test_file_kind *kind, const void *o, const char *path);

/* The file o describes, in memory. */
struct dsa_test_file dsa_test_file_build(const struct dsa_test_file_kind *kind, const void *o);

/* A copy of f that the caller owns. */
struct dsa_test_file dsa_test_file_copy(const struct dsa_test_file *f);

/* Opens the n bytes at p as f's kind: a failure must be a negative errno with a reason and no
 * model, a success must run (with finite outputs when want_finite). Returns the code;
 * ret_finite (or NULL) says whether the outputs were finite. */
int dsa_test_file_try(const struct dsa_test_file *f, const uint8_t *p, size_t n, bool want_finite,
                      const char *what, bool *ret_finite);

/* f must load and run with finite outputs. */
void dsa_test_file_expect_ok(const struct dsa_test_file *f, const char *what);

/* f must be refused with a reason containing want. */
void dsa_test_file_expect_fail(const struct dsa_test_file *f, const char *what, const char *want);

/* Writes the size bytes at v over f at offset at, expects the result to fail with want (or,
 * when want is NULL, to load and run with finite outputs), and puts the old bytes back. */
void dsa_test_file_expect_patch(struct dsa_test_file *f, size_t at, const void *v, size_t size, const char *what,
                                const char *want);

/* One fp32 value of a tensor to patch: element index of tensor set to v, refused with a reason
 * containing want (NULL: loads and runs). */
struct dsa_test_f32_patch {
        const char *tensor;
        size_t index;
        float v;
        const char *want;
};

/* dsa_test_file_expect_patch() of each of the n patches in turn (F32 tensors). */
void dsa_test_file_expect_f32_patches(struct dsa_test_file *f, const struct dsa_test_f32_patch *p, size_t n);

/* dsa_test_file_expect_patch() of the case of character i of key or tensor name: the file
 * then has a name no reader looks for instead. */
void dsa_test_file_expect_renamed(struct dsa_test_file *f, const char *name, size_t i, const char *what,
                                  const char *want);

/* Where key or tensor name starts in f's header (after its u64 length). */
size_t dsa_test_file_name_at(const struct dsa_test_file *f, const char *name);

/* Where the bytes of tensor name start in f. */
size_t dsa_test_file_tensor_at(const struct dsa_test_file *f, const char *name);

/* Where the tensor data starts (the header ends before it) and the end of the last tensor's
 * bytes (every shorter file is incomplete). */
void dsa_test_file_data_range(const struct dsa_test_file *f, size_t *ret_start, size_t *ret_end);

/* f cut at every length through the header, then at every 7th byte of the data: each must be
 * refused. */
void dsa_test_file_check_truncated(const struct dsa_test_file *f, const char *what);

/* n_flips damaged copies of f, each with 1 to 8 bytes changed: half of them in the header,
 * where the structure is, the rest anywhere, so that counts, shapes and weights get NaNs and
 * huge values too; one copy in 8 is also cut at a random length. With bits, every other copy
 * flips single bits rather than whole bytes. Each must be refused with a reason, or load and
 * run (finite or not); the outcomes are added to counts. */
void dsa_test_file_check_flips(const struct dsa_test_file *f, struct dsa_test_rng *rng, int n_flips, bool bits,
                               const char *what, struct dsa_test_flips *counts);
