/* UPower and power-profiles-daemon, watched on a bus connection of dsad's own.
 *
 * Each service is a peer: a well-known name whose owner we track with NameOwnerChanged (a match
 * per name, arg0-filtered) and one GetNameOwner at start. When a peer has an owner, each of its
 * objects is read with GetAll sent to that unique name (so nothing is D-Bus activated, and every
 * answer comes from the owner we track), and kept current by PropertiesChanged, whose sender
 * must be that owner (anyone may send a signal with the right path). Invalidated properties are
 * fetched again with Get. A peer counts only once all its objects are read, so a service that
 * appears is reported in one callback. The first callback waits until every peer has settled
 * (answered, or known to be absent); later ones follow every change of the composed values. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "bus.h"
#include "daemon.h"
#include "powerbus.h"

#define DBUS_SERVICE "org.freedesktop.DBus"
#define DBUS_PATH "/org/freedesktop/DBus"
#define PROPERTIES_INTERFACE "org.freedesktop.DBus.Properties"
#define CALL_TIMEOUT_USEC (25u * 1000u * 1000u)

/* UPower's device types (UpDeviceKind) whose Percentage is a charge level. */
#define UPOWER_TYPE_BATTERY 2u
#define UPOWER_TYPE_UPS 3u

enum {
        PEER_UPOWER,
        PEER_PPD,        /* org.freedesktop.UPower.PowerProfiles, preferred */
        PEER_PPD_LEGACY, /* net.hadess.PowerProfiles */
        _PEER_MAX,
};

enum {
        OBJECT_UPOWER,
        OBJECT_DISPLAY,
        OBJECT_PPD,
        OBJECT_PPD_LEGACY,
        _OBJECT_MAX,
};

enum {
        PROP_ON_BATTERY,
        PROP_PERCENTAGE,
        PROP_IS_PRESENT,
        PROP_TYPE,
        PROP_PROFILE,
        PROP_PROFILE_LEGACY,
        _PROP_MAX,
};

static const char *const peer_names[_PEER_MAX] = {
        [PEER_UPOWER] = "org.freedesktop.UPower",
        [PEER_PPD] = "org.freedesktop.UPower.PowerProfiles",
        [PEER_PPD_LEGACY] = "net.hadess.PowerProfiles",
};

static const struct object_info {
        unsigned peer;
        const char *path, *interface;
} object_info[_OBJECT_MAX] = {
        [OBJECT_UPOWER] = { PEER_UPOWER, "/org/freedesktop/UPower", "org.freedesktop.UPower" },
        [OBJECT_DISPLAY] = { PEER_UPOWER, "/org/freedesktop/UPower/devices/DisplayDevice",
                             "org.freedesktop.UPower.Device" },
        [OBJECT_PPD] = { PEER_PPD, "/org/freedesktop/UPower/PowerProfiles", "org.freedesktop.UPower.PowerProfiles" },
        [OBJECT_PPD_LEGACY] = { PEER_PPD_LEGACY, "/net/hadess/PowerProfiles", "net.hadess.PowerProfiles" },
};

static const struct prop_info {
        unsigned object;
        const char *name;
        const char *signature; /* one basic type */
} prop_info[_PROP_MAX] = {
        [PROP_ON_BATTERY] = { OBJECT_UPOWER, "OnBattery", "b" },
        [PROP_PERCENTAGE] = { OBJECT_DISPLAY, "Percentage", "d" },
        [PROP_IS_PRESENT] = { OBJECT_DISPLAY, "IsPresent", "b" },
        [PROP_TYPE] = { OBJECT_DISPLAY, "Type", "u" },
        [PROP_PROFILE] = { OBJECT_PPD, "ActiveProfile", "s" },
        [PROP_PROFILE_LEGACY] = { OBJECT_PPD_LEGACY, "ActiveProfile", "s" },
};

struct peer {
        struct dsad_powerbus *p;
        unsigned index;
        char *owner;            /* unique name; NULL while absent */
        bool known;             /* whether the name has an owner is known */
        sd_bus_slot *match;     /* NameOwnerChanged for this name */
        sd_bus_slot *get_owner; /* GetNameOwner in flight */
};

struct object {
        struct dsad_powerbus *p;
        unsigned index;
        sd_bus_slot *match;   /* PropertiesChanged */
        sd_bus_slot *get_all; /* GetAll in flight */
        bool read;            /* GetAll came back (either way) since the owner appeared */
        bool answered;        /* ... and succeeded */
};

struct prop {
        struct dsad_powerbus *p;
        unsigned index;
        sd_bus_slot *get; /* Get in flight, after an invalidation */
        bool known;
        union {
                bool b;
                double d;
                uint32_t u;
                char s[sizeof(((struct dsad_power_signals *) NULL)->profile)];
        } value;
};

struct dsad_powerbus {
        sd_bus *bus;
        struct dsad_bus_io *io;
        dsad_powerbus_cb_t cb;
        void *userdata;
        struct peer peers[_PEER_MAX];
        struct object objects[_OBJECT_MAX];
        struct prop props[_PROP_MAX];
        struct dsad_power_signals last; /* what the last callback said */
        bool emitted;                   /* the first callback came */
};

/* ---- helpers */

static void signals_unknown(struct dsad_power_signals *s) {
        memset(s, 0, sizeof(*s));
        s->battery_percent = NAN;
}

static bool signals_equal(const struct dsad_power_signals *a, const struct dsad_power_signals *b) {
        bool same_percent = isnan(a->battery_percent) ? isnan(b->battery_percent)
                                                      : a->battery_percent == b->battery_percent;

        return a->upower == b->upower && a->on_battery == b->on_battery && same_percent &&
               strcmp(a->profile, b->profile) == 0 && strcmp(a->profile_service, b->profile_service) == 0;
}

/* Copies at most cap-1 bytes of src, cut back to a UTF-8 character boundary. */
static void copy_capped(char *dst, size_t cap, const char *src) {
        size_t n = strnlen(src, cap);

        if (n >= cap) {
                n = cap - 1;
                while (n > 0 && ((unsigned char) src[n] & 0xC0) == 0x80)
                        n--;
        }
        memcpy(dst, src, n);
        dst[n] = 0;
}

static bool object_ready(const struct dsad_powerbus *p, unsigned o) {
        const struct peer *peer = &p->peers[object_info[o].peer];
        return peer->owner && p->objects[o].read && p->objects[o].answered;
}

/* A peer counts once it has an owner and every one of its objects came back. */
static bool peer_ready(const struct dsad_powerbus *p, unsigned i) {
        if (!p->peers[i].owner)
                return false;
        for (unsigned o = 0; o < _OBJECT_MAX; o++)
                if (object_info[o].peer == i && !p->objects[o].read)
                        return false;
        return true;
}

static bool peer_settled(const struct dsad_powerbus *p, unsigned i) {
        return p->peers[i].known && (!p->peers[i].owner || peer_ready(p, i));
}

static const struct prop *prop_ready(const struct dsad_powerbus *p, unsigned i) {
        const struct prop *pr = &p->props[i];
        unsigned o = prop_info[i].object;

        if (!pr->known || !peer_ready(p, object_info[o].peer) || !object_ready(p, o))
                return NULL;
        return pr;
}

static void compose(const struct dsad_powerbus *p, struct dsad_power_signals *s) {
        const struct prop *pr, *present, *type;

        signals_unknown(s);

        if (peer_ready(p, PEER_UPOWER) && object_ready(p, OBJECT_UPOWER)) {
                s->upower = true;
                pr = prop_ready(p, PROP_ON_BATTERY);
                s->on_battery = pr && pr->value.b;
        }

        /* The display device stands for all batteries (or the UPS); without any it is not
         * present, and its Percentage means nothing. */
        pr = prop_ready(p, PROP_PERCENTAGE);
        present = prop_ready(p, PROP_IS_PRESENT);
        type = prop_ready(p, PROP_TYPE);
        if (pr && present && present->value.b &&
            (!type || type->value.u == UPOWER_TYPE_BATTERY || type->value.u == UPOWER_TYPE_UPS))
                s->battery_percent = pr->value.d;

        for (unsigned i = PROP_PROFILE; i <= PROP_PROFILE_LEGACY; i++) {
                pr = prop_ready(p, i);
                if (pr && pr->value.s[0]) {
                        unsigned peer = object_info[prop_info[i].object].peer;
                        copy_capped(s->profile, sizeof(s->profile), pr->value.s);
                        copy_capped(s->profile_service, sizeof(s->profile_service), peer_names[peer]);
                        break;
                }
        }
}

/* Calls back when the composed values differ from the last ones reported. Every caller calls
 * this last and returns right after. */
static void update(struct dsad_powerbus *p) {
        struct dsad_power_signals s;

        if (!p->emitted)
                for (unsigned i = 0; i < _PEER_MAX; i++)
                        if (!peer_settled(p, i))
                                return;
        compose(p, &s);
        if (p->emitted && signals_equal(&s, &p->last))
                return;
        p->last = s;
        p->emitted = true;
        if (p->cb)
                p->cb(&s, p->userdata);
}

static void prop_forget(struct prop *pr) {
        pr->get = sd_bus_slot_unref(pr->get);
        pr->known = false;
        memset(&pr->value, 0, sizeof(pr->value));
}

/* Reads the variant at m's position into pr; a value of the wrong type is skipped. */
static int prop_read(struct prop *pr, sd_bus_message *m) {
        const struct prop_info *info = &prop_info[pr->index];
        const char *contents;
        const char *str;
        uint32_t u;
        double d;
        int b, r;

        r = sd_bus_message_peek_type(m, NULL, &contents);
        if (r < 0)
                return r;
        if (!contents || strcmp(contents, info->signature) != 0) {
                dsad_log(LOG_DEBUG, "%s %s has type '%s', expected '%s', ignoring.",
                         object_info[info->object].interface, info->name, contents ? contents : "",
                         info->signature);
                return sd_bus_message_skip(m, "v");
        }
        r = sd_bus_message_enter_container(m, 'v', contents);
        if (r < 0)
                return r;
        switch (info->signature[0]) {
        case 'b':
                r = sd_bus_message_read_basic(m, 'b', &b);
                if (r >= 0)
                        pr->value.b = b;
                break;
        case 'u':
                r = sd_bus_message_read_basic(m, 'u', &u);
                if (r >= 0)
                        pr->value.u = u;
                break;
        case 'd':
                r = sd_bus_message_read_basic(m, 'd', &d);
                if (r >= 0)
                        pr->value.d = isnan(d) ? NAN : d < 0 ? 0 : d > 100 ? 100 : d;
                break;
        case 's':
                r = sd_bus_message_read_basic(m, 's', &str);
                if (r >= 0)
                        copy_capped(pr->value.s, sizeof(pr->value.s), str);
                break;
        default:
                r = -EINVAL;
        }
        if (r < 0)
                return r;
        pr->known = true;
        return sd_bus_message_exit_container(m);
}

static struct prop *object_find_prop(struct dsad_powerbus *p, unsigned o, const char *name) {
        for (unsigned i = 0; i < _PROP_MAX; i++)
                if (prop_info[i].object == o && strcmp(prop_info[i].name, name) == 0)
                        return &p->props[i];
        return NULL;
}

/* Reads an a{sv} of properties of object o (GetAll's reply, PropertiesChanged's changed ones). */
static int object_read_dict(struct dsad_powerbus *p, unsigned o, sd_bus_message *m) {
        const char *name;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                struct prop *pr;

                r = sd_bus_message_read_basic(m, 's', &name);
                if (r < 0)
                        return r;
                pr = object_find_prop(p, o, name);
                r = pr ? prop_read(pr, m) : sd_bus_message_skip(m, "v");
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

static void object_forget(struct object *obj) {
        obj->get_all = sd_bus_slot_unref(obj->get_all);
        obj->read = obj->answered = false;
        for (unsigned i = 0; i < _PROP_MAX; i++)
                if (prop_info[i].object == obj->index)
                        prop_forget(&obj->p->props[i]);
}

/* ---- D-Bus callbacks */

static int on_get(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        struct prop *pr = userdata;
        struct dsad_powerbus *p = pr->p;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        int r;

        pr->get = sd_bus_slot_unref(pr->get);
        if (e) {
                dsad_log(LOG_DEBUG, "Get %s failed: %s, forgetting it.", prop_info[pr->index].name, e->message);
                prop_forget(pr);
        } else {
                r = prop_read(pr, m);
                if (r < 0) {
                        dsad_log(LOG_DEBUG, "Get %s: bad reply: %s, forgetting it.", prop_info[pr->index].name,
                                 strerror(-r));
                        prop_forget(pr);
                }
        }
        update(p);
        return 0;
}

static void prop_refetch(struct prop *pr) {
        struct dsad_powerbus *p = pr->p;
        unsigned o = prop_info[pr->index].object;
        const struct peer *peer = &p->peers[object_info[o].peer];
        int r;

        pr->get = sd_bus_slot_unref(pr->get);
        if (!peer->owner)
                return;
        r = sd_bus_call_method_async(p->bus, &pr->get, peer->owner, object_info[o].path, PROPERTIES_INTERFACE,
                                     "Get", on_get, pr, "ss", object_info[o].interface, prop_info[pr->index].name);
        if (r < 0) {
                dsad_log(LOG_DEBUG, "Failed to ask for %s: %s, forgetting it.", prop_info[pr->index].name,
                         strerror(-r));
                prop_forget(pr);
        }
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        struct object *obj = userdata;
        struct dsad_powerbus *p = obj->p;
        const struct object_info *info = &object_info[obj->index];
        const struct peer *peer = &p->peers[info->peer];
        const char *sender = sd_bus_message_get_sender(m), *interface, *name;
        int r;

        if (!peer->owner || !sender || strcmp(sender, peer->owner) != 0)
                return 0;
        r = sd_bus_message_read_basic(m, 's', &interface);
        if (r < 0 || strcmp(interface, info->interface) != 0)
                return 0;

        r = object_read_dict(p, obj->index, m);
        if (r >= 0)
                r = sd_bus_message_enter_container(m, 'a', "s");
        if (r >= 0) {
                while ((r = sd_bus_message_read_basic(m, 's', &name)) > 0) {
                        struct prop *pr = object_find_prop(p, obj->index, name);
                        if (pr)
                                prop_refetch(pr);
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
        }
        if (r < 0)
                dsad_log(LOG_DEBUG, "%s from %s did not parse: %s, ignoring.", info->interface, sender,
                         strerror(-r));
        update(p);
        return 0;
}

static int on_get_all(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        struct object *obj = userdata;
        struct dsad_powerbus *p = obj->p;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        int r;

        obj->get_all = sd_bus_slot_unref(obj->get_all);
        obj->read = true;
        if (e)
                dsad_log(LOG_DEBUG, "GetAll %s on %s failed: %s, ignoring.", object_info[obj->index].interface,
                         object_info[obj->index].path, e->message);
        else {
                r = object_read_dict(p, obj->index, m);
                if (r < 0)
                        dsad_log(LOG_DEBUG, "GetAll %s: bad reply: %s, ignoring.", object_info[obj->index].interface,
                                 strerror(-r));
                else
                        obj->answered = true;
        }
        update(p);
        return 0;
}

/* The peer's owner is now owner (NULL: none): forgets what the previous one said and reads
 * again from the new one. */
static void peer_set_owner(struct peer *peer, const char *owner) {
        struct dsad_powerbus *p = peer->p;
        int r;

        peer->known = true;
        peer->get_owner = sd_bus_slot_unref(peer->get_owner);
        if (peer->owner && owner && strcmp(peer->owner, owner) == 0)
                return;

        for (unsigned o = 0; o < _OBJECT_MAX; o++)
                if (object_info[o].peer == peer->index)
                        object_forget(&p->objects[o]);
        if (peer->owner && !owner)
                dsad_log(LOG_DEBUG, "%s left the bus.", peer_names[peer->index]);
        free(peer->owner);
        peer->owner = NULL;
        if (!owner)
                return;
        peer->owner = strdup(owner);
        if (!peer->owner) {
                dsad_log(LOG_WARNING, "Out of memory, treating %s as absent.", peer_names[peer->index]);
                return;
        }
        dsad_log(LOG_DEBUG, "%s is on the bus as %s.", peer_names[peer->index], owner);

        for (unsigned o = 0; o < _OBJECT_MAX; o++) {
                struct object *obj = &p->objects[o];

                if (object_info[o].peer != peer->index)
                        continue;
                r = sd_bus_call_method_async(p->bus, &obj->get_all, owner, object_info[o].path,
                                             PROPERTIES_INTERFACE, "GetAll", on_get_all, obj, "s",
                                             object_info[o].interface);
                if (r < 0) {
                        dsad_log(LOG_DEBUG, "Failed to ask %s for its properties: %s, ignoring.",
                                 peer_names[peer->index], strerror(-r));
                        obj->read = true;
                }
        }
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        struct peer *peer = userdata;
        const char *name, *old_owner, *new_owner;
        int r;

        r = sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner);
        if (r < 0 || strcmp(name, peer_names[peer->index]) != 0)
                return 0;
        peer_set_owner(peer, new_owner[0] ? new_owner : NULL);
        update(peer->p);
        return 0;
}

static int on_get_name_owner(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        struct peer *peer = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        const char *owner = NULL;

        peer->get_owner = sd_bus_slot_unref(peer->get_owner);
        if (e && !sd_bus_error_has_name(e, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                dsad_log(LOG_DEBUG, "GetNameOwner %s failed: %s, taking it as absent.", peer_names[peer->index],
                         e->message);
        if (!e && sd_bus_message_read_basic(m, 's', &owner) < 0)
                owner = NULL;
        peer_set_owner(peer, owner && owner[0] == ':' ? owner : NULL);
        update(peer->p);
        return 0;
}

static void on_bus_lost(void *userdata, int error) {
        struct dsad_powerbus *p = userdata;

        dsad_log(LOG_WARNING, "Lost the connection to the bus of UPower and power-profiles-daemon (%s); "
                              "power signals are unknown from now on.", strerror(-error));
        p->io = dsad_bus_io_free(p->io);
        for (unsigned i = 0; i < _PEER_MAX; i++) {
                p->peers[i].match = sd_bus_slot_unref(p->peers[i].match);
                peer_set_owner(&p->peers[i], NULL);
        }
        for (unsigned o = 0; o < _OBJECT_MAX; o++)
                p->objects[o].match = sd_bus_slot_unref(p->objects[o].match);
        update(p);
}

/* ---- API */

static int powerbus_watch(struct dsad_powerbus *p) {
        char match[256];
        int r;

        /* Matches first: the bus handles our messages in order, so no change can fall between
         * a match and the read it guards. */
        for (unsigned i = 0; i < _PEER_MAX; i++) {
                struct peer *peer = &p->peers[i];

                snprintf(match, sizeof(match),
                         "type='signal',sender='" DBUS_SERVICE "',path='" DBUS_PATH "',interface='" DBUS_SERVICE
                         "',member='NameOwnerChanged',arg0='%s'",
                         peer_names[i]);
                r = sd_bus_add_match_async(p->bus, &peer->match, match, on_name_owner_changed, NULL, peer);
                if (r < 0)
                        return r;
        }
        for (unsigned o = 0; o < _OBJECT_MAX; o++) {
                struct object *obj = &p->objects[o];

                r = sd_bus_match_signal_async(p->bus, &obj->match, peer_names[object_info[o].peer],
                                              object_info[o].path, PROPERTIES_INTERFACE, "PropertiesChanged",
                                              on_properties_changed, NULL, obj);
                if (r < 0)
                        return r;
        }
        for (unsigned i = 0; i < _PEER_MAX; i++) {
                struct peer *peer = &p->peers[i];

                r = sd_bus_call_method_async(p->bus, &peer->get_owner, DBUS_SERVICE, DBUS_PATH, DBUS_SERVICE,
                                             "GetNameOwner", on_get_name_owner, peer, "s", peer_names[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

int dsad_powerbus_new(uv_loop_t *loop, const char *address, dsad_powerbus_cb_t cb, void *userdata,
                      struct dsad_powerbus **ret) {
        _cleanup_(dsad_powerbus_freep) struct dsad_powerbus *p = NULL;
        int r;

        if (!loop || !cb || !ret)
                return -EINVAL;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->cb = NULL; /* armed last: a failed call never calls back */
        signals_unknown(&p->last);
        for (unsigned i = 0; i < _PEER_MAX; i++)
                p->peers[i] = (struct peer) { .p = p, .index = i };
        for (unsigned o = 0; o < _OBJECT_MAX; o++)
                p->objects[o] = (struct object) { .p = p, .index = o };
        for (unsigned i = 0; i < _PROP_MAX; i++)
                p->props[i] = (struct prop) { .p = p, .index = i };

        r = dsad_bus_open(address, &p->bus);
        if (r < 0)
                return r;
        (void) sd_bus_set_description(p->bus, "dsad-power");
        (void) sd_bus_set_method_call_timeout(p->bus, CALL_TIMEOUT_USEC);

        r = powerbus_watch(p);
        if (r < 0)
                return r;
        r = dsad_bus_io_new(loop, p->bus, on_bus_lost, p, &p->io);
        if (r < 0)
                return r;

        p->cb = cb;
        p->userdata = userdata;
        *ret = TAKE_PTR(p);
        return 0;
}

struct dsad_powerbus *dsad_powerbus_free(struct dsad_powerbus *p) {
        if (!p)
                return NULL;
        for (unsigned i = 0; i < _PROP_MAX; i++)
                p->props[i].get = sd_bus_slot_unref(p->props[i].get);
        for (unsigned o = 0; o < _OBJECT_MAX; o++) {
                p->objects[o].get_all = sd_bus_slot_unref(p->objects[o].get_all);
                p->objects[o].match = sd_bus_slot_unref(p->objects[o].match);
        }
        for (unsigned i = 0; i < _PEER_MAX; i++) {
                p->peers[i].get_owner = sd_bus_slot_unref(p->peers[i].get_owner);
                p->peers[i].match = sd_bus_slot_unref(p->peers[i].match);
                free(p->peers[i].owner);
        }
        p->io = dsad_bus_io_free(p->io);
        /* Nothing queued matters to anyone: no flush. */
        p->bus = sd_bus_close_unref(p->bus);
        free(p);
        return NULL;
}

void dsad_powerbus_get(const struct dsad_powerbus *p, struct dsad_power_signals *ret) {
        if (!ret)
                return;
        if (!p) {
                signals_unknown(ret);
                return;
        }
        if (p->emitted)
                *ret = p->last;
        else
                compose(p, ret);
}
