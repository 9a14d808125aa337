// One core's peak multiply-accumulate rate for fp32 FMA (VFMADD: 16 MACs) and bf16 dot products
// (VDPBF16PS: 32 MACs), 16 independent accumulators, register operands only. It says whether the
// AVX512-BF16 vector path of csrc/amx_conv.cpp (taken where there is no AMX) can beat fp32 on a CPU.
// Where there is AMX, also TDPBF16PS (16 × 16 × 32 = 8192 MACs) on four independent accumulator
// tiles with operands already in tiles: the ceiling of any bf16 GEMM on the core.
//
//     g++ -O3 bench/isa_peaks.cpp -o /tmp/isa_peaks && /tmp/isa_peaks
#include <immintrin.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
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

// Tiles 0-7 as 16 rows × 64 bytes (LDTILECFG's 64-byte operand: palette 1).
struct TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};
static const TileConfig kTiles = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

static bool amx_usable() {
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    if (!(d >> 22 & 1) || !(d >> 24 & 1)) return false;  // AMX-BF16, AMX-TILE
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
}

__attribute__((target("amx-tile,amx-bf16"))) static double amx_gmacs(long iters) {
    alignas(64) static uint16_t ones[16 * 32];
    for (uint16_t& v : ones) v = 0x3f80;  // bf16 1.0
    _tile_loadconfig(&kTiles);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, ones, 64);
    _tile_loadd(5, ones, 64);
    _tile_loadd(6, ones, 64);
    _tile_loadd(7, ones, 64);
    const auto t0 = std::chrono::steady_clock::now();
    for (long k = 0; k < iters; ++k) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    const double s = seconds_since(t0);
    alignas(64) static volatile float out[16 * 16];  // stored where it must be assumed read: the work stays
    _tile_stored(0, const_cast<float*>(out), 64);
    _tile_release();
    return iters * 4.0 * 8192 / s / 1e9;
}

int main() {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return std::puts("no AVX-512 on this CPU"), 1;
    const bool bf16 = __builtin_cpu_supports("avx512bf16"), amx = bf16 && amx_usable();
    for (int round = 0; round < 3; ++round) {
        const double f = fma_gmacs(20000000);
        if (!bf16) {
            std::printf("fp32 FMA %.0f GMAC/s; no AVX512-BF16\n", f);
            continue;
        }
        const double b = bf16_gmacs(20000000);
        std::printf("fp32 FMA %.0f GMAC/s, bf16 VDPBF16PS %.0f GMAC/s (%.2f x fp32)", f, b, b / f);
        if (amx) {
            const double t = amx_gmacs(2000000);
            std::printf(", AMX TDPBF16PS %.0f GMAC/s (%.1f x fp32)", t, t / f);
        }
        std::printf("\n");
    }
}
