/* dsad's session ring (daemon/session.c) driven in-process, without D-Bus, from the client's
 * side of a real sealed memfd: geometry and seals, NOP round trips, a lying sq_tail (drains at
 * most one queue), bad slots and lengths (error CQEs), a header rewritten by the client
 * (ignored), backpressure (never more in flight than the CQ holds, resumed by completions),
 * closing with requests in flight, and the doorbell through io_uring (or its epoll fallback).
 * The registry and logging are stubbed; a gate in the stubbed dsad_model_loaded() holds the
 * workers so requests stay in flight on demand. NOPs are answered on the loop thread, so the
 * requests held in flight are TOKENIZE requests on the bundled model. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon.h"

/* ---- stubs */
struct dsad_model {
        int refs;
};
static pthread_t main_thread;
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static bool gate_closed;

static struct dsa_model *engine; /* the bundled model, for requests that reach a worker */

const struct dsa_model *dsad_model_engine(const struct dsad_model *m) {
        return engine;
}
struct dsad_model *dsad_model_ref(struct dsad_model *m) {
        __atomic_fetch_add(&m->refs, 1, __ATOMIC_SEQ_CST);
        return m;
}
void dsad_model_unref(struct dsad_model *m) {
        if (m)
                __atomic_fetch_sub(&m->refs, 1, __ATOMIC_SEQ_CST);
}
bool dsad_model_loaded(const struct dsad_model *m) {
        if (!pthread_equal(pthread_self(), main_thread)) {
                pthread_mutex_lock(&gate_lock);
                while (gate_closed)
                        pthread_cond_wait(&gate_cond, &gate_lock);
                pthread_mutex_unlock(&gate_lock);
        }
        return true;
}
int dsad_registry_load(struct dsad *d, const char *name, struct dsad_model **ret) {
        return -ENOENT;
}
/* No variant ladder: the scheduler runs the model's engine as it is. */
struct dsad_ladder *dsad_model_ladder(const struct dsad_model *m) {
        return NULL;
}
void dsad_adaptive_wake(struct dsad *d) {
}
void dsad_api_sessions_changed(struct dsad *d) {
}
void dsad_log(int priority, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}
int dsad_log_errno(int priority, int r, const char *fmt, ...) {
        va_list ap;
        errno = -r;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return r;
}

static void gate(bool closed) {
        pthread_mutex_lock(&gate_lock);
        gate_closed = closed;
        pthread_cond_broadcast(&gate_cond);
        pthread_mutex_unlock(&gate_lock);
}

/* ---- the client's side */
struct client {
        struct dsad d;
        struct dsad_model model;
        struct dsad_session *s;
        int ring, submit, complete;
        uint8_t *map;
        size_t size;
        struct dsa_ring_header g; /* geometry as created, before any test scribbles on it */
        uint32_t sq_tail, cq_head;
};

static uint32_t load_acq(uint32_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static void store_rel(uint32_t *p, uint32_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static struct dsa_ring_header *hdr(struct client *c) {
        return (struct dsa_ring_header *) c->map;
}

static void client_open(struct client *c, uint32_t slots, uint32_t slot_size, unsigned workers) {
        struct stat st;

        memset(c, 0, sizeof(*c));
        main_thread = pthread_self();
        assert_int_equal(dsad_scheduler_new(&c->d, workers, 0, 0, &c->d.scheduler), 0);
        assert_int_equal(dsad__session_new(&c->d, dsad_model_ref(&c->model), slots, slot_size, &c->s), 0);
        assert_int_equal(c->d.n_sessions, 1);
        assert_ptr_equal(dsad_session_find(&c->d, dsad_session_id(c->s)), c->s);
        assert_int_equal(dsad_session_fds(c->s, &c->ring, &c->submit, &c->complete), 0);
        assert_int_equal(fstat(c->ring, &st), 0);
        c->size = (size_t) st.st_size;
        c->map = mmap(NULL, c->size, PROT_READ | PROT_WRITE, MAP_SHARED, c->ring, 0);
        assert_true(c->map != MAP_FAILED);
        memcpy(&c->g, c->map, sizeof(c->g));
}

static void client_close(struct client *c) {
        if (c->s)
                assert_int_equal(dsad_session_close(&c->d, c->s), 0);
        c->d.scheduler = dsad_scheduler_free(c->d.scheduler);
        munmap(c->map, c->size);
        assert_int_equal(c->d.n_sessions, 0);
        assert_null(c->d.sessions);
        assert_int_equal(c->model.refs, 0); /* every request and the session let go */
}

static void push(struct client *c, uint64_t user_data, uint32_t op, uint32_t slot, const void *payload, uint32_t len) {
        struct dsa_ring_sqe sqe = { .user_data = user_data, .op = op, .slot = slot, .len = len };

        if (payload && slot < c->g.n_slots)
                memcpy(c->map + c->g.data_offset + (size_t) slot * c->g.slot_size, payload, len);
        memcpy(c->map + c->g.sq_offset + (c->sq_tail & (c->g.sq_entries - 1)) * sizeof(sqe), &sqe, sizeof(sqe));
        store_rel(&hdr(c)->sq_tail, ++c->sq_tail);
}

/* A TOKENIZE request of one text "x" (ring.h payload), small enough for 64-byte slots. */
static void push_work(struct client *c, uint64_t user_data, uint32_t slot) {
        static const uint8_t payload[] = { 1, 0, 0, 0, 1, 0, 0, 0, 'x' };

        push(c, user_data, DSA_RING_OP_TOKENIZE, slot, payload, sizeof(payload));
}

static void ring_doorbell(struct client *c) {
        uint64_t one = 1;
        assert_int_equal(write(c->submit, &one, 8), 8);
}

/* Waits (up to 5 s) until n CQEs are visible, then pops them into out. */
static void pop(struct client *c, struct dsa_ring_cqe *out, uint32_t n) {
        for (int tries = 0; load_acq(&hdr(c)->cq_tail) - c->cq_head < n; tries++) {
                struct pollfd p = { .fd = c->complete, .events = POLLIN };
                uint64_t v;
                assert_true(tries < 500);
                if (poll(&p, 1, 10) == 1)
                        (void) read(c->complete, &v, 8);
        }
        for (uint32_t i = 0; i < n; i++) {
                memcpy(&out[i], c->map + c->g.cq_offset + (c->cq_head & (c->g.cq_entries - 1)) * sizeof(*out),
                       sizeof(*out));
                c->cq_head++;
        }
        store_rel(&hdr(c)->cq_head, c->cq_head);
}

static void expect_no_more(struct client *c) {
        usleep(20000);
        assert_int_equal(load_acq(&hdr(c)->cq_tail), c->cq_head);
}

static void test_geometry(void **state) {
        struct client c;
        struct stat st;
        struct dsad_session *s = NULL;
        struct dsad d = {};
        struct dsad_model m = {};

        client_open(&c, 5, 4096, 1);
        assert_int_equal(c.g.magic, DSA_RING_MAGIC);
        assert_int_equal(c.g.version, DSA_RING_VERSION);
        assert_int_equal(c.g.n_slots, 5);
        assert_int_equal(c.g.slot_size, 4096);
        assert_int_equal(c.g.sq_entries, 8);
        assert_int_equal(c.g.cq_entries, 8);
        assert_int_equal(c.g.sq_offset, DSA_RING_HEADER_SIZE);
        assert_true(c.g.cq_offset >= c.g.sq_offset + 8 * 64);
        assert_true(c.g.data_offset >= c.g.cq_offset + 8 * 32);
        assert_int_equal(c.g.data_offset % 64, 0);
        assert_int_equal(c.g.total_size, c.g.data_offset + 5 * 4096);
        assert_int_equal(c.g.total_size, c.size);
        assert_int_equal(c.g.sq_head | c.g.sq_tail | c.g.cq_head | c.g.cq_tail, 0);
        /* Sealed: the client can neither shrink (SIGBUS for dsad) nor grow it, nor unseal. */
        int seals = fcntl(c.ring, F_GET_SEALS);
        assert_int_equal(seals & (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL),
                         F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
        assert_int_equal(seals & F_SEAL_WRITE, 0);
        assert_true(ftruncate(c.ring, 4096) < 0);
        assert_true(ftruncate(c.ring, (off_t) c.size * 2) < 0);
        assert_true(fcntl(c.submit, F_GETFL) & O_NONBLOCK);
        assert_true(fcntl(c.complete, F_GETFL) & O_NONBLOCK);
        /* The completion doorbell is a pipe's read end: the client cannot write it (so it can
         * neither fake nor clog completions), and the write end is not among its fds. */
        assert_int_equal(fstat(c.complete, &st), 0);
        assert_true(S_ISFIFO(st.st_mode));
        assert_int_equal(fcntl(c.complete, F_GETFL) & O_ACCMODE, O_RDONLY);
        assert_int_equal(write(c.complete, "x", 1), -1);
        assert_int_equal(errno, EBADF);
        assert_true(fcntl(c.complete, F_GETFD) & FD_CLOEXEC);
        assert_true(fcntl(c.ring, F_GETFD) & FD_CLOEXEC);
        uint64_t shm = 0;
        dsad_session_stats(c.s, NULL, NULL, &shm);
        assert_int_equal(shm, c.size);
        client_close(&c);

        /* Caps and defaults. */
        static const uint32_t bad[][2] = {
                { 257, 64 }, { 1, 100 }, { 1, 32 }, { 1, (16u << 20) + 64 }, { 256, 2u << 20 }, { 17, 16u << 20 },
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                assert_int_equal(dsad__session_new(&d, dsad_model_ref(&m), bad[i][0], bad[i][1], &s), -EINVAL);
                assert_int_equal(m.refs, 0);
        }
        assert_int_equal(dsad__session_new(&d, dsad_model_ref(&m), 0, 0, &s), 0);
        const struct dsa_ring_header *h;
        int fd;
        dsad_session_fds(s, &fd, NULL, NULL);
        h = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
        assert_true(h != MAP_FAILED);
        assert_int_equal(h->n_slots, 16);
        assert_int_equal(h->slot_size, 1u << 20);
        assert_int_equal(h->sq_entries, 16);
        munmap((void *) h, 4096);
        assert_int_equal(dsad_session_close(&d, s), 0);
        /* The largest session there is: 16 slots of 16 MiB, and 256 slots of 1 MiB. */
        assert_int_equal(dsad__session_new(&d, dsad_model_ref(&m), 16, 16u << 20, &s), 0);
        assert_int_equal(dsad_session_close(&d, s), 0);
        assert_int_equal(dsad__session_new(&d, dsad_model_ref(&m), 256, 1u << 20, &s), 0);
        assert_int_equal(dsad_session_close(&d, s), 0);
        assert_int_equal(m.refs, 0);
}

static void test_nop_round_trip(void **state) {
        struct client c;
        struct dsa_ring_cqe cqe[3];

        client_open(&c, 4, 256, 2);
        for (uint32_t i = 0; i < 3; i++)
                push(&c, 100 + i, DSA_RING_OP_NOP, i, NULL, 0);
        ring_doorbell(&c);
        dsad_session_doorbell(c.s);
        assert_int_equal(load_acq(&hdr(&c)->sq_head), 3);
        pop(&c, cqe, 3);
        uint64_t seen = 0;
        for (int i = 0; i < 3; i++) {
                assert_int_equal(cqe[i].status, 0);
                assert_int_equal(cqe[i].len, 0);
                assert_true(cqe[i].user_data >= 100 && cqe[i].user_data < 103);
                assert_int_equal(cqe[i].slot, cqe[i].user_data - 100);
                seen |= 1u << (cqe[i].user_data - 100);
        }
        assert_int_equal(seen, 7);
        /* The doorbell was cleared. */
        struct pollfd p = { .fd = c.submit, .events = POLLIN };
        assert_int_equal(poll(&p, 1, 0), 0);
        uint64_t done = 0, failed = 0;
        dsad_session_stats(c.s, &done, &failed, NULL);
        assert_int_equal(done, 3);
        assert_int_equal(failed, 0);
        assert_int_equal(c.d.requests_completed, 3);
        client_close(&c);
}

/* A tail a billion entries ahead: one doorbell consumes exactly one queue's worth. */
static void test_lying_tail(void **state) {
        struct client c;
        struct dsa_ring_cqe cqe[8];

        client_open(&c, 8, 64, 1);
        /* Eight zeroed SQEs are eight valid NOPs on slot 0. */
        store_rel(&hdr(&c)->sq_tail, 1000000000u);
        dsad_session_doorbell(c.s);
        assert_int_equal(load_acq(&hdr(&c)->sq_head), 8);
        pop(&c, cqe, 8);
        for (int i = 0; i < 8; i++)
                assert_int_equal(cqe[i].status, 0);
        expect_no_more(&c);
        /* And a tail behind the head (wrapping) likewise. */
        store_rel(&hdr(&c)->sq_tail, 3);
        dsad_session_doorbell(c.s);
        assert_int_equal(load_acq(&hdr(&c)->sq_head), 16);
        pop(&c, cqe, 8);
        expect_no_more(&c);
        client_close(&c);
}

static void test_bad_requests(void **state) {
        struct client c;
        struct dsa_ring_cqe cqe[6];
        uint8_t junk[8] = { 1, 0, 0, 0, 99, 0, 0, 0 };

        client_open(&c, 5, 128, 1); /* 8 SQ entries */
        push(&c, 1, DSA_RING_OP_NOP, 5, NULL, 0);             /* slot == n_slots */
        push(&c, 2, DSA_RING_OP_NOP, 0xffffffffu, NULL, 0);   /* slot far out */
        push(&c, 3, DSA_RING_OP_CLASSIFY, 0, NULL, 129);      /* longer than a slot */
        push(&c, 4, DSA_RING_OP_CLASSIFY, 1, junk, 8);        /* lying text length */
        push(&c, 5, 77, 2, NULL, 0);                          /* unknown op */
        push(&c, 6, DSA_RING_OP_NOP, 3, NULL, 0);             /* fine */
        dsad_session_doorbell(c.s);
        pop(&c, cqe, 6);
        /* Errors complete at once, in order, before the NOP that went through the queue. */
        assert_int_equal(cqe[0].user_data, 1);
        assert_int_equal(cqe[0].status, -EBADSLT);
        assert_int_equal(cqe[1].user_data, 2);
        assert_int_equal(cqe[1].status, -EBADSLT);
        assert_int_equal(cqe[2].status, -EINVAL);
        assert_int_equal(cqe[3].status, -EINVAL);
        assert_int_equal(cqe[4].status, -EINVAL);
        assert_int_equal(cqe[5].user_data, 6);
        assert_int_equal(cqe[5].status, 0);
        for (int i = 0; i < 6; i++)
                assert_int_equal(cqe[i].len, 0);
        uint64_t done, failed;
        dsad_session_stats(c.s, &done, &failed, NULL);
        assert_int_equal(done, 1);
        assert_int_equal(failed, 5);
        assert_int_equal(c.d.requests_failed, 5);
        client_close(&c);
}

/* The client rewrites the header's geometry and indices dsad owns: dsad goes on with its own. */
static void test_rewritten_geometry(void **state) {
        struct client c;
        struct dsa_ring_cqe cqe[2];

        client_open(&c, 2, 64, 1);
        struct dsa_ring_header *h = hdr(&c);
        h->sq_entries = h->cq_entries = 0x80000000u;
        h->n_slots = 0xffffffffu;
        h->slot_size = 0xffffffc0u;
        h->sq_offset = h->cq_offset = h->data_offset = 1ull << 60;
        h->total_size = ~0ull;
        h->magic = 0;
        push(&c, 1, DSA_RING_OP_NOP, 1, NULL, 0);
        push(&c, 2, DSA_RING_OP_NOP, 2, NULL, 0); /* in range of the lie only */
        store_rel(&h->cq_tail, 12345);            /* dsad's own index, scribbled on */
        store_rel(&h->sq_head, 999);
        dsad_session_doorbell(c.s);
        assert_int_equal(load_acq(&h->sq_head), 2);
        /* dsad wrote CQEs at its own positions 0 and 1 and published its own tail. */
        for (int tries = 0; load_acq(&h->cq_tail) != 2; tries++) {
                assert_true(tries < 500);
                usleep(10000);
        }
        pop(&c, cqe, 2);
        /* The error is pushed on the loop thread, the NOP by a worker: either may be first. */
        if (cqe[0].user_data == 1) {
                struct dsa_ring_cqe t = cqe[0];
                cqe[0] = cqe[1];
                cqe[1] = t;
        }
        assert_int_equal(cqe[0].user_data, 2);
        assert_int_equal(cqe[0].status, -EBADSLT);
        assert_int_equal(cqe[1].user_data, 1);
        assert_int_equal(cqe[1].status, 0);
        client_close(&c);
}

/* Never more in flight than the CQ holds; the completion that frees room rings the doorbell. */
static void test_backpressure(void **state) {
        struct client c;
        struct dsa_ring_cqe cqe[8];

        gate(true);
        client_open(&c, 4, 64, 2);
        for (uint32_t i = 0; i < 4; i++)
                push_work(&c, i, i);
        dsad_session_doorbell(c.s);
        assert_int_equal(load_acq(&hdr(&c)->sq_head), 4);
        /* Four in flight (held by the gate) = cq_entries: the next four wait in the SQ. They are
         * NOPs, which need no slot contents: the slots still belong to the requests in flight. */
        for (uint32_t i = 0; i < 4; i++)
                push(&c, 10 + i, DSA_RING_OP_NOP, i, NULL, 0);
        dsad_session_doorbell(c.s);
        assert_int_equal(load_acq(&hdr(&c)->sq_head), 4);
        struct pollfd p = { .fd = c.submit, .events = POLLIN };
        assert_int_equal(poll(&p, 1, 0), 0);
        gate(false);
        pop(&c, cqe, 4);
        /* A completion rang the submit eventfd so the loop comes back for the rest. The last
         * worker may still count as in flight for a moment after its CQE is visible (it pushes
         * first, then lets go), and then rings again once it does: act as the loop would. */
        for (int tries = 0; load_acq(&hdr(&c)->sq_head) != 8; tries++) {
                assert_true(tries < 10);
                assert_int_equal(poll(&p, 1, 5000), 1);
                dsad_session_doorbell(c.s);
        }
        pop(&c, cqe + 4, 4);
        for (int i = 0; i < 8; i++)
                assert_int_equal(cqe[i].status, 0);
        client_close(&c);
}

/* Closing with requests in flight: the ring outlives the close until they finish; their
 * completions are dropped; every reference goes (client_close checks the model's). */
static void test_close_in_flight(void **state) {
        struct client c;

        gate(true);
        client_open(&c, 4, 64, 1);
        for (uint32_t i = 0; i < 4; i++)
                push_work(&c, i, i);
        dsad_session_doorbell(c.s);
        assert_int_equal(dsad_session_close(&c.d, c.s), 0);
        assert_null(dsad_session_find(&c.d, "1"));
        c.s = NULL;
        gate(false);
        c.d.scheduler = dsad_scheduler_free(c.d.scheduler); /* drains */
        assert_int_equal(load_acq(&hdr(&c)->cq_tail), 0);
        client_close(&c);
}

/* A hostile client makes its completion fd blocking, shrinks the pipe to one page and never
 * reads it: dsad's workers must still complete every request (the client reads only the CQ).
 * With the old shared eventfd, the same client could park a worker in write() for good. */
static void test_complete_never_read(void **state) {
        struct client c;
        struct dsa_ring_cqe cqe[16];
        int fl, size;
        const uint32_t rounds = 600; /* 600 * 16 completions: far more bytes than the pipe holds */

        client_open(&c, 16, 64, 2);
        fl = fcntl(c.complete, F_GETFL);
        assert_true(fl >= 0);
        assert_int_equal(fcntl(c.complete, F_SETFL, fl & ~O_NONBLOCK), 0);
        size = fcntl(c.complete, F_SETPIPE_SZ, 4096);
        assert_true(size >= 4096);
        for (uint32_t round = 0; round < rounds; round++) {
                for (uint32_t i = 0; i < 16; i++)
                        push(&c, round * 16 + i, DSA_RING_OP_NOP, i, NULL, 0);
                dsad_session_doorbell(c.s);
                for (int tries = 0; load_acq(&hdr(&c)->cq_tail) - c.cq_head < 16; tries++) {
                        assert_true(tries < 5000);
                        usleep(1000);
                }
                for (uint32_t i = 0; i < 16; i++) {
                        memcpy(&cqe[i], c.map + c.g.cq_offset + (c.cq_head & (c.g.cq_entries - 1)) * sizeof(cqe[i]),
                               sizeof(cqe[i]));
                        c.cq_head++;
                        assert_int_equal(cqe[i].status, 0);
                }
                store_rel(&hdr(&c)->cq_head, c.cq_head);
        }
        uint64_t done = 0;
        dsad_session_stats(c.s, &done, NULL, NULL);
        assert_int_equal(done, rounds * 16);
        assert_true(rounds * 16 > (uint32_t) size);
        /* The pipe is full and still readable: the wake-up was never lost. */
        struct pollfd p = { .fd = c.complete, .events = POLLIN };
        assert_int_equal(poll(&p, 1, 0), 1);
        client_close(&c); /* the scheduler joins its workers: none is stuck */
}

/* The doorbell through the real io_uring (or the epoll fallback) and a libuv loop. */
static void test_uring(void **state) {
        struct client c;
        struct dsa_ring_cqe cqe[4];
        uv_loop_t loop;

        assert_int_equal(uv_loop_init(&loop), 0);
        client_open(&c, 4, 64, 1);
        /* Re-open the session with the doorbell watched. */
        assert_int_equal(dsad_session_close(&c.d, c.s), 0);
        munmap(c.map, c.size);
        c.d.loop = &loop;
        assert_int_equal(dsad_uring_new(&c.d, &c.d.uring), 0);
        assert_int_equal(dsad__session_new(&c.d, dsad_model_ref(&c.model), 4, 64, &c.s), 0);
        dsad_session_fds(c.s, &c.ring, &c.submit, &c.complete);
        c.map = mmap(NULL, c.size, PROT_READ | PROT_WRITE, MAP_SHARED, c.ring, 0);
        assert_true(c.map != MAP_FAILED);

        for (int round = 0; round < 3; round++) {
                for (uint32_t i = 0; i < 4; i++)
                        push(&c, i, DSA_RING_OP_NOP, i, NULL, 0);
                ring_doorbell(&c);
                for (int tries = 0; load_acq(&hdr(&c)->cq_tail) - c.cq_head < 4; tries++) {
                        assert_true(tries < 500);
                        uv_run(&loop, UV_RUN_NOWAIT);
                        usleep(10000);
                }
                pop(&c, cqe, 4);
        }
        /* Unwatch with the poll still armed, then a doorbell that must reach no one. */
        int keep = dup(c.submit); /* the client's copy keeps the eventfd alive */
        assert_true(keep >= 0);
        assert_int_equal(dsad_session_close(&c.d, c.s), 0);
        c.s = NULL;
        c.submit = keep;
        ring_doorbell(&c);
        close(keep);
        for (int i = 0; i < 10; i++)
                uv_run(&loop, UV_RUN_NOWAIT);
        c.d.uring = dsad_uring_free(c.d.uring);
        uv_run(&loop, UV_RUN_DEFAULT); /* close callbacks */
        assert_int_equal(uv_loop_close(&loop), 0);
        client_close(&c);
}

int main(void) {
        char path[4096];
        const char *src = getenv("DSA_SOURCE_DIR");
        int r;

        snprintf(path, sizeof(path), "%s/models/sst2-bert-4l256.gguf", src && *src ? src : ".");
        r = dsa_model_open(path, &engine);
        if (r < 0) {
                fprintf(stderr, "cannot open the bundled model %s: %s\n", path, strerror(-r));
                return 1;
        }
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_geometry),
                cmocka_unit_test(test_nop_round_trip),
                cmocka_unit_test(test_lying_tail),
                cmocka_unit_test(test_bad_requests),
                cmocka_unit_test(test_rewritten_geometry),
                cmocka_unit_test(test_backpressure),
                cmocka_unit_test(test_close_in_flight),
                cmocka_unit_test(test_complete_never_read),
                cmocka_unit_test(test_uring),
        };
        r = cmocka_run_group_tests(tests, NULL, NULL);
        dsa_model_free(engine);
        return r;
}
