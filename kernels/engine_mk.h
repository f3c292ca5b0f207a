/* One VNNI convolution microkernel, instantiated by engine_x86.h for several register blockings.
 *
 * Define before including: MK_NAME, MK_NB (16-channel output blocks, 1..4), MK_R (pixels) and
 * MK_GAP (0: requantize to uint8 and store; 1: ReLU and add into the float sums of a global
 * average pool). The accumulators are fixed-size arrays so that GCC keeps them in registers; the
 * vpdpbusd goes through inline asm because GCC 12 copies and spills the accumulator of the
 * intrinsic on every iteration (measured: half the throughput).
 *
 * acc[r][j] (16 int32 lanes) += sum over taps t and input channels k of
 *     x[r * ldx + taps[t] + k] (uint8) * w[t][k / 4][j * 16 + lane][k % 4] (int8)
 */
SFPN_VNNI static void MK_NAME(const uint8_t *x, ptrdiff_t ldx, const ptrdiff_t *taps, int ntaps, int K,
                              const int8_t *w, const float *scale, const float *bias, uint8_t *y,
                              ptrdiff_t ldy, float *sums) {
    __m512i acc[MK_R][MK_NB];
    SFPN_UNROLL for (int r = 0; r < MK_R; r++)
        SFPN_UNROLL for (int j = 0; j < MK_NB; j++) acc[r][j] = _mm512_setzero_si512();
    for (int t = 0; t < ntaps; t++) {
        const uint8_t *xt = x + taps[t];
        for (int k = 0; k < K; k += 4, w += MK_NB * 64) {
            __m512i wv[MK_NB];
            SFPN_UNROLL for (int j = 0; j < MK_NB; j++) wv[j] = _mm512_loadu_si512((const void *)(w + j * 64));
            SFPN_UNROLL for (int r = 0; r < MK_R; r++) {
                int32_t word;
                memcpy(&word, xt + r * ldx + k, 4);
                __m512i xb = _mm512_set1_epi32(word);
                SFPN_UNROLL for (int j = 0; j < MK_NB; j++) SFPN_DPBUSD(acc[r][j], xb, wv[j]);
            }
        }
    }
#if MK_GAP
    SFPN_UNROLL for (int j = 0; j < MK_NB; j++) {
        __m512 m = _mm512_loadu_ps(scale + 16 * j), b = _mm512_loadu_ps(bias + 16 * j);
        __m512 s = _mm512_loadu_ps(sums + 16 * j);
        SFPN_UNROLL for (int r = 0; r < MK_R; r++)
            s = _mm512_add_ps(s, _mm512_max_ps(_mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j]), m, b),
                                               _mm512_setzero_ps()));
        _mm512_storeu_ps(sums + 16 * j, s);
    }
    (void)y; (void)ldy;
#elif MK_NB == 4
    /* 64 channels of a pixel: saturating packs (int32 -> uint16 -> uint8) interleave the four
     * blocks per 128-bit lane; one dword permutation restores the channel order. */
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    SFPN_UNROLL for (int r = 0; r < MK_R; r++) {
        __m512i q[4];
        SFPN_UNROLL for (int j = 0; j < 4; j++) {
            __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j]), _mm512_loadu_ps(scale + 16 * j),
                                       _mm512_loadu_ps(bias + 16 * j));
            q[j] = _mm512_cvtps_epi32(_mm512_min_ps(v, _mm512_set1_ps(255.0f)));
        }
        __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(q[0], q[1]), _mm512_packus_epi32(q[2], q[3]));
        _mm512_storeu_si512((void *)(y + r * ldy), _mm512_permutexvar_epi32(order, bytes));
    }
    (void)sums;
#else
    SFPN_UNROLL for (int j = 0; j < MK_NB; j++) {
        __m512 m = _mm512_loadu_ps(scale + 16 * j), b = _mm512_loadu_ps(bias + 16 * j);
        SFPN_UNROLL for (int r = 0; r < MK_R; r++) sfpn_requant_store16(y + r * ldy + 16 * j, acc[r][j], m, b);
    }
    (void)sums;
#endif
}

#undef MK_NAME
#undef MK_NB
#undef MK_R
#undef MK_GAP
