// The driver of the per-row conv kernels (depthwise, grouped): threads over output rows, the
// instruction set picked once, and each row's activation while the row is still in L1.
#pragma once
#include <algorithm>
#include <cstdint>

#include "activation.h"
#include "fused_conv.h"
#include "simd.h"
#include "thread_pool.h"

namespace basisrt {

// The taps [first, last) of a kernel of k taps at dilation d whose input coordinate
// start + tap·d lies in [0, size): all that a window at the image's border reads.
struct TapRange {
    int64_t first, last;
};
inline TapRange taps_inside(int64_t start, int64_t k, int64_t d, int64_t size) {
    return {std::max<int64_t>(0, (-start + d - 1) / d), std::min<int64_t>(k, (size - start + d - 1) / d)};
}

// One output row (image n, row oy) of y = clamp(conv(x, w) + bias (+ residual)).
using RowKernel = void (*)(const float* x, const float* w, const float* bias, const float* residual, float* y,
                           const ConvShape& s, Activation act, int64_t n, int64_t oy);

// Every output row of s with the build for this CPU, then the activations that are not clamps.
inline void run_rows(RowKernel avx512, RowKernel avx2, RowKernel narrow, const float* x, const float* w,
                     const float* bias, const float* residual, float* y, const ConvShape& s, Activation act,
                     int num_threads, float alpha) {
    const RowKernel row_kernel = use_avx512() ? avx512 : use_avx2_fma() ? avx2 : narrow;
    parallel_for(s.N * s.Ho, num_threads, [&](int64_t row) {
        row_kernel(x, w, bias, residual, y, s, act, row / s.Ho, row % s.Ho);
        activate_rows(y + row * s.Wo * s.ldy, s.Wo, s.C_out, s.ldy, act, alpha);
    });
}

}  // namespace basisrt
