/* Expected results from the in-process engine (expect.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "expect.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

static struct dsa_model *model;

int expect_open(const char *path) {
        int r = dsa_model_open(path, &model);
        if (r < 0)
                return r;
        r = dsa_model_set_threads(model, 1);
        return r < 0 ? r : 0;
}

void expect_close(void) {
        model = dsa_model_free(model);
}

size_t expect_n_labels(void) {
        return dsa_model_bert_config(model)->n_labels;
}

size_t expect_dim(void) {
        return dsa_model_bert_config(model)->n_embd;
}

int expect_classify(const char *const *texts, size_t n, int single, float *ret_logits) {
        size_t L = expect_n_labels();

        if (!single)
                return dsa_model_classify_texts(model, texts, NULL, n, ret_logits);
        for (size_t i = 0; i < n; i++) {
                int r = dsa_model_classify_texts(model, texts + i, NULL, 1, ret_logits + i * L);
                if (r < 0)
                        return r;
        }
        return 0;
}

static enum dsa_pool pool_of(int pool) {
        switch (pool) {
        case 1:
                return DSA_POOL_CLS;
        case 2:
                return DSA_POOL_MEAN;
        case 3:
                return DSA_POOL_POOLER;
        default:
                return dsa_model_default_pool(model);
        }
}

int expect_embed(const char *const *texts, size_t n, int pool, int single, float *ret_emb) {
        size_t C = expect_dim();

        if (!single)
                return dsa_model_embed_texts(model, texts, n, pool_of(pool), ret_emb);
        for (size_t i = 0; i < n; i++) {
                int r = dsa_model_embed_texts(model, texts + i, 1, pool_of(pool), ret_emb + i * C);
                if (r < 0)
                        return r;
        }
        return 0;
}

int expect_tokenize(const char *text, int special, int32_t **ret_ids, size_t *ret_n) {
        struct dsa_encoding e = { 0 };
        int r = dsa_tokenizer_encode(dsa_model_tokenizer(model), text, strlen(text), NULL, 0,
                                     special ? DSA_ENCODE_SPECIAL : 0, 0, &e);
        if (r < 0)
                return r;
        *ret_ids = e.ids;
        *ret_n = e.n;
        free(e.type_ids);
        return 0;
}
