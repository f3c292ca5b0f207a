/* Fused affine crop -> normalised float32 NCHW batch (see warp.pyx for the checked entry point).
 *
 * Each output row goes through three short passes over scratch arrays of `size` entries:
 *   A  coordinates: source position of every output pixel (double), clamped for
 *      BORDER_REPLICATE, split into byte offsets and float sub-pixel weights (vectorisable);
 *   B  gather: for each pixel the two horizontally adjacent source pixels of the upper and
 *      lower row, packed as 32-bit words (the only scalar pass: 4 loads + 4 stores per pixel);
 *   C  blend: unpack the channels, bilinear blend in float32, subtract the mean, scale and
 *      write the planar R, G, B rows (vectorisable).
 * The sampling matches OpenCV 5's warpAffine(INTER_LINEAR, BORDER_REPLICATE) on 8-bit images,
 * which blends in float32 from float sub-pixel weights (OpenCV 4 used 5-bit fixed-point positions,
 * which differ from OpenCV 5 by up to 5 grey levels on sharp edges). The result is not rounded to
 * 8 bits, so it lies within 0.5 grey level (plus float noise) of OpenCV + NumPy normalisation.
 *
 * Border replicate trick: where the left/right neighbour would fall outside the image, the pixel
 * column is clamped and its horizontal weight set to 0, so the (finite) second sample of the pair
 * never contributes; rows are handled the same way with the lower row equal to the upper one.
 */
#ifndef SFPN_WARP_C_H
#define SFPN_WARP_C_H
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "simd.h"

typedef struct {
    const uint8_t *data;  /* pixel (0, 0), channel 0 */
    int32_t row_stride;   /* bytes, may be negative */
    int32_t col_stride;
    int32_t ch_off[3];    /* byte offset of the source channel feeding output R, G, B */
    int32_t height, width;
    int32_t packed;       /* 1: 3 interleaved bytes per pixel, rows ascending (fast gather) */
    int32_t safe_end;     /* packed only: largest offset where an 8-byte load stays in the image */
    int32_t shift[3];     /* bit position of output R, G, B inside a gathered word */
} sfpn_image;

typedef struct {
    double m[6];          /* crop -> image affine map: sx = m0*x + m1*y + m2, sy = m3*x + m4*y + m5 */
    int32_t image;
} sfpn_face;

typedef struct {
    int32_t *off_top, *off_bot, *dx;  /* byte offsets of the left sample in the two rows; right step */
    float *wx, *wy;                   /* horizontal / vertical weight of the second sample */
    uint64_t *top, *bot;              /* gathered pixel pairs of the upper and lower row */
} sfpn_warp_scratch;

/* Pass A for output row y: source offsets and weights for every x (vectorisable). Returns the
 * largest top/bottom byte offset, which decides whether pass B may use 32-bit loads.
 * no-trapping-math lets GCC turn the clamps into vector selects (we never read FP flags). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-trapping-math")))
#endif
SFPN_HOT static int32_t sfpn_warp_coords(const sfpn_image *im, const double *m, int size, int y,
                                         sfpn_warp_scratch *s) {
    /* float32 coordinates like OpenCV 5: within 1e-4 pixel for images up to 1000 pixels */
    const float m0 = (float)m[0], m3 = (float)m[3];
    const float bx = (float)(m[1] * y + m[2]), by = (float)(m[4] * y + m[5]);
    const float xmax = (float)im->width + 1.0f, ymax = (float)im->height + 1.0f;
    const int32_t wlast = im->width - 1, hlast = im->height - 1;
    const int32_t rs = im->row_stride, cs = im->col_stride;
    int32_t *restrict off_top = s->off_top, *restrict off_bot = s->off_bot, *restrict dx = s->dx;
    float *restrict wx = s->wx, *restrict wy = s->wy;
    int32_t maxoff = 0;
    for (int x = 0; x < size; x++) {
        float sx = m0 * (float)x + bx, sy = m3 * (float)x + by;
        /* anything beyond one pixel outside the image samples the replicated border anyway */
        sx = sx > -2.0f ? sx : -2.0f;
        sx = sx < xmax ? sx : xmax;
        sy = sy > -2.0f ? sy : -2.0f;
        sy = sy < ymax ? sy : ymax;
        int32_t ix = (int32_t)sx, iy = (int32_t)sy;
        ix -= (float)ix > sx;  /* floor */
        iy -= (float)iy > sy;
        float fx = sx - (float)ix, fy = sy - (float)iy;
        int32_t xin = (ix >= 0) & (ix < wlast), yin = (iy >= 0) & (iy < hlast);
        int32_t x0 = ix > 0 ? ix : 0;
        x0 = x0 < wlast ? x0 : wlast;
        int32_t y0 = iy > 0 ? iy : 0;
        y0 = y0 < hlast ? y0 : hlast;
        int32_t top = y0 * rs + x0 * cs;
        int32_t bot = top + yin * rs;
        off_top[x] = top;
        off_bot[x] = bot;
        dx[x] = xin * cs;
        wx[x] = xin ? fx : 0.0f;
        wy[x] = yin ? fy : 0.0f;
        int32_t hi = top > bot ? top : bot;
        maxoff = hi > maxoff ? hi : maxoff;
    }
    return maxoff;
}

/* Pass B, packed 3-channel images: one 64-bit load per row fetches both pixels of the pair
 * (bytes 0-2 left pixel, 3-5 right pixel, 6-7 unused). */
static inline uint64_t sfpn_load_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

SFPN_HOT static void sfpn_warp_gather_packed(const uint8_t *src, int size, sfpn_warp_scratch *s) {
    const int32_t *restrict off_top = s->off_top, *restrict off_bot = s->off_bot;
    uint64_t *restrict top = s->top, *restrict bot = s->bot;
    for (int x = 0; x < size; x++) {
        top[x] = sfpn_load_u64(src + off_top[x]);
        bot[x] = sfpn_load_u64(src + off_bot[x]);
    }
}

/* Pass B, any layout (grey, strided, reversed channels, last bytes of a packed image): reads
 * exactly the clamped pixels, output channels R, G, B of the left pixel in bytes 0-2, right 3-5. */
static inline uint64_t sfpn_pack_pair(const uint8_t *p, int32_t d, const int32_t *ch) {
    const uint8_t *q = p + d;
    return (uint64_t)p[ch[0]] | ((uint64_t)p[ch[1]] << 8) | ((uint64_t)p[ch[2]] << 16) |
           ((uint64_t)q[ch[0]] << 24) | ((uint64_t)q[ch[1]] << 32) | ((uint64_t)q[ch[2]] << 40);
}

static void sfpn_warp_gather_generic(const uint8_t *src, const int32_t *ch, int size,
                                     sfpn_warp_scratch *s) {
    for (int x = 0; x < size; x++) {
        s->top[x] = sfpn_pack_pair(src + s->off_top[x], s->dx[x], ch);
        s->bot[x] = sfpn_pack_pair(src + s->off_bot[x], s->dx[x], ch);
    }
}

/* One channel of a gathered pair word: the left (shift) or right (shift + 24) pixel. */
#define SFPN_BYTE(w, shift) ((float)(int32_t)((uint32_t)((w) >> (shift)) & 255u))

/* Pass C: bilinear blend, mean, scale; writes one row of the R, G and B planes (vectorisable). */
SFPN_HOT static void sfpn_warp_blend(const sfpn_warp_scratch *s, const int32_t *shift,
                                     float scale, const float *bias, int size, float *restrict r,
                                     float *restrict g, float *restrict b) {
    const uint64_t *restrict top = s->top, *restrict bot = s->bot;
    const float *restrict wx = s->wx, *restrict wy = s->wy;
    const int32_t s0 = shift[0], s1 = shift[1], s2 = shift[2];
    const float b0 = bias[0], b1 = bias[1], b2 = bias[2];
    for (int x = 0; x < size; x++) {
        const uint64_t t = top[x], u = bot[x];
        const float fx = wx[x], fy = wy[x];
#define SFPN_BLEND(sh, out, bi)                                                     \
        {                                                                           \
            float p00 = SFPN_BYTE(t, sh), p01 = SFPN_BYTE(t, sh + 24);              \
            float p10 = SFPN_BYTE(u, sh), p11 = SFPN_BYTE(u, sh + 24);              \
            float hi = p00 + fx * (p01 - p00), lo = p10 + fx * (p11 - p10);         \
            out[x] = (hi + fy * (lo - hi)) * scale + bi;                            \
        }
        SFPN_BLEND(s0, r, b0)
        SFPN_BLEND(s1, g, b1)
        SFPN_BLEND(s2, b, b2)
#undef SFPN_BLEND
    }
}

/* A batch shared by the threads warping it: output rows are handed out in blocks through an
 * atomic counter, so a thread that is descheduled (busy machine) delays nobody, and the caller
 * waits only for blocks actually being processed, never for a worker that has not started. */
typedef struct {
    const sfpn_image *images;
    const sfpn_face *faces;
    float *out;          /* [n, 3, size, size] */
    float bias[3];       /* -mean * scale */
    float scale;
    int size;
    size_t rows;         /* n * size */
    size_t block;        /* rows per claim */
    size_t next;         /* first unclaimed row (atomic) */
    size_t done;         /* rows finished (atomic) */
} sfpn_warp_job;

#if defined(_MSC_VER)
#include <windows.h>
#define SFPN_FETCH_ADD(p, v) ((size_t)InterlockedExchangeAdd64((volatile LONG64 *)(p), (LONG64)(v)))
#define SFPN_LOAD(p) ((size_t)InterlockedCompareExchange64((volatile LONG64 *)(p), 0, 0))
#define SFPN_YIELD() SwitchToThread()
#else
#include <sched.h>
#define SFPN_FETCH_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)
#define SFPN_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define SFPN_YIELD() sched_yield()
#endif

/* Claim and warp blocks of rows until none are left. Returns 0, or -1 (nothing claimed) if the
 * scratch rows cannot be allocated. */
static int sfpn_warp_work(sfpn_warp_job *job) {
    const int size = job->size;
    const size_t n = (size_t)size;
    char *mem = (char *)malloc(n * (2 * sizeof(uint64_t) + 3 * sizeof(int32_t) + 2 * sizeof(float)));
    if (mem == NULL) return -1;
    sfpn_warp_scratch s;
    s.top = (uint64_t *)mem;
    s.bot = s.top + n;
    s.off_top = (int32_t *)(s.bot + n);
    s.off_bot = s.off_top + n;
    s.dx = s.off_bot + n;
    s.wx = (float *)(s.dx + n);
    s.wy = s.wx + n;
    static const int32_t planar_shift[3] = {0, 8, 16};
    for (;;) {
        size_t begin = SFPN_FETCH_ADD(&job->next, job->block);
        if (begin >= job->rows) break;
        size_t end = begin + job->block < job->rows ? begin + job->block : job->rows;
        for (size_t r = begin; r < end; r++) {
            size_t f = r / n;
            int y = (int)(r % n);
            const sfpn_image *im = &job->images[job->faces[f].image];
            int32_t maxoff = sfpn_warp_coords(im, job->faces[f].m, size, y, &s);
            const int32_t *shift;
            if (im->packed && maxoff <= im->safe_end) {
                sfpn_warp_gather_packed(im->data, size, &s);
                shift = im->shift;
            } else {
                sfpn_warp_gather_generic(im->data, im->ch_off, size, &s);
                shift = planar_shift;
            }
            float *dst = job->out + (f * 3 * n + (size_t)y) * n;
            sfpn_warp_blend(&s, shift, job->scale, job->bias, size, dst, dst + n * n, dst + 2 * n * n);
        }
        SFPN_FETCH_ADD(&job->done, end - begin);
    }
    free(mem);
    return 0;
}

#if defined(__x86_64__) || defined(__i386__)
#define SFPN_PAUSE() __builtin_ia32_pause()
#else
#define SFPN_PAUSE() ((void)0)
#endif

/* Wait until every row is finished (only blocks some thread is processing remain, tens of
 * microseconds): spin first, since yielding on a busy machine costs a whole time slice. */
static void sfpn_warp_wait(sfpn_warp_job *job) {
    for (int i = 0; i < (1 << 16) && SFPN_LOAD(&job->done) < job->rows; i++) SFPN_PAUSE();
    while (SFPN_LOAD(&job->done) < job->rows) SFPN_YIELD();
}

#endif
