/* The thread pool behind intra-op parallelism: n - 1 persistent workers plus the calling thread
 * share each dsa_threadpool_for() by claiming chunks from one atomic ticket. A BERT forward makes
 * about a hundred dispatches of 0.1-5 ms each, so a dispatch must cost microseconds: workers
 * spin for a while after each job (the next one usually follows at once) and only then sleep on
 * a futex, which the dispatcher wakes only when someone sleeps.
 *
 * The ticket packs (job generation << 32 | next chunk). A worker claims a chunk with a CAS that
 * names the generation it read the job under, so a worker that wakes late can never take a chunk
 * of a newer job with an older job's description: the job's fields are written only while no
 * chunk of the previous job is unclaimed or running, and are read between an acquire load of
 * the ticket and the CAS that confirms it. The dispatcher waits for the count of finished chunks,
 * not for the workers, so a descheduled worker costs nothing once the chunks are taken. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() atomic_signal_fence(memory_order_seq_cst)
#endif

/* How long an idle worker polls before it sleeps. Long enough to bridge the gap between two
 * dispatches of one forward, short enough that an idle pool costs nothing measurable. */
#define SPIN_NS 50000

/* Chunks per thread when grain allows: a little slack for threads that start late. */
#define CHUNKS_PER_THREAD 4

typedef void (*pool_fn)(void *arg, size_t begin, size_t end);

struct dsa_threadpool {
        unsigned n_threads; /* workers + the caller */
        unsigned n_workers; /* started */
        pthread_t *workers;

        atomic_bool busy;             /* a dispatch owns the job below */
        _Atomic uint32_t wake;        /* futex word: bumped per dispatch and at shutdown */
        atomic_uint sleepers;         /* workers in (or about to enter) FUTEX_WAIT */
        atomic_bool stop;

        _Alignas(64) _Atomic uint64_t ticket; /* generation << 32 | next chunk */
        _Atomic(pool_fn) fn;                  /* the job; relaxed, ordered by ticket */
        _Atomic(void *) arg;
        atomic_size_t n, chunk;
        _Atomic uint32_t n_chunks;

        _Alignas(64) _Atomic uint32_t done; /* chunks finished in this job */
};

static long futex(_Atomic uint32_t *addr, int op, uint32_t val) {
        return syscall(SYS_futex, (uint32_t *) addr, op, val, NULL, NULL, 0);
}

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* Runs chunks of the job published under ticket generation gen until none is left or a newer
 * job has replaced it. */
static void run_chunks(struct dsa_threadpool *p) {
        uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);

        for (;;) {
                pool_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
                void *arg = atomic_load_explicit(&p->arg, memory_order_relaxed);
                size_t n = atomic_load_explicit(&p->n, memory_order_relaxed);
                size_t chunk = atomic_load_explicit(&p->chunk, memory_order_relaxed);
                uint32_t n_chunks = atomic_load_explicit(&p->n_chunks, memory_order_relaxed);
                uint32_t i = (uint32_t) t;

                if (i >= n_chunks)
                        return;
                /* Pairs with the release fence in dsa_threadpool_for(): if any field above was
                 * the next job's, the ticket we hold was already closed and the claim fails. */
                atomic_thread_fence(memory_order_acquire);
                /* On failure t is reloaded (acquire) and the job read again under it. */
                if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acquire,
                                                           memory_order_acquire))
                        continue;
                size_t begin = (size_t) i * chunk, end = begin + chunk < n ? begin + chunk : n;
                fn(arg, begin, end);
                atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
                t++;
        }
}

static void *worker_main(void *userdata) {
        struct dsa_threadpool *p = userdata;
        /* 0, not the current value: a worker that starts late must still see every bump since
         * the pool was made, the one at shutdown included. */
        uint32_t seen = 0;

        for (;;) {
                uint32_t w = atomic_load_explicit(&p->wake, memory_order_acquire);

                if (w == seen) {
                        uint64_t deadline = now_ns() + SPIN_NS;
                        for (unsigned k = 1;; k++) {
                                cpu_relax();
                                w = atomic_load_explicit(&p->wake, memory_order_acquire);
                                if (w != seen || ((k & 63) == 0 && now_ns() > deadline))
                                        break;
                        }
                }
                if (w == seen) {
                        /* sleepers and wake are both seq_cst: either the dispatcher sees us
                         * counted and wakes us, or we see its bump (and FUTEX_WAIT returns). */
                        atomic_fetch_add(&p->sleepers, 1);
                        while ((w = atomic_load(&p->wake)) == seen)
                                futex(&p->wake, FUTEX_WAIT_PRIVATE, seen);
                        atomic_fetch_sub(&p->sleepers, 1);
                }
                seen = w;
                if (atomic_load_explicit(&p->stop, memory_order_acquire))
                        return NULL;
                run_chunks(p);
        }
}

static void wake_workers(struct dsa_threadpool *p) {
        atomic_fetch_add(&p->wake, 1);
        if (atomic_load(&p->sleepers) > 0)
                futex(&p->wake, FUTEX_WAKE_PRIVATE, INT32_MAX);
}

struct dsa_threadpool *dsa_threadpool_free(struct dsa_threadpool *p) {
        if (!p)
                return NULL;
        atomic_store_explicit(&p->stop, true, memory_order_release);
        wake_workers(p);
        for (unsigned i = 0; i < p->n_workers; i++)
                pthread_join(p->workers[i], NULL);
        free(p->workers);
        free(p);
        return NULL;
}

int dsa_threadpool_new(unsigned n_threads, struct dsa_threadpool **ret) {
        struct dsa_threadpool *p;
        sigset_t all, old;
        int r = 0;

        if (n_threads < 1 || n_threads > 4096 || !ret)
                return -EINVAL;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->n_threads = n_threads;
        p->workers = calloc(n_threads, sizeof(*p->workers));
        if (!p->workers) {
                free(p);
                return -ENOMEM;
        }
        /* Workers take no signals: they belong to whoever handles them in the process. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        for (unsigned i = 0; i + 1 < n_threads; i++) {
                r = -pthread_create(&p->workers[i], NULL, worker_main, p);
                if (r < 0)
                        break;
                p->n_workers++;
        }
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0) {
                dsa_threadpool_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

unsigned dsa_threadpool_threads(const struct dsa_threadpool *p) {
        return p ? p->n_threads : 1;
}

void dsa_threadpool_for(struct dsa_threadpool *p, size_t n, size_t grain, pool_fn fn, void *arg) {
        if (n == 0)
                return;
        if (grain == 0)
                grain = 1;

        size_t chunk = 0, n_chunks = 1;
        if (p && p->n_workers > 0 && n > grain) {
                size_t want = (size_t) p->n_threads * CHUNKS_PER_THREAD;
                chunk = (n + want - 1) / want;
                if (chunk < grain)
                        chunk = grain;
                n_chunks = (n + chunk - 1) / chunk;
                if (n_chunks >= UINT32_MAX) { /* only reachable with absurd n: larger chunks */
                        chunk = (n + UINT32_MAX - 2) / (UINT32_MAX - 1);
                        n_chunks = (n + chunk - 1) / chunk;
                }
        }
        if (n_chunks <= 1 || atomic_exchange_explicit(&p->busy, true, memory_order_acquire)) {
                fn(arg, 0, n);
                return;
        }

        /* Every chunk of the previous job has finished (we waited for done), but a late worker
         * may still hold its last ticket (gen, n_chunks) and be reading the fields below. Close
         * that ticket first, so such a worker cannot claim "chunk n_chunks" of the old job once
         * it sees the new job's larger n_chunks: that claim used to run a chunk with a mix of
         * old and new fields and count it in the new job's done, which then never equalled
         * n_chunks (a hang seen in dsactl bench). */
        uint64_t gen = (atomic_load_explicit(&p->ticket, memory_order_relaxed) >> 32) + 1;
        atomic_store_explicit(&p->ticket, (gen << 32) | UINT32_MAX, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        atomic_store_explicit(&p->fn, fn, memory_order_relaxed);
        atomic_store_explicit(&p->arg, arg, memory_order_relaxed);
        atomic_store_explicit(&p->n, n, memory_order_relaxed);
        atomic_store_explicit(&p->chunk, chunk, memory_order_relaxed);
        atomic_store_explicit(&p->n_chunks, (uint32_t) n_chunks, memory_order_relaxed);
        atomic_store_explicit(&p->done, 0, memory_order_relaxed);
        atomic_store_explicit(&p->ticket, gen << 32, memory_order_release);
        wake_workers(p);

        run_chunks(p);
        /* What is left is running on workers right now: a short wait. */
        for (unsigned k = 1; atomic_load_explicit(&p->done, memory_order_acquire) != n_chunks; k++) {
                cpu_relax();
                if ((k & 1023) == 0)
                        sched_yield();
        }
        atomic_store_explicit(&p->busy, false, memory_order_release);
}
