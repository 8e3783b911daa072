/* dsad's power watcher (daemon/powerbus.c) and polkit check (daemon/polkit.c) against
 * power-stub on a private dbus-daemon, in process on a libuv loop as dsad runs them.
 *
 * Watcher: the first callback carries UPower's and the new power-profiles-daemon name's values;
 * each change made through the stub's control interface gives exactly one callback, and a
 * PropertiesChanged that changes nothing gives none; outside values are clamped and capped;
 * invalidated properties are fetched again; the stub's death makes everything unknown and its
 * return brings the values back; with only net.hadess.PowerProfiles the profile comes from there;
 * on an empty bus the first callback says nothing is known; when the bus itself dies, one
 * callback says nothing is known.
 *
 * polkit: a test object on the loop runs dsad_polkit_check() for its callers. Root passes without
 * the stub being asked; an unprivileged caller (uid 65534, forked and dropped, when the test runs
 * as root; the test's own uid otherwise) is denied when the stub says no, allowed when it says
 * yes, and denied with a clear message when polkit is not on the bus. The private bus runs with a
 * configuration of its own that lets every user connect. */
#define _GNU_SOURCE
/* basic/macro.h before <uv.h>, as in daemon.h: uv.h's <sys/param.h> MIN/MAX would clash. */
#include "basic/macro.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>
#include <uv.h>

#include "bus.h"
#include "itest.h"
#include "polkit.h"
#include "powerbus.h"

#define CHECK(cond, ...) ITEST_CHECK(NULL, cond, __VA_ARGS__)
#define NOBODY 65534
#define QUIET_MS 200 /* how long "no further callback" is watched for */

#define SERVICE_NEW "org.freedesktop.UPower.PowerProfiles"
#define SERVICE_LEGACY "net.hadess.PowerProfiles"

static char dir[256];
static char address[512];
static pid_t bus_pid, stub_pid;
static const char *stub_path;

/* ---- processes */

static void reap(pid_t *pid) {
        if (*pid <= 0)
                return;
        kill(*pid, SIGKILL);
        (void) waitpid(*pid, NULL, 0);
        *pid = 0;
}

static void cleanup(void) {
        char cmd[300];

        reap(&stub_pid);
        reap(&bus_pid);
        if (dir[0] && !getenv("DSA_ITEST_KEEP")) {
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
                (void) !system(cmd);
        }
        dir[0] = 0;
}

static void on_fatal_signal(int sig) {
        if (stub_pid > 0)
                kill(stub_pid, SIGKILL);
        if (bus_pid > 0)
                kill(bus_pid, SIGKILL);
        signal(sig, SIG_DFL);
        raise(sig);
}

/* Reads one line from fd into buf within timeout_ms; false on timeout or EOF. */
static bool read_line(int fd, char *buf, size_t size, int timeout_ms) {
        uint64_t end = itest_now_ms() + (uint64_t) timeout_ms;
        size_t n = 0;

        while (n < size - 1) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                int left = (int) (end - itest_now_ms());
                ssize_t k;

                if (left <= 0 || poll(&pfd, 1, left) <= 0)
                        return false;
                k = read(fd, buf + n, 1);
                if (k <= 0)
                        return false;
                if (buf[n] == '\n') {
                        buf[n] = 0;
                        return true;
                }
                n++;
        }
        buf[n] = 0;
        return true;
}

/* A private bus with our own configuration: every user may connect (the unprivileged polkit
 * caller), everyone may own and call anything, as on a session bus. */
static void start_bus(void) {
        char conf[400], listen[300], line[512];
        int pfd[2];

        snprintf(conf, sizeof(conf), "%s/bus.conf", dir);
        snprintf(listen, sizeof(listen), "unix:path=%s/bus", dir);
        CHECK(itest_write_any_user_bus_config(conf, listen) == 0, "cannot write %s: %m", conf);

        CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe: %m");
        bus_pid = fork();
        CHECK(bus_pid >= 0, "fork: %m");
        if (bus_pid == 0) {
                char conf_arg[450], fd_arg[32], log[300];
                int fd, null, lfd;

                prctl(PR_SET_PDEATHSIG, SIGKILL);
                fd = fcntl(pfd[1], F_DUPFD, 3); /* without O_CLOEXEC */
                snprintf(conf_arg, sizeof(conf_arg), "--config-file=%s", conf);
                snprintf(fd_arg, sizeof(fd_arg), "--print-address=%d", fd);
                snprintf(log, sizeof(log), "%s/bus.log", dir);
                null = open("/dev/null", O_RDWR);
                lfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                dup2(null, 0);
                if (lfd >= 0)
                        dup2(lfd, 2);
                execlp("dbus-daemon", "dbus-daemon", conf_arg, "--nofork", "--nopidfile", fd_arg, (char *) NULL);
                _exit(127);
        }
        close(pfd[1]);
        CHECK(read_line(pfd[0], line, sizeof(line), 10000),
              "dbus-daemon printed no address (is it installed? see %s/bus.log)", dir);
        close(pfd[0]);
        snprintf(address, sizeof(address), "%s", line);
}

/* Starts power-stub with extra arguments (NULL-terminated) and waits for its "ready". */
static void stub_start(const char *arg, ...) {
        char *argv[16], line[64];
        int argc = 0, pfd[2];
        va_list ap;

        CHECK(stub_pid == 0, "the stub is already running");
        argv[argc++] = (char *) stub_path;
        argv[argc++] = "--address";
        argv[argc++] = address;
        va_start(ap, arg);
        for (const char *a = arg; a && argc < 15; a = va_arg(ap, const char *))
                argv[argc++] = (char *) a;
        va_end(ap);
        argv[argc] = NULL;

        CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe: %m");
        stub_pid = fork();
        CHECK(stub_pid >= 0, "fork: %m");
        if (stub_pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                dup2(pfd[1], 1);
                execv(stub_path, argv);
                _exit(127);
        }
        close(pfd[1]);
        CHECK(read_line(pfd[0], line, sizeof(line), 10000) && strcmp(line, "ready") == 0,
              "power-stub did not get ready (got '%s')", line);
        close(pfd[0]);
}

static void stub_kill(void) {
        reap(&stub_pid);
}

/* ---- the stub's control interface, over a blocking connection of the test's own */

static sd_bus *ctl;

static void ctl_call(const char *method, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(ctl, &m, "org.dsa.Test.PowerStub", "/org/dsa/Test/PowerStub",
                                           "org.dsa.Test.PowerStub", method);
        CHECK(r >= 0, "new call: %s", strerror(-r));
        va_start(ap, types);
        r = sd_bus_message_appendv(m, types, ap);
        va_end(ap);
        CHECK(r >= 0, "append: %s", strerror(-r));
        r = sd_bus_call(ctl, m, 0, &error, NULL);
        CHECK(r >= 0, "%s: %s", method, error.message ? error.message : strerror(-r));
}

static void ctl_last_check(char *action, size_t action_size, char *subject, size_t subject_size) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *a, *s;
        int r;

        r = sd_bus_call_method(ctl, "org.dsa.Test.PowerStub", "/org/dsa/Test/PowerStub", "org.dsa.Test.PowerStub",
                               "LastCheck", &error, &reply, NULL);
        CHECK(r >= 0, "LastCheck: %s", error.message ? error.message : strerror(-r));
        r = sd_bus_message_read(reply, "ss", &a, &s);
        CHECK(r >= 0, "LastCheck reply: %s", strerror(-r));
        snprintf(action, action_size, "%s", a);
        snprintf(subject, subject_size, "%s", s);
}

/* Quit() and a clean exit (under ASan: no leak report). */
static void stub_quit(void) {
        uint64_t end = itest_now_ms() + 10000;
        int status;

        ctl_call("Quit", "");
        for (;;) {
                pid_t r = waitpid(stub_pid, &status, WNOHANG);
                if (r == stub_pid)
                        break;
                CHECK(r == 0 && itest_now_ms() < end, "power-stub did not exit after Quit()");
                struct timespec ts = { 0, 10 * 1000000L };
                nanosleep(&ts, NULL);
        }
        stub_pid = 0;
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "power-stub exited with status 0x%x", status);
}

/* ---- the loop */

static uv_loop_t loop;
static uv_timer_t tick; /* wakes uv_run(UV_RUN_ONCE) up while we wait */

static void on_tick(uv_timer_t *t) {
}

/* Runs the loop until done(arg) or timeout_ms; returns done(arg). */
static bool run_until(bool (*done)(void *arg), void *arg, unsigned timeout_ms) {
        uint64_t end = itest_now_ms() + timeout_ms;

        while (!(done && done(arg))) {
                if (itest_now_ms() >= end)
                        return false;
                uv_run(&loop, UV_RUN_ONCE);
        }
        return true;
}

static void run_for(unsigned ms) {
        (void) run_until(NULL, NULL, ms);
}

/* ---- recording callbacks */

#define MAX_CALLS 256

struct record {
        const char *name;
        struct dsad_power_signals calls[MAX_CALLS];
        unsigned n;
        unsigned duplicates; /* calls equal to the one before */
};

static bool same(const struct dsad_power_signals *a, const struct dsad_power_signals *b) {
        bool same_percent = isnan(a->battery_percent) ? isnan(b->battery_percent)
                                                      : a->battery_percent == b->battery_percent;
        return a->upower == b->upower && a->on_battery == b->on_battery && same_percent &&
               strcmp(a->profile, b->profile) == 0 && strcmp(a->profile_service, b->profile_service) == 0;
}

static const char *show(const struct dsad_power_signals *s) {
        static char buf[4][256];
        static unsigned k;
        char *b = buf[k++ % 4];

        snprintf(b, 256, "{upower %d, on_battery %d, %g%%, '%s' from '%s'}", s->upower, s->on_battery,
                 s->battery_percent, s->profile, s->profile_service);
        return b;
}

static void on_signals(const struct dsad_power_signals *s, void *userdata) {
        struct record *rec = userdata;

        CHECK(rec->n < MAX_CALLS, "too many callbacks");
        if (rec->n > 0 && same(&rec->calls[rec->n - 1], s))
                rec->duplicates++;
        rec->calls[rec->n++] = *s;
        fprintf(stderr, "int-powerbus: %s callback %u: %s\n", rec->name, rec->n, show(s));
}

static bool has_calls(void *arg) {
        struct { struct record *rec; unsigned n; } *a = arg;
        return a->rec->n >= a->n;
}

/* Waits for one more callback than `before`, then checks that no other follows. */
static const struct dsad_power_signals *expect_one(struct record *rec, unsigned before, const char *what) {
        struct { struct record *rec; unsigned n; } a = { rec, before + 1 };

        CHECK(run_until(has_calls, &a, 5000), "%s: no callback within 5 s", what);
        run_for(QUIET_MS);
        CHECK(rec->n == before + 1, "%s: %u callbacks, expected 1 (last %s)", what, rec->n - before,
              show(&rec->calls[rec->n - 1]));
        CHECK(rec->duplicates == 0, "%s: a callback repeated the values before it", what);
        return &rec->calls[rec->n - 1];
}

static void expect_none(struct record *rec, const char *what) {
        unsigned before = rec->n;

        run_for(QUIET_MS);
        CHECK(rec->n == before, "%s: %u callbacks, expected none (last %s)", what, rec->n - before,
              show(&rec->calls[rec->n - 1]));
}

struct want {
        struct record *rec;
        struct dsad_power_signals s;
};

static bool reached(void *arg) {
        struct want *w = arg;
        return w->rec->n > 0 && same(&w->rec->calls[w->rec->n - 1], &w->s);
}

/* Waits until the last callback says s (services come and go one name at a time, so there may
 * be steps on the way), and checks that no callback repeated the one before. */
static void expect_reach(struct record *rec, const struct dsad_power_signals *s, const char *what) {
        struct want w = { rec, *s };

        CHECK(run_until(reached, &w, 10000), "%s: never reached %s (last %s)", what, show(s),
              rec->n ? show(&rec->calls[rec->n - 1]) : "none");
        run_for(QUIET_MS);
        CHECK(same(&rec->calls[rec->n - 1], s), "%s: moved on to %s", what, show(&rec->calls[rec->n - 1]));
        CHECK(rec->duplicates == 0, "%s: a callback repeated the values before it", what);
}

static struct dsad_power_signals values(bool upower, bool on_battery, double percent, const char *profile,
                                        const char *service) {
        struct dsad_power_signals s = { .upower = upower, .on_battery = on_battery, .battery_percent = percent };

        snprintf(s.profile, sizeof(s.profile), "%s", profile);
        snprintf(s.profile_service, sizeof(s.profile_service), "%s", service);
        return s;
}

static void check_values(const struct dsad_power_signals *got, const struct dsad_power_signals *want,
                         const char *what) {
        CHECK(same(got, want), "%s: got %s, want %s", what, show(got), show(want));
}

/* ---- watcher */

static void test_watcher(void) {
        static struct record rec = { .name = "watcher" }, rec2 = { .name = "legacy-only" },
                             rec3 = { .name = "empty bus" };
        const struct dsad_power_signals unknown = values(false, false, NAN, "", "");
        struct dsad_powerbus *p = NULL, *q = NULL;
        struct dsad_power_signals now;
        char long_profile[100];
        int r;

        r = dsad_powerbus_new(&loop, "unix:path=/nonexistent/dsa-test-bus", on_signals, &rec, &p);
        CHECK(r < 0 && !p, "a bus that does not exist: %d", r);

        stub_start(NULL);
        r = dsad_powerbus_new(&loop, address, on_signals, &rec, &p);
        CHECK(r >= 0, "dsad_powerbus_new: %s", strerror(-r));
        CHECK(rec.n == 0, "a callback before the loop ran");

        /* The first complete read. */
        struct dsad_power_signals want = values(true, false, 80, "balanced", SERVICE_NEW);
        check_values(expect_one(&rec, 0, "first read"), &want, "first read");
        dsad_powerbus_get(p, &now);
        check_values(&now, &want, "dsad_powerbus_get");

        /* One change, one callback; signals that change nothing, none. */
        ctl_call("SetOnBattery", "b", 1);
        want.on_battery = true;
        check_values(expect_one(&rec, rec.n, "OnBattery"), &want, "OnBattery");
        ctl_call("SetPercentage", "d", 42.5);
        want.battery_percent = 42.5;
        check_values(expect_one(&rec, rec.n, "Percentage"), &want, "Percentage");
        ctl_call("SetPercentage", "d", 42.5);
        expect_none(&rec, "the same Percentage again");
        ctl_call("SetProfile", "s", "power-saver");
        snprintf(want.profile, sizeof(want.profile), "power-saver");
        check_values(expect_one(&rec, rec.n, "ActiveProfile"), &want, "ActiveProfile on both names");
        ctl_call("SetProfile", "s", "power-saver");
        expect_none(&rec, "the same ActiveProfile again");
        ctl_call("SetOnBattery", "b", 0);
        want.on_battery = false;
        check_values(expect_one(&rec, rec.n, "OnBattery off"), &want, "OnBattery off");

        /* Outside values: clamped, NaN-checked, capped at a character boundary. */
        ctl_call("SetPercentage", "d", 250.0);
        want.battery_percent = 100;
        check_values(expect_one(&rec, rec.n, "Percentage 250"), &want, "Percentage 250 clamped");
        ctl_call("SetPercentage", "d", -3.0);
        want.battery_percent = 0;
        check_values(expect_one(&rec, rec.n, "Percentage -3"), &want, "Percentage -3 clamped");
        ctl_call("SetPercentage", "d", (double) NAN);
        want.battery_percent = NAN;
        check_values(expect_one(&rec, rec.n, "Percentage NaN"), &want, "Percentage NaN");
        memset(long_profile, 'x', sizeof(long_profile) - 1);
        long_profile[sizeof(long_profile) - 1] = 0;
        memcpy(long_profile + 30, "\xc3\xa9", 2); /* é across the cap */
        ctl_call("SetProfile", "s", long_profile);
        snprintf(want.profile, sizeof(want.profile), "%.30s", long_profile);
        check_values(expect_one(&rec, rec.n, "long ActiveProfile"), &want, "long ActiveProfile capped");
        ctl_call("SetPercentage", "d", 42.5);
        ctl_call("SetProfile", "s", "balanced");
        want.battery_percent = 42.5;
        snprintf(want.profile, sizeof(want.profile), "balanced");
        expect_reach(&rec, &want, "back to 42.5% balanced");

        /* Invalidated instead of changed: fetched again with Get. */
        ctl_call("SetInvalidate", "b", 1);
        ctl_call("SetPercentage", "d", 61.0);
        want.battery_percent = 61;
        check_values(expect_one(&rec, rec.n, "invalidated Percentage"), &want, "invalidated Percentage");
        ctl_call("SetProfile", "s", "performance");
        snprintf(want.profile, sizeof(want.profile), "performance");
        check_values(expect_one(&rec, rec.n, "invalidated ActiveProfile"), &want, "invalidated ActiveProfile");
        ctl_call("SetOnBattery", "b", 1);
        want.on_battery = true;
        check_values(expect_one(&rec, rec.n, "invalidated OnBattery"), &want, "invalidated OnBattery");

        /* The services leave: everything unknown. They come back: read again. */
        stub_kill();
        expect_reach(&rec, &unknown, "stub killed");
        dsad_powerbus_get(p, &now);
        check_values(&now, &unknown, "dsad_powerbus_get after the kill");
        stub_start(NULL);
        want = values(true, false, 80, "balanced", SERVICE_NEW);
        expect_reach(&rec, &want, "stub restarted");

        /* Only the legacy name: the profile comes from there, for a running watcher and for the
         * first read of a new one. */
        stub_kill();
        stub_start("--no-ppd-new", NULL);
        want = values(true, false, 80, "balanced", SERVICE_LEGACY);
        expect_reach(&rec, &want, "legacy name only");
        r = dsad_powerbus_new(&loop, address, on_signals, &rec2, &q);
        CHECK(r >= 0, "dsad_powerbus_new: %s", strerror(-r));
        check_values(expect_one(&rec2, 0, "first read, legacy only"), &want, "first read, legacy only");
        ctl_call("SetProfile", "s", "power-saver");
        snprintf(want.profile, sizeof(want.profile), "power-saver");
        check_values(expect_one(&rec, rec.n, "legacy ActiveProfile"), &want, "legacy ActiveProfile");
        CHECK(rec2.n == 2 && same(&rec2.calls[1], &want), "second watcher: %u callbacks", rec2.n);
        ctl_call("SetInvalidate", "b", 1);
        ctl_call("SetProfile", "s", "performance");
        snprintf(want.profile, sizeof(want.profile), "performance");
        check_values(expect_one(&rec, rec.n, "invalidated legacy ActiveProfile"), &want,
                     "invalidated legacy ActiveProfile");
        q = dsad_powerbus_free(q);

        /* No UPower: its fields unknown, the profile still there. */
        stub_kill();
        stub_start("--no-upower", NULL);
        want = values(false, false, NAN, "balanced", SERVICE_NEW);
        expect_reach(&rec, &want, "no UPower");

        /* An empty bus: the first callback says nothing is known. */
        stub_kill();
        expect_reach(&rec, &unknown, "stub gone again");
        r = dsad_powerbus_new(&loop, address, on_signals, &rec3, &q);
        CHECK(r >= 0, "dsad_powerbus_new: %s", strerror(-r));
        check_values(expect_one(&rec3, 0, "first read on an empty bus"), &unknown, "first read on an empty bus");
        q = dsad_powerbus_free(q);

        p = dsad_powerbus_free(p);
        CHECK(rec.duplicates == 0, "a callback repeated the values before it");
        fprintf(stderr, "int-powerbus: watcher ok (%u callbacks)\n", rec.n);
}

/* ---- polkit */

#define ACTION "org.dsa.policy"

static sd_bus *srv;

static int method_check(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *action;
        int r;

        r = sd_bus_message_read(m, "s", &action);
        if (r < 0)
                return r;
        r = dsad_polkit_check(sd_bus_message_get_bus(m), m, action, error);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(m, NULL);
}

static int check_done(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return sd_bus_reply_method_return(m, NULL);
}

/* The asynchronous form, as LoadModel uses it: replies from check_done, or the denial. */
static int method_check_async(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *action;
        int r;

        r = sd_bus_message_read(m, "s", &action);
        if (r < 0)
                return r;
        r = dsad_polkit_check_async(sd_bus_message_get_bus(m), m, action, check_done, NULL, error);
        return r != 0 ? r : check_done(m, NULL, error);
}

static const sd_bus_vtable check_vtable[] = {
        SD_BUS_VTABLE_START(0),
        /* Unprivileged for sd-bus, whose own check would turn other users away before polkit. */
        SD_BUS_METHOD_WITH_ARGS("Check", SD_BUS_ARGS("s", action), SD_BUS_NO_RESULT, method_check,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CheckAsync", SD_BUS_ARGS("s", action), SD_BUS_NO_RESULT, method_check_async,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

struct call_result {
        bool allowed;
        char unique[128];   /* the caller's unique name */
        char error[128];    /* D-Bus error name when denied */
        char message[512];
};

static bool child_gone(void *arg) {
        pid_t *pid = arg;
        int status;

        if (waitpid(*pid, &status, WNOHANG) != *pid)
                return false;
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the caller failed (status 0x%x)", status);
        *pid = 0;
        return true;
}

/* Calls the test object's Check(ACTION) from a child process, as uid `uid` (-1: unchanged),
 * while the loop serves it. */
static const char *check_method = "Check"; /* or "CheckAsync" */

static void call_check(int uid, struct call_result *ret) {
        const char *server;
        char buf[1024];
        int pfd[2], r;
        pid_t pid;
        ssize_t n;

        r = sd_bus_get_unique_name(srv, &server);
        CHECK(r >= 0, "unique name: %s", strerror(-r));
        CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe: %m");
        pid = fork();
        CHECK(pid >= 0, "fork: %m");
        if (pid == 0) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                sd_bus *bus = NULL;
                const char *unique = "";

                prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(pfd[0]);
                if (uid >= 0)
                        itest_child_become((uid_t) uid);
                r = itest_bus_open(address, &bus);
                if (r < 0) {
                        dprintf(2, "int-powerbus: uid %d cannot connect to %s: %s\n", uid, address, strerror(-r));
                        _exit(1);
                }
                (void) sd_bus_get_unique_name(bus, &unique);
                r = sd_bus_call_method(bus, server, "/org/dsa/Test/Polkit", "org.dsa.Test.Polkit", check_method,
                                       &error, NULL, "s", ACTION);
                dprintf(pfd[1], "%d\n%s\n%s\n%s\n", r >= 0, unique, error.name ? error.name : "",
                        error.message ? error.message : "");
                _exit(0);
        }
        close(pfd[1]);
        CHECK(run_until(child_gone, &pid, 20000), "the caller did not finish within 20 s");
        n = read(pfd[0], buf, sizeof(buf) - 1);
        close(pfd[0]);
        CHECK(n > 0, "the caller said nothing");
        buf[n] = 0;

        char *save = NULL, *allowed = strtok_r(buf, "\n", &save);
        char *unique = strtok_r(NULL, "\n", &save), *name = strtok_r(NULL, "\n", &save);
        char *message = strtok_r(NULL, "\n", &save);
        memset(ret, 0, sizeof(*ret));
        ret->allowed = allowed && strcmp(allowed, "1") == 0;
        snprintf(ret->unique, sizeof(ret->unique), "%s", unique ? unique : "");
        snprintf(ret->error, sizeof(ret->error), "%s", name && ret->allowed == false ? name : "");
        snprintf(ret->message, sizeof(ret->message), "%s", message && !ret->allowed ? message : "");
        fprintf(stderr, "int-powerbus: Check from %s: %s %s %s\n", ret->unique, ret->allowed ? "allowed" : "denied",
                ret->error, ret->message);
}

static bool test_polkit(void) {
        struct dsad_bus_io *io = NULL;
        struct call_result res;
        char action[256], subject[256];
        bool root = geteuid() == 0;
        int r;

        r = dsad_bus_open(address, &srv);
        CHECK(r >= 0, "dsad_bus_open: %s", strerror(-r));
        r = sd_bus_add_object_vtable(srv, NULL, "/org/dsa/Test/Polkit", "org.dsa.Test.Polkit", check_vtable, NULL);
        CHECK(r >= 0, "vtable: %s", strerror(-r));
        r = dsad_bus_io_new(&loop, srv, NULL, NULL, &io);
        CHECK(r >= 0, "dsad_bus_io_new: %s", strerror(-r));

        stub_start(NULL);
        /* The server's own uid (root here, or the user running the test): allowed, and polkit
         * never asked. */
        call_check(-1, &res);
        CHECK(res.allowed, "the server's own uid was denied: %s", res.message);
        ctl_last_check(action, sizeof(action), subject, sizeof(subject));
        CHECK(action[0] == 0 && subject[0] == 0, "polkit was asked about the server's own uid (%s, %s)", action,
              subject);
        if (!root) {
                fprintf(stderr, "int-powerbus: SKIP the callers of another uid: the test does not run as root\n");
                stub_quit();
                io = dsad_bus_io_free(io);
                srv = sd_bus_flush_close_unref(srv);
                return true;
        }

        /* Another uid: as polkit says. */
        call_check(NOBODY, &res);
        CHECK(!res.allowed, "an unprivileged caller was allowed while polkit says no");
        CHECK(strcmp(res.error, "org.dsa.Error.AccessDenied") == 0, "error %s", res.error);
        CHECK(strstr(res.message, "not authorized for " ACTION ": polkit said no"), "message '%s'", res.message);
        ctl_last_check(action, sizeof(action), subject, sizeof(subject));
        CHECK(strcmp(action, ACTION) == 0, "polkit was asked about '%s'", action);
        CHECK(strcmp(subject, res.unique) == 0, "polkit was asked about subject '%s', the caller is '%s'", subject,
              res.unique);

        ctl_call("SetAuthorized", "b", 1);
        call_check(NOBODY, &res);
        CHECK(res.allowed, "an authorized caller was denied: %s", res.message);
        ctl_last_check(action, sizeof(action), subject, sizeof(subject));
        CHECK(strcmp(subject, res.unique) == 0, "polkit was asked about subject '%s', the caller is '%s'", subject,
              res.unique);

        ctl_call("SetAuthorized", "b", 0);
        call_check(-1, &res);
        CHECK(res.allowed, "root was denied: %s", res.message);

        /* No polkit on the bus: only root and the server's own uid. */
        stub_kill();
        stub_start("--no-polkit", NULL);
        call_check(NOBODY, &res);
        CHECK(!res.allowed, "an unprivileged caller was allowed without polkit");
        CHECK(strcmp(res.error, "org.dsa.Error.AccessDenied") == 0, "error %s", res.error);
        CHECK(strstr(res.message, "polkit is not running, only root and dsad's own user may perform " ACTION),
              "message '%s'", res.message);
        call_check(-1, &res);
        CHECK(res.allowed, "root was denied without polkit: %s", res.message);
        stub_quit();

        io = dsad_bus_io_free(io);
        srv = sd_bus_flush_close_unref(srv);
        fprintf(stderr, "int-powerbus: polkit ok (%s)\n", check_method);
        return true;
}

/* ---- the bus itself goes */

static void test_bus_lost(void) {
        static struct record rec = { .name = "bus lost" };
        const struct dsad_power_signals unknown = values(false, false, NAN, "", "");
        const struct dsad_power_signals want = values(true, false, 80, "balanced", SERVICE_NEW);
        struct dsad_powerbus *p = NULL;
        int r;

        stub_start(NULL);
        r = dsad_powerbus_new(&loop, address, on_signals, &rec, &p);
        CHECK(r >= 0, "dsad_powerbus_new: %s", strerror(-r));
        check_values(expect_one(&rec, 0, "first read"), &want, "first read");
        reap(&bus_pid);
        check_values(expect_one(&rec, rec.n, "bus killed"), &unknown, "bus killed");
        p = dsad_powerbus_free(p);
        stub_kill();
        fprintf(stderr, "int-powerbus: bus loss ok\n");
}

int main(void) {
        const char *tmp = getenv("TMPDIR");
        int r;

        stub_path = getenv("DSA_TEST_POWER_STUB");
        if (!stub_path) {
                fprintf(stderr, "SKIP: DSA_TEST_POWER_STUB not set (run through ctest)\n");
                return ITEST_SKIP;
        }
        snprintf(dir, sizeof(dir), "%s/dsa-powerbus-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        CHECK(mkdtemp(dir), "mkdtemp: %m");
        /* The unprivileged caller must reach the socket in here. */
        CHECK(chmod(dir, 0755) == 0, "chmod: %m");
        atexit(cleanup);
        signal(SIGTERM, on_fatal_signal);
        signal(SIGINT, on_fatal_signal);
        signal(SIGPIPE, SIG_IGN);

        start_bus();
        r = itest_bus_open(address, &ctl);
        CHECK(r >= 0, "connect to %s: %s", address, strerror(-r));

        CHECK(uv_loop_init(&loop) == 0, "uv_loop_init");
        uv_timer_init(&loop, &tick);
        uv_timer_start(&tick, on_tick, 10, 10);

        test_watcher();
        test_polkit();
        check_method = "CheckAsync";
        test_polkit();
        test_bus_lost();

        /* Everything closed: the loop must end with no handle left. */
        uv_close((uv_handle_t *) &tick, NULL);
        for (int i = 0; i < 16 && uv_run(&loop, UV_RUN_NOWAIT) != 0; i++)
                ;
        CHECK(uv_loop_close(&loop) == 0, "handles left open on the loop");
        ctl = sd_bus_flush_close_unref(ctl);
        fprintf(stderr, "int-powerbus: ok\n");
        return 0;
}
