/* Training a BERT encoder classifier in C (dsactl train, distill, QAT, gradient head importance).
 *
 * A trainer holds its own fp32 copy of every parameter, with a gradient and AdamW's two moments
 * beside it, and the activations of one batch: trainer forward, backward and step run on the
 * kernels of kernels/train.h (matrix products through OpenBLAS). Its parameters are named as the
 * GGUF files name them (llama.cpp's BERT names) except that a layer's Q, K and V are one fused
 * matrix "blk.N.attn_qkv.weight" (3A, C) with rows Q, then K, then V (A = n_head HS, the layer's
 * own head count), and its bias "blk.N.attn_qkv.bias" (3A). Layers may have fewer heads or FFN
 * neurons than the config says (a structurally pruned model trains as it is).
 *
 * The forward is HF's BertForSequenceClassification: embeddings (word + position + type,
 * LayerNorm, dropout), per layer self-attention with the padding mask on keys (dropout on the
 * probabilities), output dense + dropout + residual + LayerNorm, FFN (GELU) + dropout + residual
 * + LayerNorm; pooler (tanh of a dense over [CLS]) when the model has one, dropout, classifier;
 * mean cross-entropy over the batch. Dropout only in training mode, from the trainer's seeded
 * state, so a seed fixes a run.
 *
 * Not thread-safe: one thread drives a trainer; OpenBLAS runs its products on `threads`. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/macro.h"
#include "model.h"

struct dsa_trainer;
struct dsa_gguf_writer;

struct dsa_train_opts {
        float lr;           /* peak learning rate, e.g. 5e-5 */
        float weight_decay; /* AdamW decay of matrices and embeddings (not biases, norms), e.g. 0.01 */
        float beta1, beta2, adam_eps;
        uint64_t total_steps; /* the schedule's length: linear warmup, then linear decay to 0 */
        uint64_t warmup_steps;
        float clip;           /* global gradient norm clip; 0: none */
        float dropout;        /* hidden and classifier dropout (HF hidden_dropout_prob), e.g. 0.1 */
        float attn_dropout;   /* attention-probability dropout, e.g. 0.1 */
        uint64_t seed;        /* dropout masks, shuffling and fresh initial values derive from it */
        unsigned threads;     /* OpenBLAS threads; 0: every core this process may use */
        /* Quantization-aware training: matmul weights fake-quantized to int8 per output channel,
         * each matmul's input to int8 with a running max |x| (EMA), straight-through gradients. */
        bool qat;
};

/* Defaults: lr 5e-5, decay 0.01, betas 0.9/0.999, eps 1e-8, clip 1, dropout 0.1/0.1, seed 42. */
void dsa_train_opts_default(struct dsa_train_opts *o);

/* A trainer for m (a BERT classifier: n_labels > 0), its weights widened to fp32 from whatever
 * format m holds them in. m is only read; it must outlive the trainer (its tokenizer and labels
 * are shared). A token-pruned m trains with its schedule: after such a layer, the tokens
 * inference drops leave every later layer's keys, so [CLS] computes what it computes at run
 * time, and the exported model keeps the schedule. -EOPNOTSUPP for other models, with a
 * reason. */
int dsa_trainer_new(const struct dsa_model *m, const struct dsa_train_opts *o, struct dsa_trainer **ret);
/* A trainer for a fresh model of config cfg (no pretraining: HF's initial values, N(0, 0.02)
 * matrices and embeddings, from o's seed), sharing m's tokenizer and labels (cfg has m's label
 * count). */
int dsa_trainer_new_fresh(const struct dsa_model *m, const struct dsa_bert_config *cfg,
                          const struct dsa_train_opts *o, struct dsa_trainer **ret);
/* Re-initialises the classifier (N(0, 0.02) weights, zero bias), keeping the encoder and
 * pooler: to fine-tune a classifier's encoder on another task. */
void dsa_trainer_reinit_head(struct dsa_trainer *t);
struct dsa_trainer *dsa_trainer_free(struct dsa_trainer *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_trainer *, dsa_trainer_free);

const struct dsa_bert_config *dsa_trainer_config(const struct dsa_trainer *t);
const struct dsa_model *dsa_trainer_model(const struct dsa_trainer *t);

/* Runs batch b (padded (B,T), mask required, not ragged) forward, in training mode (dropout) or
 * not, keeping every activation the backward needs. labels (B) or NULL: with labels, *ret_loss
 * (if not NULL) gets the mean cross-entropy and the backward starts from it; ret_logits (B,L)
 * or NULL. Grows the activation buffers as needed (-ENOMEM). */
int dsa_trainer_forward(struct dsa_trainer *t, const struct dsa_batch *b, const int32_t *labels, bool train,
                        float *ret_loss, float *ret_logits);

/* The activations of the last forward, for distillation losses: hidden[l] (B,T,C) for l = 0
 * (embeddings) .. n_layer; qkv of layer l (B,T,3 A_l) with Q at column 0, K at A_l, V at 2 A_l;
 * logits (B,L). Valid until the next forward. */
const float *dsa_trainer_hidden(const struct dsa_trainer *t, size_t l);
/* (B,T): the rows of hidden[l] that are states of the model as it runs: the batch's mask, less
 * the tokens token pruning dropped before layer l - 1 (a dropped token's state is the one it
 * left with). Valid until the next forward. */
const uint8_t *dsa_trainer_hidden_mask(const struct dsa_trainer *t, size_t l);
const float *dsa_trainer_qkv(const struct dsa_trainer *t, size_t layer, size_t *ret_A);
const float *dsa_trainer_logits(const struct dsa_trainer *t);

/* Extra loss gradients for the next backward, added where the activation is used:
 * d hidden[l] (B,T,C), d qkv of a layer (B,T,3 A), d logits (B,L). The returned buffers are
 * zeroed by each forward; a caller adds into them. With labels given to the forward, the
 * cross-entropy's gradient is added to d logits by the backward, scaled by ce_weight. */
float *dsa_trainer_grad_hidden(struct dsa_trainer *t, size_t l);
float *dsa_trainer_grad_qkv(struct dsa_trainer *t, size_t layer);
float *dsa_trainer_grad_logits(struct dsa_trainer *t);
void dsa_trainer_set_ce_weight(struct dsa_trainer *t, float w);

/* Backpropagates the last forward's loss (and the extra gradients) into the parameter
 * gradients, which accumulate until dsa_trainer_step() or dsa_trainer_zero_grad(). When
 * head_importance is not NULL (one per head of every layer, layer-major), adds, for each example
 * b of the batch, |dL/d mask_h| restricted to b's tokens: the gradient of a multiplier on each
 * head's context output (Michel et al. 2019), L being the batch's mean loss. -EINVAL without a
 * forward. */
int dsa_trainer_backward(struct dsa_trainer *t, double *head_importance);
/* The same, also copying d loss / d hidden[l] (B,T,C: the gradient reaching layer l's input, or
 * the head's for l = n_layer) into dh_out[l] for every l in 1..n_layer whose dh_out[l] is not
 * NULL (dh_out: n_layer + 1 entries, [0] unused; NULL: none). */
int dsa_trainer_backward_capture(struct dsa_trainer *t, double *head_importance, float *const *dh_out);
void dsa_trainer_zero_grad(struct dsa_trainer *t);

/* One optimizer step: learning rate of the schedule at the current step, global-norm clipping,
 * AdamW, gradients zeroed, step count advanced. ret_lr and ret_gnorm (before clipping) or NULL. */
int dsa_trainer_step(struct dsa_trainer *t, float *ret_lr, float *ret_gnorm);
uint64_t dsa_trainer_steps_done(const struct dsa_trainer *t);
/* Extra parameters trained with the model's (distillation's projections): n floats, zero
 * initialised unless init is given; owned by the trainer, stepped with AdamW (decayed). Returns
 * the values; ret_grad receives the gradient buffer. NULL on -ENOMEM. name is saved in
 * checkpoints (must be unique). */
float *dsa_trainer_add_param(struct dsa_trainer *t, const char *name, size_t ne0, size_t ne1, const float *init,
                             float **ret_grad);

/* The parameters, for tests and tools: count, and the i-th's name, shape (ne0 innermost, as
 * GGUF: a (OC,C) matrix has ne0 = C, ne1 = OC; vectors ne1 = 1), values and gradient. */
size_t dsa_trainer_n_params(const struct dsa_trainer *t);
int dsa_trainer_param(const struct dsa_trainer *t, size_t i, const char **ret_name, size_t *ret_ne0,
                      size_t *ret_ne1, float **ret_value, float **ret_grad);

/* A model with the trained weights (fp32; the tokenizer and labels of the trainer's model), to
 * evaluate, save or optimize further. With QAT, the matrices become int8 per channel, with the
 * trained static activation scales, so the result is the real INT8 variant. */
int dsa_trainer_export(const struct dsa_trainer *t, struct dsa_model **ret);

/* Checkpoints: the model (a loadable fp32 GGUF, as dsa_model_save() writes it) plus AdamW's
 * moments, the step, the QAT ranges, the dropout state and the extra parameters, written
 * atomically. Resume reads one into a trainer made from the same model shape. */
int dsa_trainer_save_checkpoint(const struct dsa_trainer *t, const char *path);
int dsa_trainer_load_checkpoint(struct dsa_trainer *t, const char *path);

/* ---- Training sets and the training loop. */

/* Labelled examples tokenized once (the model's tokenizer, its special tokens, truncated to
 * max_len ids). */
struct dsa_train_set;
int dsa_train_set_new(const struct dsa_model *m, const char *const *texts, const char *const *pairs,
                      const int32_t *labels, size_t n, size_t max_len, struct dsa_train_set **ret);
struct dsa_train_set *dsa_train_set_free(struct dsa_train_set *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_train_set *, dsa_train_set_free);
size_t dsa_train_set_size(const struct dsa_train_set *s);

/* Batch buffers a caller owns (dsa_train_batch_clear() frees them). */
struct dsa_train_batch {
        struct dsa_batch b;
        int32_t *labels;
        int32_t *ids, *types;
        uint8_t *mask;
        size_t cap, cap_B;
};
void dsa_train_batch_clear(struct dsa_train_batch *bb);
/* Examples first .. first + count - 1 of the file order, padded into bb->b (and bb->labels). */
int dsa_train_set_slice(const struct dsa_train_set *s, size_t first, size_t count, struct dsa_train_batch *bb);

/* What dsa_trainer_fit() runs. */
struct dsa_fit {
        size_t batch;         /* examples per step */
        uint64_t total_steps; /* steps to reach (a resumed trainer continues from its step count) */
        uint64_t seed;        /* epoch e's order: a shuffle seeded by seed and e, runs of 50 batches
                               * sorted by length, the batches shuffled */
        /* One step's gradients for batch b: NULL fine-tunes t on its cross-entropy. Returns the
         * loss to report in *ret_loss. */
        int (*batch_fn)(void *userdata, const struct dsa_batch *b, const int32_t *labels, float *ret_loss);
        void *batch_userdata;
        /* After each optimizer step (progress, checkpoints); a negative return stops the fit
         * with that error. NULL: none. */
        int (*step_fn)(void *userdata, uint64_t step, float loss, float lr, size_t examples);
        void *step_userdata;
};

/* Trains t on s until f->total_steps steps are done: batches in f's order (resuming mid-epoch
 * where the step count says), the batch function, then dsa_trainer_step(). */
int dsa_trainer_fit(struct dsa_trainer *t, const struct dsa_train_set *s, const struct dsa_fit *f);
