#include "shape_checks.h"

#include <stdexcept>

namespace basisrt {
namespace {

[[noreturn]] void fail(const std::string& fn, const std::string& msg) { throw std::invalid_argument(fn + ": " + msg); }

void in_range(const std::string& fn, int64_t v, int64_t lo, const char* name) {
    if (v < lo || v > kMaxExtent)
        fail(fn, std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(kMaxExtent) +
                     "], got " + std::to_string(v));
}

void pair_in_range(const std::string& fn, int64_t a, int64_t b, int64_t lo, const char* name) {
    in_range(fn, a, lo, name);
    in_range(fn, b, lo, name);
}

}  // namespace

int64_t checked_elements(std::initializer_list<int64_t> dims, const std::string& what) {
    int64_t n = 1;
    for (int64_t d : dims)
        if (d < 0 || __builtin_mul_overflow(n, d, &n) || n > kMaxElements)
            throw std::invalid_argument(what + " is too large (more than 2^40 elements) or has a negative size");
    return n;
}

int64_t nhwc_pixel_stride(const std::string& fn, const std::string& name, const int64_t (&shape)[4],
                          const int64_t (&strides)[4], int64_t elem_bytes) {
    const int64_t f = elem_bytes, H = shape[1], W = shape[2], C = shape[3];
    if (shape[0] == 0 || H == 0 || W == 0 || C == 0) return C;  // nothing is read or written: any strides
    const int64_t per[3] = {H * W, W, 1};  // pixels per step of dims 0..2
    // The stride of the outermost dimension that moves decides; dimensions of size 1 have any stride.
    int64_t ld = C;
    for (int d = 2; d >= 0; --d)
        if (shape[d] > 1) {
            ld = strides[d] / (f * per[d]);
            break;
        }
    bool ok = ld >= C && (C == 1 || strides[3] == f);
    for (int d = 0; d < 3; ++d) ok = ok && (shape[d] == 1 || strides[d] == ld * per[d] * f);
    if (!ok) fail(fn, name + " must be NHWC, C-contiguous or a channel slice of a C-contiguous array");
    return ld;
}

void check_fused_pool(const std::string& fn, int64_t pool) {
    if (pool != 1 && pool != 2) fail(fn, "pool is 1 (none) or 2 (2x2 max), got " + std::to_string(pool));
}

void check_conv(const std::string& fn, const ConvShape& s, int64_t rank, bool residual) {
    check_fused_pool(fn, s.pool);
    in_range(fn, s.N, 0, "the batch N");
    pair_in_range(fn, s.H, s.W, 1, "the input's H and W");
    in_range(fn, s.C_in, 1, "C_in");
    in_range(fn, s.C_out, 1, "C_out");
    pair_in_range(fn, s.kh, s.kw, 1, "kernel");
    pair_in_range(fn, s.sh, s.sw, 1, "stride");
    pair_in_range(fn, s.ph, s.pw, 0, "padding");
    pair_in_range(fn, s.dh, s.dw, 1, "dilation");
    in_range(fn, s.groups, 1, "groups");
    in_range(fn, rank, 0, "rank");
    if (s.C_in % s.groups || s.C_out % s.groups) fail(fn, "groups must divide C_in and C_out");
    const int64_t ho = window_out(s.H, s.kh, s.sh, s.ph, s.dh), wo = window_out(s.W, s.kw, s.sw, s.pw, s.dw);
    if (ho < 1 || wo < 1) fail(fn, "the dilated kernel does not fit in the padded input");
    if (ho != s.Ho || wo != s.Wo)
        fail(fn, "output size (" + std::to_string(s.Ho / s.pool) + ", " + std::to_string(s.Wo / s.pool) +
                     ") does not match the conv geometry (" + std::to_string(ho) + ", " + std::to_string(wo) +
                     (s.pool > 1 ? ", then halved by the fused 2x2 pool)" : ")"));
    if (s.pool == 2 && (residual || s.Ho % 2 || s.Wo % 2))
        fail(fn, "a fused pool is 2 (2x2 max, stride 2) over an even-sized output, without residual");
    if (s.ldx < 0 || s.ldy < 0 || s.ldr < 0) fail(fn, "pixel strides must be non-negative");
    checked_elements({s.N, s.H, s.W, s.ldx ? s.ldx : s.C_in}, "the input");
    checked_elements({s.N, s.Ho, s.Wo, s.ldy ? s.ldy : s.C_out}, "the output");
    checked_elements({s.kh, s.kw, s.C_in, rank ? round_up(rank, kColBlock) + s.C_out : s.C_out + kColBlock},
                     "the weights");
}

void check_pool(const std::string& fn, const PoolShape& s) {
    in_range(fn, s.N, 0, "the batch N");
    pair_in_range(fn, s.H, s.W, 1, "the input's H and W");
    in_range(fn, s.C, 1, "C");
    pair_in_range(fn, s.sh, s.sw, 1, "stride");
    pair_in_range(fn, s.ph, s.pw, 0, "padding");
    if (s.kh == 0 && s.kw == 0) {  // adaptive: any output size, windows from the sizes alone
        if (s.ph || s.pw || s.sh != 1 || s.sw != 1) fail(fn, "an adaptive pool (kernel 0, 0) takes stride 1, padding 0");
        pair_in_range(fn, s.Ho, s.Wo, 1, "the output's H and W");
    } else {
        pair_in_range(fn, s.kh, s.kw, 1, "kernel");
        if (2 * s.ph > s.kh || 2 * s.pw > s.kw) fail(fn, "padding at most half the kernel, got more");
        const int64_t ho = window_out(s.H, s.kh, s.sh, s.ph), wo = window_out(s.W, s.kw, s.sw, s.pw);
        const int64_t ho_ceil = window_out_ceil(s.H, s.kh, s.sh, s.ph);
        const int64_t wo_ceil = window_out_ceil(s.W, s.kw, s.sw, s.pw);
        const bool h_ok = (ho >= 1 && s.Ho == ho) || (ho_ceil >= 1 && s.Ho == ho_ceil);
        const bool w_ok = (wo >= 1 && s.Wo == wo) || (wo_ceil >= 1 && s.Wo == wo_ceil);
        if (!h_ok || !w_ok) fail(fn, "output size does not match the pooling geometry (floor or ceil mode)");
    }
    if (s.ldx < 0 || s.ldy < 0) fail(fn, "pixel strides must be non-negative");
    checked_elements({s.N, s.H, s.W, s.ldx ? s.ldx : s.C}, "the input");
    checked_elements({s.N, s.Ho, s.Wo, s.ldy ? s.ldy : s.C}, "the output");
}

void check_activation(const std::string& fn, Activation act) {
    const int v = static_cast<int>(act);
    if (v < 0 || v >= kActivations)
        fail(fn, "activation must be in [0, " + std::to_string(kActivations - 1) + "], got " + std::to_string(v));
}

void check_binary_op(const std::string& fn, BinaryOp op) {
    const int v = static_cast<int>(op);
    if (v < 0 || v >= kBinaryOps) fail(fn, "binary op must be 0 (add), 1 (mul), 2 (sub) or 3 (div), got " + std::to_string(v));
}

void check_softmax(const std::string& fn, SoftmaxAxis axis, int64_t groups, int64_t C) {
    const int v = static_cast<int>(axis);
    if (v < 0 || v >= kSoftmaxAxes)
        fail(fn, "softmax axis must be 0 (channels), 1 (width) or 2 (pixels), got " + std::to_string(v));
    if (axis == SoftmaxAxis::channels ? groups < 1 || C % groups : groups != 1)
        fail(fn, "a softmax's groups must divide the channels (over channels), else be 1; got " +
                     std::to_string(groups) + " for " + std::to_string(C) + " channels");
}

void check_pool_kind(const std::string& fn, PoolKind kind) {
    const int v = static_cast<int>(kind);
    if (v < 0 || v >= kPoolKinds) fail(fn, "pool kind must be 0 (max), 1 (avg) or 2 (l2), got " + std::to_string(v));
}

void check_threads(const std::string& fn, int64_t num_threads) {
    if (num_threads < 1 || num_threads > kMaxThreads)
        fail(fn, "num_threads must be in [1, " + std::to_string(kMaxThreads) + "], got " + std::to_string(num_threads));
}

Broadcast eltwise_broadcast(const std::string& fn, int64_t Ha, int64_t Wa, int64_t Ca, int64_t Hb, int64_t Wb,
                            int64_t Cb) {
    const bool same_map = Hb == Ha && Wb == Wa;
    if (same_map && Cb == Ca) return Broadcast::none;
    if (Hb == 1 && Wb == 1 && Cb == Ca) return Broadcast::image;
    if (same_map && Cb == 1) return Broadcast::channel;
    if (Hb == Ha && Wb == 1 && Cb == Ca) return Broadcast::row;
    fail(fn, "b must have a's shape, one pixel per image (N, 1, 1, C), one channel per pixel (N, H, W, 1) or one "
             "pixel per row (N, H, 1, C)");
}

void check_channel_index(const std::string& fn, const std::vector<int64_t>& index, int64_t C_out, int64_t C_in) {
    if (static_cast<int64_t>(index.size()) != C_out)
        fail(fn, "index must have one entry per output channel (" + std::to_string(C_out) + "), got " +
                     std::to_string(index.size()));
    for (size_t c = 0; c < index.size(); ++c)
        if (index[c] < 0 || index[c] >= C_in)
            fail(fn, "index[" + std::to_string(c) + "] = " + std::to_string(index[c]) +
                         " is outside the input's channels [0, " + std::to_string(C_in) + ")");
}

void check_pixel_offsets(const std::string& fn, const std::vector<int64_t>& offset, int64_t P_out, int64_t C_in,
                         int64_t C_out) {
    if (static_cast<int64_t>(offset.size()) != P_out)
        fail(fn, "offset must have one entry per output pixel (" + std::to_string(P_out) + "), got " +
                     std::to_string(offset.size()));
    for (size_t q = 0; q < offset.size(); ++q)
        if (offset[q] < 0 || offset[q] > C_in - C_out)
            fail(fn, "offset[" + std::to_string(q) + "] = " + std::to_string(offset[q]) + ": channels [offset, offset + " +
                         std::to_string(C_out) + ") are outside the input's " + std::to_string(C_in));
}

void check_pixel_index(const std::string& fn, const std::vector<int64_t>& index, int64_t P_out, int64_t P_in) {
    if (static_cast<int64_t>(index.size()) != P_out)
        fail(fn, "index must have one entry per output pixel (" + std::to_string(P_out) + "), got " +
                     std::to_string(index.size()));
    for (size_t q = 0; q < index.size(); ++q)
        if (index[q] < -1 || index[q] >= P_in)
            fail(fn, "index[" + std::to_string(q) + "] = " + std::to_string(index[q]) +
                         " is outside the input's pixels [0, " + std::to_string(P_in) + ") (or -1 for zeros)");
}

}  // namespace basisrt
