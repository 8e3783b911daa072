/* dsactl eval: a classifier's accuracy on a labelled GLUE dev set (SST-2, MRPC, RTE), in-process.
 * The TSV file is streamed through tsv.c, columns found by their header names, and classified
 * CLI_CHUNK rows at a time through dsa_model_classify_texts (sentence pairs as pairs), the very
 * path dsactl classify takes, so the two predict alike. Counts per class give accuracy, the F1 of
 * class 1 (MRPC's figure) and the macro F1. Perplexity (ppl) of decoders is eval-lm.c's; lambada
 * is named so a script gets a clear refusal, not a number, until it exists. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "basic/error.h"
#include "basic/time-util.h"
#include "engine/model.h"
#include "engine/variant.h"
#include "eval-lm.h"
#include "glue.h"
#include "online.h"
#include "tsv.h"
#include "util.h"
#include "verbs.h"

struct eval {
        const struct cli_task *task;
        const struct dsa_model *m;
        struct cli_tsv *tsv;
        int col_text, col_pair, col_label;
        size_t L;
        FILE *pred;
        const char *pred_path;
        size_t n;                /* examples classified */
        size_t *tp, *fp, *fn;    /* per class */
        char *texts[CLI_CHUNK], *pairs[CLI_CHUNK];
        int labels[CLI_CHUNK];
        size_t n_chunk;
        float *logits;           /* (CLI_CHUNK, L) */
};

static int usage(const char *msg) {
        fprintf(stderr, "dsactl eval: %s (see dsactl --help)\n", msg);
        return 2;
}

static void chunk_clear(struct eval *e) {
        for (size_t i = 0; i < e->n_chunk; i++) {
                free(e->texts[i]);
                free(e->pairs[i]);
                e->texts[i] = e->pairs[i] = NULL;
        }
        e->n_chunk = 0;
}

/* {"index","label","predicted","logits"} for one example. */
static int write_prediction(struct eval *e, size_t i, int label, size_t pred, const float *logits) {
        struct json_object *o = json_object_new_object(), *jl = json_object_new_array_ext((int) e->L);
        int r;

        for (size_t j = 0; j < e->L; j++)
                json_object_array_add(jl, cli_json_float(logits[j]));
        json_object_object_add(o, "index", json_object_new_int64((int64_t) i));
        json_object_object_add(o, "label", json_object_new_int(label));
        json_object_object_add(o, "predicted", json_object_new_int((int) pred));
        json_object_object_add(o, "logits", jl);
        r = fprintf(e->pred, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        if (r < 0) {
                fprintf(stderr, "dsactl: %s: %s\n", e->pred_path, strerror(errno));
                return -EIO;
        }
        return 0;
}

/* Classifies the rows held and counts them. */
static int chunk_run(struct eval *e) {
        int r;

        if (e->n_chunk == 0)
                return 0;
        dsa_error_clear();
        r = dsa_model_classify_texts(e->m, (const char *const *) e->texts,
                                     e->col_pair >= 0 ? (const char *const *) e->pairs : NULL, e->n_chunk, e->logits);
        if (r < 0)
                return cli_error(r, "classify");
        for (size_t i = 0; i < e->n_chunk; i++) {
                const float *l = e->logits + i * e->L;
                size_t best = 0, y = (size_t) e->labels[i];

                for (size_t j = 1; j < e->L; j++) /* the first on ties, as dsactl classify */
                        if (l[j] > l[best])
                                best = j;
                if (best == y)
                        e->tp[y]++;
                else {
                        e->fp[best]++;
                        e->fn[y]++;
                }
                if (e->pred && (r = write_prediction(e, e->n + i, e->labels[i], best, l)) < 0)
                        return r;
        }
        e->n += e->n_chunk;
        chunk_clear(e);
        return 0;
}

/* Reads one row into the chunk; 1, 0 at the end, or -errno after printing why. */
static int read_row(struct eval *e) {
        char **f;
        size_t k = e->n_chunk;
        int r;

        dsa_error_clear();
        r = cli_tsv_next(e->tsv, &f);
        if (r < 0) {
                fprintf(stderr, "dsactl: %s\n", dsa_error_message(r));
                return r;
        }
        if (r == 0)
                return 0;
        r = cli_task_parse_label(e->task, e->m, e->L, cli_tsv_path(e->tsv), cli_tsv_line(e->tsv), f[e->col_label],
                                 &e->labels[k]);
        if (r < 0)
                return r;
        e->texts[k] = strdup(f[e->col_text]);
        e->pairs[k] = e->col_pair >= 0 ? strdup(f[e->col_pair]) : NULL;
        e->n_chunk++; /* so chunk_clear frees them either way */
        if (!e->texts[k] || (e->col_pair >= 0 && !e->pairs[k]))
                return cli_error(-ENOMEM, "eval");
        return 1;
}

static double f1_of(const struct eval *e, size_t c) {
        double d = (double) (2 * e->tp[c] + e->fp[c] + e->fn[c]);

        return d > 0 ? 2.0 * (double) e->tp[c] / d : 0.0;
}

/* Records the result in the model file as dsa.variant.eval.<task>.* keys, rewriting it
 * atomically in the format it is held in (dsactl show lists them). */
/* Records the result in the model file as dsa.variant.eval.<task>.* keys (dsactl show lists
 * them). */
static int record(struct dsa_model *m, const char *model, const char *task, double acc, double f1, bool has_f1,
                  size_t n, double eps) {
        char key[96], val[64];
        int r = 0;

#define SET(name, ...)                                                                                    \
        do {                                                                                              \
                snprintf(key, sizeof(key), "eval.%s.%s", task, name);                                    \
                snprintf(val, sizeof(val), __VA_ARGS__);                                                 \
                if (r >= 0)                                                                               \
                        r = dsa_model_set_info(m, key, val);                                             \
        } while (0)
        SET("accuracy", "%.6f", acc);
        if (has_f1)
                SET("f1", "%.6f", f1);
        SET("examples", "%zu", n);
        SET("examples_per_second", "%.2f", eps);
#undef SET
        if (r < 0)
                return cli_error(r, model);
        return cli_record(m, model);
}

static void print_result(const struct eval *e, const char *model, const char *data, double secs, int threads,
                         bool json, double *ret_acc, double *ret_f1) {
        size_t right = 0, n_seen = 0;
        double macro = 0, acc, f1 = e->L > 1 ? f1_of(e, 1) : 0, eps = secs > 0 ? (double) e->n / secs : 0;

        for (size_t c = 0; c < e->L; c++) {
                right += e->tp[c];
                if (e->tp[c] + e->fp[c] + e->fn[c] > 0) { /* classes that occur in labels or predictions */
                        macro += f1_of(e, c);
                        n_seen++;
                }
        }
        macro = n_seen ? macro / (double) n_seen : 0;
        acc = (double) right / (double) e->n;
        *ret_acc = acc, *ret_f1 = f1;
        if (json) {
                struct json_object *o = json_object_new_object();

                json_object_object_add(o, "task", json_object_new_string(e->task->name));
                json_object_object_add(o, "model", json_object_new_string(model));
                json_object_object_add(o, "examples", json_object_new_int64((int64_t) e->n));
                json_object_object_add(o, "accuracy", cli_json_float(acc));
                if (e->task->f1)
                        json_object_object_add(o, "f1", cli_json_float(f1));
                json_object_object_add(o, "macro_f1", cli_json_float(macro));
                json_object_object_add(o, "seconds", cli_json_float(secs));
                json_object_object_add(o, "examples_per_second", cli_json_float(eps));
                puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
                return;
        }
        printf("task:      %s, %zu examples of %s\n", e->task->name, e->n, data);
        printf("model:     %s\n", model);
        printf("accuracy:  %.4f (%zu of %zu)\n", acc, right, e->n);
        if (e->task->f1)
                printf("f1:        %.4f (class 1)\n", f1);
        printf("macro F1:  %.4f\n", macro);
        printf("speed:     %.1f examples/s, %.2f s, %d threads\n", eps, secs, threads);
}

static int eval_run(struct eval *e, unsigned long limit) {
        int r;

        for (;;) {
                r = e->n + e->n_chunk < limit ? read_row(e) : 0;
                if (r < 0)
                        return r;
                if (r == 0 || e->n_chunk == CLI_CHUNK) {
                        int q = chunk_run(e);
                        if (q < 0)
                                return q;
                }
                if (r == 0)
                        break;
        }
        if (e->n == 0) {
                fprintf(stderr, "dsactl: %s: no examples after the header\n", cli_tsv_path(e->tsv));
                return -ENODATA;
        }
        return 0;
}

int verb_eval(int argc, char **argv) {
        enum { OPT_TASK = 0x100, OPT_DATA, OPT_JSON, OPT_THREADS, OPT_LIMIT, OPT_PREDICTIONS, OPT_RECORD };
        static const struct option options[] = {
                { "model", required_argument, NULL, 'm' },
                { "task", required_argument, NULL, OPT_TASK },
                { "data", required_argument, NULL, OPT_DATA },
                { "json", no_argument, NULL, OPT_JSON },
                { "threads", required_argument, NULL, OPT_THREADS },
                { "limit", required_argument, NULL, OPT_LIMIT },
                { "predictions", required_argument, NULL, OPT_PREDICTIONS },
                { "record", no_argument, NULL, OPT_RECORD },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        _cleanup_(cli_tsv_freep) struct cli_tsv *tsv = NULL;
        _cleanup_fclose_ FILE *pred = NULL;
        _cleanup_free_ size_t *counts = NULL;
        _cleanup_free_ float *logits = NULL;
        struct eval e = { .col_pair = -1 };
        const char *model = NULL, *data = NULL, *pred_path = NULL;
        unsigned long limit = (unsigned long) -1, v;
        int threads = 0, c, r;
        bool json = false, rec = false;
        double t0, acc, f1, secs;

        opterr = 0;
        while ((c = getopt_long(argc, argv, ":m:h", options, NULL)) >= 0) {
                switch (c) {
                case 'm':
                        model = optarg;
                        break;
                case OPT_TASK:
                        e.task = cli_task_find(optarg);
                        if (!e.task)
                                return usage("--task takes sst2, mrpc, rte, ppl or lambada");
                        break;
                case OPT_DATA:
                        data = optarg;
                        break;
                case OPT_JSON:
                        json = true;
                        break;
                case OPT_THREADS:
                        if (cli_parse_uint(optarg, 1024, &v) < 0)
                                return usage("--threads takes a positive number");
                        threads = (int) v;
                        break;
                case OPT_LIMIT:
                        if (cli_parse_uint(optarg, (unsigned long) -1, &limit) < 0)
                                return usage("--limit takes a positive number");
                        break;
                case OPT_PREDICTIONS:
                        pred_path = optarg;
                        break;
                case OPT_RECORD:
                        rec = true;
                        break;
                case 'h':
                        dsactl_help(stdout);
                        return 0;
                case ':':
                        return usage("an option needs a value");
                default:
                        return usage("unknown option");
                }
        }
        if (optind < argc)
                return usage("takes no arguments (the examples come from --data)");
        if (!model)
                return usage("-m MODEL is required (a GGUF file or a Hugging Face folder)");
        if (!e.task)
                return usage("--task is required (sst2, mrpc, rte or ppl)");
        if (!data)
                return usage("--data FILE is required (a GLUE dev.tsv; for ppl token ids or text)");

        if (!e.task->lm) {
                dsa_error_clear();
                r = cli_tsv_open(data, &tsv);
                if (r < 0) {
                        fprintf(stderr, "dsactl: %s\n", dsa_error_message(r));
                        return 1;
                }
                e.tsv = tsv;
                if (cli_task_columns(e.task, tsv, &e.col_text, &e.col_pair, &e.col_label) < 0)
                        return 1;
        }
        if (cli_open_model(model, &m) < 0)
                return 1;
        if (e.task->lm) {
                threads = cli_set_threads(m, threads);
                if (threads < 0)
                        return 1;
                if (!strcmp(e.task->name, "ppl"))
                        return eval_ppl(m, model, data, limit, json, rec, threads);
                fprintf(stderr, "dsactl: %s: --task %s is not implemented yet\n", model, e.task->name);
                return 1;
        }
        if (!dsa_model_bert_config(m)) {
                fprintf(stderr, "dsactl: %s: --task %s needs a BERT classifier; this is a decoder\n", model,
                        e.task->name);
                return 1;
        }
        e.m = m;
        e.L = dsa_model_bert_config(m)->n_labels;
        if (e.L == 0) {
                fprintf(stderr, "dsactl: %s: model has no classification head\n", model);
                return 1;
        }
        threads = cli_set_threads(m, threads);
        if (threads < 0)
                return 1;
        counts = calloc(3 * e.L, sizeof(size_t));
        logits = malloc(CLI_CHUNK * e.L * sizeof(float));
        if (!counts || !logits)
                return cli_error(-ENOMEM, "eval"), 1;
        e.tp = counts, e.fp = counts + e.L, e.fn = counts + 2 * e.L;
        e.logits = logits;
        if (pred_path) {
                pred = fopen(pred_path, "we");
                if (!pred) {
                        fprintf(stderr, "dsactl: %s: %s\n", pred_path, strerror(errno));
                        return 1;
                }
                e.pred = pred, e.pred_path = pred_path;
        }

        t0 = now_sec();
        r = eval_run(&e, limit);
        chunk_clear(&e);
        if (r < 0)
                return 1;
        if (pred) {
                r = fclose(TAKE_PTR(pred));
                if (r != 0) {
                        fprintf(stderr, "dsactl: %s: %s\n", pred_path, strerror(errno));
                        return 1;
                }
        }
        secs = now_sec() - t0;
        print_result(&e, model, data, secs, threads, json, &acc, &f1);
        if (rec && record(m, model, e.task->name, acc, f1, e.task->f1, e.n, secs > 0 ? (double) e.n / secs : 0) < 0)
                return 1;
        if (fflush(stdout) != 0) {
                fprintf(stderr, "dsactl: eval: writing output: %s\n", strerror(errno));
                return 1;
        }
        return 0;
}
