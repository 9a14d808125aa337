// The fused conv's GEMM (fused_conv.cpp) for the library's other conv kernels: row-major A · B with
// B's N columns packed in whole vector blocks (a multiple of kColBlock, zero-padded).
#pragma once
#include <cstdint>

#include "fused_conv.h"

namespace basisrt {

// c (M × N, row stride ldc) = a (M × K, row stride lda) · b (K × N, row stride ldb).
void gemm_plain(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t M, int64_t N, int64_t K, float* c,
                int64_t ldc);

// c (M × N, row stride ldc) = a (M × K, row stride lda) · btᵀ, bt (N × K) row-major, K a multiple of
// kColBlock: vectorised over K (fused_conv's channel-dot path), for small N, which it does not pad.
void gemm_dot(const float* a, int64_t lda, int64_t M, int64_t K, const float* bt, int64_t N, float* c, int64_t ldc);

// The conv epilogue on a · b: y's first ncols columns (row stride ldy) = clamp(a · b + bias (+ residual,
// row stride ldr)); activations that are not clamps are left to activate_rows. bias is not null.
struct Epilogue {
    float* y;
    int64_t ldy;
    const float* bias;
    const float* residual;
    int64_t ldr, ncols;
    Activation act;
};
void gemm_epilogue(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t M, int64_t N, int64_t K,
                   const Epilogue& out);
// The same epilogue on sums already made: p (M × N, row stride ldp, N a multiple of kColBlock).
// AVX-512 CPUs only (the Winograd conv's).
void store_epilogue(const float* p, int64_t ldp, int64_t M, int64_t N, const Epilogue& out);

}  // namespace basisrt
