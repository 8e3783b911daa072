/* Private to engine/: which attention a model runs (dense, local, fixed sparse, linear, Dynamic
 * Sparse Attention), how a query block picks the key blocks it attends to, the DSA scorer, and
 * how all of that is stored in a GGUF under dsa.attention.*.
 *
 * Every sparse variant is block-sparse over blocks of `block` tokens: query block a attends,
 * with exact softmax, to a set of key blocks b (b <= a when causal), streamed through the same
 * kernel the dense baseline uses (kernels/attention.h), so a variant's speed-up is the blocks it
 * skips. Linear attention (elu + 1 feature map) is the one kernel of its own.
 *
 * DSA: per layer and head a scorer predicts each key block's share of query block a's attention
 * mass,
 *
 *   s(a, b) = (Wq qbar_a) . (Wk kbar_b) + bias[bin(a, b)] + log n(a, b),   p(a, .) = softmax_b s
 *
 * with qbar, kbar the mean (rotated) query and key of a block, Wq, Wk (R, HS) low-rank
 * projections, bin() the block distance on a log scale (own block, the first block and distance
 * classes have their own bins) and n(a, b) the keys of b that a's queries may see. Query block a
 * keeps its `window` local blocks and the first `global` blocks, then the remaining blocks in
 * order of s until the kept blocks carry `mass` of p (dynamic count, at most `count` when
 * nonzero) — or, for the ablations, exactly `count` blocks, or `fraction` of the visible blocks.
 * The scorer is fitted to the dense attention's block mass on calibration text
 * (attention-fit.c).
 *
 * The token scorer (token = true) reads queries and keys themselves, not block means: per
 * layer and head, Wq and Wk (R, HS) project every key and every stride-th query row (the stride
 * divides the block, so each block's last row is one; and the sequence's last row) to R values, and for each scored row i and key block b the largest
 * low-rank logit m_i(b) = max_{j in b} scale (Wq q_i) . (Wk k_j) stands for the block; the
 * row's block shares are softmax_b m_i(b) over the blocks before the query's own, and
 * s(a, b) = log sum_i softmax_b m_i(b) feeds the same choice (the own block is kept by the
 * window and scored as the best of the others). Wq and Wk are the rank-R bilinear form
 * closest to q . k on the calibration tokens, in closed form (attention-fit-token.c); no
 * bias. A block mean hides the one key a query copies from; a token's low-rank logit does
 * not. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/macro.h"
#include "basic/rng.h"

struct dsa_attention_kernels;
struct dsa_gguf;
struct dsa_gguf_writer;

enum dsa_att_kind {
        DSA_ATT_DENSE,
        DSA_ATT_LOCAL,  /* the `window` blocks up to the query's own */
        DSA_ATT_FIXED,  /* BigBird-like: window + `global` first blocks + `random` blocks */
        DSA_ATT_LINEAR, /* kernelized, phi(x) = elu(x) + 1 */
        DSA_ATT_DSA,
        _DSA_ATT_MAX,
};

/* How DSA decides how many blocks a query block keeps. */
enum dsa_att_select {
        DSA_ATT_SELECT_MASS,     /* until the predicted mass reaches `mass` (the method) */
        DSA_ATT_SELECT_COUNT,    /* exactly `count` blocks ("w/o dynamic patterns") */
        DSA_ATT_SELECT_FRACTION, /* `fraction` of the visible blocks (fixed sparsity 1 - fraction) */
        _DSA_ATT_SELECT_MAX,
};

/* Distance bins of the scorer's bias: 0 the query's own block, 1 the first block (b = 0 < a),
 * then block distances 1, 2, 3, 4-7, 8-15, ..., 512+ (bins 2..DSA_ATT_NBINS-1). */
#define DSA_ATT_NBINS 13

/* The token scorer's default stride (dsa__att_init, and a CLI that leaves it unset). */
#define DSA_ATT_STRIDE 4

/* The largest scorer rank and block size accepted. */
#define DSA_ATT_MAX_RANK 64
#define DSA_ATT_MAX_BLOCK 256

struct dsa__att {
        enum dsa_att_kind kind;
        uint32_t block;  /* tokens per block */
        uint32_t window; /* local blocks kept, the query's own included (local, fixed, dsa) */
        uint32_t global; /* leading blocks kept (fixed, dsa) */
        uint32_t random; /* fixed: random blocks per query block */
        uint64_t seed;   /* fixed: of the random blocks (per layer, head and query block) */
        enum dsa_att_select select;
        float mass;      /* MASS: predicted share of attention to reach, (0, 1] */
        uint32_t count;  /* COUNT: blocks kept; MASS: cap (0: none) */
        float fraction;  /* FRACTION: share of the visible blocks kept, (0, 1] */
        bool heuristic;  /* no fitted scorer: s = scale * qbar . kbar + log n (ablation) */
        bool oracle;     /* no scorer: the exact dense block mass, computed at run time (analysis:
                          * the best any scorer could choose; costs more than dense) */
        bool token;      /* the fitted scorer reads tokens, not block means (see below) */
        uint32_t stride; /* token scorer: every stride-th query row of a block is scored */
        bool summary;    /* local, fixed, dsa: a visible key block the query block skips is not
                          * dropped but enters its softmax as one summary key, the block's mean
                          * key weighted by its key count, carrying the block's mean value */
        uint32_t sum_window; /* summaries only for the skipped blocks within this many blocks of
                              * the query block (0: every one) */
        /* The fitted scorer (kind DSA without heuristic): NULL until fitted or loaded. */
        uint32_t rank, n_layer, n_head, head_dim;
        float *wq, *wk; /* (n_layer, n_head, rank, head_dim) each */
        float *bias;    /* (n_layer, n_head, DSA_ATT_NBINS) */
};

/* Dense, block 64, window 2, global 1, random 2, mass 0.95, no scorer. */
void dsa__att_init(struct dsa__att *a);
void dsa__att_clear(struct dsa__att *a);
/* A deep copy (the scorer's arrays too). */
int dsa__att_copy(struct dsa__att *dst, const struct dsa__att *src);

const char *dsa_att_kind_name(enum dsa_att_kind k);
int dsa_att_kind_from_name(const char *s, enum dsa_att_kind *ret);
const char *dsa_att_select_name(enum dsa_att_select s);

/* Checks values against a model's shape (n_layer, n_head, head_dim): -EINVAL with a reason. */
int dsa__att_check(const struct dsa__att *a, uint32_t n_layer, uint32_t n_head, uint32_t head_dim);
/* Allocates a zero scorer of rank R for the model's shape. */
int dsa__att_scorer_alloc(struct dsa__att *a, uint32_t rank, uint32_t n_layer, uint32_t n_head, uint32_t head_dim);

/* One line describing a (for dsactl show and logs): "dsa mass=0.95 block=64 window=2 ...". */
void dsa__att_describe(const struct dsa__att *a, char *buf, size_t n);

/* dsa.attention.* keys and, with a scorer, the tensors blk.N.dsa_scorer_{q,k} (head_dim, rank,
 * n_head) and blk.N.dsa_scorer_bias (NBINS, n_head). Dense writes nothing. */
int dsa__att_to_gguf(const struct dsa__att *a, struct dsa_gguf_writer *w);
/* The attention of g: dense when there are no dsa.attention.* keys; every value and tensor
 * shape is checked against the model's. */
int dsa__att_from_gguf(const struct dsa_gguf *g, uint32_t n_layer, uint32_t n_head, uint32_t head_dim,
                       struct dsa__att *ret);

/* The scorer's bias bin of query block a and key block b <= a. */
static inline unsigned dsa__att_bin(size_t a, size_t b) {
        size_t d = a - b;
        unsigned k = 0;

        if (d == 0)
                return 0;
        if (b == 0)
                return 1;
        if (d < 4)
                return 1 + (unsigned) d; /* 2, 3, 4 */
        while ((d >> k) > 1)
                k++; /* floor(log2 d) >= 2 */
        k = 3 + k;   /* 4-7 -> 5, 8-15 -> 6, ... */
        return k < DSA_ATT_NBINS ? k : DSA_ATT_NBINS - 1;
}

/* The DSA scorer's projections of n block means x (n, ldx; HS, the model's head size, values
 * each) of (layer, head) into out (n, D):
 * Wq x (query = true) or Wk x, D = rank; for the heuristic scorer x itself, D = head_dim.
 * Returns D. Computed once per layer and head, then shared by every query block's choice. */
size_t dsa__att_project(const struct dsa__att *a, size_t layer, size_t head, bool query, const float *x, size_t ldx,
                        size_t n, size_t HS, float *out);

/* Scratch floats dsa__att_select() needs for nkb key blocks. */
size_t dsa__att_select_scratch(const struct dsa__att *a, size_t nkb);

/* The key blocks query block qb of (layer, head) attends to, ascending, into blocks (room for
 * nkb; the entries past the count may be written too); returns how many. nkb: key blocks in
 * the sequence; causal: only b <= qb are candidates. DSA only (NULL otherwise): u (D) this
 * query block's projection, w (nkb, D) the key blocks' (dsa__att_project), nvis (nkb) the
 * visible keys of each block per query of qb. scale: the attention's 1/sqrt(HS) (the heuristic
 * scorer's). scratch: see above. */
size_t dsa__att_select(const struct dsa__att *a, size_t layer, size_t head, size_t qb, size_t nkb, bool causal,
                       const float *u, const float *w, size_t D, const float *nvis, float scale, uint32_t *blocks,
                       float *scratch);
/* The same with the scores s (nkb; -inf for an empty block) given: the oracle's log block mass. */
size_t dsa__att_select_scored(const struct dsa__att *a, size_t layer, size_t head, size_t qb, size_t nkb, bool causal,
                              const float *s, uint32_t *blocks, float *scratch);
/* The same with each block's predicted mass p (nkb, >= 0, any common factor) given instead of
 * its log: the token scorer's. */
size_t dsa__att_select_mass(const struct dsa__att *a, size_t layer, size_t head, size_t qb, size_t nkb, bool causal,
                            const float *p, uint32_t *blocks, float *scratch);

/* The scorer's logits s(qb, b) for b in [0, nb) (the formula above, before the selection):
 * u . w_b (heuristic: scale * u . w_b) + bias[bin] (fitted only) + log nvis[b]; -inf where
 * nvis[b] is 0. */
void dsa__att_scores(const struct dsa__att *a, size_t layer, size_t head, size_t qb, size_t nb, const float *u,
                     const float *w, size_t D, const float *nvis, float scale, float *s);

/* Whether a's skipped blocks enter as summaries: summary set on a block-sparse kind. */
static inline bool dsa__att_summaries(const struct dsa__att *a) {
        return a->summary && a->kind != DSA_ATT_DENSE && a->kind != DSA_ATT_LINEAR;
}

/* Floats of scratch dsa__att_attend() needs for key blocks of bk keys, nkb of them, head size HS
 * (the streaming kernel's scratch first, then the summaries'); SIZE_MAX when bk or HS is out of
 * the kernels' range (dsa__att_check refuses such a model first). */
size_t dsa__att_attend_scratch(const struct dsa__att *a, size_t nkb, size_t bk, size_t HS);

/* Attention of query block qb of one head: q (nq, ldq), rows at positions qb * a->block + i, over
 * the listed key blocks (n, ascending) of the head's T keys packed by pack_kv_f32 in kv, through
 * the streaming kernel into out (nq, ldo); with a->summary, also over one summary key per
 * visible key block the list skips (causal: b < qb; else every b), skv the blocks' mean keys and
 * values (pool_blocks_f32, nkb of them) packed by pack_kv_f32 with the same scale, a block of c
 * keys scoring scale * q . kbar_b + log c, in the same softmax as the kept blocks' keys (the
 * kernel's extra keys). skv is not read without a->summary. scratch: dsa__att_attend_scratch().
 * 0 or -EINVAL (the kernel's). */
int dsa__att_attend(const struct dsa__att *a, const struct dsa_attention_kernels *ak, float *out, size_t ldo,
                    const float *q, size_t ldq, size_t nq, size_t qb, const uint32_t *blocks, size_t n, size_t T,
                    size_t HS, bool causal, const float *kv, const float *skv, float *scratch);

/* ---- fitting the DSA scorer (attention-fit.c) */

struct dsa__att_fitter;
/* A fitter for a model of n_layer layers of at most n_head query heads of head_dim, blocks of
 * block tokens. */
int dsa__att_fitter_new(size_t block, size_t n_layer, size_t n_head, size_t head_dim, struct dsa__att_fitter **ret);
struct dsa__att_fitter *dsa__att_fitter_free(struct dsa__att_fitter *f);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct dsa__att_fitter *, dsa__att_fitter_free);
/* One sequence of layer `layer` under the dense attention: rotated queries q (T, ldq; query head
 * h at h HS) and keys k (T, ldk; key head h / (NH / NKV)); NH <= the fitter's heads. The dense
 * block mass and block means of every head are kept as samples. */
int dsa__att_fitter_add(struct dsa__att_fitter *f, size_t layer, const float *q, size_t ldq, const float *k, size_t ldk,
                        size_t T, size_t NH, size_t NKV, bool causal);
/* Fits a scorer of rank R into att (its other settings kept) from the samples: per (layer, head)
 * the KL of the dense block mass to the scorer's prediction minimized by Adam. Heads without
 * samples keep a random scorer. ret_kl_*: mean KL per query block at the start and fitted. */
int dsa__att_fitter_fit(struct dsa__att_fitter *f, uint32_t rank, struct dsa__att *att, double *ret_kl_before,
                        double *ret_kl_after);
/* The token scorer of one (layer, head) from its calibration second moments cq = sum q q^T,
 * ck = sum k k^T (HS, HS; any positive scale): wq, wk (R, HS). ret_share: the kept share of
 * the whitened q . k form's singular values. 0, -EINVAL, -ENOMEM. */
int dsa__att_fit_token_head(const double *cq, const double *ck, size_t HS, size_t R, float *wq, float *wk,
                            double *ret_share);
/* Visible keys of block b per query of block a (causal: the own block's mean over its rows). */
float dsa__att_nvis(size_t a, size_t b, size_t bk, size_t T, bool causal);
