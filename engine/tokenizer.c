/* BERT encoding with Hugging Face's order of work: split the raw text on added tokens (those
 * marked "normalized": false), normalize each remaining piece, split again on normalized added
 * tokens, pre-tokenize, run WordPiece, then add [CLS]/[SEP] and truncate longest_first. The
 * tokenizer itself is built in tokenizer-load.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "tokenizer-internal.h"

/* ---- encoding */

static uint32_t char_at(const char *s, size_t len, size_t i) {
        utf8proc_int32_t cp = -1;
        utf8proc_iterate((const uint8_t *) s + i, (utf8proc_ssize_t) MIN(len - i, 4), &cp);
        return cp < 0 ? 0 : (uint32_t) cp;
}

static size_t char_before(const char *s, size_t i) {
        do
                i--;
        while (i > 0 && ((uint8_t) s[i] & 0xc0) == 0x80);
        return i;
}

/* Rust's is_alphanumeric() or '_', HF's word boundary for single_word tokens. */
static bool is_word_char(uint32_t c) {
        utf8proc_category_t k = utf8proc_category((utf8proc_int32_t) c);
        return c == '_' || (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
               (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

struct match {
        size_t start, end; /* extent removed from the text, lstrip/rstrip included */
        int32_t id;
};

/* Leftmost-longest added token at or after from, as HF's aho-corasick split does. */
static bool find_added(const struct dsa_tokenizer *t, const char *s, size_t len, size_t from,
                       bool normalized, struct match *ret) {
        for (size_t i = from; i < len; i++) {
                const struct dsa__added_token *best = NULL;
                /* Most positions start no added token: skip them without the scan. */
                if (!t->first_byte[normalized][(uint8_t) s[i]])
                        continue;
                for (size_t j = 0; j < t->n_added; j++) {
                        const struct dsa__added_token *a = &t->added[j];
                        if (a->normalized != normalized || a->len > len - i ||
                            (uint8_t) a->match[0] != (uint8_t) s[i] ||
                            memcmp(a->match, s + i, a->len) != 0)
                                continue;
                        if (a->single_word &&
                            ((i > 0 && is_word_char(char_at(s, len, char_before(s, i)))) ||
                             (i + a->len < len && is_word_char(char_at(s, len, i + a->len)))))
                                continue;
                        if (!best || a->len > best->len)
                                best = a;
                }
                if (best) {
                        size_t start = i, end = i + best->len;
                        if (best->lstrip)
                                while (start > from &&
                                       dsa__is_white_space(char_at(s, len, char_before(s, start))))
                                        start = char_before(s, start);
                        if (best->rstrip)
                                while (end < len && dsa__is_white_space(char_at(s, len, end)))
                                        end += (size_t) utf8proc_utf8class[(uint8_t) s[end]];
                        *ret = (struct match) { start, end, best->id };
                        return true;
                }
        }
        return false;
}

typedef int (*encode_fn)(const struct dsa_tokenizer *t, const char *s, size_t len,
                         struct dsa__ids *out);

/* Splits s on the added tokens of one kind (normalized or raw), as HF's split does: each match
 * gives its id, and the text between matches goes through encode. */
static int split_on_added(const struct dsa_tokenizer *t, const char *s, size_t len, bool normalized,
                          encode_fn encode, struct dsa__ids *out) {
        size_t at = 0;
        struct match m;
        int r;

        while (at < len) {
                size_t end = find_added(t, s, len, at, normalized, &m) ? m.start : len;
                r = encode(t, s + at, end - at, out);
                if (r < 0)
                        return r;
                if (end == len)
                        break;
                r = dsa__ids_push(out, m.id);
                if (r < 0)
                        return r;
                at = m.end;
        }
        return 0;
}

static int encode_wordpiece(const struct dsa_tokenizer *t, const char *s, size_t len,
                            struct dsa__ids *out) {
        _cleanup_free_ uint32_t *cps = NULL;
        size_t n;
        int r;

        r = dsa__utf8_decode(s, len, &cps, &n);
        if (r < 0)
                return r;
        return dsa__wordpiece_encode(&t->wp, cps, n, out);
}

/* Normalized text: split on normalized added tokens, WordPiece the rest. */
static int encode_normalized(const struct dsa_tokenizer *t, const uint32_t *cps, size_t n,
                             struct dsa__ids *out) {
        _cleanup_free_ char *s = NULL;
        size_t len;
        int r;

        if (!t->any_normalized)
                return dsa__wordpiece_encode(&t->wp, cps, n, out);
        r = dsa__utf8_encode(cps, n, &s, &len);
        if (r < 0)
                return r;
        return split_on_added(t, s, len, true, encode_wordpiece, out);
}

static int encode_piece(const struct dsa_tokenizer *t, const char *s, size_t len,
                        struct dsa__ids *out) {
        _cleanup_free_ uint32_t *cps = NULL, *norm = NULL;
        size_t n, n_norm;
        int r;

        r = dsa__utf8_decode(s, len, &cps, &n);
        if (r < 0)
                return r;
        if (t->wp.flavour == DSA__WPM_LLAMA)
                return dsa__wordpiece_encode(&t->wp, cps, n, out);
        r = dsa__bert_normalize(&t->wp.opts, cps, n, &norm, &n_norm);
        if (r < 0)
                return r;
        return encode_normalized(t, norm, n_norm, out);
}

static int encode_text(const struct dsa_tokenizer *t, const char *s, size_t len,
                       struct dsa__ids *out) {
        /* Reject invalid UTF-8 up front, so no piece is half encoded when we fail. */
        for (size_t i = 0; i < len;) {
                utf8proc_int32_t cp;
                utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *) s + i,
                                                      (utf8proc_ssize_t) MIN(len - i, 4), &cp);
                if (k <= 0)
                        return dsa__error(-EILSEQ, "text is not valid UTF-8 at byte %zu", i);
                i += (size_t) k;
        }
        return split_on_added(t, s, len, false, encode_piece, out);
}

void dsa_encoding_clear(struct dsa_encoding *e) {
        if (!e)
                return;
        free(e->ids);
        free(e->type_ids);
        *e = (struct dsa_encoding) {};
}

int dsa_tokenizer_encode(const struct dsa_tokenizer *t, const char *text, size_t len,
                         const char *pair, size_t pair_len, unsigned flags, size_t max_len,
                         struct dsa_encoding *ret) {
        _cleanup_free_ int32_t *a_ids = NULL, *b_ids = NULL;
        struct dsa__ids a = {}, b = {};
        bool special = flags & DSA_ENCODE_SPECIAL;
        size_t n_special = special ? (pair ? 3 : 2) : 0, na, nb, n, k = 0;
        int32_t *ids, *types;
        int r;

        if (!t || (!text && len > 0) || !ret || (flags & ~(unsigned) DSA_ENCODE_SPECIAL))
                return -EINVAL;
        if (special && (t->cls_id < 0 || t->sep_id < 0))
                return dsa__error(-ENOENT, "tokenizer has no [CLS] or [SEP] token");

        r = encode_text(t, text, len, &a);
        a_ids = a.v;
        if (r < 0)
                return r;
        if (pair) {
                r = encode_text(t, pair, pair_len, &b);
                b_ids = b.v;
                if (r < 0)
                        return r;
        }
        na = a.n;
        nb = b.n;

        /* HF's truncate_encodings() with TruncationStrategy::LongestFirst. */
        if (max_len > 0 && na + nb + n_special > max_len) {
                size_t m, n1 = na, n2 = nb;
                bool swap = false;
                if (max_len < n_special)
                        return dsa__error(-EINVAL, "max_len %zu leaves no room for the %zu special tokens",
                                          max_len, n_special);
                m = max_len - n_special;
                if (!pair)
                        na = m;
                else {
                        if (n1 > n2) {
                                swap = true;
                                n1 = nb;
                                n2 = na;
                        }
                        n2 = n1 > m ? n1 : MAX(n1, m - n1);
                        if (n1 + n2 > m) {
                                n1 = m / 2;
                                n2 = n1 + m % 2;
                        }
                        if (swap) {
                                size_t tmp = n1;
                                n1 = n2;
                                n2 = tmp;
                        }
                        na = MIN(na, n1);
                        nb = MIN(nb, n2);
                }
        }

        n = na + nb + n_special;
        ids = malloc((n ? n : 1) * sizeof(int32_t));
        types = malloc((n ? n : 1) * sizeof(int32_t));
        if (!ids || !types) {
                free(ids);
                free(types);
                return -ENOMEM;
        }
#define PUT(id_, type_)                 \
        do {                            \
                ids[k] = (id_);         \
                types[k++] = (type_);   \
        } while (0)
        if (special)
                PUT(t->cls_id, 0);
        for (size_t i = 0; i < na; i++)
                PUT(a.v[i], 0);
        if (special)
                PUT(t->sep_id, 0);
        if (pair) {
                for (size_t i = 0; i < nb; i++)
                        PUT(b.v[i], 1);
                if (special)
                        PUT(t->sep_id, 1);
        }
#undef PUT
        *ret = (struct dsa_encoding) { .ids = ids, .type_ids = types, .n = k };
        return 0;
}

/* ---- accessors */

size_t dsa_tokenizer_n_vocab(const struct dsa_tokenizer *t) {
        return t ? t->vocab.n : 0;
}

const char *dsa_tokenizer_token(const struct dsa_tokenizer *t, int32_t id) {
        if (!t || id < 0 || (size_t) id >= t->vocab.n)
                return NULL;
        return t->vocab.tokens[id];
}

int32_t dsa_tokenizer_lookup(const struct dsa_tokenizer *t, const char *token) {
        if (!t || !token)
                return -EINVAL;
        return dsa__tokenizer_find(t, token);
}

int32_t dsa_tokenizer_cls_id(const struct dsa_tokenizer *t) {
        return t ? t->cls_id : -EINVAL;
}

int32_t dsa_tokenizer_sep_id(const struct dsa_tokenizer *t) {
        return t ? t->sep_id : -EINVAL;
}

int32_t dsa_tokenizer_pad_id(const struct dsa_tokenizer *t) {
        return t ? t->pad_id : -EINVAL;
}

int32_t dsa_tokenizer_unk_id(const struct dsa_tokenizer *t) {
        return t ? t->unk_id : -EINVAL;
}

int32_t dsa_tokenizer_mask_id(const struct dsa_tokenizer *t) {
        return t ? t->mask_id : -EINVAL;
}

int dsa_tokenizer_get_options(const struct dsa_tokenizer *t, struct dsa_tokenizer_options *ret) {
        if (!t || !ret)
                return -EINVAL;
        *ret = t->wp.opts;
        return t->wp.flavour == DSA__WPM_LLAMA;
}
