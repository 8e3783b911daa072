/* Llama decoder forward over one sequence (llm.c's order of steps):
 *
 *   x = token_embd[ids]                                              (T, C)
 *   per layer:
 *     qkv = rmsnorm(x) Wqkv^T                                        (T, NH HS + 2 NKV HS)
 *     q, k = rotary(q, k)                   adjacent pairs, see llama.h
 *     a = attention(q, k, v)                causal, query head h reads key/value head h / (NH/NKV)
 *     x += a Wo^T
 *     g|u = rmsnorm(x) Wgu^T                                         (T, 2F)
 *     x += (silu(g) * u) Wdown^T
 *   h = rmsnorm(x)                                                   (T, C)
 *   logits = h Wout^T                                                (T, V), 256 rows at a time
 *
 * Attention is block-streamed: each (head, query block of `block` rows) task picks its key
 * blocks (attention.c: all visible ones for dense, the variant's for local/fixed/DSA) and runs
 * the exact online-softmax kernel over them; linear attention is one task per head. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "basic/time-util.h"
#include "kernels/attention.h"
#include "kernels/kernels.h"
#include "llama.h"

#define HEAD_ROWS 256 /* rows of logits at a time */
#define ROW_GRAIN 16
/* Rows the linear layers run on at a time, with the steps between them: each thread takes such
 * chunks in turn and runs every step of one on its own (task_slots), so the chunk's activations
 * (the 2F-wide gate/up rows above all) stay in its L2 from the GEMM that writes them to the one
 * that reads them, and a layer costs two dispatches instead of a few per chunk. At 4,096 tokens
 * on longlm-4l256 the forward outside attention went from about 145 ms to 105 (fp32 linears)
 * and from about 90 to 55-65 (int8), against 128-row chunks with the GEMM columns split across
 * the threads; 64 rows did a little better than 128 or 256 with int8 linears. */
#define LINEAR_ROWS 64
#define PACK_ROWS 32  /* task_rows' units are multiples: pack_kv_rows_f32 takes pieces of multiples of 32 */
#define TOKEN_BLOCKS 16 /* blocks a unit of the token scorer's bytes (task_rows) */
#define PAIR_BATCH 16   /* (head, query block) pairs a thread of task_attention claims at once */

struct fwd {
        const struct dsa_llama *l;
        const struct dsa_kernels *k;
        const struct dsa_attention_kernels *ak;
        const struct dsa__att *att;
        const int32_t *ids;
        size_t T, C, NH, NKV, HS, F, QKV, layer;
        size_t bk, nb; /* block size, blocks in the sequence */
        float scale;
        float *x, *h, *qkv, *a, *ff;
        /* row-split steps (task_slots): the layer, which step, the next chunk to take, and each
         * slot's gate/up rows and linear scratch */
        const struct dsa_llama_layer *y;
        bool mlp;
        atomic_size_t next;
        size_t ff_floats, ls_bytes;
        void *ls;
        float *qbar, *kbar; /* (nb, NH HS), (nb, NKV HS): block means (DSA, summaries) */
        float *vbar;        /* (nb, NKV HS): block means of the values (summaries) */
        bool by_means;      /* the pooled DSA scorer: block means of queries and keys, projected */
        bool pool;          /* means wanted: by_means or summaries */
        float *qp, *kp;     /* (NH, nb, D): the scorer's projections of them, per query head */
        struct dsa_packed_f32 **wk, **wq; /* the scorer's weights packed: (n_layer, NKV) of G R
                                           * rows, (n_layer, NH) of R rows times 1/sqrt(HS) */
        int8_t *qq;         /* token scorer at 8 bits (block_max_lowrank_q8): the scaled projections
                             * of the scored rows as (NH, nsr, R4) signed bytes, */
        float *qs;          /* (NH, nsr) their scales, */
        uint8_t *kq;        /* those of every key as (NH, R4/4 * bk, ldkq) bytes of 4 components a
                             * key, block-major: row g bk + t holds key t of every block, */
        float *ks;          /* (NH, nb) key block scales; R4 = R rounded up to 4, the padding 0 */
        size_t r4, ldkq;
        size_t nsr;         /* scored rows: every stride-th, and the last */
        size_t unit;        /* rows a unit of unit_rows: whole blocks, a multiple of PACK_ROWS */
        size_t tunit;       /* rows a unit of task_rows: TOKEN_BLOCKS units with the token scorer */
        size_t D;
        float *kv, *skv;    /* (NKV, pk), (NKV, ps): each key head's keys and block means packed
                             * (pack_kv_f32) for the streaming kernel, once per layer */
        size_t pk, ps;
        atomic_uint_fast64_t kept;
        atomic_uint_fast64_t select_ns, attend_ns; /* summed over the tasks (stats) */
        int err;
        /* the output head */
        float *logits;
        size_t r0, rows, V;
        double *nll;
};

static void task_embed(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;
        for (size_t t = begin; t < end; t++)
                dsa__embed_row(&f->l->wte, (size_t) f->ids[t], f->x + t * f->C);
}

/* h = rmsnorm(x) with the output norm's gains, rows [begin, end). */
static void task_out_norm(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;
        f->k->rmsnorm_f32(f->h + begin * f->C, f->x + begin * f->C, f->l->out_norm, end - begin, f->C,
                          f->l->cfg.eps);
}

static size_t gcd(size_t a, size_t b) {
        while (b) {
                const size_t t = a % b;
                a = b, b = t;
        }
        return a;
}

/* Rotates pairs (2i, 2i+1) of each head of q and k in rows [begin, end) (rope_f32). */
static void rope_rows(struct fwd *f, size_t begin, size_t end) {
        const struct dsa_llama *l = f->l;
        const size_t HS = f->HS, half = HS / 2;
        float cs_buf[512], sn_buf[512], c[1024], s[1024];

        for (size_t t = begin; t < end; t++) {
                const float *cs = l->rope_cos + t * half, *sn = l->rope_sin + t * half;
                if (t >= l->rope_n) { /* past the table */
                        dsa__llama_rope_row(&l->cfg, t, cs_buf, sn_buf);
                        cs = cs_buf, sn = sn_buf;
                }
                for (size_t i = 0; i < half; i++)
                        c[2 * i] = c[2 * i + 1] = cs[i], s[2 * i] = -sn[i], s[2 * i + 1] = sn[i];
                f->k->rope_f32(f->qkv + t * f->QKV, f->NH + f->NKV, HS, c, s); /* q heads then k heads */
        }
}

/* The DSA scorer's projections of every block's mean query and key, heads [begin, end). */
static void task_project(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;
        const size_t HS = f->HS, G = f->NH / f->NKV;

        for (size_t h = begin; h < end; h++) {
                dsa__att_project(f->att, f->layer, h, true, f->qbar + h * HS, f->NH * HS, f->nb, HS,
                                 f->qp + h * f->nb * f->D);
                dsa__att_project(f->att, f->layer, h, false, f->kbar + (h / G) * HS, f->NKV * HS, f->nb, HS,
                                 f->kp + h * f->nb * f->D);
        }
}

/* Key heads [begin, end): the block means of keys and values packed for the summaries. */
static void task_pack_means(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;
        const size_t HS = f->HS, ld = f->NKV * HS;

        for (size_t g = begin; g < end; g++)
                if (f->ak->pack_kv_f32(f->skv + g * f->ps, f->kbar + g * HS, ld, f->vbar + g * HS, ld, f->nb, HS,
                                       f->scale) < 0)
                        f->err = -EINVAL;
}

/* The token scorer's weights of every layer packed for dsa_linear_packed_f32: wk (n, NKV) and wq
 * (n, NH) as struct fwd takes them. */
struct scorer_weights {
        struct dsa_packed_f32 **wk, **wq;
        size_t nk, nq;
};

static void scorer_weights_clear(struct scorer_weights *s) {
        for (size_t i = 0; s->wk && i < s->nk; i++)
                dsa_packed_f32_free(s->wk[i]);
        for (size_t i = 0; s->wq && i < s->nq; i++)
                dsa_packed_f32_free(s->wq[i]);
        free(s->wk);
        free(s->wq);
        *s = (struct scorer_weights) { 0 };
}

static int scorer_weights_pack(struct scorer_weights *s, const struct dsa__att *a, size_t n_layer, size_t NH,
                               size_t NKV, size_t HS, float scale) {
        const size_t R = a->rank, G = NH / NKV;
        _cleanup_free_ float *w = malloc(R * HS * sizeof(float));
        int r;

        s->nk = n_layer * NKV, s->nq = n_layer * NH;
        s->wk = calloc(s->nk, sizeof(*s->wk)), s->wq = calloc(s->nq, sizeof(*s->wq));
        if (!w || !s->wk || !s->wq)
                return -ENOMEM;
        for (size_t l = 0; l < n_layer; l++) {
                const float *wk = a->wk + l * NH * R * HS, *wq = a->wq + l * NH * R * HS;
                for (size_t g = 0; g < NKV; g++) /* rows g G R.. of wk: the G query heads of key head g */
                        if ((r = dsa_packed_f32_new(wk + g * G * R * HS, G * R, HS, &s->wk[l * NKV + g])) < 0)
                                return r;
                for (size_t h = 0; h < NH; h++) {
                        for (size_t i = 0; i < R * HS; i++)
                                w[i] = wq[h * R * HS + i] * scale;
                        if ((r = dsa_packed_f32_new(w, R, HS, &s->wq[l * NH + h])) < 0)
                                return r;
                }
        }
        return 0;
}

/* Floats of token_rows' buf for a unit of n rows: kp, then qt for the unit's scored rows, n /
 * stride on the stride (the stride divides the block size, so a unit starts on it) and the
 * sequence's last. */
static size_t token_rows_floats(const struct fwd *f, size_t n) {
        const size_t R = f->att->rank;
        return n * f->NH / f->NKV * R + (n / f->att->stride + 1) * R;
}

/* The token scorer's bytes for block_max_lowrank_q8 of the unit [t0, t1) (whole blocks, the
 * last one maybe short at the end of the sequence), straight from its rows:
 *   keys: each key head's keys projected for its G query heads at once (kp (n, G R)), each query
 *     head's R columns to bytes by keys_lowrank_q8 (kq, ks: one scale a block; a block is scored
 *     only once all its keys precede the query block, so this stays causal);
 *   queries: each query head's scored rows among them (every stride-th, and the sequence's last)
 *     projected, times 1/sqrt(HS) (in the weights), each to signed bytes by its own scale (qq, qs:
 *     rows_lowrank_q8).
 * buf: token_rows_floats(f, n). */
static void token_rows(struct fwd *f, size_t t0, size_t t1, float *buf) {
        const size_t R = f->att->rank, R4 = f->r4, HS = f->HS, G = f->NH / f->NKV, GR = G * R, QC = f->NH * HS;
        const size_t n = t1 - t0, bk = f->bk, b0 = t0 / bk, st = f->att->stride, nreg = f->T / st;
        float *kp = buf, *qt = kp + n * GR;

        for (size_t g = 0; g < f->NKV; g++) {
                dsa_linear_packed_f32(kp, GR, f->qkv + t0 * f->QKV + QC + g * HS, f->QKV, f->wk[f->layer * f->NKV + g],
                                      NULL, n, 0, GR, DSA_EPILOGUE_NONE);
                for (size_t a = 0; a < G; a++) { /* query head g G + a: columns a R .. a R + R - 1 */
                        const size_t h = g * G + a;
                        if (f->ak->keys_lowrank_q8(f->kq + h * (R4 / 4) * bk * f->ldkq + 4 * b0, f->ldkq,
                                                   f->ks + h * f->nb + b0, kp + a * R, GR, n, bk, R) < 0)
                                f->err = -EINVAL;
                }
        }
        /* scored rows i st + st - 1 in [t0, t1): i in [i0, i1); and the last row, off the stride */
        const size_t i0 = t0 / st, i1 = MIN(t1 / st, nreg), last = f->nsr > nreg && t1 == f->T;
        for (size_t h = 0; h < f->NH; h++) {
                const struct dsa_packed_f32 *w = f->wq[f->layer * f->NH + h];
                if (i1 > i0)
                        dsa_linear_packed_f32(qt, R, f->qkv + (i0 * st + st - 1) * f->QKV + h * HS, st * f->QKV, w,
                                              NULL, i1 - i0, 0, R, DSA_EPILOGUE_NONE);
                if (last)
                        dsa_linear_packed_f32(qt + (i1 - i0) * R, R, f->qkv + (f->T - 1) * f->QKV + h * HS, f->QKV, w,
                                              NULL, 1, 0, R, DSA_EPILOGUE_NONE);
                /* the last row is row nsr - 1 = nreg = i1 (last: t1 is T), after the others */
                if (f->ak->rows_lowrank_q8(f->qq + (h * f->nsr + i0) * R4, R4, f->qs + h * f->nsr + i0, qt, R,
                                           i1 - i0 + last, R) < 0)
                        f->err = -EINVAL;
        }
}

/* Rows [t0, t1) (whole blocks but at the end) while they are in cache: rotary on q and k; the
 * keys and values packed for the streaming kernel (pack_kv_rows_f32, once for every query head and
 * query block that reads them); the blocks' means (the pooled scorer, summaries). */
static void unit_rows(struct fwd *f, size_t t0, size_t t1) {
        const size_t HS = f->HS, ld = f->NKV * HS, QC = f->NH * HS, b0 = t0 / f->bk;
        const bool by_means = f->by_means, sums = dsa__att_summaries(f->att);
        const float *x = f->qkv + t0 * f->QKV;

        rope_rows(f, t0, t1);
        for (size_t g = 0; f->kv && g < f->NKV; g++) {
                const float *k = f->qkv + QC + g * HS;
                if (f->ak->pack_kv_rows_f32(f->kv + g * f->pk, k, f->QKV, k + ld, f->QKV, f->T, t0, t1, HS, f->scale) <
                    0)
                        f->err = -EINVAL;
        }
        if ((by_means && f->ak->pool_blocks_f32(f->qbar + b0 * QC, QC, x, f->QKV, t1 - t0, f->bk, QC) < 0) ||
            ((by_means || sums) && f->ak->pool_blocks_f32(f->kbar + b0 * ld, ld, x + QC, f->QKV, t1 - t0, f->bk, ld) < 0) ||
            (sums && f->ak->pool_blocks_f32(f->vbar + b0 * ld, ld, x + QC + ld, f->QKV, t1 - t0, f->bk, ld) < 0))
                f->err = -EINVAL;
}

/* Units [begin, end) of f->tunit rows: unit_rows on each f->unit of them, then the token scorer's
 * bytes of them all (token_rows). A unit of the token scorer spans TOKEN_BLOCKS blocks: its keys'
 * bytes land block-major (a 64-byte line holds 16 blocks' bytes of one key slot), so that a unit
 * of one block wrote 4 bytes into each line it touched and the lines were read for ownership 16
 * times over; at 16 blocks it fills them. */
static void task_rows(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;
        _cleanup_free_ float *buf = f->wk ? malloc(token_rows_floats(f, f->tunit) * sizeof(float)) : NULL;

        if (f->wk && !buf) {
                f->err = -ENOMEM;
                return;
        }
        for (size_t u = begin; u < end; u++) {
                const size_t t0 = u * f->tunit, t1 = MIN(t0 + f->tunit, f->T);
                for (size_t r = t0; r < t1; r += f->unit)
                        unit_rows(f, r, MIN(r + f->unit, t1));
                if (f->wk)
                        token_rows(f, t0, t1, buf);
        }
}

/* The oracle's choice for (head h, query block qb): the exact share of the dense attention on
 * every visible block (the streaming kernel over all of them for the rows' log-sum-exp, then
 * each block's mass), its log as the score. SIZE_MAX on failure (f->err set). */
static size_t oracle_select(struct fwd *f, size_t h, size_t qb, const float *q, const float *k, const float *v,
                            uint32_t *blocks, float *scratch, float *kscratch) {
        const size_t HS = f->HS, t0 = qb * f->bk, nq = MIN(f->bk, f->T - t0), nc = qb + 1;
        _cleanup_free_ float *tmp = malloc((nq * HS + nq + 2 * nc) * sizeof(float));
        _cleanup_free_ uint32_t *all = malloc(nc * sizeof(uint32_t));

        if (!tmp || !all) {
                f->err = -ENOMEM;
                return SIZE_MAX;
        }
        float *lse = tmp + nq * HS, *mass = lse + nq, *s = mass + nc;
        for (size_t b = 0; b < nc; b++)
                all[b] = (uint32_t) b, mass[b] = 0.0f;
        for (size_t i0 = 0; i0 < nq; i0 += DSA_ATT_BLOCK) { /* the kernels take 64 rows a call */
                const size_t m = MIN(nq - i0, (size_t) DSA_ATT_BLOCK);
                const float *qi = q + i0 * f->QKV;
                if (f->ak->blocks_f32(tmp, HS, qi, f->QKV, k, f->QKV, v, f->QKV, m, t0 + i0, all, nc, f->bk, f->T, HS,
                                      f->scale, true, lse, kscratch) < 0 ||
                    f->ak->block_mass_f32(mass, qi, f->QKV, k, f->QKV, m, t0 + i0, all, nc, f->bk, f->T, HS, f->scale,
                                          true, lse, kscratch) < 0) {
                        f->err = -EINVAL;
                        return SIZE_MAX;
                }
        }
        for (size_t b = 0; b < nc; b++)
                s[b] = mass[b] > 0 ? logf(mass[b]) : -INFINITY;
        return dsa__att_select_scored(f->att, f->layer, h, qb, f->nb, true, s, blocks, scratch);
}

/* The token scorer's choice for (head h, query block qb): each scored row's largest low-rank
 * logit per earlier block, softmax over those blocks, summed over the rows, is the block's mass
 * (attention-variant.h); the query's own block gets the largest. tmp: (bk + 1) * nb + nb floats. */
static size_t token_select(struct fwd *f, size_t h, size_t qb, uint32_t *blocks, float *scratch, float *tmp) {
        const size_t st = f->att->stride, nb = f->nb, t0 = qb * f->bk, t1 = MIN(t0 + f->bk, f->T);
        const size_t first = t0 + (st - 1 - t0 % st), i0 = first / st;
        size_t ns = first < t1 ? (t1 - 1 - first) / st + 1 : 0;
        float *mx = tmp, *sc = tmp + (f->bk + 1) * nb, best = 0.0f;

        if (t1 == f->T && f->T % st)
                ns++; /* the sequence's last row, scored as row nsr - 1 */
        for (size_t b = 0; b <= qb; b++)
                sc[b] = qb > 0 && ns > 0 ? 0.0f : 1.0f; /* nothing scored: every block alike */
        if (qb > 0 && ns > 0) {
                const size_t ifirst = first >= t1 ? f->nsr - 1 : i0; /* only the last row */
                const size_t R4 = f->r4, row = h * f->nsr + ifirst;
                /* the rows' maxima as (ns, qb); their softmaxes summed into sc */
                if (f->ak->block_max_lowrank_q8(mx, qb, f->qq + row * R4, R4, f->qs + row,
                                                f->kq + h * (R4 / 4) * f->bk * f->ldkq, f->ldkq, f->ks + h * nb, ns,
                                                f->bk, t0, R4) < 0) {
                        f->err = -EINVAL;
                        return SIZE_MAX;
                }
                f->k->softmax_sum_f32(sc, mx, ns, qb);
                for (size_t b = 0; b < qb; b++)
                        best = MAX(best, sc[b]);
                sc[qb] = best;
        }
        return dsa__att_select_mass(f->att, f->layer, h, qb, nb, true, sc, blocks, scratch);
}

/* The attention of pairs [p0, p1) (at most PAIR_BATCH): every pair's choice of key blocks, then
 * every pair's attention over its choice (a few clock readings a batch, not a few a pair, for the
 * stats' select and attend times). A pair p is head p % NH of query block nb - 1 - p / NH: the
 * heaviest (last) query blocks first. blocks: PAIR_BATCH lists of nb; scratch: task_attention's.
 * false on failure (f->err set). */
static bool attention_pairs(struct fwd *f, size_t p0, size_t p1, float *scratch, uint32_t *blocks, uint64_t *kept,
                            uint64_t *t_sel, uint64_t *t_attend) {
        const size_t HS = f->HS, G = f->NH / f->NKV, QC = f->NH * HS, nb = f->nb;
        const size_t sel = dsa__att_select_scratch(f->att, nb), ks = dsa__att_attend_scratch(f->att, nb, f->bk, HS);
        float *nvis = scratch + sel + ks;
        size_t count[PAIR_BATCH];
        const uint64_t c0 = now_nsec();

        for (size_t p = p0; p < p1; p++) {
                const size_t h = p % f->NH, qb = nb - 1 - p / f->NH, kvh = h / G, t0 = qb * f->bk;
                uint32_t *list = blocks + (p - p0) * nb;
                size_t n;

                if (f->att->kind == DSA_ATT_DSA && f->att->oracle) {
                        const float *q = f->qkv + t0 * f->QKV + h * HS;
                        const float *k = f->qkv + QC + kvh * HS, *v = k + f->NKV * HS;
                        n = oracle_select(f, h, qb, q, k, v, list, scratch, scratch + sel);
                } else if (f->att->kind == DSA_ATT_DSA && f->att->token)
                        n = token_select(f, h, qb, list, scratch, nvis + 2 * nb);
                else if (f->att->kind == DSA_ATT_DSA) {
                        for (size_t b = 0; b < nb; b++)
                                nvis[b] = dsa__att_nvis(qb, b, f->bk, f->T, true);
                        n = dsa__att_select(f->att, f->layer, h, qb, nb, true, f->qp + (h * nb + qb) * f->D,
                                            f->kp + h * nb * f->D, f->D, nvis, f->scale, list, scratch);
                } else
                        n = dsa__att_select(f->att, f->layer, h, qb, nb, true, NULL, NULL, 0, NULL, f->scale, list,
                                            scratch);
                if (n == SIZE_MAX)
                        return false;
                count[p - p0] = n;
                *kept += n;
        }
        const uint64_t c1 = now_nsec();
        for (size_t p = p0; p < p1; p++) {
                const size_t h = p % f->NH, qb = nb - 1 - p / f->NH, kvh = h / G;
                const size_t t0 = qb * f->bk, nq = MIN(f->bk, f->T - t0);
                if (dsa__att_attend(f->att, f->ak, f->a + t0 * QC + h * HS, QC, f->qkv + t0 * f->QKV + h * HS, f->QKV,
                                    nq, qb, blocks + (p - p0) * nb, count[p - p0], f->T, HS, true, f->kv + kvh * f->pk,
                                    f->skv ? f->skv + kvh * f->ps : NULL, scratch + sel) < 0)
                        f->err = -EINVAL;
        }
        *t_sel += c1 - c0, *t_attend += now_nsec() - c1;
        return true;
}

/* One slot of the attention's dispatch: claims PAIR_BATCH pairs at a time, in order, from f->next
 * until none is left (attention_pairs). Claims this small, the heaviest first, leave the threads
 * at most about one claim apart at the end; the pool's own split, eight equal ranges of pairs,
 * left DSA's threads up to a range apart, as its query blocks cost about the same. */
static void task_attention(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;
        const size_t nb = f->nb, npairs = f->NH * nb;
        const size_t sel = dsa__att_select_scratch(f->att, nb), ks = dsa__att_attend_scratch(f->att, nb, f->bk, f->HS);
        const size_t tok = f->att->token ? (f->bk + 2) * nb : 0;
        _cleanup_free_ float *scratch = malloc((sel + ks + 2 * nb + tok) * sizeof(float));
        _cleanup_free_ uint32_t *blocks = malloc(PAIR_BATCH * nb * sizeof(uint32_t));
        uint64_t kept = 0, t_sel = 0, t_attend = 0;

        (void) begin, (void) end;
        if (!scratch || !blocks) {
                f->err = -ENOMEM;
                return;
        }
        for (;;) {
                const size_t p0 = atomic_fetch_add(&f->next, PAIR_BATCH);
                if (p0 >= npairs || !attention_pairs(f, p0, MIN(p0 + PAIR_BATCH, npairs), scratch, blocks, &kept,
                                                     &t_sel, &t_attend))
                        break;
        }
        atomic_fetch_add(&f->kept, kept);
        atomic_fetch_add(&f->select_ns, t_sel);
        atomic_fetch_add(&f->attend_ns, t_attend);
}

static void task_linear_attention(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;
        const size_t HS = f->HS, G = f->NH / f->NKV, QC = f->NH * HS;
        _cleanup_free_ float *scratch = malloc(dsa_attention_linear_scratch(HS) * sizeof(float));

        if (!scratch) {
                f->err = -ENOMEM;
                return;
        }
        for (size_t h = begin; h < end; h++) {
                const float *k = f->qkv + QC + (h / G) * HS, *v = k + f->NKV * HS;
                if (f->ak->linear_f32(f->a + h * HS, QC, f->qkv + h * HS, f->QKV, k, f->QKV, v, f->QKV, f->T, HS, true,
                                      scratch) < 0)
                        f->err = -EINVAL;
        }
}

/* Rows [r0, r0 + n) of layer y after its attention: x += a Wo^T, then x += the SwiGLU MLP of
 * rmsnorm(x). h holds the chunk's rows between steps (the packed GEMM writes, it does not
 * accumulate); ff has room for n rows of 2F, and after SwiGLU each row's first F hold the
 * product, which the down projection reads with row stride 2F. */
static void mlp_rows(const struct fwd *f, const struct dsa_llama_layer *y, size_t r0, size_t n, float *ff,
                     void *lscratch) {
        const size_t C = f->C, QC = f->NH * f->HS, F = f->F;
        float *x = f->x + r0 * C, *h = f->h + r0 * C;

        dsa__linear_forward(NULL, &y->o, h, C, f->a + r0 * QC, QC, NULL, n, DSA_EPILOGUE_NONE, lscratch);
        f->k->add_f32(x, x, h, n * C);
        f->k->rmsnorm_f32(h, x, y->ffn_norm, n, C, f->l->cfg.eps);
        dsa__linear_forward(NULL, &y->gate_up, ff, 2 * F, h, C, NULL, n, DSA_EPILOGUE_NONE, lscratch);
        for (size_t t = 0; t < n; t++)
                f->k->silu_mul_f32(ff + t * 2 * F, ff + t * 2 * F, ff + t * 2 * F + F, F);
        dsa__linear_forward(NULL, &y->down, h, C, ff, 2 * F, NULL, n, DSA_EPILOGUE_NONE, lscratch);
        f->k->add_f32(x, x, h, n * C);
}

/* Rows [r0, r0 + n) of layer y before its attention: qkv = rmsnorm(x) Wqkv^T. */
static void qkv_rows(const struct fwd *f, const struct dsa_llama_layer *y, size_t r0, size_t n, void *lscratch) {
        const size_t C = f->C;

        f->k->rmsnorm_f32(f->h + r0 * C, f->x + r0 * C, y->attn_norm, n, C, f->l->cfg.eps);
        dsa__linear_forward(NULL, &y->qkv, f->qkv + r0 * f->QKV, f->QKV, f->h + r0 * C, C, NULL, n,
                            DSA_EPILOGUE_NONE, lscratch);
}

/* Slots [begin, end): each takes LINEAR_ROWS chunks off f->next until none is left and runs the
 * step on one thread with its own scratch. */
static void task_slots(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;

        for (size_t s = begin; s < end; s++) {
                float *ff = f->ff + s * f->ff_floats;
                void *ls = f->ls ? (char *) f->ls + s * f->ls_bytes : NULL;
                for (;;) {
                        const size_t r0 = atomic_fetch_add(&f->next, 1) * LINEAR_ROWS;
                        if (r0 >= f->T)
                                break;
                        const size_t n = MIN((size_t) LINEAR_ROWS, f->T - r0);
                        if (f->mlp)
                                mlp_rows(f, f->y, r0, n, ff, ls);
                        else
                                qkv_rows(f, f->y, r0, n, ls);
                }
        }
}

/* -log softmax(logits row)[ids[t + 1]] for rows [begin, end) of the chunk, through the vector
 * softmax kernel in place: with m the row's max at index a, p_a = 1 / sum_j exp(z_j - m), so
 * nll = (m - z_target) - log p_a, exact even where p_target underflows. */
static void task_nll(void *arg, size_t begin, size_t end) {
        struct fwd *f = arg;
        for (size_t i = begin; i < end; i++) {
                const size_t t = f->r0 + i;
                float *z = f->logits + i * f->V;
                size_t am = 0;
                if (t + 1 >= f->T)
                        continue;
                for (size_t j = 1; j < f->V; j++)
                        am = z[j] > z[am] ? j : am;
                const double gap = (double) z[am] - (double) z[f->ids[t + 1]];
                f->k->softmax_f32(z, 1, f->V);
                f->nll[t] = gap - log((double) z[am]);
        }
}

int dsa__llama_forward(const struct dsa_llama *l, const int32_t *ids, size_t T, const struct dsa__att *att,
                       float *ret_hidden, float *ret_logits, double *ret_nll, struct dsa_lm_stats *stats,
                       const struct dsa__llama_hooks *hooks) {
        const struct dsa_llama_config *c = &l->cfg;
        struct dsa_threadpool *pool = l->pool;
        struct fwd f = {
                .l = l, .k = dsa_kernels(), .ak = dsa_attention_kernels(), .att = att ? att : &l->att, .ids = ids,
                .T = T, .C = c->n_embd, .NH = c->n_head, .NKV = c->n_head_kv, .HS = c->head_dim, .F = c->n_ff,
        };
        const size_t C = f.C, QC = f.NH * f.HS;
        uint64_t t_start = now_nsec(), t_att = 0, t_rows = 0;
        int r;

        if (!ids || T == 0 || (T > c->n_ctx && !l->allow_long))
                return dsa__error(-EINVAL, "sequence of %zu tokens: the model takes 1 to %u", T, c->n_ctx);
        for (size_t t = 0; t < T; t++)
                if (ids[t] < 0 || (uint32_t) ids[t] >= c->n_vocab)
                        return dsa__error(-EINVAL, "token id %d at %zu is out of range", ids[t], t);
        r = dsa__att_check(f.att, c->n_layer, c->n_head, c->head_dim);
        if (r < 0)
                return r;
        f.QKV = QC + 2 * f.NKV * f.HS;
        f.bk = f.att->block;
        f.nb = (T + f.bk - 1) / f.bk;
        f.scale = 1.0f / sqrtf((float) f.HS);

        size_t lin = 0;
        for (size_t i = 0; i < c->n_layer; i++) {
                const struct dsa_llama_layer *y = &l->layers[i];
                lin = MAX(lin, dsa__linear_scratch(&y->qkv, LINEAR_ROWS));
                lin = MAX(lin, dsa__linear_scratch(&y->o, LINEAR_ROWS));
                lin = MAX(lin, dsa__linear_scratch(&y->gate_up, LINEAR_ROWS));
                lin = MAX(lin, dsa__linear_scratch(&y->down, LINEAR_ROWS));
        }
        lin = MAX(lin, dsa__linear_scratch(&l->lm_head, HEAD_ROWS));
        _cleanup_free_ float *x = malloc(T * C * sizeof(float)), *h = malloc(T * C * sizeof(float));
        _cleanup_free_ float *qkv = malloc(T * f.QKV * sizeof(float)), *a = malloc(T * QC * sizeof(float));
        const size_t nslot = dsa_threadpool_threads(pool);
        f.ff_floats = MIN(T, (size_t) LINEAR_ROWS) * 2 * f.F, f.ls_bytes = (lin + 63) / 64 * 64;
        _cleanup_free_ float *ff = malloc(nslot * f.ff_floats * sizeof(float));
        _cleanup_free_ float *pooled = NULL, *logits = NULL;
        _cleanup_free_ void *lscratch = lin ? aligned_alloc(64, nslot * f.ls_bytes) : NULL;
        f.ls = lscratch;
        if (!x || !h || !qkv || !a || !ff || (lin && !lscratch))
                return -ENOMEM;
        f.by_means = f.att->kind == DSA_ATT_DSA && !f.att->token;
        f.pool = f.by_means || dsa__att_summaries(f.att);
        if (f.pool) {
                f.D = !f.by_means ? 0 : f.att->heuristic || f.att->oracle ? f.HS : f.att->rank;
                pooled = malloc(f.nb * (QC + 2 * f.NKV * f.HS + 2 * f.NH * f.D) * sizeof(float));
                if (!pooled)
                        return -ENOMEM;
                f.qbar = pooled, f.kbar = f.qbar + f.nb * QC, f.vbar = f.kbar + f.nb * f.NKV * f.HS;
                f.qp = f.vbar + f.nb * f.NKV * f.HS, f.kp = f.qp + f.nb * f.NH * f.D;
        }
        f.pk = dsa_attention_packed_floats(T, f.HS);
        f.ps = dsa__att_summaries(f.att) ? dsa_attention_packed_floats(f.nb, f.HS) : 0;
        _cleanup_free_ float *kvbuf = NULL;
        if (f.att->kind != DSA_ATT_LINEAR) {
                if (f.pk == SIZE_MAX || f.ps == SIZE_MAX)
                        return -EINVAL;
                kvbuf = aligned_alloc(64, ((f.pk + f.ps) * f.NKV * sizeof(float) + 63) / 64 * 64);
                if (!kvbuf)
                        return -ENOMEM;
                f.kv = kvbuf, f.skv = f.ps ? kvbuf + f.pk * f.NKV : NULL;
        }
        _cleanup_free_ float *tokbuf = NULL;
        _cleanup_(scorer_weights_clear) struct scorer_weights sw = { 0 };
        if (f.att->kind == DSA_ATT_DSA && f.att->token) {
                f.nsr = T / f.att->stride + (T % f.att->stride != 0);
                f.r4 = (f.att->rank + 3) / 4 * 4;
                /* a block's group of 4 bytes, whole 64-byte rows, plus one: the rows of a chunk of
                 * blocks, read one after another, then fall in different L1 sets */
                f.ldkq = 4 * ((f.nb + 15) / 16 * 16) + 64;
                tokbuf = malloc(f.NH * (f.nsr + f.nb) * sizeof(float) + f.NH * (f.nsr * f.r4 + f.r4 / 4 * f.bk * f.ldkq));
                if (!tokbuf)
                        return -ENOMEM;
                f.qs = tokbuf, f.ks = f.qs + f.NH * f.nsr;
                f.kq = (uint8_t *) (f.ks + f.NH * f.nb), f.qq = (int8_t *) (f.kq + f.NH * f.r4 / 4 * f.bk * f.ldkq);
                r = scorer_weights_pack(&sw, f.att, c->n_layer, f.NH, f.NKV, f.HS, f.scale);
                if (r < 0)
                        return r;
                f.wk = sw.wk, f.wq = sw.wq;
        }
        f.x = x, f.h = h, f.qkv = qkv, f.a = a, f.ff = ff;
        f.unit = PACK_ROWS / gcd(PACK_ROWS, f.bk) * f.bk;
        f.tunit = f.wk ? f.unit * TOKEN_BLOCKS : f.unit;

        dsa_threadpool_for(pool, T, ROW_GRAIN, task_embed, &f);
        for (size_t i = 0; i < c->n_layer; i++) {
                const struct dsa_llama_layer *y = &l->layers[i];
                uint64_t t0;

                f.layer = i;
                f.y = y, f.mlp = false;
                atomic_store(&f.next, 0);
                dsa_threadpool_for(pool, nslot, 1, task_slots, &f);
                t0 = now_nsec(); /* attention from here: the rows' rotary and packing are its own */
                dsa_threadpool_for(pool, (T + f.tunit - 1) / f.tunit, 1, task_rows, &f);
                t_rows += now_nsec() - t0;
                if (hooks && hooks->attention) {
                        r = hooks->attention(hooks->userdata, i, qkv, f.QKV, qkv + QC, f.QKV, T);
                        if (r < 0)
                                return r;
                }
                if (f.att->kind == DSA_ATT_LINEAR)
                        dsa_threadpool_for(pool, f.NH, 1, task_linear_attention, &f);
                else {
                        if (f.err < 0)
                                return f.err;
                        if (f.by_means) /* the block means' projections */
                                dsa_threadpool_for(pool, f.NH, 1, task_project, &f);
                        if (f.skv)
                                dsa_threadpool_for(pool, f.NKV, 1, task_pack_means, &f);
                        if (f.err < 0)
                                return f.err;
                        atomic_store(&f.next, 0);
                        dsa_threadpool_for(pool, nslot, 1, task_attention, &f);
                }
                t_att += now_nsec() - t0;
                if (f.err < 0)
                        return f.err;
                f.mlp = true;
                atomic_store(&f.next, 0);
                dsa_threadpool_for(pool, nslot, 1, task_slots, &f);
        }
        dsa_threadpool_for(pool, T, ROW_GRAIN, task_out_norm, &f);
        uint64_t t_body = now_nsec();
        if (ret_hidden)
                memcpy(ret_hidden, h, T * C * sizeof(float));

        if (ret_logits)
                dsa__linear_forward(pool, &l->lm_head, ret_logits, c->n_vocab, h, C, NULL, T, DSA_EPILOGUE_NONE,
                                    lscratch);
        if (ret_nll && T > 1) {
                logits = malloc((size_t) HEAD_ROWS * c->n_vocab * sizeof(float));
                if (!logits)
                        return -ENOMEM;
                f.logits = logits, f.V = c->n_vocab, f.nll = ret_nll;
                for (size_t r0 = 0; r0 + 1 < T; r0 += HEAD_ROWS) {
                        f.r0 = r0, f.rows = MIN((size_t) HEAD_ROWS, T - 1 - r0);
                        dsa__linear_forward(pool, &l->lm_head, logits, c->n_vocab, h + r0 * C, C, NULL, f.rows,
                                            DSA_EPILOGUE_NONE, lscratch);
                        dsa_threadpool_for(pool, f.rows, 4, task_nll, &f);
                }
        }
        if (stats) {
                uint64_t vis = 0;
                if (f.att->kind != DSA_ATT_LINEAR)
                        vis = (uint64_t) f.nb * (f.nb + 1) / 2 * f.NH * c->n_layer;
                stats->attention_ns += t_att;
                stats->forward_ns += t_body - t_start;
                stats->head_ns += now_nsec() - t_body;
                stats->blocks_kept += f.att->kind == DSA_ATT_LINEAR ? 0 : atomic_load(&f.kept);
                stats->rows_ns += t_rows;
                stats->select_ns += atomic_load(&f.select_ns);
                stats->attend_ns += atomic_load(&f.attend_ns);
                stats->blocks_visible += vis;
        }
        return 0;
}
