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
// (sqrt(acc) for l2) into out. Plain loops for float32, which GCC vectorises in each build (simd.h);
// bf16 maps come only from bf16 convs, so their loops use AVX512-BF16 directly (GCC vectorised the
// scalar conversions 4 channels wide).
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
BASISRT_AVX512BF16 void reduce(float* acc, const uint16_t* in, int64_t C, PoolKind kind) {
    for (int64_t c = 0; c < C; c += 16) {
        const __mmask16 m = first(C - c);
        const __m512i h = _mm512_maskz_cvtepu16_epi32(m, _mm256_maskz_loadu_epi16(m, in + c));
        const __m512 v = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(m, h, 16));  // bf16 bits: a float's high half
        const __m512 a = _mm512_maskz_loadu_ps(m, acc + c);
        const __m512 r = kind == PoolKind::max ? _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, a, _CMP_GT_OQ) |
                                                                          _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), a, v)
                         : kind == PoolKind::l2 ? _mm512_fmadd_ps(v, v, a)
                                                : _mm512_add_ps(a, v);
        _mm512_mask_storeu_ps(acc + c, m, r);
    }
}
BASISRT_AVX512BF16 void store(uint16_t* out, const float* acc, float inv, int64_t C, PoolKind kind) {
    for (int64_t c = 0; c < C; c += 16) {  // nearest even; NaN stays NaN
        const __mmask16 m = first(C - c);
        const __m512 a = _mm512_maskz_loadu_ps(m, acc + c);
        const __m512 v = kind == PoolKind::l2 ? _mm512_sqrt_ps(a) : _mm512_mul_ps(a, _mm512_set1_ps(inv));
        _mm256_mask_storeu_epi16(out + c, m, (__m256i)_mm512_cvtneps_pbh(v));
    }
}

// One output row (n, oy): for each output pixel, reduce its window channel-wise (into a float32
// output directly, else into acc: C floats), then store it.
template <class In, class Out>
inline __attribute__((always_inline)) void pool_row_body(const In* x, Out* y, const PoolShape& s, PoolKind kind,
                                                         bool count_include_pad, int64_t n, int64_t oy, float* acc) {
    const bool adaptive = s.kh == 0;
    const int64_t y0 = oy * s.sh - s.ph;
    const int64_t ylo = adaptive ? oy * s.H / s.Ho : std::max<int64_t>(y0, 0);
    const int64_t yhi = adaptive ? ((oy + 1) * s.H + s.Ho - 1) / s.Ho : std::min(y0 + s.kh, s.H);
    for (int64_t ox = 0; ox < s.Wo; ++ox) {
        const int64_t x0 = ox * s.sw - s.pw;
        const int64_t xlo = adaptive ? ox * s.W / s.Wo : std::max<int64_t>(x0, 0);
        const int64_t xhi = adaptive ? ((ox + 1) * s.W + s.Wo - 1) / s.Wo : std::min(x0 + s.kw, s.W);
        Out* out = y + ((n * s.Ho + oy) * s.Wo + ox) * s.ldy;
        constexpr bool f32_out = std::is_same_v<Out, float>;  // reduced in place, no staging
        float* a = f32_out ? reinterpret_cast<float*>(out) : acc;
        const bool is_max = kind == PoolKind::max;
        std::fill(a, a + s.C, is_max ? -std::numeric_limits<float>::infinity() : 0.f);
        for (int64_t iy = ylo; iy < yhi; ++iy)
            for (int64_t ix = xlo; ix < xhi; ++ix) reduce(a, x + ((n * s.H + iy) * s.W + ix) * s.ldx, s.C, kind);
        if (f32_out && is_max) continue;
        float inv = 1.f;
        if (kind == PoolKind::avg) {  // PyTorch's divisor: the window clipped to the padded image, or to the image
            const int64_t hp = std::min(y0 + s.kh, s.H + s.ph) - y0, wp = std::min(x0 + s.kw, s.W + s.pw) - x0;
            inv = 1.f / static_cast<float>(count_include_pad && !adaptive ? hp * wp : (yhi - ylo) * (xhi - xlo));
        }
        store(out, a, inv, s.C, kind);  // in place for float32
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
        if (avx512) pool_row_avx512(in, out, s, kind, count_include_pad, row / s.Ho, row % s.Ho, acc.data());
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
