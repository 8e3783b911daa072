/* See gemm-check.h. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gemm-check.h"

const char *const dsa_test_isa_names[_DSA_ISA_MAX] = { "ref", "avx2", "avx512" };

double dsa_test_gemm_tolerance(double mag, double want, double rel, enum dsa_epilogue ep) {
        double tol = rel * mag + DSA_TEST_GEMM_MAX_ABS_ERR;

        if (ep != DSA_EPILOGUE_NONE)
                tol = DSA_TEST_EPILOGUE_SLOPE * tol + DSA_TEST_EPILOGUE_MAX_ERR +
                      DSA_TEST_EPILOGUE_MAX_RERR * fabs(want);
        return tol;
}

float *dsa_test_falloc(size_t n) {
        float *p = malloc((n ? n : 1) * sizeof(float));

        assert_non_null(p);
        return p;
}

void dsa_test_fill(float *x, size_t n, float v) {
        for (size_t i = 0; i < n; i++)
                x[i] = v;
}

double dsa_test_gelu(double x, enum dsa_epilogue ep) {
        switch (ep) {
        case DSA_EPILOGUE_GELU_ERF:
                return 0.5 * x * (1 + erf(x / sqrt(2.0)));
        case DSA_EPILOGUE_GELU_TANH:
                return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
        default:
                return x;
        }
}

size_t dsa_test_gemm_isas(enum dsa_isa isas[_DSA_ISA_MAX]) {
        size_t n = 0;

        for (int isa = DSA_ISA_REF; isa < _DSA_ISA_MAX; isa++) {
                if (dsa_kernels_for((enum dsa_isa) isa))
                        isas[n++] = (enum dsa_isa) isa;
                else
                        printf("SKIP variant %s: CPU lacks %s\n", dsa_test_isa_names[isa],
                               isa == DSA_ISA_AVX512 ? "AVX-512" : "AVX2+FMA+F16C");
        }
        return n;
}

void dsa_test_gemm_subranges(const char *name, dsa_test_gemm_fn *run, void *userdata,
                             const float *full, size_t N, size_t OC, size_t ldo, size_t B,
                             size_t band) {
        float *part = dsa_test_falloc(N * ldo);

        for (size_t oc0 = 0; oc0 <= OC; oc0 += B)
                for (size_t oc1 = oc0; oc1 <= OC; oc1 = oc1 + B > OC && oc1 < OC ? OC : oc1 + B) {
                        dsa_test_fill(part, N * ldo, DSA_TEST_SENTINEL);
                        run(userdata, part, oc0, oc1);
                        for (size_t n = 0; n < N; n++)
                                for (size_t o = 0; o < ldo; o++) {
                                        float want = o >= oc0 && o < oc1 ? full[n * ldo + o] : DSA_TEST_SENTINEL;
                                        if (memcmp(&part[n * ldo + o], &want, sizeof(float)) != 0) {
                                                printf("FAIL %s sub-range [%zu,%zu) of N=%zu OC=%zu: [%zu,%zu] got %.9g want %.9g\n",
                                                       name, oc0, oc1, N, OC, n, o, part[n * ldo + o], want);
                                                free(part);
                                                fail();
                                        }
                                }
                        if (oc1 == OC)
                                break;
                        if (band > 0 && OC > 200 && oc1 >= oc0 + band * B)
                                break;
                }

        /* Block by block into one buffer, as dsa_threadpool_for would split it. */
        dsa_test_fill(part, N * ldo, DSA_TEST_SENTINEL);
        for (size_t oc0 = 0; oc0 < OC; oc0 += B)
                run(userdata, part, oc0, oc0 + B < OC ? oc0 + B : OC);
        assert_memory_equal(part, full, N * ldo * sizeof(float));
        free(part);
}
