/* power-stub: stand-ins for UPower, power-profiles-daemon (under both its names) and polkit's
 * Authority on a private bus, for tests of dsad's power watcher and polkit checks. Each speaks
 * the real service's interface, name, object paths and property types (read-only, with
 * PropertiesChanged on change, as the real ones); the test steers them through
 * org.dsa.Test.PowerStub:
 *
 *   SetOnBattery(b)  UPower OnBattery (and the display device's State)
 *   SetPercentage(d) the display device's Percentage
 *   SetProfile(s)    ActiveProfile on both power-profiles-daemon names
 *   SetAuthorized(b) what CheckAuthorization answers
 *   SetInvalidate(b) from now on, announce changes as invalidated properties (no value) instead
 *                    of changed ones, as services may; watchers must then Get them
 *   LastCheck() -> (s action, s subject_name)  the last CheckAuthorization asked ("" before any)
 *   Quit()
 *
 * Usage: power-stub --address ADDR [--no-upower] [--no-ppd-legacy] [--no-ppd-new] [--no-polkit]
 * Every method is open to every user, as the real services' are (sd-bus would otherwise turn away
 * callers of another uid). Prints "ready" on stdout once every name is owned. Starts on battery power off, 80%,
 * "balanced", unauthorized. */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>

#define UPOWER_NAME "org.freedesktop.UPower"
#define UPOWER_PATH "/org/freedesktop/UPower"
#define UPOWER_INTERFACE "org.freedesktop.UPower"
#define DISPLAY_PATH "/org/freedesktop/UPower/devices/DisplayDevice"
#define DEVICE_INTERFACE "org.freedesktop.UPower.Device"
#define PPD_NAME "org.freedesktop.UPower.PowerProfiles"
#define PPD_PATH "/org/freedesktop/UPower/PowerProfiles"
#define PPD_LEGACY_NAME "net.hadess.PowerProfiles"
#define PPD_LEGACY_PATH "/net/hadess/PowerProfiles"
#define POLKIT_NAME "org.freedesktop.PolicyKit1"
#define POLKIT_PATH "/org/freedesktop/PolicyKit1/Authority"
#define POLKIT_INTERFACE "org.freedesktop.PolicyKit1.Authority"
#define STUB_NAME "org.dsa.Test.PowerStub"
#define STUB_PATH "/org/dsa/Test/PowerStub"

/* UpDeviceKind and UpDeviceState values. */
#define UP_DEVICE_KIND_BATTERY 2u
#define UP_DEVICE_STATE_CHARGING 1u
#define UP_DEVICE_STATE_DISCHARGING 2u

struct stub {
        sd_bus *bus;
        bool upower, ppd, ppd_legacy, polkit;
        bool on_battery;
        double percentage;
        char profile[64];
        bool authorized;
        bool invalidate;
        char last_action[256];
        char last_subject[256];
        bool quit;
};

/* PropertiesChanged for one property: with its value, as sd-bus sends it for properties flagged
 * EMITS_CHANGE, or only its name in the invalidated list. */
static void emit_changed(struct stub *s, const char *path, const char *interface, const char *property) {
        sd_bus_message *m = NULL;
        int r;

        if (!s->invalidate) {
                (void) sd_bus_emit_properties_changed(s->bus, path, interface, property, NULL);
                return;
        }
        r = sd_bus_message_new_signal(s->bus, &m, path, "org.freedesktop.DBus.Properties", "PropertiesChanged");
        if (r >= 0)
                r = sd_bus_message_append(m, "sa{sv}as", interface, 0, 1, property);
        if (r >= 0)
                r = sd_bus_send(s->bus, m, NULL);
        if (r < 0)
                fprintf(stderr, "power-stub: cannot emit PropertiesChanged: %s\n", strerror(-r));
        sd_bus_message_unref(m);
}

/* ---- UPower */

static int property_get_on_battery(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        return sd_bus_message_append(reply, "b", (int) s->on_battery);
}

static int property_get_false(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "b", 0);
}

static int property_get_true(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "b", 1);
}

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", "1.90.2 (power-stub)");
}

static int method_enumerate_devices(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return sd_bus_reply_method_return(m, "ao", 0);
}

static int method_get_display_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return sd_bus_reply_method_return(m, "o", DISPLAY_PATH);
}

static int method_get_critical_action(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return sd_bus_reply_method_return(m, "s", "PowerOff");
}

static const sd_bus_vtable upower_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("DaemonVersion", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("OnBattery", "b", property_get_on_battery, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LidIsClosed", "b", property_get_false, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LidIsPresent", "b", property_get_false, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("EnumerateDevices", SD_BUS_NO_ARGS, SD_BUS_RESULT("ao", devices),
                                method_enumerate_devices, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetDisplayDevice", SD_BUS_NO_ARGS, SD_BUS_RESULT("o", device),
                                method_get_display_device, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetCriticalAction", SD_BUS_NO_ARGS, SD_BUS_RESULT("s", action),
                                method_get_critical_action, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("DeviceAdded", SD_BUS_ARGS("o", device), 0),
        SD_BUS_SIGNAL_WITH_ARGS("DeviceRemoved", SD_BUS_ARGS("o", device), 0),
        SD_BUS_VTABLE_END,
};

static int property_get_type(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "u", UP_DEVICE_KIND_BATTERY);
}

static int property_get_state(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        return sd_bus_message_append(reply, "u",
                                     s->on_battery ? UP_DEVICE_STATE_DISCHARGING : UP_DEVICE_STATE_CHARGING);
}

static int property_get_percentage(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        return sd_bus_message_append(reply, "d", s->percentage);
}

static int property_get_empty(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", "");
}

static const sd_bus_vtable device_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("NativePath", "s", property_get_empty, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Type", "u", property_get_type, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("PowerSupply", "b", property_get_true, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("IsPresent", "b", property_get_true, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Percentage", "d", property_get_percentage, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("State", "u", property_get_state, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_VTABLE_END,
};

/* ---- power-profiles-daemon (the same interface under both names) */

static int property_get_profile(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        return sd_bus_message_append(reply, "s", s->profile);
}

static int property_get_profiles(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        static const char *const names[] = { "power-saver", "balanced", "performance" };
        int r;

        r = sd_bus_message_open_container(reply, 'a', "a{sv}");
        for (size_t i = 0; r >= 0 && i < 3; i++)
                r = sd_bus_message_append(reply, "a{sv}", 2, "Profile", "s", names[i], "Driver", "s", "placeholder");
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

static int property_get_actions(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "as", 0);
}

static const sd_bus_vtable ppd_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("ActiveProfile", "s", property_get_profile, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("PerformanceDegraded", "s", property_get_empty, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Profiles", "aa{sv}", property_get_profiles, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Actions", "as", property_get_actions, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_VTABLE_END,
};

/* ---- polkit */

static int method_check_authorization(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        const char *kind, *key, *action, *cancellation, *name = NULL;
        uint32_t flags;
        int r;

        r = sd_bus_message_enter_container(m, 'r', "sa{sv}");
        if (r >= 0)
                r = sd_bus_message_read(m, "s", &kind);
        if (r >= 0)
                r = sd_bus_message_enter_container(m, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *contents = NULL;

                r = sd_bus_message_read(m, "s", &key);
                if (r >= 0)
                        r = sd_bus_message_peek_type(m, NULL, &contents);
                if (r >= 0 && strcmp(key, "name") == 0 && contents && strcmp(contents, "s") == 0)
                        r = sd_bus_message_read(m, "v", "s", &name);
                else if (r >= 0)
                        r = sd_bus_message_skip(m, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r >= 0)
                r = sd_bus_message_read(m, "s", &action);
        if (r >= 0)
                r = sd_bus_message_skip(m, "a{ss}");
        if (r >= 0)
                r = sd_bus_message_read(m, "us", &flags, &cancellation);
        if (r < 0)
                return r;

        snprintf(s->last_action, sizeof(s->last_action), "%s", action);
        if (strcmp(kind, "system-bus-name") == 0 && name)
                snprintf(s->last_subject, sizeof(s->last_subject), "%s", name);
        else
                snprintf(s->last_subject, sizeof(s->last_subject), "<%s>", kind);
        fprintf(stderr, "power-stub: CheckAuthorization(%s, %s, flags %u) -> %s\n", s->last_subject, action, flags,
                s->authorized ? "yes" : "no");
        return sd_bus_reply_method_return(m, "(bba{ss})", (int) s->authorized, 0, 0);
}

static int property_get_backend(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", "power-stub");
}

static const sd_bus_vtable polkit_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("BackendName", "s", property_get_backend, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("CheckAuthorization",
                                SD_BUS_ARGS("(sa{sv})", subject, "s", action_id, "a{ss}", details, "u", flags,
                                            "s", cancellation_id),
                                SD_BUS_RESULT("(bba{ss})", result), method_check_authorization,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

/* ---- control */

static int method_set_on_battery(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        int b, r;

        r = sd_bus_message_read(m, "b", &b);
        if (r < 0)
                return r;
        if (s->upower && s->on_battery != !!b) {
                s->on_battery = b;
                emit_changed(s, UPOWER_PATH, UPOWER_INTERFACE, "OnBattery");
                emit_changed(s, DISPLAY_PATH, DEVICE_INTERFACE, "State");
        }
        s->on_battery = b;
        return sd_bus_reply_method_return(m, NULL);
}

static int method_set_percentage(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        double d;
        int r;

        r = sd_bus_message_read(m, "d", &d);
        if (r < 0)
                return r;
        s->percentage = d;
        if (s->upower)
                emit_changed(s, DISPLAY_PATH, DEVICE_INTERFACE, "Percentage");
        return sd_bus_reply_method_return(m, NULL);
}

static int method_set_profile(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        const char *profile;
        int r;

        r = sd_bus_message_read(m, "s", &profile);
        if (r < 0)
                return r;
        snprintf(s->profile, sizeof(s->profile), "%s", profile);
        if (s->ppd)
                emit_changed(s, PPD_PATH, PPD_NAME, "ActiveProfile");
        if (s->ppd_legacy)
                emit_changed(s, PPD_LEGACY_PATH, PPD_LEGACY_NAME, "ActiveProfile");
        return sd_bus_reply_method_return(m, NULL);
}

static int method_set_authorized(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        int b, r;

        r = sd_bus_message_read(m, "b", &b);
        if (r < 0)
                return r;
        s->authorized = b;
        return sd_bus_reply_method_return(m, NULL);
}

static int method_set_invalidate(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        int b, r;

        r = sd_bus_message_read(m, "b", &b);
        if (r < 0)
                return r;
        s->invalidate = b;
        return sd_bus_reply_method_return(m, NULL);
}

static int method_last_check(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        return sd_bus_reply_method_return(m, "ss", s->last_action, s->last_subject);
}

static int method_quit(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        struct stub *s = userdata;
        s->quit = true;
        return sd_bus_reply_method_return(m, NULL);
}

static const sd_bus_vtable stub_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_ARGS("SetOnBattery", SD_BUS_ARGS("b", on_battery), SD_BUS_NO_RESULT,
                                method_set_on_battery, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetPercentage", SD_BUS_ARGS("d", percentage), SD_BUS_NO_RESULT,
                                method_set_percentage, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetProfile", SD_BUS_ARGS("s", profile), SD_BUS_NO_RESULT, method_set_profile,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetAuthorized", SD_BUS_ARGS("b", authorized), SD_BUS_NO_RESULT,
                                method_set_authorized, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetInvalidate", SD_BUS_ARGS("b", invalidate), SD_BUS_NO_RESULT,
                                method_set_invalidate, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("LastCheck", SD_BUS_NO_ARGS, SD_BUS_RESULT("s", action, "s", subject_name),
                                method_last_check, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Quit", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, method_quit,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

/* ---- setup */

static int serve(struct stub *s, const char *path, const char *interface, const sd_bus_vtable *vtable) {
        int r = sd_bus_add_object_vtable(s->bus, NULL, path, interface, vtable, s);
        if (r < 0)
                fprintf(stderr, "power-stub: cannot serve %s on %s: %s\n", interface, path, strerror(-r));
        return r;
}

static int own(struct stub *s, const char *name) {
        int r = sd_bus_request_name(s->bus, name, 0);
        if (r < 0)
                fprintf(stderr, "power-stub: cannot own %s: %s\n", name, strerror(-r));
        return r;
}

static int serve_all(struct stub *s) {
        int r;

        /* Objects first, then the names: whoever sees a name can call at once. */
        r = serve(s, STUB_PATH, STUB_NAME, stub_vtable);
        if (r >= 0 && s->upower)
                r = serve(s, UPOWER_PATH, UPOWER_INTERFACE, upower_vtable);
        if (r >= 0 && s->upower)
                r = serve(s, DISPLAY_PATH, DEVICE_INTERFACE, device_vtable);
        if (r >= 0 && s->ppd)
                r = serve(s, PPD_PATH, PPD_NAME, ppd_vtable);
        if (r >= 0 && s->ppd_legacy)
                r = serve(s, PPD_LEGACY_PATH, PPD_LEGACY_NAME, ppd_vtable);
        if (r >= 0 && s->polkit)
                r = serve(s, POLKIT_PATH, POLKIT_INTERFACE, polkit_vtable);
        if (r >= 0 && s->upower)
                r = own(s, UPOWER_NAME);
        if (r >= 0 && s->ppd)
                r = own(s, PPD_NAME);
        if (r >= 0 && s->ppd_legacy)
                r = own(s, PPD_LEGACY_NAME);
        if (r >= 0 && s->polkit)
                r = own(s, POLKIT_NAME);
        if (r >= 0)
                r = own(s, STUB_NAME);
        return r;
}

static int run(struct stub *s) {
        int r;

        while (!s->quit) {
                r = sd_bus_process(s->bus, NULL);
                if (r < 0) {
                        fprintf(stderr, "power-stub: %s\n", strerror(-r));
                        return r;
                }
                if (r > 0)
                        continue;
                r = sd_bus_wait(s->bus, UINT64_MAX);
                if (r < 0 && r != -EINTR) {
                        fprintf(stderr, "power-stub: %s\n", strerror(-r));
                        return r;
                }
        }
        return 0;
}

int main(int argc, char **argv) {
        enum { ARG_ADDRESS = 0x100, ARG_NO_UPOWER, ARG_NO_PPD_LEGACY, ARG_NO_PPD_NEW, ARG_NO_POLKIT };
        static const struct option options[] = {
                { "address", required_argument, NULL, ARG_ADDRESS },
                { "no-upower", no_argument, NULL, ARG_NO_UPOWER },
                { "no-ppd-legacy", no_argument, NULL, ARG_NO_PPD_LEGACY },
                { "no-ppd-new", no_argument, NULL, ARG_NO_PPD_NEW },
                { "no-polkit", no_argument, NULL, ARG_NO_POLKIT },
                {},
        };
        struct stub s = {
                .upower = true, .ppd = true, .ppd_legacy = true, .polkit = true,
                .percentage = 80.0, .profile = "balanced",
        };
        const char *address = NULL;
        int c, r;

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case ARG_ADDRESS:
                        address = optarg;
                        break;
                case ARG_NO_UPOWER:
                        s.upower = false;
                        break;
                case ARG_NO_PPD_LEGACY:
                        s.ppd_legacy = false;
                        break;
                case ARG_NO_PPD_NEW:
                        s.ppd = false;
                        break;
                case ARG_NO_POLKIT:
                        s.polkit = false;
                        break;
                default:
                        return 2;
                }
        if (!address || optind < argc) {
                fprintf(stderr, "usage: power-stub --address ADDR [--no-upower] [--no-ppd-legacy] [--no-ppd-new] "
                                "[--no-polkit]\n");
                return 2;
        }

        r = sd_bus_new(&s.bus);
        if (r >= 0)
                r = sd_bus_set_address(s.bus, address);
        if (r >= 0)
                r = sd_bus_set_bus_client(s.bus, 1);
        if (r >= 0)
                r = sd_bus_start(s.bus);
        if (r < 0) {
                fprintf(stderr, "power-stub: cannot connect to %s: %s\n", address, strerror(-r));
                sd_bus_unref(s.bus);
                return 1;
        }

        r = serve_all(&s);
        if (r >= 0) {
                printf("ready\n");
                fflush(stdout);
                r = run(&s);
        }
        /* Also on failure (the bus went away): no leak report under ASan. */
        sd_bus_flush_close_unref(s.bus);
        return r < 0 ? 1 : 0;
}
