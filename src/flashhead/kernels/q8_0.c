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
   against the whole head in one pass). Per (row, state) the same integer block sums, the same fp32
   operations in the same order as row_dot, so a logit here equals, bit for bit, the one a FlashHead
   step computed for a probed token.

   Two forms of the same arithmetic:
   - AVX-512 VNNI (where the CPU has it). vpdpbusd multiplies unsigned by signed bytes, so h's int8
     values go in offset by 128 (x ^ 0x80) and each sum starts at -128 * (the row's 4-byte sums):
     each int32 lane is then the 4-product sum that the AVX2 form's maddubs + madd make, exactly
     (integers, |lane| <= 4 * 127 * 127). States go by 16, one lane each (word l of the row block
     broadcast to every lane: a block's eight int32 sums are eight registers, its scales one
     product for the 16 states); the rest by two, one per half of a register.
   - AVX2: states in groups of up to 8, the row's absolute values taken once per block.
   Measured per position on Gemma-3-270M's head, 2 threads: docs/KERNELS.md, "The dense check". */
typedef struct {
    int64_t n, d, nb;
    int8_t *qh;      /* [n, d] h quantized (quantize_h) */
    float *sh;       /* [n, nb] its block scales */
    int64_t groups;  /* VNNI: states 0 .. 16 * groups by 16 */
    uint8_t *xt;     /*   [groups, nb, 8, 16, 4] h's bytes + 128: lane s of word l = state s's bytes 4l..4l+3 */
    float *xst;      /*   [groups, nb, 16] their block scales */
    int64_t pairs;   /* VNNI: the states after those by two (an odd count: the last pair's second is 0) */
    uint8_t *xp;     /*   [pairs, nb, 64] h's bytes + 128, two states a block */
    float *xsp;      /*   [pairs, nb, 16] their block scales, 8 lanes each */
} dense_states;

/* byte k of state i's block b of quantized h, offset by 128 for vpdpbusd; a padding state's is 0 + 128 */
static inline uint8_t offset_byte(const dense_states *st, int64_t i, int64_t b, int64_t k) {
    return i < st->n ? (uint8_t)st->qh[i * st->d + b * QK + k] ^ 0x80 : 0x80;
}

static void states_make(dense_states *st, const float *h, int64_t n, int64_t d) {
    memset(st, 0, sizeof(*st));
    st->n = n;
    st->d = d;
    st->nb = d / QK;
    st->qh = malloc((size_t)(n * d));
    st->sh = malloc((size_t)(n * st->nb) * sizeof(float));
    for (int64_t i = 0; i < n; i++) quantize_h(h + i * d, d, st->qh + i * d, st->sh + i * st->nb);
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
    const int64_t nb = st->nb, groups = n / 16, first = 16 * groups, pairs = (n - first + 1) / 2;
    st->groups = groups;
    st->xt = malloc((size_t)(groups * nb * 512));
    st->xst = malloc((size_t)(groups * nb * 16) * sizeof(float));
    for (int64_t g = 0; g < groups; g++)
        for (int64_t b = 0; b < nb; b++)
            for (int64_t s = 0; s < 16; s++) {
                const int64_t i = 16 * g + s;
                st->xst[(g * nb + b) * 16 + s] = st->sh[i * nb + b];
                for (int l = 0; l < 8; l++)
                    for (int k = 0; k < 4; k++)
                        st->xt[((g * nb + b) * 8 + l) * 64 + s * 4 + k] = offset_byte(st, i, b, 4 * l + k);
            }
    st->pairs = pairs;
    st->xp = malloc((size_t)(pairs * nb * 64));
    st->xsp = malloc((size_t)(pairs * nb * 16) * sizeof(float));
    for (int64_t p = 0; p < pairs; p++)
        for (int64_t b = 0; b < nb; b++)
            for (int64_t half = 0; half < 2; half++) {
                const int64_t i = first + 2 * p + half;
                uint8_t *x = st->xp + (p * nb + b) * 64 + half * QK;
                float *xs = st->xsp + (p * nb + b) * 16 + half * 8;
                for (int k = 0; k < QK; k++) x[k] = offset_byte(st, i, b, k);
                for (int k = 0; k < 8; k++) xs[k] = i < n ? st->sh[i * nb + b] : 0.f;
            }
#endif
}

static void states_free(dense_states *st) {
    free(st->qh);
    free(st->sh);
    free(st->xt);
    free(st->xst);
    free(st->xp);
    free(st->xsp);
}

#if defined(__AVX2__) && defined(__FMA__)
static inline float hsum_acc(__m256 acc) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define FH_DENSE_VNNI 1
/* z[s * ldz] = row . h_s for 16 states */
static inline void dense_16(const uint8_t *row, const uint8_t *xt, const float *xst, int64_t nb,
                            float *z, int64_t ldz) {
    __m512 acc[8];
    for (int l = 0; l < 8; l++) acc[l] = _mm512_setzero_ps();
    const __m256i c128 = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    int32_t start[8] __attribute__((aligned(32)));
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * BLOCK_BYTES;
        uint16_t s16;
        memcpy(&s16, blk, 2);
        const __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 2));
        _mm256_store_si256((__m256i *)start, _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, c128, w)));
        const __m512 sc = _mm512_mul_ps(_mm512_set1_ps(fp16_to_fp32(s16)), _mm512_loadu_ps(xst + b * 16));
        const uint8_t *x = xt + b * 512;
        for (int l = 0; l < 8; l++) {
            int32_t wl;
            memcpy(&wl, blk + 2 + 4 * l, 4);
            const __m512i sum = _mm512_dpbusd_epi32(_mm512_set1_epi32(start[l]),
                                                    _mm512_loadu_si512((const void *)(x + l * 64)),
                                                    _mm512_set1_epi32(wl));
            acc[l] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(sum), acc[l]);
        }
    }
    /* hsum_acc's order over a state's eight lanes: ((4+0) + (6+2)) + ((5+1) + (7+3)) */
    const __m512 e = _mm512_add_ps(_mm512_add_ps(acc[4], acc[0]), _mm512_add_ps(acc[6], acc[2]));
    const __m512 f = _mm512_add_ps(_mm512_add_ps(acc[5], acc[1]), _mm512_add_ps(acc[7], acc[3]));
    float out[16];
    _mm512_storeu_ps(out, _mm512_add_ps(e, f));
    for (int s = 0; s < 16; s++) z[s * ldz] = out[s];
}

/* z[s * ldz] = row . h_s for G pairs of states (2G states), a pair's in the two halves of a register */
#define FH_DENSE_PAIRS(G)                                                                          \
static inline void dense_pairs_##G(const uint8_t *row, const uint8_t *xp, const float *xsp,        \
                                   int64_t nb, float *z, int64_t ldz) {                             \
    __m512 acc[G];                                                                                   \
    for (int j = 0; j < G; j++) acc[j] = _mm512_setzero_ps();                                        \
    const __m512i zero = _mm512_setzero_si512(), c128 = _mm512_set1_epi8((char)0x80);                \
    for (int64_t b = 0; b < nb; b++) {                                                               \
        const uint8_t *blk = row + b * BLOCK_BYTES;                                                  \
        uint16_t s16;                                                                                \
        memcpy(&s16, blk, 2);                                                                        \
        const __m512 sw = _mm512_set1_ps(fp16_to_fp32(s16));                                         \
        const __m512i w = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 2)));    \
        const __m512i start = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, c128, w));            \
        for (int j = 0; j < G; j++) {                                                                \
            const __m512i x = _mm512_loadu_si512((const void *)(xp + (j * nb + b) * 64));            \
            const __m512 sc = _mm512_mul_ps(sw, _mm512_loadu_ps(xsp + (j * nb + b) * 16));           \
            acc[j] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, x, w)), acc[j]); \
        }                                                                                            \
    }                                                                                                \
    for (int j = 0; j < G; j++) {                                                                    \
        z[2 * j * ldz] = hsum_acc(_mm512_castps512_ps256(acc[j]));                                   \
        z[(2 * j + 1) * ldz] =                                                                       \
            hsum_acc(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[j]), 1)));        \
    }                                                                                                \
}
FH_DENSE_PAIRS(4)
FH_DENSE_PAIRS(2)
FH_DENSE_PAIRS(1)
#elif defined(__AVX2__) && defined(__FMA__)
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

/* z[i * ldz + r] = row r . h_i for `count` rows from `rows` and every state i. With more states than
   a group keeps in registers, the rows go by in chunks and each group of states passes over a chunk
   (the chunk's rows stay in the cache, each group's bytes of h in L1). */
#define DENSE_CHUNK 32
#if defined(FH_DENSE_VNNI)
/* dense_rows for two or more states: by 16, then by two, then an odd one alone */
static void dense_rows_vnni(const uint8_t *rows, int64_t row_bytes, int64_t count, const dense_states *st,
                            float *z, int64_t ldz) {
    const int64_t nb = st->nb;
    for (int64_t g = 0; g < st->groups; g++)
        for (int64_t r = 0; r < count; r++)
            dense_16(rows + r * row_bytes, st->xt + g * nb * 512, st->xst + g * nb * 16, nb, z + 16 * g * ldz + r, ldz);
    const int64_t first = 16 * st->groups, full = (st->n - first) / 2;   /* then by two */
    float *zf = z + first * ldz;
    for (int64_t p = 0; p < full;) {
        const int64_t g = full - p >= 4 ? 4 : full - p >= 2 ? 2 : 1;
        const uint8_t *xp = st->xp + p * nb * 64;
        const float *xsp = st->xsp + p * nb * 16;
        for (int64_t r = 0; r < count; r++) {
            const uint8_t *row = rows + r * row_bytes;
            if (g == 4) dense_pairs_4(row, xp, xsp, nb, zf + 2 * p * ldz + r, ldz);
            else if (g == 2) dense_pairs_2(row, xp, xsp, nb, zf + 2 * p * ldz + r, ldz);
            else dense_pairs_1(row, xp, xsp, nb, zf + 2 * p * ldz + r, ldz);
        }
        p += g;
    }
    if ((st->n - first) % 2)    /* an odd count: the last state alone */
        for (int64_t r = 0; r < count; r++) {
            float pad[2];
            dense_pairs_1(rows + r * row_bytes, st->xp + full * nb * 64, st->xsp + full * nb * 16, nb, pad, 1);
            zf[2 * full * ldz + r] = pad[0];
        }
}
#endif

static void dense_rows(const uint8_t *rows, int64_t row_bytes, int64_t count, const dense_states *st,
                       float *z, int64_t ldz) {
    const int64_t nb = st->nb, d = st->d;
    int64_t i = 0;
#if defined(FH_DENSE_VNNI)
    if (st->n > 1) {    /* one state: half a register would idle; row_dot's AVX2 form below */
        dense_rows_vnni(rows, row_bytes, count, st, z, ldz);
        i = st->n;
    }
#elif defined(__AVX2__) && defined(__FMA__)
    const int8_t *qh = st->qh;
    const float *sh = st->sh;
    while (i < st->n) {
        const int64_t g = st->n - i >= 8 ? 8 : st->n - i >= 4 ? 4 : st->n - i >= 2 ? 2 : 1;
        for (int64_t r = 0; r < count; r++) {
            const uint8_t *row = rows + r * row_bytes;
            float *zr = z + i * ldz + r;
            if (g == 8) dense_group_8(row, qh + i * d, sh + i * nb, d, nb, zr, ldz);
            else if (g == 4) dense_group_4(row, qh + i * d, sh + i * nb, d, nb, zr, ldz);
            else if (g == 2) dense_group_2(row, qh + i * d, sh + i * nb, d, nb, zr, ldz);
            else dense_group_1(row, qh + i * d, sh + i * nb, d, nb, zr, ldz);
        }
        i += g;
    }
#endif
    for (; i < st->n; i++)
        for (int64_t r = 0; r < count; r++)
            z[i * ldz + r] = row_dot(rows + r * row_bytes, st->qh + i * d, st->sh + i * nb, nb);
}

void fh_q8_dense(const uint8_t *base, int64_t row_bytes, int64_t V, const float *h, int64_t n,
                 int64_t d, float *z, int32_t threads) {
    dense_states st;
    states_make(&st, h, n, d);
    const int64_t chunks = (V + DENSE_CHUNK - 1) / DENSE_CHUNK;
    #pragma omp parallel for schedule(static, 8) num_threads(threads)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t v = c * DENSE_CHUNK, count = V - v < DENSE_CHUNK ? V - v : DENSE_CHUNK;
        dense_rows(base + v * row_bytes, row_bytes, count, &st, z + v, V);
    }
    states_free(&st);
}

/* The dense head's greedy tokens only: best[i] = the first v with the largest row(v) . h_i, and
   its logit, without writing the [n, V] logits (32 MB at 32 states of Gemma-3-270M's vocabulary).
   Each thread keeps its own best per state over its rows (the logits of fh_q8_dense, bit for bit),
   then the threads' bests are merged (larger value; equal values: the lower token id, as argmax). */
void fh_q8_dense_argmax(const uint8_t *base, int64_t row_bytes, int64_t V, const float *h, int64_t n,
                        int64_t d, int64_t *best, float *best_value, int32_t threads) {
    dense_states st;
    states_make(&st, h, n, d);
    for (int64_t i = 0; i < n; i++) {
        best[i] = -1;
        best_value[i] = -INFINITY;
    }
    const int64_t chunks = (V + DENSE_CHUNK - 1) / DENSE_CHUNK;
    #pragma omp parallel num_threads(threads)
    {
        float *z = malloc((size_t)(n * DENSE_CHUNK) * sizeof(float));
        float *bv = malloc((size_t)n * sizeof(float));
        int64_t *bi = malloc((size_t)n * sizeof(int64_t));
        for (int64_t i = 0; i < n; i++) { bv[i] = -INFINITY; bi[i] = -1; }
        #pragma omp for schedule(static, 8)
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t v = c * DENSE_CHUNK, count = V - v < DENSE_CHUNK ? V - v : DENSE_CHUNK;
            dense_rows(base + v * row_bytes, row_bytes, count, &st, z, DENSE_CHUNK);
            for (int64_t i = 0; i < n; i++)
                for (int64_t r = 0; r < count; r++)   /* rows ascend: ties keep the first */
                    if (z[i * DENSE_CHUNK + r] > bv[i]) { bv[i] = z[i * DENSE_CHUNK + r]; bi[i] = v + r; }
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
    states_free(&st);
}

void fh_q8_rows(const uint8_t *base, int64_t row_bytes, const int64_t *ids, int64_t R, int64_t d,
                float *out) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; r++) dequant_row(base + ids[r] * row_bytes, d, out + r * d);
}
