/* The tokenizers of the models we run, identical in output to Hugging Face tokenizers:
 * - WordPiece with BERT's normalizer and pre-tokenizer (BertNormalizer + BertPreTokenizer +
 *   WordPiece + BERT TemplateProcessing). Loaded from a tokenizer.json, a vocab.txt, or a GGUF
 *   (llama.cpp's "bert" convention: word-initial pieces carry U+2581, continuation pieces have
 *   "##" removed); written back into GGUF in that same convention so llama.cpp reads our files.
 *   Internally the vocabulary is kept in HF form ("##" continuations).
 * - Byte-level BPE, GPT-2's and Llama 3's: added tokens split out first, a regex pre-tokenizer
 *   (Split + ByteLevel, or ByteLevel with GPT-2's regex), GPT-2's byte-to-unicode mapping, merges
 *   by rank, TemplateProcessing. Loaded from a tokenizer.json or a GGUF in llama.cpp's "gpt2"
 *   convention (tokenizer.ggml.pre "llama-bpe" or "gpt-2", or our dsa.tokenizer.pattern), and
 *   written back in it. Tokens are the byte-level strings of tokenizer.json ("Ġworld").
 * Unicode via utf8proc, regexes via PCRE2. A tokenizer is immutable once loaded: any number of
 * threads may encode and decode with one at the same time. */
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

enum dsa_tokenizer_kind {
        DSA_TOKENIZER_WORDPIECE = 0,
        DSA_TOKENIZER_BPE = 1, /* byte-level */
};

/* tokenizer.json contents (json, len bytes). The BERT pipeline (WordPiece) and byte-level BPE
 * (no normalizer; pre-tokenizer ByteLevel, or Sequence[Split(Regex, Isolated), ByteLevel without
 * regex]; decoder ByteLevel; post-processor TemplateProcessing, ByteLevel or a Sequence of them)
 * are accepted; anything else is -EOPNOTSUPP with a reason, a malformed file -EBADMSG. */
int dsa_tokenizer_from_hf_json(const char *json, size_t len, struct dsa_tokenizer **ret);
/* vocab.txt (one token a line; id = line number) with explicit options. */
int dsa_tokenizer_from_vocab_txt(const char *path, const struct dsa_tokenizer_options *opts,
                                 struct dsa_tokenizer **ret);
/* tokenizer.ggml.* keys plus our dsa.tokenizer.* keys when present. Model "bert": without our
 * keys, llama.cpp's own defaults (lowercase, strip accents). Model "gpt2": the pre-tokenizer
 * regex is dsa.tokenizer.pattern when present, else the one tokenizer.ggml.pre names
 * ("llama-bpe", "llama3", "llama-v3": Llama 3's, with llama.cpp's ignore_merges; "gpt-2": GPT-2's);
 * another name without our key is -EOPNOTSUPP. BOS/EOS are added as tokenizer.ggml.add_bos_token
 * and add_eos_token say (default: true/false for Llama 3's pre, false/false otherwise). */
int dsa_tokenizer_from_gguf(const struct dsa_gguf *g, struct dsa_tokenizer **ret);
/* Writes tokenizer.ggml.* and dsa.tokenizer.* keys. BPE: tokenizer.ggml.pre is "llama-bpe" or
 * "gpt-2" when the regex is exactly Llama 3's or GPT-2's, else "dsa-custom" (which llama.cpp
 * refuses rather than tokenizing differently). */
int dsa_tokenizer_to_gguf(const struct dsa_tokenizer *t, struct dsa_gguf_writer *w);
struct dsa_tokenizer *dsa_tokenizer_free(struct dsa_tokenizer *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_tokenizer *, dsa_tokenizer_free);

size_t dsa_tokenizer_n_vocab(const struct dsa_tokenizer *t);
/* The vocabulary string of id in HF form ("##ing", byte-level "Ġworld"), or NULL when out of
 * range. */
const char *dsa_tokenizer_token(const struct dsa_tokenizer *t, int32_t id);
/* id of token, or -ENOENT. */
int32_t dsa_tokenizer_lookup(const struct dsa_tokenizer *t, const char *token);
/* DSA_TOKENIZER_WORDPIECE or DSA_TOKENIZER_BPE; -EINVAL for NULL. */
int dsa_tokenizer_kind(const struct dsa_tokenizer *t);
/* [CLS], [SEP] and [PAD] ids, or -ENOENT when the tokenizer has none (BPE usually has none). */
int32_t dsa_tokenizer_cls_id(const struct dsa_tokenizer *t);
int32_t dsa_tokenizer_sep_id(const struct dsa_tokenizer *t);
int32_t dsa_tokenizer_pad_id(const struct dsa_tokenizer *t);
/* Beginning and end of text, or -ENOENT. BPE: from GGUF's bos/eos_token_id; from tokenizer.json,
 * the special token the template puts before (after) the text, else the first added token named
 * <|begin_of_text|>, <s> or <|endoftext|> (<|end_of_text|>, </s>, <|endoftext|>). WordPiece has
 * neither: -ENOENT. */
int32_t dsa_tokenizer_bos_id(const struct dsa_tokenizer *t);
int32_t dsa_tokenizer_eos_id(const struct dsa_tokenizer *t);
/* [UNK] and [MASK] ids, or -ENOENT when the vocabulary has none. */
int32_t dsa_tokenizer_unk_id(const struct dsa_tokenizer *t);
int32_t dsa_tokenizer_mask_id(const struct dsa_tokenizer *t);
/* The normalizer options in effect. Returns 1 when the tokenizer follows llama.cpp's WPM
 * instead of Hugging Face (a GGUF without dsa.tokenizer.* keys: then only lowercase matters;
 * accents go through llama.cpp's first-codepoint NFD and words have no length limit), else 0.
 * -EOPNOTSUPP for BPE, which has no normalizer. */
int dsa_tokenizer_get_options(const struct dsa_tokenizer *t, struct dsa_tokenizer_options *ret);

enum {
        /* Add the post-processor's special tokens. WordPiece: [CLS] a [SEP] (pair: [CLS] a [SEP]
         * b [SEP]). BPE: what its template says, which may be nothing, or a BOS. */
        DSA_ENCODE_SPECIAL = 1 << 0,
};

struct dsa_encoding {
        int32_t *ids;
        int32_t *type_ids; /* 0 for the first text and its specials, 1 for the pair's (BPE: as
                            * the template says) */
        size_t n;
};

/* Encodes text (UTF-8, len bytes; invalid UTF-8 is -EILSEQ) and, when pair != NULL, a second
 * text. max_len > 0 truncates to at most max_len ids including specials, HF's longest_first
 * strategy for pairs. On success ret is filled with malloc'd arrays. */
int dsa_tokenizer_encode(const struct dsa_tokenizer *t, const char *text, size_t len,
                         const char *pair, size_t pair_len, unsigned flags, size_t max_len,
                         struct dsa_encoding *ret);
void dsa_encoding_clear(struct dsa_encoding *e);

/* The text of n ids, malloc'd and NUL-terminated in *ret (length without the NUL in *ret_len).
 * Special and other added tokens come out as their text. BPE: the bytes behind the byte-level
 * characters, as they are: ids that cut a character leave invalid UTF-8, so a caller decoding
 * one id at a time can join the pieces (HF's decode would put U+FFFD there). WordPiece: HF's
 * WordPiece decoder ("##" pieces joined to the word before, others after a space, then its
 * cleanup of " ." " ," " 's" and the like). -EINVAL for an id outside the vocabulary. */
int dsa_tokenizer_decode(const struct dsa_tokenizer *t, const int32_t *ids, size_t n, char **ret,
                         size_t *ret_len);
