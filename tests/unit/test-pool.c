/* The thread pool (kernels/pool.c): every index of [0, n) is passed exactly once, in chunks of
 * at least grain (but the last), for many n/grain combinations and pool sizes; n = 0 calls
 * nothing; a NULL pool and a one-thread pool run inline; several threads dispatching on one pool
 * at once, and a callback dispatching on its own pool, all complete; a pool left idle long enough
 * for its workers to sleep wakes up again; back-to-back jobs of growing size never let a late
 * worker run a chunk of one job with another's arguments (the hang once seen in dsactl bench). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#include "basic/macro.h"
#include "kernels/kernels.h"

struct visits {
        atomic_uint *count; /* per index */
        size_t n, grain;
        atomic_uint calls;
        atomic_bool bad_chunk;
        pthread_t caller;
        atomic_bool ran_on_caller, ran_elsewhere;
};

static void visit(void *arg, size_t begin, size_t end) {
        struct visits *v = arg;

        if (begin >= end || end > v->n || (end - begin < v->grain && end != v->n))
                atomic_store(&v->bad_chunk, true);
        for (size_t i = begin; i < end && i < v->n; i++)
                atomic_fetch_add_explicit(&v->count[i], 1, memory_order_relaxed);
        atomic_fetch_add(&v->calls, 1);
        if (pthread_equal(pthread_self(), v->caller))
                atomic_store(&v->ran_on_caller, true);
        else
                atomic_store(&v->ran_elsewhere, true);
}

/* Dispatches [0, n) with grain on p and checks every index was visited exactly once. */
static void check_for(struct dsa_threadpool *p, size_t n, size_t grain, struct visits *ret_v) {
        struct visits v = { .n = n, .grain = grain ? grain : 1, .caller = pthread_self() };

        v.count = calloc(n ? n : 1, sizeof(*v.count));
        assert_non_null(v.count);
        dsa_threadpool_for(p, n, grain, visit, &v);
        for (size_t i = 0; i < n; i++)
                if (atomic_load(&v.count[i]) != 1)
                        fail_msg("n %zu grain %zu: index %zu visited %u times", n, grain, i,
                                 atomic_load(&v.count[i]));
        assert_false(atomic_load(&v.bad_chunk));
        if (n == 0)
                assert_int_equal(atomic_load(&v.calls), 0);
        free(v.count);
        if (ret_v)
                *ret_v = v;
}

static const size_t ns[] = { 0, 1, 2, 3, 7, 8, 15, 16, 17, 63, 64, 65, 100, 127, 1000, 4097, 100003 };
static const size_t grains[] = { 0, 1, 2, 3, 16, 64, 1000, 200000 };

static void test_exactly_once(void **state) {
        static const unsigned threads[] = { 1, 2, 3, 4, 8 };

        for (size_t t = 0; t < ELEMENTSOF(threads); t++) {
                struct dsa_threadpool *p = NULL;
                assert_int_equal(dsa_threadpool_new(threads[t], &p), 0);
                assert_int_equal(dsa_threadpool_threads(p), threads[t]);
                for (int rep = 0; rep < 3; rep++)
                        for (size_t i = 0; i < ELEMENTSOF(ns); i++)
                                for (size_t g = 0; g < ELEMENTSOF(grains); g++)
                                        check_for(p, ns[i], grains[g], NULL);
                dsa_threadpool_free(p);
        }
}

static void test_null_and_single(void **state) {
        struct dsa_threadpool *p = NULL;
        struct visits v;

        assert_int_equal(dsa_threadpool_threads(NULL), 1);
        check_for(NULL, 1000, 1, &v);
        assert_int_equal(atomic_load(&v.calls), 1); /* inline: one call for everything */
        assert_true(atomic_load(&v.ran_on_caller));

        assert_int_equal(dsa_threadpool_new(1, &p), 0);
        check_for(p, 1000, 1, &v);
        assert_int_equal(atomic_load(&v.calls), 1);
        assert_false(atomic_load(&v.ran_elsewhere));
        assert_null(dsa_threadpool_free(p));
        assert_null(dsa_threadpool_free(NULL));

        assert_int_equal(dsa_threadpool_new(0, &p), -EINVAL);
}

/* Slow enough per index that every worker gets a share. On a loaded machine the workers may
 * not be scheduled at all while the caller works through 64 short items, so the caller's
 * chunks also wait (up to 2 s in all) until some worker has run one: a pool whose workers
 * never take part still fails, a busy machine no longer does. */
static void visit_slowly(void *arg, size_t begin, size_t end) {
        struct visits *v = arg;
        struct timespec ts = { 0, 200000 };

        nanosleep(&ts, NULL);
        for (int i = 0; i < 2000 && pthread_equal(pthread_self(), v->caller) && !atomic_load(&v->ran_elsewhere); i++) {
                struct timespec ms = { 0, 1000000 };
                nanosleep(&ms, NULL);
        }
        visit(arg, begin, end);
}

static void test_workers_participate(void **state) {
        struct dsa_threadpool *p = NULL;
        struct visits v = { .n = 64, .grain = 1, .caller = pthread_self() };

        assert_int_equal(dsa_threadpool_new(4, &p), 0);
        v.count = calloc(v.n, sizeof(*v.count));
        assert_non_null(v.count);
        dsa_threadpool_for(p, v.n, 1, visit_slowly, &v);
        for (size_t i = 0; i < v.n; i++)
                assert_int_equal(atomic_load(&v.count[i]), 1);
        assert_true(atomic_load(&v.ran_elsewhere));
        assert_true(atomic_load(&v.ran_on_caller));
        assert_true(atomic_load(&v.calls) > 1);
        free(v.count);
        dsa_threadpool_free(p);
}

/* Workers that have gone to sleep (past the spin window) must wake for the next job. */
static void test_wake_after_sleep(void **state) {
        struct dsa_threadpool *p = NULL;

        assert_int_equal(dsa_threadpool_new(3, &p), 0);
        for (int rep = 0; rep < 5; rep++) {
                struct timespec ts = { 0, 2000000 }; /* 2 ms, well past the spin */
                nanosleep(&ts, NULL);
                check_for(p, 5000, 1, NULL);
        }
        dsa_threadpool_free(p);
}

struct caller_arg {
        struct dsa_threadpool *p;
        unsigned seed;
};

static void *concurrent_caller(void *userdata) {
        struct caller_arg *a = userdata;
        unsigned s = a->seed;

        for (int rep = 0; rep < 300; rep++) {
                s = s * 1103515245u + 12345u;
                size_t n = ns[(s >> 8) % ELEMENTSOF(ns)] % 5000;
                size_t grain = grains[(s >> 16) % ELEMENTSOF(grains)];
                check_for(a->p, n, grain, NULL);
        }
        return NULL;
}

static void test_concurrent_callers(void **state) {
        struct dsa_threadpool *p = NULL;
        pthread_t th[4];
        struct caller_arg args[ELEMENTSOF(th)];

        assert_int_equal(dsa_threadpool_new(3, &p), 0);
        for (size_t i = 0; i < ELEMENTSOF(th); i++) {
                args[i] = (struct caller_arg) { p, (unsigned) i + 1 };
                assert_int_equal(pthread_create(&th[i], NULL, concurrent_caller, &args[i]), 0);
        }
        for (size_t i = 0; i < ELEMENTSOF(th); i++)
                pthread_join(th[i], NULL);
        dsa_threadpool_free(p);
}

struct nested {
        struct dsa_threadpool *p;
        atomic_uint *count; /* (outer, inner) */
        size_t inner;
};

static void nested_inner(void *arg, size_t begin, size_t end) {
        atomic_uint *row = arg;
        for (size_t i = begin; i < end; i++)
                atomic_fetch_add(&row[i], 1);
}

static void nested_outer(void *arg, size_t begin, size_t end) {
        struct nested *x = arg;
        for (size_t i = begin; i < end; i++)
                dsa_threadpool_for(x->p, x->inner, 1, nested_inner, x->count + i * x->inner);
}

/* A callback that dispatches on its own pool runs that work inline instead of deadlocking. */
static void test_reentrant(void **state) {
        struct nested x = { .inner = 37 };
        const size_t outer = 29;

        assert_int_equal(dsa_threadpool_new(4, &x.p), 0);
        x.count = calloc(outer * x.inner, sizeof(*x.count));
        assert_non_null(x.count);
        dsa_threadpool_for(x.p, outer, 1, nested_outer, &x);
        for (size_t i = 0; i < outer * x.inner; i++)
                assert_int_equal(atomic_load(&x.count[i]), 1);
        free(x.count);
        dsa_threadpool_free(x.p);
}

/* Many tiny dispatches back to back: the per-dispatch cost, printed for information. */
/* Back-to-back jobs whose chunk count keeps changing, each with its own argument: a chunk must
 * always run with its own job's fn/arg/range, and every job must finish. A worker that loaded
 * the previous job's last ticket could once claim a chunk while the next job was being
 * written, run it with mixed fields and make the dispatcher wait forever. */
struct job {
        unsigned id;
        size_t n;
        atomic_uint *count;
        atomic_uint *current; /* the id of the job being dispatched */
        atomic_bool *bad;
};

static void job_visit(void *arg, size_t begin, size_t end) {
        struct job *j = arg;

        if (atomic_load(j->current) != j->id || end > j->n || begin >= end)
                atomic_store(j->bad, true);
        for (size_t i = begin; i < end && i < j->n; i++)
                atomic_fetch_add_explicit(&j->count[i], 1, memory_order_relaxed);
}

static void test_back_to_back_jobs(void **state) {
        enum { N_MAX = 96, JOBS = 20000 };
        atomic_uint count[N_MAX], current = 0;
        atomic_bool bad = false;
        struct dsa_threadpool *p = NULL;

        for (unsigned threads = 2; threads <= 4; threads += 2) {
                assert_int_equal(dsa_threadpool_new(threads, &p), 0);
                for (unsigned id = 1; id <= JOBS; id++) {
                        struct job j = { .id = id, .n = 2 + (id * 7) % (N_MAX - 2), .count = count,
                                         .current = &current, .bad = &bad };
                        for (size_t i = 0; i < j.n; i++)
                                atomic_store(&count[i], 0);
                        atomic_store(&current, id);
                        dsa_threadpool_for(p, j.n, 1, job_visit, &j);
                        for (size_t i = 0; i < j.n; i++)
                                assert_int_equal(atomic_load(&count[i]), 1);
                        assert_false(atomic_load(&bad));
                }
                p = dsa_threadpool_free(p);
        }
}

static void test_latency(void **state) {
        struct dsa_threadpool *p = NULL;
        const int reps = 20000;
        struct timespec t0, t1;

        assert_int_equal(dsa_threadpool_new(2, &p), 0);
        struct visits v = { .n = 64, .grain = 1, .caller = pthread_self() };
        v.count = calloc(v.n, sizeof(*v.count));
        assert_non_null(v.count);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < reps; i++)
                dsa_threadpool_for(p, v.n, 1, visit, &v);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        for (size_t i = 0; i < v.n; i++)
                assert_int_equal(atomic_load(&v.count[i]), (unsigned) reps);
        printf("pool of 2: %.2f us per dispatch of 64 trivial items\n",
               ((double) (t1.tv_sec - t0.tv_sec) * 1e9 + (double) (t1.tv_nsec - t0.tv_nsec)) / reps / 1e3);
        free(v.count);
        dsa_threadpool_free(p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_exactly_once),
                cmocka_unit_test(test_null_and_single),
                cmocka_unit_test(test_workers_participate),
                cmocka_unit_test(test_wake_after_sleep),
                cmocka_unit_test(test_concurrent_callers),
                cmocka_unit_test(test_reentrant),
                cmocka_unit_test(test_back_to_back_jobs),
                cmocka_unit_test(test_latency),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
