/* WordPiece tokenizer with BERT's normalizer and pre-tokenizer, identical in output to Hugging
 * Face tokenizers' BertNormalizer + BertPreTokenizer + WordPiece + BERT TemplateProcessing.
 * Loaded from a tokenizer.json, a vocab.txt, or a GGUF (llama.cpp's "bert" convention: word-
 * initial pieces carry U+2581, continuation pieces have "##" removed); written back into GGUF
 * in that same convention so llama.cpp reads our files. Internally the vocabulary is kept in
 * HF form ("##" continuations). Unicode via utf8proc. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/macro.h"

struct dsa_gguf;
struct dsa_gguf_writer;

struct dsa_tokenizer_options {
        bool clean_text;           /* drop control chars and U+FFFD, whitespace -> ' ' */
        bool handle_chinese_chars; /* spaces around CJK ideographs */
        bool lowercase;
        int strip_accents;         /* -1: follow lowercase (HF null), 0 no, 1 yes */
        uint32_t max_input_chars_per_word; /* longer words become [UNK]; HF default 100 */
};

/* Hugging Face's BERT defaults (BertNormalizer() with WordPiece's max_input_chars_per_word of
 * 100), as an initializer: struct dsa_tokenizer_options o = DSA_TOKENIZER_OPTIONS_BERT;
 * A vocab.txt folder starts from these before tokenizer_config.json, and so does a GGUF before
 * its dsa.tokenizer.* keys. */
#define DSA_TOKENIZER_OPTIONS_BERT                                                              \
        {                                                                                       \
                .clean_text = true, .handle_chinese_chars = true, .lowercase = true,            \
                .strip_accents = -1, .max_input_chars_per_word = 100,                           \
        }

struct dsa_tokenizer;

/* tokenizer.json contents (json, len bytes). Only the BERT pipeline is accepted; anything else
 * is -EOPNOTSUPP with a reason. */
int dsa_tokenizer_from_hf_json(const char *json, size_t len, struct dsa_tokenizer **ret);
/* vocab.txt (one token a line; id = line number) with explicit options. */
int dsa_tokenizer_from_vocab_txt(const char *path, const struct dsa_tokenizer_options *opts,
                                 struct dsa_tokenizer **ret);
/* tokenizer.ggml.* keys (model "bert") plus our dsa.tokenizer.* options when present; without
 * them, llama.cpp's own defaults (lowercase, strip accents). */
int dsa_tokenizer_from_gguf(const struct dsa_gguf *g, struct dsa_tokenizer **ret);
/* Writes tokenizer.ggml.* and dsa.tokenizer.* keys. */
int dsa_tokenizer_to_gguf(const struct dsa_tokenizer *t, struct dsa_gguf_writer *w);
struct dsa_tokenizer *dsa_tokenizer_free(struct dsa_tokenizer *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_tokenizer *, dsa_tokenizer_free);

size_t dsa_tokenizer_n_vocab(const struct dsa_tokenizer *t);
/* The vocabulary string of id in HF form ("##ing"), or NULL when out of range. */
const char *dsa_tokenizer_token(const struct dsa_tokenizer *t, int32_t id);
/* id of token, or -ENOENT. */
int32_t dsa_tokenizer_lookup(const struct dsa_tokenizer *t, const char *token);
int32_t dsa_tokenizer_cls_id(const struct dsa_tokenizer *t);
int32_t dsa_tokenizer_sep_id(const struct dsa_tokenizer *t);
int32_t dsa_tokenizer_pad_id(const struct dsa_tokenizer *t);
/* [UNK] and [MASK] ids, or -ENOENT when the vocabulary has none. */
int32_t dsa_tokenizer_unk_id(const struct dsa_tokenizer *t);
int32_t dsa_tokenizer_mask_id(const struct dsa_tokenizer *t);
/* The normalizer options in effect. Returns 1 when the tokenizer follows llama.cpp's WPM
 * instead of Hugging Face (a GGUF without dsa.tokenizer.* keys: then only lowercase matters;
 * accents go through llama.cpp's first-codepoint NFD and words have no length limit), else 0. */
int dsa_tokenizer_get_options(const struct dsa_tokenizer *t, struct dsa_tokenizer_options *ret);

enum {
        DSA_ENCODE_SPECIAL = 1 << 0, /* add [CLS] ... [SEP] (pair: [CLS] a [SEP] b [SEP]) */
};

struct dsa_encoding {
        int32_t *ids;
        int32_t *type_ids; /* 0 for the first text and its specials, 1 for the pair's */
        size_t n;
};

/* Encodes text (UTF-8, len bytes; invalid UTF-8 is -EILSEQ) and, when pair != NULL, a second
 * text. max_len > 0 truncates to at most max_len ids including specials, HF's longest_first
 * strategy for pairs. On success ret is filled with malloc'd arrays. */
int dsa_tokenizer_encode(const struct dsa_tokenizer *t, const char *text, size_t len,
                         const char *pair, size_t pair_len, unsigned flags, size_t max_len,
                         struct dsa_encoding *ret);
void dsa_encoding_clear(struct dsa_encoding *e);
