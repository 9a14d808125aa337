#include "softmax.h"

#include "activation.h"
#include "pool.h"
#include "thread_pool.h"

#include <algorithm>
#include <vector>

namespace basisrt {
namespace {

// One set of softmaxes: `count` members at stride `step` (floats), each a vector of `len` floats
// (len separate softmaxes side by side: the channels of a pixel set, or the m of a channel group).
// y = exp(x - max) / sum over the members, per lane. y may be x (each pass reads what it writes).
void softmax_set(const float* x, float* y, int64_t count, int64_t step_x, int64_t step_y, int64_t len, float* acc) {
    std::copy(x, x + len, acc);  // the running max (NaN sticks)
    for (int64_t k = 1; k < count; ++k) {
        const float* in = x + k * step_x;
        for (int64_t m = 0; m < len; ++m) acc[m] = max_nan(acc[m], in[m]);
    }
    for (int64_t k = 0; k < count; ++k) {
        const float* in = x + k * step_x;
        float* out = y + k * step_y;
        for (int64_t m = 0; m < len; ++m) out[m] = in[m] - acc[m];
    }
    exp_rows(y, count, len, step_y);
    std::fill(acc, acc + len, 0.f);
    for (int64_t k = 0; k < count; ++k) {
        const float* out = y + k * step_y;
        for (int64_t m = 0; m < len; ++m) acc[m] += out[m];
    }
    for (int64_t m = 0; m < len; ++m) acc[m] = 1.f / acc[m];
    for (int64_t k = 0; k < count; ++k) {
        float* out = y + k * step_y;
        for (int64_t m = 0; m < len; ++m) out[m] *= acc[m];
    }
}

// One softmax over n contiguous floats.
void softmax_row(const float* x, float* y, int64_t n) {
    float mx = x[0];
    for (int64_t k = 1; k < n; ++k) mx = max_nan(mx, x[k]);
    for (int64_t k = 0; k < n; ++k) y[k] = x[k] - mx;
    exp_rows(y, 1, n, n);
    float sum = 0.f;
    for (int64_t k = 0; k < n; ++k) sum += y[k];
    const float inv = 1.f / sum;
    for (int64_t k = 0; k < n; ++k) y[k] *= inv;
}

}  // namespace

void softmax_nhwc(const float* x, float* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t ldx, int64_t ldy,
                  SoftmaxAxis axis, int64_t groups, int num_threads) {
    if (N <= 0) return;
    if (axis == SoftmaxAxis::channels) {  // each pixel: groups members of C / groups channels
        const int64_t pixels = N * H * W, M = C / groups;
        constexpr int64_t kPixelsPerTask = 64;
        parallel_for((pixels + kPixelsPerTask - 1) / kPixelsPerTask, num_threads, [&](int64_t task) {
            thread_local std::vector<float> acc;
            acc.resize(std::max<size_t>(acc.size(), size_t(M)));
            for (int64_t p = task * kPixelsPerTask; p < std::min(pixels, (task + 1) * kPixelsPerTask); ++p) {
                if (M == 1)  // softmax(dim=1): one set of C contiguous members, vectorised along them
                    softmax_row(x + p * ldx, y + p * ldy, C);
                else
                    softmax_set(x + p * ldx, y + p * ldy, groups, M, M, M, acc.data());
            }
        });
        return;
    }
    // width: a set per row (N·H sets of W pixels); pixels: a set per image (N sets of H·W pixels)
    const int64_t sets = axis == SoftmaxAxis::width ? N * H : N, members = axis == SoftmaxAxis::width ? W : H * W;
    parallel_for(sets, num_threads, [&](int64_t s) {
        if (C == 1 && ldx == 1 && ldy == 1)  // a one-channel map (GCNet's attention logits): contiguous members
            return softmax_row(x + s * members, y + s * members, members);
        thread_local std::vector<float> acc;
        acc.resize(std::max<size_t>(acc.size(), size_t(C)));
        softmax_set(x + s * members * ldx, y + s * members * ldy, members, ldx, ldy, C, acc.data());
    });
}

}  // namespace basisrt
