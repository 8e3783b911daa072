/* GLUE tasks (glue.h): the task table shared by eval, train and distill, labels, and labelled
 * sets read whole. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/model.h"
#include "glue.h"
#include "tsv.h"

#define COLS(...) ((const char *const[]) { __VA_ARGS__, NULL })

/* Class names as GLUE numbers them (a numeric label is used as is). */
static const struct cli_task tasks[] = {
        { "sst2", COLS("sentence"), NULL, COLS("label"), COLS("negative", "positive"), false, false },
        { "mrpc", COLS("#1 String", "sentence1"), COLS("#2 String", "sentence2"), COLS("Quality", "label"),
          COLS("not_equivalent", "equivalent"), true, false },
        { "rte", COLS("sentence1"), COLS("sentence2"), COLS("label"), COLS("entailment", "not_entailment"),
          false, false },
        { "ppl", .lm = true },
        { "lambada", .lm = true },
};

const struct cli_task *cli_task_find(const char *name) {
        for (size_t i = 0; name && i < ELEMENTSOF(tasks); i++)
                if (!strcmp(name, tasks[i].name))
                        return &tasks[i];
        return NULL;
}

int cli_task_parse_label(const struct cli_task *t, const struct dsa_model *m, size_t L, const char *path,
                         size_t line, const char *s, int *ret) {
        long id = -1;

        if (*s >= '0' && *s <= '9') {
                char *end;
                errno = 0;
                id = strtol(s, &end, 10);
                if (errno || *end)
                        id = -1;
        } else {
                for (size_t i = 0; t->classes[i] && id < 0; i++)
                        if (!strcmp(s, t->classes[i]))
                                id = (long) i;
                for (size_t i = 0; i < L && id < 0; i++)
                        if (!strcasecmp(s, dsa_model_label(m, i)))
                                id = (long) i;
        }
        if (id < 0) {
                fprintf(stderr, "dsactl: %s:%zu: bad label '%.40s' (want a class id 0..%zu, %s or %s)\n", path,
                        line, s, L - 1, t->classes[0], t->classes[1]);
                return -EINVAL;
        }
        if ((size_t) id >= L) {
                fprintf(stderr, "dsactl: %s:%zu: label %ld is out of the model's range (0..%zu)\n", path, line, id,
                        L - 1);
                return -ERANGE;
        }
        *ret = (int) id;
        return 0;
}

int cli_task_columns(const struct cli_task *t, const struct cli_tsv *tsv, int *ret_text, int *ret_pair,
                     int *ret_label) {
        const char *const *missing = NULL;
        char cols[256];
        int text = cli_tsv_column(tsv, t->text), pair = t->pair ? cli_tsv_column(tsv, t->pair) : -1,
            label = cli_tsv_column(tsv, t->label);

        if (text < 0)
                missing = t->text;
        else if (t->pair && pair < 0)
                missing = t->pair;
        else if (label < 0)
                missing = t->label;
        if (missing) {
                fprintf(stderr, "dsactl: %s:1: no '%s' column for --task %s (header: %s)\n", cli_tsv_path(tsv),
                        missing[0], t->name, cli_tsv_header_string(tsv, cols, sizeof(cols)));
                return -ENOENT;
        }
        *ret_text = text, *ret_pair = pair, *ret_label = label;
        return 0;
}

void cli_labelled_clear(struct cli_labelled *s) {
        for (size_t i = 0; i < s->n; i++) {
                free(s->texts[i]);
                if (s->pairs)
                        free(s->pairs[i]);
        }
        free(s->texts);
        free(s->pairs);
        free(s->labels);
        *s = (struct cli_labelled) { 0 };
}

static int push(struct cli_labelled *s, size_t *cap, bool pairs) {
        if (s->n < *cap)
                return 0;
        size_t c = *cap ? 2 * *cap : 1024;
        char **t = realloc(s->texts, c * sizeof(char *));
        if (t)
                s->texts = t;
        char **p = pairs ? realloc(s->pairs, c * sizeof(char *)) : NULL;
        if (p)
                s->pairs = p;
        int32_t *l = realloc(s->labels, c * sizeof(int32_t));
        if (l)
                s->labels = l;
        if (!t || (pairs && !p) || !l)
                return -ENOMEM;
        *cap = c;
        return 0;
}

int cli_labelled_load(const struct cli_task *t, const struct dsa_model *m, const char *path, size_t limit,
                      struct cli_labelled *ret) {
        _cleanup_(cli_tsv_freep) struct cli_tsv *tsv = NULL;
        struct cli_labelled s = { 0 };
        const struct dsa_bert_config *c = dsa_model_bert_config(m);
        size_t cap = 0;
        int text, pair, label, r;
        char **f;

        dsa_error_clear();
        if ((r = cli_tsv_open(path, &tsv)) < 0) {
                fprintf(stderr, "dsactl: %s\n", dsa_error_message(r));
                return r;
        }
        if ((r = cli_task_columns(t, tsv, &text, &pair, &label)) < 0)
                return r;
        while (s.n < limit && (r = cli_tsv_next(tsv, &f)) > 0) {
                int y;
                if ((r = push(&s, &cap, pair >= 0)) < 0)
                        break;
                if ((r = cli_task_parse_label(t, m, c->n_labels, path, cli_tsv_line(tsv), f[label], &y)) < 0)
                        break;
                s.texts[s.n] = strdup(f[text]);
                if (pair >= 0)
                        s.pairs[s.n] = strdup(f[pair]);
                s.labels[s.n] = y;
                s.n++;
                if (!s.texts[s.n - 1] || (pair >= 0 && !s.pairs[s.n - 1])) {
                        r = -ENOMEM;
                        break;
                }
        }
        if (r < 0) {
                if (r != -EINVAL && r != -ERANGE)
                        fprintf(stderr, "dsactl: %s: %s\n", path, dsa_error_message(r));
                cli_labelled_clear(&s);
                return r;
        }
        if (s.n == 0) {
                fprintf(stderr, "dsactl: %s: no examples after the header\n", path);
                cli_labelled_clear(&s);
                return -ENODATA;
        }
        *ret = s;
        return 0;
}

int cli_labelled_score(const struct dsa_model *m, const struct cli_labelled *s, double *ret_acc, double *ret_f1) {
        const size_t L = dsa_model_bert_config(m)->n_labels;
        _cleanup_free_ float *logits = calloc(s->n * L, sizeof(float));
        size_t right = 0, tp = 0, fp = 0, fn = 0;
        int r;

        if (!logits)
                return -ENOMEM;
        if ((r = dsa_model_classify_texts(m, (const char *const *) s->texts, (const char *const *) s->pairs, s->n,
                                          logits)) < 0)
                return r;
        for (size_t i = 0; i < s->n; i++) {
                size_t best = 0;
                for (size_t j = 1; j < L; j++)
                        if (logits[i * L + j] > logits[i * L + best])
                                best = j;
                right += best == (size_t) s->labels[i];
                tp += best == 1 && s->labels[i] == 1;
                fp += best == 1 && s->labels[i] != 1;
                fn += best != 1 && s->labels[i] == 1;
        }
        *ret_acc = (double) right / (double) s->n;
        *ret_f1 = 2 * tp + fp + fn > 0 ? 2.0 * (double) tp / (double) (2 * tp + fp + fn) : 0.0;
        return 0;
}
