/* The drivers of the long-context attention kernels (attention.h), one copy for x86/attention-
 * avx2.c and x86/attention-avx512.c: each passes its GEMM panel microkernel and its panel width
 * NR, and defines, before including this file, the row operations on its own vectors:
 *
 *   float att_row_max(const float *s, size_t n)              max of s[0, n), n >= 1
 *   float att_row_exp(float *s, size_t ncols, size_t n, float m)
 *           s[j] = exp(s[j] - m) for j < n, 0 for n <= j < ncols; returns the sum over [0, n)
 *   float att_row_exp_sum(const float *s, size_t n, float m) sum of exp(s[j] - m), j < n
 *   float att_row_mask_sum(float *a, size_t ncols, size_t n) sum of a[0, n), a[n, ncols) = 0
 *   void att_row_scale(float *x, size_t n, float a)          x[0, n) *= a
 *   void att_row_phi(float *dst, const float *src, size_t n) dst = elu(src) + 1
 *   void att_row_add(float *z, const float *x, size_t n)     z[0, n) += x[0, n)
 *   float att_dot(const float *a, const float *b, size_t n)
 *
 * All of them touch exactly [0, n) (or [0, ncols)) of their rows, with masked tails, so rows of
 * q, k, v and out are never read or written past HS. The operands of the two products are
 * packed with attention-blocked.h's packers (K^T in NR-wide panels, V in NR-column panels);
 * their key lists are the block's keys in order (idx in scratch).
 *
 * Streaming softmax, per listed key block that some query row sees: the keys [j0, j0 + ncols)
 * some row sees (dsa__att_block_span) are packed, the score tile S = Q (scale K)^T of rows
 * [r0, nq) runs on the microkernel, each row takes the online softmax step (new max m', weights
 * p = exp(s - m') with the keys it does not see set to 0, l = l e^(m - m') + sum p, its
 * accumulator scaled by e^(m - m') when the max moved), and acc += P V runs on the microkernel
 * again. The accumulator, m and l live in scratch across blocks; out = acc / l at the end.
 * Scores are never rescaled after the fact, so the result is the exact softmax's up to fp32
 * rounding, whatever the order the maxima arrive in.
 *
 * Causal linear attention per chunk of CH rows (phi applied first, A = phi(Q) phi(K)^T):
 *   out = (phi(Q) S + tril(A) V) / (phi(Q) z + rowsum(tril(A))),
 *   then S += phi(K)^T V, z += colsum(phi(K)),
 * S kept as NR-column panels so it is the microkernel's packed operand for phi(Q) S, and
 * updated in place by the microkernel with phi(K)^T (packed as one CH-wide panel: plain
 * (HS, CH) rows) times the chunk's packed V. Include only from files compiled with -mavx2
 * -mfma. */
#pragma once

#include <errno.h>
#include <math.h>
#include <string.h>

#include "../attention.h"
#include "attention-blocked.h"

#define ATT_AI static inline __attribute__((always_inline))
#define ATT_CH DSA_ATT_LINEAR_CHUNK

/* idx[0, n) = j0, j0 + 1, ...: the packers' key list of a contiguous run. */
ATT_AI size_t *att_iota(float *base, const struct dsa__att_layout *L, size_t j0, size_t n) {
        size_t *idx = (size_t *) (base + L->idx);

        for (size_t j = 0; j < n; j++)
                idx[j] = j0 + j;
        return idx;
}

/* Rows [r0, nq) of the score tile s (nq, bkp) of one block: q (nq, ldq) times kt, the block's
 * ncols keys packed. */
ATT_AI void att_scores(float *s, size_t bkp, const float *q, size_t ldq, const float *kt, size_t r0,
                       size_t nq, size_t ncols, size_t HS, const size_t NR,
                       dsa__gemm_panel_f32_fn *panel) {
        for (size_t p = 0; p < ncols; p += NR)
                panel(s + r0 * bkp + p, bkp, q + r0 * ldq, ldq, kt + p * HS, nq - r0, HS,
                      ncols - p < NR ? ncols - p : NR, NULL, true, DSA_EPILOGUE_NONE);
}

ATT_AI int att_stream_blocks(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                             size_t ldk, const float *v, size_t ldv, size_t nq, size_t pos0,
                             const uint32_t *blocks, size_t nb, size_t bk, size_t Tk, size_t HS,
                             float scale, bool causal, float *ret_lse, float *scratch,
                             const size_t NR, dsa__gemm_panel_f32_fn *panel) {
        struct dsa__att_layout L;
        float *base, *kt, *vp, *s, *acc, *m, *l;
        size_t bkp;
        int r;

        r = dsa__att_blocks_check(out, ldo, q, ldq, k, ldk, v, ldv, nq, pos0, blocks, nb, bk, Tk, HS,
                                  scratch);
        if (r < 0 || nq == 0)
                return r;
        if (!out)
                return -EINVAL;
        dsa__att_blocks_layout(&L, bk, HS);
        base = dsa__att_align(scratch);
        kt = base + L.kt, vp = base + L.vp, s = base + L.s, acc = base + L.acc;
        m = base + L.m, l = base + L.l;
        bkp = att_round_up(bk, 32);

        memset(acc, 0, nq * HS * sizeof(float));
        for (size_t i = 0; i < nq; i++)
                m[i] = -INFINITY, l[i] = 0;

        for (size_t t = 0; t < nb; t++) {
                size_t j0, ncols, r0;
                const size_t *idx;

                if (!dsa__att_block_span(blocks[t], bk, Tk, nq, pos0, causal, &j0, &ncols, &r0))
                        continue;
                idx = att_iota(base, &L, j0, ncols);
                att_pack_keys(kt, k, ldk, idx, ncols, HS, scale, NR);
                att_pack_values(vp, v, ldv, idx, ncols, HS, NR);
                att_scores(s, bkp, q, ldq, kt, r0, nq, ncols, HS, NR, panel);

                for (size_t i = r0; i < nq; i++) {
                        const size_t n = dsa__att_row_keys(i, pos0, j0, ncols, causal);
                        float *si = s + i * bkp;
                        const float mn = fmaxf(m[i], att_row_max(si, n));
                        const float sum = att_row_exp(si, ncols, n, mn);

                        if (mn != m[i] && m[i] != -INFINITY) { /* acc and l are still 0 at -inf */
                                const float alpha = expf(m[i] - mn);
                                l[i] *= alpha;
                                att_row_scale(acc + i * HS, HS, alpha);
                        }
                        m[i] = mn;
                        l[i] += sum;
                }

                for (size_t c = 0; c < HS; c += NR)
                        panel(acc + r0 * HS + c, HS, s + r0 * bkp, bkp, vp + c * ncols, nq - r0, ncols,
                              HS - c < NR ? HS - c : NR, NULL, false, DSA_EPILOGUE_NONE);
        }

        for (size_t i = 0; i < nq; i++) {
                float *o = out + i * ldo;

                if (l[i] > 0) {
                        memcpy(o, acc + i * HS, HS * sizeof(float));
                        att_row_scale(o, HS, 1.0f / l[i]);
                } else
                        memset(o, 0, HS * sizeof(float));
                if (ret_lse)
                        ret_lse[i] = l[i] > 0 ? m[i] + logf(l[i]) : -INFINITY;
        }
        return 0;
}

ATT_AI int att_stream_block_mass(float *mass, const float *q, size_t ldq, const float *k,
                                 size_t ldk, size_t nq, size_t pos0, const uint32_t *blocks,
                                 size_t nb, size_t bk, size_t Tk, size_t HS, float scale,
                                 bool causal, const float *lse, float *scratch, const size_t NR,
                                 dsa__gemm_panel_f32_fn *panel) {
        struct dsa__att_layout L;
        float *base, *kt, *s;
        size_t bkp;
        int r;

        r = dsa__att_blocks_check(NULL, 0, q, ldq, k, ldk, k, ldk, nq, pos0, blocks, nb, bk, Tk, HS,
                                  scratch);
        if (r < 0)
                return r;
        if ((nb > 0 && !mass) || (nq > 0 && !lse))
                return -EINVAL;
        if (nq == 0)
                return 0;
        dsa__att_blocks_layout(&L, bk, HS);
        base = dsa__att_align(scratch);
        kt = base + L.kt, s = base + L.s;
        bkp = att_round_up(bk, 32);

        for (size_t t = 0; t < nb; t++) {
                size_t j0, ncols, r0;
                float sum = 0;

                if (!dsa__att_block_span(blocks[t], bk, Tk, nq, pos0, causal, &j0, &ncols, &r0))
                        continue;
                att_pack_keys(kt, k, ldk, att_iota(base, &L, j0, ncols), ncols, HS, scale, NR);
                att_scores(s, bkp, q, ldq, kt, r0, nq, ncols, HS, NR, panel);
                for (size_t i = r0; i < nq; i++)
                        if (lse[i] != -INFINITY)
                                sum += att_row_exp_sum(s + i * bkp, dsa__att_row_keys(i, pos0, j0, ncols, causal),
                                                       lse[i]);
                mass[t] += sum;
        }
        return 0;
}

/* phi of n rows of HS values: src (n, lds) -> dst (n, HS). */
ATT_AI void att_phi_rows(float *dst, const float *src, size_t lds, size_t n, size_t HS) {
        for (size_t i = 0; i < n; i++)
                att_row_phi(dst + i * HS, src + i * lds, HS);
}

/* The state update of one chunk of n keys: kf (n, HS) phi(K), vp the chunk's V packed
 * (att_pack_values). S += kf^T V, z += colsum(kf); kT is packed here. */
ATT_AI void att_linear_state(float *st, float *z, float *kT, const float *vp, const float *kf,
                             const size_t *idx, size_t n, size_t HS, const size_t NR,
                             dsa__gemm_panel_f32_fn *panel) {
        att_pack_keys(kT, kf, HS, idx, n, HS, 1.0f, ATT_CH); /* one panel: plain (HS, CH) */
        for (size_t c = 0; c < HS; c += NR)
                panel(st + c * HS, NR, kT, ATT_CH, vp + c * n, HS, n, NR, NULL, false, DSA_EPILOGUE_NONE);
        for (size_t i = 0; i < n; i++)
                att_row_add(z, kf + i * HS, HS);
}

/* out (n, ldo) = phi(Q) S [+ A V] of one chunk of n rows, where A (n, CH) is tril(phi(Q)
 * phi(K)^T) when a is not NULL, then each row divided by its den (0 -> zeros). */
ATT_AI void att_linear_out(float *out, size_t ldo, const float *qf, const float *st, const float *a,
                           const float *vp, const float *den, size_t n, size_t HS, const size_t NR,
                           dsa__gemm_panel_f32_fn *panel) {
        for (size_t c = 0; c < HS; c += NR) {
                const size_t nr = HS - c < NR ? HS - c : NR;
                panel(out + c, ldo, qf, HS, st + c * HS, n, HS, nr, NULL, true, DSA_EPILOGUE_NONE);
                if (a)
                        panel(out + c, ldo, a, ATT_CH, vp + c * n, n, n, nr, NULL, false, DSA_EPILOGUE_NONE);
        }
        for (size_t i = 0; i < n; i++) {
                if (den[i] > 0)
                        att_row_scale(out + i * ldo, HS, 1.0f / den[i]);
                else
                        memset(out + i * ldo, 0, HS * sizeof(float));
        }
}

ATT_AI int att_linear(float *out, size_t ldo, const float *q, size_t ldq, const float *k, size_t ldk,
                      const float *v, size_t ldv, size_t T, size_t HS, bool causal, float *scratch,
                      const size_t NR, dsa__gemm_panel_f32_fn *panel) {
        struct dsa__att_layout L;
        float *base, *st, *z, *qf, *kf, *kt, *kT, *vp, *a, *den;
        const size_t *idx;
        int r;

        r = dsa__att_linear_check(out, ldo, q, ldq, k, ldk, v, ldv, T, HS, scratch);
        if (r < 0 || T == 0)
                return r;
        dsa__att_linear_layout(&L, HS);
        base = dsa__att_align(scratch);
        st = base + L.st, z = base + L.z, qf = base + L.qf, kf = base + L.kf, kt = base + L.kt;
        kT = base + L.kT, vp = base + L.vp, a = base + L.a, den = base + L.den;
        memset(st, 0, att_round_up(HS, NR) * HS * sizeof(float));
        memset(z, 0, HS * sizeof(float));
        idx = att_iota(base, &L, 0, ATT_CH);

        if (!causal) {
                /* Every key joins the state first; then each row reads the full state. */
                for (size_t c0 = 0; c0 < T; c0 += ATT_CH) {
                        const size_t n = T - c0 < ATT_CH ? T - c0 : ATT_CH;
                        att_phi_rows(kf, k + c0 * ldk, ldk, n, HS);
                        att_pack_values(vp, v + c0 * ldv, ldv, idx, n, HS, NR);
                        att_linear_state(st, z, kT, vp, kf, idx, n, HS, NR, panel);
                }
                for (size_t c0 = 0; c0 < T; c0 += ATT_CH) {
                        const size_t n = T - c0 < ATT_CH ? T - c0 : ATT_CH;
                        att_phi_rows(qf, q + c0 * ldq, ldq, n, HS);
                        for (size_t i = 0; i < n; i++)
                                den[i] = att_dot(qf + i * HS, z, HS);
                        att_linear_out(out + c0 * ldo, ldo, qf, st, NULL, vp, den, n, HS, NR, panel);
                }
                return 0;
        }

        for (size_t c0 = 0; c0 < T; c0 += ATT_CH) {
                const size_t n = T - c0 < ATT_CH ? T - c0 : ATT_CH;

                att_phi_rows(qf, q + c0 * ldq, ldq, n, HS);
                att_phi_rows(kf, k + c0 * ldk, ldk, n, HS);
                att_pack_keys(kt, kf, HS, idx, n, HS, 1.0f, NR);
                att_scores(a, ATT_CH, qf, HS, kt, 0, n, n, HS, NR, panel);
                for (size_t i = 0; i < n; i++)
                        den[i] = att_row_mask_sum(a + i * ATT_CH, n, i + 1) + att_dot(qf + i * HS, z, HS);
                att_pack_values(vp, v + c0 * ldv, ldv, idx, n, HS, NR);
                /* the rows read the state of the chunks before; then this chunk joins it */
                att_linear_out(out + c0 * ldo, ldo, qf, st, a, vp, den, n, HS, NR, panel);
                att_linear_state(st, z, kT, vp, kf, idx, n, HS, NR, panel);
        }
        return 0;
}

/* block_max_lowrank_f32 (attention.h) on the including file's att_lr_scores (a row's low-rank
 * scores against n keys from j0) and att_row_max: keys in segments of a multiple of bk small
 * enough that a segment's R rows of kt (R * 256 floats, 16 KiB at R = 16) stay in L1 while
 * every row is scored against them, then each block's max. */
#define ATT_LR_SEG 256

static int att_block_max_lowrank(float *out, size_t ldo, const float *qt, size_t ldq, const float *kt,
                                 size_t ldk, size_t nq, size_t bk, size_t Tk, size_t R) {
        int r = dsa__att_block_max_lr_check(out, ldo, qt, ldq, kt, ldk, nq, bk, Tk, R);
        float s[ATT_LR_SEG];

        if (r < 0 || nq == 0 || Tk == 0)
                return r;
        const size_t seg = bk <= ATT_LR_SEG ? ATT_LR_SEG / bk * bk : 0; /* bk >= 1 checked */
        if (seg == 0)
                return dsa__attention_block_max_lowrank_f32_ref(out, ldo, qt, ldq, kt, ldk, nq, bk, Tk, R);
        for (size_t j0 = 0; j0 < Tk; j0 += seg) {
                const size_t n = Tk - j0 < seg ? Tk - j0 : seg;
                for (size_t i = 0; i < nq; i++) {
                        att_lr_scores(s, qt + i * ldq, kt, ldk, j0, n, R);
                        for (size_t b0 = 0; b0 < n; b0 += bk)
                                out[i * ldo + (j0 + b0) / bk] = att_row_max(s + b0, n - b0 < bk ? n - b0 : bk);
                }
        }
        return 0;
}
