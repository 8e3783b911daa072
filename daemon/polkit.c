/* polkit's CheckAuthorization for admin calls, asked synchronously (see polkit.h for why), with
 * root and dsad's own uid let through without a round trip. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "basic/macro.h"
#include "polkit.h"

#define ERROR_ACCESS_DENIED "org.dsa.Error.AccessDenied"
#define POLKIT_TIMEOUT_USEC (5u * 1000u * 1000u)
#define POLKIT_ALLOW_USER_INTERACTION 1u

/* Root, or the uid dsad runs as (the user who started a session-bus dsad owns it). */
static bool sender_is_privileged(sd_bus_message *m) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t euid;

        if (sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds) < 0)
                return false;
        /* Augmented credentials come from /proc, racily: never trust them for authorization. */
        if (sd_bus_creds_get_augmented_mask(creds) & SD_BUS_CREDS_EUID)
                return false;
        return sd_bus_creds_get_euid(creds, &euid) >= 0 && (euid == 0 || euid == geteuid());
}

_printf_(2, 3) static int deny(sd_bus_error *ret_error, const char *fmt, ...) {
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = sd_bus_error_setfv(ret_error, ERROR_ACCESS_DENIED, fmt, ap);
        va_end(ap);
        return r == -ENOMEM ? r : -EACCES;
}

int dsad_polkit_check(sd_bus *bus, sd_bus_message *m, const char *action_id, sd_bus_error *ret_error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *sender;
        int authorized, challenge, r;

        if (!bus || !m || !action_id)
                return -EINVAL;

        sender = sd_bus_message_get_sender(m);
        if (!sender)
                return deny(ret_error, "not authorized for %s: the call has no sender", action_id);
        if (sender_is_privileged(m))
                return 0;

        r = sd_bus_message_new_method_call(bus, &call, "org.freedesktop.PolicyKit1",
                                           "/org/freedesktop/PolicyKit1/Authority",
                                           "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization");
        if (r >= 0)
                r = sd_bus_message_append(call, "(sa{sv})sa{ss}us", "system-bus-name", 1, "name", "s", sender,
                                          action_id, 0, POLKIT_ALLOW_USER_INTERACTION, "");
        if (r < 0)
                return r == -ENOMEM ? r : -EINVAL;

        r = sd_bus_call(bus, call, POLKIT_TIMEOUT_USEC, &error, &reply);
        if (r < 0) {
                if (r == -ENOMEM)
                        return r;
                if (sd_bus_error_has_names(&error, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                        return deny(ret_error, "polkit is not running, only root and dsad's own user may perform %s",
                                    action_id);
                return deny(ret_error, "not authorized for %s: polkit did not answer (%s)", action_id,
                            error.message ? error.message : strerror(-r));
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
