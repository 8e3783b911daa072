/* The BERT encoder on fp32 weights, llm.c style: embeddings (word + token type + position,
 * LayerNorm); per layer one fused QKV GEMM, attention per (batch row, head) with the key-padding
 * mask, output dense + residual + LayerNorm, FFN up + GELU + down + residual + LayerNorm (post-LN);
 * then BERT's pooler and the classifier. Every vector and the embeddings live in one arena
 * filled at load, the layers' matrices packed for the GEMM, with each tensor's shape checked
 * against the config before a byte of it is read.
 *
 * The forward runs every step on the model's thread pool: GEMMs split by output-column panels,
 * attention by (batch row, head), embeddings and residual + LayerNorm by rows. Each output
 * element is computed by the same code in the same order whatever the split, so results do not
 * depend on the thread count. Activations are cached in the model for the next forward; a forward
 * that finds the cache in use (another thread running the same model) allocates its own. */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/error.h"
#include "bert.h"
#include "kernels/attention.h"
#include "kernels/kernels.h"

/* Caps on sizes read from files: generous for any BERT, small enough that products of two or
 * three of them cannot overflow size_t before the explicit checks below. */
#define BERT_MAX_DIM (UINT32_C(1) << 24)
#define BERT_MAX_LAYERS 1024u
#define BERT_MAX_LABELS (UINT32_C(1) << 20)

int dsa__bert_config_check(const struct dsa_bert_config *c) {
        if (c->n_vocab == 0 || c->n_ctx == 0 || c->n_embd == 0 || c->n_head == 0 || c->n_ff == 0 ||
            c->n_layer == 0 || c->n_type == 0)
                return dsa__error(-EBADMSG, "BERT config has a zero size (vocab %u, context %u, hidden %u, "
                                  "heads %u, intermediate %u, layers %u, token types %u)",
                                  c->n_vocab, c->n_ctx, c->n_embd, c->n_head, c->n_ff, c->n_layer, c->n_type);
        if (c->n_vocab > BERT_MAX_DIM || c->n_ctx > BERT_MAX_DIM || c->n_embd > BERT_MAX_DIM ||
            c->n_ff > BERT_MAX_DIM || c->n_type > BERT_MAX_DIM || c->n_layer > BERT_MAX_LAYERS ||
            c->n_labels > BERT_MAX_LABELS)
                return dsa__error(-EBADMSG, "BERT config has an implausibly large size");
        if (c->n_embd % c->n_head != 0)
                return dsa__error(-EBADMSG, "hidden size %u is not a multiple of the head count %u",
                                  c->n_embd, c->n_head);
        if (!isfinite(c->eps) || c->eps <= 0.0f || c->eps >= 1.0f)
                return dsa__error(-EBADMSG, "layer_norm_eps %g is not in (0, 1)", (double) c->eps);
        if (c->act != DSA_ACT_GELU_ERF && c->act != DSA_ACT_GELU_TANH)
                return dsa__error(-EBADMSG, "unknown activation %d", (int) c->act);
        return 0;
}

/* One activation buffer kept across forwards; busy while a forward uses it. It is kept only up
 * to SCRATCH_KEEP_BYTES: a resident daemon should not hold the activations of the largest batch
 * it ever ran (BERT-base at 64 x 128 tokens is ~230 MB; the 4-layer SST-2 model's batch of 64
 * short texts 7.6 MB, a third of its file); a forward that needs more gets a buffer of its own,
 * whose page faults are small next to its arithmetic. 1 MiB keeps a short request's (about
 * 10 KB a token at C = 256, 30 KB at C = 768). */
#define SCRATCH_KEEP_BYTES (1u << 20)

struct dsa__bert_scratch {
        pthread_mutex_t lock;
        float *buf;
        size_t floats;
        bool busy;
};

struct dsa__bert_scratch *dsa__bert_scratch_free(struct dsa__bert_scratch *s) {
        if (!s)
                return NULL;
        pthread_mutex_destroy(&s->lock);
        free(s->buf);
        free(s);
        return NULL;
}

struct dsa__bert_scratch *dsa__bert_scratch_new(void) {
        struct dsa__bert_scratch *s = calloc(1, sizeof(*s));

        if (!s)
                return NULL;
        if (pthread_mutex_init(&s->lock, NULL) != 0) {
                free(s);
                return NULL;
        }
        return s;
}

/* n floats of activations: the cached buffer when free (grown when too small), else a private
 * one; *ret_cached says which, for scratch_put(). NULL when out of memory. */
static float *scratch_get(struct dsa__bert_scratch *s, size_t n, bool *ret_cached) {
        float *p = NULL;

        pthread_mutex_lock(&s->lock);
        if (!s->busy && n <= SCRATCH_KEEP_BYTES / sizeof(float)) {
                if (s->floats < n) {
                        free(s->buf);
                        s->buf = malloc(n * sizeof(float));
                        s->floats = s->buf ? n : 0;
                }
                if (s->buf) {
                        s->busy = true;
                        p = s->buf;
                }
        }
        pthread_mutex_unlock(&s->lock);
        *ret_cached = p != NULL;
        return p ? p : malloc(n * sizeof(float));
}

static void scratch_put(struct dsa__bert_scratch *s, float *p, bool cached) {
        if (!cached) {
                free(p);
                return;
        }
        pthread_mutex_lock(&s->lock);
        s->busy = false;
        pthread_mutex_unlock(&s->lock);
}

/* Checks a batch against the model before any of it is used as an index. */
static int batch_check(const struct dsa_bert_config *cfg, const struct dsa_batch *b, size_t *ret_BT) {
        size_t BT;

        if (!b->ids || b->B == 0 || b->T == 0)
                return dsa__error(-EINVAL, "empty batch");
        if (b->T > cfg->n_ctx)
                return dsa__error(-EINVAL, "sequence of %zu tokens is longer than the model's context of %u",
                                  b->T, cfg->n_ctx);
        if (!size_mul_ok(b->B, b->T, &BT) || BT > SIZE_MAX / sizeof(float) / (8 * (size_t) cfg->n_embd + cfg->n_ff))
                return dsa__error(-EOVERFLOW, "batch of %zu x %zu tokens is too large", b->B, b->T);
        for (size_t i = 0; i < BT; i++) {
                if (b->ids[i] < 0 || (uint32_t) b->ids[i] >= cfg->n_vocab)
                        return dsa__error(-EINVAL, "token id %d at %zu is outside the vocabulary of %u",
                                          b->ids[i], i, cfg->n_vocab);
                if (b->type_ids && (b->type_ids[i] < 0 || (uint32_t) b->type_ids[i] >= cfg->n_type))
                        return dsa__error(-EINVAL, "token type %d at %zu is outside the model's %u types",
                                          b->type_ids[i], i, cfg->n_type);
        }
        *ret_BT = BT;
        return 0;
}

/* One forward's shapes, buffers and the step being split across the pool; each task below reads
 * it and writes only the part of the output its [begin, end) names. */
struct fwd {
        const struct dsa_bert *bert;
        const struct dsa_kernels *k;
        const struct dsa_batch *b;
        size_t T0, C, NH, HS, A, att_scratch; /* T0: the batch's T; NH, A: this layer's heads, NH*HS */
        float eps, scale;
        float *x, *qkv, *att, *tmp, *ff, *scratch, *probs;
        /* Padded: rows of T0 tokens, valid (B,T0) or NULL. Packed (ragged): row b's tokens are
         * rows off[b] .. off[b] + len[b] of every activation, idx[i] their flat position in the
         * batch, and there is no padding to mask. */
        const uint8_t *valid;
        const size_t *off, *len, *idx;
        size_t probs_stride; /* floats per (row, head) of probs */
        size_t layer;
        int err;             /* the first failure of a task */
        /* residual + LayerNorm */
        const float *g, *beta;
};

/* x rows [begin, end) = LayerNorm(word + token type + position embeddings). */
static void task_embed(void *arg, size_t begin, size_t end) {
        const struct fwd *f = arg;
        const struct dsa_bert *bert = f->bert;
        const struct dsa_batch *b = f->b;
        const size_t C = f->C;

        for (size_t i = begin; i < end; i++) {
                const size_t bt = f->idx ? f->idx[i] : i;
                const float *wt = bert->wtt + (size_t) (b->type_ids ? b->type_ids[bt] : 0) * C;
                const float *wp = bert->wpe + (bt % f->T0) * C;
                float *o = f->x + i * C;
                dsa__embed_row(&bert->wte, (size_t) b->ids[bt], o);
                /* HF adds word + token type first, then position. */
                for (size_t c = 0; c < C; c++)
                        o[c] = (o[c] + wt[c]) + wp[c];
        }
        f->k->layernorm_f32(f->x + begin * C, f->x + begin * C, bert->emb_ln_g, bert->emb_ln_b, end - begin,
                            C, f->eps);
}

/* (batch row, head) pairs [begin, end). Keys and values are read in place from qkv: the SIMD
 * kernels pack them into their scratch (K transposed, V in panels) once per pair. Pair p's
 * scratch, f->att_scratch floats at p f->att_scratch, is its own, so no two tasks share one. */
static void task_attention(void *arg, size_t begin, size_t end) {
        const struct fwd *f = arg;
        const size_t A = f->A, NH = f->NH, HS = f->HS;

        for (size_t p = begin; p < end; p++) {
                const size_t bb = p / NH, h = p % NH;
                const size_t row0 = f->off ? f->off[bb] : bb * f->T0, T = f->off ? f->len[bb] : f->T0;
                const float *q = f->qkv + row0 * 3 * A + h * HS;
                const uint8_t *valid = f->valid ? f->valid + bb * f->T0 : NULL;

                if (T == 0)
                        continue;
                f->k->attention_f32(f->att + row0 * A + h * HS, A, q, 3 * A, q + A, 3 * A, q + 2 * A, 3 * A, valid, T,
                                    HS, f->scale, f->probs ? f->probs + p * f->probs_stride : NULL,
                                    f->scratch + p * f->att_scratch);
        }
}

/* (batch row, head) pairs [begin, end) under a sparse attention variant (packed layout only):
 * per query block, the key blocks the variant picks (bidirectional), through the streaming
 * kernel; linear attention over the whole row. */
static void task_attention_sparse(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;
        const struct dsa__att *at = &f->bert->att;
        const struct dsa_attention_kernels *ak = dsa_attention_kernels();
        const size_t A = f->A, NH = f->NH, HS = f->HS, bk = at->block;
        size_t maxT = 0;

        for (size_t p = begin; p < end; p++)
                maxT = MAX(maxT, f->len[p / NH]);
        const size_t nb = (maxT + bk - 1) / bk, D = at->heuristic || !at->wq ? HS : at->rank;
        const size_t sel = dsa__att_select_scratch(at, nb), ks = MAX(dsa__att_attend_scratch(at, nb, bk, HS),
                                                                    dsa_attention_linear_scratch(HS));
        const bool summary = dsa__att_summaries(at);
        _cleanup_free_ float *scratch = malloc((sel + ks + nb * (3 * HS + 2 * D + 1)) * sizeof(float));
        _cleanup_free_ uint32_t *blocks = malloc(MAX(nb, (size_t) 1) * sizeof(uint32_t));
        /* this head's keys and values, and block means, packed for the streaming kernel */
        const size_t pk = dsa_attention_packed_floats(maxT, HS), ps = summary ? dsa_attention_packed_floats(nb, HS) : 0;
        _cleanup_free_ float *kv = pk == SIZE_MAX || ps == SIZE_MAX ? NULL
                                                                    : aligned_alloc(64, ((pk + ps) * sizeof(float) + 63) / 64 * 64);
        if (!scratch || !blocks || !kv) {
                f->err = -ENOMEM;
                return;
        }
        float *skv = kv + pk;
        float *kscr = scratch + sel, *qbar = kscr + ks, *kbar = qbar + nb * HS, *qp = kbar + nb * HS, *kp = qp + nb * D;
        float *nvis = kp + nb * D, *vbar = nvis + nb;

        for (size_t p = begin; p < end; p++) {
                const size_t bb = p / NH, h = p % NH, row0 = f->off[bb], T = f->len[bb], n_b = (T + bk - 1) / bk;
                const float *q = f->qkv + row0 * 3 * A + h * HS, *k = q + A, *v = q + 2 * A;
                float *out = f->att + row0 * A + h * HS;
                int r = 0;

                if (T == 0)
                        continue;
                if (at->kind == DSA_ATT_LINEAR) {
                        r = ak->linear_f32(out, A, q, 3 * A, k, 3 * A, v, 3 * A, T, HS, false, kscr);
                        if (r < 0)
                                f->err = r;
                        continue;
                }
                if (summary && ((r = ak->pool_blocks_f32(kbar, HS, k, 3 * A, T, bk, HS)) < 0 ||
                                (r = ak->pool_blocks_f32(vbar, HS, v, 3 * A, T, bk, HS)) < 0)) {
                        f->err = r;
                        continue;
                }
                if (at->kind == DSA_ATT_DSA) {
                        if ((r = ak->pool_blocks_f32(qbar, HS, q, 3 * A, T, bk, HS)) < 0 ||
                            (!summary && (r = ak->pool_blocks_f32(kbar, HS, k, 3 * A, T, bk, HS)) < 0)) {
                                f->err = r;
                                continue;
                        }
                        dsa__att_project(at, f->layer, h, true, qbar, HS, n_b, HS, qp);
                        dsa__att_project(at, f->layer, h, false, kbar, HS, n_b, HS, kp);
                }
                if ((r = ak->pack_kv_f32(kv, k, 3 * A, v, 3 * A, T, HS, f->scale)) < 0 ||
                    (summary && (r = ak->pack_kv_f32(skv, kbar, HS, vbar, HS, n_b, HS, f->scale)) < 0)) {
                        f->err = r;
                        continue;
                }
                for (size_t qb = 0; qb < n_b && r >= 0; qb++) {
                        const size_t t0 = qb * bk, nq = MIN(bk, T - t0);
                        size_t n;
                        if (at->kind == DSA_ATT_DSA) {
                                for (size_t b = 0; b < n_b; b++)
                                        nvis[b] = dsa__att_nvis(qb, b, bk, T, false);
                                n = dsa__att_select(at, f->layer, h, qb, n_b, false, qp + qb * D, kp, D, nvis, f->scale,
                                                    blocks, scratch);
                        } else
                                n = dsa__att_select(at, f->layer, h, qb, n_b, false, NULL, NULL, 0, NULL, f->scale,
                                                    blocks, scratch);
                        r = dsa__att_attend(at, ak, out + t0 * A, A, q + t0 * 3 * A, 3 * A, nq, qb, blocks, n, T, HS, false,
                                            kv, skv, kscr);
                }
                if (r < 0)
                        f->err = r;
        }
}

/* Rows [begin, end): x = LayerNorm(tmp + x). */
static void task_residual_ln(void *arg, size_t begin, size_t end) {
        const struct fwd *f = arg;
        const size_t C = f->C;
        float *t = f->tmp + begin * C;
        const float *x = f->x + begin * C;

        f->k->add_f32(t, t, x, (end - begin) * C);
        f->k->layernorm_f32(f->x + begin * C, t, f->g, f->beta, end - begin, C, f->eps);
}

/* Pairs [begin, end) of (batch row, head): the first query of the row against all its keys,
 * for the last layer of a first_only forward. att (B, A) gets one row per batch row. */
static void task_attention_first(void *arg, size_t begin, size_t end) {
        const struct fwd *f = arg;
        const size_t A = f->A, NH = f->NH, HS = f->HS;

        for (size_t p = begin; p < end; p++) {
                const size_t bb = p / NH, h = p % NH, row0 = f->off[bb], T = f->len[bb];
                const float *q = f->qkv + row0 * 3 * A + h * HS, *k = q + A, *v = q + 2 * A;
                float *s = f->scratch + p * f->att_scratch, *o = f->att + bb * A + h * HS, mx = -INFINITY, z = 0;

                for (size_t c = 0; c < HS; c++)
                        o[c] = 0.0f;
                if (T == 0)
                        continue;
                for (size_t j = 0; j < T; j++) {
                        float d = 0.0f;
                        for (size_t c = 0; c < HS; c++)
                                d += q[c] * k[j * 3 * A + c];
                        s[j] = d * f->scale;
                        mx = s[j] > mx ? s[j] : mx;
                }
                for (size_t j = 0; j < T; j++) {
                        s[j] = expf(s[j] - mx);
                        z += s[j];
                }
                for (size_t j = 0; j < T; j++) {
                        const float w = s[j] / z;
                        for (size_t c = 0; c < HS; c++)
                                o[c] += w * v[j * 3 * A + c];
                }
        }
}

/* Rows per task for the row-wise steps: enough work per dispatch to hide its cost. */
#define ROW_GRAIN 8

/* The packed (ragged) layout: no padding rows at all, so no GEMM or attention work is spent on
 * them, and each row may shrink on its own (token pruning). */
struct packed {
        size_t *off, *len; /* (B) */
        size_t *idx;       /* (BT) */
        float *x;          /* (BT, C) */
        float *score;      /* (T0) */
        size_t *order;     /* (T0) */
};

static void packed_free(struct packed *p) {
        free(p->off);
        free(p->len);
        free(p->idx);
        free(p->x);
        free(p->score);
        free(p->order);
}

/* Lays the batch's real tokens out packed; returns their count. */
static size_t packed_init(struct packed *p, const struct dsa_batch *b) {
        size_t n = 0;

        for (size_t bb = 0; bb < b->B; bb++) {
                p->off[bb] = n;
                for (size_t t = 0; t < b->T; t++)
                        if (!b->mask || b->mask[bb * b->T + t])
                                p->idx[n++] = bb * b->T + t;
                p->len[bb] = n - p->off[bb];
        }
        return n;
}

/* Writes the packed rows x back to their places in hidden (B,T0,C). */
static void scatter(const struct packed *p, const float *x, float *hidden, size_t n, size_t C) {
        for (size_t i = 0; i < n; i++)
                memcpy(hidden + p->idx[i] * C, x + i * C, C * sizeof(float));
}

size_t dsa__tokens_kept(float keep, size_t n) {
        return MIN(MAX((size_t) ceilf(keep * (float) n), (size_t) 1), n);
}

float dsa__token_score(const float *w, const float *x, size_t C) {
        float s = w[C];

        for (size_t i = 0; i < C; i++)
                s += w[i] * x[i];
        return s;
}

static int cmp_score(const void *a, const void *b, void *key) {
        const float *score = key;
        float x = score[*(const size_t *) a], y = score[*(const size_t *) b];
        size_t i = *(const size_t *) a, j = *(const size_t *) b;
        if (x != y)
                return x > y ? -1 : 1;
        return (i > j) - (i < j);
}

static int cmp_index(const void *a, const void *b) {
        size_t i = *(const size_t *) a, j = *(const size_t *) b;
        return (i > j) - (i < j);
}

/* Dynamic token pruning: after a layer that keeps a fraction k < 1, each row keeps its first
 * token ([CLS]) and the ceil(k n) - 1 others of its n with the highest score, in their order;
 * the others leave the residual stream (their output rows keep their state at that layer). The
 * score is the learned one of the layer's output x (w, C + 1) or, w NULL, the attention the
 * token received in that layer (PoWER-BERT's significance: probabilities summed over heads and
 * queries; probs: (B, NH) blocks of stride floats, each len x len). Compacts x in place (a
 * destination row never lies after its source); returns the new token count. */
static size_t prune_tokens(struct packed *p, float *x, const float *w, const float *probs, size_t stride, size_t B,
                           size_t NH, size_t C, float keep) {
        size_t n = 0;

        for (size_t b = 0; b < B; b++) {
                const size_t T = p->len[b], o = p->off[b];
                const size_t want = dsa__tokens_kept(keep, T);
                for (size_t k = 0; k < T; k++) {
                        float s = 0.0f;
                        if (w)
                                s = dsa__token_score(w, x + (o + k) * C, C);
                        else
                                for (size_t h = 0; h < NH; h++) {
                                        const float *ph = probs + (b * NH + h) * stride;
                                        for (size_t q = 0; q < T; q++)
                                                s += ph[q * T + k];
                                }
                        p->score[k] = k == 0 ? INFINITY : s;
                        p->order[k] = k;
                }
                qsort_r(p->order, T, sizeof(size_t), cmp_score, p->score);
                qsort(p->order, want, sizeof(size_t), cmp_index);
                for (size_t i = 0; i < want; i++) {
                        const size_t src = o + p->order[i];
                        if (n + i != src)
                                memmove(x + (n + i) * C, x + src * C, C * sizeof(float));
                        p->idx[n + i] = p->idx[src];
                }
                p->off[b] = n;
                p->len[b] = T == 0 ? 0 : want;
                n += p->len[b];
        }
        return n;
}

/* The last layer when only each row's first token is wanted: Q, K, V of every token (the keys
 * and values are needed), the rest on the B first tokens only, gathered into (B, C) rows at the
 * front of the buffers, and their new state written back to x. */
static void last_layer_first_only(struct dsa_threadpool *pool, struct fwd *f, const struct dsa_bert_layer *y,
                                  size_t N, void *lin_scratch, enum dsa_epilogue gelu) {
        const size_t B = f->b->B, C = f->C;
        float *x = f->x, *xf = f->qkv;

        dsa__linear_forward(pool, &y->qkv, f->qkv, 3 * f->A, x, C, y->qkv_b, N, DSA_EPILOGUE_NONE, lin_scratch);
        dsa_threadpool_for(pool, B * f->NH, 1, task_attention_first, f);
        /* qkv is free now: it holds the first tokens' residual stream. */
        for (size_t b = 0; b < B; b++)
                memcpy(xf + b * C, x + f->off[b] * C, C * sizeof(float));
        f->x = xf;
        dsa__linear_forward(pool, &y->o, f->tmp, C, f->att, f->A, y->o_b, B, DSA_EPILOGUE_NONE, lin_scratch);
        f->g = y->ln1_g, f->beta = y->ln1_b;
        dsa_threadpool_for(pool, B, ROW_GRAIN, task_residual_ln, f);
        dsa__linear_forward(pool, &y->up, f->ff, y->n_ff, xf, C, y->up_b, B, gelu, lin_scratch);
        dsa__linear_forward(pool, &y->down, f->tmp, C, f->ff, y->n_ff, y->down_b, B, DSA_EPILOGUE_NONE, lin_scratch);
        f->g = y->ln2_g, f->beta = y->ln2_b;
        dsa_threadpool_for(pool, B, ROW_GRAIN, task_residual_ln, f);
        for (size_t b = 0; b < B; b++)
                if (f->len[b] > 0)
                        memcpy(x + f->off[b] * C, xf + b * C, C * sizeof(float));
        f->x = x;
}

/* Whether a layer but the last prunes tokens; by_attention: one that ranks them by the
 * attention they received (no learned score), so the forward must keep its probabilities. */
static bool prunes_tokens(const struct dsa_bert *bert, bool by_attention) {
        for (size_t l = 0; l + 1 < bert->cfg.n_layer; l++)
                if (bert->layers[l].token_keep < 1.0f && !(by_attention && bert->layers[l].token_score))
                        return true;
        return false;
}

static void hook(const struct dsa__bert_hooks *hooks, size_t l, enum dsa__bert_lin which, const float *x, size_t N,
                 size_t C, const uint8_t *valid) {
        if (hooks && hooks->linear_input)
                hooks->linear_input(hooks->userdata, l, which, x, N, C, valid);
}

int dsa__bert_forward(const struct dsa_bert *bert, const struct dsa_batch *b, float *ret_hidden,
                      struct dsa_trace *trace, const struct dsa__bert_hooks *hooks) {
        const struct dsa_bert_config *cfg = &bert->cfg;
        const size_t B = b->B, T0 = b->T, C = cfg->n_embd, HS = C / cfg->n_head, F = bert->ff_max;
        const enum dsa_epilogue gelu = cfg->act == DSA_ACT_GELU_TANH ? DSA_EPILOGUE_GELU_TANH
                                                                     : DSA_EPILOGUE_GELU_ERF;
        const bool pruning = !trace && !hooks && prunes_tokens(bert, false);
        const bool att_probs = pruning && prunes_tokens(bert, true);
        const bool sparse = bert->att.kind != DSA_ATT_DENSE;
        const bool packed = !trace && (b->ragged || b->first_only || pruning || sparse);
        struct dsa_threadpool *pool = bert->pool;
        size_t BT = 0, lin_bytes = 0;
        bool cached;
        int r;

        r = batch_check(cfg, b, &BT);
        if (r < 0)
                return r;
        if (sparse && trace)
                return dsa__error(-EOPNOTSUPP, "traces (attention probabilities) need dense attention");
        if (sparse && (r = dsa__att_check(&bert->att, cfg->n_layer, cfg->n_head, HS)) < 0)
                return r;
        for (size_t l = 0; l < cfg->n_layer; l++)
                for (int j = 0; j < _DSA__LIN_MAX; j++)
                        lin_bytes = MAX(lin_bytes, dsa__linear_scratch(dsa__bert_linear((struct dsa_bert *) bert, l,
                                                                                        (enum dsa__bert_lin) j), BT));

        /* Activations: qkv (BT,3C), att (BT,C), tmp (BT,C), ff (BT,F), then the attention
         * scratch of each (batch row, head), the int8 rows of a quantized linear, and with token
         * pruning by attention received the probabilities (B,NH,T,T) of a pruning layer.
         * batch_check bounded BT (8C + F) floats in bytes, so the activations cannot overflow;
         * the rest is checked. */
        const size_t att_scratch = dsa_attention_scratch(T0, HS);
        size_t n = BT * (5 * C + F), att_n, probs_n = 0, lin_n = (lin_bytes + 63) / sizeof(float) + 16, bytes;
        if (!size_mul_ok(B * cfg->n_head, att_scratch, &att_n) || !size_add_ok(n, att_n, &n) ||
            !size_add_ok(n, lin_n, &n) ||
            (att_probs && (!size_mul_ok(BT * cfg->n_head, T0, &probs_n) || !size_add_ok(n, probs_n, &n))) ||
            !size_mul_ok(n, sizeof(float), &bytes))
                return dsa__error(-EOVERFLOW, "batch of %zu x %zu tokens is too large", B, T0);
        float *act = scratch_get(bert->scratch, n, &cached);
        if (!act)
                return dsa__error(-ENOMEM, "cannot allocate activations for %zu x %zu tokens", B, T0);

        struct fwd f = {
                .bert = bert, .k = dsa_kernels(), .b = b, .T0 = T0, .C = C, .HS = HS,
                .att_scratch = att_scratch, .eps = cfg->eps, .scale = 1.0f / sqrtf((float) HS),
                .x = ret_hidden, /* the residual stream lives in the caller's output */
                .valid = b->mask, .probs_stride = T0 * T0,
        };
        float *qkv = act, *att = qkv + BT * 3 * C, *tmp = att + BT * C, *ff = tmp + BT * C;
        f.qkv = qkv, f.att = att, f.tmp = tmp, f.ff = ff, f.scratch = ff + BT * F;
        float *after = f.scratch + att_n;
        void *lin_scratch = (void *) (((uintptr_t) after + 63) & ~(uintptr_t) 63);
        float *probs_buf = after + lin_n;

        struct packed p = { 0 };
        size_t N = BT;
        if (packed) {
                p.off = malloc(B * sizeof(size_t));
                p.len = malloc(B * sizeof(size_t));
                p.idx = malloc(BT * sizeof(size_t));
                p.x = malloc(BT * C * sizeof(float));
                p.score = malloc(T0 * sizeof(float));
                p.order = malloc(T0 * sizeof(size_t));
                if (!p.off || !p.len || !p.idx || !p.x || !p.score || !p.order) {
                        r = dsa__error(-ENOMEM, "cannot allocate the packed token layout");
                        goto out;
                }
                N = packed_init(&p, b);
                /* Padding rows of the output are zeros: nothing computes them. */
                if (N < BT)
                        memset(ret_hidden, 0, BT * C * sizeof(float));
                f.x = p.x, f.valid = NULL, f.off = p.off, f.len = p.len, f.idx = p.idx;
        }

        dsa_threadpool_for(pool, N, ROW_GRAIN, task_embed, &f);
        if (trace && trace->hidden && trace->hidden[0])
                memcpy(trace->hidden[0], f.x, BT * C * sizeof(float));

        for (size_t l = 0; l < cfg->n_layer; l++) {
                const struct dsa_bert_layer *y = &bert->layers[l];
                const bool prune_here = pruning && y->token_keep < 1.0f && l + 1 < cfg->n_layer;
                const bool need_probs = prune_here && !y->token_score; /* attention received */

                f.NH = y->n_head, f.A = y->n_head * HS;
                if (packed && b->first_only && !hooks && l + 1 == cfg->n_layer) {
                        last_layer_first_only(pool, &f, y, N, lin_scratch, gelu);
                        break;
                }
                hook(hooks, l, DSA__LIN_QKV, f.x, N, C, f.valid);
                dsa__linear_forward(pool, &y->qkv, qkv, 3 * f.A, f.x, C, y->qkv_b, N, DSA_EPILOGUE_NONE, lin_scratch);
                if (hooks && hooks->attention)
                        for (size_t bb = 0; bb < B; bb++) {
                                const size_t row0 = f.off ? f.off[bb] : bb * T0;
                                size_t T = f.off ? f.len[bb] : T0;
                                if (!f.off && f.valid)
                                        for (T = 0; T < T0 && f.valid[bb * T0 + T]; T++)
                                                ;
                                hooks->attention(hooks->userdata, l, qkv + row0 * 3 * f.A, qkv + row0 * 3 * f.A + f.A,
                                                 3 * f.A, T, f.NH);
                        }
                f.probs = need_probs ? probs_buf : trace && trace->attn ? trace->attn[l] : NULL;
                f.layer = l;
                if (sparse && !need_probs) {
                        dsa_threadpool_for(pool, B * f.NH, 1, task_attention_sparse, &f);
                        if (f.err < 0) {
                                r = f.err;
                                goto out;
                        }
                } else
                        dsa_threadpool_for(pool, B * f.NH, 1, task_attention, &f);
                hook(hooks, l, DSA__LIN_O, att, N, f.A, f.valid);
                dsa__linear_forward(pool, &y->o, tmp, C, att, f.A, y->o_b, N, DSA_EPILOGUE_NONE, lin_scratch);
                f.g = y->ln1_g, f.beta = y->ln1_b;
                dsa_threadpool_for(pool, N, ROW_GRAIN, task_residual_ln, &f);

                hook(hooks, l, DSA__LIN_UP, f.x, N, C, f.valid);
                dsa__linear_forward(pool, &y->up, ff, y->n_ff, f.x, C, y->up_b, N, gelu, lin_scratch);
                hook(hooks, l, DSA__LIN_DOWN, ff, N, y->n_ff, f.valid);
                dsa__linear_forward(pool, &y->down, tmp, C, ff, y->n_ff, y->down_b, N, DSA_EPILOGUE_NONE, lin_scratch);
                f.g = y->ln2_g, f.beta = y->ln2_b;
                dsa_threadpool_for(pool, N, ROW_GRAIN, task_residual_ln, &f);

                if (trace && trace->hidden && trace->hidden[l + 1])
                        memcpy(trace->hidden[l + 1], f.x, BT * C * sizeof(float));
                if (prune_here && f.NH > 0) {
                        /* The dropped tokens' rows keep this layer's state. */
                        scatter(&p, f.x, ret_hidden, N, C);
                        N = prune_tokens(&p, f.x, y->token_score, probs_buf, f.probs_stride, B, f.NH, C,
                                         y->token_keep);
                }
        }
        if (packed)
                scatter(&p, f.x, ret_hidden, N, C);
        r = 0;
out:
        packed_free(&p);
        scratch_put(bert->scratch, act, cached);
        return r;
}

/* out (B,C) = tanh(W h[CLS] + b) for each row. */
static int pooler(const struct dsa_bert *bert, size_t B, size_t T, const float *hidden, float *out) {
        const size_t C = bert->cfg.n_embd;
        _cleanup_free_ float *cls = calloc(B * C, sizeof(float));

        if (!cls)
                return -ENOMEM;
        for (size_t b = 0; b < B; b++)
                memcpy(cls + b * C, hidden + b * T * C, C * sizeof(float));
        dsa_linear_f32(out, C, cls, bert->pool_w, bert->pool_b, B, C, C);
        for (size_t i = 0; i < B * C; i++)
                out[i] = tanhf(out[i]);
        return 0;
}

int dsa__bert_pool(const struct dsa_bert *bert, const struct dsa_batch *b, const float *hidden,
                   enum dsa_pool mode, float *out) {
        const size_t B = b->B, T = b->T, C = bert->cfg.n_embd;

        switch (mode) {
        case DSA_POOL_CLS:
                for (size_t i = 0; i < B; i++)
                        memcpy(out + i * C, hidden + i * T * C, C * sizeof(float));
                return 0;
        case DSA_POOL_MEAN:
                for (size_t i = 0; i < B; i++) {
                        float *o = out + i * C;
                        size_t cnt = 0;
                        memset(o, 0, C * sizeof(float));
                        for (size_t t = 0; t < T; t++) {
                                if (b->mask && !b->mask[i * T + t])
                                        continue;
                                const float *h = hidden + (i * T + t) * C;
                                for (size_t c = 0; c < C; c++)
                                        o[c] += h[c];
                                cnt++;
                        }
                        if (cnt > 0)
                                for (size_t c = 0; c < C; c++)
                                        o[c] /= (float) cnt;
                }
                return 0;
        case DSA_POOL_POOLER:
                if (!bert->pool_w)
                        return dsa__error(-EOPNOTSUPP, "the model has no pooler");
                return pooler(bert, B, T, hidden, out);
        default:
                return dsa__error(-EINVAL, "pooling mode %d gives no single vector", (int) mode);
        }
}

int dsa__bert_classify(const struct dsa_bert *bert, const struct dsa_batch *b, const float *hidden,
                       float *ret_logits) {
        const size_t B = b->B, C = bert->cfg.n_embd;
        int r;

        if (!bert->cls_w)
                return dsa__error(-EOPNOTSUPP, "the model has no classifier head");
        _cleanup_free_ float *pooled = malloc(B * C * sizeof(float));
        if (!pooled)
                return -ENOMEM;
        /* Without a pooler (llama.cpp's converter drops BERT's), the classifier reads h[CLS]. */
        r = dsa__bert_pool(bert, b, hidden, bert->pool_w ? DSA_POOL_POOLER : DSA_POOL_CLS, pooled);
        if (r < 0)
                return r;
        dsa_linear_f32(ret_logits, bert->cfg.n_labels, pooled, bert->cls_w, bert->cls_b, B, C,
                       bert->cfg.n_labels);
        return 0;
}
