/* The adaptive policy's decisions (daemon/policy.c) on ladders built in memory, with our own
 * clock: idle, bursts, hysteresis, minimum accuracy, power budgets and their mix, battery and
 * power profiles, hints, fixed mode. No engine runs; latencies are set in the rungs' tables. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "policy.h"

#define SEC 1000000ull
#define assert_near(a, b, eps) assert_true(fabs((double) (a) - (double) (b)) <= (eps))

/* base 20 ms, int8 10 ms (kept 0.998), pruned 5 ms (0.99), tiny 1 ms (0.96), odd 0.5 ms (kept
 * unknown): per call at 32 tokens; one thread each. */
static struct dsad_ladder *ladder(void) {
        static const struct {
                const char *name;
                double kept, ms;
        } r[] = { { "base", 1, 20 }, { "int8", 0.998, 10 }, { "pruned", 0.99, 5 }, { "tiny", 0.96, 1 }, { "odd", NAN, 0.5 } };
        struct dsad_ladder *l = calloc(1, sizeof(*l));

        assert_non_null(l);
        pthread_mutex_init(&l->lock, NULL);
        l->n = 5;
        l->rungs = calloc(l->n, sizeof(*l->rungs));
        assert_non_null(l->rungs);
        l->power_scale = 1;
        l->announced = true;
        for (size_t i = 0; i < l->n; i++) {
                l->rungs[i].name = strdup(r[i].name);
                l->rungs[i].kept = r[i].kept;
                l->rungs[i].threads = 1;
                l->rungs[i].lat_ms[2] = r[i].ms; /* bucket of 32 tokens */
        }
        return l;
}

static void ladder_free(struct dsad_ladder *l) {
        for (size_t i = 0; i < l->n; i++)
                free(l->rungs[i].name);
        free(l->rungs);
        pthread_mutex_destroy(&l->lock);
        free(l);
}

static struct dsad_policy *policy(double target_ms, double budget_w) {
        struct dsad_policy_settings s;
        struct dsad_policy_signals g;
        struct dsad_policy *p;

        dsad_policy_settings_defaults(&s);
        s.latency_target_ms = target_ms;
        s.power_budget_w = budget_w;
        s.min_accuracy = 0.95;
        s.hysteresis_s = 2;
        s.core_watts = 10;
        assert_int_equal(dsad_policy_new(&s, &p), 0);
        dsad_policy_get_signals(p, &g);
        g.workers = 2;
        dsad_policy_set_signals(p, &g);
        return p;
}

/* One request of 32 tokens at now with depth others waiting. */
static size_t choose(struct dsad_policy *p, struct dsad_ladder *l, unsigned depth, uint64_t now) {
        return dsad_policy_choose(p, l, NULL, 1, 32, 0, depth, now);
}

/* The same at an arrival rate of rate requests/s. */
static size_t choose_at(struct dsad_policy *p, struct dsad_ladder *l, double rate, uint64_t now) {
        l->rate = rate;
        return choose(p, l, 0, now);
}

static void test_service_estimates(void **state) {
        struct dsad_ladder *l = ladder();

        assert_near(dsad_policy_service_ms(l, 0, 32), 20, 1e-9);
        assert_near(dsad_policy_service_ms(l, 0, 128), 80, 1e-9);  /* linear upwards */
        assert_near(dsad_policy_service_ms(l, 0, 8), 20, 1e-9);    /* kept downwards */
        dsad_policy_observe(l, 0, 1, 32, 40);                                /* EWMA 0.2 */
        assert_near(dsad_policy_service_ms(l, 0, 32), 24, 1e-9);
        assert_int_equal(l->rungs[0].served, 1);
        /* 10 W per core, 20 req/s of 10 ms on one thread: 2 W. */
        assert_near(dsad_policy_power_w(l, 1, 20, 32, 10), 2.0, 1e-9);
        assert_int_equal(dsad_policy_tokens(400), 102);
        ladder_free(l);
}

static void test_idle_runs_most_accurate(void **state) {
        struct dsad_policy *p = policy(100, 0);
        struct dsad_ladder *l = ladder();

        assert_int_equal(choose(p, l, 0, 10 * SEC), 0);
        assert_int_equal(l->level, 0);
        ladder_free(l);
        dsad_policy_free(p);
}

static void test_burst_and_hysteresis(void **state) {
        struct dsad_policy *p = policy(100, 0);
        struct dsad_ladder *l = ladder();
        struct dsad_policy_settings s;
        char v[64], why[256];

        /* A backlog alone (20 waiting, nothing arriving): base predicts 20 + 10 * 20 = 220 ms,
         * int8 110, pruned 55; this batch catches up on pruned, the level stays at base. */
        assert_int_equal(choose(p, l, 20, 10 * SEC), 2);
        assert_int_equal(l->level, 0);
        assert_false(dsad_policy_take_change(l, v, sizeof(v), why, sizeof(why)));

        /* 80 requests/s (88.9 with the tenth of room) against a 25-ms target: base keeps the two
         * workers 89% busy, so a request waits up to 44% of a call for one: 20 * 1.44 = 29 ms;
         * int8 10 * 1.22 = 12 ms. The level goes down at once. */
        dsad_policy_get_settings(p, &s);
        s.latency_target_ms = 25;
        dsad_policy_set_settings(p, &s);
        l->rate = 80;
        assert_int_equal(choose(p, l, 2, 10 * SEC), 1);
        assert_true(dsad_policy_take_change(l, v, sizeof(v), why, sizeof(why)));
        assert_string_equal(v, "int8");
        assert_non_null(strstr(why, "latency: base predicts 29 ms > 25 ms target at 80.0 req/s (batches of 1); int8 12 ms"));
        assert_false(dsad_policy_take_change(l, v, sizeof(v), why, sizeof(why)));
        /* The load goes: no way back up within 2 s. */
        assert_int_equal(choose_at(p, l, 0, 11 * SEC), 1);
        assert_int_equal(choose(p, l, 0, 11.9 * SEC), 1);
        /* After it: base predicts 20 ms <= 80% of 25. */
        assert_int_equal(choose(p, l, 0, 12.1 * SEC), 0);
        assert_true(dsad_policy_take_change(l, v, sizeof(v), why, sizeof(why)));
        assert_string_equal(v, "base");
        assert_non_null(strstr(why, "recovered"));
        /* Near the edge (10 requests/s: base 21 ms <= 25): stays, but 21 ms is not within the
         * margin, so after a push down it does not come back. */
        assert_int_equal(choose_at(p, l, 10, 13 * SEC), 0);
        assert_int_equal(choose_at(p, l, 80, 13 * SEC), 1);
        assert_int_equal(choose_at(p, l, 10, 15.5 * SEC), 1);
        assert_int_equal(choose_at(p, l, 0, 15.5 * SEC), 0);
        ladder_free(l);
        dsad_policy_free(p);
}

static void test_recovery_steps(void **state) {
        struct dsad_policy *p = policy(100, 0);
        struct dsad_ladder *l = ladder();

        /* 400 requests/s load base 400%, int8 200%, pruned 100%: the level goes to tiny. At 75/s,
         * base's 75% is over the 20% margin (72%), int8's 37.5% is not: after the hysteresis the
         * first step goes to int8; at 40/s base is within it, but the next step waits a quarter
         * of the hysteresis. */
        assert_int_equal(choose_at(p, l, 400, 10 * SEC), 3);
        assert_int_equal(choose_at(p, l, 75, 12.1 * SEC), 1);
        assert_int_equal(choose_at(p, l, 40, 12.3 * SEC), 1);
        assert_int_equal(choose(p, l, 0, 12.7 * SEC), 0);
        ladder_free(l);
        dsad_policy_free(p);
}

static void test_waited_batch_catches_up(void **state) {
        struct dsad_policy *p = policy(100, 0);
        struct dsad_ladder *l = ladder();

        /* Waited 85 ms: base (20 ms) would be late, int8 (10 ms) is not; 95 ms: only pruned
         * or tiny; 200 ms: nothing is in time, the cheapest catches up. The level stays. */
        assert_int_equal(dsad_policy_choose(p, l, NULL, 1, 32, 85000, 0, 10 * SEC), 1);
        assert_int_equal(dsad_policy_choose(p, l, NULL, 1, 32, 95000, 0, 10 * SEC), 2);
        assert_int_equal(dsad_policy_choose(p, l, NULL, 1, 32, 200000, 0, 10 * SEC), 3);
        assert_int_equal(l->level, 0);
        ladder_free(l);
        dsad_policy_free(p);
}

static void test_late_requests_push_the_level(void **state) {
        struct dsad_policy *p = policy(100, 0);
        struct dsad_ladder *l = ladder();
        char v[64], why[256];

        /* A tick in which 30 of 40 requests waited too long for base and caught up: base does
         * not keep up whatever it predicts, so the level steps down one rung. */
        for (int i = 0; i < 40; i++)
                dsad_policy_choose(p, l, NULL, 1, 32, i < 30 ? 95000 : 0, 0, 10 * SEC);
        assert_int_equal(l->level, 0);
        assert_true(dsad_policy_tick(p, &l, 1, 0.25, 10 * SEC + SEC / 4));
        assert_int_equal(l->level, 1);
        assert_true(dsad_policy_take_change(l, v, sizeof(v), why, sizeof(why)));
        assert_non_null(strstr(why, "late: 75% of requests caught up on faster variants"));
        /* The next tick, as many late ones, but the level changed within it: it stays. */
        for (int i = 0; i < 40; i++)
                dsad_policy_choose(p, l, NULL, 1, 32, 200000, 0, 10 * SEC + SEC / 4);
        dsad_policy_tick(p, &l, 1, 0.25, 10 * SEC + SEC / 2 - 1);
        assert_int_equal(l->level, 1);
        /* Few late ones (under 20%), or too few requests to tell: it stays. */
        for (int i = 0; i < 40; i++)
                dsad_policy_choose(p, l, NULL, 1, 32, i < 7 ? 200000 : 0, 0, 11 * SEC);
        dsad_policy_tick(p, &l, 1, 0.25, 11 * SEC);
        for (int i = 0; i < 19; i++)
                dsad_policy_choose(p, l, NULL, 1, 32, 200000, 0, 12 * SEC);
        dsad_policy_tick(p, &l, 1, 0.25, 12 * SEC);
        assert_int_equal(l->level, 1);
        ladder_free(l);
        dsad_policy_free(p);
}

static void test_load_utilization(void **state) {
        struct dsad_policy *p = policy(100, 0);
        struct dsad_ladder *l = ladder();

        /* 80 req/s of 20 ms keep 2 workers 80% busy: fine; 100 req/s: 100%. */
        assert_int_equal(choose_at(p, l, 80, 10 * SEC), 0);
        assert_int_equal(choose_at(p, l, 100, 10 * SEC), 1);
        ladder_free(l);
        dsad_policy_free(p);
}

static void test_min_accuracy_and_unknown(void **state) {
        struct dsad_policy *p = policy(100, 0);
        struct dsad_ladder *l = ladder();
        struct dsad_policy_settings s;

        /* Nothing meets 1 ms at this queue: the cheapest eligible is tiny, never odd (unknown). */
        dsad_policy_get_settings(p, &s);
        s.latency_target_ms = 0.1;
        dsad_policy_set_settings(p, &s);
        assert_int_equal(choose(p, l, 50, 10 * SEC), 3);
        s.min_accuracy = 0.99;
        dsad_policy_set_settings(p, &s);
        assert_int_equal(choose(p, l, 50, 10 * SEC), 2);
        assert_int_equal(l->level, 2);
        assert_string_equal(l->reason, "min accuracy 0.990");
        /* The tick moves it too when no request comes. */
        s.min_accuracy = 0.995;
        dsad_policy_set_settings(p, &s);
        assert_true(dsad_policy_tick(p, &l, 1, 0.25, 10 * SEC));
        assert_int_equal(l->level, 1);
        ladder_free(l);
        dsad_policy_free(p);
}

/* n ticks of 0.25 s with rate requests/s arriving. */
static void ticks(struct dsad_policy *p, struct dsad_ladder *l, double rate, int n, uint64_t *now) {
        for (int i = 0; i < n; i++) {
                l->arrivals = (uint64_t) (rate / 4);
                *now += SEC / 4;
                dsad_policy_tick(p, &l, 1, 0.25, *now);
        }
}

static void test_power_budget(void **state) {
        struct dsad_policy *p = policy(1000, 1.5);
        struct dsad_ladder *l = ladder();
        struct dsad_policy_settings s;
        uint64_t now = 10 * SEC;
        char v[64], why[256];

        l->tokens = 32;
        /* 100 req/s: base 20 W, int8 10, pruned 5, tiny 1 W. Budget 1.5 W: tiny. */
        ticks(p, l, 100, 40, &now);
        assert_true(l->rate > 99 && l->rate < 101);
        assert_int_equal(l->floor, 3);
        assert_int_equal(l->level, 3);
        assert_true(dsad_policy_take_change(l, v, sizeof(v), why, sizeof(why)));
        assert_string_equal(v, "tiny");
        assert_non_null(strstr(why, "power: "));
        assert_int_equal(choose(p, l, 0, now), 3);
        /* Mix: (1.5 - 1) / (5 - 1) = 12.5% of requests run on pruned. */
        assert_near(l->mix, (1.5 - 1) / 4, 0.01);
        size_t up = 0;
        for (int i = 0; i < 1000; i++)
                up += choose(p, l, 0, now) == 2;
        assert_in_range(up, 115, 135);
        /* A bigger budget: back up only after the hysteresis. */
        dsad_policy_get_settings(p, &s);
        s.power_budget_w = 12;
        dsad_policy_set_settings(p, &s);
        ticks(p, l, 100, 4, &now);
        assert_int_equal(l->floor, 3);
        ticks(p, l, 100, 8, &now);
        assert_int_equal(l->floor, 1);
        assert_int_equal(choose(p, l, 0, now), 1);
        /* Measured power twice the prediction: the model is scaled and the floor drops. */
        struct dsad_policy_signals g;
        dsad_policy_get_signals(p, &g);
        g.power_w = 20;
        dsad_policy_set_signals(p, &g);
        for (int i = 0; i < 12 && l->floor < 2; i++)
                ticks(p, l, 100, 1, &now);
        assert_true(l->power_scale > 1.2);
        assert_int_equal(l->floor, 2);
        ladder_free(l);
        dsad_policy_free(p);
}

static void test_battery_and_profiles(void **state) {
        struct dsad_policy *p = policy(100, 0);
        struct dsad_ladder *l = ladder();
        struct dsad_policy_settings s;
        struct dsad_policy_signals g;
        struct dsad_policy_effective e;
        uint64_t now = 10 * SEC;
        char v[64], why[256];

        dsad_policy_get_settings(p, &s);
        s.battery_min_accuracy = 0.99;
        s.battery_power_budget_w = 3;
        dsad_policy_set_settings(p, &s);
        dsad_policy_get_signals(p, &g);
        g.on_battery = true;
        g.battery_percent = 50;
        dsad_policy_set_signals(p, &g);
        dsad_policy_effective(p, &e);
        assert_near(e.power_budget_w, 3, 0);
        assert_near(e.min_accuracy, 0.99, 0);
        assert_false(e.cheapest);
        /* Low battery: the cheapest rung 0.99 allows. */
        g.battery_percent = 15;
        dsad_policy_set_signals(p, &g);
        ticks(p, l, 0, 1, &now);
        assert_int_equal(l->level, 2);
        assert_true(dsad_policy_take_change(l, v, sizeof(v), why, sizeof(why)));
        assert_string_equal(why, "battery 15% <= 20%: the cheapest variant kept >= 0.99");
        assert_int_equal(choose(p, l, 0, now), 2);
        /* Power-saver on AC: the cheapest 0.95 allows. */
        g.on_battery = false;
        g.battery_percent = NAN;
        snprintf(g.profile, sizeof(g.profile), "power-saver");
        dsad_policy_set_signals(p, &g);
        ticks(p, l, 0, 1, &now);
        assert_int_equal(l->level, 3);
        /* Performance on AC: no budget. */
        snprintf(g.profile, sizeof(g.profile), "performance");
        dsad_policy_set_signals(p, &g);
        s.power_budget_w = 1;
        dsad_policy_set_settings(p, &s);
        dsad_policy_effective(p, &e);
        assert_near(e.power_budget_w, 0, 0);
        now += 3 * SEC;
        assert_int_equal(choose(p, l, 0, now), 0);
        ladder_free(l);
        dsad_policy_free(p);
}

static void test_hints_and_fixed(void **state) {
        struct dsad_policy *p = policy(100, 0);
        struct dsad_ladder *l = ladder();
        struct dsad_policy_settings s;
        struct dsad_hints h = { .max_latency_ms = 12 };

        /* A tighter latency for one request: int8 (10 ms); the level stays at base. */
        assert_int_equal(dsad_policy_choose(p, l, &h, 1, 32, 0, 0, 10 * SEC), 1);
        assert_int_equal(l->level, 0);
        /* Under a burst (300/s: base and int8 overloaded) the level is pruned; a request that
         * needs 0.998 still gets int8. */
        l->rate = 300;
        assert_int_equal(choose(p, l, 20, 10 * SEC), 2);
        h = (struct dsad_hints){ .min_accuracy = 0.998 };
        assert_int_equal(dsad_policy_choose(p, l, &h, 1, 32, 0, 20, 10 * SEC), 1);
        h.min_accuracy = 1;
        assert_int_equal(dsad_policy_choose(p, l, &h, 1, 32, 0, 20, 10 * SEC), 0);
        assert_int_equal(l->level, 2);
        /* Fixed: the named rung, even unknown; a missing name runs the base. */
        dsad_policy_get_settings(p, &s);
        s.fixed = true;
        snprintf(s.fixed_variant, sizeof(s.fixed_variant), "odd");
        dsad_policy_set_settings(p, &s);
        assert_int_equal(choose(p, l, 100, 10 * SEC), 4);
        snprintf(s.fixed_variant, sizeof(s.fixed_variant), "nope");
        dsad_policy_set_settings(p, &s);
        assert_int_equal(choose(p, l, 100, 10 * SEC), 0);
        assert_string_equal(l->reason, "policy fixed:nope (absent: base)");
        ladder_free(l);
        dsad_policy_free(p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_service_estimates),
                cmocka_unit_test(test_idle_runs_most_accurate),
                cmocka_unit_test(test_burst_and_hysteresis),
                cmocka_unit_test(test_recovery_steps),
                cmocka_unit_test(test_waited_batch_catches_up),
                cmocka_unit_test(test_late_requests_push_the_level),
                cmocka_unit_test(test_load_utilization),
                cmocka_unit_test(test_min_accuracy_and_unknown),
                cmocka_unit_test(test_power_budget),
                cmocka_unit_test(test_battery_and_profiles),
                cmocka_unit_test(test_hints_and_fixed),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
