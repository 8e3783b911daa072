/* dsactl show: what a model file is (shape per layer, weight formats, memory, what optimize did
 * and what eval and bench measured, all from its dsa.variant.* keys) and, beside it, every
 * variant of the same model in the same folder with accuracy kept, latency and memory. Variants
 * are read from their GGUF headers only (a mapping, no weights are loaded). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/gguf.h"
#include "engine/json-util.h"
#include "engine/model.h"
#include "engine/variant.h"
#include "util.h"
#include "verbs.h"

static void show_usage(FILE *f) {
        fputs("Usage: dsactl show -m MODEL [--json]\n"
              "Describes MODEL (a GGUF file or Hugging Face folder) and lists the variants of the\n"
              "same model in its folder: method, accuracy kept, latency, memory.\n",
              f);
}

/* A GGUF string key as a malloc'd string, or NULL. */
static char *gguf_string(const struct dsa_gguf *g, const char *key) {
        const char *s;
        size_t n;

        if (dsa_gguf_get_str(g, key, &s, &n) < 0 || n > 4096)
                return NULL;
        return strndup(s, n);
}

struct row {
        char *file, *source, *method, *task, *acc, *ms, *weights;
        long long bytes;
};

static void row_clear(struct row *r) {
        free(r->file);
        free(r->source);
        free(r->method);
        free(r->task);
        free(r->acc);
        free(r->ms);
        free(r->weights);
}

/* The first recorded eval.<task>.accuracy and bench.*.ms keys of g. */
static void row_measures(const struct dsa_gguf *g, struct row *r) {
        for (size_t i = 0; i < dsa_gguf_n_kv(g); i++) {
                const char *k = dsa_gguf_kv_name(g, i);
                const char *p = "dsa.variant.eval.";
                size_t n = strlen(k);
                if (!r->acc && !strncmp(k, p, strlen(p)) && n > strlen(p) + 9 && !strcmp(k + n - 9, ".accuracy")) {
                        r->acc = gguf_string(g, k);
                        r->task = strndup(k + strlen(p), n - strlen(p) - 9);
                }
                if (!r->ms && !strncmp(k, "dsa.variant.bench.", 18) && n > 3 && !strcmp(k + n - 3, ".ms"))
                        r->ms = gguf_string(g, k);
        }
}

static int read_row(const char *dir, const char *name, struct row *r) {
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = NULL;
        _cleanup_free_ char *path = NULL;
        struct stat st;

        if (asprintf(&path, "%s/%s", dir, name) < 0)
                return -ENOMEM;
        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || dsa_gguf_open(path, &g) < 0)
                return -EBADMSG;
        *r = (struct row) { .file = strdup(name), .bytes = (long long) st.st_size };
        r->source = gguf_string(g, "dsa.source");
        r->method = gguf_string(g, "dsa.variant.method");
        r->weights = gguf_string(g, "dsa.variant.weight_bytes");
        row_measures(g, r);
        return 0;
}

static int cmp_row(const void *a, const void *b) {
        return strcmp(((const struct row *) a)->file, ((const struct row *) b)->file);
}

int verb_show(int argc, char **argv) {
        static const struct option opts[] = {
                { "model", required_argument, NULL, 'm' },
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        const char *model = NULL;
        bool json = false;
        int c;

        while ((c = getopt_long(argc, argv, "m:h", opts, NULL)) >= 0)
                switch (c) {
                case 'm':
                        model = optarg;
                        break;
                case 'j':
                        json = true;
                        break;
                case 'h':
                        show_usage(stdout);
                        return 0;
                default:
                        show_usage(stderr);
                        return 2;
                }
        if (!model || optind < argc) {
                fprintf(stderr, "dsactl show: -m MODEL is required and takes no other arguments\n");
                return 2;
        }
        if (cli_open_model(model, &m) < 0)
                return 1;

        const struct dsa_bert_config *cfg = dsa_model_bert_config(m);
        const struct dsa_llama_config *lc = dsa_model_llama_config(m);
        const uint32_t n_layer = cfg ? cfg->n_layer : lc->n_layer;
        const char *src = dsa_model_source(m);
        _cleanup_(json_object_putp) struct json_object *j = json_object_new_object();
        struct json_object *layers = json_object_new_array(), *facts = json_object_new_object();
        char line[256];

        if (!json) {
                printf("model      %s\n", model);
                printf("source     %s\n", src ? src : "");
                if (cfg)
                        printf("shape      bert: %u layers, hidden %u, %u heads, ffn %u, vocab %u, %u labels\n",
                               cfg->n_layer, cfg->n_embd, cfg->n_head, cfg->n_ff, cfg->n_vocab, cfg->n_labels);
                else
                        printf("shape      llama: %u layers, hidden %u, %u heads (%u key/value) of %u, ffn %u, vocab "
                               "%u, context %u\n", lc->n_layer, lc->n_embd, lc->n_head, lc->n_head_kv, lc->head_dim,
                               lc->n_ff, lc->n_vocab, lc->n_ctx);
                printf("weights    %.2f MB resident\n", (double) dsa_model_weight_bytes(m) / 1e6);
        }
        for (size_t l = 0; l < n_layer; l++) {
                dsa_model_describe_layer(m, l, line, sizeof(line));
                if (json)
                        json_object_array_add(layers, json_object_new_string(line));
                else
                        printf("  %s\n", line);
        }
        if (!json && dsa_model_n_info(m) > 0)
                printf("recorded\n");
        for (size_t i = 0; i < dsa_model_n_info(m); i++) {
                const char *k, *v;
                dsa_model_info_at(m, i, &k, &v);
                if (json)
                        json_object_object_add(facts, k, json_object_new_string(v));
                else
                        printf("  %s = %s\n", k, v);
        }

        /* The variants beside it: every GGUF in its folder with the same dsa.source. */
        _cleanup_free_ char *dir = NULL;
        struct stat st;
        struct json_object *vars = json_object_new_array();
        if (stat(model, &st) == 0 && S_ISREG(st.st_mode)) {
                const char *slash = strrchr(model, '/');
                dir = slash ? strndup(model, (size_t) (slash - model)) : strdup(".");
        }
        DIR *d = dir ? opendir(dir) : NULL;
        struct row *rows = NULL;
        size_t n = 0;
        struct dirent *e;
        while (d && (e = readdir(d))) {
                size_t len = strlen(e->d_name);
                struct row r;
                if (len < 6 || strcmp(e->d_name + len - 5, ".gguf") || read_row(dir, e->d_name, &r) < 0)
                        continue;
                if (!r.source || !src || strcmp(r.source, src)) {
                        row_clear(&r);
                        continue;
                }
                struct row *nr = realloc(rows, (n + 1) * sizeof(*rows));
                if (!nr) {
                        row_clear(&r);
                        break;
                }
                rows = nr;
                rows[n++] = r;
        }
        if (d)
                closedir(d);
        if (n > 0)
                qsort(rows, n, sizeof(*rows), cmp_row);

        /* Accuracy kept is against the family's full-precision model: no method recorded (an
         * import) or an fp32 variant, with a measured accuracy on the same task. */
        double ref = 0;
        const char *ref_task = NULL;
        for (size_t i = 0; i < n; i++)
                if ((!rows[i].method || !strcmp(rows[i].method, "f32")) && rows[i].acc) {
                        ref = strtod(rows[i].acc, NULL);
                        ref_task = rows[i].task;
                        break;
                }
        if (!json && n > 0)
                printf("\nvariants of %s in %s/\n%-44s %-40s %-9s %-7s %-10s %-9s %s\n", src, dir, "file", "method",
                       "accuracy", "kept", "latency", "weights", "file");
        for (size_t i = 0; i < n; i++) {
                const struct row *r = &rows[i];
                double acc = r->acc ? strtod(r->acc, NULL) : 0;
                bool kept = r->acc && ref > 0 && r->task && ref_task && !strcmp(r->task, ref_task);
                if (json) {
                        struct json_object *v = json_object_new_object();
                        json_object_object_add(v, "file", json_object_new_string(r->file));
                        json_object_object_add(v, "method", json_object_new_string(r->method ? r->method : "original"));
                        if (r->acc) {
                                json_object_object_add(v, "task", json_object_new_string(r->task));
                                json_object_object_add(v, "accuracy", cli_json_float(acc));
                        }
                        if (kept)
                                json_object_object_add(v, "accuracy_kept", cli_json_float(acc / ref));
                        if (r->ms)
                                json_object_object_add(v, "latency_ms", cli_json_float(strtod(r->ms, NULL)));
                        if (r->weights)
                                json_object_object_add(v, "weight_bytes", json_object_new_int64(strtoll(r->weights, NULL, 10)));
                        json_object_object_add(v, "file_bytes", json_object_new_int64(r->bytes));
                        json_object_array_add(vars, v);
                        continue;
                }
                char a[32] = "-", k[32] = "-", l[32] = "-", w[32] = "-";
                if (r->acc)
                        snprintf(a, sizeof(a), "%.4f", acc);
                if (kept)
                        snprintf(k, sizeof(k), "%.1f%%", 100 * acc / ref);
                if (r->ms)
                        snprintf(l, sizeof(l), "%.2f ms", strtod(r->ms, NULL));
                if (r->weights)
                        snprintf(w, sizeof(w), "%.1f MB", strtod(r->weights, NULL) / 1e6);
                printf("%-44s %-40s %-9s %-7s %-10s %-9s %.1f MB\n", r->file, r->method ? r->method : "(original)", a, k,
                       l, w, (double) r->bytes / 1e6);
        }
        for (size_t i = 0; i < n; i++)
                row_clear(&rows[i]);
        free(rows);

        if (json) {
                json_object_object_add(j, "model", json_object_new_string(model));
                json_object_object_add(j, "source", json_object_new_string(src ? src : ""));
                json_object_object_add(j, "weight_bytes", json_object_new_int64((int64_t) dsa_model_weight_bytes(m)));
                json_object_object_add(j, "layers", layers);
                json_object_object_add(j, "recorded", facts);
                json_object_object_add(j, "variants", vars);
                puts(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
        } else {
                json_object_put(layers);
                json_object_put(facts);
                json_object_put(vars);
        }
        return 0;
}
