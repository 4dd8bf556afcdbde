/* Stage 1 on int8 centroids (the CPU kernel's, kernels/cpu.py; kernels/native.py compiles this file
   with the others).

   The same arithmetic as torch's weight-only int8 product (`_weight_int8pack_mm`, which the CPU
   kernel uses where this library could not be compiled): h rounded to bf16 by the caller, each int8 value widened to fp32,
   fp32 multiply-adds, times the row's scale (a bf16 value), the score rounded to bf16. Only the
   order of the fp32 sums differs, so a score can differ from torch's by one bf16 step where the
   fp32 sum lies at a rounding boundary (tests/test_kernels.py counts them on real hidden states).
   It exists for speed: the K x d int8 table read from memory once at the memory's rate (each row
   then meets the states two at a time from L1), where torch's kernel reads it about half as fast on
   the AVX2 host (docs/KERNELS.md); and every state's sums run in one order whatever n is.

   fh_i8_scores_bf16  s[i, k] = bf16(scale[k] * sum_j q[k, j] * h[i, j])   [n, K] fp32
*/
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FH_AVX2 1
#endif

static inline float round_bf16(float f) {   /* to the nearest bf16, ties to even (finite f) */
    uint32_t x;
    memcpy(&x, &f, 4);
    x = (x + 0x7fff + ((x >> 16) & 1)) & 0xffff0000u;
    memcpy(&f, &x, 4);
    return f;
}

#ifdef FH_AVX2
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#endif

/* One or two states against one int8 row: four independent sums per state (a chain of fused
   multiply-adds waits for the previous one's result; one or two chains leave the unit idle most
   cycles), each 32-value chunk of the row widened once. The order of the sums is the same for
   every state whatever n is, so a position's scores do not depend on the rest of its batch (bit
   for bit; rows.c says why). */
static void dot2_i8(const int8_t *q, const float *h, int64_t d, int64_t m, float scale, float *out,
                    int64_t stride) {
    float r[2] = {0.0f, 0.0f};
    int64_t j = 0;
#ifdef FH_AVX2
    __m256 acc[2][4];
    for (int64_t i = 0; i < 2; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = _mm256_setzero_ps();
    for (; j + 32 <= d; j += 32) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(q + j));
        const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
        const __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
        const __m256 b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
        const __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
        const __m256 e = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
        for (int64_t i = 0; i < m; i++) {
            const float *x = h + i * d + j;
            acc[i][0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(x), acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(b, _mm256_loadu_ps(x + 8), acc[i][1]);
            acc[i][2] = _mm256_fmadd_ps(c, _mm256_loadu_ps(x + 16), acc[i][2]);
            acc[i][3] = _mm256_fmadd_ps(e, _mm256_loadu_ps(x + 24), acc[i][3]);
        }
    }
    for (int64_t i = 0; i < m; i++)
        r[i] = hsum(_mm256_add_ps(_mm256_add_ps(acc[i][0], acc[i][1]), _mm256_add_ps(acc[i][2], acc[i][3])));
#endif
    for (int64_t i = 0; i < m; i++) {
        for (int64_t t = j; t < d; t++) r[i] += (float)q[t] * h[i * d + t];
        out[i * stride] = round_bf16(r[i] * scale);
    }
}

static inline float bf16_to_fp32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* q [K, d] int8 row-major; scale [K] bf16 (as stored); h [n, d] fp32 (bf16 values); s [n, K]. */
void fh_i8_scores_bf16(const int8_t *q, const uint16_t *scale, int64_t K, const float *h, int64_t n,
                       int64_t d, float *s, int32_t threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t k = 0; k < K; k++) {
        const float sk = bf16_to_fp32(scale[k]);
        for (int64_t i = 0; i < n; i += 2)
            dot2_i8(q + k * d, h + i * d, d, n - i < 2 ? n - i : 2, sk, s + i * K + k, K);
    }
}
