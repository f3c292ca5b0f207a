/* Every engine table against the portable one, bit for bit, on random plans: the whole arena
 * (every buffer, borders included) and the descriptor, for 1 and 2 threads. Built and run by
 * tests/test_engine_tables.py (natively, or for aarch64 under QEMU as each CPU model):
 *
 *   cc -O2 -pthread -Ikernels tests/engine_tables_check.c -lm -o check && ./check
 *
 * Plans: SqueezeNet fire shapes (conv 3x3 on the 4-channel input, max pool, squeeze 1x1,
 * expand 1x1 + depthwise into one concat buffer, conv + global average pool) at several sizes,
 * and the full SqueezeFacePoseNet topology (113 x 113, eight fire modules, conv10 512 -> 1000).
 * Weights span the whole int8 range (-128 included), but -127..127 in the full model (as
 * native_export quantizes: the armv8.0 table's fast pairing path). Prints one line per table and plan; exit
 * status 1 on any mismatch.
 */
#include <stdio.h>
#include <stdlib.h>
#include "engine_c.h"

#define MAXB 64
#define MAXO 64

typedef struct {
    sfpn_eplan pl;
    sfpn_ebuf bufs[MAXB];
    sfpn_eop ops[MAXO];
    size_t bytes;
} plan_t;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() % 1000000) / 1e6f; }

static int add_buf(plan_t *p, int h, int w, int c) {
    sfpn_ebuf *b = &p->bufs[p->pl.nbuf];
    *b = (sfpn_ebuf){h, w, c, p->bytes};
    p->bytes += ((size_t)(h + 2) * (w + 2) * c + 63) / 64 * 64;
    return p->pl.nbuf++;
}

/* Random portable weights [taps][cin][pad16(cout)] (dwconv: [M][9][S]) with scales that keep the
 * requantized bytes spread over 0..255. */
static int low_weight = -128;   /* -127 for a plan as native_export quantizes */

static void add_op(plan_t *p, int kind, int src, int src_c0, int cin, int dst, int dst_c0, int cout, int kernel,
                   int mult) {
    sfpn_eop *o = &p->ops[p->pl.nop++];
    memset(o, 0, sizeof(*o));
    *o = (sfpn_eop){.kind = kind, .src = src, .dst = dst, .src_c0 = src_c0, .dst_c0 = dst_c0, .cin = cin,
                    .cout = cout, .kernel = kernel, .stride = kind == SFPN_OP_MAXPOOL ? 2 : 1, .mult = mult};
    if (kind == SFPN_OP_MAXPOOL) return;
    int np = sfpn_pad16(cout), reduce = kind == SFPN_OP_DWCONV ? 9 : kernel * kernel * cin;
    size_t nw = kind == SFPN_OP_DWCONV ? (size_t)cout * 9 : (size_t)kernel * kernel * cin * np;
    int8_t *w = calloc(nw, 1);
    for (size_t i = 0; i < nw; i++) w[i] = (int8_t)(low_weight + (int)(rnd() % (unsigned)(128 - low_weight)));
    if (kind != SFPN_OP_DWCONV)
        for (size_t i = 0; i < nw; i++)
            if ((int)(i % np) >= cout || (src == 0 && (i / np) % cin == 3)) w[i] = 0;   /* padding; input channel 3 */
    float *scale = calloc(np, sizeof(float)), *bias = calloc(np, sizeof(float));
    for (int i = 0; i < cout; i++) {
        scale[i] = uniform(0.5f, 2.0f) / (float)(reduce * 40);
        bias[i] = uniform(-20.0f, 60.0f);
    }
    o->w_port = w;
    o->scale = scale;
    o->bias = bias;
}

static void fire(plan_t *p, int in, int s, int e, int m) {
    const sfpn_ebuf *b = &p->bufs[in];
    int sq = add_buf(p, b->h, b->w, s), cat = add_buf(p, b->h, b->w, e + m * s);
    add_op(p, SFPN_OP_CONV, in, 0, b->c, sq, 0, s, 1, 1);
    add_op(p, SFPN_OP_CONV, sq, 0, s, cat, 0, e, 1, 1);
    add_op(p, SFPN_OP_DWCONV, sq, 0, s, cat, e, m * s, 3, m);
}

static int pool(plan_t *p, int in) {
    const sfpn_ebuf *b = &p->bufs[in];
    int out = add_buf(p, (b->h - 3) / 2 + 1, (b->w - 3) / 2 + 1, b->c);
    add_op(p, SFPN_OP_MAXPOOL, in, 0, b->c, out, 0, b->c, 3, 1);
    return out;
}

static void build(plan_t *p, int h, int w, int c1, const int (*fires)[3], int nfire, int pool_after, int d) {
    memset(p, 0, sizeof(*p));
    const float mean[3] = {131.0912f, 103.8827f, 91.4953f};
    for (int c = 0; c < 3; c++) {
        p->pl.offset[c] = mean[c];
        p->pl.pad[c] = (uint8_t)(mean[c] + 0.5f);
    }
    int in = add_buf(p, h, w, 4), c = add_buf(p, h, w, c1);
    add_op(p, SFPN_OP_CONV, in, 0, 4, c, 0, c1, 3, 1);
    int cur = pool(p, c);
    for (int f = 0; f < nfire; f++) {
        fire(p, cur, fires[f][0], fires[f][1], fires[f][2]);
        cur = p->pl.nbuf - 1;
        if (f + 1 < nfire && (pool_after >> f & 1)) cur = pool(p, cur);
    }
    add_op(p, SFPN_OP_CONV_GAP, cur, 0, p->bufs[cur].c, cur, 0, d, 1, 1);
    p->pl.out_dim = d;
    p->pl.dense = p->bytes;
    p->bytes += (size_t)p->bufs[cur].h * p->bufs[cur].w * p->bufs[cur].c;
    p->pl.bufs = p->bufs;
    p->pl.ops = p->ops;
}

/* The plan's arena after one image on ``isa`` with ``threads`` threads; out gets the descriptor. */
static uint8_t *run(plan_t *p, const sfpn_isa *isa, int threads, const float *x, float *out) {
    p->pl.isa = isa;
    for (int i = 0; i < p->pl.nop; i++) {
        sfpn_eop *o = &p->ops[i];
        if (isa->pack == NULL) continue;
        uint8_t *mem = NULL;
        size_t n = isa->pack_size(&p->bufs[o->src], o);
        if (posix_memalign((void **)&mem, 64, n + 64) != 0) abort();
        isa->pack(&p->bufs[o->src], o, mem);
    }
    uint8_t *arena = NULL;
    float *sums = NULL;
    if (posix_memalign((void **)&arena, 64, p->bytes) || posix_memalign((void **)&sums, 64, 4 * 4096)) abort();
    sfpn_engine_init_arena(&p->pl, arena, p->bytes);
    if (threads == 1) {
        sfpn_engine_run(&p->pl, x, out, arena, sums, p->pl.nop);
    } else {
        static sfpn_team team;
        if (sfpn_team_start(&team, threads) != 0) abort();
        sfpn_team_run(&team, &p->pl, x, out, arena, sums);
        sfpn_team_stop(&team);
    }
    free(sums);
    return arena;
}

static int check(const char *name, plan_t *p) {
    const sfpn_ebuf *b = &p->bufs[0];
    size_t nx = (size_t)3 * b->h * b->w;
    float *x = malloc(nx * sizeof(float)), want[4096], got[4096];
    for (size_t i = 0; i < nx; i++) x[i] = uniform(-150.0f, 150.0f);
    uint8_t *ref = run(p, &sfpn_isa_portable, 1, x, want);
    double mean = 0;
    for (int i = 0; i < p->pl.out_dim; i++) mean += want[i] / p->pl.out_dim;
    int bad = 0;
    for (size_t t = 0; t < sizeof(sfpn_isas) / sizeof(sfpn_isas[0]); t++) {
        const sfpn_isa *isa = sfpn_isas[t];
        if (!isa->available() || (isa->pack == NULL && isa != &sfpn_isa_portable)) {
            printf("%-8s %-14s skipped (%s)\n", name, isa->name,
                   isa->available() ? "its weights are packed by engine.pyx" : "this CPU does not run it");
            continue;
        }
        for (int threads = 1; threads <= 2; threads++) {
            uint8_t *arena = run(p, isa, threads, x, got);
            int same = memcmp(arena, ref, p->pl.dense) == 0 &&
                       memcmp(got, want, sizeof(float) * (size_t)p->pl.out_dim) == 0;
            printf("%-8s %-14s threads %d: %s (descriptor mean %.3f)\n", name, isa->name, threads,
                   same ? "identical" : "MISMATCH", mean);
            bad |= !same;
            free(arena);
        }
    }
    free(ref);
    free(x);
    return bad;
}

int main(void) {
    static plan_t p;
    static const int small[][3] = {{16, 32, 4}}, odd[][3] = {{48, 16, 3}, {16, 48, 1}}, wide[][3] = {{64, 128, 2}};
    static const int sfpn[][3] = {{16, 64, 4}, {16, 64, 4}, {32, 128, 4}, {32, 128, 4},
                                  {48, 192, 4}, {48, 192, 4}, {64, 256, 4}, {64, 256, 4}};
    int bad = 0;
    build(&p, 23, 19, 64, small, 1, 0, 40);
    bad |= check("fire", &p);
    build(&p, 30, 7, 32, odd, 2, 1, 17);
    bad |= check("odd", &p);
    build(&p, 9, 11, 128, wide, 1, 0, 5);
    bad |= check("wide", &p);
    low_weight = -127;
    build(&p, 113, 113, 64, sfpn, 8, (1 << 2) | (1 << 6), 1000);
    bad |= check("sfpn", &p);
    return bad;
}
