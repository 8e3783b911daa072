/* Who is calling, and polkit's CheckAuthorization for admin calls (polkit.h), with root and
 * dsad's own uid let through without a round trip: asynchronously for methods, so an
 * authentication dialog never stalls the loop, and synchronously without user interaction for
 * property writes. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "basic/macro.h"
#include "polkit.h"

#define ERROR_ACCESS_DENIED "org.dsa.Error.AccessDenied"
#define POLKIT_SYNC_TIMEOUT_USEC (5u * 1000u * 1000u)
#define POLKIT_TIMEOUT_USEC (25u * 1000u * 1000u)
/* Long enough for a person to type a password into an authentication agent. */
#define POLKIT_INTERACTIVE_TIMEOUT_USEC (120u * 1000u * 1000u)
#define POLKIT_ALLOW_USER_INTERACTION 1u

struct pending {
        sd_bus_message *m;     /* the call being authorized */
        char *action_id;
        dsad_polkit_done_t done;
        void *userdata;
};

int dsad_sender_euid(sd_bus_message *m, uid_t *ret, bool *ret_from_proc) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t uid;
        int r;

        r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds);
        if (r < 0)
                return r;
        r = sd_bus_creds_get_euid(creds, &uid);
        if (r < 0)
                return r;
        if (ret_from_proc)
                *ret_from_proc = sd_bus_creds_get_augmented_mask(creds) & SD_BUS_CREDS_EUID;
        *ret = uid;
        return 0;
}

/* Root, or the uid dsad runs as (the user who started a session-bus dsad owns it). */
static bool sender_is_privileged(sd_bus_message *m) {
        bool from_proc;
        uid_t euid;

        /* A uid read from /proc is racy: never trusted for authorization. */
        return dsad_sender_euid(m, &euid, &from_proc) >= 0 && !from_proc && (euid == 0 || euid == geteuid());
}

_printf_(2, 3) static int deny(sd_bus_error *ret_error, const char *fmt, ...) {
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = sd_bus_error_setfv(ret_error, ERROR_ACCESS_DENIED, fmt, ap);
        va_end(ap);
        return r == -ENOMEM ? r : -EACCES;
}

/* The CheckAuthorization call about m's sender. */
static int new_check(sd_bus *bus, sd_bus_message *m, const char *action_id, bool interactive,
                     sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &call, "org.freedesktop.PolicyKit1",
                                           "/org/freedesktop/PolicyKit1/Authority",
                                           "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization");
        if (r >= 0)
                r = sd_bus_message_append(call, "(sa{sv})sa{ss}us", "system-bus-name", 1, "name", "s",
                                          sd_bus_message_get_sender(m), action_id, 0,
                                          interactive ? POLKIT_ALLOW_USER_INTERACTION : 0u, "");
        if (r < 0)
                return r == -ENOMEM ? r : -EINVAL;
        *ret = TAKE_PTR(call);
        return 0;
}

/* What polkit answered (reply, or the call's error and r < 0): 0 allowed, else -EACCES with
 * the reason in ret_error (-ENOMEM). */
static int verdict(sd_bus_message *reply, const sd_bus_error *error, int r, const char *action_id,
                   sd_bus_error *ret_error) {
        int authorized, challenge;

        if (r < 0) {
                if (r == -ENOMEM)
                        return r;
                if (sd_bus_error_has_names(error, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                        return deny(ret_error, "polkit is not running, only root and dsad's own user may perform %s",
                                    action_id);
                return deny(ret_error, "not authorized for %s: polkit did not answer (%s)", action_id,
                            error && error->message ? error->message : strerror(-r));
        }
        r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r >= 0)
                r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (r < 0)
                return deny(ret_error, "not authorized for %s: polkit's answer did not parse", action_id);
        if (authorized)
                return 0;
        if (challenge)
                return deny(ret_error, "not authorized for %s: polkit asks for authentication", action_id);
        return deny(ret_error, "not authorized for %s: polkit said no", action_id);
}

int dsad_polkit_check(sd_bus *bus, sd_bus_message *m, const char *action_id, sd_bus_error *ret_error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        if (!bus || !m || !action_id)
                return -EINVAL;
        if (!sd_bus_message_get_sender(m))
                return deny(ret_error, "not authorized for %s: the call has no sender", action_id);
        if (sender_is_privileged(m))
                return 0;
        r = new_check(bus, m, action_id, false, &call);
        if (r < 0)
                return r;
        r = sd_bus_call(bus, call, POLKIT_SYNC_TIMEOUT_USEC, &error, &reply);
        return verdict(reply, &error, r, action_id, ret_error);
}

static void pending_free(void *userdata) {
        struct pending *p = userdata;

        sd_bus_message_unref(p->m);
        free(p->action_id);
        free(p);
}

static int on_check_reply(sd_bus_message *reply, void *userdata, sd_bus_error *unused) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        struct pending *p = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(reply);
        int r;

        r = verdict(reply, e, e ? -sd_bus_error_get_errno(e) ?: -EIO : 0, p->action_id, &error);
        if (r >= 0)
                r = p->done(p->m, p->userdata, &error);
        if (r < 0)
                (void) sd_bus_reply_method_errno(p->m, r, &error);
        return 0; /* the slot, and p with it, goes after this */
}

int dsad_polkit_check_async(sd_bus *bus, sd_bus_message *m, const char *action_id, dsad_polkit_done_t done,
                            void *userdata, sd_bus_error *ret_error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL;
        sd_bus_slot *slot = NULL;
        struct pending *p;
        bool interactive;
        int r;

        if (!bus || !m || !action_id || !done)
                return -EINVAL;
        if (!sd_bus_message_get_sender(m))
                return deny(ret_error, "not authorized for %s: the call has no sender", action_id);
        if (sender_is_privileged(m))
                return 0;
        interactive = sd_bus_message_get_allow_interactive_authorization(m) > 0;
        r = new_check(bus, m, action_id, interactive, &call);
        if (r < 0)
                return r;
        p = calloc(1, sizeof(*p));
        if (!p || !(p->action_id = strdup(action_id))) {
                free(p);
                return -ENOMEM;
        }
        p->m = sd_bus_message_ref(m);
        p->done = done;
        p->userdata = userdata;
        r = sd_bus_call_async(bus, &slot, call, on_check_reply, p,
                              interactive ? POLKIT_INTERACTIVE_TIMEOUT_USEC : POLKIT_TIMEOUT_USEC);
        if (r < 0) {
                pending_free(p);
                return r == -ENOMEM ? r : -EIO;
        }
        /* The bus owns the slot from here; p goes with it, after the reply or when the bus does. */
        (void) sd_bus_slot_set_destroy_callback(slot, pending_free);
        (void) sd_bus_slot_set_floating(slot, 1);
        sd_bus_slot_unref(slot);
        return 1;
}
