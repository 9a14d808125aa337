#include "depthwise_conv.h"

#include "activation.h"
#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <stdexcept>

namespace basisrt {
namespace {

// One output row (n, oy). Each pixel's C accumulators stay in L1 while the window's taps stream
// through; the channel loops are contiguous and branch-free, which GCC vectorises in each build.
inline __attribute__((always_inline)) void depthwise_row_body(const float* x, const float* w, const float* bias,
                                                              const float* residual, float* y, const ConvShape& s,
                                                              Activation act, int64_t n, int64_t oy) {
    const int64_t C = s.C_in, y0 = oy * s.sh - s.ph;
    const Clamp k = clamp_of(act);
    for (int64_t ox = 0; ox < s.Wo; ++ox) {
        const int64_t p = (n * s.Ho + oy) * s.Wo + ox, x0 = ox * s.sw - s.pw;
        float* out = y + p * s.ldy;
        for (int64_t c = 0; c < C; ++c) out[c] = bias ? bias[c] : 0.f;
        for (int64_t ky = 0; ky < s.kh; ++ky) {
            const int64_t iy = y0 + ky * s.dh;
            if (iy < 0 || iy >= s.H) continue;
            for (int64_t kx = 0; kx < s.kw; ++kx) {
                const int64_t ix = x0 + kx * s.dw;
                if (ix < 0 || ix >= s.W) continue;
                const float* in = x + ((n * s.H + iy) * s.W + ix) * s.ldx;
                const float* wt = w + (ky * s.kw + kx) * C;
                for (int64_t c = 0; c < C; ++c) out[c] += in[c] * wt[c];
            }
        }
        const float* res = residual ? residual + p * s.ldr : nullptr;
        for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(out[c] + (res ? res[c] : 0.f), k.lo), k.hi);
    }
}

BASISRT_AVX512 void depthwise_row_avx512(const float* x, const float* w, const float* bias, const float* residual,
                                         float* y, const ConvShape& s, Activation act, int64_t n, int64_t oy) {
    depthwise_row_body(x, w, bias, residual, y, s, act, n, oy);
}
BASISRT_NARROW void depthwise_row_narrow(const float* x, const float* w, const float* bias, const float* residual,
                                         float* y, const ConvShape& s, Activation act, int64_t n, int64_t oy) {
    depthwise_row_body(x, w, bias, residual, y, s, act, n, oy);
}

}  // namespace

bool depthwise_path(int64_t groups, int64_t c_in, int64_t c_out, int64_t rank) {
    return rank == 0 && groups > 1 && groups == c_in && c_out == c_in;
}

void depthwise_conv_nhwc(const float* x, const float* w, const float* bias, const float* residual, float* y,
                         const ConvShape& s, Activation act, int num_threads, float alpha) {
    if (!depthwise_path(s.groups, s.C_in, s.C_out, 0) || s.pool != 1 || !s.ldx || !s.ldy || !s.ldr)
        throw std::invalid_argument("depthwise_conv_nhwc: not a depthwise conv with resolved strides");
    parallel_for(s.N * s.Ho, num_threads, [&](int64_t row) {
        if (use_avx512()) {
            depthwise_row_avx512(x, w, bias, residual, y, s, act, row / s.Ho, row % s.Ho);
        } else {
            depthwise_row_narrow(x, w, bias, residual, y, s, act, row / s.Ho, row % s.Ho);
        }
        activate_rows(y + row * s.Wo * s.ldy, s.Wo, s.C_out, s.ldy, act, alpha);  // the row, still in L1
    });
}

}  // namespace basisrt
