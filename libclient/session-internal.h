/* What session.c (a session's life: open, checks on what dsad sent, close; synchronous calls),
 * ring.c (slots, the submission and completion queues, timeouts, waiting) and async.c
 * (asynchronous submission and dispatch to callbacks) share. Never installed; hidden. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "client.h"

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
        uint32_t variant;       /* the CQE's, checked against the session's names */
};

struct dsa_session {
        struct dsa_client *client; /* referenced */
        struct dsa_session *prev, *next;
        char *id, *model, *daemon; /* daemon: dsad's unique bus name when the session opened */
        char **labels;
        size_t n_labels;
        char **variants;             /* the model's Variants: CQE variant i names variants[i - 1] */
        size_t n_variants;
        struct dsa__ring_hints hints; /* what every SQE carries */

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
        uint64_t spin_usec;          /* synchronous calls: busy-poll the CQ this long first */
        int n_pending;

        int broken;                  /* < 0: dsad, the bus or the ring is gone for good */
        bool ring_bad;               /* dsad broke the ring protocol: stop reading it */
        unsigned dispatch_depth;
        bool free_pending, closing;
};

/* ---- ring.c */
/* Everything that can happen without blocking: completions, bus messages (dsad's death),
 * timeouts. */
void dsa__session_process(struct dsa_session *s);
/* Puts a request of op into a free slot and the SQ and rings dsad's doorbell. callback NULL:
 * a synchronous call, which dsa__session_wait() then waits for. -EAGAIN when no slot or SQ
 * entry is free, -ECANCELED while closing, the session's error once it broke. */
int dsa__session_submit(struct dsa_session *s, uint32_t op, const char *const *texts, size_t n,
                        uint32_t flags, uint32_t pool, dsa_callback_t callback, void *userdata,
                        uint32_t *ret_slot, uint64_t *ret_id);
/* Waits for the synchronous request in slot idx, bounded by its deadline and by dsad's life. */
int dsa__session_wait(struct dsa_session *s, uint32_t idx, struct dsa_result *res);
/* Arms the timerfd for the earliest deadline of the asynchronous requests pending. */
void dsa__session_arm_timer(struct dsa_session *s);
/* The next slot awaiting delivery (s->fifo_n > 0), in completion order. */
uint32_t dsa__session_pop(struct dsa_session *s);
/* Calls the callback of the DONE or EXPIRED slot idx with its outcome, or with override when
 * override < 0, and releases the slot as far as dsad allows. */
void dsa__session_deliver(struct dsa_session *s, uint32_t idx, int override);

/* ---- session.c */
/* Fails what is not delivered yet (-ECANCELED), tells dsad, unmaps and frees s. */
void dsa__session_destroy(struct dsa_session *s);
