/* Many concurrent clients: 32 threads, each with its own client and session, each doing 50
 * mixed requests (classify, embed with every pool, tokenize with and without specials, nop) on
 * texts no other request uses. Half the threads are synchronous, half asynchronous with up to 4
 * requests in flight. Every result is checked against the in-process engine's (precomputed, one
 * text per batch; dsad batches requests of different clients together, so padding moves the
 * floats by ~1e-6: tolerance 1e-4 absolute + 1e-4 relative, token ids exact). Zero lost (every
 * request answered, no error), duplicated (each async callback exactly once, for the id it was
 * given) or mismatched results. Afterwards dsad counts every request and no session is left. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dsa/dsa.h>

#include "common.h"
#include "expect.h"
#include "itest.h"

#define THREADS 32
#define REQS (ITEST_ASAN ? 10 : 50)
#define MAX_TEXTS 2
#define INFLIGHT 4

static struct itest T;
#define CHECK(cond, ...) ITEST_CHECK(&T, cond, __VA_ARGS__)

struct req {
        int op;       /* enum dsa_op */
        int arg;      /* pool, or 1 = special tokens */
        size_t n;
        char text[MAX_TEXTS][160];
        const char *ptrs[MAX_TEXTS];
        float *want;  /* logits (n * L) or embeddings (n * C) */
        int32_t *ids[MAX_TEXTS];
        size_t n_ids[MAX_TEXTS];
        atomic_int answered;
};

static struct req reqs[THREADS][REQS];
static size_t L, C;
static atomic_int n_mismatch, n_lost, n_dup, n_ok;

static void mismatch(int t, int k, const char *what) {
        if (atomic_fetch_add(&n_mismatch, 1) < 10)
                fprintf(stderr, "FAIL thread %d request %d: %s\n", t, k, what);
}

/* Checks one result against the expectation; returns true when it matches. */
static bool check_result(int t, int k, const struct dsa_result *res) {
        struct req *q = &reqs[t][k];
        char what[64];

        if ((int) res->op != q->op || (q->op != DSA_OP_NOP && res->n_texts != q->n)) {
                mismatch(t, k, "op or count");
                return false;
        }
        switch (q->op) {
        case DSA_OP_CLASSIFY:
                for (size_t i = 0; i < q->n; i++) {
                        if (res->classify[i].n_labels != L) {
                                mismatch(t, k, "n_labels");
                                return false;
                        }
                        snprintf(what, sizeof(what), "thread %d request %d classify", t, k);
                        if (!itest_close(what, res->classify[i].logits, q->want + i * L, L, 1e-4f, 1e-4f, false)) {
                                mismatch(t, k, "logits");
                                return false;
                        }
                }
                return true;
        case DSA_OP_EMBED:
                snprintf(what, sizeof(what), "thread %d request %d embed pool %d", t, k, q->arg);
                if (res->dim != C || !itest_close(what, res->embeddings, q->want, q->n * C, 1e-4f, 1e-4f, false)) {
                        mismatch(t, k, "embedding");
                        return false;
                }
                return true;
        case DSA_OP_TOKENIZE:
                for (size_t i = 0; i < q->n; i++)
                        if (res->tokens[i].n_ids != q->n_ids[i] ||
                            memcmp(res->tokens[i].ids, q->ids[i], q->n_ids[i] * sizeof(int32_t))) {
                                mismatch(t, k, "token ids");
                                return false;
                        }
                return true;
        default:
                return true;
        }
}

struct cb {
        int t, k;
        uint64_t id;
        int *in_flight;
};

static void on_done(struct dsa_session *s, uint64_t id, int status, struct dsa_result *res, void *userdata) {
        struct cb *cb = userdata;

        if (atomic_fetch_add(&reqs[cb->t][cb->k].answered, 1) != 0)
                atomic_fetch_add(&n_dup, 1);
        else if (id != cb->id)
                mismatch(cb->t, cb->k, "callback id differs from the submit's");
        else if (status < 0) {
                fprintf(stderr, "FAIL thread %d request %d: status %s\n", cb->t, cb->k, strerror(-status));
                atomic_fetch_add(&n_lost, 1);
        } else if (check_result(cb->t, cb->k, res))
                atomic_fetch_add(&n_ok, 1);
        (*cb->in_flight)--;
}

static int submit(struct dsa_session *s, struct req *q, struct cb *cb) {
        switch (q->op) {
        case DSA_OP_CLASSIFY:
                return dsa_session_submit_classify(s, q->ptrs, q->n, on_done, cb, &cb->id);
        case DSA_OP_EMBED:
                return dsa_session_submit_embed(s, q->ptrs, q->n, (enum dsa_pool) q->arg, on_done, cb, &cb->id);
        case DSA_OP_TOKENIZE:
                return dsa_session_submit_tokenize(s, q->ptrs, q->n, q->arg ? 0 : DSA_TOKENIZE_NO_SPECIAL, on_done,
                                                   cb, &cb->id);
        default:
                return dsa_session_submit_nop(s, on_done, cb, &cb->id);
        }
}

static int run_sync(struct dsa_session *s, struct req *q, struct dsa_result *res) {
        int r;

        memset(res, 0, sizeof(*res));
        res->op = (enum dsa_op) q->op;
        res->n_texts = q->n;
        switch (q->op) {
        case DSA_OP_CLASSIFY:
                return dsa_classify(s, q->ptrs, q->n, &res->classify);
        case DSA_OP_EMBED:
                return dsa_embed(s, q->ptrs, q->n, (enum dsa_pool) q->arg, &res->embeddings, &res->dim);
        case DSA_OP_TOKENIZE:
                return dsa_tokenize(s, q->ptrs, q->n, q->arg ? 0 : DSA_TOKENIZE_NO_SPECIAL, &res->tokens);
        default:
                r = dsa_nop(s);
                return r;
        }
}

static void *client_thread(void *arg) {
        int t = (int) (intptr_t) arg;
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        int r;

        r = dsa_client_new(T.address, &c);
        if (r >= 0)
                r = dsa_session_open(c, "sst2", INFLIGHT, 64 * 1024, &s);
        if (r < 0) {
                fprintf(stderr, "FAIL thread %d: client/session: %s\n", t, strerror(-r));
                atomic_fetch_add(&n_lost, REQS);
                dsa_client_free(c);
                return NULL;
        }
        dsa_session_set_timeout(s, 30 * 1000000ull);

        if (t % 2 == 0) {
                for (int k = 0; k < REQS; k++) {
                        struct dsa_result res;
                        atomic_fetch_add(&reqs[t][k].answered, 1);
                        r = run_sync(s, &reqs[t][k], &res);
                        if (r < 0) {
                                fprintf(stderr, "FAIL thread %d request %d: %s\n", t, k, strerror(-r));
                                atomic_fetch_add(&n_lost, 1);
                        } else if (check_result(t, k, &res))
                                atomic_fetch_add(&n_ok, 1);
                        dsa_classify_result_free(res.classify);
                        free(res.embeddings);
                        dsa_tokens_free(res.tokens);
                }
        } else {
                struct cb cbs[REQS];
                int in_flight = 0, next = 0;
                uint64_t end = itest_now_ms() + 45000;

                while ((next < REQS || in_flight > 0) && itest_now_ms() < end) {
                        while (next < REQS && in_flight < INFLIGHT) {
                                cbs[next] = (struct cb) { .t = t, .k = next, .in_flight = &in_flight };
                                r = submit(s, &reqs[t][next], &cbs[next]);
                                if (r == -EAGAIN)
                                        break;
                                if (r < 0) {
                                        fprintf(stderr, "FAIL thread %d submit %d: %s\n", t, next, strerror(-r));
                                        atomic_fetch_add(&n_lost, 1);
                                        atomic_fetch_add(&reqs[t][next].answered, 1);
                                } else
                                        in_flight++;
                                next++;
                        }
                        struct pollfd p = { .fd = dsa_session_get_fd(s), .events = POLLIN };
                        if (poll(&p, 1, 1000) >= 0)
                                (void) dsa_session_dispatch(s);
                }
                if (in_flight > 0) {
                        fprintf(stderr, "FAIL thread %d: %d requests never answered\n", t, in_flight);
                        atomic_fetch_add(&n_lost, in_flight);
                }
                /* Anything still pending is cancelled by the free, with callbacks: cbs must live. */
                s = dsa_session_free(s);
        }
        dsa_session_free(s);
        dsa_client_free(c);
        return NULL;
}

static void prepare(void) {
        for (int t = 0; t < THREADS; t++)
                for (int k = 0; k < REQS; k++) {
                        struct req *q = &reqs[t][k];
                        uint32_t h = (uint32_t) (t * 7919 + k * 104729);
                        int kind = (int) (h % 7);

                        q->n = 1 + (h / 7) % MAX_TEXTS;
                        for (size_t i = 0; i < q->n; i++) {
                                itest_text(q->text[i], sizeof(q->text[i]), (uint32_t) t, (uint32_t) (k * MAX_TEXTS + i));
                                q->ptrs[i] = q->text[i];
                        }
                        switch (kind) {
                        case 0:
                        case 1:
                                q->op = DSA_OP_CLASSIFY;
                                q->want = malloc(q->n * L * sizeof(float));
                                CHECK(q->want && expect_classify(q->ptrs, q->n, 1, q->want) >= 0, "expect classify");
                                break;
                        case 2:
                        case 3:
                        case 4:
                                q->op = DSA_OP_EMBED;
                                q->arg = (int) ((h / 14) % 4);
                                q->want = malloc(q->n * C * sizeof(float));
                                CHECK(q->want && expect_embed(q->ptrs, q->n, q->arg, 1, q->want) >= 0, "expect embed");
                                break;
                        case 5:
                                q->op = DSA_OP_TOKENIZE;
                                q->arg = (int) ((h / 14) % 2);
                                for (size_t i = 0; i < q->n; i++)
                                        CHECK(expect_tokenize(q->ptrs[i], q->arg, &q->ids[i], &q->n_ids[i]) >= 0,
                                              "expect tokenize");
                                break;
                        default:
                                q->op = DSA_OP_NOP;
                                q->n = 0;
                        }
                }
}

int main(void) {
        pthread_t th[THREADS];
        struct dsa_client *c;
        struct dsa_status *st0 = NULL, *st1 = NULL;
        struct dsa_session_info *si = NULL;
        size_t n_si = 0;
        uint64_t t0;
        int r;

        itest_init(&T, NULL);
        CHECK(expect_open(itest_model_path()) >= 0, "engine opens the bundled model");
        L = expect_n_labels();
        C = expect_dim();
        t0 = itest_now_ms();
        prepare();
        fprintf(stderr, "expected results computed in %llu ms\n", (unsigned long long) (itest_now_ms() - t0));
        itest_dsad_start(&T, NULL);

        r = dsa_client_new(NULL, &c);
        CHECK(r >= 0, "client: %s", strerror(-r));
        r = dsa_client_status(c, &st0);
        CHECK(r >= 0, "status: %s", strerror(-r));

        t0 = itest_now_ms();
        for (int t = 0; t < THREADS; t++)
                CHECK(pthread_create(&th[t], NULL, client_thread, (void *) (intptr_t) t) == 0, "pthread_create");
        for (int t = 0; t < THREADS; t++)
                pthread_join(th[t], NULL);
        fprintf(stderr, "%d clients x %d requests in %llu ms: %d ok, %d lost, %d duplicated, %d mismatched\n",
                THREADS, REQS, (unsigned long long) (itest_now_ms() - t0), atomic_load(&n_ok), atomic_load(&n_lost),
                atomic_load(&n_dup), atomic_load(&n_mismatch));

        for (int t = 0; t < THREADS; t++)
                for (int k = 0; k < REQS; k++)
                        if (atomic_load(&reqs[t][k].answered) != 1) {
                                fprintf(stderr, "FAIL thread %d request %d answered %d times\n", t, k,
                                        atomic_load(&reqs[t][k].answered));
                                atomic_fetch_add(atomic_load(&reqs[t][k].answered) ? &n_dup : &n_lost, 1);
                        }
        CHECK(n_lost == 0 && n_dup == 0 && n_mismatch == 0 && n_ok == THREADS * REQS,
              "%d lost, %d duplicated, %d mismatched, %d ok of %d", n_lost, n_dup, n_mismatch, n_ok, THREADS * REQS);

        r = dsa_client_status(c, &st1);
        CHECK(r >= 0, "status: %s", strerror(-r));
        CHECK(st1->requests_completed - st0->requests_completed >= (uint64_t) THREADS * REQS &&
                      st1->requests_failed == st0->requests_failed,
              "dsad counted %llu completed, %llu failed",
              (unsigned long long) (st1->requests_completed - st0->requests_completed),
              (unsigned long long) (st1->requests_failed - st0->requests_failed));
        dsa_status_free(st0);
        dsa_status_free(st1);
        for (uint64_t end = itest_now_ms() + 3000;;) {
                r = dsa_client_list_sessions(c, &si, &n_si);
                CHECK(r >= 0, "ListSessions: %s", strerror(-r));
                si = dsa_session_info_free(si, n_si);
                if (n_si == 0 || itest_now_ms() > end)
                        break;
                usleep(20000);
        }
        CHECK(n_si == 0, "%zu sessions left after every client closed", n_si);
        dsa_client_free(c);

        for (int t = 0; t < THREADS; t++)
                for (int k = 0; k < REQS; k++) {
                        free(reqs[t][k].want);
                        for (int i = 0; i < MAX_TEXTS; i++)
                                free(reqs[t][k].ids[i]);
                }
        expect_close();
        return itest_teardown(&T) ? 0 : 1;
}
