/* The sparse packed fp32 GEMM: every variant this CPU runs (and the scalar reference), packed
 * sparse even where the constructor would fall back to dense, against a double-precision naive
 * loop and each SIMD variant against the reference, on weights with a rotating fraction of their
 * 16x1 blocks zeroed (none, some, most, all), with ragged tails in all three dimensions, row
 * strides wider than the rows, bias or none, and each epilogue; column sub-ranges on block
 * boundaries give the full call's bits in their columns and touch no other; unpack gives the
 * original matrix back bit for bit; the constructor falls back to dense packing above the
 * density threshold and gives the same results; bad arguments fail cleanly. Variants the CPU
 * cannot run are reported as SKIP. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "basic/macro.h"
#include "kernels/gemm-sparse.h"
#include "gemm-check.h"
#include "testutil.h"

/* The fp32 GEMM tolerance of gemm-check.h, as test-gemm-packed. SIMD against ref: the same
 * tolerance, twice (both are within it of the exact value). */

#define FORCE_SPARSE 2.0 /* max_density that never falls back */

static enum dsa_isa isas[_DSA_ISA_MAX];
static size_t n_isas;
static double worst[_DSA_ISA_MAX]; /* worst error / tolerance seen per ISA */

/* Zeroes each 16x1 block (rows 16j..16j+15 at input k) with probability drop; returns the
 * number of blocks left with a nonzero value. */
static size_t zero_blocks(struct dsa_test_rng *rng, float *w, size_t OC, size_t C, float drop) {
        size_t kept = 0;

        for (size_t o0 = 0; o0 < OC; o0 += 16)
                for (size_t k = 0; k < C; k++) {
                        bool zero = dsa_test_rng_uniform(rng, 0.0f, 1.0f) < drop;
                        for (size_t o = o0; o < MIN(o0 + 16, OC); o++)
                                if (zero)
                                        w[o * C + k] = 0.0f;
                        kept += !zero;
                }
        return kept;
}

struct problem {
        size_t N, C, OC, ldi, ldo;
        float *x, *w, *bias;
        enum dsa_epilogue ep;
        double *want, *mag;
        size_t kept; /* nonzero 16x1 blocks */
};

static void problem_init(struct problem *p, struct dsa_test_rng *rng, size_t N, size_t C, size_t OC,
                         size_t pad_i, size_t pad_o, bool with_bias, enum dsa_epilogue ep, float drop) {
        *p = (struct problem) { .N = N, .C = C, .OC = OC, .ldi = C + pad_i, .ldo = OC + pad_o, .ep = ep };
        p->x = dsa_test_falloc(N * p->ldi);
        p->w = dsa_test_falloc(OC * C);
        p->bias = with_bias ? dsa_test_falloc(OC) : NULL;
        /* inp's padding is NaN: a kernel that reads past C poisons its output. */
        dsa_test_fill(p->x, N * p->ldi, NAN);
        for (size_t n = 0; n < N; n++)
                dsa_test_rng_fill(rng, p->x + n * p->ldi, C, -1.0f, 1.0f);
        dsa_test_rng_fill(rng, p->w, OC * C, -1.0f, 1.0f);
        p->kept = zero_blocks(rng, p->w, OC, C, drop);
        if (p->bias)
                dsa_test_rng_fill(rng, p->bias, OC, -1.0f, 1.0f);

        p->want = malloc((N * OC + 1) * sizeof(double));
        p->mag = malloc((N * OC + 1) * sizeof(double));
        assert_non_null(p->want);
        assert_non_null(p->mag);
        for (size_t n = 0; n < N; n++)
                for (size_t o = 0; o < OC; o++) {
                        double acc = p->bias ? p->bias[o] : 0, mag = fabs(acc);
                        for (size_t c = 0; c < C; c++) {
                                double t = (double) p->x[n * p->ldi + c] * p->w[o * C + c];
                                acc += t;
                                mag += fabs(t);
                        }
                        p->want[n * OC + o] = dsa_test_gelu(acc, ep);
                        p->mag[n * OC + o] = mag;
                }
}

static void problem_done(struct problem *p) {
        free(p->x), free(p->w), free(p->bias), free(p->want), free(p->mag);
}

static double tolerance(const struct problem *p, size_t i) {
        return dsa_test_gemm_tolerance(p->mag[i], p->want[i], DSA_TEST_GEMM_MAX_REL_ERR, p->ep);
}

/* out (N, ldo) against want (N, OC) (the naive result, or ref's output with twice the
 * tolerance) in columns [oc0, oc1), sentinels elsewhere. */
static bool check_out(const struct problem *p, enum dsa_isa isa, const float *out, const float *ref,
                      size_t oc0, size_t oc1) {
        double worst_ratio = 0;
        size_t wn = 0, wo = 0;

        for (size_t n = 0; n < p->N; n++)
                for (size_t o = 0; o < p->ldo; o++) {
                        float got = out[n * p->ldo + o];
                        double ratio, want;
                        if (o < oc0 || o >= oc1) {
                                if (got != DSA_TEST_SENTINEL) {
                                        printf("FAIL %s N=%zu C=%zu OC=%zu [%zu,%zu) ldo=%zu: wrote column %zu of row %zu\n",
                                               dsa_test_isa_names[isa], p->N, p->C, p->OC, oc0, oc1, p->ldo, o, n);
                                        return false;
                                }
                                continue;
                        }
                        want = ref ? ref[n * p->ldo + o] : p->want[n * p->OC + o];
                        ratio = fabs(got - want) / ((ref ? 2 : 1) * tolerance(p, n * p->OC + o));
                        if (!(ratio <= worst_ratio)) { /* catches NaN */
                                worst_ratio = isnan(ratio) ? INFINITY : ratio;
                                wn = n, wo = o;
                        }
                }
        if (!ref)
                worst[isa] = MAX(worst[isa], worst_ratio);
        if (worst_ratio > 1) {
                size_t i = wn * p->OC + wo;
                printf("FAIL %s%s N=%zu C=%zu OC=%zu ldi=%zu ldo=%zu bias=%d ep=%d kept=%zu: [%zu,%zu] got %.9g want %.9g (tol %.3g)\n",
                       dsa_test_isa_names[isa], ref ? " vs ref" : "", p->N, p->C, p->OC, p->ldi, p->ldo, p->bias != NULL,
                       p->ep, p->kept, wn, wo, out[wn * p->ldo + wo], ref ? ref[wn * p->ldo + wo] : p->want[i],
                       tolerance(p, i));
                return false;
        }
        return true;
}

static struct dsa_packed_sparse *pack(enum dsa_isa isa, const float *w, size_t OC, size_t C, double max_density) {
        struct dsa_packed_sparse *pw = NULL;

        assert_int_equal(dsa__packed_sparse_new_isa(isa, w, OC, C, max_density, &pw), 0);
        assert_non_null(pw);
        assert_int_equal(dsa__packed_sparse_isa(pw), isa);
        assert_int_equal(dsa_packed_sparse_rows(pw), OC);
        assert_int_equal(dsa_packed_sparse_cols(pw), C);
        return pw;
}

/* Every ISA against the naive loop, SIMD against ref, on the cross product of ragged sizes;
 * the zeroed fraction, bias, epilogue and paddings rotate with the shape. */
static void test_shapes(void **state) {
        static const size_t Ns[] = { 1, 2, 3, 5, 6, 7, 12, 16, 17, 23, 37 };
        static const size_t Cs[] = { 1, 3, 17, 64, 255, 800 };
        static const size_t OCs[] = { 1, 5, 16, 17, 33, 100 };
        static const float drops[] = { 0.0f, 0.3f, 0.5f, 0.8f, 1.0f };
        struct dsa_test_rng rng = { 21 };
        size_t case_no = 0;

        for (size_t ni = 0; ni < ELEMENTSOF(Ns); ni++)
                for (size_t ci = 0; ci < ELEMENTSOF(Cs); ci++)
                        for (size_t oi = 0; oi < ELEMENTSOF(OCs); oi++, case_no++) {
                                size_t N = Ns[ni], C = Cs[ci], OC = OCs[oi];
                                enum dsa_epilogue ep = (enum dsa_epilogue) (case_no % 3);
                                struct problem p;
                                float *ref_out = NULL;

                                problem_init(&p, &rng, N, C, OC, case_no % 2 ? 5 : 0, case_no % 5 ? 3 : 0,
                                             (case_no / 3) % 2 == 0, ep, drops[case_no % ELEMENTSOF(drops)]);
                                for (size_t s = 0; s < n_isas; s++) {
                                        struct dsa_packed_sparse *pw = pack(isas[s], p.w, OC, C, FORCE_SPARSE);
                                        float *out = dsa_test_falloc(N * p.ldo);
                                        size_t panels = (OC + 15) / 16;

                                        assert_true(dsa_packed_sparse_is_sparse(pw));
                                        assert_int_equal(dsa_packed_sparse_block(pw), 16);
                                        assert_true(dsa_packed_sparse_density(pw) ==
                                                    (double) p.kept / ((double) panels * (double) C));
                                        dsa_test_fill(out, N * p.ldo, DSA_TEST_SENTINEL);
                                        dsa_linear_packed_sparse(out, p.ldo, p.x, p.ldi, pw, p.bias, N, 0, OC, ep);
                                        assert_true(check_out(&p, isas[s], out, NULL, 0, OC));
                                        if (isas[s] == DSA_ISA_REF)
                                                ref_out = out;
                                        else {
                                                assert_true(check_out(&p, isas[s], out, ref_out, 0, OC));
                                                free(out);
                                        }
                                        dsa_packed_sparse_free(pw);
                                }
                                free(ref_out);
                                problem_done(&p);
                        }
}

struct subrange {
        const struct problem *p;
        const struct dsa_packed_sparse *pw;
};

static void run_subrange(void *userdata, float *out, size_t oc0, size_t oc1) {
        const struct subrange *u = userdata;
        const struct problem *p = u->p;

        dsa_linear_packed_sparse(out, p->ldo, p->x, p->ldi, u->pw, p->bias, p->N, oc0, oc1, p->ep);
}

/* Column sub-ranges on block boundaries: the full call's bits in [oc0, oc1), sentinels
 * elsewhere (every pair on the small shapes, a diagonal band on the large); and a split of
 * [0, OC) into blocks, as a pool would, gives the full result. */
static void test_subranges(void **state) {
        static const size_t shapes[][3] = { { 7, 33, 100 }, { 13, 255, 768 }, { 37, 64, 129 },
                                            { 2, 800, 33 }, { 6, 17, 17 } };
        struct dsa_test_rng rng = { 22 };

        for (size_t s = 0; s < n_isas; s++)
                for (size_t si = 0; si < ELEMENTSOF(shapes); si++)
                        for (int ep = 0; ep <= DSA_EPILOGUE_GELU_TANH; ep++) {
                                size_t N = shapes[si][0], C = shapes[si][1], OC = shapes[si][2];
                                struct problem p;
                                struct dsa_packed_sparse *pw;
                                float *full;
                                char name[64];

                                problem_init(&p, &rng, N, C, OC, 1, 2, ep != 1, (enum dsa_epilogue) ep, 0.5f);
                                pw = pack(isas[s], p.w, OC, C, FORCE_SPARSE);
                                assert_int_equal(dsa_packed_sparse_block(pw), 16);
                                full = dsa_test_falloc(N * p.ldo);
                                dsa_test_fill(full, N * p.ldo, DSA_TEST_SENTINEL);
                                dsa_linear_packed_sparse(full, p.ldo, p.x, p.ldi, pw, p.bias, N, 0, OC, p.ep);
                                assert_true(check_out(&p, isas[s], full, NULL, 0, OC));

                                snprintf(name, sizeof(name), "%s C=%zu", dsa_test_isa_names[isas[s]], C);
                                dsa_test_gemm_subranges(name, run_subrange, &(struct subrange) { &p, pw }, full, N, OC,
                                                        p.ldo, 16, 3);

                                free(full);
                                dsa_packed_sparse_free(pw);
                                problem_done(&p);
                        }
}

/* The public constructor: dense weights (density 1) fall back to dense packing, BLOCK16-sparse
 * ones stay sparse and take fewer bytes; both compute the same product. */
static void test_fallback(void **state) {
        struct dsa_test_rng rng = { 23 };
        const size_t N = 9, C = 96, OC = 48;

        for (int sparse = 0; sparse <= 1; sparse++) {
                struct problem p;
                struct dsa_packed_sparse *pw = NULL;
                struct dsa_packed_f32 *dense = NULL;
                float *out = dsa_test_falloc(N * OC);

                problem_init(&p, &rng, N, C, OC, 0, 0, true, DSA_EPILOGUE_GELU_ERF, sparse ? 0.6f : 0.0f);
                assert_int_equal(dsa_packed_sparse_new(p.w, OC, C, &pw), 0);
                assert_int_equal(dsa__packed_sparse_isa(pw), dsa_kernels()->isa);
                assert_int_equal(dsa_packed_f32_new(p.w, OC, C, &dense), 0);
                assert_true(dsa_packed_sparse_is_sparse(pw) == (bool) sparse);
                if (sparse) {
                        assert_true(dsa_packed_sparse_density(pw) < 0.5);
                        assert_int_equal(dsa_packed_sparse_block(pw), 16);
                        assert_true(dsa_packed_sparse_bytes(pw) < OC * C * sizeof(float));
                } else {
                        assert_true(dsa_packed_sparse_density(pw) == 1.0);
                        assert_int_equal(dsa_packed_sparse_block(pw), dsa_packed_f32_block(dense));
                        assert_true(dsa_packed_sparse_bytes(pw) >= OC * C * sizeof(float));
                }
                dsa_test_fill(out, N * OC, DSA_TEST_SENTINEL);
                dsa_linear_packed_sparse(out, OC, p.x, C, pw, p.bias, N, 0, OC, p.ep);
                assert_true(check_out(&p, dsa_kernels()->isa, out, NULL, 0, OC));
                free(out);
                dsa_packed_f32_free(dense);
                dsa_packed_sparse_free(pw);
                problem_done(&p);
        }
}

/* C = 0: out is the bias (or 0) through the epilogue; N = 0 or an empty range writes nothing. */
static void test_degenerate(void **state) {
        const float bias[5] = { -1, 0, 0.5f, 2, -3 };

        for (size_t s = 0; s < n_isas; s++)
                for (int force = 0; force <= 1; force++) {
                        struct dsa_packed_sparse *pw = pack(isas[s], NULL, 5, 0, force ? FORCE_SPARSE : -1.0);
                        float out[2 * 6];

                        dsa_test_fill(out, ELEMENTSOF(out), DSA_TEST_SENTINEL);
                        dsa_linear_packed_sparse(out, 6, NULL, 0, pw, bias, 2, 0, 5, DSA_EPILOGUE_NONE);
                        for (size_t n = 0; n < 2; n++) {
                                assert_memory_equal(out + n * 6, bias, sizeof(bias));
                                assert_true(out[n * 6 + 5] == DSA_TEST_SENTINEL);
                        }
                        dsa_linear_packed_sparse(out, 6, NULL, 0, pw, NULL, 2, 0, 5, DSA_EPILOGUE_GELU_ERF);
                        for (size_t n = 0; n < 2; n++)
                                for (size_t o = 0; o < 5; o++)
                                        assert_true(out[n * 6 + o] == 0.0f);

                        dsa_test_fill(out, ELEMENTSOF(out), DSA_TEST_SENTINEL);
                        dsa_linear_packed_sparse(out, 6, NULL, 0, pw, bias, 0, 0, 5, DSA_EPILOGUE_NONE);
                        dsa_linear_packed_sparse(out, 6, NULL, 0, pw, bias, 2, 5, 5, DSA_EPILOGUE_NONE);
                        for (size_t i = 0; i < ELEMENTSOF(out); i++)
                                assert_true(out[i] == DSA_TEST_SENTINEL);
                        dsa_packed_sparse_free(pw);

                        pw = pack(isas[s], NULL, 0, 7, force ? FORCE_SPARSE : -1.0);
                        dsa_linear_packed_sparse(out, 6, NULL, 7, pw, NULL, 2, 0, 0, DSA_EPILOGUE_NONE);
                        dsa_packed_sparse_free(pw);
                }
}

/* unpack returns the matrix bit for bit: zeroed blocks, signed zeros (a -0.0 keeps its row),
 * infinities and NaN payloads; sparse and dense packing alike. */
static void test_unpack(void **state) {
        static const size_t shapes[][2] = { { 1, 1 }, { 5, 3 }, { 17, 255 }, { 33, 64 }, { 100, 17 } };
        struct dsa_test_rng rng = { 24 };

        for (size_t s = 0; s < n_isas; s++)
                for (size_t si = 0; si < ELEMENTSOF(shapes); si++)
                        for (int force = 0; force <= 1; force++) {
                                size_t OC = shapes[si][0], C = shapes[si][1];
                                float *w = dsa_test_falloc(OC * C), *back = dsa_test_falloc(OC * C);
                                struct dsa_packed_sparse *pw;
                                uint32_t nan_payload = 0x7fc12345;

                                dsa_test_rng_fill(&rng, w, OC * C, -1e3f, 1e3f);
                                zero_blocks(&rng, w, OC, C, 0.5f);
                                w[0] = -0.0f;
                                if (OC * C > 2)
                                        w[1] = INFINITY, memcpy(&w[2], &nan_payload, sizeof(float));
                                pw = pack(isas[s], w, OC, C, force ? FORCE_SPARSE : -1.0);
                                assert_true(dsa_packed_sparse_is_sparse(pw) == (bool) force);
                                dsa_test_fill(back, OC * C, DSA_TEST_SENTINEL);
                                dsa_packed_sparse_unpack(pw, back);
                                assert_memory_equal(back, w, OC * C * sizeof(float));
                                dsa_packed_sparse_free(pw);
                                free(w), free(back);
                        }
}

/* An all-zero matrix keeps no row and takes (almost) no bytes: out is the bias; a fully dense
 * one keeps them all. */
static void test_extremes(void **state) {
        const size_t N = 5, C = 40, OC = 20;
        struct dsa_test_rng rng = { 25 };

        for (size_t s = 0; s < n_isas; s++)
                for (int dense = 0; dense <= 1; dense++) {
                        struct problem p;
                        struct dsa_packed_sparse *pw;
                        float *out = dsa_test_falloc(N * OC);

                        problem_init(&p, &rng, N, C, OC, 0, 0, true, DSA_EPILOGUE_NONE, dense ? 0.0f : 1.0f);
                        pw = pack(isas[s], p.w, OC, C, FORCE_SPARSE);
                        assert_true(dsa_packed_sparse_density(pw) == (dense ? 1.0 : 0.0));
                        if (!dense)
                                assert_true(dsa_packed_sparse_bytes(pw) < 64);
                        dsa_test_fill(out, N * OC, DSA_TEST_SENTINEL);
                        dsa_linear_packed_sparse(out, OC, p.x, C, pw, p.bias, N, 0, OC, DSA_EPILOGUE_NONE);
                        assert_true(check_out(&p, isas[s], out, NULL, 0, OC));
                        if (!dense)
                                for (size_t n = 0; n < N; n++)
                                        assert_memory_equal(out + n * OC, p.bias, OC * sizeof(float));
                        free(out);
                        dsa_packed_sparse_free(pw);
                        problem_done(&p);
                }
}

static void test_errors(void **state) {
        struct dsa_packed_sparse *pw = (struct dsa_packed_sparse *) 0x1;
        float w[4] = { 0 };

        /* Refused before anything is read. */
        assert_int_equal(dsa_packed_sparse_new(w, 16, (size_t) UINT32_MAX + 1, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_sparse_new(w, SIZE_MAX / 2, 16, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_sparse_new(w, SIZE_MAX, 1, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_sparse_new(NULL, 4, 4, &pw), -EINVAL);
        assert_int_equal(dsa_packed_sparse_new(w, 2, 2, NULL), -EINVAL);
        assert_int_equal(dsa__packed_sparse_new_isa(_DSA_ISA_MAX, w, 2, 2, 1.0, &pw), -EOPNOTSUPP);
        for (int isa = 0; isa < _DSA_ISA_MAX; isa++)
                if (!dsa_kernels_for((enum dsa_isa) isa))
                        assert_int_equal(dsa__packed_sparse_new_isa((enum dsa_isa) isa, w, 2, 2, 1.0, &pw),
                                         -EOPNOTSUPP);
        assert_ptr_equal(pw, (struct dsa_packed_sparse *) 0x1); /* untouched on failure */

        assert_null(dsa_packed_sparse_free(NULL));
        assert_int_equal(dsa_packed_sparse_block(NULL), 0);
        assert_int_equal(dsa_packed_sparse_rows(NULL), 0);
        assert_int_equal(dsa_packed_sparse_cols(NULL), 0);
        assert_int_equal(dsa_packed_sparse_bytes(NULL), 0);
        assert_false(dsa_packed_sparse_is_sparse(NULL));
        dsa_packed_sparse_unpack(NULL, w);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_unpack),
                cmocka_unit_test(test_degenerate),
                cmocka_unit_test(test_extremes),
                cmocka_unit_test(test_fallback),
                cmocka_unit_test(test_subranges),
                cmocka_unit_test(test_shapes),
        };
        int r;

        n_isas = dsa_test_gemm_isas(isas);

        r = cmocka_run_group_tests(tests, NULL, NULL);

        printf("\nworst error / tolerance per variant:\n");
        for (size_t s = 0; s < n_isas; s++)
                printf("  %-7s %.3g\n", dsa_test_isa_names[isas[s]], worst[isas[s]]);
        return r;
}
