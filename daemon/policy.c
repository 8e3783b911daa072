/* The adaptive policy's decisions (policy.h). Nothing here does I/O: settings, signals and
 * measurements come in, a rung index and a one-line reason go out, so tests drive it with
 * their own clock and numbers.
 *
 * Per request (dsad_policy_choose, on a worker): the level (what normal requests run on, the
 * variant announced) is, among the rungs the minimum accuracy allows, from the power floor down,
 * the first that keeps up with the arrival rate plus a tenth and meets the latency target in
 * the steady state of that rate: each free worker takes what waits as one batch, so calls grow
 * to the batch that no longer outgrows itself, and a request takes its batch's call plus the
 * wait for a worker (steady_state()), each at that rung's measured speed. Neither the size of
 * the batch at hand nor the queue of the moment enters, so a backlog (a burst's start, a stall)
 * does not hold the level down for a whole hysteresis; a batch that would be late on the level's
 * rung (what it waited + its call + the queue behind it run as one batch spread over the
 * workers) catches up on a faster one, for itself. The level goes down at once when the
 * prediction says so, and back up (as far as the margin allows, steps a quarter of
 * hysteresis_s apart) only after hysteresis_s without such pressure, with a 20% margin on the
 * latency and on the load, and while the CPU pressure (PSI) stays below 50%, so a load near the
 * edge does not flap. Hints narrow the choice for their own request only.
 *
 * Every tick (dsad_policy_tick, on the loop thread): arrival rates; one rung down when more than
 * a fifth of the tick's requests had to catch up although the level stood all tick (its rung
 * does not keep up, whatever the predictions say); the power floor, the most
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
#define LATE_MAX 0.2      /* more requests than this caught up in a tick: the level cannot keep up */
#define LATE_MIN_REQUESTS 20u

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

/* Rung i in the steady state of the model's arrival rate (the smoothed rate or the last tick's
 * when higher: a burst counts at once), times load, with t tokens per request: each free worker
 * takes what waits as one batch, so calls grow until a batch no longer outgrows itself, the
 * smallest b of 1..STEADY_BATCH_MAX with rate * S(b t) / w <= b (what arrives during a call, per
 * worker). False when even the largest does (the rung cannot keep up). The latency of a request
 * is then its batch's call plus the wait for a worker, up to a call shared among the workers as
 * busy as they are. A backlog (a burst's start, a stall) or the size of the batch at hand does
 * not enter: the level looks past both. */
struct steady {
        unsigned batch;
        double busy;    /* share of the workers' time, 0..1 */
        double ms;      /* predicted latency of a request that did not wait */
};

#define STEADY_BATCH_MAX 64u /* the scheduler's batch_max at most */

static bool steady_state(const struct dsad_ladder *l, size_t i, double t, double w, double load,
                         struct steady *ret) {
        double rate = fmax(l->rate, l->rate_now) * load;

        for (unsigned b = 1; b <= STEADY_BATCH_MAX; b++) {
                double call = dsad_policy_service_ms(l, i, b * t), busy = rate * call / 1000.0 / w / b;
                if (busy <= 1) {
                        *ret = (struct steady){ .batch = b, .busy = busy, .ms = call * (1 + busy / w) };
                        return true;
                }
        }
        return false;
}

/* The first rung from lo on that meets target_ms: with steady, in the steady state at the
 * arrival rate raised by load; else with the batch at hand, its wait and the queue behind it.
 * SIZE_MAX when none does. */
static size_t first_meeting(const struct dsad_ladder *l, size_t lo, double min_acc, double target_ms,
                            double waited_ms, unsigned tokens, double per_req, unsigned depth, double w,
                            bool steady, double load) {
        struct steady st;

        for (size_t i = lo; i < l->n; i++) {
                if (!dsad_policy_eligible(l, i, min_acc))
                        continue;
                if (steady ? steady_state(l, i, per_req, w, load, &st) && st.ms <= target_ms
                           : predict_ms(l, i, waited_ms, tokens, per_req, depth, w) <= target_ms)
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

static void set_level(struct dsad_ladder *l, size_t level, uint64_t now_usec, const char *fmt, ...)
        _printf_(4, 5);
static void set_level(struct dsad_ladder *l, size_t level, uint64_t now_usec, const char *fmt, ...) {
        va_list ap;

        if (level == l->level)
                return;
        l->level = level;
        l->level_usec = now_usec;
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
                set_level(l, run, now_usec, "policy fixed:%s%s", s.fixed_variant, k >= 0 ? "" : " (absent: base)");
                pthread_mutex_unlock(&l->lock);
                return run;
        }

        /* The level follows what a request that did not wait needs in the steady state of the
         * arrival rate, with room for a tenth more load (1 / UTIL_MAX): not the size of this
         * batch or of the queue, which a backlog inflates. What this batch already waited, and
         * a backlog, are made up below, for this batch alone. */
        if (!dsad_policy_eligible(l, l->level, e.min_accuracy))
                set_level(l, eligible_near(l, l->level, e.min_accuracy), now_usec, "min accuracy %.3f", e.min_accuracy);
        lo = e.cheapest ? cheapest_from(l, 0, e.min_accuracy) : MIN(l->floor, l->n - 1);
        best = first_meeting(l, lo, e.min_accuracy, e.latency_target_ms, 0, tokens, per_req, depth, w, true,
                             1 / UTIL_MAX);
        if (best == SIZE_MAX)
                best = cheapest_from(l, lo, e.min_accuracy);
        if (best > l->level) {
                size_t up = more_accurate(l, best, lo, e.min_accuracy);
                double rate = fmax(l->rate, l->rate_now);
                struct steady su, sb = {};
                (void) steady_state(l, best, per_req, w, 1 / UTIL_MAX, &sb);
                if (steady_state(l, up, per_req, w, 1 / UTIL_MAX, &su))
                        set_level(l, best, now_usec,
                                  "latency: %s predicts %.0f ms > %.0f ms target at %.1f req/s (batches of %u); %s %.0f ms",
                                  l->rungs[up].name, su.ms, e.latency_target_ms, rate, su.batch, l->rungs[best].name,
                                  sb.ms);
                else
                        set_level(l, best, now_usec, "load: %s cannot keep up with %.1f req/s; %s %.0f%% busy",
                                  l->rungs[up].name, rate / UTIL_MAX, l->rungs[best].name, 100 * sb.busy);
                l->pressure_usec = now_usec;
        } else if (best < l->level && now_usec - l->pressure_usec >= (uint64_t) (s.hysteresis_s * 1e6) &&
                   now_usec - l->recover_usec >= (uint64_t) (s.hysteresis_s * 1e6 / 4) &&
                   !(g.cpu_pressure > PSI_RECOVER_MAX)) {
                /* Up to the most accurate rung that meets the target with the margin, on latency
                 * and on load, which may be short of best (under a burst, one step up but not all
                 * the way). */
                for (size_t i = best; i < l->level; i++) {
                        struct steady st;
                        if (!dsad_policy_eligible(l, i, e.min_accuracy) ||
                            !steady_state(l, i, per_req, w, 1 / (UTIL_MAX * RECOVER_MARGIN), &st) ||
                            st.ms > RECOVER_MARGIN * e.latency_target_ms)
                                continue;
                        set_level(l, i, now_usec, "recovered: %s predicts %.0f ms <= %.0f ms at %.1f req/s",
                                  l->rungs[i].name, st.ms, RECOVER_MARGIN * e.latency_target_ms,
                                  fmax(l->rate, l->rate_now));
                        l->recover_usec = now_usec; /* the next step up waits a quarter of it */
                        break;
                }
        }
        run = l->level;

        /* A batch that waited too long for the level's rung to meet the target: the most
         * accurate rung that still does, else the cheapest, to catch up with the queue. */
        if (predict_ms(l, run, waited_ms, tokens, per_req, depth, w) > e.latency_target_ms) {
                size_t k = first_meeting(l, run, e.min_accuracy, e.latency_target_ms, waited_ms, tokens,
                                         per_req, depth, w, false, 1);
                run = k == SIZE_MAX ? cheapest_from(l, run, e.min_accuracy) : k;
        }
        /* Only requests that came after the level did: a backlog from before is not its fault. */
        if (now_usec - waited_usec >= l->level_usec) {
                l->tick_requests += n;
                if (run != l->level)
                        l->tick_late += n;
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
                                         depth, w, false, 1);
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
                double others = 0, late_share;
                bool late;

                for (size_t o = 0; o < n; o++)
                        if (o != m)
                                others += level_power(ladders[o], g.core_watts);
                pthread_mutex_lock(&l->lock);
                before = l->level;
                if (scale != 1)
                        l->power_scale = clamp(0.8 * l->power_scale + 0.2 * l->power_scale * scale, 0.25, 4.0);
                late = l->tick_requests >= LATE_MIN_REQUESTS &&
                       (double) l->tick_late > LATE_MAX * (double) l->tick_requests;
                late_share = l->tick_requests ? (double) l->tick_late / (double) l->tick_requests : 0;
                l->tick_requests = l->tick_late = 0;
                if (s.fixed) {
                        pthread_mutex_unlock(&l->lock);
                        continue;
                }

                /* Requests that had to catch up on a faster rung: when a tick has many of them
                 * although the level stood the whole tick, the level's rung does not keep up
                 * whatever the predictions say (they lag, or flatter it): one rung down. */
                if (late && now_usec - l->level_usec >= (uint64_t) (interval_s * 1e6))
                        for (size_t i = l->level + 1; i < l->n; i++)
                                if (dsad_policy_eligible(l, i, e.min_accuracy)) {
                                        set_level(l, i, now_usec, "late: %.0f%% of requests caught up on faster "
                                                  "variants at %.1f req/s; %s", 100.0 * late_share,
                                                  fmax(l->rate, l->rate_now), l->rungs[i].name);
                                        l->pressure_usec = now_usec;
                                        break;
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
                        set_level(l, c, now_usec, "%s: the cheapest variant kept >= %.2f", e.why, e.min_accuracy);
                } else if (!dsad_policy_eligible(l, l->level, e.min_accuracy))
                        set_level(l, eligible_near(l, l->level, e.min_accuracy), now_usec, "min accuracy %.3f", e.min_accuracy);
                if (l->level < l->floor && l->floor < l->n)
                        set_level(l, l->floor, now_usec, "power: %s would draw %.1f W > %.1f W budget at %.1f req/s",
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
