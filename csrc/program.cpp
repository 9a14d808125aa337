#include "program.h"

#include "aligned_buffer.h"
#include "amx_conv.h"
#include "channel_affine.h"
#include "depthwise_conv.h"
#include "expand_depthwise.h"
#include "resample.h"
#include "shape_checks.h"
#include "thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace basisrt {
namespace {

// Image groups: the early ops of a batch run group by group, one group per thread, so that a
// group's activations stay in its core's L2 from one op to the next instead of streaming the
// whole batch through memory at every op (measured: a rank-6, 64-channel 32x32 layer at batch
// 32 takes 1.4 ms on an input still in cache and 2.0 ms inside a chain of such layers).
constexpr int64_t kGroupBytes = 1 << 20;  // a group's activations of one op (in + out + residual)

// Buffers a thread keeps between calls, so steady-state calls allocate nothing. A call that needed
// more than kKeepBytes (an occasional huge batch behind a server) hands its memory back when it
// ends, instead of holding it for the life of the process. 64 MiB was too low: ResNet-18 r10 at
// batch 32 on 2 threads went over it, re-allocated on every call and ran 10 % slower.
constexpr size_t kKeepBytes = size_t(256) << 20;

struct Arena {
    std::vector<Aligned> buffers;

    float* get(size_t id, size_t floats) {
        if (buffers.size() <= id) buffers.resize(id + 1);
        return buffers[id].get(floats);
    }
    // Frees everything if the arena holds more than kKeepBytes; true if it did.
    bool trim() {
        size_t bytes = 0;
        for (const Aligned& b : buffers) bytes += b.size * sizeof(float);
        if (bytes <= kKeepBytes) return false;
        buffers.clear();
        return true;
    }
};

// Returns freed heap pages to the system: glibc keeps freed blocks under its (adaptive) mmap
// threshold in the heap, where the process's resident size would still count them.
void release_freed_memory() {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}

int64_t elements(const BufferShape& s) { return s.H * s.W * s.C; }

constexpr int64_t kTransposeChannels = 16;  // channels per task of nhwc_to_nchw

// Channels [c0, c0 + kTransposeChannels) of y (C × HW, one image) from t (HW × C): the transpose,
// 64 pixels at a time so that the block stays in L1.
void nhwc_to_nchw(const float* t, int64_t hw, int64_t C, int64_t c0, float* y) {
    constexpr int64_t kPixels = 64;
    const int64_t c1 = std::min(C, c0 + kTransposeChannels);
    for (int64_t p0 = 0; p0 < hw; p0 += kPixels) {
        const int64_t p1 = std::min(hw, p0 + kPixels);
        for (int64_t c = c0; c < c1; ++c)
            for (int64_t p = p0; p < p1; ++p) y[c * hw + p] = t[p * C + c];
    }
}

// BASISRT_POISON_ARENA=1 (the test suite sets it) fills the arena with NaN at every call, so an op
// that reads memory no op of this call wrote (stale data of a buffer that shared it) shows NaN.
// The bits 0x7fc0 7fc0 are a NaN as one float and as two bf16s alike.
float* poisoned(float* block, size_t floats) {
    static const bool poison = std::getenv("BASISRT_POISON_ARENA") != nullptr;
    if (poison) {
        const uint32_t bits = 0x7fc07fc0u;
        float nan;
        std::memcpy(&nan, &bits, sizeof nan);
        std::fill(block, block + floats, nan);
    }
    return block;
}

// Whether op reads and writes bf16 maps (Program::keep_bf16): a bf16 conv or a pool.
bool takes_bf16(const ProgramOp& op) {
    return (op.kind == ProgramOp::Kind::conv && op.B16) || op.kind == ProgramOp::Kind::pool;
}

// Image n of a root buffer whose image 0 is at `base`.
float* image_at(float* base, const BufferShape& b, int64_t n) {
    if (b.bf16) return reinterpret_cast<float*>(reinterpret_cast<uint16_t*>(base) + n * elements(b));
    return base + n * elements(b);
}

}  // namespace

int Program::add_buffer(BufferShape s) {
    const std::string fn = "Program.add_buffer";
    if (s.H < 1 || s.W < 1 || s.C < 1 || s.H > kMaxExtent || s.W > kMaxExtent || s.C > kMaxExtent)
        throw std::invalid_argument(fn + ": H, W and C must be in [1, " + std::to_string(kMaxExtent) + "]");
    checked_elements({s.H, s.W, s.C}, fn + ": the buffer");
    s.parent = -1, s.offset = 0;
    buffers_.push_back(s);
    return static_cast<int>(buffers_.size()) - 1;
}

void Program::alias(int buffer, int parent, int64_t offset) {
    const int n = static_cast<int>(buffers_.size());
    if (buffer <= 0 || buffer >= n || parent <= 0 || parent >= n || buffer == parent)
        throw std::invalid_argument("Program.alias: buffer id out of range");
    BufferShape &b = buffers_[buffer], &p = buffers_[parent];
    if (b.parent >= 0) throw std::invalid_argument("Program.alias: the buffer is already a view");
    if (b.H != p.H || b.W != p.W || offset < 0 || offset + b.C > p.C)
        throw std::invalid_argument("Program.alias: the view does not fit in the parent's channels");
    if (p.parent == buffer) throw std::invalid_argument("Program.alias: a buffer cannot hold itself");
    // Views point straight at the buffer owning the memory (a nested concatenation's parts move
    // into the outer one), so finding a view's memory is one step, not a walk per op.
    const int owner = p.parent >= 0 ? p.parent : parent;
    offset += p.parent >= 0 ? p.offset : 0;
    for (BufferShape& v : buffers_)
        if (v.parent == buffer) v.parent = owner, v.offset += offset;
    b.parent = owner;
    b.offset = offset;
}

void Program::check(const ProgramOp& op) const {
    const int n = static_cast<int>(buffers_.size());
    const std::string fn = "Program.add_op";
    if (op.in < 0 || op.in >= n || op.out <= 0 || op.out >= n || op.residual < -1 || op.residual >= n ||
        op.out == op.in || op.residual == op.out)
        throw std::invalid_argument(fn + ": buffer ids out of range (" + std::to_string(n) + " buffers)");
    const BufferShape &i = buffers_[op.in], &o = buffers_[op.out];
    for (int id : {op.in, op.residual, op.out})
        if (id >= 0 && buffers_[id].bf16 && !takes_bf16(op))
            throw std::invalid_argument(fn + ": buffer " + std::to_string(id) + " holds bf16, which only bf16 convs "
                                             "and pools read and write");
    if (op.kind == ProgramOp::Kind::conv) {
        check_fused_pool(fn, op.fused_pool);  // before conv_shape multiplies by it
        check_conv(fn, conv_shape(op), op.rank, op.residual >= 0);
        check_activation(fn, op.act);
        if (op.residual >= 0) {
            const BufferShape& r = buffers_[op.residual];
            if (r.H != o.H || r.W != o.W || r.C != o.C)
                throw std::invalid_argument(fn + ": the residual buffer must have the output's shape");
        }
    } else if (op.kind == ProgramOp::Kind::expand_dw) {
        if (op.residual >= 0) throw std::invalid_argument(fn + ": an expand_dw op takes no residual");
        check_conv(fn, expand_shape(op), op.rank, false);
        const ConvShape d = depthwise_shape(op);
        check_conv(fn, d, 0, false);
        if (!depthwise_path(d.groups, d.C_in, d.C_out, 0) || 2 * op.ph > (op.kh - 1) * op.dh ||
            2 * op.pw > (op.kw - 1) * op.dw)
            throw std::invalid_argument(fn + ": an expand_dw op's second conv must be depthwise, each window "
                                             "overlapping the image (2·padding <= (kernel-1)·dilation)");
        check_activation(fn, op.act);
        check_activation(fn, op.dw_act);
    } else if (op.kind == ProgramOp::Kind::pool) {
        if (op.residual >= 0 || i.C != o.C) throw std::invalid_argument(fn + ": pooling keeps channels, no residual");
        check_pool(fn, PoolShape{1, i.H, i.W, i.C, o.H, o.W, op.kh, op.kw, op.sh, op.sw, op.ph, op.pw});
        check_pool_kind(fn, op.pool);
    } else if (op.kind == ProgramOp::Kind::affine || op.kind == ProgramOp::Kind::norm ||
               op.kind == ProgramOp::Kind::group_norm) {
        if (op.residual >= 0 || i.H != o.H || i.W != o.W || i.C != o.C)
            throw std::invalid_argument(fn + ": an affine or norm op's output must have the input's shape, no residual");
        if (op.kind != ProgramOp::Kind::affine && !(op.eps >= 0.0f && std::isfinite(op.eps)))
            throw std::invalid_argument(fn + ": a norm op's eps must be finite and >= 0");
        if (op.kind == ProgramOp::Kind::group_norm && (op.groups < 1 || i.C % op.groups))
            throw std::invalid_argument(fn + ": a group norm's groups must divide its channels");
        check_activation(fn, op.act);
    } else if (op.kind == ProgramOp::Kind::eltwise) {
        if (op.residual < 0 || i.H != o.H || i.W != o.W || i.C != o.C)
            throw std::invalid_argument(fn + ": an eltwise op needs a second operand and an output of the input's shape");
        const BufferShape& b = buffers_[op.residual];
        eltwise_broadcast(fn, i.H, i.W, i.C, b.H, b.W, b.C);
        check_activation(fn, op.act);
        check_binary_op(fn, op.binary);
    } else if (op.kind == ProgramOp::Kind::gather) {
        if (op.residual >= 0 || i.H != o.H || i.W != o.W)
            throw std::invalid_argument(fn + ": a gather keeps H and W, no residual");
        check_channel_index(fn, op.index, o.C, i.C);
    } else if (op.kind == ProgramOp::Kind::pixel_gather) {
        if (op.residual >= 0 || (op.channel_offset.empty() && i.C != o.C))
            throw std::invalid_argument(fn + ": a pixel gather keeps the channels (without offsets), no residual");
        check_pixel_index(fn, op.index, o.H * o.W, i.H * i.W);
        if (!op.channel_offset.empty()) check_pixel_offsets(fn, op.channel_offset, o.H * o.W, i.C, o.C);
    } else if (op.kind == ProgramOp::Kind::softmax) {
        if (op.residual >= 0 || i.H != o.H || i.W != o.W || i.C != o.C)
            throw std::invalid_argument(fn + ": a softmax's output must have the input's shape, no residual");
        check_softmax(fn, op.softmax_axis, op.groups, i.C);
    } else if (op.kind == ProgramOp::Kind::resample) {
        if (op.residual >= 0 || i.C != o.C)
            throw std::invalid_argument(fn + ": a resample keeps the channels, no residual");
        const int64_t T = op.kh, rows = o.H * T;
        if (T < 1 || static_cast<int64_t>(op.index.size()) != (o.H + o.W) * T || op.weights.size() != op.index.size())
            throw std::invalid_argument(fn + ": a resample needs (out H + out W) x taps indices and weights");
        check_resample_axis(fn, "row", {op.index.begin(), op.index.begin() + rows},
                            {op.weights.begin(), op.weights.begin() + rows}, T, i.H, o.H);
        check_resample_axis(fn, "column", {op.index.begin() + rows, op.index.end()},
                            {op.weights.begin() + rows, op.weights.end()}, T, i.W, o.W);
    } else {
        throw std::invalid_argument(fn + ": unknown op kind");
    }
}

ConvShape Program::conv_shape(const ProgramOp& op, int64_t N) const {
    const BufferShape &i = buffers_[op.in], &o = buffers_[op.out];
    const int64_t q = op.fused_pool;  // the conv's own output is q times the (pooled) buffer
    return {N, i.H, i.W, i.C, o.H * q, o.W * q, o.C, op.kh, op.kw, op.sh, op.sw, op.ph, op.pw, op.dh, op.dw,
            op.groups, q};
}

ConvShape Program::expand_shape(const ProgramOp& op, int64_t N) const {
    const BufferShape &i = buffers_[op.in], &o = buffers_[op.out];
    return {N, i.H, i.W, i.C, i.H, i.W, o.C, 1, 1, 1, 1, 0, 0, 1, 1, 1};
}

ConvShape Program::depthwise_shape(const ProgramOp& op, int64_t N) const {
    const BufferShape &i = buffers_[op.in], &o = buffers_[op.out];
    return {N, i.H, i.W, o.C, o.H, o.W, o.C, op.kh, op.kw, op.sh, op.sw, op.ph, op.pw, op.dh, op.dw, o.C};
}

void Program::add_op(const ProgramOp& op) {
    check(op);
    {
        std::lock_guard<std::mutex> lk(layouts_mu_);
        layouts_.clear();
    }
    const bool conv = op.kind == ProgramOp::Kind::conv || op.kind == ProgramOp::Kind::expand_dw,
               affine = op.kind == ProgramOp::Kind::affine || op.kind == ProgramOp::Kind::norm ||
                        op.kind == ProgramOp::Kind::group_norm;
    if (op.B16 && (op.kind != ProgramOp::Kind::conv || (op.rank && !op.A16) || !op.bias || op.groups != 1 ||
                   op.fused_pool != 1))
        throw std::invalid_argument("Program.add_op: a bf16 conv needs A (when rank > 0) and a bias, groups 1 and "
                                    "no fused pool");
    if ((conv && !op.B16 && (!op.B || (op.rank && !op.A))) || (affine && (!op.scale || !op.shift)) ||
        (op.kind == ProgramOp::Kind::expand_dw && !op.dw_w))
        throw std::invalid_argument("Program.add_op: a conv needs B (and A when rank > 0), an affine or norm op scale and shift");
    ops_.push_back(op);
}

int Program::keep_bf16(const std::vector<int>& outputs) {
    const int n = static_cast<int>(buffers_.size());
    std::vector<bool> ok(n, true), by_conv(n, false);
    for (int output : outputs) {
        if (output < 1 || output >= n) throw std::invalid_argument("Program.keep_bf16: output buffer id out of range");
        ok[output] = false;
    }
    ok[0] = false;
    for (int id = 0; id < n; ++id)
        if (buffers_[id].parent >= 0) ok[id] = ok[buffers_[id].parent] = false;
    for (const ProgramOp& op : ops_)
        for (int id : {op.in, op.residual, op.out}) {
            if (id < 0) continue;
            if (!takes_bf16(op)) ok[id] = false;
            if (op.kind == ProgramOp::Kind::conv) by_conv[id] = true;  // a map of pools alone stays fp32
        }
    int count = 0;
    for (int id = 0; id < n; ++id)
        if (ok[id] && by_conv[id] && !buffers_[id].bf16) buffers_[id].bf16 = true, ++count;
    std::lock_guard<std::mutex> lk(layouts_mu_);
    layouts_.clear();  // sizes changed
    return count;
}

int64_t Program::floats(int id) const {
    const BufferShape& b = buffers_[id];
    return b.bf16 ? (elements(b) + 1) / 2 : elements(b);
}

int64_t Program::weight_floats(const ProgramOp& op) const {
    if (op.kind == ProgramOp::Kind::affine || op.kind == ProgramOp::Kind::norm ||
        op.kind == ProgramOp::Kind::group_norm)
        return 2 * buffers_[op.in].C;
    if (op.kind == ProgramOp::Kind::expand_dw) {
        const int64_t C = buffers_[op.in].C, E = buffers_[op.out].C;
        return (op.rank ? op.rank * (C + E) : C * E) + op.kh * op.kw * E;
    }
    if (op.kind != ProgramOp::Kind::conv) return 0;
    const int64_t K = op.kh * op.kw * buffers_[op.in].C / op.groups, cg = buffers_[op.out].C / op.groups;
    return op.groups * (op.rank ? op.rank * (K + cg) : K * cg);
}

int64_t Program::activation_floats(const ProgramOp& op) const {
    // Counted as fp32 when bf16 too: a bf16 conv also holds a padded bf16 copy of its input and fp32
    // tiles, and counting bf16 maps at half doubled VGG16's image groups and cost 3-8 % (batch 32).
    const auto& b = buffers_;
    return elements(b[op.in]) + elements(b[op.out]) + (op.residual >= 0 ? elements(b[op.residual]) : 0);
}

Program::Segment Program::cache_groups(int64_t N, int num_threads) const {
    // Images whose activations of one op (per_image floats each) fit kGroupBytes.
    auto fit = [](int64_t per_image) {
        return std::max<int64_t>(1, kGroupBytes / (std::max<int64_t>(per_image, 1) * int64_t(sizeof(float))));
    };
    // The prefix of ops whose weights, reread once per group, cost less than the activations
    // they keep in cache; the group is as many images as fit for every op in it.
    int64_t per_image = 0;
    size_t ops = 0;
    for (; ops < ops_.size(); ++ops) {
        const int64_t a = activation_floats(ops_[ops]);
        if (weight_floats(ops_[ops]) > a * fit(std::max(per_image, a))) break;
        per_image = std::max(per_image, a);
    }
    if (ops == 0) return {0, 0, N};
    // The largest group that fits and gives every thread the same number of groups (11 groups of
    // 3 images ran 6 + 5 on two threads, where 16 groups of 2 run 8 + 8).
    for (int64_t g = std::min(fit(per_image), N / num_threads); g >= 1; --g)
        if ((N + g - 1) / g % num_threads == 0) return {0, ops, g};
    return {0, 0, N};
}

std::vector<Program::Segment> Program::segments(int64_t N, int num_threads) const {
    if (N < 1 || N > kMaxExtent)
        throw std::invalid_argument("Program.segments: N must be in [1, " + std::to_string(kMaxExtent) + "]");
    check_threads("Program.segments", num_threads);
    std::vector<Segment> out;
    const Segment first = cache_groups(N, num_threads);
    if (first.end > 0) out.push_back(first);
    // The later ops (small maps, big weights): one group per thread when the batch splits evenly.
    // Each thread reads every weight once, as it would for its share of the whole batch's tiles,
    // but its images' activations stay in its own core's caches from op to op, and there is no
    // barrier between ops: VGG16 / ResNet-18 r10 ran 2-5 % faster at batch 4, 8 and 32.
    const bool even = N >= 2 * num_threads && N % num_threads == 0;
    if (first.end < ops_.size()) out.push_back({first.end, ops_.size(), even ? N / num_threads : N});
    return out;
}

std::shared_ptr<const Program::Layout> Program::layout(const std::vector<Segment>& segments, int64_t N,
                                                       const std::vector<int>& outputs) const {
    std::vector<int64_t> key{int64_t(outputs.size())};
    key.insert(key.end(), outputs.begin(), outputs.end());
    const size_t segments_at = key.size();
    for (const Segment& seg : segments)
        if (seg.images < N) key.insert(key.end(), {int64_t(seg.begin), int64_t(seg.end)});
    std::lock_guard<std::mutex> lk(layouts_mu_);
    for (const auto& [k, l] : layouts_)
        if (k == key) return l;

    // Lifetimes in op indices: [first, last] over the ops that touch the root (the input from -1,
    // its conversion from NCHW).
    const int n = static_cast<int>(buffers_.size());
    constexpr int64_t kUnused = std::numeric_limits<int64_t>::max();
    std::vector<int64_t> first(n, kUnused), last(n, -1);
    auto touch = [&](int id, int64_t k) {
        if (id < 0) return;
        const int r = root(id);
        first[r] = std::min(first[r], k), last[r] = std::max(last[r], k);
    };
    touch(0, -1);
    for (size_t k = 0; k < ops_.size(); ++k)
        for (int id : {ops_[k].in, ops_[k].residual, ops_[k].out}) touch(id, int64_t(k));
    for (size_t i = segments_at; i < key.size(); i += 2) {  // grouped segments: whole-batch roots live throughout
        const int64_t b = key[i], e = key[i + 1];
        for (int r = 0; r < n; ++r)
            if (first[r] != kUnused && first[r] < e && last[r] >= b && (first[r] < b || last[r] >= e))
                first[r] = std::min(first[r], b), last[r] = std::max(last[r], e - 1);
    }
    auto is_output = [&](int r) { return std::find(outputs.begin(), outputs.end(), r) != outputs.end(); };
    // In place: a conv whose residual map dies at it writes its output over that map (same shape
    // and type, both arena roots, its input elsewhere). The epilogue reads each residual element
    // just before it writes the output element there, so the output's lines are in cache already;
    // into fresh memory every line cost a read for ownership as well (torchvision's ResNet-50, whose
    // blocks end in a 1x1 pair to 4x the channels: 1.12x faster, bench/in_place_ab.py).
    std::vector<int> over(n, -1);  // a root -> the root whose memory it takes
    auto home = [&](int r) {
        while (over[r] >= 0) r = over[r];
        return r;
    };
    for (size_t k = 0; k < ops_.size(); ++k) {
        const ProgramOp& op = ops_[k];
        if (!in_place_ || op.kind != ProgramOp::Kind::conv || op.residual < 0) continue;
        const int res = op.residual, out = op.out, at = home(res);
        const BufferShape &a = buffers_[res], &b = buffers_[out];
        if (a.parent >= 0 || b.parent >= 0 || is_output(res) || is_output(out) || last[at] != int64_t(k) ||
            first[out] != int64_t(k) || home(root(op.in)) == at || a.H != b.H || a.W != b.W || a.C != b.C ||
            a.bf16 != b.bf16)
            continue;
        over[out] = at;
        last[at] = last[out];
    }
    // Greedy by size: largest first, each at the lowest offset clear of every placed root that is
    // live at the same time.
    auto layout = std::make_shared<Layout>();
    layout->offset.assign(n, -1);
    std::vector<int> order;
    for (int r = 0; r < n; ++r)
        if (!is_output(r) && buffers_[r].parent < 0 && first[r] != kUnused && over[r] < 0) order.push_back(r);
    auto size = [&](int r) { return round_up(floats(r), kColBlock); };
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return size(a) > size(b); });
    std::vector<int> placed;
    for (int r : order) {
        std::vector<std::pair<int64_t, int64_t>> busy;  // [begin, end) of live placed roots
        for (int q : placed)
            if (first[q] <= last[r] && first[r] <= last[q]) busy.push_back({layout->offset[q], layout->offset[q] + size(q)});
        std::sort(busy.begin(), busy.end());
        int64_t at = 0;
        for (const auto& [b, e] : busy) {
            if (at + size(r) <= b) break;
            at = std::max(at, e);
        }
        layout->offset[r] = at;
        layout->floats = std::max(layout->floats, at + size(r));
        placed.push_back(r);
    }
    for (int r = 0; r < n; ++r)
        if (over[r] >= 0) layout->offset[r] = layout->offset[home(r)];
    layouts_.push_back({key, layout});
    return layout;
}

void Program::set_in_place(bool on) {
    std::lock_guard<std::mutex> lk(layouts_mu_);
    in_place_ = on;
    layouts_.clear();
}

void Program::run_op(const ProgramOp& op, const float* in, const float* residual, float* out, int64_t N,
                     int num_threads) const {
    const BufferShape &i = buffers_[op.in], &o = buffers_[op.out];
    const int64_t ldx = pixel_stride(op.in), ldy = pixel_stride(op.out);
    if (op.kind == ProgramOp::Kind::conv) {
        ConvShape s = conv_shape(op, N);
        s.ldx = ldx, s.ldy = ldy, s.ldr = op.residual >= 0 ? pixel_stride(op.residual) : 0;
        const Bf16Io io{i.bf16, op.residual >= 0 && buffers_[op.residual].bf16, o.bf16};
        if (op.B16)
            fused_conv_bf16_nhwc(in, op.B16, op.A16, op.bias, residual, out, s, op.rank, op.act, num_threads, op.alpha,
                                 io, op.U16, op.hilo);
        else
            fused_conv_nhwc(in, op.B, op.A, op.bias, residual, out, s, op.rank, op.act, num_threads, op.alpha,
                            op.winograd);
    } else if (op.kind == ProgramOp::Kind::expand_dw) {
        ConvShape d = depthwise_shape(op, N);
        d.ldy = ldy;
        const ExpandConv e{op.B, op.A, op.bias, i.C, op.rank, op.act, op.alpha};
        expand_depthwise_nhwc(in, ldx, e, op.dw_w, op.dw_bias, out, d, op.dw_act, op.dw_alpha, num_threads);
    } else if (op.kind == ProgramOp::Kind::pool) {
        PoolShape s{N, i.H, i.W, i.C, o.H, o.W, op.kh, op.kw, op.sh, op.sw, op.ph, op.pw, ldx, ldy, i.bf16, o.bf16};
        pool_nhwc(in, out, s, op.pool, op.count_include_pad, num_threads);
    } else if (op.kind == ProgramOp::Kind::affine) {
        channel_affine_nhwc(in, op.scale, op.shift, out, N * i.H * i.W, i.C, ldx, ldy, op.act, num_threads, op.alpha);
    } else if (op.kind == ProgramOp::Kind::group_norm) {
        group_norm_nhwc(in, op.scale, op.shift, out, N, i.H * i.W, i.C, op.groups, ldx, ldy, op.eps, op.act,
                        num_threads, op.alpha);
    } else if (op.kind == ProgramOp::Kind::norm) {
        channel_norm_nhwc(in, op.scale, op.shift, out, N * i.H * i.W, i.C, ldx, ldy, op.eps, op.act, num_threads,
                          op.alpha);
    } else if (op.kind == ProgramOp::Kind::eltwise) {
        const BufferShape& b = buffers_[op.residual];
        const Broadcast bc = eltwise_broadcast("Program.run", i.H, i.W, i.C, b.H, b.W, b.C);
        eltwise_nhwc(in, residual, out, N * i.H * i.W, broadcast_span(bc, i.H, i.W), i.C, ldx, pixel_stride(op.residual), ldy, op.binary,
                     bc, op.act, op.alpha, num_threads);
    } else if (op.kind == ProgramOp::Kind::gather) {
        channel_gather_nhwc(in, op.index.data(), out, N * i.H * i.W, o.C, ldx, ldy, num_threads);
    } else if (op.kind == ProgramOp::Kind::softmax) {
        softmax_nhwc(in, out, N, i.H, i.W, i.C, ldx, ldy, op.softmax_axis, op.groups, num_threads);
    } else if (op.kind == ProgramOp::Kind::resample) {
        const int64_t rows = o.H * op.kh;
        const ResampleTaps t{op.kh, op.index.data(), op.index.data() + rows, op.weights.data(), op.weights.data() + rows};
        resample_nhwc(in, out, N, i.H, i.W, o.H, o.W, i.C, ldx, ldy, t, num_threads);
    } else {
        pixel_gather_nhwc(in, op.index.data(), op.channel_offset.empty() ? nullptr : op.channel_offset.data(), out, N,
                          i.H * i.W, o.H * o.W, o.C, ldx, ldy, num_threads);
    }
}

void Program::check_run(int64_t N, const std::vector<int>& outputs, int num_threads) const {
    const std::string fn = "Program.run";
    if (outputs.empty()) throw std::invalid_argument(fn + ": no output buffer");
    for (size_t k = 0; k < outputs.size(); ++k) {
        const int output = outputs[k];
        if (output < 1 || output >= static_cast<int>(buffers_.size()))
            throw std::invalid_argument(fn + ": output buffer id out of range");
        if (buffers_[output].parent >= 0) throw std::invalid_argument(fn + ": an output buffer is a view");
        if (buffers_[output].bf16) throw std::invalid_argument(fn + ": an output buffer holds bf16 (keep_bf16)");
        if (std::find(outputs.begin(), outputs.begin() + k, output) != outputs.begin() + k)
            throw std::invalid_argument(fn + ": an output buffer is listed twice");
    }
    check_threads(fn, num_threads);
    int64_t largest = 1;  // floats per image of the largest buffer (each is within kMaxElements)
    for (const BufferShape& b : buffers_) largest = std::max(largest, elements(b));
    if (N < 0 || N > kMaxExtent || N > kMaxElements / largest)
        throw std::invalid_argument(fn + ": batch size out of range for this program's buffers");
}

void Program::run(const float* x, int64_t N, const std::vector<int>& outputs, const std::vector<float*>& ys,
                  int num_threads, double* op_seconds, const std::vector<bool>& nchw) const {
    using clock = std::chrono::steady_clock;
    check_run(N, outputs, num_threads);
    if (ys.size() != outputs.size()) throw std::invalid_argument("Program.run: one y per output buffer");
    if (N == 0) return;  // an empty batch: an empty output, as PyTorch gives
    const std::vector<Segment> segs = segments(N, num_threads);
    const std::shared_ptr<const Layout> layout = this->layout(segs, N, outputs);
    if (!nchw.empty() && nchw.size() != outputs.size()) throw std::invalid_argument("Program.run: one nchw per output");
    // Per-thread arena: one block, each root of the whole batch at its planned offset; then an
    // NHWC block for each output the caller takes NCHW.
    thread_local Arena arena;
    std::vector<float*> caller(buffers_.size(), nullptr);  // an output root's memory: the caller's y
    std::vector<float*> staged(outputs.size(), nullptr);
    for (size_t k = 0; k < outputs.size(); ++k) {
        if (!nchw.empty() && nchw[k])
            staged[k] = arena.get(1 + k, static_cast<size_t>(N * elements(buffers_[outputs[k]])));
        caller[outputs[k]] = staged[k] ? staged[k] : ys[k];
    }
    struct Trim {  // on every way out, exceptions included
        Arena& a;
        ~Trim() {
            if (a.trim()) release_freed_memory();
        }
    } trim{arena};
    float* const block = poisoned(arena.get(0, static_cast<size_t>(N * layout->floats)), N * layout->floats);
    auto data = [&](int id) -> float* {  // a view's memory is its root's, at the view's channel offset
        const int r = root(id);
        return (caller[r] ? caller[r] : block + N * layout->offset[r]) + buffers_[id].offset;
    };
    {  // NCHW -> NHWC input
        const BufferShape& s = buffers_[0];
        float* dst = data(0);
        const int64_t hw = s.H * s.W;
        parallel_for(N, num_threads, [&](int64_t n) {  // 50 us for 32 RGB 32x32 images on one thread
            for (int64_t c = 0; c < s.C; ++c) {
                const float* src = x + (n * s.C + c) * hw;
                float* d = dst + n * hw * s.C + c;
                for (int64_t p = 0; p < hw; ++p) d[p * s.C] = src[p];
            }
        });
    }

    for (const Segment& seg : segs) {
        if (seg.images >= N) {
            for (size_t k = seg.begin; k < seg.end; ++k) {
                const ProgramOp& op = ops_[k];
                const auto start = clock::now();
                run_op(op, data(op.in), op.residual >= 0 ? data(op.residual) : nullptr, data(op.out), N, num_threads);
                if (op_seconds) op_seconds[k] += std::chrono::duration<double>(clock::now() - start).count();
            }
            continue;
        }
        // Buffers (roots) that ops outside the segment use hold the whole batch; the rest are
        // per-group scratch.
        std::vector<float*> whole(buffers_.size(), nullptr);
        whole[0] = data(0);
        for (size_t k = 0; k < outputs.size(); ++k) whole[outputs[k]] = caller[outputs[k]];
        for (size_t k = 0; k < ops_.size(); ++k) {
            if (k >= seg.begin && k < seg.end) continue;
            for (int id : {ops_[k].in, ops_[k].out, ops_[k].residual})
                if (id >= 0) whole[root(id)] = data(root(id));
        }
        const int64_t groups = (N + seg.images - 1) / seg.images;
        std::mutex mu;
        parallel_for(groups, num_threads, [&](int64_t task) {
            thread_local Arena scratch;
            float* const group_block =
                poisoned(scratch.get(0, static_cast<size_t>(seg.images * layout->floats)), seg.images * layout->floats);
            const int64_t n0 = task * seg.images, n = std::min(seg.images, N - n0);
            auto at = [&](int id) -> float* {
                const int r = root(id);
                return (whole[r] ? image_at(whole[r], buffers_[r], n0) : group_block + seg.images * layout->offset[r]) +
                       buffers_[id].offset;
            };
            std::vector<double> seconds(op_seconds ? seg.end - seg.begin : 0);
            for (size_t k = seg.begin; k < seg.end; ++k) {
                const ProgramOp& op = ops_[k];
                const auto start = clock::now();
                run_op(op, at(op.in), op.residual >= 0 ? at(op.residual) : nullptr, at(op.out), n, 1);
                if (op_seconds) seconds[k - seg.begin] = std::chrono::duration<double>(clock::now() - start).count();
            }
            if (scratch.trim()) release_freed_memory();
            if (op_seconds) {  // thread time; divided by the threads below to approximate wall time
                std::lock_guard<std::mutex> lk(mu);
                for (size_t k = seg.begin; k < seg.end; ++k)
                    op_seconds[k] += seconds[k - seg.begin] / std::min<int64_t>(num_threads, groups);
            }
        });
    }
    for (size_t k = 0; k < outputs.size(); ++k) {
        if (!staged[k]) continue;
        const BufferShape& b = buffers_[outputs[k]];
        const int64_t hw = b.H * b.W, blocks = (b.C + kTransposeChannels - 1) / kTransposeChannels;
        parallel_for(N * blocks, num_threads, [&](int64_t task) {
            const int64_t n = task / blocks;
            nhwc_to_nchw(staged[k] + n * hw * b.C, hw, b.C, task % blocks * kTransposeChannels, ys[k] + n * hw * b.C);
        });
    }
}

}  // namespace basisrt
