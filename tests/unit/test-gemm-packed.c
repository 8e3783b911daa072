/* The pre-packed GEMM: every microkernel this CPU runs (and the scalar reference), for every
 * storage type (fp32, half, bfloat16, bfloat16 dot), against a double-precision naive loop on
 * the rounded weights (and, for BF16_DOT, rounded activations), and each SIMD variant against
 * the reference of its type (half and bfloat16 also bit for bit against the fp32 loop of the same
 * ISA on the rounded weights), on shapes with ragged tails in all three dimensions, row strides
 * wider than the rows, bias or none, and each epilogue; column sub-ranges on block boundaries
 * give the full call's bits in their columns and touch no other; unpack gives the (rounded)
 * matrix back bit for bit, from fp32 or from 16-bit sources; the fp32 -> half / bfloat16
 * converters agree with independent references (and F16C) on specials, boundaries and random
 * bits; sizes that overflow or cannot be allocated fail cleanly. Variants the CPU cannot run
 * are reported as SKIP. */
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
#include "kernels/kernels-internal.h"
#include "gemm-check.h"
#include "testutil.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* fp32, half and bfloat16 (on the rounded weights): DSA_TEST_GEMM_MAX_REL_ERR and the epilogue
 * terms of gemm-check.h. */
/* BF16_DOT sums exact products of bf16 pairs in fp32, two roundings per pair: the same bound
 * on the magnitude sum of the rounded products. */
#define BF16_DOT_MAX_REL_ERR 1e-5

static const char *const wtype_names[_DSA_WTYPE_MAX] = { "f32", "f16", "bf16", "bf16dot" };

/* The ISAs to test: ref first, then every SIMD one this CPU runs; each with the types it has a
 * loop for (supported[isa][type]). */
static enum dsa_isa isas[_DSA_ISA_MAX];
static size_t n_isas;
static bool supported[_DSA_ISA_MAX][_DSA_WTYPE_MAX];
static double worst[_DSA_ISA_MAX][_DSA_WTYPE_MAX]; /* worst error / tolerance seen */

/* Exposes the out-of-memory path under ASan, whose allocator would otherwise abort on a
 * request past its maximum instead of returning NULL. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
        return "allocator_may_return_null=1";
}

static float bf16_widen(uint16_t h) {
        uint32_t bits = (uint32_t) h << 16;
        float f;

        memcpy(&f, &bits, sizeof(f));
        return f;
}

/* x as the panels of type hold it. */
static float round_to(enum dsa_wtype type, float x) {
        switch (type) {
        case DSA_WTYPE_F16:
                return dsa__f16_to_f32_one(dsa_f32_to_f16(x));
        case DSA_WTYPE_BF16:
        case DSA_WTYPE_BF16_DOT:
                return bf16_widen(dsa_f32_to_bf16(x));
        default:
                return x;
        }
}

/* x as the storage bits of type (16-bit types only). */
static uint16_t bits_of(enum dsa_wtype type, float x) {
        return type == DSA_WTYPE_F16 ? dsa_f32_to_f16(x) : dsa_f32_to_bf16(x);
}

struct problem {
        size_t N, C, OC, ldi, ldo;
        enum dsa_wtype type;
        float *x, *w, *bias; /* bias NULL or OC; w already rounded to type */
        enum dsa_epilogue ep;
        double *want, *mag; /* (N,OC): naive result and sum |x w| + |bias| */
};

static void problem_init(struct problem *p, struct dsa_test_rng *rng, enum dsa_wtype type, size_t N,
                         size_t C, size_t OC, size_t pad_i, size_t pad_o, bool with_bias,
                         enum dsa_epilogue ep) {
        *p = (struct problem) { .N = N, .C = C, .OC = OC, .ldi = C + pad_i, .ldo = OC + pad_o,
                                .type = type, .ep = ep };
        p->x = dsa_test_falloc(N * p->ldi);
        p->w = dsa_test_falloc(OC * C);
        p->bias = with_bias ? dsa_test_falloc(OC) : NULL;
        /* inp's padding is NaN: a kernel that reads past C poisons its output. */
        dsa_test_fill(p->x, N * p->ldi, NAN);
        for (size_t n = 0; n < N; n++)
                dsa_test_rng_fill(rng, p->x + n * p->ldi, C, -1.0f, 1.0f);
        dsa_test_rng_fill(rng, p->w, OC * C, -1.0f, 1.0f);
        for (size_t i = 0; i < OC * C; i++)
                p->w[i] = round_to(type, p->w[i]);
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
                                float x = p->x[n * p->ldi + c];
                                if (type == DSA_WTYPE_BF16_DOT) /* activations rounded too */
                                        x = bf16_widen(dsa__f32_to_bf16_dot_one(x));
                                double t = (double) x * p->w[o * C + c];
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
        double rel = p->type == DSA_WTYPE_BF16_DOT ? BF16_DOT_MAX_REL_ERR : DSA_TEST_GEMM_MAX_REL_ERR;

        return dsa_test_gemm_tolerance(p->mag[i], p->want[i], rel, p->ep);
}

/* out (N, ldo) against the naive result in columns [oc0, oc1), sentinels elsewhere; and
 * against ref_out (the reference variant's output of the same type) or NULL, within the same
 * tolerance. */
static bool check_out(const struct problem *p, enum dsa_isa isa, const float *out,
                      const float *ref_out, size_t oc0, size_t oc1) {
        double worst_ratio = 0;
        size_t wn = 0, wo = 0;

        for (size_t n = 0; n < p->N; n++)
                for (size_t o = 0; o < p->ldo; o++) {
                        float got = out[n * p->ldo + o];
                        double ratio;
                        if (o < oc0 || o >= oc1) {
                                if (got != DSA_TEST_SENTINEL) {
                                        printf("FAIL %s/%s N=%zu C=%zu OC=%zu [%zu,%zu) ldo=%zu: wrote column %zu of row %zu\n",
                                               dsa_test_isa_names[isa], wtype_names[p->type], p->N, p->C, p->OC, oc0, oc1, p->ldo, o, n);
                                        return false;
                                }
                                continue;
                        }
                        ratio = fabs(got - p->want[n * p->OC + o]) / tolerance(p, n * p->OC + o);
                        if (ref_out) {
                                double r2 = fabs(got - ref_out[n * p->ldo + o]) / tolerance(p, n * p->OC + o);
                                ratio = isnan(r2) ? NAN : MAX(ratio, r2);
                        }
                        if (!(ratio <= worst_ratio)) { /* catches NaN */
                                worst_ratio = isnan(ratio) ? INFINITY : ratio;
                                wn = n, wo = o;
                        }
                }
        worst[isa][p->type] = MAX(worst[isa][p->type], worst_ratio);
        if (worst_ratio > 1) {
                size_t i = wn * p->OC + wo;
                printf("FAIL %s/%s N=%zu C=%zu OC=%zu ldi=%zu ldo=%zu bias=%d ep=%d: [%zu,%zu] got %.9g want %.9g ref %.9g (tol %.3g)\n",
                       dsa_test_isa_names[isa], wtype_names[p->type], p->N, p->C, p->OC, p->ldi, p->ldo, p->bias != NULL, p->ep, wn, wo,
                       out[wn * p->ldo + wo], p->want[i], ref_out ? ref_out[wn * p->ldo + wo] : NAN,
                       tolerance(p, i));
                return false;
        }
        return true;
}

/* w (OC,C) already rounded to type, packed for isa from the fp32 matrix or (from_u16, 16-bit
 * types) from its storage bits. */
static struct dsa_packed_f32 *pack(enum dsa_isa isa, enum dsa_wtype type, const float *w, size_t OC,
                                   size_t C, bool from_u16) {
        struct dsa_packed_f32 *pw = NULL;
        uint16_t *h = NULL;

        if (type != DSA_WTYPE_F32 && from_u16 && w) {
                h = malloc((OC * C + 1) * sizeof(uint16_t));
                assert_non_null(h);
                for (size_t i = 0; i < OC * C; i++)
                        h[i] = bits_of(type, w[i]);
                assert_int_equal(dsa__packed_new_isa_typed(isa, type, NULL, h, OC, C, &pw), 0);
                free(h);
        } else if (type == DSA_WTYPE_F32)
                assert_int_equal(dsa__packed_f32_new_isa(isa, w, OC, C, &pw), 0);
        else
                assert_int_equal(dsa__packed_new_isa_typed(isa, type, w, NULL, OC, C, &pw), 0);
        assert_non_null(pw);
        assert_int_equal(dsa__packed_f32_isa(pw), isa);
        assert_int_equal(dsa_packed_f32_wtype(pw), type);
        assert_int_equal(dsa_packed_f32_rows(pw), OC);
        assert_int_equal(dsa_packed_f32_cols(pw), C);
        /* The panels hold 2 or 4 bytes per weight, plus padding to whole panels of 64 bytes. */
        size_t B = dsa_packed_f32_block(pw), es = type == DSA_WTYPE_F32 ? 4 : 2;
        size_t panels = (OC + B - 1) / B, rows = type == DSA_WTYPE_BF16_DOT ? C + C % 2 : C;
        assert_true(dsa_packed_f32_bytes(pw) >= panels * rows * B * es);
        assert_true(dsa_packed_f32_bytes(pw) < panels * (rows * B * es + 64) + 1);
        assert_int_equal(dsa_packed_f32_bytes(pw) % 64, 0);
        return pw;
}

/* Every ISA and type against the naive loop, SIMD against ref of the same type, on the cross
 * product of ragged sizes; bias, epilogue and paddings rotate with the shape so each meets
 * every size. */
static void test_shapes(void **state) {
        static const size_t Ns[] = { 1, 2, 5, 6, 7, 13, 128, 129 };
        static const size_t Cs[] = { 1, 3, 8, 17, 64, 255, 768 };
        static const size_t OCs[] = { 1, 5, 16, 17, 33, 100, 768 };
        struct dsa_test_rng rng = { 11 };
        size_t case_no = 0;

        for (size_t ni = 0; ni < ELEMENTSOF(Ns); ni++)
                for (size_t ci = 0; ci < ELEMENTSOF(Cs); ci++)
                        for (size_t oi = 0; oi < ELEMENTSOF(OCs); oi++, case_no++)
                                for (int t = 0; t < _DSA_WTYPE_MAX; t++) {
                                        size_t N = Ns[ni], C = Cs[ci], OC = OCs[oi];
                                        enum dsa_epilogue ep = (enum dsa_epilogue) ((case_no + t) % 3);
                                        struct problem p;
                                        float *ref_out = NULL;

                                        /* The largest products only once in a while: the naive loop is
                                         * slow under the sanitizers. */
                                        if (N * C * OC > 20000000 && (case_no + t) % 4 != 0)
                                                continue;
                                        problem_init(&p, &rng, (enum dsa_wtype) t, N, C, OC, case_no % 2 ? 5 : 0,
                                                     case_no % 5 ? 3 : 0, (case_no / 3) % 2 == 0, ep);
                                        for (size_t s = 0; s < n_isas; s++) {
                                                struct dsa_packed_f32 *pw;
                                                float *out;

                                                if (!supported[isas[s]][t])
                                                        continue;
                                                pw = pack(isas[s], (enum dsa_wtype) t, p.w, OC, C, case_no % 2);
                                                out = dsa_test_falloc(N * p.ldo);
                                                dsa_test_fill(out, N * p.ldo, DSA_TEST_SENTINEL);
                                                dsa_linear_packed_f32(out, p.ldo, p.x, p.ldi, pw, p.bias, N, 0, OC, ep);
                                                assert_true(check_out(&p, isas[s], out, ref_out, 0, OC));
                                                if (t == DSA_WTYPE_F16 || t == DSA_WTYPE_BF16) {
                                                        /* Widening is exact: the fp32 loop's bits on the
                                                         * rounded weights. */
                                                        struct dsa_packed_f32 *p32 = pack(isas[s], DSA_WTYPE_F32, p.w, OC, C, false);
                                                        float *o32 = dsa_test_falloc(N * p.ldo);
                                                        dsa_test_fill(o32, N * p.ldo, DSA_TEST_SENTINEL);
                                                        dsa_linear_packed_f32(o32, p.ldo, p.x, p.ldi, p32, p.bias, N, 0, OC, ep);
                                                        assert_memory_equal(o32, out, N * p.ldo * sizeof(float));
                                                        free(o32);
                                                        dsa_packed_f32_free(p32);
                                                }
                                                if (isas[s] == DSA_ISA_REF)
                                                        ref_out = out;
                                                else
                                                        free(out);
                                                dsa_packed_f32_free(pw);
                                        }
                                        free(ref_out);
                                        problem_done(&p);
                                }
}

struct subrange {
        const struct problem *p;
        const struct dsa_packed_f32 *pw;
};

static void run_subrange(void *userdata, float *out, size_t oc0, size_t oc1) {
        const struct subrange *u = userdata;
        const struct problem *p = u->p;

        dsa_linear_packed_f32(out, p->ldo, p->x, p->ldi, u->pw, p->bias, p->N, oc0, oc1, p->ep);
}

/* Column sub-ranges on block boundaries: the full call's bits in [oc0, oc1), sentinels
 * elsewhere; and a split of [0, OC) into blocks, as a pool would, gives the full result. */
static void test_subranges(void **state) {
        static const size_t shapes[][3] = { { 7, 33, 100 }, { 13, 255, 768 }, { 128, 64, 129 },
                                            { 2, 768, 33 }, { 6, 17, 17 } };
        struct dsa_test_rng rng = { 12 };

        for (size_t s = 0; s < n_isas; s++)
                for (int t = 0; t < _DSA_WTYPE_MAX; t++)
                for (size_t si = 0; si < ELEMENTSOF(shapes); si++)
                        for (int ep = 0; ep <= DSA_EPILOGUE_GELU_TANH; ep++) {
                                size_t N = shapes[si][0], C = shapes[si][1], OC = shapes[si][2];
                                struct problem p;
                                struct dsa_packed_f32 *pw;
                                float *full;
                                char name[64];

                                /* The 16-bit types with one epilogue each (test_shapes has them
                                 * all): the quadratic walk over sub-ranges is the slow part. */
                                if (!supported[isas[s]][t] || (t != DSA_WTYPE_F32 && ep != t % 3))
                                        continue;
                                problem_init(&p, &rng, (enum dsa_wtype) t, N, C, OC, 1, 2, ep != 1,
                                             (enum dsa_epilogue) ep);
                                pw = pack(isas[s], (enum dsa_wtype) t, p.w, OC, C, ep == 2);
                                assert_true(dsa_packed_f32_block(pw) > 0);
                                full = dsa_test_falloc(N * p.ldo);
                                dsa_test_fill(full, N * p.ldo, DSA_TEST_SENTINEL);
                                dsa_linear_packed_f32(full, p.ldo, p.x, p.ldi, pw, p.bias, N, 0, OC, p.ep);
                                assert_true(check_out(&p, isas[s], full, NULL, 0, OC));

                                snprintf(name, sizeof(name), "%s/%s C=%zu", dsa_test_isa_names[isas[s]], wtype_names[t], C);
                                dsa_test_gemm_subranges(name, run_subrange, &(struct subrange) { &p, pw }, full, N, OC,
                                                        p.ldo, dsa_packed_f32_block(pw), 0);

                                free(full);
                                dsa_packed_f32_free(pw);
                                problem_done(&p);
                        }
}

/* C = 0: out is the bias (or 0) through the epilogue; N = 0 or an empty range writes nothing. */
static void test_degenerate(void **state) {
        const float bias[5] = { -1, 0, 0.5f, 2, -3 };

        for (size_t s = 0; s < n_isas; s++)
        for (int t = 0; t < _DSA_WTYPE_MAX; t++) {
                struct dsa_packed_f32 *pw;
                float out[2 * 6];

                if (!supported[isas[s]][t])
                        continue;
                pw = pack(isas[s], (enum dsa_wtype) t, NULL, 5, 0, false);

                dsa_test_fill(out, ELEMENTSOF(out), DSA_TEST_SENTINEL);
                dsa_linear_packed_f32(out, 6, NULL, 0, pw, bias, 2, 0, 5, DSA_EPILOGUE_NONE);
                for (size_t n = 0; n < 2; n++) {
                        assert_memory_equal(out + n * 6, bias, sizeof(bias));
                        assert_true(out[n * 6 + 5] == DSA_TEST_SENTINEL);
                }
                dsa_linear_packed_f32(out, 6, NULL, 0, pw, NULL, 2, 0, 5, DSA_EPILOGUE_GELU_ERF);
                for (size_t n = 0; n < 2; n++)
                        for (size_t o = 0; o < 5; o++)
                                assert_true(out[n * 6 + o] == 0.0f);

                dsa_test_fill(out, ELEMENTSOF(out), DSA_TEST_SENTINEL);
                dsa_linear_packed_f32(out, 6, NULL, 0, pw, bias, 0, 0, 5, DSA_EPILOGUE_NONE);
                dsa_linear_packed_f32(out, 6, NULL, 0, pw, bias, 2, 5, 5, DSA_EPILOGUE_NONE);
                for (size_t i = 0; i < ELEMENTSOF(out); i++)
                        assert_true(out[i] == DSA_TEST_SENTINEL);
                dsa_packed_f32_free(pw);

                pw = pack(isas[s], (enum dsa_wtype) t, NULL, 0, 7, true);
                dsa_linear_packed_f32(out, 6, NULL, 7, pw, NULL, 2, 0, 0, DSA_EPILOGUE_NONE);
                dsa_packed_f32_free(pw);
        }
}

/* unpack returns the matrix bit for bit, signed zeros, infinities and NaN payloads included:
 * fp32 as given, the 16-bit types as the widened rounding of each value (denormals, overflow
 * to inf), or from 16-bit sources as the widened bits, any bits. */
static void test_unpack(void **state) {
        static const size_t shapes[][2] = { { 1, 1 }, { 5, 3 }, { 17, 255 }, { 33, 64 }, { 100, 17 } };
        struct dsa_test_rng rng = { 13 };

        for (size_t s = 0; s < n_isas; s++)
                for (int t = 0; t < _DSA_WTYPE_MAX; t++)
                        for (size_t si = 0; si < ELEMENTSOF(shapes); si++) {
                                size_t OC = shapes[si][0], C = shapes[si][1];
                                float *w = dsa_test_falloc(OC * C), *back = dsa_test_falloc(OC * C), *want = dsa_test_falloc(OC * C);
                                uint16_t *h = malloc(OC * C * sizeof(uint16_t));
                                struct dsa_packed_f32 *pw = NULL;
                                uint32_t nan_payload = 0x7fc12345, denormal = 0x00000123;

                                if (!supported[isas[s]][t]) {
                                        free(w), free(back), free(want), free(h);
                                        continue;
                                }
                                assert_non_null(h);
                                dsa_test_rng_fill(&rng, w, OC * C, -1e3f, 1e3f);
                                w[0] = -0.0f;
                                if (OC * C > 6) {
                                        w[1] = INFINITY, memcpy(&w[2], &nan_payload, sizeof(float));
                                        memcpy(&w[3], &denormal, sizeof(float));
                                        w[4] = 1e5f;       /* past the half range: inf */
                                        w[5] = -3e-6f;     /* a half subnormal */
                                        w[6] = 1.00390625f; /* 1 + 2^-8: a bf16 tie, to even 1 */
                                }
                                if (t == DSA_WTYPE_F32)
                                        assert_int_equal(dsa__packed_f32_new_isa(isas[s], w, OC, C, &pw), 0);
                                else
                                        assert_int_equal(dsa__packed_new_isa_typed(isas[s], (enum dsa_wtype) t, w,
                                                                                   NULL, OC, C, &pw), 0);
                                for (size_t i = 0; i < OC * C; i++)
                                        want[i] = round_to((enum dsa_wtype) t, w[i]);
                                dsa_test_fill(back, OC * C, DSA_TEST_SENTINEL);
                                dsa_packed_f32_unpack(pw, back);
                                assert_memory_equal(back, want, OC * C * sizeof(float));
                                dsa_packed_f32_free(pw);

                                if (t != DSA_WTYPE_F32) {
                                        /* Any 16 bits from a 16-bit source, NaN payloads included. */
                                        for (size_t i = 0; i < OC * C; i++) {
                                                h[i] = (uint16_t) dsa_test_rng_u64(&rng);
                                                want[i] = t == DSA_WTYPE_F16 ? dsa__f16_to_f32_one(h[i])
                                                                             : bf16_widen(h[i]);
                                        }
                                        assert_int_equal(dsa__packed_new_isa_typed(isas[s], (enum dsa_wtype) t, NULL,
                                                                                   h, OC, C, &pw), 0);
                                        dsa_test_fill(back, OC * C, DSA_TEST_SENTINEL);
                                        dsa_packed_f32_unpack(pw, back);
                                        assert_memory_equal(back, want, OC * C * sizeof(float));
                                        dsa_packed_f32_free(pw);
                                }
                                free(w), free(back), free(want), free(h);
                        }
}

/* ---- The converters. Independent references: the nearest of the two neighbours of |x| in
 * the target format, found by value in double (ties to the even encoding; past the largest
 * finite value the next neighbour is inf, standing for 2^16 or 2^128 as IEEE rounding says). */

/* f16 encoding -> value, over the non-negative finite halfs (inf counts as 2^16 here). */
static double f16_value(uint16_t h) {
        return h == 0x7c00 ? 65536.0 : (double) dsa__f16_to_f32_one(h);
}

static uint16_t f16_nearest_ref(float f) {
        uint32_t x;
        uint16_t sign, lo = 0, hi = 0x7c00;
        double d = fabs((double) f);

        memcpy(&x, &f, sizeof(x));
        sign = (uint16_t) ((x >> 16) & 0x8000);
        if (isinf(f))
                return sign | 0x7c00;
        /* Largest encoding with value <= d, by bisection over the monotone encodings. */
        while (hi - lo > 1) {
                uint16_t mid = (uint16_t) ((lo + hi) / 2);
                if (f16_value(mid) <= d)
                        lo = mid;
                else
                        hi = mid;
        }
        if (f16_value(hi) <= d) /* d >= 2^16 */
                return sign | 0x7c00;
        double dl = d - f16_value(lo), dh = f16_value(hi) - d;
        return sign | (dl < dh || (dl == dh && !(lo & 1)) ? lo : hi);
}

static uint16_t bf16_nearest_ref(float f) {
        uint32_t x, lo, hi;
        double d = fabs((double) f), vl, vh;

        memcpy(&x, &f, sizeof(x));
        lo = (x & 0x7fffffffu) >> 16;
        hi = lo + 1;
        vl = fabs((double) bf16_widen((uint16_t) lo));
        vh = hi == 0x7f80 ? ldexp(1.0, 128) : fabs((double) bf16_widen((uint16_t) hi));
        if (lo == 0x7f80) /* inf */
                return (uint16_t) (x >> 16);
        double dl = d - vl, dh = vh - d;
        return (uint16_t) (((x >> 16) & 0x8000) | (dl < dh || (dl == dh && !(lo & 1)) ? lo : hi));
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t f16_f16c(float f) {
        return (uint16_t) _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#endif

static bool has_f16c(void) {
#if defined(__x86_64__)
        return dsa_kernels_for(DSA_ISA_AVX2) != NULL; /* AVX2 implies F16C in dsa's tables */
#else
        return false;
#endif
}

static void check_convert(float f) {
        uint32_t x;
        uint16_t h = dsa_f32_to_f16(f), b = dsa_f32_to_bf16(f), bd = dsa__f32_to_bf16_dot_one(f);

        memcpy(&x, &f, sizeof(x));
        if (isnan(f)) {
                /* Quiet NaN, sign and top payload bits kept. */
                assert_int_equal(h, ((x >> 16) & 0x8000) | 0x7e00 | ((x >> 13) & 0x3ff));
                assert_int_equal(b, (x >> 16) | 0x40);
                assert_int_equal(bd, b);
        } else {
                if (h != f16_nearest_ref(f))
                        printf("FAIL f16 of %a (0x%08x): 0x%04x, want 0x%04x\n", f, x, h, f16_nearest_ref(f));
                assert_int_equal(h, f16_nearest_ref(f));
                if (b != bf16_nearest_ref(f))
                        printf("FAIL bf16 of %a (0x%08x): 0x%04x, want 0x%04x\n", f, x, b, bf16_nearest_ref(f));
                assert_int_equal(b, bf16_nearest_ref(f));
                /* The dot rounding: denormals to a signed zero, else the same. */
                assert_int_equal(bd, fpclassify(f) == FP_SUBNORMAL ? (x >> 16) & 0x8000 : b);
        }
#if defined(__x86_64__)
        if (has_f16c())
                assert_int_equal(h, f16_f16c(f));
#endif
}

static void test_convert(void **state) {
        static const uint32_t special[] = {
                0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007fffff, 0x00800000, /* 0, denormal */
                0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001, 0x7f800001, 0x7fbfffff, /* inf, nan */
                0x7f7fffff, 0xff7fffff, 0x7f7f8000, 0x7f7f7fff,                         /* bf16 overflow */
                0x477fe000, 0x477fefff, 0x477ff000, 0x477ff001, 0x47800000, 0xc77ff000, /* half max */
                0x38800000, 0x387fe000, 0x387ff000, 0x33800000, 0x33000000, 0x33000001, /* half subnormal */
                0x32ffffff, 0xb3000001, 0x33c00000, 0x34200000, 0x3f808000, 0x3f818000, /* ties */
                0x3f800fff, 0x3f801000, 0x3f803000, 0x3f801001,
        };
        struct dsa_test_rng rng = { 17 };

        for (size_t i = 0; i < ELEMENTSOF(special); i++) {
                float f;
                memcpy(&f, &special[i], sizeof(f));
                check_convert(f);
        }
        /* Every half: widening then rounding gives it back (NaN: quieted). */
        for (uint32_t h = 0; h < 0x10000; h++) {
                uint16_t back = dsa_f32_to_f16(dsa__f16_to_f32_one((uint16_t) h));
                bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
                assert_int_equal(back, nan ? h | 0x200 : h);
                assert_int_equal(dsa_f32_to_bf16(bf16_widen((uint16_t) h)),
                                 (h & 0x7f80) == 0x7f80 && (h & 0x7f) ? h | 0x40 : h);
        }
        /* Random bits, and random values in the half's range and near its ties. */
        for (int i = 0; i < 200000; i++) {
                uint32_t x = (uint32_t) dsa_test_rng_u64(&rng);
                float f;
                if (i % 4 == 1)
                        x = (x & 0x8fffffffu) | 0x30000000u; /* exponents around the half range */
                else if (i % 4 == 2)
                        x = (x & 0xffffe000u) | 0x1000u; /* exact half ties */
                else if (i % 4 == 3)
                        x = (x & 0xffff0000u) | 0x8000u; /* exact bf16 ties */
                memcpy(&f, &x, sizeof(f));
                check_convert(f);
        }
}

static void test_errors(void **state) {
        struct dsa_packed_f32 *pw = (struct dsa_packed_f32 *) 0x1;
        float w[4] = { 0 };

        /* OC * C floats past SIZE_MAX bytes: refused before anything is read. */
        assert_int_equal(dsa_packed_f32_new(w, SIZE_MAX / 2, 16, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_f32_new(w, 16, SIZE_MAX / 8, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_f32_new(w, SIZE_MAX, 1, &pw), -EOVERFLOW);
        /* 2^48 bytes: representable, never allocatable (more than the address space). */
        assert_int_equal(dsa_packed_f32_new(w, (size_t) 1 << 36, 1024, &pw), -ENOMEM);
        assert_ptr_equal(pw, (struct dsa_packed_f32 *) 0x1); /* untouched on failure */

        assert_int_equal(dsa_packed_f32_new(NULL, 4, 4, &pw), -EINVAL);
        assert_int_equal(dsa_packed_f32_new(w, 2, 2, NULL), -EINVAL);
        assert_int_equal(dsa__packed_f32_new_isa(_DSA_ISA_MAX, w, 2, 2, &pw), -EOPNOTSUPP);
        /* The typed constructors: the same checks, plus the type and the source kind. */
        uint16_t h[4] = { 0 };
        assert_int_equal(dsa_packed_f32_new_typed(w, SIZE_MAX / 2, 16, DSA_WTYPE_F16, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_f32_new_u16(h, 16, SIZE_MAX / 8, DSA_WTYPE_BF16, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_f32_new_u16(h, SIZE_MAX / 2, 16, DSA_WTYPE_BF16, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_f32_new_u16(h, (size_t) 1 << 37, 1024, DSA_WTYPE_F16, &pw), -ENOMEM);
        assert_int_equal(dsa_packed_f32_new_typed(w, 2, 2, _DSA_WTYPE_MAX, &pw), -EINVAL);
        assert_int_equal(dsa_packed_f32_new_typed(w, 2, 2, (enum dsa_wtype) -1, &pw), -EINVAL);
        assert_int_equal(dsa_packed_f32_new_typed(NULL, 2, 2, DSA_WTYPE_F16, &pw), -EINVAL);
        assert_int_equal(dsa_packed_f32_new_typed(w, 2, 2, DSA_WTYPE_F16, NULL), -EINVAL);
        assert_int_equal(dsa_packed_f32_new_u16(h, 2, 2, DSA_WTYPE_F32, &pw), -EINVAL);
        assert_int_equal(dsa_packed_f32_new_u16(NULL, 2, 2, DSA_WTYPE_BF16, &pw), -EINVAL);
        assert_int_equal(dsa__packed_new_isa_typed(DSA_ISA_REF, DSA_WTYPE_F16, w, h, 2, 2, &pw), -EINVAL);
        assert_int_equal(dsa__packed_new_isa_typed(DSA_ISA_AVX2, DSA_WTYPE_BF16_DOT, w, NULL, 2, 2, &pw),
                         -EOPNOTSUPP);
        if (!dsa__cpu_has_avx512bf16())
                assert_int_equal(dsa__packed_new_isa_typed(DSA_ISA_AVX512, DSA_WTYPE_BF16_DOT, w, NULL, 2,
                                                           2, &pw), -EOPNOTSUPP);
        for (int isa = 0; isa < _DSA_ISA_MAX; isa++)
                if (!dsa_kernels_for((enum dsa_isa) isa))
                        assert_int_equal(dsa__packed_f32_new_isa((enum dsa_isa) isa, w, 2, 2, &pw), -EOPNOTSUPP);
        assert_ptr_equal(pw, (struct dsa_packed_f32 *) 0x1);

        assert_null(dsa_packed_f32_free(NULL));
        assert_int_equal(dsa_packed_f32_block(NULL), 0);
        assert_int_equal(dsa_packed_f32_bytes(NULL), 0);
        assert_int_equal(dsa_packed_f32_wtype(NULL), DSA_WTYPE_F32);
}

/* dsa_packed_f32_new packs for the table dsa_kernels() picked (DSA_ISA may force it). */
static void test_dispatch(void **state) {
        struct dsa_packed_f32 *pw = NULL;
        float w[6] = { 1, 2, 3, 4, 5, 6 };

        assert_int_equal(dsa_packed_f32_new(w, 2, 3, &pw), 0);
        assert_int_equal(dsa__packed_f32_isa(pw), dsa_kernels()->isa);
        assert_true(dsa_packed_f32_block(pw) >= 8);
        assert_int_equal(dsa_packed_f32_wtype(pw), DSA_WTYPE_F32);
        pw = dsa_packed_f32_free(pw);
        assert_null(pw);

        /* The typed ones too; half the bytes of fp32 at a shape with whole panels. */
        float big[64 * 32];
        size_t bytes32;
        for (size_t i = 0; i < ELEMENTSOF(big); i++)
                big[i] = (float) i;
        assert_int_equal(dsa_packed_f32_new(big, 64, 32, &pw), 0);
        bytes32 = dsa_packed_f32_bytes(pw);
        assert_int_equal(bytes32, 64 * 32 * sizeof(float));
        pw = dsa_packed_f32_free(pw);
        for (int t = DSA_WTYPE_F16; t < _DSA_WTYPE_MAX; t++) {
                int r = dsa_packed_f32_new_typed(big, 64, 32, (enum dsa_wtype) t, &pw);
                if (t == DSA_WTYPE_BF16_DOT && !supported[dsa_kernels()->isa][t]) {
                        assert_int_equal(r, -EOPNOTSUPP);
                        continue;
                }
                assert_int_equal(r, 0);
                assert_int_equal(dsa__packed_f32_isa(pw), dsa_kernels()->isa);
                assert_int_equal(dsa_packed_f32_wtype(pw), t);
                assert_int_equal(dsa_packed_f32_bytes(pw), bytes32 / 2);
                pw = dsa_packed_f32_free(pw);
        }
        /* BF16_DOT by default exactly where the picked table has a loop for it. */
        assert_int_equal(dsa_packed_f32_default_wtype(DSA_WTYPE_F16), DSA_WTYPE_F16);
        assert_int_equal(dsa_packed_f32_default_wtype(DSA_WTYPE_F32), DSA_WTYPE_F32);
        assert_int_equal(dsa_packed_f32_default_wtype(DSA_WTYPE_BF16),
                         dsa_kernels()->isa == DSA_ISA_AVX512 && dsa__cpu_has_avx512bf16() ? DSA_WTYPE_BF16_DOT
                                                                                          : DSA_WTYPE_BF16);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dispatch),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_convert),
                cmocka_unit_test(test_unpack),
                cmocka_unit_test(test_degenerate),
                cmocka_unit_test(test_subranges),
                cmocka_unit_test(test_shapes),
        };
        int r;

        n_isas = dsa_test_gemm_isas(isas);
        for (size_t s = 0; s < n_isas; s++) {
                const enum dsa_isa isa = isas[s];
                for (int t = 0; t < _DSA_WTYPE_MAX; t++) {
                        struct dsa_packed_f32 *pw = NULL;
                        const float w[1] = { 1 };
                        int q = dsa__packed_new_isa_typed(isa, (enum dsa_wtype) t, w, NULL, 1, 1, &pw);
                        supported[isa][t] = q == 0;
                        if (q < 0)
                                printf("SKIP variant %s/%s: %s\n", dsa_test_isa_names[isa], wtype_names[t],
                                       isa == DSA_ISA_AVX512 ? "CPU lacks AVX512-BF16" : "no such loop for this ISA");
                        dsa_packed_f32_free(pw);
                }
        }
        if (!supported[DSA_ISA_AVX512][DSA_WTYPE_BF16_DOT])
                printf("SKIP bf16dot avx512bf16 vs its reference: not run on this CPU\n");

        r = cmocka_run_group_tests(tests, NULL, NULL);

        printf("\nworst error / tolerance per variant:\n");
        for (size_t s = 0; s < n_isas; s++)
                for (int t = 0; t < _DSA_WTYPE_MAX; t++)
                        if (supported[isas[s]][t])
                                printf("  %-7s %-8s %.3g\n", dsa_test_isa_names[isas[s]], wtype_names[t], worst[isas[s]][t]);
        return r;
}
