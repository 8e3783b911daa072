/* Private to engine/: BERT weights as the forward pass uses them (fp32, one owned arena, Q/K/V
 * fused per layer), the loader shared by the Hugging Face and GGUF importers, and the forward
 * pass itself. Tensor names passed to the loader's lookup are llama.cpp's ("blk.0.attn_q.weight");
 * each importer maps them onto its own naming. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/macro.h"
#include "model.h"
#include "tensor.h"

struct dsa_tokenizer;
struct json_object;
struct dsa_packed_f32;
struct dsa_threadpool;
struct dsa__bert_scratch;

/* The four matrices of a layer are kept only packed for the GEMM (kernels.h); saving a model
 * unpacks them (dsa_packed_f32_unpack). */
struct dsa_bert_layer {
        struct dsa_packed_f32 *qkv_w;   /* (3C,C): rows 0..C-1 Q, then K, then V */
        float *qkv_b;                   /* (3C) */
        struct dsa_packed_f32 *o_w;     /* (C,C) */
        float *o_b;                     /* (C) */
        float *ln1_g, *ln1_b;           /* attention output LayerNorm (C) */
        struct dsa_packed_f32 *up_w;    /* (F,C) */
        float *up_b;                    /* (F) */
        struct dsa_packed_f32 *down_w;  /* (C,F) */
        float *down_b;                  /* (C) */
        float *ln2_g, *ln2_b;           /* layer output LayerNorm (C) */
};

struct dsa_bert {
        struct dsa_bert_config cfg;
        float *arena; /* owns every float below but the packed layer matrices */
        size_t arena_floats;
        size_t packed_floats; /* n_layer * (4C*C + 2F*C): the layer matrices, unpacked */
        float *wte;   /* (V,C) */
        float *wpe;   /* (n_ctx,C) */
        float *wtt;   /* (n_type,C); zeros when the file has none */
        float *emb_ln_g, *emb_ln_b;
        struct dsa_bert_layer *layers;
        float *pool_w, *pool_b; /* (C,C), (C) or NULL */
        float *cls_w, *cls_b;   /* (n_labels,C), (n_labels) or NULL */
        char **labels;          /* n_labels names, owned */
        enum dsa_pool default_pool;
        struct dsa_threadpool *pool;        /* NULL: one thread; see dsa__bert_set_threads() */
        struct dsa__bert_scratch *scratch;  /* activations kept across forwards (bert.c) */
};

/* Returns the stored tensor called name (llama.cpp naming), or NULL when absent. */
typedef const struct dsa_tensor_view *(*dsa__bert_lookup_fn)(void *userdata, const char *name);

/* Checks cfg, allocates the arena and fills it from lookup: every tensor's shape is checked
 * against cfg before it is read. token_types.weight is optional (zeros); cls.* are read when
 * cfg->has_pooler, cls.output.* when cfg->n_labels > 0. labels stays NULL (caller fills it). */
int dsa__bert_load(const struct dsa_bert_config *cfg, dsa__bert_lookup_fn lookup, void *userdata,
                   struct dsa_bert **ret);
struct dsa_bert *dsa__bert_free(struct dsa_bert *b);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_bert *, dsa__bert_free);

/* Checks the values of a config read from a file: nonzero sizes, C % NH == 0, sane caps. */
int dsa__bert_config_check(const struct dsa_bert_config *cfg);

/* See dsa_model_set_threads(). */
int dsa__bert_set_threads(struct dsa_bert *b, unsigned n);

/* Encoder forward: see dsa_model_forward(). Reads bert only (its activation cache and pool are
 * locked internally), so several threads may run it on one model at once. */
int dsa__bert_forward(const struct dsa_bert *bert, const struct dsa_batch *b, float *ret_hidden,
                      struct dsa_trace *trace);
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

/* fp32 -> IEEE half / bfloat16, round to nearest even (model.c, for saving). */
uint16_t dsa__f32_to_f16(float f);
uint16_t dsa__f32_to_bf16(float f);
