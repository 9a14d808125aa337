// Winograd F(2×2, 3×3)'s tile geometry and transforms, shared by the fp32 conv (winograd_conv.cpp)
// and the bf16 one (amx_conv.cpp): a tile is a 2×2 block of output pixels, read from its 4×4 input
// window; the windows of tile row tr (image tr / TH, tiles ty = tr % TH) are transformed per vector
// of channels, and the GEMMs' output M turned back into pixels.
#pragma once
#include <algorithm>
#include <cstdint>

#include "fused_conv.h"
#include "simd.h"

namespace basisrt {
namespace winograd {

constexpr int64_t kPoints = 16;  // ξ: the 4×4 transformed window
constexpr int64_t NR = kColBlock;

typedef float vec __attribute__((vector_size(NR * sizeof(float)), aligned(4)));

inline int64_t tiles_of(int64_t size) { return (size + 1) / 2; }

// A tile's row of V or M: its 16 points' rows, then `pad` elements (a vector), so that point ξ's
// GEMM, reading rows this far apart, does not find them all in one L1 set (16·C floats is a
// multiple of 4 KB from 64 channels on).
inline int64_t tile_stride(int64_t width, int64_t pad = NR) { return kPoints * width + pad; }

// Bᵀ d B for one vector of channels of a tile's 4×4 window d, in two steps so that the caller
// stores each row of 4 points as it comes (all 16 at once spilled registers: 3-5 % slower):
// bd = Bᵀ d, then row a of the result from bd[a].
inline __attribute__((always_inline)) void input_cols(const vec (&d)[4][4], vec (&bd)[4][4]) {
    for (int b = 0; b < 4; ++b) {
        bd[0][b] = d[0][b] - d[2][b];
        bd[1][b] = d[1][b] + d[2][b];
        bd[2][b] = d[2][b] - d[1][b];
        bd[3][b] = d[1][b] - d[3][b];
    }
}
inline __attribute__((always_inline)) void input_row(const vec (&bd)[4], vec (&v)[4]) {
    v[0] = bd[0] - bd[2];
    v[1] = bd[1] + bd[2];
    v[2] = bd[2] - bd[1];
    v[3] = bd[1] - bd[3];
}

// The window of tile (tr, tx): per tap, its pixel's element offset in x (pixel stride ldx), or -1
// outside the image (zeros).
inline void window_offsets(const ConvShape& s, int64_t ldx, int64_t tr, int64_t tx, int64_t (&off)[4][4]) {
    const int64_t TH = tiles_of(s.Ho), n = tr / TH, iy0 = 2 * (tr % TH) - s.ph, ix0 = 2 * tx - s.pw;
    for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
            const int64_t iy = iy0 + a, ix = ix0 + b;
            off[a][b] = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W ? ((n * s.H + iy) * s.W + ix) * ldx : -1;
        }
}

// T[p][r] = (Aᵀ M A) for the pixels of tile rows [tr0, tr1), p counted from their first output row
// (tiles past the map's last row or column drop their second one); M as [t][ξ][r_pad], rows of
// tile_stride(r_pad), these tiles from t0.
BASISRT_AVX512 inline void output_transform(const float* M, const ConvShape& s, int64_t tr0, int64_t tr1, int64_t t0,
                                            int64_t r_pad, float* T) {
    const int64_t ldm = tile_stride(r_pad);
    const int64_t TW = tiles_of(s.Wo), TH = tiles_of(s.Ho);
    for (int64_t tr = tr0, t = t0, row0 = 0; tr < tr1; ++tr) {
        const int64_t rows = std::min<int64_t>(2, s.Ho - 2 * (tr % TH));
        for (int64_t tx = 0; tx < TW; ++tx, ++t) {
            const int64_t cols = std::min<int64_t>(2, s.Wo - 2 * tx);
            for (int64_t r = 0; r < r_pad; r += NR) {
                vec m[4][4], am[2][4];
                for (int a = 0; a < 4; ++a)
                    for (int b = 0; b < 4; ++b)
                        m[a][b] = *reinterpret_cast<const vec*>(M + t * ldm + (a * 4 + b) * r_pad + r);
                for (int b = 0; b < 4; ++b) {  // Aᵀ M
                    am[0][b] = m[0][b] + m[1][b] + m[2][b];
                    am[1][b] = m[1][b] - m[2][b] - m[3][b];
                }
                for (int a = 0; a < rows; ++a) {  // (Aᵀ M) A
                    const vec out[2] = {am[a][0] + am[a][1] + am[a][2], am[a][1] - am[a][2] - am[a][3]};
                    for (int b = 0; b < cols; ++b)
                        *reinterpret_cast<vec*>(T + (row0 + a * s.Wo + 2 * tx + b) * r_pad + r) = out[b];
                }
            }
        }
        row0 += rows * s.Wo;
    }
}

// Whether a call's 16 GEMMs split across the threads (each reads half of U, once) rather than its
// tiles (each thread reads all of U): where U's columns outnumber the tiles 8 times over (batch 1 on
// 2×2 to 4×4 maps at large ranks). Batch 1, 2 threads, fp32, split ÷ by-tile time (Zen 4, paired):
// 4×4 maps at 512 channels, rank 128 (4 tiles) 0.81, 2×2 (1 tile) 0.72; 8×8 at rank 128 (16 tiles)
// 1.03; 8×8 at 256 channels, rank 64, 1.14; 7×7 at 512, rank 51, 1.20; 14×14 at 256, rank 26, 1.24;
// 32×32 at 64, rank 16, 1.43 (all of V at once outgrows L2 there). The rule before it (split up to
// 1 MB of V) had ResNet-18 at rank 25 %, batch 1 run 1.19× slower in fp32; in bf16 (the same rule)
// its rank-10 % 8×8 conv took 49 µs against 25 µs by tiles.
inline bool split_points(int64_t tiles, int64_t cols, int num_threads) { return num_threads > 1 && tiles * 8 < cols; }

// Pixels of y that tile rows [tr0, tr1) cover, and the first of them.
inline int64_t tile_rows_pixels(const ConvShape& s, int64_t tr0, int64_t tr1) {
    const int64_t TH = tiles_of(s.Ho);
    int64_t m = 0;
    for (int64_t tr = tr0; tr < tr1; ++tr) m += std::min<int64_t>(2, s.Ho - 2 * (tr % TH)) * s.Wo;
    return m;
}
inline int64_t tile_rows_first_pixel(const ConvShape& s, int64_t tr0) {
    const int64_t TH = tiles_of(s.Ho);
    return ((tr0 / TH) * s.Ho + 2 * (tr0 % TH)) * s.Wo;
}

}  // namespace winograd
}  // namespace basisrt
