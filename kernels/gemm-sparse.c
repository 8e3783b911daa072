/* Sparse pre-packed fp32 GEMM (gemm-sparse.h): packing, the blocking loop nest and the scalar
 * reference microkernel; the AVX2 and AVX-512 panel loops live in x86/gemm-sparse-*.c.
 *
 * The loop nest is the dense one's (gemm-packed.c): rows in chunks of MC, K blocks, panels, then
 * the microkernel's row tiles. K blocks are fixed at pack time (C cut into equal blocks of at most
 * KC columns), and each panel stores where each of its K blocks starts in its list of kept rows,
 * so a block's kept rows and their indices are one contiguous run. Kept rows of a panel are in
 * ascending k, so the broadcasts walk each inp row forward. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "basic/macro.h"
#include "gemm-sparse.h"
#include "kernels-internal.h"

#define NR DSA__SPARSE_NR

struct dsa_packed_sparse {
        enum dsa_isa isa;
        size_t OC, C;
        double density;
        struct dsa_packed_f32 *dense; /* non-NULL: packed dense, the rest unused */

        size_t panels, nkb, mc;
        dsa__gemm_sparse_panel_f32_fn *panel;
        size_t kept;     /* kept k rows over all panels */
        float *data;     /* kept rows, NR floats each, panel after panel, 64-byte aligned */
        uint32_t *idx;   /* (kept) the column of each kept row */
        size_t *start;   /* (panels * nkb + 1) first kept row of (panel j, K block b) at j*nkb+b */
};

/* The scalar microkernel, obviously right: for each row and column a sequential fp32 sum over
 * the kept k (the skipped ones would add exact zeros), then the reference GELU on the row. */
void dsa__gemm_sparse_panel_f32_ref(float *out, size_t ldo, const float *inp, size_t ldi,
                                    const float *b, const uint32_t *idx, size_t nk, size_t N,
                                    size_t nr, const float *bias, bool first, enum dsa_epilogue ep) {
        for (size_t n = 0; n < N; n++) {
                for (size_t l = 0; l < nr; l++) {
                        float acc = first ? (bias ? bias[l] : 0.0f) : out[n * ldo + l];
                        for (size_t t = 0; t < nk; t++)
                                acc += inp[n * ldi + idx[t]] * b[t * NR + l];
                        out[n * ldo + l] = acc;
                }
                dsa__epilogue_f32(&dsa__kernels_ref, out + n * ldo, nr, ep);
        }
}

struct variant {
        size_t kc, mc;
        double max_density;
        dsa__gemm_sparse_panel_f32_fn *panel;
};

/* KC and MC as the dense variants (gemm-packed.c): a K block's kept rows of one panel are at
 * most KC x 64 bytes, so they stay in L1/L2 while the row tiles of a chunk stream past. The
 * density above which the public constructor packs dense: gemm-sparse.h. */
static const struct variant *variant_of(enum dsa_isa isa) {
        static const struct variant ref = { 256, 256, DSA__SPARSE_MAX_DENSITY_AVX2, dsa__gemm_sparse_panel_f32_ref };
#if DSA_HAVE_X86
        static const struct variant avx2 = { 768, 240, DSA__SPARSE_MAX_DENSITY_AVX2, dsa__gemm_sparse_panel_f32_avx2 };
        static const struct variant avx512 = { 768, 240, DSA__SPARSE_MAX_DENSITY_AVX512, dsa__gemm_sparse_panel_f32_avx512 };
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

/* Whether k row k of panel j (cols <= NR channels) has a bit set: +0.0 is the only value
 * dropped, so unpack can write +0.0 back for every dropped float. */
static bool row_kept(const float *weight, size_t C, size_t j, size_t cols, size_t k) {
        for (size_t l = 0; l < cols; l++) {
                uint32_t u;
                memcpy(&u, &weight[(j * NR + l) * C + k], sizeof(u));
                if (u != 0)
                        return true;
        }
        return false;
}

int dsa__packed_sparse_new_isa(enum dsa_isa isa, const float *weight, size_t OC, size_t C,
                               double max_density, struct dsa_packed_sparse **ret) {
        const struct variant *v;
        struct dsa_packed_sparse *p;
        size_t panels, kept = 0, nkb, kc;
        void *data = NULL;
        int r;

        if (!ret || (!weight && OC > 0 && C > 0))
                return -EINVAL;
        if ((unsigned) isa >= _DSA_ISA_MAX || !dsa_kernels_for(isa) || !(v = variant_of(isa)))
                return -EOPNOTSUPP;
        panels = OC / NR + (OC % NR != 0);
        if (C > UINT32_MAX || (C > 0 && panels > SIZE_MAX / sizeof(float) / NR / C))
                return -EOVERFLOW;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        *p = (struct dsa_packed_sparse) { .isa = isa, .OC = OC, .C = C, .density = 1.0, .panels = panels };

        for (size_t j = 0; j < panels; j++) {
                size_t cols = MIN(OC - j * NR, (size_t) NR);
                for (size_t k = 0; k < C; k++)
                        kept += row_kept(weight, C, j, cols, k);
        }
        if (panels > 0 && C > 0)
                p->density = (double) kept / ((double) panels * (double) C);

        if (p->density > max_density) {
                r = dsa__packed_f32_new_isa(isa, weight, OC, C, &p->dense);
                if (r < 0) {
                        free(p);
                        return r;
                }
                *ret = p;
                return 0;
        }

        /* K blocks of equal size, at most v->kc, as the dense driver. */
        kc = dsa__gemm_k_blocks(C, v->kc, &nkb);
        p->nkb = nkb, p->mc = v->mc, p->panel = v->panel, p->kept = kept;
        p->idx = malloc((kept ? kept : 1) * sizeof(uint32_t));
        p->start = malloc((panels * nkb + 1) * sizeof(size_t));
        if (!p->idx || !p->start || posix_memalign(&data, 64, (kept ? kept : 1) * NR * sizeof(float)) != 0) {
                dsa_packed_sparse_free(p);
                return -ENOMEM;
        }
        p->data = data;

        size_t t = 0;
        for (size_t j = 0; j < panels; j++) {
                size_t cols = MIN(OC - j * NR, (size_t) NR);
                for (size_t b = 0; b < nkb; b++) {
                        size_t k1 = MIN((b + 1) * kc, C);
                        p->start[j * nkb + b] = t;
                        for (size_t k = b * kc; k < k1; k++) {
                                float *row;
                                if (!row_kept(weight, C, j, cols, k))
                                        continue;
                                row = p->data + t * NR;
                                for (size_t l = 0; l < cols; l++)
                                        row[l] = weight[(j * NR + l) * C + k];
                                for (size_t l = cols; l < NR; l++)
                                        row[l] = 0.0f;
                                p->idx[t++] = (uint32_t) k;
                        }
                }
        }
        assert(t == kept);
        p->start[panels * nkb] = t;
        *ret = p;
        return 0;
}

int dsa_packed_sparse_new(const float *weight, size_t OC, size_t C, struct dsa_packed_sparse **ret) {
        const enum dsa_isa isa = dsa_kernels()->isa;
        const struct variant *v = variant_of(isa);

        return dsa__packed_sparse_new_isa(isa, weight, OC, C, v ? v->max_density : -1.0, ret);
}

struct dsa_packed_sparse *dsa_packed_sparse_free(struct dsa_packed_sparse *p) {
        if (p) {
                dsa_packed_f32_free(p->dense);
                free(p->data);
                free(p->idx);
                free(p->start);
                free(p);
        }
        return NULL;
}

size_t dsa_packed_sparse_block(const struct dsa_packed_sparse *p) {
        if (!p)
                return 0;
        return p->dense ? dsa_packed_f32_block(p->dense) : NR;
}

size_t dsa_packed_sparse_rows(const struct dsa_packed_sparse *p) {
        return p ? p->OC : 0;
}

size_t dsa_packed_sparse_cols(const struct dsa_packed_sparse *p) {
        return p ? p->C : 0;
}

size_t dsa_packed_sparse_bytes(const struct dsa_packed_sparse *p) {
        size_t B;

        if (!p)
                return 0;
        if (p->dense) {
                B = dsa_packed_f32_block(p->dense);
                return (p->OC / B + (p->OC % B != 0)) * B * p->C * sizeof(float);
        }
        return p->kept * (NR * sizeof(float) + sizeof(uint32_t)) + (p->panels * p->nkb + 1) * sizeof(size_t);
}

double dsa_packed_sparse_density(const struct dsa_packed_sparse *p) {
        return p ? p->density : 0;
}

bool dsa_packed_sparse_is_sparse(const struct dsa_packed_sparse *p) {
        return p && !p->dense;
}

enum dsa_isa dsa__packed_sparse_isa(const struct dsa_packed_sparse *p) {
        return p->isa;
}

void dsa_packed_sparse_unpack(const struct dsa_packed_sparse *p, float *weight) {
        if (!p || !weight)
                return;
        if (p->dense) {
                dsa_packed_f32_unpack(p->dense, weight);
                return;
        }
        memset(weight, 0, p->OC * p->C * sizeof(float));
        for (size_t j = 0; j < p->panels; j++) {
                size_t cols = MIN(p->OC - j * NR, (size_t) NR);
                for (size_t t = p->start[j * p->nkb]; t < p->start[(j + 1) * p->nkb]; t++)
                        for (size_t l = 0; l < cols; l++)
                                weight[(j * NR + l) * p->C + p->idx[t]] = p->data[t * NR + l];
        }
}

/* inp (N,C) row stride ldi, packed sparse weight (OC,C), bias (OC) or NULL -> out (N, ldo)
 * columns [oc0, oc1); see gemm-sparse.h. oc0 and oc1 on panel boundaries (or oc1 = OC), so a
 * panel is never shared between two callers splitting [0, OC). With C = 0 there is one K block
 * of no rows: the microkernel writes the bias through the epilogue. */
void dsa_linear_packed_sparse(float *out, size_t ldo, const float *inp, size_t ldi,
                              const struct dsa_packed_sparse *w, const float *bias, size_t N,
                              size_t oc0, size_t oc1, enum dsa_epilogue ep) {
        size_t p0, p1;

        assert(w);
        if (w->dense) {
                dsa_linear_packed_f32(out, ldo, inp, ldi, w->dense, bias, N, oc0, oc1, ep);
                return;
        }
        dsa__gemm_panels(N, w->C, w->OC, NR, ldo, ldi, oc0, oc1, ep, &p0, &p1);
        if (N == 0 || oc0 == oc1)
                return;

        const size_t nkb = w->nkb;

        for (size_t n0 = 0; n0 < N; n0 += w->mc) {
                const size_t nn = MIN(N - n0, w->mc);
                float *o = out + n0 * ldo;
                const float *x = inp + n0 * ldi;

                for (size_t b = 0; b < nkb; b++) {
                        const bool first = b == 0, last = b + 1 == nkb;

                        for (size_t j = p0; j < p1; j++) {
                                const size_t col = j * NR, nr = MIN(oc1 - col, (size_t) NR);
                                const size_t s = w->start[j * nkb + b], e = w->start[j * nkb + b + 1];

                                w->panel(o + col, ldo, x, ldi, w->data + s * NR, w->idx + s, e - s, nn, nr,
                                         bias ? bias + col : NULL, first, last ? ep : DSA_EPILOGUE_NONE);
                        }
                }
        }
}
