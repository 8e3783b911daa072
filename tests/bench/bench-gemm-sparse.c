/* What pruning buys in time: the sparse packed fp32 GEMM (kernels/gemm-sparse.h) against the
 * dense packed one (dsa_linear_packed_f32) on the three linear-layer shapes of BERT-base at 128
 * and 16 tokens, one thread, for weights magnitude-pruned (engine/prune.h) to BLOCK16 10% and
 * 20% (around the fallback threshold), 50% and 70%, unstructured 50% and 2:4. For each: the
 * kept fraction of 16x1 blocks, whether dsa_packed_sparse_new packed it sparse or fell back to
 * dense, its time, and the time of the sparse kernel forced on it (no fallback), each with its
 * ratio to dense measured in the same run (ratio > 1: faster than dense). Times are the best of
 * the repetitions, the calls of the variants interleaved so a busy machine hurts them alike.
 * Never fails on time: only a crash, an error or a NaN in the output is a failure. --quick:
 * fewer repetitions. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "basic/macro.h"
#include "engine/prune.h"
#include "kernels/gemm-sparse.h"

struct shape {
        size_t N, C, OC;
};

struct pattern {
        const char *name;
        enum dsa_sparsity_pattern pat;
        float sparsity;
};

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static bool finite_all(const float *x, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (!isfinite(x[i]))
                        return false;
        return true;
}

/* Best ms of dense, auto (public constructor) and forced-sparse calls, interleaved. */
static int run_shape(const struct shape *s, const struct pattern *pt, int reps, double ret_ms[3],
                     double *ret_density, bool *ret_sparse) {
        const size_t N = s->N, C = s->C, OC = s->OC;
        float *x = malloc(N * C * sizeof(float)), *w = malloc(OC * C * sizeof(float));
        float *out = malloc(N * OC * sizeof(float));
        struct dsa_packed_f32 *dense = NULL;
        struct dsa_packed_sparse *sp = NULL, *forced = NULL;
        double best[3] = { INFINITY, INFINITY, INFINITY };
        uint64_t seed = 0x9e3779b97f4a7c15ull;
        int r = -ENOMEM;

        if (!x || !w || !out)
                goto finish;
        for (size_t i = 0; i < N * C; i++)
                x[i] = (float) ((i * 7919) % 1000) * 1e-3f - 0.5f;
        /* Weights from xorshift64*: a periodic pattern would line the pruned weights up into
         * empty 16x1 blocks that random (and trained) weights do not have. */
        for (size_t i = 0; i < OC * C; i++) {
                seed ^= seed >> 12, seed ^= seed << 25, seed ^= seed >> 27;
                w[i] = (float) ((seed * 2685821657736338717ull) >> 40) * 0x1p-24f - 0.5f;
        }
        if (pt) {
                r = dsa_prune_magnitude(w, OC, C, pt->sparsity, pt->pat);
                if (r < 0)
                        goto finish;
        }
        r = dsa_packed_f32_new(w, OC, C, &dense);
        if (r >= 0)
                r = dsa_packed_sparse_new(w, OC, C, &sp);
        if (r >= 0)
                r = dsa__packed_sparse_new_isa(dsa_kernels()->isa, w, OC, C, 2.0, &forced);
        if (r < 0)
                goto finish;

        for (int rep = -1; rep < reps; rep++) /* rep -1 warms up */
                for (int v = 0; v < 3; v++) {
                        double t0 = now();
                        if (v == 0)
                                dsa_linear_packed_f32(out, OC, x, C, dense, NULL, N, 0, OC, DSA_EPILOGUE_NONE);
                        else
                                dsa_linear_packed_sparse(out, OC, x, C, v == 1 ? sp : forced, NULL, N, 0, OC,
                                                         DSA_EPILOGUE_NONE);
                        double dt = now() - t0;
                        if (rep >= 0)
                                best[v] = MIN(best[v], dt * 1e3);
                        if (!finite_all(out, N * OC)) {
                                r = -EDOM;
                                goto finish;
                        }
                }
        memcpy(ret_ms, best, sizeof(best));
        *ret_density = dsa_packed_sparse_density(sp);
        *ret_sparse = dsa_packed_sparse_is_sparse(sp);
        r = 0;
finish:
        dsa_packed_f32_free(dense);
        dsa_packed_sparse_free(sp);
        dsa_packed_sparse_free(forced);
        free(x), free(w), free(out);
        return r;
}

int main(int argc, char **argv) {
        static const struct shape shapes[] = {
                { 128, 768, 768 }, { 128, 768, 3072 }, { 128, 3072, 768 },
                { 16, 768, 768 },  { 16, 768, 3072 },  { 16, 3072, 768 },
        };
        static const struct pattern patterns[] = {
                { "block16 10%", DSA_SPARSE_BLOCK16, 0.1f },
                { "block16 20%", DSA_SPARSE_BLOCK16, 0.2f },
                { "block16 50%", DSA_SPARSE_BLOCK16, 0.5f },
                { "block16 70%", DSA_SPARSE_BLOCK16, 0.7f },
                { "unstructured 50%", DSA_SPARSE_UNSTRUCTURED, 0.5f },
                { "2:4", DSA_SPARSE_2_4, 0.5f },
        };
        bool quick = false;
        int r;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--quick") == 0)
                        quick = true;
                else {
                        fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
                        return 2;
                }
        }

        printf("sparse vs dense packed fp32 GEMM, one thread, %s kernels, best of %d\n", dsa_kernels()->name,
               quick ? 3 : 20);
        printf("%-16s %-17s %7s %9s %7s %9s %7s %11s %7s\n", "shape NxC->OC", "pattern", "density", "dense ms",
               "packed", "auto ms", "ratio", "forced ms", "ratio");
        for (size_t s = 0; s < ELEMENTSOF(shapes); s++) {
                char name[64];

                snprintf(name, sizeof(name), "%zux%zu->%zu", shapes[s].N, shapes[s].C, shapes[s].OC);
                for (size_t p = 0; p < ELEMENTSOF(patterns); p++) {
                        double ms[3] = { 0 }, density = 0;
                        bool sparse = false;
                        /* A layer of 128 tokens is ~5 ms of work at most: repetitions are cheap. */
                        int reps = quick ? 3 : 20;

                        r = run_shape(&shapes[s], &patterns[p], reps, ms, &density, &sparse);
                        if (r < 0) {
                                fprintf(stderr, "%s %s: %s\n", name, patterns[p].name,
                                        r == -EDOM ? "output has NaN or inf" : strerror(-r));
                                return 1;
                        }
                        printf("%-16s %-17s %7.3f %9.3f %7s %9.3f %6.2fx %11.3f %6.2fx\n", name, patterns[p].name,
                               density, ms[0], sparse ? "sparse" : "dense", ms[1], ms[0] / ms[1], ms[2],
                               ms[0] / ms[2]);
                }
        }
        return 0;
}
