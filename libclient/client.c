/* The D-Bus half of libdsa: the connection to dsad, the control methods of org.dsa.Daemon1
 * (docs/dbus-api.md), the mapping of its errors to errnos, and watching dsad's name so that
 * sessions learn of its death. */
#include <math.h>
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

/* A new method call to dsad (the caller appends the arguments). */
static int client_new_call(struct dsa_client *c, const char *path, const char *iface,
                           const char *method, sd_bus_message **ret) {
        dsa__client_clear_error(c);
        if (c->bus_error < 0)
                return c->bus_error;
        return sd_bus_message_new_method_call(c->bus, ret, DSA__BUS_NAME, path, iface, method);
}

/* Sends m and waits for the reply (timeout_usec, 0: sd-bus's default), in *ret when ret is not
 * NULL. Processes what the call queued afterwards, so a NameOwnerChanged read meanwhile still
 * reaches the sessions. */
static int client_send_timeout(struct dsa_client *c, sd_bus_message *m, uint64_t timeout_usec,
                               sd_bus_message **ret) {
        _cleanup_bus_error_ sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_bus_message_ sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_call(c->bus, m, timeout_usec, &e, &reply);
        (void) dsa__client_process(c);
        if (r < 0)
                return dsa__client_fail(c, &e, r);
        if (ret)
                *ret = DSA__TAKE_PTR(reply);
        return 0;
}

static int client_send(struct dsa_client *c, sd_bus_message *m, sd_bus_message **ret) {
        return client_send_timeout(c, m, 0, ret);
}

/* Admin calls (dsad asks polkit): an authentication agent may ask the user for a password,
 * which takes longer than sd-bus's default 25 s. */
#define ADMIN_TIMEOUT_USEC (150ull * 1000ull * 1000ull)

static int client_send_admin(struct dsa_client *c, sd_bus_message *m) {
        int r = sd_bus_message_set_allow_interactive_authorization(m, 1);
        if (r < 0)
                return r;
        return client_send_timeout(c, m, ADMIN_TIMEOUT_USEC, NULL);
}

int dsa__client_call(struct dsa_client *c, const char *method, sd_bus_message **ret,
                     const char *types, ...) {
        _cleanup_bus_message_ sd_bus_message *m = NULL;
        va_list ap;
        int r;

        r = client_new_call(c, DSA__BUS_PATH, DSA__BUS_IFACE, method, &m);
        if (r < 0)
                return r;
        if (types) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
                if (r < 0)
                        return r;
        }
        return client_send(c, m, ret);
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
        _cleanup_bus_message_ sd_bus_message *m = NULL;
        int r;

        if (!c || !name)
                return -EINVAL;
        r = client_new_call(c, DSA__BUS_PATH, DSA__BUS_IFACE, method, &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "s", name);
        if (r < 0)
                return r;
        return client_send_admin(c, m);
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

/* Reads a variant holding the given basic type into p (1), or skips it when dsad sent another
 * (0). */
static int read_variant(sd_bus_message *m, char type, void *p) {
        const char sig[2] = { type, 0 };
        int r;

        r = sd_bus_message_enter_container(m, 'v', sig);
        if (r == -ENXIO || r == 0) {
                r = sd_bus_message_skip(m, "v");
                return r < 0 ? r : 0;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_read_basic(m, type, p);
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        return r < 0 ? r : 1;
}

/* One key of an a{sv} dictionary dsad sends and where it goes in a struct: type 's' a char *
 * (strdup'ed; the first of duplicate keys wins), 'b' an int, 'u' a uint32_t, 'U' a D-Bus u
 * into an int64_t, 't' a uint64_t, 'd' a double. */
struct dict_field {
        const char *key;
        char type;
        size_t offset;
};

static int read_dict_field(sd_bus_message *m, const struct dict_field *f, void *base) {
        void *p = (uint8_t *) base + f->offset;
        const char *str = NULL;
        uint32_t u;
        int r;

        switch (f->type) {
        case 's':
                r = read_variant(m, 's', &str);
                if (r > 0 && !*(char **) p && !(*(char **) p = strdup(str)))
                        r = -ENOMEM;
                return r;
        case 'U':
                r = read_variant(m, 'u', &u);
                if (r > 0)
                        *(int64_t *) p = u;
                return r;
        default:
                return read_variant(m, f->type, p);
        }
}

/* Reads the a{sv} dictionary at m's position into base as fields[] says; other keys are
 * skipped. */
static int read_dict(sd_bus_message *m, const struct dict_field *fields, size_t n_fields, void *base) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                const struct dict_field *f = NULL;
                const char *key;

                r = sd_bus_message_enter_container(m, 'e', "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < n_fields && !f; i++)
                        if (strcmp(key, fields[i].key) == 0)
                                f = &fields[i];
                r = f ? read_dict_field(m, f, base) : sd_bus_message_skip(m, "v");
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_exit_container(m);
}

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

DSA_EXPORT int dsa_client_status(struct dsa_client *c, struct dsa_status **ret) {
        static const struct dict_field fields[] = {
                { "Version", 's', offsetof(struct dsa_status, version) },
                { "Models", 'u', offsetof(struct dsa_status, models) },
                { "LoadedModels", 'u', offsetof(struct dsa_status, loaded_models) },
                { "Sessions", 'u', offsetof(struct dsa_status, sessions) },
                { "QueueDepth", 'u', offsetof(struct dsa_status, queue_depth) },
                { "Workers", 'u', offsetof(struct dsa_status, workers) },
                { "RequestsCompleted", 't', offsetof(struct dsa_status, requests_completed) },
                { "RequestsFailed", 't', offsetof(struct dsa_status, requests_failed) },
                { "UptimeSeconds", 't', offsetof(struct dsa_status, uptime_seconds) },
        };
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
        r = read_dict(reply, fields, ELEMENTSOF(fields), s);
        if (r < 0) {
                dsa_status_free(s);
                return r;
        }
        *ret = s;
        return 0;
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

/* ---- The adaptive policy */

DSA_EXPORT struct dsa_policy *dsa_policy_free(struct dsa_policy *p) {
        if (p) {
                free(p->mode);
                free(p->power_profile);
                free(p->power_source);
                free(p);
        }
        return NULL;
}

DSA_EXPORT int dsa_client_get_policy(struct dsa_client *c, struct dsa_policy **ret) {
        static const struct dict_field fields[] = {
                { "Policy", 's', offsetof(struct dsa_policy, mode) },
                { "LatencyTarget", 'd', offsetof(struct dsa_policy, latency_target_ms) },
                { "PowerBudget", 'd', offsetof(struct dsa_policy, power_budget_w) },
                { "MinAccuracy", 'd', offsetof(struct dsa_policy, min_accuracy) },
                { "OnBattery", 'b', offsetof(struct dsa_policy, on_battery) },
                { "BatteryPercentage", 'd', offsetof(struct dsa_policy, battery_percentage) },
                { "PowerProfile", 's', offsetof(struct dsa_policy, power_profile) },
                { "Power", 'd', offsetof(struct dsa_policy, power_w) },
                { "PackagePower", 'd', offsetof(struct dsa_policy, package_power_w) },
                { "PowerSource", 's', offsetof(struct dsa_policy, power_source) },
                { "CoreWatts", 'd', offsetof(struct dsa_policy, core_watts) },
                { "CpuPressure", 'd', offsetof(struct dsa_policy, cpu_pressure) },
                { "ArrivalRate", 'd', offsetof(struct dsa_policy, arrival_rate) },
                { "QueueDepth", 'U', offsetof(struct dsa_policy, queue_depth) },
        };
        _cleanup_bus_message_ sd_bus_message *reply = NULL;
        struct dsa_policy *p;
        int r;

        if (!c || !ret)
                return -EINVAL;
        r = dsa__client_call(c, "GetPolicy", &reply, NULL);
        if (r < 0)
                return r;
        p = malloc(sizeof(*p));
        if (!p)
                return -ENOMEM;
        *p = (struct dsa_policy) {
                .latency_target_ms = -1, .power_budget_w = -1, .min_accuracy = -1,
                .on_battery = -1, .battery_percentage = -1, .power_w = -1,
                .package_power_w = -1, .core_watts = -1, .cpu_pressure = -1,
                .arrival_rate = -1, .queue_depth = -1,
        };
        r = read_dict(reply, fields, ELEMENTSOF(fields), p);
        if (r < 0) {
                dsa_policy_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

/* Sets a property of org.dsa.Daemon1 to value, of D-Bus basic type type. */
static int set_property(struct dsa_client *c, const char *property, char type, const void *value) {
        _cleanup_bus_message_ sd_bus_message *m = NULL;
        const char sig[2] = { type, 0 };
        int r;

        r = client_new_call(c, DSA__BUS_PATH, "org.freedesktop.DBus.Properties", "Set", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "ss", DSA__BUS_IFACE, property);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'v', sig);
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, type, value);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;
        return client_send(c, m, NULL);
}

DSA_EXPORT int dsa_client_set_latency_target(struct dsa_client *c, double ms) {
        if (!c || !(ms > 0 && isfinite(ms)))
                return -EINVAL;
        return set_property(c, "LatencyTarget", 'd', &ms);
}

DSA_EXPORT int dsa_client_set_power_budget(struct dsa_client *c, double watts) {
        if (!c || !(watts >= 0 && isfinite(watts)))
                return -EINVAL;
        return set_property(c, "PowerBudget", 'd', &watts);
}

DSA_EXPORT int dsa_client_set_min_accuracy(struct dsa_client *c, double accuracy) {
        if (!c || !(accuracy >= 0 && accuracy <= 1))
                return -EINVAL;
        return set_property(c, "MinAccuracy", 'd', &accuracy);
}

DSA_EXPORT int dsa_client_set_policy_mode(struct dsa_client *c, const char *mode) {
        if (!c || !mode || (strcmp(mode, "adaptive") != 0 && strncmp(mode, "fixed:", 6) != 0))
                return -EINVAL;
        return set_property(c, "Policy", 's', mode);
}

DSA_EXPORT struct dsa_variant_info *dsa_variant_info_free(struct dsa_variant_info *v, size_t n) {
        if (!v)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                free(v[i].name);
                free(v[i].latency);
        }
        free(v);
        return NULL;
}

/* The a(ud) latency table of one rung. */
static int read_latency(sd_bus_message *m, struct dsa_variant_info *v) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "(ud)");
        if (r < 0)
                return r;
        for (;;) {
                struct dsa_variant_latency l, *nl;

                r = sd_bus_message_read(m, "(ud)", &l.tokens, &l.ms);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                nl = reallocarray(v->latency, v->n_latency + 1, sizeof(*nl));
                if (!nl)
                        return -ENOMEM;
                v->latency = nl;
                v->latency[v->n_latency++] = l;
        }
        return sd_bus_message_exit_container(m);
}

DSA_EXPORT int dsa_client_get_variants(struct dsa_client *c, const char *model,
                                       struct dsa_variant_info **ret, size_t *ret_n) {
        _cleanup_bus_message_ sd_bus_message *reply = NULL;
        struct dsa_variant_info *v = NULL;
        size_t n = 0;
        int r;

        if (!c || !model || !ret || !ret_n)
                return -EINVAL;
        r = dsa__client_call(c, "GetVariants", &reply, "s", model);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "(sbddttda(ud))");
        if (r < 0)
                return r;
        for (;;) {
                struct dsa_variant_info *nv;
                const char *name;
                int current;

                r = sd_bus_message_enter_container(reply, 'r', "sbddttda(ud)");
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
                v[n] = (struct dsa_variant_info) {};
                r = sd_bus_message_read(reply, "sbddttd", &name, &current, &v[n].accuracy_kept,
                                        &v[n].accuracy, &v[n].weight_bytes, &v[n].requests,
                                        &v[n].energy_j);
                if (r < 0)
                        goto fail;
                v[n].current = current;
                /* Counted now, so that a failure below frees what this entry holds. */
                n++;
                v[n - 1].name = strdup(name);
                if (!v[n - 1].name) {
                        r = -ENOMEM;
                        goto fail;
                }
                r = read_latency(reply, &v[n - 1]);
                if (r < 0)
                        goto fail;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        goto fail;
        }
        *ret = v;
        *ret_n = n;
        return 0;
fail:
        dsa_variant_info_free(v, n);
        return r;
}

/* Reads a string property of model's org.dsa.Model1 object into *ret (may be NULL: skipped). */
static int get_model_string(struct dsa_client *c, const char *model, const char *property,
                            char **ret) {
        _cleanup_bus_message_ sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *path = NULL;
        const char *v;
        char *d;
        int r;

        if (!ret)
                return 0;
        r = sd_bus_path_encode(DSA__MODEL_PATH, model, &path);
        if (r < 0)
                return r;
        r = client_new_call(c, path, "org.freedesktop.DBus.Properties", "Get", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "ss", DSA__MODEL_IFACE, property);
        if (r < 0)
                return r;
        r = client_send(c, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "v", "s", &v);
        if (r < 0)
                return r;
        d = strdup(v);
        if (!d)
                return -ENOMEM;
        *ret = d;
        return 0;
}

DSA_EXPORT int dsa_client_get_current_variant(struct dsa_client *c, const char *model,
                                              char **ret_variant, char **ret_reason) {
        _cleanup_free_ char *variant = NULL, *reason = NULL;
        int r;

        if (!c || !model || !model[0])
                return -EINVAL;
        r = get_model_string(c, model, "CurrentVariant", ret_variant ? &variant : NULL);
        if (r < 0)
                return r;
        r = get_model_string(c, model, "VariantReason", ret_reason ? &reason : NULL);
        if (r < 0)
                return r;
        if (ret_variant)
                *ret_variant = DSA__TAKE_PTR(variant);
        if (ret_reason)
                *ret_reason = DSA__TAKE_PTR(reason);
        return 0;
}
