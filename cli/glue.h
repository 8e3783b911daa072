/* GLUE tasks as dsactl reads them (eval, train, distill): each task's columns by their header
 * names in GLUE's files and in Hugging Face's glue layout, its class names, and a whole labelled
 * set read into memory for training. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dsa_model;
struct cli_tsv;

struct cli_task {
        const char *name;
        const char *const *text, *const *pair, *const *label; /* NULL-terminated alternatives */
        const char *const *classes;
        bool f1; /* report the F1 of class 1, the positive class */
        bool lm; /* a language-model task: needs a decoder */
};

/* The task called name (sst2, mrpc, rte, ppl, lambada), or NULL. */
const struct cli_task *cli_task_find(const char *name);

/* A class id from s: a decimal number, one of the task's class names, or one of the model's L
 * label names (any case). Prints the reason, naming path and line, and returns -EINVAL (or
 * -ERANGE past the model's labels) when s is none of these. */
int cli_task_parse_label(const struct cli_task *t, const struct dsa_model *m, size_t L, const char *path,
                         size_t line, const char *s, int *ret);

/* The task's columns in tsv's header (pair -1 for single-text tasks); prints which is missing
 * and returns -ENOENT. */
int cli_task_columns(const struct cli_task *t, const struct cli_tsv *tsv, int *ret_text, int *ret_pair,
                     int *ret_label);

/* A labelled set in memory. */
struct cli_labelled {
        char **texts, **pairs; /* pairs NULL for single-text tasks */
        int32_t *labels;
        size_t n;
};

/* Reads every row of path (at most limit) for task t and model m; prints why on failure. */
int cli_labelled_load(const struct cli_task *t, const struct dsa_model *m, const char *path, size_t limit,
                      struct cli_labelled *ret);
void cli_labelled_clear(struct cli_labelled *s);

/* Accuracy, and the F1 of class 1, of m on s (classified through dsa_model_classify_texts, as
 * dsactl eval does). */
int cli_labelled_score(const struct dsa_model *m, const struct cli_labelled *s, double *ret_acc, double *ret_f1);
