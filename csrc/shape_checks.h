// Argument checks shared by the bindings and Program::add_op. Every geometry that reaches a kernel
// passes here first, so no argument combination reachable from Python divides by zero, overflows
// an index or reads outside a buffer: it throws std::invalid_argument (ValueError in Python).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

#include "eltwise.h"
#include "fused_conv.h"
#include "pool.h"

namespace basisrt {

// Bounds that keep every index product inside int64: any one size (H, W, C, kernel, stride,
// padding, dilation, groups, rank, batch) and the floats of one tensor.
constexpr int64_t kMaxExtent = int64_t(1) << 24;
constexpr int64_t kMaxElements = int64_t(1) << 40;
constexpr int kMaxThreads = 1024;

// The product of non-negative sizes; throws (naming `what`) past kMaxElements.
int64_t checked_elements(std::initializer_list<int64_t> dims, const std::string& what);

// One output extent of a conv / pool window (floor mode): (in + 2 pad - dil (k - 1) - 1) / stride + 1,
// or <= 0 when the window does not fit. Arguments already within kMaxExtent.
inline int64_t window_out(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil = 1) {
    const int64_t span = in + 2 * pad - dil * (k - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
}

// The same in PyTorch's ceil mode (pools): rounded up, but the last window starts inside the
// input or its left padding.
inline int64_t window_out_ceil(int64_t in, int64_t k, int64_t stride, int64_t pad) {
    const int64_t span = in + 2 * pad - k;
    if (span < 0) return 0;
    const int64_t out = (span + stride - 1) / stride + 1;
    return (out - 1) * stride >= in + pad ? out - 1 : out;
}

// A conv of shape s (Ho, Wo: the conv's own output, before a fused pool), `rank` 0 for dense.
void check_conv(const std::string& fn, const ConvShape& s, int64_t rank, bool residual);
// A pool of shape s, its output in floor or in ceil mode.
void check_pool(const std::string& fn, const PoolShape& s);
// An enum value the kernels know: a caller can cast any int to one (Python too: _C.Activation(42)).
void check_activation(const std::string& fn, Activation act);
void check_pool_kind(const std::string& fn, PoolKind kind);
void check_binary_op(const std::string& fn, BinaryOp op);
void check_threads(const std::string& fn, int64_t num_threads);

}  // namespace basisrt
