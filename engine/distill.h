/* Knowledge distillation of a BERT classifier into a smaller student (dsactl distill), with
 * losses selectable and combinable:
 *
 *   response   temperature-softened KL(teacher || student) on the logits, times T^2 (Hinton et
 *              al.), plus the hard labels' cross-entropy;
 *   feature    TinyBERT's hidden-state MSE: student hidden state m (embeddings m = 0, layer
 *              outputs m = 1..Ls) against teacher hidden state m Lt / Ls, through a learned
 *              projection W_m (Ct, Cs) per mapped state, over real tokens;
 *   relation   MiniLM's self-attention relations of the last layers: the attention distribution
 *              softmax(Q K^T / sqrt(d)) and the value relation softmax(V V^T / sqrt(d)), each
 *              split into R relation heads (R = the student's head count, so teacher and student
 *              may differ in heads and width, as in MiniLMv2), KL(teacher || student) per row.
 *
 * The student starts from the teacher where shapes allow (dsa_distill_student_new): layer m takes
 * teacher layer (m + 1) Lt / Ls - 1, and narrower widths keep the teacher's most important parts:
 * hidden channels by mean |activation|, heads by gradient importance (|dL/d mask_h|, Michel et
 * al.), FFN neurons by mean |activation| times the norm of their output weights; the learned
 * projections start as the matching channel selection. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/macro.h"
#include "model.h"
#include "train.h"

struct dsa_distill_opts {
        float temperature; /* e.g. 2 */
        float w_soft;      /* response: weight of the soft KL (0: off) */
        float w_hard;      /* weight of the labels' cross-entropy */
        float w_feature;   /* feature: weight of the hidden-state MSE (0: off) */
        float w_relation;  /* relation: weight of the attention + value relation KL (0: off) */
};

/* Defaults: temperature 2, w_soft 1, w_hard 1, feature and relation off. */
void dsa_distill_opts_default(struct dsa_distill_opts *o);

/* "layers=2,hidden=128,heads=4,ffn=512" (any subset; the rest from the teacher) -> a config
 * with the teacher's vocabulary, positions, types, labels and pooler. -EINVAL with a reason. */
int dsa_student_config_parse(const char *spec, const struct dsa_bert_config *teacher, struct dsa_bert_config *ret);

/* A trainer for a student of config scfg (sharing the teacher's tokenizer and labels), its
 * values taken from the teacher as described above, importances measured on the n labelled
 * batches given (may be 0: channel, head and neuron order then falls back to the first ones).
 * teacher runs the batches (its gradients are used and then cleared). from_teacher false: HF's
 * fresh initial values only. */
int dsa_distill_student_new(struct dsa_trainer *teacher, const struct dsa_bert_config *scfg,
                            const struct dsa_train_opts *o, const struct dsa_batch *batches,
                            const int32_t *const *labels, size_t n, bool from_teacher, struct dsa_trainer **ret);

struct dsa_distiller;

/* Adds the feature projections to the student (trained with it, saved in its checkpoints). */
int dsa_distiller_new(struct dsa_trainer *teacher, struct dsa_trainer *student, const struct dsa_distill_opts *o,
                      struct dsa_distiller **ret);
struct dsa_distiller *dsa_distiller_free(struct dsa_distiller *d);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa_distiller *, dsa_distiller_free);

/* Each loss of the last batch (weighted sum in total). */
struct dsa_distill_losses {
        float total, soft, hard, feature, relation;
};

/* One batch: teacher forward (no dropout), student forward (training mode), the losses, and the
 * student's backward; the caller then calls dsa_trainer_step() on the student. labels (B). */
int dsa_distiller_batch(struct dsa_distiller *d, const struct dsa_batch *b, const int32_t *labels,
                        struct dsa_distill_losses *ret);
