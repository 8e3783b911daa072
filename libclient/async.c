/* Asynchronous requests of a session: submission with a callback, and dispatch of what
 * completed (or failed: timeout, dsad gone) to the callbacks from the caller's main loop, which
 * watches dsa_session_get_fd(). */
#include "session-internal.h"

static int submit_async(struct dsa_session *s, uint32_t op, const char *const *texts, size_t n,
                        uint32_t flags, uint32_t pool, dsa_callback_t callback, void *userdata,
                        uint64_t *ret_id) {
        uint32_t idx;
        uint64_t id;
        int r;

        if (!s || !callback || (op != DSA_RING_OP_NOP && !texts))
                return -EINVAL;
        r = dsa__session_submit(s, op, texts, n, flags, pool, callback, userdata, &idx, &id);
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

DSA_EXPORT int dsa_session_dispatch(struct dsa_session *s) {
        int n = 0;

        if (!s)
                return -EINVAL;
        if (s->closing || s->free_pending)
                return 0;
        dsa__session_process(s);
        s->dispatch_depth++;
        while (s->fifo_n > 0 && !s->free_pending) {
                dsa__session_deliver(s, dsa__session_pop(s), 0);
                n++;
        }
        s->dispatch_depth--;
        if (s->free_pending) {
                if (s->dispatch_depth == 0)
                        dsa__session_destroy(s);
                return n;
        }
        dsa__session_arm_timer(s);
        return n;
}
