/* Byte-level BPE tokenizer. On a small hand-built vocabulary: merges by rank (string and pair
 * forms alike), the byte mapping, added tokens in the text, templates with BOS and pairs,
 * ignore_merges, unk, PCRE2's \s made Unicode's White_Space, invalid UTF-8, a 1 MB word in well
 * under a second, decode, damaged tokenizer.json and GGUF files (a seeded RNG), and a GGUF round
 * trip. Against ../shared (skipped with 77 when absent): every line of the Hugging Face
 * references of llama-tiny, gpt2-tiny and GPT-2, llama.cpp's gpt-2 vectors, decode(encode(x)) == x on all of those,
 * HF json -> GGUF -> load giving the same ids, and the ids of longlm-4l256's eval_docs as a
 * prefix of our encoding of each document. */
#define _GNU_SOURCE
#include <errno.h>
#include <json-c/json.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/gguf.h"
#include "engine/pretok.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "testutil.h"

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* ---- a small vocabulary: the 256 byte characters, then merged tokens, then specials */

static const char *const merges[][2] = {
        { "Ġ", "t" }, { "h", "e" }, { "Ġt", "he" }, { "l", "l" }, { "ll", "o" }, { "h", "ello" },
        { "Ġ", "w" }, { "o", "r" }, { "Ġw", "or" }, { "Ġwor", "ld" }, { "l", "d" }, { "Ã", "©" },
        { "c", "a" }, { "ca", "f" }, { "caf", "Ã©" }, { "e", "llo" }, { "e", "ll" }, { "h", "ell" },
};
/* Merged token strings beyond the bytes, in id order; "ld" comes after its use in "Ġworld" on
 * purpose: the rank decides, not the id. "hello" and "hell" are tokens that the merges never
 * make of those words (ignore_merges does). */
static const char *const merged[] = {
        "Ġt", "he", "Ġthe", "ll", "llo", "hello", "Ġw", "or", "Ġwor", "Ġworld", "ld", "Ã©",
        "ca", "caf", "cafÃ©", "hell", "ello", "ell",
};
#define N_BYTES 256
#define BOS (N_BYTES + (int) ELEMENTSOF(merged))
#define EOS (BOS + 1)
#define N_VOCAB (EOS + 1)

/* GPT-2's bytes_to_unicode(), written out independently of the engine's. */
static void byte_char(int b, char out[3]) {
        int cp = b, n = 0;

        if (!((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae)) {
                for (int c = 0; c < b; c++)
                        n += !((c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || c >= 0xae);
                cp = 256 + n;
        }
        if (cp < 0x80) {
                out[0] = (char) cp;
                out[1] = 0;
        } else {
                out[0] = (char) (0xc0 | (cp >> 6));
                out[1] = (char) (0x80 | (cp & 0x3f));
                out[2] = 0;
        }
}


/* A tokenizer.json over that vocabulary: pre is the pre_tokenizer JSON, post the post_processor
 * JSON ("null" for none), model_extra more members for the model; merges as "a b" strings or as
 * [a, b] pairs. */
static char *make_json(const char *pre, const char *post, const char *model_extra, bool pairs) {
        json_object *root = json_object_new_object(), *model = json_object_new_object();
        json_object *vocab = json_object_new_object(), *jm = json_object_new_array();
        json_object *added = json_object_new_array();
        const char *specials[] = { "<|begin_of_text|>", "<|end_of_text|>" };
        char *s;

        for (int b = 0; b < N_BYTES; b++) {
                char c[3];
                byte_char(b, c);
                json_object_object_add(vocab, c, json_object_new_int(b));
        }
        for (size_t i = 0; i < ELEMENTSOF(merged); i++)
                json_object_object_add(vocab, merged[i], json_object_new_int(N_BYTES + (int) i));
        for (int i = 0; i < 2; i++) {
                json_object *a = json_object_new_object();
                json_object_object_add(vocab, specials[i], json_object_new_int(BOS + i));
                json_object_object_add(a, "id", json_object_new_int(BOS + i));
                json_object_object_add(a, "content", json_object_new_string(specials[i]));
                json_object_object_add(a, "single_word", json_object_new_boolean(false));
                json_object_object_add(a, "lstrip", json_object_new_boolean(false));
                json_object_object_add(a, "rstrip", json_object_new_boolean(false));
                json_object_object_add(a, "normalized", json_object_new_boolean(false));
                json_object_object_add(a, "special", json_object_new_boolean(true));
                json_object_array_add(added, a);
        }
        for (size_t i = 0; i < ELEMENTSOF(merges); i++) {
                if (pairs) {
                        json_object *p = json_object_new_array();
                        json_object_array_add(p, json_object_new_string(merges[i][0]));
                        json_object_array_add(p, json_object_new_string(merges[i][1]));
                        json_object_array_add(jm, p);
                } else {
                        char *m;
                        assert_true(asprintf(&m, "%s %s", merges[i][0], merges[i][1]) > 0);
                        json_object_array_add(jm, json_object_new_string(m));
                        free(m);
                }
        }
        json_object_object_add(model, "type", json_object_new_string("BPE"));
        json_object_object_add(model, "dropout", NULL);
        json_object_object_add(model, "unk_token", NULL);
        json_object_object_add(model, "continuing_subword_prefix", NULL);
        json_object_object_add(model, "end_of_word_suffix", NULL);
        json_object_object_add(model, "fuse_unk", json_object_new_boolean(false));
        json_object_object_add(model, "byte_fallback", json_object_new_boolean(false));
        json_object_object_add(model, "ignore_merges", json_object_new_boolean(false));
        json_object_object_add(model, "vocab", vocab);
        json_object_object_add(model, "merges", jm);
        if (model_extra) {
                json_object *extra = json_tokener_parse(model_extra);
                assert_non_null(extra);
                json_object_object_foreach(extra, k, v)
                        json_object_object_add(model, k, json_object_get(v));
                json_object_put(extra);
        }
        json_object_object_add(root, "version", json_object_new_string("1.0"));
        json_object_object_add(root, "added_tokens", added);
        json_object_object_add(root, "normalizer", NULL);
        json_object_object_add(root, "pre_tokenizer", json_tokener_parse(pre));
        json_object_object_add(root, "post_processor", json_tokener_parse(post));
        json_object_object_add(root, "decoder", json_tokener_parse("{\"type\":\"ByteLevel\",\"add_prefix_space\":true}"));
        json_object_object_add(root, "model", model);
        s = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN));
        json_object_put(root);
        assert_non_null(s);
        return s;
}

#define PRE_LLAMA3                                                                                    \
        "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"      \
        "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "      \
        "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"      \
        "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false," \
        "\"trim_offsets\":true,\"use_regex\":false}]}"
#define PRE_GPT2 "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}"
#define POST_NONE                                                                                     \
        "{\"type\":\"TemplateProcessing\",\"single\":[{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"   \
        "\"pair\":[{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"Sequence\":{\"id\":\"B\",\"type_id\":1}}]," \
        "\"special_tokens\":{}}"
/* Meta's Llama 3: ByteLevel then a template with BOS before each text. */
#define POST_BOS                                                                                      \
        "{\"type\":\"Sequence\",\"processors\":[{\"type\":\"ByteLevel\",\"add_prefix_space\":true,"    \
        "\"trim_offsets\":false,\"use_regex\":true},{\"type\":\"TemplateProcessing\",\"single\":["     \
        "{\"SpecialToken\":{\"id\":\"<|begin_of_text|>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}]," \
        "\"pair\":[{\"SpecialToken\":{\"id\":\"<|begin_of_text|>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}," \
        "{\"SpecialToken\":{\"id\":\"<|begin_of_text|>\",\"type_id\":1}},{\"Sequence\":{\"id\":\"B\",\"type_id\":1}}]," \
        "\"special_tokens\":{\"<|begin_of_text|>\":{\"id\":\"<|begin_of_text|>\",\"ids\":[274],\"tokens\":[\"<|begin_of_text|>\"]}}}]}"
_Static_assert(BOS == 274, "POST_BOS names BOS by its id");

static struct dsa_tokenizer *load_json(const char *json) {
        struct dsa_tokenizer *t = NULL;
        int r = dsa_tokenizer_from_hf_json(json, strlen(json), &t);

        if (r < 0)
                fail_msg("load: %s", dsa_error_message(r));
        return t;
}

static struct dsa_tokenizer *load(const char *pre, const char *post, const char *model_extra) {
        _cleanup_free_ char *json = make_json(pre, post, model_extra, false);
        return load_json(json);
}

#define IDS(...) ((const int32_t[]) { __VA_ARGS__, -1 })
#define NONE ((const int32_t[]) { -1 })
#define M(i) (N_BYTES + (i)) /* merged[i] */
#define EXPECT(t, text, ...) dsa_test_expect_encode(t, text, strlen(text), NULL, 0, 0, IDS(__VA_ARGS__), NULL)

/* decode(ids) must give text back, NUL-terminated. */
static void expect_decode(const struct dsa_tokenizer *t, const int32_t *ids, size_t n, const char *text,
                          size_t len) {
        _cleanup_free_ char *s = NULL;
        size_t s_len;
        int r = dsa_tokenizer_decode(t, ids, n, &s, &s_len);

        if (r < 0)
                fail_msg("decode: %s", dsa_error_message(r));
        if (s_len != len || memcmp(s, text, len) != 0)
                fail_msg("decode gave '%s', want '%.*s'", s, (int) len, text);
        assert_int_equal(s[s_len], 0);
}

static bool roundtrips(const struct dsa_tokenizer *t, const char *text, size_t len) {
        struct dsa_encoding e = {};
        _cleanup_free_ char *s = NULL;
        size_t s_len = 0;
        bool ok;

        ok = dsa_tokenizer_encode(t, text, len, NULL, 0, 0, 0, &e) >= 0 &&
             dsa_tokenizer_decode(t, e.ids, e.n, &s, &s_len) >= 0 && s_len == len && memcmp(s, text, len) == 0;
        dsa_encoding_clear(&e);
        return ok;
}

static void test_merges(void **state) {
        _cleanup_free_ char *json = make_json(PRE_LLAMA3, POST_NONE, NULL, true);
        struct dsa_tokenizer *t = load(PRE_LLAMA3, POST_NONE, NULL), *u = load_json(json);
        struct dsa_tokenizer_options o;

        assert_int_equal(dsa_tokenizer_kind(t), DSA_TOKENIZER_BPE);
        assert_int_equal(dsa_tokenizer_n_vocab(t), N_VOCAB);
        assert_int_equal(dsa_tokenizer_cls_id(t), -ENOENT);
        assert_int_equal(dsa_tokenizer_sep_id(t), -ENOENT);
        assert_int_equal(dsa_tokenizer_pad_id(t), -ENOENT);
        assert_int_equal(dsa_tokenizer_bos_id(t), BOS); /* by name: the template adds none */
        assert_int_equal(dsa_tokenizer_eos_id(t), EOS);
        assert_string_equal(dsa_tokenizer_token(t, M(9)), "Ġworld");
        assert_int_equal(dsa_tokenizer_lookup(t, "Ġthe"), M(2));
        assert_int_equal(dsa_tokenizer_get_options(t, &o), -EOPNOTSUPP);

        /* "Ġ t" (rank 0) and "h e" (1), then "Ġt he" (2). */
        EXPECT(t, " the", M(2));
        /* "h e" (1) first, then "l l" (3), "ll o" (4); there is no "he llo", and "h ello" (5)
         * never gets its chance. */
        EXPECT(t, "hello", M(1), M(4));
        EXPECT(t, "hell", M(1), M(3));
        /* Without "h e": "e llo" (15), queued once "ll o" made its right side, beats "e ll" (16),
         * queued earlier. */
        EXPECT(t, "Hello", 'H', M(16));
        /* "Ġwor ld" (9) waits for "l d" (10): a rank applies once both sides exist. */
        EXPECT(t, " world", M(9));
        /* é is the two bytes "Ã" "©": merged (11), then "caf Ã©" (14). No merge takes the space. */
        EXPECT(t, "hello world café", M(1), M(4), M(9), ' ', M(14));
        EXPECT(t, "\tz", '\t', 'z');
        dsa_test_expect_encode(t, "", 0, NULL, 0, 0, NONE, NULL);
        dsa_test_expect_encode(t, "", 0, NULL, DSA_ENCODE_SPECIAL, 0, NONE, NULL);
        /* The same file with [a, b] merges. */
        EXPECT(u, "hello world café", M(1), M(4), M(9), ' ', M(14));
        EXPECT(u, "Hello", 'H', M(16));
        dsa_tokenizer_free(u);
        dsa_tokenizer_free(t);
}

static void test_added_tokens(void **state) {
        struct dsa_tokenizer *t = load(PRE_LLAMA3, POST_NONE, NULL);
        const char *texts[] = { "<|begin_of_text|>hello<|end_of_text|>", "<|begin_of_text|", "a<|end_of_text|>b",
                                "<|begin_of_text|><|begin_of_text|>" };

        EXPECT(t, texts[0], BOS, M(1), M(4), EOS);
        EXPECT(t, texts[2], 'a', EOS, 'b');
        EXPECT(t, texts[3], BOS, BOS);
        for (size_t i = 0; i < ELEMENTSOF(texts); i++)
                assert_true(roundtrips(t, texts[i], strlen(texts[i])));
        {
                /* Cut short, it is no special token: plain bytes. */
                struct dsa_encoding e = {};
                assert_int_equal(dsa_tokenizer_encode(t, texts[1], strlen(texts[1]), NULL, 0, 0, 0, &e), 0);
                for (size_t i = 0; i < e.n; i++)
                        assert_true(e.ids[i] < N_BYTES);
                dsa_encoding_clear(&e);
        }
        dsa_tokenizer_free(t);
}

static void test_template(void **state) {
        struct dsa_tokenizer *t = load(PRE_LLAMA3, POST_BOS, NULL);

        assert_int_equal(dsa_tokenizer_bos_id(t), BOS);
        assert_int_equal(dsa_tokenizer_eos_id(t), EOS);
        dsa_test_expect_encode(t, " the", 4, NULL, DSA_ENCODE_SPECIAL, 0, IDS(BOS, M(2)), NULL);
        dsa_test_expect_encode(t, " the", 4, NULL, 0, 0, IDS(M(2)), NULL);
        dsa_test_expect_encode(t, "", 0, NULL, DSA_ENCODE_SPECIAL, 0, IDS(BOS), NULL);
        dsa_test_expect_encode(t, " the", 4, "hello", DSA_ENCODE_SPECIAL, 0, IDS(BOS, M(2), BOS, M(1), M(4)),
                               IDS(0, 0, 1, 1, 1));
        dsa_test_expect_encode(t, " the", 4, "hello", 0, 0, IDS(M(2), M(1), M(4)), IDS(0, 1, 1));
        /* longest_first: 5 ids, 2 specials, the longer text gives way first. */
        dsa_test_expect_encode(t, "a b c d", 7, "hello", DSA_ENCODE_SPECIAL, 5, IDS(BOS, 'a', ' ', BOS, M(1)),
                               IDS(0, 0, 0, 1, 1));
        dsa_test_expect_encode(t, "a b c d", 7, NULL, DSA_ENCODE_SPECIAL, 3, IDS(BOS, 'a', ' '), NULL);
        {
                struct dsa_encoding e = {};
                assert_int_equal(dsa_tokenizer_encode(t, "a", 1, "b", 1, DSA_ENCODE_SPECIAL, 1, &e), -EINVAL);
                assert_int_equal(dsa_tokenizer_encode(t, "a", 1, NULL, 0, 1u << 5, 0, &e), -EINVAL);
                assert_int_equal(dsa_tokenizer_encode(NULL, "a", 1, NULL, 0, 0, 0, &e), -EINVAL);
        }
        dsa_tokenizer_free(t);
}

static void test_ignore_merges(void **state) {
        struct dsa_tokenizer *t = load(PRE_LLAMA3, POST_NONE, "{\"ignore_merges\":true}");

        EXPECT(t, "hello", M(5));
        EXPECT(t, "hell", M(15));
        EXPECT(t, "Hello", 'H', M(16));
        EXPECT(t, " world", M(9));
        dsa_tokenizer_free(t);
}

/* Bytes without a token: dropped (HF without unk_token), or unk, fused or not. */
static void test_unk(void **state) {
        static const char *const fmt =
                "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"<unk>\":2,\"ab\":3},\"merges\":[\"a b\"]%s},"
                "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}}";
        const char *extra[] = { "", ",\"unk_token\":\"<unk>\"", ",\"unk_token\":\"<unk>\",\"fuse_unk\":true" };
        const int32_t *want[] = { IDS(3, 3), IDS(0, 2, 2, 3), IDS(0, 2, 3) };

        for (size_t i = 0; i < ELEMENTSOF(extra); i++) {
                char json[512];
                struct dsa_tokenizer *t;
                snprintf(json, sizeof(json), fmt, extra[i]);
                t = load_json(json);
                dsa_test_expect_encode(t, "axyab", 5, NULL, 0, 0, i == 0 ? IDS(0, 3) : want[i], NULL);
                dsa_test_expect_encode(t, "abab", 4, NULL, 0, 0, want[0], NULL);
                dsa_tokenizer_free(t);
        }
}

struct words {
        const char *const *want;
        size_t n;
};

static int check_word(void *userdata, const char *s, size_t len) {
        struct words *w = userdata;

        if (!w->want[w->n])
                fail_msg("extra word '%.*s'", (int) len, s);
        if (strlen(w->want[w->n]) != len || memcmp(w->want[w->n], s, len) != 0)
                fail_msg("word %zu is '%.*s', want '%s'", w->n, (int) len, s, w->want[w->n]);
        w->n++;
        return 0;
}

/* The words pattern cuts text into, NULL-terminated. */
static void expect_words(const char *pattern, const char *text, const char *const *want) {
        struct dsa__pretok p;
        struct words w = { want, 0 };
        int r = dsa__pretok_init(&p, pattern, strlen(pattern));

        if (r < 0)
                fail_msg("pattern '%s': %s", pattern, dsa_error_message(r));
        assert_int_equal(dsa__pretok_split(&p, text, strlen(text), check_word, &w), 0);
        if (want[w.n])
                fail_msg("'%s': word '%s' missing", text, want[w.n]);
        dsa__pretok_done(&p);
}

#define WORDS(...) ((const char *const[]) { __VA_ARGS__, NULL })
#define MVS "\xe1\xa0\x8e" /* U+180E, Cf: no White_Space since Unicode 6.3, but in PCRE2's \s */

static void test_pretok(void **state) {
        const char *l3 = DSA_PRETOK_LLAMA3, *g2 = DSA_PRETOK_GPT2;

        expect_words(l3, "Hello world", WORDS("Hello", " world"));
        expect_words(l3, "it's IT'S", WORDS("it", "'s", " IT", "'S"));
        expect_words(l3, "12345", WORDS("123", "45"));
        expect_words(l3, "  hi", WORDS(" ", " hi"));
        expect_words(l3, "a\n\nb", WORDS("a", "\n\n", "b"));
        expect_words(l3, "x!!\n\ny", WORDS("x", "!!\n\n", "y"));
        expect_words(l3, "!" MVS, WORDS("!" MVS));
        expect_words(g2, "Hello  world", WORDS("Hello", " ", " world"));
        expect_words(g2, "it's 12345", WORDS("it", "'s", " 12345"));
        expect_words(g2, "!" MVS " ", WORDS("!" MVS, " "));
        /* \s inside a class and \S outside are White_Space too; \Q...\E stays literal. */
        expect_words("[\\s]+", "a " MVS " b", WORDS("a", " ", MVS, " ", "b"));
        expect_words("\\S+", "a" MVS " b", WORDS("a" MVS, " ", "b"));
        expect_words("\\Q\\s\\E", "a\\sb", WORDS("a", "\\s", "b"));
        expect_words("[]s]", "a]s", WORDS("a", "]", "s"));
        /* An empty match still cuts, as HF's find_iter does. */
        expect_words("x*", "abxx", WORDS("a", "b", "xx"));
        {
                struct dsa__pretok p;
                assert_int_equal(dsa__pretok_init(&p, "(", 1), -EBADMSG);
                assert_int_equal(dsa__pretok_init(&p, "a\\Cb", 4), -EBADMSG);
        }
}

static void test_invalid_utf8(void **state) {
        static const char *const bad[] = { "\xff", "ab\xc3", "\xed\xa0\x80", "\xc0\xaf", "a\x80" };
        struct dsa_tokenizer *t = load(PRE_LLAMA3, POST_BOS, NULL);
        struct dsa_encoding e = {};

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                assert_int_equal(dsa_tokenizer_encode(t, bad[i], strlen(bad[i]), NULL, 0, 0, 0, &e), -EILSEQ);
                assert_int_equal(dsa_tokenizer_encode(t, "ok", 2, bad[i], strlen(bad[i]), 0, 0, &e), -EILSEQ);
        }
        /* NUL is a character like any other. */
        dsa_test_expect_encode(t, "a\0b", 3, NULL, 0, 0, IDS('a', 0, 'b'), NULL);
        dsa_tokenizer_free(t);
}

/* One word of 1 MB (and other long runs) tokenizes right and decodes back. Merging is O(n log n)
 * (a quadratic merge would take minutes here); the time is printed, never asserted: tests do not
 * fail on wall-clock time on a shared machine. */
static void test_long_input(void **state) {
        static const char *const units[] = { "hello", "l", "a", " ", "7", "!", " \n", "\t\n ", "é" };
        const size_t size = 1 << 20;
        struct dsa_tokenizer *t[2] = { load(PRE_LLAMA3, POST_NONE, NULL), load(PRE_GPT2, POST_NONE, NULL) };
        char *text = malloc(size + 8);

        assert_non_null(text);
        for (size_t u = 0; u < ELEMENTSOF(units); u++) {
                size_t len = 0, ul = strlen(units[u]);
                while (len + ul <= size) {
                        memcpy(text + len, units[u], ul);
                        len += ul;
                }
                for (int k = 0; k < 2; k++) {
                        struct dsa_encoding e = {};
                        double t0 = now_s(), dt;
                        assert_int_equal(dsa_tokenizer_encode(t[k], text, len, NULL, 0, 0, 0, &e), 0);
                        dt = now_s() - t0;
                        assert_true(e.n > 0);
                        if (u == 0 && k == 0) /* one word of "hello"s: "he", "llo" each */
                                assert_int_equal(e.n, 2 * (len / 5));
                        printf("%zu bytes of '%s' (%s): %zu ids in %.3f s\n", len, units[u], k ? "gpt2" : "llama3",
                               e.n, dt);
                        expect_decode(t[k], e.ids, e.n, text, len);
                        dsa_encoding_clear(&e);
                }
        }
        free(text);
        dsa_tokenizer_free(t[0]);
        dsa_tokenizer_free(t[1]);
}

static void test_decode(void **state) {
        static const char *const texts[] = {
                "Hello world café", " \t\n\r\x01\x7f", "中文字符 🤗 naïve", "<|begin_of_text|>a<|end_of_text|>", "",
        };
        struct dsa_tokenizer *t = load(PRE_GPT2, POST_BOS, NULL);
        _cleanup_free_ char *s = NULL;
        size_t len;

        for (size_t i = 0; i < ELEMENTSOF(texts); i++)
                assert_true(roundtrips(t, texts[i], strlen(texts[i])));
        expect_decode(t, IDS(BOS, M(9), EOS), 3, "<|begin_of_text|> world<|end_of_text|>",
                      strlen("<|begin_of_text|> world<|end_of_text|>"));
        /* Half a character comes out as the byte it is. */
        assert_int_equal(dsa_tokenizer_decode(t, IDS(0xc3), 1, &s, &len), 0);
        assert_int_equal(len, 1);
        assert_int_equal((uint8_t) s[0], 0xc3);
        assert_int_equal(dsa_tokenizer_decode(t, IDS(N_VOCAB), 1, &s, &len), -EINVAL);
        assert_int_equal(dsa_tokenizer_decode(t, IDS(-5), 1, &s, &len), -EINVAL);
        assert_int_equal(dsa_tokenizer_decode(t, NULL, 1, &s, &len), -EINVAL);
        dsa_tokenizer_free(t);
        free(TAKE_PTR(s));
        assert_int_equal(dsa_tokenizer_decode(NULL, NULL, 0, &s, &len), -EINVAL);
}

/* The WordPiece side of the shared code: HF's WordPiece decoder on a small BERT tokenizer.json,
 * and templates without [CLS]/[SEP]. */
static void test_decode_wordpiece(void **state) {
        static const char json[] =
                "{\"added_tokens\":[{\"id\":0,\"content\":\"[CLS]\",\"special\":true,\"normalized\":false},"
                "{\"id\":1,\"content\":\"[SEP]\",\"special\":true,\"normalized\":false}],"
                "\"normalizer\":{\"type\":\"BertNormalizer\",\"lowercase\":true},\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
                "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"vocab\":{\"[CLS]\":0,\"[SEP]\":1,\"[UNK]\":2,"
                "\"hello\":3,\",\":4,\"world\":5,\"!\":6,\"un\":7,\"##aff\":8,\"##able\":9,\"don\":10,\"'\":11,\"t\":12,"
                "\"do\":13,\"not\":14}}}";
        struct dsa_tokenizer *t = load_json(json);
        struct dsa_encoding e = {};
        const char *text = "Hello, world! unaffable don't do not";

        assert_int_equal(dsa_tokenizer_kind(t), DSA_TOKENIZER_WORDPIECE);
        assert_int_equal(dsa_tokenizer_bos_id(t), -ENOENT);
        assert_int_equal(dsa_tokenizer_encode(t, text, strlen(text), NULL, 0, DSA_ENCODE_SPECIAL, 0, &e), 0);
        /* HF's cleanup works on one token (and its space) at a time: " ," goes, " ' " never meets. */
        expect_decode(t, e.ids, e.n, "[CLS] hello, world! unaffable don ' t do not [SEP]",
                      strlen("[CLS] hello, world! unaffable don ' t do not [SEP]"));
        dsa_encoding_clear(&e);
        dsa_tokenizer_free(t);

        /* Without [CLS] and [SEP], a pair without specials is just the two texts. */
        t = load_json("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0,\"b\":1}}}");
        dsa_test_expect_encode(t, "a", 1, "b a", 0, 0, IDS(0, 1, 0), IDS(0, 1, 1));
        assert_int_equal(dsa_tokenizer_encode(t, "a", 1, NULL, 0, DSA_ENCODE_SPECIAL, 0, &e), -ENOENT);
        dsa_tokenizer_free(t);
}

static int try_load(const char *json, size_t len) {
        struct dsa_tokenizer *t = NULL;
        int r;

        dsa_error_clear();
        r = dsa_tokenizer_from_hf_json(json, len, &t);
        if (r >= 0) {
                static const char *const texts[] = { "Hello <|begin_of_text|> wörld 中 !!\n\n  12345", "" };
                for (size_t i = 0; i < ELEMENTSOF(texts); i++) {
                        struct dsa_encoding e = {};
                        char *s = NULL;
                        size_t n;
                        if (dsa_tokenizer_encode(t, texts[i], strlen(texts[i]), "x y", 3, DSA_ENCODE_SPECIAL, 6, &e) >= 0) {
                                if (dsa_tokenizer_decode(t, e.ids, e.n, &s, &n) >= 0)
                                        free(s);
                                dsa_encoding_clear(&e);
                        }
                }
                dsa_tokenizer_free(t);
        } else
                assert_true(strlen(dsa_error_message(r)) > 0);
        return r;
}

#define BPE_HEAD "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2}"
#define BL "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}"
#define SPLIT(re, beh) "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"" re "\"},\"behavior\":\"" beh "\"}"
#define BLNR "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}"
#define SEQ(...) "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[" __VA_ARGS__ "]}"
#define GOOD BPE_HEAD ",\"merges\":[\"a b\"]}," BL
#define TPL(single) ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[" single "],\"special_tokens\":{\"X\":{\"id\":\"X\",\"ids\":[2]},\"Y\":{\"id\":\"Y\",\"ids\":[9]}}}"
#define SEQA "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}"

static void test_corrupt_json(void **state) {
        static const struct {
                const char *json;
                int want;
        } cases[] = {
                { GOOD "}", 0 },
                { BPE_HEAD ",\"merges\":[[\"a\",\"b\"]]}," SEQ(SPLIT("\\\\p{L}", "Isolated") "," BLNR) "}", 0 },
                { BPE_HEAD ",\"merges\":[]}," BL ",\"decoder\":null,\"normalizer\":null,\"post_processor\":null}", 0 },
                { BPE_HEAD ",\"merges\":[]}}", -EOPNOTSUPP },
                { BPE_HEAD "}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":{}}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[\"a x\"]}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[\"b a\"]}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[\"a b c\"]}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[\"ab\"]}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[5]}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[[\"a\"]]}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[[\"a\",1]]}," BL "}", -EBADMSG },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}," BL "}", -EBADMSG },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":7},\"merges\":[]}," BL "}", -EBADMSG },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":[],\"merges\":[]}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[],\"unk_token\":\"<unk>\"}," BL "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[],\"dropout\":0.1}," BL "}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[],\"dropout\":0}," BL "}", 0 },
                { BPE_HEAD ",\"merges\":[],\"byte_fallback\":true}," BL "}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[],\"continuing_subword_prefix\":\"##\"}," BL "}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[],\"ignore_merges\":1}," BL "}", -EBADMSG },
                { GOOD ",\"normalizer\":{\"type\":\"NFC\"}}", -EOPNOTSUPP },
                { GOOD ",\"decoder\":{\"type\":\"Metaspace\"}}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Metaspace\"}}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[]}," SEQ(SPLIT("a", "Removed") "," BLNR) "}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[]}," SEQ(SPLIT("(", "Isolated") "," BLNR) "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[]}," SEQ(SPLIT("a", "Isolated") "," SPLIT("b", "Isolated") "," BLNR) "}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[]}," SEQ(BLNR "," SPLIT("a", "Isolated")) "}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[]}," SEQ(SPLIT("a", "Isolated") ",{\"type\":\"ByteLevel\"}") "}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[]}," SEQ(SPLIT("a", "Isolated")) "}", -EOPNOTSUPP },
                { BPE_HEAD ",\"merges\":[]}," SEQ("5") "}", -EBADMSG },
                { BPE_HEAD ",\"merges\":[]}," SEQ("{\"type\":\"Split\",\"pattern\":{},\"behavior\":\"Isolated\"}," BLNR) "}", -EBADMSG },
                { GOOD ",\"post_processor\":{\"type\":\"RobertaProcessing\"}}", -EOPNOTSUPP },
                { GOOD ",\"post_processor\":{\"type\":\"Sequence\",\"processors\":[{\"type\":\"ByteLevel\"}]}}", 0 },
                { GOOD TPL("{\"SpecialToken\":{\"id\":\"X\",\"type_id\":0}}," SEQA) "}", 0 },
                { GOOD TPL("{\"SpecialToken\":{\"id\":\"Y\",\"type_id\":0}}," SEQA) "}", -EBADMSG },
                { GOOD TPL("{\"SpecialToken\":{\"id\":\"Z\",\"type_id\":0}}," SEQA) "}", -EBADMSG },
                { GOOD TPL("{\"SpecialToken\":{\"id\":\"X\",\"type_id\":0}}") "}", -EBADMSG },
                { GOOD TPL("{\"Sequence\":{\"id\":\"B\",\"type_id\":0}}") "}", -EBADMSG },
                { GOOD TPL("{\"Sequence\":{\"id\":\"C\",\"type_id\":0}}") "}", -EBADMSG },
                { GOOD TPL("{\"Sequence\":{\"id\":\"A\",\"type_id\":-1}}") "}", -EBADMSG },
                { GOOD TPL("5") "}", -EBADMSG },
                { GOOD TPL("{}") "}", -EBADMSG },
                { GOOD ",\"added_tokens\":[{\"id\":3,\"content\":\"<s>\",\"special\":true}]}", 0 },
                { GOOD ",\"added_tokens\":[{\"id\":3,\"content\":\"ab\",\"special\":true}]}", -EBADMSG },
                { GOOD ",\"added_tokens\":[{\"id\":9,\"content\":\"<s>\",\"special\":true}]}", -EBADMSG },
                { GOOD ",\"added_tokens\":[{\"id\":3,\"content\":\"\xff\",\"special\":true}]}", -EBADMSG },
        };
        _cleanup_free_ char *good = make_json(PRE_LLAMA3, POST_BOS, NULL, false);
        struct dsa_test_rng rng = { 7 };
        size_t len = strlen(good);

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int r = try_load(cases[i].json, strlen(cases[i].json));
                if (r != cases[i].want)
                        fail_msg("case %zu: got %d (%s), want %d", i, r, dsa_error_message(r), cases[i].want);
        }
        {
                /* A regex past the limit. */
                size_t n = 70 * 1024;
                char *json = malloc(n + 256), *p = json;
                p += sprintf(p, "%s", BPE_HEAD ",\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Sequence\","
                             "\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"");
                memset(p, 'a', n);
                p += n;
                sprintf(p, "%s", "\"},\"behavior\":\"Isolated\"}," BLNR "]}}");
                assert_int_equal(try_load(json, strlen(json)), -EBADMSG);
                free(json);
        }
        /* Truncations of a good file (every 7th length), then seeded random byte damage. */
        for (size_t k = 0; k < len; k += 7)
                assert_true(try_load(good, k) < 0);
        for (int round = 0; round < 1000; round++) {
                _cleanup_free_ char *bad = strdup(good);
                int n_flips = 1 + (int) (dsa_test_rng_u64(&rng) % 4);
                for (int f = 0; f < n_flips; f++)
                        bad[dsa_test_rng_u64(&rng) % len] = (char) (1 + dsa_test_rng_u64(&rng) % 255);
                try_load(bad, len);
        }
}

static char *make_tmpdir(void) {
        char *dir = strdup("/tmp/dsa-test-tokenizer-bpe.XXXXXX");
        assert_non_null(dir);
        assert_non_null(mkdtemp(dir));
        return dir;
}

/* t -> GGUF at path -> a new tokenizer (and the open GGUF, for its keys). */
static struct dsa_tokenizer *gguf_roundtrip(const struct dsa_tokenizer *t, const char *path, struct dsa_gguf **ret_g) {
        struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        struct dsa_tokenizer *u = NULL;
        int r;

        assert_non_null(w);
        r = dsa_tokenizer_to_gguf(t, w);
        if (r < 0)
                fail_msg("to_gguf: %s", dsa_error_message(r));
        assert_int_equal(dsa_gguf_writer_write(w, path), 0);
        dsa_gguf_writer_free(w);
        assert_int_equal(dsa_gguf_open(path, ret_g), 0);
        r = dsa_tokenizer_from_gguf(*ret_g, &u);
        if (r < 0)
                fail_msg("from_gguf: %s", dsa_error_message(r));
        return u;
}

static void same_ids(const struct dsa_tokenizer *a, const struct dsa_tokenizer *b, const char *text,
                     const char *pair, unsigned flags) {
        struct dsa_encoding ea = {}, eb = {};

        assert_int_equal(dsa_tokenizer_encode(a, text, strlen(text), pair, pair ? strlen(pair) : 0, flags, 0, &ea), 0);
        assert_int_equal(dsa_tokenizer_encode(b, text, strlen(text), pair, pair ? strlen(pair) : 0, flags, 0, &eb), 0);
        assert_int_equal(ea.n, eb.n);
        assert_memory_equal(ea.ids, eb.ids, ea.n * sizeof(int32_t));
        assert_memory_equal(ea.type_ids, eb.type_ids, ea.n * sizeof(int32_t));
        dsa_encoding_clear(&ea);
        dsa_encoding_clear(&eb);
}

static void expect_str(const struct dsa_gguf *g, const char *key, const char *want) {
        const char *s;
        size_t len;

        assert_int_equal(dsa_gguf_get_str(g, key, &s, &len), 0);
        if (len != strlen(want) || memcmp(s, want, len) != 0)
                fail_msg("%s is '%.*s', want '%s'", key, (int) len, s, want);
}

static void test_gguf_roundtrip(void **state) {
        static const struct {
                const char *pre, *post, *extra, *gguf_pre;
        } kinds[] = {
                { PRE_LLAMA3, POST_BOS, "{\"ignore_merges\":true}", "llama-bpe" },
                { PRE_LLAMA3, POST_NONE, NULL, "llama-bpe" },
                { PRE_GPT2, "null", NULL, "gpt-2" },
                { "{\"type\":\"ByteLevel\",\"add_prefix_space\":true}", POST_NONE, NULL, "dsa-custom" },
                { "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"String\":\"o\"},"
                  "\"behavior\":\"Isolated\"}," BLNR "]}", POST_NONE, NULL, "dsa-custom" },
        };
        static const char *const texts[] = {
                "Hello world café", "<|begin_of_text|>hello<|end_of_text|> the", "", " \n\n  12345 it's",
        };
        _cleanup_free_ char *dir = make_tmpdir();
        char path[256];

        snprintf(path, sizeof(path), "%s/tok.gguf", dir);
        for (size_t k = 0; k < ELEMENTSOF(kinds); k++) {
                struct dsa_tokenizer *t = load(kinds[k].pre, kinds[k].post, kinds[k].extra), *u;
                struct dsa_gguf *g = NULL;
                const char *s;
                size_t len;
                bool b;

                u = gguf_roundtrip(t, path, &g);
                expect_str(g, "tokenizer.ggml.model", "gpt2");
                expect_str(g, "tokenizer.ggml.pre", kinds[k].gguf_pre);
                assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.merges", 0, &s, &len), 0);
                assert_int_equal(len, strlen("Ġ t"));
                assert_memory_equal(s, "Ġ t", len);
                assert_int_equal(dsa_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
                assert_int_equal(b, k == 0);
                assert_int_equal(dsa_tokenizer_kind(u), DSA_TOKENIZER_BPE);
                assert_int_equal(dsa_tokenizer_n_vocab(u), N_VOCAB);
                for (int32_t i = 0; i < N_VOCAB; i++)
                        assert_string_equal(dsa_tokenizer_token(u, i), dsa_tokenizer_token(t, i));
                assert_int_equal(dsa_tokenizer_bos_id(u), BOS);
                assert_int_equal(dsa_tokenizer_eos_id(u), EOS);
                for (size_t i = 0; i < ELEMENTSOF(texts); i++) {
                        same_ids(t, u, texts[i], NULL, DSA_ENCODE_SPECIAL);
                        same_ids(t, u, texts[i], NULL, 0);
                        same_ids(t, u, texts[i], "hello", DSA_ENCODE_SPECIAL);
                }
                dsa_tokenizer_free(u);
                dsa_gguf_free(g);
                dsa_tokenizer_free(t);
        }
        unlink(path);
        rmdir(dir);
}

/* A tiny GGUF BPE vocabulary; variant v damages one thing. */
enum {
        G_GOOD, G_UNKNOWN_PRE, G_UNKNOWN_PRE_PATTERN, G_NO_PRE, G_MERGE_UNKNOWN, G_MERGE_NO_SPACE,
        G_MERGE_RESULT, G_DUP_TOKEN, G_TYPES_SHORT, G_NO_MERGES, G_BOS_RANGE, G_BAD_PATTERN, G_TEMPLATE_RANGE,
        G_ADD_BOS_NO_ID, G_CONTROL_BAD_UTF8, G_TOKENS_NOT_STR, G_MERGES_NOT_STR, G_LLAMA3_DEFAULTS, G_COUNT,
};

static void write_gguf(const char *path, int v) {
        const char *tokens[] = { "a", "b", "c", "ab", "abc", "<s>", "Ġ" };
        int32_t types[] = { 1, 1, 1, 1, 1, 3, 1 };
        const char *merges_ok[] = { "a b", "ab c" };
        const char *merges_v[] = { "a x", "ab" , "b a" };
        const int32_t tpl[] = { 9, 0, -1, 0 };
        struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        size_t n = ELEMENTSOF(tokens);

        if (v == G_DUP_TOKEN)
                tokens[4] = "ab";
        if (v == G_CONTROL_BAD_UTF8)
                tokens[5] = "<\xff>";
        assert_int_equal(dsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"), 0);
        if (v == G_UNKNOWN_PRE || v == G_UNKNOWN_PRE_PATTERN)
                assert_int_equal(dsa_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2"), 0);
        else if (v == G_LLAMA3_DEFAULTS)
                assert_int_equal(dsa_gguf_writer_set_str(w, "tokenizer.ggml.pre", "llama-bpe"), 0);
        else if (v != G_NO_PRE)
                assert_int_equal(dsa_gguf_writer_set_str(w, "tokenizer.ggml.pre", "gpt-2"), 0);
        if (v == G_UNKNOWN_PRE_PATTERN)
                assert_int_equal(dsa_gguf_writer_set_str(w, "dsa.tokenizer.pattern", "\\p{L}+"), 0);
        if (v == G_BAD_PATTERN)
                assert_int_equal(dsa_gguf_writer_set_str(w, "dsa.tokenizer.pattern", "[a"), 0);
        if (v == G_TOKENS_NOT_STR)
                assert_int_equal(dsa_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", DSA_GGUF_INT32, types, n), 0);
        else
                assert_int_equal(dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, n), 0);
        assert_int_equal(dsa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", DSA_GGUF_INT32, types,
                                                 v == G_TYPES_SHORT ? n - 1 : n), 0);
        if (v == G_MERGES_NOT_STR)
                assert_int_equal(dsa_gguf_writer_set_arr(w, "tokenizer.ggml.merges", DSA_GGUF_INT32, types, 2), 0);
        else if (v == G_MERGE_UNKNOWN || v == G_MERGE_NO_SPACE || v == G_MERGE_RESULT)
                assert_int_equal(dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges",
                                                             &merges_v[v - G_MERGE_UNKNOWN], 1), 0);
        else if (v != G_NO_MERGES)
                assert_int_equal(dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges_ok, 2), 0);
        if (v != G_ADD_BOS_NO_ID && v != G_LLAMA3_DEFAULTS)
                assert_int_equal(dsa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", v == G_BOS_RANGE ? 7 : 5), 0);
        if (v == G_ADD_BOS_NO_ID)
                assert_int_equal(dsa_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true), 0);
        if (v == G_TEMPLATE_RANGE)
                assert_int_equal(dsa_gguf_writer_set_arr(w, "dsa.tokenizer.template", DSA_GGUF_INT32, tpl, 4), 0);
        assert_int_equal(dsa_gguf_writer_write(w, path), 0);
        dsa_gguf_writer_free(w);
}

static int try_gguf(const void *data, size_t size) {
        struct dsa_gguf *g = NULL;
        struct dsa_tokenizer *t = NULL;
        int r;

        dsa_error_clear();
        r = dsa_gguf_open_memory(data, size, &g);
        if (r < 0)
                return r;
        r = dsa_tokenizer_from_gguf(g, &t);
        if (r >= 0) {
                struct dsa_encoding e = {};
                if (dsa_tokenizer_encode(t, "abc <s>ab ca", 12, "b", 1, DSA_ENCODE_SPECIAL, 0, &e) >= 0)
                        dsa_encoding_clear(&e);
                dsa_tokenizer_free(t);
        } else
                assert_true(strlen(dsa_error_message(r)) > 0);
        dsa_gguf_free(g);
        return r;
}

static void test_gguf_corrupt(void **state) {
        static const int want[G_COUNT] = {
                [G_GOOD] = 0, [G_UNKNOWN_PRE] = -EOPNOTSUPP, [G_UNKNOWN_PRE_PATTERN] = 0,
                [G_NO_PRE] = -EOPNOTSUPP, [G_MERGE_UNKNOWN] = -EBADMSG, [G_MERGE_NO_SPACE] = -EBADMSG,
                [G_MERGE_RESULT] = -EBADMSG, [G_DUP_TOKEN] = -EBADMSG, [G_TYPES_SHORT] = -EBADMSG,
                [G_NO_MERGES] = -EBADMSG, [G_BOS_RANGE] = -EBADMSG, [G_BAD_PATTERN] = -EBADMSG,
                [G_TEMPLATE_RANGE] = -EBADMSG, [G_ADD_BOS_NO_ID] = -EBADMSG, [G_CONTROL_BAD_UTF8] = -EBADMSG,
                [G_TOKENS_NOT_STR] = -EBADMSG, [G_MERGES_NOT_STR] = -EBADMSG, [G_LLAMA3_DEFAULTS] = -EBADMSG,
        };
        _cleanup_free_ char *dir = make_tmpdir(), *good = NULL;
        struct dsa_test_rng rng = { 11 };
        char path[256];
        size_t size;

        snprintf(path, sizeof(path), "%s/v.gguf", dir);
        for (int v = 0; v < G_COUNT; v++) {
                _cleanup_free_ char *data = NULL;
                int r;
                write_gguf(path, v);
                assert_int_equal(dsa_test_read_file(path, &data, &size), 0);
                r = try_gguf(data, size);
                if (r != want[v])
                        fail_msg("variant %d: got %d (%s), want %d", v, r, dsa_error_message(r), want[v]);
        }
        {
                /* The good one, as llama.cpp would read it: "gpt-2" regex, merges, <s> matched. */
                struct dsa_gguf *g = NULL;
                struct dsa_tokenizer *t = NULL;
                write_gguf(path, G_GOOD);
                assert_int_equal(dsa_gguf_open(path, &g), 0);
                assert_int_equal(dsa_tokenizer_from_gguf(g, &t), 0);
                dsa_test_expect_encode(t, "abc<s> ab", 9, NULL, DSA_ENCODE_SPECIAL, 0, IDS(4, 5, 6, 3), NULL);
                assert_int_equal(dsa_tokenizer_bos_id(t), 5);
                assert_int_equal(dsa_tokenizer_eos_id(t), -ENOENT);
                dsa_tokenizer_free(t);
                dsa_gguf_free(g);
        }
        {
                /* A control token with a NUL inside (GGUF strings may hold one) is matched by
                 * all of its bytes, and read no further. */
                _cleanup_free_ char *data = NULL;
                struct dsa_gguf *g = NULL;
                struct dsa_tokenizer *t = NULL;
                char *at;
                write_gguf(path, G_GOOD);
                assert_int_equal(dsa_test_read_file(path, &data, &size), 0);
                at = memmem(data, size, "<s>", 3);
                assert_non_null(at);
                at[1] = 0;
                assert_int_equal(dsa_gguf_open_memory(data, size, &g), 0);
                assert_int_equal(dsa_tokenizer_from_gguf(g, &t), 0);
                dsa_test_expect_encode(t, "a<\0>b", 5, NULL, 0, 0, IDS(0, 5, 1), NULL);
                dsa_test_expect_encode(t, "a<", 2, NULL, 0, 0, IDS(0), NULL);
                dsa_tokenizer_free(t);
                dsa_gguf_free(g);
        }
        /* Seeded random damage to the good file: a clean error or a working tokenizer. */
        write_gguf(path, G_GOOD);
        assert_int_equal(dsa_test_read_file(path, &good, &size), 0);
        for (int round = 0; round < 3000; round++) {
                char *bad = malloc(size);
                int n_flips = 1 + (int) (dsa_test_rng_u64(&rng) % 3);
                memcpy(bad, good, size);
                for (int f = 0; f < n_flips; f++)
                        bad[dsa_test_rng_u64(&rng) % size] = (char) dsa_test_rng_u64(&rng);
                try_gguf(bad, size);
                free(bad);
        }
        /* Cut anywhere before the alignment padding at its end. */
        for (size_t k = 0; k + 32 < size; k += 3)
                assert_true(try_gguf(good, k) < 0);
        unlink(path);
        rmdir(dir);
}

/* ---- against ../shared */

static const char *shared;

#define MAX_SHOWN 5

static void print_ids(const char *what, const int32_t *ids, size_t n) {
        print_message("    %s:", what);
        for (size_t i = 0; i < n && i < 64; i++)
                print_message(" %d", ids[i]);
        print_message("%s\n", n > 64 ? " ..." : "");
}

/* Every line {"text","ids","tokens"} of a Hugging Face reference: same ids and tokens with
 * DSA_ENCODE_SPECIAL, and decode(ids) gives the text back. Returns the lines that differ. */
static size_t run_jsonl(const struct dsa_tokenizer *t, const char *name, const char *path) {
        _cleanup_free_ char *data = NULL;
        size_t size, n = 0, bad = 0, lineno = 0;
        double t0 = now_s();

        assert_int_equal(dsa_test_read_file(path, &data, &size), 0);
        for (char *line = data, *nl; line < data + size; line = nl + 1) {
                json_object *j, *jtext = NULL, *jids = NULL, *jtoks = NULL;
                struct dsa_encoding e = {};
                const char *text;
                size_t len, m;
                bool same;

                nl = strchr(line, '\n');
                if (!nl)
                        nl = data + size;
                *nl = 0;
                lineno++;
                if (!*line)
                        continue;
                j = json_tokener_parse(line);
                if (!j || !json_object_object_get_ex(j, "text", &jtext) || !json_object_object_get_ex(j, "ids", &jids) ||
                    !json_object_object_get_ex(j, "tokens", &jtoks))
                        fail_msg("%s:%zu: malformed line", path, lineno);
                text = json_object_get_string(jtext);
                len = (size_t) json_object_get_string_len(jtext);
                n++;
                if (dsa_tokenizer_encode(t, text, len, NULL, 0, DSA_ENCODE_SPECIAL, 0, &e) < 0)
                        fail_msg("%s:%zu: encode failed: %s", path, lineno, dsa_error_message(-1));
                m = json_object_array_length(jids);
                same = m == e.n && json_object_array_length(jtoks) == m;
                for (size_t i = 0; same && i < m; i++) {
                        const char *tok = dsa_tokenizer_token(t, e.ids[i]);
                        same = json_object_get_int(json_object_array_get_idx(jids, i)) == e.ids[i] && tok &&
                               strcmp(tok, json_object_get_string(json_object_array_get_idx(jtoks, i))) == 0;
                }
                if (same && !roundtrips(t, text, len)) {
                        print_message("  %s line %zu: decode does not give the text back\n", name, lineno);
                        same = false;
                }
                if (!same && bad++ < MAX_SHOWN) {
                        print_message("  %s line %zu differs: %s\n", name, lineno, text);
                        print_ids("got ", e.ids, e.n);
                        print_message("    want: %.400s\n", json_object_to_json_string(jids));
                }
                dsa_encoding_clear(&e);
                json_object_put(j);
        }
        print_message("%s: %zu/%zu identical (%.3f s)\n", name, n - bad, n, now_s() - t0);
        assert_true(n > 0);
        return bad;
}

static struct dsa_tokenizer *load_file(const char *path) {
        _cleanup_free_ char *json = NULL;
        struct dsa_tokenizer *t = NULL;
        size_t len;
        int r;

        assert_int_equal(dsa_test_read_file(path, &json, &len), 0);
        r = dsa_tokenizer_from_hf_json(json, len, &t);
        if (r < 0)
                fail_msg("%s: %s", path, dsa_error_message(r));
        return t;
}

/* Every decoder in fixtures/hf (index.json kinds other than "bert": gpt2-tiny, llama-tiny):
 * its tokenization.jsonl, then HF json -> GGUF -> load and the same again. */
static void test_hf_fixtures(void **state) {
        static const struct {
                const char *name, *pre, *pattern;
        } want[] = {
                { "llama-tiny", "llama-bpe", DSA_PRETOK_LLAMA3 },
                { "gpt2-tiny", "gpt-2", DSA_PRETOK_GPT2 },
        };
        _cleanup_free_ char *tmp = make_tmpdir();
        json_object *index = json_object_from_file(dsa_test_path(shared, "fixtures/hf/index.json"));
        size_t bad = 0, n = 0;
        char path[256];

        assert_non_null(index);
        snprintf(path, sizeof(path), "%s/tok.gguf", tmp);
        json_object_object_foreach(index, name, entry) {
                struct dsa_tokenizer *t, *u;
                struct dsa_gguf *g = NULL;
                json_object *kind;
                char dir[4200], jsonl[4300], what[300];
                size_t k;

                if (!json_object_object_get_ex(entry, "kind", &kind) || strcmp(json_object_get_string(kind), "bert") == 0)
                        continue;
                for (k = 0; k < ELEMENTSOF(want) && strcmp(want[k].name, name) != 0; k++)
                        ;
                if (k == ELEMENTSOF(want))
                        fail_msg("fixtures/hf/%s: a decoder this test does not know", name);
                n++;
                snprintf(dir, sizeof(dir), "%s/fixtures/hf/%s", shared, name);
                snprintf(jsonl, sizeof(jsonl), "%s/tokenization.jsonl", dir);
                t = load_file(dsa_test_path(dir, "tokenizer.json"));
                /* llama-tiny: <|begin_of_text|> 0, <|end_of_text|> 1; gpt2-tiny: <|endoftext|> 0 for both. */
                assert_int_equal(dsa_tokenizer_bos_id(t), 0);
                assert_int_equal(dsa_tokenizer_eos_id(t), k == 0 ? 1 : 0);
                bad += run_jsonl(t, name, jsonl);
                u = gguf_roundtrip(t, path, &g);
                expect_str(g, "tokenizer.ggml.pre", want[k].pre);
                expect_str(g, "dsa.tokenizer.pattern", want[k].pattern);
                snprintf(what, sizeof(what), "%s via GGUF", name);
                bad += run_jsonl(u, what, jsonl);
                same_ids(t, u, "<|begin_of_text|>Hello<|endoftext|> <|end_of_text|>", "pair", DSA_ENCODE_SPECIAL);
                dsa_tokenizer_free(u);
                dsa_gguf_free(g);
                dsa_tokenizer_free(t);
        }
        json_object_put(index);
        unlink(path);
        rmdir(tmp);
        assert_int_equal(n, ELEMENTSOF(want));
        assert_int_equal(bad, 0);
}

/* GPT-2 from OpenAI's encoder.json + vocab.bpe, as HF's GPT2TokenizerFast builds it. */
static void test_gpt2(void **state) {
        const char *dir = dsa_test_path(shared, "data/gpt2_tokenizer");
        json_object *root = json_object_new_object(), *model = json_object_new_object(), *jmerges = json_object_new_array();
        json_object *vocab = json_object_from_file(dsa_test_path(dir, "encoder.json"));
        _cleanup_free_ char *bpe = NULL;
        struct dsa_tokenizer *t;
        const char *json;
        size_t size;

        assert_non_null(vocab);
        assert_int_equal(dsa_test_read_file(dsa_test_path(dir, "vocab.bpe"), &bpe, &size), 0);
        for (char *line = bpe, *nl; line < bpe + size; line = nl + 1) {
                nl = strchr(line, '\n');
                if (!nl)
                        nl = bpe + size;
                *nl = 0;
                if (*line && strncmp(line, "#version", 8) != 0)
                        json_object_array_add(jmerges, json_object_new_string(line));
        }
        assert_int_equal(json_object_array_length(jmerges), 50000);
        json_object_object_add(model, "type", json_object_new_string("BPE"));
        json_object_object_add(model, "vocab", vocab);
        json_object_object_add(model, "merges", jmerges);
        json_object_object_add(root, "model", model);
        json_object_object_add(root, "added_tokens", json_tokener_parse(
                "[{\"id\":50256,\"content\":\"<|endoftext|>\",\"special\":true,\"normalized\":true}]"));
        json_object_object_add(root, "pre_tokenizer", json_tokener_parse(PRE_GPT2));
        json_object_object_add(root, "post_processor", json_tokener_parse("{\"type\":\"ByteLevel\"}"));
        json = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN);
        t = load_json(json);
        json_object_put(root);
        assert_int_equal(dsa_tokenizer_bos_id(t), 50256);
        assert_int_equal(dsa_tokenizer_eos_id(t), 50256);
        dsa_test_expect_encode(t, " Hello world", 12, NULL, 0, 0, IDS(18435, 995), NULL);
        dsa_test_expect_encode(t, "a<|endoftext|>b", 15, NULL, 0, 0, IDS(64, 50256, 65), NULL);
        assert_int_equal(run_jsonl(t, "gpt2", dsa_test_path(shared, "fixtures/hf/tokenizers/gpt2.jsonl")), 0);
        dsa_tokenizer_free(t);
}

/* llama.cpp's test-tokenizer-0 vectors for gpt-2: .inp split on "\n__ggml_vocab_test__\n" (the
 * last piece dropped), .out one line " id id ..." per test, no specials. */
static void test_llamacpp_gpt2(void **state) {
        static const char sep[] = "\n__ggml_vocab_test__\n";
        const char *base = dsa_test_path(shared, "data/llamacpp_vocab_tests/ggml-vocab-gpt-2.gguf");
        _cleanup_free_ char *inp = NULL, *out = NULL;
        struct dsa_gguf *g = NULL;
        struct dsa_tokenizer *t = NULL;
        char path[4200];
        size_t size, n = 0, bad = 0;
        char *p, *o;
        int r;

        assert_int_equal(dsa_gguf_open(base, &g), 0);
        r = dsa_tokenizer_from_gguf(g, &t);
        if (r < 0)
                fail_msg("gpt-2 GGUF: %s", dsa_error_message(r));
        assert_int_equal(dsa_tokenizer_bos_id(t), 50256);
        snprintf(path, sizeof(path), "%s.inp", base);
        assert_int_equal(dsa_test_read_file(path, &inp, &size), 0);
        snprintf(path, sizeof(path), "%s.out", base);
        assert_int_equal(dsa_test_read_file(path, &out, &size), 0);
        o = out;
        p = inp;
        for (char *end; (end = strstr(p, sep)); p = end + strlen(sep)) {
                struct dsa_encoding e = {};
                int32_t want[1024];
                size_t n_want;
                char *nl = strchr(o, '\n');

                *end = 0;
                assert_non_null(nl);
                *nl = 0;
                n_want = dsa_test_parse_ids(o, want, ELEMENTSOF(want));
                o = nl + 1;
                n++;
                assert_int_equal(dsa_tokenizer_encode(t, p, strlen(p), NULL, 0, DSA_ENCODE_SPECIAL, 0, &e), 0);
                if (e.n != n_want || memcmp(e.ids, want, n_want * sizeof(int32_t)) != 0 || !roundtrips(t, p, strlen(p))) {
                        if (bad++ < MAX_SHOWN) {
                                print_message("  test %zu differs: '%s'\n", n, p);
                                print_ids("got ", e.ids, e.n);
                                print_ids("want", want, n_want);
                        }
                }
                dsa_encoding_clear(&e);
        }
        print_message("llama.cpp gpt-2: %zu/%zu identical\n", n - bad, n);
        assert_int_equal(n, 46);
        assert_int_equal(bad, 0);
        dsa_tokenizer_free(t);
        dsa_gguf_free(g);
}

/* fixtures/trained/longlm-4l256/eval_docs.safetensors: doc.K holds the ids of the document
 * eval_docs.json lists K-th, cut at 4096. Ours, without specials, must start with exactly those
 * ids (and be exactly those when shorter than 4096): the reference has no BOS. */
static void test_eval_docs(void **state) {
        char dir[4200], docs[4200];
        struct dsa_tokenizer *t;
        json_object *list;
        struct dsa_safetensors *st = NULL;
        size_t n_docs, bad = 0, n_ids = 0, n_bytes = 0;
        double t0, dt;

        /* dsa_test_path() rotates through a few buffers: keep copies. */
        snprintf(dir, sizeof(dir), "%s", dsa_test_path(shared, "fixtures/trained/longlm-4l256"));
        snprintf(docs, sizeof(docs), "%s", dsa_test_path(shared, "data/rust_rfcs_long_docs/docs"));
        t = load_file(dsa_test_path(dir, "tokenizer.json"));
        list = json_object_from_file(dsa_test_path(dir, "eval_docs.json"));
        t0 = now_s();
        assert_non_null(list);
        assert_int_equal(dsa_safetensors_open(dsa_test_path(dir, "eval_docs.safetensors"), &st), 0);
        n_docs = json_object_array_length(list);
        assert_int_equal(n_docs, 161);
        for (size_t k = 0; k < n_docs; k++) {
                json_object *entry = json_object_array_get_idx(list, k), *file;
                const struct dsa_tensor_view *v;
                _cleanup_free_ char *text = NULL;
                struct dsa_encoding e = {};
                char name[32];
                size_t len, n;
                bool same;

                assert_true(json_object_object_get_ex(entry, "file", &file));
                snprintf(name, sizeof(name), "doc.%zu", k);
                v = dsa_test_st_need(st, name);
                assert_int_equal(v->type, DSA_TYPE_I32);
                n = v->ne[0];
                assert_int_equal(dsa_test_read_file(dsa_test_path(docs, json_object_get_string(file)), &text, &len), 0);
                assert_int_equal(dsa_tokenizer_encode(t, text, len, NULL, 0, DSA_ENCODE_SPECIAL, 0, &e), 0);
                same = e.n >= n && (n == 4096 || e.n == n);
                for (size_t i = 0; same && i < n; i++) {
                        int32_t want;
                        memcpy(&want, (const char *) v->data + 4 * i, 4);
                        same = e.ids[i] == want;
                }
                if (!same && bad++ < MAX_SHOWN)
                        print_message("  %s (%s): %zu ids, reference %zu, differs\n", name,
                                      json_object_get_string(file), e.n, n);
                n_ids += e.n;
                n_bytes += len;
                dsa_encoding_clear(&e);
        }
        dt = now_s() - t0;
        print_message("longlm-4l256 eval_docs: %zu/%zu documents match (%zu bytes, %zu ids, %.3f s)\n",
                      n_docs - bad, n_docs, n_bytes, n_ids, dt);
        assert_int_equal(bad, 0);
        dsa_safetensors_free(st);
        json_object_put(list);
        dsa_tokenizer_free(t);
}

int main(void) {
        const struct CMUnitTest unit[] = {
                cmocka_unit_test(test_merges),
                cmocka_unit_test(test_added_tokens),
                cmocka_unit_test(test_template),
                cmocka_unit_test(test_ignore_merges),
                cmocka_unit_test(test_unk),
                cmocka_unit_test(test_pretok),
                cmocka_unit_test(test_invalid_utf8),
                cmocka_unit_test(test_long_input),
                cmocka_unit_test(test_decode),
                cmocka_unit_test(test_decode_wordpiece),
                cmocka_unit_test(test_corrupt_json),
                cmocka_unit_test(test_gguf_roundtrip),
                cmocka_unit_test(test_gguf_corrupt),
        };
        const struct CMUnitTest parity[] = {
                cmocka_unit_test(test_hf_fixtures),
                cmocka_unit_test(test_gpt2),
                cmocka_unit_test(test_llamacpp_gpt2),
                cmocka_unit_test(test_eval_docs),
        };
        int r = cmocka_run_group_tests_name("bpe", unit, NULL, NULL);

        if (r != 0)
                return r;
        /* The references: skipped (77) without ../shared, after the self-contained tests ran. */
        shared = dsa_test_require_shared("BPE tokenizer against Hugging Face, llama.cpp and eval_docs");
        return cmocka_run_group_tests_name("bpe-reference", parity, NULL, NULL);
}
