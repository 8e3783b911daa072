/* org.dsa.Daemon1 on /org/dsa/Daemon1 (docs/dbus-api.md): the daemon's object, its admin,
 * session and status methods and properties, and the setup of all the D-Bus objects of dsad.
 * Classify, Embed and Tokenize live in api-infer.c, the org.dsa.Model1 objects in
 * api-model.c. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>

#include "api-internal.h"
#include "basic/error.h"
#include "basic/time-util.h"
#include "polkit.h"

/* polkit action of LoadModel and UnloadModel (packaging/org.dsa.Daemon1.policy). */
#define MANAGE_MODELS_ACTION "org.dsa.manage-models"

/* ---- helpers */

/* The argument of the methods that take only a model name ("s"), checked. */
static int read_model_name(sd_bus_message *m, const char **ret, sd_bus_error *error) {
        const char *name;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        r = dsad__api_check_model_name(name, error);
        if (r < 0)
                return r;
        *ret = name;
        return 0;
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

/* LoadModel and UnloadModel once polkit allowed them (dsad_polkit_done_t): m is read from its
 * start again, as the check may have come back later. */
static int load_model_authorized(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        struct dsad_model *model;
        const char *name;
        int r;

        r = sd_bus_message_rewind(m, true);
        if (r >= 0)
                r = read_model_name(m, &name, error);
        if (r < 0)
                return r;
        dsa_error_clear();
        r = dsad_registry_load(d, name, &model);
        if (r < 0)
                return dsad__api_model_error(r, name, error);
        dsad_model_unref(model);
        return sd_bus_reply_method_return(m, NULL);
}

static int unload_model_authorized(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        const char *name;
        int r;

        r = sd_bus_message_rewind(m, true);
        if (r >= 0)
                r = read_model_name(m, &name, error);
        if (r < 0)
                return r;
        r = dsad_registry_unload(d, name);
        if (r < 0)
                return dsad__api_model_error(r, name, error);
        return sd_bus_reply_method_return(m, NULL);
}

/* The name is checked before polkit is asked, so a bad one fails at once. */
static int manage_model(sd_bus_message *m, void *userdata, sd_bus_error *error, dsad_polkit_done_t done) {
        const char *name;
        int r;

        r = read_model_name(m, &name, error);
        if (r < 0)
                return r;
        r = dsad_polkit_check_async(sd_bus_message_get_bus(m), m, MANAGE_MODELS_ACTION, done, userdata, error);
        if (r != 0)
                return r; /* asked (1: answered later), or refused */
        return done(m, userdata, error);
}

static int method_load_model(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return manage_model(m, userdata, error, load_model_authorized);
}

static int method_unload_model(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return manage_model(m, userdata, error, unload_model_authorized);
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
        r = dsad__api_check_model_name(name, error);
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
        if (r == -EDQUOT)
                return sd_bus_error_setf(error, ERROR_LIMIT_EXCEEDED, "Per-user limit: %s", dsa_error_message(r));
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return dsad__api_model_error(r, name, error);

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

/* ---- vtables */

static const sd_bus_vtable daemon_vtable[] = {
        SD_BUS_VTABLE_START(0),

        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Sessions", "u", property_get_sessions, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LoadedModels", "as", property_get_loaded_models, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("QueueDepth", "u", property_get_queue_depth, 0, 0),
        SD_BUS_PROPERTY("Workers", "u", property_get_workers, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        /* The adaptive policy (api-policy.c). */
        SD_BUS_WRITABLE_PROPERTY("Policy", "s", dsad__api_policy_get, dsad__api_policy_set, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("LatencyTarget", "d", dsad__api_policy_get, dsad__api_policy_set, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("PowerBudget", "d", dsad__api_policy_get, dsad__api_policy_set, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_WRITABLE_PROPERTY("MinAccuracy", "d", dsad__api_policy_get, dsad__api_policy_set, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("OnBattery", "b", dsad__api_policy_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BatteryPercentage", "d", dsad__api_policy_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("PowerProfile", "s", dsad__api_policy_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Power", "d", dsad__api_policy_get, 0, 0),

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
                                dsad__api_method_classify, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Embed",
                                SD_BUS_ARGS("s", model, "as", texts, "s", pool),
                                SD_BUS_RESULT("aad", embeddings),
                                dsad__api_method_embed, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Tokenize",
                                SD_BUS_ARGS("s", model, "as", texts, "b", special),
                                SD_BUS_RESULT("a(aias)", tokens),
                                dsad__api_method_tokenize, SD_BUS_VTABLE_UNPRIVILEGED),
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

        SD_BUS_METHOD_WITH_ARGS("GetPolicy",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a{sv}", policy),
                                dsad__api_method_get_policy, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetVariants",
                                SD_BUS_ARGS("s", model),
                                SD_BUS_RESULT("a(sbddttda(ud))", variants),
                                dsad__api_method_get_variants, SD_BUS_VTABLE_UNPRIVILEGED),

        SD_BUS_SIGNAL_WITH_ARGS("VariantChanged", SD_BUS_ARGS("s", model, "s", variant, "s", reason), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ModelLoaded", SD_BUS_ARGS("s", name), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ModelUnloaded", SD_BUS_ARGS("s", name), 0),

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

        r = uv_async_init(d->loop, &api->async, dsad__api_on_async);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, -EIO, "Failed to set up the reply wake-up: %s", uv_strerror(r));
        api->async.data = api;
        api->async_open = true;

        r = sd_bus_add_object_vtable(d->bus, &api->slot_daemon, OBJECT_PATH, INTERFACE, daemon_vtable, d);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to add the %s object: %m", OBJECT_PATH);
        return dsad__api_model_add(d, api);
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
        dsad__api_dispatch_done(api);
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
                char *path = dsad__api_model_path(name);

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
