/* How close our fp32 GEMMs get to this machine's peak at BERT-base shapes. Measures (a) the
 * fp32 FMA peak of one core with a register-only loop over independent accumulators, in the
 * widest vectors the CPU has, (b) dsa_linear_f32 (cblas_sgemm, NoTrans x Trans, which re-packs
 * the weight every call) at the three linear-layer shapes of a 128-token BERT-base layer, on
 * one thread and on all cores, and (c) dsa_linear_packed_f32 (weights packed once, outside the
 * timing, as at model load) at the same shapes on one thread, (d) the same with the GELU
 * epilogue on the FFN up projection, (f) dsa_linear_packed_f32 per storage type (fp32, half,
 * bfloat16, and bfloat16 dot where the CPU has AVX512-BF16) at the same shapes with 128, 8
 * and 1 rows, one thread: 16-bit panels halve the weight bytes, which shows at few rows, and
 * (e) the fused attention kernel for one layer of
 * BERT-base heads (HS 64, 12 heads, q/k/v in place in the fused (T, 3C) QKV rows as bert.c
 * passes them) at T = 128 and 512, one thread, in microseconds per layer (median and best of
 * the repetitions). Prints a table, or one JSON object with --json; --attention runs (e) only.
 * Never fails on time: only a crash or a NaN in the output is a failure. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <errno.h>
#include <sched.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "basic/macro.h"
#include "kernels/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* Independent FMA chains: more than latency (4) x ports (2), so the loop is throughput-bound. */
#define PEAK_CHAINS 10

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

#if defined(__x86_64__)
/* Ten named accumulators (an array would live in memory, and the loop would measure stores):
 * acc = acc*a + b with a just below 1 stays finite however long it runs. */
#define PEAK_LOOP(vec, set1, fmadd, add, first, lanes)                                      \
        vec a = set1(0.999999f), b = set1(1e-7f);                                           \
        vec c0 = set1(0), c1 = set1(1), c2 = set1(2), c3 = set1(3), c4 = set1(4);           \
        vec c5 = set1(5), c6 = set1(6), c7 = set1(7), c8 = set1(8), c9 = set1(9);           \
        for (long i = 0; i < iters; i++) {                                                  \
                c0 = fmadd(c0, a, b), c1 = fmadd(c1, a, b), c2 = fmadd(c2, a, b);           \
                c3 = fmadd(c3, a, b), c4 = fmadd(c4, a, b), c5 = fmadd(c5, a, b);           \
                c6 = fmadd(c6, a, b), c7 = fmadd(c7, a, b), c8 = fmadd(c8, a, b);           \
                c9 = fmadd(c9, a, b);                                                       \
                __asm__ volatile("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4));    \
                __asm__ volatile("" : "+x"(c5), "+x"(c6), "+x"(c7), "+x"(c8), "+x"(c9));    \
        }                                                                                   \
        c0 = add(add(add(c0, c1), add(c2, c3)), add(add(c4, c5), add(c6, c7)));             \
        *sink = first(add(c0, add(c8, c9)));                                                \
        return (double) iters * PEAK_CHAINS * (lanes) * 2;

static float first256(__m256 v) __attribute__((target("avx2,fma")));
static float first256(__m256 v) {
        return _mm256_cvtss_f32(v);
}
static float first512(__m512 v) __attribute__((target("avx512f")));
static float first512(__m512 v) {
        return _mm512_cvtss_f32(v);
}

/* Returns the flops done. */
static double peak_avx2(long iters, float *sink) __attribute__((target("avx2,fma")));
static double peak_avx2(long iters, float *sink) {
        PEAK_LOOP(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, first256, 8)
}
static double peak_avx512(long iters, float *sink) __attribute__((target("avx512f")));
static double peak_avx512(long iters, float *sink) {
        PEAK_LOOP(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, first512, 16)
}
#endif

/* GFLOP/s of one core at full FMA throughput, or 0 when there is no SIMD FMA to measure. */
static double measure_peak(bool quick, const char **ret_isa) {
        double best = 0;
#if defined(__x86_64__)
        long iters = quick ? 2000000 : 50000000;
        double (*fn)(long, float *) = NULL;
        float sink = 0;

        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) {
                fn = peak_avx512;
                *ret_isa = "avx512 (zmm)";
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
                fn = peak_avx2;
                *ret_isa = "avx2+fma (ymm)";
        }
        if (!fn)
                return 0;
        for (int rep = 0; rep < 3; rep++) { /* best of three: the machine is shared */
                double t0 = now(), flops = fn(iters, &sink), dt = now() - t0;
                best = MAX(best, flops / dt * 1e-9);
        }
        if (!isfinite(sink))
                fprintf(stderr, "peak loop produced %g\n", sink);
#else
        (void) quick;
#endif
        return best;
}

struct shape {
        const char *name;
        size_t M, K, N; /* (M,K) x (K,N): N = OC, K = C */
};

enum impl { IMPL_BLAS, IMPL_PACKED, IMPL_PACKED_GELU };

static const char *const wtype_names[_DSA_WTYPE_MAX] = { "f32", "f16", "bf16", "bf16dot" };
static const size_t typed_M[] = { 128, 8, 1 };

static void run_gemm(enum impl impl, const struct shape *s, float *out, const float *x,
                     const float *w, const struct dsa_packed_f32 *pw) {
        if (impl == IMPL_BLAS)
                dsa_linear_f32(out, s->N, x, w, NULL, s->M, s->K, s->N);
        else
                dsa_linear_packed_f32(out, s->N, x, s->K, pw, NULL, s->M, 0, s->N,
                                      impl == IMPL_PACKED_GELU ? DSA_EPILOGUE_GELU_ERF : DSA_EPILOGUE_NONE);
}

/* GFLOP/s of one implementation at one shape, best of the timed repetitions, packed weights
 * stored as wtype; -EDOM on NaN, -EOPNOTSUPP for a type this CPU has no loop for. */
static int measure_gemm(enum impl impl, const struct shape *s, enum dsa_wtype wtype, bool quick,
                        double *ret_gflops) {
        float *x = malloc(s->M * s->K * sizeof(float)), *w = malloc(s->N * s->K * sizeof(float));
        float *out = malloc(s->M * s->N * sizeof(float));
        double flops = 2.0 * s->M * s->N * s->K, best = 0, t_total = 0;
        struct dsa_packed_f32 *pw = NULL;
        int reps = 0, r = 0;

        if (!x || !w || !out) {
                r = -ENOMEM;
                goto finish;
        }
        for (size_t i = 0; i < s->M * s->K; i++)
                x[i] = (float) ((i * 7919) % 1000) * 1e-3f - 0.5f;
        for (size_t i = 0; i < s->N * s->K; i++)
                w[i] = (float) ((i * 104729) % 1000) * 1e-3f - 0.5f;

        if (impl != IMPL_BLAS) {
                r = dsa_packed_f32_new_typed(w, s->N, s->K, wtype, &pw);
                if (r < 0)
                        goto finish;
        }

        run_gemm(impl, s, out, x, w, pw); /* warm-up: pages, threads */
        while (reps < (quick ? 2 : 5) || (!quick && t_total < 1.0)) {
                double t0 = now();
                run_gemm(impl, s, out, x, w, pw);
                double dt = now() - t0;
                t_total += dt;
                best = MAX(best, flops / dt * 1e-9);
                reps++;
        }
        for (size_t i = 0; i < s->M * s->N; i++)
                if (!isfinite(out[i])) {
                        r = -EDOM;
                        break;
                }
        *ret_gflops = best;
finish:
        dsa_packed_f32_free(pw);
        free(x), free(w), free(out);
        return r;
}

/* One BERT-base layer's attention at T tokens, as bert.c runs it on one thread: 12 heads of
 * 64, q, k and v read in place from the fused (T, 3C) QKV rows, no mask. */
#define ATT_C 768
#define ATT_NH 12
#define ATT_REPS_MAX 200

struct att_result {
        size_t T;
        double median_us, best_us; /* per layer (ATT_NH calls) */
};

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

static void attention_layer(const struct dsa_kernels *k, float *out, const float *qkv, size_t T,
                            float *scratch) {
        const size_t C = ATT_C, HS = ATT_C / ATT_NH;

        for (size_t h = 0; h < ATT_NH; h++)
                k->attention_f32(out + h * HS, C, qkv + h * HS, 3 * C, qkv + C + h * HS, 3 * C,
                                 qkv + 2 * C + h * HS, 3 * C, NULL, T, HS, 0.125f, NULL, scratch);
}

static int measure_attention(size_t T, bool quick, struct att_result *ret) {
        const size_t C = ATT_C, HS = ATT_C / ATT_NH;
        const struct dsa_kernels *k = dsa_kernels();
        float *qkv = malloc(T * 3 * C * sizeof(float)), *out = malloc(T * C * sizeof(float));
        float *scratch = malloc(dsa_attention_scratch(T, HS) * sizeof(float));
        double times[ATT_REPS_MAX], total = 0;
        int reps = 0, r = 0;

        if (!qkv || !out || !scratch) {
                r = -ENOMEM;
                goto finish;
        }
        for (size_t i = 0; i < T * 3 * C; i++)
                qkv[i] = (float) ((i * 7919) % 1000) * 2e-3f - 1.0f;
        attention_layer(k, out, qkv, T, scratch); /* warm-up */
        while (reps < ATT_REPS_MAX && (reps < (quick ? 2 : 20) || (!quick && total < 0.5))) {
                double t0 = now();
                attention_layer(k, out, qkv, T, scratch);
                times[reps] = now() - t0;
                total += times[reps++];
        }
        qsort(times, (size_t) reps, sizeof(double), cmp_double);
        *ret = (struct att_result) { T, times[reps / 2] * 1e6, times[0] * 1e6 };
        for (size_t i = 0; i < T * C; i++)
                if (!isfinite(out[i])) {
                        r = -EDOM;
                        break;
                }
finish:
        free(qkv), free(out), free(scratch);
        return r;
}

/* The CPUs this process may run on (taskset, cgroups), not all the machine has. */
static int cpus_allowed(void) {
        cpu_set_t set;

        if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
                return CPU_COUNT(&set);
        return MAX((int) sysconf(_SC_NPROCESSORS_ONLN), 1);
}

int main(int argc, char **argv) {
        static const struct shape shapes[] = {
                { "qkv/out proj (128x768)x(768x768)", 128, 768, 768 },
                { "ffn up (128x768)x(768x3072)", 128, 768, 3072 },
                { "ffn down (128x3072)x(3072x768)", 128, 3072, 768 },
        };
        static const size_t att_T[] = { 128, 512 };
        const struct shape *ffn_up = &shapes[1];
        bool quick = false, json = false, att_only = false;
        const char *isa = "none";
        int ncores = cpus_allowed(), threads[2] = { 1, 0 }, r;
        double gflops[ELEMENTSOF(shapes)][2], packed[ELEMENTSOF(shapes)], packed_gelu = 0;
        /* 0 where the type is not supported here */
        double typed[ELEMENTSOF(shapes)][ELEMENTSOF(typed_M)][_DSA_WTYPE_MAX] = { { { 0 } } };
        struct att_result att[ELEMENTSOF(att_T)];

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--quick") == 0)
                        quick = true;
                else if (strcmp(argv[i], "--json") == 0)
                        json = true;
                else if (strcmp(argv[i], "--attention") == 0)
                        att_only = true;
                else {
                        fprintf(stderr, "usage: %s [--quick] [--json] [--attention]\n", argv[0]);
                        return 2;
                }
        }
        threads[1] = MAX(ncores, 1);

        for (size_t t = 0; t < ELEMENTSOF(att_T); t++) {
                r = measure_attention(att_T[t], quick, &att[t]);
                if (r < 0) {
                        fprintf(stderr, "attention T=%zu: %s\n", att_T[t],
                                r == -EDOM ? "output has NaN or inf" : strerror(-r));
                        return 1;
                }
        }
        if (att_only) {
                for (size_t t = 0; t < ELEMENTSOF(att_T); t++)
                        printf("attention/%s T=%zu HS=64 x %d heads: median %.1f us, best %.1f us\n",
                               dsa_kernels()->name, att[t].T, ATT_NH, att[t].median_us, att[t].best_us);
                return 0;
        }

        double peak = measure_peak(quick, &isa);
        for (size_t s = 0; s < ELEMENTSOF(shapes); s++)
                for (int t = 0; t < 2; t++) {
                        dsa_blas_set_threads(threads[t]);
                        r = measure_gemm(IMPL_BLAS, &shapes[s], DSA_WTYPE_F32, quick, &gflops[s][t]);
                        if (r < 0) {
                                fprintf(stderr, "%s on %d thread(s): %s\n", shapes[s].name, threads[t],
                                        r == -EDOM ? "output has NaN or inf" : strerror(-r));
                                return 1;
                        }
                }
        for (size_t s = 0; s < ELEMENTSOF(shapes); s++) {
                r = measure_gemm(IMPL_PACKED, &shapes[s], DSA_WTYPE_F32, quick, &packed[s]);
                if (r < 0) {
                        fprintf(stderr, "%s packed: %s\n", shapes[s].name,
                                r == -EDOM ? "output has NaN or inf" : strerror(-r));
                        return 1;
                }
        }
        r = measure_gemm(IMPL_PACKED_GELU, ffn_up, DSA_WTYPE_F32, quick, &packed_gelu);
        if (r < 0) {
                fprintf(stderr, "%s packed + GELU: %s\n", ffn_up->name,
                        r == -EDOM ? "output has NaN or inf" : strerror(-r));
                return 1;
        }

        for (size_t s = 0; s < ELEMENTSOF(shapes); s++)
                for (size_t m = 0; m < ELEMENTSOF(typed_M); m++)
                        for (int t = 0; t < _DSA_WTYPE_MAX; t++) {
                                struct shape sh = shapes[s];
                                sh.M = typed_M[m];
                                r = measure_gemm(IMPL_PACKED, &sh, (enum dsa_wtype) t, quick, &typed[s][m][t]);
                                if (r == -EOPNOTSUPP) {
                                        typed[s][m][t] = 0;
                                        continue;
                                }
                                if (r < 0) {
                                        fprintf(stderr, "%s M=%zu packed %s: %s\n", shapes[s].name, sh.M,
                                                wtype_names[t], r == -EDOM ? "output has NaN or inf" : strerror(-r));
                                        return 1;
                                }
                        }

        if (json) {
                struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
                json_object_object_add(o, "peak_isa", json_object_new_string(isa));
                json_object_object_add(o, "peak_gflops_per_core", json_object_new_double(peak));
                json_object_object_add(o, "cores", json_object_new_int(ncores));
                for (size_t s = 0; s < ELEMENTSOF(shapes); s++)
                        for (int t = 0; t < 2; t++) {
                                struct json_object *e = json_object_new_object();
                                double p = peak * threads[t];
                                json_object_object_add(e, "shape", json_object_new_string(shapes[s].name));
                                json_object_object_add(e, "M", json_object_new_int((int) shapes[s].M));
                                json_object_object_add(e, "K", json_object_new_int((int) shapes[s].K));
                                json_object_object_add(e, "N", json_object_new_int((int) shapes[s].N));
                                json_object_object_add(e, "threads", json_object_new_int(threads[t]));
                                json_object_object_add(e, "gflops", json_object_new_double(gflops[s][t]));
                                json_object_object_add(e, "pct_of_peak",
                                                       json_object_new_double(p > 0 ? 100 * gflops[s][t] / p : 0));
                                json_object_array_add(arr, e);
                        }
                json_object_object_add(o, "gemm", arr);
                arr = json_object_new_array();
                for (size_t s = 0; s < ELEMENTSOF(shapes); s++) {
                        struct json_object *e = json_object_new_object();
                        json_object_object_add(e, "shape", json_object_new_string(shapes[s].name));
                        json_object_object_add(e, "M", json_object_new_int((int) shapes[s].M));
                        json_object_object_add(e, "K", json_object_new_int((int) shapes[s].K));
                        json_object_object_add(e, "N", json_object_new_int((int) shapes[s].N));
                        json_object_object_add(e, "threads", json_object_new_int(1));
                        json_object_object_add(e, "gflops", json_object_new_double(packed[s]));
                        json_object_object_add(e, "pct_of_peak",
                                               json_object_new_double(peak > 0 ? 100 * packed[s] / peak : 0));
                        json_object_object_add(e, "vs_blas",
                                               json_object_new_double(gflops[s][0] > 0 ? packed[s] / gflops[s][0] : 0));
                        json_object_array_add(arr, e);
                }
                json_object_object_add(o, "packed", arr);
                struct json_object *e = json_object_new_object();
                json_object_object_add(e, "shape", json_object_new_string(ffn_up->name));
                json_object_object_add(e, "epilogue", json_object_new_string("gelu_erf"));
                json_object_object_add(e, "gflops", json_object_new_double(packed_gelu));
                json_object_object_add(e, "vs_no_epilogue",
                                       json_object_new_double(packed[1] > 0 ? packed_gelu / packed[1] : 0));
                json_object_object_add(o, "packed_gelu", e);
                arr = json_object_new_array();
                for (size_t s = 0; s < ELEMENTSOF(shapes); s++)
                        for (size_t m = 0; m < ELEMENTSOF(typed_M); m++)
                                for (int t = 0; t < _DSA_WTYPE_MAX; t++) {
                                        if (typed[s][m][t] <= 0)
                                                continue;
                                        e = json_object_new_object();
                                        json_object_object_add(e, "shape", json_object_new_string(shapes[s].name));
                                        json_object_object_add(e, "M", json_object_new_int((int) typed_M[m]));
                                        json_object_object_add(e, "K", json_object_new_int((int) shapes[s].K));
                                        json_object_object_add(e, "N", json_object_new_int((int) shapes[s].N));
                                        json_object_object_add(e, "wtype", json_object_new_string(wtype_names[t]));
                                        json_object_object_add(e, "gflops", json_object_new_double(typed[s][m][t]));
                                        json_object_object_add(e, "vs_f32",
                                                               json_object_new_double(typed[s][m][0] > 0 ? typed[s][m][t] / typed[s][m][0] : 0));
                                        json_object_array_add(arr, e);
                                }
                json_object_object_add(o, "packed_typed", arr);
                arr = json_object_new_array();
                for (size_t t = 0; t < ELEMENTSOF(att_T); t++) {
                        e = json_object_new_object();
                        json_object_object_add(e, "T", json_object_new_int((int) att[t].T));
                        json_object_object_add(e, "HS", json_object_new_int(ATT_C / ATT_NH));
                        json_object_object_add(e, "heads", json_object_new_int(ATT_NH));
                        json_object_object_add(e, "median_us", json_object_new_double(att[t].median_us));
                        json_object_object_add(e, "best_us", json_object_new_double(att[t].best_us));
                        json_object_array_add(arr, e);
                }
                json_object_object_add(o, "attention", arr);
                printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
                json_object_put(o);
                return 0;
        }

        printf("fp32 peak, one core, %s: %.1f GFLOP/s (%d cores allowed: %.1f)\n", isa, peak, ncores,
               peak * ncores);
        printf("%-36s %8s %10s %8s\n", "dsa_linear_f32 (cblas_sgemm)", "threads", "GFLOP/s", "% peak");
        for (size_t s = 0; s < ELEMENTSOF(shapes); s++)
                for (int t = 0; t < 2; t++) {
                        double p = peak * threads[t];
                        printf("%-36s %8d %10.1f %7.1f%%\n", shapes[s].name, threads[t], gflops[s][t],
                               p > 0 ? 100 * gflops[s][t] / p : 0.0);
                }
        printf("%-36s %8s %10s %8s %8s\n", "dsa_linear_packed_f32", "threads", "GFLOP/s", "% peak",
               "vs BLAS");
        for (size_t s = 0; s < ELEMENTSOF(shapes); s++)
                printf("%-36s %8d %10.1f %7.1f%% %7.2fx\n", shapes[s].name, 1, packed[s],
                       peak > 0 ? 100 * packed[s] / peak : 0.0,
                       gflops[s][0] > 0 ? packed[s] / gflops[s][0] : 0.0);
        printf("%-36s %8d %10.1f %7.1f%% %7.2fx of no epilogue\n", "ffn up + GELU (erf) epilogue", 1,
               packed_gelu, peak > 0 ? 100 * packed_gelu / peak : 0.0,
               packed[1] > 0 ? packed_gelu / packed[1] : 0.0);
        printf("%-36s %5s", "dsa_linear_packed_f32 by storage", "rows");
        for (int t = 0; t < _DSA_WTYPE_MAX; t++)
                printf(" %9s", wtype_names[t]);
        printf("   GFLOP/s, 1 thread (- : not on this CPU)\n");
        for (size_t s = 0; s < ELEMENTSOF(shapes); s++)
                for (size_t m = 0; m < ELEMENTSOF(typed_M); m++) {
                        printf("%-36s %5zu", shapes[s].name, typed_M[m]);
                        for (int t = 0; t < _DSA_WTYPE_MAX; t++)
                                if (typed[s][m][t] > 0)
                                        printf(" %9.1f", typed[s][m][t]);
                                else
                                        printf(" %9s", "-");
                        printf("\n");
                }
        printf("%-36s %8s %10s %8s\n", "attention (12 heads of 64, in place)", "T", "median us", "best us");
        for (size_t t = 0; t < ELEMENTSOF(att_T); t++)
                printf("%-36s %8zu %10.1f %8.1f\n", dsa_kernels()->name, att[t].T, att[t].median_us,
                       att[t].best_us);
        return 0;
}
