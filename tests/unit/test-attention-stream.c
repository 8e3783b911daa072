/* The long-context attention kernels (kernels/attention.h): every variant this CPU runs against
 * a plain double-precision oracle written here (full softmax over an explicit mask, no
 * streaming, no blocking), on ragged shapes: head sizes 1 to 80, 1, 5 and 64 query rows, key
 * blocks of 64, 32, 16 and 1 keys, key counts that are not multiples of the block, query
 * blocks at offsets, causal and not, dense, sparse, single-block, invisible-only and empty
 * block lists; the log-sum-exp, the block mass (each block against the oracle, and all blocks
 * together adding up to the rows that see a key), linear attention causal and not, block
 * pooling, and the token scorer's per-block max of low-rank scores (ranks 1 to 64, blocks of 1
 * to 300 keys, key counts past the x86 driver's 256-key segments). q, k, v and x rows are NaN
 * past HS and each buffer ends on a PROT_NONE page, so a read past a row's HS values either
 * poisons the result or faults; out, lse and mass carry sentinels past what a call may write,
 * scratch is exactly the size the kernel asked for (also ending on a guard page) at an odd
 * alignment. Bad arguments give -EINVAL and write nothing. Variants the CPU cannot run are
 * reported as SKIP. */
#include <errno.h>
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
 * to 80 terms (scores), the vector exp (~1e-7 relative), and fp32 sums over up to ~250 keys. */
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
/* block_max_lowrank: each output is the max over a block of fp32 dot products of R <= 64 terms
 * in [-1, 1]; max is 1-Lipschitz in the sup norm, so its error is at most the worst dot's. Each
 * of a dot's R roundings (fused or not, any order) adds at most half an ulp of a partial sum; with
 * random signs the partial sums stay near sqrt(R / 9) <= 2.7 and the errors add like a random
 * walk: ~sqrt(64) * 2^-24 * 3 ~ 1.5e-6 at R = 64 (the worst case R * 2^-24 * R ~ 2.4e-4 needs
 * every product of one sign). ATT_MAX_ERR's 1e-5 for scores of up to 80 terms, again; the
 * relative term covers the rounding of the result itself. */
#define LOWRANK_MAX_ERR 1e-5
#define LOWRANK_MAX_RERR 1e-6

#define SENTINEL DSA_TEST_SENTINEL

static enum dsa_isa isas[_DSA_ISA_MAX];
static size_t n_isas;

enum { K_OUT, K_LSE, K_MASS, K_LINEAR, K_POOL, K_LOWRANK, _K_MAX };
static const char *const kernel_names[_K_MAX] = { "blocks out", "blocks lse", "block mass",
                                                  "linear", "pool", "max lowrank" };
static double worst[_K_MAX][_DSA_ISA_MAX]; /* worst error / tolerance */

/* ---- Buffers that end on a guard page. */

struct guarded {
        void *map;
        size_t len;
};

/* n floats whose end is the start of a PROT_NONE page (a read or write past them faults); the
 * start is wherever that puts it. */
static float *guarded_new(struct guarded *g, size_t n) {
        const size_t page = (size_t) sysconf(_SC_PAGESIZE), bytes = (n ? n : 1) * sizeof(float);
        const size_t data = (bytes + page - 1) / page * page;
        char *p;

        g->len = data + page;
        g->map = mmap(NULL, g->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(g->map != MAP_FAILED);
        p = g->map;
        assert_int_equal(mprotect(p + data, page, PROT_NONE), 0);
        return (float *) (p + data - bytes);
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

static bool listed(const uint32_t *blocks, size_t nb, size_t b) {
        for (size_t t = 0; t < nb; t++)
                if (blocks[t] == b)
                        return true;
        return false;
}

static bool key_visible(const struct problem *p, const uint32_t *blocks, size_t nb, size_t i, size_t j) {
        return listed(blocks, nb, j / p->bk) && (!p->causal || j <= p->pos0 + i);
}

static double score(const struct problem *p, size_t i, size_t j) {
        double s = 0;

        for (size_t d = 0; d < p->HS; d++)
                s += (double) p->q[i * p->ldq + d] * p->k[j * p->ldk + d];
        return s * p->scale;
}

/* The oracle: out (nq, HS) and lse (nq) of a full softmax over the visible keys. */
static void oracle_blocks(const struct problem *p, const uint32_t *blocks, size_t nb, double *out,
                          double *lse) {
        for (size_t i = 0; i < p->nq; i++) {
                double mx = -INFINITY, sum = 0;

                for (size_t d = 0; d < p->HS; d++)
                        out[i * p->HS + d] = 0;
                for (size_t j = 0; j < p->Tk; j++)
                        if (key_visible(p, blocks, nb, i, j))
                                mx = fmax(mx, score(p, i, j));
                if (mx == -INFINITY) {
                        lse[i] = -INFINITY;
                        continue;
                }
                for (size_t j = 0; j < p->Tk; j++) {
                        if (!key_visible(p, blocks, nb, i, j))
                                continue;
                        const double e = exp(score(p, i, j) - mx);
                        sum += e;
                        for (size_t d = 0; d < p->HS; d++)
                                out[i * p->HS + d] += e * p->v[j * p->ldv + d];
                }
                for (size_t d = 0; d < p->HS; d++)
                        out[i * p->HS + d] /= sum;
                lse[i] = mx + log(sum);
        }
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

static bool check_blocks(const struct problem *p, enum dsa_isa isa, const char *shape, const float *out,
                         const float *lse, const double *want, const double *want_lse) {
        bool ok = true;

        for (size_t i = 0; i < p->nq && ok; i++) {
                for (size_t d = 0; d < p->HS && ok; d++) {
                        const float got = out[i * p->ldo + d];
                        if (want_lse[i] == -INFINITY && memcmp(&got, &(float) { 0 }, sizeof(float)) != 0) {
                                printf("FAIL blocks/%s %s: row %zu sees no key but out[%zu] = %.9g\n",
                                       dsa_test_isa_names[isa], shape, i, d, got);
                                ok = false;
                        }
                        ok = ok && close_enough(K_OUT, isa, shape, i * p->HS + d, got, want[i * p->HS + d],
                                                ATT_MAX_ERR, ATT_MAX_RERR);
                }
                ok = ok && close_enough(K_LSE, isa, shape, i, lse[i], want_lse[i], LSE_MAX_ERR, LSE_MAX_RERR);
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
                        assert_true(check_blocks(p, isas[s], shape, out, lse, want, want_lse));
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

/* ---- The token scorer's block max of low-rank scores. */

/* out (nq, nb) of block_max_lowrank_f32 in double: the definition, one block at a time. */
static void oracle_lowrank(const float *qt, size_t ldq, const float *kt, size_t ldk, size_t nq, size_t bk,
                           size_t Tk, size_t R, double *out) {
        const size_t nb = (Tk + bk - 1) / bk;

        for (size_t i = 0; i < nq; i++)
                for (size_t b = 0; b < nb; b++) {
                        double mx = -INFINITY;
                        for (size_t j = b * bk; j < MIN(Tk, (b + 1) * bk); j++) {
                                double d = 0;
                                for (size_t r = 0; r < R; r++)
                                        d += (double) qt[i * ldq + r] * kt[r * ldk + j];
                                mx = fmax(mx, d);
                        }
                        out[i * nb + b] = mx;
                }
}

/* One shape through every variant: qt (nq, ldq > R) and kt (R, ldk > Tk) in [-1, 1] with NaN in
 * the gaps, each ending on a guard page (kt's last row, so a read past Tk in it faults and one in
 * an earlier row poisons the max); out (nq, ldo > nb) plus a row, all sentinels before the call. */
static void lowrank_case(struct dsa_test_rng *rng, size_t R, size_t Tk, size_t bk, size_t nq, size_t pad) {
        const size_t nb = (Tk + bk - 1) / bk, ldq = R + pad, ldk = Tk + 2 * pad - 1, ldo = nb + pad;
        struct guarded gq, gk;
        float *qt = rows_new(&gq, rng, nq, ldq, R, -1, 1), *kt = rows_new(&gk, rng, R, ldk, Tk, -1, 1);
        float *out = dsa_test_falloc((nq + 1) * ldo);
        double *want = malloc(nq * nb * sizeof(double));
        char shape[96];

        assert_non_null(want);
        oracle_lowrank(qt, ldq, kt, ldk, nq, bk, Tk, R, want);
        snprintf(shape, sizeof(shape), "R=%zu Tk=%zu bk=%zu nq=%zu ldq=%zu ldk=%zu", R, Tk, bk, nq, ldq, ldk);
        for (size_t s = 0; s < n_isas; s++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[s]);

                dsa_test_fill(out, (nq + 1) * ldo, SENTINEL);
                assert_int_equal(ak->block_max_lowrank_f32(out, ldo, qt, ldq, kt, ldk, nq, bk, Tk, R), 0);
                for (size_t i = 0; i < nq; i++) {
                        for (size_t b = 0; b < nb; b++)
                                assert_true(close_enough(K_LOWRANK, isas[s], shape, i * nb + b, out[i * ldo + b],
                                                         want[i * nb + b], LOWRANK_MAX_ERR, LOWRANK_MAX_RERR));
                        assert_true(sentinels_kept("max lowrank out", isas[s], shape, out + i * ldo + nb, ldo - nb));
                }
                assert_true(sentinels_kept("max lowrank out", isas[s], shape, out + nq * ldo, ldo));
        }
        guarded_free(&gq), guarded_free(&gk);
        free(out), free(want);
}

/* Tk crosses the x86 driver's 256-key segments (300, 1000, 1300) with bk that divide 256 and bk
 * that do not (7); bk = 300 is past a segment (the driver's fallback to the reference). */
static void test_block_max_lowrank(void **state) {
        static const size_t Rs[] = { 1, 3, 8, 16, 17, 64 };
        static const size_t bks[] = { 1, 7, 32, 64, 256, 300 };
        static const size_t Tks[] = { 1, 5, 31, 64, 65, 300, 1000, 1300 };
        static const size_t nqs[] = { 1, 4, 9 };
        struct dsa_test_rng rng = { 35 };
        size_t case_no = 0;

        for (size_t ri = 0; ri < ELEMENTSOF(Rs); ri++)
                for (size_t ti = 0; ti < ELEMENTSOF(Tks); ti++)
                        for (size_t bi = 0; bi < ELEMENTSOF(bks); bi++)
                                for (size_t ni = 0; ni < ELEMENTSOF(nqs); ni++, case_no++)
                                        lowrank_case(&rng, Rs[ri], Tks[ti], bks[bi], nqs[ni], 1 + case_no % 3);
}

/* ---- Errors: -EINVAL, nothing written. */

static void test_errors(void **state) {
        enum { HS = 8, T = 70 };
        static float q[T * HS], k[T * HS], v[T * HS];
        const uint32_t up[] = { 0, 1 }, dup[] = { 0, 0 }, down[] = { 1, 0 };
        float *scratch = dsa_test_falloc(dsa_attention_blocks_scratch(DSA_ATT_MAX_BK, DSA_ATT_MAX_HS));
        float *lscratch = dsa_test_falloc(dsa_attention_linear_scratch(DSA_ATT_MAX_HS));
        float out[T * HS], lse[T], mass[2], one[2 * 10], k1[T];
        const float q1 = -0.75f;

        assert_int_equal(dsa_attention_blocks_scratch(0, 32), SIZE_MAX);
        assert_int_equal(dsa_attention_blocks_scratch(DSA_ATT_MAX_BK + 1, 32), SIZE_MAX);
        assert_int_equal(dsa_attention_blocks_scratch(64, 0), SIZE_MAX);
        assert_int_equal(dsa_attention_blocks_scratch(64, DSA_ATT_MAX_HS + 1), SIZE_MAX);
        assert_int_equal(dsa_attention_linear_scratch(0), SIZE_MAX);
        assert_int_equal(dsa_attention_linear_scratch(DSA_ATT_MAX_HS + 1), SIZE_MAX);
        for (size_t j = 0; j < T; j++)
                k1[j] = (float) ((j * 37) % 11) - 5.0f;
        /* O(bk HS + nq bk), whatever Tk: about 42 KiB at bk 64, HS 32 */
        assert_true(dsa_attention_blocks_scratch(64, 32) < 12 * 1024);

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
                /* block_max_lowrank: qt (4, 8) in q, kt (8, 70) in k, out (4, 9) in out */
#define LOWRANK(out_, ldo_, qt_, ldq_, kt_, ldk_, nq_, bk_, Tk_, R_) \
        kt->block_max_lowrank_f32(out_, ldo_, qt_, ldq_, kt_, ldk_, nq_, bk_, Tk_, R_)
                assert_int_equal(LOWRANK(out, 9, q, HS, k, T, 4, 8, T, 0), -EINVAL);
                assert_int_equal(LOWRANK(out, 9, q, HS, k, T, 4, 8, T, DSA_ATT_MAX_RANK_LR + 1), -EINVAL);
                assert_int_equal(LOWRANK(out, 9, q, HS, k, T, 4, 0, T, HS), -EINVAL);
                assert_int_equal(LOWRANK(NULL, 9, q, HS, k, T, 4, 8, T, HS), -EINVAL);
                assert_int_equal(LOWRANK(out, 9, NULL, HS, k, T, 4, 8, T, HS), -EINVAL);
                assert_int_equal(LOWRANK(out, 9, q, HS, NULL, T, 4, 8, T, HS), -EINVAL);
                assert_int_equal(LOWRANK(out, 8, q, HS, k, T, 4, 8, T, HS), -EINVAL); /* 9 blocks per row */
                assert_int_equal(LOWRANK(out, 9, q, HS, k, T - 1, 4, 8, T, HS), -EINVAL);
                assert_int_equal(LOWRANK(out, 9, q, HS - 1, k, T, 4, 8, T, HS), -EINVAL);
                /* nothing to do is not an error, and writes nothing either */
                assert_int_equal(LOWRANK(out, 9, q, HS, k, T, 0, 8, T, HS), 0);
                assert_int_equal(LOWRANK(out, 9, q, HS, k, T, 4, 8, 0, HS), 0);
                assert_int_equal(LOWRANK(NULL, 0, NULL, 0, NULL, 0, 0, 8, T, HS), 0);
                /* one row needs no row strides, one rank row no key stride: the same as with them */
                dsa_test_fill(one, 2 * 10, SENTINEL);
                assert_int_equal(LOWRANK(one, 0, &q1, 0, k1, 0, 1, 8, T, 1), 0);
                assert_int_equal(LOWRANK(one + 10, 9, &q1, HS, k1, T, 1, 8, T, 1), 0);
                assert_memory_equal(one, one + 10, 9 * sizeof(float));
                for (size_t b = 0; b < 9; b++) { /* products of one term: exact */
                        float mx = -INFINITY;
                        for (size_t j = 8 * b; j < MIN((size_t) T, 8 * b + 8); j++)
                                mx = MAX(mx, q1 * k1[j]);
                        assert_true(one[b] == mx);
                }
                assert_true(sentinels_kept("max lowrank out", isas[s], "nq=1 R=1", one + 9, 1));
                assert_true(sentinels_kept("max lowrank out", isas[s], "nq=1 R=1", one + 19, 1));
#undef LOWRANK
                assert_true(sentinels_kept("errors out", isas[s], "", out, T * HS));
                assert_true(sentinels_kept("errors lse", isas[s], "", lse, T));
                assert_true(sentinels_kept("errors mass", isas[s], "", mass, 2));
        }
        free(scratch), free(lscratch);
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
                cmocka_unit_test(test_block_max_lowrank),
        };
        int r;

        n_isas = dsa_test_gemm_isas(isas);
        r = cmocka_run_group_tests(tests, NULL, NULL);

        printf("\nworst error / tolerance per kernel and variant:\n");
        for (int kk = 0; kk < _K_MAX; kk++) {
                printf("  %-11s", kernel_names[kk]);
                for (size_t s = 0; s < n_isas; s++)
                        printf(" %s %.3g", dsa_test_isa_names[isas[s]], worst[kk][isas[s]]);
                printf("\n");
        }
        return r;
}
