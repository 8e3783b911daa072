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

#define ATT_LR_LANES 8 /* key blocks a vector of att_lr_block_max_q8 */
#define ATT_LR_TARGET /* att_lr_block_max_q8's (attention-stream.h): the file's own */

/* block_max_lowrank_q8 of rows (<= 4) rows over blocks [0, nbc) of kt (nbc <= 8, kt, ks and out
 * from the chunk's first block), the chunk's last block holding last keys: vpmaddubsw multiplies
 * key t's unsigned bytes of 8 blocks by the row's signed ones and adds pairs into 16 bits (at most
 * 2 * 255 * 63, no saturation), vpmaddwd against ones adds the two pairs into the block's int32
 * lane (a 32-byte load, serving the four rows), and each lane keeps its block's max over t. G =
 * R / 4 groups of four components: a constant for the usual ranks (att_lr_block_max_q8), the
 * groups then written out; full: a chunk of 8 whole blocks, read with plain loads (vpmaskmovd
 * costs more); the keys every block holds take a plain max, the rest a blend. */
static inline __attribute__((always_inline)) void
att_lr_block_max_q8_g(float *out, size_t ldo, const int8_t *const q[4], const int32_t c[4], const float qs[4],
                      size_t rows, const uint8_t *kt, size_t ldk, const float *ks, size_t nbc, size_t bk, size_t last,
                      const size_t G, const bool full) {
        const __m256i ones = _mm256_set1_epi16(1), all = tail_mask(nbc), cut = tail_mask(nbc - 1);
        __m256i m0 = _mm256_set1_epi32(INT32_MIN), m1 = m0, m2 = m0, m3 = m0;
        int32_t qw[4][DSA_ATT_MAX_RANK_LR / 4];
        const size_t nall = last < bk ? last : bk;

        for (size_t a = 0; a < 4; a++)
                memcpy(qw[a], q[a], 4 * G);
#define DOT(acc, a, k, g) \
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(k, _mm256_set1_epi32(qw[a][g])), ones))
#define DOT_GROUP(t, g)                                                                                    \
        if ((g) < G) {                                                                                     \
                const int *p = (const int *) (kt + ((g) * bk + (t)) * ldk);                                 \
                const __m256i k = full ? _mm256_loadu_si256((const __m256i *) p) : _mm256_maskload_epi32(p, all); \
                DOT(a0, 0, k, g), DOT(a1, 1, k, g), DOT(a2, 2, k, g), DOT(a3, 3, k, g);                    \
        }
        for (size_t t = 0; t < bk; t++) {
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                DOT_GROUP(t, 0);
                DOT_GROUP(t, 1);
                DOT_GROUP(t, 2);
                DOT_GROUP(t, 3);
                for (size_t g = 4; g < G; g++)
                        DOT_GROUP(t, g);
                if (t < nall) { /* every block of the chunk holds key t (lanes past nbc are never stored) */
                        m0 = _mm256_max_epi32(m0, a0), m1 = _mm256_max_epi32(m1, a1);
                        m2 = _mm256_max_epi32(m2, a2), m3 = _mm256_max_epi32(m3, a3);
                } else {
                        m0 = _mm256_blendv_epi8(m0, _mm256_max_epi32(m0, a0), cut);
                        m1 = _mm256_blendv_epi8(m1, _mm256_max_epi32(m1, a1), cut);
                        m2 = _mm256_blendv_epi8(m2, _mm256_max_epi32(m2, a2), cut);
                        m3 = _mm256_blendv_epi8(m3, _mm256_max_epi32(m3, a3), cut);
                }
        }
#undef DOT_GROUP
#undef DOT
        const __m256 vks = _mm256_maskload_ps(ks, all);
        const __m256i mv[4] = { m0, m1, m2, m3 };
        for (size_t a = 0; a < rows; a++) { /* qs * (ks * (m - c)), a zero made +0 (a select, not + 0) */
                const __m256i d = _mm256_sub_epi32(mv[a], _mm256_set1_epi32(c[a]));
                const __m256 p = _mm256_mul_ps(_mm256_set1_ps(qs[a]), _mm256_mul_ps(vks, _mm256_cvtepi32_ps(d)));
                _mm256_maskstore_ps(out + a * ldo, all,
                                    _mm256_and_ps(p, _mm256_cmp_ps(p, _mm256_setzero_ps(), _CMP_NEQ_UQ)));
        }
}


/* keys_lowrank_q8's row operations (attention-stream.h), 8 components a vector, as the AVX-512
 * ones: vmaxps returns its second operand (the running max) where |x| is NaN; x * inv kept from
 * fusing by a barrier; NaN truncates to INT32_MIN, whose low byte plus 128 is 128; a byte
 * shuffle gathers each 128-bit lane's four low bytes into one word. */
#define ATT_KQ8_LANES 8
ATT_AI_ROW float att_kq8_block_max(const float *kp, size_t ldp, size_t j0, size_t j1, size_t R) {
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 mv = _mm256_setzero_ps();

        for (size_t j = j0; j < j1; j++)
                for (size_t c = 0; c < R; c += 8) {
                        const __m256 x = _mm256_maskload_ps(kp + j * ldp + c, tail_mask(R - c < 8 ? R - c : 8));
                        mv = _mm256_max_ps(_mm256_andnot_ps(sign, x), mv);
                }
        return hmax(mv);
}

ATT_AI_ROW void att_kq8_words(uint32_t w[ATT_KQ8_LANES / 4], const float *x, size_t R, size_t c, float inv) {
        const __m256i lo = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12,
                                            -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        const size_t m = c < R ? (R - c < 8 ? R - c : 8) : 0;
        __m256 p = _mm256_mul_ps(_mm256_maskload_ps(x + c, tail_mask(m)), _mm256_set1_ps(inv));

        __asm__("" : "+x"(p));
        p = _mm256_add_ps(p, _mm256_blendv_ps(_mm256_set1_ps(-0.5f), _mm256_set1_ps(0.5f),
                                              _mm256_cmp_ps(p, _mm256_setzero_ps(), _CMP_GE_OQ)));
        const __m256i v = _mm256_shuffle_epi8(_mm256_add_epi32(_mm256_cvttps_epi32(p), _mm256_set1_epi32(128)), lo);
        w[0] = (uint32_t) _mm256_extract_epi32(v, 0), w[1] = (uint32_t) _mm256_extract_epi32(v, 4);
}

/* att_kt_shift (attention-stream.h) on 16-wide panels: row c of output panel o is columns
 * [off, off + 16) of the 32 that row c of source panels P + o and P + o + 1 hold side by side
 * (off = j0 % 16, P j0's panel): each half of 8 lanes is a masked load of its lanes from the
 * first panel or'ed with one of the others from the second (masked lanes are not read: nor is
 * the second panel when it holds none of the keys). */
ATT_AI_ROW void att_kt_shift(float *dst, const float *kv, size_t j0, size_t n, size_t HS) {
        const size_t off = j0 % 16;
        const __m256i all = _mm256_set1_epi32(-1), none = _mm256_setzero_si256();
        const __m256i ma0 = tail_mask(16 - off > 8 ? 8 : 16 - off), ma1 = tail_mask(off < 8 ? 8 - off : 0);

        for (size_t o = 0; 16 * o < n; o++) {
                const bool next = off + n > 16 * (o + 1); /* the next panel holds keys too */
                const float *a = kv + (j0 - off + 16 * o) * HS + off, *b = next ? a + 16 * HS - 16 : a;
                const __m256i mb0 = next ? _mm256_xor_si256(ma0, all) : none;
                const __m256i mb1 = next ? _mm256_xor_si256(ma1, all) : none;
                float *d = dst + 16 * o * HS;

                for (size_t c = 0; c < HS; c++) {
                        const float *ar = a + 16 * c, *br = b + 16 * c;
                        const __m256 y0 = _mm256_or_ps(_mm256_maskload_ps(ar, ma0), _mm256_maskload_ps(br, mb0));
                        const __m256 y1 = _mm256_or_ps(_mm256_maskload_ps(ar + 8, ma1), _mm256_maskload_ps(br + 8, mb1));
                        _mm256_storeu_ps(d + 16 * c, y0);
                        _mm256_storeu_ps(d + 16 * c + 8, y1);
                }
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

int dsa__attention_keys_lowrank_q8_avx2(uint8_t *kt, size_t ldk, float *ks, const float *kp, size_t ldp, size_t n,
                                        size_t bk, size_t R) {
        return att_keys_lowrank_q8(kt, ldk, ks, kp, ldp, n, bk, R);
}

int dsa__attention_rows_lowrank_q8_avx2(int8_t *qt, size_t ldq, float *qs, const float *p, size_t ldp, size_t n,
                                       size_t R) {
        return att_rows_lowrank_q8(qt, ldq, qs, p, ldp, n, R);
}

int dsa__attention_pool_blocks_f32_avx2(float *out, size_t ldo, const float *x, size_t ldx, size_t T, size_t bk,
                                       size_t HS) {
        return dsa__att_pool_blocks(out, ldo, x, ldx, T, bk, HS);
}
