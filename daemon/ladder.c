/* A model's variant ladder (policy.h): NAME.gguf and every NAME@VARIANT.gguf of the store,
 * opened together when the model loads. Each rung's accuracy is the eval accuracy dsactl eval
 * --record wrote into it, for the first task the base recorded; accuracy kept is that over the
 * base's. Rungs are sorted most accurate first (unknown ones last) and probed once so the policy
 * starts from latencies measured on this machine. */
#define _GNU_SOURCE /* asprintf */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "basic/parse-util.h"
#include "basic/time-util.h"
#include "daemon.h"
#include "engine/model.h"
#include "engine/variant.h"
#include "policy.h"

#define MAX_RUNGS 16u

/* Probes: engine calls of about these many tokens in all, as batches of 16-token texts (one
 * shorter text below 16), the shape of what dsad batches from short requests. */
static const unsigned probe_tokens[] = { 8, 32, 128, 512 };
#define PROBE_TEXT_TOKENS 16u

/* ---- helpers */

static void rung_clear(struct dsad_rung *r) {
        dsa_model_free(r->engine);
        free(r->name);
        free(r->path);
        *r = (struct dsad_rung){ 0 };
}

/* The first task the base recorded an accuracy for ("sst2" from "eval.sst2.accuracy"). */
static void pick_task(const struct dsa_model *base, char *task, size_t size) {
        task[0] = 0;
        for (size_t i = 0; i < dsa_model_n_info(base); i++) {
                const char *k, *v;
                size_t n;
                if (dsa_model_info_at(base, i, &k, &v) < 0 || strncmp(k, "eval.", 5) != 0)
                        continue;
                n = strlen(k);
                if (n > 5 + 9 && strcmp(k + n - 9, ".accuracy") == 0 && n - 5 - 9 < size) {
                        memcpy(task, k + 5, n - 5 - 9);
                        task[n - 5 - 9] = 0;
                        return;
                }
        }
}

static double recorded_accuracy(const struct dsa_model *m, const char *task) {
        char key[64];
        const char *v;
        double a;

        if (!task[0])
                return NAN;
        snprintf(key, sizeof(key), "eval.%s.accuracy", task);
        v = dsa_model_info(m, key);
        return v && dsa_parse_double(v, 0, 1, &a) >= 0 && a > 0 ? a : NAN;
}

/* A variant runs requests of its base only when it answers in the same terms. */
static bool compatible(const struct dsa_model *base, const struct dsa_model *v, char *why, size_t size) {
        const struct dsa_bert_config *a = dsa_model_bert_config(base), *b = dsa_model_bert_config(v);

        if (dsa_model_arch(base) != dsa_model_arch(v)) {
                snprintf(why, size, "architecture differs from the base");
                return false;
        }
        if (!a || !b)
                return true;
        if (a->n_labels != b->n_labels) {
                snprintf(why, size, "%u labels, the base has %u", b->n_labels, a->n_labels);
                return false;
        }
        for (uint32_t i = 0; i < a->n_labels; i++)
                if (strcmp(dsa_model_label(base, i), dsa_model_label(v, i)) != 0) {
                        snprintf(why, size, "label %u is '%s', the base's is '%s'", i, dsa_model_label(v, i),
                                 dsa_model_label(base, i));
                        return false;
                }
        return true;
}

static int rung_open(const char *path, const char *name, unsigned threads, struct dsad_rung *ret) {
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        struct stat st;
        int r;

        dsa_error_clear();
        r = dsa_model_open(path, &m);
        if (r < 0)
                return r;
        r = dsa_model_set_threads(m, threads);
        if (r < 0)
                return r;
        *ret = (struct dsad_rung){
                .name = strdup(name),
                .path = strdup(path),
                .accuracy = NAN,
                .kept = NAN,
                .weight_bytes = dsa_model_weight_bytes(m),
                .file_bytes = stat(path, &st) == 0 ? (uint64_t) st.st_size : 0,
                .threads = (unsigned) r,
        };
        if (!ret->name || !ret->path) {
                rung_clear(ret);
                return -ENOMEM;
        }
        ret->engine = TAKE_PTR(m);
        return 0;
}

/* One engine call of about tokens tokens in all, timed; < 0 when the model cannot run texts. */
static double probe(const struct dsa_model *m, unsigned tokens) {
        const struct dsa_bert_config *c = dsa_model_bert_config(m);
        unsigned per = MIN(tokens, PROBE_TEXT_TOKENS), n = MAX(1u, tokens / per), words = per > 2 ? per - 2 : 1;
        _cleanup_free_ const char **texts = NULL;
        _cleanup_free_ char *text = NULL;
        _cleanup_free_ float *out = NULL;
        uint64_t t0;
        int r;

        if (!c)
                return -1;
        text = malloc((size_t) words * 4 + 1);
        texts = calloc(n, sizeof(*texts));
        out = malloc(sizeof(float) * n * MAX(c->n_labels, c->n_embd));
        if (!text || !texts || !out)
                return -1;
        for (unsigned i = 0; i < words; i++)
                memcpy(text + 4 * i, "the ", 4);
        text[words * 4 - 1] = 0;
        for (unsigned i = 0; i < n; i++)
                texts[i] = text;
        t0 = now_usec();
        if (c->n_labels > 0)
                r = dsa_model_classify_texts(m, texts, NULL, n, out);
        else
                r = dsa_model_embed_texts(m, texts, n, dsa_model_default_pool(m), out);
        return r < 0 ? -1 : (double) (now_usec() - t0) / 1000.0;
}

static int cmp_rung(const void *a, const void *b) {
        const struct dsad_rung *x = a, *y = b;
        bool kx = !isnan(x->kept), ky = !isnan(y->kept);

        if (kx != ky)
                return kx ? -1 : 1;
        if (kx && x->kept != y->kept)
                return x->kept > y->kept ? -1 : 1;
        /* Equal accuracy: the cheaper one is never worse. Base before variants otherwise. */
        if (x->weight_bytes != y->weight_bytes)
                return x->weight_bytes > y->weight_bytes ? -1 : 1;
        return strcmp(x->name, y->name);
}

/* ---- API */

int dsad_ladder_open(const char *store, const char *name, unsigned threads, struct dsad_ladder **ret) {
        _cleanup_free_ char *base_path = NULL;
        struct dsad_ladder *l;
        DIR *dir;
        struct dirent *de;
        size_t nlen = strlen(name);
        int r;

        if (asprintf(&base_path, "%s/%s.gguf", store, name) < 0)
                return -ENOMEM;
        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        pthread_mutex_init(&l->lock, NULL);
        l->power_scale = 1;
        l->rungs = calloc(MAX_RUNGS, sizeof(*l->rungs));
        if (!l->rungs) {
                dsad_ladder_free(l);
                return -ENOMEM;
        }
        r = rung_open(base_path, "base", threads, &l->rungs[0]);
        if (r < 0) {
                dsad_ladder_free(l);
                return r;
        }
        l->n = 1;

        dir = opendir(store);
        while (dir && (de = readdir(dir))) {
                const char *f = de->d_name, *v = f + nlen + 1;
                size_t len = strlen(f), vlen;
                _cleanup_free_ char *path = NULL, *vname = NULL;
                char why[160];

                if (len <= nlen + 6 || strncmp(f, name, nlen) != 0 || f[nlen] != '@' ||
                    strcmp(f + len - 5, ".gguf") != 0)
                        continue;
                vlen = len - nlen - 1 - 5;
                vname = strndup(v, vlen);
                if (!vname) {
                        r = -ENOMEM;
                        break;
                }
                /* Variant names follow model names' rules, shorter, and "base" is the base's. */
                if (vlen > DSAD_VARIANT_NAME_MAX || !dsad_model_name_valid(vname) || strcmp(vname, "base") == 0) {
                        dsad_log(LOG_WARNING, "Variant file %s/%s: bad variant name, ignoring.", store, f);
                        continue;
                }
                if (l->n == MAX_RUNGS) {
                        dsad_log(LOG_WARNING, "Model %s: more than %u variants, ignoring %s.", name, MAX_RUNGS, f);
                        continue;
                }
                if (asprintf(&path, "%s/%s", store, f) < 0) {
                        r = -ENOMEM;
                        break;
                }
                r = rung_open(path, vname, threads, &l->rungs[l->n]);
                if (r < 0) {
                        dsad_log(LOG_WARNING, "Variant %s of %s does not load: %s, ignoring.", vname, name,
                                 dsa_error_message(r));
                        r = 0;
                        continue;
                }
                if (!compatible(l->rungs[0].engine, l->rungs[l->n].engine, why, sizeof(why))) {
                        dsad_log(LOG_WARNING, "Variant %s of %s: %s, ignoring.", vname, name, why);
                        rung_clear(&l->rungs[l->n]);
                        continue;
                }
                l->n++;
        }
        if (dir)
                closedir(dir);
        if (r < 0) {
                dsad_ladder_free(l);
                return r;
        }

        pick_task(l->rungs[0].engine, l->task, sizeof(l->task));
        double base_acc = recorded_accuracy(l->rungs[0].engine, l->task);
        for (size_t i = 0; i < l->n; i++) {
                struct dsad_rung *g = &l->rungs[i];
                g->accuracy = recorded_accuracy(g->engine, l->task);
                g->kept = i == 0 ? 1.0 : g->accuracy / base_acc; /* NAN when either is unknown */
                if (i > 0 && isnan(g->kept))
                        dsad_log(LOG_WARNING, "Variant %s of %s has no recorded %s accuracy the base also has "
                                 "(dsactl eval --record): it runs only when named.",
                                 g->name, name, l->task[0] ? l->task : "eval");
        }
        qsort(l->rungs, l->n, sizeof(*l->rungs), cmp_rung);
        for (size_t i = 0; i < l->n; i++)
                if (strcmp(l->rungs[i].name, "base") == 0)
                        l->base = i;
        l->level = l->floor = 0;

        /* Probes: one warm-up call, then one per bucket. */
        for (size_t i = 0; i < l->n; i++) {
                struct dsad_rung *g = &l->rungs[i];
                if (probe(g->engine, 8) < 0)
                        continue;
                for (size_t k = 0; k < ELEMENTSOF(probe_tokens); k++) {
                        double ms = probe(g->engine, probe_tokens[k]);
                        if (ms > 0)
                                dsad_policy_observe(l, i, 1, probe_tokens[k], ms);
                }
                g->served = 0;
        }
        if (l->n > 1) {
                char list[512] = "";
                size_t o = 0;
                for (size_t i = 0; i < l->n && o < sizeof(list); i++)
                        o += (size_t) snprintf(list + o, sizeof(list) - o, "%s%s (kept %.3f, %.1f ms at 32 tokens)",
                                               i ? ", " : "", l->rungs[i].name, l->rungs[i].kept,
                                               dsad_policy_service_ms(l, i, 32));
                dsad_log(LOG_INFO, "Model %s: %zu variants: %s.", name, l->n, list);
        }
        snprintf(l->reason, sizeof(l->reason), "loaded");
        *ret = l;
        return 0;
}

struct dsad_ladder *dsad_ladder_free(struct dsad_ladder *l) {
        if (!l)
                return NULL;
        for (size_t i = 0; l->rungs && i < l->n; i++)
                rung_clear(&l->rungs[i]);
        free(l->rungs);
        pthread_mutex_destroy(&l->lock);
        free(l);
        return NULL;
}

struct dsa_model *dsad_ladder_base(const struct dsad_ladder *l) {
        return l ? l->rungs[l->base].engine : NULL;
}
