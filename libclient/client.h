/* What session.c needs of client.c: the client object, its D-Bus helpers and the hooks by which
 * the client tells its sessions that dsad or the bus went away. */
#pragma once

#include <systemd/sd-bus.h>

#include "libdsa-internal.h"

#define DSA__BUS_NAME "org.dsa.Daemon1"
#define DSA__BUS_PATH "/org/dsa/Daemon1"
#define DSA__BUS_IFACE "org.dsa.Daemon1"
#define DSA__MODEL_PATH "/org/dsa/Daemon1/models"
#define DSA__MODEL_IFACE "org.dsa.Model1"

struct dsa_client {
        unsigned n_ref;          /* the caller's, plus one per open session */
        sd_bus *bus;
        sd_bus_slot *owner_match; /* NameOwnerChanged of org.dsa.Daemon1 */
        char *error_message;
        int bus_error;            /* < 0 once the connection is lost */
        struct dsa_session *sessions; /* open sessions, to break on dsad's death */
};

struct dsa_client *dsa__client_ref(struct dsa_client *c);
struct dsa_client *dsa__client_unref(struct dsa_client *c);

/* Stores e's message (or reason) as c's error message and returns the errno for it. */
int dsa__client_fail(struct dsa_client *c, const sd_bus_error *e, int r);
int dsa__client_fail_reason(struct dsa_client *c, int r, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
void dsa__client_clear_error(struct dsa_client *c);

/* Calls a method of org.dsa.Daemon1 (types/...: its arguments, as sd_bus_message_append());
 * the reply in *ret when ret is not NULL. Errors mapped, message stored in c. */
int dsa__client_call(struct dsa_client *c, const char *method, sd_bus_message **ret,
                     const char *types, ...);

/* Dispatches messages sd-bus has queued (NameOwnerChanged); non-blocking. 0 or -ENOTCONN. */
int dsa__client_process(struct dsa_client *c);

/* ring.c: the client saw dsad (unique name owner) or the bus (owner NULL) go away. */
void dsa__session_break(struct dsa_session *s, const char *owner, int error);
void dsa__sessions_break(struct dsa_client *c, const char *owner, int error);
