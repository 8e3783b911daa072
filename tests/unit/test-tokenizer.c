/* Tokenizer on a small hand-built vocabulary: the BERT normalizer (accents, CJK, control chars,
 * punctuation, whitespace kinds, multi-character lowercase), word length limit, [UNK], added
 * tokens in the text, pairs with type ids, longest_first truncation, invalid UTF-8, damaged
 * tokenizer.json files, and GGUF round trips (ours, and llama.cpp's convention without dsa.*). */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "testutil.h"

static const char *const vocab[] = {
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "un", "##aff",
        "##able", ",", "!", "a", "cafe", "中", "文", ".", "##ing", "run", "i", "##\xcc\x87",
        "Café", "hell", "##o",
};
enum {
        PAD, UNK, CLS, SEP, MASK, HELLO, WORLD, S, UN, AFF, ABLE, COMMA, BANG, A, CAFE, ZHONG, WEN,
        DOT, ING, RUN, I, DOT_ABOVE, CAFE_CASED,
};

/* A BERT tokenizer.json over vocab[] with the given normalizer fields and word limit. */
static char *make_json(const char *normalizer, int max_chars) {
        char *s = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&s, &n);

        assert_non_null(f);
        fprintf(f, "{\"version\":\"1.0\",\"added_tokens\":[");
        for (int i = 0; i <= MASK; i++)
                fprintf(f, "%s{\"id\":%d,\"content\":\"%s\",\"single_word\":false,\"lstrip\":false,"
                        "\"rstrip\":false,\"normalized\":false,\"special\":true}", i ? "," : "", i, vocab[i]);
        fprintf(f, "],\"normalizer\":{\"type\":\"BertNormalizer\",%s},"
                "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
                "\"post_processor\":{\"type\":\"TemplateProcessing\","
                "\"single\":[{\"SpecialToken\":{\"id\":\"[CLS]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},"
                "{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":0}}],"
                "\"special_tokens\":{\"[CLS]\":{\"id\":\"[CLS]\",\"ids\":[2],\"tokens\":[\"[CLS]\"]},"
                "\"[SEP]\":{\"id\":\"[SEP]\",\"ids\":[3],\"tokens\":[\"[SEP]\"]}}},"
                "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
                "\"max_input_chars_per_word\":%d,\"vocab\":{", normalizer, max_chars);
        for (size_t i = 0; i < ELEMENTSOF(vocab); i++)
                fprintf(f, "%s\"%s\":%zu", i ? "," : "", vocab[i], i);
        fprintf(f, "}}}");
        assert_int_equal(fclose(f), 0);
        return s;
}

#define UNCASED "\"clean_text\":true,\"handle_chinese_chars\":true,\"strip_accents\":null,\"lowercase\":true"

static struct dsa_tokenizer *load(const char *normalizer, int max_chars) {
        _cleanup_free_ char *json = make_json(normalizer, max_chars);
        struct dsa_tokenizer *t = NULL;
        int r = dsa_tokenizer_from_hf_json(json, strlen(json), &t);

        if (r < 0)
                fail_msg("load: %s", dsa_error_message(r));
        return t;
}

/* dsa_test_expect_encode() of a NUL-terminated text. */
static void expect(const struct dsa_tokenizer *t, const char *text, const char *pair, unsigned flags, size_t max_len,
                   const int32_t *want, const int32_t *want_types) {
        dsa_test_expect_encode(t, text, strlen(text), pair, flags, max_len, want, want_types);
}

#define IDS(...) ((const int32_t[]) { __VA_ARGS__, -1 })
#define NONE ((const int32_t[]) { -1 })

static void test_basic(void **state) {
        struct dsa_tokenizer *t = load(UNCASED, 100);

        assert_int_equal(dsa_tokenizer_n_vocab(t), ELEMENTSOF(vocab));
        assert_int_equal(dsa_tokenizer_cls_id(t), CLS);
        assert_int_equal(dsa_tokenizer_sep_id(t), SEP);
        assert_int_equal(dsa_tokenizer_pad_id(t), PAD);
        assert_int_equal(dsa_tokenizer_unk_id(t), UNK);
        assert_int_equal(dsa_tokenizer_mask_id(t), MASK);
        assert_int_equal(dsa_tokenizer_lookup(t, "##aff"), AFF);
        assert_int_equal(dsa_tokenizer_lookup(t, "nope"), -ENOENT);
        assert_string_equal(dsa_tokenizer_token(t, ABLE), "##able");
        assert_null(dsa_tokenizer_token(t, (int32_t) ELEMENTSOF(vocab)));
        assert_null(dsa_tokenizer_token(t, -1));

        expect(t, "Hello, World!", NULL, DSA_ENCODE_SPECIAL, 0, IDS(CLS, HELLO, COMMA, WORLD, BANG, SEP), NULL);
        expect(t, "unaffable runs", NULL, 0, 0, IDS(UN, AFF, ABLE, RUN, S), NULL);
        expect(t, "", NULL, DSA_ENCODE_SPECIAL, 0, IDS(CLS, SEP), NULL);
        expect(t, "", NULL, 0, 0, NONE, NULL);
        expect(t, " \t\n ", NULL, 0, 0, NONE, NULL);
        /* Greedy longest match: "hello" beats "hell" + "##o". */
        expect(t, "hello", NULL, 0, 0, IDS(HELLO), NULL);
        /* An unmatched rest turns the whole word into one [UNK]. */
        expect(t, "runx xyz hello", NULL, 0, 0, IDS(UNK, UNK, HELLO), NULL);
        dsa_tokenizer_free(t);
}

static void test_normalizer(void **state) {
        struct dsa_tokenizer *t = load(UNCASED, 100);

        /* Accents: NFD then drop Mn, both precomposed and already decomposed. */
        expect(t, "Café CAFE\xcc\x81", NULL, 0, 0, IDS(CAFE, CAFE), NULL);
        /* CJK ideographs are isolated; kana/hangul are not in the ranges. */
        expect(t, "中文", NULL, 0, 0, IDS(ZHONG, WEN), NULL);
        expect(t, "hello中world", NULL, 0, 0, IDS(HELLO, ZHONG, WORLD), NULL);
        /* Control and format characters vanish, joining their neighbours; NUL and U+FFFD too. */
        expect(t, "hel\x01lo wo\xc2\xadrld he\xe2\x80\x8bllo", NULL, 0, 0, IDS(HELLO, WORLD, HELLO), NULL);
        expect(t, "hel\xef\xbf\xbdlo", NULL, 0, 0, IDS(HELLO), NULL);
        {
                const char nul[] = "hel\0lo";
                struct dsa_encoding e = {};
                assert_int_equal(dsa_tokenizer_encode(t, nul, sizeof(nul) - 1, NULL, 0, 0, 0, &e), 0);
                assert_int_equal(e.n, 1);
                assert_int_equal(e.ids[0], HELLO);
                dsa_encoding_clear(&e);
        }
        /* VT and FF are Cc: clean_text removes them before they can split. */
        expect(t, "hel\x0blo", NULL, 0, 0, IDS(HELLO), NULL);
        /* Whitespace of every kind splits: tab, newline, CR, NBSP, ideographic space, U+2028. */
        expect(t, "hello\tworld\nhello\rworld\xc2\xa0hello\xe3\x80\x80world\xe2\x80\xa8hello", NULL, 0, 0,
               IDS(HELLO, WORLD, HELLO, WORLD, HELLO, WORLD, HELLO), NULL);
        /* Punctuation is isolated: ASCII symbols and Unicode P* (« is Pi), but not Unicode S*. */
        expect(t, "hello.world$a", NULL, 0, 0, IDS(HELLO, DOT, WORLD, UNK, A), NULL);
        expect(t, "hello\xc2\xabworld", NULL, 0, 0, IDS(HELLO, UNK, WORLD), NULL);
        expect(t, "hello\xe2\x82\xac", NULL, 0, 0, IDS(UNK), NULL);
        dsa_tokenizer_free(t);

        /* Cased, no accent stripping. */
        t = load("\"clean_text\":true,\"handle_chinese_chars\":false,\"strip_accents\":false,\"lowercase\":false", 100);
        expect(t, "Café cafe", NULL, 0, 0, IDS(CAFE_CASED, CAFE), NULL);
        expect(t, "中文", NULL, 0, 0, IDS(UNK), NULL);
        dsa_tokenizer_free(t);

        /* Rust's to_lowercase: U+0130 becomes "i" + U+0307 when accents stay. */
        t = load("\"clean_text\":true,\"handle_chinese_chars\":true,\"strip_accents\":false,\"lowercase\":true", 100);
        expect(t, "\xc4\xb0", NULL, 0, 0, IDS(I, DOT_ABOVE), NULL);
        dsa_tokenizer_free(t);
        /* With stripping (null follows lowercase), NFD drops the dot before lowercasing. */
        t = load(UNCASED, 100);
        expect(t, "\xc4\xb0", NULL, 0, 0, IDS(I), NULL);
        dsa_tokenizer_free(t);
}

static void test_word_limit(void **state) {
        struct dsa_tokenizer *t = load(UNCASED, 5);

        expect(t, "hello unaffable", NULL, 0, 0, IDS(HELLO, UNK), NULL);
        /* Counted in characters, not bytes: "cafés" is 5 characters before NFD. */
        expect(t, "Cafe", NULL, 0, 0, IDS(CAFE), NULL);
        dsa_tokenizer_free(t);
}

static void test_added_tokens(void **state) {
        struct dsa_tokenizer *t = load(UNCASED, 100);

        /* Specials match in the raw text, before lowercasing; unnormalized, so "[mask]" does not. */
        expect(t, "hello[MASK]world", NULL, 0, 0, IDS(HELLO, MASK, WORLD), NULL);
        expect(t, "Hello [MASK] [SEP]", NULL, 0, 0, IDS(HELLO, MASK, SEP), NULL);
        expect(t, "[mask]", NULL, 0, 0, IDS(UNK, UNK, UNK), NULL);
        dsa_tokenizer_free(t);
}

static void test_pairs_truncation(void **state) {
        struct dsa_tokenizer *t = load(UNCASED, 100);
        struct dsa_encoding e = {};

        expect(t, "hello", "world", DSA_ENCODE_SPECIAL, 0, IDS(CLS, HELLO, SEP, WORLD, SEP),
               IDS(0, 0, 0, 1, 1));
        expect(t, "hello", "world", 0, 0, IDS(HELLO, WORLD), IDS(0, 1));
        /* Single: keep the head. */
        expect(t, "hello world hello world", NULL, DSA_ENCODE_SPECIAL, 4, IDS(CLS, HELLO, WORLD, SEP), NULL);
        expect(t, "hello", NULL, DSA_ENCODE_SPECIAL, 3, IDS(CLS, HELLO, SEP), NULL);
        /* longest_first: only the longer one shrinks while it is the longer. */
        expect(t, "hello hello hello hello", "world world", DSA_ENCODE_SPECIAL, 7,
               IDS(CLS, HELLO, HELLO, SEP, WORLD, WORLD, SEP), IDS(0, 0, 0, 0, 1, 1, 1));
        expect(t, "hello hello hello hello", "world", DSA_ENCODE_SPECIAL, 6,
               IDS(CLS, HELLO, HELLO, SEP, WORLD, SEP), NULL);
        /* Both long: an odd budget gives the extra token to the longer (HF). */
        expect(t, "hello hello hello", "world world world world", DSA_ENCODE_SPECIAL, 8,
               IDS(CLS, HELLO, HELLO, SEP, WORLD, WORLD, WORLD, SEP), NULL);
        expect(t, "hello hello hello", "world world world", DSA_ENCODE_SPECIAL, 8,
               IDS(CLS, HELLO, HELLO, SEP, WORLD, WORLD, WORLD, SEP), NULL);
        expect(t, "hello hello", "world world", 0, 3, IDS(HELLO, WORLD, WORLD), NULL);
        /* No room for the specials. */
        assert_int_equal(dsa_tokenizer_encode(t, "a", 1, "a", 1, DSA_ENCODE_SPECIAL, 2, &e), -EINVAL);
        assert_int_equal(dsa_tokenizer_encode(t, "a", 1, NULL, 0, 1u << 7, 0, &e), -EINVAL);
        dsa_tokenizer_free(t);
}

static void test_invalid_utf8(void **state) {
        static const char *const bad[] = {
                "\xff", "abc\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "a\x80", "\xe2\x82",
        };
        struct dsa_tokenizer *t = load(UNCASED, 100);
        struct dsa_encoding e = {};

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                assert_int_equal(dsa_tokenizer_encode(t, bad[i], strlen(bad[i]), NULL, 0, 0, 0, &e), -EILSEQ);
                assert_int_equal(dsa_tokenizer_encode(t, "ok", 2, bad[i], strlen(bad[i]), 0, 0, &e), -EILSEQ);
        }
        assert_null(e.ids);
        dsa_tokenizer_free(t);
}

static int load_json(const char *json) {
        struct dsa_tokenizer *t = NULL;
        int r;

        dsa_error_clear();
        r = dsa_tokenizer_from_hf_json(json, strlen(json), &t);
        if (r >= 0) {
                struct dsa_encoding e = {};
                if (dsa_tokenizer_encode(t, "Hello, wörld 中", 15, "x", 1, DSA_ENCODE_SPECIAL, 5, &e) >= 0)
                        dsa_encoding_clear(&e);
                dsa_tokenizer_free(t);
        } else
                assert_true(strlen(dsa_error_message(r)) > 0);
        return r;
}

static void test_corrupt_json(void **state) {
        static const struct {
                const char *json;
                int want;
        } cases[] = {
                { "", -EBADMSG },
                { "[]", -EBADMSG },
                { "{}", -EBADMSG },
                { "{\"model\":{\"type\":\"BPE\",\"vocab\":{}}}", -EOPNOTSUPP },
                { "{\"model\":{\"type\":\"Unigram\"}}", -EOPNOTSUPP },
                { "{\"model\":{\"type\":\"WordPiece\"}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":[]}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":1}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0,\"b\":0}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":-1}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":\"0\"}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0.5}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":99999999999}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"max_input_chars_per_word\":99999999999999,\"vocab\":{\"a\":0}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"max_input_chars_per_word\":-1,\"vocab\":{\"a\":0}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"max_input_chars_per_word\":1e30,\"vocab\":{\"a\":0}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"unk_token\":5,\"vocab\":{\"a\":0}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"continuing_subword_prefix\":\"#################\",\"vocab\":{\"a\":0}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"normalizer\":{\"type\":\"NFKC\"}}", -EOPNOTSUPP },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"normalizer\":{\"type\":\"BertNormalizer\",\"lowercase\":\"yes\"}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"normalizer\":{\"type\":\"BertNormalizer\",\"strip_accents\":1}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}", -EOPNOTSUPP },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"added_tokens\":[{\"id\":0,\"content\":\"b\"}]}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"added_tokens\":[{\"id\":7,\"content\":\"b\"}]}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"added_tokens\":[{\"id\":1,\"content\":\"a\"}]}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"added_tokens\":[{\"id\":1}]}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"added_tokens\":[5]}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"post_processor\":{\"type\":\"RobertaProcessing\"}}", -EOPNOTSUPP },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"post_processor\":{\"type\":\"BertProcessing\",\"cls\":[\"a\",3],\"sep\":[\"a\",0]}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}},\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"X\"}}],\"special_tokens\":{}}}", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}} trailing", -EBADMSG },
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", 0 },
                /* A vocabulary without [UNK] loads; words it cannot match then fail to encode. */
                { "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0,\"[CLS]\":1,\"[SEP]\":2}}}", 0 },
        };
        _cleanup_free_ char *good = make_json(UNCASED, 100);
        struct dsa_test_rng rng = { 42 };
        size_t len = strlen(good);

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int r = load_json(cases[i].json);
                if (r != cases[i].want)
                        fail_msg("case %zu: got %d (%s), want %d", i, r, dsa_error_message(r), cases[i].want);
        }
        /* Every truncation of a good file, then seeded random byte damage. */
        for (size_t k = 0; k < len; k++) {
                char *cut = strndup(good, k);
                assert_true(load_json(cut) < 0);
                free(cut);
        }
        for (int round = 0; round < 2000; round++) {
                _cleanup_free_ char *bad = strdup(good);
                int n_flips = 1 + (int) (dsa_test_rng_u64(&rng) % 4);
                for (int f = 0; f < n_flips; f++)
                        bad[dsa_test_rng_u64(&rng) % len] = (char) (1 + dsa_test_rng_u64(&rng) % 255);
                load_json(bad);
        }
}

static char *make_tmpdir(void) {
        char *dir = strdup("/tmp/dsa-test-tokenizer.XXXXXX");
        assert_non_null(dir);
        assert_non_null(mkdtemp(dir));
        return dir;
}

static void compare(const struct dsa_tokenizer *a, const struct dsa_tokenizer *b, const char *text) {
        struct dsa_encoding ea = {}, eb = {};

        assert_int_equal(dsa_tokenizer_encode(a, text, strlen(text), "world", 5, DSA_ENCODE_SPECIAL, 0, &ea), 0);
        assert_int_equal(dsa_tokenizer_encode(b, text, strlen(text), "world", 5, DSA_ENCODE_SPECIAL, 0, &eb), 0);
        assert_int_equal(ea.n, eb.n);
        assert_memory_equal(ea.ids, eb.ids, ea.n * sizeof(int32_t));
        assert_memory_equal(ea.type_ids, eb.type_ids, ea.n * sizeof(int32_t));
        dsa_encoding_clear(&ea);
        dsa_encoding_clear(&eb);
}

static void test_gguf_roundtrip(void **state) {
        static const char *const texts[] = {
                "Hello, World!", "unaffable runs café", "中文 [MASK] hello", "İ hell\x01o", "",
        };
        static const char *const normalizers[] = {
                UNCASED,
                "\"clean_text\":false,\"handle_chinese_chars\":false,\"strip_accents\":false,\"lowercase\":false",
                "\"clean_text\":true,\"handle_chinese_chars\":true,\"strip_accents\":true,\"lowercase\":false",
        };
        _cleanup_free_ char *dir = make_tmpdir();
        char path[256];

        snprintf(path, sizeof(path), "%s/tok.gguf", dir);
        for (size_t k = 0; k < ELEMENTSOF(normalizers); k++) {
                struct dsa_tokenizer *t = load(normalizers[k], 7), *u = NULL;
                struct dsa_tokenizer_options o1, o2;
                struct dsa_gguf_writer *w = dsa_gguf_writer_new();
                struct dsa_gguf *g = NULL;
                const char *s;
                size_t len;

                assert_non_null(w);
                assert_int_equal(dsa_tokenizer_to_gguf(t, w), 0);
                assert_int_equal(dsa_gguf_writer_write(w, path), 0);
                dsa_gguf_writer_free(w);
                assert_int_equal(dsa_gguf_open(path, &g), 0);
                /* llama.cpp's convention on disk. */
                assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", HELLO, &s, &len), 0);
                assert_int_equal(len, 8);
                assert_memory_equal(s, "\xe2\x96\x81hello", 8);
                assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", AFF, &s, &len), 0);
                assert_int_equal(len, 3);
                assert_memory_equal(s, "aff", 3);
                assert_int_equal(dsa_gguf_get_arr_str(g, "tokenizer.ggml.tokens", CLS, &s, &len), 0);
                assert_memory_equal(s, "[CLS]", 5);

                assert_int_equal(dsa_tokenizer_from_gguf(g, &u), 0);
                assert_int_equal(dsa_tokenizer_get_options(t, &o1), 0);
                assert_int_equal(dsa_tokenizer_get_options(u, &o2), 0);
                assert_int_equal(o1.clean_text, o2.clean_text);
                assert_int_equal(o1.handle_chinese_chars, o2.handle_chinese_chars);
                assert_int_equal(o1.lowercase, o2.lowercase);
                assert_int_equal(o1.strip_accents, o2.strip_accents);
                assert_int_equal(o1.max_input_chars_per_word, 7);
                assert_int_equal(o2.max_input_chars_per_word, 7);
                assert_int_equal(dsa_tokenizer_n_vocab(u), ELEMENTSOF(vocab));
                for (size_t i = 0; i < ELEMENTSOF(vocab); i++)
                        assert_string_equal(dsa_tokenizer_token(u, (int32_t) i), vocab[i]);
                assert_int_equal(dsa_tokenizer_cls_id(u), CLS);
                assert_int_equal(dsa_tokenizer_sep_id(u), SEP);
                assert_int_equal(dsa_tokenizer_pad_id(u), PAD);
                assert_int_equal(dsa_tokenizer_unk_id(u), UNK);
                assert_int_equal(dsa_tokenizer_mask_id(u), MASK);
                for (size_t i = 0; i < ELEMENTSOF(texts); i++)
                        compare(t, u, texts[i]);
                dsa_tokenizer_free(u);
                dsa_gguf_free(g);
                dsa_tokenizer_free(t);
        }
        unlink(path);
        rmdir(dir);
}

/* A GGUF the way llama.cpp's converter writes it, without our keys: llama.cpp's WPM. */
static void test_gguf_llama(void **state) {
        _cleanup_free_ char *dir = make_tmpdir();
        const char *toks[ELEMENTSOF(vocab)];
        char *owned[ELEMENTSOF(vocab)] = {};
        int32_t types[ELEMENTSOF(vocab)];
        struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        struct dsa_tokenizer *t = NULL, *hf = load(UNCASED, 5);
        struct dsa_tokenizer_options o;
        struct dsa_gguf *g = NULL;
        char path[256];

        for (size_t i = 0; i < ELEMENTSOF(vocab); i++) {
                types[i] = i <= MASK ? 3 : 1;
                if (i <= MASK)
                        toks[i] = vocab[i];
                else if (vocab[i][0] == '#')
                        toks[i] = vocab[i] + 2;
                else {
                        assert_true(asprintf(&owned[i], "\xe2\x96\x81%s", vocab[i]) > 0);
                        toks[i] = owned[i];
                }
        }
        snprintf(path, sizeof(path), "%s/llama.gguf", dir);
        assert_int_equal(dsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "bert"), 0);
        assert_int_equal(dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, ELEMENTSOF(vocab)), 0);
        assert_int_equal(dsa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", DSA_GGUF_INT32, types, ELEMENTSOF(vocab)), 0);
        assert_int_equal(dsa_gguf_writer_set_u32(w, "tokenizer.ggml.seperator_token_id", SEP), 0);
        assert_int_equal(dsa_gguf_writer_write(w, path), 0);
        dsa_gguf_writer_free(w);
        for (size_t i = 0; i < ELEMENTSOF(vocab); i++)
                free(owned[i]);

        assert_int_equal(dsa_gguf_open(path, &g), 0);
        assert_int_equal(dsa_tokenizer_from_gguf(g, &t), 0);
        assert_int_equal(dsa_tokenizer_get_options(t, &o), 1);
        for (size_t i = 0; i < ELEMENTSOF(vocab); i++)
                assert_string_equal(dsa_tokenizer_token(t, (int32_t) i), vocab[i]);
        assert_int_equal(dsa_tokenizer_cls_id(t), CLS); /* found by name */
        assert_int_equal(dsa_tokenizer_sep_id(t), SEP);

        /* Where llama.cpp and HF agree. */
        expect(t, "Hello, World! Café 中文", NULL, DSA_ENCODE_SPECIAL, 0,
               IDS(CLS, HELLO, COMMA, WORLD, BANG, CAFE, ZHONG, WEN, SEP), NULL);
        /* Where they differ: no word length limit in llama.cpp ... */
        expect(t, "unaffable", NULL, 0, 0, IDS(UN, AFF, ABLE), NULL);
        expect(hf, "unaffable", NULL, 0, 0, IDS(UNK), NULL);
        /* ... combining marks already in the input stay (llama.cpp's NFD is one-to-one) ... */
        expect(t, "cafe\xcc\x81", NULL, 0, 0, IDS(UNK), NULL);
        expect(hf, "cafe\xcc\x81", NULL, 0, 0, IDS(CAFE), NULL);
        /* ... and VT splits words instead of vanishing. */
        expect(t, "hel\x0blo", NULL, 0, 0, IDS(UNK, UNK), NULL);
        expect(hf, "hel\x0blo", NULL, 0, 0, IDS(HELLO), NULL);

        dsa_tokenizer_free(hf);
        dsa_tokenizer_free(t);
        dsa_gguf_free(g);
        unlink(path);
        rmdir(dir);
}

static void test_vocab_txt(void **state) {
        const struct dsa_tokenizer_options opts = { .clean_text = true, .handle_chinese_chars = true,
                                                    .lowercase = true, .strip_accents = -1,
                                                    .max_input_chars_per_word = 100 };
        _cleanup_free_ char *dir = make_tmpdir();
        struct dsa_tokenizer *t = NULL;
        char path[256];
        FILE *f;

        snprintf(path, sizeof(path), "%s/vocab.txt", dir);
        f = fopen(path, "w");
        assert_non_null(f);
        for (size_t i = 0; i < ELEMENTSOF(vocab); i++)
                fprintf(f, "%s%s\n", vocab[i], i == 5 ? "\r" : "");
        fclose(f);
        assert_int_equal(dsa_tokenizer_from_vocab_txt(path, &opts, &t), 0);
        assert_int_equal(dsa_tokenizer_n_vocab(t), ELEMENTSOF(vocab));
        expect(t, "Hello [MASK] unaffable", NULL, DSA_ENCODE_SPECIAL, 0,
               IDS(CLS, HELLO, MASK, UN, AFF, ABLE, SEP), NULL);
        dsa_tokenizer_free(t);

        f = fopen(path, "w");
        fprintf(f, "a\nb\na\n");
        fclose(f);
        assert_int_equal(dsa_tokenizer_from_vocab_txt(path, &opts, &t), -EBADMSG);
        unlink(path);
        assert_true(dsa_tokenizer_from_vocab_txt(path, &opts, &t) < 0);
        rmdir(dir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_basic),
                cmocka_unit_test(test_normalizer),
                cmocka_unit_test(test_word_limit),
                cmocka_unit_test(test_added_tokens),
                cmocka_unit_test(test_pairs_truncation),
                cmocka_unit_test(test_invalid_utf8),
                cmocka_unit_test(test_corrupt_json),
                cmocka_unit_test(test_gguf_roundtrip),
                cmocka_unit_test(test_gguf_llama),
                cmocka_unit_test(test_vocab_txt),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
