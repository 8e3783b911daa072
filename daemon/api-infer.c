/* Classify, Embed and Tokenize of org.dsa.Daemon1 (docs/dbus-api.md), the script-friendly path:
 * they go through the scheduler like ring requests. The handler keeps a reference to the call,
 * the worker hands the ring-format response to call_done() which copies it and wakes the loop
 * through a uv_async, and the loop thread decodes it into the reply. sd-bus is only ever touched
 * on the loop thread. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "api-internal.h"
#include "polkit.h"
#include "basic/error.h"
#include "basic/time-util.h"
#include "basic/unaligned.h"

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
        uint32_t variant; /* 1 + the rung that ran it, 0 none */
        char *error;    /* reason, copied on the worker */
        uint8_t *payload;
        size_t len;
        struct api_call *next;
};

/* ---- helpers */

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

/* The caller's uid from the bus, for [limits] queue_share: from the cache of the last callers,
 * else asked of the bus (dbus-daemon attaches no credentials to messages) and remembered. A
 * caller whose uid cannot be learned counts as uid UINT32_MAX, limited like any other. */
static uint32_t sender_uid(struct dsad_api *api, sd_bus_message *m) {
        const char *sender = sd_bus_message_get_sender(m);
        struct api_uid *e;
        uid_t uid;

        if (sender && strlen(sender) < sizeof(api->uids[0].sender))
                for (size_t i = 0; i < ELEMENTSOF(api->uids); i++)
                        if (strcmp(api->uids[i].sender, sender) == 0)
                                return api->uids[i].uid;
        if (dsad_sender_euid(m, &uid, NULL) < 0)
                return UINT32_MAX;
        if (sender && strlen(sender) < sizeof(api->uids[0].sender)) {
                e = &api->uids[api->next_uid++ % ELEMENTSOF(api->uids)];
                snprintf(e->sender, sizeof(e->sender), "%s", sender);
                e->uid = (uint32_t) uid;
        }
        return (uint32_t) uid;
}

/* Worker thread: keep the result, wake the loop. */
static void call_done(struct dsad_request *req, int status, const void *payload, size_t len) {
        struct api_call *c = req->userdata;
        struct dsad_api *api = c->api;

        c->status = status;
        c->variant = req->variant;
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
        r = dsad__api_check_model_name(name, error);
        if (r < 0)
                return r;
        dsa_error_clear();
        r = dsad_registry_load(d, name, &model);
        if (r < 0)
                return dsad__api_model_error(r, name, error);
        cfg = dsa_model_bert_config(dsad_model_engine(model));
        if (!cfg && op != DSA_RING_OP_TOKENIZE) {
                dsad_model_unref(model);
                return sd_bus_error_setf(error, ERROR_FAILED, "Model '%s' is a decoder: dsad classifies and embeds with "
                                         "encoders only so far", name);
        }
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
        unaligned_write_ne32(payload, (uint32_t) n);
        cap = 8;
        for (size_t i = 0; i < n; i++) {
                size_t l = strlen(texts[i]);
                unaligned_write_ne32(payload + off, (uint32_t) l);
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
        req->uid = sender_uid(api, m);

        dsa_error_clear();
        r = dsad_scheduler_submit(d->scheduler, req);
        if (r < 0) {
                dsad_request_free(req);
                call_free(c);
                if (r == -EBUSY)
                        return sd_bus_error_set(error, ERROR_BUSY, "The request queue is full; try again later");
                if (r == -EDQUOT)
                        return sd_bus_error_setf(error, ERROR_BUSY, "%s; try again later", dsa_error_message(r));
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
        const struct dsad_ladder *ladder = dsad_model_ladder(c->model);
        const char *variant = ladder && c->variant > 0 && c->variant <= ladder->n ? ladder->rungs[c->variant - 1].name : "";
        uint32_t n, w;
        int r;

        if (c->len < 4)
                return -EBADMSG;
        n = unaligned_read_ne32(p);
        p += 4;

        switch (c->op) {
        case DSA_RING_OP_CLASSIFY:
        case DSA_RING_OP_EMBED:
                if (end - p < 4)
                        return -EBADMSG;
                w = unaligned_read_ne32(p);
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
                                label = unaligned_read_ne32(p);
                                p += 4;
                                name = label < w ? dsa_model_label(engine, label) : NULL;
                                r = sd_bus_message_open_container(reply, 'r', "susad");
                                if (r >= 0)
                                        r = sd_bus_message_append(reply, "sus", name ? name : "", label, variant);
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
                        w = unaligned_read_ne32(p);
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
                                l = unaligned_read_ne32(p);
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

void dsad__api_dispatch_done(struct dsad_api *api) {
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

void dsad__api_on_async(uv_async_t *a) {
        dsad__api_dispatch_done(a->data);
}


/* The arguments every method here starts with: the model's name and the texts ("sas"). */
static int read_model_texts(sd_bus_message *m, const char **ret_name, char ***ret_texts, size_t *ret_n,
                            sd_bus_error *error) {
        const char *name;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        r = read_texts(m, ret_texts, ret_n, error);
        if (r < 0)
                return r;
        *ret_name = name;
        return 0;
}

/* ---- org.dsa.Daemon1 methods */

int dsad__api_method_classify(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(strv_freep) char **texts = NULL;
        const char *name;
        size_t n;
        int r;

        r = read_model_texts(m, &name, &texts, &n, error);
        if (r < 0)
                return r;
        return submit(userdata, m, name, texts, n, DSA_RING_OP_CLASSIFY, 0, 0, error);
}

int dsad__api_method_embed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(strv_freep) char **texts = NULL;
        const char *name, *pool_name;
        uint32_t pool;
        size_t n;
        int r;

        r = read_model_texts(m, &name, &texts, &n, error);
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

int dsad__api_method_tokenize(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(strv_freep) char **texts = NULL;
        const char *name;
        int special;
        size_t n;
        int r;

        r = read_model_texts(m, &name, &texts, &n, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(m, "b", &special);
        if (r < 0)
                return r;
        return submit(userdata, m, name, texts, n, DSA_RING_OP_TOKENIZE, special ? 0 : DSA_RING_SQE_NO_SPECIAL, 0,
                      error);
}

