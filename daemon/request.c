/* Requests: decoding one SQE + payload that a client wrote into shared memory (the caller has
 * already copied both out; everything here reads private memory only and trusts none of it),
 * and running requests on the engine, alone or batched, with the responses encoded per
 * include/dsa/ring.h. dsad_request_decode() is the fuzzed entry point. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "basic/unaligned.h"
#include "daemon.h"
#include "engine/tokenizer.h"

#define REQUEST_TEXTS_MAX 1024u

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF) without NUL: what the
 * tokenizer accepts, and what survives being handed to it as a C string. */
static bool utf8_valid(const uint8_t *s, size_t n) {
        size_t i = 0;

        while (i < n) {
                uint8_t c = s[i];
                size_t k;
                uint32_t cp, min;

                if (c == 0)
                        return false;
                if (c < 0x80) {
                        i++;
                        continue;
                }
                if ((c & 0xe0) == 0xc0)
                        k = 1, cp = c & 0x1f, min = 0x80;
                else if ((c & 0xf0) == 0xe0)
                        k = 2, cp = c & 0x0f, min = 0x800;
                else if ((c & 0xf8) == 0xf0)
                        k = 3, cp = c & 0x07, min = 0x10000;
                else
                        return false;
                if (n - i <= k)
                        return false;
                for (size_t j = 1; j <= k; j++) {
                        if ((s[i + j] & 0xc0) != 0x80)
                                return false;
                        cp = (cp << 6) | (s[i + j] & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return false;
                i += k + 1;
        }
        return true;
}

static bool op_known(uint32_t op) {
        return op == DSA_RING_OP_NOP || op == DSA_RING_OP_CLASSIFY || op == DSA_RING_OP_EMBED ||
               op == DSA_RING_OP_TOKENIZE;
}

int dsad_request_decode(const struct dsa_ring_sqe *sqe, const uint8_t *payload, size_t payload_len,
                        uint32_t n_slots, struct dsad_request **ret) {
        struct dsad_request *r;
        size_t n = 0, off = 0, text_bytes = 0;

        if (!sqe || (!payload && payload_len > 0) || !ret)
                return -EINVAL;
        if (!op_known(sqe->op))
                return dsa__error(-EINVAL, "unknown op %u", sqe->op);
        if (sqe->flags & ~(uint32_t) DSA_RING_SQE_NO_SPECIAL)
                return dsa__error(-EINVAL, "unknown flags 0x%x", sqe->flags);
        if (sqe->flags && sqe->op != DSA_RING_OP_TOKENIZE)
                return dsa__error(-EINVAL, "flags 0x%x on op %u", sqe->flags, sqe->op);
        if (sqe->op == DSA_RING_OP_EMBED ? sqe->pool > DSA_RING_POOL_NONE : sqe->pool != 0)
                return dsa__error(-EINVAL, "bad pool %u for op %u", sqe->pool, sqe->op);
        for (size_t i = 0; i < ELEMENTSOF(sqe->reserved); i++)
                if (sqe->reserved[i] != 0)
                        return dsa__error(-EINVAL, "reserved SQE field %zu is not zero", i);
        if (sqe->min_accuracy > 10000)
                return dsa__error(-EINVAL, "min_accuracy %u above 10000", sqe->min_accuracy);
        if (sqe->priority > DSA_RING_PRIORITY_LOW)
                return dsa__error(-EINVAL, "unknown priority %u", sqe->priority);
        if (sqe->slot >= n_slots)
                return dsa__error(-EINVAL, "slot %u out of range (%u slots)", sqe->slot, n_slots);
        if (sqe->len != payload_len)
                return dsa__error(-EINVAL, "SQE says %u payload bytes, slot holds %zu", sqe->len, payload_len);

        if (sqe->op == DSA_RING_OP_NOP) {
                if (payload_len != 0)
                        return dsa__error(-EINVAL, "NOP carries no payload");
        } else {
                /* First pass: check every length against what is left, so the second pass and the
                 * allocation size can trust them. */
                if (payload_len < 4)
                        return dsa__error(-EINVAL, "payload too short for a text count");
                n = unaligned_read_ne32(payload);
                off = 4;
                if (n == 0 || n > REQUEST_TEXTS_MAX)
                        return dsa__error(-EINVAL, "%zu texts (1..%u)", n, REQUEST_TEXTS_MAX);
                for (size_t i = 0; i < n; i++) {
                        if (payload_len - off < 4)
                                return dsa__error(-EINVAL, "text %zu: length runs past the payload", i);
                        uint32_t len = unaligned_read_ne32(payload + off);
                        off += 4;
                        if (len > payload_len - off)
                                return dsa__error(-EINVAL, "text %zu: %u bytes, %zu left", i, len,
                                                  payload_len - off);
                        if (!utf8_valid(payload + off, len))
                                return dsa__error(-EINVAL, "text %zu: not valid UTF-8 or holds NUL", i);
                        off += len;
                        text_bytes += len;
                }
                if (off != payload_len)
                        return dsa__error(-EINVAL, "%zu trailing bytes", payload_len - off);
        }

        /* One block: texts[n], lens[n], then the NUL-terminated texts. Sizes are bounded by
         * payload_len (≤ 16 MiB) and n (≤ 1024), so no product below overflows. */
        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->user_data = sqe->user_data;
        r->op = sqe->op;
        r->flags = sqe->flags;
        r->pool = sqe->pool;
        r->slot = sqe->slot;
        r->hints = (struct dsad_hints){
                .min_accuracy = sqe->min_accuracy / 10000.0,
                .max_latency_ms = sqe->max_latency_us / 1000.0,
                .priority = sqe->priority,
        };
        if (n > 0) {
                size_t block = n * (sizeof(char *) + sizeof(size_t)) + text_bytes + n;
                char *p;

                r->texts = malloc(block);
                if (!r->texts) {
                        free(r);
                        return -ENOMEM;
                }
                r->lens = (size_t *) (r->texts + n);
                p = (char *) (r->lens + n);
                off = 4;
                for (size_t i = 0; i < n; i++) {
                        uint32_t len = unaligned_read_ne32(payload + off);
                        off += 4;
                        memcpy(p, payload + off, len);
                        p[len] = 0;
                        r->texts[i] = p;
                        r->lens[i] = len;
                        p += len + 1;
                        off += len;
                        r->tokens += dsad_policy_tokens(len);
                }
                r->n_texts = n;
        }
        *ret = r;
        return 0;
}

struct dsad_request *dsad_request_free(struct dsad_request *r) {
        if (!r)
                return NULL;
        free(r->texts); /* lens and the text bytes live in the same block */
        if (r->model)
                dsad_model_unref(r->model);
        if (r->session)
                dsad__session_unref(r->session);
        free(r);
        return NULL;
}

static enum dsa_pool pool_of(const struct dsa_model *m, uint32_t pool) {
        switch (pool) {
        case DSA_RING_POOL_CLS:
                return DSA_POOL_CLS;
        case DSA_RING_POOL_MEAN:
                return DSA_POOL_MEAN;
        case DSA_RING_POOL_POOLER:
                return DSA_POOL_POOLER;
        default: {
                enum dsa_pool p = dsa_model_default_pool(m);
                return p == DSA_POOL_NONE ? DSA_POOL_MEAN : p;
        }
        }
}

/* Encodes n_texts rows of dim floats: CLASSIFY (with the argmax label per row) or EMBED. */
static ssize_t encode_rows(uint32_t op, const float *rows, size_t n_texts, size_t dim, uint8_t *buf,
                           size_t cap) {
        size_t row = dim * sizeof(float) + (op == DSA_RING_OP_CLASSIFY ? 4 : 0), need;
        uint8_t *p = buf + 8;

        if (!size_mul_ok(row, n_texts, &need) || !size_add_ok(need, 8, &need) || need > SSIZE_MAX)
                return -ENOBUFS;
        if (need > cap)
                return dsa__error(-ENOBUFS, "response needs %zu bytes, the slot has %zu", need, cap);
        unaligned_write_ne32(buf, (uint32_t) n_texts);
        unaligned_write_ne32(buf + 4, (uint32_t) dim);
        for (size_t i = 0; i < n_texts; i++) {
                const float *x = rows + i * dim;
                if (op == DSA_RING_OP_CLASSIFY) {
                        uint32_t best = 0;
                        for (size_t j = 1; j < dim; j++)
                                if (x[j] > x[best])
                                        best = (uint32_t) j;
                        unaligned_write_ne32(p, best);
                        p += 4;
                }
                memcpy(p, x, dim * sizeof(float));
                p += dim * sizeof(float);
        }
        return (ssize_t) need;
}

/* A response built piece by piece, never past cap: room() grows the buffer on demand (so a
 * short answer in a large slot costs what it uses) or fails with -ENOBUFS. */
struct out {
        uint8_t *buf;
        size_t len, size, cap;
};

static int out_room(struct out *o, size_t more) {
        size_t need, size;
        uint8_t *p;

        if (!size_add_ok(o->len, more, &need) || need > o->cap)
                return dsa__error(-ENOBUFS, "response does not fit in %zu bytes", o->cap);
        if (need <= o->size)
                return 0;
        size = MAX(need, MIN(o->cap, MAX(o->size * 2, (size_t) 4096)));
        p = realloc(o->buf, size);
        if (!p)
                return -ENOMEM;
        o->buf = p;
        o->size = size;
        return 0;
}

static void out_u32(struct out *o, uint32_t v) {
        unaligned_write_ne32(o->buf + o->len, v);
        o->len += 4;
}

static void out_bytes(struct out *o, const void *p, size_t n) {
        if (n > 0)
                memcpy(o->buf + o->len, p, n);
        o->len += n;
}

/* TOKENIZE: per text its ids, then the vocabulary string of each. */
static int run_tokenize(const struct dsa_model *m, const struct dsad_request *req, struct out *o) {
        const struct dsa_tokenizer *t = dsa_model_tokenizer(m);
        unsigned flags = req->flags & DSA_RING_SQE_NO_SPECIAL ? 0 : DSA_ENCODE_SPECIAL;
        int r;

        if (!t)
                return dsa__error(-EOPNOTSUPP, "the model has no tokenizer");
        r = out_room(o, 4);
        if (r < 0)
                return r;
        out_u32(o, (uint32_t) req->n_texts);
        for (size_t i = 0; i < req->n_texts; i++) {
                struct dsa_encoding e = {};

                r = dsa_tokenizer_encode(t, req->texts[i], req->lens[i], NULL, 0, flags, 0, &e);
                if (r < 0)
                        return r;
                /* e.n <= text bytes + 2: no overflow. */
                r = out_room(o, 4 + e.n * sizeof(int32_t));
                if (r >= 0) {
                        out_u32(o, (uint32_t) e.n);
                        out_bytes(o, e.ids, e.n * sizeof(int32_t));
                }
                for (size_t j = 0; r >= 0 && j < e.n; j++) {
                        const char *tok = dsa_tokenizer_token(t, e.ids[j]);
                        size_t l = tok ? strlen(tok) : 0;

                        r = out_room(o, 4 + l);
                        if (r >= 0) {
                                out_u32(o, (uint32_t) l);
                                out_bytes(o, tok, l);
                        }
                }
                dsa_encoding_clear(&e);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* EMBED with DSA_RING_POOL_NONE: one forward per text (no padding), every token's last hidden
 * state, as dsactl embed --pool none computes it in-process. */
static int run_embed_tokens(const struct dsa_model *m, const struct dsad_request *req, struct out *o) {
        const struct dsa_bert_config *c = dsa_model_bert_config(m);
        const struct dsa_tokenizer *t = dsa_model_tokenizer(m);
        int r;

        if (!c || !t)
                return dsa__error(-EOPNOTSUPP, "the model has no encoder to embed with");
        r = out_room(o, 8);
        if (r < 0)
                return r;
        out_u32(o, (uint32_t) req->n_texts);
        out_u32(o, c->n_embd);
        for (size_t i = 0; i < req->n_texts; i++) {
                struct dsa_encoding e = {};
                size_t bytes, T;

                r = dsa_tokenizer_encode(t, req->texts[i], req->lens[i], NULL, 0, DSA_ENCODE_SPECIAL,
                                         c->n_ctx, &e);
                if (r < 0)
                        return r;
                /* e.n <= n_ctx and n_embd come from a checked model: small products. */
                T = e.n;
                bytes = T * c->n_embd * sizeof(float);
                r = out_room(o, 4 + bytes);
                if (r >= 0 && T > 0) {
                        _cleanup_free_ uint8_t *mask = malloc(e.n);
                        struct dsa_batch b = { .B = 1, .T = e.n, .ids = e.ids, .type_ids = e.type_ids };

                        if (!mask)
                                r = -ENOMEM;
                        else {
                                memset(mask, 1, e.n);
                                b.mask = mask;
                                /* Written straight into the response, past its count. */
                                r = dsa_model_forward(m, &b, (float *) (void *) (o->buf + o->len + 4), NULL);
                        }
                }
                dsa_encoding_clear(&e);
                if (r < 0)
                        return r;
                out_u32(o, (uint32_t) T);
                o->len += bytes;
        }
        return 0;
}

/* Rows of floats per text for a CLASSIFY/EMBED run: its width, or -errno. */
static ssize_t row_dim(const struct dsa_model *m, uint32_t op) {
        const struct dsa_bert_config *c = dsa_model_bert_config(m);

        if (!c)
                return dsa__error(-EOPNOTSUPP, "the model is a decoder: dsad classifies and embeds with encoders only "
                                  "so far");
        if (op == DSA_RING_OP_CLASSIFY) {
                if (c->n_labels == 0)
                        return dsa__error(-EOPNOTSUPP, "the model has no classifier head");
                return c->n_labels;
        }
        return c->n_embd;
}

static size_t reply_cap_of(const struct dsad_request *r) {
        return r->reply_cap;
}

/* Runs reqs[0..n) in one engine call. On an engine error the whole call failed: the caller
 * retries one by one, so one bad request never fails the others. */
static int run_rows(const struct dsa_model *m, struct dsad_request *const *reqs, size_t n,
                    dsad_request_emit_t emit, void *userdata) {
        _cleanup_free_ const char **texts = NULL;
        _cleanup_free_ float *rows = NULL;
        _cleanup_free_ uint8_t *buf = NULL;
        size_t total = 0, bytes, k = 0, max_cap = 0;
        ssize_t dim = row_dim(m, reqs[0]->op);
        int r;

        if (dim < 0)
                return (int) dim;
        for (size_t i = 0; i < n; i++) {
                total += reqs[i]->n_texts; /* each <= 1024, n bounded by the scheduler */
                max_cap = MAX(max_cap, reply_cap_of(reqs[i]));
        }
        if (!size_mul_ok(total, (size_t) dim, &bytes) || !size_mul_ok(bytes, sizeof(float), &bytes))
                return -EOVERFLOW;
        texts = malloc(total * sizeof(*texts));
        rows = malloc(bytes ? bytes : 1);
        if (!texts || !rows)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < reqs[i]->n_texts; j++)
                        texts[k++] = reqs[i]->texts[j];

        if (reqs[0]->op == DSA_RING_OP_CLASSIFY)
                r = dsa_model_classify_texts(m, texts, NULL, total, rows);
        else
                r = dsa_model_embed_texts(m, texts, total, pool_of(m, reqs[0]->pool), rows);
        if (r < 0)
                return r;

        /* The largest response that can fit any of the caps; responses are encoded one after
         * the other into this buffer and handed out. */
        size_t row = (size_t) dim * sizeof(float) + 4, need_max = 8;
        for (size_t i = 0; i < n; i++)
                need_max = MAX(need_max, MIN(8 + row * reqs[i]->n_texts, reply_cap_of(reqs[i])));
        buf = malloc(need_max);
        if (!buf)
                return -ENOMEM;
        k = 0;
        for (size_t i = 0; i < n; i++) {
                ssize_t len = encode_rows(reqs[i]->op, rows + k * (size_t) dim, reqs[i]->n_texts,
                                          (size_t) dim, buf, MIN(need_max, reply_cap_of(reqs[i])));
                k += reqs[i]->n_texts;
                emit(reqs[i], len < 0 ? (int) len : 0, buf, len < 0 ? 0 : (size_t) len, userdata);
        }
        return 0;
}

static void run_one(const struct dsa_model *m, struct dsad_request *req, dsad_request_emit_t emit,
                    void *userdata) {
        int r;

        switch (req->op) {
        case DSA_RING_OP_NOP:
                emit(req, 0, NULL, 0, userdata);
                return;
        case DSA_RING_OP_TOKENIZE:
        case DSA_RING_OP_EMBED:
                if (req->op == DSA_RING_OP_EMBED && req->pool != DSA_RING_POOL_NONE)
                        break;
                {
                        struct out o = { .cap = reply_cap_of(req) };

                        r = req->op == DSA_RING_OP_TOKENIZE ? run_tokenize(m, req, &o)
                                                            : run_embed_tokens(m, req, &o);
                        emit(req, r < 0 ? r : 0, o.buf, r < 0 ? 0 : o.len, userdata);
                        free(o.buf);
                }
                return;
        default:
                break;
        }
        r = run_rows(m, &req, 1, emit, userdata);
        if (r < 0)
                emit(req, r, NULL, 0, userdata);
}

void dsad_request_run_batch(const struct dsa_model *m, struct dsad_request *const *reqs, size_t n,
                            dsad_request_emit_t emit, void *userdata) {
        if (n == 0)
                return;
        if (!m) {
                for (size_t i = 0; i < n; i++)
                        emit(reqs[i], reqs[i]->op == DSA_RING_OP_NOP ? 0 : -ENOENT, NULL, 0, userdata);
                return;
        }
        if (n > 1 && (reqs[0]->op == DSA_RING_OP_CLASSIFY ||
                      (reqs[0]->op == DSA_RING_OP_EMBED && reqs[0]->pool != DSA_RING_POOL_NONE))) {
                if (run_rows(m, reqs, n, emit, userdata) >= 0)
                        return;
                /* Fall through: one by one, so the error lands on the request that caused it. */
        }
        for (size_t i = 0; i < n; i++)
                run_one(m, reqs[i], emit, userdata);
}

struct run_single {
        uint8_t *buf;
        size_t cap;
        ssize_t ret;
};

static void emit_single(struct dsad_request *req, int status, const void *payload, size_t len, void *userdata) {
        struct run_single *s = userdata;

        if (status < 0) {
                s->ret = status;
                return;
        }
        if (len > s->cap) {
                s->ret = dsa__error(-ENOBUFS, "response needs %zu bytes, %zu available", len, s->cap);
                return;
        }
        if (len > 0)
                memcpy(s->buf, payload, len);
        s->ret = (ssize_t) len;
}

ssize_t dsad_request_run(struct dsad_request *req, uint8_t *buf, size_t cap) {
        struct run_single s = { .buf = buf, .cap = cap, .ret = -EIO };
        size_t saved;

        if (!req || (!buf && cap > 0))
                return -EINVAL;
        if (!req->model || !dsad_model_loaded(req->model))
                return dsa__error(-ENOENT, "the model is no longer loaded");
        saved = req->reply_cap;
        req->reply_cap = cap;
        dsad_request_run_batch(dsad_model_engine(req->model), &req, 1, emit_single, &s);
        req->reply_cap = saved;
        return s.ret;
}
