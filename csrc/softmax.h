// Softmax over one axis of an NHWC float32 map, PyTorch's formula (exp(x - max) / sum; a NaN in a
// set makes the whole set NaN, as there):
//  - channels: within each pixel, over `groups` interleaved groups of C / groups channels (channel
//    g · C / groups + m is member g of set m): split attention's softmax over its radix (SKNet,
//    ResNeSt); groups = C is softmax(dim=1) of a map;
//  - width: over each row's W pixels, per channel (MobileViT v2's linear attention);
//  - pixels: over each image's H × W pixels, per channel (GCNet's context attention).
#pragma once
#include <cstdint>

namespace basisrt {

enum class SoftmaxAxis : int { channels = 0, width = 1, pixels = 2 };
constexpr int kSoftmaxAxes = 3;

// x, y: N images of H × W pixels of C channels, pixel strides ldx, ldy >= C.
void softmax_nhwc(const float* x, float* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t ldx, int64_t ldy,
                  SoftmaxAxis axis, int64_t groups, int num_threads);

}  // namespace basisrt
