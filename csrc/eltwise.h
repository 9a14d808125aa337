// Elementwise ops between NHWC maps that no conv epilogue absorbs, and channel copies:
//  - eltwise_nhwc: y = act(a OP b), OP add, mul, sub or div, b of a's shape, or one pixel per image broadcast
//    over the map (a squeeze-excitation gate, (N, C, 1, 1) in PyTorch), or one channel per pixel
//    broadcast over the channels (a spatial attention map, (N, 1, H, W): CBAM, PAN), or one pixel per
//    row broadcast over the row ((N, C, H, 1): MobileViT v2's context vector);
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

// sub: a - b (PoolFormer's pool(x) - x); div: a / b (ConvNeXt-V2's norm over its channel mean)
enum class BinaryOp : int { add = 0, mul = 1, sub = 2, div = 3 };
constexpr int kBinaryOps = 4;

// How eltwise's b covers a: b has a's shape; one pixel per image (read for each of its hw pixels);
// one channel per pixel (read for each of a's C channels); one pixel per row (read for each of the
// row's W pixels: (N, C, H, 1) in PyTorch, MobileViT's context vector).
enum class Broadcast : int { none = 0, image = 1, channel = 2, row = 3 };

// How many of a's pixels (of maps H × W) share one of b's pixels under `bc` (1 if none).
inline int64_t broadcast_span(Broadcast bc, int64_t H, int64_t W) {
    return bc == Broadcast::image ? H * W : bc == Broadcast::row ? W : 1;
}

// P pixels of C channels; `span` of a's pixels per b pixel (broadcast_span; P a multiple of it).
void eltwise_nhwc(const float* a, const float* b, float* y, int64_t P, int64_t span, int64_t C, int64_t lda,
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
