/* Private to engine/: a Llama-family decoder (RMSNorm, rotary positions, SwiGLU, grouped-query
 * attention; LlamaForCausalLM) as the forward pass uses it, its loader shared by the Hugging
 * Face and GGUF importers, the forward itself and the attention variants it can run with.
 *
 * Tensor names given to the loader's lookup are llama.cpp's ("blk.0.attn_q.weight"), and so is
 * the layout of Q and K: llama.cpp's converter permutes the rows of each head so that rotary
 * pairs are adjacent (2i, 2i+1) instead of Hugging Face's halves (i, i + HS/2); the Hugging Face
 * importer applies the same permutation, so one rotary kernel serves both and GGUF files made by
 * llama.cpp load as they are. Attention scores are unchanged by it (Q and K are permuted alike). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attention-variant.h"
#include "basic/macro.h"
#include "bert.h"
#include "linear.h"
#include "model.h"

struct dsa_threadpool;
struct dsa_gguf;
struct dsa_gguf_writer;
struct json_object;

/* Positions whose rotary cos/sin are tabled at load. */
#define DSA_LLAMA_ROPE_TABLE 8192

struct dsa_llama_layer {
        float *attn_norm;        /* (C) */
        struct dsa__linear qkv;  /* (NH HS + 2 NKV HS, C): Q rows, then K, then V */
        struct dsa__linear o;    /* (C, NH HS) */
        float *ffn_norm;         /* (C) */
        struct dsa__linear gate_up; /* (2 F, C): gate rows, then up */
        struct dsa__linear down; /* (C, F) */
};

struct dsa_llama {
        struct dsa_llama_config cfg;
        float *arena;             /* the norms and the rotary tables */
        struct dsa__embed wte;    /* (V, C) */
        struct dsa_llama_layer *layers;
        float *out_norm;          /* (C) */
        struct dsa__linear lm_head; /* (V, C) */
        float *rope_cos, *rope_sin; /* (rope_n, HS/2): positions past rope_n are computed */
        size_t rope_n;              /* min(n_ctx, DSA_LLAMA_ROPE_TABLE) */
        struct dsa__att att;      /* the attention variant and its fitted scorer */
        struct dsa_threadpool *pool;
        bool allow_long;          /* sequences past n_ctx (speed sweeps): rotary angles computed */
};

/* Checks cfg and fills the weights from lookup, every tensor's shape checked before it is read;
 * output.weight absent means tied to token_embd. permute_qk: the stored Q/K rows are Hugging
 * Face's (rotary halves) and are permuted to llama.cpp's layout here. */
int dsa__llama_load(const struct dsa_llama_config *cfg, dsa__bert_lookup_fn lookup, void *userdata,
                    bool permute_qk, struct dsa_llama **ret);
struct dsa_llama *dsa__llama_free(struct dsa_llama *l);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_llama *, dsa__llama_free);

/* Checks the values of a config read from a file. */
int dsa__llama_config_check(const struct dsa_llama_config *cfg);
int dsa__llama_set_threads(struct dsa_llama *l, unsigned n);
size_t dsa__llama_weight_bytes(const struct dsa_llama *l);

/* A GGUF of architecture "llama": config, weights, attention variant (the tokenizer is the
 * caller's). */
int dsa__llama_open_gguf(const struct dsa_gguf *g, struct dsa_llama **ret);
/* Rotary cos and sin of position p (HS/2 each), as Hugging Face computes them. */
void dsa__llama_rope_row(const struct dsa_llama_config *c, size_t p, float *cs, float *sn);

/* Imports a Hugging Face LlamaForCausalLM folder (hf.c): config.json, safetensors (one file or
 * shards), tokenizer.json; Q/K rows permuted to llama.cpp's layout. */
int dsa__hf_import_llama(const char *dir, struct dsa_llama **ret_llama, struct dsa_tokenizer **ret_tok);
/* Whether dir's config.json says model_type "llama". */
bool dsa__hf_is_llama(const char *dir);
/* Parses a Hugging Face LlamaForCausalLM config.json object (hf.c). */
int dsa__hf_llama_config(const struct json_object *j, struct dsa_llama_config *ret);
/* Maps a llama.cpp Llama tensor name onto Hugging Face's; -ENOENT for unknown names. */
int dsa__hf_llama_name(const char *ll, char *out, size_t n);

/* Per-layer attention inputs for the scorer fit (llama-dsa.c): after rotary, q (T, NH HS) and
 * k (T, NKV HS) of layer l, rows of the whole sequence. */
struct dsa__llama_hooks {
        void *userdata;
        int (*attention)(void *userdata, size_t layer, const float *q, size_t ldq, const float *k, size_t ldk,
                         size_t T);
};

/* Decoder forward over one sequence ids (T), T <= n_ctx (or any T when cfg allows, see
 * dsa_model_lm_forward), with the attention att (NULL: the model's own). ret_hidden (T, C) or
 * NULL: the final normed hidden states; ret_logits (T, V) or NULL; ret_nll (T - 1) or NULL:
 * -log p(ids[t+1] | ids[..t]) in double precision softmax, computed 256 rows at a time so the
 * (T, V) logits never exist at once. stats may be NULL. */
int dsa__llama_forward(const struct dsa_llama *l, const int32_t *ids, size_t T, const struct dsa__att *att,
                       float *ret_hidden, float *ret_logits, double *ret_nll, struct dsa_lm_stats *stats,
                       const struct dsa__llama_hooks *hooks);

/* Fits att's DSA scorer (rank R, att->block) to the dense attention of l on n calibration
 * sequences (seqs[i] of lens[i] tokens), see attention-fit.c; att keeps its other settings.
 * ret_kl_before/after (or NULL): mean KL(dense block mass || scorer) per query block, at the
 * random start and fitted. */
int dsa__att_fit(const struct dsa_llama *l, const int32_t *const *seqs, const size_t *lens, size_t n,
                 uint32_t rank, struct dsa__att *att, double *ret_kl_before, double *ret_kl_after);
