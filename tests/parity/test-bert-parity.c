/* BERT parity against Hugging Face transformers' own outputs (../shared/fixtures, see its
 * README.md). For every BERT folder under fixtures/hf: every hidden state (N = 0 is the embedding
 * output), every layer's attention probabilities and the logits of the reference batch, the
 * last hidden state of the sentence-pair batch, the tokenizer's padded ids for the same 12
 * texts, and GGUF round trips (F32 bitwise, F16 within a stated tolerance). Then the trained
 * SST-2 teacher on all 872 dev rows: logits and accuracy.
 *
 * Padded positions are compared too: HF computes every query position, masking only padded
 * keys, and so do we, so the reference defines them and they must match. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/error.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "testutil.h"

#define ATOL_HIDDEN 1e-4f
#define ATOL_ATTN 1e-4f
#define ATOL_LOGITS 1e-4f
/* F16 weights (10-bit mantissa) against the fp32 reference, through the whole network. */
#define ATOL_F16_LOGITS 2e-2f
#define ATOL_F16_HIDDEN 1e-2f
#define ATOL_SST2_LOGITS 1e-3f
#define SST2_ACCURACY 0.8383
#define SST2_ACCURACY_TOL 0.001

static const char *shared;

static float *f32_copy(const struct dsa_tensor_view *v, size_t n) {
        assert_int_equal(v->type, DSA_TYPE_F32);
        assert_int_equal(dsa_tensor_nelems(v), n);
        float *x = malloc(n * sizeof(float));
        assert_non_null(x);
        memcpy(x, v->data, n * sizeof(float));
        return x;
}

/* The (B,T) I32 inputs of a reference file. */
struct inputs {
        size_t B, T;
        int32_t *ids, *types;
        uint8_t *mask;
};

static void inputs_load(const struct dsa_safetensors *st, struct inputs *in) {
        const struct dsa_tensor_view *ids = dsa_test_st_need(st, "input_ids");
        const struct dsa_tensor_view *types = dsa_test_st_need(st, "token_type_ids");
        const struct dsa_tensor_view *mask = dsa_test_st_need(st, "attention_mask");
        assert_int_equal(ids->type, DSA_TYPE_I32);
        assert_int_equal(types->type, DSA_TYPE_I32);
        assert_int_equal(mask->type, DSA_TYPE_I32);
        in->T = ids->ne[0];
        in->B = ids->ne[1];
        size_t n = in->B * in->T;
        assert_int_equal(dsa_tensor_nelems(mask), n);
        assert_int_equal(dsa_tensor_nelems(types), n);
        in->ids = malloc(n * sizeof(int32_t));
        in->types = malloc(n * sizeof(int32_t));
        in->mask = malloc(n);
        int32_t *m32 = malloc(n * sizeof(int32_t));
        assert_non_null(m32);
        memcpy(in->ids, ids->data, n * sizeof(int32_t));
        memcpy(in->types, types->data, n * sizeof(int32_t));
        memcpy(m32, mask->data, n * sizeof(int32_t));
        for (size_t i = 0; i < n; i++)
                in->mask[i] = m32[i] != 0;
        free(m32);
}

static void inputs_free(struct inputs *in) {
        free(in->ids);
        free(in->types);
        free(in->mask);
}

/* Everything one forward produces. */
struct outputs {
        size_t L, NH;
        float **hidden; /* L+1 of (B,T,C) */
        float **attn;   /* L of (B,NH,T,T) */
        float *logits;  /* (B,n_labels) or NULL */
};

static void run(const struct dsa_model *m, const struct inputs *in, struct outputs *o) {
        const struct dsa_bert_config *c = dsa_model_bert_config(m);
        const size_t B = in->B, T = in->T, C = c->n_embd;
        struct dsa_batch b = { .B = B, .T = T, .ids = in->ids, .type_ids = in->types, .mask = in->mask };

        o->L = c->n_layer;
        o->NH = c->n_head;
        o->hidden = calloc(o->L + 1, sizeof(float *));
        o->attn = calloc(o->L, sizeof(float *));
        for (size_t l = 0; l <= o->L; l++)
                o->hidden[l] = malloc(B * T * C * sizeof(float));
        for (size_t l = 0; l < o->L; l++)
                o->attn[l] = malloc(B * o->NH * T * T * sizeof(float));
        float *last = malloc(B * T * C * sizeof(float));
        struct dsa_trace tr = { .hidden = o->hidden, .attn = o->attn };
        dsa_error_clear();
        int r = dsa_model_forward(m, &b, last, &tr);
        if (r < 0)
                fprintf(stderr, "forward: %s\n", dsa_error_message(r));
        assert_int_equal(r, 0);
        assert_memory_equal(last, o->hidden[o->L], B * T * C * sizeof(float));
        free(last);
        o->logits = NULL;
        if (c->n_labels > 0) {
                o->logits = malloc(B * c->n_labels * sizeof(float));
                assert_int_equal(dsa_model_classify(m, &b, o->hidden[o->L], o->logits), 0);
        }
}

static void outputs_free(struct outputs *o) {
        for (size_t l = 0; l <= o->L; l++)
                free(o->hidden[l]);
        for (size_t l = 0; l < o->L; l++)
                free(o->attn[l]);
        free(o->hidden);
        free(o->attn);
        free(o->logits);
}

static bool check(const char *fixture, const char *what, const float *got, const struct dsa_tensor_view *want,
                  size_t n, float atol) {
        char name[160];
        float *w = f32_copy(want, n);
        snprintf(name, sizeof(name), "%s %s", fixture, what);
        bool ok = dsa_test_check_tensor(name, got, w, n, atol, 0);
        free(w);
        return ok;
}

/* The first rows of tokenization.jsonl, encoded and padded as the reference batch. */
static void check_tokenization(const char *dir, const struct dsa_model *m, const struct inputs *in) {
        const struct dsa_tokenizer *tok = dsa_model_tokenizer(m);
        char *buf = NULL, *line, *save = NULL;
        size_t len;

        assert_non_null(tok);
        assert_int_equal(dsa_test_read_file(dsa_test_path(dir, "tokenization.jsonl"), &buf, &len), 0);
        line = strtok_r(buf, "\n", &save);
        for (size_t i = 0; i < in->B; i++, line = strtok_r(NULL, "\n", &save)) {
                assert_non_null(line);
                struct json_object *j = json_tokener_parse(line), *text, *ids;
                assert_non_null(j);
                assert_true(json_object_object_get_ex(j, "text", &text));
                assert_true(json_object_object_get_ex(j, "ids", &ids));
                const char *s = json_object_get_string(text);
                struct dsa_encoding e = { 0 };
                assert_int_equal(dsa_tokenizer_encode(tok, s, strlen(s), NULL, 0, DSA_ENCODE_SPECIAL, 0, &e), 0);
                assert_int_equal(e.n, json_object_array_length(ids));
                assert_true(e.n <= in->T);
                for (size_t t = 0; t < in->T; t++) {
                        int32_t want = in->ids[i * in->T + t];
                        int32_t got = t < e.n ? e.ids[t] : dsa_tokenizer_pad_id(tok);
                        if (got != want)
                                fprintf(stderr, "text %zu token %zu: got %d, reference %d\n", i, t, got, want);
                        assert_int_equal(got, want);
                        assert_int_equal(in->mask[i * in->T + t], t < e.n);
                }
                dsa_encoding_clear(&e);
                json_object_put(j);
        }
        free(buf);
}

static void parity_one(const char *name) {
        char dir[512], tmpdir[] = "/tmp/dsa-parity-XXXXXX", path[600];
        struct dsa_safetensors *ref = NULL, *pairs = NULL;
        struct inputs in = { 0 }, pin = { 0 };
        struct outputs o = { 0 }, o2 = { 0 };
        bool ok = true;

        snprintf(dir, sizeof(dir), "%s/fixtures/hf/%s", shared, name);
        fprintf(stderr, "== %s\n", name);
        struct dsa_model *m = dsa_test_model_open(dir);
        const struct dsa_bert_config *c = dsa_model_bert_config(m);
        const size_t C = c->n_embd;

        assert_int_equal(dsa_safetensors_open(dsa_test_path(dir, "reference.safetensors"), &ref), 0);
        inputs_load(ref, &in);
        const size_t B = in.B, T = in.T;
        run(m, &in, &o);

        char what[64];
        for (size_t l = 0; l <= o.L; l++) {
                snprintf(what, sizeof(what), "hidden_states.%zu", l);
                ok &= check(name, what, o.hidden[l], dsa_test_st_need(ref, what), B * T * C, ATOL_HIDDEN);
        }
        for (size_t l = 0; l < o.L; l++) {
                snprintf(what, sizeof(what), "attentions.%zu", l);
                ok &= check(name, what, o.attn[l], dsa_test_st_need(ref, what), B * o.NH * T * T, ATOL_ATTN);
        }
        const struct dsa_tensor_view *rl = dsa_safetensors_find(ref, "logits");
        assert_true((rl != NULL) == (c->n_labels > 0));
        if (rl)
                ok &= check(name, "logits", o.logits, rl, B * c->n_labels, ATOL_LOGITS);

        /* Sentence pairs (token types 0/1). */
        assert_int_equal(dsa_safetensors_open(dsa_test_path(dir, "reference_pairs.safetensors"), &pairs), 0);
        inputs_load(pairs, &pin);
        run(m, &pin, &o2);
        ok &= check(name, "pairs last_hidden", o2.hidden[o2.L], dsa_test_st_need(pairs, "last_hidden"),
                    pin.B * pin.T * C, ATOL_HIDDEN);
        outputs_free(&o2);

        check_tokenization(dir, m, &in);

        /* GGUF F32: identical outputs, bit for bit. */
        assert_non_null(mkdtemp(tmpdir));
        snprintf(path, sizeof(path), "%s/model.gguf", tmpdir);
        dsa_error_clear();
        int r = dsa_model_save(m, path, DSA_TYPE_F32);
        if (r < 0)
                fprintf(stderr, "save: %s\n", dsa_error_message(r));
        assert_int_equal(r, 0);
        struct dsa_model *g = dsa_test_model_open(path);
        assert_memory_equal(dsa_model_bert_config(g), c, sizeof(*c));
        for (size_t i = 0; i < c->n_labels; i++)
                assert_string_equal(dsa_model_label(g, i), dsa_model_label(m, i));
        run(g, &in, &o2);
        for (size_t l = 0; l <= o.L; l++)
                assert_memory_equal(o2.hidden[l], o.hidden[l], B * T * C * sizeof(float));
        for (size_t l = 0; l < o.L; l++)
                assert_memory_equal(o2.attn[l], o.attn[l], B * o.NH * T * T * sizeof(float));
        if (o.logits)
                assert_memory_equal(o2.logits, o.logits, B * c->n_labels * sizeof(float));
        check_tokenization(dir, g, &in);
        outputs_free(&o2);
        dsa_model_free(g);
        fprintf(stderr, "%s GGUF F32 round trip: identical\n", name);

        /* GGUF F16: close to the fp32 reference. */
        r = dsa_model_save(m, path, DSA_TYPE_F16);
        assert_int_equal(r, 0);
        g = dsa_test_model_open(path);
        run(g, &in, &o2);
        if (rl)
                ok &= check(name, "F16 logits", o2.logits, rl, B * c->n_labels, ATOL_F16_LOGITS);
        snprintf(what, sizeof(what), "hidden_states.%zu", o.L);
        ok &= check(name, "F16 last hidden", o2.hidden[o2.L], dsa_test_st_need(ref, what), B * T * C, ATOL_F16_HIDDEN);
        outputs_free(&o2);
        dsa_model_free(g);
        unlink(path);
        rmdir(tmpdir);

        outputs_free(&o);
        inputs_free(&in);
        inputs_free(&pin);
        dsa_safetensors_free(ref);
        dsa_safetensors_free(pairs);
        dsa_model_free(m);
        assert_true(ok);
}

/* Every folder that fixtures/hf/index.json lists as kind "bert", so a fixture added there is
 * tested without touching this file. */
static void test_every_bert_fixture(void **state) {
        struct json_object *index = json_object_from_file(dsa_test_path(shared, "fixtures/hf/index.json"));
        size_t n = 0;

        assert_non_null(index);
        json_object_object_foreach(index, name, entry) {
                struct json_object *kind;
                if (!json_object_object_get_ex(entry, "kind", &kind) ||
                    strcmp(json_object_get_string(kind), "bert") != 0)
                        continue;
                printf("-- %s\n", name);
                parity_one(name);
                n++;
        }
        json_object_put(index);
        /* bert-tiny, bert-mini-sharded (sharded), bert-base-model (no head) at the time of writing. */
        assert_true(n >= 3);
}

/* The trained teacher on SST-2 dev through the texts path (tokenize, sort, batch, scatter). */
static void test_sst2_teacher(void **state) {
        char dir[512], *buf = NULL, *save = NULL, *line;
        size_t len, n = 0, cap = 1024;
        struct dsa_safetensors *ref = NULL;

        snprintf(dir, sizeof(dir), "%s/fixtures/trained/sst2-bert-4l256", shared);
        struct dsa_model *m = dsa_test_model_open(dir);
        assert_int_equal(dsa_model_bert_config(m)->n_labels, 2);

        assert_int_equal(dsa_test_read_file(dsa_test_path(shared, "data/glue_sst2/dev.tsv"), &buf, &len), 0);
        const char **texts = malloc(cap * sizeof(char *));
        int *labels = malloc(cap * sizeof(int));
        line = strtok_r(buf, "\n", &save);
        assert_non_null(line);
        assert_int_equal(strncmp(line, "sentence\tlabel", 14), 0);
        while ((line = strtok_r(NULL, "\n", &save))) {
                char *tab = strrchr(line, '\t');
                assert_non_null(tab);
                *tab = 0;
                assert_true(n < cap);
                texts[n] = line;
                labels[n++] = atoi(tab + 1);
        }
        assert_int_equal(n, 872);

        float *logits = malloc(n * 2 * sizeof(float));
        dsa_error_clear();
        int r = dsa_model_classify_texts(m, texts, NULL, n, logits);
        if (r < 0)
                fprintf(stderr, "classify: %s\n", dsa_error_message(r));
        assert_int_equal(r, 0);

        assert_int_equal(dsa_safetensors_open(dsa_test_path(dir, "dev_logits.safetensors"), &ref), 0);
        bool ok = check("sst2-bert-4l256", "dev logits", logits, dsa_test_st_need(ref, "logits"), n * 2,
                        ATOL_SST2_LOGITS);
        size_t correct = 0;
        for (size_t i = 0; i < n; i++)
                correct += (logits[2 * i + 1] > logits[2 * i]) == (labels[i] == 1);
        double acc = (double) correct / (double) n;
        fprintf(stderr, "sst2-bert-4l256 dev accuracy %.4f (%zu/%zu), reference %.4f\n", acc, correct, n,
                SST2_ACCURACY);
        assert_true(ok);
        assert_true(acc > SST2_ACCURACY - SST2_ACCURACY_TOL && acc < SST2_ACCURACY + SST2_ACCURACY_TOL);

        dsa_safetensors_free(ref);
        free(logits);
        free(labels);
        free(texts);
        free(buf);
        dsa_model_free(m);
}

int main(void) {
        shared = dsa_test_require_shared("BERT parity needs the reference fixtures");
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_every_bert_fixture),
                cmocka_unit_test(test_sst2_teacher),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
