/* dsactl train and dsactl distill: fine-tuning (optionally quantization-aware) and knowledge
 * distillation of a BERT classifier on a labelled GLUE set, in-process on engine/train.h and
 * engine/distill.h. Both tokenize the training set once, shuffle it each epoch from the seed,
 * batch examples of similar length, show a progress bar (steps, loss, examples/s, ETA) on a
 * terminal or a line every 5% otherwise, checkpoint and resume, then score the result on the
 * dev set through the inference engine (as dsactl eval does) and write it as a GGUF variant. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/error.h"
#include "basic/time-util.h"
#include "engine/distill.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "engine/train.h"
#include "engine/variant.h"
#include "glue.h"
#include "util.h"
#include "verbs.h"

struct run {
        const char *verb;
        const struct cli_task *task;
        const char *data, *eval, *out, *checkpoint, *resume;
        unsigned long epochs, batch, max_len, max_steps, limit, ckpt_every, threads;
        double warmup;
        bool json, qat;
        struct dsa_train_opts o;
};

static void fmt_eta(char *buf, size_t size, double s) {
        if (s >= 3600)
                snprintf(buf, size, "%dh%02dm", (int) (s / 3600), (int) (s / 60) % 60);
        else
                snprintf(buf, size, "%dm%02ds", (int) (s / 60), (int) s % 60);
}

static void progress(const struct run *run, bool tty, uint64_t step, uint64_t total, float loss, float lr,
                     double eps, double eta, bool last) {
        char e[32];
        fmt_eta(e, sizeof(e), eta);
        if (tty) {
                const int W = 24, k = (int) (W * step / (total ? total : 1));
                fprintf(stderr, "\r%s [%.*s%*s] %llu/%llu loss %.4f lr %.1e %.0f ex/s ETA %s ", run->verb, k,
                        "########################", W - k, "", (unsigned long long) step, (unsigned long long) total,
                        loss, lr, eps, e);
                if (last)
                        fputc('\n', stderr);
        } else
                fprintf(stderr, "%s: step %llu/%llu loss %.4f lr %.1e %.0f ex/s ETA %s\n", run->verb,
                        (unsigned long long) step, (unsigned long long) total, loss, lr, eps, e);
}

struct progress {
        const struct run *run;
        struct dsa_trainer *t;
        bool tty;
        uint64_t first, total, every;
        size_t seen;
        double t0, t_last;
        float ema;
};

/* After each step: the progress bar or line, and checkpoints. */
static int on_step(void *userdata, uint64_t step, float loss, float lr, size_t examples) {
        struct progress *p = userdata;
        const struct run *run = p->run;
        const double now = now_sec();
        int r;

        p->seen += examples;
        p->ema = p->ema < 0 ? loss : 0.98f * p->ema + 0.02f * loss;
        if (!run->json && ((p->tty && now - p->t_last > 0.2) || (!p->tty && step % p->every == 0) || step == p->total)) {
                const double eps = (double) p->seen / (now - p->t0);
                const double eta = (double) (p->total - step) * (now - p->t0) / (double) (step - p->first);
                progress(run, p->tty, step, p->total, p->ema, lr, eps, eta, step == p->total);
                p->t_last = now;
        }
        if (run->checkpoint && run->ckpt_every && step % run->ckpt_every == 0 &&
            (r = dsa_trainer_save_checkpoint(p->t, run->checkpoint)) < 0)
                return r;
        return 0;
}

/* Trains t on s for the run's steps (fn NULL: fine-tuning); *ret_eps: training examples/s. */
static int loop(const struct run *run, struct dsa_trainer *t, const struct dsa_train_set *s,
                int (*fn)(void *, const struct dsa_batch *, const int32_t *, float *), void *userdata,
                double *ret_eps) {
        struct progress p = {
                .run = run, .t = t, .tty = isatty(fileno(stderr)) && !run->json, .first = dsa_trainer_steps_done(t),
                .total = run->o.total_steps, .t0 = now_sec(), .ema = -1.0f,
        };
        p.every = p.total / 20 ? p.total / 20 : 1;
        const struct dsa_fit f = {
                .batch = run->batch, .total_steps = run->o.total_steps, .seed = run->o.seed, .batch_fn = fn,
                .batch_userdata = userdata, .step_fn = on_step, .step_userdata = &p,
        };
        dsa_error_clear();
        int r = dsa_trainer_fit(t, s, &f);
        *ret_eps = p.seen ? (double) p.seen / (now_sec() - p.t0) : 0.0;
        /* The last state too, so a finished run can be continued with more steps. */
        if (r >= 0 && run->checkpoint && (!run->ckpt_every || dsa_trainer_steps_done(t) % run->ckpt_every))
                r = dsa_trainer_save_checkpoint(t, run->checkpoint);
        if (r < 0)
                fprintf(stderr, "%sdsactl %s: %s\n", p.tty ? "\n" : "", run->verb, dsa_error_message(r));
        return r;
}

/* Scores the exported model on the dev set, records what was done, writes it. */
static int finish(const struct run *run, struct dsa_trainer *t, const struct dsa_model *ref, const char *method,
                  double secs, double eps) {
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        struct cli_labelled dev = { 0 };
        double acc = -1, f1 = -1;
        char v[64];
        int r;

        if ((r = dsa_trainer_export(t, &m)) < 0)
                return cli_error(r, run->out);
        if (run->threads)
                dsa_model_set_threads(m, (unsigned) run->threads);
        if (run->eval) {
                if (cli_labelled_load(run->task, ref, run->eval, (size_t) -1, &dev) < 0)
                        return -EINVAL;
                r = cli_labelled_score(m, &dev, &acc, &f1);
                cli_labelled_clear(&dev);
                if (r < 0)
                        return cli_error(r, run->eval);
                snprintf(v, sizeof(v), "%.6f", acc);
                char key[64];
                snprintf(key, sizeof(key), "eval.%s.accuracy", run->task->name);
                dsa_model_set_info(m, key, v);
                if (run->task->f1) {
                        snprintf(key, sizeof(key), "eval.%s.f1", run->task->name);
                        snprintf(v, sizeof(v), "%.6f", f1);
                        dsa_model_set_info(m, key, v);
                }
        }
        if (!dsa_model_info(m, "method"))
                dsa_model_set_info(m, "method", method);
        dsa_model_set_info(m, "train.task", run->task->name);
        snprintf(v, sizeof(v), "%llu", (unsigned long long) dsa_trainer_steps_done(t));
        dsa_model_set_info(m, "train.steps", v);
        snprintf(v, sizeof(v), "%g", (double) run->o.lr);
        dsa_model_set_info(m, "train.lr", v);
        snprintf(v, sizeof(v), "%llu", (unsigned long long) run->o.seed);
        dsa_model_set_info(m, "train.seed", v);
        snprintf(v, sizeof(v), "%zu", dsa_model_weight_bytes(m));
        dsa_model_set_info(m, "weight_bytes", v);
        dsa_error_clear();
        if ((r = dsa_model_save_variant(m, run->out)) < 0)
                return cli_error(r, run->out);
        if (run->json) {
                struct json_object *o = json_object_new_object();
                json_object_object_add(o, "output", json_object_new_string(run->out));
                json_object_object_add(o, "task", json_object_new_string(run->task->name));
                json_object_object_add(o, "steps", json_object_new_int64((int64_t) dsa_trainer_steps_done(t)));
                json_object_object_add(o, "seconds", cli_json_float(secs));
                json_object_object_add(o, "examples_per_second", cli_json_float(eps));
                if (acc >= 0)
                        json_object_object_add(o, "accuracy", cli_json_float(acc));
                if (acc >= 0 && run->task->f1)
                        json_object_object_add(o, "f1", cli_json_float(f1));
                json_object_object_add(o, "weight_bytes", json_object_new_int64((int64_t) dsa_model_weight_bytes(m)));
                puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
        } else {
                if (acc >= 0)
                        printf("dev %s: accuracy %.4f%s", run->task->name, acc, run->task->f1 ? "" : "\n");
                if (acc >= 0 && run->task->f1)
                        printf(", f1 %.4f\n", f1);
                printf("wrote %s (%.1f MB of weights, %llu steps, %.0f s)\n", run->out,
                       (double) dsa_model_weight_bytes(m) / 1e6, (unsigned long long) dsa_trainer_steps_done(t),
                       secs);
        }
        return 0;
}

/* ---- options shared by train and distill */

enum {
        OPT_TASK = 0x100, OPT_DATA, OPT_EVAL, OPT_EPOCHS, OPT_BATCH, OPT_LR, OPT_WARMUP, OPT_WD, OPT_CLIP,
        OPT_DROPOUT, OPT_SEED, OPT_MAXLEN, OPT_MAXSTEPS, OPT_LIMIT, OPT_THREADS, OPT_CKPT, OPT_CKPT_EVERY, OPT_RESUME,
        OPT_JSON, OPT_QAT, OPT_TEACHER, OPT_STUDENT_CONFIG, OPT_STUDENT, OPT_LOSS, OPT_TEMP, OPT_W_SOFT, OPT_W_HARD,
        OPT_W_FEATURE, OPT_W_RELATION, OPT_FRESH, OPT_REINIT_HEAD,
};

#define COMMON_OPTIONS                                                                                        \
        { "task", required_argument, NULL, OPT_TASK }, { "data", required_argument, NULL, OPT_DATA },         \
        { "eval", required_argument, NULL, OPT_EVAL }, { "output", required_argument, NULL, 'o' },            \
        { "epochs", required_argument, NULL, OPT_EPOCHS }, { "batch", required_argument, NULL, OPT_BATCH },  \
        { "lr", required_argument, NULL, OPT_LR }, { "warmup", required_argument, NULL, OPT_WARMUP },         \
        { "weight-decay", required_argument, NULL, OPT_WD }, { "clip", required_argument, NULL, OPT_CLIP },   \
        { "dropout", required_argument, NULL, OPT_DROPOUT }, { "seed", required_argument, NULL, OPT_SEED },   \
        { "max-len", required_argument, NULL, OPT_MAXLEN }, { "max-steps", required_argument, NULL, OPT_MAXSTEPS }, \
        { "limit", required_argument, NULL, OPT_LIMIT }, { "threads", required_argument, NULL, OPT_THREADS }, \
        { "checkpoint", required_argument, NULL, OPT_CKPT },                                                  \
        { "checkpoint-every", required_argument, NULL, OPT_CKPT_EVERY },                                      \
        { "resume", required_argument, NULL, OPT_RESUME }, { "json", no_argument, NULL, OPT_JSON },           \
        { "qat", required_argument, NULL, OPT_QAT }, { "help", no_argument, NULL, 'h' }

static int usage(const struct run *run, const char *msg) {
        fprintf(stderr, "dsactl %s: %s (see dsactl --help)\n", run->verb, msg);
        return 2;
}

static bool parse_float(const char *s, double lo, double hi, float *ret) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !(v >= lo && v <= hi))
                return false;
        *ret = (float) v;
        return true;
}

/* Handles an option both verbs take: 1 handled, 0 not one of them, 2 usage error (printed). */
static int common_option(struct run *run, int c, const char *arg) {
        unsigned long v;
        float f;
        switch (c) {
        case OPT_TASK:
                run->task = cli_task_find(arg);
                if (!run->task || run->task->lm)
                        return usage(run, "--task takes sst2, mrpc or rte");
                return 1;
        case OPT_DATA:
                run->data = arg;
                return 1;
        case OPT_EVAL:
                run->eval = arg;
                return 1;
        case 'o':
                run->out = arg;
                return 1;
        case OPT_EPOCHS:
        case OPT_BATCH:
        case OPT_MAXLEN:
        case OPT_MAXSTEPS:
        case OPT_LIMIT:
        case OPT_THREADS:
        case OPT_CKPT_EVERY:
                if (cli_parse_uint(arg, c == OPT_MAXLEN ? 512 : c == OPT_BATCH ? 4096 : (unsigned long) -1, &v) < 0)
                        return usage(run, "a count option takes a positive number");
                *(c == OPT_EPOCHS     ? &run->epochs
                  : c == OPT_BATCH    ? &run->batch
                  : c == OPT_MAXLEN   ? &run->max_len
                  : c == OPT_MAXSTEPS ? &run->max_steps
                  : c == OPT_LIMIT    ? &run->limit
                  : c == OPT_THREADS  ? &run->threads
                                      : &run->ckpt_every) = v;
                return 1;
        case OPT_SEED:
                if (cli_parse_uint(arg, (unsigned long) -1, &v) < 0)
                        return usage(run, "--seed takes a positive number");
                run->o.seed = v;
                return 1;
        case OPT_LR:
                if (!parse_float(arg, 1e-9, 1.0, &run->o.lr))
                        return usage(run, "--lr takes a number in (0, 1]");
                return 1;
        case OPT_WARMUP:
                if (!parse_float(arg, 0.0, 1.0, &f))
                        return usage(run, "--warmup takes a fraction of the steps in [0, 1]");
                run->warmup = f;
                return 1;
        case OPT_WD:
                if (!parse_float(arg, 0.0, 1.0, &run->o.weight_decay))
                        return usage(run, "--weight-decay takes a number in [0, 1]");
                return 1;
        case OPT_CLIP:
                if (!parse_float(arg, 0.0, 1e6, &run->o.clip))
                        return usage(run, "--clip takes a gradient norm (0: none)");
                return 1;
        case OPT_DROPOUT:
                if (!parse_float(arg, 0.0, 0.9, &run->o.dropout))
                        return usage(run, "--dropout takes a probability in [0, 0.9]");
                run->o.attn_dropout = run->o.dropout;
                return 1;
        case OPT_CKPT:
                run->checkpoint = arg;
                return 1;
        case OPT_RESUME:
                run->resume = arg;
                return 1;
        case OPT_JSON:
                run->json = true;
                return 1;
        case OPT_QAT:
                if (strcmp(arg, "int8"))
                        return usage(run, "--qat takes int8");
                run->qat = true;
                return 1;
        case 'h':
                dsactl_help(stdout);
                return 3;
        case ':':
                return usage(run, "an option needs a value");
        default:
                return 0;
        }
}

/* An option the verb's own loop did not take: -1 when it was one of both verbs' options, else
 * the exit code to return (0 after --help, 2 after a usage error). */
static int other_option(struct run *run, int c, const char *arg) {
        int r = common_option(run, c, arg);
        if (r == 0)
                return usage(run, "unknown option");
        return r >= 2 ? (r == 3 ? 0 : r) : -1;
}

static int check_common(struct run *run, int argc) {
        if (optind < argc)
                return usage(run, "takes no arguments");
        if (!run->task)
                return usage(run, "--task is required (sst2, mrpc or rte)");
        if (!run->data)
                return usage(run, "--data TRAIN.tsv is required");
        if (!run->out)
                return usage(run, "-o OUT.gguf is required");
        if (run->batch == 0)
                run->batch = 32;
        if (run->max_len == 0)
                run->max_len = 128;
        run->o.threads = (unsigned) run->threads;
        run->o.qat = run->qat;
        return 0;
}

/* Loads and tokenizes the training set; sets the schedule's length. */
static int prepare(struct run *run, const struct dsa_model *m, struct dsa_train_set **ret) {
        struct cli_labelled d = { 0 };
        int r;

        if ((r = cli_labelled_load(run->task, m, run->data, run->limit ? run->limit : (size_t) -1, &d)) < 0)
                return r;
        dsa_error_clear();
        r = dsa_train_set_new(m, (const char *const *) d.texts, (const char *const *) d.pairs, d.labels, d.n,
                              run->max_len, ret);
        cli_labelled_clear(&d);
        if (r < 0)
                return cli_error(r, run->data);
        const size_t n = dsa_train_set_size(*ret);
        uint64_t total = run->epochs * ((n + run->batch - 1) / run->batch);
        if (run->max_steps && run->max_steps < total)
                total = run->max_steps;
        run->o.total_steps = total;
        run->o.warmup_steps = (uint64_t) (run->warmup * (double) total);
        return 0;
}

int verb_train(int argc, char **argv) {
        static const struct option options[] = {
                { "model", required_argument, NULL, 'm' },
                { "fresh", no_argument, NULL, OPT_FRESH },
                { "reinit-head", no_argument, NULL, OPT_REINIT_HEAD },
                COMMON_OPTIONS,
                {},
        };
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        struct run run = { .verb = "train", .epochs = 3, .warmup = 0.1 };
        _cleanup_(dsa_train_set_freep) struct dsa_train_set *s = NULL;
        const char *model = NULL;
        bool fresh = false, reinit = false;
        int c, r;

        dsa_train_opts_default(&run.o);
        run.o.lr = 5e-5f;
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":m:o:h", options, NULL)) >= 0) {
                if (c == 'm' || c == OPT_FRESH || c == OPT_REINIT_HEAD) {
                        model = c == 'm' ? optarg : model;
                        fresh |= c == OPT_FRESH;
                        reinit |= c == OPT_REINIT_HEAD;
                        continue;
                }
                if ((r = other_option(&run, c, optarg)) >= 0)
                        return r;
        }
        if (!model)
                return usage(&run, "-m MODEL is required");
        if ((r = check_common(&run, argc)) != 0)
                return r;
        if (cli_open_model(model, &m) < 0)
                return 1;
        if ((r = prepare(&run, m, &s)) < 0)
                return 1;
        dsa_error_clear();
        if ((r = fresh ? dsa_trainer_new_fresh(m, dsa_model_bert_config(m), &run.o, &t) : dsa_trainer_new(m, &run.o, &t)) <
                    0 ||
            (run.resume && (r = dsa_trainer_load_checkpoint(t, run.resume)) < 0)) {
                cli_error(r, run.resume && t ? run.resume : model);
                return 1;
        }
        if (reinit && !run.resume)
                dsa_trainer_reinit_head(t);
        if (!run.json)
                fprintf(stderr, "train: %zu examples, %llu steps of %lu, lr %g%s\n", dsa_train_set_size(s),
                        (unsigned long long) run.o.total_steps, run.batch, (double) run.o.lr,
                        run.qat ? ", QAT int8" : "");
        double t0 = now_sec(), eps;
        r = loop(&run, t, s, NULL, NULL, &eps);
        if (r < 0)
                return 1;
        return finish(&run, t, m, run.qat ? "qat" : "finetune", now_sec() - t0, eps) < 0 ? 1 : 0;
}

struct distill_ctx {
        struct dsa_distiller *d;
};

static int distill_batch(void *userdata, const struct dsa_batch *b, const int32_t *labels, float *ret_loss) {
        struct distill_ctx *x = userdata;
        struct dsa_distill_losses l;
        int r = dsa_distiller_batch(x->d, b, labels, &l);
        if (r >= 0)
                *ret_loss = l.total;
        return r;
}

/* --loss response,feature,relation -> weights (each named loss gets weight 1, others 0). */
static int parse_losses(const char *s, struct dsa_distill_opts *o) {
        o->w_soft = o->w_feature = o->w_relation = 0.0f;
        while (*s) {
                size_t n = strcspn(s, ",");
                if (n == 8 && !strncmp(s, "response", n))
                        o->w_soft = 1.0f;
                else if (n == 7 && !strncmp(s, "feature", n))
                        o->w_feature = 1.0f;
                else if (n == 8 && !strncmp(s, "relation", n))
                        o->w_relation = 1.0f;
                else
                        return -EINVAL;
                s += n + (s[n] == ',');
        }
        return 0;
}

int verb_distill(int argc, char **argv) {
        static const struct option options[] = {
                { "teacher", required_argument, NULL, OPT_TEACHER },
                { "model", required_argument, NULL, 'm' },
                { "student-config", required_argument, NULL, OPT_STUDENT_CONFIG },
                { "student", required_argument, NULL, OPT_STUDENT },
                { "loss", required_argument, NULL, OPT_LOSS },
                { "temperature", required_argument, NULL, OPT_TEMP },
                { "w-soft", required_argument, NULL, OPT_W_SOFT },
                { "w-hard", required_argument, NULL, OPT_W_HARD },
                { "w-feature", required_argument, NULL, OPT_W_FEATURE },
                { "w-relation", required_argument, NULL, OPT_W_RELATION },
                { "fresh", no_argument, NULL, OPT_FRESH },
                COMMON_OPTIONS,
                {},
        };
        _cleanup_(dsa_model_freep) struct dsa_model *tm = NULL;
        _cleanup_(dsa_model_freep) struct dsa_model *sm = NULL;
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *teacher = NULL;
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *student = NULL;
        _cleanup_(dsa_distiller_freep) struct dsa_distiller *d = NULL;
        struct run run = { .verb = "distill", .epochs = 3, .warmup = 0.05 };
        struct dsa_distill_opts dopt;
        _cleanup_(dsa_train_set_freep) struct dsa_train_set *s = NULL;
        const char *teacher_path = NULL, *spec = NULL, *student_path = NULL;
        bool fresh = false;
        float w_soft = -1, w_hard = -1, w_feature = -1, w_relation = -1;
        int c, r;

        dsa_train_opts_default(&run.o);
        run.o.lr = 3e-4f;
        dsa_distill_opts_default(&dopt);
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":m:o:h", options, NULL)) >= 0) {
                switch (c) {
                case OPT_TEACHER:
                case 'm':
                        teacher_path = optarg;
                        continue;
                case OPT_STUDENT_CONFIG:
                        spec = optarg;
                        continue;
                case OPT_STUDENT:
                        student_path = optarg;
                        continue;
                case OPT_LOSS:
                        if (parse_losses(optarg, &dopt) < 0)
                                return usage(&run, "--loss takes response, feature, relation or a comma list");
                        continue;
                case OPT_TEMP:
                        if (!parse_float(optarg, 0.01, 100, &dopt.temperature))
                                return usage(&run, "--temperature takes a number in [0.01, 100]");
                        continue;
                case OPT_W_SOFT:
                case OPT_W_HARD:
                case OPT_W_FEATURE:
                case OPT_W_RELATION: {
                        float *w = c == OPT_W_SOFT ? &w_soft : c == OPT_W_HARD ? &w_hard : c == OPT_W_FEATURE ? &w_feature : &w_relation;
                        if (!parse_float(optarg, 0, 1000, w))
                                return usage(&run, "a loss weight takes a number in [0, 1000]");
                        continue;
                }
                case OPT_FRESH:
                        fresh = true;
                        continue;
                default:
                        break;
                }
                if ((r = other_option(&run, c, optarg)) >= 0)
                        return r;
        }
        if (!teacher_path)
                return usage(&run, "--teacher MODEL is required");
        if (!spec == !student_path)
                return usage(&run, "one of --student-config SPEC or --student MODEL is required");
        if (fresh && student_path)
                return usage(&run, "--fresh starts a --student-config student, not a --student one");
        if ((r = check_common(&run, argc)) != 0)
                return r;
        /* Explicit weights override --loss's ones (and turn a loss on). */
        if (w_soft >= 0)
                dopt.w_soft = w_soft;
        if (w_hard >= 0)
                dopt.w_hard = w_hard;
        if (w_feature >= 0)
                dopt.w_feature = w_feature;
        if (w_relation >= 0)
                dopt.w_relation = w_relation;
        if (cli_open_model(teacher_path, &tm) < 0)
                return 1;
        if ((r = prepare(&run, tm, &s)) < 0)
                return 1;
        struct dsa_train_opts to = run.o;
        to.qat = false;
        dsa_error_clear();
        if ((r = dsa_trainer_new(tm, &to, &teacher)) < 0)
                goto fail;
        if (student_path) {
                if (cli_open_model(student_path, &sm) < 0)
                        return 1;
                r = dsa_trainer_new(sm, &run.o, &student);
        } else {
                struct dsa_bert_config scfg;
                if ((r = dsa_student_config_parse(spec, dsa_model_bert_config(tm), &scfg)) < 0)
                        goto fail;
                /* Importances from the first 32 batches of the training set, in file order. */
                const size_t n = dsa_train_set_size(s), nb = MIN((n + run.batch - 1) / run.batch, (size_t) 32);
                struct dsa_train_batch bbs[32] = { 0 };
                struct dsa_batch bs[32];
                const int32_t *labels[32];
                for (size_t k = 0; r >= 0 && k < nb; k++) {
                        r = dsa_train_set_slice(s, k * run.batch, MIN(run.batch, n - k * run.batch), &bbs[k]);
                        bs[k] = bbs[k].b;
                        labels[k] = bbs[k].labels;
                }
                if (r >= 0)
                        r = dsa_distill_student_new(teacher, &scfg, &run.o, bs, labels, nb, !fresh, &student);
                for (size_t k = 0; k < nb; k++)
                        dsa_train_batch_clear(&bbs[k]);
        }
        if (r < 0 || (r = dsa_distiller_new(teacher, student, &dopt, &d)) < 0 ||
            (run.resume && (r = dsa_trainer_load_checkpoint(student, run.resume)) < 0))
                goto fail;
        if (!run.json) {
                const struct dsa_bert_config *sc = dsa_trainer_config(student);
                fprintf(stderr,
                        "distill: %zu examples, %llu steps of %lu, student layers=%u hidden=%u heads=%u ffn=%u, "
                        "losses:%s%s%s%s\n",
                        dsa_train_set_size(s), (unsigned long long) run.o.total_steps, run.batch, sc->n_layer, sc->n_embd, sc->n_head, sc->n_ff,
                        dopt.w_soft > 0 ? " response" : "", dopt.w_hard > 0 ? " labels" : "",
                        dopt.w_feature > 0 ? " feature" : "", dopt.w_relation > 0 ? " relation" : "");
        }
        struct distill_ctx x = { d };
        double t0 = now_sec(), eps;
        r = loop(&run, student, s, distill_batch, &x, &eps);
        if (r < 0)
                return 1;
        return finish(&run, student, tm, run.qat ? "qat" : "distill", now_sec() - t0, eps) < 0 ? 1 : 0;
fail:
        cli_error(r, "distill");
        return 1;
}
