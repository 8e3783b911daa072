/* BertNormalizer, BertPreTokenizer and the WordPiece model, character for character as Hugging
 * Face tokenizers (tokenizers/src/{normalizers/bert.rs,pre_tokenizers/bert.rs,models/wordpiece})
 * does them, plus llama.cpp's WPM variant (src/llama-vocab.cpp, llm_tokenizer_wpm_session) for
 * GGUF files that say nothing about normalization. Unicode properties come from utf8proc. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "wordpiece.h"

static uint64_t hash_bytes(const char *s, size_t len) {
        uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
        for (size_t i = 0; i < len; i++) {
                h ^= (uint8_t) s[i];
                h *= 0x100000001b3ULL;
        }
        return h ^ (h >> 29);
}

int dsa__vocab_init(struct dsa__vocab *v, size_t n) {
        size_t n_slots = 16;

        *v = (struct dsa__vocab) {};
        if (n > INT32_MAX / 4)
                return -E2BIG;
        while (n_slots < 2 * n)
                n_slots *= 2;
        v->tokens = calloc(n ? n : 1, sizeof(char *));
        v->lens = calloc(n ? n : 1, sizeof(uint32_t));
        v->slots = malloc(n_slots * sizeof(int32_t));
        if (!v->tokens || !v->lens || !v->slots) {
                dsa__vocab_done(v);
                return -ENOMEM;
        }
        memset(v->slots, 0xff, n_slots * sizeof(int32_t));
        v->n = n;
        v->n_slots = n_slots;
        return 0;
}

void dsa__vocab_done(struct dsa__vocab *v) {
        if (v->tokens)
                for (size_t i = 0; i < v->n; i++)
                        free(v->tokens[i]);
        free(v->tokens);
        free(v->lens);
        free(v->slots);
        *v = (struct dsa__vocab) {};
}

int32_t dsa__vocab_find(const struct dsa__vocab *v, const char *s, size_t len) {
        size_t mask = v->n_slots - 1;

        if (!v->slots)
                return -ENOENT;
        for (size_t i = hash_bytes(s, len) & mask;; i = (i + 1) & mask) {
                int32_t id = v->slots[i];
                if (id < 0)
                        return -ENOENT;
                if (v->lens[id] == len && memcmp(v->tokens[id], s, len) == 0)
                        return id;
        }
}

int dsa__vocab_set(struct dsa__vocab *v, int32_t id, const char *s, size_t len) {
        size_t mask = v->n_slots - 1, i;
        char *copy;

        if (id < 0 || (size_t) id >= v->n || v->tokens[id] || len > UINT32_MAX)
                return -EINVAL;
        for (i = hash_bytes(s, len) & mask; v->slots[i] >= 0; i = (i + 1) & mask) {
                int32_t other = v->slots[i];
                if (v->lens[other] == len && memcmp(v->tokens[other], s, len) == 0)
                        return -EEXIST;
        }
        copy = malloc(len + 1);
        if (!copy)
                return -ENOMEM;
        memcpy(copy, s, len);
        copy[len] = 0;
        v->tokens[id] = copy;
        v->lens[id] = (uint32_t) len;
        v->slots[i] = id;
        return 0;
}

int dsa__ids_push(struct dsa__ids *ids, int32_t id) {
        if (ids->n == ids->cap) {
                size_t cap = ids->cap ? ids->cap * 2 : 64;
                int32_t *v = realloc(ids->v, cap * sizeof(int32_t));
                if (!v)
                        return -ENOMEM;
                ids->v = v;
                ids->cap = cap;
        }
        ids->v[ids->n++] = id;
        return 0;
}

struct cps {
        uint32_t *v;
        size_t n, cap;
};

static int cps_reserve(struct cps *c, size_t extra) {
        size_t need;

        if (!size_add_ok(c->n, extra, &need))
                return -ENOMEM;
        if (need > c->cap) {
                size_t cap = MAX(need, c->cap * 2), bytes;
                uint32_t *v;
                if (!size_mul_ok(cap, sizeof(uint32_t), &bytes))
                        return -ENOMEM;
                v = realloc(c->v, bytes ? bytes : 4);
                if (!v)
                        return -ENOMEM;
                c->v = v;
                c->cap = cap;
        }
        return 0;
}

static int cps_push(struct cps *c, uint32_t cp) {
        int r = cps_reserve(c, 1);
        if (r < 0)
                return r;
        c->v[c->n++] = cp;
        return 0;
}

int dsa__utf8_decode(const char *s, size_t len, uint32_t **ret, size_t *ret_n) {
        _cleanup_free_ uint32_t *v = malloc((len ? len : 1) * sizeof(uint32_t));
        size_t n = 0;

        if (!v)
                return -ENOMEM;
        for (size_t i = 0; i < len;) {
                utf8proc_int32_t cp;
                utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *) s + i,
                                                      (utf8proc_ssize_t) MIN(len - i, 4), &cp);
                if (k <= 0 || cp < 0)
                        return -EILSEQ;
                v[n++] = (uint32_t) cp;
                i += (size_t) k;
        }
        *ret = TAKE_PTR(v);
        *ret_n = n;
        return 0;
}

int dsa__utf8_encode(const uint32_t *cps, size_t n, char **ret, size_t *ret_len) {
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

bool dsa__is_white_space(uint32_t c) {
        return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
               (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
               c == 0x205f || c == 0x3000;
}

static utf8proc_category_t category(uint32_t c) {
        return utf8proc_category((utf8proc_int32_t) c);
}

/* unicode_categories' is_other(): Cc, Cf, Cn, Co, Cs. */
static bool is_other(uint32_t c) {
        switch (category(c)) {
        case UTF8PROC_CATEGORY_CC:
        case UTF8PROC_CATEGORY_CF:
        case UTF8PROC_CATEGORY_CN:
        case UTF8PROC_CATEGORY_CO:
        case UTF8PROC_CATEGORY_CS:
                return true;
        default:
                return false;
        }
}

static bool is_unicode_punct(uint32_t c) {
        switch (category(c)) {
        case UTF8PROC_CATEGORY_PC:
        case UTF8PROC_CATEGORY_PD:
        case UTF8PROC_CATEGORY_PS:
        case UTF8PROC_CATEGORY_PE:
        case UTF8PROC_CATEGORY_PI:
        case UTF8PROC_CATEGORY_PF:
        case UTF8PROC_CATEGORY_PO:
                return true;
        default:
                return false;
        }
}

/* HF's is_bert_punc: ASCII punctuation (which includes the ASCII symbols $+<=>^`|~) or P*. */
static bool is_bert_punct(uint32_t c) {
        return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
               (c >= 123 && c <= 126) || is_unicode_punct(c);
}

/* HF's ranges, which differ from Google BERT's Python at Extension E: tokenizers wrote 0x2B920
 * where BERT has 0x2B820, and llama.cpp copied tokenizers. Parity means copying it too. */
static bool is_chinese_char(uint32_t c) {
        return (c >= 0x4e00 && c <= 0x9fff) || (c >= 0x3400 && c <= 0x4dbf) ||
               (c >= 0x20000 && c <= 0x2a6df) || (c >= 0x2a700 && c <= 0x2b73f) ||
               (c >= 0x2b740 && c <= 0x2b81f) || (c >= 0x2b920 && c <= 0x2ceaf) ||
               (c >= 0xf900 && c <= 0xfaff) || (c >= 0x2f800 && c <= 0x2fa1f);
}

/* Canonical decomposition with canonical reordering of combining marks: NFD. */
static int nfd(const uint32_t *in, size_t n, struct cps *out) {
        for (size_t i = 0; i < n; i++) {
                utf8proc_int32_t buf[16];
                utf8proc_ssize_t k = utf8proc_decompose_char((utf8proc_int32_t) in[i], buf,
                                                             ELEMENTSOF(buf), UTF8PROC_DECOMPOSE,
                                                             NULL);
                int r;
                if (k < 0 || k > (utf8proc_ssize_t) ELEMENTSOF(buf))
                        return -EILSEQ;
                r = cps_reserve(out, (size_t) k);
                if (r < 0)
                        return r;
                for (utf8proc_ssize_t j = 0; j < k; j++) {
                        uint32_t cp = (uint32_t) buf[j];
                        int ccc = utf8proc_get_property(buf[j])->combining_class;
                        size_t at = out->n++;
                        /* Stable insertion among the preceding non-starters. */
                        while (ccc > 0 && at > 0 &&
                               utf8proc_get_property((utf8proc_int32_t) out->v[at - 1])->combining_class >
                                       ccc) {
                                out->v[at] = out->v[at - 1];
                                at--;
                        }
                        out->v[at] = cp;
                }
        }
        return 0;
}

int dsa__bert_normalize(const struct dsa_tokenizer_options *o, const uint32_t *cps, size_t n,
                        uint32_t **ret, size_t *ret_n) {
        _cleanup_free_ uint32_t *tmp_v = NULL;
        struct cps a = {}, b = {};
        bool strip = o->strip_accents < 0 ? o->lowercase : o->strip_accents > 0;
        int r;

        /* clean_text and handle_chinese_chars in one pass; they commute. */
        r = cps_reserve(&a, n);
        if (r < 0)
                goto fail;
        for (size_t i = 0; i < n; i++) {
                uint32_t c = cps[i];
                if (o->clean_text) {
                        bool tnr = c == '\t' || c == '\n' || c == '\r';
                        if (c == 0 || c == 0xfffd || (!tnr && is_other(c)))
                                continue;
                        if (tnr || dsa__is_white_space(c))
                                c = ' ';
                }
                if (o->handle_chinese_chars && is_chinese_char(c)) {
                        r = cps_reserve(&a, 3);
                        if (r < 0)
                                goto fail;
                        a.v[a.n++] = ' ';
                        a.v[a.n++] = c;
                        a.v[a.n++] = ' ';
                } else {
                        r = cps_push(&a, c);
                        if (r < 0)
                                goto fail;
                }
        }

        if (strip) {
                size_t k = 0;
                r = nfd(a.v, a.n, &b);
                if (r < 0)
                        goto fail;
                for (size_t i = 0; i < b.n; i++)
                        if (category(b.v[i]) != UTF8PROC_CATEGORY_MN)
                                b.v[k++] = b.v[i];
                b.n = k;
                tmp_v = a.v;
                a = b;
                b = (struct cps) {};
        }

        if (o->lowercase) {
                /* Rust's char::to_lowercase: the simple mapping plus SpecialCasing's one
                 * unconditional multi-character lowercase, U+0130 -> "i\u0307". */
                for (size_t i = 0; i < a.n; i++) {
                        uint32_t c = a.v[i];
                        if (c == 0x130)
                                r = cps_push(&b, 'i') ?: cps_push(&b, 0x307);
                        else
                                r = cps_push(&b, (uint32_t) utf8proc_tolower((utf8proc_int32_t) c));
                        if (r < 0)
                                goto fail;
                }
                free(a.v);
                a = b;
                b = (struct cps) {};
        }

        if (!a.v && !(a.v = malloc(sizeof(uint32_t)))) {
                r = -ENOMEM;
                goto fail;
        }
        *ret = a.v;
        *ret_n = a.n;
        return 0;
fail:
        free(a.v);
        free(b.v);
        return r;
}

/* Greedy longest-match-first over one word (codepoints w[0..k)). Pieces after the first carry
 * the continuation prefix. A word with any unmatched rest becomes a single [UNK]. */
static int wordpiece_word(const struct dsa__wordpiece *wp, const uint32_t *w, size_t k,
                          size_t max_chars, char *buf, size_t *off, struct dsa__ids *out) {
        size_t n_before = out->n, plen = wp->prefix_len;
        char *bytes = buf + plen;
        int r;

        if (k == 0)
                return 0;
        if (k > max_chars)
                goto unk;

        off[0] = 0;
        for (size_t i = 0; i < k; i++)
                off[i + 1] = off[i] + (size_t) utf8proc_encode_char((utf8proc_int32_t) w[i],
                                                                    (uint8_t *) bytes + off[i]);

        for (size_t start = 0; start < k;) {
                int32_t id = -ENOENT;
                size_t end;
                for (end = k; end > start; end--) {
                        size_t len = off[end] - off[start];
                        if (start == 0)
                                id = dsa__vocab_find(wp->vocab, bytes, len);
                        else {
                                /* Slide the prefix right in front of the piece. */
                                char *p = bytes + off[start] - plen;
                                char save[16];
                                memcpy(save, p, plen);
                                memcpy(p, wp->prefix, plen);
                                id = dsa__vocab_find(wp->vocab, p, plen + len);
                                memcpy(p, save, plen);
                        }
                        if (id >= 0 && wp->not_model && wp->not_model[id])
                                id = -ENOENT;
                        if (id >= 0)
                                break;
                }
                if (id < 0)
                        goto unk;
                r = dsa__ids_push(out, id);
                if (r < 0)
                        return r;
                start = end;
        }
        return 0;
unk:
        out->n = n_before;
        if (wp->unk_id < 0)
                return dsa__error(-ENOENT, "word has no WordPiece match and the vocabulary has no unknown token");
        return dsa__ids_push(out, wp->unk_id);
}

/* llama.cpp's unicode_cpts_normalize_nfd() is not NFD: it maps each codepoint to the first
 * codepoint of its NFD, so a precomposed "é" loses its accent but Hangul syllables keep only
 * their leading consonant and combining marks already in the input stay. */
static uint32_t llama_nfd_first(uint32_t c) {
        utf8proc_int32_t buf[16];
        utf8proc_ssize_t k = utf8proc_decompose_char((utf8proc_int32_t) c, buf, ELEMENTSOF(buf),
                                                     UTF8PROC_DECOMPOSE, NULL);
        return k > 0 && k <= (utf8proc_ssize_t) ELEMENTSOF(buf) ? (uint32_t) buf[0] : c;
}

/* llama.cpp's CODEPOINT_FLAG_CONTROL: Cc, Cf, Co, Cs (Cn is "undefined", not control). */
static bool llama_is_control(uint32_t c) {
        utf8proc_category_t k = category(c);
        return k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CO ||
               k == UTF8PROC_CATEGORY_CS;
}

static bool llama_is_symbol(uint32_t c) {
        utf8proc_category_t k = category(c);
        return k == UTF8PROC_CATEGORY_SM || k == UTF8PROC_CATEGORY_SC || k == UTF8PROC_CATEGORY_SK ||
               k == UTF8PROC_CATEGORY_SO;
}

int dsa__wordpiece_encode(const struct dsa__wordpiece *wp, const uint32_t *cps, size_t n,
                          struct dsa__ids *out) {
        _cleanup_free_ uint32_t *word = NULL;
        _cleanup_free_ char *buf = NULL;
        _cleanup_free_ size_t *off = NULL;
        size_t k = 0, buf_size, max_chars;
        bool llama = wp->flavour == DSA__WPM_LLAMA;
        int r;

        if (wp->prefix_len > 16)
                return -EINVAL;
        /* A word is at most n codepoints of at most 4 bytes, with the prefix slid in front. */
        if (!size_mul_ok(n + 1, 4, &buf_size) || !size_add_ok(buf_size, wp->prefix_len, &buf_size))
                return -ENOMEM;
        word = malloc((n + 1) * sizeof(uint32_t));
        buf = malloc(buf_size);
        off = malloc((n + 2) * sizeof(size_t));
        if (!word || !buf || !off)
                return -ENOMEM;
        /* llama.cpp has no per-word length limit. */
        max_chars = llama ? SIZE_MAX : wp->opts.max_input_chars_per_word;

        for (size_t i = 0; i < n; i++) {
                uint32_t c = cps[i];
                bool isolate;

                if (llama) {
                        c = llama_nfd_first(c);
                        if (dsa__is_white_space(c)) {
                                r = wordpiece_word(wp, word, k, max_chars, buf, off, out);
                                if (r < 0)
                                        return r;
                                k = 0;
                                continue;
                        }
                        if (c == 0 || c == 0xfffd || llama_is_control(c))
                                continue;
                        isolate = is_unicode_punct(c) || (c < 0x7f && llama_is_symbol(c)) ||
                                  is_chinese_char(c);
                        c = (uint32_t) utf8proc_tolower((utf8proc_int32_t) c);
                } else {
                        if (dsa__is_white_space(c)) {
                                r = wordpiece_word(wp, word, k, max_chars, buf, off, out);
                                if (r < 0)
                                        return r;
                                k = 0;
                                continue;
                        }
                        isolate = is_bert_punct(c);
                }

                if (isolate) {
                        r = wordpiece_word(wp, word, k, max_chars, buf, off, out);
                        if (r < 0)
                                return r;
                        k = 0;
                        r = wordpiece_word(wp, &c, 1, max_chars, buf, off, out);
                        if (r < 0)
                                return r;
                } else
                        word[k++] = c;
        }
        return wordpiece_word(wp, word, k, max_chars, buf, off, out);
}
