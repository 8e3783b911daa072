/* The regex pre-tokenizer: HF's Split(Isolated) over PCRE2. Matches run on the JIT when it
 * compiled, and on the interpreter for a pattern the JIT refuses or a match that outgrows the
 * JIT's stack; PCRE2's match and heap limits bound what a hostile pattern can cost. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "pretok.h"

/* The Unicode White_Space property, as a character class body. */
#define WHITE_SPACE "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

static int push(char **buf, size_t *n, size_t *cap, const char *s, size_t len) {
        if (*n + len + 1 > *cap) {
                size_t c = MAX(*cap * 2, *n + len + 1);
                char *b = realloc(*buf, c);
                if (!b)
                        return -ENOMEM;
                *buf = b;
                *cap = c;
        }
        memcpy(*buf + *n, s, len);
        *n += len;
        (*buf)[*n] = 0;
        return 0;
}

/* pattern with \s (and \S outside classes) spelled out as White_Space. Tracks just enough of
 * the syntax to know whether an escape sits inside a class: escapes, \Q...\E, [...] with a
 * leading ']' and POSIX [:name:] inside. */
static int rewrite_white_space(const char *p, size_t len, char **ret) {
        _cleanup_free_ char *out = NULL;
        size_t n = 0, cap = 0;
        bool in_class = false;
        int r = 0;

        for (size_t i = 0; i < len && r >= 0;) {
                char c = p[i];
                if (c == '\\' && i + 1 < len) {
                        char e = p[i + 1];
                        if (e == 's')
                                r = in_class ? push(&out, &n, &cap, WHITE_SPACE, strlen(WHITE_SPACE))
                                             : push(&out, &n, &cap, "[" WHITE_SPACE "]", strlen(WHITE_SPACE) + 2);
                        else if (e == 'S' && !in_class)
                                r = push(&out, &n, &cap, "[^" WHITE_SPACE "]", strlen(WHITE_SPACE) + 3);
                        else if (e == 'Q') {
                                const char *end = NULL;
                                for (size_t j = i + 2; j + 1 < len; j++)
                                        if (p[j] == '\\' && p[j + 1] == 'E') {
                                                end = p + j + 2;
                                                break;
                                        }
                                if (!end)
                                        end = p + len;
                                r = push(&out, &n, &cap, p + i, (size_t) (end - (p + i)));
                                i = (size_t) (end - p);
                                continue;
                        } else
                                r = push(&out, &n, &cap, p + i, 2);
                        i += 2;
                        continue;
                }
                if (!in_class && c == '[') {
                        size_t j = i + 1;
                        in_class = true;
                        if (j < len && p[j] == '^')
                                j++;
                        if (j < len && p[j] == ']')
                                j++; /* a leading ']' is a literal */
                        r = push(&out, &n, &cap, p + i, j - i);
                        i = j;
                        continue;
                }
                if (in_class && c == '[' && i + 1 < len && p[i + 1] == ':') {
                        const char *end = memchr(p + i + 2, ']', len - i - 2);
                        size_t k = end ? (size_t) (end - p) + 1 - i : 2;
                        r = push(&out, &n, &cap, p + i, k);
                        i += k;
                        continue;
                }
                if (in_class && c == ']')
                        in_class = false;
                r = push(&out, &n, &cap, p + i, 1);
                i++;
        }
        if (r < 0)
                return r;
        if (!out && (r = push(&out, &n, &cap, "", 0)) < 0)
                return r;
        *ret = TAKE_PTR(out);
        return 0;
}

int dsa__pretok_init(struct dsa__pretok *p, const char *pattern, size_t len) {
        _cleanup_free_ char *src = NULL;
        pcre2_code *re;
        PCRE2_SIZE at;
        int r, err;

        *p = (struct dsa__pretok) {};
        if (len > DSA_PRETOK_MAX_PATTERN)
                return dsa__error(-EBADMSG, "pre-tokenizer regex of %zu bytes is too long", len);
        if (memchr(pattern, 0, len))
                return dsa__error(-EBADMSG, "pre-tokenizer regex contains a NUL byte");
        r = rewrite_white_space(pattern, len, &src);
        if (r < 0)
                return r;
        /* No \C: a match must never end inside a character. */
        re = pcre2_compile((PCRE2_SPTR) src, strlen(src), PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C,
                           &err, &at, NULL);
        if (!re) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(err, msg, sizeof(msg));
                return dsa__error(-EBADMSG, "pre-tokenizer regex does not compile: %s", (const char *) msg);
        }
        (void) pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter does without */
        p->pattern = strndup(pattern, len);
        if (!p->pattern) {
                pcre2_code_free(re);
                return -ENOMEM;
        }
        p->re = re;
        return 0;
}

void dsa__pretok_done(struct dsa__pretok *p) {
        pcre2_code_free(p->re);
        free(p->pattern);
        *p = (struct dsa__pretok) {};
}

char *dsa__pretok_escape(const char *s, size_t len) {
        char *out = malloc(2 * len + 1), *o = out;

        if (!out)
                return NULL;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char) s[i];
                if (c < 0x80 && !(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z'))
                        *o++ = '\\';
                *o++ = (char) c;
        }
        *o = 0;
        return out;
}

static int match(const pcre2_code *re, const char *s, size_t len, size_t at, pcre2_match_data *md) {
        int rc = pcre2_match(re, (PCRE2_SPTR) s, len, at, PCRE2_NO_UTF_CHECK, md, NULL);

        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
                rc = pcre2_match(re, (PCRE2_SPTR) s, len, at, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (rc >= 0 || rc == PCRE2_ERROR_NOMATCH)
                return rc;
        if (rc == PCRE2_ERROR_NOMEMORY)
                return -ENOMEM;
        return dsa__error(-E2BIG, "pre-tokenizer regex gave up at byte %zu (PCRE2 error %d)", at, rc);
}

static int split(const struct dsa__pretok *p, const char *s, size_t len, dsa__pretok_word_fn fn,
                 void *userdata) {
        pcre2_match_data *md;
        size_t at = 0, prev = 0;
        int r = 0;

        if (!p->re)
                return len > 0 ? fn(userdata, s, len) : 0;
        md = pcre2_match_data_create_from_pattern(p->re, NULL);
        if (!md)
                return -ENOMEM;
        while (at <= len) {
                const PCRE2_SIZE *ov;
                size_t start, end;
                int rc = match(p->re, s, len, at, md);
                if (rc == PCRE2_ERROR_NOMATCH)
                        break;
                if (rc < 0) {
                        r = rc;
                        goto out;
                }
                ov = pcre2_get_ovector_pointer(md);
                start = ov[0];
                end = ov[1];
                if (start < at || end < start || end > len) { /* \K and lookarounds can do this */
                        r = dsa__error(-EBADMSG, "pre-tokenizer regex gave a match outside the text");
                        goto out;
                }
                if (start > prev && (r = fn(userdata, s + prev, start - prev)) < 0)
                        goto out;
                if (end > start && (r = fn(userdata, s + start, end - start)) < 0)
                        goto out;
                prev = end;
                if (end > start)
                        at = end;
                else if (end == len)
                        break;
                else { /* an empty match still cuts, as HF's find_iter; step one character on */
                        at = end + 1;
                        while (at < len && ((unsigned char) s[at] & 0xc0) == 0x80)
                                at++;
                }
        }
        if (prev < len)
                r = fn(userdata, s + prev, len - prev);
out:
        pcre2_match_data_free(md);
        return r;
}

int dsa__pretok_split(const struct dsa__pretok *p, const char *s, size_t len, dsa__pretok_word_fn fn,
                      void *userdata) {
        _cleanup_free_ char *buf = NULL;

        if (len == 0)
                return 0;
        if (!p->add_prefix_space || s[0] == ' ')
                return split(p, s, len, fn, userdata);
        buf = malloc(len + 1);
        if (!buf)
                return -ENOMEM;
        buf[0] = ' ';
        memcpy(buf + 1, s, len);
        return split(p, buf, len + 1, fn, userdata);
}
