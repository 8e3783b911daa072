/* Damaged decoder files for the Llama loader (engine/llama-load.c, engine/attention-variant.c,
 * engine/model.c), in the style of test-model-corrupt: tiny Llamas (fuzz/tiny-llama.c) tied and
 * untied, F32 and F16, with a byte-level BPE tokenizer, and with each attention variant (local,
 * fixed, linear, DSA with a fitted scorer and with the heuristic one) are cut at many lengths,
 * flipped at seeded random positions, and damaged one key or tensor at a time. Every damaged file
 * must either fail with a negative errno and a reason, or load into a model whose forward runs;
 * the specific damage must fail with the reason it deserves, or, where the file is still
 * well-formed, give finite logits. Run under ASan+UBSan in CI. */
#include <errno.h>
#include <math.h>
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
#include "corrupt.h"
#include "engine/gguf.h"
#include "engine/model-internal.h"
#include "engine/tokenizer.h"
#include "testutil.h"
#include "tiny-llama.h"

#define SEED 20250311u
#define N_FLIPS 300
#define N_TOK 12 /* three blocks of DSA_TEST_LLAMA_BLOCK */

static const struct {
        const char *name;
        struct dsa_test_tiny_llama o;
} seeds[] = {
        { "f32-tied", { 0 } },
        { "f16-untied", { .wtype = DSA_TYPE_F16, .untied = true } },
        { "tokenizer", { .tokenizer = true } },
        { "local", { .att = DSA_ATT_LOCAL } },
        { "fixed-f16", { .wtype = DSA_TYPE_F16, .att = DSA_ATT_FIXED } },
        { "linear-untied", { .att = DSA_ATT_LINEAR, .untied = true } },
        { "dsa", { .att = DSA_ATT_DSA } },
        { "dsa-heuristic", { .att = DSA_ATT_DSA, .heuristic = true, .untied = true } },
        { "int8-dsa", { .wtype = DSA_TYPE_I8, .untied = true, .att = DSA_ATT_DSA, .token = true } },
};
enum { SEED_F32, SEED_F16, SEED_TOK, SEED_LOCAL, SEED_FIXED, SEED_LINEAR, SEED_DSA, SEED_HEUR, SEED_I8, N_SEEDS };

static struct dsa_test_file files[N_SEEDS];

static bool all_finite(const float *x, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (!isfinite(x[i]))
                        return false;
        return true;
}

/* A model that loaded must run: logits and per-token NLL over min(N_TOK, n_ctx) ids, and a
 * sequence one past the context refused. Returns whether every output was finite. */
static bool run(const struct dsa_model *m) {
        const struct dsa_llama_config *c = dsa_model_llama_config(m);
        int32_t ids[N_TOK + 1];
        double nll[N_TOK];
        bool finite;
        int r;

        assert_int_equal(dsa_model_arch(m), DSA_ARCH_LLAMA);
        assert_non_null(c);
        if ((double) c->n_layer * c->n_embd * c->n_ff > 1e6 || (double) c->n_vocab * c->n_embd > 1e7)
                return true;
        const size_t T = MIN((size_t) N_TOK, (size_t) c->n_ctx);
        for (size_t t = 0; t <= N_TOK; t++)
                ids[t] = (int32_t) ((t * 7 + 3) % c->n_vocab);
        float *logits = malloc(T * c->n_vocab * sizeof(float)), *hidden = malloc(T * c->n_embd * sizeof(float));
        assert_non_null(logits);
        assert_non_null(hidden);
        r = dsa_model_lm_forward(m, ids, T, logits, hidden, NULL);
        if (r < 0)
                fail_msg("a model that loaded does not run: %s", dsa_error_message(r));
        finite = all_finite(logits, T * c->n_vocab) && all_finite(hidden, T * c->n_embd);
        if (T >= 2) {
                assert_int_equal(dsa_model_lm_nll(m, ids, T, nll, NULL), 0);
                for (size_t t = 0; t + 1 < T; t++)
                        finite = finite && isfinite(nll[t]);
        }
        if (c->n_ctx < N_TOK)
                assert_true(dsa_model_lm_forward(m, ids, c->n_ctx + 1, NULL, hidden, NULL) < 0);
        free(logits);
        free(hidden);
        return finite;
}

static int write_llama(const void *o, const char *path) {
        return dsa_test_tiny_llama_write(o, path);
}

static const struct dsa_test_file_kind llama = { "Llama", write_llama, run };

/* Where the value of scalar key starts (after its name and u32 type; a string's u64 length). */
static size_t value_at(const struct dsa_test_file *f, const char *key) {
        return dsa_test_file_name_at(f, key) + strlen(key) + 4;
}

/* Where ne[0] of tensor name's info starts (after its name and u32 n_dims). */
static size_t dims_at(const struct dsa_test_file *f, const char *name) {
        return dsa_test_file_name_at(f, name) + strlen(name) + 4;
}

/* A 2-D tensor's ne[0] and ne[1] swapped: the same bytes, the wrong shape. */
static void expect_transposed(struct dsa_test_file *f, const char *name, const char *what, const char *want) {
        const size_t at = dims_at(f, name);
        uint64_t ne[2], sw[2];

        memcpy(ne, f->p + at, 16);
        sw[0] = ne[1], sw[1] = ne[0];
        dsa_test_file_expect_patch(f, at, sw, 16, what, want);
}

/* A scalar key set to v: refused with a reason containing want, or (want NULL) loaded. */
struct u32_key {
        const char *key;
        uint32_t v;
        const char *want;
};
struct f32_key {
        const char *key;
        float v;
        const char *want;
};

static void expect_u32_keys(struct dsa_test_file *f, const struct u32_key *keys, size_t n) {
        for (size_t i = 0; i < n; i++) {
                char what[96];

                snprintf(what, sizeof(what), "%s = %u", keys[i].key, keys[i].v);
                dsa_test_file_expect_patch(f, value_at(f, keys[i].key), &keys[i].v, 4, what, keys[i].want);
        }
}

static void expect_f32_keys(struct dsa_test_file *f, const struct f32_key *keys, size_t n) {
        for (size_t i = 0; i < n; i++) {
                char what[96];

                snprintf(what, sizeof(what), "%s = %g", keys[i].key, (double) keys[i].v);
                dsa_test_file_expect_patch(f, value_at(f, keys[i].key), &keys[i].v, 4, what, keys[i].want);
        }
}

static int setup(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++)
                files[i] = dsa_test_file_build(&llama, &seeds[i].o);
        return 0;
}

static int teardown(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++)
                free(files[i].p);
        return 0;
}

/* Every seed opens from its file, runs with finite logits and NLL over the whole context, holds
 * what its options say, and survives dsa_model_save_variant() with the same logits. */
static void test_valid(void **state) {
        const size_t T = DSA_TEST_LLAMA_CTX;
        char path[] = "/tmp/dsa-test-llama-valid-XXXXXX", saved[64];
        int32_t ids[DSA_TEST_LLAMA_CTX];
        double nll[DSA_TEST_LLAMA_CTX];
        int fd = mkstemp(path);

        (void) state;
        assert_true(fd >= 0);
        close(fd);
        snprintf(saved, sizeof(saved), "%s.saved", path);
        for (size_t i = 0; i < N_SEEDS; i++) {
                const struct dsa_test_tiny_llama *o = &seeds[i].o;
                const uint32_t V = dsa_test_tiny_llama_n_vocab(o);
                _cleanup_(dsa_model_freep) struct dsa_model *m = NULL, *back = NULL;

                dsa_test_file_write(&llama, o, path);
                m = dsa_test_model_open(path);
                const struct dsa_llama_config *c = dsa_model_llama_config(m);
                assert_non_null(c);
                assert_null(dsa_model_bert_config(m));
                assert_int_equal(c->n_vocab, V);
                assert_int_equal(c->n_embd, DSA_TEST_LLAMA_C);
                assert_int_equal(c->n_head, DSA_TEST_LLAMA_H);
                assert_int_equal(c->n_head_kv, DSA_TEST_LLAMA_KV);
                assert_int_equal(c->head_dim, DSA_TEST_LLAMA_HS);
                assert_int_equal(c->n_ff, DSA_TEST_LLAMA_F);
                assert_int_equal(c->n_layer, DSA_TEST_LLAMA_L);
                assert_int_equal(c->n_ctx, DSA_TEST_LLAMA_CTX);

                const struct dsa_llama *l = m->llama;
                assert_int_equal(l->att.kind, o->att);
                const enum dsa_wformat fmt = o->wtype == DSA_TYPE_F16  ? DSA_WFORMAT_F16
                                             : o->wtype == DSA_TYPE_I8 ? DSA_WFORMAT_Q8
                                                                       : DSA_WFORMAT_F32;
                assert_int_equal(l->layers[1].down.fmt, fmt);
                assert_int_equal(l->layers[0].qkv.fmt, fmt);
                assert_int_equal(l->lm_head.fmt, fmt);
                assert_int_equal(l->wte.fmt, fmt);
                if (o->att == DSA_ATT_DSA) {
                        assert_int_equal(l->att.heuristic, o->heuristic);
                        assert_int_equal(l->att.rank, o->heuristic ? 0 : DSA_TEST_LLAMA_RANK);
                        assert_int_equal(l->att.block, DSA_TEST_LLAMA_BLOCK);
                }
                assert_int_equal(dsa_model_tokenizer(m) != NULL, o->tokenizer);

                float *logits = malloc(T * V * sizeof(float)), *again = malloc(T * V * sizeof(float));
                struct dsa_lm_stats st = { 0 };
                assert_non_null(logits);
                assert_non_null(again);
                for (size_t t = 0; t < T; t++)
                        ids[t] = (int32_t) ((t * 11 + 1) % V);
                assert_int_equal(dsa_model_lm_forward(m, ids, T, logits, NULL, &st), 0);
                assert_true(all_finite(logits, T * V));
                assert_int_equal(dsa_model_lm_nll(m, ids, T, nll, NULL), 0);
                for (size_t t = 0; t + 1 < T; t++)
                        assert_true(isfinite(nll[t]) && nll[t] >= 0.0);
                /* Sparse variants skip blocks of the 16 a 64-token sequence has. */
                if (o->att == DSA_ATT_LOCAL || o->att == DSA_ATT_FIXED)
                        assert_true(st.blocks_kept < st.blocks_visible);
                assert_true(dsa_model_lm_forward(m, ids, T + 1, NULL, NULL, NULL) < 0);
                const int32_t id3 = ids[3];
                ids[3] = (int32_t) V;
                assert_true(dsa_model_lm_forward(m, ids, 4, logits, NULL, NULL) < 0);
                ids[3] = -1;
                assert_true(dsa_model_lm_forward(m, ids, 4, logits, NULL, NULL) < 0);
                ids[3] = id3;
                printf("%-14s %6zu bytes, logits[0] %+.4f, nll[T-2] %.4f, blocks %llu of %llu\n", seeds[i].name,
                       files[i].n, (double) logits[0], nll[T - 2], (unsigned long long) st.blocks_kept,
                       (unsigned long long) st.blocks_visible);

                /* What the engine writes back reads the same (the attention variant included). */
                assert_int_equal(dsa_model_save_variant(m, saved), 0);
                back = dsa_test_model_open(saved);
                assert_int_equal(back->llama->att.kind, o->att);
                assert_int_equal(dsa_model_lm_forward(back, ids, T, again, NULL, NULL), 0);
                assert_true(dsa_test_check_tensor(seeds[i].name, again, logits, T * V, 1e-6f, 1e-5f));
                unlink(saved);
                free(logits);
                free(again);

                /* The tokenizer: BOS, then the merges all the way up. */
                if (o->tokenizer) {
                        const struct dsa_tokenizer *tok = dsa_model_tokenizer(m);
                        struct dsa_encoding e = { 0 };
                        float *lg = malloc(3 * V * sizeof(float));

                        assert_non_null(lg);
                        assert_int_equal(dsa_tokenizer_encode(tok, "hello world", 11, NULL, 0, DSA_ENCODE_SPECIAL,
                                                              0, &e), 0);
                        assert_int_equal(e.n, 3);
                        assert_int_equal(e.ids[0], DSA_TEST_LLAMA_BOS);
                        assert_int_equal(e.ids[1], 259); /* "hello" */
                        assert_int_equal(e.ids[2], 264); /* "Ġworld" */
                        assert_int_equal(dsa_model_lm_forward(m, e.ids, e.n, lg, NULL, NULL), 0);
                        assert_true(all_finite(lg, 3 * V));
                        dsa_encoding_clear(&e);
                        /* Bytes without a merge are their own symbols, a control byte and UTF-8 too. */
                        assert_int_equal(dsa_tokenizer_encode(tok, "\x01\xc3\xa9~", 4, NULL, 0, 0, 0, &e), 0);
                        assert_int_equal(e.n, 4);
                        assert_true(e.ids[0] == 1 && e.ids[1] == 0xc3 && e.ids[2] == 0xa9 && e.ids[3] == '~');
                        dsa_encoding_clear(&e);
                        free(lg);
                }
        }
        unlink(path);
}

/* Every combination of the writer's options opens from its file and gives finite logits. */
static void test_combinations(void **state) {
        static const enum dsa_type wtypes[] = { DSA_TYPE_F32, DSA_TYPE_F16, DSA_TYPE_I8 };
        char path[] = "/tmp/dsa-test-llama-combo-XXXXXX";
        int32_t ids[DSA_TEST_LLAMA_CTX];
        int fd = mkstemp(path);
        size_t n = 0;

        (void) state;
        assert_true(fd >= 0);
        close(fd);
        for (size_t w = 0; w < ELEMENTSOF(wtypes); w++)
                for (unsigned bits = 0; bits < 4; bits++)
                        for (unsigned k = 0; k <= _DSA_ATT_MAX; k++, n++) { /* _MAX: DSA, heuristic */
                                const struct dsa_test_tiny_llama o = {
                                        .wtype = wtypes[w], .untied = bits & 1, .tokenizer = bits & 2,
                                        .att = k < _DSA_ATT_MAX ? k : DSA_ATT_DSA, .heuristic = k == _DSA_ATT_MAX,
                                };
                                const size_t V = dsa_test_tiny_llama_n_vocab(&o), T = DSA_TEST_LLAMA_CTX;
                                _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
                                float *logits = malloc(T * V * sizeof(float));

                                assert_non_null(logits);
                                dsa_test_file_write(&llama, &o, path);
                                m = dsa_test_model_open(path);
                                for (size_t t = 0; t < T; t++)
                                        ids[t] = (int32_t) ((t * 13 + w + bits) % V);
                                assert_int_equal(dsa_model_lm_forward(m, ids, T, logits, NULL, NULL), 0);
                                if (!all_finite(logits, T * V))
                                        fail_msg("combination %zu: a NaN or infinity in the logits", n);
                                free(logits);
                        }
        unlink(path);
        print_message("%zu option combinations opened and ran\n", n);
}

static void test_truncated(void **state) {
        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++)
                dsa_test_file_check_truncated(&files[i], seeds[i].name);
}

/* Byte and bit flips: in the header, where the structure is, and anywhere, so keys, shapes, the
 * scorer and the weights all get NaNs and huge values. A weight made huge but finite may give
 * infinite logits; that is not the loader's to refuse, so finiteness is only counted here. */
static void test_random(void **state) {
        struct dsa_test_rng rng = { SEED };
        struct dsa_test_flips n = { 0 };

        (void) state;
        for (size_t i = 0; i < N_SEEDS; i++)
                dsa_test_file_check_flips(&files[i], &rng, N_FLIPS, true, seeds[i].name, &n);
        print_message("llama: %zu damaged files loaded and ran (%zu with non-finite outputs), %zu rejected (%zu "
                      "without a reason of their own)\n", n.ok, n.nonfinite, n.bad, n.generic);
        assert_true(n.bad > 0 && n.ok > 0);
}

static void put_u32(struct dsa_test_file *f, size_t at, uint32_t v) {
        memcpy(f->p + at, &v, 4);
}

/* Keys: missing, contradicting each other, or out of range. */
static void test_keys(void **state) {
        struct dsa_test_file c = dsa_test_file_copy(&files[SEED_F32]);
        size_t at;

        (void) state;
        /* Each required key removed by renaming it. */
        static const char *const required[] = {
                "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.head_count",
        };
        for (size_t i = 0; i < ELEMENTSOF(required); i++)
                dsa_test_file_expect_renamed(&c, required[i], strlen(required[i]) - 1, required[i], required[i]);
        static const struct u32_key lies[] = {
                { "llama.attention.head_count_kv", 3, "not a multiple of 3" },
                { "llama.attention.head_count_kv", 0, "a size is zero" },
                { "llama.attention.head_count_kv", 8, "not a multiple of 8" },
                { "llama.attention.head_count_kv", 1, "blk.0.attn_k.weight" },
                { "llama.attention.head_count", 0, "head_count is 0" },
                { "llama.attention.head_count", 6, "blk.0.attn_q.weight" },
                { "llama.attention.key_length", 3, "partial rotary" },
                { "llama.rope.dimension_count", 2, "partial rotary" },
                { "llama.context_length", 1u << 31, "past this engine's limits" },
                { "llama.context_length", 0, "a size is zero" },
                { "llama.block_count", 3, "blk.2.attn_norm.weight" },
                { "llama.block_count", 100000, "past this engine's limits" },
                { "llama.embedding_length", 8, "has shape" },
                { "llama.feed_forward_length", UINT32_MAX, "past this engine's limits" },
        };
        expect_u32_keys(&c, lies, ELEMENTSOF(lies));

        /* An odd head size, the rotary dimension agreeing with it. */
        at = value_at(&c, "llama.attention.key_length");
        const size_t at_rot = value_at(&c, "llama.rope.dimension_count");
        put_u32(&c, at, 3), put_u32(&c, at_rot, 3);
        dsa_test_file_expect_fail(&c, "head size 3", "head size 3 is odd");
        /* A context of 2^20 with heads of 1024: the tensors do not have that head size, and nothing
         * is allocated for the context before they are checked (the rotary tables stop at
         * DSA_LLAMA_ROPE_TABLE positions whatever the context). */
        const size_t at_ctx = value_at(&c, "llama.context_length");
        put_u32(&c, at, 1024), put_u32(&c, at_rot, 1024), put_u32(&c, at_ctx, 1u << 20);
        dsa_test_file_expect_fail(&c, "context 2^20 of head size 1024", "attn_q.weight");
        put_u32(&c, at, 4), put_u32(&c, at_rot, 4);
        dsa_test_file_expect_ok(&c, "context 2^20");
        put_u32(&c, at_ctx, DSA_TEST_LLAMA_CTX);

        /* Out-of-range epsilon and rotary base. */
        static const struct f32_key floats[] = {
                { "llama.attention.layer_norm_rms_epsilon", 0.0f, "out of range" },
                { "llama.attention.layer_norm_rms_epsilon", NAN, "out of range" },
                { "llama.attention.layer_norm_rms_epsilon", 2.0f, "out of range" },
                { "llama.rope.freq_base", 1.0f, "out of range" },
                { "llama.rope.freq_base", INFINITY, "out of range" },
        };
        expect_f32_keys(&c, floats, ELEMENTSOF(floats));

        /* Optional keys removed: the defaults (head size C / NH, head_count_kv = head_count, the
         * rotary dimension the head size, epsilon 1e-5) still fit this model, except the
         * key/value heads. */
        static const char *const optional[] = {
                "llama.attention.key_length", "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon",
                "llama.rope.freq_base", "llama.vocab_size", "general.name",
        };
        for (size_t i = 0; i < ELEMENTSOF(optional); i++)
                dsa_test_file_expect_renamed(&c, optional[i], 0, optional[i], NULL);
        dsa_test_file_expect_renamed(&c, "llama.attention.head_count_kv", 0, "no head_count_kv", "blk.0.attn_k.weight");

        /* A key of the wrong type: block_count as a float32. */
        const uint32_t f32type = DSA_GGUF_FLOAT32;
        at = value_at(&c, "llama.block_count") - 4;
        dsa_test_file_expect_patch(&c, at, &f32type, 4, "block_count as float32", "llama.block_count");
        dsa_test_file_expect_ok(&c, "restored");
        free(c.p);
}

/* Tensors: missing, misshapen, or holding NaN or infinity. */
static void test_tensors(void **state) {
        (void) state;
        for (size_t s = 0; s < 2; s++) { /* tied F32, untied F16 */
                const size_t seed = s ? SEED_F16 : SEED_F32;
                struct dsa_test_file c = dsa_test_file_copy(&files[seed]);
                size_t at;

                static const char *const names[] = {
                        "blk.1.ffn_gate.weight", "blk.0.attn_norm.weight", "output_norm.weight",
                        "blk.0.attn_v.weight",   "blk.1.ffn_norm.weight",  "token_embd.weight",
                };
                for (size_t i = 0; i < ELEMENTSOF(names); i++)
                        dsa_test_file_expect_renamed(&c, names[i], 0, names[i], names[i]);
                static const char *const swapped[] = { "blk.0.attn_k.weight", "blk.1.ffn_down.weight",
                                                       "token_embd.weight" };
                for (size_t i = 0; i < ELEMENTSOF(swapped); i++)
                        expect_transposed(&c, swapped[i], swapped[i], i < 2 ? "has shape" : "token_embd.weight");
                /* NaN and infinity in matrices, norm gains and the embedding. */
                const struct {
                        const char *tensor;
                        size_t index;
                        bool matrix;
                        float v;
                } bad[] = {
                        { "blk.1.ffn_down.weight", 5, true, NAN },  { "blk.0.attn_q.weight", 0, true, INFINITY },
                        { "blk.0.attn_k.weight", 9, true, -INFINITY }, { "blk.1.attn_output.weight", 3, true, NAN },
                        { "token_embd.weight", 17, true, NAN },     { "token_embd.weight", 0, true, INFINITY },
                        { "blk.0.attn_norm.weight", 2, false, NAN }, { "output_norm.weight", 15, false, INFINITY },
                        { "blk.1.ffn_norm.weight", 0, false, -INFINITY },
                };
                for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                        const bool f16 = bad[i].matrix && seed == SEED_F16;
                        const uint16_t h = isnan(bad[i].v) ? 0x7e00 : bad[i].v > 0 ? 0x7c00 : 0xfc00;
                        char what[96];

                        at = dsa_test_file_tensor_at(&c, bad[i].tensor) + (f16 ? 2 : 4) * bad[i].index;
                        snprintf(what, sizeof(what), "%s %s[%zu] = %g", seeds[seed].name, bad[i].tensor, bad[i].index,
                                 (double) bad[i].v);
                        if (f16)
                                dsa_test_file_expect_patch(&c, at, &h, 2, what, bad[i].tensor);
                        else
                                dsa_test_file_expect_patch(&c, at, &bad[i].v, 4, what, bad[i].tensor);
                }
                if (seed == SEED_F16) {
                        const uint16_t h = 0x7e00;
                        at = dsa_test_file_tensor_at(&c, "output.weight") + 2 * 7;
                        dsa_test_file_expect_patch(&c, at, &h, 2, "NaN in output.weight", "output.weight");
                        /* Without output.weight the head is tied to token_embd. */
                        dsa_test_file_expect_renamed(&c, "output.weight", 0, "untied made tied", NULL);
                }
                /* A matrix of a type the loader cannot convert (I32 bytes of the same size). */
                if (seed == SEED_F32) {
                        const uint32_t i32 = DSA_TYPE_I32;
                        at = dims_at(&c, "blk.0.ffn_up.weight") + 16;
                        dsa_test_file_expect_patch(&c, at, &i32, 4, "ffn_up as I32", "blk.0.ffn_up.weight");
                }
                dsa_test_file_expect_ok(&c, "restored");
                free(c.p);
        }
}

/* int8 matrices (dsactl optimize --quant int8): their scales missing, negative, NaN or of the
 * wrong length, a byte of -128 (outside the symmetric range the kernels rely on), and a fused
 * matrix with an fp32 part among int8 ones. */
static void test_int8(void **state) {
        struct dsa_test_file c = dsa_test_file_copy(&files[SEED_I8]);
        size_t at;

        (void) state;
        static const char *const scales[] = { "blk.0.attn_k.scale", "blk.1.ffn_down.scale", "output.scale",
                                              "token_embd.scale" };
        for (size_t i = 0; i < ELEMENTSOF(scales); i++)
                dsa_test_file_expect_renamed(&c, scales[i], strlen(scales[i]) - 1, scales[i], scales[i]);
        static const struct dsa_test_f32_patch bad[] = {
                { "blk.0.attn_q.scale", 1, -0.5f, "negative or non-finite scale" },
                { "blk.1.ffn_gate.scale", 0, NAN, "negative or non-finite scale" },
                { "output.scale", 3, INFINITY, "negative or non-finite scale" },
                { "token_embd.scale", 2, NAN, "token_embd" },
        };
        dsa_test_file_expect_f32_patches(&c, bad, ELEMENTSOF(bad));
        /* The scale vector one short: it no longer matches the matrix's rows. */
        {
                const uint64_t rows = DSA_TEST_LLAMA_F - 1;
                dsa_test_file_expect_patch(&c, dims_at(&c, "blk.0.ffn_up.scale"), &rows, 8, "ffn_up.scale short",
                                           "blk.0.ffn_up.scale");
        }
        const int8_t m128 = INT8_MIN;
        at = dsa_test_file_tensor_at(&c, "blk.1.attn_output.weight") + 5;
        dsa_test_file_expect_patch(&c, at, &m128, 1, "a -128 in attn_output", "blk.1.attn_output.weight");
        /* attn_v's type made F32: refused, whether for the bytes an F32 of its shape would need
         * or for mixing fp32 into an int8 Q/K/V. */
        const uint32_t f32 = DSA_TYPE_F32;
        at = dims_at(&c, "blk.0.attn_v.weight") + 16;
        dsa_test_file_expect_patch(&c, at, &f32, 4, "attn_v as F32 next to int8 Q and K", "blk.0.attn_v");
        dsa_test_file_expect_ok(&c, "restored");
        free(c.p);
}

/* The attention variant's keys and the DSA scorer's tensors. */
static void test_attention(void **state) {
        struct dsa_test_file c = dsa_test_file_copy(&files[SEED_DSA]);
        size_t at;

        (void) state;
        /* Kinds: unknown, or another one (linear and dense ignore the scorer; local and fixed too). */
        at = value_at(&c, "dsa.attention.kind") + 8;
        assert_memory_equal(c.p + at, "dsa", 3);
        dsa_test_file_expect_patch(&c, at + 2, "x", 1, "kind 'dsx'", "'dsx' is not known");
        dsa_test_file_expect_patch(&c, at, "DSA", 3, "kind 'DSA'", "is not known");
        at = value_at(&c, "dsa.attention.select") + 8;
        dsa_test_file_expect_patch(&c, at, "M", 1, "select 'Mass'", "dsa.attention.select");

        /* want NULL: a value that fits (block 1: one token per block; DSA_ATT_MAX_BLOCK: one block
         * for the whole sequence). */
        static const struct u32_key u32s[] = {
                { "dsa.attention.block", 0, "attention block 0" },
                { "dsa.attention.block", 100000, "attention block 100000" },
                { "dsa.attention.block", DSA_ATT_MAX_BLOCK + 1, "is not in [1," },
                { "dsa.attention.block", 1, NULL },
                { "dsa.attention.block", DSA_ATT_MAX_BLOCK, NULL },
                { "dsa.attention.window", 0, "window" },
                { "dsa.attention.global", UINT32_MAX, "window" },
                { "dsa.attention.scorer_rank", 0, "needs a fitted scorer" },
                { "dsa.attention.scorer_rank", 3, "wrong shape" },
                { "dsa.attention.scorer_rank", 1, "wrong shape" },
                { "dsa.attention.scorer_rank", DSA_ATT_MAX_RANK + 1, "rank 65" },
                { "dsa.attention.scorer_rank", UINT32_MAX, "is not in [1, 64]" },
        };
        expect_u32_keys(&c, u32s, ELEMENTSOF(u32s));
        static const struct f32_key f32s[] = {
                { "dsa.attention.mass", 0.0f, "mass target" },      { "dsa.attention.mass", 2.0f, "mass target" },
                { "dsa.attention.mass", -0.5f, "mass target" },     { "dsa.attention.mass", NAN, "mass target" },
                { "dsa.attention.mass", INFINITY, "mass target" },  { "dsa.attention.mass", 1.0000001f, "mass target" },
                { "dsa.attention.mass", 1.0f, NULL },               { "dsa.attention.mass", 1e-6f, NULL },
                { "dsa.attention.fraction", 0.0f, "kept fraction" },
        };
        expect_f32_keys(&c, f32s, ELEMENTSOF(f32s));

        /* The oracle (the scorer is read and checked, then unused), the heuristic scorer with a
         * fitted one present (likewise), not both. */
        at = value_at(&c, "dsa.attention.oracle");
        c.p[at] = 1;
        dsa_test_file_expect_ok(&c, "oracle");
        const size_t at_h = value_at(&c, "dsa.attention.heuristic");
        c.p[at_h] = 1;
        dsa_test_file_expect_fail(&c, "oracle and heuristic", "one of fitted, token, oracle or heuristic");
        c.p[at] = 0;
        dsa_test_file_expect_ok(&c, "heuristic with a scorer");
        c.p[at_h] = 0;

        /* The scorer: NaN and infinity, the wrong shape or type, missing for one layer. */
        static const struct dsa_test_f32_patch bad[] = {
                { "blk.0.dsa_scorer_q.weight", 3, NAN, "holds a NaN or infinity" },
                { "blk.1.dsa_scorer_k.weight", 31, INFINITY, "holds a NaN or infinity" },
                { "blk.1.dsa_scorer_bias.weight", 12, -INFINITY, "holds a NaN or infinity" },
                { "blk.0.dsa_scorer_bias.weight", 0, NAN, "holds a NaN or infinity" },
        };
        dsa_test_file_expect_f32_patches(&c, bad, ELEMENTSOF(bad));
        static const char *const scorer[] = { "blk.0.dsa_scorer_q.weight", "blk.1.dsa_scorer_k.weight",
                                              "blk.1.dsa_scorer_bias.weight" };
        for (size_t i = 0; i < ELEMENTSOF(scorer); i++) {
                char what[96];

                snprintf(what, sizeof(what), "%s missing", scorer[i]);
                dsa_test_file_expect_renamed(&c, scorer[i], strlen(scorer[i]) - 1, what, "is missing");
                snprintf(what, sizeof(what), "%s transposed", scorer[i]);
                expect_transposed(&c, scorer[i], what, "wrong shape");
        }
        const uint32_t i32 = DSA_TYPE_I32;
        at = dims_at(&c, "blk.1.dsa_scorer_q.weight") + 24;
        dsa_test_file_expect_patch(&c, at, &i32, 4, "scorer as I32", "not an F32 tensor");
        dsa_test_file_expect_ok(&c, "restored");
        free(c.p);

        /* The heuristic scorer needs no tensors; without the flag it would need them. */
        c = dsa_test_file_copy(&files[SEED_HEUR]);
        dsa_test_file_expect_ok(&c, "heuristic");
        c.p[value_at(&c, "dsa.attention.heuristic")] = 0;
        dsa_test_file_expect_fail(&c, "DSA with no scorer", "needs a fitted scorer");
        free(c.p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_valid), cmocka_unit_test(test_combinations), cmocka_unit_test(test_truncated),
                cmocka_unit_test(test_random), cmocka_unit_test(test_keys),         cmocka_unit_test(test_tensors),
                cmocka_unit_test(test_attention), cmocka_unit_test(test_int8),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
