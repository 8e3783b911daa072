/* org.dsa.Daemon1 on /org/dsa/Daemon1 and org.dsa.Model1 on /org/dsa/Daemon1/models/<name>
 * (docs/dbus-api.md). Classify, Embed and Tokenize, the script-friendly path, go through the
 * scheduler like ring requests: the handler keeps a reference to the call, the worker hands the
 * ring-format response to done() which copies it and wakes the loop through a uv_async, and the
 * loop thread decodes it into the reply. sd-bus is only ever touched on the loop thread. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "basic/error.h"
#include "daemon.h"

#define OBJECT_PATH "/org/dsa/Daemon1"
#define INTERFACE "org.dsa.Daemon1"
#define MODELS_PATH "/org/dsa/Daemon1/models"
#define MODEL_INTERFACE "org.dsa.Model1"

#define ERROR_NO_SUCH_MODEL "org.dsa.Error.NoSuchModel"
#define ERROR_BAD_MODEL "org.dsa.Error.BadModel"
#define ERROR_NOT_LOADED "org.dsa.Error.NotLoaded"
#define ERROR_NO_SUCH_SESSION "org.dsa.Error.NoSuchSession"
#define ERROR_INVALID_ARGS "org.dsa.Error.InvalidArgs"
#define ERROR_BUSY "org.dsa.Error.Busy"
#define ERROR_FAILED "org.dsa.Error.Failed"
#define ERROR_ACCESS_DENIED "org.dsa.Error.AccessDenied"

#define TEXTS_MAX 1024u
#define TEXT_BYTES_MAX (1024u * 1024u)
/* sd-bus refuses messages over 128 MiB; a response that would not fit fails as a whole. */
#define REPLY_BYTES_MAX (128u * 1024u * 1024u)

/* One Classify/Embed/Tokenize call between its handler and its reply. */
struct api_call {
        struct dsad_api *api;
        sd_bus_message *message; /* referenced */
        struct dsad_model *model; /* referenced: labels for the reply */
        uint32_t op;
        int status;
        char *error;    /* reason, copied on the worker */
        uint8_t *payload;
        size_t len;
        struct api_call *next;
};

struct dsad_api {
        struct dsad *d;
        sd_bus_slot *slot_daemon, *slot_models, *slot_nodes;
        uv_async_t async;
        bool async_open;
        pthread_mutex_t lock;
        struct api_call *done; /* finished on workers, to reply to; guarded by lock */
        unsigned n_pending;    /* loop thread */
};

/* ---- helpers */

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static uint32_t get_u32(const uint8_t *p) {
        uint32_t v;
        memcpy(&v, p, sizeof(v));
        return v;
}

static void put_u32(uint8_t *p, uint32_t v) {
        memcpy(p, &v, sizeof(v));
}

static void strv_free(char **v) {
        if (!v)
                return;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(char **, strv_free)

static struct api_call *call_free(struct api_call *c) {
        if (!c)
                return NULL;
        sd_bus_message_unref(c->message);
        dsad_model_unref(c->model);
        free(c->error);
        free(c->payload);
        free(c);
        return NULL;
}

static int check_model_name(const char *name, sd_bus_error *error) {
        if (!dsad_model_name_valid(name))
                return sd_bus_error_setf(error, ERROR_INVALID_ARGS,
                                         "Invalid model name '%.80s': 1-64 characters of [A-Za-z0-9_.-], "
                                         "not starting with '.'",
                                         name);
        return 0;
}

/* Registry errors as the doc's error names. */
static int model_error(int r, const char *name, sd_bus_error *error) {
        switch (r) {
        case -EINVAL:
                return check_model_name(name, error) < 0 ? -EINVAL
                                                         : sd_bus_error_setf(error, ERROR_INVALID_ARGS, "%s",
                                                                             dsa_error_message(r));
        case -ENOENT:
                return sd_bus_error_setf(error, ERROR_NO_SUCH_MODEL, "No model '%s' in the store", name);
        case -ESRCH:
                return sd_bus_error_setf(error, ERROR_NOT_LOADED, "Model '%s' is not loaded", name);
        case -ENOMEM:
                return -ENOMEM;
        default:
                return sd_bus_error_setf(error, ERROR_BAD_MODEL, "Model '%s' does not load: %s", name,
                                         dsa_error_message(r));
        }
}

static char *model_path(const char *name) {
        char *p = NULL;
        if (sd_bus_path_encode(MODELS_PATH, name, &p) < 0)
                return NULL;
        return p;
}

/* Reads "as" and checks the limits of the doc. */
/* Reads the "as" argument one string at a time and stops at the first that breaks a limit:
 * sd_bus_message_read_strv() would first copy a whole array of millions of strings (in time
 * that grows with its square) on the loop thread, before any limit could be checked. */
static int read_texts(sd_bus_message *m, char ***ret, size_t *ret_n, sd_bus_error *error) {
        _cleanup_(strv_freep) char **texts = NULL;
        size_t n = 0;
        int r;

        texts = calloc(TEXTS_MAX + 1, sizeof(char *));
        if (!texts)
                return -ENOMEM;
        r = sd_bus_message_enter_container(m, 'a', "s");
        if (r < 0)
                return r;
        for (;;) {
                const char *t;
                r = sd_bus_message_read_basic(m, 's', &t);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (n == TEXTS_MAX)
                        return sd_bus_error_setf(error, ERROR_INVALID_ARGS, "More than %u texts per call",
                                                 TEXTS_MAX);
                if (strlen(t) > TEXT_BYTES_MAX)
                        return sd_bus_error_setf(error, ERROR_INVALID_ARGS, "Text %zu is longer than %u bytes",
                                                 n, TEXT_BYTES_MAX);
                texts[n] = strdup(t);
                if (!texts[n])
                        return -ENOMEM;
                n++;
        }
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        if (n == 0)
                return sd_bus_error_set(error, ERROR_INVALID_ARGS, "No texts given");
        *ret = TAKE_PTR(texts);
        *ret_n = n;
        return 0;
}

/* Worker thread: keep the result, wake the loop. */
static void call_done(struct dsad_request *req, int status, const void *payload, size_t len) {
        struct api_call *c = req->userdata;
        struct dsad_api *api = c->api;

        c->status = status;
        if (status < 0)
                c->error = strdup(dsa_error_message(status));
        else if (len > 0) {
                c->payload = malloc(len);
                if (c->payload) {
                        memcpy(c->payload, payload, len);
                        c->len = len;
                } else
                        c->status = -ENOMEM;
        }
        pthread_mutex_lock(&api->lock);
        c->next = api->done;
        api->done = c;
        pthread_mutex_unlock(&api->lock);
        uv_async_send(&api->async);
}

/* Hands the texts to the scheduler as a request of op; the reply comes from reply_call(). */
static int submit(struct dsad *d, sd_bus_message *m, const char *name, char **texts, size_t n, uint32_t op,
                  uint32_t flags, uint32_t pool, sd_bus_error *error) {
        struct dsad_api *api = d->api;
        struct dsa_ring_sqe sqe = { .op = op, .flags = flags, .pool = pool, .slot = 0 };
        _cleanup_free_ uint8_t *payload = NULL;
        struct dsad_request *req = NULL;
        struct dsad_model *model = NULL;
        struct api_call *c;
        size_t len = 4, off = 4, cap;
        const struct dsa_bert_config *cfg;
        int r;

        if (d->stopping)
                return sd_bus_error_set(error, ERROR_BUSY, "dsad is stopping");
        r = check_model_name(name, error);
        if (r < 0)
                return r;
        dsa_error_clear();
        r = dsad_registry_load(d, name, &model);
        if (r < 0)
                return model_error(r, name, error);
        cfg = dsa_model_bert_config(dsad_model_engine(model));
        if (op == DSA_RING_OP_CLASSIFY && (!cfg || cfg->n_labels == 0)) {
                dsad_model_unref(model);
                return sd_bus_error_setf(error, ERROR_FAILED, "Model '%s' has no classifier head", name);
        }

        /* The ring's request format, so the decoder every ring request passes checks these too. */
        for (size_t i = 0; i < n; i++)
                len += 4 + strlen(texts[i]); /* ≤ 1024 * (4 + 1 MiB): no overflow */
        payload = malloc(len);
        if (!payload) {
                dsad_model_unref(model);
                return -ENOMEM;
        }
        put_u32(payload, (uint32_t) n);
        cap = 8;
        for (size_t i = 0; i < n; i++) {
                size_t l = strlen(texts[i]);
                put_u32(payload + off, (uint32_t) l);
                memcpy(payload + off + 4, texts[i], l);
                off += 4 + l;
                if (op == DSA_RING_OP_TOKENIZE)
                        cap += 4 + 4 * (l + 2); /* at most one id per byte, plus [CLS] [SEP] */
                else if (op == DSA_RING_OP_CLASSIFY)
                        cap += 4 + 4 * (size_t) cfg->n_labels;
                else
                        cap += 4 * (size_t) (cfg ? cfg->n_embd : 0);
        }
        sqe.len = (uint32_t) len;
        dsa_error_clear();
        r = dsad_request_decode(&sqe, payload, len, 1, &req);
        if (r < 0) {
                dsad_model_unref(model);
                return sd_bus_error_setf(error, ERROR_INVALID_ARGS, "%s", dsa_error_message(r));
        }

        c = calloc(1, sizeof(*c));
        if (!c) {
                dsad_request_free(req);
                dsad_model_unref(model);
                return -ENOMEM;
        }
        c->api = api;
        c->message = sd_bus_message_ref(m);
        c->op = op;
        c->model = dsad_model_ref(model);
        req->model = model; /* the registry's reference, now the request's */
        req->done = call_done;
        req->userdata = c;
        req->reply_cap = MIN(cap, (size_t) REPLY_BYTES_MAX);
        req->enqueue_usec = now_usec();

        r = dsad_scheduler_submit(d->scheduler, req);
        if (r < 0) {
                dsad_request_free(req);
                call_free(c);
                if (r == -EBUSY)
                        return sd_bus_error_set(error, ERROR_BUSY, "The request queue is full; try again later");
                return sd_bus_error_setf(error, ERROR_FAILED, "Failed to queue the request: %s", strerror(-r));
        }
        api->n_pending++;
        return 1; /* replied to later, from the loop */
}

/* The ring-format response of c, decoded into the D-Bus reply. The payload comes from our own
 * worker, but it is still checked against its length like any other bytes. */
static int append_response(struct api_call *c, sd_bus_message *reply) {
        const uint8_t *p = c->payload, *end = c->payload + c->len;
        const struct dsa_model *engine = dsad_model_engine(c->model);
        uint32_t n, w;
        int r;

        if (c->len < 4)
                return -EBADMSG;
        n = get_u32(p);
        p += 4;

        switch (c->op) {
        case DSA_RING_OP_CLASSIFY:
        case DSA_RING_OP_EMBED:
                if (end - p < 4)
                        return -EBADMSG;
                w = get_u32(p);
                p += 4;
                if ((uint64_t) (end - p) != (uint64_t) n * ((uint64_t) w * 4 + (c->op == DSA_RING_OP_CLASSIFY ? 4 : 0)))
                        return -EBADMSG;
                r = sd_bus_message_open_container(reply, 'a', c->op == DSA_RING_OP_CLASSIFY ? "(susad)" : "ad");
                if (r < 0)
                        return r;
                for (uint32_t i = 0; i < n; i++) {
                        uint32_t label = 0;
                        if (c->op == DSA_RING_OP_CLASSIFY) {
                                const char *name;
                                label = get_u32(p);
                                p += 4;
                                name = label < w ? dsa_model_label(engine, label) : NULL;
                                r = sd_bus_message_open_container(reply, 'r', "susad");
                                if (r >= 0)
                                        r = sd_bus_message_append(reply, "sus", name ? name : "", label, "");
                                if (r < 0)
                                        return r;
                        }
                        r = sd_bus_message_open_container(reply, 'a', "d");
                        for (uint32_t j = 0; r >= 0 && j < w; j++, p += 4) {
                                float f;
                                memcpy(&f, p, sizeof(f));
                                r = sd_bus_message_append_basic(reply, 'd', &(double){ f });
                        }
                        if (r >= 0)
                                r = sd_bus_message_close_container(reply);
                        if (r >= 0 && c->op == DSA_RING_OP_CLASSIFY)
                                r = sd_bus_message_close_container(reply);
                        if (r < 0)
                                return r;
                }
                return sd_bus_message_close_container(reply);

        case DSA_RING_OP_TOKENIZE:
                r = sd_bus_message_open_container(reply, 'a', "(aias)");
                if (r < 0)
                        return r;
                for (uint32_t i = 0; i < n; i++) {
                        if (end - p < 4)
                                return -EBADMSG;
                        w = get_u32(p);
                        p += 4;
                        if ((uint64_t) (end - p) < (uint64_t) w * 4)
                                return -EBADMSG;
                        r = sd_bus_message_open_container(reply, 'r', "aias");
                        if (r < 0)
                                return r;
                        /* i32 little-endian in the payload is D-Bus 'i' on this host. */
                        r = sd_bus_message_append_array(reply, 'i', p, (size_t) w * 4);
                        if (r < 0)
                                return r;
                        p += (size_t) w * 4;
                        r = sd_bus_message_open_container(reply, 'a', "s");
                        if (r < 0)
                                return r;
                        for (uint32_t j = 0; j < w; j++) {
                                _cleanup_free_ char *tok = NULL;
                                uint32_t l;

                                if (end - p < 4)
                                        return -EBADMSG;
                                l = get_u32(p);
                                p += 4;
                                if ((uint64_t) (end - p) < l)
                                        return -EBADMSG;
                                tok = strndup((const char *) p, l);
                                if (!tok)
                                        return -ENOMEM;
                                if (strlen(tok) != l)
                                        return -EBADMSG; /* holds NUL */
                                r = sd_bus_message_append_basic(reply, 's', tok);
                                if (r < 0)
                                        return r;
                                p += l;
                        }
                        r = sd_bus_message_close_container(reply);
                        if (r >= 0)
                                r = sd_bus_message_close_container(reply);
                        if (r < 0)
                                return r;
                }
                if (p != end)
                        return -EBADMSG;
                return sd_bus_message_close_container(reply);
        }
        return -EINVAL;
}

static void reply_call(struct api_call *c) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        if (c->status >= 0) {
                r = sd_bus_message_new_method_return(c->message, &reply);
                if (r >= 0)
                        r = append_response(c, reply);
                if (r >= 0)
                        r = sd_bus_send(NULL, reply, NULL);
                if (r >= 0)
                        return;
                dsad_log(LOG_WARNING, "Failed to send the reply to %s: %s, ignoring.",
                         sd_bus_message_get_sender(c->message) ?: "?", strerror(-r));
                sd_bus_error_setf(&error, ERROR_FAILED, "The reply could not be built: %s", strerror(-r));
        } else if (c->status == -ENOENT)
                sd_bus_error_setf(&error, ERROR_NOT_LOADED, "Model '%s' was unloaded", dsad_model_name(c->model));
        else if (c->status == -EBUSY)
                sd_bus_error_set(&error, ERROR_BUSY, "The request queue is full; try again later");
        else if (c->status == -ENOBUFS)
                sd_bus_error_set(&error, ERROR_FAILED, "The reply would exceed the D-Bus message size limit");
        else
                sd_bus_error_setf(&error, ERROR_FAILED, "%s", c->error ? c->error : strerror(-c->status));
        r = sd_bus_reply_method_error(c->message, &error);
        if (r < 0)
                dsad_log(LOG_WARNING, "Failed to send an error reply: %s, ignoring.", strerror(-r));
        sd_bus_error_free(&error);
}

/* Loop thread: replies to every call the workers finished. */
static void dispatch_done(struct dsad_api *api) {
        struct api_call *list, *rev = NULL, *c;

        pthread_mutex_lock(&api->lock);
        list = api->done;
        api->done = NULL;
        pthread_mutex_unlock(&api->lock);
        while ((c = list)) { /* oldest first */
                list = c->next;
                c->next = rev;
                rev = c;
        }
        if (!rev)
                return;
        while ((c = rev)) {
                rev = c->next;
                api->n_pending--;
                reply_call(c);
                call_free(c);
        }
        dsad_bus_flush(api->d);
}

static void on_async(uv_async_t *a) {
        dispatch_done(a->data);
}

static int append_model(sd_bus_message *reply, struct dsad_model *m) {
        struct dsad_model_info i;
        int r = dsad_model_info(m, &i);
        if (r < 0)
                return r;
        return sd_bus_message_append(reply, "(sbsuu)", i.name, i.loaded, i.architecture, i.hidden_size,
                                     i.n_labels);
}

/* ---- org.dsa.Daemon1 methods */

static int method_list_models(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        struct dsad *d = userdata;
        int r;

        (void) dsad_registry_scan(d);
        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(sbsuu)");
        if (r < 0)
                return r;
        for (struct dsad_model *x = d->models; x; x = dsad_model_next(x)) {
                r = append_model(reply, x);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_load_model(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        struct dsad_model *model;
        const char *name;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        r = check_model_name(name, error);
        if (r < 0)
                return r;
        dsa_error_clear();
        r = dsad_registry_load(d, name, &model);
        if (r < 0)
                return model_error(r, name, error);
        dsad_model_unref(model);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_unload_model(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        const char *name;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        r = check_model_name(name, error);
        if (r < 0)
                return r;
        r = dsad_registry_unload(d, name);
        if (r < 0)
                return model_error(r, name, error);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_classify(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(strv_freep) char **texts = NULL;
        const char *name;
        size_t n;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        r = read_texts(m, &texts, &n, error);
        if (r < 0)
                return r;
        return submit(userdata, m, name, texts, n, DSA_RING_OP_CLASSIFY, 0, 0, error);
}

static int method_embed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(strv_freep) char **texts = NULL;
        const char *name, *pool_name;
        uint32_t pool;
        size_t n;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        r = read_texts(m, &texts, &n, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(m, "s", &pool_name);
        if (r < 0)
                return r;
        if (strcmp(pool_name, "") == 0)
                pool = DSA_RING_POOL_DEFAULT;
        else if (strcmp(pool_name, "cls") == 0)
                pool = DSA_RING_POOL_CLS;
        else if (strcmp(pool_name, "mean") == 0)
                pool = DSA_RING_POOL_MEAN;
        else if (strcmp(pool_name, "pooler") == 0)
                pool = DSA_RING_POOL_POOLER;
        else
                return sd_bus_error_setf(error, ERROR_INVALID_ARGS,
                                         "Unknown pooling '%.40s': one of \"\", cls, mean, pooler", pool_name);
        return submit(userdata, m, name, texts, n, DSA_RING_OP_EMBED, 0, pool, error);
}

static int method_tokenize(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(strv_freep) char **texts = NULL;
        const char *name;
        int special;
        size_t n;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        r = read_texts(m, &texts, &n, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(m, "b", &special);
        if (r < 0)
                return r;
        return submit(userdata, m, name, texts, n, DSA_RING_OP_TOKENIZE, special ? 0 : DSA_RING_SQE_NO_SPECIAL, 0,
                      error);
}

static int method_open_session(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        struct dsad_session *s = NULL;
        const char *name;
        uint32_t slots, slot_size;
        int ring, submit_fd, complete_fd, r;

        r = sd_bus_message_read(m, "suu", &name, &slots, &slot_size);
        if (r < 0)
                return r;
        if (d->stopping)
                return sd_bus_error_set(error, ERROR_BUSY, "dsad is stopping");
        r = check_model_name(name, error);
        if (r < 0)
                return r;
        dsa_error_clear();
        r = dsad_session_open(d, m, name, slots, slot_size, &s);
        if (r == -EINVAL)
                return sd_bus_error_setf(error, ERROR_INVALID_ARGS,
                                         "Bad ring geometry (%u slots of %u bytes): %s", slots, slot_size,
                                         dsa_error_message(r));
        if (r == -EBUSY || r == -EMFILE || r == -ENFILE)
                return sd_bus_error_setf(error, ERROR_BUSY, "Too many sessions: %s", dsa_error_message(r));
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return model_error(r, name, error);

        r = dsad_session_fds(s, &ring, &submit_fd, &complete_fd);
        if (r >= 0)
                r = sd_bus_reply_method_return(m, "hhhs", ring, submit_fd, complete_fd, dsad_session_id(s));
        if (r < 0) {
                (void) dsad_session_close(d, s);
                return r;
        }
        dsad_api_sessions_changed(d);
        return r;
}

static int method_close_session(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        struct dsad_session *s;
        const char *id, *sender, *owner;
        int r;

        r = sd_bus_message_read(m, "s", &id);
        if (r < 0)
                return r;
        s = dsad_session_find(d, id);
        if (!s)
                return sd_bus_error_setf(error, ERROR_NO_SUCH_SESSION, "No session '%.80s'", id);
        sender = sd_bus_message_get_sender(m);
        owner = dsad_session_owner(s);
        if (!sender || !owner || strcmp(sender, owner) != 0)
                return sd_bus_error_setf(error, ERROR_ACCESS_DENIED, "Session '%s' belongs to %s", id,
                                         owner ? owner : "another client");
        r = dsad_session_close(d, s);
        if (r < 0)
                return r;
        dsad_api_sessions_changed(d);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_list_sessions(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        struct dsad *d = userdata;
        int r;

        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(ssuuttt)");
        if (r < 0)
                return r;
        for (struct dsad_session *s = d->sessions; s; s = dsad_session_next(s)) {
                uint64_t completed = 0, failed = 0, bytes = 0;

                dsad_session_stats(s, &completed, &failed, &bytes);
                r = sd_bus_message_append(reply, "(ssuuttt)", dsad_session_id(s), dsad_session_owner(s) ?: "",
                                          dsad_session_uid(s), 0u, completed, failed, bytes);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_get_status(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        struct dsad *d = userdata;
        int r;

        (void) dsad_registry_scan(d);
        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_append(
                reply, "a{sv}", 9,
                "Version", "s", DSA_VERSION,
                "Models", "u", dsad_registry_n_models(d),
                "LoadedModels", "u", dsad_registry_n_loaded(d),
                "Sessions", "u", d->n_sessions,
                "QueueDepth", "u", d->scheduler ? dsad_scheduler_depth(d->scheduler) : 0u,
                "Workers", "u", d->config.workers,
                "RequestsCompleted", "t", (uint64_t) __atomic_load_n(&d->requests_completed, __ATOMIC_RELAXED),
                "RequestsFailed", "t", (uint64_t) __atomic_load_n(&d->requests_failed, __ATOMIC_RELAXED),
                "UptimeSeconds", "t", (now_usec() - d->start_usec) / 1000000u);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* ---- org.dsa.Daemon1 properties */

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", DSA_VERSION);
}

static int property_get_sessions(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        return sd_bus_message_append(reply, "u", d->n_sessions);
}

static int property_get_loaded_models(sd_bus *bus, const char *path, const char *interface,
                                      const char *property, sd_bus_message *reply, void *userdata,
                                      sd_bus_error *error) {
        struct dsad *d = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;
        for (struct dsad_model *m = d->models; m; m = dsad_model_next(m))
                if (dsad_model_loaded(m)) {
                        r = sd_bus_message_append(reply, "s", dsad_model_name(m));
                        if (r < 0)
                                return r;
                }
        return sd_bus_message_close_container(reply);
}

static int property_get_queue_depth(sd_bus *bus, const char *path, const char *interface,
                                    const char *property, sd_bus_message *reply, void *userdata,
                                    sd_bus_error *error) {
        struct dsad *d = userdata;
        return sd_bus_message_append(reply, "u", d->scheduler ? dsad_scheduler_depth(d->scheduler) : 0u);
}

static int property_get_workers(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        return sd_bus_message_append(reply, "u", d->config.workers);
}

/* ---- org.dsa.Model1 properties (userdata: the struct dsad_model found for the path) */

static int model_property_get(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        struct dsad_model_info i;
        int r;

        r = dsad_model_info(userdata, &i);
        if (r < 0)
                return r;
        if (strcmp(property, "Name") == 0)
                return sd_bus_message_append(reply, "s", i.name);
        if (strcmp(property, "Path") == 0)
                return sd_bus_message_append(reply, "s", i.path);
        if (strcmp(property, "Loaded") == 0)
                return sd_bus_message_append(reply, "b", i.loaded);
        if (strcmp(property, "Architecture") == 0)
                return sd_bus_message_append(reply, "s", i.architecture);
        if (strcmp(property, "HiddenSize") == 0)
                return sd_bus_message_append(reply, "u", i.hidden_size);
        if (strcmp(property, "Layers") == 0)
                return sd_bus_message_append(reply, "u", i.layers);
        if (strcmp(property, "FileSize") == 0)
                return sd_bus_message_append(reply, "t", i.file_size);
        if (strcmp(property, "Labels") == 0) {
                r = sd_bus_message_open_container(reply, 'a', "s");
                for (uint32_t k = 0; r >= 0 && k < i.n_labels; k++)
                        r = sd_bus_message_append(reply, "s", i.labels[k]);
                if (r < 0)
                        return r;
                return sd_bus_message_close_container(reply);
        }
        return -ENOENT;
}

static int model_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **ret_found,
                      sd_bus_error *error) {
        struct dsad *d = userdata;
        struct dsad_model *m;
        char *name = NULL;
        int r;

        r = sd_bus_path_decode(path, MODELS_PATH, &name);
        if (r <= 0)
                return 0;
        r = dsad_registry_find(d, name, &m);
        free(name);
        if (r < 0)
                return 0;
        *ret_found = m;
        return 1;
}

static int model_enumerate(sd_bus *bus, const char *prefix, void *userdata, char ***ret_nodes,
                           sd_bus_error *error) {
        struct dsad *d = userdata;
        char **nodes;
        size_t n = 0, k = 0;

        (void) dsad_registry_scan(d);
        for (struct dsad_model *m = d->models; m; m = dsad_model_next(m))
                n++;
        nodes = calloc(n + 1, sizeof(char *));
        if (!nodes)
                return -ENOMEM;
        for (struct dsad_model *m = d->models; m; m = dsad_model_next(m)) {
                nodes[k] = model_path(dsad_model_name(m));
                if (!nodes[k]) {
                        strv_free(nodes);
                        return -ENOMEM;
                }
                k++;
        }
        *ret_nodes = nodes;
        return 0;
}

/* ---- vtables */

static const sd_bus_vtable daemon_vtable[] = {
        SD_BUS_VTABLE_START(0),

        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Sessions", "u", property_get_sessions, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LoadedModels", "as", property_get_loaded_models, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("QueueDepth", "u", property_get_queue_depth, 0, 0),
        SD_BUS_PROPERTY("Workers", "u", property_get_workers, 0, SD_BUS_VTABLE_PROPERTY_CONST),

        SD_BUS_METHOD_WITH_ARGS("ListModels",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(sbsuu)", models),
                                method_list_models, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("LoadModel",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_load_model, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("UnloadModel",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_unload_model, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Classify",
                                SD_BUS_ARGS("s", model, "as", texts),
                                SD_BUS_RESULT("a(susad)", results),
                                method_classify, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Embed",
                                SD_BUS_ARGS("s", model, "as", texts, "s", pool),
                                SD_BUS_RESULT("aad", embeddings),
                                method_embed, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Tokenize",
                                SD_BUS_ARGS("s", model, "as", texts, "b", special),
                                SD_BUS_RESULT("a(aias)", tokens),
                                method_tokenize, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("OpenSession",
                                SD_BUS_ARGS("s", model, "u", slots, "u", slot_size),
                                SD_BUS_RESULT("h", ring, "h", submit, "h", complete, "s", id),
                                method_open_session, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CloseSession",
                                SD_BUS_ARGS("s", id),
                                SD_BUS_NO_RESULT,
                                method_close_session, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListSessions",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(ssuuttt)", sessions),
                                method_list_sessions, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetStatus",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a{sv}", status),
                                method_get_status, SD_BUS_VTABLE_UNPRIVILEGED),

        SD_BUS_SIGNAL_WITH_ARGS("ModelLoaded", SD_BUS_ARGS("s", name), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ModelUnloaded", SD_BUS_ARGS("s", name), 0),

        SD_BUS_VTABLE_END,
};

static const sd_bus_vtable model_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Name", "s", model_property_get, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Path", "s", model_property_get, 0, 0),
        SD_BUS_PROPERTY("Loaded", "b", model_property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Architecture", "s", model_property_get, 0, 0),
        SD_BUS_PROPERTY("HiddenSize", "u", model_property_get, 0, 0),
        SD_BUS_PROPERTY("Layers", "u", model_property_get, 0, 0),
        SD_BUS_PROPERTY("Labels", "as", model_property_get, 0, 0),
        SD_BUS_PROPERTY("FileSize", "t", model_property_get, 0, 0),
        SD_BUS_VTABLE_END,
};

/* ---- setup */

int dsad_api_register(struct dsad *d) {
        struct dsad_api *api;
        int r;

        api = calloc(1, sizeof(*api));
        if (!api)
                return dsad_log_errno(LOG_ERR, -ENOMEM, "Out of memory.");
        api->d = d;
        pthread_mutex_init(&api->lock, NULL);
        d->api = api;

        r = uv_async_init(d->loop, &api->async, on_async);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, -EIO, "Failed to set up the reply wake-up: %s", uv_strerror(r));
        api->async.data = api;
        api->async_open = true;

        r = sd_bus_add_object_vtable(d->bus, &api->slot_daemon, OBJECT_PATH, INTERFACE, daemon_vtable, d);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to add the %s object: %m", OBJECT_PATH);
        r = sd_bus_add_fallback_vtable(d->bus, &api->slot_models, MODELS_PATH, MODEL_INTERFACE, model_vtable,
                                       model_find, d);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to add the model objects: %m");
        r = sd_bus_add_node_enumerator(d->bus, &api->slot_nodes, MODELS_PATH, model_enumerate, d);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to add the model enumerator: %m");
        return 0;
}

static void on_async_closed(uv_handle_t *h) {
        struct dsad_api *api = h->data;
        pthread_mutex_destroy(&api->lock);
        free(api);
}

void dsad_api_unregister(struct dsad *d) {
        struct dsad_api *api = d->api;

        if (!api)
                return;
        /* The scheduler has drained by now: answer what it finished before the bus goes. */
        dispatch_done(api);
        if (api->n_pending > 0)
                dsad_log(LOG_WARNING, "%u D-Bus calls left unanswered at exit, ignoring.", api->n_pending);
        api->slot_nodes = sd_bus_slot_unref(api->slot_nodes);
        api->slot_models = sd_bus_slot_unref(api->slot_models);
        api->slot_daemon = sd_bus_slot_unref(api->slot_daemon);
        d->api = NULL;
        if (api->async_open)
                uv_close((uv_handle_t *) &api->async, on_async_closed);
        else
                on_async_closed((uv_handle_t *) &api->async);
}

void dsad_api_notify_status(struct dsad *d) {
        unsigned n = dsad_registry_n_loaded(d);
        (void) sd_notifyf(0, "STATUS=Serving %u model%s, %u session%s", n, n == 1 ? "" : "s", d->n_sessions,
                          d->n_sessions == 1 ? "" : "s");
}

void dsad_api_sessions_changed(struct dsad *d) {
        if (d->bus && d->api)
                (void) sd_bus_emit_properties_changed(d->bus, OBJECT_PATH, INTERFACE, "Sessions", NULL);
        dsad_api_notify_status(d);
        dsad_bus_flush(d);
}

void dsad_api_models_changed(struct dsad *d, const char *name, bool loaded) {
        if (d->bus && d->api) {
                char *path = model_path(name);

                (void) sd_bus_emit_signal(d->bus, OBJECT_PATH, INTERFACE, loaded ? "ModelLoaded" : "ModelUnloaded",
                                          "s", name);
                (void) sd_bus_emit_properties_changed(d->bus, OBJECT_PATH, INTERFACE, "LoadedModels", NULL);
                if (path)
                        (void) sd_bus_emit_properties_changed(d->bus, path, MODEL_INTERFACE, "Loaded", NULL);
                free(path);
        }
        dsad_api_notify_status(d);
        dsad_bus_flush(d);
}
