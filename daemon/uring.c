/* Doorbells: one io_uring holds a multishot POLLIN on every session's submit eventfd; its CQEs
 * signal an eventfd registered with the ring, which libuv watches, so a burst of doorbells over
 * many sessions costs the loop one wake-up and one pass over the CQ. Each poll's user_data is a
 * small watch record; unwatching marks it dead and cancels the poll, and the record is freed only
 * when the poll's last CQE (the one without IORING_CQE_F_MORE) has been seen, so a CQE still in
 * flight never reaches a closed session. The ring is locked to the two operations it needs
 * (poll add and poll remove; no registrations) before it is enabled, because io_uring operations
 * pass by seccomp and the unit's address-family rules. Where io_uring is unavailable (seccomp,
 * old kernels) each session gets a plain uv_poll instead. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <syslog.h>
#include <unistd.h>

/* daemon.h (basic/macro.h) first: liburing pulls in <sys/param.h>, whose MIN/MAX yield to ours. */
#include "daemon.h"

#include <liburing.h>

#define URING_ENTRIES 256u
#define UDATA_REMOVE 0u /* user_data of our poll-remove SQEs: their CQEs carry nothing */

struct watch {
        struct dsad_uring *u;
        struct dsad_session *s; /* NULL once dead */
        int fd;
        bool armed;             /* a poll is in the kernel (io_uring mode) */
        uv_poll_t poll;         /* fallback mode */
        struct watch *next;
};

struct dsad_uring {
        struct dsad *d;
        bool have_ring;
        struct io_uring ring;
        int efd;            /* registered with the ring: CQEs posted */
        uv_poll_t efd_poll;
        bool efd_polling;
        struct watch *watches; /* live and dead-but-armed */
};

static void unlink_watch(struct dsad_uring *u, struct watch *w) {
        for (struct watch **pp = &u->watches; *pp; pp = &(*pp)->next)
                if (*pp == w) {
                        *pp = w->next;
                        return;
                }
}

static struct io_uring_sqe *get_sqe(struct dsad_uring *u) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

        if (!sqe) {
                io_uring_submit(&u->ring);
                sqe = io_uring_get_sqe(&u->ring);
        }
        return sqe;
}

static int arm(struct dsad_uring *u, struct watch *w) {
        struct io_uring_sqe *sqe = get_sqe(u);

        if (!sqe)
                return -EBUSY;
        io_uring_prep_poll_multishot(sqe, w->fd, POLLIN);
        io_uring_sqe_set_data(sqe, w);
        w->armed = true;
        return 0;
}

static void handle_cqe(struct dsad_uring *u, const struct io_uring_cqe *cqe) {
        struct watch *w = io_uring_cqe_get_data(cqe);
        bool more = cqe->flags & IORING_CQE_F_MORE;

        if (!w)
                return; /* a poll-remove's own completion */
        if (!more)
                w->armed = false;
        if (!w->s) {
                if (!w->armed) {
                        unlink_watch(u, w);
                        free(w);
                }
                return;
        }
        if (cqe->res < 0) {
                /* A failed poll (not a termination) would likely fail again if re-armed, in a
                 * loop; the session is left without a doorbell and says so. */
                if (!more)
                        dsad_log_errno(LOG_WARNING, cqe->res, "Doorbell poll on fd %d failed, ignoring: %m", w->fd);
                return;
        }
        dsad_session_doorbell(w->s);
        /* Multishot polls end on their own (CQ overflow, kernel resource limits): re-arm. */
        if (!more && w->s && arm(u, w) < 0)
                dsad_log(LOG_WARNING, "Cannot re-arm doorbell poll on fd %d, ignoring.", w->fd);
}

static void drain_cq(struct dsad_uring *u) {
        for (int rounds = 0; rounds < 16; rounds++) {
                struct io_uring_cqe *cqe;
                unsigned head, n = 0;

                io_uring_for_each_cqe(&u->ring, head, cqe) {
                        handle_cqe(u, cqe);
                        n++;
                }
                io_uring_cq_advance(&u->ring, n);
                /* Re-arms queued above go in now; CQEs that overflowed come back into the ring. */
                io_uring_submit(&u->ring);
                if (io_uring_cq_has_overflow(&u->ring))
                        io_uring_get_events(&u->ring);
                if (n == 0 && io_uring_cq_ready(&u->ring) == 0)
                        break;
        }
}

static void on_efd(uv_poll_t *p, int status, int events) {
        struct dsad_uring *u = p->data;
        uint64_t v;

        (void) !read(u->efd, &v, sizeof(v)); /* ours alone, non-blocking */
        drain_cq(u);
}

static void on_fallback_poll(uv_poll_t *p, int status, int events) {
        struct watch *w = p->data;

        if (w->s)
                dsad_session_doorbell(w->s);
}

/* Only poll add and poll remove, no SQE flags, no registrations from here on; then enabled. */
static int restrict_ring(struct io_uring *ring) {
        struct io_uring_restriction res[2] = {
                { .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_POLL_ADD },
                { .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_POLL_REMOVE },
        };

        /* Raw io_uring_register(): Debian 12's liburing 2.3 declares the wrappers but does not
         * export them. */
        if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_RESTRICTIONS, res, ELEMENTSOF(res)) < 0)
                return -errno;
        if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
                return -errno;
        return 0;
}

int dsad_uring_new(struct dsad *d, struct dsad_uring **ret) {
        struct dsad_uring *u;
        int r;

        if (!d || !d->loop || !ret)
                return -EINVAL;
        u = calloc(1, sizeof(*u));
        if (!u)
                return -ENOMEM;
        u->d = d;
        u->efd = -EBADF;

        /* Kernels before 5.10 know no R_DISABLED (so no restrictions): both fail, epoll it is. */
        r = io_uring_queue_init(URING_ENTRIES, &u->ring,
                                IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_R_DISABLED);
        if (r == -EINVAL) /* kernels before 6.0 do not know the first two flags */
                r = io_uring_queue_init(URING_ENTRIES, &u->ring, IORING_SETUP_R_DISABLED);
        if (r < 0) {
                dsad_log_errno(LOG_WARNING, r, "io_uring unavailable (%m), falling back to epoll");
                *ret = u;
                return 0;
        }
        u->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (u->efd < 0) {
                r = -errno;
                io_uring_queue_exit(&u->ring);
                goto fail;
        }
        r = io_uring_register_eventfd(&u->ring, u->efd);
        if (r >= 0)
                r = restrict_ring(&u->ring);
        if (r < 0) {
                /* A ring we cannot lock down is not worth its risk: epoll does the same job. */
                dsad_log_errno(LOG_WARNING, r, "Cannot restrict io_uring (%m), falling back to epoll");
                io_uring_queue_exit(&u->ring);
                close(u->efd);
                u->efd = -EBADF;
                *ret = u;
                return 0;
        }
        u->have_ring = true;
        r = uv_poll_init(d->loop, &u->efd_poll, u->efd);
        if (r < 0) {
                r = -EIO;
                goto fail;
        }
        u->efd_poll.data = u;
        u->efd_polling = true;
        r = uv_poll_start(&u->efd_poll, UV_READABLE, on_efd);
        if (r < 0) {
                r = -EIO;
                goto fail;
        }
        *ret = u;
        return 0;

fail:
        dsad_uring_free(u);
        return r;
}

static void on_closed_free(uv_handle_t *h) {
        free(h->data);
}

static void on_efd_closed(uv_handle_t *h) {
        struct dsad_uring *u = h->data;

        close(u->efd);
        free(u);
}

struct dsad_uring *dsad_uring_free(struct dsad_uring *u) {
        if (!u)
                return NULL;
        if (u->have_ring) {
                /* Exiting the ring cancels every poll; the records go with it. */
                io_uring_queue_exit(&u->ring);
                while (u->watches) {
                        struct watch *w = u->watches;
                        u->watches = w->next;
                        free(w);
                }
        } else {
                while (u->watches) {
                        struct watch *w = u->watches;
                        u->watches = w->next;
                        w->poll.data = w;
                        uv_close((uv_handle_t *) &w->poll, on_closed_free);
                }
        }
        if (u->efd_polling) {
                /* The handle lives in u: free both once libuv is done with it. */
                u->efd_poll.data = u;
                uv_close((uv_handle_t *) &u->efd_poll, on_efd_closed);
                return NULL;
        }
        if (u->efd >= 0)
                close(u->efd);
        free(u);
        return NULL;
}

int dsad_uring_watch(struct dsad_uring *u, int fd, struct dsad_session *s) {
        struct watch *w;
        int r;

        if (!u || fd < 0 || !s)
                return -EINVAL;
        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->u = u;
        w->s = s;
        w->fd = fd;
        if (u->have_ring) {
                r = arm(u, w);
                if (r >= 0)
                        r = io_uring_submit(&u->ring);
                if (r < 0) {
                        free(w);
                        return r;
                }
        } else {
                r = uv_poll_init(u->d->loop, &w->poll, fd);
                if (r >= 0) {
                        w->poll.data = w;
                        r = uv_poll_start(&w->poll, UV_READABLE, on_fallback_poll);
                        if (r < 0) {
                                uv_close((uv_handle_t *) &w->poll, on_closed_free);
                                return -EIO;
                        }
                }
                if (r < 0) {
                        free(w);
                        return -EIO;
                }
        }
        w->next = u->watches;
        u->watches = w;
        return 0;
}

int dsad_uring_unwatch(struct dsad_uring *u, int fd, struct dsad_session *s) {
        struct watch *w = NULL;

        if (!u || !s)
                return -EINVAL;
        for (struct watch *i = u->watches; i; i = i->next)
                if (i->s == s && i->fd == fd) {
                        w = i;
                        break;
                }
        if (!w)
                return -ENOENT;
        w->s = NULL; /* from here on its CQEs are ignored */
        if (!u->have_ring) {
                unlink_watch(u, w);
                uv_poll_stop(&w->poll);
                uv_close((uv_handle_t *) &w->poll, on_closed_free);
                return 0;
        }
        if (!w->armed) {
                unlink_watch(u, w);
                free(w);
                return 0;
        }
        struct io_uring_sqe *sqe = get_sqe(u);
        if (!sqe)
                return -EBUSY; /* stays dead and armed: its last CQE frees it, or the ring's exit */
        io_uring_prep_poll_remove(sqe, (uint64_t) (uintptr_t) w);
        io_uring_sqe_set_data64(sqe, UDATA_REMOVE);
        io_uring_submit(&u->ring);
        return 0;
}
