/* The attention step of dsa_model_optimize(), for encoders and decoders: choosing the variant
 * and fitting the DSA scorer on calibration text under the model's dense attention. A decoder
 * reads the texts joined by newlines, tokenized and cut into windows of the context length (at
 * most FIT_MAX_SEQS of them); an encoder each text (pair) as it is, bidirectional. And
 * dsa_model_optimize() for decoders: the attention variant and the weights' storage (f16, bf16,
 * int8 with dynamic activation scales); their other weight compression (pruning, mixed
 * precision, static int8) is refused, never ignored. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "calib.h"
#include "model-internal.h"
#include "tokenizer.h"
#include "variant.h"

#define FIT_MAX_SEQS 8
#define FIT_MAX_LEN 4096

/* The calibration texts as token windows: *ret_ids holds them back to back. */
static int calib_windows(const struct dsa_model *m, const struct dsa_optimize_opts *o, int32_t **ret_ids,
                         size_t *ret_total) {
        size_t len = 0, at = 0;
        int r;

        if (!m->tok)
                return dsa__error(-EINVAL, "the model has no tokenizer to read calibration text with");
        for (size_t i = 0; i < o->n_calib; i++)
                len += strlen(o->calib[i]) + 1;
        _cleanup_free_ char *text = malloc(len + 1);
        if (!text)
                return -ENOMEM;
        for (size_t i = 0; i < o->n_calib; i++) {
                size_t n = strlen(o->calib[i]);
                memcpy(text + at, o->calib[i], n);
                at += n;
                text[at++] = '\n';
        }
        struct dsa_encoding e = { 0 };
        r = dsa_tokenizer_encode(m->tok, text, at, NULL, 0, 0, 0, &e);
        if (r < 0)
                return r;
        *ret_ids = e.ids;
        *ret_total = e.n;
        free(e.type_ids);
        return 0;
}

/* Bert calibration hook: every text's queries and keys into the fitter. */
struct bert_fit {
        struct dsa__att_fitter *f;
        int err;
};

static void bert_hook(void *userdata, size_t layer, const float *q, const float *k, size_t ld, size_t T, size_t NH) {
        struct bert_fit *b = userdata;
        int r = dsa__att_fitter_add(b->f, layer, q, ld, k, ld, T, NH, NH, false);
        if (r < 0 && b->err == 0)
                b->err = r;
}

/* --scorer-rank, or the default: 8 for the pooled scorer, 16 for the token one. */
static uint32_t scorer_rank(const struct dsa_optimize_opts *o, const struct dsa__att *a) {
        return o->scorer_rank ? o->scorer_rank : a->token ? 16 : 8;
}

static int fit_bert(struct dsa_model *m, const struct dsa_optimize_opts *o, struct dsa__att *a, double *kl0,
                    double *kl1) {
        struct dsa_bert *bert = m->bert;
        const struct dsa_bert_config *c = &bert->cfg;
        _cleanup_(dsa__att_fitter_freep) struct dsa__att_fitter *f = NULL;
        struct dsa__att keep = bert->att;
        int r;

        r = dsa__att_fitter_new(a->block, c->n_layer, c->n_head, c->n_embd / c->n_head, &f);
        if (r < 0)
                return r;
        struct bert_fit bf = { .f = f };
        struct dsa__bert_hooks hooks = { .userdata = &bf, .attention = bert_hook };
        /* under dense attention, whatever the model ran before */
        dsa__att_init(&bert->att);
        dsa__variant_log(o, "fitting the DSA scorer (rank %u) on %zu texts", scorer_rank(o, a), o->n_calib);
        r = dsa__model_calibrate(m, o->calib, o->calib_pairs, o->n_calib, &hooks, NULL);
        bert->att = keep;
        if (r < 0)
                return r;
        if (bf.err < 0)
                return bf.err;
        return dsa__att_fitter_fit(f, scorer_rank(o, a), a, kl0, kl1);
}

static int fit_llama(struct dsa_model *m, const struct dsa_optimize_opts *o, struct dsa__att *a, double *kl0,
                     double *kl1) {
        const struct dsa_llama_config *c = &m->llama->cfg;
        _cleanup_free_ int32_t *ids = NULL;
        size_t total = 0, n = 0, win = MIN((size_t) c->n_ctx, (size_t) FIT_MAX_LEN);
        const int32_t *seqs[FIT_MAX_SEQS];
        size_t lens[FIT_MAX_SEQS];
        int r;

        r = calib_windows(m, o, &ids, &total);
        if (r < 0)
                return r;
        for (size_t at = 0; at + 2 * a->block <= total && n < FIT_MAX_SEQS; at += win, n++) {
                seqs[n] = ids + at;
                lens[n] = MIN(win, total - at);
        }
        if (n == 0)
                return dsa__error(-EINVAL, "calibration text of %zu tokens is too short for the DSA scorer", total);
        dsa__variant_log(o, "fitting the DSA %s scorer (rank %u) on %zu windows, %zu tokens", a->token ? "token" : "pooled",
                         scorer_rank(o, a), n, MIN(total, n * win));
        return dsa__att_fit(m->llama, seqs, lens, n, scorer_rank(o, a), a, kl0, kl1);
}

int dsa__model_set_attention(struct dsa_model *m, const struct dsa_optimize_opts *o) {
        struct dsa__att *cur = m->llama ? &m->llama->att : &m->bert->att;
        uint32_t n_layer, n_head, head_dim;
        struct dsa__att a;
        char desc[160];
        double kl0 = 0, kl1 = 0;
        int r;

        if (m->llama)
                n_layer = m->llama->cfg.n_layer, n_head = m->llama->cfg.n_head, head_dim = m->llama->cfg.head_dim;
        else
                n_layer = m->bert->cfg.n_layer, n_head = m->bert->cfg.n_head,
                head_dim = m->bert->cfg.n_embd / m->bert->cfg.n_head;
        r = dsa__att_copy(&a, o->attention);
        if (r < 0)
                return r;
        if (m->bert && a.token) {
                r = dsa__error(-EOPNOTSUPP, "the token scorer runs in decoders only so far (--att-scorer pooled "
                               "for BERT)");
                goto fail;
        }
        if (a.kind == DSA_ATT_DSA && !a.heuristic && !a.oracle && !a.wq) {
                if (o->n_calib > 0) {
                        r = m->llama ? fit_llama(m, o, &a, &kl0, &kl1) : fit_bert(m, o, &a, &kl0, &kl1);
                        if (r < 0)
                                goto fail;
                        if (a.token)
                                dsa__variant_log(o, "token scorer: rank %u keeps %.1f%% of the whitened q.k form's "
                                                 "singular values (mean over heads)", a.rank, 100 * kl1);
                        else
                                dsa__variant_log(o, "scorer KL(dense block mass || predicted) per query block: %.4f "
                                                 "at start, %.4f fitted", kl0, kl1);
                } else if (cur->wq && cur->block == a.block) {
                        struct dsa__att mine;
                        if (a.token && !cur->token) {
                                r = dsa__error(-EINVAL, "the model's DSA scorer is the pooled one: the token "
                                               "scorer needs --calib");
                                goto fail;
                        }
                        r = dsa__att_copy(&mine, cur);
                        if (r < 0)
                                goto fail;
                        a.rank = mine.rank, a.n_layer = mine.n_layer, a.n_head = mine.n_head;
                        a.head_dim = mine.head_dim, a.wq = mine.wq, a.wk = mine.wk, a.bias = mine.bias;
                        a.token = mine.token; /* the scorer's kind comes with it, and its stride */
                        if (a.stride == 0)
                                a.stride = mine.stride;
                        dsa__variant_log(o, "keeping the model's fitted DSA %s scorer (rank %u)",
                                         a.token ? "token" : "pooled", a.rank);
                } else {
                        r = dsa__error(-EINVAL, "DSA needs --calib to fit its scorer (or a model that has one of "
                                       "this block size, or the heuristic scorer)");
                        goto fail;
                }
        }
        if (a.stride == 0) /* not given and not kept */
                a.stride = DSA_ATT_STRIDE;
        r = dsa__att_check(&a, n_layer, n_head, head_dim);
        if (r < 0)
                goto fail;
        dsa__att_clear(cur);
        *cur = a;
        dsa__info_remove(&m->info, "scorer_kl");
        dsa__att_describe(&a, desc, sizeof(desc));
        for (char *p = desc; *p; p++)
                if (*p == ' ')
                        *p = ',';
        if ((r = dsa__info_setf(&m->info, "attention", "%s", desc)) < 0 || (kl1 > 0 && !a.token && (r = dsa__info_setf(&m->info, "scorer_kl", "%.5f", kl1)) < 0))
                return r;
        return 0;
fail:
        dsa__att_clear(&a);
        return r;
}

/* The decoder's matrices (every layer's, the output head) and token embeddings as fmt; int8
 * with dynamic per-row activation scales. Matrices already in fmt are left as they are. */
static int reformat_lm(struct dsa__linear *lin, enum dsa_wformat fmt, const char *what, size_t layer) {
        int r = lin->fmt == fmt ? 0 : dsa__linear_reformat(lin, fmt, 0.0f);
        return r < 0 ? dsa__error(r, "cannot convert layer %zu %s to %s", layer, what, dsa_wformat_name(fmt)) : 0;
}

static int quantize_llama(struct dsa_llama *l, enum dsa_wformat fmt) {
        int r;

        for (size_t i = 0; i < l->cfg.n_layer; i++) {
                struct dsa_llama_layer *y = &l->layers[i];
                if ((r = reformat_lm(&y->qkv, fmt, "qkv", i)) < 0 || (r = reformat_lm(&y->o, fmt, "attn_output", i)) < 0 ||
                    (r = reformat_lm(&y->gate_up, fmt, "ffn_gate/up", i)) < 0 ||
                    (r = reformat_lm(&y->down, fmt, "ffn_down", i)) < 0)
                        return r;
        }
        if (l->lm_head.fmt != fmt && (r = dsa__linear_reformat(&l->lm_head, fmt, 0.0f)) < 0)
                return dsa__error(r, "cannot convert the output head to %s", dsa_wformat_name(fmt));
        return dsa__embed_reformat(&l->wte, fmt);
}

/* prev's "attention-..." step, if any, cut out (a new attention step replaces it). */
static void drop_attention_step(char *prev) {
        char *at = strstr(prev, "attention-");
        if (!at)
                return;
        char *end = strchr(at, '+');
        if (end)
                memmove(at, end + 1, strlen(end + 1) + 1);
        else
                *(at > prev ? at - 1 : at) = 0;
}

int dsa__model_optimize_lm(struct dsa_model *m, const struct dsa_optimize_opts *o) {
        struct dsa_llama *l = m->llama;
        char prev[256], method[256] = "";
        int r;

        if (o->mixed || o->prune_heads > 0 || o->prune_ffn > 0 || o->sparsity > 0 || o->token_keep >= 0)
                return dsa__error(-EOPNOTSUPP, "for decoders, optimize makes attention variants and f16, bf16 "
                                  "or int8 weights so far; mixed precision and pruning are BERT-only");
        if (o->quant == DSA_WFORMAT_Q8 && o->act != DSA_ACT_DYNAMIC)
                return dsa__error(-EOPNOTSUPP, "decoders take int8 with dynamic activation scales only so far "
                                  "(--act dynamic)");
        if (!o->attention && o->quant == DSA_WFORMAT_F32)
                return dsa__error(-EINVAL, "nothing to do: give --attention or --quant for a decoder");
        snprintf(prev, sizeof(prev), "%s", dsa__info_get(&m->info, "method") ? dsa__info_get(&m->info, "method") : "");
        /* The attention first: a fitted scorer learns from the model's own (unquantized) attention. */
        if (o->attention) {
                if ((r = dsa__model_set_attention(m, o)) < 0)
                        return r;
                drop_attention_step(prev);
                snprintf(method, sizeof(method), "attention-%s", dsa__info_get(&m->info, "attention"));
        }
        if (o->quant != DSA_WFORMAT_F32) {
                if ((r = quantize_llama(l, o->quant)) < 0)
                        return r;
                snprintf(method + strlen(method), sizeof(method) - strlen(method), "%s%s", *method ? "+" : "",
                         dsa_wformat_name(o->quant));
                if ((r = dsa__info_set(&m->info, "quant", dsa_wformat_name(o->quant))) < 0 ||
                    (o->quant == DSA_WFORMAT_Q8 && (r = dsa__info_set(&m->info, "act_quant", "dynamic")) < 0))
                        return r;
        }
        dsa__info_remove(&m->info, "eval.");
        dsa__info_remove(&m->info, "bench.");
        if (o->attention) {
                dsa__info_remove(&m->info, "calib_sha256");
                dsa__info_remove(&m->info, "calib_texts");
        }
        const bool fitted = o->attention && l->att.kind == DSA_ATT_DSA && !l->att.heuristic && !l->att.oracle &&
                            o->n_calib;
        if ((r = dsa__info_setf(&m->info, "method", "%s%s%s", prev, *prev ? "+" : "", method)) < 0 ||
            (o->calib_hash && fitted && (r = dsa__info_setf(&m->info, "calib_sha256", "%s", o->calib_hash)) < 0) ||
            (r = dsa__info_setf(&m->info, "parent", "%s", o->parent ? o->parent : m->source ? m->source : "")) < 0 ||
            (r = dsa__info_setf(&m->info, "weight_bytes", "%zu", dsa__llama_weight_bytes(l))) < 0)
                return r;
        return 0;
}
