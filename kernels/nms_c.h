/* Greedy non-maximum suppression (see nms.pyx for the checked Python entry point).
 *
 * Boxes are (x0, y0, x1, y1, score); ``edge`` is added to each side length: 1 for inclusive pixel
 * corners, as in the classic MTCNN code (width = x1 - x0 + 1), 0 for continuous coordinates. Every operation is the float32 one NumPy performs, in the same order, so
 * the kept set matches the NumPy reference bit for bit; contraction into FMA would break that,
 * hence no target clones and contraction switched off.
 */
#ifndef SFPN_NMS_C_H
#define SFPN_NMS_C_H
#include <stddef.h>
#include <stdint.h>
#include "simd.h"

/* b [n, 5] sorted by score, best first; area [n] and dead [n] (zeroed) are scratch.
 * Writes the positions (in b) of the kept boxes to keep; returns how many. If owner is not NULL,
 * owner[j] is the position of the kept box that suppressed box j (j itself for a kept box): the
 * first kept box overlapping it, which is the cluster weighted NMS blends it into. */
SFPN_NO_CONTRACT static size_t sfpn_nms_sorted(const float *b, size_t n, float threshold, int use_min,
                                               float edge, float *area, unsigned char *dead,
                                               int64_t *keep, int64_t *owner) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        area[i] = (b[5 * i + 2] - b[5 * i] + edge) * (b[5 * i + 3] - b[5 * i + 1] + edge);
    for (size_t i = 0; i < n; i++) {
        if (dead[i]) continue;
        keep[kept++] = (int64_t)i;
        if (owner) owner[i] = (int64_t)i;
        const float x0 = b[5 * i], y0 = b[5 * i + 1], x1 = b[5 * i + 2], y1 = b[5 * i + 3];
        for (size_t j = i + 1; j < n; j++) {
            const float *o = b + 5 * j;
            if (dead[j]) continue;
            float w = (o[2] < x1 ? o[2] : x1) - (o[0] > x0 ? o[0] : x0) + edge;
            float h = (o[3] < y1 ? o[3] : y1) - (o[1] > y0 ? o[1] : y0) + edge;
            float inter = (w > 0.0f ? w : 0.0f) * (h > 0.0f ? h : 0.0f);
            float den = use_min ? (area[i] < area[j] ? area[i] : area[j]) : area[i] + area[j] - inter;
            if (inter / den > threshold) {
                dead[j] = 1;
                if (owner) owner[j] = (int64_t)i;
            }
        }
    }
    return kept;
}

#endif
