/* dsactl eval --task ppl (eval-lm.c). */
#pragma once

#include <stdbool.h>

struct dsa_model;

/* Perplexity of model m (opened from path model) over the documents of data; prints the result
 * (or JSON) and, with rec, records it in the model file. Returns the exit status. */
int eval_ppl(struct dsa_model *m, const char *model, const char *data, unsigned long limit, bool json, bool rec,
             int threads);
