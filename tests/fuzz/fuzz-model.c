/* libFuzzer target for the model loader (engine/model.c open_gguf, engine/bert-load.c,
 * engine/llama-load.c): any input must give a model or a negative errno with a reason, and a
 * model that loads must also run: a padded 1 x 4 forward, a ragged first-token-only one with a
 * padding token (the packed path, token pruning), and the classifier when there is one; for a
 * decoder, logits and NLL over 9 ids with its attention variant. So a shape the loader let
 * through that the kernels cannot take shows up as an out-of-bounds access here. Built with
 * -fsanitize=fuzzer under DSA_FUZZ, or with fuzz-main.c as a plain corpus replayer. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "engine/model-internal.h"

/* Forwards are skipped above this many n_layer * n_embd * n_ff, so a grown config cannot take
 * seconds per input; loading is already bounded by the input's size. */
#define FUZZ_MAX_WORK 1000000.0

#define N_TOK 4
#define N_LM_TOK 9 /* three blocks of the tiny Llamas' 4 */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile float sink;

/* A decoder: logits and per-token NLL over N_LM_TOK ids (refused when past the context). */
static void run_lm(const struct dsa_model *m) {
        const struct dsa_llama_config *c = dsa_model_llama_config(m);
        int32_t ids[N_LM_TOK];
        double nll[N_LM_TOK];
        float *logits;

        if ((double) c->n_layer * c->n_embd * c->n_ff > FUZZ_MAX_WORK)
                return;
        for (size_t t = 0; t < N_LM_TOK; t++)
                ids[t] = (int32_t) ((t * 5 + 2) % c->n_vocab);
        logits = calloc((size_t) N_LM_TOK * c->n_vocab, sizeof(float));
        if (!logits)
                abort();
        if (dsa_model_lm_forward(m, ids, N_LM_TOK, logits, NULL, NULL) >= 0)
                sink += logits[0];
        if (dsa_model_lm_nll(m, ids, N_LM_TOK, nll, NULL) >= 0)
                sink += (float) nll[0];
        free(logits);
}

static void run(const struct dsa_model *m) {
        const struct dsa_bert_config *c = dsa_model_bert_config(m);
        const uint8_t mask_full[N_TOK] = { 1, 1, 1, 1 }, mask_pad[N_TOK] = { 1, 1, 1, 0 };
        int32_t ids[N_TOK];
        float *hidden, *logits;

        if ((double) c->n_layer * c->n_embd * c->n_ff > FUZZ_MAX_WORK)
                return;
        for (size_t t = 0; t < N_TOK; t++)
                ids[t] = (int32_t) ((t * 5 + 2) % c->n_vocab);
        hidden = calloc((size_t) N_TOK * c->n_embd, sizeof(float));
        logits = calloc(c->n_labels ? c->n_labels : 1, sizeof(float));
        if (!hidden || !logits)
                abort();

        /* T may exceed the context: the forward must then refuse, not read past wpe. */
        struct dsa_batch b = { .B = 1, .T = N_TOK, .ids = ids, .mask = mask_full };
        if (dsa_model_forward(m, &b, hidden, NULL) >= 0) {
                sink += hidden[0];
                if (c->n_labels > 0 && dsa_model_classify(m, &b, hidden, logits) >= 0)
                        sink += logits[0];
        }
        struct dsa_batch rb = { .B = 1, .T = N_TOK, .ids = ids, .mask = mask_pad, .ragged = true, .first_only = true };
        if (dsa_model_forward(m, &rb, hidden, NULL) >= 0 && c->n_labels > 0 &&
            dsa_model_classify(m, &rb, hidden, logits) >= 0)
                sink += logits[0];
        free(hidden);
        free(logits);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct dsa_model *m = NULL;
        int r;

        dsa_error_clear();
        r = dsa__model_open_gguf_memory(data, size, &m);
        if (r < 0) {
                /* Every refusal says why. */
                if (m || !dsa_error_message(r) || !dsa_error_message(r)[0]) {
                        fprintf(stderr, "open failed with %d and no reason\n", r);
                        abort();
                }
                return 0;
        }
        if (dsa_model_arch(m) == DSA_ARCH_LLAMA)
                run_lm(m);
        else
                run(m);
        dsa_model_free(m);
        return 0;
}
