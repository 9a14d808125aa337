#include "program.h"

#include <stdexcept>

namespace basisrt {

int Program::add_buffer(BufferShape s) {
    buffers_.push_back(s);
    return static_cast<int>(buffers_.size()) - 1;
}

void Program::add_op(const ProgramOp& op) {
    const int n = static_cast<int>(buffers_.size());
    if (op.in < 0 || op.in >= n || op.out <= 0 || op.out >= n || op.residual >= n || op.out == op.in)
        throw std::invalid_argument("Program.add_op: buffer id out of range");
    ops_.push_back(op);
}

void Program::run(const float* x, int64_t N, int output, float* y, int num_threads) const {
    // Per-thread arena: one vector per buffer, grown to the largest batch seen, never shrunk.
    thread_local std::vector<std::vector<float>> arena;
    if (arena.size() < buffers_.size()) arena.resize(buffers_.size());
    auto data = [&](int id) -> float* {
        if (id == output) return y;
        const BufferShape& s = buffers_[id];
        auto& v = arena[id];
        const size_t need = static_cast<size_t>(N * s.H * s.W * s.C);
        if (v.size() < need) v.resize(need);
        return v.data();
    };
    {  // NCHW -> NHWC input
        const BufferShape& s = buffers_[0];
        float* dst = data(0);
        const int64_t hw = s.H * s.W;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t c = 0; c < s.C; ++c) {
                const float* src = x + (n * s.C + c) * hw;
                float* d = dst + n * hw * s.C + c;
                for (int64_t p = 0; p < hw; ++p) d[p * s.C] = src[p];
            }
    }
    for (const ProgramOp& op : ops_) {
        const BufferShape &i = buffers_[op.in], &o = buffers_[op.out];
        const float* in = data(op.in);
        float* out = data(op.out);
        if (op.kind == ProgramOp::Kind::conv) {
            ConvShape s{N,     i.H,   i.W,   i.C,   o.H,   o.W,   o.C,   op.kh,
                        op.kw, op.sh, op.sw, op.ph, op.pw, op.dh, op.dw, op.groups};
            fused_conv_nhwc(in, op.B, op.A, op.bias, op.residual >= 0 ? data(op.residual) : nullptr, out, s, op.rank,
                            op.act, num_threads);
        } else {
            PoolShape s{N, i.H, i.W, i.C, o.H, o.W, op.kh, op.kw, op.sh, op.sw, op.ph, op.pw};
            pool_nhwc(in, out, s, op.pool, op.count_include_pad, num_threads);
        }
    }
}

}  // namespace basisrt
