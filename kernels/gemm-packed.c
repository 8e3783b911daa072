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
 * before the one store of the finished values: no second pass over out.
 *
 * The panels may hold fp32, IEEE half or bfloat16 weights (enum dsa_wtype): the 16-bit ones
 * halve the bytes the microkernel streams, and are widened to fp32 in registers; the loop nest
 * is the same for all, only the panel call differs. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if DSA_HAVE_X86
#include <cpuid.h>
#endif

#include "kernels-internal.h"

struct dsa_packed_f32 {
        enum dsa_isa isa;
        enum dsa_wtype type;
        size_t OC, C;
        size_t nr;     /* panel width; the block granularity */
        size_t kc;     /* K block (even for BF16_DOT) */
        size_t mc;     /* row chunk */
        size_t stride; /* values per panel */
        size_t esize;  /* bytes per value: 4 or 2 */
        dsa__gemm_panel_f32_fn *panel;         /* F32 */
        dsa__gemm_panel_u16_fn *panel_u16;     /* the 16-bit types */
        const struct dsa_kernels *k; /* the same ISA's table, for the GELU of a C = 0 product */
        void *data;                  /* ceil(OC/nr) panels of stride values, 64-byte aligned */
};

/* ---- Conversions. fp32 -> half: the exponent rebased by 127 - 15 and the 23-bit mantissa
 * rounded to 10 bits by adding 0xfff plus the kept lsb (a carry into the exponent is the right
 * answer); below 2^-14 the significand with its implicit bit is shifted into units of 2^-24
 * and rounded by hand. */
uint16_t dsa_f32_to_f16(float f) {
        uint32_t x, ax;
        uint16_t sign;

        memcpy(&x, &f, sizeof(x));
        sign = (uint16_t) ((x >> 16) & 0x8000);
        ax = x & 0x7fffffffu;
        if (ax > 0x7f800000u) /* NaN: quiet, top 9 payload bits kept */
                return sign | 0x7e00 | (uint16_t) ((ax >> 13) & 0x3ff);
        if (ax >= 0x477ff000u) /* >= 65520, the tie between 65504 and 2^16: inf */
                return sign | 0x7c00;
        if (ax >= 0x38800000u) /* normal half */
                return sign | (uint16_t) ((ax + 0xfffu + ((ax >> 13) & 1) - 0x38000000u) >> 13);
        if (ax <= 0x33000000u) /* <= 2^-25, half the smallest subnormal: ties to even, 0 */
                return sign;

        /* Subnormal half: |f| = m * 2^(e - 150), in units of 2^-24 m >> (126 - e), 14..24. */
        uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1)))
                q++;
        return sign | (uint16_t) q;
}

/* bfloat16 is the top half of an fp32: add 0x7fff plus the kept lsb, truncate. */
uint16_t dsa_f32_to_bf16(float f) {
        uint32_t x;

        memcpy(&x, &f, sizeof(x));
        if ((x & 0x7fffffffu) > 0x7f800000u)
                return (uint16_t) ((x >> 16) | 0x40);
        return (uint16_t) ((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

uint16_t dsa__f32_to_bf16_dot_one(float f) {
        uint32_t x;

        memcpy(&x, &f, sizeof(x));
        if ((x & 0x7f800000u) == 0) /* zero or denormal: signed zero (DAZ) */
                return (uint16_t) ((x >> 16) & 0x8000);
        return dsa_f32_to_bf16(f);
}

static float bf16_to_f32(uint16_t h) {
        uint32_t bits = (uint32_t) h << 16;
        float f;

        memcpy(&f, &bits, sizeof(f));
        return f;
}

bool dsa__cpu_has_avx512bf16(void) {
#if DSA_HAVE_X86
        unsigned a, b, c, d;

        /* AVX512_BF16 is CPUID.(7,1):EAX bit 5. */
        return dsa_kernels_for(DSA_ISA_AVX512) && __get_cpuid_count(7, 1, &a, &b, &c, &d) &&
               (a & (1u << 5));
#else
        return false;
#endif
}

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
                dsa__epilogue_f32(&dsa__kernels_ref, out + n * ldo, nr, ep);
        }
}

/* Where column l of a k row of NR columns sits in a BF16 panel row (kernels-internal.h):
 * dword i holds columns i and NR/2 + i. */
static size_t bf16_pos(size_t l, size_t NR) {
        return l < NR / 2 ? 2 * l : 2 * (l - NR / 2) + 1;
}

/* The 16-bit references widen the block's panel slice exactly (kc <= DSA__GEMM_KC_REF rows,
 * 16 KiB of stack) and run the fp32 reference on it: the same sums by construction. */
void dsa__gemm_panel_f16_ref(float *out, size_t ldo, const float *inp, size_t ldi,
                             const uint16_t *b, size_t N, size_t kc, size_t nr, const float *bias,
                             bool first, enum dsa_epilogue ep) {
        float w[DSA__GEMM_KC_REF * DSA__GEMM_NR_REF];

        assert(kc <= DSA__GEMM_KC_REF);
        dsa_f16_to_f32_ref(w, b, kc * DSA__GEMM_NR_REF);
        dsa__gemm_panel_f32_ref(out, ldo, inp, ldi, w, N, kc, nr, bias, first, ep);
}

void dsa__gemm_panel_bf16_ref(float *out, size_t ldo, const float *inp, size_t ldi,
                              const uint16_t *b, size_t N, size_t kc, size_t nr, const float *bias,
                              bool first, enum dsa_epilogue ep) {
        float w[DSA__GEMM_KC_REF * DSA__GEMM_NR_REF];

        assert(kc <= DSA__GEMM_KC_REF);
        for (size_t k = 0; k < kc; k++)
                for (size_t l = 0; l < DSA__GEMM_NR_REF; l++)
                        w[k * DSA__GEMM_NR_REF + l] =
                                bf16_to_f32(b[k * DSA__GEMM_NR_REF + bf16_pos(l, DSA__GEMM_NR_REF)]);
        dsa__gemm_panel_f32_ref(out, ldo, inp, ldi, w, N, kc, nr, bias, first, ep);
}

/* Denormals read as (and results flushed to) a signed zero, as vdpbf16ps does. */
static float daz(float x) {
        return fpclassify(x) == FP_SUBNORMAL ? copysignf(0.0f, x) : x;
}

/* vdpbf16ps, one lane at a time (Intel SDM): for each k pair, first the odd product then the
 * even one, each a fused multiply-add rounded to nearest even with denormal inputs as 0 and a
 * denormal result flushed to 0. x[k+1] past kc (odd C) is 0, against the panel's +0 padding. */
void dsa__gemm_panel_bf16dot_ref(float *out, size_t ldo, const float *inp, size_t ldi,
                                 const uint16_t *b, size_t N, size_t kc, size_t nr,
                                 const float *bias, bool first, enum dsa_epilogue ep) {
        const size_t NR = DSA__GEMM_NR_REF;
        float x[DSA__GEMM_KC_REF + 1];

        assert(kc <= DSA__GEMM_KC_REF);
        for (size_t n = 0; n < N; n++) {
                for (size_t k = 0; k < kc; k++)
                        x[k] = bf16_to_f32(dsa__f32_to_bf16_dot_one(inp[n * ldi + k]));
                x[kc] = 0.0f;
                for (size_t l = 0; l < nr; l++) {
                        float acc = first ? (bias ? bias[l] : 0.0f) : out[n * ldo + l];
                        for (size_t k = 0; k < kc; k += 2) {
                                const uint16_t *w = b + (k / 2) * 2 * NR + 2 * l;
                                acc = daz(fmaf(x[k + 1], daz(bf16_to_f32(w[1])), daz(acc)));
                                acc = daz(fmaf(x[k], daz(bf16_to_f32(w[0])), acc));
                        }
                        out[n * ldo + l] = acc;
                }
                dsa__epilogue_f32(&dsa__kernels_ref, out + n * ldo, nr, ep);
        }
}

struct variant {
        size_t nr, kc, mc;
        dsa__gemm_panel_f32_fn *panel;
        dsa__gemm_panel_u16_fn *panel_f16, *panel_bf16, *panel_bf16dot; /* NULL: none */
};

/* KC: the most k rows of a panel slice, which is streamed from L2 (768 x 16 x 4 = 48 KiB for
 * AVX2: measured on Zen, KC = 768 beats 256 by ~5%, since out is then read and written once
 * for C <= 768). MC: rows of inp per chunk, a multiple of the microkernel's MR, so an MC x KC
 * block stays in L2 for N up to MC. */
static const struct variant *variant_of(enum dsa_isa isa) {
        static const struct variant ref = {
                DSA__GEMM_NR_REF, DSA__GEMM_KC_REF, 256, dsa__gemm_panel_f32_ref,
                dsa__gemm_panel_f16_ref, dsa__gemm_panel_bf16_ref, dsa__gemm_panel_bf16dot_ref,
        };
#if DSA_HAVE_X86
        static const struct variant avx2 = {
                DSA__GEMM_NR_AVX2, DSA__GEMM_KC_AVX2, 240, dsa__gemm_panel_f32_avx2,
                dsa__gemm_panel_f16_avx2, dsa__gemm_panel_bf16_avx2, NULL,
        };
        static const struct variant avx512 = {
                DSA__GEMM_NR_AVX512, DSA__GEMM_KC_AVX512, 240, dsa__gemm_panel_f32_avx512,
                dsa__gemm_panel_f16_avx512, dsa__gemm_panel_bf16_avx512, dsa__gemm_panel_bf16dot_avx512bf16,
        };
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

/* Weight (o, c) of the source, as the storage type's bits. */
static uint16_t source_u16(const float *wf, const uint16_t *wh, size_t i, enum dsa_wtype type) {
        if (wh)
                return wh[i];
        return type == DSA_WTYPE_F16 ? dsa_f32_to_f16(wf[i]) : dsa_f32_to_bf16(wf[i]);
}

int dsa__packed_new_isa_typed(enum dsa_isa isa, enum dsa_wtype type, const float *weight_f32,
                              const uint16_t *weight_u16, size_t OC, size_t C,
                              struct dsa_packed_f32 **ret) {
        const struct dsa_kernels *k;
        const struct variant *v;
        dsa__gemm_panel_u16_fn *panel_u16 = NULL;
        struct dsa_packed_f32 *p;
        size_t NR, panels, rows, stride, esize, n;
        void *data = NULL;

        if (!ret || (unsigned) type >= _DSA_WTYPE_MAX || (weight_f32 && weight_u16) ||
            (type == DSA_WTYPE_F32 && weight_u16) ||
            (!weight_f32 && !weight_u16 && OC > 0 && C > 0))
                return -EINVAL;
        if ((unsigned) isa >= _DSA_ISA_MAX || !(k = dsa_kernels_for(isa)) || !(v = variant_of(isa)))
                return -EOPNOTSUPP;
        if (type == DSA_WTYPE_F16)
                panel_u16 = v->panel_f16;
        else if (type == DSA_WTYPE_BF16)
                panel_u16 = v->panel_bf16;
        else if (type == DSA_WTYPE_BF16_DOT)
                panel_u16 = isa == DSA_ISA_REF || dsa__cpu_has_avx512bf16() ? v->panel_bf16dot : NULL;
        if (type != DSA_WTYPE_F32 && !panel_u16)
                return -EOPNOTSUPP;

        NR = v->nr;
        esize = type == DSA_WTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
        panels = OC / NR + (OC % NR != 0);
        /* rows of NR values per panel (C, or C rounded up to pairs), then the panel stride
         * rounded up to 64 bytes, then panels * stride * esize; each step checked. */
        if (C > (SIZE_MAX - 64) / sizeof(float) / NR)
                return -EOVERFLOW;
        rows = type == DSA_WTYPE_BF16_DOT ? C + (C & 1) : C;
        stride = (rows * NR + 64 / esize - 1) / (64 / esize) * (64 / esize);
        if (stride > 0 && panels > SIZE_MAX / esize / stride)
                return -EOVERFLOW;
        n = panels * stride;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        if (posix_memalign(&data, 64, n ? n * esize : 64) != 0) {
                free(p);
                return -ENOMEM;
        }
        *p = (struct dsa_packed_f32) {
                .isa = isa, .type = type, .OC = OC, .C = C, .nr = NR, .kc = v->kc, .mc = v->mc,
                .stride = stride, .esize = esize, .panel = v->panel, .panel_u16 = panel_u16,
                .k = k, .data = data,
        };
        /* Padding past the last k row of a panel is never read, but stays defined. */
        memset(data, 0, n * esize);

        for (size_t j = 0; j < panels; j++) {
                size_t cols = OC - j * NR < NR ? OC - j * NR : NR;
                if (type == DSA_WTYPE_F32) {
                        float *b = (float *) p->data + j * stride;
                        for (size_t c = 0; c < C; c++)
                                for (size_t l = 0; l < cols; l++)
                                        b[c * NR + l] = weight_f32[(j * NR + l) * C + c];
                } else if (type == DSA_WTYPE_BF16_DOT) {
                        uint16_t *b = (uint16_t *) p->data + j * stride;
                        for (size_t c = 0; c < C; c++)
                                for (size_t l = 0; l < cols; l++)
                                        b[(c / 2) * 2 * NR + 2 * l + c % 2] =
                                                source_u16(weight_f32, weight_u16, (j * NR + l) * C + c, DSA_WTYPE_BF16);
                } else {
                        uint16_t *b = (uint16_t *) p->data + j * stride;
                        for (size_t c = 0; c < C; c++)
                                for (size_t l = 0; l < cols; l++)
                                        b[c * NR + (type == DSA_WTYPE_BF16 ? bf16_pos(l, NR) : l)] =
                                                source_u16(weight_f32, weight_u16, (j * NR + l) * C + c, type);
                }
        }
        *ret = p;
        return 0;
}

int dsa__packed_f32_new_isa(enum dsa_isa isa, const float *weight, size_t OC, size_t C,
                            struct dsa_packed_f32 **ret) {
        if (!weight && OC > 0 && C > 0)
                return -EINVAL;
        return dsa__packed_new_isa_typed(isa, DSA_WTYPE_F32, weight, NULL, OC, C, ret);
}

int dsa_packed_f32_new(const float *weight, size_t OC, size_t C, struct dsa_packed_f32 **ret) {
        return dsa__packed_f32_new_isa(dsa_kernels()->isa, weight, OC, C, ret);
}

int dsa_packed_f32_new_typed(const float *weight, size_t OC, size_t C, enum dsa_wtype type,
                             struct dsa_packed_f32 **ret) {
        if (!weight && OC > 0 && C > 0)
                return -EINVAL;
        return dsa__packed_new_isa_typed(dsa_kernels()->isa, type, weight, NULL, OC, C, ret);
}

int dsa_packed_f32_new_u16(const uint16_t *weight, size_t OC, size_t C, enum dsa_wtype type,
                           struct dsa_packed_f32 **ret) {
        if ((!weight && OC > 0 && C > 0) || type == DSA_WTYPE_F32)
                return -EINVAL;
        return dsa__packed_new_isa_typed(dsa_kernels()->isa, type, NULL, weight, OC, C, ret);
}

enum dsa_wtype dsa_packed_f32_default_wtype(enum dsa_wtype storage) {
        if (storage == DSA_WTYPE_BF16 && dsa_kernels()->isa == DSA_ISA_AVX512 && dsa__cpu_has_avx512bf16())
                return DSA_WTYPE_BF16_DOT;
        return storage;
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

enum dsa_wtype dsa_packed_f32_wtype(const struct dsa_packed_f32 *p) {
        return p ? p->type : DSA_WTYPE_F32;
}

size_t dsa_packed_f32_bytes(const struct dsa_packed_f32 *p) {
        if (!p)
                return 0;
        return (p->OC / p->nr + (p->OC % p->nr != 0)) * p->stride * p->esize;
}

void dsa_packed_f32_unpack(const struct dsa_packed_f32 *p, float *weight) {
        if (!p || !weight)
                return;
        for (size_t o = 0; o < p->OC; o++) {
                const size_t j = o / p->nr, l = o % p->nr;
                const float *bf = (const float *) p->data + j * p->stride + l;
                const uint16_t *bh = (const uint16_t *) p->data + j * p->stride;
                float *w = weight + o * p->C;

                for (size_t c = 0; c < p->C; c++)
                        switch (p->type) {
                        case DSA_WTYPE_F32:
                                w[c] = bf[c * p->nr];
                                break;
                        case DSA_WTYPE_F16:
                                w[c] = dsa__f16_to_f32_one(bh[c * p->nr + l]);
                                break;
                        case DSA_WTYPE_BF16:
                                w[c] = bf16_to_f32(bh[c * p->nr + bf16_pos(l, p->nr)]);
                                break;
                        default:
                                w[c] = bf16_to_f32(bh[(c / 2) * 2 * p->nr + 2 * l + c % 2]);
                                break;
                        }
        }
}

/* inp (N,C) row stride ldi, packed weight (OC,C), bias (OC) or NULL -> out (N, ldo) columns
 * [oc0, oc1); see kernels.h. oc0 and oc1 on panel boundaries (or oc1 = OC), so a panel is never
 * shared between two callers splitting [0, OC). */
void dsa_linear_packed_f32(float *out, size_t ldo, const float *inp, size_t ldi,
                           const struct dsa_packed_f32 *w, const float *bias, size_t N, size_t oc0,
                           size_t oc1, enum dsa_epilogue ep) {
        const size_t C = w ? w->C : 0, NR = w ? w->nr : 1;
        size_t p0, p1, nkb;

        assert(w);
        dsa__gemm_panels(N, C, w->OC, NR, ldo, ldi, oc0, oc1, ep, &p0, &p1);
        if (N == 0 || oc0 == oc1)
                return;

        /* C = 0: out is the bias through the epilogue, as a separate pass (no K block to fuse
         * it into). */
        if (C == 0) {
                for (size_t n = 0; n < N; n++) {
                        float *o = out + n * ldo + oc0;
                        if (bias)
                                memcpy(o, bias + oc0, (oc1 - oc0) * sizeof(float));
                        else
                                memset(o, 0, (oc1 - oc0) * sizeof(float));
                        dsa__epilogue_f32(w->k, o, oc1 - oc0, ep);
                }
                return;
        }

        /* K blocks of equal size, at most w->kc; for BF16_DOT even (w->kc is), so each block
         * starts on a k pair. */
        const size_t kc0 = dsa__gemm_k_blocks(C, w->kc, &nkb);
        const size_t kc = w->type == DSA_WTYPE_BF16_DOT ? kc0 + (kc0 & 1) : kc0;
        const char *data = w->data;

        for (size_t n0 = 0; n0 < N; n0 += w->mc) {
                const size_t nn = N - n0 < w->mc ? N - n0 : w->mc;
                float *o = out + n0 * ldo;
                const float *x = inp + n0 * ldi;

                for (size_t k0 = 0; k0 < C; k0 += kc) {
                        const size_t kk = C - k0 < kc ? C - k0 : kc;
                        const bool first = k0 == 0, last = k0 + kk == C;

                        for (size_t j = p0; j < p1; j++) {
                                const size_t col = j * NR, nr = oc1 - col < NR ? oc1 - col : NR;

                                const void *b = data + (j * w->stride + k0 * NR) * w->esize;

                                if (w->type == DSA_WTYPE_F32)
                                        w->panel(o + col, ldo, x + k0, ldi, b, nn, kk, nr,
                                                 bias ? bias + col : NULL, first, last ? ep : DSA_EPILOGUE_NONE);
                                else
                                        w->panel_u16(o + col, ldo, x + k0, ldi, b, nn, kk, nr,
                                                     bias ? bias + col : NULL, first, last ? ep : DSA_EPILOGUE_NONE);
                        }
                }
        }
}
