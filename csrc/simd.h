// Run-time choice of instruction set. Each kernel with an AVX-512 build has a `_narrow` build
// (AVX2 or portable, picked by target_clones) beside it, and one dispatch on use_avx512().
#pragma once
#include <cstdlib>

namespace basisrt {

// Whether the AVX-512 builds run. BASISRT_NO_AVX512=1 runs the narrow ones on an AVX-512 machine,
// so the tests cover them too. Those builds also use AVX-512VL and FMA (see BASISRT_AVX512): every
// AVX-512 CPU but the Xeon Phi has them.
inline bool use_avx512() {
    static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                               __builtin_cpu_supports("fma") && !std::getenv("BASISRT_NO_AVX512");
    return avx512;
}

// Whether the AVX2 + FMA builds of the GEMM kernels run (target_clones' "avx2" clone has no FMA:
// every multiply-add is then two instructions). BASISRT_NO_FMA=1 runs the target_clones builds
// instead, so the tests cover them too.
inline bool use_avx2_fma() {
    static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                             !std::getenv("BASISRT_NO_FMA");
    return avx2;
}

}  // namespace basisrt

// "avx512f" alone leaves 8-float (ymm) vector code without FMA: GCC then splits each multiply-add
// into vmulps + vaddps (seen in the depthwise kernel and the activations); VL and FMA fuse them.
#define BASISRT_AVX512 __attribute__((target("avx512f,avx512vl,fma")))
#define BASISRT_NARROW __attribute__((target_clones("avx2", "default")))
#define BASISRT_AVX2 __attribute__((target("avx2,fma")))
// bf16 conversions and dot products (VCVTNEPS2BF16, VDPBF16PS): only on paths taken where a bf16
// conv ran, so the CPU has them (amx_conv.h: bf16_path()).
#define BASISRT_AVX512BF16 __attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16,fma")))
