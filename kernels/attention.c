/* Long-context attention (attention.h): the scratch layout and argument checks every variant
 * shares, the scalar references, the block pooling, and the tables per ISA. The SIMD variants
 * live in x86/attention-*.c around the driver of x86/attention-stream.h.
 *
 * The references are written for obviousness, one query row at a time: visibility straight
 * from the rule (j in a listed block, j < Tk, j <= pos0 + i when causal), scores as
 * scale * dot(q, k), the online softmax update as in the flash-attention papers, and linear
 * attention as a running sum over tokens with no chunking. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "attention.h"

#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define CHUNK DSA_ATT_LINEAR_CHUNK

static size_t round_up(size_t n, size_t m) {
        return (n + m - 1) / m * m;
}

void dsa__att_blocks_layout(struct dsa__att_layout *L, size_t bk, size_t HS) {
        const size_t W = MAX(round_up(bk, 32), (size_t) DSA__ATT_SPAN), hsp = round_up(HS, 32);
        size_t o = 0;

        *L = (struct dsa__att_layout) { 0 };
        L->span = W, L->lds = W + 32; /* a chunk of W keys read from up to 31 keys past a panel start */
        L->kt = o, o += HS * W;       /* W is a multiple of 32: every region stays aligned */
        L->vp = o, o += hsp * W;
        L->s = o, o += DSA_ATT_BLOCK * L->lds;
        L->acc = o, o += round_up(DSA_ATT_BLOCK * HS, 16);
        L->m = o, o += DSA_ATT_BLOCK;
        L->l = o, o += DSA_ATT_BLOCK;
        L->idx = o, o += 2 * W;
        L->total = o + 16;
}

void dsa__att_linear_layout(struct dsa__att_layout *L, size_t HS) {
        const size_t hsp = round_up(HS, 32);
        size_t o = 0;

        *L = (struct dsa__att_layout) { 0 };
        L->st = o, o += hsp * HS; /* a multiple of 32 */
        L->z = o, o += hsp;
        L->qf = o, o += round_up(CHUNK * HS, 16);
        L->kf = o, o += round_up(CHUNK * HS, 16);
        L->kt = o, o += HS * CHUNK;
        L->kT = o, o += HS * CHUNK;
        L->vp = o, o += hsp * CHUNK;
        L->a = o, o += CHUNK * CHUNK;
        L->den = o, o += CHUNK;
        L->idx = o, o += 2 * CHUNK;
        L->total = o + 16;
}

_Static_assert(sizeof(size_t) <= 2 * sizeof(float), "idx takes 2 floats of scratch a key");
_Static_assert(DSA_ATT_LINEAR_CHUNK % 32 == 0, "chunks are whole panels of every NR");

size_t dsa_attention_blocks_scratch(size_t bk, size_t HS) {
        struct dsa__att_layout L;

        if (bk == 0 || bk > DSA_ATT_MAX_BK || HS == 0 || HS > DSA_ATT_MAX_HS)
                return SIZE_MAX;
        dsa__att_blocks_layout(&L, bk, HS);
        return L.total;
}

size_t dsa_attention_linear_scratch(size_t HS) {
        struct dsa__att_layout L;

        if (HS == 0 || HS > DSA_ATT_MAX_HS)
                return SIZE_MAX;
        dsa__att_linear_layout(&L, HS);
        return L.total;
}

int dsa__att_blocks_check(const float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                          size_t ldk, const float *v, size_t ldv, size_t nq, size_t pos0,
                          const uint32_t *blocks, size_t nb, size_t bk, size_t Tk, size_t HS,
                          const float *scratch) {
        if (bk == 0 || bk > DSA_ATT_MAX_BK || HS == 0 || HS > DSA_ATT_MAX_HS || nq > DSA_ATT_BLOCK)
                return -EINVAL;
        if (pos0 > SIZE_MAX - nq || (nb > 0 && !blocks))
                return -EINVAL;
        if (nq > 0 && (!q || !scratch || (out && ldo < HS && nq > 1) || ldq < (nq > 1 ? HS : 0)))
                return -EINVAL;
        if (nb > 0 && Tk > 0 && (!k || !v || (Tk > 1 && (ldk < HS || ldv < HS))))
                return -EINVAL;
        for (size_t t = 1; t < nb; t++)
                if (blocks[t] <= blocks[t - 1])
                        return -EINVAL;
        return 0;
}

int dsa__att_linear_check(const float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                          size_t ldk, const float *v, size_t ldv, size_t T, size_t HS,
                          const float *scratch) {
        if (HS == 0 || HS > DSA_ATT_MAX_HS)
                return -EINVAL;
        if (T > 0 && (!out || !q || !k || !v || !scratch))
                return -EINVAL;
        if (T > 1 && (ldo < HS || ldq < HS || ldk < HS || ldv < HS))
                return -EINVAL;
        return 0;
}

static float dot(const float *a, const float *b, size_t n) {
        float s = 0;

        for (size_t i = 0; i < n; i++)
                s += a[i] * b[i];
        return s;
}

/* Key j (of a listed block, j < Tk) visible to the query at position p. */
static bool visible(size_t j, size_t p, bool causal) {
        return !causal || j <= p;
}

int dsa__att_extra_check(const struct dsa_attention_extra *extra) {
        if (extra && extra->j0 > extra->n)
                return -EINVAL;
        if (extra && extra->n > extra->j0 &&
            (!extra->kv || !extra->bias || extra->n > extra->Tk || extra->Tk > DSA_ATT_MAX_EXTRA))
                return -EINVAL;
        return 0;
}

/* One online-softmax step of a row over keys [j0, j1) of k and v it sees (causal: j <= p),
 * bias (NULL: none) added: the running max *m, sum *l and accumulator acc (HS) updated; s holds
 * at least bk scores (j1 - j0 <= bk). */
static void ref_step(const float *qi, const float *k, size_t ldk, const float *v, size_t ldv, const float *bias,
                     size_t j0, size_t j1, size_t p, bool causal, float scale, size_t HS, float *s, float *acc,
                     float *m, float *l) {
        float mx = -INFINITY, mn, alpha;
        size_t n = 0;

        /* s[0, n) the scores of the visible keys, in order from j0 */
        for (size_t j = j0; j < j1 && visible(j, p, causal); j++) {
                s[n] = scale * dot(qi, k + j * ldk, HS) + (bias ? bias[j] : 0.0f);
                mx = fmaxf(mx, s[n++]);
        }
        if (n == 0 || fmaxf(*m, mx) == -INFINITY) /* none seen, or all masked by bias */
                return;
        mn = fmaxf(*m, mx);
        alpha = expf(*m - mn); /* 0 for the first block a row sees */
        *l *= alpha;
        for (size_t d = 0; d < HS; d++)
                acc[d] *= alpha;
        for (size_t j = 0; j < n; j++) {
                const float e = expf(s[j] - mn), *vj = v + (j0 + j) * ldv;
                *l += e;
                for (size_t d = 0; d < HS; d++)
                        acc[d] += e * vj[d];
        }
        *m = mn;
}

/* blocks_f32 with the bias and the extra keys of blocks_packed_f32 (NULL: none; the extra in
 * the reference's packed layout). */
static int blocks_ref(float *out, size_t ldo, const float *q, size_t ldq, const float *k, size_t ldk, const float *v,
                      size_t ldv, const float *bias, size_t nq, size_t pos0, const uint32_t *blocks, size_t nb,
                      size_t bk, size_t Tk, size_t HS, float scale, bool causal,
                      const struct dsa_attention_extra *extra, float *ret_lse, float *scratch) {
        struct dsa__att_layout L;
        float *s, *acc;
        int r;

        r = dsa__att_blocks_check(out, ldo, q, ldq, k, ldk, v, ldv, nq, pos0, blocks, nb, bk, Tk, HS,
                                  scratch);
        if (r >= 0)
                r = dsa__att_extra_check(extra);
        if (r < 0 || nq == 0)
                return r;
        if (!out)
                return -EINVAL;
        dsa__att_blocks_layout(&L, bk, HS);
        s = dsa__att_align(scratch) + L.s;
        acc = dsa__att_align(scratch) + L.acc;

        for (size_t i = 0; i < nq; i++) {
                const float *qi = q + i * ldq;
                float m = -INFINITY, l = 0;

                memset(acc, 0, HS * sizeof(float));
                for (size_t t = 0; t < nb; t++) {
                        const size_t j0 = (size_t) blocks[t] * bk;
                        const size_t j1 = j0 < Tk ? (Tk - j0 < bk ? Tk : j0 + bk) : j0;
                        ref_step(qi, k, ldk, v, ldv, bias, j0, j1, pos0 + i, causal, scale, HS, s, acc, &m, &l);
                }
                for (size_t j0 = extra ? extra->j0 : 0; extra && j0 < extra->n; j0 += bk) { /* bk keys a step */
                        const float *ek = extra->kv, *ev = ek + dsa__att_packed_v(extra->Tk, HS);
                        const size_t j1 = extra->n - j0 < bk ? extra->n : j0 + bk;
                        ref_step(qi, ek, HS, ev, HS, extra->bias, j0, j1, 0, false, 1.0f, HS, s, acc, &m, &l);
                }
                for (size_t d = 0; d < HS; d++)
                        out[i * ldo + d] = l > 0 ? acc[d] / l : 0.0f;
                if (ret_lse)
                        ret_lse[i] = l > 0 ? m + logf(l) : -INFINITY;
        }
        return 0;
}

int dsa__attention_blocks_f32_ref(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                                  size_t ldk, const float *v, size_t ldv, size_t nq, size_t pos0,
                                  const uint32_t *blocks, size_t nb, size_t bk, size_t Tk, size_t HS,
                                  float scale, bool causal, float *ret_lse, float *scratch) {
        return blocks_ref(out, ldo, q, ldq, k, ldk, v, ldv, NULL, nq, pos0, blocks, nb, bk, Tk, HS, scale, causal,
                          NULL, ret_lse, scratch);
}

int dsa__att_pack_check(const float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                        size_t j0, size_t j1, size_t HS) {
        if (HS == 0 || HS > DSA_ATT_MAX_HS || j0 > j1 || j1 > Tk || j0 % 32 || (j1 % 32 && j1 != Tk))
                return -EINVAL;
        if (j1 > j0 && (!kv || !k || !v || (Tk > 1 && (ldk < HS || ldv < HS))))
                return -EINVAL;
        return 0;
}

/* The reference's packed layout: K * scale as (Tk, HS) rows, V as (Tk, HS) rows from
 * dsa__att_packed_v (within dsa_attention_packed_floats). */
int dsa__attention_pack_kv_rows_f32_ref(float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                                        size_t j0, size_t j1, size_t HS, float scale) {
        int r = dsa__att_pack_check(kv, k, ldk, v, ldv, Tk, j0, j1, HS);

        if (r < 0)
                return r;
        for (size_t j = j0; j < j1; j++)
                for (size_t d = 0; d < HS; d++) {
                        kv[j * HS + d] = scale * k[j * ldk + d];
                        kv[dsa__att_packed_v(Tk, HS) + j * HS + d] = v[j * ldv + d];
                }
        return 0;
}

int dsa__attention_pack_kv_f32_ref(float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                                   size_t HS, float scale) {
        return dsa__attention_pack_kv_rows_f32_ref(kv, k, ldk, v, ldv, Tk, 0, Tk, HS, scale);
}

int dsa__attention_blocks_packed_f32_ref(float *out, size_t ldo, const float *q, size_t ldq, size_t nq,
                                         size_t pos0, const float *kv, const float *bias, const uint32_t *blocks,
                                         size_t nb, size_t bk, size_t Tk, size_t HS, bool causal,
                                         const struct dsa_attention_extra *extra, float *ret_lse, float *scratch) {
        return blocks_ref(out, ldo, q, ldq, kv, HS, kv ? kv + dsa__att_packed_v(Tk, HS) : NULL, HS, bias, nq, pos0,
                          blocks, nb, bk, Tk, HS, 1.0f, causal, extra, ret_lse, scratch);
}

size_t dsa_attention_packed_floats(size_t Tk, size_t HS) {
        if (HS == 0 || HS > DSA_ATT_MAX_HS || Tk > SIZE_MAX / 4 / (2 * DSA_ATT_MAX_HS) - 32)
                return SIZE_MAX;
        return dsa__att_packed_v(Tk, HS) + round_up(HS, 32) * Tk;
}

int dsa__attention_block_mass_f32_ref(float *mass, const float *q, size_t ldq, const float *k,
                                      size_t ldk, size_t nq, size_t pos0, const uint32_t *blocks,
                                      size_t nb, size_t bk, size_t Tk, size_t HS, float scale,
                                      bool causal, const float *lse, float *scratch) {
        int r;

        r = dsa__att_blocks_check(NULL, 0, q, ldq, k, ldk, k, ldk, nq, pos0, blocks, nb, bk, Tk, HS,
                                  scratch);
        if (r < 0)
                return r;
        if ((nb > 0 && !mass) || (nq > 0 && !lse))
                return -EINVAL;

        for (size_t t = 0; t < nb; t++) {
                const size_t j0 = (size_t) blocks[t] * bk;
                const size_t j1 = j0 < Tk ? (Tk - j0 < bk ? Tk : j0 + bk) : j0;
                float sum = 0;

                for (size_t i = 0; i < nq; i++) {
                        if (lse[i] == -INFINITY)
                                continue;
                        for (size_t j = j0; j < j1 && visible(j, pos0 + i, causal); j++)
                                sum += expf(scale * dot(q + i * ldq, k + j * ldk, HS) - lse[i]);
                }
                mass[t] += sum;
        }
        return 0;
}

/* elu(x) + 1 */
static float phi(float x) {
        return x > 0 ? x + 1.0f : expf(x);
}

int dsa__attention_linear_f32_ref(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                                  size_t ldk, const float *v, size_t ldv, size_t T, size_t HS,
                                  bool causal, float *scratch) {
        struct dsa__att_layout L;
        float *S, *z, *fq, *fk;
        int r;

        r = dsa__att_linear_check(out, ldo, q, ldq, k, ldk, v, ldv, T, HS, scratch);
        if (r < 0 || T == 0)
                return r;
        dsa__att_linear_layout(&L, HS);
        S = dsa__att_align(scratch) + L.st;
        z = dsa__att_align(scratch) + L.z;
        fq = dsa__att_align(scratch) + L.qf;
        fk = dsa__att_align(scratch) + L.kf;
        memset(S, 0, HS * HS * sizeof(float));
        memset(z, 0, HS * sizeof(float));

        /* Key j joins the state (S, z) before row j reads it (causal), or all keys before any
         * row (not causal). */
        for (size_t j = 0, i = 0; i < T; i++) {
                for (; j < T && (!causal || j <= i); j++) {
                        for (size_t d = 0; d < HS; d++)
                                fk[d] = phi(k[j * ldk + d]);
                        for (size_t d = 0; d < HS; d++) {
                                z[d] += fk[d];
                                for (size_t e = 0; e < HS; e++)
                                        S[d * HS + e] += fk[d] * v[j * ldv + e];
                        }
                }
                for (size_t d = 0; d < HS; d++)
                        fq[d] = phi(q[i * ldq + d]);
                const float den = dot(fq, z, HS);
                for (size_t e = 0; e < HS; e++) {
                        float num = 0;
                        for (size_t d = 0; d < HS; d++)
                                num += fq[d] * S[d * HS + e];
                        out[i * ldo + e] = den > 0 ? num / den : 0.0f;
                }
        }
        return 0;
}

int dsa__attention_pool_blocks_f32_ref(float *out, size_t ldo, const float *x, size_t ldx, size_t T, size_t bk,
                                       size_t HS) {
        return dsa__att_pool_blocks(out, ldo, x, ldx, T, bk, HS);
}

int dsa__att_block_max_q8_check(const float *out, size_t ldo, const int8_t *qt, size_t ldq, const float *qs,
                                const uint8_t *kt, size_t ldk, const float *ks, size_t nq, size_t bk, size_t Tk,
                                size_t R) {
        const size_t nb = bk ? (Tk + bk - 1) / bk : 0;

        if (bk == 0 || R < 4 || R % 4 || R > DSA_ATT_MAX_RANK_LR)
                return -EINVAL;
        if (nq == 0 || Tk == 0)
                return 0;
        if (!out || !qt || !qs || !kt || !ks || (nq > 1 && (ldq < R || ldo < nb)) ||
            ((R > 4 || bk > 1) && ldk < 4 * nb)) /* more than one row of kt */
                return -EINVAL;
        /* four bytes a word (R % 4 == 0): a byte is outside [-63, 63] when its top two bits
         * differ (0x40-0xbf: 64..127, -128..-65) or it is 0xc0 (-64), a zero byte of w ^ 0xc0c0c0c0 */
        uint32_t bad = 0;
        for (size_t i = 0; i < nq; i++)
                for (size_t r = 0; r < R; r += 4) {
                        uint32_t w, z;
                        memcpy(&w, qt + i * ldq + r, 4);
                        z = w ^ 0xc0c0c0c0u;
                        bad |= ((w ^ (w << 1)) | ((z - 0x01010101u) & ~z)) & 0x80808080u;
                }
        return bad ? -EINVAL : 0;
}

int dsa__attention_block_max_lowrank_q8_ref(float *out, size_t ldo, const int8_t *qt, size_t ldq, const float *qs,
                                            const uint8_t *kt, size_t ldk, const float *ks, size_t nq, size_t bk,
                                            size_t Tk, size_t R) {
        int r = dsa__att_block_max_q8_check(out, ldo, qt, ldq, qs, kt, ldk, ks, nq, bk, Tk, R);

        if (r < 0 || nq == 0 || Tk == 0)
                return r;
        for (size_t i = 0; i < nq; i++)
                for (size_t b = 0; b * bk < Tk; b++) {
                        int32_t m = INT32_MIN;
                        for (size_t t = 0; t < bk && b * bk + t < Tk; t++) {
                                int32_t d = 0;
                                for (size_t c = 0; c < R; c++)
                                        d += qt[i * ldq + c] *
                                             ((int32_t) kt[((c / 4) * bk + t) * ldk + 4 * b + c % 4] - 128);
                                m = d > m ? d : m;
                        }
                        const float p = qs[i] * (ks[b] * (float) m);
                        out[i * ldo + b] = p == 0.0f ? 0.0f : p; /* one zero, +0 */
                }
        return 0;
}

/* The larger of M and the largest |x[c]|, c < R, a NaN left out (it is not >). */
static float ref_q8_absmax(const float *x, size_t R, float M) {
        for (size_t c = 0; c < R; c++) {
                const float a = fabsf(x[c]);
                M = a > M ? a : M;
        }
        return M;
}

/* p (a component times its factor, rounded to fp32) to its byte value: halves away from 0, each
 * step in fp32; a NaN (x NaN, or inf * 0) is 0. */
static int ref_q8_round(float p) {
        return p == p ? (int) (p + (p >= 0 ? 0.5f : -0.5f)) : 0;
}

int dsa__att_keys_q8_check(const uint8_t *kt, size_t ldk, const float *ks, const float *kp, size_t ldp, size_t n,
                           size_t bk, size_t R) {
        if (bk == 0 || R == 0 || R > DSA_ATT_MAX_RANK_LR)
                return -EINVAL;
        if (n == 0)
                return 0;
        if (!kt || !ks || !kp || (n > 1 && ldp < R) || ((R > 4 || bk > 1) && ldk < 4 * ((n + bk - 1) / bk)))
                return -EINVAL;
        return 0;
}

int dsa__attention_keys_lowrank_q8_ref(uint8_t *kt, size_t ldk, float *ks, const float *kp, size_t ldp, size_t n,
                                       size_t bk, size_t R) {
        const size_t R4 = (R + 3) / 4 * 4;
        int r = dsa__att_keys_q8_check(kt, ldk, ks, kp, ldp, n, bk, R);

        if (r < 0 || n == 0)
                return r;
        for (size_t b = 0; b * bk < n; b++) {
                const size_t j0 = b * bk, j1 = n - j0 < bk ? n : j0 + bk;
                float M = 0;
                for (size_t j = j0; j < j1; j++)
                        M = ref_q8_absmax(kp + j * ldp, R, M);
                const float inv = dsa__att_q8_inv(127.0f, M);
                ks[b] = dsa__att_q8_scale(inv);
                for (size_t j = j0; j < j1; j++)
                        for (size_t c = 0; c < R4; c++)
                                kt[((c / 4) * bk + j - j0) * ldk + 4 * b + c % 4] =
                                        (uint8_t) (128 + ref_q8_round(c < R ? kp[j * ldp + c] * inv : 0.0f));
        }
        return 0;
}

int dsa__att_rows_q8_check(const int8_t *qt, size_t ldq, const float *qs, const float *p, size_t ldp, size_t n,
                           size_t R) {
        if (R == 0 || R > DSA_ATT_MAX_RANK_LR)
                return -EINVAL;
        if (n == 0)
                return 0;
        if (!qt || !qs || !p || (n > 1 && (ldp < R || ldq < (R + 3) / 4 * 4)))
                return -EINVAL;
        return 0;
}

int dsa__attention_rows_lowrank_q8_ref(int8_t *qt, size_t ldq, float *qs, const float *p, size_t ldp, size_t n,
                                       size_t R) {
        const size_t R4 = (R + 3) / 4 * 4;
        int r = dsa__att_rows_q8_check(qt, ldq, qs, p, ldp, n, R);

        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                const float *x = p + i * ldp;
                const float inv = dsa__att_q8_inv(63.0f, ref_q8_absmax(x, R, 0.0f));
                qs[i] = dsa__att_q8_scale(inv);
                for (size_t c = 0; c < R4; c++)
                        qt[i * ldq + c] = (int8_t) ref_q8_round(c < R ? x[c] * inv : 0.0f);
        }
        return 0;
}

static const struct dsa_attention_kernels table_ref = {
        .isa = DSA_ISA_REF,
        .name = "ref",
        .blocks_f32 = dsa__attention_blocks_f32_ref,
        .block_mass_f32 = dsa__attention_block_mass_f32_ref,
        .linear_f32 = dsa__attention_linear_f32_ref,
        .block_max_lowrank_q8 = dsa__attention_block_max_lowrank_q8_ref,
        .keys_lowrank_q8 = dsa__attention_keys_lowrank_q8_ref,
        .rows_lowrank_q8 = dsa__attention_rows_lowrank_q8_ref,
        .pack_kv_f32 = dsa__attention_pack_kv_f32_ref,
        .pack_kv_rows_f32 = dsa__attention_pack_kv_rows_f32_ref,
        .blocks_packed_f32 = dsa__attention_blocks_packed_f32_ref,
        .pool_blocks_f32 = dsa__attention_pool_blocks_f32_ref,
};

#if DSA_HAVE_X86
static const struct dsa_attention_kernels table_avx2 = {
        .isa = DSA_ISA_AVX2,
        .name = "avx2",
        .blocks_f32 = dsa__attention_blocks_f32_avx2,
        .block_mass_f32 = dsa__attention_block_mass_f32_avx2,
        .linear_f32 = dsa__attention_linear_f32_avx2,
        .block_max_lowrank_q8 = dsa__attention_block_max_lowrank_q8_avx2,
        .keys_lowrank_q8 = dsa__attention_keys_lowrank_q8_avx2,
        .rows_lowrank_q8 = dsa__attention_rows_lowrank_q8_avx2,
        .pack_kv_f32 = dsa__attention_pack_kv_f32_avx2,
        .pack_kv_rows_f32 = dsa__attention_pack_kv_rows_f32_avx2,
        .blocks_packed_f32 = dsa__attention_blocks_packed_f32_avx2,
        .pool_blocks_f32 = dsa__attention_pool_blocks_f32_avx2,
};

static const struct dsa_attention_kernels table_avx512 = {
        .isa = DSA_ISA_AVX512,
        .name = "avx512",
        .blocks_f32 = dsa__attention_blocks_f32_avx512,
        .block_mass_f32 = dsa__attention_block_mass_f32_avx512,
        .linear_f32 = dsa__attention_linear_f32_avx512,
        .block_max_lowrank_q8 = dsa__attention_block_max_lowrank_q8_avx512,
        .keys_lowrank_q8 = dsa__attention_keys_lowrank_q8_avx512,
        .rows_lowrank_q8 = dsa__attention_rows_lowrank_q8_avx512,
        .pack_kv_f32 = dsa__attention_pack_kv_f32_avx512,
        .pack_kv_rows_f32 = dsa__attention_pack_kv_rows_f32_avx512,
        .blocks_packed_f32 = dsa__attention_blocks_packed_f32_avx512,
        .pool_blocks_f32 = dsa__attention_pool_blocks_f32_avx512,
};
#endif

const struct dsa_attention_kernels *dsa_attention_kernels_for(enum dsa_isa isa) {
        if ((unsigned) isa >= _DSA_ISA_MAX || !dsa_kernels_for(isa))
                return NULL;
        switch (isa) {
        case DSA_ISA_REF:
                return &table_ref;
#if DSA_HAVE_X86
        case DSA_ISA_AVX2:
                return &table_avx2;
        case DSA_ISA_AVX512:
                return &table_avx512;
#endif
        default:
                return NULL;
        }
}

const struct dsa_attention_kernels *dsa_attention_kernels(void) {
        static const struct dsa_attention_kernels *best; /* races write the same value */
        const struct dsa_attention_kernels *t = __atomic_load_n(&best, __ATOMIC_RELAXED);

        if (!t) {
                t = dsa_attention_kernels_for(dsa_kernels()->isa);
                __atomic_store_n(&best, t, __ATOMIC_RELAXED);
        }
        return t;
}
