/* dsa_model_*: opens a model from a GGUF file (ours or llama.cpp's "bert") or a Hugging Face
 * folder, writes it back as GGUF with llama.cpp's BERT names and keys plus ours under dsa.*, and
 * runs it: forward, pooling, classification, and the texts-in, vectors-out conveniences that
 * tokenize, batch by length and scatter results back in input order.
 *
 * llama.cpp's BERT convention (gguf-py constants.py TENSOR_NAMES, llama-arch.cpp LLM_KV_*):
 * token_embd, token_types, position_embd, token_embd_norm, blk.N.{attn_q,attn_k,attn_v,
 * attn_output,attn_output_norm,ffn_up,ffn_down,layer_output_norm}; the head is "cls" (dense +
 * tanh, applied by RANK pooling) then "cls.output", which is exactly BERT's pooler followed by its
 * classifier; labels under bert.classifier.output_labels. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "bert.h"
#include "gguf.h"
#include "kernels/kernels.h"
#include "model-internal.h"
#include "model.h"
#include "tokenizer.h"

/* llama.cpp's enum llama_pooling_type. */
enum {
        LLAMA_POOLING_NONE = 0,
        LLAMA_POOLING_MEAN = 1,
        LLAMA_POOLING_CLS = 2,
        LLAMA_POOLING_LAST = 3,
        LLAMA_POOLING_RANK = 4,
};

/* llama.cpp's enum llama_ftype, for general.file_type. */
enum {
        LLAMA_FTYPE_ALL_F32 = 0,
        LLAMA_FTYPE_MOSTLY_F16 = 1,
        LLAMA_FTYPE_MOSTLY_BF16 = 32,
};

#define TEXTS_MAX_BATCH 32


struct dsa_model *dsa_model_free(struct dsa_model *m) {
        if (!m)
                return NULL;
        dsa__bert_free(m->bert);
        dsa__llama_free(m->llama);
        dsa_gguf_free(m->map); /* after bert, whose token embeddings may point into it */
        if (!m->tok_borrowed)
                dsa_tokenizer_free(m->tok);
        free(m->source);
        dsa__info_clear(&m->info);
        free(m);
        return NULL;
}

/* ---- GGUF load */

static const struct dsa_tensor_view *gguf_lookup(void *userdata, const char *name) {
        return dsa_gguf_find_tensor(userdata, name);
}

static bool gguf_str_eq(const struct dsa_gguf *g, const char *key, const char *want) {
        const char *s;
        size_t n;
        return dsa_gguf_get_str(g, key, &s, &n) >= 0 && n == strlen(want) && memcmp(s, want, n) == 0;
}

static int gguf_u32(const struct dsa_gguf *g, const char *key, uint32_t *ret) {
        int r = dsa_gguf_get_u32(g, key, ret);
        if (r < 0)
                return dsa__error(r == -ENOENT ? -EBADMSG : r, "GGUF key '%s' is %s", key,
                                  r == -ENOENT ? "missing" : "not a 32-bit unsigned integer");
        return 0;
}

static int gguf_labels(const struct dsa_gguf *g, struct dsa_bert *b) {
        const uint32_t NL = b->cfg.n_labels;
        enum dsa_gguf_vtype t;
        size_t n = 0;
        bool have;

        if (NL == 0)
                return 0;
        have = dsa_gguf_get_arr(g, "bert.classifier.output_labels", &t, &n) >= 0 && t == DSA_GGUF_STRING &&
               n == NL;
        b->labels = calloc(NL, sizeof(char *));
        if (!b->labels)
                return -ENOMEM;
        for (uint32_t i = 0; i < NL; i++) {
                const char *s;
                size_t len;
                if (have && dsa_gguf_get_arr_str(g, "bert.classifier.output_labels", i, &s, &len) >= 0 &&
                    len < 4096)
                        b->labels[i] = strndup(s, len);
                else {
                        char buf[32];
                        snprintf(buf, sizeof(buf), "LABEL_%u", i);
                        b->labels[i] = strdup(buf);
                }
                if (!b->labels[i])
                        return -ENOMEM;
        }
        return 0;
}

/* Numeric array key of exactly n elements into a new array; absent: 0 and *ret NULL. */
static int gguf_num_array(const struct dsa_gguf *g, const char *key, size_t n, enum dsa_gguf_vtype want,
                          void **ret) {
        enum dsa_gguf_vtype t;
        const void *data;
        size_t len;
        void *a;

        *ret = NULL;
        if (dsa_gguf_find(g, key) < 0)
                return 0;
        if (dsa_gguf_get_arr(g, key, &t, &len) < 0 || t != want || len != n ||
            dsa_gguf_get_arr_data(g, key, &data) < 0)
                return dsa__error(-EBADMSG, "GGUF key '%s' is not an array of %zu %s", key, n,
                                  want == DSA_GGUF_UINT32 ? "uint32" : "float32");
        a = malloc(n * 4);
        if (!a)
                return -ENOMEM;
        memcpy(a, data, n * 4);
        *ret = a;
        return 0;
}

static int gguf_u32_array(const struct dsa_gguf *g, const char *key, size_t n, uint32_t **ret) {
        return gguf_num_array(g, key, n, DSA_GGUF_UINT32, (void **) ret);
}

static int gguf_f32_array(const struct dsa_gguf *g, const char *key, size_t n, float **ret) {
        return gguf_num_array(g, key, n, DSA_GGUF_FLOAT32, (void **) ret);
}

/* Every string key under dsa.variant. (what `dsactl optimize` did, what `dsactl eval` measured). */
static int info_from_gguf(const struct dsa_gguf *g, struct dsa__info *info) {
        for (size_t i = 0; i < dsa_gguf_n_kv(g); i++) {
                const char *k = dsa_gguf_kv_name(g, i), *v;
                size_t len;
                int r;

                if (!k || strncmp(k, DSA__INFO_PREFIX, strlen(DSA__INFO_PREFIX)) != 0 ||
                    dsa_gguf_kv_type(g, i) != DSA_GGUF_STRING || dsa_gguf_get_str(g, k, &v, &len) < 0 ||
                    len > 4096)
                        continue;
                _cleanup_free_ char *val = strndup(v, len);
                if (!val)
                        return -ENOMEM;
                r = dsa__info_set(info, k + strlen(DSA__INFO_PREFIX), val);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The source, tokenizer and recorded facts of any architecture. */
static int open_gguf_common(const struct dsa_gguf *g, const char *path, struct dsa_model *m, size_t n_vocab) {
        const char *s;
        size_t n;
        int r;

        if (dsa_gguf_find(g, "tokenizer.ggml.tokens") >= 0) {
                r = dsa_tokenizer_from_gguf(g, &m->tok);
                if (r < 0)
                        return r;
                if (dsa_tokenizer_n_vocab(m->tok) > n_vocab)
                        return dsa__error(-EBADMSG, "tokenizer has %zu tokens, more than token_embd's %zu rows",
                                          dsa_tokenizer_n_vocab(m->tok), n_vocab);
        }
        r = info_from_gguf(g, &m->info);
        if (r < 0)
                return r;
        if (dsa_gguf_get_str(g, "dsa.source", &s, &n) >= 0 && n < 4096)
                m->source = strndup(s, n);
        else
                m->source = strdup(path);
        return m->source ? 0 : -ENOMEM;
}

static int open_gguf_llama(const struct dsa_gguf *g, const char *path, struct dsa_model *m) {
        int r = dsa__llama_open_gguf(g, &m->llama);
        if (r < 0)
                return r;
        m->arch = DSA_ARCH_LLAMA;
        return open_gguf_common(g, path, m, m->llama->cfg.n_vocab);
}

/* The model in g, opened from path (named in messages). With keep_map, g outlives the model (the
 * caller keeps it in m->map when the token embeddings borrowed from it). */
static int open_gguf(const struct dsa_gguf *g, const char *path, struct dsa_model *m, bool keep_map) {
        struct dsa_bert_config c = { 0 };
        const struct dsa_tensor_view *v;
        uint32_t pooling = LLAMA_POOLING_CLS;
        bool causal = false;
        const char *s;
        size_t n;
        int r;

        if (dsa_gguf_get_str(g, "general.architecture", &s, &n) < 0)
                return dsa__error(-EBADMSG, "'%s' has no general.architecture", path);
        if (n == 5 && memcmp(s, "llama", 5) == 0)
                return open_gguf_llama(g, path, m);
        if (n != 4 || memcmp(s, "bert", 4) != 0)
                return dsa__error(-EOPNOTSUPP, "architecture '%.*s' is not supported (only 'bert' and 'llama')",
                                  (int) MIN(n, (size_t) 64), s);

        if ((r = gguf_u32(g, "bert.context_length", &c.n_ctx)) < 0 ||
            (r = gguf_u32(g, "bert.embedding_length", &c.n_embd)) < 0 ||
            (r = gguf_u32(g, "bert.feed_forward_length", &c.n_ff)) < 0 ||
            (r = gguf_u32(g, "bert.block_count", &c.n_layer)) < 0 ||
            (r = gguf_u32(g, "bert.attention.head_count", &c.n_head)) < 0)
                return r;
        c.eps = 1e-12f;
        r = dsa_gguf_get_f32(g, "bert.attention.layer_norm_epsilon", &c.eps);
        if (r < 0 && r != -ENOENT)
                return dsa__error(r, "GGUF key 'bert.attention.layer_norm_epsilon' is not a float");
        if (dsa_gguf_get_bool(g, "bert.attention.causal", &causal) >= 0 && causal)
                return dsa__error(-EOPNOTSUPP, "causal BERT (bert.attention.causal) is not supported");
        r = dsa_gguf_get_u32(g, "bert.pooling_type", &pooling);
        if (r < 0 && r != -ENOENT)
                return dsa__error(r, "GGUF key 'bert.pooling_type' is not an unsigned integer");

        c.act = DSA_ACT_GELU_ERF;
        if (dsa_gguf_find(g, "dsa.bert.hidden_act") >= 0) {
                if (gguf_str_eq(g, "dsa.bert.hidden_act", "gelu_tanh"))
                        c.act = DSA_ACT_GELU_TANH;
                else if (!gguf_str_eq(g, "dsa.bert.hidden_act", "gelu"))
                        return dsa__error(-EOPNOTSUPP, "dsa.bert.hidden_act is neither 'gelu' nor 'gelu_tanh'");
        }

        v = dsa_gguf_find_tensor(g, "token_embd.weight");
        if (!v)
                return dsa__error(-ENOENT, "tensor 'token_embd.weight' is missing");
        if (v->n_dims != 2 || v->ne[1] == 0 || v->ne[1] > UINT32_MAX)
                return dsa__error(-EBADMSG, "tensor 'token_embd.weight' is not a (vocab, hidden) matrix");
        c.n_vocab = (uint32_t) v->ne[1];

        c.n_type = 2;
        v = dsa_gguf_find_tensor(g, "token_types.weight");
        if (v) {
                if (v->n_dims != 2 || v->ne[1] == 0 || v->ne[1] > UINT32_MAX)
                        return dsa__error(-EBADMSG, "tensor 'token_types.weight' is not a (types, hidden) matrix");
                c.n_type = (uint32_t) v->ne[1];
        } else
                (void) dsa_gguf_get_u32(g, "dsa.bert.type_vocab_size", &c.n_type);

        c.has_pooler = dsa_gguf_find_tensor(g, "cls.weight") != NULL;
        v = dsa_gguf_find_tensor(g, "cls.output.weight");
        if (v) {
                if (v->n_dims > 2 || v->ne[1] == 0 || v->ne[1] > UINT32_MAX)
                        return dsa__error(-EBADMSG, "tensor 'cls.output.weight' is not a (labels, hidden) matrix");
                c.n_labels = (uint32_t) v->ne[1];
        }

        _cleanup_free_ uint32_t *heads = NULL, *ffs = NULL;
        _cleanup_free_ float *keep = NULL;
        struct dsa__bert_layout layout = { 0 };
        if ((r = gguf_u32_array(g, "dsa.bert.head_count_per_layer", c.n_layer, &heads)) < 0 ||
            (r = gguf_u32_array(g, "dsa.bert.feed_forward_length_per_layer", c.n_layer, &ffs)) < 0 ||
            (r = gguf_f32_array(g, "dsa.prune.token_keep", c.n_layer, &keep)) < 0)
                return r;
        layout.n_head = heads, layout.n_ff = ffs, layout.token_keep = keep;
        (void) dsa_gguf_get_bool(g, "dsa.prune.sparse_kernel", &layout.sparse);
        layout.borrow_embed = keep_map;

        r = dsa__bert_load(&c, &layout, gguf_lookup, (void *) g, &m->bert);
        if (r < 0)
                return r;
        switch (pooling) {
        case LLAMA_POOLING_MEAN:
                m->bert->default_pool = DSA_POOL_MEAN;
                break;
        case LLAMA_POOLING_RANK:
                m->bert->default_pool = c.has_pooler ? DSA_POOL_POOLER : DSA_POOL_CLS;
                break;
        case LLAMA_POOLING_NONE:
                m->bert->default_pool = DSA_POOL_NONE;
                break;
        default:
                m->bert->default_pool = DSA_POOL_CLS;
                break;
        }
        r = gguf_labels(g, m->bert);
        if (r < 0)
                return r;
        dsa__att_clear(&m->bert->att);
        r = dsa__att_from_gguf(g, c.n_layer, c.n_head, c.n_embd / c.n_head, &m->bert->att);
        if (r < 0)
                return r;
        if (m->bert->att.token)
                return dsa__error(-EOPNOTSUPP, "%s: the DSA token scorer runs in decoders only", path);

        return open_gguf_common(g, path, m, c.n_vocab);
}

int dsa_model_open(const char *path, struct dsa_model **ret) {
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        struct stat st;
        int r;

        if (!path || !ret)
                return -EINVAL;
        if (stat(path, &st) < 0)
                return dsa__error(-errno, "cannot open model '%s': %m", path);
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->arch = DSA_ARCH_BERT;
        if (S_ISDIR(st.st_mode) && dsa__hf_is_llama(path)) {
                m->arch = DSA_ARCH_LLAMA;
                r = dsa__hf_import_llama(path, &m->llama, &m->tok);
                if (r < 0)
                        return r;
                m->source = strdup(path);
                if (!m->source)
                        return -ENOMEM;
        } else if (S_ISDIR(st.st_mode)) {
                r = dsa__hf_import(path, &m->bert, &m->tok);
                if (r < 0)
                        return r;
                m->source = strdup(path);
                if (!m->source)
                        return -ENOMEM;
        } else {
                /* Held by m from the start, so on any failure the model's free releases the
                 * weights before the mapping they may point into. */
                r = dsa_gguf_open(path, &m->map);
                if (r < 0)
                        return r;
                r = open_gguf(m->map, path, m, true);
                if (r < 0)
                        return r;
                /* Kept mapped for the token embeddings, which stay in the file: only the rows in
                 * use become resident (a 30k-word table is most of a small model), shared with
                 * every process mapping the file. Store files are replaced by rename, never
                 * rewritten in place, so the mapping stays valid. */
                if (m->bert && m->bert->wte.borrowed)
                        dsa_gguf_release_pages(m->map);
                else
                        m->map = dsa_gguf_free(m->map);
        }
        r = dsa_model_set_threads(m, 0);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

int dsa_model_set_threads(struct dsa_model *m, unsigned n) {
        if (m && m->llama)
                return dsa__llama_set_threads(m->llama, n);
        if (!m || !m->bert)
                return -EINVAL;
        return dsa__bert_set_threads(m->bert, n);
}

enum dsa_arch dsa_model_arch(const struct dsa_model *m) {
        return m->arch;
}

const struct dsa_bert_config *dsa_model_bert_config(const struct dsa_model *m) {
        return m && m->bert ? &m->bert->cfg : NULL;
}

const struct dsa_llama_config *dsa_model_llama_config(const struct dsa_model *m) {
        return m && m->llama ? &m->llama->cfg : NULL;
}

const struct dsa_tokenizer *dsa_model_tokenizer(const struct dsa_model *m) {
        return m ? m->tok : NULL;
}

const char *dsa_model_label(const struct dsa_model *m, size_t i) {
        if (!m || !m->bert || i >= m->bert->cfg.n_labels || !m->bert->labels)
                return NULL;
        return m->bert->labels[i];
}

enum dsa_pool dsa_model_default_pool(const struct dsa_model *m) {
        return m && m->bert ? m->bert->default_pool : DSA_POOL_CLS;
}

const char *dsa_model_source(const struct dsa_model *m) {
        return m ? m->source : NULL;
}

/* ---- running */

/* -EOPNOTSUPP with a reason when m is not an encoder (the BERT calls below), -EINVAL for NULL. */
static int need_encoder(const struct dsa_model *m) {
        if (!m)
                return -EINVAL;
        if (!m->bert)
                return dsa__error(-EOPNOTSUPP, "'%s' is a decoder: it has no encoder forward, pooling or classifier",
                                  m->source ? m->source : "model");
        return 0;
}

int dsa_model_forward(const struct dsa_model *m, const struct dsa_batch *b, float *ret_hidden,
                      struct dsa_trace *trace) {
        int r = need_encoder(m);
        if (r < 0)
                return r;
        if (!b || !ret_hidden)
                return -EINVAL;
        return dsa__bert_forward(m->bert, b, ret_hidden, trace, NULL);
}

int dsa_model_pool(const struct dsa_model *m, const struct dsa_batch *b, const float *hidden,
                   enum dsa_pool mode, float *out) {
        int r = need_encoder(m);
        if (r < 0)
                return r;
        if (!b || !hidden || !out)
                return -EINVAL;
        return dsa__bert_pool(m->bert, b, hidden, mode, out);
}

int dsa_model_classify(const struct dsa_model *m, const struct dsa_batch *b, const float *hidden,
                       float *ret_logits) {
        int r = need_encoder(m);
        if (r < 0)
                return r;
        if (!b || !hidden || !ret_logits)
                return -EINVAL;
        return dsa__bert_classify(m->bert, b, hidden, ret_logits);
}

struct encodings {
        struct dsa_encoding *e;
        size_t n;
};

static void encodings_clear(struct encodings *x) {
        if (x->e)
                for (size_t i = 0; i < x->n; i++)
                        dsa_encoding_clear(&x->e[i]);
        free(x->e);
}

/* order = indices sorted by (length, index): a stable Shell sort, as qsort() has no context
 * argument and a global one would not be thread-safe. */
static void sort_by_len(size_t *order, const struct dsa_encoding *e, size_t n) {
        for (size_t i = 0; i < n; i++)
                order[i] = i;
        for (size_t gap = n / 2; gap > 0; gap /= 2)
                for (size_t i = gap; i < n; i++) {
                        size_t v = order[i], j = i;
                        while (j >= gap && (e[order[j - gap]].n > e[v].n ||
                                            (e[order[j - gap]].n == e[v].n && order[j - gap] > v))) {
                                order[j] = order[j - gap];
                                j -= gap;
                        }
                        order[j] = v;
                }
}

/* Tokenizes, runs batches of similar length and writes dim floats per text into out, in input
 * order: classifier logits when classify, else the pooled vector of mode. */
static int run_texts(const struct dsa_model *m, const char *const *texts, const char *const *pairs, size_t n,
                     bool classify, enum dsa_pool mode, float *ret, size_t dim,
                     const struct dsa__bert_hooks *hooks) {
        const struct dsa_bert_config *c;
        _cleanup_(encodings_clear) struct encodings enc = { 0 };
        _cleanup_free_ size_t *order = NULL;
        _cleanup_free_ float *res = NULL;
        int r;

        if (!m || !m->bert || (!texts && n > 0) || !ret)
                return -EINVAL;
        if (!m->tok)
                return dsa__error(-EOPNOTSUPP, "the model has no tokenizer");
        if (n == 0)
                return 0;
        c = &m->bert->cfg;
        size_t rb;
        if (!size_mul_ok(n, dim, &rb) || !size_mul_ok(rb, sizeof(float), &rb))
                return -EOVERFLOW;

        enc.e = calloc(n, sizeof(*enc.e));
        order = calloc(n, sizeof(*order));
        res = malloc(rb);
        if (!enc.e || !order || !res)
                return -ENOMEM;
        enc.n = n;
        for (size_t i = 0; i < n; i++) {
                const char *p = pairs ? pairs[i] : NULL;
                if (!texts[i])
                        return -EINVAL;
                r = dsa_tokenizer_encode(m->tok, texts[i], strlen(texts[i]), p, p ? strlen(p) : 0,
                                         DSA_ENCODE_SPECIAL, c->n_ctx, &enc.e[i]);
                if (r < 0)
                        return r;
        }
        sort_by_len(order, enc.e, n);

        int32_t pad = dsa_tokenizer_pad_id(m->tok);
        if (pad < 0 || (uint32_t) pad >= c->n_vocab)
                pad = 0;
        const size_t C = c->n_embd, maxT = MAX(enc.e[order[n - 1]].n, (size_t) 1),
                     maxB = MIN(n, (size_t) TEXTS_MAX_BATCH);
        _cleanup_free_ int32_t *ids = malloc(maxB * maxT * sizeof(int32_t));
        _cleanup_free_ int32_t *types = malloc(maxB * maxT * sizeof(int32_t));
        _cleanup_free_ uint8_t *mask = malloc(maxB * maxT);
        _cleanup_free_ float *hidden = malloc(maxB * maxT * C * sizeof(float));
        _cleanup_free_ float *out = malloc(maxB * dim * sizeof(float));
        if (!ids || !types || !mask || !hidden || !out)
                return -ENOMEM;

        for (size_t start = 0; start < n; start += TEXTS_MAX_BATCH) {
                const size_t B = MIN((size_t) TEXTS_MAX_BATCH, n - start);
                const size_t T = MAX(enc.e[order[start + B - 1]].n, (size_t) 1);
                struct dsa_batch batch = { .B = B, .T = T, .ids = ids, .type_ids = types, .mask = mask, .ragged = true,
                                         .first_only = classify || mode == DSA_POOL_CLS || mode == DSA_POOL_POOLER };

                for (size_t i = 0; i < B; i++) {
                        const struct dsa_encoding *e = &enc.e[order[start + i]];
                        for (size_t t = 0; t < T; t++) {
                                bool real = t < e->n;
                                ids[i * T + t] = real ? e->ids[t] : pad;
                                types[i * T + t] = real && e->type_ids ? e->type_ids[t] : 0;
                                mask[i * T + t] = real;
                        }
                }
                r = dsa__bert_forward(m->bert, &batch, hidden, NULL, hooks);
                if (r < 0)
                        return r;
                r = classify ? dsa__bert_classify(m->bert, &batch, hidden, out)
                             : dsa__bert_pool(m->bert, &batch, hidden, mode, out);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < B; i++)
                        memcpy(res + order[start + i] * dim, out + i * dim, dim * sizeof(float));
        }
        memcpy(ret, res, rb);
        return 0;
}

int dsa_model_classify_texts(const struct dsa_model *m, const char *const *texts, const char *const *pairs,
                             size_t n, float *ret_logits) {
        int r = need_encoder(m);
        if (r < 0)
                return r;
        if (m->bert->cfg.n_labels == 0)
                return dsa__error(-EOPNOTSUPP, "the model has no classifier head");
        return run_texts(m, texts, pairs, n, true, DSA_POOL_CLS, ret_logits, m->bert->cfg.n_labels, NULL);
}

int dsa_model_embed_texts(const struct dsa_model *m, const char *const *texts, size_t n, enum dsa_pool mode,
                          float *ret_emb) {
        int r = need_encoder(m);
        if (r < 0)
                return r;
        if (mode == DSA_POOL_NONE)
                return dsa__error(-EINVAL, "pooling 'none' gives one vector per token: use dsa_model_forward()");
        if (mode == DSA_POOL_POOLER && !m->bert->pool_w)
                return dsa__error(-EOPNOTSUPP, "the model has no pooler");
        return run_texts(m, texts, NULL, n, false, mode, ret_emb, m->bert->cfg.n_embd, NULL);
}

int dsa__model_calibrate(const struct dsa_model *m, const char *const *texts, const char *const *pairs, size_t n,
                         const struct dsa__bert_hooks *hooks, float *ret_logits) {
        const size_t NL = m->bert->cfg.n_labels;
        const size_t dim = NL > 0 ? NL : m->bert->cfg.n_embd;
        _cleanup_free_ float *tmp = ret_logits ? NULL : malloc((n ? n : 1) * dim * sizeof(float));

        if (!ret_logits && !tmp)
                return -ENOMEM;
        return run_texts(m, texts, pairs, n, NL > 0, DSA_POOL_CLS, ret_logits ? ret_logits : tmp, dim, hooks);
}

int dsa__model_open_gguf_memory(const void *data, size_t size, struct dsa_model **ret) {
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = NULL;
        int r;

        r = dsa_gguf_open_memory(data, size, &g);
        if (r < 0)
                return r;
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->arch = DSA_ARCH_BERT;
        r = open_gguf(g, "(memory)", m, false);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}
