/* The AVX2 + FMA long-context attention kernels (attention.h): the row operations of
 * x86/attention-stream.h on ymm vectors, and its drivers on the 6 x 16 GEMM microkernel
 * (dsa__gemm_panel_f32_avx2). Ragged row tails use masked loads and stores (vmaskmovps), so no
 * lane past a row's n is read or written; exp is vecmath-avx2.h's. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "../attention.h"
#include "vecmath-avx2.h"

#define ATT_AI_ROW static inline __attribute__((always_inline))

ATT_AI_ROW __m256 mask_ps(size_t n) {
        return _mm256_castsi256_ps(tail_mask(n));
}

ATT_AI_ROW float att_row_max(const float *s, size_t n) {
        __m256 mx = _mm256_set1_ps(-INFINITY);
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + j));
        if (j < n) /* masked lanes load 0: replace them by -inf */
                mx = _mm256_max_ps(mx, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY),
                                                        _mm256_maskload_ps(s + j, tail_mask(n - j)),
                                                        mask_ps(n - j)));
        return hmax(mx);
}

ATT_AI_ROW float att_row_exp(float *s, size_t ncols, size_t n, float m) {
        const __m256 vm = _mm256_set1_ps(m);
        __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
        size_t j = 0;

        for (; j + 16 <= n; j += 16) {
                const __m256 e0 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
                const __m256 e1 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j + 8), vm));
                _mm256_storeu_ps(s + j, e0);
                _mm256_storeu_ps(s + j + 8, e1);
                sum0 = _mm256_add_ps(sum0, e0);
                sum1 = _mm256_add_ps(sum1, e1);
        }
        for (; j < n; j += 8) {
                const size_t r = n - j < 8 ? n - j : 8;
                const __m256i mi = tail_mask(r);
                /* lanes past n: exp(0 - m) may be inf; the and makes them 0 */
                const __m256 e = _mm256_and_ps(exp_ps(_mm256_sub_ps(_mm256_maskload_ps(s + j, mi), vm)),
                                               _mm256_castsi256_ps(mi));
                _mm256_maskstore_ps(s + j, tail_mask(ncols - j < 8 ? ncols - j : 8), e);
                sum0 = _mm256_add_ps(sum0, e);
        }
        for (; j < ncols; j += 8)
                _mm256_maskstore_ps(s + j, tail_mask(ncols - j < 8 ? ncols - j : 8), _mm256_setzero_ps());
        return hsum(_mm256_add_ps(sum0, sum1));
}

ATT_AI_ROW float att_row_exp_sum(const float *s, size_t n, float m) {
        const __m256 vm = _mm256_set1_ps(m);
        __m256 sum = _mm256_setzero_ps();
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                sum = _mm256_add_ps(sum, exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm)));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                sum = _mm256_add_ps(sum, _mm256_and_ps(exp_ps(_mm256_sub_ps(_mm256_maskload_ps(s + j, mi), vm)),
                                                       _mm256_castsi256_ps(mi)));
        }
        return hsum(sum);
}

ATT_AI_ROW float att_row_mask_sum(float *a, size_t ncols, size_t n) {
        __m256 sum = _mm256_setzero_ps();
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                sum = _mm256_add_ps(sum, _mm256_loadu_ps(a + j));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                const __m256 x = _mm256_maskload_ps(a + j, mi); /* 0 past n */
                sum = _mm256_add_ps(sum, x);
                _mm256_maskstore_ps(a + j, tail_mask(ncols - j < 8 ? ncols - j : 8), x);
                j += 8;
        }
        for (; j < ncols; j += 8)
                _mm256_maskstore_ps(a + j, tail_mask(ncols - j < 8 ? ncols - j : 8), _mm256_setzero_ps());
        return hsum(sum);
}

ATT_AI_ROW void att_row_scale(float *x, size_t n, float a) {
        const __m256 va = _mm256_set1_ps(a);
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), va));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                _mm256_maskstore_ps(x + j, mi, _mm256_mul_ps(_mm256_maskload_ps(x + j, mi), va));
        }
}

/* elu(x) + 1: x + 1 above 0, e^x at or below (exp of min(x, 0), so no lane overflows). */
ATT_AI_ROW __m256 phi_ps(__m256 x) {
        const __m256 pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ);
        return _mm256_blendv_ps(exp_ps(_mm256_min_ps(x, _mm256_setzero_ps())),
                                _mm256_add_ps(x, _mm256_set1_ps(1.0f)), pos);
}

ATT_AI_ROW void att_row_phi(float *dst, const float *src, size_t n) {
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                _mm256_storeu_ps(dst + j, phi_ps(_mm256_loadu_ps(src + j)));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                _mm256_maskstore_ps(dst + j, mi, phi_ps(_mm256_maskload_ps(src + j, mi)));
        }
}

ATT_AI_ROW void att_row_add(float *z, const float *x, size_t n) {
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                _mm256_storeu_ps(z + j, _mm256_add_ps(_mm256_loadu_ps(z + j), _mm256_loadu_ps(x + j)));
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                _mm256_maskstore_ps(z + j, mi, _mm256_add_ps(_mm256_maskload_ps(z + j, mi),
                                                             _mm256_maskload_ps(x + j, mi)));
        }
}

ATT_AI_ROW float att_dot(const float *a, const float *b, size_t n) {
        __m256 sum = _mm256_setzero_ps();
        size_t j = 0;

        for (; j + 8 <= n; j += 8)
                sum = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), sum);
        if (j < n) {
                const __m256i mi = tail_mask(n - j);
                sum = _mm256_fmadd_ps(_mm256_maskload_ps(a + j, mi), _mm256_maskload_ps(b + j, mi), sum);
        }
        return hsum(sum);
}

/* out[b] = qs * (ks[b] * (float) (max of s[b*bk, min(b*bk + bk, n)) - c)) for b < ceil(n / bk), a
 * zero made +0 (a select: -ffp-contract may fuse an added +0 into the product), one reduction a
 * block. */
ATT_AI_ROW void att_block_maxes(float *out, const int32_t *s, size_t n, size_t bk, int32_t c, const float *ks,
                                float qs) {
        const __m256i lowest = _mm256_set1_epi32(INT32_MIN);

        for (size_t b = 0; b * bk < n; b++) {
                const size_t j1 = n - b * bk < bk ? n : b * bk + bk;
                __m256i mx = lowest;
                for (size_t j = b * bk; j < j1; j += 8) {
                        const __m256i m = tail_mask(j1 - j < 8 ? j1 - j : 8);
                        mx = _mm256_max_epi32(mx, _mm256_blendv_epi8(lowest, _mm256_maskload_epi32(s + j, m), m));
                }
                __m128i h = _mm_max_epi32(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
                h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0x4E));
                h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0xB1));
                const float p = qs * (ks[b] * (float) (_mm_cvtsi128_si32(h) - c));
                out[b] = p == 0.0f ? 0.0f : p;
        }
}

#define ATT_LR_STEP 16 /* keys a step of att_lr_scores_q8, folded to 8 lanes */

/* The 8-bit scores of 4 rows at once (att_lr_scores_q8 of x86/attention-stream.h): vpmaddubsw
 * multiplies a key's unsigned bytes by the row's signed ones and adds pairs into 16 bits (at most
 * 2 * 255 * 63, no saturation), vpmaddwd against ones adds the two pairs into the key's int32
 * lane; 16 keys (two 32-byte loads of four components each) a step, each load serving the four
 * rows, the last keys under a lane mask. */
static void att_lr_scores_q8(int32_t *s, size_t lds, const int8_t *const q[4], const uint8_t *kt, size_t ldk,
                             size_t j0, size_t n, size_t R, bool fold) {
        const __m256i ones = _mm256_set1_epi16(1), lowest = _mm256_set1_epi32(INT32_MIN);
        int32_t qw[4][DSA_ATT_MAX_RANK_LR / 4];

        for (size_t a = 0; a < 4; a++)
                memcpy(qw[a], q[a], R);
        for (size_t j = 0; j < n; j += 16) {
                const __m256i m0 = tail_mask(n - j < 8 ? n - j : 8), m1 = tail_mask(n - j > 16 ? 8 : n - j > 8 ? n - j - 8 : 0);
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for (size_t g = 0; g < R / 4; g++) {
                        const int *kg = (const int *) (kt + g * ldk + 4 * (j0 + j));
                        const __m256i k0 = _mm256_maskload_epi32(kg, m0), k1 = _mm256_maskload_epi32(kg + 8, m1);
                        __m256i w = _mm256_set1_epi32(qw[0][g]);
                        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(k0, w), ones));
                        b0 = _mm256_add_epi32(b0, _mm256_madd_epi16(_mm256_maddubs_epi16(k1, w), ones));
                        w = _mm256_set1_epi32(qw[1][g]);
                        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_maddubs_epi16(k0, w), ones));
                        b1 = _mm256_add_epi32(b1, _mm256_madd_epi16(_mm256_maddubs_epi16(k1, w), ones));
                        w = _mm256_set1_epi32(qw[2][g]);
                        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_maddubs_epi16(k0, w), ones));
                        b2 = _mm256_add_epi32(b2, _mm256_madd_epi16(_mm256_maddubs_epi16(k1, w), ones));
                        w = _mm256_set1_epi32(qw[3][g]);
                        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_maddubs_epi16(k0, w), ones));
                        b3 = _mm256_add_epi32(b3, _mm256_madd_epi16(_mm256_maddubs_epi16(k1, w), ones));
                }
#define Q8_STORE(a, x, y)                                                                                       \
        do {                                                                                                    \
                const __m256i lo = _mm256_blendv_epi8(lowest, x, m0), hi = _mm256_blendv_epi8(lowest, y, m1);   \
                if (fold)                                                                                       \
                        _mm256_storeu_si256((__m256i *) (s + a * lds + j / 2), _mm256_max_epi32(lo, hi));       \
                else {                                                                                          \
                        _mm256_maskstore_epi32(s + a * lds + j, m0, lo);                                        \
                        _mm256_maskstore_epi32(s + a * lds + j + 8, m1, hi);                                    \
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

#define NR DSA__GEMM_NR_AVX2
#define PANEL dsa__gemm_panel_f32_avx2

int dsa__attention_blocks_f32_avx2(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                                   size_t ldk, const float *v, size_t ldv, size_t nq, size_t pos0,
                                   const uint32_t *blocks, size_t nb, size_t bk, size_t Tk,
                                   size_t HS, float scale, bool causal, float *ret_lse,
                                   float *scratch) {
        return att_stream(out, ldo, q, ldq, k, ldk, v, ldv, false, NULL, NULL, NULL, nq, pos0, blocks, nb, bk, Tk, HS,
                          scale, causal, ret_lse, scratch, NR, PANEL);
}

int dsa__attention_block_mass_f32_avx2(float *mass, const float *q, size_t ldq, const float *k,
                                       size_t ldk, size_t nq, size_t pos0, const uint32_t *blocks,
                                       size_t nb, size_t bk, size_t Tk, size_t HS, float scale,
                                       bool causal, const float *lse, float *scratch) {
        return att_stream_block_mass(mass, q, ldq, k, ldk, nq, pos0, blocks, nb, bk, Tk, HS, scale,
                                     causal, lse, scratch, NR, PANEL);
}

int dsa__attention_linear_f32_avx2(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                                   size_t ldk, const float *v, size_t ldv, size_t T, size_t HS,
                                   bool causal, float *scratch) {
        return att_linear(out, ldo, q, ldq, k, ldk, v, ldv, T, HS, causal, scratch, NR, PANEL);
}

int dsa__attention_pack_kv_f32_avx2(float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                                    size_t HS, float scale) {
        return att_pack_kv(kv, k, ldk, v, ldv, Tk, 0, Tk, HS, scale, NR);
}

int dsa__attention_pack_kv_rows_f32_avx2(float *kv, const float *k, size_t ldk, const float *v, size_t ldv,
                                         size_t Tk, size_t j0, size_t j1, size_t HS, float scale) {
        return att_pack_kv(kv, k, ldk, v, ldv, Tk, j0, j1, HS, scale, NR);
}

int dsa__attention_blocks_packed_f32_avx2(float *out, size_t ldo, const float *q, size_t ldq, size_t nq,
                                          size_t pos0, const float *kv, const float *bias, const uint32_t *blocks,
                                          size_t nb, size_t bk, size_t Tk, size_t HS, bool causal,
                                          const struct dsa_attention_extra *extra, float *ret_lse, float *scratch) {
        return att_stream(out, ldo, q, ldq, NULL, 0, NULL, 0, true, kv, bias, extra, nq, pos0, blocks, nb, bk, Tk, HS,
                          1.0f, causal, ret_lse, scratch, NR, PANEL);
}

int dsa__attention_block_max_lowrank_q8_avx2(float *out, size_t ldo, const int8_t *qt, size_t ldq, const float *qs,
                                             const uint8_t *kt, size_t ldk, const float *ks, size_t nq, size_t bk,
                                             size_t Tk, size_t R) {
        return att_block_max_lowrank_q8(out, ldo, qt, ldq, qs, kt, ldk, ks, nq, bk, Tk, R);
}
