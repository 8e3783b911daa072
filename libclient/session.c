/* The session half of libdsa: OpenSession, then the memfd dsad sent mapped and checked (from
 * then on only our own copy of the geometry is trusted), the doorbell fds checked and the epoll
 * fd built over them; closing, which tells dsad; and the synchronous calls, which submit into
 * the ring and wait on the same fd the caller's main loop would watch. The ring itself is
 * ring.c's, asynchronous requests async.c's. */
#include <fcntl.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "session-internal.h"

#define DEFAULT_TIMEOUT_USEC (60ull * 1000 * 1000)
/* See dsa__session_wait(): long enough for dsad's inline NOP answer on another core. */
#define DEFAULT_SPIN_USEC 30u
/* A spin longer than this is not a spin any more: sleep instead. */
#define MAX_SPIN_USEC 1000u
/* Header + 256 slots of 16 MiB capped at 256 MiB, plus queues: anything larger is not a ring. */
#define MAX_RING_BYTES (512ull << 20)

static int session_call(struct dsa_session *s, uint32_t op, const char *const *texts, size_t n,
                        uint32_t flags, uint32_t pool, struct dsa_result *res) {
        uint32_t idx;
        uint64_t id;
        int r;

        r = dsa__session_submit(s, op, texts, n, flags, pool, NULL, NULL, &idx, &id);
        if (r < 0)
                return r;
        return dsa__session_wait(s, idx, res);
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
DSA_EXPORT int dsa_session_set_timeout(struct dsa_session *s, uint64_t usec) {
        if (!s)
                return -EINVAL;
        s->timeout_usec = usec;
        return 0;
}

DSA_EXPORT int dsa_session_set_spin(struct dsa_session *s, uint64_t usec) {
        if (!s || usec > MAX_SPIN_USEC)
                return -EINVAL;
        s->spin_usec = usec;
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

DSA_EXPORT int dsa_session_set_hints(struct dsa_session *s, const struct dsa_hints *h) {
        struct dsa__ring_hints hints;
        int r;

        if (!s)
                return -EINVAL;
        r = dsa__hints_encode(h, &hints);
        if (r < 0)
                return r;
        s->hints = hints;
        return 0;
}

DSA_EXPORT int dsa_session_get_variants(const struct dsa_session *s, const char *const **ret_names) {
        if (!s || !ret_names)
                return -EINVAL;
        *ret_names = (const char *const *) s->variants;
        return (int) s->n_variants;
}

static void strv_free(char **l) {
        if (l)
                for (char **p = l; *p; p++)
                        free(*p);
        free(l);
}

void dsa__session_destroy(struct dsa_session *s) {
        s->closing = true;
        s->dispatch_depth++; /* a dsa_session_free() from a callback below is a no-op */
        /* Every asynchronous request not yet delivered hears -ECANCELED, once. */
        while (s->fifo_n > 0) {
                uint32_t idx = dsa__session_pop(s);
                if (s->slots[idx].state == SLOT_DONE || s->slots[idx].state == SLOT_EXPIRED)
                        dsa__session_deliver(s, idx, -ECANCELED);
        }
        for (uint32_t i = 0; s->slots && i < s->g.n_slots; i++)
                if (s->slots[i].state == SLOT_PENDING && s->slots[i].callback) {
                        s->slots[i].state = SLOT_EXPIRED;
                        s->slots[i].status = -ECANCELED;
                        dsa__session_deliver(s, i, -ECANCELED);
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
        strv_free(s->variants);
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
        dsa__session_destroy(s);
        return NULL;
}

/* A string-array property of the session's model (at most max strings). Not fatal: a model
 * without it (or a dsad that does not say) leaves *ret_l NULL and *ret_n 0. */
static void session_fetch_strv(struct dsa_session *s, const char *property, size_t max,
                               char ***ret_l, size_t *ret_n) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *path = NULL;
        char **l = NULL;
        size_t n = 0;

        if (sd_bus_path_encode(DSA__MODEL_PATH, s->model, &path) < 0)
                return;
        if (sd_bus_get_property_strv(s->client->bus, DSA__BUS_NAME, path, DSA__MODEL_IFACE,
                                     property, &e, &l) < 0) {
                sd_bus_error_free(&e);
                (void) dsa__client_process(s->client);
                return;
        }
        (void) dsa__client_process(s->client);
        while (l && l[n])
                n++;
        if (n > max) {
                strv_free(l);
                return;
        }
        *ret_l = l;
        *ret_n = n;
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

static int epoll_add(int epoll_fd, int fd) {
        /* data.fd lets a wait act on exactly the fds that are ready (ring.c). */
        struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };

        return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev);
}

static int session_setup_fds(struct dsa_session *s) {

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
        if (epoll_add(s->epoll_fd, s->complete_fd) < 0 || epoll_add(s->epoll_fd, s->timer_fd) < 0 ||
            epoll_add(s->epoll_fd, s->wake_fd) < 0)
                return -errno;
        s->bus_fd = sd_bus_get_fd(s->client->bus);
        if (s->bus_fd >= 0 && epoll_add(s->epoll_fd, s->bus_fd) < 0)
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
        /* Spinning only helps when dsad can run meanwhile: not on a single CPU. */
        s->spin_usec = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? DEFAULT_SPIN_USEC : 0;
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
        /* Labels for classify results (label NULL without them); variant names for every
         * result (a dsad without them sends variant 0: NULL). */
        session_fetch_strv(s, "Labels", DSA__MAX_LABELS, &s->labels, &s->n_labels);
        session_fetch_strv(s, "Variants", DSA__MAX_VARIANTS, &s->variants, &s->n_variants);

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
                /* dsad made the session: tell it (dsa__session_destroy sends CloseSession), but keep
                 * the reason of the failure. */
                char *msg = DSA__TAKE_PTR(c->error_message);
                dsa__session_destroy(s);
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
