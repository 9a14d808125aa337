#include "channel_affine.h"

#include "activation.h"
#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

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

// GroupNorm in three passes over pixel chunks, each pass vectorised over the channels (a group of
// 8 channels per task ran its loops 8 floats long, scalar: 1.7 ms for 256 channels at 56×56).
// sum_rows: out[c] = Σ_p (x[p][c] - centre[c])^(2 if centred), in float over one chunk of pixels
// (their partial sums then add up in double across chunks).
inline __attribute__((always_inline)) void sum_rows_body(const float* x, int64_t rows, int64_t C, int64_t ldx,
                                                         const float* centre, bool centred, float* out) {
    for (int64_t c = 0; c < C; ++c) out[c] = 0.0f;
    for (int64_t p = 0; p < rows; ++p) {
        const float* in = x + p * ldx;
        if (centred) {
            for (int64_t c = 0; c < C; ++c) out[c] += (in[c] - centre[c]) * (in[c] - centre[c]);
        } else {
            for (int64_t c = 0; c < C; ++c) out[c] += in[c];
        }
    }
}
BASISRT_AVX512 void sum_rows_avx512(const float* x, int64_t rows, int64_t C, int64_t ldx, const float* centre,
                                    bool centred, float* out) {
    sum_rows_body(x, rows, C, ldx, centre, centred, out);
}
BASISRT_NARROW void sum_rows_narrow(const float* x, int64_t rows, int64_t C, int64_t ldx, const float* centre,
                                    bool centred, float* out) {
    sum_rows_body(x, rows, C, ldx, centre, centred, out);
}
// y = clamp((x - mean[c]) · a[c] + shift[c]) over rows of C channels (a = rstd · scale).
inline __attribute__((always_inline)) void normalize_rows_body(const float* x, float* y, int64_t rows, int64_t C,
                                                               int64_t ldx, int64_t ldy, const float* mean,
                                                               const float* a, const float* shift, Clamp k) {
    for (int64_t p = 0; p < rows; ++p) {
        const float* in = x + p * ldx;
        float* out = y + p * ldy;
        for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max((in[c] - mean[c]) * a[c] + shift[c], k.lo), k.hi);
    }
}
BASISRT_AVX512 void normalize_rows_avx512(const float* x, float* y, int64_t rows, int64_t C, int64_t ldx, int64_t ldy,
                                          const float* mean, const float* a, const float* shift, Clamp k) {
    normalize_rows_body(x, y, rows, C, ldx, ldy, mean, a, shift, k);
}
BASISRT_NARROW void normalize_rows_narrow(const float* x, float* y, int64_t rows, int64_t C, int64_t ldx, int64_t ldy,
                                          const float* mean, const float* a, const float* shift, Clamp k) {
    normalize_rows_body(x, y, rows, C, ldx, ldy, mean, a, shift, k);
}

}  // namespace

void group_norm_nhwc(const float* x, const float* scale, const float* shift, float* y, int64_t N, int64_t HW,
                     int64_t C, int64_t groups, int64_t ldx, int64_t ldy, float eps, Activation act, int num_threads,
                     float alpha) {
    if (ldx < C || ldy < C || C < 1 || groups < 1 || C % groups)
        throw std::invalid_argument("group_norm_nhwc: groups must divide C >= 1, and a pixel stride be >= C");
    if (N == 0 || HW == 0) return;
    const int64_t cg = C / groups, chunk = std::max<int64_t>(1, kPixelsPerTask * 64 / std::max<int64_t>(C, 64));
    const int64_t chunks = (HW + chunk - 1) / chunk;  // per image
    const bool wide = use_avx512();
    std::vector<float> part(N * chunks * C), mean(N * C), a(N * C);  // mean and a per image and channel
    // Pass 1 (centred false) and 2: per chunk and channel, the sum or the squared deviations.
    auto sums = [&](bool centred) {
        parallel_for(N * chunks, num_threads, [&](int64_t t) {
            const int64_t n = t / chunks, p0 = t % chunks * chunk, rows = std::min(chunk, HW - p0);
            const float* in = x + (n * HW + p0) * ldx;
            if (wide) sum_rows_avx512(in, rows, C, ldx, mean.data() + n * C, centred, part.data() + t * C);
            else sum_rows_narrow(in, rows, C, ldx, mean.data() + n * C, centred, part.data() + t * C);
        });
    };
    auto per_group = [&](int64_t n, int64_t g) {  // Σ over the image's chunks and the group's channels
        double s = 0.0;
        for (int64_t k = 0; k < chunks; ++k)
            for (int64_t c = g * cg; c < (g + 1) * cg; ++c) s += part[(n * chunks + k) * C + c];
        return s / (static_cast<double>(HW) * static_cast<double>(cg));
    };
    sums(false);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < groups; ++g) {
            const float m = static_cast<float>(per_group(n, g));
            for (int64_t c = g * cg; c < (g + 1) * cg; ++c) mean[n * C + c] = m;
        }
    sums(true);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < groups; ++g) {
            const double rstd = 1.0 / std::sqrt(per_group(n, g) + static_cast<double>(eps));
            for (int64_t c = g * cg; c < (g + 1) * cg; ++c) a[n * C + c] = static_cast<float>(rstd * scale[c]);
        }
    const Clamp k = clamp_of(act);
    parallel_for(N * chunks, num_threads, [&](int64_t t) {
        const int64_t n = t / chunks, p0 = t % chunks * chunk, rows = std::min(chunk, HW - p0);
        const float* in = x + (n * HW + p0) * ldx;
        float* out = y + (n * HW + p0) * ldy;
        if (wide) normalize_rows_avx512(in, out, rows, C, ldx, ldy, mean.data() + n * C, a.data() + n * C, shift, k);
        else normalize_rows_narrow(in, out, rows, C, ldx, ldy, mean.data() + n * C, a.data() + n * C, shift, k);
        activate_rows(out, rows, C, ldy, act, alpha);
    });
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
