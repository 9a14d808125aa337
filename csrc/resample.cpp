#include "resample.h"

#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace basisrt {
namespace {

// Output rows per task: about this many output floats, so that small maps are not split into
// tasks that cost more to hand out than to run.
constexpr int64_t kFloatsPerTask = 16 * 1024;

// Output rows [r0, r1) of the batch (row r: image r / Ho, row r % Ho). Each row first sums its T
// input rows into `row` (W × C), then each output pixel sums its T pixels of that row: 2·T reads
// per output float where the direct T×T sum takes T². Channel loops are contiguous and branch
// free, so GCC vectorises them in each build (simd.h).
inline __attribute__((always_inline)) void resample_rows_body(const float* x, float* y, int64_t r0, int64_t r1,
                                                              int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                                                              int64_t C, int64_t ldx, int64_t ldy,
                                                              const ResampleTaps& t, float* row) {
    const int64_t T = t.taps;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / Ho, oy = r % Ho;
        const float* img = x + n * H * W * ldx;
        for (int64_t ix = 0; ix < W; ++ix) {
            float* __restrict dst = row + ix * C;
            const float* __restrict src = img + (t.iy[oy * T] * W + ix) * ldx;
            const float w0 = t.wy[oy * T];
            for (int64_t c = 0; c < C; ++c) dst[c] = w0 * src[c];
            for (int64_t a = 1; a < T; ++a) {
                const float* __restrict s = img + (t.iy[oy * T + a] * W + ix) * ldx;
                const float w = t.wy[oy * T + a];
                for (int64_t c = 0; c < C; ++c) dst[c] += w * s[c];
            }
        }
        float* out = y + r * Wo * ldy;
        for (int64_t ox = 0; ox < Wo; ++ox) {
            float* __restrict dst = out + ox * ldy;
            const float* __restrict s0 = row + t.ix[ox * T] * C;
            const float w0 = t.wx[ox * T];
            for (int64_t c = 0; c < C; ++c) dst[c] = w0 * s0[c];
            for (int64_t b = 1; b < T; ++b) {
                const float* __restrict s = row + t.ix[ox * T + b] * C;
                const float w = t.wx[ox * T + b];
                for (int64_t c = 0; c < C; ++c) dst[c] += w * s[c];
            }
        }
    }
}
BASISRT_AVX512 void resample_rows_avx512(const float* x, float* y, int64_t r0, int64_t r1, int64_t H, int64_t W,
                                         int64_t Ho, int64_t Wo, int64_t C, int64_t ldx, int64_t ldy,
                                         const ResampleTaps& t, float* row) {
    resample_rows_body(x, y, r0, r1, H, W, Ho, Wo, C, ldx, ldy, t, row);
}
BASISRT_NARROW void resample_rows_narrow(const float* x, float* y, int64_t r0, int64_t r1, int64_t H, int64_t W,
                                         int64_t Ho, int64_t Wo, int64_t C, int64_t ldx, int64_t ldy,
                                         const ResampleTaps& t, float* row) {
    resample_rows_body(x, y, r0, r1, H, W, Ho, Wo, C, ldx, ldy, t, row);
}

}  // namespace

void resample_nhwc(const float* x, float* y, int64_t N, int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t C,
                   int64_t ldx, int64_t ldy, const ResampleTaps& t, int num_threads) {
    const int64_t rows = N * Ho;
    if (rows == 0 || Wo == 0 || C == 0) return;
    const int64_t per_task = std::max<int64_t>(1, kFloatsPerTask / std::max<int64_t>(1, Wo * C));
    const int64_t tasks = (rows + per_task - 1) / per_task;
    parallel_for(tasks, num_threads, [&](int64_t k) {
        thread_local std::vector<float> row;  // one input row's worth, summed over its taps
        row.resize(std::max<size_t>(row.size(), W * C));
        const int64_t r0 = k * per_task, r1 = std::min(rows, r0 + per_task);
        if (use_avx512()) return resample_rows_avx512(x, y, r0, r1, H, W, Ho, Wo, C, ldx, ldy, t, row.data());
        resample_rows_narrow(x, y, r0, r1, H, W, Ho, Wo, C, ldx, ldy, t, row.data());
    });
}

void check_resample_axis(const std::string& fn, const char* axis, const std::vector<int64_t>& index,
                         const std::vector<float>& weight, int64_t taps, int64_t in, int64_t out) {
    const std::string name(axis);
    if (taps < 1 || taps > 16) throw std::invalid_argument(fn + ": taps must be in [1, 16]");
    if (static_cast<int64_t>(index.size()) != out * taps || weight.size() != index.size())
        throw std::invalid_argument(fn + ": " + name + " index and weight must have " + std::to_string(out) + " x " +
                                    std::to_string(taps) + " entries, got " + std::to_string(index.size()) + " and " +
                                    std::to_string(weight.size()));
    for (size_t k = 0; k < index.size(); ++k) {
        if (index[k] < 0 || index[k] >= in)
            throw std::invalid_argument(fn + ": " + name + " index[" + std::to_string(k) + "] = " +
                                        std::to_string(index[k]) + " is outside [0, " + std::to_string(in) + ")");
        if (!std::isfinite(weight[k]))
            throw std::invalid_argument(fn + ": " + name + " weight[" + std::to_string(k) + "] is not finite");
    }
}

}  // namespace basisrt
