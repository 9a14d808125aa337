#include "pool.h"

#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

namespace basisrt {
namespace {

// One output row (n, oy): for each output pixel, reduce its window channel-wise. The innermost
// loop runs over contiguous channels, which GCC vectorises in each build (simd.h).
inline __attribute__((always_inline)) void pool_row_body(const float* x, float* y, const PoolShape& s, PoolKind kind,
                                                         bool count_include_pad, int64_t n, int64_t oy) {
    const bool adaptive = s.kh == 0;
    const int64_t y0 = oy * s.sh - s.ph;
    const int64_t ylo = adaptive ? oy * s.H / s.Ho : std::max<int64_t>(y0, 0);
    const int64_t yhi = adaptive ? ((oy + 1) * s.H + s.Ho - 1) / s.Ho : std::min(y0 + s.kh, s.H);
    for (int64_t ox = 0; ox < s.Wo; ++ox) {
        const int64_t x0 = ox * s.sw - s.pw;
        const int64_t xlo = adaptive ? ox * s.W / s.Wo : std::max<int64_t>(x0, 0);
        const int64_t xhi = adaptive ? ((ox + 1) * s.W + s.Wo - 1) / s.Wo : std::min(x0 + s.kw, s.W);
        float* out = y + ((n * s.Ho + oy) * s.Wo + ox) * s.ldy;
        const bool is_max = kind == PoolKind::max;
        std::fill(out, out + s.C, is_max ? -std::numeric_limits<float>::infinity() : 0.f);
        for (int64_t iy = ylo; iy < yhi; ++iy)
            for (int64_t ix = xlo; ix < xhi; ++ix) {
                const float* in = x + ((n * s.H + iy) * s.W + ix) * s.ldx;
                if (is_max) {
                    for (int64_t c = 0; c < s.C; ++c) out[c] = max_nan(out[c], in[c]);  // NaN sticks
                } else {
                    for (int64_t c = 0; c < s.C; ++c) out[c] += in[c];
                }
            }
        if (!is_max) {  // PyTorch's divisor: the window clipped to the padded image, or to the image
            const int64_t hp = std::min(y0 + s.kh, s.H + s.ph) - y0, wp = std::min(x0 + s.kw, s.W + s.pw) - x0;
            const float inv =
                1.f / static_cast<float>(count_include_pad && !adaptive ? hp * wp : (yhi - ylo) * (xhi - xlo));
            for (int64_t c = 0; c < s.C; ++c) out[c] *= inv;
        }
    }
}

BASISRT_AVX512 void pool_row_avx512(const float* x, float* y, const PoolShape& s, PoolKind kind, bool count_include_pad,
                                    int64_t n, int64_t oy) {
    pool_row_body(x, y, s, kind, count_include_pad, n, oy);
}
BASISRT_NARROW void pool_row_narrow(const float* x, float* y, const PoolShape& s, PoolKind kind, bool count_include_pad,
                                    int64_t n, int64_t oy) {
    pool_row_body(x, y, s, kind, count_include_pad, n, oy);
}
void pool_row(const float* x, float* y, const PoolShape& s, PoolKind kind, bool count_include_pad, int64_t n,
              int64_t oy) {
    if (use_avx512()) return pool_row_avx512(x, y, s, kind, count_include_pad, n, oy);
    pool_row_narrow(x, y, s, kind, count_include_pad, n, oy);
}

}  // namespace

void pool_nhwc(const float* x, float* y, const PoolShape& shape, PoolKind kind, bool count_include_pad,
               int num_threads) {
    PoolShape s = shape;
    s.ldx = s.ldx ? s.ldx : s.C;
    s.ldy = s.ldy ? s.ldy : s.C;
    if (s.ldx < s.C || s.ldy < s.C) throw std::invalid_argument("pool_nhwc: a pixel stride is smaller than C");
    parallel_for(s.N * s.Ho, num_threads, [&](int64_t row) {
        pool_row(x, y, s, kind, count_include_pad, row / s.Ho, row % s.Ho);
    });
}

}  // namespace basisrt
