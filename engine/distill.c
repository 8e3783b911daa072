/* Distillation (distill.h): the student's start from the teacher, and the response, feature and
 * relation losses with their gradients, fed to the student's backward as extra gradients. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "distill.h"
#include "kernels/train.h"
#include "model-internal.h"
#include "train-internal.h"

void dsa_distill_opts_default(struct dsa_distill_opts *o) {
        *o = (struct dsa_distill_opts) { .temperature = 2.0f, .w_soft = 1.0f, .w_hard = 1.0f };
}

int dsa_student_config_parse(const char *spec, const struct dsa_bert_config *teacher, struct dsa_bert_config *ret) {
        struct dsa_bert_config c;
        const char *p = spec;

        if (!spec || !teacher || !ret)
                return -EINVAL;
        c = *teacher;
        while (*p) {
                char key[16];
                size_t k = strcspn(p, "=,");
                if (k == 0 || k >= sizeof(key) || p[k] != '=')
                        return dsa__error(-EINVAL, "student config: want key=value pairs, got '%s'", p);
                memcpy(key, p, k);
                key[k] = '\0';
                char *end;
                errno = 0;
                unsigned long v = strtoul(p + k + 1, &end, 10);
                if (errno || end == p + k + 1 || (*end && *end != ',') || v == 0 || v > 65536)
                        return dsa__error(-EINVAL, "student config: bad value for '%s'", key);
                if (!strcmp(key, "layers"))
                        c.n_layer = (uint32_t) v;
                else if (!strcmp(key, "hidden"))
                        c.n_embd = (uint32_t) v;
                else if (!strcmp(key, "heads"))
                        c.n_head = (uint32_t) v;
                else if (!strcmp(key, "ffn"))
                        c.n_ff = (uint32_t) v;
                else
                        return dsa__error(-EINVAL, "student config: unknown key '%s' (layers, hidden, heads, ffn)",
                                          key);
                if (*end == ',' && !end[1])
                        return dsa__error(-EINVAL, "student config: a trailing ',' in '%s'", spec);
                p = *end ? end + 1 : end;
        }
        if (c.n_embd % c.n_head)
                return dsa__error(-EINVAL, "student config: hidden %u is not a multiple of heads %u", c.n_embd,
                                  c.n_head);
        *ret = c;
        return 0;
}

/* ---- the student's start */

/* idx (k) = the k largest of score (n), ties to the lower index, then sorted ascending. */
static void top_k(const double *score, size_t n, size_t k, uint32_t *idx) {
        bool *taken = calloc(n, 1);
        for (size_t j = 0; j < k; j++) {
                size_t best = n;
                for (size_t i = 0; i < n; i++)
                        if (!(taken && taken[i]) && (best == n || score[i] > score[best]))
                                best = i;
                idx[j] = (uint32_t) (best < n ? best : j);
                if (taken && best < n)
                        taken[best] = true;
        }
        free(taken);
        for (size_t a = 1; a < k; a++)
                for (size_t b = a; b > 0 && idx[b - 1] > idx[b]; b--) {
                        uint32_t x = idx[b];
                        idx[b] = idx[b - 1];
                        idx[b - 1] = x;
                }
}

/* dst (nr, nc) = src[rows[i], cols[j]] of a row-major src with ld columns; rows/cols NULL: 0..n-1. */
static void gather(float *dst, const float *src, size_t ld, const uint32_t *rows, size_t nr, const uint32_t *cols,
                   size_t nc) {
        for (size_t i = 0; i < nr; i++) {
                const float *s = src + (size_t) (rows ? rows[i] : i) * ld;
                for (size_t j = 0; j < nc; j++)
                        dst[i * nc + j] = s[cols ? cols[j] : j];
        }
}

struct importance {
        double *ch;   /* (Ct) */
        double *head; /* (sum of heads), layer-major */
        double **ffn; /* per layer (F_l) */
};

static int measure(struct dsa_trainer *t, const struct dsa_batch *batches, const int32_t *const *labels, size_t n,
                   struct importance *im) {
        const size_t C = t->cfg.n_embd, L = t->cfg.n_layer;
        int r;

        for (size_t k = 0; k < n; k++) {
                const struct dsa_batch *b = &batches[k];
                if ((r = dsa_trainer_forward(t, b, labels[k], false, NULL, NULL)) < 0)
                        return r;
                const size_t N = b->B * b->T;
                for (size_t l = 0; l <= L; l++)
                        for (size_t i = 0; i < N; i++)
                                if (b->mask[i])
                                        for (size_t c = 0; c < C; c++)
                                                im->ch[c] += fabs(t->a.h[l][i * C + c]);
                for (size_t l = 0; l < L; l++) {
                        const size_t F = t->layers[l].F;
                        for (size_t i = 0; i < N; i++)
                                if (b->mask[i])
                                        for (size_t f = 0; f < F; f++)
                                                im->ffn[l][f] += fabs(t->a.l[l].gl[i * F + f]);
                }
                if ((r = dsa_trainer_backward(t, im->head)) < 0)
                        return r;
        }
        dsa_trainer_zero_grad(t);
        for (size_t l = 0; l < L; l++) {
                const size_t F = t->layers[l].F;
                const float *wd = dsa__tw(t, t->layers[l].down.w); /* (C, F) */
                for (size_t f = 0; f < F; f++) {
                        double s = 0.0;
                        for (size_t c = 0; c < C; c++)
                                s += (double) wd[c * F + f] * wd[c * F + f];
                        im->ffn[l][f] *= n ? sqrt(s) : 1.0;
                }
        }
        return 0;
}

static void importance_clear(struct importance *im, size_t L) {
        free(im->ch);
        free(im->head);
        if (im->ffn)
                for (size_t l = 0; l < L; l++)
                        free(im->ffn[l]);
        free(im->ffn);
}

/* Copies the teacher's parts into the student s (shapes as the comment atop distill.h says). */
static void init_from(struct dsa_trainer *s, const struct dsa_trainer *t, const uint32_t *ch,
                      const struct importance *im) {
        const size_t Cs = s->cfg.n_embd, Ct = t->cfg.n_embd, Ls = s->cfg.n_layer, Lt = t->cfg.n_layer;
        const size_t HSs = Cs / s->cfg.n_head;

        gather(dsa__tw(s, s->g_wte), dsa__tw(t, t->g_wte), Ct, NULL, s->cfg.n_vocab, ch, Cs);
        gather(dsa__tw(s, s->g_wpe), dsa__tw(t, t->g_wpe), Ct, NULL, s->cfg.n_ctx, ch, Cs);
        gather(dsa__tw(s, s->g_wtt), dsa__tw(t, t->g_wtt), Ct, NULL, s->cfg.n_type, ch, Cs);
        gather(dsa__tw(s, s->g_eln_g), dsa__tw(t, t->g_eln_g), Ct, NULL, 1, ch, Cs);
        gather(dsa__tw(s, s->g_eln_b), dsa__tw(t, t->g_eln_b), Ct, NULL, 1, ch, Cs);
        for (size_t m = 0; m < Ls; m++) {
                const size_t lt = (m + 1) * Lt / Ls - 1;
                const struct dsa__tlayer *x = &t->layers[lt];
                struct dsa__tlayer *y = &s->layers[m];
                const size_t HSt = x->A / x->NH;
                const double *himp = im->head;
                for (size_t k = 0; k < lt; k++)
                        himp += t->layers[k].NH;

                if (HSt == HSs && y->NH <= x->NH) {
                        uint32_t heads[y->NH], rows[3 * y->A], cols[y->A];
                        top_k(himp, x->NH, y->NH, heads);
                        for (size_t q = 0; q < 3; q++)
                                for (size_t h = 0; h < y->NH; h++)
                                        for (size_t d = 0; d < HSs; d++)
                                                rows[q * y->A + h * HSs + d] =
                                                        (uint32_t) (q * x->A + heads[h] * HSt + d);
                        for (size_t i = 0; i < y->A; i++)
                                cols[i] = rows[i];
                        gather(dsa__tw(s, y->qkv.w), dsa__tw(t, x->qkv.w), Ct, rows, 3 * y->A, ch, Cs);
                        gather(dsa__tw(s, y->qkv.b), dsa__tw(t, x->qkv.b), 3 * x->A, NULL, 1, rows, 3 * y->A);
                        gather(dsa__tw(s, y->o.w), dsa__tw(t, x->o.w), x->A, ch, Cs, cols, y->A);
                }
                gather(dsa__tw(s, y->o.b), dsa__tw(t, x->o.b), Ct, NULL, 1, ch, Cs);
                gather(dsa__tw(s, y->ln1_g), dsa__tw(t, x->ln1_g), Ct, NULL, 1, ch, Cs);
                gather(dsa__tw(s, y->ln1_b), dsa__tw(t, x->ln1_b), Ct, NULL, 1, ch, Cs);
                if (y->F <= x->F) {
                        uint32_t neurons[y->F];
                        top_k(im->ffn[lt], x->F, y->F, neurons);
                        gather(dsa__tw(s, y->up.w), dsa__tw(t, x->up.w), Ct, neurons, y->F, ch, Cs);
                        gather(dsa__tw(s, y->up.b), dsa__tw(t, x->up.b), x->F, NULL, 1, neurons, y->F);
                        gather(dsa__tw(s, y->down.w), dsa__tw(t, x->down.w), x->F, ch, Cs, neurons, y->F);
                }
                gather(dsa__tw(s, y->down.b), dsa__tw(t, x->down.b), Ct, NULL, 1, ch, Cs);
                gather(dsa__tw(s, y->ln2_g), dsa__tw(t, x->ln2_g), Ct, NULL, 1, ch, Cs);
                gather(dsa__tw(s, y->ln2_b), dsa__tw(t, x->ln2_b), Ct, NULL, 1, ch, Cs);
        }
        if (s->cfg.has_pooler && t->cfg.has_pooler) {
                gather(dsa__tw(s, s->pool.w), dsa__tw(t, t->pool.w), Ct, ch, Cs, ch, Cs);
                gather(dsa__tw(s, s->pool.b), dsa__tw(t, t->pool.b), Ct, NULL, 1, ch, Cs);
        }
        gather(dsa__tw(s, s->cls.w), dsa__tw(t, t->cls.w), Ct, NULL, s->cfg.n_labels, ch, Cs);
        memcpy(dsa__tw(s, s->cls.b), dsa__tw(t, t->cls.b), s->cfg.n_labels * sizeof(float));
}

int dsa_distill_student_new(struct dsa_trainer *teacher, const struct dsa_bert_config *scfg,
                            const struct dsa_train_opts *o, const struct dsa_batch *batches,
                            const int32_t *const *labels, size_t n, bool from_teacher, struct dsa_trainer **ret) {
        _cleanup_(dsa_trainer_freep) struct dsa_trainer *s = NULL;
        struct importance im = { 0 };
        int r;

        if (!teacher || !scfg || !ret || (n && (!batches || !labels)))
                return -EINVAL;
        if ((r = dsa_trainer_new_fresh(teacher->model, scfg, o, &s)) < 0)
                return r;
        const size_t Ct = teacher->cfg.n_embd, Cs = scfg->n_embd, Lt = teacher->cfg.n_layer;
        if (!from_teacher) {
                *ret = TAKE_PTR(s);
                return 0;
        }
        if (Cs > Ct || scfg->n_layer > Lt)
                return dsa__error(-EINVAL, "a student wider or deeper than its teacher cannot start from it");
        size_t n_heads = 0;
        for (size_t l = 0; l < Lt; l++)
                n_heads += teacher->layers[l].NH;
        im.ch = calloc(Ct, sizeof(double));
        im.head = calloc(n_heads, sizeof(double));
        im.ffn = calloc(Lt, sizeof(double *));
        r = im.ch && im.head && im.ffn ? 0 : -ENOMEM;
        for (size_t l = 0; r >= 0 && l < Lt; l++)
                if (!(im.ffn[l] = calloc(teacher->layers[l].F, sizeof(double))))
                        r = -ENOMEM;
        if (r >= 0)
                r = measure(teacher, batches, labels, n, &im);
        if (r >= 0) {
                s->src_channels = calloc(Cs, sizeof(uint32_t));
                if (!s->src_channels)
                        r = -ENOMEM;
        }
        if (r >= 0) {
                top_k(im.ch, Ct, Cs, s->src_channels);
                init_from(s, teacher, s->src_channels, &im);
        }
        importance_clear(&im, Lt);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

/* ---- losses */

struct dsa_distiller {
        struct dsa_trainer *t, *s;
        struct dsa_distill_opts o;
        size_t M;            /* feature: mapped hidden states */
        float **proj, **dproj; /* (Ct, Cs) each */
        float *y;            /* (N, Ct) */
        size_t cap_N, cap_TT;
        float *rt, *rs, *drs; /* (B,R,T,T) relations */
        size_t R;
};

struct dsa_distiller *dsa_distiller_free(struct dsa_distiller *d) {
        if (!d)
                return NULL;
        free(d->proj);
        free(d->dproj);
        free(d->y);
        free(d->rt), free(d->rs), free(d->drs);
        free(d);
        return NULL;
}

int dsa_distiller_new(struct dsa_trainer *teacher, struct dsa_trainer *student, const struct dsa_distill_opts *o,
                      struct dsa_distiller **ret) {
        _cleanup_(dsa_distiller_freep) struct dsa_distiller *d = NULL;
        const size_t Ct = teacher ? teacher->cfg.n_embd : 0, Cs = student ? student->cfg.n_embd : 0;

        if (!teacher || !student || !o || !ret)
                return -EINVAL;
        if (teacher->cfg.n_labels != student->cfg.n_labels)
                return dsa__error(-EINVAL, "teacher and student have different label counts");
        if (!(o->temperature > 0.0f))
                return dsa__error(-EINVAL, "the temperature must be positive");
        d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->t = teacher, d->s = student, d->o = *o;
        const struct dsa__tlayer *lt = &teacher->layers[teacher->cfg.n_layer - 1];
        const struct dsa__tlayer *ls = &student->layers[student->cfg.n_layer - 1];
        d->R = ls->NH;
        if (o->w_relation > 0.0f && (lt->A % d->R || ls->A % d->R))
                return dsa__error(-EINVAL, "relation heads: %zu does not divide the teacher's width %zu", d->R, lt->A);
        if (o->w_feature > 0.0f) {
                d->M = student->cfg.n_layer + 1;
                d->proj = calloc(d->M, sizeof(float *));
                d->dproj = calloc(d->M, sizeof(float *));
                float *init = calloc(Ct * Cs, sizeof(float));
                if (!d->proj || !d->dproj || !init) {
                        free(init);
                        return -ENOMEM;
                }
                /* The channel selection the student started from, the identity for a student as
                 * wide as the teacher (QAT by self-distillation), else random. */
                const bool select = student->src_channels || Cs == Ct;
                uint64_t rng = student->opts.seed ^ 0xfea7u;
                for (size_t i = 0; i < Ct * Cs; i++)
                        init[i] = select ? 0.0f : dsa__randn(&rng) / sqrtf((float) Cs);
                if (select)
                        for (size_t i = 0; i < Cs; i++)
                                init[(size_t) (student->src_channels ? student->src_channels[i] : i) * Cs + i] = 1.0f;
                for (size_t m = 0; m < d->M; m++) {
                        char name[64];
                        snprintf(name, sizeof(name), "distill.proj.%zu", m);
                        int k = dsa__trainer_find(student, name);
                        d->proj[m] = k >= 0 ? student->p[k].w : dsa_trainer_add_param(student, name, Cs, Ct, init,
                                                                                        &d->dproj[m]);
                        if (k >= 0)
                                d->dproj[m] = student->p[k].g;
                        if (!d->proj[m]) {
                                free(init);
                                return -ENOMEM;
                        }
                }
                free(init);
        }
        *ret = TAKE_PTR(d);
        return 0;
}

static int ensure(float **p, size_t *cap, size_t n) {
        if (n <= *cap && *p)
                return 0;
        free(*p);
        *p = calloc(n, sizeof(float));
        if (!*p)
                return -ENOMEM;
        *cap = n;
        return 0;
}

/* Feature loss and its gradients into the student's d hidden and the projections. */
static float feature_loss(struct dsa_distiller *d, const struct dsa_batch *b, size_t nv) {
        struct dsa_trainer *t = d->t, *s = d->s;
        const size_t N = b->B * b->T, Ct = t->cfg.n_embd, Cs = s->cfg.n_embd;
        const size_t Lt = t->cfg.n_layer, Ls = s->cfg.n_layer;
        const float w = d->o.w_feature / (float) (d->M * nv * Ct);
        double loss = 0.0;

        for (size_t m = 0; m < d->M; m++) {
                const float *hs = dsa_trainer_hidden(s, m), *ht = dsa_trainer_hidden(t, m * Lt / Ls);
                const uint8_t *live = dsa_trainer_hidden_mask(s, m); /* b's mask less pruned tokens */
                dsa_matmul_forward_f32(d->y, hs, d->proj[m], NULL, N, Cs, Ct);
                for (size_t i = 0; i < N; i++)
                        for (size_t c = 0; c < Ct; c++) {
                                float e = live[i] ? d->y[i * Ct + c] - ht[i * Ct + c] : 0.0f;
                                loss += (double) e * e;
                                d->y[i * Ct + c] = 2.0f * w * e; /* now d y */
                        }
                dsa_matmul_backward_f32(dsa_trainer_grad_hidden(s, m), d->dproj[m], NULL, d->y, hs, d->proj[m], N, Cs,
                                        Ct);
        }
        return (float) (loss / (double) (d->M * nv * Ct));
}

/* KL(teacher || student) of one relation pair over valid query rows; d rs (scaled by w). */
static double relation_kl(struct dsa_distiller *d, const struct dsa_batch *b, float w, size_t nv) {
        const size_t B = b->B, T = b->T, R = d->R;
        double kl = 0.0;
        for (size_t bb = 0; bb < B; bb++)
                for (size_t r = 0; r < R; r++)
                        for (size_t i = 0; i < T; i++) {
                                const size_t o = ((bb * R + r) * T + i) * T;
                                const bool valid = b->mask[bb * T + i];
                                for (size_t j = 0; j < T; j++) {
                                        const float pt = d->rt[o + j], ps = d->rs[o + j];
                                        float g = 0.0f;
                                        if (valid && pt > 0.0f) {
                                                kl += (double) pt * (log((double) pt) - log(fmax((double) ps, 1e-30)));
                                                g = -pt / fmaxf(ps, 1e-30f);
                                        }
                                        d->drs[o + j] = valid ? w * g / (float) (nv * R) : 0.0f;
                                }
                        }
        return kl / (double) (nv * R);
}

/* MiniLM's relations of the last layers: (Q, K) and (V, V), R heads each. */
static float relation_loss(struct dsa_distiller *d, const struct dsa_batch *b, size_t nv) {
        struct dsa_trainer *t = d->t, *s = d->s;
        const size_t B = b->B, T = b->T, R = d->R;
        size_t At, As;
        const float *qt = dsa_trainer_qkv(t, t->cfg.n_layer - 1, &At), *qs = dsa_trainer_qkv(s, s->cfg.n_layer - 1, &As);
        float *dqs = dsa_trainer_grad_qkv(s, s->cfg.n_layer - 1);
        const size_t dt = At / R, ds = As / R;
        const float w = d->o.w_relation / 2.0f;
        double loss = 0.0;

        for (size_t k = 0; k < 2; k++) {
                const size_t a = k ? 2 : 0, c = k ? 2 : 1; /* (Q, K), then (V, V) */
                dsa_scores_softmax_forward_f32(d->rt, qt + a * At, 3 * At, qt + c * At, 3 * At, b->mask, B, T, R, dt,
                                               1.0f / sqrtf((float) dt));
                dsa_scores_softmax_forward_f32(d->rs, qs + a * As, 3 * As, qs + c * As, 3 * As, b->mask, B, T, R, ds,
                                               1.0f / sqrtf((float) ds));
                loss += relation_kl(d, b, w, nv);
                dsa_scores_softmax_backward_f32(dqs + a * As, dqs + c * As, d->drs, d->rs, qs + a * As, 3 * As,
                                                qs + c * As, 3 * As, B, T, R, ds, 1.0f / sqrtf((float) ds));
        }
        return (float) (loss / 2.0);
}

int dsa_distiller_batch(struct dsa_distiller *d, const struct dsa_batch *b, const int32_t *labels,
                        struct dsa_distill_losses *ret) {
        struct dsa_distill_losses out = { 0 };
        int r;

        if (!d || !b || !labels)
                return -EINVAL;
        struct dsa_trainer *t = d->t, *s = d->s;
        const size_t B = b->B, T = b->T, N = B * T, NL = s->cfg.n_labels;
        if ((r = dsa_trainer_forward(t, b, NULL, false, NULL, NULL)) < 0)
                return r;
        dsa_trainer_set_ce_weight(s, d->o.w_hard);
        if ((r = dsa_trainer_forward(s, b, labels, true, &out.hard, NULL)) < 0)
                return r;
        size_t nv = 0;
        for (size_t i = 0; i < N; i++)
                nv += b->mask[i] != 0;
        if (nv == 0)
                return -EINVAL;

        if (d->o.w_soft > 0.0f) {
                const float Tm = d->o.temperature;
                float pt[NL], ps[NL];
                const float *zt = dsa_trainer_logits(t), *zs = dsa_trainer_logits(s);
                float *dz = dsa_trainer_grad_logits(s);
                double kl = 0.0;
                for (size_t i = 0; i < B; i++) {
                        dsa_softmax_rows_f32(pt, zt + i * NL, 1, NL, Tm);
                        dsa_softmax_rows_f32(ps, zs + i * NL, 1, NL, Tm);
                        for (size_t k = 0; k < NL; k++) {
                                if (pt[k] > 0.0f)
                                        kl += (double) pt[k] * (log((double) pt[k]) - log(fmax((double) ps[k], 1e-30)));
                                dz[i * NL + k] += d->o.w_soft * Tm * (ps[k] - pt[k]) / (float) B;
                        }
                }
                out.soft = (float) (kl * Tm * Tm / (double) B);
        }
        if (d->o.w_feature > 0.0f) {
                if ((r = ensure(&d->y, &d->cap_N, N * t->cfg.n_embd)) < 0)
                        return r;
                out.feature = feature_loss(d, b, nv);
        }
        if (d->o.w_relation > 0.0f) {
                const size_t n = B * d->R * T * T;
                if (n > d->cap_TT) {
                        free(d->rt), free(d->rs), free(d->drs);
                        d->rt = calloc(n, sizeof(float)), d->rs = calloc(n, sizeof(float));
                        d->drs = calloc(n, sizeof(float));
                        d->cap_TT = d->rt && d->rs && d->drs ? n : 0;
                        if (!d->cap_TT)
                                return -ENOMEM;
                }
                out.relation = relation_loss(d, b, nv);
        }
        if ((r = dsa_trainer_backward(s, NULL)) < 0)
                return r;
        out.total = d->o.w_soft * out.soft + d->o.w_hard * out.hard + d->o.w_feature * out.feature +
                    d->o.w_relation * out.relation;
        if (ret)
                *ret = out;
        return 0;
}
