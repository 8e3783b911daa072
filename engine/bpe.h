/* Internal to engine/: the byte-level BPE model of GPT-2 and Llama 3 as Hugging Face tokenizers
 * runs it (tokenizers/src/models/bpe: merge_word, Word::merge_all) and GPT-2's byte-to-unicode
 * mapping. A word's bytes start as one symbol each; the lowest-ranked merge, leftmost first, is
 * applied until none applies, through a priority queue, so a word of n bytes costs O(n log n). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wordpiece.h"

struct dsa__bpe_slot; /* merge table entry */

struct dsa__bpe {
        const struct dsa__vocab *vocab;
        struct dsa__bpe_slot *slots; /* (left, right) -> (rank, merged id), open addressing */
        size_t n_slots;
        int32_t *merges;             /* left, right of each rank, in the file's order */
        size_t n_merges, max_merges;
        int32_t byte_id[256];        /* id of each byte's one-character token, or -1 */
        int32_t unk_id;              /* < 0: a byte without a token is dropped, as HF does */
        bool fuse_unk;               /* consecutive unknown bytes give one unk */
        bool ignore_merges;          /* a word that is a token is that token (Llama 3) */
};

/* Room for max_merges merges over vocab, which must outlive b. -E2BIG when too many. */
int dsa__bpe_init(struct dsa__bpe *b, const struct dsa__vocab *vocab, size_t max_merges);
/* Adds the next merge (rank = merges so far). -ENOENT when the merged string is no token. As in
 * HF, a pair given twice keeps its last rank. */
int dsa__bpe_add_merge(struct dsa__bpe *b, int32_t left, int32_t right);
/* Looks up the byte tokens once the vocabulary is complete. */
void dsa__bpe_finish(struct dsa__bpe *b);
void dsa__bpe_done(struct dsa__bpe *b);

/* Per-call buffers, so one tokenizer can encode on several threads at once. */
struct dsa__bpe_scratch {
        void *syms, *heap;
        char *str;
        size_t cap_syms, cap_heap, cap_str;
};
void dsa__bpe_scratch_done(struct dsa__bpe_scratch *sc);

/* Appends the ids of one word (raw bytes, before the byte-level mapping). */
int dsa__bpe_encode(const struct dsa__bpe *b, const char *s, size_t len, struct dsa__bpe_scratch *sc,
                    struct dsa__ids *out);

/* GPT-2's bytes_to_unicode(): s as the string of its bytes' characters, into out (room for
 * 2 * len bytes, not NUL-terminated); returns the length. */
size_t dsa__bytelevel_encode(const char *s, size_t len, char *out);
/* The inverse, into out (room for len bytes). -EILSEQ when s holds a character outside the
 * mapping; HF's ByteLevel decoder then takes the token's own bytes, and so do we. */
int dsa__bytelevel_decode(const char *s, size_t len, char *out, size_t *ret_len);
