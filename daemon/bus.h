/* Driving sd-bus connections from the libuv loop (bus.c). dsad's own connection (d->bus,
 * dsad_bus_attach() in daemon.h) and any other one it opens, such as the system bus connection
 * that watches UPower and power-profiles-daemon (powerbus.c), go through the same code: a uv_poll
 * on the connection's fd and a uv_timer for its timeouts, re-armed after every round of
 * processing. Loop thread only. */
#pragma once

#include "basic/macro.h"

#include <systemd/sd-bus.h>
#include <uv.h>

struct dsad_bus_io;

/* Called once when the connection fails or the peer closes it, after the poll and the timer
 * have stopped; error is a negative errno (-ECONNRESET when the bus hung up). The callback may
 * free the io (dsad_bus_io_free()); nothing of the io is touched after it returns. */
typedef void (*dsad_bus_io_lost_t)(void *userdata, int error);

/* Opens a bus client connection: address NULL or "system" for the system bus, "session" or
 * "user" for the user's bus, anything else a D-Bus address ("unix:path=..."). The connection
 * is started (connect() done, authentication and Hello pending) but not attached to any loop.
 * Returns 0 and the connection in *ret, or a negative errno (not logged). */
int dsad_bus_open(const char *address, sd_bus **ret);

/* Starts driving bus from loop: from now on the loop processes whatever arrives on it and
 * sends what is queued. Takes a reference on bus; the caller keeps its own. on_lost (may be
 * NULL) is called as described above. Returns 0 and the io in *ret, -EINVAL for missing
 * arguments, -ENOMEM, or the error of sd_bus_get_fd()/uv_poll_init() (-EIO for the latter).
 * Nothing is logged. */
int dsad_bus_io_new(uv_loop_t *loop, sd_bus *bus, dsad_bus_io_lost_t on_lost, void *userdata,
                    struct dsad_bus_io **ret);

/* Call after sending on the connection outside one of its own callbacks (replies from a
 * uv_async, signals from a timer, calls made at start): makes the poll and the timer match what
 * the connection waits for now, so queued messages go out. NULL is a no-op. */
void dsad_bus_io_flush(struct dsad_bus_io *io);

/* Stops driving the connection and drops the io's reference on it. The uv handles close
 * asynchronously (the memory goes in their close callbacks, on a later loop iteration), so the
 * loop must run once more before uv_loop_close(). Call it before the connection itself is
 * closed (the fd must still be open when the poll stops). Safe from inside the connection's
 * own callbacks and from on_lost. Accepts NULL; returns NULL. */
struct dsad_bus_io *dsad_bus_io_free(struct dsad_bus_io *io);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsad_bus_io *, dsad_bus_io_free);
