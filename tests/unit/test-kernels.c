/* Every SIMD kernel table this CPU can run, checked against the scalar references on random
 * shapes with ragged tails, each kernel with its own named tolerance (ggml test-quantize-fns
 * style); the references themselves are checked against independent oracles (hand-computed
 * values, a PyTorch-style masked attention, a double-precision GEMM loop). Variants the CPU
 * cannot run are reported as SKIP; the test passes when every runnable one does. */
#include <math.h>
#include <setjmp.h>
#include <signal.h>
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
#include "kernels/kernels.h"
#include "testutil.h"

/* Errors are |got - want| <= ATOL + RTOL * |want|. */
#define LAYERNORM_MAX_ERR 2e-5f  /* outputs are O(1) after normalization; C up to 768 */
#define LAYERNORM_MAX_RERR 1e-5f
#define GELU_ERF_MAX_ERR 1e-6f   /* A-S 7.1.26 erf: 1.5e-7 absolute, times |x|/2 */
#define GELU_ERF_MAX_RERR 1e-6f
#define GELU_TANH_MAX_ERR 1e-7f  /* x / (1 + exp(-2u)): relative accuracy everywhere */
#define GELU_TANH_MAX_RERR 2e-6f
#define SOFTMAX_MAX_ERR 1e-7f    /* probabilities; exp relative error ~1e-7 */
#define SOFTMAX_MAX_RERR 2e-6f
#define ATTENTION_MAX_ERR 2e-6f  /* values in [-1,1], fp32 dot products of up to 128 terms */
#define ATTENTION_MAX_RERR 1e-5f
#define PROBS_MAX_ERR 1e-6f
#define PROBS_MAX_RERR 1e-5f
#define PROBS_SUM_MAX_ERR 1e-5 /* |sum_j p_j - 1| per row */
#define LINEAR_MAX_RERR 1e-5   /* relative to sum_c |x_c w_c|, fp32 accumulation */
#define REF_ORACLE_MAX_ERR 1e-6f

#define SENTINEL 1234.5f

static const size_t sizes[] = { 1, 3, 7, 15, 16, 17, 31, 33, 64, 65, 100, 129, 768 };

/* The tables to test: every SIMD ISA this CPU runs. */
static const struct dsa_kernels *ref;
static const struct dsa_kernels *simd[_DSA_ISA_MAX];
static size_t n_simd;

/* Worst error seen per kernel and ISA, printed at the end. */
enum { K_LAYERNORM, K_GELU_ERF, K_GELU_TANH, K_SOFTMAX, K_ATTENTION, K_PROBS, K_F16, K_BF16, K_RMSNORM, K_SILU_MUL,
       K_ADD, K_ROPE, _K_MAX };
static const char *const kernel_names[_K_MAX] = { "layernorm", "gelu_erf", "gelu_tanh", "softmax",
                                                  "attention", "attention probs", "f16_to_f32",
                                                  "bf16_to_f32", "rmsnorm", "silu_mul", "add", "rope" };
static double worst[_K_MAX][_DSA_ISA_MAX];

/* Like dsa_test_check_tensor, but quiet on success (it runs thousands of times) and recording
 * the worst error; on failure prints the worst element and the shape. */
static bool check(int kernel, enum dsa_isa isa, const char *shape, const float *got,
                  const float *want, size_t n, float atol, float rtol) {
        double maxerr = 0, worst_ratio = 0;
        size_t wi = 0;

        for (size_t i = 0; i < n; i++) {
                double err = fabs((double) got[i] - (double) want[i]);
                double ratio;
                if (isnan(got[i]) || isnan(want[i]))
                        err = isnan(got[i]) && isnan(want[i]) ? 0 : INFINITY;
                else if (got[i] == want[i]) /* equal infinities */
                        err = 0;
                ratio = err / (atol + rtol * fabs((double) want[i]));
                if (err > maxerr)
                        maxerr = err;
                if (ratio > worst_ratio) {
                        worst_ratio = ratio;
                        wi = i;
                }
        }
        if (maxerr > worst[kernel][isa])
                worst[kernel][isa] = maxerr;
        if (worst_ratio > 1) {
                printf("FAIL %s/%s %s: element %zu got %.9g want %.9g (err %.3g, tol %.3g + %.3g*|want|)\n",
                       kernel_names[kernel], dsa_kernels_for(isa)->name, shape, wi, got[wi], want[wi],
                       fabs((double) got[wi] - want[wi]), atol, rtol);
                return false;
        }
        return true;
}

static float *falloc(size_t n) {
        float *p = malloc((n ? n : 1) * sizeof(float));
        assert_non_null(p);
        return p;
}

static void test_layernorm(void **state) {
        struct dsa_test_rng rng = { 1 };

        for (size_t s = 0; s < n_simd; s++)
                for (size_t ci = 0; ci < ELEMENTSOF(sizes); ci++) {
                        size_t C = sizes[ci], N = 1 + dsa_test_rng_u64(&rng) % 5;
                        float *x = falloc(N * C), *g = falloc(C), *b = falloc(C);
                        float *want = falloc(N * C), *got = falloc(N * C);
                        float eps = ci % 2 ? 1e-12f : 1e-5f;
                        char shape[64];

                        /* An offset mean, so a one-pass E[x^2]-E[x]^2 would show. */
                        dsa_test_rng_fill(&rng, x, N * C, 2.0f, 6.0f);
                        dsa_test_rng_fill(&rng, g, C, 0.5f, 1.5f);
                        dsa_test_rng_fill(&rng, b, C, -1.0f, 1.0f);
                        ref->layernorm_f32(want, x, g, b, N, C, eps);
                        simd[s]->layernorm_f32(got, x, g, b, N, C, eps);
                        snprintf(shape, sizeof(shape), "N=%zu C=%zu", N, C);
                        assert_true(check(K_LAYERNORM, simd[s]->isa, shape, got, want, N * C,
                                          LAYERNORM_MAX_ERR, LAYERNORM_MAX_RERR));
                        /* in place */
                        simd[s]->layernorm_f32(x, x, g, b, N, C, eps);
                        assert_true(check(K_LAYERNORM, simd[s]->isa, "in place", x, want, N * C,
                                          LAYERNORM_MAX_ERR, LAYERNORM_MAX_RERR));
                        free(x), free(g), free(b), free(want), free(got);
                }
}

static void test_layernorm_ref_oracle(void **state) {
        float x[4] = { 1, 2, 3, 4 }, g[4] = { 1, 1, 1, 1 }, b[4] = { 0, 0, 0, 0 };
        /* mean 2.5, biased variance 1.25 */
        const float want[4] = { -1.34164079f, -0.44721360f, 0.44721360f, 1.34164079f };

        ref->layernorm_f32(x, x, g, b, 1, 4, 0.0f);
        assert_true(dsa_test_check_tensor("layernorm ref vs hand", x, want, 4, REF_ORACLE_MAX_ERR, 0));
}

static void test_rmsnorm(void **state) {
        struct dsa_test_rng rng = { 7 };

        for (size_t s = 0; s < n_simd; s++)
                for (size_t ci = 0; ci < ELEMENTSOF(sizes); ci++) {
                        size_t C = sizes[ci], N = 1 + dsa_test_rng_u64(&rng) % 5;
                        float *x = falloc(N * C), *g = falloc(C), *want = falloc(N * C), *got = falloc(N * C);
                        float eps = ci % 2 ? 1e-6f : 1e-5f;
                        char shape[64];

                        dsa_test_rng_fill(&rng, x, N * C, -3.0f, 5.0f);
                        dsa_test_rng_fill(&rng, g, C, 0.5f, 1.5f);
                        ref->rmsnorm_f32(want, x, g, N, C, eps);
                        simd[s]->rmsnorm_f32(got, x, g, N, C, eps);
                        snprintf(shape, sizeof(shape), "N=%zu C=%zu", N, C);
                        assert_true(check(K_RMSNORM, simd[s]->isa, shape, got, want, N * C,
                                          LAYERNORM_MAX_ERR, LAYERNORM_MAX_RERR));
                        simd[s]->rmsnorm_f32(x, x, g, N, C, eps);
                        assert_true(check(K_RMSNORM, simd[s]->isa, "in place", x, want, N * C,
                                          LAYERNORM_MAX_ERR, LAYERNORM_MAX_RERR));
                        free(x), free(g), free(want), free(got);
                }
}

/* rmsnorm of (3, 4) with gamma 2: rms 2.5 -> 2*3/2.5. silu(0) = 0, silu(-100) * 1 = -0
 * (within 1e-30), silu(1) * 2 = 2 / (1 + e^-1). */
static void test_rmsnorm_silu_ref_oracle(void **state) {
        float x[2] = { 3, 4 }, g[2] = { 2, 2 }, want[2] = { 2.0f * 3.0f / 3.5355339f, 2.0f * 4.0f / 3.5355339f };
        float gate[3] = { 0.0f, -100.0f, 1.0f }, up[3] = { 5.0f, 1.0f, 2.0f }, out[3];
        const float swant[3] = { 0.0f, 0.0f, 1.4621172f };

        ref->rmsnorm_f32(x, x, g, 1, 2, 0.0f);
        assert_true(dsa_test_check_tensor("rmsnorm ref vs hand", x, want, 2, REF_ORACLE_MAX_ERR, 0));
        ref->silu_mul_f32(out, gate, up, 3);
        assert_true(dsa_test_check_tensor("silu_mul ref vs hand", out, swant, 3, REF_ORACLE_MAX_ERR, 0));
}

static void test_silu_mul(void **state) {
        struct dsa_test_rng rng = { 8 };

        for (size_t s = 0; s < n_simd; s++)
                for (size_t ci = 0; ci < ELEMENTSOF(sizes); ci++) {
                        size_t n = sizes[ci] + 3;
                        float *gt = falloc(n), *u = falloc(n), *want = falloc(n), *got = falloc(n);
                        char shape[64];

                        dsa_test_rng_fill(&rng, gt, n, -12.0f, 12.0f);
                        dsa_test_rng_fill(&rng, u, n, -2.0f, 2.0f);
                        if (n > 2)
                                gt[0] = -100.0f, gt[1] = 100.0f;
                        ref->silu_mul_f32(want, gt, u, n);
                        simd[s]->silu_mul_f32(got, gt, u, n);
                        snprintf(shape, sizeof(shape), "n=%zu", n);
                        assert_true(check(K_SILU_MUL, simd[s]->isa, shape, got, want, n, 1e-6f, 2e-6f));
                        simd[s]->silu_mul_f32(gt, gt, u, n);
                        assert_true(check(K_SILU_MUL, simd[s]->isa, "in place", gt, want, n, 1e-6f, 2e-6f));
                        free(gt), free(u), free(want), free(got);
                }
}

/* rope_f32: the reference against the rotation written out in double (angles of a Llama table),
 * then every SIMD variant against it (a fused product may move a bit: 2 ulp-ish tolerance), on
 * head sizes with and without a ragged tail, one vector and several; the value after the last
 * vector is never written. */
static void test_rope(void **state) {
        static const size_t HSs[] = { 2, 6, 8, 16, 18, 32, 34, 64, 100, 128 }, ns[] = { 1, 3, 12 };
        struct dsa_test_rng rng = { 12 };

        for (size_t hi = 0; hi < ELEMENTSOF(HSs); hi++)
                for (size_t ni = 0; ni < ELEMENTSOF(ns); ni++) {
                        const size_t HS = HSs[hi], n = ns[ni], pos = 7 + 131 * hi;
                        float *x = falloc(n * HS + 1), *want = falloc(n * HS + 1), *got = falloc(n * HS + 1);
                        float *c = falloc(HS), *s = falloc(HS);
                        char shape[64];

                        for (size_t i = 0; i < HS / 2; i++) {
                                const double a = (double) pos * pow(10000.0, -2.0 * (double) i / (double) HS);
                                c[2 * i] = c[2 * i + 1] = (float) cos(a);
                                s[2 * i] = (float) -sin(a), s[2 * i + 1] = (float) sin(a);
                        }
                        dsa_test_rng_fill(&rng, x, n * HS, -3.0f, 3.0f);
                        x[n * HS] = want[n * HS] = got[n * HS] = 12345.0f;
                        memcpy(want, x, n * HS * sizeof(float));
                        ref->rope_f32(want, n, HS, c, s);
                        for (size_t v = 0; v < n; v++) /* the rotation, in double */
                                for (size_t i = 0; i < HS / 2; i++) {
                                        const double x0 = x[v * HS + 2 * i], x1 = x[v * HS + 2 * i + 1];
                                        const float w[2] = { (float) (x0 * c[2 * i] - x1 * -s[2 * i]),
                                                             (float) (x1 * c[2 * i] + x0 * s[2 * i + 1]) };
                                        assert_true(check(K_ROPE, DSA_ISA_REF, "ref vs double", want + v * HS + 2 * i, w,
                                                          2, 1e-6f, 1e-6f));
                                }
                        assert_true(want[n * HS] == 12345.0f);
                        for (size_t si = 0; si < n_simd; si++) {
                                memcpy(got, x, n * HS * sizeof(float));
                                simd[si]->rope_f32(got, n, HS, c, s);
                                snprintf(shape, sizeof(shape), "n=%zu HS=%zu", n, HS);
                                assert_true(check(K_ROPE, simd[si]->isa, shape, got, want, n * HS + 1, 1e-6f, 3e-7f));
                        }
                        free(x), free(want), free(got), free(c), free(s);
                }
}

/* IEEE addition is exact to the same rounding in every lane: no tolerance. Ragged n, and the
 * residual step's aliasing (out = a). */
static void test_add(void **state) {
        struct dsa_test_rng rng = { 9 };
        float one = 1.0f, two = 2.0f, three;

        ref->add_f32(&three, &one, &two, 1);
        assert_true(three == 3.0f);
        for (size_t s = 0; s < n_simd; s++)
                for (size_t ci = 0; ci < ELEMENTSOF(sizes); ci++) {
                        size_t n = sizes[ci] + 5;
                        float *a = falloc(n), *b = falloc(n), *want = falloc(n), *got = falloc(n);
                        char shape[64];

                        dsa_test_rng_fill(&rng, a, n, -50.0f, 50.0f);
                        dsa_test_rng_fill(&rng, b, n, -1.0f, 1.0f);
                        ref->add_f32(want, a, b, n);
                        memset(got, 0, n * sizeof(float));
                        simd[s]->add_f32(got, a, b, n);
                        snprintf(shape, sizeof(shape), "n=%zu", n);
                        assert_true(check(K_ADD, simd[s]->isa, shape, got, want, n, 0.0f, 0.0f));
                        simd[s]->add_f32(a, a, b, n);
                        assert_true(check(K_ADD, simd[s]->isa, "in place", a, want, n, 0.0f, 0.0f));
                        free(a), free(b), free(want), free(got);
                }
}

static void fill_activation_input(struct dsa_test_rng *rng, float *x, size_t n) {
        static const float special[] = { 0.0f, -0.0f, 1.0f, -1.0f, 30.0f, -30.0f, 1e-20f, -1e-20f,
                                         5.5f, -5.5f, INFINITY, -INFINITY };

        dsa_test_rng_fill(rng, x, n, -10.0f, 10.0f);
        for (size_t i = 0; i < n && i < ELEMENTSOF(special); i += 2)
                x[i] = special[(i / 2 + n) % ELEMENTSOF(special)];
}

static void test_gelu(void **state) {
        struct dsa_test_rng rng = { 2 };
        static const size_t lens[] = { 1, 3, 7, 15, 16, 17, 31, 33, 64, 65, 100, 129, 768, 100000 };

        for (size_t s = 0; s < n_simd; s++)
                for (size_t li = 0; li < ELEMENTSOF(lens); li++) {
                        size_t n = lens[li];
                        float *x = falloc(n), *want = falloc(n), *got = falloc(n);
                        char shape[64];

                        snprintf(shape, sizeof(shape), "n=%zu", n);
                        fill_activation_input(&rng, x, n);
                        memcpy(want, x, n * sizeof(float));
                        memcpy(got, x, n * sizeof(float));
                        ref->gelu_erf_f32(want, n);
                        simd[s]->gelu_erf_f32(got, n);
                        assert_true(check(K_GELU_ERF, simd[s]->isa, shape, got, want, n,
                                          GELU_ERF_MAX_ERR, GELU_ERF_MAX_RERR));

                        memcpy(want, x, n * sizeof(float));
                        memcpy(got, x, n * sizeof(float));
                        ref->gelu_tanh_f32(want, n);
                        simd[s]->gelu_tanh_f32(got, n);
                        assert_true(check(K_GELU_TANH, simd[s]->isa, shape, got, want, n,
                                          GELU_TANH_MAX_ERR, GELU_TANH_MAX_RERR));
                        free(x), free(want), free(got);
                }
}

static void test_gelu_ref_oracle(void **state) {
        float e[4] = { 1, -1, 0, 3 }, t[4] = { 1, -1, 0, 3 };
        /* scipy: x * norm.cdf(x); and the tanh formula in double */
        const float want_e[4] = { 0.841344746f, -0.158655254f, 0.0f, 2.995950246f };
        const float want_t[4] = { 0.841191990f, -0.158808009f, 0.0f, 2.996362640f };

        ref->gelu_erf_f32(e, 4);
        ref->gelu_tanh_f32(t, 4);
        assert_true(dsa_test_check_tensor("gelu_erf ref vs hand", e, want_e, 4, REF_ORACLE_MAX_ERR, 0));
        assert_true(dsa_test_check_tensor("gelu_tanh ref vs hand", t, want_t, 4, REF_ORACLE_MAX_ERR, 0));
}

static void test_softmax(void **state) {
        struct dsa_test_rng rng = { 3 };

        for (size_t s = 0; s < n_simd; s++)
                for (size_t ci = 0; ci < ELEMENTSOF(sizes); ci++) {
                        size_t C = sizes[ci], N = 1 + dsa_test_rng_u64(&rng) % 4;
                        float *x = falloc(N * C), *want = falloc(N * C), *got = falloc(N * C);
                        char shape[64];

                        dsa_test_rng_fill(&rng, x, N * C, -20.0f, 20.0f);
                        /* some -inf entries (a masked score), never a whole row */
                        for (size_t n = 0; n < N; n++)
                                for (size_t c = 1; c < C; c += 5)
                                        x[n * C + c] = -INFINITY;
                        memcpy(want, x, N * C * sizeof(float));
                        memcpy(got, x, N * C * sizeof(float));
                        ref->softmax_f32(want, N, C);
                        simd[s]->softmax_f32(got, N, C);
                        snprintf(shape, sizeof(shape), "N=%zu C=%zu", N, C);
                        assert_true(check(K_SOFTMAX, simd[s]->isa, shape, got, want, N * C,
                                          SOFTMAX_MAX_ERR, SOFTMAX_MAX_RERR));
                        for (size_t n = 0; n < N; n++)
                                for (size_t c = 1; c < C; c += 5)
                                        assert_true(got[n * C + c] == 0.0f);
                        free(x), free(want), free(got);
                }
}

static void test_softmax_ref_oracle(void **state) {
        float x[3] = { 1, 2, 3 };
        const float want[3] = { 0.0900305732f, 0.244728471f, 0.665240956f };

        ref->softmax_f32(x, 1, 3);
        assert_true(dsa_test_check_tensor("softmax ref vs hand", x, want, 3, REF_ORACLE_MAX_ERR, 0));
}

/* ---- softmax_sum_f32 */

/* A buffer of floats that ends where a PROT_NONE page starts: guarded_tail() gives its last n
 * floats, so a read or write past the n-th faults. */
struct guarded {
        char *map;
        size_t data, len;
};

static void guarded_new(struct guarded *g, size_t cap) {
        const size_t page = (size_t) sysconf(_SC_PAGESIZE);

        g->data = ALIGN_TO((cap ? cap : 1) * sizeof(float), page);
        g->len = g->data + page;
        g->map = mmap(NULL, g->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(g->map != MAP_FAILED);
        assert_int_equal(mprotect(g->map + g->data, page, PROT_NONE), 0);
}

static float *guarded_tail(struct guarded *g, size_t n) {
        assert_true(n * sizeof(float) <= g->data);
        return (float *) (g->map + g->data) - n;
}

static void guarded_free(struct guarded *g) {
        munmap(g->map, g->len);
}

/* The case a guard-page fault happened in: the handler names it, then hands the signal on to
 * cmocka's (which fails the test). */
static char fault_case[160];
static void (*fault_prev)(int);

static void fault_say(const char *s) {
        size_t n = strlen(s);
        while (n > 0) {
                ssize_t w = write(STDOUT_FILENO, s, n);
                if (w <= 0)
                        return;
                s += w, n -= (size_t) w;
        }
}

static void on_fault(int sig) {
        fault_say("FAIL ");
        fault_say(fault_case);
        fault_say(": fault, a read or write past the end of x or acc\n");
        signal(sig, fault_prev);
        if (fault_prev != SIG_DFL && fault_prev != SIG_IGN)
                fault_prev(sig);
}

static float float_of_bits(uint32_t b) {
        float f;
        memcpy(&f, &b, sizeof(f));
        return f;
}

static uint32_t bits_of_float(float f) {
        uint32_t b;
        memcpy(&b, &f, sizeof(b));
        return b;
}

/* One row of x of the given kind (8 of them). */
static void softmax_sum_row(struct dsa_test_rng *rng, float *row, size_t C, unsigned kind) {
        switch (kind % 8) {
        case 0: /* a wide spread: most exps far below the largest */
                dsa_test_rng_fill(rng, row, C, -40.0f, 40.0f);
                break;
        case 1: /* ties: four values, the largest repeated */
                for (size_t c = 0; c < C; c++)
                        row[c] = 0.75f * (float) (dsa_test_rng_u64(rng) % 4) - 1.0f;
                break;
        case 2: /* all equal: 1/C each */
                for (size_t c = 0; c < C; c++)
                        row[c] = 3.25f;
                break;
        case 3: /* far from 0 and spread over 300: most exps underflow to 0 */
                dsa_test_rng_fill(rng, row, C, -10300.0f, -10000.0f);
                break;
        case 4: /* masked scores: -inf every third value, never the whole row */
                dsa_test_rng_fill(rng, row, C, -20.0f, 20.0f);
                for (size_t c = 1; c < C; c += 3)
                        row[c] = -INFINITY;
                break;
        case 5: /* one finite value among -inf: p = 1 there, 0 elsewhere */
                for (size_t c = 0; c < C; c++)
                        row[c] = -INFINITY;
                row[dsa_test_rng_u64(rng) % C] = dsa_test_rng_uniform(rng, -5.0f, 5.0f);
                break;
        case 6: /* huge magnitudes: x - max overflows to -inf, exp 0 */
                dsa_test_rng_fill(rng, row, C, -1.5e38f, 1.5e38f); /* hi - lo finite */
                for (size_t c = 0; c < C; c++)
                        row[c] *= 2.0f;
                break;
        default: /* one 0 and exps of the rest in the subnormal range */
                dsa_test_rng_fill(rng, row, C, -104.0f, -87.0f);
                row[dsa_test_rng_u64(rng) % C] = 0.0f;
                break;
        }
}

/* acc before the call: mostly O(1), so the order of the adds and each rounding show, with
 * signed zeros, large values that swallow the adds, a subnormal, inf and a NaN with a payload. */
static void softmax_sum_acc(struct dsa_test_rng *rng, float *acc, size_t C) {
        const float special[] = { -0.0f, 0.0f, 1e7f, -1e7f, 3e38f, -3e38f, 1e-40f, 65536.0f, -0.5f,
                                  INFINITY, -INFINITY, float_of_bits(0x7fc01234u) };

        dsa_test_rng_fill(rng, acc, C, -2.0f, 2.0f);
        for (size_t c = 0; c < C; c += 4)
                acc[c] = special[(c / 4 + C) % ELEMENTSOF(special)];
}

/* softmax_sum_f32, every table (the reference too), against its contract bit for bit: that
 * table's softmax_f32 on a copy of x, then acc[c] += x[n][c] row by row here (an add of two
 * loaded floats, nothing to fuse), on every (N, C) of the lists: ragged tails, N across the
 * 16-row passes. x and acc end on a guard page (one run), and acc sits between poisoned floats
 * (another); N = 0 or C = 0 leaves acc as it was. Then each result against the sum of the
 * softmaxes in double, which the equivalence alone would miss if softmax_f32 went wrong too. */
static void test_softmax_sum(void **state) {
        static const size_t Ns[] = { 0, 1, 2, 7, 8, 15, 16, 17, 31, 33, 40 };
        static const size_t Cs[] = { 0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 100, 127, 128, 129, 300 };
        enum { NMAX = 40, CMAX = 300, FRONT = 16, BACK = 32 };
        const uint32_t poison = 0x7fa5a5a5u; /* a signalling NaN no add makes */
        const struct dsa_kernels *tables[_DSA_ISA_MAX] = { ref };
        size_t n_tables = 1;
        struct dsa_test_rng rng = { 13 };
        struct guarded gx, gacc;
        float *x = falloc(NMAX * CMAX), *sx = falloc(NMAX * CMAX), *acc0 = falloc(CMAX);
        float *want = falloc(CMAX), *pad = falloc(FRONT + CMAX + BACK);
        double *mass = malloc(CMAX * sizeof(double));
        unsigned shape_no = 0;

        assert_non_null(mass);
        for (size_t s = 0; s < n_simd; s++)
                tables[n_tables++] = simd[s];
        guarded_new(&gx, NMAX * CMAX);
        guarded_new(&gacc, CMAX);
        fault_prev = signal(SIGSEGV, on_fault);

        for (size_t ni = 0; ni < ELEMENTSOF(Ns); ni++)
                for (size_t ci = 0; ci < ELEMENTSOF(Cs); ci++, shape_no++) {
                        const size_t N = Ns[ni], C = Cs[ci];

                        for (size_t n = 0; n < N && C > 0; n++)
                                softmax_sum_row(&rng, x + n * C, C, (unsigned) n + shape_no);
                        softmax_sum_acc(&rng, acc0, C);

                        /* the sum of the softmaxes, in double */
                        for (size_t c = 0; c < C; c++)
                                mass[c] = 0;
                        for (size_t n = 0; n < N; n++) {
                                const float *row = x + n * C;
                                double max = -INFINITY, sum = 0;
                                for (size_t c = 0; c < C; c++)
                                        max = fmax(max, row[c]);
                                for (size_t c = 0; c < C; c++)
                                        sum += exp((double) row[c] - max);
                                for (size_t c = 0; c < C; c++)
                                        mass[c] += exp((double) row[c] - max) / sum;
                        }

                        for (size_t t = 0; t < n_tables; t++) {
                                const struct dsa_kernels *kt = tables[t];
                                float *gotx, *got;

                                /* the contract, written out */
                                memcpy(sx, x, N * C * sizeof(float));
                                memcpy(want, acc0, C * sizeof(float));
                                kt->softmax_f32(sx, N, C);
                                for (size_t n = 0; n < N; n++)
                                        for (size_t c = 0; c < C; c++)
                                                want[c] += sx[n * C + c];

                                for (int run = 0; run < 2; run++) {
                                        snprintf(fault_case, sizeof(fault_case), "softmax_sum_f32/%s N=%zu C=%zu %s",
                                                 kt->name, N, C, run ? "acc between poison" : "x, acc on guard pages");
                                        gotx = guarded_tail(&gx, N * C);
                                        memcpy(gotx, x, N * C * sizeof(float));
                                        if (run == 0)
                                                got = guarded_tail(&gacc, C);
                                        else {
                                                for (size_t i = 0; i < FRONT + C + BACK; i++)
                                                        memcpy(&pad[i], &poison, sizeof(poison));
                                                got = pad + FRONT;
                                        }
                                        memcpy(got, acc0, C * sizeof(float));
                                        kt->softmax_sum_f32(got, gotx, N, C);

                                        if (memcmp(got, want, C * sizeof(float)) != 0) {
                                                size_t c = 0;
                                                while (bits_of_float(got[c]) == bits_of_float(want[c]))
                                                        c++;
                                                printf("FAIL %s: acc[%zu] (was %.9g) got %.9g (0x%08x) want %.9g (0x%08x), "
                                                       "softmax_f32 then the adds in order%s\n",
                                                       fault_case, c, acc0[c], got[c], bits_of_float(got[c]),
                                                       want[c], bits_of_float(want[c]),
                                                       N == 0 || C == 0 ? " (N*C = 0: acc must not change)" : "");
                                                fail();
                                        }
                                        for (size_t i = 0; run == 1 && i < FRONT + C + BACK; i++)
                                                if ((i < FRONT || i >= FRONT + C) && bits_of_float(pad[i]) != poison) {
                                                        printf("FAIL %s: wrote acc[%td]\n", fault_case,
                                                               (ptrdiff_t) i - FRONT);
                                                        fail();
                                                }
                                }

                                /* got - acc0 against the double sum: each row's softmax within
                                 * the softmax tolerance, each add rounded to half an ulp of the
                                 * running sum (at most |acc0| + the mass, the values being >= 0) */
                                for (size_t c = 0; c < C; c++) {
                                        const double a0 = acc0[c], d = (double) got[c] - a0;
                                        const double tol = (double) N * (2 * SOFTMAX_MAX_ERR + ldexp(fabs(a0) + 2 * mass[c], -23)) +
                                                           SOFTMAX_MAX_RERR * mass[c];
                                        if (!isfinite(acc0[c]))
                                                continue; /* the bits above settle inf and NaN */
                                        if (!(fabs(d - mass[c]) <= tol)) {
                                                printf("FAIL softmax_sum_f32/%s N=%zu C=%zu: acc[%zu] %.9g -> %.9g added %.9g, "
                                                       "the softmaxes in double sum to %.9g (tol %.3g)\n",
                                                       kt->name, N, C, c, acc0[c], got[c], d, mass[c], tol);
                                                fail();
                                        }
                                }
                        }
                }

        signal(SIGSEGV, fault_prev);
        guarded_free(&gx), guarded_free(&gacc);
        free(x), free(sx), free(acc0), free(want), free(pad), free(mass);
}

/* Independent f16 decoding: sign * (m * 2^-24 | (1024 + m) * 2^(e-25)), inf and nan. */
static float f16_oracle(uint16_t h) {
        int e = (h >> 10) & 0x1f, m = h & 0x3ff;
        float sign = (h & 0x8000) ? -1.0f : 1.0f;

        if (e == 31)
                return m ? NAN : sign * INFINITY;
        if (e == 0)
                return sign * ldexpf((float) m, -24);
        return sign * ldexpf((float) (1024 + m), e - 25);
}

static void test_f16(void **state) {
        uint16_t *src = malloc(65536 * sizeof(uint16_t));
        float *want = falloc(65536), *got = falloc(65536);
        static const size_t lens[] = { 1, 3, 7, 15, 16, 17, 31, 33, 100, 65536 };

        assert_non_null(src);
        for (size_t i = 0; i < 65536; i++)
                src[i] = (uint16_t) i;

        /* The reference against the oracle, every value; -0 keeps its sign. */
        ref->f16_to_f32(want, src, 65536);
        for (size_t i = 0; i < 65536; i++) {
                float o = f16_oracle((uint16_t) i);
                if (isnan(o) ? !isnan(want[i]) : (o != want[i] || signbit(o) != signbit(want[i]))) {
                        printf("FAIL f16_to_f32 ref: 0x%04zx got %.9g want %.9g\n", i, want[i], o);
                        fail();
                }
        }
        assert_true(want[0x0001] == 5.9604645e-08f); /* smallest subnormal, 2^-24 */
        assert_true(want[0x03ff] == 6.09755516e-05f); /* largest subnormal */
        assert_true(want[0x7bff] == 65504.0f);
        assert_true(isinf(want[0x7c00]) && want[0x7c00] > 0 && isinf(want[0xfc00]) && want[0xfc00] < 0);
        assert_true(isnan(want[0x7e00]) && isnan(want[0x7c01]));
        assert_true(want[0x8000] == 0.0f && signbit(want[0x8000]));

        /* SIMD must be bit-exact with the reference (F16C quiets NaNs, keeping the payload, as
         * the reference does), on every offset and length so the tails are covered. */
        for (size_t s = 0; s < n_simd; s++)
                for (size_t li = 0; li < ELEMENTSOF(lens); li++)
                        for (size_t off = 0; off + lens[li] <= 65536; off += lens[li] == 65536 ? 1 : 4099) {
                                size_t n = lens[li];
                                memset(got, 0x55, n * sizeof(float));
                                simd[s]->f16_to_f32(got, src + off, n);
                                if (memcmp(got, want + off, n * sizeof(float)) != 0) {
                                        for (size_t i = 0; i < n; i++)
                                                if (memcmp(&got[i], &want[off + i], sizeof(float)))
                                                        printf("FAIL f16_to_f32/%s n=%zu: 0x%04zx got %.9g want %.9g\n",
                                                               simd[s]->name, n, off + i, got[i], want[off + i]);
                                        fail();
                                }
                                if (n == 65536)
                                        break;
                        }
        free(src), free(want), free(got);
}

static void test_bf16(void **state) {
        uint16_t *src = malloc(65536 * sizeof(uint16_t));
        float *want = falloc(65536), *got = falloc(65536);
        static const size_t lens[] = { 1, 3, 7, 15, 16, 17, 31, 33, 100, 65536 };

        assert_non_null(src);
        for (size_t i = 0; i < 65536; i++)
                src[i] = (uint16_t) i;
        ref->bf16_to_f32(want, src, 65536);
        assert_true(want[0x3f80] == 1.0f && want[0xc000] == -2.0f && want[0x3fc0] == 1.5f);
        assert_true(isinf(want[0x7f80]) && isnan(want[0x7fc0]) && signbit(want[0x8000]));
        assert_true(want[0x0001] == ldexpf(1.0f, -133)); /* subnormal: 2^-126 * 2^-7 */

        for (size_t s = 0; s < n_simd; s++)
                for (size_t li = 0; li < ELEMENTSOF(lens); li++)
                        for (size_t off = 0; off + lens[li] <= 65536; off += 4099) {
                                size_t n = lens[li];
                                memset(got, 0x55, n * sizeof(float));
                                simd[s]->bf16_to_f32(got, src + off, n);
                                if (memcmp(got, want + off, n * sizeof(float)) != 0) {
                                        printf("FAIL bf16_to_f32/%s n=%zu off=%zu\n", simd[s]->name, n, off);
                                        fail();
                                }
                                if (n == 65536)
                                        break;
                        }
        free(src), free(want), free(got);
}

/* PyTorch / HF BERT attention, written independently of the reference: the mask is added as
 * (1-mask)*finfo(float32).min to fp32 scores, then softmax and the weighted sum in double. */
static void attention_torch(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                            size_t ldk, const float *v, size_t ldv, const uint8_t *valid, size_t T,
                            size_t HS, float scale, float *probs) {
        float *s = falloc(T);

        for (size_t i = 0; i < T; i++) {
                double max = -INFINITY, sum = 0;
                for (size_t j = 0; j < T; j++) {
                        double dot = 0;
                        for (size_t d = 0; d < HS; d++)
                                dot += (double) q[i * ldq + d] * k[j * ldk + d];
                        s[j] = (float) dot * scale + ((valid && !valid[j]) ? -3.40282347e38f : 0.0f);
                        max = fmax(max, s[j]);
                }
                for (size_t j = 0; j < T; j++)
                        sum += exp(s[j] - max);
                for (size_t j = 0; j < T; j++)
                        probs[i * T + j] = (float) (exp(s[j] - max) / sum);
                for (size_t d = 0; d < HS; d++) {
                        double acc = 0;
                        for (size_t j = 0; j < T; j++)
                                acc += (double) probs[i * T + j] * v[j * ldv + d];
                        out[i * ldo + d] = (float) acc;
                }
        }
        free(s);
}

enum mask_kind { MASK_NONE, MASK_RANDOM, MASK_PADDING, MASK_ALL, MASK_ONE, _MASK_MAX };

static void make_mask(struct dsa_test_rng *rng, uint8_t *valid, size_t T, enum mask_kind kind) {
        size_t keep = 1 + dsa_test_rng_u64(rng) % T;

        for (size_t j = 0; j < T; j++)
                switch (kind) {
                case MASK_RANDOM:
                        valid[j] = dsa_test_rng_u64(rng) % 10 >= 3;
                        break;
                case MASK_PADDING:
                        valid[j] = j < keep;
                        break;
                case MASK_ALL:
                        valid[j] = 0;
                        break;
                case MASK_ONE:
                        valid[j] = j == keep - 1;
                        break;
                default:
                        valid[j] = 1;
                }
}

/* One (T, HS) case: q, k, v are a head slice of (T, 3*NH*HS)-like rows, out a slice of wider
 * rows whose other columns must stay untouched. */
static void attention_case(struct dsa_test_rng *rng, const struct dsa_kernels *kt, size_t T,
                           size_t HS, enum mask_kind kind, bool with_probs, bool vs_torch) {
        const size_t ld = 3 * HS + 5, ldo = HS + 3;
        float *qkv = falloc(T * ld), *want = falloc(T * ldo), *got = falloc(T * ldo);
        float *pwant = falloc(T * T), *pgot = falloc(T * T), *scratch = falloc(dsa_attention_scratch(T, HS));
        uint8_t *valid = malloc(T);
        float scale = 1.0f / sqrtf((float) HS);
        char shape[96];

        assert_non_null(valid);
        dsa_test_rng_fill(rng, qkv, T * ld, -1.0f, 1.0f);
        /* larger q for peaky softmaxes, so the exp tail matters */
        for (size_t t = 0; t < T; t++)
                for (size_t d = 0; d < HS; d++)
                        qkv[t * ld + d] *= 4.0f;
        make_mask(rng, valid, T, kind);
        for (size_t i = 0; i < T * ldo; i++)
                want[i] = got[i] = SENTINEL;

        const float *q = qkv + 1, *k = qkv + 1 + HS, *v = qkv + 1 + 2 * HS;
        const uint8_t *vm = kind == MASK_NONE ? NULL : valid;
        if (vs_torch)
                attention_torch(want, ldo, q, ld, k, ld, v, ld, vm, T, HS, scale, pwant);
        else
                ref->attention_f32(want, ldo, q, ld, k, ld, v, ld, vm, T, HS, scale, pwant, scratch);
        kt->attention_f32(got, ldo, q, ld, k, ld, v, ld, vm, T, HS, scale, with_probs ? pgot : NULL,
                          scratch);

        snprintf(shape, sizeof(shape), "T=%zu HS=%zu mask=%d probs=%d%s", T, HS, kind, with_probs,
                 vs_torch ? " vs torch" : "");
        for (size_t t = 0; t < T; t++) {
                for (size_t d = HS; d < ldo; d++)
                        if (got[t * ldo + d] != SENTINEL) {
                                printf("FAIL attention/%s %s: wrote column %zu of row %zu\n", kt->name,
                                       shape, d, t);
                                fail();
                        }
                assert_true(check(K_ATTENTION, kt->isa, shape, got + t * ldo, want + t * ldo, HS,
                                  ATTENTION_MAX_ERR, ATTENTION_MAX_RERR));
        }
        if (with_probs) {
                size_t nvalid = 0;
                for (size_t j = 0; j < T; j++)
                        nvalid += !vm || vm[j];
                assert_true(check(K_PROBS, kt->isa, shape, pgot, pwant, T * T, PROBS_MAX_ERR,
                                  PROBS_MAX_RERR));
                for (size_t i = 0; i < T; i++) {
                        double sum = 0;
                        for (size_t j = 0; j < T; j++) {
                                sum += pgot[i * T + j];
                                /* masked keys get exactly 0 while one key is valid */
                                if (vm && nvalid > 0 && !vm[j] && pgot[i * T + j] != 0.0f) {
                                        printf("FAIL attention/%s %s: masked key %zu has p=%g\n",
                                               kt->name, shape, j, pgot[i * T + j]);
                                        fail();
                                }
                        }
                        if (fabs(sum - 1.0) > PROBS_SUM_MAX_ERR) {
                                printf("FAIL attention/%s %s: probs row %zu sums to %.9g\n", kt->name,
                                       shape, i, sum);
                                fail();
                        }
                }
        }
        free(qkv), free(want), free(got), free(pwant), free(pgot), free(scratch), free(valid);
}

static void test_attention(void **state) {
        static const size_t Ts[] = { 1, 2, 3, 7, 16, 17, 33, 64, 65, 100, 129 };
        static const size_t HSs[] = { 1, 3, 7, 15, 16, 17, 31, 32, 33, 64, 65, 100, 128 };
        struct dsa_test_rng rng = { 4 };

        for (size_t s = 0; s < n_simd; s++)
                for (size_t ti = 0; ti < ELEMENTSOF(Ts); ti++)
                        for (size_t hi = 0; hi < ELEMENTSOF(HSs); hi++) {
                                enum mask_kind kind = (enum mask_kind) ((ti + hi) % _MASK_MAX);
                                attention_case(&rng, simd[s], Ts[ti], HSs[hi], kind, (ti + hi) % 2, false);
                        }
        /* every mask kind at a BERT-like shape, and T=1 */
        for (size_t s = 0; s < n_simd; s++)
                for (int kind = 0; kind < _MASK_MAX; kind++) {
                        attention_case(&rng, simd[s], 128, 64, (enum mask_kind) kind, true, false);
                        attention_case(&rng, simd[s], 1, 64, (enum mask_kind) kind, true, false);
                }
        /* The SIMD variants work on blocks of query rows (a multiple of the GEMM tile's rows,
         * fewer as T grows) against panels of 16 or 32 keys: several blocks with a ragged last
         * one, key counts just past a panel, long rows, with and without probs. */
        static const struct {
                size_t T, HS;
        } blocks[] = { { 97, 64 }, { 145, 64 }, { 200, 33 }, { 257, 64 }, { 513, 64 }, { 300, 7 } };
        for (size_t s = 0; s < n_simd; s++)
                for (size_t b = 0; b < ELEMENTSOF(blocks); b++)
                        for (int kind = 0; kind < _MASK_MAX; kind++)
                                attention_case(&rng, simd[s], blocks[b].T, blocks[b].HS, (enum mask_kind) kind,
                                               (b + (size_t) kind) % 2, false);
}

/* The reference against PyTorch's formulation, masking and the all-masked case included. */
static void test_attention_ref_vs_torch(void **state) {
        struct dsa_test_rng rng = { 5 };

        for (int kind = 0; kind < _MASK_MAX; kind++) {
                attention_case(&rng, ref, 1, 64, (enum mask_kind) kind, true, true);
                attention_case(&rng, ref, 17, 33, (enum mask_kind) kind, true, true);
                attention_case(&rng, ref, 128, 64, (enum mask_kind) kind, true, true);
        }
}

static void test_linear(void **state) {
        static const size_t Ns[] = { 1, 3, 17, 64 }, Cs[] = { 1, 7, 33, 768 }, OCs[] = { 1, 5, 16, 65 };
        struct dsa_test_rng rng = { 6 };

        for (size_t ni = 0; ni < ELEMENTSOF(Ns); ni++)
                for (size_t ci = 0; ci < ELEMENTSOF(Cs); ci++)
                        for (size_t oi = 0; oi < ELEMENTSOF(OCs); oi++)
                                for (int with_bias = 0; with_bias < 2; with_bias++) {
                                        size_t N = Ns[ni], C = Cs[ci], OC = OCs[oi];
                                        size_t ldo = OC + (oi % 2 ? 3 : 0);
                                        float *x = falloc(N * C), *w = falloc(OC * C), *b = falloc(OC);
                                        float *out = falloc(N * ldo);

                                        dsa_test_rng_fill(&rng, x, N * C, -1.0f, 1.0f);
                                        dsa_test_rng_fill(&rng, w, OC * C, -1.0f, 1.0f);
                                        dsa_test_rng_fill(&rng, b, OC, -1.0f, 1.0f);
                                        for (size_t i = 0; i < N * ldo; i++)
                                                out[i] = SENTINEL;
                                        dsa_linear_f32(out, ldo, x, w, with_bias ? b : NULL, N, C, OC);

                                        for (size_t n = 0; n < N; n++)
                                                for (size_t o = 0; o < ldo; o++) {
                                                        double acc = with_bias ? b[o < OC ? o : 0] : 0, mag = fabs(acc);
                                                        float got = out[n * ldo + o];
                                                        if (o >= OC) {
                                                                assert_true(got == SENTINEL);
                                                                continue;
                                                        }
                                                        for (size_t c = 0; c < C; c++) {
                                                                acc += (double) x[n * C + c] * w[o * C + c];
                                                                mag += fabs((double) x[n * C + c] * w[o * C + c]);
                                                        }
                                                        if (fabs(got - acc) > LINEAR_MAX_RERR * mag + 1e-7) {
                                                                printf("FAIL linear N=%zu C=%zu OC=%zu ldo=%zu bias=%d: [%zu,%zu] got %.9g want %.9g\n",
                                                                       N, C, OC, ldo, with_bias, n, o, got, acc);
                                                                fail();
                                                        }
                                                }
                                        free(x), free(w), free(b), free(out);
                                }
}

static void test_dispatch(void **state) {
        const struct dsa_kernels *best = dsa_kernels();

        assert_non_null(best);
        assert_ptr_equal(best, dsa_kernels()); /* picked once */
        assert_non_null(ref);
        assert_int_equal(ref->isa, DSA_ISA_REF);
        assert_null(dsa_kernels_for(_DSA_ISA_MAX));
        for (size_t s = 0; s < n_simd; s++)
                assert_int_equal(simd[s]->isa, (int) dsa_kernels_for(simd[s]->isa)->isa);
}

int main(void) {
        static const char *const isa_names[_DSA_ISA_MAX] = { "ref", "avx2", "avx512" };
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dispatch),
                cmocka_unit_test(test_layernorm_ref_oracle),
                cmocka_unit_test(test_layernorm),
                cmocka_unit_test(test_rmsnorm_silu_ref_oracle),
                cmocka_unit_test(test_rmsnorm),
                cmocka_unit_test(test_silu_mul),
                cmocka_unit_test(test_rope),
                cmocka_unit_test(test_add),
                cmocka_unit_test(test_gelu_ref_oracle),
                cmocka_unit_test(test_gelu),
                cmocka_unit_test(test_softmax_ref_oracle),
                cmocka_unit_test(test_softmax),
                cmocka_unit_test(test_softmax_sum),
                cmocka_unit_test(test_f16),
                cmocka_unit_test(test_bf16),
                cmocka_unit_test(test_attention_ref_vs_torch),
                cmocka_unit_test(test_attention),
                cmocka_unit_test(test_linear),
        };
        int r;

        ref = dsa_kernels_for(DSA_ISA_REF);
        for (int isa = DSA_ISA_REF + 1; isa < _DSA_ISA_MAX; isa++) {
                const struct dsa_kernels *t = dsa_kernels_for((enum dsa_isa) isa);
                if (t)
                        simd[n_simd++] = t;
                else
                        printf("SKIP variant %s: CPU lacks %s\n", isa_names[isa],
                               isa == DSA_ISA_AVX512 ? "AVX-512 (F/BW/DQ/VL)" : "AVX2+FMA+F16C");
        }

        r = cmocka_run_group_tests(tests, NULL, NULL);

        printf("\nworst |got - ref| per kernel and variant:\n");
        for (int kn = 0; kn < _K_MAX; kn++)
                for (size_t s = 0; s < n_simd; s++)
                        printf("  %-16s %-7s %.3g\n", kernel_names[kn], simd[s]->name, worst[kn][simd[s]->isa]);
        return r;
}
