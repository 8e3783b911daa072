/* Private to engine/: BERT weights as the forward pass uses them (fp32, one owned arena, Q/K/V
 * fused per layer), the loader shared by the Hugging Face and GGUF importers, and the forward
 * pass itself. Tensor names passed to the loader's lookup are llama.cpp's ("blk.0.attn_q.weight");
 * each importer maps them onto its own naming. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attention-variant.h"
#include "basic/macro.h"
#include "linear.h"
#include "model.h"
#include "tensor.h"

struct dsa_tokenizer;
struct json_object;
struct dsa_threadpool;
struct dsa__bert_scratch;

/* The four matrices of a layer, each in its variant's weight format (linear.h). A layer keeps
 * n_head of the model's heads (structured pruning removes the others: Q/K/V have n_head * HS
 * rows, the output dense as many columns) and n_ff FFN neurons, at least one of each (a file
 * with none is refused). */
struct dsa_bert_layer {
        uint32_t n_head, n_ff;
        struct dsa__linear qkv;         /* (3 n_head HS, C): Q rows, then K, then V */
        float *qkv_b;                   /* (3 n_head HS) */
        struct dsa__linear o;           /* (C, n_head HS) */
        float *o_b;                     /* (C) */
        float *ln1_g, *ln1_b;           /* attention output LayerNorm (C) */
        struct dsa__linear up;          /* (n_ff, C) */
        float *up_b;                    /* (n_ff) */
        struct dsa__linear down;        /* (C, n_ff) */
        float *down_b;                  /* (C) */
        float *ln2_g, *ln2_b;           /* layer output LayerNorm (C) */
        /* Dynamic token pruning: after this layer keep this fraction of each row's tokens
         * ([CLS] always, then the highest scores); 1 keeps all. The score is the attention a
         * token received in this layer, or with token_score (C + 1, owned; only on a layer that
         * prunes) a learned one read off the layer's output (dsa__token_score). */
        float token_keep;
        float *token_score;
};

/* The token embedding table in its stored format: F32, F16, BF16 or Q8 (int8 rows with one
 * scale per row). */
struct dsa__embed {
        enum dsa_wformat fmt;
        size_t rows, cols;
        void *data;    /* rows x cols values: owned, or borrowed */
        float *scales; /* Q8: (rows), owned */
        bool borrowed; /* data is a view of the model's mapped file (dsa_model.map), not ours */
};

struct dsa_bert {
        struct dsa_bert_config cfg;
        float *arena; /* owns every float below but the layer matrices and the token embeddings */
        size_t arena_floats;
        struct dsa__embed wte; /* (V,C) */
        float *wpe;   /* (n_ctx,C) */
        float *wtt;   /* (n_type,C); zeros when the file has none */
        float *emb_ln_g, *emb_ln_b;
        struct dsa_bert_layer *layers;
        size_t ff_max; /* the most FFN neurons of a layer: what activations are sized for */
        float *pool_w, *pool_b; /* (C,C), (C) or NULL */
        float *cls_w, *cls_b;   /* (n_labels,C), (n_labels) or NULL */
        char **labels;          /* n_labels names, owned */
        enum dsa_pool default_pool;
        /* The attention variant (attention-variant.h), bidirectional; dense by default. Layers
         * that prune tokens, and a first_only last layer, run dense attention (they need the
         * probabilities, or attend from [CLS] alone). */
        struct dsa__att att;
        struct dsa_threadpool *pool;        /* NULL: one thread; see dsa__bert_set_threads() */
        struct dsa__bert_scratch *scratch;  /* activations kept across forwards (bert.c) */
};

/* What a variant file says beyond the config: per-layer head and FFN counts (NULL: all of the
 * config's), the token-pruning schedule (NULL: none), and whether fp32 matrices with zeroed
 * 16 x 1 blocks should use the sparse kernel. */
struct dsa__bert_layout {
        const uint32_t *n_head; /* (n_layer) */
        const uint32_t *n_ff;   /* (n_layer) */
        const float *token_keep; /* (n_layer) */
        bool sparse;
        bool borrow_embed; /* the token embeddings may stay where lookup finds them: that storage
                            * outlives the model (a GGUF mapping the model keeps) */
};

/* Returns the stored tensor called name (llama.cpp naming), or NULL when absent. */
typedef const struct dsa_tensor_view *(*dsa__bert_lookup_fn)(void *userdata, const char *name);

/* token_embd.weight (V, C) in its stored format (F32, F16, BF16, I8 + token_embd.scale), owned;
 * dsa__embed_clear() frees it. With borrow, the values stay where lookup found them (when
 * aligned for their type): that storage must outlive e; only rows in use then become resident,
 * and processes mapping the same file share them. */
int dsa__embed_load(dsa__bert_lookup_fn lookup, void *userdata, struct dsa__embed *e, size_t V, size_t C,
                    bool borrow);
void dsa__embed_clear(struct dsa__embed *e);
/* Every row of the token embedding i as fp32 into out (cols). */
void dsa__embed_row(const struct dsa__embed *e, size_t i, float *out);
/* Re-stores the token embedding table e as fmt (Q8: int8 per row, symmetric) (variant.c). */
int dsa__embed_reformat(struct dsa__embed *e, enum dsa_wformat fmt);
/* Resident bytes of the weights (matrices, embeddings, vectors). */
size_t dsa__bert_weight_bytes(const struct dsa_bert *b);
/* How many of a row's n tokens a layer that keeps the fraction keep passes on: ceil(keep n), at
 * least 1 ([CLS]), at most n. The forward's token pruning and the trainer's share it. */
size_t dsa__tokens_kept(float keep, size_t n);
/* A learned token score w (C + 1: weights, then bias) of a token's state x (C): w.x + w[C],
 * summed in order in fp32, so the forward and the trainer rank tokens alike. */
float dsa__token_score(const float *w, const float *x, size_t C);
/* Frees every layer's learned token score (the layers rank by attention received again). */
void dsa__bert_drop_token_scores(struct dsa_bert *b);


/* The stored tensor called name, checked to have shape {ne0} (ne1 == 0) or {ne0, ne1} in ggml
 * order. Absent: -ENOENT with a reason when required, else 0 and *ret NULL. Shared by the BERT
 * and Llama loaders. */
int dsa__find_tensor(dsa__bert_lookup_fn lookup, void *userdata, const char *name, uint64_t ne0, uint64_t ne1,
                     bool required, const struct dsa_tensor_view **ret);
/* The same, read as fp32 into dst (F32, F16, BF16, Q8_0 stored). */
int dsa__load_tensor_f32(dsa__bert_lookup_fn lookup, void *userdata, const char *name, float *dst, uint64_t ne0,
                         uint64_t ne1, bool required, bool *ret_found);
/* The I8 matrices names[i] (views v[i], rows[i] x C each) stacked into one int8 linear, with
 * each one's "X.scale" per row (finite, >= 0) and the largest "X.input_scale" (static
 * activations; 0 when none has one). Shared by the BERT and Llama loaders; every failure comes
 * with its reason: -EBADMSG for scales out of range, -EINVAL for a byte of -128. */
int dsa__load_linear_q8(dsa__bert_lookup_fn lookup, void *userdata, struct dsa__linear *lin,
                        const char *const *names, const struct dsa_tensor_view *const *v, const size_t *rows, size_t n,
                        size_t C);

/* Checks cfg, allocates the arena and fills it from lookup: every tensor's shape is checked
 * against cfg before it is read. token_types.weight is optional (zeros); cls.* are read when
 * cfg->has_pooler, cls.output.* when cfg->n_labels > 0. labels stays NULL (caller fills it). */
int dsa__bert_load(const struct dsa_bert_config *cfg, const struct dsa__bert_layout *layout,
                   dsa__bert_lookup_fn lookup, void *userdata, struct dsa_bert **ret);
struct dsa_bert *dsa__bert_free(struct dsa_bert *b);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_bert *, dsa__bert_free);

/* The activation cache of a model (bert.c). */
struct dsa__bert_scratch *dsa__bert_scratch_new(void);
struct dsa__bert_scratch *dsa__bert_scratch_free(struct dsa__bert_scratch *s);

/* Checks the values of a config read from a file: nonzero sizes, C % NH == 0, sane caps. */
int dsa__bert_config_check(const struct dsa_bert_config *cfg);

/* The cores this process may run on (sched_getaffinity), at least 1. */
unsigned dsa__usable_cpus(void);
/* See dsa_model_set_threads(). */
int dsa__bert_set_threads(struct dsa_bert *b, unsigned n);
/* Replaces *pool with one of n threads (0: every usable core; 1: none), OpenBLAS at one. */
int dsa__pool_set_threads(struct dsa_threadpool **pool, unsigned n);

/* The four linears of a layer, for hooks and the variant tools. */
enum dsa__bert_lin {
        DSA__LIN_QKV,
        DSA__LIN_O,
        DSA__LIN_UP,
        DSA__LIN_DOWN,
        _DSA__LIN_MAX,
};

/* Calibration hooks (engine/variant.c): called on the forward's own thread, between steps, with
 * the input of each linear: x (N, C), valid (N) 1 for a real token, 0 for padding. A forward
 * with hooks does no token pruning. */
struct dsa__bert_hooks {
        void *userdata;
        void (*linear_input)(void *userdata, size_t layer, enum dsa__bert_lin which, const float *x,
                             size_t N, size_t C, const uint8_t *valid);
        /* The queries and keys of one text in layer `layer`: q (T, ld) with head h at h HS, k at
         * q + NH HS (the fused QKV rows); NULL to skip. Returns 0 or -errno (stops nothing: the
         * first error is kept in *err of the caller's userdata). */
        void (*attention)(void *userdata, size_t layer, const float *q, const float *k, size_t ld, size_t T,
                          size_t NH);
};

struct dsa__linear *dsa__bert_linear(struct dsa_bert *b, size_t layer, enum dsa__bert_lin which);

/* Encoder forward: see dsa_model_forward(). Reads bert only (its activation cache and pool are
 * locked internally), so several threads may run it on one model at once. */
int dsa__bert_forward(const struct dsa_bert *bert, const struct dsa_batch *b, float *ret_hidden,
                      struct dsa_trace *trace, const struct dsa__bert_hooks *hooks);
int dsa__bert_pool(const struct dsa_bert *bert, const struct dsa_batch *b, const float *hidden,
                   enum dsa_pool mode, float *out);
int dsa__bert_classify(const struct dsa_bert *bert, const struct dsa_batch *b, const float *hidden,
                       float *ret_logits);

/* Imports a Hugging Face BERT folder (hf.c): config.json, safetensors weights, tokenizer. */
int dsa__hf_import(const char *dir, struct dsa_bert **ret_bert, struct dsa_tokenizer **ret_tok);
/* Parses a Hugging Face config.json (json: len bytes, no NUL needed; label names it in the
 * JSON error) into the architecture, and whether "architectures" names a sequence classifier.
 * Types and positivity are checked here; the sizes themselves by dsa__bert_config_check() when
 * the weights load. ret_json, when not NULL, receives the parsed document, from which
 * dsa__hf_import() reads id2label once the head size is known. -EBADMSG or -EOPNOTSUPP with
 * a reason. It reads bytes from outside, so it has a fuzz target (tests/fuzz/fuzz-hf-config.c). */
int dsa__hf_parse_config(const char *json, size_t len, const char *label,
                         struct dsa_bert_config *ret_cfg, bool *ret_wants_head,
                         struct json_object **ret_json);

