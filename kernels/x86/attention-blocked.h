/* Fused attention as two small GEMMs on the packed-GEMM microkernels, shared by x86/avx2.c and
 * x86/avx512.c (one copy: each passes its own panel microkernel with its panel width NR and row
 * tile MR, and its own softmax row). For one (batch row, head):
 *
 *   1. The valid keys' indices go to idx (masked keys are left out entirely, so their weight is
 *      exactly 0 and they cost nothing); with no valid key, every key, with uniform weights.
 *   2. K^T of the valid keys, times scale, is packed into NR-wide panels (HS rows of NR keys
 *      each, the last panel zero-filled), and V of the valid keys into NR-column panels (tv rows
 *      of NR floats each): the packed-GEMM layout, so the panel microkernel runs both products.
 *   3. Per block of qb query rows: the (qb, tv) score tile S = Q K^T through the microkernel
 *      (register-blocked MR x NR: each packed K value loaded once serves MR queries), each row's
 *      softmax in place, then out = S V through the microkernel again (each V value loaded once
 *      serves MR query rows).
 *
 * qb keeps the score tile at ~16 KiB, in L1 between the two products. All loads of q, k and v
 * read exactly HS values per row (masked tails), and out is written in its HS columns only.
 * The packing uses ymm (AVX2) instructions, valid in both files. Include only from files
 * compiled with -mavx2 -mfma. */
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "../kernels-internal.h"

/* Bytes of score tile per block, see above. */
#define ATT_TILE_BYTES 16384

/* Lanes [0, n) set for n in [0, 8]. */
static const int32_t att_tail_table[16] = { -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0 };

static inline __m256i att_mask8(size_t n) {
        return _mm256_loadu_si256((const __m256i *) (att_tail_table + 8 - n));
}

static inline size_t att_round_up(size_t n, size_t m) {
        return (n + m - 1) / m * m;
}

/* r[0..7] rows of 8 -> r[d] = (r0[d], ..., r7[d]). */
static inline __attribute__((always_inline)) void att_transpose8(__m256 r[8]) {
        __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        /* s0 = a0 b0 c0 d0 | a4 b4 c4 d4, s1 = a1.. | a5.., s2 = a2.. | a6.., s3 = a3.. | a7.. */
        __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
        __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
        __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
        __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
        __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
        __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
        __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
        __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));

        r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
        r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
        r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
        r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
        r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
        r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
        r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
        r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* kt: ceil(tv/NR) panels of HS rows of NR floats, kt[p][d][l] = scale * k[idx[p*NR + l]][d],
 * keys past tv 0. Eight keys at a time through an 8x8 transpose; a group of n < 8 keys loads
 * its last key again into the missing rows and zeroes those lanes after the transpose. */
static inline void att_pack_keys(float *kt, const float *k, size_t ldk, const size_t *idx, size_t tv,
                                 size_t HS, float scale, size_t NR) {
        const size_t rem = HS % 8, body = HS - rem, tp = att_round_up(tv, NR);
        const __m256i m = att_mask8(rem);
        const __m256 vs = _mm256_set1_ps(scale), zero = _mm256_setzero_ps();

        for (size_t j0 = 0; j0 < tv; j0 += 8) {
                const size_t n = tv - j0 < 8 ? tv - j0 : 8;
                const __m256 keep = _mm256_castsi256_ps(att_mask8(n));
                float *dst = kt + (j0 / NR) * HS * NR + j0 % NR;
                const float *rows[8];
                __m256 r[8];

                for (size_t i = 0; i < 8; i++)
                        rows[i] = k + idx[j0 + (i < n ? i : n - 1)] * ldk;
                for (size_t d = 0; d < body; d += 8) {
                        for (int i = 0; i < 8; i++)
                                r[i] = _mm256_loadu_ps(rows[i] + d);
                        att_transpose8(r);
                        for (int i = 0; i < 8; i++)
                                _mm256_store_ps(dst + (d + i) * NR, _mm256_and_ps(_mm256_mul_ps(r[i], vs), keep));
                }
                if (rem) {
                        for (int i = 0; i < 8; i++)
                                r[i] = _mm256_maskload_ps(rows[i] + body, m);
                        att_transpose8(r);
                        for (size_t i = 0; i < rem; i++)
                                _mm256_store_ps(dst + (body + i) * NR, _mm256_and_ps(_mm256_mul_ps(r[i], vs), keep));
                }
        }
        /* the last panel's groups of 8 past the last key */
        for (size_t j0 = att_round_up(tv, 8); j0 < tp; j0 += 8) {
                float *dst = kt + (j0 / NR) * HS * NR + j0 % NR;
                for (size_t d = 0; d < HS; d++)
                        _mm256_store_ps(dst + d * NR, zero);
        }
}

/* vp: ceil(HS/NR) panels of pst rows of NR floats, vp[p][j][l] = v[idx[j]][p*NR + l] for j < tv,
 * columns past HS 0 (rows [tv, pst) untouched). */
static inline void att_pack_values_strided(float *vp, size_t pst, const float *v, size_t ldv, const size_t *idx,
                                           size_t tv, size_t HS, size_t NR) {
        const size_t hp = att_round_up(HS, NR), rem = HS % 8, body = HS - rem;
        const __m256i m = att_mask8(rem);

        for (size_t j = 0; j < tv; j++) {
                const float *src = v + idx[j] * ldv;
                float *dst = vp + j * NR;
                size_t c = 0;

                for (; c < body; c += 8)
                        _mm256_store_ps(dst + (c / NR) * pst * NR + c % NR, _mm256_loadu_ps(src + c));
                if (rem) {
                        _mm256_store_ps(dst + (c / NR) * pst * NR + c % NR, _mm256_maskload_ps(src + c, m));
                        c += 8;
                }
                for (; c < hp; c += 8)
                        _mm256_store_ps(dst + (c / NR) * pst * NR + c % NR, _mm256_setzero_ps());
        }
}

/* vp: ceil(HS/NR) panels of tv rows of NR floats, vp[p][j][l] = v[idx[j]][p*NR + l], columns
 * past HS 0. */
static inline void att_pack_values(float *vp, const float *v, size_t ldv, const size_t *idx, size_t tv,
                                   size_t HS, size_t NR) {
        att_pack_values_strided(vp, tv, v, ldv, idx, tv, HS, NR);
}

/* See kernels.h for the contract and the top of this file for the method. scratch holds, from
 * its first 64-byte boundary: idx (T size_t, rounded up to 64 bytes), kt (roundup(T, NR) x HS),
 * vp (roundup(HS, NR) x T), the score tile (qb x roundup(T, NR)); dsa_attention_scratch()
 * counts it for NR <= DSA__ATTENTION_NR_MAX and qb <= DSA__ATTENTION_QB_MAX. */
static inline __attribute__((always_inline)) void
attention_blocked(float *out, size_t ldo, const float *q, size_t ldq, const float *k, size_t ldk,
                  const float *v, size_t ldv, const uint8_t *valid, size_t T, size_t HS, float scale,
                  float *probs, float *scratch, const size_t NR, const size_t MR,
                  dsa__gemm_panel_f32_fn *panel, void (*softmax_row)(float *, size_t)) {
        size_t *idx = (size_t *) (((uintptr_t) scratch + 63) & ~(uintptr_t) 63);
        float *kt = (float *) idx + att_round_up(2 * T, 16);
        float *vp = kt + att_round_up(T, NR) * HS;
        float *s = vp + att_round_up(HS, NR) * T;
        size_t tv = 0;

        _Static_assert(sizeof(size_t) <= 2 * sizeof(float), "idx takes 2 floats of scratch a key");
        if (T == 0)
                return;
        for (size_t j = 0; j < T; j++)
                if (!valid || valid[j])
                        idx[tv++] = j;

        /* No valid key: PyTorch's row of equal huge negative scores, uniform over all T keys. */
        const bool uniform = tv == 0;
        if (uniform)
                for (tv = 0; tv < T; tv++)
                        idx[tv] = tv;

        const size_t tp = att_round_up(tv, NR);
        size_t qb = ATT_TILE_BYTES / (tp * sizeof(float)) / MR * MR;
        qb = qb < MR ? MR : qb > 4 * MR ? 4 * MR : qb;

        if (!uniform)
                att_pack_keys(kt, k, ldk, idx, tv, HS, scale, NR);
        else
                for (size_t r = 0; r < qb; r++)
                        for (size_t j = 0; j < tv; j++)
                                s[r * tp + j] = 1.0f / (float) T;
        att_pack_values(vp, v, ldv, idx, tv, HS, NR);

        for (size_t i0 = 0; i0 < T; i0 += qb) {
                const size_t nq = T - i0 < qb ? T - i0 : qb;

                if (!uniform) {
                        for (size_t p = 0; p < tp; p += NR)
                                panel(s + p, tp, q + i0 * ldq, ldq, kt + p * HS, nq, HS, NR, NULL, true,
                                      DSA_EPILOGUE_NONE);
                        for (size_t r = 0; r < nq; r++)
                                softmax_row(s + r * tp, tv);
                }
                if (probs)
                        for (size_t r = 0; r < nq; r++) {
                                float *pr = probs + (i0 + r) * T;
                                if (tv == T) {
                                        memcpy(pr, s + r * tp, T * sizeof(float));
                                        continue;
                                }
                                memset(pr, 0, T * sizeof(float));
                                for (size_t j = 0; j < tv; j++)
                                        pr[idx[j]] = s[r * tp + j];
                        }
                for (size_t c = 0; c < HS; c += NR)
                        panel(out + i0 * ldo + c, ldo, s, tp, vp + c * tv, nq, tv,
                              HS - c < NR ? HS - c : NR, NULL, true, DSA_EPILOGUE_NONE);
        }
}
