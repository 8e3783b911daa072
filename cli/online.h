/* dsactl's verbs that ask dsad, through libdsa: classify, embed and tokenize on a model dsad
 * serves (one session per run, sized for the largest request), and the control verbs list,
 * ps, status, load and unload. Output goes through print.c, so it is byte for byte what the
 * in-process verbs print for the same numbers. */
#pragma once

#include <stdbool.h>

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
};

/* Runs the inference verb on dsad over the texts of argv (or stdin when argc is 0); returns the
 * exit code. */
int cli_online_infer(const struct cli_online_opts *o, int argc, char **argv);
