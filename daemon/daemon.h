/* dsad's internal interfaces: the context every daemon file shares, and what each module
 * offers the others. Threads: the libuv loop thread owns everything here except where a comment
 * says a function runs on a worker; workers only run engine code and post completions.
 *
 *   main.c       options, context, run, clean up (thin)
 *   bus.c        sd-bus connection driven by the libuv loop
 *   api.c        org.dsa.Daemon1: vtable, admin/session/status methods, D-Bus setup
 *   api-infer.c  Classify/Embed/Tokenize through the scheduler, replies from the loop thread
 *   api-model.c  org.dsa.Model1 objects, model-name checks, registry errors as D-Bus errors
 *   registry.c   the model store: list, load (mmap once), unload, idle-unload timer
 *   config.c     /etc/dsa/dsad.conf (inih), SIGHUP reload
 *   session.c    OpenSession: sealed memfd ring, submit eventfd, complete pipe; lifetime tied to the D-Bus peer
 *   uring.c      io_uring multishot polls on every session's submit eventfd
 *   request.c    copies a request out of shared memory and validates it (fuzzed); responses
 *   scheduler.c  bounded queue, worker pool, batching by model and length; asks the policy
 *                which variant runs each batch
 *   ladder.c policy.c adaptive.c   variants and the adaptive policy (policy.h)
 *   power.c      RAPL, PSI and CPU-time readers (power.h)
 *   powerbus.c   UPower and power-profiles-daemon on the system bus (powerbus.h)
 *   polkit.c     polkit authorization of admin calls (polkit.h) */
#pragma once

/* basic/macro.h before <uv.h>: uv.h pulls in <sys/param.h>, whose MIN/MAX may then redefine
 * ours without a warning (a system header), where the other order fails -Werror. */
#include "basic/macro.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-bus.h>
#include <uv.h>

#include "dsa/ring.h"
#include "engine/model.h"
#include "policy.h"

struct dsad_model;
struct dsad_session;
struct dsad_request;
struct dsad_scheduler;
struct dsad_uring;

struct dsad_config {
        char *store;                  /* model folder */
        unsigned workers;             /* 0 = online cores */
        unsigned idle_unload_seconds; /* 0 = never */
        unsigned queue_max;           /* requests waiting, across sessions */
        unsigned batch_max;           /* requests run together in one engine call, 1..DSAD_BATCH_MAX */
        struct dsad_policy_settings policy; /* [policy] and [battery] */
        char *power_bus;              /* [power] bus=: where UPower and power-profiles-daemon are */
        char *sysfs_root;             /* [power] root=: prefix of /sys and /proc (tests) */
        double tick_s;                /* [policy] tick_seconds= */
        struct dsad_limits {          /* [limits]: per client uid, dsad's own uid exempt */
                unsigned sessions_per_uid;  /* open sessions; 0 = no limit */
                uint64_t shm_bytes_per_uid; /* bytes of their rings together; 0 = no limit */
                double queue_share;         /* of queue_max one uid's requests may fill, (0, 1] */
        } limits;
};

#define DSAD_BATCH_MAX 64u

struct dsad {
        uv_loop_t *loop;
        sd_bus *bus;
        struct dsad_config config;
        char *config_path;

        /* registry.c */
        struct dsad_model *models; /* linked list of known models */
        /* session.c */
        struct dsad_session *sessions;
        unsigned n_sessions;
        uint64_t next_session_id;
        /* scheduler.c, uring.c */
        struct dsad_scheduler *scheduler;
        struct dsad_uring *uring;
        /* policy.c (decisions), adaptive.c (its loop side) */
        struct dsad_policy *policy;
        struct dsad_adaptive *adaptive;

        uint64_t requests_completed, requests_failed; /* atomics: updated by workers */
        uint64_t start_usec;
        bool stopping;

        /* ---- added by the control plane (main.c bus.c api.c registry.c config.c daemon.c):
         * private state of those files, opaque to the others. */
        struct dsad_bus_io *bus_io;     /* bus.c: uv_poll + uv_timer driving sd-bus */
        struct dsad_api *api;           /* api.c: pending D-Bus calls, uv_async for replies */
        struct dsad_registry *registry; /* registry.c: idle-unload timer */
        struct dsad_loop *signals;      /* daemon.c: SIGTERM/SIGINT/SIGHUP, watchdog */
};

/* ---- registry.c */
/* Looks up a model by name in the store (a file NAME.gguf); -ENOENT when absent, -EINVAL for a
 * name that is not a valid model name. */
int dsad_registry_find(struct dsad *d, const char *name, struct dsad_model **ret);
/* Maps the model if not yet; on success the model is loaded and *ret references it
 * (dsad_model_ref). Engine errors come back as -EBADMSG etc. with dsa_error_message(). */
int dsad_registry_load(struct dsad *d, const char *name, struct dsad_model **ret);
int dsad_registry_unload(struct dsad *d, const char *name);
/* Rescans the store folder (new files appear, deleted ones that are not loaded disappear). */
int dsad_registry_scan(struct dsad *d);
void dsad_registry_free_all(struct dsad *d);
/* A loaded model's engine handle (its base rung); stays valid while a reference is held. */
const struct dsa_model *dsad_model_engine(const struct dsad_model *m);
/* A loaded model's variant ladder (NULL when not loaded); valid while a reference is held. */
struct dsad_ladder *dsad_model_ladder(const struct dsad_model *m);
const char *dsad_model_name(const struct dsad_model *m);
struct dsad_model *dsad_model_ref(struct dsad_model *m);   /* thread-safe */
void dsad_model_unref(struct dsad_model *m);               /* thread-safe */

/* ---- registry.c, added by the control plane.
 * Lifetime: the registry holds one reference to every model of the store. UnloadModel drops the
 * model out of the registry and marks it unloaded; its engine handle stays valid until the last
 * reference (a session, a request in flight) goes, which may be on a worker. A later LoadModel
 * makes a fresh struct dsad_model. Sessions check dsad_model_loaded() before queueing a request
 * and complete it with -ENOENT once it is false. Any thread. */
bool dsad_model_loaded(const struct dsad_model *m);
/* [A-Za-z0-9_.-]{1,64}, not starting with '.'. */
bool dsad_model_name_valid(const char *name);
/* The registry's models (d->models), in store order; loop thread. */
struct dsad_model *dsad_model_next(const struct dsad_model *m);
/* What ListModels and org.dsa.Model1 show. Loaded models answer from the engine; others from
 * their GGUF header (read once per file version). Strings stay valid until the next registry
 * call. Loop thread. */
struct dsad_model_info {
        const char *name, *path;
        const char *architecture; /* "bert"; "" when the file does not read */
        bool loaded;
        uint32_t hidden_size, layers, n_labels;
        const char *const *labels; /* n_labels names */
        uint64_t file_size;
};
int dsad_model_info(struct dsad_model *m, struct dsad_model_info *ret);
unsigned dsad_registry_n_loaded(const struct dsad *d);
unsigned dsad_registry_n_models(const struct dsad *d);
/* Call after d->config changed (SIGHUP): re-arms the idle-unload timer. */
void dsad_registry_config_changed(struct dsad *d);
/* dsad_registry_unload(): -ENOENT no such model, -ESRCH known but not loaded. */
/* dsad_model_unref() may free the model, so a worker holding the last reference frees the
 * engine handle there; nothing else of the loop thread's is touched. */

/* ---- session.c */
int dsad_session_open(struct dsad *d, sd_bus_message *m, const char *model, uint32_t slots,
                      uint32_t slot_size, struct dsad_session **ret);
int dsad_session_close(struct dsad *d, struct dsad_session *s);
struct dsad_session *dsad_session_find(struct dsad *d, const char *id);
/* Called by uring.c when the session's submit eventfd fired: drains the SQ, hands requests to
 * the scheduler. */
void dsad_session_doorbell(struct dsad_session *s);
/* Called on a worker: writes the response for req into its slot, pushes the CQE, signals the
 * complete pipe. Thread-safe per session. */
void dsad_session_complete(struct dsad_request *req, int status, const void *payload, size_t len);

/* ---- session.c, added by the control plane for api.c (OpenSession, CloseSession,
 * ListSessions). Loop thread. api.c replies to OpenSession with "hhhs" from dsad_session_fds()
 * and dsad_session_id() (sd-bus dups the fds into the reply; session.c keeps its own).
 * dsad_session_open() takes the caller's unique name (sd_bus_message_get_sender) and uid
 * (sd_bus_query_sender_creds) from m, and ties the session to that peer (sd_bus_track or
 * NameOwnerChanged, session.c's choice). dsad_session_open()/dsad_session_close() do not emit
 * anything: api.c calls dsad_api_sessions_changed() after its own calls; when session.c closes
 * a session itself (its peer left) it calls dsad_api_sessions_changed(d). Sessions are the
 * d->sessions list, walked with dsad_session_next(); at exit main closes what is left with
 * dsad_session_close(). Errors of dsad_session_open: -ENOENT no such model, -EINVAL bad
 * geometry (caps of docs/dbus-api.md), -EBADMSG etc. when the model does not load. */
/* ret_complete is the read end of the complete pipe (the write end never leaves session.c). */
int dsad_session_fds(const struct dsad_session *s, int *ret_ring, int *ret_submit, int *ret_complete);
const char *dsad_session_id(const struct dsad_session *s);
const char *dsad_session_owner(const struct dsad_session *s); /* unique bus name */
uint32_t dsad_session_uid(const struct dsad_session *s);
/* Requests completed, failed, and bytes of the memfd. */
void dsad_session_stats(const struct dsad_session *s, uint64_t *ret_completed, uint64_t *ret_failed,
                        uint64_t *ret_shm_bytes);
struct dsad_session *dsad_session_next(const struct dsad_session *s);
/* ---- session.c, added by the data plane. dsad_session_open() without D-Bus (no owner, no
 * peer tracking): ring, doorbell fds and doorbell watch for a model whose reference the call takes
 * over, also on failure. dsad_session_open() is this plus the peer; the ring tests call it
 * directly. Loop thread. */
int dsad__session_new(struct dsad *d, struct dsad_model *model, uint32_t slots, uint32_t slot_size,
                      struct dsad_session **ret);
/* Requests in flight hold a reference; the last unref (any thread, often a worker) unmaps the
 * ring, closes the fds and drops the model. Closed sessions drop their completions. */
struct dsad_session *dsad__session_ref(struct dsad_session *s);
void dsad__session_unref(struct dsad_session *s);
bool dsad__session_closed(const struct dsad_session *s); /* any thread */

/* ---- scheduler.c */
/* batch_max: at most this many requests per engine call (1 = no batching; 0 = DSAD_BATCH_MAX). */
int dsad_scheduler_new(struct dsad *d, unsigned workers, unsigned queue_max, unsigned batch_max,
                       struct dsad_scheduler **ret);
/* Drains in-flight work then stops the workers. */
struct dsad_scheduler *dsad_scheduler_free(struct dsad_scheduler *s);
/* Takes ownership of req; -EBUSY when the queue is full, -EDQUOT (reason in dsa_error_message())
 * when req->uid already has its share of the queue waiting ([limits] queue_share; dsad's own
 * uid has none). On failure req stays the caller's and is never completed by the scheduler.
 * Loop thread. */
int dsad_scheduler_submit(struct dsad_scheduler *s, struct dsad_request *req);
unsigned dsad_scheduler_depth(const struct dsad_scheduler *s);


/* ---- request.c */
/* A request copied out of shared memory and validated: private memory only from here on. */
struct dsad_request {
        struct dsad_session *session; /* referenced while the request lives */
        struct dsad_model *model;     /* referenced */
        uint64_t user_data;
        uint32_t op, flags, pool, slot;
        size_t n_texts;
        char **texts;   /* NUL-terminated copies, valid UTF-8 checked by the tokenizer */
        size_t *lens;
        uint64_t enqueue_usec;
        struct dsad_request *next; /* scheduler queue */
        struct dsad_hints hints;   /* for the policy, from the SQE or D-Bus */
        unsigned tokens;           /* estimated tokens of all texts (dsad_policy_tokens) */
        uint32_t variant;          /* 1 + the rung that ran it (set by the scheduler); 0 none */
        uint32_t uid;              /* the client's, for [limits] queue_share; set before submitting */

        /* ---- added by the control plane: requests from D-Bus (Classify/Embed/Tokenize).
         * api.c builds them with dsad_request_decode() (n_slots 1, slot 0), then sets model
         * (a reference), done, userdata and reply_cap, and session stays NULL. For such a request
         * the scheduler runs dsad_request_run() into a private buffer of reply_cap bytes and
         * calls done(req, status, payload, len) ON THE WORKER instead of
         * dsad_session_complete(): status < 0 is dsad_request_run()'s error (its reason still in
         * the worker's dsa_error_message()), status 0 comes with the response payload (ring.h
         * format), valid only during the call. done never touches sd-bus; it copies what it needs
         * and wakes the loop. The scheduler frees req (dsad_request_free) after done returns.
         * A model that is no longer dsad_model_loaded() completes with -ENOENT as for sessions. */
        void (*done)(struct dsad_request *req, int status, const void *payload, size_t len);
        void *userdata;
        size_t reply_cap;
};
/* Decodes one SQE + payload copied from shared memory (sqe and payload are private copies;
 * payload_len already clamped to the slot size by the caller). -EINVAL with a reason for
 * anything malformed: unknown op or flags, slot out of range, counts or lengths that lie,
 * more than 1024 texts, trailing bytes. Never reads outside payload. */
int dsad_request_decode(const struct dsa_ring_sqe *sqe, const uint8_t *payload, size_t payload_len,
                        uint32_t n_slots, struct dsad_request **ret);
struct dsad_request *dsad_request_free(struct dsad_request *r);
/* Runs req on its model (on a worker) and encodes the response into buf (cap bytes):
 * returns the response length, or -ENOBUFS / -EIO etc. */
ssize_t dsad_request_run(struct dsad_request *req, uint8_t *buf, size_t cap);
/* ---- request.c, added by the data plane: batching. Runs reqs[0..n) (same model, op, flags
 * and pool; m is their engine handle) in one engine call where the op allows, and calls
 * emit(req, status, payload, len, userdata) exactly once per request, in order, on the calling
 * thread: status 0 with the response (ring.h format, at most req->reply_cap bytes, valid during
 * the call) or a negative errno (-ENOBUFS: did not fit in reply_cap). When the joint call fails,
 * each request is run alone so the error lands on the one that caused it. emit may free req. */
typedef void (*dsad_request_emit_t)(struct dsad_request *req, int status, const void *payload,
                                    size_t len, void *userdata);
void dsad_request_run_batch(const struct dsa_model *m, struct dsad_request *const *reqs, size_t n,
                            dsad_request_emit_t emit, void *userdata);

/* ---- uring.c */
int dsad_uring_new(struct dsad *d, struct dsad_uring **ret);
struct dsad_uring *dsad_uring_free(struct dsad_uring *u);
/* Arms a multishot poll on fd; on each wake-up calls dsad_session_doorbell(s). */
int dsad_uring_watch(struct dsad_uring *u, int fd, struct dsad_session *s);
/* Cancels the poll; s is not called after this returns (pending CQEs are dropped). */
int dsad_uring_unwatch(struct dsad_uring *u, int fd, struct dsad_session *s);

/* ---- bus.c */
int dsad_bus_attach(struct dsad *d, const char *address);
void dsad_bus_detach(struct dsad *d);
/* ---- bus.c, added by the control plane: call after sending on d->bus outside an sd-bus
 * callback (replies from uv_async, signals from timers): flushes and re-arms the poll. */
void dsad_bus_flush(struct dsad *d);

/* ---- api.c */
int dsad_api_register(struct dsad *d);
/* Emits PropertiesChanged for Sessions / LoadedModels (loop thread). */
void dsad_api_sessions_changed(struct dsad *d);
void dsad_api_models_changed(struct dsad *d, const char *name, bool loaded);
/* ---- api-policy.c: VariantChanged + Model1 CurrentVariant/VariantReason; Daemon1's
 * OnBattery / BatteryPercentage / PowerProfile changed. Loop thread. */
void dsad_api_variant_changed(struct dsad *d, const char *model, const char *variant, const char *reason);
void dsad_api_power_changed(struct dsad *d, bool battery, bool percent, bool profile);
/* ---- api.c, added by the control plane. */
void dsad_api_unregister(struct dsad *d);
/* Sends sd_notify STATUS=Serving N models, M sessions. */
void dsad_api_notify_status(struct dsad *d);

/* ---- adaptive.c: the policy's loop side. */
int dsad_adaptive_start(struct dsad *d);
void dsad_adaptive_stop(struct dsad *d);
/* Settings changed (SIGHUP, D-Bus): re-evaluate now. Loop thread. */
void dsad_adaptive_settings_changed(struct dsad *d);
/* Any thread: a ladder's level changed; the loop announces it soon. */
void dsad_adaptive_wake(struct dsad *d);
/* A model was loaded or unloaded: its ladder joins or leaves the ticks. Loop thread. */
void dsad_adaptive_models_changed(struct dsad *d);
/* What the tick measured last (GetPolicy). Loop thread. */
struct dsad_adaptive_state {
        double power_w, package_w, core_watts, cpu_pressure, arrival_rate;
        const char *power_source;       /* "rapl" or "model" */
};
void dsad_adaptive_state(struct dsad *d, struct dsad_adaptive_state *ret);

/* ---- config.c */
int dsad_config_load(const char *path, struct dsad_config *c);
void dsad_config_clear(struct dsad_config *c);
/* Fills the built-in defaults (store /var/lib/dsa/models, workers 0, idle 0, queue_max 256;
 * limits: 32 sessions, 1 GiB of rings, half the queue per uid).
 * dsad_config_load() returns -ENOENT (not logged) when the file is missing, -EINVAL after
 * logging file:line for a bad value, and leaves c untouched on failure. */
int dsad_config_defaults(struct dsad_config *c);

/* ---- daemon.c, added by the control plane: the context's life, for main.c. dsad_new() takes
 * the settings already merged (config file, then command line); dsad_run() runs the loop until
 * SIGTERM/SIGINT, then drains. */
struct dsad_options {
        const char *bus;         /* "system", "session" or a D-Bus address */
        const char *config_path; /* file SIGHUP rereads, or NULL */
        bool config_explicit;    /* given on the command line: missing is an error */
        /* Overrides from the command line (< 0 / NULL: unset). */
        const char *store;
        int workers;
        long idle_unload_seconds;
};
int dsad_new(const struct dsad_options *o, struct dsad **ret);
int dsad_run(struct dsad *d);
/* Stops the loop; dsad_run() then returns r (0: clean stop). */
void dsad_quit(struct dsad *d, int r);
struct dsad *dsad_free(struct dsad *d);
/* Logging: stderr with --foreground or outside systemd, journald otherwise. */
void dsad_log_setup(bool foreground);
void dsad_log(int priority, const char *fmt, ...) _printf_(2, 3);
int dsad_log_errno(int priority, int r, const char *fmt, ...) _printf_(3, 4);
