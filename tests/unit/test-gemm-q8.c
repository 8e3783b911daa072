/* The INT8 GEMM and its quantizers: every kernel this CPU runs against the exact result (int64
 * dot products, then the documented fp32 epilogue) on shapes with ragged tails in N, C and OC,
 * row strides wider than the rows, garbage in the activation padding, bias or none and each
 * epilogue: bit for bit without GELU, within the vector GELU's tolerance with it. Column
 * sub-ranges give the full call's bits and touch nothing else; all-+-127 operands up to
 * DSA_Q8_MAX_C prove nothing saturates; every quantizer gives the reference's bytes and scales,
 * and the reference agrees with the formula in double; unpack round-trips; the int8 product
 * stays within a stated bound of fp32 GEMMs of the dequantized and of the original values;
 * sizes that overflow or cannot be allocated fail cleanly. Variants the CPU cannot run are
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

#include <cmocka.h>

#include "basic/macro.h"
#include "kernels/gemm-q8.h"
#include "kernels/kernels-internal.h"
#include "gemm-check.h"
#include "testutil.h"

/* After a GELU epilogue the SIMD GELU's own error, as test-kernels allows it (gemm-check.h):
 * |got - want| <= DSA_TEST_EPILOGUE_MAX_ERR + DSA_TEST_EPILOGUE_MAX_RERR * |want|. */
/* The int8 product against an fp32 GEMM of the same (dequantized) values: the int8 side is
 * exact up to three fp32 roundings in the epilogue, the fp32 side accumulates in fp32:
 * |q8 - f32| <= Q8_VS_F32_REL_ERR * sum_c |xd_c wd_c| + Q8_VS_F32_ABS_ERR. */
#define Q8_VS_F32_REL_ERR 2e-5
#define Q8_VS_F32_ABS_ERR 1e-6
/* The quantizer against x / scale in double: |q - x/scale| <= 0.5 (rounding) plus the error of
 * multiplying by the fp32 inverse instead of dividing (a few ulp of x/scale). */
#define QUANT_MAX_ERR(v) (0.5 + 4e-7 * fabs(v))


/* The ISAs to test: ref first, then every SIMD one this CPU runs. */
static enum dsa_isa isas[_DSA_ISA_MAX];
static size_t n_isas;
static double worst_gelu[_DSA_ISA_MAX]; /* worst error / tolerance after a GELU, per ISA */

static int8_t *balloc(size_t n) {
        int8_t *p = malloc(n ? n : 1);
        assert_non_null(p);
        return p;
}

/* Values in [-127, 127]. */
static void fill_q8(struct dsa_test_rng *rng, int8_t *q, size_t n) {
        for (size_t i = 0; i < n; i++)
                q[i] = (int8_t) ((int) (dsa_test_rng_u64(rng) % 255) - 127);
}

/* Any byte, -128 included: what may sit in the padding of an activation row. */
static void fill_garbage(struct dsa_test_rng *rng, int8_t *q, size_t n) {
        for (size_t i = 0; i < n; i++)
                q[i] = (int8_t) (dsa_test_rng_u64(rng) & 0xff);
}

/* Exposes the out-of-memory path under ASan, whose allocator would otherwise abort on a
 * request past its maximum instead of returning NULL. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
        return "allocator_may_return_null=1";
}

struct problem {
        size_t N, C, OC, S, ldq, ldo;
        int8_t *qx, *qw; /* (N, ldq), (OC, C) */
        float *sx, *sw, *bias;
        enum dsa_epilogue ep;
        float *want; /* (N, OC): the exact dot through the fp32 epilogue, then GELU in double */
};

static void problem_want(struct problem *p) {
        p->want = dsa_test_falloc(p->N * p->OC);
        for (size_t n = 0; n < p->N; n++)
                for (size_t o = 0; o < p->OC; o++) {
                        int64_t dot = 0;
                        for (size_t c = 0; c < p->C; c++)
                                dot += (int64_t) p->qx[n * p->ldq + c] * p->qw[o * p->C + c];
                        assert_true(dot >= INT32_MIN && dot <= INT32_MAX);
                        float y = fmaf((float) dot, p->sx[n] * p->sw[o], p->bias ? p->bias[o] : 0.0f);
                        p->want[n * p->OC + o] = (float) dsa_test_gelu(y, p->ep);
                }
}

static void problem_init(struct problem *p, struct dsa_test_rng *rng, size_t N, size_t C, size_t OC,
                         size_t pad_q, size_t pad_o, bool with_bias, enum dsa_epilogue ep) {
        const size_t S = dsa_q8_row_stride(C);

        *p = (struct problem) { .N = N, .C = C, .OC = OC, .S = S, .ldq = S + pad_q, .ldo = OC + pad_o, .ep = ep };
        p->qx = balloc(N * p->ldq);
        p->qw = balloc(OC * C);
        p->sx = dsa_test_falloc(N);
        p->sw = dsa_test_falloc(OC);
        p->bias = with_bias ? dsa_test_falloc(OC) : NULL;
        /* The padding of each row holds any byte: it meets zero weights. */
        fill_garbage(rng, p->qx, N * p->ldq);
        for (size_t n = 0; n < N; n++)
                fill_q8(rng, p->qx + n * p->ldq, C);
        fill_q8(rng, p->qw, OC * C);
        /* Scales that keep outputs in GELU's interesting range, one of them 0. */
        dsa_test_rng_fill(rng, p->sx, N, 1e-3f, 2e-2f);
        dsa_test_rng_fill(rng, p->sw, OC, 1e-3f, 2e-2f);
        if (OC > 2)
                p->sw[OC / 2] = 0;
        if (p->bias)
                dsa_test_rng_fill(rng, p->bias, OC, -1.0f, 1.0f);
        problem_want(p);
}

static void problem_done(struct problem *p) {
        free(p->qx), free(p->qw), free(p->sx), free(p->sw), free(p->bias), free(p->want);
}

static struct dsa_packed_q8 *pack(enum dsa_isa isa, const int8_t *q, const float *s, size_t OC, size_t C) {
        struct dsa_packed_q8 *pw = NULL;

        assert_int_equal(dsa__packed_q8_new_isa(isa, q, s, OC, C, &pw), 0);
        assert_non_null(pw);
        assert_int_equal(dsa_packed_q8_rows(pw), OC);
        assert_int_equal(dsa_packed_q8_cols(pw), C);
        return pw;
}

/* out (N, ldo) against want in [oc0, oc1): bits without an epilogue, the GELU tolerance with
 * one; sentinels elsewhere. */
static bool check_out(const struct problem *p, enum dsa_isa isa, const char *kernel, const float *out,
                      size_t oc0, size_t oc1) {
        double worst_ratio = 0;
        size_t wn = 0, wo = 0;

        for (size_t n = 0; n < p->N; n++)
                for (size_t o = 0; o < p->ldo; o++) {
                        float got = out[n * p->ldo + o], want;
                        double ratio;
                        if (o < oc0 || o >= oc1) {
                                if (got != DSA_TEST_SENTINEL) {
                                        printf("FAIL %s N=%zu C=%zu OC=%zu [%zu,%zu) ldo=%zu: wrote column %zu of row %zu\n",
                                               kernel, p->N, p->C, p->OC, oc0, oc1, p->ldo, o, n);
                                        return false;
                                }
                                continue;
                        }
                        want = p->want[n * p->OC + o];
                        if (p->ep == DSA_EPILOGUE_NONE)
                                ratio = memcmp(&got, &want, sizeof(float)) == 0 ? 0 : INFINITY;
                        else
                                ratio = fabs((double) got - want) / (DSA_TEST_EPILOGUE_MAX_ERR + DSA_TEST_EPILOGUE_MAX_RERR * fabs(want));
                        if (!(ratio <= worst_ratio)) { /* catches NaN */
                                worst_ratio = isnan(ratio) ? INFINITY : ratio;
                                wn = n, wo = o;
                        }
                }
        if (p->ep != DSA_EPILOGUE_NONE)
                worst_gelu[isa] = MAX(worst_gelu[isa], worst_ratio);
        if (worst_ratio > 1) {
                printf("FAIL %s N=%zu C=%zu OC=%zu ldq=%zu ldo=%zu bias=%d ep=%d: [%zu,%zu] got %.9g want %.9g\n",
                       kernel, p->N, p->C, p->OC, p->ldq, p->ldo, p->bias != NULL, p->ep, wn, wo,
                       out[wn * p->ldo + wo], p->want[wn * p->OC + wo]);
                return false;
        }
        return true;
}

/* Every kernel against the exact result on the cross product of ragged sizes; bias, epilogue
 * and paddings rotate with the shape so each meets every size. */
static void test_shapes(void **state) {
        static const size_t Ns[] = { 1, 2, 3, 4, 5, 7, 12, 13, 24, 37 };
        static const size_t Cs[] = { 1, 2, 3, 5, 17, 64, 127, 255, 300 };
        static const size_t OCs[] = { 1, 7, 15, 16, 17, 33, 50 };
        struct dsa_test_rng rng = { 21 };
        size_t case_no = 0;

        for (size_t ni = 0; ni < ELEMENTSOF(Ns); ni++)
                for (size_t ci = 0; ci < ELEMENTSOF(Cs); ci++)
                        for (size_t oi = 0; oi < ELEMENTSOF(OCs); oi++, case_no++) {
                                size_t N = Ns[ni], C = Cs[ci], OC = OCs[oi];
                                enum dsa_epilogue ep = (enum dsa_epilogue) (case_no % 3);
                                struct problem p;

                                problem_init(&p, &rng, N, C, OC, case_no % 2 ? 5 : 0, case_no % 5 ? 3 : 0,
                                             (case_no / 3) % 2 == 0, ep);
                                for (size_t s = 0; s < n_isas; s++) {
                                        struct dsa_packed_q8 *pw = pack(isas[s], p.qw, p.sw, OC, C);
                                        float *out = dsa_test_falloc(N * p.ldo);

                                        dsa_test_fill(out, N * p.ldo, DSA_TEST_SENTINEL);
                                        dsa_linear_packed_q8(out, p.ldo, p.qx, p.ldq, p.sx, pw, p.bias, N, 0, OC, ep);
                                        assert_true(check_out(&p, isas[s], dsa__packed_q8_kernel(pw), out, 0, OC));
                                        free(out);
                                        dsa_packed_q8_free(pw);
                                }
                                problem_done(&p);
                        }
}

struct subrange {
        const struct problem *p;
        const struct dsa_packed_q8 *pw;
};

static void run_subrange(void *userdata, float *out, size_t oc0, size_t oc1) {
        const struct subrange *u = userdata;
        const struct problem *p = u->p;

        dsa_linear_packed_q8(out, p->ldo, p->qx, p->ldq, p->sx, u->pw, p->bias, p->N, oc0, oc1, p->ep);
}

/* Column sub-ranges on 16-column boundaries (half of a VNNI or AMX block, so a range may start
 * on a block's second panel): the full call's bits in [oc0, oc1), sentinels
 * elsewhere; and a split of [0, OC) into blocks, as a pool would, gives the full result. */
static void test_subranges(void **state) {
        static const size_t shapes[][3] = { { 7, 33, 100 }, { 13, 255, 70 }, { 26, 64, 129 },
                                            { 2, 768, 33 }, { 6, 17, 17 } };
        struct dsa_test_rng rng = { 22 };

        for (size_t s = 0; s < n_isas; s++)
                for (size_t si = 0; si < ELEMENTSOF(shapes); si++)
                        for (int ep = 0; ep <= DSA_EPILOGUE_GELU_TANH; ep++) {
                                size_t N = shapes[si][0], C = shapes[si][1], OC = shapes[si][2];
                                struct problem p;
                                struct dsa_packed_q8 *pw;
                                float *full;
                                char name[64];

                                problem_init(&p, &rng, N, C, OC, 1, 2, ep != 1, (enum dsa_epilogue) ep);
                                pw = pack(isas[s], p.qw, p.sw, OC, C);
                                assert_true(dsa_packed_q8_block(pw) % DSA__Q8_NR == 0);
                                full = dsa_test_falloc(N * p.ldo);
                                dsa_test_fill(full, N * p.ldo, DSA_TEST_SENTINEL);
                                dsa_linear_packed_q8(full, p.ldo, p.qx, p.ldq, p.sx, pw, p.bias, N, 0, OC, p.ep);
                                assert_true(check_out(&p, isas[s], dsa__packed_q8_kernel(pw), full, 0, OC));

                                snprintf(name, sizeof(name), "%s C=%zu", dsa__packed_q8_kernel(pw), C);
                                dsa_test_gemm_subranges(name, run_subrange, &(struct subrange) { &p, pw }, full, N, OC,
                                                        p.ldo, DSA__Q8_NR, 0);

                                free(full);
                                dsa_packed_q8_free(pw);
                                problem_done(&p);
                        }
}

/* Operands at +-127 everywhere, where vpmaddubsw of u8 = s8 + 128 would saturate and int16 or
 * too-narrow sums would wrap: rows of all +127, all -127, alternating and random signs against
 * channels of the same, up to the largest C accepted, whose all-127 dot is 2,114,060,288. */
static void test_extremes(void **state) {
        static const size_t Cs[] = { 3072, 3071, DSA_Q8_MAX_C };
        struct dsa_test_rng rng = { 23 };

        for (size_t ci = 0; ci < ELEMENTSOF(Cs); ci++) {
                size_t C = Cs[ci], N = C > 4096 ? 5 : 13, OC = C > 4096 ? 17 : 33;
                struct problem p = { .N = N, .C = C, .OC = OC, .S = dsa_q8_row_stride(C), .ldo = OC + 1 };

                p.ldq = p.S;
                p.qx = balloc(N * p.ldq);
                p.qw = balloc(OC * C);
                p.sx = dsa_test_falloc(N), p.sw = dsa_test_falloc(OC);
                dsa_test_fill(p.sx, N, 1.0f), dsa_test_fill(p.sw, OC, 1.0f);
                memset(p.qx, 0, N * p.ldq);
                for (size_t n = 0; n < N; n++)
                        for (size_t c = 0; c < C; c++) {
                                int sign = n % 4 == 0 ? 1 : n % 4 == 1 ? -1 : n % 4 == 2 ? (c % 2 ? -1 : 1)
                                                                                          : (dsa_test_rng_u64(&rng) & 1 ? -1 : 1);
                                p.qx[n * p.ldq + c] = (int8_t) (127 * sign);
                        }
                for (size_t o = 0; o < OC; o++)
                        for (size_t c = 0; c < C; c++) {
                                int sign = o % 4 == 0 ? 1 : o % 4 == 1 ? -1 : o % 4 == 2 ? (c % 2 ? -1 : 1)
                                                                                          : (dsa_test_rng_u64(&rng) & 1 ? -1 : 1);
                                p.qw[o * C + c] = (int8_t) (127 * sign);
                        }
                problem_want(&p);
                /* The all-127 corner is the exact integer (no saturation, no wrap). */
                assert_true(p.want[0] == (float) (127 * 127 * (int64_t) C));
                assert_true(p.want[OC + 0] == -(float) (127 * 127 * (int64_t) C));

                for (size_t s = 0; s < n_isas; s++) {
                        struct dsa_packed_q8 *pw = pack(isas[s], p.qw, p.sw, OC, C);
                        float *out = dsa_test_falloc(N * p.ldo);

                        dsa_test_fill(out, N * p.ldo, DSA_TEST_SENTINEL);
                        dsa_linear_packed_q8(out, p.ldo, p.qx, p.ldq, p.sx, pw, NULL, N, 0, OC, DSA_EPILOGUE_NONE);
                        assert_true(check_out(&p, isas[s], dsa__packed_q8_kernel(pw), out, 0, OC));
                        free(out);
                        dsa_packed_q8_free(pw);
                }
                problem_done(&p);
        }
}

/* C = 0: out is the bias (or 0) through the epilogue; N = 0 or an empty range writes nothing;
 * OC = 0 packs. */
static void test_degenerate(void **state) {
        const float bias[5] = { -1, 0, 0.5f, 2, -3 }, sw[5] = { 1, 1, 1, 1, 1 }, sx[2] = { 1, 1 };

        for (size_t s = 0; s < n_isas; s++) {
                struct dsa_packed_q8 *pw = pack(isas[s], NULL, sw, 5, 0);
                float out[2 * 6];

                dsa_test_fill(out, ELEMENTSOF(out), DSA_TEST_SENTINEL);
                dsa_linear_packed_q8(out, 6, NULL, 0, sx, pw, bias, 2, 0, 5, DSA_EPILOGUE_NONE);
                for (size_t n = 0; n < 2; n++) {
                        assert_memory_equal(out + n * 6, bias, sizeof(bias));
                        assert_true(out[n * 6 + 5] == DSA_TEST_SENTINEL);
                }
                dsa_linear_packed_q8(out, 6, NULL, 0, sx, pw, NULL, 2, 0, 5, DSA_EPILOGUE_GELU_ERF);
                for (size_t n = 0; n < 2; n++)
                        for (size_t o = 0; o < 5; o++)
                                assert_true(out[n * 6 + o] == 0.0f);

                dsa_test_fill(out, ELEMENTSOF(out), DSA_TEST_SENTINEL);
                dsa_linear_packed_q8(out, 6, NULL, 0, sx, pw, bias, 0, 0, 5, DSA_EPILOGUE_NONE);
                dsa_linear_packed_q8(out, 6, NULL, 0, sx, pw, bias, 2, 5, 5, DSA_EPILOGUE_NONE);
                for (size_t i = 0; i < ELEMENTSOF(out); i++)
                        assert_true(out[i] == DSA_TEST_SENTINEL);
                dsa_packed_q8_free(pw);

                pw = pack(isas[s], NULL, NULL, 0, 7);
                dsa_linear_packed_q8(out, 6, NULL, 8, sx, pw, NULL, 2, 0, 0, DSA_EPILOGUE_NONE);
                dsa_packed_q8_free(pw);
        }
}

/* unpack returns q and the scales bit for bit (signed zero, NaN payload); bytes() counts at
 * least the packed data. */
static void test_unpack(void **state) {
        static const size_t shapes[][2] = { { 1, 1 }, { 5, 3 }, { 17, 255 }, { 33, 64 }, { 100, 17 } };
        struct dsa_test_rng rng = { 24 };
        const uint32_t nan_payload = 0x7fc12345;

        for (size_t s = 0; s < n_isas; s++)
                for (size_t si = 0; si < ELEMENTSOF(shapes); si++) {
                        size_t OC = shapes[si][0], C = shapes[si][1];
                        int8_t *q = balloc(OC * C), *back = balloc(OC * C);
                        float *sc = dsa_test_falloc(OC), *sback = dsa_test_falloc(OC);
                        struct dsa_packed_q8 *pw;

                        fill_q8(&rng, q, OC * C);
                        q[0] = -127;
                        dsa_test_rng_fill(&rng, sc, OC, 0, 1);
                        sc[0] = -0.0f;
                        if (OC > 1)
                                memcpy(&sc[1], &nan_payload, sizeof(float));
                        pw = pack(isas[s], q, sc, OC, C);
                        assert_true(dsa_packed_q8_bytes(pw) >= OC * C + OC * sizeof(float));
                        memset(back, 0x55, OC * C);
                        dsa_test_fill(sback, OC, DSA_TEST_SENTINEL);
                        dsa_packed_q8_unpack(pw, back, sback);
                        assert_memory_equal(back, q, OC * C);
                        assert_memory_equal(sback, sc, OC * sizeof(float));
                        dsa_packed_q8_free(pw);
                        free(q), free(back), free(sc), free(sback);
                }
}

static void test_errors(void **state) {
        struct dsa_packed_q8 *pw = (struct dsa_packed_q8 *) 0x1;
        int8_t q[4] = { 0 };
        float sc[4] = { 1, 1, 1, 1 };

        /* C past the int32-exact bound; sizes past SIZE_MAX: refused before anything is read. */
        assert_int_equal(dsa_packed_q8_new(q, sc, 1, DSA_Q8_MAX_C + 1, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_q8_new(q, sc, SIZE_MAX, 16, &pw), -EOVERFLOW);
        assert_int_equal(dsa_packed_q8_new(q, sc, SIZE_MAX / 64, 1024, &pw), -EOVERFLOW);
        /* 2^50 bytes: representable, never allocatable (more than the 47-bit user address
         * space malloc's mmap gets; 2^46 was granted by an overcommitting 128 GiB machine). */
        assert_int_equal(dsa_packed_q8_new(q, sc, (size_t) 1 << 40, 1024, &pw), -ENOMEM);
        assert_ptr_equal(pw, (struct dsa_packed_q8 *) 0x1); /* untouched on failure */

        assert_int_equal(dsa_packed_q8_new(NULL, sc, 2, 2, &pw), -EINVAL);
        assert_int_equal(dsa_packed_q8_new(q, NULL, 2, 2, &pw), -EINVAL);
        assert_int_equal(dsa_packed_q8_new(q, sc, 2, 2, NULL), -EINVAL);
        q[3] = INT8_MIN; /* -128: outside the documented range */
        assert_int_equal(dsa_packed_q8_new(q, sc, 2, 2, &pw), -EINVAL);
        q[3] = 0;
        assert_int_equal(dsa__packed_q8_new_isa(_DSA_ISA_MAX, q, sc, 2, 2, &pw), -EOPNOTSUPP);
        for (int isa = 0; isa < _DSA_ISA_MAX; isa++)
                if (!dsa_kernels_for((enum dsa_isa) isa)) {
                        assert_int_equal(dsa__packed_q8_new_isa((enum dsa_isa) isa, q, sc, 2, 2, &pw), -EOPNOTSUPP);
                        assert_null(dsa__quantize_rows_q8_for((enum dsa_isa) isa));
                }
        assert_ptr_equal(pw, (struct dsa_packed_q8 *) 0x1);

        assert_null(dsa_packed_q8_free(NULL));
        assert_int_equal(dsa_packed_q8_block(NULL), 0);
        assert_int_equal(dsa_packed_q8_bytes(NULL), 0);
        assert_int_equal(dsa_q8_row_stride(0), 0);
        assert_int_equal(dsa_q8_row_stride(5), 8);
        assert_int_equal(dsa_q8_row_stride(768), 768);
        assert_int_equal(dsa_q8_row_stride(SIZE_MAX - 1), SIZE_MAX);
}

/* One quantized row against the formula in double: the scale (dynamic: max|x|/127 correctly
 * rounded; fixed: as given), q within QUANT_MAX_ERR of x/scale clamped, the max element at
 * +-127, zeros for a zero scale. */
static bool check_quant_row(const float *x, size_t C, const int8_t *q, float scale, float fixed) {
        double max = 0;

        for (size_t c = 0; c < C; c++)
                max = fmax(max, fabs(x[c]));
        bool scale_ok = fixed > 0 ? scale == fixed
                       : max == 0 ? scale == 0
                                  : fabs(scale - max / 127.0) <= 0.5 * ldexp(1.0, ilogb(max / 127.0) - 23);

        if (!scale_ok) {
                printf("FAIL quantizer scale %.9g for max %.9g (fixed %g)\n", scale, max, fixed);
                return false;
        }
        for (size_t c = 0; c < C; c++) {
                double v = scale > 0 ? x[c] / (double) scale : 0;
                double want = fmin(fmax(v, -127.0), 127.0);
                if (q[c] < -127 || fabs(q[c] - want) > QUANT_MAX_ERR(v) ||
                    (!(fixed > 0) && fabs(x[c]) == max && max > 0 && abs(q[c]) != 127)) {
                        printf("FAIL quantizer x=%.9g scale=%.9g: q=%d, x/scale=%.9g\n", x[c], scale, q[c], v);
                        return false;
                }
        }
        return true;
}

/* Rows with ties at fixed scale 1 (2.5 -> 2, -0.5 -> 0, 3.5 -> 4: nearest even), values far
 * past the clamp, an all-zero row, and random rows; every variant's bytes (padding included,
 * over a buffer of garbage) and scales equal the reference's, which agrees with the formula. */
static void test_quantize_rows(void **state) {
        static const size_t Cs[] = { 1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 63, 64, 100, 255, 300, 768 };
        static const float fixed[] = { 0, 1.0f, 0.01f };
        struct dsa_test_rng rng = { 25 };

        for (size_t ci = 0; ci < ELEMENTSOF(Cs); ci++)
                for (size_t fi = 0; fi < ELEMENTSOF(fixed); fi++) {
                        const size_t C = Cs[ci], N = 6, ldx = C + ci % 3, S = dsa_q8_row_stride(C);
                        float *x = dsa_test_falloc(N * ldx), sref[6], sgot[6];
                        int8_t *qref = balloc(N * S), *qgot = balloc(N * S);

                        dsa_test_fill(x, N * ldx, NAN); /* past C: a quantizer that reads it poisons its row */
                        for (size_t n = 0; n < N; n++)
                                dsa_test_rng_fill(&rng, x + n * ldx, C, -3.0f, 3.0f);
                        for (size_t c = 0; c < C; c++) {
                                static const float ties[] = { 2.5f, -0.5f, 3.5f, -126.5f, 0.5f, -2.5f };
                                x[1 * ldx + c] = 0;
                                x[2 * ldx + c] = ties[c % ELEMENTSOF(ties)];
                                x[3 * ldx + c] *= 1e6f; /* clamps at fixed scales */
                                x[4 * ldx + c] *= 1e-30f;
                        }
                        fill_garbage(&rng, qref, N * S);
                        dsa__quantize_rows_q8_ref(qref, sref, x, ldx, N, C, fixed[fi]);
                        for (size_t n = 0; n < N; n++) {
                                assert_true(check_quant_row(x + n * ldx, C, qref + n * S, sref[n], fixed[fi]));
                                for (size_t c = C; c < S; c++)
                                        assert_int_equal(qref[n * S + c], 0);
                        }
                        if (fixed[fi] == 0) {
                                assert_true(sref[1] == 0.0f);
                                if (C >= 4) /* 2.5, -0.5, 3.5, -126.5 at scale 126.5/127 */
                                        assert_int_equal(qref[2 * S + 3], -127);
                        } else if (fixed[fi] == 1.0f) {
                                for (size_t c = 0; c < C; c++) {
                                        static const int8_t want[] = { 2, 0, 4, -126, 0, -2 };
                                        assert_int_equal(qref[2 * S + c], want[c % ELEMENTSOF(want)]);
                                }
                        }

                        for (size_t s = 0; s < n_isas; s++) {
                                dsa__quantize_rows_q8_fn *f = dsa__quantize_rows_q8_for(isas[s]);
                                assert_non_null(f);
                                fill_garbage(&rng, qgot, N * S);
                                dsa_test_fill(sgot, N, DSA_TEST_SENTINEL);
                                f(qgot, sgot, x, ldx, N, C, fixed[fi]);
                                if (memcmp(qgot, qref, N * S) != 0 || memcmp(sgot, sref, sizeof(sref)) != 0) {
                                        for (size_t i = 0; i < N * S; i++)
                                                if (qgot[i] != qref[i])
                                                        printf("FAIL quantizer %s C=%zu fixed=%g: byte %zu of row %zu: %d, ref %d\n",
                                                               dsa_test_isa_names[isas[s]], C, fixed[fi], i % S, i / S, qgot[i], qref[i]);
                                        fail();
                                }
                        }
                        /* The public entry point is one of them. */
                        dsa_quantize_rows_q8(qgot, sgot, x, ldx, N, C, fixed[fi]);
                        assert_memory_equal(qgot, qref, N * S);
                        free(x), free(qref), free(qgot);
                }
}

static void test_quantize_weight(void **state) {
        const size_t OC = 9, C = 77;
        struct dsa_test_rng rng = { 26 };
        float *w = dsa_test_falloc(OC * C), sc[9];
        int8_t *q = balloc(OC * C);

        dsa_test_rng_fill(&rng, w, OC * C, -0.2f, 0.2f);
        dsa_test_fill(w + 3 * C, C, 0); /* a zero row: scale 0, zeros */
        dsa_quantize_weight_q8(q, sc, w, OC, C);
        for (size_t o = 0; o < OC; o++)
                assert_true(check_quant_row(w + o * C, C, q + o * C, sc[o], 0));
        assert_true(sc[3] == 0.0f);
        free(w), free(q);
}

/* Dequantized operands through the fp32 packed GEMM give the int8 result within
 * Q8_VS_F32_REL_ERR; against the original fp32 operands the difference is the quantization's:
 * |x.w - xd.wd| <= sum_c (sx/2 |w_c| + |xd_c| sw/2), checked with 1% slack plus the fp32 side. */
static void test_vs_f32(void **state) {
        static const size_t shapes[][3] = { { 1, 768, 64 }, { 13, 300, 50 }, { 37, 3072, 40 } };
        struct dsa_test_rng rng = { 27 };

        for (size_t si = 0; si < ELEMENTSOF(shapes); si++) {
                const size_t N = shapes[si][0], C = shapes[si][1], OC = shapes[si][2], S = dsa_q8_row_stride(C);
                float *x = dsa_test_falloc(N * C), *w = dsa_test_falloc(OC * C), *xd = dsa_test_falloc(N * C), *wd = dsa_test_falloc(OC * C);
                float *bias = dsa_test_falloc(OC), *sx = dsa_test_falloc(N), *sw = dsa_test_falloc(OC), *ref = dsa_test_falloc(N * OC), *out = dsa_test_falloc(N * OC);
                int8_t *qx = balloc(N * S), *qw = balloc(OC * C);
                struct dsa_packed_f32 *pf = NULL;

                dsa_test_rng_fill(&rng, x, N * C, -2.0f, 2.0f);
                dsa_test_rng_fill(&rng, w, OC * C, -0.1f, 0.1f);
                dsa_test_rng_fill(&rng, bias, OC, -0.5f, 0.5f);
                dsa_quantize_rows_q8(qx, sx, x, C, N, C, 0);
                dsa_quantize_weight_q8(qw, sw, w, OC, C);
                for (size_t n = 0; n < N; n++)
                        for (size_t c = 0; c < C; c++)
                                xd[n * C + c] = qx[n * S + c] * sx[n];
                for (size_t o = 0; o < OC; o++)
                        for (size_t c = 0; c < C; c++)
                                wd[o * C + c] = qw[o * C + c] * sw[o];
                assert_int_equal(dsa_packed_f32_new(wd, OC, C, &pf), 0);
                dsa_linear_packed_f32(ref, OC, xd, C, pf, bias, N, 0, OC, DSA_EPILOGUE_NONE);

                for (size_t s = 0; s < n_isas; s++) {
                        struct dsa_packed_q8 *pw = pack(isas[s], qw, sw, OC, C);
                        dsa_linear_packed_q8(out, OC, qx, S, sx, pw, bias, N, 0, OC, DSA_EPILOGUE_NONE);
                        for (size_t n = 0; n < N; n++)
                                for (size_t o = 0; o < OC; o++) {
                                        double mag = 0, qerr = 0, exact = bias[o];
                                        for (size_t c = 0; c < C; c++) {
                                                mag += fabs((double) xd[n * C + c] * wd[o * C + c]);
                                                qerr += sx[n] / 2.0 * fabs(w[o * C + c]) + fabs(xd[n * C + c]) * sw[o] / 2.0;
                                                exact += (double) x[n * C + c] * w[o * C + c];
                                        }
                                        double got = out[n * OC + o], tol = Q8_VS_F32_REL_ERR * mag + Q8_VS_F32_ABS_ERR;
                                        if (fabs(got - ref[n * OC + o]) > tol || fabs(got - exact) > 1.01 * qerr + tol) {
                                                printf("FAIL %s vs fp32 N=%zu C=%zu OC=%zu [%zu,%zu]: q8 %.9g, fp32 of dequantized %.9g (tol %.3g), exact %.9g (bound %.3g)\n",
                                                       dsa__packed_q8_kernel(pw), N, C, OC, n, o, got, ref[n * OC + o], tol,
                                                       exact, 1.01 * qerr + tol);
                                                fail();
                                        }
                                }
                        dsa_packed_q8_free(pw);
                }
                dsa_packed_f32_free(pf);
                free(x), free(w), free(xd), free(wd), free(bias), free(sx), free(sw), free(ref), free(out);
                free(qx), free(qw);
        }
}

/* dsa_packed_q8_new packs for the table dsa_kernels() picked (DSA_ISA may force it): the AMX
 * kernel where AVX-512 was picked and the CPU has AMX-INT8 (unless DSA_Q8_KERNEL names
 * another), else the VNNI kernel where it has VNNI; blocks of the columns one call computes. */
static void test_dispatch(void **state) {
        const int8_t q[6] = { 1, 2, 3, 4, 5, 6 };
        const float sc[2] = { 1, 2 };
        struct dsa_packed_q8 *pw = NULL;
        const char *want;

        switch (dsa_kernels()->isa) {
        case DSA_ISA_REF:
                want = "ref";
                break;
        case DSA_ISA_AVX2:
                want = "avx2";
                break;
        default:
                __builtin_cpu_init();
                want = dsa__q8_amx_usable() ? "amx" : __builtin_cpu_supports("avx512vnni") ? "avx512vnni" : "avx2";
                break;
        }
        assert_int_equal(dsa_packed_q8_new(q, sc, 2, 3, &pw), 0);
        assert_string_equal(dsa__packed_q8_kernel(pw), want);
        assert_int_equal(dsa_packed_q8_block(pw), strcmp(want, "amx") && strcmp(want, "avx512vnni") ? 16 : 32);
        pw = dsa_packed_q8_free(pw);
        assert_null(pw);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dispatch),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_unpack),
                cmocka_unit_test(test_quantize_weight),
                cmocka_unit_test(test_quantize_rows),
                cmocka_unit_test(test_degenerate),
                cmocka_unit_test(test_extremes),
                cmocka_unit_test(test_subranges),
                cmocka_unit_test(test_shapes),
                cmocka_unit_test(test_vs_f32),
        };
        int r;

        n_isas = dsa_test_gemm_isas(isas);
        /* AVX-512 runs one kernel: AMX, else VNNI, else AVX2's. test-gemm-q8-vnni runs this
         * again with DSA_Q8_KERNEL=avx512vnni, so an AMX machine checks both. */
        if (n_isas == _DSA_ISA_MAX && dsa__q8_amx_usable())
                printf("kernel amx: AVX-512 runs the AMX kernel%s\n",
                       __builtin_cpu_supports("avx512vnni") ? "; VNNI under DSA_Q8_KERNEL=avx512vnni" : "");
        else if (n_isas == _DSA_ISA_MAX)
                printf("SKIP kernel amx: CPU lacks AMX-INT8, the OS did not grant its state, or DSA_Q8_KERNEL names another\n");
        if (n_isas == _DSA_ISA_MAX && !(__builtin_cpu_init(), __builtin_cpu_supports("avx512vnni")))
                printf("SKIP kernel avx512vnni: CPU lacks AVX-512 VNNI (AVX-512 runs the avx2 kernel)\n");

        r = cmocka_run_group_tests(tests, NULL, NULL);

        printf("\nworst error / tolerance after a GELU epilogue, per variant:\n");
        for (size_t s = 0; s < n_isas; s++)
                printf("  %-7s %.3g\n", dsa_test_isa_names[isas[s]], worst_gelu[isas[s]]);
        return r;
}
