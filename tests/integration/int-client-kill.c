/* Clients killed with SIGKILL mid-request: each of 16 child processes opens a session, submits a
 * long request (128 texts) plus a few small ones, tells the parent its session id, and is killed
 * at a varying moment. Meanwhile a well-behaved client keeps getting correct answers; each dead
 * client's session leaves ListSessions within 5 s; after the last kill dsad's open fds
 * (/proc/PID/fd) come back to what they were before the first (within 10 s: a request already
 * running finishes first and drops the session's last reference). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dsa/dsa.h>

#include "common.h"
#include "itest.h"

#define KILLS (ITEST_ASAN ? 8 : 16)
#define LONG_TEXTS (ITEST_ASAN ? 24 : 128)

static struct itest T;
#define CHECK(cond, ...) ITEST_CHECK(&T, cond, __VA_ARGS__)

static void on_done(struct dsa_session *s, uint64_t id, int status, struct dsa_result *r, void *u) {
}

/* The child: never returns. */
static _Noreturn void victim(int wfd, int round) {
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        static char buf[LONG_TEXTS][200];
        const char *texts[LONG_TEXTS];
        char line[64];

        signal(SIGTERM, SIG_DFL);
        if (dsa_client_new(T.address, &c) < 0 || dsa_session_open(c, "sst2", 8, 1 << 20, &s) < 0)
                _exit(3);
        for (int i = 0; i < LONG_TEXTS; i++) {
                itest_text(buf[i], sizeof(buf[i]), 1000u + (uint32_t) round, (uint32_t) i);
                texts[i] = buf[i];
        }
        if (dsa_session_submit_classify(s, texts, LONG_TEXTS, on_done, NULL, NULL) < 0)
                _exit(4);
        for (int i = 0; i < 3; i++)
                (void) dsa_session_submit_embed(s, texts + i, 1, DSA_POOL_MEAN, on_done, NULL, NULL);
        snprintf(line, sizeof(line), "%s\n", dsa_session_get_id(s));
        (void) !write(wfd, line, strlen(line));
        for (;;)
                pause();
}

static bool session_listed(struct dsa_client *c, const char *id) {
        struct dsa_session_info *si = NULL;
        size_t n = 0;
        bool found = false;
        int r = dsa_client_list_sessions(c, &si, &n);

        CHECK(r >= 0, "ListSessions: %s", strerror(-r));
        for (size_t i = 0; i < n; i++)
                found |= !strcmp(si[i].id, id);
        dsa_session_info_free(si, n);
        return found;
}

static void good_request(struct dsa_session *s, int round) {
        const char *texts[] = { "a well-behaved client", "still served" };
        struct dsa_classify_result *cr = NULL;
        int r = dsa_classify(s, texts, 2, &cr);

        CHECK(r >= 0 && cr[0].n_labels == 2, "round %d: the well-behaved client failed: %s", round, strerror(-r));
        dsa_classify_result_free(cr);
        CHECK(dsa_nop(s) >= 0, "round %d: nop", round);
}

int main(void) {
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        int base_fds = -1, fds = -1, r;

        itest_init(&T, NULL);
        itest_dsad_start(&T, NULL);
        r = dsa_client_new(NULL, &c);
        CHECK(r >= 0, "client: %s", strerror(-r));
        r = dsa_session_open(c, "sst2", 2, 0, &s);
        CHECK(r >= 0, "session: %s", strerror(-r));
        dsa_session_set_timeout(s, 20 * 1000000ull);
        good_request(s, -1);

        for (int round = -1; round < KILLS; round++) {
                int pfd[2];
                char id[64] = "";
                ssize_t n;
                pid_t pid;
                uint64_t t0;

                CHECK(pipe(pfd) == 0, "pipe");
                pid = fork();
                CHECK(pid >= 0, "fork");
                if (pid == 0) {
                        close(pfd[0]);
                        victim(pfd[1], round + 1);
                }
                close(pfd[1]);
                n = read(pfd[0], id, sizeof(id) - 1);
                close(pfd[0]);
                CHECK(n > 1, "round %d: child reported no session (it exited?)", round);
                id[n - 1] = 0;
                /* Vary the moment: before dsad has read the ring, while the request runs. */
                usleep((useconds_t) (round < 0 ? 0 : (round % 4) * 15000));
                kill(pid, SIGKILL);
                CHECK(waitpid(pid, NULL, 0) == pid, "waitpid");

                good_request(s, round);
                t0 = itest_now_ms();
                while (session_listed(c, id)) {
                        CHECK(itest_now_ms() - t0 < 5000, "round %d: session %s of a dead client still listed after 5 s",
                              round, id);
                        usleep(10000);
                }
                if (round == -1) {
                        /* The first kill warms up whatever dsad allocates once; wait until idle. */
                        usleep(300000);
                        base_fds = itest_count_fds(T.dsad_pid);
                        CHECK(base_fds > 0, "cannot read /proc/%d/fd", (int) T.dsad_pid);
                }
        }
        good_request(s, KILLS);
        for (uint64_t end = itest_now_ms() + 10000;;) {
                fds = itest_count_fds(T.dsad_pid);
                if (fds <= base_fds || itest_now_ms() > end)
                        break;
                usleep(50000);
        }
        fprintf(stderr, "dsad fds: %d before the kills, %d after %d kills\n", base_fds, fds, KILLS);
        CHECK(fds <= base_fds, "dsad's fds grew from %d to %d after %d killed clients", base_fds, fds, KILLS);
        {
                struct dsa_status *st = NULL;
                r = dsa_client_status(c, &st);
                CHECK(r >= 0 && st->sessions == 1, "status: %d sessions (want 1)", r >= 0 ? (int) st->sessions : r);
                dsa_status_free(st);
        }
        dsa_session_free(s);
        dsa_client_free(c);
        return itest_teardown(&T) ? 0 : 1;
}
