/* Runtime dispatch: picks, once, the widest kernel table this CPU can run. DSA_ISA=ref|avx2|avx512
 * may force a narrower table (for benchmarks and for comparing variants); a request the CPU
 * cannot honour is ignored with a debug note. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels-internal.h"

#if DSA_HAVE_X86
#include <cpuid.h>

/* F16C is CPUID.1:ECX bit 29. Asked directly because clang 14's __builtin_cpu_supports() does
 * not know the "f16c" feature string. */
static bool cpu_has_f16c(void) {
        unsigned a, b, c, d;

        return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

static const struct dsa_kernels *best;
static pthread_once_t best_once = PTHREAD_ONCE_INIT;

static bool cpu_has(enum dsa_isa isa) {
        switch (isa) {
        case DSA_ISA_REF:
                return true;
#if DSA_HAVE_X86
        case DSA_ISA_AVX2:
                __builtin_cpu_init();
                return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
        case DSA_ISA_AVX512:
                __builtin_cpu_init();
                return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
        default:
                return false;
        }
}

static const struct dsa_kernels *table_of(enum dsa_isa isa) {
        switch (isa) {
        case DSA_ISA_REF:
                return &dsa__kernels_ref;
#if DSA_HAVE_X86
        case DSA_ISA_AVX2:
                return &dsa__kernels_avx2;
        case DSA_ISA_AVX512:
                return &dsa__kernels_avx512;
#endif
        default:
                return NULL;
        }
}

const struct dsa_kernels *dsa_kernels_for(enum dsa_isa isa) {
        if ((unsigned) isa >= _DSA_ISA_MAX || !cpu_has(isa))
                return NULL;
        return table_of(isa);
}

static void debug_note(const char *msg, const char *arg) {
        /* kernels/ never logs above debug: only when DSA_DEBUG is set. */
        const char *e = getenv("DSA_DEBUG");

        if (e && *e && strcmp(e, "0") != 0)
                fprintf(stderr, "dsa kernels: %s%s\n", msg, arg);
}

static void pick_best(void) {
        static const char *const names[_DSA_ISA_MAX] = {
                [DSA_ISA_REF] = "ref",
                [DSA_ISA_AVX2] = "avx2",
                [DSA_ISA_AVX512] = "avx512",
        };
        const char *want = getenv("DSA_ISA");

        for (int i = _DSA_ISA_MAX - 1; i >= 0 && !best; i--)
                best = dsa_kernels_for((enum dsa_isa) i);

        if (want && *want) {
                int i;
                for (i = 0; i < _DSA_ISA_MAX; i++)
                        if (strcmp(want, names[i]) == 0)
                                break;
                if (i == _DSA_ISA_MAX)
                        debug_note("unknown DSA_ISA, ignoring: ", want);
                else if (!dsa_kernels_for((enum dsa_isa) i))
                        debug_note("DSA_ISA not supported by this CPU or build, ignoring: ", want);
                else
                        best = dsa_kernels_for((enum dsa_isa) i);
        }
        debug_note("using kernels ", best->name);
}

const struct dsa_kernels *dsa_kernels(void) {
        pthread_once(&best_once, pick_best);
        return best;
}
