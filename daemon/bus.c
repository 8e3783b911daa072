/* The sd-bus connection, driven by the libuv loop instead of sd_event: a uv_poll on the bus fd
 * with the events sd_bus_get_events() asks for, and a uv_timer for sd_bus_get_timeout() (method
 * call timeouts, authentication). Both are re-evaluated after every processing round, since
 * processing or sending changes what the bus waits for. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "daemon.h"

#define BUS_NAME "org.dsa.Daemon1"

struct dsad_bus_io {
        struct dsad *d;
        uv_poll_t poll;
        uv_timer_t timer;
        unsigned n_open; /* handles not yet closed */
        int events;      /* uv events the poll watches now */
};

/* ---- helpers */

static uint64_t now_monotonic_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static void on_poll(uv_poll_t *p, int status, int events);
static void on_timer(uv_timer_t *t);

/* Makes the poll and the timer match what the bus waits for now. */
static void bus_rearm(struct dsad_bus_io *io) {
        sd_bus *bus = io->d->bus;
        uint64_t until;
        int e, events = 0;

        e = sd_bus_get_events(bus);
        if (e < 0) {
                /* Closed: nothing more to wait for. */
                uv_poll_stop(&io->poll);
                uv_timer_stop(&io->timer);
                io->events = 0;
                return;
        }
        if (e & POLLIN)
                events |= UV_READABLE;
        if (e & POLLOUT)
                events |= UV_WRITABLE;
        if (events != io->events) {
                uv_poll_start(&io->poll, events, on_poll);
                io->events = events;
        }

        /* sd_bus_get_timeout() is an absolute CLOCK_MONOTONIC time in µs, UINT64_MAX for none;
         * libuv wants a delay in ms. Round up so the timer never fires before the deadline. */
        if (sd_bus_get_timeout(bus, &until) < 0 || until == UINT64_MAX)
                uv_timer_stop(&io->timer);
        else {
                uint64_t now = now_monotonic_usec();
                uint64_t ms = until > now ? (until - now + 999) / 1000 : 0;
                uv_timer_start(&io->timer, on_timer, ms, 0);
        }
}

static void bus_dispatch(struct dsad_bus_io *io) {
        struct dsad *d = io->d;
        int r;

        /* sd_bus_process() handles one message per call; it returns 0 once nothing is left. */
        do
                r = sd_bus_process(d->bus, NULL);
        while (r > 0);

        if (r < 0 || sd_bus_is_open(d->bus) <= 0) {
                dsad_log(LOG_ERR, "Lost the connection to the bus: %s",
                         strerror(r < 0 ? -r : ECONNRESET));
                uv_poll_stop(&io->poll);
                uv_timer_stop(&io->timer);
                io->events = 0;
                dsad_quit(d, r < 0 ? r : -ECONNRESET);
                return;
        }
        bus_rearm(io);
}

static void on_poll(uv_poll_t *p, int status, int events) {
        bus_dispatch(p->data);
}

static void on_timer(uv_timer_t *t) {
        bus_dispatch(t->data);
}

static void on_closed(uv_handle_t *h) {
        struct dsad_bus_io *io = h->data;
        if (--io->n_open == 0)
                free(io);
}

static int bus_open(const char *address, sd_bus **ret) {
        sd_bus *bus = NULL;
        int r;

        if (!address || strcmp(address, "system") == 0)
                r = sd_bus_open_system(&bus);
        else if (strcmp(address, "session") == 0 || strcmp(address, "user") == 0)
                r = sd_bus_open_user(&bus);
        else {
                r = sd_bus_new(&bus);
                if (r >= 0)
                        r = sd_bus_set_address(bus, address);
                if (r >= 0)
                        r = sd_bus_set_bus_client(bus, true);
                if (r >= 0)
                        r = sd_bus_start(bus);
                if (r < 0)
                        bus = sd_bus_unref(bus);
        }
        if (r < 0)
                return r;
        *ret = bus;
        return 0;
}

/* ---- API */

int dsad_bus_attach(struct dsad *d, const char *address) {
        struct dsad_bus_io *io;
        int fd, r;

        r = bus_open(address, &d->bus);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to connect to the bus (%s): %m",
                                      address ? address : "system");
        (void) sd_bus_set_description(d->bus, "dsad");

        r = dsad_api_register(d);
        if (r < 0)
                return r;

        fd = sd_bus_get_fd(d->bus);
        if (fd < 0)
                return dsad_log_errno(LOG_ERR, fd, "Failed to get the bus connection's fd: %m");

        io = calloc(1, sizeof(*io));
        if (!io)
                return dsad_log_errno(LOG_ERR, -ENOMEM, "Out of memory.");
        io->d = d;
        r = uv_poll_init(d->loop, &io->poll, fd);
        if (r < 0) {
                free(io);
                return dsad_log_errno(LOG_ERR, -EIO, "Failed to watch the bus fd: %s", uv_strerror(r));
        }
        uv_timer_init(d->loop, &io->timer);
        io->poll.data = io->timer.data = io;
        io->n_open = 2;
        d->bus_io = io;

        /* Objects first, then the name: a client that sees the name can call at once. */
        r = sd_bus_request_name(d->bus, BUS_NAME, 0);
        if (r == -EEXIST)
                return dsad_log_errno(LOG_ERR, r,
                                      "Failed to acquire bus name %s: it is taken (is another dsad running?)",
                                      BUS_NAME);
        if (r == -EACCES || r == -EPERM)
                return dsad_log_errno(LOG_ERR, r,
                                      "Failed to acquire bus name %s: denied by the bus policy "
                                      "(is org.dsa.Daemon1.conf installed, and does dsad run as root or dsad?)",
                                      BUS_NAME);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to acquire bus name %s: %m", BUS_NAME);

        bus_rearm(io);
        return 0;
}

void dsad_bus_flush(struct dsad *d) {
        if (d->bus_io && d->bus)
                bus_rearm(d->bus_io);
}

void dsad_bus_detach(struct dsad *d) {
        struct dsad_bus_io *io = d->bus_io;

        if (io) {
                /* Stop watching the fd before sd-bus closes it. */
                uv_poll_stop(&io->poll);
                uv_close((uv_handle_t *) &io->poll, on_closed);
                uv_close((uv_handle_t *) &io->timer, on_closed);
                d->bus_io = NULL;
        }
        dsad_api_unregister(d);
        /* Blocking is fine here: this is the way out, and replies to the calls drained at stop
         * must reach their callers. */
        d->bus = sd_bus_flush_close_unref(d->bus);
}
