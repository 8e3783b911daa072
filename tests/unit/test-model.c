/* dsa_model_* on a tiny random BERT written here as a Hugging Face folder (config.json, one
 * safetensors file, vocab.txt): batch invariance under padding, the pooling modes, corrupt
 * folders (clear errors, no crash), GGUF round trips and the fp32 -> f16/bf16 converters. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/error.h"
#include "engine/bert.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "kernels/kernels.h"
#include "testutil.h"

/* Sizes chosen to be awkward: 3 heads of 4, intermediate not a multiple of hidden. */
#define C 12
#define NH 3
#define FF 20
#define NL 2
#define NCTX 16
#define NLAB 3

static const char *const vocab[] = {
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "cat", "sat",
        "on",    "mat",   "a",     "dog",   "##s",    "big",   "red",   ".",   ",",   "!",
};
#define V ((int) ELEMENTSOF(vocab))

struct gen {
        int config_hidden;        /* hidden_size written into config.json */
        const char *act;          /* hidden_act */
        const char *pos_type;     /* position_embedding_type or NULL */
        const char *drop;         /* tensor name (HF, without prefix) left out */
        const char *bad_shape;    /* tensor written with one extra row */
        bool prefix;              /* "bert." prefix */
        const char *config;       /* config.json written as is instead of the generated one */
};

struct tensor {
        char name[96];
        size_t rows, cols; /* cols 0: a vector of rows */
        float *data;
};

static struct tensor tensors[64];
static size_t n_tensors;
static char model_dir[64];

static const struct tensor *find(const char *name) {
        for (size_t i = 0; i < n_tensors; i++)
                if (strcmp(tensors[i].name, name) == 0)
                        return &tensors[i];
        return NULL;
}

static void add(struct dsa_test_rng *rng, const struct gen *g, const char *name, size_t rows, size_t cols,
                float lo, float hi) {
        struct tensor *t = &tensors[n_tensors++];
        bool head = strncmp(name, "classifier", 10) == 0;
        snprintf(t->name, sizeof(t->name), "%s%s", g->prefix && !head ? "bert." : "", name);
        if (g->bad_shape && strcmp(g->bad_shape, name) == 0)
                rows++;
        t->rows = rows;
        t->cols = cols;
        size_t n = rows * (cols ? cols : 1);
        t->data = malloc(n * sizeof(float));
        assert_non_null(t->data);
        dsa_test_rng_fill(rng, t->data, n, lo, hi);
        if (g->drop && strcmp(g->drop, name) == 0)
                t->name[0] = 0; /* generated (keeps the RNG stream), not written */
}

static void write_text(const char *dir, const char *name, const char *text) {
        char path[256];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

static void write_safetensors(const char *dir) {
        char path[256], *hdr = NULL;
        size_t hlen = 0, off = 0;
        FILE *h = open_memstream(&hdr, &hlen);

        fputc('{', h);
        for (size_t i = 0, first = 1; i < n_tensors; i++) {
                struct tensor *t = &tensors[i];
                size_t n = t->rows * (t->cols ? t->cols : 1) * sizeof(float);
                if (!t->name[0])
                        continue;
                if (t->cols)
                        fprintf(h, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu,%zu],\"data_offsets\":[%zu,%zu]}",
                                first ? "" : ",", t->name, t->rows, t->cols, off, off + n);
                else
                        fprintf(h, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}",
                                first ? "" : ",", t->name, t->rows, off, off + n);
                off += n;
                first = 0;
        }
        fputc('}', h);
        while ((ftell(h) % 8) != 0)
                fputc(' ', h);
        fclose(h);

        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        uint64_t n8 = hlen;
        fwrite(&n8, 8, 1, f);
        fwrite(hdr, 1, hlen, f);
        for (size_t i = 0; i < n_tensors; i++)
                if (tensors[i].name[0])
                        fwrite(tensors[i].data, sizeof(float), tensors[i].rows * (tensors[i].cols ? tensors[i].cols : 1),
                               f);
        fclose(f);
        free(hdr);
}

static void clear_tensors(void) {
        for (size_t i = 0; i < n_tensors; i++)
                free(tensors[i].data);
        n_tensors = 0;
}

/* Writes a model folder into dir. */
static void generate(const char *dir, const struct gen *g) {
        struct dsa_test_rng rng = { 1234 };
        char name[96], cfg[1024];

        clear_tensors();
        add(&rng, g, "embeddings.word_embeddings.weight", V, C, -1, 1);
        add(&rng, g, "embeddings.position_embeddings.weight", NCTX, C, -1, 1);
        add(&rng, g, "embeddings.token_type_embeddings.weight", 2, C, -1, 1);
        add(&rng, g, "embeddings.LayerNorm.weight", C, 0, 0.8f, 1.2f);
        add(&rng, g, "embeddings.LayerNorm.bias", C, 0, -0.1f, 0.1f);
        for (int l = 0; l < NL; l++) {
                static const struct {
                        const char *n;
                        int rows, cols;
                } lin[] = {
                        { "attention.self.query", C, C },   { "attention.self.key", C, C },
                        { "attention.self.value", C, C },   { "attention.output.dense", C, C },
                        { "intermediate.dense", FF, C },    { "output.dense", C, FF },
                };
                for (size_t j = 0; j < ELEMENTSOF(lin); j++) {
                        snprintf(name, sizeof(name), "encoder.layer.%d.%s.weight", l, lin[j].n);
                        add(&rng, g, name, lin[j].rows, lin[j].cols, -0.5f, 0.5f);
                        snprintf(name, sizeof(name), "encoder.layer.%d.%s.bias", l, lin[j].n);
                        add(&rng, g, name, lin[j].rows, 0, -0.1f, 0.1f);
                }
                snprintf(name, sizeof(name), "encoder.layer.%d.attention.output.LayerNorm.weight", l);
                add(&rng, g, name, C, 0, 0.8f, 1.2f);
                snprintf(name, sizeof(name), "encoder.layer.%d.attention.output.LayerNorm.bias", l);
                add(&rng, g, name, C, 0, -0.1f, 0.1f);
                snprintf(name, sizeof(name), "encoder.layer.%d.output.LayerNorm.weight", l);
                add(&rng, g, name, C, 0, 0.8f, 1.2f);
                snprintf(name, sizeof(name), "encoder.layer.%d.output.LayerNorm.bias", l);
                add(&rng, g, name, C, 0, -0.1f, 0.1f);
        }
        add(&rng, g, "pooler.dense.weight", C, C, -0.5f, 0.5f);
        add(&rng, g, "pooler.dense.bias", C, 0, -0.1f, 0.1f);
        add(&rng, g, "classifier.weight", NLAB, C, -0.5f, 0.5f);
        add(&rng, g, "classifier.bias", NLAB, 0, -0.1f, 0.1f);
        write_safetensors(dir);

        snprintf(cfg, sizeof(cfg),
                 "{\"architectures\":[\"BertForSequenceClassification\"],\"model_type\":\"bert\","
                 "\"hidden_size\":%d,\"num_attention_heads\":%d,\"num_hidden_layers\":%d,"
                 "\"intermediate_size\":%d,\"max_position_embeddings\":%d,\"type_vocab_size\":2,"
                 "\"vocab_size\":%d,\"layer_norm_eps\":1e-12,\"hidden_act\":\"%s\"%s%s%s,"
                 "\"id2label\":{\"0\":\"neg\",\"1\":\"neu\",\"2\":\"pos\"}}",
                 g->config_hidden ? g->config_hidden : C, NH, NL, FF, NCTX, V, g->act ? g->act : "gelu",
                 g->pos_type ? ",\"position_embedding_type\":\"" : "", g->pos_type ? g->pos_type : "",
                 g->pos_type ? "\"" : "");
        write_text(dir, "config.json", g->config ? g->config : cfg);
        write_text(dir, "tokenizer_config.json", "{\"do_lower_case\":true,\"strip_accents\":null}");
        char *vt = NULL;
        size_t vlen = 0;
        FILE *f = open_memstream(&vt, &vlen);
        for (int i = 0; i < V; i++)
                fprintf(f, "%s\n", vocab[i]);
        fclose(f);
        write_text(dir, "vocab.txt", vt);
        free(vt);
}

static void remove_dir(const char *dir) {
        static const char *const files[] = { "config.json", "tokenizer_config.json", "vocab.txt",
                                             "model.safetensors", "m.gguf", "m16.gguf", "mbf.gguf" };
        char path[256];
        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
                unlink(path);
        }
        rmdir(dir);
}

static int setup(void **state) {
        strcpy(model_dir, "/tmp/dsa-test-model-XXXXXX");
        if (!mkdtemp(model_dir))
                return -1;
        generate(model_dir, &(struct gen){ .prefix = true });
        return 0;
}

static int teardown(void **state) {
        remove_dir(model_dir);
        clear_tensors();
        return 0;
}

static void test_open(void **state) {
        struct dsa_model *m = dsa_test_model_open(model_dir);
        const struct dsa_bert_config *c = dsa_model_bert_config(m);

        assert_int_equal(c->n_embd, C);
        assert_int_equal(c->n_head, NH);
        assert_int_equal(c->n_ff, FF);
        assert_int_equal(c->n_layer, NL);
        assert_int_equal(c->n_vocab, V);
        assert_int_equal(c->n_labels, NLAB);
        assert_true(c->has_pooler);
        assert_int_equal(c->act, DSA_ACT_GELU_ERF);
        assert_string_equal(dsa_model_label(m, 0), "neg");
        assert_string_equal(dsa_model_label(m, 2), "pos");
        assert_null(dsa_model_label(m, 3));
        assert_non_null(dsa_model_tokenizer(m));
        assert_int_equal(dsa_model_default_pool(m), DSA_POOL_POOLER);
        dsa_model_free(m);
}

static const char *const texts[] = {
        "hello world", "the big red cat sat on the mat .", "a dog", "dogs !", "", "hello , hello world",
};
#define NTEXTS ELEMENTSOF(texts)

/* Each text alone vs all of them in one padded batch: same logits and embeddings. */
static void test_batch_invariance(void **state) {
        struct dsa_model *m = dsa_test_model_open(model_dir);
        float all[NTEXTS * NLAB], one[NLAB], eall[NTEXTS * C], eone[C];

        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, NTEXTS, all), 0);
        for (size_t i = 0; i < NTEXTS; i++) {
                assert_int_equal(dsa_model_classify_texts(m, &texts[i], NULL, 1, one), 0);
                assert_true(dsa_test_check_tensor("logits alone vs batched", one, all + i * NLAB, NLAB, 1e-5f, 0));
        }
        const enum dsa_pool modes[] = { DSA_POOL_CLS, DSA_POOL_MEAN, DSA_POOL_POOLER };
        for (size_t k = 0; k < ELEMENTSOF(modes); k++) {
                assert_int_equal(dsa_model_embed_texts(m, texts, NTEXTS, modes[k], eall), 0);
                for (size_t i = 0; i < NTEXTS; i++) {
                        assert_int_equal(dsa_model_embed_texts(m, &texts[i], 1, modes[k], eone), 0);
                        assert_true(dsa_test_check_tensor("embedding alone vs batched", eone, eall + i * C, C, 1e-5f, 0));
                }
        }
        /* Pairs go through the same path with type ids 1. */
        const char *const a[] = { "hello world", "the cat" }, *const b[] = { "a dog", "sat on the mat" };
        float pl[2 * NLAB], p1[NLAB];
        assert_int_equal(dsa_model_classify_texts(m, a, b, 2, pl), 0);
        assert_int_equal(dsa_model_classify_texts(m, &a[1], &b[1], 1, p1), 0);
        assert_true(dsa_test_check_tensor("pair alone vs batched", p1, pl + NLAB, NLAB, 1e-5f, 0));
        dsa_model_free(m);
}

/* A hand-made padded batch: CLS is row 0, MEAN ignores padding (whatever the padded ids are),
 * POOLER is tanh(W h[CLS] + b) with the weights we wrote. */
static void test_pooling(void **state) {
        struct dsa_model *m = dsa_test_model_open(model_dir);
        enum { B = 2, T = 6 };
        int32_t ids[B * T] = { 2, 5, 6, 3, 0, 0, 2, 7, 8, 9, 11, 3 };
        uint8_t mask[B * T] = { 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1 };
        struct dsa_batch b = { .B = B, .T = T, .ids = ids, .mask = mask };
        float hidden[B * T * C], hidden2[B * T * C], out[B * C], out2[B * C], want[B * C];

        assert_int_equal(dsa_model_forward(m, &b, hidden, NULL), 0);

        assert_int_equal(dsa_model_pool(m, &b, hidden, DSA_POOL_CLS, out), 0);
        assert_memory_equal(out, hidden, C * sizeof(float));
        assert_memory_equal(out + C, hidden + T * C, C * sizeof(float));

        assert_int_equal(dsa_model_pool(m, &b, hidden, DSA_POOL_MEAN, out), 0);
        for (int i = 0; i < B; i++)
                for (int c = 0; c < C; c++) {
                        double s = 0;
                        int n = 0;
                        for (int t = 0; t < T; t++)
                                if (mask[i * T + t])
                                        s += hidden[(i * T + t) * C + c], n++;
                        want[i * C + c] = (float) (s / n);
                }
        assert_true(dsa_test_check_tensor("mean pooling", out, want, B * C, 1e-6f, 0));
        ids[4] = 17, ids[5] = 13; /* other padding ids: real tokens and their mean do not move */
        assert_int_equal(dsa_model_forward(m, &b, hidden2, NULL), 0);
        assert_int_equal(dsa_model_pool(m, &b, hidden2, DSA_POOL_MEAN, out2), 0);
        assert_true(dsa_test_check_tensor("mean pooling vs padding ids", out2, out, B * C, 1e-6f, 0));

        const struct tensor *w = find("bert.pooler.dense.weight"), *bias = find("bert.pooler.dense.bias");
        assert_non_null(w);
        for (int i = 0; i < B; i++)
                for (int o = 0; o < C; o++) {
                        double s = bias->data[o];
                        for (int c = 0; c < C; c++)
                                s += (double) w->data[o * C + c] * hidden[i * T * C + c];
                        want[i * C + o] = (float) tanh(s);
                }
        assert_int_equal(dsa_model_pool(m, &b, hidden, DSA_POOL_POOLER, out), 0);
        assert_true(dsa_test_check_tensor("pooler", out, want, B * C, 1e-5f, 0));
        assert_int_equal(dsa_model_pool(m, &b, hidden, DSA_POOL_NONE, out), -EINVAL);

        /* Bad batches are errors, not out-of-bounds reads. */
        ids[3] = V;
        assert_int_equal(dsa_model_forward(m, &b, hidden, NULL), -EINVAL);
        ids[3] = -1;
        assert_int_equal(dsa_model_forward(m, &b, hidden, NULL), -EINVAL);
        ids[3] = 3;
        int32_t types[B * T] = { 0 };
        types[2] = 2;
        b.type_ids = types;
        assert_int_equal(dsa_model_forward(m, &b, hidden, NULL), -EINVAL);
        struct dsa_batch longb = { .B = 1, .T = NCTX + 1, .ids = ids };
        assert_int_equal(dsa_model_forward(m, &longb, hidden, NULL), -EINVAL);
        dsa_model_free(m);
}

/* Text longer than the context is truncated by the texts helpers, not rejected. */
static void test_truncation(void **state) {
        struct dsa_model *m = dsa_test_model_open(model_dir);
        char text[1024] = "";
        for (int i = 0; i < 40; i++)
                strcat(text, "hello world ");
        const char *t[] = { text };
        float logits[NLAB];
        assert_int_equal(dsa_model_classify_texts(m, t, NULL, 1, logits), 0);
        dsa_model_free(m);
}

static void expect_open_error(const struct gen *g, int want, const char *needle) {
        char dir[64] = "/tmp/dsa-test-bad-XXXXXX";
        struct dsa_model *m = NULL;

        assert_non_null(mkdtemp(dir));
        generate(dir, g);
        dsa_error_clear();
        int r = dsa_model_open(dir, &m);
        const char *msg = dsa_error_message(r);
        fprintf(stderr, "  expected failure: %d %s\n", r, msg);
        assert_int_equal(r, want);
        assert_null(m);
        if (needle)
                assert_non_null(strstr(msg, needle));
        remove_dir(dir);
        generate(model_dir, &(struct gen){ .prefix = true }); /* restore tensors[] for other tests */
}

static void test_corrupt(void **state) {
        expect_open_error(&(struct gen){ .prefix = true, .config_hidden = 13 }, -EBADMSG, "multiple");
        expect_open_error(&(struct gen){ .prefix = true, .config_hidden = 15 }, -EBADMSG,
                          "embeddings.word_embeddings.weight");
        expect_open_error(&(struct gen){ .prefix = true, .bad_shape = "encoder.layer.1.intermediate.dense.weight" },
                          -EBADMSG, "encoder.layer.1.intermediate.dense.weight");
        expect_open_error(&(struct gen){ .prefix = true, .bad_shape = "classifier.bias" }, -EBADMSG,
                          "classifier.bias");
        expect_open_error(&(struct gen){ .prefix = true, .drop = "encoder.layer.0.attention.self.key.bias" }, -ENOENT,
                          "encoder.layer.0.attention.self.key.bias");
        expect_open_error(&(struct gen){ .prefix = true, .drop = "classifier.weight" }, -ENOENT, "classifier");
        expect_open_error(&(struct gen){ .prefix = true, .act = "relu" }, -EOPNOTSUPP, "relu");
        expect_open_error(&(struct gen){ .prefix = true, .pos_type = "relative_key" }, -EOPNOTSUPP, "relative_key");

        struct dsa_model *m = NULL;
        assert_true(dsa_model_open("/nonexistent/model", &m) < 0);
        assert_null(m);

        /* Without the prefix and with the token types left out: loads (zeros for types). */
        char dir[64] = "/tmp/dsa-test-np-XXXXXX";
        assert_non_null(mkdtemp(dir));
        generate(dir, &(struct gen){ .prefix = false, .drop = "embeddings.token_type_embeddings.weight" });
        m = dsa_test_model_open(dir);
        dsa_model_free(m);
        remove_dir(dir);
        generate(model_dir, &(struct gen){ .prefix = true });
}

/* The valid config.json of the generated model with one field replaced: key is the JSON text
 * of the field as generated, with_ its replacement ("" drops it). */
static const char *config_with(const char *key, const char *with_) {
        static char buf[1024];
        char base[1024];
        const char *at;

        snprintf(base, sizeof(base),
                 "{\"architectures\":[\"BertForSequenceClassification\"],\"model_type\":\"bert\","
                 "\"hidden_size\":%d,\"num_attention_heads\":%d,\"num_hidden_layers\":%d,"
                 "\"intermediate_size\":%d,\"max_position_embeddings\":%d,\"type_vocab_size\":2,"
                 "\"vocab_size\":%d,\"layer_norm_eps\":1e-12,\"hidden_act\":\"gelu\"}",
                 C, NH, NL, FF, NCTX, V);
        at = strstr(base, key);
        assert_non_null(at);
        snprintf(buf, sizeof(buf), "%.*s%s%s", (int) (at - base), base, with_, at + strlen(key));
        return buf;
}

/* A config.json that lies is refused with a reason that names the field, before anything is
 * allocated for the sizes it claims: through dsa__hf_parse_config() and the loader's own check,
 * as dsa_model_open() runs them. */
static void expect_config_error(const char *json, int want, const char *needle) {
        struct dsa_bert_config c;
        bool head;
        int r;

        dsa_error_clear();
        r = dsa__hf_parse_config(json, strlen(json), "config.json", &c, &head, NULL);
        if (r == 0)
                r = dsa__bert_config_check(&c);
        fprintf(stderr, "  expected failure: %d %s\n", r, dsa_error_message(r));
        assert_int_equal(r, want);
        assert_non_null(strstr(dsa_error_message(r), needle));
}

static void test_config_corrupt(void **state) {
        struct dsa_bert_config c;
        bool head = false;
        const char *ok = config_with("\"hidden_act\"", "\"hidden_act\"");

        assert_int_equal(dsa__hf_parse_config(ok, strlen(ok), "config.json", &c, &head, NULL), 0);
        assert_int_equal(dsa__bert_config_check(&c), 0);
        assert_true(head);
        assert_int_equal(c.n_embd, C);
        assert_int_equal(c.n_layer, NL);

        /* Wrong types. */
        expect_config_error(config_with("\"hidden_size\":12", "\"hidden_size\":\"12\""), -EBADMSG,
                            "'hidden_size' is not an integer");
        expect_config_error(config_with("\"num_hidden_layers\":2", "\"num_hidden_layers\":1e9"), -EBADMSG,
                            "'num_hidden_layers' is not an integer");
        expect_config_error(config_with("\"vocab_size\":20", "\"vocab_size\":[20]"), -EBADMSG,
                            "'vocab_size' is not an integer");
        expect_config_error(config_with("\"layer_norm_eps\":1e-12", "\"layer_norm_eps\":\"tiny\""),
                            -EBADMSG, "'layer_norm_eps' is not a number");
        expect_config_error("[1,2]", -EBADMSG, "not a JSON object");
        expect_config_error("{\"model_type\":", -EBADMSG, "not valid JSON");
        /* Missing, negative, zero and huge sizes. */
        expect_config_error(config_with("\"vocab_size\":20,", ""), -EBADMSG, "no 'vocab_size'");
        expect_config_error(config_with("\"num_attention_heads\":3", "\"num_attention_heads\":-3"), -EBADMSG,
                            "'num_attention_heads' = -3 is out of range");
        expect_config_error(config_with("\"intermediate_size\":20", "\"intermediate_size\":0"), -EBADMSG,
                            "'intermediate_size' = 0 is out of range");
        expect_config_error(config_with("\"max_position_embeddings\":16",
                                        "\"max_position_embeddings\":4294967296"),
                            -EBADMSG, "out of range");
        expect_config_error(config_with("\"num_hidden_layers\":2", "\"num_hidden_layers\":1000000000"),
                            -EBADMSG, "implausibly large");
        expect_config_error(config_with("\"vocab_size\":20", "\"vocab_size\":4294967295"), -EBADMSG,
                            "implausibly large");
        /* Values the architecture cannot have. */
        expect_config_error(config_with("\"hidden_size\":12", "\"hidden_size\":13"), -EBADMSG,
                            "not a multiple of the head count");
        expect_config_error(config_with("\"layer_norm_eps\":1e-12", "\"layer_norm_eps\":-1"), -EBADMSG,
                            "layer_norm_eps");
        expect_config_error(config_with("\"model_type\":\"bert\"", "\"model_type\":\"roberta\""),
                            -EOPNOTSUPP, "roberta");

        /* The same lies in a real folder: dsa_model_open() fails the same way, and a claimed
         * billion layers is refused by the check, before the weights are sized. */
        expect_open_error(&(struct gen){ .prefix = true,
                                         .config = config_with("\"num_hidden_layers\":2",
                                                               "\"num_hidden_layers\":1000000000") },
                          -EBADMSG, "implausibly large");
        expect_open_error(&(struct gen){ .prefix = true,
                                         .config = config_with("\"num_hidden_layers\":2",
                                                               "\"num_hidden_layers\":1e9") },
                          -EBADMSG, "'num_hidden_layers' is not an integer");
        expect_open_error(&(struct gen){ .prefix = true,
                                         .config = config_with("\"hidden_size\":12", "\"hidden_size\":-12") },
                          -EBADMSG, "'hidden_size' = -12 is out of range");
}

static void test_gguf_roundtrip(void **state) {
        struct dsa_model *m = dsa_test_model_open(model_dir), *g = NULL;
        char path[128], p16[128], pbf[128];
        float a[NTEXTS * NLAB], b[NTEXTS * NLAB], ea[NTEXTS * C], eb[NTEXTS * C];

        snprintf(path, sizeof(path), "%s/m.gguf", model_dir);
        snprintf(p16, sizeof(p16), "%s/m16.gguf", model_dir);
        snprintf(pbf, sizeof(pbf), "%s/mbf.gguf", model_dir);
        dsa_error_clear();
        int r = dsa_model_save(m, path, DSA_TYPE_F32);
        if (r < 0)
                fprintf(stderr, "save: %s\n", dsa_error_message(r));
        assert_int_equal(r, 0);
        g = dsa_test_model_open(path);
        assert_memory_equal(dsa_model_bert_config(g), dsa_model_bert_config(m), sizeof(struct dsa_bert_config));
        assert_string_equal(dsa_model_label(g, 1), "neu");
        assert_string_equal(dsa_model_source(g), model_dir);
        assert_int_equal(dsa_model_default_pool(g), DSA_POOL_POOLER);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, NTEXTS, a), 0);
        assert_int_equal(dsa_model_classify_texts(g, texts, NULL, NTEXTS, b), 0);
        assert_memory_equal(a, b, sizeof(a));
        assert_int_equal(dsa_model_embed_texts(m, texts, NTEXTS, DSA_POOL_MEAN, ea), 0);
        assert_int_equal(dsa_model_embed_texts(g, texts, NTEXTS, DSA_POOL_MEAN, eb), 0);
        assert_memory_equal(ea, eb, sizeof(ea));
        dsa_model_free(g);

        assert_int_equal(dsa_model_save(m, p16, DSA_TYPE_F16), 0);
        g = dsa_test_model_open(p16);
        assert_int_equal(dsa_model_classify_texts(g, texts, NULL, NTEXTS, b), 0);
        assert_true(dsa_test_check_tensor("f16 logits", b, a, NTEXTS * NLAB, 1e-2f, 0));
        dsa_model_free(g);

        assert_int_equal(dsa_model_save(m, pbf, DSA_TYPE_BF16), 0);
        g = dsa_test_model_open(pbf);
        assert_int_equal(dsa_model_classify_texts(g, texts, NULL, NTEXTS, b), 0);
        assert_true(dsa_test_check_tensor("bf16 logits", b, a, NTEXTS * NLAB, 5e-2f, 0));
        dsa_model_free(g);

        assert_int_equal(dsa_model_save(m, path, DSA_TYPE_Q8_0), -EOPNOTSUPP);
        dsa_model_free(m);
}

/* HF name (without "bert.") -> llama.cpp name, for writing a GGUF the way llama.cpp's converter
 * does: no token_types, no dsa.* keys, no tokenizer. */
static bool llama_name(const char *hf, char *out, size_t n) {
        static const char *const map[][2] = {
                { "embeddings.word_embeddings.", "token_embd." },
                { "embeddings.position_embeddings.", "position_embd." },
                { "embeddings.token_type_embeddings.", "token_types." },
                { "embeddings.LayerNorm.", "token_embd_norm." },
                { "pooler.dense.", "cls." },
                { "classifier.", "cls.output." },
                { "attention.self.query.", "attn_q." },
                { "attention.self.key.", "attn_k." },
                { "attention.self.value.", "attn_v." },
                { "attention.output.dense.", "attn_output." },
                { "attention.output.LayerNorm.", "attn_output_norm." },
                { "intermediate.dense.", "ffn_up." },
                { "output.dense.", "ffn_down." },
                { "output.LayerNorm.", "layer_output_norm." },
        };
        int layer = -1, k = 0;
        if (strncmp(hf, "bert.", 5) == 0)
                hf += 5;
        if (sscanf(hf, "encoder.layer.%d.%n", &layer, &k) == 1)
                hf += k;
        for (size_t i = 0; i < ELEMENTSOF(map); i++) {
                size_t p = strlen(map[i][0]);
                if (strncmp(hf, map[i][0], p) == 0) {
                        if (layer >= 0)
                                snprintf(out, n, "blk.%d.%s%s", layer, map[i][1], hf + p);
                        else
                                snprintf(out, n, "%s%s", map[i][1], hf + p);
                        return true;
                }
        }
        return false;
}

static int write_llama_gguf(const char *path, const char *arch, const char *skip) {
        struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        char name[128];
        assert_non_null(w);
        assert_int_equal(dsa_gguf_writer_set_str(w, "general.architecture", arch), 0);
        assert_int_equal(dsa_gguf_writer_set_u32(w, "bert.context_length", NCTX), 0);
        assert_int_equal(dsa_gguf_writer_set_u32(w, "bert.embedding_length", C), 0);
        assert_int_equal(dsa_gguf_writer_set_u32(w, "bert.feed_forward_length", FF), 0);
        assert_int_equal(dsa_gguf_writer_set_u32(w, "bert.block_count", NL), 0);
        assert_int_equal(dsa_gguf_writer_set_u32(w, "bert.attention.head_count", NH), 0);
        assert_int_equal(dsa_gguf_writer_set_f32(w, "bert.attention.layer_norm_epsilon", 1e-12f), 0);
        assert_int_equal(dsa_gguf_writer_set_bool(w, "bert.attention.causal", false), 0);
        assert_int_equal(dsa_gguf_writer_set_u32(w, "bert.pooling_type", 4), 0);
        for (size_t i = 0; i < n_tensors; i++) {
                const struct tensor *t = &tensors[i];
                if (!t->name[0] || !llama_name(t->name, name, sizeof(name)) || (skip && strcmp(skip, name) == 0))
                        continue;
                uint64_t ne[2] = { t->cols ? t->cols : t->rows, t->cols ? t->rows : 1 };
                assert_int_equal(dsa_gguf_writer_add_tensor(w, name, DSA_TYPE_F32, t->cols ? 2 : 1, ne, t->data), 0);
        }
        int r = dsa_gguf_writer_write(w, path);
        dsa_gguf_writer_free(w);
        return r;
}

/* A GGUF as llama.cpp's converter writes it loads: token types absent (zeros), labels default,
 * pooler as cls, classifier as cls.output. Damaged ones fail with a reason. */
static void test_llama_gguf(void **state) {
        char path[128];
        struct dsa_model *hf = dsa_test_model_open(model_dir), *g = NULL;
        int32_t ids[4] = { 2, 5, 6, 3 };
        struct dsa_batch b = { .B = 1, .T = 4, .ids = ids };
        float h1[4 * C], h2[4 * C], l1[NLAB], l2[NLAB];

        snprintf(path, sizeof(path), "%s/m.gguf", model_dir);
        assert_int_equal(write_llama_gguf(path, "bert", "token_types.weight"), 0);
        g = dsa_test_model_open(path);
        assert_int_equal(dsa_model_bert_config(g)->n_labels, NLAB);
        assert_string_equal(dsa_model_label(g, 1), "LABEL_1");
        assert_null(dsa_model_tokenizer(g));
        assert_int_equal(dsa_model_default_pool(g), DSA_POOL_POOLER);
        assert_int_equal(dsa_model_forward(g, &b, h2, NULL), 0);
        assert_int_equal(dsa_model_classify(g, &b, h2, l2), 0);
        const char *t[] = { "hello" };
        assert_int_equal(dsa_model_classify_texts(g, t, NULL, 1, l2), -EOPNOTSUPP);
        dsa_model_free(g);

        /* Same weights with token types: identical to the HF import. */
        assert_int_equal(write_llama_gguf(path, "bert", NULL), 0);
        g = dsa_test_model_open(path);
        assert_int_equal(dsa_model_forward(g, &b, h2, NULL), 0);
        assert_int_equal(dsa_model_forward(hf, &b, h1, NULL), 0);
        assert_memory_equal(h1, h2, sizeof(h1));
        assert_int_equal(dsa_model_classify(g, &b, h2, l2), 0);
        assert_int_equal(dsa_model_classify(hf, &b, h1, l1), 0);
        assert_memory_equal(l1, l2, sizeof(l1));
        dsa_model_free(g);

        struct dsa_model *bad = NULL;
        assert_int_equal(write_llama_gguf(path, "bert", "blk.1.ffn_down.weight"), 0);
        dsa_error_clear();
        assert_int_equal(dsa_model_open(path, &bad), -ENOENT);
        assert_non_null(strstr(dsa_error_message(-ENOENT), "blk.1.ffn_down.weight"));
        /* BERT tensors under another architecture: llama's keys are missing; gpt2 is unknown */
        assert_int_equal(write_llama_gguf(path, "llama", NULL), 0);
        dsa_error_clear();
        assert_int_equal(dsa_model_open(path, &bad), -ENOENT);
        assert_non_null(strstr(dsa_error_message(-ENOENT), "llama.context_length"));
        assert_int_equal(write_llama_gguf(path, "gpt2", NULL), 0);
        assert_int_equal(dsa_model_open(path, &bad), -EOPNOTSUPP);
        assert_null(bad);
        dsa_model_free(hf);
}

struct worker {
        const struct dsa_model *m;
        float logits[NTEXTS * NLAB];
        int r;
};

static void *worker_run(void *p) {
        struct worker *w = p;
        for (int i = 0; i < 20 && w->r == 0; i++)
                w->r = dsa_model_classify_texts(w->m, texts, NULL, NTEXTS, w->logits);
        return NULL;
}

/* Several threads share one model: forward only reads it. */
static void test_threads(void **state) {
        struct dsa_model *m = dsa_test_model_open(model_dir);
        float want[NTEXTS * NLAB];
        struct worker w[4];
        pthread_t th[4];

        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, NTEXTS, want), 0);
        for (int i = 0; i < 4; i++) {
                w[i] = (struct worker){ .m = m };
                assert_int_equal(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
                pthread_join(th[i], NULL);
                assert_int_equal(w[i].r, 0);
                assert_memory_equal(w[i].logits, want, sizeof(want));
        }
        dsa_model_free(m);
}

/* The pool splits work without changing any sum's order: every thread count gives the same bits. */
static void test_set_threads(void **state) {
        struct dsa_model *m = dsa_test_model_open(model_dir);
        float want[NTEXTS * NLAB], got[NTEXTS * NLAB];

        assert_int_equal(dsa_model_set_threads(m, 1), 1);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, NTEXTS, want), 0);
        for (unsigned n = 2; n <= 5; n += 3) {
                assert_int_equal(dsa_model_set_threads(m, n), (int) n);
                assert_int_equal(dsa_model_classify_texts(m, texts, NULL, NTEXTS, got), 0);
                assert_memory_equal(got, want, sizeof(want));
        }
        assert_true(dsa_model_set_threads(m, 0) >= 1);
        assert_int_equal(dsa_model_set_threads(NULL, 1), -EINVAL);
        dsa_model_free(m);
}

static float f16_back(uint16_t h) {
        float f;
        dsa_kernels_for(DSA_ISA_REF)->f16_to_f32(&f, &h, 1);
        return f;
}

static void test_f16_convert(void **state) {
        /* Every half value round-trips exactly (NaNs stay NaN). */
        for (uint32_t h = 0; h < 0x10000; h++) {
                float f = f16_back((uint16_t) h);
                if (isnan(f))
                        assert_true(isnan(f16_back(dsa_f32_to_f16(f))));
                else
                        assert_int_equal(dsa_f32_to_f16(f), h);
        }
        /* Ties go to even; overflow to inf; tiny to zero. */
        assert_int_equal(dsa_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);             /* tie, even down */
        assert_int_equal(dsa_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);         /* tie, even up */
        assert_int_equal(dsa_f32_to_f16(65520.0f), 0x7c00);
        assert_int_equal(dsa_f32_to_f16(65519.0f), 0x7bff);
        assert_int_equal(dsa_f32_to_f16(0x1p-25f), 0x0000);
        assert_int_equal(dsa_f32_to_f16(0x1.1p-25f), 0x0001);
        assert_int_equal(dsa_f32_to_f16(-0x1p-24f * 1.5f), 0x8002);
        assert_int_equal(dsa_f32_to_bf16(1.0f), 0x3f80);
        assert_int_equal(dsa_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
        assert_int_equal(dsa_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
        assert_true(isnan(f16_back(dsa_f32_to_f16(NAN))));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_f16_convert),     cmocka_unit_test(test_open),
                cmocka_unit_test(test_batch_invariance), cmocka_unit_test(test_pooling),
                cmocka_unit_test(test_truncation),       cmocka_unit_test(test_corrupt),
                cmocka_unit_test(test_config_corrupt),
                cmocka_unit_test(test_gguf_roundtrip),  cmocka_unit_test(test_threads),
                cmocka_unit_test(test_set_threads),
                cmocka_unit_test(test_llama_gguf),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
