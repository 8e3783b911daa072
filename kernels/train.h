/* Training kernels: forward passes that keep what their backward needs, the backward passes
 * themselves, and the optimizer step, after llm.c's <layer>_forward / <layer>_backward pairs.
 * All fp32, row-major, scalar code the compiler vectorizes; the matrix products go through
 * OpenBLAS (cblas_sgemm), which threads itself (dsa_blas_set_threads()). Training is not on
 * the serving path, so there are no hand-written SIMD variants to dispatch between: each
 * function here is its own reference, checked against finite differences in
 * tests/unit/test-train-kernels.c.
 *
 * Backward functions ACCUMULATE (+=) into every gradient they write, so gradients of a tensor
 * used twice add up, and callers zero them once per step. A NULL gradient pointer skips it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* inp (N,C), weight (OC,C), bias (OC) or NULL -> out (N,OC) = inp weight^T + bias. */
void dsa_matmul_forward_f32(float *out, const float *inp, const float *weight, const float *bias, size_t N,
                            size_t C, size_t OC);
/* dout (N,OC) -> dinp (N,C) += dout weight, dweight (OC,C) += dout^T inp, dbias (OC) += column
 * sums of dout. */
void dsa_matmul_backward_f32(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                             const float *weight, size_t N, size_t C, size_t OC);

/* inp (N,C), gamma, beta (C) -> out (N,C), mean and rstd (N) kept for the backward.
 * rstd = 1 / sqrt(var + eps), var the biased variance (PyTorch's LayerNorm). */
void dsa_layernorm_forward_f32(float *out, float *mean, float *rstd, const float *inp, const float *gamma,
                               const float *beta, size_t N, size_t C, float eps);
void dsa_layernorm_backward_f32(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                                const float *gamma, const float *mean, const float *rstd, size_t N, size_t C);

/* Elementwise over n: GELU (exact erf form, or the tanh approximation), tanh. */
void dsa_gelu_forward_f32(float *out, const float *inp, size_t n, bool tanh_approx);
void dsa_gelu_backward_f32(float *dinp, const float *inp, const float *dout, size_t n, bool tanh_approx);
/* out = tanh(inp); the backward takes the output: dinp += dout (1 - out^2). */
void dsa_tanh_forward_f32(float *out, const float *inp, size_t n);
void dsa_tanh_backward_f32(float *dinp, const float *out, const float *dout, size_t n);

/* Scaled dot-product scores and their softmax over keys, per row and head:
 *   att[b,h,i,j] = softmax_j(scale * a[b,i,h] . c[b,j,h]) over keys j with mask[b,j] = 1
 * (0 where mask[b,j] = 0; mask NULL: every key). a (B,T,lda) and c (B,T,ldc) hold head h's D
 * values at column h D; att (B,H,T,T). The attention's Q K^T, and MiniLM's relations (Q Q^T,
 * V V^T) between heads of any width. A row with no valid key is all zeros. */
void dsa_scores_softmax_forward_f32(float *att, const float *a, size_t lda, const float *c, size_t ldc,
                                    const uint8_t *mask, size_t B, size_t T, size_t H, size_t D, float scale);
/* datt (B,H,T,T) -> da (B,T,lda) and dc (B,T,ldc) (head h at column h D), through the
 * softmax (its output att) and the scaled product. da and dc may alias (fused QKV rows). */
void dsa_scores_softmax_backward_f32(float *da, float *dc, const float *datt, const float *att, const float *a,
                                     size_t lda, const float *c, size_t ldc, size_t B, size_t T, size_t H,
                                     size_t D, float scale);

/* The weighted sum of values: out[b,i,h] = sum_j att[b,h,i,j] keep[b,h,i,j] v[b,j,h]
 * with v (B,T,ldv) head h at column h D, out (B,T,ldo), keep (B,H,T,T) the dropout multipliers
 * (0 or 1/(1-p)) or NULL for none. */
void dsa_attn_values_forward_f32(float *out, size_t ldo, const float *att, const float *keep, const float *v,
                                 size_t ldv, size_t B, size_t T, size_t H, size_t D);
/* dout (B,T,ldo) -> datt (B,H,T,T) += (dout v^T) keep, dv (B,T,ldv) += (att keep)^T dout. */
void dsa_attn_values_backward_f32(float *datt, float *dv, size_t ldv, const float *dout, size_t ldo,
                                  const float *att, const float *keep, const float *v, size_t B, size_t T, size_t H,
                                  size_t D);

/* Softmax over each row of logits (N,L) / temperature -> probs (N,L). */
void dsa_softmax_rows_f32(float *probs, const float *logits, size_t N, size_t L, float temperature);

/* Dropout multipliers for n values: each 0 with probability p, else 1/(1-p), from a 64-bit
 * state advanced by the call (splitmix64), so a seed fixes every mask of a run. */
void dsa_dropout_mask_f32(float *keep, size_t n, float p, uint64_t *state);

/* One AdamW step (Loshchilov & Hutter, PyTorch's torch.optim.AdamW) over n parameters: param
 * (n), grad (n), m and v (n) the moment estimates, t >= 1 the step number for the bias
 * correction, decay applied to param as param -= lr wd param. */
void dsa_adamw_f32(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, uint64_t t);
