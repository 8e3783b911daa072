/* Tokenizer parity: every line of every reference set, ids and tokens, against Hugging Face
 * tokenizers (fixtures/hf/<model>/tokenization.jsonl with the model's tokenizer.json, and
 * fixtures/hf/tokenizers/bert-base-uncased.jsonl with vocab.txt) and against llama.cpp
 * (data/llamacpp_vocab_tests/ggml-vocab-bert-bge.gguf with its .inp/.out). Prints the first
 * mismatches with their text and "N/N identical" per set; fails when any line differs. */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "testutil.h"

#define MAX_SHOWN 5

struct set_result {
        size_t n, ok;
};

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
        printf("    %s:", what);
        for (size_t i = 0; i < n; i++)
                printf(" %d", ids[i]);
        printf("\n");
}

/* One jsonl line {"text","ids","tokens"} (specials included) against our encoding. */
static bool check_jsonl_line(const struct dsa_tokenizer *t, json_object *line, size_t lineno,
                             size_t *shown) {
        json_object *jtext, *jids, *jtoks;
        struct dsa_encoding e = {};
        const char *text;
        bool same;
        size_t n;
        int r;

        if (!json_object_object_get_ex(line, "text", &jtext) ||
            !json_object_object_get_ex(line, "ids", &jids) ||
            !json_object_object_get_ex(line, "tokens", &jtoks)) {
                printf("  line %zu: malformed reference line\n", lineno);
                return false;
        }
        text = json_object_get_string(jtext);
        r = dsa_tokenizer_encode(t, text, (size_t) json_object_get_string_len(jtext), NULL, 0,
                                 DSA_ENCODE_SPECIAL, 0, &e);
        if (r < 0) {
                printf("  line %zu: encode failed: %s\n", lineno, dsa_error_message(r));
                return false;
        }
        n = json_object_array_length(jids);
        same = n == e.n && json_object_array_length(jtoks) == n;
        for (size_t i = 0; same && i < n; i++) {
                const char *want = json_object_get_string(json_object_array_get_idx(jtoks, i));
                const char *got = dsa_tokenizer_token(t, e.ids[i]);
                same = json_object_get_int(json_object_array_get_idx(jids, i)) == e.ids[i] &&
                       got && strcmp(want, got) == 0;
        }
        if (!same && (*shown)++ < MAX_SHOWN) {
                printf("  line %zu differs: %s\n", lineno, text);
                print_ids("got ", e.ids, e.n);
                printf("    want: %s\n", json_object_to_json_string(jids));
        }
        dsa_encoding_clear(&e);
        return same;
}

static int run_jsonl(const char *name, const struct dsa_tokenizer *t, const char *jsonl_path,
                     struct set_result *res) {
        _cleanup_free_ char *data = NULL;
        size_t size, shown = 0, lineno = 0;
        double t0;
        int r;

        r = dsa_test_read_file(jsonl_path, &data, &size);
        if (r < 0) {
                printf("%s: cannot read %s\n", name, jsonl_path);
                return r;
        }
        t0 = now_s();
        for (char *line = data, *nl; line < data + size; line = nl + 1) {
                json_object *j;
                nl = strchr(line, '\n');
                if (!nl)
                        nl = data + size;
                *nl = 0;
                lineno++;
                if (!*line)
                        continue;
                j = json_tokener_parse(line);
                res->n++;
                if (j && check_jsonl_line(t, j, lineno, &shown))
                        res->ok++;
                json_object_put(j);
        }
        printf("%s: %zu/%zu identical (%.3f s)\n", name, res->ok, res->n, now_s() - t0);
        return 0;
}

static int run_hf_model(const char *shared, const char *model, struct set_result *res) {
        char dir[512], path[600];
        _cleanup_free_ char *json = NULL;
        struct dsa_tokenizer *t = NULL;
        size_t len;
        int r;

        snprintf(dir, sizeof(dir), "%s/fixtures/hf/%s", shared, model);
        snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
        r = dsa_test_read_file(path, &json, &len);
        if (r < 0) {
                printf("%s: cannot read %s\n", model, path);
                return r;
        }
        r = dsa_tokenizer_from_hf_json(json, len, &t);
        if (r < 0) {
                printf("%s: cannot load tokenizer.json: %s\n", model, dsa_error_message(r));
                return r;
        }
        snprintf(path, sizeof(path), "%s/tokenization.jsonl", dir);
        r = run_jsonl(model, t, path, res);
        dsa_tokenizer_free(t);
        return r;
}

static int run_bert_base_uncased(const char *shared, struct set_result *res) {
        const struct dsa_tokenizer_options opts = DSA_TOKENIZER_OPTIONS_BERT;
        struct dsa_tokenizer *t = NULL;
        int r;

        r = dsa_tokenizer_from_vocab_txt(dsa_test_path(shared, "data/bert_wordpiece_uncased/vocab.txt"),
                                         &opts, &t);
        if (r < 0) {
                printf("bert-base-uncased: cannot load vocab.txt: %s\n", dsa_error_message(r));
                return r;
        }
        r = run_jsonl("bert-base-uncased", t, dsa_test_path(shared, "fixtures/hf/tokenizers/bert-base-uncased.jsonl"), res);
        dsa_tokenizer_free(t);
        return r;
}

/* llama.cpp's test-tokenizer-0 vectors: .inp split on "\n__ggml_vocab_test__\n" (last piece
 * dropped), .out one line of " id id ..." per test, no [CLS]/[SEP]. */
static int run_llamacpp(const struct dsa_tokenizer *t, const char *name, const char *inp_path,
                        const char *out_path, struct set_result *res) {
        static const char sep[] = "\n__ggml_vocab_test__\n";
        _cleanup_free_ char *inp = NULL, *out = NULL;
        size_t inp_size, out_size, shown = 0;
        char *p, *o;
        int r;

        r = dsa_test_read_file(inp_path, &inp, &inp_size);
        if (r < 0)
                return r;
        r = dsa_test_read_file(out_path, &out, &out_size);
        if (r < 0)
                return r;
        p = inp;
        o = out;
        for (char *end; (end = strstr(p, sep)); p = end + strlen(sep)) {
                struct dsa_encoding e = {};
                int32_t want[1024];
                size_t n_want;
                char *nl = strchr(o, '\n');
                bool same;

                *end = 0;
                if (!nl) {
                        printf("%s: .out has fewer lines than .inp\n", name);
                        return -EBADMSG;
                }
                *nl = 0;
                n_want = dsa_test_parse_ids(o, want, ELEMENTSOF(want));
                o = nl + 1;
                res->n++;
                r = dsa_tokenizer_encode(t, p, strlen(p), NULL, 0, 0, 0, &e);
                if (r < 0) {
                        printf("  test %zu: encode failed: %s\n", res->n, dsa_error_message(r));
                        continue;
                }
                same = e.n == n_want && memcmp(e.ids, want, n_want * sizeof(int32_t)) == 0;
                if (same)
                        res->ok++;
                else if (shown++ < MAX_SHOWN) {
                        printf("  test %zu differs: '%s'\n", res->n, p);
                        print_ids("got ", e.ids, e.n);
                        print_ids("want", want, n_want);
                }
                dsa_encoding_clear(&e);
        }
        printf("%s: %zu/%zu identical\n", name, res->ok, res->n);
        return 0;
}

static int run_bge(const char *shared, struct set_result *res) {
        const char *dir = dsa_test_path(shared, "data/llamacpp_vocab_tests");
        char gguf_path[600], inp[620], out[620];
        struct dsa_gguf *g = NULL;
        struct dsa_tokenizer *t = NULL;
        int r;

        snprintf(gguf_path, sizeof(gguf_path), "%s/ggml-vocab-bert-bge.gguf", dir);
        snprintf(inp, sizeof(inp), "%s.inp", gguf_path);
        snprintf(out, sizeof(out), "%s.out", gguf_path);
        r = dsa_gguf_open(gguf_path, &g);
        if (r < 0) {
                printf("bert-bge: cannot open GGUF: %s\n", dsa_error_message(r));
                return r;
        }
        r = dsa_tokenizer_from_gguf(g, &t);
        if (r < 0) {
                printf("bert-bge: cannot load tokenizer: %s\n", dsa_error_message(r));
                dsa_gguf_free(g);
                return r;
        }
        r = run_llamacpp(t, "llama.cpp bert-bge", inp, out, res);
        dsa_tokenizer_free(t);
        dsa_gguf_free(g);
        return r;
}

/* The same vectors through the HF pipeline on vocab.txt: where llama.cpp and HF agree, so must we. */
static int run_bge_hf(const char *shared, struct set_result *res) {
        const struct dsa_tokenizer_options opts = DSA_TOKENIZER_OPTIONS_BERT;
        const char *dir = dsa_test_path(shared, "data/llamacpp_vocab_tests");
        char inp[620], out[620];
        struct dsa_tokenizer *t = NULL;
        int r;

        snprintf(inp, sizeof(inp), "%s/ggml-vocab-bert-bge.gguf.inp", dir);
        snprintf(out, sizeof(out), "%s/ggml-vocab-bert-bge.gguf.out", dir);
        r = dsa_tokenizer_from_vocab_txt(dsa_test_path(shared, "data/bert_wordpiece_uncased/vocab.txt"),
                                         &opts, &t);
        if (r < 0)
                return r;
        r = run_llamacpp(t, "HF pipeline on llama.cpp bert-bge vectors", inp, out, res);
        dsa_tokenizer_free(t);
        return r;
}

int main(void) {
        const char *shared = dsa_test_require_shared("tokenizer parity");
        bool fail = false;
        size_t n_bert = 0;

        /* Every folder fixtures/hf/index.json lists as kind "bert" (gpt2/llama are not WordPiece). */
        struct json_object *index = json_object_from_file(dsa_test_path(shared, "fixtures/hf/index.json"));
        if (!index) {
                printf("FAIL cannot read fixtures/hf/index.json\n");
                return 1;
        }
        json_object_object_foreach(index, name, entry) {
                struct json_object *kind;
                struct set_result res = {};
                if (!json_object_object_get_ex(entry, "kind", &kind) ||
                    strcmp(json_object_get_string(kind), "bert") != 0)
                        continue;
                n_bert++;
                if (run_hf_model(shared, name, &res) < 0 || res.ok != res.n || res.n == 0)
                        fail = true;
        }
        json_object_put(index);
        if (n_bert < 3) {
                printf("FAIL only %zu BERT fixtures listed in index.json\n", n_bert);
                fail = true;
        }
        {
                struct set_result res = {};
                if (run_bert_base_uncased(shared, &res) < 0 || res.ok != res.n || res.n == 0)
                        fail = true;
        }
        {
                struct set_result res = {};
                if (run_bge(shared, &res) < 0 || res.ok != res.n || res.n == 0)
                        fail = true;
        }
        {
                /* Informational: HF and llama.cpp may legitimately differ on some of these. */
                struct set_result res = {};
                run_bge_hf(shared, &res);
        }
        return fail ? EXIT_FAILURE : EXIT_SUCCESS;
}
