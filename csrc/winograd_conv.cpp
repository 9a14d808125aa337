#include "winograd_conv.h"

#include "activation.h"
#include "gemm.h"
#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <vector>

namespace basisrt {
namespace {

constexpr int64_t kPoints = 16;  // ξ: the 4×4 transformed window
constexpr int64_t NR = kColBlock;
// Floats of V per block (256 KB): the block's transformed windows stay in L2 through its 16 GEMMs.
constexpr int64_t kBlockFloats = 64 * 1024;
// Tiles per image below which the direct path runs instead. Each U[ξ] panel is read once per
// block, so a block of a few tiles streams 16/9 of the direct path's weights for as few pixels
// (512 channels at 4×4, rank 51, batch 1, 2 threads: 105 µs against 65 direct). Per image, not per
// call: an image's result must not depend on the batch it came in or on the thread count.
constexpr int64_t kMinTiles = 16;

// Ranks below which the direct path runs: the 16 GEMMs' few columns then cost more per
// multiply-add than the direct path's (64 channels at 32×32, rank 6: 0.65-0.74x its speed;
// 128 channels, rank 13: 0.93-1.06x).
constexpr int64_t kMinRank = 16;

// U[ξ] as (C × rank) for the rank-vectorised GEMM where the rank fills whole vectors, else as
// (rank × C) for the channel-vectorised one, which pads nothing (ranks 26 and 51: 1.22-1.53x the
// direct path against 1.16-1.36x padded to 32 and 64; ranks 32-128: 1.37-1.75x against 1.17-1.65x).
inline bool rank_vectorised(int64_t rank) { return rank % NR == 0; }

typedef float vec __attribute__((vector_size(NR * sizeof(float)), aligned(4)));

inline int64_t tiles_of(int64_t size) { return (size + 1) / 2; }

// V[ξ][t][c] = (Bᵀ d B)[ξ] for the tiles of tile rows [tr0, tr1) (a tile row: image n, tiles ty,
// flattened), d the tile's 4×4 window of x (zeros outside the image).
BASISRT_AVX512 void input_transform(const float* x, const ConvShape& s, int64_t tr0, int64_t tr1, float* V,
                                    int64_t nt) {
    const int64_t TW = tiles_of(s.Wo), TH = tiles_of(s.Ho);
    for (int64_t tr = tr0, t = 0; tr < tr1; ++tr)
        for (int64_t tx = 0; tx < TW; ++tx, ++t) {
            const int64_t n = tr / TH, iy0 = 2 * (tr % TH) - s.ph, ix0 = 2 * tx - s.pw;
            const float* src[4][4];
            for (int a = 0; a < 4; ++a)
                for (int b = 0; b < 4; ++b) {
                    const int64_t iy = iy0 + a, ix = ix0 + b;
                    const bool inside = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W;
                    src[a][b] = inside ? x + ((n * s.H + iy) * s.W + ix) * s.ldx : nullptr;
                }
            for (int64_t c = 0; c < s.C_in; c += NR) {
                vec d[4][4], bd[4][4];
                for (int a = 0; a < 4; ++a)
                    for (int b = 0; b < 4; ++b) d[a][b] = src[a][b] ? *reinterpret_cast<const vec*>(src[a][b] + c) : vec{};
                for (int b = 0; b < 4; ++b) {  // Bᵀ d
                    bd[0][b] = d[0][b] - d[2][b];
                    bd[1][b] = d[1][b] + d[2][b];
                    bd[2][b] = d[2][b] - d[1][b];
                    bd[3][b] = d[1][b] - d[3][b];
                }
                for (int a = 0; a < 4; ++a) {  // (Bᵀ d) B
                    const vec v[4] = {bd[a][0] - bd[a][2], bd[a][1] + bd[a][2], bd[a][2] - bd[a][1], bd[a][1] - bd[a][3]};
                    for (int b = 0; b < 4; ++b) *reinterpret_cast<vec*>(V + ((a * 4 + b) * nt + t) * s.C_in + c) = v[b];
                }
            }
        }
}

// T[p][r] = (Aᵀ M A) for the pixels of tile rows [tr0, tr1), p counted from the block's first
// output row (tiles past the map's last row or column drop their second one).
BASISRT_AVX512 void output_transform(const float* M, const ConvShape& s, int64_t tr0, int64_t tr1, int64_t nt,
                                     int64_t r_pad, float* T) {
    const int64_t TW = tiles_of(s.Wo), TH = tiles_of(s.Ho);
    for (int64_t tr = tr0, t = 0, row0 = 0; tr < tr1; ++tr) {
        const int64_t rows = std::min<int64_t>(2, s.Ho - 2 * (tr % TH));
        for (int64_t tx = 0; tx < TW; ++tx, ++t) {
            const int64_t cols = std::min<int64_t>(2, s.Wo - 2 * tx);
            for (int64_t r = 0; r < r_pad; r += NR) {
                vec m[4][4], am[2][4];
                for (int a = 0; a < 4; ++a)
                    for (int b = 0; b < 4; ++b)
                        m[a][b] = *reinterpret_cast<const vec*>(M + ((a * 4 + b) * nt + t) * r_pad + r);
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

}  // namespace

bool winograd_path(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t groups,
                   int64_t c_in, int64_t rank) {
    return use_avx512() && rank > 0 && kh == 3 && kw == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1 &&
           groups == 1 && c_in % NR == 0 && rank >= kMinRank;
}

int64_t winograd_floats(int64_t c_in, int64_t rank) { return kPoints * c_in * rank; }

void winograd_weights(const float* B, int64_t c_in, int64_t rank, float* U) {
    const int64_t K = 9 * c_in;
    const bool by_rank = rank_vectorised(rank);
    for (int64_t r = 0; r < rank; ++r)
        for (int64_t c = 0; c < c_in; ++c) {
            double g[3][3], gg[4][3];  // G g Gᵀ in double: one rounding per element of U
            for (int ky = 0; ky < 3; ++ky)
                for (int kx = 0; kx < 3; ++kx) g[ky][kx] = B[r * K + (ky * 3 + kx) * c_in + c];
            for (int kx = 0; kx < 3; ++kx) {
                gg[0][kx] = g[0][kx];
                gg[1][kx] = 0.5 * (g[0][kx] + g[1][kx] + g[2][kx]);
                gg[2][kx] = 0.5 * (g[0][kx] - g[1][kx] + g[2][kx]);
                gg[3][kx] = g[2][kx];
            }
            for (int a = 0; a < 4; ++a) {
                const double u[4] = {gg[a][0], 0.5 * (gg[a][0] + gg[a][1] + gg[a][2]),
                                     0.5 * (gg[a][0] - gg[a][1] + gg[a][2]), gg[a][2]};
                for (int b = 0; b < 4; ++b) {
                    const int64_t p = a * 4 + b;
                    U[by_rank ? (p * c_in + c) * rank + r : (p * rank + r) * c_in + c] = static_cast<float>(u[b]);
                }
            }
        }
}

bool winograd_runs(const ConvShape& s, int64_t rank) {
    return winograd_path(s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.groups, s.C_in, rank) &&
           tiles_of(s.Ho) * tiles_of(s.Wo) >= kMinTiles;
}

void winograd_pair_nhwc(const float* x, const float* U, const float* A, const float* bias, const float* residual,
                        float* y, const ConvShape& s, int64_t rank, Activation act, int num_threads, float alpha) {
    const int64_t C = s.C_in, r_pad = round_up(rank, NR), cg_pad = round_up(s.C_out, NR);
    const int64_t TW = tiles_of(s.Wo), TH = tiles_of(s.Ho), tile_rows = s.N * TH;
    // Blocks of whole tile rows, so that a block's pixels are consecutive rows of y; V within
    // kBlockFloats where a tile row allows, and at least a block per thread.
    const int64_t fit = std::max<int64_t>(1, kBlockFloats / (kPoints * C * TW));
    const int64_t per = std::min(fit, (tile_rows + num_threads - 1) / num_threads);
    parallel_for((tile_rows + per - 1) / per, num_threads, [&](int64_t block) {
        thread_local std::vector<float> V, M, T;  // per-thread scratch, grown to the largest layer seen
        const int64_t tr0 = block * per, tr1 = std::min(tile_rows, tr0 + per), nt = (tr1 - tr0) * TW;
        V.resize(std::max<size_t>(V.size(), kPoints * nt * C));
        M.resize(std::max<size_t>(M.size(), kPoints * nt * r_pad));
        T.resize(std::max<size_t>(T.size(), 4 * nt * r_pad));
        input_transform(x, s, tr0, tr1, V.data(), nt);
        for (int64_t p = 0; p < kPoints; ++p) {
            const float *v = V.data() + p * nt * C, *u = U + p * C * rank;
            float* m = M.data() + p * nt * r_pad;
            if (rank_vectorised(rank)) gemm_plain(v, C, u, rank, nt, rank, C, m, r_pad);
            else gemm_dot(v, C, nt, C, u, rank, m, r_pad);
        }
        output_transform(M.data(), s, tr0, tr1, nt, r_pad, T.data());
        const int64_t first = ((tr0 / TH) * s.Ho + 2 * (tr0 % TH)) * s.Wo;  // the block's first pixel
        int64_t m = 0;
        for (int64_t tr = tr0; tr < tr1; ++tr) m += std::min<int64_t>(2, s.Ho - 2 * (tr % TH)) * s.Wo;
        gemm_epilogue(T.data(), r_pad, A, cg_pad, m, cg_pad, rank,
                      {y + first * s.ldy, s.ldy, bias, residual ? residual + first * s.ldr : nullptr, s.ldr, s.C_out,
                       act});
        activate_rows(y + first * s.ldy, m, s.C_out, s.ldy, act, alpha);
    });
}

}  // namespace basisrt
