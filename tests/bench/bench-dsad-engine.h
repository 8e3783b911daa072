/* The in-process side of tests/bench/bench-dsad.c: the engine behind a header of plain types,
 * because engine/model.h and include/dsa/dsa.h both define enum dsa_pool (with different
 * values) and cannot meet in one translation unit. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct bench_engine;

/* Opens a GGUF file (or HF folder) with threads forward threads (0: every core). */
int bench_engine_open(const char *path, unsigned threads, struct bench_engine **ret);
struct bench_engine *bench_engine_free(struct bench_engine *e);

/* Hidden size, number of labels (0: no classifier head). */
size_t bench_engine_dim(const struct bench_engine *e);
size_t bench_engine_n_labels(const struct bench_engine *e);

/* Tokens of text with [CLS]/[SEP], or -errno. */
int bench_engine_count_tokens(const struct bench_engine *e, const char *text);

/* A text of vocabulary words that tokenizes to exactly n_tokens ids with [CLS]/[SEP];
 * *ret is malloc'd. */
int bench_engine_make_text(const struct bench_engine *e, size_t n_tokens, char **ret);

/* One text, the model's default pooling: dim floats into out. */
int bench_engine_embed(const struct bench_engine *e, const char *text, float *out);

/* One text alone (batch of one): n_labels logits into out. */
int bench_engine_classify(const struct bench_engine *e, const char *text, float *out);

/* n texts in one call, as dsactl classify / embed run them (the engine packs up to 32 per
 * forward): embed_cls, [CLS] embeddings (n, dim) into out; else logits (n, n_labels). */
int bench_engine_run(const struct bench_engine *e, const char *const *texts, size_t n, bool embed_cls, float *out);
