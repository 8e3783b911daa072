/* The integration harness for C tests: a private dbus-daemon, a temporary model store and the real
 * dsad on that bus, started and stopped by the test, and torn down on any exit (normal return,
 * exit(), a failed assertion's abort, ctest's SIGTERM on timeout); children also die with the
 * test (PR_SET_PDEATHSIG). Paths come from the environment ctest sets: DSA_TEST_DSAD (the dsad
 * binary), DSA_SOURCE_DIR (for the bundled model). Messages go to stderr, "itest: ...". */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#define ITEST_SKIP 77

struct itest {
        char dir[256];          /* temporary folder: store/, the bus socket, dsad.log */
        char store[300];
        char log[300];
        char address[512];      /* the private bus, as dbus-daemon printed it */
        pid_t bus_pid;
        pid_t dsad_pid;
        char dsad_args[8][320]; /* extra dsad arguments, NULL-free; n_args used */
        int n_args;
};

/* Fails the test (exit 1) with a message, after printing dsad's log tail. */
#define ITEST_CHECK(t, cond, ...)                                                                   \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        itest_fail(t, __FILE__, __LINE__, #cond, __VA_ARGS__);                       \
                }                                                                                  \
        } while (0)

_Noreturn void itest_fail(struct itest *t, const char *file, int line, const char *cond,
                          const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Sets up the folder, the store (the bundled model as sst2.gguf) and the bus; exports
 * DSA_BUS_ADDRESS. Extra dsad arguments (e.g. "--idle-unload", "1"), NULL-terminated. Does not
 * start dsad. */
void itest_init(struct itest *t, const char *const *dsad_args);

/* The same, on a bus every uid may connect to, in a folder every uid may enter (0755): for tests
 * that run clients as other users. */
void itest_init_any_user(struct itest *t, const char *const *dsad_args);

/* Writes a session-type bus configuration at path that listens on listen (a D-Bus address) and
 * lets every uid connect, own and call anything; 0 or a negative errno. */
int itest_write_any_user_bus_config(const char *path, const char *listen);

/* Starts dsad and waits (10 s at most) until it owns org.dsa.Daemon1. extra_env: one
 * "NAME=VALUE" to add to dsad's environment, or NULL. */
void itest_dsad_start(struct itest *t, const char *extra_env);

/* SIGTERM, then waits up to timeout_ms; returns the wait status, or -1 when it had to SIGKILL. */
int itest_dsad_stop(struct itest *t, int timeout_ms);

/* SIGKILL and reap. */
void itest_dsad_kill(struct itest *t);

/* Stops dsad (checking it exits 0 on SIGTERM, i.e. no sanitizer report), the bus, removes the
 * folder. Registered with atexit by itest_init; safe to call twice. Returns false when dsad did
 * not exit cleanly. */
bool itest_teardown(struct itest *t);

/* In a forked child: dies with the test (PR_SET_PDEATHSIG), then becomes uid, with gid uid and
 * no supplementary groups; on failure says why and _exit(1)s. */
void itest_child_become(uid_t uid);

/* Number of open fds of a process (/proc/PID/fd), -1 on error. */
int itest_count_fds(pid_t pid);

/* Monotonic milliseconds. */
uint64_t itest_now_ms(void);

/* A bus client connection of its own to address (fd passing on), as an app or a script would
 * open it; a negative errno on failure. */
int itest_bus_open(const char *address, sd_bus **ret);

/* The bundled model's path. */
const char *itest_model_path(void);

/* Prints the last lines of dsad's log to stderr. */
void itest_dump_log(struct itest *t);
