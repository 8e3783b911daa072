/* Llama decoder parity against Hugging Face transformers' own outputs (../shared/fixtures):
 *
 *   - hf/llama-tiny: for each prompt of generation.json, our tokenizer's ids equal the
 *     reference's input_ids, the logits and last hidden state of every position match
 *     (ATOL_LOGITS), the greedy continuation is the same token for token, and decoding it gives
 *     generation.json's text; the model saved as GGUF and reopened gives the same logits bit for
 *     bit (fp32 weights, the same kernels).
 *   - trained/longlm-4l256: the mean NLL of a few of the 161 evaluation documents equals
 *     eval_docs.json's (RTOL_NLL), through dsa_model_lm_nll() and dense block-streamed
 *     attention at full length (2,000 to 4,096 tokens). All 161 run in `dsactl eval --task ppl`
 *     (tests/cli/test-ppl.py, label slow).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "testutil.h"

#define ATOL_LOGITS 1e-4f
#define ATOL_HIDDEN 1e-4f
/* Per-document mean NLL: fp32 sums over up to 4096 positions in a different order from
 * PyTorch's. */
#define RTOL_NLL 2e-5
#define N_PROMPTS 6

static const char *shared;

static int32_t *ids_copy(const struct dsa_tensor_view *v, size_t *n) {
        assert_int_equal(v->type, DSA_TYPE_I32);
        *n = dsa_tensor_nelems(v);
        int32_t *x = malloc(*n * sizeof(int32_t));
        assert_non_null(x);
        memcpy(x, v->data, *n * sizeof(int32_t));
        return x;
}

/* HF's decode of byte-level tokens (Rust's String::from_utf8_lossy): each maximal invalid
 * subsequence of s (n bytes) becomes one U+FFFD. Our decoder keeps the raw bytes (tokenizer.h). */
static char *utf8_lossy(const char *s, size_t n) {
        const unsigned char *u = (const unsigned char *) s;
        char *out = malloc(3 * n + 1), *o = out;
        size_t i = 0;

        assert_non_null(out);
        while (i < n) {
                unsigned c = u[i], len = 0, lo = 0x80, hi = 0xbf, k = 0;
                if (c < 0x80) {
                        *o++ = (char) u[i++];
                        continue;
                }
                if (c >= 0xc2 && c <= 0xdf)
                        len = 2;
                else if (c >= 0xe0 && c <= 0xef)
                        len = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
                else if (c >= 0xf0 && c <= 0xf4)
                        len = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
                while (len && k + 1 < len && i + 1 + k < n) {
                        unsigned d = u[i + 1 + k];
                        if (d < (k == 0 ? lo : 0x80) || d > (k == 0 ? hi : 0xbf))
                                break;
                        k++;
                }
                if (len && k + 1 == len) {
                        memcpy(o, s + i, len);
                        o += len;
                        i += len;
                } else {
                        memcpy(o, "\xef\xbf\xbd", 3);
                        o += 3;
                        i += 1 + k;
                }
        }
        *o = 0;
        return out;
}

static void check_model(struct dsa_model *m, const struct dsa_safetensors *ref, json_object *gen, bool texts) {
        const struct dsa_llama_config *c = dsa_model_llama_config(m);
        assert_non_null(c);
        const size_t V = c->n_vocab, C = c->n_embd;

        for (size_t p = 0; p < N_PROMPTS; p++) {
                char name[64];
                size_t T, G;

                snprintf(name, sizeof(name), "prompt.%zu.input_ids", p);
                int32_t *ids = ids_copy(dsa_test_st_need(ref, name), &T);
                snprintf(name, sizeof(name), "prompt.%zu.greedy", p);
                int32_t *greedy = ids_copy(dsa_test_st_need(ref, name), &G);
                float *logits = malloc(T * V * sizeof(float)), *hidden = malloc(T * C * sizeof(float));
                int32_t *out = malloc(G * sizeof(int32_t));
                assert_true(logits && hidden && out);

                if (texts) {
                        json_object *e = json_object_array_get_idx(gen, p), *pr, *gt;
                        assert_true(json_object_object_get_ex(e, "prompt", &pr));
                        assert_true(json_object_object_get_ex(e, "greedy_text", &gt));
                        const char *prompt = json_object_get_string(pr);
                        struct dsa_encoding enc = { 0 };
                        assert_int_equal(dsa_tokenizer_encode(dsa_model_tokenizer(m), prompt, strlen(prompt), NULL, 0,
                                                              DSA_ENCODE_SPECIAL, 0, &enc), 0);
                        assert_int_equal(enc.n, T);
                        assert_memory_equal(enc.ids, ids, T * sizeof(int32_t));
                        dsa_encoding_clear(&enc);

                        char *text = NULL;
                        size_t len = 0;
                        assert_int_equal(dsa_tokenizer_decode(dsa_model_tokenizer(m), greedy + T, G - T, &text, &len), 0);
                        char *raw = text;
                        text = utf8_lossy(raw, len);
                        free(raw);
                        if (strcmp(text, json_object_get_string(gt)) != 0)
                                fprintf(stderr, "prompt %zu: decoded '%s', want '%s'\n", p, text, json_object_get_string(gt));
                        assert_string_equal(text, json_object_get_string(gt));
                        free(text);
                }

                assert_int_equal(dsa_model_lm_forward(m, ids, T, logits, hidden, NULL), 0);
                snprintf(name, sizeof(name), "prompt.%zu.logits", p);
                const struct dsa_tensor_view *lv = dsa_test_st_need(ref, name);
                assert_int_equal(dsa_tensor_nelems(lv), T * V);
                assert_true(dsa_test_check_tensor(name, logits, lv->data, T * V, ATOL_LOGITS, 0));
                snprintf(name, sizeof(name), "prompt.%zu.last_hidden", p);
                const struct dsa_tensor_view *hv = dsa_test_st_need(ref, name);
                assert_int_equal(dsa_tensor_nelems(hv), T * C);
                assert_true(dsa_test_check_tensor(name, hidden, hv->data, T * C, ATOL_HIDDEN, 0));

                int n = dsa_model_lm_generate(m, ids, T, G - T, false, out);
                assert_int_equal(n, (int) G);
                for (size_t i = T; i < G; i++)
                        if (out[i] != greedy[i]) {
                                fprintf(stderr, "prompt %zu: greedy token %zu is %d, want %d\n", p, i, out[i], greedy[i]);
                                fail();
                        }
                free(ids), free(greedy), free(logits), free(hidden), free(out);
        }
}

static void test_llama_tiny(void **state) {
        const char *dir = dsa_test_path(shared, "fixtures/hf/llama-tiny");
        struct dsa_safetensors *ref = NULL;
        json_object *gen = json_object_from_file(dsa_test_path(dir, "generation.json"));
        char tmp[] = "/tmp/dsa-llama-XXXXXX";
        char path[64];

        assert_non_null(gen);
        assert_int_equal(dsa_safetensors_open(dsa_test_path(dir, "reference.safetensors"), &ref), 0);
        struct dsa_model *m = dsa_test_model_open(dir);
        assert_int_equal(dsa_model_arch(m), DSA_ARCH_LLAMA);
        assert_null(dsa_model_bert_config(m));
        check_model(m, ref, gen, true);

        /* GGUF round trip: the same weights in llama.cpp's layout, the same numbers. */
        assert_non_null(mkdtemp(tmp));
        snprintf(path, sizeof(path), "%s/llama.gguf", tmp);
        assert_int_equal(dsa_model_save_variant(m, path), 0);
        struct dsa_model *g = dsa_test_model_open(path);
        check_model(g, ref, gen, true);
        const size_t V = dsa_model_llama_config(m)->n_vocab;
        int32_t ids[5] = { 5, 17, 300, 2, 9 };
        float *a = malloc(5 * V * sizeof(float)), *b = malloc(5 * V * sizeof(float));
        assert_int_equal(dsa_model_lm_forward(m, ids, 5, a, NULL, NULL), 0);
        assert_int_equal(dsa_model_lm_forward(g, ids, 5, b, NULL, NULL), 0);
        assert_memory_equal(a, b, 5 * V * sizeof(float));

        /* Bad input: ids out of range, too long, a BERT call on a decoder. */
        ids[2] = (int32_t) V;
        assert_int_equal(dsa_model_lm_forward(m, ids, 5, a, NULL, NULL), -EINVAL);
        ids[2] = -1;
        assert_int_equal(dsa_model_lm_forward(m, ids, 5, a, NULL, NULL), -EINVAL);
        assert_int_equal(dsa_model_lm_nll(m, ids, 1, (double *) a, NULL), -EINVAL);
        float emb[64];
        const char *txt = "x";
        assert_int_equal(dsa_model_embed_texts(m, &txt, 1, DSA_POOL_MEAN, emb), -EOPNOTSUPP);

        free(a), free(b);
        dsa_model_free(g);
        unlink(path);
        rmdir(tmp);
        dsa_model_free(m);
        dsa_safetensors_free(ref);
        json_object_put(gen);
}

static void test_longlm_nll(void **state) {
        const char *dir = dsa_test_path(shared, "fixtures/trained/longlm-4l256");
        struct dsa_safetensors *docs = NULL;
        json_object *want = json_object_from_file(dsa_test_path(dir, "eval_docs.json"));
        /* the shortest document, a mid-sized one and a full 4096-token one */
        static const size_t pick[] = { 2, 30, 0 };

        assert_non_null(want);
        assert_int_equal(dsa_safetensors_open(dsa_test_path(dir, "eval_docs.safetensors"), &docs), 0);
        struct dsa_model *m = dsa_test_model_open(dir);
        for (size_t i = 0; i < ELEMENTSOF(pick); i++) {
                char name[32];
                size_t T;
                json_object *e = json_object_array_get_idx(want, pick[i]), *nv, *tv;

                snprintf(name, sizeof(name), "doc.%zu", pick[i]);
                int32_t *ids = ids_copy(dsa_test_st_need(docs, name), &T);
                assert_true(json_object_object_get_ex(e, "nll", &nv));
                assert_true(json_object_object_get_ex(e, "tokens", &tv));
                assert_int_equal(json_object_get_int(tv), (int) T);
                double *nll = malloc((T - 1) * sizeof(double)), sum = 0;
                struct dsa_lm_stats st = { 0 };
                assert_int_equal(dsa_model_lm_nll(m, ids, T, nll, &st), 0);
                for (size_t t = 0; t + 1 < T; t++)
                        sum += nll[t];
                const double got = sum / (double) (T - 1), ref = json_object_get_double(nv);
                printf("doc %zu (%zu tokens): mean NLL %.7f, transformers %.7f (rel %.2e); attention %.0f ms of "
                       "%.0f ms\n", pick[i], T, got, ref, fabs(got - ref) / ref, st.attention_ns / 1e6,
                       st.forward_ns / 1e6);
                assert_true(fabs(got - ref) <= RTOL_NLL * ref);
                assert_true(st.blocks_kept == st.blocks_visible);
                free(ids), free(nll);
        }
        dsa_model_free(m);
        dsa_safetensors_free(docs);
        json_object_put(want);
}

int main(void) {
        shared = dsa_test_require_shared("Llama parity fixtures");
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_llama_tiny),
                cmocka_unit_test(test_longlm_nll),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
