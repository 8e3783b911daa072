/* The D-Bus half of libdsa: the connection to dsad, the control methods of org.dsa.Daemon1
 * (docs/dbus-api.md), the mapping of its errors to errnos, and watching dsad's name so that
 * sessions learn of its death. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "client.h"

static void bus_error_free(sd_bus_error *e) {
        sd_bus_error_free(e);
}
#define _cleanup_bus_error_ _cleanup_(bus_error_free)

static void bus_message_unrefp(sd_bus_message **m) {
        sd_bus_message_unref(*m);
}
#define _cleanup_bus_message_ _cleanup_(bus_message_unrefp)

static void bus_unrefp(sd_bus **b) {
        sd_bus_flush_close_unref(*b);
}

void dsa__client_clear_error(struct dsa_client *c) {
        free(c->error_message);
        c->error_message = NULL;
}

int dsa__client_fail(struct dsa_client *c, const sd_bus_error *e, int r) {
        dsa__client_clear_error(c);
        if (e && sd_bus_error_is_set(e)) {
                r = dsa__errno_from_bus_error(e->name, r);
                if (e->message)
                        c->error_message = strdup(e->message);
        }
        if (!sd_bus_is_open(c->bus)) {
                /* The bus connection itself is gone, not just dsad. */
                c->bus_error = -ENOTCONN;
                dsa__sessions_break(c, NULL, -ENOTCONN);
                r = -ENOTCONN;
        }
        return r;
}

int dsa__client_fail_reason(struct dsa_client *c, int r, const char *fmt, ...) {
        va_list ap;
        char *s = NULL;

        dsa__client_clear_error(c);
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        c->error_message = s;
        return r;
}

int dsa__client_process(struct dsa_client *c) {
        int r;

        if (c->bus_error < 0)
                return c->bus_error;
        do
                r = sd_bus_process(c->bus, NULL);
        while (r > 0);
        if (r < 0 || !sd_bus_is_open(c->bus)) {
                c->bus_error = -ENOTCONN;
                dsa__sessions_break(c, NULL, -ENOTCONN);
                return -ENOTCONN;
        }
        return 0;
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        struct dsa_client *c = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (strcmp(name, DSA__BUS_NAME) == 0 && old_owner[0])
                dsa__sessions_break(c, old_owner, -ECONNRESET);
        return 0;
}

static int bus_open(const char *address, sd_bus **ret) {
        _cleanup_(bus_unrefp) sd_bus *b = NULL;
        int r;

        if (!address || !address[0]) {
                address = secure_getenv("DSA_BUS_ADDRESS");
                if (!address || !address[0])
                        address = "system";
        }
        if (strcmp(address, "system") == 0)
                r = sd_bus_open_system(&b);
        else if (strcmp(address, "session") == 0 || strcmp(address, "user") == 0)
                r = sd_bus_open_user(&b);
        else {
                r = sd_bus_new(&b);
                if (r < 0)
                        return r;
                r = sd_bus_set_address(b, address);
                if (r < 0)
                        return r;
                r = sd_bus_set_bus_client(b, 1);
                if (r < 0)
                        return r;
                r = sd_bus_start(b);
        }
        if (r < 0)
                return r;
        *ret = DSA__TAKE_PTR(b);
        return 0;
}

DSA_EXPORT int dsa_client_new(const char *address, struct dsa_client **ret) {
        struct dsa_client *c;
        int r;

        if (!ret)
                return -EINVAL;
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->n_ref = 1;
        r = bus_open(address, &c->bus);
        if (r < 0)
                goto fail;
        /* Installed before any session exists, so dsad's death after an OpenSession reply is
         * always seen. */
        r = sd_bus_add_match(c->bus, &c->owner_match,
                             "type='signal',sender='org.freedesktop.DBus',"
                             "path='/org/freedesktop/DBus',interface='org.freedesktop.DBus',"
                             "member='NameOwnerChanged',arg0='" DSA__BUS_NAME "'",
                             on_name_owner_changed, c);
        if (r < 0)
                goto fail;
        *ret = c;
        return 0;
fail:
        dsa__client_unref(c);
        return r;
}

struct dsa_client *dsa__client_ref(struct dsa_client *c) {
        c->n_ref++;
        return c;
}

struct dsa_client *dsa__client_unref(struct dsa_client *c) {
        if (!c || --c->n_ref > 0)
                return NULL;
        sd_bus_slot_unref(c->owner_match);
        sd_bus_flush_close_unref(c->bus);
        free(c->error_message);
        free(c);
        return NULL;
}

DSA_EXPORT struct dsa_client *dsa_client_free(struct dsa_client *c) {
        return dsa__client_unref(c);
}

DSA_EXPORT const char *dsa_client_error_message(const struct dsa_client *c) {
        return c ? c->error_message : NULL;
}

/* Calls a method of org.dsa.Daemon1; the reply in *ret when ret is not NULL. Processes what the
 * call queued afterwards, so a NameOwnerChanged read meanwhile still reaches the sessions. */
int dsa__client_call(struct dsa_client *c, const char *method, sd_bus_message **ret,
                     const char *types, ...) {
        _cleanup_bus_error_ sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_bus_message_ sd_bus_message *m = NULL, *reply = NULL;
        va_list ap;
        int r;

        dsa__client_clear_error(c);
        if (c->bus_error < 0)
                return c->bus_error;
        r = sd_bus_message_new_method_call(c->bus, &m, DSA__BUS_NAME, DSA__BUS_PATH,
                                           DSA__BUS_IFACE, method);
        if (r < 0)
                return r;
        if (types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
                if (r < 0)
                        return r;
        }
        r = sd_bus_call(c->bus, m, 0, &e, &reply);
        (void) dsa__client_process(c);
        if (r < 0)
                return dsa__client_fail(c, &e, r);
        if (ret)
                *ret = DSA__TAKE_PTR(reply);
        return 0;
}

static char *strdup_or_null(const char *s, bool *oom) {
        char *d;

        if (!s)
                return NULL;
        d = strdup(s);
        if (!d)
                *oom = true;
        return d;
}

DSA_EXPORT struct dsa_model_info *dsa_model_info_free(struct dsa_model_info *m, size_t n) {
        if (!m)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                free(m[i].name);
                free(m[i].architecture);
        }
        free(m);
        return NULL;
}

DSA_EXPORT int dsa_client_list_models(struct dsa_client *c, struct dsa_model_info **ret,
                                      size_t *ret_n) {
        _cleanup_bus_message_ sd_bus_message *reply = NULL;
        struct dsa_model_info *v = NULL;
        size_t n = 0;
        bool oom = false;
        int r;

        if (!c || !ret || !ret_n)
                return -EINVAL;
        r = dsa__client_call(c, "ListModels", &reply, NULL);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "(sbsuu)");
        if (r < 0)
                return r;
        for (;;) {
                const char *name, *arch;
                int loaded;
                uint32_t hidden, labels;
                struct dsa_model_info *nv;

                r = sd_bus_message_read(reply, "(sbsuu)", &name, &loaded, &arch, &hidden, &labels);
                if (r < 0)
                        goto fail;
                if (r == 0)
                        break;
                nv = reallocarray(v, n + 1, sizeof(*v));
                if (!nv) {
                        r = -ENOMEM;
                        goto fail;
                }
                v = nv;
                v[n++] = (struct dsa_model_info) {
                        .name = strdup_or_null(name, &oom),
                        .loaded = loaded,
                        .architecture = strdup_or_null(arch, &oom),
                        .hidden_size = hidden,
                        .n_labels = labels,
                };
                if (oom) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        *ret = v;
        *ret_n = n;
        return 0;
fail:
        dsa_model_info_free(v, n);
        return r;
}

static int call_name(struct dsa_client *c, const char *method, const char *name) {
        if (!c || !name)
                return -EINVAL;
        return dsa__client_call(c, method, NULL, "s", name);
}

DSA_EXPORT int dsa_client_load_model(struct dsa_client *c, const char *name) {
        return call_name(c, "LoadModel", name);
}

DSA_EXPORT int dsa_client_unload_model(struct dsa_client *c, const char *name) {
        return call_name(c, "UnloadModel", name);
}

DSA_EXPORT struct dsa_status *dsa_status_free(struct dsa_status *s) {
        if (s) {
                free(s->version);
                free(s);
        }
        return NULL;
}

/* Reads a variant holding the given basic type into p, or skips it when dsad sent another. */
static int read_variant(sd_bus_message *m, char type, void *p) {
        const char sig[2] = { type, 0 };
        int r;

        r = sd_bus_message_enter_container(m, 'v', sig);
        if (r == -ENXIO || r == 0)
                return sd_bus_message_skip(m, "v");
        if (r < 0)
                return r;
        r = sd_bus_message_read_basic(m, type, p);
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

DSA_EXPORT int dsa_client_status(struct dsa_client *c, struct dsa_status **ret) {
        _cleanup_bus_message_ sd_bus_message *reply = NULL;
        struct dsa_status *s;
        int r;

        if (!c || !ret)
                return -EINVAL;
        r = dsa__client_call(c, "GetStatus", &reply, NULL);
        if (r < 0)
                return r;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        if (r < 0)
                goto fail;
        for (;;) {
                const char *key;

                r = sd_bus_message_enter_container(reply, 'e', "sv");
                if (r < 0)
                        goto fail;
                if (r == 0)
                        break;
                r = sd_bus_message_read_basic(reply, 's', &key);
                if (r < 0)
                        goto fail;
                if (strcmp(key, "Version") == 0) {
                        const char *v = NULL;
                        r = read_variant(reply, 's', &v);
                        if (r >= 0 && v && !s->version && !(s->version = strdup(v)))
                                r = -ENOMEM;
                } else if (strcmp(key, "Models") == 0)
                        r = read_variant(reply, 'u', &s->models);
                else if (strcmp(key, "LoadedModels") == 0)
                        r = read_variant(reply, 'u', &s->loaded_models);
                else if (strcmp(key, "Sessions") == 0)
                        r = read_variant(reply, 'u', &s->sessions);
                else if (strcmp(key, "QueueDepth") == 0)
                        r = read_variant(reply, 'u', &s->queue_depth);
                else if (strcmp(key, "Workers") == 0)
                        r = read_variant(reply, 'u', &s->workers);
                else if (strcmp(key, "RequestsCompleted") == 0)
                        r = read_variant(reply, 't', &s->requests_completed);
                else if (strcmp(key, "RequestsFailed") == 0)
                        r = read_variant(reply, 't', &s->requests_failed);
                else if (strcmp(key, "UptimeSeconds") == 0)
                        r = read_variant(reply, 't', &s->uptime_seconds);
                else
                        r = sd_bus_message_skip(reply, "v");
                if (r < 0)
                        goto fail;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        goto fail;
        }
        *ret = s;
        return 0;
fail:
        dsa_status_free(s);
        return r;
}

DSA_EXPORT struct dsa_session_info *dsa_session_info_free(struct dsa_session_info *s, size_t n) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                free(s[i].id);
                free(s[i].owner);
        }
        free(s);
        return NULL;
}

DSA_EXPORT int dsa_client_list_sessions(struct dsa_client *c, struct dsa_session_info **ret,
                                        size_t *ret_n) {
        _cleanup_bus_message_ sd_bus_message *reply = NULL;
        struct dsa_session_info *v = NULL;
        size_t n = 0;
        bool oom = false;
        int r;

        if (!c || !ret || !ret_n)
                return -EINVAL;
        r = dsa__client_call(c, "ListSessions", &reply, NULL);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "(ssuuttt)");
        if (r < 0)
                return r;
        for (;;) {
                const char *id, *owner;
                uint32_t uid, reserved;
                uint64_t done, failed, bytes;
                struct dsa_session_info *nv;

                r = sd_bus_message_read(reply, "(ssuuttt)", &id, &owner, &uid, &reserved, &done,
                                        &failed, &bytes);
                if (r < 0)
                        goto fail;
                if (r == 0)
                        break;
                nv = reallocarray(v, n + 1, sizeof(*v));
                if (!nv) {
                        r = -ENOMEM;
                        goto fail;
                }
                v = nv;
                v[n++] = (struct dsa_session_info) {
                        .id = strdup_or_null(id, &oom),
                        .owner = strdup_or_null(owner, &oom),
                        .uid = uid,
                        .requests_completed = done,
                        .requests_failed = failed,
                        .shm_bytes = bytes,
                };
                if (oom) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        *ret = v;
        *ret_n = n;
        return 0;
fail:
        dsa_session_info_free(v, n);
        return r;
}
