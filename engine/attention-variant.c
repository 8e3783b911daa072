/* Attention variants: names, checks, GGUF storage, and the per-query-block choice of key blocks
 * (attention.h has the formulas). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention-variant.h"
#include "basic/error.h"
#include "basic/macro.h"
#include "gguf.h"
#include "kernels/attention.h"
#include "tensor.h"

_Static_assert(DSA_ATT_MAX_RANK <= DSA_ATT_MAX_RANK_LR, "a stored scorer rank the low-rank kernel takes");
_Static_assert(DSA_ATT_MAX_BLOCK <= DSA_ATT_MAX_BK, "a block the streaming kernel takes");

static const char *const kind_names[_DSA_ATT_MAX] = {
        [DSA_ATT_DENSE] = "dense", [DSA_ATT_LOCAL] = "local", [DSA_ATT_FIXED] = "fixed",
        [DSA_ATT_LINEAR] = "linear", [DSA_ATT_DSA] = "dsa",
};

static const char *const select_names[_DSA_ATT_SELECT_MAX] = {
        [DSA_ATT_SELECT_MASS] = "mass", [DSA_ATT_SELECT_COUNT] = "count", [DSA_ATT_SELECT_FRACTION] = "fraction",
};

const char *dsa_att_kind_name(enum dsa_att_kind k) {
        return (unsigned) k < _DSA_ATT_MAX ? kind_names[k] : NULL;
}

int dsa_att_kind_from_name(const char *s, enum dsa_att_kind *ret) {
        for (unsigned k = 0; k < _DSA_ATT_MAX; k++)
                if (s && strcmp(s, kind_names[k]) == 0) {
                        *ret = k;
                        return 0;
                }
        return -EINVAL;
}

const char *dsa_att_select_name(enum dsa_att_select s) {
        return (unsigned) s < _DSA_ATT_SELECT_MAX ? select_names[s] : NULL;
}

void dsa__att_init(struct dsa__att *a) {
        *a = (struct dsa__att) {
                .kind = DSA_ATT_DENSE, .block = 64, .window = 2, .global = 1, .random = 2, .seed = 1,
                .select = DSA_ATT_SELECT_MASS, .mass = 0.95f, .fraction = 0.5f, .stride = DSA_ATT_STRIDE,
        };
}

void dsa__att_clear(struct dsa__att *a) {
        free(a->wq);
        free(a->wk);
        free(a->bias);
        a->wq = a->wk = a->bias = NULL;
        a->rank = a->n_layer = a->n_head = a->head_dim = 0;
}

static size_t scorer_w_floats(const struct dsa__att *a) {
        return (size_t) a->n_layer * a->n_head * a->rank * a->head_dim;
}

static size_t scorer_b_floats(const struct dsa__att *a) {
        return (size_t) a->n_layer * a->n_head * DSA_ATT_NBINS;
}

int dsa__att_scorer_alloc(struct dsa__att *a, uint32_t rank, uint32_t n_layer, uint32_t n_head, uint32_t head_dim) {
        if (rank == 0 || rank > DSA_ATT_MAX_RANK || n_layer == 0 || n_head == 0 || head_dim == 0 ||
            head_dim > 4096 || n_layer > 4096 || n_head > 4096)
                return -EINVAL;
        dsa__att_clear(a);
        a->rank = rank, a->n_layer = n_layer, a->n_head = n_head, a->head_dim = head_dim;
        a->wq = calloc(scorer_w_floats(a), sizeof(float));
        a->wk = calloc(scorer_w_floats(a), sizeof(float));
        a->bias = calloc(scorer_b_floats(a), sizeof(float));
        if (!a->wq || !a->wk || !a->bias) {
                dsa__att_clear(a);
                return -ENOMEM;
        }
        return 0;
}

int dsa__att_copy(struct dsa__att *dst, const struct dsa__att *src) {
        struct dsa__att c = *src;
        int r;

        c.wq = c.wk = c.bias = NULL;
        if (src->wq) {
                r = dsa__att_scorer_alloc(&c, src->rank, src->n_layer, src->n_head, src->head_dim);
                if (r < 0)
                        return r;
                memcpy(c.wq, src->wq, scorer_w_floats(src) * sizeof(float));
                memcpy(c.wk, src->wk, scorer_w_floats(src) * sizeof(float));
                memcpy(c.bias, src->bias, scorer_b_floats(src) * sizeof(float));
        }
        *dst = c;
        return 0;
}

int dsa__att_check(const struct dsa__att *a, uint32_t n_layer, uint32_t n_head, uint32_t head_dim) {
        if ((unsigned) a->kind >= _DSA_ATT_MAX)
                return dsa__error(-EINVAL, "unknown attention kind %d", (int) a->kind);
        if (a->block == 0 || a->block > DSA_ATT_MAX_BLOCK)
                return dsa__error(-EINVAL, "attention block %u is not in [1, %d]", a->block, DSA_ATT_MAX_BLOCK);
        if (a->kind != DSA_ATT_LINEAR && a->kind != DSA_ATT_DENSE && (head_dim == 0 || head_dim > DSA_ATT_MAX_HS))
                return dsa__error(-EINVAL, "head size %u: the block-sparse attention kernels take 1 to %d", head_dim,
                                  DSA_ATT_MAX_HS);
        if (a->window == 0 || a->window > 1u << 20 || a->global > 1u << 20 || a->random > 1u << 20)
                return dsa__error(-EINVAL, "attention window must be >= 1 and window, global, random sane");
        if ((unsigned) a->select >= _DSA_ATT_SELECT_MAX)
                return dsa__error(-EINVAL, "unknown DSA selection %d", (int) a->select);
        if (!(a->mass > 0.0f && a->mass <= 1.0f))
                return dsa__error(-EINVAL, "DSA mass target %g is not in (0, 1]", (double) a->mass);
        if (!(a->fraction > 0.0f && a->fraction <= 1.0f))
                return dsa__error(-EINVAL, "DSA kept fraction %g is not in (0, 1]", (double) a->fraction);
        if (a->select == DSA_ATT_SELECT_COUNT && a->count == 0)
                return dsa__error(-EINVAL, "DSA with a fixed block count needs a count >= 1");
        if (a->summary && (a->kind == DSA_ATT_DENSE || a->kind == DSA_ATT_LINEAR))
                return dsa__error(-EINVAL, "block summaries need a block-sparse attention (local, fixed or dsa)");
        if (a->sum_window && (!a->summary || a->sum_window > 1u << 20))
                return dsa__error(-EINVAL, "a summary window (%u blocks) needs block summaries and at most 2^20",
                                  a->sum_window);
        if ((a->oracle && a->heuristic) || (a->token && (a->oracle || a->heuristic)))
                return dsa__error(-EINVAL, "the DSA scorer is one of fitted, token, oracle or heuristic");
        if (a->token && a->kind != DSA_ATT_DSA)
                return dsa__error(-EINVAL, "the token scorer is DSA's");
        if (a->stride == 0 || a->stride > DSA_ATT_MAX_BLOCK)
                return dsa__error(-EINVAL, "token scorer stride %u is not in [1, %d]", a->stride, DSA_ATT_MAX_BLOCK);
        if (a->token && a->block % a->stride)
                return dsa__error(-EINVAL, "the token scorer's stride %u must divide the block size %u (so every "
                                  "block's last row is scored)", a->stride, a->block);
        if (a->kind == DSA_ATT_DSA && !a->heuristic && !a->oracle) {
                if (!a->wq || !a->wk || !a->bias)
                        return dsa__error(-EINVAL, "DSA attention needs a fitted scorer (--calib) or the "
                                          "heuristic one");
                if (a->n_layer != n_layer || a->n_head != n_head || a->head_dim != head_dim)
                        return dsa__error(-EINVAL, "DSA scorer shape (%u layers, %u heads, head size %u) does "
                                          "not match the model's (%u, %u, %u)", a->n_layer, a->n_head,
                                          a->head_dim, n_layer, n_head, head_dim);
        }
        return 0;
}

void dsa__att_describe(const struct dsa__att *a, char *buf, size_t n) {
        size_t len;

        switch (a->kind) {
        case DSA_ATT_DENSE:
        case DSA_ATT_LINEAR:
                snprintf(buf, n, "%s", kind_names[a->kind]);
                break;
        case DSA_ATT_LOCAL:
                snprintf(buf, n, "local block=%u window=%u", a->block, a->window);
                break;
        case DSA_ATT_FIXED:
                snprintf(buf, n, "fixed block=%u window=%u global=%u random=%u", a->block, a->window, a->global,
                         a->random);
                break;
        case DSA_ATT_DSA: {
                char sel[64];
                if (a->select == DSA_ATT_SELECT_MASS && a->count)
                        snprintf(sel, sizeof(sel), "mass=%g cap=%u", (double) a->mass, a->count);
                else if (a->select == DSA_ATT_SELECT_MASS)
                        snprintf(sel, sizeof(sel), "mass=%g", (double) a->mass);
                else if (a->select == DSA_ATT_SELECT_COUNT)
                        snprintf(sel, sizeof(sel), "count=%u", a->count);
                else
                        snprintf(sel, sizeof(sel), "fraction=%g", (double) a->fraction);
                if (a->token)
                        snprintf(buf, n, "dsa %s block=%u window=%u global=%u scorer=token rank=%u stride=%u", sel,
                                 a->block, a->window, a->global, a->rank, a->stride);
                else
                        snprintf(buf, n, "dsa %s block=%u window=%u global=%u scorer=%s", sel, a->block, a->window,
                                 a->global, a->oracle ? "oracle" : a->heuristic ? "heuristic" : "fitted");
                break;
        }
        default:
                snprintf(buf, n, "?");
        }
        len = strlen(buf);
        if (a->summary && len < n)
                snprintf(buf + len, n - len, a->sum_window ? " summary=%u" : " summary", a->sum_window);
}

/* ---- GGUF */

#define KEY "dsa.attention."

int dsa__att_to_gguf(const struct dsa__att *a, struct dsa_gguf_writer *w) {
        int r;

        if (a->kind == DSA_ATT_DENSE)
                return 0;
        if ((r = dsa_gguf_writer_set_str(w, KEY "kind", kind_names[a->kind])) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, KEY "block", a->block)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, KEY "window", a->window)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, KEY "global", a->global)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, KEY "random", a->random)) < 0 ||
            (r = dsa_gguf_writer_set_u64(w, KEY "seed", a->seed)) < 0 ||
            (r = dsa_gguf_writer_set_str(w, KEY "select", select_names[a->select])) < 0 ||
            (r = dsa_gguf_writer_set_f32(w, KEY "mass", a->mass)) < 0 ||
            (r = dsa_gguf_writer_set_u32(w, KEY "count", a->count)) < 0 ||
            (r = dsa_gguf_writer_set_f32(w, KEY "fraction", a->fraction)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, KEY "heuristic", a->heuristic)) < 0 ||
            (r = dsa_gguf_writer_set_bool(w, KEY "oracle", a->oracle)) < 0 ||
            (a->summary && (r = dsa_gguf_writer_set_bool(w, KEY "summary", true)) < 0) ||
            (a->sum_window && (r = dsa_gguf_writer_set_u32(w, KEY "summary_window", a->sum_window)) < 0) ||
            (a->token && ((r = dsa_gguf_writer_set_bool(w, KEY "token", true)) < 0 ||
                          (r = dsa_gguf_writer_set_u32(w, KEY "stride", a->stride)) < 0)))
                return r;
        if (!a->wq)
                return 0;
        if ((r = dsa_gguf_writer_set_u32(w, KEY "scorer_rank", a->rank)) < 0)
                return r;
        for (uint32_t l = 0; l < a->n_layer; l++) {
                const size_t wl = (size_t) a->n_head * a->rank * a->head_dim, bl = (size_t) a->n_head * DSA_ATT_NBINS;
                const uint64_t wne[3] = { a->head_dim, a->rank, a->n_head }, bne[2] = { DSA_ATT_NBINS, a->n_head };
                char name[64];

                snprintf(name, sizeof(name), "blk.%u.dsa_scorer_q.weight", l);
                if ((r = dsa_gguf_writer_add_tensor(w, name, DSA_TYPE_F32, 3, wne, a->wq + l * wl)) < 0)
                        return r;
                snprintf(name, sizeof(name), "blk.%u.dsa_scorer_k.weight", l);
                if ((r = dsa_gguf_writer_add_tensor(w, name, DSA_TYPE_F32, 3, wne, a->wk + l * wl)) < 0)
                        return r;
                snprintf(name, sizeof(name), "blk.%u.dsa_scorer_bias.weight", l);
                if ((r = dsa_gguf_writer_add_tensor(w, name, DSA_TYPE_F32, 2, bne, a->bias + l * bl)) < 0)
                        return r;
        }
        return 0;
}

static int get_u32(const struct dsa_gguf *g, const char *key, uint32_t *v) {
        int r = dsa_gguf_get_u32(g, key, v);
        return r == -ENOENT ? 0 : r < 0 ? dsa__error(r, "GGUF key '%s' is not an unsigned integer", key) : 0;
}

static int get_bool(const struct dsa_gguf *g, const char *key, bool *v) {
        int r = dsa_gguf_get_bool(g, key, v);
        return r == -ENOENT ? 0 : r < 0 ? dsa__error(-EBADMSG, "GGUF key '%s' is not a boolean", key) : 0;
}

static int get_f32(const struct dsa_gguf *g, const char *key, float *v) {
        int r = dsa_gguf_get_f32(g, key, v);
        return r == -ENOENT ? 0 : r < 0 ? dsa__error(r, "GGUF key '%s' is not a number", key) : 0;
}

static int get_name(const struct dsa_gguf *g, const char *key, const char *const *names, unsigned n,
                    unsigned *ret) {
        const char *s;
        size_t len;
        int r = dsa_gguf_get_str(g, key, &s, &len);

        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return dsa__error(r, "GGUF key '%s' is not a string", key);
        for (unsigned i = 0; i < n; i++)
                if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0) {
                        *ret = i;
                        return 0;
                }
        return dsa__error(-EOPNOTSUPP, "GGUF key '%s': '%.*s' is not known", key, (int) MIN(len, (size_t) 64), s);
}

static int scorer_tensor(const struct dsa_gguf *g, const char *name, uint32_t n_dims, const uint64_t *ne,
                         float *dst) {
        const struct dsa_tensor_view *v = dsa_gguf_find_tensor(g, name);

        if (!v)
                return dsa__error(-ENOENT, "DSA scorer tensor '%s' is missing", name);
        if (v->type != DSA_TYPE_F32 || v->n_dims != n_dims)
                return dsa__error(-EBADMSG, "DSA scorer tensor '%s' is not an F32 tensor of %u dimensions", name,
                                  n_dims);
        for (uint32_t d = 0; d < n_dims; d++)
                if (v->ne[d] != ne[d])
                        return dsa__error(-EBADMSG, "DSA scorer tensor '%s' has the wrong shape", name);
        memcpy(dst, v->data, v->nbytes);
        for (uint64_t i = 0; i < v->nbytes / sizeof(float); i++)
                if (!isfinite(dst[i]))
                        return dsa__error(-EBADMSG, "DSA scorer tensor '%s' holds a NaN or infinity", name);
        return 0;
}

int dsa__att_from_gguf(const struct dsa_gguf *g, uint32_t n_layer, uint32_t n_head, uint32_t head_dim,
                       struct dsa__att *ret) {
        struct dsa__att a;
        unsigned kind = DSA_ATT_DENSE, sel = DSA_ATT_SELECT_MASS;
        uint32_t rank = 0;
        int r;

        dsa__att_init(&a);
        if ((r = get_name(g, KEY "kind", kind_names, _DSA_ATT_MAX, &kind)) < 0 ||
            (r = get_name(g, KEY "select", select_names, _DSA_ATT_SELECT_MAX, &sel)) < 0 ||
            (r = get_u32(g, KEY "block", &a.block)) < 0 || (r = get_u32(g, KEY "window", &a.window)) < 0 ||
            (r = get_u32(g, KEY "global", &a.global)) < 0 || (r = get_u32(g, KEY "random", &a.random)) < 0 ||
            (r = get_f32(g, KEY "mass", &a.mass)) < 0 || (r = get_u32(g, KEY "count", &a.count)) < 0 ||
            (r = get_f32(g, KEY "fraction", &a.fraction)) < 0 ||
            (r = get_u32(g, KEY "scorer_rank", &rank)) < 0)
                return r;
        a.kind = kind, a.select = sel;
        r = dsa_gguf_get_u64(g, KEY "seed", &a.seed);
        if (r < 0 && r != -ENOENT)
                return dsa__error(r, "GGUF key '" KEY "seed' is not an unsigned integer");
        if ((r = get_bool(g, KEY "heuristic", &a.heuristic)) < 0 || (r = get_bool(g, KEY "oracle", &a.oracle)) < 0 ||
            (r = get_bool(g, KEY "summary", &a.summary)) < 0 || (r = get_bool(g, KEY "token", &a.token)) < 0 ||
            (r = get_u32(g, KEY "summary_window", &a.sum_window)) < 0 ||
            (r = get_u32(g, KEY "stride", &a.stride)) < 0)
                return r;

        if (rank > 0) {
                r = dsa__att_scorer_alloc(&a, rank, n_layer, n_head, head_dim);
                if (r < 0)
                        return r == -EINVAL ? dsa__error(-EBADMSG, "DSA scorer rank %u is not in [1, %d]", rank,
                                                         DSA_ATT_MAX_RANK)
                                            : r;
                for (uint32_t l = 0; l < n_layer && r >= 0; l++) {
                        const size_t wl = (size_t) n_head * rank * head_dim, bl = (size_t) n_head * DSA_ATT_NBINS;
                        const uint64_t wne[3] = { head_dim, rank, n_head }, bne[2] = { DSA_ATT_NBINS, n_head };
                        char name[64];

                        snprintf(name, sizeof(name), "blk.%u.dsa_scorer_q.weight", l);
                        r = scorer_tensor(g, name, 3, wne, a.wq + l * wl);
                        if (r >= 0) {
                                snprintf(name, sizeof(name), "blk.%u.dsa_scorer_k.weight", l);
                                r = scorer_tensor(g, name, 3, wne, a.wk + l * wl);
                        }
                        if (r >= 0) {
                                snprintf(name, sizeof(name), "blk.%u.dsa_scorer_bias.weight", l);
                                r = scorer_tensor(g, name, 2, bne, a.bias + l * bl);
                        }
                }
                if (r < 0) {
                        dsa__att_clear(&a);
                        return r;
                }
        }
        r = dsa__att_check(&a, n_layer, n_head, head_dim);
        if (r < 0) {
                dsa__att_clear(&a);
                return r == -EINVAL ? -EBADMSG : r;
        }
        *ret = a;
        return 0;
}

/* ---- choosing blocks */

size_t dsa__att_select_scratch(const struct dsa__att *a, size_t nkb) {
        (void) a;
        return 4 * nkb + 16;
}

size_t dsa__att_project(const struct dsa__att *a, size_t layer, size_t head, bool query, const float *x, size_t ldx,
                        size_t n, size_t HS, float *out) {
        const size_t R = a->rank;

        if (a->heuristic || a->oracle || !a->wq) {
                for (size_t i = 0; i < n; i++)
                        memcpy(out + i * HS, x + i * ldx, HS * sizeof(float));
                return HS;
        }
        const float *W = (query ? a->wq : a->wk) + (layer * a->n_head + head) * R * HS;
        for (size_t i = 0; i < n; i++)
                for (size_t r = 0; r < R; r++) {
                        float d = 0;
                        for (size_t c = 0; c < HS; c++)
                                d += W[r * HS + c] * x[i * ldx + c];
                        out[i * R + r] = d;
                }
        return R;
}

void dsa__att_scores(const struct dsa__att *a, size_t layer, size_t head, size_t qb, size_t nb, const float *u,
                     const float *w, size_t D, const float *nvis, float scale, float *s) {
        const bool fitted = !a->heuristic && a->wq;
        const float *bias = fitted ? a->bias + (layer * a->n_head + head) * DSA_ATT_NBINS : NULL;

        for (size_t b = 0; b < nb; b++) {
                float d = 0;
                if (nvis[b] <= 0) {
                        s[b] = -INFINITY;
                        continue;
                }
                for (size_t c = 0; c < D; c++)
                        d += u[c] * w[b * D + c];
                s[b] = (fitted ? d + bias[dsa__att_bin(qb, b)] : scale * d) + logf(nvis[b]);
        }
}

/* Candidates b < nc not kept yet, at most K of them with the highest s, best first (ties: the
 * lower block first, as a scan for the maximum would pick them) into top; returns how many.
 * Scanned from the last block down: the recent blocks usually score highest, so most
 * candidates after the first few fall below the K-th and are dropped without an insertion. */
static size_t best_blocks(const float *s, const uint8_t *keep, size_t nc, size_t K, uint32_t *top) {
        size_t nt = 0;

        for (size_t b = nc; b-- > 0 && K > 0;) {
                if (keep[b] || (nt == K && !(s[b] >= s[top[K - 1]])))
                        continue;
                size_t i = nt < K ? nt++ : K - 1;
                for (; i > 0 && s[b] >= s[top[i - 1]]; i--) /* a lower block goes before an equal one */
                        top[i] = top[i - 1];
                top[i] = (uint32_t) b;
        }
        return nt;
}

/* given: the scores s (log mass); mass: the mass p itself (s = p orders the blocks alike). */
static size_t select_blocks(const struct dsa__att *a, size_t layer, size_t head, size_t qb, size_t nkb, bool causal,
                            const float *u, const float *w, size_t D, const float *nvis, float scale, const float *given,
                            const float *mass, uint32_t *blocks, float *scratch) {
        const size_t nc = causal ? MIN(qb + 1, nkb) : nkb; /* candidate blocks [0, nc) */
        uint8_t *keep = (uint8_t *) (scratch + 2 * nkb);   /* nc bytes, within the third nkb floats */
        uint32_t *top = (uint32_t *) (scratch + 3 * nkb);  /* the fourth */
        size_t n = 0, nkeep = 0;

        if (a->kind == DSA_ATT_DENSE || a->kind == DSA_ATT_LINEAR) {
                for (size_t b = 0; b < nc; b++)
                        blocks[n++] = (uint32_t) b;
                return n;
        }
        memset(keep, 0, nc);
        /* local window: the query's own block and the ones before it (and, bidirectional, after) */
        for (size_t d = 0; d < a->window; d++) {
                if (qb >= d && qb - d < nc && !keep[qb - d])
                        keep[qb - d] = 1, nkeep++;
                if (!causal && d > 0 && qb + d < nc && !keep[qb + d])
                        keep[qb + d] = 1, nkeep++;
        }
        if (a->kind == DSA_ATT_LOCAL)
                goto out;
        for (size_t b = 0; b < a->global && b < nc; b++)
                if (!keep[b])
                        keep[b] = 1, nkeep++;
        if (a->kind == DSA_ATT_FIXED) {
                /* random blocks among those not kept yet, a fixed draw per (layer, head, block) */
                uint64_t st = dsa_splitmix64(a->seed ^ dsa_splitmix64(layer * 1000003u + head * 7919u + qb));
                for (uint32_t i = 0; i < a->random && nkeep < nc; i++) {
                        size_t left = nc - nkeep, pick;
                        st = dsa_splitmix64(st);
                        pick = st % left;
                        for (size_t b = 0; b < nc; b++)
                                if (!keep[b] && pick-- == 0) {
                                        keep[b] = 1, nkeep++;
                                        break;
                                }
                }
                goto out;
        }

        /* DSA: the scorer's predicted mass, then the best remaining blocks until the target */
        const float *s = mass, *p = mass;
        size_t want = nc, nt;
        double z = 0, got = 0, target;

        if (!mass) {
                float *sw = scratch, *pw = scratch + nkb;
                if (given)
                        memcpy(sw, given, nc * sizeof(float));
                else
                        dsa__att_scores(a, layer, head, qb, nc, u, w, D, nvis, scale, sw);
                float mx = -INFINITY;
                for (size_t b = 0; b < nc; b++)
                        mx = sw[b] > mx ? sw[b] : mx;
                for (size_t b = 0; b < nc; b++)
                        pw[b] = isfinite(sw[b]) ? expf(sw[b] - mx) : 0.0f;
                s = sw, p = pw;
        }
        /* z in four partial sums, so the adds overlap (a chain of nc dependent adds otherwise) */
        double zp[4] = { 0 };
        size_t c = 0;
        for (; c + 4 <= nc; c += 4)
                for (size_t e = 0; e < 4; e++)
                        zp[e] += p[c + e];
        for (; c < nc; c++)
                zp[0] += p[c];
        z = (zp[0] + zp[1]) + (zp[2] + zp[3]);
        for (c = 0; c < nc; c++) /* adding +0 for the others keeps the sum's bits, with no branch to miss */
                got += keep[c] ? (double) p[c] : 0.0;
        target = a->mass * z;
        if (a->select == DSA_ATT_SELECT_COUNT)
                want = a->count;
        else if (a->select == DSA_ATT_SELECT_FRACTION)
                want = (size_t) ceilf(a->fraction * (float) nc);
        else if (a->count)
                want = a->count;
        want = MIN(MAX(want, nkeep), nc);
        nt = best_blocks(s, keep, nc, want - nkeep, top);
        for (size_t t = 0; t < nt; t++) {
                if (a->select == DSA_ATT_SELECT_MASS && a->mass < 1.0f && got >= target)
                        break;
                keep[top[t]] = 1;
                got += p[top[t]];
        }
out:
        for (size_t b = 0; b < nc; b++) { /* written always, kept by the count: no branch to miss */
                blocks[n] = (uint32_t) b;
                n += keep[b];
        }
        return n;
}

size_t dsa__att_select(const struct dsa__att *a, size_t layer, size_t head, size_t qb, size_t nkb, bool causal,
                       const float *u, const float *w, size_t D, const float *nvis, float scale, uint32_t *blocks,
                       float *scratch) {
        return select_blocks(a, layer, head, qb, nkb, causal, u, w, D, nvis, scale, NULL, NULL, blocks, scratch);
}

size_t dsa__att_select_scored(const struct dsa__att *a, size_t layer, size_t head, size_t qb, size_t nkb, bool causal,
                              const float *s, uint32_t *blocks, float *scratch) {
        return select_blocks(a, layer, head, qb, nkb, causal, NULL, NULL, 0, NULL, 0.0f, s, NULL, blocks, scratch);
}

size_t dsa__att_select_mass(const struct dsa__att *a, size_t layer, size_t head, size_t qb, size_t nkb, bool causal,
                            const float *p, uint32_t *blocks, float *scratch) {
        return select_blocks(a, layer, head, qb, nkb, causal, NULL, NULL, 0, NULL, 0.0f, NULL, p, blocks, scratch);
}
