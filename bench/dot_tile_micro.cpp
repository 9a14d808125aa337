// The fp32 dot path's micro-kernel (dot_tile<4, 6> of csrc/fused_conv.cpp: 4 pixels × 6 ranks, 24
// zmm accumulators, per 16 channels 4 x loads + 6 B loads + 24 FMAs) on its own, outside the conv:
// the same loop over taps and channels, its data touched again and again (B and the windows of a
// 34-pixel padded row band), the reduction reduced to vector adds. How close the loop itself comes
// to the FMA peak of bench/isa_peaks.cpp, with nothing around it.
//
//     g++ -O3 -std=c++17 bench/dot_tile_micro.cpp -o /tmp/dot_tile_micro && /tmp/dot_tile_micro
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

constexpr int NR = 16;
typedef float vec __attribute__((vector_size(NR * sizeof(float)), aligned(4)));

template <int M, int R>
__attribute__((noinline, target("avx512f,fma"))) void dot_tile(const float* const* corner, const int64_t* tap_off,
                                                               int64_t taps, int64_t cg, const float* bt, int64_t K,
                                                               float* out) {
    vec acc[M][R];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < R; ++j) acc[i][j] = vec{};
    for (int64_t tap = 0; tap < taps; ++tap) {
        const float* xr[M];
        for (int i = 0; i < M; ++i) xr[i] = corner[i] + tap_off[tap];
        const float* b = bt + tap * cg;
        for (int64_t c = 0; c < cg; c += NR) {
            vec xv[M];
            for (int i = 0; i < M; ++i) xv[i] = *reinterpret_cast<const vec*>(xr[i] + c);
            for (int j = 0; j < R; ++j) {
                const vec bv = *reinterpret_cast<const vec*>(b + j * K + c);
                for (int i = 0; i < M; ++i) acc[i][j] += xv[i] * bv;
            }
        }
    }
    vec total = vec{};
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < R; ++j) total += acc[i][j];
    *reinterpret_cast<vec*>(out) += total;
}

int main() {
    for (int64_t cg : {16, 32, 64, 128, 256, 512}) {
        const int64_t taps = 9, K = taps * cg, W = 34;  // a 3x3 kernel over a padded row of 34 pixels
        std::vector<float> x(3 * W * cg + NR, 0.5f), B(6 * K, 0.25f), out(NR, 0.f);
        std::vector<int64_t> tap_off(taps);
        for (int ky = 0; ky < 3; ++ky)
            for (int kx = 0; kx < 3; ++kx) tap_off[ky * 3 + kx] = (ky * W + kx) * cg;
        const long reps = 100000 * 64 / cg;
        const auto t0 = std::chrono::steady_clock::now();
        for (long r = 0; r < reps; ++r) {
            const float* p = x.data() + r % (W - 2 - 3) * cg;  // 4 adjacent pixels, moving along the row
            const float* corner[4] = {p, p + cg, p + 2 * cg, p + 3 * cg};
            dot_tile<4, 6>(corner, tap_off.data(), taps, cg, B.data(), K, out.data());
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("channels %4ld: %5.1f GMAC/s (B %3ld KB; check %g)\n", static_cast<long>(cg),
                    double(reps) * 4 * 6 * K / s / 1e9, static_cast<long>(6 * K * 4 / 1024), out[0]);
    }
}
