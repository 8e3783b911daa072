/* The adaptive policy's loop side (policy.h): a tick that reads dsad's power (RAPL-calibrated
 * CPU-time model, power.h) and CPU pressure and lets the policy move power floors and forced
 * rungs; the UPower / power-profiles-daemon watcher (powerbus.h), whose changes re-evaluate at
 * once; and the announcements of what changed (VariantChanged, PropertiesChanged), which
 * workers request through a uv_async since they may not touch sd-bus. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "api-internal.h"
#include "basic/time-util.h"
#include "daemon.h"
#include "power.h"
#include "powerbus.h"

#define LADDERS_MAX 64u

struct dsad_adaptive {
        struct dsad *d;
        uv_timer_t tick;
        uv_async_t wake;
        unsigned n_open;
        struct dsad_power_meter *meter;
        struct dsad_powerbus *bus;
        uint64_t last_tick_usec;
        struct dsad_adaptive_state state;
        struct dsad_power_signals power; /* last from the watcher */
};

/* ---- helpers */

static size_t loaded_ladders(struct dsad *d, struct dsad_ladder **ladders, struct dsad_model **models) {
        size_t n = 0;
        for (struct dsad_model *m = d->models; m && n < LADDERS_MAX; m = dsad_model_next(m))
                if (dsad_model_loaded(m) && dsad_model_ladder(m)) {
                        ladders[n] = dsad_model_ladder(m);
                        models[n++] = m;
                }
        return n;
}

/* Signals the changes workers or the tick made to the n loaded models' ladders. */
static void announce_ladders(struct dsad_adaptive *a, struct dsad_ladder *const *ladders,
                             struct dsad_model *const *models, size_t n) {
        char variant[DSAD_VARIANT_NAME_MAX + 1], reason[192];

        for (size_t i = 0; i < n; i++)
                if (dsad_policy_take_change(ladders[i], variant, sizeof(variant), reason, sizeof(reason))) {
                        const char *name = dsad_model_name(models[i]);
                        if (ladders[i]->n > 1)
                                dsad_log(LOG_INFO, "Model %s now runs %s: %s.", name, variant, reason);
                        dsad_api_variant_changed(a->d, name, variant, reason);
                }
}

static void announce(struct dsad_adaptive *a) {
        struct dsad_ladder *ladders[LADDERS_MAX];
        struct dsad_model *models[LADDERS_MAX];

        announce_ladders(a, ladders, models, loaded_ladders(a->d, ladders, models));
}

static void run_tick(struct dsad_adaptive *a) {
        struct dsad *d = a->d;
        struct dsad_ladder *ladders[LADDERS_MAX];
        struct dsad_model *models[LADDERS_MAX];
        struct dsad_policy_signals g;
        struct dsad_power_sample ps;
        uint64_t now = now_usec();
        double interval = a->last_tick_usec ? (double) (now - a->last_tick_usec) / 1e6 : d->config.tick_s;
        size_t n;

        if (interval <= 0.001)
                interval = 0.001;
        a->last_tick_usec = now;
        dsad_policy_get_signals(d->policy, &g);
        if (a->meter && dsad_power_meter_sample(a->meter, now, &ps) >= 0) {
                g.power_w = ps.dsad_watts;
                g.core_watts = ps.core_watts;
                a->state.power_w = ps.dsad_watts;
                a->state.package_w = ps.measured ? ps.package_watts : -1;
                a->state.core_watts = ps.core_watts;
                a->state.power_source = ps.calibrated ? "rapl" : "model";
        }
        double psi;
        uint64_t total;
        a->state.cpu_pressure = dsad_psi_cpu_read(d->config.sysfs_root, &psi, &total) >= 0 ? psi : -1;
        g.cpu_pressure = a->state.cpu_pressure >= 0 ? psi : NAN;
        g.on_battery = a->power.on_battery;
        g.battery_percent = a->power.battery_percent;
        snprintf(g.profile, sizeof(g.profile), "%s", a->power.profile);
        dsad_policy_set_signals(d->policy, &g);

        n = loaded_ladders(d, ladders, models);
        (void) dsad_policy_tick(d->policy, ladders, n, interval, now);
        a->state.arrival_rate = 0;
        for (size_t i = 0; i < n; i++)
                a->state.arrival_rate += ladders[i]->rate;
        announce_ladders(a, ladders, models, n);
}

static void on_tick(uv_timer_t *t) {
        run_tick(t->data);
}

static void on_wake(uv_async_t *h) {
        announce(h->data);
}

static void on_power(const struct dsad_power_signals *s, void *userdata) {
        struct dsad_adaptive *a = userdata;
        struct dsad_power_signals old = a->power;

        a->power = *s;
        dsad_log(LOG_INFO, "Power: %s%s, battery %.0f%%, profile %s.", s->upower ? "" : "no UPower, ",
                 s->on_battery ? "on battery" : "on AC", isnan(s->battery_percent) ? -1.0 : s->battery_percent,
                 s->profile[0] ? s->profile : "unknown");
        run_tick(a);
        dsad_api_power_changed(a->d, old.on_battery != s->on_battery,
                               !(old.battery_percent == s->battery_percent ||
                                 (isnan(old.battery_percent) && isnan(s->battery_percent))),
                               strcmp(old.profile, s->profile) != 0);
}

static void on_closed(uv_handle_t *h) {
        struct dsad_adaptive *a = h->data;
        if (--a->n_open == 0)
                free(a);
}

/* ---- API */

int dsad_adaptive_start(struct dsad *d) {
        struct dsad_adaptive *a;
        struct dsad_policy_signals g;
        int r;

        r = dsad_policy_new(&d->config.policy, &d->policy);
        if (r < 0)
                return r;
        a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        a->d = d;
        a->power.battery_percent = NAN;
        a->state = (struct dsad_adaptive_state){ .power_w = NAN, .package_w = -1, .cpu_pressure = -1,
                                                 .core_watts = d->config.policy.core_watts, .power_source = "model" };
        uv_timer_init(d->loop, &a->tick);
        uv_async_init(d->loop, &a->wake, on_wake);
        a->tick.data = a->wake.data = a;
        a->n_open = 2;
        d->adaptive = a;

        dsad_policy_get_signals(d->policy, &g);
        g.workers = d->config.workers ? d->config.workers : (unsigned) MAX(1L, sysconf(_SC_NPROCESSORS_ONLN));
        dsad_policy_set_signals(d->policy, &g);

        r = dsad_power_meter_new(d->config.sysfs_root, d->config.policy.core_watts, d->config.policy.idle_watts,
                                 &a->meter);
        if (r < 0)
                dsad_log(LOG_WARNING, "No power meter: %s, ignoring.", strerror(-r));
        else {
                int rs = dsad_power_meter_rapl_status(a->meter);
                dsad_log(LOG_INFO, "Power: %s.", rs == 0 ? "RAPL (calibrates the CPU-time model once)"
                                                 : rs == -EACCES ? "RAPL is root-only here; CPU-time model"
                                                                 : "no RAPL; CPU-time model");
                (void) dsad_power_meter_sample(a->meter, now_usec(), &(struct dsad_power_sample){});
        }
        if (d->config.power_bus && strcmp(d->config.power_bus, "none") != 0) {
                r = dsad_powerbus_new(d->loop, d->config.power_bus, on_power, a, &a->bus);
                if (r < 0)
                        dsad_log(LOG_WARNING, "Cannot watch UPower and power-profiles-daemon on %s: %s, ignoring.",
                                 d->config.power_bus, strerror(-r));
        }
        a->last_tick_usec = now_usec();
        uv_timer_start(&a->tick, on_tick, (uint64_t) (d->config.tick_s * 1000), (uint64_t) (d->config.tick_s * 1000));
        return 0;
}

void dsad_adaptive_stop(struct dsad *d) {
        struct dsad_adaptive *a = d->adaptive;

        if (!a)
                return;
        d->adaptive = NULL;
        a->bus = dsad_powerbus_free(a->bus);
        a->meter = dsad_power_meter_free(a->meter);
        uv_timer_stop(&a->tick);
        uv_close((uv_handle_t *) &a->tick, on_closed);
        uv_close((uv_handle_t *) &a->wake, on_closed);
}

void dsad_adaptive_settings_changed(struct dsad *d) {
        if (!d->adaptive)
                return;
        dsad_policy_set_settings(d->policy, &d->config.policy);
        run_tick(d->adaptive);
}

void dsad_adaptive_wake(struct dsad *d) {
        if (d->adaptive)
                uv_async_send(&d->adaptive->wake);
}

void dsad_adaptive_models_changed(struct dsad *d) {
        if (d->adaptive)
                announce(d->adaptive);
}

void dsad_adaptive_state(struct dsad *d, struct dsad_adaptive_state *ret) {
        if (d->adaptive)
                *ret = d->adaptive->state;
        else
                *ret = (struct dsad_adaptive_state){ .power_w = NAN, .package_w = -1, .cpu_pressure = -1,
                                                     .power_source = "model" };
}
