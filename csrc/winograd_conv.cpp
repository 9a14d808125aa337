#include "winograd_conv.h"

#include "activation.h"
#include "aligned_buffer.h"
#include "gemm.h"
#include "simd.h"
#include "thread_pool.h"
#include "winograd_tiles.h"

#include <algorithm>

namespace basisrt {
namespace {

using namespace winograd;

// Floats of V per block (256 KB): the block's transformed windows stay in L2 through its 16 GEMMs.
constexpr int64_t kBlockFloats = 64 * 1024;
// Ranks below which the direct path runs. Ranks under 16 take one padded vector of columns (zero
// columns of U), so a rank of r does 16/r of its MACs: at 6 the 16 GEMMs do more than the direct
// path (64 channels at 32×32, batch 32: 0.88x its speed), at 13 about half (128 channels at 16×16:
// 1.25x; 64 channels: 1.0x; on the channel-dot kernel, unpadded, 0.93-1.06x).
constexpr int64_t kMinRank = 10;

// The first GEMM's columns: a pair's ranks (at least one vector), or a dense conv's output
// channels padded to whole vectors (as its B is).
inline int64_t columns(int64_t rank, int64_t c_out) { return rank ? std::max(rank, NR) : round_up(c_out, NR); }
// U[ξ] as (C × columns) for the rank-vectorised GEMM where they fill whole vectors, else as
// (rank × C) for the channel-vectorised one, which pads nothing (ranks 26 and 51: 1.22-1.53x the
// direct path against 1.16-1.36x padded to 32 and 64; ranks 32-128: 1.37-1.75x against 1.17-1.65x).
inline bool rank_vectorised(int64_t cols) { return cols % NR == 0; }

// V[t][ξ][c] = (Bᵀ d B)[ξ] for the tiles of tile rows [tr0, tr1) (a tile row: image n, tiles ty,
// flattened), d the tile's 4×4 window of x (zeros outside the image), these tiles from t0, rows of
// tile_stride(C). Each tile's 16 points are one contiguous run. Stored point by point, as
// [ξ][t][c], the 16 store streams and their pointers, spilled to the stack, took 28 % of a
// 64-channel rank-16 pair at 32×32; tile by tile the pair runs 1.15-1.36x as fast (128 channels
// 1.10-1.15x, 256-512 channels 1.0-1.07x; same bits).
BASISRT_AVX512 void input_transform(const float* x, const ConvShape& s, int64_t tr0, int64_t tr1, float* V,
                                    int64_t t0) {
    const int64_t ldv = tile_stride(s.C_in), TW = tiles_of(s.Wo);
    for (int64_t tr = tr0, t = t0; tr < tr1; ++tr)
        for (int64_t tx = 0; tx < TW; ++tx, ++t) {
            int64_t off[4][4];
            window_offsets(s, s.ldx, tr, tx, off);
            const float* src[4][4];
            for (int a = 0; a < 4; ++a)
                for (int b = 0; b < 4; ++b) src[a][b] = off[a][b] >= 0 ? x + off[a][b] : nullptr;
            for (int64_t c = 0; c < s.C_in; c += NR) {
                vec d[4][4], bd[4][4];
                for (int a = 0; a < 4; ++a)
                    for (int b = 0; b < 4; ++b)
                        d[a][b] = src[a][b] ? *reinterpret_cast<const vec*>(src[a][b] + c) : vec{};
                input_cols(d, bd);
                for (int a = 0; a < 4; ++a) {
                    vec v[4];
                    input_row(bd[a], v);
                    for (int b = 0; b < 4; ++b) *reinterpret_cast<vec*>(V + t * ldv + (a * 4 + b) * s.C_in + c) = v[b];
                }
            }
        }
}

}  // namespace

bool winograd_path(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t groups,
                   int64_t c_in, int64_t rank) {
    return use_avx512() && (rank == 0 || rank >= kMinRank) && kh == 3 && kw == 3 && sh == 1 && sw == 1 &&
           dh == 1 && dw == 1 && groups == 1 && c_in % NR == 0;
}

WinogradLayout winograd_layout(int64_t c_in, int64_t rank, int64_t c_out) {
    const int64_t cols = columns(rank, c_out);
    return rank_vectorised(cols) ? WinogradLayout{c_in, cols} : WinogradLayout{cols, c_in};
}

int64_t winograd_floats(int64_t c_in, int64_t rank, int64_t c_out) { return kPoints * c_in * columns(rank, c_out); }

void winograd_weights(const float* B, int64_t c_in, int64_t rank, int64_t c_out, float* U) {
    const int64_t K = 9 * c_in, cols = columns(rank, c_out);
    const bool by_rank = rank_vectorised(cols);
    for (int64_t r = 0; r < cols; ++r)
        for (int64_t c = 0; c < c_in; ++c) {
            double g[3][3], gg[4][3];  // G g Gᵀ in double: one rounding per element of U
            for (int ky = 0; ky < 3; ++ky)
                for (int kx = 0; kx < 3; ++kx) {  // B: (rank × K) for a pair, (K × columns) dense
                    const int64_t k = (ky * 3 + kx) * c_in + c;
                    g[ky][kx] = !rank ? B[k * cols + r] : r < rank ? B[r * K + k] : 0.0;  // padded ranks: 0
                }
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
                    U[by_rank ? (p * c_in + c) * cols + r : (p * cols + r) * c_in + c] = static_cast<float>(u[b]);
                }
            }
        }
}

void winograd_pair_nhwc(const float* x, const float* U, const float* A, const float* bias, const float* residual,
                        float* y, const ConvShape& s, int64_t rank, Activation act, int num_threads, float alpha) {
    // cols: the first GEMM's (a pair's rank, a dense conv's padded outputs), r_pad: as stored in M, T
    const int64_t C = s.C_in, cols = columns(rank, s.C_out), r_pad = round_up(cols, NR), cg_pad = round_up(s.C_out, NR);
    const int64_t TW = tiles_of(s.Wo), TH = tiles_of(s.Ho), tile_rows = s.N * TH, nt_all = tile_rows * TW;
    const int64_t ldv = tile_stride(C), ldm = tile_stride(r_pad);  // V's and M's rows: a tile each
    // M[ξ] = V[ξ] · U[ξ] for `count` tiles from t0
    auto point_gemm = [&](const float* V, float* M, int64_t t0, int64_t count, int64_t p) {
        const float *v = V + t0 * ldv + p * C, *u = U + p * C * cols;
        float* m = M + t0 * ldm + p * r_pad;
        if (rank_vectorised(cols)) gemm_plain(v, ldv, u, cols, count, cols, C, m, ldm);
        else gemm_dot(v, ldv, count, C, u, cols, m, ldm);
    };
    // The output transform, then the pair's 1×1 GEMM and epilogue, for tile rows [tr0, tr1), whose
    // tiles are in M from t0
    auto finish = [&](const float* M, int64_t t0, int64_t tr0, int64_t tr1) {
        thread_local Aligned T_buf;  // per-thread scratch, grown to the largest layer seen
        float* T = T_buf.get(4 * (tr1 - tr0) * TW * r_pad);
        output_transform(M, s, tr0, tr1, t0, r_pad, T);
        const int64_t first = tile_rows_first_pixel(s, tr0), m = tile_rows_pixels(s, tr0, tr1);
        const Epilogue out{y + first * s.ldy, s.ldy, bias, residual ? residual + first * s.ldr : nullptr, s.ldr,
                           s.C_out, act};
        if (rank) gemm_epilogue(T, r_pad, A, cg_pad, m, cg_pad, rank, out);  // the pair's 1×1 conv
        else store_epilogue(T, r_pad, m, cg_pad, out);  // a dense conv: T is its output
        activate_rows(y + first * s.ldy, m, s.C_out, s.ldy, act, alpha);
    };
    const int64_t per_thread = (tile_rows + num_threads - 1) / num_threads;
    if (split_points(nt_all, cols, num_threads)) {  // every tile's windows at once
        thread_local Aligned V_all, M_all;  // the caller's; the helpers write them too
        float *V = V_all.get(nt_all * ldv), *M = M_all.get(nt_all * ldm);
        parallel_for(tile_rows, num_threads, [&](int64_t tr) { input_transform(x, s, tr, tr + 1, V, tr * TW); });
        parallel_for(kPoints, num_threads, [&](int64_t p) { point_gemm(V, M, 0, nt_all, p); });
        parallel_for(num_threads, num_threads, [&](int64_t i) {
            const int64_t tr0 = i * per_thread, tr1 = std::min(tile_rows, tr0 + per_thread);
            if (tr0 < tr1) finish(M, tr0 * TW, tr0, tr1);
        });
        return;
    }
    // Blocks of whole tile rows, so that a block's pixels are consecutive rows of y; V within
    // kBlockFloats where a tile row allows, and at least a block per thread.
    const int64_t per = std::min(std::max<int64_t>(1, kBlockFloats / (kPoints * C * TW)), per_thread);
    parallel_for((tile_rows + per - 1) / per, num_threads, [&](int64_t block) {
        // Per-thread scratch, grown to the largest layer seen; 64-byte aligned, as a vector's malloc
        // (16 bytes past a page) is not: every vector load would then span two cache lines.
        thread_local Aligned V_buf, M_buf;
        const int64_t tr0 = block * per, tr1 = std::min(tile_rows, tr0 + per), nt = (tr1 - tr0) * TW;
        float *V = V_buf.get(nt * ldv), *M = M_buf.get(nt * ldm);
        input_transform(x, s, tr0, tr1, V, 0);
        for (int64_t p = 0; p < kPoints; ++p) point_gemm(V, M, 0, nt, p);
        finish(M, 0, tr0, tr1);
    });
}

}  // namespace basisrt
