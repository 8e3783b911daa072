/* The integration harness (itest.h): private dbus-daemon + temporary store + real dsad. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"

static struct itest *current;
static pid_t owner; /* the process that set up: a forked child's exit tears nothing down */

uint64_t itest_now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms) {
        struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

const char *itest_model_path(void) {
        static char path[1024];
        const char *src = getenv("DSA_SOURCE_DIR");

        snprintf(path, sizeof(path), "%s/models/sst2-bert-4l256.gguf", src ? src : ".");
        return path;
}

void itest_dump_log(struct itest *t) {
        char cmd[400];

        if (!t || !t->log[0])
                return;
        fprintf(stderr, "itest: ---- last lines of dsad's log (%s)\n", t->log);
        snprintf(cmd, sizeof(cmd), "tail -n 40 '%s' >&2", t->log);
        (void) !system(cmd);
        fprintf(stderr, "itest: ----\n");
}

void itest_fail(struct itest *t, const char *file, int line, const char *cond, const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "FAIL %s:%d: %s: ", file, line, cond);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        itest_dump_log(t ? t : current);
        exit(1); /* atexit tears down */
}

/* Waits up to timeout_ms for pid; returns the status, or -1 on timeout (pid still running). */
static int wait_pid(pid_t pid, int timeout_ms) {
        uint64_t end = itest_now_ms() + (uint64_t) timeout_ms;
        int status;

        for (;;) {
                pid_t r = waitpid(pid, &status, WNOHANG);
                if (r == pid)
                        return status;
                if (r < 0)
                        return errno == ECHILD ? 0 : -1;
                if (itest_now_ms() >= end)
                        return -1;
                sleep_ms(5);
        }
}

static void rm_rf(const char *path) {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
        (void) !system(cmd);
}

static void on_exit_teardown(void) {
        if (current && getpid() == owner)
                (void) itest_teardown(current);
}

static void on_fatal_signal(int sig) {
        /* ctest's timeout or ^C: kill the children, leave the rest to the next run. */
        if (current) {
                if (current->dsad_pid > 0)
                        kill(current->dsad_pid, SIGKILL);
                if (current->bus_pid > 0)
                        kill(current->bus_pid, SIGKILL);
        }
        signal(sig, SIG_DFL);
        raise(sig);
}

int itest_write_any_user_bus_config(const char *path, const char *listen) {
        FILE *f = fopen(path, "we");

        if (!f)
                return -errno;
        fprintf(f, "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
                   " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                   "<busconfig>\n"
                   "  <type>session</type>\n"
                   "  <listen>%s</listen>\n"
                   "  <auth>EXTERNAL</auth>\n"
                   "  <policy context=\"default\">\n"
                   "    <allow user=\"*\"/>\n"
                   "    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
                   "    <allow eavesdrop=\"true\"/>\n"
                   "    <allow own=\"*\"/>\n"
                   "  </policy>\n"
                   "</busconfig>\n",
                listen);
        return fclose(f) == 0 ? 0 : -errno;
}

/* The any-user bus in t's folder, which every uid may enter. */
static void write_any_user_config(struct itest *t, char *ret_path, size_t size) {
        char listen[300];

        snprintf(ret_path, size, "%s/bus.conf", t->dir);
        snprintf(listen, sizeof(listen), "unix:dir=%s", t->dir);
        if (itest_write_any_user_bus_config(ret_path, listen) < 0)
                itest_fail(t, __FILE__, __LINE__, "bus.conf", "%s: %m", ret_path);
        if (chmod(t->dir, 0755) < 0)
                itest_fail(t, __FILE__, __LINE__, "chmod", "%s: %m", t->dir);
}

static void start_bus(struct itest *t, bool any_user) {
        char conf[400] = "";
        int pfd[2];
        char buf[512];
        size_t n = 0;
        pid_t pid;

        if (any_user)
                write_any_user_config(t, conf, sizeof(conf));
        if (pipe2(pfd, O_CLOEXEC) < 0)
                itest_fail(t, __FILE__, __LINE__, "pipe", "%m");
        pid = fork();
        if (pid < 0)
                itest_fail(t, __FILE__, __LINE__, "fork", "%m");
        if (pid == 0) {
                char fdarg[32], addr[300];
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(pfd[0]);
                int fd = fcntl(pfd[1], F_DUPFD, 3); /* without O_CLOEXEC */
                snprintf(fdarg, sizeof(fdarg), "--print-address=%d", fd);
                snprintf(addr, sizeof(addr), "--address=unix:dir=%s", t->dir);
                char log[400];
                snprintf(log, sizeof(log), "%s/bus.log", t->dir);
                int null = open("/dev/null", O_RDWR);
                int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                dup2(null, 0);
                if (lfd >= 0)
                        dup2(lfd, 2);
                if (conf[0]) {
                        char conf_arg[450];
                        snprintf(conf_arg, sizeof(conf_arg), "--config-file=%s", conf);
                        execlp("dbus-daemon", "dbus-daemon", conf_arg, "--nofork", "--nopidfile", fdarg,
                               (char *) NULL);
                } else
                        execlp("dbus-daemon", "dbus-daemon", "--session", "--nofork", "--nopidfile", addr, fdarg,
                               (char *) NULL);
                _exit(127);
        }
        close(pfd[1]);
        t->bus_pid = pid;
        /* The address ends with a newline. */
        while (n < sizeof(buf) - 1) {
                ssize_t k = read(pfd[0], buf + n, sizeof(buf) - 1 - n);
                if (k <= 0)
                        break;
                n += (size_t) k;
                if (memchr(buf, '\n', n))
                        break;
        }
        close(pfd[0]);
        buf[n] = 0;
        char *nl = strchr(buf, '\n');
        if (!nl)
                itest_fail(t, __FILE__, __LINE__, "dbus-daemon", "printed no address (is dbus-daemon installed?)");
        *nl = 0;
        snprintf(t->address, sizeof(t->address), "%s", buf);
        setenv("DSA_BUS_ADDRESS", t->address, 1);
}

static void init(struct itest *t, const char *const *dsad_args, bool any_user) {
        char path[600];
        const char *tmp = getenv("TMPDIR");

        memset(t, 0, sizeof(*t));
        if (!getenv("DSA_TEST_DSAD")) {
                fprintf(stderr, "SKIP: DSA_TEST_DSAD not set (run through ctest)\n");
                exit(ITEST_SKIP);
        }
        if (access(itest_model_path(), R_OK) < 0) {
                fprintf(stderr, "itest: no bundled model at %s\n", itest_model_path());
                exit(1);
        }
        snprintf(t->dir, sizeof(t->dir), "%s/dsa-itest-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(t->dir)) {
                fprintf(stderr, "itest: mkdtemp: %m\n");
                exit(1);
        }
        snprintf(t->store, sizeof(t->store), "%s/store", t->dir);
        snprintf(t->log, sizeof(t->log), "%s/dsad.log", t->dir);
        mkdir(t->store, 0755);
        snprintf(path, sizeof(path), "%s/sst2.gguf", t->store);
        if (symlink(itest_model_path(), path) < 0) {
                fprintf(stderr, "itest: symlink: %m\n");
                exit(1);
        }
        for (int i = 0; dsad_args && dsad_args[i] && i < 8; i++)
                snprintf(t->dsad_args[t->n_args++], sizeof(t->dsad_args[0]), "%s", dsad_args[i]);

        current = t;
        owner = getpid();
        atexit(on_exit_teardown);
        signal(SIGTERM, on_fatal_signal);
        signal(SIGINT, on_fatal_signal);
        signal(SIGPIPE, SIG_IGN);
        start_bus(t, any_user);
}

void itest_init(struct itest *t, const char *const *dsad_args) {
        init(t, dsad_args, false);
}

void itest_init_any_user(struct itest *t, const char *const *dsad_args) {
        init(t, dsad_args, true);
}

int itest_bus_open(const char *address, sd_bus **ret) {
        sd_bus *bus = NULL;
        int r;

        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, address);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, 1);
        if (r >= 0)
                r = sd_bus_negotiate_fds(bus, 1);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r < 0) {
                sd_bus_unref(bus);
                return r;
        }
        *ret = bus;
        return 0;
}

static bool name_has_owner(const char *address) {
        sd_bus *bus = NULL;
        sd_bus_message *reply = NULL;
        int has = 0, r;

        r = itest_bus_open(address, &bus);
        if (r >= 0)
                r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                       "NameHasOwner", NULL, &reply, "s", "org.dsa.Daemon1");
        if (r >= 0)
                r = sd_bus_message_read(reply, "b", &has);
        sd_bus_message_unref(reply);
        sd_bus_flush_close_unref(bus);
        return r >= 0 && has;
}

void itest_dsad_start(struct itest *t, const char *extra_env) {
        const char *dsad = getenv("DSA_TEST_DSAD");
        char *argv[32];
        int argc = 0;
        pid_t pid;

        argv[argc++] = (char *) dsad;
        argv[argc++] = "--bus";
        argv[argc++] = t->address;
        argv[argc++] = "--store";
        argv[argc++] = t->store;
        argv[argc++] = "--foreground";
        argv[argc++] = "--config";
        argv[argc++] = "/dev/null";
        for (int i = 0; i < t->n_args; i++)
                argv[argc++] = t->dsad_args[i];
        argv[argc] = NULL;

        pid = fork();
        if (pid < 0)
                itest_fail(t, __FILE__, __LINE__, "fork", "%m");
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                int fd = open(t->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                int null = open("/dev/null", O_RDWR);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                dup2(null, 0);
                if (extra_env)
                        putenv((char *) extra_env);
                execv(dsad, argv);
                _exit(127);
        }
        t->dsad_pid = pid;
        for (uint64_t end = itest_now_ms() + 15000; itest_now_ms() < end;) {
                int status;
                if (waitpid(pid, &status, WNOHANG) == pid) {
                        t->dsad_pid = 0;
                        itest_fail(t, __FILE__, __LINE__, "dsad start", "dsad exited (status 0x%x) before owning its name",
                                   status);
                }
                if (name_has_owner(t->address))
                        return;
                sleep_ms(20);
        }
        itest_fail(t, __FILE__, __LINE__, "dsad start", "dsad did not own org.dsa.Daemon1 within 15 s");
}

int itest_dsad_stop(struct itest *t, int timeout_ms) {
        int status;

        if (t->dsad_pid <= 0)
                return 0;
        kill(t->dsad_pid, SIGTERM);
        status = wait_pid(t->dsad_pid, timeout_ms);
        if (status == -1) {
                kill(t->dsad_pid, SIGKILL);
                (void) wait_pid(t->dsad_pid, 5000);
        }
        t->dsad_pid = 0;
        return status;
}

void itest_dsad_kill(struct itest *t) {
        if (t->dsad_pid <= 0)
                return;
        kill(t->dsad_pid, SIGKILL);
        (void) wait_pid(t->dsad_pid, 5000);
        t->dsad_pid = 0;
}

bool itest_teardown(struct itest *t) {
        bool ok = true;

        if (!t || !t->dir[0])
                return true;
        if (t->dsad_pid > 0) {
                int status = itest_dsad_stop(t, 20000);
                if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                        fprintf(stderr, "FAIL: dsad did not exit 0 on SIGTERM (wait status 0x%x)\n", status);
                        itest_dump_log(t);
                        ok = false;
                }
        }
        if (t->bus_pid > 0) {
                kill(t->bus_pid, SIGTERM);
                if (wait_pid(t->bus_pid, 2000) == -1) {
                        kill(t->bus_pid, SIGKILL);
                        (void) wait_pid(t->bus_pid, 2000);
                }
                t->bus_pid = 0;
        }
        if (getenv("DSA_ITEST_KEEP"))
                fprintf(stderr, "itest: kept %s\n", t->dir);
        else
                rm_rf(t->dir);
        t->dir[0] = 0;
        if (current == t)
                current = NULL;
        if (!ok)
                _exit(1); /* also from atexit: the test must not pass with a dirty dsad */
        return ok;
}

void itest_child_become(uid_t uid) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (setgroups(0, NULL) < 0 || setgid((gid_t) uid) < 0 || setuid(uid) < 0) {
                dprintf(2, "itest: cannot become uid %u: %m\n", (unsigned) uid);
                _exit(1);
        }
}

int itest_count_fds(pid_t pid) {
        char path[64];
        DIR *d;
        struct dirent *e;
        int n = 0;

        snprintf(path, sizeof(path), "/proc/%d/fd", (int) pid);
        d = opendir(path);
        if (!d)
                return -1;
        while ((e = readdir(d)))
                if (e->d_name[0] != '.')
                        n++;
        closedir(d);
        return n;
}
