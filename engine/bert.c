/* The BERT encoder on fp32 weights, llm.c style: embeddings (word + token type + position,
 * LayerNorm); per layer one fused QKV GEMM, attention per (batch row, head) with the key-padding
 * mask, output dense + residual + LayerNorm, FFN up + GELU + down + residual + LayerNorm (post-LN);
 * then BERT's pooler and the classifier. Every vector and the embeddings live in one arena
 * filled at load, the layers' matrices packed for the GEMM, with each tensor's shape checked
 * against the config before a byte of it is read.
 *
 * The forward runs every step on the model's thread pool: GEMMs split by output-column panels,
 * attention by (batch row, head), embeddings and residual + LayerNorm by rows. Each output
 * element is computed by the same code in the same order whatever the split, so results do not
 * depend on the thread count. Activations are cached in the model for the next forward; a forward
 * that finds the cache in use (another thread running the same model) allocates its own. */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/error.h"
#include "bert.h"
#include "kernels/kernels.h"

/* Caps on sizes read from files: generous for any BERT, small enough that products of two or
 * three of them cannot overflow size_t before the explicit checks below. */
#define BERT_MAX_DIM (UINT32_C(1) << 24)
#define BERT_MAX_LAYERS 1024u
#define BERT_MAX_LABELS (UINT32_C(1) << 20)

int dsa__bert_config_check(const struct dsa_bert_config *c) {
        if (c->n_vocab == 0 || c->n_ctx == 0 || c->n_embd == 0 || c->n_head == 0 || c->n_ff == 0 ||
            c->n_layer == 0 || c->n_type == 0)
                return dsa__error(-EBADMSG, "BERT config has a zero size (vocab %u, context %u, hidden %u, "
                                  "heads %u, intermediate %u, layers %u, token types %u)",
                                  c->n_vocab, c->n_ctx, c->n_embd, c->n_head, c->n_ff, c->n_layer, c->n_type);
        if (c->n_vocab > BERT_MAX_DIM || c->n_ctx > BERT_MAX_DIM || c->n_embd > BERT_MAX_DIM ||
            c->n_ff > BERT_MAX_DIM || c->n_type > BERT_MAX_DIM || c->n_layer > BERT_MAX_LAYERS ||
            c->n_labels > BERT_MAX_LABELS)
                return dsa__error(-EBADMSG, "BERT config has an implausibly large size");
        if (c->n_embd % c->n_head != 0)
                return dsa__error(-EBADMSG, "hidden size %u is not a multiple of the head count %u",
                                  c->n_embd, c->n_head);
        if (!isfinite(c->eps) || c->eps <= 0.0f || c->eps >= 1.0f)
                return dsa__error(-EBADMSG, "layer_norm_eps %g is not in (0, 1)", (double) c->eps);
        if (c->act != DSA_ACT_GELU_ERF && c->act != DSA_ACT_GELU_TANH)
                return dsa__error(-EBADMSG, "unknown activation %d", (int) c->act);
        return 0;
}

/* One activation buffer kept across forwards; busy while a forward uses it. It is kept only up
 * to SCRATCH_KEEP_BYTES: a resident daemon should not hold the activations of the largest batch
 * it ever ran (BERT-base at 64 x 128 tokens is ~230 MB); a forward that needs more gets a
 * buffer of its own, whose page faults are small next to its arithmetic. */
#define SCRATCH_KEEP_BYTES (16u << 20)

struct dsa__bert_scratch {
        pthread_mutex_t lock;
        float *buf;
        size_t floats;
        bool busy;
};

static struct dsa__bert_scratch *scratch_free(struct dsa__bert_scratch *s) {
        if (!s)
                return NULL;
        pthread_mutex_destroy(&s->lock);
        free(s->buf);
        free(s);
        return NULL;
}

static struct dsa__bert_scratch *scratch_new(void) {
        struct dsa__bert_scratch *s = calloc(1, sizeof(*s));

        if (!s)
                return NULL;
        if (pthread_mutex_init(&s->lock, NULL) != 0) {
                free(s);
                return NULL;
        }
        return s;
}

/* n floats of activations: the cached buffer when free (grown when too small), else a private
 * one; *ret_cached says which, for scratch_put(). NULL when out of memory. */
static float *scratch_get(struct dsa__bert_scratch *s, size_t n, bool *ret_cached) {
        float *p = NULL;

        pthread_mutex_lock(&s->lock);
        if (!s->busy && n <= SCRATCH_KEEP_BYTES / sizeof(float)) {
                if (s->floats < n) {
                        free(s->buf);
                        s->buf = malloc(n * sizeof(float));
                        s->floats = s->buf ? n : 0;
                }
                if (s->buf) {
                        s->busy = true;
                        p = s->buf;
                }
        }
        pthread_mutex_unlock(&s->lock);
        *ret_cached = p != NULL;
        return p ? p : malloc(n * sizeof(float));
}

static void scratch_put(struct dsa__bert_scratch *s, float *p, bool cached) {
        if (!cached) {
                free(p);
                return;
        }
        pthread_mutex_lock(&s->lock);
        s->busy = false;
        pthread_mutex_unlock(&s->lock);
}

struct dsa_bert *dsa__bert_free(struct dsa_bert *b) {
        if (!b)
                return NULL;
        if (b->labels)
                for (uint32_t i = 0; i < b->cfg.n_labels; i++)
                        free(b->labels[i]);
        free(b->labels);
        if (b->layers)
                for (uint32_t i = 0; i < b->cfg.n_layer; i++) {
                        dsa_packed_f32_free(b->layers[i].qkv_w);
                        dsa_packed_f32_free(b->layers[i].o_w);
                        dsa_packed_f32_free(b->layers[i].up_w);
                        dsa_packed_f32_free(b->layers[i].down_w);
                }
        free(b->layers);
        free(b->arena);
        dsa_threadpool_free(b->pool);
        scratch_free(b->scratch);
        free(b);
        return NULL;
}

static unsigned usable_cpus(void) {
        cpu_set_t set;

        if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
                return (unsigned) CPU_COUNT(&set);
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (unsigned) n : 1;
}

int dsa__bert_set_threads(struct dsa_bert *b, unsigned n) {
        struct dsa_threadpool *p = NULL;
        int r;

        if (!b || n > 4096)
                return -EINVAL;
        if (n == 0)
                n = usable_cpus();
        if (n > 1) {
                r = dsa_threadpool_new(n, &p);
                if (r < 0)
                        return dsa__error(r, "cannot start %u threads", n);
        }
        dsa_threadpool_free(b->pool);
        b->pool = p;
        /* The pool is the only parallelism: OpenBLAS (pooler, classifier) stays on one thread. */
        dsa_blas_set_threads(1);
        return (int) n;
}

/* Adds a*b floats to *total; false on overflow. */
static bool arena_add(size_t *total, size_t a, size_t b) {
        size_t n;
        return size_mul_ok(a, b, &n) && size_add_ok(*total, n, total);
}

static float *carve(float **cursor, size_t n) {
        float *p = *cursor;
        *cursor += n;
        return p;
}

struct loader {
        dsa__bert_lookup_fn lookup;
        void *userdata;
};

/* Reads tensor name, which must have shape {ne0} (ne1 == 0) or {ne0, ne1} in ggml order, into
 * dst. Absent: -ENOENT with a reason when required, else 0 with *ret_found false. */
static int load_tensor(const struct loader *l, const char *name, float *dst, uint64_t ne0, uint64_t ne1,
                       bool required, bool *ret_found) {
        const struct dsa_tensor_view *v = l->lookup(l->userdata, name);
        uint64_t want[DSA_MAX_DIMS] = { ne0, ne1 ? ne1 : 1, 1, 1 };
        int r;

        if (ret_found)
                *ret_found = v != NULL;
        if (!v) {
                if (required)
                        return dsa__error(-ENOENT, "tensor '%s' is missing", name);
                return 0;
        }
        const char *shown = v->name ? v->name : name;
        if (v->n_dims > DSA_MAX_DIMS)
                return dsa__error(-EBADMSG, "tensor '%s' has %u dimensions", shown, v->n_dims);
        for (size_t i = 0; i < DSA_MAX_DIMS; i++) {
                uint64_t got = i < v->n_dims ? v->ne[i] : 1;
                if (got != want[i])
                        return dsa__error(-EBADMSG,
                                          "tensor '%s' has shape (%llu, %llu, %llu, %llu), expected (%llu, %llu) "
                                          "from the config (ggml order: ne[0] first)",
                                          shown, (unsigned long long) v->ne[0],
                                          (unsigned long long) (v->n_dims > 1 ? v->ne[1] : 1),
                                          (unsigned long long) (v->n_dims > 2 ? v->ne[2] : 1),
                                          (unsigned long long) (v->n_dims > 3 ? v->ne[3] : 1),
                                          (unsigned long long) want[0], (unsigned long long) want[1]);
        }
        r = dsa_tensor_to_f32(v, dst);
        if (r < 0) {
                const char *tn = dsa_type_name(v->type);
                return dsa__error(r, "tensor '%s': cannot convert type %s to F32", shown, tn ? tn : "?");
        }
        return 0;
}

int dsa__bert_load(const struct dsa_bert_config *cfg, dsa__bert_lookup_fn lookup, void *userdata,
                   struct dsa_bert **ret) {
        _cleanup_(dsa__bert_freep) struct dsa_bert *b = NULL;
        struct loader l = { lookup, userdata };
        size_t total = 0, per_layer = 0;
        char name[96];
        bool found;
        int r;

        if (!cfg || !lookup || !ret)
                return -EINVAL;
        r = dsa__bert_config_check(cfg);
        if (r < 0)
                return r;

        const size_t V = cfg->n_vocab, C = cfg->n_embd, F = cfg->n_ff, L = cfg->n_layer;
        const size_t NCTX = cfg->n_ctx, NT = cfg->n_type, NL = cfg->n_labels;
        size_t per_layer_mats = 0, packed = 0;

        bool ok = arena_add(&total, V, C) && arena_add(&total, NCTX, C) && arena_add(&total, NT, C) &&
                  arena_add(&total, 2, C) && arena_add(&per_layer, 9, C) && arena_add(&per_layer, 1, F) &&
                  arena_add(&total, L, per_layer) && (!cfg->has_pooler || arena_add(&total, C + 1, C)) &&
                  arena_add(&total, NL, C + 1) && arena_add(&per_layer_mats, 4 * C, C) &&
                  arena_add(&per_layer_mats, 2, F * C) && arena_add(&packed, L, per_layer_mats);
        size_t bytes, packed_bytes;
        if (!ok || !size_mul_ok(total, sizeof(float), &bytes) || !size_mul_ok(packed, sizeof(float), &packed_bytes))
                return dsa__error(-EOVERFLOW, "BERT weights do not fit in memory");
        /* One layer matrix at a time is read here, then packed: at most max(3C, F) x C. */
        _cleanup_free_ float *mat = malloc(MAX(3 * C, F) * C * sizeof(float));
        if (!mat)
                return dsa__error(-ENOMEM, "cannot allocate a %zu x %zu matrix", MAX(3 * C, F), C);

        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->cfg = *cfg;
        b->default_pool = cfg->n_labels > 0 && cfg->has_pooler ? DSA_POOL_POOLER : DSA_POOL_CLS;
        b->layers = calloc(L, sizeof(*b->layers));
        if (!b->layers)
                return -ENOMEM;
        void *arena = NULL;
        if (posix_memalign(&arena, 64, bytes) != 0)
                return dsa__error(-ENOMEM, "cannot allocate %zu bytes for BERT weights", bytes);
        b->arena = arena;
        b->arena_floats = total;
        b->packed_floats = packed;
        b->scratch = scratch_new();
        if (!b->scratch)
                return -ENOMEM;

        float *cur = b->arena;
        b->wte = carve(&cur, V * C);
        b->wpe = carve(&cur, NCTX * C);
        b->wtt = carve(&cur, NT * C);
        b->emb_ln_g = carve(&cur, C);
        b->emb_ln_b = carve(&cur, C);

        if ((r = load_tensor(&l, "token_embd.weight", b->wte, C, V, true, NULL)) < 0 ||
            (r = load_tensor(&l, "position_embd.weight", b->wpe, C, NCTX, true, NULL)) < 0 ||
            (r = load_tensor(&l, "token_types.weight", b->wtt, C, NT, false, &found)) < 0 ||
            (r = load_tensor(&l, "token_embd_norm.weight", b->emb_ln_g, C, 0, true, NULL)) < 0 ||
            (r = load_tensor(&l, "token_embd_norm.bias", b->emb_ln_b, C, 0, true, NULL)) < 0)
                return r;
        if (!found)
                memset(b->wtt, 0, NT * C * sizeof(float));

        for (size_t i = 0; i < L; i++) {
                struct dsa_bert_layer *y = &b->layers[i];
                static const struct {
                        const char *name;
                        size_t off;
                } qkv[] = { { "attn_q", 0 }, { "attn_k", 1 }, { "attn_v", 2 } };

                y->qkv_b = carve(&cur, 3 * C);
                y->o_b = carve(&cur, C);
                y->ln1_g = carve(&cur, C);
                y->ln1_b = carve(&cur, C);
                y->up_b = carve(&cur, F);
                y->down_b = carve(&cur, C);
                y->ln2_g = carve(&cur, C);
                y->ln2_b = carve(&cur, C);

                for (size_t j = 0; j < ELEMENTSOF(qkv); j++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s.weight", i, qkv[j].name);
                        r = load_tensor(&l, name, mat + qkv[j].off * C * C, C, C, true, NULL);
                        if (r < 0)
                                return r;
                        snprintf(name, sizeof(name), "blk.%zu.%s.bias", i, qkv[j].name);
                        r = load_tensor(&l, name, y->qkv_b + qkv[j].off * C, C, 0, true, NULL);
                        if (r < 0)
                                return r;
                }
                r = dsa_packed_f32_new(mat, 3 * C, C, &y->qkv_w);
                if (r < 0)
                        return dsa__error(r, "cannot pack layer %zu's QKV weights", i);

                /* (in, out) in ggml order: the matrix is (out, in) row-major; out 0: a LayerNorm. */
                const struct {
                        const char *name;
                        struct dsa_packed_f32 **w;
                        float *g, *bias;
                        size_t in, out;
                } rest[] = {
                        { "attn_output", &y->o_w, NULL, y->o_b, C, C },
                        { "ffn_up", &y->up_w, NULL, y->up_b, C, F },
                        { "ffn_down", &y->down_w, NULL, y->down_b, F, C },
                        { "attn_output_norm", NULL, y->ln1_g, y->ln1_b, C, 0 },
                        { "layer_output_norm", NULL, y->ln2_g, y->ln2_b, C, 0 },
                };
                for (size_t j = 0; j < ELEMENTSOF(rest); j++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s.weight", i, rest[j].name);
                        r = load_tensor(&l, name, rest[j].w ? mat : rest[j].g, rest[j].in, rest[j].out, true,
                                        NULL);
                        if (r < 0)
                                return r;
                        if (rest[j].w) {
                                r = dsa_packed_f32_new(mat, rest[j].out, rest[j].in, rest[j].w);
                                if (r < 0)
                                        return dsa__error(r, "cannot pack tensor '%s'", name);
                        }
                        snprintf(name, sizeof(name), "blk.%zu.%s.bias", i, rest[j].name);
                        r = load_tensor(&l, name, rest[j].bias, rest[j].out ? rest[j].out : rest[j].in, 0,
                                        true, NULL);
                        if (r < 0)
                                return r;
                }
        }

        if (cfg->has_pooler) {
                b->pool_w = carve(&cur, C * C);
                b->pool_b = carve(&cur, C);
                if ((r = load_tensor(&l, "cls.weight", b->pool_w, C, C, true, NULL)) < 0 ||
                    (r = load_tensor(&l, "cls.bias", b->pool_b, C, 0, true, NULL)) < 0)
                        return r;
        }
        if (NL > 0) {
                b->cls_w = carve(&cur, NL * C);
                b->cls_b = carve(&cur, NL);
                if ((r = load_tensor(&l, "cls.output.weight", b->cls_w, C, NL, true, NULL)) < 0 ||
                    (r = load_tensor(&l, "cls.output.bias", b->cls_b, NL, 0, true, NULL)) < 0)
                        return r;
        }
        assert(cur == b->arena + total);

        *ret = TAKE_PTR(b);
        return 0;
}

/* Checks a batch against the model before any of it is used as an index. */
static int batch_check(const struct dsa_bert_config *cfg, const struct dsa_batch *b, size_t *ret_BT) {
        size_t BT;

        if (!b->ids || b->B == 0 || b->T == 0)
                return dsa__error(-EINVAL, "empty batch");
        if (b->T > cfg->n_ctx)
                return dsa__error(-EINVAL, "sequence of %zu tokens is longer than the model's context of %u",
                                  b->T, cfg->n_ctx);
        if (!size_mul_ok(b->B, b->T, &BT) || BT > SIZE_MAX / sizeof(float) / (8 * (size_t) cfg->n_embd + cfg->n_ff))
                return dsa__error(-EOVERFLOW, "batch of %zu x %zu tokens is too large", b->B, b->T);
        for (size_t i = 0; i < BT; i++) {
                if (b->ids[i] < 0 || (uint32_t) b->ids[i] >= cfg->n_vocab)
                        return dsa__error(-EINVAL, "token id %d at %zu is outside the vocabulary of %u",
                                          b->ids[i], i, cfg->n_vocab);
                if (b->type_ids && (b->type_ids[i] < 0 || (uint32_t) b->type_ids[i] >= cfg->n_type))
                        return dsa__error(-EINVAL, "token type %d at %zu is outside the model's %u types",
                                          b->type_ids[i], i, cfg->n_type);
        }
        *ret_BT = BT;
        return 0;
}

/* One forward's shapes, buffers and the step being split across the pool; each task below reads
 * it and writes only the part of the output its [begin, end) names. */
struct fwd {
        const struct dsa_bert *bert;
        const struct dsa_kernels *k;
        const struct dsa_batch *b;
        size_t T, C, NH, HS, att_scratch;
        float eps, scale;
        float *x, *qkv, *att, *tmp, *scratch, *probs;
        /* linear: in (N, ldi) x w -> out (N, ldo) */
        const struct dsa_packed_f32 *w;
        const float *in, *bias;
        float *out;
        size_t N, ldi, ldo, OC, NR;
        enum dsa_epilogue ep;
        /* residual + LayerNorm */
        const float *g, *beta;
};

/* x rows [begin, end) = LayerNorm(word + token type + position embeddings). */
static void task_embed(void *arg, size_t begin, size_t end) {
        const struct fwd *f = arg;
        const struct dsa_bert *bert = f->bert;
        const struct dsa_batch *b = f->b;
        const size_t C = f->C;

        for (size_t bt = begin; bt < end; bt++) {
                const float *we = bert->wte + (size_t) b->ids[bt] * C;
                const float *wt = bert->wtt + (size_t) (b->type_ids ? b->type_ids[bt] : 0) * C;
                const float *wp = bert->wpe + (bt % f->T) * C;
                float *o = f->x + bt * C;
                /* HF adds word + token type first, then position. */
                for (size_t c = 0; c < C; c++)
                        o[c] = (we[c] + wt[c]) + wp[c];
        }
        f->k->layernorm_f32(f->x + begin * C, f->x + begin * C, bert->emb_ln_g, bert->emb_ln_b, end - begin,
                            C, f->eps);
}

/* Output panels [begin, end) of the current linear. */
static void task_linear(void *arg, size_t begin, size_t end) {
        const struct fwd *f = arg;
        const size_t oc1 = end * f->NR < f->OC ? end * f->NR : f->OC;

        dsa_linear_packed_f32(f->out, f->ldo, f->in, f->ldi, f->w, f->bias, f->N, begin * f->NR, oc1, f->ep);
}

/* (batch row, head) pairs [begin, end). Keys and values are read in place from qkv: the SIMD
 * kernels pack them into their scratch (K transposed, V in panels) once per pair. Pair p's
 * scratch, f->att_scratch floats at p f->att_scratch, is its own, so no two tasks share one. */
static void task_attention(void *arg, size_t begin, size_t end) {
        const struct fwd *f = arg;
        const size_t T = f->T, C = f->C, NH = f->NH, HS = f->HS;

        for (size_t p = begin; p < end; p++) {
                const size_t bb = p / NH, h = p % NH;
                const float *q = f->qkv + bb * T * 3 * C + h * HS;
                const uint8_t *valid = f->b->mask ? f->b->mask + bb * T : NULL;

                f->k->attention_f32(f->att + bb * T * C + h * HS, C, q, 3 * C, q + C, 3 * C, q + 2 * C,
                                    3 * C, valid, T, HS, f->scale, f->probs ? f->probs + p * T * T : NULL,
                                    f->scratch + p * f->att_scratch);
        }
}

/* Rows [begin, end): x = LayerNorm(tmp + x). */
static void task_residual_ln(void *arg, size_t begin, size_t end) {
        const struct fwd *f = arg;
        const size_t C = f->C;
        float *t = f->tmp + begin * C;
        const float *x = f->x + begin * C;

        for (size_t i = 0; i < (end - begin) * C; i++)
                t[i] += x[i];
        f->k->layernorm_f32(f->x + begin * C, t, f->g, f->beta, end - begin, C, f->eps);
}

/* Rows per task for the row-wise steps: enough work per dispatch to hide its cost. */
#define ROW_GRAIN 8

static void linear(struct dsa_threadpool *pool, struct fwd *f, float *out, size_t ldo, const float *in,
                   size_t ldi, const struct dsa_packed_f32 *w, const float *bias, enum dsa_epilogue ep) {
        f->out = out, f->ldo = ldo, f->in = in, f->ldi = ldi, f->w = w, f->bias = bias, f->ep = ep;
        f->OC = dsa_packed_f32_rows(w);
        f->NR = dsa_packed_f32_block(w);
        dsa_threadpool_for(pool, (f->OC + f->NR - 1) / f->NR, 1, task_linear, f);
}

int dsa__bert_forward(const struct dsa_bert *bert, const struct dsa_batch *b, float *ret_hidden,
                      struct dsa_trace *trace) {
        const struct dsa_bert_config *cfg = &bert->cfg;
        const size_t B = b->B, T = b->T, C = cfg->n_embd, NH = cfg->n_head, HS = C / NH, F = cfg->n_ff;
        const enum dsa_epilogue gelu = cfg->act == DSA_ACT_GELU_TANH ? DSA_EPILOGUE_GELU_TANH
                                                                     : DSA_EPILOGUE_GELU_ERF;
        struct dsa_threadpool *pool = bert->pool;
        size_t BT = 0;
        bool cached;
        int r;

        r = batch_check(cfg, b, &BT);
        if (r < 0)
                return r;

        /* Activations: qkv (BT,3C), att (BT,C), tmp (BT,C), ff (BT,F), then the attention
         * scratch of each (batch row, head). batch_check bounded BT (8C + F) floats in bytes, so
         * the activations cannot overflow; the scratch (about 2 T HS + 50 T floats a pair, so
         * about BT (2C + 50 NH) in all) is checked. */
        const size_t att_scratch = dsa_attention_scratch(T, HS);
        size_t n = BT * (5 * C + F), att_n, bytes;
        if (!size_mul_ok(B * NH, att_scratch, &att_n) || !size_add_ok(n, att_n, &n) ||
            !size_mul_ok(n, sizeof(float), &bytes))
                return dsa__error(-EOVERFLOW, "batch of %zu x %zu tokens is too large", B, T);
        float *act = scratch_get(bert->scratch, n, &cached);
        if (!act)
                return dsa__error(-ENOMEM, "cannot allocate activations for %zu x %zu tokens", B, T);

        struct fwd f = {
                .bert = bert, .k = dsa_kernels(), .b = b, .T = T, .C = C, .NH = NH, .HS = HS,
                .att_scratch = att_scratch,
                .eps = cfg->eps, .scale = 1.0f / sqrtf((float) HS), .N = BT,
                .x = ret_hidden, /* the residual stream lives in the caller's output */
        };
        float *qkv = act, *att = qkv + BT * 3 * C, *tmp = att + BT * C, *ff = tmp + BT * C;
        f.qkv = qkv, f.att = att, f.tmp = tmp, f.scratch = ff + BT * F;

        dsa_threadpool_for(pool, BT, ROW_GRAIN, task_embed, &f);
        if (trace && trace->hidden && trace->hidden[0])
                memcpy(trace->hidden[0], f.x, BT * C * sizeof(float));

        for (size_t l = 0; l < cfg->n_layer; l++) {
                const struct dsa_bert_layer *y = &bert->layers[l];

                linear(pool, &f, qkv, 3 * C, f.x, C, y->qkv_w, y->qkv_b, DSA_EPILOGUE_NONE);
                f.probs = trace && trace->attn ? trace->attn[l] : NULL;
                dsa_threadpool_for(pool, B * NH, 1, task_attention, &f);
                linear(pool, &f, tmp, C, att, C, y->o_w, y->o_b, DSA_EPILOGUE_NONE);
                f.g = y->ln1_g, f.beta = y->ln1_b;
                dsa_threadpool_for(pool, BT, ROW_GRAIN, task_residual_ln, &f);

                linear(pool, &f, ff, F, f.x, C, y->up_w, y->up_b, gelu);
                linear(pool, &f, tmp, C, ff, F, y->down_w, y->down_b, DSA_EPILOGUE_NONE);
                f.g = y->ln2_g, f.beta = y->ln2_b;
                dsa_threadpool_for(pool, BT, ROW_GRAIN, task_residual_ln, &f);

                if (trace && trace->hidden && trace->hidden[l + 1])
                        memcpy(trace->hidden[l + 1], f.x, BT * C * sizeof(float));
        }
        scratch_put(bert->scratch, act, cached);
        return 0;
}

/* out (B,C) = tanh(W h[CLS] + b) for each row. */
static int pooler(const struct dsa_bert *bert, size_t B, size_t T, const float *hidden, float *out) {
        const size_t C = bert->cfg.n_embd;
        _cleanup_free_ float *cls = calloc(B * C, sizeof(float));

        if (!cls)
                return -ENOMEM;
        for (size_t b = 0; b < B; b++)
                memcpy(cls + b * C, hidden + b * T * C, C * sizeof(float));
        dsa_linear_f32(out, C, cls, bert->pool_w, bert->pool_b, B, C, C);
        for (size_t i = 0; i < B * C; i++)
                out[i] = tanhf(out[i]);
        return 0;
}

int dsa__bert_pool(const struct dsa_bert *bert, const struct dsa_batch *b, const float *hidden,
                   enum dsa_pool mode, float *out) {
        const size_t B = b->B, T = b->T, C = bert->cfg.n_embd;

        switch (mode) {
        case DSA_POOL_CLS:
                for (size_t i = 0; i < B; i++)
                        memcpy(out + i * C, hidden + i * T * C, C * sizeof(float));
                return 0;
        case DSA_POOL_MEAN:
                for (size_t i = 0; i < B; i++) {
                        float *o = out + i * C;
                        size_t cnt = 0;
                        memset(o, 0, C * sizeof(float));
                        for (size_t t = 0; t < T; t++) {
                                if (b->mask && !b->mask[i * T + t])
                                        continue;
                                const float *h = hidden + (i * T + t) * C;
                                for (size_t c = 0; c < C; c++)
                                        o[c] += h[c];
                                cnt++;
                        }
                        if (cnt > 0)
                                for (size_t c = 0; c < C; c++)
                                        o[c] /= (float) cnt;
                }
                return 0;
        case DSA_POOL_POOLER:
                if (!bert->pool_w)
                        return dsa__error(-EOPNOTSUPP, "the model has no pooler");
                return pooler(bert, B, T, hidden, out);
        default:
                return dsa__error(-EINVAL, "pooling mode %d gives no single vector", (int) mode);
        }
}

int dsa__bert_classify(const struct dsa_bert *bert, const struct dsa_batch *b, const float *hidden,
                       float *ret_logits) {
        const size_t B = b->B, C = bert->cfg.n_embd;
        int r;

        if (!bert->cls_w)
                return dsa__error(-EOPNOTSUPP, "the model has no classifier head");
        _cleanup_free_ float *pooled = malloc(B * C * sizeof(float));
        if (!pooled)
                return -ENOMEM;
        /* Without a pooler (llama.cpp's converter drops BERT's), the classifier reads h[CLS]. */
        r = dsa__bert_pool(bert, b, hidden, bert->pool_w ? DSA_POOL_POOLER : DSA_POOL_CLS, pooled);
        if (r < 0)
                return r;
        dsa_linear_f32(ret_logits, bert->cfg.n_labels, pooled, bert->cls_w, bert->cls_b, B, C,
                       bert->cfg.n_labels);
        return 0;
}
