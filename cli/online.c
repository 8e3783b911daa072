/* See online.h. Errors print one line: what failed, a short reason, and dsad's own message in
 * parentheses when it gave one ("dsactl: sst2: no such model (No model 'sst2' in the store)"). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dsa/dsa.h"
#include "online.h"
#include "print.h"
#include "util.h"
#include "verbs.h"

/* One slot, the largest dsad allows: requests are synchronous, one at a time. */
#define SESSION_SLOT_SIZE (16u << 20)

const char *cli_bus;

bool cli_model_is_local(const char *model) {
        struct stat st;
        size_t n = strlen(model);

        return strchr(model, '/') || (n >= 5 && strcmp(model + n - 5, ".gguf") == 0) || stat(model, &st) == 0;
}

static const char *reason_of(int r) {
        switch (r) {
        case -ENOENT:
                return "no such model";
        case -ECONNREFUSED:
                return "dsad is not running";
        case -ECONNRESET:
                return "dsad went away";
        case -ENOTCONN:
                return "lost the bus connection";
        case -EBADMSG:
                return "not a model dsad can run";
        case -EALREADY:
                return "not loaded";
        case -EACCES:
                return "permission denied";
        case -EBUSY:
                return "dsad is busy, try again later";
        case -ENOBUFS:
                return "the response does not fit dsad's largest slot";
        case -E2BIG:
                return "the input does not fit dsad's largest slot";
        case -EPROTO:
                return "dsad broke the ring protocol";
        case -EOPNOTSUPP:
                return "the model cannot do this";
        default:
                return strerror(-r);
        }
}

int cli_online_error(struct dsa_client *c, int r, const char *what) {
        const char *msg = c ? dsa_client_error_message(c) : NULL;

        if (msg && *msg)
                fprintf(stderr, "dsactl: %s: %s (%s)\n", what, reason_of(r), msg);
        else
                fprintf(stderr, "dsactl: %s: %s\n", what, reason_of(r));
        return 1;
}

int cli_online_connect(struct dsa_client **ret) {
        const char *env = getenv("DSA_BUS_ADDRESS");
        const char *bus = cli_bus ? cli_bus : env && *env ? env : "system";
        int r = dsa_client_new(cli_bus, ret);

        if (r < 0) {
                fprintf(stderr, "dsactl: bus %s: %s\n", bus, strerror(-r));
                return r;
        }
        return 0;
}

/* ---- classify, embed, tokenize */

struct online {
        const struct cli_online_opts *o;
        struct dsa_client *c;
        struct dsa_session *s;
        const char *const *labels;
        size_t n_labels;
        enum dsa_pool pool;
};

/* One request for texts[0..n); on -E2BIG or -ENOBUFS the texts go in two halves. */
static int run_texts(struct online *x, char **texts, size_t n) {
        const struct cli_online_opts *o = x->o;
        const char *const *t = (const char *const *) texts;
        int r;

        if (!strcmp(o->verb, "classify")) {
                struct dsa_classify_result *res = NULL;
                r = dsa_classify(x->s, t, n, &res);
                if (r >= 0) {
                        for (size_t i = 0; i < n; i++)
                                cli_print_classify(texts[i], res[i].logits, res[i].n_labels,
                                                   x->n_labels == res[i].n_labels ? x->labels : NULL,
                                                   res[i].variant, o->json);
                        dsa_classify_result_free(res);
                }
        } else if (!strcmp(o->verb, "tokenize")) {
                struct dsa_tokens *res = NULL;
                r = dsa_tokenize(x->s, t, n, o->no_special ? DSA_TOKENIZE_NO_SPECIAL : 0, &res);
                if (r >= 0) {
                        for (size_t i = 0; i < n; i++)
                                cli_print_tokens(texts[i], res[i].ids, (const char *const *) res[i].tokens,
                                                 res[i].n_ids, o->json);
                        dsa_tokens_free(res);
                }
        } else if (!strcmp(o->pool, "none")) {
                /* One text per request, as in-process runs one forward per text. */
                r = 0;
                for (size_t i = 0; r >= 0 && i < n; i++) {
                        struct dsa_token_embeddings *res = NULL;
                        r = dsa_embed_tokens(x->s, t + i, 1, &res);
                        if (r >= 0) {
                                cli_print_hidden(texts[i], res[0].hidden, res[0].n_tokens, res[0].dim, o->json);
                                dsa_token_embeddings_free(res);
                        }
                }
                return r;
        } else {
                float *emb = NULL;
                size_t dim = 0;
                r = dsa_embed(x->s, t, n, x->pool, &emb, &dim);
                if (r >= 0) {
                        for (size_t i = 0; i < n; i++)
                                cli_print_embedding(texts[i], emb + i * dim, dim, o->json);
                        free(emb);
                }
        }
        if ((r == -E2BIG || r == -ENOBUFS) && n > 1) {
                r = run_texts(x, texts, n / 2);
                if (r >= 0)
                        r = run_texts(x, texts + n / 2, n - n / 2);
        }
        return r;
}

int cli_online_infer(const struct cli_online_opts *opts, int argc, char **argv) {
        struct cli_online_opts oo = *opts;
        const struct cli_online_opts *o = &oo;
        struct online x = { .o = o, .pool = DSA_POOL_MEAN }; /* in-process's default too */
        struct cli_input in;
        int r, ret = 1;

        if (!oo.pool)
                oo.pool = "mean";
        else if (!strcmp(oo.pool, "cls"))
                x.pool = DSA_POOL_CLS;
        else if (!strcmp(oo.pool, "pooler"))
                x.pool = DSA_POOL_POOLER;
        if (cli_online_connect(&x.c) < 0)
                return 1;
        r = dsa_session_open(x.c, o->model, 1, SESSION_SLOT_SIZE, &x.s);
        if (r < 0) {
                cli_online_error(x.c, r, o->model);
                goto out;
        }
        (void) dsa_session_set_timeout(x.s, 0); /* dsad's death still ends every wait */
        if (o->min_accuracy > 0 || o->max_latency_ms > 0 || o->priority) {
                struct dsa_hints h = {
                        .min_accuracy = o->min_accuracy,
                        .max_latency_ms = (uint32_t) o->max_latency_ms,
                        .priority = !o->priority || !strcmp(o->priority, "normal") ? DSA_PRIORITY_NORMAL
                                    : !strcmp(o->priority, "high")                  ? DSA_PRIORITY_HIGH
                                                                                     : DSA_PRIORITY_LOW,
                };
                r = dsa_session_set_hints(x.s, &h);
                if (r < 0) {
                        cli_online_error(x.c, r, "hints");
                        goto out;
                }
        }
        r = dsa_session_get_labels(x.s, &x.labels);
        x.n_labels = r > 0 ? (size_t) r : 0;

        cli_input_init(&in, argc, argv);
        for (;;) {
                char **texts = NULL;
                int n = cli_input_next(&in, CLI_CHUNK, &texts);
                if (n < 0) {
                        fprintf(stderr, "dsactl: reading input: %s\n", strerror(-n));
                        goto out;
                }
                if (n == 0)
                        break;
                r = run_texts(&x, texts, (size_t) n);
                cli_texts_free(texts, (size_t) n);
                if (r < 0) {
                        if (r == -EOPNOTSUPP && !strcmp(o->verb, "classify"))
                                fprintf(stderr, "dsactl: %s: model has no classification head\n", o->model);
                        else
                                cli_online_error(x.c, r, o->model);
                        goto out;
                }
                fflush(stdout);
        }
        ret = 0;
out:
        dsa_session_free(x.s);
        dsa_client_free(x.c);
        return ret;
}

/* ---- list, ps, status, load, unload */

enum {
        ARG_JSON = 0x100,
        ARG_BUS,
};

/* Options of the control verbs; returns optind, -1 after --help, -2 on usage errors. */
static int parse_control(int argc, char **argv, bool *json) {
        static const struct option options[] = {
                { "json", no_argument, NULL, ARG_JSON },
                { "bus", required_argument, NULL, ARG_BUS },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        const char *verb = argv[0];
        int c;

        opterr = 0; /* our own one-line message instead */
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case ARG_JSON:
                        if (!json)
                                return cli_usage(argv[0], "--json is not an option of this verb"), -2;
                        *json = true;
                        break;
                case ARG_BUS:
                        cli_bus = optarg;
                        break;
                case 'h':
                        dsactl_help(stdout);
                        return -1;
                default:
                        return cli_usage(verb, "unknown option or missing value"), -2;
                }
        return optind;
}

int cli_online_control_open(int argc, char **argv, const char *verb, bool *json, struct dsa_client **ret) {
        int idx = parse_control(argc, argv, json);

        if (idx < 0)
                return idx == -1 ? 0 : 2;
        if (idx != argc)
                return cli_usage(verb, "takes no arguments");
        if (cli_online_connect(ret) < 0)
                return 1;
        return -1;
}

int verb_list(int argc, char **argv) {
        struct dsa_client *c = NULL;
        struct dsa_model_info *m = NULL;
        bool json = false;
        size_t n = 0;
        int r;

        r = cli_online_control_open(argc, argv, "list", &json, &c);
        if (r >= 0)
                return r;
        r = dsa_client_list_models(c, &m, &n);
        if (r < 0) {
                cli_online_error(c, r, "list");
                dsa_client_free(c);
                return 1;
        }
        if (!json)
                printf("%-24s %-6s %-6s %6s %6s\n", "NAME", "LOADED", "ARCH", "HIDDEN", "LABELS");
        for (size_t i = 0; i < n; i++) {
                if (json) {
                        struct json_object *o = json_object_new_object();
                        json_object_object_add(o, "name", json_object_new_string(m[i].name));
                        json_object_object_add(o, "loaded", json_object_new_boolean(m[i].loaded));
                        json_object_object_add(o, "architecture", json_object_new_string(m[i].architecture));
                        json_object_object_add(o, "hidden_size", json_object_new_int64(m[i].hidden_size));
                        json_object_object_add(o, "labels", json_object_new_int64(m[i].n_labels));
                        cli_json_print(o);
                } else
                        printf("%-24s %-6s %-6s %6" PRIu32 " %6" PRIu32 "\n", m[i].name, m[i].loaded ? "yes" : "no",
                               m[i].architecture && *m[i].architecture ? m[i].architecture : "-", m[i].hidden_size,
                               m[i].n_labels);
        }
        dsa_model_info_free(m, n);
        dsa_client_free(c);
        return 0;
}

int verb_ps(int argc, char **argv) {
        struct dsa_client *c = NULL;
        struct dsa_session_info *s = NULL;
        bool json = false;
        size_t n = 0;
        int r;

        r = cli_online_control_open(argc, argv, "ps", &json, &c);
        if (r >= 0)
                return r;
        r = dsa_client_list_sessions(c, &s, &n);
        if (r < 0) {
                cli_online_error(c, r, "ps");
                dsa_client_free(c);
                return 1;
        }
        if (!json)
                printf("%-8s %-12s %8s %10s %10s %12s\n", "ID", "OWNER", "UID", "REQUESTS", "FAILURES", "SHM_BYTES");
        for (size_t i = 0; i < n; i++) {
                if (json) {
                        struct json_object *o = json_object_new_object();
                        json_object_object_add(o, "id", json_object_new_string(s[i].id));
                        json_object_object_add(o, "owner", json_object_new_string(s[i].owner));
                        json_object_object_add(o, "uid", json_object_new_int64(s[i].uid));
                        json_object_object_add(o, "requests", json_object_new_uint64(s[i].requests_completed));
                        json_object_object_add(o, "failures", json_object_new_uint64(s[i].requests_failed));
                        json_object_object_add(o, "shm_bytes", json_object_new_uint64(s[i].shm_bytes));
                        cli_json_print(o);
                } else
                        printf("%-8s %-12s %8" PRIu32 " %10" PRIu64 " %10" PRIu64 " %12" PRIu64 "\n", s[i].id,
                               s[i].owner, s[i].uid, s[i].requests_completed, s[i].requests_failed, s[i].shm_bytes);
        }
        dsa_session_info_free(s, n);
        dsa_client_free(c);
        return 0;
}

int verb_status(int argc, char **argv) {
        struct dsa_client *c = NULL;
        struct dsa_status *st = NULL;
        bool json = false;
        int r, ret;

        r = cli_online_control_open(argc, argv, "status", &json, &c);
        if (r >= 0)
                return r;
        r = dsa_client_status(c, &st);
        if (r < 0) {
                cli_online_error(c, r, "status");
                dsa_client_free(c);
                return 1;
        }
        if (json) {
                struct json_object *o = json_object_new_object();
                json_object_object_add(o, "version", json_object_new_string(st->version ? st->version : ""));
                json_object_object_add(o, "models", json_object_new_int64(st->models));
                json_object_object_add(o, "loaded_models", json_object_new_int64(st->loaded_models));
                json_object_object_add(o, "sessions", json_object_new_int64(st->sessions));
                json_object_object_add(o, "queue_depth", json_object_new_int64(st->queue_depth));
                json_object_object_add(o, "workers", json_object_new_int64(st->workers));
                json_object_object_add(o, "requests_completed", json_object_new_uint64(st->requests_completed));
                json_object_object_add(o, "requests_failed", json_object_new_uint64(st->requests_failed));
                json_object_object_add(o, "uptime_seconds", json_object_new_uint64(st->uptime_seconds));
                ret = cli_policy_status(c, o);
                if (ret == 0)
                        cli_json_print(o);
                else
                        json_object_put(o);
        } else {
                printf("Version: %s\n"
                       "Models: %" PRIu32 " (%" PRIu32 " loaded)\n"
                       "Sessions: %" PRIu32 "\n"
                       "Queue depth: %" PRIu32 "\n"
                       "Workers: %" PRIu32 "\n"
                       "Requests: %" PRIu64 " completed, %" PRIu64 " failed\n"
                       "Uptime: %" PRIu64 " s\n",
                       st->version ? st->version : "?", st->models, st->loaded_models, st->sessions,
                       st->queue_depth, st->workers, st->requests_completed, st->requests_failed,
                       st->uptime_seconds);
                ret = cli_policy_status(c, NULL);
        }
        dsa_status_free(st);
        dsa_client_free(c);
        return ret;
}

static int load_unload(int argc, char **argv, bool load) {
        struct dsa_client *c = NULL;
        int idx, r;

        idx = parse_control(argc, argv, NULL);
        if (idx < 0)
                return idx == -1 ? 0 : 2;
        if (argc - idx != 1)
                return cli_usage(argv[0], "takes exactly one model NAME");
        if (cli_online_connect(&c) < 0)
                return 1;
        r = load ? dsa_client_load_model(c, argv[idx]) : dsa_client_unload_model(c, argv[idx]);
        if (r < 0)
                cli_online_error(c, r, argv[idx]);
        dsa_client_free(c);
        return r < 0 ? 1 : 0;
}

int verb_load(int argc, char **argv) {
        return load_unload(argc, argv, true);
}

int verb_unload(int argc, char **argv) {
        return load_unload(argc, argv, false);
}
