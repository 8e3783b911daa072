/* Private to engine/: the model object shared by model.c (open, run), model-save.c (GGUF
 * writing) and variant.c (dsactl optimize), and the variant's recorded facts. */
#pragma once

#include <stddef.h>

#include "basic/macro.h"
#include "bert.h"
#include "llama.h"
#include "model.h"

/* A variant's facts as (name, value) strings, saved as GGUF keys "dsa.variant.<name>": what
 * optimize did (method, quant, fractions, calibration hash) and what eval and bench measured. */
#define DSA__INFO_PREFIX "dsa.variant."

struct dsa__info {
        char **keys, **values;
        size_t n;
};

void dsa__info_clear(struct dsa__info *info);
/* Sets (or replaces) name = value; copies both. */
int dsa__info_set(struct dsa__info *info, const char *name, const char *value);
/* The same with the value printf-formatted (at most 255 bytes). */
int dsa__info_setf(struct dsa__info *info, const char *name, const char *fmt, ...) _printf_(3, 4);
/* Removes every fact whose name starts with prefix (a whole name removes just that one). */
void dsa__info_remove(struct dsa__info *info, const char *prefix);
/* The value of name, or NULL. */
const char *dsa__info_get(const struct dsa__info *info, const char *name);

struct dsa_model {
        enum dsa_arch arch;
        struct dsa_bert *bert;   /* DSA_ARCH_BERT */
        struct dsa_llama *llama; /* DSA_ARCH_LLAMA */
        struct dsa_tokenizer *tok;
        bool tok_borrowed; /* tok belongs to another model that outlives this one (a trainer's export) */
        struct dsa_gguf *map; /* the file, kept mapped while bert's token embeddings borrow from it */
        char *source;
        struct dsa__info info;
};

/* Runs n texts (pairs may be NULL) through the model in batches, calling hooks on each forward;
 * ret_logits (n, n_labels) or NULL. For calibration: no token pruning while hooks are set. */
int dsa__model_calibrate(const struct dsa_model *m, const char *const *texts, const char *const *pairs, size_t n,
                         const struct dsa__bert_hooks *hooks, float *ret_logits);

/* dsa_model_open() of a GGUF image in memory (data must outlive the call only), with one
 * thread: the model loader's fuzz target (tests/fuzz/fuzz-model.c). */
int dsa__model_open_gguf_memory(const void *data, size_t size, struct dsa_model **ret);

struct dsa_gguf_writer;
/* dsa_model_save() as fp32, with extra(w, userdata) adding keys and tensors before the file is
 * written (a trainer's checkpoint state); tensor data must live until the call returns. */
int dsa__model_save_with(const struct dsa_model *m, const char *path,
                         int (*extra)(struct dsa_gguf_writer *w, void *userdata), void *userdata);

struct dsa_optimize_opts;
/* dsa_model_optimize() of a decoder (variant-attention.c): the attention variant. */
int dsa__model_optimize_lm(struct dsa_model *m, const struct dsa_optimize_opts *o);
/* variant-train.c: head importance |dL/d mask_h| over o's calibration texts (the model's own
 * predictions as labels), added into ret_imp (one per head of every layer, layer-major); and
 * recovery of m in place after structured pruning: distilled on o's recover_* texts from
 * `unpruned`, a trainer holding m's weights from before the pruning (dsa__recover_teacher(),
 * which also checks m can be recovered). */
struct dsa_trainer;
int dsa__head_importance_grad(const struct dsa_model *m, const struct dsa_optimize_opts *o, double *ret_imp);
int dsa__recover_teacher(const struct dsa_model *m, const struct dsa_optimize_opts *o, struct dsa_trainer **ret);
int dsa__model_recover(struct dsa_model *m, const struct dsa_optimize_opts *o, struct dsa_trainer *unpruned);
/* variant-train.c: a learned token-pruning score for every layer of m but the last (bert.h),
 * fitted on o's calibration texts by least squares to the log of each token's saliency: the
 * norm of the gradient of the decision margin (predicted class's logit minus the runner-up's)
 * at its state after the layer, relative to its text's mean; [CLS] left out (always kept).
 * Clears m's token schedule first: the scores are fitted without token pruning. */
int dsa__token_score_fit(struct dsa_model *m, const struct dsa_optimize_opts *o);
/* The attention step of dsa_model_optimize(), either architecture: o->attention applied, the DSA
 * scorer fitted on o's calibration texts under dense attention (or the model's scorer kept),
 * "attention" and "scorer_kl" recorded. */
int dsa__model_set_attention(struct dsa_model *m, const struct dsa_optimize_opts *o);
