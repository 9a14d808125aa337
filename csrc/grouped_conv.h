// Grouped conv with a few channels per group (RegNet's 3×3 layers: 8 or 16 per group; ResNeXt's
// 4) on NHWC float32, vectorised over each group's output channels. The GEMM kernel runs such a
// layer group by group, each a GEMM of 4 or 8 useful columns padded to 16 and with its own window
// setup.
#pragma once
#include <cstdint>

#include "fused_conv.h"

namespace basisrt {

// The widest group this kernel takes (output channels). Against the GEMM path (new ÷ old time,
// 2 threads, AVX-512): width 8 0.81-1.00, 16 0.93-0.96, 32 0.99-1.11, 64 0.86-0.99.
constexpr int64_t kGroupedMaxWidth = 16;

// Whether fused_conv_nhwc runs this conv here: dense (rank 0), grouped but not depthwise, output
// channels per group a multiple of 4 (4, 8, 12 or 16). B is packed as for any dense conv:
// (groups, K, Cg_pad).
bool grouped_path(int64_t groups, int64_t c_in, int64_t c_out, int64_t rank);

// y = act(conv(x, B) + bias (+ residual)); bias is required (fused_conv_nhwc passes zeros), the
// residual may be null. s.pool must be 1, the pixel strides resolved (non-zero).
void grouped_conv_nhwc(const float* x, const float* B, const float* bias, const float* residual, float* y,
                       const ConvShape& s, Activation act, int num_threads, float alpha = 0.01f);

}  // namespace basisrt
