/* What the desktop's power services say (powerbus.c): UPower's OnBattery and its display
 * device's charge, and power-profiles-daemon's ActiveProfile, watched on a bus connection of
 * their own (the system bus in production, a private bus in tests) and handed to the adaptive
 * policy as they change. Every value is outside input: wrong types are ignored, numbers
 * clamped, strings capped. Loop thread only. */
#pragma once

#include "basic/macro.h"

#include <stdbool.h>
#include <uv.h>

struct dsad_powerbus;

struct dsad_power_signals {
        bool upower;              /* org.freedesktop.UPower answered on the bus */
        bool on_battery;          /* UPower OnBattery; false when unknown */
        double battery_percent;   /* display device Percentage (0..100); NAN when unknown/no battery */
        char profile[32];         /* ActiveProfile: "power-saver" | "balanced" | "performance" | "" unknown */
        char profile_service[64]; /* which service gave it: "net.hadess.PowerProfiles" or
                                   * "org.freedesktop.UPower.PowerProfiles", "" none */
};

/* s is valid during the call only. */
typedef void (*dsad_powerbus_cb_t)(const struct dsad_power_signals *s, void *userdata);

/* Connects to address (dsad_bus_open() rules: NULL or "system", "session"/"user", or a D-Bus
 * address), reads the current values and watches them: UPower (org.freedesktop.UPower,
 * OnBattery; the display device's Percentage, IsPresent and Type) and power-profiles-daemon
 * under both its names (org.freedesktop.UPower.PowerProfiles, preferred when both answer, and
 * the legacy net.hadess.PowerProfiles). Everything is asynchronous: the loop never blocks on
 * these services.
 *
 * Calls cb on the loop thread after the first complete read (every service answered, or is
 * known to be absent) and then whenever a value changes, never twice in a row with the same
 * values. A service that is absent is not an error: its fields stay unknown, and the watcher
 * picks it up when it appears (NameOwnerChanged) and forgets its values when it leaves. A
 * service that appears is reported once all its values are read, not piece by piece. Services
 * are never started on demand (D-Bus activation). When the connection is lost later, every
 * value becomes unknown (one callback, one warning logged) and stays so.
 *
 * cb must not call dsad_powerbus_free() on p. Returns 0 and the watcher in *ret; -EINVAL for
 * missing arguments; -ENOMEM; or the error of connecting to the bus (not logged: the caller
 * decides whether running without power signals is fine). A call that fails never calls cb. */
int dsad_powerbus_new(uv_loop_t *loop, const char *address, dsad_powerbus_cb_t cb, void *userdata,
                      struct dsad_powerbus **ret);

/* Stops watching and closes the connection. Its uv handles close asynchronously: the loop must
 * run once more before uv_loop_close(). Accepts NULL; returns NULL. */
struct dsad_powerbus *dsad_powerbus_free(struct dsad_powerbus *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsad_powerbus *, dsad_powerbus_free);

/* The values as known now: after the first callback, what the last callback said; before it,
 * what has been read so far (a service counts once all its values are read). */
void dsad_powerbus_get(const struct dsad_powerbus *p, struct dsad_power_signals *ret);
