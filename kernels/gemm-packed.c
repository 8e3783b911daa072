/* Pre-packed fp32 GEMM: the linear layers of a model with weights repacked once, at load, into
 * the panel layout of one microkernel (see kernels-internal.h), as MLAS does; OpenBLAS re-packs
 * the weight on every call. This file owns the layout (pack, unpack), the blocking loop nest and
 * the epilogues; the per-ISA panel loops live in x86/gemm-*.c and, as the reference, here.
 *
 * Loop nest (GotoBLAS order): rows in chunks of MC, then K blocks of KC, then panels, then the
 * microkernel's MR-row tiles. A KC x NR panel slice (at most 48 KiB for AVX2) stays in L1/L2
 * while every row tile of the chunk streams past it, and the MC x KC block of inp stays in L2
 * across all panels. Partial sums accumulate in out across K blocks: the first block starts from
 * the bias, and the last applies the epilogue (GELU) to its accumulator tile in registers,
 * before the one store of the finished values: no second pass over out. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kernels-internal.h"

struct dsa_packed_f32 {
        enum dsa_isa isa;
        size_t OC, C;
        size_t nr; /* panel width; the block granularity */
        size_t kc; /* K block */
        size_t mc; /* row chunk */
        dsa__gemm_panel_f32_fn *panel;
        const struct dsa_kernels *k; /* the same ISA's table, for the GELU of a C = 0 product */
        float *data;                 /* ceil(OC/nr) panels of C*nr floats, 64-byte aligned */
};

/* The scalar microkernel, obviously right: for each row and column a sequential fp32 sum over
 * k, in the same order as the SIMD variants (which differ only by fused multiply-adds), then
 * the reference GELU on the finished row of nr values. */
void dsa__gemm_panel_f32_ref(float *out, size_t ldo, const float *inp, size_t ldi, const float *b,
                             size_t N, size_t kc, size_t nr, const float *bias, bool first,
                             enum dsa_epilogue ep) {
        const size_t NR = DSA__GEMM_NR_REF;

        for (size_t n = 0; n < N; n++) {
                for (size_t l = 0; l < nr; l++) {
                        float acc = first ? (bias ? bias[l] : 0.0f) : out[n * ldo + l];
                        for (size_t k = 0; k < kc; k++)
                                acc += inp[n * ldi + k] * b[k * NR + l];
                        out[n * ldo + l] = acc;
                }
                if (ep == DSA_EPILOGUE_GELU_ERF)
                        dsa_gelu_erf_f32_ref(out + n * ldo, nr);
                else if (ep == DSA_EPILOGUE_GELU_TANH)
                        dsa_gelu_tanh_f32_ref(out + n * ldo, nr);
        }
}

struct variant {
        size_t nr, kc, mc;
        dsa__gemm_panel_f32_fn *panel;
};

/* KC: the most k rows of a panel slice, which is streamed from L2 (768 x 16 x 4 = 48 KiB for
 * AVX2: measured on Zen, KC = 768 beats 256 by ~5%, since out is then read and written once
 * for C <= 768). MC: rows of inp per chunk, a multiple of the microkernel's MR, so an MC x KC
 * block stays in L2 for N up to MC. */
static const struct variant *variant_of(enum dsa_isa isa) {
        static const struct variant ref = { DSA__GEMM_NR_REF, 256, 256, dsa__gemm_panel_f32_ref };
#if DSA_HAVE_X86
        static const struct variant avx2 = { DSA__GEMM_NR_AVX2, 768, 240, dsa__gemm_panel_f32_avx2 };
        static const struct variant avx512 = { DSA__GEMM_NR_AVX512, 512, 240, dsa__gemm_panel_f32_avx512 };
#endif

        switch (isa) {
        case DSA_ISA_REF:
                return &ref;
#if DSA_HAVE_X86
        case DSA_ISA_AVX2:
                return &avx2;
        case DSA_ISA_AVX512:
                return &avx512;
#endif
        default:
                return NULL;
        }
}

int dsa__packed_f32_new_isa(enum dsa_isa isa, const float *weight, size_t OC, size_t C,
                            struct dsa_packed_f32 **ret) {
        const struct dsa_kernels *k;
        const struct variant *v;
        struct dsa_packed_f32 *p;
        size_t NR, panels, n;
        void *data = NULL;

        if (!ret || (!weight && OC > 0 && C > 0))
                return -EINVAL;
        if ((unsigned) isa >= _DSA_ISA_MAX || !(k = dsa_kernels_for(isa)) || !(v = variant_of(isa)))
                return -EOPNOTSUPP;

        NR = v->nr;
        panels = OC / NR + (OC % NR != 0);
        /* panels * NR * C floats, each factor checked. */
        if (C > 0 && panels > SIZE_MAX / sizeof(float) / NR / C)
                return -EOVERFLOW;
        n = panels * NR * C;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        if (posix_memalign(&data, 64, n ? n * sizeof(float) : 64) != 0) {
                free(p);
                return -ENOMEM;
        }
        *p = (struct dsa_packed_f32) {
                .isa = isa, .OC = OC, .C = C, .nr = NR, .kc = v->kc, .mc = v->mc,
                .panel = v->panel, .k = k, .data = data,
        };

        for (size_t j = 0; j < panels; j++) {
                float *b = p->data + j * C * NR;
                size_t cols = OC - j * NR < NR ? OC - j * NR : NR;
                for (size_t c = 0; c < C; c++) {
                        for (size_t l = 0; l < cols; l++)
                                b[c * NR + l] = weight[(j * NR + l) * C + c];
                        for (size_t l = cols; l < NR; l++)
                                b[c * NR + l] = 0.0f;
                }
        }
        *ret = p;
        return 0;
}

int dsa_packed_f32_new(const float *weight, size_t OC, size_t C, struct dsa_packed_f32 **ret) {
        return dsa__packed_f32_new_isa(dsa_kernels()->isa, weight, OC, C, ret);
}

struct dsa_packed_f32 *dsa_packed_f32_free(struct dsa_packed_f32 *p) {
        if (p) {
                free(p->data);
                free(p);
        }
        return NULL;
}

size_t dsa_packed_f32_block(const struct dsa_packed_f32 *p) {
        return p ? p->nr : 0;
}

size_t dsa_packed_f32_rows(const struct dsa_packed_f32 *p) {
        return p ? p->OC : 0;
}

size_t dsa_packed_f32_cols(const struct dsa_packed_f32 *p) {
        return p ? p->C : 0;
}

enum dsa_isa dsa__packed_f32_isa(const struct dsa_packed_f32 *p) {
        return p->isa;
}

void dsa_packed_f32_unpack(const struct dsa_packed_f32 *p, float *weight) {
        if (!p || !weight)
                return;
        for (size_t o = 0; o < p->OC; o++) {
                const float *b = p->data + (o / p->nr) * p->C * p->nr + o % p->nr;
                for (size_t c = 0; c < p->C; c++)
                        weight[o * p->C + c] = b[c * p->nr];
        }
}

/* The epilogue as a separate pass, for C = 0 only (out is the bias; no K block to fuse into). */
static void epilogue(const struct dsa_packed_f32 *w, float *out, size_t ldo, size_t N, size_t cols,
                     enum dsa_epilogue ep) {
        void (*f)(float *, size_t) = ep == DSA_EPILOGUE_GELU_ERF ? w->k->gelu_erf_f32 : w->k->gelu_tanh_f32;

        if (ep == DSA_EPILOGUE_NONE)
                return;
        for (size_t n = 0; n < N; n++)
                f(out + n * ldo, cols);
}

/* inp (N,C) row stride ldi, packed weight (OC,C), bias (OC) or NULL -> out (N, ldo) columns
 * [oc0, oc1); see kernels.h. oc0 and oc1 on panel boundaries (or oc1 = OC), so a panel is never
 * shared between two callers splitting [0, OC). */
void dsa_linear_packed_f32(float *out, size_t ldo, const float *inp, size_t ldi,
                           const struct dsa_packed_f32 *w, const float *bias, size_t N, size_t oc0,
                           size_t oc1, enum dsa_epilogue ep) {
        const size_t C = w ? w->C : 0, NR = w ? w->nr : 1;

        assert(w);
        assert(oc0 <= oc1 && oc1 <= w->OC);
        assert((oc0 % NR == 0 || oc0 == oc1) && (oc1 % NR == 0 || oc1 == w->OC));
        assert(N <= 1 || (ldo >= oc1 && ldi >= C));
        assert((unsigned) ep <= DSA_EPILOGUE_GELU_TANH);

        if (N == 0 || oc0 == oc1)
                return;

        if (C == 0) {
                for (size_t n = 0; n < N; n++) {
                        float *o = out + n * ldo + oc0;
                        if (bias)
                                memcpy(o, bias + oc0, (oc1 - oc0) * sizeof(float));
                        else
                                memset(o, 0, (oc1 - oc0) * sizeof(float));
                }
                epilogue(w, out + oc0, ldo, N, oc1 - oc0, ep);
                return;
        }

        const size_t p0 = oc0 / NR, p1 = oc1 / NR + (oc1 % NR != 0);
        /* K blocks of equal size, at most kc: C = 3072 as 4 x 768, C = 1000 as 2 x 500. */
        const size_t nkb = C / w->kc + (C % w->kc != 0), kc = C / nkb + (C % nkb != 0);

        for (size_t n0 = 0; n0 < N; n0 += w->mc) {
                const size_t nn = N - n0 < w->mc ? N - n0 : w->mc;
                float *o = out + n0 * ldo;
                const float *x = inp + n0 * ldi;

                for (size_t k0 = 0; k0 < C; k0 += kc) {
                        const size_t kk = C - k0 < kc ? C - k0 : kc;
                        const bool first = k0 == 0, last = k0 + kk == C;

                        for (size_t j = p0; j < p1; j++) {
                                const size_t col = j * NR, nr = oc1 - col < NR ? oc1 - col : NR;

                                w->panel(o + col, ldo, x + k0, ldi, w->data + j * C * NR + k0 * NR,
                                         nn, kk, nr, bias ? bias + col : NULL, first,
                                         last ? ep : DSA_EPILOGUE_NONE);
                        }
                }
        }
}
