/* The long-context attention kernels (kernels/attention.h): every variant this CPU runs against
 * a plain double-precision oracle written here (full softmax over an explicit mask, no
 * streaming, no blocking), on ragged shapes: head sizes 1 to 80, 1, 5 and 64 query rows, key
 * blocks of 64, 32, 16 and 1 keys, key counts that are not multiples of the block, query
 * blocks at offsets, causal and not, dense, sparse, single-block, invisible-only and empty
 * block lists; the log-sum-exp, the block mass (each block against the oracle, and all blocks
 * together adding up to the rows that see a key), linear attention causal and not, block
 * pooling, and the token scorer's per-block max of 8-bit low-rank scores (ranks 4 to 64, keys
 * laid out block-major, blocks of 1 to 513 keys, 1 to 1501 blocks so that the x86 chunks of 16
 * and 8 blocks end full, short and with one lane, one key scale a block, every variant bit for
 * bit equal to an oracle of the exact integer max and the two fp32 products, with scales that
 * overflow or go subnormal, poisoned keys past the ragged last block's end, inputs each ending
 * on or starting after a guard page); the bytes and block scales it reads made from fp32 rows
 * (keys_lowrank_q8: every rank 1 to 64, blocks of 1 to 256 keys, 0 keys, one, part of a block,
 * whole blocks and a short last one, written from block b0 on as the engine does, or in two calls;
 * bell-shaped values, zeros of both signs, halves, NaN, +-inf, subnormals, 1e30 and FLT_MAX; the
 * ref bit for bit equal to an oracle written from the contract, every other variant to the ref,
 * every byte of kt and ks outside the call's keys untouched, hand-made cases, the rounding of
 * every half and its neighbours, and the round trip back to the floats); and the same attention on
 * keys and values packed once (pack_kv_f32, blocks_packed_f32), with and without a bias that
 * adds to the scores or masks keys (-INFINITY), on head sizes 1 to 100, key blocks of 1 to 256
 * (not dividing the panels), up to 1,500 keys, lists of long runs, runs from any block and chunks
 * gathered from many short runs, against the oracle and against blocks_f32, with kv exactly
 * dsa_attention_packed_floats() floats ending on (or starting after) a guard page and NaN
 * wherever the pack does not write; and that attention with extra keys (struct
 * dsa_attention_extra) from a second packed buffer in the same softmax: 1 to 1,100 of them (one
 * chunk or several), all or a prefix of those packed, with their own bias (finite, partly or
 * wholly -INFINITY, or masking the first chunk), on empty, single-block, run and diagonal lists;
 * n = 0 and wholly masked extras give the plain call's bits; pack_kv_rows_f32 on random pieces of a
 * sequence (0 to 192 keys, the last ragged) in a random order gives pack_kv_f32's bits, each piece
 * writing only its own floats. q, k, v and x rows are NaN past HS and each buffer ends on
 * a PROT_NONE page, so a read past a row's HS values either poisons the result or faults; out,
 * lse and mass carry sentinels past what a call may write, scratch is exactly the size the
 * kernel asked for (also ending on a guard page) at an odd alignment. Bad arguments give
 * -EINVAL and write nothing. Variants the CPU cannot run are reported as SKIP. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/macro.h"
#include "kernels/attention.h"
#include "gemm-check.h"
#include "testutil.h"

/* |got - want| <= MAX_ERR + MAX_RERR * |want|, fp32 kernels against the double oracle. Outputs
 * are convex combinations of values in [-1, 1]; the errors are those of fp32 dot products of up
 * to 100 terms (scores), the vector exp (~1e-7 relative), and fp32 sums over up to ~1,500 keys.
 * A bias of a few units adds half an ulp of the biased score. The packed kernels use the same
 * tolerances against the oracle, and against blocks_f32 too: they differ from it in the
 * rounding of k * scale in the reference and, on x86, in how keys are grouped into chunks (a
 * later run in a chunk must start on a panel there), so not bit for bit. */
#define ATT_MAX_ERR 1e-5
#define ATT_MAX_RERR 1e-5
#define LSE_MAX_ERR 1e-5 /* lse is O(10): a few ulp plus the score errors */
#define LSE_MAX_RERR 1e-6
/* Block mass: each term exp(s - lse) carries the score and lse errors (~1e-6 relative); sums of
 * up to 64 x 256 positive terms in fp32. */
#define MASS_MAX_ERR 1e-6
#define MASS_MAX_RERR 2e-5
/* Linear attention: positive weights, so outputs are convex combinations of v; fp32 sums of
 * up to 200 keys in the state and the chunk products. */
#define LINEAR_MAX_ERR 1e-5
#define LINEAR_MAX_RERR 1e-5
#define POOL_MAX_ERR 1e-6
#define POOL_MAX_RERR 1e-6
/* block_max_lowrank_q8 against a double oracle: the integer sums and their max are exact
 * (|sum| <= 64 * 63 * 128 < 2^24, so float(max) is too), ks[b] * max rounds once and qs[i] times
 * that once more: at most 2^-23 relative (plus the oracle's own 2^-53) where both products are
 * normal floats; those that overflow or go subnormal are checked in bits only. The absolute term
 * only keeps 0 / 0 out of the ratio. Against an fp32 oracle of the same operations: bit for bit. */
#define LOWRANK_Q8_MAX_ERR 1e-30
#define LOWRANK_Q8_MAX_RERR 1.2e-7

#define SENTINEL DSA_TEST_SENTINEL

static enum dsa_isa isas[_DSA_ISA_MAX];
static size_t n_isas;

enum { K_OUT, K_LSE, K_MASS, K_LINEAR, K_POOL, K_LOWRANK, K_POUT, K_PLSE, K_PDIFF, K_XOUT, K_XLSE, _K_MAX };
static const char *const kernel_names[_K_MAX] = { "blocks out", "blocks lse", "block mass", "linear",
                                                  "pool", "lowrank q8", "packed out", "packed lse",
                                                  "packed-plain", "extra out", "extra lse" };
static double worst[_K_MAX][_DSA_ISA_MAX]; /* worst error / tolerance */

/* ---- Buffers that end on a guard page. */

struct guarded {
        void *map;
        size_t len;
};

/* bytes that end where a PROT_NONE page starts or, with front, start where one ends: a read past
 * the last byte, or before the first, faults. Without front the start has whatever alignment
 * that gives (any, for an odd count). */
static void *guarded_bytes_new(struct guarded *g, size_t bytes, bool front) {
        const size_t page = (size_t) sysconf(_SC_PAGESIZE), n = bytes ? bytes : 1;
        const size_t data = (n + page - 1) / page * page;
        char *p;

        g->len = page + data + page;
        g->map = mmap(NULL, g->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(g->map != MAP_FAILED);
        p = g->map;
        assert_int_equal(mprotect(p, page, PROT_NONE), 0);
        assert_int_equal(mprotect(p + page + data, page, PROT_NONE), 0);
        return front ? p + page : p + page + data - n;
}

/* n floats whose end is the start of a PROT_NONE page (a read or write past them faults). */
static float *guarded_new(struct guarded *g, size_t n) {
        return guarded_bytes_new(g, (n ? n : 1) * sizeof(float), false);
}

static void guarded_free(struct guarded *g) {
        if (g->map)
                munmap(g->map, g->len);
        g->map = NULL;
}

/* rows of HS values at stride ld, random in [lo, hi], NaN in the gaps between rows; the last
 * row ends on the guard page. */
static float *rows_new(struct guarded *g, struct dsa_test_rng *rng, size_t rows, size_t ld,
                       size_t HS, float lo, float hi) {
        const size_t n = rows ? (rows - 1) * ld + HS : 0;
        float *p = guarded_new(g, n);

        for (size_t i = 0; i < n; i++)
                p[i] = i % ld < HS ? dsa_test_rng_uniform(rng, lo, hi) : NAN;
        return p;
}

/* ---- Comparison. */

static bool close_enough(int kernel, enum dsa_isa isa, const char *what, size_t at, double got,
                         double want, double atol, double rtol) {
        double err, ratio;

        if (isinf(want) && got == want)
                return true;
        err = fabs(got - want);
        ratio = isnan(err) ? INFINITY : err / (atol + rtol * fabs(want));
        worst[kernel][isa] = MAX(worst[kernel][isa], ratio);
        if (ratio > 1) {
                printf("FAIL %s/%s %s: element %zu got %.9g want %.9g (err %.3g, tol %.3g + %.3g*|want|)\n",
                       kernel_names[kernel], dsa_test_isa_names[isa], what, at, got, want, err, atol, rtol);
                return false;
        }
        return true;
}

static bool sentinels_kept(const char *what, enum dsa_isa isa, const char *shape, const float *x, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (memcmp(&x[i], &(float) { SENTINEL }, sizeof(float)) != 0) {
                        printf("FAIL %s/%s %s: wrote %.9g at guard %zu\n", what, dsa_test_isa_names[isa], shape, x[i], i);
                        return false;
                }
        return true;
}

/* ---- The streaming kernels. */

struct problem {
        size_t HS, nq, pos0, Tk, bk, ldq, ldk, ldv, ldo;
        bool causal;
        float scale;
        float *q, *k, *v;
        struct guarded gq, gk, gv;
};

static void problem_init(struct problem *p, struct dsa_test_rng *rng, size_t HS, size_t nq, size_t pos0,
                         size_t Tk, size_t bk, bool causal, size_t pad, bool trend) {
        *p = (struct problem) { .HS = HS, .nq = nq, .pos0 = pos0, .Tk = Tk, .bk = bk, .causal = causal,
                                .ldq = HS + pad, .ldk = HS + 2 * pad, .ldv = HS + (pad ? 1 : 0),
                                .ldo = HS + 3, .scale = (float) ((pad % 2 ? 3.0 : 1.0) / sqrt((double) HS)) };
        p->q = rows_new(&p->gq, rng, nq, p->ldq, HS, -1, 1);
        p->k = rows_new(&p->gk, rng, Tk, p->ldk, HS, -1, 1);
        p->v = rows_new(&p->gv, rng, Tk, p->ldv, HS, -1, 1);
        /* Keys aligned with q[0]'s direction more and more along the sequence, so each query's
         * running max moves up block after block and the online rescaling is exercised. */
        if (trend)
                for (size_t j = 0; j < Tk; j++)
                        for (size_t d = 0; d < HS; d++)
                                p->k[j * p->ldk + d] += 4.0f * (float) j / (float) Tk * (p->q[d] > 0 ? 1.0f : -1.0f);
}

static void problem_done(struct problem *p) {
        guarded_free(&p->gq), guarded_free(&p->gk), guarded_free(&p->gv);
}

static double score(const struct problem *p, size_t i, size_t j) {
        double s = 0;

        for (size_t d = 0; d < p->HS; d++)
                s += (double) p->q[i * p->ldq + d] * p->k[j * p->ldk + d];
        return s * p->scale;
}

/* Extra keys for the oracle: keys [0, n) of e's k and v (scale e->scale), in the same softmax
 * as the list's, every one seen by every row, bias (n values) added to their scores (-INFINITY:
 * not seen). */
struct oracle_extra {
        const struct problem *e;
        const float *bias;
        size_t n;
};

/* The oracle: out (nq, HS) and lse (nq) of a full softmax over the visible keys, with bias (Tk
 * values, or NULL) added to the scores, plus the extra keys x (NULL: none); a key with bias
 * -INFINITY is not visible. */
static void oracle_blocks_bias(const struct problem *p, const uint32_t *blocks, size_t nb, const float *bias,
                               const struct oracle_extra *x, double *out, double *lse) {
        const size_t nx = x ? x->n : 0;
        double *s = malloc((p->Tk + nx + 1) * sizeof(double));
        bool *in = calloc(p->Tk + 1, sizeof(bool)); /* key j in a listed block */

        assert_true(s && in);
        for (size_t t = 0; t < nb; t++)
                for (size_t j = (size_t) blocks[t] * p->bk; j < p->Tk && j < ((size_t) blocks[t] + 1) * p->bk; j++)
                        in[j] = true;
        for (size_t i = 0; i < p->nq; i++) {
                double mx = -INFINITY, sum = 0;

                for (size_t d = 0; d < p->HS; d++)
                        out[i * p->HS + d] = 0;
                for (size_t j = 0; j < p->Tk; j++) {
                        const bool seen = in[j] && (!p->causal || j <= p->pos0 + i) && (!bias || bias[j] != -INFINITY);
                        s[j] = seen ? score(p, i, j) + (bias ? bias[j] : 0.0) : -INFINITY;
                        mx = fmax(mx, s[j]);
                }
                for (size_t j = 0; j < nx; j++) { /* extra key j is key Tk + j here */
                        double e = 0;
                        for (size_t d = 0; d < p->HS; d++)
                                e += (double) p->q[i * p->ldq + d] * x->e->k[j * x->e->ldk + d];
                        s[p->Tk + j] = x->bias[j] == -INFINITY ? -INFINITY : e * x->e->scale + x->bias[j];
                        mx = fmax(mx, s[p->Tk + j]);
                }
                if (mx == -INFINITY) {
                        lse[i] = -INFINITY;
                        continue;
                }
                for (size_t j = 0; j < p->Tk + nx; j++) {
                        if (s[j] == -INFINITY)
                                continue;
                        const double e = exp(s[j] - mx);
                        const float *vj = j < p->Tk ? p->v + j * p->ldv : x->e->v + (j - p->Tk) * x->e->ldv;
                        sum += e;
                        for (size_t d = 0; d < p->HS; d++)
                                out[i * p->HS + d] += e * vj[d];
                }
                for (size_t d = 0; d < p->HS; d++)
                        out[i * p->HS + d] /= sum;
                lse[i] = mx + log(sum);
        }
        free(s), free(in);
}

static void oracle_blocks(const struct problem *p, const uint32_t *blocks, size_t nb, double *out,
                          double *lse) {
        oracle_blocks_bias(p, blocks, nb, NULL, NULL, out, lse);
}

/* The block list of one kind: 0 every block of [0, Tk), 1 a random ~30% of them plus numbers
 * past Tk, 2 one block, 3 only blocks no row sees (past Tk; with causal, past the last query),
 * 4 none. Returns the count. */
static size_t make_list(const struct problem *p, struct dsa_test_rng *rng, int kind, uint32_t *blocks) {
        const size_t nblk = (p->Tk + p->bk - 1) / p->bk;
        size_t nb = 0;

        switch (kind) {
        case 0:
                for (size_t b = 0; b < nblk; b++)
                        blocks[nb++] = (uint32_t) b;
                break;
        case 1:
                for (size_t b = 0; b < nblk + 3; b++)
                        if (dsa_test_rng_u64(rng) % 10 < 3)
                                blocks[nb++] = (uint32_t) b;
                break;
        case 2:
                blocks[nb++] = (uint32_t) (dsa_test_rng_u64(rng) % nblk);
                break;
        case 3:
                if (p->causal && (p->pos0 + p->nq - 1) / p->bk + 1 < nblk)
                        blocks[nb++] = (uint32_t) ((p->pos0 + p->nq - 1) / p->bk + 1);
                blocks[nb++] = (uint32_t) nblk;
                blocks[nb++] = (uint32_t) nblk + 7;
                blocks[nb++] = UINT32_MAX;
                break;
        default:
                break;
        }
        return nb;
}

/* out and lse of a call against the oracle's want and want_lse, errors counted as kernels ko and
 * kl, and the sentinels past what the call may write. */
static bool check_blocks(const struct problem *p, enum dsa_isa isa, const char *shape, const float *out,
                         const float *lse, const double *want, const double *want_lse, int ko, int kl) {
        bool ok = true;

        for (size_t i = 0; i < p->nq && ok; i++) {
                for (size_t d = 0; d < p->HS && ok; d++) {
                        const float got = out[i * p->ldo + d];
                        if (want_lse[i] == -INFINITY && memcmp(&got, &(float) { 0 }, sizeof(float)) != 0) {
                                printf("FAIL %s/%s %s: row %zu sees no key but out[%zu] = %.9g\n", kernel_names[ko],
                                       dsa_test_isa_names[isa], shape, i, d, got);
                                ok = false;
                        }
                        ok = ok && close_enough(ko, isa, shape, i * p->HS + d, got, want[i * p->HS + d],
                                                ATT_MAX_ERR, ATT_MAX_RERR);
                }
                ok = ok && close_enough(kl, isa, shape, i, lse[i], want_lse[i], LSE_MAX_ERR, LSE_MAX_RERR);
                ok = ok && sentinels_kept("blocks out", isa, shape, out + i * p->ldo + p->HS, p->ldo - p->HS);
        }
        return ok && sentinels_kept("blocks out", isa, shape, out + p->nq * p->ldo, p->ldo) &&
               sentinels_kept("blocks lse", isa, shape, lse + p->nq, 1);
}

/* The oracle's block mass of list[t], with the dense oracle's lse. */
static double oracle_mass(const struct problem *p, uint32_t b, const double *lse) {
        double sum = 0;

        for (size_t i = 0; i < p->nq; i++)
                for (size_t j = (size_t) b * p->bk; lse[i] != -INFINITY && j < p->Tk && j < ((size_t) b + 1) * p->bk; j++)
                        if (!p->causal || j <= p->pos0 + i)
                                sum += exp(score(p, i, j) - lse[i]);
        return sum;
}

/* One problem through every variant: each list kind for blocks_f32 (out, lse, guards), then
 * the dense lse into block_mass_f32 over the dense list and the sparse list. */
static void run_problem(const struct problem *p, struct dsa_test_rng *rng) {
        const size_t nblk = (p->Tk + p->bk - 1) / p->bk, cap = nblk + 8;
        const size_t ns = dsa_attention_blocks_scratch(p->bk, p->HS);
        uint32_t *blocks = malloc(cap * sizeof(uint32_t)), *dense = malloc(cap * sizeof(uint32_t));
        double *want = malloc((p->nq * p->HS + 1) * sizeof(double)), *want_lse = malloc((p->nq + 1) * sizeof(double));
        double *dense_lse = malloc((p->nq + 1) * sizeof(double));
        float *out = dsa_test_falloc((p->nq + 1) * p->ldo), *lse = dsa_test_falloc(p->nq + 1);
        float *mass = dsa_test_falloc(cap + 1);
        struct guarded gs = { 0 };
        float *scratch;
        size_t n_dense, nb;
        char shape[160];

        assert_true(blocks && dense && want && want_lse && dense_lse);
        assert_true(ns != SIZE_MAX);
        /* exactly ns floats, at an address 4 bytes past a 64-byte boundary or wherever the guard
         * page puts it: the kernels align for themselves */
        scratch = guarded_new(&gs, ns);
        n_dense = make_list(p, rng, 0, dense);
        oracle_blocks(p, dense, n_dense, want, dense_lse);

        for (int kind = 0; kind < 5; kind++) {
                nb = make_list(p, rng, kind, blocks);
                oracle_blocks(p, blocks, nb, want, want_lse);
                snprintf(shape, sizeof(shape), "HS=%zu nq=%zu pos0=%zu Tk=%zu bk=%zu causal=%d list=%d nb=%zu",
                         p->HS, p->nq, p->pos0, p->Tk, p->bk, p->causal, kind, nb);
                for (size_t s = 0; s < n_isas; s++) {
                        const struct dsa_attention_kernels *kt = dsa_attention_kernels_for(isas[s]);
                        dsa_test_fill(out, (p->nq + 1) * p->ldo, SENTINEL);
                        dsa_test_fill(lse, p->nq + 1, SENTINEL);
                        assert_int_equal(kt->blocks_f32(out, p->ldo, p->q, p->ldq, p->k, p->ldk, p->v, p->ldv, p->nq,
                                                        p->pos0, blocks, nb, p->bk, p->Tk, p->HS, p->scale,
                                                        p->causal, lse, scratch),
                                         0);
                        assert_true(check_blocks(p, isas[s], shape, out, lse, want, want_lse, K_OUT, K_LSE));
                }
        }

        /* Block mass: the variant's own dense lse, as the calibration would use it. */
        for (int kind = 0; kind < 2; kind++) {
                const uint32_t *list = kind == 0 ? dense : blocks;
                nb = kind == 0 ? n_dense : make_list(p, rng, 1, blocks);
                snprintf(shape, sizeof(shape), "HS=%zu nq=%zu pos0=%zu Tk=%zu bk=%zu causal=%d %s",
                         p->HS, p->nq, p->pos0, p->Tk, p->bk, p->causal, kind == 0 ? "dense" : "sparse");
                for (size_t s = 0; s < n_isas; s++) {
                        const struct dsa_attention_kernels *kt = dsa_attention_kernels_for(isas[s]);
                        size_t seeing = 0;
                        double total = 0;

                        assert_int_equal(kt->blocks_f32(out, p->ldo, p->q, p->ldq, p->k, p->ldk, p->v, p->ldv, p->nq,
                                                        p->pos0, dense, n_dense, p->bk, p->Tk, p->HS, p->scale,
                                                        p->causal, lse, scratch),
                                         0);
                        dsa_test_fill(mass, nb + 1, SENTINEL);
                        for (size_t t = 0; t < nb; t++)
                                mass[t] = 0.25f; /* mass accumulates: += on what is there */
                        assert_int_equal(kt->block_mass_f32(mass, p->q, p->ldq, p->k, p->ldk, p->nq, p->pos0, list,
                                                            nb, p->bk, p->Tk, p->HS, p->scale, p->causal, lse, scratch),
                                         0);
                        for (size_t t = 0; t < nb; t++) {
                                total += mass[t] - 0.25;
                                assert_true(close_enough(K_MASS, isas[s], shape, t, mass[t] - 0.25,
                                                         oracle_mass(p, list[t], dense_lse), MASS_MAX_ERR,
                                                         MASS_MAX_RERR));
                        }
                        assert_true(sentinels_kept("block mass", isas[s], shape, mass + nb, 1));
                        if (kind == 0) { /* every visible block: the rows that see a key */
                                for (size_t i = 0; i < p->nq; i++)
                                        seeing += dense_lse[i] != -INFINITY;
                                assert_true(close_enough(K_MASS, isas[s], shape, SIZE_MAX, total, (double) seeing,
                                                         MASS_MAX_ERR, MASS_MAX_RERR));
                        }
                }
        }
        guarded_free(&gs);
        free(blocks), free(dense), free(want), free(want_lse), free(dense_lse), free(out), free(lse), free(mass);
}

static void test_blocks(void **state) {
        static const size_t HSs[] = { 1, 7, 16, 32, 64, 80 };
        static const size_t nqs[] = { 1, 5, 64 };
        static const size_t bks[] = { 64, 32, 16, 1 };
        struct dsa_test_rng rng = { 31 };
        size_t case_no = 0;

        for (size_t h = 0; h < ELEMENTSOF(HSs); h++)
                for (size_t n = 0; n < ELEMENTSOF(nqs); n++)
                        for (size_t b = 0; b < ELEMENTSOF(bks); b++)
                                for (int causal = 0; causal < 2; causal++)
                                        for (int var = 0; var < 2; var++, case_no++) {
                                                const size_t HS = HSs[h], nq = nqs[n], bk = bks[b];
                                                /* query blocks at 0 and at an offset; keys exactly up to the
                                                 * last query, past it, or a free count (not causal) */
                                                const size_t pos0 = var == 0 ? 0 : (nq == 64 ? 101 : 100 + (3 * HS) % 50);
                                                const size_t Tk = causal ? pos0 + nq + (var ? 13 : 0)
                                                                         : (var ? 150 + HS : nq + 29);
                                                struct problem p;

                                                problem_init(&p, &rng, HS, nq, pos0, Tk, bk, causal, case_no % 3,
                                                             case_no % 4 == 1);
                                                run_problem(&p, &rng);
                                                problem_done(&p);
                                        }
}

/* A sequence of T tokens as the engine runs it: every query block against all blocks up to
 * its last position, the dense baseline; each query block's rows land in one out (T, ldo). */
static void test_dense_sequence(void **state) {
        static const size_t shapes[][3] = { { 300, 32, 64 }, { 200, 64, 32 }, { 129, 16, 16 } }; /* T, HS, bk */
        struct dsa_test_rng rng = { 32 };

        for (size_t si = 0; si < ELEMENTSOF(shapes); si++) {
                const size_t T = shapes[si][0], HS = shapes[si][1], bk = shapes[si][2];
                struct problem p;
                double *want = malloc(DSA_ATT_BLOCK * HS * sizeof(double)), want_lse[DSA_ATT_BLOCK];
                float *out = dsa_test_falloc(T * HS), lse[DSA_ATT_BLOCK + 1];
                float *scratch = dsa_test_falloc(dsa_attention_blocks_scratch(bk, HS));
                const size_t nball = (T + bk - 1) / bk;
                uint32_t *blocks = malloc(nball * sizeof(uint32_t));
                char shape[96];

                assert_true(want && blocks);
                problem_init(&p, &rng, HS, T, 0, T, bk, true, 0, false);
                snprintf(shape, sizeof(shape), "sequence T=%zu HS=%zu bk=%zu", T, HS, bk);
                for (size_t s = 0; s < n_isas; s++) {
                        const struct dsa_attention_kernels *kt = dsa_attention_kernels_for(isas[s]);
                        for (size_t i0 = 0; i0 < T; i0 += DSA_ATT_BLOCK) {
                                const size_t nq = MIN(T - i0, (size_t) DSA_ATT_BLOCK), nb = (i0 + nq + bk - 1) / bk;
                                for (size_t b = 0; b < nb; b++)
                                        blocks[b] = (uint32_t) b;
                                assert_int_equal(kt->blocks_f32(out + i0 * HS, HS, p.q + i0 * p.ldq, p.ldq, p.k, p.ldk,
                                                                p.v, p.ldv, nq, i0, blocks, nb, bk, T, HS, p.scale, true,
                                                                lse, scratch),
                                                 0);
                        }
                        for (size_t i0 = 0; i0 < T; i0 += DSA_ATT_BLOCK) {
                                struct problem pq = p;
                                pq.nq = MIN(T - i0, (size_t) DSA_ATT_BLOCK), pq.pos0 = i0, pq.q = p.q + i0 * p.ldq;
                                oracle_blocks(&pq, blocks, nball, want, want_lse);
                                for (size_t i = 0; i < pq.nq * HS; i++) {
                                        assert_true(close_enough(K_OUT, isas[s], shape, i0 * HS + i, out[i0 * HS + i],
                                                                 want[i], ATT_MAX_ERR, ATT_MAX_RERR));
                                }
                        }
                }
                problem_done(&p);
                free(want), free(out), free(scratch), free(blocks);
        }
}

/* ---- The streaming kernels on keys and values packed once. */

/* A problem's k and v packed by every variant: kv of exactly dsa_attention_packed_floats(Tk,
 * HS) floats, either ending on a guard page (the count is a multiple of 32, so the start stays
 * 64-byte aligned) or starting right after one; NaN before the pack, so a read of anything the
 * pack did not write poisons the result. */
struct packed {
        float *kv[_DSA_ISA_MAX];
        struct guarded g[_DSA_ISA_MAX];
};

static void packed_init(struct packed *pk, const struct problem *p, bool front) {
        const size_t n = dsa_attention_packed_floats(p->Tk, p->HS);

        assert_true(p->Tk > 0 && n != SIZE_MAX && n % 32 == 0);
        *pk = (struct packed) { 0 };
        for (size_t s = 0; s < n_isas; s++) {
                const enum dsa_isa isa = isas[s];
                float *kv = guarded_bytes_new(&pk->g[isa], n * sizeof(float), front);

                assert_true((uintptr_t) kv % 64 == 0);
                dsa_test_fill(kv, n, NAN);
                assert_int_equal(dsa_attention_kernels_for(isa)->pack_kv_f32(kv, p->k, p->ldk, p->v, p->ldv, p->Tk,
                                                                             p->HS, p->scale),
                                 0);
                pk->kv[isa] = kv;
        }
}

static void packed_done(struct packed *pk) {
        for (size_t s = 0; s < n_isas; s++)
                guarded_free(&pk->g[isas[s]]);
}

/* make_list's kinds 0 to 4, plus 5: runs of consecutive blocks (1 to ~300 keys' worth each,
 * from any block, so they start inside a panel and cross the driver's chunks anywhere) with
 * gaps of 1 to 3 blocks, the last ones past Tk; 6: one run from a random block to 2 blocks past
 * the last; 7: the diagonal, the blocks holding the query positions (past Tk when they are).
 * Kind 1 at small bk gives chunks gathered from many short runs. */
static size_t make_run_list(const struct problem *p, struct dsa_test_rng *rng, int kind, uint32_t *blocks) {
        const size_t nblk = (p->Tk + p->bk - 1) / p->bk;
        size_t nb = 0;

        switch (kind) {
        case 5:
                for (size_t b = dsa_test_rng_u64(rng) % 3; b < nblk + 3;) {
                        const size_t len = 1 + dsa_test_rng_u64(rng) % (300 / p->bk + 2);
                        for (const size_t e = b + len; b < e && b < nblk + 3; b++)
                                blocks[nb++] = (uint32_t) b;
                        b += 1 + dsa_test_rng_u64(rng) % 3;
                }
                return nb;
        case 6:
                for (size_t b = dsa_test_rng_u64(rng) % nblk; b < nblk + 2; b++)
                        blocks[nb++] = (uint32_t) b;
                return nb;
        case 7:
                for (size_t b = p->pos0 / p->bk; b <= (p->pos0 + p->nq - 1) / p->bk; b++)
                        blocks[nb++] = (uint32_t) b;
                return nb;
        default:
                return make_list(p, rng, kind, blocks);
        }
}

/* Calls of blocks_packed_f32 whose out and lse differ in some bit from blocks_f32's on the same
 * inputs, per variant (printed at the end). */
static size_t packed_plain_differ[_DSA_ISA_MAX], packed_plain_calls[_DSA_ISA_MAX];

/* One list and bias (Tk values, or NULL) through every variant's blocks_packed_f32 against the
 * oracle; with no bias, also against the variant's blocks_f32 on the same q, k and v. With
 * extra, again without ret_lse (the same out) and, with no bias, with a bias of zeros (the same
 * bits). Returns the rows that see no key. */
static size_t packed_list(const struct problem *p, const struct packed *pk, const uint32_t *blocks, size_t nb,
                          const float *bias, bool extra, float *scratch, const char *shape) {
        const size_t no = (p->nq + 1) * p->ldo;
        double *want = malloc((p->nq * p->HS + 1) * sizeof(double)), *want_lse = malloc((p->nq + 1) * sizeof(double));
        float *out = dsa_test_falloc(no), *lse = dsa_test_falloc(p->nq + 1);
        float *out2 = dsa_test_falloc(no), *lse2 = dsa_test_falloc(p->nq + 1);
        float *zeros = calloc(p->Tk + 1, sizeof(float));
        size_t blind = 0;

        assert_true(want && want_lse && zeros);
        oracle_blocks_bias(p, blocks, nb, bias, NULL, want, want_lse);
        for (size_t i = 0; i < p->nq; i++)
                blind += want_lse[i] == -INFINITY;
        for (size_t s = 0; s < n_isas; s++) {
                const enum dsa_isa isa = isas[s];
                const struct dsa_attention_kernels *kt = dsa_attention_kernels_for(isa);

                dsa_test_fill(out, no, SENTINEL);
                dsa_test_fill(lse, p->nq + 1, SENTINEL);
                assert_int_equal(kt->blocks_packed_f32(out, p->ldo, p->q, p->ldq, p->nq, p->pos0, pk->kv[isa], bias,
                                                       blocks, nb, p->bk, p->Tk, p->HS, p->causal, NULL, lse, scratch),
                                 0);
                assert_true(check_blocks(p, isa, shape, out, lse, want, want_lse, K_POUT, K_PLSE));

                if (extra) {
                        dsa_test_fill(out2, no, SENTINEL);
                        assert_int_equal(kt->blocks_packed_f32(out2, p->ldo, p->q, p->ldq, p->nq, p->pos0, pk->kv[isa],
                                                               bias, blocks, nb, p->bk, p->Tk, p->HS, p->causal, NULL,
                                                               NULL, scratch),
                                         0);
                        assert_memory_equal(out, out2, no * sizeof(float));
                }
                if (bias)
                        continue;

                if (extra) {
                        dsa_test_fill(out2, no, SENTINEL);
                        dsa_test_fill(lse2, p->nq + 1, SENTINEL);
                        assert_int_equal(kt->blocks_packed_f32(out2, p->ldo, p->q, p->ldq, p->nq, p->pos0, pk->kv[isa],
                                                               zeros, blocks, nb, p->bk, p->Tk, p->HS, p->causal, NULL,
                                                               lse2, scratch),
                                         0);
                        assert_memory_equal(out, out2, no * sizeof(float));
                        assert_memory_equal(lse, lse2, (p->nq + 1) * sizeof(float));
                }

                dsa_test_fill(out2, no, SENTINEL);
                dsa_test_fill(lse2, p->nq + 1, SENTINEL);
                assert_int_equal(kt->blocks_f32(out2, p->ldo, p->q, p->ldq, p->k, p->ldk, p->v, p->ldv, p->nq, p->pos0,
                                                blocks, nb, p->bk, p->Tk, p->HS, p->scale, p->causal, lse2, scratch),
                                 0);
                packed_plain_calls[isa]++;
                if (memcmp(out, out2, no * sizeof(float)) != 0 || memcmp(lse, lse2, (p->nq + 1) * sizeof(float)) != 0)
                        packed_plain_differ[isa]++;
                for (size_t i = 0; i < p->nq; i++) {
                        for (size_t d = 0; d < p->HS; d++)
                                assert_true(close_enough(K_PDIFF, isa, shape, i * p->HS + d, out[i * p->ldo + d],
                                                         out2[i * p->ldo + d], ATT_MAX_ERR, ATT_MAX_RERR));
                        assert_true(close_enough(K_PDIFF, isa, shape, i, lse[i], lse2[i], LSE_MAX_ERR, LSE_MAX_RERR));
                }
        }
        free(want), free(want_lse), free(out), free(lse), free(out2), free(lse2), free(zeros);
        return blind;
}

/* nq, pos0 and Tk of case case_no: nq 1, 64 or random; Tk random up to 1,500 in every third
 * case, up to 40 in every tenth, up to 300 otherwise; with causal, the query block at 0, ending
 * at the last key, at a random position, or past every key; without, anywhere. */
static void packed_shape(struct dsa_test_rng *rng, size_t case_no, bool causal, size_t *ret_nq, size_t *ret_pos0,
                         size_t *ret_Tk) {
        const size_t nq = case_no % 3 == 0 ? 1 : case_no % 3 == 1 ? DSA_ATT_BLOCK : 2 + dsa_test_rng_u64(rng) % 62;
        const size_t Tk = 1 + dsa_test_rng_u64(rng) % (case_no % 10 == 7 ? 40 : case_no % 3 == 2 ? 1500 : 300);
        size_t pos0 = dsa_test_rng_u64(rng) % 1000;

        if (causal)
                switch (case_no % 4) {
                case 0:
                        pos0 = 0;
                        break;
                case 1:
                        pos0 = Tk > nq ? Tk - nq : 0;
                        break;
                case 2:
                        pos0 = dsa_test_rng_u64(rng) % Tk;
                        break;
                default:
                        pos0 = Tk + 5;
                        break;
                }
        *ret_nq = nq, *ret_pos0 = pos0, *ret_Tk = Tk;
}

/* blocks_packed_f32 without bias, every list kind, on head sizes that are and are not
 * multiples of the panels, and key blocks that divide 32 and 128, that do not, that are not
 * multiples of AVX-512's 32-key panel (16, 24, 40: chunks whose first key is inside a panel)
 * and the largest. */
static void test_packed_blocks(void **state) {
        static const size_t HSs[] = { 1, 7, 32, 33, 64, 100 };
        static const size_t bks[] = { 1, 5, 16, 17, 24, 32, 40, 64, 100, 256 };
        struct dsa_test_rng rng = { 36 };
        size_t case_no = 0;

        for (size_t h = 0; h < ELEMENTSOF(HSs); h++)
                for (size_t b = 0; b < ELEMENTSOF(bks); b++)
                        for (int causal = 0; causal < 2; causal++, case_no++) {
                                const size_t HS = HSs[h], bk = bks[b];
                                const size_t cap = 1500 / bk + 12, ns = dsa_attention_blocks_scratch(bk, HS);
                                uint32_t *blocks = malloc(cap * sizeof(uint32_t));
                                size_t nq, pos0, Tk;
                                struct guarded gs = { 0 };
                                struct packed pk;
                                struct problem p;
                                float *scratch;
                                char shape[160];

                                assert_true(blocks && ns != SIZE_MAX);
                                packed_shape(&rng, case_no, causal, &nq, &pos0, &Tk);
                                problem_init(&p, &rng, HS, nq, pos0, Tk, bk, causal, case_no % 3, case_no % 4 == 1);
                                packed_init(&pk, &p, case_no % 2);
                                scratch = guarded_new(&gs, ns);
                                for (int kind = 0; kind < 7; kind++) {
                                        const size_t nb = make_run_list(&p, &rng, kind, blocks);

                                        snprintf(shape, sizeof(shape),
                                                 "packed HS=%zu nq=%zu pos0=%zu Tk=%zu bk=%zu causal=%d list=%d nb=%zu",
                                                 HS, nq, pos0, Tk, bk, causal, kind, nb);
                                        packed_list(&p, &pk, blocks, nb, NULL, kind == 5, scratch, shape);
                                }
                                guarded_free(&gs);
                                packed_done(&pk);
                                problem_done(&p);
                                free(blocks);
                        }
}

/* bias (Tk) of one mode: 0 random in [-3, 3] with -INFINITY on about one key in six; 1 a ramp
 * up to 6 along the keys (each chunk moves the running max up) with the list's second run
 * masked whole, when it has one; 2 -INFINITY on the first 1 to 300 keys
 * (every key of the first chunks: the running max stays -inf, then turns finite), random after. */
static void make_bias(const struct problem *p, struct dsa_test_rng *rng, int mode, const uint32_t *blocks, size_t nb,
                      float *bias) {
        const size_t J = 1 + dsa_test_rng_u64(rng) % MIN(p->Tk, (size_t) 300);

        for (size_t j = 0; j < p->Tk; j++) {
                bias[j] = dsa_test_rng_uniform(rng, -3, 3);
                if (mode == 0 && dsa_test_rng_u64(rng) % 6 == 0)
                        bias[j] = -INFINITY;
                if (mode == 1)
                        bias[j] = 6.0f * (float) j / (float) p->Tk + bias[j] / 6;
                if (mode == 2 && j < J)
                        bias[j] = -INFINITY;
        }
        if (mode == 1 && nb > 0) {
                size_t t0, t1 = 0;
                while (t1 + 1 < nb && blocks[t1 + 1] == blocks[t1] + 1)
                        t1++;
                if (t1 + 1 == nb) /* one run: masking it would leave nothing to see */
                        return;
                t0 = ++t1;
                while (t1 + 1 < nb && blocks[t1 + 1] == blocks[t1] + 1)
                        t1++;
                for (size_t j = (size_t) blocks[t0] * p->bk; j < p->Tk && j < ((size_t) blocks[t1] + 1) * p->bk; j++)
                        bias[j] = -INFINITY;
        }
}

/* blocks_packed_f32 with bias: the modes of make_bias in turn on the lists with runs, then the
 * cases that must come out exactly: causal rows whose every key is masked (zeros, lse
 * -INFINITY) next to rows that see some, the first chunks masked for every row, and every
 * listed key masked. bias ends on a guard page. */
static void test_packed_bias(void **state) {
        static const size_t HSs[] = { 7, 33, 64 };
        static const size_t bks[] = { 5, 16, 24, 40, 100, 256 };
        static const int kinds[] = { 0, 1, 5, 6 };
        /* HS, bk, Tk, nq, pos0, causal, masked keys [0, J), then the rows that see no key */
        static const size_t cases[][8] = {
                { 33, 16, 300, 64, 0, 1, 40, 40 },   /* rows 0 .. 39 see only masked keys */
                { 7, 5, 200, 30, 0, 1, 17, 17 },
                { 64, 24, 1400, 17, 250, 0, 1100, 0 }, /* two chunks of 512 keys and a bit masked */
                { 32, 200, 1700, 64, 3, 0, 1100, 0 },  /* chunks of 512 keys: two masked */
                { 32, 40, 700, 64, 0, 0, 700, 64 },  /* every key masked */
        };
        struct dsa_test_rng rng = { 37 };
        size_t case_no = 0;

        for (size_t h = 0; h < ELEMENTSOF(HSs); h++)
                for (size_t b = 0; b < ELEMENTSOF(bks); b++)
                        for (int causal = 0; causal < 2; causal++, case_no++) {
                                const size_t HS = HSs[h], bk = bks[b];
                                const size_t cap = 1500 / bk + 12, ns = dsa_attention_blocks_scratch(bk, HS);
                                uint32_t *blocks = malloc(cap * sizeof(uint32_t));
                                struct guarded gs = { 0 }, gb = { 0 };
                                size_t nq, pos0, Tk;
                                struct packed pk;
                                struct problem p;
                                float *scratch, *bias;
                                char shape[160];

                                assert_true(blocks && ns != SIZE_MAX);
                                packed_shape(&rng, case_no, causal, &nq, &pos0, &Tk);
                                problem_init(&p, &rng, HS, nq, pos0, Tk, bk, causal, case_no % 3, false);
                                packed_init(&pk, &p, case_no % 2);
                                scratch = guarded_new(&gs, ns);
                                bias = guarded_new(&gb, Tk);
                                for (size_t ki = 0; ki < ELEMENTSOF(kinds); ki++) {
                                        const int mode = (int) ((ki + case_no) % 3);
                                        const size_t nb = make_run_list(&p, &rng, kinds[ki], blocks);

                                        make_bias(&p, &rng, mode, blocks, nb, bias);
                                        snprintf(shape, sizeof(shape),
                                                 "bias=%d HS=%zu nq=%zu pos0=%zu Tk=%zu bk=%zu causal=%d list=%d nb=%zu",
                                                 mode, HS, nq, pos0, Tk, bk, causal, kinds[ki], nb);
                                        packed_list(&p, &pk, blocks, nb, bias, kinds[ki] == 5, scratch, shape);
                                }
                                guarded_free(&gs), guarded_free(&gb);
                                packed_done(&pk);
                                problem_done(&p);
                                free(blocks);
                        }

        for (size_t c = 0; c < ELEMENTSOF(cases); c++) {
                const size_t HS = cases[c][0], bk = cases[c][1], Tk = cases[c][2], nq = cases[c][3];
                const size_t nblk = (Tk + bk - 1) / bk;
                uint32_t *blocks = malloc(nblk * sizeof(uint32_t));
                struct guarded gs = { 0 }, gb = { 0 };
                float *scratch, *bias;
                struct packed pk;
                struct problem p;
                char shape[160];

                assert_non_null(blocks);
                for (size_t b = 0; b < nblk; b++)
                        blocks[b] = (uint32_t) b;
                problem_init(&p, &rng, HS, nq, cases[c][4], Tk, bk, cases[c][5], c % 3, true);
                packed_init(&pk, &p, c % 2);
                scratch = guarded_new(&gs, dsa_attention_blocks_scratch(bk, HS));
                bias = guarded_new(&gb, Tk);
                for (size_t j = 0; j < Tk; j++)
                        bias[j] = j < cases[c][6] ? -INFINITY : dsa_test_rng_uniform(&rng, -3, 3);
                snprintf(shape, sizeof(shape), "bias case %zu: HS=%zu nq=%zu pos0=%zu Tk=%zu bk=%zu causal=%zu J=%zu", c,
                         HS, nq, cases[c][4], Tk, bk, cases[c][5], cases[c][6]);
                assert_int_equal(packed_list(&p, &pk, blocks, nblk, bias, true, scratch, shape), cases[c][7]);
                guarded_free(&gs), guarded_free(&gb);
                packed_done(&pk);
                problem_done(&p);
                free(blocks);
        }
}

/* ---- blocks_packed_f32's extra keys (struct dsa_attention_extra). */

/* One list, main bias (Tk values, or NULL) and extra keys x (packed in xpk) through every
 * variant's blocks_packed_f32 against the oracle, again without ret_lse (the same out). The
 * call without extra gives the same bits as an extra with n = 0 (with and without kv and bias)
 * and, when every extra bias is -INFINITY, the same values up to rounding (the extra keys come
 * first in the list's chunks, so the sums run in another order). Returns the rows that see no key of the
 * list but some extra key. */
static size_t extra_list(const struct problem *p, const struct packed *pk, const uint32_t *blocks, size_t nb,
                         const float *bias, const struct oracle_extra *x, const struct packed *xpk, float *scratch,
                         const char *shape) {
        const size_t no = (p->nq + 1) * p->ldo, nl = p->nq + 1;
        double *want = malloc((p->nq * p->HS + 1) * sizeof(double)), *want_lse = malloc(nl * sizeof(double));
        float *out = dsa_test_falloc(no), *lse = dsa_test_falloc(nl);
        float *out0 = dsa_test_falloc(no), *lse0 = dsa_test_falloc(nl);
        float *out2 = dsa_test_falloc(no), *lse2 = dsa_test_falloc(nl);
        bool masked = true; /* every extra key */
        size_t only = 0;

        assert_true(want && want_lse);
        for (size_t j = 0; j < x->n; j++)
                masked = masked && x->bias[j] == -INFINITY;
        oracle_blocks_bias(p, blocks, nb, bias, x, want, want_lse);
        /* the extra keys from J on (j0 = J): as keys [0, J) not seen (the oracle's -inf), their bias
         * NaN in the kernel's copy, which it must not read */
        const size_t J = x->n / 3 + 1;
        double *want_j = malloc((p->nq * p->HS + 1) * sizeof(double)), *want_j_lse = malloc(nl * sizeof(double));
        float *xb = malloc(x->n * sizeof(float)), *kb = malloc(x->n * sizeof(float));
        assert_true(want_j && want_j_lse && xb && kb);
        for (size_t j = 0; j < x->n; j++)
                xb[j] = j < J ? -INFINITY : x->bias[j], kb[j] = j < J ? NAN : x->bias[j];
        const struct oracle_extra xj = { x->e, xb, x->n };
        oracle_blocks_bias(p, blocks, nb, bias, &xj, want_j, want_j_lse);
        for (size_t s = 0; s < n_isas; s++) {
                const enum dsa_isa isa = isas[s];
                const struct dsa_attention_kernels *kt = dsa_attention_kernels_for(isa);
                const struct dsa_attention_extra ex = { xpk->kv[isa], x->bias, x->n, x->e->Tk, 0 };
                const struct dsa_attention_extra none[] = { { xpk->kv[isa], x->bias, 0, x->e->Tk, 0 },
                                                            { NULL, NULL, 0, 0, 0 },
                                                            { xpk->kv[isa], x->bias, x->n, x->e->Tk, x->n } };

#define CALL(out_, extra_, lse_)                                                                                   \
        kt->blocks_packed_f32(out_, p->ldo, p->q, p->ldq, p->nq, p->pos0, pk->kv[isa], bias, blocks, nb, p->bk, \
                              p->Tk, p->HS, p->causal, extra_, lse_, scratch)
                dsa_test_fill(out0, no, SENTINEL), dsa_test_fill(lse0, nl, SENTINEL);
                assert_int_equal(CALL(out0, NULL, lse0), 0);
                dsa_test_fill(out, no, SENTINEL), dsa_test_fill(lse, nl, SENTINEL);
                assert_int_equal(CALL(out, &ex, lse), 0);
                assert_true(check_blocks(p, isa, shape, out, lse, want, want_lse, K_XOUT, K_XLSE));
                for (size_t i = 0; i < p->nq && s == 0; i++)
                        only += lse0[i] == -INFINITY && lse[i] != -INFINITY;
                if (masked) /* the masked extra keys share the list's chunks: its sums in another order */
                        for (size_t i = 0; i < p->nq; i++) {
                                assert_true(lse[i] == lse0[i] || fabsf(lse[i] - lse0[i]) <= 1e-5f * (1 + fabsf(lse0[i])));
                                for (size_t j = 0; j < p->HS; j++) {
                                        const float a = out[i * p->ldo + j], b = out0[i * p->ldo + j];
                                        assert_true(fabsf(a - b) <= 1e-5f * (1 + fabsf(b)));
                                }
                        }
                dsa_test_fill(out2, no, SENTINEL);
                assert_int_equal(CALL(out2, &ex, NULL), 0);
                assert_memory_equal(out, out2, no * sizeof(float));
                const struct dsa_attention_extra exj = { xpk->kv[isa], kb, x->n, x->e->Tk, J };
                dsa_test_fill(out2, no, SENTINEL), dsa_test_fill(lse2, nl, SENTINEL);
                assert_int_equal(CALL(out2, &exj, lse2), 0);
                assert_true(check_blocks(p, isa, shape, out2, lse2, want_j, want_j_lse, K_XOUT, K_XLSE));
                for (size_t k = 0; k < ELEMENTSOF(none); k++) {
                        dsa_test_fill(out2, no, SENTINEL), dsa_test_fill(lse2, nl, SENTINEL);
                        assert_int_equal(CALL(out2, &none[k], lse2), 0);
                        assert_memory_equal(out0, out2, no * sizeof(float));
                        assert_memory_equal(lse0, lse2, nl * sizeof(float));
                }
                if (nb == 0) { /* no list: no main keys at all (kv NULL, Tk 0), the extra keys alone */
                        dsa_test_fill(out2, no, SENTINEL), dsa_test_fill(lse2, nl, SENTINEL);
                        assert_int_equal(kt->blocks_packed_f32(out2, p->ldo, p->q, p->ldq, p->nq, p->pos0, NULL, NULL,
                                                               NULL, 0, p->bk, 0, p->HS, p->causal, &ex, lse2, scratch),
                                         0);
                        assert_memory_equal(out, out2, no * sizeof(float));
                        assert_memory_equal(lse, lse2, nl * sizeof(float));
                }
#undef CALL
        }
        free(want), free(want_lse), free(out), free(lse), free(out0), free(lse0), free(out2), free(lse2);
        free(want_j), free(want_j_lse), free(xb), free(kb);
        return only;
}

/* The extra keys' bias (n) of one mode: 0 random in [-3, 3]; 1 that with -INFINITY on about one
 * key in four; 2 -INFINITY on all; 3 -INFINITY on the first J keys, J past the x86 driver's
 * first chunk of W when there are more (its running max stays put, then moves), half of them
 * when not. */
static void make_extra_bias(struct dsa_test_rng *rng, int mode, size_t n, size_t W, float *bias) {
        const size_t J = n > W ? W + dsa_test_rng_u64(rng) % (n - W) : n / 2;

        for (size_t j = 0; j < n; j++) {
                bias[j] = dsa_test_rng_uniform(rng, -3, 3);
                if ((mode == 1 && dsa_test_rng_u64(rng) % 4 == 0) || mode == 2 || (mode == 3 && j < J))
                        bias[j] = -INFINITY;
        }
}

/* blocks_packed_f32 with extra keys: n of them from 1 to 1,100 (within one chunk, on and across
 * its edges, and several chunks), all of the extra's Tk or a prefix, on an empty list (only
 * extras), one block, runs and the diagonal, causal and not, with and without a main bias, and
 * every extra bias mode. The extra's kv is exactly dsa_attention_packed_floats(Tk, HS) floats
 * and its bias exactly n, each against a guard page. Some rows must see only extra keys. */
static void test_packed_extra(void **state) {
        static const size_t HSs[] = { 8, 20, 32, 64 };
        static const size_t nxs[] = { 1, 31, 32, 33, 100, 300, 511, 512, 513, 1100 };
        static const size_t bks[] = { 16, 64, 100, 256, 5 };
        static const int kinds[] = { 4, 2, 5, 7 };
        struct dsa_test_rng rng = { 38 };
        size_t case_no = 0, only = 0;

        for (size_t h = 0; h < ELEMENTSOF(HSs); h++)
                for (size_t x = 0; x < ELEMENTSOF(nxs); x++)
                        for (int causal = 0; causal < 2; causal++, case_no++) {
                                const size_t HS = HSs[h], nx = nxs[x], bk = bks[case_no % ELEMENTSOF(bks)];
                                const size_t xTk = case_no % 3 ? nx + 1 + dsa_test_rng_u64(&rng) % 40 : nx;
                                const size_t cap = 1500 / bk + 12, ns = dsa_attention_blocks_scratch(bk, HS);
                                const size_t W = MAX(bk + 31, (size_t) DSA__ATT_SPAN) / 32 * 32;
                                uint32_t *blocks = malloc(cap * sizeof(uint32_t));
                                struct guarded gs = { 0 }, gb = { 0 }, gx = { 0 };
                                size_t nq, pos0, Tk;
                                struct packed pk, xpk;
                                struct problem p, e;
                                float *scratch, *bias, *xbias;
                                char shape[200];

                                assert_true(blocks && ns != SIZE_MAX);
                                packed_shape(&rng, case_no, causal, &nq, &pos0, &Tk);
                                problem_init(&p, &rng, HS, nq, pos0, Tk, bk, causal, case_no % 3, case_no % 4 == 1);
                                problem_init(&e, &rng, HS, 0, 0, xTk, bk, false, (case_no + 1) % 3, false);
                                packed_init(&pk, &p, case_no % 2);
                                packed_init(&xpk, &e, (case_no + 1) % 2);
                                scratch = guarded_new(&gs, ns);
                                bias = guarded_new(&gb, Tk);
                                xbias = guarded_new(&gx, nx);
                                for (size_t ki = 0; ki < ELEMENTSOF(kinds); ki++) {
                                        const int xmode = (int) ((ki + case_no) % 4), mode = (int) (case_no % 3);
                                        const bool biased = (ki + case_no) % 3 == 0;
                                        const size_t nb = make_run_list(&p, &rng, kinds[ki], blocks);
                                        const struct oracle_extra ox = { &e, xbias, nx };

                                        if (biased)
                                                make_bias(&p, &rng, mode, blocks, nb, bias);
                                        make_extra_bias(&rng, xmode, nx, W, xbias);
                                        snprintf(shape, sizeof(shape),
                                                 "extra n=%zu Tk=%zu bias=%d main bias=%d HS=%zu nq=%zu pos0=%zu "
                                                 "Tk=%zu bk=%zu causal=%d list=%d nb=%zu",
                                                 nx, xTk, xmode, biased ? mode : -1, HS, nq, pos0, Tk, bk, causal,
                                                 kinds[ki], nb);
                                        only += extra_list(&p, &pk, blocks, nb, biased ? bias : NULL, &ox, &xpk,
                                                           scratch, shape);
                                }
                                guarded_free(&gs), guarded_free(&gb), guarded_free(&gx);
                                packed_done(&pk), packed_done(&xpk);
                                problem_done(&p), problem_done(&e);
                                free(blocks);
                        }
        assert_true(only > 0);
}

/* ---- Linear attention. */

static double phi(double x) {
        return x > 0 ? x + 1 : exp(x);
}

static void test_linear(void **state) {
        static const size_t Ts[] = { 1, 5, 63, 64, 65, 130, 200 };
        static const size_t HSs[] = { 1, 7, 16, 32, 64, 80 };
        struct dsa_test_rng rng = { 33 };
        size_t case_no = 0;

        for (size_t ti = 0; ti < ELEMENTSOF(Ts); ti++)
                for (size_t h = 0; h < ELEMENTSOF(HSs); h++)
                        for (int causal = 0; causal < 2; causal++, case_no++) {
                                const size_t T = Ts[ti], HS = HSs[h], pad = case_no % 3;
                                const size_t ldq = HS + pad, ldk = HS + 2 * pad, ldv = HS + (pad ? 1 : 0), ldo = HS + 2;
                                struct guarded gq, gk, gv, gs;
                                float *q = rows_new(&gq, &rng, T, ldq, HS, -2, 2), *k = rows_new(&gk, &rng, T, ldk, HS, -2, 2);
                                float *v = rows_new(&gv, &rng, T, ldv, HS, -1, 1);
                                float *scratch = guarded_new(&gs, dsa_attention_linear_scratch(HS));
                                float *out = dsa_test_falloc((T + 1) * ldo);
                                double *want = malloc(T * HS * sizeof(double)), *fq = malloc(HS * sizeof(double));
                                char shape[96];

                                assert_true(want && fq);
                                /* the definition, O(T^2 HS): weights phi(q_i).phi(k_j) over visible j */
                                for (size_t i = 0; i < T; i++) {
                                        double den = 0;
                                        for (size_t d = 0; d < HS; d++)
                                                fq[d] = phi(q[i * ldq + d]), want[i * HS + d] = 0;
                                        for (size_t j = 0; j < (causal ? i + 1 : T); j++) {
                                                double w = 0;
                                                for (size_t d = 0; d < HS; d++)
                                                        w += fq[d] * phi(k[j * ldk + d]);
                                                den += w;
                                                for (size_t d = 0; d < HS; d++)
                                                        want[i * HS + d] += w * v[j * ldv + d];
                                        }
                                        for (size_t d = 0; d < HS; d++)
                                                want[i * HS + d] /= den;
                                }
                                snprintf(shape, sizeof(shape), "T=%zu HS=%zu causal=%d", T, HS, causal);
                                for (size_t s = 0; s < n_isas; s++) {
                                        const struct dsa_attention_kernels *kt = dsa_attention_kernels_for(isas[s]);
                                        dsa_test_fill(out, (T + 1) * ldo, SENTINEL);
                                        assert_int_equal(kt->linear_f32(out, ldo, q, ldq, k, ldk, v, ldv, T, HS, causal, scratch), 0);
                                        for (size_t i = 0; i < T; i++) {
                                                for (size_t d = 0; d < HS; d++)
                                                        assert_true(close_enough(K_LINEAR, isas[s], shape, i * HS + d,
                                                                                 out[i * ldo + d], want[i * HS + d],
                                                                                 LINEAR_MAX_ERR, LINEAR_MAX_RERR));
                                                assert_true(sentinels_kept("linear out", isas[s], shape, out + i * ldo + HS, ldo - HS));
                                        }
                                        assert_true(sentinels_kept("linear out", isas[s], shape, out + T * ldo, ldo));
                                }
                                guarded_free(&gq), guarded_free(&gk), guarded_free(&gv), guarded_free(&gs);
                                free(out), free(want), free(fq);
                        }
}

/* ---- Pooling. */

static void test_pool(void **state) {
        static const size_t Ts[] = { 1, 5, 64, 65, 130 };
        static const size_t bks[] = { 1, 16, 64 };
        static const size_t HSs[] = { 1, 7, 32, 80 };
        struct dsa_test_rng rng = { 34 };

        for (size_t ti = 0; ti < ELEMENTSOF(Ts); ti++)
                for (size_t b = 0; b < ELEMENTSOF(bks); b++)
                        for (size_t h = 0; h < ELEMENTSOF(HSs); h++) {
                                const size_t T = Ts[ti], bk = bks[b], HS = HSs[h], ldx = HS + 1, ldo = HS + 2;
                                const size_t nblk = (T + bk - 1) / bk;
                                struct guarded gx;
                                float *x = rows_new(&gx, &rng, T, ldx, HS, -1, 1), *out = dsa_test_falloc((nblk + 1) * ldo);
                                char shape[64];

                                snprintf(shape, sizeof(shape), "T=%zu bk=%zu HS=%zu", T, bk, HS);
                                for (size_t s = 0; s < n_isas; s++) {
                                        dsa_test_fill(out, (nblk + 1) * ldo, SENTINEL);
                                        assert_int_equal(dsa_attention_kernels_for(isas[s])->pool_blocks_f32(out, ldo, x, ldx, T, bk, HS), 0);
                                        for (size_t bl = 0; bl < nblk; bl++) {
                                                const size_t j1 = MIN(T, (bl + 1) * bk);
                                                for (size_t d = 0; d < HS; d++) {
                                                        double want = 0;
                                                        for (size_t j = bl * bk; j < j1; j++)
                                                                want += x[j * ldx + d];
                                                        want /= (double) (j1 - bl * bk);
                                                        assert_true(close_enough(K_POOL, isas[s], shape, bl * HS + d, out[bl * ldo + d],
                                                                                 want, POOL_MAX_ERR, POOL_MAX_RERR));
                                                }
                                                assert_true(sentinels_kept("pool out", isas[s], shape, out + bl * ldo + HS, ldo - HS));
                                        }
                                        assert_true(sentinels_kept("pool out", isas[s], shape, out + nblk * ldo, ldo));
                                }
                                guarded_free(&gx);
                                free(out);
                        }
}

/* ---- The token scorer's block max of 8-bit low-rank scores. */

static size_t rng_below(struct dsa_test_rng *rng, size_t n) {
        return (size_t) (dsa_test_rng_u64(rng) % n);
}

/* One shape's inputs, each choice drawn from the rng. Keys block-major: kt (R/4 * bk, ldk), component r of
 * key j = b*bk + t at row (r/4) * bk + t, byte 4b + r%4 (q8_key). Query bytes in [-63, 63], key bytes in
 * [0, 255], by style: 0 and 1, the extremes and 0 (128 for keys) more often than the rest; 2, the largest
 * magnitudes, rows of all 63 or all -63 against keys of all 255 or all 0; 3, mostly zeros (query bytes 0,
 * key bytes 128), so zero sums; 4, blocks built for their max (q8_signed_blocks). The slots of a ragged
 * last block past Tk (keys t >= Tk - (nb-1)*bk, which a kernel may load but must not count) hold poison:
 * random bytes or, half the time, the key of row 0's largest possible score (255 against a positive
 * query byte, 1 against a negative one). Block scales ks (one a block, ceil(Tk / bk) of them): +0, -0 and
 * [-2, 2]; in extreme cases also +-2^-149 .. 2^120 and FLT_MAX, so products that overflow to +-inf, go
 * subnormal or round to a zero of either sign. Row scales qs: 0, [1/64, 2] and [-2, -1/64]; in extreme
 * cases times 2^-60 or 2^60 and never 0 (0 * inf would be a NaN). */
struct q8_case {
        size_t R, Tk, bk, nq, nb, ldq, ldk, ldo;
        int8_t *qt;
        uint8_t *kt;
        float *qs, *ks;
        struct guarded gq, gk, gqs, gks;
};

/* Where component r of key j (j < nb * bk, so also a slot past Tk in the last block) is in kt. */
static size_t q8_key(const struct q8_case *c, size_t r, size_t j) {
        return ((r / 4) * c->bk + j % c->bk) * c->ldk + 4 * (j / c->bk) + r % 4;
}

static int8_t q8_query_byte(struct dsa_test_rng *rng, unsigned style) {
        const size_t r = rng_below(rng, 16);

        if (style == 3)
                return r < 12 ? 0 : (int8_t) ((int) rng_below(rng, 127) - 63);
        return r == 0 ? 63 : r == 1 ? -63 : r == 2 ? 0 : (int8_t) ((int) rng_below(rng, 127) - 63);
}

static uint8_t q8_key_byte(struct dsa_test_rng *rng, unsigned style) {
        const size_t r = rng_below(rng, 16);

        if (style == 3)
                return r < 12 ? 128 : (uint8_t) rng_below(rng, 256);
        return r == 0 ? 0 : r == 1 ? 255 : r == 2 ? 128 : (uint8_t) rng_below(rng, 256);
}

/* Style 4: query bytes s * [1, 63] for one sign s, and key bytes 128 + s * d, so that a row's sum is
 * sum_r |q_r| d_r. Each block is negative (every d in [-127, -2] but one key's, all -1: every sum < 0),
 * positive (d in [-127, 126] but one key's, all 127) or zero (every d 0, m = 0). In the first two the one
 * key is the block's unique max for every row; it is the last key of the last block (ragged or not) and of
 * about half the others. */
static void q8_signed_blocks(struct q8_case *c, struct dsa_test_rng *rng) {
        const int s = rng_below(rng, 2) ? 1 : -1;

        for (size_t i = 0; i < c->nq; i++)
                for (size_t r = 0; r < c->R; r++)
                        c->qt[i * c->ldq + r] = (int8_t) (s * (rng_below(rng, 4) ? 1 + (int) rng_below(rng, 63) : 63));
        for (size_t b = 0; b < c->nb; b++) {
                const size_t j0 = b * c->bk, n = MIN(c->Tk - j0, c->bk), kind = rng_below(rng, 3);
                const size_t top = b + 1 == c->nb || rng_below(rng, 2) ? n - 1 : rng_below(rng, n);

                for (size_t j = 0; j < n; j++)
                        for (size_t r = 0; r < c->R; r++) {
                                int d = 0;

                                if (kind == 0)
                                        d = j == top ? -1 : -2 - (int) rng_below(rng, 126);
                                else if (kind == 1)
                                        d = j == top ? 127 : -127 + (int) rng_below(rng, 254);
                                c->kt[q8_key(c, r, j0 + j)] = (uint8_t) (128 + s * d);
                        }
        }
}

static float q8_block_scale(struct dsa_test_rng *rng, bool extreme) {
        static const float far[] = { 0x1p120f, 0x1p100f, 0x1p-120f, 0x1p-140f, 0x1p-149f, FLT_MIN, FLT_MAX };
        const size_t r = rng_below(rng, 8);
        const float sign = rng_below(rng, 2) ? 1.0f : -1.0f;
        float v;

        if (r == 0)
                return sign * 0.0f;
        if (!extreme || r > 4)
                return dsa_test_rng_uniform(rng, -2.0f, 2.0f);
        v = far[rng_below(rng, ELEMENTSOF(far))];
        return sign * (r == 1 ? v : v * dsa_test_rng_uniform(rng, 0.5f, 1.0f));
}

static float q8_row_scale(struct dsa_test_rng *rng, bool extreme) {
        const size_t r = rng_below(rng, 8);
        float v = dsa_test_rng_uniform(rng, 1.0f / 64, 2.0f);

        if (r < 2 && !extreme)
                return 0.0f;
        if (r < 2)
                v *= r ? 0x1p60f : 0x1p-60f;
        return r == 2 ? -v : v;
}

static void q8_case_init(struct q8_case *c, struct dsa_test_rng *rng, size_t R, size_t Tk, size_t bk, size_t nq) {
        static const size_t qpads[] = { 0, 1, 3, 60 }, kpads[] = { 0, 1, 3, 64, 29 }, opads[] = { 0, 1, 2 };
        const unsigned style = (unsigned) rng_below(rng, 5);
        const bool front = rng_below(rng, 3) == 0, extreme = rng_below(rng, 4) == 0;
        size_t nqt, nkt;
        bool poison;

        *c = (struct q8_case) { .R = R, .Tk = Tk, .bk = bk, .nq = nq, .nb = (Tk + bk - 1) / bk };
        /* one row needs no row strides and one kt row (R = 4, bk = 1) no key stride: 0 then, now and again;
         * else the smallest stride (4 nb, pad 0) or past it */
        c->ldq = nq == 1 && rng_below(rng, 3) == 0 ? 0 : R + qpads[rng_below(rng, ELEMENTSOF(qpads))];
        c->ldk = R == 4 && bk == 1 && rng_below(rng, 2) ? 0 : 4 * c->nb + kpads[rng_below(rng, ELEMENTSOF(kpads))];
        c->ldo = nq == 1 && rng_below(rng, 3) == 0 ? 0 : c->nb + opads[rng_below(rng, ELEMENTSOF(opads))];
        /* exactly the bytes the contract lets the kernel read (the last of R/4 * bk kt rows ends at block nb's
         * last byte), ks one float a block */
        nqt = (nq - 1) * c->ldq + R;
        nkt = (R / 4 * bk - 1) * c->ldk + 4 * c->nb;
        c->qt = guarded_bytes_new(&c->gq, nqt, front);
        c->kt = guarded_bytes_new(&c->gk, nkt, front);
        c->qs = guarded_bytes_new(&c->gqs, nq * sizeof(float), front);
        c->ks = guarded_bytes_new(&c->gks, c->nb * sizeof(float), front);

        /* bytes in the gaps between rows are out of range: read as a query byte, they give -EINVAL */
        for (size_t t = 0; t < nqt; t++)
                c->qt[t] = c->ldq == 0 || t % c->ldq < R ? q8_query_byte(rng, style) : INT8_MIN;
        for (size_t t = 0; t < nkt; t++)
                c->kt[t] = q8_key_byte(rng, style);
        if (style == 2) {
                for (size_t i = 0; i < nq; i++) {
                        const int8_t v = rng_below(rng, 2) ? 63 : -63;
                        for (size_t r = 0; r < R; r++)
                                c->qt[i * c->ldq + r] = v;
                }
                for (size_t j = 0; j < Tk; j++) {
                        const uint8_t v = rng_below(rng, 2) ? 255 : 0;
                        for (size_t r = 0; r < R; r++)
                                c->kt[q8_key(c, r, j)] = v;
                }
        }
        if (style == 4)
                q8_signed_blocks(c, rng);
        /* the slots of the last block past Tk: poison, random or row 0's best key */
        poison = rng_below(rng, 2);
        for (size_t j = Tk; j < c->nb * bk; j++)
                for (size_t r = 0; r < R; r++) {
                        uint8_t v = (uint8_t) rng_below(rng, 256);

                        if (poison)
                                v = c->qt[r] > 0 ? 255 : c->qt[r] < 0 ? 1 : 128;
                        c->kt[q8_key(c, r, j)] = v;
                }
        for (size_t b = 0; b < c->nb; b++)
                c->ks[b] = q8_block_scale(rng, extreme);
        for (size_t i = 0; i < nq; i++)
                c->qs[i] = q8_row_scale(rng, extreme);
}

static void q8_case_done(struct q8_case *c) {
        guarded_free(&c->gq), guarded_free(&c->gk), guarded_free(&c->gqs), guarded_free(&c->gks);
}

/* Row i's exact integer score of key j. */
static int64_t q8_dot(const struct q8_case *c, size_t i, size_t j) {
        int64_t d = 0;

        for (size_t r = 0; r < c->R; r++)
                d += (int64_t) c->qt[i * c->ldq + r] * ((int64_t) c->kt[q8_key(c, r, j)] - 128);
        return d;
}

/* 0 or a normal float with room: where a product is one of these, fp32 rounds it to within 2^-24. */
static bool q8_normal(double x) {
        return x == 0 || (fabs(x) >= 0x1p-125 && fabs(x) <= 0x1p127);
}

/* What the oracle met, over all shapes: blocks whose product is -0 (the +0 rule decides
 * them), with a scale of +0 and a negative max, with a negative max, with a unique max at the last key of a
 * ragged last block (of them: at an even t and at an odd one, the first and the second key of an AVX-512
 * step of two; and in a block that is the only lane of the last chunk on both x86 variants, nb % 16 == 1),
 * and results that are +-inf or subnormal. */
static struct {
        size_t shapes, neg_zero, zero_scale_neg, neg, last_ragged, last_ragged_even, last_ragged_odd,
                last_ragged_alone, inf, subnormal;
} q8_seen;

/* The oracle, (nq, nb) each: m the max of the exact int64 sums of the block's keys, want32 the contract's
 * fp32 operations on it, qs[i] * (ks[b] * (float) m) in that order, a zero made +0; want64 the same in double,
 * or NAN where a product leaves q8_normal() (those are checked in bits only). */
static void oracle_q8(const struct q8_case *c, int64_t *m, float *want32, double *want64) {
        for (size_t i = 0; i < c->nq; i++)
                for (size_t b = 0; b < c->nb; b++) {
                        const size_t j0 = b * c->bk, j1 = MIN(c->Tk, j0 + c->bk), at = i * c->nb + b;
                        int64_t mx = INT64_MIN;
                        size_t top = j0, ntop = 0;
                        float p, r;
                        double p64;

                        for (size_t j = j0; j < j1; j++) {
                                const int64_t d = q8_dot(c, i, j);

                                assert_true(d > -(1 << 24) && d < (1 << 24)); /* (float) d is exact */
                                if (d > mx)
                                        mx = d, top = j, ntop = 0;
                                ntop += d == mx;
                        }
                        p = c->ks[b] * (float) mx;
                        r = c->qs[i] * p;
                        m[at] = mx;
                        want32[at] = r == 0.0f ? 0.0f : r;
                        p64 = (double) c->ks[b] * (double) mx; /* exact: 24 by 24 bits */
                        want64[at] = q8_normal(p64) && q8_normal(c->qs[i] * p64) ? c->qs[i] * p64 : NAN;

                        q8_seen.neg_zero += r == 0 && signbit(r);
                        q8_seen.zero_scale_neg += c->ks[b] == 0 && !signbit(c->ks[b]) && mx < 0;
                        q8_seen.neg += mx < 0;
                        if (top == c->Tk - 1 && ntop == 1 && c->Tk % c->bk) {
                                q8_seen.last_ragged++;
                                q8_seen.last_ragged_even += (top - j0) % 2 == 0;
                                q8_seen.last_ragged_odd += (top - j0) % 2 == 1;
                                q8_seen.last_ragged_alone += c->nb % 16 == 1;
                        }
                        q8_seen.inf += isinf(want32[at]) != 0; /* glibc's isinf(-inf) is -1 */
                        q8_seen.subnormal += fpclassify(want32[at]) == FP_SUBNORMAL;
                }
}

/* One shape through every variant, each bit for bit equal to the fp32 oracle (so +0 wherever the result is
 * a zero) and within LOWRANK_Q8_MAX_RERR of the double one where that one is kept. out is exactly
 * (nq - 1) * ldo + nb floats ending on or starting after a guard page, sentinels in the gaps between
 * rows. */
static void lowrank_q8_case(struct dsa_test_rng *rng, size_t R, size_t Tk, size_t bk, size_t nq, size_t case_no) {
        struct q8_case c;
        struct guarded go;
        size_t no;
        float *out, *want32;
        double *want64;
        int64_t *m;
        char shape[128];

        q8_case_init(&c, rng, R, Tk, bk, nq);
        no = (nq - 1) * c.ldo + c.nb;
        out = guarded_bytes_new(&go, no * sizeof(float), rng_below(rng, 2));
        want32 = dsa_test_falloc(nq * c.nb);
        want64 = malloc(nq * c.nb * sizeof(double));
        m = malloc(nq * c.nb * sizeof(int64_t));
        assert_non_null(want64);
        assert_non_null(m);
        oracle_q8(&c, m, want32, want64);
        snprintf(shape, sizeof(shape), "R=%zu Tk=%zu bk=%zu nq=%zu ldq=%zu ldk=%zu ldo=%zu case %zu", R, Tk, bk,
                 nq, c.ldq, c.ldk, c.ldo, case_no);
        for (size_t s = 0; s < n_isas; s++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[s]);

                dsa_test_fill(out, no, SENTINEL);
                assert_int_equal(ak->block_max_lowrank_q8(out, c.ldo, c.qt, c.ldq, c.qs, c.kt, c.ldk, c.ks, nq, bk,
                                                          Tk, R),
                                 0);
                for (size_t i = 0; i < nq; i++) {
                        for (size_t b = 0; b < c.nb; b++) {
                                const size_t at = i * c.nb + b;
                                const float got = out[i * c.ldo + b];

                                if (memcmp(&got, &want32[at], sizeof(float)) != 0) {
                                        printf("FAIL lowrank q8/%s %s: [%zu][%zu] got %a want %a (m %lld, ks[b] %a, "
                                               "qs[i] %a)\n", dsa_test_isa_names[isas[s]], shape, i, b, got,
                                               want32[at], (long long) m[at], c.ks[b], c.qs[i]);
                                        fail();
                                }
                                if (!isnan(want64[at]))
                                        assert_true(close_enough(K_LOWRANK, isas[s], shape, at, got, want64[at],
                                                                 LOWRANK_Q8_MAX_ERR, LOWRANK_Q8_MAX_RERR));
                        }
                        if (i + 1 < nq)
                                assert_true(sentinels_kept("lowrank q8 out", isas[s], shape, out + i * c.ldo + c.nb,
                                                           c.ldo - c.nb));
                }
        }
        q8_seen.shapes++;
        guarded_free(&go);
        free(want32), free(want64), free(m);
        q8_case_done(&c);
}

/* Ranks of one to four groups of four (the AVX-512 variant's unrolled G) and past them (its generic G).
 * The x86 driver takes the blocks in chunks of a vector's lanes (16 on AVX-512, 8 on AVX2): key counts and
 * bk give nb from 1 to 1501, below, at and past a chunk, multiples of 16, of 8 only and of neither, and
 * 16k + 1 (a last chunk of one lane, e.g. Tk 513, bk 32); bk 1 (one key a block), 2, odd and even (the
 * AVX-512 steps of two keys end on a pair or a lone key), dividing Tk or not (a ragged last block of 1 to
 * bk - 1 keys, its lane cut from the steps past them). nq runs through 1 .. 9, so row groups of four end
 * short in every way (the driver repeats a short group's last row), and up to 129: many groups over each
 * chunk. */
static void test_block_max_lowrank_q8(void **state) {
        static const size_t Rs[] = { 4, 8, 12, 16, 20, 64 };
        static const size_t Tks[] = { 1, 2, 15, 16, 17, 31, 33, 63, 64, 65, 255, 256, 257, 511, 512, 513, 700, 1500 };
        static const size_t bks[] = { 1, 2, 3, 16, 17, 31, 32, 33, 64, 100, 256, 513 };
        static const size_t tall[][4] = { /* R, Tk, bk, nq */
                { 8, 200, 32, 67 },   { 16, 700, 64, 70 },  { 64, 65, 16, 65 },  { 12, 513, 3, 66 },
                { 4, 1100, 33, 129 }, { 20, 1000, 17, 129 }, { 64, 3001, 2, 33 }, { 28, 257, 1, 127 },
        };
        struct dsa_test_rng rng = { 35 };
        size_t case_no = 0;

        for (size_t ri = 0; ri < ELEMENTSOF(Rs); ri++)
                for (size_t ti = 0; ti < ELEMENTSOF(Tks); ti++)
                        for (size_t bi = 0; bi < ELEMENTSOF(bks); bi++, case_no++)
                                lowrank_q8_case(&rng, Rs[ri], Tks[ti], bks[bi], 1 + case_no % 9, case_no);
        for (size_t t = 0; t < ELEMENTSOF(tall); t++, case_no++)
                lowrank_q8_case(&rng, tall[t][0], tall[t][1], tall[t][2], tall[t][3], case_no);
        printf("lowrank q8: %zu shapes through %zu variants bit for bit; blocks: %zu -0 before the + 0 (%zu of "
               "them +0 times a negative max), %zu negative maxima, %zu unique maxima at the last key of a ragged "
               "last block (%zu at an even t, %zu at an odd one, %zu a chunk's only lane), %zu +-inf, "
               "%zu subnormal\n",
               q8_seen.shapes, n_isas, q8_seen.neg_zero, q8_seen.zero_scale_neg, q8_seen.neg, q8_seen.last_ragged,
               q8_seen.last_ragged_even, q8_seen.last_ragged_odd, q8_seen.last_ragged_alone, q8_seen.inf,
               q8_seen.subnormal);
        /* the inputs made the cases they are there for */
        assert_true(q8_seen.neg_zero > 0 && q8_seen.zero_scale_neg > 0 && q8_seen.neg > 0);
        assert_true(q8_seen.last_ragged_even > 0 && q8_seen.last_ragged_odd > 0 && q8_seen.last_ragged_alone > 0);
        assert_true(q8_seen.inf > 0 && q8_seen.subnormal > 0);
}

/* block_max_lowrank_q8's definition (attention.h) for row i and block b, in the contract's fp32
 * operations, for the error test's small shapes. */
static float q8_by_definition(const int8_t *qt, size_t ldq, const float *qs, const uint8_t *kt, size_t ldk,
                              const float *ks, size_t i, size_t b, size_t bk, size_t Tk, size_t R) {
        int32_t mx = INT32_MIN;
        float p;

        for (size_t t = 0; t < bk && b * bk + t < Tk; t++) {
                int32_t d = 0;

                for (size_t r = 0; r < R; r++)
                        d += qt[i * ldq + r] * ((int32_t) kt[((r / 4) * bk + t) * ldk + 4 * b + r % 4] - 128);
                mx = MAX(mx, d);
        }
        p = qs[i] * (ks[b] * (float) mx);
        return p == 0.0f ? 0.0f : p;
}

/* -EINVAL and nothing written for each bad argument alone (the call with all of them good
 * succeeds, and every byte a bad rank or stride could make the kernel read is a valid one in the
 * buffers, so only the check can refuse it): ranks not a multiple of 4 or out of [4, 64], bk 0,
 * strides too small (ldk below 4 nb wherever there are several kt rows: R > 4, or R = 4 and
 * bk > 1), NULL pointers with work to do, a query byte outside [-63, 63] anywhere in the rows (the
 * first, the last, one in between); nothing to do is 0 and writes nothing. Bytes between query
 * rows are not read. The good calls give the definition's bits. One kt row (R = 4, bk = 1) reads
 * no key stride, one query row no query or output stride: the same bits as with them. */
static void test_block_max_lowrank_q8_errors(void **state) {
        enum { R = 16, RX = 68, T = 70, BK = 8, NQ = 5, NB = (T + BK - 1) / BK, LDQ = RX + 3, LDK = 4 * NB + 5,
               LDO = NB + 2 };
        static const size_t bad_at[] = { 0, 2 * LDQ + 7, (NQ - 1) * LDQ + R - 1 };
        static float spare[NQ * LDO];
        static const size_t bad_R[] = { 0, 1, 2, 3, 5, 6, 62, 65, RX };
        static int8_t qt[NQ * LDQ], qgap[NQ * LDQ];
        static uint8_t kt[RX / 4 * BK * LDK];
        float qs[NQ], ks[NB], out[NQ * LDO], good[NQ * LDO], one[4 * (NB + 1)];

        for (size_t t = 0; t < NQ * LDQ; t++) {
                qt[t] = (int8_t) ((int) ((t * 37) % 127) - 63);
                qgap[t] = t % LDQ < R ? qt[t] : INT8_MIN;
        }
        for (size_t t = 0; t < RX / 4 * BK * LDK; t++)
                kt[t] = (uint8_t) ((t * 101 + 7) % 256);
        for (size_t b = 0; b < NB; b++) /* one scale a block, 0 among them */
                ks[b] = (float) ((int) ((b * 37) % 11) - 5) / 4.0f;
        for (size_t i = 0; i < NQ; i++)
                qs[i] = 0.5f + (float) i;

        for (size_t s = 0; s < n_isas; s++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[s]);

#define Q8(out_, ldo_, qt_, ldq_, qs_, kt_, ldk_, ks_, nq_, bk_, Tk_, R_) \
        ak->block_max_lowrank_q8(out_, ldo_, qt_, ldq_, qs_, kt_, ldk_, ks_, nq_, bk_, Tk_, R_)
                dsa_test_fill(good, NQ * LDO, SENTINEL);
                assert_int_equal(Q8(good, LDO, qt, LDQ, qs, kt, LDK, ks, NQ, BK, T, R), 0);
                for (size_t i = 0; i < NQ; i++) {
                        for (size_t b = 0; b < NB; b++) {
                                const float want = q8_by_definition(qt, LDQ, qs, kt, LDK, ks, i, b, BK, T, R);

                                assert_memory_equal(&good[i * LDO + b], &want, sizeof(float));
                        }
                        assert_true(sentinels_kept("lowrank q8 out", isas[s], "errors", good + i * LDO + NB, 2));
                }
                /* the tightest output stride is good too (tight ldq and ldk: test_block_max_lowrank_q8) */
                dsa_test_fill(out, NQ * LDO, SENTINEL);
                assert_int_equal(Q8(out, NB, qt, LDQ, qs, kt, LDK, ks, NQ, BK, T, R), 0);
                for (size_t i = 0; i < NQ; i++)
                        assert_memory_equal(out + i * NB, good + i * LDO, NB * sizeof(float));
                /* the bytes between rows are not read (out of range there) */
                dsa_test_fill(out, NQ * LDO, SENTINEL);
                assert_int_equal(Q8(out, LDO, qgap, LDQ, qs, kt, LDK, ks, NQ, BK, T, R), 0);
                assert_memory_equal(out, good, NQ * LDO * sizeof(float));

                dsa_test_fill(out, NQ * LDO, SENTINEL);
                for (size_t t = 0; t < ELEMENTSOF(bad_R); t++)
                        assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, LDK, ks, NQ, BK, T, bad_R[t]), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, LDK, ks, NQ, 0, T, R), -EINVAL);
                /* ldk below 4 nb with several kt rows: R > 4 (bk 8 and 1), or R = 4 and bk > 1 (bk 8 and 2) */
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, 4 * NB - 1, ks, NQ, BK, T, R), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, 4 * NB - 1, ks, NQ, BK, T, 4), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, 4 * NB - 1, ks, NQ, 1, NB, 8), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, 0, ks, NQ, BK, T, 8), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, 0, ks, NQ, 2, 2 * NB, 4), -EINVAL);
                assert_int_equal(Q8(out, NB - 1, qt, LDQ, qs, kt, LDK, ks, NQ, BK, T, R), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, R - 1, qs, kt, LDK, ks, NQ, BK, T, R), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, R - 1, qs, kt, LDK, ks, 2, BK, T, R), -EINVAL);
                assert_int_equal(Q8(NULL, LDO, qt, LDQ, qs, kt, LDK, ks, NQ, BK, T, R), -EINVAL);
                assert_int_equal(Q8(out, LDO, NULL, LDQ, qs, kt, LDK, ks, NQ, BK, T, R), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, NULL, kt, LDK, ks, NQ, BK, T, R), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, NULL, LDK, ks, NQ, BK, T, R), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, LDK, NULL, NQ, BK, T, R), -EINVAL);
                assert_int_equal(Q8(NULL, LDO, qt, LDQ, qs, kt, LDK, ks, 1, 1, 1, 4), -EINVAL);
                /* every byte value at each place: outside [-63, 63] refused, inside taken (into spare) */
                for (size_t a = 0; a < ELEMENTSOF(bad_at); a++)
                        for (int v = -128; v < 128; v++) {
                                const int8_t keep = qt[bad_at[a]];
                                const bool bad = v < -63 || v > 63;

                                qt[bad_at[a]] = (int8_t) v;
                                assert_int_equal(Q8(bad ? out : spare, LDO, qt, LDQ, qs, kt, LDK, ks, NQ, BK, T, R),
                                                 bad ? -EINVAL : 0);
                                qt[bad_at[a]] = keep;
                        }
                /* the ranges of R and bk are checked whatever the work; nothing to do is 0 */
                assert_int_equal(Q8(NULL, 0, NULL, 0, NULL, NULL, 0, NULL, 0, BK, T, 6), -EINVAL);
                assert_int_equal(Q8(NULL, 0, NULL, 0, NULL, NULL, 0, NULL, NQ, 0, 0, R), -EINVAL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, LDK, ks, 0, BK, T, R), 0);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, LDK, ks, NQ, BK, 0, R), 0);
                assert_int_equal(Q8(NULL, 0, NULL, 0, NULL, NULL, 0, NULL, 0, BK, T, R), 0);
                assert_int_equal(Q8(NULL, 0, NULL, 0, NULL, NULL, 0, NULL, NQ, BK, 0, R), 0);
                assert_true(sentinels_kept("lowrank q8 errors out", isas[s], "", out, NQ * LDO));

                /* one row: no row strides (0), row 3 of the full call */
                dsa_test_fill(one, 4 * (NB + 1), SENTINEL);
                assert_int_equal(Q8(one, 0, qt + 3 * LDQ, 0, qs + 3, kt, LDK, ks, 1, BK, T, R), 0);
                assert_memory_equal(one, good + 3 * LDO, NB * sizeof(float));
                assert_true(sentinels_kept("lowrank q8 out", isas[s], "nq=1 ldo=0", one + NB, 3 * (NB + 1) + 1));
                /* the smallest key stride, 4 nb, several kt rows (R = 4, bk > 1): the definition's bits */
                dsa_test_fill(out, NQ * LDO, SENTINEL);
                assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, 4 * NB, ks, NQ, BK, T, 4), 0);
                for (size_t i = 0; i < NQ; i++)
                        for (size_t b = 0; b < NB; b++) {
                                const float want = q8_by_definition(qt, LDQ, qs, kt, 4 * NB, ks, i, b, BK, T, 4);

                                assert_memory_equal(&out[i * LDO + b], &want, sizeof(float));
                        }
                /* one kt row (R = 4, bk = 1: NB blocks of one key): no key stride (0), or one below 4 nb, as
                 * with 4 nb; that one against the definition in bits */
                dsa_test_fill(good, NQ * LDO, SENTINEL);
                assert_int_equal(Q8(good, LDO, qt, LDQ, qs, kt, 4 * NB, ks, NQ, 1, NB, 4), 0);
                for (size_t i = 0; i < NQ; i++)
                        for (size_t b = 0; b < NB; b++) {
                                const float want = q8_by_definition(qt, LDQ, qs, kt, 4 * NB, ks, i, b, 1, NB, 4);

                                assert_memory_equal(&good[i * LDO + b], &want, sizeof(float));
                        }
                for (size_t t = 0; t < 3; t++) {
                        dsa_test_fill(out, NQ * LDO, SENTINEL);
                        assert_int_equal(Q8(out, LDO, qt, LDQ, qs, kt, t == 0 ? 0 : t == 1 ? 3 : 4 * NB - 1, ks, NQ,
                                            1, NB, 4),
                                         0);
                        assert_memory_equal(out, good, NQ * LDO * sizeof(float));
                }
#undef Q8
        }
}

/* ---- The token scorer's key bytes from fp32 rows (keys_lowrank_q8). */

/* Round trip of finite keys, in double: |ks[b] (byte - 128) - x| <= ks[b] / 2 (1 + KEYS_Q8_RT_RERR) +
 * KEYS_Q8_RT_XERR |x| + KEYS_Q8_RT_TINY. round() is off by at most a half; ks = fl(1 / inv) and
 * p = fl(x inv) carry 2^-24 relative each, so ks p = x (1 + e), |e| <= 2^-23 + 2^-48: the |x| term
 * (up to 127 ks 2^-22 = 3e-5 ks, more than the relative slack alone allows where p is a half). A
 * block whose M is below 127 / FLT_MAX (3.7e-37) has 127 / M overflow, ks 0 and every byte 128
 * (keys_q8_byte): the absolute term, which also covers a subnormal ks. */
#define KEYS_Q8_RT_RERR 1e-5
#define KEYS_Q8_RT_XERR 0x1p-22
#define KEYS_Q8_RT_TINY 4e-37

/* What the oracle met over all calls: blocks whose M is 0, +inf, or so small that 127 / M
 * overflows, scales that are subnormal; components whose p is a half exactly (k + 0.5, of either
 * sign), 0.5 - 2^-25 itself; NaN, -0, subnormal and huge (>= 1e30, finite) components; bytes 1
 * and 255. */
static struct {
        size_t shapes, zero_blocks, inf_blocks, overflow_blocks, subnormal_ks, half_pos, half_neg, below_half,
                nan, neg_zero, subnormal_x, huge, b1, b255;
} keys_q8_seen;

/* The contract's byte of x in a block of factor inv: 128 + trunc(p +- 0.5f), p = fl(x inv) (the
 * product is exact in double, so rounding it to float gives fp32's product: never fused): halves
 * away from 0, and 0.5 - 2^-25 (0x1.fffffep-2) to +-1, its sum with 0.5f rounding to 1 in fp32
 * (no other p in [-128, 128] differs from a round half away from 0: checked over every float);
 * a NaN p (x NaN, or +-inf times inv 0) counts as 0. A block whose 127 / M overflows has inv 0,
 * so its p is 0 or NaN; the !isfinite guard is for that too. */
static uint8_t keys_q8_byte(float x, float inv) {
        const float p = (float) ((double) x * (double) inv);
        double r;

        keys_q8_seen.nan += isnan(x) != 0;
        keys_q8_seen.neg_zero += x == 0 && signbit(x);
        keys_q8_seen.subnormal_x += fpclassify(x) == FP_SUBNORMAL;
        keys_q8_seen.huge += isfinite(x) && fabsf(x) >= 1e30f;
        if (!isfinite(p))
                return 128;
        r = floor(fabs((double) p) + 0.5); /* exact: |p| < 2^8 */
        keys_q8_seen.half_pos += p > 0 && p - floor(p) == 0.5f;
        keys_q8_seen.half_neg += p < 0 && p - floor(p) == 0.5f;
        keys_q8_seen.below_half += fabsf(p) == 0x1.fffffep-2f;
        if (fabsf(p) == 0x1.fffffep-2f) /* 0.5 - 2^-25 + 0.5f rounds to 1 */
                r = 1;
        r = p < 0 ? -r : r;
        assert_true(r >= -127 && r <= 127);
        keys_q8_seen.b1 += r == -127;
        keys_q8_seen.b255 += r == 127;
        return (uint8_t) (128 + (int) r);
}

/* keys_lowrank_q8 by its contract (attention.h), written from the text, in double where it can be:
 * per block of bk keys from key 0, M the largest |x| over its keys' R components that are not NaN,
 * inv = fl(127 / M) (0 for M 0 or +inf; the quotient of two floats in double is correctly
 * rounded to fp32 by the cast, 53 >= 2 * 24 + 2), ks[b] = fl(1 / inv) (0 for inv 0), bytes by
 * keys_q8_byte, 128 for components R .. R4 - 1; component c of key b bk + t at row (c/4) bk + t,
 * byte 4b + c%4. Nothing else written. */
static void keys_q8_oracle(uint8_t *kt, size_t ldk, float *ks, const float *kp, size_t ldp, size_t n, size_t bk,
                           size_t R) {
        const size_t R4 = (R + 3) / 4 * 4;

        for (size_t b = 0; b * bk < n; b++) {
                const size_t j0 = b * bk, j1 = MIN(n, j0 + bk);
                double M = 0;
                float inv;

                for (size_t j = j0; j < j1; j++)
                        for (size_t c = 0; c < R; c++)
                                if (!isnan(kp[j * ldp + c]))
                                        M = MAX(M, fabs((double) kp[j * ldp + c]));
                inv = M == 0 || isinf(M) ? 0.0f : (float) (127.0 / M);
                keys_q8_seen.zero_blocks += M == 0;
                keys_q8_seen.inf_blocks += isinf(M) != 0;
                keys_q8_seen.overflow_blocks += isinf(inv) != 0;
                if (isinf(inv)) /* 127 / M overflows: inv 0 */
                        inv = 0.0f;
                ks[b] = inv == 0 ? 0.0f : (float) (1.0 / (double) inv);
                keys_q8_seen.subnormal_ks += fpclassify(ks[b]) == FP_SUBNORMAL;
                for (size_t j = j0; j < j1; j++)
                        for (size_t c = 0; c < R4; c++)
                                kt[((c / 4) * bk + j - j0) * ldk + 4 * b + c % 4] =
                                        c < R ? keys_q8_byte(kp[j * ldp + c], inv) : 128;
        }
}

/* One call's shape: keys [0, n) of kp (n, ldp), R floats each, into blocks [b0, b0 + nb) of a kt of
 * nkt bytes (row stride ldk) and a ks of nbt = b0 + nb floats, called with kt + 4 b0 and ks + b0 as
 * the engine does. */
struct keys_q8_call {
        size_t R, n, bk, b0, nb, nbt, ldp, ldk, nkt;
        const float *kp;
        char shape[160];
};

/* kt and ks (got) equal to want and wks in every byte, or a message naming the first byte that
 * differs: the block, key and component it holds (and x), or that the call should not write it. */
static bool keys_q8_same(const struct keys_q8_call *k, enum dsa_isa isa, const char *against, const uint8_t *kt,
                         const float *ks, const uint8_t *want, const float *wks) {
        const size_t rows = (k->R + 3) / 4 * k->bk;

        for (size_t i = 0; i < k->nkt; i++) {
                const size_t row = k->ldk ? i / k->ldk : 0, col = k->ldk ? i % k->ldk : i;
                const size_t b = col / 4 - k->b0, t = row % k->bk, c = row / k->bk * 4 + col % 4;

                if (kt[i] == want[i])
                        continue;
                if (row < rows && col >= 4 * k->b0 && col < 4 * k->nbt && b * k->bk + t < k->n)
                        printf("FAIL keys q8/%s vs %s %s: kt byte %zu (row %zu byte %zu: block %zu key %zu component "
                               "%zu%s, x %a) got %u want %u\n",
                               dsa_test_isa_names[isa], against, k->shape, i, row, col, b, b * k->bk + t, c,
                               c < k->R ? "" : " (padding)", c < k->R ? k->kp[(b * k->bk + t) * k->ldp + c] : 0.0f,
                               kt[i], want[i]);
                else
                        printf("FAIL keys q8/%s vs %s %s: kt byte %zu (row %zu byte %zu) is none of the call's keys "
                               "but was written: %u, was %u\n",
                               dsa_test_isa_names[isa], against, k->shape, i, row, col, kt[i], want[i]);
                return false;
        }
        for (size_t b = 0; b < k->nbt; b++)
                if (memcmp(&ks[b], &wks[b], sizeof(float)) != 0) {
                        printf("FAIL keys q8/%s vs %s %s: ks[%zu]%s got %a want %a\n", dsa_test_isa_names[isa], against,
                               k->shape, b, b < k->b0 ? " (before the call's blocks)" : "", ks[b], wks[b]);
                        return false;
                }
        return true;
}

/* The round trip of every finite component of a block with no NaN or inf (KEYS_Q8_RT_*). */
static bool keys_q8_round_trip(const struct keys_q8_call *k, const uint8_t *kt, const float *ks) {
        for (size_t b = 0; b < k->nb; b++) {
                const size_t j0 = b * k->bk, j1 = MIN(k->n, j0 + k->bk);
                const double s = ks[k->b0 + b];
                bool finite = true;

                for (size_t j = j0; j < j1; j++)
                        for (size_t c = 0; c < k->R; c++)
                                finite = finite && isfinite(k->kp[j * k->ldp + c]);
                for (size_t j = j0; finite && j < j1; j++)
                        for (size_t c = 0; c < k->R; c++) {
                                const double x = k->kp[j * k->ldp + c];
                                const int q = kt[((c / 4) * k->bk + j - j0) * k->ldk + 4 * (k->b0 + b) + c % 4] - 128;
                                const double err = fabs(s * q - x);
                                const double tol = s / 2 * (1 + KEYS_Q8_RT_RERR) + KEYS_Q8_RT_XERR * fabs(x) +
                                                   KEYS_Q8_RT_TINY;

                                if (!(err <= tol)) {
                                        printf("FAIL keys q8 round trip %s: block %zu key %zu component %zu x %a "
                                               "byte %d ks %a: |ks q - x| = %.3g > %.3g\n",
                                               k->shape, b, j, c, x, q + 128, s, err, tol);
                                        return false;
                                }
                        }
        }
        return true;
}

/* A sum of four uniforms: bell-shaped, mean 0, variance 1/3, tails at +-4. */
static float keys_q8_gauss(struct dsa_test_rng *rng) {
        float s = 0;

        for (int i = 0; i < 4; i++)
                s += dsa_test_rng_uniform(rng, -1.0f, 1.0f);
        return s;
}

/* A value x whose p = fl(x inv) is +-(k + 0.5), k in [0, 126], or a float next to it (one ulp
 * nearer 0 or farther), or +-(0.5 - 2^-25), when one of the floats next to t / inv has that
 * product (then the exact x inv is a half only when inv is a power of two: a fused multiply-add
 * would round other ones by the exact product); else the nearest try. */
static float keys_q8_half(struct dsa_test_rng *rng, float inv) {
        const size_t r = rng_below(rng, 8);
        float t = (float) rng_below(rng, 127) + 0.5f, x, up, down;

        if (r == 0)
                t = 0x1.fffffep-2f;
        else if (r == 1)
                t = nextafterf(t, 0.0f);
        else if (r == 2)
                t = nextafterf(t, INFINITY);
        t = rng_below(rng, 2) ? -t : t;
        x = up = down = (float) ((double) t / inv);
        for (int d = 0; d < 4 && (float) ((double) x * inv) != t; d++) {
                up = nextafterf(up, INFINITY), down = nextafterf(down, -INFINITY);
                x = (float) ((double) up * inv) == t ? up : down;
        }
        return x;
}

/* One block's keys (keys rows at stride ldp, R components each), in one of eight styles: 0, 1
 * bell-shaped at a scale of 2^-20 .. 2^20; 2 those with special values among them (+-0, NaN,
 * subnormals, FLT_MIN, +-1e30, +-FLT_MAX, and in a third of the blocks +-inf); 3 zeros of both
 * signs, some NaN; 4 halves with M = 127 2^e (inv = 2^-e exactly); 5 halves with any M (an inv
 * that is not a power of two); 6 tiny: subnormals, normals below 127 / FLT_MAX, or M just below
 * or above it; 7 huge (1e30 and FLT_MAX). In 4 and 5 one component is +-M. */
static void keys_q8_block(struct dsa_test_rng *rng, float *kp, size_t ldp, size_t keys, size_t R) {
        static const float special[] = { 0.0f,    -0.0f,   NAN,       0x1p-149f, -0x1p-140f, 1e-40f,   FLT_MIN,
                                         1e30f,   -1e30f,  FLT_MAX,   -FLT_MAX,  1.0f,       -3.0f,    INFINITY,
                                         -INFINITY };
        const size_t style = rng_below(rng, 8), nspecial = ELEMENTSOF(special) - (rng_below(rng, 3) ? 2 : 0);
        const float thresh = 127.0f / FLT_MAX;
        float scale = ldexpf(1.0f, (int) rng_below(rng, 41) - 20), M = 0, inv = 0;

        if (style == 4)
                M = ldexpf(127.0f, (int) rng_below(rng, 61) - 30);
        if (style == 5)
                M = ldexpf(dsa_test_rng_uniform(rng, 1.0f, 2.0f), (int) rng_below(rng, 25) - 12);
        if (style == 6) {
                const size_t t = rng_below(rng, 4);
                M = t == 0 ? 0x1p-130f : t == 1 ? 1e-37f : thresh * (t == 2 ? 0.999f : 1.001f);
        }
        inv = M > 0 ? 127.0f / M : 0.0f;
        for (size_t j = 0; j < keys; j++)
                for (size_t c = 0; c < R; c++) {
                        float *x = &kp[j * ldp + c];

                        switch (style) {
                        case 2:
                                *x = rng_below(rng, 2) ? special[rng_below(rng, nspecial)] : keys_q8_gauss(rng);
                                break;
                        case 3:
                                *x = rng_below(rng, 8) == 0 ? NAN : rng_below(rng, 2) ? 0.0f : -0.0f;
                                break;
                        case 4:
                        case 5:
                                *x = keys_q8_half(rng, inv);
                                break;
                        case 6:
                                *x = M * dsa_test_rng_uniform(rng, -1.0f, 1.0f);
                                break;
                        case 7:
                                *x = rng_below(rng, 16) == 0 ? (rng_below(rng, 2) ? FLT_MAX : -FLT_MAX)
                                                             : 1e30f * keys_q8_gauss(rng);
                                break;
                        default:
                                *x = scale * keys_q8_gauss(rng);
                        }
                }
        if (M > 0) /* the block's M exactly: one component +-M */
                kp[rng_below(rng, keys) * ldp + rng_below(rng, R)] = rng_below(rng, 2) ? M : -M;
}

/* One shape through every variant: the ref against the oracle bit for bit (bytes and scales, the
 * whole of kt and ks compared, so bytes a call must not write are checked too), every other
 * variant against the ref's bits, once whole and, for a few shapes with two blocks or more, as
 * two calls split at a block (kt + 4 b, ks + b, kp from key b bk on, as the engine's units). kp
 * is exactly its (n - 1) ldp + R floats, ending on a guard page (or, now and again, starting
 * after one), with poison between the rows (NaN, which the kernel would count as 0, and +-FLT_MAX
 * and -inf, which would change M); kt and ks are exactly the bytes and floats from block 0 to the
 * last one written, each ending on (or starting after) a guard page, random bytes between rows
 * and in front of b0. */
static void keys_q8_case(struct dsa_test_rng *rng, size_t R, size_t n, size_t bk, size_t case_no) {
        static const float poison[] = { NAN, FLT_MAX, -INFINITY, -FLT_MAX };
        static const size_t ppads[] = { 0, 1, 3, 5, 64 }, kpads[] = { 0, 0, 1, 3, 29 };
        const size_t R4 = (R + 3) / 4 * 4, rows = R4 / 4 * bk, nb = (n + bk - 1) / bk;
        const size_t b0 = rng_below(rng, 3) == 0 ? 1 + rng_below(rng, 3) : 0, nbt = b0 + nb;
        const size_t ldp = n == 1 && rng_below(rng, 3) == 0 ? 0 : R + ppads[rng_below(rng, ELEMENTSOF(ppads))];
        const size_t ldk = rows == 1 && rng_below(rng, 2) ? 0 : 4 * nbt + kpads[rng_below(rng, ELEMENTSOF(kpads))];
        const size_t np = n ? (n - 1) * ldp + R : 0, nkt = (rows - 1) * ldk + 4 * nbt;
        const bool front = rng_below(rng, 4) == 0;
        struct keys_q8_call k = { .R = R, .n = n, .bk = bk, .b0 = b0, .nb = nb, .nbt = nbt, .ldp = ldp, .ldk = ldk,
                                  .nkt = nkt };
        struct guarded gp, gk, gs;
        float *kp = guarded_bytes_new(&gp, np * sizeof(float), front);
        uint8_t *kt = guarded_bytes_new(&gk, nkt, !front);
        float *ks = guarded_bytes_new(&gs, nbt * sizeof(float), front);
        uint8_t *init = malloc(nkt + 1), *want = malloc(nkt + 1), *ref = malloc(nkt + 1);
        float *wks = dsa_test_falloc(nbt + 1), *rks = dsa_test_falloc(nbt + 1);

        assert_true(init && want && ref);
        for (size_t i = 0; i < np; i++)
                kp[i] = ldp && i % ldp >= R ? poison[i % ELEMENTSOF(poison)] : 0.0f;
        for (size_t b = 0; b < nb; b++)
                keys_q8_block(rng, kp + b * bk * ldp, ldp, MIN(bk, n - b * bk), R);
        for (size_t i = 0; i < nkt; i++)
                init[i] = (uint8_t) rng_below(rng, 256);
        k.kp = kp;
        snprintf(k.shape, sizeof(k.shape), "R=%zu n=%zu bk=%zu b0=%zu ldp=%zu ldk=%zu case %zu", R, n, bk, b0, ldp,
                 ldk, case_no);

        memcpy(want, init, nkt);
        dsa_test_fill(wks, nbt, SENTINEL);
        keys_q8_oracle(want + 4 * b0, ldk, wks + b0, kp, ldp, n, bk, R);
        assert_int_equal(isas[0], DSA_ISA_REF);
        for (size_t s = 0; s < n_isas; s++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[s]);
                const char *against = s == 0 ? "oracle" : "ref";

                memcpy(kt, init, nkt);
                dsa_test_fill(ks, nbt, SENTINEL);
                assert_int_equal(ak->keys_lowrank_q8(kt + 4 * b0, ldk, ks + b0, kp, ldp, n, bk, R), 0);
                assert_true(keys_q8_same(&k, isas[s], against, kt, ks, s == 0 ? want : ref, s == 0 ? wks : rks));
                if (s == 0) {
                        memcpy(ref, kt, nkt), memcpy(rks, ks, nbt * sizeof(float));
                        assert_true(keys_q8_round_trip(&k, kt, ks));
                }
                if (nb >= 2 && case_no % 4 == 0) {
                        const size_t sb = 1 + rng_below(rng, nb - 1), j = sb * bk;

                        memcpy(kt, init, nkt);
                        dsa_test_fill(ks, nbt, SENTINEL);
                        assert_int_equal(ak->keys_lowrank_q8(kt + 4 * b0, ldk, ks + b0, kp, ldp, j, bk, R), 0);
                        assert_int_equal(ak->keys_lowrank_q8(kt + 4 * (b0 + sb), ldk, ks + b0 + sb, kp + j * ldp, ldp,
                                                             n - j, bk, R),
                                         0);
                        assert_true(keys_q8_same(&k, isas[s], "ref (two calls split at a block)", kt, ks, ref, rks));
                }
        }
        keys_q8_seen.shapes++;
        guarded_free(&gp), guarded_free(&gk), guarded_free(&gs);
        free(init), free(want), free(ref), free(wks), free(rks);
}

/* Every rank 1 .. 64 (a vector's tail of 1 to 15 components on AVX-512, 1 to 7 on AVX2, and R4 - R
 * padding components of 0 to 3) with blocks of 1, 2, 3, 7, 16, 31, 32, 33, 64 and 256 keys; the key
 * counts go through n = 0, 1, below bk, a multiple of bk and past one (a short last block), each
 * kind meeting each bk across the ranks. */
static void test_keys_lowrank_q8(void **state) {
        static const size_t bks[] = { 1, 2, 3, 7, 16, 31, 32, 33, 64, 256 };
        struct dsa_test_rng rng = { 41 };
        size_t case_no = 0;

        for (size_t R = 1; R <= DSA_ATT_MAX_RANK_LR; R++)
                for (size_t bi = 0; bi < ELEMENTSOF(bks); bi++)
                        for (size_t a = 0; a < 2; a++, case_no++) {
                                const size_t bk = bks[bi], kind = (R + bi + 3 * a) % 5;
                                const size_t m = 1 + rng_below(&rng, bk >= 64 ? 2 : 4);
                                size_t n;

                                if (kind == 0)
                                        n = R % 2 ? 1 : 0;
                                else if (kind == 1)
                                        n = 1 + rng_below(&rng, bk); /* at most one block */
                                else if (kind == 2)
                                        n = m * bk;
                                else if (kind == 3)
                                        n = m * bk + 1 + rng_below(&rng, MAX(bk - 1, (size_t) 1));
                                else
                                        n = 1 + rng_below(&rng, 5 * bk);
                                keys_q8_case(&rng, R, n, bk, case_no);
                        }
        printf("keys q8: %zu shapes through %zu variants bit for bit; blocks with M 0: %zu, +inf: %zu, 127 / M "
               "overflowing: %zu, subnormal ks: %zu; components with p a half: %zu positive, %zu negative, %zu at "
               "0.5 - 2^-25, %zu NaN, %zu -0, %zu subnormal, %zu huge; bytes 1: %zu, 255: %zu\n",
               keys_q8_seen.shapes, n_isas, keys_q8_seen.zero_blocks, keys_q8_seen.inf_blocks,
               keys_q8_seen.overflow_blocks, keys_q8_seen.subnormal_ks, keys_q8_seen.half_pos, keys_q8_seen.half_neg,
               keys_q8_seen.below_half, keys_q8_seen.nan, keys_q8_seen.neg_zero, keys_q8_seen.subnormal_x,
               keys_q8_seen.huge, keys_q8_seen.b1, keys_q8_seen.b255);
        /* the inputs made the cases they are there for */
        assert_true(keys_q8_seen.zero_blocks > 0 && keys_q8_seen.inf_blocks > 0 && keys_q8_seen.overflow_blocks > 0);
        assert_true(keys_q8_seen.subnormal_ks > 0 && keys_q8_seen.half_pos > 0 && keys_q8_seen.half_neg > 0);
        assert_true(keys_q8_seen.below_half > 0 && keys_q8_seen.nan > 0 && keys_q8_seen.neg_zero > 0);
        assert_true(keys_q8_seen.subnormal_x > 0 && keys_q8_seen.huge > 0 && keys_q8_seen.b1 > 0);
        assert_true(keys_q8_seen.b255 > 0);
}

/* The contract's cases by hand, not through the oracle: one key a block (bk 1), R = 5 (bytes 5 .. 7
 * padding, 128), each table row its own block and scale; rows at a stride of 7 with NaN and FLT_MAX
 * between them. Then the rounding of every half k + 0.5 (k in [0, 126]) and of the floats on
 * either side of it, of both signs, at M = 127 2^e (inv = 2^-e exactly, ks = 2^e), in 64-component
 * keys: a half goes away from 0, its neighbours to the nearer integer. And "never fused": at M in
 * [100, 200) (inv = fl(127 / M), not a power of two), components +-x whose fp32 product fl(x inv) is
 * 0.5 - 2^-25 while the exact x inv is below it: trunc(p + 0.5f) gives +-1 (the contract),
 * a product fused into the add, trunc(fl(x inv + 0.5)), gives 0. That is the one place fusing
 * changes a byte: elsewhere p + 0.5 is exact or rounds on the same side of an integer as the exact
 * x inv + 0.5 does. */
static void test_keys_lowrank_q8_values(void **state) {
        enum { R = 5, LDP = 7, LDK = 64 };
        static const struct {
                float x[R];
                uint8_t want[8];
                float ks;
        } rows[] = {
                { { 0, 0, 0, 0, 0 }, { 128, 128, 128, 128, 128, 128, 128, 128 }, 0 }, /* M 0: inv 0, ks 0 */
                { { -0.0f, -0.0f, 0, -0.0f, 0 }, { 128, 128, 128, 128, 128, 128, 128, 128 }, 0 },
                { { NAN, NAN, NAN, -NAN, NAN }, { 128, 128, 128, 128, 128, 128, 128, 128 }, 0 },
                /* M 2 (NaN not in it): inv 63.5, -1 -> -63.5 -> -64 */
                { { NAN, 2, -1, 0, -0.0f }, { 128, 255, 64, 128, 128, 128, 128, 128 }, 2.0f / 127.0f },
                { { 127, 0.5f, -0.5f, 1.5f, -2.5f }, { 255, 129, 127, 130, 125, 128, 128, 128 }, 1 },
                { { -127, 0x1.fbfffep+5f, 0x1.fc0002p+5f, -0x1.fbfffep+5f, -0x1.fc0002p+5f }, /* 63.5 -+ an ulp */
                  { 1, 191, 192, 65, 64, 128, 128, 128 },
                  1 },
                { { 126.5f, -126.5f, 127, 0x1.fffffcp-2f, -0x1.fffffcp-2f }, /* 0.5 - 2^-24: 0 */
                  { 255, 1, 255, 128, 128, 128, 128, 128 },
                  1 },
                /* M +inf: inv 0, ks 0, every byte 128 (inf * 0 is NaN: 0) */
                { { INFINITY, 1, -1, 0, NAN }, { 128, 128, 128, 128, 128, 128, 128, 128 }, 0 },
                { { 3, NAN, -INFINITY, 0, 1e30f }, { 128, 128, 128, 128, 128, 128, 128, 128 }, 0 },
                /* inv = 127 2^-100 exactly: 2^99 -> 63.5 -> 64, 2^-149 -> 0 */
                { { 0x1p100f, -0x1p100f, 0x1p99f, 0x1p-149f, -0.0f },
                  { 255, 1, 192, 128, 128, 128, 128, 128 },
                  0x1p100f / 127.0f },
                { { FLT_MAX, -FLT_MAX, 1e30f, 1, -1 }, { 255, 1, 128, 128, 128, 128, 128, 128 }, 1 / (127 / FLT_MAX) },
                { { 1, 1e-40f, -1e-40f, 0x1p-149f, -0.0f }, { 255, 128, 128, 128, 128, 128, 128, 128 }, 1 / 127.0f },
                /* M just above 127 / FLT_MAX: inv finite, ks subnormal */
                { { 4e-37f, -4e-37f, 0, 1e-45f, 0 }, { 255, 1, 128, 128, 128, 128, 128, 128 }, 1 / (127 / 4e-37f) },
                /* M below 127 / FLT_MAX, subnormal or not: 127 / M overflows (the contract is silent; every
                 * variant gives ks 0 and bytes 128) */
                { { 1e-40f, -1e-40f, 0x1p-149f, 0, -0.0f }, { 128, 128, 128, 128, 128, 128, 128, 128 }, 0 },
                { { 3e-37f, -1e-37f, 1e-38f, 0, 0 }, { 128, 128, 128, 128, 128, 128, 128, 128 }, 0 },
        };
        enum { N = ELEMENTSOF(rows), KEYS = 2 * 127 * 3 / 63 + 1, KR = 64, NF = 8 };
        static const int es[] = { 0, -20, 20, -100, 100 };
        static float kp[N * LDP], sweep[KEYS * KR];
        static uint8_t kt[2 * LDK], skt[KR / 4 * LDK];
        float ks[N], sks[KEYS], fx[3 * NF];
        size_t nf = 0;

        for (size_t i = 0; i < N * LDP; i++)
                kp[i] = i % LDP < R ? rows[i / LDP].x[i % LDP] : i % 2 ? NAN : FLT_MAX;
        for (float M = 100.0f; nf < NF && M < 200.0f; M += 1.0f) {
                const float inv = 127.0f / M, p = 0x1.fffffep-2f;
                float y = (float) (p / (double) inv);

                for (int d = 0; d < 3; d++)
                        y = nextafterf(y, 0.0f);
                for (int d = 0; d < 7; d++, y = nextafterf(y, INFINITY))
                        if ((float) ((double) y * inv) == p && (double) y * inv < p) {
                                fx[3 * nf] = M, fx[3 * nf + 1] = y, fx[3 * nf + 2] = -y;
                                nf++;
                                break;
                        }
        }
        assert_int_equal(nf, NF); /* the values are there */
        for (size_t s = 0; s < n_isas; s++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[s]);
                const char *isa = dsa_test_isa_names[isas[s]];

                memset(kt, 0xa5, sizeof(kt));
                assert_int_equal(ak->keys_lowrank_q8(kt, LDK, ks, kp, LDP, N, 1, R), 0);
                for (size_t b = 0; b < N; b++) {
                        for (size_t c = 0; c < 8; c++)
                                if (kt[c / 4 * LDK + 4 * b + c % 4] != rows[b].want[c]) {
                                        printf("FAIL keys q8/%s values: row %zu component %zu (x %a) got %u want %u\n",
                                               isa, b, c, c < R ? rows[b].x[c] : 0.0f, kt[c / 4 * LDK + 4 * b + c % 4],
                                               rows[b].want[c]);
                                        fail();
                                }
                        if (memcmp(&ks[b], &rows[b].ks, sizeof(float)) != 0) {
                                printf("FAIL keys q8/%s values: row %zu ks got %a want %a\n", isa, b, ks[b], rows[b].ks);
                                fail();
                        }
                }

                for (size_t e = 0; e < ELEMENTSOF(es); e++) {
                        /* component 0 of each key +-127 2^e (M), then the halves, below, at and above, + and - */
                        size_t at = 0;

                        for (size_t j = 0; j < KEYS; j++)
                                for (size_t c = 0; c < KR; c++) {
                                        const size_t k = at / 6 % 127, side = at % 3;
                                        const float h = (float) k + 0.5f;
                                        float v = side == 0 ? nextafterf(h, 0) : side == 1 ? h : nextafterf(h, 256);

                                        if (c == 0) {
                                                v = j % 2 ? -127.0f : 127.0f;
                                        } else {
                                                v = at / 3 % 2 ? -v : v;
                                                at++;
                                        }
                                        sweep[j * KR + c] = ldexpf(v, es[e]);
                                }
                        memset(skt, 0xa5, sizeof(skt));
                        assert_int_equal(ak->keys_lowrank_q8(skt, LDK, sks, sweep, KR, KEYS, 1, KR), 0);
                        for (size_t j = 0; j < KEYS; j++) {
                                assert_true(sks[j] == ldexpf(1.0f, es[e]));
                                for (size_t c = 0; c < KR; c++) {
                                        const float x = sweep[j * KR + c], p = ldexpf(x, -es[e]);
                                        const double ap = fabs((double) p);
                                        int q = (int) floor(ap + 0.5); /* the contract's round: away from 0 */
                                        const uint8_t got = skt[c / 4 * LDK + 4 * j + c % 4];

                                        if (ap == 0x1.fffffep-2) /* + 0.5f rounds to 1 */
                                                q = 1;
                                        q = p < 0 ? -q : q;
                                        if (got != 128 + q) {
                                                printf("FAIL keys q8/%s rounding at M = 127 2^%d: key %zu component "
                                                       "%zu p %a (%.9g) got byte %u want %d\n",
                                                       isa, es[e], j, c, p, p, got, 128 + q);
                                                fail();
                                        }
                                }
                        }
                }

                memset(skt, 0xa5, sizeof(skt));
                assert_int_equal(ak->keys_lowrank_q8(skt, LDK, sks, fx, 3, NF, 1, 3), 0);
                for (size_t b = 0; b < NF; b++) {
                        const int h = 1; /* 0.5 - 2^-25 goes to +-1 */
                        const int want[4] = { 255, 128 + h, 128 - h, 128 };

                        for (size_t c = 0; c < 4; c++)
                                if (skt[4 * b + c] != want[c]) {
                                        printf("FAIL keys q8/%s near the half at M = %.9g: component %zu x %a (fp32 "
                                               "x inv %a, exact %.17g) got byte %u want %d\n",
                                               isa, fx[3 * b], c, c < 3 ? fx[3 * b + c] : 0.0f,
                                               c < 3 ? (float) ((double) fx[3 * b + c] * (127.0f / fx[3 * b])) : 0.0f,
                                               c < 3 ? (double) fx[3 * b + c] * (127.0f / fx[3 * b]) : 0.0,
                                               skt[4 * b + c], want[c]);
                                        fail();
                                }
                }
        }
}

/* -EINVAL and nothing written for each bad argument alone (the call with all of them good gives the
 * oracle's bits): bk 0, R 0 and past 64, NULL pointers with work to do, ldp below R with more than
 * one key, ldk below 4 nb with more than one kt row (R > 4, or bk > 1); R and bk are checked whatever
 * the work, and no keys is 0 and writes nothing, NULL pointers or not. One key needs no key stride
 * (ldp 0) and one kt row (R <= 4, bk 1) no row stride (ldk 0, or any): the same bytes as with
 * them, and the tightest strides (ldp = R, ldk = 4 nb) the same as wider ones. */
static void test_keys_lowrank_q8_errors(void **state) {
        enum { R = 13, R4 = 16, N = 40, BK = 7, NB = (N + BK - 1) / BK, LDP = R + 3, LDK = 4 * NB + 2, NKT = R4 / 4 * BK * LDK };
        static const size_t bad_R[] = { 0, 65, 66, 128, SIZE_MAX };
        static float kp[N * LDP], tight[N * R];
        static uint8_t kt[NKT], good[NKT], want[NKT], keep[NKT], one[NKT];
        float ks[NB + 1], gks[NB + 1], wks[NB + 1], kks[NB + 1], oks[N + 1];

        for (size_t i = 0; i < N * LDP; i++)
                kp[i] = i % LDP < R ? (float) ((int) ((i * 37) % 255) - 127) / 8.0f : NAN;
        for (size_t j = 0; j < N; j++)
                memcpy(tight + j * R, kp + j * LDP, R * sizeof(float));
        memset(good, 0xa5, NKT);
        dsa_test_fill(gks, NB + 1, SENTINEL);
        keys_q8_oracle(good, LDK, gks, kp, LDP, N, BK, R);

        for (size_t s = 0; s < n_isas; s++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[s]);

#define KQ(kt_, ldk_, ks_, kp_, ldp_, n_, bk_, R_) ak->keys_lowrank_q8(kt_, ldk_, ks_, kp_, ldp_, n_, bk_, R_)
                memset(kt, 0xa5, NKT);
                dsa_test_fill(ks, NB + 1, SENTINEL);
                assert_int_equal(KQ(kt, LDK, ks, kp, LDP, N, BK, R), 0);
                assert_memory_equal(kt, good, NKT);
                assert_memory_equal(ks, gks, sizeof(ks));
                /* the tightest strides: ldp = R, ldk = 4 nb */
                memset(kt, 0xa5, NKT);
                assert_int_equal(KQ(kt, 4 * NB, ks, tight, R, N, BK, R), 0);
                for (size_t row = 0; row < R4 / 4 * BK; row++)
                        assert_memory_equal(kt + row * 4 * NB, good + row * LDK, 4 * NB);
                assert_memory_equal(ks, gks, sizeof(ks));

                memset(kt, 0x5a, NKT);
                dsa_test_fill(ks, NB + 1, -SENTINEL);
                memcpy(keep, kt, NKT), memcpy(kks, ks, sizeof(ks));
                assert_int_equal(KQ(kt, LDK, ks, kp, LDP, N, 0, R), -EINVAL);
                for (size_t t = 0; t < ELEMENTSOF(bad_R); t++) {
                        assert_int_equal(KQ(kt, LDK, ks, kp, LDP, N, BK, bad_R[t]), -EINVAL);
                        assert_int_equal(KQ(kt, LDK, ks, kp, LDP, 1, 1, bad_R[t]), -EINVAL);
                }
                assert_int_equal(KQ(NULL, LDK, ks, kp, LDP, N, BK, R), -EINVAL);
                assert_int_equal(KQ(kt, LDK, NULL, kp, LDP, N, BK, R), -EINVAL);
                assert_int_equal(KQ(kt, LDK, ks, NULL, LDP, N, BK, R), -EINVAL);
                assert_int_equal(KQ(NULL, 0, ks, kp, 0, 1, 1, 1), -EINVAL);
                assert_int_equal(KQ(kt, 0, NULL, kp, 0, 1, 1, 1), -EINVAL);
                assert_int_equal(KQ(kt, 0, ks, NULL, 0, 1, 1, 1), -EINVAL);
                /* ldp below R with two keys or more */
                assert_int_equal(KQ(kt, LDK, ks, kp, R - 1, N, BK, R), -EINVAL);
                assert_int_equal(KQ(kt, LDK, ks, kp, R - 1, 2, BK, R), -EINVAL);
                assert_int_equal(KQ(kt, LDK, ks, kp, 0, 2, BK, R), -EINVAL);
                assert_int_equal(KQ(kt, LDK, ks, kp, 0, 2, 1, 1), -EINVAL);
                /* ldk below 4 nb with several kt rows: R > 4 (bk 7 and 1), or R <= 4 and bk > 1 */
                assert_int_equal(KQ(kt, 4 * NB - 1, ks, kp, LDP, N, BK, R), -EINVAL);
                assert_int_equal(KQ(kt, 4 * N - 1, ks, kp, LDP, N, 1, 5), -EINVAL);
                assert_int_equal(KQ(kt, 0, ks, kp, LDP, N, 1, 5), -EINVAL);
                assert_int_equal(KQ(kt, 4 * ((N + 1) / 2) - 1, ks, kp, LDP, N, 2, 4), -EINVAL);
                assert_int_equal(KQ(kt, 4 * ((N + 1) / 2) - 1, ks, kp, LDP, N, 2, 1), -EINVAL);
                assert_int_equal(KQ(kt, 3, ks, kp, LDP, BK, BK, 3), -EINVAL); /* one block, BK rows */
                /* R and bk whatever the work; no keys is 0, NULL pointers or not */
                assert_int_equal(KQ(NULL, 0, NULL, NULL, 0, 0, 0, R), -EINVAL);
                assert_int_equal(KQ(NULL, 0, NULL, NULL, 0, 0, BK, 0), -EINVAL);
                assert_int_equal(KQ(NULL, 0, NULL, NULL, 0, 0, BK, 65), -EINVAL);
                assert_int_equal(KQ(NULL, 0, NULL, NULL, 0, 0, BK, R), 0);
                assert_int_equal(KQ(kt, 0, ks, kp, 0, 0, BK, R), 0);
                assert_int_equal(KQ(kt, LDK, ks, kp, LDP, 0, 1, 1), 0);
                assert_memory_equal(kt, keep, NKT);
                assert_memory_equal(ks, kks, sizeof(ks));

                /* one key: no key stride (0 or below R); block 0 of that one key by the oracle */
                memset(want, 0x5a, NKT);
                dsa_test_fill(wks, NB + 1, SENTINEL);
                keys_q8_oracle(want, LDK, wks, kp, 0, 1, BK, R);
                for (size_t t = 0; t < 2; t++) {
                        memset(kt, 0x5a, NKT);
                        dsa_test_fill(ks, NB + 1, SENTINEL);
                        assert_int_equal(KQ(kt, LDK, ks, kp, t ? R - 1 : 0, 1, BK, R), 0);
                        assert_memory_equal(kt, want, NKT);
                        assert_memory_equal(ks, wks, sizeof(ks));
                }
                /* one kt row (R <= 4, bk 1: N blocks of one key): the oracle's bytes with ldk 4 N, and the
                 * same with no row stride (0, 3 or 4 N - 1) */
                for (size_t r = 1; r <= 4; r++) {
                        memset(one, 0x5a, NKT);
                        dsa_test_fill(oks, N + 1, SENTINEL);
                        keys_q8_oracle(one, 4 * N, oks, kp, LDP, N, 1, r);
                        for (size_t t = 0; t < 4; t++) {
                                float tks[N + 1];

                                memset(kt, 0x5a, NKT);
                                dsa_test_fill(tks, N + 1, SENTINEL);
                                assert_int_equal(KQ(kt, t == 0 ? 4 * N : t == 1 ? 0 : t == 2 ? 3 : 4 * N - 1, tks,
                                                    kp, LDP, N, 1, r),
                                                 0);
                                assert_memory_equal(kt, one, NKT);
                                assert_memory_equal(tks, oks, sizeof(tks));
                        }
                }
#undef KQ
        }
}

/* ---- Errors: -EINVAL, nothing written. */

static void test_errors(void **state) {
        enum { HS = 8, T = 70 };
        static float q[T * HS], k[T * HS], v[T * HS];
        const uint32_t up[] = { 0, 1 }, dup[] = { 0, 0 }, down[] = { 1, 0 };
        float *scratch = dsa_test_falloc(dsa_attention_blocks_scratch(DSA_ATT_MAX_BK, DSA_ATT_MAX_HS));
        float *lscratch = dsa_test_falloc(dsa_attention_linear_scratch(DSA_ATT_MAX_HS));
        float out[T * HS], lse[T], mass[2];

        assert_int_equal(dsa_attention_blocks_scratch(0, 32), SIZE_MAX);
        assert_int_equal(dsa_attention_blocks_scratch(DSA_ATT_MAX_BK + 1, 32), SIZE_MAX);
        assert_int_equal(dsa_attention_blocks_scratch(64, 0), SIZE_MAX);
        assert_int_equal(dsa_attention_blocks_scratch(64, DSA_ATT_MAX_HS + 1), SIZE_MAX);
        assert_int_equal(dsa_attention_linear_scratch(0), SIZE_MAX);
        assert_int_equal(dsa_attention_linear_scratch(DSA_ATT_MAX_HS + 1), SIZE_MAX);
        /* O(W HS + nq W), W = max(bk, DSA__ATT_SPAN), whatever Tk: about 277 KiB at bk 64 and
         * bk 256 alike (W = 512), HS 32 */
        assert_true(dsa_attention_blocks_scratch(64, 32) < 70 * 1024);
        assert_true(dsa_attention_blocks_scratch(256, 32) == dsa_attention_blocks_scratch(64, 32));

        for (size_t s = 0; s < n_isas; s++) {
                const struct dsa_attention_kernels *kt = dsa_attention_kernels_for(isas[s]);

#define BLOCKS(out_, q_, ldq_, k_, v_, nq_, pos0_, bl_, nb_, bk_, Tk_, HS_, lse_, sc_)                     \
        kt->blocks_f32(out_, HS, q_, ldq_, k_, HS, v_, HS, nq_, pos0_, bl_, nb_, bk_, Tk_, HS_, 1.0f, true, lse_, sc_)
                dsa_test_fill(out, T * HS, SENTINEL);
                dsa_test_fill(lse, T, SENTINEL);
                dsa_test_fill(mass, 2, SENTINEL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, DSA_ATT_BLOCK + 1, 0, up, 2, 64, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, 4, 0, up, 2, 0, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, 4, 0, up, 2, DSA_ATT_MAX_BK + 1, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, 4, 0, up, 2, 64, T, 0, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, 4, 0, up, 2, 64, T, DSA_ATT_MAX_HS + 1, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, 4, 0, dup, 2, 64, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, 4, 0, down, 2, 64, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, 4, 0, NULL, 2, 64, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS - 1, k, v, 4, 0, up, 2, 64, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, NULL, HS, k, v, 4, 0, up, 2, 64, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, NULL, v, 4, 0, up, 2, 64, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, NULL, 4, 0, up, 2, 64, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, 4, 0, up, 2, 64, T, HS, lse, NULL), -EINVAL);
                assert_int_equal(BLOCKS(NULL, q, HS, k, v, 4, 0, up, 2, 64, T, HS, lse, scratch), -EINVAL);
                assert_int_equal(BLOCKS(out, q, HS, k, v, 4, SIZE_MAX - 2, up, 2, 64, T, HS, lse, scratch), -EINVAL);
                /* nothing to do is not an error */
                assert_int_equal(BLOCKS(out, q, HS, k, v, 0, 0, up, 2, 64, T, HS, lse, scratch), 0);
#undef BLOCKS
                assert_int_equal(kt->block_mass_f32(mass, q, HS, k, HS, 4, 0, down, 2, 64, T, HS, 1.0f, true, lse, scratch), -EINVAL);
                assert_int_equal(kt->block_mass_f32(NULL, q, HS, k, HS, 4, 0, up, 2, 64, T, HS, 1.0f, true, lse, scratch), -EINVAL);
                assert_int_equal(kt->block_mass_f32(mass, q, HS, k, HS, 4, 0, up, 2, 64, T, HS, 1.0f, true, NULL, scratch), -EINVAL);
                assert_int_equal(kt->linear_f32(out, HS, q, HS, k, HS, v, HS, T, 0, true, lscratch), -EINVAL);
                assert_int_equal(kt->linear_f32(out, HS, q, HS, k, HS, v, HS, T, DSA_ATT_MAX_HS + 1, true, lscratch), -EINVAL);
                assert_int_equal(kt->linear_f32(out, HS - 1, q, HS, k, HS, v, HS, T, HS, true, lscratch), -EINVAL);
                assert_int_equal(kt->linear_f32(out, HS, q, HS, k, HS, NULL, HS, T, HS, true, lscratch), -EINVAL);
                assert_int_equal(kt->linear_f32(out, HS, q, HS, k, HS, v, HS, T, HS, true, NULL), -EINVAL);
                assert_int_equal(kt->pool_blocks_f32(out, HS, q, HS, T, 0, HS), -EINVAL);
                assert_int_equal(kt->pool_blocks_f32(out, HS, q, HS - 1, T, 8, HS), -EINVAL);
                assert_int_equal(kt->pool_blocks_f32(out, HS, NULL, HS, T, 8, HS), -EINVAL);
                assert_true(sentinels_kept("errors out", isas[s], "", out, T * HS));
                assert_true(sentinels_kept("errors lse", isas[s], "", lse, T));
                assert_true(sentinels_kept("errors mass", isas[s], "", mass, 2));
        }
        free(scratch), free(lscratch);
}

/* pack_kv_f32 and blocks_packed_f32: -EINVAL and nothing written, as blocks_f32. */
static void test_packed_errors(void **state) {
        enum { HS = 8, T = 70 };
        static float q[T * HS], k[T * HS], v[T * HS];
        const uint32_t up[] = { 0, 1 }, dup[] = { 0, 0 }, down[] = { 1, 0 };
        const size_t n = dsa_attention_packed_floats(T, HS), n1 = dsa_attention_packed_floats(1, HS);
        float *kv = aligned_alloc(64, n * sizeof(float)), *kv1 = aligned_alloc(64, 2 * n1 * sizeof(float));
        float *scratch = dsa_test_falloc(dsa_attention_blocks_scratch(DSA_ATT_MAX_BK, DSA_ATT_MAX_HS));
        float out[T * HS], lse[T], bias[T] = { 0 };

        assert_true(kv && kv1);
        for (size_t i = 0; i < T * HS; i++)
                q[i] = (float) ((i * 7) % 13) / 13.0f, k[i] = (float) ((i * 5) % 11) / 11.0f, v[i] = (float) (i % 9) - 4.0f;
        for (size_t s = 0; s < n_isas; s++) {
                const struct dsa_attention_kernels *kt = dsa_attention_kernels_for(isas[s]);

#define PACK(kv_, k_, ldk_, v_, ldv_, Tk_, HS_) kt->pack_kv_f32(kv_, k_, ldk_, v_, ldv_, Tk_, HS_, 0.5f)
                dsa_test_fill(kv, n, SENTINEL);
                assert_int_equal(PACK(kv, k, HS, v, HS, T, 0), -EINVAL);
                assert_int_equal(PACK(kv, k, HS, v, HS, T, DSA_ATT_MAX_HS + 1), -EINVAL);
                assert_int_equal(PACK(kv, k, HS, v, HS, 0, 0), -EINVAL);
                assert_int_equal(PACK(NULL, k, HS, v, HS, T, HS), -EINVAL);
                assert_int_equal(PACK(kv, NULL, HS, v, HS, T, HS), -EINVAL);
                assert_int_equal(PACK(kv, k, HS, NULL, HS, T, HS), -EINVAL);
                assert_int_equal(PACK(kv, k, HS - 1, v, HS, T, HS), -EINVAL);
                assert_int_equal(PACK(kv, k, HS, v, HS - 1, T, HS), -EINVAL);
                assert_int_equal(PACK(kv, k, HS, v, HS, 2, 0), -EINVAL);
                /* no keys: nothing to pack, nothing written, no pointer needed */
                assert_int_equal(PACK(kv, k, HS, v, HS, 0, HS), 0);
                assert_int_equal(PACK(NULL, NULL, 0, NULL, 0, 0, HS), 0);
                assert_true(sentinels_kept("pack kv", isas[s], "errors", kv, n));
                /* one key needs no row strides: the same as with them */
                dsa_test_fill(kv1, 2 * n1, SENTINEL);
                assert_int_equal(PACK(kv1, k, 0, v, 0, 1, HS), 0);
                assert_int_equal(PACK(kv1 + n1, k, HS, v, HS, 1, HS), 0);
                assert_memory_equal(kv1, kv1 + n1, n1 * sizeof(float));
#undef PACK

                assert_int_equal(kt->pack_kv_f32(kv, k, HS, v, HS, T, HS, 0.5f), 0);
#define PACKED(out_, ldo_, q_, ldq_, nq_, pos0_, kv_, bias_, bl_, nb_, bk_, Tk_, HS_, sc_) \
        kt->blocks_packed_f32(out_, ldo_, q_, ldq_, nq_, pos0_, kv_, bias_, bl_, nb_, bk_, Tk_, HS_, true, NULL, lse, sc_)
                dsa_test_fill(out, T * HS, SENTINEL);
                dsa_test_fill(lse, T, SENTINEL);
                assert_int_equal(PACKED(out, HS, q, HS, DSA_ATT_BLOCK + 1, 0, kv, NULL, up, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, kv, NULL, up, 2, 0, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, kv, NULL, up, 2, DSA_ATT_MAX_BK + 1, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, kv, NULL, up, 2, 64, T, 0, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, kv, NULL, up, 2, 64, T, DSA_ATT_MAX_HS + 1, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, kv, NULL, dup, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, kv, bias, down, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, kv, NULL, NULL, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS - 1, 4, 0, kv, NULL, up, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS - 1, q, HS, 4, 0, kv, NULL, up, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, NULL, HS, 4, 0, kv, NULL, up, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, NULL, NULL, up, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, NULL, bias, up, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, kv, NULL, up, 2, 64, T, HS, NULL), -EINVAL);
                assert_int_equal(PACKED(NULL, HS, q, HS, 4, 0, kv, NULL, up, 2, 64, T, HS, scratch), -EINVAL);
                assert_int_equal(PACKED(out, HS, q, HS, 4, SIZE_MAX - 2, kv, NULL, up, 2, 64, T, HS, scratch), -EINVAL);
                /* nothing to do is not an error, and writes nothing */
                assert_int_equal(PACKED(out, HS, q, HS, 0, 0, kv, NULL, up, 2, 64, T, HS, scratch), 0);
                assert_int_equal(PACKED(NULL, 0, NULL, 0, 0, 0, kv, NULL, up, 2, 64, T, HS, scratch), 0);
                assert_true(sentinels_kept("errors packed out", isas[s], "", out, T * HS));
                assert_true(sentinels_kept("errors packed lse", isas[s], "", lse, T));
                /* no kv needed without keys or without blocks: every row sees nothing */
                assert_int_equal(PACKED(out, HS, q, HS, 4, 0, NULL, NULL, up, 2, 64, 0, HS, scratch), 0);
                assert_int_equal(PACKED(out + 4 * HS, HS, q, HS, 4, 0, NULL, NULL, up, 0, 64, T, HS, scratch), 0);
                for (size_t i = 0; i < 8 * HS; i++)
                        assert_true(out[i] == 0);
                for (size_t i = 0; i < 4; i++)
                        assert_true(lse[i] == -INFINITY);
                assert_true(sentinels_kept("errors packed out", isas[s], "no keys", out + 8 * HS, (T - 8) * HS));
                assert_true(sentinels_kept("errors packed lse", isas[s], "no keys", lse + 4, T - 4));
#undef PACKED

                /* extra keys need kv and bias, j0 <= n <= Tk <= DSA_ATT_MAX_EXTRA; with the list or without */
                const struct dsa_attention_extra bad[] = {
                        { NULL, bias, 1, T, 0 }, { kv, NULL, 1, T, 0 }, { kv, bias, T + 1, T, 0 }, { kv, bias, 1, 0, 0 },
                        { kv, bias, 1, (size_t) DSA_ATT_MAX_EXTRA + 1, 0 }, { kv, bias, 1, T, 2 },
                }, none[] = { { NULL, NULL, 0, 0, 0 }, { NULL, NULL, 0, T, 0 }, { NULL, NULL, 3, T, 3 } };
                dsa_test_fill(out, T * HS, SENTINEL);
                dsa_test_fill(lse, T, SENTINEL);
                for (size_t e = 0; e < ELEMENTSOF(bad); e++)
                        for (size_t nb = 0; nb <= 2; nb += 2)
                                assert_int_equal(kt->blocks_packed_f32(out, HS, q, HS, 4, 0, kv, NULL, up, nb, 64, T,
                                                                       HS, e % 2, &bad[e], lse, scratch),
                                                 -EINVAL);
                assert_true(sentinels_kept("errors extra out", isas[s], "", out, T * HS));
                assert_true(sentinels_kept("errors extra lse", isas[s], "", lse, T));
                /* n = 0: none, whatever kv, bias and Tk */
                for (size_t e = 0; e < ELEMENTSOF(none); e++)
                        assert_int_equal(kt->blocks_packed_f32(out, HS, q, HS, 4, 0, kv, NULL, up, 2, 64, T, HS, true,
                                                               &none[e], lse, scratch),
                                         0);
        }
        free(kv), free(kv1), free(scratch);
}

/* ---- pack_kv_rows_f32: a sequence packed in pieces, in any order. */

#define PACK_MAX_PIECES 48 /* pack_cuts' most: 2 ceil(600 / 32) + 1 */

/* Cuts [0, Tk) at random multiples of 32 into pieces of 32 keys, up to 192, or none (never two
 * empty ones in a row), the last ending at Tk: piece p is [cut[p], cut[p + 1]). Returns how
 * many. */
static size_t pack_cuts(struct dsa_test_rng *rng, size_t Tk, size_t *cut) {
        size_t n = 0;

        cut[0] = 0;
        while (cut[n] < Tk) {
                const size_t r = rng_below(rng, 4);
                size_t step = r == 0 ? 0 : r == 1 ? 32 : 32 * (1 + rng_below(rng, 6));

                if (step == 0 && n > 0 && cut[n] == cut[n - 1])
                        step = 32;
                assert_true(n < PACK_MAX_PIECES);
                cut[n + 1] = MIN(cut[n] + step, Tk);
                n++;
        }
        return n;
}

/* Pieces never share a K panel (NR <= 32 divides their start) nor a V row, so each float of the
 * layout belongs to at most one piece: its keys' K panels (with the last panel's zero padding
 * past Tk, written by the piece ending at Tk) and their V rows (with the zero columns past HS);
 * floats no piece owns (avx2's K panels past roundup(Tk, 16), V columns past roundup(HS, NR))
 * are written by none. So with piece P packed alone into C and every other piece into D, both
 * NaN before: no float is written in both, each written one holds the whole pack's (A's) bits,
 * and A is NaN where neither wrote. And in every layout P's K floats lie in
 * [j0 HS, roundup(j1, 32) HS). */
static bool pack_rows_split(enum dsa_isa isa, const char *shape, const float *A, const float *C, const float *D,
                            size_t n, size_t vkt, size_t j0, size_t j1, size_t HS) {
        for (size_t i = 0; i < n; i++) {
                const bool wc = !isnan(C[i]), wd = !isnan(D[i]);
                const bool k_out = i < vkt && (i < j0 * HS || i >= (j1 + 31) / 32 * 32 * HS);

                if ((wc && wd) || (wc && k_out) || (wc || wd ? memcmp(wc ? &C[i] : &D[i], &A[i], sizeof(float)) != 0
                                                              : !isnan(A[i]))) {
                        printf("FAIL pack rows/%s %s piece [%zu, %zu): float %zu piece %.9g rest %.9g whole %.9g\n",
                               dsa_test_isa_names[isa], shape, j0, j1, i, C[i], D[i], A[i]);
                        return false;
                }
        }
        return true;
}

/* Bad ranges and arguments: -EINVAL and kv untouched; an empty piece needs no pointers; one key
 * needs no row strides. */
static void pack_rows_errors(const struct dsa_attention_kernels *kt) {
        enum { HS = 8, T = 70 };
        static float k[T * HS], v[T * HS];
        const size_t n = dsa_attention_packed_floats(T, HS), n1 = dsa_attention_packed_floats(1, HS);
        struct guarded g;
        float *kv = guarded_new(&g, n);

        for (size_t i = 0; i < T * HS; i++)
                k[i] = (float) ((i * 5) % 11) / 11.0f, v[i] = (float) (i % 9) - 4.0f;
        dsa_test_fill(kv, n, SENTINEL);
#define ROWS(kv_, k_, ldk_, v_, ldv_, Tk_, j0_, j1_, HS_) \
        kt->pack_kv_rows_f32(kv_, k_, ldk_, v_, ldv_, Tk_, j0_, j1_, HS_, 0.5f)
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, 16, 32, HS), -EINVAL);     /* j0 % 32 */
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, T, T, HS), -EINVAL);       /* empty, but j0 % 32 */
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, 0, 40, HS), -EINVAL);      /* j1 % 32, j1 != Tk */
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, 64, 32, HS), -EINVAL);     /* j0 > j1 */
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, 64, 96, HS), -EINVAL);     /* j1 > Tk */
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, 64, T + 1, HS), -EINVAL);
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, 0, 32, 0), -EINVAL);
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, 32, 32, 0), -EINVAL);      /* HS: even with no keys */
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, 32, 32, DSA_ATT_MAX_HS + 1), -EINVAL);
        assert_int_equal(ROWS(NULL, k, HS, v, HS, T, 32, 64, HS), -EINVAL);
        assert_int_equal(ROWS(kv, NULL, HS, v, HS, T, 32, 64, HS), -EINVAL);
        assert_int_equal(ROWS(kv, k, HS, NULL, HS, T, 32, 64, HS), -EINVAL);
        assert_int_equal(ROWS(kv, k, HS - 1, v, HS, T, 32, 64, HS), -EINVAL);
        assert_int_equal(ROWS(kv, k, HS, v, HS - 1, T, 32, 64, HS), -EINVAL);
        assert_int_equal(ROWS(NULL, NULL, 0, NULL, 0, T, 32, 32, HS), 0);
        assert_int_equal(ROWS(NULL, NULL, 0, NULL, 0, 0, 0, 0, HS), 0);
        assert_int_equal(ROWS(kv, k, HS, v, HS, T, 64, 64, HS), 0);
        assert_true(sentinels_kept("pack rows", kt->isa, "errors", kv, n));
        assert_int_equal(ROWS(kv, k, 0, v, 0, 1, 0, 1, HS), 0);
        assert_int_equal(kt->pack_kv_f32(kv + n1, k, HS, v, HS, 1, HS, 0.5f), 0);
        assert_memory_equal(kv, kv + n1, n1 * sizeof(float));
#undef ROWS
        guarded_free(&g);
}

/* pack_kv_rows_f32 on random pieces in a random order gives pack_kv_f32's bits, each piece
 * writes only its own floats (pack_rows_split), and nothing is read or written past k, v (rows
 * at strides past HS, NaN between them, the last ending on a guard page) or kv (exactly
 * dsa_attention_packed_floats() floats ending on, or starting after, a guard page). */
static void test_pack_rows(void **state) {
        static const size_t Tks[] = { 1, 31, 32, 33, 64, 100, 257, 600 };
        static const size_t HSs[] = { 8, 20, 32, 64 };
        struct dsa_test_rng rng = { 39 };
        const float scale = 0.37f;

        for (size_t t = 0; t < ELEMENTSOF(Tks); t++)
                for (size_t h = 0; h < ELEMENTSOF(HSs); h++) {
                        const size_t Tk = Tks[t], HS = HSs[h], ldk = HS + 3, ldv = HS + 5;
                        const size_t n = dsa_attention_packed_floats(Tk, HS), vkt = dsa__att_packed_v(Tk, HS);
                        struct guarded gk, gv, ga, gb, gc, gd;
                        const float *k = rows_new(&gk, &rng, Tk, ldk, HS, -1, 1);
                        const float *v = rows_new(&gv, &rng, Tk, ldv, HS, -1, 1);
                        float *A = guarded_new(&ga, n), *C = guarded_new(&gc, n);
                        float *B = guarded_bytes_new(&gb, n * sizeof(float), h % 2);
                        float *D = guarded_bytes_new(&gd, n * sizeof(float), true);
                        char shape[64];

                        snprintf(shape, sizeof(shape), "Tk %zu HS %zu", Tk, HS);
                        for (size_t s = 0; s < n_isas; s++) {
                                const struct dsa_attention_kernels *kt = dsa_attention_kernels_for(isas[s]);
                                size_t cut[PACK_MAX_PIECES + 1], order[PACK_MAX_PIECES], np, P;

                                np = pack_cuts(&rng, Tk, cut);
                                for (size_t p = 0; p < np; p++)
                                        order[p] = p;
                                for (size_t p = np; p > 1; p--) {
                                        const size_t q = rng_below(&rng, p), o = order[p - 1];

                                        order[p - 1] = order[q], order[q] = o;
                                }
                                do /* a random piece with keys */
                                        P = rng_below(&rng, np);
                                while (cut[P] == cut[P + 1]);

                                dsa_test_fill(A, n, NAN), dsa_test_fill(B, n, NAN);
                                dsa_test_fill(C, n, NAN), dsa_test_fill(D, n, NAN);
                                assert_int_equal(kt->pack_kv_f32(A, k, ldk, v, ldv, Tk, HS, scale), 0);
                                for (size_t i = 0; i < np; i++) {
                                        const size_t p = order[i];

                                        assert_int_equal(kt->pack_kv_rows_f32(B, k, ldk, v, ldv, Tk, cut[p],
                                                                              cut[p + 1], HS, scale),
                                                         0);
                                        assert_int_equal(kt->pack_kv_rows_f32(p == P ? C : D, k, ldk, v, ldv, Tk,
                                                                              cut[p], cut[p + 1], HS, scale),
                                                         0);
                                }
                                for (size_t i = 0; i < n; i++)
                                        if (memcmp(&A[i], &B[i], sizeof(float)) != 0) {
                                                printf("FAIL pack rows/%s %s in %zu pieces: float %zu got %.9g "
                                                       "want %.9g\n", dsa_test_isa_names[isas[s]], shape, np, i,
                                                       B[i], A[i]);
                                                fail();
                                        }
                                assert_true(pack_rows_split(isas[s], shape, A, C, D, n, vkt, cut[P], cut[P + 1], HS));
                        }
                        guarded_free(&gk), guarded_free(&gv), guarded_free(&ga);
                        guarded_free(&gb), guarded_free(&gc), guarded_free(&gd);
                }
        for (size_t s = 0; s < n_isas; s++)
                pack_rows_errors(dsa_attention_kernels_for(isas[s]));
}

/* The packed kv's size: the formula, a multiple of 32 floats (so a buffer of exactly that size
 * that ends on a page starts 64-byte aligned), SIZE_MAX for a head size out of range, and never
 * a count that wrapped around or whose bytes do. */
static void test_packed_floats(void **state) {
        static const size_t Tks[] = { 0, 1, 31, 32, 33, 100, 700, 4096, 100001 };
        static const size_t HSs[] = { 1, 7, 31, 32, 33, 64, 100, DSA_ATT_MAX_HS };

        assert_int_equal(dsa_attention_packed_floats(0, 0), SIZE_MAX);
        assert_int_equal(dsa_attention_packed_floats(70, 0), SIZE_MAX);
        assert_int_equal(dsa_attention_packed_floats(0, DSA_ATT_MAX_HS + 1), SIZE_MAX);
        assert_int_equal(dsa_attention_packed_floats(70, DSA_ATT_MAX_HS + 1), SIZE_MAX);
        assert_int_equal(dsa_attention_packed_floats(70, SIZE_MAX), SIZE_MAX);
        assert_int_equal(dsa_attention_packed_floats(SIZE_MAX, 1), SIZE_MAX);
        for (size_t t = 0; t < ELEMENTSOF(Tks); t++)
                for (size_t h = 0; h < ELEMENTSOF(HSs); h++) {
                        const size_t Tk = Tks[t], HS = HSs[h];
                        const size_t want = (Tk + 31) / 32 * 32 * HS + (HS + 31) / 32 * 32 * Tk;

                        assert_int_equal(dsa_attention_packed_floats(Tk, HS), want);
                        assert_int_equal(want % 32, 0);
                }
        for (unsigned e = 32; e < 64; e++)
                for (size_t h = 0; h < 2; h++)
                        for (size_t dt = 0; dt < 2; dt++) {
                                const size_t Tk = ((size_t) 1 << e) - dt, HS = h ? DSA_ATT_MAX_HS : 1;
                                const size_t got = dsa_attention_packed_floats(Tk, HS);
                                size_t a, b, want, bytes;
                                bool wraps = __builtin_add_overflow(Tk, 31, &a);

                                wraps |= __builtin_mul_overflow(a / 32 * 32, HS, &a);
                                wraps |= __builtin_mul_overflow((HS + 31) / 32 * 32, Tk, &b);
                                wraps |= __builtin_add_overflow(a, b, &want);
                                wraps |= __builtin_mul_overflow(want, sizeof(float), &bytes);
                                if (wraps || got != SIZE_MAX)
                                        assert_int_equal(got, wraps ? SIZE_MAX : want);
                                if (e <= 40)
                                        assert_int_equal(got, want);
                        }
}

/* dsa_attention_kernels() is the table of dsa_kernels()'s ISA. */
static void test_dispatch(void **state) {
        const struct dsa_attention_kernels *best = dsa_attention_kernels();

        assert_non_null(best);
        assert_int_equal(best->isa, dsa_kernels()->isa);
        assert_ptr_equal(best, dsa_attention_kernels_for(best->isa));
        assert_null(dsa_attention_kernels_for(_DSA_ISA_MAX));
        for (size_t s = 0; s < n_isas; s++)
                assert_string_equal(dsa_attention_kernels_for(isas[s])->name, dsa_test_isa_names[isas[s]]);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dispatch),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_blocks),
                cmocka_unit_test(test_dense_sequence),
                cmocka_unit_test(test_linear),
                cmocka_unit_test(test_pool),
                cmocka_unit_test(test_block_max_lowrank_q8),
                cmocka_unit_test(test_block_max_lowrank_q8_errors),
                cmocka_unit_test(test_keys_lowrank_q8),
                cmocka_unit_test(test_keys_lowrank_q8_values),
                cmocka_unit_test(test_keys_lowrank_q8_errors),
                cmocka_unit_test(test_packed_floats),
                cmocka_unit_test(test_packed_errors),
                cmocka_unit_test(test_pack_rows),
                cmocka_unit_test(test_packed_blocks),
                cmocka_unit_test(test_packed_bias),
                cmocka_unit_test(test_packed_extra),
        };
        int r;

        n_isas = dsa_test_gemm_isas(isas);
        r = cmocka_run_group_tests(tests, NULL, NULL);

        printf("\nworst error / tolerance per kernel and variant:\n");
        for (int kk = 0; kk < _K_MAX; kk++) {
                printf("  %-12s", kernel_names[kk]);
                for (size_t s = 0; s < n_isas; s++)
                        printf(" %s %.3g", dsa_test_isa_names[isas[s]], worst[kk][isas[s]]);
                printf("\n");
        }
        printf("  blocks_packed_f32 calls differing in some bit from blocks_f32's:");
        for (size_t s = 0; s < n_isas; s++)
                printf(" %s %zu/%zu", dsa_test_isa_names[isas[s]], packed_plain_differ[isas[s]],
                       packed_plain_calls[isas[s]]);
        printf("\n");
        return r;
}
