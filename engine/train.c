/* The BERT trainer (train.h): parameters with gradients and AdamW moments, the forward that keeps
 * its activations, the backward, and the optimizer step with its schedule. Export and checkpoints
 * are in train-io.c; distillation's losses in distill.c. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "kernels/kernels.h"
#include "kernels/train.h"
#include "model-internal.h"
#include "train-internal.h"

void dsa_train_opts_default(struct dsa_train_opts *o) {
        *o = (struct dsa_train_opts) {
                .lr = 5e-5f, .weight_decay = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .adam_eps = 1e-8f,
                .clip = 1.0f, .dropout = 0.1f, .attn_dropout = 0.1f, .seed = 42,
        };
}

/* ---- parameters */

static int add_param(struct dsa_trainer *t, const char *name, size_t ne0, size_t ne1, bool decay, size_t *ret) {
        if (t->n_p == t->cap_p) {
                size_t cap = t->cap_p ? 2 * t->cap_p : 64;
                struct dsa__tparam *p = realloc(t->p, cap * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                t->p = p, t->cap_p = cap;
        }
        struct dsa__tparam *p = &t->p[t->n_p];
        *p = (struct dsa__tparam) { .ne0 = ne0, .ne1 = ne1 ? ne1 : 1, .decay = decay, .off = t->n_floats };
        snprintf(p->name, sizeof(p->name), "%s", name);
        t->n_floats += ne0 * p->ne1;
        *ret = t->n_p++;
        return 0;
}

static int add_layer_param(struct dsa_trainer *t, size_t l, const char *what, size_t ne0, size_t ne1, bool decay,
                           size_t *ret) {
        char name[64];
        snprintf(name, sizeof(name), "blk.%zu.%s", l, what);
        return add_param(t, name, ne0, ne1, decay, ret);
}

/* Lays out every parameter of cfg with per-layer heads/FFN (NULL: the config's), then allocates
 * the arenas (values, gradients, two moments) at once. */
static int layout_params(struct dsa_trainer *t, const uint32_t *heads, const uint32_t *ffs) {
        const struct dsa_bert_config *c = &t->cfg;
        const size_t C = c->n_embd, HS = C / c->n_head;
        int r;

        if ((r = add_param(t, "token_embd.weight", C, c->n_vocab, true, &t->g_wte)) < 0 ||
            (r = add_param(t, "position_embd.weight", C, c->n_ctx, true, &t->g_wpe)) < 0 ||
            (r = add_param(t, "token_types.weight", C, c->n_type, true, &t->g_wtt)) < 0 ||
            (r = add_param(t, "token_embd_norm.weight", C, 0, false, &t->g_eln_g)) < 0 ||
            (r = add_param(t, "token_embd_norm.bias", C, 0, false, &t->g_eln_b)) < 0)
                return r;
        t->layers = calloc(c->n_layer, sizeof(*t->layers));
        if (!t->layers)
                return -ENOMEM;
        for (size_t l = 0; l < c->n_layer; l++) {
                struct dsa__tlayer *y = &t->layers[l];
                y->NH = heads ? heads[l] : c->n_head;
                y->A = y->NH * HS;
                y->F = ffs ? ffs[l] : c->n_ff;
                y->token_keep = 1.0f;
                const size_t A = y->A, F = y->F;
                if ((r = add_layer_param(t, l, "attn_qkv.weight", C, 3 * A, true, &y->qkv.w)) < 0 ||
                    (r = add_layer_param(t, l, "attn_qkv.bias", 3 * A, 0, false, &y->qkv.b)) < 0 ||
                    (r = add_layer_param(t, l, "attn_output.weight", A, C, true, &y->o.w)) < 0 ||
                    (r = add_layer_param(t, l, "attn_output.bias", C, 0, false, &y->o.b)) < 0 ||
                    (r = add_layer_param(t, l, "attn_output_norm.weight", C, 0, false, &y->ln1_g)) < 0 ||
                    (r = add_layer_param(t, l, "attn_output_norm.bias", C, 0, false, &y->ln1_b)) < 0 ||
                    (r = add_layer_param(t, l, "ffn_up.weight", C, F, true, &y->up.w)) < 0 ||
                    (r = add_layer_param(t, l, "ffn_up.bias", F, 0, false, &y->up.b)) < 0 ||
                    (r = add_layer_param(t, l, "ffn_down.weight", F, C, true, &y->down.w)) < 0 ||
                    (r = add_layer_param(t, l, "ffn_down.bias", C, 0, false, &y->down.b)) < 0 ||
                    (r = add_layer_param(t, l, "layer_output_norm.weight", C, 0, false, &y->ln2_g)) < 0 ||
                    (r = add_layer_param(t, l, "layer_output_norm.bias", C, 0, false, &y->ln2_b)) < 0)
                        return r;
                y->qkv.in = C, y->qkv.out = 3 * A;
                y->o.in = A, y->o.out = C;
                y->up.in = C, y->up.out = F;
                y->down.in = F, y->down.out = C;
        }
        if (c->has_pooler && ((r = add_param(t, "cls.weight", C, C, true, &t->pool.w)) < 0 ||
                              (r = add_param(t, "cls.bias", C, 0, false, &t->pool.b)) < 0))
                return r;
        t->pool.in = C, t->pool.out = C;
        if ((r = add_param(t, "cls.output.weight", C, c->n_labels, true, &t->cls.w)) < 0 ||
            (r = add_param(t, "cls.output.bias", c->n_labels, 0, false, &t->cls.b)) < 0)
                return r;
        t->cls.in = C, t->cls.out = c->n_labels;

        t->n_main = t->n_p;
        t->n_main_floats = t->n_floats;
        const size_t bytes = t->n_floats * sizeof(float);
        if (t->n_floats > SIZE_MAX / sizeof(float) / 4)
                return -EOVERFLOW;
        t->w = calloc(1, bytes), t->g = calloc(1, bytes), t->m = calloc(1, bytes), t->v = calloc(1, bytes);
        if (!t->w || !t->g || !t->m || !t->v)
                return dsa__error(-ENOMEM, "cannot allocate %zu MB for training state", 4 * bytes >> 20);
        for (size_t i = 0; i < t->n_p; i++) {
                t->p[i].w = t->w + t->p[i].off;
                t->p[i].g = t->g + t->p[i].off;
                t->p[i].m = t->m + t->p[i].off;
                t->p[i].v = t->v + t->p[i].off;
        }
        return 0;
}

float *dsa__tw(const struct dsa_trainer *t, size_t i) {
        return t->p[i].w;
}

float *dsa__tg(const struct dsa_trainer *t, size_t i) {
        return t->p[i].g;
}

/* Values as HF initialises a fresh BERT: N(0, 0.02) matrices and embeddings, zero biases, unit
 * LayerNorm scales. */
static void init_fresh(struct dsa_trainer *t) {
        uint64_t s = t->opts.seed ^ 0x5eedf00dULL;
        for (size_t i = 0; i < t->n_main; i++) {
                struct dsa__tparam *p = &t->p[i];
                const size_t n = p->ne0 * p->ne1;
                const bool norm = strstr(p->name, "norm.weight") != NULL;
                for (size_t j = 0; j < n; j++) {
                        if (norm)
                                p->w[j] = 1.0f;
                        else if (p->ne1 > 1)
                                p->w[j] = 0.02f * dsa__randn(&s);
                        else
                                p->w[j] = 0.0f;
                }
        }
}

float dsa__randn(uint64_t *s) {
        /* Box-Muller on two splitmix64 draws. */
        uint64_t a = dsa_rng_next(s), b = dsa_rng_next(s);
        double u1 = ((a >> 11) + 1.0) * 0x1.0p-53, u2 = (b >> 11) * 0x1.0p-53;
        return (float) (sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* Copies m's weights (any stored format) into the parameters. */
int dsa__trainer_import(struct dsa_trainer *t, const struct dsa_model *m) {
        const struct dsa_bert *b = m->bert;
        const struct dsa_bert_config *c = &t->cfg;
        const size_t C = c->n_embd;
        int r;

        if (b->cfg.n_embd != C || b->cfg.n_head != c->n_head || b->cfg.n_layer != c->n_layer ||
            b->cfg.n_vocab != c->n_vocab || b->cfg.n_ctx != c->n_ctx || b->cfg.n_type != c->n_type ||
            b->cfg.n_labels != c->n_labels || b->cfg.has_pooler != c->has_pooler)
                return dsa__error(-EINVAL, "the model's shape differs from the trainer's");
        for (size_t l = 0; l < c->n_layer; l++)
                if (b->layers[l].n_head != t->layers[l].NH || b->layers[l].n_ff != t->layers[l].F)
                        return dsa__error(-EINVAL, "layer %zu: the model's shape differs from the trainer's", l);
        for (size_t i = 0; i < c->n_vocab; i++)
                dsa__embed_row(&b->wte, i, dsa__tw(t, t->g_wte) + i * C);
        memcpy(dsa__tw(t, t->g_wpe), b->wpe, (size_t) c->n_ctx * C * sizeof(float));
        memcpy(dsa__tw(t, t->g_wtt), b->wtt, (size_t) c->n_type * C * sizeof(float));
        memcpy(dsa__tw(t, t->g_eln_g), b->emb_ln_g, C * sizeof(float));
        memcpy(dsa__tw(t, t->g_eln_b), b->emb_ln_b, C * sizeof(float));
        for (size_t l = 0; l < c->n_layer; l++) {
                const struct dsa_bert_layer *x = &b->layers[l];
                struct dsa__tlayer *y = &t->layers[l];
                if ((r = dsa__linear_unpack(&x->qkv, dsa__tw(t, y->qkv.w))) < 0 ||
                    (r = dsa__linear_unpack(&x->o, dsa__tw(t, y->o.w))) < 0 ||
                    (r = dsa__linear_unpack(&x->up, dsa__tw(t, y->up.w))) < 0 ||
                    (r = dsa__linear_unpack(&x->down, dsa__tw(t, y->down.w))) < 0)
                        return r;
                memcpy(dsa__tw(t, y->qkv.b), x->qkv_b, 3 * y->A * sizeof(float));
                memcpy(dsa__tw(t, y->o.b), x->o_b, C * sizeof(float));
                memcpy(dsa__tw(t, y->ln1_g), x->ln1_g, C * sizeof(float));
                memcpy(dsa__tw(t, y->ln1_b), x->ln1_b, C * sizeof(float));
                memcpy(dsa__tw(t, y->up.b), x->up_b, y->F * sizeof(float));
                memcpy(dsa__tw(t, y->down.b), x->down_b, C * sizeof(float));
                memcpy(dsa__tw(t, y->ln2_g), x->ln2_g, C * sizeof(float));
                memcpy(dsa__tw(t, y->ln2_b), x->ln2_b, C * sizeof(float));
                if (x->qkv.fmt == DSA_WFORMAT_Q8 && x->qkv.act_scale > 0.0f) {
                        /* Keep the static ranges of an int8 model as QAT's starting ranges. */
                        y->qkv.range = 127.0f * x->qkv.act_scale;
                        y->o.range = 127.0f * x->o.act_scale;
                        y->up.range = 127.0f * x->up.act_scale;
                        y->down.range = 127.0f * x->down.act_scale;
                }
        }
        if (c->has_pooler) {
                memcpy(dsa__tw(t, t->pool.w), b->pool_w, C * C * sizeof(float));
                memcpy(dsa__tw(t, t->pool.b), b->pool_b, C * sizeof(float));
        }
        memcpy(dsa__tw(t, t->cls.w), b->cls_w, (size_t) c->n_labels * C * sizeof(float));
        memcpy(dsa__tw(t, t->cls.b), b->cls_b, c->n_labels * sizeof(float));
        return 0;
}

static int trainer_alloc(const struct dsa_model *m, const struct dsa_bert_config *cfg, const uint32_t *heads,
                         const uint32_t *ffs, const struct dsa_train_opts *o, struct dsa_trainer **ret) {
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        int r;

        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->model = m;
        t->cfg = *cfg;
        if (o)
                t->opts = *o;
        else
                dsa_train_opts_default(&t->opts);
        t->rng = t->opts.seed * DSA_SPLITMIX64_GAMMA + 1;
        t->ce_weight = 1.0f;
        if ((r = layout_params(t, heads, ffs)) < 0)
                return r;
        dsa_blas_set_threads((int) dsa__cores(t->opts.threads));
        *ret = TAKE_PTR(t);
        return 0;
}

static int check_model(const struct dsa_model *m) {
        if (!m || m->arch != DSA_ARCH_BERT || !m->bert)
                return dsa__error(-EOPNOTSUPP, "training needs a BERT encoder");
        if (m->bert->cfg.n_labels == 0)
                return dsa__error(-EOPNOTSUPP, "training needs a classifier head (the model has no labels)");
        return 0;
}

int dsa_trainer_new(const struct dsa_model *m, const struct dsa_train_opts *o, struct dsa_trainer **ret) {
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        int r;

        if (!ret)
                return -EINVAL;
        if ((r = check_model(m)) < 0)
                return r;
        const struct dsa_bert *b = m->bert;
        uint32_t heads[b->cfg.n_layer], ffs[b->cfg.n_layer];
        for (size_t l = 0; l < b->cfg.n_layer; l++)
                heads[l] = b->layers[l].n_head, ffs[l] = b->layers[l].n_ff;
        if ((r = trainer_alloc(m, &b->cfg, heads, ffs, o, &t)) < 0 || (r = dsa__trainer_import(t, m)) < 0)
                return r;
        /* A token-pruned model trains as it runs: each layer attends to the tokens kept so far. */
        for (size_t l = 0; l < b->cfg.n_layer; l++) {
                const float *w = b->layers[l].token_score;
                const size_t bytes = (b->cfg.n_embd + 1) * sizeof(float);
                t->layers[l].token_keep = b->layers[l].token_keep;
                if (w && !(t->layers[l].token_score = malloc(bytes)))
                        return -ENOMEM;
                if (w)
                        memcpy(t->layers[l].token_score, w, bytes);
        }
        *ret = TAKE_PTR(t);
        return 0;
}

int dsa_trainer_new_fresh(const struct dsa_model *m, const struct dsa_bert_config *cfg,
                           const struct dsa_train_opts *o, struct dsa_trainer **ret) {
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *t = NULL;
        int r;

        if (!cfg || !ret)
                return -EINVAL;
        if ((r = check_model(m)) < 0)
                return r;
        if ((r = dsa__bert_config_check(cfg)) < 0)
                return r;
        if (cfg->n_labels != m->bert->cfg.n_labels)
                return dsa__error(-EINVAL, "the new model must have the %u labels of the old", m->bert->cfg.n_labels);
        if ((r = trainer_alloc(m, cfg, NULL, NULL, o, &t)) < 0)
                return r;
        init_fresh(t);
        *ret = TAKE_PTR(t);
        return 0;
}

void dsa_trainer_reinit_head(struct dsa_trainer *t) {
        if (!t)
                return;
        uint64_t s = t->opts.seed ^ 0x4ead;
        float *w = dsa__tw(t, t->cls.w);
        for (size_t i = 0; i < t->cls.in * t->cls.out; i++)
                w[i] = 0.02f * dsa__randn(&s);
        memset(dsa__tw(t, t->cls.b), 0, t->cls.out * sizeof(float));
}

static void acts_free(struct dsa__tacts *a, size_t L) {
        if (a->l)
                for (size_t l = 0; l < L; l++) {
                        struct dsa__tlacts *y = &a->l[l];
                        free(y->qkv), free(y->att), free(y->att_keep), free(y->ctx), free(y->ao), free(y->ao_keep);
                        free(y->res1), free(y->ln1_mean), free(y->ln1_rstd), free(y->a1), free(y->up), free(y->gl);
                        free(y->dn), free(y->dn_keep), free(y->res2), free(y->ln2_mean), free(y->ln2_rstd);
                        free(y->xq_qkv), free(y->xq_o), free(y->xq_up), free(y->xq_down), free(y->dqkv_ext);
                }
        free(a->l);
        if (a->h)
                for (size_t l = 0; l <= L; l++)
                        free(a->h[l]), free(a->dh_ext[l]);
        free(a->h), free(a->dh_ext);
        free(a->emb_in), free(a->emb_mean), free(a->emb_rstd), free(a->emb_ln), free(a->emb_keep);
        free(a->cls_x), free(a->pool_pre), free(a->pool_out), free(a->pool_keep), free(a->pool_d);
        free(a->xq_pool), free(a->xq_cls);
        free(a->logits), free(a->probs), free(a->dlogits_ext), free(a->dlogits), free(a->labels);
        free(a->d0), free(a->d1), free(a->d2), free(a->dF), free(a->dF2), free(a->dA), free(a->datt);
        free(a->ids), free(a->types), free(a->mask), free(a->alive), free(a->tok_score);
        *a = (struct dsa__tacts) { 0 };
}

struct dsa_trainer *dsa_trainer_free(struct dsa_trainer *t) {
        if (!t)
                return NULL;
        acts_free(&t->a, t->cfg.n_layer);
        for (size_t i = t->n_main; i < t->n_p; i++)
                free(t->p[i].w), free(t->p[i].g), free(t->p[i].m), free(t->p[i].v);
        if (t->layers)
                for (size_t l = 0; l < t->cfg.n_layer; l++) {
                        struct dsa__tlayer *y = &t->layers[l];
                        free(y->qkv.wq), free(y->o.wq), free(y->up.wq), free(y->down.wq);
                        free(y->token_score);
                }
        free(t->layers);
        free(t->src_channels);
        free(t->p);
        free(t->w), free(t->g), free(t->m), free(t->v);
        free(t);
        /* Back to what the inference pool expects (dsa_model_set_threads()). */
        dsa_blas_set_threads(1);
        return NULL;
}

const struct dsa_bert_config *dsa_trainer_config(const struct dsa_trainer *t) {
        return t ? &t->cfg : NULL;
}

const struct dsa_model *dsa_trainer_model(const struct dsa_trainer *t) {
        return t ? t->model : NULL;
}

size_t dsa_trainer_n_params(const struct dsa_trainer *t) {
        return t ? t->n_p : 0;
}

int dsa_trainer_param(const struct dsa_trainer *t, size_t i, const char **ret_name, size_t *ret_ne0,
                      size_t *ret_ne1, float **ret_value, float **ret_grad) {
        if (!t || i >= t->n_p)
                return -EINVAL;
        const struct dsa__tparam *p = &t->p[i];
        if (ret_name)
                *ret_name = p->name;
        if (ret_ne0)
                *ret_ne0 = p->ne0;
        if (ret_ne1)
                *ret_ne1 = p->ne1;
        if (ret_value)
                *ret_value = p->w;
        if (ret_grad)
                *ret_grad = p->g;
        return 0;
}

int dsa__trainer_find(const struct dsa_trainer *t, const char *name) {
        for (size_t i = 0; i < t->n_p; i++)
                if (!strcmp(t->p[i].name, name))
                        return (int) i;
        return -ENOENT;
}

float *dsa_trainer_add_param(struct dsa_trainer *t, const char *name, size_t ne0, size_t ne1, const float *init,
                             float **ret_grad) {
        size_t i, n = ne0 * (ne1 ? ne1 : 1);
        if (!t || !name || n == 0 || dsa__trainer_find(t, name) >= 0 || add_param(t, name, ne0, ne1, true, &i) < 0)
                return NULL;
        struct dsa__tparam *p = &t->p[i];
        t->n_floats -= n; /* extras live outside the arenas */
        p->w = calloc(n, sizeof(float)), p->g = calloc(n, sizeof(float));
        p->m = calloc(n, sizeof(float)), p->v = calloc(n, sizeof(float));
        if (!p->w || !p->g || !p->m || !p->v) {
                free(p->w), free(p->g), free(p->m), free(p->v);
                t->n_p--;
                return NULL;
        }
        if (init)
                memcpy(p->w, init, n * sizeof(float));
        if (ret_grad)
                *ret_grad = p->g;
        return p->w;
}

/* ---- optimizer */

void dsa_trainer_zero_grad(struct dsa_trainer *t) {
        if (!t)
                return;
        memset(t->g, 0, t->n_main_floats * sizeof(float));
        for (size_t i = t->n_main; i < t->n_p; i++)
                memset(t->p[i].g, 0, t->p[i].ne0 * t->p[i].ne1 * sizeof(float));
}

float dsa__trainer_lr(const struct dsa_trainer *t, uint64_t step) {
        const struct dsa_train_opts *o = &t->opts;
        if (o->warmup_steps > 0 && step < o->warmup_steps)
                return o->lr * (float) (step + 1) / (float) o->warmup_steps;
        if (o->total_steps == 0)
                return o->lr;
        if (step >= o->total_steps)
                return 0.0f;
        const uint64_t span = o->total_steps > o->warmup_steps ? o->total_steps - o->warmup_steps : 1;
        return o->lr * (float) (o->total_steps - step) / (float) span;
}

int dsa_trainer_step(struct dsa_trainer *t, float *ret_lr, float *ret_gnorm) {
        if (!t)
                return -EINVAL;
        double ss = 0.0;
        for (size_t i = 0; i < t->n_p; i++) {
                const float *g = t->p[i].g;
                const size_t n = t->p[i].ne0 * t->p[i].ne1;
                for (size_t j = 0; j < n; j++)
                        ss += (double) g[j] * g[j];
        }
        const float gnorm = (float) sqrt(ss);
        if (!isfinite(gnorm))
                return dsa__error(-EDOM, "the gradient is not finite (step %llu)", (unsigned long long) t->step);
        const float lr = dsa__trainer_lr(t, t->step);
        const float scale = t->opts.clip > 0.0f && gnorm > t->opts.clip ? t->opts.clip / (gnorm + 1e-6f) : 1.0f;
        for (size_t i = 0; i < t->n_p; i++) {
                struct dsa__tparam *p = &t->p[i];
                const size_t n = p->ne0 * p->ne1;
                if (scale != 1.0f)
                        for (size_t j = 0; j < n; j++)
                                p->g[j] *= scale;
                dsa_adamw_f32(p->w, p->g, p->m, p->v, n, lr, t->opts.beta1, t->opts.beta2, t->opts.adam_eps,
                              p->decay ? t->opts.weight_decay : 0.0f, t->step + 1);
        }
        t->step++;
        t->wq_stale = true;
        dsa_trainer_zero_grad(t);
        if (ret_lr)
                *ret_lr = lr;
        if (ret_gnorm)
                *ret_gnorm = gnorm;
        return 0;
}

uint64_t dsa_trainer_steps_done(const struct dsa_trainer *t) {
        return t ? t->step : 0;
}

void dsa_trainer_set_ce_weight(struct dsa_trainer *t, float w) {
        if (t)
                t->ce_weight = w;
}
