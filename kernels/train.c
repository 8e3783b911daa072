/* Training kernels (train.h): llm.c's forward/backward pairs in fp32, the matrix products
 * through OpenBLAS. Every backward accumulates (sgemm with beta = 1), so a tensor used twice (the
 * fused QKV rows, a relation Q Q^T) collects the sum of its uses with no extra pass. Sums over a
 * row run in double; elementwise work stays in float so the compiler can vectorize it. */
#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "basic/rng.h"

#include "kernels.h"
#include "train.h"

/* Below this many tokens the attention backward's per-row loops beat one BLAS call per head,
 * and they need no (T,T) scratch; they are also the path taken when that scratch cannot be
 * allocated, since these functions have no error to return. */
#define SMALL_T 8

#define GELU_K 0.7978845608028654f       /* sqrt(2/pi) */
#define GELU_C 0.044715f
#define INV_SQRT_2PI 0.3989422804014327f /* 1/sqrt(2 pi) */

static blasint bl(size_t n) {
        assert(n <= INT_MAX);
        return (blasint) n;
}

/* A (T,T) scratch for the sgemm paths, or NULL: T below SMALL_T, or no memory. */
static float *scratch_tt(size_t T) {
        if (T < SMALL_T || T > SIZE_MAX / sizeof(float) / T)
                return NULL;
        return malloc(T * T * sizeof(float));
}

/* inp (N,C), weight (OC,C) -> out (N,OC): dsa_linear_f32 with the rows packed. */
void dsa_matmul_forward_f32(float *out, const float *inp, const float *weight, const float *bias, size_t N,
                            size_t C, size_t OC) {
        dsa_linear_f32(out, OC, inp, weight, bias, N, C, OC);
}

/* dout (N,OC): dinp (N,C) += dout weight, dweight (OC,C) += dout^T inp, dbias (OC) += column
 * sums, the products accumulated by sgemm itself (beta = 1). */
void dsa_matmul_backward_f32(float *dinp, float *dweight, float *restrict dbias, const float *restrict dout,
                             const float *inp, const float *weight, size_t N, size_t C, size_t OC) {
        if (N == 0 || OC == 0)
                return;
        if (dinp && C > 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bl(N), bl(C), bl(OC), 1.0f, dout, bl(OC),
                            weight, bl(C), 1.0f, dinp, bl(C));
        if (dweight && C > 0)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bl(OC), bl(C), bl(N), 1.0f, dout, bl(OC),
                            inp, bl(C), 1.0f, dweight, bl(C));
        if (dbias)
                for (size_t n = 0; n < N; n++)
                        for (size_t o = 0; o < OC; o++)
                                dbias[o] += dout[n * OC + o];
}

/* inp (N,C), gamma, beta (C) -> out (N,C), may alias inp, and mean, rstd (N). The statistics are
 * summed in double; the normalization uses their float values, the very ones the backward sees. */
void dsa_layernorm_forward_f32(float *out, float *restrict mean, float *restrict rstd, const float *inp,
                               const float *restrict gamma, const float *restrict beta, size_t N, size_t C,
                               float eps) {
        for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * C;
                float *y = out + n * C;
                double s = 0, ss = 0;

                for (size_t c = 0; c < C; c++)
                        s += x[c];
                const double mu = C ? s / (double) C : 0.0;
                for (size_t c = 0; c < C; c++) {
                        double d = x[c] - mu;
                        ss += d * d;
                }
                const float m = (float) mu;
                const float r = (float) (1.0 / sqrt((C ? ss / (double) C : 0.0) + eps));
                for (size_t c = 0; c < C; c++)
                        y[c] = (x[c] - m) * r * gamma[c] + beta[c];
                mean[n] = m;
                rstd[n] = r;
        }
}

/* dout (N,C) -> dinp (N,C), dgamma, dbeta (C), llm.c's layernorm_backward: with xhat the
 * normalized input and g = gamma dout, dinp += rstd (g - mean(g) - xhat mean(g xhat)). */
void dsa_layernorm_backward_f32(float *restrict dinp, float *restrict dgamma, float *restrict dbeta,
                                const float *restrict dout, const float *restrict inp,
                                const float *restrict gamma, const float *restrict mean,
                                const float *restrict rstd, size_t N, size_t C) {
        for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * C, *dy = dout + n * C;
                const float m = mean[n], r = rstd[n];

                if (dbeta)
                        for (size_t c = 0; c < C; c++)
                                dbeta[c] += dy[c];
                if (dgamma)
                        for (size_t c = 0; c < C; c++)
                                dgamma[c] += (x[c] - m) * r * dy[c];
                if (!dinp || C == 0)
                        continue;

                double sg = 0, sgx = 0;
                for (size_t c = 0; c < C; c++) {
                        double g = (double) gamma[c] * dy[c];
                        sg += g;
                        sgx += g * ((x[c] - m) * r);
                }
                const float mg = (float) (sg / (double) C), mgx = (float) (sgx / (double) C);
                float *dx = dinp + n * C;
                for (size_t c = 0; c < C; c++)
                        dx[c] += (gamma[c] * dy[c] - mg - (x[c] - m) * r * mgx) * r;
        }
}

/* exp(x) for x <= 0 down to -87 (below: 0), branch-free so loops over it vectorize: 2^k e^r
 * with r in [-ln2/2, ln2/2], a degree-6 Taylor polynomial (relative error < 2e-7). libm's
 * erff/expf are scalar calls and were 16% of a distillation step. */
static inline float exp_neg(float x) {
        x = fmaxf(x, -87.0f);
        const float k = nearbyintf(x * 1.44269504088896341f);
        const float r = x - k * 0.693145751953125f - k * 1.428606765330187e-06f;
        float p = 1.0f / 720.0f;
        p = p * r + 1.0f / 120.0f;
        p = p * r + 1.0f / 24.0f;
        p = p * r + 1.0f / 6.0f;
        p = p * r + 0.5f;
        p = p * r + 1.0f;
        p = p * r + 1.0f;
        union {
                uint32_t u;
                float f;
        } e = { .u = (uint32_t) ((int32_t) k + 127) << 23 };
        return p * e.f;
}

/* Phi(x) = (1 + erf(x / sqrt 2)) / 2 through Abramowitz & Stegun 7.1.26 (|error of erf| <
 * 1.5e-7), and the normal density phi(x); both vectorizable. */
static inline float norm_cdf(float x, float *ret_pdf) {
        const float z = fabsf(x) * (float) M_SQRT1_2, t = 1.0f / (1.0f + 0.3275911f * z);
        const float e = exp_neg(-z * z);
        const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
        const float erf_abs = 1.0f - poly * e;
        *ret_pdf = e * INV_SQRT_2PI;
        return 0.5f + 0.5f * copysignf(erf_abs, x);
}

/* out may alias inp. */
void dsa_gelu_forward_f32(float *out, const float *inp, size_t n, bool tanh_approx) {
        if (tanh_approx)
                for (size_t i = 0; i < n; i++) {
                        float x = inp[i];
                        out[i] = 0.5f * x * (1.0f + tanhf(GELU_K * (x + GELU_C * x * x * x)));
                }
        else
                for (size_t i = 0; i < n; i++) {
                        float pdf, x = inp[i];
                        out[i] = x * norm_cdf(x, &pdf);
                }
}

/* d/dx of x Phi(x) is Phi(x) + x phi(x); of the tanh form, with t = tanh(u),
 * u = k (x + c x^3): (1 + t)/2 + x/2 (1 - t^2) k (1 + 3 c x^2). */
void dsa_gelu_backward_f32(float *restrict dinp, const float *restrict inp, const float *restrict dout,
                           size_t n, bool tanh_approx) {
        if (tanh_approx)
                for (size_t i = 0; i < n; i++) {
                        float x = inp[i];
                        float t = tanhf(GELU_K * (x + GELU_C * x * x * x));
                        float d = 0.5f * (1.0f + t) +
                                  0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_C * x * x);
                        dinp[i] += dout[i] * d;
                }
        else
                for (size_t i = 0; i < n; i++) {
                        float pdf, x = inp[i];
                        float d = norm_cdf(x, &pdf) + x * pdf;
                        dinp[i] += dout[i] * d;
                }
}

/* out may alias inp. */
void dsa_tanh_forward_f32(float *out, const float *inp, size_t n) {
        for (size_t i = 0; i < n; i++)
                out[i] = tanhf(inp[i]);
}

void dsa_tanh_backward_f32(float *restrict dinp, const float *restrict out, const float *restrict dout,
                           size_t n) {
        for (size_t i = 0; i < n; i++)
                dinp[i] += dout[i] * (1.0f - out[i] * out[i]);
}

/* row (T) in place: softmax over the j with mask[j] (mask NULL: all), 0 elsewhere; all zeros
 * when no key is valid. The maximum is subtracted first, so exp() never overflows. */
static void softmax_masked(float *row, size_t T, const uint8_t *mask) {
        float max = -INFINITY;
        bool any = false;
        double sum = 0;

        for (size_t j = 0; j < T; j++)
                if (!mask || mask[j]) {
                        max = fmaxf(max, row[j]);
                        any = true;
                }
        if (!any) {
                memset(row, 0, T * sizeof(float));
                return;
        }
        for (size_t j = 0; j < T; j++) {
                row[j] = !mask || mask[j] ? expf(row[j] - max) : 0.0f;
                sum += row[j];
        }
        const float inv = (float) (1.0 / sum);
        for (size_t j = 0; j < T; j++)
                row[j] *= inv;
}

/* a (B,T,lda), c (B,T,ldc), head h at column h D, mask (B,T) or NULL -> att (B,H,T,T). One
 * sgemm per (b,h) writes the scaled scores straight into att, read as strided slices. */
void dsa_scores_softmax_forward_f32(float *att, const float *a, size_t lda, const float *c, size_t ldc,
                                    const uint8_t *mask, size_t B, size_t T, size_t H, size_t D, float scale) {
        assert(lda >= H * D && ldc >= H * D);
        if (T == 0)
                return;
        for (size_t b = 0; b < B; b++)
                for (size_t h = 0; h < H; h++) {
                        float *s = att + (b * H + h) * T * T;

                        if (D > 0)
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bl(T), bl(T), bl(D), scale,
                                            a + b * T * lda + h * D, bl(lda), c + b * T * ldc + h * D, bl(ldc),
                                            0.0f, s, bl(T));
                        else
                                memset(s, 0, T * T * sizeof(float));
                        for (size_t i = 0; i < T; i++)
                                softmax_masked(s + i * T, T, mask ? mask + b * T : NULL);
                }
}

/* One head of one sequence without scratch: P, dP (T,T); a (T,lda), c (T,ldc); da, dc alike,
 * either NULL, or both the same memory (a relation Q Q^T): every update is a separate +=. */
static void scores_backward_rows(float *da, float *dc, const float *dP, const float *P, const float *a,
                                 size_t lda, const float *c, size_t ldc, size_t T, size_t D, float scale) {
        for (size_t i = 0; i < T; i++) {
                double dot = 0;

                for (size_t j = 0; j < T; j++)
                        dot += (double) P[i * T + j] * dP[i * T + j];
                for (size_t j = 0; j < T; j++) {
                        float g = scale * P[i * T + j] * (dP[i * T + j] - (float) dot);

                        if (g == 0.0f) /* masked keys, and rows with none */
                                continue;
                        if (da)
                                for (size_t d = 0; d < D; d++)
                                        da[i * lda + d] += g * c[j * ldc + d];
                        if (dc)
                                for (size_t d = 0; d < D; d++)
                                        dc[j * ldc + d] += g * a[i * lda + d];
                }
        }
}

/* datt, att (B,H,T,T) -> da (B,T,lda), dc (B,T,ldc). Through the softmax, per row,
 * dS = att (datt - sum_j datt att) into a (T,T) scratch; then da += scale dS c and
 * dc += scale dS^T a by sgemm with beta = 1. da and dc are not restrict: they may be column
 * slices of one fused gradient, or the same memory, and each sgemm is a separate +=. */
void dsa_scores_softmax_backward_f32(float *da, float *dc, const float *datt, const float *att, const float *a,
                                     size_t lda, const float *c, size_t ldc, size_t B, size_t T, size_t H,
                                     size_t D, float scale) {
        float *ds;

        assert(lda >= H * D && ldc >= H * D);
        if ((!da && !dc) || T == 0 || D == 0)
                return;
        ds = scratch_tt(T);
        for (size_t b = 0; b < B; b++)
                for (size_t h = 0; h < H; h++) {
                        const size_t off = (b * H + h) * T * T;
                        const float *P = att + off, *dP = datt + off;
                        const float *ab = a + b * T * lda + h * D, *cb = c + b * T * ldc + h * D;
                        float *dab = da ? da + b * T * lda + h * D : NULL;
                        float *dcb = dc ? dc + b * T * ldc + h * D : NULL;

                        if (!ds) {
                                scores_backward_rows(dab, dcb, dP, P, ab, lda, cb, ldc, T, D, scale);
                                continue;
                        }
                        for (size_t i = 0; i < T; i++) {
                                const float *p = P + i * T, *dp = dP + i * T;
                                float *s = ds + i * T;
                                double dot = 0;

                                for (size_t j = 0; j < T; j++)
                                        dot += (double) p[j] * dp[j];
                                const float fd = (float) dot;
                                for (size_t j = 0; j < T; j++)
                                        s[j] = p[j] * (dp[j] - fd);
                        }
                        if (dab)
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bl(T), bl(D), bl(T), scale, ds,
                                            bl(T), cb, bl(ldc), 1.0f, dab, bl(lda));
                        if (dcb)
                                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bl(T), bl(D), bl(T), scale, ds,
                                            bl(T), ab, bl(lda), 1.0f, dcb, bl(ldc));
                }
        free(ds);
}

/* The probabilities after dropout: P itself without keep K, else P * K into tmp (n). */
static const float *kept(float *tmp, const float *P, const float *K, size_t n) {
        if (!K)
                return P;
        for (size_t e = 0; e < n; e++)
                tmp[e] = P[e] * K[e];
        return tmp;
}

/* att, keep (B,H,T,T), v (B,T,ldv) -> out (B,T,ldo), head h at column h D: out_bh = (att keep)
 * v_bh, the product of att and keep formed in a (T,T) scratch when there is a keep. */
void dsa_attn_values_forward_f32(float *out, size_t ldo, const float *att, const float *keep, const float *v,
                                 size_t ldv, size_t B, size_t T, size_t H, size_t D) {
        float *pk;

        assert(ldo >= H * D && ldv >= H * D);
        if (T == 0 || D == 0)
                return;
        pk = keep ? scratch_tt(T) : NULL;
        for (size_t b = 0; b < B; b++)
                for (size_t h = 0; h < H; h++) {
                        const size_t off = (b * H + h) * T * T;
                        const float *P = att + off, *K = keep ? keep + off : NULL;
                        const float *vb = v + b * T * ldv + h * D;
                        float *ob = out + b * T * ldo + h * D;

                        if (K && !pk) {
                                for (size_t i = 0; i < T; i++) {
                                        float *o = ob + i * ldo;

                                        memset(o, 0, D * sizeof(float));
                                        for (size_t j = 0; j < T; j++) {
                                                float w = P[i * T + j] * K[i * T + j];
                                                for (size_t d = 0; d < D; d++)
                                                        o[d] += w * vb[j * ldv + d];
                                        }
                                }
                                continue;
                        }
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bl(T), bl(D), bl(T), 1.0f,
                                    kept(pk, P, K, T * T),
                                    bl(T), vb, bl(ldv), 0.0f, ob, bl(ldo));
                }
        free(pk);
}

/* dout (B,T,ldo) -> datt (B,H,T,T) += (dout v^T) keep, dv (B,T,ldv) += (att keep)^T dout. Without
 * keep both are one sgemm per (b,h) accumulating in place; with it, dout v^T and att keep each
 * pass through the (T,T) scratch. */
void dsa_attn_values_backward_f32(float *datt, float *dv, size_t ldv, const float *dout, size_t ldo,
                                  const float *att, const float *keep, const float *v, size_t B, size_t T, size_t H,
                                  size_t D) {
        float *tmp;

        assert(ldo >= H * D && ldv >= H * D);
        if ((!datt && !dv) || T == 0 || D == 0)
                return;
        tmp = keep ? scratch_tt(T) : NULL;
        for (size_t b = 0; b < B; b++)
                for (size_t h = 0; h < H; h++) {
                        const size_t off = (b * H + h) * T * T;
                        const float *P = att + off, *K = keep ? keep + off : NULL;
                        const float *vb = v + b * T * ldv + h * D, *dob = dout + b * T * ldo + h * D;
                        float *dA = datt ? datt + off : NULL;
                        float *dvb = dv ? dv + b * T * ldv + h * D : NULL;

                        if (K && !tmp) {
                                for (size_t i = 0; i < T; i++)
                                        for (size_t j = 0; j < T; j++) {
                                                const float *dy = dob + i * ldo;
                                                float w = P[i * T + j] * K[i * T + j];

                                                if (dA) {
                                                        float s = 0;
                                                        for (size_t d = 0; d < D; d++)
                                                                s += dy[d] * vb[j * ldv + d];
                                                        dA[i * T + j] += K[i * T + j] * s;
                                                }
                                                if (dvb && w != 0.0f)
                                                        for (size_t d = 0; d < D; d++)
                                                                dvb[j * ldv + d] += w * dy[d];
                                        }
                                continue;
                        }
                        if (dA && !K)
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bl(T), bl(T), bl(D), 1.0f, dob,
                                            bl(ldo), vb, bl(ldv), 1.0f, dA, bl(T));
                        else if (dA) {
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bl(T), bl(T), bl(D), 1.0f, dob,
                                            bl(ldo), vb, bl(ldv), 0.0f, tmp, bl(T));
                                for (size_t e = 0; e < T * T; e++)
                                        dA[e] += tmp[e] * K[e];
                        }
                        if (!dvb)
                                continue;
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bl(T), bl(D), bl(T), 1.0f,
                                    kept(tmp, P, K, T * T),
                                    bl(T), dob, bl(ldo), 1.0f, dvb, bl(ldv));
                }
        free(tmp);
}

/* logits (N,L) -> probs (N,L), may alias. temperature > 0, so the row maximum of logits is
 * that of logits / temperature. A row of all -inf becomes NaN, as in PyTorch. */
void dsa_softmax_rows_f32(float *probs, const float *logits, size_t N, size_t L, float temperature) {
        const float inv = 1.0f / temperature;

        for (size_t n = 0; n < N; n++) {
                const float *x = logits + n * L;
                float *p = probs + n * L;
                float max = -INFINITY;
                double sum = 0;

                for (size_t l = 0; l < L; l++)
                        max = fmaxf(max, x[l]);
                for (size_t l = 0; l < L; l++) {
                        p[l] = expf((x[l] - max) * inv);
                        sum += p[l];
                }
                const float r = (float) (1.0 / sum);
                for (size_t l = 0; l < L; l++)
                        p[l] *= r;
        }
}

/* keep (n): one draw per value, its top 24 bits a uniform u in [0,1) exact in float; dropped
 * when u < p. p <= 0 keeps everything and leaves the state alone; p >= 1 drops everything. */
void dsa_dropout_mask_f32(float *keep, size_t n, float p, uint64_t *state) {
        if (!(p > 0.0f)) {
                for (size_t i = 0; i < n; i++)
                        keep[i] = 1.0f;
                return;
        }

        const float scale = p < 1.0f ? (float) (1.0 / (1.0 - (double) p)) : 0.0f;
        uint64_t s = *state;
        for (size_t i = 0; i < n; i++)
                keep[i] = (float) (dsa_rng_next(&s) >> 40) * 0x1p-24f < p ? 0.0f : scale;
        *state = s;
}

/* torch.optim.AdamW: param *= 1 - lr wd; m, v the moving averages of grad and grad^2;
 * param -= lr mhat / (sqrt(vhat) + eps) with mhat = m / (1 - beta1^t), vhat = v / (1 - beta2^t),
 * the corrections in double (beta2^t stays near 1 for thousands of steps). */
void dsa_adamw_f32(float *restrict param, const float *restrict grad, float *restrict m, float *restrict v,
                   size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, uint64_t t) {
        assert(t >= 1);
        const float c1 = (float) (1.0 / (1.0 - pow(beta1, (double) t)));
        const float c2 = (float) (1.0 / (1.0 - pow(beta2, (double) t)));
        const float decay = 1.0f - lr * weight_decay;

        for (size_t i = 0; i < n; i++) {
                float g = grad[i];
                float mi = beta1 * m[i] + (1.0f - beta1) * g;
                float vi = beta2 * v[i] + (1.0f - beta2) * g * g;

                m[i] = mi;
                v[i] = vi;
                param[i] = param[i] * decay - lr * (mi * c1) / (sqrtf(vi * c2) + eps);
        }
}
