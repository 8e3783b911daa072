/* See bench-dsad-engine.h. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench-dsad-engine.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

struct bench_engine {
        struct dsa_model *m;
};

int bench_engine_open(const char *path, unsigned threads, struct bench_engine **ret) {
        struct bench_engine *e;
        int r;

        if (!path || !ret)
                return -EINVAL;
        e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        r = dsa_model_open(path, &e->m);
        if (r >= 0)
                r = dsa_model_set_threads(e->m, threads);
        if (r < 0) {
                bench_engine_free(e);
                return r;
        }
        *ret = e;
        return 0;
}

struct bench_engine *bench_engine_free(struct bench_engine *e) {
        if (e) {
                dsa_model_free(e->m);
                free(e);
        }
        return NULL;
}

size_t bench_engine_dim(const struct bench_engine *e) {
        return dsa_model_bert_config(e->m)->n_embd;
}

size_t bench_engine_n_labels(const struct bench_engine *e) {
        return dsa_model_bert_config(e->m)->n_labels;
}

int bench_engine_count_tokens(const struct bench_engine *e, const char *text) {
        struct dsa_encoding enc = {};
        int r;

        r = dsa_tokenizer_encode(dsa_model_tokenizer(e->m), text, strlen(text), NULL, 0,
                                 DSA_ENCODE_SPECIAL, 0, &enc);
        if (r < 0)
                return r;
        r = (int) enc.n;
        dsa_encoding_clear(&enc);
        return r;
}

/* A plain lowercase word of the vocabulary (no "##", no "[...]") that is one token by itself. */
static bool single_token_word(const struct bench_engine *e, const char *tok) {
        if (!tok || !*tok || tok[0] == '#' || tok[0] == '[' || strlen(tok) < 3)
                return false;
        for (const char *p = tok; *p; p++)
                if (!islower((unsigned char) *p))
                        return false;
        return bench_engine_count_tokens(e, tok) == 3;
}

int bench_engine_make_text(const struct bench_engine *e, size_t n_tokens, char **ret) {
        const struct dsa_tokenizer *t = dsa_model_tokenizer(e->m);
        size_t n_vocab = dsa_tokenizer_n_vocab(t), words = 0, len = 0, cap = 16 * n_tokens + 64;
        char *s;
        int r;

        if (n_tokens < 3 || !ret)
                return -EINVAL;
        s = malloc(cap);
        if (!s)
                return -ENOMEM;
        s[0] = 0;
        /* Words from the middle of the vocabulary on, one token each: n_tokens - 2 of them. */
        for (size_t id = n_vocab / 4; id < n_vocab && words < n_tokens - 2; id++) {
                const char *tok = dsa_tokenizer_token(t, (int32_t) id);
                if (!single_token_word(e, tok) || len + strlen(tok) + 2 > cap)
                        continue;
                len += (size_t) sprintf(s + len, "%s%s", words ? " " : "", tok);
                words++;
        }
        r = bench_engine_count_tokens(e, s);
        if (r != (int) n_tokens) {
                free(s);
                return r < 0 ? r : -ERANGE;
        }
        *ret = s;
        return 0;
}

int bench_engine_embed(const struct bench_engine *e, const char *text, float *out) {
        return dsa_model_embed_texts(e->m, &text, 1, dsa_model_default_pool(e->m), out);
}

int bench_engine_classify(const struct bench_engine *e, const char *text, float *out) {
        return dsa_model_classify_texts(e->m, &text, NULL, 1, out);
}

int bench_engine_run(const struct bench_engine *e, const char *const *texts, size_t n, bool embed_cls, float *out) {
        if (embed_cls)
                return dsa_model_embed_texts(e->m, texts, n, DSA_POOL_CLS, out);
        return dsa_model_classify_texts(e->m, texts, NULL, n, out);
}
