/* Internal to engine/: the regex pre-tokenizer of byte-level BPE tokenizers, Hugging Face's
 * Split(Regex, behavior Isolated) and ByteLevel(use_regex) as they cut a text into words:
 * every match is a word and so is every stretch between two matches. Matching goes through
 * PCRE2 in UTF + UCP mode, JIT-compiled where the JIT is available; \s is rewritten to the
 * Unicode White_Space set that Oniguruma (which HF uses) and Rust mean by it, since PCRE2's own
 * \s also takes U+180E. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* GPT-2's pattern, which HF's ByteLevel pre-tokenizer applies when use_regex is true, and the
 * Llama-3 pattern of Meta's tokenizer.json (a Split before a ByteLevel without regex). */
#define DSA_PRETOK_GPT2 \
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define DSA_PRETOK_LLAMA3                                                                  \
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"               \
        "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

#define DSA_PRETOK_MAX_PATTERN (64u * 1024u)

struct dsa__pretok {
        char *pattern;         /* as the tokenizer gives it; NULL: no regex, a text is one word */
        void *re;              /* pcre2_code */
        bool add_prefix_space; /* ByteLevel's: a text not starting with ' ' gets one first */
};

/* Compiles pattern (len bytes, NUL-free). -EBADMSG with the compiler's reason when it does not
 * compile or is longer than DSA_PRETOK_MAX_PATTERN. */
int dsa__pretok_init(struct dsa__pretok *p, const char *pattern, size_t len);
void dsa__pretok_done(struct dsa__pretok *p);

/* Regex source matching exactly the literal s: HF's Split with a String pattern. malloc'd. */
char *dsa__pretok_escape(const char *s, size_t len);

typedef int (*dsa__pretok_word_fn)(void *userdata, const char *s, size_t len);

/* Calls fn on each word of s (valid UTF-8, len bytes), in order; empty words are skipped.
 * Stops at and returns fn's first negative value; -E2BIG when PCRE2 hits its match limits. */
int dsa__pretok_split(const struct dsa__pretok *p, const char *s, size_t len, dsa__pretok_word_fn fn,
                      void *userdata);
