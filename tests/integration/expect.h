/* Expected results from the in-process engine (the same code dsad runs), for the integration
 * tests. A separate translation unit: the engine's headers and libdsa's dsa.h both define
 * enum dsa_pool. Pools here use the ring's numbering (0 default, 1 cls, 2 mean, 3 pooler). */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Opens the model (one engine thread, as each test compares values, not speed). Returns < 0 on
 * failure. */
int expect_open(const char *path);
void expect_close(void);
size_t expect_n_labels(void);
size_t expect_dim(void);
/* logits (n, n_labels); each text in a batch of its own when single, else all in one call. */
int expect_classify(const char *const *texts, size_t n, int single, float *ret_logits);
/* emb (n, dim). */
int expect_embed(const char *const *texts, size_t n, int pool, int single, float *ret_emb);
/* *ret_ids malloc'd. */
int expect_tokenize(const char *text, int special, int32_t **ret_ids, size_t *ret_n);
