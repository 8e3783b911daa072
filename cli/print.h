/* dsactl's output of inference results, one piece of code for the in-process verbs (infer.c)
 * and the ones dsad answers (online.c), so both print the same bytes for the same numbers:
 * plain text, or one JSON object per input text (JSON Lines). Engine-free and libdsa-free:
 * plain arrays in, stdout out. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* tokenize: {"text","ids","tokens"}, or the tokens on one line and the ids on the next. */
void cli_print_tokens(const char *text, const int32_t *ids, const char *const *tokens, size_t n, bool json);

/* classify: {"text","label","label_id","logits","probs"} plus "variant" when variant is not
 * NULL (the variant of the model dsad ran it on), or "label<TAB>prob<TAB>text" (no variant). The
 * label is the argmax of the L logits (the first on ties), probs their softmax (in double);
 * labels (L names) may be NULL, then labels read "LABEL_<i>" as the engine names them. */
void cli_print_classify(const char *text, const float *logits, size_t L, const char *const *labels,
                        const char *variant, bool json);

/* embed: {"text","embedding"}, or the C floats on one line. */
void cli_print_embedding(const char *text, const float *v, size_t C, bool json);

/* embed --pool none: {"text","hidden":[[...],...]}, or one line of C floats per token. */
void cli_print_hidden(const char *text, const float *hidden, size_t T, size_t C, bool json);
