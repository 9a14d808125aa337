// The basis conv of a 3×3 pair by Winograd's F(2×2, 3×3): each 2×2 block of output pixels
// (a tile) from its 4×4 input window in 16 products per channel and rank instead of 36, so the
// pair's first GEMM takes 4/9 of its multiply-adds. Per block of tiles, on one thread:
//   V[ξ] = (Bᵀ d B)[ξ]            the tiles' input windows, transformed (ξ: 16 points)
//   M[ξ] = V[ξ] · U[ξ]            16 GEMMs over the input channels, U = G g Gᵀ prepacked
//   T    = Aᵀ M A                 the rank-r basis output of the tiles' pixels, in pixel order
//   y    = T · A_scale + bias (+ residual) (→ activation)    the pair's 1×1 conv, as fused_conv
// The transforms are exact in real arithmetic; in float32 they add rounding of the size of the
// direct conv's own (tests/test_winograd.py holds both to a float64 reference).
#pragma once
#include <cstdint>

#include "fused_conv.h"

namespace basisrt {

// Whether a pair (rank > 0) or dense conv (rank 0) of this geometry can run here, and so whether
// its Winograd weights are worth packing: 3×3, stride 1, dilation 1, one group, input channels in
// whole vectors, a pair's rank 10 or more, and an AVX-512 CPU. A dense conv is the same with its
// output channels as the first GEMM's columns and no second GEMM. Whether it pays at a given map and batch is measured when a plan compiles
// (basisrt/compiler/autotune.py, faster_direct): at batch 1, small maps run faster on the direct
// path, which reads 9/16 of the weights.
bool winograd_path(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t groups,
                   int64_t c_in, int64_t rank);
// The shape of each of U's 16 matrices: (C_in, n) where n (the rank, 16 for a rank under 16 with
// zero columns past it, or for a dense conv C_out rounded up to kColBlock) is a multiple of
// kColBlock, else (rank, C_in).
struct WinogradLayout {
    int64_t rows, cols;
};
WinogradLayout winograd_layout(int64_t c_in, int64_t rank, int64_t c_out);
// Floats of the Winograd weights U: 16 · C_in · n.
int64_t winograd_floats(int64_t c_in, int64_t rank, int64_t c_out);
// U from B as packed_layout gives it (a pair: rank × 9·C_in, the channel-dot layout; dense:
// 9·C_in × n).
void winograd_weights(const float* B, int64_t c_in, int64_t rank, int64_t c_out, float* U);
// The conv as fused_conv_nhwc runs it (same arguments; bias not null; no fused pool: fused_conv_nhwc
// pools after it), U from winograd_weights.
void winograd_pair_nhwc(const float* x, const float* U, const float* A, const float* bias, const float* residual,
                        float* y, const ConvShape& s, int64_t rank, Activation act, int num_threads, float alpha);

}  // namespace basisrt
