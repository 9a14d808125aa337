// A whole plan run in C++: a list of ops (conv, pool, affine, layer and group norm, eltwise, gather, pixel gather,
// resample, softmax, an MBConv's expand + depthwise convs as one) over NHWC buffers
// (a concatenation's parts being views of its buffer), executed in one call with the GIL
// released, so a model whose every step is a basisrt kernel pays no Python round trip per layer
// (about 11 us per step measured through the fx module).
//
// Buffers are numbered; buffer 0 is the input, converted from NCHW here (a PyTorch layout copy
// would wake PyTorch's OpenMP workers, which then spin on the cores our kernels need).
// A batch runs its early ops (large activations, small weights) image group by image group,
// each group on one thread, so activations stay in that core's L2 between ops; the later ops
// run in one group of images per thread when the batch splits evenly, else on the whole batch
// with threads over output tiles.
// Intermediate buffers live in a per-thread arena, so concurrent calls from several threads
// are safe and steady-state calls allocate nothing; a thread keeps at most 256 MiB of them
// between calls (a larger call frees its buffers when it returns). Buffers whose lifetimes do not
// overlap share arena memory (layout()), as in ONNX Runtime's and TFLite's memory planners: one
// buffer per tensor made EfficientNet-B0 at batch 8 need over 256 MiB, and its working set
// missed the caches that a reused one stays in.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "eltwise.h"
#include "fused_conv.h"
#include "pool.h"
#include "softmax.h"

namespace basisrt {

struct BufferShape {
    int64_t H, W, C;  // per image, NHWC
    // A view: channels [offset, offset + C) of buffer `parent` (-1: none), which the producer
    // writes and consumers read in place. This is how a concatenation costs no copy. A parent is
    // never itself a view (Program::alias keeps it so).
    int parent = -1;
    int64_t offset = 0;
    // bf16 bits instead of fp32 (keep_bf16): a map only bf16 convs and pools write and read.
    bool bf16 = false;
};

struct ProgramOp {
    enum class Kind { conv, pool, affine, eltwise, gather, pixel_gather, norm, expand_dw, resample, group_norm, softmax } kind;
    int in, residual, out;  // buffer ids (residual -1: none; eltwise: the second operand)
    // conv: packed weights (owned by the caller, alive as long as the program)
    const float *B = nullptr, *A = nullptr, *bias = nullptr;
    const float* winograd = nullptr;  // a pair's Winograd weights (winograd_conv.h), or null
    // conv: bf16 weights packed for fused_conv_bf16_nhwc (amx_conv.h) instead of B and A; groups 1,
    // no fused pool, bias required; U16: its bf16 Winograd weights (amx_conv.h), or null
    const uint16_t *B16 = nullptr, *A16 = nullptr, *U16 = nullptr;
    bool hilo = true;  // the bf16 pair's basis output as hi + lo (fused_conv_bf16_nhwc)
    int64_t rank = 0;
    Activation act = Activation::none;
    float alpha = 0.01f;  // leaky ReLU's negative slope
    // affine: y = act(x · scale + shift) per channel (act above); norm: the same after a layer
    // norm over each pixel's channels, with eps; group_norm: after a norm over each image's
    // `groups` groups of channels (geometry's groups below)
    const float *scale = nullptr, *shift = nullptr;
    float eps = 1e-5f;
    // eltwise: out = act(in OP residual), residual of in's shape or one pixel per image (broadcast)
    BinaryOp binary = BinaryOp::add;
    // gather: out's channel c is in's channel index[c]; pixel_gather: out's pixel q (of each image) is
    // in's pixel index[q] (its channels from channel_offset[q] when there are offsets), or zeros where
    // index[q] is -1
    std::vector<int64_t> index{};
    std::vector<int64_t> channel_offset{};
    // resample (resample.h): index holds iy (out H × kh taps) then ix (out W × kh), weights wy then wx
    std::vector<float> weights{};
    // softmax (softmax.h): over this axis; groups above (channels: the groups of C / groups channels)
    SoftmaxAxis softmax_axis = SoftmaxAxis::channels;
    // pool
    PoolKind pool = PoolKind::max;
    bool count_include_pad = true;
    // geometry (batch filled in at run time)
    int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1, groups = 1;
    int64_t fused_pool = 1;  // conv: 2 = a 2×2 max pool fused after the epilogue (out is the pooled buffer)
    // expand_dw (expand_depthwise.h): the expand 1×1 conv in B, A, bias, rank, act, alpha above; the
    // depthwise conv on its output (out's channels) in the geometry above and these
    const float *dw_w = nullptr, *dw_bias = nullptr;
    Activation dw_act = Activation::none;
    float dw_alpha = 0.01f;
};

class Program {
  public:
    int add_buffer(BufferShape s);
    // Makes `buffer` the view of channels [offset, offset + its C) of `parent` (a concatenation
    // of buffers that no other concatenation holds). Neither may be the input buffer.
    void alias(int buffer, int parent, int64_t offset);
    // Checks every id, shape and geometry (std::invalid_argument), then appends the op.
    void add_op(const ProgramOp& op);
    // Stores in bf16 every buffer that a bf16 conv writes or reads (as input or residual) and no
    // op but bf16 convs and pools touches: not the input, not an output, no view and no
    // concatenation. Those maps then cost half the bytes to write and read, and the consumer's
    // conversion is a copy. Returns how many; call after the last add_op (a later op touching a
    // bf16 buffer must be a bf16 conv or a pool, or add_op refuses it).
    int keep_bf16(const std::vector<int>& outputs);
    // add_op's checks of ids and geometry alone (not the weight pointers).
    void check(const ProgramOp& op) const;
    // The conv of a conv op that passed check(): its own output, before a fused pool; batch N,
    // dense pixel strides. The sizes of its packed weights follow from it (packed_layout).
    ConvShape conv_shape(const ProgramOp& op, int64_t N = 1) const;
    // An expand_dw op's two convs (same conventions): the 1×1 expand, and the depthwise after it.
    ConvShape expand_shape(const ProgramOp& op, int64_t N = 1) const;
    ConvShape depthwise_shape(const ProgramOp& op, int64_t N = 1) const;
    // x: NCHW (N, C, H, W) of buffer 0; ys[k]: NHWC of buffer outputs[k] (a model's several
    // outputs: distinct roots, none the input, a view or bf16), or NCHW where nchw[k] (the
    // program transposes it on its own threads: PyTorch's copy would wake its OpenMP threads,
    // whose spinning then took a core from the next call's ops). op_seconds, if not null,
    // gets each op's wall time added (size: ops()).
    void run(const float* x, int64_t N, const std::vector<int>& outputs, const std::vector<float*>& ys,
             int num_threads, double* op_seconds = nullptr, const std::vector<bool>& nchw = {}) const;
    // run's checks of N, outputs and num_threads, for a caller that sizes x and ys from buffers() first.
    void check_run(int64_t N, const std::vector<int>& outputs, int num_threads) const;

    size_t ops() const { return ops_.size(); }

    // Ops [begin, end) run in groups of `images` images, one group per thread at a time (images
    // >= N: the whole batch at once, threads over output tiles). Consecutive, covering every op.
    // N in [1, kMaxExtent].
    struct Segment {
        size_t begin, end;
        int64_t images;
    };
    std::vector<Segment> segments(int64_t N, int num_threads) const;

    const std::vector<BufferShape>& buffers() const { return buffers_; }

    // Whether layout() lets a conv write its output over a residual map that dies at it (default
    // true); false, for measuring what that is worth, plans every output in memory of its own.
    bool in_place() const { return in_place_; }
    void set_in_place(bool on);

    // Where each buffer's root lives in the arena: at images · offset[root] floats from its start,
    // for a batch of `images` (the offsets are per image, multiples of 16 floats); the arena holds
    // images · floats. Roots that are live at the same time never overlap. A root used inside an
    // image-grouped segment and outside it (so it holds the whole batch while groups run on
    // different threads at different ops) counts as live over the whole segment. The output buffers
    // (the caller's ys) have no place.
    struct Layout {
        std::vector<int64_t> offset;  // per buffer id; -1 for views, the outputs and unused buffers
        int64_t floats = 0;
    };
    std::shared_ptr<const Layout> layout(const std::vector<Segment>& segments, int64_t N,
                                         const std::vector<int>& outputs) const;

  private:
    int root(int id) const { return buffers_[id].parent >= 0 ? buffers_[id].parent : id; }  // owns id's memory
    int64_t pixel_stride(int id) const { return buffers_[root(id)].C; }
    int64_t floats(int id) const;  // per image, of a root: a bf16 one holds two elements per float
    Segment cache_groups(int64_t N, int num_threads) const;  // the early ops' groups: {0, 0, N} if none
    int64_t weight_floats(const ProgramOp& op) const;
    int64_t activation_floats(const ProgramOp& op) const;  // per image: input + output + residual
    void run_op(const ProgramOp& op, const float* in, const float* residual, float* out, int64_t N,
                int num_threads) const;

    std::vector<BufferShape> buffers_;
    std::vector<ProgramOp> ops_;
    bool in_place_ = true;
    // layout() per (grouped segments, outputs): plans are reused across calls, dropped by add_op
    mutable std::mutex layouts_mu_;
    mutable std::vector<std::pair<std::vector<int64_t>, std::shared_ptr<const Layout>>> layouts_;
};

}  // namespace basisrt
