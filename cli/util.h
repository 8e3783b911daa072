/* Helpers shared by dsactl's verbs: opening a model with a one-line error, reading input texts,
 * JSON number formatting, thread count. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

struct dsa_model;

/* Opens path (GGUF file or HF folder); on failure prints "dsactl: PATH: reason" and returns
 * the negative errno. */
int cli_open_model(const char *path, struct dsa_model **ret);

/* Prints "dsactl: what: reason" for error r (the engine's stored reason when there is one). */
int cli_error(int r, const char *what);

/* Prints "dsactl VERB: msg (see dsactl --help)" and returns 2, the exit code of usage errors. */
int cli_usage(const char *verb, const char *msg);

/* Sets the model's thread pool (dsa_model_set_threads: OpenBLAS stays on one thread): n > 0 as
 * given, else every core the process may use. Returns the count used, or -errno after printing
 * why. */
int cli_set_threads(struct dsa_model *m, int n);

/* --record of eval and bench: rewrites the GGUF file path (the model m was opened from) with the
 * facts just set by dsa_model_set_info(), atomically, every matrix in the format it is held in.
 * Prints why and returns -errno when path is no regular file or cannot be written. */
int cli_record(struct dsa_model *m, const char *path);

/* Parses a positive integer option value; -EINVAL when it is not one. */
int cli_parse_uint(const char *s, unsigned long max, unsigned long *ret);


/* Reads the next chunk of at most max texts: from args (when argc > 0) or standard input, one
 * per line (trailing \n and \r removed). *ret_texts holds malloc'd strings the caller frees
 * with cli_texts_free. Returns the number read (0 at the end) or -errno. */
struct cli_input {
        int argc;
        char **argv;
        int next;
        bool use_stdin;
};
void cli_input_init(struct cli_input *in, int argc, char **argv);
int cli_input_next(struct cli_input *in, size_t max, char ***ret_texts);
void cli_texts_free(char **texts, size_t n);

/* qsort comparator of doubles, ascending (medians and percentiles). */
int cli_cmp_double(const void *a, const void *b);

/* A JSON number written with 7 significant digits (enough for fp32, and short). */
struct json_object *cli_json_float(double v);

/* Prints o as one line of JSON on stdout and drops the reference. */
void cli_json_print(struct json_object *o);
