/* The adaptive policy's decisions (policy.h). Nothing here does I/O: settings, signals and
 * measurements come in, a rung index and a one-line reason go out, so tests drive it with
 * their own clock and numbers.
 *
 * Per request (dsad_policy_choose, on a worker): among the rungs the minimum accuracy allows,
 * from the power floor down, the first whose predicted latency meets the target and whose load
 * stays below 90% of the workers. Predicted latency = the time the batch already waited + its
 * own engine call + the queue behind it run as one batch spread over the workers, each at that
 * rung's measured speed. The level (what normal requests run on) goes down at once when the prediction says
 * so, and back up (as far as the margin allows, steps a quarter of hysteresis_s apart) only
 * after hysteresis_s without such pressure, with a 20% margin on the latency and on the workers' load, and while
 * the CPU pressure (PSI) stays below 50%, so a load near the edge does not flap. Hints narrow
 * the choice for their own request only.
 *
 * Every tick (dsad_policy_tick, on the loop thread): arrival rates; the power floor, the most
 * accurate rung whose predicted power (rate x energy per request, scaled by what the meter
 * measured against what was predicted) fits the model's share of the budget; forced cheapest
 * rungs (low battery, power-saver). The floor goes down at once and up after hysteresis_s. When
 * the rung above the floor would not fit, the fraction of requests that can run there within
 * the budget does (mix), so the average power follows the budget instead of the rung below;
 * with one model loaded, the integral of the measured power's error against the budget
 * corrects that fraction for what the model mispredicts. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "policy.h"

#define EWMA_LATENCY 0.2  /* weight of a new measurement */
#define RATE_TAU_S 2.0    /* arrival rate smoothing */
#define UTIL_MAX 0.9      /* a rung that would keep the workers busier than this builds a queue */
#define RECOVER_MARGIN 0.8
#define PSI_RECOVER_MAX 50.0 /* no step up while tasks waited for a CPU more than this % of 10 s */
#define MIX_GAIN 0.15  /* per tick, of the budget error over the power step between rungs */
#define FLOOR_MARGIN 0.95 /* a more accurate floor must fit within this share of the budget */

static double clamp(double v, double lo, double hi) {
        return v < lo ? lo : v > hi ? hi : v;
}

struct dsad_policy {
        pthread_mutex_t lock;
        struct dsad_policy_settings s;
        struct dsad_policy_signals sig;
};

/* ---- helpers */

static unsigned bucket(double t) {
        unsigned b = 0;
        while (b + 1 < DSAD_POLICY_BUCKETS && t > (double) (8u << b))
                b++;
        return b;
}

static double bucket_tokens(unsigned b) {
        return (double) (8u << b);
}

static void effective(const struct dsad_policy_settings *s, const struct dsad_policy_signals *g,
                      struct dsad_policy_effective *e) {
        *e = (struct dsad_policy_effective){
                .power_budget_w = s->power_budget_w,
                .min_accuracy = s->min_accuracy,
                .latency_target_ms = s->latency_target_ms,
        };
        if (g->on_battery) {
                if (s->battery_power_budget_w > 0)
                        e->power_budget_w = s->battery_power_budget_w;
                if (s->battery_min_accuracy > 0)
                        e->min_accuracy = s->battery_min_accuracy;
                if (!isnan(g->battery_percent) && g->battery_percent <= s->battery_low_percent) {
                        e->cheapest = true;
                        snprintf(e->why, sizeof(e->why), "battery %.0f%% <= %.0f%%", g->battery_percent,
                                 s->battery_low_percent);
                }
        }
        if (!e->cheapest && strcmp(g->profile, "power-saver") == 0) {
                e->cheapest = true;
                snprintf(e->why, sizeof(e->why), "profile power-saver");
        }
        if (strcmp(g->profile, "performance") == 0 && !g->on_battery)
                e->power_budget_w = 0;
}

static double workers(const struct dsad_policy_signals *g) {
        return g->workers ? (double) g->workers : 1.0;
}

/* The cheapest eligible rung at or after from (from itself when none is). */
static size_t cheapest_from(const struct dsad_ladder *l, size_t from, double min_acc) {
        size_t c = SIZE_MAX;
        for (size_t i = from; i < l->n; i++)
                if (dsad_policy_eligible(l, i, min_acc))
                        c = i;
        if (c == SIZE_MAX)
                for (size_t i = 0; i < l->n; i++)
                        if (dsad_policy_eligible(l, i, min_acc))
                                c = i;
        return c == SIZE_MAX ? l->base : c;
}

/* The eligible rung nearest to i, preferring more accurate ones (min accuracy went up). */
static size_t eligible_near(const struct dsad_ladder *l, size_t i, double min_acc) {
        for (size_t k = i + 1; k-- > 0;)
                if (dsad_policy_eligible(l, k, min_acc))
                        return k;
        return l->base;
}

/* The nearest eligible rung more accurate than i, not above lo; i itself when there is none. */
static size_t more_accurate(const struct dsad_ladder *l, size_t i, size_t lo, double min_acc) {
        for (size_t k = i; k > lo; k--)
                if (dsad_policy_eligible(l, k - 1, min_acc))
                        return k - 1;
        return i;
}

/* What the batch waited, its own call, and the queue behind it, which the next free worker
 * takes as one batch too: its call, shared among the workers. */
static double predict_ms(const struct dsad_ladder *l, size_t i, double waited_ms, unsigned tokens,
                         double per_req_tokens, unsigned depth, double w) {
        return waited_ms + dsad_policy_service_ms(l, i, tokens) +
               (depth > 0 ? dsad_policy_service_ms(l, i, depth * per_req_tokens) / w : 0);
}

/* The share of the workers' time rung i needs at the model's arrival rate. */
static double utilization(const struct dsad_ladder *l, size_t i, double per_req, double w) {
        /* The smoothed rate, or the last tick's when higher: a burst counts at once. */
        return fmax(l->rate, l->rate_now) * dsad_policy_request_ms(l, i, l->tokens > 0 ? l->tokens : per_req) /
               1000.0 / w;
}

/* The first rung from lo on that meets target_ms and, with steady, keeps the workers' load below
 * UTIL_MAX; SIZE_MAX when none does. */
static size_t first_meeting(const struct dsad_ladder *l, size_t lo, double min_acc, double target_ms,
                            double waited_ms, unsigned tokens, double per_req, unsigned depth, double w,
                            bool steady) {
        for (size_t i = lo; i < l->n; i++) {
                if (!dsad_policy_eligible(l, i, min_acc))
                        continue;
                if (predict_ms(l, i, waited_ms, tokens, per_req, depth, w) <= target_ms &&
                    (!steady || utilization(l, i, per_req, w) < UTIL_MAX))
                        return i;
        }
        return SIZE_MAX;
}

/* What l's level draws at its smoothed rate, as the meter's scale corrects it. Takes l's lock. */
static double level_power(struct dsad_ladder *l, double core_watts) {
        double w;

        pthread_mutex_lock(&l->lock);
        w = dsad_policy_power_w(l, l->level, l->rate, l->tokens, core_watts) * l->power_scale;
        pthread_mutex_unlock(&l->lock);
        return w;
}

static void set_level(struct dsad_ladder *l, size_t level, const char *fmt, ...) _printf_(3, 4);
static void set_level(struct dsad_ladder *l, size_t level, const char *fmt, ...) {
        va_list ap;

        if (level == l->level)
                return;
        l->level = level;
        va_start(ap, fmt);
        vsnprintf(l->reason, sizeof(l->reason), fmt, ap);
        va_end(ap);
        l->announced = false;
}

/* ---- API */

void dsad_policy_settings_defaults(struct dsad_policy_settings *s) {
        *s = (struct dsad_policy_settings){
                .latency_target_ms = 100,
                .min_accuracy = 0.95,
                .hysteresis_s = 2,
                .battery_low_percent = 20,
                .core_watts = 10,
                .idle_watts = 5,
        };
}

int dsad_policy_new(const struct dsad_policy_settings *s, struct dsad_policy **ret) {
        struct dsad_policy *p = calloc(1, sizeof(*p));

        if (!p)
                return -ENOMEM;
        pthread_mutex_init(&p->lock, NULL);
        p->s = *s;
        p->sig = (struct dsad_policy_signals){ .battery_percent = NAN, .power_w = NAN, .cpu_pressure = NAN,
                                               .core_watts = s->core_watts, .workers = 1 };
        *ret = p;
        return 0;
}

struct dsad_policy *dsad_policy_free(struct dsad_policy *p) {
        if (!p)
                return NULL;
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
}

void dsad_policy_set_settings(struct dsad_policy *p, const struct dsad_policy_settings *s) {
        pthread_mutex_lock(&p->lock);
        p->s = *s;
        pthread_mutex_unlock(&p->lock);
}

void dsad_policy_get_settings(struct dsad_policy *p, struct dsad_policy_settings *ret) {
        pthread_mutex_lock(&p->lock);
        *ret = p->s;
        pthread_mutex_unlock(&p->lock);
}

void dsad_policy_set_signals(struct dsad_policy *p, const struct dsad_policy_signals *s) {
        pthread_mutex_lock(&p->lock);
        p->sig = *s;
        pthread_mutex_unlock(&p->lock);
}

void dsad_policy_get_signals(struct dsad_policy *p, struct dsad_policy_signals *ret) {
        pthread_mutex_lock(&p->lock);
        *ret = p->sig;
        pthread_mutex_unlock(&p->lock);
}

void dsad_policy_effective(struct dsad_policy *p, struct dsad_policy_effective *ret) {
        pthread_mutex_lock(&p->lock);
        effective(&p->s, &p->sig, ret);
        pthread_mutex_unlock(&p->lock);
}

int dsad_policy_parse_mode(const char *mode, struct dsad_policy_settings *s) {
        size_t n;

        if (strcmp(mode, "adaptive") == 0) {
                s->fixed = false;
                return 0;
        }
        if (strncmp(mode, "fixed:", 6) != 0)
                return -EINVAL;
        n = strlen(mode + 6);
        if (n < 1 || n > DSAD_VARIANT_NAME_MAX)
                return -EINVAL;
        s->fixed = true;
        memcpy(s->fixed_variant, mode + 6, n + 1);
        return 0;
}

void dsad_policy_format_mode(const struct dsad_policy_settings *s, char *buf, size_t size) {
        if (s->fixed)
                snprintf(buf, size, "fixed:%s", s->fixed_variant);
        else
                snprintf(buf, size, "adaptive");
}

/* Here rather than in ladder.c, so the scheduler's users link the decisions without the loader
 * (and the registry it needs). */
int dsad_ladder_find(const struct dsad_ladder *l, const char *name) {
        for (size_t i = 0; l && i < l->n; i++)
                if (strcmp(l->rungs[i].name, name) == 0)
                        return (int) i;
        return -ENOENT;
}

bool dsad_policy_eligible(const struct dsad_ladder *l, size_t i, double min_accuracy) {
        const struct dsad_rung *r = &l->rungs[i];
        return i == l->base || (!isnan(r->kept) && r->kept >= min_accuracy - 1e-9);
}

double dsad_policy_service_ms(const struct dsad_ladder *l, size_t i, double t) {
        const double *lat = l->rungs[i].lat_ms;
        unsigned b = bucket(t), best = DSAD_POLICY_BUCKETS;

        if (lat[b] > 0)
                return lat[b];
        /* The nearest measured bucket, scaled linearly in tokens upwards and kept as it is
         * downwards (fixed costs dominate short inputs). */
        for (unsigned d = 1; d < DSAD_POLICY_BUCKETS && best == DSAD_POLICY_BUCKETS; d++) {
                if (b >= d && lat[b - d] > 0)
                        best = b - d;
                else if (b + d < DSAD_POLICY_BUCKETS && lat[b + d] > 0)
                        best = b + d;
        }
        if (best == DSAD_POLICY_BUCKETS)
                return 0;
        return best < b ? lat[best] * t / bucket_tokens(best) : lat[best];
}

double dsad_policy_request_ms(const struct dsad_ladder *l, size_t i, double t) {
        double b = l->batch > 1 ? l->batch : 1;
        return dsad_policy_service_ms(l, i, t * b) / b;
}

double dsad_policy_power_w(const struct dsad_ladder *l, size_t i, double rate, double t, double core_watts) {
        return core_watts * rate * dsad_policy_request_ms(l, i, t) / 1000.0 * (double) l->rungs[i].threads;
}

void dsad_policy_observe(struct dsad_ladder *l, size_t rung, unsigned n, unsigned tokens, double ms) {
        double *lat;

        if (rung >= l->n || ms <= 0 || !isfinite(ms))
                return;
        pthread_mutex_lock(&l->lock);
        lat = &l->rungs[rung].lat_ms[bucket(tokens)];
        *lat = *lat > 0 ? (1 - EWMA_LATENCY) * *lat + EWMA_LATENCY * ms : ms;
        l->rungs[rung].served += n;
        l->batch = l->batch > 0 ? 0.9 * l->batch + 0.1 * n : n;
        pthread_mutex_unlock(&l->lock);
}

void dsad_policy_arrival(struct dsad_ladder *l) {
        __atomic_fetch_add(&l->arrivals, 1, __ATOMIC_RELAXED);
}

size_t dsad_policy_choose(struct dsad_policy *p, struct dsad_ladder *l, const struct dsad_hints *h,
                          unsigned n, unsigned tokens, uint64_t waited_usec, unsigned depth, uint64_t now_usec) {
        struct dsad_policy_settings s;
        struct dsad_policy_signals g;
        struct dsad_policy_effective e;
        double waited_ms = (double) waited_usec / 1000.0, per_req, w;
        size_t run, lo, best;

        pthread_mutex_lock(&p->lock);
        s = p->s;
        g = p->sig;
        pthread_mutex_unlock(&p->lock);
        effective(&s, &g, &e);
        w = workers(&g);
        n = MAX(n, 1u);
        per_req = (double) tokens / n;

        pthread_mutex_lock(&l->lock);
        l->tokens = l->tokens > 0 ? 0.9 * l->tokens + 0.1 * per_req : per_req;
        if (s.fixed) {
                int k = dsad_ladder_find(l, s.fixed_variant);
                run = k >= 0 ? (size_t) k : l->base;
                set_level(l, run, "policy fixed:%s%s", s.fixed_variant, k >= 0 ? "" : " (absent: base)");
                pthread_mutex_unlock(&l->lock);
                return run;
        }

        /* The level follows what a batch that did not wait would need: the queue behind it and
         * the arrival rate. What this batch already waited is made up below, for it alone. */
        if (!dsad_policy_eligible(l, l->level, e.min_accuracy))
                set_level(l, eligible_near(l, l->level, e.min_accuracy), "min accuracy %.3f", e.min_accuracy);
        lo = e.cheapest ? cheapest_from(l, 0, e.min_accuracy) : MIN(l->floor, l->n - 1);
        best = first_meeting(l, lo, e.min_accuracy, e.latency_target_ms, 0, tokens, per_req, depth, w, true);
        if (best == SIZE_MAX)
                best = cheapest_from(l, lo, e.min_accuracy);
        if (best > l->level) {
                size_t up = more_accurate(l, best, lo, e.min_accuracy);
                double ms = predict_ms(l, up, 0, tokens, per_req, depth, w);
                if (ms > e.latency_target_ms)
                        set_level(l, best, "latency: %s predicts %.0f ms > %.0f ms target (queue %u, %.1f req/s); %s %.0f ms",
                                  l->rungs[up].name, ms, e.latency_target_ms, depth, l->rate, l->rungs[best].name,
                                  predict_ms(l, best, 0, tokens, per_req, depth, w));
                else
                        set_level(l, best, "load: %s would keep the workers %.0f%% busy at %.1f req/s; %s %.0f%%",
                                  l->rungs[up].name, 100 * utilization(l, up, per_req, w), l->rate,
                                  l->rungs[best].name, 100 * utilization(l, best, per_req, w));
                l->pressure_usec = now_usec;
        } else if (best < l->level && now_usec - l->pressure_usec >= (uint64_t) (s.hysteresis_s * 1e6) &&
                   now_usec - l->recover_usec >= (uint64_t) (s.hysteresis_s * 1e6 / 4) &&
                   !(g.cpu_pressure > PSI_RECOVER_MAX)) {
                /* Up to the most accurate rung that meets the target with the margin, which may
                 * be short of best (under a burst, one step up but not all the way). */
                for (size_t i = best; i < l->level; i++) {
                        double ms = predict_ms(l, i, 0, tokens, per_req, depth, w);
                        if (!dsad_policy_eligible(l, i, e.min_accuracy) || ms > RECOVER_MARGIN * e.latency_target_ms ||
                            utilization(l, i, per_req, w) > RECOVER_MARGIN * UTIL_MAX)
                                continue;
                        set_level(l, i, "recovered: %s predicts %.0f ms <= %.0f ms at %.1f req/s", l->rungs[i].name,
                                  ms, RECOVER_MARGIN * e.latency_target_ms, l->rate);
                        l->recover_usec = now_usec; /* the next step up waits a quarter of it */
                        break;
                }
        }
        run = l->level;

        /* A batch that waited too long for the level's rung to meet the target: the most
         * accurate rung that still does, else the cheapest, to catch up with the queue. */
        if (predict_ms(l, run, waited_ms, tokens, per_req, depth, w) > e.latency_target_ms) {
                size_t k = first_meeting(l, run, e.min_accuracy, e.latency_target_ms, waited_ms, tokens,
                                         per_req, depth, w, false);
                run = k == SIZE_MAX ? cheapest_from(l, run, e.min_accuracy) : k;
        }

        /* Power mix: some requests one eligible rung up, as far as the budget lets them. */
        if (l->mix > 0 && run == l->level && run == l->floor) {
                size_t up = more_accurate(l, run, 0, e.min_accuracy);
                if (up < run) {
                        l->mix_acc += l->mix * n; /* a share of requests, not of calls */
                        if (l->mix_acc >= n && predict_ms(l, up, 0, tokens, per_req, depth, w) <= e.latency_target_ms) {
                                l->mix_acc -= n;
                                run = up;
                        }
                }
        }

        /* Hints, for this request only. */
        if (h && h->max_latency_ms > 0 && h->max_latency_ms < e.latency_target_ms) {
                size_t k = first_meeting(l, lo, e.min_accuracy, h->max_latency_ms, waited_ms, tokens, per_req,
                                         depth, w, false);
                run = MAX(run, k == SIZE_MAX ? cheapest_from(l, lo, e.min_accuracy) : k);
        }
        if (h && h->min_accuracy > 0 && !dsad_policy_eligible(l, run, h->min_accuracy))
                run = eligible_near(l, run, h->min_accuracy);
        pthread_mutex_unlock(&l->lock);
        return run;
}

bool dsad_policy_tick(struct dsad_policy *p, struct dsad_ladder *const *ladders, size_t n, double interval_s,
                      uint64_t now_usec) {
        struct dsad_policy_settings s;
        struct dsad_policy_signals g;
        struct dsad_policy_effective e;
        double a = 1 - exp(-interval_s / RATE_TAU_S), predicted_total = 0;
        bool changed = false;

        pthread_mutex_lock(&p->lock);
        s = p->s;
        g = p->sig;
        pthread_mutex_unlock(&p->lock);
        effective(&s, &g, &e);

        /* Rates first, and the power every model draws at its level now. */
        for (size_t m = 0; m < n; m++) {
                struct dsad_ladder *l = ladders[m];
                uint64_t k = __atomic_exchange_n(&l->arrivals, 0, __ATOMIC_RELAXED);
                pthread_mutex_lock(&l->lock);
                l->rate_now = (double) k / interval_s;
                l->rate = (1 - a) * l->rate + a * l->rate_now;
                pthread_mutex_unlock(&l->lock);
                predicted_total += level_power(l, g.core_watts);
        }
        /* What the meter measured against what the model predicted, when there is load enough
         * to tell. */
        double scale = 1;
        if (!isnan(g.power_w) && predicted_total > 0.5 && g.power_w > 0)
                scale = clamp(g.power_w / predicted_total, 0.5, 2.0);

        for (size_t m = 0; m < n; m++) {
                struct dsad_ladder *l = ladders[m];
                size_t before, target = 0;
                double others = 0;

                for (size_t o = 0; o < n; o++)
                        if (o != m)
                                others += level_power(ladders[o], g.core_watts);
                pthread_mutex_lock(&l->lock);
                before = l->level;
                if (scale != 1)
                        l->power_scale = clamp(0.8 * l->power_scale + 0.2 * l->power_scale * scale, 0.25, 4.0);
                if (s.fixed) {
                        pthread_mutex_unlock(&l->lock);
                        continue;
                }

                /* The power floor, at the smoothed rate or the last tick's when higher: a burst
                 * lowers it within a tick, the hysteresis raises it again. */
                double share = e.power_budget_w - others, rate = fmax(l->rate, l->rate_now);
                l->mix = 0;
                if (e.power_budget_w > 0 && rate > 0) {
                        target = SIZE_MAX;
                        for (size_t i = 0; i < l->n && target == SIZE_MAX; i++)
                                if (dsad_policy_eligible(l, i, e.min_accuracy) &&
                                    dsad_policy_power_w(l, i, rate, l->tokens, g.core_watts) * l->power_scale <= share)
                                        target = i;
                        if (target == SIZE_MAX)
                                target = cheapest_from(l, 0, e.min_accuracy);
                }
                if (target > l->floor) {
                        l->floor = target;
                        l->floor_ok_usec = 0;
                        l->mix_bias = 0;
                } else if (target < l->floor) {
                        /* Up only with a margin, after hysteresis_s. */
                        double pw = dsad_policy_power_w(l, target, rate, l->tokens, g.core_watts) * l->power_scale;
                        if (e.power_budget_w > 0 && pw > FLOOR_MARGIN * share)
                                l->floor_ok_usec = 0;
                        else if (l->floor_ok_usec == 0)
                                l->floor_ok_usec = now_usec;
                        else if (now_usec - l->floor_ok_usec >= (uint64_t) (s.hysteresis_s * 1e6)) {
                                l->floor = target;
                                l->floor_ok_usec = 0;
                                l->mix_bias = 0;
                        }
                } else
                        l->floor_ok_usec = 0;

                /* The fraction of requests one rung above the floor that the budget still pays. */
                if (e.power_budget_w > 0 && l->floor > 0 && l->level == l->floor) {
                        size_t up = more_accurate(l, l->floor, 0, e.min_accuracy);
                        if (up < l->floor) {
                                double pf = dsad_policy_power_w(l, l->floor, rate, l->tokens, g.core_watts) * l->power_scale;
                                double pu = dsad_policy_power_w(l, up, rate, l->tokens, g.core_watts) * l->power_scale;
                                if (pu > pf) {
                                        /* What the model predicts, corrected by the integral of
                                         * what the meter says the budget still leaves. */
                                        double model = (share - pf) / (pu - pf);
                                        if (!isnan(g.power_w) && n == 1)
                                                l->mix_bias += MIX_GAIN * (e.power_budget_w - g.power_w) / (pu - pf);
                                        /* No wind-up: the correction never pushes past 0 or 1. */
                                        l->mix_bias = clamp(l->mix_bias, -clamp(model, 0.0, 1.0), 1.0 - clamp(model, 0.0, 1.0));
                                        l->mix = clamp(model + l->mix_bias, 0.0, 1.0);
                                }
                        }
                } else
                        l->mix_bias = 0;

                if (e.cheapest) {
                        size_t c = cheapest_from(l, 0, e.min_accuracy);
                        set_level(l, c, "%s: the cheapest variant kept >= %.2f", e.why, e.min_accuracy);
                } else if (!dsad_policy_eligible(l, l->level, e.min_accuracy))
                        set_level(l, eligible_near(l, l->level, e.min_accuracy), "min accuracy %.3f", e.min_accuracy);
                if (l->level < l->floor && l->floor < l->n)
                        set_level(l, l->floor, "power: %s would draw %.1f W > %.1f W budget at %.1f req/s",
                                  l->rungs[l->level].name,
                                  dsad_policy_power_w(l, l->level, rate, l->tokens, g.core_watts) * l->power_scale,
                                  share, rate);
                changed |= l->level != before;
                pthread_mutex_unlock(&l->lock);
        }
        return changed;
}

bool dsad_policy_take_change(struct dsad_ladder *l, char *ret_variant, size_t variant_size, char *ret_reason,
                             size_t reason_size) {
        bool r;

        pthread_mutex_lock(&l->lock);
        r = !l->announced;
        if (r) {
                snprintf(ret_variant, variant_size, "%s", l->rungs[l->level].name);
                snprintf(ret_reason, reason_size, "%s", l->reason);
                l->announced = true;
        }
        pthread_mutex_unlock(&l->lock);
        return r;
}
