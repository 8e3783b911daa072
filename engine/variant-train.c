/* The parts of dsactl optimize that train (train.h): gradient head importance for structured
 * pruning, and recovery fine-tuning after it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "model-internal.h"
#include "train.h"
#include "calib.h"
#include "distill.h"
#include "variant.h"

#define GRAD_BATCH 32
#define GRAD_MAX_LEN 128

int dsa__head_importance_grad(const struct dsa_model *m, const struct dsa_optimize_opts *o, double *ret_imp) {
        const struct dsa_bert_config *c = &m->bert->cfg;
        const size_t n = o->n_calib, L = c->n_labels;
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        _cleanup_(dsa_train_set_freep) struct dsa_train_set *s = NULL;
        _cleanup_free_ float *logits = NULL;
        _cleanup_free_ int32_t *labels = NULL;
        struct dsa_train_opts to;
        struct dsa_train_batch bb = { 0 };
        int r;

        if (L == 0)
                return dsa__error(-EOPNOTSUPP, "gradient head importance needs a classifier head");
        logits = malloc(n * L * sizeof(float));
        labels = malloc(n * sizeof(int32_t));
        if (!logits || !labels)
                return -ENOMEM;
        /* The model's own predictions are the labels: calibration text carries none. */
        if ((r = dsa_model_classify_texts(m, o->calib, o->calib_pairs, n, logits)) < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                size_t best = 0;
                for (size_t k = 1; k < L; k++)
                        if (logits[i * L + k] > logits[i * L + best])
                                best = k;
                labels[i] = (int32_t) best;
        }
        dsa_train_opts_default(&to);
        to.dropout = to.attn_dropout = 0.0f;
        if ((r = dsa_trainer_new(m, &to, &t)) < 0 ||
            (r = dsa_train_set_new(m, o->calib, o->calib_pairs, labels, n, GRAD_MAX_LEN, &s)) < 0)
                return r;
        for (size_t i = 0; i < n && r >= 0; i += GRAD_BATCH) {
                if ((r = dsa_train_set_slice(s, i, n - i < GRAD_BATCH ? n - i : GRAD_BATCH, &bb)) >= 0 &&
                    (r = dsa_trainer_forward(t, &bb.b, bb.labels, false, NULL, NULL)) >= 0)
                        r = dsa_trainer_backward(t, ret_imp);
                dsa_trainer_zero_grad(t);
        }
        dsa_train_batch_clear(&bb);
        return r < 0 ? r : 0;
}

int dsa__recover_teacher(const struct dsa_model *m, const struct dsa_optimize_opts *o, struct dsa_trainer **ret) {
        struct dsa_train_opts to;

        if (!o->recover_texts || !o->recover_labels || o->n_recover == 0)
                return dsa__error(-EINVAL, "recovery fine-tuning needs labelled training texts");
        if (o->prune_heads <= 0 && o->prune_ffn <= 0 && o->token_keep < 0)
                return dsa__error(-EINVAL, "recovery fine-tuning follows structured pruning (heads, FFN) or "
                                           "token pruning");
        /* It trains and writes back fp32 weights: a quantized, sparse or token-pruned input
         * would silently lose what it was. */
        for (size_t l = 0; l < m->bert->cfg.n_layer; l++)
                for (int j = 0; j < _DSA__LIN_MAX; j++) {
                        enum dsa_wformat f = dsa__bert_linear(m->bert, l, (enum dsa__bert_lin) j)->fmt;
                        if (f == DSA_WFORMAT_Q8 || f == DSA_WFORMAT_SPARSE || m->bert->layers[l].token_keep < 1.0f)
                                return dsa__error(-EINVAL, "recovery fine-tuning needs a model that is not int8, "
                                                           "sparse or token-pruned (layer %zu)", l);
                }
        dsa_train_opts_default(&to);
        return dsa_trainer_new(m, &to, ret);
}

static int recover_batch(void *userdata, const struct dsa_batch *b, const int32_t *labels, float *ret_loss) {
        struct dsa_distill_losses l;
        int r = dsa_distiller_batch(userdata, b, labels, &l);
        if (r >= 0)
                *ret_loss = l.total;
        return r;
}

/* The labels' cross-entropy alone pulls an already fine-tuned model away from what it learnt
 * (on SST-2 it cost 1.7 points where distillation kept them), so the pruned model learns the
 * unpruned one's softened logits and hidden states (identity projections: same width). */
int dsa__model_recover(struct dsa_model *m, const struct dsa_optimize_opts *o, struct dsa_trainer *unpruned) {
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        _cleanup_(dsa_distiller_freep) struct dsa_distiller *d = NULL;
        _cleanup_(dsa_train_set_freep) struct dsa_train_set *s = NULL;
        _cleanup_(dsa_model_freep) struct dsa_model *out = NULL;
        struct dsa_train_opts to;
        struct dsa_distill_opts dop;
        int r;

        if (!unpruned)
                return -EINVAL;
        dsa_train_opts_default(&to);
        to.lr = o->recover_lr > 0.0f ? o->recover_lr : 5e-5f;
        to.total_steps = o->recover_steps;
        to.warmup_steps = o->recover_steps / 10;
        to.dropout = to.attn_dropout = 0.0f;
        dsa_distill_opts_default(&dop);
        dop.w_hard = 0.0f;
        dop.w_feature = 1.0f;
        if ((r = dsa_trainer_new(m, &to, &t)) < 0 || (r = dsa_distiller_new(unpruned, t, &dop, &d)) < 0 ||
            (r = dsa_train_set_new(m, o->recover_texts, o->recover_pairs, o->recover_labels, o->n_recover, GRAD_MAX_LEN,
                                   &s)) < 0)
                return r;
        const struct dsa_fit f = {
                .batch = GRAD_BATCH, .total_steps = o->recover_steps, .seed = to.seed, .batch_fn = recover_batch,
                .batch_userdata = d,
        };
        if ((r = dsa_trainer_fit(t, s, &f)) < 0 || (r = dsa_trainer_export(t, &out)) < 0)
                return r;
        /* The trained encoder replaces m's; its tokenizer stays m's own. */
        struct dsa_bert *b = out->bert;
        out->bert = NULL;
        b->att = m->bert->att;
        dsa__att_init(&m->bert->att);
        dsa__bert_free(m->bert);
        m->bert = b;
        dsa__variant_log(o, "recovery: %llu steps distilled from the unpruned model on %zu examples",
                         (unsigned long long) o->recover_steps, o->n_recover);
        return 0;
}
