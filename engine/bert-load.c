/* Loading BERT weights into the forms the forward pass runs: every vector and the small matrices
 * in one fp32 arena, the token embeddings in their stored type, and each layer's four matrices
 * as linears (linear.h) in the format the file keeps them in: F32, F16 and BF16 stay so; I8
 * (with a per-channel ".scale" tensor and an optional ".input_scale") is the int8 variant;
 * Q8_0 (llama.cpp) is dequantized. Every tensor's shape is checked against the config and the
 * variant's layout (per-layer heads and FFN neurons), all of them before anything is allocated. */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/error.h"
#include "bert.h"
#include "kernels/kernels.h"

void dsa__embed_clear(struct dsa__embed *e) {
        if (!e->borrowed)
                free(e->data);
        free(e->scales);
        *e = (struct dsa__embed) { 0 };
}

void dsa__bert_drop_token_scores(struct dsa_bert *b) {
        for (uint32_t i = 0; i < b->cfg.n_layer; i++) {
                free(b->layers[i].token_score);
                b->layers[i].token_score = NULL;
        }
}

struct dsa_bert *dsa__bert_free(struct dsa_bert *b) {
        if (!b)
                return NULL;
        if (b->labels)
                for (uint32_t i = 0; i < b->cfg.n_labels; i++)
                        free(b->labels[i]);
        free(b->labels);
        if (b->layers)
                for (uint32_t i = 0; i < b->cfg.n_layer; i++)
                        for (int j = 0; j < _DSA__LIN_MAX; j++)
                                dsa__linear_clear(dsa__bert_linear(b, i, (enum dsa__bert_lin) j));
        if (b->layers)
                dsa__bert_drop_token_scores(b);
        free(b->layers);
        dsa__embed_clear(&b->wte);
        dsa__att_clear(&b->att);
        free(b->arena);
        dsa_threadpool_free(b->pool);
        dsa__bert_scratch_free(b->scratch);
        free(b);
        return NULL;
}

struct dsa__linear *dsa__bert_linear(struct dsa_bert *b, size_t layer, enum dsa__bert_lin which) {
        struct dsa_bert_layer *y = &b->layers[layer];

        switch (which) {
        case DSA__LIN_QKV:
                return &y->qkv;
        case DSA__LIN_O:
                return &y->o;
        case DSA__LIN_UP:
                return &y->up;
        default:
                return &y->down;
        }
}

unsigned dsa__usable_cpus(void) {
        cpu_set_t set;

        if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
                return (unsigned) CPU_COUNT(&set);
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (unsigned) n : 1;
}

int dsa__bert_set_threads(struct dsa_bert *b, unsigned n) {
        if (!b)
                return -EINVAL;
        return dsa__pool_set_threads(&b->pool, n);
}

int dsa__pool_set_threads(struct dsa_threadpool **pool, unsigned n) {
        struct dsa_threadpool *p = NULL;
        int r;

        if (n > 4096)
                return -EINVAL;
        if (n == 0)
                n = dsa__usable_cpus();
        if (n > 1) {
                r = dsa_threadpool_new(n, &p);
                if (r < 0)
                        return dsa__error(r, "cannot start %u threads", n);
        }
        dsa_threadpool_free(*pool);
        *pool = p;
        /* The pool is the only parallelism: OpenBLAS (pooler, classifier) stays on one thread. */
        dsa_blas_set_threads(1);
        return (int) n;
}

void dsa__embed_row(const struct dsa__embed *e, size_t i, float *out) {
        const size_t C = e->cols;
        const struct dsa_kernels *k = dsa_kernels();

        switch (e->fmt) {
        case DSA_WFORMAT_F16:
                k->f16_to_f32(out, (const uint16_t *) e->data + i * C, C);
                return;
        case DSA_WFORMAT_BF16:
                k->bf16_to_f32(out, (const uint16_t *) e->data + i * C, C);
                return;
        case DSA_WFORMAT_Q8: {
                const int8_t *q = (const int8_t *) e->data + i * C;
                const float s = e->scales[i];
                for (size_t c = 0; c < C; c++)
                        out[c] = (float) q[c] * s;
                return;
        }
        default:
                memcpy(out, (const float *) e->data + i * C, C * sizeof(float));
                return;
        }
}

size_t dsa__bert_weight_bytes(const struct dsa_bert *b) {
        const struct dsa_bert_config *c = &b->cfg;
        const struct dsa__embed *e = &b->wte;
        const size_t C = c->n_embd, HS = C / c->n_head;
        /* The vectors as the variant has them (the arena may hold slack after pruning). */
        size_t floats = ((size_t) c->n_ctx + c->n_type + 2) * C + (c->has_pooler ? (C + 1) * C : 0) +
                        (size_t) c->n_labels * (C + 1);
        size_t n = e->rows * e->cols * (e->fmt == DSA_WFORMAT_Q8 ? 1 : e->fmt == DSA_WFORMAT_F32 ? 4 : 2);

        if (e->scales)
                n += e->rows * sizeof(float);
        for (uint32_t i = 0; i < c->n_layer; i++) {
                const struct dsa_bert_layer *y = &b->layers[i];
                floats += 3 * y->n_head * HS + y->n_ff + 6 * C + (y->token_score ? C + 1 : 0);
                for (int j = 0; j < _DSA__LIN_MAX; j++)
                        n += dsa__linear_bytes(dsa__bert_linear((struct dsa_bert *) b, i, (enum dsa__bert_lin) j));
        }
        return n + floats * sizeof(float);
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
        bool sparse;
};

int dsa__find_tensor(dsa__bert_lookup_fn lookup, void *userdata, const char *name, uint64_t ne0, uint64_t ne1,
                     bool required, const struct dsa_tensor_view **ret) {
        const struct dsa_tensor_view *v = lookup(userdata, name);
        uint64_t want[DSA_MAX_DIMS] = { ne0, ne1 ? ne1 : 1, 1, 1 };

        *ret = NULL;
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
        *ret = v;
        return 0;
}

static int find_tensor(const struct loader *l, const char *name, uint64_t ne0, uint64_t ne1, bool required,
                       const struct dsa_tensor_view **ret) {
        return dsa__find_tensor(l->lookup, l->userdata, name, ne0, ne1, required, ret);
}

static int to_f32(const struct dsa_tensor_view *v, const char *name, float *dst) {
        int r = dsa_tensor_to_f32(v, dst);
        if (r < 0) {
                const char *tn = dsa_type_name(v->type);
                return dsa__error(r, "tensor '%s': cannot convert type %s to F32", v->name ? v->name : name,
                                  tn ? tn : "?");
        }
        return 0;
}

int dsa__load_tensor_f32(dsa__bert_lookup_fn lookup, void *userdata, const char *name, float *dst, uint64_t ne0,
                         uint64_t ne1, bool required, bool *ret_found) {
        const struct dsa_tensor_view *v;
        int r = dsa__find_tensor(lookup, userdata, name, ne0, ne1, required, &v);

        if (ret_found)
                *ret_found = v != NULL;
        if (r < 0 || !v)
                return r;
        return to_f32(v, name, dst);
}

static int load_tensor(const struct loader *l, const char *name, float *dst, uint64_t ne0, uint64_t ne1,
                       bool required, bool *ret_found) {
        return dsa__load_tensor_f32(l->lookup, l->userdata, name, dst, ne0, ne1, required, ret_found);
}

/* The int8 extras of an I8 matrix "X.weight" of rows rows: "X.scale" (rows, each finite and
 * >= 0) into scales, and the static activation scale "X.input_scale" (one value, finite and
 * >= 0; 0 when absent) into *ret_act. -EBADMSG for values out of range. */
static int load_q8_extras(dsa__bert_lookup_fn lookup, void *userdata, const char *wname, size_t rows, float *scales,
                          float *ret_act) {
        char name[112];
        size_t n = strlen(wname);
        float act = 0.0f;
        bool found;
        int r;

        assert(n > 7 && !strcmp(wname + n - 7, ".weight"));
        snprintf(name, sizeof(name), "%.*s.scale", (int) (n - 7), wname);
        r = dsa__load_tensor_f32(lookup, userdata, name, scales, rows, 0, true, NULL);
        if (r < 0)
                return r;
        for (size_t i = 0; i < rows; i++)
                if (!isfinite(scales[i]) || scales[i] < 0.0f)
                        return dsa__error(-EBADMSG, "tensor '%s' has a negative or non-finite scale", name);
        snprintf(name, sizeof(name), "%.*s.input_scale", (int) (n - 7), wname);
        r = dsa__load_tensor_f32(lookup, userdata, name, &act, 1, 0, false, &found);
        if (r < 0)
                return r;
        if (found && (!isfinite(act) || act < 0.0f))
                return dsa__error(-EBADMSG, "tensor '%s' is negative or not finite", name);
        *ret_act = act;
        return 0;
}

int dsa__load_linear_q8(dsa__bert_lookup_fn lookup, void *userdata, struct dsa__linear *lin,
                        const char *const *names, const struct dsa_tensor_view *const *v, const size_t *rows, size_t n,
                        size_t C) {
        size_t OC = 0, off = 0;
        float act = 0.0f;
        int r;

        for (size_t i = 0; i < n; i++)
                OC += rows[i];
        _cleanup_free_ int8_t *q = malloc(OC * C + 1);
        _cleanup_free_ float *s = malloc((OC ? OC : 1) * sizeof(float));
        if (!q || !s)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                float a = 0.0f;
                memcpy(q + off * C, v[i]->data, rows[i] * C);
                r = load_q8_extras(lookup, userdata, names[i], rows[i], s + off, &a);
                if (r < 0)
                        return r;
                act = MAX(act, a);
                off += rows[i];
        }
        r = dsa__linear_init_q8(lin, q, s, OC, C, act);
        return r < 0 ? dsa__error(r, "cannot prepare tensor '%s' for the GEMM", names[0]) : 0;
}

/* One linear made of the row blocks parts[0..n) stacked (Q, K, V fused, or one matrix): part i
 * is tensor names[i] of shape (in, rows[i]) in ggml order. All parts must share one storage
 * type, which picks the format: I8 -> Q8, F16/BF16 kept, the rest fp32 (sparse when the layout
 * says so). */
static int load_linear(const struct loader *l, struct dsa__linear *lin, const char *const *names,
                       const size_t *rows, size_t n, size_t in) {
        const struct dsa_tensor_view *v[3];
        size_t OC = 0;
        int r;

        assert(n <= 3);
        for (size_t i = 0; i < n; i++) {
                r = find_tensor(l, names[i], in, rows[i], true, &v[i]);
                if (r < 0)
                        return r;
                if (v[i]->type != v[0]->type)
                        return dsa__error(-EBADMSG, "tensors '%s' and '%s' have different types", names[0], names[i]);
                OC += rows[i];
        }

        if (v[0]->type == DSA_TYPE_I8)
                return dsa__load_linear_q8(l->lookup, l->userdata, lin, names, v, rows, n, in);

        const enum dsa_wformat fmt = v[0]->type == DSA_TYPE_F16    ? DSA_WFORMAT_F16
                                     : v[0]->type == DSA_TYPE_BF16 ? DSA_WFORMAT_BF16
                                     : l->sparse                   ? DSA_WFORMAT_SPARSE
                                                                   : DSA_WFORMAT_F32;
        /* OC x in floats: the tensors exist with these shapes, so the file bounds it. */
        _cleanup_free_ float *mat = malloc(OC * in * sizeof(float) + 1);
        size_t off = 0;
        if (!mat)
                return dsa__error(-ENOMEM, "cannot allocate a %zu x %zu matrix", OC, in);
        for (size_t i = 0; i < n; i++) {
                r = to_f32(v[i], names[i], mat + off * in);
                if (r < 0)
                        return r;
                off += rows[i];
        }
        r = dsa__linear_init(lin, mat, OC, in, fmt, 0.0f);
        return r < 0 ? dsa__error(r, "cannot prepare tensor '%s' for the GEMM", names[0]) : 0;
}

/* The token embeddings in their stored type (I8 needs "token_embd.scale", one per row). */
int dsa__embed_load(dsa__bert_lookup_fn lookup, void *userdata, struct dsa__embed *e, size_t V, size_t C,
                    bool borrow) {
        const struct loader ll = { .lookup = lookup, .userdata = userdata }, *l = &ll;
        const struct dsa_tensor_view *v;
        size_t esize;
        int r;

        r = find_tensor(l, "token_embd.weight", C, V, true, &v);
        if (r < 0)
                return r;
        e->rows = V, e->cols = C;
        switch (v->type) {
        case DSA_TYPE_F16:
        case DSA_TYPE_BF16:
                e->fmt = v->type == DSA_TYPE_F16 ? DSA_WFORMAT_F16 : DSA_WFORMAT_BF16;
                esize = 2;
                break;
        case DSA_TYPE_I8:
                e->fmt = DSA_WFORMAT_Q8;
                esize = 1;
                e->scales = malloc(V * sizeof(float));
                if (!e->scales)
                        return -ENOMEM;
                r = load_tensor(l, "token_embd.scale", e->scales, V, 0, true, NULL);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < V; i++)
                        if (!isfinite(e->scales[i]) || e->scales[i] < 0.0f)
                                return dsa__error(-EBADMSG, "tensor 'token_embd.scale' has a negative or non-finite value");
                break;
        default:
                e->fmt = DSA_WFORMAT_F32;
                esize = 4;
                break;
        }
        /* Stored as run: the file's bytes can serve in place. */
        if (borrow && (v->type == DSA_TYPE_F32 || esize < 4) && (uintptr_t) v->data % esize == 0) {
                e->data = (void *) v->data;
                e->borrowed = true;
                return 0;
        }
        e->data = malloc(V * C * esize);
        if (!e->data)
                return dsa__error(-ENOMEM, "cannot allocate the token embeddings");
        if (esize == 4)
                return to_f32(v, "token_embd.weight", e->data);
        memcpy(e->data, v->data, V * C * esize);
        return 0;
}

/* Every tensor the model needs, checked for presence and shape before anything is allocated:
 * the sizes a file's keys claim are then backed by the file's own bytes, so a damaged config
 * cannot make the loader ask for more memory than the file could fill. */
static int check_shapes(const struct loader *l, const struct dsa_bert_config *cfg, const uint32_t *heads,
                        const uint32_t *ffs) {
        const size_t C = cfg->n_embd, HS = C / cfg->n_head;
        const struct dsa_tensor_view *v;
        char name[96];
        int r;

        if ((r = find_tensor(l, "token_embd.weight", C, cfg->n_vocab, true, &v)) < 0 ||
            (r = find_tensor(l, "position_embd.weight", C, cfg->n_ctx, true, &v)) < 0 ||
            (r = find_tensor(l, "token_types.weight", C, cfg->n_type, false, &v)) < 0 ||
            (r = find_tensor(l, "token_embd_norm.weight", C, 0, true, &v)) < 0 ||
            (r = find_tensor(l, "token_embd_norm.bias", C, 0, true, &v)) < 0)
                return r;
        for (size_t i = 0; i < cfg->n_layer; i++) {
                const size_t A = (heads ? heads[i] : cfg->n_head) * HS, F = ffs ? ffs[i] : cfg->n_ff;
                const struct {
                        const char *name;
                        size_t ne0, ne1;
                } t[] = {
                        { "attn_q.weight", C, A },       { "attn_k.weight", C, A },      { "attn_v.weight", C, A },
                        { "attn_q.bias", A, 0 },         { "attn_k.bias", A, 0 },        { "attn_v.bias", A, 0 },
                        { "attn_output.weight", A, C },  { "attn_output.bias", C, 0 },   { "ffn_up.weight", C, F },
                        { "ffn_up.bias", F, 0 },         { "ffn_down.weight", F, C },    { "ffn_down.bias", C, 0 },
                        { "attn_output_norm.weight", C, 0 }, { "attn_output_norm.bias", C, 0 },
                        { "layer_output_norm.weight", C, 0 }, { "layer_output_norm.bias", C, 0 },
                };
                for (size_t j = 0; j < ELEMENTSOF(t); j++) {
                        snprintf(name, sizeof(name), "blk.%zu.%s", i, t[j].name);
                        if ((r = find_tensor(l, name, t[j].ne0, t[j].ne1, true, &v)) < 0)
                                return r;
                }
        }
        if (cfg->has_pooler && ((r = find_tensor(l, "cls.weight", C, C, true, &v)) < 0 ||
                                (r = find_tensor(l, "cls.bias", C, 0, true, &v)) < 0))
                return r;
        if (cfg->n_labels > 0 && ((r = find_tensor(l, "cls.output.weight", C, cfg->n_labels, true, &v)) < 0 ||
                                  (r = find_tensor(l, "cls.output.bias", cfg->n_labels, 0, true, &v)) < 0))
                return r;
        return 0;
}

/* blk.N.token_score.weight (C + 1, optional): a learned token-pruning score, allowed only on a
 * layer that prunes tokens (not the last) and finite. */
static int load_token_score(const struct loader *l, struct dsa_bert_layer *y, size_t i, size_t C, bool can_prune) {
        _cleanup_free_ float *w = NULL;
        char name[96];
        int r;

        snprintf(name, sizeof(name), "blk.%zu.token_score.weight", i);
        if (!l->lookup(l->userdata, name))
                return 0;
        if (!can_prune || !(y->token_keep < 1.0f))
                return dsa__error(-EBADMSG, "%s: layer %zu does not prune tokens (dsa.prune.token_keep)", name, i);
        w = malloc((C + 1) * sizeof(float));
        if (!w)
                return -ENOMEM;
        if ((r = load_tensor(l, name, w, C + 1, 0, true, NULL)) < 0)
                return r;
        for (size_t k = 0; k <= C; k++)
                if (!isfinite(w[k]))
                        return dsa__error(-EBADMSG, "%s: value %zu is not finite", name, k);
        y->token_score = TAKE_PTR(w);
        return 0;
}

/* Without a token_types tensor, the type count comes from a key alone: its zero rows are the
 * only memory it costs, so keep it small. */
#define BERT_MAX_TYPES_WITHOUT_TENSOR 1024u

int dsa__bert_load(const struct dsa_bert_config *cfg, const struct dsa__bert_layout *layout,
                   dsa__bert_lookup_fn lookup, void *userdata, struct dsa_bert **ret) {
        _cleanup_(dsa__bert_freep) struct dsa_bert *b = NULL;
        struct loader l = { lookup, userdata, layout && layout->sparse };
        size_t total = 0;
        bool found;
        int r;

        if (!cfg || !lookup || !ret)
                return -EINVAL;
        r = dsa__bert_config_check(cfg);
        if (r < 0)
                return r;

        const size_t V = cfg->n_vocab, C = cfg->n_embd, F = cfg->n_ff, L = cfg->n_layer, HS = C / cfg->n_head;
        const size_t NCTX = cfg->n_ctx, NT = cfg->n_type, NL = cfg->n_labels;

        for (size_t i = 0; layout && i < L; i++) {
                if (layout->n_head && (layout->n_head[i] == 0 || layout->n_head[i] > cfg->n_head))
                        return dsa__error(-EBADMSG, "dsa.bert.head_count_per_layer: layer %zu has %u heads, not "
                                          "1..%u (bert.attention.head_count)", i, layout->n_head[i], cfg->n_head);
                if (layout->n_ff && (layout->n_ff[i] == 0 || layout->n_ff[i] > cfg->n_ff))
                        return dsa__error(-EBADMSG, "dsa.bert.feed_forward_length_per_layer: layer %zu has %u FFN "
                                          "neurons, not 1..%u (bert.feed_forward_length)", i, layout->n_ff[i],
                                          cfg->n_ff);
                if (layout->token_keep && !(layout->token_keep[i] > 0.0f && layout->token_keep[i] <= 1.0f))
                        return dsa__error(-EBADMSG, "dsa.prune.token_keep: layer %zu keeps a fraction %g of tokens, "
                                          "not in (0, 1]", i,
                                          (double) layout->token_keep[i]);
        }

        r = check_shapes(&l, cfg, layout ? layout->n_head : NULL, layout ? layout->n_ff : NULL);
        if (r < 0)
                return r;
        if (!lookup(userdata, "token_types.weight") && NT > BERT_MAX_TYPES_WITHOUT_TENSOR)
                return dsa__error(-EBADMSG, "%zu token types but no token_types.weight tensor", NT);

        /* Vectors: per layer 3A + C + 2C + F_l + C + 2C, A <= C; the layer matrices are checked
         * against the file above, so these sums are bounded by its size. */
        bool ok = arena_add(&total, NCTX, C) && arena_add(&total, NT, C) && arena_add(&total, 2, C) &&
                  (!cfg->has_pooler || arena_add(&total, C + 1, C)) && arena_add(&total, NL, C + 1);
        for (size_t i = 0; ok && i < L; i++)
                ok = arena_add(&total, 1, 9 * C + (layout && layout->n_ff ? layout->n_ff[i] : F));
        size_t bytes;
        if (!ok || !size_mul_ok(total, sizeof(float), &bytes) || V > SIZE_MAX / 4 / C || MAX(3 * C, F) > SIZE_MAX / 4 / C)
                return dsa__error(-EOVERFLOW, "BERT weights do not fit in memory");

        b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->cfg = *cfg;
        dsa__att_init(&b->att);
        b->default_pool = cfg->n_labels > 0 && cfg->has_pooler ? DSA_POOL_POOLER : DSA_POOL_CLS;
        b->layers = calloc(L, sizeof(*b->layers));
        if (!b->layers)
                return -ENOMEM;
        void *arena = NULL;
        if (posix_memalign(&arena, 64, bytes ? bytes : 64) != 0)
                return dsa__error(-ENOMEM, "cannot allocate %zu bytes for BERT weights", bytes);
        b->arena = arena;
        b->scratch = dsa__bert_scratch_new();
        if (!b->scratch)
                return -ENOMEM;

        float *cur = b->arena;
        b->wpe = carve(&cur, NCTX * C);
        b->wtt = carve(&cur, NT * C);
        b->emb_ln_g = carve(&cur, C);
        b->emb_ln_b = carve(&cur, C);

        if ((r = dsa__embed_load(l.lookup, l.userdata, &b->wte, V, C, layout && layout->borrow_embed)) < 0 ||
            (r = load_tensor(&l, "position_embd.weight", b->wpe, C, NCTX, true, NULL)) < 0 ||
            (r = load_tensor(&l, "token_types.weight", b->wtt, C, NT, false, &found)) < 0 ||
            (r = load_tensor(&l, "token_embd_norm.weight", b->emb_ln_g, C, 0, true, NULL)) < 0 ||
            (r = load_tensor(&l, "token_embd_norm.bias", b->emb_ln_b, C, 0, true, NULL)) < 0)
                return r;
        if (!found)
                memset(b->wtt, 0, NT * C * sizeof(float));

        for (size_t i = 0; i < L; i++) {
                struct dsa_bert_layer *y = &b->layers[i];
                char qn[3][96], bn[96];
                static const char *const qkv[] = { "attn_q", "attn_k", "attn_v" };

                y->n_head = layout && layout->n_head ? layout->n_head[i] : cfg->n_head;
                y->n_ff = layout && layout->n_ff ? layout->n_ff[i] : cfg->n_ff;
                y->token_keep = layout && layout->token_keep ? layout->token_keep[i] : 1.0f;
                const size_t A = y->n_head * HS, FL = y->n_ff;

                y->qkv_b = carve(&cur, 3 * A);
                y->o_b = carve(&cur, C);
                y->ln1_g = carve(&cur, C);
                y->ln1_b = carve(&cur, C);
                y->up_b = carve(&cur, FL);
                y->down_b = carve(&cur, C);
                y->ln2_g = carve(&cur, C);
                y->ln2_b = carve(&cur, C);

                const char *names[3];
                const size_t rows[3] = { A, A, A };
                for (size_t j = 0; j < 3; j++) {
                        snprintf(qn[j], sizeof(qn[j]), "blk.%zu.%s.weight", i, qkv[j]);
                        names[j] = qn[j];
                        snprintf(bn, sizeof(bn), "blk.%zu.%s.bias", i, qkv[j]);
                        r = load_tensor(&l, bn, y->qkv_b + j * A, A, 0, true, NULL);
                        if (r < 0)
                                return r;
                }
                r = load_linear(&l, &y->qkv, names, rows, 3, C);
                if (r < 0)
                        return r;

                /* (in, out) in ggml order: the matrix is (out, in) row-major; lin NULL: a LayerNorm. */
                const struct {
                        const char *name;
                        struct dsa__linear *lin;
                        float *g, *bias;
                        size_t in, out;
                } rest[] = {
                        { "attn_output", &y->o, NULL, y->o_b, A, C },
                        { "ffn_up", &y->up, NULL, y->up_b, C, FL },
                        { "ffn_down", &y->down, NULL, y->down_b, FL, C },
                        { "attn_output_norm", NULL, y->ln1_g, y->ln1_b, C, 0 },
                        { "layer_output_norm", NULL, y->ln2_g, y->ln2_b, C, 0 },
                };
                for (size_t j = 0; j < ELEMENTSOF(rest); j++) {
                        snprintf(qn[0], sizeof(qn[0]), "blk.%zu.%s.weight", i, rest[j].name);
                        if (rest[j].lin) {
                                const char *nm[1] = { qn[0] };
                                r = load_linear(&l, rest[j].lin, nm, &rest[j].out, 1, rest[j].in);
                        } else
                                r = load_tensor(&l, qn[0], rest[j].g, rest[j].in, 0, true, NULL);
                        if (r < 0)
                                return r;
                        snprintf(bn, sizeof(bn), "blk.%zu.%s.bias", i, rest[j].name);
                        r = load_tensor(&l, bn, rest[j].bias, rest[j].lin ? rest[j].out : rest[j].in, 0, true, NULL);
                        if (r < 0)
                                return r;
                }
                if ((r = load_token_score(&l, y, i, C, i + 1 < L)) < 0)
                        return r;
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
        assert(cur <= b->arena + total);
        b->ff_max = 0;
        for (size_t i = 0; i < L; i++)
                b->ff_max = MAX(b->ff_max, (size_t) b->layers[i].n_ff);
        b->arena_floats = (size_t) (cur - b->arena);

        *ret = TAKE_PTR(b);
        return 0;
}
