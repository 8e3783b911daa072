/* dsactl eval --task ppl (eval-lm.c), and the documents it reads, shared with bench --attention. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dsa_model;

struct cli_lm_doc {
        char *name;
        int32_t *ids;
        size_t n;
};

struct cli_lm_docs {
        struct cli_lm_doc *d;
        size_t n;
};

/* The documents of path: a .safetensors file of 1-D I32 token tensors (in the numeric order of
 * their names' last field), a text file (one document) or a folder of them, tokenized with m's
 * tokenizer. Appends to *x; on failure prints nothing (the engine's error says why). */
int cli_lm_docs_load(const struct dsa_model *m, const char *path, struct cli_lm_docs *x);
void cli_lm_docs_clear(struct cli_lm_docs *x);

/* Perplexity of model m (opened from path model) over the documents of data; prints the result
 * (or JSON) and, with rec, records it in the model file. Returns the exit status. */
int eval_ppl(struct dsa_model *m, const char *model, const char *data, unsigned long limit, bool json, bool rec,
             int threads);
