/* A session's ring, seen from libdsa: requests go into slots the session owns (one per request)
 * and the submission queue, completions are matched back to slots by slot number and request
 * id, and only our own copy of the geometry and of our own indices is trusted. Waits are on the
 * epoll fd the caller's main loop would watch: the completion pipe, the bus connection (dsad's
 * death), a timerfd (timeouts of asynchronous requests) and an eventfd of our own (wake-ups
 * libdsa gives itself: the pipe's write end is dsad's alone), so no wait can outlive dsad or
 * the session's timeout. */
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>

#include "session-internal.h"

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

uint32_t dsa__session_pop(struct dsa_session *s) {
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
                        sl->variant = cqe.variant;
                        /* A variant the model does not have: the request fails, the ring
                         * goes on. */
                        if (dsa__cqe_validate_variant(&cqe, s->n_variants) < 0) {
                                sl->status = -EPROTO;
                                sl->variant = 0;
                        }
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

void dsa__session_arm_timer(struct dsa_session *s) {
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
void dsa__session_process(struct dsa_session *s) {
        pipe_drain(s->complete_fd);
        fd_drain(s->wake_fd);
        fd_drain(s->timer_fd);
        session_reap(s);
        if (s->broken == 0)
                (void) dsa__client_process(s->client);
        session_expire(s);
}

int dsa__session_submit(struct dsa_session *s, uint32_t op, const char *const *texts, size_t n,
                        uint32_t flags, uint32_t pool, dsa_callback_t callback, void *userdata,
                        uint32_t *ret_slot, uint64_t *ret_id) {
        struct dsa_ring_sqe sqe;
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
        dsa__sqe_init(&sqe, sl->id, op, flags, idx, (uint32_t) len, pool, &s->hints);
        memcpy((uint8_t *) s->map + s->g.sq_offset +
                       (uint64_t) (s->sq_tail & (s->g.sq_entries - 1)) * sizeof(sqe),
               &sqe, sizeof(sqe));
        s->sq_tail++;
        __atomic_store_n(&s->hdr->sq_tail, s->sq_tail, __ATOMIC_RELEASE);
        fd_signal(s->submit_fd);

        s->next_slot = idx + 1;
        s->n_pending++;
        if (callback)
                dsa__session_arm_timer(s);
        *ret_slot = idx;
        *ret_id = sl->id;
        return 0;
}

/* Decodes the response in slot idx (a private copy of it) into res. */
static int slot_decode(struct dsa_session *s, uint32_t idx, struct dsa_result *res) {
        const struct slot *sl = &s->slots[idx];
        _cleanup_free_ uint8_t *buf = NULL;

        *res = (struct dsa_result) {
                .op = (enum dsa_op) sl->op,
                .n_texts = sl->n_texts,
                /* Checked against n_variants when the CQE came. */
                .variant = sl->variant ? s->variants[sl->variant - 1] : NULL,
        };
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
                                            res->variant, &res->classify);
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

void dsa__session_deliver(struct dsa_session *s, uint32_t idx, int override) {
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

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield" ::: "memory");
#else
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
#endif
}

/* Busy-polls the CQ tail until dsad publishes a CQE or spin_usec pass. Trade-off: a request
 * dsad answers at once (a NOP, answered inline on its loop thread) comes back without our
 * sleeping in epoll_wait and being woken through the pipe (two context switches, and on an
 * idle core a C-state exit: tens of us); the price is this CPU kept busy for at most
 * spin_usec per synchronous call when the answer takes longer. The clock (vDSO, no syscall) is
 * read only every 64 iterations. True when the tail moved. */
static bool cq_spin(struct dsa_session *s) {
        uint64_t end;

        if (s->spin_usec == 0 || s->ring_bad)
                return false;
        end = now_usec() + s->spin_usec;
        for (;;) {
                for (unsigned i = 0; i < 64; i++) {
                        if (__atomic_load_n(&s->hdr->cq_tail, __ATOMIC_ACQUIRE) != s->cq_head)
                                return true;
                        cpu_relax();
                }
                if (now_usec() >= end)
                        return false;
                /* The doorbell's wake-up may have queued dsad on this very CPU (wake-affine
                 * scheduling): spinning on would keep it from answering until the spin ends.
                 * Returns at once when nothing else is runnable here. */
                sched_yield();
        }
}

/* What a synchronous wait does instead of dsa__session_process(): one epoll_wait() on the
 * session's fd (timeout_ms: 0 for a look, -1 or more to sleep), then only the fds it reports
 * are drained (a NOP answered during the spin costs this epoll_wait and one read of the pipe;
 * the bus is processed only when its fd is readable), then the CQ is reaped and the timeouts
 * of asynchronous requests are checked. Nothing left ready stays unseen: the fds are level-
 * triggered, so the caller's main loop still wakes for them. */
static void session_wait_events(struct dsa_session *s, int timeout_ms) {
        struct epoll_event ev[4];
        bool bus = false;
        int n;

        n = epoll_wait(s->epoll_fd, ev, 4, timeout_ms);
        for (int i = 0; i < n; i++) {
                int fd = ev[i].data.fd;
                uint64_t v;

                if (fd == s->complete_fd)
                        pipe_drain(fd);
                else if (fd == s->wake_fd || fd == s->timer_fd)
                        /* Both O_NONBLOCK (session.c): at worst EAGAIN. */
                        (void) !read(fd, &v, sizeof(v));
                else if (fd == s->bus_fd && fd >= 0)
                        bus = true;
        }
        /* Messages sd-bus read already (while waiting for a method reply) leave its fd quiet:
         * a zero timeout says they are queued. No syscall. */
        if (!bus && s->bus_fd >= 0 && s->broken == 0) {
                uint64_t t;

                bus = sd_bus_get_timeout(s->client->bus, &t) > 0 && t == 0;
        }
        session_reap(s);
        if (bus && s->broken == 0)
                (void) dsa__client_process(s->client);
        session_expire(s);
}

int dsa__session_wait(struct dsa_session *s, uint32_t idx, struct dsa_result *res) {
        struct slot *sl = &s->slots[idx];
        bool spun = false;
        int r;

        for (;;) {
                uint64_t now;
                int timeout_ms;

                session_reap(s);
                if (sl->state != SLOT_DONE && !spun && s->broken == 0) {
                        /* Only once: a CQE for another slot (an asynchronous request) ends it. */
                        spun = true;
                        if (cq_spin(s))
                                session_reap(s);
                }
                if (sl->state == SLOT_DONE) {
                        /* Drains the pipe byte of this completion, if written yet, and looks at
                         * the other fds, without sleeping. */
                        session_wait_events(s, 0);
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
                session_wait_events(s, timeout_ms);
        }
        /* We drained fds: keep the caller's main loop awake for what it has to dispatch. */
        if (s->fifo_n > 0)
                fd_signal(s->wake_fd);
        return r;
}
