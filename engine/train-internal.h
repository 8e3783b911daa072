/* Private to engine/: the trainer's state, shared by train.c (parameters, optimizer),
 * train-pass.c (forward and backward), train-io.c (export, checkpoints) and distill.c. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attention-variant.h"
#include "basic/rng.h"
#include "bert.h"
#include "train.h"

/* One parameter tensor: ne0 innermost (a (OC,C) matrix has ne0 = C, ne1 = OC). The model's own
 * parameters live in the trainer's four arenas at off; extra ones (distillation's projections)
 * own their buffers. */
struct dsa__tparam {
        char name[64];
        size_t ne0, ne1, off;
        bool decay;
        float *w, *g, *m, *v;
};

/* A linear layer: parameter indices of weight (out,in) and bias; QAT state: the fake-quantized
 * weight and the running max |input|. */
struct dsa__tlin {
        size_t w, b;
        size_t in, out;
        float *wq;
        float range;
};

struct dsa__tlayer {
        size_t NH, A, F;
        float token_keep; /* token pruning after this layer: the model's, 1 for none */
        float *token_score; /* the model's learned token score (C + 1, a copy, not trained) or NULL */
        struct dsa__tlin qkv, o, up, down;
        size_t ln1_g, ln1_b, ln2_g, ln2_b;
};

/* A layer's activations, (N = B T) rows each. */
struct dsa__tlacts {
        float *qkv;                 /* (N,3A) */
        float *att, *att_keep;      /* (B,NH,T,T) */
        float *ctx;                 /* (N,A) */
        float *ao, *ao_keep;        /* (N,C) attention output dense, dropout */
        float *res1, *ln1_mean, *ln1_rstd, *a1; /* (N,C), (N), (N), (N,C) */
        float *up, *gl;             /* (N,F) before and after GELU */
        float *dn, *dn_keep;        /* (N,C) */
        float *res2, *ln2_mean, *ln2_rstd;
        float *xq_qkv, *xq_o, *xq_up, *xq_down; /* QAT: fake-quantized inputs of the four linears */
        float *dqkv_ext;            /* (N,3A) extra loss gradient */
};

struct dsa__tacts {
        size_t B, T;
        size_t cap_B, cap_N, cap_TT; /* capacity: rows, tokens, rows x T^2 */
        bool train, have_labels, valid;
        int32_t *ids, *types, *labels; /* (N), (N), (B) */
        uint8_t *mask;                 /* (N) */
        /* (L, N): the tokens each layer's attention sees as keys, the ones token pruning kept
         * so far (layer 0: mask); tok_score (N): their attention received, scratch. */
        uint8_t *alive;
        float *tok_score;
        float **h, **dh_ext;           /* L + 1 of (N,C) */
        float *emb_in, *emb_mean, *emb_rstd, *emb_ln, *emb_keep;
        struct dsa__tlacts *l;
        float *cls_x, *pool_pre, *pool_out, *pool_keep, *pool_d; /* (B,C) */
        float *xq_pool, *xq_cls;                                 /* unused: head stays fp32 */
        float *logits, *probs, *dlogits_ext, *dlogits;           /* (B,L) */
        float loss;
        /* Backward scratch. */
        float *d0, *d1, *d2; /* (N,C) */
        float *dF, *dF2;     /* (N,Fmax) */
        float *dA;           /* (N,3 Amax) */
        float *datt;         /* (B,NHmax,T,T) */
};

struct dsa_trainer {
        const struct dsa_model *model; /* tokenizer, labels */
        struct dsa_bert_config cfg;
        struct dsa_train_opts opts;
        struct dsa__tparam *p;
        size_t n_p, cap_p, n_main;
        size_t n_floats, n_main_floats;
        float *w, *g, *m, *v; /* arenas of the model's parameters */
        size_t g_wte, g_wpe, g_wtt, g_eln_g, g_eln_b;
        struct dsa__tlayer *layers;
        struct dsa__tlin pool, cls; /* pool unused without a pooler */
        uint64_t step;
        uint64_t rng; /* dropout state */
        float ce_weight;
        bool wq_stale; /* QAT weights need re-quantizing */
        uint32_t *src_channels; /* a distilled student: the teacher channel each channel started from */
        struct dsa__tacts a;
};

float *dsa__tw(const struct dsa_trainer *t, size_t i);
float *dsa__tg(const struct dsa_trainer *t, size_t i);
/* The index of the parameter called name, or -ENOENT. */
int dsa__trainer_find(const struct dsa_trainer *t, const char *name);
/* Copies the weights of m (same shape) into t. */
int dsa__trainer_import(struct dsa_trainer *t, const struct dsa_model *m);
/* The schedule's learning rate at step (0-based). */
float dsa__trainer_lr(const struct dsa_trainer *t, uint64_t step);

float dsa__randn(uint64_t *s);

static inline unsigned dsa__cores(unsigned n) {
        return n ? n : dsa__usable_cpus();
}
