/* The model store: every NAME.gguf in the store folder is a model called NAME. Loading maps it
 * once with dsa_model_open() and every session and request shares that handle through an
 * atomic reference count. The registry holds one reference to each model it knows; unloading
 * marks the model unloaded and drops that reference, so requests in flight finish on the old
 * handle and the last of them frees it, possibly on a worker. A model nobody but the registry
 * references for idle_unload_seconds is unloaded by a timer. */
#define _GNU_SOURCE /* asprintf */
#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "basic/error.h"
#include "basic/time-util.h"
#include "daemon.h"
#include "engine/gguf.h"

struct dsad_model {
        atomic_uint n_ref;
        atomic_bool loaded;
        atomic_uint_fast64_t idle_since_usec; /* when the count last fell to the registry's one */
        char *name, *path;
        struct dsad_ladder *ladder; /* set once on the loop thread before any reference leaves it */
        struct dsa_model *engine;   /* the ladder's base */
        struct dsad_model *next;  /* d->models */
        bool seen;                /* scan mark */

        /* Metadata of the file, for models not loaded: cached per (size, mtime). */
        bool meta_read;
        off_t meta_size;
        struct timespec meta_mtime;
        char *arch;
        uint32_t hidden_size, layers, n_labels;
        char **labels;
        uint64_t file_size;
};

struct dsad_registry {
        uv_timer_t idle_timer;
        unsigned interval_s;
};

/* ---- helpers */

static void strv_free(char **v, size_t n) {
        if (!v)
                return;
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

static void meta_clear(struct dsad_model *m) {
        strv_free(m->labels, m->n_labels);
        m->labels = NULL;
        free(m->arch);
        m->arch = NULL;
        m->hidden_size = m->layers = m->n_labels = 0;
        m->meta_read = false;
}

static struct dsad_model *model_free(struct dsad_model *m) {
        if (!m)
                return NULL;
        dsad_ladder_free(m->ladder);
        meta_clear(m);
        free(m->name);
        free(m->path);
        free(m);
        return NULL;
}

static char *store_path(const struct dsad *d, const char *name) {
        char *p;
        if (asprintf(&p, "%s/%s.gguf", d->config.store, name) < 0)
                return NULL;
        return p;
}

static struct dsad_model *model_new(struct dsad *d, const char *name) {
        struct dsad_model *m = calloc(1, sizeof(*m));

        if (!m)
                return NULL;
        atomic_init(&m->n_ref, 1); /* the registry's */
        atomic_init(&m->loaded, false);
        atomic_init(&m->idle_since_usec, now_usec());
        m->name = strdup(name);
        m->path = store_path(d, name);
        if (!m->name || !m->path)
                return model_free(m);
        return m;
}

static struct dsad_model *lookup(struct dsad *d, const char *name) {
        for (struct dsad_model *m = d->models; m; m = m->next)
                if (strcmp(m->name, name) == 0)
                        return m;
        return NULL;
}

static unsigned online_cores(void) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (unsigned) n : 1;
}

/* The engine's pool gives its threads to one forward at a time and runs the others on their
 * caller's thread alone, so with W workers the worst case is threads + W - 1 busy threads:
 * cores / W each keeps that within the machine. */
static unsigned model_threads(const struct dsad *d) {
        unsigned cores = online_cores();
        unsigned w = d->config.workers ? d->config.workers : cores;
        return MAX(1u, cores / w);
}

/* Reads architecture, sizes and labels from a GGUF header without loading the model. */
static void meta_read(struct dsad_model *m) {
        struct dsa_gguf *g = NULL;
        struct stat st;
        const char *s;
        size_t len, n;
        enum dsa_gguf_vtype t;
        char key[128];

        if (stat(m->path, &st) < 0) {
                meta_clear(m);
                m->file_size = 0;
                return;
        }
        if (m->meta_read && m->meta_size == st.st_size && m->meta_mtime.tv_sec == st.st_mtim.tv_sec &&
            m->meta_mtime.tv_nsec == st.st_mtim.tv_nsec)
                return;
        meta_clear(m);
        m->meta_read = true;
        m->meta_size = st.st_size;
        m->meta_mtime = st.st_mtim;
        m->file_size = (uint64_t) st.st_size;

        if (dsa_gguf_open(m->path, &g) < 0)
                return;
        if (dsa_gguf_get_str(g, "general.architecture", &s, &len) < 0 || len == 0 || len > 32)
                goto out;
        m->arch = strndup(s, len);
        if (!m->arch)
                goto out;
        snprintf(key, sizeof(key), "%s.embedding_length", m->arch);
        (void) dsa_gguf_get_u32(g, key, &m->hidden_size);
        snprintf(key, sizeof(key), "%s.block_count", m->arch);
        (void) dsa_gguf_get_u32(g, key, &m->layers);

        const struct dsa_tensor_view *v = dsa_gguf_find_tensor(g, "cls.output.weight");
        if (v && v->n_dims == 2 && v->ne[1] <= 65536)
                n = (size_t) v->ne[1];
        else
                n = 0;
        snprintf(key, sizeof(key), "%s.classifier.output_labels", m->arch);
        if (n > 0) {
                m->labels = calloc(n, sizeof(char *));
                if (!m->labels)
                        goto out;
                m->n_labels = (uint32_t) n;
                bool have = dsa_gguf_get_arr(g, key, &t, &len) >= 0 && t == DSA_GGUF_STRING && len == n;
                for (size_t i = 0; i < n; i++) {
                        if (have && dsa_gguf_get_arr_str(g, key, i, &s, &len) >= 0)
                                m->labels[i] = strndup(s, len);
                        else if (asprintf(&m->labels[i], "LABEL_%zu", i) < 0)
                                m->labels[i] = NULL;
                        if (!m->labels[i]) {
                                strv_free(m->labels, n);
                                m->labels = NULL;
                                m->n_labels = 0;
                                break;
                        }
                }
        }
out:
        dsa_gguf_free(g);
}

/* Replaces m in the list by a fresh, unloaded model of the same name (when its file is still
 * there) and lets go of the registry's reference to m. */
static void unload(struct dsad *d, struct dsad_model *m) {
        struct dsad_model **p, *fresh = NULL;

        for (p = &d->models; *p && *p != m; p = &(*p)->next)
                ;
        if (!*p)
                return;
        if (access(m->path, F_OK) == 0)
                fresh = model_new(d, m->name);
        if (fresh) {
                fresh->next = m->next;
                *p = fresh;
        } else
                *p = m->next;
        m->next = NULL;
        atomic_store(&m->loaded, false);
        dsad_log(LOG_INFO, "Unloaded model %s.", m->name);
        dsad_api_models_changed(d, m->name, false);
        dsad_adaptive_models_changed(d);
        dsad_model_unref(m);
}

static void on_idle_timer(uv_timer_t *t) {
        struct dsad *d = t->data;
        unsigned idle = d->config.idle_unload_seconds;
        uint64_t now = now_usec();
        struct dsad_model *m, *next;

        if (idle == 0)
                return;
        for (m = d->models; m; m = next) {
                next = m->next;
                if (!atomic_load(&m->loaded) || atomic_load(&m->n_ref) > 1)
                        continue;
                if (now - atomic_load(&m->idle_since_usec) >= (uint64_t) idle * 1000000u) {
                        dsad_log(LOG_INFO, "Model %s unused for %us.", m->name, idle);
                        unload(d, m);
                }
        }
}

/* ---- API */

bool dsad_model_name_valid(const char *name) {
        size_t n;

        if (!name || name[0] == '.' || name[0] == 0)
                return false;
        n = strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-");
        return name[n] == 0 && n <= 64;
}

struct dsad_model *dsad_model_ref(struct dsad_model *m) {
        if (m)
                atomic_fetch_add_explicit(&m->n_ref, 1, memory_order_relaxed);
        return m;
}

void dsad_model_unref(struct dsad_model *m) {
        unsigned old;

        if (!m)
                return;
        old = atomic_fetch_sub_explicit(&m->n_ref, 1, memory_order_acq_rel);
        if (old == 1)
                model_free(m);
        else if (old == 2)
                atomic_store(&m->idle_since_usec, now_usec());
}

bool dsad_model_loaded(const struct dsad_model *m) {
        return m && atomic_load(&m->loaded);
}

const struct dsa_model *dsad_model_engine(const struct dsad_model *m) {
        return m ? m->engine : NULL;
}

struct dsad_ladder *dsad_model_ladder(const struct dsad_model *m) {
        return m ? m->ladder : NULL;
}

const char *dsad_model_name(const struct dsad_model *m) {
        return m ? m->name : NULL;
}

struct dsad_model *dsad_model_next(const struct dsad_model *m) {
        return m ? m->next : NULL;
}

int dsad_model_info(struct dsad_model *m, struct dsad_model_info *ret) {
        if (!m || !ret)
                return -EINVAL;

        if (m->engine) {
                const struct dsa_bert_config *c = dsa_model_bert_config(m->engine);
                struct stat st;

                if (!m->labels && c && c->n_labels > 0) {
                        m->labels = calloc(c->n_labels, sizeof(char *));
                        if (!m->labels)
                                return -ENOMEM;
                        m->n_labels = c->n_labels;
                        for (uint32_t i = 0; i < c->n_labels; i++) {
                                const char *l = dsa_model_label(m->engine, i);
                                m->labels[i] = strdup(l ? l : "");
                                if (!m->labels[i]) {
                                        meta_clear(m);
                                        return -ENOMEM;
                                }
                        }
                }
                const struct dsa_llama_config *lc = dsa_model_llama_config(m->engine);
                if (!m->arch) {
                        m->arch = strdup(lc ? "llama" : "bert");
                        if (!m->arch)
                                return -ENOMEM;
                }
                m->hidden_size = c ? c->n_embd : lc ? lc->n_embd : 0;
                m->layers = c ? c->n_layer : lc ? lc->n_layer : 0;
                if (m->file_size == 0 && stat(m->path, &st) >= 0)
                        m->file_size = (uint64_t) st.st_size;
        } else
                meta_read(m);

        *ret = (struct dsad_model_info){
                .name = m->name,
                .path = m->path,
                .architecture = m->arch ? m->arch : "",
                .loaded = atomic_load(&m->loaded),
                .hidden_size = m->hidden_size,
                .layers = m->layers,
                .n_labels = m->labels ? m->n_labels : 0,
                .labels = (const char *const *) m->labels,
                .file_size = m->file_size,
        };
        return 0;
}

unsigned dsad_registry_n_loaded(const struct dsad *d) {
        unsigned n = 0;
        for (struct dsad_model *m = d->models; m; m = m->next)
                n += atomic_load(&m->loaded);
        return n;
}

unsigned dsad_registry_n_models(const struct dsad *d) {
        unsigned n = 0;
        for (struct dsad_model *m = d->models; m; m = m->next)
                n++;
        return n;
}

int dsad_registry_scan(struct dsad *d) {
        DIR *dir;
        struct dirent *de;
        struct dsad_model *m, **p, **tail;
        int r = 0;

        for (m = d->models; m; m = m->next)
                m->seen = false;
        for (tail = &d->models; *tail; tail = &(*tail)->next)
                ;

        dir = opendir(d->config.store);
        if (!dir)
                r = -errno; /* a missing store is an empty one; the caller may warn */
        while (dir && (de = readdir(dir))) {
                size_t len = strlen(de->d_name);
                char name[65];

                if (len <= 5 || len - 5 > 64 || strcmp(de->d_name + len - 5, ".gguf") != 0)
                        continue;
                if (de->d_type != DT_REG && de->d_type != DT_LNK && de->d_type != DT_UNKNOWN)
                        continue;
                memcpy(name, de->d_name, len - 5);
                name[len - 5] = 0;
                if (!dsad_model_name_valid(name))
                        continue;
                m = lookup(d, name);
                if (!m) {
                        m = model_new(d, name);
                        if (!m) {
                                r = -ENOMEM;
                                break;
                        }
                        *tail = m;
                        tail = &m->next;
                }
                m->seen = true;
        }
        if (dir)
                closedir(dir);

        /* Files that went away, and the paths of a store that changed, matter only to models
         * not loaded: a loaded one keeps its mapping and path. */
        for (p = &d->models; (m = *p);) {
                if (atomic_load(&m->loaded) || m->seen) {
                        if (!atomic_load(&m->loaded)) {
                                char *np = store_path(d, m->name);
                                if (np && strcmp(np, m->path) != 0) {
                                        free(m->path);
                                        m->path = np;
                                        meta_clear(m);
                                } else
                                        free(np);
                        }
                        p = &m->next;
                        continue;
                }
                *p = m->next;
                dsad_model_unref(m);
        }
        return r == -ENOENT ? 0 : r;
}

int dsad_registry_find(struct dsad *d, const char *name, struct dsad_model **ret) {
        struct dsad_model *m;

        if (!dsad_model_name_valid(name))
                return -EINVAL;
        m = lookup(d, name);
        if (!m) {
                (void) dsad_registry_scan(d);
                m = lookup(d, name);
        }
        if (!m)
                return -ENOENT;
        *ret = m;
        return 0;
}

int dsad_registry_load(struct dsad *d, const char *name, struct dsad_model **ret) {
        struct dsad_model *m;
        struct dsad_ladder *ladder = NULL;
        int r;

        r = dsad_registry_find(d, name, &m);
        if (r < 0)
                return r;
        if (!atomic_load(&m->loaded)) {
                /* Blocks the loop while the file is mapped and checked: a GGUF is used in place,
                 * so this costs page-table work, not a read of the weights. */
                /* Every rung of the ladder: the base, then NAME@VARIANT.gguf files. */
                dsa_error_clear();
                r = dsad_ladder_open(d->config.store, name, model_threads(d), &ladder);
                if (r < 0) {
                        dsad_log(LOG_WARNING, "Failed to load model %s from %s: %s", name, m->path,
                                 dsa_error_message(r));
                        return r;
                }
                meta_clear(m); /* from now on the engine answers */
                m->ladder = ladder;
                m->engine = dsad_ladder_base(ladder);
                atomic_store(&m->idle_since_usec, now_usec());
                atomic_store(&m->loaded, true);
                dsad_log(LOG_INFO, "Loaded model %s from %s.", name, m->path);
                dsad_api_models_changed(d, name, true);
                dsad_adaptive_models_changed(d);
        }
        *ret = dsad_model_ref(m);
        return 0;
}

int dsad_registry_unload(struct dsad *d, const char *name) {
        struct dsad_model *m;
        int r;

        r = dsad_registry_find(d, name, &m);
        if (r < 0)
                return r;
        if (!atomic_load(&m->loaded))
                return -ESRCH;
        unload(d, m);
        return 0;
}

void dsad_registry_config_changed(struct dsad *d) {
        struct dsad_registry *r = d->registry;
        unsigned idle = d->config.idle_unload_seconds, interval;

        if (!r) {
                r = calloc(1, sizeof(*r));
                if (!r) {
                        dsad_log(LOG_WARNING, "Out of memory for the idle-unload timer, ignoring.");
                        return;
                }
                uv_timer_init(d->loop, &r->idle_timer);
                r->idle_timer.data = d;
                d->registry = r;
        }
        /* A quarter of the idle time between checks, between 1 s and 1 min: models go at most
         * 25% late, and an idle daemon wakes rarely. */
        interval = idle == 0 ? 0 : MIN(60u, MAX(1u, idle / 4));
        if (interval == r->interval_s)
                return;
        r->interval_s = interval;
        uv_timer_stop(&r->idle_timer);
        if (interval)
                uv_timer_start(&r->idle_timer, on_idle_timer, (uint64_t) interval * 1000u,
                               (uint64_t) interval * 1000u);
}

static void on_registry_closed(uv_handle_t *h) {
        free(h->data);
}

void dsad_registry_free_all(struct dsad *d) {
        struct dsad_model *m;

        if (d->registry) {
                d->registry->idle_timer.data = d->registry;
                uv_close((uv_handle_t *) &d->registry->idle_timer, on_registry_closed);
                d->registry = NULL;
        }
        while ((m = d->models)) {
                d->models = m->next;
                m->next = NULL;
                atomic_store(&m->loaded, false);
                dsad_model_unref(m);
        }
}
