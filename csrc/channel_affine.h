// Per-channel affine map and activation on NHWC float32: y = act(x · scale + shift), a BatchNorm
// (and the ReLU after it) that no conv before it can absorb, as in pre-activation networks
// (DenseNet's BN → ReLU → conv reads a concatenation that several layers share). And the same
// after a layer norm over each pixel's channels (ConvNeXt's LayerNorm2d), or over each image's
// group of channels (GroupNorm: FPN heads, BiT's ResNetV2).
#pragma once
#include <cstdint>

#include "fused_conv.h"

namespace basisrt {

// P pixels of C channels; ldx / ldy are the pixel strides of x and y in floats (>= C), so x can
// be a channel slice of a wider buffer (a concatenation, read in place).
void channel_affine_nhwc(const float* x, const float* scale, const float* shift, float* y, int64_t P, int64_t C,
                         int64_t ldx, int64_t ldy, Activation act, int num_threads, float alpha = 0.01f);

// y = act((x - mean) / sqrt(var + eps) · scale + shift), mean and (biased) var over each pixel's C
// channels: F.layer_norm over the last dim of the NHWC map. A NaN or inf in a pixel makes that
// pixel NaN, as in PyTorch. x may be y.
void channel_norm_nhwc(const float* x, const float* scale, const float* shift, float* y, int64_t P, int64_t C,
                       int64_t ldx, int64_t ldy, float eps, Activation act, int num_threads, float alpha = 0.01f);

// GroupNorm: y = act((x - mean) / sqrt(var + eps) · scale + shift), mean and (biased) var over each
// image's HW pixels × its group of C / groups channels (N images of HW pixels). A NaN or inf in a
// group makes that image's group NaN, as in PyTorch. x may be y.
void group_norm_nhwc(const float* x, const float* scale, const float* shift, float* y, int64_t N, int64_t HW,
                     int64_t C, int64_t groups, int64_t ldx, int64_t ldy, float eps, Activation act, int num_threads,
                     float alpha = 0.01f);

}  // namespace basisrt
