/* One linear layer in any weight format, split across a thread pool: dense and sparse weights by
 * output-column blocks; int8 weights first quantize the input rows (split by rows), then the
 * int8 GEMM by column blocks, so each row is quantized once, not once per thread. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "basic/error.h"
#include "kernels/gemm-q8.h"
#include "kernels/gemm-sparse.h"
#include "linear.h"

static const char *const wformat_names[_DSA_WFORMAT_MAX] = {
        [DSA_WFORMAT_F32] = "f32",   [DSA_WFORMAT_F16] = "f16",       [DSA_WFORMAT_BF16] = "bf16",
        [DSA_WFORMAT_Q8] = "int8",   [DSA_WFORMAT_SPARSE] = "sparse",
};

const char *dsa_wformat_name(enum dsa_wformat f) {
        return (unsigned) f < _DSA_WFORMAT_MAX ? wformat_names[f] : NULL;
}

int dsa_wformat_from_name(const char *s, enum dsa_wformat *ret) {
        for (int f = 0; f < _DSA_WFORMAT_MAX; f++)
                if (s && !strcmp(s, wformat_names[f])) {
                        *ret = (enum dsa_wformat) f;
                        return 0;
                }
        return -EINVAL;
}

int dsa__linear_reformat(struct dsa__linear *l, enum dsa_wformat fmt, float act_scale) {
        _cleanup_free_ float *w = malloc((l->OC * l->C + 1) * sizeof(float));
        struct dsa__linear n;
        int r;

        if (!w || dsa__linear_unpack(l, w) < 0)
                return -ENOMEM;
        if ((r = dsa__linear_init(&n, w, l->OC, l->C, fmt, act_scale)) < 0)
                return r;
        dsa__linear_clear(l);
        *l = n;
        return 0;
}

void dsa__linear_clear(struct dsa__linear *l) {
        dsa_packed_f32_free(l->dense);
        dsa_packed_q8_free(l->q8);
        dsa_packed_sparse_free(l->sparse);
        *l = (struct dsa__linear) { .fmt = DSA_WFORMAT_F32 };
}

int dsa__linear_init(struct dsa__linear *l, const float *weight, size_t OC, size_t C, enum dsa_wformat fmt,
                     float act_scale) {
        struct dsa__linear n = { .fmt = fmt, .OC = OC, .C = C };
        int r;

        /* An empty matrix (a layer whose heads or neurons were all pruned) adds only its bias:
         * the dense GEMM handles that shape. */
        if (OC == 0 || C == 0)
                fmt = n.fmt = DSA_WFORMAT_F32;

        switch (fmt) {
        case DSA_WFORMAT_F32:
                r = dsa_packed_f32_new(weight, OC, C, &n.dense);
                break;
        case DSA_WFORMAT_F16:
                r = dsa_packed_f32_new_typed(weight, OC, C, DSA_WTYPE_F16, &n.dense);
                break;
        case DSA_WFORMAT_BF16:
                /* The vdpbf16ps kernel where the CPU has AVX512-BF16 (activations rounded to
                 * bf16 too: kernels.h), else bf16 storage with fp32 arithmetic. */
                r = dsa_packed_f32_new_typed(weight, OC, C, dsa_packed_f32_default_wtype(DSA_WTYPE_BF16), &n.dense);
                break;
        case DSA_WFORMAT_Q8: {
                size_t bytes = OC * C;
                _cleanup_free_ int8_t *q = malloc(bytes ? bytes : 1);
                _cleanup_free_ float *s = malloc((OC ? OC : 1) * sizeof(float));
                if (!q || !s)
                        return -ENOMEM;
                dsa_quantize_weight_q8(q, s, weight, OC, C);
                return dsa__linear_init_q8(l, q, s, OC, C, act_scale);
        }
        case DSA_WFORMAT_SPARSE:
                r = dsa_packed_sparse_new(weight, OC, C, &n.sparse);
                break;
        default:
                return -EINVAL;
        }
        if (r < 0)
                return r;
        *l = n;
        return 0;
}

int dsa__linear_init_q8(struct dsa__linear *l, const int8_t *q, const float *scales, size_t OC, size_t C,
                        float act_scale) {
        struct dsa__linear n = { .fmt = DSA_WFORMAT_Q8, .OC = OC, .C = C, .act_scale = act_scale };
        int r;

        if (!(act_scale >= 0.0f) || act_scale > 1e30f)
                return -EINVAL;
        if (OC == 0 || C == 0)
                return dsa__linear_init(l, NULL, OC, C, DSA_WFORMAT_F32, 0.0f);
        r = dsa_packed_q8_new(q, scales, OC, C, &n.q8);
        if (r < 0)
                return r;
        *l = n;
        return 0;
}

int dsa__linear_unpack(const struct dsa__linear *l, float *weight) {
        switch (l->fmt) {
        case DSA_WFORMAT_Q8: {
                _cleanup_free_ int8_t *q = malloc(l->OC * l->C + 1);
                _cleanup_free_ float *s = malloc((l->OC + 1) * sizeof(float));
                if (!q || !s)
                        return -ENOMEM;
                dsa_packed_q8_unpack(l->q8, q, s);
                for (size_t o = 0; o < l->OC; o++)
                        for (size_t c = 0; c < l->C; c++)
                                weight[o * l->C + c] = (float) q[o * l->C + c] * s[o];
                return 0;
        }
        case DSA_WFORMAT_SPARSE:
                dsa_packed_sparse_unpack(l->sparse, weight);
                return 0;
        default:
                dsa_packed_f32_unpack(l->dense, weight);
                return 0;
        }
}

void dsa__linear_unpack_q8(const struct dsa__linear *l, int8_t *q, float *scales) {
        assert(l->fmt == DSA_WFORMAT_Q8);
        dsa_packed_q8_unpack(l->q8, q, scales);
}

size_t dsa__linear_bytes(const struct dsa__linear *l) {
        switch (l->fmt) {
        case DSA_WFORMAT_Q8:
                return dsa_packed_q8_bytes(l->q8);
        case DSA_WFORMAT_SPARSE:
                return dsa_packed_sparse_bytes(l->sparse);
        default:
                return l->dense ? dsa_packed_f32_bytes(l->dense) : 0;
        }
}

size_t dsa__linear_scratch(const struct dsa__linear *l, size_t N) {
        if (l->fmt != DSA_WFORMAT_Q8)
                return 0;
        /* The int8 rows, then one float scale per row, 64-byte aligned. */
        size_t rows = N * dsa_q8_row_stride(l->C);
        return (rows + 63) / 64 * 64 + N * sizeof(float);
}

struct job {
        const struct dsa__linear *l;
        float *out;
        size_t ldo, ldi, N, NR;
        const float *in, *bias;
        enum dsa_epilogue ep;
        int8_t *q;
        float *qs;
};

static void task_dense(void *arg, size_t begin, size_t end) {
        const struct job *j = arg;
        const size_t oc1 = MIN(end * j->NR, j->l->OC);

        dsa_linear_packed_f32(j->out, j->ldo, j->in, j->ldi, j->l->dense, j->bias, j->N, begin * j->NR, oc1, j->ep);
}

static void task_sparse(void *arg, size_t begin, size_t end) {
        const struct job *j = arg;
        const size_t oc1 = MIN(end * j->NR, j->l->OC);

        dsa_linear_packed_sparse(j->out, j->ldo, j->in, j->ldi, j->l->sparse, j->bias, j->N, begin * j->NR, oc1,
                                 j->ep);
}

static void task_quantize(void *arg, size_t begin, size_t end) {
        const struct job *j = arg;
        const size_t ldq = dsa_q8_row_stride(j->l->C);

        dsa_quantize_rows_q8(j->q + begin * ldq, j->qs + begin, j->in + begin * j->ldi, j->ldi, end - begin,
                             j->l->C, j->l->act_scale);
}

static void task_q8(void *arg, size_t begin, size_t end) {
        const struct job *j = arg;
        const size_t oc1 = MIN(end * j->NR, j->l->OC);

        dsa_linear_packed_q8(j->out, j->ldo, j->q, dsa_q8_row_stride(j->l->C), j->qs, j->l->q8, j->bias, j->N,
                             begin * j->NR, oc1, j->ep);
}

void dsa__linear_forward(struct dsa_threadpool *pool, const struct dsa__linear *l, float *out, size_t ldo,
                         const float *in, size_t ldi, const float *bias, size_t N, enum dsa_epilogue ep,
                         void *scratch) {
        struct job j = { .l = l, .out = out, .ldo = ldo, .ldi = ldi, .N = N, .in = in, .bias = bias, .ep = ep };

        if (N == 0 || l->OC == 0)
                return;
        switch (l->fmt) {
        case DSA_WFORMAT_Q8: {
                const size_t rows = N * dsa_q8_row_stride(l->C);
                j.q = scratch;
                j.qs = (float *) ((char *) scratch + (rows + 63) / 64 * 64);
                j.NR = dsa_packed_q8_block(l->q8);
                dsa_threadpool_for(pool, N, 8, task_quantize, &j);
                dsa_threadpool_for(pool, (l->OC + j.NR - 1) / j.NR, 1, task_q8, &j);
                return;
        }
        case DSA_WFORMAT_SPARSE:
                j.NR = dsa_packed_sparse_block(l->sparse);
                dsa_threadpool_for(pool, (l->OC + j.NR - 1) / j.NR, 1, task_sparse, &j);
                return;
        default:
                j.NR = dsa_packed_f32_block(l->dense);
                dsa_threadpool_for(pool, (l->OC + j.NR - 1) / j.NR, 1, task_dense, &j);
                return;
        }
}
