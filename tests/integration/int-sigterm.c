/* SIGTERM drains (dsad(8), SIGNALS): with ring requests and a D-Bus Classify call in flight,
 * SIGTERM makes dsad finish the requests already queued and answer them (ring callbacks with
 * status 0 and full results, the D-Bus call a method return), then exit 0 within 20 s. The
 * service manager's side is a fake NOTIFY_SOCKET (a datagram socket of ours): READY=1 before
 * the first call, STOPPING=1 after the SIGTERM, in that order. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <dsa/dsa.h>

#include "common.h"
#include "itest.h"

#define RING_REQS 4
#define TEXTS (ITEST_ASAN ? 8 : 32)

static struct itest T;
#define CHECK(cond, ...) ITEST_CHECK(&T, cond, __VA_ARGS__)

static char notes[8192]; /* every datagram, separated by '|' */
static size_t notes_len;

static void read_notes(int fd) {
        char buf[1024];
        ssize_t n;

        while ((n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT)) > 0) {
                buf[n] = 0;
                for (char *p = buf; *p; p++)
                        if (*p == '\n')
                                *p = ' ';
                notes_len += (size_t) snprintf(notes + notes_len, sizeof(notes) - notes_len, "%s|", buf);
        }
}

struct cb_state {
        int calls, ok, failed;
        int statuses[RING_REQS];
};

static void on_done(struct dsa_session *s, uint64_t id, int status, struct dsa_result *r, void *u) {
        struct cb_state *st = u;
        if (st->calls < RING_REQS)
                st->statuses[st->calls] = status;
        st->calls++;
        if (status == 0 && r && r->n_texts == TEXTS && r->classify && r->classify[TEXTS - 1].n_labels == 2)
                st->ok++;
        else
                st->failed++;
}

static int dbus_reply_state; /* 0 pending, 1 method return, -1 error */
static char dbus_reply_error[256];

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const sd_bus_error *e = sd_bus_message_get_error(m);
        if (e) {
                dbus_reply_state = -1;
                snprintf(dbus_reply_error, sizeof(dbus_reply_error), "%s: %s", e->name, e->message ?: "");
        } else
                dbus_reply_state = 1;
        return 0;
}

int main(void) {
        static char env[400];
        static char buf[TEXTS][200];
        const char *texts[TEXTS + 1] = { NULL };
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        struct cb_state st = { 0 };
        sd_bus *bus = NULL;
        sd_bus_message *call = NULL;
        int nfd, r, status = -1;
        pid_t pid;
        uint64_t t0;
        char *ready, *stopping;

        for (int i = 0; i < TEXTS; i++) {
                itest_text(buf[i], sizeof(buf[i]), 99, (uint32_t) i);
                texts[i] = buf[i];
        }
        itest_init(&T, NULL);
        nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        CHECK(nfd >= 0, "socket");
        CHECK(strlen(T.dir) + 8 < sizeof(sa.sun_path), "temporary folder name too long for a socket");
        memcpy(sa.sun_path, T.dir, strlen(T.dir));
        memcpy(sa.sun_path + strlen(T.dir), "/notify", 8);
        CHECK(bind(nfd, (struct sockaddr *) &sa, sizeof(sa)) == 0, "bind %s: %m", sa.sun_path);
        snprintf(env, sizeof(env), "NOTIFY_SOCKET=%s", sa.sun_path);
        itest_dsad_start(&T, env);
        t0 = itest_now_ms();
        do {
                struct pollfd p = { .fd = nfd, .events = POLLIN };
                (void) poll(&p, 1, 100);
                read_notes(nfd);
        } while (!strstr(notes, "READY=1") && itest_now_ms() - t0 < 3000);
        CHECK(strstr(notes, "READY=1"), "no READY=1 from dsad (got '%s')", notes);

        r = dsa_client_new(NULL, &c);
        CHECK(r >= 0, "client: %s", strerror(-r));
        r = dsa_session_open(c, "sst2", 8, 0, &s);
        CHECK(r >= 0, "session: %s", strerror(-r));
        dsa_session_set_timeout(s, 30 * 1000000ull);
        for (int i = 0; i < RING_REQS; i++)
                CHECK(dsa_session_submit_classify(s, texts, TEXTS, on_done, &st, NULL) >= 0, "submit %d", i);

        /* A script's call on the bus, in flight too. */
        r = itest_bus_open(T.address, &bus);
        CHECK(r >= 0, "bus: %s", strerror(-r));
        r = sd_bus_message_new_method_call(bus, &call, "org.dsa.Daemon1", "/org/dsa/Daemon1", "org.dsa.Daemon1",
                                           "Classify");
        if (r >= 0)
                r = sd_bus_message_append(call, "s", "sst2");
        if (r >= 0)
                r = sd_bus_message_append_strv(call, (char **) texts); /* NULL-terminated */
        CHECK(r >= 0, "message: %s", strerror(-r));
        r = sd_bus_call_async(bus, NULL, call, on_reply, NULL, 30 * 1000000ull);
        CHECK(r >= 0, "Classify async: %s", strerror(-r));
        CHECK(sd_bus_flush(bus) >= 0, "flush");

        /* Give dsad time to take the ring requests and the call, then stop it. */
        usleep(20000);
        kill(T.dsad_pid, SIGTERM);
        pid = T.dsad_pid;
        t0 = itest_now_ms();
        while ((st.calls < RING_REQS || dbus_reply_state == 0) && itest_now_ms() - t0 < 20000) {
                struct pollfd p[2] = { { .fd = dsa_session_get_fd(s), .events = POLLIN },
                                       { .fd = sd_bus_get_fd(bus), .events = POLLIN } };
                (void) poll(p, 2, 50);
                CHECK(dsa_session_dispatch(s) >= 0, "dispatch");
                while (sd_bus_process(bus, NULL) > 0)
                        ;
        }
        fprintf(stderr, "after SIGTERM: %d ring callbacks (%d ok, %d failed), D-Bus call %s %s, %llu ms\n", st.calls,
                st.ok, st.failed, dbus_reply_state > 0 ? "answered" : dbus_reply_state < 0 ? "failed" : "pending",
                dbus_reply_error, (unsigned long long) (itest_now_ms() - t0));
        for (uint64_t end = itest_now_ms() + 20000; itest_now_ms() < end;) {
                if (waitpid(pid, &status, WNOHANG) == pid)
                        break;
                usleep(10000);
        }
        T.dsad_pid = 0;
        read_notes(nfd);
        fprintf(stderr, "notifications: %s\n", notes);

        CHECK(st.calls == RING_REQS, "%d of %d ring requests answered after SIGTERM", st.calls, RING_REQS);
        for (int i = 0; i < RING_REQS; i++)
                CHECK(st.statuses[i] == 0, "ring request %d: %s (dsad(8): queued requests finish and are answered)", i,
                      strerror(-st.statuses[i]));
        CHECK(st.ok == RING_REQS, "%d of %d ring results complete", st.ok, RING_REQS);
        CHECK(dbus_reply_state == 1, "the D-Bus Classify in flight got %s", dbus_reply_error);
        CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "dsad's exit after SIGTERM: 0x%x", status);
        ready = strstr(notes, "READY=1");
        stopping = strstr(notes, "STOPPING=1");
        CHECK(stopping && ready && stopping > ready, "want READY=1 then STOPPING=1, got '%s'", notes);

        sd_bus_message_unref(call);
        sd_bus_flush_close_unref(bus);
        dsa_session_free(s);
        dsa_client_free(c);
        close(nfd);
        return itest_teardown(&T) ? 0 : 1;
}
