/* dsactl's verbs that ask dsad, through libdsa: classify, embed and tokenize on a model dsad
 * serves (one session per run, sized for the largest request), and the control verbs list,
 * ps, status, load and unload (policy.c adds policy). Output goes through print.c, so it is byte
 * for byte what the in-process verbs print for the same numbers (classify --json adds the
 * variant dsad ran). */
#pragma once

#include <stdbool.h>

struct dsa_client;
struct json_object;

/* Texts per request (and per engine call in-process), so both paths batch alike. */
#define CLI_CHUNK 256

/* The bus of --bus (global, before the verb, or the verb's own): "system", "session" or a
 * D-Bus address; NULL means $DSA_BUS_ADDRESS, else the system bus (libdsa's rule). */
extern const char *cli_bus;

/* Whether -m MODEL names a file or folder to run in-process (it contains '/', ends in .gguf,
 * or exists) rather than a model of dsad's. */
bool cli_model_is_local(const char *model);

struct cli_online_opts {
        const char *verb;  /* "classify", "embed" or "tokenize" */
        const char *model; /* dsad's name of it */
        bool json;
        bool no_special;   /* tokenize */
        const char *pool;  /* embed: cls, mean, pooler or none */
        /* Hints for dsad's adaptive policy (classify, embed), 0 or NULL: no wish. Plain fields,
         * as the engine's headers the inference verbs include clash with <dsa/dsa.h>. */
        double min_accuracy;           /* 0..1 */
        unsigned long max_latency_ms;  /* <= UINT32_MAX */
        const char *priority;          /* "high", "normal" or "low" */
};

/* Runs the inference verb on dsad over the texts of argv (or stdin when argc is 0); returns the
 * exit code. */
int cli_online_infer(const struct cli_online_opts *o, int argc, char **argv);

/* Connects to dsad's bus (--bus, else libdsa's default); prints why and returns -errno on
 * failure. */
int cli_online_connect(struct dsa_client **ret);

/* Prints "dsactl: what: reason (dsad's message)" for error r of a call on c (may be NULL) and
 * returns 1, the exit code. */
int cli_online_error(struct dsa_client *c, int r, const char *what);

/* The start of a control verb without arguments: its options (--json when json is not NULL,
 * --bus, --help), then the bus. -1 when the verb goes on with the client in *ret, else the exit
 * status to return. */
int cli_online_control_open(int argc, char **argv, const char *verb, bool *json, struct dsa_client **ret);

/* policy.c: the adaptive policy's lines of dsactl status, added to status_json (a JSON object)
 * when it is not NULL, else printed. Prints nothing for a dsad without the policy. 0, or 1 (the
 * exit code) after printing why it failed. */
int cli_policy_status(struct dsa_client *c, struct json_object *status_json);
