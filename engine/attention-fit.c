/* Fitting the DSA scorer (attention-variant.h) to the dense attention's block mass.
 *
 * Calibration sequences run through the dense forward; at every layer a hook takes the rotated
 * queries and keys and, per head and query block a, the exact share M(a, b) of a's attention
 * that falls on each key block b <= a (kernels/attention.h: the rows' log-sum-exp from the
 * streaming kernel, then each block's mass), with the blocks' mean query and key. Each (layer,
 * head) scorer then minimizes sum_a KL(M(a, .) || p(a, .)), p the scorer's softmax over the
 * visible blocks, by full-batch Adam on Wq, Wk and the distance bias. The gradient of the KL
 * with respect to s(a, b) is p(a, b) - M(a, b); with s = u_a . w_b + bias + log n,
 * u_a = Wq qbar_a, w_b = Wk kbar_b:
 *
 *   dWq += sum_b g_ab w_b qbar_a^T,   dWk += sum_b g_ab u_a kbar_b^T,   dbias[bin(a,b)] += g_ab. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "kernels/attention.h"
#include "llama.h"

#define FIT_STEPS 200
#define FIT_LR 0.02f

/* The samples of one (layer, head): per calibration sequence its blocks' means and masses. */
struct seq {
        size_t nb, T;
        bool causal;
        float *qbar, *kbar; /* (nb, HS) each */
        float *mass;        /* (nb, nb) row a: M(a, b) for the visible b */
};

struct list {
        struct seq *s;
        size_t n;
};

struct dsa__att_fitter {
        size_t n_layer, n_head, HS, bk;
        size_t kv_div; /* query heads per key/value head (llama_hook) */
        struct list *lists; /* (n_layer * n_head) */
        /* token scorer: second moments sum q q^T (n_layer * n_head, HS, HS) and sum k k^T
         * (n_layer * n_head / kv_div, HS, HS: one per key/value head) instead of the block samples */
        double *cq, *ck;
};

struct dsa__att_fitter *dsa__att_fitter_free(struct dsa__att_fitter *f) {
        if (!f)
                return NULL;
        for (size_t i = 0; f->lists && i < f->n_layer * f->n_head; i++) {
                for (size_t j = 0; j < f->lists[i].n; j++) {
                        free(f->lists[i].s[j].qbar);
                        free(f->lists[i].s[j].kbar);
                        free(f->lists[i].s[j].mass);
                }
                free(f->lists[i].s);
        }
        free(f->lists);
        free(f->cq);
        free(f->ck);
        free(f);
        return NULL;
}

int dsa__att_fitter_new(size_t block, size_t n_layer, size_t n_head, size_t head_dim, struct dsa__att_fitter **ret) {
        struct dsa__att_fitter *f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        *f = (struct dsa__att_fitter) { .n_layer = n_layer, .n_head = n_head, .HS = head_dim, .bk = block };
        f->lists = calloc(n_layer * n_head, sizeof(struct list));
        if (!f->lists) {
                dsa__att_fitter_free(f);
                return -ENOMEM;
        }
        *ret = f;
        return 0;
}

/* sum x x^T over T rows of x (ldx, HS values each) into c (HS, HS). */
static void add_moments(double *c, const float *x, size_t ldx, size_t T, size_t HS) {
        for (size_t t = 0; t < T; t++)
                for (size_t i = 0; i < HS; i++) {
                        const double xi = x[t * ldx + i];
                        for (size_t j = 0; j < HS; j++)
                                c[i * HS + j] += xi * x[t * ldx + j];
                }
}

/* The pooled scorer's samples of one sequence: per head its blocks' means and dense masses. */
static int add_samples(struct dsa__att_fitter *f, size_t layer, const float *q, size_t ldq, const float *k, size_t ldk,
                       size_t T, size_t NH, size_t NKV, bool causal) {
        const struct dsa_attention_kernels *ak = dsa_attention_kernels();
        const size_t HS = f->HS, bk = f->bk, nb = (T + bk - 1) / bk, G = NKV ? NH / NKV : 1;
        const float scale = 1.0f / sqrtf((float) HS);
        _cleanup_free_ float *scratch = malloc(dsa_attention_blocks_scratch(bk, HS) * sizeof(float));
        _cleanup_free_ float *out = malloc(bk * HS * sizeof(float)), *lse = malloc(bk * sizeof(float));
        _cleanup_free_ uint32_t *blocks = malloc(nb * sizeof(uint32_t));
        int r;

        if (!scratch || !out || !lse || !blocks)
                return -ENOMEM;
        for (size_t b = 0; b < nb; b++)
                blocks[b] = (uint32_t) b;
        for (size_t h = 0; h < NH; h++) {
                struct list *li = &f->lists[layer * f->n_head + h];
                struct seq *ns = realloc(li->s, (li->n + 1) * sizeof(struct seq));
                if (!ns)
                        return -ENOMEM;
                li->s = ns;
                struct seq *s = &li->s[li->n++];
                const float *kh = k + (h / G) * HS;
                *s = (struct seq) { .nb = nb, .T = T, .causal = causal };
                s->qbar = malloc(nb * HS * sizeof(float));
                s->kbar = malloc(nb * HS * sizeof(float));
                s->mass = calloc(nb * nb, sizeof(float));
                if (!s->qbar || !s->kbar || !s->mass)
                        return -ENOMEM;
                if ((r = ak->pool_blocks_f32(s->qbar, HS, q + h * HS, ldq, T, bk, HS)) < 0 ||
                    (r = ak->pool_blocks_f32(s->kbar, HS, kh, ldk, T, bk, HS)) < 0)
                        return r;
                for (size_t a = 0; a < nb; a++) {
                        const size_t t0 = a * bk, nq = MIN(bk, T - t0), nc = causal ? a + 1 : nb;
                        const float *qa = q + t0 * ldq + h * HS;
                        float *row = s->mass + a * nb;
                        for (size_t i0 = 0; i0 < nq; i0 += DSA_ATT_BLOCK) { /* 64 rows a kernel call */
                                const size_t mq = MIN(nq - i0, (size_t) DSA_ATT_BLOCK);
                                const float *qi = qa + i0 * ldq;
                                if ((r = ak->blocks_f32(out, HS, qi, ldq, kh, ldk, kh, ldk, mq, t0 + i0, blocks, nc, bk,
                                                        T, HS, scale, causal, lse, scratch)) < 0 ||
                                    (r = ak->block_mass_f32(row, qi, ldq, kh, ldk, mq, t0 + i0, blocks, nc, bk, T, HS,
                                                            scale, causal, lse, scratch)) < 0)
                                        return r;
                        }
                        for (size_t b = 0; b < nc; b++)
                                row[b] /= (float) nq;
                }
        }
        return 0;
}

int dsa__att_fitter_add(struct dsa__att_fitter *f, size_t layer, const float *q, size_t ldq, const float *k, size_t ldk,
                        size_t T, size_t NH, size_t NKV, bool causal) {
        const size_t HS = f->HS;

        if (T == 0 || layer >= f->n_layer || NH > f->n_head || NKV == 0 || NH % NKV)
                return T == 0 ? 0 : -EINVAL;
        if (!f->cq)
                return add_samples(f, layer, q, ldq, k, ldk, T, NH, NKV, causal);
        /* the token scorer's moments; ck once per key/value head */
        for (size_t h = 0; h < NH; h++)
                add_moments(f->cq + (layer * f->n_head + h) * HS * HS, q + h * HS, ldq, T, HS);
        for (size_t g = 0; g < NKV; g++)
                add_moments(f->ck + (layer * NKV + g) * HS * HS, k + g * HS, ldk, T, HS);
        return 0;
}

/* Visible keys of block b per query of block a: all of b's, or under causal masking for the
 * query's own block the mean over a's rows. The forwards use the same rule. */
float dsa__att_nvis(size_t a, size_t b, size_t bk, size_t T, bool causal) {
        const size_t nq = MIN(bk, T - a * bk);
        if (causal && b > a)
                return 0.0f;
        return !causal || b < a ? (float) MIN(bk, T - b * bk) : (float) (nq + 1) / 2.0f;
}

/* The loss sum_a KL(M || p) of one (layer, head) over all sequences, and, when grads are given,
 * its gradient (wq, wk: (R, HS), bias (NBINS)). */
static double loss_grad(const struct dsa__att *att, size_t layer, size_t head, const struct seq *seqs, size_t n_seq,
                        float *gq, float *gk, float *gb) {
        const size_t HS = att->head_dim, R = att->rank;
        double loss = 0;

        for (size_t i = 0; i < n_seq; i++) {
                const struct seq *s = &seqs[i];
                const size_t nb = s->nb, off = (layer * att->n_head + head) * R * HS;
                const float *wq = att->wq + off, *wk = att->wk + off;
                _cleanup_free_ float *u = malloc(nb * R * sizeof(float)), *w = malloc(nb * R * sizeof(float));
                _cleanup_free_ float *sc = malloc(nb * sizeof(float)), *gu = calloc(nb * R, sizeof(float));
                _cleanup_free_ float *gw = calloc(nb * R, sizeof(float));
                if (!u || !w || !sc || !gu || !gw)
                        return NAN;
                for (size_t b = 0; b < nb; b++)
                        for (size_t r = 0; r < R; r++) {
                                float du = 0, dw = 0;
                                for (size_t c = 0; c < HS; c++) {
                                        du += wq[r * HS + c] * s->qbar[b * HS + c];
                                        dw += wk[r * HS + c] * s->kbar[b * HS + c];
                                }
                                u[b * R + r] = du, w[b * R + r] = dw;
                        }
                for (size_t a = 0; a < nb; a++) {
                        const float *M = s->mass + a * nb;
                        const size_t nc = s->causal ? a + 1 : nb;
                        float mx = -INFINITY;
                        double z = 0;
                        const float *bias = att->bias + (layer * att->n_head + head) * DSA_ATT_NBINS;
                        /* dsa__att_scores()'s formula, from the projections computed once above */
                        for (size_t b = 0; b < nc; b++) {
                                float d = 0;
                                for (size_t r = 0; r < R; r++)
                                        d += u[a * R + r] * w[b * R + r];
                                sc[b] = d + bias[dsa__att_bin(a, b)] + logf(dsa__att_nvis(a, b, att->block, s->T, s->causal));
                        }
                        for (size_t b = 0; b < nc; b++)
                                mx = sc[b] > mx ? sc[b] : mx;
                        for (size_t b = 0; b < nc; b++)
                                z += exp((double) sc[b] - mx);
                        for (size_t b = 0; b < nc; b++) {
                                const double logp = (double) sc[b] - mx - log(z);
                                if (M[b] > 0)
                                        loss += M[b] * (log(M[b]) - logp);
                                if (!gq)
                                        continue;
                                const float g = (float) (exp(logp) - M[b]);
                                gb[dsa__att_bin(a, b)] += g;
                                for (size_t r = 0; r < R; r++) {
                                        gu[a * R + r] += g * w[b * R + r];
                                        gw[b * R + r] += g * u[a * R + r];
                                }
                        }
                }
                if (!gq)
                        continue;
                for (size_t b = 0; b < nb; b++)
                        for (size_t r = 0; r < R; r++)
                                for (size_t c = 0; c < HS; c++) {
                                        gq[r * HS + c] += gu[b * R + r] * s->qbar[b * HS + c];
                                        gk[r * HS + c] += gw[b * R + r] * s->kbar[b * HS + c];
                                }
        }
        return loss;
}

/* Adam on the (layer, head) parameters. */
static int fit_head(struct dsa__att *att, size_t layer, size_t head, const struct seq *seqs, size_t n_seq,
                    double *ret_before, double *ret_after) {
        const size_t HS = att->head_dim, R = att->rank, NW = R * HS, N = 2 * NW + DSA_ATT_NBINS;
        const size_t off = (layer * att->n_head + head) * NW, boff = (layer * att->n_head + head) * DSA_ATT_NBINS;
        _cleanup_free_ float *g = malloc(N * sizeof(float)), *m1 = calloc(N, sizeof(float)), *m2 = calloc(N, sizeof(float));
        float *p[3] = { att->wq + off, att->wk + off, att->bias + boff };
        const size_t len[3] = { NW, NW, DSA_ATT_NBINS };
        const float b1 = 0.9f, b2 = 0.999f;

        if (!g || !m1 || !m2)
                return -ENOMEM;
        *ret_before = loss_grad(att, layer, head, seqs, n_seq, NULL, NULL, NULL);
        for (size_t step = 1; step <= FIT_STEPS; step++) {
                memset(g, 0, N * sizeof(float));
                if (isnan(loss_grad(att, layer, head, seqs, n_seq, g, g + NW, g + 2 * NW)))
                        return -ENOMEM;
                const float c1 = 1.0f - powf(b1, (float) step), c2 = 1.0f - powf(b2, (float) step);
                for (size_t k = 0, at = 0; k < 3; k++)
                        for (size_t i = 0; i < len[k]; i++, at++) {
                                m1[at] = b1 * m1[at] + (1 - b1) * g[at];
                                m2[at] = b2 * m2[at] + (1 - b2) * g[at] * g[at];
                                p[k][i] -= FIT_LR * (m1[at] / c1) / (sqrtf(m2[at] / c2) + 1e-8f);
                        }
        }
        *ret_after = loss_grad(att, layer, head, seqs, n_seq, NULL, NULL, NULL);
        return 0;
}

/* The next of the sequence s -> uniform [-1, 1). */
static float rnd(uint64_t *s) {
        return (float) ((double) (dsa_rng_next(s) >> 11) / 4503599627370496.0 - 1.0);
}

int dsa__att_fitter_fit(struct dsa__att_fitter *f, uint32_t rank, struct dsa__att *att, double *ret_kl_before,
                        double *ret_kl_after) {
        const size_t LH = f->n_layer * f->n_head;
        double before = 0, after = 0;
        size_t rows = 0;
        int r;

        r = dsa__att_scorer_alloc(att, rank, (uint32_t) f->n_layer, (uint32_t) f->n_head, (uint32_t) f->HS);
        if (r < 0)
                return dsa__error(r, "cannot allocate a scorer of rank %u (1 to %d)", rank, DSA_ATT_MAX_RANK);
        if (f->cq) { /* the token scorer: closed form per (layer, head) */
                double share = 0;
                if (rank > f->HS)
                        return dsa__error(-EINVAL, "the token scorer's rank %u is above the head size %zu", rank, f->HS);
                for (size_t lh = 0; lh < LH; lh++) {
                        double s;
                        const size_t kvh = lh / f->n_head * (f->n_head / f->kv_div) + lh % f->n_head / f->kv_div;
                        r = dsa__att_fit_token_head(f->cq + lh * f->HS * f->HS, f->ck + kvh * f->HS * f->HS, f->HS,
                                                    rank, att->wq + lh * rank * f->HS, att->wk + lh * rank * f->HS, &s);
                        if (r < 0)
                                return r;
                        share += s / (double) LH;
                }
                if (ret_kl_before)
                        *ret_kl_before = 1, *ret_kl_after = share;
                return 0;
        }
        /* Init: small random projections, scaled like the attention's own logits; zero bias. */
        uint64_t seed = 42;
        const float sd = powf((float) f->HS, -0.25f) / sqrtf((float) rank);
        for (size_t i = 0; i < LH * rank * f->HS; i++) {
                att->wq[i] = sd * rnd(&seed);
                att->wk[i] = sd * rnd(&seed);
        }
        for (size_t lh = 0; lh < LH; lh++) {
                const struct list *li = &f->lists[lh];
                double b, a;
                if (li->n == 0)
                        continue; /* a head pruned away in this layer */
                r = fit_head(att, lh / f->n_head, lh % f->n_head, li->s, li->n, &b, &a);
                if (r < 0)
                        return r;
                before += b, after += a;
                for (size_t i = 0; i < li->n; i++)
                        rows += li->s[i].nb;
        }
        if (rows == 0)
                return dsa__error(-EINVAL, "the calibration text gave the DSA scorer nothing to fit");
        if (ret_kl_before) {
                *ret_kl_before = before / (double) rows;
                *ret_kl_after = after / (double) rows;
        }
        return 0;
}

static int llama_hook(void *userdata, size_t layer, const float *q, size_t ldq, const float *k, size_t ldk, size_t T) {
        struct dsa__att_fitter *f = userdata;
        return dsa__att_fitter_add(f, layer, q, ldq, k, ldk, T, f->n_head, f->n_head / f->kv_div, true);
}

int dsa__att_fit(const struct dsa_llama *l, const int32_t *const *seqs, const size_t *lens, size_t n_seq,
                 uint32_t rank, struct dsa__att *att, double *ret_kl_before, double *ret_kl_after) {
        const struct dsa_llama_config *c = &l->cfg;
        _cleanup_(dsa__att_fitter_freep) struct dsa__att_fitter *f = NULL;
        struct dsa__att dense;
        int r;

        if (n_seq == 0)
                return dsa__error(-EINVAL, "the DSA scorer needs calibration text");
        r = dsa__att_fitter_new(att->block, c->n_layer, c->n_head, c->head_dim, &f);
        if (r < 0)
                return r;
        f->kv_div = c->n_head / c->n_head_kv;
        if (att->token) {
                f->cq = calloc((size_t) c->n_layer * c->n_head * c->head_dim * c->head_dim, sizeof(double));
                f->ck = calloc((size_t) c->n_layer * c->n_head_kv * c->head_dim * c->head_dim, sizeof(double));
                if (!f->cq || !f->ck)
                        return -ENOMEM;
        }
        dsa__att_init(&dense);
        dense.block = att->block;
        struct dsa__llama_hooks hooks = { .userdata = f, .attention = llama_hook };
        for (size_t i = 0; i < n_seq; i++) {
                r = dsa__llama_forward(l, seqs[i], lens[i], &dense, NULL, NULL, NULL, NULL, &hooks);
                if (r < 0)
                        return r;
        }
        return dsa__att_fitter_fit(f, rank, att, ret_kl_before, ret_kl_after);
}
