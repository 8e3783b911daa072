/* dsad killed with SIGKILL under open sessions: a pending asynchronous request gets its callback
 * with an error (-ECONNRESET, as dsa.h says for "dsad died"), the next synchronous call on the
 * session fails at once with an error, a synchronous call blocked in another thread returns an
 * error, all well within the session timeout (5 s); the client's control calls fail with
 * -ECONNREFUSED while no dsad runs; after dsad restarts, the same client and a new one open
 * sessions that work. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dsa/dsa.h>

#include "common.h"
#include "itest.h"

#define TIMEOUT_US (5 * 1000000ull)
#define BOUND_MS 4500 /* below the session timeout: the error must come from the death, not it */
#define LONG_TEXTS 256

static struct itest T;
#define CHECK(cond, ...) ITEST_CHECK(&T, cond, __VA_ARGS__)

static char buf[LONG_TEXTS][200];
static const char *texts[LONG_TEXTS];

struct cb_state {
        int calls, status;
};

static void on_done(struct dsa_session *s, uint64_t id, int status, struct dsa_result *r, void *u) {
        struct cb_state *st = u;
        st->calls++;
        st->status = status;
}

struct blocked {
        struct dsa_client *c;
        struct dsa_session *s;
        int r;
        uint64_t ms;
        volatile int started;
};

static void *blocked_call(void *arg) {
        struct blocked *b = arg;
        uint64_t start = itest_now_ms(), t0;

        b->started = 1;
        /* Long requests back to back, so one is running when dsad dies. */
        do {
                struct dsa_classify_result *cr = NULL;
                t0 = itest_now_ms();
                b->r = dsa_classify(b->s, texts, LONG_TEXTS, &cr);
                dsa_classify_result_free(cr);
        } while (b->r >= 0 && itest_now_ms() - start < 20000);
        b->ms = itest_now_ms() - t0; /* the last call, from its start */
        return NULL;
}

static void works(struct dsa_client *c, const char *who) {
        struct dsa_session *s = NULL;
        struct dsa_classify_result *cr = NULL;
        int r = dsa_session_open(c, "sst2", 0, 0, &s);

        CHECK(r >= 0, "%s: session after restart: %s", who, strerror(-r));
        dsa_session_set_timeout(s, TIMEOUT_US);
        r = dsa_classify(s, texts, 4, &cr);
        CHECK(r >= 0, "%s: classify after restart: %s", who, strerror(-r));
        dsa_classify_result_free(cr);
        dsa_session_free(s);
}

int main(void) {
        struct dsa_client *c = NULL, *c2 = NULL, *c3 = NULL;
        struct dsa_session *s = NULL;
        struct blocked b = { 0 };
        struct cb_state st = { 0 };
        struct dsa_status *status = NULL;
        pthread_t th;
        uint64_t t0;
        int r;

        for (int i = 0; i < LONG_TEXTS; i++) {
                itest_text(buf[i], sizeof(buf[i]), 7, (uint32_t) i);
                texts[i] = buf[i];
        }
        itest_init(&T, NULL);
        itest_dsad_start(&T, NULL);

        r = dsa_client_new(NULL, &c);
        CHECK(r >= 0, "client: %s", strerror(-r));
        r = dsa_session_open(c, "sst2", 4, 0, &s);
        CHECK(r >= 0, "session: %s", strerror(-r));
        CHECK(dsa_session_set_timeout(s, TIMEOUT_US) >= 0, "set_timeout");
        CHECK(dsa_nop(s) >= 0, "nop");

        /* A second client blocked in a synchronous call in another thread. */
        r = dsa_client_new(NULL, &b.c);
        CHECK(r >= 0, "client 2");
        r = dsa_session_open(b.c, "sst2", 1, 0, &b.s);
        CHECK(r >= 0, "session 2: %s", strerror(-r));
        dsa_session_set_timeout(b.s, TIMEOUT_US);
        CHECK(pthread_create(&th, NULL, blocked_call, &b) == 0, "thread");

        r = dsa_session_submit_classify(s, texts, LONG_TEXTS, on_done, &st, NULL);
        CHECK(r >= 0, "submit: %s", strerror(-r));
        while (!b.started)
                usleep(1000);
        usleep(100000);
        itest_dsad_kill(&T);
        t0 = itest_now_ms();

        /* The pending request's callback: an error, soon. */
        while (st.calls == 0 && itest_now_ms() - t0 < 10000) {
                struct pollfd p = { .fd = dsa_session_get_fd(s), .events = POLLIN };
                (void) poll(&p, 1, 100);
                CHECK(dsa_session_dispatch(s) >= 0, "dispatch");
        }
        CHECK(st.calls == 1, "pending request: %d callbacks after dsad's death", st.calls);
        fprintf(stderr, "pending async request: status %d (%s) after %llu ms\n", st.status, strerror(-st.status),
                (unsigned long long) (itest_now_ms() - t0));
        CHECK(st.status < 0, "pending request completed with status %d after dsad was killed", st.status);
        CHECK(itest_now_ms() - t0 < BOUND_MS, "pending request's error took %llu ms (timeout is 5 s)",
              (unsigned long long) (itest_now_ms() - t0));
        CHECK(st.status == -ECONNRESET, "pending request: %s (dsa.h: -ECONNRESET when dsad died)", strerror(-st.status));

        /* The next synchronous call. */
        t0 = itest_now_ms();
        r = dsa_nop(s);
        fprintf(stderr, "next sync call: %d (%s) after %llu ms\n", r, strerror(-r),
                (unsigned long long) (itest_now_ms() - t0));
        CHECK(r < 0 && itest_now_ms() - t0 < BOUND_MS, "sync call on a dead dsad: %d after %llu ms", r,
              (unsigned long long) (itest_now_ms() - t0));
        CHECK(r == -ECONNRESET, "sync call on a dead dsad: %s (want -ECONNRESET)", strerror(-r));

        pthread_join(th, NULL);
        fprintf(stderr, "blocked sync call: %d (%s) after %llu ms\n", b.r, strerror(-b.r), (unsigned long long) b.ms);
        CHECK(b.r < 0 && b.ms < BOUND_MS + 200, "blocked sync call: %d after %llu ms", b.r, (unsigned long long) b.ms);
        CHECK(b.r == -ECONNRESET, "blocked sync call: %s (want -ECONNRESET)", strerror(-b.r));

        /* Control calls while no dsad runs. */
        r = dsa_client_status(c, &status);
        CHECK(r == -ECONNREFUSED, "status with dsad gone: %d (want -ECONNREFUSED)", r);
        r = dsa_client_new(NULL, &c3);
        CHECK(r >= 0, "a client can be made while dsad is down: %s", strerror(-r));
        r = dsa_session_open(c3, "sst2", 0, 0, &b.s);
        CHECK(r == -ECONNREFUSED, "open with dsad gone: %d (want -ECONNREFUSED)", r);

        dsa_session_free(s);
        dsa_session_free(b.s);
        dsa_client_free(b.c);

        /* Restart: the old client, the one made while dsad was down and a new one all work. */
        itest_dsad_start(&T, NULL);
        works(c, "the client from before the crash");
        works(c3, "the client made while dsad was down");
        r = dsa_client_new(NULL, &c2);
        CHECK(r >= 0, "client after restart");
        works(c2, "a new client");
        dsa_client_free(c);
        dsa_client_free(c2);
        dsa_client_free(c3);
        return itest_teardown(&T) ? 0 : 1;
}
