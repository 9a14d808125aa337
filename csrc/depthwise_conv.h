// Depthwise conv (groups == C_in == C_out, as MobileNet's 3×3 layers) on NHWC float32, vectorised
// over channels. The GEMM kernel would run these as C one-column GEMMs, padding each column to a
// whole vector: MobileNetV2's plan of only our kernels ran 2-5x slower than with oneDNN's.
#pragma once
#include <cstdint>

#include "fused_conv.h"

namespace basisrt {

// Whether fused_conv_nhwc runs this conv as a depthwise conv, with B packed as (kh·kw × C).
bool depthwise_path(int64_t groups, int64_t c_in, int64_t c_out, int64_t rank);

// y = act(conv(x, w) + bias (+ residual)), w packed as (kh·kw × C); bias and residual may be null.
// s.pool must be 1; pixel strides as in ConvShape (already resolved, non-zero).
void depthwise_conv_nhwc(const float* x, const float* w, const float* bias, const float* residual, float* y,
                         const ConvShape& s, Activation act, int num_threads, float alpha = 0.01f);

}  // namespace basisrt
