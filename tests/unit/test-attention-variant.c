/* Attention variants (engine/attention-variant.c, attention-fit.c) on their own and through the
 * Llama forward:
 *   - block choice of every kind: dense/linear all visible blocks; local its window; fixed the
 *     window, the global blocks and exactly `random` others, the same draw every time; DSA the
 *     window and global blocks always, then by score: a fixed count, a fraction, or the mass
 *     target (a block carrying most of the predicted mass is enough), ascending, no repeats;
 *   - a forward whose variant keeps every block (local with a window past the sequence, DSA at
 *     mass 1) gives the dense forward's logits bit for bit, and a sparse one differs;
 *   - the DSA scorer fitted on text (llama-tiny), saved in a GGUF and loaded back: the same
 *     tensors and the same logits; a scorer holding a NaN, of the wrong shape, or an unknown
 *     kind is refused with a reason;
 *   - the BERT encoder path (bidirectional): every block = dense within rounding, a narrow
 *     window differs, linear runs, a DSA scorer fitted on texts survives a save and reload;
 *   - block summaries (dsa__att_attend): every ISA against a double oracle of the softmax over
 *     the listed blocks' keys plus one mean key per skipped visible block, causal and not,
 *     query blocks of up to 256 rows; without summaries the kernel itself; in the forwards,
 *     blocks of one key (a summary is then its key) give the dense logits;
 *   - the token scorer: its closed-form fit (the identity form at full rank, no worse than a
 *     random subspace below it), its GGUF keys and checks, and the forward: every block kept
 *     is dense whatever the scorer and stride, a small count keeps that many blocks.
 * llama-tiny comes from ../shared (skipped with exit 77 without it, for those parts). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/macro.h"
#include "engine/attention-variant.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/variant.h"
#include "gemm-check.h"
#include "kernels/attention.h"
#include "testutil.h"

static bool ascending_unique(const uint32_t *b, size_t n) {
        for (size_t i = 1; i < n; i++)
                if (b[i] <= b[i - 1])
                        return false;
        return true;
}

static bool has(const uint32_t *b, size_t n, uint32_t x) {
        for (size_t i = 0; i < n; i++)
                if (b[i] == x)
                        return true;
        return false;
}

static void test_select(void **state) {
        struct dsa__att a;
        uint32_t blocks[64], again[64];
        float scratch[4 * 64 + 16], nvis[64], u[4] = { 1, 0, 0, 0 }, w[64 * 4] = { 0 };
        size_t n;

        dsa__att_init(&a);
        assert_int_equal(dsa__att_select_scratch(&a, 64), ELEMENTSOF(scratch));
        for (size_t b = 0; b < 64; b++)
                nvis[b] = 64;
        /* dense: every causal block */
        n = dsa__att_select(&a, 0, 0, 9, 64, true, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 10);
        assert_true(ascending_unique(blocks, n));
        n = dsa__att_select(&a, 0, 0, 9, 64, false, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 64);
        /* local: window 3 -> 7, 8, 9; bidirectional 7..11 */
        a.kind = DSA_ATT_LOCAL, a.window = 3;
        n = dsa__att_select(&a, 0, 0, 9, 64, true, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 3);
        assert_int_equal(blocks[0], 7);
        assert_int_equal(blocks[2], 9);
        n = dsa__att_select(&a, 0, 0, 9, 64, false, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 5);
        /* fixed: window 2 + global 1 + random 3 = 6 distinct, reproducible */
        a.kind = DSA_ATT_FIXED, a.window = 2, a.global = 1, a.random = 3;
        n = dsa__att_select(&a, 1, 2, 30, 64, true, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 6);
        assert_true(ascending_unique(blocks, n));
        assert_true(has(blocks, n, 0) && has(blocks, n, 29) && has(blocks, n, 30));
        assert_int_equal(dsa__att_select(&a, 1, 2, 30, 64, true, NULL, NULL, 0, NULL, 0.25f, again, scratch), 6);
        assert_memory_equal(blocks, again, 6 * sizeof(uint32_t));
        /* more random blocks than exist: all of them, no repeats */
        a.random = 100;
        n = dsa__att_select(&a, 1, 2, 5, 64, true, NULL, NULL, 0, NULL, 0.25f, blocks, scratch);
        assert_int_equal(n, 6);

        /* DSA, heuristic scorer: block 17's mean key matches the query, the rest score 0 */
        a.kind = DSA_ATT_DSA, a.heuristic = true, a.window = 1, a.global = 1;
        w[17 * 4] = 40.0f;
        a.select = DSA_ATT_SELECT_MASS, a.mass = 0.5f;
        n = dsa__att_select(&a, 0, 0, 40, 64, true, u, w, 4, nvis, 0.25f, blocks, scratch);
        assert_int_equal(n, 3); /* 0, 17, 40 */
        assert_true(has(blocks, n, 0) && has(blocks, n, 17) && has(blocks, n, 40));
        a.select = DSA_ATT_SELECT_COUNT, a.count = 5;
        n = dsa__att_select(&a, 0, 0, 40, 64, true, u, w, 4, nvis, 0.25f, blocks, scratch);
        assert_int_equal(n, 5);
        assert_true(has(blocks, n, 17) && ascending_unique(blocks, n));
        a.select = DSA_ATT_SELECT_FRACTION, a.fraction = 0.5f;
        n = dsa__att_select(&a, 0, 0, 40, 64, true, u, w, 4, nvis, 0.25f, blocks, scratch);
        assert_int_equal(n, 21); /* ceil(0.5 * 41) */
        /* mass 1 (no cap): every visible block */
        a.select = DSA_ATT_SELECT_MASS, a.mass = 1.0f, a.count = 0;
        n = dsa__att_select(&a, 0, 0, 40, 64, true, u, w, 4, nvis, 0.25f, blocks, scratch);
        assert_int_equal(n, 41);

        /* checks */
        a.mass = 0.0f;
        assert_int_equal(dsa__att_check(&a, 1, 1, 4), -EINVAL);
        a.mass = 0.9f, a.heuristic = false;
        assert_int_equal(dsa__att_check(&a, 1, 1, 4), -EINVAL); /* no scorer */
        a.block = 0;
        assert_int_equal(dsa__att_check(&a, 1, 1, 4), -EINVAL);
}

/* ---- Block summaries (attention-summary.c) */

/* dsa__att_attend against a double oracle: |got - want| <= SUMMARY_MAX_ERR + SUMMARY_MAX_RERR
 * |want|. Outputs are convex combinations of values (or mean values) in [-1, 1]: the streaming
 * kernel's error (ATT_MAX_ERR of test-attention-stream: fp32 scores of <= 32 terms, the vector
 * exp, fp32 sums over <= 601 keys) plus the fp32 means of <= 128 keys and values (~1e-7) and the
 * fp32 merge of a few partial softmaxes (expf, logf and a division: a few ulp each). */
#define SUMMARY_MAX_ERR 1e-5
#define SUMMARY_MAX_RERR 1e-5

static bool listed_block(const uint32_t *blocks, size_t n, size_t b) {
        for (size_t t = 0; t < n; t++)
                if (blocks[t] == b)
                        return true;
        return false;
}

/* The definition for the rows [0, nq) of query block qb (positions qb * bk + i) of one head:
 * a softmax over the visible keys of the listed blocks (j < T, and j <= the row's position if
 * causal) and, with summary, over one key per visible block the list skips (causal: b < qb, all
 * of them whole; else every b < nkb, the last one with its own count c), its mean key and value
 * taken here in double, logit scale q . kbar + log c; with a summary window W > 0 only the
 * blocks b with qb - W <= b (and, not causal, b <= qb + W). out (nq, HS); a row that sees nothing
 * gets zeros. */
static void oracle_attend(const float *q, size_t ldq, const float *k, size_t ldk, const float *v, size_t ldv,
                          size_t T, size_t HS, size_t bk, size_t qb, size_t nq, const uint32_t *blocks, size_t n,
                          bool causal, bool summary, size_t W, double scale, double *out) {
        const size_t nkb = (T + bk - 1) / bk;
        double *lg = malloc((T + nkb) * sizeof(double)), *val = malloc((T + nkb) * HS * sizeof(double));

        assert_true(lg && val);
        for (size_t i = 0; i < nq; i++) {
                const size_t pos = qb * bk + i;
                const float *qi = q + i * ldq;
                size_t ne = 0;
                double mx = -INFINITY, sum = 0;

                for (size_t b = 0; b < nkb; b++) {
                        const size_t j0 = b * bk, j1 = MIN(T, j0 + bk);
                        if (listed_block(blocks, n, b)) {
                                for (size_t j = j0; j < j1 && (!causal || j <= pos); j++, ne++) {
                                        double d = 0;
                                        for (size_t c = 0; c < HS; c++)
                                                d += (double) qi[c] * k[j * ldk + c];
                                        lg[ne] = scale * d;
                                        for (size_t c = 0; c < HS; c++)
                                                val[ne * HS + c] = v[j * ldv + c];
                                }
                        } else if (summary && (!causal || b < qb) && (W == 0 || (b + W >= qb && b <= qb + W))) {
                                double d = 0;
                                for (size_t c = 0; c < HS; c++) {
                                        double kb = 0, vb = 0;
                                        for (size_t j = j0; j < j1; j++)
                                                kb += k[j * ldk + c], vb += v[j * ldv + c];
                                        d += (double) qi[c] * kb / (double) (j1 - j0);
                                        val[ne * HS + c] = vb / (double) (j1 - j0);
                                }
                                lg[ne++] = scale * d + log((double) (j1 - j0));
                        }
                }
                for (size_t e = 0; e < ne; e++)
                        mx = fmax(mx, lg[e]);
                for (size_t c = 0; c < HS; c++)
                        out[i * HS + c] = 0;
                for (size_t e = 0; e < ne; e++) {
                        const double w = exp(lg[e] - mx);
                        sum += w;
                        for (size_t c = 0; c < HS; c++)
                                out[i * HS + c] += w * val[e * HS + c];
                }
                for (size_t c = 0; ne > 0 && c < HS; c++)
                        out[i * HS + c] /= sum;
        }
        free(lg), free(val);
}

/* rows (nq, ldo) against want (nq, HS), the columns past HS and the row after the last still
 * SENTINEL; prints the first element out of tolerance. *worst: the largest error / tolerance. */
static bool rows_close(const char *what, const float *got, size_t ldo, const double *want, size_t nq, size_t HS,
                       double *worst) {
        for (size_t i = 0; i < nq; i++)
                for (size_t c = 0; c < ldo; c++) {
                        const float g = got[i * ldo + c];
                        if (c >= HS) {
                                if (g != DSA_TEST_SENTINEL) {
                                        printf("FAIL %s: row %zu column %zu past HS written (%.9g)\n", what, i, c, g);
                                        return false;
                                }
                                continue;
                        }
                        const double w = want[i * HS + c], err = fabs(g - w);
                        const double tol = SUMMARY_MAX_ERR + SUMMARY_MAX_RERR * fabs(w);
                        const double ratio = isnan(err) ? INFINITY : err / tol;
                        *worst = MAX(*worst, ratio);
                        if (ratio > 1) {
                                printf("FAIL %s: row %zu column %zu got %.9g want %.9g (err %.3g)\n", what, i, c, g, w,
                                       err);
                                return false;
                        }
                }
        for (size_t c = 0; c < ldo; c++)
                if (got[nq * ldo + c] != DSA_TEST_SENTINEL) {
                        printf("FAIL %s: the row after the last written at column %zu\n", what, c);
                        return false;
                }
        return true;
}

/* The block list of query block qb of one kind: 0 its own block and block 0, 1 a random
 * ascending subset of the visible blocks holding its own, 2 its own only, 3 every visible block
 * (causal: 0..qb), 4 kind 1 plus blocks no row sees (causal: the next one; numbers past the
 * sequence). Returns the count. */
static size_t summary_list(int kind, size_t qb, size_t nkb, bool causal, struct dsa_test_rng *rng,
                           uint32_t *blocks) {
        const size_t last = causal ? qb : nkb - 1;
        size_t n = 0;

        switch (kind) {
        case 0:
                if (qb > 0)
                        blocks[n++] = 0;
                blocks[n++] = (uint32_t) qb;
                break;
        case 2:
                blocks[n++] = (uint32_t) qb;
                break;
        case 3:
                for (size_t b = 0; b <= last; b++)
                        blocks[n++] = (uint32_t) b;
                break;
        default:
                for (size_t b = 0; b <= last; b++)
                        if (b == qb || dsa_test_rng_u64(rng) % 10 < 4)
                                blocks[n++] = (uint32_t) b;
                if (kind == 4) {
                        if (causal && qb + 1 < nkb)
                                blocks[n++] = (uint32_t) qb + 1;
                        blocks[n++] = (uint32_t) nkb;
                        blocks[n++] = (uint32_t) nkb + 5;
                }
                break;
        }
        return n;
}

/* One head of T tokens in query blocks of bk through every ISA's kernels, each list kind:
 * with summaries against the oracle; without, against the oracle without summaries and bit for
 * bit against blocks_f32 called on the same slices of at most DSA_ATT_BLOCK rows; with every
 * visible block listed, the same bits with and without summaries. */
static void summary_case(const enum dsa_isa *isas, size_t n_isas, enum dsa_att_kind kind, size_t HS, size_t T,
                         size_t bk, bool causal, size_t W, struct dsa_test_rng *rng, double *worst) {
        const size_t ldq = HS + 3, ldk = HS + 1, ldv = HS + 2, ldo = HS + 2, ldb = HS + 1, nkb = (T + bk - 1) / bk;
        const float scale = 2.0f / sqrtf((float) HS); /* peaked enough that a summary key can win */
        float *q = dsa_test_falloc(T * ldq), *k = dsa_test_falloc(T * ldk), *v = dsa_test_falloc(T * ldv);
        float *kbar = dsa_test_falloc(nkb * ldb), *vbar = dsa_test_falloc(nkb * ldb);
        float *out = dsa_test_falloc((bk + 1) * ldo), *plain = dsa_test_falloc((bk + 1) * ldo);
        float *direct = dsa_test_falloc((bk + 1) * ldo);
        float *kv = aligned_alloc(64, (dsa_attention_packed_floats(T, HS) + 16) * sizeof(float));
        float *skv = aligned_alloc(64, (dsa_attention_packed_floats(nkb, HS) + 16) * sizeof(float));
        double *want = malloc(bk * HS * sizeof(double)), *want_plain = malloc(bk * HS * sizeof(double));
        uint32_t *blocks = malloc((nkb + 8) * sizeof(uint32_t));
        struct dsa__att a, plain_att;
        float *scratch, *pscratch, *kscratch;
        size_t ns, nps;
        char what[160];

        assert_true(want && want_plain && blocks && kv && skv);
        dsa__att_init(&a);
        a.kind = kind, a.block = (uint32_t) bk, a.summary = true, a.sum_window = (uint32_t) W;
        plain_att = a, plain_att.summary = false, plain_att.sum_window = 0;
        ns = dsa__att_attend_scratch(&a, nkb, bk, HS), nps = dsa__att_attend_scratch(&plain_att, nkb, bk, HS);
        assert_int_equal(nps, dsa_attention_blocks_scratch(bk, HS));
        assert_true(ns > nps);
        scratch = dsa_test_falloc(ns), pscratch = dsa_test_falloc(nps);
        kscratch = dsa_test_falloc(dsa_attention_blocks_scratch(bk, HS));
        dsa_test_rng_fill(rng, q, T * ldq, -1, 1);
        dsa_test_rng_fill(rng, k, T * ldk, -1, 1);
        dsa_test_rng_fill(rng, v, T * ldv, -1, 1);
        /* keys with a trend along q[0]'s direction: some far block has the best mean key */
        for (size_t j = 0; j < T; j++)
                for (size_t c = 0; c < HS; c++)
                        k[j * ldk + c] += (float) ((j * 7) % 5) * 0.3f * (q[c] > 0 ? 1.0f : -1.0f);

        for (size_t s = 0; s < n_isas; s++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[s]);
                assert_int_equal(ak->pool_blocks_f32(kbar, ldb, k, ldk, T, bk, HS), 0);
                assert_int_equal(ak->pool_blocks_f32(vbar, ldb, v, ldv, T, bk, HS), 0);
                assert_int_equal(ak->pack_kv_f32(kv, k, ldk, v, ldv, T, HS, scale), 0);
                assert_int_equal(ak->pack_kv_f32(skv, kbar, ldb, vbar, ldb, nkb, HS, scale), 0);
                for (size_t it = 0; it < nkb * 5; it++) { /* query block qb, list kind it % 5 */
                        const size_t qb = it / 5, nq = MIN(bk, T - qb * bk);
                        const size_t n = summary_list((int) (it % 5), qb, nkb, causal, rng, blocks);
                        const float *qq = q + qb * bk * ldq;
                        int r;

                        snprintf(what, sizeof(what), "%s %s HS=%zu T=%zu bk=%zu causal=%d qb=%zu list=%d n=%zu",
                                 dsa_test_isa_names[isas[s]], dsa_att_kind_name(kind), HS, T, bk, causal, qb,
                                 (int) (it % 5), n);
                        oracle_attend(qq, ldq, k, ldk, v, ldv, T, HS, bk, qb, nq, blocks, n, causal, true, W, scale,
                                      want);
                        oracle_attend(qq, ldq, k, ldk, v, ldv, T, HS, bk, qb, nq, blocks, n, causal, false, 0, scale,
                                      want_plain);

                        dsa_test_fill(out, (bk + 1) * ldo, DSA_TEST_SENTINEL);
                        dsa_test_fill(scratch, ns, NAN);
                        r = dsa__att_attend(&a, ak, out, ldo, qq, ldq, nq, qb, blocks, n, T, HS, causal, kv, skv,
                                            scratch);
                        assert_int_equal(r, 0);
                        assert_true(rows_close(what, out, ldo, want, nq, HS, worst));

                        /* without summaries: the summaries are not read */
                        dsa_test_fill(plain, (bk + 1) * ldo, DSA_TEST_SENTINEL);
                        dsa_test_fill(pscratch, nps, NAN);
                        r = dsa__att_attend(&plain_att, ak, plain, ldo, qq, ldq, nq, qb, blocks, n, T, HS, causal, kv,
                                            NULL, pscratch);
                        assert_int_equal(r, 0);
                        assert_true(rows_close(what, plain, ldo, want_plain, nq, HS, worst));
                        dsa_test_fill(direct, (bk + 1) * ldo, DSA_TEST_SENTINEL);
                        for (size_t i0 = 0; i0 < nq; i0 += DSA_ATT_BLOCK) {
                                r = ak->blocks_packed_f32(direct + i0 * ldo, ldo, qq + i0 * ldq, ldq,
                                                          MIN(nq - i0, (size_t) DSA_ATT_BLOCK), qb * bk + i0, kv, NULL,
                                                          blocks, n, bk, T, HS, causal, NULL, NULL, kscratch);
                                assert_int_equal(r, 0);
                        }
                        assert_memory_equal(plain, direct, (bk + 1) * ldo * sizeof(float));
                        /* nothing skipped: summaries change nothing */
                        if (it % 5 == 3)
                                assert_memory_equal(out, plain, (bk + 1) * ldo * sizeof(float));
                }
        }
        /* a query block taller than the block, summaries without their means: refused, unwritten */
        dsa_test_fill(out, (bk + 1) * ldo, DSA_TEST_SENTINEL);
        blocks[0] = 0;
        assert_int_equal(dsa_attention_kernels()->pack_kv_f32(kv, k, ldk, v, ldv, T, HS, scale), 0);
        assert_int_equal(dsa_attention_kernels()->pack_kv_f32(skv, kbar, ldb, vbar, ldb, nkb, HS, scale), 0);
        assert_int_equal(dsa__att_attend(&a, dsa_attention_kernels(), out, ldo, q, ldq, MIN(bk + 1, T), 0, blocks, 1,
                                         T, HS, causal, kv, skv, scratch),
                         T > bk ? -EINVAL : 0);
        dsa_test_fill(out, (bk + 1) * ldo, DSA_TEST_SENTINEL);
        assert_int_equal(dsa__att_attend(&a, dsa_attention_kernels(), out, ldo, q, ldq, MIN(bk, T), 0, blocks, 1, T,
                                         HS, causal, kv, NULL, scratch),
                         -EINVAL);
        for (size_t i = 0; i < (bk + 1) * ldo; i++)
                assert_true(out[i] == DSA_TEST_SENTINEL);
        free(q), free(k), free(v), free(kbar), free(vbar), free(out), free(plain), free(direct);
        free(want), free(want_plain), free(blocks), free(scratch), free(pscratch), free(kscratch), free(kv), free(skv);
}

static void test_summary(void **state) {
        static const size_t HSs[] = { 8, 32 }, Ts[] = { 37, 64, 200 }, bks[] = { 16, 64, 128, 256 };
        static const enum dsa_att_kind kinds[] = { DSA_ATT_LOCAL, DSA_ATT_FIXED, DSA_ATT_DSA };
        enum dsa_isa isas[_DSA_ISA_MAX];
        const size_t n_isas = dsa_test_gemm_isas(isas);
        struct dsa_test_rng rng = { 61 };
        struct dsa__att a;
        double worst = 0;
        size_t case_no = 0;

        for (size_t h = 0; h < ELEMENTSOF(HSs); h++)
                for (size_t t = 0; t < ELEMENTSOF(Ts); t++)
                        for (size_t b = 0; b < ELEMENTSOF(bks); b++)
                                for (int causal = 0; causal < 2; causal++, case_no++)
                                        summary_case(isas, n_isas, kinds[case_no % 3], HSs[h], Ts[t], bks[b], causal,
                                                     case_no % 4 == 3 ? 1 + case_no % 3 : 0, &rng, &worst);
        /* blocks of 2: 301 blocks, so the summaries run in two chunks of at most DSA_ATT_MAX_BK,
         * and the last block holds one key */
        summary_case(isas, n_isas, DSA_ATT_DSA, 8, 601, 2, false, 0, &rng, &worst);
        summary_case(isas, n_isas, DSA_ATT_LOCAL, 8, 601, 2, true, 0, &rng, &worst);
        /* a summary window: only the blocks within W of the query block (the window's first block
         * off the panel grid, and past the first chunk of the extra keys when not causal) */
        summary_case(isas, n_isas, DSA_ATT_DSA, 8, 601, 2, false, 37, &rng, &worst);
        summary_case(isas, n_isas, DSA_ATT_LOCAL, 8, 601, 2, true, 37, &rng, &worst);
        summary_case(isas, n_isas, DSA_ATT_FIXED, 32, 600, 4, true, 5, &rng, &worst);
        printf("summary: worst error / tolerance %.3g\n", worst);

        /* summaries need a block-sparse kind */
        dsa__att_init(&a);
        a.summary = true, a.heuristic = true;
        assert_int_equal(dsa__att_check(&a, 1, 1, 8), -EINVAL); /* dense */
        a.kind = DSA_ATT_LINEAR;
        assert_int_equal(dsa__att_check(&a, 1, 1, 8), -EINVAL);
        a.kind = DSA_ATT_LOCAL;
        assert_int_equal(dsa__att_check(&a, 1, 1, 8), 0);
        a.kind = DSA_ATT_FIXED;
        assert_int_equal(dsa__att_check(&a, 1, 1, 8), 0);
        a.kind = DSA_ATT_DSA;
        assert_int_equal(dsa__att_check(&a, 1, 1, 8), 0);
}

/* ---- The token scorer: its closed-form fit, its GGUF keys, its checks */

/* (Wq q) . (Wk k) of the float weights (R, HS) in double; *ret_mag: sum_t |Wq q|_t |Wk k|_t
 * with |.| of each term, the magnitude the weights' rounding scales with. */
static double lowrank_form(const float *wq, const float *wk, size_t R, size_t HS, const double *q, const double *k,
                           double *ret_mag) {
        double s = 0, mag = 0;

        for (size_t t = 0; t < R; t++) {
                double a = 0, b = 0, ma = 0, mb = 0;
                for (size_t c = 0; c < HS; c++) {
                        a += wq[t * HS + c] * q[c], ma += fabs(wq[t * HS + c] * q[c]);
                        b += wk[t * HS + c] * k[c], mb += fabs(wk[t * HS + c] * k[c]);
                }
                s += a * b, mag += ma * mb;
        }
        if (ret_mag)
                *ret_mag = mag;
        return s;
}

/* Sum over all pairs (q_s, k_t) of the samples of (q_s . k_t - (Wq q_s) . (Wk k_t))^2: with
 * cq, ck the samples' second moments this is the quantity the fit minimizes over rank-R forms. */
static double lowrank_sq_error(const float *wq, const float *wk, size_t R, size_t HS, const double *qs,
                               const double *ks, size_t N) {
        double e = 0;

        for (size_t s = 0; s < N; s++)
                for (size_t t = 0; t < N; t++) {
                        double d = 0;
                        for (size_t c = 0; c < HS; c++)
                                d += qs[s * HS + c] * ks[t * HS + c];
                        d -= lowrank_form(wq, wk, R, HS, qs + s * HS, ks + t * HS, NULL);
                        e += d * d;
                }
        return e;
}

/* A random rank-R projection P (R, HS) with orthonormal rows, as Wq = Wk = alpha P, alpha the
 * least-squares best scale on the samples (so the baseline is as good as a random rank-R
 * subspace gets). */
static void random_projection(struct dsa_test_rng *rng, size_t R, size_t HS, const double *qs, const double *ks,
                              size_t N, float *wq, float *wk) {
        double p[64 * 64], num = 0, den = 0, alpha;

        for (size_t t = 0; t < R; t++) {
                for (size_t c = 0; c < HS; c++)
                        p[t * HS + c] = dsa_test_rng_uniform(rng, -1, 1);
                for (size_t u = 0; u < t; u++) { /* Gram-Schmidt, twice for accuracy */
                        for (int pass = 0; pass < 2; pass++) {
                                double d = 0;
                                for (size_t c = 0; c < HS; c++)
                                        d += p[t * HS + c] * p[u * HS + c];
                                for (size_t c = 0; c < HS; c++)
                                        p[t * HS + c] -= d * p[u * HS + c];
                        }
                }
                double nn = 0;
                for (size_t c = 0; c < HS; c++)
                        nn += p[t * HS + c] * p[t * HS + c];
                for (size_t c = 0; c < HS; c++)
                        p[t * HS + c] /= sqrt(nn);
        }
        for (size_t i = 0; i < R * HS; i++)
                wq[i] = wk[i] = (float) p[i];
        for (size_t s = 0; s < N; s++)
                for (size_t t = 0; t < N; t++) {
                        double y = 0;
                        const double x = lowrank_form(wq, wk, R, HS, qs + s * HS, ks + t * HS, NULL);
                        for (size_t c = 0; c < HS; c++)
                                y += qs[s * HS + c] * ks[t * HS + c];
                        num += x * y, den += x * x;
                }
        alpha = den > 0 ? sqrt(fabs(num / den)) : 1;
        for (size_t i = 0; i < R * HS; i++)
                wq[i] = (float) (alpha * p[i]), wk[i] = (float) ((num < 0 ? -alpha : alpha) * p[i]);
}

/* N samples x = A z of HS values, z uniform in [-1, 1], A random with column c scaled by
 * decay^c (anisotropic, as rotated queries and keys are); the second moment sum x x^T into c. */
static void samples(struct dsa_test_rng *rng, size_t HS, size_t N, double decay, double *x, double *c) {
        double A[64 * 64], z[64];

        for (size_t i = 0; i < HS; i++)
                for (size_t j = 0; j < HS; j++)
                        A[i * HS + j] = dsa_test_rng_uniform(rng, -1, 1) * pow(decay, (double) j);
        for (size_t s = 0; s < N; s++) {
                for (size_t j = 0; j < HS; j++)
                        z[j] = dsa_test_rng_uniform(rng, -1, 1);
                for (size_t i = 0; i < HS; i++) {
                        double v = 0;
                        for (size_t j = 0; j < HS; j++)
                                v += A[i * HS + j] * z[j];
                        x[s * HS + i] = v;
                }
        }
        memset(c, 0, HS * HS * sizeof(double));
        for (size_t s = 0; s < N; s++)
                for (size_t i = 0; i < HS; i++)
                        for (size_t j = 0; j < HS; j++)
                                c[i * HS + j] += x[s * HS + i] * x[s * HS + j];
}

/* Full rank: the form is q . k itself for any q, k, and keeps all of it (share 1). Each float
 * weight is rounded to 2^-24 relative, so the form's error is at most ~2 * 2^-24 * mag (mag:
 * the sum of the products' magnitudes, lowrank_form); TOKEN_FIT_RTOL = 1e-6 leaves room for
 * the double-precision eigen-decompositions of moments of condition ~1e3. */
#define TOKEN_FIT_RTOL 1e-6

static void test_fit_token(void **state) {
        static const size_t HSs[] = { 8, 16, 32 };
        struct dsa_test_rng rng = { 71 };

        for (size_t h = 0; h < ELEMENTSOF(HSs); h++) {
                const size_t HS = HSs[h], N = 6 * HS;
                double *qs = malloc(N * HS * sizeof(double)), *ks = malloc(N * HS * sizeof(double));
                double *cq = malloc(HS * HS * sizeof(double)), *ck = malloc(HS * HS * sizeof(double));
                float *wq = dsa_test_falloc(HS * HS + 1), *wk = dsa_test_falloc(HS * HS + 1);
                float *pq = dsa_test_falloc(HS * HS), *pk = dsa_test_falloc(HS * HS);
                double share = -1, prev_share = 0, prev_err = INFINITY, worst = 0, q[64], k[64];

                assert_true(qs && ks && cq && ck);
                samples(&rng, HS, N, 0.8, qs, cq);
                samples(&rng, HS, N, 0.85, ks, ck);

                /* R = HS: the identity form */
                dsa_test_fill(wq, HS * HS + 1, DSA_TEST_SENTINEL);
                dsa_test_fill(wk, HS * HS + 1, DSA_TEST_SENTINEL);
                assert_int_equal(dsa__att_fit_token_head(cq, ck, HS, HS, wq, wk, &share), 0);
                assert_true(wq[HS * HS] == DSA_TEST_SENTINEL && wk[HS * HS] == DSA_TEST_SENTINEL);
                assert_true(fabs(share - 1) < 1e-12);
                for (int trial = 0; trial < 200; trial++) {
                        double dot = 0, mag, got;
                        for (size_t c = 0; c < HS; c++) {
                                /* half the pairs from the samples' distribution, half anything */
                                q[c] = trial % 2 ? qs[(trial * 7 % N) * HS + c] : dsa_test_rng_uniform(&rng, -1, 1);
                                k[c] = trial % 2 ? ks[(trial * 13 % N) * HS + c] : dsa_test_rng_uniform(&rng, -1, 1);
                                dot += q[c] * k[c];
                        }
                        got = lowrank_form(wq, wk, HS, HS, q, k, &mag);
                        worst = MAX(worst, fabs(got - dot) / (TOKEN_FIT_RTOL * mag));
                        if (fabs(got - dot) > TOKEN_FIT_RTOL * mag)
                                printf("FAIL token fit HS=%zu trial %d: form %.12g, q.k %.12g (mag %.3g)\n", HS, trial,
                                       got, dot, mag);
                        assert_true(fabs(got - dot) <= TOKEN_FIT_RTOL * mag);
                }
                printf("token fit HS=%zu R=HS: worst error / tolerance %.3g\n", HS, worst);
                /* ... and on the samples all of it: the error is rounding next to sum (q . k)^2 */
                assert_true(lowrank_sq_error(wq, wk, HS, HS, qs, ks, N) <
                            1e-9 * lowrank_sq_error(pq, pk, 0, HS, qs, ks, N));

                /* R < HS: at most a random rank-R subspace's error (at its best scale); a larger
                 * rank keeps more and errs less */
                for (size_t R = 1; R < HS; R += R < 4 ? 1 : HS / 4) {
                        double err, best_random = INFINITY;
                        share = -1;
                        assert_int_equal(dsa__att_fit_token_head(cq, ck, HS, R, wq, wk, &share), 0);
                        assert_true(share > 0 && share < 1);
                        assert_true(share > prev_share);
                        err = lowrank_sq_error(wq, wk, R, HS, qs, ks, N);
                        for (int d = 0; d < 6; d++) {
                                random_projection(&rng, R, HS, qs, ks, N, pq, pk);
                                best_random = MIN(best_random, lowrank_sq_error(pq, pk, R, HS, qs, ks, N));
                        }
                        printf("token fit HS=%zu R=%zu: share %.3f, squared error %.4g, best of 6 random %.4g\n", HS, R,
                               share, err, best_random);
                        assert_true(err > 0);
                        assert_true(err <= best_random);
                        assert_true(err <= prev_err * (1 + 1e-9));
                        prev_share = share, prev_err = err;
                }

                /* R out of range: refused, nothing written */
                share = -1;
                dsa_test_fill(wq, HS * HS + 1, DSA_TEST_SENTINEL);
                dsa_test_fill(wk, HS * HS + 1, DSA_TEST_SENTINEL);
                assert_int_equal(dsa__att_fit_token_head(cq, ck, HS, 0, wq, wk, &share), -EINVAL);
                assert_int_equal(dsa__att_fit_token_head(cq, ck, HS, HS + 1, wq, wk, &share), -EINVAL);
                assert_true(share == -1);
                for (size_t i = 0; i < HS * HS + 1; i++)
                        assert_true(wq[i] == DSA_TEST_SENTINEL && wk[i] == DSA_TEST_SENTINEL);

                /* fewer samples than dimensions (singular moments): still finite weights */
                samples(&rng, HS, HS / 2, 0.8, qs, cq);
                samples(&rng, HS, HS / 2, 0.8, ks, ck);
                assert_int_equal(dsa__att_fit_token_head(cq, ck, HS, HS / 2, wq, wk, NULL), 0);
                for (size_t i = 0; i < HS / 2 * HS; i++)
                        assert_true(isfinite(wq[i]) && isfinite(wk[i]));
                free(qs), free(ks), free(cq), free(ck), free(wq), free(wk), free(pq), free(pk);
        }
}

/* An attention written with dsa__att_to_gguf and read back with dsa__att_from_gguf (path: a
 * scratch file); -errno of the read, *back filled on success. */
static int gguf_round_trip(const struct dsa__att *a, const char *path, uint32_t n_layer, uint32_t n_head,
                           uint32_t head_dim, struct dsa__att *back) {
        struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        struct dsa_gguf *g = NULL;
        int r;

        assert_non_null(w);
        assert_int_equal(dsa__att_to_gguf(a, w), 0);
        assert_int_equal(dsa_gguf_writer_write(w, path), 0);
        dsa_gguf_writer_free(w);
        assert_int_equal(dsa_gguf_open(path, &g), 0);
        r = dsa__att_from_gguf(g, n_layer, n_head, head_dim, back);
        dsa_gguf_free(g);
        return r;
}

static void test_token_gguf(void **state) {
        enum { NL = 2, NH = 4, HD = 16, RANK = 4 };
        const size_t nw = (size_t) NL * NH * RANK * HD, nbias = (size_t) NL * NH * DSA_ATT_NBINS;
        struct dsa_test_rng rng = { 72 };
        struct dsa__att s, back, c;
        char tmp[] = "/tmp/dsa-attt-XXXXXX", path[64], desc[256];

        assert_non_null(mkdtemp(tmp));
        snprintf(path, sizeof(path), "%s/t.gguf", tmp);
        dsa__att_init(&s);
        s.kind = DSA_ATT_DSA, s.block = 32, s.window = 2, s.global = 1, s.token = true, s.stride = 4, s.summary = true;
        s.select = DSA_ATT_SELECT_COUNT, s.count = 5;
        assert_int_equal(dsa__att_scorer_alloc(&s, RANK, NL, NH, HD), 0);
        dsa_test_rng_fill(&rng, s.wq, nw, -1, 1);
        dsa_test_rng_fill(&rng, s.wk, nw, -1, 1);
        dsa_test_rng_fill(&rng, s.bias, nbias, -1, 1);
        assert_int_equal(dsa__att_check(&s, NL, NH, HD), 0);

        assert_int_equal(gguf_round_trip(&s, path, NL, NH, HD, &back), 0);
        assert_int_equal(back.kind, DSA_ATT_DSA);
        assert_true(back.token && back.summary);
        assert_int_equal(back.stride, 4);
        assert_int_equal(back.block, 32);
        assert_int_equal(back.window, 2);
        assert_int_equal(back.global, 1);
        assert_int_equal(back.select, DSA_ATT_SELECT_COUNT);
        assert_int_equal(back.count, 5);
        assert_false(back.oracle || back.heuristic);
        assert_int_equal(back.rank, RANK);
        assert_int_equal(back.n_layer, NL);
        assert_int_equal(back.n_head, NH);
        assert_int_equal(back.head_dim, HD);
        assert_memory_equal(back.wq, s.wq, nw * sizeof(float));
        assert_memory_equal(back.wk, s.wk, nw * sizeof(float));
        assert_memory_equal(back.bias, s.bias, nbias * sizeof(float));
        dsa__att_describe(&back, desc, sizeof(desc));
        assert_non_null(strstr(desc, "scorer=token"));
        assert_non_null(strstr(desc, "stride=4"));
        assert_non_null(strstr(desc, " summary"));
        dsa__att_clear(&back);

        /* summaries on a local attention, no scorer: kept; token and stride at their defaults */
        dsa__att_init(&c);
        c.kind = DSA_ATT_LOCAL, c.window = 3, c.summary = true;
        assert_int_equal(gguf_round_trip(&c, path, NL, NH, HD, &back), 0);
        assert_true(back.kind == DSA_ATT_LOCAL && back.summary && !back.token && back.stride == c.stride);
        assert_int_equal(back.sum_window, 0);
        dsa__att_clear(&back);
        /* and with a summary window, kept and described; a window needs summaries */
        c.sum_window = 7;
        assert_int_equal(gguf_round_trip(&c, path, NL, NH, HD, &back), 0);
        assert_true(back.summary && back.sum_window == 7);
        dsa__att_describe(&back, desc, sizeof(desc));
        assert_non_null(strstr(desc, " summary=7"));
        dsa__att_clear(&back);
        c.summary = false;
        assert_int_equal(dsa__att_check(&c, NL, NH, HD), -EINVAL);
        c.summary = true, c.sum_window = 0;
        c.summary = false;
        assert_int_equal(gguf_round_trip(&c, path, NL, NH, HD, &back), 0);
        assert_false(back.summary || back.token);
        dsa__att_clear(&back);

        /* the checks: the token scorer is DSA's and no other scorer; the stride in [1, 256] and a
         * divisor of the block (32 here), so every block's last row is scored */
        assert_int_equal(dsa__att_copy(&c, &s), 0);
        c.oracle = true;
        assert_int_equal(dsa__att_check(&c, NL, NH, HD), -EINVAL);
        c.oracle = false, c.heuristic = true;
        assert_int_equal(dsa__att_check(&c, NL, NH, HD), -EINVAL);
        c.heuristic = false;
        for (enum dsa_att_kind kd = DSA_ATT_DENSE; kd < DSA_ATT_DSA; kd++) {
                c.kind = kd, c.summary = false; /* summary=false: refused for the token alone */
                assert_int_equal(dsa__att_check(&c, NL, NH, HD), -EINVAL);
        }
        c.kind = DSA_ATT_DSA;
        c.stride = 0;
        assert_int_equal(dsa__att_check(&c, NL, NH, HD), -EINVAL);
        c.stride = DSA_ATT_MAX_BLOCK + 1;
        assert_int_equal(dsa__att_check(&c, NL, NH, HD), -EINVAL);
        c.stride = DSA_ATT_MAX_BLOCK;
        assert_int_equal(dsa__att_check(&c, NL, NH, HD), -EINVAL);
        c.stride = 3;
        assert_int_equal(dsa__att_check(&c, NL, NH, HD), -EINVAL);
        c.stride = c.block;
        assert_int_equal(dsa__att_check(&c, NL, NH, HD), 0);
        c.stride = 1;
        assert_int_equal(dsa__att_check(&c, NL, NH, HD), 0);
        /* and the same refused when read from a file: a token scorer on a local attention, a stride
         * of 0 or 257 */
        c.kind = DSA_ATT_LOCAL;
        assert_int_equal(gguf_round_trip(&c, path, NL, NH, HD, &back), -EBADMSG);
        c.kind = DSA_ATT_DSA, c.stride = 0;
        assert_int_equal(gguf_round_trip(&c, path, NL, NH, HD, &back), -EBADMSG);
        c.stride = DSA_ATT_MAX_BLOCK + 1;
        assert_int_equal(gguf_round_trip(&c, path, NL, NH, HD, &back), -EBADMSG);
        /* a flag of the wrong type is refused, not read as absent (a token scorer's weights would
         * otherwise run as a pooled one) */
        {
                struct dsa_gguf_writer *w = dsa_gguf_writer_new();
                struct dsa_gguf *g = NULL;

                assert_non_null(w);
                assert_int_equal(dsa_gguf_writer_set_str(w, "dsa.attention.kind", "local"), 0);
                assert_int_equal(dsa_gguf_writer_set_u32(w, "dsa.attention.summary", 1), 0);
                assert_int_equal(dsa_gguf_writer_write(w, path), 0);
                dsa_gguf_writer_free(w);
                assert_int_equal(dsa_gguf_open(path, &g), 0);
                assert_int_equal(dsa__att_from_gguf(g, NL, NH, HD, &back), -EBADMSG);
                dsa_gguf_free(g);
        }
        dsa__att_clear(&c);
        dsa__att_clear(&s);
        unlink(path);
        rmdir(tmp);
}

static const char *tiny_dir(void) {
        const char *shared = dsa_test_shared_dir();
        return shared ? dsa_test_path(shared, "fixtures/hf/llama-tiny") : NULL;
}

/* The logits of ids (T) under the model's current attention. */
static float *logits_of(struct dsa_model *m, const int32_t *ids, size_t T, struct dsa_lm_stats *st) {
        const size_t V = dsa_model_llama_config(m)->n_vocab;
        float *z = malloc(T * V * sizeof(float));
        assert_non_null(z);
        assert_int_equal(dsa_model_lm_forward(m, ids, T, z, NULL, st), 0);
        return z;
}

static int optimize(struct dsa_model *m, const struct dsa__att *a, const char *const *texts, size_t n) {
        struct dsa_optimize_opts o = { .quant = DSA_WFORMAT_F32, .token_keep = -1, .attention = a, .scorer_rank = 4,
                                       .calib = texts, .n_calib = n };
        return dsa_model_optimize(m, &o);
}

static void test_forward_and_gguf(void **state) {
        const char *dir = tiny_dir();
        if (!dir) {
                printf("SKIP part: llama-tiny needs ../shared\n");
                skip();
        }
        struct dsa_model *m = dsa_test_model_open(dir);
        const size_t T = 200, V = dsa_model_llama_config(m)->n_vocab;
        int32_t ids[200];
        struct dsa__att a;
        struct dsa_lm_stats st = { 0 };

        for (size_t i = 0; i < T; i++)
                ids[i] = (int32_t) ((i * 7919 + 13) % V);
        float *dense = logits_of(m, ids, T, &st);
        assert_true(st.blocks_kept == st.blocks_visible);

        /* every block kept: dense, bit for bit at the same block size; at blocks of 16 the online
         * softmax adds in another order, within fp32 rounding */
        dsa__att_init(&a);
        a.kind = DSA_ATT_LOCAL, a.window = 100;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        float *z = logits_of(m, ids, T, NULL);
        assert_memory_equal(z, dense, T * V * sizeof(float));
        free(z);
        a.block = 16;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        float *dense16 = logits_of(m, ids, T, NULL);
        assert_true(dsa_test_check_tensor("dense, blocks of 16", dense16, dense, T * V, 1e-5f, 1e-5f));
        /* a narrow window: fewer blocks, other logits */
        a.window = 2;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        memset(&st, 0, sizeof(st));
        z = logits_of(m, ids, T, &st);
        assert_true(st.blocks_kept < st.blocks_visible);
        assert_memory_not_equal(z, dense, T * V * sizeof(float));
        free(z);

        /* DSA with the heuristic scorer (mean query . mean key, no fit): every block at mass 1,
         * fewer at 0.5, the same choice every run */
        a.kind = DSA_ATT_DSA, a.heuristic = true, a.window = 1, a.mass = 1.0f;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        z = logits_of(m, ids, T, NULL);
        assert_memory_equal(z, dense16, T * V * sizeof(float));
        free(z);
        a.mass = 0.5f;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        memset(&st, 0, sizeof(st));
        z = logits_of(m, ids, T, &st);
        float *z2 = logits_of(m, ids, T, NULL);
        assert_true(st.blocks_kept < st.blocks_visible);
        assert_memory_equal(z, z2, T * V * sizeof(float));
        free(z), free(z2);
        a.heuristic = false;

        /* DSA fitted on text: needs calibration */
        a.kind = DSA_ATT_DSA, a.window = 1, a.mass = 0.9f;
        assert_true(optimize(m, &a, NULL, 0) < 0);
        static const char *texts[] = {
                "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks "
                "were striking thirteen. All happy families are alike; each unhappy family is unhappy in its own "
                "way. Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in "
                "my purse, and nothing particular to interest me on shore, I thought I would sail about a little "
                "and see the watery part of the world. It is a truth universally acknowledged, that a single man in "
                "possession of a good fortune, must be in want of a wife.",
        };
        assert_int_equal(optimize(m, &a, texts, 1), 0);
        memset(&st, 0, sizeof(st));
        float *fitted = logits_of(m, ids, T, &st);
        assert_true(st.blocks_kept <= st.blocks_visible);
        assert_non_null(dsa_model_info(m, "scorer_kl"));
        assert_non_null(dsa_model_info(m, "attention"));

        /* saved and loaded: the same scorer, the same numbers */
        char tmp[] = "/tmp/dsa-att-XXXXXX", path[64], bad[64];
        assert_non_null(mkdtemp(tmp));
        snprintf(path, sizeof(path), "%s/dsa.gguf", tmp);
        assert_int_equal(dsa_model_save_variant(m, path), 0);
        struct dsa_model *g = dsa_test_model_open(path);
        z = logits_of(g, ids, T, NULL);
        assert_memory_equal(z, fitted, T * V * sizeof(float));
        free(z);
        assert_string_equal(dsa_model_info(g, "attention"), dsa_model_info(m, "attention"));
        /* mass 1 on the fitted scorer: dense again */
        a.mass = 1.0f;
        assert_int_equal(optimize(g, &a, NULL, 0), 0);
        z = logits_of(g, ids, T, NULL);
        assert_memory_equal(z, dense16, T * V * sizeof(float));
        free(z);
        dsa_model_free(g);

        /* a scorer with a NaN, and one for another shape: refused when read */
        struct dsa_gguf *gg = NULL;
        struct dsa__att s, back;
        dsa__att_init(&s);
        s.kind = DSA_ATT_DSA;
        assert_int_equal(dsa__att_scorer_alloc(&s, 2, 2, 4, 16), 0);
        struct dsa_gguf_writer *w = dsa_gguf_writer_new();
        assert_int_equal(dsa__att_to_gguf(&s, w), 0);
        snprintf(bad, sizeof(bad), "%s/scorer.gguf", tmp);
        assert_int_equal(dsa_gguf_writer_write(w, bad), 0);
        dsa_gguf_writer_free(w);
        assert_int_equal(dsa_gguf_open(bad, &gg), 0);
        assert_int_equal(dsa__att_from_gguf(gg, 2, 4, 16, &back), 0);
        assert_int_equal(back.rank, 2);
        dsa__att_clear(&back);
        assert_int_equal(dsa__att_from_gguf(gg, 2, 8, 16, &back), -EBADMSG); /* 8 heads: wrong shape */
        assert_int_equal(dsa__att_from_gguf(gg, 3, 4, 16, &back), -ENOENT); /* layer 2 missing */
        dsa_gguf_free(gg);
        s.wk[5] = NAN;
        w = dsa_gguf_writer_new();
        assert_int_equal(dsa__att_to_gguf(&s, w), 0);
        assert_int_equal(dsa_gguf_writer_write(w, bad), 0);
        dsa_gguf_writer_free(w);
        assert_int_equal(dsa_gguf_open(bad, &gg), 0);
        assert_int_equal(dsa__att_from_gguf(gg, 2, 4, 16, &back), -EBADMSG);
        dsa_gguf_free(gg);
        w = dsa_gguf_writer_new();
        assert_int_equal(dsa_gguf_writer_set_str(w, "dsa.attention.kind", "quadratic"), 0);
        assert_int_equal(dsa_gguf_writer_write(w, bad), 0);
        dsa_gguf_writer_free(w);
        assert_int_equal(dsa_gguf_open(bad, &gg), 0);
        assert_int_equal(dsa__att_from_gguf(gg, 2, 4, 16, &back), -EOPNOTSUPP);
        dsa_gguf_free(gg);
        dsa__att_clear(&s);

        unlink(bad);
        unlink(path);
        rmdir(tmp);
        free(fitted);
        free(dense);
        free(dense16);
        dsa_model_free(m);
}

/* The token scorer in the Llama forward: with a count that keeps every block it is dense at
 * the same block size, whatever the scorer (fitted on text, or random) and its stride; with a
 * small count it keeps count blocks per query block, and summaries of the skipped blocks change
 * the result but keep it finite. */
static void test_token_forward(void **state) {
        const char *dir = tiny_dir();
        if (!dir) {
                printf("SKIP part: llama-tiny needs ../shared\n");
                skip();
        }
        struct dsa_model *m = dsa_test_model_open(dir);
        const struct dsa_llama_config *cfg = dsa_model_llama_config(m);
        const size_t T = 200, V = cfg->n_vocab, bk = 16, nb = (T + bk - 1) / bk;
        const uint32_t HD = cfg->head_dim;
        struct dsa_test_rng rng = { 73 };
        struct dsa_lm_stats st;
        struct dsa__att a, r;
        int32_t ids[200];
        static const char *texts[] = {
                "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
                "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
                "it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had "
                "everything before us, we had nothing before us, we were all going direct to Heaven, we were all going "
                "direct the other way.",
        };

        for (size_t i = 0; i < T; i++)
                ids[i] = (int32_t) ((i * 7919 + 13) % V);
        dsa__att_init(&a);
        a.kind = DSA_ATT_LOCAL, a.block = (uint32_t) bk, a.window = 100;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        float *dense = logits_of(m, ids, T, NULL);

        /* fitted on text (rank 4), every block kept: dense */
        a.kind = DSA_ATT_DSA, a.token = true, a.window = 1, a.select = DSA_ATT_SELECT_COUNT, a.count = (uint32_t) nb;
        a.stride = 2;
        assert_int_equal(optimize(m, &a, texts, 1), 0);
        assert_non_null(strstr(dsa_model_info(m, "attention"), "scorer=token"));
        memset(&st, 0, sizeof(st));
        float *z = logits_of(m, ids, T, &st);
        assert_true(st.blocks_kept == st.blocks_visible);
        assert_true(dsa_test_check_tensor("token scorer, fitted, stride 2, every block", z, dense, T * V, 1e-5f,
                                          1e-5f));
        free(z);

        /* random scorers of rank 4 at strides 1, 2, 4 and 8 (the divisors of the block, 16) */
        dsa__att_init(&r);
        r.kind = DSA_ATT_DSA, r.token = true, r.block = (uint32_t) bk, r.window = 1, r.select = DSA_ATT_SELECT_COUNT;
        assert_int_equal(dsa__att_scorer_alloc(&r, 4, (uint32_t) cfg->n_layer, (uint32_t) cfg->n_head, HD), 0);
        dsa_test_rng_fill(&rng, r.wq, (size_t) cfg->n_layer * cfg->n_head * 4 * HD, -1, 1);
        dsa_test_rng_fill(&rng, r.wk, (size_t) cfg->n_layer * cfg->n_head * 4 * HD, -1, 1);
        for (uint32_t stride = 1; stride <= 8; stride *= 2) {
                r.stride = stride, r.count = (uint32_t) nb + stride - 1; /* nb or more */
                assert_int_equal(optimize(m, &r, NULL, 0), 0);
                memset(&st, 0, sizeof(st));
                z = logits_of(m, ids, T, &st);
                assert_true(st.blocks_kept == st.blocks_visible);
                assert_true(dsa_test_check_tensor("token scorer, random, every block", z, dense, T * V, 1e-5f, 1e-5f));
                free(z);
        }

        /* a small count: count blocks per query block (fewer in the first ones); summaries of the
         * others give other logits than dropping them, and neither is dense */
        r.count = 3, r.stride = 2;
        assert_int_equal(optimize(m, &r, NULL, 0), 0);
        memset(&st, 0, sizeof(st));
        float *sparse = logits_of(m, ids, T, &st);
        uint64_t want_kept = 0;
        for (size_t qb = 0; qb < nb; qb++)
                want_kept += MIN(qb + 1, (size_t) r.count);
        want_kept *= (uint64_t) cfg->n_layer * cfg->n_head;
        assert_int_equal(st.blocks_kept, want_kept);
        r.summary = true;
        assert_int_equal(optimize(m, &r, NULL, 0), 0);
        memset(&st, 0, sizeof(st));
        z = logits_of(m, ids, T, &st);
        assert_int_equal(st.blocks_kept, want_kept);
        for (size_t i = 0; i < T * V; i++)
                assert_true(isfinite(z[i]));
        assert_memory_not_equal(z, dense, T * V * sizeof(float));
        assert_memory_not_equal(z, sparse, T * V * sizeof(float));
        assert_memory_not_equal(sparse, dense, T * V * sizeof(float));
        /* the first query blocks keep all they see: their rows are as dense (rows of the first
         * count blocks see nothing else) */
        assert_true(dsa_test_check_tensor("token scorer, summaries, first blocks", z, dense, r.count * bk * V, 1e-5f,
                                          1e-5f));
        free(z);
        /* summaries with every block kept: dense again */
        r.count = (uint32_t) nb;
        assert_int_equal(optimize(m, &r, NULL, 0), 0);
        z = logits_of(m, ids, T, NULL);
        assert_true(dsa_test_check_tensor("token scorer, summaries, every block", z, dense, T * V, 1e-5f, 1e-5f));
        free(z);

        /* summaries on the other block-sparse kinds: local and fixed, a narrow window */
        dsa__att_init(&a);
        a.kind = DSA_ATT_LOCAL, a.block = (uint32_t) bk, a.window = 2;
        for (int kind = 0; kind < 2; kind++) {
                a.kind = kind ? DSA_ATT_FIXED : DSA_ATT_LOCAL, a.summary = false;
                assert_int_equal(optimize(m, &a, NULL, 0), 0);
                free(sparse);
                sparse = logits_of(m, ids, T, NULL);
                a.summary = true;
                assert_int_equal(optimize(m, &a, NULL, 0), 0);
                z = logits_of(m, ids, T, NULL);
                for (size_t i = 0; i < T * V; i++)
                        assert_true(isfinite(z[i]));
                assert_memory_not_equal(z, sparse, T * V * sizeof(float));
                assert_memory_not_equal(z, dense, T * V * sizeof(float));
                /* the first window of blocks sees everything: as dense */
                assert_true(dsa_test_check_tensor("summaries, first window", z, dense, a.window * bk * V, 1e-5f,
                                                  1e-5f));
                free(z);
        }
        /* blocks of one key: a summary is its key and value with log 1 = 0 added, so summaries of
         * whatever is skipped make the attention dense again (the means read through the key and
         * value heads' strides, the merge of the partial softmaxes) */
        a.kind = DSA_ATT_LOCAL, a.block = 1, a.window = 3, a.summary = true;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        z = logits_of(m, ids, T, NULL);
        assert_true(dsa_test_check_tensor("local, blocks of 1, summaries", z, dense, T * V, 1e-5f, 1e-5f));
        free(z);
        r.block = 1, r.count = 2, r.stride = 1, r.summary = true;
        assert_int_equal(optimize(m, &r, NULL, 0), 0);
        z = logits_of(m, ids, T, NULL);
        assert_true(dsa_test_check_tensor("token scorer, blocks of 1, summaries", z, dense, T * V, 1e-5f, 1e-5f));
        free(z);

        dsa__att_clear(&r);
        free(sparse);
        free(dense);
        dsa_model_free(m);
}

/* The encoder path: bert-tiny's classifier over texts long enough for several blocks of 16. */
static void test_bert(void **state) {
        const char *shared = dsa_test_shared_dir();
        if (!shared) {
                printf("SKIP part: bert-tiny needs ../shared\n");
                skip();
        }
        struct dsa_model *m = dsa_test_model_open(dsa_test_path(shared, "fixtures/hf/bert-tiny"));
        const size_t L = dsa_model_bert_config(m)->n_labels;
        static const char *texts[] = {
                "it 's a charming and often affecting journey , a film that takes its time and rewards the patience "
                "of everyone who sits through the long and winding middle act with a finale worth waiting for .",
                "unflinchingly bleak and desperate , the story never lets up and never gives its characters or its "
                "audience a moment of rest , which is both its strength and , for many , its undoing .",
                "short one .",
        };
        const size_t N = ELEMENTSOF(texts);
        float dense[3 * 8], z[3 * 8];
        struct dsa__att a;

        assert_true(L > 0 && L <= 8);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, dense), 0);
        /* all blocks, bidirectional: dense within fp32 rounding (another summation order) */
        dsa__att_init(&a);
        a.kind = DSA_ATT_LOCAL, a.block = 16, a.window = 100;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, z), 0);
        assert_true(dsa_test_check_tensor("bert local, every block", z, dense, N * L, 1e-5f, 1e-5f));
        /* a window of one block: other logits */
        a.window = 1;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, z), 0);
        assert_memory_not_equal(z, dense, N * L * sizeof(float));
        /* the skipped blocks as summary keys (bidirectional: the partial last block too): other
         * logits than dropping them, finite; with every block kept, dense again */
        float zs[3 * 8];
        a.summary = true;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, zs), 0);
        for (size_t i = 0; i < N * L; i++)
                assert_true(isfinite(zs[i]));
        assert_memory_not_equal(zs, z, N * L * sizeof(float));
        a.window = 100;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, zs), 0);
        assert_true(dsa_test_check_tensor("bert local, summaries, every block", zs, dense, N * L, 1e-5f, 1e-5f));
        a.block = 1, a.window = 2; /* blocks of one key: summaries are the keys, dense again */
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, zs), 0);
        assert_true(dsa_test_check_tensor("bert local, blocks of 1, summaries", zs, dense, N * L, 1e-5f, 1e-5f));
        a.summary = false, a.window = 1, a.block = 16;
        /* linear, and DSA fitted on the texts themselves; saved and reloaded alike */
        a.kind = DSA_ATT_LINEAR;
        assert_int_equal(optimize(m, &a, NULL, 0), 0);
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, z), 0);
        for (size_t i = 0; i < N * L; i++)
                assert_true(isfinite(z[i]));
        a.kind = DSA_ATT_DSA, a.window = 1, a.mass = 0.9f;
        assert_int_equal(optimize(m, &a, texts, N), 0);
        assert_non_null(dsa_model_info(m, "scorer_kl"));
        assert_int_equal(dsa_model_classify_texts(m, texts, NULL, N, z), 0);
        char tmp[] = "/tmp/dsa-attb-XXXXXX", path[64];
        float back[3 * 8];
        assert_non_null(mkdtemp(tmp));
        snprintf(path, sizeof(path), "%s/b.gguf", tmp);
        assert_int_equal(dsa_model_save_variant(m, path), 0);
        struct dsa_model *g = dsa_test_model_open(path);
        assert_int_equal(dsa_model_classify_texts(g, texts, NULL, N, back), 0);
        assert_memory_equal(back, z, N * L * sizeof(float));
        assert_string_equal(dsa_model_info(g, "attention"), dsa_model_info(m, "attention"));
        dsa_model_free(g);
        unlink(path);
        rmdir(tmp);
        dsa_model_free(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_select),
                cmocka_unit_test(test_summary),
                cmocka_unit_test(test_fit_token),
                cmocka_unit_test(test_token_gguf),
                cmocka_unit_test(test_forward_and_gguf),
                cmocka_unit_test(test_token_forward),
                cmocka_unit_test(test_bert),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
