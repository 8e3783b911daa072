/* Private to engine/: the tokenizer's state, shared by tokenizer-load.c, which builds it from
 * tokenizer.json, vocab.txt or GGUF (and writes it back to GGUF), and tokenizer.c, which
 * encodes with it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tokenizer.h"
#include "wordpiece.h"

#define DSA_TOKENIZER_MAX_PREFIX_LEN 16 /* continuing_subword_prefix bytes */

struct dsa__added_token {
        char *match; /* the text matched: raw content, or normalized content when normalized */
        size_t len;
        int32_t id;
        bool normalized, lstrip, rstrip, single_word;
};

struct dsa_tokenizer {
        struct dsa__vocab vocab;
        bool *not_model;      /* per id: an added token the WordPiece model does not know */
        int32_t *token_type;  /* per id, llama.cpp's types, for GGUF */
        struct dsa__wordpiece wp;
        struct dsa__added_token *added;
        size_t n_added;
        bool any_normalized;
        bool first_byte[2][256]; /* [normalized][b]: some added token starts with byte b */
        int32_t cls_id, sep_id, pad_id, mask_id, unk_id;
        char prefix[DSA_TOKENIZER_MAX_PREFIX_LEN + 1];
};

/* id of the NUL-terminated token s, or -ENOENT. */
static inline int32_t dsa__tokenizer_find(const struct dsa_tokenizer *t, const char *s) {
        return dsa__vocab_find(&t->vocab, s, strlen(s));
}
