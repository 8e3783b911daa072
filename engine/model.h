/* A loaded model: architecture, weights ready for the forward pass, tokenizer and labels, from
 * a GGUF file (ours or llama.cpp's) or a Hugging Face folder (imported on the fly). This is the
 * engine's entry point for dsactl's offline verbs and, later, dsad's workers. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/macro.h"

#include "tensor.h"

struct dsa_tokenizer;

enum dsa_arch {
        DSA_ARCH_BERT,
        DSA_ARCH_LLAMA, /* decoder: RMSNorm, rotary positions, SwiGLU, grouped-query attention */
};

enum dsa_pool {
        DSA_POOL_CLS,    /* last hidden state of [CLS] */
        DSA_POOL_MEAN,   /* mean over non-padding tokens */
        DSA_POOL_POOLER, /* tanh(W * h[CLS] + b), BERT's pooler */
        DSA_POOL_NONE,   /* every token's last hidden state */
};

enum dsa_act {
        DSA_ACT_GELU_ERF,  /* HF "gelu" */
        DSA_ACT_GELU_TANH, /* HF "gelu_new", "gelu_pytorch_tanh" */
};

struct dsa_bert_config {
        uint32_t n_vocab;
        uint32_t n_ctx;   /* max_position_embeddings */
        uint32_t n_embd;  /* C */
        uint32_t n_head;  /* NH; C % NH == 0, NH need not be a power of two */
        uint32_t n_ff;    /* intermediate size, any */
        uint32_t n_layer;
        uint32_t n_type;  /* type_vocab_size */
        float eps;        /* layer_norm_eps */
        enum dsa_act act;
        bool has_pooler;
        uint32_t n_labels; /* 0: no classifier head */
};

/* A Llama-family decoder (LlamaForCausalLM; GGUF architecture "llama"). */
struct dsa_llama_config {
        uint32_t n_vocab;
        uint32_t n_ctx;     /* max_position_embeddings: the longest sequence accepted */
        uint32_t n_embd;    /* C */
        uint32_t n_head;    /* NH query heads */
        uint32_t n_head_kv; /* NKV key/value heads, NH % NKV == 0 (grouped-query attention) */
        uint32_t head_dim;  /* HS, even (rotary pairs); NH * HS need not equal C */
        uint32_t n_ff;      /* F, SwiGLU width */
        uint32_t n_layer;
        float eps;          /* rms_norm_eps */
        float rope_theta;   /* rotary base */
};

struct dsa_model;

/* path: a GGUF file or a Hugging Face folder. */
int dsa_model_open(const char *path, struct dsa_model **ret);
struct dsa_model *dsa_model_free(struct dsa_model *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_model *, dsa_model_free);

enum dsa_arch dsa_model_arch(const struct dsa_model *m);
/* The config of a BERT (NULL for other architectures), of a Llama decoder (NULL otherwise). */
const struct dsa_bert_config *dsa_model_bert_config(const struct dsa_model *m);
const struct dsa_llama_config *dsa_model_llama_config(const struct dsa_model *m);
const struct dsa_tokenizer *dsa_model_tokenizer(const struct dsa_model *m);
/* Label name of class i (config.json id2label or GGUF labels; "LABEL_i" when absent). */
const char *dsa_model_label(const struct dsa_model *m, size_t i);

/* The pooling the model was made for: GGUF bert.pooling_type (mean, cls, rank -> pooler), else
 * DSA_POOL_POOLER for a classifier with a pooler, DSA_POOL_CLS otherwise. */
enum dsa_pool dsa_model_default_pool(const struct dsa_model *m);
/* Where the model came from: the HF folder or GGUF path it was opened from, or the dsa.source
 * recorded when an imported model was saved. */
const char *dsa_model_source(const struct dsa_model *m);

/* Writes the model as GGUF with llama.cpp's BERT names and keys plus ours under dsa.*;
 * wtype F32, F16 or BF16 for 2-D weights (norms, biases and embeddings of positions stay F32).
 * Atomic. */
int dsa_model_save(const struct dsa_model *m, const char *path, enum dsa_type wtype);
/* Writes the model with every matrix in the format it is held in (a variant made by
 * dsa_model_optimize(): int8, f16, sparse, pruned shapes, token pruning), plus its recorded
 * facts. Atomic. */
int dsa_model_save_variant(const struct dsa_model *m, const char *path);

/* One batch of tokenized inputs, padded to T: ids (B,T), type_ids (B,T) or NULL for zeros,
 * mask (B,T) 1 for real tokens, 0 for padding. ragged: padding costs nothing (the forward packs
 * the real tokens of all rows together and runs attention per row on its own length); the
 * output rows of padding are then zeros instead of what a padded forward computes there. The
 * forward also packs, whatever ragged says, when the model prunes tokens.
 * first_only: only each row's first token ([CLS]) is wanted from the last layer (classifiers,
 * CLS and pooler embeddings); the last layer then computes the keys and values of every token
 * but the rest for the first one alone, and the other output rows hold the previous layer's
 * state. Implies ragged. */
struct dsa_batch {
        size_t B, T;
        const int32_t *ids;
        const int32_t *type_ids;
        const uint8_t *mask;
        bool ragged;
        bool first_only;
};

/* Optional intermediates for parity tests: when non-NULL, hidden[l] (B,T,C) receives the
 * output of embeddings (l = 0) and of each layer (l = 1..n_layer), attn[l] (B,NH,T,T) the
 * attention probabilities of layer l. Arrays are caller-owned. */
struct dsa_trace {
        float **hidden;
        float **attn;
};

/* Threads for dsa_model_forward() (and the texts conveniences): n >= 1 as given, 0 for every
 * core this process may run on (sched_getaffinity). dsa_model_open() starts with 0. The model
 * owns a pool of n - 1 workers plus the calling thread, which sleep when idle; OpenBLAS is set to
 * one thread so the two never oversubscribe (a process-wide setting). Returns the thread count
 * now used, or -errno. Not to be called while another thread runs the model. */
int dsa_model_set_threads(struct dsa_model *m, unsigned n);

/* Runs the encoder. ret_hidden (B,T,C), caller-owned: last hidden state. Several threads may run
 * one model at once; only one forward at a time gets the model's threads and cached
 * activations, the others run on their own thread with activations of their own. */
int dsa_model_forward(const struct dsa_model *m, const struct dsa_batch *b, float *ret_hidden,
                      struct dsa_trace *trace);

/* hidden (B,T,C) -> out (B,C) by mode (not DSA_POOL_NONE). -EOPNOTSUPP for POOLER without one. */
int dsa_model_pool(const struct dsa_model *m, const struct dsa_batch *b, const float *hidden,
                   enum dsa_pool mode, float *out);

/* hidden (B,T,C) -> logits (B,n_labels) through pooler + classifier. -EOPNOTSUPP without a head. */
int dsa_model_classify(const struct dsa_model *m, const struct dsa_batch *b, const float *hidden,
                       float *ret_logits);

/* Convenience for the CLI and tests: tokenizes n texts (pairs[i] may be NULL or pairs NULL),
 * batches them by length (at most max_batch per forward; 0 = 32) and returns per text.
 * logits: (n, n_labels), caller-owned. */
int dsa_model_classify_texts(const struct dsa_model *m, const char *const *texts,
                             const char *const *pairs, size_t n, float *ret_logits);
/* emb: (n, C) for pooled modes. For DSA_POOL_NONE use dsa_model_forward directly. */
int dsa_model_embed_texts(const struct dsa_model *m, const char *const *texts, size_t n,
                          enum dsa_pool mode, float *ret_emb);

/* ---- Decoders (DSA_ARCH_LLAMA); -EOPNOTSUPP for other architectures. */

/* What a decoder forward measured: time in attention (scorer and block choice included), in the
 * whole forward up to the final hidden states, and in the output head (logits or NLL); and how
 * many (query block, key block) pairs the attention computed out of those the causal mask
 * allows (all layers and heads; equal for dense). Within attention: rows_ns, the pass over the
 * rows (rotary, keys and values packed, block means, the token scorer's projections and bytes;
 * wall time); select_ns and attend_ns, the block choice (the scorer's block maxima and softmax
 * included) and the streaming kernel over the chosen blocks (summaries included), each summed
 * over the threads (CPU time: divide by the threads for their share of the wall time; 0 for
 * linear attention, which has neither). */
struct dsa_lm_stats {
        uint64_t attention_ns, forward_ns, head_ns;
        uint64_t blocks_kept, blocks_visible;
        uint64_t rows_ns, select_ns, attend_ns;
};

/* One forward over ids (T tokens, 1 <= T <= n_ctx; values < n_vocab) with the model's attention
 * variant. ret_logits (T, n_vocab) or NULL; ret_hidden (T, C) or NULL (the final normed state);
 * stats or NULL (added to). */
int dsa_model_lm_forward(const struct dsa_model *m, const int32_t *ids, size_t T, float *ret_logits,
                         float *ret_hidden, struct dsa_lm_stats *stats);
/* ret_nll (T - 1): -log p(ids[t + 1] | ids[0..t]) for t < T - 1 (natural log), T >= 2, without
 * the (T, n_vocab) logits ever held at once. stats as above. */
int dsa_model_lm_nll(const struct dsa_model *m, const int32_t *ids, size_t T, double *ret_nll,
                     struct dsa_lm_stats *stats);
/* Greedy decoding: appends n tokens to ids (T), ret (T + n) receives prompt and continuation;
 * stops early at the tokenizer's end-of-text token when stop_at_eos. Returns the tokens written. */
int dsa_model_lm_generate(const struct dsa_model *m, const int32_t *ids, size_t T, size_t n, bool stop_at_eos,
                          int32_t *ret);
/* Sequences longer than n_ctx (rotary positions extrapolated): for speed sweeps only. */
int dsa_model_lm_allow_long(struct dsa_model *m, bool allow);
