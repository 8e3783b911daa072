/* Scalar reference kernels: portable C, accumulating in double wherever a sum runs over a row,
 * so they are the yardstick the SIMD variants are tested against, and the fallback on CPUs
 * without AVX2. Speed is not a goal here; being obviously right is. */
#include <math.h>
#include <string.h>

#include "kernels-internal.h"

/* inp (N,C), gamma (C), beta (C) -> out (N,C); out may alias inp because each row's mean and
 * variance are known before any of its elements is written. Two passes, biased variance, eps
 * inside the square root: torch.nn.LayerNorm. */
void dsa_layernorm_f32_ref(float *out, const float *inp, const float *gamma, const float *beta,
                           size_t N, size_t C, float eps) {
        for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * C;
                float *y = out + n * C;
                double mean = 0, var = 0;

                if (C == 0)
                        continue;
                for (size_t c = 0; c < C; c++)
                        mean += x[c];
                mean /= (double) C;
                for (size_t c = 0; c < C; c++) {
                        double d = x[c] - mean;
                        var += d * d;
                }
                var /= (double) C;

                double rstd = 1.0 / sqrt(var + eps);
                for (size_t c = 0; c < C; c++)
                        y[c] = (float) ((x[c] - mean) * rstd * gamma[c] + beta[c]);
        }
}

/* inp (N,C), gamma (C) -> out (N,C), may alias: gamma * x / sqrt(mean(x^2) + eps), the mean in
 * double (HF's LlamaRMSNorm: x * rsqrt(var + eps), then times the weight). */
void dsa_rmsnorm_f32_ref(float *out, const float *inp, const float *gamma, size_t N, size_t C, float eps) {
        for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * C;
                float *y = out + n * C;
                double ss = 0;

                if (C == 0)
                        continue;
                for (size_t c = 0; c < C; c++)
                        ss += (double) x[c] * x[c];
                double r = 1.0 / sqrt(ss / (double) C + eps);
                for (size_t c = 0; c < C; c++)
                        y[c] = (float) (gamma[c] * (x[c] * r));
        }
}

/* out (n) = a + b; out may alias a or b. */
void dsa_add_f32_ref(float *out, const float *a, const float *b, size_t n) {
        for (size_t i = 0; i < n; i++)
                out[i] = a[i] + b[i];
}

/* out (n) = gate / (1 + e^-gate) * up, in double; out may alias gate or up. */
void dsa_silu_mul_f32_ref(float *out, const float *gate, const float *up, size_t n) {
        for (size_t i = 0; i < n; i++) {
                double g = gate[i];
                out[i] = (float) (g / (1.0 + exp(-g)) * up[i]);
        }
}

/* x (n, HS) in place, pair by pair (kernels.h). */
void dsa_rope_f32_ref(float *x, size_t n, size_t HS, const float *c, const float *s) {
        for (size_t v = 0; v < n; v++)
                for (size_t d = 0; d < HS; d += 2) {
                        float *p = x + v * HS + d;
                        const float x0 = p[0], x1 = p[1];
                        p[0] = x0 * c[d] + x1 * s[d];
                        p[1] = x1 * c[d + 1] + x0 * s[d + 1];
                }
}

/* x (n) in place: 0.5*x*(1+erf(x/sqrt(2))), in double. */
void dsa_gelu_erf_f32_ref(float *x, size_t n) {
        for (size_t i = 0; i < n; i++) {
                double v = x[i];
                x[i] = (float) (0.5 * v * (1.0 + erf(v * M_SQRT1_2)));
        }
}

/* x (n) in place: 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))), in double. */
void dsa_gelu_tanh_f32_ref(float *x, size_t n) {
        const double k = sqrt(2.0 / M_PI);

        for (size_t i = 0; i < n; i++) {
                double v = x[i];
                x[i] = (float) (0.5 * v * (1.0 + tanh(k * (v + 0.044715 * v * v * v))));
        }
}

/* x (N,C) in place, softmax over each row, the row maximum subtracted first so exp() never
 * overflows. A row of all -inf becomes NaN, as in PyTorch. */
void dsa_softmax_f32_ref(float *x, size_t N, size_t C) {
        for (size_t n = 0; n < N; n++) {
                float *row = x + n * C;
                float max = -INFINITY;
                double sum = 0;

                for (size_t c = 0; c < C; c++)
                        max = fmaxf(max, row[c]);
                for (size_t c = 0; c < C; c++)
                        sum += exp((double) row[c] - max);
                for (size_t c = 0; c < C; c++)
                        row[c] = (float) (exp((double) row[c] - max) / sum);
        }
}

void dsa_softmax_sum_f32_ref(float *acc, float *x, size_t N, size_t C) {
        dsa_softmax_f32_ref(x, N, C);
        for (size_t n = 0; n < N; n++)
                for (size_t c = 0; c < C; c++)
                        acc[c] += x[n * C + c];
}

float dsa__f16_to_f32_one(uint16_t h) {
        uint32_t sign = (uint32_t) (h & 0x8000) << 16;
        uint32_t exp = (h >> 10) & 0x1f;
        uint32_t man = h & 0x3ff;
        uint32_t bits;
        float f;

        if (exp == 0x1f) /* inf, or nan with its payload kept and quieted as F16C does */
                bits = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0);
        else if (exp != 0)
                bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
        else if (man == 0)
                bits = sign;
        else {
                /* Subnormal half: man * 2^-24, exactly representable as a normal float. Shift
                 * the leading one into the implicit bit position, lowering the exponent. */
                int e = -1;
                do {
                        man <<= 1;
                        e++;
                } while (!(man & 0x400));
                bits = sign | ((uint32_t) (127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
        memcpy(&f, &bits, sizeof(f));
        return f;
}

/* src (n) IEEE half -> dst (n) fp32; exact for every input. */
void dsa_f16_to_f32_ref(float *dst, const uint16_t *src, size_t n) {
        for (size_t i = 0; i < n; i++)
                dst[i] = dsa__f16_to_f32_one(src[i]);
}

/* src (n) bfloat16 -> dst (n) fp32: bfloat16 is the top half of an fp32. */
void dsa_bf16_to_f32_ref(float *dst, const uint16_t *src, size_t n) {
        for (size_t i = 0; i < n; i++) {
                uint32_t bits = (uint32_t) src[i] << 16;
                memcpy(&dst[i], &bits, sizeof(float));
        }
}

/* q (T,ldq), k (T,ldk), v (T,ldv), HS values per row; valid (T) or NULL; out (T,ldo);
 * probs (T,T) or NULL; scratch (T). For each query row: scores against every key in double,
 * masked keys weight exactly 0 (HF BERT adds finfo.min, which underflows exp() to 0 whenever
 * one key is valid), softmax over the valid keys, then out = sum_j p_j v_j in double.
 * With no valid key every score is the same huge negative number in PyTorch, so the row is
 * uniform over all T keys. */
void dsa_attention_f32_ref(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
                           size_t ldk, const float *v, size_t ldv, const uint8_t *valid, size_t T,
                           size_t HS, float scale, float *probs, float *scratch) {
        size_t nvalid = 0;

        for (size_t j = 0; j < T; j++)
                nvalid += !valid || valid[j];

        for (size_t i = 0; i < T; i++) {
                const float *qi = q + i * ldq;
                float *p = scratch;
                double max = -INFINITY, sum = 0;

                for (size_t j = 0; j < T; j++) {
                        const float *kj = k + j * ldk;
                        double s = 0;

                        for (size_t d = 0; d < HS; d++)
                                s += (double) qi[d] * kj[d];
                        p[j] = (float) (s * scale);
                        if ((!valid || valid[j]) && p[j] > max)
                                max = p[j];
                }

                if (nvalid == 0)
                        for (size_t j = 0; j < T; j++)
                                p[j] = 1.0f / (float) T;
                else {
                        for (size_t j = 0; j < T; j++)
                                if (!valid || valid[j])
                                        sum += exp(p[j] - max);
                        for (size_t j = 0; j < T; j++)
                                p[j] = (!valid || valid[j]) ? (float) (exp(p[j] - max) / sum) : 0.0f;
                }

                for (size_t d = 0; d < HS; d++) {
                        double acc = 0;
                        for (size_t j = 0; j < T; j++)
                                acc += (double) p[j] * v[j * ldv + d];
                        out[i * ldo + d] = (float) acc;
                }
                if (probs)
                        memcpy(probs + i * T, p, T * sizeof(float));
        }
}

/* The reference needs T floats; the blocked SIMD variants (x86/attention-blocked.h) at most,
 * with NR = DSA__ATTENTION_NR_MAX and qb = DSA__ATTENTION_QB_MAX: 64 bytes of alignment slack,
 * T key indices (2 floats each, rounded up to 16 floats), packed K^T (roundup(T, NR) x HS),
 * packed V (roundup(HS, NR) x T) and the score tile (qb x roundup(T, NR)). */
size_t dsa_attention_scratch(size_t T, size_t HS) {
        const size_t NR = DSA__ATTENTION_NR_MAX;
        size_t tp, hp, kt, vp, tile, n;

        if (T > SIZE_MAX / 4 || HS > SIZE_MAX / 4)
                return SIZE_MAX;
        tp = (T + NR - 1) / NR * NR;
        hp = (HS + NR - 1) / NR * NR;
        if (__builtin_mul_overflow(tp, HS, &kt) || __builtin_mul_overflow(hp, T, &vp) ||
            __builtin_mul_overflow(tp, (size_t) DSA__ATTENTION_QB_MAX, &tile) ||
            __builtin_add_overflow(kt, vp, &n) || __builtin_add_overflow(n, tile, &n) ||
            __builtin_add_overflow(n, 16 + (2 * T + 15) / 16 * 16, &n))
                return SIZE_MAX;
        return n > T ? n : T;
}

const struct dsa_kernels dsa__kernels_ref = {
        .isa = DSA_ISA_REF,
        .name = "ref",
        .layernorm_f32 = dsa_layernorm_f32_ref,
        .rmsnorm_f32 = dsa_rmsnorm_f32_ref,
        .add_f32 = dsa_add_f32_ref,
        .silu_mul_f32 = dsa_silu_mul_f32_ref,
        .rope_f32 = dsa_rope_f32_ref,
        .gelu_erf_f32 = dsa_gelu_erf_f32_ref,
        .gelu_tanh_f32 = dsa_gelu_tanh_f32_ref,
        .softmax_f32 = dsa_softmax_f32_ref,
        .softmax_sum_f32 = dsa_softmax_sum_f32_ref,
        .f16_to_f32 = dsa_f16_to_f32_ref,
        .bf16_to_f32 = dsa_bf16_to_f32_ref,
        .attention_f32 = dsa_attention_f32_ref,
};
