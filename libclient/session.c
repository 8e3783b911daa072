/* The ring half of libdsa: a session maps the memfd dsad sent, checks it, and from then on
 * trusts only its own copy of the geometry and of its own indices. Requests go into slots the
 * session owns (one per request), completions are matched back to slots by slot number and
 * request id. Synchronous calls wait on the same fd the caller's main loop would watch; an
 * epoll fd over the completion pipe, the bus connection (dsad's death), a timerfd (timeouts of
 * asynchronous requests) and an eventfd of our own (wake-ups libdsa gives itself: the pipe's
 * write end is dsad's alone), so no wait can outlive dsad or the session's timeout. */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>

#include "client.h"

#define DEFAULT_TIMEOUT_USEC (60ull * 1000 * 1000)
/* Header + 256 slots of 16 MiB capped at 256 MiB, plus queues: anything larger is not a ring. */
#define MAX_RING_BYTES (512ull << 20)

enum slot_state {
        SLOT_FREE,
        SLOT_PENDING, /* submitted, no CQE yet */
        SLOT_DONE,    /* CQE seen (status, len), result not yet delivered */
        SLOT_EXPIRED, /* failed locally (timeout, dsad gone), error not yet delivered */
        SLOT_ZOMBIE,  /* failure delivered, but dsad may still write the slot: wait for its CQE */
};

struct slot {
        enum slot_state state;
        bool reclaim;           /* EXPIRED, and its CQE came already: FREE after delivery */
        uint64_t id;
        uint32_t op, pool;
        size_t n_texts;
        uint64_t deadline;      /* CLOCK_MONOTONIC usec; UINT64_MAX: none */
        dsa_callback_t callback; /* NULL: a synchronous call waits for it */
        void *userdata;
        int32_t status;
        uint32_t len;
};

struct dsa_session {
        struct dsa_client *client; /* referenced */
        struct dsa_session *prev, *next;
        char *id, *model, *daemon; /* daemon: dsad's unique bus name when the session opened */
        char **labels;
        size_t n_labels;

        int ring_fd, submit_fd, complete_fd, timer_fd, epoll_fd, bus_fd, wake_fd;
        uint8_t *map;
        size_t map_size;
        struct dsa__ring_geometry g;
        struct dsa_ring_header *hdr; /* in shared memory: only the indices are touched */
        uint32_t sq_tail, cq_head;   /* ours; never read back */

        struct slot *slots;
        uint32_t *fifo;              /* slots awaiting delivery, completion order */
        uint32_t fifo_head, fifo_n;
        uint32_t next_slot;
        uint64_t next_id;
        uint64_t timeout_usec;
        int n_pending;

        int broken;                  /* < 0: dsad, the bus or the ring is gone for good */
        bool ring_bad;               /* dsad broke the ring protocol: stop reading it */
        unsigned dispatch_depth;
        bool free_pending, closing;
};

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static void fd_signal(int fd) {
        uint64_t one = 1;

        /* Only fails when the counter would overflow, that is when a wake-up is pending anyway. */
        (void) !write(fd, &one, sizeof(one));
}

static void fd_drain(int fd) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        uint64_t v;

        /* Read only what poll says is there: no read can block, whatever the fd's flags. */
        if (poll(&p, 1, 0) > 0 && (p.revents & POLLIN))
                (void) !read(fd, &v, sizeof(v));
}

/* Empties the completion pipe (O_NONBLOCK, set at open): dsad writes a byte per batch of
 * completions, so many may be waiting. Bounded, so a dsad that writes without end cannot keep
 * us here: what is left only makes the fd readable once more. */
static void pipe_drain(int fd) {
        uint8_t buf[256];

        for (int i = 0; i < 64; i++)
                if (read(fd, buf, sizeof(buf)) < (ssize_t) sizeof(buf))
                        break;
}

static void fifo_push(struct dsa_session *s, uint32_t idx) {
        s->fifo[(s->fifo_head + s->fifo_n) % s->g.n_slots] = idx;
        s->fifo_n++;
}

static uint32_t fifo_pop(struct dsa_session *s) {
        uint32_t idx = s->fifo[s->fifo_head];

        s->fifo_head = (s->fifo_head + 1) % s->g.n_slots;
        s->fifo_n--;
        return idx;
}

static void slot_expire(struct dsa_session *s, struct slot *sl, int error) {
        sl->state = SLOT_EXPIRED;
        sl->status = error;
        sl->reclaim = false;
        fifo_push(s, (uint32_t) (sl - s->slots));
}

void dsa__session_break(struct dsa_session *s, const char *owner, int error) {
        if (s->broken < 0)
                return;
        if (owner && (!s->daemon || strcmp(owner, s->daemon) != 0))
                return;
        s->broken = error;
        for (uint32_t i = 0; i < s->g.n_slots; i++)
                if (s->slots[i].state == SLOT_PENDING && s->slots[i].callback)
                        slot_expire(s, &s->slots[i], error);
        /* Nothing will come on the bus any more; a closed socket would keep the fd readable. */
        if (s->bus_fd >= 0)
                (void) epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, s->bus_fd, NULL);
        s->bus_fd = -EBADF;
        /* Wake the caller's main loop, whoever consumed the bus message. */
        fd_signal(s->wake_fd);
}

void dsa__sessions_break(struct dsa_client *c, const char *owner, int error) {
        for (struct dsa_session *s = c->sessions; s; s = s->next)
                dsa__session_break(s, owner, error);
}

/* Moves the CQEs dsad published into our slots. */
static void session_reap(struct dsa_session *s) {
        const struct dsa_ring_cqe *cq = (const struct dsa_ring_cqe *) (s->map + s->g.cq_offset);
        uint32_t tail, avail;

        if (s->ring_bad)
                return;
        tail = __atomic_load_n(&s->hdr->cq_tail, __ATOMIC_ACQUIRE);
        avail = tail - s->cq_head;
        if (avail > s->g.cq_entries) {
                s->ring_bad = true;
                dsa__session_break(s, NULL, -EPROTO);
                return;
        }
        for (uint32_t k = 0; k < avail; k++) {
                struct dsa_ring_cqe cqe;
                struct slot *sl;

                memcpy(&cqe, &cq[s->cq_head & (s->g.cq_entries - 1)], sizeof(cqe));
                s->cq_head++;
                /* A CQE we cannot attribute is dropped; its request then times out. */
                if (dsa__cqe_validate(&cqe, &s->g) < 0)
                        continue;
                sl = &s->slots[cqe.slot];
                if (cqe.user_data != sl->id)
                        continue;
                switch (sl->state) {
                case SLOT_PENDING:
                        sl->state = SLOT_DONE;
                        sl->status = cqe.status;
                        sl->len = cqe.len;
                        if (sl->callback)
                                fifo_push(s, cqe.slot);
                        break;
                case SLOT_ZOMBIE:
                        sl->state = SLOT_FREE;
                        break;
                case SLOT_EXPIRED:
                        sl->reclaim = true;
                        break;
                default:
                        break;
                }
        }
        __atomic_store_n(&s->hdr->cq_head, s->cq_head, __ATOMIC_RELEASE);
}

static void session_expire(struct dsa_session *s) {
        uint64_t now = now_usec();

        for (uint32_t i = 0; i < s->g.n_slots; i++) {
                struct slot *sl = &s->slots[i];

                if (sl->state == SLOT_PENDING && sl->callback && sl->deadline <= now)
                        slot_expire(s, sl, -ETIMEDOUT);
        }
}

static void session_arm_timer(struct dsa_session *s) {
        uint64_t next = UINT64_MAX;
        struct itimerspec its = {};

        for (uint32_t i = 0; i < s->g.n_slots; i++)
                if (s->slots[i].state == SLOT_PENDING && s->slots[i].callback &&
                    s->slots[i].deadline < next)
                        next = s->slots[i].deadline;
        if (next != UINT64_MAX) {
                its.it_value.tv_sec = (time_t) (next / 1000000u);
                its.it_value.tv_nsec = (long) (next % 1000000u) * 1000;
                if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
                        its.it_value.tv_nsec = 1; /* zero would disarm it */
        }
        (void) timerfd_settime(s->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Everything that can happen without blocking: completions first (dsad may have answered just
 * before dying), then bus messages (its death), then timeouts. */
static void session_process(struct dsa_session *s) {
        pipe_drain(s->complete_fd);
        fd_drain(s->wake_fd);
        fd_drain(s->timer_fd);
        session_reap(s);
        if (s->broken == 0)
                (void) dsa__client_process(s->client);
        session_expire(s);
}

static int session_submit(struct dsa_session *s, uint32_t op, const char *const *texts, size_t n,
                          uint32_t flags, uint32_t pool, dsa_callback_t callback, void *userdata,
                          uint32_t *ret_slot, uint64_t *ret_id) {
        struct dsa_ring_sqe sqe = {};
        struct slot *sl = NULL;
        uint32_t idx = 0, head, used;
        size_t len = 0;
        int r;

        if (s->closing || s->free_pending)
                return -ECANCELED;
        if (s->broken < 0)
                return s->broken;

        for (uint32_t k = 0; k < s->g.n_slots; k++) {
                idx = (s->next_slot + k) % s->g.n_slots;
                if (s->slots[idx].state == SLOT_FREE) {
                        sl = &s->slots[idx];
                        break;
                }
        }
        if (!sl)
                return -EAGAIN;

        head = __atomic_load_n(&s->hdr->sq_head, __ATOMIC_ACQUIRE);
        used = s->sq_tail - head;
        if (used > s->g.sq_entries) {
                s->ring_bad = true;
                dsa__session_break(s, NULL, -EPROTO);
                return -EPROTO;
        }
        if (used == s->g.sq_entries)
                return -EAGAIN;

        if (op != DSA_RING_OP_NOP) {
                r = dsa__request_encode(s->map + s->g.data_offset + (uint64_t) idx * s->g.slot_size,
                                        s->g.slot_size, texts, n, &len);
                if (r < 0)
                        return r;
        }

        *sl = (struct slot) {
                .state = SLOT_PENDING,
                .id = ++s->next_id,
                .op = op,
                .pool = pool,
                .n_texts = n,
                .deadline = s->timeout_usec ? now_usec() + s->timeout_usec : UINT64_MAX,
                .callback = callback,
                .userdata = userdata,
        };
        sqe = (struct dsa_ring_sqe) {
                .user_data = sl->id,
                .op = op,
                .flags = flags,
                .slot = idx,
                .len = (uint32_t) len,
                .pool = pool,
        };
        memcpy((uint8_t *) s->map + s->g.sq_offset +
                       (uint64_t) (s->sq_tail & (s->g.sq_entries - 1)) * sizeof(sqe),
               &sqe, sizeof(sqe));
        s->sq_tail++;
        __atomic_store_n(&s->hdr->sq_tail, s->sq_tail, __ATOMIC_RELEASE);
        fd_signal(s->submit_fd);

        s->next_slot = idx + 1;
        s->n_pending++;
        if (callback)
                session_arm_timer(s);
        *ret_slot = idx;
        *ret_id = sl->id;
        return 0;
}

/* Decodes the response in slot idx (a private copy of it) into res. */
static int slot_decode(struct dsa_session *s, uint32_t idx, struct dsa_result *res) {
        const struct slot *sl = &s->slots[idx];
        _cleanup_free_ uint8_t *buf = NULL;

        *res = (struct dsa_result) { .op = (enum dsa_op) sl->op, .n_texts = sl->n_texts };
        if (sl->op == DSA_RING_OP_NOP)
                return sl->len == 0 ? 0 : -EPROTO;
        /* Copied out first: dsad could rewrite the slot while we decode. len <= slot_size was
         * checked with the CQE. */
        buf = malloc(sl->len ? sl->len : 1);
        if (!buf)
                return -ENOMEM;
        memcpy(buf, s->map + s->g.data_offset + (uint64_t) idx * s->g.slot_size, sl->len);
        switch (sl->op) {
        case DSA_RING_OP_CLASSIFY:
                return dsa__classify_decode(buf, sl->len, sl->n_texts,
                                            (const char *const *) s->labels, s->n_labels,
                                            &res->classify);
        case DSA_RING_OP_EMBED:
                if (sl->pool == DSA_RING_POOL_NONE) {
                        int r = dsa__embed_tokens_decode(buf, sl->len, sl->n_texts, &res->token_embeddings);
                        if (r >= 0)
                                res->dim = res->token_embeddings[0].dim;
                        return r;
                }
                return dsa__embed_decode(buf, sl->len, sl->n_texts, &res->embeddings, &res->dim);
        case DSA_RING_OP_TOKENIZE:
                return dsa__tokenize_decode(buf, sl->len, sl->n_texts, &res->tokens);
        }
        return -EPROTO;
}

static void result_clear(struct dsa_result *res) {
        dsa_classify_result_free(res->classify);
        free(res->embeddings);
        dsa_token_embeddings_free(res->token_embeddings);
        dsa_tokens_free(res->tokens);
        *res = (struct dsa_result) {};
}

/* Takes the outcome of a DONE or EXPIRED slot and releases the slot as far as dsad allows. */
static int slot_finish(struct dsa_session *s, uint32_t idx, struct dsa_result *res) {
        struct slot *sl = &s->slots[idx];
        int r;

        *res = (struct dsa_result) {};
        if (sl->state == SLOT_DONE) {
                r = sl->status;
                if (r == 0)
                        r = slot_decode(s, idx, res);
                if (r < 0)
                        result_clear(res);
                sl->state = SLOT_FREE;
        } else {
                r = sl->status;
                sl->state = sl->reclaim ? SLOT_FREE : SLOT_ZOMBIE;
        }
        s->n_pending--;
        return r;
}

static void slot_deliver(struct dsa_session *s, uint32_t idx, int override) {
        struct slot *sl = &s->slots[idx];
        dsa_callback_t cb = sl->callback;
        void *userdata = sl->userdata;
        uint64_t id = sl->id;
        struct dsa_result res;
        int r;

        r = slot_finish(s, idx, &res);
        if (override < 0) {
                result_clear(&res);
                r = override;
        }
        cb(s, id, r, r < 0 ? NULL : &res, userdata);
        result_clear(&res);
}

/* Waits for synchronous request (idx, id), bounded by its deadline and by dsad's life. */
static int session_wait(struct dsa_session *s, uint32_t idx, struct dsa_result *res) {
        struct slot *sl = &s->slots[idx];
        int r;

        for (;;) {
                uint64_t now;
                int timeout_ms;

                session_process(s);
                if (sl->state == SLOT_DONE) {
                        r = slot_finish(s, idx, res);
                        break;
                }
                now = now_usec();
                if (s->broken < 0 || now >= sl->deadline) {
                        r = s->broken < 0 ? s->broken : -ETIMEDOUT;
                        sl->state = SLOT_ZOMBIE;
                        s->n_pending--;
                        break;
                }
                if (sl->deadline == UINT64_MAX)
                        timeout_ms = -1;
                else
                        timeout_ms = (int) ((sl->deadline - now + 999) / 1000 > INT_MAX
                                                    ? INT_MAX
                                                    : (sl->deadline - now + 999) / 1000);
                (void) poll(&(struct pollfd) { .fd = s->epoll_fd, .events = POLLIN }, 1, timeout_ms);
        }
        /* We drained the fds: keep the caller's main loop awake for what it has to dispatch. */
        if (s->fifo_n > 0)
                fd_signal(s->wake_fd);
        return r;
}

static int session_call(struct dsa_session *s, uint32_t op, const char *const *texts, size_t n,
                        uint32_t flags, uint32_t pool, struct dsa_result *res) {
        uint32_t idx;
        uint64_t id;
        int r;

        r = session_submit(s, op, texts, n, flags, pool, NULL, NULL, &idx, &id);
        if (r < 0)
                return r;
        return session_wait(s, idx, res);
}

DSA_EXPORT int dsa_classify(struct dsa_session *s, const char *const *texts, size_t n,
                            struct dsa_classify_result **ret) {
        struct dsa_result res;
        int r;

        if (!s || !texts || !ret)
                return -EINVAL;
        r = session_call(s, DSA_RING_OP_CLASSIFY, texts, n, 0, 0, &res);
        if (r < 0)
                return r;
        *ret = DSA__TAKE_PTR(res.classify);
        return 0;
}

DSA_EXPORT int dsa_embed(struct dsa_session *s, const char *const *texts, size_t n,
                         enum dsa_pool pool, float **ret, size_t *ret_dim) {
        struct dsa_result res;
        int r;

        if (!s || !texts || !ret || !ret_dim || (unsigned) pool > DSA_POOL_POOLER)
                return -EINVAL;
        r = session_call(s, DSA_RING_OP_EMBED, texts, n, 0, (uint32_t) pool, &res);
        if (r < 0)
                return r;
        *ret = DSA__TAKE_PTR(res.embeddings);
        *ret_dim = res.dim;
        return 0;
}

DSA_EXPORT int dsa_embed_tokens(struct dsa_session *s, const char *const *texts, size_t n,
                                struct dsa_token_embeddings **ret) {
        struct dsa_result res;
        int r;

        if (!s || !texts || !ret)
                return -EINVAL;
        r = session_call(s, DSA_RING_OP_EMBED, texts, n, 0, DSA_RING_POOL_NONE, &res);
        if (r < 0)
                return r;
        *ret = DSA__TAKE_PTR(res.token_embeddings);
        return 0;
}

DSA_EXPORT int dsa_tokenize(struct dsa_session *s, const char *const *texts, size_t n,
                            unsigned flags, struct dsa_tokens **ret) {
        struct dsa_result res;
        int r;

        if (!s || !texts || !ret || (flags & ~(unsigned) DSA_TOKENIZE_NO_SPECIAL))
                return -EINVAL;
        r = session_call(s, DSA_RING_OP_TOKENIZE, texts, n,
                         flags & DSA_TOKENIZE_NO_SPECIAL ? DSA_RING_SQE_NO_SPECIAL : 0, 0, &res);
        if (r < 0)
                return r;
        *ret = DSA__TAKE_PTR(res.tokens);
        return 0;
}

DSA_EXPORT int dsa_nop(struct dsa_session *s) {
        struct dsa_result res;

        if (!s)
                return -EINVAL;
        return session_call(s, DSA_RING_OP_NOP, NULL, 0, 0, 0, &res);
}

static int submit_async(struct dsa_session *s, uint32_t op, const char *const *texts, size_t n,
                        uint32_t flags, uint32_t pool, dsa_callback_t callback, void *userdata,
                        uint64_t *ret_id) {
        uint32_t idx;
        uint64_t id;
        int r;

        if (!s || !callback || (op != DSA_RING_OP_NOP && !texts))
                return -EINVAL;
        r = session_submit(s, op, texts, n, flags, pool, callback, userdata, &idx, &id);
        if (r < 0)
                return r;
        if (ret_id)
                *ret_id = id;
        return 0;
}

DSA_EXPORT int dsa_session_submit_classify(struct dsa_session *s, const char *const *texts,
                                           size_t n, dsa_callback_t callback, void *userdata,
                                           uint64_t *ret_id) {
        return submit_async(s, DSA_RING_OP_CLASSIFY, texts, n, 0, 0, callback, userdata, ret_id);
}

DSA_EXPORT int dsa_session_submit_embed(struct dsa_session *s, const char *const *texts,
                                        size_t n, enum dsa_pool pool, dsa_callback_t callback,
                                        void *userdata, uint64_t *ret_id) {
        if ((unsigned) pool > DSA_POOL_POOLER)
                return -EINVAL;
        return submit_async(s, DSA_RING_OP_EMBED, texts, n, 0, (uint32_t) pool, callback,
                            userdata, ret_id);
}

DSA_EXPORT int dsa_session_submit_embed_tokens(struct dsa_session *s, const char *const *texts,
                                               size_t n, dsa_callback_t callback, void *userdata,
                                               uint64_t *ret_id) {
        return submit_async(s, DSA_RING_OP_EMBED, texts, n, 0, DSA_RING_POOL_NONE, callback,
                            userdata, ret_id);
}

DSA_EXPORT int dsa_session_submit_tokenize(struct dsa_session *s, const char *const *texts,
                                           size_t n, unsigned flags, dsa_callback_t callback,
                                           void *userdata, uint64_t *ret_id) {
        if (flags & ~(unsigned) DSA_TOKENIZE_NO_SPECIAL)
                return -EINVAL;
        return submit_async(s, DSA_RING_OP_TOKENIZE, texts, n,
                            flags & DSA_TOKENIZE_NO_SPECIAL ? DSA_RING_SQE_NO_SPECIAL : 0, 0,
                            callback, userdata, ret_id);
}

DSA_EXPORT int dsa_session_submit_nop(struct dsa_session *s, dsa_callback_t callback,
                                      void *userdata, uint64_t *ret_id) {
        return submit_async(s, DSA_RING_OP_NOP, NULL, 0, 0, 0, callback, userdata, ret_id);
}

DSA_EXPORT int dsa_session_get_fd(const struct dsa_session *s) {
        return s ? s->epoll_fd : -EINVAL;
}

DSA_EXPORT int dsa_session_get_n_pending(const struct dsa_session *s) {
        return s ? s->n_pending : -EINVAL;
}

DSA_EXPORT int dsa_session_set_timeout(struct dsa_session *s, uint64_t usec) {
        if (!s)
                return -EINVAL;
        s->timeout_usec = usec;
        return 0;
}

DSA_EXPORT const char *dsa_session_get_id(const struct dsa_session *s) {
        return s ? s->id : NULL;
}

DSA_EXPORT int dsa_session_get_labels(const struct dsa_session *s, const char *const **ret_labels) {
        if (!s || !ret_labels)
                return -EINVAL;
        *ret_labels = (const char *const *) s->labels;
        return (int) s->n_labels;
}

static void session_destroy(struct dsa_session *s);

DSA_EXPORT int dsa_session_dispatch(struct dsa_session *s) {
        int n = 0;

        if (!s)
                return -EINVAL;
        if (s->closing || s->free_pending)
                return 0;
        session_process(s);
        s->dispatch_depth++;
        while (s->fifo_n > 0 && !s->free_pending) {
                slot_deliver(s, fifo_pop(s), 0);
                n++;
        }
        s->dispatch_depth--;
        if (s->free_pending) {
                if (s->dispatch_depth == 0)
                        session_destroy(s);
                return n;
        }
        session_arm_timer(s);
        return n;
}

static void strv_free(char **l) {
        if (l)
                for (char **p = l; *p; p++)
                        free(*p);
        free(l);
}

static void session_destroy(struct dsa_session *s) {
        s->closing = true;
        s->dispatch_depth++; /* a dsa_session_free() from a callback below is a no-op */
        /* Every asynchronous request not yet delivered hears -ECANCELED, once. */
        while (s->fifo_n > 0) {
                uint32_t idx = fifo_pop(s);
                if (s->slots[idx].state == SLOT_DONE || s->slots[idx].state == SLOT_EXPIRED)
                        slot_deliver(s, idx, -ECANCELED);
        }
        for (uint32_t i = 0; s->slots && i < s->g.n_slots; i++)
                if (s->slots[i].state == SLOT_PENDING && s->slots[i].callback) {
                        s->slots[i].state = SLOT_EXPIRED;
                        s->slots[i].status = -ECANCELED;
                        slot_deliver(s, i, -ECANCELED);
                }

        if (s->id && s->broken == 0 && s->client->bus_error == 0) {
                sd_bus_message *m = NULL;

                /* Best effort and without waiting for the reply: dsad also closes the session
                 * when our connection goes. */
                if (sd_bus_message_new_method_call(s->client->bus, &m, DSA__BUS_NAME, DSA__BUS_PATH,
                                                   DSA__BUS_IFACE, "CloseSession") >= 0 &&
                    sd_bus_message_append(m, "s", s->id) >= 0 &&
                    sd_bus_message_set_expect_reply(m, 0) >= 0 && sd_bus_send(s->client->bus, m, NULL) >= 0)
                        (void) sd_bus_flush(s->client->bus);
                sd_bus_message_unref(m);
        }

        if (s->prev)
                s->prev->next = s->next;
        else if (s->client->sessions == s)
                s->client->sessions = s->next;
        if (s->next)
                s->next->prev = s->prev;

        if (s->map)
                munmap(s->map, s->map_size);
        /* bus_fd is the client's. */
        for (int *const *fd = (int *const[]) { &s->ring_fd, &s->submit_fd, &s->complete_fd,
                                               &s->timer_fd, &s->epoll_fd, &s->wake_fd, NULL };
             *fd; fd++)
                if (**fd >= 0)
                        close(**fd);
        free(s->slots);
        free(s->fifo);
        free(s->id);
        free(s->model);
        free(s->daemon);
        strv_free(s->labels);
        dsa__client_unref(s->client);
        free(s);
}

DSA_EXPORT struct dsa_session *dsa_session_free(struct dsa_session *s) {
        if (!s)
                return NULL;
        if (s->dispatch_depth > 0) {
                s->free_pending = true;
                return NULL;
        }
        session_destroy(s);
        return NULL;
}

/* The model's label names, for classify results. Not fatal: a model without them (or a dsad
 * that does not say) gives results with label NULL. */
static void session_fetch_labels(struct dsa_session *s) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *path = NULL;
        char **l = NULL;
        size_t n = 0;

        if (sd_bus_path_encode(DSA__MODEL_PATH, s->model, &path) < 0)
                return;
        if (sd_bus_get_property_strv(s->client->bus, DSA__BUS_NAME, path, DSA__MODEL_IFACE,
                                     "Labels", &e, &l) < 0) {
                sd_bus_error_free(&e);
                (void) dsa__client_process(s->client);
                return;
        }
        (void) dsa__client_process(s->client);
        while (l && l[n])
                n++;
        if (n > DSA__MAX_LABELS) {
                strv_free(l);
                return;
        }
        s->labels = l;
        s->n_labels = n;
}

static int session_map(struct dsa_session *s, uint32_t want_slots, uint32_t want_slot_size) {
        struct dsa_ring_header h;
        const char *reason = NULL;
        struct stat st;
        uint32_t sq_head, cq_tail;
        int seals, r;

        if (fstat(s->ring_fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || st.st_size < (off_t) DSA_RING_HEADER_SIZE ||
            (uint64_t) st.st_size > MAX_RING_BYTES)
                return dsa__client_fail_reason(s->client, -EPROTO,
                                               "dsad sent a ring that is not a memfd of a plausible size");
        seals = fcntl(s->ring_fd, F_GET_SEALS);
        if (seals < 0)
                seals = 0;
        s->map_size = (size_t) st.st_size;
        s->map = mmap(NULL, s->map_size, PROT_READ | PROT_WRITE, MAP_SHARED, s->ring_fd, 0);
        if (s->map == MAP_FAILED) {
                s->map = NULL;
                return -errno;
        }
        /* Geometry read once into a private copy, checked, and never read again. */
        memcpy(&h, s->map, sizeof(h));
        r = dsa__ring_validate(&h, (uint64_t) st.st_size, seals, want_slots, want_slot_size,
                               &s->g, &reason);
        if (r < 0)
                return dsa__client_fail_reason(s->client, r, "dsad sent a bad ring: %s", reason);
        s->hdr = (struct dsa_ring_header *) s->map;

        /* A fresh ring is empty; we adopt its indices once. */
        s->sq_tail = __atomic_load_n(&s->hdr->sq_tail, __ATOMIC_ACQUIRE);
        sq_head = __atomic_load_n(&s->hdr->sq_head, __ATOMIC_ACQUIRE);
        s->cq_head = __atomic_load_n(&s->hdr->cq_head, __ATOMIC_ACQUIRE);
        cq_tail = __atomic_load_n(&s->hdr->cq_tail, __ATOMIC_ACQUIRE);
        if (s->sq_tail != sq_head || s->cq_head != cq_tail)
                return dsa__client_fail_reason(s->client, -EPROTO, "dsad sent a ring that is not empty");
        return 0;
}

static int session_setup_fds(struct dsa_session *s) {
        struct epoll_event ev = { .events = EPOLLIN };

        struct stat st;
        int fl;

        /* The completion doorbell must be the read end of a pipe: what dsad gives is checked
         * like the ring, and made non-blocking (a description only dsad's unused copy
         * shares). */
        if (fstat(s->complete_fd, &st) < 0)
                return -errno;
        fl = fcntl(s->complete_fd, F_GETFL);
        if (!S_ISFIFO(st.st_mode) || fl < 0 || (fl & O_ACCMODE) != O_RDONLY)
                return dsa__client_fail_reason(s->client, -EPROTO,
                                               "dsad sent a completion fd that is not a pipe's read end");
        if (!(fl & O_NONBLOCK) && fcntl(s->complete_fd, F_SETFL, fl | O_NONBLOCK) < 0)
                return -errno;
        s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->wake_fd < 0)
                return -errno;
        s->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (s->timer_fd < 0)
                return -errno;
        s->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        if (s->epoll_fd < 0)
                return -errno;
        if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->complete_fd, &ev) < 0 ||
            epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->timer_fd, &ev) < 0 ||
            epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->wake_fd, &ev) < 0)
                return -errno;
        s->bus_fd = sd_bus_get_fd(s->client->bus);
        if (s->bus_fd >= 0 && epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->bus_fd, &ev) < 0)
                return -errno;
        return 0;
}

DSA_EXPORT int dsa_session_open(struct dsa_client *c, const char *model, uint32_t n_slots,
                                uint32_t slot_size, struct dsa_session **ret) {
        sd_bus_message *reply = NULL;
        struct dsa_session *s = NULL;
        int fds[3], r;
        const char *id, *sender;

        if (!c || !model || !model[0] || !ret || n_slots > DSA__MAX_SLOTS ||
            slot_size > DSA__MAX_SLOT_SIZE)
                return -EINVAL;

        r = dsa__client_call(c, "OpenSession", &reply, "suu", model, n_slots, slot_size);
        if (r < 0)
                return r;

        s = calloc(1, sizeof(*s));
        if (!s) {
                r = -ENOMEM;
                goto fail;
        }
        s->ring_fd = s->submit_fd = s->complete_fd = s->timer_fd = s->epoll_fd = s->bus_fd = s->wake_fd = -EBADF;
        s->timeout_usec = DEFAULT_TIMEOUT_USEC;
        s->client = dsa__client_ref(c);

        r = sd_bus_message_read(reply, "hhhs", &fds[0], &fds[1], &fds[2], &id);
        if (r < 0)
                goto fail;
        s->id = strdup(id);
        if (!s->id) {
                r = -ENOMEM;
                goto fail;
        }
        /* The message owns its fds: keep duplicates of our own. */
        int *const ours[3] = { &s->ring_fd, &s->submit_fd, &s->complete_fd };
        for (int i = 0; i < 3; i++) {
                *ours[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
                if (*ours[i] < 0) {
                        r = -errno;
                        goto fail;
                }
        }
        sender = sd_bus_message_get_sender(reply);
        s->model = strdup(model);
        s->daemon = sender ? strdup(sender) : NULL;
        if (!s->model || (sender && !s->daemon)) {
                r = -ENOMEM;
                goto fail;
        }

        r = session_map(s, n_slots, slot_size);
        if (r < 0)
                goto fail;
        s->slots = calloc(s->g.n_slots, sizeof(*s->slots));
        s->fifo = calloc(s->g.n_slots, sizeof(*s->fifo));
        if (!s->slots || !s->fifo) {
                r = -ENOMEM;
                goto fail;
        }
        r = session_setup_fds(s);
        if (r < 0)
                goto fail;
        session_fetch_labels(s);

        s->next = c->sessions;
        if (c->sessions)
                c->sessions->prev = s;
        c->sessions = s;
        sd_bus_message_unref(reply);
        dsa__client_clear_error(c);
        *ret = s;
        return 0;
fail:
        sd_bus_message_unref(reply);
        if (s) {
                /* dsad made the session: tell it (session_destroy sends CloseSession), but keep
                 * the reason of the failure. */
                char *msg = DSA__TAKE_PTR(c->error_message);
                session_destroy(s);
                free(c->error_message);
                c->error_message = msg;
        }
        return r;
}

DSA_EXPORT struct dsa_classify_result *dsa_classify_result_free(struct dsa_classify_result *r) {
        free(r);
        return NULL;
}

DSA_EXPORT struct dsa_tokens *dsa_tokens_free(struct dsa_tokens *t) {
        free(t);
        return NULL;
}

DSA_EXPORT struct dsa_token_embeddings *dsa_token_embeddings_free(struct dsa_token_embeddings *e) {
        free(e);
        return NULL;
}
