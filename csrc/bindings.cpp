// The single pybind11 module of basisrt's C++ kernels: basisrt._C.
//
// Bindings only convert: a numpy array into the pointer, shape and pixel stride a kernel takes, an
// optional argument into a null pointer. Every rule about the arguments (geometry, layouts, enum
// values, thread counts, index ranges, packed weight sizes) lives in the C++ core, where C++
// callers get it too: csrc/shape_checks.h, packed_layout (fused_conv.h) and Program::add_op /
// Program::run. What stays here is what only an array has: its dtype, its strides, whether it is
// writeable, and that arrays passed side by side agree on the sizes the core takes once (out's
// batch is x's).
//
// Conventions:
//   * arrays are used in place, never copied: float32, C-contiguous or a channel slice of a
//     C-contiguous NHWC array (the plan passes torch tensors' numpy views and `out` is written);
//   * every error is a ValueError naming the entry point and the argument (the core throws
//     std::invalid_argument, which pybind11 turns into ValueError);
//   * the GIL is released while a kernel runs (kernels touch no Python objects).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "amx_conv.h"
#include "channel_affine.h"
#include "depthwise_conv.h"
#include "eltwise.h"
#include "fused_conv.h"
#include "grouped_conv.h"
#include "pool.h"
#include "program.h"
#include "resample.h"
#include "shape_checks.h"
#include "softmax.h"
#include "winograd_conv.h"

#ifndef BASISRT_C_VERSION  // setup.py passes basisrt.__version__, the one version string
#error "BASISRT_C_VERSION is not defined: build through setup.py"
#endif

namespace py = pybind11;

namespace {

using IntPair = std::pair<int64_t, int64_t>;

[[noreturn]] void value_error(const std::string& fn, const std::string& msg) {
    throw py::value_error(fn + ": " + msg);
}

// The data of a C-contiguous array of `numel` elements, used in place; `dtype_ok` says whether
// its dtype is the one `kind` names.
const void* checked_data(const std::string& fn, const py::array& a, const char* name, int64_t numel, bool dtype_ok,
                         const char* kind) {
    if (!dtype_ok || !(a.flags() & py::array::c_style))
        value_error(fn, std::string(name) + " must be a C-contiguous " + kind + " array");
    if (a.size() != numel)
        value_error(fn, std::string(name) + " has " + std::to_string(a.size()) + " elements, expected " +
                            std::to_string(numel));
    return a.data();
}

const float* f32_data(const std::string& fn, const py::array& a, const char* name, int64_t numel) {
    return static_cast<const float*>(
        checked_data(fn, a, name, numel, py::isinstance<py::array_t<float>>(a), "float32"));
}

// A 4-D float32 (or, where allowed, 16-bit: bfloat16 bits) NHWC array used in place; its layout is
// checked by nhwc_pixel_stride.
struct Nhwc {
    float* data;  // bf16 bits when bf16
    int64_t N, H, W, C;
    int64_t ld;  // pixel stride in elements
    bool bf16 = false;
};

bool is_16_bit(const py::array& a) {
    return py::isinstance<py::array_t<uint16_t>>(a) || py::isinstance<py::array_t<int16_t>>(a);
}

Nhwc nhwc(const std::string& fn, const py::array& a, const char* name, bool bf16_ok = false) {
    const bool bf16 = bf16_ok && is_16_bit(a);
    if ((!bf16 && !py::isinstance<py::array_t<float>>(a)) || a.ndim() != 4)
        value_error(fn, std::string(name) + (bf16_ok ? " must be a 4-D float32 or 16-bit (bfloat16 bits) NHWC array"
                                                     : " must be a 4-D float32 NHWC array"));
    const int64_t shape[4] = {a.shape(0), a.shape(1), a.shape(2), a.shape(3)};
    const int64_t strides[4] = {a.strides(0), a.strides(1), a.strides(2), a.strides(3)};
    const int64_t ld = basisrt::nhwc_pixel_stride(fn, name, shape, strides, bf16 ? 2 : sizeof(float));
    return {static_cast<float*>(const_cast<void*>(a.data())), shape[0], shape[1], shape[2], shape[3], ld, bf16};
}

void require_writeable(const std::string& fn, const py::array& out) {
    if (!out.writeable()) value_error(fn, "out must be writeable");
}

// A 1-D int64 array as a vector (the gathers' indices, which the core checks against the shapes).
std::vector<int64_t> int64_vector(const std::string& fn, const py::array& a, const char* name) {
    if (!py::isinstance<py::array_t<int64_t>>(a) || a.ndim() != 1)
        value_error(fn, std::string(name) + " must be a 1-D int64 array");
    const auto v = a.unchecked<int64_t, 1>();
    std::vector<int64_t> out(v.shape(0));
    for (py::ssize_t i = 0; i < v.shape(0); ++i) out[i] = v(i);
    return out;
}

struct PackedWeights {
    const float *B, *A, *bias, *winograd = nullptr;
};

// The packed weights of a conv of shape s (already checked), sized as the kernel reads them.
PackedWeights packed_weights(const std::string& fn, const basisrt::ConvShape& s, const py::array& B,
                             const std::optional<py::array>& A, const std::optional<py::array>& bias, int64_t rank,
                             const std::optional<py::array>& winograd = std::nullopt) {
    const basisrt::PackedLayout layout = basisrt::packed_layout(s, rank);
    PackedWeights w{f32_data(fn, B, "B (packed)", layout.b_floats()), nullptr, nullptr};
    if (rank) {
        if (!A) value_error(fn, "a low-rank conv (rank > 0) needs A");
        w.A = f32_data(fn, *A, "A (packed)", layout.a_floats());
    }
    if (bias) w.bias = f32_data(fn, *bias, "bias", s.C_out);
    if (winograd) {
        if (!basisrt::winograd_path(s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.groups, s.C_in, rank))
            value_error(fn, "winograd weights are for a conv on winograd_path (3x3, stride 1, dilation 1, groups 1, "
                            "input channels a multiple of 16, rank 0 or 16 and more, an AVX-512 CPU)");
        w.winograd = f32_data(fn, *winograd, "winograd", basisrt::winograd_floats(s.C_in, rank, s.C_out));
    }
    return w;
}

// The residual of a conv writing `out` (a null array when there is none), checked against out's shape.
Nhwc residual_of(const std::string& fn, const std::optional<py::array>& residual, const Nhwc& out,
                 bool bf16_ok = false) {
    if (!residual) return {nullptr, 0, 0, 0, 0, 0};
    const Nhwc rv = nhwc(fn, *residual, "residual", bf16_ok);
    if (rv.N != out.N || rv.H != out.H || rv.W != out.W || rv.C != out.C)
        value_error(fn, "residual must have out's shape");
    return rv;
}

void fused_conv_nhwc_py(const py::array& x, const py::array& B, const std::optional<py::array>& A,
                        const std::optional<py::array>& bias, const std::optional<py::array>& residual,
                        py::array& out, IntPair kernel, IntPair stride, IntPair padding, IntPair dilation,
                        int64_t groups, int64_t rank, basisrt::Activation act, int num_threads, int64_t pool,
                        float alpha, const std::optional<py::array>& winograd) {
    const std::string fn = "fused_conv_nhwc";
    const Nhwc xv = nhwc(fn, x, "x"), yv = nhwc(fn, out, "out");
    if (yv.N != xv.N) value_error(fn, "out batch differs from x batch");
    basisrt::check_fused_pool(fn, pool);  // before the conv's own output, pool times out's, is computed
    basisrt::ConvShape s{xv.N, xv.H, xv.W, xv.C, yv.H * pool, yv.W * pool, yv.C, kernel.first, kernel.second,
                         stride.first, stride.second, padding.first, padding.second, dilation.first, dilation.second,
                         groups, pool};
    basisrt::check_conv(fn, s, rank, residual.has_value());
    basisrt::check_activation(fn, act);
    basisrt::check_threads(fn, num_threads);
    const PackedWeights w = packed_weights(fn, s, B, A, bias, rank, winograd);
    const Nhwc rv = residual_of(fn, residual, yv);
    require_writeable(fn, out);
    if (s.N == 0) return;  // an empty batch: nothing to write
    s.ldx = xv.ld, s.ldy = yv.ld, s.ldr = rv.ld;
    py::gil_scoped_release release;
    basisrt::fused_conv_nhwc(xv.data, w.B, w.A, w.bias, rv.data, yv.data, s, rank, act, num_threads, alpha,
                             w.winograd);
}

void require_bf16(const std::string& fn) {
    if (std::string(basisrt::bf16_path()) == "none") value_error(fn, basisrt::kNoBf16);
}

// bf16 bits: numpy uint16 or int16.
const uint16_t* bf16_data(const std::string& fn, const py::array& a, const char* name, int64_t numel) {
    return static_cast<const uint16_t*>(checked_data(fn, a, name, numel, is_16_bit(a), "16-bit (bfloat16 bits)"));
}

struct Bf16Weights {
    const uint16_t *B, *A;
    const float* bias;
    const uint16_t* winograd = nullptr;
};

// The bf16 conv's packed weights (amx_conv.h's sizes) and its float32 bias, for a conv of shape s.
Bf16Weights bf16_weights(const std::string& fn, const basisrt::ConvShape& s, const py::array& B,
                         const std::optional<py::array>& A, const py::array& bias, int64_t rank,
                         const std::optional<py::array>& winograd) {
    const int64_t K = basisrt::amx_conv_k(s);
    const int64_t b_elems = basisrt::bf16_quad_path(rank) ? basisrt::quad_elems(K)
                                                           : basisrt::vnni_elems(K, rank ? rank : s.C_out);
    Bf16Weights w{bf16_data(fn, B, "B (packed)", b_elems), nullptr, f32_data(fn, bias, "bias", s.C_out)};
    if (rank) {
        if (!A) value_error(fn, "a low-rank conv (rank > 0) needs A");
        w.A = bf16_data(fn, *A, "A (packed)", basisrt::vnni_elems(basisrt::amx_pair_k(rank), s.C_out));
    }
    if (winograd) {
        if (!basisrt::winograd_bf16_path(s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.groups, s.C_in, rank))
            value_error(fn, "winograd weights are for a conv on winograd_bf16_path (3x3, stride 1, dilation 1, "
                            "input channels a multiple of 32, rank 0 or 10 and more, the AVX512-BF16 vector path)");
        w.winograd = bf16_data(fn, *winograd, "winograd", basisrt::winograd_bf16_elems(s.C_in, rank, s.C_out));
    }
    return w;
}

void fused_conv_bf16_nhwc_py(const py::array& x, const py::array& B, const std::optional<py::array>& A,
                             const py::array& bias, const std::optional<py::array>& residual, py::array& out,
                             IntPair kernel, IntPair stride, IntPair padding, IntPair dilation, int64_t rank,
                             basisrt::Activation act, int num_threads, float alpha,
                             const std::optional<py::array>& winograd, bool hilo) {
    const std::string fn = "fused_conv_bf16_nhwc";
    const Nhwc xv = nhwc(fn, x, "x", true), yv = nhwc(fn, out, "out", true);
    if (yv.N != xv.N) value_error(fn, "out batch differs from x batch");
    basisrt::ConvShape s{xv.N, xv.H, xv.W, xv.C, yv.H, yv.W, yv.C, kernel.first, kernel.second,
                         stride.first, stride.second, padding.first, padding.second, dilation.first, dilation.second,
                         1, 1};
    basisrt::check_conv(fn, s, rank, residual.has_value());
    basisrt::check_activation(fn, act);
    basisrt::check_threads(fn, num_threads);
    require_bf16(fn);
    const Bf16Weights w = bf16_weights(fn, s, B, A, bias, rank, winograd);
    const Nhwc rv = residual_of(fn, residual, yv, true);
    require_writeable(fn, out);
    if (s.N == 0) return;
    s.ldx = xv.ld, s.ldy = yv.ld, s.ldr = rv.ld;
    const basisrt::Bf16Io io{xv.bf16, rv.bf16, yv.bf16};
    py::gil_scoped_release release;
    basisrt::fused_conv_bf16_nhwc(xv.data, w.B, w.A, w.bias, rv.data, yv.data, s, rank, act, num_threads, alpha, io,
                                  w.winograd, hilo);
}

// w checked as a packing function's K x N float32 input.
void check_packing_input(const std::string& fn, const py::array& w) {
    if (!py::isinstance<py::array_t<float>>(w) || w.ndim() != 2 || !(w.flags() & py::array::c_style))
        value_error(fn, "w must be a C-contiguous 2-D float32 array (K x N)");
    if (w.shape(0) < 1 || w.shape(1) < 1) value_error(fn, "w must not be empty");
}

// w (K × N fp32) packed by `pack` into vnni_elems(K, N) bf16 bits (pack_bf16_vnni, pack_bf16_b)
py::array_t<uint16_t> pack_vnni_sized(const char* fn, const py::array& w,
                                      void (*pack)(const float*, int64_t, int64_t, uint16_t*)) {
    check_packing_input(fn, w);
    const int64_t K = w.shape(0), N = w.shape(1);
    py::array_t<uint16_t> out(basisrt::vnni_elems(K, N));
    pack(static_cast<const float*>(w.data()), K, N, out.mutable_data());
    return out;
}

py::array_t<uint16_t> pack_bf16_vnni_py(const py::array& w) {
    return pack_vnni_sized("pack_bf16_vnni", w, basisrt::pack_bf16_vnni);
}

py::array_t<uint16_t> pack_bf16_b_py(const py::array& w) { return pack_vnni_sized("pack_bf16_b", w, basisrt::pack_bf16_b); }

py::array_t<uint16_t> pack_bf16_quad_py(const py::array& w) {
    check_packing_input("pack_bf16_quad", w);
    const int64_t K = w.shape(0), N = w.shape(1);
    if (N > 8) value_error("pack_bf16_quad", "w must have at most 8 columns (a rank of 1 to 8)");
    py::array_t<uint16_t> out(basisrt::quad_elems(K));
    basisrt::pack_bf16_quad(static_cast<const float*>(w.data()), K, N, out.mutable_data());
    return out;
}

py::array_t<uint16_t> pack_winograd_bf16_py(const py::array& u, int64_t rank) {
    const char* fn = "pack_winograd_bf16";
    if (!py::isinstance<py::array_t<float>>(u) || u.ndim() != 3 || u.shape(0) != 16 || !(u.flags() & py::array::c_style))
        value_error(fn, "u must be a C-contiguous float32 array of 16 matrices (16 x C x n)");
    const int64_t C = u.shape(1), n = u.shape(2);
    if (C < 1 || C % basisrt::kAmxK || n < 1)
        value_error(fn, "u must have channels in multiples of 32 and at least one column");
    const bool quad = basisrt::bf16_quad_path(rank);
    if (quad && n > 8) value_error(fn, "a rank of 1 to 8 packs at most 8 columns");
    py::array_t<uint16_t> out(16 * (quad ? basisrt::quad_elems(C) : basisrt::vnni_elems(C, n)));
    basisrt::pack_winograd_bf16(static_cast<const float*>(u.data()), C, n, quad, out.mutable_data());
    return out;
}

void pool_nhwc_py(const py::array& x, py::array& out, IntPair kernel, IntPair stride, IntPair padding,
                  basisrt::PoolKind kind, bool count_include_pad, int num_threads) {
    const std::string fn = "pool_nhwc";
    const Nhwc xv = nhwc(fn, x, "x"), yv = nhwc(fn, out, "out");
    if (yv.N != xv.N || yv.C != xv.C) value_error(fn, "out batch or channels differ from x");
    basisrt::PoolShape s{xv.N, xv.H, xv.W, xv.C, yv.H, yv.W, kernel.first, kernel.second, stride.first, stride.second,
                         padding.first, padding.second};
    basisrt::check_pool(fn, s);
    basisrt::check_pool_kind(fn, kind);
    basisrt::check_threads(fn, num_threads);
    require_writeable(fn, out);
    if (s.N == 0) return;
    s.ldx = xv.ld, s.ldy = yv.ld;
    py::gil_scoped_release release;
    basisrt::pool_nhwc(xv.data, yv.data, s, kind, count_include_pad, num_threads);
}

// The checked arguments of a per-channel op (channel_affine_nhwc, channel_norm_nhwc): x and out of one
// NHWC shape, scale and shift of C floats each, P = N·H·W pixels.
struct ChannelOpArgs {
    Nhwc xv, yv;
    const float *scale, *shift;
    int64_t P;
};
ChannelOpArgs channel_op_args(const std::string& fn, const py::array& x, const py::array& scale,
                              const py::array& shift, py::array& out, basisrt::Activation act, int num_threads) {
    const Nhwc xv = nhwc(fn, x, "x"), yv = nhwc(fn, out, "out");
    if (yv.N != xv.N || yv.H != xv.H || yv.W != xv.W || yv.C != xv.C) value_error(fn, "out must have x's shape");
    const float* sp = f32_data(fn, scale, "scale", xv.C);
    const float* tp = f32_data(fn, shift, "shift", xv.C);
    basisrt::check_activation(fn, act);
    basisrt::check_threads(fn, num_threads);
    require_writeable(fn, out);
    return {xv, yv, sp, tp, basisrt::checked_elements({xv.N, xv.H, xv.W}, fn + ": x")};
}

void channel_affine_nhwc_py(const py::array& x, const py::array& scale, const py::array& shift, py::array& out,
                            basisrt::Activation act, int num_threads, float alpha) {
    const ChannelOpArgs a = channel_op_args("channel_affine_nhwc", x, scale, shift, out, act, num_threads);
    py::gil_scoped_release release;
    basisrt::channel_affine_nhwc(a.xv.data, a.scale, a.shift, a.yv.data, a.P, a.xv.C, a.xv.ld, a.yv.ld, act,
                                 num_threads, alpha);
}

void channel_norm_nhwc_py(const py::array& x, const py::array& scale, const py::array& shift, py::array& out,
                          float eps, basisrt::Activation act, int num_threads, float alpha) {
    const std::string fn = "channel_norm_nhwc";
    if (!(eps >= 0.0f && std::isfinite(eps))) value_error(fn, "eps must be finite and >= 0");
    const ChannelOpArgs a = channel_op_args(fn, x, scale, shift, out, act, num_threads);
    if (a.xv.C < 1) value_error(fn, "x has no channels");
    py::gil_scoped_release release;
    basisrt::channel_norm_nhwc(a.xv.data, a.scale, a.shift, a.yv.data, a.P, a.xv.C, a.xv.ld, a.yv.ld, eps, act,
                               num_threads, alpha);
}

void group_norm_nhwc_py(const py::array& x, const py::array& scale, const py::array& shift, py::array& out,
                        int64_t groups, float eps, basisrt::Activation act, int num_threads, float alpha) {
    const std::string fn = "group_norm_nhwc";
    if (!(eps >= 0.0f && std::isfinite(eps))) value_error(fn, "eps must be finite and >= 0");
    const ChannelOpArgs a = channel_op_args(fn, x, scale, shift, out, act, num_threads);
    if (a.xv.C < 1 || groups < 1 || a.xv.C % groups) value_error(fn, "groups must divide x's channels (>= 1)");
    const int64_t HW = basisrt::checked_elements({a.xv.H, a.xv.W}, fn + ": x");
    py::gil_scoped_release release;
    basisrt::group_norm_nhwc(a.xv.data, a.scale, a.shift, a.yv.data, a.xv.N, HW, a.xv.C, groups, a.xv.ld, a.yv.ld,
                             eps, act, num_threads, alpha);
}

void eltwise_nhwc_py(const py::array& a, const py::array& b, py::array& out, basisrt::BinaryOp op,
                     basisrt::Activation act, int num_threads, float alpha) {
    const std::string fn = "eltwise_nhwc";
    const Nhwc av = nhwc(fn, a, "a"), bv = nhwc(fn, b, "b"), yv = nhwc(fn, out, "out");
    if (yv.N != av.N || yv.H != av.H || yv.W != av.W || yv.C != av.C) value_error(fn, "out must have a's shape");
    if (bv.N != av.N) value_error(fn, "b must have a's batch");
    const basisrt::Broadcast bc = basisrt::eltwise_broadcast(fn, av.H, av.W, av.C, bv.H, bv.W, bv.C);
    basisrt::check_binary_op(fn, op);
    basisrt::check_activation(fn, act);
    basisrt::check_threads(fn, num_threads);
    require_writeable(fn, out);
    const int64_t P = basisrt::checked_elements({av.N, av.H, av.W}, fn + ": a");
    if (P == 0) return;
    py::gil_scoped_release release;
    basisrt::eltwise_nhwc(av.data, bv.data, yv.data, P, basisrt::broadcast_span(bc, av.H, av.W), av.C, av.ld, bv.ld, yv.ld, op, bc, act,
                          alpha, num_threads);
}

void softmax_nhwc_py(const py::array& x, py::array& out, basisrt::SoftmaxAxis axis, int64_t groups, int num_threads) {
    const std::string fn = "softmax_nhwc";
    const Nhwc xv = nhwc(fn, x, "x"), yv = nhwc(fn, out, "out");
    if (yv.N != xv.N || yv.H != xv.H || yv.W != xv.W || yv.C != xv.C) value_error(fn, "out must have x's shape");
    basisrt::check_softmax(fn, axis, groups, xv.C);
    basisrt::check_threads(fn, num_threads);
    require_writeable(fn, out);
    basisrt::checked_elements({xv.N, xv.H, xv.W}, fn + ": x");
    py::gil_scoped_release release;
    basisrt::softmax_nhwc(xv.data, yv.data, xv.N, xv.H, xv.W, xv.C, xv.ld, yv.ld, axis, groups, num_threads);
}

void channel_gather_nhwc_py(const py::array& x, const py::array& index, py::array& out, int num_threads) {
    const std::string fn = "channel_gather_nhwc";
    const Nhwc xv = nhwc(fn, x, "x"), yv = nhwc(fn, out, "out");
    if (yv.N != xv.N || yv.H != xv.H || yv.W != xv.W) value_error(fn, "out must have x's N, H and W");
    const std::vector<int64_t> idx = int64_vector(fn, index, "index");
    basisrt::check_channel_index(fn, idx, yv.C, xv.C);
    basisrt::check_threads(fn, num_threads);
    require_writeable(fn, out);
    const int64_t P = basisrt::checked_elements({xv.N, xv.H, xv.W}, fn + ": x");
    py::gil_scoped_release release;
    basisrt::channel_gather_nhwc(xv.data, idx.data(), yv.data, P, yv.C, xv.ld, yv.ld, num_threads);
}

void pixel_gather_nhwc_py(const py::array& x, const py::array& index, py::array& out, int num_threads,
                          const std::optional<py::array>& offset) {
    const std::string fn = "pixel_gather_nhwc";
    const Nhwc xv = nhwc(fn, x, "x"), yv = nhwc(fn, out, "out");
    if (yv.N != xv.N || (!offset && yv.C != xv.C)) value_error(fn, "out must have x's N and C (without offsets)");
    const int64_t P_in = basisrt::checked_elements({xv.H, xv.W}, fn + ": x");
    const int64_t P_out = basisrt::checked_elements({yv.H, yv.W}, fn + ": out");
    const std::vector<int64_t> idx = int64_vector(fn, index, "index");
    basisrt::check_pixel_index(fn, idx, P_out, P_in);
    std::vector<int64_t> off;
    if (offset) {
        off = int64_vector(fn, *offset, "offset");
        basisrt::check_pixel_offsets(fn, off, P_out, xv.C, yv.C);
    }
    basisrt::check_threads(fn, num_threads);
    require_writeable(fn, out);
    py::gil_scoped_release release;
    basisrt::pixel_gather_nhwc(xv.data, idx.data(), offset ? off.data() : nullptr, yv.data, xv.N, P_in, P_out, yv.C,
                               xv.ld, yv.ld, num_threads);
}

// One resampling axis: index (out × T, int64) and weight (out × T, float32) as flat vectors.
struct ResampleAxis {
    std::vector<int64_t> index;
    std::vector<float> weight;
    int64_t out, taps;
};
ResampleAxis resample_axis(const std::string& fn, const py::array& index, const py::array& weight, const char* axis) {
    const std::string i = std::string(axis) + "_index", w = std::string(axis) + "_weight";
    if (!py::isinstance<py::array_t<int64_t>>(index) || index.ndim() != 2 || !(index.flags() & py::array::c_style))
        value_error(fn, i + " must be a C-contiguous 2-D int64 array (out x taps)");
    if (weight.ndim() != 2 || weight.shape(0) != index.shape(0) || weight.shape(1) != index.shape(1))
        value_error(fn, w + " must have " + i + "'s shape (out x taps)");
    const float* wp = f32_data(fn, weight, w.c_str(), index.size());
    const int64_t* ip = static_cast<const int64_t*>(index.data());
    return {{ip, ip + index.size()}, {wp, wp + index.size()}, index.shape(0), index.shape(1)};
}

void resample_nhwc_py(const py::array& x, const py::array& row_index, const py::array& row_weight,
                      const py::array& col_index, const py::array& col_weight, py::array& out, int num_threads) {
    const std::string fn = "resample_nhwc";
    const Nhwc xv = nhwc(fn, x, "x"), yv = nhwc(fn, out, "out");
    if (yv.N != xv.N || yv.C != xv.C) value_error(fn, "out must have x's N and C");
    const ResampleAxis r = resample_axis(fn, row_index, row_weight, "row");
    const ResampleAxis c = resample_axis(fn, col_index, col_weight, "col");
    if (r.taps != c.taps) value_error(fn, "rows and columns must have the same number of taps");
    if (r.out != yv.H || c.out != yv.W) value_error(fn, "the taps must have one row per output row and column");
    basisrt::check_resample_axis(fn, "row", r.index, r.weight, r.taps, xv.H, yv.H);
    basisrt::check_resample_axis(fn, "column", c.index, c.weight, c.taps, xv.W, yv.W);
    basisrt::check_threads(fn, num_threads);
    require_writeable(fn, out);
    const basisrt::ResampleTaps t{r.taps, r.index.data(), c.index.data(), r.weight.data(), c.weight.data()};
    py::gil_scoped_release release;
    basisrt::resample_nhwc(xv.data, yv.data, xv.N, xv.H, xv.W, yv.H, yv.W, xv.C, xv.ld, yv.ld, t, num_threads);
}

// basisrt::Program plus references to the numpy arrays it points into. Program::add_op checks ids,
// geometry and enum values; here only what needs the arrays (their sizes, from the checked geometry).
struct PyProgram {
    basisrt::Program program;
    std::vector<py::object> keep_alive;

    int add_buffer(int64_t H, int64_t W, int64_t C) { return program.add_buffer({H, W, C}); }

    void add_conv(int in, int residual, int out, const py::array& B, const std::optional<py::array>& A,
                  const std::optional<py::array>& bias, int64_t rank, basisrt::Activation act, IntPair kernel,
                  IntPair stride, IntPair padding, IntPair dilation, int64_t groups, int64_t pool, float alpha,
                  const std::optional<py::array>& winograd) {
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::conv, in, residual, out};
        op.rank = rank, op.act = act, op.alpha = alpha;
        op.kh = kernel.first, op.kw = kernel.second, op.sh = stride.first, op.sw = stride.second;
        op.ph = padding.first, op.pw = padding.second, op.dh = dilation.first, op.dw = dilation.second;
        op.groups = groups, op.fused_pool = pool;
        program.check(op);  // ids and geometry, before the array sizes that follow from them
        const PackedWeights w = packed_weights("Program.add_conv", program.conv_shape(op), B, A, bias, rank, winograd);
        op.B = w.B, op.A = w.A, op.bias = w.bias, op.winograd = w.winograd;
        program.add_op(op);
        keep_alive.push_back(B);
        if (winograd) keep_alive.push_back(*winograd);
        if (A) keep_alive.push_back(*A);
        if (bias) keep_alive.push_back(*bias);
    }

    void add_conv_bf16(int in, int residual, int out, const py::array& B, const std::optional<py::array>& A,
                       const py::array& bias, int64_t rank, basisrt::Activation act, IntPair kernel, IntPair stride,
                       IntPair padding, IntPair dilation, float alpha, const std::optional<py::array>& winograd,
                       bool hilo) {
        const std::string fn = "Program.add_conv_bf16";
        require_bf16(fn);
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::conv, in, residual, out};
        op.rank = rank, op.act = act, op.alpha = alpha;
        op.kh = kernel.first, op.kw = kernel.second, op.sh = stride.first, op.sw = stride.second;
        op.ph = padding.first, op.pw = padding.second, op.dh = dilation.first, op.dw = dilation.second;
        program.check(op);  // ids and geometry, before the array sizes that follow from them
        const Bf16Weights w = bf16_weights(fn, program.conv_shape(op), B, A, bias, rank, winograd);
        op.B16 = w.B, op.A16 = w.A, op.bias = w.bias, op.U16 = w.winograd, op.hilo = hilo;
        program.add_op(op);
        keep_alive.push_back(B);
        if (winograd) keep_alive.push_back(*winograd);
        if (A) keep_alive.push_back(*A);
        keep_alive.push_back(bias);
    }

    void add_expand_depthwise(int in, int out, const py::array& B, const std::optional<py::array>& A,
                              const std::optional<py::array>& bias, int64_t rank, basisrt::Activation act,
                              float alpha, const py::array& dw_B, const std::optional<py::array>& dw_bias,
                              basisrt::Activation dw_act, float dw_alpha, IntPair kernel, IntPair stride,
                              IntPair padding, IntPair dilation) {
        const std::string fn = "Program.add_expand_depthwise";
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::expand_dw, in, -1, out};
        op.rank = rank, op.act = act, op.alpha = alpha, op.dw_act = dw_act, op.dw_alpha = dw_alpha;
        op.kh = kernel.first, op.kw = kernel.second, op.sh = stride.first, op.sw = stride.second;
        op.ph = padding.first, op.pw = padding.second, op.dh = dilation.first, op.dw = dilation.second;
        program.check(op);  // ids and geometry, before the array sizes that follow from them
        const PackedWeights e = packed_weights(fn, program.expand_shape(op), B, A, bias, rank);
        const PackedWeights d = packed_weights(fn, program.depthwise_shape(op), dw_B, std::nullopt, dw_bias, 0);
        op.B = e.B, op.A = e.A, op.bias = e.bias, op.dw_w = d.B, op.dw_bias = d.bias;
        program.add_op(op);
        for (const py::array& a : {B, dw_B}) keep_alive.push_back(a);
        for (const auto* a : {&A, &bias, &dw_bias})
            if (*a) keep_alive.push_back(**a);
    }

    void add_pool(int in, int out, IntPair kernel, IntPair stride, IntPair padding, basisrt::PoolKind kind,
                  bool count_include_pad) {
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::pool, in, -1, out};
        op.pool = kind, op.count_include_pad = count_include_pad;
        op.kh = kernel.first, op.kw = kernel.second, op.sh = stride.first, op.sw = stride.second;
        op.ph = padding.first, op.pw = padding.second;
        program.add_op(op);
    }

    void add_affine(int in, int out, const py::array& scale, const py::array& shift, basisrt::Activation act,
                    float alpha) {
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::affine, in, -1, out};
        add_channel_op("Program.add_affine", op, scale, shift, act, alpha);
    }

    void add_norm(int in, int out, const py::array& scale, const py::array& shift, float eps, basisrt::Activation act,
                  float alpha) {
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::norm, in, -1, out};
        op.eps = eps;
        add_channel_op("Program.add_norm", op, scale, shift, act, alpha);
    }

    void add_group_norm(int in, int out, const py::array& scale, const py::array& shift, int64_t groups, float eps,
                        basisrt::Activation act, float alpha) {
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::group_norm, in, -1, out};
        op.eps = eps, op.groups = groups;
        add_channel_op("Program.add_group_norm", op, scale, shift, act, alpha);
    }

    // An affine or norm op: scale and shift hold the input buffer's C floats each.
    void add_channel_op(const std::string& fn, basisrt::ProgramOp& op, const py::array& scale, const py::array& shift,
                        basisrt::Activation act, float alpha) {
        op.act = act, op.alpha = alpha;
        program.check(op);  // ids, before the buffer's channels size scale and shift
        const int64_t C = program.buffers()[op.in].C;
        op.scale = f32_data(fn, scale, "scale", C), op.shift = f32_data(fn, shift, "shift", C);
        program.add_op(op);
        keep_alive.push_back(scale);
        keep_alive.push_back(shift);
    }

    void add_eltwise(int a, int b, int out, basisrt::BinaryOp binary, basisrt::Activation act, float alpha) {
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::eltwise, a, b, out};
        op.binary = binary, op.act = act, op.alpha = alpha;
        program.add_op(op);
    }

    void add_gather(int in, int out, const py::array& index) {
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::gather, in, -1, out};
        op.index = int64_vector("Program.add_gather", index, "index");
        program.add_op(op);
    }

    void add_softmax(int in, int out, basisrt::SoftmaxAxis axis, int64_t groups) {
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::softmax, in, -1, out};
        op.softmax_axis = axis, op.groups = groups;
        program.add_op(op);
    }

    void add_pixel_gather(int in, int out, const py::array& index, const std::optional<py::array>& offset) {
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::pixel_gather, in, -1, out};
        op.index = int64_vector("Program.add_pixel_gather", index, "index");
        if (offset) op.channel_offset = int64_vector("Program.add_pixel_gather", *offset, "offset");
        program.add_op(op);
    }

    void add_resample(int in, int out, const py::array& row_index, const py::array& row_weight,
                      const py::array& col_index, const py::array& col_weight) {
        const std::string fn = "Program.add_resample";
        ResampleAxis r = resample_axis(fn, row_index, row_weight, "row");
        const ResampleAxis c = resample_axis(fn, col_index, col_weight, "col");
        if (r.taps != c.taps) value_error(fn, "rows and columns must have the same number of taps");
        basisrt::ProgramOp op{basisrt::ProgramOp::Kind::resample, in, -1, out};
        op.kh = r.taps;
        r.index.insert(r.index.end(), c.index.begin(), c.index.end());
        r.weight.insert(r.weight.end(), c.weight.begin(), c.weight.end());
        op.index = std::move(r.index), op.weights = std::move(r.weight);
        program.add_op(op);
    }

    // The whole call for a model of one output, where x is already what run takes: NCHW float32,
    // C-contiguous, at least one image, buffer 0's shape. The output is allocated here (64-byte
    // aligned, as torch.empty's, owned by the returned array): (N, C), or (N, C, H, W) written NCHW.
    // None for any other x, so that the caller's checks name what is wrong. At batch 1 the Python
    // steps this replaces (torch.empty, the numpy views, the checks) took 25-40 µs a call: after a
    // plan's kernels, each Python-level step runs several times slower than in a loop of its own.
    py::object call(const py::object& x_obj, int output, int num_threads, bool flat) const {
        if (!py::isinstance<py::array>(x_obj)) return py::none();
        const auto x = py::reinterpret_borrow<py::array>(x_obj);
        const auto& i = program.buffers().at(0);
        if (x.ndim() != 4 || x.dtype().kind() != 'f' || x.itemsize() != 4 || !(x.flags() & py::array::c_style) ||
            x.shape(0) < 1 || x.shape(1) != i.C || x.shape(2) != i.H || x.shape(3) != i.W)
            return py::none();
        const int64_t N = x.shape(0);
        program.check_run(N, {output}, num_threads);
        const auto& o = program.buffers()[output];
        const size_t bytes = static_cast<size_t>(N * o.H * o.W * o.C) * sizeof(float);
        float* y = static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
        if (!y) throw std::bad_alloc();
        py::capsule owner(y, [](void* p) { std::free(p); });
        std::vector<py::ssize_t> shape{N, o.C};
        if (!flat) shape.insert(shape.end(), {o.H, o.W});
        py::array_t<float> out(shape, y, owner);
        {
            py::gil_scoped_release release;
            program.run(static_cast<const float*>(x.data()), N, {output}, {y}, num_threads, nullptr,
                        {o.H * o.W != 1});
        }
        return std::move(out);
    }

    void run(const py::array& x, py::array& out, int output, int num_threads, std::optional<py::array> op_seconds,
             bool nchw) const {
        std::vector<py::array> outs{out};
        run_many(x, outs, {output}, num_threads, op_seconds, {nchw});
    }

    void run_many(const py::array& x, std::vector<py::array>& outs, const std::vector<int>& outputs,
                  int num_threads, std::optional<py::array> op_seconds, const std::vector<bool>& nchw) const {
        const std::string fn = "Program.run";
        const int64_t N = x.ndim() == 4 ? x.shape(0) : 0;  // a wrong x fails below, once buffer 0 is known to exist
        program.check_run(N, outputs, num_threads);
        if (outs.size() != outputs.size()) value_error(fn, "one out array per output buffer");
        if (!nchw.empty() && nchw.size() != outputs.size()) value_error(fn, "one nchw flag per output buffer");
        const auto& i = program.buffers()[0];
        if (x.ndim() != 4 || x.shape(1) != i.C || x.shape(2) != i.H || x.shape(3) != i.W)
            value_error(fn, "x must be NCHW (N, " + std::to_string(i.C) + ", " + std::to_string(i.H) + ", " +
                                std::to_string(i.W) + ")");
        const float* xp = f32_data(fn, x, "x", x.size());
        std::vector<float*> ys;
        for (size_t k = 0; k < outs.size(); ++k) {
            const auto& o = program.buffers()[outputs[k]];
            f32_data(fn, outs[k], "out", N * o.H * o.W * o.C);
            require_writeable(fn, outs[k]);
            ys.push_back(static_cast<float*>(outs[k].mutable_data()));
        }
        double* times = nullptr;
        if (op_seconds) {
            if (op_seconds->dtype().kind() != 'f' || op_seconds->itemsize() != 8 || op_seconds->ndim() != 1 ||
                op_seconds->shape(0) != static_cast<py::ssize_t>(program.ops()) || !op_seconds->writeable() ||
                !(op_seconds->flags() & py::array::c_style))
                value_error(fn, "op_seconds must be a writeable contiguous float64 array of one entry per op");
            times = static_cast<double*>(op_seconds->mutable_data());
        }
        py::gil_scoped_release release;
        program.run(xp, N, outputs, ys, num_threads, times, nchw);
    }
};

void bind_fused(py::module_& m) {
    // Registered first, so the signatures below name them.
    py::enum_<basisrt::Activation>(m, "Activation",
                                   "An activation the kernels fuse after a conv, affine or eltwise op "
                                   "(leaky_relu: negative slope `alpha`).")
        .value("none", basisrt::Activation::none)
        .value("relu", basisrt::Activation::relu)
        .value("relu6", basisrt::Activation::relu6)
        .value("sigmoid", basisrt::Activation::sigmoid)
        .value("silu", basisrt::Activation::silu)
        .value("hardsigmoid", basisrt::Activation::hardsigmoid)
        .value("hardswish", basisrt::Activation::hardswish)
        .value("leaky_relu", basisrt::Activation::leaky_relu)
        .value("gelu", basisrt::Activation::gelu)
        .value("gelu_tanh", basisrt::Activation::gelu_tanh);
    py::enum_<basisrt::PoolKind>(m, "PoolKind", "Max, average or L2 (root of the sum of squares) pooling.")
        .value("max", basisrt::PoolKind::max)
        .value("avg", basisrt::PoolKind::avg)
        .value("l2", basisrt::PoolKind::l2);
    py::enum_<basisrt::SoftmaxAxis>(m, "SoftmaxAxis", "The axis of softmax_nhwc (softmax.h).")
        .value("channels", basisrt::SoftmaxAxis::channels)
        .value("width", basisrt::SoftmaxAxis::width)
        .value("pixels", basisrt::SoftmaxAxis::pixels);
    py::enum_<basisrt::BinaryOp>(m, "BinaryOp", "The op of eltwise_nhwc: out = act(a OP b).")
        .value("add", basisrt::BinaryOp::add)
        .value("mul", basisrt::BinaryOp::mul)
        .value("sub", basisrt::BinaryOp::sub)
        .value("div", basisrt::BinaryOp::div);

    py::class_<PyProgram>(m, "Program",
                          "A plan of conv, pool, affine, eltwise, gather and pixel gather ops over NHWC buffers, run "
                          "in one call.")
        .def(py::init<>())
        .def("add_buffer", &PyProgram::add_buffer, py::arg("H"), py::arg("W"), py::arg("C"),
             "A buffer of per-image shape (H, W, C); buffer 0 is the input. Returns its id.")
        .def("add_conv", &PyProgram::add_conv, py::arg("input"), py::arg("residual"), py::arg("out"), py::arg("B"),
             py::arg("A"), py::arg("bias"), py::arg("rank"), py::arg("activation"), py::arg("kernel"),
             py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("pool") = 1,
             py::arg("alpha") = 0.01f, py::arg("winograd") = py::none(),
             "A fused_conv_nhwc op (packed weights as for fused_conv_nhwc; residual -1: none; pool 2: a 2x2\n"
             "max pool fused after the epilogue, `out` being the pooled buffer).")
        .def("add_conv_bf16", &PyProgram::add_conv_bf16, py::arg("input"), py::arg("residual"), py::arg("out"),
             py::arg("B"), py::arg("A"), py::arg("bias"), py::arg("rank"), py::arg("activation"), py::arg("kernel"),
             py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("alpha") = 0.01f,
             py::arg("winograd") = py::none(), py::arg("hilo") = true,
             "A fused_conv_bf16_nhwc op (bf16 weights packed by pack_bf16_vnni, float32 bias; groups 1).")
        .def("add_expand_depthwise", &PyProgram::add_expand_depthwise, py::arg("input"), py::arg("out"),
             py::arg("B"), py::arg("A"), py::arg("bias"), py::arg("rank"), py::arg("activation"), py::arg("alpha"),
             py::arg("dw_B"), py::arg("dw_bias"), py::arg("dw_activation"), py::arg("dw_alpha"), py::arg("kernel"),
             py::arg("stride"), py::arg("padding"), py::arg("dilation"),
             "An MBConv's 1x1 expand conv and the depthwise conv after it as one op (expand_depthwise.h): the\n"
             "expanded map never reaches memory. Weights packed as for two add_conv ops; `out` is the\n"
             "depthwise conv's output.")
        .def("add_pool", &PyProgram::add_pool, py::arg("input"), py::arg("out"), py::arg("kernel"), py::arg("stride"),
             py::arg("padding"), py::arg("kind"), py::arg("count_include_pad"), "A pool_nhwc op.")
        .def("add_affine", &PyProgram::add_affine, py::arg("input"), py::arg("out"), py::arg("scale"),
             py::arg("shift"), py::arg("activation"), py::arg("alpha") = 0.01f, "A channel_affine_nhwc op.")
        .def("add_norm", &PyProgram::add_norm, py::arg("input"), py::arg("out"), py::arg("scale"), py::arg("shift"),
             py::arg("eps"), py::arg("activation"), py::arg("alpha") = 0.01f, "A channel_norm_nhwc op.")
        .def("add_group_norm", &PyProgram::add_group_norm, py::arg("input"), py::arg("out"), py::arg("scale"),
             py::arg("shift"), py::arg("groups"), py::arg("eps"), py::arg("activation"), py::arg("alpha") = 0.01f,
             "A group_norm_nhwc op.")
        .def("add_eltwise", &PyProgram::add_eltwise, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("op"),
             py::arg("activation"), py::arg("alpha") = 0.01f,
             "An eltwise_nhwc op: out = act(a OP b), b of a's shape, one pixel per image or one channel per pixel.")
        .def("add_softmax", &PyProgram::add_softmax, py::arg("input"), py::arg("out"), py::arg("axis"),
             py::arg("groups"), "A softmax_nhwc op.")
        .def("add_gather", &PyProgram::add_gather, py::arg("input"), py::arg("out"), py::arg("index"),
             "A channel_gather_nhwc op: out's channel c is input's channel index[c].")
        .def("add_pixel_gather", &PyProgram::add_pixel_gather, py::arg("input"), py::arg("out"), py::arg("index"),
             py::arg("offset") = py::none(),
             "A pixel_gather_nhwc op: out's pixel q is input's pixel index[q] (-1: zeros), its channels from "
             "offset[q] if given.")
        .def("add_resample", &PyProgram::add_resample, py::arg("input"), py::arg("out"), py::arg("row_index"),
             py::arg("row_weight"), py::arg("col_index"), py::arg("col_weight"),
             "A resample_nhwc op (separable taps, e.g. bilinear upsampling): each (out x taps).")
        .def(
            "alias",
            [](PyProgram& p, int buffer, int parent, int64_t offset) { p.program.alias(buffer, parent, offset); },
            py::arg("buffer"), py::arg("parent"), py::arg("offset"),
            "Make `buffer` channels [offset, offset + C) of `parent`: its producer writes there and its\n"
            "readers read there, so concatenating buffers into `parent` costs no copy.")
        .def("call", &PyProgram::call, py::arg("x"), py::arg("output"), py::arg("num_threads"), py::arg("flat"),
             "run for a model of one output, returning it as a new float32 array ((N, C) where `flat`, else\n"
             "NCHW), or None where x is not an NCHW float32 C-contiguous array of buffer 0's shape with N >= 1.")
        .def("run", &PyProgram::run, py::arg("x"), py::arg("out"), py::arg("output"), py::arg("num_threads"),
             py::arg("op_seconds") = py::none(), py::arg("nchw") = false,
             "Run every op on NCHW input x; the output buffer is written NHWC into `out` (NCHW with nchw).\n"
             "op_seconds (float64, one per op), if given, gets each op's wall time added.")
        .def("run_many", &PyProgram::run_many, py::arg("x"), py::arg("outs"), py::arg("outputs"),
             py::arg("num_threads"), py::arg("op_seconds") = py::none(), py::arg("nchw") = std::vector<bool>{},
             "run for a model of several outputs: buffer outputs[k] is written NHWC into outs[k] (NCHW where\n"
             "nchw[k]).")
        .def(
            "keep_bf16", [](PyProgram& p, const std::vector<int>& outputs) { return p.program.keep_bf16(outputs); },
            py::arg("outputs"),
            "Store in bf16 every buffer that only bf16 convs write and read (not the input, not an output, no\n"
            "view or concatenation); call after the last op. Returns how many.")
        .def_property_readonly("ops", [](const PyProgram& p) { return p.program.ops(); }, "Number of ops.")
        .def_property(
            "in_place", [](const PyProgram& p) { return p.program.in_place(); },
            [](PyProgram& p, bool on) { p.program.set_in_place(on); },
            "Whether a conv writes its output over a residual map that dies at it (default True); False\n"
            "plans every output in memory of its own (for measuring what that is worth).")
        .def_property_readonly(
            "bf16_buffers",
            [](const PyProgram& p) {
                std::vector<int> out;
                for (size_t i = 0; i < p.program.buffers().size(); ++i)
                    if (p.program.buffers()[i].bf16) out.push_back(static_cast<int>(i));
                return out;
            },
            "Ids of the buffers stored in bf16 (keep_bf16).")
        .def_property_readonly(
            "buffers",
            [](const PyProgram& p) {
                std::vector<std::tuple<int64_t, int64_t, int64_t, int>> out;
                for (const auto& b : p.program.buffers()) out.emplace_back(b.H, b.W, b.C, b.parent);
                return out;
            },
            "[(H, W, C, parent)] per buffer id, per image (parent -1: not a view).")
        .def(
            "segments",
            [](const PyProgram& p, int64_t N, int num_threads) {
                std::vector<std::tuple<size_t, size_t, int64_t>> out;
                for (const auto& s : p.program.segments(N, num_threads)) out.emplace_back(s.begin, s.end, s.images);
                return out;
            },
            py::arg("N"), py::arg("num_threads"),
            "[(begin, end, images)]: a batch of N runs ops [begin, end) in groups of `images` images, one "
            "group per thread (images >= N: the whole batch, threads over output tiles).")
        .def(
            "arena_floats",
            [](const PyProgram& p, int64_t N, const std::vector<int>& outputs, int num_threads) {
                p.program.check_run(N, outputs, num_threads);
                return p.program.layout(p.program.segments(N, num_threads), N, outputs)->floats;
            },
            py::arg("N"), py::arg("outputs"), py::arg("num_threads"),
            "Floats per image of the arena a batch of N runs in (buffers whose lifetimes do not overlap "
            "share memory; the output buffers are the caller's).");
    m.def("pool_nhwc", &pool_nhwc_py, py::arg("x"), py::arg("out"), py::arg("kernel"), py::arg("stride"),
          py::arg("padding"), py::arg("kind"), py::arg("count_include_pad"), py::arg("num_threads"),
          "Max, average or L2 pooling (kind: PoolKind) on NHWC float32 with implicit padding; writes into `out`.");
    m.def("fused_conv_nhwc", &fused_conv_nhwc_py, py::arg("x"), py::arg("B"), py::arg("A"), py::arg("bias"),
          py::arg("residual"), py::arg("out"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
          py::arg("dilation"), py::arg("groups"), py::arg("rank"), py::arg("activation"), py::arg("num_threads"),
          py::arg("pool") = 1, py::arg("alpha") = 0.01f, py::arg("winograd") = py::none(),
          "Fused basis conv (rank > 0) or dense conv (rank == 0) on NHWC float32 with prepacked weights,\n"
          "bias, residual add, activation (an Activation; leaky_relu's slope is alpha) and, with pool=2, a\n"
          "2x2 stride-2 max pool fused; writes into `out`. winograd: the conv's winograd_weights, for a conv\n"
          "on winograd_path, which then runs by Winograd F(2x2, 3x3).");
    m.def("winograd_path", &basisrt::winograd_path, py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
          py::arg("dh"), py::arg("dw"), py::arg("groups"), py::arg("in_channels"), py::arg("rank"),
          "Whether a basis pair (rank > 0) or dense conv (rank 0) of this geometry can run its 3x3 conv by\n"
          "Winograd F(2x2, 3x3) on this CPU (and so takes winograd_weights).");
    m.def(
        "winograd_weights",
        [](const py::array& B, int64_t in_channels, int64_t rank, int64_t out_channels) {
            const std::string fn = "winograd_weights";
            if (in_channels < 1 || in_channels % basisrt::kColBlock || rank < 0 || out_channels < 1)
                value_error(fn, "in_channels must be a positive multiple of 16, rank >= 0 and out_channels positive");
            const basisrt::WinogradLayout layout = basisrt::winograd_layout(in_channels, rank, out_channels);
            // 9 taps of C_in × (a pair's ranks, a dense conv's padded outputs)
            const int64_t b_cols = rank ? rank : basisrt::round_up(out_channels, basisrt::kColBlock);
            const float* b = f32_data(fn, B, "B (packed)", 9 * in_channels * b_cols);
            py::array_t<float> U({int64_t{16}, layout.rows, layout.cols});
            basisrt::winograd_weights(b, in_channels, rank, out_channels, U.mutable_data());
            return U;
        },
        py::arg("B"), py::arg("in_channels"), py::arg("rank"), py::arg("out_channels"),
        "A 3x3 conv's Winograd weights from its packed B (a pair's (rank, 9 * in_channels), a dense conv's\n"
        "(9 * in_channels, out_channels padded to 16)): (16, in_channels, n) where n (the rank, 16 for a rank\n"
        "under 16, or the padded outputs) is a multiple of 16, else (16, rank, in_channels).");
    m.def("channel_affine_nhwc", &channel_affine_nhwc_py, py::arg("x"), py::arg("scale"), py::arg("shift"),
          py::arg("out"), py::arg("activation"), py::arg("num_threads"), py::arg("alpha") = 0.01f,
          "out = act(x * scale + shift) per channel on NHWC float32 (x / out may be channel slices).");
    m.def("channel_norm_nhwc", &channel_norm_nhwc_py, py::arg("x"), py::arg("scale"), py::arg("shift"),
          py::arg("out"), py::arg("eps"), py::arg("activation"), py::arg("num_threads"), py::arg("alpha") = 0.01f,
          "out = act(layer_norm(x) * scale + shift), the norm over each pixel's channels, on NHWC float32.");
    m.def("group_norm_nhwc", &group_norm_nhwc_py, py::arg("x"), py::arg("scale"), py::arg("shift"), py::arg("out"),
          py::arg("groups"), py::arg("eps"), py::arg("activation"), py::arg("num_threads"), py::arg("alpha") = 0.01f,
          "out = act(group_norm(x) * scale + shift), the norm over each image's groups of channels, on NHWC "
          "float32.");
    m.def("eltwise_nhwc", &eltwise_nhwc_py, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("op"),
          py::arg("activation"), py::arg("num_threads"), py::arg("alpha") = 0.01f,
          "out = act(a OP b) on NHWC float32 (op: BinaryOp), b of a's shape or (N, 1, 1, C), (N, H, W, 1) or "
          "(N, H, 1, C) broadcast.");
    m.def("softmax_nhwc", &softmax_nhwc_py, py::arg("x"), py::arg("out"), py::arg("axis"), py::arg("groups"),
          py::arg("num_threads"),
          "Softmax over one axis (SoftmaxAxis) of NHWC float32; over channels in `groups` interleaved groups.");
    m.def("channel_gather_nhwc", &channel_gather_nhwc_py, py::arg("x"), py::arg("index"), py::arg("out"),
          py::arg("num_threads"), "out[..., c] = x[..., index[c]] on NHWC float32 (index: int64).");
    m.def("pixel_gather_nhwc", &pixel_gather_nhwc_py, py::arg("x"), py::arg("index"), py::arg("out"),
          py::arg("num_threads"), py::arg("offset") = py::none(),
          "out[n, q] = x[n, index[q]] over the flattened H*W pixels of NHWC float32 (index int64, -1: zeros);\n"
          "with offset (int64, one per output pixel): out[n, q, c] = x[n, index[q], offset[q] + c].");
    m.def("resample_nhwc", &resample_nhwc_py, py::arg("x"), py::arg("row_index"), py::arg("row_weight"),
          py::arg("col_index"), py::arg("col_weight"), py::arg("out"), py::arg("num_threads"),
          "out[n, oy, ox] = sum over taps a, b of row_weight[oy, a] * col_weight[ox, b] * "
          "x[n, row_index[oy, a], col_index[ox, b]] (NHWC float32; indices int64, weights float32, out x taps).");
    m.def("lowrank_dot_path", &basisrt::lowrank_dot_path, py::arg("cg_in"), py::arg("rank"),
          "Whether fused_conv_nhwc expects B packed as (groups, rank, K) (channel-vectorised path)\n"
          "rather than (groups, K, round_up(rank, 16)).");
    m.def("grouped_path", &basisrt::grouped_path, py::arg("groups"), py::arg("c_in"), py::arg("c_out"),
          py::arg("rank"), "Whether fused_conv_nhwc runs a grouped conv on its few-channels-per-group kernel.");
    m.def("depthwise_path", &basisrt::depthwise_path, py::arg("groups"), py::arg("c_in"), py::arg("c_out"),
          py::arg("rank"), "Whether fused_conv_nhwc runs a depthwise conv, B packed as (kh*kw, C).");
    m.def("simd_path", &basisrt::simd_path, "The SIMD path chosen at run time for this CPU.");
    m.def("fused_conv_bf16_nhwc", &fused_conv_bf16_nhwc_py, py::arg("x"), py::arg("B"), py::arg("A"), py::arg("bias"),
          py::arg("residual"), py::arg("out"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
          py::arg("dilation"), py::arg("rank"), py::arg("activation"), py::arg("num_threads"), py::arg("alpha") = 0.01f,
          py::arg("winograd") = py::none(), py::arg("hilo") = true,
          "fused_conv_nhwc with bf16 weights on AMX tiles or AVX512-BF16 (fp32 accumulation; NHWC x, out and\n"
          "residual each float32 or 16-bit bfloat16 bits; float32 bias): B, A packed by pack_bf16_vnni, groups 1,\n"
          "no fused pool. winograd: 16 matrices U[xi] (in_channels x rank or out_channels, rounded up to 16) each\n"
          "packed by pack_bf16_vnni, for a conv on winograd_bf16_path, which then runs by Winograd F(2x2, 3x3).\n"
          "hilo: a pair's basis output goes to its scaling conv as bf16 hi + lo (about fp32's error there), else\n"
          "rounded to bf16 once (half the scaling conv's MACs).");
    m.def("winograd_bf16_path", &basisrt::winograd_bf16_path, py::arg("kh"), py::arg("kw"), py::arg("sh"),
          py::arg("sw"), py::arg("dh"), py::arg("dw"), py::arg("groups"), py::arg("in_channels"), py::arg("rank"),
          "Whether a conv of this geometry can run by Winograd F(2x2, 3x3) in bf16 here (fused_conv_bf16_nhwc's\n"
          "winograd).");
    m.def("pack_bf16_vnni", &pack_bf16_vnni_py, py::arg("w"),
          "A K x N float32 weight as the bf16 convs read it: bf16 bits (nearest even), pairs of K rows\n"
          "interleaved per column, K padded to 32 and N to 16 with zeros (flat uint16).");
    m.def("pack_bf16_b", &pack_bf16_b_py, py::arg("w"),
          "A K x N float32 basis (or dense) weight as this machine's direct bf16 conv reads it: as pack_bf16_vnni\n"
          "on AMX; on AVX512-BF16 vectors in panels of 32 columns, each a run of memory (flat uint16, the same size).");
    m.def("pack_bf16_quad", &pack_bf16_quad_py, py::arg("w"),
          "A K x N (N <= 8) float32 basis weight as the bf16 conv reads it where bf16_quad_path(rank): bf16 bits,\n"
          "4 K rows interleaved per column, 8 columns, K padded to 32 with zeros (flat uint16).");
    m.def("pack_winograd_bf16", &pack_winograd_bf16_py, py::arg("u"), py::arg("rank"),
          "The 16 fp32 Winograd weights U (16 x C x n: winograd_weights' as C x n) as the bf16 Winograd conv\n"
          "reads them: each as pack_bf16_quad (bf16_quad_path(rank)) or pack_bf16_vnni packs it, its rows in the\n"
          "kernel's channel order (within each 32: the even channels, then the odd; flat uint16).");
    m.def("bf16_quad_path", &basisrt::bf16_quad_path, py::arg("rank"),
          "Whether the bf16 conv reads a pair of this rank's B packed by pack_bf16_quad (1 to 8, AVX512-BF16\n"
          "vectors without AMX).");
    m.def("amx_bf16_available", &basisrt::amx_bf16_available,
          "Whether this CPU and OS run the bf16 convs on AMX-BF16 tiles (granted to this process).");
    m.def("bf16_path", &basisrt::bf16_path,
          "Which path the bf16 convs take here: 'amx', 'avx512_bf16' (vectors) or 'none'.");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "basisrt C++ CPU kernels (pybind11, no libtorch)";
    m.attr("__version__") = BASISRT_C_VERSION;
    m.attr("COL_BLOCK") = basisrt::kColBlock;  // packed weights' column block (cpu_steps.packed_shapes)
    bind_fused(m);
    // Future kernel families register here: bind_<family>(m);
}
