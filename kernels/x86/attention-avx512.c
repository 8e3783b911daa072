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

/* att_kt_shift (attention-stream.h) on 32-wide panels: row c of output panel o is columns
 * [off, off + 32) of the 64 that row c of source panels P + o and P + o + 1 hold side by side
 * (off = j0 % 32, P j0's panel), two vpermt2ps a row; the second panel is not read (masked
 * loads of no lane) when it holds none of the keys. */
ATT_AI_ROW void att_kt_shift(float *dst, const float *kv, size_t j0, size_t n, size_t HS) {
        const size_t off = j0 % 32;
        const bool lo = off < 16;
        const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32((int) (off % 16)));

        for (size_t o = 0; 32 * o < n; o++) {
                const float *a = kv + (j0 - off + 32 * o) * HS;
                const bool next = off + n > 32 * (o + 1); /* the next panel holds keys too */
                const float *b = next ? a + 32 * HS : a;
                const __mmask16 mb = next ? 0xffff : 0;
                float *d = dst + 32 * o * HS;

                for (size_t c = 0; c < HS; c++) {
                        const __m512 x0 = _mm512_loadu_ps(a + 32 * c), x1 = _mm512_loadu_ps(a + 32 * c + 16);
                        const __m512 x2 = _mm512_maskz_loadu_ps(mb, b + 32 * c);
                        const __m512 x3 = _mm512_maskz_loadu_ps(mb, b + 32 * c + 16);
                        _mm512_storeu_ps(d + 32 * c, _mm512_permutex2var_ps(lo ? x0 : x1, idx, lo ? x1 : x2));
                        _mm512_storeu_ps(d + 32 * c + 16, _mm512_permutex2var_ps(lo ? x1 : x2, idx, lo ? x2 : x3));
                }
        }
}

#define ATT_LR_LANES 16 /* key blocks a vector of att_lr_block_max_q8 */
#define ATT_LR_TARGET __attribute__((target("avx512vnni"))) /* att_lr_block_max_q8's (attention-stream.h) */

/* A zeroed vector by the zeroing idiom, which the renamer resolves without an execution port;
 * a zero the compiler keeps in a register costs a move on the vector ports for each copy. */
static inline __attribute__((always_inline)) __m512i zero_epi32(void) {
        __m512i z;
        __asm__ volatile("vpxord %0, %0, %0" : "=v"(z));
        return z;
}

/* block_max_lowrank_q8 of rows (<= 4) rows over blocks [0, nbc) of kt (nbc <= 16, kt, ks and out
 * from the chunk's first block), the chunk's last block holding last keys: vpdpbusd sums four
 * byte products of key t of 16 blocks into their lanes (a 64-byte load, serving the four rows),
 * and each lane keeps its block's max over t. G = R / 4 groups of four components, a constant
 * where att_lr_block_max_q8 inlines it for the usual ranks: the row bytes then stay in registers,
 * broadcast once, and the sums over the groups unroll; keys t and t + 1 at once, so that eight
 * chains of dependent vpdpbusd are in flight, not four. */
__attribute__((target("avx512vnni"))) static inline __attribute__((always_inline)) void
att_lr_block_max_q8_g(float *out, size_t ldo, const int8_t *const q[4], const int32_t c[4], const float qs[4],
                      size_t rows, const uint8_t *kt, size_t ldk, const float *ks, size_t nbc, size_t bk, size_t last,
                      const size_t G, const bool full) {
        const __mmask16 all = lanes(nbc), cut = lanes(nbc - 1); /* blocks with key t: all, or all but the last */
        __m512i m0 = _mm512_set1_epi32(INT32_MIN), m1 = m0, m2 = m0, m3 = m0;
        __m512i w[4][DSA_ATT_MAX_RANK_LR / 4];

        /* groups 0..3 written out, each behind a test on the constant G, so that for G <= 4 w
         * lives in registers and the sums unroll (GCC -O2 leaves a loop of 3 rolled, reading w
         * from the stack) */
#define W_GROUP(g)                                                              \
        for (size_t a = 0; (g) < G && a < 4; a++) {                             \
                int32_t x;                                                      \
                memcpy(&x, q[a] + 4 * (g), 4);                                  \
                w[a][g] = _mm512_set1_epi32(x);                                 \
        }
        W_GROUP(0);
        W_GROUP(1);
        W_GROUP(2);
        W_GROUP(3);
        for (size_t g = 4; g < G; g++)
                W_GROUP(g);
#undef W_GROUP
#define DOT_GROUP(a, b, c, d, off, g)                                                                   \
        if ((g) < G) {                                                                                  \
                const uint8_t *p = kt + ((g) * bk + (off)) * ldk;                                       \
                const __m512i k = full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(all, p);       \
                a = _mm512_dpbusd_epi32(a, k, w[0][g]), b = _mm512_dpbusd_epi32(b, k, w[1][g]);         \
                c = _mm512_dpbusd_epi32(c, k, w[2][g]), d = _mm512_dpbusd_epi32(d, k, w[3][g]);         \
        }
#define DOT(a, b, c, d, off)                                                                            \
        do {                                                                                            \
                a = zero_epi32(), b = zero_epi32(), c = zero_epi32(), d = zero_epi32();                 \
                DOT_GROUP(a, b, c, d, off, 0);                                                          \
                DOT_GROUP(a, b, c, d, off, 1);                                                          \
                DOT_GROUP(a, b, c, d, off, 2);                                                          \
                DOT_GROUP(a, b, c, d, off, 3);                                                          \
                for (size_t g = 4; g < G; g++)                                                          \
                        DOT_GROUP(a, b, c, d, off, g);                                                  \
        } while (0)
#define MAX4(a, b, c, d)                                                                                \
        do {                                                                                            \
                m0 = _mm512_max_epi32(m0, a), m1 = _mm512_max_epi32(m1, b);                             \
                m2 = _mm512_max_epi32(m2, c), m3 = _mm512_max_epi32(m3, d);                             \
        } while (0)
#define MAX4_MASK(mt, a, b, c, d)                                                                       \
        do {                                                                                            \
                m0 = _mm512_mask_max_epi32(m0, mt, m0, a), m1 = _mm512_mask_max_epi32(m1, mt, m1, b);  \
                m2 = _mm512_mask_max_epi32(m2, mt, m2, c), m3 = _mm512_mask_max_epi32(m3, mt, m3, d);  \
        } while (0)
        /* keys every block of the chunk holds: no mask (lanes past nbc are never stored) */
        const size_t nall = last < bk ? last : bk;
        size_t t = 0;
        for (; t + 2 <= nall; t += 2) {
                __m512i a0, a1, a2, a3, b0, b1, b2, b3;
                DOT(a0, a1, a2, a3, t);
                DOT(b0, b1, b2, b3, t + 1);
                MAX4(a0, a1, a2, a3);
                MAX4(b0, b1, b2, b3);
        }
        for (; t < bk; t++) {
                __m512i a0, a1, a2, a3;
                DOT(a0, a1, a2, a3, t);
                MAX4_MASK(t < last ? all : cut, a0, a1, a2, a3);
        }
#undef DOT
#undef DOT_GROUP
#undef MAX4
#undef MAX4_MASK
        const __m512 vks = _mm512_maskz_loadu_ps(all, ks);
        const __m512i mv[4] = { m0, m1, m2, m3 };
        for (size_t a = 0; a < rows; a++) { /* qs * (ks * (m - c)), a zero made +0 (a select, not + 0) */
                const __m512i d = _mm512_sub_epi32(mv[a], _mm512_set1_epi32(c[a]));
                const __m512 p = _mm512_mul_ps(_mm512_set1_ps(qs[a]), _mm512_mul_ps(vks, _mm512_cvtepi32_ps(d)));
                _mm512_mask_storeu_ps(out + a * ldo, all,
                                      _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(p, _mm512_setzero_ps(), _CMP_NEQ_UQ), p));
        }
}


/* keys_lowrank_q8's row operations (attention-stream.h), 16 components a vector: the largest
 * |component| of keys [j0, j1) (vmaxps returns its second operand, the running max, where |x|
 * is NaN); the bytes of one key's components [c, c + 16) as 4 words: x * inv (a barrier keeps it
 * from fusing into the rounding add), + 0.5 with its sign, truncated (NaN to INT32_MIN, whose low
 * byte plus 128 is 128), + 128, the low bytes kept (vpmovdb); components past R are 0, so 128. */
#define ATT_KQ8_LANES 16
ATT_AI_ROW float att_kq8_block_max(const float *kp, size_t ldp, size_t j0, size_t j1, size_t R) {
        __m512 mv = _mm512_setzero_ps();

        for (size_t j = j0; j < j1; j++)
                for (size_t c = 0; c < R; c += 16)
                        mv = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(lanes(R - c), kp + j * ldp + c)), mv);
        return _mm512_reduce_max_ps(mv);
}

ATT_AI_ROW void att_kq8_words(uint32_t w[ATT_KQ8_LANES / 4], const float *x, size_t R, size_t c, float inv) {
        __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(c < R ? lanes(R - c) : 0, x + c), _mm512_set1_ps(inv));

        __asm__("" : "+v"(p));
        p = _mm512_add_ps(p, _mm512_mask_blend_ps(_mm512_cmp_ps_mask(p, _mm512_setzero_ps(), _CMP_GE_OQ),
                                                  _mm512_set1_ps(-0.5f), _mm512_set1_ps(0.5f)));
        _mm_storeu_si128((__m128i *) w,
                         _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvttps_epi32(p), _mm512_set1_epi32(128))));
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

int dsa__attention_keys_lowrank_q8_avx512(uint8_t *kt, size_t ldk, float *ks, const float *kp, size_t ldp, size_t n,
                                          size_t bk, size_t R) {
        return att_keys_lowrank_q8(kt, ldk, ks, kp, ldp, n, bk, R);
}

int dsa__attention_rows_lowrank_q8_avx512(int8_t *qt, size_t ldq, float *qs, const float *p, size_t ldp, size_t n,
                                       size_t R) {
        return att_rows_lowrank_q8(qt, ldq, qs, p, ldp, n, R);
}

int dsa__attention_pool_blocks_f32_avx512(float *out, size_t ldo, const float *x, size_t ldx, size_t T, size_t bk,
                                       size_t HS) {
        return dsa__att_pool_blocks(out, ldo, x, ldx, T, bk, HS);
}
