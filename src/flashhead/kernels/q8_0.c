/* Stage 2 on GGUF Q8_0 head rows, read in place (kernels/native.py compiles this file once).

   A Q8_0 row of d values is d/32 blocks of 34 bytes: an fp16 scale, then 32 int8 values; the row's
   value j is scale[j/32] * q[j]. The head is the GGUF file's own tensor (memory-mapped, shared with
   llama.cpp's mapping of the same file), so FlashHead keeps no second copy of it.

   fh_q8_dot   z[n, r] = row(ids[r]) . h[n] for the probed rows only, computed as llama.cpp computes its
               dense logits (h quantized to Q8_0 blocks, integer block dots, fp32 sums)
   fh_q8_rows  dequantized rows [R, d] fp32 (the always-exact tokens, the fingerprint, tests)
   fh_q8_dense the dense head: every row . every h, each row read once for all n states
   fh_q8_dense_argmax  its greedy tokens only (no [n, V] logits written)
   fh_i8_scores  stage 1 on the int8 centroids (quant.py), h quantized the same way
*/
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#define QK 32
#define BLOCK_BYTES (2 + QK)
#ifndef PREFETCH
#define PREFETCH 8
#endif

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__F16C__)
static inline float fp16_to_fp32(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t fp32_to_fp16(float f) { return _cvtss_sh(f, 0); }  /* round to nearest even */
#else
static float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static uint16_t fp32_to_fp16(float f) {   /* round to nearest even (scales: normal range only) */
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (exp <= 0) return (uint16_t)sign;            /* below fp16's normal range: flush */
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
    const uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)h;
}
#endif

static void dequant_row(const uint8_t *row, int64_t d, float *out) {
    for (int64_t b = 0; b < d / QK; b++) {
        const uint8_t *blk = row + b * BLOCK_BYTES;
        uint16_t s16;
        memcpy(&s16, blk, 2);
        const float s = fp16_to_fp32(s16);
        const int8_t *q = (const int8_t *)(blk + 2);
        for (int k = 0; k < QK; k++) out[b * QK + k] = s * (float)q[k];
    }
}

/* The activation side, as llama.cpp's CPU matmul does it for a Q8_0 weight (ggml-cpu's x86
   quantize_row_q8_0): each block of 32 values of h becomes int8 rint(x * 127/amax) with the scale
   amax/127 stored as fp16. The product of a row block and an h block is then
   fp32(dw) * fp32(dh) * (integer dot of the int8 values): llama.cpp's own logits, up to the order
   of the fp32 sums, so that FlashHead with every cluster probed picks llama.cpp's tokens. */
static void quantize_h(const float *x, int64_t d, int8_t *q, float *scale) {
    for (int64_t b = 0; b < d / QK; b++) {
        float amax = 0.f;
        for (int k = 0; k < QK; k++) {
            const float a = fabsf(x[b * QK + k]);
            amax = a > amax ? a : amax;
        }
        const float id = amax != 0.f ? 127.f / amax : 0.f;
        scale[b] = fp16_to_fp32(fp32_to_fp16(amax / 127.f));
        for (int k = 0; k < QK; k++) q[b * QK + k] = (int8_t)rintf(x[b * QK + k] * id);
    }
}

/* Blocks of 32 int8 values (each `stride` bytes apart, after an fp16 scale when `scaled`) . the
   quantized h: llama.cpp's vec_dot_q8_0_q8_0 (the AVX2 form where the CPU has it: 8 fp32 lanes of
   block sums, fused multiply-add with the block's scales, one horizontal sum at the end). */
/* Block b's int8 values; *d = its scale (fp16, when `scaled`) times h's block scale. */
static inline const uint8_t *block_at(const uint8_t *w, int64_t b, int64_t stride, int scaled,
                                      float xs, float *d) {
    const uint8_t *blk = w + b * stride;
    *d = xs;
    if (!scaled) return blk;
    uint16_t s16;
    memcpy(&s16, blk, 2);
    *d = fp16_to_fp32(s16) * xs;
    return blk + 2;
}

static inline float dot_blocks(const uint8_t *w, int64_t stride, int scaled, const int8_t *x,
                               const float *xs, int64_t nb) {
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++) {
        float d;
        const uint8_t *blk = block_at(w, b, stride, scaled, xs[b], &d);
        const __m256i qw = _mm256_loadu_si256((const __m256i *)blk);
        const __m256i qx = _mm256_loadu_si256((const __m256i *)(x + b * QK));
        /* |w| * (x with w's sign): unsigned x signed pairs, no int16 overflow (|q| <= 127) */
        const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), acc);
    }
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
#else
    float acc = 0.f;
    for (int64_t b = 0; b < nb; b++) {
        float d;
        const uint8_t *blk = block_at(w, b, stride, scaled, xs[b], &d);
        const int8_t *q = (const int8_t *)blk;
        int32_t isum = 0;
        for (int k = 0; k < QK; k++) isum += (int32_t)q[k] * (int32_t)x[b * QK + k];
        acc += (float)isum * d;
    }
    return acc;
#endif
}

/* one Q8_0 row . one quantized h */
static inline float row_dot(const uint8_t *row, const int8_t *x, const float *xs, int64_t nb) {
    return dot_blocks(row, BLOCK_BYTES, 1, x, xs, nb);
}

/* z[r] = row(rows[r]) . one quantized h, for r < R; rows PREFETCH ahead are requested early: they
   are scattered over the tensor, so their cache misses (and TLB walks) overlap earlier products. */
static void score_rows(const uint8_t *blocks, int64_t row_bytes, const int64_t *rows, int64_t R,
                       const int8_t *x, const float *xs, int64_t nb, float *z, int32_t threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < R; r++) {
        if (r + PREFETCH < R) {
            const uint8_t *next = blocks + rows[r + PREFETCH] * row_bytes;
            for (int64_t off = 0; off < row_bytes; off += 64) __builtin_prefetch(next + off, 0, 0);
        }
        z[r] = row_dot(blocks + rows[r] * row_bytes, x, xs, nb);
    }
}

/* z [n, R] row-major; h [n, d] row-major; ids [R]; rows of `row_bytes` bytes from `base`. */
void fh_q8_dot(const uint8_t *base, int64_t row_bytes, const int64_t *ids, int64_t R,
               const float *h, int64_t n, int64_t d, float *z, int32_t threads) {
    const int64_t nb = d / QK;
    int8_t qh[n * d];
    float sh[n * nb];
    for (int64_t i = 0; i < n; i++) quantize_h(h + i * d, d, qh + i * d, sh + i * nb);
    if (n == 1) {
        score_rows(base, row_bytes, ids, R, qh, sh, nb, z, threads);
        return;
    }
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < R; r++) {       /* each row read once, for all n hidden states */
        const uint8_t *row = base + ids[r] * row_bytes;
        for (int64_t i = 0; i < n; i++) z[i * R + r] = row_dot(row, qh + i * d, sh + i * nb, nb);
    }
}

/* Stage 1 on int8 centroids with one fp32 scale per row (quant.py): s[i, k] = scale[k] *
   sum_b dh_b * (int8 row k . quantized h_i, block b), h quantized as above. */
static inline float i8_dot(const int8_t *w, const int8_t *x, const float *xs, int64_t nb) {
    return dot_blocks((const uint8_t *)w, QK, 0, x, xs, nb);
}

void fh_i8_scores(const int8_t *q, const float *scale, int64_t K, const float *h, int64_t n,
                  int64_t d, float *s, int32_t threads) {
    const int64_t nb = d / QK;
    int8_t qh[n * d];
    float sh[n * nb];
    for (int64_t i = 0; i < n; i++) quantize_h(h + i * d, d, qh + i * d, sh + i * nb);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t k = 0; k < K; k++)
        for (int64_t i = 0; i < n; i++) s[i * K + k] = scale[k] * i8_dot(q + k * d, qh + i * d, sh + i * nb, nb);
}

/* The whole FlashHead step for one batch on Q8_0 rows, no Python between the stages (the torch ops
   of the same step cost ~1 ms per call on the 2-core AVX2 machine: topk alone 280 us for Gemma).

   stage 1   scores[i, k] = fh_i8_scores                               [n, K]
   probe     top[i, :] = the P best clusters of position i (quickselect, any order)   [n, P]
   stage 2   z[i, p*cs + j] = row(cluster top[i,p], slot j) . h_i      [n, P*cs]
             z[i, P*cs + f] = row(exact_rows[f]) . h_i                 (always-exact tokens)
   greedy[i] the token of the first largest z[i, :] (slot_tokens [K*cs]: cluster k's tokens;
             exact_tokens [F]); skipped when greedy is NULL (the caller wants logits)
   Rows: cluster k's slot j is row k*cs + j of `blocks` (cluster order, Q8Rows.arrange), or row
   slot_rows[k*cs + j] when slot_rows is given (the file's order). */
static int cmp_i64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* idx[0..m) -> idx[0..P) hold the P largest of s over them (quickselect, unordered) */
static void partial_top(const float *s, int64_t *idx, int64_t m, int64_t P) {
    int64_t lo = 0, hi = m - 1;
    while (lo < hi) {
        const float pivot = s[idx[lo + (hi - lo) / 2]];
        int64_t a = lo, b = hi;
        while (a <= b) {
            while (s[idx[a]] > pivot) a++;
            while (s[idx[b]] < pivot) b--;
            if (a <= b) { int64_t t = idx[a]; idx[a] = idx[b]; idx[b] = t; a++; b--; }
        }
        if (P - 1 <= b) hi = b;
        else if (P - 1 >= a) lo = a;
        else break;
    }
}

/* The P clusters a position probes (kernels/step.py `rank`): with a context (ctx[k] != 0: the
   sequence holds a token of cluster k), its E best-scored clusters first, then the best of the
   rest by score; `ranked` [K] is scratch for the scores with those lifted above every other. */
static void select_top(const float *s, int64_t K, int64_t P, int64_t *idx, int64_t *out,
                       const uint8_t *ctx, int64_t E, float *ranked) {
    if (ctx && E > 0) {
        int64_t m = 0;
        for (int64_t k = 0; k < K; k++) if (ctx[k]) idx[m++] = k;
        if (m > 0) {
            const int64_t e = E < m ? E : m;
            if (e < m) partial_top(s, idx, m, e);
            memcpy(ranked, s, K * sizeof(float));
            for (int64_t j = 0; j < e; j++) ranked[idx[j]] = INFINITY;
            s = ranked;
        }
    }
    for (int64_t k = 0; k < K; k++) idx[k] = k;
    partial_top(s, idx, K, P);
    memcpy(out, idx, P * sizeof(int64_t));
    /* ascending cluster order: the rows are then read at rising addresses (measured on Gemma's
       arranged head, P = 1,093: 0.64 ms sorted vs 1.75 ms in selection order) */
    qsort(out, P, sizeof(int64_t), cmp_i64);
}

void fh_q8_step(const int8_t *cq, const float *cscale, int64_t K, int64_t P,
                const uint8_t *blocks, int64_t row_bytes, int64_t cs, const int64_t *slot_rows,
                const int64_t *exact_rows, int64_t F, const float *h, int64_t n, int64_t d,
                float *scores, int64_t *top, float *z, int64_t *scratch, int64_t *rows, int32_t threads,
                const int64_t *slot_tokens, const int64_t *exact_tokens, int64_t *greedy,
                const uint8_t *ctx, int64_t E, float *ranked) {
    const int64_t nb = d / QK, width = P * cs + F;
    int8_t qh[n * d];
    float sh[n * nb];
    for (int64_t i = 0; i < n; i++) quantize_h(h + i * d, d, qh + i * d, sh + i * nb);
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < K; k++)
            for (int64_t i = 0; i < n; i++)
                scores[i * K + k] = cscale[k] * i8_dot(cq + k * d, qh + i * d, sh + i * nb, nb);
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++)
            select_top(scores + i * K, K, P, scratch + i * K, top + i * P, ctx ? ctx + i * K : NULL, E,
                       ranked ? ranked + i * K : NULL);
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < n * (P + F); t++) {     /* the rows to score, in z's order */
            const int64_t i = t / (P + F), c = t % (P + F);
            int64_t *r = rows + i * width;
            if (c >= P) {
                r[P * cs + c - P] = exact_rows[c - P];
                continue;
            }
            const int64_t slot = top[i * P + c] * cs;
            for (int64_t j = 0; j < cs; j++) r[c * cs + j] = slot_rows ? slot_rows[slot + j] : slot + j;
        }
    }
    for (int64_t i = 0; i < n; i++)
        score_rows(blocks, row_bytes, rows + i * width, width, qh + i * d, sh + i * nb, nb, z + i * width,
                   threads);
    if (greedy)
        for (int64_t i = 0; i < n; i++) {
            const float *zi = z + i * width;
            int64_t b = 0;
            for (int64_t c = 1; c < width; c++) if (zi[c] > zi[b]) b = c;
            greedy[i] = b < P * cs ? slot_tokens[top[i * P + b / cs] * cs + b % cs] : exact_tokens[b - P * cs];
        }
}

/* The dense head on Q8_0 rows: z[i, v] = row(v) . h_i for every row v < V and every state i < n,
   each row read once for all n states (verified decoding's check: K positions of every sequence
   against the whole head in one pass). Per (row, state) the same operations in the same order as
   row_dot, so a logit here equals, bit for bit, the one a FlashHead step computed for a probed token.
   The states go in groups of up to 8 (their accumulators stay in registers); the row's absolute
   values are taken once per block for the whole group. */
#if defined(__AVX2__) && defined(__FMA__)
static inline float hsum_acc(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
#define FH_DENSE_GROUP(G)                                                                          \
static inline void dense_group_##G(const uint8_t *row, const int8_t *x, const float *xs, int64_t d,  \
                                   int64_t nb, float *z, int64_t ldz) {                             \
    __m256 acc[G];                                                                                   \
    for (int j = 0; j < G; j++) acc[j] = _mm256_setzero_ps();                                        \
    const __m256i ones = _mm256_set1_epi16(1);                                                       \
    for (int64_t b = 0; b < nb; b++) {                                                               \
        const uint8_t *blk = row + b * BLOCK_BYTES;                                                  \
        uint16_t s16;                                                                                \
        memcpy(&s16, blk, 2);                                                                        \
        const float sw = fp16_to_fp32(s16);                                                          \
        const __m256i qw = _mm256_loadu_si256((const __m256i *)(blk + 2));                           \
        const __m256i aw = _mm256_sign_epi8(qw, qw);                                                 \
        for (int j = 0; j < G; j++) {                                                                \
            const __m256i qx = _mm256_loadu_si256((const __m256i *)(x + j * d + b * QK));            \
            const __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(qx, qw));                  \
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(sw * xs[j * nb + b]),                            \
                                     _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), acc[j]);      \
        }                                                                                            \
    }                                                                                                \
    for (int j = 0; j < G; j++) z[j * ldz] = hsum_acc(acc[j]);                                       \
}
FH_DENSE_GROUP(8)
FH_DENSE_GROUP(4)
FH_DENSE_GROUP(2)
FH_DENSE_GROUP(1)
#endif

void fh_q8_dense(const uint8_t *base, int64_t row_bytes, int64_t V, const float *h, int64_t n,
                 int64_t d, float *z, int32_t threads) {
    const int64_t nb = d / QK;
    int8_t *qh = malloc((size_t)(n * d));
    float *sh = malloc((size_t)(n * nb) * sizeof(float));
    for (int64_t i = 0; i < n; i++) quantize_h(h + i * d, d, qh + i * d, sh + i * nb);
    #pragma omp parallel for schedule(static, 256) num_threads(threads)
    for (int64_t v = 0; v < V; v++) {
        const uint8_t *row = base + v * row_bytes;
        int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
        for (; i + 8 <= n; i += 8) dense_group_8(row, qh + i * d, sh + i * nb, d, nb, z + i * V + v, V);
        if (i + 4 <= n) { dense_group_4(row, qh + i * d, sh + i * nb, d, nb, z + i * V + v, V); i += 4; }
        if (i + 2 <= n) { dense_group_2(row, qh + i * d, sh + i * nb, d, nb, z + i * V + v, V); i += 2; }
        if (i < n) { dense_group_1(row, qh + i * d, sh + i * nb, d, nb, z + i * V + v, V); i += 1; }
#endif
        for (; i < n; i++) z[i * V + v] = row_dot(row, qh + i * d, sh + i * nb, nb);
    }
    free(qh);
    free(sh);
}

/* The dense head's greedy tokens only: best[i] = the first v with the largest row(v) . h_i, and
   its logit, without writing the [n, V] logits (32 MB at 32 states of Gemma-3-270M's vocabulary).
   Each thread keeps its own best per state over its rows (the logits of fh_q8_dense, bit for bit),
   then the threads' bests are merged (larger value; equal values: the lower token id, as argmax). */
void fh_q8_dense_argmax(const uint8_t *base, int64_t row_bytes, int64_t V, const float *h, int64_t n,
                        int64_t d, int64_t *best, float *best_value, int32_t threads) {
    const int64_t nb = d / QK;
    int8_t *qh = malloc((size_t)(n * d));
    float *sh = malloc((size_t)(n * nb) * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        quantize_h(h + i * d, d, qh + i * d, sh + i * nb);
        best[i] = -1;
        best_value[i] = -INFINITY;
    }
    #pragma omp parallel num_threads(threads)
    {
        float *z = malloc((size_t)n * sizeof(float));
        float *bv = malloc((size_t)n * sizeof(float));
        int64_t *bi = malloc((size_t)n * sizeof(int64_t));
        for (int64_t i = 0; i < n; i++) { bv[i] = -INFINITY; bi[i] = -1; }
        #pragma omp for schedule(static, 256)
        for (int64_t v = 0; v < V; v++) {
            const uint8_t *row = base + v * row_bytes;
            int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
            for (; i + 8 <= n; i += 8) dense_group_8(row, qh + i * d, sh + i * nb, d, nb, z + i, 1);
            if (i + 4 <= n) { dense_group_4(row, qh + i * d, sh + i * nb, d, nb, z + i, 1); i += 4; }
            if (i + 2 <= n) { dense_group_2(row, qh + i * d, sh + i * nb, d, nb, z + i, 1); i += 2; }
            if (i < n) { dense_group_1(row, qh + i * d, sh + i * nb, d, nb, z + i, 1); i += 1; }
#endif
            for (; i < n; i++) z[i] = row_dot(row, qh + i * d, sh + i * nb, nb);
            for (i = 0; i < n; i++)
                if (z[i] > bv[i]) { bv[i] = z[i]; bi[i] = v; }   /* rows ascend: ties keep the first */
        }
        #pragma omp critical
        for (int64_t i = 0; i < n; i++)
            if (bv[i] > best_value[i] || (bv[i] == best_value[i] && bi[i] >= 0 && (best[i] < 0 || bi[i] < best[i]))) {
                best_value[i] = bv[i];
                best[i] = bi[i];
            }
        free(z);
        free(bv);
        free(bi);
    }
    free(qh);
    free(sh);
}

void fh_q8_rows(const uint8_t *base, int64_t row_bytes, const int64_t *ids, int64_t R, int64_t d,
                float *out) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; r++) dequant_row(base + ids[r] * row_bytes, d, out + r * d);
}
