// A whole plan run in C++: a list of fused-conv and pooling ops over NHWC buffers, executed in
// one call with the GIL released, so a model whose every step is a basisrt kernel pays no
// Python round trip per layer (about 11 us per step measured through the fx module).
//
// Buffers are numbered; buffer 0 is the input, converted from NCHW here (a PyTorch layout copy
// would wake PyTorch's OpenMP workers, which then spin on the cores our kernels need).
// Intermediate buffers live in a per-thread arena, so concurrent calls from several threads
// are safe and steady-state calls allocate nothing.
#pragma once
#include <cstdint>
#include <vector>

#include "fused_conv.h"
#include "pool.h"

namespace basisrt {

struct BufferShape {
    int64_t H, W, C;  // per image, NHWC
};

struct ProgramOp {
    enum class Kind { conv, pool } kind;
    int in, residual, out;  // buffer ids (residual -1: none)
    // conv: packed weights (owned by the caller, alive as long as the program)
    const float *B = nullptr, *A = nullptr, *bias = nullptr;
    int64_t rank = 0;
    Activation act = Activation::none;
    // pool
    PoolKind pool = PoolKind::max;
    bool count_include_pad = true;
    // geometry (batch filled in at run time)
    int64_t kh, kw, sh, sw, ph, pw, dh = 1, dw = 1, groups = 1;
};

class Program {
  public:
    int add_buffer(BufferShape s);
    void add_op(const ProgramOp& op);
    // x: NCHW (N, C, H, W) of buffer 0; y: NHWC of the output buffer.
    void run(const float* x, int64_t N, int output, float* y, int num_threads) const;

    const std::vector<BufferShape>& buffers() const { return buffers_; }

  private:
    std::vector<BufferShape> buffers_;
    std::vector<ProgramOp> ops_;
};

}  // namespace basisrt
