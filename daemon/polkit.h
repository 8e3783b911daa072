/* Authorizing admin calls through polkit (polkit.c): dsad's methods are open to everyone in the
 * bus policy and vtable, and the handlers of the admin ones ask polkit whether the caller may.
 * Loop thread only. */
#pragma once

#include <systemd/sd-bus.h>

/* Decides whether the sender of m (an incoming method call, or a property set, on bus) may
 * perform action_id (e.g. "org.dsa.policy"). Callers whose effective uid is 0 or dsad's
 * own (geteuid(): on a session bus, the user who started dsad) are allowed without asking (sd_bus_query_sender_creds() with SD_BUS_CREDS_EUID, taken from the bus, never
 * from /proc). Everyone else is checked with polkit's
 * org.freedesktop.PolicyKit1.Authority.CheckAuthorization for the subject
 * ("system-bus-name", {"name": sender}), no details, flag AllowUserInteraction.
 *
 * The polkit call is synchronous with a 5 s timeout: admin calls are rare, and this keeps the
 * handlers simple, at the price of stalling the loop while polkit answers (or while an
 * authentication agent asks the user; an answer that takes longer than 5 s denies).
 *
 * Returns 0 when allowed; -EACCES when not, with ret_error set to org.dsa.Error.AccessDenied and
 * a message that says why ("not authorized for ACTION: polkit said no", "... polkit asks for
 * authentication", "polkit is not running, only root and
 * dsad's own user may perform ACTION", "polkit did not answer
 * ..."), which the handler returns as it is; -EINVAL for missing arguments, -ENOMEM. Nothing is
 * logged. */
int dsad_polkit_check(sd_bus *bus, sd_bus_message *m, const char *action_id, sd_bus_error *ret_error);
