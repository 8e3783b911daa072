/* The INT8 GEMM against the pre-packed fp32 GEMM it would replace, one thread, same run: at the
 * linear-layer shapes of BERT-base (C x OC = 768 x 768 for QKV pieces and the attention output,
 * 768 x 2304 fused QKV, 768 x 3072 FFN up, 3072 x 768 FFN down) for N = 1, 8, 32 and 128 rows.
 * Reports GOPS = 2 N C OC / time for dsa_linear_packed_q8 (activations quantized beforehand, as
 * a fused producer would hand them over), the same with dsa_quantize_rows_q8 inside the timing,
 * and GFLOP/s of dsa_linear_packed_f32; best of the repetitions. Weights are packed outside the
 * timing, as at model load. --quick: a few repetitions (ctest). Never fails on time: only on a
 * setup error or a non-finite output. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "basic/macro.h"
#include "kernels/gemm-q8.h"
#include "kernels/kernels.h"

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

enum impl { IMPL_Q8, IMPL_Q8_QUANT, IMPL_F32, _IMPL_MAX };

struct bench {
        size_t N, C, OC, S;
        float *x, *w, *out, *sx, *sw;
        int8_t *qx, *qw;
        struct dsa_packed_q8 *pq;
        struct dsa_packed_f32 *pf;
};

static void run(const struct bench *b, enum impl impl) {
        switch (impl) {
        case IMPL_Q8_QUANT:
                dsa_quantize_rows_q8(b->qx, b->sx, b->x, b->C, b->N, b->C, 0);
                __attribute__((fallthrough));
        case IMPL_Q8:
                dsa_linear_packed_q8(b->out, b->OC, b->qx, b->S, b->sx, b->pq, NULL, b->N, 0, b->OC,
                                     DSA_EPILOGUE_NONE);
                break;
        default:
                dsa_linear_packed_f32(b->out, b->OC, b->x, b->C, b->pf, NULL, b->N, 0, b->OC,
                                      DSA_EPILOGUE_NONE);
                break;
        }
}

/* Best G(FL)OPS of impl: batches of calls at least 2 ms long, repeated for min_s seconds. */
static double measure(const struct bench *b, enum impl impl, double min_s) {
        const double ops = 2.0 * b->N * b->C * b->OC;
        double best = 0, total = 0, t0 = now();
        size_t inner = 1;

        run(b, impl); /* warm-up: pages, caches */
        while (now() - t0 < 2e-3 && inner < (1u << 20)) {
                run(b, impl);
                inner++;
        }
        for (int reps = 0; reps < 3 || total < min_s; reps++) {
                double t1 = now();
                for (size_t i = 0; i < inner; i++)
                        run(b, impl);
                double dt = now() - t1;
                total += dt;
                best = MAX(best, ops * inner / dt * 1e-9);
        }
        return best;
}

static int setup(struct bench *b, size_t N, size_t C, size_t OC) {
        int r;

        *b = (struct bench) { .N = N, .C = C, .OC = OC, .S = dsa_q8_row_stride(C) };
        b->x = malloc(N * C * sizeof(float));
        b->w = malloc(OC * C * sizeof(float));
        b->out = malloc(N * OC * sizeof(float));
        b->sx = malloc(N * sizeof(float));
        b->sw = malloc(OC * sizeof(float));
        b->qx = malloc(N * b->S);
        b->qw = malloc(OC * C);
        if (!b->x || !b->w || !b->out || !b->sx || !b->sw || !b->qx || !b->qw)
                return -ENOMEM;
        for (size_t i = 0; i < N * C; i++)
                b->x[i] = (float) ((i * 7919) % 1000) * 1e-3f - 0.5f;
        for (size_t i = 0; i < OC * C; i++)
                b->w[i] = (float) ((i * 104729) % 1000) * 1e-3f - 0.5f;
        dsa_quantize_weight_q8(b->qw, b->sw, b->w, OC, C);
        dsa_quantize_rows_q8(b->qx, b->sx, b->x, C, N, C, 0);
        r = dsa_packed_q8_new(b->qw, b->sw, OC, C, &b->pq);
        if (r < 0)
                return r;
        return dsa_packed_f32_new(b->w, OC, C, &b->pf);
}

static void teardown(struct bench *b) {
        dsa_packed_q8_free(b->pq);
        dsa_packed_f32_free(b->pf);
        free(b->x), free(b->w), free(b->out), free(b->sx), free(b->sw), free(b->qx), free(b->qw);
}

int main(int argc, char **argv) {
        static const size_t Ns[] = { 1, 8, 32, 128 };
        static const size_t shapes[][2] = { { 768, 768 }, { 768, 2304 }, { 768, 3072 }, { 3072, 768 } };
        const char *kernel = "?";
        double min_s = 0.3;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--quick") == 0)
                        min_s = 0.01;
                else {
                        fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
                        return 2;
                }
        }

        printf("%-22s %10s %10s %10s %8s\n", "N x C x OC (1 thread)", "q8 GOPS", "+quant", "f32 GFLOP/s",
               "q8/f32");
        for (size_t ni = 0; ni < ELEMENTSOF(Ns); ni++)
                for (size_t si = 0; si < ELEMENTSOF(shapes); si++) {
                        struct bench b;
                        double g[_IMPL_MAX];
                        char name[64];
                        int r = setup(&b, Ns[ni], shapes[si][0], shapes[si][1]);

                        if (r < 0) {
                                fprintf(stderr, "setup %zu x %zu x %zu: %s\n", Ns[ni], shapes[si][0],
                                        shapes[si][1], strerror(-r));
                                teardown(&b);
                                return 1;
                        }
                        kernel = dsa__packed_q8_kernel(b.pq);
                        for (int impl = 0; impl < _IMPL_MAX; impl++) {
                                g[impl] = measure(&b, (enum impl) impl, min_s);
                                for (size_t i = 0; i < b.N * b.OC; i++)
                                        if (!isfinite(b.out[i])) {
                                                fprintf(stderr, "non-finite output at %zu\n", i);
                                                teardown(&b);
                                                return 1;
                                        }
                        }
                        snprintf(name, sizeof(name), "%zu x %zu x %zu", b.N, b.C, b.OC);
                        printf("%-22s %10.1f %10.1f %10.1f %7.2fx\n", name, g[IMPL_Q8], g[IMPL_Q8_QUANT],
                               g[IMPL_F32], g[IMPL_F32] > 0 ? g[IMPL_Q8] / g[IMPL_F32] : 0.0);
                        teardown(&b);
                }
        printf("q8 kernel %s, fp32 kernels %s\n", kernel, dsa_kernels()->name);
        return 0;
}
