/* The AMX panel loop of the INT8 GEMM (driver and layout: gemm-q8.c, gemm-q8.h), for CPUs with
 * AMX-INT8 (Sapphire Rapids and later) once the kernel has granted the process the tile state
 * (dsa__q8_amx_usable() in gemm-q8.c asks for it).
 *
 * The packed layout is already AMX's: a panel's k group g is one 64-byte row of 16 columns x 4
 * bytes, so 16 consecutive groups are a B tile (64 k x 16 columns, stride 64) read in place.
 * An A tile is 16 activation rows x 64 bytes, read in place with the rows' stride where all 16
 * rows and 64 bytes exist, else from a zero-padded copy (the last rows, the last k block when
 * K4 is not a multiple of 16). tdpbssd multiplies s8 by s8 into int32 with wrap-around, so no
 * sign trick and no row sums are needed, and the sums are exact (|dot| < 2^31, gemm-q8.h).
 * Tiles: tmm0-3 the 32 x 32 int32 block of out (rows 0-15 / 16-31 x columns 0-15 / 16-31),
 * tmm4-5 the two row halves of A, tmm6-7 the two panels of B. The finished block goes through
 * memory once (4 KiB) into the AVX-512 epilogue of the VNNI kernel: fp32, times sx * sw, + bias,
 * GELU, masked stores. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "../gemm-q8.h"
#include "gemm-tile-avx512.h"

#define NR DSA__Q8_NR
#define TM 16 /* rows of an A or C tile */
#define TK 16 /* k groups (64 bytes of k) of a tile */

struct tile_config {
        uint8_t palette;
        uint8_t start_row;
        uint8_t reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
};

/* The first rows rows of q, bytes [k0, k0 + 64) of each, as a 16 x 64 tile in buf: zeros past
 * the rows that exist and past byte S of a row. */
static void pad_rows(int8_t *buf, const int8_t *q, size_t ldq, size_t S, size_t rows, size_t k0) {
        const size_t len = S - k0 < 64 ? S - k0 : 64;

        memset(buf, 0, TM * 64);
        for (size_t r = 0; r < rows; r++)
                memcpy(buf + r * 64, q + r * ldq + k0, len);
}

/* The finished int32 block c (rows x 32, row stride 32 via two 16-column halves) -> out, as
 * the VNNI kernel's epilogue (without its row-sum correction). */
static void epilogue(float *out, size_t ldo, const int32_t (*c)[2][TM * NR], const float *sx,
                     const float *sw, const float *bias, size_t rows, size_t nr, enum dsa_epilogue ep) {
        __mmask16 m[2];
        __m512 bv[2], swv[2];

        tile_masks(nr, m, 2);
        swv[0] = _mm512_maskz_loadu_ps(m[0], sw), swv[1] = _mm512_maskz_loadu_ps(m[1], sw + NR);
        tile_bias(bias, m, bv, 2);
        for (size_t r = 0; r < rows; r++)
                tile_q8_row(out + r * ldo, _mm512_load_si512(c[r / TM][0] + (r % TM) * NR),
                            _mm512_load_si512(c[r / TM][1] + (r % TM) * NR), sx[r], swv, bv, m, ep);
}

/* q (N, ldq) x panels b, b + K4*64 -> out (N, ldo), nr <= 32 columns; see
 * dsa__gemm_panel_q8_fn. With nr <= 16 the second panel may not exist: the first is read twice
 * and the second half of the block is never stored. */
void dsa__gemm_panel_q8_amx(float *out, size_t ldo, const int8_t *q, size_t ldq, const float *sx,
                            const int32_t *xsum, const int8_t *b, const float *sw, const float *bias,
                            size_t N, size_t K4, size_t nr, enum dsa_epilogue ep) {
        const int8_t *b1 = nr > NR ? b + K4 * 64 : b;
        const size_t S = K4 * 4, nkb = (K4 + TK - 1) / TK, kfull = K4 / TK;
        int32_t c[2][2][TM * NR] __attribute__((aligned(64)));
        int8_t abuf[2][TM * 64] __attribute__((aligned(64)));
        int8_t bbuf[2][TK * 64] __attribute__((aligned(64)));
        struct tile_config cfg = { .palette = 1 };

        (void) xsum;
        for (int t = 0; t < 8; t++) {
                cfg.colsb[t] = 64;
                cfg.rows[t] = 16;
        }
        _tile_loadconfig(&cfg);
        /* The last k block's partial panels, zero-padded once per call. */
        if (kfull < nkb) {
                memset(bbuf, 0, sizeof(bbuf));
                memcpy(bbuf[0], b + kfull * TK * 64, (K4 - kfull * TK) * 64);
                memcpy(bbuf[1], b1 + kfull * TK * 64, (K4 - kfull * TK) * 64);
        }

        for (size_t n = 0; n < N; n += 2 * TM) {
                const size_t rows = N - n < 2 * TM ? N - n : 2 * TM;
                const size_t rows0 = rows < TM ? rows : TM, rows1 = rows - rows0;
                const int8_t *a = q + n * ldq;

                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (size_t kb = 0; kb < nkb; kb++) {
                        const bool full_k = kb < kfull;
                        const int8_t *w0 = full_k ? b + kb * TK * 64 : bbuf[0];
                        const int8_t *w1 = full_k ? b1 + kb * TK * 64 : bbuf[1];

                        _tile_loadd(6, w0, 64);
                        _tile_loadd(7, w1, 64);
                        if (full_k && rows0 == TM) {
                                _tile_loadd(4, a + kb * 64, ldq);
                        } else {
                                pad_rows(abuf[0], a, ldq, S, rows0, kb * 64);
                                _tile_loadd(4, abuf[0], 64);
                        }
                        _tile_dpbssd(0, 4, 6);
                        _tile_dpbssd(1, 4, 7);
                        if (rows1 == 0)
                                continue;
                        if (full_k && rows1 == TM) {
                                _tile_loadd(5, a + TM * ldq + kb * 64, ldq);
                        } else {
                                pad_rows(abuf[1], a + TM * ldq, ldq, S, rows1, kb * 64);
                                _tile_loadd(5, abuf[1], 64);
                        }
                        _tile_dpbssd(2, 5, 6);
                        _tile_dpbssd(3, 5, 7);
                }
                _tile_stored(0, c[0][0], NR * 4);
                _tile_stored(1, c[0][1], NR * 4);
                if (rows1) {
                        _tile_stored(2, c[1][0], NR * 4);
                        _tile_stored(3, c[1][1], NR * 4);
                }
                epilogue(out + n * ldo, ldo, (const int32_t(*)[2][TM * NR]) c, sx + n, sw, bias, rows, nr, ep);
        }
        _tile_release();
}
