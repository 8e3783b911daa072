/* libdsa: the client library of dsad, the dsa inference daemon.
 *
 * A struct dsa_client is one D-Bus connection to dsad: it lists, loads and unloads models and
 * reads the daemon's status. A struct dsa_session is one shared-memory ring bound to one model
 * (include/dsa/ring.h): requests go through it without D-Bus, synchronously (dsa_classify(),
 * dsa_embed(), dsa_embed_tokens(), dsa_tokenize(), dsa_nop()) or asynchronously (dsa_session_submit_*() plus
 * dsa_session_get_fd() / dsa_session_dispatch() in the caller's own main loop; libdsa starts no
 * threads).
 *
 * Conventions, for every function below:
 * - Return values: >= 0 on success, a negative errno on failure. Out-parameters are named ret*,
 *   come last, and are written only on success.
 * - Threads: a client and the sessions opened on it share one D-Bus connection and are NOT
 *   thread-safe. Use a client and its sessions from one thread at a time (normally the thread
 *   that created them); for parallel requests from several threads, give each thread its own
 *   client and session. Functions that take no client or session (the *_free() helpers of
 *   returned data) may be called from any thread.
 * - Errors from dsad map to errnos: org.dsa.Error.NoSuchModel and NoSuchSession -ENOENT,
 *   BadModel -EBADMSG, NotLoaded -EALREADY, Busy -EBUSY, InvalidArgs -EINVAL, AccessDenied
 *   -EACCES, LimitExceeded (a per-user limit of dsad.conf's [limits]) -EDQUOT, Failed -EIO; dsad not running (no owner of org.dsa.Daemon1) -ECONNREFUSED; the bus
 *   connection closed -ENOTCONN; dsad died while a session was open -ECONNRESET; no answer in
 *   time -ETIMEDOUT; dsad broke the ring protocol (a forged header, an impossible completion or
 *   response) -EPROTO; a dsad too old to have the method or property called (D-Bus
 *   UnknownMethod, UnknownInterface, UnknownProperty) -EOPNOTSUPP. dsa_client_error_message()
 *   gives the daemon's one-line reason.
 * - A call that takes a callback and fails never invokes the callback.
 * - Structs returned by the library are part of the LIBDSA_0 ABI and, once released, never
 *   change; new fields come with new functions. (Before the first release, 0.1, struct
 *   dsa_tokens gained tokens, struct dsa_result token_embeddings and variant, and struct
 *   dsa_classify_result variant.) */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(DSA_BUILDING_LIBDSA)
#define DSA_EXPORT __attribute__((visibility("default")))
#else
#define DSA_EXPORT
#endif

struct dsa_client;
struct dsa_session;

/* ---- Client: the D-Bus connection to dsad */

/* Connects to the bus dsad is on. address: NULL means $DSA_BUS_ADDRESS when set and non-empty,
 * else the system bus; "system" and "session" name those buses; anything else is a D-Bus
 * address ("unix:path=/run/...", as dbus-daemon --print-address prints it). Does not require
 * dsad to be running: calls made while it is not fail with -ECONNREFUSED (or start it through
 * D-Bus activation, where installed). On success *ret is a new client the caller frees with
 * dsa_client_free(). Errors: -EINVAL (ret NULL), -ENOMEM, or the errno of the failed
 * connection (-ENOENT: no bus socket at that address, -ECONNREFUSED, -EACCES...). */
DSA_EXPORT int dsa_client_new(const char *address, struct dsa_client **ret);

/* Drops the caller's reference. Sessions still open keep the connection alive until they are
 * freed too. Accepts NULL; returns NULL. */
DSA_EXPORT struct dsa_client *dsa_client_free(struct dsa_client *c);

/* The reason for the last failed call on c (or on a session of c, for dsa_session_open()):
 * dsad's D-Bus error message ("no model 'x' in /var/lib/dsa/models"), or what libdsa found
 * wrong with the ring dsad sent. NULL when the last call succeeded or gave no reason. Owned by
 * c; valid until the next call on c or its sessions. */
DSA_EXPORT const char *dsa_client_error_message(const struct dsa_client *c);

/* One model in dsad's store (ListModels). */
struct dsa_model_info {
        char *name;           /* the file name in the store without .gguf */
        bool loaded;          /* mapped by dsad now */
        char *architecture;   /* "bert", ... */
        uint32_t hidden_size;
        uint32_t n_labels;    /* classifier labels; 0 = no classifier head */
};

/* Lists the models in dsad's store. On success *ret is an array of *ret_n entries (NULL when
 * there are none), freed with dsa_model_info_free(*ret, *ret_n). */
DSA_EXPORT int dsa_client_list_models(struct dsa_client *c, struct dsa_model_info **ret,
                                      size_t *ret_n);
/* Frees an array from dsa_client_list_models(), n its length. Accepts NULL; returns NULL.
 * Any thread. */
DSA_EXPORT struct dsa_model_info *dsa_model_info_free(struct dsa_model_info *m, size_t n);

/* Maps a model in dsad (idempotent). Needs no session. Errors: -ENOENT no such model, -EBADMSG
 * the file is not a model dsad can run (reason in dsa_client_error_message()), -EINVAL bad
 * name, -EACCES not authorized (only root, dsad's own uid and callers polkit authorizes for
 * org.dsa.manage-models may). The call allows interactive authorization: where polkit wants the
 * user to authenticate, the authentication agent of the caller's session asks (the call then
 * waits up to 150 s). Requests load their model on demand anyway: this only loads ahead. */
DSA_EXPORT int dsa_client_load_model(struct dsa_client *c, const char *name);

/* Unmaps a model once no request uses it; sessions on it get -ENOENT completions afterwards.
 * Errors: -ENOENT no such model, -EALREADY not loaded, -EACCES not authorized (as
 * dsa_client_load_model()). */
DSA_EXPORT int dsa_client_unload_model(struct dsa_client *c, const char *name);

/* dsad's GetStatus. Fields dsad did not send are 0 (version NULL). */
struct dsa_status {
        char *version;
        uint32_t models;         /* in the store */
        uint32_t loaded_models;
        uint32_t sessions;
        uint32_t queue_depth;    /* requests waiting */
        uint32_t workers;
        uint64_t requests_completed;
        uint64_t requests_failed;
        uint64_t uptime_seconds;
};

/* Reads dsad's status. On success *ret is a new struct freed with dsa_status_free(). */
DSA_EXPORT int dsa_client_status(struct dsa_client *c, struct dsa_status **ret);
/* Accepts NULL; returns NULL. Any thread. */
DSA_EXPORT struct dsa_status *dsa_status_free(struct dsa_status *s);

/* One open session in dsad (ListSessions), any client's. */
struct dsa_session_info {
        char *id;
        char *owner;          /* unique bus name of the owning connection */
        uint32_t uid;         /* owner's uid */
        uint64_t requests_completed;
        uint64_t requests_failed;
        uint64_t shm_bytes;   /* size of its shared memory */
};

/* Lists dsad's sessions. On success *ret is an array of *ret_n entries (NULL when none), freed
 * with dsa_session_info_free(*ret, *ret_n). */
DSA_EXPORT int dsa_client_list_sessions(struct dsa_client *c, struct dsa_session_info **ret,
                                        size_t *ret_n);
/* Accepts NULL; returns NULL. Any thread. */
DSA_EXPORT struct dsa_session_info *dsa_session_info_free(struct dsa_session_info *s, size_t n);

/* ---- The adaptive policy (docs/dbus-api.md, "The adaptive policy"): dsad runs each request on
 * one variant ("rung") of its model, chosen to meet a latency target, a power budget and a
 * minimum accuracy. These calls read and set that policy; dsa_session_set_hints() below adds
 * per-request wishes. A dsad without the policy fails them with -EOPNOTSUPP. */

/* dsad's live picture of its policy (GetPolicy). Fields dsad did not send keep these defaults:
 * -1 for numbers, NULL for strings. */
struct dsa_policy {
        char *mode;                /* Policy: "adaptive", or "fixed:VARIANT" */
        double latency_target_ms;  /* LatencyTarget: ms from submission to result */
        double power_budget_w;     /* PowerBudget in force (battery rules applied), 0 = none */
        double min_accuracy;       /* MinAccuracy in force: accuracy kept, 0..1 of the base's */
        int on_battery;            /* OnBattery: 1 or 0 (0 also without UPower), -1 not sent */
        double battery_percentage; /* BatteryPercentage: 0..100, -1 unknown */
        char *power_profile;       /* PowerProfile: power-profiles-daemon's, "" without it */
        double power_w;            /* Power: watts attributed to dsad now */
        double package_power_w;    /* PackagePower: RAPL package watts, -1 without RAPL */
        char *power_source;        /* PowerSource: "rapl" or "model" (CPU-time model) */
        double core_watts;         /* CoreWatts: watts per busy core the estimate uses */
        double cpu_pressure;       /* CpuPressure: PSI cpu "some" avg10, -1 without PSI */
        double arrival_rate;       /* ArrivalRate: requests per second, all models */
        int64_t queue_depth;       /* QueueDepth: requests waiting */
};

/* Reads dsad's policy. Keys dsad sends that libdsa does not know are ignored. On success *ret
 * is a new struct freed with dsa_policy_free(). */
DSA_EXPORT int dsa_client_get_policy(struct dsa_client *c, struct dsa_policy **ret);
/* Accepts NULL; returns NULL. Any thread. */
DSA_EXPORT struct dsa_policy *dsa_policy_free(struct dsa_policy *p);

/* Set dsad's writable policy properties (LatencyTarget, PowerBudget, MinAccuracy, Policy).
 * They need the polkit action org.dsa.policy (uid 0 always has it): -EACCES otherwise. -EINVAL
 * for a value out of range, checked here first: ms > 0, watts >= 0 (0 = no budget), accuracy
 * 0..1 (of the base model's), all finite; mode "adaptive" or "fixed:VARIANT" (dsad judges
 * VARIANT). The new value applies to requests dsad picks a variant for afterwards. */
DSA_EXPORT int dsa_client_set_latency_target(struct dsa_client *c, double ms);
DSA_EXPORT int dsa_client_set_power_budget(struct dsa_client *c, double watts);
DSA_EXPORT int dsa_client_set_min_accuracy(struct dsa_client *c, double accuracy);
DSA_EXPORT int dsa_client_set_policy_mode(struct dsa_client *c, const char *mode);

/* One latency bucket of a variant: requests of about this many tokens took this long (an
 * exponentially weighted mean of what dsad measured). */
struct dsa_variant_latency {
        uint32_t tokens;
        double ms;
};

/* One variant ("rung") of a loaded model (GetVariants), most accurate first. */
struct dsa_variant_info {
        char *name;              /* "base" (the model itself) or VARIANT of NAME@VARIANT.gguf */
        bool current;            /* the rung the model's requests run on now */
        double accuracy_kept;    /* recorded accuracy over the base's, -1 unknown */
        double accuracy;         /* recorded eval accuracy, -1 unknown */
        uint64_t weight_bytes;
        uint64_t requests;       /* requests it served */
        double energy_j;         /* joules per request of 32 tokens (dsad's power model) */
        size_t n_latency;
        struct dsa_variant_latency *latency; /* n_latency buckets measured so far, by tokens */
};

/* Lists the variants of a loaded model. On success *ret is an array of *ret_n entries, freed
 * with dsa_variant_info_free(*ret, *ret_n). Errors: -ENOENT no such model, -EALREADY not
 * loaded. */
DSA_EXPORT int dsa_client_get_variants(struct dsa_client *c, const char *model,
                                       struct dsa_variant_info **ret, size_t *ret_n);
/* Frees an array from dsa_client_get_variants(), n its length. Accepts NULL; returns NULL. Any
 * thread. */
DSA_EXPORT struct dsa_variant_info *dsa_variant_info_free(struct dsa_variant_info *v, size_t n);

/* The variant a model's requests run on now and why dsad chose it (the CurrentVariant and
 * VariantReason properties of its org.dsa.Model1 object; "" for a model not loaded, and for a
 * reason dsad did not give). On success *ret_variant and *ret_reason (either may be NULL when
 * not wanted) are new strings the caller frees with free(). Errors: -ENOENT no such model. */
DSA_EXPORT int dsa_client_get_current_variant(struct dsa_client *c, const char *model,
                                              char **ret_variant, char **ret_reason);

/* ---- Session: a shared-memory ring bound to one model */

/* Opens a session on model (OpenSession): n_slots requests in flight at most, each request and
 * each response at most slot_size bytes (0 and 0: dsad's defaults, 16 slots of 1 MiB; dsad caps
 * them at 256 slots, 16 MiB each, 256 MiB in all). libdsa maps the ring dsad sends and checks
 * it before use: magic and version, the geometry it asked for, power-of-two queue sizes, every
 * region inside the file, the file sealed against shrinking; -EPROTO (reason in
 * dsa_client_error_message()) when anything is off. Also fetches the model's label names for
 * dsa_classify() and its variant names (dsa_session_get_variants()). The session holds a
 * reference on c: freeing c first is allowed. On success *ret is a new session freed with
 * dsa_session_free(). Errors: -ENOENT no such model, -EBADMSG bad model, -EINVAL bad arguments
 * or caps exceeded, -EDQUOT a per-user limit of dsad (sessions or bytes of shared memory per
 * uid; reason in dsa_client_error_message()), -ECONNREFUSED dsad not running, -EPROTO. */
DSA_EXPORT int dsa_session_open(struct dsa_client *c, const char *model, uint32_t n_slots,
                                uint32_t slot_size, struct dsa_session **ret);

/* Closes the session (CloseSession, best effort), unmaps the ring and closes its fds. Every
 * asynchronous request still pending gets its callback invoked with -ECANCELED first. May be
 * called from a callback of this session: the session is then freed when dsa_session_dispatch()
 * returns. Accepts NULL; returns NULL. */
DSA_EXPORT struct dsa_session *dsa_session_free(struct dsa_session *s);

/* Bounds every wait of this session: a synchronous call, or an asynchronous request not
 * completed within usec of its submission, fails with -ETIMEDOUT (0 = wait forever; default
 * 60 s). The slot of a request that timed out stays reserved until dsad completes it. */
DSA_EXPORT int dsa_session_set_timeout(struct dsa_session *s, uint64_t usec);

/* How long a synchronous call busy-polls the completion queue after submitting, before it
 * sleeps until dsad's completion doorbell rings: a request dsad answers that fast (dsa_nop, a
 * short tokenize) then costs no wake-up, at the price of one CPU kept busy for at most usec per
 * call. 0 never spins; at most 1000 (-EINVAL above). Default 30 us, 0 on a single CPU.
 * Asynchronous requests never spin. */
DSA_EXPORT int dsa_session_set_spin(struct dsa_session *s, uint64_t usec);

/* dsad's id of the session (as ListSessions shows it). Owned by s. NULL when s is NULL. */
DSA_EXPORT const char *dsa_session_get_id(const struct dsa_session *s);

/* The model's label names (its Labels property, read once at open): *ret_labels is owned by s;
 * returns their number (0 for a model without a classifier, or when dsad did not say). */
DSA_EXPORT int dsa_session_get_labels(const struct dsa_session *s, const char *const **ret_labels);

enum dsa_priority {
        DSA_PRIORITY_NORMAL = 0,
        DSA_PRIORITY_HIGH = 1, /* queued ahead of normal requests */
        DSA_PRIORITY_LOW = 2,  /* queued behind every other request */
};

/* What a session's requests ask of dsad's adaptive policy. Zero in a field: no wish. */
struct dsa_hints {
        double min_accuracy;         /* 0..1: run on a variant that keeps at least this share of
                                      * the base model's accuracy, even over the power budget
                                      * (sent in steps of 1/10000, rounded to the nearest) */
        uint32_t max_latency_ms;     /* submission to result: a cheaper variant when the model's
                                      * current one would take longer */
        enum dsa_priority priority;
};

/* Every request submitted on s from now on (synchronous or not) carries *h in its SQE; h NULL
 * resets to no hints (the default). Requests already submitted keep theirs. Errors: -EINVAL
 * for min_accuracy outside [0, 1] or NaN, or an unknown priority. */
DSA_EXPORT int dsa_session_set_hints(struct dsa_session *s, const struct dsa_hints *h);

/* The names of the model's variants (its Variants property, read once at open; "base" is the
 * model itself): *ret_names is owned by s and lives as long as s; returns their number (0 when
 * dsad did not say, as a dsad without the adaptive policy does not). Results name the variant
 * that ran them by these strings. */
DSA_EXPORT int dsa_session_get_variants(const struct dsa_session *s, const char *const **ret_names);

/* ---- Results */

/* One classified text. */
struct dsa_classify_result {
        uint32_t label_id;
        const char *label;    /* the label's name; NULL when the model names no labels */
        size_t n_labels;
        float *logits;        /* n_labels raw scores, as dsad computed them */
        float *probs;         /* n_labels softmax(logits), computed by libdsa */
        const char *variant;  /* the variant that ran the request (its name as
                               * dsa_session_get_variants() lists it, copied into this array's
                               * allocation); NULL when dsad did not say */
};

/* The tokens of one text. */
struct dsa_tokens {
        size_t n_ids;
        int32_t *ids;
        char **tokens;        /* n_ids NUL-terminated vocabulary strings, as the model's tokenizer
                               * names them ("[CLS]", "play", "##ing") */
};

/* Every token's last hidden state of one text (no pooling). */
struct dsa_token_embeddings {
        size_t n_tokens;      /* the text's tokens, special ones included ([CLS] ... [SEP]),
                               * truncated to the model's context length */
        size_t dim;           /* hidden size */
        float *hidden;        /* n_tokens * dim floats, row-major: token t at hidden[t * dim] */
};

/* Frees an array returned by dsa_classify() (one allocation, names included). Accepts NULL;
 * returns NULL. Any thread. */
DSA_EXPORT struct dsa_classify_result *dsa_classify_result_free(struct dsa_classify_result *r);
/* Frees an array returned by dsa_tokenize() (one allocation, ids and strings included). Accepts
 * NULL; returns NULL. Any thread. */
DSA_EXPORT struct dsa_tokens *dsa_tokens_free(struct dsa_tokens *t);
/* Frees an array returned by dsa_embed_tokens() (one allocation). Accepts NULL; returns NULL.
 * Any thread. */
DSA_EXPORT struct dsa_token_embeddings *dsa_token_embeddings_free(struct dsa_token_embeddings *e);

enum dsa_pool {
        DSA_POOL_DEFAULT = 0, /* the model's own default */
        DSA_POOL_CLS = 1,
        DSA_POOL_MEAN = 2,
        DSA_POOL_POOLER = 3,
};

enum dsa_tokenize_flags {
        DSA_TOKENIZE_NO_SPECIAL = 1u << 0, /* no [CLS]/[SEP] */
};

/* ---- Synchronous calls: block the calling thread until dsad answers or the session's timeout
 * passes. texts: n (1..1024) NUL-terminated UTF-8 strings of at most 1 MiB each, which with
 * their lengths must fit one slot (-E2BIG otherwise). Completions of asynchronous requests of
 * the same session that arrive meanwhile are kept for dsa_session_dispatch(). Errors besides the
 * common ones: -EAGAIN every slot is busy with asynchronous requests, -ENOBUFS the response did
 * not fit slot_size, -ENOENT the model was unloaded, -EIO engine failure, -ETIMEDOUT. */

/* Classifies texts: *ret is an array of n results, freed with dsa_classify_result_free(). */
DSA_EXPORT int dsa_classify(struct dsa_session *s, const char *const *texts, size_t n,
                            struct dsa_classify_result **ret);

/* Embeds texts, one pooled vector each: *ret is n * *ret_dim floats, row-major (text i at
 * (*ret)[i * dim]), freed with free(). */
DSA_EXPORT int dsa_embed(struct dsa_session *s, const char *const *texts, size_t n,
                         enum dsa_pool pool, float **ret, size_t *ret_dim);

/* Embeds texts without pooling (the ring's DSA_RING_POOL_NONE): *ret is an array of n struct
 * dsa_token_embeddings, one per text with its own token count, freed with
 * dsa_token_embeddings_free(). The response holds n_tokens * dim floats per text, so size the
 * session's slots for it (4 bytes * hidden size * tokens, plus 4 per text and 8): -ENOBUFS
 * otherwise. */
DSA_EXPORT int dsa_embed_tokens(struct dsa_session *s, const char *const *texts, size_t n,
                                struct dsa_token_embeddings **ret);

/* Tokenizes texts (flags: enum dsa_tokenize_flags): *ret is an array of n struct dsa_tokens
 * with ids and token strings, freed with dsa_tokens_free(). */
DSA_EXPORT int dsa_tokenize(struct dsa_session *s, const char *const *texts, size_t n,
                            unsigned flags, struct dsa_tokens **ret);

/* A round trip through the ring with no work (for latency measurement). */
DSA_EXPORT int dsa_nop(struct dsa_session *s);

/* ---- Asynchronous calls: no threads, the caller's main loop drives them. */

enum dsa_op {
        DSA_OP_NOP = 0,
        DSA_OP_CLASSIFY = 1,
        DSA_OP_EMBED = 2,
        DSA_OP_TOKENIZE = 3,
};

/* What a completed request produced, for its callback. Only the fields of op are set. The
 * arrays belong to libdsa and are freed when the callback returns, unless the callback takes
 * one by copying the pointer and setting the field to NULL (then it frees it as the synchronous
 * call's documentation says). */
struct dsa_result {
        enum dsa_op op;
        size_t n_texts;
        struct dsa_classify_result *classify; /* CLASSIFY: n_texts entries */
        float *embeddings;                    /* EMBED: n_texts * dim floats */
        size_t dim;
        struct dsa_tokens *tokens;            /* TOKENIZE: n_texts entries */
        /* EMBED from dsa_session_submit_embed_tokens(): n_texts entries (and embeddings NULL;
         * dim is set too). */
        struct dsa_token_embeddings *token_embeddings;
        /* The variant that ran the request: one of dsa_session_get_variants()'s names, owned by
         * the session (valid while it lives); NULL when dsad did not say (NOP, TOKENIZE, a dsad
         * without the adaptive policy). */
        const char *variant;
};

/* Invoked from dsa_session_dispatch() (and from dsa_session_free() with -ECANCELED), on the
 * thread that calls it, once per submitted request: status 0 and result set, or a negative
 * errno and result NULL (-ETIMEDOUT, -ECONNRESET dsad died, -ENOBUFS, -EIO, -EPROTO...). The
 * callback may submit new requests, make synchronous calls on s, and free s. */
typedef void (*dsa_callback_t)(struct dsa_session *s, uint64_t id, int status,
                               struct dsa_result *result, void *userdata);

/* Queue a request and return at once. On success *ret_id (ret_id may be NULL) is the request's
 * id, as the callback will see it; callback will be invoked exactly once. Errors: -EAGAIN no
 * free slot (dispatch completions, then retry), -E2BIG the texts do not fit a slot, -EINVAL,
 * -ECONNRESET / -ENOTCONN dsad or the bus is gone; callback is then never invoked. */
DSA_EXPORT int dsa_session_submit_classify(struct dsa_session *s, const char *const *texts,
                                           size_t n, dsa_callback_t callback, void *userdata,
                                           uint64_t *ret_id);
DSA_EXPORT int dsa_session_submit_embed(struct dsa_session *s, const char *const *texts,
                                        size_t n, enum dsa_pool pool, dsa_callback_t callback,
                                        void *userdata, uint64_t *ret_id);
DSA_EXPORT int dsa_session_submit_embed_tokens(struct dsa_session *s, const char *const *texts,
                                               size_t n, dsa_callback_t callback, void *userdata,
                                               uint64_t *ret_id);
DSA_EXPORT int dsa_session_submit_tokenize(struct dsa_session *s, const char *const *texts,
                                           size_t n, unsigned flags, dsa_callback_t callback,
                                           void *userdata, uint64_t *ret_id);
DSA_EXPORT int dsa_session_submit_nop(struct dsa_session *s, dsa_callback_t callback,
                                      void *userdata, uint64_t *ret_id);

/* A file descriptor to watch for POLLIN (g_unix_fd_add, uv_poll, epoll...): it becomes readable
 * when completions are ready, when a pending request's timeout passes, and when dsad or the bus
 * goes away; then call dsa_session_dispatch(). (It is an epoll fd over the ring's completion
 * pipe, the D-Bus connection, a timer and a wake-up eventfd of libdsa's own, owned by s: do not
 * read or close it.) Spurious
 * wake-ups are possible. Returns the fd, or -EINVAL when s is NULL. */
DSA_EXPORT int dsa_session_get_fd(const struct dsa_session *s);

/* Never blocks: collects completions, timeouts and bus events, then invokes the callbacks of
 * every request that finished, in completion order. Returns the number of callbacks invoked
 * (0 is fine: a spurious wake-up), or a negative errno when s is NULL. A session broken by dsad's
 * death still dispatches its pending callbacks (with -ECONNRESET) and then returns 0. */
DSA_EXPORT int dsa_session_dispatch(struct dsa_session *s);

/* Requests submitted and not yet dispatched (pending ones and finished ones awaiting
 * dsa_session_dispatch()). */
DSA_EXPORT int dsa_session_get_n_pending(const struct dsa_session *s);

#ifdef __cplusplus
}
#endif
