/* Helpers shared by the test executables: where ../shared is, seeded random data, and
 * llm.c-style tensor comparison that prints the worst element. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dsa_model;
struct dsa_safetensors;
struct dsa_tensor_view;
struct dsa_tokenizer;

/* The shared reference folder ($DSA_SHARED, else $DSA_SOURCE_DIR/../shared), or NULL when it
 * does not exist. */
const char *dsa_test_shared_dir(void);

/* Like dsa_test_shared_dir(), but when absent prints "SKIP: <why>: ../shared not found" and
 * exits 77 (ctest's skip code). */
const char *dsa_test_require_shared(const char *why);

/* Joins a and b with '/', into a static buffer per call site's use (rotating 8 buffers). */
const char *dsa_test_path(const char *a, const char *b);

/* xorshift64* generator; seed 0 is replaced by a fixed constant. */
struct dsa_test_rng {
        uint64_t s;
};
uint64_t dsa_test_rng_u64(struct dsa_test_rng *r);
float dsa_test_rng_uniform(struct dsa_test_rng *r, float lo, float hi);
void dsa_test_rng_fill(struct dsa_test_rng *r, float *x, size_t n, float lo, float hi);

/* Compares got against want (n floats); passes when every |got - want| <= atol + rtol*|want|.
 * Prints name, the max abs error and the worst index and values. Returns true on pass. */
bool dsa_test_check_tensor(const char *name, const float *got, const float *want, size_t n,
                           float atol, float rtol);

/* Tensor name of a reference file, which must be there: when it is not, prints its name and
 * fails the running cmocka test. */
const struct dsa_tensor_view *dsa_test_st_need(const struct dsa_safetensors *st, const char *name);

/* Encodes text (len bytes) and pair (NUL-terminated, or NULL) with dsa_tokenizer_encode() and
 * compares the ids with want, -1 terminated, and the type ids with want_types (as many; NULL:
 * not compared). On a difference prints the ids it got and fails the running cmocka test. */
void dsa_test_expect_encode(const struct dsa_tokenizer *t, const char *text, size_t len, const char *pair,
                            unsigned flags, size_t max_len, const int32_t *want, const int32_t *want_types);

/* The decimal ids of s, separated by white space (a line of llama.cpp's test-tokenizer-0 .out
 * files), into ids: stops at the first thing that is not a number or after cap ids. Returns how
 * many it read. */
size_t dsa_test_parse_ids(const char *s, int32_t *ids, size_t cap);

/* Reads a whole file into a malloc'd buffer (NUL-terminated; size without the NUL). */
int dsa_test_read_file(const char *path, char **ret, size_t *ret_size);

/* dsa_model_open() that must succeed: on failure prints the reason (dsa_error_message()) and
 * fails the running cmocka test. */
struct dsa_model *dsa_test_model_open(const char *path);
