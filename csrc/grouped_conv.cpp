#include "grouped_conv.h"

#include "activation.h"
#include "conv_rows.h"
#include "depthwise_conv.h"
#include "simd.h"

#include <algorithm>
#include <stdexcept>

namespace basisrt {
namespace {

template <int V>
struct Vec;  // V floats, unaligned: channel offsets are multiples of 4, pixel strides anything
template <>
struct Vec<4> {
    typedef float type __attribute__((vector_size(16), aligned(4)));
};
template <>
struct Vec<8> {
    typedef float type __attribute__((vector_size(32), aligned(4)));
};
template <>
struct Vec<16> {
    typedef float type __attribute__((vector_size(64), aligned(4)));
};

// Where one call's P pixels and V output channels are.
struct Block {
    int64_t n, oy, ox, ky0, ky1, kx0, kx1;  // image, output row, first pixel, taps inside the image
    int64_t g, j;                           // group, first output channel within the group
};

// P output pixels (ox … ox+P-1, all with taps [kx0, kx1) inside in x) × V output channels
// c = g·Cg_out + j … c+V-1: P accumulators of V floats in registers. For each tap and each input
// channel of the group, a pixel's input value (one broadcast) times the tap's weight row (V
// floats, loaded once for the P pixels). P = 8 keeps 8 independent FMA chains, what two FMA units
// with a 4-cycle latency need; fewer pixels (a short row, a border) run with fewer.
template <int V, int P>
inline __attribute__((always_inline)) void grouped_pixels(const float* x, const float* B, int64_t b_group,
                                                          int64_t cg_pad, const float* bias, const float* residual,
                                                          float* y, const ConvShape& s, Clamp k, const Block& b) {
    typedef typename Vec<V>::type vec;
    const int64_t cg_in = s.C_in / s.groups, c = b.g * (s.C_out / s.groups) + b.j;
    const int64_t y0 = b.oy * s.sh - s.ph, x0 = b.ox * s.sw - s.pw;
    // pixel 0's window corner (maybe outside the image: only taps inside are read)
    const float* corner = x + ((b.n * s.H + y0) * s.W + x0) * s.ldx + b.g * cg_in;
    const int64_t step = s.sw * s.ldx;  // to the next pixel's window
    const float* wg = B + b.g * b_group + b.j;
    vec a[P];
    const vec b0 = *reinterpret_cast<const vec*>(bias + c);
    for (int i = 0; i < P; ++i) a[i] = b0;
    for (int64_t ky = b.ky0; ky < b.ky1; ++ky)
        for (int64_t kx = b.kx0; kx < b.kx1; ++kx) {
            const float* in = corner + (ky * s.dh * s.W + kx * s.dw) * s.ldx;
            const float* wt = wg + (ky * s.kw + kx) * cg_in * cg_pad;
            for (int64_t ci = 0; ci < cg_in; ++ci) {
                const vec w = *reinterpret_cast<const vec*>(wt + ci * cg_pad);
                for (int i = 0; i < P; ++i) a[i] += in[i * step + ci] * w;
            }
        }
    const int64_t p = (b.n * s.Ho + b.oy) * s.Wo + b.ox;
    for (int i = 0; i < P; ++i) {
        if (residual) a[i] += *reinterpret_cast<const vec*>(residual + (p + i) * s.ldr + c);
        a[i] = a[i] < k.lo ? vec{} + k.lo : a[i];  // compares false for NaN: NaN stays, as in PyTorch
        a[i] = a[i] > k.hi ? vec{} + k.hi : a[i];
        *reinterpret_cast<vec*>(y + (p + i) * s.ldy + c) = a[i];
    }
}

// Every pixel block of output row (n, oy) and every (group, V channels) of it. Interior pixels go
// 8, 4 or 2 at a time, each border pixel alone with its own tap range.
template <int V>
inline __attribute__((always_inline)) void grouped_row_body(const float* x, const float* B, const float* bias,
                                                            const float* residual, float* y, const ConvShape& s,
                                                            Activation act, int64_t n, int64_t oy) {
    const int64_t cg_out = s.C_out / s.groups, cg_pad = round_up(cg_out, kColBlock);
    const int64_t b_group = s.kh * s.kw * (s.C_in / s.groups) * cg_pad;
    const Clamp k = clamp_of(act);
    const int64_t y0 = oy * s.sh - s.ph;
    const TapRange ty = taps_inside(y0, s.kh, s.dh, s.H);  // taps with 0 <= iy < H
    const int64_t ky0 = ty.first, ky1 = ty.last;
    for (int64_t ox = 0; ox < s.Wo;) {
        const int64_t x0 = ox * s.sw - s.pw;
        const TapRange tx = taps_inside(x0, s.kw, s.dw, s.W);
        const int64_t kx0 = tx.first, kx1 = tx.last;
        // px pixels share the tap range when the first and the last window are inside in x
        auto fits = [&](int64_t px) {
            return kx0 == 0 && kx1 == s.kw && ox + px <= s.Wo && (ox + px - 1) * s.sw - s.pw + (s.kw - 1) * s.dw < s.W;
        };
        const int64_t px = fits(8) ? 8 : fits(4) ? 4 : fits(2) ? 2 : 1;
        Block b{n, oy, ox, ky0, ky1, kx0, kx1, 0, 0};
        for (b.g = 0; b.g < s.groups; ++b.g)
            for (b.j = 0; b.j < cg_out; b.j += V) {
                if (px == 8) grouped_pixels<V, 8>(x, B, b_group, cg_pad, bias, residual, y, s, k, b);
                else if (px == 4) grouped_pixels<V, 4>(x, B, b_group, cg_pad, bias, residual, y, s, k, b);
                else if (px == 2) grouped_pixels<V, 2>(x, B, b_group, cg_pad, bias, residual, y, s, k, b);
                else grouped_pixels<V, 1>(x, B, b_group, cg_pad, bias, residual, y, s, k, b);
            }
        ox += px;
    }
}

// Groups of 4 or 12 outputs (ResNeXt's 4 channels per group) take 4-float vectors: on the GEMM path
// such a group used 4 of 16 lanes and set up its windows alone (2 GMAC/s on one thread).
BASISRT_AVX512 void grouped_row_avx512(const float* x, const float* B, const float* bias, const float* residual,
                                       float* y, const ConvShape& s, Activation act, int64_t n, int64_t oy) {
    const int64_t cg_out = s.C_out / s.groups;
    if (cg_out % 16 == 0) return grouped_row_body<16>(x, B, bias, residual, y, s, act, n, oy);
    if (cg_out % 8 == 0) return grouped_row_body<8>(x, B, bias, residual, y, s, act, n, oy);
    grouped_row_body<4>(x, B, bias, residual, y, s, act, n, oy);
}
BASISRT_AVX2 void grouped_row_avx2(const float* x, const float* B, const float* bias, const float* residual,
                                   float* y, const ConvShape& s, Activation act, int64_t n, int64_t oy) {
    if ((s.C_out / s.groups) % 8 == 0) return grouped_row_body<8>(x, B, bias, residual, y, s, act, n, oy);
    grouped_row_body<4>(x, B, bias, residual, y, s, act, n, oy);
}
BASISRT_NARROW void grouped_row_narrow(const float* x, const float* B, const float* bias, const float* residual,
                                       float* y, const ConvShape& s, Activation act, int64_t n, int64_t oy) {
    if ((s.C_out / s.groups) % 8 == 0) return grouped_row_body<8>(x, B, bias, residual, y, s, act, n, oy);
    grouped_row_body<4>(x, B, bias, residual, y, s, act, n, oy);
}

}  // namespace

bool grouped_path(int64_t groups, int64_t c_in, int64_t c_out, int64_t rank) {
    return rank == 0 && groups > 1 && !depthwise_path(groups, c_in, c_out, rank) && c_in % groups == 0 &&
           c_out % groups == 0 && (c_out / groups) % 4 == 0 && c_out / groups <= kGroupedMaxWidth;
}

void grouped_conv_nhwc(const float* x, const float* B, const float* bias, const float* residual, float* y,
                       const ConvShape& s, Activation act, int num_threads, float alpha) {
    if (!grouped_path(s.groups, s.C_in, s.C_out, 0) || s.pool != 1 || !s.ldx || !s.ldy || !s.ldr || !bias)
        throw std::invalid_argument("grouped_conv_nhwc: not a grouped conv with resolved strides and a bias");
    run_rows(grouped_row_avx512, grouped_row_avx2, grouped_row_narrow, x, B, bias, residual, y, s, act, num_threads,
             alpha);
}

}  // namespace basisrt
