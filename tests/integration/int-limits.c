/* Per-user limits and admin authorization against the real dsad, with clients of another uid:
 * dsad runs as root on a private bus every uid may use, without polkit, and children that
 * become nobody check that
 *   - LoadModel, UnloadModel and the writable policy properties are refused (AccessDenied,
 *     "polkit is not running"), while inference works;
 *   - sessions_per_uid and shm_bytes_per_uid turn away one session too many (LimitExceeded,
 *     -EDQUOT from libdsa, with the reason), and SIGHUP applies new limits;
 *   - queue_share: a burst from one uid gets -EBUSY for what exceeds its share while dsad's own
 *     uid's burst, queued at the same time, completes whole; the share frees up again.
 * dsad's own uid (root here, as dsad runs as root in this test; under systemd it is the dsad
 * user) is exempt from the limits and may load and unload. Needs root (to become another user):
 * exit 77 otherwise. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dsa/dsa.h"
#include "itest.h"

#define NOBODY 65534
#define BURST 6
#define N_TEXTS 4

static struct itest t;
static char conf[300];

#define CHECK(cond, ...) ITEST_CHECK(&t, cond, __VA_ARGS__)

static void write_config(unsigned sessions, const char *shm) {
        FILE *f = fopen(conf, "we");

        CHECK(f, "fopen %s: %m", conf);
        /* One worker taking one request at a time, so a burst really waits in the queue. */
        fprintf(f, "[daemon]\nworkers = 1\nbatch_max = 1\nqueue_max = 16\n"
                   "[limits]\nsessions_per_uid = %u\nshm_bytes_per_uid = %s\nqueue_share = 0.125\n",
                sessions, shm);
        fclose(f);
}

static void client(struct dsa_client **ret) {
        int r = dsa_client_new(t.address, ret);
        CHECK(r >= 0, "dsa_client_new: %s", strerror(-r));
}

/* ---- a burst of slow requests, counting what completed and what was turned away */

struct burst {
        unsigned ok, busy, other, done;
};

static void on_done(struct dsa_session *s, uint64_t id, int status, struct dsa_result *result, void *userdata) {
        struct burst *b = userdata;

        if (status == 0)
                b->ok++;
        else if (status == -EBUSY)
                b->busy++;
        else {
                b->other++;
                fprintf(stderr, "int-limits: request %llu: %s\n", (unsigned long long) id, strerror(-status));
        }
        b->done++;
}

/* 4 texts of ~250 tokens each: milliseconds per request on one worker (seconds under ASan),
 * against microseconds to submit the whole burst. */
static const char *const *slow_texts(void) {
        static char text[1400];
        static const char *texts[N_TEXTS];

        if (!text[0]) {
                for (size_t n = 0; n + 18 < sizeof(text);)
                        n += (size_t) snprintf(text + n, sizeof(text) - n, "a gorgeous movie ");
                for (size_t i = 0; i < N_TEXTS; i++)
                        texts[i] = text;
        }
        return texts;
}

static void submit_burst(struct dsa_session *s, struct burst *b) {
        for (int i = 0; i < BURST; i++) {
                int r = dsa_session_submit_classify(s, slow_texts(), N_TEXTS, on_done, b, NULL);
                CHECK(r >= 0, "submit: %s", strerror(-r));
        }
}

static void wait_burst(struct dsa_session *s, struct burst *b) {
        uint64_t end = itest_now_ms() + 60000;

        while (b->done < BURST) {
                CHECK(itest_now_ms() < end, "the burst did not finish within 60 s (%u done)", b->done);
                CHECK(dsa_session_dispatch(s) >= 0, "dispatch");
                usleep(1000);
        }
}

/* ---- what nobody sees */

static void expect_denied(struct dsa_client *c, int r, const char *what) {
        const char *msg = dsa_client_error_message(c);

        CHECK(r == -EACCES, "%s as nobody: %s, expected -EACCES", what, strerror(-r));
        CHECK(msg && strstr(msg, "polkit is not running, only root and dsad's own user may perform"),
              "%s as nobody: message '%s'", what, msg ? msg : "");
}

static void expect_limit(struct dsa_client *c, int r, const char *key, const char *what) {
        const char *msg = dsa_client_error_message(c);

        CHECK(r == -EDQUOT, "%s: %s, expected -EDQUOT", what, strerror(-r));
        CHECK(msg && strstr(msg, key), "%s: message '%s' does not name %s", what, msg ? msg : "", key);
        fprintf(stderr, "int-limits: %s: %s\n", what, msg);
}

/* Runs in a child that has become nobody: exit status 0 when every check held. */
static void as_nobody_admin_and_limits(void) {
        struct dsa_client *c = NULL;
        struct dsa_session *s[3] = {};
        int r;

        client(&c);
        expect_denied(c, dsa_client_load_model(c, "sst2"), "LoadModel");
        expect_denied(c, dsa_client_unload_model(c, "sst2"), "UnloadModel");
        expect_denied(c, dsa_client_set_power_budget(c, 3), "PowerBudget");
        expect_denied(c, dsa_client_set_policy_mode(c, "fixed:base"), "Policy");

        /* sessions_per_uid = 2 */
        for (int i = 0; i < 2; i++) {
                r = dsa_session_open(c, "sst2", 4, 1 << 20, &s[i]);
                CHECK(r >= 0, "session %d of 2 as nobody: %s (%s)", i + 1, strerror(-r), dsa_client_error_message(c));
        }
        r = dsa_session_open(c, "sst2", 4, 1 << 20, &s[2]);
        expect_limit(c, r, "sessions_per_uid", "a third session as nobody");

        /* Inference still works; shm_bytes_per_uid = 10M: beside one ring of 4 MiB (and 8 KiB of
         * header), one of 8 MiB is too much, another of 4 MiB is not. */
        struct dsa_classify_result *res = NULL;
        const char *text = "a gorgeous, witty, seductive movie.";
        r = dsa_classify(s[0], &text, 1, &res);
        CHECK(r >= 0, "classify as nobody: %s", strerror(-r));
        res = dsa_classify_result_free(res);
        s[1] = dsa_session_free(s[1]);
        r = dsa_session_open(c, "sst2", 8, 1 << 20, &s[1]);
        expect_limit(c, r, "shm_bytes_per_uid", "an 8-MiB ring beside a 4-MiB one, limit 10 MiB");
        r = dsa_session_open(c, "sst2", 4, 1 << 20, &s[1]);
        CHECK(r >= 0, "a 4-MiB ring beside a 4-MiB one as nobody: %s (%s)", strerror(-r), dsa_client_error_message(c));
        for (int i = 0; i < 3; i++)
                dsa_session_free(s[i]);
        dsa_client_free(c);
        _exit(0);
}

/* Exits 0 when three sessions open, 1 quietly when not (the caller retries). */
static void as_nobody_third_session(void) {
        struct dsa_client *c = NULL;
        struct dsa_session *s[3] = {};
        int r = dsa_client_new(t.address, &c);

        for (int i = 0; i < 3 && r >= 0; i++)
                r = dsa_session_open(c, "sst2", 2, 1 << 20, &s[i]);
        for (int i = 0; i < 3; i++)
                dsa_session_free(s[i]);
        dsa_client_free(c);
        _exit(r >= 0 ? 0 : 1);
}

/* Forks, becomes nobody, runs fn (which exits); returns the child's wait status. */
static int as_nobody(void (*fn)(void)) {
        int status;
        pid_t pid = fork();

        CHECK(pid >= 0, "fork: %m");
        if (pid == 0) {
                itest_child_become(NOBODY);
                fn();
                _exit(1);
        }
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid: %m");
        return status;
}

static void run_as_nobody(void (*fn)(void), const char *what) {
        int status = as_nobody(fn);

        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed (status 0x%x)", what, status);
        fprintf(stderr, "int-limits: %s ok\n", what);
}

/* ---- queue_share: nobody's and root's bursts at the same time */

static void test_queue_share(void) {
        struct dsa_client *c = NULL;
        struct dsa_session *mine = NULL;
        int pfd[2], go[2], status;
        char line[64] = "";
        pid_t pid;
        struct burst b = {};
        int r;

        client(&c);
        r = dsa_session_open(c, "sst2", 8, 1 << 20, &mine);
        CHECK(r >= 0, "root's session: %s", strerror(-r));
        CHECK(pipe(pfd) == 0 && pipe(go) == 0, "pipe: %m");
        pid = fork();
        CHECK(pid >= 0, "fork: %m");
        if (pid == 0) {
                struct dsa_client *nc = NULL;
                struct dsa_session *ns = NULL;
                struct burst nb = {}, again = {};
                char x;

                itest_child_become(NOBODY);
                close(pfd[0]);
                close(go[1]);
                if (dsa_client_new(t.address, &nc) < 0 || dsa_session_open(nc, "sst2", 8, 1 << 20, &ns) < 0)
                        _exit(1);
                dprintf(pfd[1], "ready\n");
                if (read(go[0], &x, 1) != 1)
                        _exit(1);
                submit_burst(ns, &nb);
                wait_burst(ns, &nb);
                /* Once its requests left the queue, the share is free again. */
                submit_burst(ns, &again);
                wait_burst(ns, &again);
                dprintf(pfd[1], "%u %u %u %u %u %u\n", nb.ok, nb.busy, nb.other, again.ok, again.busy, again.other);
                dsa_session_free(ns);
                dsa_client_free(nc);
                _exit(0);
        }
        close(pfd[1]);
        close(go[0]);
        CHECK(read(pfd[0], line, 6) == 6 && strncmp(line, "ready\n", 6) == 0, "nobody's client did not start");
        /* Root's burst first, so the queue already holds requests when nobody's arrive. */
        submit_burst(mine, &b);
        CHECK(write(go[1], "g", 1) == 1, "write: %m");
        wait_burst(mine, &b);
        CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "nobody's client failed (status 0x%x)", status);
        ssize_t n = read(pfd[0], line, sizeof(line) - 1);
        CHECK(n > 0, "nobody's client said nothing");
        line[n] = 0;
        unsigned ok, busy, other, ok2, busy2, other2;
        CHECK(sscanf(line, "%u %u %u %u %u %u", &ok, &busy, &other, &ok2, &busy2, &other2) == 6, "'%s'", line);
        fprintf(stderr, "int-limits: root's burst %u ok, %u busy; nobody's %u ok, %u busy, %u other; again %u ok, %u "
                "busy\n", b.ok, b.busy, ok, busy, other, ok2, busy2);
        CHECK(b.ok == BURST && b.busy == 0 && b.other == 0, "dsad's own uid's burst was cut (%u of %u ok)", b.ok, BURST);
        /* queue_share 0.125 of 16: 2 waiting at most, one running at most. */
        CHECK(busy >= BURST - 3 && ok >= 2 && other == 0, "nobody's burst: %u ok, %u busy, %u other", ok, busy, other);
        CHECK(ok2 >= 2 && other2 == 0, "nobody's second burst: %u ok, %u busy, %u other", ok2, busy2, other2);
        close(pfd[0]);
        close(go[1]);
        dsa_session_free(mine);
        dsa_client_free(c);
}

int main(void) {
        struct dsa_client *c = NULL;
        struct dsa_session *s[4] = {};
        int r;

        if (geteuid() != 0) {
                fprintf(stderr, "SKIP: int-limits runs clients as another user, which needs root\n");
                return ITEST_SKIP;
        }
        itest_init_any_user(&t, NULL);
        snprintf(conf, sizeof(conf), "%s/dsad.conf", t.dir);
        write_config(2, "10M");
        /* The harness passes --config /dev/null first; the later option wins. */
        snprintf(t.dsad_args[t.n_args++], sizeof(t.dsad_args[0]), "--config");
        snprintf(t.dsad_args[t.n_args++], sizeof(t.dsad_args[0]), "%s", conf);
        itest_dsad_start(&t, NULL);

        run_as_nobody(as_nobody_admin_and_limits, "nobody: admin calls refused, session and memory limits");

        /* Root is dsad's own uid here: no limits, and admin calls are allowed. */
        client(&c);
        for (int i = 0; i < 4; i++) {
                r = dsa_session_open(c, "sst2", 4, 1 << 20, &s[i]);
                CHECK(r >= 0, "root's session %d: %s (%s)", i + 1, strerror(-r), dsa_client_error_message(c));
        }
        for (int i = 0; i < 4; i++)
                s[i] = dsa_session_free(s[i]);
        r = dsa_client_unload_model(c, "sst2");
        CHECK(r >= 0, "UnloadModel as root: %s (%s)", strerror(-r), dsa_client_error_message(c));
        r = dsa_client_load_model(c, "sst2");
        CHECK(r >= 0, "LoadModel as root: %s (%s)", strerror(-r), dsa_client_error_message(c));
        c = dsa_client_free(c);
        fprintf(stderr, "int-limits: root: no limits, load and unload ok\n");

        test_queue_share();

        /* SIGHUP applies new limits to new sessions (dsad rereads the file on its loop: try
         * again for a while). */
        write_config(3, "64M");
        CHECK(kill(t.dsad_pid, SIGHUP) == 0, "kill: %m");
        uint64_t end = itest_now_ms() + 10000;
        int status;
        while ((status = as_nobody(as_nobody_third_session)) != 0 && itest_now_ms() < end)
                usleep(100 * 1000);
        CHECK(status == 0, "nobody: no third session within 10 s of SIGHUP raising the limit (status 0x%x)",
              status);
        fprintf(stderr, "int-limits: nobody: a third session after SIGHUP raised the limit ok\n");

        CHECK(itest_teardown(&t), "dsad did not exit cleanly");
        fprintf(stderr, "int-limits: ok\n");
        return 0;
}
