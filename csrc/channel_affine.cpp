#include "channel_affine.h"

#include "activation.h"
#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <stdexcept>

namespace basisrt {
namespace {

constexpr int64_t kPixelsPerTask = 256;

// The channel loop is contiguous and branch-free, which GCC vectorises in each build (simd.h).
inline __attribute__((always_inline)) void affine_rows_body(const float* x, const float* scale, const float* shift,
                                                            float* y, int64_t rows, int64_t C, int64_t ldx,
                                                            int64_t ldy, Activation act) {
    const Clamp k = clamp_of(act);
    for (int64_t p = 0; p < rows; ++p) {
        const float* in = x + p * ldx;
        float* out = y + p * ldy;
        for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(in[c] * scale[c] + shift[c], k.lo), k.hi);
    }
}
BASISRT_AVX512 void affine_rows_avx512(const float* x, const float* scale, const float* shift, float* y,
                                       int64_t rows, int64_t C, int64_t ldx, int64_t ldy, Activation act) {
    affine_rows_body(x, scale, shift, y, rows, C, ldx, ldy, act);
}
BASISRT_NARROW void affine_rows_narrow(const float* x, const float* scale, const float* shift, float* y,
                                       int64_t rows, int64_t C, int64_t ldx, int64_t ldy, Activation act) {
    affine_rows_body(x, scale, shift, y, rows, C, ldx, ldy, act);
}

}  // namespace

void channel_affine_nhwc(const float* x, const float* scale, const float* shift, float* y, int64_t P, int64_t C,
                         int64_t ldx, int64_t ldy, Activation act, int num_threads, float alpha) {
    if (ldx < C || ldy < C) throw std::invalid_argument("channel_affine_nhwc: a pixel stride is smaller than C");
    const int64_t tasks = (P + kPixelsPerTask - 1) / kPixelsPerTask;
    parallel_for(tasks, num_threads, [&](int64_t t) {
        const int64_t p0 = t * kPixelsPerTask, rows = std::min(kPixelsPerTask, P - p0);
        if (use_avx512()) {
            affine_rows_avx512(x + p0 * ldx, scale, shift, y + p0 * ldy, rows, C, ldx, ldy, act);
        } else {
            affine_rows_narrow(x + p0 * ldx, scale, shift, y + p0 * ldy, rows, C, ldx, ldy, act);
        }
        activate_rows(y + p0 * ldy, rows, C, ldy, act, alpha);
    });
}

}  // namespace basisrt
