/* Writes the fuzzers' seed corpus (a few valid files of each format, each well under 10 KB;
 * the tiny BERT and Llama models of "model" under 16 KB, the tiny BERT's training checkpoints
 * of "checkpoint" under 32 KB) into OUTDIR/<target> (gguf, safetensors, tokenizer-json,
 * hf-config, request, model, checkpoint) at build time, so no binary files are committed.
 * The tokenizer seeds cover WordPiece and byte-level BPE, as tokenizer.json and as GGUF. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "dsa/ring.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "engine/train.h"
#include "engine/variant.h"
#include "tiny-bert.h"
#include "tiny-llama.h"

static char path_buf[4096];

static const char *path(const char *dir, const char *sub, const char *name) {
        snprintf(path_buf, sizeof(path_buf), "%s/%s/%s", dir, sub, name);
        return path_buf;
}

static int write_raw(const char *p, const void *data, size_t n) {
        FILE *f = fopen(p, "w");

        if (!f || fwrite(data, 1, n, f) != n) {
                if (f)
                        fclose(f);
                return -EIO;
        }
        return fclose(f) == 0 ? 0 : -EIO;
}

static int gguf_model(const char *p) {
        static float f32[4 * 8];
        static uint16_t f16[16], bf16[8];
        static uint8_t q8[2 * 34];
        static int32_t i32[5] = { -1, 0, 1, 2, 3 };
        static const uint64_t ne_a[] = { 8, 4 }, ne_b[] = { 16 }, ne_c[] = { 32, 2 }, ne_d[] = { 5 },
                              ne_e[] = { 2, 2, 1, 2 };
        static const int32_t heads[] = { 2, 2 };
        static const char *const names[] = { "a", "b" };
        struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        int r = 0;

        if (!w)
                return -ENOMEM;
        for (int i = 0; i < 32; i++)
                f32[i] = (float) i * 0.25f;
        for (int i = 0; i < 16; i++)
                f16[i] = 0x3c00;
        for (int i = 0; i < 8; i++)
                bf16[i] = 0x3f80;
        for (int b = 0; b < 2; b++) {
                q8[b * 34 + 1] = 0x3c;
                for (int j = 0; j < 32; j++)
                        q8[b * 34 + 2 + j] = (uint8_t) j;
        }
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "general.architecture", "bert");
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "bert.block_count", 2);
        r = r < 0 ? r : dsa_gguf_writer_set_i32(w, "test.i32", -7);
        r = r < 0 ? r : dsa_gguf_writer_set_u64(w, "test.u64", 1ull << 40);
        r = r < 0 ? r : dsa_gguf_writer_set_f32(w, "bert.attention.layer_norm_epsilon", 1e-12f);
        r = r < 0 ? r : dsa_gguf_writer_set_bool(w, "test.bool", true);
        r = r < 0 ? r : dsa_gguf_writer_set_arr_str(w, "test.names", names, 2);
        r = r < 0 ? r : dsa_gguf_writer_set_arr(w, "dsa.heads", DSA_GGUF_INT32, heads, 2);
        r = r < 0 ? r : dsa_gguf_writer_add_tensor(w, "a", DSA_TYPE_F32, 2, ne_a, f32);
        r = r < 0 ? r : dsa_gguf_writer_add_tensor(w, "b", DSA_TYPE_F16, 1, ne_b, f16);
        r = r < 0 ? r : dsa_gguf_writer_add_tensor(w, "c", DSA_TYPE_Q8_0, 2, ne_c, q8);
        r = r < 0 ? r : dsa_gguf_writer_add_tensor(w, "d", DSA_TYPE_I32, 1, ne_d, i32);
        r = r < 0 ? r : dsa_gguf_writer_add_tensor(w, "e", DSA_TYPE_BF16, 4, ne_e, bf16);
        r = r < 0 ? r : dsa_gguf_writer_write(w, p);
        dsa_gguf_writer_free(w);
        return r;
}

static int gguf_vocab(const char *p) {
        static const char *const tokens[] = { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "##s", "a", "é" };
        static const float scores[] = { 0, 0, 0, 0, -1, -2, -3, -4 };
        struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        int r = 0;

        if (!w)
                return -ENOMEM;
        r = r < 0 ? r : dsa_gguf_writer_set_u32(w, "general.alignment", 64);
        r = r < 0 ? r : dsa_gguf_writer_set_str(w, "tokenizer.ggml.model", "bert");
        r = r < 0 ? r : dsa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, 8);
        r = r < 0 ? r : dsa_gguf_writer_set_arr(w, "tokenizer.ggml.scores", DSA_GGUF_FLOAT32, scores, 8);
        r = r < 0 ? r : dsa_gguf_writer_write(w, p);
        dsa_gguf_writer_free(w);
        return r;
}

static int st_write(const char *p, const char *json, size_t data) {
        uint8_t buf[4096] = {};
        uint64_t n = strlen(json);

        memcpy(buf, &n, 8);
        memcpy(buf + 8, json, n);
        for (size_t i = 0; i < data; i++)
                buf[8 + n + i] = (uint8_t) (i * 7);
        return write_raw(p, buf, 8 + n + data);
}

/* A ring request as fuzz-request reads it: the 64-byte SQE, then the payload
 * (u32 n_texts, then per text u32 len + bytes). */
static int request(const char *p, uint32_t op, uint32_t flags, uint32_t pool, const char *const *texts,
                   size_t n) {
        uint8_t buf[1024];
        struct dsa_ring_sqe sqe = { .user_data = 7, .op = op, .flags = flags, .slot = 3, .pool = pool };
        size_t off = sizeof(sqe);
        uint32_t v;

        if (op != DSA_RING_OP_NOP) {
                v = (uint32_t) n;
                memcpy(buf + off, &v, 4);
                off += 4;
                for (size_t i = 0; i < n; i++) {
                        v = (uint32_t) strlen(texts[i]);
                        memcpy(buf + off, &v, 4);
                        memcpy(buf + off + 4, texts[i], v);
                        off += 4 + v;
                }
        }
        sqe.len = (uint32_t) (off - sizeof(sqe));
        memcpy(buf, &sqe, sizeof(sqe));
        return write_raw(p, buf, off);
}

/* The model loader's seeds: one tiny BERT per branch of the variant format, written directly
 * (tiny-bert.c), and variants the engine itself made from the F32 one (dsa_model_optimize() +
 * dsa_model_save_variant()), so the corpus also holds the files real tools write. */
static int model_seeds(const char *dir) {
        static const uint32_t heads[] = { 1, 2 }, ffs[] = { 8, 16 }, zero_heads[] = { 0, 2 }, zero_ffs[] = { 16, 0 };
        static const float keep[] = { 0.5f, 1.0f };
        static const char *const calib[] = { "the movie is great", "a bad film", "not good", "the films is great" };
        const struct {
                const char *name;
                struct dsa_test_tiny_bert o;
        } direct[] = {
                { "f32.gguf", { .tokenizer = true } },
                { "f16.gguf", { .wtype = DSA_TYPE_F16, .etype = DSA_TYPE_F16 } },
                { "bf16.gguf", { .wtype = DSA_TYPE_BF16, .etype = DSA_TYPE_BF16 } },
                { "int8.gguf", { .wtype = DSA_TYPE_I8, .etype = DSA_TYPE_I8, .input_scale = true } },
                { "int8-dynamic.gguf", { .wtype = DSA_TYPE_I8 } },
                { "pruned.gguf", { .heads = heads, .n_heads = 2, .ffs = ffs, .n_ffs = 2 } },
                { "pruned-int8.gguf", { .wtype = DSA_TYPE_I8, .etype = DSA_TYPE_I8, .input_scale = true,
                                        .heads = heads, .n_heads = 2, .ffs = ffs, .n_ffs = 2 } },
                { "pruned-empty.gguf", { .heads = zero_heads, .n_heads = 2, .ffs = zero_ffs, .n_ffs = 2 } },
                { "token-keep-sparse.gguf", { .sparse = true, .token_keep = keep, .n_token_keep = 2 } },
                { "token-score.gguf", { .token_keep = keep, .n_token_keep = 2, .token_score = true } },
        };
        char p[4096];
        int r;

        for (size_t i = 0; i < ELEMENTSOF(direct); i++) {
                r = dsa_test_tiny_bert_write(&direct[i].o, path(dir, "model", direct[i].name));
                if (r < 0) {
                        fprintf(stderr, "gen-seeds: cannot write seed %s\n", direct[i].name);
                        return r;
                }
        }

        /* What dsactl optimize writes: f16; dynamic int8 with token pruning; static int8 with
         * heads and FFN pruned (calibrated on the tiny vocabulary); 16 x 1 block sparsity. */
        const struct {
                const char *name;
                struct dsa_optimize_opts o;
        } made[] = {
                { "opt-f16.gguf", { .quant = DSA_WFORMAT_F16, .token_keep = -1 } },
                { "opt-int8-keep.gguf", { .quant = DSA_WFORMAT_Q8, .token_keep = 0.5 } },
                { "opt-int8-static-pruned.gguf",
                  { .quant = DSA_WFORMAT_Q8, .act = DSA_ACT_MINMAX, .prune_heads = 0.5, .prune_ffn = 0.5,
                    .token_keep = -1, .calib = calib, .n_calib = ELEMENTSOF(calib) } },
                { "opt-sparse.gguf", { .quant = DSA_WFORMAT_F32, .sparsity = 0.5, .sparsity_pattern = DSA_SPARSE_BLOCK16,
                                       .token_keep = -1 } },
        };
        snprintf(p, sizeof(p), "%s", path(dir, "model", "f32.gguf"));
        for (size_t i = 0; i < ELEMENTSOF(made); i++) {
                _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
                struct dsa_optimize_opts o = made[i].o;

                o.act_percentile = 99.99;
                if ((r = dsa_model_open(p, &m)) < 0 || (r = dsa_model_optimize(m, &o)) < 0 ||
                    (r = dsa_model_save_variant(m, path(dir, "model", made[i].name))) < 0) {
                        fprintf(stderr, "gen-seeds: cannot make seed %s\n", made[i].name);
                        return r;
                }
        }
        return 0;
}

/* The decoder loader's seeds: tiny Llamas (tiny-llama.c) tied and untied, with each attention
 * variant, F16 or int8 so that each stays under the fuzzers' 16 KB max_len (the byte-level tokenizer's
 * 300-row embedding would not; the tokenizer itself is seeded under gguf), and what the engine
 * writes back from the DSA one (dsa_model_save_variant()). */
static int llama_seeds(const char *dir) {
        const struct {
                const char *name;
                struct dsa_test_tiny_llama o;
        } direct[] = {
                { "llama-f16.gguf", { .wtype = DSA_TYPE_F16 } },
                { "llama-f16-untied.gguf", { .wtype = DSA_TYPE_F16, .untied = true } },
                { "llama-local.gguf", { .wtype = DSA_TYPE_F16, .att = DSA_ATT_LOCAL } },
                { "llama-fixed.gguf", { .wtype = DSA_TYPE_F16, .att = DSA_ATT_FIXED } },
                { "llama-linear.gguf", { .wtype = DSA_TYPE_F16, .att = DSA_ATT_LINEAR } },
                { "llama-dsa.gguf", { .wtype = DSA_TYPE_F16, .att = DSA_ATT_DSA } },
                { "llama-dsa-heuristic.gguf", { .wtype = DSA_TYPE_F16, .att = DSA_ATT_DSA, .heuristic = true } },
                { "llama-dsa-token.gguf", { .att = DSA_ATT_DSA, .token = true, .summary = true } },
                { "llama-local-summary.gguf", { .att = DSA_ATT_LOCAL, .summary = true } },
                { "llama-int8-untied.gguf", { .wtype = DSA_TYPE_I8, .untied = true, .att = DSA_ATT_DSA, .token = true } },
        };
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        char p[4096];
        int r;

        for (size_t i = 0; i < ELEMENTSOF(direct); i++) {
                r = dsa_test_tiny_llama_write(&direct[i].o, path(dir, "model", direct[i].name));
                if (r < 0) {
                        fprintf(stderr, "gen-seeds: cannot write seed %s\n", direct[i].name);
                        return r;
                }
        }
        snprintf(p, sizeof(p), "%s", path(dir, "model", "llama-dsa.gguf"));
        if ((r = dsa_model_open(p, &m)) < 0 ||
            (r = dsa_model_save_variant(m, path(dir, "model", "llama-saved.gguf"))) < 0) {
                fprintf(stderr, "gen-seeds: cannot make seed llama-saved.gguf\n");
                return r;
        }
        return 0;
}

/* The checkpoint fuzzer's seeds (fuzz-checkpoint.c resumes them into a trainer of the F32 tiny
 * BERT): checkpoints of that model after two training steps (moments, step count and dropout
 * state all set), without and with QAT (its ranges; the fuzzer's trainer refuses that one until
 * a mutation clears the flag), and the plain model file, which is no checkpoint. */
static int checkpoint_seeds(const char *dir) {
        static const int32_t ids[] = { 2, 5, 7, 3, 2, 14, 3, 0 }, labels[] = { 0, 1 };
        static const uint8_t mask[] = { 1, 1, 1, 1, 1, 1, 1, 0 };
        const struct dsa_batch b = { .B = 2, .T = 4, .ids = ids, .mask = mask };
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        char p[4096];
        int r;

        snprintf(p, sizeof(p), "%s", path(dir, "model", "f32.gguf"));
        if ((r = dsa_model_open(p, &m)) < 0 ||
            (r = dsa_model_save(m, path(dir, "checkpoint", "plain.gguf"), DSA_TYPE_F32)) < 0)
                return r;
        for (int qat = 0; qat < 2; qat++) {
                _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
                struct dsa_train_opts o;

                dsa_train_opts_default(&o);
                o.threads = 1;
                o.total_steps = 10;
                o.qat = qat;
                if ((r = dsa_trainer_new(m, &o, &t)) < 0)
                        return r;
                for (int step = 0; step < 2 && r >= 0; step++)
                        if ((r = dsa_trainer_forward(t, &b, labels, true, NULL, NULL)) >= 0 &&
                            (r = dsa_trainer_backward(t, NULL)) >= 0)
                                r = dsa_trainer_step(t, NULL, NULL);
                if (r >= 0)
                        r = dsa_trainer_save_checkpoint(t, path(dir, "checkpoint", qat ? "qat.gguf" : "fp32.gguf"));
                if (r < 0) {
                        fprintf(stderr, "gen-seeds: cannot make a%s checkpoint\n", qat ? " QAT" : "");
                        return r;
                }
        }
        return 0;
}

/* Byte-level BPE tokenizer.json files, Llama 3's pipeline (Split + ByteLevel, BOS template,
 * [a, b] merges) and GPT-2's (ByteLevel with its regex, "a b" merges), over a few tokens. */
#define BPE_VOCAB                                                                                   \
        "\"vocab\":{\"<|begin_of_text|>\":0,\"<|end_of_text|>\":1,\"h\":2,\"e\":3,\"l\":4,\"o\":5,"   \
        "\"\xc4\xa0\":6,\"w\":7,\"r\":8,\"d\":9,\"he\":10,\"ll\":11,\"llo\":12,\"\xc4\xa0w\":13,"     \
        "\"or\":14,\"\xc4\xa0wor\":15,\"ld\":16,\"\xc4\xa0world\":17,\"\xc3\x83\":18,\"\xc2\xa9\":19," \
        "\"\xc3\x83\xc2\xa9\":20,\"1\":21,\"2\":22,\"\xc4\x8a\":23}"
#define BPE_ADDED                                                                                   \
        "\"added_tokens\":[{\"id\":0,\"content\":\"<|begin_of_text|>\",\"single_word\":false,"          \
        "\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},{\"id\":1,"           \
        "\"content\":\"<|end_of_text|>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"      \
        "\"normalized\":false,\"special\":true}]"
static const char bpe_llama3_json[] =
        "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null," BPE_ADDED ",\"normalizer\":null,"
        "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
        "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*"
        "|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},"
        "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]},"
        "\"post_processor\":{\"type\":\"Sequence\",\"processors\":[{\"type\":\"ByteLevel\",\"add_prefix_space\":true,"
        "\"trim_offsets\":false,\"use_regex\":true},{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":"
        "{\"id\":\"<|begin_of_text|>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":["
        "{\"SpecialToken\":{\"id\":\"<|begin_of_text|>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},"
        "{\"SpecialToken\":{\"id\":\"<|begin_of_text|>\",\"type_id\":1}},{\"Sequence\":{\"id\":\"B\",\"type_id\":1}}],"
        "\"special_tokens\":{\"<|begin_of_text|>\":{\"id\":\"<|begin_of_text|>\",\"ids\":[0],\"tokens\":[\"<|begin_of_text|>\"]}}}]},"
        "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
        "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
        "\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":true," BPE_VOCAB ","
        "\"merges\":[[\"h\",\"e\"],[\"l\",\"l\"],[\"ll\",\"o\"],[\"\xc4\xa0\",\"w\"],[\"o\",\"r\"],[\"\xc4\xa0w\",\"or\"],"
        "[\"l\",\"d\"],[\"\xc4\xa0wor\",\"ld\"],[\"\xc3\x83\",\"\xc2\xa9\"]]}}";
static const char bpe_gpt2_json[] =
        "{\"version\":\"1.0\"," BPE_ADDED ",\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\","
        "\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},\"post_processor\":{\"type\":\"ByteLevel\","
        "\"add_prefix_space\":true,\"trim_offsets\":false,\"use_regex\":true},\"decoder\":{\"type\":\"ByteLevel\"},"
        "\"model\":{\"type\":\"BPE\",\"unk_token\":null," BPE_VOCAB ",\"merges\":[\"h e\",\"l l\",\"ll o\","
        "\"\xc4\xa0 w\",\"o r\",\"\xc4\xa0w or\",\"l d\",\"\xc4\xa0wor ld\",\"\xc3\x83 \xc2\xa9\"]}}";

/* The Llama 3 one again as GGUF, the way dsa_tokenizer_to_gguf() writes it. */
static int gguf_bpe(const char *p) {
        struct dsa_tokenizer *t = NULL;
        struct dsa_gguf_writer *w;
        int r = dsa_tokenizer_from_hf_json(bpe_llama3_json, sizeof(bpe_llama3_json) - 1, &t);

        if (r < 0)
                return r;
        w = dsa_gguf_writer_new();
        r = w ? dsa_tokenizer_to_gguf(t, w) : -ENOMEM;
        if (r >= 0)
                r = dsa_gguf_writer_write(w, p);
        dsa_gguf_writer_free(w);
        dsa_tokenizer_free(t);
        return r;
}

int main(int argc, char **argv) {
        const char *dir;
        int r;

        if (argc != 2) {
                fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
                return 2;
        }
        dir = argv[1];
        mkdir(dir, 0755);
        snprintf(path_buf, sizeof(path_buf), "%s/gguf", dir);
        mkdir(path_buf, 0755);
        snprintf(path_buf, sizeof(path_buf), "%s/safetensors", dir);
        mkdir(path_buf, 0755);
        snprintf(path_buf, sizeof(path_buf), "%s/tokenizer-json", dir);
        mkdir(path_buf, 0755);
        snprintf(path_buf, sizeof(path_buf), "%s/hf-config", dir);
        mkdir(path_buf, 0755);
        snprintf(path_buf, sizeof(path_buf), "%s/request", dir);
        mkdir(path_buf, 0755);
        snprintf(path_buf, sizeof(path_buf), "%s/model", dir);
        mkdir(path_buf, 0755);
        snprintf(path_buf, sizeof(path_buf), "%s/checkpoint", dir);
        mkdir(path_buf, 0755);

        r = gguf_model(path(dir, "gguf", "model.gguf"));
        if (r >= 0)
                r = gguf_vocab(path(dir, "gguf", "vocab.gguf"));
        if (r >= 0)
                r = gguf_bpe(path(dir, "gguf", "vocab-bpe.gguf"));
        if (r >= 0)
                r = write_raw(path(dir, "gguf", "empty-v2.gguf"),
                              "GGUF\2\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 24);
        if (r >= 0)
                r = st_write(path(dir, "safetensors", "model.safetensors"),
                             "{\"__metadata__\":{\"format\":\"pt\"},"
                             "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                             "\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                             "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2,2],\"data_offsets\":[32,40]},"
                             "\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[40,48]},"
                             "\"j\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[48,56]},"
                             "\"k\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[56,60]},"
                             "\"l\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[60,62]},"
                             "\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[64,72]}}   ",
                             72);
        if (r >= 0)
                r = st_write(path(dir, "safetensors", "scalar.safetensors"),
                             "{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4);
        if (r >= 0)
                r = st_write(path(dir, "safetensors", "empty.safetensors"), "{}", 0);
        if (r >= 0) {
                /* A minimal BERT tokenizer.json, as transformers writes one. */
                static const char tok_json[] = "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[{\"id\":0,\"content\":\"[PAD]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},{\"id\":1,\"content\":\"[UNK]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},{\"id\":2,\"content\":\"[CLS]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},{\"id\":3,\"content\":\"[SEP]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},{\"id\":4,\"content\":\"[MASK]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],\"normalizer\":{\"type\":\"BertNormalizer\",\"clean_text\":true,\"handle_chinese_chars\":true,\"strip_accents\":null,\"lowercase\":true},\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"[CLS]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":0}}],\"pair\":[{\"SpecialToken\":{\"id\":\"[CLS]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"B\",\"type_id\":1}},{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":1}}],\"special_tokens\":{\"[CLS]\":{\"id\":\"[CLS]\",\"ids\":[2],\"tokens\":[\"[CLS]\"]},\"[SEP]\":{\"id\":\"[SEP]\",\"ids\":[3],\"tokens\":[\"[SEP]\"]}}},\"decoder\":{\"type\":\"WordPiece\",\"prefix\":\"##\",\"cleanup\":true},\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\",\"max_input_chars_per_word\":100,\"vocab\":{\"[PAD]\":0,\"[UNK]\":1,\"[CLS]\":2,\"[SEP]\":3,\"[MASK]\":4,\"hello\":5,\"world\":6,\"##s\":7,\"run\":8,\",\":9,\"!\":10,\"un\":11,\"##aff\":12,\"##able\":13}}}";
                r = write_raw(path(dir, "tokenizer-json", "tokenizer.json"), tok_json, sizeof(tok_json) - 1);
        }
        if (r >= 0)
                r = write_raw(path(dir, "tokenizer-json", "bpe-llama3.json"), bpe_llama3_json,
                              sizeof(bpe_llama3_json) - 1);
        if (r >= 0)
                r = write_raw(path(dir, "tokenizer-json", "bpe-gpt2.json"), bpe_gpt2_json, sizeof(bpe_gpt2_json) - 1);
        if (r >= 0) {
                /* A BERT sequence classifier's config.json, as transformers writes one (the
                 * shape of bert-tiny's), with the null and float fields a parser meets. */
                static const char config_json[] =
                        "{\n"
                        "  \"add_cross_attention\": false,\n"
                        "  \"architectures\": [\n"
                        "    \"BertForSequenceClassification\"\n"
                        "  ],\n"
                        "  \"attention_probs_dropout_prob\": 0.1,\n"
                        "  \"bos_token_id\": null,\n"
                        "  \"classifier_dropout\": null,\n"
                        "  \"dtype\": \"float32\",\n"
                        "  \"eos_token_id\": null,\n"
                        "  \"hidden_act\": \"gelu\",\n"
                        "  \"hidden_dropout_prob\": 0.1,\n"
                        "  \"hidden_size\": 64,\n"
                        "  \"id2label\": {\"0\": \"negative\", \"1\": \"positive\"},\n"
                        "  \"initializer_range\": 0.02,\n"
                        "  \"intermediate_size\": 256,\n"
                        "  \"is_decoder\": false,\n"
                        "  \"layer_norm_eps\": 1e-12,\n"
                        "  \"max_position_embeddings\": 512,\n"
                        "  \"model_type\": \"bert\",\n"
                        "  \"num_attention_heads\": 4,\n"
                        "  \"num_hidden_layers\": 2,\n"
                        "  \"pad_token_id\": 0,\n"
                        "  \"position_embedding_type\": \"absolute\",\n"
                        "  \"tie_word_embeddings\": true,\n"
                        "  \"transformers_version\": \"5.17.0\",\n"
                        "  \"type_vocab_size\": 2,\n"
                        "  \"use_cache\": true,\n"
                        "  \"vocab_size\": 3000\n"
                        "}\n";
                r = write_raw(path(dir, "hf-config", "config.json"), config_json, sizeof(config_json) - 1);
        }
        if (r >= 0) {
                static const char *const two[] = { "a great movie", "caf\xc3\xa9, \xe2\x82\xac" "5 \xf0\x9f\x98\x80" };
                static const char *const one[] = { "" };
                r = request(path(dir, "request", "classify.bin"), DSA_RING_OP_CLASSIFY, 0, 0, two, 2);
                if (r >= 0)
                        r = request(path(dir, "request", "embed-mean.bin"), DSA_RING_OP_EMBED, 0,
                                    DSA_RING_POOL_MEAN, two, 2);
                if (r >= 0)
                        r = request(path(dir, "request", "embed-none.bin"), DSA_RING_OP_EMBED, 0,
                                    DSA_RING_POOL_NONE, two, 2);
                if (r >= 0)
                        r = request(path(dir, "request", "tokenize-no-special.bin"), DSA_RING_OP_TOKENIZE,
                                    DSA_RING_SQE_NO_SPECIAL, 0, one, 1);
                if (r >= 0)
                        r = request(path(dir, "request", "nop.bin"), DSA_RING_OP_NOP, 0, 0, NULL, 0);
        }
        if (r >= 0)
                r = model_seeds(dir);
        if (r >= 0)
                r = llama_seeds(dir);
        if (r >= 0)
                r = checkpoint_seeds(dir);
        if (r < 0) {
                fprintf(stderr, "gen-seeds: %s\n", dsa_error_message(r));
                return 1;
        }
        return 0;
}
