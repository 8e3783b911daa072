/* Authorizing admin calls through polkit (polkit.c): dsad's methods are open to everyone in the
 * bus policy and vtable, and the handlers of the admin ones ask polkit whether the caller may.
 * Loop thread only. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

/* Who is calling: the effective uid of m's sender, as the bus reports it
 * (sd_bus_query_sender_creds()), for the checks below and for the per-user limits. When
 * ret_from_proc is not NULL, it says whether sd-bus had to read it from /proc instead (racy:
 * never good enough for authorization). Returns 0, or a negative errno. */
int dsad_sender_euid(sd_bus_message *m, uid_t *ret, bool *ret_from_proc);

/* Both forms decide whether the sender of m (an incoming method call, or a property set, on
 * bus) may perform action_id (e.g. "org.dsa.policy"). Callers whose effective uid is 0 or dsad's
 * own (geteuid(): on a session bus, the user who started dsad) are allowed without asking
 * (sd_bus_query_sender_creds() with SD_BUS_CREDS_EUID, taken from the bus, never from /proc).
 * Everyone else is checked with polkit's org.freedesktop.PolicyKit1.Authority.CheckAuthorization
 * for the subject ("system-bus-name", {"name": sender}), no details.
 *
 * A denial is org.dsa.Error.AccessDenied with a message that says why: "not authorized for
 * ACTION: polkit said no", "... polkit asks for authentication", "polkit is not running, only
 * root and dsad's own user may perform ACTION", "... polkit did not answer (...)". Nothing is
 * logged. */

/* For property setters, which must answer at once: a synchronous call without user
 * interaction (polkit answers from its rules alone, quickly; 5 s at most). Returns 0 when
 * allowed; -EACCES with ret_error set when not; -EINVAL for missing arguments, -ENOMEM. */
int dsad_polkit_check(sd_bus *bus, sd_bus_message *m, const char *action_id, sd_bus_error *ret_error);

/* What runs once polkit allowed m: a method handler's body (reply to m, return >= 0; or return
 * < 0 with ret_error set, which then becomes the reply). */
typedef int (*dsad_polkit_done_t)(sd_bus_message *m, void *userdata, sd_bus_error *ret_error);

/* For method handlers: asks without blocking the loop. Returns 0 when the caller is privileged
 * (the handler goes on and calls done itself, or just continues); 1 when the question went to
 * polkit (the handler returns 1: later, done(m, userdata) runs if polkit allows, else m gets the
 * denial); < 0 with ret_error set when it could not ask. User interaction (an authentication
 * agent asking for a password) is allowed when m allows it
 * (sd_bus_message_get_allow_interactive_authorization()), with 2 minutes to answer; 25 s
 * otherwise. userdata must live as long as bus (pending questions go with the bus). */
int dsad_polkit_check_async(sd_bus *bus, sd_bus_message *m, const char *action_id, dsad_polkit_done_t done,
                            void *userdata, sd_bus_error *ret_error);
