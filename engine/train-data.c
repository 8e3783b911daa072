/* Training sets (tokenized once) and the training loop that walks them epoch by epoch in a
 * seeded, length-bucketed order (train.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "model-internal.h"
#include "tokenizer.h"
#include "train-internal.h"

/* Example i is ids[off[i] .. off[i + 1]), its type ids alike. */
struct dsa_train_set {
        int32_t *ids, *types, *labels;
        size_t *off, n;
};

struct dsa_train_set *dsa_train_set_free(struct dsa_train_set *s) {
        if (s) {
                free(s->ids), free(s->types), free(s->labels), free(s->off);
                free(s);
        }
        return NULL;
}

size_t dsa_train_set_size(const struct dsa_train_set *s) {
        return s ? s->n : 0;
}

static size_t ex_len(const struct dsa_train_set *s, size_t i) {
        return s->off[i + 1] - s->off[i];
}

int dsa_train_set_new(const struct dsa_model *m, const char *const *texts, const char *const *pairs,
                      const int32_t *labels, size_t n, size_t max_len, struct dsa_train_set **ret) {
        _cleanup_(dsa_train_set_freep) struct dsa_train_set *s = NULL;
        size_t cap = 0, used = 0;
        int r;

        if (!m || !m->tok || (n && (!texts || !labels)) || !ret)
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->n = n;
        s->off = calloc(n + 1, sizeof(size_t));
        s->labels = malloc((n ? n : 1) * sizeof(int32_t));
        if (!s->off || !s->labels)
                return -ENOMEM;
        if (n)
                memcpy(s->labels, labels, n * sizeof(int32_t));
        for (size_t i = 0; i < n; i++) {
                struct dsa_encoding e;
                const char *p = pairs ? pairs[i] : NULL;
                r = dsa_tokenizer_encode(m->tok, texts[i], strlen(texts[i]), p, p ? strlen(p) : 0, DSA_ENCODE_SPECIAL,
                                         max_len, &e);
                if (r < 0)
                        return dsa__error(r, "example %zu cannot be tokenized", i + 1);
                if (used + e.n > cap) {
                        cap = MAX(2 * cap, used + e.n + 4096);
                        int32_t *a = realloc(s->ids, cap * sizeof(int32_t));
                        if (a)
                                s->ids = a;
                        int32_t *b = a ? realloc(s->types, cap * sizeof(int32_t)) : NULL;
                        if (b)
                                s->types = b;
                        if (!a || !b) {
                                dsa_encoding_clear(&e);
                                return -ENOMEM;
                        }
                }
                memcpy(s->ids + used, e.ids, e.n * sizeof(int32_t));
                memcpy(s->types + used, e.type_ids, e.n * sizeof(int32_t));
                used += e.n;
                s->off[i + 1] = used;
                dsa_encoding_clear(&e);
        }
        *ret = TAKE_PTR(s);
        return 0;
}

void dsa_train_batch_clear(struct dsa_train_batch *bb) {
        free(bb->ids), free(bb->types), free(bb->mask), free(bb->labels);
        *bb = (struct dsa_train_batch) { 0 };
}

/* Examples order[0 .. count) padded into bb. */
static int fill(const struct dsa_train_set *s, const size_t *order, size_t count, struct dsa_train_batch *bb) {
        size_t T = 1;
        for (size_t i = 0; i < count; i++)
                T = MAX(T, ex_len(s, order[i]));
        if (count * T > bb->cap || count > bb->cap_B) {
                free(bb->ids), free(bb->types), free(bb->mask), free(bb->labels);
                bb->cap = count * T, bb->cap_B = count;
                bb->ids = calloc(bb->cap, sizeof(int32_t));
                bb->types = calloc(bb->cap, sizeof(int32_t));
                bb->mask = calloc(bb->cap, 1);
                bb->labels = calloc(count, sizeof(int32_t));
                if (!bb->ids || !bb->types || !bb->mask || !bb->labels) {
                        dsa_train_batch_clear(bb);
                        return -ENOMEM;
                }
        }
        memset(bb->ids, 0, count * T * sizeof(int32_t));
        memset(bb->types, 0, count * T * sizeof(int32_t));
        memset(bb->mask, 0, count * T);
        for (size_t i = 0; i < count; i++) {
                const size_t e = order[i], n = ex_len(s, e);
                memcpy(bb->ids + i * T, s->ids + s->off[e], n * sizeof(int32_t));
                memcpy(bb->types + i * T, s->types + s->off[e], n * sizeof(int32_t));
                memset(bb->mask + i * T, 1, n);
                bb->labels[i] = s->labels[e];
        }
        bb->b = (struct dsa_batch) { .B = count, .T = T, .ids = bb->ids, .type_ids = bb->types, .mask = bb->mask };
        return 0;
}

int dsa_train_set_slice(const struct dsa_train_set *s, size_t first, size_t count, struct dsa_train_batch *bb) {
        if (!s || !bb || count == 0 || first >= s->n || count > s->n - first)
                return -EINVAL;
        _cleanup_free_ size_t *order = malloc(count * sizeof(size_t));
        if (!order)
                return -ENOMEM;
        for (size_t i = 0; i < count; i++)
                order[i] = first + i;
        return fill(s, order, count, bb);
}

/* Epoch order (see struct dsa_fit): order (n) examples, perm (nb) batch starts / B. */
static void epoch_order(const struct dsa_train_set *s, size_t B, uint64_t seed, size_t *order, size_t *perm) {
        uint64_t st = seed;
        for (size_t i = 0; i < s->n; i++)
                order[i] = i;
        for (size_t i = s->n; i > 1; i--) {
                size_t j = (size_t) (dsa_rng_next(&st) % i), x = order[i - 1];
                order[i - 1] = order[j], order[j] = x;
        }
        const size_t run = 50 * B;
        for (size_t a = 0; a < s->n; a += run) {
                const size_t e = MIN(a + run, s->n);
                for (size_t i = a + 1; i < e; i++)
                        for (size_t k = i; k > a && ex_len(s, order[k - 1]) > ex_len(s, order[k]); k--) {
                                size_t x = order[k];
                                order[k] = order[k - 1], order[k - 1] = x;
                        }
        }
        const size_t nb = (s->n + B - 1) / B;
        for (size_t i = 0; i < nb; i++)
                perm[i] = i;
        for (size_t i = nb; i > 1; i--) {
                size_t j = (size_t) (dsa_rng_next(&st) % i), x = perm[i - 1];
                perm[i - 1] = perm[j], perm[j] = x;
        }
}

static int plain_batch(void *userdata, const struct dsa_batch *b, const int32_t *labels, float *ret_loss) {
        struct dsa_trainer *t = userdata;
        int r = dsa_trainer_forward(t, b, labels, true, ret_loss, NULL);
        return r < 0 ? r : dsa_trainer_backward(t, NULL);
}

int dsa_trainer_fit(struct dsa_trainer *t, const struct dsa_train_set *s, const struct dsa_fit *f) {
        struct dsa_train_batch bb = { 0 };
        int r = 0;

        if (!t || !s || !f || f->batch == 0 || s->n == 0)
                return -EINVAL;
        const size_t B = f->batch, nb = (s->n + B - 1) / B;
        _cleanup_free_ size_t *order = malloc(s->n * sizeof(size_t)), *perm = malloc(nb * sizeof(size_t));
        if (!order || !perm)
                return -ENOMEM;
        int (*fn)(void *, const struct dsa_batch *, const int32_t *, float *) = f->batch_fn ? f->batch_fn : plain_batch;
        void *ud = f->batch_fn ? f->batch_userdata : t;
        while (t->step < f->total_steps && r >= 0) {
                const uint64_t epoch = t->step / nb;
                epoch_order(s, B, f->seed ^ (epoch * 0x100000001b3ull), order, perm);
                for (size_t k = t->step % nb; k < nb && t->step < f->total_steps; k++) {
                        const size_t first = perm[k] * B, count = MIN(B, s->n - first);
                        float loss = 0.0f, lr;
                        if ((r = fill(s, order + first, count, &bb)) < 0 || (r = fn(ud, &bb.b, bb.labels, &loss)) < 0 ||
                            (r = dsa_trainer_step(t, &lr, NULL)) < 0)
                                break;
                        if (f->step_fn && (r = f->step_fn(f->step_userdata, t->step, loss, lr, count)) < 0)
                                break;
                }
        }
        dsa_train_batch_clear(&bb);
        return r < 0 ? r : 0;
}
