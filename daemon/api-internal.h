/* What api.c (org.dsa.Daemon1: vtable, admin and session methods, setup), api-infer.c
 * (Classify, Embed, Tokenize through the scheduler) and api-model.c (org.dsa.Model1 objects,
 * model names and errors) share. Loop thread only, except where a comment says otherwise. */
#pragma once

#include <pthread.h>
#include <stdlib.h>

#include "daemon.h"

#define OBJECT_PATH "/org/dsa/Daemon1"
#define INTERFACE "org.dsa.Daemon1"
#define MODELS_PATH "/org/dsa/Daemon1/models"
#define MODEL_INTERFACE "org.dsa.Model1"

#define ERROR_NO_SUCH_MODEL "org.dsa.Error.NoSuchModel"
#define ERROR_BAD_MODEL "org.dsa.Error.BadModel"
#define ERROR_NOT_LOADED "org.dsa.Error.NotLoaded"
#define ERROR_NO_SUCH_SESSION "org.dsa.Error.NoSuchSession"
#define ERROR_INVALID_ARGS "org.dsa.Error.InvalidArgs"
#define ERROR_BUSY "org.dsa.Error.Busy"
#define ERROR_FAILED "org.dsa.Error.Failed"
#define ERROR_ACCESS_DENIED "org.dsa.Error.AccessDenied"
#define ERROR_LIMIT_EXCEEDED "org.dsa.Error.LimitExceeded"

struct api_call;

struct dsad_api {
        struct dsad *d;
        sd_bus_slot *slot_daemon, *slot_models, *slot_nodes;
        uv_async_t async;
        bool async_open;
        pthread_mutex_t lock;
        struct api_call *done; /* finished on workers, to reply to; guarded by lock */
        unsigned n_pending;    /* loop thread */
        /* api-infer.c, loop thread: the uids of the last callers of Classify/Embed/Tokenize, by
         * unique bus name (never reused on a bus), so each caller costs one bus query. */
        struct api_uid {
                char sender[32];
                uint32_t uid;
        } uids[64];
        unsigned next_uid;
};

static inline void strv_free(char **v) {
        if (!v)
                return;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(char **, strv_free)

/* ---- api-model.c */
/* 0 for a valid model name, else InvalidArgs in error. */
int dsad__api_check_model_name(const char *name, sd_bus_error *error);
/* Registry errors (dsad_registry_load/unload, dsad_session_open) as the doc's error names. */
int dsad__api_model_error(int r, const char *name, sd_bus_error *error);
/* The org.dsa.Model1 object path of a model; NULL when out of memory. */
char *dsad__api_model_path(const char *name);
/* Adds the org.dsa.Model1 fallback vtable and the node enumerator under MODELS_PATH. */
int dsad__api_model_add(struct dsad *d, struct dsad_api *api);

/* ---- api-policy.c: handlers api.c and api-model.c put in their vtables. */
int dsad__api_method_get_policy(sd_bus_message *m, void *userdata, sd_bus_error *error);
int dsad__api_method_get_variants(sd_bus_message *m, void *userdata, sd_bus_error *error);
int dsad__api_policy_get(sd_bus *bus, const char *path, const char *interface, const char *property,
                         sd_bus_message *reply, void *userdata, sd_bus_error *error);
int dsad__api_policy_set(sd_bus *bus, const char *path, const char *interface, const char *property,
                         sd_bus_message *value, void *userdata, sd_bus_error *error);
/* Model1's Variants, CurrentVariant and VariantReason of model. */
int dsad__api_model_policy_get(struct dsad_model *model, const char *property, sd_bus_message *reply);

/* ---- api-infer.c */
int dsad__api_method_classify(sd_bus_message *m, void *userdata, sd_bus_error *error);
int dsad__api_method_embed(sd_bus_message *m, void *userdata, sd_bus_error *error);
int dsad__api_method_tokenize(sd_bus_message *m, void *userdata, sd_bus_error *error);
/* Replies to every call the workers finished; the uv_async callback (async.data = api) and
 * the last act before the bus goes. */
void dsad__api_dispatch_done(struct dsad_api *api);
void dsad__api_on_async(uv_async_t *a);
