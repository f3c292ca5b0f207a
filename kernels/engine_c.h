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
 * Threads: one image can be split over a team of threads (sfpn_team, engine_team.h): every op
 * is cut into chunks of pixel rows (or, for the final pool, output channels) that members claim
 * as they come, and an op starts when the one before it is complete. Results do not depend on
 * the thread count.
 *
 * Code paths with bit-identical results, one table of kernels each (sfpn_isa), picked once per
 * engine: AVX-512 VNNI (engine_x86.h), NEON dot product and armv8.0 NEON (engine_neon.h, chosen
 * from HWCAP) and portable C loops (engine_portable.h, every CPU). The plan
 * and shared helpers are in engine_plan.h, the thread team in engine_team.h. Requantization
 * everywhere: q = rint(clamp(fma(scale, (float)acc, bias), 0, 255)), round-half-even.
 */
#ifndef SFPN_ENGINE_C_H
#define SFPN_ENGINE_C_H
#include "engine_plan.h"
#include "engine_portable.h"
#include "engine_team.h"
#include "engine_x86.h"
#include "engine_neon.h"

/* Every table, fastest first; the portable one, last, runs everywhere. */
static const sfpn_isa *const sfpn_isas[] = {
#ifdef SFPN_ENGINE_X86
    &sfpn_isa_vnni,
#endif
#ifdef SFPN_ENGINE_NEON
    &sfpn_isa_dot,
    &sfpn_isa_v80,
#endif
    &sfpn_isa_portable,
};

/* The first table this CPU runs (``portable``: the portable one). */
static const sfpn_isa *sfpn_engine_isa(int portable) {
    if (portable) return &sfpn_isa_portable;
    const sfpn_isa *const *isa = sfpn_isas;
    while (!(*isa)->available()) isa++;
    return *isa;
}

/* The table called ``name`` if this CPU runs it, else NULL. */
static const sfpn_isa *sfpn_engine_isa_named(const char *name) {
    for (size_t i = 0; i < sizeof(sfpn_isas) / sizeof(sfpn_isas[0]); i++)
        if (strcmp(sfpn_isas[i]->name, name) == 0) return sfpn_isas[i]->available() ? sfpn_isas[i] : NULL;
    return NULL;
}

/* int8 multiply-adds per second one core can issue at best (0 where no table measures it). Compare
 * a model's MACs / this rate with its measured latency to see how far from the hardware a backend
 * runs. */
static double sfpn_int8_peak(long rounds) {
    const sfpn_isa *isa = sfpn_engine_isa(0);
    return isa->peak != NULL ? isa->peak(rounds) : 0.0;
}

/* Zero the arena and fill the input buffer with its border value (interiors are overwritten by
 * every run; the other buffers' borders stay zero). */
static void sfpn_engine_init_arena(const sfpn_eplan *pl, uint8_t *arena, size_t bytes) {
    memset(arena, 0, bytes);
    const sfpn_ebuf *b = &pl->bufs[0];
    size_t pixels = (size_t)(b->h + 2) * (b->w + 2);
    for (size_t i = 0; i < pixels; i++) memcpy(arena + b->offset + i * 4, pl->pad, 4);
}

/* An image runs as phases: 0 the input stage, then one per op of 0 .. stop - 1, the final
 * conv_gap as two when the table has a gap_prep step. */
static int sfpn_nphase(const sfpn_eplan *pl, int stop) {
    return 1 + stop + (stop == pl->nop && pl->isa->gap_prep != NULL);
}

/* Share ``part`` of phase p: x float32 [3, h, w] -> out float32 [out_dim] in the last phase
 * (``sums``: pad16(out_dim) floats). */
static void sfpn_phase_run(const sfpn_eplan *pl, int p, const float *x, float *out, uint8_t *arena, float *sums,
                           sfpn_part part) {
    const sfpn_isa *isa = pl->isa;
    if (p == 0) {
        sfpn_input_stage(pl, x, arena, part);
        return;
    }
    int i = p - 1 < pl->nop ? p - 1 : pl->nop - 1;
    const sfpn_eop *op = &pl->ops[i];
    switch (op->kind) {
        case SFPN_OP_MAXPOOL: isa->maxpool(pl, op, arena, part); break;
        case SFPN_OP_DWCONV: isa->dwconv(pl, op, arena, part); break;
        case SFPN_OP_CONV: isa->conv(pl, op, arena, part); break;
        default:   /* SFPN_OP_CONV_GAP, the last op */
            if (isa->gap_prep != NULL && p == pl->nop) isa->gap_prep(pl, op, arena, part);
            else isa->conv_gap(pl, op, arena, sums, out, part);
    }
}

/* Chunks a team of ``members`` cuts phase p into: a few per member, at most one per row (input
 * stage, pools, convs) or per 16 output channels (conv_gap). */
static int sfpn_phase_chunks(const sfpn_eplan *pl, int p, int members) {
    int items;
    if (p == 0) {
        items = pl->bufs[0].h;
    } else {
        const sfpn_eop *op = &pl->ops[p - 1 < pl->nop ? p - 1 : pl->nop - 1];
        if (op->kind == SFPN_OP_MAXPOOL) items = pl->bufs[op->dst].h;
        else if (op->kind == SFPN_OP_CONV_GAP && !(pl->isa->gap_prep != NULL && p == pl->nop)) items = sfpn_pad16(op->cout) / 16;
        else items = pl->bufs[op->src].h;
    }
    int n = 4 * members;
    return items < n ? (items > 0 ? items : 1) : n;
}

/* Ops 0 .. stop - 1 on one image, on the calling thread alone (stop = pl->nop: the descriptor). */
static void sfpn_engine_run(const sfpn_eplan *pl, const float *x, float *out, uint8_t *arena, float *sums,
                            int stop) {
    sfpn_part all = {0, 1};
    for (int p = 0; p < sfpn_nphase(pl, stop); p++) sfpn_phase_run(pl, p, x, out, arena, sums, all);
}

#endif
