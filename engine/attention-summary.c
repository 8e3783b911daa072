/* One query block's attention under a variant: exact softmax over the key blocks it keeps and,
 * with block summaries, one summary key for each visible block it skips (attention-variant.h).
 *
 * Both run through the streaming kernel on keys packed once per head (pack_kv_f32): the kept
 * blocks on the head's keys, the summaries on its packed block means, every visible block's
 * at once with a bias of log(block size), and -inf (not seen) on the blocks the list keeps and
 * past the visible ones. The two partial softmaxes are merged row by row:
 *
 *   out = sum_p exp(lse_p - L) out_p,   L = log sum_p exp(lse_p). */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "attention-variant.h"
#include "basic/macro.h"
#include "kernels/attention.h"

/* Summary keys a block of the summaries' own list (so at most SUM_BK - 1 past the visible ones
 * are scored, then masked). */
#define SUM_BK 32
#define SUMMARY_FLOATS(nkb, HS) (DSA_ATT_BLOCK * ((HS) + 2) + 2 * (nkb) + 16)

size_t dsa__att_attend_scratch(const struct dsa__att *a, size_t nkb, size_t bk, size_t HS) {
        size_t ks = dsa_attention_blocks_scratch(bk, HS);

        if (ks == SIZE_MAX || !dsa__att_summaries(a))
                return ks;
        ks = MAX(ks, dsa_attention_blocks_scratch(SUM_BK, HS));
        if (nkb > (SIZE_MAX / 4 - ks - DSA_ATT_BLOCK * (HS + 2) - 16) / 2)
                return SIZE_MAX;
        /* one partial output (64, HS), two lse rows, the bias (nkb) and the summaries' list */
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
                const float ra = wa / z, rb = wb / z;
                for (size_t c = 0; c < HS; c++)
                        out[i * ldo + c] = ra * out[i * ldo + c] + rb * o[i * ldp + c];
                L[i] = m + logf(z);
        }
}

/* The summaries' bias (nkb): log of the block's size for a visible block the list skips (causal:
 * b < qb; else every b), -inf for the listed ones and the rest; *ret_nsl blocks of SUM_BK
 * summaries cover the visible ones, listed in sl. */
static void summary_bias(float *bias, uint32_t *sl, size_t *ret_nsl, const struct dsa__att *a, size_t qb,
                         const uint32_t *blocks, size_t n, size_t T, bool causal) {
        const size_t bk = a->block, nkb = (T + bk - 1) / bk, nvis = causal ? MIN(qb, nkb) : nkb;
        const float full = logf((float) bk);

        for (size_t b = 0; b < nkb; b++)
                bias[b] = b >= nvis ? -INFINITY : (b + 1) * bk <= T ? full : logf((float) (T - b * bk));
        for (size_t t = 0; t < n; t++)
                if (blocks[t] < nkb)
                        bias[blocks[t]] = -INFINITY;
        *ret_nsl = (nvis + SUM_BK - 1) / SUM_BK;
        for (size_t t = 0; t < *ret_nsl; t++)
                sl[t] = (uint32_t) t;
}

int dsa__att_attend(const struct dsa__att *a, const struct dsa_attention_kernels *ak, float *out, size_t ldo,
                    const float *q, size_t ldq, size_t nq, size_t qb, const uint32_t *blocks, size_t n, size_t T,
                    size_t HS, bool causal, const float *kv, const float *skv, float *scratch) {
        const bool summary = dsa__att_summaries(a);
        const size_t bk = a->block, nkb = (T + bk - 1) / bk;
        float *po = NULL, *L = NULL, *lse = NULL, *bias = NULL;
        uint32_t *sl = NULL;
        size_t nsl = 0;
        int r = 0;

        if (nq > bk || (summary && !skv))
                return -EINVAL;
        if (summary) { /* the bias once for all the slices below */
                po = scratch + dsa__att_attend_scratch(a, nkb, bk, HS) - SUMMARY_FLOATS(nkb, HS);
                L = po + DSA_ATT_BLOCK * HS, lse = L + DSA_ATT_BLOCK, bias = lse + DSA_ATT_BLOCK;
                sl = (uint32_t *) (bias + nkb);
                summary_bias(bias, sl, &nsl, a, qb, blocks, n, T, causal);
        }
        /* the kernel takes at most DSA_ATT_BLOCK rows a call: larger query blocks go in slices */
        for (size_t i0 = 0; i0 < nq && r >= 0; i0 += DSA_ATT_BLOCK) {
                const size_t m = MIN(nq - i0, (size_t) DSA_ATT_BLOCK);
                const float *qi = q + i0 * ldq;
                float *oi = out + i0 * ldo;

                r = ak->blocks_packed_f32(oi, ldo, qi, ldq, m, qb * bk + i0, kv, NULL, blocks, n, bk, T, HS, causal, L,
                                          scratch);
                if (r < 0 || !summary || nsl == 0)
                        continue;
                r = ak->blocks_packed_f32(po, HS, qi, ldq, m, 0, skv, bias, sl, nsl, SUM_BK, nkb, HS, false, lse,
                                          scratch);
                if (r >= 0)
                        merge_rows(oi, ldo, L, po, HS, lse, m, HS);
        }
        return r;
}
