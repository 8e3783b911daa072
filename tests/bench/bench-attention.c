/* The streaming attention kernels (kernels/attention.h), one thread, one head: causal
 * attention over a sequence of T tokens as the engine runs it, every query block of 64 rows
 * against (a) every key block up to its last position, the dense baseline, and (b) a quarter of
 * those blocks (the diagonal one always, the rest a fixed random pick), for T = 1024 .. 8192,
 * HS = 32 and 64, key blocks of 64, per ISA this CPU runs. Reports GFLOP/s counting 4 HS flops
 * per visible score (2 HS for q.k, 2 HS for p v; the exp and the packing not counted) and the
 * time of the whole pass; for comparison, causal linear attention (elu+1) on the same T.
 * The reference runs only the smallest T. Best of the repetitions. --quick: one or two
 * repetitions (ctest). Never fails on time: only on a setup error, a kernel error or a
 * non-finite output. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "basic/macro.h"
#include "kernels/attention.h"

#define BK 64
#define NQ DSA_ATT_BLOCK

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

struct bench {
        size_t T, HS;
        float *q, *k, *v, *out, *scratch, *lscratch;
        uint32_t *lists;  /* per query block: up to T / BK + 1 block numbers */
        size_t *nb;       /* per query block, list lengths */
        double scores;    /* visible scores of the whole pass */
};

/* Query block i0's list: every block up to the diagonal (quarter == false), or about a quarter
 * of them with the diagonal always in. */
static size_t make_list(uint32_t *blocks, size_t i0, bool quarter, uint64_t *rng) {
        const size_t ndiag = (i0 + NQ - 1) / BK + 1; /* blocks 0 .. ndiag - 1 are visible */
        size_t nb = 0;

        for (size_t b = 0; b < ndiag; b++) {
                *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
                if (!quarter || b == ndiag - 1 || (*rng >> 33) % 4 == 0)
                        blocks[nb++] = (uint32_t) b;
        }
        return nb;
}

static int setup(struct bench *b, size_t T, size_t HS, bool quarter) {
        const size_t nqb = (T + NQ - 1) / NQ, per = T / BK + 1;
        uint64_t rng = 42;

        *b = (struct bench) { .T = T, .HS = HS };
        b->q = malloc(T * HS * sizeof(float));
        b->k = malloc(T * HS * sizeof(float));
        b->v = malloc(T * HS * sizeof(float));
        b->out = malloc(T * HS * sizeof(float));
        b->scratch = malloc(dsa_attention_blocks_scratch(BK, HS) * sizeof(float));
        b->lscratch = malloc(dsa_attention_linear_scratch(HS) * sizeof(float));
        b->lists = malloc(nqb * per * sizeof(uint32_t));
        b->nb = malloc(nqb * sizeof(size_t));
        if (!b->q || !b->k || !b->v || !b->out || !b->scratch || !b->lscratch || !b->lists || !b->nb)
                return -ENOMEM;
        for (size_t i = 0; i < T * HS; i++) {
                b->q[i] = (float) ((i * 7919) % 1000) * 2e-3f - 1.0f;
                b->k[i] = (float) ((i * 104729) % 1000) * 2e-3f - 1.0f;
                b->v[i] = (float) ((i * 1299709) % 1000) * 2e-3f - 1.0f;
        }
        for (size_t qb = 0; qb < nqb; qb++) {
                const size_t i0 = qb * NQ, nq = MIN(T - i0, (size_t) NQ);
                uint32_t *list = b->lists + qb * per;
                b->nb[qb] = make_list(list, i0, quarter, &rng);
                /* visible scores: row i sees keys j <= i of the listed blocks */
                for (size_t t = 0; t < b->nb[qb]; t++)
                        for (size_t i = i0; i < i0 + nq; i++) {
                                const size_t j0 = (size_t) list[t] * BK;
                                if (j0 <= i)
                                        b->scores += (double) MIN(BK, i - j0 + 1);
                        }
        }
        return 0;
}

static void teardown(struct bench *b) {
        free(b->q), free(b->k), free(b->v), free(b->out), free(b->scratch), free(b->lscratch);
        free(b->lists), free(b->nb);
}

static int run(const struct dsa_attention_kernels *kt, const struct bench *b) {
        const size_t per = b->T / BK + 1, HS = b->HS;

        for (size_t i0 = 0; i0 < b->T; i0 += NQ) {
                const size_t nq = MIN(b->T - i0, (size_t) NQ);
                int r = kt->blocks_f32(b->out + i0 * HS, HS, b->q + i0 * HS, HS, b->k, HS, b->v, HS, nq, i0,
                                       b->lists + (i0 / NQ) * per, b->nb[i0 / NQ], BK, b->T, HS,
                                       1.0f / sqrtf((float) HS), true, NULL, b->scratch);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Best seconds of fn over reps runs (at least min_s seconds in all). */
static double best_time(const struct dsa_attention_kernels *kt, const struct bench *b, bool linear,
                        double min_s, int *ret) {
        double best = INFINITY, total = 0;

        for (int reps = 0; reps < 2 || total < min_s; reps++) {
                double t0 = now(), dt;
                *ret = linear ? kt->linear_f32(b->out, b->HS, b->q, b->HS, b->k, b->HS, b->v, b->HS, b->T, b->HS,
                                               true, b->lscratch)
                              : run(kt, b);
                dt = now() - t0;
                if (*ret < 0)
                        return 0;
                total += dt;
                best = MIN(best, dt);
        }
        for (size_t i = 0; i < b->T * b->HS; i++)
                if (!isfinite(b->out[i])) {
                        *ret = -EDOM;
                        return 0;
                }
        return best;
}

int main(int argc, char **argv) {
        static const size_t Ts[] = { 1024, 2048, 4096, 8192 };
        static const size_t HSs[] = { 32, 64 };
        double min_s = 0.5;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--quick") == 0)
                        min_s = 0;
                else {
                        fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
                        return 2;
                }
        }

        printf("causal attention, one head, one thread, key blocks of %d, query blocks of %d\n", BK, NQ);
        printf("%-7s %4s %5s %12s %9s %12s %9s %8s %11s\n", "isa", "HS", "T", "dense GF/s", "dense ms",
               "25% GF/s", "25% ms", "speedup", "linear ms");
        for (int isa = DSA_ISA_REF; isa < _DSA_ISA_MAX; isa++) {
                const struct dsa_attention_kernels *kt = dsa_attention_kernels_for((enum dsa_isa) isa);

                if (!kt) {
                        printf("%-7s skipped: this CPU cannot run it\n", isa == DSA_ISA_AVX512 ? "avx512" : "avx2");
                        continue;
                }
                for (size_t h = 0; h < ELEMENTSOF(HSs); h++)
                        for (size_t ti = 0; ti < ELEMENTSOF(Ts); ti++) {
                                struct bench dense, quarter;
                                double td, tq, tl;
                                int r, r1, r2, r3;

                                if (isa == DSA_ISA_REF && ti > 0)
                                        break;
                                r = setup(&dense, Ts[ti], HSs[h], false);
                                if (r == 0)
                                        r = setup(&quarter, Ts[ti], HSs[h], true);
                                if (r < 0) {
                                        fprintf(stderr, "setup T=%zu HS=%zu: %s\n", Ts[ti], HSs[h], strerror(-r));
                                        return 1;
                                }
                                td = best_time(kt, &dense, false, min_s, &r1);
                                tq = best_time(kt, &quarter, false, min_s, &r2);
                                tl = best_time(kt, &dense, true, min_s, &r3);
                                if (r1 < 0 || r2 < 0 || r3 < 0) {
                                        fprintf(stderr, "%s T=%zu HS=%zu: %s\n", kt->name, Ts[ti], HSs[h],
                                                strerror(-(r1 < 0 ? r1 : r2 < 0 ? r2 : r3)));
                                        return 1;
                                }
                                printf("%-7s %4zu %5zu %12.1f %9.2f %12.1f %9.2f %7.2fx %11.2f\n", kt->name, HSs[h], Ts[ti],
                                       4.0 * HSs[h] * dense.scores / td * 1e-9, td * 1e3,
                                       4.0 * HSs[h] * quarter.scores / tq * 1e-9, tq * 1e3, td / tq, tl * 1e3);
                                teardown(&dense);
                                teardown(&quarter);
                        }
        }
        return 0;
}
