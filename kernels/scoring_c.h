/* Scoring hot loops (see scoring.pyx for the checked Python entry points). */
#ifndef SFPN_SCORING_C_H
#define SFPN_SCORING_C_H
#include <math.h>
#include <stddef.h>
#include "simd.h"

/* Divide each row of x [n, d] by its L2 norm (rows of zeros stay zero). */
SFPN_HOT static void sfpn_l2_normalize_rows(const float *x, float *out, size_t n, size_t d) {
    for (size_t i = 0; i < n; i++) {
        const float *row = x + i * d;
        float *dst = out + i * d;
        float ss = 0.0f;
        for (size_t j = 0; j < d; j++) ss += row[j] * row[j];
        float inv = ss > 0.0f ? 1.0f / sqrtf(ss) : 0.0f;
        for (size_t j = 0; j < d; j++) dst[j] = row[j] * inv;
    }
}

#endif
