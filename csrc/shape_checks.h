// Argument checks of the kernels, for every caller: the bindings and Program::add_op use them. Every
// geometry that reaches a kernel passes here first, so no argument combination reachable from Python
// divides by zero, overflows an index or reads outside a buffer: it throws std::invalid_argument
// (ValueError in Python), its message starting with `fn`, the entry point called.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "eltwise.h"
#include "softmax.h"
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
// input or its left padding; a window larger than the input still gives one output.
inline int64_t window_out_ceil(int64_t in, int64_t k, int64_t stride, int64_t pad) {
    const int64_t span = in + 2 * pad - k;
    if (span + stride - 1 < 0) return 0;
    const int64_t out = (span + stride - 1) / stride + 1;
    return (out - 1) * stride >= in + pad ? out - 1 : out;
}

// The pixel stride in elements (of elem_bytes each: 4 for float, 2 for bf16) of a 4-D NHWC array
// read or written in place, from its shape and its strides in bytes: C-contiguous, or a channel
// slice of a C-contiguous array (`big[..., a:b]`, a concatenation's part). Any other layout
// throws, naming the array `name`. An empty array: C.
int64_t nhwc_pixel_stride(const std::string& fn, const std::string& name, const int64_t (&shape)[4],
                          const int64_t (&strides)[4], int64_t elem_bytes = sizeof(float));

// A conv's fused pool: 1 (none) or 2 (2x2 max, stride 2). Checked before the conv's own output
// size (`pool` times the pooled one) is computed.
void check_fused_pool(const std::string& fn, int64_t pool);
// A conv of shape s (Ho, Wo: the conv's own output, before a fused pool), `rank` 0 for dense.
void check_conv(const std::string& fn, const ConvShape& s, int64_t rank, bool residual);
// A pool of shape s, its output in floor or in ceil mode.
void check_pool(const std::string& fn, const PoolShape& s);
// An enum value the kernels know: a caller can cast any int to one (Python too: _C.Activation(42)).
void check_activation(const std::string& fn, Activation act);
void check_pool_kind(const std::string& fn, PoolKind kind);
void check_binary_op(const std::string& fn, BinaryOp op);
// A softmax's axis, and its groups (channels: >= 1, dividing C; else 1).
void check_softmax(const std::string& fn, SoftmaxAxis axis, int64_t groups, int64_t C);
void check_threads(const std::string& fn, int64_t num_threads);

// How eltwise's second operand b (Hb x Wb x Cb per image) covers a (Ha x Wa x Ca): a's shape, one
// pixel per image (broadcast over the map), one channel per pixel (broadcast over the channels) or
// one pixel per row (broadcast over the row). Throws if it is none of them.
Broadcast eltwise_broadcast(const std::string& fn, int64_t Ha, int64_t Wa, int64_t Ca, int64_t Hb, int64_t Wb,
                            int64_t Cb);
// A channel gather's index: one entry per output channel (C_out), each an input channel in [0, C_in).
void check_channel_index(const std::string& fn, const std::vector<int64_t>& index, int64_t C_out, int64_t C_in);
// A pixel gather's index: one entry per output pixel (P_out), each an input pixel in [0, P_in) or -1
// (zeros).
void check_pixel_index(const std::string& fn, const std::vector<int64_t>& index, int64_t P_out, int64_t P_in);
// A pixel gather's channel offsets: one per output pixel, each block [offset, offset + C_out) within C_in.
void check_pixel_offsets(const std::string& fn, const std::vector<int64_t>& offset, int64_t P_out, int64_t C_in,
                         int64_t C_out);

}  // namespace basisrt
