/* dsactl policy: dsad's adaptive policy (docs/dbus-api.md, "The adaptive policy"). "policy show"
 * prints the live picture (GetPolicy) and the variants of every loaded model (GetVariants),
 * "policy set" changes the writable properties; dsactl status gets the policy's lines from
 * here too. Everything goes through libdsa; a dsad without the policy answers -EOPNOTSUPP. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "basic/parse-util.h"
#include "dsa/dsa.h"
#include "online.h"
#include "util.h"
#include "verbs.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_policy *, dsa_policy_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct json_object *, json_object_put);

/* Like cli_online_error(), with the reason of a dsad too old for the call. */
static int policy_error(struct dsa_client *c, int r, const char *what) {
        const char *msg = dsa_client_error_message(c);

        if (r != -EOPNOTSUPP)
                return cli_online_error(c, r, what);
        if (msg && *msg)
                fprintf(stderr, "dsactl: %s: dsad has no adaptive policy (%s)\n", what, msg);
        else
                fprintf(stderr, "dsactl: %s: dsad has no adaptive policy\n", what);
        return 1;
}

static struct json_object *json_string_or_null(const char *s) {
        return s ? json_object_new_string(s) : NULL;
}

static struct json_object *policy_json(const struct dsa_policy *p) {
        struct json_object *o = json_object_new_object();

        json_object_object_add(o, "mode", json_string_or_null(p->mode));
        json_object_object_add(o, "latency_target_ms", cli_json_float(p->latency_target_ms));
        json_object_object_add(o, "power_budget_w", cli_json_float(p->power_budget_w));
        json_object_object_add(o, "min_accuracy", cli_json_float(p->min_accuracy));
        json_object_object_add(o, "on_battery", p->on_battery < 0 ? NULL : json_object_new_boolean(p->on_battery));
        json_object_object_add(o, "battery_percentage", cli_json_float(p->battery_percentage));
        json_object_object_add(o, "power_profile", json_string_or_null(p->power_profile));
        json_object_object_add(o, "power_w", cli_json_float(p->power_w));
        json_object_object_add(o, "package_power_w", cli_json_float(p->package_power_w));
        json_object_object_add(o, "power_source", json_string_or_null(p->power_source));
        json_object_object_add(o, "core_watts", cli_json_float(p->core_watts));
        json_object_object_add(o, "cpu_pressure", cli_json_float(p->cpu_pressure));
        json_object_object_add(o, "arrival_rate", cli_json_float(p->arrival_rate));
        json_object_object_add(o, "queue_depth", json_object_new_int64(p->queue_depth));
        return o;
}

/* v through format (one double conversion: "%.4g W"), or unknown when dsad did not say (v < 0). */
static const char *fmt(char *buf, size_t n, const char *format, double v, const char *unknown) {
        if (v < 0)
                return unknown;
        snprintf(buf, n, format, v);
        return buf;
}

/* The "Key: value" lines of the policy: what status shows, and with full what policy show adds
 * (the power model's inputs and the load). */
static void policy_print(const struct dsa_policy *p, bool full) {
        char a[32], b[32];

        printf("Policy: %s\n", p->mode ? p->mode : "?");
        printf("Latency target: %s\n", fmt(a, sizeof(a), "%.4g ms", p->latency_target_ms, "?"));
        printf("Power budget: %s\n",
               p->power_budget_w == 0 ? "none" : fmt(a, sizeof(a), "%.4g W", p->power_budget_w, "?"));
        printf("Min accuracy: %s\n", fmt(a, sizeof(a), "%.4f", p->min_accuracy, "?"));
        printf("Power: %s (%s)\n", fmt(a, sizeof(a), "%.4g W", p->power_w, "?"),
               p->power_source ? p->power_source : "?");
        printf("Battery: %s%s%s\n", p->on_battery < 0 ? "?" : p->on_battery ? "on battery" : "on AC power",
               p->battery_percentage >= 0 ? ", " : "", fmt(b, sizeof(b), "%.4g%%", p->battery_percentage, ""));
        printf("Profile: %s\n", p->power_profile && *p->power_profile ? p->power_profile : "none");
        if (!full)
                return;
        printf("Package power: %s\n", fmt(a, sizeof(a), "%.4g W", p->package_power_w, "unknown (no RAPL)"));
        printf("Core watts: %s\n", fmt(a, sizeof(a), "%.4g W", p->core_watts, "?"));
        printf("CPU pressure: %s\n", fmt(a, sizeof(a), "%.4g%%", p->cpu_pressure, "unknown (no PSI)"));
        printf("Arrival rate: %s\n", fmt(a, sizeof(a), "%.4g req/s", p->arrival_rate, "?"));
        if (p->queue_depth >= 0)
                printf("Queue depth: %" PRId64 "\n", p->queue_depth);
        else
                printf("Queue depth: ?\n");
}

/* ---- dsactl status */

int cli_policy_status(struct dsa_client *c, struct json_object *status_json) {
        _cleanup_(dsa_policy_freep) struct dsa_policy *p = NULL;
        _cleanup_(json_object_putp) struct json_object *jv = NULL;
        struct dsa_model_info *m = NULL;
        size_t n = 0;
        int r;

        r = dsa_client_get_policy(c, &p);
        if (r == -EOPNOTSUPP)
                return 0;
        if (r < 0)
                return policy_error(c, r, "status");
        r = dsa_client_list_models(c, &m, &n);
        if (r < 0)
                return cli_online_error(c, r, "status");
        if (status_json)
                jv = json_object_new_array();
        else
                policy_print(p, false);
        for (size_t i = 0; i < n && r >= 0; i++) {
                _cleanup_free_ char *variant = NULL, *reason = NULL;

                if (!m[i].loaded)
                        continue;
                r = dsa_client_get_current_variant(c, m[i].name, &variant, &reason);
                if (r == -ENOENT || r == -EOPNOTSUPP) {
                        r = 0; /* gone meanwhile, or a dsad without variants */
                        continue;
                }
                if (r < 0)
                        cli_online_error(c, r, m[i].name);
                else if (jv) {
                        struct json_object *o = json_object_new_object();
                        json_object_object_add(o, "model", json_object_new_string(m[i].name));
                        json_object_object_add(o, "variant", json_object_new_string(variant));
                        json_object_object_add(o, "reason", json_object_new_string(reason));
                        json_object_array_add(jv, o);
                } else
                        printf("Model %s: variant %s%s%s%s\n", m[i].name, *variant ? variant : "?",
                               *reason ? " (" : "", reason, *reason ? ")" : "");
        }
        dsa_model_info_free(m, n);
        if (r < 0)
                return 1;
        if (status_json) {
                json_object_object_add(status_json, "policy", policy_json(p));
                json_object_object_add(status_json, "variants", TAKE_PTR(jv));
        }
        return 0;
}

/* ---- dsactl policy show */

static struct json_object *variants_json(const struct dsa_variant_info *v, size_t n) {
        struct json_object *a = json_object_new_array_ext((int) n);

        for (size_t i = 0; i < n; i++) {
                struct json_object *o = json_object_new_object();
                struct json_object *lat = json_object_new_array_ext((int) v[i].n_latency);

                for (size_t k = 0; k < v[i].n_latency; k++) {
                        struct json_object *b = json_object_new_object();
                        json_object_object_add(b, "tokens", json_object_new_int64(v[i].latency[k].tokens));
                        json_object_object_add(b, "ms", cli_json_float(v[i].latency[k].ms));
                        json_object_array_add(lat, b);
                }
                json_object_object_add(o, "name", json_object_new_string(v[i].name));
                json_object_object_add(o, "current", json_object_new_boolean(v[i].current));
                json_object_object_add(o, "accuracy_kept", cli_json_float(v[i].accuracy_kept));
                json_object_object_add(o, "accuracy", cli_json_float(v[i].accuracy));
                json_object_object_add(o, "weight_bytes", json_object_new_uint64(v[i].weight_bytes));
                json_object_object_add(o, "served", json_object_new_uint64(v[i].requests));
                json_object_object_add(o, "energy_j", cli_json_float(v[i].energy_j));
                json_object_object_add(o, "latency", lat);
                json_object_array_add(a, o);
        }
        return a;
}

/* One model's ladder: a row per variant, "*" on the current one, "-" for what is unknown. */
static void variants_print(const char *model, const struct dsa_variant_info *v, size_t n) {
        printf("\n%s:\n  %-16s %-3s %-6s %-8s %-10s %-8s %s\n", model, "VARIANT", "CUR", "KEPT", "ACCURACY",
               "ENERGY_J", "SERVED", "LATENCY (TOKENS:MS)");
        for (size_t i = 0; i < n; i++) {
                char kept[32], acc[32], energy[32];

                printf("  %-16s %-3s %-6s %-8s %-10s %-8" PRIu64 " ", v[i].name, v[i].current ? "*" : "",
                       fmt(kept, sizeof(kept), "%.4f", v[i].accuracy_kept, "-"),
                       fmt(acc, sizeof(acc), "%.4f", v[i].accuracy, "-"),
                       fmt(energy, sizeof(energy), "%.4g", v[i].energy_j, "-"), v[i].requests);
                for (size_t k = 0; k < v[i].n_latency; k++)
                        printf("%s%" PRIu32 ":%.3g", k ? " " : "", v[i].latency[k].tokens, v[i].latency[k].ms);
                puts(v[i].n_latency ? "" : "-");
        }
}

static int policy_show(int argc, char **argv) {
        _cleanup_(dsa_policy_freep) struct dsa_policy *p = NULL;
        _cleanup_(json_object_putp) struct json_object *jm = NULL;
        struct dsa_client *c = NULL;
        struct dsa_model_info *m = NULL;
        bool json = false;
        size_t n = 0;
        int r;

        r = cli_online_control_open(argc, argv, "policy show", &json, &c);
        if (r >= 0)
                return r;
        r = dsa_client_get_policy(c, &p);
        if (r < 0) {
                policy_error(c, r, "policy show");
                goto out;
        }
        r = dsa_client_list_models(c, &m, &n);
        if (r < 0) {
                cli_online_error(c, r, "policy show");
                goto out;
        }
        if (json)
                jm = json_object_new_array();
        else
                policy_print(p, true);
        for (size_t i = 0; i < n; i++) {
                struct dsa_variant_info *v = NULL;
                size_t nv = 0;

                if (!m[i].loaded)
                        continue;
                r = dsa_client_get_variants(c, m[i].name, &v, &nv);
                if (r == -EALREADY || r == -ENOENT)
                        continue; /* unloaded meanwhile */
                if (r < 0) {
                        cli_online_error(c, r, m[i].name);
                        goto out;
                }
                if (jm) {
                        struct json_object *o = json_object_new_object();
                        json_object_object_add(o, "name", json_object_new_string(m[i].name));
                        json_object_object_add(o, "variants", variants_json(v, nv));
                        json_object_array_add(jm, o);
                } else
                        variants_print(m[i].name, v, nv);
                dsa_variant_info_free(v, nv);
        }
        if (json) {
                struct json_object *o = policy_json(p);
                json_object_object_add(o, "models", TAKE_PTR(jm));
                cli_json_print(o);
        }
        r = 0;
out:
        dsa_model_info_free(m, n);
        dsa_client_free(c);
        return r < 0 ? 1 : 0;
}

/* ---- dsactl policy set */

enum {
        ARG_LATENCY_TARGET = 0x100,
        ARG_POWER_BUDGET,
        ARG_MIN_ACCURACY,
        ARG_MODE,
        ARG_BUS,
};

struct policy_set {
        double latency_target, power_budget, min_accuracy; /* < 0: not given */
        const char *mode;
};

/* Parses policy set's options; returns optind, -1 after --help, -2 on usage errors. */
static int parse_set(int argc, char **argv, struct policy_set *o) {
        static const struct option options[] = {
                { "latency-target", required_argument, NULL, ARG_LATENCY_TARGET },
                { "power-budget", required_argument, NULL, ARG_POWER_BUDGET },
                { "min-accuracy", required_argument, NULL, ARG_MIN_ACCURACY },
                { "mode", required_argument, NULL, ARG_MODE },
                { "bus", required_argument, NULL, ARG_BUS },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        const char *verb = "policy set";
        int c;

        opterr = 0; /* our own one-line message instead */
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case ARG_LATENCY_TARGET:
                        if (dsa_parse_double(optarg, 0, 1e9, &o->latency_target) < 0 || o->latency_target == 0)
                                return cli_usage(verb, "--latency-target takes milliseconds > 0"), -2;
                        break;
                case ARG_POWER_BUDGET:
                        if (dsa_parse_double(optarg, 0, 1e6, &o->power_budget) < 0)
                                return cli_usage(verb, "--power-budget takes watts >= 0 (0: no budget)"), -2;
                        break;
                case ARG_MIN_ACCURACY:
                        if (dsa_parse_double(optarg, 0, 1, &o->min_accuracy) < 0)
                                return cli_usage(verb, "--min-accuracy takes a fraction 0..1 of the base's"), -2;
                        break;
                case ARG_MODE:
                        if (strcmp(optarg, "adaptive") != 0 && (strncmp(optarg, "fixed:", 6) != 0 || !optarg[6]))
                                return cli_usage(verb, "--mode takes adaptive or fixed:VARIANT"), -2;
                        o->mode = optarg;
                        break;
                case ARG_BUS:
                        cli_bus = optarg;
                        break;
                case 'h':
                        dsactl_help(stdout);
                        return -1;
                default:
                        return cli_usage(verb, "unknown option or missing value"), -2;
                }
        return optind;
}

static int policy_set(int argc, char **argv) {
        struct policy_set o = { .latency_target = -1, .power_budget = -1, .min_accuracy = -1 };
        struct dsa_client *c = NULL;
        int idx, r = 0;

        idx = parse_set(argc, argv, &o);
        if (idx < 0)
                return idx == -1 ? 0 : 2;
        if (idx != argc)
                return cli_usage("policy set", "takes no arguments");
        if (o.latency_target < 0 && o.power_budget < 0 && o.min_accuracy < 0 && !o.mode)
                return cli_usage("policy set",
                                 "needs --latency-target, --power-budget, --min-accuracy or --mode");
        if (cli_online_connect(&c) < 0)
                return 1;
        /* One property at a time, in this order: a refusal leaves the ones before it set. */
        if (o.latency_target >= 0 && (r = dsa_client_set_latency_target(c, o.latency_target)) < 0)
                policy_error(c, r, "policy set --latency-target");
        else if (o.power_budget >= 0 && (r = dsa_client_set_power_budget(c, o.power_budget)) < 0)
                policy_error(c, r, "policy set --power-budget");
        else if (o.min_accuracy >= 0 && (r = dsa_client_set_min_accuracy(c, o.min_accuracy)) < 0)
                policy_error(c, r, "policy set --min-accuracy");
        else if (o.mode && (r = dsa_client_set_policy_mode(c, o.mode)) < 0)
                policy_error(c, r, "policy set --mode");
        dsa_client_free(c);
        return r < 0 ? 1 : 0;
}

int verb_policy(int argc, char **argv) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
                dsactl_help(stdout);
                return 0;
        }
        optind = 0; /* the subverb parses its own options */
        if (argc >= 2 && !strcmp(argv[1], "show"))
                return policy_show(argc - 1, argv + 1);
        if (argc >= 2 && !strcmp(argv[1], "set"))
                return policy_set(argc - 1, argv + 1);
        return cli_usage("policy", "takes show or set");
}
