#include "depthwise_conv.h"

#include "activation.h"
#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <stdexcept>

namespace basisrt {
namespace {

typedef float f8 __attribute__((vector_size(32), aligned(4)));

// One output row (n, oy). Per pixel, 16 channels at a time accumulate in two 8-float vectors
// (registers) over the window's taps, then bias, residual and the clamp, one store each; the last
// C % 16 channels in a scalar loop. Accumulating in the output row instead (a load and a store per
// tap and channel, and 16-float vectors GCC spills on AVX2) ran 4 GMAC/s on two cores.
inline __attribute__((always_inline)) void depthwise_row_body(const float* x, const float* w, const float* bias,
                                                              const float* residual, float* y, const ConvShape& s,
                                                              Activation act, int64_t n, int64_t oy) {
    const int64_t C = s.C_in, y0 = oy * s.sh - s.ph;
    const Clamp k = clamp_of(act);
    const int64_t ky0 = std::max<int64_t>(0, (-y0 + s.dh - 1) / s.dh);
    const int64_t ky1 = std::min<int64_t>(s.kh, (s.H - y0 + s.dh - 1) / s.dh);  // taps with 0 <= iy < H
    for (int64_t ox = 0; ox < s.Wo; ++ox) {
        const int64_t p = (n * s.Ho + oy) * s.Wo + ox, x0 = ox * s.sw - s.pw;
        const int64_t kx0 = std::max<int64_t>(0, (-x0 + s.dw - 1) / s.dw);
        const int64_t kx1 = std::min<int64_t>(s.kw, (s.W - x0 + s.dw - 1) / s.dw);
        float* out = y + p * s.ldy;
        const float* res = residual ? residual + p * s.ldr : nullptr;
        const int64_t corner = ((n * s.H + y0) * s.W + x0) * s.ldx;  // the window's corner (maybe outside)
        int64_t c = 0;
        for (; c + 16 <= C; c += 16) {
            f8 a0 = bias ? *reinterpret_cast<const f8*>(bias + c) : f8{};
            f8 a1 = bias ? *reinterpret_cast<const f8*>(bias + c + 8) : f8{};
            for (int64_t ky = ky0; ky < ky1; ++ky)
                for (int64_t kx = kx0; kx < kx1; ++kx) {
                    const float* in = x + (corner + (ky * s.dh * s.W + kx * s.dw) * s.ldx + c);
                    const float* wt = w + (ky * s.kw + kx) * C + c;
                    a0 += *reinterpret_cast<const f8*>(in) * *reinterpret_cast<const f8*>(wt);
                    a1 += *reinterpret_cast<const f8*>(in + 8) * *reinterpret_cast<const f8*>(wt + 8);
                }
            if (res) {
                a0 += *reinterpret_cast<const f8*>(res + c);
                a1 += *reinterpret_cast<const f8*>(res + c + 8);
            }
            a0 = a0 < k.lo ? f8{} + k.lo : a0;  // compares false for NaN: NaN stays, as in PyTorch
            a1 = a1 < k.lo ? f8{} + k.lo : a1;
            a0 = a0 > k.hi ? f8{} + k.hi : a0;
            a1 = a1 > k.hi ? f8{} + k.hi : a1;
            *reinterpret_cast<f8*>(out + c) = a0;
            *reinterpret_cast<f8*>(out + c + 8) = a1;
        }
        for (; c < C; ++c) {
            float a = bias ? bias[c] : 0.f;
            for (int64_t ky = ky0; ky < ky1; ++ky)
                for (int64_t kx = kx0; kx < kx1; ++kx)
                    a += x[corner + (ky * s.dh * s.W + kx * s.dw) * s.ldx + c] * w[(ky * s.kw + kx) * C + c];
            out[c] = std::min(std::max(a + (res ? res[c] : 0.f), k.lo), k.hi);
        }
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
