/* The adaptive policy: which rung of a model's variant ladder runs each request.
 *
 *   ladder.c     a model's rungs: NAME.gguf ("base") and every NAME@VARIANT.gguf of the store,
 *                mapped together at load, ordered by accuracy kept, probed once for latency
 *   policy.c     the decision (pure: settings, signals and measurements in, a rung out), the
 *                online latency tables (EWMA per rung and token bucket) and the hysteresis
 *   adaptive.c   the loop side: a tick that reads power and load, the UPower and
 *                power-profiles-daemon watcher, VariantChanged signals
 *
 * Model of a request's cost on rung i with t tokens: s_i(t) milliseconds of one engine call
 * (EWMA of what dsad measured, per power-of-two token bucket, scaled linearly from the nearest
 * measured bucket where one is missing); in a batch of b requests, s_i(b t) / b each;
 * threads_i busy threads while it runs, so core_watts * s_i(b t) / b * threads_i / 1000 joules. Rates are requests per second per model.
 *
 * Threads: the ladder's and the policy's mutable state is under their own locks; workers call
 * dsad_policy_choose() and dsad_policy_observe(), the loop thread everything else. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dsa_model;
struct dsad;

#define DSAD_POLICY_BUCKETS 10u /* token buckets 8, 16, ..., 4096 (and above) */
#define DSAD_VARIANT_NAME_MAX 32u

struct dsad_rung {
        char *name;              /* "base", or VARIANT of NAME@VARIANT.gguf */
        char *path;
        struct dsa_model *engine; /* owned */
        double accuracy;         /* recorded eval accuracy for the ladder's task; NAN unknown */
        double kept;             /* accuracy / base accuracy; base 1; NAN unknown (never chosen) */
        uint64_t weight_bytes, file_bytes;
        unsigned threads;        /* engine threads a call keeps busy */

        /* Under the ladder's lock. */
        double lat_ms[DSAD_POLICY_BUCKETS]; /* EWMA of one engine call per bucket; 0 = none yet */
        uint64_t served;         /* requests run on this rung */
};

/* One model's variants and the policy's state for it. */
struct dsad_ladder {
        size_t n;
        struct dsad_rung *rungs; /* most accurate first; base is rungs[base] */
        size_t base;
        char task[32];           /* the eval task the accuracies come from, "" none */

        pthread_mutex_t lock;
        /* Policy state, under lock. */
        size_t level;            /* the rung normal requests run on */
        size_t floor;            /* most accurate rung the power budget allows */
        uint64_t pressure_usec;  /* last time latency pushed the level down */
        uint64_t recover_usec;   /* last step back up */
        uint64_t floor_ok_usec;  /* since when a higher floor would fit the budget (0: not) */
        char reason[192];
        bool announced;          /* level and reason were signalled */
        double mix;              /* fraction of requests the power budget lets run one rung up */
        double mix_acc;          /* error-diffusion accumulator for mix */
        double mix_bias;         /* integral correction of mix from the measured power */
        uint64_t arrivals;       /* requests since the last tick (atomic) */
        double rate;             /* EWMA requests/s */
        double rate_now;         /* requests/s over the last tick alone */
        double tokens;           /* EWMA tokens per request */
        double batch;            /* EWMA requests per engine call */
        double power_scale;      /* measured / predicted power, EWMA (1 without feedback) */
        uint64_t level_usec;     /* when the level last changed */
        uint64_t tick_requests;  /* requests chosen for since the last tick */
        uint64_t tick_late;      /* of them, run on a faster rung than the level to catch up */
};

/* Opens every rung of model name from store: store/NAME.gguf and store/NAME@*.gguf. Variants
 * that do not load, or whose architecture or labels differ from the base, are skipped with a
 * warning. threads: engine threads per rung. Then runs each rung once per probe bucket (8, 32,
 * 128 and 512 tokens in all, as batches of 16-token texts) so the policy starts from measured
 * latencies. On success *ret owns the engines. */
int dsad_ladder_open(const char *store, const char *name, unsigned threads, struct dsad_ladder **ret);
struct dsad_ladder *dsad_ladder_free(struct dsad_ladder *l);
/* The base model's engine (the one tokenize and the model's properties describe). */
struct dsa_model *dsad_ladder_base(const struct dsad_ladder *l);
/* Index of the rung called name, or -ENOENT. */
int dsad_ladder_find(const struct dsad_ladder *l, const char *name);

/* Settings (dsad.conf [policy] and [battery], D-Bus writes). */
struct dsad_policy_settings {
        bool fixed;                         /* run fixed_variant (or the base where absent) */
        char fixed_variant[DSAD_VARIANT_NAME_MAX + 1];
        double latency_target_ms;           /* > 0 */
        double power_budget_w;              /* 0 = none */
        double min_accuracy;                /* 0..1 of the base's */
        double hysteresis_s;                /* a rung runs at least this long before a more accurate one */
        double battery_power_budget_w;      /* on battery, when > 0, instead of power_budget_w */
        double battery_min_accuracy;        /* on battery, when > 0, instead of min_accuracy */
        double battery_low_percent;         /* at or below: the cheapest rung min_accuracy allows */
        double core_watts, idle_watts;      /* CPU-time power model (RAPL calibrates core_watts) */
};
void dsad_policy_settings_defaults(struct dsad_policy_settings *s);
/* "adaptive" or "fixed:VARIANT" (VARIANT 1..DSAD_VARIANT_NAME_MAX characters) into s's fixed and
 * fixed_variant; -EINVAL, s untouched, for anything else. The format writes it back. */
int dsad_policy_parse_mode(const char *mode, struct dsad_policy_settings *s);
void dsad_policy_format_mode(const struct dsad_policy_settings *s, char *buf, size_t size);

/* What the loop knows about the machine. */
struct dsad_policy_signals {
        bool on_battery;
        double battery_percent; /* NAN unknown */
        char profile[32];       /* power-profiles-daemon ActiveProfile, "" unknown */
        double power_w;         /* dsad's power over the last tick(s), NAN unknown */
        double cpu_pressure;    /* PSI cpu some avg10 (0..100), NAN unknown */
        double core_watts;      /* the power model in use */
        unsigned workers;
};

/* Per-request hints (ring SQE / D-Bus); zero = none. */
struct dsad_hints {
        double min_accuracy;
        double max_latency_ms;
        unsigned priority;
};

struct dsad_policy;
int dsad_policy_new(const struct dsad_policy_settings *s, struct dsad_policy **ret);
struct dsad_policy *dsad_policy_free(struct dsad_policy *p);
void dsad_policy_set_settings(struct dsad_policy *p, const struct dsad_policy_settings *s);
void dsad_policy_get_settings(struct dsad_policy *p, struct dsad_policy_settings *ret);
void dsad_policy_set_signals(struct dsad_policy *p, const struct dsad_policy_signals *s);
void dsad_policy_get_signals(struct dsad_policy *p, struct dsad_policy_signals *ret);
/* The budget and minimum accuracy in force (battery rules applied), and whether the cheapest
 * eligible rung is forced (low battery, power-saver profile) with why. */
struct dsad_policy_effective {
        double power_budget_w, min_accuracy, latency_target_ms;
        bool cheapest;
        char why[64];
};
void dsad_policy_effective(struct dsad_policy *p, struct dsad_policy_effective *ret);

/* Estimated tokens of a text of len UTF-8 bytes (len/4 + 2: word pieces plus [CLS], [SEP]).
 * Inline so the request decoder needs nothing else of the policy. */
static inline unsigned dsad_policy_tokens(size_t len) {
        return (unsigned) (len / 4 + 2 < ((size_t) 1 << 20) ? len / 4 + 2 : (size_t) 1 << 20);
}

/* On a worker, before an engine call of n requests with tokens estimated tokens in all,
 * the oldest queued for waited_usec, queue_depth more waiting: the rung to run. h: the hints of
 * the batch (NULL none). Updates the ladder's level (hysteresis) and, when it changed, its
 * reason; returns the rung index. */
size_t dsad_policy_choose(struct dsad_policy *p, struct dsad_ladder *l, const struct dsad_hints *h,
                          unsigned n, unsigned tokens, uint64_t waited_usec, unsigned queue_depth,
                          uint64_t now_usec);
/* After the call: its wall time, for the rung's latency table. */
void dsad_policy_observe(struct dsad_ladder *l, size_t rung, unsigned n, unsigned tokens, double ms);
/* Counts an arrival (any thread). */
void dsad_policy_arrival(struct dsad_ladder *l);
/* On the loop thread every interval_s: rates, the power floor (and feedback from measured
 * power), forced rungs. Returns true when the ladder's level changed. */
bool dsad_policy_tick(struct dsad_policy *p, struct dsad_ladder *const *ladders, size_t n,
                      double interval_s, uint64_t now_usec);
/* Predicted milliseconds of one engine call on rung i for t tokens (under the ladder's lock or
 * with a racy read accepted); 0 when nothing was measured yet. */
double dsad_policy_service_ms(const struct dsad_ladder *l, size_t i, double t);
/* Predicted milliseconds of one request of t tokens on rung i when it runs in a batch of the
 * size calls have had lately (the per-request share of that call). */
double dsad_policy_request_ms(const struct dsad_ladder *l, size_t i, double t);
/* Predicted watts of rung i at rate requests/s with t tokens per request, batched as lately. */
double dsad_policy_power_w(const struct dsad_ladder *l, size_t i, double rate, double t, double core_watts);
/* Whether rung i may be chosen under min_accuracy. */
bool dsad_policy_eligible(const struct dsad_ladder *l, size_t i, double min_accuracy);
/* Takes the not yet announced change of l, if any: copies variant name and reason, marks it
 * announced and returns true. Loop thread. */
bool dsad_policy_take_change(struct dsad_ladder *l, char *ret_variant, size_t variant_size,
                             char *ret_reason, size_t reason_size);
