/* Building byte-level BPE tokenizers: from a tokenizer.json whose model is "BPE" and from a GGUF
 * in llama.cpp's "gpt2" convention, and writing them back into GGUF in that convention plus our
 * dsa.tokenizer.* keys (the exact regex, ignore_merges, the post-processor templates), so that a
 * round trip gives the same ids. Everything read is outside bytes: merges must name tokens whose
 * concatenation is a token too, ids are range-checked, counts are bounded before allocating. */
#define _GNU_SOURCE /* asprintf */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "gguf.h"
#include "tokenizer-internal.h"

/* llama.cpp's tokenizer.ggml.pre names for the regexes we know; we write the first of each.
 * Read from a GGUF without our keys, Llama 3's also mean ignore_merges and a BOS, as they do in
 * llama.cpp. */
static const struct {
        const char *pre;
        const char *pattern;
        bool llama3;
} known_pre[] = {
        { "llama-bpe", DSA_PRETOK_LLAMA3, true },
        { "llama3", DSA_PRETOK_LLAMA3, true },
        { "llama-v3", DSA_PRETOK_LLAMA3, true },
        { "gpt-2", DSA_PRETOK_GPT2, false },
};

#define PRE_CUSTOM "dsa-custom"

static const char *const bos_names[] = { "<|begin_of_text|>", "<s>", "<|endoftext|>" };
static const char *const eos_names[] = { "<|end_of_text|>", "</s>", "<|endoftext|>" };

static int find_added(const struct dsa_tokenizer *t, const char *const *names, size_t n) {
        for (size_t i = 0; i < n; i++) {
                int32_t id = dsa__tokenizer_find(t, names[i]);
                if (id >= 0 && t->token_type[id] != DSA__TOKEN_NORMAL)
                        return id;
        }
        return -ENOENT;
}

static int template_add(struct dsa__template *tp, int32_t id, int32_t type_id) {
        if (tp->n >= DSA__TEMPLATE_MAX)
                return dsa__error(-EBADMSG, "post-processor template has more than %d pieces", DSA__TEMPLATE_MAX);
        tp->id[tp->n] = id;
        tp->type_id[tp->n++] = type_id;
        return 0;
}

/* The pair template HF's TemplateProcessing implies when only single is given, and llama.cpp's
 * behaviour for two texts: each gets the single template, the second with type id 1. */
static int template_pair_from_single(const struct dsa__template *single, struct dsa__template *pair) {
        int r;

        *pair = (struct dsa__template) {};
        for (int half = 0; half < 2; half++)
                for (size_t i = 0; i < single->n; i++) {
                        int32_t id = single->id[i] == DSA__TEMPLATE_A && half ? DSA__TEMPLATE_B : single->id[i];
                        r = template_add(pair, id, half ? 1 : single->type_id[i]);
                        if (r < 0)
                                return r;
                }
        return 0;
}

/* Once every token and merge is in: the byte tokens, default templates, BOS and EOS. */
static int bpe_finish(struct dsa_tokenizer *t) {
        const struct dsa__template *s = &t->single;
        size_t first_a = s->n, last_a = 0;
        int r;

        for (size_t i = 0; i < t->vocab.n; i++)
                if (!t->vocab.tokens[i])
                        return dsa__error(-EBADMSG, "vocabulary has no token with id %zu", i);
        dsa__bpe_finish(&t->bpe);
        if (t->single.n == 0) {
                if ((r = template_add(&t->single, DSA__TEMPLATE_A, 0)) < 0)
                        return r;
        }
        if (t->pair.n == 0 && (r = template_pair_from_single(&t->single, &t->pair)) < 0)
                return r;
        for (size_t i = 0; i < s->n; i++)
                if (s->id[i] == DSA__TEMPLATE_A) {
                        first_a = MIN(first_a, i);
                        last_a = i;
                }
        if (first_a == s->n)
                return dsa__error(-EBADMSG, "post-processor template has no place for the text");
        if (t->bos_id < 0)
                t->bos_id = first_a > 0 ? s->id[0] : find_added(t, bos_names, ELEMENTSOF(bos_names));
        if (t->eos_id < 0)
                t->eos_id = last_a + 1 < s->n ? s->id[s->n - 1] : find_added(t, eos_names, ELEMENTSOF(eos_names));
        return 0;
}

/* ---- tokenizer.json */

static int parse_byte_level(json_object *o, bool *add_prefix_space, bool *use_regex) {
        int r = dsa__json_get_bool(o, "add_prefix_space", true, add_prefix_space);
        if (r < 0)
                return r;
        return dsa__json_get_bool(o, "use_regex", true, use_regex);
}

/* Split(pattern, Isolated): the regex source of its pattern. */
static int parse_split(json_object *o, char **ret) {
        json_object *pattern, *v;
        bool invert;
        int r;

        if ((r = dsa__json_get(o, "pattern", json_type_object, true, &pattern)) < 0 ||
            (r = dsa__json_get(o, "behavior", json_type_string, true, &v)) < 0)
                return r;
        if (strcmp(json_object_get_string(v), "Isolated") != 0)
                return dsa__error(-EOPNOTSUPP, "tokenizer.json: Split behavior '%s' is not supported, only Isolated",
                                  json_object_get_string(v));
        if ((r = dsa__json_get_bool(o, "invert", false, &invert)) < 0)
                return r;
        if (invert)
                return dsa__error(-EOPNOTSUPP, "tokenizer.json: an inverted Split is not supported");
        if ((r = dsa__json_get(pattern, "Regex", json_type_string, false, &v)) < 0)
                return r;
        if (v)
                *ret = strndup(json_object_get_string(v), (size_t) json_object_get_string_len(v));
        else {
                if ((r = dsa__json_get(pattern, "String", json_type_string, true, &v)) < 0)
                        return r;
                *ret = dsa__pretok_escape(json_object_get_string(v), (size_t) json_object_get_string_len(v));
        }
        return *ret ? 0 : -ENOMEM;
}

/* ByteLevel, or Sequence[Split(Isolated), ByteLevel(use_regex false)]: one regex at most, and
 * add_prefix_space only where it comes before the regex, as in a lone ByteLevel. */
static int parse_pre_tokenizer(json_object *root, struct dsa_tokenizer *t) {
        _cleanup_free_ char *regex = NULL;
        json_object *pre, *list = NULL, *type;
        bool byte_level = false, prefix = false, use_regex;
        size_t n = 1;
        int r;

        if ((r = dsa__json_get(root, "pre_tokenizer", json_type_object, false, &pre)) < 0)
                return r;
        if (!pre)
                return dsa__error(-EOPNOTSUPP, "tokenizer.json: BPE without a ByteLevel pre-tokenizer is not supported");
        if ((r = dsa__json_get(pre, "type", json_type_string, true, &type)) < 0)
                return r;
        if (strcmp(json_object_get_string(type), "Sequence") == 0) {
                if ((r = dsa__json_get(pre, "pretokenizers", json_type_array, true, &list)) < 0)
                        return r;
                n = json_object_array_length(list);
        }
        for (size_t i = 0; i < n; i++) {
                json_object *p = list ? json_object_array_get_idx(list, i) : pre;
                const char *ty;
                if (!json_object_is_type(p, json_type_object))
                        return dsa__error(-EBADMSG, "tokenizer.json: pre-tokenizer %zu is not an object", i);
                if ((r = dsa__json_get(p, "type", json_type_string, true, &type)) < 0)
                        return r;
                ty = json_object_get_string(type);
                if (byte_level)
                        return dsa__error(-EOPNOTSUPP, "tokenizer.json: pre-tokenizer '%s' after ByteLevel is not supported", ty);
                if (strcmp(ty, "Split") == 0) {
                        if (regex)
                                return dsa__error(-EOPNOTSUPP, "tokenizer.json: more than one Split is not supported");
                        if ((r = parse_split(p, &regex)) < 0)
                                return r;
                } else if (strcmp(ty, "ByteLevel") == 0) {
                        byte_level = true;
                        if ((r = parse_byte_level(p, &prefix, &use_regex)) < 0)
                                return r;
                        if (regex && (use_regex || prefix))
                                return dsa__error(-EOPNOTSUPP, "tokenizer.json: a Split before a ByteLevel with %s is not supported",
                                                  use_regex ? "use_regex" : "add_prefix_space");
                        if (use_regex && !(regex = strdup(DSA_PRETOK_GPT2)))
                                return -ENOMEM;
                } else
                        return dsa__error(-EOPNOTSUPP, "tokenizer.json: pre-tokenizer '%s' is not supported with BPE", ty);
        }
        if (!byte_level)
                return dsa__error(-EOPNOTSUPP, "tokenizer.json: only byte-level BPE (a ByteLevel pre-tokenizer) is supported");
        if (regex && (r = dsa__pretok_init(&t->pretok, regex, strlen(regex))) < 0)
                return r;
        t->pretok.add_prefix_space = prefix;
        return 0;
}

static int parse_template(json_object *pieces, json_object *specials, const struct dsa_tokenizer *t,
                          bool pair, struct dsa__template *tp) {
        size_t n = json_object_array_length(pieces);
        int r;

        for (size_t i = 0; i < n; i++) {
                json_object *piece = json_object_array_get_idx(pieces, i), *seq, *st, *id, *entry, *ids;
                int32_t type_id = 0;
                if (!json_object_is_type(piece, json_type_object))
                        return dsa__error(-EBADMSG, "tokenizer.json: template piece %zu is not an object", i);
                if ((r = dsa__json_get(piece, "Sequence", json_type_object, false, &seq)) < 0 ||
                    (r = dsa__json_get(piece, "SpecialToken", json_type_object, false, &st)) < 0)
                        return r;
                if (!seq == !st)
                        return dsa__error(-EBADMSG, "tokenizer.json: template piece %zu is not a Sequence or a SpecialToken", i);
                if ((r = dsa__json_get(seq ? seq : st, "id", json_type_string, true, &id)) < 0 ||
                    (r = dsa__json_get(seq ? seq : st, "type_id", json_type_int, false, &entry)) < 0)
                        return r;
                if (entry && (r = dsa__json_get_id(entry, "template type_id", INT32_MAX, &type_id)) < 0)
                        return r;
                if (seq) {
                        const char *s = json_object_get_string(id);
                        bool b = strcmp(s, "B") == 0;
                        if ((!b && strcmp(s, "A") != 0) || (b && !pair))
                                return dsa__error(-EBADMSG, "tokenizer.json: template sequence '%s' is not A%s", s, pair ? " or B" : "");
                        if ((r = template_add(tp, b ? DSA__TEMPLATE_B : DSA__TEMPLATE_A, type_id)) < 0)
                                return r;
                        continue;
                }
                if ((r = dsa__json_get(specials, json_object_get_string(id), json_type_object, true, &entry)) < 0 ||
                    (r = dsa__json_get(entry, "ids", json_type_array, true, &ids)) < 0)
                        return r;
                for (size_t k = 0; k < json_object_array_length(ids); k++) {
                        int32_t tok;
                        r = dsa__json_get_id(json_object_array_get_idx(ids, k), "template special token id",
                                             (int64_t) t->vocab.n, &tok);
                        if (r < 0)
                                return r;
                        if ((r = template_add(tp, tok, type_id)) < 0)
                                return r;
                }
        }
        return 0;
}

/* TemplateProcessing, ByteLevel (ids as they are), or a Sequence of those. */
static int parse_post_processor(json_object *root, struct dsa_tokenizer *t) {
        json_object *p, *list = NULL, *type;
        bool have_template = false;
        size_t n = 1;
        int r;

        if ((r = dsa__json_get(root, "post_processor", json_type_object, false, &p)) < 0 || !p)
                return r;
        if ((r = dsa__json_get(p, "type", json_type_string, true, &type)) < 0)
                return r;
        if (strcmp(json_object_get_string(type), "Sequence") == 0) {
                if ((r = dsa__json_get(p, "processors", json_type_array, true, &list)) < 0)
                        return r;
                n = json_object_array_length(list);
        }
        for (size_t i = 0; i < n; i++) {
                json_object *q = list ? json_object_array_get_idx(list, i) : p, *single, *pair, *specials;
                const char *ty;
                if (!json_object_is_type(q, json_type_object))
                        return dsa__error(-EBADMSG, "tokenizer.json: post-processor %zu is not an object", i);
                if ((r = dsa__json_get(q, "type", json_type_string, true, &type)) < 0)
                        return r;
                ty = json_object_get_string(type);
                if (strcmp(ty, "ByteLevel") == 0)
                        continue;
                if (strcmp(ty, "TemplateProcessing") != 0)
                        return dsa__error(-EOPNOTSUPP, "tokenizer.json: post-processor '%s' is not supported with BPE", ty);
                if (have_template)
                        return dsa__error(-EOPNOTSUPP, "tokenizer.json: more than one TemplateProcessing is not supported");
                have_template = true;
                if ((r = dsa__json_get(q, "single", json_type_array, true, &single)) < 0 ||
                    (r = dsa__json_get(q, "pair", json_type_array, false, &pair)) < 0 ||
                    (r = dsa__json_get(q, "special_tokens", json_type_object, true, &specials)) < 0)
                        return r;
                if ((r = parse_template(single, specials, t, false, &t->single)) < 0)
                        return r;
                if (pair && (r = parse_template(pair, specials, t, true, &t->pair)) < 0)
                        return r;
                if (pair && t->pair.n == 0)
                        return dsa__error(-EBADMSG, "tokenizer.json: the pair template is empty");
        }
        return 0;
}

static int lookup(const struct dsa_tokenizer *t, const char *s, size_t len, size_t i, int32_t *ret) {
        int32_t id = dsa__vocab_find(&t->vocab, s, len);
        if (id < 0)
                return dsa__error(-EBADMSG, "merge %zu names '%.*s', which is not in the vocabulary", i,
                                  (int) MIN(len, 64), s);
        *ret = id;
        return 0;
}

static int add_merge(struct dsa_tokenizer *t, int32_t a, int32_t b, size_t i) {
        int r = dsa__bpe_add_merge(&t->bpe, a, b);
        if (r == -ENOENT)
                return dsa__error(-EBADMSG, "merge %zu ('%.64s' '%.64s') makes a token that is not in the vocabulary",
                                  i, t->vocab.tokens[a], t->vocab.tokens[b]);
        return r;
}

/* "a b" strings (split on the one space, as HF does) or [a, b] pairs. */
static int parse_merges(json_object *model, struct dsa_tokenizer *t) {
        json_object *merges;
        size_t n;
        int r;

        if ((r = dsa__json_get(model, "merges", json_type_array, true, &merges)) < 0)
                return r;
        n = json_object_array_length(merges);
        r = dsa__bpe_init(&t->bpe, &t->vocab, n);
        if (r == -E2BIG)
                return dsa__error(-EBADMSG, "tokenizer.json: %zu merges are too many", n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                json_object *m = json_object_array_get_idx(merges, i), *a = NULL, *b = NULL;
                int32_t ia = -1, ib = -1;
                if (json_object_is_type(m, json_type_string)) {
                        const char *s = json_object_get_string(m), *sp;
                        size_t len = (size_t) json_object_get_string_len(m);
                        sp = memchr(s, ' ', len);
                        if (!sp || memchr(sp + 1, ' ', len - (size_t) (sp - s) - 1))
                                return dsa__error(-EBADMSG, "tokenizer.json: merge %zu is not two tokens and a space", i);
                        if ((r = lookup(t, s, (size_t) (sp - s), i, &ia)) < 0 ||
                            (r = lookup(t, sp + 1, len - (size_t) (sp - s) - 1, i, &ib)) < 0)
                                return r;
                } else if (json_object_is_type(m, json_type_array) && json_object_array_length(m) == 2 &&
                           json_object_is_type(a = json_object_array_get_idx(m, 0), json_type_string) &&
                           json_object_is_type(b = json_object_array_get_idx(m, 1), json_type_string)) {
                        if ((r = lookup(t, json_object_get_string(a), (size_t) json_object_get_string_len(a), i, &ia)) < 0 ||
                            (r = lookup(t, json_object_get_string(b), (size_t) json_object_get_string_len(b), i, &ib)) < 0)
                                return r;
                } else
                        return dsa__error(-EBADMSG, "tokenizer.json: merge %zu is not \"a b\" or [\"a\", \"b\"]", i);
                if ((r = add_merge(t, ia, ib, i)) < 0)
                        return r;
        }
        return 0;
}

/* A member that must be absent, null, or the given harmless value. */
static int check_unsupported(json_object *o, const char *key) {
        json_object *v;

        if (!json_object_object_get_ex(o, key, &v) || !v)
                return 0;
        if ((json_object_is_type(v, json_type_boolean) && !json_object_get_boolean(v)) ||
            ((json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)) &&
             json_object_get_double(v) == 0) ||
            (json_object_is_type(v, json_type_string) && json_object_get_string_len(v) == 0))
                return 0;
        return dsa__error(-EOPNOTSUPP, "tokenizer.json: BPE with \"%s\" is not supported", key);
}

int dsa__tokenizer_bpe_from_json(json_object *root, struct dsa_tokenizer **ret) {
        static const char *const unsupported[] = { "dropout", "byte_fallback", "continuing_subword_prefix",
                                                   "end_of_word_suffix" };
        _cleanup_(dsa_tokenizer_freep) struct dsa_tokenizer *t = NULL;
        const struct dsa_tokenizer_options none = {};
        json_object *model, *v;
        int r;

        if ((r = dsa__json_get(root, "model", json_type_object, true, &model)) < 0)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(unsupported); i++)
                if ((r = check_unsupported(model, unsupported[i])) < 0)
                        return r;
        if ((r = dsa__json_get(root, "normalizer", json_type_object, false, &v)) < 0)
                return r;
        if (v)
                return dsa__error(-EOPNOTSUPP, "tokenizer.json: BPE with a normalizer is not supported");
        if ((r = dsa__json_get(root, "decoder", json_type_object, false, &v)) < 0)
                return r;
        if (v) {
                if ((r = dsa__json_get(v, "type", json_type_string, true, &v)) < 0)
                        return r;
                if (strcmp(json_object_get_string(v), "ByteLevel") != 0)
                        return dsa__error(-EOPNOTSUPP, "tokenizer.json: decoder '%s' is not supported with BPE, only ByteLevel",
                                          json_object_get_string(v));
        }

        t = dsa__tokenizer_new(DSA_TOKENIZER_BPE, &none);
        if (!t)
                return -ENOMEM;
        if ((r = parse_pre_tokenizer(root, t)) < 0 ||
            (r = dsa__tokenizer_json_vocab(t, root, model)) < 0 ||
            (r = parse_merges(model, t)) < 0 ||
            (r = dsa__json_get_bool(model, "fuse_unk", false, &t->bpe.fuse_unk)) < 0 ||
            (r = dsa__json_get_bool(model, "ignore_merges", false, &t->bpe.ignore_merges)) < 0 ||
            (r = dsa__json_get(model, "unk_token", json_type_string, false, &v)) < 0)
                return r;
        if (v) {
                t->unk_id = t->bpe.unk_id = dsa__vocab_find(&t->vocab, json_object_get_string(v),
                                                            (size_t) json_object_get_string_len(v));
                if (t->unk_id < 0)
                        return dsa__error(-EBADMSG, "tokenizer.json: unk_token '%.64s' is not in the vocabulary",
                                          json_object_get_string(v));
                if (t->token_type[t->unk_id] == DSA__TOKEN_CONTROL)
                        t->token_type[t->unk_id] = DSA__TOKEN_UNKNOWN;
        }
        if ((r = parse_post_processor(root, t)) < 0 || (r = bpe_finish(t)) < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

/* ---- GGUF */

static int gguf_get_bool(const struct dsa_gguf *g, const char *key, bool def, bool *ret) {
        int r = dsa_gguf_get_bool(g, key, ret);

        if (r == -ENOENT) {
                *ret = def;
                return 0;
        }
        return r < 0 ? dsa__error(-EBADMSG, "GGUF: %s is not a bool", key) : 0;
}

/* dsa.tokenizer.template / template_pair: (id, type id) pairs, id -1 for the text, -2 for the
 * pair's. 0 and an empty template when absent. */
static int gguf_get_template(const struct dsa_gguf *g, const char *key, size_t n_vocab, bool pair,
                             struct dsa__template *tp) {
        enum dsa_gguf_vtype vt;
        const int32_t *v;
        size_t n;
        int r;

        r = dsa_gguf_get_arr(g, key, &vt, &n);
        if (r == -ENOENT)
                return 0;
        if (r < 0 || vt != DSA_GGUF_INT32 || n % 2 != 0 || n == 0 || n / 2 > DSA__TEMPLATE_MAX)
                return dsa__error(-EBADMSG, "GGUF: %s is not 1 to %d (id, type id) int32 pairs", key, DSA__TEMPLATE_MAX);
        if ((r = dsa_gguf_get_arr_data(g, key, (const void **) &v)) < 0)
                return r;
        for (size_t i = 0; i < n / 2; i++) {
                int32_t id, type_id;
                memcpy(&id, v + 2 * i, sizeof(id)); /* the mapping need not be aligned */
                memcpy(&type_id, v + 2 * i + 1, sizeof(type_id));
                if (id < (pair ? DSA__TEMPLATE_B : DSA__TEMPLATE_A) || (id >= 0 && (size_t) id >= n_vocab) ||
                    type_id < 0)
                        return dsa__error(-EBADMSG, "GGUF: %s piece %zu (%d, %d) is out of range", key, i, id, type_id);
                tp->id[i] = id;
                tp->type_id[i] = type_id;
        }
        tp->n = n / 2;
        return 0;
}

/* The regex: our dsa.tokenizer.pattern ("" for none), else the one tokenizer.ggml.pre names. */
static int gguf_pre_tokenizer(const struct dsa_gguf *g, struct dsa_tokenizer *t, bool *ret_llama3) {
        const char *s;
        size_t len;
        int r;

        *ret_llama3 = false;
        r = dsa_gguf_get_str(g, "dsa.tokenizer.pattern", &s, &len);
        if (r >= 0)
                return len > 0 ? dsa__pretok_init(&t->pretok, s, len) : 0;
        if (r != -ENOENT)
                return dsa__error(-EBADMSG, "GGUF: dsa.tokenizer.pattern is not a string");
        r = dsa_gguf_get_str(g, "tokenizer.ggml.pre", &s, &len);
        if (r == -ENOENT)
                return dsa__error(-EOPNOTSUPP, "GGUF: BPE tokenizer without tokenizer.ggml.pre or dsa.tokenizer.pattern");
        if (r < 0)
                return dsa__error(-EBADMSG, "GGUF: tokenizer.ggml.pre is not a string");
        for (size_t i = 0; i < ELEMENTSOF(known_pre); i++)
                if (strlen(known_pre[i].pre) == len && memcmp(known_pre[i].pre, s, len) == 0) {
                        *ret_llama3 = known_pre[i].llama3;
                        return dsa__pretok_init(&t->pretok, known_pre[i].pattern, strlen(known_pre[i].pattern));
                }
        return dsa__error(-EOPNOTSUPP, "GGUF: pre-tokenizer '%.*s' is not supported (known: llama-bpe, gpt-2; or a dsa.tokenizer.pattern key)",
                          (int) MIN(len, 64), s);
}

static int gguf_merges(const struct dsa_gguf *g, struct dsa_tokenizer *t) {
        enum dsa_gguf_vtype vt;
        size_t n;
        int r;

        r = dsa_gguf_get_arr(g, "tokenizer.ggml.merges", &vt, &n);
        if (r < 0 || vt != DSA_GGUF_STRING)
                return dsa__error(-EBADMSG, "GGUF: tokenizer.ggml.merges is missing or not a string array");
        r = dsa__bpe_init(&t->bpe, &t->vocab, n);
        if (r == -E2BIG)
                return dsa__error(-EBADMSG, "GGUF: %zu merges are too many", n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                const char *s, *sp;
                size_t len;
                int32_t a = -1, b = -1;
                if ((r = dsa_gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &len)) < 0)
                        return r;
                /* llama.cpp splits at the first space after the first byte. */
                sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
                if (!sp)
                        return dsa__error(-EBADMSG, "GGUF: merge %zu has no space", i);
                if ((r = lookup(t, s, (size_t) (sp - s), i, &a)) < 0 ||
                    (r = lookup(t, sp + 1, len - (size_t) (sp - s) - 1, i, &b)) < 0 ||
                    (r = add_merge(t, a, b, i)) < 0)
                        return r;
        }
        return 0;
}

int dsa__tokenizer_bpe_from_gguf(const struct dsa_gguf *g, struct dsa_tokenizer **ret) {
        _cleanup_(dsa_tokenizer_freep) struct dsa_tokenizer *t = NULL;
        const struct dsa_tokenizer_options none = {};
        const int32_t *types;
        bool llama3, add_bos, add_eos;
        size_t n;
        int r;

        if ((r = dsa__gguf_get_vocab(g, &n, &types)) < 0)
                return r;

        t = dsa__tokenizer_new(DSA_TOKENIZER_BPE, &none);
        if (!t)
                return -ENOMEM;
        if ((r = gguf_pre_tokenizer(g, t, &llama3)) < 0)
                return r;
        if ((r = dsa__tokenizer_alloc(t, n)) < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                const char *s;
                size_t len;
                if ((r = dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len)) < 0)
                        return r;
                if (types)
                        memcpy(&t->token_type[i], types + i, sizeof(int32_t));
                r = dsa__vocab_set(&t->vocab, (int32_t) i, s, len);
                if (r == -EEXIST)
                        return dsa__error(-EBADMSG, "GGUF: token %zu ('%.*s') appears twice", i, (int) MIN(len, 64), s);
                if (r < 0)
                        return r;
        }
        if ((r = dsa__tokenizer_add_gguf_specials(t, n)) < 0 ||
            (r = gguf_merges(g, t)) < 0 ||
            (r = gguf_get_bool(g, "dsa.tokenizer.ignore_merges", llama3, &t->bpe.ignore_merges)) < 0 ||
            (r = gguf_get_bool(g, "dsa.tokenizer.fuse_unk", false, &t->bpe.fuse_unk)) < 0 ||
            (r = gguf_get_bool(g, "dsa.tokenizer.add_prefix_space", false, &t->pretok.add_prefix_space)) < 0 ||
            (r = gguf_get_bool(g, "tokenizer.ggml.add_bos_token", llama3, &add_bos)) < 0 ||
            (r = gguf_get_bool(g, "tokenizer.ggml.add_eos_token", false, &add_eos)) < 0 ||
            (r = dsa__gguf_get_id(g, "tokenizer.ggml.bos_token_id", n, &t->bos_id)) < 0 ||
            (r = dsa__gguf_get_id(g, "tokenizer.ggml.eos_token_id", n, &t->eos_id)) < 0 ||
            (r = dsa__gguf_get_id(g, "tokenizer.ggml.unknown_token_id", n, &t->unk_id)) < 0 ||
            (r = dsa__gguf_get_id(g, "tokenizer.ggml.padding_token_id", n, &t->pad_id)) < 0 ||
            (r = gguf_get_template(g, "dsa.tokenizer.template", n, false, &t->single)) < 0 ||
            (r = gguf_get_template(g, "dsa.tokenizer.template_pair", n, true, &t->pair)) < 0)
                return r;
        t->bpe.unk_id = t->unk_id >= 0 ? t->unk_id : -1;
        if (t->single.n == 0) {
                if ((add_bos && t->bos_id < 0) || (add_eos && t->eos_id < 0))
                        return dsa__error(-EBADMSG, "GGUF: add_%s_token is set but there is no %s_token_id",
                                          add_bos && t->bos_id < 0 ? "bos" : "eos", add_bos && t->bos_id < 0 ? "bos" : "eos");
                if ((add_bos && (r = template_add(&t->single, t->bos_id, 0)) < 0) ||
                    (r = template_add(&t->single, DSA__TEMPLATE_A, 0)) < 0 ||
                    (add_eos && (r = template_add(&t->single, t->eos_id, 0)) < 0))
                        return r;
        }
        if ((r = bpe_finish(t)) < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

static int set_template(struct dsa_gguf_writer *w, const char *key, const struct dsa__template *tp) {
        int32_t v[2 * DSA__TEMPLATE_MAX];

        for (size_t i = 0; i < tp->n; i++) {
                v[2 * i] = tp->id[i];
                v[2 * i + 1] = tp->type_id[i];
        }
        return dsa_gguf_writer_set_arr(w, key, DSA_GGUF_INT32, v, 2 * tp->n);
}

int dsa__tokenizer_bpe_to_gguf(const struct dsa_tokenizer *t, struct dsa_gguf_writer *w) {
        const struct dsa__template *s = &t->single;
        const char *pattern = t->pretok.pattern ? t->pretok.pattern : "", *pre = PRE_CUSTOM;
        size_t n = t->bpe.n_merges;
        char **merges;
        int r;

        for (size_t i = 0; i < ELEMENTSOF(known_pre); i++)
                if (strcmp(pattern, known_pre[i].pattern) == 0 && !t->pretok.add_prefix_space) {
                        pre = known_pre[i].pre;
                        break;
                }
        merges = calloc(n ? n : 1, sizeof(char *));
        if (!merges)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const char *a = t->vocab.tokens[t->bpe.merges[2 * i]], *b = t->vocab.tokens[t->bpe.merges[2 * i + 1]];
                if (!a[0] || strchr(a + 1, ' ')) {
                        dsa__strv_free(merges, n);
                        return dsa__error(-EOPNOTSUPP, "merge %zu: token '%.64s' is empty or has a space, which GGUF's \"a b\" merges cannot hold",
                                          i, a);
                }
                if (asprintf(&merges[i], "%s %s", a, b) < 0) {
                        merges[i] = NULL;
                        dsa__strv_free(merges, n);
                        return -ENOMEM;
                }
        }
        r = dsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
        if (r >= 0)
                r = dsa_gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
        if (r >= 0)
                r = dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *) t->vocab.tokens, t->vocab.n);
        if (r >= 0)
                r = dsa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", DSA_GGUF_INT32, t->token_type, t->vocab.n);
        if (r >= 0)
                r = dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *) merges, n);
        dsa__strv_free(merges, n);
        if (r < 0)
                return r;
        if ((t->bos_id >= 0 && (r = dsa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t) t->bos_id)) < 0) ||
            (t->eos_id >= 0 && (r = dsa_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t) t->eos_id)) < 0) ||
            (t->unk_id >= 0 && (r = dsa_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t) t->unk_id)) < 0) ||
            (t->pad_id >= 0 && (r = dsa_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t) t->pad_id)) < 0))
                return r;
        /* What llama.cpp understands of the template; ours below is the whole of it. */
        if ((r = dsa_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token",
                                          t->bos_id >= 0 && s->id[0] == t->bos_id)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token",
                                          t->eos_id >= 0 && s->n > 1 && s->id[s->n - 1] == t->eos_id)) < 0 ||
            (r = dsa_gguf_writer_set_str(w, "dsa.tokenizer.pattern", pattern)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "dsa.tokenizer.ignore_merges", t->bpe.ignore_merges)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "dsa.tokenizer.fuse_unk", t->bpe.fuse_unk)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "dsa.tokenizer.add_prefix_space", t->pretok.add_prefix_space)) < 0 ||
            (r = set_template(w, "dsa.tokenizer.template", s)) < 0 ||
            (r = set_template(w, "dsa.tokenizer.template_pair", &t->pair)) < 0)
                return r;
        return 0;
}
