// Plain C++ reference of the fused basis conv: see basis_conv_ref.h.
#include "basis_conv_ref.h"

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

namespace basisrt {

namespace {

[[noreturn]] void fail(const std::string& msg) {
    throw std::invalid_argument("basis_conv2d_ref: " + msg);
}

void require_positive(int64_t v, const char* name) {
    if (v < 1) fail(std::string(name) + " must be >= 1, got " + std::to_string(v));
}

void require_non_negative(int64_t v, const char* name) {
    if (v < 0) fail(std::string(name) + " must be >= 0, got " + std::to_string(v));
}

// Product of positive sizes, failing instead of overflowing int64.
int64_t checked_numel(std::initializer_list<int64_t> dims, const char* what) {
    int64_t n = 1;
    for (int64_t d : dims) {
        if (__builtin_mul_overflow(n, d, &n)) fail(std::string(what) + " has too many elements");
    }
    return n;
}

// Output extent along one axis of a conv over a zero-padded input (floor division),
// or <= 0 when the dilated kernel does not fit.
int64_t conv_out_size(int64_t in, int64_t pad_lo, int64_t pad_hi, int64_t k, int64_t dil,
                      int64_t stride) {
    const int64_t span = dil * (k - 1) + 1;  // extent of the dilated kernel (overflow-checked by caller)
    int64_t padded = 0;
    if (__builtin_add_overflow(in, pad_lo, &padded) || __builtin_add_overflow(padded, pad_hi, &padded))
        fail("input size plus padding overflows");
    if (padded < span) return 0;
    return (padded - span) / stride + 1;
}

}  // namespace

BasisConvParams resolve_basis_conv_params(const BasisConvParams& p_in) {
    BasisConvParams p = p_in;
    require_positive(p.N, "N (batch)");
    require_positive(p.C_in, "C_in");
    require_positive(p.H, "H (input height)");
    require_positive(p.W, "W (input width)");
    require_positive(p.C_out, "C_out");
    require_positive(p.groups, "groups");
    require_positive(p.r, "r (basis rank per group)");
    require_positive(p.kh, "kh (kernel height)");
    require_positive(p.kw, "kw (kernel width)");
    require_positive(p.stride_h, "stride_h");
    require_positive(p.stride_w, "stride_w");
    require_positive(p.dil_h, "dil_h (dilation)");
    require_positive(p.dil_w, "dil_w (dilation)");
    if (p.pad_bottom == -1) p.pad_bottom = p.pad_top;
    if (p.pad_right == -1) p.pad_right = p.pad_left;
    require_non_negative(p.pad_top, "pad_top");
    require_non_negative(p.pad_left, "pad_left");
    require_non_negative(p.pad_bottom, "pad_bottom");
    require_non_negative(p.pad_right, "pad_right");
    require_non_negative(p.H_out, "H_out (0 = computed)");
    require_non_negative(p.W_out, "W_out (0 = computed)");

    if (p.C_in % p.groups != 0)
        fail("groups (" + std::to_string(p.groups) + ") must divide C_in (" +
             std::to_string(p.C_in) + ")");
    if (p.C_out % p.groups != 0)
        fail("groups (" + std::to_string(p.groups) + ") must divide C_out (" +
             std::to_string(p.C_out) + ")");

    // Overflow guards for everything indexed below (sizes are small in practice).
    checked_numel({p.N, p.C_in, p.H, p.W}, "x");
    checked_numel({p.groups, p.r, p.C_in / p.groups, p.kh, p.kw}, "basis");
    checked_numel({p.C_out, p.r}, "scale");
    checked_numel({p.dil_h, p.kh}, "dilated kernel height");
    checked_numel({p.dil_w, p.kw}, "dilated kernel width");

    const int64_t h_fit = conv_out_size(p.H, p.pad_top, p.pad_bottom, p.kh, p.dil_h, p.stride_h);
    const int64_t w_fit = conv_out_size(p.W, p.pad_left, p.pad_right, p.kw, p.dil_w, p.stride_w);
    const std::string geom_h = "(H=" + std::to_string(p.H) + ", pad " + std::to_string(p.pad_top) +
                               "+" + std::to_string(p.pad_bottom) + ", kh=" + std::to_string(p.kh) +
                               ", dil_h=" + std::to_string(p.dil_h) +
                               ", stride_h=" + std::to_string(p.stride_h) + ")";
    const std::string geom_w = "(W=" + std::to_string(p.W) + ", pad " + std::to_string(p.pad_left) +
                               "+" + std::to_string(p.pad_right) + ", kw=" + std::to_string(p.kw) +
                               ", dil_w=" + std::to_string(p.dil_w) +
                               ", stride_w=" + std::to_string(p.stride_w) + ")";
    if (h_fit < 1)
        fail("output height would be < 1: dilated kernel larger than padded input " + geom_h);
    if (w_fit < 1)
        fail("output width would be < 1: dilated kernel larger than padded input " + geom_w);
    if (p.H_out == 0) {
        p.H_out = h_fit;
    } else if (p.H_out > h_fit) {
        fail("given H_out=" + std::to_string(p.H_out) + " exceeds the " + std::to_string(h_fit) +
             " rows the padded input allows " + geom_h);
    }
    if (p.W_out == 0) {
        p.W_out = w_fit;
    } else if (p.W_out > w_fit) {
        fail("given W_out=" + std::to_string(p.W_out) + " exceeds the " + std::to_string(w_fit) +
             " columns the padded input allows " + geom_w);
    }
    checked_numel({p.N, p.C_out, p.H_out, p.W_out}, "y");
    return p;
}

void basis_conv2d_ref(const float* x, const float* basis, const float* scale, const float* bias,
                      float* y, const BasisConvParams& params) {
    if (x == nullptr) fail("x is null");
    if (basis == nullptr) fail("basis is null");
    if (scale == nullptr) fail("scale is null");
    if (y == nullptr) fail("y is null");
    const BasisConvParams p = resolve_basis_conv_params(params);

    const int64_t g = p.groups;
    const int64_t r = p.r;
    const int64_t cin_g = p.C_in / g;    // input channels per group
    const int64_t cout_g = p.C_out / g;  // output channels per group
    const int64_t R = g * r;             // basis channels (all groups)

    // Strides of the C-contiguous tensors.
    const int64_t x_sc = p.H * p.W, x_sn = p.C_in * x_sc;
    const int64_t b_sc = p.kh * p.kw, b_so = cin_g * b_sc;
    const int64_t y_sc = p.H_out * p.W_out, y_sn = p.C_out * y_sc;

    std::vector<double> T(static_cast<size_t>(R));  // basis responses at one output pixel

    for (int64_t n = 0; n < p.N; ++n) {
        const float* xn = x + n * x_sn;
        for (int64_t oh = 0; oh < p.H_out; ++oh) {
            for (int64_t ow = 0; ow < p.W_out; ++ow) {
                // Top-left corner of the receptive field in (unpadded) input coordinates.
                const int64_t ih0 = oh * p.stride_h - p.pad_top;
                const int64_t iw0 = ow * p.stride_w - p.pad_left;

                // 1) Basis conv at this pixel: T[b] = sum_{c,i,j} x[grp(b)*cin_g + c, ih, iw] * B[b,c,i,j].
                for (int64_t b = 0; b < R; ++b) {
                    const int64_t grp = b / r;
                    const float* xg = xn + grp * cin_g * x_sc;
                    const float* Bb = basis + b * b_so;
                    double acc = 0.0;
                    for (int64_t c = 0; c < cin_g; ++c) {
                        for (int64_t i = 0; i < p.kh; ++i) {
                            const int64_t ih = ih0 + i * p.dil_h;
                            if (ih < 0 || ih >= p.H) continue;  // zero padding
                            for (int64_t j = 0; j < p.kw; ++j) {
                                const int64_t iw = iw0 + j * p.dil_w;
                                if (iw < 0 || iw >= p.W) continue;  // zero padding
                                acc += static_cast<double>(xg[c * x_sc + ih * p.W + iw]) *
                                       static_cast<double>(Bb[c * b_sc + i * p.kw + j]);
                            }
                        }
                    }
                    T[static_cast<size_t>(b)] = acc;
                }

                // 2) Scaling conv from the local buffer: y[o] = bias[o] + sum_k A[o,k] * T[grp(o)*r + k].
                for (int64_t o = 0; o < p.C_out; ++o) {
                    const int64_t grp = o / cout_g;
                    const double* Tg = T.data() + grp * r;
                    const float* Ao = scale + o * r;
                    double acc = bias ? static_cast<double>(bias[o]) : 0.0;
                    for (int64_t k = 0; k < r; ++k) acc += static_cast<double>(Ao[k]) * Tg[k];
                    y[n * y_sn + o * y_sc + oh * p.W_out + ow] = static_cast<float>(acc);
                }
            }
        }
    }
}

}  // namespace basisrt
