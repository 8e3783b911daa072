/* One query block's attention under a variant: exact softmax over the key blocks it keeps and,
 * with block summaries, one summary key for each visible block it skips (attention-variant.h).
 *
 * The kept blocks run through the streaming kernel as always. The skipped blocks' mean keys and
 * values are gathered into a short key sequence that runs through the same kernel, unmasked, in
 * chunks of at most DSA_ATT_MAX_BK summaries. Every full block carries the same weight log bk,
 * so it is added to that softmax's log-sum-exp afterwards; a partial last block (bidirectional
 * only) is one key of its own. The partial softmaxes are merged row by row:
 *
 *   out = sum_p exp(lse_p - L) out_p,   L = log sum_p exp(lse_p). */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "attention-variant.h"
#include "basic/macro.h"
#include "kernels/attention.h"

#define SUMMARY_FLOATS(nkb, HS) (2 * (nkb) * (HS) + DSA_ATT_BLOCK * ((HS) + 2) + 16)

size_t dsa__att_attend_scratch(const struct dsa__att *a, size_t nkb, size_t bk, size_t HS) {
        size_t ks = dsa_attention_blocks_scratch(bk, HS);

        if (ks == SIZE_MAX || !dsa__att_summaries(a))
                return ks;
        ks = MAX(ks, dsa_attention_blocks_scratch(MIN(MAX(nkb, (size_t) 1), (size_t) DSA_ATT_MAX_BK), HS));
        if (nkb > (SIZE_MAX / 4 - ks) / (2 * HS + 1))
                return SIZE_MAX;
        /* summaries' keys and values (nkb, HS) each, one partial output (64, HS), two lse rows */
        return ks + SUMMARY_FLOATS(nkb, HS);
}

/* Folds the partial softmax (o, lse) into (out, L), row by row; L = -inf means none yet. */
static void merge_rows(float *out, size_t ldo, float *L, const float *o, size_t ldp, const float *lse, size_t nq,
                       size_t HS) {
        for (size_t i = 0; i < nq; i++) {
                const float m = MAX(L[i], lse[i]);
                if (!isfinite(lse[i]))
                        continue;
                const float wa = isfinite(L[i]) ? expf(L[i] - m) : 0.0f, wb = expf(lse[i] - m), z = wa + wb;
                for (size_t c = 0; c < HS; c++)
                        out[i * ldo + c] = (wa * out[i * ldo + c] + wb * o[i * ldp + c]) / z;
                L[i] = m + logf(z);
        }
}

/* A query block's summaries, gathered once for all its row slices, and the slices' buffers. */
struct summaries {
        const float *kbar, *vbar; /* (nkb, ldb): every block's mean key and value */
        size_t ldb;
        float *sk, *sv;           /* (ns, HS): those of the skipped whole blocks */
        size_t ns, part;          /* part: the skipped partial last block, SIZE_MAX for none */
        float *po, *L, *lse;      /* a slice's summary output (64, HS), running and partial lse */
};

/* Gathers the visible blocks the list skips (blocks ascending; causal: whole blocks before qb);
 * the partial last block (bidirectional only), which weighs its own count, goes to part. */
static void gather_skipped(struct summaries *S, const struct dsa__att *a, size_t qb, const uint32_t *blocks,
                           size_t n, size_t T, size_t HS, bool causal) {
        const size_t bk = a->block, nkb = (T + bk - 1) / bk, nvis = causal ? MIN(qb, nkb) : nkb;
        size_t t = 0;

        S->ns = 0, S->part = SIZE_MAX;
        for (size_t b = 0; b < nvis; b++) {
                while (t < n && blocks[t] < b)
                        t++;
                if (t < n && blocks[t] == b)
                        continue;
                if ((b + 1) * bk > T) {
                        S->part = b;
                        continue;
                }
                memcpy(S->sk + S->ns * HS, S->kbar + b * S->ldb, HS * sizeof(float));
                memcpy(S->sv + S->ns * HS, S->vbar + b * S->ldb, HS * sizeof(float));
                S->ns++;
        }
}

/* Rows [i0, i0 + nq) of the query block, nq <= DSA_ATT_BLOCK (the kernel's most): the listed
 * blocks, then the ns gathered summaries and the partial block part, merged. */
static int attend_rows(const struct dsa__att *a, const struct dsa_attention_kernels *ak, float *out, size_t ldo,
                       const float *q, size_t ldq, const float *k, size_t ldk, const float *v, size_t ldv, size_t nq,
                       size_t pos0, const uint32_t *blocks, size_t n, size_t T, size_t HS, float scale, bool causal,
                       const struct summaries *S, float *scratch) {
        const size_t bk = a->block;
        float *po = S->po, *L = S->L, *lse = S->lse;
        int r;

        r = ak->blocks_f32(out, ldo, q, ldq, k, ldk, v, ldv, nq, pos0, blocks, n, bk, T, HS, scale, causal, L, scratch);
        if (r < 0)
                return r;
        for (size_t s0 = 0; s0 < S->ns; s0 += DSA_ATT_MAX_BK) {
                const size_t m = MIN(S->ns - s0, (size_t) DSA_ATT_MAX_BK);
                const uint32_t one = 0;
                r = ak->blocks_f32(po, HS, q, ldq, S->sk + s0 * HS, HS, S->sv + s0 * HS, HS, nq, 0, &one, 1, m, m, HS,
                                   scale, false, lse, scratch);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < nq; i++)
                        lse[i] += logf((float) bk);
                merge_rows(out, ldo, L, po, HS, lse, nq, HS);
        }
        if (S->part != SIZE_MAX) {
                const float *kb = S->kbar + S->part * S->ldb, *vb = S->vbar + S->part * S->ldb;
                const float lc = logf((float) (T - S->part * bk));
                for (size_t i = 0; i < nq; i++) {
                        float d = 0;
                        for (size_t c = 0; c < HS; c++)
                                d += q[i * ldq + c] * kb[c];
                        lse[i] = scale * d + lc;
                        memcpy(po + i * HS, vb, HS * sizeof(float));
                }
                merge_rows(out, ldo, L, po, HS, lse, nq, HS);
        }
        return 0;
}

int dsa__att_attend(const struct dsa__att *a, const struct dsa_attention_kernels *ak, float *out, size_t ldo,
                    const float *q, size_t ldq, const float *k, size_t ldk, const float *v, size_t ldv, size_t nq,
                    size_t qb, const uint32_t *blocks, size_t n, size_t T, size_t HS, float scale, bool causal,
                    const float *kbar, const float *vbar, size_t ldb, float *scratch) {
        const bool summary = dsa__att_summaries(a);
        const size_t bk = a->block, nkb = (T + bk - 1) / bk;
        struct summaries S = { .kbar = kbar, .vbar = vbar, .ldb = ldb };
        int r = 0;

        if (nq > bk || (summary && (!kbar || !vbar)))
                return -EINVAL;
        if (summary) { /* gathered once for all the slices below */
                S.sk = scratch + dsa__att_attend_scratch(a, nkb, bk, HS) - SUMMARY_FLOATS(nkb, HS);
                S.sv = S.sk + nkb * HS, S.po = S.sv + nkb * HS, S.L = S.po + DSA_ATT_BLOCK * HS;
                S.lse = S.L + DSA_ATT_BLOCK;
                gather_skipped(&S, a, qb, blocks, n, T, HS, causal);
        }
        /* the kernel takes at most DSA_ATT_BLOCK rows a call: larger query blocks go in slices */
        for (size_t i0 = 0; i0 < nq && r >= 0; i0 += DSA_ATT_BLOCK) {
                const size_t m = MIN(nq - i0, (size_t) DSA_ATT_BLOCK);
                if (summary)
                        r = attend_rows(a, ak, out + i0 * ldo, ldo, q + i0 * ldq, ldq, k, ldk, v, ldv, m, qb * bk + i0,
                                        blocks, n, T, HS, scale, causal, &S, scratch);
                else
                        r = ak->blocks_f32(out + i0 * ldo, ldo, q + i0 * ldq, ldq, k, ldk, v, ldv, m, qb * bk + i0,
                                           blocks, n, bk, T, HS, scale, causal, NULL, scratch);
        }
        return r;
}
