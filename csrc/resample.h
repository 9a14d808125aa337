// Separable resampling of NHWC maps (bilinear upsampling: FCN's, DeepLab's and LR-ASPP's heads,
// U-Nets' decoders): per image, every output pixel a weighted sum of T×T input pixels,
//   y[n, oy, ox, c] = Σ_a Σ_b wy[oy][a] · wx[ox][b] · x[n, iy[oy][a], ix[ox][b], c]
// with per-row taps (iy, wy: Ho × T) and per-column taps (ix, wx: Wo × T). basisrt/compiler
// derives them from PyTorch's own formula (patterns.resample_taps). Every tap is read, zero
// weights too, so a NaN or Inf in a tap's pixel reaches the output as in PyTorch.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace basisrt {

struct ResampleTaps {
    int64_t taps;          // T
    const int64_t *iy, *ix;  // Ho × T rows, Wo × T columns of the input
    const float *wy, *wx;  // their weights
};

// x: (N, H, W, C), pixel stride ldx; y: (N, Ho, Wo, C), pixel stride ldy.
void resample_nhwc(const float* x, float* y, int64_t N, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t C,
                   int64_t ldx, int64_t ldy, const ResampleTaps& t, int num_threads);

// The taps of one axis: index and weight of size out × taps, index in [0, in), weights finite.
void check_resample_axis(const std::string& fn, const char* axis, const std::vector<int64_t>& index,
                         const std::vector<float>& weight, int64_t taps, int64_t in, int64_t out);

}  // namespace basisrt
