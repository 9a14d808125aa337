#include "pool.h"

#include <immintrin.h>

#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace basisrt {
namespace {

// A window's channels into acc (C floats): max (NaN sticks), sum or sum of squares; then acc · inv
// (sqrt(acc) for l2) into out. Plain loops for float32, which GCC vectorises in each build (simd.h).
// bf16 maps come only from bf16 convs, so a bf16 output here and pool_row_bf16 (a bf16 input) use
// AVX512-BF16 directly (GCC had vectorised the scalar conversions 4 channels wide).
inline void reduce(float* acc, const float* in, int64_t C, PoolKind kind) {
    if (kind == PoolKind::max) {
        for (int64_t c = 0; c < C; ++c) acc[c] = max_nan(acc[c], in[c]);
    } else if (kind == PoolKind::l2) {
        for (int64_t c = 0; c < C; ++c) acc[c] += in[c] * in[c];
    } else {
        for (int64_t c = 0; c < C; ++c) acc[c] += in[c];
    }
}
inline void store(float* out, const float* acc, float inv, int64_t C, PoolKind kind) {
    if (kind == PoolKind::l2) {
        for (int64_t c = 0; c < C; ++c) out[c] = std::sqrt(acc[c]);
    } else {
        for (int64_t c = 0; c < C; ++c) out[c] = acc[c] * inv;
    }
}

BASISRT_AVX512BF16 inline __mmask16 first(int64_t n) {
    return n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1);
}
BASISRT_AVX512BF16 void store(uint16_t* out, const float* acc, float inv, int64_t C, PoolKind kind) {
    for (int64_t c = 0; c < C; c += 16) {  // nearest even; NaN stays NaN
        const __mmask16 m = first(C - c);
        const __m512 a = _mm512_maskz_loadu_ps(m, acc + c);
        const __m512 v = kind == PoolKind::l2 ? _mm512_sqrt_ps(a) : _mm512_mul_ps(a, _mm512_set1_ps(inv));
        _mm256_mask_storeu_epi16(out + c, m, (__m256i)_mm512_cvtneps_pbh(v));
    }
}

// Output pixel (oy, ox)'s window clipped to the image, and the factor avg pooling scales its sum by
// (PyTorch's divisor: the window clipped to the padded image, or to the image).
struct Window {
    int64_t ylo, yhi, xlo, xhi;
    float inv = 1.f;
};
inline Window window_of(const PoolShape& s, PoolKind kind, bool count_include_pad, int64_t oy, int64_t ox) {
    const bool adaptive = s.kh == 0;
    const int64_t y0 = oy * s.sh - s.ph, x0 = ox * s.sw - s.pw;
    Window w{adaptive ? oy * s.H / s.Ho : std::max<int64_t>(y0, 0),
             adaptive ? ((oy + 1) * s.H + s.Ho - 1) / s.Ho : std::min(y0 + s.kh, s.H),
             adaptive ? ox * s.W / s.Wo : std::max<int64_t>(x0, 0),
             adaptive ? ((ox + 1) * s.W + s.Wo - 1) / s.Wo : std::min(x0 + s.kw, s.W)};
    if (kind == PoolKind::avg) {
        const int64_t hp = std::min(y0 + s.kh, s.H + s.ph) - y0, wp = std::min(x0 + s.kw, s.W + s.pw) - x0;
        w.inv = 1.f / static_cast<float>(count_include_pad && !adaptive ? hp * wp : (w.yhi - w.ylo) * (w.xhi - w.xlo));
    }
    return w;
}

// One output row (n, oy): for each output pixel, reduce its window channel-wise (into a float32
// output directly, else into acc: C floats), then store it.
template <class In, class Out>
inline __attribute__((always_inline)) void pool_row_body(const In* x, Out* y, const PoolShape& s, PoolKind kind,
                                                         bool count_include_pad, int64_t n, int64_t oy, float* acc) {
    for (int64_t ox = 0; ox < s.Wo; ++ox) {
        const Window w = window_of(s, kind, count_include_pad, oy, ox);
        Out* out = y + ((n * s.Ho + oy) * s.Wo + ox) * s.ldy;
        constexpr bool f32_out = std::is_same_v<Out, float>;  // reduced in place, no staging
        float* a = f32_out ? reinterpret_cast<float*>(out) : acc;
        const bool is_max = kind == PoolKind::max;
        std::fill(a, a + s.C, is_max ? -std::numeric_limits<float>::infinity() : 0.f);
        for (int64_t iy = w.ylo; iy < w.yhi; ++iy)
            for (int64_t ix = w.xlo; ix < w.xhi; ++ix) reduce(a, x + ((n * s.H + iy) * s.W + ix) * s.ldx, s.C, kind);
        if (f32_out && is_max) continue;
        store(out, a, w.inv, s.C, kind);  // in place for float32
    }
}

// The same row from a bf16 map: each 16 channels' window reduced in a register and stored once,
// in the order and with the operations of the float32 loops. Through acc in memory instead (a load
// and a store of it per window pixel), VGG16's 2×2 max pool of 64 channels at 32×32, batch 32,
// took 225 µs, this 169 (OpenVINO's bf16 pool: 112), the same bits.
template <class Out>
BASISRT_AVX512BF16 void pool_row_bf16(const uint16_t* x, Out* y, const PoolShape& s, PoolKind kind,
                                      bool count_include_pad, int64_t n, int64_t oy) {
    const bool is_max = kind == PoolKind::max;
    const __m512 init = _mm512_set1_ps(is_max ? -std::numeric_limits<float>::infinity() : 0.f);
    for (int64_t ox = 0; ox < s.Wo; ++ox) {
        const Window w = window_of(s, kind, count_include_pad, oy, ox);
        Out* out = y + ((n * s.Ho + oy) * s.Wo + ox) * s.ldy;
        for (int64_t c = 0; c < s.C; c += 16) {
            const __mmask16 m = first(s.C - c);
            __m512 a = init;
            for (int64_t iy = w.ylo; iy < w.yhi; ++iy)
                for (int64_t ix = w.xlo; ix < w.xhi; ++ix) {
                    const uint16_t* in = x + ((n * s.H + iy) * s.W + ix) * s.ldx + c;
                    const __m512i h = _mm512_maskz_cvtepu16_epi32(m, _mm256_maskz_loadu_epi16(m, in));
                    const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
                    a = is_max ? _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, a, _CMP_GT_OQ) |
                                                          _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), a, v)
                        : kind == PoolKind::l2 ? _mm512_fmadd_ps(v, v, a)
                                               : _mm512_add_ps(a, v);
                }
            const __m512 r = is_max                  ? a
                             : kind == PoolKind::l2 ? _mm512_sqrt_ps(a)
                                                    : _mm512_mul_ps(a, _mm512_set1_ps(w.inv));
            if constexpr (std::is_same_v<Out, float>) _mm512_mask_storeu_ps(out + c, m, r);
            else _mm256_mask_storeu_epi16(out + c, m, (__m256i)_mm512_cvtneps_pbh(r));
        }
    }
}

template <class In, class Out>
BASISRT_AVX512 void pool_row_avx512(const In* x, Out* y, const PoolShape& s, PoolKind kind, bool count_include_pad,
                                    int64_t n, int64_t oy, float* acc) {
    pool_row_body(x, y, s, kind, count_include_pad, n, oy, acc);
}
template <class In, class Out>
BASISRT_NARROW void pool_row_narrow(const In* x, Out* y, const PoolShape& s, PoolKind kind, bool count_include_pad,
                                    int64_t n, int64_t oy, float* acc) {
    pool_row_body(x, y, s, kind, count_include_pad, n, oy, acc);
}
template <class In, class Out>
void pool_rows(const void* x, void* y, const PoolShape& s, PoolKind kind, bool count_include_pad, int num_threads) {
    const bool avx512 = use_avx512();
    parallel_for(s.N * s.Ho, num_threads, [&](int64_t row) {
        thread_local std::vector<float> acc;
        if (acc.size() < size_t(s.C)) acc.resize(s.C);
        const In* in = static_cast<const In*>(x);
        Out* out = static_cast<Out*>(y);
        if constexpr (std::is_same_v<In, uint16_t>)
            pool_row_bf16(in, out, s, kind, count_include_pad, row / s.Ho, row % s.Ho);
        else if (avx512) pool_row_avx512(in, out, s, kind, count_include_pad, row / s.Ho, row % s.Ho, acc.data());
        else pool_row_narrow(in, out, s, kind, count_include_pad, row / s.Ho, row % s.Ho, acc.data());
    });
}

}  // namespace

void pool_nhwc(const void* x, void* y, const PoolShape& shape, PoolKind kind, bool count_include_pad,
               int num_threads) {
    PoolShape s = shape;
    s.ldx = s.ldx ? s.ldx : s.C;
    s.ldy = s.ldy ? s.ldy : s.C;
    if (s.ldx < s.C || s.ldy < s.C) throw std::invalid_argument("pool_nhwc: a pixel stride is smaller than C");
    if (s.x_bf16 && s.y_bf16) pool_rows<uint16_t, uint16_t>(x, y, s, kind, count_include_pad, num_threads);
    else if (s.x_bf16) pool_rows<uint16_t, float>(x, y, s, kind, count_include_pad, num_threads);
    else if (s.y_bf16) pool_rows<float, uint16_t>(x, y, s, kind, count_include_pad, num_threads);
    else pool_rows<float, float>(x, y, s, kind, count_include_pad, num_threads);
}

}  // namespace basisrt
