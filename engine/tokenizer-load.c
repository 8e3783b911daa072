/* Building the BERT tokenizer: from tokenizer.json, from vocab.txt with explicit options, and
 * from a GGUF (llama.cpp's "bert" convention: word-initial pieces carry U+2581, continuation
 * pieces have no "##"), and writing it back into GGUF in that same convention. Every input is
 * outside bytes: ids are range-checked, tokens must be unique. The parts every kind shares
 * (vocabulary, added tokens, JSON and GGUF getters) are here too; byte-level BPE is built in
 * tokenizer-bpe.c, which the entry points below hand BPE files to. Encoding is tokenizer.c. */
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "gguf.h"
#include "tokenizer-internal.h"
#include "json-util.h"

#define PHANTOM "\xe2\x96\x81" /* U+2581, llama.cpp's word-initial mark */
#define PHANTOM_LEN 3

struct dsa_tokenizer *dsa_tokenizer_free(struct dsa_tokenizer *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n_added; i++)
                free(t->added[i].match);
        free(t->added);
        free(t->not_model);
        free(t->token_type);
        dsa__bpe_done(&t->bpe);
        dsa__pretok_done(&t->pretok);
        dsa__vocab_done(&t->vocab);
        free(t);
        return NULL;
}

struct dsa_tokenizer *dsa__tokenizer_new(enum dsa_tokenizer_kind kind, const struct dsa_tokenizer_options *opts) {
        struct dsa_tokenizer *t = calloc(1, sizeof(*t));

        if (!t)
                return NULL;
        t->kind = kind;
        t->cls_id = t->sep_id = t->pad_id = t->mask_id = t->unk_id = -ENOENT;
        t->bos_id = t->eos_id = -ENOENT;
        strcpy(t->prefix, "##");
        t->wp.opts = *opts;
        t->wp.flavour = DSA__WPM_HF;
        return t;
}

int dsa__tokenizer_alloc(struct dsa_tokenizer *t, size_t n) {
        int r = dsa__vocab_init(&t->vocab, n);
        if (r < 0)
                return r == -E2BIG ? dsa__error(-EBADMSG, "vocabulary of %zu tokens is too large", n) : r;
        t->not_model = calloc(n ? n : 1, sizeof(bool));
        t->token_type = malloc((n ? n : 1) * sizeof(int32_t));
        if (!t->not_model || !t->token_type)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                t->token_type[i] = DSA__TOKEN_NORMAL;
        return 0;
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
                t->unk_id = dsa__tokenizer_find(t, "[UNK]");
        t->wp.unk_id = t->unk_id;
        if (t->cls_id < 0)
                t->cls_id = dsa__tokenizer_find(t, "[CLS]");
        if (t->sep_id < 0)
                t->sep_id = dsa__tokenizer_find(t, "[SEP]");
        if (t->pad_id < 0)
                t->pad_id = dsa__tokenizer_find(t, "[PAD]");
        if (t->mask_id < 0)
                t->mask_id = dsa__tokenizer_find(t, "[MASK]");
        return 0;
}

/* A token may hold NUL bytes (GGUF strings can): copy all len of them, NUL-terminated. */
static char *memdup_nul(const char *s, size_t len) {
        char *c = malloc(len + 1);

        if (!c)
                return NULL;
        memcpy(c, s, len);
        c[len] = 0;
        return c;
}

/* Normalized added tokens match the normalized text, so their content is normalized too, as HF
 * does; byte-level BPE has no normalizer, so there it stays as it is. Those are matched in text
 * that PCRE2 reads without checking it again, so they must be valid UTF-8. */
int dsa__tokenizer_add_token(struct dsa_tokenizer *t, int32_t id, bool normalized, bool lstrip,
                             bool rstrip, bool single_word) {
        const char *content = t->vocab.tokens[id];
        size_t len = t->vocab.lens[id];
        struct dsa__added_token *a, *v;
        int r;

        if (len == 0)
                return 0;
        v = realloc(t->added, (t->n_added + 1) * sizeof(*v));
        if (!v)
                return -ENOMEM;
        t->added = v;
        a = &t->added[t->n_added];
        *a = (struct dsa__added_token) { .id = id, .normalized = normalized, .lstrip = lstrip,
                                    .rstrip = rstrip, .single_word = single_word };
        if (t->kind == DSA_TOKENIZER_BPE) {
                _cleanup_free_ uint32_t *cps = NULL;
                size_t n;
                r = dsa__utf8_decode(content, len, &cps, &n);
                if (r < 0)
                        return dsa__error(-EBADMSG, "added token %d is not valid UTF-8", id);
                a->match = memdup_nul(content, len);
                if (!a->match)
                        return -ENOMEM;
                a->len = len;
                t->any_normalized |= normalized;
        } else if (normalized && t->wp.flavour == DSA__WPM_HF) {
                _cleanup_free_ uint32_t *cps = NULL, *norm = NULL;
                size_t n, n_norm;
                r = dsa__utf8_decode(content, len, &cps, &n);
                if (r < 0)
                        return dsa__error(r, "added token is not valid UTF-8");
                r = dsa__bert_normalize(&t->wp.opts, cps, n, &norm, &n_norm);
                if (r < 0)
                        return r;
                r = dsa__utf8_encode(norm, n_norm, &a->match, &a->len);
                if (r < 0)
                        return r;
                if (a->len == 0) {
                        free(a->match);
                        return 0;
                }
                t->any_normalized = true;
        } else {
                a->normalized = false;
                a->match = memdup_nul(content, len);
                if (!a->match)
                        return -ENOMEM;
                a->len = len;
        }
        t->first_byte[a->normalized][(uint8_t) a->match[0]] = true;
        t->n_added++;
        return 0;
}

/* ---- tokenizer.json */

int dsa__json_get(json_object *o, const char *key, json_type type, bool required,
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

int dsa__json_get_bool(json_object *o, const char *key, bool def, bool *ret) {
        json_object *v = NULL;
        int r = dsa__json_get(o, key, json_type_boolean, false, &v);
        if (r < 0)
                return r;
        *ret = v ? json_object_get_boolean(v) : def;
        return 0;
}

int dsa__json_get_id(json_object *v, const char *what, int64_t max, int32_t *ret) {
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

        r = dsa__json_get(root, "normalizer", json_type_object, false, &n);
        if (r < 0)
                return r;
        if (!n) {
                *o = (struct dsa_tokenizer_options) { .strip_accents = 0,
                                                      .max_input_chars_per_word = 100 };
                return 0;
        }
        r = dsa__json_get(n, "type", json_type_string, true, &type);
        if (r < 0)
                return r;
        if (strcmp(json_object_get_string(type), "BertNormalizer") != 0)
                return dsa__error(-EOPNOTSUPP, "tokenizer.json: normalizer '%s' is not supported, only BertNormalizer",
                                  json_object_get_string(type));
        r = dsa__json_get_bool(n, "clean_text", true, &o->clean_text);
        if (r < 0)
                return r;
        r = dsa__json_get_bool(n, "handle_chinese_chars", true, &o->handle_chinese_chars);
        if (r < 0)
                return r;
        r = dsa__json_get_bool(n, "lowercase", true, &o->lowercase);
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

        r = dsa__json_get(root, "post_processor", json_type_object, false, &p);
        if (r < 0 || !p)
                return r;
        r = dsa__json_get(p, "type", json_type_string, true, &type);
        if (r < 0)
                return r;
        ty = json_object_get_string(type);
        if (strcmp(ty, "BertProcessing") == 0) {
                const char *keys[2] = { "cls", "sep" };
                int32_t *dst[2] = { &t->cls_id, &t->sep_id };
                for (size_t i = 0; i < 2; i++) {
                        r = dsa__json_get(p, keys[i], json_type_array, true, &v);
                        if (r < 0)
                                return r;
                        if (json_object_array_length(v) != 2)
                                return dsa__error(-EBADMSG, "tokenizer.json: BertProcessing \"%s\" is not [token, id]", keys[i]);
                        r = dsa__json_get_id(json_object_array_get_idx(v, 1), keys[i], (int64_t) t->vocab.n, dst[i]);
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
                r = dsa__json_get(p, "single", json_type_array, true, &single);
                if (r < 0)
                        return r;
                r = dsa__json_get(p, "special_tokens", json_type_object, true, &specials);
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
                        r = dsa__json_get(specials, names[i], json_type_object, true, &entry);
                        if (r < 0)
                                return r;
                        r = dsa__json_get(entry, "ids", json_type_array, true, &ids);
                        if (r < 0)
                                return r;
                        if (json_object_array_length(ids) != 1)
                                return dsa__error(-EOPNOTSUPP, "tokenizer.json: special token '%s' is not one id", names[i]);
                        r = dsa__json_get_id(json_object_array_get_idx(ids, 0), names[i], (int64_t) t->vocab.n, dst[i]);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        return dsa__error(-EOPNOTSUPP, "tokenizer.json: post-processor '%s' is not supported", ty);
}

int dsa__tokenizer_json_vocab(struct dsa_tokenizer *t, json_object *root, json_object *model) {
        json_object *vocab, *added;
        size_t n_model, n_total, n_added = 0;
        int r;

        /* Ids: the model's vocabulary is 0..n_model-1; added tokens reuse those or follow. */
        r = dsa__json_get(model, "vocab", json_type_object, true, &vocab);
        if (r < 0)
                return r;
        n_model = (size_t) json_object_object_length(vocab);
        r = dsa__json_get(root, "added_tokens", json_type_array, false, &added);
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
                r = dsa__json_get(a, "id", json_type_int, true, &id);
                if (r < 0)
                        return r;
                /* Dense ids: an added token can reach at most n_added past the model. */
                r = dsa__json_get_id(id, "added token id", (int64_t) MIN(n_model + n_added, (size_t) INT32_MAX), &k);
                if (r < 0)
                        return r;
                n_total = MAX(n_total, (size_t) k + 1);
        }
        r = dsa__tokenizer_alloc(t, n_total);
        if (r < 0)
                return r;

        json_object_object_foreach(vocab, key, val) {
                int32_t id;
                r = dsa__json_get_id(val, "vocab id", (int64_t) n_model, &id);
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

                r = dsa__json_get(a, "content", json_type_string, true, &content);
                if (r < 0)
                        return r;
                json_object_object_get_ex(a, "id", &id);
                k = (int32_t) json_object_get_int64(id);
                if ((r = dsa__json_get_bool(a, "special", false, &special)) < 0 ||
                    (r = dsa__json_get_bool(a, "normalized", !special, &normalized)) < 0 ||
                    (r = dsa__json_get_bool(a, "lstrip", false, &lstrip)) < 0 ||
                    (r = dsa__json_get_bool(a, "rstrip", false, &rstrip)) < 0 ||
                    (r = dsa__json_get_bool(a, "single_word", false, &single_word)) < 0)
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
                t->token_type[k] = special ? DSA__TOKEN_CONTROL : DSA__TOKEN_USER_DEFINED;
                r = dsa__tokenizer_add_token(t, k, normalized, lstrip, rstrip, single_word);
                if (r < 0)
                        return r;
        }
        return 0;
}

int dsa_tokenizer_from_hf_json(const char *json, size_t len, struct dsa_tokenizer **ret) {
        _cleanup_(dsa_tokenizer_freep) struct dsa_tokenizer *t = NULL;
        _cleanup_(json_object_putp) json_object *root = NULL;
        struct dsa_tokenizer_options opts = {};
        json_object *model, *type, *v, *pre;
        json_tokener *tok;
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

        r = dsa__json_get(root, "model", json_type_object, true, &model);
        if (r < 0)
                return r;
        r = dsa__json_get(model, "type", json_type_string, true, &type);
        if (r < 0)
                return r;
        if (strcmp(json_object_get_string(type), "BPE") == 0)
                return dsa__tokenizer_bpe_from_json(root, ret);
        if (strcmp(json_object_get_string(type), "WordPiece") != 0)
                return dsa__error(-EOPNOTSUPP, "tokenizer.json: model '%s' is not supported, only WordPiece and BPE",
                                  json_object_get_string(type));
        r = dsa__json_get(root, "pre_tokenizer", json_type_object, false, &pre);
        if (r < 0)
                return r;
        if (pre) {
                r = dsa__json_get(pre, "type", json_type_string, true, &type);
                if (r < 0)
                        return r;
                if (strcmp(json_object_get_string(type), "BertPreTokenizer") != 0)
                        return dsa__error(-EOPNOTSUPP, "tokenizer.json: pre-tokenizer '%s' is not supported, only BertPreTokenizer",
                                          json_object_get_string(type));
        }
        r = parse_normalizer(root, &opts);
        if (r < 0)
                return r;
        r = dsa__json_get(model, "max_input_chars_per_word", json_type_int, false, &v);
        if (r < 0)
                return r;
        if (v) {
                errno = 0;
                max_chars = json_object_get_int64(v);
                if (errno != 0 || max_chars < 0 || max_chars > UINT32_MAX)
                        return dsa__error(-EBADMSG, "tokenizer.json: max_input_chars_per_word is out of range");
        }
        opts.max_input_chars_per_word = (uint32_t) max_chars;

        t = dsa__tokenizer_new(DSA_TOKENIZER_WORDPIECE, &opts);
        if (!t)
                return -ENOMEM;
        r = dsa__json_get(model, "continuing_subword_prefix", json_type_string, false, &v);
        if (r < 0)
                return r;
        if (v) {
                if (json_object_get_string_len(v) > DSA_TOKENIZER_MAX_PREFIX_LEN)
                        return dsa__error(-EBADMSG, "tokenizer.json: continuing_subword_prefix is too long");
                strcpy(t->prefix, json_object_get_string(v));
        }

        r = dsa__tokenizer_json_vocab(t, root, model);
        if (r < 0)
                return r;
        r = dsa__json_get(model, "unk_token", json_type_string, false, &v);
        if (r < 0)
                return r;
        t->unk_id = dsa__tokenizer_find(t, v ? json_object_get_string(v) : "[UNK]");
        if (t->unk_id >= 0 && t->token_type[t->unk_id] == DSA__TOKEN_CONTROL)
                t->token_type[t->unk_id] = DSA__TOKEN_UNKNOWN;
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
        t = dsa__tokenizer_new(DSA_TOKENIZER_WORDPIECE, opts);
        if (!t)
                return -ENOMEM;
        r = dsa__tokenizer_alloc(t, n);
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
                int32_t id = dsa__tokenizer_find(t, bert_specials[i]);
                if (id < 0)
                        continue;
                t->token_type[id] = i == 1 ? DSA__TOKEN_UNKNOWN : DSA__TOKEN_CONTROL;
                r = dsa__tokenizer_add_token(t, id, false, false, false, false);
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

int dsa__gguf_get_id(const struct dsa_gguf *g, const char *key, size_t n, int32_t *ret) {
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

int dsa__gguf_get_vocab(const struct dsa_gguf *g, size_t *ret_n, const int32_t **ret_types) {
        const int32_t *types = NULL;
        enum dsa_gguf_vtype vt;
        size_t n, nt;
        int r;

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
        *ret_n = n;
        *ret_types = types;
        return 0;
}

void dsa__strv_free(char **v, size_t n) {
        if (!v)
                return;
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

int dsa__tokenizer_add_gguf_specials(struct dsa_tokenizer *t, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (t->token_type[i] == DSA__TOKEN_UNKNOWN || t->token_type[i] == DSA__TOKEN_CONTROL ||
                    t->token_type[i] == DSA__TOKEN_USER_DEFINED) {
                        int r = dsa__tokenizer_add_token(t, (int32_t) i, false, false, false, false);
                        if (r < 0)
                                return r;
                }
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
        /* Without dsa.tokenizer.* keys these stand for llama.cpp's WPM (lowercase, accents
         * dropped by its first-codepoint NFD, control characters dropped, CJK isolated; the
         * llama flavour has no word length limit); with some of the keys, the rest keep HF's
         * defaults. Both read the same values. */
        struct dsa_tokenizer_options opts = DSA_TOKENIZER_OPTIONS_BERT;
        const int32_t *types;
        const char *model;
        size_t model_len, n;
        bool found = false;
        int64_t strip;
        int r;

        if (!g || !ret)
                return -EINVAL;
        r = dsa_gguf_get_str(g, "tokenizer.ggml.model", &model, &model_len);
        if (r < 0)
                return dsa__error(r == -ENOENT ? -ENOENT : -EBADMSG, "GGUF: tokenizer.ggml.model is missing or not a string");
        if (model_len == 4 && memcmp(model, "gpt2", 4) == 0)
                return dsa__tokenizer_bpe_from_gguf(g, ret);
        if (model_len != 4 || memcmp(model, "bert", 4) != 0)
                return dsa__error(-EOPNOTSUPP, "GGUF: tokenizer model '%.*s' is not supported, only bert and gpt2",
                                  (int) MIN(model_len, 64), model);
        r = dsa__gguf_get_vocab(g, &n, &types);
        if (r < 0)
                return r;

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

        t = dsa__tokenizer_new(DSA_TOKENIZER_WORDPIECE, &opts);
        if (!t)
                return -ENOMEM;
        t->wp.flavour = found ? DSA__WPM_HF : DSA__WPM_LLAMA;
        r = dsa__tokenizer_alloc(t, n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *hf = NULL;
                const char *s;
                size_t len;
                int32_t type = DSA__TOKEN_NORMAL;

                r = dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len);
                if (r < 0)
                        return r;
                if (types)
                        memcpy(&type, types + i, sizeof(type)); /* the mapping need not be aligned */
                t->token_type[i] = type;
                /* Undo llama.cpp's convert_hf_to_gguf.py phantom(): "▁x" was "x", "[x]" and
                 * non-normal tokens are as they were, anything else was "##x". */
                if (type != DSA__TOKEN_NORMAL || (len >= 2 && s[0] == '[' && s[len - 1] == ']'))
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
        if ((r = dsa__tokenizer_add_gguf_specials(t, n)) < 0 ||
            (r = dsa__gguf_get_id(g, "tokenizer.ggml.cls_token_id", n, &t->cls_id)) < 0 ||
            (r = dsa__gguf_get_id(g, "tokenizer.ggml.seperator_token_id", n, &t->sep_id)) < 0 ||
            (r = dsa__gguf_get_id(g, "tokenizer.ggml.unknown_token_id", n, &t->unk_id)) < 0 ||
            (r = dsa__gguf_get_id(g, "tokenizer.ggml.padding_token_id", n, &t->pad_id)) < 0 ||
            (r = dsa__gguf_get_id(g, "tokenizer.ggml.mask_token_id", n, &t->mask_id)) < 0)
                return r;
        r = tokenizer_finish(t);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
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
        if (t->kind == DSA_TOKENIZER_BPE)
                return dsa__tokenizer_bpe_to_gguf(t, w);
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
                if (t->token_type[i] != DSA__TOKEN_NORMAL || (len >= 2 && s[0] == '[' && s[len - 1] == ']'))
                        strs[i] = strdup(s);
                else if (len >= 2 && s[0] == '#' && s[1] == '#')
                        strs[i] = strdup(s + 2);
                else if ((strs[i] = malloc(len + PHANTOM_LEN + 1))) {
                        memcpy(strs[i], PHANTOM, PHANTOM_LEN);
                        memcpy(strs[i] + PHANTOM_LEN, s, len + 1);
                }
                if (!strs[i]) {
                        dsa__strv_free(strs, n);
                        return -ENOMEM;
                }
        }
        r = dsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "bert");
        if (r >= 0)
                r = dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *) strs, n);
        dsa__strv_free(strs, n);
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
