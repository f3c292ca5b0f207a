/* AVX-512 VNNI kernels (vpdpbusd; used only where sfpn_cpu_has_vnni() says yes) and their table. */
#ifndef SFPN_ENGINE_X86_H
#define SFPN_ENGINE_X86_H
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <time.h>
#include "engine_plan.h"
#include "engine_portable.h"
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

/* VNNI conv_gap on the dense copy (gap_prep: no junk pixel may enter the average), a share of the
 * 64-channel output blocks. */
static void sfpn_conv_gap_vnni(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, float *sums, float *out,
                               sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src];
    ptrdiff_t tap = 0, o0, o1;
    int K = op->cin, np = sfpn_pad16(op->cout);
    sfpn_gap_begin(op, sums, 64, part, &o0, &o1);
    for (ptrdiff_t n0 = o0; n0 < o1; n0 += 64) {
        int nb = (np - n0) / 16 < 4 ? (int)(np - n0) / 16 : 4;
        sfpn_conv_run(1, nb, arena + pl->dense, K, &tap, 1, K, op->w_vnni + (size_t)n0 * K, op->scale + n0,
                      op->bias + n0, NULL, 0, sums + n0, 0, (ptrdiff_t)s->h * s->w);
    }
    sfpn_gap_end(pl, op, sums, out, o0, o1);
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

/* Multipliers above SFPN_ENGINE_MAX_MULT take the portable loops. */
SFPN_VNNI static void sfpn_dwconv_vnni(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    if (op->mult > SFPN_ENGINE_MAX_MULT) {
        sfpn_dwconv_portable(pl, op, arena, part);
        return;
    }
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

/* int8 multiply-adds per second one core can issue at best: ``rounds`` x 12 independent vpdpbusd
 * chains (64 MACs each) on register operands. */
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

static const sfpn_isa sfpn_isa_vnni = {
    .name = "avx512vnni", .available = sfpn_cpu_has_vnni, .conv = sfpn_conv_vnni, .dwconv = sfpn_dwconv_vnni,
    .maxpool = sfpn_maxpool_vnni, .conv_gap = sfpn_conv_gap_vnni, .gap_prep = sfpn_dense_copy,
    .peak = sfpn_vnni_peak};
#endif
#endif
