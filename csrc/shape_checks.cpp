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

void check_conv(const std::string& fn, const ConvShape& s, int64_t rank, bool residual) {
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
    if (s.pool != 1 && (s.pool != 2 || residual || s.Ho % 2 || s.Wo % 2))
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
    pair_in_range(fn, s.kh, s.kw, 1, "kernel");
    pair_in_range(fn, s.sh, s.sw, 1, "stride");
    pair_in_range(fn, s.ph, s.pw, 0, "padding");
    if (2 * s.ph > s.kh || 2 * s.pw > s.kw) fail(fn, "padding at most half the kernel, got more");
    const int64_t ho = window_out(s.H, s.kh, s.sh, s.ph), wo = window_out(s.W, s.kw, s.sw, s.pw);
    const int64_t ho_ceil = window_out_ceil(s.H, s.kh, s.sh, s.ph), wo_ceil = window_out_ceil(s.W, s.kw, s.sw, s.pw);
    if (ho < 1 || wo < 1 || (s.Ho != ho && s.Ho != ho_ceil) || (s.Wo != wo && s.Wo != wo_ceil))
        fail(fn, "output size does not match the pooling geometry (floor or ceil mode)");
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
    if (v < 0 || v >= kBinaryOps) fail(fn, "binary op must be 0 (add) or 1 (mul), got " + std::to_string(v));
}

void check_pool_kind(const std::string& fn, PoolKind kind) {
    const int v = static_cast<int>(kind);
    if (v < 0 || v > 1) fail(fn, "pool kind must be 0 (max) or 1 (avg), got " + std::to_string(v));
}

void check_threads(const std::string& fn, int64_t num_threads) {
    if (num_threads < 1 || num_threads > kMaxThreads)
        fail(fn, "num_threads must be in [1, " + std::to_string(kMaxThreads) + "], got " + std::to_string(num_threads));
}

}  // namespace basisrt
