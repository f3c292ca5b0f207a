/* Native int8 inference engine for SqueezeNet-style graphs (see engine.pyx for the checked entry
 * points and the plan format).
 *
 * Activations are uint8 NHWC buffers with a one-pixel border holding the buffer's zero, laid out
 * one after another in an arena (one per concurrent caller). Convolutions and depthwise
 * convolutions run over the flat pixel range from (1, 1) to (h, w) of the padded grid: the two
 * border pixels between rows are computed as junk and zeroed afterwards, so a kernel never
 * special-cases row ends. A depth-concat costs nothing: producers write into channel slices of
 * one buffer.
 *
 * Threads: one image can be split over a team of threads (sfpn_team): every op divides its pixel
 * rows (or, for the final pool, its output channels) into one share per thread, and the team meets
 * at a barrier between ops. Results do not depend on the thread count.
 *
 * Two code paths with bit-identical results: AVX-512 VNNI kernels (vpdpbusd, picked at run time)
 * and portable C loops (every other CPU; compiler-vectorised). Requantization everywhere:
 * q = rint(clamp(fma(scale, (float)acc, bias), 0, 255)), round-half-even.
 */
#ifndef SFPN_ENGINE_C_H
#define SFPN_ENGINE_C_H
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "simd.h"
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

enum { SFPN_OP_CONV = 0, SFPN_OP_DWCONV = 1, SFPN_OP_MAXPOOL = 2, SFPN_OP_CONV_GAP = 3 };

#define SFPN_ENGINE_MAX_COUT 4096   /* bound on conv output channels (portable accumulators) */
#define SFPN_ENGINE_MAX_MULT 4      /* depthwise multiplier bound */

typedef struct {
    int h, w, c;        /* interior size and channels */
    size_t offset;      /* first byte of the padded (h + 2) x (w + 2) x c block in the arena */
} sfpn_ebuf;

typedef struct {
    int kind, src, dst, src_c0, dst_c0;
    int cin, cout, kernel, stride, mult;
    const int8_t *w_vnni;       /* weights packed for the VNNI kernels */
    const int8_t *w_port;       /* weights for the portable loops */
    const float *scale, *bias;  /* per output channel, zero-padded to a multiple of 16 */
} sfpn_eop;

typedef struct {
    int nbuf, nop, out_dim, vnni;
    const sfpn_ebuf *bufs;
    const sfpn_eop *ops;
    size_t dense;       /* arena offset of a border-free copy of the conv_gap input (VNNI path) */
    float offset[3];    /* input: q = rint(x + offset[c]) */
    uint8_t pad[4];     /* border bytes of the input buffer (its "zero") */
} sfpn_eplan;

static inline int sfpn_pad16(int n) { return (n + 15) & ~15; }

/* v clamped to [0, 255] (NaN -> 0) and rounded half to even. */
static inline uint8_t sfpn_to_u8(float v) {
    v = v > 0.0f ? v : 0.0f;
    v = v < 255.0f ? v : 255.0f;
    return (uint8_t)nearbyintf(v);
}

static inline uint8_t sfpn_requant(int32_t acc, float scale, float bias) {
    return sfpn_to_u8(fmaf(scale, (float)acc, bias));
}

static inline ptrdiff_t sfpn_pixel(const sfpn_ebuf *b, int y, int x) {
    return ((ptrdiff_t)y * (b->w + 2) + x) * b->c;
}

/* Byte offsets of the k x k taps around a pixel ("same" padding). */
static int sfpn_taps(const sfpn_ebuf *b, int k, ptrdiff_t *taps) {
    int half = k / 2, n = 0;
    for (int dy = 0; dy < k; dy++)
        for (int dx = 0; dx < k; dx++) taps[n++] = ((ptrdiff_t)(dy - half) * (b->w + 2) + (dx - half)) * b->c;
    return n;
}

/* Thread ``tid`` of ``n`` takes items [*lo, *hi) of ``count``. */
typedef struct { int tid, n; } sfpn_part;

static inline void sfpn_share(ptrdiff_t count, sfpn_part part, ptrdiff_t *lo, ptrdiff_t *hi) {
    *lo = count * part.tid / part.n;
    *hi = count * (part.tid + 1) / part.n;
}

/* The flat pixel range (padded indices) from (1, 1) to (h, w), this thread's share of it. */
static inline void sfpn_flat_share(const sfpn_ebuf *b, sfpn_part part, ptrdiff_t *lo, ptrdiff_t *hi) {
    ptrdiff_t first = b->w + 3, count = (ptrdiff_t)(b->h - 1) * (b->w + 2) + b->w;
    sfpn_share(count, part, lo, hi);
    *lo += first;
    *hi += first;
}

/* Zero the junk a flat-range op wrote into border columns, for pixels lo..hi (channels c0 .. c0 + n). */
static void sfpn_clear_junk(const sfpn_ebuf *b, uint8_t *base, int c0, int n, ptrdiff_t lo, ptrdiff_t hi) {
    ptrdiff_t wp = b->w + 2;
    for (ptrdiff_t row = lo / wp - 1; row <= hi / wp; row++) {   /* lo >= w + 3: row >= 0 */
        ptrdiff_t right = row * wp + b->w + 1, left = (row + 1) * wp;
        if (right >= lo && right < hi) memset(base + right * b->c + c0, 0, (size_t)n);
        if (left >= lo && left < hi) memset(base + left * b->c + c0, 0, (size_t)n);
    }
}

/* ------------------------------------------------------------------ portable loops */

SFPN_HOT static void sfpn_input_stage(const sfpn_eplan *pl, const float *x, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *b = &pl->bufs[0];
    uint8_t *base = arena + b->offset;
    size_t plane = (size_t)b->h * b->w;
    ptrdiff_t y0, y1;
    sfpn_share(b->h, part, &y0, &y1);
    for (int c = 0; c < 3; c++)
        for (ptrdiff_t y = y0; y < y1; y++) {
            const float *row = x + c * plane + (size_t)y * b->w;
            uint8_t *dst = base + sfpn_pixel(b, y + 1, 1) + c;
            float off = pl->offset[c];
            for (int i = 0; i < b->w; i++) dst[(size_t)i * 4] = sfpn_to_u8(row[i] + off);
        }
}

static inline uint8_t sfpn_max8(uint8_t a, uint8_t b) { return a > b ? a : b; }

/* Channel-wise max of a 3 x 3 window (rows r0..r2 point at its left pixels; unrolled so that the
 * channel loop vectorises). */
static inline void sfpn_max3x3(uint8_t *restrict out, const uint8_t *restrict r0, const uint8_t *restrict r1,
                               const uint8_t *restrict r2, int c) {
    for (int ch = 0; ch < c; ch++) {
        uint8_t a = sfpn_max8(sfpn_max8(r0[ch], r0[c + ch]), r0[2 * c + ch]);
        uint8_t b = sfpn_max8(sfpn_max8(r1[ch], r1[c + ch]), r1[2 * c + ch]);
        uint8_t d = sfpn_max8(sfpn_max8(r2[ch], r2[c + ch]), r2[2 * c + ch]);
        out[ch] = sfpn_max8(sfpn_max8(a, b), d);
    }
}

SFPN_HOT static void sfpn_maxpool(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    const uint8_t *src = arena + s->offset;
    uint8_t *dst = arena + d->offset;
    int k = op->kernel, st = op->stride, c = s->c;
    ptrdiff_t y0, y1;
    sfpn_share(d->h, part, &y0, &y1);
    for (ptrdiff_t oy = y0; oy < y1; oy++)
        for (int ox = 0; ox < d->w; ox++) {
            uint8_t *out = dst + sfpn_pixel(d, (int)oy + 1, ox + 1);
            const uint8_t *corner = src + sfpn_pixel(s, (int)oy * st + 1, ox * st + 1);
            ptrdiff_t row = (ptrdiff_t)(s->w + 2) * c;
            if (k == 3) {
                sfpn_max3x3(out, corner, corner + row, corner + 2 * row, c);
                continue;
            }
            memcpy(out, corner, (size_t)c);
            for (int dy = 0; dy < k; dy++)
                for (int dx = 0; dx < k; dx++)
                    for (int ch = 0; ch < c; ch++) out[ch] = sfpn_max8(out[ch], corner[dy * row + dx * c + ch]);
        }
}

/* Portable conv / conv_gap: weights [taps][cin][pad16(cout)], accumulators over output channels.
 * Threads share the rows of a conv, and the output channels (16 at a time) of a conv_gap. */
SFPN_HOT static void sfpn_conv_portable(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, float *sums,
                                        sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    ptrdiff_t taps[9];
    int nt = sfpn_taps(s, op->kernel, taps), K = op->cin, N = op->cout, np = sfpn_pad16(N);
    int gap = op->kind == SFPN_OP_CONV_GAP;
    ptrdiff_t y0 = 0, y1 = s->h, o0 = 0, o1 = np;
    if (gap) {
        sfpn_share(np / 16, part, &o0, &o1);
        o0 *= 16;
        o1 *= 16;
    } else {
        sfpn_share(s->h, part, &y0, &y1);
    }
    int32_t acc[SFPN_ENGINE_MAX_COUT];
    const uint8_t *src = arena + s->offset + op->src_c0;
    uint8_t *dst = arena + d->offset + op->dst_c0;
    for (ptrdiff_t y = y0 + 1; y <= y1; y++)
        for (int x = 1; x <= s->w; x++) {
            memset(acc, 0, sizeof(int32_t) * (size_t)np);
            const uint8_t *xp = src + sfpn_pixel(s, (int)y, x);
            for (int t = 0; t < nt; t++)
                for (int k = 0; k < K; k++) {
                    int32_t v = xp[taps[t] + k];
                    const int8_t *w = op->w_port + ((size_t)t * K + k) * np;
                    if (v)
                        for (ptrdiff_t o = o0; o < o1; o++) acc[o] += v * w[o];
                }
            if (gap) {
                for (ptrdiff_t o = o0; o < o1 && o < N; o++)
                    sums[o] += fmaxf(fmaf(op->scale[o], (float)acc[o], op->bias[o]), 0.0f);
            } else {
                uint8_t *out = dst + sfpn_pixel(d, (int)y, x);
                for (int o = 0; o < N; o++) out[o] = sfpn_requant(acc[o], op->scale[o], op->bias[o]);
            }
        }
}

/* Portable depthwise 3x3, multiplier M: weights [M][9][channels]. */
SFPN_HOT static void sfpn_dwconv_portable(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena,
                                          sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    ptrdiff_t taps[9], y0, y1;
    sfpn_taps(s, 3, taps);
    sfpn_share(s->h, part, &y0, &y1);
    int S = op->cin;
    int32_t acc[SFPN_ENGINE_MAX_COUT];
    const uint8_t *src = arena + s->offset + op->src_c0;
    uint8_t *dst = arena + d->offset + op->dst_c0;
    for (ptrdiff_t y = y0 + 1; y <= y1; y++)
        for (int x = 1; x <= s->w; x++) {
            const uint8_t *xp = src + sfpn_pixel(s, (int)y, x);
            uint8_t *out = dst + sfpn_pixel(d, (int)y, x);
            for (int j = 0; j < op->mult; j++) {
                memset(acc, 0, sizeof(int32_t) * (size_t)S);
                for (int t = 0; t < 9; t++) {
                    const uint8_t *xt = xp + taps[t];
                    const int8_t *w = op->w_port + ((size_t)j * 9 + t) * S;
                    for (int c = 0; c < S; c++) acc[c] += (int32_t)xt[c] * w[c];
                }
                for (int c = 0; c < S; c++)
                    out[j * S + c] = sfpn_requant(acc[c], op->scale[j * S + c], op->bias[j * S + c]);
            }
        }
}

/* ------------------------------------------------------------------ AVX-512 VNNI kernels */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SFPN_ENGINE_X86 1
#define SFPN_UNROLL _Pragma("GCC unroll 32")
#define SFPN_DPBUSD(acc, u8, s8) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8))

/* 16 accumulators requantized as sfpn_requant does (fma, clamp, round half to even) and stored. */
SFPN_VNNI static inline void sfpn_requant_store16(uint8_t *dst, __m512i acc, __m512 scale, __m512 bias) {
    __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), scale, bias);
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
    _mm_storeu_si128((__m128i *)dst, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
}

#define MK_NAME sfpn_mk4x6
#define MK_NB 4
#define MK_R 6
#define MK_GAP 0
#include "engine_mk.h"
#define MK_NAME sfpn_mk3x8
#define MK_NB 3
#define MK_R 8
#define MK_GAP 0
#include "engine_mk.h"
#define MK_NAME sfpn_mk2x12
#define MK_NB 2
#define MK_R 12
#define MK_GAP 0
#include "engine_mk.h"
#define MK_NAME sfpn_mk1x24
#define MK_NB 1
#define MK_R 24
#define MK_GAP 0
#include "engine_mk.h"
#define MK_NAME sfpn_mk4x1
#define MK_NB 4
#define MK_R 1
#define MK_GAP 0
#include "engine_mk.h"
#define MK_NAME sfpn_mk3x1
#define MK_NB 3
#define MK_R 1
#define MK_GAP 0
#include "engine_mk.h"
#define MK_NAME sfpn_mk2x1
#define MK_NB 2
#define MK_R 1
#define MK_GAP 0
#include "engine_mk.h"
#define MK_NAME sfpn_mk1x1
#define MK_NB 1
#define MK_R 1
#define MK_GAP 0
#include "engine_mk.h"
#define MK_NAME sfpn_gap4x6
#define MK_NB 4
#define MK_R 6
#define MK_GAP 1
#include "engine_mk.h"
#define MK_NAME sfpn_gap3x8
#define MK_NB 3
#define MK_R 8
#define MK_GAP 1
#include "engine_mk.h"
#define MK_NAME sfpn_gap2x12
#define MK_NB 2
#define MK_R 12
#define MK_GAP 1
#include "engine_mk.h"
#define MK_NAME sfpn_gap1x24
#define MK_NB 1
#define MK_R 24
#define MK_GAP 1
#include "engine_mk.h"
#define MK_NAME sfpn_gap4x1
#define MK_NB 4
#define MK_R 1
#define MK_GAP 1
#include "engine_mk.h"
#define MK_NAME sfpn_gap3x1
#define MK_NB 3
#define MK_R 1
#define MK_GAP 1
#include "engine_mk.h"
#define MK_NAME sfpn_gap2x1
#define MK_NB 2
#define MK_R 1
#define MK_GAP 1
#include "engine_mk.h"
#define MK_NAME sfpn_gap1x1
#define MK_NB 1
#define MK_R 1
#define MK_GAP 1
#include "engine_mk.h"

typedef void (*sfpn_mk_fn)(const uint8_t *, ptrdiff_t, const ptrdiff_t *, int, int, const int8_t *,
                           const float *, const float *, uint8_t *, ptrdiff_t, float *);

/* [gap][nb - 1]: the full register block, its pixel count, and the one-pixel tail kernel */
static const sfpn_mk_fn sfpn_mk_full[2][4] = {
    {sfpn_mk1x24, sfpn_mk2x12, sfpn_mk3x8, sfpn_mk4x6},
    {sfpn_gap1x24, sfpn_gap2x12, sfpn_gap3x8, sfpn_gap4x6}};
static const sfpn_mk_fn sfpn_mk_tail[2][4] = {
    {sfpn_mk1x1, sfpn_mk2x1, sfpn_mk3x1, sfpn_mk4x1},
    {sfpn_gap1x1, sfpn_gap2x1, sfpn_gap3x1, sfpn_gap4x1}};
static const int sfpn_mk_rows[4] = {24, 12, 8, 6};

/* Pixels first .. first + count - 1 (padded flat index) through one 16..64-channel block. */
static void sfpn_conv_run(int gap, int nb, const uint8_t *x, ptrdiff_t ldx, const ptrdiff_t *taps, int nt,
                          int K, const int8_t *w, const float *scale, const float *bias, uint8_t *y,
                          ptrdiff_t ldy, float *sums, ptrdiff_t first, ptrdiff_t count) {
    sfpn_mk_fn full = sfpn_mk_full[gap][nb - 1], tail = sfpn_mk_tail[gap][nb - 1];
    ptrdiff_t R = sfpn_mk_rows[nb - 1], p = first, end = first + count;
    for (; p + R <= end; p += R) full(x + p * ldx, ldx, taps, nt, K, w, scale, bias, y + p * ldy, ldy, sums);
    for (; p < end; p++) tail(x + p * ldx, ldx, taps, nt, K, w, scale, bias, y + p * ldy, ldy, sums);
}

/* VNNI conv over this thread's share of the flat pixel range. Weights: per block of 64 output
 * channels (the last may be narrower), [taps][cin / 4][block width][4]; a block starts at byte
 * n0 * taps * cin. */
static void sfpn_conv_vnni(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    ptrdiff_t taps[9], lo, hi;
    int nt = sfpn_taps(s, op->kernel, taps), K = op->cin, np = sfpn_pad16(op->cout);
    const uint8_t *x = arena + s->offset + op->src_c0;
    uint8_t *y = arena + d->offset + op->dst_c0;
    sfpn_flat_share(s, part, &lo, &hi);
    for (int n0 = 0; n0 < np; n0 += 64) {
        int nb = (np - n0) / 16 < 4 ? (np - n0) / 16 : 4;
        sfpn_conv_run(0, nb, x, s->c, taps, nt, K, op->w_vnni + (size_t)n0 * nt * K, op->scale + n0,
                      op->bias + n0, y + n0, d->c, NULL, lo, hi - lo);
    }
    sfpn_clear_junk(d, arena + d->offset, op->dst_c0, op->cout, lo, hi);
}

/* Copy this thread's rows of the conv_gap input to the border-free [h * w][cin] scratch. */
static void sfpn_dense_copy(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src];
    const uint8_t *x = arena + s->offset + op->src_c0;
    uint8_t *dense = arena + pl->dense;
    ptrdiff_t y0, y1;
    sfpn_share(s->h, part, &y0, &y1);
    for (ptrdiff_t row = y0; row < y1; row++)
        for (int col = 0; col < s->w; col++)
            memcpy(dense + ((size_t)row * s->w + col) * op->cin, x + sfpn_pixel(s, (int)row + 1, col + 1),
                   (size_t)op->cin);
}

/* VNNI conv_gap on the dense copy (no junk pixel may enter the average), this thread's share
 * of the 64-channel output blocks. */
static void sfpn_gap_vnni(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, float *sums, sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src];
    ptrdiff_t tap = 0, b0, b1;
    int K = op->cin, np = sfpn_pad16(op->cout);
    sfpn_share((np + 63) / 64, part, &b0, &b1);
    for (ptrdiff_t n0 = b0 * 64; n0 < b1 * 64 && n0 < np; n0 += 64) {
        int nb = (np - n0) / 16 < 4 ? (int)(np - n0) / 16 : 4;
        sfpn_conv_run(1, nb, arena + pl->dense, K, &tap, 1, K, op->w_vnni + (size_t)n0 * K, op->scale + n0,
                      op->bias + n0, NULL, 0, sums + n0, 0, (ptrdiff_t)s->h * s->w);
    }
}

/* Four taps of 16 channels interleaved: dword i = [a_i, b_i, c_i, d_i]. */
SFPN_VNNI static inline __m512i sfpn_taps4(const uint8_t *a, const uint8_t *b, const uint8_t *c, const uint8_t *d) {
    __m128i va = _mm_loadu_si128((const __m128i *)a), vb = _mm_loadu_si128((const __m128i *)b);
    __m128i vc = _mm_loadu_si128((const __m128i *)c), vd = _mm_loadu_si128((const __m128i *)d);
    __m128i ab0 = _mm_unpacklo_epi8(va, vb), ab1 = _mm_unpackhi_epi8(va, vb);
    __m128i cd0 = _mm_unpacklo_epi8(vc, vd), cd1 = _mm_unpackhi_epi8(vc, vd);
    __m512i v = _mm512_castsi128_si512(_mm_unpacklo_epi16(ab0, cd0));
    v = _mm512_inserti32x4(v, _mm_unpackhi_epi16(ab0, cd0), 1);
    v = _mm512_inserti32x4(v, _mm_unpacklo_epi16(ab1, cd1), 2);
    return _mm512_inserti32x4(v, _mm_unpackhi_epi16(ab1, cd1), 3);
}

/* VNNI depthwise 3x3 for multiplier M (1..4, constant after inlining). Weights per 16-channel
 * group g: [tap quad q = 0..2][j][16][4] (quad 2 holds tap 8 in byte 0, zeros elsewhere). */
SFPN_VNNI static inline __attribute__((always_inline)) void sfpn_dw_vnni_m(
        const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, ptrdiff_t first, ptrdiff_t end, const int M) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    ptrdiff_t taps[9];
    sfpn_taps(s, 3, taps);
    int S = op->cin;
    const uint8_t *src = arena + s->offset + op->src_c0;
    uint8_t *dst = arena + d->offset + op->dst_c0;
    for (int g = 0; g < S / 16; g++) {
        const int8_t *wg = op->w_vnni + (size_t)g * 3 * M * 64;
        __m512i w[3][SFPN_ENGINE_MAX_MULT];
        __m512 sc[SFPN_ENGINE_MAX_MULT], bi[SFPN_ENGINE_MAX_MULT];
        SFPN_UNROLL for (int j = 0; j < M; j++) {
            SFPN_UNROLL for (int q = 0; q < 3; q++) w[q][j] = _mm512_loadu_si512((const void *)(wg + (q * M + j) * 64));
            sc[j] = _mm512_loadu_ps(op->scale + j * S + 16 * g);
            bi[j] = _mm512_loadu_ps(op->bias + j * S + 16 * g);
        }
        for (ptrdiff_t p = first; p < end; p++) {
            const uint8_t *xp = src + p * s->c + 16 * g;
            __m512i v0 = sfpn_taps4(xp + taps[0], xp + taps[1], xp + taps[2], xp + taps[3]);
            __m512i v1 = sfpn_taps4(xp + taps[4], xp + taps[5], xp + taps[6], xp + taps[7]);
            __m512i v2 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(xp + taps[8])));
            uint8_t *out = dst + p * d->c + 16 * g;
            SFPN_UNROLL for (int j = 0; j < M; j++) {
                __m512i acc = _mm512_setzero_si512();
                SFPN_DPBUSD(acc, v0, w[0][j]);
                SFPN_DPBUSD(acc, v1, w[1][j]);
                SFPN_DPBUSD(acc, v2, w[2][j]);
                sfpn_requant_store16(out + j * S, acc, sc[j], bi[j]);
            }
        }
    }
}

/* AVX-512 max pooling: 64 channels per step, a masked step for the rest. */
SFPN_VNNI static void sfpn_maxpool_vnni(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    const uint8_t *src = arena + s->offset;
    uint8_t *dst = arena + d->offset;
    int k = op->kernel, st = op->stride, c = s->c;
    ptrdiff_t row = (ptrdiff_t)(s->w + 2) * c, y0, y1;
    sfpn_share(d->h, part, &y0, &y1);
    for (ptrdiff_t oy = y0; oy < y1; oy++)
        for (int ox = 0; ox < d->w; ox++) {
            uint8_t *out = dst + sfpn_pixel(d, (int)oy + 1, ox + 1);
            const uint8_t *corner = src + sfpn_pixel(s, (int)oy * st + 1, ox * st + 1);
            for (int ch = 0; ch < c; ch += 64) {
                __mmask64 mask = c - ch >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (c - ch)) - 1);
                __m512i m = _mm512_setzero_si512();
                for (int dy = 0; dy < k; dy++)
                    for (int dx = 0; dx < k; dx++)
                        m = _mm512_max_epu8(m, _mm512_maskz_loadu_epi8(mask, corner + dy * row + dx * c + ch));
                _mm512_mask_storeu_epi8(out + ch, mask, m);
            }
        }
}

SFPN_VNNI static void sfpn_dwconv_vnni(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *d = &pl->bufs[op->dst];
    ptrdiff_t lo, hi;
    sfpn_flat_share(&pl->bufs[op->src], part, &lo, &hi);
    switch (op->mult) {
        case 1: sfpn_dw_vnni_m(pl, op, arena, lo, hi, 1); break;
        case 2: sfpn_dw_vnni_m(pl, op, arena, lo, hi, 2); break;
        case 3: sfpn_dw_vnni_m(pl, op, arena, lo, hi, 3); break;
        default: sfpn_dw_vnni_m(pl, op, arena, lo, hi, 4); break;
    }
    sfpn_clear_junk(d, arena + d->offset, op->dst_c0, op->cout, lo, hi);
}
#endif

/* ------------------------------------------------------------------ executor */

/* Zero the arena and fill the input buffer with its border value (interiors are overwritten by
 * every run; the other buffers' borders stay zero). */
static void sfpn_engine_init_arena(const sfpn_eplan *pl, uint8_t *arena, size_t bytes) {
    memset(arena, 0, bytes);
    const sfpn_ebuf *b = &pl->bufs[0];
    size_t pixels = (size_t)(b->h + 2) * (b->w + 2);
    for (size_t i = 0; i < pixels; i++) memcpy(arena + b->offset + i * 4, pl->pad, 4);
}

/* ------------------------------------------------------------------ compute ceiling */

/* int8 multiply-adds per second one core can issue at best: ``rounds`` x 12 independent vpdpbusd
 * chains (64 MACs each) on register operands (0 where the CPU has no VNNI). Compare a model's
 * MACs / this rate with its measured latency to see how far from the hardware a backend runs. */
#ifdef SFPN_ENGINE_X86
SFPN_VNNI static double sfpn_vnni_peak(long rounds) {
    __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2), acc[12];
    SFPN_UNROLL for (int i = 0; i < 12; i++) acc[i] = _mm512_setzero_si512();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long r = 0; r < rounds; r++)
        SFPN_UNROLL for (int i = 0; i < 12; i++) SFPN_DPBUSD(acc[i], a, b);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    __m512i all = acc[0];
    SFPN_UNROLL for (int i = 1; i < 12; i++) all = _mm512_add_epi32(all, acc[i]);
    volatile int sink = _mm512_reduce_add_epi32(all);   /* every chain is live: none is dropped */
    (void)sink;
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return seconds > 0 ? (double)rounds * 12 * 64 / seconds : 0.0;
}
#endif

static double sfpn_int8_peak(long rounds) {
#ifdef SFPN_ENGINE_X86
    if (sfpn_cpu_has_vnni()) return sfpn_vnni_peak(rounds);
#endif
    (void)rounds;
    return 0.0;
}

/* ------------------------------------------------------------------ thread team */

#define SFPN_ENGINE_MAX_THREADS 64

/* Threads that run one image together. Idle members sleep on a futex (Linux; elsewhere they
 * yield): a team never keeps a core busy between images. */
typedef struct sfpn_team sfpn_team;
typedef struct { sfpn_team *team; int tid; } sfpn_member;

struct sfpn_team {
    const sfpn_eplan *pl;
    const float *x;
    float *out, *sums;
    uint8_t *arena;
    int n;                          /* members, the caller included */
    _Atomic int arrived, phase;     /* barrier */
    _Atomic int job, stop;          /* job counter the workers wait on; shutdown flag */
    pthread_t workers[SFPN_ENGINE_MAX_THREADS];
    sfpn_member members[SFPN_ENGINE_MAX_THREADS];
    int started;                    /* workers running */
};

/* Wait until *word != seen: a short spin (the partner is usually microseconds away), then a few
 * yields (a busy machine may have put the partner on this core), then sleep on the futex. */
static void sfpn_wait_change(_Atomic int *word, int seen) {
    for (int spin = 0; spin < 2000; spin++) {
        if (atomic_load_explicit(word, memory_order_acquire) != seen) return;
#ifdef SFPN_ENGINE_X86
        _mm_pause();
#endif
    }
    for (int yield = 0; yield < 20; yield++) {
        if (atomic_load_explicit(word, memory_order_acquire) != seen) return;
        sched_yield();
    }
    while (atomic_load_explicit(word, memory_order_acquire) == seen) {
#ifdef __linux__
        syscall(SYS_futex, (int *)word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
        sched_yield();
#endif
    }
}

static void sfpn_wake_all(_Atomic int *word) {
#ifdef __linux__
    syscall(SYS_futex, (int *)word, FUTEX_WAKE_PRIVATE, SFPN_ENGINE_MAX_THREADS, NULL, NULL, 0);
#else
    (void)word;
#endif
}

static void sfpn_barrier(sfpn_team *t) {
    if (t == NULL || t->n == 1) return;
    int phase = atomic_load_explicit(&t->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&t->arrived, 1, memory_order_acq_rel) == t->n - 1) {
        atomic_store_explicit(&t->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&t->phase, 1, memory_order_release);
        sfpn_wake_all(&t->phase);
    } else {
        sfpn_wait_change(&t->phase, phase);
    }
}

/* ------------------------------------------------------------------ executor */

/* One member's part of ops 0 .. stop - 1 on one image: x float32 [3, h, w] -> out float32
 * [out_dim] when the last op runs (``sums``: pad16(out_dim) floats). ``team`` NULL: a single
 * thread does everything. */
static void sfpn_engine_part(const sfpn_eplan *pl, const float *x, float *out, uint8_t *arena, float *sums,
                             sfpn_part part, sfpn_team *team, int stop) {
    sfpn_input_stage(pl, x, arena, part);
    for (int i = 0; i < stop; i++) {
        const sfpn_eop *op = &pl->ops[i];
        sfpn_barrier(team);   /* the previous op's output is complete */
        switch (op->kind) {
            case SFPN_OP_MAXPOOL:
#ifdef SFPN_ENGINE_X86
                if (pl->vnni) {
                    sfpn_maxpool_vnni(pl, op, arena, part);
                    break;
                }
#endif
                sfpn_maxpool(pl, op, arena, part);
                break;
            case SFPN_OP_DWCONV:
#ifdef SFPN_ENGINE_X86
                if (pl->vnni && op->mult <= SFPN_ENGINE_MAX_MULT) {
                    sfpn_dwconv_vnni(pl, op, arena, part);
                    break;
                }
#endif
                sfpn_dwconv_portable(pl, op, arena, part);
                break;
            case SFPN_OP_CONV:
#ifdef SFPN_ENGINE_X86
                if (pl->vnni) {
                    sfpn_conv_vnni(pl, op, arena, part);
                    break;
                }
#endif
                sfpn_conv_portable(pl, op, arena, NULL, part);
                break;
            default: {   /* conv_gap: each member owns whole 16-channel blocks of the sums */
                const sfpn_ebuf *s = &pl->bufs[op->src];
                int np = sfpn_pad16(op->cout);
                ptrdiff_t o0, o1;
                sfpn_share(np / 16, part, &o0, &o1);
#ifdef SFPN_ENGINE_X86
                if (pl->vnni) {
                    sfpn_dense_copy(pl, op, arena, part);
                    sfpn_barrier(team);
                    sfpn_share((np + 63) / 64, part, &o0, &o1);
                    o0 *= 4;
                    o1 *= 4;
                }
#endif
                o0 = o0 * 16;
                o1 = o1 * 16 < np ? o1 * 16 : np;
                memset(sums + o0, 0, sizeof(float) * (size_t)(o1 - o0));
#ifdef SFPN_ENGINE_X86
                if (pl->vnni)
                    sfpn_gap_vnni(pl, op, arena, sums, part);
                else
#endif
                    sfpn_conv_portable(pl, op, arena, sums, part);
                float inv = 1.0f / (float)(s->h * s->w);
                for (ptrdiff_t o = o0; o < o1 && o < op->cout; o++) out[o] = sums[o] * inv;
            }
        }
    }
    sfpn_barrier(team);   /* the descriptor is complete */
}

/* Ops 0 .. stop - 1 on one image, on the calling thread alone (stop = pl->nop: the descriptor). */
static void sfpn_engine_run(const sfpn_eplan *pl, const float *x, float *out, uint8_t *arena, float *sums,
                            int stop) {
    sfpn_part all = {0, 1};
    sfpn_engine_part(pl, x, out, arena, sums, all, NULL, stop);
}

static void *sfpn_team_worker(void *arg) {
    sfpn_member *m = (sfpn_member *)arg;
    sfpn_team *t = m->team;
    int seen = 0;
    for (;;) {
        sfpn_wait_change(&t->job, seen);
        seen = atomic_load_explicit(&t->job, memory_order_acquire);
        if (atomic_load_explicit(&t->stop, memory_order_acquire)) return NULL;
        sfpn_part part = {m->tid, t->n};
        sfpn_engine_part(t->pl, t->x, t->out, t->arena, t->sums, part, t, t->pl->nop);
    }
}

static void sfpn_team_stop(sfpn_team *t) {
    atomic_store_explicit(&t->stop, 1, memory_order_release);
    atomic_fetch_add_explicit(&t->job, 1, memory_order_release);
    sfpn_wake_all(&t->job);
    for (int i = 0; i < t->started; i++) pthread_join(t->workers[i], NULL);
    t->started = 0;
}

/* Start n - 1 workers (the caller is member 0). Returns 0, or -1 if a thread could not start. */
static int sfpn_team_start(sfpn_team *t, int n) {
    memset(t, 0, sizeof(*t));
    t->n = n;
    for (int i = 1; i < n; i++) {
        t->members[i].team = t;
        t->members[i].tid = i;
        if (pthread_create(&t->workers[t->started], NULL, sfpn_team_worker, &t->members[i]) != 0) {
            sfpn_team_stop(t);
            return -1;
        }
        t->started++;
    }
    return 0;
}

/* One image on the whole team. */
static void sfpn_team_run(sfpn_team *t, const sfpn_eplan *pl, const float *x, float *out, uint8_t *arena,
                          float *sums) {
    t->pl = pl;
    t->x = x;
    t->out = out;
    t->arena = arena;
    t->sums = sums;
    atomic_fetch_add_explicit(&t->job, 1, memory_order_release);
    sfpn_wake_all(&t->job);
    sfpn_part lead = {0, t->n};
    sfpn_engine_part(pl, x, out, arena, sums, lead, t, pl->nop);
}

#endif
