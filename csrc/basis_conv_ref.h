// Plain C++ reference of the fused basis conv (DESIGN §1, §2, §4).
//
// This is the oracle that optimised kernels are tested against: it favours clarity over
// speed. It has the loop structure of the fused kernel (per output pixel: the g*r basis
// responses T in a small local buffer, then the scaling conv from that buffer), so the
// N x g*r x H_out x W_out intermediate is never materialised. Everything accumulates in
// double; only the final y is rounded to float.
//
// Layouts (all NCHW / OIHW, C-contiguous, float32):
//   x      (N, C_in, H, W)
//   basis  (groups*r, C_in/groups, kh, kw)    B: the basis conv, same stride/pad/dilation/groups
//   scale  (C_out, r)                         A: grouped 1x1 conv; output channel o of group
//                                                j = o / (C_out/groups) reads basis channels
//                                                j*r .. j*r + r - 1
//   bias   (C_out) or nullptr
//   y      (N, C_out, H_out, W_out)
//
//   y[n,o,p] = bias[o] + sum_{k<r} A[o,k] * T[n, grp(o)*r + k, p],   T = conv(x, B).
#pragma once

#include <cstdint>

namespace basisrt {

struct BasisConvParams {
    int64_t N = 0;       // batch
    int64_t C_in = 0;    // input channels (all groups)
    int64_t H = 0;       // input height
    int64_t W = 0;       // input width
    int64_t C_out = 0;   // output channels (all groups)
    int64_t groups = 1;  // conv groups g: C_in % g == 0, C_out % g == 0
    int64_t r = 0;       // basis rank per group (basis has groups*r filters)
    int64_t kh = 1;      // kernel height
    int64_t kw = 1;      // kernel width
    int64_t stride_h = 1;
    int64_t stride_w = 1;
    int64_t dil_h = 1;
    int64_t dil_w = 1;
    // Zero padding. Top/left are explicit; bottom/right default (-1) to top/left (symmetric).
    int64_t pad_top = 0;
    int64_t pad_left = 0;
    int64_t pad_bottom = -1;
    int64_t pad_right = -1;
    // Output size: 0 = computed from the padded input,
    //   H_out = (H + pad_top + pad_bottom - dil_h*(kh-1) - 1) / stride_h + 1   (floor).
    // A given size must be >= 1 and no larger than the computed one (it may crop).
    int64_t H_out = 0;
    int64_t W_out = 0;
};

// Checks `p` (positive sizes, non-negative padding, divisibility by groups, output size >= 1,
// a given output size not beyond the padded input) and returns a copy with pad_bottom,
// pad_right, H_out and W_out filled in. Throws std::invalid_argument naming the problem.
BasisConvParams resolve_basis_conv_params(const BasisConvParams& p);

// Reference fused basis conv. `y` must hold N*C_out*H_out*W_out floats, with H_out/W_out as
// returned by resolve_basis_conv_params(p); every element of y is written. bias may be null.
// Throws std::invalid_argument on invalid params or null x/basis/scale/y.
void basis_conv2d_ref(const float* x, const float* basis, const float* scale, const float* bias,
                      float* y, const BasisConvParams& p);

}  // namespace basisrt
