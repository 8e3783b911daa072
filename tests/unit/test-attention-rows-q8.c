/* rows_lowrank_q8 (kernels/attention.h): the token scorer's query rows to signed bytes, one
 * factor a row. Every variant this machine runs against the contract, computed here step by
 * step (not through the reference kernel), bit for bit: bytes and scales, the padding bytes up to
 * R4, nothing written past them or past the n rows; rows full of the values the contract names
 * (NaN, infinities, zeros of both signs, subnormals, FLT_MAX, products that land on a half or
 * next to one) as well as plain random ones; then the argument errors, which write nothing. */
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

#include <cmocka.h>

#include "basic/macro.h"
#include "kernels/attention.h"
#include "gemm-check.h"
#include "testutil.h"

#define PAD 5          /* extra floats a row of p, bytes a row of qt (never written) */
#define FILL_BYTE 0x5a /* what qt holds where the kernel must not write */

static enum dsa_isa isas[_DSA_ISA_MAX];
static size_t n_isas;

static struct {
        size_t rows, nan, inf, zero_rows, overflow_rows, halves, neg_zero, subnormal, bytes63;
} seen;

/* The contract for one row x of R floats: bytes q[R4] and scale *s. The product is stored to a
 * volatile float, so it is rounded to fp32 before the add (never fused). */
static void oracle_row(int8_t *q, float *s, const float *x, size_t R) {
        const size_t R4 = (R + 3) / 4 * 4;
        float M = 0;

        for (size_t c = 0; c < R; c++)
                if (!isnan(x[c]) && fabsf(x[c]) > M)
                        M = fabsf(x[c]);
        float inv = M > 0 ? 63.0f / M : 0.0f;
        if (isinf(inv))
                inv = 0.0f, seen.overflow_rows++;
        seen.zero_rows += M == 0;
        *s = inv > 0 ? 1.0f / inv : 0.0f;
        for (size_t c = 0; c < R4; c++) {
                volatile float p = c < R ? x[c] * inv : 0.0f;
                const float y = p;
                int v = 0;
                if (!isnan(y)) {
                        const float h = y >= 0 ? y + 0.5f : y - 0.5f;
                        v = (int) h;
                        seen.halves += c < R && fabsf(y) - floorf(fabsf(y)) == 0.5f;
                }
                assert_true(v >= -63 && v <= 63);
                seen.bytes63 += v == 63 || v == -63;
                q[c] = (int8_t) v;
        }
}

/* A value of a row of kind k (0: plain, 1: specials mixed in, 2: a scale far from 1, 3: halves
 * m + 0.5 in [-62.5, 62.5], in a row whose largest |x| is 63, 4: zeros and NaN only (M 0), 5: so
 * small that 63 / M overflows). */
static float draw(struct dsa_test_rng *rng, size_t kind, float scale) {
        static const float specials[] = { NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-40f, -0x1p-149f,
                                          FLT_MAX, -FLT_MAX, 3e-38f, 1.0f };
        const uint64_t u = dsa_test_rng_u64(rng);

        if (kind == 1 && u % 4 == 0) {
                const float v = specials[(u >> 8) % ELEMENTSOF(specials)];
                seen.nan += isnan(v) != 0, seen.inf += isinf(v) != 0, seen.neg_zero += v == 0 && signbit(v);
                seen.subnormal += v != 0 && fabsf(v) < FLT_MIN;
                return v;
        }
        if (kind == 3)
                return (float) ((int) (u % 126) - 63) + 0.5f;
        if (kind == 4)
                return u % 3 == 0 ? NAN : u % 3 == 1 ? -0.0f : 0.0f;
        if (kind == 5)
                return dsa_test_rng_uniform(rng, -1.0f, 1.0f) * 2.5e-37f;
        return dsa_test_rng_uniform(rng, -1.0f, 1.0f) * scale;
}

static void rows_case(struct dsa_test_rng *rng, size_t R, size_t n, size_t kind) {
        const size_t R4 = (R + 3) / 4 * 4, ldp = R + (n % 2 ? PAD : 0), ldq = R4 + (n % 3 ? PAD : 0);
        const float scale = kind == 2 ? ldexpf(1.0f, (int) (dsa_test_rng_u64(rng) % 200) - 100) : 1.0f;
        /* kind 3: M = 63 (the row's first component), so inv is 1 and the halves stay exact */
        float *p = malloc((n * ldp + 1) * sizeof(float)), *s = malloc((n + 1) * sizeof(float));
        float *ws = malloc((n + 1) * sizeof(float));
        int8_t *q = malloc(n * ldq + 1), *want = malloc(n * ldq + 1);

        assert_true(p && s && ws && q && want);
        for (size_t i = 0; i < n * ldp; i++)
                p[i] = i % ldp < R ? draw(rng, kind, scale) : NAN;
        for (size_t i = 0; kind == 3 && i < n; i++)
                p[i * ldp] = 63.0f;
        memset(want, FILL_BYTE, n * ldq + 1);
        dsa_test_fill(ws, n + 1, DSA_TEST_SENTINEL);
        for (size_t i = 0; i < n; i++)
                oracle_row(want + i * ldq, ws + i, p + i * ldp, R);
        seen.rows += n;

        for (size_t t = 0; t < n_isas; t++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[t]);
                memset(q, FILL_BYTE, n * ldq + 1);
                dsa_test_fill(s, n + 1, DSA_TEST_SENTINEL);
                assert_int_equal(ak->rows_lowrank_q8(q, ldq, s, p, ldp, n, R), 0);
                if (memcmp(q, want, n * ldq + 1) || memcmp(s, ws, (n + 1) * sizeof(float)))
                        fail_msg("rows q8 %s: R=%zu n=%zu kind=%zu differs from the contract", dsa_test_isa_names[isas[t]],
                                 R, n, kind);
        }
        free(p), free(s), free(ws), free(q), free(want);
}

static void test_rows_lowrank_q8(void **state) {
        static const size_t ns[] = { 0, 1, 2, 7, 33, 3 };
        struct dsa_test_rng rng = { 77 };

        (void) state;
        for (size_t R = 1; R <= DSA_ATT_MAX_RANK_LR; R++)
                for (size_t k = 0; k < 6; k++)
                        rows_case(&rng, R, ns[(R + k) % ELEMENTSOF(ns)], k);
        printf("rows q8: %zu rows through %zu variants bit for bit; NaN %zu, inf %zu, -0 %zu, subnormal %zu; rows "
               "with M 0: %zu, 63 / M overflowing: %zu; halves %zu, bytes +-63: %zu\n",
               seen.rows, n_isas, seen.nan, seen.inf, seen.neg_zero, seen.subnormal, seen.zero_rows,
               seen.overflow_rows, seen.halves, seen.bytes63);
        /* the inputs made the cases they are there for */
        assert_true(seen.nan > 0 && seen.inf > 0 && seen.neg_zero > 0 && seen.subnormal > 0);
        assert_true(seen.zero_rows > 0 && seen.overflow_rows > 0 && seen.halves > 0 && seen.bytes63 > 0);
}

/* By hand: a row of R = 5 in R4 = 8 bytes. M 2: inv 31.5, 1 -> 31.5 -> 32, -1 -> -32, 2 -> 63. */
static void test_rows_lowrank_q8_values(void **state) {
        const float x[5] = { NAN, 2, -1, 0.5f, -0.0f };
        const int8_t want[8] = { 0, 63, -32, 16, 0, 0, 0, 0 };
        int8_t q[8];
        float s;

        (void) state;
        for (size_t t = 0; t < n_isas; t++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[t]);
                memset(q, FILL_BYTE, sizeof(q));
                assert_int_equal(ak->rows_lowrank_q8(q, 8, &s, x, 5, 1, 5), 0);
                assert_memory_equal(q, want, sizeof(q));
                assert_true(s == 1.0f / (63.0f / 2.0f));
        }
}

static void test_rows_lowrank_q8_errors(void **state) {
        enum { R = 13, R4 = 16, N = 4, LDP = R + 3, LDQ = R4 + 2 };
        static const size_t bad_R[] = { 0, DSA_ATT_MAX_RANK_LR + 1, SIZE_MAX };
        float p[N * LDP], s[N], keep_s[N];
        int8_t q[N * LDQ], keep_q[N * LDQ];

        (void) state;
        for (size_t i = 0; i < N * LDP; i++)
                p[i] = (float) i / 7.0f;
        for (size_t t = 0; t < n_isas; t++) {
                const struct dsa_attention_kernels *ak = dsa_attention_kernels_for(isas[t]);
                memset(q, FILL_BYTE, sizeof(q));
                dsa_test_fill(s, N, DSA_TEST_SENTINEL);
                memcpy(keep_q, q, sizeof(q)), memcpy(keep_s, s, sizeof(s));
                for (size_t b = 0; b < ELEMENTSOF(bad_R); b++)
                        assert_int_equal(ak->rows_lowrank_q8(q, LDQ, s, p, LDP, N, bad_R[b]), -EINVAL);
                assert_int_equal(ak->rows_lowrank_q8(NULL, LDQ, s, p, LDP, N, R), -EINVAL);
                assert_int_equal(ak->rows_lowrank_q8(q, LDQ, NULL, p, LDP, N, R), -EINVAL);
                assert_int_equal(ak->rows_lowrank_q8(q, LDQ, s, NULL, LDP, N, R), -EINVAL);
                assert_int_equal(ak->rows_lowrank_q8(q, LDQ, s, p, R - 1, N, R), -EINVAL);  /* ldp < R */
                assert_int_equal(ak->rows_lowrank_q8(q, R4 - 1, s, p, LDP, N, R), -EINVAL); /* ldq < R4 */
                assert_memory_equal(q, keep_q, sizeof(q));
                assert_memory_equal(s, keep_s, sizeof(s));
                /* one row: the strides are not read; no rows: nothing is */
                assert_int_equal(ak->rows_lowrank_q8(q, 0, s, p, 0, 1, R), 0);
                assert_int_equal(ak->rows_lowrank_q8(NULL, 0, NULL, NULL, 0, 0, R), 0);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_rows_lowrank_q8),
                cmocka_unit_test(test_rows_lowrank_q8_values),
                cmocka_unit_test(test_rows_lowrank_q8_errors),
        };

        n_isas = dsa_test_gemm_isas(isas);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
