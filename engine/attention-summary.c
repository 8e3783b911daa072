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

        if (ks == SIZE_MAX || !a->summary || a->kind == DSA_ATT_DENSE || a->kind == DSA_ATT_LINEAR)
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

/* Rows [i0, i0 + nq) of the query block, nq <= DSA_ATT_BLOCK (the kernel's most). */
static int attend_rows(const struct dsa__att *a, const struct dsa_attention_kernels *ak, float *out, size_t ldo,
                       const float *q, size_t ldq, const float *k, size_t ldk, const float *v, size_t ldv, size_t nq,
                       size_t qb, size_t i0, const uint32_t *blocks, size_t n, size_t T, size_t HS, float scale,
                       bool causal, const float *kbar, const float *vbar, size_t ldb, float *scratch) {
        const size_t bk = a->block, nkb = (T + bk - 1) / bk, pos0 = qb * bk + i0;
        const size_t ks = dsa__att_attend_scratch(a, nkb, bk, HS) - SUMMARY_FLOATS(nkb, HS);
        float *sk = scratch + ks, *sv = sk + nkb * HS, *po = sv + nkb * HS, *L = po + DSA_ATT_BLOCK * HS;
        float *lse = L + DSA_ATT_BLOCK;
        const size_t nvis = causal ? MIN(qb, nkb) : nkb; /* causal: only whole blocks before qb */
        size_t ns = 0, t = 0, part = SIZE_MAX;
        int r;

        r = ak->blocks_f32(out, ldo, q, ldq, k, ldk, v, ldv, nq, pos0, blocks, n, bk, T, HS, scale, causal, L, scratch);
        if (r < 0)
                return r;
        /* the skipped blocks, in order; blocks[] is ascending */
        for (size_t b = 0; b < nvis; b++) {
                while (t < n && blocks[t] < b)
                        t++;
                if (t < n && blocks[t] == b)
                        continue;
                if ((b + 1) * bk > T) { /* the partial last block: a key of its own weight */
                        part = b;
                        continue;
                }
                memcpy(sk + ns * HS, kbar + b * ldb, HS * sizeof(float));
                memcpy(sv + ns * HS, vbar + b * ldb, HS * sizeof(float));
                ns++;
        }
        for (size_t s0 = 0; s0 < ns; s0 += DSA_ATT_MAX_BK) {
                const size_t m = MIN(ns - s0, (size_t) DSA_ATT_MAX_BK);
                const uint32_t one = 0;
                r = ak->blocks_f32(po, HS, q, ldq, sk + s0 * HS, HS, sv + s0 * HS, HS, nq, 0, &one, 1, m, m, HS,
                                   scale, false, lse, scratch);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < nq; i++)
                        lse[i] += logf((float) bk);
                merge_rows(out, ldo, L, po, HS, lse, nq, HS);
        }
        if (part != SIZE_MAX) {
                const float *kb = kbar + part * ldb, *vb = vbar + part * ldb;
                const float lc = logf((float) (T - part * bk));
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
        const bool summary = a->summary && a->kind != DSA_ATT_DENSE && a->kind != DSA_ATT_LINEAR;
        int r = 0;

        if (nq > a->block || (summary && (!kbar || !vbar)))
                return -EINVAL;
        /* the kernel takes at most DSA_ATT_BLOCK rows a call: larger query blocks go in slices */
        for (size_t i0 = 0; i0 < nq && r >= 0; i0 += DSA_ATT_BLOCK) {
                const size_t m = MIN(nq - i0, (size_t) DSA_ATT_BLOCK);
                if (summary)
                        r = attend_rows(a, ak, out + i0 * ldo, ldo, q + i0 * ldq, ldq, k, ldk, v, ldv, m, qb, i0,
                                        blocks, n, T, HS, scale, causal, kbar, vbar, ldb, scratch);
                else
                        r = ak->blocks_f32(out + i0 * ldo, ldo, q + i0 * ldq, ldq, k, ldk, v, ldv, m,
                                           qb * a->block + i0, blocks, n, a->block, T, HS, scale, causal, NULL,
                                           scratch);
        }
        return r;
}
