/* Internal to engine/: the pieces of the BERT pipeline below the tokenizer API. A hashed
 * vocabulary, BertNormalizer + BertPreTokenizer + WordPiece as Hugging Face tokenizers runs them,
 * and the variant llama.cpp's WPM tokenizer runs for GGUF files without our dsa.tokenizer.* keys.
 * Text here is always valid UTF-8: tokenizer.c checks it before anything reaches these. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* Token strings by id, and an open-addressing index from string to id. */
struct dsa__vocab {
        char **tokens;     /* id -> NUL-terminated string, NULL until set */
        uint32_t *lens;    /* id -> strlen */
        size_t n;
        int32_t *slots;    /* -1 empty, else id */
        size_t n_slots;    /* power of two, >= 2 * n */
};

/* Room for n ids, none set yet. */
int dsa__vocab_init(struct dsa__vocab *v, size_t n);
/* Sets id's string (copied). -EEXIST when the string is already another id's, -EINVAL when id
 * is out of range or already set. */
int dsa__vocab_set(struct dsa__vocab *v, int32_t id, const char *s, size_t len);
/* -ENOENT or the id. */
int32_t dsa__vocab_find(const struct dsa__vocab *v, const char *s, size_t len);
void dsa__vocab_done(struct dsa__vocab *v);

enum dsa__wpm_flavour {
        DSA__WPM_HF,    /* Hugging Face tokenizers, exactly */
        DSA__WPM_LLAMA, /* llama.cpp's llm_tokenizer_wpm, for GGUF files that carry no options */
};

struct dsa__wordpiece {
        const struct dsa__vocab *vocab;
        struct dsa_tokenizer_options opts;
        enum dsa__wpm_flavour flavour;
        int32_t unk_id;            /* < 0: a word that cannot be matched is an error */
        const char *prefix;        /* continuing_subword_prefix, "##" */
        size_t prefix_len;
        const bool *not_model;     /* per id: added token outside the model, never a piece; may be NULL */
};

/* A growing id list. */
struct dsa__ids {
        int32_t *v;
        size_t n, cap;
};
int dsa__ids_push(struct dsa__ids *ids, int32_t id);

/* Codepoints of valid UTF-8; -EILSEQ when it is not. *ret is malloc'd (at least one slot). */
int dsa__utf8_decode(const char *s, size_t len, uint32_t **ret, size_t *ret_n);
/* UTF-8 of n codepoints (valid ones: they come from dsa__utf8_decode() or the normalizer),
 * malloc'd and NUL-terminated. */
int dsa__utf8_encode(const uint32_t *cps, size_t n, char **ret, size_t *ret_len);
/* Rust's char::is_whitespace: the White_Space property. */
bool dsa__is_white_space(uint32_t c);

/* Runs the normalizer over cps (HF flavour), giving normalized codepoints in *ret. */
int dsa__bert_normalize(const struct dsa_tokenizer_options *o, const uint32_t *cps, size_t n,
                        uint32_t **ret, size_t *ret_n);

/* Pre-tokenizes normalized codepoints and appends the WordPiece ids of every word. For the llama
 * flavour cps are the raw codepoints: llama.cpp normalizes as it splits. */
int dsa__wordpiece_encode(const struct dsa__wordpiece *wp, const uint32_t *cps, size_t n,
                          struct dsa__ids *out);
