/* See util.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/error.h"
#include "engine/model.h"
#include "util.h"

int cli_error(int r, const char *what) {
        fprintf(stderr, "dsactl: %s: %s\n", what, dsa_error_message(r));
        return r;
}

int cli_usage(const char *verb, const char *msg) {
        fprintf(stderr, "dsactl %s: %s (see dsactl --help)\n", verb, msg);
        return 2;
}

int cli_open_model(const char *path, struct dsa_model **ret) {
        int r;

        dsa_error_clear();
        r = dsa_model_open(path, ret);
        if (r < 0)
                return cli_error(r, path);
        return 0;
}

int cli_set_threads(struct dsa_model *m, int n) {
        int r = dsa_model_set_threads(m, n > 0 ? (unsigned) n : 0);
        if (r < 0)
                return cli_error(r, "--threads");
        return r;
}

int cli_parse_uint(const char *s, unsigned long max, unsigned long *ret) {
        char *end;
        unsigned long v;

        if (!s || !*s || *s == '-')
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno || *end || v == 0 || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}


void cli_input_init(struct cli_input *in, int argc, char **argv) {
        *in = (struct cli_input) { .argc = argc, .argv = argv, .use_stdin = argc == 0 };
}

void cli_texts_free(char **texts, size_t n) {
        if (!texts)
                return;
        for (size_t i = 0; i < n; i++)
                free(texts[i]);
        free(texts);
}

int cli_input_next(struct cli_input *in, size_t max, char ***ret_texts) {
        char **texts = calloc(max, sizeof(char *));
        size_t n = 0;

        if (!texts)
                return -ENOMEM;
        while (n < max) {
                if (!in->use_stdin) {
                        if (in->next >= in->argc)
                                break;
                        texts[n] = strdup(in->argv[in->next++]);
                } else {
                        char *line = NULL;
                        size_t cap = 0;
                        ssize_t len = getline(&line, &cap, stdin);
                        if (len < 0) {
                                free(line);
                                if (ferror(stdin)) {
                                        cli_texts_free(texts, n);
                                        return -EIO;
                                }
                                break;
                        }
                        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                                line[--len] = 0;
                        texts[n] = line;
                }
                if (!texts[n]) {
                        cli_texts_free(texts, n);
                        return -ENOMEM;
                }
                n++;
        }
        if (n == 0) {
                free(texts);
                return 0;
        }
        *ret_texts = texts;
        return (int) n;
}

struct json_object *cli_json_float(double v) {
        char buf[32];

        snprintf(buf, sizeof(buf), "%.7g", v);
        return json_object_new_double_s(v, buf);
}

void cli_json_print(struct json_object *o) {
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
}

int cli_record(struct dsa_model *m, const char *path) {
        struct stat st;
        int r;

        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
                fprintf(stderr, "dsactl: %s: --record needs a GGUF file to write the result into\n", path);
                return -EINVAL;
        }
        dsa_error_clear();
        r = dsa_model_save_variant(m, path);
        if (r < 0)
                cli_error(r, path);
        return r;
}

int cli_cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}
