/* Scoring hot loops (see scoring.pyx for the checked Python entry points).
 *
 * Layout: every gallery is row-major [n, d]. Top-k scans the gallery in blocks of
 * SFPN_BLOCK_ROWS rows; for each block it computes the scores of every probe against the
 * block (the block stays in cache while the probes pass over it) and offers them to one
 * bounded min-heap per probe, so memory is O(k) per probe and no score matrix is built.
 *
 * Order everywhere: score descending, ties broken by the lower row index.
 *
 * ISA selection: fp32 loops use SFPN_HOT (target_clones). The int8 dot product has an explicit
 * AVX-512 VNNI variant (vpdpbusd; GCC 12 accepts no ISA names in target_clones) and the fp16
 * loop explicit AVX-512 / F16C variants, both picked at run time with __builtin_cpu_supports;
 * the portable C fallbacks are what other targets compile (on ARMv8.2+dotprod the int8 loop
 * maps onto sdot).
 */
#ifndef SFPN_SCORING_C_H
#define SFPN_SCORING_C_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "simd.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SFPN_X86 1
#endif

#define SFPN_BLOCK_ROWS 64
#define SFPN_LANES 32

/* When nonzero, the explicit ISA variants are bypassed (tests compare both paths). */
static int sfpn_scoring_portable = 0;

/* ------------------------------------------------------------------ fp32 dot products */

/* Dot product with SFPN_LANES independent partial sums: vectorisable without -ffast-math,
 * and the summation order is fixed, so a given build is deterministic. */
static inline float sfpn_dot_f32(const float *a, const float *b, size_t d) {
    float acc[SFPN_LANES] = {0};
    size_t j = 0;
    for (; j + SFPN_LANES <= d; j += SFPN_LANES)
        for (int l = 0; l < SFPN_LANES; l++) acc[l] += a[j + l] * b[j + l];
    for (int l = 0; j < d; j++, l++) acc[l] += a[j] * b[j];
    for (int w = SFPN_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

/* The same dot product in double, for rows the float sums cannot represent (below). */
static inline double sfpn_dot_f64(const float *a, const float *b, size_t d) {
    double s = 0.0;
    for (size_t j = 0; j < d; j++) s += (double)a[j] * b[j];
    return s;
}

/* A float sum of squares is trusted when finite and at least SFPN_SS_MIN: below it, the squares
 * of the row's elements underflow (subnormal or zero) and the sum loses its digits, so rows of
 * tiny or subnormal values are redone in double, where their squares are exact. */
#define SFPN_SS_MIN 0x1p-100f
static inline int sfpn_ss_ok(float ss) { return isfinite(ss) && ss >= SFPN_SS_MIN; }

/* Divide each row of x [n, d] by its L2 norm (rows of zeros stay zero; tiny, subnormal or huge
 * rows are scaled in double, so every non-zero row comes out unit length). */
SFPN_HOT static void sfpn_l2_normalize_rows(const float *x, float *out, size_t n, size_t d) {
    for (size_t i = 0; i < n; i++) {
        const float *row = x + i * d;
        float *dst = out + i * d;
        float ss = sfpn_dot_f32(row, row, d);
        if (sfpn_ss_ok(ss)) {
            float inv = 1.0f / sqrtf(ss);
            for (size_t j = 0; j < d; j++) dst[j] = row[j] * inv;
        } else {
            double norm = sqrt(sfpn_dot_f64(row, row, d));
            double inv = norm > 0.0 ? 1.0 / norm : 0.0;
            for (size_t j = 0; j < d; j++) dst[j] = (float)(row[j] * inv);
        }
    }
}

/* out[i] = cos(a_i, b_i) for n row pairs; a zero row scores 0. Pairs whose float sums overflow
 * or underflow are redone in double; the quotient is always formed in double. */
SFPN_HOT static void sfpn_cosine_pairs(const float *a, const float *b, float *out, size_t n,
                                       size_t d) {
    for (size_t i = 0; i < n; i++) {
        const float *x = a + i * d, *y = b + i * d;
        float dot = sfpn_dot_f32(x, y, d), xx = sfpn_dot_f32(x, x, d), yy = sfpn_dot_f32(y, y, d);
        double num = dot, den = (double)sqrtf(xx) * sqrtf(yy);
        if (!isfinite(dot) || !sfpn_ss_ok(xx) || !sfpn_ss_ok(yy)) {
            num = sfpn_dot_f64(x, y, d);
            den = sqrt(sfpn_dot_f64(x, x, d)) * sqrt(sfpn_dot_f64(y, y, d));
        }
        out[i] = den > 0.0 ? (float)(num / den) : 0.0f;
    }
}

/* out[p, j] = a_p . b_j / |b_j| (b's norms computed in the same pass; zero rows score 0),
 * or plain a_p . b_j when normalize_b is 0. a [np, d], b [nb, d], out [np, nb]. Rows b_j whose
 * float sum of squares overflows or underflows are scored in double (inv < 0 marks them). */
SFPN_HOT static void sfpn_dots_block_f32(const float *a, size_t np, const float *b, size_t nb,
                                         size_t d, int normalize_b, float *out, size_t out_stride) {
    for (size_t j0 = 0; j0 < nb; j0 += SFPN_BLOCK_ROWS) {
        size_t j1 = j0 + SFPN_BLOCK_ROWS < nb ? j0 + SFPN_BLOCK_ROWS : nb;
        float inv[SFPN_BLOCK_ROWS];
        double inv64[SFPN_BLOCK_ROWS];
        for (size_t j = j0; j < j1; j++) {
            float ss = normalize_b ? sfpn_dot_f32(b + j * d, b + j * d, d) : 1.0f;
            inv[j - j0] = sfpn_ss_ok(ss) ? 1.0f / sqrtf(ss) : -1.0f;
            if (inv[j - j0] < 0.0f) {
                double norm = sqrt(sfpn_dot_f64(b + j * d, b + j * d, d));
                inv64[j - j0] = norm > 0.0 ? 1.0 / norm : 0.0;
            }
        }
        for (size_t p = 0; p < np; p++) {
            const float *q = a + p * d;
            float *o = out + p * out_stride;
            for (size_t j = j0; j < j1; j++)
                o[j] = inv[j - j0] >= 0.0f ? sfpn_dot_f32(q, b + j * d, d) * inv[j - j0]
                                           : (float)(sfpn_dot_f64(q, b + j * d, d) * inv64[j - j0]);
        }
    }
}

/* ------------------------------------------------------------------ fp16 dot products */

/* IEEE binary16 -> binary32, exact for every value (subnormals, inf, NaN included). */
#if defined(__aarch64__) && defined(__GNUC__)
static inline float sfpn_half_to_float(uint16_t h) { /* native fcvt */
    __fp16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
}
#else
static inline float sfpn_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: renormalise */
        int shift = 0;
        while (!(man & 0x400u)) { man <<= 1; shift++; }
        bits = sign | ((uint32_t)(113 - shift) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
#endif

static void sfpn_dots_f16_portable(const float *q, const uint16_t *g, size_t rows, size_t d,
                                   float *out) {
    for (size_t r = 0; r < rows; r++) {
        const uint16_t *row = g + r * d;
        float acc[8] = {0};
        size_t j = 0;
        for (; j + 8 <= d; j += 8)
            for (int l = 0; l < 8; l++) acc[l] += q[j + l] * sfpn_half_to_float(row[j + l]);
        for (int l = 0; j < d; j++, l++) acc[l] += q[j] * sfpn_half_to_float(row[j]);
        out[r] = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    }
}

#ifdef SFPN_X86
__attribute__((target("avx2,fma,f16c"))) static void sfpn_dots_f16_f16c(
    const float *q, const uint16_t *g, size_t rows, size_t d, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const uint16_t *row = g + r * d;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        size_t j = 0;
        for (; j + 16 <= d; j += 16) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j),
                                 _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + j))), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + j + 8),
                                 _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + j + 8))), a1);
        }
        a0 = _mm256_add_ps(a0, a1);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        float tail = 0.0f;
        for (; j < d; j++) tail += q[j] * _cvtsh_ss(row[j]);
        out[r] = _mm_cvtss_f32(s) + tail;
    }
}

/* One row at a time (a single sequential stream, as in the int8 loop), two chains. */
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) static void sfpn_dots_f16_avx512(
    const float *q, const uint16_t *g, size_t rows, size_t d, float *out) {
    size_t full = d / 16, rem = d % 16;
    __mmask16 tail = (__mmask16)((1u << rem) - 1u);
    for (size_t r = 0; r < rows; r++) {
        const uint16_t *row = g + r * d;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        size_t c = 0;
        for (; c + 2 <= full; c += 2) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c),
                                 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 16 * c))), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c + 16),
                                 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 16 * c + 16))), a1);
        }
        if (c < full)
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c),
                                 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 16 * c))), a0);
        if (rem)
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, q + 16 * full),
                                 _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, row + 16 * full)), a1);
        out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}
#endif

typedef void (*sfpn_dots_f16_fn)(const float *, const uint16_t *, size_t, size_t, float *);

static sfpn_dots_f16_fn sfpn_pick_f16(const char **name) {
#ifdef SFPN_X86
    if (!sfpn_scoring_portable) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl")) {
            *name = "avx512f";
            return sfpn_dots_f16_avx512;
        }
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) { /* F16C comes with them */
            *name = "f16c";
            return sfpn_dots_f16_f16c;
        }
    }
#endif
    *name = "portable";
    return sfpn_dots_f16_portable;
}

/* ------------------------------------------------------------------ int8 dot products */

/* Raw int32 dot products of a signed int8 probe with `rows` gallery rows (the sign-agnostic
 * portable form: an ARMv8.2 compiler turns it into sdot, x86 clones into vpmaddwd). */
SFPN_HOT static void sfpn_idots_portable(const int8_t *q, const int8_t *g, size_t rows, size_t d,
                                         int32_t *out) {
    for (size_t r = 0; r < rows; r++) {
        const int8_t *row = g + r * d;
        int32_t acc = 0;
        for (size_t j = 0; j < d; j++) acc += (int32_t)q[j] * (int32_t)row[j];
        out[r] = acc;
    }
}

#ifdef SFPN_X86
/* vpdpbusd multiplies unsigned by signed bytes: the probe is passed shifted to uint8 (q + 128),
 * so the raw result is q.g + 128 * sum(g); the caller subtracts the precomputed row sums.
 * Rows are read one after the other (a single sequential stream: interleaving four rows was
 * measured 2x slower on a 100k-row gallery that does not fit in cache), with two chains. */
SFPN_VNNI static void sfpn_idots_vnni(
    const uint8_t *qu, const int8_t *g, size_t rows, size_t d, int32_t *out) {
    size_t full = d / 64, rem = d % 64;
    __mmask64 tail = rem ? (((__mmask64)1 << rem) - 1) : 0;
    for (size_t r = 0; r < rows; r++) {
        const int8_t *row = g + r * d;
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        size_t c = 0;
        for (; c + 2 <= full; c += 2) {
            a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(qu + 64 * c), _mm512_loadu_si512(row + 64 * c));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(qu + 64 * c + 64),
                                     _mm512_loadu_si512(row + 64 * c + 64));
        }
        if (c < full)
            a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(qu + 64 * c), _mm512_loadu_si512(row + 64 * c));
        if (rem)
            a1 = _mm512_dpbusd_epi32(a1, _mm512_maskz_loadu_epi8(tail, qu + 64 * full),
                                     _mm512_maskz_loadu_epi8(tail, row + 64 * full));
        out[r] = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
    }
}
#endif

static int sfpn_use_vnni(void) {
#ifdef SFPN_X86
    if (sfpn_scoring_portable) return 0;
    return sfpn_cpu_has_vnni();
#else
    return 0;
#endif
}

/* Symmetric per-row int8 quantisation: scale = max|x| / 127, q = round-half-even(x / scale).
 * Also returns each row's sum of q (for the VNNI shift correction). Zero rows get scale 0; rows
 * so small that 127 / max|x| would overflow are scaled up by a power of two first. */
SFPN_HOT static void sfpn_quantize_i8(const float *x, size_t n, size_t d, int8_t *q, float *scale,
                                      int32_t *rowsum) {
    for (size_t i = 0; i < n; i++) {
        const float *row = x + i * d;
        float m = 0.0f;
        for (size_t j = 0; j < d; j++) m = fmaxf(m, fabsf(row[j]));
        /* pre = 2^64 (exact) keeps 127 / (m * pre) finite when m < 127 / FLT_MAX, else 1 */
        float s = m / 127.0f, pre = m < 0x1p-120f ? 0x1p64f : 1.0f;
        float inv = m > 0.0f ? 127.0f / (m * pre) : 0.0f;
        int32_t sum = 0;
        for (size_t j = 0; j < d; j++) {
            float v = nearbyintf(row[j] * pre * inv);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            q[i * d + j] = (int8_t)v;
            sum += (int8_t)v;
        }
        scale[i] = s;
        rowsum[i] = sum;
    }
}

/* ------------------------------------------------------------------ bounded heaps */

/* (s, i) ranks below (t, j): lower score, or equal score and higher index. */
static inline int sfpn_worse(float s, int64_t i, float t, int64_t j) {
    return s < t || (s == t && i > j);
}

/* Min-heap of the best `k` (score, index) pairs seen so far; root = current worst. */
static inline void sfpn_heap_offer(float *hs, int64_t *hi, size_t *size, size_t k, float s,
                                   int64_t idx) {
    size_t pos;
    if (*size < k) { /* sift up */
        pos = (*size)++;
        while (pos > 0) {
            size_t parent = (pos - 1) / 2;
            if (!sfpn_worse(s, idx, hs[parent], hi[parent])) break;
            hs[pos] = hs[parent];
            hi[pos] = hi[parent];
            pos = parent;
        }
    } else {
        if (!sfpn_worse(hs[0], hi[0], s, idx)) return;
        pos = 0; /* replace the root, sift down */
        for (;;) {
            size_t c = 2 * pos + 1;
            if (c >= k) break;
            if (c + 1 < k && sfpn_worse(hs[c + 1], hi[c + 1], hs[c], hi[c])) c++;
            if (!sfpn_worse(hs[c], hi[c], s, idx)) break;
            hs[pos] = hs[c];
            hi[pos] = hi[c];
            pos = c;
        }
    }
    hs[pos] = s;
    hi[pos] = idx;
}

/* Turn a heap of `size` entries into a best-first list, in place (heapsort). */
static void sfpn_heap_sort(float *hs, int64_t *hi, size_t size) {
    while (size > 1) {
        float s = hs[0];
        int64_t i = hi[0];
        size--;
        /* move the last entry to the root and sift it down within the shrunk heap */
        float ls = hs[size];
        int64_t li = hi[size];
        size_t pos = 0;
        for (;;) {
            size_t c = 2 * pos + 1;
            if (c >= size) break;
            if (c + 1 < size && sfpn_worse(hs[c + 1], hi[c + 1], hs[c], hi[c])) c++;
            if (!sfpn_worse(hs[c], hi[c], ls, li)) break;
            hs[pos] = hs[c];
            hi[pos] = hi[c];
            pos = c;
        }
        hs[pos] = ls;
        hi[pos] = li;
        hs[size] = s; /* the worst goes to the back */
        hi[size] = i;
    }
}

/* ------------------------------------------------------------------ top-k drivers */

enum { SFPN_F32 = 0, SFPN_F16 = 1, SFPN_I8 = 2 };

typedef struct {
    int storage;            /* SFPN_F32 / SFPN_F16 / SFPN_I8 */
    const void *gallery;    /* [n, d]: float32, uint16 (binary16 bits) or int8 */
    const float *gscale;    /* int8: per-row scale */
    const int32_t *growsum; /* int8: per-row sum of q */
    int normalize;          /* fp32: divide by the gallery row's norm */
    const void *probes;     /* [np, d]: float32 (fp32/fp16 storage) or int8 */
    const float *pscale;    /* int8: per-probe scale */
    const float *gbias;     /* int8, optional: per-row offset added to the score */
    const float *pbias;     /* int8, optional: per-probe offset added to the score */
} sfpn_topk_args;

/* int8 score: scales and offsets applied in double, in this order (tests mirror it exactly). */
SFPN_NO_CONTRACT static void sfpn_i8_scores(const int32_t *dots, size_t rows, const float *gscale,
                                            const float *gbias, double ps, double pb, float *s) {
    for (size_t r = 0; r < rows; r++) {
        double v = (double)dots[r] * ((double)gscale[r] * ps);
        s[r] = (float)(gbias ? v + (double)gbias[r] + pb : v + pb);
    }
}

/* Top-k of every probe over gallery rows [start, stop). Writes kk = min(k, stop - start) best
 * (index, score) pairs per probe into idx/score [np, k] (best first).
 * Returns -1 on success, -2 when out of memory, or the first row index whose score is not
 * finite (a NaN/inf in the gallery or an overflowing dot product). */
static ptrdiff_t sfpn_topk(const sfpn_topk_args *a, size_t np, size_t d, size_t start, size_t stop,
                           size_t k, int64_t *idx, float *score) {
    size_t n = stop - start, kk = k < n ? k : n;
    size_t *sizes = calloc(np ? np : 1, sizeof *sizes);
    float *buf = malloc(sizeof(float) * SFPN_BLOCK_ROWS * (np ? np : 1));
    int32_t *ibuf = malloc(sizeof(int32_t) * SFPN_BLOCK_ROWS);
    uint8_t *qu = NULL;
    const char *f16name;
    sfpn_dots_f16_fn dots_f16 = sfpn_pick_f16(&f16name);
    int vnni = a->storage == SFPN_I8 && sfpn_use_vnni();
    ptrdiff_t status = -1;
    if (vnni) {
        qu = malloc(np * d > 0 ? np * d : 1);
        if (qu) {
            const int8_t *q = (const int8_t *)a->probes;
            for (size_t t = 0; t < np * d; t++) qu[t] = (uint8_t)(q[t] ^ 0x80); /* q + 128 */
        }
    }
    if (!sizes || !buf || !ibuf || (vnni && !qu)) {
        status = -2;
        goto done;
    }
    for (size_t r0 = start; r0 < stop && status == -1; r0 += SFPN_BLOCK_ROWS) {
        size_t rows = stop - r0 < SFPN_BLOCK_ROWS ? stop - r0 : SFPN_BLOCK_ROWS;
        if (a->storage == SFPN_F32) {
            sfpn_dots_block_f32((const float *)a->probes, np, (const float *)a->gallery + r0 * d,
                                rows, d, a->normalize, buf, SFPN_BLOCK_ROWS);
        }
        for (size_t p = 0; p < np; p++) {
            float *s = buf + p * SFPN_BLOCK_ROWS;
            if (a->storage == SFPN_F16) {
                dots_f16((const float *)a->probes + p * d, (const uint16_t *)a->gallery + r0 * d,
                         rows, d, s);
            } else if (a->storage == SFPN_I8) {
                const int8_t *g = (const int8_t *)a->gallery + r0 * d;
#ifdef SFPN_X86
                if (vnni) {
                    sfpn_idots_vnni(qu + p * d, g, rows, d, ibuf);
                    for (size_t r = 0; r < rows; r++) ibuf[r] -= 128 * a->growsum[r0 + r];
                } else
#endif
                    sfpn_idots_portable((const int8_t *)a->probes + p * d, g, rows, d, ibuf);
                sfpn_i8_scores(ibuf, rows, a->gscale + r0, a->gbias ? a->gbias + r0 : NULL, a->pscale[p],
                               a->pbias ? a->pbias[p] : 0.0, s);
            }
            float *hs = score + p * k;
            int64_t *hi = idx + p * k;
            for (size_t r = 0; r < rows; r++) {
                if (!isfinite(s[r])) {
                    status = (ptrdiff_t)(r0 + r);
                    break;
                }
                sfpn_heap_offer(hs, hi, &sizes[p], kk, s[r], (int64_t)(r0 + r));
            }
        }
    }
    if (status == -1)
        for (size_t p = 0; p < np; p++) sfpn_heap_sort(score + p * k, idx + p * k, sizes[p]);
done:
    free(sizes);
    free(buf);
    free(ibuf);
    free(qu);
    return status;
}

/* Names of the variants the dispatch picks on this CPU (for reports and tests). */
static const char *sfpn_i8_variant(void) { return sfpn_use_vnni() ? "avx512vnni" : "portable"; }
static const char *sfpn_f16_variant(void) {
    const char *name;
    sfpn_pick_f16(&name);
    return name;
}

#endif
