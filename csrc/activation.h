// Activations beyond a clamp (sigmoid, SiLU, hard-sigmoid, hard-swish, leaky ReLU, GELU), with
// PyTorch's formulas. The kernels' epilogues apply only the clamps (none, ReLU, ReLU6) inline;
// the others run as a pass over each tile right after the kernel stored it, while it is still in
// cache: one templated epilogue per activation would multiply the conv kernel's instantiations
// (and its build time) by five.
#pragma once
#include <cstdint>

#include "fused_conv.h"

namespace basisrt {

// Whether the kernels' inline epilogues do `act` themselves (clamp_of(act) is its range).
inline bool is_clamp(Activation act) { return act == Activation::none || act == Activation::relu || act == Activation::relu6; }

// y[p * ldy + c] = act(y[p * ldy + c]) for p < rows, c < C, in place. `alpha` is leaky ReLU's
// negative slope (unused otherwise). A clamp activation is left to the epilogues: no-op here.
void activate_rows(float* y, int64_t rows, int64_t C, int64_t ldy, Activation act, float alpha);
// y = exp(y) in place, same layout (Cephes' expf: about 1 ulp; inf, 0 and NaN as std::exp): softmax.
void exp_rows(float* y, int64_t rows, int64_t C, int64_t ldy);
// The same over many rows, threads over blocks of rows (after a kernel that has no per-tile hook).
void activate_rows_parallel(float* y, int64_t rows, int64_t C, int64_t ldy, Activation act, float alpha,
                            int num_threads);

}  // namespace basisrt
