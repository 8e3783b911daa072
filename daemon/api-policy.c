/* The adaptive policy on D-Bus (docs/dbus-api.md, "The adaptive policy"): org.dsa.Daemon1's
 * policy properties (the writable ones behind polkit action org.dsa.policy), GetPolicy,
 * GetVariants and VariantChanged, and org.dsa.Model1's Variants, CurrentVariant and
 * VariantReason. api.c and api-model.c put these handlers in their vtables. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "api-internal.h"
#include "polkit.h"

#define POLICY_ACTION "org.dsa.policy"

/* ---- helpers */

/* The ladder of a loaded model, or NULL with NotLoaded/NoSuchModel in error. */
static struct dsad_ladder *loaded_ladder(struct dsad *d, const char *name, struct dsad_model **ret,
                                         sd_bus_error *error) {
        struct dsad_model *m;
        int r = dsad__api_check_model_name(name, error);

        if (r < 0)
                return NULL;
        r = dsad_registry_find(d, name, &m);
        if (r < 0) {
                dsad__api_model_error(r, name, error);
                return NULL;
        }
        if (!dsad_model_loaded(m) || !dsad_model_ladder(m)) {
                dsad__api_model_error(-ESRCH, name, error);
                return NULL;
        }
        *ret = m;
        return dsad_model_ladder(m);
}

/* ---- org.dsa.Daemon1 */

int dsad__api_method_get_policy(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        struct dsad *d = userdata;
        struct dsad_policy_settings s;
        struct dsad_policy_signals g;
        struct dsad_policy_effective e;
        struct dsad_adaptive_state st;
        char mode[64];
        int r;

        dsad_policy_get_settings(d->policy, &s);
        dsad_policy_get_signals(d->policy, &g);
        dsad_policy_effective(d->policy, &e);
        dsad_adaptive_state(d, &st);
        dsad_policy_format_mode(&s, mode, sizeof(mode));
        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_append(
                reply, "a{sv}", 15,
                "Policy", "s", mode,
                "LatencyTarget", "d", e.latency_target_ms,
                "PowerBudget", "d", e.power_budget_w,
                "MinAccuracy", "d", e.min_accuracy,
                "Forced", "s", e.cheapest ? e.why : "",
                "OnBattery", "b", g.on_battery,
                "BatteryPercentage", "d", isnan(g.battery_percent) ? -1.0 : g.battery_percent,
                "PowerProfile", "s", g.profile,
                "Power", "d", isnan(st.power_w) ? -1.0 : st.power_w,
                "PackagePower", "d", st.package_w,
                "PowerSource", "s", st.power_source,
                "CoreWatts", "d", st.core_watts,
                "CpuPressure", "d", st.cpu_pressure,
                "ArrivalRate", "d", st.arrival_rate,
                "QueueDepth", "u", d->scheduler ? dsad_scheduler_depth(d->scheduler) : 0u);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

int dsad__api_method_get_variants(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        struct dsad *d = userdata;
        struct dsad_policy_signals g;
        struct dsad_model *model;
        struct dsad_ladder *l;
        const char *name;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r < 0)
                return r;
        l = loaded_ladder(d, name, &model, error);
        if (!l)
                return -sd_bus_error_get_errno(error);
        dsad_policy_get_signals(d->policy, &g);
        r = sd_bus_message_new_method_return(m, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(sbddttda(ud))");
        pthread_mutex_lock(&l->lock);
        for (size_t i = 0; r >= 0 && i < l->n; i++) {
                const struct dsad_rung *g_ = &l->rungs[i];
                r = sd_bus_message_open_container(reply, 'r', "sbddttda(ud)");
                if (r >= 0)
                        r = sd_bus_message_append(reply, "sbddttd", g_->name, i == l->level,
                                                  isnan(g_->kept) ? -1.0 : g_->kept,
                                                  isnan(g_->accuracy) ? -1.0 : g_->accuracy, g_->weight_bytes,
                                                  g_->served,
                                                  dsad_policy_power_w(l, i, 1.0, 32, g.core_watts));
                if (r >= 0)
                        r = sd_bus_message_open_container(reply, 'a', "(ud)");
                for (unsigned b = 0; r >= 0 && b < DSAD_POLICY_BUCKETS; b++)
                        if (g_->lat_ms[b] > 0)
                                r = sd_bus_message_append(reply, "(ud)", 8u << b, g_->lat_ms[b]);
                if (r >= 0)
                        r = sd_bus_message_close_container(reply);
                if (r >= 0)
                        r = sd_bus_message_close_container(reply);
        }
        pthread_mutex_unlock(&l->lock);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

int dsad__api_policy_get(sd_bus *bus, const char *path, const char *interface, const char *property,
                         sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        struct dsad_policy_settings s;
        struct dsad_policy_signals g;
        struct dsad_adaptive_state st;
        char mode[64];

        dsad_policy_get_settings(d->policy, &s);
        dsad_policy_get_signals(d->policy, &g);
        if (strcmp(property, "Policy") == 0) {
                dsad_policy_format_mode(&s, mode, sizeof(mode));
                return sd_bus_message_append(reply, "s", mode);
        }
        if (strcmp(property, "LatencyTarget") == 0)
                return sd_bus_message_append(reply, "d", s.latency_target_ms);
        if (strcmp(property, "PowerBudget") == 0)
                return sd_bus_message_append(reply, "d", s.power_budget_w);
        if (strcmp(property, "MinAccuracy") == 0)
                return sd_bus_message_append(reply, "d", s.min_accuracy);
        if (strcmp(property, "OnBattery") == 0)
                return sd_bus_message_append(reply, "b", g.on_battery);
        if (strcmp(property, "BatteryPercentage") == 0)
                return sd_bus_message_append(reply, "d", isnan(g.battery_percent) ? -1.0 : g.battery_percent);
        if (strcmp(property, "PowerProfile") == 0)
                return sd_bus_message_append(reply, "s", g.profile);
        dsad_adaptive_state(d, &st);
        return sd_bus_message_append(reply, "d", isnan(st.power_w) ? -1.0 : st.power_w);
}

int dsad__api_policy_set(sd_bus *bus, const char *path, const char *interface, const char *property,
                         sd_bus_message *value, void *userdata, sd_bus_error *error) {
        struct dsad *d = userdata;
        struct dsad_policy_settings s = d->config.policy;
        int r;

        r = dsad_polkit_check(bus, value, POLICY_ACTION, error);
        if (r < 0)
                return r;
        if (strcmp(property, "Policy") == 0) {
                const char *mode;
                r = sd_bus_message_read(value, "s", &mode);
                if (r < 0)
                        return r;
                if (dsad_policy_parse_mode(mode, &s) < 0)
                        return sd_bus_error_setf(error, ERROR_INVALID_ARGS,
                                                 "Policy must be 'adaptive' or 'fixed:VARIANT', not '%.80s'", mode);
        } else {
                double v;
                r = sd_bus_message_read(value, "d", &v);
                if (r < 0)
                        return r;
                if (strcmp(property, "LatencyTarget") == 0) {
                        if (!(v > 0 && v <= 3.6e6))
                                return sd_bus_error_setf(error, ERROR_INVALID_ARGS,
                                                         "LatencyTarget must be in (0, 3600000] ms");
                        s.latency_target_ms = v;
                } else if (strcmp(property, "PowerBudget") == 0) {
                        if (!(v >= 0 && v <= 1e5))
                                return sd_bus_error_setf(error, ERROR_INVALID_ARGS,
                                                         "PowerBudget must be in [0, 100000] W (0: none)");
                        s.power_budget_w = v;
                } else {
                        if (!(v >= 0 && v <= 1))
                                return sd_bus_error_setf(error, ERROR_INVALID_ARGS, "MinAccuracy must be in [0, 1]");
                        s.min_accuracy = v;
                }
        }
        d->config.policy = s;
        dsad_log(LOG_INFO, "Policy setting %s changed over D-Bus.", property);
        dsad_adaptive_settings_changed(d);
        (void) sd_bus_emit_properties_changed(bus, OBJECT_PATH, INTERFACE, property, NULL);
        return 1;
}

/* ---- org.dsa.Model1 (userdata: the model) */

int dsad__api_model_policy_get(struct dsad_model *model, const char *property, sd_bus_message *reply) {
        struct dsad_ladder *l = dsad_model_loaded(model) ? dsad_model_ladder(model) : NULL;
        int r;

        if (strcmp(property, "Variants") == 0) {
                r = sd_bus_message_open_container(reply, 'a', "s");
                for (size_t i = 0; r >= 0 && l && i < l->n; i++)
                        r = sd_bus_message_append(reply, "s", l->rungs[i].name);
                return r < 0 ? r : sd_bus_message_close_container(reply);
        }
        if (!l)
                return sd_bus_message_append(reply, "s", "");
        pthread_mutex_lock(&l->lock);
        if (strcmp(property, "CurrentVariant") == 0)
                r = sd_bus_message_append(reply, "s", l->rungs[l->level].name);
        else
                r = sd_bus_message_append(reply, "s", l->reason);
        pthread_mutex_unlock(&l->lock);
        return r;
}

/* ---- signals */

void dsad_api_variant_changed(struct dsad *d, const char *model, const char *variant, const char *reason) {
        _cleanup_free_ char *path = NULL;

        if (!d->bus || !d->api)
                return;
        path = dsad__api_model_path(model);
        (void) sd_bus_emit_signal(d->bus, OBJECT_PATH, INTERFACE, "VariantChanged", "sss", model, variant, reason);
        if (path)
                (void) sd_bus_emit_properties_changed(d->bus, path, MODEL_INTERFACE, "CurrentVariant",
                                                      "VariantReason", NULL);
        dsad_bus_flush(d);
}

void dsad_api_power_changed(struct dsad *d, bool battery, bool percent, bool profile) {
        char *names[4];
        size_t n = 0;

        if (!d->bus || !d->api)
                return;
        if (battery)
                names[n++] = (char *) "OnBattery";
        if (percent)
                names[n++] = (char *) "BatteryPercentage";
        if (profile)
                names[n++] = (char *) "PowerProfile";
        names[n] = NULL;
        if (n == 0)
                return;
        (void) sd_bus_emit_properties_changed_strv(d->bus, OBJECT_PATH, INTERFACE, names);
        dsad_bus_flush(d);
}
