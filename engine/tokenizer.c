/* The BERT tokenizer: loading from tokenizer.json, vocab.txt and GGUF, writing to GGUF, and
 * encoding with Hugging Face's order of work: split the raw text on added tokens (those marked
 * "normalized": false), normalize each remaining piece, split again on normalized added tokens,
 * pre-tokenize, run WordPiece, then add [CLS]/[SEP] and truncate longest_first. */
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "gguf.h"
#include "tokenizer.h"
#include "wordpiece.h"

#define MAX_PREFIX_LEN 16
#define PHANTOM "\xe2\x96\x81" /* U+2581, llama.cpp's word-initial mark */
#define PHANTOM_LEN 3

/* llama.cpp's token types (llama_token_type). */
enum {
        TOKEN_TYPE_NORMAL = 1,
        TOKEN_TYPE_UNKNOWN = 2,
        TOKEN_TYPE_CONTROL = 3,
        TOKEN_TYPE_USER_DEFINED = 4,
};

struct added_token {
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
        struct added_token *added;
        size_t n_added;
        bool any_normalized;
        bool first_byte[2][256]; /* [normalized][b]: some added token starts with byte b */
        int32_t cls_id, sep_id, pad_id, mask_id, unk_id;
        char prefix[MAX_PREFIX_LEN + 1];
};

struct dsa_tokenizer *dsa_tokenizer_free(struct dsa_tokenizer *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n_added; i++)
                free(t->added[i].match);
        free(t->added);
        free(t->not_model);
        free(t->token_type);
        dsa__vocab_done(&t->vocab);
        free(t);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_tokenizer *, dsa_tokenizer_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put);

static struct dsa_tokenizer *tokenizer_new(const struct dsa_tokenizer_options *opts) {
        struct dsa_tokenizer *t = calloc(1, sizeof(*t));

        if (!t)
                return NULL;
        t->cls_id = t->sep_id = t->pad_id = t->mask_id = t->unk_id = -ENOENT;
        strcpy(t->prefix, "##");
        t->wp.opts = *opts;
        t->wp.flavour = DSA__WPM_HF;
        return t;
}

/* Allocates the per-id arrays once the vocabulary size is known. */
static int tokenizer_alloc(struct dsa_tokenizer *t, size_t n) {
        int r = dsa__vocab_init(&t->vocab, n);
        if (r < 0)
                return r == -E2BIG ? dsa__error(-EBADMSG, "vocabulary of %zu tokens is too large", n) : r;
        t->not_model = calloc(n ? n : 1, sizeof(bool));
        t->token_type = malloc((n ? n : 1) * sizeof(int32_t));
        if (!t->not_model || !t->token_type)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                t->token_type[i] = TOKEN_TYPE_NORMAL;
        return 0;
}

static int32_t find_str(const struct dsa_tokenizer *t, const char *s) {
        return dsa__vocab_find(&t->vocab, s, strlen(s));
}

/* Wires the WordPiece model to the vocabulary once everything is loaded. */
static int tokenizer_finish(struct dsa_tokenizer *t) {
        for (size_t i = 0; i < t->vocab.n; i++)
                if (!t->vocab.tokens[i])
                        return dsa__error(-EBADMSG, "vocabulary has no token with id %zu", i);
        t->wp.vocab = &t->vocab;
        t->wp.not_model = t->not_model;
        t->wp.prefix = t->prefix;
        t->wp.prefix_len = strlen(t->prefix);
        if (t->unk_id < 0)
                t->unk_id = find_str(t, "[UNK]");
        t->wp.unk_id = t->unk_id;
        if (t->cls_id < 0)
                t->cls_id = find_str(t, "[CLS]");
        if (t->sep_id < 0)
                t->sep_id = find_str(t, "[SEP]");
        if (t->pad_id < 0)
                t->pad_id = find_str(t, "[PAD]");
        if (t->mask_id < 0)
                t->mask_id = find_str(t, "[MASK]");
        return 0;
}

static int utf8_encode(const uint32_t *cps, size_t n, char **ret, size_t *ret_len) {
        char *s = malloc(n * 4 + 1);
        size_t len = 0;

        if (!s)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                len += (size_t) utf8proc_encode_char((utf8proc_int32_t) cps[i], (uint8_t *) s + len);
        s[len] = 0;
        *ret = s;
        *ret_len = len;
        return 0;
}

/* Registers an added token (its id already holds content in the vocabulary). Normalized ones
 * match the normalized text, so their content is normalized too, as HF does. */
static int add_token(struct dsa_tokenizer *t, int32_t id, bool normalized, bool lstrip, bool rstrip,
                     bool single_word) {
        const char *content = t->vocab.tokens[id];
        size_t len = t->vocab.lens[id];
        struct added_token *a, *v;
        int r;

        if (len == 0)
                return 0;
        v = realloc(t->added, (t->n_added + 1) * sizeof(*v));
        if (!v)
                return -ENOMEM;
        t->added = v;
        a = &t->added[t->n_added];
        *a = (struct added_token) { .id = id, .normalized = normalized, .lstrip = lstrip,
                                    .rstrip = rstrip, .single_word = single_word };
        if (normalized && t->wp.flavour == DSA__WPM_HF) {
                _cleanup_free_ uint32_t *cps = NULL, *norm = NULL;
                size_t n, n_norm;
                r = dsa__utf8_decode(content, len, &cps, &n);
                if (r < 0)
                        return dsa__error(r, "added token is not valid UTF-8");
                r = dsa__bert_normalize(&t->wp.opts, cps, n, &norm, &n_norm);
                if (r < 0)
                        return r;
                r = utf8_encode(norm, n_norm, &a->match, &a->len);
                if (r < 0)
                        return r;
                if (a->len == 0) {
                        free(a->match);
                        return 0;
                }
                t->any_normalized = true;
        } else {
                a->normalized = false;
                a->match = strndup(content, len);
                if (!a->match)
                        return -ENOMEM;
                a->len = len;
        }
        t->first_byte[a->normalized][(uint8_t) a->match[0]] = true;
        t->n_added++;
        return 0;
}

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

static bool is_ws(uint32_t c) {
        return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
               (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
               c == 0x205f || c == 0x3000;
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
                const struct added_token *best = NULL;
                /* Most positions start no added token: skip them without the scan. */
                if (!t->first_byte[normalized][(uint8_t) s[i]])
                        continue;
                for (size_t j = 0; j < t->n_added; j++) {
                        const struct added_token *a = &t->added[j];
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
                                while (start > from && is_ws(char_at(s, len, char_before(s, start))))
                                        start = char_before(s, start);
                        if (best->rstrip)
                                while (end < len && is_ws(char_at(s, len, end)))
                                        end += (size_t) utf8proc_utf8class[(uint8_t) s[end]];
                        *ret = (struct match) { start, end, best->id };
                        return true;
                }
        }
        return false;
}

/* Normalized text: split on normalized added tokens, WordPiece the rest. */
static int encode_normalized(const struct dsa_tokenizer *t, const uint32_t *cps, size_t n,
                             struct dsa__ids *out) {
        _cleanup_free_ char *s = NULL;
        size_t len, at = 0;
        struct match m;
        int r;

        if (!t->any_normalized)
                return dsa__wordpiece_encode(&t->wp, cps, n, out);
        r = utf8_encode(cps, n, &s, &len);
        if (r < 0)
                return r;
        while (at < len) {
                _cleanup_free_ uint32_t *piece = NULL;
                size_t end = find_added(t, s, len, at, true, &m) ? m.start : len, n_piece;
                r = dsa__utf8_decode(s + at, end - at, &piece, &n_piece);
                if (r < 0)
                        return r;
                r = dsa__wordpiece_encode(&t->wp, piece, n_piece, out);
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
        size_t at = 0;
        struct match m;
        int r;

        /* Reject invalid UTF-8 up front, so no piece is half encoded when we fail. */
        for (size_t i = 0; i < len;) {
                utf8proc_int32_t cp;
                utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *) s + i,
                                                      (utf8proc_ssize_t) MIN(len - i, 4), &cp);
                if (k <= 0)
                        return dsa__error(-EILSEQ, "text is not valid UTF-8 at byte %zu", i);
                i += (size_t) k;
        }
        while (at < len) {
                size_t end = find_added(t, s, len, at, false, &m) ? m.start : len;
                r = encode_piece(t, s + at, end - at, out);
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
        return find_str(t, token);
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

/* ---- tokenizer.json */

static int json_get(json_object *o, const char *key, json_type type, bool required,
                    json_object **ret) {
        json_object *v = NULL;

        if (!json_object_object_get_ex(o, key, &v) || !v) {
                if (required)
                        return dsa__error(-EBADMSG, "tokenizer.json: \"%s\" is missing", key);
                *ret = NULL;
                return 0;
        }
        if (!json_object_is_type(v, type))
                return dsa__error(-EBADMSG, "tokenizer.json: \"%s\" has the wrong type", key);
        *ret = v;
        return 0;
}

static int json_get_bool(json_object *o, const char *key, bool def, bool *ret) {
        json_object *v = NULL;
        int r = json_get(o, key, json_type_boolean, false, &v);
        if (r < 0)
                return r;
        *ret = v ? json_object_get_boolean(v) : def;
        return 0;
}

static int json_get_id(json_object *v, const char *what, int64_t max, int32_t *ret) {
        int64_t id;

        if (!json_object_is_type(v, json_type_int))
                return dsa__error(-EBADMSG, "tokenizer.json: %s is not an integer", what);
        errno = 0;
        id = json_object_get_int64(v);
        if (errno != 0 || id < 0 || id >= max)
                return dsa__error(-EBADMSG, "tokenizer.json: %s is out of range", what);
        *ret = (int32_t) id;
        return 0;
}

static int parse_normalizer(json_object *root, struct dsa_tokenizer_options *o) {
        json_object *n, *type, *v;
        int r;

        r = json_get(root, "normalizer", json_type_object, false, &n);
        if (r < 0)
                return r;
        if (!n) {
                *o = (struct dsa_tokenizer_options) { .strip_accents = 0,
                                                      .max_input_chars_per_word = 100 };
                return 0;
        }
        r = json_get(n, "type", json_type_string, true, &type);
        if (r < 0)
                return r;
        if (strcmp(json_object_get_string(type), "BertNormalizer") != 0)
                return dsa__error(-EOPNOTSUPP, "tokenizer.json: normalizer '%s' is not supported, only BertNormalizer",
                                  json_object_get_string(type));
        r = json_get_bool(n, "clean_text", true, &o->clean_text);
        if (r < 0)
                return r;
        r = json_get_bool(n, "handle_chinese_chars", true, &o->handle_chinese_chars);
        if (r < 0)
                return r;
        r = json_get_bool(n, "lowercase", true, &o->lowercase);
        if (r < 0)
                return r;
        if (!json_object_object_get_ex(n, "strip_accents", &v) || !v)
                o->strip_accents = -1;
        else if (json_object_is_type(v, json_type_boolean))
                o->strip_accents = json_object_get_boolean(v);
        else
                return dsa__error(-EBADMSG, "tokenizer.json: \"strip_accents\" has the wrong type");
        return 0;
}

/* The [CLS]/[SEP] ids of a BERT post-processor: TemplateProcessing (first and last special
 * token of the single template) or BertProcessing. */
static int parse_post_processor(json_object *root, struct dsa_tokenizer *t) {
        json_object *p, *type, *v;
        const char *ty;
        int r;

        r = json_get(root, "post_processor", json_type_object, false, &p);
        if (r < 0 || !p)
                return r;
        r = json_get(p, "type", json_type_string, true, &type);
        if (r < 0)
                return r;
        ty = json_object_get_string(type);
        if (strcmp(ty, "BertProcessing") == 0) {
                const char *keys[2] = { "cls", "sep" };
                int32_t *dst[2] = { &t->cls_id, &t->sep_id };
                for (size_t i = 0; i < 2; i++) {
                        r = json_get(p, keys[i], json_type_array, true, &v);
                        if (r < 0)
                                return r;
                        if (json_object_array_length(v) != 2)
                                return dsa__error(-EBADMSG, "tokenizer.json: BertProcessing \"%s\" is not [token, id]", keys[i]);
                        r = json_get_id(json_object_array_get_idx(v, 1), keys[i], (int64_t) t->vocab.n, dst[i]);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        if (strcmp(ty, "TemplateProcessing") == 0) {
                json_object *single, *specials;
                const char *names[2] = {};
                int32_t *dst[2] = { &t->cls_id, &t->sep_id };
                size_t n;
                r = json_get(p, "single", json_type_array, true, &single);
                if (r < 0)
                        return r;
                r = json_get(p, "special_tokens", json_type_object, true, &specials);
                if (r < 0)
                        return r;
                n = json_object_array_length(single);
                for (size_t i = 0; i < n; i++) {
                        json_object *piece = json_object_array_get_idx(single, i), *st, *id;
                        if (!json_object_is_type(piece, json_type_object) ||
                            !json_object_object_get_ex(piece, "SpecialToken", &st))
                                continue;
                        if (!json_object_is_type(st, json_type_object) ||
                            !json_object_object_get_ex(st, "id", &id) ||
                            !json_object_is_type(id, json_type_string))
                                return dsa__error(-EBADMSG, "tokenizer.json: malformed SpecialToken in template");
                        if (!names[0])
                                names[0] = json_object_get_string(id);
                        names[1] = json_object_get_string(id);
                }
                for (size_t i = 0; i < 2; i++) {
                        json_object *entry, *ids;
                        if (!names[i])
                                continue;
                        r = json_get(specials, names[i], json_type_object, true, &entry);
                        if (r < 0)
                                return r;
                        r = json_get(entry, "ids", json_type_array, true, &ids);
                        if (r < 0)
                                return r;
                        if (json_object_array_length(ids) != 1)
                                return dsa__error(-EOPNOTSUPP, "tokenizer.json: special token '%s' is not one id", names[i]);
                        r = json_get_id(json_object_array_get_idx(ids, 0), names[i], (int64_t) t->vocab.n, dst[i]);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        return dsa__error(-EOPNOTSUPP, "tokenizer.json: post-processor '%s' is not supported", ty);
}

int dsa_tokenizer_from_hf_json(const char *json, size_t len, struct dsa_tokenizer **ret) {
        _cleanup_(dsa_tokenizer_freep) struct dsa_tokenizer *t = NULL;
        _cleanup_(json_object_putp) json_object *root = NULL;
        struct dsa_tokenizer_options opts = {};
        json_object *model, *type, *vocab, *v, *added, *pre;
        json_tokener *tok;
        size_t n_model, n_total, n_added = 0;
        int64_t max_chars = 100;
        int r;

        if (!json || !ret)
                return -EINVAL;
        if (len > INT_MAX)
                return dsa__error(-EFBIG, "tokenizer.json is larger than 2 GiB");
        tok = json_tokener_new_ex(64);
        if (!tok)
                return -ENOMEM;
        root = json_tokener_parse_ex(tok, json, (int) len);
        if (root && json_tokener_get_error(tok) == json_tokener_success)
                for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
                        if (json[i] == 0 || !strchr(" \t\r\n", json[i])) {
                                json_tokener_free(tok);
                                return dsa__error(-EBADMSG, "tokenizer.json: trailing bytes after the JSON object");
                        }
        if (!root || json_tokener_get_error(tok) != json_tokener_success) {
                r = dsa__error(-EBADMSG, "tokenizer.json: %s",
                               json_tokener_error_desc(json_tokener_get_error(tok)));
                json_tokener_free(tok);
                return r;
        }
        json_tokener_free(tok);
        if (!json_object_is_type(root, json_type_object))
                return dsa__error(-EBADMSG, "tokenizer.json: not a JSON object");

        r = json_get(root, "model", json_type_object, true, &model);
        if (r < 0)
                return r;
        r = json_get(model, "type", json_type_string, true, &type);
        if (r < 0)
                return r;
        if (strcmp(json_object_get_string(type), "WordPiece") != 0)
                return dsa__error(-EOPNOTSUPP, "tokenizer.json: model '%s' is not supported, only WordPiece",
                                  json_object_get_string(type));
        r = json_get(root, "pre_tokenizer", json_type_object, false, &pre);
        if (r < 0)
                return r;
        if (pre) {
                r = json_get(pre, "type", json_type_string, true, &type);
                if (r < 0)
                        return r;
                if (strcmp(json_object_get_string(type), "BertPreTokenizer") != 0)
                        return dsa__error(-EOPNOTSUPP, "tokenizer.json: pre-tokenizer '%s' is not supported, only BertPreTokenizer",
                                          json_object_get_string(type));
        }
        r = parse_normalizer(root, &opts);
        if (r < 0)
                return r;
        r = json_get(model, "max_input_chars_per_word", json_type_int, false, &v);
        if (r < 0)
                return r;
        if (v) {
                errno = 0;
                max_chars = json_object_get_int64(v);
                if (errno != 0 || max_chars < 0 || max_chars > UINT32_MAX)
                        return dsa__error(-EBADMSG, "tokenizer.json: max_input_chars_per_word is out of range");
        }
        opts.max_input_chars_per_word = (uint32_t) max_chars;

        t = tokenizer_new(&opts);
        if (!t)
                return -ENOMEM;
        r = json_get(model, "continuing_subword_prefix", json_type_string, false, &v);
        if (r < 0)
                return r;
        if (v) {
                if (json_object_get_string_len(v) > MAX_PREFIX_LEN)
                        return dsa__error(-EBADMSG, "tokenizer.json: continuing_subword_prefix is too long");
                strcpy(t->prefix, json_object_get_string(v));
        }

        /* Ids: the model's vocabulary is 0..n_model-1; added tokens reuse those or follow. */
        r = json_get(model, "vocab", json_type_object, true, &vocab);
        if (r < 0)
                return r;
        n_model = (size_t) json_object_object_length(vocab);
        r = json_get(root, "added_tokens", json_type_array, false, &added);
        if (r < 0)
                return r;
        if (added)
                n_added = json_object_array_length(added);
        n_total = n_model;
        for (size_t i = 0; i < n_added; i++) {
                json_object *a = json_object_array_get_idx(added, i), *id;
                int32_t k;
                if (!json_object_is_type(a, json_type_object))
                        return dsa__error(-EBADMSG, "tokenizer.json: added token %zu is not an object", i);
                r = json_get(a, "id", json_type_int, true, &id);
                if (r < 0)
                        return r;
                /* Dense ids: an added token can reach at most n_added past the model. */
                r = json_get_id(id, "added token id", (int64_t) MIN(n_model + n_added, (size_t) INT32_MAX), &k);
                if (r < 0)
                        return r;
                n_total = MAX(n_total, (size_t) k + 1);
        }
        r = tokenizer_alloc(t, n_total);
        if (r < 0)
                return r;

        json_object_object_foreach(vocab, key, val) {
                int32_t id;
                r = json_get_id(val, "vocab id", (int64_t) n_model, &id);
                if (r < 0)
                        return r;
                r = dsa__vocab_set(&t->vocab, id, key, strlen(key));
                if (r == -EEXIST || r == -EINVAL)
                        return dsa__error(-EBADMSG, "tokenizer.json: vocab id %d or token '%s' appears twice", id, key);
                if (r < 0)
                        return r;
        }

        for (size_t i = 0; i < n_added; i++) {
                json_object *a = json_object_array_get_idx(added, i), *content, *id;
                bool special, normalized, lstrip, rstrip, single_word;
                const char *s;
                size_t slen;
                int32_t k;

                r = json_get(a, "content", json_type_string, true, &content);
                if (r < 0)
                        return r;
                json_object_object_get_ex(a, "id", &id);
                k = (int32_t) json_object_get_int64(id);
                if ((r = json_get_bool(a, "special", false, &special)) < 0 ||
                    (r = json_get_bool(a, "normalized", !special, &normalized)) < 0 ||
                    (r = json_get_bool(a, "lstrip", false, &lstrip)) < 0 ||
                    (r = json_get_bool(a, "rstrip", false, &rstrip)) < 0 ||
                    (r = json_get_bool(a, "single_word", false, &single_word)) < 0)
                        return r;
                s = json_object_get_string(content);
                slen = (size_t) json_object_get_string_len(content);
                if ((size_t) k < n_model) {
                        if (t->vocab.lens[k] != slen || memcmp(t->vocab.tokens[k], s, slen) != 0)
                                return dsa__error(-EBADMSG, "tokenizer.json: added token '%s' has id %d, which the vocabulary gives to '%s'",
                                                  s, k, t->vocab.tokens[k]);
                } else {
                        r = dsa__vocab_set(&t->vocab, k, s, slen);
                        if (r == -EEXIST || r == -EINVAL)
                                return dsa__error(-EBADMSG, "tokenizer.json: added token '%s' (id %d) appears twice", s, k);
                        if (r < 0)
                                return r;
                        t->not_model[k] = true;
                }
                t->token_type[k] = special ? TOKEN_TYPE_CONTROL : TOKEN_TYPE_USER_DEFINED;
                r = add_token(t, k, normalized, lstrip, rstrip, single_word);
                if (r < 0)
                        return r;
        }

        r = json_get(model, "unk_token", json_type_string, false, &v);
        if (r < 0)
                return r;
        t->unk_id = find_str(t, v ? json_object_get_string(v) : "[UNK]");
        if (t->unk_id >= 0 && t->token_type[t->unk_id] == TOKEN_TYPE_CONTROL)
                t->token_type[t->unk_id] = TOKEN_TYPE_UNKNOWN;
        r = parse_post_processor(root, t);
        if (r < 0)
                return r;
        r = tokenizer_finish(t);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

/* ---- vocab.txt */

static const char *const bert_specials[] = { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" };

int dsa_tokenizer_from_vocab_txt(const char *path, const struct dsa_tokenizer_options *opts,
                                 struct dsa_tokenizer **ret) {
        _cleanup_(dsa_tokenizer_freep) struct dsa_tokenizer *t = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *data = NULL;
        size_t size = 0, cap = 0, n = 0;
        int r;

        if (!path || !opts || !ret)
                return -EINVAL;
        f = fopen(path, "re");
        if (!f)
                return dsa__error(-errno, "cannot open '%s'", path);
        for (;;) {
                size_t k;
                if (size == cap) {
                        char *d;
                        cap = cap ? cap * 2 : 1 << 16;
                        d = realloc(data, cap);
                        if (!d)
                                return -ENOMEM;
                        data = d;
                }
                k = fread(data + size, 1, cap - size, f);
                size += k;
                if (k == 0) {
                        if (ferror(f))
                                return dsa__error(-EIO, "cannot read '%s'", path);
                        break;
                }
        }

        for (size_t i = 0; i < size; i++)
                n += data[i] == '\n';
        if (size > 0 && data[size - 1] != '\n')
                n++;
        t = tokenizer_new(opts);
        if (!t)
                return -ENOMEM;
        r = tokenizer_alloc(t, n);
        if (r < 0)
                return r;
        for (size_t i = 0, id = 0; i < size; id++) {
                const char *line = data + i, *nl = memchr(line, '\n', size - i);
                size_t len = nl ? (size_t) (nl - line) : size - i;
                i += len + 1;
                if (len > 0 && line[len - 1] == '\r')
                        len--;
                r = dsa__vocab_set(&t->vocab, (int32_t) id, line, len);
                if (r == -EEXIST)
                        return dsa__error(-EBADMSG, "%s:%zu: token '%.*s' appears twice", path, id + 1,
                                          (int) MIN(len, 64), line);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < ELEMENTSOF(bert_specials); i++) {
                int32_t id = find_str(t, bert_specials[i]);
                if (id < 0)
                        continue;
                t->token_type[id] = i == 1 ? TOKEN_TYPE_UNKNOWN : TOKEN_TYPE_CONTROL;
                r = add_token(t, id, false, false, false, false);
                if (r < 0)
                        return r;
        }
        r = tokenizer_finish(t);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

/* ---- GGUF */

static int gguf_get_id(const struct dsa_gguf *g, const char *key, size_t n, int32_t *ret) {
        uint32_t v;
        int r = dsa_gguf_get_u32(g, key, &v);

        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return dsa__error(-EBADMSG, "GGUF: %s is not an unsigned integer", key);
        if (v >= n)
                return dsa__error(-EBADMSG, "GGUF: %s = %u is outside the vocabulary", key, v);
        *ret = (int32_t) v;
        return 0;
}

static int gguf_get_bool(const struct dsa_gguf *g, const char *key, bool *ret, bool *found) {
        int r = dsa_gguf_get_bool(g, key, ret);

        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return dsa__error(-EBADMSG, "GGUF: %s is not a bool", key);
        *found = true;
        return 0;
}

int dsa_tokenizer_from_gguf(const struct dsa_gguf *g, struct dsa_tokenizer **ret) {
        _cleanup_(dsa_tokenizer_freep) struct dsa_tokenizer *t = NULL;
        /* llama.cpp's WPM: lowercase, accents dropped by its first-codepoint NFD, control
         * characters dropped, CJK isolated, no word length limit. */
        struct dsa_tokenizer_options opts = {
                .clean_text = true,
                .handle_chinese_chars = true,
                .lowercase = true,
                .strip_accents = -1,
                .max_input_chars_per_word = 100,
        };
        enum dsa_gguf_vtype vt;
        const int32_t *types = NULL;
        const char *model;
        size_t model_len, n, nt;
        bool found = false;
        int64_t strip;
        int r;

        if (!g || !ret)
                return -EINVAL;
        r = dsa_gguf_get_str(g, "tokenizer.ggml.model", &model, &model_len);
        if (r < 0)
                return dsa__error(r == -ENOENT ? -ENOENT : -EBADMSG, "GGUF: tokenizer.ggml.model is missing or not a string");
        if (model_len != 4 || memcmp(model, "bert", 4) != 0)
                return dsa__error(-EOPNOTSUPP, "GGUF: tokenizer model '%.*s' is not supported, only bert",
                                  (int) MIN(model_len, 64), model);
        r = dsa_gguf_get_arr(g, "tokenizer.ggml.tokens", &vt, &n);
        if (r < 0 || vt != DSA_GGUF_STRING)
                return dsa__error(-EBADMSG, "GGUF: tokenizer.ggml.tokens is missing or not a string array");
        r = dsa_gguf_get_arr(g, "tokenizer.ggml.token_type", &vt, &nt);
        if (r >= 0) {
                if (vt != DSA_GGUF_INT32 || nt != n)
                        return dsa__error(-EBADMSG, "GGUF: tokenizer.ggml.token_type is not %zu int32s", n);
                r = dsa_gguf_get_arr_data(g, "tokenizer.ggml.token_type", (const void **) &types);
                if (r < 0)
                        return r;
        } else if (r != -ENOENT)
                return dsa__error(-EBADMSG, "GGUF: tokenizer.ggml.token_type is not an array");

        if ((r = gguf_get_bool(g, "dsa.tokenizer.lowercase", &opts.lowercase, &found)) < 0 ||
            (r = gguf_get_bool(g, "dsa.tokenizer.clean_text", &opts.clean_text, &found)) < 0 ||
            (r = gguf_get_bool(g, "dsa.tokenizer.handle_chinese_chars", &opts.handle_chinese_chars, &found)) < 0)
                return r;
        r = dsa_gguf_get_i64(g, "dsa.tokenizer.strip_accents", &strip);
        if (r >= 0) {
                if (strip < -1 || strip > 1)
                        return dsa__error(-EBADMSG, "GGUF: dsa.tokenizer.strip_accents must be -1, 0 or 1");
                opts.strip_accents = (int) strip;
                found = true;
        } else if (r != -ENOENT)
                return dsa__error(-EBADMSG, "GGUF: dsa.tokenizer.strip_accents is not an integer");
        r = dsa_gguf_get_u32(g, "dsa.tokenizer.max_input_chars_per_word", &opts.max_input_chars_per_word);
        if (r >= 0)
                found = true;
        else if (r != -ENOENT)
                return dsa__error(-EBADMSG, "GGUF: dsa.tokenizer.max_input_chars_per_word is not an unsigned integer");

        t = tokenizer_new(&opts);
        if (!t)
                return -ENOMEM;
        t->wp.flavour = found ? DSA__WPM_HF : DSA__WPM_LLAMA;
        r = tokenizer_alloc(t, n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *hf = NULL;
                const char *s;
                size_t len;
                int32_t type = TOKEN_TYPE_NORMAL;

                r = dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len);
                if (r < 0)
                        return r;
                if (types)
                        memcpy(&type, types + i, sizeof(type)); /* the mapping need not be aligned */
                t->token_type[i] = type;
                /* Undo llama.cpp's convert_hf_to_gguf.py phantom(): "▁x" was "x", "[x]" and
                 * non-normal tokens are as they were, anything else was "##x". */
                if (type != TOKEN_TYPE_NORMAL || (len >= 2 && s[0] == '[' && s[len - 1] == ']'))
                        r = dsa__vocab_set(&t->vocab, (int32_t) i, s, len);
                else if (len >= PHANTOM_LEN && memcmp(s, PHANTOM, PHANTOM_LEN) == 0)
                        r = dsa__vocab_set(&t->vocab, (int32_t) i, s + PHANTOM_LEN, len - PHANTOM_LEN);
                else {
                        if (len > SIZE_MAX - 3)
                                return -ENOMEM;
                        hf = malloc(len + 3);
                        if (!hf)
                                return -ENOMEM;
                        memcpy(hf, "##", 2);
                        memcpy(hf + 2, s, len);
                        r = dsa__vocab_set(&t->vocab, (int32_t) i, hf, len + 2);
                }
                if (r == -EEXIST)
                        return dsa__error(-EBADMSG, "GGUF: token %zu ('%.*s') appears twice", i, (int) MIN(len, 64), s);
                if (r < 0)
                        return r;
        }
        /* llama.cpp matches control, user-defined and unknown tokens in the raw text. */
        for (size_t i = 0; i < n; i++)
                if (t->token_type[i] == TOKEN_TYPE_UNKNOWN || t->token_type[i] == TOKEN_TYPE_CONTROL ||
                    t->token_type[i] == TOKEN_TYPE_USER_DEFINED) {
                        r = add_token(t, (int32_t) i, false, false, false, false);
                        if (r < 0)
                                return r;
                }
        if ((r = gguf_get_id(g, "tokenizer.ggml.cls_token_id", n, &t->cls_id)) < 0 ||
            (r = gguf_get_id(g, "tokenizer.ggml.seperator_token_id", n, &t->sep_id)) < 0 ||
            (r = gguf_get_id(g, "tokenizer.ggml.unknown_token_id", n, &t->unk_id)) < 0 ||
            (r = gguf_get_id(g, "tokenizer.ggml.padding_token_id", n, &t->pad_id)) < 0 ||
            (r = gguf_get_id(g, "tokenizer.ggml.mask_token_id", n, &t->mask_id)) < 0)
                return r;
        r = tokenizer_finish(t);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

static void free_strv(char **v, size_t n) {
        if (!v)
                return;
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

int dsa_tokenizer_to_gguf(const struct dsa_tokenizer *t, struct dsa_gguf_writer *w) {
        const char *const keys[] = { "tokenizer.ggml.cls_token_id", "tokenizer.ggml.seperator_token_id",
                                     "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                                     "tokenizer.ggml.mask_token_id" };
        const int32_t ids[] = { t ? t->cls_id : 0, t ? t->sep_id : 0, t ? t->unk_id : 0,
                                t ? t->pad_id : 0, t ? t->mask_id : 0 };
        const struct dsa_tokenizer_options *o;
        char **strs;
        size_t n;
        int r;

        if (!t || !w)
                return -EINVAL;
        if (strcmp(t->prefix, "##") != 0)
                return dsa__error(-EOPNOTSUPP, "llama.cpp's GGUF convention needs the \"##\" continuation prefix, not \"%s\"",
                                  t->prefix);
        n = t->vocab.n;
        strs = calloc(n ? n : 1, sizeof(char *));
        if (!strs)
                return -ENOMEM;
        /* convert_hf_to_gguf.py's phantom(): "[x]" and non-normal as is, "##x" -> "x", else "▁x". */
        for (size_t i = 0; i < n; i++) {
                const char *s = t->vocab.tokens[i];
                size_t len = t->vocab.lens[i];
                if (t->token_type[i] != TOKEN_TYPE_NORMAL || (len >= 2 && s[0] == '[' && s[len - 1] == ']'))
                        strs[i] = strdup(s);
                else if (len >= 2 && s[0] == '#' && s[1] == '#')
                        strs[i] = strdup(s + 2);
                else if ((strs[i] = malloc(len + PHANTOM_LEN + 1))) {
                        memcpy(strs[i], PHANTOM, PHANTOM_LEN);
                        memcpy(strs[i] + PHANTOM_LEN, s, len + 1);
                }
                if (!strs[i]) {
                        free_strv(strs, n);
                        return -ENOMEM;
                }
        }
        r = dsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "bert");
        if (r >= 0)
                r = dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *) strs, n);
        free_strv(strs, n);
        if (r >= 0)
                r = dsa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", DSA_GGUF_INT32, t->token_type, n);
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(keys); i++)
                if (ids[i] >= 0)
                        r = dsa_gguf_writer_set_u32(w, keys[i], (uint32_t) ids[i]);
        if (r < 0)
                return r;
        if (t->wp.flavour == DSA__WPM_LLAMA)
                return 0; /* no dsa.* keys: a reader gets llama.cpp's behaviour again */
        o = &t->wp.opts;
        if ((r = dsa_gguf_writer_set_bool(w, "dsa.tokenizer.lowercase", o->lowercase)) < 0 ||
            (r = dsa_gguf_writer_set_i32(w, "dsa.tokenizer.strip_accents", o->strip_accents)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "dsa.tokenizer.clean_text", o->clean_text)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "dsa.tokenizer.handle_chinese_chars", o->handle_chinese_chars)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "dsa.tokenizer.max_input_chars_per_word", o->max_input_chars_per_word)) < 0)
                return r;
        return 0;
}
