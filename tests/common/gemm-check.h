/* Helpers shared by the GEMM tests (test-gemm-packed, test-gemm-sparse, test-gemm-q8): buffers,
 * the sentinel that marks columns a call must not write, the exact GELU, the tolerances of an
 * fp32 GEMM, the ISAs this CPU runs, and the column sub-range check every packed GEMM passes. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "kernels/kernels.h"

/* What a GEMM output holds before the call: columns outside [oc0, oc1) must keep it. */
#define DSA_TEST_SENTINEL 1234.5f

/* fp32 GEMMs against a double-precision naive loop: |got - want| <= GEMM_MAX_REL_ERR *
 * sum_c |x_c w_c| (+ |bias|) + GEMM_MAX_ABS_ERR (fp32 accumulation in k order, fused or not;
 * the absolute term for outputs whose magnitude sum is 0). After a GELU epilogue (slope at most
 * EPILOGUE_SLOPE) the SIMD GELU's own error is added: EPILOGUE_MAX_ERR + EPILOGUE_MAX_RERR *
 * |want|, as test-kernels allows it. */
#define DSA_TEST_GEMM_MAX_REL_ERR 1e-5
#define DSA_TEST_GEMM_MAX_ABS_ERR 1e-7
#define DSA_TEST_EPILOGUE_SLOPE 1.13
#define DSA_TEST_EPILOGUE_MAX_ERR 1e-6
#define DSA_TEST_EPILOGUE_MAX_RERR 2e-6

/* The tolerance above for one output with magnitude sum mag and exact value want, with rel in
 * place of DSA_TEST_GEMM_MAX_REL_ERR. */
double dsa_test_gemm_tolerance(double mag, double want, double rel, enum dsa_epilogue ep);

/* malloc of n floats (at least one), failing the running cmocka test when it returns NULL. */
float *dsa_test_falloc(size_t n);
void dsa_test_fill(float *x, size_t n, float v);

/* ep on x in double: the exact GELUs (erf and tanh forms), x itself for DSA_EPILOGUE_NONE. */
double dsa_test_gelu(double x, enum dsa_epilogue ep);

/* "ref", "avx2", "avx512". */
extern const char *const dsa_test_isa_names[_DSA_ISA_MAX];

/* The ISAs to test, written to isas: ref first, then every SIMD one this CPU runs; prints
 * "SKIP variant <isa>: CPU lacks ..." for the others. Returns how many. */
size_t dsa_test_gemm_isas(enum dsa_isa isas[_DSA_ISA_MAX]);

/* out (N, ldo) = the GEMM under test on columns [oc0, oc1) only. */
typedef void dsa_test_gemm_fn(void *userdata, float *out, size_t oc0, size_t oc1);

/* Column sub-ranges on block boundaries (B columns; the last block may be short): every
 * [oc0, oc1) gives full's bits in its columns and leaves the sentinel in all others, and a
 * split of [0, OC) into blocks, as a pool would run it, gives full. band > 0: once OC > 200,
 * only the ranges of at most band blocks (a diagonal band; the quadratic walk is slow). full
 * (N, ldo) is the call on [0, OC), already checked by the caller; name labels failures. Fails
 * the running cmocka test on the first difference. */
void dsa_test_gemm_subranges(const char *name, dsa_test_gemm_fn *run, void *userdata,
                             const float *full, size_t N, size_t OC, size_t ldo, size_t B,
                             size_t band);
