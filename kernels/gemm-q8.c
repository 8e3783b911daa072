/* INT8 GEMM (gemm-q8.h): the quantizers' reference, the packed layout (pack, unpack), the
 * driver loop, the scalar reference microkernel and the pick of a variant. The per-ISA panel
 * loops and quantizers live in x86/gemm-q8-*.c.
 *
 * There is no K blocking: a panel is K4 * 64 bytes (48 KiB at C = 3072, what one K block of
 * the fp32 kernel holds), so each panel stays in L1/L2 while every row tile of a chunk streams
 * past it, and the whole dot product stays in int32 registers: partial sums are never stored,
 * so they are never rounded, and the epilogue runs once, on finished sums. Rows go in chunks
 * of MC so a chunk of activation rows (MC * C bytes) stays in L2 across all panels. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if DSA_HAVE_AMX
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifndef ARCH_REQ_XCOMP_PERM
#define ARCH_REQ_XCOMP_PERM 0x1023 /* Linux 5.16, asm/prctl.h */
#endif
#endif

#include "gemm-q8.h"
#include "kernels-internal.h"

#define NR DSA__Q8_NR
#define KG DSA__Q8_KG
#define MC 192 /* a multiple of every kernel's rows: 6 (AVX2), 12 (VNNI), 32 (AMX) */

struct dsa_packed_q8 {
        enum dsa_isa isa;
        size_t OC, C, K4;
        size_t width; /* columns per kernel call: 16, or 32 (two panels) for VNNI and AMX */
        dsa__q8_row_sums_fn *xsum; /* each row's byte sum, for kernels that read it; or NULL */
        const char *name;
        dsa__gemm_panel_q8_fn *panel;
        int8_t *data;  /* ceil(OC/16) panels of K4*64 bytes, 64-byte aligned */
        float *scales; /* ceil(OC/16) * 16, zero past OC */
};

size_t dsa_q8_row_stride(size_t C) {
        return C > SIZE_MAX - (KG - 1) ? SIZE_MAX : (C + KG - 1) / KG * KG;
}

void dsa_quantize_weight_q8(int8_t *q, float *scales, const float *w, size_t OC, size_t C) {
        for (size_t o = 0; o < OC; o++) {
                const float *row = w + o * C;
                float max = 0, inv;

                for (size_t c = 0; c < C; c++)
                        max = fmaxf(max, fabsf(row[c]));
                dsa__q8_scale(max, 0, &scales[o], &inv);
                for (size_t c = 0; c < C; c++)
                        q[o * C + c] = dsa__q8_one(row[c], inv);
        }
}

/* x (N, ldx) -> q (N, stride), scales (N): the formula of gemm-q8.h, element by element. */
void dsa__quantize_rows_q8_ref(int8_t *q, float *scales, const float *x, size_t ldx, size_t N,
                               size_t C, float fixed_scale) {
        const size_t S = dsa_q8_row_stride(C);

        for (size_t n = 0; n < N; n++) {
                const float *row = x + n * ldx;
                float max = 0, inv;

                if (!(fixed_scale > 0))
                        for (size_t c = 0; c < C; c++)
                                max = fmaxf(max, fabsf(row[c]));
                dsa__q8_scale(max, fixed_scale, &scales[n], &inv);
                for (size_t c = 0; c < C; c++)
                        q[n * S + c] = dsa__q8_one(row[c], inv);
                memset(q + n * S + C, 0, S - C);
        }
}

/* The variant of an ISA: the quantizer and the panel kernel. AVX-512 without VNNI (Xeons
 * before Cascade Lake) gets the AVX2 kernel: no 512-bit sign-trick kernel is written; the
 * AVX-512 quantizer needs only F. */
struct variant {
        const char *name;
        size_t width;
        dsa__q8_row_sums_fn *xsum; /* the row sums the kernel reads; NULL: none */
        dsa__gemm_panel_q8_fn *panel;
        dsa__quantize_rows_q8_fn *quantize;
};

static bool cpu_has_vnni(void) {
#if DSA_HAVE_X86
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512vnni");
#else
        return false;
#endif
}

/* AMX-TILE and AMX-INT8 (CPUID.(7,0):EDX bits 24, 25), and the tile data state, which Linux
 * gives a process only when it asks (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 18;
 * Documentation/arch/x86/xstate.rst): without it the first tile instruction faults. Asked
 * once; the grant covers every thread of the process. */
bool dsa__q8_amx_usable(void) {
#if DSA_HAVE_AMX
        static int usable = -1; /* races compute the same value */
        int u = __atomic_load_n(&usable, __ATOMIC_RELAXED);

        if (u < 0) {
                unsigned a, b, c, d;
                const char *want = getenv("DSA_Q8_KERNEL");

                u = !(want && !strcmp(want, "avx512vnni")) && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
                    (d >> 24 & 1) && (d >> 25 & 1) && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, 18) == 0;
                __atomic_store_n(&usable, u, __ATOMIC_RELAXED);
        }
        return u;
#else
        return false;
#endif
}

static const struct variant *variant_of(enum dsa_isa isa) {
        static const struct variant ref = { "ref", NR, NULL, dsa__gemm_panel_q8_ref, dsa__quantize_rows_q8_ref };
#if DSA_HAVE_X86
        static const struct variant avx2 = { "avx2", NR, NULL, dsa__gemm_panel_q8_avx2, dsa__quantize_rows_q8_avx2 };
        static const struct variant avx512 = { "avx2", NR, NULL, dsa__gemm_panel_q8_avx2, dsa__quantize_rows_q8_avx512 };
        static const struct variant vnni = { "avx512vnni", 2 * NR, dsa__q8_row_sums_avx512vnni,
                                             dsa__gemm_panel_q8_avx512vnni, dsa__quantize_rows_q8_avx512 };
#if DSA_HAVE_AMX
        static const struct variant amx = { "amx", 2 * NR, NULL, dsa__gemm_panel_q8_amx,
                                            dsa__quantize_rows_q8_avx512 };
#endif
#endif

        if ((unsigned) isa >= _DSA_ISA_MAX || !dsa_kernels_for(isa))
                return NULL;
        switch (isa) {
        case DSA_ISA_REF:
                return &ref;
#if DSA_HAVE_X86
        case DSA_ISA_AVX2:
                return &avx2;
        case DSA_ISA_AVX512:
#if DSA_HAVE_AMX
                if (dsa__q8_amx_usable())
                        return &amx;
#endif
                return cpu_has_vnni() ? &vnni : &avx512;
#endif
        default:
                return NULL;
        }
}

dsa__quantize_rows_q8_fn *dsa__quantize_rows_q8_for(enum dsa_isa isa) {
        const struct variant *v = variant_of(isa);

        return v ? v->quantize : NULL;
}

void dsa_quantize_rows_q8(int8_t *q, float *scales, const float *x, size_t ldx, size_t N, size_t C,
                          float fixed_scale) {
        static dsa__quantize_rows_q8_fn *fn; /* races write the same value */
        dsa__quantize_rows_q8_fn *f = __atomic_load_n(&fn, __ATOMIC_RELAXED);

        if (!f) {
                f = dsa__quantize_rows_q8_for(dsa_kernels()->isa);
                __atomic_store_n(&fn, f, __ATOMIC_RELAXED);
        }
        f(q, scales, x, ldx, N, C, fixed_scale);
}

/* The scalar microkernel, obviously right: each output's int32 dot product over all K4*4
 * bytes (the padding multiplies zero weights), then the epilogue of gemm-q8.h with the
 * reference GELU on the finished row. No overflow: |dot| <= 127*127*C < 2^31 (DSA_Q8_MAX_C). */
void dsa__gemm_panel_q8_ref(float *out, size_t ldo, const int8_t *q, size_t ldq, const float *sx,
                            const int32_t *xsum, const int8_t *b, const float *sw, const float *bias,
                            size_t N, size_t K4, size_t nr, enum dsa_epilogue ep) {
        for (size_t n = 0; n < N; n++) {
                const int8_t *x = q + n * ldq;
                float *o = out + n * ldo;

                for (size_t l = 0; l < nr; l++) {
                        int32_t acc = 0;
                        for (size_t g = 0; g < K4; g++)
                                for (size_t i = 0; i < KG; i++)
                                        acc += (int32_t) x[g * KG + i] * b[g * NR * KG + l * KG + i];
                        o[l] = fmaf((float) acc, sx[n] * sw[l], bias ? bias[l] : 0.0f);
                }
                dsa__epilogue_f32(&dsa__kernels_ref, o, nr, ep);
        }
}

int dsa__packed_q8_new_isa(enum dsa_isa isa, const int8_t *q, const float *scales, size_t OC,
                           size_t C, struct dsa_packed_q8 **ret) {
        const struct variant *v;
        struct dsa_packed_q8 *p;
        size_t panels, K4, n;
        void *data = NULL, *sc = NULL;

        if (!ret || ((!q || !scales) && OC > 0 && C > 0) || (!scales && OC > 0))
                return -EINVAL;
        if (!(v = variant_of(isa)))
                return -EOPNOTSUPP;
        if (C > DSA_Q8_MAX_C)
                return -EOVERFLOW;

        K4 = dsa_q8_row_stride(C) / KG;
        panels = OC / NR + (OC % NR != 0);
        /* panels * K4 * 64 bytes and panels * 16 floats, each factor checked. */
        if (panels > SIZE_MAX / (NR * sizeof(float)) || (K4 > 0 && panels > SIZE_MAX / (NR * KG) / K4))
                return -EOVERFLOW;
        n = panels * K4 * NR * KG;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        if (posix_memalign(&data, 64, n ? n : 64) != 0 ||
            posix_memalign(&sc, 64, panels ? panels * NR * sizeof(float) : 64) != 0) {
                free(data);
                free(p);
                return -ENOMEM;
        }
        *p = (struct dsa_packed_q8) {
                .isa = isa, .OC = OC, .C = C, .K4 = K4, .width = v->width, .xsum = v->xsum,
                .name = v->name, .panel = v->panel, .data = data, .scales = sc,
        };

        memset(p->data, 0, n);
        memset(p->scales, 0, panels * NR * sizeof(float));
        for (size_t o = 0; o < OC; o++) {
                int8_t *b = p->data + (o / NR) * K4 * NR * KG + (o % NR) * KG;
                for (size_t c = 0; c < C; c++) {
                        /* Read once: the check and the copy see the same byte. */
                        int8_t byte = q[o * C + c];
                        if (byte == INT8_MIN) {
                                dsa_packed_q8_free(p);
                                return -EINVAL;
                        }
                        b[(c / KG) * NR * KG + c % KG] = byte;
                }
                p->scales[o] = scales[o];
        }
        *ret = p;
        return 0;
}

int dsa_packed_q8_new(const int8_t *q, const float *scales, size_t OC, size_t C,
                      struct dsa_packed_q8 **ret) {
        return dsa__packed_q8_new_isa(dsa_kernels()->isa, q, scales, OC, C, ret);
}

struct dsa_packed_q8 *dsa_packed_q8_free(struct dsa_packed_q8 *p) {
        if (p) {
                free(p->data);
                free(p->scales);
                free(p);
        }
        return NULL;
}

size_t dsa_packed_q8_block(const struct dsa_packed_q8 *p) {
        return p ? p->width : 0;
}

size_t dsa_packed_q8_rows(const struct dsa_packed_q8 *p) {
        return p ? p->OC : 0;
}

size_t dsa_packed_q8_cols(const struct dsa_packed_q8 *p) {
        return p ? p->C : 0;
}

size_t dsa_packed_q8_bytes(const struct dsa_packed_q8 *p) {
        size_t panels;

        if (!p)
                return 0;
        panels = p->OC / NR + (p->OC % NR != 0);
        return sizeof(*p) + panels * p->K4 * NR * KG + panels * NR * sizeof(float);
}

const char *dsa__packed_q8_kernel(const struct dsa_packed_q8 *p) {
        return p->name;
}

void dsa_packed_q8_unpack(const struct dsa_packed_q8 *p, int8_t *q, float *scales) {
        if (!p || (!q && p->OC * p->C > 0) || (!scales && p->OC > 0))
                return;
        for (size_t o = 0; o < p->OC; o++) {
                const int8_t *b = p->data + (o / NR) * p->K4 * NR * KG + (o % NR) * KG;
                for (size_t c = 0; c < p->C; c++)
                        q[o * p->C + c] = b[(c / KG) * NR * KG + c % KG];
                scales[o] = p->scales[o];
        }
}

/* q (N, ldq) with row scales sx (N) x packed W^T + bias -> out (N, ldo) columns [oc0, oc1);
 * see gemm-q8.h. oc0 and oc1 on panel boundaries (or oc1 = OC), so a panel is never shared
 * between two callers splitting [0, OC). */
void dsa_linear_packed_q8(float *out, size_t ldo, const int8_t *q, size_t ldq, const float *sx,
                          const struct dsa_packed_q8 *w, const float *bias, size_t N, size_t oc0,
                          size_t oc1, enum dsa_epilogue ep) {
        const size_t K4 = w ? w->K4 : 0, S = K4 * KG;
        int32_t xsum[MC];
        size_t p0, p1;

        assert(w);
        dsa__gemm_panels(N, S, w->OC, NR, ldo, ldq, oc0, oc1, ep, &p0, &p1);
        if (N == 0 || oc0 == oc1)
                return;

        const size_t step = w->width / NR;

        for (size_t n0 = 0; n0 < N; n0 += MC) {
                const size_t nn = N - n0 < MC ? N - n0 : MC;
                const int8_t *x = q + n0 * ldq;

                /* |sum| <= 128 * S <= 2^24: no overflow. Each caller's block sums its rows
                 * again, vectorized: N * S / 64 instructions next to N * S * (oc1 - oc0) / 64. */
                if (w->xsum)
                        w->xsum(xsum, x, ldq, nn, S);

                for (size_t j = p0; j < p1; j += step) {
                        const size_t col = j * NR, nr = oc1 - col < w->width ? oc1 - col : w->width;

                        w->panel(out + n0 * ldo + col, ldo, x, ldq, sx + n0, xsum,
                                 w->data + j * K4 * NR * KG, w->scales + col,
                                 bias ? bias + col : NULL, nn, K4, nr, ep);
                }
        }
}
