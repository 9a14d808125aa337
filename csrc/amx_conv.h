// Convs with bfloat16 weights on AMX tiles (TDPBF16PS), or where the CPU has no AMX on AVX512-BF16
// vectors (VDPBF16PS, the same layouts), fp32 accumulation; NHWC activations in fp32 or bf16
// (Bf16Io: a native program keeps the maps between two bf16 convs in bf16, half the bytes).
//
// First x is converted once to a zero-padded bf16 copy xp (borders of ph / pw pixels, channels
// padded to Cp = C_in rounded up to kAmxK). Then one output tile of 32 pixels at a time (threads
// over tiles), as fused_conv_nhwc:
//   T = im2col(xp)[tile] · B   (32 × Np fp32 on tiles; Np: the basis conv's rank, or C_out)
//   y = bf16(T) · A + bias (+ residual) (→ activation)   (a basis pair; a dense conv skips A)
//       or with `hilo` [hi(T), lo(T)] · [A; A]          (T split in two bf16 parts)
// When the output rows are a multiple of 16 pixels wide, a tile's 16 pixels lie in one row and
// the A tiles read xp in place (one row of the tile per pixel, a stride apart); otherwise the
// tile's im2col rows are copied out of xp first.
// K runs tap by tap (kh·kw taps, row-major), Cp channels per tap. B and A are packed by
// pack_bf16_vnni from K × N matrices in that order (basisrt/compiler/bf16.py): pairs of
// consecutive K rows interleaved per column, K padded to kAmxK, columns to kAmxN. Groups 1 and
// no fused pool: the Python planner leaves other convs to the fp32 kernels.
#pragma once
#include <cstdint>

#include "fused_conv.h"

namespace basisrt {

constexpr int64_t kAmxK = 32;  // bf16 elements of K per tile row (64 bytes)
constexpr int64_t kAmxN = 16;  // fp32 columns per accumulator tile

// Whether the CPU has AMX-BF16 and AVX512-BF16 and the OS let this process use the tile data
// (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), asked once). BASISRT_NO_AMX=1 says
// no, so the tests run the vector path on an AMX machine.
bool amx_bf16_available();

// What fused_conv_bf16_nhwc (and the bindings) say when bf16_path() is "none".
constexpr const char* kNoBf16 =
    "bf16 convs need a CPU with AVX512-BF16 (Intel Cooper Lake or Sapphire Rapids, AMD Zen 4 or newer; AMX tiles "
    "where the CPU has them); this machine has neither";

// Which path fused_conv_bf16_nhwc takes: "amx", "avx512_bf16" (AVX512-BF16 without AMX; also
// BASISRT_NO_AMX=1) or "none" (BASISRT_NO_AVX512_BF16=1 too: the error path's tests).
const char* bf16_path();

// Fewer than 16 input channels (an RGB stem): K is every tap's channels back to back, rounded up
// to kAmxK once (3×3×3 = 27 → 32), not each tap's channels (9 × 32).
inline bool amx_compact_k(int64_t C_in) { return C_in < kAmxK / 2; }

// K of a conv's packed B: kh·kw taps of C_in channels, each rounded up to kAmxK (or compact).
inline int64_t amx_conv_k(const ConvShape& s) {
    return amx_compact_k(s.C_in) ? round_up(s.kh * s.kw * s.C_in, kAmxK) : s.kh * s.kw * round_up(s.C_in, kAmxK);
}

// K of a basis pair's packed A: twice the rank, rounded up to kAmxK. With `hilo` the kernel splits
// the basis conv's fp32 output into two bf16 parts (hi + lo, rank channels each) and multiplies
// both by A, so A is packed from [A; A] (2·rank rows, then zeros); without, it reads the first
// rank rows (and on tiles the zeros or copy rows after them, against zeros).
inline int64_t amx_pair_k(int64_t rank) { return round_up(2 * rank, kAmxK); }

// Elements of a K × N weight packed for the tiles.
inline int64_t vnni_elems(int64_t K, int64_t N) { return round_up(K, kAmxK) * round_up(N, kAmxN); }

// w (K × N, row-major fp32) → out (vnni_elems(K, N) bf16 bits): element (k, n) at
// ((k / 2) · Np + n) · 2 + k % 2, rounded to nearest even, zeros in the padding.
void pack_bf16_vnni(const float* w, int64_t K, int64_t N, uint16_t* out);

// B of a direct bf16 conv (not quads) as this machine's path reads it: pack_bf16_vnni on AMX;
// on vectors in panels of 32 columns, each panel's pairs of K rows contiguous, so that a task's
// columns are one run of memory (element (k, n) of panel n0 = n − n % 32, of `width` columns:
// at n0 · Kp + ((k / 2) · width + n − n0) · 2 + k % 2). Same size as pack_bf16_vnni.
void pack_bf16_b(const float* w, int64_t K, int64_t N, uint16_t* out);

// Whether a pair of this rank packs its B by pack_bf16_quad (1 to 8, on the AVX512-BF16 vector
// path): VDPBF16PS then works on 4 K rows × 8 columns, not 2 × 16 (a rank of 6 idled 10 lanes).
bool bf16_quad_path(int64_t rank);
inline int64_t quad_elems(int64_t K) { return round_up(K, kAmxK) * 8; }

// w (K × N, N <= 8) → out (quad_elems(K)): element (k, n) at ((k / 4) · 8 + n) · 4 + k % 4, rounded
// as pack_bf16_vnni, zeros in the padding.
void pack_bf16_quad(const float* w, int64_t K, int64_t N, uint16_t* out);

// Which of a bf16 conv's activations are bf16 bits (NHWC, pixel strides in elements as for fp32)
// rather than fp32. A bf16 output is the epilogue's fp32 value rounded to nearest even.
struct Bf16Io {
    bool x = false, residual = false, y = false;
};

// Whether a pair or dense conv of this geometry can run its 3×3 conv by Winograd F(2×2, 3×3) in
// bf16 (winograd_conv.h's winograd_path, input channels a multiple of kAmxK) on this CPU: on the
// AVX512-BF16 vector path only, where the direct conv runs at the same MACs per cycle as the
// GEMMs. Not on AMX tiles: there a MAC costs about 1/15 of a vector one, so the transforms would
// weigh far more, and no AMX machine was at hand to measure it.
bool winograd_bf16_path(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t groups,
                        int64_t c_in, int64_t rank);
// bf16 elements of its weights: 16 matrices U[ξ] (C_in × n, n the rank or C_out rounded up to
// kAmxN), packed by pack_winograd_bf16.
int64_t winograd_bf16_elems(int64_t c_in, int64_t rank, int64_t c_out);

// The 16 U[ξ] of winograd_conv.h's winograd_weights (fp32, C × n each, n a pair's rank or a dense
// conv's outputs, one after another) → out (winograd_bf16_elems): each by pack_bf16_quad where
// `quad` (bf16_quad_path of the rank), else pack_bf16_vnni, its rows in V's channel order: within
// each 32 channels the 16 even ones, then the 16 odd ones (the kernel reads a pixel's 32 bf16
// channels as two vectors that way).
void pack_winograd_bf16(const float* U, int64_t C, int64_t n, bool quad, uint16_t* out);

// The conv of shape s (groups 1, pool 1): rank > 0 is a basis pair (B: amx_conv_k(s) × rank,
// A: amx_pair_k(rank) × C_out), rank 0 a dense conv (B: amx_conv_k(s) × C_out, A unused). bias may
// not be null; residual may (pixel stride s.ldr). x, residual and y are fp32 or bf16 as io says.
// U (winograd_bf16_elems, for a conv on winograd_bf16_path) runs the basis conv by Winograd
// instead of B: V, U and so the transformed products are rounded to bf16, each sum fp32.
// hilo: a pair's basis output goes to the scaling GEMM as bf16 hi + lo (16 mantissa bits: about
// fp32's error there), else rounded to bf16 once, the scaling GEMM's K half as long.
// Throws std::runtime_error when amx_bf16_available() is false.
void fused_conv_bf16_nhwc(const void* x, const uint16_t* B, const uint16_t* A, const float* bias,
                          const void* residual, void* y, const ConvShape& s, int64_t rank, Activation act,
                          int num_threads, float alpha = 0.01f, Bf16Io io = {}, const uint16_t* U = nullptr,
                          bool hilo = true);

}  // namespace basisrt
