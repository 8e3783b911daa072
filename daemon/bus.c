/* sd-bus connections driven by the libuv loop instead of sd_event: a uv_poll on the bus fd with
 * the events sd_bus_get_events() asks for, and a uv_timer for sd_bus_get_timeout() (method call
 * timeouts, authentication). Both are re-evaluated after every processing round, since
 * processing or sending changes what the bus waits for. dsad's own connection is one such
 * connection; its loss stops the daemon. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "bus.h"
#include "daemon.h"

#define BUS_NAME "org.dsa.Daemon1"

struct dsad_bus_io {
        sd_bus *bus; /* referenced */
        uv_poll_t poll;
        uv_timer_t timer;
        dsad_bus_io_lost_t on_lost;
        void *userdata;
        unsigned n_open; /* handles not yet closed */
        int events;      /* uv events the poll watches now */
        bool closing;    /* dsad_bus_io_free() was called */
};

/* ---- helpers */

static uint64_t now_monotonic_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static void on_poll(uv_poll_t *p, int status, int events);
static void on_timer(uv_timer_t *t);

static void io_stop(struct dsad_bus_io *io) {
        uv_poll_stop(&io->poll);
        uv_timer_stop(&io->timer);
        io->events = 0;
}

/* Makes the poll and the timer match what the bus waits for now. */
static void io_rearm(struct dsad_bus_io *io) {
        uint64_t until;
        int e, events = 0;

        if (io->closing)
                return;
        e = sd_bus_get_events(io->bus);
        if (e < 0) {
                /* Closed: nothing more to wait for. */
                io_stop(io);
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
        if (sd_bus_get_timeout(io->bus, &until) < 0 || until == UINT64_MAX)
                uv_timer_stop(&io->timer);
        else {
                uint64_t now = now_monotonic_usec();
                uint64_t ms = until > now ? (until - now + 999) / 1000 : 0;
                uv_timer_start(&io->timer, on_timer, ms, 0);
        }
}

static void io_dispatch(struct dsad_bus_io *io) {
        /* A callback may free the io: its memory stays until the close callbacks run, after
         * this returns, but its bus reference goes at once; ours keeps the bus alive. */
        _cleanup_(sd_bus_unrefp) sd_bus *bus = sd_bus_ref(io->bus);
        int r = 0;

        /* sd_bus_process() handles one message per call; it returns 0 once nothing is left. */
        while (!io->closing) {
                r = sd_bus_process(bus, NULL);
                if (r <= 0)
                        break;
        }
        if (io->closing)
                return;

        if (r < 0 || sd_bus_is_open(bus) <= 0) {
                io_stop(io);
                if (io->on_lost)
                        io->on_lost(io->userdata, r < 0 ? r : -ECONNRESET);
                return;
        }
        io_rearm(io);
}

static void on_poll(uv_poll_t *p, int status, int events) {
        io_dispatch(p->data);
}

static void on_timer(uv_timer_t *t) {
        io_dispatch(t->data);
}

static void on_closed(uv_handle_t *h) {
        struct dsad_bus_io *io = h->data;
        if (--io->n_open == 0)
                free(io);
}

/* ---- API: any connection */

int dsad_bus_open(const char *address, sd_bus **ret) {
        sd_bus *bus = NULL;
        int r;

        if (!ret)
                return -EINVAL;
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

int dsad_bus_io_new(uv_loop_t *loop, sd_bus *bus, dsad_bus_io_lost_t on_lost, void *userdata,
                    struct dsad_bus_io **ret) {
        struct dsad_bus_io *io;
        int fd, r;

        if (!loop || !bus || !ret)
                return -EINVAL;
        fd = sd_bus_get_fd(bus);
        if (fd < 0)
                return fd;

        io = calloc(1, sizeof(*io));
        if (!io)
                return -ENOMEM;
        r = uv_poll_init(loop, &io->poll, fd);
        if (r < 0) {
                free(io);
                return -EIO;
        }
        uv_timer_init(loop, &io->timer);
        io->poll.data = io->timer.data = io;
        io->n_open = 2;
        io->bus = sd_bus_ref(bus);
        io->on_lost = on_lost;
        io->userdata = userdata;

        io_rearm(io);
        *ret = io;
        return 0;
}

void dsad_bus_io_flush(struct dsad_bus_io *io) {
        if (io)
                io_rearm(io);
}

struct dsad_bus_io *dsad_bus_io_free(struct dsad_bus_io *io) {
        if (!io || io->closing)
                return NULL;
        io->closing = true;
        /* Stop watching the fd before sd-bus may close it with the last reference. */
        io_stop(io);
        uv_close((uv_handle_t *) &io->poll, on_closed);
        uv_close((uv_handle_t *) &io->timer, on_closed);
        io->bus = sd_bus_unref(io->bus);
        return NULL;
}

/* ---- API: dsad's own connection */

static void on_main_bus_lost(void *userdata, int error) {
        struct dsad *d = userdata;

        dsad_log(LOG_ERR, "Lost the connection to the bus: %s", strerror(-error));
        dsad_quit(d, error);
}

int dsad_bus_attach(struct dsad *d, const char *address) {
        int r;

        r = dsad_bus_open(address, &d->bus);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to connect to the bus (%s): %m",
                                      address ? address : "system");
        (void) sd_bus_set_description(d->bus, "dsad");

        r = dsad_api_register(d);
        if (r < 0)
                return r;

        r = dsad_bus_io_new(d->loop, d->bus, on_main_bus_lost, d, &d->bus_io);
        if (r == -ENOMEM)
                return dsad_log_errno(LOG_ERR, r, "Out of memory.");
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to watch the bus connection's fd: %m");

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

        dsad_bus_io_flush(d->bus_io);
        return 0;
}

void dsad_bus_flush(struct dsad *d) {
        if (d->bus_io && d->bus)
                dsad_bus_io_flush(d->bus_io);
}

void dsad_bus_detach(struct dsad *d) {
        d->bus_io = dsad_bus_io_free(d->bus_io);
        dsad_api_unregister(d);
        /* Blocking is fine here: this is the way out, and replies to the calls drained at stop
         * must reach their callers. */
        d->bus = sd_bus_flush_close_unref(d->bus);
}
