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

struct dsa_model {
        enum dsa_arch arch;
        struct dsa_bert *bert;
        struct dsa_tokenizer *tok;
        char *source;
};


struct dsa_model *dsa_model_free(struct dsa_model *m) {
        if (!m)
                return NULL;
        dsa__bert_free(m->bert);
        dsa_tokenizer_free(m->tok);
        free(m->source);
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

static int open_gguf(const char *path, struct dsa_model *m) {
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = NULL;
        struct dsa_bert_config c = { 0 };
        const struct dsa_tensor_view *v;
        uint32_t pooling = LLAMA_POOLING_CLS;
        bool causal = false;
        const char *s;
        size_t n;
        int r;

        r = dsa_gguf_open(path, &g);
        if (r < 0)
                return r;
        if (dsa_gguf_get_str(g, "general.architecture", &s, &n) < 0)
                return dsa__error(-EBADMSG, "'%s' has no general.architecture", path);
        if (n != 4 || memcmp(s, "bert", 4) != 0)
                return dsa__error(-EOPNOTSUPP, "architecture '%.*s' is not supported (only 'bert')",
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

        r = dsa__bert_load(&c, gguf_lookup, g, &m->bert);
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

        if (dsa_gguf_find(g, "tokenizer.ggml.tokens") >= 0) {
                r = dsa_tokenizer_from_gguf(g, &m->tok);
                if (r < 0)
                        return r;
                if (dsa_tokenizer_n_vocab(m->tok) > c.n_vocab)
                        return dsa__error(-EBADMSG, "tokenizer has %zu tokens, more than token_embd's %u rows",
                                          dsa_tokenizer_n_vocab(m->tok), c.n_vocab);
        }

        if (dsa_gguf_get_str(g, "dsa.source", &s, &n) >= 0 && n < 4096)
                m->source = strndup(s, n);
        else
                m->source = strdup(path);
        if (!m->source)
                return -ENOMEM;
        return 0;
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
        if (S_ISDIR(st.st_mode)) {
                r = dsa__hf_import(path, &m->bert, &m->tok);
                if (r < 0)
                        return r;
                m->source = strdup(path);
                if (!m->source)
                        return -ENOMEM;
        } else {
                r = open_gguf(path, m);
                if (r < 0)
                        return r;
        }
        r = dsa__bert_set_threads(m->bert, 0);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

int dsa_model_set_threads(struct dsa_model *m, unsigned n) {
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

/* ---- GGUF save */

/* fp32 -> IEEE half, round to nearest even; overflow to inf, NaN stays NaN. */
uint16_t dsa__f32_to_f16(float f) {
        uint32_t x;
        memcpy(&x, &f, sizeof(x));
        uint16_t sign = (uint16_t) ((x >> 16) & 0x8000u);
        uint32_t ax = x & 0x7fffffffu;

        if (ax > 0x7f800000u)
                return sign | 0x7e00u;
        if (ax >= 0x47800000u) /* >= 65536 or inf */
                return sign | 0x7c00u;
        if (ax >= 0x38800000u) { /* normal half: rebias 127 -> 15, round the 13 dropped bits */
                uint32_t r = ax - 0x38000000u;
                r += 0x0fffu + ((r >> 13) & 1u);
                return sign | (uint16_t) (r >> 13); /* a carry into the exponent is right, up to inf */
        }
        if (ax <= 0x33000000u) /* <= 2^-25: ties to even give 0 */
                return sign;
        /* Subnormal half: value = m * 2^-24 with m < 1024. */
        uint32_t e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e;
        uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1u), mid = 1u << (shift - 1u);
        if (rem > mid || (rem == mid && (h & 1u)))
                h++;
        return sign | (uint16_t) h;
}

uint16_t dsa__f32_to_bf16(float f) {
        uint32_t x;
        memcpy(&x, &f, sizeof(x));
        if ((x & 0x7fffffffu) > 0x7f800000u)
                return (uint16_t) ((x >> 16) | 0x40u);
        x += 0x7fffu + ((x >> 16) & 1u);
        return (uint16_t) (x >> 16);
}

struct saver {
        struct dsa_gguf_writer *w;
        enum dsa_type wtype;
        uint16_t *conv; /* converted weights, one buffer for the whole file */
        size_t conv_used;
        float *mats; /* the packed layer matrices unpacked, one buffer for the whole file */
        size_t mats_used;
};

/* p unpacked into the saver's buffer, which the writer reads from until the file is written. */
static const float *unpack(struct saver *s, const struct dsa_packed_f32 *p) {
        float *o = s->mats + s->mats_used;
        dsa_packed_f32_unpack(p, o);
        s->mats_used += dsa_packed_f32_rows(p) * dsa_packed_f32_cols(p);
        return o;
}

/* data (ne1, ne0) row-major fp32; ne1 == 0 for a vector. Matrices go out as wtype. */
static int save_tensor(struct saver *s, const char *name, const float *data, uint64_t ne0, uint64_t ne1,
                       bool matrix) {
        uint64_t ne[2] = { ne0, ne1 ? ne1 : 1 };
        uint32_t nd = ne1 ? 2 : 1;
        size_t n = (size_t) (ne0 * ne[1]);
        int r;

        if (!matrix || s->wtype == DSA_TYPE_F32)
                r = dsa_gguf_writer_add_tensor(s->w, name, DSA_TYPE_F32, nd, ne, data);
        else {
                uint16_t *o = s->conv + s->conv_used;
                for (size_t i = 0; i < n; i++)
                        o[i] = s->wtype == DSA_TYPE_F16 ? dsa__f32_to_f16(data[i]) : dsa__f32_to_bf16(data[i]);
                s->conv_used += n;
                r = dsa_gguf_writer_add_tensor(s->w, name, s->wtype, nd, ne, o);
        }
        if (r < 0)
                return dsa__error(r, "cannot add tensor '%s' to the GGUF writer", name);
        return 0;
}

static int save_bert(const struct dsa_model *m, struct saver *s) {
        const struct dsa_bert *b = m->bert;
        const struct dsa_bert_config *c = &b->cfg;
        const size_t C = c->n_embd, F = c->n_ff;
        struct dsa_gguf_writer *w = s->w;
        char name[96];
        int r;

        uint32_t pooling = c->n_labels > 0 && c->has_pooler ? LLAMA_POOLING_RANK : LLAMA_POOLING_CLS;
        switch (b->default_pool) {
        case DSA_POOL_MEAN:
                pooling = LLAMA_POOLING_MEAN;
                break;
        case DSA_POOL_NONE:
                pooling = LLAMA_POOLING_NONE;
                break;
        default:
                break;
        }
        uint32_t ftype = s->wtype == DSA_TYPE_F16    ? LLAMA_FTYPE_MOSTLY_F16
                         : s->wtype == DSA_TYPE_BF16 ? LLAMA_FTYPE_MOSTLY_BF16
                                                     : LLAMA_FTYPE_ALL_F32;

        if ((r = dsa_gguf_writer_set_str(w, "general.architecture", "bert")) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "general.file_type", ftype)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.context_length", c->n_ctx)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.embedding_length", c->n_embd)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.feed_forward_length", c->n_ff)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.block_count", c->n_layer)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.attention.head_count", c->n_head)) < 0 ||
            (r = dsa_gguf_writer_set_f32(w, "bert.attention.layer_norm_epsilon", c->eps)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "bert.attention.causal", false)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "bert.pooling_type", pooling)) < 0 ||
            (r = dsa_gguf_writer_set_str(w, "dsa.bert.hidden_act",
                                         c->act == DSA_ACT_GELU_TANH ? "gelu_tanh" : "gelu")) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, "dsa.bert.type_vocab_size", c->n_type)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "dsa.bert.has_pooler", c->has_pooler)) < 0 ||
            (r = dsa_gguf_writer_set_str(w, "dsa.source", m->source ? m->source : "")) < 0)
                return dsa__error(r, "cannot set GGUF metadata");
        if (c->n_labels > 0) {
                r = dsa_gguf_writer_set_arr_str(w, "bert.classifier.output_labels", (const char *const *) b->labels,
                                                c->n_labels);
                if (r < 0)
                        return dsa__error(r, "cannot set bert.classifier.output_labels");
        }
        if (m->tok) {
                r = dsa_tokenizer_to_gguf(m->tok, w);
                if (r < 0)
                        return r;
        }

        if ((r = save_tensor(s, "token_embd.weight", b->wte, C, c->n_vocab, true)) < 0 ||
            (r = save_tensor(s, "token_types.weight", b->wtt, C, c->n_type, false)) < 0 ||
            (r = save_tensor(s, "position_embd.weight", b->wpe, C, c->n_ctx, false)) < 0 ||
            (r = save_tensor(s, "token_embd_norm.weight", b->emb_ln_g, C, 0, false)) < 0 ||
            (r = save_tensor(s, "token_embd_norm.bias", b->emb_ln_b, C, 0, false)) < 0)
                return r;
        for (size_t i = 0; i < c->n_layer; i++) {
                const struct dsa_bert_layer *y = &b->layers[i];
                const float *qkv_w = unpack(s, y->qkv_w);
                const struct {
                        const char *name;
                        const float *w, *bias;
                        size_t in, out; /* out 0: a LayerNorm */
                } t[] = {
                        { "attn_q", qkv_w, y->qkv_b, C, C },
                        { "attn_k", qkv_w + C * C, y->qkv_b + C, C, C },
                        { "attn_v", qkv_w + 2 * C * C, y->qkv_b + 2 * C, C, C },
                        { "attn_output", unpack(s, y->o_w), y->o_b, C, C },
                        { "attn_output_norm", y->ln1_g, y->ln1_b, C, 0 },
                        { "ffn_up", unpack(s, y->up_w), y->up_b, C, F },
                        { "ffn_down", unpack(s, y->down_w), y->down_b, F, C },
                        { "layer_output_norm", y->ln2_g, y->ln2_b, C, 0 },
                };
                for (size_t j = 0; j < ELEMENTSOF(t); j++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s.weight", i, t[j].name);
                        r = save_tensor(s, name, t[j].w, t[j].in, t[j].out, t[j].out != 0);
                        if (r < 0)
                                return r;
                        snprintf(name, sizeof(name), "blk.%zu.%s.bias", i, t[j].name);
                        r = save_tensor(s, name, t[j].bias, t[j].out ? t[j].out : t[j].in, 0, false);
                        if (r < 0)
                                return r;
                }
        }
        if (b->pool_w &&
            ((r = save_tensor(s, "cls.weight", b->pool_w, C, C, true)) < 0 ||
             (r = save_tensor(s, "cls.bias", b->pool_b, C, 0, false)) < 0))
                return r;
        if (b->cls_w &&
            ((r = save_tensor(s, "cls.output.weight", b->cls_w, C, c->n_labels, true)) < 0 ||
             (r = save_tensor(s, "cls.output.bias", b->cls_b, c->n_labels, 0, false)) < 0))
                return r;
        return 0;
}

int dsa_model_save(const struct dsa_model *m, const char *path, enum dsa_type wtype) {
        _cleanup_(dsa_gguf_writer_freep) struct dsa_gguf_writer *w = NULL;
        _cleanup_free_ uint16_t *conv = NULL;
        _cleanup_free_ float *mats = NULL;
        int r;

        if (!m || !m->bert || !path)
                return -EINVAL;
        if (wtype != DSA_TYPE_F32 && wtype != DSA_TYPE_F16 && wtype != DSA_TYPE_BF16)
                return dsa__error(-EOPNOTSUPP, "cannot save weights as %s (F32, F16 or BF16)",
                                  dsa_type_name(wtype) ? dsa_type_name(wtype) : "an unknown type");
        /* dsa__bert_load() checked both sizes in bytes of float, so neither sum can overflow. */
        mats = malloc(m->bert->packed_floats * sizeof(float));
        if (!mats)
                return -ENOMEM;
        if (wtype != DSA_TYPE_F32) {
                /* Every matrix lives in the arena or among the packed ones. */
                conv = malloc((m->bert->arena_floats + m->bert->packed_floats) * sizeof(uint16_t));
                if (!conv)
                        return -ENOMEM;
        }
        w = dsa_gguf_writer_new();
        if (!w)
                return -ENOMEM;
        struct saver s = { .w = w, .wtype = wtype, .conv = conv, .mats = mats };
        r = save_bert(m, &s);
        if (r < 0)
                return r;
        r = dsa_gguf_writer_write(w, path);
        if (r < 0)
                return r;
        return 0;
}

/* ---- running */

int dsa_model_forward(const struct dsa_model *m, const struct dsa_batch *b, float *ret_hidden,
                      struct dsa_trace *trace) {
        if (!m || !m->bert || !b || !ret_hidden)
                return -EINVAL;
        return dsa__bert_forward(m->bert, b, ret_hidden, trace);
}

int dsa_model_pool(const struct dsa_model *m, const struct dsa_batch *b, const float *hidden,
                   enum dsa_pool mode, float *out) {
        if (!m || !m->bert || !b || !hidden || !out)
                return -EINVAL;
        return dsa__bert_pool(m->bert, b, hidden, mode, out);
}

int dsa_model_classify(const struct dsa_model *m, const struct dsa_batch *b, const float *hidden,
                       float *ret_logits) {
        if (!m || !m->bert || !b || !hidden || !ret_logits)
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
                     bool classify, enum dsa_pool mode, float *ret, size_t dim) {
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
                struct dsa_batch batch = { .B = B, .T = T, .ids = ids, .type_ids = types, .mask = mask };

                for (size_t i = 0; i < B; i++) {
                        const struct dsa_encoding *e = &enc.e[order[start + i]];
                        for (size_t t = 0; t < T; t++) {
                                bool real = t < e->n;
                                ids[i * T + t] = real ? e->ids[t] : pad;
                                types[i * T + t] = real && e->type_ids ? e->type_ids[t] : 0;
                                mask[i * T + t] = real;
                        }
                }
                r = dsa__bert_forward(m->bert, &batch, hidden, NULL);
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
        if (!m || !m->bert)
                return -EINVAL;
        if (m->bert->cfg.n_labels == 0)
                return dsa__error(-EOPNOTSUPP, "the model has no classifier head");
        return run_texts(m, texts, pairs, n, true, DSA_POOL_CLS, ret_logits, m->bert->cfg.n_labels);
}

int dsa_model_embed_texts(const struct dsa_model *m, const char *const *texts, size_t n, enum dsa_pool mode,
                          float *ret_emb) {
        if (!m || !m->bert)
                return -EINVAL;
        if (mode == DSA_POOL_NONE)
                return dsa__error(-EINVAL, "pooling 'none' gives one vector per token: use dsa_model_forward()");
        if (mode == DSA_POOL_POOLER && !m->bert->pool_w)
                return dsa__error(-EOPNOTSUPP, "the model has no pooler");
        return run_texts(m, texts, NULL, n, false, mode, ret_emb, m->bert->cfg.n_embd);
}
