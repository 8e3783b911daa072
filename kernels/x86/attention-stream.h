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
 *   void att_lr_block_max_q8_g(float *out, size_t ldo, const int8_t *const q[4], const int32_t c[4],
 *                              const float qs[4], size_t rows, const uint8_t *kt, size_t ldk,
 *                              const float *ks, size_t nbc, size_t bk, size_t last, size_t G,
 *                              bool full)
 *           block_max_lowrank_q8's out of rows (<= 4) rows over nbc (<= ATT_LR_LANES, the file's)
 *           blocks, the last of them holding last keys; c[a] = 128 * sum_r q[a][r]; G = R / 4
 *           (always inlined: a constant where att_lr_block_max_q8 passes one); full: nbc is
 *           ATT_LR_LANES and every block whole. ATT_LR_TARGET: the target attribute it needs.
 *   float att_kq8_block_max(const float *kp, size_t ldp, size_t j0, size_t j1, size_t R)
 *           the largest |component| (a NaN left out) of keys [j0, j1) of kp, R floats each
 *   void att_kq8_words(uint32_t w[ATT_KQ8_LANES / 4], const float *x, size_t R, size_t c, float inv)
 *           keys_lowrank_q8's bytes of components [c, c + ATT_KQ8_LANES) of one key x (those at or
 *           past R taken as 0), four to a word
 *   void att_kt_shift(float *dst, const float *kv, size_t j0, size_t n, size_t HS)
 *           keys [j0, j0 + n) of kv's packed K^T (j0 % NR > 0) as NR-wide panels of their own in
 *           dst (room for n rounded up to NR keys), key j0 in column 0; the last panel's columns
 *           past n any value; no panel of kv past the last key's is read
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
 * ncols keys packed. Causal (pos0 not SIZE_MAX, query row i at position pos0 + i, the keys of
 * columns p at or after k0 + p): a panel starts at the first row that may see one of its keys,
 * and the rows above keep what they held (past their visible prefix, never read). */
ATT_AI void att_scores(float *s, size_t bkp, const float *q, size_t ldq, const float *kt, size_t r0,
                       size_t nq, size_t ncols, size_t HS, size_t k0, size_t pos0, const size_t NR,
                       dsa__gemm_panel_f32_fn *panel) {
        for (size_t p = 0; p < ncols; p += NR) {
                const size_t rp = pos0 != SIZE_MAX && k0 + p > pos0 + r0 ? k0 + p - pos0 : r0;
                if (rp < nq)
                        panel(s + rp * bkp + p, bkp, q + rp * ldq, ldq, kt + p * HS, nq - rp, HS,
                              ncols - p < NR ? ncols - p : NR, NULL, true, DSA_EPILOGUE_NONE);
        }
}

/* The end of the run of consecutive listed blocks that starts at list position t: the position
 * of its last block. */
ATT_AI size_t att_run_end(const uint32_t *blocks, size_t nb, size_t t) {
        while (t + 1 < nb && blocks[t + 1] == blocks[t] + 1)
                t++;
        return t;
}

/* The keys [*ret_j0, *ret_j1) some row sees of the run of consecutive listed blocks at list
 * position *t (to the end of its last block, cut at Tk and causally), *t moved past it. false
 * when it has none: then no later block has any either (blocks ascend). */
ATT_AI bool att_next_run(const uint32_t *blocks, size_t nb, size_t *t, size_t bk, size_t Tk, size_t nq,
                         size_t pos0, bool causal, size_t *ret_j0, size_t *ret_j1) {
        size_t j0, j1, ncols, r0, t1;

        if (*t >= nb || !dsa__att_block_span(blocks[*t], bk, Tk, nq, pos0, causal, &j0, &ncols, &r0))
                return false;
        t1 = att_run_end(blocks, nb, *t);
        j1 = (size_t) blocks[t1] * bk + bk;
        j1 = j1 < Tk ? j1 : Tk;
        if (causal && j1 > pos0 + nq)
                j1 = pos0 + nq;
        *t = t1 + 1, *ret_j0 = j0, *ret_j1 = j1;
        return true;
}

/* Where a piece's keys come from: kv packed for Tk keys (NULL: packed into the chunk), the bias
 * added to their scores (NULL: none), and whether a row sees only those at or before it. */
struct att_src {
        const float *kv, *bias;
        size_t Tk;
        bool causal;
};

/* A piece of a chunk: keys [j0, j0 + n) of source src at tile column col. */
struct att_seg {
        size_t j0, n, col;
        const struct att_src *src;
};
#define ATT_SEGS 16
#define ATT_COL 16 /* kv: a piece's first tile column is a multiple of this (a zmm) */

/* The streaming softmax over a block list (see the top of this file), on k and v packed chunk by
 * chunk (packed false) or on kv, the whole sequence packed by att_pack_kv (k and v unused, scale
 * already in it), plus bias (Tk) added to every row's scores when not NULL (-inf: the key is not
 * seen). The visible keys of the list are taken in chunks of up to W keys (dsa__att_blocks_layout)
 * gathered from consecutive blocks and from separate runs alike, so the max, exp and rescale steps
 * run once per chunk, not per block. With kv, a piece whose first key does not start a panel (only
 * a chunk's first piece can) is scored from its keys moved to panels of their own (att_kt_shift);
 * a later piece must start on a panel, or it waits for the next chunk, and starts in the tile at a
 * multiple of ATT_COL columns, the gap -inf (so that the row operations run on aligned vectors).
 * The extra keys (kv only) come first, as one run from their own packed buffer with their bias and
 * no causal rule, and the list's keys follow in the same chunk: every row sees all the extra keys
 * and the list's keys ascend, so the keys a causal row sees are still a prefix of its tile row,
 * and a list that fits one chunk with the extras costs one softmax step, not two. */
ATT_AI int att_stream(float *out, size_t ldo, const float *q, size_t ldq, const float *k, size_t ldk,
                      const float *v, size_t ldv, bool packed, const float *kv, const float *bias,
                      const struct dsa_attention_extra *extra, size_t nq, size_t pos0, const uint32_t *blocks,
                      size_t nb, size_t bk, size_t Tk, size_t HS, float scale, bool causal, float *ret_lse,
                      float *scratch, const size_t NR, dsa__gemm_panel_f32_fn *panel) {
        struct dsa__att_layout L;
        float *base, *kt, *vp, *s, *acc, *m, *l;
        size_t t = 0, jc = 0, je = 0; /* the current run's keys not taken yet: [jc, je) */
        const struct att_src lsrc = { kv, bias, Tk, causal };
        struct att_src xsrc = { 0 };
        const struct att_src *src = NULL; /* the current run's */
        bool xdone = true;                /* the extra keys taken (or none) */
        int r;

        r = dsa__att_blocks_check(out, ldo, q, ldq, packed ? kv : k, packed ? HS : ldk, packed ? kv : v,
                                  packed ? HS : ldv, nq, pos0, blocks, nb, bk, Tk, HS, scratch);
        if (r >= 0)
                r = dsa__att_extra_check(packed ? extra : NULL);
        if (r < 0 || nq == 0)
                return r;
        if (!out)
                return -EINVAL;
        if (packed && extra && extra->n > extra->j0)
                xsrc = (struct att_src) { extra->kv, extra->bias, extra->Tk, false }, xdone = false;
        dsa__att_blocks_layout(&L, bk, HS);
        base = dsa__att_align(scratch);
        kt = base + L.kt, vp = base + L.vp, s = base + L.s, acc = base + L.acc;
        m = base + L.m, l = base + L.l;
        const size_t W = L.span, lds = L.lds;

        memset(acc, 0, nq * HS * sizeof(float));
        for (size_t i = 0; i < nq; i++)
                m[i] = -INFINITY, l[i] = 0;

        for (;;) {
                float mx[DSA_ATT_BLOCK], alpha[DSA_ATT_BLOCK];
                size_t nv[DSA_ATT_BLOCK];
                struct att_seg sg[ATT_SEGS];
                size_t ns = 0, width = 0;

                while (width < W && ns < ATT_SEGS) {
                        if (jc == je) { /* the next run: the extra keys, then the list's */
                                if (!xdone)
                                        src = &xsrc, jc = extra->j0, je = extra->n, xdone = true;
                                else if (att_next_run(blocks, nb, &t, bk, Tk, nq, pos0, causal, &jc, &je))
                                        src = &lsrc;
                                else
                                        break;
                        }
                        if (packed && ns > 0 && jc % NR)
                                break;
                        /* kv: a piece from a vector's start in the tile (the gap before it -inf) */
                        const size_t col = packed ? (width + ATT_COL - 1) / ATT_COL * ATT_COL : width;
                        if (col >= W)
                                break;
                        const size_t take = je - jc < W - col ? je - jc : W - col;
                        sg[ns++] = (struct att_seg) { jc, take, col, src };
                        width = col + take, jc += take;
                }
                if (ns == 0)
                        break;
                /* rows before rc see none of the chunk: its first piece is its earliest, or the
                 * extra keys every row sees */
                const size_t c0 = sg[0].j0, rc = sg[0].src->causal && c0 > pos0 ? c0 - pos0 : 0;

                if (packed) {
                        for (size_t g = 0; g < ns; g++) {
                                const float *kp = sg[g].src->kv + sg[g].j0 * HS;
                                if (sg[g].j0 % NR) { /* only a first piece: its keys moved to panels of their own */
                                        att_kt_shift(kt, sg[g].src->kv, sg[g].j0, sg[g].n, HS);
                                        kp = kt;
                                }
                                att_scores(s + sg[g].col, lds, q, ldq, kp, rc, nq, sg[g].n, HS, sg[g].j0,
                                           sg[g].src->causal ? pos0 : SIZE_MAX, NR, panel);
                        }
                } else {
                        size_t *idx = (size_t *) (base + L.idx);
                        for (size_t g = 0; g < ns; g++)
                                for (size_t j = 0; j < sg[g].n; j++)
                                        idx[sg[g].col + j] = sg[g].j0 + j;
                        att_pack_keys(kt, k, ldk, idx, width, HS, scale, NR);
                        att_pack_values(vp, v, ldv, idx, width, HS, NR);
                        att_scores(s, lds, q, ldq, kt, rc, nq, width, HS, c0, causal ? pos0 : SIZE_MAX, NR, panel);
                }

                /* the online softmax step in passes over the rows, so that rows overlap: each
                 * row's new max, every row's rescale factor as one vector exp, then the rows' exps */
                for (size_t i = rc; i < nq; i++) {
                        float *si = s + i * lds;
                        size_t n = width;

                        for (size_t g = 0, p = pos0 + i + 1; g < ns; g++) /* the keys at or before the row */
                                if (sg[g].src->causal && p < sg[g].j0 + sg[g].n) {
                                        n = sg[g].col + (p > sg[g].j0 ? p - sg[g].j0 : 0);
                                        break;
                                }
                        for (size_t g = 0, e = 0; g < ns && e < n; e = sg[g].col + sg[g].n, g++) {
                                for (size_t j = e; j < sg[g].col; j++) /* the gap before the piece */
                                        si[j] = -INFINITY;
                                if (sg[g].src->bias && sg[g].col < n)
                                        att_row_add(si + sg[g].col, sg[g].src->bias + sg[g].j0, sg[g].n);
                        }
                        nv[i] = n;
                        /* a compare, not fmaxf (a libm call here); a NaN max leaves m as fmaxf does */
                        const float rm = n ? att_row_max(si, n) : -INFINITY;
                        mx[i] = rm > m[i] ? rm : m[i];
                        /* e^(m - m'): 1 while nothing is seen, 0 (acc and l are 0) for the first keys */
                        alpha[i] = mx[i] == -INFINITY ? 0.0f : m[i] - mx[i];
                }
                att_row_exp(alpha + rc, nq - rc, nq - rc, 0.0f);
                for (size_t i = rc; i < nq; i++) {
                        float *si = s + i * lds;

                        if (mx[i] == -INFINITY) { /* nothing seen yet: no key, or every key masked by bias */
                                memset(si, 0, width * sizeof(float));
                                continue;
                        }
                        const float sum = att_row_exp(si, width, nv[i], mx[i]);
                        if (alpha[i] != 1.0f) {
                                l[i] *= alpha[i];
                                att_row_scale(acc + i * HS, HS, alpha[i]);
                        }
                        m[i] = mx[i];
                        l[i] += sum;
                }

                for (size_t c = 0; c < HS; c += NR) {
                        const size_t nr = HS - c < NR ? HS - c : NR;
                        if (!packed) {
                                panel(acc + rc * HS + c, HS, s + rc * lds, lds, vp + c * width, nq - rc, width, nr, NULL,
                                      false, DSA_EPILOGUE_NONE);
                                continue;
                        }
                        for (size_t g = 0; g < ns; g++) { /* V of the source in NR-column panels of Tk rows */
                                const struct att_src *sc = sg[g].src;
                                panel(acc + rc * HS + c, HS, s + rc * lds + sg[g].col, lds,
                                      sc->kv + dsa__att_packed_v(sc->Tk, HS) + sg[g].j0 * NR + c * sc->Tk, nq - rc,
                                      sg[g].n, nr, NULL, false, DSA_EPILOGUE_NONE);
                        }
                }
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

/* kv (dsa_attention_packed_floats(Tk, HS)) = K^T * scale of all Tk keys in NR-wide panels
 * (the last one zero-filled), then from dsa__att_packed_v(Tk, HS), V in NR-column panels of
 * Tk rows: the layout att_stream reads with kv; of the keys [j0, j1) only (pack_kv_rows_f32).
 * Chunks of up to 256 keys from j0, a multiple of 32 (so of every NR): each starts a panel. */
ATT_AI int att_pack_kv(float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk, size_t j0,
                       size_t j1, size_t HS, float scale, const size_t NR) {
        const size_t vkt = dsa__att_packed_v(Tk, HS);
        int r = dsa__att_pack_check(kv, k, ldk, v, ldv, Tk, j0, j1, HS);
        size_t idx[256];

        if (r < 0)
                return r;
        for (size_t j = 0; j < 256; j++)
                idx[j] = j;
        for (size_t c0 = j0; c0 < j1; c0 += 256) {
                const size_t n = j1 - c0 < 256 ? j1 - c0 : 256;
                att_pack_keys(kv + c0 * HS, k + c0 * ldk, ldk, idx, n, HS, scale, NR);
                att_pack_values_strided(kv + vkt + c0 * NR, Tk, v + c0 * ldv, ldv, idx, n, HS, NR);
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
        bkp = L.lds;

        for (size_t t = 0; t < nb; t++) {
                size_t j0, ncols, r0;
                float sum = 0;

                if (!dsa__att_block_span(blocks[t], bk, Tk, nq, pos0, causal, &j0, &ncols, &r0))
                        continue;
                att_pack_keys(kt, k, ldk, att_iota(base, &L, j0, ncols), ncols, HS, scale, NR);
                att_scores(s, bkp, q, ldq, kt, r0, nq, ncols, HS, 0, SIZE_MAX, NR, panel);
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
                att_scores(a, ATT_CH, qf, HS, kt, 0, n, n, HS, 0, SIZE_MAX, NR, panel);
                for (size_t i = 0; i < n; i++)
                        den[i] = att_row_mask_sum(a + i * ATT_CH, n, i + 1) + att_dot(qf + i * HS, z, HS);
                att_pack_values(vp, v + c0 * ldv, ldv, idx, n, HS, NR);
                /* the rows read the state of the chunks before; then this chunk joins it */
                att_linear_out(out + c0 * ldo, ldo, qf, st, a, vp, den, n, HS, NR, panel);
                att_linear_state(st, z, kT, vp, kf, idx, n, HS, NR, panel);
        }
        return 0;
}

/* Rows a group of the low-rank scorer (each key vector loaded serves them all). */
#define ATT_LR_ROWS 4

/* One chunk of att_block_max_lowrank_q8: the file's att_lr_block_max_q8_g with the group count a
 * constant for the usual ranks (R <= 16: the row bytes then stay in registers and the sums
 * unroll) and full known (plain loads). */
ATT_LR_TARGET static void att_lr_block_max_q8(float *out, size_t ldo, const int8_t *const q[4], const int32_t c[4],
                                              const float qs[4], size_t rows, const uint8_t *kt, size_t ldk,
                                              const float *ks, size_t nbc, size_t bk, size_t last, size_t R) {
#define ATT_LR_G(full)                                                                                     \
        do {                                                                                               \
                switch (R / 4) {                                                                           \
                case 1:                                                                                    \
                        att_lr_block_max_q8_g(out, ldo, q, c, qs, rows, kt, ldk, ks, nbc, bk, last, 1, full);     \
                        break;                                                                             \
                case 2:                                                                                    \
                        att_lr_block_max_q8_g(out, ldo, q, c, qs, rows, kt, ldk, ks, nbc, bk, last, 2, full);     \
                        break;                                                                             \
                case 3:                                                                                    \
                        att_lr_block_max_q8_g(out, ldo, q, c, qs, rows, kt, ldk, ks, nbc, bk, last, 3, full);     \
                        break;                                                                             \
                case 4:                                                                                    \
                        att_lr_block_max_q8_g(out, ldo, q, c, qs, rows, kt, ldk, ks, nbc, bk, last, 4, full);     \
                        break;                                                                             \
                default:                                                                                   \
                        att_lr_block_max_q8_g(out, ldo, q, c, qs, rows, kt, ldk, ks, nbc, bk, last, R / 4, full); \
                }                                                                                          \
        } while (0)
        if (nbc == ATT_LR_LANES && last == bk)
                ATT_LR_G(true);
        else
                ATT_LR_G(false);
#undef ATT_LR_G
}

/* Rows att_block_max_lowrank_q8 takes at a time: their c sums are computed once for every chunk. */
#define ATT_LR_BATCH 64

/* block_max_lowrank_q8 (attention.h) on the including file's att_lr_block_max_q8_g: rows in
 * batches of ATT_LR_BATCH, and in each, blocks in chunks of ATT_LR_LANES (a vector's lanes), rows
 * ATT_LR_ROWS at a time (a short last group repeats its last row), the chunk's keys in L1 across
 * the groups. The byte dot products of a row sum q * (k + 128), so c = 128 * sum_r q[r] (once a
 * row per batch) comes off each block's max, before the scales. */
static int att_block_max_lowrank_q8(float *out, size_t ldo, const int8_t *qt, size_t ldq, const float *qs,
                                    const uint8_t *kt, size_t ldk, const float *ks, size_t nq, size_t bk, size_t Tk,
                                    size_t R) {
        int r = dsa__att_block_max_q8_check(out, ldo, qt, ldq, qs, kt, ldk, ks, nq, bk, Tk, R);

        if (r < 0 || nq == 0 || Tk == 0)
                return r;
        const size_t nb = (Tk + bk - 1) / bk, rem = Tk - (nb - 1) * bk; /* keys of the last block */
        for (size_t i0 = 0; i0 < nq; i0 += ATT_LR_BATCH) {
                const size_t i1 = nq - i0 < ATT_LR_BATCH ? nq : i0 + ATT_LR_BATCH;
                int32_t cs[ATT_LR_BATCH];
                for (size_t i = i0; i < i1; i++) {
                        int32_t sum = 0;
                        for (size_t t = 0; t < R; t++)
                                sum += qt[i * ldq + t];
                        cs[i - i0] = 128 * sum;
                }
                for (size_t b0 = 0; b0 < nb; b0 += ATT_LR_LANES) {
                        const size_t nbc = nb - b0 < ATT_LR_LANES ? nb - b0 : ATT_LR_LANES;
                        for (size_t i = i0; i < i1; i += ATT_LR_ROWS) {
                                const size_t rows = i1 - i < ATT_LR_ROWS ? i1 - i : ATT_LR_ROWS;
                                const int8_t *q[ATT_LR_ROWS];
                                int32_t c[ATT_LR_ROWS];
                                float s[ATT_LR_ROWS];
                                for (size_t a = 0; a < ATT_LR_ROWS; a++) {
                                        const size_t ia = i + (a < rows ? a : rows - 1);
                                        q[a] = qt + ia * ldq, s[a] = qs[ia], c[a] = cs[ia - i0];
                                }
                                att_lr_block_max_q8(out + i * ldo + b0, ldo, q, c, s, rows, kt + 4 * b0, ldk, ks + b0,
                                                    nbc, bk, b0 + nbc == nb ? rem : bk, R);
                        }
                }
        }
        return 0;
}

/* keys_lowrank_q8 (attention.h) on the including file's att_kq8_block_max and att_kq8_words:
 * per block its factor and scale, then each key's words stored block-major, word g of key t of
 * block b at row g bk + t, bytes [4b, 4b + 4). */
static int att_keys_lowrank_q8(uint8_t *kt, size_t ldk, float *ks, const float *kp, size_t ldp, size_t n, size_t bk,
                               size_t R) {
        const size_t R4 = (R + 3) / 4 * 4;
        int r = dsa__att_keys_q8_check(kt, ldk, ks, kp, ldp, n, bk, R);

        if (r < 0 || n == 0)
                return r;
        for (size_t b = 0; b * bk < n; b++) {
                const size_t j0 = b * bk, j1 = n - j0 < bk ? n : j0 + bk;
                const float inv = dsa__att_q8_inv(127.0f, att_kq8_block_max(kp, ldp, j0, j1, R));
                ks[b] = dsa__att_q8_scale(inv);
                for (size_t j = j0; j < j1; j++)
                        for (size_t c = 0; c < R4; c += ATT_KQ8_LANES) {
                                uint32_t w[ATT_KQ8_LANES / 4];
                                att_kq8_words(w, kp + j * ldp, R, c, inv);
                                for (size_t g = 0; g < ATT_KQ8_LANES / 4 && c + 4 * g < R4; g++)
                                        memcpy(kt + ((c / 4 + g) * bk + j - j0) * ldk + 4 * b, w + g, 4);
                        }
        }
        return 0;
}

/* rows_lowrank_q8 (attention.h) on the same row operations: a row is a block of one key, its
 * factor for 63, each word's offset bytes back to signed ones (the top bit flipped: 128 + v
 * becomes v). */
static int att_rows_lowrank_q8(int8_t *qt, size_t ldq, float *qs, const float *p, size_t ldp, size_t n, size_t R) {
        const size_t R4 = (R + 3) / 4 * 4;
        int r = dsa__att_rows_q8_check(qt, ldq, qs, p, ldp, n, R);

        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                const float inv = dsa__att_q8_inv(63.0f, att_kq8_block_max(p + i * ldp, 0, 0, 1, R));
                qs[i] = dsa__att_q8_scale(inv);
                for (size_t c = 0; c < R4; c += ATT_KQ8_LANES) {
                        uint32_t w[ATT_KQ8_LANES / 4];
                        att_kq8_words(w, p + i * ldp, R, c, inv);
                        for (size_t g = 0; g < ATT_KQ8_LANES / 4 && c + 4 * g < R4; g++) {
                                w[g] ^= 0x80808080u;
                                memcpy(qt + i * ldq + c + 4 * g, w + g, 4);
                        }
                }
        }
        return 0;
}
