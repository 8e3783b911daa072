/* Making variants of a model (dsactl optimize): structured pruning of heads and FFN neurons,
 * unstructured pruning (magnitude, Wanda, SparseGPT; unstructured, 2:4 or 16x1 blocks), dynamic
 * token pruning, and weight formats (fp32, f16, bf16, int8 with dynamic or calibrated static
 * activation scales, or a mixed per-matmul assignment), all measured on calibration texts. The
 * model is changed in place; dsa_model_save_variant() writes it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "linear.h"
#include "model.h"
#include "prune.h"

struct dsa__att;

enum dsa_prune_method {
        DSA_PRUNE_MAGNITUDE,
        DSA_PRUNE_WANDA,
        DSA_PRUNE_SPARSEGPT,
};

enum dsa_act_calib {
        DSA_ACT_DYNAMIC,    /* int8 activations: per-row scales at run time */
        DSA_ACT_MINMAX,     /* one static scale per matmul input: calibration max |x| / 127 */
        DSA_ACT_PERCENTILE, /* ... the act_percentile-th percentile of |x| / 127 */
};

struct dsa_optimize_opts {
        /* Weight format of the encoder's matrices and token embeddings. mixed: int8 where the
         * calibration says it costs little, fp32 elsewhere (see mixed_target). */
        enum dsa_wformat quant;
        bool mixed;
        /* Mixed precision keeps this fraction of the fp32 model's calibration predictions
         * (e.g. 0.995); each matmul's sensitivity is the mean KL of the logits when it alone is
         * int8. */
        double mixed_target;
        enum dsa_act_calib act;
        double act_percentile; /* e.g. 99.99 */

        double prune_heads; /* fraction of all heads removed, by calibration importance */
        /* Head importance from gradients, |dL/d mask_h| summed over the calibration texts (Michel
         * et al. 2019), the loss the cross-entropy against the model's own predictions, instead
         * of the mean norm of each head's contribution to the output. */
        bool head_grad;
        /* Recovery after structured pruning (heads, FFN) or token pruning: recover_steps AdamW
         * steps (batches of 32, lr recover_lr, 10% warmup, no dropout) distilling the pruned
         * model from the unpruned one (softened logits and the hidden states of the tokens it
         * keeps) on recover_texts (pairs or NULL; the labels are not used by the loss). The
         * token schedule is set first (searched on the structurally pruned model) and recovery
         * trains with it. 0 steps: none. */
        const char *const *recover_texts, *const *recover_pairs;
        const int32_t *recover_labels;
        size_t n_recover;
        uint64_t recover_steps;
        float recover_lr;
        double prune_ffn;   /* fraction of each layer's FFN neurons removed */

        double sparsity; /* fraction of each matrix's weights zeroed */
        enum dsa_prune_method sparsity_method;
        enum dsa_sparsity_pattern sparsity_pattern;

        /* Token pruning: token_keep < 0: none; 0: search the most aggressive schedule that
         * keeps token_target of the unpruned model's calibration predictions; in (0, 1]: keep
         * that fraction after every layer but the last, or, when n_token_layers > 0,
         * token_layers[l] after layer l (n_token_layers must be the layer count - 1; each value
         * in (0, 1]). */
        double token_keep;
        double token_target;
        /* Rank tokens by a learned score fitted on the calibration texts (a linear read of each
         * token's state, dsa__token_score_fit) instead of the attention they received. */
        bool token_learned;
        const float *token_layers;
        size_t n_token_layers;

        /* Calibration texts (and second segments, or NULL). Required by everything but fp32,
         * f16, bf16, dynamic int8 and magnitude pruning. */
        const char *const *calib;
        const char *const *calib_pairs;
        size_t n_calib;
        const char *calib_hash; /* recorded as dsa.variant.calib_sha256, or NULL */

        /* Attention (decoders): the variant to run (attention-variant.h), or NULL to keep the
         * model's. A fitted DSA variant gets its scorer (rank scorer_rank) fitted on the
         * calibration texts, joined and cut into windows of the context length; without texts
         * it keeps the scorer the model already has. */
        const struct dsa__att *attention;
        uint32_t scorer_rank;

        /* The model's path, recorded as dsa.variant.parent (NULL: its source). */
        const char *parent;

        /* Progress lines ("pruning heads: ...") for the CLI, or NULL. */
        void (*log)(void *userdata, const char *line);
        void *userdata;
};

/* Applies o to m in place, records what was done under dsa.variant.* and returns 0, or -errno
 * with a reason (dsa_error_message()). A failure leaves m in an unspecified but freeable state. */
int dsa_model_optimize(struct dsa_model *m, const struct dsa_optimize_opts *o);

/* A recorded fact of the variant (optimize's method, eval's accuracy...), or NULL. */
const char *dsa_model_info(const struct dsa_model *m, const char *name);
/* Records name = value (saved by dsa_model_save_variant()). */
int dsa_model_set_info(struct dsa_model *m, const char *name, const char *value);
/* The number of recorded facts, and the i-th's name and value. */
size_t dsa_model_n_info(const struct dsa_model *m);
int dsa_model_info_at(const struct dsa_model *m, size_t i, const char **ret_name, const char **ret_value);

/* Resident bytes of the weights as held now. */
size_t dsa_model_weight_bytes(const struct dsa_model *m);
/* Per-layer heads and FFN neurons kept, the token keep fraction and the matrices' formats:
 * a one-line summary per layer ("layer 0: heads 8/12, ffn 2048/3072, int8, keep 0.70"),
 * written into buf (NUL-terminated, truncated to size). */
int dsa_model_describe_layer(const struct dsa_model *m, size_t layer, char *buf, size_t size);
