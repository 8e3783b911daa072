/* A trainer's way out and back in: the trained model as a dsa_model (through the same loader as
 * every file, so its shapes are checked the same way), and checkpoints that resume exactly. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "gguf.h"
#include "model-internal.h"
#include "train-internal.h"

#define CKPT_M "train.adam_m."
#define CKPT_V "train.adam_v."
#define CKPT_X "train.extra."

/* The parameters as stored tensors under the loader's names: fused QKV split into Q, K, V. */
struct views {
        struct dsa_tensor_view *v;
        char (*names)[64];
        size_t n;
};

static void views_add(struct views *s, const char *name, const float *data, size_t ne0, size_t ne1) {
        struct dsa_tensor_view *v = &s->v[s->n];
        snprintf(s->names[s->n], sizeof(s->names[0]), "%s", name);
        *v = (struct dsa_tensor_view) {
                .name = s->names[s->n], .type = DSA_TYPE_F32, .n_dims = ne1 > 1 ? 2 : 1,
                .ne = { ne0, ne1 > 1 ? ne1 : 1, 1, 1 }, .data = data, .nbytes = ne0 * ne1 * sizeof(float),
        };
        s->n++;
}

static const struct dsa_tensor_view *views_lookup(void *userdata, const char *name) {
        const struct views *s = userdata;
        for (size_t i = 0; i < s->n; i++)
                if (!strcmp(s->v[i].name, name))
                        return &s->v[i];
        return NULL;
}

static int views_build(const struct dsa_trainer *t, struct views *s) {
        const size_t n = t->n_main + 5 * t->cfg.n_layer;
        s->v = calloc(n, sizeof(*s->v));
        s->names = calloc(n, sizeof(*s->names));
        s->n = 0;
        if (!s->v || !s->names)
                return -ENOMEM;
        for (size_t i = 0; i < t->n_main; i++) {
                const struct dsa__tparam *p = &t->p[i];
                const char *fused = strstr(p->name, ".attn_qkv.");
                if (!fused) {
                        views_add(s, p->name, p->w, p->ne0, p->ne1);
                        continue;
                }
                static const char *const qkv[] = { "attn_q", "attn_k", "attn_v" };
                const bool weight = p->ne1 > 1;
                const size_t A = (weight ? p->ne1 : p->ne0) / 3;
                char name[64];
                for (size_t k = 0; k < 3; k++) {
                        snprintf(name, sizeof(name), "%.*s.%s.%s", (int) (fused - p->name), p->name, qkv[k],
                                 weight ? "weight" : "bias");
                        if (weight)
                                views_add(s, name, p->w + k * A * p->ne0, p->ne0, A);
                        else
                                views_add(s, name, p->w + k * A, A, 1);
                }
        }
        for (size_t l = 0; l < t->cfg.n_layer; l++) {
                char name[64];
                snprintf(name, sizeof(name), "blk.%zu.token_score.weight", l);
                if (t->layers[l].token_score)
                        views_add(s, name, t->layers[l].token_score, t->cfg.n_embd + 1, 1);
        }
        return 0;
}

static void views_clear(struct views *s) {
        free(s->v);
        free(s->names);
}

/* The model with t's weights; int8: as the QAT int8 variant, else fp32. */
static int export(const struct dsa_trainer *t, bool int8, struct dsa_model **ret) {
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        struct views s = { 0 };
        int r;

        const struct dsa_bert_config *c = &t->cfg;
        const struct dsa_bert *src = t->model->bert;
        uint32_t heads[c->n_layer], ffs[c->n_layer];
        float keep[c->n_layer];
        for (size_t l = 0; l < c->n_layer; l++) {
                heads[l] = (uint32_t) t->layers[l].NH, ffs[l] = (uint32_t) t->layers[l].F;
                keep[l] = t->layers[l].token_keep;
        }
        const struct dsa__bert_layout layout = { .n_head = heads, .n_ff = ffs, .token_keep = keep };

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->arch = DSA_ARCH_BERT;
        m->tok = t->model->tok;
        m->tok_borrowed = true;
        if (t->model->source && !(m->source = strdup(t->model->source)))
                return -ENOMEM;
        if ((r = views_build(t, &s)) >= 0)
                r = dsa__bert_load(c, &layout, views_lookup, &s, &m->bert);
        views_clear(&s);
        if (r < 0)
                return r;
        m->bert->default_pool = src->default_pool;
        m->bert->labels = calloc(c->n_labels, sizeof(char *));
        if (!m->bert->labels)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_labels; i++)
                if (!(m->bert->labels[i] = strdup(dsa_model_label(t->model, i))))
                        return -ENOMEM;
        if (int8) {
                /* The real INT8 variant: weights on the grid QAT trained through, inputs with the
                 * trained static ranges. */
                for (size_t l = 0; l < c->n_layer; l++) {
                        const struct dsa__tlayer *y = &t->layers[l];
                        const struct dsa__tlin *lins[] = { &y->qkv, &y->o, &y->up, &y->down };
                        for (size_t j = 0; j < ELEMENTSOF(lins); j++) {
                                struct dsa__linear *lin = dsa__bert_linear(m->bert, l, (enum dsa__bert_lin) j);
                                dsa__linear_clear(lin);
                                r = dsa__linear_init(lin, dsa__tw(t, lins[j]->w), lins[j]->out, lins[j]->in,
                                                     DSA_WFORMAT_Q8, lins[j]->range / 127.0f);
                                if (r < 0)
                                        return r;
                        }
                }
                if ((r = dsa__embed_reformat(&m->bert->wte, DSA_WFORMAT_Q8)) < 0 ||
                    (r = dsa__info_set(&m->info, "method", "qat")) < 0 ||
                    (r = dsa__info_set(&m->info, "quant", "int8")) < 0 ||
                    (r = dsa__info_set(&m->info, "act_calib", "qat")) < 0)
                        return r;
        }
        *ret = TAKE_PTR(m);
        return 0;
}

int dsa_trainer_export(const struct dsa_trainer *t, struct dsa_model **ret) {
        if (!t || !ret)
                return -EINVAL;
        return export(t, t->opts.qat, ret);
}

/* ---- checkpoints */

struct ckpt {
        const struct dsa_trainer *t;
        float *ranges;
        char (*names)[96];
};

static int ckpt_extra(struct dsa_gguf_writer *w, void *userdata) {
        struct ckpt *k = userdata;
        const struct dsa_trainer *t = k->t;
        const size_t L = t->cfg.n_layer;
        int r;

        if ((r = dsa_gguf_writer_set_u64(w, "dsa.train.step", t->step)) < 0 ||
            (r = dsa_gguf_writer_set_u64(w, "dsa.train.rng", t->rng)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, "dsa.train.qat", t->opts.qat)) < 0)
                return r;
        for (size_t l = 0; l < L; l++) {
                const struct dsa__tlayer *y = &t->layers[l];
                k->ranges[4 * l] = y->qkv.range, k->ranges[4 * l + 1] = y->o.range;
                k->ranges[4 * l + 2] = y->up.range, k->ranges[4 * l + 3] = y->down.range;
        }
        if ((r = dsa_gguf_writer_set_arr(w, "dsa.train.qat_range", DSA_GGUF_FLOAT32, k->ranges, 4 * L)) < 0)
                return r;
        for (size_t i = 0; i < t->n_p; i++) {
                const struct dsa__tparam *p = &t->p[i];
                const uint64_t ne[2] = { p->ne0, p->ne1 };
                const uint32_t nd = p->ne1 > 1 ? 2 : 1;
                char *nm = k->names[3 * i], *nv = k->names[3 * i + 1], *nx = k->names[3 * i + 2];
                snprintf(nm, 96, CKPT_M "%s", p->name);
                snprintf(nv, 96, CKPT_V "%s", p->name);
                snprintf(nx, 96, CKPT_X "%s", p->name);
                if ((r = dsa_gguf_writer_add_tensor(w, nm, DSA_TYPE_F32, nd, ne, p->m)) < 0 ||
                    (r = dsa_gguf_writer_add_tensor(w, nv, DSA_TYPE_F32, nd, ne, p->v)) < 0)
                        return r;
                if (i >= t->n_main && (r = dsa_gguf_writer_add_tensor(w, nx, DSA_TYPE_F32, nd, ne, p->w)) < 0)
                        return r;
        }
        return 0;
}

int dsa_trainer_save_checkpoint(const struct dsa_trainer *t, const char *path) {
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        int r;

        if (!t || !path)
                return -EINVAL;
        /* The checkpoint's model is the raw fp32 one, also with QAT (its ranges are saved
         * beside it), so training resumes from exactly these values. */
        if ((r = export(t, false, &m)) < 0)
                return r;
        struct ckpt k = { .t = t };
        k.ranges = calloc(4 * t->cfg.n_layer + 1, sizeof(float));
        k.names = calloc(3 * t->n_p, sizeof(*k.names));
        if (!k.ranges || !k.names)
                r = -ENOMEM;
        else
                r = dsa__model_save_with(m, path, ckpt_extra, &k);
        free(k.ranges);
        free(k.names);
        return r;
}

/* 0 when g has the F32 tensor name of ne0 x ne1 values; -EBADMSG when it is missing or not
 * F32, -EINVAL when its shape is another model's; with a reason. */
static int ckpt_tensor(const struct dsa_gguf *g, const char *name, size_t ne0, size_t ne1) {
        const struct dsa_tensor_view *v = dsa_gguf_find_tensor(g, name);
        if (!v || v->type != DSA_TYPE_F32)
                return dsa__error(-EBADMSG, "checkpoint: tensor '%s' is missing or not F32", name);
        if (dsa_tensor_nelems(v) != ne0 * ne1 || v->ne[0] != ne0)
                return dsa__error(-EINVAL, "checkpoint: tensor '%s' is of another model shape", name);
        return 0;
}

/* Everything is checked before anything of t changes, so a refused checkpoint leaves t as it was
 * (the weights' import checks the model's shape before it copies). */
int dsa_trainer_load_checkpoint(struct dsa_trainer *t, const char *path) {
        _cleanup_(dsa_model_freep) struct dsa_model *m = NULL;
        _cleanup_(dsa_gguf_freep) struct dsa_gguf *g = NULL;
        char name[96];
        int r;

        if (!t || !path)
                return -EINVAL;
        if ((r = dsa_gguf_open(path, &g)) < 0)
                return r;
        const struct dsa_bert_config *c = &t->cfg;
        uint64_t step, rng;
        bool qat;
        enum dsa_gguf_vtype vt;
        size_t n;
        const void *ranges;
        if (dsa_gguf_get_u64(g, "dsa.train.step", &step) < 0 || dsa_gguf_get_u64(g, "dsa.train.rng", &rng) < 0 ||
            dsa_gguf_get_bool(g, "dsa.train.qat", &qat) < 0 ||
            dsa_gguf_get_arr(g, "dsa.train.qat_range", &vt, &n) < 0 || vt != DSA_GGUF_FLOAT32 ||
            n != 4 * (size_t) c->n_layer || dsa_gguf_get_arr_data(g, "dsa.train.qat_range", &ranges) < 0)
                return dsa__error(-EBADMSG, "'%s' is not a training checkpoint of this model (dsa.train.* keys)",
                                  path);
        if (qat != t->opts.qat)
                return dsa__error(-EINVAL, "checkpoint '%s' was %s QAT; resume it the same way", path,
                                  qat ? "made with" : "made without");
        float rr[4 * c->n_layer];
        memcpy(rr, ranges, sizeof(rr));
        for (size_t j = 0; j < 4 * c->n_layer; j++)
                if (!isfinite(rr[j]) || rr[j] < 0.0f)
                        return dsa__error(-EBADMSG, "checkpoint: QAT range out of bounds");
        for (size_t i = 0; i < t->n_p; i++) {
                const struct dsa__tparam *p = &t->p[i];
                snprintf(name, sizeof(name), CKPT_M "%s", p->name);
                if ((r = ckpt_tensor(g, name, p->ne0, p->ne1)) < 0)
                        return r;
                snprintf(name, sizeof(name), CKPT_V "%s", p->name);
                if ((r = ckpt_tensor(g, name, p->ne0, p->ne1)) < 0)
                        return r;
                snprintf(name, sizeof(name), CKPT_X "%s", p->name);
                if (i >= t->n_main && (r = ckpt_tensor(g, name, p->ne0, p->ne1)) < 0)
                        return r;
        }
        if ((r = dsa_model_open(path, &m)) < 0)
                return r;
        if (!dsa_model_bert_config(m))
                return dsa__error(-EINVAL, "checkpoint '%s' is not a BERT model", path);
        if ((r = dsa__trainer_import(t, m)) < 0)
                return r;
        for (size_t i = 0; i < t->n_p; i++) {
                struct dsa__tparam *p = &t->p[i];
                const size_t bytes = p->ne0 * p->ne1 * sizeof(float);
                snprintf(name, sizeof(name), CKPT_M "%s", p->name);
                memcpy(p->m, dsa_gguf_find_tensor(g, name)->data, bytes);
                snprintf(name, sizeof(name), CKPT_V "%s", p->name);
                memcpy(p->v, dsa_gguf_find_tensor(g, name)->data, bytes);
                snprintf(name, sizeof(name), CKPT_X "%s", p->name);
                if (i >= t->n_main)
                        memcpy(p->w, dsa_gguf_find_tensor(g, name)->data, bytes);
        }
        for (size_t l = 0; l < c->n_layer; l++) {
                struct dsa__tlayer *y = &t->layers[l];
                y->qkv.range = rr[4 * l], y->o.range = rr[4 * l + 1];
                y->up.range = rr[4 * l + 2], y->down.range = rr[4 * l + 3];
        }
        t->step = step;
        t->rng = rng;
        t->wq_stale = true;
        t->a.valid = false;
        return 0;
}
