/* aarch64 NEON kernels: an armv8.2 dot-product table (SDOT, Pi 5 / Cortex-A76) and an armv8.0
 * table (SMULL + SADALP, Pi 4 / Cortex-A72), picked at run time from HWCAP. The dot-product code
 * is compiled for armv8.2-a+dotprod by a target attribute, so the build flags stay portable.
 *
 * Sign: activations are uint8, weights int8, and both tables multiply int8 x int8, so every
 * activation byte is flipped to x ^ 0x80 = x - 128 (int8) and the accumulators start from
 * corr[o] = 128 * (sum of channel o's weights): sum x * w = sum (x - 128) * w + corr, exactly
 * (int32 wraps, and the true sum fits).
 *
 * A conv reads "runs" of contiguous bytes around a pixel: one per tap, or one per kernel row when
 * the op reads every channel of its source (3 adjacent taps are then adjacent bytes: conv1's 4
 * channels x 3 taps make one 12-byte run). Weights are packed per run at engine build
 * (sfpn_neon_pack), from the portable layout; tails shorter than 16 bytes are loaded through a
 * zero-filled copy, so no kernel reads past a run.
 */
#ifndef SFPN_ENGINE_NEON_H
#define SFPN_ENGINE_NEON_H
#if defined(__aarch64__) && defined(__GNUC__)
#include <arm_neon.h>
#include "engine_plan.h"
#include "engine_portable.h"
#ifdef __linux__
#include <sys/auxv.h>
#endif
#define SFPN_ENGINE_NEON 1
#define SFPN_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define SFPN_INLINE static inline __attribute__((always_inline))
/* GCC 12's pre-allocation scheduling hoists the 16 products of an armv8.0 microkernel step ahead of
 * their adds and runs out of registers (measured under QEMU: 5x the loads and stores); off for the
 * armv8.0 entry points (on for the dot-product ones, where it measured better). */
#define SFPN_NEON_SCHED __attribute__((optimize("no-schedule-insns")))
#define SFPN_NUNROLL _Pragma("GCC unroll 16")
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif

typedef struct { ptrdiff_t off; int len; } sfpn_run;

/* The runs of a conv around a pixel of ``s``; returns how many. */
static int sfpn_runs(const sfpn_ebuf *s, const sfpn_eop *op, sfpn_run *runs) {
    ptrdiff_t taps[9];
    int nt = sfpn_taps(s, op->kernel, taps);
    if (op->kernel == 3 && op->cin == s->c) {
        for (int r = 0; r < 3; r++) runs[r] = (sfpn_run){taps[3 * r], 3 * op->cin};
        return 3;
    }
    for (int t = 0; t < nt; t++) runs[t] = (sfpn_run){taps[t], op->cin};
    return nt;
}

/* Portable weight of a conv for output o, run r, byte i of the run (0 past its end). */
static int8_t sfpn_run_weight(const sfpn_eop *op, int merged, int o, int r, int i, int len) {
    if (i >= len) return 0;
    int t = merged ? 3 * r + i / op->cin : r, k = merged ? i % op->cin : i;
    return op->w_port[((size_t)t * op->cin + k) * sfpn_pad16(op->cout) + o];
}

/* n (4, 8 or 12) bytes from p, zeros after, flipped by 0x80 (the tails of runs): loads only, no
 * lane moves (NEON loads need no alignment). */
SFPN_INLINE int8x16_t sfpn_load_flip_part(const uint8_t *p, int n) {
    uint32x4_t v;
    if (n == 4) v = vld1q_lane_u32((const uint32_t *)(const void *)p, vdupq_n_u32(0), 0);
    else v = vreinterpretq_u32_u8(vcombine_u8(vld1_u8(p), vdup_n_u8(0)));
    if (n == 12) v = vld1q_lane_u32((const uint32_t *)(const void *)(p + 8), v, 2);
    return vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(v), vdupq_n_u8(0x80)));
}

SFPN_INLINE int8x16_t sfpn_load_flip(const uint8_t *p) {
    return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p), vdupq_n_u8(0x80)));
}

/* 4 lanes requantized as sfpn_requant does: fcvtnu rounds half to even and saturates (negative
 * and NaN -> 0), the narrowing moves saturate at 255. */
SFPN_INLINE uint32x4_t sfpn_neon_q4(int32x4_t acc, const float *scale, const float *bias) {
    return vcvtnq_u32_f32(vfmaq_f32(vld1q_f32(bias), vld1q_f32(scale), vcvtq_f32_s32(acc)));
}

SFPN_INLINE void sfpn_neon_store16(uint8_t *dst, const int32x4_t a[4], const float *scale, const float *bias) {
    uint16x8_t lo = vcombine_u16(vqmovn_u32(sfpn_neon_q4(a[0], scale, bias)),
                                 vqmovn_u32(sfpn_neon_q4(a[1], scale + 4, bias + 4)));
    uint16x8_t hi = vcombine_u16(vqmovn_u32(sfpn_neon_q4(a[2], scale + 8, bias + 8)),
                                 vqmovn_u32(sfpn_neon_q4(a[3], scale + 12, bias + 12)));
    vst1q_u8(dst, vcombine_u8(vqmovn_u16(lo), vqmovn_u16(hi)));
}

/* sums[0..15] += relu(scale * acc + bias), as the portable conv_gap adds them. */
SFPN_INLINE void sfpn_neon_gap16(float *sums, const int32x4_t a[4], const float *scale, const float *bias) {
    SFPN_NUNROLL for (int v = 0; v < 4; v++) {
        float32x4_t y = vfmaq_f32(vld1q_f32(bias + 4 * v), vld1q_f32(scale + 4 * v), vcvtq_f32_s32(a[v]));
        vst1q_f32(sums + 4 * v, vaddq_f32(vld1q_f32(sums + 4 * v), vmaxnmq_f32(y, vdupq_n_f32(0.0f))));
    }
}

/* ---------------------------------------------------------------- armv8.2 dot product
 * Conv weights per 16-channel block: [run][4-byte group][16 channels][4]; acc[r][v] holds
 * channels 4v..4v+3 of pixel r. */
#define SFPN_DOT_GROUP(l)                                                                          \
    do {                                                                                           \
        int8x16_t wv[4];                                                                           \
        SFPN_NUNROLL for (int v = 0; v < 4; v++) wv[v] = vld1q_s8(w + 16 * v);                     \
        w += 64;                                                                                   \
        SFPN_NUNROLL for (int r = 0; r < R; r++)                                                   \
            SFPN_NUNROLL for (int v = 0; v < 4; v++) acc[r][v] = vdotq_laneq_s32(acc[r][v], wv[v], xv[r], l); \
    } while (0)

SFPN_DOTPROD SFPN_INLINE void sfpn_dot_block(const uint8_t *x, ptrdiff_t ldx, const sfpn_run *runs, int nr,
                                             const int8_t *w, const int32_t *corr, int32x4_t acc[][4],
                                             const int R) {
    SFPN_NUNROLL for (int r = 0; r < R; r++)
        SFPN_NUNROLL for (int v = 0; v < 4; v++) acc[r][v] = vld1q_s32(corr + 4 * v);
    for (int t = 0; t < nr; t++) {
        const uint8_t *xt = x + runs[t].off;
        int len = runs[t].len, k = 0;
        int8x16_t xv[4];
        for (; k + 16 <= len; k += 16) {
            SFPN_NUNROLL for (int r = 0; r < R; r++) xv[r] = sfpn_load_flip(xt + r * ldx + k);
            SFPN_DOT_GROUP(0);
            SFPN_DOT_GROUP(1);
            SFPN_DOT_GROUP(2);
            SFPN_DOT_GROUP(3);
        }
        if (k < len) {   /* 1..3 groups of 4 bytes */
            SFPN_NUNROLL for (int r = 0; r < R; r++) xv[r] = sfpn_load_flip_part(xt + r * ldx + k, len - k);
            SFPN_DOT_GROUP(0);
            if (len - k > 4) SFPN_DOT_GROUP(1);
            if (len - k > 8) SFPN_DOT_GROUP(2);
        }
    }
}

/* Pixels [first, end) (padded flat index) through the 16-channel block at n0: requantized to
 * ``y`` (gap 0) or added into ``sums`` (gap 1). */
SFPN_DOTPROD SFPN_INLINE void sfpn_dot_span(const sfpn_eop *op, const uint8_t *x, ptrdiff_t ldx,
                                            const sfpn_run *runs, int nr, int n0, uint8_t *y, ptrdiff_t ldy,
                                            float *sums, ptrdiff_t first, ptrdiff_t end, const int gap) {
    const int8_t *w = op->w_arm + (size_t)n0 / 16 * op->arm_block;
    const float *sc = op->scale + n0, *bi = op->bias + n0;
    const int32_t *corr = op->corr + n0;
    ptrdiff_t p = first;
    int32x4_t acc[4][4];
    for (; p + 4 <= end; p += 4) {
        sfpn_dot_block(x + p * ldx, ldx, runs, nr, w, corr, acc, 4);
        SFPN_NUNROLL for (int r = 0; r < 4; r++) {
            if (gap) sfpn_neon_gap16(sums + n0, acc[r], sc, bi);
            else sfpn_neon_store16(y + (p + r) * ldy + n0, acc[r], sc, bi);
        }
    }
    for (; p < end; p++) {
        sfpn_dot_block(x + p * ldx, ldx, runs, nr, w, corr, acc, 1);
        if (gap) sfpn_neon_gap16(sums + n0, acc[0], sc, bi);
        else sfpn_neon_store16(y + p * ldy + n0, acc[0], sc, bi);
    }
}

SFPN_DOTPROD static void sfpn_conv_dot(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    sfpn_run runs[9];
    ptrdiff_t lo, hi;
    int nr = sfpn_runs(s, op, runs);
    const uint8_t *x = arena + s->offset + op->src_c0;
    uint8_t *y = arena + d->offset + op->dst_c0;
    sfpn_flat_share(s, part, &lo, &hi);
    for (int n0 = 0; n0 < op->cout; n0 += 16) sfpn_dot_span(op, x, s->c, runs, nr, n0, y, d->c, NULL, lo, hi, 0);
    sfpn_clear_junk(d, arena + d->offset, op->dst_c0, op->cout, lo, hi);
}

/* conv_gap: this member's 16-channel blocks over the interior pixels, row by row (no junk pixel
 * enters the average; pixels are added in raster order, as the portable loop does). */
SFPN_DOTPROD static void sfpn_conv_gap_dot(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, float *sums,
                                           float *out, sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src];
    sfpn_run run = {0, op->cin};
    ptrdiff_t o0, o1;
    sfpn_gap_begin(op, sums, 16, part, &o0, &o1);
    const uint8_t *x = arena + s->offset + op->src_c0;
    for (ptrdiff_t n0 = o0; n0 < o1; n0 += 16)
        for (int row = 1; row <= s->h; row++) {
            ptrdiff_t first = sfpn_pixel(s, row, 1) / s->c;
            sfpn_dot_span(op, x, s->c, &run, 1, (int)n0, NULL, 0, sums, first, first + s->w, 1);
        }
    sfpn_gap_end(pl, op, sums, out, o0, o1);
}

/* Four taps of 16 channels interleaved: vector v, dword i = [a, b, c, d] of channel 4v + i. */
SFPN_INLINE void sfpn_neon_taps4(int8x16_t *q, int8x16_t a, int8x16_t b, int8x16_t c, int8x16_t d) {
    int8x16x2_t ab = vzipq_s8(a, b), cd = vzipq_s8(c, d);
    int16x8x2_t lo = vzipq_s16(vreinterpretq_s16_s8(ab.val[0]), vreinterpretq_s16_s8(cd.val[0]));
    int16x8x2_t hi = vzipq_s16(vreinterpretq_s16_s8(ab.val[1]), vreinterpretq_s16_s8(cd.val[1]));
    q[0] = vreinterpretq_s8_s16(lo.val[0]);
    q[1] = vreinterpretq_s8_s16(lo.val[1]);
    q[2] = vreinterpretq_s8_s16(hi.val[0]);
    q[3] = vreinterpretq_s8_s16(hi.val[1]);
}

/* Dot-product depthwise 3x3, multiplier M (constant after inlining): weights (as the VNNI path
 * packs them) per 16-channel group [tap quad 3][j][16][4] (quad 2: tap 8 alone, zeros after). */
SFPN_DOTPROD SFPN_INLINE void sfpn_dw_dot_m(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena,
                                            ptrdiff_t first, ptrdiff_t end, const int M) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    ptrdiff_t taps[9];
    sfpn_taps(s, 3, taps);
    int S = op->cin;
    const uint8_t *src = arena + s->offset + op->src_c0;
    uint8_t *dst = arena + d->offset + op->dst_c0;
    for (int g = 0; g < S / 16; g++) {
        const int8_t *wg = op->w_arm + (size_t)g * 3 * M * 64;
        for (ptrdiff_t p = first; p < end; p++) {
            const uint8_t *xp = src + p * s->c + 16 * g;
            int8x16_t t[9], q[3][4];
            SFPN_NUNROLL for (int i = 0; i < 9; i++) t[i] = sfpn_load_flip(xp + taps[i]);
            sfpn_neon_taps4(q[0], t[0], t[1], t[2], t[3]);
            sfpn_neon_taps4(q[1], t[4], t[5], t[6], t[7]);
            sfpn_neon_taps4(q[2], t[8], t[8], t[8], t[8]);
            uint8_t *out = dst + p * d->c + 16 * g;
            SFPN_NUNROLL for (int j = 0; j < M; j++) {
                int32x4_t acc[4];
                const int32_t *corr = op->corr + j * S + 16 * g;
                SFPN_NUNROLL for (int v = 0; v < 4; v++) {
                    acc[v] = vld1q_s32(corr + 4 * v);
                    SFPN_NUNROLL for (int qd = 0; qd < 3; qd++)
                        acc[v] = vdotq_s32(acc[v], q[qd][v], vld1q_s8(wg + (qd * M + j) * 64 + 16 * v));
                }
                sfpn_neon_store16(out + j * S, acc, op->scale + j * S + 16 * g, op->bias + j * S + 16 * g);
            }
        }
    }
}

SFPN_DOTPROD static void sfpn_dwconv_dot(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *d = &pl->bufs[op->dst];
    ptrdiff_t lo, hi;
    sfpn_flat_share(&pl->bufs[op->src], part, &lo, &hi);
    switch (op->mult) {
        case 1: sfpn_dw_dot_m(pl, op, arena, lo, hi, 1); break;
        case 2: sfpn_dw_dot_m(pl, op, arena, lo, hi, 2); break;
        case 3: sfpn_dw_dot_m(pl, op, arena, lo, hi, 3); break;
        default: sfpn_dw_dot_m(pl, op, arena, lo, hi, 4); break;
    }
    sfpn_clear_junk(d, arena + d->offset, op->dst_c0, op->cout, lo, hi);
}

/* ---------------------------------------------------------------- armv8.0 widening multiply
 * Conv weights per 8-channel group: [run][16-byte chunk][8 channels][16] (runs zero-padded to
 * 16 bytes). Each (pixel, channel) pair has one int32x4 accumulator, reduced across its lanes at
 * the end. SMULL makes 8 int16 products, SADALP adds them pairwise into the accumulator (SADDLP
 * for the first chunk): the multiplies issue on the A72's F0 pipe, the accumulates on F1.
 * ``pair`` (no weight of the op is -128, so two products sum to at most 32512 in magnitude):
 * SMLAL2 adds the upper 8 products into the same int16 lanes first, 3 instructions per 16 MACs. */
SFPN_INLINE int32x4_t sfpn_v80_mac(int32x4_t acc, int8x16_t x, int8x16_t w, const int pair, const int init) {
    int16x8_t p = vmull_s8(vget_low_s8(x), vget_low_s8(w));
    if (pair) {
        p = vmlal_high_s8(p, x, w);
        return init ? vpaddlq_s16(p) : vpadalq_s16(acc, p);
    }
    int16x8_t q = vmull_high_s8(x, w);
    acc = init ? vpaddlq_s16(p) : vpadalq_s16(acc, p);
    return vpadalq_s16(acc, q);
}

/* One 16-byte chunk (``n`` bytes: the rest zero) of R pixels against 8 channels' weights. */
SFPN_INLINE void sfpn_v80_chunk(int32x4_t acc[][8], const uint8_t *xt, ptrdiff_t ldx, int n, const int8_t *w,
                                const int R, const int pair, const int init) {
    int8x16_t xv[2];
    SFPN_NUNROLL for (int r = 0; r < R; r++)
        xv[r] = n >= 16 ? sfpn_load_flip(xt + r * ldx) : sfpn_load_flip_part(xt + r * ldx, n);
    SFPN_NUNROLL for (int c = 0; c < 8; c++) {
        int8x16_t wv = vld1q_s8(w + 16 * c);
        SFPN_NUNROLL for (int r = 0; r < R; r++) acc[r][c] = sfpn_v80_mac(acc[r][c], xv[r], wv, pair, init);
    }
}

SFPN_INLINE void sfpn_v80_group(const uint8_t *x, ptrdiff_t ldx, const sfpn_run *runs, int nr, const int8_t *w,
                                int32x4_t acc[][8], const int R, const int pair) {
    int first = 1;
    for (int t = 0; t < nr; t++) {
        const uint8_t *xt = x + runs[t].off;
        for (int k = 0, len = runs[t].len; k < len; k += 16, w += 128) {
            if (first) sfpn_v80_chunk(acc, xt + k, ldx, len - k, w, R, pair, 1);
            else sfpn_v80_chunk(acc, xt + k, ldx, len - k, w, R, pair, 0);
            first = 0;
        }
    }
}

/* The 16 channels at n0 of R pixels: two 8-channel groups, each pair reduced to one lane. */
SFPN_INLINE void sfpn_v80_block(const sfpn_eop *op, const uint8_t *x, ptrdiff_t ldx, const sfpn_run *runs, int nr,
                                int n0, int32x4_t out[][4], const int R, const int pair) {
    SFPN_NUNROLL for (int v = 0; v < 2; v++) {
        int32x4_t acc[2][8];
        sfpn_v80_group(x, ldx, runs, nr, op->w_arm + (size_t)(n0 / 8 + v) * op->arm_block, acc, R, pair);
        SFPN_NUNROLL for (int h = 0; h < 2; h++) {
            int32x4_t corr = vld1q_s32(op->corr + n0 + 8 * v + 4 * h);
            SFPN_NUNROLL for (int r = 0; r < R; r++) {
                int32x4_t *a = acc[r] + 4 * h;
                out[r][2 * v + h] = vaddq_s32(corr, vpaddq_s32(vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3])));
            }
        }
    }
}

SFPN_INLINE void sfpn_v80_span(const sfpn_eop *op, const uint8_t *x, ptrdiff_t ldx, const sfpn_run *runs, int nr,
                               int n0, uint8_t *y, ptrdiff_t ldy, float *sums, ptrdiff_t first, ptrdiff_t end,
                               const int gap, const int pair) {
    const float *sc = op->scale + n0, *bi = op->bias + n0;
    ptrdiff_t p = first;
    int32x4_t acc[2][4];
    for (; p + 2 <= end; p += 2) {
        sfpn_v80_block(op, x + p * ldx, ldx, runs, nr, n0, acc, 2, pair);
        SFPN_NUNROLL for (int r = 0; r < 2; r++) {
            if (gap) sfpn_neon_gap16(sums + n0, acc[r], sc, bi);
            else sfpn_neon_store16(y + (p + r) * ldy + n0, acc[r], sc, bi);
        }
    }
    for (; p < end; p++) {
        sfpn_v80_block(op, x + p * ldx, ldx, runs, nr, n0, acc, 1, pair);
        if (gap) sfpn_neon_gap16(sums + n0, acc[0], sc, bi);
        else sfpn_neon_store16(y + p * ldy + n0, acc[0], sc, bi);
    }
}

SFPN_NEON_SCHED static void sfpn_conv_v80(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    sfpn_run runs[9];
    ptrdiff_t lo, hi;
    int nr = sfpn_runs(s, op, runs);
    const uint8_t *x = arena + s->offset + op->src_c0;
    uint8_t *y = arena + d->offset + op->dst_c0;
    sfpn_flat_share(s, part, &lo, &hi);
    for (int n0 = 0; n0 < op->cout; n0 += 16) {
        if (op->arm_pair) sfpn_v80_span(op, x, s->c, runs, nr, n0, y, d->c, NULL, lo, hi, 0, 1);
        else sfpn_v80_span(op, x, s->c, runs, nr, n0, y, d->c, NULL, lo, hi, 0, 0);
    }
    sfpn_clear_junk(d, arena + d->offset, op->dst_c0, op->cout, lo, hi);
}

SFPN_NEON_SCHED static void sfpn_conv_gap_v80(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, float *sums, float *out,
                              sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src];
    sfpn_run run = {0, op->cin};
    ptrdiff_t o0, o1;
    sfpn_gap_begin(op, sums, 16, part, &o0, &o1);
    const uint8_t *x = arena + s->offset + op->src_c0;
    for (ptrdiff_t n0 = o0; n0 < o1; n0 += 16)
        for (int row = 1; row <= s->h; row++) {
            ptrdiff_t first = sfpn_pixel(s, row, 1) / s->c;
            if (op->arm_pair) sfpn_v80_span(op, x, s->c, &run, 1, (int)n0, NULL, 0, sums, first, first + s->w, 1, 1);
            else sfpn_v80_span(op, x, s->c, &run, 1, (int)n0, NULL, 0, sums, first, first + s->w, 1, 0);
        }
    sfpn_gap_end(pl, op, sums, out, o0, o1);
}

/* armv8.0 depthwise 3x3, ``pair`` (no weight is -128): activations flipped to int8 as the convs
 * do, weights int8 per 16-channel group [j][9][16]; SMULL + SMLAL add two taps' products in int16
 * lanes (at most 32512), SADDW widens them into int32 from corr: 1 multiply per 8 MACs. Otherwise
 * activations widened to int16 (no flip), weights int16 [j][9][16], SMLAL into int32 (1 per 4). */
SFPN_INLINE void sfpn_dw_v80_pair_taps(int32x4_t acc[4], int8x16_t xa, int8x16_t wa, const int8x16_t *xb,
                                      const int8x16_t *wb) {
    int16x8_t lo = vmull_s8(vget_low_s8(xa), vget_low_s8(wa)), hi = vmull_high_s8(xa, wa);
    if (xb != NULL) {
        lo = vmlal_s8(lo, vget_low_s8(*xb), vget_low_s8(*wb));
        hi = vmlal_high_s8(hi, *xb, *wb);
    }
    acc[0] = vaddw_s16(acc[0], vget_low_s16(lo));
    acc[1] = vaddw_high_s16(acc[1], lo);
    acc[2] = vaddw_s16(acc[2], vget_low_s16(hi));
    acc[3] = vaddw_high_s16(acc[3], hi);
}

SFPN_INLINE void sfpn_dw_v80_m(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, ptrdiff_t first,
                               ptrdiff_t end, const int M, const int pair) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    ptrdiff_t taps[9];
    sfpn_taps(s, 3, taps);
    int S = op->cin;
    const uint8_t *src = arena + s->offset + op->src_c0;
    uint8_t *dst = arena + d->offset + op->dst_c0;
    for (int g = 0; g < S / 16; g++) {
        for (ptrdiff_t p = first; p < end; p++) {
            const uint8_t *xp = src + p * s->c + 16 * g;
            int32x4_t acc[SFPN_ENGINE_MAX_MULT][4];
            if (pair) {
                const int8_t *wg = (const int8_t *)op->w_arm + (size_t)g * M * 9 * 16;
                int8x16_t x[9];
                SFPN_NUNROLL for (int t = 0; t < 9; t++) x[t] = sfpn_load_flip(xp + taps[t]);
                SFPN_NUNROLL for (int j = 0; j < M; j++) {
                    const int8_t *wj = wg + j * 9 * 16;
                    SFPN_NUNROLL for (int v = 0; v < 4; v++) acc[j][v] = vld1q_s32(op->corr + j * S + 16 * g + 4 * v);
                    SFPN_NUNROLL for (int t = 0; t < 8; t += 2) {
                        int8x16_t wb = vld1q_s8(wj + (t + 1) * 16);
                        sfpn_dw_v80_pair_taps(acc[j], x[t], vld1q_s8(wj + t * 16), &x[t + 1], &wb);
                    }
                    sfpn_dw_v80_pair_taps(acc[j], x[8], vld1q_s8(wj + 8 * 16), NULL, NULL);
                }
            } else {
                const int16_t *wg = (const int16_t *)(const void *)op->w_arm + (size_t)g * M * 9 * 16;
                SFPN_NUNROLL for (int j = 0; j < M; j++)
                    SFPN_NUNROLL for (int v = 0; v < 4; v++) acc[j][v] = vdupq_n_s32(0);
                SFPN_NUNROLL for (int t = 0; t < 9; t++) {
                    uint8x16_t xb = vld1q_u8(xp + taps[t]);
                    int16x8_t lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(xb)));
                    int16x8_t hi = vreinterpretq_s16_u16(vmovl_high_u8(xb));
                    SFPN_NUNROLL for (int j = 0; j < M; j++) {
                        const int16_t *wt = wg + (j * 9 + t) * 16;
                        int16x8_t w0 = vld1q_s16(wt), w1 = vld1q_s16(wt + 8);
                        acc[j][0] = vmlal_s16(acc[j][0], vget_low_s16(lo), vget_low_s16(w0));
                        acc[j][1] = vmlal_high_s16(acc[j][1], lo, w0);
                        acc[j][2] = vmlal_s16(acc[j][2], vget_low_s16(hi), vget_low_s16(w1));
                        acc[j][3] = vmlal_high_s16(acc[j][3], hi, w1);
                    }
                }
            }
            uint8_t *out = dst + p * d->c + 16 * g;
            SFPN_NUNROLL for (int j = 0; j < M; j++)
                sfpn_neon_store16(out + j * S, acc[j], op->scale + j * S + 16 * g, op->bias + j * S + 16 * g);
        }
    }
}

SFPN_NEON_SCHED static void sfpn_dwconv_v80(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *d = &pl->bufs[op->dst];
    ptrdiff_t lo, hi;
    sfpn_flat_share(&pl->bufs[op->src], part, &lo, &hi);
    switch (op->mult * 2 + op->arm_pair) {
        case 2: sfpn_dw_v80_m(pl, op, arena, lo, hi, 1, 0); break;
        case 3: sfpn_dw_v80_m(pl, op, arena, lo, hi, 1, 1); break;
        case 4: sfpn_dw_v80_m(pl, op, arena, lo, hi, 2, 0); break;
        case 5: sfpn_dw_v80_m(pl, op, arena, lo, hi, 2, 1); break;
        case 6: sfpn_dw_v80_m(pl, op, arena, lo, hi, 3, 0); break;
        case 7: sfpn_dw_v80_m(pl, op, arena, lo, hi, 3, 1); break;
        case 8: sfpn_dw_v80_m(pl, op, arena, lo, hi, 4, 0); break;
        default: sfpn_dw_v80_m(pl, op, arena, lo, hi, 4, 1); break;
    }
    sfpn_clear_junk(d, arena + d->offset, op->dst_c0, op->cout, lo, hi);
}

/* ---------------------------------------------------------------- packing (engine build) */

/* Bytes of one op's packed weights + corrections for table ``dot`` (1) or armv8.0 (0); sets
 * op->arm_block (bytes per 16-channel block (dot) or 8-channel group (v80) of a conv). */
static size_t sfpn_neon_pack_size(const sfpn_ebuf *s, sfpn_eop *op, int dot) {
    if (op->kind == SFPN_OP_MAXPOOL) return 0;
    size_t corr = sizeof(int32_t) * (size_t)sfpn_pad16(op->cout);
    if (op->kind == SFPN_OP_DWCONV) return corr + (size_t)op->cout * 12 * (dot ? 1 : 2);
    sfpn_run runs[9];
    int nr = sfpn_runs(s, op, runs);
    size_t block = 0;
    for (int r = 0; r < nr; r++) block += dot ? (size_t)runs[r].len * 16 : (size_t)(runs[r].len + 15) / 16 * 128;
    op->arm_block = block;
    return corr + block * (size_t)(dot ? sfpn_pad16(op->cout) / 16 : sfpn_pad16(op->cout) / 8);
}

/* Pack op's portable weights into ``mem`` (sfpn_neon_pack_size bytes, 16-byte aligned) and point
 * op->corr (and op->w_arm) into it. */
static void sfpn_neon_pack(const sfpn_ebuf *s, sfpn_eop *op, uint8_t *mem, int dot) {
    if (op->kind == SFPN_OP_MAXPOOL) return;
    int np = sfpn_pad16(op->cout);
    int32_t *corr = (int32_t *)(void *)mem;
    int8_t *w = (int8_t *)(mem + sizeof(int32_t) * (size_t)np);
    memset(corr, 0, sizeof(int32_t) * (size_t)np);
    op->corr = corr;
    if (op->kind == SFPN_OP_DWCONV) {   /* w_port: [M][9][S] */
        int S = op->cin;
        for (int j = 0; j < op->mult; j++)
            for (int t = 0; t < 9; t++)
                for (int c = 0; c < S; c++) corr[j * S + c] += 128 * op->w_port[((size_t)j * 9 + t) * S + c];
        op->w_arm = w;
        if (dot) {   /* [S / 16][tap quad 3][j][16][4], taps past 8 zero */
            for (int g = 0; g < S / 16; g++)
                for (int q = 0; q < 3; q++)
                    for (int j = 0; j < op->mult; j++)
                        for (int c = 0; c < 16; c++)
                            for (int i = 0; i < 4; i++)
                                *w++ = 4 * q + i < 9 ? op->w_port[((size_t)j * 9 + 4 * q + i) * S + 16 * g + c] : 0;
            return;
        }
        op->arm_pair = 1;   /* [S / 16][j][9][16]: int8 when no weight is -128, else int16 */
        for (size_t i = 0; i < (size_t)op->mult * 9 * S; i++)
            if (op->w_port[i] == -128) op->arm_pair = 0;
        int16_t *w16 = (int16_t *)(void *)w;
        for (int g = 0; g < S / 16; g++)
            for (int j = 0; j < op->mult; j++)
                for (int t = 0; t < 9; t++)
                    for (int i = 0; i < 16; i++) {
                        int8_t v = op->w_port[((size_t)j * 9 + t) * S + 16 * g + i];
                        if (op->arm_pair) *w++ = v;
                        else *w16++ = v;
                    }
        return;
    }
    sfpn_run runs[9];
    int nr = sfpn_runs(s, op, runs), merged = nr == 3 && op->kernel == 3;
    for (int o = 0; o < op->cout; o++)
        for (int r = 0; r < nr; r++)
            for (int i = 0; i < runs[r].len; i++) corr[o] += 128 * sfpn_run_weight(op, merged, o, r, i, runs[r].len);
    op->w_arm = w;
    op->arm_pair = 1;
    for (size_t i = 0; i < (size_t)op->kernel * op->kernel * op->cin * np; i++)
        if (op->w_port[i] == -128) op->arm_pair = 0;
    int width = dot ? 16 : 8, step = dot ? 4 : 16;
    for (int b = 0; b < np / width; b++)
        for (int r = 0; r < nr; r++) {
            int len = (runs[r].len + step - 1) / step * step;
            for (int k = 0; k < len; k += step)
                for (int c = 0; c < width; c++)
                    for (int i = 0; i < step; i++)
                        *w++ = sfpn_run_weight(op, merged, b * width + c, r, k + i, runs[r].len);
        }
}

/* NEON max pooling, 16 channels per step (explicit: Python's -fwrapv keeps GCC 12 from
 * vectorising the portable loop, measured 4.9 M scalar instructions per face under QEMU).
 * Channel counts not a multiple of 16 take the portable loop. */
static void sfpn_maxpool_neon(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    const sfpn_ebuf *s = &pl->bufs[op->src], *d = &pl->bufs[op->dst];
    if (s->c % 16) {
        sfpn_maxpool_portable(pl, op, arena, part);
        return;
    }
    const uint8_t *src = arena + s->offset;
    uint8_t *dst = arena + d->offset;
    int k = op->kernel, st = op->stride, c = s->c;
    ptrdiff_t row = (ptrdiff_t)(s->w + 2) * c, y0, y1;
    sfpn_share(d->h, part, &y0, &y1);
    for (ptrdiff_t oy = y0; oy < y1; oy++)
        for (int ox = 0; ox < d->w; ox++) {
            uint8_t *out = dst + sfpn_pixel(d, (int)oy + 1, ox + 1);
            const uint8_t *corner = src + sfpn_pixel(s, (int)oy * st + 1, ox * st + 1);
            for (int ch = 0; ch < c; ch += 16) {
                uint8x16_t m = vld1q_u8(corner + ch);
                for (int dy = 0; dy < k; dy++)
                    for (int dx = 0; dx < k; dx++) m = vmaxq_u8(m, vld1q_u8(corner + dy * row + dx * c + ch));
                vst1q_u8(out + ch, m);
            }
        }
}

static size_t sfpn_pack_size_dot(const sfpn_ebuf *s, sfpn_eop *op) { return sfpn_neon_pack_size(s, op, 1); }
static size_t sfpn_pack_size_v80(const sfpn_ebuf *s, sfpn_eop *op) { return sfpn_neon_pack_size(s, op, 0); }
static void sfpn_pack_dot(const sfpn_ebuf *s, sfpn_eop *op, uint8_t *mem) { sfpn_neon_pack(s, op, mem, 1); }
static void sfpn_pack_v80(const sfpn_ebuf *s, sfpn_eop *op, uint8_t *mem) { sfpn_neon_pack(s, op, mem, 0); }

static int sfpn_cpu_has_dotprod(void) {
#ifdef __linux__
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return 0;
#endif
}

static const sfpn_isa sfpn_isa_dot = {
    .name = "neon-dotprod", .available = sfpn_cpu_has_dotprod, .conv = sfpn_conv_dot, .dwconv = sfpn_dwconv_dot,
    .maxpool = sfpn_maxpool_neon, .conv_gap = sfpn_conv_gap_dot, .peak = NULL,
    .pack_size = sfpn_pack_size_dot, .pack = sfpn_pack_dot};

static const sfpn_isa sfpn_isa_v80 = {
    .name = "neon", .available = sfpn_isa_always, .conv = sfpn_conv_v80, .dwconv = sfpn_dwconv_v80,
    .maxpool = sfpn_maxpool_neon, .conv_gap = sfpn_conv_gap_v80, .peak = NULL,
    .pack_size = sfpn_pack_size_v80, .pack = sfpn_pack_v80};
#endif
#endif
