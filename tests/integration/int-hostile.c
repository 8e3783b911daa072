/* A hostile client. It calls OpenSession with sd-bus itself (no libdsa), maps the ring and
 * breaks every rule of include/dsa/ring.h: each invalid SQE ring.h lists gets an error CQE with
 * the documented status (-EBADSLT, -EINVAL); random SQEs and random payloads are each answered
 * by exactly one CQE with their user_data; a lying sq_tail (head + 2^31) and a rewritten header
 * geometry change nothing dsad does; a second thread rewrites SQEs and payloads while the main
 * one rings the doorbell in a loop; the eventfds' O_NONBLOCK is cleared and the completion
 * counter saturated. Meanwhile and afterwards a well-behaved libdsa client on its own connection
 * gets correct answers (1e-4 of its first answer: its requests may share a batch with the
 * hostile ones), and when the hostile connection closes its session leaves ListSessions.
 * Malformed D-Bus calls (wrong signatures, 100k texts, no texts, a text over 1 MiB, unknown
 * methods, bad pools, names, geometries, someone else's session) get D-Bus errors; invalid UTF-8
 * never reaches the wire (sd-bus refuses to build it). dsad stays up throughout and exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <dsa/dsa.h>
#include <dsa/ring.h>

#include "common.h"
#include "itest.h"

static struct itest T;
#define CHECK(cond, ...) ITEST_CHECK(&T, cond, __VA_ARGS__)

struct hostile {
        sd_bus *bus;
        int ring_fd, submit_fd, complete_fd;
        char id[64];
        uint8_t *map;
        size_t size;
        struct dsa_ring_header g; /* the geometry as created, before we scribble on it */
        uint32_t sq_tail, cq_head;
};

static uint64_t rng_state = 0x1234567887654321ull;
static uint64_t rnd(void) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static sd_bus *bus_open(void) {
        sd_bus *bus = NULL;
        int r = itest_bus_open(T.address, &bus);
        CHECK(r >= 0, "bus: %s", strerror(-r));
        return bus;
}

static void hostile_open(struct hostile *h, uint32_t slots, uint32_t slot_size) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        const char *id;
        int fds[3], r;
        struct stat st;

        memset(h, 0, sizeof(*h));
        h->bus = bus_open();
        r = sd_bus_call_method(h->bus, "org.dsa.Daemon1", "/org/dsa/Daemon1", "org.dsa.Daemon1", "OpenSession", &e,
                               &reply, "suu", "sst2", slots, slot_size);
        CHECK(r >= 0, "OpenSession: %s %s", e.name ?: "", e.message ?: strerror(-r));
        r = sd_bus_message_read(reply, "hhhs", &fds[0], &fds[1], &fds[2], &id);
        CHECK(r >= 0, "OpenSession reply: %s", strerror(-r));
        h->ring_fd = fcntl(fds[0], F_DUPFD_CLOEXEC, 3);
        h->submit_fd = fcntl(fds[1], F_DUPFD_CLOEXEC, 3);
        h->complete_fd = fcntl(fds[2], F_DUPFD_CLOEXEC, 3);
        snprintf(h->id, sizeof(h->id), "%s", id);
        sd_bus_message_unref(reply);
        CHECK(h->ring_fd >= 0 && h->submit_fd >= 0 && h->complete_fd >= 0, "dup");
        CHECK(fstat(h->ring_fd, &st) == 0, "fstat");
        h->size = (size_t) st.st_size;
        h->map = mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_SHARED, h->ring_fd, 0);
        CHECK(h->map != MAP_FAILED, "mmap: %m");
        memcpy(&h->g, h->map, sizeof(h->g));
        CHECK(h->g.magic == DSA_RING_MAGIC && h->g.total_size == h->size && h->g.n_slots == slots,
              "header as created");
        /* Growing the sealed file must fail. */
        CHECK(ftruncate(h->ring_fd, (off_t) h->size * 2) < 0, "the ring memfd is not sealed against growing");
}

static void hostile_close(struct hostile *h) {
        munmap(h->map, h->size);
        close(h->ring_fd);
        close(h->submit_fd);
        close(h->complete_fd);
        sd_bus_flush_close_unref(h->bus);
        h->bus = NULL;
}

static struct dsa_ring_header *hdr(struct hostile *h) {
        return (struct dsa_ring_header *) h->map;
}

static void doorbell(struct hostile *h) {
        uint64_t one = 1;
        (void) !write(h->submit_fd, &one, sizeof(one));
}

static void push(struct hostile *h, const struct dsa_ring_sqe *sqe) {
        memcpy(h->map + h->g.sq_offset + (uint64_t) (h->sq_tail & (h->g.sq_entries - 1)) * 64, sqe, 64);
        h->sq_tail++;
        atomic_store_explicit((_Atomic uint32_t *) &hdr(h)->sq_tail, h->sq_tail, memory_order_release);
}

static uint8_t *slot_ptr(struct hostile *h, uint32_t slot) {
        return h->map + h->g.data_offset + (uint64_t) slot * h->g.slot_size;
}

/* Collects up to want CQEs within ms; returns how many. */
static size_t collect(struct hostile *h, struct dsa_ring_cqe *out, size_t want, int ms) {
        size_t n = 0;
        uint64_t end = itest_now_ms() + (uint64_t) ms;

        while (n < want && itest_now_ms() < end) {
                uint32_t tail = atomic_load_explicit((_Atomic uint32_t *) &hdr(h)->cq_tail, memory_order_acquire);
                while (h->cq_head != tail && n < want) {
                        memcpy(&out[n++], h->map + h->g.cq_offset + (uint64_t) (h->cq_head & (h->g.cq_entries - 1)) * 32,
                               32);
                        h->cq_head++;
                }
                atomic_store_explicit((_Atomic uint32_t *) &hdr(h)->cq_head, h->cq_head, memory_order_release);
                if (n < want) {
                        struct pollfd p = { .fd = h->complete_fd, .events = POLLIN };
                        uint64_t v;
                        if (poll(&p, 1, 20) > 0)
                                (void) !read(h->complete_fd, &v, sizeof(v));
                }
        }
        return n;
}

/* Writes a payload of texts (lens given; -1: strlen) into a slot; returns its length. */
static uint32_t payload(struct hostile *h, uint32_t slot, size_t n, const char *const *texts) {
        uint8_t *p = slot_ptr(h, slot);
        uint32_t off = 4, v = (uint32_t) n;

        memcpy(p, &v, 4);
        for (size_t i = 0; i < n; i++) {
                v = (uint32_t) strlen(texts[i]);
                memcpy(p + off, &v, 4);
                memcpy(p + off + 4, texts[i], v);
                off += 4 + v;
        }
        return off;
}

/* One SQE, its CQE, and the status checked. */
static int one(struct hostile *h, struct dsa_ring_sqe sqe, const char *what) {
        struct dsa_ring_cqe cqe;

        sqe.user_data = rnd();
        push(h, &sqe);
        doorbell(h);
        CHECK(collect(h, &cqe, 1, 10000) == 1, "%s: no completion within 10 s", what);
        CHECK(cqe.user_data == sqe.user_data, "%s: CQE user_data %llx, SQE's %llx", what,
              (unsigned long long) cqe.user_data, (unsigned long long) sqe.user_data);
        return cqe.status;
}

static void expect_status(struct hostile *h, struct dsa_ring_sqe sqe, int want, const char *what) {
        int st = one(h, sqe, what);
        CHECK(st == want, "%s: CQE status %d (%s), want %d (%s)", what, st, strerror(-st), want, strerror(-want));
}

/* ---- the well-behaved client, in its own thread */

static atomic_bool stop_good;
static const char *volatile phase = "start"; /* for the good client's failure messages */
static atomic_int good_ok, good_bad;
static float good_ref[2];

static void good_once(struct dsa_session *s) {
        const char *texts[] = { "the good client's text" };
        struct dsa_classify_result *cr = NULL;
        int r = dsa_classify(s, texts, 1, &cr);

        if (r >= 0 && cr[0].n_labels == 2 && itest_close("good client", cr[0].logits, good_ref, 2, 1e-4f, 1e-4f, false))
                atomic_fetch_add(&good_ok, 1);
        else {
                if (atomic_load(&good_bad) < 3)
                        fprintf(stderr, "FAIL good client (phase %s): %s\n", phase, r < 0 ? strerror(-r) : "wrong logits");
                atomic_fetch_add(&good_bad, 1);
        }
        dsa_classify_result_free(cr);
}

static void *good_thread(void *arg) {
        struct dsa_session *s = arg;
        while (!atomic_load(&stop_good)) {
                good_once(s);
                usleep(2000);
        }
        return NULL;
}

/* ---- the racing scribbler */

static atomic_bool stop_scribble;
static void *scribbler(void *arg) {
        struct hostile *h = arg;
        uint64_t s = 0x9e3779b97f4a7c15ull;

        while (!atomic_load(&stop_scribble)) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                /* Rewrite an SQE (keeping it half plausible now and then) and a payload's counts. */
                uint32_t e = (uint32_t) s & (h->g.sq_entries - 1);
                uint8_t *sqe = h->map + h->g.sq_offset + (uint64_t) e * 64;
                if (s & 1) {
                        memcpy(sqe, &s, 8);
                        uint32_t op = (uint32_t) (s >> 8) & 3, slot = (uint32_t) (s >> 16) % (h->g.n_slots + 1);
                        uint32_t len = (uint32_t) (s >> 24) % 64;
                        memcpy(sqe + 8, &op, 4);
                        memcpy(sqe + 16, &slot, 4);
                        memcpy(sqe + 20, &len, 4);
                } else
                        for (int i = 0; i < 64; i += 8)
                                memcpy(sqe + i, &s, 8);
                uint8_t *p = slot_ptr(h, (uint32_t) (s >> 32) % h->g.n_slots);
                uint32_t v = (uint32_t) (s >> 40) % 3 ? 1 : (uint32_t) s;
                memcpy(p, &v, 4);
                v = (uint32_t) (s >> 20) % 80;
                memcpy(p + 4, &v, 4);
                memset(p + 8, 'a' + (int) (s % 26), 80);
        }
        return NULL;
}

/* ---- malformed D-Bus calls */

static void expect_error(sd_bus *bus, const char *method, const char *want, const char *sig, ...) {
        sd_bus_message *m = NULL, *reply = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, "org.dsa.Daemon1", "/org/dsa/Daemon1", "org.dsa.Daemon1", method);
        CHECK(r >= 0, "new call");
        va_start(ap, sig);
        r = sd_bus_message_appendv(m, sig, ap);
        va_end(ap);
        CHECK(r >= 0, "append %s: %s", sig, strerror(-r));
        r = sd_bus_call(bus, m, 30 * 1000000ull, &e, &reply);
        CHECK(r < 0 && e.name && !strcmp(e.name, want), "%s(%s): got %s (%s), want %s", method, sig,
              r >= 0 ? "a method return" : e.name ?: strerror(-r), e.message ?: "", want);
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        sd_bus_message_unref(m);
}

static void malformed_dbus(void) {
        sd_bus *bus = bus_open();
        sd_bus_message *m = NULL, *reply = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        char **many, *big;
        int r;

        expect_error(bus, "Classify", "org.freedesktop.DBus.Error.InvalidArgs", "s", "sst2");
        expect_error(bus, "Classify", "org.freedesktop.DBus.Error.InvalidArgs", "su", "sst2", 7u);
        expect_error(bus, "Classify", "org.freedesktop.DBus.Error.InvalidArgs", "asasas", 0, 0, 0);
        expect_error(bus, "Embed", "org.freedesktop.DBus.Error.InvalidArgs", "sas", "sst2", 1, "x");
        expect_error(bus, "OpenSession", "org.freedesktop.DBus.Error.InvalidArgs", "sii", "sst2", -1, -1);
        expect_error(bus, "NoSuchMethod", "org.freedesktop.DBus.Error.UnknownMethod", "");
        expect_error(bus, "Classify", "org.dsa.Error.InvalidArgs", "sas", "sst2", 0);
        expect_error(bus, "Classify", "org.dsa.Error.InvalidArgs", "sas", "../../etc/passwd", 1, "x");
        expect_error(bus, "Classify", "org.dsa.Error.InvalidArgs", "sas", "", 1, "x");
        expect_error(bus, "Classify", "org.dsa.Error.NoSuchModel", "sas", "nosuch", 1, "x");
        expect_error(bus, "Embed", "org.dsa.Error.InvalidArgs", "sass", "sst2", 1, "x", "max");
        expect_error(bus, "OpenSession", "org.dsa.Error.InvalidArgs", "suu", "sst2", 257u, 0u);
        expect_error(bus, "OpenSession", "org.dsa.Error.InvalidArgs", "suu", "sst2", 1u, 100u);
        expect_error(bus, "OpenSession", "org.dsa.Error.InvalidArgs", "suu", "sst2", 256u, 16u << 20);
        expect_error(bus, "CloseSession", "org.dsa.Error.NoSuchSession", "s", "999999");
        expect_error(bus, "LoadModel", "org.dsa.Error.NoSuchModel", "s", "nosuch");
        expect_error(bus, "UnloadModel", "org.dsa.Error.InvalidArgs", "s", ".hidden");

        /* 100 000 texts in one call: dsad stops reading at the 1025th and refuses. (It used to copy
         * the whole array first, in time quadratic in its length, blocking its loop.) The time is
         * printed, not asserted: no test fails on wall-clock time. */
        const int n_many = 100000;
        uint64_t t0 = itest_now_ms();
        many = calloc((size_t) n_many + 1, sizeof(char *));
        CHECK(many, "oom");
        for (int i = 0; i < n_many; i++)
                many[i] = (char *) "some text";
        r = sd_bus_message_new_method_call(bus, &m, "org.dsa.Daemon1", "/org/dsa/Daemon1", "org.dsa.Daemon1", "Classify");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", "sst2");
        if (r >= 0)
                r = sd_bus_message_append_strv(m, many);
        CHECK(r >= 0, "build 100k: %s", strerror(-r));
        r = sd_bus_call(bus, m, 60 * 1000000ull, &e, &reply);
        CHECK(r < 0 && e.name && !strcmp(e.name, "org.dsa.Error.InvalidArgs"), "Classify with %d texts: %s (%s)",
              n_many, r >= 0 ? "a method return" : e.name ?: strerror(-r), e.message ?: "");
        fprintf(stderr, "Classify with %d texts refused in %llu ms\n", n_many, (unsigned long long) (itest_now_ms() - t0));
        sd_bus_error_free(&e);
        m = sd_bus_message_unref(m);
        reply = sd_bus_message_unref(reply);
        free(many);

        /* One text of 1 MiB + 1 byte. */
        big = malloc((1u << 20) + 2);
        CHECK(big, "oom");
        memset(big, 'a', (1u << 20) + 1);
        big[(1u << 20) + 1] = 0;
        expect_error(bus, "Classify", "org.dsa.Error.InvalidArgs", "sas", "sst2", 1, big);
        free(big);

        /* Invalid UTF-8 never leaves the client: sd-bus refuses the string. */
        r = sd_bus_message_new_method_call(bus, &m, "org.dsa.Daemon1", "/org/dsa/Daemon1", "org.dsa.Daemon1", "Classify");
        CHECK(r >= 0, "new");
        r = sd_bus_message_append(m, "sas", "sst2", 1, "bad \xff\xfe");
        CHECK(r < 0, "sd-bus appended invalid UTF-8");
        m = sd_bus_message_unref(m);

        /* Still serving. */
        r = sd_bus_call_method(bus, "org.dsa.Daemon1", "/org/dsa/Daemon1", "org.dsa.Daemon1", "GetStatus", &e, &reply,
                               "");
        CHECK(r >= 0, "GetStatus after malformed calls: %s", e.message ?: strerror(-r));
        sd_bus_message_unref(reply);
        sd_bus_flush_close_unref(bus);
}

static size_t n_sessions(struct dsa_client *c) {
        struct dsa_session_info *si = NULL;
        size_t n = 0;
        int r = dsa_client_list_sessions(c, &si, &n);
        CHECK(r >= 0, "ListSessions: %s", strerror(-r));
        dsa_session_info_free(si, n);
        return n;
}

int main(void) {
        struct dsa_client *gc = NULL, *ctl = NULL; /* the good client's, and this thread's for control */
        struct dsa_session *gs = NULL;
        struct hostile h, h2;
        struct dsa_ring_sqe sqe;
        struct dsa_ring_cqe cqes[64];
        pthread_t good, scrib;
        int r;

        itest_init(&T, NULL);
        itest_dsad_start(&T, NULL);

        /* The well-behaved client and its reference answer. */
        r = dsa_client_new(NULL, &gc);
        CHECK(r >= 0, "client");
        r = dsa_client_new(NULL, &ctl);
        CHECK(r >= 0, "client");
        r = dsa_session_open(gc, "sst2", 1, 0, &gs);
        CHECK(r >= 0, "session: %s", strerror(-r));
        dsa_session_set_timeout(gs, 20 * 1000000ull);
        {
                const char *texts[] = { "the good client's text" };
                struct dsa_classify_result *cr = NULL;
                CHECK(dsa_classify(gs, texts, 1, &cr) >= 0, "reference classify");
                memcpy(good_ref, cr[0].logits, sizeof(good_ref));
                dsa_classify_result_free(cr);
        }
        CHECK(pthread_create(&good, NULL, good_thread, gs) == 0, "thread");

        hostile_open(&h, 4, 4096);
        const char *ok_text[] = { "hello there" };
        uint32_t ok_len = payload(&h, 0, 1, ok_text);

        /* Sanity: a valid request works. */
        sqe = (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .slot = 0, .len = ok_len };
        expect_status(&h, sqe, 0, "valid classify");

        phase = "rejections";
        /* Every rejection ring.h lists. */
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_NOP, .slot = 4 }, -EBADSLT, "slot == n_slots");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_NOP, .slot = UINT32_MAX }, -EBADSLT, "slot 2^32-1");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .slot = 0, .len = 4097 }, -EINVAL,
                      "len > slot_size");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .slot = 0, .len = UINT32_MAX }, -EINVAL,
                      "len 2^32-1");
        expect_status(&h, (struct dsa_ring_sqe) { .op = 77, .slot = 0, .len = ok_len }, -EINVAL, "unknown op");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .flags = 1, .slot = 0, .len = ok_len },
                      -EINVAL, "flags on classify");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_TOKENIZE, .flags = 2, .slot = 0, .len = ok_len },
                      -EINVAL, "unknown flag on tokenize");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .pool = 1, .slot = 0, .len = ok_len },
                      -EINVAL, "pool on classify");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_EMBED, .pool = 99, .slot = 0, .len = ok_len },
                      -EINVAL, "unknown pool");
        for (size_t i = 0; i < sizeof(sqe.reserved) / sizeof(sqe.reserved[0]); i++) {
                sqe = (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .slot = 0, .len = ok_len };
                sqe.reserved[i] = 1u << i;
                expect_status(&h, sqe, -EINVAL, "reserved field set");
        }
        /* The hints, on a valid payload (slot 0 holds the first classify's response by now), so
         * that only they can be the reason. */
        payload(&h, 2, 1, ok_text);
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .min_accuracy = 10001, .slot = 2,
                                                  .len = ok_len },
                      -EINVAL, "min_accuracy > 10000");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .min_accuracy = UINT32_MAX, .slot = 2,
                                                  .len = ok_len },
                      -EINVAL, "min_accuracy 2^32-1");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .priority = 3, .slot = 2, .len = ok_len },
                      -EINVAL, "unknown priority");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .min_accuracy = 10000,
                                                  .max_latency_us = UINT32_MAX, .priority = DSA_RING_PRIORITY_LOW,
                                                  .slot = 2, .len = ok_len },
                      0, "every hint at its limit");
        expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_NOP, .slot = 0, .len = 4 }, -EINVAL, "NOP with len");
        {
                uint8_t *p = slot_ptr(&h, 1);
                uint32_t v;
                struct dsa_ring_sqe base = { .op = DSA_RING_OP_CLASSIFY, .slot = 1 };

                v = 0; /* no texts */
                memcpy(p, &v, 4);
                base.len = 4;
                expect_status(&h, base, -EINVAL, "0 texts");
                v = 1025;
                memcpy(p, &v, 4);
                expect_status(&h, base, -EINVAL, "1025 texts");
                base.len = 3;
                expect_status(&h, base, -EINVAL, "payload shorter than its count");
                base.len = 0;
                expect_status(&h, base, -EINVAL, "empty classify payload");
                /* One text whose length runs past the payload. */
                const char *t1[] = { "abcdef" };
                base.len = payload(&h, 1, 1, t1);
                v = 7;
                memcpy(p + 4, &v, 4);
                expect_status(&h, base, -EINVAL, "text length past the end");
                v = UINT32_MAX;
                memcpy(p + 4, &v, 4);
                expect_status(&h, base, -EINVAL, "text length 2^32-1");
                base.len = payload(&h, 1, 1, t1) + 1;
                expect_status(&h, base, -EINVAL, "trailing byte");
                const char *bad[] = { "bad \xff utf8" };
                base.len = payload(&h, 1, 1, bad);
                expect_status(&h, base, -EINVAL, "invalid UTF-8");
                const char *nul[] = { "nul here" };
                base.len = payload(&h, 1, 1, nul);
                p[4 + 4 + 3] = 0;
                expect_status(&h, base, -EINVAL, "NUL inside a text");
                base.len = payload(&h, 1, 1, ok_text);
                expect_status(&h, base, 0, "valid again");
        }

        phase = "random SQEs";
        /* Random SQEs, in batches of sq_entries: each answered once, with its user_data. */
        for (int round = 0; round < 50; round++) {
                uint64_t ud[4];
                uint32_t n = h.g.sq_entries;
                for (uint32_t i = 0; i < n; i++) {
                        uint64_t w[8];
                        for (int j = 0; j < 8; j++)
                                w[j] = rnd();
                        memcpy(&sqe, w, 64);
                        if (round % 2) { /* plausible op and slot, random rest */
                                sqe.op = (uint32_t) (w[1] % 4);
                                sqe.slot = (uint32_t) (w[2] % h.g.n_slots);
                                sqe.len = (uint32_t) (w[3] % 64);
                                if (round % 4 == 1) { /* valid fields but the payload */
                                        memset(sqe.reserved, 0, sizeof(sqe.reserved)), sqe.flags = 0, sqe.pool = 0;
                                        sqe.min_accuracy %= 10001;
                                        sqe.priority %= DSA_RING_PRIORITY_LOW + 1;
                                }
                                for (uint32_t k = 0; k < 64; k += 8) {
                                        uint64_t x = rnd();
                                        memcpy(slot_ptr(&h, sqe.slot) + k, &x, 8);
                                }
                                if (round % 8 == 1) { /* a plausible count */
                                        uint32_t one = 1, l = sqe.len > 8 ? sqe.len - 8 : 0;
                                        memcpy(slot_ptr(&h, sqe.slot), &one, 4);
                                        memcpy(slot_ptr(&h, sqe.slot) + 4, &l, 4);
                                }
                        }
                        ud[i] = sqe.user_data = w[0] ^ (uint64_t) round;
                        push(&h, &sqe);
                }
                doorbell(&h);
                size_t got = collect(&h, cqes, n, 10000);
                CHECK(got == n, "random round %d: %zu of %u completions", round, got, n);
                for (uint32_t i = 0; i < n; i++) {
                        bool found = false;
                        for (uint32_t k = 0; k < n; k++)
                                found |= cqes[k].user_data == ud[i];
                        CHECK(found, "random round %d: no CQE for SQE %u", round, i);
                        CHECK(cqes[i].status <= 0 && (cqes[i].status == 0 || cqes[i].len == 0),
                              "random round %d: CQE status %d len %u", round, cqes[i].status, cqes[i].len);
                        CHECK(cqes[i].len <= h.g.slot_size, "CQE len %u past the slot", cqes[i].len);
                }
        }

        phase = "forged header";
        /* A rewritten header: dsad keeps its own geometry. */
        {
                struct dsa_ring_header *g = hdr(&h);
                g->sq_entries = 1u << 30;
                g->cq_entries = 3;
                g->n_slots = UINT32_MAX;
                g->slot_size = UINT32_MAX;
                g->sq_offset = UINT64_MAX - 100;
                g->cq_offset = 1ull << 40;
                g->data_offset = 12345;
                g->total_size = 1ull << 50;
                g->magic = 0;
                payload(&h, 3, 1, ok_text);
                expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .slot = 3, .len = ok_len }, 0,
                              "valid request in the last slot under a forged header");
                expect_status(&h, (struct dsa_ring_sqe) { .op = DSA_RING_OP_NOP, .slot = 4 }, -EBADSLT,
                              "slot 4 under a forged header");
        }

        phase = "saturated eventfd";
        /* Saturated completion counter and blocking eventfds: dsad must not block on them. */
        {
                uint64_t maxv = UINT64_MAX - 1;
                fcntl(h.complete_fd, F_SETFL, fcntl(h.complete_fd, F_GETFL) & ~O_NONBLOCK);
                fcntl(h.submit_fd, F_SETFL, fcntl(h.submit_fd, F_GETFL) & ~O_NONBLOCK);
                (void) !write(h.complete_fd, &maxv, sizeof(maxv));
                sqe = (struct dsa_ring_sqe) { .op = DSA_RING_OP_CLASSIFY, .slot = 0, .len = ok_len, .user_data = 42 };
                push(&h, &sqe);
                doorbell(&h); /* blocking write, counter 1: fine */
                usleep(300000);
                int before = atomic_load(&good_ok);
                usleep(300000);
                int after = atomic_load(&good_ok);
                CHECK(after > before, "the good client stalled after the hostile one saturated its "
                                                        "completion eventfd");
                uint64_t v;
                (void) !read(h.complete_fd, &v, sizeof(v)); /* unsaturate */
                fcntl(h.complete_fd, F_SETFL, fcntl(h.complete_fd, F_GETFL) | O_NONBLOCK);
                fcntl(h.submit_fd, F_SETFL, fcntl(h.submit_fd, F_GETFL) | O_NONBLOCK);
                CHECK(collect(&h, cqes, 1, 10000) == 1 && cqes[0].user_data == 42, "completion after unsaturating");
        }

        phase = "race";
        /* The race: a thread rewrites SQEs and payloads while this one bumps the tail and rings. */
        CHECK(pthread_create(&scrib, NULL, scribbler, &h) == 0, "thread");
        for (uint64_t end = itest_now_ms() + 1500; itest_now_ms() < end;) {
                h.sq_tail++;
                atomic_store_explicit((_Atomic uint32_t *) &hdr(&h)->sq_tail, h.sq_tail, memory_order_release);
                doorbell(&h);
                (void) collect(&h, cqes, 64, 0);
        }
        atomic_store(&stop_scribble, true);
        pthread_join(scrib, NULL);

        phase = "lying tail";
        /* A lying tail: head + 2^31. */
        {
                uint32_t head = atomic_load_explicit((_Atomic uint32_t *) &hdr(&h)->sq_head, memory_order_acquire);
                atomic_store_explicit((_Atomic uint32_t *) &hdr(&h)->sq_tail, head + (1u << 31), memory_order_release);
                for (int i = 0; i < 200; i++) {
                        doorbell(&h);
                        (void) collect(&h, cqes, 64, 1);
                }
        }

        phase = "abandoned session";
        /* A second hostile session, opened and abandoned with garbage in flight. */
        hostile_open(&h2, 256, 64);
        for (uint32_t i = 0; i < 256; i++) {
                sqe = (struct dsa_ring_sqe) { .op = (uint32_t) rnd() % 4, .slot = i, .len = 64, .user_data = i };
                push(&h2, &sqe);
        }
        doorbell(&h2);

        CHECK(n_sessions(ctl) == 3, "3 sessions open");
        hostile_close(&h);
        hostile_close(&h2);
        for (uint64_t end = itest_now_ms() + 5000; n_sessions(ctl) != 1;)
                CHECK(itest_now_ms() < end, "hostile sessions still listed 5 s after their connections closed");

        phase = "malformed D-Bus";
        malformed_dbus();

        atomic_store(&stop_good, true);
        pthread_join(good, NULL);
        good_once(gs);
        fprintf(stderr, "good client: %d correct answers, %d wrong or failed\n", atomic_load(&good_ok),
                atomic_load(&good_bad));
        int n_ok = atomic_load(&good_ok), n_bad = atomic_load(&good_bad);
        CHECK(n_bad == 0 && n_ok > 10, "the good client was not served throughout");
        dsa_session_free(gs);
        dsa_client_free(gc);
        dsa_client_free(ctl);
        return itest_teardown(&T) ? 0 : 1;
}
