/* dsad's figures (issue 3), against baselines measured in the same run. tests/bench/dsad-bench.sh
 * starts a private dbus-daemon and the real dsad and calls this once per test; each test prints
 * one JSON object on stdout. Never fails on time: exit 1 only when a request is lost,
 * duplicated, fails or comes back different from the in-process result (the stress test), or
 * when a step does not work at all.
 *
 *   nop     synchronous dsa_nop() round trips through the ring vs D-Bus method calls to dsad
 *           (org.freedesktop.DBus.Peer.Ping, answered by sd-bus on dsad's loop, and GetStatus),
 *           interleaved by round: p50 / p99 / p99.9
 *   embed   one text of --tokens tokens, batch 1: dsa_embed() through dsad vs
 *           dsa_model_embed_texts() in this process on the same file with --threads threads,
 *           alternating request by request; checks that both give the same vector
 *   memory  --clients threads, each with its own client and session, --requests requests each;
 *           dsad's VmRSS and smaps_rollup while every session is open, against the model file
 *   batch   --clients threads, each with its own client and session, synchronous one-text
 *           dsa_classify() in a loop for --seconds: requests/s; with --embed dsa_embed() with
 *           DSA_POOL_CLS instead (for a model without a classifier head), same sentences;
 *           with --dsad-pid also dsad's CPU time per request
 *   inproc  the in-process ceiling of batch, no dsad (--file, --threads): the same sentences,
 *           --clients of them per call (what dsad would get if every client's request joined
 *           one batch) against one text per call, alternating for --rounds rounds of --seconds
 *           each: texts/s and CPU ms per text of both; --embed as for batch
 *   stress  --clients threads x --requests asynchronous requests each (--depth in flight):
 *           every --classify-every-th a dsa_classify() of a short text checked against the
 *           in-process logits of that text (label exactly, logits within MAX_LOGIT_ERROR; bit
 *           differences counted), the others dsa_nop(); counts lost, duplicated, failed and
 *           mismatched requests, and checks dsad's own completion counter
 *   sentences prints the batch test's sentences, one a line (for dsactl) */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "bench-dsad-engine.h"
#include "dsa/dsa.h"

#define DSAD_NAME "org.dsa.Daemon1"
#define DSAD_PATH "/org/dsa/Daemon1"

/* Short SST-2-like sentences: the batching and stress tests' inputs. */
static const char *const sentences[] = {
        "a gorgeous, witty, seductive movie.",
        "the film is strictly routine.",
        "an utterly charming and hilarious film that reminded me of the best of woody allen.",
        "it's a bad sign when you're rooting for the film to end.",
        "a beautifully observed character piece.",
        "too slow, too long and too little happens.",
        "the acting is fine but the script is about as interesting as a recording of conversations at the wal-mart checkout line.",
        "one of the most exciting action films to come out of china in recent years.",
        "dull, lifeless, and amateurishly assembled.",
        "a moving and important film.",
        "the plot is nothing but boilerplate cliches from start to finish.",
        "funny, touching, smart and complicated.",
        "never quite gets off the ground.",
        "an exhilarating experience.",
        "it is not a mass-market entertainment but an uncompromising attempt by one artist to think about another.",
        "the jokes are flat, and the action looks fake.",
        "a masterpiece four years in the making.",
        "everything about it from the bland songs to the colorless characters feels obligatory.",
        "warm and genuinely funny.",
        "there's no emotional pulse to solaris.",
        "the performances are uniformly excellent.",
        "a mess, but a fascinating one.",
        "predictable and cloying, though brief.",
        "a riveting documentary.",
        "it's just merely very bad.",
        "the best film of the year so far.",
        "i hated every minute of it.",
        "visually stunning but emotionally empty.",
        "a delightful surprise.",
        "boring and pretentious.",
        "smart, sassy and exceptionally charming.",
        "the movie is well done, but slow.",
};
#define N_SENTENCES (sizeof(sentences) / sizeof(sentences[0]))

static struct {
        const char *bus, *model, *file;
        long dsad_pid;
        unsigned threads, clients, requests, rounds, n, warmup, dbus_n, tokens, depth, classify_every;
        double seconds;
        bool embed;
} arg = {
        .threads = 0, .clients = 0, .requests = 0, .rounds = 3, .n = 0, .warmup = 0, .dbus_n = 0,
        .tokens = 128, .depth = 4, .classify_every = 4, .seconds = 3,
};

static uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[n], in microseconds. */
static double pct_us(const uint64_t *v, size_t n, double q) {
        size_t k = (size_t) ceil(q * (double) n);

        if (n == 0)
                return NAN;
        k = k == 0 ? 0 : k - 1;
        return (double) v[k < n ? k : n - 1] / 1e3;
}

static int fail(const char *what, int r, struct dsa_client *c) {
        const char *why = c ? dsa_client_error_message(c) : NULL;

        fprintf(stderr, "bench-dsad: %s: %s%s%s\n", what, strerror(-r), why ? ": " : "", why ? why : "");
        return r;
}

static int connect_session(const char *model, uint32_t slots, struct dsa_client **ret_c, struct dsa_session **ret_s) {
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        int r;

        r = dsa_client_new(arg.bus, &c);
        if (r < 0)
                return fail("dsa_client_new", r, NULL);
        r = dsa_session_open(c, model, slots, 0, &s);
        if (r < 0) {
                fail("dsa_session_open", r, c);
                dsa_client_free(c);
                return r;
        }
        *ret_c = c;
        *ret_s = s;
        return 0;
}

static int status_counts(uint64_t *ret_completed, uint64_t *ret_failed, uint32_t *ret_workers) {
        struct dsa_client *c = NULL;
        struct dsa_status *st = NULL;
        int r;

        r = dsa_client_new(arg.bus, &c);
        if (r >= 0)
                r = dsa_client_status(c, &st);
        if (r >= 0) {
                if (ret_completed)
                        *ret_completed = st->requests_completed;
                if (ret_failed)
                        *ret_failed = st->requests_failed;
                if (ret_workers)
                        *ret_workers = st->workers;
        }
        dsa_status_free(st);
        dsa_client_free(c);
        return r;
}

static void print_pcts(const char *name, uint64_t *v, size_t n) {
        qsort(v, n, sizeof(*v), cmp_u64);
        printf("\"%s\":{\"n\":%zu,\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,"
               "\"min_us\":%.2f,\"max_us\":%.2f}",
               name, n, pct_us(v, n, .5), pct_us(v, n, .9), pct_us(v, n, .99), pct_us(v, n, .999),
               (double) v[0] / 1e3, (double) v[n - 1] / 1e3);
}

/* ---- nop: the ring against D-Bus */

/* Times n calls of interface.method (no arguments) on dsad over bus into v (ns each). */
static int time_bus_calls(sd_bus *bus, const char *interface, const char *method, uint64_t *v, unsigned n) {
        for (unsigned i = 0; i < n; i++) {
                sd_bus_message *reply = NULL;
                uint64_t t0 = now_ns();
                int r = sd_bus_call_method(bus, DSAD_NAME, DSAD_PATH, interface, method, NULL, &reply, "");

                v[i] = now_ns() - t0;
                sd_bus_message_unref(reply);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int test_nop(void) {
        unsigned n = arg.n ? arg.n : 20000, warmup = arg.warmup ? arg.warmup : 2000;
        unsigned dn = arg.dbus_n ? arg.dbus_n : 5000, rounds = arg.rounds;
        uint64_t *ring = calloc((size_t) n * rounds, sizeof(uint64_t));
        uint64_t *ping = calloc((size_t) dn * rounds, sizeof(uint64_t));
        uint64_t *gst = calloc((size_t) dn * rounds, sizeof(uint64_t));
        double *ring_p50 = calloc(rounds, sizeof(double)), *ping_p50 = calloc(rounds, sizeof(double));
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        sd_bus *bus = NULL;
        int r;

        if (!ring || !ping || !gst || !ring_p50 || !ping_p50)
                return -ENOMEM;
        r = connect_session(arg.model, 0, &c, &s);
        if (r < 0)
                return r;
        /* The D-Bus baseline: a connection of its own, as an app would have. */
        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, arg.bus);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, 1);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r < 0)
                return fail("sd-bus connection", r, NULL);

        for (unsigned i = 0; i < warmup; i++)
                if ((r = dsa_nop(s)) < 0)
                        return fail("dsa_nop", r, c);
        for (unsigned i = 0; i < warmup / 4; i++) {
                r = sd_bus_call_method(bus, DSAD_NAME, DSAD_PATH, "org.freedesktop.DBus.Peer", "Ping",
                                       NULL, NULL, "");
                if (r < 0)
                        return fail("Peer.Ping", r, NULL);
        }
        for (unsigned k = 0; k < rounds; k++) {
                uint64_t *v = ring + (size_t) k * n, *p = ping + (size_t) k * dn, *g = gst + (size_t) k * dn;

                for (unsigned i = 0; i < n; i++) {
                        uint64_t t0 = now_ns();
                        r = dsa_nop(s);
                        v[i] = now_ns() - t0;
                        if (r < 0)
                                return fail("dsa_nop", r, c);
                }
                r = time_bus_calls(bus, "org.freedesktop.DBus.Peer", "Ping", p, dn);
                if (r < 0)
                        return fail("Peer.Ping", r, NULL);
                r = time_bus_calls(bus, "org.dsa.Daemon1", "GetStatus", g, dn);
                if (r < 0)
                        return fail("GetStatus", r, NULL);
                qsort(v, n, sizeof(*v), cmp_u64);
                qsort(p, dn, sizeof(*p), cmp_u64);
                ring_p50[k] = pct_us(v, n, .5);
                ping_p50[k] = pct_us(p, dn, .5);
        }
        printf("{\"test\":\"nop\",\"rounds\":%u,", rounds);
        print_pcts("ring", ring, (size_t) n * rounds);
        putchar(',');
        print_pcts("dbus_ping", ping, (size_t) dn * rounds);
        putchar(',');
        print_pcts("dbus_getstatus", gst, (size_t) dn * rounds);
        printf(",\"ring_round_p50_us\":[");
        for (unsigned k = 0; k < rounds; k++)
                printf("%s%.2f", k ? "," : "", ring_p50[k]);
        printf("],\"dbus_ping_round_p50_us\":[");
        for (unsigned k = 0; k < rounds; k++)
                printf("%s%.2f", k ? "," : "", ping_p50[k]);
        printf("]}\n");

        sd_bus_flush_close_unref(bus);
        dsa_session_free(s);
        dsa_client_free(c);
        free(ring), free(ping), free(gst), free(ring_p50), free(ping_p50);
        return 0;
}

/* ---- embed: one long text through dsad vs in process */

static int test_embed(void) {
        unsigned runs = arg.n ? arg.n : 10, warmup = arg.warmup ? arg.warmup : 2;
        struct bench_engine *e = NULL;
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        uint64_t *td = calloc(runs, sizeof(uint64_t)), *ti = calloc(runs, sizeof(uint64_t));
        double *ratio = calloc(runs, sizeof(double));
        char *text = NULL;
        float *local = NULL, *remote = NULL;
        size_t dim = 0;
        double maxdiff = 0;
        int r;

        if (!td || !ti || !ratio)
                return -ENOMEM;
        r = bench_engine_open(arg.file, arg.threads, &e);
        if (r < 0)
                return fail("bench_engine_open", r, NULL);
        r = bench_engine_make_text(e, arg.tokens, &text);
        if (r < 0)
                return fail("making a text of the requested length", r, NULL);
        local = calloc(bench_engine_dim(e), sizeof(float));
        if (!local)
                return -ENOMEM;
        r = connect_session(arg.model, 0, &c, &s);
        if (r < 0)
                return r;
        /* Long enough for a slow machine. */
        dsa_session_set_timeout(s, 600ull * 1000000u);

        for (unsigned i = 0; i < warmup + runs; i++) {
                const char *texts[] = { text };
                uint64_t t0, t1, t2;

                uint64_t ta, tb;

                free(remote);
                remote = NULL;
                /* ABBA order: neither side always runs right after the other. */
                if (i % 2 == 0) {
                        t0 = now_ns();
                        r = dsa_embed(s, texts, 1, DSA_POOL_DEFAULT, &remote, &dim);
                        ta = now_ns();
                        if (r < 0)
                                return fail("dsa_embed", r, c);
                        r = bench_engine_embed(e, text, local);
                        tb = now_ns();
                        t1 = t0 + (ta - t0), t2 = t1 + (tb - ta);
                } else {
                        t0 = now_ns();
                        r = bench_engine_embed(e, text, local);
                        ta = now_ns();
                        if (r >= 0)
                                r = dsa_embed(s, texts, 1, DSA_POOL_DEFAULT, &remote, &dim);
                        tb = now_ns();
                        if (r < 0)
                                return fail("embed", r, c);
                        t1 = t0 + (tb - ta), t2 = t1 + (ta - t0); /* dsad's time first, as above */
                }
                if (dim != bench_engine_dim(e)) {
                        fprintf(stderr, "bench-dsad: dsad's embedding has %zu floats, ours %zu\n", dim,
                                bench_engine_dim(e));
                        return -EPROTO;
                }
                for (size_t j = 0; j < dim; j++)
                        maxdiff = fmax(maxdiff, fabs((double) remote[j] - local[j]));
                if (i < warmup)
                        continue;
                td[i - warmup] = t1 - t0;
                ti[i - warmup] = t2 - t1;
                ratio[i - warmup] = (double) (t1 - t0) / (double) (t2 - t1);
        }
        /* The median of paired ratios: each pair ran back to back, so slow drift of the
         * machine's load cancels out of it. */
        qsort(td, runs, sizeof(*td), cmp_u64);
        qsort(ti, runs, sizeof(*ti), cmp_u64);
        uint64_t *rr = calloc(runs, sizeof(uint64_t));
        for (unsigned i = 0; i < runs; i++)
                rr[i] = (uint64_t) (ratio[i] * 1e6);
        qsort(rr, runs, sizeof(*rr), cmp_u64);
        printf("{\"test\":\"embed\",\"tokens\":%u,\"threads\":%u,\"runs\":%u,\"dim\":%zu,"
               "\"dsad_ms\":{\"median\":%.3f,\"min\":%.3f,\"max\":%.3f},"
               "\"inproc_ms\":{\"median\":%.3f,\"min\":%.3f,\"max\":%.3f},"
               "\"ratio_of_medians\":%.4f,\"ratio_of_mins\":%.4f,\"median_paired_ratio\":%.4f,"
               "\"max_abs_diff\":%.3g}\n",
               arg.tokens, arg.threads, runs, dim, pct_us(td, runs, .5) / 1e3, (double) td[0] / 1e6,
               (double) td[runs - 1] / 1e6, pct_us(ti, runs, .5) / 1e3, (double) ti[0] / 1e6,
               (double) ti[runs - 1] / 1e6, pct_us(td, runs, .5) / pct_us(ti, runs, .5),
               (double) td[0] / (double) ti[0], (double) rr[(runs - 1) / 2] / 1e6, maxdiff);
        free(rr);
        free(remote);
        free(local);
        free(text);
        free(td), free(ti), free(ratio);
        dsa_session_free(s);
        dsa_client_free(c);
        bench_engine_free(e);
        return maxdiff <= 1e-4 ? 0 : (fprintf(stderr, "bench-dsad: dsad and the engine disagree\n"), -EBADMSG);
}

/* ---- memory: many sessions on one model */

static pthread_barrier_t mem_open, mem_measured;

struct mem_thread {
        bool classify;
        int r;
};

static void *mem_worker(void *userdata) {
        struct mem_thread *t = userdata;
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;

        t->r = connect_session(arg.model, 0, &c, &s);
        if (t->r >= 0)
                dsa_session_set_timeout(s, 600ull * 1000000u);
        for (unsigned i = 0; t->r >= 0 && i < arg.requests; i++) {
                const char *texts[] = { sentences[i % N_SENTENCES] };
                if (t->classify) {
                        struct dsa_classify_result *res = NULL;
                        t->r = dsa_classify(s, texts, 1, &res);
                        dsa_classify_result_free(res);
                } else {
                        float *emb = NULL;
                        size_t dim;
                        t->r = dsa_embed(s, texts, 1, DSA_POOL_DEFAULT, &emb, &dim);
                        free(emb);
                }
                if (t->r < 0)
                        fail("request", t->r, c);
        }
        pthread_barrier_wait(&mem_open);    /* every session open and used */
        pthread_barrier_wait(&mem_measured); /* dsad measured */
        dsa_session_free(s);
        dsa_client_free(c);
        return NULL;
}

/* "Key:   123 kB" lines of a /proc file, in kB; -1 when absent. */
static long proc_kb(const char *path, const char *key) {
        FILE *f = fopen(path, "re");
        char line[256];
        size_t kl = strlen(key);
        long v = -1;

        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
                        v = strtol(line + kl + 1, NULL, 10);
                        break;
                }
        fclose(f);
        return v;
}

static int test_memory(void) {
        unsigned n = arg.clients ? arg.clients : 64;
        pthread_t *th = calloc(n, sizeof(*th));
        struct mem_thread *t = calloc(n, sizeof(*t));
        char status[64], rollup[64];
        struct stat st;
        bool classify;
        int r = 0;

        if (!th || !t)
                return -ENOMEM;
        if (stat(arg.file, &st) < 0)
                return fail(arg.file, -errno, NULL);
        {
                /* Classify when the model has a head, else embed. */
                struct dsa_client *c = NULL;
                struct dsa_model_info *mi = NULL;
                size_t nm = 0;
                classify = false;
                if (dsa_client_new(arg.bus, &c) >= 0 && dsa_client_list_models(c, &mi, &nm) >= 0)
                        for (size_t i = 0; i < nm; i++)
                                if (strcmp(mi[i].name, arg.model) == 0)
                                        classify = mi[i].n_labels > 0;
                dsa_model_info_free(mi, nm);
                dsa_client_free(c);
        }
        snprintf(status, sizeof(status), "/proc/%ld/status", arg.dsad_pid);
        snprintf(rollup, sizeof(rollup), "/proc/%ld/smaps_rollup", arg.dsad_pid);
        long rss_before = proc_kb(status, "VmRSS");

        pthread_barrier_init(&mem_open, NULL, n + 1);
        pthread_barrier_init(&mem_measured, NULL, n + 1);
        for (unsigned i = 0; i < n; i++) {
                t[i].classify = classify;
                if (pthread_create(&th[i], NULL, mem_worker, &t[i]) != 0)
                        return -EAGAIN;
        }
        pthread_barrier_wait(&mem_open);
        uint32_t sessions = 0;
        {
                struct dsa_client *c = NULL;
                struct dsa_status *s = NULL;
                if (dsa_client_new(arg.bus, &c) >= 0 && dsa_client_status(c, &s) >= 0)
                        sessions = s->sessions;
                dsa_status_free(s);
                dsa_client_free(c);
        }
        long vmrss = proc_kb(status, "VmRSS"), hwm = proc_kb(status, "VmHWM");
        long anon = proc_kb(status, "RssAnon"), file = proc_kb(status, "RssFile"), shm = proc_kb(status, "RssShmem");
        long rss = proc_kb(rollup, "Rss"), pss = proc_kb(rollup, "Pss"), pss_anon = proc_kb(rollup, "Pss_Anon");
        long pss_file = proc_kb(rollup, "Pss_File"), pss_shm = proc_kb(rollup, "Pss_Shmem");
        pthread_barrier_wait(&mem_measured);
        for (unsigned i = 0; i < n; i++) {
                pthread_join(th[i], NULL);
                if (t[i].r < 0)
                        r = t[i].r;
        }
        double fkb = (double) st.st_size / 1024;
        printf("{\"test\":\"memory\",\"model\":\"%s\",\"clients\":%u,\"requests_each\":%u,\"op\":\"%s\","
               "\"sessions_open\":%u,\"model_file_kb\":%.0f,\"rss_before_kb\":%ld,\"vmrss_kb\":%ld,\"vmhwm_kb\":%ld,"
               "\"rss_anon_kb\":%ld,\"rss_file_kb\":%ld,\"rss_shmem_kb\":%ld,\"rollup_rss_kb\":%ld,"
               "\"pss_kb\":%ld,\"pss_anon_kb\":%ld,\"pss_file_kb\":%ld,\"pss_shmem_kb\":%ld,"
               "\"vmrss_ratio\":%.3f,\"pss_ratio\":%.3f,\"ok\":%s}\n",
               arg.model, n, arg.requests, classify ? "classify" : "embed", sessions, fkb, rss_before, vmrss,
               hwm, anon, file, shm, rss, pss, pss_anon, pss_file, pss_shm, (double) vmrss / fkb,
               (double) pss / fkb, r < 0 ? "false" : "true");
        pthread_barrier_destroy(&mem_open);
        pthread_barrier_destroy(&mem_measured);
        free(th), free(t);
        return r;
}

/* ---- batch: throughput of concurrent one-text requests */

/* CPU seconds (user + system) process pid has used, from /proc/PID/stat; NAN when unreadable.
 * On a machine shared with other jobs, wall-clock throughput follows their load; the CPU time
 * a request costs does much less. */
static double proc_cpu_s(long pid) {
        char path[64], buf[1024];
        unsigned long ut, st;
        FILE *f;
        size_t n;

        snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
        f = fopen(path, "re");
        if (!f)
                return NAN;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        const char *p = strrchr(buf, ')'); /* comm may hold spaces */
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
                return NAN;
        return (double) (ut + st) / (double) sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void) {
        struct rusage ru;

        if (getrusage(RUSAGE_SELF, &ru) < 0)
                return NAN;
        return (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static pthread_barrier_t batch_go;

struct batch_thread {
        unsigned id;
        uint64_t deadline_ns;
        unsigned long done;
        uint64_t *lat;
        size_t n_lat, cap_lat;
        int r;
};

/* Text i of client id in the batch test (and of the in-process ceiling, inproc). */
static const char *batch_sentence(unsigned id, unsigned i) {
        return sentences[(id * 7 + i) % N_SENTENCES];
}

/* One synchronous one-text request: dsa_classify(), or with --embed dsa_embed() of [CLS]. */
static int batch_request(struct dsa_session *s, const char *text) {
        const char *texts[] = { text };
        int r;

        if (arg.embed) {
                float *emb = NULL;
                size_t dim;
                r = dsa_embed(s, texts, 1, DSA_POOL_CLS, &emb, &dim);
                free(emb);
        } else {
                struct dsa_classify_result *res = NULL;
                r = dsa_classify(s, texts, 1, &res);
                dsa_classify_result_free(res);
        }
        return r;
}

static void *batch_worker(void *userdata) {
        struct batch_thread *t = userdata;
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;

        t->r = connect_session(arg.model, 0, &c, &s);
        for (unsigned i = 0; t->r >= 0 && i < 3; i++) /* warm-up */
                t->r = batch_request(s, sentences[(t->id + i) % N_SENTENCES]);
        pthread_barrier_wait(&batch_go);
        for (unsigned i = 0; t->r >= 0 && now_ns() < t->deadline_ns; i++) {
                uint64_t t0 = now_ns();
                t->r = batch_request(s, batch_sentence(t->id, i));
                if (t->r < 0) {
                        fail(arg.embed ? "dsa_embed" : "dsa_classify", t->r, c);
                        break;
                }
                if (t->n_lat < t->cap_lat)
                        t->lat[t->n_lat++] = now_ns() - t0;
                t->done++;
        }
        dsa_session_free(s);
        dsa_client_free(c);
        return NULL;
}

static int test_batch(void) {
        unsigned n = arg.clients ? arg.clients : 16;
        pthread_t *th = calloc(n, sizeof(*th));
        struct batch_thread *t = calloc(n, sizeof(*t));
        size_t cap = 1 << 16;
        uint64_t *all = NULL;
        unsigned long total = 0;
        size_t n_all = 0;
        int r = 0;

        if (!th || !t)
                return -ENOMEM;
        pthread_barrier_init(&batch_go, NULL, n + 1);
        for (unsigned i = 0; i < n; i++) {
                t[i].id = i;
                t[i].lat = calloc(cap, sizeof(uint64_t));
                t[i].cap_lat = cap;
                if (!t[i].lat || pthread_create(&th[i], NULL, batch_worker, &t[i]) != 0)
                        return -EAGAIN;
        }
        /* Set the deadline once every thread has warmed up, then start them together. */
        uint64_t deadline = 0;
        for (unsigned i = 0; i < n; i++)
                t[i].deadline_ns = UINT64_MAX;
        pthread_barrier_wait(&batch_go);
        double cpu0 = arg.dsad_pid > 0 ? proc_cpu_s(arg.dsad_pid) : NAN;
        uint64_t t0 = now_ns();
        deadline = t0 + (uint64_t) (arg.seconds * 1e9);
        for (unsigned i = 0; i < n; i++)
                __atomic_store_n(&t[i].deadline_ns, deadline, __ATOMIC_RELAXED);
        for (unsigned i = 0; i < n; i++) {
                pthread_join(th[i], NULL);
                total += t[i].done;
                n_all += t[i].n_lat;
                if (t[i].r < 0)
                        r = t[i].r;
        }
        double elapsed = (double) (now_ns() - t0) / 1e9;
        double cpu = arg.dsad_pid > 0 ? proc_cpu_s(arg.dsad_pid) - cpu0 : NAN;
        all = calloc(n_all ? n_all : 1, sizeof(uint64_t));
        n_all = 0;
        for (unsigned i = 0; i < n; i++) {
                memcpy(all + n_all, t[i].lat, t[i].n_lat * sizeof(uint64_t));
                n_all += t[i].n_lat;
                free(t[i].lat);
        }
        printf("{\"test\":\"batch\",\"model\":\"%s\",\"op\":\"%s\",\"clients\":%u,\"seconds\":%.3f,"
               "\"requests\":%lu,\"requests_per_s\":%.1f,",
               arg.model, arg.embed ? "embed-cls" : "classify", n, elapsed, total, (double) total / elapsed);
        if (isfinite(cpu)) /* --dsad-pid: dsad's CPU time over the run */
                printf("\"dsad_cpu_s\":%.3f,\"dsad_cpu_ms_per_request\":%.3f,", cpu, 1e3 * cpu / (double) (total ? total : 1));
        if (n_all > 0)
                print_pcts("latency", all, n_all);
        printf(",\"ok\":%s}\n", r < 0 ? "false" : "true");
        free(all), free(th), free(t);
        pthread_barrier_destroy(&batch_go);
        return r;
}

/* ---- inproc: the batch test's ceiling, the engine in this process */

/* Step i gives client c's i-th text of the batch test to every one of --clients texts, run in
 * one call (the engine packs them into one ragged forward) or one per call. The two sides
 * alternate which goes first, round by round, so slow drift of the machine's load falls on
 * both; texts/s is over every round. */
static int test_inproc(void) {
        unsigned n = arg.clients ? arg.clients : 16, rounds = arg.rounds;
        const char **texts = calloc(n, sizeof(*texts));
        double *round_tps[2] = { calloc(rounds, sizeof(double)), calloc(rounds, sizeof(double)) };
        double secs[2] = { 0, 0 }, cpu[2] = { 0, 0 };
        unsigned long done[2] = { 0, 0 };
        struct bench_engine *e = NULL;
        float *out = NULL;
        size_t dim;
        int r;

        if (!texts || !round_tps[0] || !round_tps[1])
                return -ENOMEM;
        r = bench_engine_open(arg.file, arg.threads, &e);
        if (r < 0)
                return fail("bench_engine_open", r, NULL);
        dim = arg.embed ? bench_engine_dim(e) : bench_engine_n_labels(e);
        if (dim == 0) {
                fprintf(stderr, "bench-dsad: the model has no classifier head: use --embed\n");
                return -EINVAL;
        }
        out = calloc((size_t) n * dim, sizeof(float));
        if (!out)
                return -ENOMEM;
        for (unsigned c = 0; c < n; c++)
                texts[c] = batch_sentence(c, 0);
        r = bench_engine_run(e, texts, n, arg.embed, out); /* warm-up: first touch of the weights */
        if (r < 0)
                return fail("in-process run", r, NULL);

        unsigned step = 0;
        for (unsigned k = 0; k < rounds; k++)
                for (unsigned side = 0; side < 2; side++) {
                        unsigned batched = (side + k) % 2 == 0; /* 1: n texts per call */
                        unsigned long m = 0;
                        double c0 = self_cpu_s();
                        uint64_t t0 = now_ns(), deadline = t0 + (uint64_t) (arg.seconds * 1e9);

                        do {
                                for (unsigned c = 0; c < n; c++)
                                        texts[c] = batch_sentence(c, step);
                                if (batched)
                                        r = bench_engine_run(e, texts, n, arg.embed, out);
                                else
                                        for (unsigned c = 0; c < n && r >= 0; c++)
                                                r = bench_engine_run(e, &texts[c], 1, arg.embed, out + c * dim);
                                if (r < 0)
                                        return fail("in-process run", r, NULL);
                                m += n;
                                step++;
                        } while (now_ns() < deadline);
                        double el = (double) (now_ns() - t0) / 1e9;
                        secs[batched] += el;
                        cpu[batched] += self_cpu_s() - c0;
                        done[batched] += m;
                        round_tps[batched][k] = (double) m / el;
                }
        printf("{\"test\":\"inproc\",\"file\":\"%s\",\"op\":\"%s\",\"texts_per_call\":%u,\"threads\":%u,"
               "\"rounds\":%u,\"batched_texts\":%lu,\"batched_texts_per_s\":%.2f,\"single_texts\":%lu,"
               "\"single_texts_per_s\":%.2f,\"batched_cpu_ms_per_text\":%.3f,\"single_cpu_ms_per_text\":%.3f,"
               "\"batched_round_texts_per_s\":[",
               arg.file, arg.embed ? "embed-cls" : "classify", n, arg.threads, rounds, done[1],
               (double) done[1] / secs[1], done[0], (double) done[0] / secs[0], 1e3 * cpu[1] / (double) done[1],
               1e3 * cpu[0] / (double) done[0]);
        for (unsigned k = 0; k < rounds; k++)
                printf("%s%.2f", k ? "," : "", round_tps[1][k]);
        printf("],\"single_round_texts_per_s\":[");
        for (unsigned k = 0; k < rounds; k++)
                printf("%s%.2f", k ? "," : "", round_tps[0][k]);
        printf("]}\n");
        free(out), free(texts), free(round_tps[0]), free(round_tps[1]);
        bench_engine_free(e);
        return 0;
}

/* ---- stress: nothing lost, duplicated or changed */

/* dsad batches concurrent requests, and the engine's results depend on the batch they ran in
 * (padding to the longest text, GEMM paths by row count: last-bit differences, about 1e-7 on
 * the bundled model), so a result is checked against the text computed alone in process: same
 * label, logits within MAX_LOGIT_ERROR, far below the distance between any two sentences' logits
 * (printed as min_sentence_distance), so a result delivered to the wrong request cannot pass.
 * Bit-for-bit equality is counted too (inexact), as a figure. */
#define MAX_LOGIT_ERROR 1e-5
static float *expected;      /* N_SENTENCES x n_labels logits, computed in process one by one */
static uint32_t *expected_label;
static size_t n_labels;

struct stress_req {
        uint64_t id;
        int sentence; /* -1: NOP */
        unsigned calls;
};

struct stress_thread {
        unsigned idx;
        struct stress_req *reqs;
        unsigned pending;
        unsigned long lost, duplicated, failed, busy, mismatched, inexact, wrong_id, completed, classified;
        double max_abs_diff;
        int first_error;
        int r;
};

/* userdata of a request: its thread and its record. */
struct stress_ud {
        struct stress_thread *t;
        struct stress_req *q;
};

static void stress_cb_ud(struct dsa_session *s, uint64_t id, int status, struct dsa_result *result, void *userdata) {
        struct stress_ud *u = userdata;
        struct stress_thread *t = u->t;
        struct stress_req *q = u->q;

        (void) s;
        q->calls++;
        if (q->calls > 1) {
                t->duplicated++;
                return;
        }
        t->pending--;
        if (id != q->id)
                t->wrong_id++;
        if (status == -ETIMEDOUT) {
                t->lost++;
                return;
        }
        if (status == -EBUSY) { /* dsad's queue was full: backpressure, not a fault */
                t->busy++;
                return;
        }
        if (status < 0) {
                if (!t->first_error)
                        t->first_error = status;
                t->failed++;
                return;
        }
        t->completed++;
        if (q->sentence < 0) {
                if (result->op != DSA_OP_NOP)
                        t->mismatched++;
                return;
        }
        t->classified++;
        const float *want = expected + (size_t) q->sentence * n_labels;
        const struct dsa_classify_result *got = result->classify;
        if (result->op != DSA_OP_CLASSIFY || result->n_texts != 1 || !got || got->n_labels != n_labels) {
                t->mismatched++;
                return;
        }
        double diff = 0;
        for (size_t j = 0; j < n_labels; j++)
                diff = fmax(diff, fabs((double) got->logits[j] - want[j]));
        t->max_abs_diff = fmax(t->max_abs_diff, diff);
        if (memcmp(got->logits, want, n_labels * sizeof(float)) != 0)
                t->inexact++;
        if (got->label_id != expected_label[q->sentence] || !(diff <= MAX_LOGIT_ERROR))
                t->mismatched++;
}

static void *stress_worker(void *userdata) {
        struct stress_thread *t = userdata;
        unsigned n = arg.requests;
        struct stress_ud *ud = calloc(n, sizeof(*ud));
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        unsigned next = 0;

        t->reqs = calloc(n, sizeof(*t->reqs));
        if (!ud || !t->reqs) {
                t->r = -ENOMEM;
                return NULL;
        }
        t->r = connect_session(arg.model, 0, &c, &s);
        if (t->r < 0)
                return NULL;
        /* A lost request shows up as a timeout, not as a hang. */
        dsa_session_set_timeout(s, 120ull * 1000000u);
        while (next < n || t->pending > 0) {
                while (next < n && t->pending < arg.depth) {
                        struct stress_req *q = &t->reqs[next];
                        int r;

                        ud[next] = (struct stress_ud){ .t = t, .q = q };
                        q->sentence = arg.classify_every && (next + t->idx) % arg.classify_every == 0
                                              ? (int) ((t->idx * 13 + next) % N_SENTENCES)
                                              : -1;
                        if (q->sentence >= 0) {
                                const char *texts[] = { sentences[q->sentence] };
                                r = dsa_session_submit_classify(s, texts, 1, stress_cb_ud, &ud[next], &q->id);
                        } else
                                r = dsa_session_submit_nop(s, stress_cb_ud, &ud[next], &q->id);
                        if (r == -EAGAIN)
                                break;
                        if (r < 0) {
                                t->r = fail("submit", r, c);
                                goto out;
                        }
                        t->pending++;
                        next++;
                }
                (void) poll(&(struct pollfd) { .fd = dsa_session_get_fd(s), .events = POLLIN }, 1, 1000);
                int d = dsa_session_dispatch(s);
                if (d < 0) {
                        t->r = fail("dsa_session_dispatch", d, c);
                        goto out;
                }
        }
out:
        /* Pending requests get -ECANCELED here: counted as failed. */
        dsa_session_free(s);
        dsa_client_free(c);
        for (unsigned i = 0; i < next; i++)
                if (t->reqs[i].calls == 0)
                        t->lost++;
        t->lost += n - next;
        free(ud);
        return NULL;
}

static int test_stress(void) {
        unsigned n = arg.clients ? arg.clients : 64;
        pthread_t *th = calloc(n, sizeof(*th));
        struct stress_thread *t = calloc(n, sizeof(*t));
        struct bench_engine *e = NULL;
        uint64_t done0 = 0, failed0 = 0, done1 = 0, failed1 = 0;
        unsigned long lost = 0, dup = 0, failed = 0, busy = 0, mism = 0, inexact = 0, wrong_id = 0, completed = 0,
                      classified = 0;
        double maxdiff = 0;
        int first_error = 0, r;

        if (!arg.requests)
                arg.requests = 1000;
        if (!th || !t)
                return -ENOMEM;
        r = bench_engine_open(arg.file, arg.threads, &e);
        if (r < 0)
                return fail("bench_engine_open", r, NULL);
        n_labels = bench_engine_n_labels(e);
        if (n_labels == 0) {
                fprintf(stderr, "bench-dsad: stress wants a model with a classifier head\n");
                return -EINVAL;
        }
        expected = calloc(N_SENTENCES * n_labels, sizeof(float));
        expected_label = calloc(N_SENTENCES, sizeof(uint32_t));
        for (size_t i = 0; i < N_SENTENCES; i++) {
                float *l = expected + i * n_labels;
                r = bench_engine_classify(e, sentences[i], l);
                if (r < 0)
                        return fail("in-process classify", r, NULL);
                for (size_t j = 1; j < n_labels; j++)
                        if (l[j] > l[expected_label[i]])
                                expected_label[i] = (uint32_t) j;
        }
        bench_engine_free(e);
        double min_dist = INFINITY;
        for (size_t i = 0; i < N_SENTENCES; i++)
                for (size_t k = i + 1; k < N_SENTENCES; k++) {
                        double d = 0;
                        for (size_t j = 0; j < n_labels; j++)
                                d = fmax(d, fabs((double) expected[i * n_labels + j] - expected[k * n_labels + j]));
                        min_dist = fmin(min_dist, d);
                }
        r = status_counts(&done0, &failed0, NULL);
        if (r < 0)
                return fail("GetStatus", r, NULL);

        uint64_t t0 = now_ns();
        for (unsigned i = 0; i < n; i++) {
                t[i].idx = i;
                if (pthread_create(&th[i], NULL, stress_worker, &t[i]) != 0)
                        return -EAGAIN;
        }
        for (unsigned i = 0; i < n; i++) {
                pthread_join(th[i], NULL);
                lost += t[i].lost, dup += t[i].duplicated, failed += t[i].failed, mism += t[i].mismatched;
                busy += t[i].busy, inexact += t[i].inexact;
                wrong_id += t[i].wrong_id, completed += t[i].completed, classified += t[i].classified;
                maxdiff = fmax(maxdiff, t[i].max_abs_diff);
                if (t[i].r < 0 && !first_error)
                        first_error = t[i].r;
                if (t[i].first_error && !first_error)
                        first_error = t[i].first_error;
                free(t[i].reqs);
        }
        double elapsed = (double) (now_ns() - t0) / 1e9;
        r = status_counts(&done1, &failed1, NULL);
        if (r < 0)
                return fail("GetStatus", r, NULL);
        uint64_t total = (uint64_t) n * arg.requests;
        /* dsad's own view: every request completed exactly once on its side too. */
        uint64_t dsad_done = (done1 - done0) + (failed1 - failed0);
        bool ok = lost == 0 && dup == 0 && failed == 0 && mism == 0 && wrong_id == 0 && completed + busy == total &&
                  dsad_done == total;
        printf("{\"test\":\"stress\",\"model\":\"%s\",\"clients\":%u,\"requests_each\":%u,\"depth\":%u,"
               "\"classify_every\":%u,\"requests\":%" PRIu64 ",\"completed\":%lu,\"classified\":%lu,\"lost\":%lu,"
               "\"duplicated\":%lu,\"failed\":%lu,\"busy\":%lu,\"mismatched\":%lu,\"inexact\":%lu,\"wrong_id\":%lu,"
               "\"max_logit_error\":%g,\"min_sentence_distance\":%.3g,"
               "\"dsad_completed_delta\":%" PRIu64 ",\"max_abs_logit_diff\":%.3g,\"first_error\":\"%s\","
               "\"seconds\":%.2f,\"ok\":%s}\n",
               arg.model, n, arg.requests, arg.depth, arg.classify_every, total, completed, classified, lost, dup,
               failed, busy, mism, inexact, wrong_id, MAX_LOGIT_ERROR, min_dist, dsad_done, maxdiff, first_error ? strerror(-first_error) : "",
               elapsed, ok ? "true" : "false");
        free(expected), free(expected_label), free(th), free(t);
        return ok ? 0 : -EBADMSG;
}

static void usage(void) {
        fprintf(stderr,
                "Usage: bench-dsad --bus ADDRESS --model NAME [--file PATH] [--dsad-pid PID] TEST [OPTIONS]\n"
                "       bench-dsad --file PATH [--threads N] [--clients N] [--seconds S] [--embed] inproc\n"
                "       bench-dsad sentences\n"
                "Tests: nop, embed, memory, batch, inproc, stress, sentences (see the top of\n"
                "tests/bench/bench-dsad.c).\n"
                "  --threads N  in-process forward threads      --clients N   concurrent clients\n"
                "  --requests N requests per client             --runs N      samples (nop: round trips per round)\n"
                "  --warmup N   unmeasured first samples        --rounds N    nop, inproc rounds\n"
                "  --dbus-n N   D-Bus calls per nop round       --tokens N    embed text length\n"
                "  --seconds S  batch duration (inproc: per side and round)\n"
                "  --depth N    stress: requests in flight      --embed       batch, inproc: embed [CLS], not classify\n"
                "  --classify-every N  stress: every Nth request a classify (0: none)\n");
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "bus", required_argument, NULL, 'b' },     { "model", required_argument, NULL, 'm' },
                { "file", required_argument, NULL, 'f' },    { "dsad-pid", required_argument, NULL, 'p' },
                { "threads", required_argument, NULL, 't' }, { "clients", required_argument, NULL, 'c' },
                { "requests", required_argument, NULL, 'r' }, { "runs", required_argument, NULL, 'n' },
                { "warmup", required_argument, NULL, 'w' },  { "rounds", required_argument, NULL, 'R' },
                { "dbus-n", required_argument, NULL, 'D' },  { "tokens", required_argument, NULL, 'T' },
                { "seconds", required_argument, NULL, 's' }, { "depth", required_argument, NULL, 'd' },
                { "classify-every", required_argument, NULL, 'C' }, { "embed", no_argument, NULL, 'E' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *test;
        int opt, r;

        while ((opt = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                unsigned long v = optarg ? strtoul(optarg, NULL, 10) : 0;
                switch (opt) {
                case 'b': arg.bus = optarg; break;
                case 'm': arg.model = optarg; break;
                case 'f': arg.file = optarg; break;
                case 'p': arg.dsad_pid = (long) v; break;
                case 't': arg.threads = (unsigned) v; break;
                case 'c': arg.clients = (unsigned) v; break;
                case 'r': arg.requests = (unsigned) v; break;
                case 'n': arg.n = (unsigned) v; break;
                case 'w': arg.warmup = (unsigned) v; break;
                case 'R': arg.rounds = v ? (unsigned) v : 1; break;
                case 'D': arg.dbus_n = (unsigned) v; break;
                case 'T': arg.tokens = (unsigned) v; break;
                case 's': arg.seconds = strtod(optarg, NULL); break;
                case 'd': arg.depth = v ? (unsigned) v : 1; break;
                case 'C': arg.classify_every = (unsigned) v; break;
                case 'E': arg.embed = true; break;
                case 'h': usage(); return 0;
                default: usage(); return 2;
                }
        }
        if (optind + 1 != argc) {
                usage();
                return 2;
        }
        test = argv[optind];
        if (strcmp(test, "sentences") == 0) {
                for (size_t i = 0; i < N_SENTENCES; i++)
                        puts(sentences[i]);
                return fflush(stdout) == 0 ? 0 : 1;
        }
        if (strcmp(test, "inproc") == 0) {
                if (!arg.file) {
                        fprintf(stderr, "bench-dsad: inproc needs --file\n");
                        return 2;
                }
                r = test_inproc();
                fflush(stdout);
                return r < 0 ? 1 : 0;
        }
        if (!arg.bus || !arg.model) {
                usage();
                return 2;
        }
        if ((strcmp(test, "embed") == 0 || strcmp(test, "memory") == 0 || strcmp(test, "stress") == 0) && !arg.file) {
                fprintf(stderr, "bench-dsad: %s needs --file (the model file in dsad's store)\n", test);
                return 2;
        }
        if (strcmp(test, "memory") == 0 && arg.dsad_pid <= 0) {
                fprintf(stderr, "bench-dsad: memory needs --dsad-pid\n");
                return 2;
        }
        if (strcmp(test, "nop") == 0)
                r = test_nop();
        else if (strcmp(test, "embed") == 0)
                r = test_embed();
        else if (strcmp(test, "memory") == 0)
                r = test_memory();
        else if (strcmp(test, "batch") == 0)
                r = test_batch();
        else if (strcmp(test, "stress") == 0)
                r = test_stress();
        else {
                usage();
                return 2;
        }
        fflush(stdout);
        return r < 0 ? 1 : 0;
}
