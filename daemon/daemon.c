/* The daemon's context from start to exit, for main.c: logging, the configuration with the
 * command line on top, the order in which the modules start and stop, the signals (SIGTERM and
 * SIGINT stop, SIGHUP rereads the configuration) and the service manager's notifications
 * (READY, STATUS, STOPPING, WATCHDOG). */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#include <time.h>

#include "basic/time-util.h"
#include "daemon.h"

struct dsad_loop {
        struct dsad_options options; /* the command line, reapplied on SIGHUP */
        uv_signal_t sigterm, sigint, sighup;
        uv_timer_t watchdog;
        unsigned workers_asked; /* before 0 became the core count */
        int exit_status;
};

enum log_target { LOG_TARGET_STDERR, LOG_TARGET_STDERR_PREFIXED, LOG_TARGET_JOURNAL };
static enum log_target log_target = LOG_TARGET_STDERR;

/* ---- helpers */

/* Is stderr the journal's stream ($JOURNAL_STREAM names its device:inode)? Then "<N>"
 * prefixes keep the priority of each line. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

static void log_v(int priority, const char *fmt, va_list ap) {
        if (log_target == LOG_TARGET_JOURNAL) {
                sd_journal_printv(priority, fmt, ap);
                return;
        }
        if (log_target == LOG_TARGET_STDERR_PREFIXED)
                fprintf(stderr, "<%d>", priority);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
}

/* Defaults, then the file, then the command line. -ENOENT for a missing file is fine unless
 * the file was named on the command line. */
static int config_read(const struct dsad_options *o, struct dsad_config *c) {
        int r;

        r = dsad_config_defaults(c);
        if (r < 0)
                return r;
        if (o->config_path) {
                r = dsad_config_load(o->config_path, c);
                if (r == -ENOENT && !o->config_explicit)
                        r = 0;
                else if (r < 0 && r != -EINVAL) /* -EINVAL: already logged with file:line */
                        return dsad_log_errno(LOG_ERR, r, "Failed to read %s: %m", o->config_path);
                if (r < 0)
                        return r;
        }
        if (o->store) {
                char *s = strdup(o->store);
                if (!s)
                        return -ENOMEM;
                free(c->store);
                c->store = s;
        }
        if (o->workers >= 0)
                c->workers = (unsigned) o->workers;
        if (o->idle_unload_seconds >= 0)
                c->idle_unload_seconds = (unsigned) o->idle_unload_seconds;
        return 0;
}

static void on_stop_signal(uv_signal_t *s, int signum) {
        struct dsad *d = s->data;
        dsad_log(LOG_INFO, "Received %s, stopping.", strsignal(signum));
        dsad_quit(d, 0);
}

static void on_sighup(uv_signal_t *s, int signum) {
        struct dsad *d = s->data;
        struct dsad_config c = {};

        (void) sd_notify(0, "RELOADING=1");
        if (config_read(&d->signals->options, &c) < 0) {
                dsad_log(LOG_WARNING, "Keeping the running configuration.");
                dsad_config_clear(&c);
        } else {
                if (c.workers != d->signals->workers_asked)
                        dsad_log(LOG_WARNING, "workers= changes apply at restart, ignoring.");
                if (c.queue_max != d->config.queue_max)
                        dsad_log(LOG_WARNING, "queue_max= changes apply at restart, ignoring.");
                if (c.batch_max != d->config.batch_max)
                        dsad_log(LOG_WARNING, "batch_max= changes apply at restart, ignoring.");
                c.workers = d->config.workers;
                c.queue_max = d->config.queue_max;
                c.batch_max = d->config.batch_max;
                dsad_config_clear(&d->config);
                d->config = c;
                (void) dsad_registry_scan(d);
                dsad_registry_config_changed(d);
                dsad_adaptive_settings_changed(d);
                dsad_log(LOG_INFO, "Reloaded the configuration: store %s, idle unload %us.", d->config.store,
                         d->config.idle_unload_seconds);
        }
        (void) sd_notify(0, "READY=1");
        dsad_api_notify_status(d);
}

static void on_watchdog(uv_timer_t *t) {
        (void) sd_notify(0, "WATCHDOG=1");
}

static void on_loop_closed(uv_handle_t *h) {
        /* The handles live inside struct dsad_loop, freed once the loop has closed them all. */
}

/* ---- API */

void dsad_log_setup(bool foreground) {
        bool under_systemd = getenv("JOURNAL_STREAM") || getenv("INVOCATION_ID");

        if (!foreground && under_systemd)
                log_target = LOG_TARGET_JOURNAL;
        else if (stderr_is_journal())
                log_target = LOG_TARGET_STDERR_PREFIXED;
        else
                log_target = LOG_TARGET_STDERR;
}

void dsad_log(int priority, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        log_v(priority, fmt, ap);
        va_end(ap);
}

int dsad_log_errno(int priority, int r, const char *fmt, ...) {
        va_list ap;
        int saved = errno;

        errno = r < 0 ? -r : r; /* for %m */
        va_start(ap, fmt);
        log_v(priority, fmt, ap);
        va_end(ap);
        errno = saved;
        return r < 0 ? r : -r;
}

void dsad_quit(struct dsad *d, int r) {
        if (d->signals && d->signals->exit_status == 0)
                d->signals->exit_status = r;
        d->stopping = true;
        uv_stop(d->loop);
}

int dsad_new(const struct dsad_options *o, struct dsad **ret) {
        struct dsad *d;
        struct dsad_loop *l;
        uint64_t wd_usec;
        int r;

        /* Request and reply buffers of up to a slot (1 MiB) come and go with every request.
         * glibc's adaptive mmap threshold soon moves them onto the heap, where they stay
         * resident after free (+40 MiB with 64 sessions on BERT-base); fixed thresholds keep
         * them mmapped, so between requests dsad holds little more than its models. */
        (void) mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        (void) mallopt(M_TRIM_THRESHOLD, 512 * 1024);

        d = calloc(1, sizeof(*d));
        if (!d)
                return dsad_log_errno(LOG_ERR, -ENOMEM, "Out of memory.");
        l = calloc(1, sizeof(*l));
        d->loop = malloc(sizeof(uv_loop_t));
        if (!l || !d->loop || uv_loop_init(d->loop) < 0) {
                free(l);
                free(d->loop);
                free(d);
                return dsad_log_errno(LOG_ERR, -ENOMEM, "Failed to set up the event loop.");
        }
        l->options = *o;
        d->signals = l;
        d->config_path = o->config_path ? strdup(o->config_path) : NULL;
        d->start_usec = now_usec();
        *ret = d; /* from here on dsad_free() undoes whatever got done */

        uv_signal_init(d->loop, &l->sigterm);
        uv_signal_init(d->loop, &l->sigint);
        uv_signal_init(d->loop, &l->sighup);
        uv_timer_init(d->loop, &l->watchdog);
        l->sigterm.data = l->sigint.data = l->sighup.data = l->watchdog.data = d;

        r = config_read(o, &d->config);
        if (r < 0)
                return r;
        l->workers_asked = d->config.workers;
        if (d->config.workers == 0) {
                long n = sysconf(_SC_NPROCESSORS_ONLN);
                d->config.workers = n > 0 ? (unsigned) n : 1;
        }

        uv_signal_start(&l->sigterm, on_stop_signal, SIGTERM);
        uv_signal_start(&l->sigint, on_stop_signal, SIGINT);
        uv_signal_start(&l->sighup, on_sighup, SIGHUP);

        r = dsad_registry_scan(d);
        if (r < 0)
                dsad_log(LOG_WARNING, "Failed to read the model store %s: %s, ignoring.", d->config.store,
                         strerror(-r));
        dsad_registry_config_changed(d);

        r = dsad_adaptive_start(d);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to start the adaptive policy: %m");
        r = dsad_scheduler_new(d, d->config.workers, d->config.queue_max, d->config.batch_max, &d->scheduler);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to start %u workers: %m", d->config.workers);
        r = dsad_uring_new(d, &d->uring);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to set up io_uring: %m");

        r = dsad_bus_attach(d, o->bus);
        if (r < 0)
                return r;

        if (sd_watchdog_enabled(false, &wd_usec) > 0 && wd_usec >= 2000)
                uv_timer_start(&l->watchdog, on_watchdog, wd_usec / 2000, wd_usec / 2000);

        dsad_log(LOG_INFO, "dsad %s serving %s with %u workers, %u models in the store.", DSA_VERSION,
                 d->config.store, d->config.workers, dsad_registry_n_models(d));
        (void) sd_notify(0, "READY=1");
        dsad_api_notify_status(d);
        return 0;
}

int dsad_run(struct dsad *d) {
        if (!d)
                return -EINVAL;
        uv_run(d->loop, UV_RUN_DEFAULT);
        (void) sd_notify(0, "STOPPING=1\nSTATUS=Stopping");
        return d->signals ? d->signals->exit_status : 0;
}

struct dsad *dsad_free(struct dsad *d) {
        struct dsad_loop *l;

        if (!d)
                return NULL;
        l = d->signals;
        d->stopping = true;

        /* Stop taking work, finish what is queued, answer its callers, then let go. */
        d->scheduler = dsad_scheduler_free(d->scheduler);
        while (d->sessions)
                if (dsad_session_close(d, d->sessions) < 0)
                        break;
        d->uring = dsad_uring_free(d->uring);
        dsad_adaptive_stop(d);
        dsad_bus_detach(d); /* replies to calls finished by the drain, then closes */
        dsad_registry_free_all(d);
        d->policy = dsad_policy_free(d->policy);

        if (l) {
                uv_close((uv_handle_t *) &l->sigterm, on_loop_closed);
                uv_close((uv_handle_t *) &l->sigint, on_loop_closed);
                uv_close((uv_handle_t *) &l->sighup, on_loop_closed);
                uv_close((uv_handle_t *) &l->watchdog, on_loop_closed);
        }
        if (d->loop) {
                /* Close callbacks run in the next iteration; never wait on a handle left open. */
                for (int i = 0; i < 16 && uv_run(d->loop, UV_RUN_NOWAIT) != 0; i++)
                        ;
                if (uv_loop_close(d->loop) < 0)
                        dsad_log(LOG_WARNING, "Event loop still has handles at exit, ignoring.");
                free(d->loop);
        }
        free(l);
        dsad_config_clear(&d->config);
        free(d->config_path);
        free(d);
        return NULL;
}
