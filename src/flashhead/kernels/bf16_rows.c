/* Stage 2 on bf16 head rows, read in place (kernels/native.py compiles this file with q8_0.c).

   vLLM serves a model in bf16 on the CPU, so its head is a bf16 tensor. torch's CPU products of bf16
   operands return bf16 (rounded logits), and the fp32 path first copies the gathered rows to fp32
   (twice the bytes, a second pass). Here each bf16 value is widened to fp32 exactly (its 16 bits
   shifted up) inside the product, so the logits are the fp32 products of the rows as stored:

   fh_bf16_dot  z[i, r] = row(r) . h[i] for the probed rows only, fp32 multiply-adds, the rows
                gathered by id inside the loop (no copy), each row read once for all n states.
                run = 1: row(r) = w[ids[r]] (the model's rows, read in place, scattered over the
                whole tensor); run = cs: ids name runs of cs consecutive rows, row(r) =
                w[ids[r / cs] * cs + r % cs] (the rows kept in cluster order, FlashHead's `arrange`:
                a probed cluster is one contiguous run, read at about twice the rate).

   Summation order: 16 partial sums (two AVX2 vectors), then added pairwise; the fp32 path sums in
   MKL's order. Both are fp32 dots of the same operands (tests/test_kernels.py states the tolerance).
*/
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FH_AVX2 1
#endif

static inline float bf16_to_fp32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Up to 4 hidden states against one row: each 8-value chunk of the row is widened once. */
static void dot4(const uint16_t *w, const float *h, int64_t d, int64_t m, float *out, int64_t stride) {
#ifdef FH_AVX2
    __m256 acc[4][2];
    for (int64_t i = 0; i < 4; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        const __m256 a = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + j))), 16));
        const __m256 b = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + j + 8))), 16));
        for (int64_t i = 0; i < m; i++) {
            acc[i][0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(h + i * d + j), acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(b, _mm256_loadu_ps(h + i * d + j + 8), acc[i][1]);
        }
    }
    for (int64_t i = 0; i < m; i++) {
        const __m256 s8 = _mm256_add_ps(acc[i][0], acc[i][1]);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        float r = _mm_cvtss_f32(s);
        for (int64_t t = j; t < d; t++) r += bf16_to_fp32(w[t]) * h[i * d + t];
        out[i * stride] = r;
    }
#else
    for (int64_t i = 0; i < m; i++) {
        float r = 0.0f;
        for (int64_t t = 0; t < d; t++) r += bf16_to_fp32(w[t]) * h[i * d + t];
        out[i * stride] = r;
    }
#endif
}

/* z [n, R] row-major; h [n, d] fp32 row-major; ids [R / run]; w [*, ld] bf16 (ld >= d, in elements). */
void fh_bf16_dot(const uint16_t *w, int64_t ld, const int64_t *ids, int64_t R, int64_t run, const float *h,
                 int64_t n, int64_t d, float *z, int32_t threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < R; r++) {
#ifdef FH_AVX2
        /* the row 4 ahead when rows are scattered (the hardware prefetcher does not follow them);
           in runs, the next run's first row, at the start of each run */
        const int64_t ahead = run == 1 ? r + 4 : (r % run == 0 ? r + run : R);
        if (ahead < R) {
            const char *next = (const char *)(w + (ids[ahead / run] * run + ahead % run) * ld);
            for (int64_t b = 0; b < d * 2; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
        }
#endif
        const uint16_t *row = w + (ids[r / run] * run + r % run) * ld;
        for (int64_t i = 0; i < n; i += 4)
            dot4(row, h + i * d, d, n - i < 4 ? n - i : 4, z + i * R + r, R);
    }
}
