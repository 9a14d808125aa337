// Elementwise ops between NHWC maps that no conv epilogue absorbs, and channel copies:
//  - eltwise_nhwc: y = act(a OP b), OP add or mul, b of a's shape, or one pixel per image broadcast
//    over the map (a squeeze-excitation gate, (N, C, 1, 1) in PyTorch), or one channel per pixel
//    broadcast over the channels (a spatial attention map, (N, 1, H, W): CBAM, PAN);
//  - channel_gather_nhwc: y[..., c] = x[..., index[c]] (a channel shuffle, a channel slice, a
//    concatenation's part that cannot be written in place);
//  - pixel_gather_nhwc: each output pixel a copy of one input pixel of its image (or of a block of
//    its channels: depth-to-space, a transposed conv's phases), or zeros (nearest upsampling, zero
//    padding, cropping).
// Pixel strides (lda, ldb, ldx, ldy >= channels) let any operand be a channel slice of a wider
// buffer, as in the other kernels.
#pragma once
#include <cstdint>

#include "fused_conv.h"

namespace basisrt {

enum class BinaryOp : int { add = 0, mul = 1 };
constexpr int kBinaryOps = 2;

// How eltwise's b covers a: b has a's shape; one pixel per image (read for each of its hw pixels);
// one channel per pixel (read for each of a's C channels).
enum class Broadcast : int { none = 0, image = 1, channel = 2 };

// P pixels of C channels, `hw` pixels per image (P a multiple of hw when b is per image).
void eltwise_nhwc(const float* a, const float* b, float* y, int64_t P, int64_t hw, int64_t C, int64_t lda,
                  int64_t ldb, int64_t ldy, BinaryOp op, Broadcast broadcast, Activation act, float alpha,
                  int num_threads);

// P pixels; y gets C_out channels, index[c] in [0, x's channels).
void channel_gather_nhwc(const float* x, const int64_t* index, float* y, int64_t P, int64_t C_out, int64_t ldx,
                         int64_t ldy, int num_threads);

// Per image: output pixel q (of P_out) is channels [offset[q], offset[q] + C) of input pixel index[q]
// (of P_in), or zeros where index[q] is -1. offset null: channels [0, C).
void pixel_gather_nhwc(const float* x, const int64_t* index, const int64_t* offset, float* y, int64_t N,
                       int64_t P_in, int64_t P_out, int64_t C, int64_t ldx, int64_t ldy, int num_threads);

}  // namespace basisrt
