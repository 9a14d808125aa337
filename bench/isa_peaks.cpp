// One core's peak multiply-accumulate rate for fp32 FMA (VFMADD: 16 MACs) and bf16 dot products
// (VDPBF16PS: 32 MACs), 16 independent accumulators, register operands only. It says whether the
// AVX512-BF16 vector path of csrc/amx_conv.cpp (taken where there is no AMX) can beat fp32 on a CPU.
//
//     g++ -O3 bench/isa_peaks.cpp -o /tmp/isa_peaks && /tmp/isa_peaks
#include <immintrin.h>

#include <chrono>
#include <cstdio>

static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The accumulators' sum, stored where the compiler must assume it is read: the work stays.
__attribute__((target("avx512f"))) static void keep(__m512 sum) {
    alignas(64) static volatile float out[16];
    _mm512_store_ps(const_cast<float*>(out), sum);
}

__attribute__((target("avx512f"))) static double fma_gmacs(long iters) {
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
    const __m512 x = _mm512_set1_ps(0.5f), y = _mm512_set1_ps(0.25f);
    const auto t0 = std::chrono::steady_clock::now();
    for (long k = 0; k < iters; ++k)
        for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
    const double s = seconds_since(t0);
    __m512 sum = acc[0];
    for (int i = 1; i < 16; ++i) sum = _mm512_add_ps(sum, acc[i]);
    keep(sum);
    return iters * 16.0 * 16 / s / 1e9;
}

__attribute__((target("avx512f,avx512bf16"))) static double bf16_gmacs(long iters) {
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f003f00);  // bf16 pairs (0.5, 0.5)
    const auto t0 = std::chrono::steady_clock::now();
    for (long k = 0; k < iters; ++k)
        for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], x, x);
    const double s = seconds_since(t0);
    __m512 sum = acc[0];
    for (int i = 1; i < 16; ++i) sum = _mm512_add_ps(sum, acc[i]);
    keep(sum);
    return iters * 16.0 * 32 / s / 1e9;
}

int main() {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return std::puts("no AVX-512 on this CPU"), 1;
    const bool bf16 = __builtin_cpu_supports("avx512bf16");
    for (int round = 0; round < 3; ++round) {
        const double f = fma_gmacs(20000000);
        if (!bf16) {
            std::printf("fp32 FMA %.0f GMAC/s; no AVX512-BF16\n", f);
            continue;
        }
        const double b = bf16_gmacs(20000000);
        std::printf("fp32 FMA %.0f GMAC/s, bf16 VDPBF16PS %.0f GMAC/s (%.2f x fp32)\n", f, b, b / f);
    }
}
