/* Private to engine/: the tokenizer's state, shared by tokenizer-load.c, which builds a
 * WordPiece tokenizer from tokenizer.json, vocab.txt or GGUF (and writes it back to GGUF),
 * tokenizer-bpe.c, which does the same for byte-level BPE, and tokenizer.c, which encodes and
 * decodes with either. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bpe.h"
#include "pretok.h"
#include "tokenizer.h"
#include "wordpiece.h"

struct dsa_gguf;

/* llama.cpp's token types (llama_token_type), as GGUF's tokenizer.ggml.token_type holds them. */
enum {
        DSA__TOKEN_NORMAL = 1,
        DSA__TOKEN_UNKNOWN = 2,
        DSA__TOKEN_CONTROL = 3,
        DSA__TOKEN_USER_DEFINED = 4,
};

#define DSA_TOKENIZER_MAX_PREFIX_LEN 16 /* continuing_subword_prefix bytes */

struct dsa__added_token {
        char *match; /* the text matched: raw content, or normalized content when normalized */
        size_t len;
        int32_t id;
        bool normalized, lstrip, rstrip, single_word;
};

/* One piece of a post-processor template: a special token's id, or where a text goes. */
enum {
        DSA__TEMPLATE_A = -1,
        DSA__TEMPLATE_B = -2,
};
#define DSA__TEMPLATE_MAX 64
struct dsa__template {
        int32_t id[DSA__TEMPLATE_MAX]; /* a token id, DSA__TEMPLATE_A or DSA__TEMPLATE_B */
        int32_t type_id[DSA__TEMPLATE_MAX];
        size_t n;
};

struct dsa_tokenizer {
        enum dsa_tokenizer_kind kind;
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
        /* Byte-level BPE only. */
        struct dsa__bpe bpe;
        struct dsa__pretok pretok;
        struct dsa__template single, pair; /* what DSA_ENCODE_SPECIAL makes of one text, two */
        int32_t bos_id, eos_id;
};

/* id of the NUL-terminated token s, or -ENOENT. */
static inline int32_t dsa__tokenizer_find(const struct dsa_tokenizer *t, const char *s) {
        return dsa__vocab_find(&t->vocab, s, strlen(s));
}

/* Shared by the loaders (tokenizer-load.c). */
struct dsa_tokenizer *dsa__tokenizer_new(enum dsa_tokenizer_kind kind, const struct dsa_tokenizer_options *opts);
/* The per-id arrays for n ids, every token type NORMAL. */
int dsa__tokenizer_alloc(struct dsa_tokenizer *t, size_t n);
/* Registers id (content already in the vocabulary) as an added token matched in the text. */
int dsa__tokenizer_add_token(struct dsa_tokenizer *t, int32_t id, bool normalized, bool lstrip, bool rstrip,
                             bool single_word);
/* model.vocab and added_tokens of a tokenizer.json: allocates t's arrays and fills them. */
int dsa__tokenizer_json_vocab(struct dsa_tokenizer *t, json_object *root, json_object *model);
/* tokenizer.json member key of the given type: -EBADMSG when of another type or missing while
 * required; *ret = NULL when missing and optional. */
int dsa__json_get(json_object *o, const char *key, json_type type, bool required, json_object **ret);
int dsa__json_get_bool(json_object *o, const char *key, bool def, bool *ret);
/* An integer in [0, max). */
int dsa__json_get_id(json_object *v, const char *what, int64_t max, int32_t *ret);
/* GGUF key holding a token id below n; leaves *ret alone when the key is absent. */
int dsa__gguf_get_id(const struct dsa_gguf *g, const char *key, size_t n, int32_t *ret);
/* The vocabulary size of a GGUF tokenizer (tokenizer.ggml.tokens) and its llama.cpp token types
 * (tokenizer.ggml.token_type, as many int32s in the file's mapping, not necessarily aligned;
 * NULL when absent). */
int dsa__gguf_get_vocab(const struct dsa_gguf *g, size_t *ret_n, const int32_t **ret_types);
/* Registers each of the n ids whose GGUF token type is unknown, control or user-defined as an
 * added token: llama.cpp matches those in the raw text. */
int dsa__tokenizer_add_gguf_specials(struct dsa_tokenizer *t, size_t n);
/* Frees the n strings of v (NULL ones too) and v; v may be NULL. */
void dsa__strv_free(char **v, size_t n);

/* Byte-level BPE (tokenizer-bpe.c): the rest of a tokenizer.json whose model is "BPE", a GGUF
 * whose tokenizer.ggml.model is "gpt2", and the GGUF keys that carry it. */
int dsa__tokenizer_bpe_from_json(json_object *root, struct dsa_tokenizer **ret);
int dsa__tokenizer_bpe_from_gguf(const struct dsa_gguf *g, struct dsa_tokenizer **ret);
int dsa__tokenizer_bpe_to_gguf(const struct dsa_tokenizer *t, struct dsa_gguf_writer *w);
