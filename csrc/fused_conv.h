// Fused low-rank (basis) conv and dense conv on NHWC float32, with a fused epilogue.
//
// One output tile of TP pixels at a time (threads over tiles):
//   cols = im2col(x)[tile]             (TP × K per group, K = kh·kw·C_in/g, NHWC tap order)
//   T    = cols · B                    (TP × r, stays in a thread-local buffer: never in memory)
//   y    = T · A + bias (+ residual) (→ activation) (→ 2×2 max pool)      stored as NHWC
// A dense conv is the same with the second GEMM skipped (B holds the dense weight).
// Weights are prepacked once (basisrt/compiler/cpu_steps.py): B as (K × r_pad), or (rank × K)
// on the channel-vectorised low-rank path (lowrank_dot_path), and A as (r_pad × Cg_pad), columns
// zero-padded to the vector block (16 floats).
#pragma once
#include <cstdint>

namespace basisrt {

// 0-2 are clamps, applied in the kernels' epilogues; the others by activate_rows (activation.h)
// after them. Python names them _C.Activation.<name> (bindings.cpp); plans store the names.
enum class Activation : int {
    none = 0, relu = 1, relu6 = 2, sigmoid = 3, silu = 4, hardsigmoid = 5, hardswish = 6, leaky_relu = 7,
    gelu = 8, gelu_tanh = 9
};
constexpr int kActivations = 10;

// The range a clamp activation clamps to ([-inf, inf] for none and for every activation that is
// not a clamp: the epilogue leaves those to activate_rows), for kernels written as scalar loops
// that GCC vectorises: y = std::min(std::max(v, lo), hi), v first in both. That order keeps NaN,
// as PyTorch does: std::max(v, lo) is (v < lo) ? lo : v, whose compare is false for NaN, and
// std::min(v, hi) is (hi < v) ? hi : v. Swapped arguments would map NaN to lo or hi.
struct Clamp {
    float lo, hi;
};
inline Clamp clamp_of(Activation act) {
    const bool clamp = act == Activation::relu || act == Activation::relu6;
    return {clamp ? 0.f : -__builtin_inff(), act == Activation::relu6 ? 6.f : __builtin_inff()};
}

struct ConvShape {
    int64_t N, H, W, C_in;     // input, NHWC
    int64_t Ho, Wo, C_out;     // conv output, NHWC
    int64_t kh, kw, sh, sw, ph, pw, dh, dw, groups;
    // 2: a 2×2, stride-2 max pool after the epilogue, so y is (N, Ho/2, Wo/2, C_out) and the
    // conv's own output never reaches memory. Needs even Ho and Wo and no residual.
    int64_t pool = 1;
    // Pixel strides in floats of x, y and the residual: 0 is dense (C_in, C_out, C_out). A larger
    // stride reads or writes a channel slice of a wider NHWC buffer (a concatenation, in place).
    int64_t ldx = 0, ldy = 0, ldr = 0;
};

// Column padding of packed weights: one AVX-512 vector of floats.
constexpr int64_t kColBlock = 16;
inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Where fused_conv_nhwc reads the packed weights of a conv of shape s: group g's B at B + g·b_group
// and A at A + g·a_group, for `groups` groups. Per group, a dense conv (rank 0) has B as
// (K × Cg_pad) and no A (a_group 0); a basis pair has B as (K × r_pad), or (rank × K) on the
// lowrank_dot_path, and A as (r_pad × Cg_pad). A depthwise conv (depthwise_path) is one group, B
// being (kh·kw × C). K = kh·kw·C_in / groups, Cg = C_out / groups, _pad: rounded up to kColBlock.
// The bindings size the weight arrays from it; basisrt/compiler/cpu_steps.py packs them.
struct PackedLayout {
    int64_t groups, b_group, a_group;
    int64_t b_floats() const { return groups * b_group; }
    int64_t a_floats() const { return groups * a_group; }
};
// For a geometry check_conv accepted (its bounds keep these sizes within int64).
PackedLayout packed_layout(const ConvShape& s, int64_t rank);

// B and A packed as packed_layout(s, rank) says. bias, residual may be null. residual is NHWC with
// the output's shape (pixel stride s.ldr). alpha: leaky ReLU's negative slope (other activations
// ignore it). winograd: a pair's weights from winograd_weights (winograd_conv.h) for a pair on
// winograd_path, which then runs by Winograd; null: B.
void fused_conv_nhwc(const float* x, const float* B, const float* A, const float* bias,
                     const float* residual, float* y, const ConvShape& s, int64_t rank,
                     Activation act, int num_threads, float alpha = 0.01f, const float* winograd = nullptr);

// Whether a basis pair with these per-group input channels packs B as (rank × K) per group for
// the channel-vectorised path (no im2col, no rank padding) instead of (K × r_pad).
bool lowrank_dot_path(int64_t cg_in, int64_t rank);

// Which SIMD path the run-time dispatch picked ("avx512f", "avx2+fma", "avx2" or "default").
const char* simd_path();

}  // namespace basisrt
