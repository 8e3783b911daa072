/* The AVX-512 long-context attention kernels (attention.h): the row operations of
 * x86/attention-stream.h on zmm vectors with mask registers for ragged tails (masked lanes are
 * neither read nor written), and its drivers on the 12 x 32 GEMM microkernel
 * (dsa__gemm_panel_f32_avx512). exp is vecmath-avx512.h's; the packers of attention-blocked.h
 * use ymm, also valid here. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../attention.h"
#include "vecmath-avx512.h"

#define ATT_AI_ROW static inline __attribute__((always_inline))

ATT_AI_ROW float att_row_max(const float *s, size_t n) {
        __m512 mx = _mm512_set1_ps(-INFINITY);
        size_t j = 0;

        for (; j + 16 <= n; j += 16)
                mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
        if (j < n)
                mx = _mm512_mask_max_ps(mx, tail_mask(n - j), mx, _mm512_maskz_loadu_ps(tail_mask(n - j), s + j));
        return _mm512_reduce_max_ps(mx);
}

ATT_AI_ROW float att_row_exp(float *s, size_t ncols, size_t n, float m) {
        const __m512 vm = _mm512_set1_ps(m);
        __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
        size_t j = 0;

        for (; j + 32 <= n; j += 32) {
                const __m512 e0 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
                const __m512 e1 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j + 16), vm));
                _mm512_storeu_ps(s + j, e0);
                _mm512_storeu_ps(s + j + 16, e1);
                sum0 = _mm512_add_ps(sum0, e0);
                sum1 = _mm512_add_ps(sum1, e1);
        }
        for (; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                /* lanes past n: exp(0 - m) may be inf; maskz makes them 0 */
                const __m512 e = _mm512_maskz_mov_ps(mk, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + j), vm)));
                _mm512_mask_storeu_ps(s + j, lanes(ncols - j), e);
                sum0 = _mm512_add_ps(sum0, e);
        }
        for (; j < ncols; j += 16)
                _mm512_mask_storeu_ps(s + j, lanes(ncols - j), _mm512_setzero_ps());
        return _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
}

ATT_AI_ROW float att_row_exp_sum(const float *s, size_t n, float m) {
        const __m512 vm = _mm512_set1_ps(m);
        __m512 sum = _mm512_setzero_ps();

        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mk, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + j), vm))));
        }
        return _mm512_reduce_add_ps(sum);
}

ATT_AI_ROW float att_row_mask_sum(float *a, size_t ncols, size_t n) {
        __m512 sum = _mm512_setzero_ps();

        for (size_t j = 0; j < ncols; j += 16) {
                const __m512 x = _mm512_maskz_loadu_ps(j < n ? lanes(n - j) : 0, a + j); /* 0 past n */
                sum = _mm512_add_ps(sum, x);
                _mm512_mask_storeu_ps(a + j, lanes(ncols - j), x);
        }
        return _mm512_reduce_add_ps(sum);
}

ATT_AI_ROW void att_row_scale(float *x, size_t n, float a) {
        const __m512 va = _mm512_set1_ps(a);

        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                _mm512_mask_storeu_ps(x + j, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + j), va));
        }
}

/* elu(x) + 1: x + 1 above 0, e^x at or below (exp of min(x, 0), so no lane overflows). */
ATT_AI_ROW __m512 phi_ps(__m512 x) {
        const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
        return _mm512_mask_add_ps(exp_ps(_mm512_min_ps(x, _mm512_setzero_ps())), pos, x, _mm512_set1_ps(1.0f));
}

ATT_AI_ROW void att_row_phi(float *dst, const float *src, size_t n) {
        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                _mm512_mask_storeu_ps(dst + j, mk, phi_ps(_mm512_maskz_loadu_ps(mk, src + j)));
        }
}

ATT_AI_ROW void att_row_add(float *z, const float *x, size_t n) {
        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                _mm512_mask_storeu_ps(z + j, mk, _mm512_add_ps(_mm512_maskz_loadu_ps(mk, z + j),
                                                               _mm512_maskz_loadu_ps(mk, x + j)));
        }
}

ATT_AI_ROW float att_dot(const float *a, const float *b, size_t n) {
        __m512 sum = _mm512_setzero_ps();

        for (size_t j = 0; j < n; j += 16) {
                const __mmask16 mk = lanes(n - j);
                sum = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + j), _mm512_maskz_loadu_ps(mk, b + j), sum);
        }
        return _mm512_reduce_add_ps(sum);
}

/* out[b] = qs * (ks[b] * (float) (max of s[b*bk, min(b*bk + bk, n)) - c)) for b < ceil(n / bk), a zero
 * made +0 (a select: -ffp-contract may fuse an added +0 into the product):
 * with bk a multiple of 16, each block folded to one vector, then sixteen blocks' vectors reduced
 * together (a transpose by halves: 46 shuffles and maxes for 16 maxima instead of a full
 * reduction each), lane 4j + e of the last step holding block 4e + j, and the sixteen scaled at
 * once; other bk, one reduction a block. */
ATT_AI_ROW void att_block_maxes(float *out, const int32_t *s, size_t n, size_t bk, int32_t c, const float *ks,
                                float qs) {
        const size_t nblk = (n + bk - 1) / bk;

        if (bk % 16) {
                for (size_t b = 0; b < nblk; b++) {
                        const size_t j1 = n - b * bk < bk ? n : b * bk + bk;
                        __m512i mx = _mm512_set1_epi32(INT32_MIN);
                        for (size_t j = b * bk; j < j1; j += 16)
                                mx = _mm512_mask_max_epi32(mx, lanes(j1 - j), mx,
                                                           _mm512_maskz_loadu_epi32(lanes(j1 - j), s + j));
                        const float p = qs * (ks[b] * (float) (_mm512_reduce_max_epi32(mx) - c));
                        out[b] = p == 0.0f ? 0.0f : p;
                }
                return;
        }
        const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        const __m512i lowest = _mm512_set1_epi32(INT32_MIN);
#define MAX_PS(a, b) _mm512_castsi512_ps(_mm512_max_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)))
        for (size_t b0 = 0; b0 < nblk; b0 += 16) {
                const size_t m = nblk - b0 < 16 ? nblk - b0 : 16;
                __m512 v[16], w[8], x[4], y[2]; /* int32 lanes, moved by the float shuffles */

                for (size_t t = 0; t < 16; t++) {
                        __m512i mx = lowest;
                        if (t < m) {
                                const size_t j0 = (b0 + t) * bk, j1 = j0 + bk < n ? j0 + bk : n;
                                size_t j = j0;
                                for (; j + 16 <= j1; j += 16)
                                        mx = _mm512_max_epi32(mx, _mm512_loadu_si512(s + j));
                                if (j < j1)
                                        mx = _mm512_mask_max_epi32(mx, lanes(j1 - j), mx,
                                                                   _mm512_maskz_loadu_epi32(lanes(j1 - j), s + j));
                        }
                        v[t] = _mm512_castsi512_ps(mx);
                }
                for (int i = 0; i < 8; i++) /* 128-bit lanes 0-1: block 2i's partials, 2-3: 2i+1's */
                        w[i] = MAX_PS(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                                      _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
                for (int i = 0; i < 4; i++) /* lane j: block 4i + j's four partials */
                        x[i] = MAX_PS(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                                      _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
                for (int i = 0; i < 2; i++) /* lane j: elements 0-1 block 8i + j, 2-3 block 8i + 4 + j */
                        y[i] = MAX_PS(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0x44),
                                      _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0xEE));
                const __m512 z = MAX_PS(_mm512_shuffle_ps(y[0], y[1], 0x88), _mm512_shuffle_ps(y[0], y[1], 0xDD));
                const __m512i mi = _mm512_sub_epi32(_mm512_permutexvar_epi32(order, _mm512_castps_si512(z)),
                                                    _mm512_set1_epi32(c));
                const __m512 r = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes(m), ks + b0), _mm512_cvtepi32_ps(mi));
                const __m512 p = _mm512_mul_ps(_mm512_set1_ps(qs), r);
                _mm512_mask_storeu_ps(out + b0, lanes(m),
                                      _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(p, _mm512_setzero_ps(), _CMP_NEQ_UQ), p));
        }
#undef MAX_PS
}

#define ATT_LR_STEP 32 /* keys a step of att_lr_scores_q8, folded to 16 lanes */

/* The 8-bit scores of 4 rows at once (att_lr_scores_q8 of x86/attention-stream.h): vpdpbusd sums
 * four byte products per key into its int32 lane, so a 64-byte load is 16 keys' group of four
 * components, and each serves the four rows; 32 keys a step, then 16 under a mask. Needs VNNI:
 * dsa__attention_block_max_lowrank_q8_avx512 sends CPUs without it to the AVX2 variant. */
__attribute__((target("avx512vnni"))) static void att_lr_scores_q8(int32_t *s, size_t lds, const int8_t *const q[4],
                                                                   const uint8_t *kt, size_t ldk, size_t j0,
                                                                   size_t n, size_t R, bool fold) {
        const __m512i lowest = _mm512_set1_epi32(INT32_MIN);
        int32_t qw[4][DSA_ATT_MAX_RANK_LR / 4];
        size_t j = 0;

        for (size_t a = 0; a < 4; a++)
                memcpy(qw[a], q[a], R);
        for (; j < n; j += 32) {
                const __mmask16 m0 = lanes(n - j), m1 = n - j > 16 ? lanes(n - j - 16) : 0;
                __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for (size_t g = 0; g < R / 4; g++) {
                        const uint8_t *kg = kt + g * ldk + 4 * (j0 + j);
                        const __m512i k0 = _mm512_maskz_loadu_epi32(m0, kg), k1 = _mm512_maskz_loadu_epi32(m1, kg + 64);
                        __m512i w = _mm512_set1_epi32(qw[0][g]);
                        a0 = _mm512_dpbusd_epi32(a0, k0, w), b0 = _mm512_dpbusd_epi32(b0, k1, w);
                        w = _mm512_set1_epi32(qw[1][g]);
                        a1 = _mm512_dpbusd_epi32(a1, k0, w), b1 = _mm512_dpbusd_epi32(b1, k1, w);
                        w = _mm512_set1_epi32(qw[2][g]);
                        a2 = _mm512_dpbusd_epi32(a2, k0, w), b2 = _mm512_dpbusd_epi32(b2, k1, w);
                        w = _mm512_set1_epi32(qw[3][g]);
                        a3 = _mm512_dpbusd_epi32(a3, k0, w), b3 = _mm512_dpbusd_epi32(b3, k1, w);
                }
#define Q8_STORE(a, x, y)                                                                                       \
        do {                                                                                                    \
                const __m512i lo = _mm512_mask_mov_epi32(lowest, m0, x), hi = _mm512_mask_mov_epi32(lowest, m1, y); \
                if (fold)                                                                                       \
                        _mm512_storeu_si512(s + a * lds + j / 2, _mm512_max_epi32(lo, hi));                     \
                else {                                                                                          \
                        _mm512_mask_storeu_epi32(s + a * lds + j, m0, lo);                                      \
                        _mm512_mask_storeu_epi32(s + a * lds + j + 16, m1, hi);                                 \
                }                                                                                               \
        } while (0)
                Q8_STORE(0, a0, b0);
                Q8_STORE(1, a1, b1);
                Q8_STORE(2, a2, b2);
                Q8_STORE(3, a3, b3);
#undef Q8_STORE
        }
}

#include "attention-stream.h"

#define NR DSA__GEMM_NR_AVX512
#define PANEL dsa__gemm_panel_f32_avx512

int dsa__attention_blocks_f32_avx512(float *out, size_t ldo, const float *q, size_t ldq,
                                     const float *k, size_t ldk, const float *v, size_t ldv,
                                     size_t nq, size_t pos0, const uint32_t *blocks, size_t nb,
                                     size_t bk, size_t Tk, size_t HS, float scale, bool causal,
                                     float *ret_lse, float *scratch) {
        return att_stream(out, ldo, q, ldq, k, ldk, v, ldv, false, NULL, NULL, NULL, nq, pos0, blocks, nb, bk, Tk, HS,
                          scale, causal, ret_lse, scratch, NR, PANEL);
}

int dsa__attention_block_mass_f32_avx512(float *mass, const float *q, size_t ldq, const float *k,
                                         size_t ldk, size_t nq, size_t pos0,
                                         const uint32_t *blocks, size_t nb, size_t bk, size_t Tk,
                                         size_t HS, float scale, bool causal, const float *lse,
                                         float *scratch) {
        return att_stream_block_mass(mass, q, ldq, k, ldk, nq, pos0, blocks, nb, bk, Tk, HS, scale,
                                     causal, lse, scratch, NR, PANEL);
}

int dsa__attention_linear_f32_avx512(float *out, size_t ldo, const float *q, size_t ldq,
                                     const float *k, size_t ldk, const float *v, size_t ldv,
                                     size_t T, size_t HS, bool causal, float *scratch) {
        return att_linear(out, ldo, q, ldq, k, ldk, v, ldv, T, HS, causal, scratch, NR, PANEL);
}

int dsa__attention_pack_kv_f32_avx512(float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                                      size_t HS, float scale) {
        return att_pack_kv(kv, k, ldk, v, ldv, Tk, 0, Tk, HS, scale, NR);
}

int dsa__attention_pack_kv_rows_f32_avx512(float *kv, const float *k, size_t ldk, const float *v, size_t ldv,
                                           size_t Tk, size_t j0, size_t j1, size_t HS, float scale) {
        return att_pack_kv(kv, k, ldk, v, ldv, Tk, j0, j1, HS, scale, NR);
}

int dsa__attention_blocks_packed_f32_avx512(float *out, size_t ldo, const float *q, size_t ldq, size_t nq,
                                            size_t pos0, const float *kv, const float *bias, const uint32_t *blocks,
                                            size_t nb, size_t bk, size_t Tk, size_t HS, bool causal,
                                            const struct dsa_attention_extra *extra, float *ret_lse, float *scratch) {
        return att_stream(out, ldo, q, ldq, NULL, 0, NULL, 0, true, kv, bias, extra, nq, pos0, blocks, nb, bk, Tk, HS,
                          1.0f, causal, ret_lse, scratch, NR, PANEL);
}

int dsa__attention_block_max_lowrank_q8_avx512(float *out, size_t ldo, const int8_t *qt, size_t ldq, const float *qs,
                                               const uint8_t *kt, size_t ldk, const float *ks, size_t nq, size_t bk,
                                               size_t Tk, size_t R) {
        if (!__builtin_cpu_supports("avx512vnni")) /* AVX-512 without VNNI: the AVX2 bytes */
                return dsa__attention_block_max_lowrank_q8_avx2(out, ldo, qt, ldq, qs, kt, ldk, ks, nq, bk, Tk, R);
        return att_block_max_lowrank_q8(out, ldo, qt, ldq, qs, kt, ldk, ks, nq, bk, Tk, R);
}
