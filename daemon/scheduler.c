/* The scheduler: one bounded FIFO shared by every session and the D-Bus methods, and a pool of
 * worker threads. A worker takes the oldest request and, when it is a CLASSIFY or EMBED, every
 * other waiting request for the same model, op and pool (up to BATCH_TEXTS_MAX texts), and runs
 * them in one engine call (the engine sorts the texts by length inside it), on the rung of the
 * model's variant ladder the policy picks (policy.h). High-priority requests queue ahead of
 * normal ones, low ones behind everything. Responses go to
 * dsad_session_complete() for ring requests and to req->done for D-Bus ones; the worker then
 * frees the request, which drops its session and model references. Each client uid but dsad's
 * own may have at most [limits] queue_share of queue_max requests waiting, so one user cannot
 * fill the queue and turn everyone else away. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "basic/error.h"
#include "basic/time-util.h"
#include "daemon.h"

#define BATCH_TEXTS_MAX 64u
#define BATCH_REQS_MAX DSAD_BATCH_MAX
#define QUEUE_MAX_DEFAULT 1024u

struct dsad_scheduler {
        struct dsad *d;
        pthread_mutex_t lock;
        pthread_cond_t work; /* queue became non-empty, or stopping */
        struct dsad_request *head, *tail;
        unsigned depth; /* read without the lock by dsad_scheduler_depth() */
        unsigned queue_max;
        unsigned batch_max; /* <= BATCH_REQS_MAX */
        unsigned idle;      /* workers waiting for work, or woken and not yet back at the queue */
        bool stopping;
        uid_t self;  /* dsad's own uid: not counted */
        struct uid_waiting {
                uint32_t uid;
                unsigned n;
        } *waiting;  /* requests waiting per client uid, only uids with some; under lock */
        size_t n_waiting, cap_waiting;
        pthread_t *threads;
        unsigned n_threads;
};

/* Texts of any lengths batch together: the engine packs a batch's real tokens without padding
 * (struct dsa_batch.ragged), so a 5-token request costs the same beside a 50-token one. (Before
 * that, padding to the longest text made mixed batches 0.6x slower than none.) */
static bool batchable(const struct dsad_request *a, const struct dsad_request *b) {
        /* EMBED without pooling runs one forward per text anyway: nothing to gain. */
        return (a->op == DSA_RING_OP_CLASSIFY || (a->op == DSA_RING_OP_EMBED && a->pool != DSA_RING_POOL_NONE)) &&
               a->model == b->model &&
               a->op == b->op && a->pool == b->pool && a->flags == b->flags &&
               a->hints.min_accuracy == b->hints.min_accuracy && a->hints.max_latency_ms == b->hints.max_latency_ms;
}

static bool runs_model(const struct dsad_request *r) {
        return r->op == DSA_RING_OP_CLASSIFY || r->op == DSA_RING_OP_EMBED;
}

/* Under the lock: req's uid's entry in waiting[], added when add (NULL without memory). */
static struct uid_waiting *uid_entry(struct dsad_scheduler *s, uint32_t uid, bool add) {
        for (size_t i = 0; i < s->n_waiting; i++)
                if (s->waiting[i].uid == uid)
                        return &s->waiting[i];
        if (!add)
                return NULL;
        if (s->n_waiting == s->cap_waiting) {
                size_t cap = s->cap_waiting ? 2 * s->cap_waiting : 8;
                struct uid_waiting *w = reallocarray(s->waiting, cap, sizeof(*w));
                if (!w)
                        return NULL;
                s->waiting = w;
                s->cap_waiting = cap;
        }
        s->waiting[s->n_waiting] = (struct uid_waiting){ .uid = uid };
        return &s->waiting[s->n_waiting++];
}

/* Under the lock: req left the queue. */
static void uid_left(struct dsad_scheduler *s, const struct dsad_request *req) {
        struct uid_waiting *w;

        if (req->uid == (uint32_t) s->self || !(w = uid_entry(s, req->uid, false)))
                return;
        if (--w->n == 0)
                *w = s->waiting[--s->n_waiting];
}

/* Under the lock: unlinks the oldest request and what can run with it, into batch[]: at most
 * this worker's share of the queue, split with the idle workers, so requests that idle cores
 * could run at once never wait in one core's batch (on 16 cores with a worker each, taking the
 * whole queue made 16 clients 0.72-0.81x slower with batching than without); the share is the
 * whole queue when every other worker is busy. */
static size_t take_batch(struct dsad_scheduler *s, struct dsad_request **batch) {
        struct dsad_request *first = s->head, **pp;
        size_t n = 1, texts = first->n_texts;
        const size_t share = (s->depth + s->idle) / (s->idle + 1), max = MIN(share, (size_t) s->batch_max);

        s->head = first->next;
        first->next = NULL;
        batch[0] = first;
        uid_left(s, first);
        pp = &s->head;
        while (*pp && n < max && texts < BATCH_TEXTS_MAX) {
                struct dsad_request *r = *pp;
                if (batchable(first, r) && texts + r->n_texts <= BATCH_TEXTS_MAX) {
                        *pp = r->next;
                        r->next = NULL;
                        batch[n++] = r;
                        texts += r->n_texts;
                        uid_left(s, r);
                } else
                        pp = &r->next;
        }
        s->tail = NULL;
        for (struct dsad_request *r = s->head; r; r = r->next)
                s->tail = r;
        __atomic_store_n(&s->depth, s->depth - (unsigned) n, __ATOMIC_RELAXED);
        return n;
}

/* Under the lock: FIFO within a priority; high before normal before low. */
static void enqueue(struct dsad_scheduler *s, struct dsad_request *req) {
        struct dsad_request **pp = &s->head;

        if (req->hints.priority == DSA_RING_PRIORITY_LOW || !s->tail ||
            s->tail->hints.priority == req->hints.priority ||
            (req->hints.priority == DSA_RING_PRIORITY_NORMAL && s->tail->hints.priority == DSA_RING_PRIORITY_HIGH)) {
                if (s->tail)
                        s->tail->next = req;
                else
                        s->head = req;
                s->tail = req;
                return;
        }
        /* Before the first request it outranks. */
        while (*pp && !(req->hints.priority == DSA_RING_PRIORITY_HIGH ? (*pp)->hints.priority != DSA_RING_PRIORITY_HIGH
                                                                        : (*pp)->hints.priority == DSA_RING_PRIORITY_LOW))
                pp = &(*pp)->next;
        req->next = *pp;
        *pp = req;
        if (!req->next)
                s->tail = req;
}

/* Every request ends here exactly once, on a worker. */
static void finish(struct dsad_request *req, int status, const void *payload, size_t len, void *userdata) {
        struct dsad_scheduler *s = userdata;

        __atomic_fetch_add(status < 0 ? &s->d->requests_failed : &s->d->requests_completed, 1,
                           __ATOMIC_RELAXED);
        if (req->session)
                dsad_session_complete(req, status, payload, len);
        else if (req->done)
                req->done(req, status, payload, len);
        dsad_request_free(req);
}

static void run_batch(struct dsad_scheduler *s, struct dsad_request **batch, size_t n) {
        struct dsad_request *run[BATCH_REQS_MAX];
        size_t k = 0;

        /* Requests whose session went away are dropped unrun; a model unloaded since the
         * request was queued completes with -ENOENT. */
        for (size_t i = 0; i < n; i++) {
                struct dsad_request *r = batch[i];
                if (r->session && dsad__session_closed(r->session))
                        finish(r, -ECANCELED, NULL, 0, s);
                else if (!r->model || !dsad_model_loaded(r->model))
                        finish(r, dsa__error(-ENOENT, "the model is no longer loaded"), NULL, 0, s);
                else
                        run[k++] = r;
        }
        if (k == 0)
                return;
        dsa_error_clear();

        /* The policy picks the rung for requests that run the model; the wall time of the call
         * goes back into its latency table. */
        struct dsad_ladder *l = dsad_model_ladder(run[0]->model);
        if (!l || !runs_model(run[0]) || !s->d->policy) {
                dsad_request_run_batch(dsad_model_engine(run[0]->model), run, k, finish, s);
                return;
        }
        uint64_t now = now_usec(), t0;
        unsigned tokens = 0;
        for (size_t i = 0; i < k; i++)
                tokens += run[i]->tokens;
        size_t rung = dsad_policy_choose(s->d->policy, l, &run[0]->hints, (unsigned) k, tokens,
                                         now - run[0]->enqueue_usec, dsad_scheduler_depth(s), now);
        if (!__atomic_load_n(&l->announced, __ATOMIC_RELAXED))
                dsad_adaptive_wake(s->d);
        for (size_t i = 0; i < k; i++)
                run[i]->variant = (uint32_t) rung + 1;
        t0 = now_usec();
        dsad_request_run_batch(l->rungs[rung].engine, run, k, finish, s);
        dsad_policy_observe(l, rung, (unsigned) k, tokens, (double) (now_usec() - t0) / 1000.0);
}

static void *worker(void *userdata) {
        struct dsad_scheduler *s = userdata;
        struct dsad_request *batch[BATCH_REQS_MAX];

        pthread_mutex_lock(&s->lock);
        for (;;) {
                s->idle++;
                while (!s->head && !s->stopping)
                        pthread_cond_wait(&s->work, &s->lock);
                s->idle--;
                if (!s->head)
                        break; /* stopping, and nothing left to drain */
                size_t n = take_batch(s, batch);
                /* What this share left is another idle worker's. */
                if (s->head && s->idle > 0)
                        pthread_cond_signal(&s->work);
                pthread_mutex_unlock(&s->lock);
                run_batch(s, batch, n);
                pthread_mutex_lock(&s->lock);
        }
        pthread_mutex_unlock(&s->lock);
        return NULL;
}

int dsad_scheduler_new(struct dsad *d, unsigned workers, unsigned queue_max, unsigned batch_max,
                       struct dsad_scheduler **ret) {
        struct dsad_scheduler *s;
        int r;

        if (!d || !ret)
                return -EINVAL;
        if (workers == 0) {
                long n = sysconf(_SC_NPROCESSORS_ONLN);
                workers = n > 0 ? (unsigned) MIN(n, 1024L) : 1;
        }
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->d = d;
        s->self = geteuid();
        s->queue_max = queue_max ? queue_max : QUEUE_MAX_DEFAULT;
        s->batch_max = batch_max ? MIN(batch_max, BATCH_REQS_MAX) : BATCH_REQS_MAX;
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->work, NULL);
        s->threads = calloc(workers, sizeof(*s->threads));
        if (!s->threads) {
                dsad_scheduler_free(s);
                return -ENOMEM;
        }
        for (unsigned i = 0; i < workers; i++) {
                r = pthread_create(&s->threads[i], NULL, worker, s);
                if (r != 0) {
                        dsad_scheduler_free(s);
                        return -r;
                }
                s->n_threads++;
        }
        *ret = s;
        return 0;
}

struct dsad_scheduler *dsad_scheduler_free(struct dsad_scheduler *s) {
        if (!s)
                return NULL;
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        pthread_cond_broadcast(&s->work);
        pthread_mutex_unlock(&s->lock);
        /* Workers leave only once the queue is empty, so everything queued still completes. */
        for (unsigned i = 0; i < s->n_threads; i++)
                pthread_join(s->threads[i], NULL);
        /* No worker ever started (allocation failure): nothing can be queued either. */
        free(s->threads);
        free(s->waiting);
        pthread_cond_destroy(&s->work);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
}

int dsad_scheduler_submit(struct dsad_scheduler *s, struct dsad_request *req) {
        double share;
        unsigned most;

        if (!s || !req)
                return -EINVAL;
        /* Read here, on the loop thread that owns the configuration (SIGHUP changes it). */
        share = s->d->config.limits.queue_share;
        most = share > 0 && share < 1 ? MAX(1u, (unsigned) (share * s->queue_max)) : UINT_MAX;
        pthread_mutex_lock(&s->lock);
        if (s->stopping || s->depth >= s->queue_max) {
                pthread_mutex_unlock(&s->lock);
                return -EBUSY;
        }
        if (req->uid != (uint32_t) s->self) {
                struct uid_waiting *w = uid_entry(s, req->uid, true);
                if (!w) {
                        pthread_mutex_unlock(&s->lock);
                        return -ENOMEM;
                }
                if (w->n >= most) { /* most >= 1, so the entry is not a fresh empty one */
                        unsigned n = w->n;
                        pthread_mutex_unlock(&s->lock);
                        return dsa__error(-EDQUOT, "uid %u has %u requests waiting, its share of the queue "
                                          "(queue_share %g of %u)", req->uid, n, share, s->queue_max);
                }
                w->n++;
        }
        req->next = NULL;
        req->enqueue_usec = now_usec();
        /* Counted before the unlock: from then on a worker may run and free req (ASan saw it once
         * workers woke each other for the rest of the queue). */
        if (runs_model(req) && dsad_model_ladder(req->model))
                dsad_policy_arrival(dsad_model_ladder(req->model));
        enqueue(s, req);
        __atomic_store_n(&s->depth, s->depth + 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&s->lock);
        /* Signalled after unlocking, so the woken worker does not block at once on our lock. */
        pthread_cond_signal(&s->work);
        return 0;
}

unsigned dsad_scheduler_depth(const struct dsad_scheduler *s) {
        return s ? __atomic_load_n(&s->depth, __ATOMIC_RELAXED) : 0;
}
