/* Load-time CPU dispatch for hot loops.
 *
 * Kernels are compiled with portable flags. On x86-64 Linux with GCC/Clang,
 * SFPN_HOT marks a function for several clones (baseline, x86-64-v3 = AVX2/FMA,
 * x86-64-v4 = AVX-512); the loader picks the best one the CPU supports (ifunc).
 * Elsewhere (ARM, macOS, MSVC) it expands to nothing: one portable build.
 */
#ifndef SFPN_SIMD_H
#define SFPN_SIMD_H

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(SFPN_NO_DISPATCH)
#define SFPN_HOT __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define SFPN_HOT
#endif

/* Explicit AVX-512 VNNI functions (GCC 12's target_clones takes no ISA names), used only after
 * sfpn_cpu_has_vnni() said yes. */
#if defined(__x86_64__) && defined(__GNUC__)
#define SFPN_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static inline int sfpn_cpu_has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}
#else
static inline int sfpn_cpu_has_vnni(void) { return 0; }
#endif

/* Keep float expressions exactly as written (no a*b+c -> FMA contraction), for loops that must
 * match a NumPy reference bit for bit. */
#if defined(__GNUC__) && !defined(__clang__)
#define SFPN_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define SFPN_NO_CONTRACT
#endif

#endif
