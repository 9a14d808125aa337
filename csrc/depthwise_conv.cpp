#include "depthwise_conv.h"

#include "activation.h"
#include "conv_rows.h"
#include "simd.h"

#include <algorithm>
#include <stdexcept>

namespace basisrt {
namespace {

typedef float f8 __attribute__((vector_size(32), aligned(4)));

// P output pixels (ox, ox+1, …, all with taps [kx0, kx1) in x) × 8·H channels from c (H = 2, or 1
// for a tail of 8): H·P accumulators of 8 floats (registers) over the window's taps, each weight
// vector loaded once for the P pixels; then bias, residual and the clamp, one store each. With one
// pixel at a time the two accumulators' FMA chains (latency 4-5 cycles a tap) bound the speed, and
// accumulating in the output row instead (a load and a store per tap) ran 4 GMAC/s on two cores.
template <int P, int H = 2>
inline __attribute__((always_inline)) void depthwise_pixels(const float* x, const float* w, const float* bias,
                                                            const float* residual, float* y, const ConvShape& s,
                                                            Clamp k, int64_t n, int64_t oy, int64_t ox, int64_t ky0,
                                                            int64_t ky1, int64_t kx0, int64_t kx1, int64_t c) {
    const int64_t y0 = oy * s.sh - s.ph, x0 = ox * s.sw - s.pw;
    const float* corner = x + ((n * s.H + y0) * s.W + x0) * s.ldx + c;  // pixel 0's window corner (maybe outside)
    const int64_t step = s.sw * s.ldx;                                   // to the next pixel's window
    f8 a[P][H];
    for (int i = 0; i < P; ++i)
        for (int h = 0; h < H; ++h) a[i][h] = bias ? *reinterpret_cast<const f8*>(bias + c + 8 * h) : f8{};
    for (int64_t ky = ky0; ky < ky1; ++ky)
        for (int64_t kx = kx0; kx < kx1; ++kx) {
            const float* in = corner + (ky * s.dh * s.W + kx * s.dw) * s.ldx;
            const float* wt = w + (ky * s.kw + kx) * s.C_in + c;
            f8 wv[H];
            for (int h = 0; h < H; ++h) wv[h] = *reinterpret_cast<const f8*>(wt + 8 * h);
            for (int i = 0; i < P; ++i)
                for (int h = 0; h < H; ++h) a[i][h] += *reinterpret_cast<const f8*>(in + i * step + 8 * h) * wv[h];
        }
    const int64_t p = (n * s.Ho + oy) * s.Wo + ox;
    for (int i = 0; i < P; ++i) {
        if (residual)
            for (int h = 0; h < H; ++h) a[i][h] += *reinterpret_cast<const f8*>(residual + (p + i) * s.ldr + c + 8 * h);
        for (int h = 0; h < H; ++h) {
            a[i][h] = a[i][h] < k.lo ? f8{} + k.lo : a[i][h];  // compares false for NaN: NaN stays, as in PyTorch
            a[i][h] = a[i][h] > k.hi ? f8{} + k.hi : a[i][h];
            *reinterpret_cast<f8*>(y + (p + i) * s.ldy + c + 8 * h) = a[i][h];
        }
    }
}

// One output row (n, oy): pixels whose windows lie inside the image in x four at a time, the
// others (the borders) one at a time with their own tap range; a last 8 channels of C % 16 as one
// 8-float vector, the last C % 8 in a scalar loop. Lane by lane, those 8 made 72 channels run at
// 4-6 GMAC/s on one thread against 13-14 for 64 or 80 (MobileNetV3 has 72, 120, 184 and 200).
inline __attribute__((always_inline)) void depthwise_row_body(const float* x, const float* w, const float* bias,
                                                              const float* residual, float* y, const ConvShape& s,
                                                              Activation act, int64_t n, int64_t oy) {
    constexpr int P = 4;
    const int64_t C = s.C_in, y0 = oy * s.sh - s.ph;
    const Clamp k = clamp_of(act);
    const TapRange ty = taps_inside(y0, s.kh, s.dh, s.H);  // taps with 0 <= iy < H
    const int64_t ky0 = ty.first, ky1 = ty.last;
    for (int64_t ox = 0; ox < s.Wo;) {
        const int64_t x0 = ox * s.sw - s.pw;
        const TapRange tx = taps_inside(x0, s.kw, s.dw, s.W);
        const int64_t kx0 = tx.first, kx1 = tx.last;
        // P pixels share the tap range when the first and the last window are inside in x
        const int64_t last_x = (ox + P - 1) * s.sw - s.pw + (s.kw - 1) * s.dw;
        const int64_t px = kx0 == 0 && kx1 == s.kw && ox + P <= s.Wo && last_x < s.W ? P : 1;
        int64_t c0 = 0;
        for (; c0 + 16 <= C; c0 += 16) {
            if (px == P) depthwise_pixels<P>(x, w, bias, residual, y, s, k, n, oy, ox, ky0, ky1, kx0, kx1, c0);
            else depthwise_pixels<1>(x, w, bias, residual, y, s, k, n, oy, ox, ky0, ky1, kx0, kx1, c0);
        }
        if (c0 + 8 <= C) {
            if (px == P) depthwise_pixels<P, 1>(x, w, bias, residual, y, s, k, n, oy, ox, ky0, ky1, kx0, kx1, c0);
            else depthwise_pixels<1, 1>(x, w, bias, residual, y, s, k, n, oy, ox, ky0, ky1, kx0, kx1, c0);
            c0 += 8;
        }
        for (int64_t i = 0; i < px; ++i) {
            const int64_t p = (n * s.Ho + oy) * s.Wo + ox + i;
            const int64_t corner = ((n * s.H + y0) * s.W + x0 + i * s.sw) * s.ldx;
            for (int64_t c = c0; c < C; ++c) {
                float a = bias ? bias[c] : 0.f;
                for (int64_t ky = ky0; ky < ky1; ++ky)
                    for (int64_t kx = kx0; kx < kx1; ++kx)
                        a += x[corner + (ky * s.dh * s.W + kx * s.dw) * s.ldx + c] * w[(ky * s.kw + kx) * C + c];
                y[p * s.ldy + c] = std::min(std::max(a + (residual ? residual[p * s.ldr + c] : 0.f), k.lo), k.hi);
            }
        }
        ox += px;
    }
}

BASISRT_AVX512 void depthwise_row_avx512(const float* x, const float* w, const float* bias, const float* residual,
                                         float* y, const ConvShape& s, Activation act, int64_t n, int64_t oy) {
    depthwise_row_body(x, w, bias, residual, y, s, act, n, oy);
}
BASISRT_AVX2 void depthwise_row_avx2(const float* x, const float* w, const float* bias, const float* residual,
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
    run_rows(depthwise_row_avx512, depthwise_row_avx2, depthwise_row_narrow, x, w, bias, residual, y, s, act,
             num_threads, alpha);
}

}  // namespace basisrt
