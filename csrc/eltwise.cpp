#include "eltwise.h"

#include "activation.h"
#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

namespace basisrt {
namespace {

constexpr int64_t kPixelsPerTask = 256;

// Contiguous, branch-free channel loops: GCC vectorises them in each build (simd.h).
inline __attribute__((always_inline)) void eltwise_rows_body(const float* a, const float* b, float* y, int64_t p0,
                                                             int64_t rows, int64_t span, int64_t C, int64_t lda,
                                                             int64_t ldb, int64_t ldy, BinaryOp op, Broadcast bc,
                                                             Activation act) {
    const Clamp k = clamp_of(act);
    for (int64_t p = p0; p < p0 + rows; ++p) {
        const float* x = a + p * lda;
        const float* z = b + (bc == Broadcast::image || bc == Broadcast::row ? p / span : p) * ldb;
        float* out = y + p * ldy;
        if (bc == Broadcast::channel) {
            const float s = z[0];
            if (op == BinaryOp::add) {
                for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(x[c] + s, k.lo), k.hi);
            } else if (op == BinaryOp::sub) {
                for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(x[c] - s, k.lo), k.hi);
            } else if (op == BinaryOp::div) {
                for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(x[c] / s, k.lo), k.hi);
            } else {
                for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(x[c] * s, k.lo), k.hi);
            }
        } else if (op == BinaryOp::add) {
            for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(x[c] + z[c], k.lo), k.hi);
        } else if (op == BinaryOp::sub) {
            for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(x[c] - z[c], k.lo), k.hi);
        } else if (op == BinaryOp::div) {
            for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(x[c] / z[c], k.lo), k.hi);
        } else {
            for (int64_t c = 0; c < C; ++c) out[c] = std::min(std::max(x[c] * z[c], k.lo), k.hi);
        }
    }
}
BASISRT_AVX512 void eltwise_rows_avx512(const float* a, const float* b, float* y, int64_t p0, int64_t rows, int64_t span,
                                        int64_t C, int64_t lda, int64_t ldb, int64_t ldy, BinaryOp op, Broadcast bc,
                                        Activation act) {
    eltwise_rows_body(a, b, y, p0, rows, span, C, lda, ldb, ldy, op, bc, act);
}
BASISRT_NARROW void eltwise_rows_narrow(const float* a, const float* b, float* y, int64_t p0, int64_t rows, int64_t span,
                                        int64_t C, int64_t lda, int64_t ldb, int64_t ldy, BinaryOp op, Broadcast bc,
                                        Activation act) {
    eltwise_rows_body(a, b, y, p0, rows, span, C, lda, ldb, ldy, op, bc, act);
}

// A channel shuffle of two groups (ShuffleNet's): out[2k] = in[a + k], out[2k + 1] = in[b + k],
// two contiguous runs zipped, which GCC vectorises with unpack instructions; the general loop
// gathered one float at a time.
inline __attribute__((always_inline)) void zip2_rows_body(const float* x, float* y, int64_t p0, int64_t p1,
                                                          int64_t half, int64_t a, int64_t b, int64_t ldx,
                                                          int64_t ldy) {
    for (int64_t p = p0; p < p1; ++p) {
        const float *in0 = x + p * ldx + a, *in1 = x + p * ldx + b;
        float* out = y + p * ldy;
        for (int64_t k = 0; k < half; ++k) {
            out[2 * k] = in0[k];
            out[2 * k + 1] = in1[k];
        }
    }
}
BASISRT_AVX512 void zip2_rows_avx512(const float* x, float* y, int64_t p0, int64_t p1, int64_t half, int64_t a,
                                     int64_t b, int64_t ldx, int64_t ldy) {
    zip2_rows_body(x, y, p0, p1, half, a, b, ldx, ldy);
}
BASISRT_NARROW void zip2_rows_narrow(const float* x, float* y, int64_t p0, int64_t p1, int64_t half, int64_t a,
                                     int64_t b, int64_t ldx, int64_t ldy) {
    zip2_rows_body(x, y, p0, p1, half, a, b, ldx, ldy);
}

// Whether index (C_out entries) zips two contiguous runs: index[2k] = a + k, index[2k+1] = b + k.
bool is_zip2(const int64_t* index, int64_t C_out) {
    if (C_out < 4 || C_out % 2) return false;
    for (int64_t k = 1; k < C_out / 2; ++k)
        if (index[2 * k] != index[0] + k || index[2 * k + 1] != index[1] + k) return false;
    return true;
}

}  // namespace

void eltwise_nhwc(const float* a, const float* b, float* y, int64_t P, int64_t span, int64_t C, int64_t lda,
                  int64_t ldb, int64_t ldy, BinaryOp op, Broadcast broadcast, Activation act, float alpha,
                  int num_threads) {
    if (lda < C || ldb < (broadcast == Broadcast::channel ? 1 : C) || ldy < C || span < 1 || P % span)
        throw std::invalid_argument("eltwise_nhwc: bad pixel strides or pixels per image");
    const int64_t tasks = (P + kPixelsPerTask - 1) / kPixelsPerTask;
    parallel_for(tasks, num_threads, [&](int64_t t) {
        const int64_t p0 = t * kPixelsPerTask, rows = std::min(kPixelsPerTask, P - p0);
        if (use_avx512()) {
            eltwise_rows_avx512(a, b, y, p0, rows, span, C, lda, ldb, ldy, op, broadcast, act);
        } else {
            eltwise_rows_narrow(a, b, y, p0, rows, span, C, lda, ldb, ldy, op, broadcast, act);
        }
        activate_rows(y + p0 * ldy, rows, C, ldy, act, alpha);
    });
}

void channel_gather_nhwc(const float* x, const int64_t* index, float* y, int64_t P, int64_t C_out, int64_t ldx,
                         int64_t ldy, int num_threads) {
    // Runs of consecutive source channels copy as one block (a slice is one run, a shuffle of
    // g groups C / g runs of one channel each).
    std::vector<std::pair<int64_t, int64_t>> runs;  // (first output channel, run length)
    for (int64_t c = 0; c < C_out; ++c)
        if (c > 0 && index[c] == index[c - 1] + 1) ++runs.back().second;
        else runs.emplace_back(c, 1);
    const int64_t tasks = (P + kPixelsPerTask - 1) / kPixelsPerTask;
    const bool zip2 = is_zip2(index, C_out);
    parallel_for(tasks, num_threads, [&](int64_t t) {
        const int64_t p0 = t * kPixelsPerTask, p1 = std::min(P, p0 + kPixelsPerTask);
        if (zip2) {
            if (use_avx512()) return zip2_rows_avx512(x, y, p0, p1, C_out / 2, index[0], index[1], ldx, ldy);
            return zip2_rows_narrow(x, y, p0, p1, C_out / 2, index[0], index[1], ldx, ldy);
        }
        for (int64_t p = p0; p < p1; ++p) {
            const float* in = x + p * ldx;
            float* out = y + p * ldy;
            if (runs.size() * 4 > static_cast<size_t>(C_out)) {  // short runs: one channel at a time
                for (int64_t c = 0; c < C_out; ++c) out[c] = in[index[c]];
            } else {
                for (const auto& [c, n] : runs) std::memcpy(out + c, in + index[c], n * sizeof(float));
            }
        }
    });
}

void pixel_gather_nhwc(const float* x, const int64_t* index, const int64_t* offset, float* y, int64_t N,
                       int64_t P_in, int64_t P_out, int64_t C, int64_t ldx, int64_t ldy, int num_threads) {
    const int64_t P = N * P_out, tasks = (P + kPixelsPerTask - 1) / kPixelsPerTask;
    parallel_for(tasks, num_threads, [&](int64_t t) {
        const int64_t p0 = t * kPixelsPerTask, p1 = std::min(P, p0 + kPixelsPerTask);
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t n = p / P_out, q = p - n * P_out, src = index[q];
            float* out = y + p * ldy;
            if (src < 0) std::memset(out, 0, C * sizeof(float));
            else std::memcpy(out, x + (n * P_in + src) * ldx + (offset ? offset[q] : 0), C * sizeof(float));
        }
    });
}

}  // namespace basisrt
