#include "simd.h"

#include <stdlib.h>
#include <string.h>

#include "../../common/common.h"

static SimdLevel cpu_widest(void) {
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return SIMD_LEVEL_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return SIMD_LEVEL_AVX2;
#endif
    return SIMD_LEVEL_BASELINE;
}

static SimdLevel chosen(void) {
    static const char *names[] = {"baseline", "avx2", "avx512"};
    SimdLevel widest = cpu_widest();
    const char *want = getenv("MEDUSA_CPU_SIMD");
    if (!want || !*want) return widest;
    for (int l = SIMD_LEVEL_BASELINE; l <= SIMD_LEVEL_AVX512; l++)
        if (strcmp(want, names[l]) == 0) {
            if (l > (int)widest) fatal("MEDUSA_CPU_SIMD=%s: this CPU runs at most the %s build", want, names[widest]);
            return (SimdLevel)l;
        }
    fatal("MEDUSA_CPU_SIMD=%s: expected baseline, avx2 or avx512", want);
}

SimdLevel simd_level(void) {
    static int level = -1; /* the first call decides; later ones (any thread) read it */
    int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (l < 0) __atomic_store_n(&level, l = (int)chosen(), __ATOMIC_RELAXED);
    return (SimdLevel)l;
}
