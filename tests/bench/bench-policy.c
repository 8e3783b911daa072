/* Trace replay against dsad's policies (issue 7's benchmark; tests/bench/policy-bench.sh runs
 * it): requests arrive at the times of a seeded Poisson process whose rate follows a bursty
 * piecewise trace, each one SST-2 dev sentence sent through one libdsa session asynchronously.
 * The same trace runs once per policy (dsad's Policy property: fixed:VARIANT or adaptive, with
 * the latency target and power budget given), after a quiet pause. Latency counts from the
 * scheduled arrival to the callback, so a client that falls behind is charged too. Every
 * result is checked against the sentence's label (real accuracy), and also scored with the
 * SST-2 dev accuracy recorded in the variant that ran it (expected accuracy: the same measure
 * without the resampling noise of a few thousand requests); dsad's Power (GetPolicy) is
 * sampled every 250 ms.
 *
 * Output, one JSON object per line (policy: --label, default the policy): per policy and
 * window {"policy","t","offered","n","p95_ms",
 * "correct","power_w","variants":{...}}, then per policy a summary {"policy","summary":...}. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "basic/rng.h"
#include "dsa/dsa.h"

#define MAX_SEGMENTS 64
#define MAX_VARIANTS 16

struct segment {
        double secs, rate;
};

struct req {
        double at;      /* scheduled arrival, s from the start */
        size_t text;    /* dev row */
        double latency; /* ms; < 0 failed */
        int variant;    /* index in names, -1 none */
        bool correct;
};

struct run {
        struct req *reqs;
        size_t n, next, done, failed;
        const char *names[MAX_VARIANTS];
        double accuracy[MAX_VARIANTS]; /* each variant's recorded dev accuracy (GetVariants) */
        size_t n_names;
        double t0;
        char **texts;
        int *labels;
        const char *const *label_names;
        size_t n_label_names;
};

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static uint64_t rng_state = 42;
static double rng_uniform(void) {
        return ((double) (dsa_rng_next(&rng_state) >> 11) + 0.5) / 9007199254740992.0;
}

static int parse_trace(const char *spec, struct segment *seg, size_t *ret_n) {
        size_t n = 0;
        const char *p = spec;

        while (*p && n < MAX_SEGMENTS) {
                char *end;
                seg[n].secs = strtod(p, &end);
                if (end == p || *end != ':' || !(seg[n].secs > 0))
                        return -EINVAL;
                p = end + 1;
                seg[n].rate = strtod(p, &end);
                if (end == p || !(seg[n].rate >= 0) || (*end && *end != ','))
                        return -EINVAL;
                n++;
                p = *end ? end + 1 : end;
        }
        *ret_n = n;
        return n > 0 ? 0 : -EINVAL;
}

/* dev.tsv: sentence \t label, with a header line. */
static int read_dev(const char *path, char ***ret_texts, int **ret_labels, size_t *ret_n) {
        FILE *f = fopen(path, "re");
        char line[8192];
        size_t n = 0, cap = 0;
        char **texts = NULL;
        int *labels = NULL;

        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f)) {
                char *tab = strrchr(line, '\t');
                if (!tab || (tab[1] != '0' && tab[1] != '1'))
                        continue; /* the header */
                *tab = 0;
                if (n == cap) {
                        cap = cap ? 2 * cap : 1024;
                        texts = realloc(texts, cap * sizeof(*texts));
                        labels = realloc(labels, cap * sizeof(*labels));
                        if (!texts || !labels)
                                abort();
                }
                texts[n] = strdup(line);
                labels[n++] = tab[1] - '0';
        }
        fclose(f);
        *ret_texts = texts;
        *ret_labels = labels;
        *ret_n = n;
        return n > 0 ? 0 : -EINVAL;
}

struct ctx {
        struct run *run;
        size_t i;
};

static void on_result(struct dsa_session *s, uint64_t id, int status, struct dsa_result *result, void *userdata) {
        struct ctx *c = userdata;
        struct run *run = c->run;
        struct req *q = &run->reqs[c->i];

        q->latency = status < 0 ? -1 : (now_s() - run->t0 - q->at) * 1000.0;
        q->variant = -1;
        if (status >= 0 && result && result->classify) {
                const char *label = result->classify[0].label;
                q->correct = label && run->n_label_names == 2 &&
                             strcmp(label, run->label_names[run->labels[q->text]]) == 0;
                for (size_t k = 0; result->variant && k < run->n_names; k++)
                        if (strcmp(run->names[k], result->variant) == 0)
                                q->variant = (int) k;
        }
        if (status < 0)
                run->failed++;
        run->done++;
        free(c);
}

static int fail(const char *what, int r) {
        fprintf(stderr, "bench-policy: %s: %s\n", what, strerror(-r));
        return 1;
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "model", required_argument, NULL, 'm' },  { "data", required_argument, NULL, 'd' },
                { "trace", required_argument, NULL, 't' },  { "policy", required_argument, NULL, 'p' },
                { "target", required_argument, NULL, 'T' }, { "budget", required_argument, NULL, 'b' },
                { "window", required_argument, NULL, 'w' }, { "seed", required_argument, NULL, 's' },
                { "pause", required_argument, NULL, 'P' },  { "label", required_argument, NULL, 'L' },
                {},
        };
        const char *model = "sst2", *data = NULL, *trace = NULL, *policy = "adaptive", *label = NULL;
        double target = 25, budget = 0, window = 1, pause_s = 3;
        struct segment seg[MAX_SEGMENTS];
        size_t n_seg = 0, n_dev = 0;
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        struct run run = {};
        int o, r;

        while ((o = getopt_long(argc, argv, "", opts, NULL)) >= 0)
                switch (o) {
                case 'm': model = optarg; break;
                case 'd': data = optarg; break;
                case 't': trace = optarg; break;
                case 'p': policy = optarg; break;
                case 'T': target = atof(optarg); break;
                case 'b': budget = atof(optarg); break;
                case 'w': window = atof(optarg); break;
                case 's': rng_state = strtoull(optarg, NULL, 10); break;
                case 'P': pause_s = atof(optarg); break;
                case 'L': label = optarg; break;
                default: return 2;
                }
        if (!data || !trace || parse_trace(trace, seg, &n_seg) < 0 || !(window > 0)) {
                fprintf(stderr, "usage: bench-policy --data DEV.tsv --trace SECS:RATE,... [--model NAME] "
                                "[--policy adaptive|fixed:VARIANT] [--target MS] [--budget W] [--window S] [--seed N] "
                                "[--pause S] [--label NAME]\n");
                return 2;
        }
        if (!label)
                label = policy;
        r = read_dev(data, &run.texts, &run.labels, &n_dev);
        if (r < 0)
                return fail(data, r);

        /* The arrivals: Poisson within each segment. */
        double t = 0, end = 0;
        size_t cap = 0;
        for (size_t k = 0; k < n_seg; k++) {
                double seg_end = end + seg[k].secs;
                while (seg[k].rate > 0) {
                        t += -log(rng_uniform()) / seg[k].rate;
                        if (t >= seg_end)
                                break;
                        if (run.n == cap) {
                                cap = cap ? 2 * cap : 4096;
                                run.reqs = realloc(run.reqs, cap * sizeof(*run.reqs));
                                if (!run.reqs)
                                        abort();
                        }
                        run.reqs[run.n] = (struct req){ .at = t, .text = (size_t) (rng_uniform() * (double) n_dev) % n_dev };
                        run.n++;
                }
                t = end = seg_end;
        }

        r = dsa_client_new(NULL, &c);
        if (r < 0)
                return fail("connect", r);
        if ((r = dsa_client_set_policy_mode(c, policy)) < 0 || (r = dsa_client_set_latency_target(c, target)) < 0 ||
            (r = dsa_client_set_power_budget(c, budget)) < 0)
                return fail(dsa_client_error_message(c) ? dsa_client_error_message(c) : "set policy", r);
        r = dsa_session_open(c, model, 256, 16384, &s);
        if (r < 0)
                return fail("open session", r);
        const char *const *names = NULL;
        int k = dsa_session_get_variants(s, &names);
        for (int i = 0; i < k && i < MAX_VARIANTS; i++)
                run.names[run.n_names++] = names[i];
        {
                struct dsa_variant_info *vi = NULL;
                size_t nv = 0;
                r = dsa_client_get_variants(c, model, &vi, &nv);
                if (r < 0)
                        return fail("GetVariants", r);
                for (size_t i = 0; i < run.n_names; i++)
                        for (size_t j = 0; j < nv; j++)
                                if (strcmp(vi[j].name, run.names[i]) == 0)
                                        run.accuracy[i] = vi[j].accuracy;
                dsa_variant_info_free(vi, nv);
        }
        k = dsa_session_get_labels(s, &run.label_names);
        run.n_label_names = k > 0 ? (size_t) k : 0;

        /* Quiet first, so every policy starts from its idle choice. */
        usleep((useconds_t) (pause_s * 1e6));

        size_t n_samples = 0, cap_samples = (size_t) (end / 0.25) + 64;
        double *sample_t = calloc(cap_samples, sizeof(double)), *sample_w = calloc(cap_samples, sizeof(double));
        double next_sample = 0;
        int fd = dsa_session_get_fd(s);
        if (!sample_t || !sample_w)
                abort();
        run.t0 = now_s();
        while (run.done < run.n) {
                double now = now_s() - run.t0;
                bool full = false;
                while (run.next < run.n && run.reqs[run.next].at <= now) {
                        struct ctx *x = malloc(sizeof(*x));
                        const char *text = run.texts[run.reqs[run.next].text];
                        if (!x)
                                abort();
                        *x = (struct ctx){ .run = &run, .i = run.next };
                        r = dsa_session_submit_classify(s, &text, 1, on_result, x, NULL);
                        if (r == -EAGAIN) {
                                free(x);
                                full = true;
                                break;
                        }
                        if (r < 0) {
                                free(x);
                                run.reqs[run.next].latency = -1;
                                run.failed++;
                                run.done++;
                        }
                        run.next++;
                }
                if (now >= next_sample && n_samples < cap_samples) {
                        struct dsa_policy *pol = NULL;
                        if (dsa_client_get_policy(c, &pol) >= 0) {
                                sample_t[n_samples] = now;
                                sample_w[n_samples++] = pol->power_w;
                        }
                        dsa_policy_free(pol);
                        next_sample += 0.25;
                }
                double wait = next_sample - (now_s() - run.t0);
                if (run.next < run.n)
                        wait = fmin(wait, run.reqs[run.next].at - (now_s() - run.t0));
                if (full)
                        wait = 0.0005;
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                (void) poll(&pfd, 1, wait > 0 ? (int) ceil(wait * 1000) : 0);
                if (dsa_session_dispatch(s) < 0)
                        break;
        }

        /* Per window. */
        size_t n_win = (size_t) ceil(end / window);
        double *lat = malloc(sizeof(double) * (run.n + 1));
        size_t total_correct = 0, total_ok = 0, n_all = 0;
        double power_sum = 0, expected = 0;
        size_t n_expected = 0;
        if (!lat)
                abort();
        for (size_t w = 0; w < n_win; w++) {
                double lo = (double) w * window, hi = lo + window, pw = 0;
                size_t n = 0, correct = 0, counts[MAX_VARIANTS] = { 0 }, ns = 0;
                for (size_t i = 0; i < run.n; i++) {
                        struct req *q = &run.reqs[i];
                        if (q->at < lo || q->at >= hi)
                                continue;
                        lat[n++] = q->latency < 0 ? INFINITY : q->latency;
                        correct += q->correct;
                        if (q->variant >= 0)
                                counts[q->variant]++;
                }
                for (size_t i = 0; i < n_samples; i++)
                        if (sample_t[i] >= lo && sample_t[i] < hi) {
                                pw += sample_w[i];
                                ns++;
                        }
                /* p95: insertion sort is fine for a window's few hundred. */
                for (size_t i = 1; i < n; i++)
                        for (size_t j = i; j > 0 && lat[j - 1] > lat[j]; j--) {
                                double tmp = lat[j];
                                lat[j] = lat[j - 1];
                                lat[j - 1] = tmp;
                        }
                double p95 = n ? lat[(size_t) ceil(0.95 * (double) n) - 1] : 0;
                printf("{\"policy\":\"%s\",\"budget\":%g,\"t\":%g,\"offered\":%g,\"n\":%zu,\"p95_ms\":%.3f,"
                       "\"correct\":%zu,\"power_w\":%.4f,\"variants\":{",
                       label, budget, lo, (double) n / window, n, isinf(p95) ? -1.0 : p95, correct,
                       ns ? pw / (double) ns : -1.0);
                for (size_t k2 = 0; k2 < run.n_names; k2++)
                        printf("%s\"%s\":%zu", k2 ? "," : "", run.names[k2], counts[k2]);
                printf("}}\n");
        }
        for (size_t i = 0; i < run.n; i++) {
                total_correct += run.reqs[i].correct;
                total_ok += run.reqs[i].latency >= 0;
                if (run.reqs[i].variant >= 0) {
                        expected += run.accuracy[run.reqs[i].variant];
                        n_expected++;
                }
                lat[n_all++] = run.reqs[i].latency < 0 ? INFINITY : run.reqs[i].latency;
        }
        for (size_t i = 0; i < n_samples; i++)
                power_sum += sample_w[i];
        printf("{\"policy\":\"%s\",\"budget\":%g,\"summary\":{\"requests\":%zu,\"completed\":%zu,\"failed\":%zu,"
               "\"accuracy\":%.4f,\"expected_accuracy\":%.4f,\"mean_power_w\":%.4f,\"target_ms\":%g,\"seconds\":%g}}\n",
               label, budget, run.n, total_ok, run.failed, run.n ? (double) total_correct / (double) run.n : 0,
               n_expected ? expected / (double) n_expected : 0,
               n_samples ? power_sum / (double) n_samples : -1.0, target, end);
        free(lat);
        free(sample_t);
        free(sample_w);
        dsa_session_free(s);
        (void) dsa_client_set_policy_mode(c, "adaptive");
        (void) dsa_client_set_power_budget(c, 0);
        dsa_client_free(c);
        for (size_t i = 0; i < n_dev; i++)
                free(run.texts[i]);
        free(run.texts);
        free(run.labels);
        free(run.reqs);
        return run.failed ? 1 : 0;
}
