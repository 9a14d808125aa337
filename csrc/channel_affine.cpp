#include "channel_affine.h"

#include "activation.h"
#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <cmath>
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

// Two passes over each pixel (mean, then the squared deviations: no cancellation), each summed in
// kLanes partial sums that GCC keeps in vector registers.
constexpr int kLanes = 16;
inline __attribute__((always_inline)) float lane_sum(const float* in, int64_t C, float mean, bool centred) {
    float acc[kLanes] = {};
    int64_t c = 0;
    for (; c + kLanes <= C; c += kLanes)
        for (int j = 0; j < kLanes; ++j) {
            const float d = centred ? in[c + j] - mean : in[c + j];
            acc[j] += centred ? d * d : d;
        }
    float s = 0.0f;
    for (int j = 0; j < kLanes; ++j) s += acc[j];
    for (; c < C; ++c) {
        const float d = centred ? in[c] - mean : in[c];
        s += centred ? d * d : d;
    }
    return s;
}
// A clamp activation (ReLU, ReLU6) inline, as in the affine map; activate_rows does the others.
inline __attribute__((always_inline)) void norm_rows_body(const float* x, const float* scale, const float* shift,
                                                          float* y, int64_t rows, int64_t C, int64_t ldx,
                                                          int64_t ldy, float eps, Clamp k) {
    const float inv_c = 1.0f / static_cast<float>(C);
    for (int64_t p = 0; p < rows; ++p) {
        const float* in = x + p * ldx;
        float* out = y + p * ldy;
        const float mean = lane_sum(in, C, 0.0f, false) * inv_c;
        const float rstd = 1.0f / std::sqrt(lane_sum(in, C, mean, true) * inv_c + eps);
        for (int64_t c = 0; c < C; ++c)
            out[c] = std::min(std::max((in[c] - mean) * rstd * scale[c] + shift[c], k.lo), k.hi);
    }
}
BASISRT_AVX512 void norm_rows_avx512(const float* x, const float* scale, const float* shift, float* y, int64_t rows,
                                     int64_t C, int64_t ldx, int64_t ldy, float eps, Clamp k) {
    norm_rows_body(x, scale, shift, y, rows, C, ldx, ldy, eps, k);
}
BASISRT_AVX2 void norm_rows_avx2(const float* x, const float* scale, const float* shift, float* y, int64_t rows,
                                 int64_t C, int64_t ldx, int64_t ldy, float eps, Clamp k) {
    norm_rows_body(x, scale, shift, y, rows, C, ldx, ldy, eps, k);
}
BASISRT_NARROW void norm_rows_narrow(const float* x, const float* scale, const float* shift, float* y, int64_t rows,
                                     int64_t C, int64_t ldx, int64_t ldy, float eps, Clamp k) {
    norm_rows_body(x, scale, shift, y, rows, C, ldx, ldy, eps, k);
}

// One image's group: its HW pixels × cg channels (at x + p·ldx, y + p·ldy). Mean, then the
// squared deviations (no cancellation), each summed per pixel in lanes and across pixels in
// double: a group holds up to millions of values.
inline __attribute__((always_inline)) void group_norm_body(const float* x, const float* scale, const float* shift,
                                                           float* y, int64_t HW, int64_t cg, int64_t ldx,
                                                           int64_t ldy, float eps, Clamp k) {
    double sum = 0.0;
    for (int64_t p = 0; p < HW; ++p) sum += lane_sum(x + p * ldx, cg, 0.0f, false);
    const double count = static_cast<double>(HW) * static_cast<double>(cg);
    const float mean = static_cast<float>(sum / count);
    double dev = 0.0;
    for (int64_t p = 0; p < HW; ++p) dev += lane_sum(x + p * ldx, cg, mean, true);
    const float rstd = static_cast<float>(1.0 / std::sqrt(dev / count + static_cast<double>(eps)));
    for (int64_t p = 0; p < HW; ++p) {
        const float* in = x + p * ldx;
        float* out = y + p * ldy;
        for (int64_t c = 0; c < cg; ++c)
            out[c] = std::min(std::max((in[c] - mean) * rstd * scale[c] + shift[c], k.lo), k.hi);
    }
}
BASISRT_AVX512 void group_norm_avx512(const float* x, const float* scale, const float* shift, float* y, int64_t HW,
                                      int64_t cg, int64_t ldx, int64_t ldy, float eps, Clamp k) {
    group_norm_body(x, scale, shift, y, HW, cg, ldx, ldy, eps, k);
}
BASISRT_NARROW void group_norm_narrow(const float* x, const float* scale, const float* shift, float* y, int64_t HW,
                                      int64_t cg, int64_t ldx, int64_t ldy, float eps, Clamp k) {
    group_norm_body(x, scale, shift, y, HW, cg, ldx, ldy, eps, k);
}

}  // namespace

void group_norm_nhwc(const float* x, const float* scale, const float* shift, float* y, int64_t N, int64_t HW,
                     int64_t C, int64_t groups, int64_t ldx, int64_t ldy, float eps, Activation act, int num_threads,
                     float alpha) {
    if (ldx < C || ldy < C || C < 1 || groups < 1 || C % groups)
        throw std::invalid_argument("group_norm_nhwc: groups must divide C >= 1, and a pixel stride be >= C");
    const int64_t cg = C / groups;
    const Clamp k = clamp_of(act);
    // One task per image and group; other activations after each image's groups are all normalised.
    parallel_for(N * groups, num_threads, [&](int64_t t) {
        const int64_t n = t / groups, g = t % groups;
        const float* in = x + n * HW * ldx + g * cg;
        float* out = y + n * HW * ldy + g * cg;
        if (use_avx512()) group_norm_avx512(in, scale + g * cg, shift + g * cg, out, HW, cg, ldx, ldy, eps, k);
        else group_norm_narrow(in, scale + g * cg, shift + g * cg, out, HW, cg, ldx, ldy, eps, k);
    });
    parallel_for(N, num_threads, [&](int64_t n) { activate_rows(y + n * HW * ldy, HW, C, ldy, act, alpha); });
}

void channel_norm_nhwc(const float* x, const float* scale, const float* shift, float* y, int64_t P, int64_t C,
                       int64_t ldx, int64_t ldy, float eps, Activation act, int num_threads, float alpha) {
    if (ldx < C || ldy < C || C < 1) throw std::invalid_argument("channel_norm_nhwc: C < 1 or a pixel stride < C");
    const int64_t per_task = std::max<int64_t>(1, kPixelsPerTask * 64 / std::max<int64_t>(C, 64));
    const int64_t tasks = (P + per_task - 1) / per_task;
    parallel_for(tasks, num_threads, [&](int64_t t) {
        const int64_t p0 = t * per_task, rows = std::min(per_task, P - p0);
        const Clamp k = clamp_of(act);
        if (use_avx512()) {
            norm_rows_avx512(x + p0 * ldx, scale, shift, y + p0 * ldy, rows, C, ldx, ldy, eps, k);
        } else if (use_avx2_fma()) {
            norm_rows_avx2(x + p0 * ldx, scale, shift, y + p0 * ldy, rows, C, ldx, ldy, eps, k);
        } else {
            norm_rows_narrow(x + p0 * ldx, scale, shift, y + p0 * ldy, rows, C, ldx, ldy, eps, k);
        }
        activate_rows(y + p0 * ldy, rows, C, ldy, act, alpha);
    });
}

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
