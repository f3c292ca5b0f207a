/* Portable C kernels (every CPU; compiler-vectorised, SFPN_HOT clones on x86) and their table. */
#ifndef SFPN_ENGINE_PORTABLE_H
#define SFPN_ENGINE_PORTABLE_H
#include "engine_plan.h"

/* The float32 [3, h, w] crop into the input buffer (every code path). */
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

SFPN_HOT static void sfpn_maxpool_portable(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
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
SFPN_HOT static void sfpn_conv_loops(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, float *sums,
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

static void sfpn_conv_portable(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part) {
    sfpn_conv_loops(pl, op, arena, NULL, part);
}

static void sfpn_conv_gap_portable(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, float *sums,
                                   float *out, sfpn_part part) {
    ptrdiff_t o0, o1;
    sfpn_gap_begin(op, sums, 16, part, &o0, &o1);
    sfpn_conv_loops(pl, op, arena, sums, part);
    sfpn_gap_end(pl, op, sums, out, o0, o1);
}

static int sfpn_isa_always(void) { return 1; }

static const sfpn_isa sfpn_isa_portable = {
    .name = "portable", .available = sfpn_isa_always, .conv = sfpn_conv_portable, .dwconv = sfpn_dwconv_portable,
    .maxpool = sfpn_maxpool_portable, .conv_gap = sfpn_conv_gap_portable, .peak = NULL};

#endif
