/* Long-context attention kernels for one head: exact softmax attention streamed over a chosen
 * list of key blocks (flash-attention style online softmax, so dense attention is the list of
 * all blocks and sparse attention a shorter one), the block mass that calibrates a block scorer
 * against the exact attention, linear attention with the elu+1 feature map, and the mean of each
 * key block's rows (a block summary a scorer can read).
 *
 * Shapes use llm.c's letters plus: nq query rows of one query block (nq <= DSA_ATT_BLOCK),
 * Tk keys, bk keys per key block, nb blocks in a list. q, k, v and out are fp32 row-major with
 * row strides ld*; a row of one head holds HS values at its start (the caller offsets the base
 * by h*HS for head h of a fused QKV row). Every kernel reads exactly HS values per row of q, k,
 * v and x, writes exactly HS values per row of out (never the columns past HS), never
 * allocates, and takes its scratch from the caller (any alignment; sizes below). Single-
 * threaded and reentrant: callers split heads and query blocks across a dsa_threadpool, each
 * thread with its own scratch. Inputs must be finite.
 *
 * Each kernel has a scalar reference and AVX2 and AVX-512 variants, reached through a table
 * per ISA (dsa_attention_kernels_for) like kernels.h's; dsa_attention_kernels() is the table of
 * the ISA dsa_kernels() picked (so DSA_ISA forces it too). The variants agree with the
 * reference to fp32 rounding (different summation orders, the vector exp's ~1e-7 relative
 * error), not bit for bit. */
#pragma once

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/* Query rows per call of the streaming kernels (the query block). */
#define DSA_ATT_BLOCK 64
/* Largest key block (bk) and head size (HS) the kernels accept. */
#define DSA_ATT_MAX_BK 256
#define DSA_ATT_MAX_HS 256
/* Largest rank of block_max_lowrank_q8. */
#define DSA_ATT_MAX_RANK_LR 64
/* Rows per chunk of causal linear attention. */
#define DSA_ATT_LINEAR_CHUNK 64

/* Most keys of a struct dsa_attention_extra. */
#define DSA_ATT_MAX_EXTRA (1u << 24)

/* Keys blocks_packed_f32 takes into the same softmax as its listed blocks' (block summaries):
 * keys [j0, n) of the Tk that the same table's pack_kv_f32 packed into kv, every one seen by
 * every row (no causal rule), bias[j] (read for j in [j0, n)) added to each row's score of key j,
 * -INFINITY: not seen. j0 <= n; n = j0: none. */
struct dsa_attention_extra {
        const float *kv;
        const float *bias;
        size_t n, Tk;
        size_t j0; /* the first key taken (0: from the start) */
};

struct dsa_attention_kernels {
        enum dsa_isa isa;
        const char *name;

        /* Exact softmax attention of one query block over a list of key blocks.
         * q (nq, ldq), query row i at absolute position pos0 + i; k (Tk, ldk), v (Tk, ldv);
         * out (nq, ldo); blocks (nb) strictly ascending block numbers, block b covering keys
         * [b*bk, min(b*bk + bk, Tk)); ret_lse (nq) or NULL; scratch
         * dsa_attention_blocks_scratch(bk, HS) floats. nq <= DSA_ATT_BLOCK, 1 <= bk <=
         * DSA_ATT_MAX_BK, 1 <= HS <= DSA_ATT_MAX_HS; any bk in every variant (ragged key
         * blocks are packed with zero padding).
         * Key j is visible to row i when it lies in a listed block, j < Tk, and, if causal,
         * j <= pos0 + i. out_i = sum_j softmax_j(scale q_i.k_j) v_j over the visible keys;
         * ret_lse_i = log(sum_j exp(scale q_i.k_j)) (natural log, computed as m + log(l) from
         * the running max m and sum l). A row that sees no key gets zeros and lse = -INFINITY
         * (an empty list: every row). Blocks past Tk, and with causal those past the last
         * query's position, hold no visible key and cost nothing; in a diagonal block only the
         * rows and columns some query sees are computed.
         * Method: consecutive listed blocks run as one span of keys, in chunks of at least
         * DSA__ATT_SPAN keys; per chunk, K^T * scale and V are packed into scratch and the
         * score tile and the weighted sum of values run on the register-blocked GEMM
         * microkernel, with the running max, running sum and the rescaled accumulator of the
         * online softmax kept in scratch: no (nq, Tk) matrix; scratch is O(W*HS + nq*W),
         * W = max(bk, DSA__ATT_SPAN), independent of Tk. blocks_packed_f32 reads keys packed
         * once instead.
         * Dense causal attention of a sequence of T tokens is this over every query block
         * (pos0 = 0, 64, ...) with blocks 0 .. ceil((pos0 + nq) / bk) - 1.
         * 0, or -EINVAL (NULL pointers where data is needed, a size out of range, a row
         * stride below HS with more than one row, blocks not strictly ascending, pos0 + nq
         * past SIZE_MAX): then nothing is written. */
        int (*blocks_f32)(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                          size_t ldk, const float *v, size_t ldv, size_t nq, size_t pos0,
                          const uint32_t *blocks, size_t nb, size_t bk, size_t Tk, size_t HS,
                          float scale, bool causal, float *ret_lse, float *scratch);

        /* For calibrating a block scorer: the share of each listed block in the exact
         * attention of one query block. q (nq, ldq), k (Tk, ldk), blocks (nb), the visibility
         * rule, sizes and scratch of blocks_f32 (dsa_attention_blocks_scratch(bk, HS)); lse
         * (nq) from blocks_f32 over every visible block (the full softmax's normalizer).
         * mass (nb): mass[t] += sum over rows i of sum over visible keys j of block blocks[t]
         * of exp(scale q_i.k_j - lse_i), indexed by list position t. Rows with lse = -INFINITY
         * add nothing. Summed over all visible blocks the masses add up to the number of rows
         * that see a key (nq in dense causal attention). 0 or -EINVAL (as blocks_f32, or NULL
         * mass or lse); nothing is written on failure. */
        int (*block_mass_f32)(float *mass, const float *q, size_t ldq, const float *k, size_t ldk,
                              size_t nq, size_t pos0, const uint32_t *blocks, size_t nb,
                              size_t bk, size_t Tk, size_t HS, float scale, bool causal,
                              const float *lse, float *scratch);

        /* Linear attention with phi(x) = elu(x) + 1 (elementwise: x + 1 for x > 0, e^x
         * otherwise) over one head of T tokens: q, k, v (T, ld*) -> out (T, ldo),
         *   out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),
         *   S_i = sum_j phi(k_j) v_j^T (HS, HS),   z_i = sum_j phi(k_j) (HS),
         * j over j <= i when causal, all of [0, T) otherwise. No scale: phi is applied to q and
         * k as given (a caller wanting q/sqrt(HS) scales q first, which changes the features).
         * A row whose denominator underflows to 0 gets zeros. Causal runs in chunks of
         * DSA_ATT_LINEAR_CHUNK rows: masked products inside the chunk plus the running state
         * (S, z) of the chunks before, so the cost is O(T * HS * (HS + chunk)) and never
         * O(T^2). scratch: dsa_attention_linear_scratch(HS) floats. 1 <= HS <=
         * DSA_ATT_MAX_HS. 0 or -EINVAL (NULL pointers with T > 0, HS out of range, a row
         * stride below HS with T > 1); nothing is written on failure. */
        int (*linear_f32)(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                          size_t ldk, const float *v, size_t ldv, size_t T, size_t HS,
                          bool causal, float *scratch);

        /* One head's keys and values packed once for blocks_packed_f32, which then reads any
         * of their blocks in place (dense and sparse attention over a sequence call the kernel
         * once per query block, so the keys are packed once, not once per query block): kv
         * (dsa_attention_packed_floats(Tk, HS) floats, 64-byte aligned) from k (Tk, ldk) times
         * scale and v (Tk, ldv), in this table's own layout (only the same table reads it).
         * 1 <= HS <= DSA_ATT_MAX_HS. 0 or -EINVAL (NULL pointers with Tk > 0, HS out of
         * range, strides too small); nothing is written on failure. */
        int (*pack_kv_f32)(float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                           size_t HS, float scale);

        /* pack_kv_f32 of the keys [j0, j1) only (k and v still point at key 0), into the layout
         * for Tk keys, so that callers can pack a sequence in pieces, in parallel or as its rows
         * are made: together the calls on pieces covering [0, Tk) write what one pack_kv_f32
         * writes. j0 a multiple of 32, j1 a multiple of 32 or Tk (pieces then never share a
         * panel). 0, or -EINVAL (pack_kv_f32's, or a range that breaks these rules); nothing is
         * written on failure. */
        int (*pack_kv_rows_f32)(float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                                size_t j0, size_t j1, size_t HS, float scale);

        /* blocks_f32 on keys packed by pack_kv_f32 (the scale is the one packed), plus bias:
         * when not NULL, bias[j] (Tk floats) is added to every row's score of key j, and a
         * key with bias -INFINITY is not seen (a row that sees no key gets zeros and lse
         * -INFINITY, as in blocks_f32); plus, when extra is not NULL, its keys in the same
         * softmax, after the list's (struct dsa_attention_extra). Block summaries use them: a
         * summary key weighs log of its block's size, and the blocks a query block keeps are
         * masked. Sizes, rules, scratch and errors of blocks_f32 (an extra with keys and a NULL
         * kv or bias, n > Tk or Tk > DSA_ATT_MAX_EXTRA is -EINVAL). */
        int (*blocks_packed_f32)(float *out, size_t ldo, const float *q, size_t ldq, size_t nq, size_t pos0,
                                 const float *kv, const float *bias, const uint32_t *blocks, size_t nb,
                                 size_t bk, size_t Tk, size_t HS, bool causal,
                                 const struct dsa_attention_extra *extra, float *ret_lse, float *scratch);

        /* For a token-level block scorer: each row's largest low-rank score in each key block,
         * at 8 bits on VNNI's unsigned x signed byte dot products. No mask: a causal caller
         * passes only the keys before its query block; blocks b < nb = ceil(Tk / bk), block b
         * covering keys [b*bk, min(b*bk + bk, Tk)). Keys are laid out block-major, so that one
         * vector holds the same key of consecutive blocks and a lane keeps its block's running
         * max (no reduction across lanes); each vector is loaded once for all rows.
         * qt (nq, ldq) R signed bytes a row in [-63, 63], row i scaled by qs[i]; kt (R/4 * bk,
         * ldk) bytes: row g * bk + t holds, at [4b, 4b + 4), components 4g .. 4g+3 of key t of
         * block b (key b*bk + t) as unsigned bytes offset by 128, ldk >= 4 nb; the keys of block
         * b scaled by ks[b] (one scale a block, nb of them); out (nq, ldo),
         *   out[i][b] = qs[i] * (ks[b] * (float) m), a zero made +0 whatever its sign,
         *   m = max over keys b*bk + t < Tk, t < bk, of
         *       sum_r qt[i][r] * (kt[(r/4) * bk + t][4b + r%4] - 128),
         * so the max is taken on the integer sums, before any scaling. The sums are exact in every
         * variant (|q| <= 63 keeps AVX2's 16-bit pair sums from saturating) and the scaling is
         * the same two fp32 products, so every variant gives the same bits (the zero is made +0
         * by a select, not by adding +0, which a compiler may fuse into the product).
         * R % 4 == 0, 4 <= R <= DSA_ATT_MAX_RANK_LR, bk >= 1. 0 or -EINVAL (NULL pointers with
         * work to do, R or bk out of range, strides too small, a query byte outside [-63, 63]);
         * nothing is written on failure. */
        int (*block_max_lowrank_q8)(float *out, size_t ldo, const int8_t *qt, size_t ldq, const float *qs,
                                    const uint8_t *kt, size_t ldk, const float *ks, size_t nq, size_t bk,
                                    size_t Tk, size_t R);

        /* block_max_lowrank_q8's keys (kt, ks) from fp32: keys [0, n) of kp (n, ldp), R floats
         * each, in blocks of bk from key 0 (the last may be short). Block b's factor is
         * inv = fl(127 / M), M its largest |component| (inv = 0 when M is 0 or +inf, or so small
         * that 127 / M overflows), ks[b] = fl(1 / inv) (0 for inv = 0); a component x becomes the
         * byte 128 + trunc(p + 0.5f) for p = fl(x * inv) >= 0, 128 + trunc(p - 0.5f) below, each
         * step rounded to fp32 (the product never fused into the add): halves go away from 0,
         * and so does 0.5 - 2^-25, whose sum with 0.5f rounds to 1. A NaN component counts as 0
         * (byte 128, and not in M), so do components past R, up to R4 = R rounded up to 4. kt as
         * block_max_lowrank_q8 reads it: row g bk + t, bytes [4b, 4b + 4) hold components
         * 4g .. 4g+3 of key b bk + t (ldk >= 4 ceil(n / bk) when kt has more than one row; a
         * caller writing blocks from b0 on passes kt + 4 b0 and ks + b0). Every variant gives the
         * same bytes and scales. 1 <= R <= DSA_ATT_MAX_RANK_LR, bk >= 1; 0 or -EINVAL (NULL
         * pointers with work to do, R or bk out of range, strides too small); nothing is written
         * on failure. */
        int (*keys_lowrank_q8)(uint8_t *kt, size_t ldk, float *ks, const float *kp, size_t ldp, size_t n, size_t bk,
                               size_t R);

        /* block_max_lowrank_q8's query rows (qt, qs) from fp32: row i of p (n, ldp), R floats,
         * to R4 = R rounded up to 4 signed bytes of qt (n, ldq) by its own factor
         * inv = fl(63 / M), M its largest |component| (inv = 0 when M is 0 or +inf, or so small
         * that 63 / M overflows), qs[i] = fl(1 / inv) (0 for inv = 0); a component x becomes
         * trunc(p + 0.5f) for p = fl(x * inv) >= 0, trunc(p - 0.5f) below, rounded as
         * keys_lowrank_q8 rounds (so every byte is in [-63, 63]); a NaN component counts as 0
         * (byte 0, and not in M), so do components past R. Every variant gives the same bytes
         * and scales. 1 <= R <= DSA_ATT_MAX_RANK_LR; 0 or -EINVAL (NULL pointers with work to
         * do, R out of range, ldp < R or ldq < R4 with more than one row); nothing is written
         * on failure. */
        int (*rows_lowrank_q8)(int8_t *qt, size_t ldq, float *qs, const float *p, size_t ldp, size_t n, size_t R);

        /* Mean of each block of bk rows: x (T, ldx) -> out (ceil(T/bk), ldo), row b the mean
         * of rows [b*bk, min(b*bk + bk, T)) (the last block partial: its own row count).
         * 1 <= bk, 1 <= HS. 0 or -EINVAL; nothing is written on failure. One portable loop
         * (dsa__att_pool_blocks) compiled for each table's ISA; every table gives the same
         * bits. */
        int (*pool_blocks_f32)(float *out, size_t ldo, const float *x, size_t ldx, size_t T,
                               size_t bk, size_t HS);
};

/* Floats of scratch blocks_f32 and block_mass_f32 need for key blocks of bk keys and head size
 * HS, in every variant: about (2 HS + 66) * W + 64 HS + 2048, W = max(roundup(bk, 32), 128).
 * SIZE_MAX when bk or HS is 0 or past its maximum. */
size_t dsa_attention_blocks_scratch(size_t bk, size_t HS);

/* Floats of pack_kv_f32's kv for Tk keys of head size HS, in every variant:
 * roundup(Tk, 32) * HS + roundup(HS, 32) * Tk. SIZE_MAX when HS is 0 or past DSA_ATT_MAX_HS or
 * the count overflows. */
size_t dsa_attention_packed_floats(size_t Tk, size_t HS);

/* Floats of scratch linear_f32 needs for head size HS, in every variant: about
 * (HS + 64) * roundup(HS, 32) + 256 HS + 4096. SIZE_MAX when HS is 0 or past DSA_ATT_MAX_HS. */
size_t dsa_attention_linear_scratch(size_t HS);

/* The table of the ISA dsa_kernels() picked; thread-safe. */
const struct dsa_attention_kernels *dsa_attention_kernels(void);

/* The table of one ISA, or NULL when it was not built or this CPU cannot run it
 * (dsa_kernels_for(isa) is NULL). */
const struct dsa_attention_kernels *dsa_attention_kernels_for(enum dsa_isa isa);

/* ---- Internal: the variants and the pieces they share, for kernels/ and the tests only. */

/* Keys a chunk of the streaming kernels at least (W above). */
#define DSA__ATT_SPAN 512

/* The scratch layout, in floats from the first 64-byte boundary of scratch, every region
 * starting 64-byte aligned. NR <= 32 in every variant (the widest GEMM panel), so key counts
 * are rounded up to 32 and one layout serves all.
 * Streaming (bk, HS), W = max(roundup(bk, 32), DSA__ATT_SPAN) keys a chunk (consecutive listed
 * blocks run as one span, in chunks of W), hsp = roundup(HS, 32):
 *   kt  HS * W       K^T * scale of one chunk in NR-wide panels (ref: unused)
 *   vp  hsp * W      V of one chunk in NR-column panels (ref: unused)
 *   s   64 * (W+32)  score / probability tile, row stride W + 32 (ref: one row of scores)
 *   acc 64 * HS      unnormalized output rows (ref: one row)
 *   m, l  64 each    running max and sum
 *   idx 2 * W        key indices (size_t) for the packers
 * Linear (HS), CH = DSA_ATT_LINEAR_CHUNK:
 *   st  hsp * HS     state S in NR-column panels (ref: S (HS, HS))
 *   z   hsp          state z
 *   qf, kf  CH * HS  phi of a chunk of q and k rows (ref: one row each)
 *   kt  HS * CH      phi(K)^T of the chunk in NR-wide panels
 *   kT  HS * CH      phi(K)^T of the chunk, plain (HS, CH)
 *   vp  hsp * CH     V of the chunk in NR-column panels
 *   a   CH * CH      masked phi(Q) phi(K)^T
 *   den CH           denominators
 *   idx 2 * CH       key indices */
struct dsa__att_layout {
        size_t kt, vp, s, acc, m, l, idx;     /* streaming */
        size_t span, lds;                     /* streaming: keys a chunk, score tile row stride */
        size_t st, z, qf, kf, kT, a, den;     /* linear (kt, vp, idx shared by name) */
        size_t total;                         /* floats including 16 of alignment slack */
};

void dsa__att_blocks_layout(struct dsa__att_layout *L, size_t bk, size_t HS);
void dsa__att_linear_layout(struct dsa__att_layout *L, size_t HS);

/* Where V starts in pack_kv_f32's kv for Tk keys of head size HS, in every variant: after the
 * keys' roundup(Tk, 32) * HS floats (dsa_attention_packed_floats counts both). */
static inline size_t dsa__att_packed_v(size_t Tk, size_t HS) {
        return (Tk + 31) / 32 * 32 * HS;
}

/* scratch rounded up to its first 64-byte boundary. */
static inline float *dsa__att_align(float *scratch) {
        return (float *) (((uintptr_t) scratch + 63) & ~(uintptr_t) 63);
}

/* The argument checks every variant runs first: 0 or -EINVAL. */
int dsa__att_blocks_check(const float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                          size_t ldk, const float *v, size_t ldv, size_t nq, size_t pos0,
                          const uint32_t *blocks, size_t nb, size_t bk, size_t Tk, size_t HS,
                          const float *scratch);
/* blocks_packed_f32's check of its extra keys (NULL: none): 0 or -EINVAL. */
int dsa__att_extra_check(const struct dsa_attention_extra *extra);
int dsa__att_linear_check(const float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                          size_t ldk, const float *v, size_t ldv, size_t T, size_t HS,
                          const float *scratch);

/* The keys [*ret_j0, *ret_j0 + *ret_ncols) of block b some row of the query block sees, and
 * the first such row *ret_r0 (rows are ascending positions, so rows [r0, nq) see the block).
 * false when no row sees a key of it. With causal, row i >= r0 sees the first
 * min(ncols, pos0 + i - j0 + 1) of them; otherwise all ncols. */
static inline bool dsa__att_block_span(uint32_t b, size_t bk, size_t Tk, size_t nq, size_t pos0,
                                       bool causal, size_t *ret_j0, size_t *ret_ncols,
                                       size_t *ret_r0) {
        const size_t j0 = (size_t) b * bk; /* b < 2^32, bk <= 256: no overflow */
        size_t ncols, r0 = 0;

        if (j0 >= Tk || nq == 0)
                return false;
        ncols = Tk - j0 < bk ? Tk - j0 : bk;
        if (causal) {
                if (j0 > pos0 + nq - 1)
                        return false;
                r0 = j0 > pos0 ? j0 - pos0 : 0;
                if (pos0 + nq - j0 < ncols)
                        ncols = pos0 + nq - j0;
        }
        *ret_j0 = j0, *ret_ncols = ncols, *ret_r0 = r0;
        return true;
}

/* Keys of a block row i sees (i >= r0 of dsa__att_block_span). */
static inline size_t dsa__att_row_keys(size_t i, size_t pos0, size_t j0, size_t ncols, bool causal) {
        return causal && pos0 + i - j0 + 1 < ncols ? pos0 + i - j0 + 1 : ncols;
}

/* The variants: attention.c (ref), x86/attention-avx2.c, x86/attention-avx512.c; contracts
 * as the table's fields of the same names. pool_blocks_f32 has only the reference. */
typedef int dsa__att_blocks_fn(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                               size_t ldk, const float *v, size_t ldv, size_t nq, size_t pos0,
                               const uint32_t *blocks, size_t nb, size_t bk, size_t Tk, size_t HS,
                               float scale, bool causal, float *ret_lse, float *scratch);
typedef int dsa__att_block_mass_fn(float *mass, const float *q, size_t ldq, const float *k,
                                   size_t ldk, size_t nq, size_t pos0, const uint32_t *blocks,
                                   size_t nb, size_t bk, size_t Tk, size_t HS, float scale,
                                   bool causal, const float *lse, float *scratch);
typedef int dsa__att_linear_fn(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                               size_t ldk, const float *v, size_t ldv, size_t T, size_t HS,
                               bool causal, float *scratch);

typedef int dsa__att_pack_kv_fn(float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                                size_t HS, float scale);
typedef int dsa__att_pack_kv_rows_fn(float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                                     size_t j0, size_t j1, size_t HS, float scale);
/* pack_kv_rows_f32's argument checks (pack_kv_f32's with j0 = 0, j1 = Tk): 0 or -EINVAL. */
int dsa__att_pack_check(const float *kv, const float *k, size_t ldk, const float *v, size_t ldv, size_t Tk,
                        size_t j0, size_t j1, size_t HS);
typedef int dsa__att_blocks_packed_fn(float *out, size_t ldo, const float *q, size_t ldq, size_t nq, size_t pos0,
                                      const float *kv, const float *bias, const uint32_t *blocks, size_t nb,
                                      size_t bk, size_t Tk, size_t HS, bool causal,
                                      const struct dsa_attention_extra *extra, float *ret_lse, float *scratch);

typedef int dsa__att_block_max_q8_fn(float *out, size_t ldo, const int8_t *qt, size_t ldq, const float *qs,
                                     const uint8_t *kt, size_t ldk, const float *ks, size_t nq, size_t bk,
                                     size_t Tk, size_t R);
dsa__att_block_max_q8_fn dsa__attention_block_max_lowrank_q8_ref;
dsa__att_block_max_q8_fn dsa__attention_block_max_lowrank_q8_avx2;
dsa__att_block_max_q8_fn dsa__attention_block_max_lowrank_q8_avx512;
int dsa__att_block_max_q8_check(const float *out, size_t ldo, const int8_t *qt, size_t ldq, const float *qs,
                                const uint8_t *kt, size_t ldk, const float *ks, size_t nq, size_t bk, size_t Tk,
                                size_t R);

typedef int dsa__att_keys_q8_fn(uint8_t *kt, size_t ldk, float *ks, const float *kp, size_t ldp, size_t n,
                                size_t bk, size_t R);
dsa__att_keys_q8_fn dsa__attention_keys_lowrank_q8_ref;
dsa__att_keys_q8_fn dsa__attention_keys_lowrank_q8_avx2;
dsa__att_keys_q8_fn dsa__attention_keys_lowrank_q8_avx512;
int dsa__att_keys_q8_check(const uint8_t *kt, size_t ldk, const float *ks, const float *kp, size_t ldp, size_t n,
                           size_t bk, size_t R);
typedef int dsa__att_rows_q8_fn(int8_t *qt, size_t ldq, float *qs, const float *p, size_t ldp, size_t n, size_t R);
dsa__att_rows_q8_fn dsa__attention_rows_lowrank_q8_ref;
dsa__att_rows_q8_fn dsa__attention_rows_lowrank_q8_avx2;
dsa__att_rows_q8_fn dsa__attention_rows_lowrank_q8_avx512;
int dsa__att_rows_q8_check(const int8_t *qt, size_t ldq, const float *qs, const float *p, size_t ldp, size_t n,
                           size_t R);
/* The 8-bit factor of values whose largest |value| is M (>= 0, not NaN), top their largest byte
 * (127: keys_lowrank_q8, 63: rows_lowrank_q8): top / M, or 0 when M is 0 or +inf or the quotient
 * overflows. */
static inline float dsa__att_q8_inv(float top, float M) {
        const float inv = M > 0 ? top / M : 0.0f;
        return inv < INFINITY ? inv : 0.0f;
}
/* The scale that factor inv gives the bytes: fl(1 / inv), 0 for inv 0. */
static inline float dsa__att_q8_scale(float inv) {
        return inv > 0 ? 1.0f / inv : 0.0f;
}

dsa__att_pack_kv_fn dsa__attention_pack_kv_f32_ref;
dsa__att_pack_kv_fn dsa__attention_pack_kv_f32_avx2;
dsa__att_pack_kv_fn dsa__attention_pack_kv_f32_avx512;
dsa__att_pack_kv_rows_fn dsa__attention_pack_kv_rows_f32_ref;
dsa__att_pack_kv_rows_fn dsa__attention_pack_kv_rows_f32_avx2;
dsa__att_pack_kv_rows_fn dsa__attention_pack_kv_rows_f32_avx512;
dsa__att_blocks_packed_fn dsa__attention_blocks_packed_f32_ref;
dsa__att_blocks_packed_fn dsa__attention_blocks_packed_f32_avx2;
dsa__att_blocks_packed_fn dsa__attention_blocks_packed_f32_avx512;
dsa__att_blocks_fn dsa__attention_blocks_f32_ref;
dsa__att_blocks_fn dsa__attention_blocks_f32_avx2;
dsa__att_blocks_fn dsa__attention_blocks_f32_avx512;
dsa__att_block_mass_fn dsa__attention_block_mass_f32_ref;
dsa__att_block_mass_fn dsa__attention_block_mass_f32_avx2;
dsa__att_block_mass_fn dsa__attention_block_mass_f32_avx512;
dsa__att_linear_fn dsa__attention_linear_f32_ref;
dsa__att_linear_fn dsa__attention_linear_f32_avx2;
dsa__att_linear_fn dsa__attention_linear_f32_avx512;
typedef int dsa__att_pool_fn(float *out, size_t ldo, const float *x, size_t ldx, size_t T, size_t bk, size_t HS);
dsa__att_pool_fn dsa__attention_pool_blocks_f32_ref;
dsa__att_pool_fn dsa__attention_pool_blocks_f32_avx2;
dsa__att_pool_fn dsa__attention_pool_blocks_f32_avx512;

/* pool_blocks_f32, one portable loop that every variant compiles with its own ISA flags (the
 * fixed-trip inner loop vectorizes to the file's width). Each output column sums its rows in
 * order from +0 and divides by the row count, so every variant gives the same bits; the
 * columns run DSA__POOL_COLS at a time, independent chains of adds that overlap. */
#define DSA__POOL_COLS 64
static inline __attribute__((always_inline)) int dsa__att_pool_blocks(float *out, size_t ldo, const float *x,
                                                                       size_t ldx, size_t T, size_t bk, size_t HS) {
        if (bk == 0 || HS == 0 || (T > 0 && (!out || !x)))
                return -EINVAL;
        if ((T > 1 && ldx < HS) || (T > bk && ldo < HS))
                return -EINVAL;

        for (size_t b = 0; b * bk < T; b++) {
                const size_t j0 = b * bk, n = T - j0 < bk ? T - j0 : bk;

                for (size_t d0 = 0; d0 < HS; d0 += DSA__POOL_COLS) {
                        const size_t w = HS - d0 < DSA__POOL_COLS ? HS - d0 : DSA__POOL_COLS;
                        float acc[DSA__POOL_COLS] = { 0 };
                        if (w == DSA__POOL_COLS) { /* unrolled, so acc lives in registers, not on the stack */
                                for (size_t j = j0; j < j0 + n; j++)
                                        _Pragma("GCC unroll 64") for (size_t d = 0; d < DSA__POOL_COLS; d++)
                                                acc[d] += x[j * ldx + d0 + d];
                                _Pragma("GCC unroll 64") for (size_t d = 0; d < DSA__POOL_COLS; d++)
                                        out[b * ldo + d0 + d] = acc[d] / (float) n;
                                continue;
                        }
                        for (size_t j = j0; j < j0 + n; j++)
                                for (size_t d = 0; d < w; d++)
                                        acc[d] += x[j * ldx + d0 + d];
                        for (size_t d = 0; d < w; d++)
                                out[b * ldo + d0 + d] = acc[d] / (float) n;
                }
        }
        return 0;
}
