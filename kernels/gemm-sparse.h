/* Sparse pre-packed fp32 GEMM: a pruned weight matrix whose zeros come in 16x1 blocks (16
 * consecutive output channels at one input, engine/prune.h's DSA_SPARSE_BLOCK16) packed so the
 * microkernel skips them, and its FLOPs and weight bytes scale with the kept fraction.
 *
 * Layout: the (OC,C) weight is cut into ceil(OC/16) panels of 16 output channels, as the dense
 * packed GEMM does, but each panel keeps only its k rows that are not all zero (a k row of a
 * panel is exactly one 16x1 block), 16 floats each, plus their k indices. The microkernel is the
 * dense one's register tile (6 x 16 for AVX2, 16 x 16 for AVX-512) with the k loop running over
 * the kept rows: it broadcasts inp[r][idx[t]] instead of inp[r][k]. Unstructured or 2:4 sparsity
 * leaves almost no all-zero 16-wide row, so when too few rows are empty (density above
 * DSA__SPARSE_MAX_DENSITY_*) the matrix is packed dense instead and runs dsa_linear_packed_f32.
 * All of it single-threaded and allocation-free except the constructor. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

struct dsa_packed_sparse;

/* Packs weight (OC,C) row-major for the best variant this CPU runs. A k row of a panel is
 * dropped only when its 16 floats are all +0.0 bit for bit (a -0.0 or NaN is kept), so unpack
 * is exact. Returns 0, -EINVAL (NULL ret, or NULL weight with OC*C > 0), -EOVERFLOW (C past
 * UINT32_MAX or sizes past SIZE_MAX), -ENOMEM. */
int dsa_packed_sparse_new(const float *weight, size_t OC, size_t C, struct dsa_packed_sparse **ret);
struct dsa_packed_sparse *dsa_packed_sparse_free(struct dsa_packed_sparse *p);
/* Column granularity for splitting work: oc0/oc1 passed to dsa_linear_packed_sparse must be
 * multiples of it (oc1 may also be OC). 16 when packed sparse, the dense block when it fell
 * back; 0 for NULL. */
size_t dsa_packed_sparse_block(const struct dsa_packed_sparse *p);
size_t dsa_packed_sparse_rows(const struct dsa_packed_sparse *p); /* OC */
size_t dsa_packed_sparse_cols(const struct dsa_packed_sparse *p); /* C */
/* Bytes resident for the packed weights (panels, indices, offsets; or the dense panels). */
size_t dsa_packed_sparse_bytes(const struct dsa_packed_sparse *p);
/* Kept fraction of the 16x1 blocks (kept k rows / (panels * C)), measured at pack time, also
 * when it fell back to dense; 1 for C = 0 or OC = 0. */
double dsa_packed_sparse_density(const struct dsa_packed_sparse *p);
/* Whether the kernel skips the empty rows (false: fell back to the dense packed GEMM). */
bool dsa_packed_sparse_is_sparse(const struct dsa_packed_sparse *p);
/* Writes the original (OC,C) row-major matrix back, bit for bit. */
void dsa_packed_sparse_unpack(const struct dsa_packed_sparse *p, float *weight);

/* inp (N,C) with row stride ldi x W^T + bias (OC or NULL) -> out (N, ldo), only output columns
 * [oc0, oc1), then the epilogue on those columns; as dsa_linear_packed_f32. Single-threaded:
 * callers split [0, OC) across a dsa_threadpool on dsa_packed_sparse_block() boundaries. */
void dsa_linear_packed_sparse(float *out, size_t ldo, const float *inp, size_t ldi,
                              const struct dsa_packed_sparse *w, const float *bias, size_t N,
                              size_t oc0, size_t oc1, enum dsa_epilogue ep);

/* ---- Internal: the kernel files and tests. */

/* Panel width of every variant: one 16x1 block per kept k row. */
#define DSA__SPARSE_NR 16
/* Rows of out per register tile. */
#define DSA__SPARSE_MR_AVX2 6
#define DSA__SPARSE_MR_AVX512 16
/* Above this kept fraction dsa_packed_sparse_new packs dense, per variant. AVX2 (measured on
 * Zen 5 with tests/bench/bench-gemm-sparse.c): the sparse kernel forced on density 0.9 is still
 * 1.06-1.10x faster than dense, on density 1.0 0.8-1.0x, so the index load costs ~5%. AVX-512
 * (not measured): the dense kernel's 12 x 32 tile needs 0.58 loads per FMA, the sparse 16 x 16
 * one 1.13, so expect the crossover earlier. The reference packs like AVX2. */
#define DSA__SPARSE_MAX_DENSITY_AVX2 0.95
#define DSA__SPARSE_MAX_DENSITY_AVX512 0.85

/* One K block of one panel against rows [0, N) of inp: inp (N, ldi) at its column 0 (idx holds
 * absolute columns), b the block's first kept row (nk rows of 16 floats, 64-byte aligned),
 * idx (nk) their columns, ascending; out (N, ldo) offset to the panel's first column, nr <= 16
 * columns written. first: out = bias (nr, or 0 when NULL) + sum, else out += sum. ep is applied
 * in registers before the store (the driver passes it with the last K block only). nk may be 0. */
typedef void dsa__gemm_sparse_panel_f32_fn(float *out, size_t ldo, const float *inp, size_t ldi,
                                           const float *b, const uint32_t *idx, size_t nk, size_t N,
                                           size_t nr, const float *bias, bool first,
                                           enum dsa_epilogue ep);

dsa__gemm_sparse_panel_f32_fn dsa__gemm_sparse_panel_f32_ref;
dsa__gemm_sparse_panel_f32_fn dsa__gemm_sparse_panel_f32_avx2;
dsa__gemm_sparse_panel_f32_fn dsa__gemm_sparse_panel_f32_avx512;

/* dsa_packed_sparse_new for the microkernel of a given ISA, packing dense when the density is
 * above max_density (pass 1 or more to always pack sparse, a negative value to always pack
 * dense): -EOPNOTSUPP when the ISA was not built or this CPU cannot run it. */
int dsa__packed_sparse_new_isa(enum dsa_isa isa, const float *weight, size_t OC, size_t C,
                               double max_density, struct dsa_packed_sparse **ret);
enum dsa_isa dsa__packed_sparse_isa(const struct dsa_packed_sparse *p);
