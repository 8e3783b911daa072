/* Encoding with Hugging Face's order of work: split the raw text on added tokens (those marked
 * "normalized": false), normalize each remaining piece, split again on normalized added tokens,
 * pre-tokenize, run the model (WordPiece, or byte-level BPE over the regex's words), then
 * truncate longest_first and apply the post-processor's template ([CLS]/[SEP] for BERT).
 * Decoding, and the accessors. The tokenizer itself is built in tokenizer-load.c and
 * tokenizer-bpe.c. */
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

struct bpe_words {
        const struct dsa_tokenizer *t;
        struct dsa__bpe_scratch scratch;
        struct dsa__ids *out;
};

static int bpe_word(void *userdata, const char *s, size_t len) {
        struct bpe_words *w = userdata;
        return dsa__bpe_encode(&w->t->bpe, s, len, &w->scratch, w->out);
}

/* Text between added tokens: valid UTF-8, since the text is and added tokens of a BPE
 * tokenizer must be, which PCRE2 relies on. */
static int encode_bpe(const struct dsa_tokenizer *t, const char *s, size_t len, struct dsa__ids *out) {
        struct bpe_words w = { .t = t, .out = out };
        int r = dsa__pretok_split(&t->pretok, s, len, bpe_word, &w);

        dsa__bpe_scratch_done(&w.scratch);
        return r;
}

static int encode_piece(const struct dsa_tokenizer *t, const char *s, size_t len,
                        struct dsa__ids *out) {
        _cleanup_free_ uint32_t *cps = NULL, *norm = NULL;
        size_t n, n_norm;
        int r;

        /* No normalizer: the normalized added tokens match the same text. */
        if (t->kind == DSA_TOKENIZER_BPE)
                return t->any_normalized ? split_on_added(t, s, len, true, encode_bpe, out)
                                         : encode_bpe(t, s, len, out);
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

/* HF's truncate_encodings() with TruncationStrategy::LongestFirst: how many of the na and nb
 * ids to keep so that with n_special more there are at most max_len. */
static int truncate_longest_first(size_t *na, size_t *nb, bool pair, size_t n_special, size_t max_len) {
        size_t m, n1 = *na, n2 = *nb;
        bool swap = false;

        if (max_len == 0 || *na + *nb + n_special <= max_len)
                return 0;
        if (max_len < n_special)
                return dsa__error(-EINVAL, "max_len %zu leaves no room for the %zu special tokens",
                                  max_len, n_special);
        m = max_len - n_special;
        if (!pair) {
                *na = m;
                return 0;
        }
        if (n1 > n2) {
                swap = true;
                n1 = *nb;
                n2 = *na;
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
        *na = MIN(*na, n1);
        *nb = MIN(*nb, n2);
        return 0;
}

/* BERT's post-processor as a template: [CLS] A [SEP] (B [SEP]); without specials A (B), since
 * a missing [CLS] or [SEP] is a negative errno that must not pass for a text's place. */
static void bert_template(const struct dsa_tokenizer *t, bool pair, bool special, struct dsa__template *tp) {
        if (special)
                *tp = (struct dsa__template) {
                        .id = { t->cls_id, DSA__TEMPLATE_A, t->sep_id, DSA__TEMPLATE_B, t->sep_id },
                        .type_id = { 0, 0, 0, 1, 1 },
                        .n = pair ? 5 : 3,
                };
        else
                *tp = (struct dsa__template) {
                        .id = { DSA__TEMPLATE_A, DSA__TEMPLATE_B },
                        .type_id = { 0, 1 },
                        .n = pair ? 2 : 1,
                };
}

int dsa_tokenizer_encode(const struct dsa_tokenizer *t, const char *text, size_t len,
                         const char *pair, size_t pair_len, unsigned flags, size_t max_len,
                         struct dsa_encoding *ret) {
        _cleanup_free_ int32_t *a_ids = NULL, *b_ids = NULL;
        struct dsa__ids a = {}, b = {};
        struct dsa__template bert;
        const struct dsa__template *tp;
        bool special = flags & DSA_ENCODE_SPECIAL;
        size_t n_special = 0, na, nb, n = 0, k = 0;
        int32_t *ids, *types;
        int r;

        if (!t || (!text && len > 0) || !ret || (flags & ~(unsigned) DSA_ENCODE_SPECIAL))
                return -EINVAL;
        if (t->kind == DSA_TOKENIZER_BPE)
                tp = pair ? &t->pair : &t->single;
        else {
                if (special && (t->cls_id < 0 || t->sep_id < 0))
                        return dsa__error(-ENOENT, "tokenizer has no [CLS] or [SEP] token");
                bert_template(t, pair, special, &bert);
                tp = &bert;
        }
        for (size_t i = 0; special && i < tp->n; i++)
                n_special += tp->id[i] >= 0;

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
        r = truncate_longest_first(&na, &nb, pair, n_special, max_len);
        if (r < 0)
                return r;

        for (size_t i = 0; i < tp->n; i++)
                n += tp->id[i] == DSA__TEMPLATE_A ? na : tp->id[i] == DSA__TEMPLATE_B ? nb : special;
        ids = malloc((n ? n : 1) * sizeof(int32_t));
        types = malloc((n ? n : 1) * sizeof(int32_t));
        if (!ids || !types) {
                free(ids);
                free(types);
                return -ENOMEM;
        }
        /* HF's TemplateProcessing: without specials the texts still take the template's type ids. */
        for (size_t i = 0; i < tp->n; i++) {
                const int32_t *src = tp->id[i] == DSA__TEMPLATE_A ? a.v : tp->id[i] == DSA__TEMPLATE_B ? b.v : NULL;
                size_t m = tp->id[i] == DSA__TEMPLATE_A ? na : tp->id[i] == DSA__TEMPLATE_B ? nb : special;
                for (size_t j = 0; j < m; j++) {
                        ids[k] = src ? src[j] : tp->id[i];
                        types[k++] = tp->type_id[i];
                }
        }
        *ret = (struct dsa_encoding) { .ids = ids, .type_ids = types, .n = k };
        return 0;
}

/* ---- decoding */

struct buf {
        char *s;
        size_t n;
};

static void buf_put(struct buf *b, const char *s, size_t len) {
        memcpy(b->s + b->n, s, len);
        b->n += len;
}

/* Rust's str::replace(from, to) in place, for a to no longer than from. */
static size_t replace_all(char *s, size_t len, const char *from, const char *to) {
        size_t fl = strlen(from), tl = strlen(to), w = 0;

        for (size_t i = 0; i < len;)
                if (len - i >= fl && memcmp(s + i, from, fl) == 0) {
                        memmove(s + w, to, tl);
                        w += tl;
                        i += fl;
                } else
                        s[w++] = s[i++];
        return w;
}

/* HF's WordPiece decoder with cleanup, one token (its joining space included) at a time. */
static void decode_wordpiece(const struct dsa_tokenizer *t, const int32_t *ids, size_t n, struct buf *b) {
        static const char *const cleanup[][2] = {
                { " .", "." }, { " ?", "?" }, { " !", "!" }, { " ,", "," }, { " ' ", "'" },
                { " n't", "n't" }, { " 'm", "'m" }, { " do not", " don't" }, { " 's", "'s" },
                { " 've", "'ve" }, { " 're", "'re" },
        };
        size_t prefix_len = strlen(t->prefix);

        for (size_t i = 0; i < n; i++) {
                const char *s = t->vocab.tokens[ids[i]];
                size_t len = t->vocab.lens[ids[i]], start = b->n;
                if (i > 0 && prefix_len > 0 && len >= prefix_len && memcmp(s, t->prefix, prefix_len) == 0) {
                        s += prefix_len;
                        len -= prefix_len;
                } else if (i > 0)
                        buf_put(b, " ", 1);
                buf_put(b, s, len);
                for (size_t k = 0; k < ELEMENTSOF(cleanup); k++)
                        b->n = start + replace_all(b->s + start, b->n - start, cleanup[k][0], cleanup[k][1]);
        }
}

/* HF's ByteLevel decoder; added tokens as their text. */
static void decode_bpe(const struct dsa_tokenizer *t, const int32_t *ids, size_t n, struct buf *b) {
        for (size_t i = 0; i < n; i++) {
                const char *s = t->vocab.tokens[ids[i]];
                size_t len = t->vocab.lens[ids[i]], m;
                if (t->token_type[ids[i]] != DSA__TOKEN_NORMAL ||
                    dsa__bytelevel_decode(s, len, b->s + b->n, &m) < 0)
                        buf_put(b, s, len);
                else
                        b->n += m;
        }
}

int dsa_tokenizer_decode(const struct dsa_tokenizer *t, const int32_t *ids, size_t n, char **ret,
                         size_t *ret_len) {
        struct buf b = {};
        size_t cap = 1;

        if (!t || (!ids && n > 0) || !ret || !ret_len)
                return -EINVAL;
        /* Decoding never makes a token longer, save the space before a WordPiece word. */
        for (size_t i = 0; i < n; i++) {
                if (ids[i] < 0 || (size_t) ids[i] >= t->vocab.n)
                        return dsa__error(-EINVAL, "id %d at %zu is outside the vocabulary", ids[i], i);
                if (!size_add_ok(cap, t->vocab.lens[ids[i]] + 1, &cap))
                        return -ENOMEM;
        }
        b.s = malloc(cap);
        if (!b.s)
                return -ENOMEM;
        if (t->kind == DSA_TOKENIZER_BPE)
                decode_bpe(t, ids, n, &b);
        else
                decode_wordpiece(t, ids, n, &b);
        b.s[b.n] = 0;
        *ret = b.s;
        *ret_len = b.n;
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

int dsa_tokenizer_kind(const struct dsa_tokenizer *t) {
        return t ? (int) t->kind : -EINVAL;
}

int32_t dsa_tokenizer_bos_id(const struct dsa_tokenizer *t) {
        return t ? t->bos_id : -EINVAL;
}

int32_t dsa_tokenizer_eos_id(const struct dsa_tokenizer *t) {
        return t ? t->eos_id : -EINVAL;
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
        if (t->kind != DSA_TOKENIZER_WORDPIECE)
                return -EOPNOTSUPP;
        *ret = t->wp.opts;
        return t->wp.flavour == DSA__WPM_LLAMA;
}
