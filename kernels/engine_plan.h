/* The engine's plan (buffers, ops, the per-ISA kernel table) and helpers every code path shares. */
#ifndef SFPN_ENGINE_PLAN_H
#define SFPN_ENGINE_PLAN_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "simd.h"

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
    const int8_t *w_arm;        /* weights packed for the NEON kernels (engine_neon.h) */
    const int32_t *corr;        /* NEON: per output channel, 128 * sum of its weights */
    size_t arm_block;           /* NEON conv: bytes per packed channel block */
    int arm_pair;               /* armv8.0 conv, depthwise: no weight is -128 (two products fit in int16) */
    const float *scale, *bias;  /* per output channel, zero-padded to a multiple of 16 */
} sfpn_eop;

/* Share ``tid`` of ``n`` takes items [*lo, *hi) of ``count`` (a thread team's chunks; {0, 1}: all). */
typedef struct { int tid, n; } sfpn_part;

typedef struct sfpn_eplan sfpn_eplan;
typedef void (*sfpn_op_fn)(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, sfpn_part part);

/* One instruction set's kernels, picked once per engine (sfpn_engine_isa). Each runs one share of
 * one op; conv_gap also zeroes its share of ``sums`` and writes that share of ``out``. gap_prep
 * (NULL: none) is a step every share of it finishes before any conv_gap share starts. */
typedef struct {
    const char *name;
    int (*available)(void);     /* does this CPU run it? */
    sfpn_op_fn conv, dwconv, maxpool;
    void (*conv_gap)(const sfpn_eplan *pl, const sfpn_eop *op, uint8_t *arena, float *sums, float *out,
                     sfpn_part part);
    sfpn_op_fn gap_prep;
    double (*peak)(long rounds);   /* int8 MACs per second on one core; NULL: not measured */
    /* Extra weight packing at engine build (NULL: none): pack_size(src buffer, op) bytes, then
     * pack(src, op, mem) with mem 64-byte aligned and kept for the engine's life. */
    size_t (*pack_size)(const sfpn_ebuf *src, sfpn_eop *op);
    void (*pack)(const sfpn_ebuf *src, sfpn_eop *op, uint8_t *mem);
} sfpn_isa;

struct sfpn_eplan {
    int nbuf, nop, out_dim;
    const sfpn_isa *isa;
    const sfpn_ebuf *bufs;
    const sfpn_eop *ops;
    size_t dense;       /* arena offset of a border-free copy of the conv_gap input (VNNI path) */
    float offset[3];    /* input: q = rint(x + offset[c]) */
    uint8_t pad[4];     /* border bytes of the input buffer (its "zero") */
};

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
static inline void sfpn_clear_junk(const sfpn_ebuf *b, uint8_t *base, int c0, int n, ptrdiff_t lo, ptrdiff_t hi) {
    ptrdiff_t wp = b->w + 2;
    for (ptrdiff_t row = lo / wp - 1; row <= hi / wp; row++) {   /* lo >= w + 3: row >= 0 */
        ptrdiff_t right = row * wp + b->w + 1, left = (row + 1) * wp;
        if (right >= lo && right < hi) memset(base + right * b->c + c0, 0, (size_t)n);
        if (left >= lo && left < hi) memset(base + left * b->c + c0, 0, (size_t)n);
    }
}

/* This member's channels [*o0, *o1) of a conv_gap, shared in blocks of ``block``; their sums zeroed. */
static void sfpn_gap_begin(const sfpn_eop *op, float *sums, int block, sfpn_part part, ptrdiff_t *o0,
                           ptrdiff_t *o1) {
    int np = sfpn_pad16(op->cout);
    sfpn_share((np + block - 1) / block, part, o0, o1);
    *o0 *= block;
    *o1 = *o1 * block < np ? *o1 * block : np;
    memset(sums + *o0, 0, sizeof(float) * (size_t)(*o1 - *o0));
}

/* The global average pool of channels [o0, o1) from their sums. */
static void sfpn_gap_end(const sfpn_eplan *pl, const sfpn_eop *op, const float *sums, float *out, ptrdiff_t o0,
                         ptrdiff_t o1) {
    const sfpn_ebuf *s = &pl->bufs[op->src];
    float inv = 1.0f / (float)(s->h * s->w);
    for (ptrdiff_t o = o0; o < o1 && o < op->cout; o++) out[o] = sums[o] * inv;
}

#endif
