/* One query block's attention under a variant: exact softmax over the key blocks it keeps and,
 * with block summaries, one summary key for each visible block it skips (attention-variant.h).
 *
 * Both run in one call of the streaming kernel on keys packed once per head (pack_kv_f32): the
 * kept blocks on the head's keys, the summaries as its extra keys, the packed block means of
 * every visible block with a bias of log(block size), and -inf (not seen) on the blocks the list
 * keeps. One softmax takes both, so nothing is merged afterwards. */
#include <errno.h>
#include <math.h>

#include "attention-variant.h"
#include "basic/macro.h"
#include "kernels/attention.h"

size_t dsa__att_attend_scratch(const struct dsa__att *a, size_t nkb, size_t bk, size_t HS) {
        size_t ks = dsa_attention_blocks_scratch(bk, HS);

        if (ks == SIZE_MAX || !dsa__att_summaries(a))
                return ks;
        if (nkb > SIZE_MAX / 4 - ks)
                return SIZE_MAX;
        return ks + nkb; /* then the summaries' bias */
}

/* The summaries' bias (nkb, written for [*ret_j0, return)): log of the block's size for a visible
 * block the list skips (causal: b < qb; else every b; with a summary window W only those within
 * W blocks of qb), -inf for the listed ones; returns the end of the summary keys to take and
 * their start in *ret_j0: the visible blocks of the window up to the last one skipped (none when
 * the list holds them all, so that the result is then the plain one's, bit for bit). */
static size_t summary_bias(float *bias, size_t *ret_j0, const struct dsa__att *a, size_t qb, const uint32_t *blocks,
                           size_t n, size_t T, bool causal) {
        const size_t bk = a->block, nkb = (T + bk - 1) / bk, W = a->sum_window;
        const float full = logf((float) bk);
        size_t nvis = causal ? MIN(qb, nkb) : nkb, j0 = W && qb > W ? qb - W : 0;

        if (W && !causal)
                nvis = MIN(nvis, qb + W + 1);
        for (size_t b = j0; b < nvis; b++)
                bias[b] = full;
        if (nvis > j0 && nvis * bk > T) /* only the sequence's last block can be short */
                bias[nvis - 1] = logf((float) (T - (nvis - 1) * bk));
        for (size_t t = 0; t < n; t++)
                if (blocks[t] >= j0 && blocks[t] < nvis)
                        bias[blocks[t]] = -INFINITY;
        while (nvis > j0 && bias[nvis - 1] == -INFINITY)
                nvis--;
        *ret_j0 = j0;
        return nvis;
}

int dsa__att_attend(const struct dsa__att *a, const struct dsa_attention_kernels *ak, float *out, size_t ldo,
                    const float *q, size_t ldq, size_t nq, size_t qb, const uint32_t *blocks, size_t n, size_t T,
                    size_t HS, bool causal, const float *kv, const float *skv, float *scratch) {
        const size_t bk = a->block, nkb = (T + bk - 1) / bk;
        struct dsa_attention_extra sum = { 0 };
        int r = 0;

        if (nq > bk)
                return -EINVAL;
        if (dsa__att_summaries(a)) { /* the bias once for all the slices below */
                if (!skv)
                        return -EINVAL;
                sum.kv = skv, sum.Tk = nkb, sum.bias = scratch + dsa_attention_blocks_scratch(bk, HS);
                sum.n = summary_bias((float *) sum.bias, &sum.j0, a, qb, blocks, n, T, causal);
        }
        /* the kernel takes at most DSA_ATT_BLOCK rows a call: larger query blocks go in slices */
        for (size_t i0 = 0; i0 < nq && r >= 0; i0 += DSA_ATT_BLOCK) {
                const size_t m = MIN(nq - i0, (size_t) DSA_ATT_BLOCK);
                r = ak->blocks_packed_f32(out + i0 * ldo, ldo, q + i0 * ldq, ldq, m, qb * bk + i0, kv, NULL, blocks, n,
                                          bk, T, HS, causal, sum.n > sum.j0 ? &sum : NULL, NULL, scratch);
        }
        return r;
}
