/* Sessions: one sealed memfd ring (include/dsa/ring.h), a submit eventfd and a complete pipe per
 * OpenSession, bound to
 * one model and to the D-Bus peer that opened it. The loop thread drains the submission queue
 * when the doorbell rings; workers push completions. The client can rewrite any byte of the
 * memfd at any time, so dsad keeps its own geometry and its own copies of the indices it
 * produces, reads the client's index once per pass, and copies every SQE and payload out before
 * looking at it.
 *
 * Lifetime: the session holds one reference for being open, each request in flight one more.
 * dsad_session_close() (CloseSession, the peer leaving, exit) unlinks it, stops the doorbell and
 * drops the open reference; the ring, fds and model go with the last reference, which may be a
 * worker finishing a request. Completions for a closed session are dropped.
 *
 * Backpressure: at most cq_entries requests of a session are in flight, so a client that keeps
 * its CQ drained never loses a completion; past that the drain stops, and the completion that
 * brings the count down rings the submit eventfd so the loop resumes where it stopped. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "basic/error.h"
#include "basic/time-util.h"
#include "daemon.h"
#include "polkit.h"

#define SLOTS_DEFAULT 16u
#define SLOTS_MAX 256u
#define SLOT_SIZE_DEFAULT (1u << 20)
#define SLOT_SIZE_MAX (16u << 20)
#define SESSION_DATA_MAX (256ull << 20)
#define PAGE 4096u

struct ring_geometry {
        uint32_t sq_entries, cq_entries, n_slots, slot_size;
        uint64_t sq_offset, cq_offset, data_offset, total_size;
};

struct dsad_session {
        struct dsad *d;
        atomic_uint refs;
        atomic_bool closed;
        struct dsad_session *next; /* d->sessions, loop thread */

        char id[24];
        char *owner;
        uint32_t uid;
        struct dsad_model *model;
        sd_bus_track *track;
        bool watched;

        int ring_fd, submit_fd;
        int complete_fd;            /* the pipe's read end: what the client gets */
        int complete_wfd;           /* its write end: ours alone, O_NONBLOCK */
        uint8_t *map;               /* total_size bytes, shared with the client: hostile */
        struct ring_geometry g;     /* ours, never read back from the header */
        struct dsa_ring_header *hdr;

        uint32_t sq_head;           /* loop thread */
        uint8_t *scratch;           /* loop thread: the payload being decoded */
        size_t scratch_size;

        pthread_mutex_t lock;       /* CQ producer side */
        uint32_t cq_tail;           /* under lock */

        atomic_uint in_flight;
        atomic_bool stalled;        /* the drain stopped on backpressure */
        atomic_uint_fast64_t completed, failed;
};

static uint32_t load_acquire(const uint32_t *p) {
        return atomic_load_explicit((_Atomic uint32_t *) p, memory_order_acquire);
}

static void store_release(uint32_t *p, uint32_t v) {
        atomic_store_explicit((_Atomic uint32_t *) p, v, memory_order_release);
}

/* The client holds the same open file description of the submit eventfd and may clear
 * O_NONBLOCK on it or saturate the counter; neither may make a dsad thread block. Reads use
 * RWF_NOWAIT, which ignores the file's flags; eventfd writes have no such flag, so the flag is
 * put back and the write happens only when poll says it cannot block. */
static void eventfd_clear(int fd) {
        uint64_t v;
        struct iovec iov = { &v, sizeof(v) };
        struct pollfd p = { .fd = fd, .events = POLLIN };

        if (preadv2(fd, &iov, 1, -1, RWF_NOWAIT) >= 0 || (errno != EOPNOTSUPP && errno != EINVAL))
                return;
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && !(fl & O_NONBLOCK))
                (void) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        if (poll(&p, 1, 0) == 1 && (p.revents & POLLIN))
                (void) !read(fd, &v, sizeof(v));
}

static void eventfd_signal(int fd) {
        uint64_t one = 1;
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        int fl = fcntl(fd, F_GETFL);

        if (fl >= 0 && !(fl & O_NONBLOCK))
                (void) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        /* Not writable: the counter is saturated, so the reader has a wake-up pending anyway. */
        if (poll(&p, 1, 0) == 1 && (p.revents & POLLOUT))
                (void) !write(fd, &one, sizeof(one));
}

/* The completion doorbell: one byte into our own non-blocking write end, which the client
 * cannot reach. EAGAIN means the pipe is full, so the client has a wake-up pending already;
 * EPIPE cannot happen while we hold the read end. */
static void complete_signal(int wfd) {
        (void) !write(wfd, "", 1);
}

static int geometry_for(uint32_t slots, uint32_t slot_size, struct ring_geometry *ret) {
        struct ring_geometry g = {};
        uint32_t entries = 1;

        if (slots == 0)
                slots = SLOTS_DEFAULT;
        if (slot_size == 0)
                slot_size = SLOT_SIZE_DEFAULT;
        if (slots > SLOTS_MAX)
                return dsa__error(-EINVAL, "%u slots, at most %u", slots, SLOTS_MAX);
        if (slot_size % 64 != 0 || slot_size > SLOT_SIZE_MAX)
                return dsa__error(-EINVAL, "slot size %u is not a multiple of 64 up to 16 MiB", slot_size);
        if ((uint64_t) slots * slot_size > SESSION_DATA_MAX)
                return dsa__error(-EINVAL, "%u slots of %u bytes exceed 256 MiB", slots, slot_size);
        while (entries < slots)
                entries <<= 1;
        g.sq_entries = g.cq_entries = entries;
        g.n_slots = slots;
        g.slot_size = slot_size;
        g.sq_offset = DSA_RING_HEADER_SIZE;
        g.cq_offset = g.sq_offset + (uint64_t) entries * sizeof(struct dsa_ring_sqe);
        g.data_offset = ALIGN_TO(g.cq_offset + (uint64_t) entries * sizeof(struct dsa_ring_cqe), PAGE);
        g.total_size = g.data_offset + (uint64_t) slots * slot_size;
        *ret = g;
        return 0;
}

static void session_destroy(struct dsad_session *s) {
        if (s->map)
                munmap(s->map, s->g.total_size);
        if (s->ring_fd >= 0)
                close(s->ring_fd);
        if (s->submit_fd >= 0)
                close(s->submit_fd);
        if (s->complete_fd >= 0)
                close(s->complete_fd);
        if (s->complete_wfd >= 0)
                close(s->complete_wfd);
        if (s->model)
                dsad_model_unref(s->model);
        pthread_mutex_destroy(&s->lock);
        free(s->scratch);
        free(s->owner);
        free(s);
}

struct dsad_session *dsad__session_ref(struct dsad_session *s) {
        if (s)
                atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
        return s;
}

void dsad__session_unref(struct dsad_session *s) {
        if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
                session_destroy(s);
}

bool dsad__session_closed(const struct dsad_session *s) {
        return atomic_load_explicit(&((struct dsad_session *) s)->closed, memory_order_acquire);
}

/* Pushes one CQE (and the response into the slot). Any thread; dropped once closed. */
static void ring_push(struct dsad_session *s, uint64_t user_data, uint32_t slot, int status,
                      const void *payload, size_t len, uint32_t variant) {
        struct dsa_ring_cqe cqe = { .user_data = user_data, .slot = slot, .variant = status < 0 ? 0 : variant };

        if (status == 0 && len > 0 && (slot >= s->g.n_slots || len > s->g.slot_size || !payload))
                status = -ENOBUFS; /* the run was told the cap; this is a second line only */
        if (status < 0)
                len = 0;
        cqe.status = status;
        cqe.len = (uint32_t) len;

        pthread_mutex_lock(&s->lock);
        if (dsad__session_closed(s)) {
                pthread_mutex_unlock(&s->lock);
                return;
        }
        if (len > 0)
                memcpy(s->map + s->g.data_offset + (uint64_t) slot * s->g.slot_size, payload, len);
        memcpy(s->map + s->g.cq_offset + (uint64_t) (s->cq_tail & (s->g.cq_entries - 1)) * sizeof(cqe),
               &cqe, sizeof(cqe));
        s->cq_tail++;
        store_release(&s->hdr->cq_tail, s->cq_tail);
        pthread_mutex_unlock(&s->lock);

        atomic_fetch_add_explicit(status < 0 ? &s->failed : &s->completed, 1, memory_order_relaxed);
        complete_signal(s->complete_wfd);
}

void dsad_session_complete(struct dsad_request *req, int status, const void *payload, size_t len) {
        struct dsad_session *s;

        if (!req || !req->session)
                return;
        s = req->session;
        ring_push(s, req->user_data, req->slot, status, payload, len, req->variant);
        atomic_fetch_sub_explicit(&s->in_flight, 1, memory_order_seq_cst);
        /* Pairs with the store-then-recheck in drain(): one side always sees the other. */
        if (atomic_exchange_explicit(&s->stalled, false, memory_order_seq_cst) && !dsad__session_closed(s))
                eventfd_signal(s->submit_fd);
}

/* Loop thread: an SQE the request never got past. Counts as failed for the daemon too. */
static void complete_now(struct dsad_session *s, const struct dsa_ring_sqe *sqe, int status) {
        ring_push(s, sqe->user_data, sqe->slot, status, NULL, 0, 0);
        __atomic_fetch_add(&s->d->requests_failed, 1, __ATOMIC_RELAXED);
}

static void handle_sqe(struct dsad_session *s, const struct dsa_ring_sqe *sqe) {
        struct dsad_request *req = NULL;
        int r;

        if (sqe->slot >= s->g.n_slots)
                return complete_now(s, sqe, -EBADSLT);
        if (sqe->len > s->g.slot_size)
                return complete_now(s, sqe, -EINVAL);
        if (sqe->len > s->scratch_size) {
                uint8_t *p = realloc(s->scratch, sqe->len);
                if (!p)
                        return complete_now(s, sqe, -ENOMEM);
                s->scratch = p;
                s->scratch_size = sqe->len;
        }
        if (sqe->len > 0)
                memcpy(s->scratch, s->map + s->g.data_offset + (uint64_t) sqe->slot * s->g.slot_size, sqe->len);

        r = dsad_request_decode(sqe, s->scratch, sqe->len, s->g.n_slots, &req);
        if (r < 0)
                return complete_now(s, sqe, r == -ENOMEM ? -ENOMEM : -EINVAL);
        if (!dsad_model_loaded(s->model)) {
                dsad_request_free(req);
                return complete_now(s, sqe, -ENOENT);
        }
        if (req->op == DSA_RING_OP_NOP) {
                /* No work: answered here on the loop thread. Through the worker queue it cost two
                 * more wake-ups and ~13 us at p50 (tests/bench/dsad-bench.sh). */
                dsad_request_free(req);
                ring_push(s, sqe->user_data, sqe->slot, 0, NULL, 0, 0);
                __atomic_fetch_add(&s->d->requests_completed, 1, __ATOMIC_RELAXED);
                return;
        }
        req->session = dsad__session_ref(s);
        req->model = dsad_model_ref(s->model);
        req->reply_cap = s->g.slot_size;
        req->enqueue_usec = now_usec();
        req->uid = s->uid;

        atomic_fetch_add_explicit(&s->in_flight, 1, memory_order_seq_cst);
        r = s->d->scheduler ? dsad_scheduler_submit(s->d->scheduler, req) : -EBUSY;
        if (r < 0) {
                atomic_fetch_sub_explicit(&s->in_flight, 1, memory_order_seq_cst);
                dsad_request_free(req);
                complete_now(s, sqe, r == -EBUSY || r == -EDQUOT ? -EBUSY : -EIO);
        }
}

/* Whether another request may go in flight; on backpressure, marks the session stalled so the
 * completion that frees room rings the doorbell again. */
static bool has_room(struct dsad_session *s) {
        if (atomic_load_explicit(&s->in_flight, memory_order_seq_cst) < s->g.cq_entries)
                return true;
        atomic_store_explicit(&s->stalled, true, memory_order_seq_cst);
        if (atomic_load_explicit(&s->in_flight, memory_order_seq_cst) < s->g.cq_entries) {
                atomic_store_explicit(&s->stalled, false, memory_order_seq_cst);
                return true;
        }
        return false;
}

static void drain(struct dsad_session *s) {
        uint32_t head = s->sq_head;
        /* The one read of the client's index this pass. A tail that lies (more than a queue
         * ahead) is clamped: we never go round the queue more than once per doorbell. */
        uint32_t avail = load_acquire(&s->hdr->sq_tail) - head;

        avail = MIN(avail, s->g.sq_entries);
        for (uint32_t i = 0; i < avail; i++) {
                struct dsa_ring_sqe sqe;

                if (!has_room(s))
                        break;
                memcpy(&sqe, s->map + s->g.sq_offset + (uint64_t) (head & (s->g.sq_entries - 1)) * sizeof(sqe),
                       sizeof(sqe));
                head++;
                /* The entry is ours now: hand it back before its CQE can exist, so a client
                 * that sees the completion also sees room in the SQ (with one slot and one SQ
                 * entry it would otherwise find the queue full). */
                s->sq_head = head;
                store_release(&s->hdr->sq_head, head);
                handle_sqe(s, &sqe);
        }
}

void dsad_session_doorbell(struct dsad_session *s) {
        if (!s || dsad__session_closed(s))
                return;
        /* Clear first: a tail stored after our load below comes with a doorbell after this. */
        eventfd_clear(s->submit_fd);
        drain(s);
}

static void write_header(struct dsad_session *s) {
        struct dsa_ring_header h = {
                .magic = DSA_RING_MAGIC,
                .version = DSA_RING_VERSION,
                .sq_entries = s->g.sq_entries,
                .cq_entries = s->g.cq_entries,
                .n_slots = s->g.n_slots,
                .slot_size = s->g.slot_size,
                .sq_offset = s->g.sq_offset,
                .cq_offset = s->g.cq_offset,
                .data_offset = s->g.data_offset,
                .total_size = s->g.total_size,
        };

        memcpy(s->map, &h, sizeof(h)); /* before the client has the fd: no one else sees it */
}

int dsad__session_new(struct dsad *d, struct dsad_model *model, uint32_t slots, uint32_t slot_size,
                      struct dsad_session **ret) {
        struct dsad_session *s;
        struct ring_geometry g;
        int r;

        if (!d || !model || !ret) {
                if (model)
                        dsad_model_unref(model);
                return -EINVAL;
        }
        r = geometry_for(slots, slot_size, &g);
        if (r < 0) {
                dsad_model_unref(model);
                return r;
        }
        s = calloc(1, sizeof(*s));
        if (!s) {
                dsad_model_unref(model);
                return -ENOMEM;
        }
        atomic_init(&s->refs, 1);
        s->d = d;
        s->model = model;
        s->g = g;
        s->uid = (uint32_t) geteuid(); /* no peer: dsad's own, which [limits] leave alone */
        s->ring_fd = s->submit_fd = s->complete_fd = s->complete_wfd = -EBADF;
        pthread_mutex_init(&s->lock, NULL);

        s->ring_fd = memfd_create("dsa-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (s->ring_fd < 0)
                goto fail_errno;
        if (ftruncate(s->ring_fd, (off_t) g.total_size) < 0)
                goto fail_errno;
        s->map = mmap(NULL, g.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, s->ring_fd, 0);
        if (s->map == MAP_FAILED) {
                s->map = NULL;
                goto fail_errno;
        }
        s->hdr = (struct dsa_ring_header *) s->map;
        write_header(s);
        /* Sealed against growing and shrinking, so the mapping can never SIGBUS under us. */
        if (fcntl(s->ring_fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0)
                goto fail_errno;
        s->submit_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->submit_fd < 0)
                goto fail_errno;
        /* Two open file descriptions: the client shares the read end's, never the write end's,
         * so nothing it does to its fd can make our writes block. */
        int pipefd[2];
        if (pipe2(pipefd, O_NONBLOCK | O_CLOEXEC) < 0)
                goto fail_errno;
        s->complete_fd = pipefd[0];
        s->complete_wfd = pipefd[1];

        snprintf(s->id, sizeof(s->id), "%" PRIu64, ++d->next_session_id);
        if (d->uring) {
                r = dsad_uring_watch(d->uring, s->submit_fd, s);
                if (r < 0)
                        goto fail;
                s->watched = true;
        }
        s->next = d->sessions;
        d->sessions = s;
        d->n_sessions++;
        *ret = s;
        return 0;

fail_errno:
        r = -errno;
fail:
        session_destroy(s);
        return r;
}

static int on_peer_gone(sd_bus_track *t, void *userdata) {
        struct dsad_session *s = userdata;
        struct dsad *d = s->d;

        dsad_session_close(d, s);
        dsad_api_sessions_changed(d);
        return 0;
}

/* [limits] for one more session of uid with a ring of `bytes`: -EDQUOT with the reason when it
 * would pass sessions_per_uid or shm_bytes_per_uid. dsad's own uid has no limits. */
static int check_limits(struct dsad *d, uid_t uid, uint64_t bytes) {
        const struct dsad_limits *l = &d->config.limits;
        uint64_t total = bytes;
        unsigned n = 0;

        if (uid == geteuid())
                return 0;
        for (struct dsad_session *s = d->sessions; s; s = s->next)
                if (s->uid == (uint32_t) uid) {
                        n++;
                        total += s->g.total_size;
                }
        if (l->sessions_per_uid > 0 && n >= l->sessions_per_uid)
                return dsa__error(-EDQUOT, "uid %u has %u sessions open, the most sessions_per_uid allows",
                                  (unsigned) uid, n);
        if (l->shm_bytes_per_uid > 0 && total > l->shm_bytes_per_uid)
                return dsa__error(-EDQUOT,
                                  "uid %u's rings would take %llu bytes with this one (%llu), more than "
                                  "shm_bytes_per_uid (%llu)",
                                  (unsigned) uid, (unsigned long long) total, (unsigned long long) bytes,
                                  (unsigned long long) l->shm_bytes_per_uid);
        return 0;
}

int dsad_session_open(struct dsad *d, sd_bus_message *m, const char *model, uint32_t slots,
                      uint32_t slot_size, struct dsad_session **ret) {
        struct dsad_model *dm = NULL;
        struct dsad_session *s = NULL;
        struct ring_geometry g;
        const char *sender;
        uid_t uid;
        int r;

        if (!d || !m || !model || !ret)
                return -EINVAL;
        r = geometry_for(slots, slot_size, &g);
        if (r < 0)
                return r;
        sender = sd_bus_message_get_sender(m);
        if (!sender)
                return dsa__error(-EINVAL, "the call has no sender");
        r = dsad_sender_euid(m, &uid, NULL);
        if (r < 0)
                return r;
        r = check_limits(d, uid, g.total_size);
        if (r < 0)
                return r;

        r = dsad_registry_load(d, model, &dm);
        if (r < 0)
                return r;
        r = dsad__session_new(d, dm, slots, slot_size, &s); /* takes dm */
        if (r < 0)
                return r;
        s->uid = (uint32_t) uid;
        s->owner = strdup(sender);
        if (!s->owner) {
                r = -ENOMEM;
                goto fail;
        }
        r = sd_bus_track_new(sd_bus_message_get_bus(m), &s->track, on_peer_gone, s);
        if (r < 0)
                goto fail;
        r = sd_bus_track_add_sender(s->track, m);
        if (r < 0)
                goto fail;
        *ret = s;
        return 0;

fail:
        dsad_session_close(d, s);
        return r;
}

int dsad_session_close(struct dsad *d, struct dsad_session *s) {
        if (!d || !s)
                return -EINVAL;
        if (atomic_exchange_explicit(&s->closed, true, memory_order_acq_rel))
                return -EALREADY;
        /* Taking the lock once orders us after any ring_push that saw the session open. */
        pthread_mutex_lock(&s->lock);
        pthread_mutex_unlock(&s->lock);
        for (struct dsad_session **pp = &d->sessions; *pp; pp = &(*pp)->next)
                if (*pp == s) {
                        *pp = s->next;
                        d->n_sessions--;
                        break;
                }
        s->next = NULL;
        if (s->watched) {
                int r = dsad_uring_unwatch(d->uring, s->submit_fd, s);
                if (r < 0)
                        dsad_log_errno(LOG_WARNING, r, "Failed to stop watching session %s, ignoring: %m", s->id);
                s->watched = false;
        }
        s->track = sd_bus_track_unref(s->track);
        dsad__session_unref(s);
        return 0;
}

struct dsad_session *dsad_session_find(struct dsad *d, const char *id) {
        if (!d || !id)
                return NULL;
        for (struct dsad_session *s = d->sessions; s; s = s->next)
                if (strcmp(s->id, id) == 0)
                        return s;
        return NULL;
}

int dsad_session_fds(const struct dsad_session *s, int *ret_ring, int *ret_submit, int *ret_complete) {
        if (!s)
                return -EINVAL;
        if (ret_ring)
                *ret_ring = s->ring_fd;
        if (ret_submit)
                *ret_submit = s->submit_fd;
        if (ret_complete)
                *ret_complete = s->complete_fd;
        return 0;
}

const char *dsad_session_id(const struct dsad_session *s) {
        return s ? s->id : NULL;
}

const char *dsad_session_owner(const struct dsad_session *s) {
        return s && s->owner ? s->owner : "";
}

uint32_t dsad_session_uid(const struct dsad_session *s) {
        return s ? s->uid : UINT32_MAX;
}

void dsad_session_stats(const struct dsad_session *s, uint64_t *ret_completed, uint64_t *ret_failed,
                        uint64_t *ret_shm_bytes) {
        struct dsad_session *w = (struct dsad_session *) s;

        if (ret_completed)
                *ret_completed = s ? atomic_load_explicit(&w->completed, memory_order_relaxed) : 0;
        if (ret_failed)
                *ret_failed = s ? atomic_load_explicit(&w->failed, memory_order_relaxed) : 0;
        if (ret_shm_bytes)
                *ret_shm_bytes = s ? s->g.total_size : 0;
}

struct dsad_session *dsad_session_next(const struct dsad_session *s) {
        return s ? s->next : NULL;
}
