// Max / average / L2 pooling on NHWC float32 (or bf16), vectorised over channels, threads over output rows.
// Keeps pooling inside basisrt's own thread pool: a PyTorch pooling op between two fused steps
// wakes PyTorch's OpenMP workers, which then spin for milliseconds on the core our next step
// needs (measured: fused steps ran 1.9x slower after torch ops than without).
#pragma once
#include <cstdint>

namespace basisrt {

// l2: the square root of the window's sum of squares (LPPool2d with norm_type 2; a map's L2 norm over
// its pixels: ConvNeXt-V2's global response norm)
enum class PoolKind : int { max = 0, avg = 1, l2 = 2 };
constexpr int kPoolKinds = 3;

struct PoolShape {
    int64_t N, H, W, C;  // input, NHWC
    int64_t Ho, Wo;      // output
    int64_t kh, kw, sh, sw, ph, pw;  // kh = kw = 0: adaptive windows (no stride, no padding)
    int64_t ldx = 0, ldy = 0;  // pixel strides of x and y in elements (0: C); see ConvShape
    // bf16 bits instead of float32 (a native program's bf16 maps): windows reduced in fp32, a bf16
    // output rounded to nearest even (exact for max)
    bool x_bf16 = false, y_bf16 = false;
};

// max(acc, v) as PyTorch's max pool takes it: NaN if either is NaN. std::max and x86's max
// instructions return one fixed operand when the pair is unordered, so a running max seeded with
// -inf skipped NaNs. Still branch-free: GCC vectorises it to two compares, an or and a blend.
inline float max_nan(float acc, float v) { return (v > acc || v != v) ? v : acc; }

// Padding is implicit (-inf for max, excluded or counted as zeros for avg per count_include_pad).
// Adaptive pooling (kh = kw = 0) reduces output row oy over input rows [floor(oy·H/Ho),
// ceil((oy+1)·H/Ho)), and the same over columns, as PyTorch's adaptive pools do.
void pool_nhwc(const void* x, void* y, const PoolShape& s, PoolKind kind, bool count_include_pad,
               int num_threads);

}  // namespace basisrt
