/* Unstructured and semi-structured pruning of fp32 weight matrices: magnitude, Wanda (Sun et al.
 * 2023) and SparseGPT (Frantar & Alistarh 2023), and the calibration statistics the last two
 * need. Pure functions: no model knowledge, no I/O, no threads beyond OpenBLAS's own.
 *
 * Weights are (OC,C) row-major, a linear layer y = x W^T + b with C inputs. Each pattern prunes
 * round(sparsity * n) of the n candidates of each comparison group, lowest score first, ties
 * broken by the lower index (so results are deterministic), and sets them to +0.0:
 *  - DSA_SPARSE_UNSTRUCTURED: a group is one output row (C weights), as Wanda compares;
 *  - DSA_SPARSE_2_4: a group is 4 consecutive inputs of a row (C a multiple of 4), 2 pruned
 *    (sparsity must be 0.5);
 *  - DSA_SPARSE_BLOCK16: a candidate is a 16x1 block, rows 16j..16j+15 (fewer in the last group
 *    when OC is not a multiple of 16) at one input k; a group is one 16-row group (C blocks),
 *    scored by the block's L2 norm. kernels/gemm-sparse.h skips exactly these blocks.
 * Scores are compared as fp32; a NaN score counts as the largest (never pruned first). */
#pragma once

#include <stddef.h>

enum dsa_sparsity_pattern {
        DSA_SPARSE_UNSTRUCTURED,
        DSA_SPARSE_2_4,
        DSA_SPARSE_BLOCK16,
};

/* Zeroes a fraction `sparsity` (in [0, 1]) of w (OC,C) in place, scored by |w| (BLOCK16: the
 * block's L2 norm). Returns 0, -EINVAL (NULL w with OC*C > 0, sparsity out of range, 2:4 with
 * sparsity != 0.5 or C % 4 != 0, C past UINT32_MAX), -ENOMEM; w is untouched on failure. */
int dsa_prune_magnitude(float *w, size_t OC, size_t C, float sparsity, enum dsa_sparsity_pattern pat);

/* Wanda: as dsa_prune_magnitude, scored by |w_oc,k| * xnorm[k] (BLOCK16: the block's L2 norm
 * times xnorm[k]), where xnorm (C) is the L2 norm of input feature k over the calibration
 * tokens (sqrt of dsa_prune_stats_add's sq). -EINVAL also for NULL xnorm or a negative or NaN
 * entry. */
int dsa_prune_wanda(float *w, size_t OC, size_t C, const float *xnorm, float sparsity,
                    enum dsa_sparsity_pattern pat);

/* SparseGPT: prunes w (OC,C) in place and updates the kept weights to compensate, given the
 * calibration Hessian H = X^T X (C,C), double, symmetric (dsa_prune_stats_add). H is dampened
 * by damp * mean(diag H) (damp e.g. 0.01); inputs whose diagonal is 0 (never active) get
 * diagonal 1 and score 0. The upper Cholesky factor U of H^-1 (U^T U = H^-1) drives the optimal
 * brain surgeon updates. Columns are processed in blocks of blocksize (e.g. 128; a multiple of
 * 4 for 2:4); at each block start the mask of the block is chosen per row (UNSTRUCTURED) or per
 * 16-row group (BLOCK16) by w^2 / U_kk^2 (BLOCK16: summed over the block's rows), pruning
 * round(sparsity * k1) - round(sparsity * k0) of the block [k0, k1) in each group, so every group
 * ends with the same count as dsa_prune_magnitude's; 2:4 chooses each group of 4 when the sweep
 * reaches it, from the weights updated so far, as the paper does. Each pruned weight's error is
 * compensated in the remaining columns of its row. H is not modified. Allocates about
 * 2 C^2 + OC (C + blocksize) doubles. Returns 0, -EINVAL (as dsa_prune_magnitude, NULL H,
 * damp < 0 or not finite, blocksize 0), -ENOMEM, -EDOM (H not positive definite after
 * dampening); with a dsa__error() reason; w is untouched on failure. */
int dsa_prune_sparsegpt(float *w, size_t OC, size_t C, const double *H, float sparsity,
                        enum dsa_sparsity_pattern pat, double damp, size_t blocksize);

/* Accumulates the calibration statistics of one linear's input x (N,C): sq (C) += x^2 per
 * feature (xnorm = sqrt(sq) for Wanda) when sq is not NULL, and H (C,C) += x^T x (both
 * triangles) when H is not NULL. Double accumulators, so many batches add up without fp32 rounding. */
void dsa_prune_stats_add(double *sq, double *H, const float *x, size_t N, size_t C);

/* A (n,n) row-major, symmetric -> its lower Cholesky factor L (A = L L^T) in the lower triangle
 * (blocked, panels through cblas); the upper triangle is left as it was. -EDOM when A is not
 * (numerically) positive definite. Internal: SparseGPT and the token score's least squares. */
int dsa__cholesky_lower(double *A, size_t n);
