/* Stage 2 on the head's rows, bf16 or fp32, read in place (kernels/native.py compiles this file
   with the others).

   vLLM serves a model in bf16 on the CPU, so its head is a bf16 tensor. torch's CPU products of bf16
   operands return bf16 (rounded logits), and a gather first copies the rows (a second pass over
   them). Here each bf16 value is widened to fp32 exactly (its 16 bits shifted up) inside the
   product, so the logits are the fp32 products of the rows as stored; fp32 rows are read as they are:

   fh_bf16_dot, fh_f32_dot
                z[i, r] = row(r) . h[i] for the probed rows only, fp32 multiply-adds, the rows
                gathered by id inside the loop (no copy), each row read once for all n states.
                run = 1: row(r) = w[ids[r]] (the model's rows, read in place, scattered over the
                whole tensor); run = cs: ids name runs of cs consecutive rows, row(r) =
                w[ids[r / cs] * cs + r % cs] (the rows kept in cluster order, FlashHead's `arrange`:
                a probed cluster is one contiguous run, read at about twice the rate).

   Summation order: 16 partial sums (two AVX2 vectors), added pairwise, then the tail; the same for
   every state whatever n is, so a position's logits do not depend on the rest of its batch (bit for
   bit: vLLM's n-gram verification scores k+1 rows per request where plain decoding scores one).
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
static inline float f32_value(float f) { return f; }

#ifdef FH_AVX2
static inline __m256 bf16_load8(const uint16_t *w) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w)), 16));
}
static inline __m256 f32_load8(const float *w) { return _mm256_loadu_ps(w); }
static inline float hsum8(__m256 s8) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
/* Up to 4 hidden states against one row: each 8-value chunk of the row is loaded once. */
#define FH_DOT4(NAME, T, LOAD8, VALUE)                                                              \
static void NAME(const T *w, const float *h, int64_t d, int64_t m, float *out, int64_t stride) {   \
    __m256 acc[4][2];                                                                               \
    for (int64_t i = 0; i < 4; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();                   \
    int64_t j = 0;                                                                                  \
    for (; j + 16 <= d; j += 16) {                                                                  \
        const __m256 a = LOAD8(w + j), b = LOAD8(w + j + 8);                                       \
        for (int64_t i = 0; i < m; i++) {                                                           \
            acc[i][0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(h + i * d + j), acc[i][0]);             \
            acc[i][1] = _mm256_fmadd_ps(b, _mm256_loadu_ps(h + i * d + j + 8), acc[i][1]);         \
        }                                                                                           \
    }                                                                                               \
    for (int64_t i = 0; i < m; i++) {                                                               \
        float r = hsum8(_mm256_add_ps(acc[i][0], acc[i][1]));                                       \
        for (int64_t t = j; t < d; t++) r += VALUE(w[t]) * h[i * d + t];                            \
        out[i * stride] = r;                                                                        \
    }                                                                                               \
}
#else
#define FH_DOT4(NAME, T, LOAD8, VALUE)                                                              \
static void NAME(const T *w, const float *h, int64_t d, int64_t m, float *out, int64_t stride) {   \
    for (int64_t i = 0; i < m; i++) {                                                               \
        float r = 0.0f;                                                                             \
        for (int64_t t = 0; t < d; t++) r += VALUE(w[t]) * h[i * d + t];                            \
        out[i * stride] = r;                                                                        \
    }                                                                                               \
}
#endif

/* z [n, R] row-major; h [n, d] fp32 row-major; ids [R / run]; w [*, ld] (ld >= d, in elements). */
#ifdef FH_AVX2
/* the row 4 ahead when rows are scattered (the hardware prefetcher does not follow them); in runs,
   the next run's first row, at the start of each run */
#define FH_PREFETCH(T)                                                                              \
    const int64_t ahead = run == 1 ? r + 4 : (r % run == 0 ? r + run : R);                         \
    if (ahead < R) {                                                                                \
        const char *next = (const char *)(w + (ids[ahead / run] * run + ahead % run) * ld);        \
        for (int64_t b = 0; b < d * (int64_t)sizeof(T); b += 64) _mm_prefetch(next + b, _MM_HINT_T0); \
    }
#else
#define FH_PREFETCH(T)
#endif
/* Rows in blocks of about 256 KB (they stay in L2 while every group of 4 states passes over them;
   the group's states stay in L1): the threads split the blocks. A block's rows meet 4 states at a
   time, so at n <= 4 this is one pass over the rows, and at n = 16 the rows are read from L2 four
   times instead of the 16 states being read from L2 for every row. */
#define FH_ROWS_DOT(NAME, DOT4, T)                                                                  \
void NAME(const T *w, int64_t ld, const int64_t *ids, int64_t R, int64_t run, const float *h,     \
          int64_t n, int64_t d, float *z, int32_t threads) {                                        \
    int64_t block = (256 * 1024) / (d * (int64_t)sizeof(T));                                        \
    if (block < 16) block = 16;                                                                     \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                               \
    for (int64_t r0 = 0; r0 < R; r0 += block) {                                                     \
        const int64_t r1 = r0 + block < R ? r0 + block : R;                                         \
        for (int64_t i = 0; i < n; i += 4)                                                          \
            for (int64_t r = r0; r < r1; r++) {                                                     \
                if (i == 0) { FH_PREFETCH(T) }                                                      \
                const T *row = w + (ids[r / run] * run + r % run) * ld;                            \
                DOT4(row, h + i * d, d, n - i < 4 ? n - i : 4, z + i * R + r, R);                  \
            }                                                                                       \
    }                                                                                               \
}

FH_DOT4(dot4_bf16, uint16_t, bf16_load8, bf16_to_fp32)
FH_DOT4(dot4_f32, float, f32_load8, f32_value)
FH_ROWS_DOT(fh_bf16_dot, dot4_bf16, uint16_t)
FH_ROWS_DOT(fh_f32_dot, dot4_f32, float)
