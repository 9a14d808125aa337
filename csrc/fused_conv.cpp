#include "fused_conv.h"

#include "activation.h"
#include "depthwise_conv.h"
#include "gemm.h"
#include "grouped_conv.h"
#include "pool.h"
#include "simd.h"
#include "thread_pool.h"
#include "winograd_conv.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace basisrt {
namespace {

constexpr int64_t kTile = 96;  // most output pixels per tile: T (96×r) stays in cache
constexpr int64_t kIm2colBelow = 8;  // input channels per group below which windows are copied into rows
constexpr int64_t MR = 8, NR = kColBlock;

// One row block of NR floats; GCC lowers it to 1 zmm, 2 ymm or 4 xmm per the target clone.
typedef float vec __attribute__((vector_size(NR * sizeof(float)), aligned(4)));
typedef float vec8 __attribute__((vector_size(8 * sizeof(float)), aligned(4)));
typedef float vec4 __attribute__((vector_size(4 * sizeof(float)), aligned(4)));

// f applied to each 4-float quarter of v (and w). Without AVX-512, GCC lowers a compare-select
// (?:) on a whole 16-float vector lane by lane, with scalar compares; on quarters it stays one
// SSE / AVX compare and blend per quarter in both narrow clones (AVX2 and the portable one).
template <class F>
inline __attribute__((always_inline)) vec by_quarters(vec v, vec w, F f) {
#define BASISRT_Q(x, k) __builtin_shufflevector(x, x, 4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3)
    const vec4 q0 = f(BASISRT_Q(v, 0), BASISRT_Q(w, 0)), q1 = f(BASISRT_Q(v, 1), BASISRT_Q(w, 1));
    const vec4 q2 = f(BASISRT_Q(v, 2), BASISRT_Q(w, 2)), q3 = f(BASISRT_Q(v, 3), BASISRT_Q(w, 3));
#undef BASISRT_Q
    const vec8 lo = __builtin_shufflevector(q0, q1, 0, 1, 2, 3, 4, 5, 6, 7);
    const vec8 hi = __builtin_shufflevector(q2, q3, 0, 1, 2, 3, 4, 5, 6, 7);
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

// The activation as PyTorch computes it, NaN included: relu(NaN) = relu6(NaN) = NaN, ±inf
// clamped. Compare-selects whose compare is false for NaN, so NaN passes through (v > 0 ? v : 0
// turned NaN into 0): a compare and a masked move or blend each, as before.
template <Activation kAct, class V>
inline __attribute__((always_inline)) V activate(V v) {
    if (kAct != Activation::none) v = v < 0.f ? V{} : v;
    if (kAct == Activation::relu6) v = v > 6.f ? V{} + 6.f : v;
    return v;
}

// On a whole vector: kWide (AVX-512) as one, otherwise by quarters.
template <bool kWide, Activation kAct>
inline __attribute__((always_inline)) vec activate_vec(vec v) {
    if (kAct == Activation::none || kWide) return activate<kAct>(v);
    return by_quarters(v, v, [](vec4 q, vec4) { return activate<kAct>(q); });
}

// Where a GEMM's result goes: plain rows of c (ldc), or through the conv epilogue straight
// into y: + bias, + residual, activation, only the `ncols` real columns stored.
struct Store {
    float* c;
    int64_t ldc;
    const float* bias = nullptr;      // at column 0 of this group (zeros when the layer has none)
    const float* residual = nullptr;  // same columns as c (row stride ldr), or null
    int64_t ncols = 0;                // columns of c that exist (the rest is packing)
    Activation act = Activation::none;
    bool epilogue = false;
    int64_t ldr = 0;
    const float* acc = nullptr;  // partial sums to start from (kAcc: a block of K after the first)
    int64_t ldacc = 0;
};

// Bias is always added (zeros for a layer without one): one template flag fewer halves the
// instantiations, and so the build time. The epilogue's other options are template flags: a
// runtime branch per row costs as much as the r-long second GEMM it follows when r is small.
// One whole vector of the epilogue: + bias (+ residual at `res`), activation.
template <bool kWide, bool kRes, Activation kAct>
inline __attribute__((always_inline)) vec epilogue(vec v, vec bias, const float* res) {
    v += bias;
    if (kRes) v += *reinterpret_cast<const vec*>(res);
    return activate_vec<kWide, kAct>(v);
}

template <bool kWide, bool kRes, Activation kAct>
inline __attribute__((always_inline)) void store_row(vec v, const Store& st, int64_t i, int64_t j) {
    float* dst = st.c + i * st.ldc + j;
    const int64_t n = st.ncols - j;
    if (n >= NR) {
        *reinterpret_cast<vec*>(dst) = epilogue<kWide, kRes, kAct>(v, *reinterpret_cast<const vec*>(st.bias + j),
                                                                     kRes ? st.residual + i * st.ldr + j : nullptr);
        return;
    }
    if constexpr (kWide) {
        // The last, partial column block of a group, as one vector: masked loads and store leave
        // the next group's columns alone. Lane by lane it took 80 % of a grouped 3×3 conv of 24
        // channels per group, 8 of whose 16 lanes of each row's second block are partial.
        const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
        vec e = v + (vec)__builtin_ia32_loadups512_mask(st.bias + j, (__v16sf)vec{}, m);
        if constexpr (kRes) e += (vec)__builtin_ia32_loadups512_mask(st.residual + i * st.ldr + j, (__v16sf)vec{}, m);
        __builtin_ia32_storeups512_mask(dst, (__v16sf)activate_vec<kWide, kAct>(e), m);
        return;
    }
    // Narrower ISAs: the same through a copy of the real columns' bias (+ residual) on the stack.
    alignas(64) float add[NR] = {};
    for (int64_t k = 0; k < n; ++k) add[k] = st.bias[j + k] + (kRes ? st.residual[i * st.ldr + j + k] : 0.f);
    alignas(64) float out[NR];
    *reinterpret_cast<vec*>(out) = activate_vec<kWide, kAct>(v + *reinterpret_cast<const vec*>(add));
    for (int64_t k = 0; k < n; ++k) dst[k] = out[k];
}

// Where each pixel's input rows are: a window inside the image reads tap `tap` at its corner +
// tap_off[tap]; a border window has its own row pointers (a zero row for taps in the padding).
// Only border windows pay for a row table: writing 9 pointers per pixel cost 10 % of a rank-6
// layer at 64 channels.
struct Windows {
    const float* const* corner;  // per pixel: the window's corner in x, or null for a border window
    const float* const* rows;    // per pixel: taps row pointers (border windows only)
    const int64_t* tap_off;
    int64_t taps, width;  // width: channels per tap (of this group)
    const float* zero = nullptr;  // the row border windows read for taps in the padding
    int64_t kstride() const { return width; }  // rows of B per tap

    Windows from(int64_t i) const { return {corner + i, rows ? rows + i * taps : nullptr, tap_off, taps, width, zero}; }
    const float* row(int64_t i, int64_t tap) const {
        return corner[i] ? corner[i] + tap_off[tap] : rows[i * taps + tap];
    }
};

// A plain row-major A operand (M × width, row stride lda) in the same interface: one "tap".
struct PlainRows {
    const float* a;
    int64_t lda;
    static constexpr int64_t taps = 1;
    int64_t width;
    int64_t kstride() const { return width; }

    PlainRows from(int64_t i) const { return {a + i * lda, lda, width}; }
    const float* row(int64_t i, int64_t) const { return a + i * lda; }
};

// One block of K of an A operand (Windows or PlainRows): taps [tap0, tap0 + taps), channels
// [c0, c0 + width) of each. B's rows for it start at row tap0 · cg + c0 (cg = src.width) and go on
// cg (kstride) rows per tap.
template <class Src>
struct KBlock {
    Src src;
    int64_t tap0, taps, c0, width;
    int64_t kstride() const { return src.width; }

    KBlock from(int64_t i) const { return {src.from(i), tap0, taps, c0, width}; }
    const float* row(int64_t i, int64_t tap) const { return src.row(i, tap0 + tap) + c0; }
};

// Rows [0, M) × columns [j, j+V·NR) of A · B, A's rows read through `src` (plain rows, or an
// implicit im2col: each pixel's conv window, tap by tap, straight from x): M×V vector
// accumulators, so each broadcast of A feeds V FMAs and each vector of B feeds M.
// kAcc: start from the partial sums at st.acc (a block of K after the first), not from zero.
template <bool kWide, int64_t M, int64_t V, bool kEpi, bool kRes, Activation kAct, bool kAcc, class Src>
inline __attribute__((always_inline)) void micro(const Src& src, const float* b, int64_t ldb, const Store& st,
                                                 int64_t i0, int64_t j) {
    vec acc[M][V];
    for (int64_t i = 0; i < M; ++i)
        for (int64_t v = 0; v < V; ++v)
            acc[i][v] = kAcc ? *reinterpret_cast<const vec*>(st.acc + (i0 + i) * st.ldacc + j + v * NR) : vec{};
    for (int64_t tap = 0; tap < src.taps; ++tap) {
        const float* xr[M];
        for (int64_t i = 0; i < M; ++i) xr[i] = src.row(i, tap);
        const float* bt = b + tap * src.kstride() * ldb + j;
        for (int64_t c = 0; c < src.width; ++c) {
            vec bk[V];
            for (int64_t v = 0; v < V; ++v) bk[v] = *reinterpret_cast<const vec*>(bt + c * ldb + v * NR);
            for (int64_t i = 0; i < M; ++i) {
                const float ak = xr[i][c];
                for (int64_t v = 0; v < V; ++v) acc[i][v] += ak * bk[v];
            }
        }
    }
    if (kEpi && j + V * NR <= st.ncols) {
        // Whole vectors only: a straight-line epilogue with the bias loaded once per block. Through
        // store_row's per-vector checks GCC spilled all 24 accumulators to the stack and looped
        // over them, which made a rank-6 second GEMM 3x slower per MAC than the first.
        vec bias[V];
        for (int64_t v = 0; v < V; ++v) bias[v] = *reinterpret_cast<const vec*>(st.bias + j + v * NR);
        for (int64_t i = 0; i < M; ++i)
            for (int64_t v = 0; v < V; ++v) {
                const int64_t col = j + v * NR;
                const float* res = kRes ? st.residual + (i0 + i) * st.ldr + col : nullptr;
                *reinterpret_cast<vec*>(st.c + (i0 + i) * st.ldc + col) = epilogue<kWide, kRes, kAct>(acc[i][v], bias[v], res);
            }
        return;
    }
    // Unrolled, so that acc stays in registers (indexed by constants) on this path too.
#pragma GCC unroll 8
    for (int64_t i = 0; i < M; ++i)
#pragma GCC unroll 4
        for (int64_t v = 0; v < V; ++v) {
            if (kEpi) {
                store_row<kWide, kRes, kAct>(acc[i][v], st, i0 + i, j + v * NR);
            } else {
                *reinterpret_cast<vec*>(st.c + (i0 + i) * st.ldc + j + v * NR) = acc[i][v];
            }
        }
}

// The narrow (AVX2 / portable) build of micro for one column block (V = 1): the accumulators as
// two 8-float halves each. GCC keeps 16-float vectors of an 8-float ISA on the stack (every FMA
// then read and wrote memory: 4 GMAC/s per core); 8-float vectors stay in ymm registers. 6 rows ×
// 2 halves = 12 of the 16 ymm, plus 2 for B and one broadcast.
template <int64_t M, bool kEpi, bool kRes, Activation kAct, bool kAcc, class Src>
inline __attribute__((always_inline)) void micro_narrow(const Src& src, const float* b, int64_t ldb, const Store& st,
                                                        int64_t i0, int64_t j) {
    vec8 lo[M], hi[M];
    for (int64_t i = 0; i < M; ++i) {
        const float* c = st.acc + (i0 + i) * st.ldacc + j;
        lo[i] = kAcc ? *reinterpret_cast<const vec8*>(c) : vec8{};
        hi[i] = kAcc ? *reinterpret_cast<const vec8*>(c + 8) : vec8{};
    }
    for (int64_t tap = 0; tap < src.taps; ++tap) {
        const float* xr[M];
        for (int64_t i = 0; i < M; ++i) xr[i] = src.row(i, tap);
        const float* bt = b + tap * src.kstride() * ldb + j;
        for (int64_t c = 0; c < src.width; ++c) {
            const vec8 b0 = *reinterpret_cast<const vec8*>(bt + c * ldb);
            const vec8 b1 = *reinterpret_cast<const vec8*>(bt + c * ldb + 8);
            for (int64_t i = 0; i < M; ++i) {
                const float ak = xr[i][c];
                lo[i] += ak * b0;
                hi[i] += ak * b1;
            }
        }
    }
    if (kEpi && j + NR <= st.ncols) {
        // Whole blocks: the epilogue on the 8-float halves, in registers (through store_row's 16-float
        // vector it went via the stack, which dominated pairs of small rank, where K = rank is 1-10).
        const vec8 b0 = *reinterpret_cast<const vec8*>(st.bias + j), b1 = *reinterpret_cast<const vec8*>(st.bias + j + 8);
#pragma GCC unroll 8
        for (int64_t i = 0; i < M; ++i) {
            vec8 v0 = lo[i] + b0, v1 = hi[i] + b1;
            if (kRes) {
                const float* r = st.residual + (i0 + i) * st.ldr + j;
                v0 += *reinterpret_cast<const vec8*>(r);
                v1 += *reinterpret_cast<const vec8*>(r + 8);
            }
            float* dst = st.c + (i0 + i) * st.ldc + j;
            *reinterpret_cast<vec8*>(dst) = activate<kAct>(v0);
            *reinterpret_cast<vec8*>(dst + 8) = activate<kAct>(v1);
        }
        return;
    }
#pragma GCC unroll 8
    for (int64_t i = 0; i < M; ++i) {
        const vec v = __builtin_shufflevector(lo[i], hi[i], 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        if (kEpi) {
            store_row<false, kRes, kAct>(v, st, i0 + i, j);
        } else {
            *reinterpret_cast<vec8*>(st.c + (i0 + i) * st.ldc + j) = lo[i];
            *reinterpret_cast<vec8*>(st.c + (i0 + i) * st.ldc + j + 8) = hi[i];
        }
    }
}

// All rows of the column block [j, j+V·NR): 6 rows × 4 vectors (24 accumulators of 32 zmm) at
// full width, 8 × V for narrower remainders.
template <bool kWide, int64_t V, bool kEpi, bool kRes, Activation kAct, bool kAcc, class Src>
inline __attribute__((always_inline)) void column_block(const Src& src, const float* b, int64_t ldb, int64_t M,
                                                        const Store& st, int64_t j) {
    // 16 ymm registers on AVX2: 6 rows × 2 ymm accumulators, as 8 rows would take all 16 and spill
    constexpr int64_t R = !kWide ? 6 : V == 4 ? 6 : V == 3 ? 8 : MR;
    int64_t i = 0;
    if constexpr (!kWide) {
        for (; i + R <= M; i += R) micro_narrow<R, kEpi, kRes, kAct, kAcc>(src.from(i), b, ldb, st, i, j);
        for (; i + 2 <= M; i += 2) micro_narrow<2, kEpi, kRes, kAct, kAcc>(src.from(i), b, ldb, st, i, j);
        for (; i < M; ++i) micro_narrow<1, kEpi, kRes, kAct, kAcc>(src.from(i), b, ldb, st, i, j);
        return;
    }
    for (; i + R <= M; i += R) micro<kWide, R, V, kEpi, kRes, kAct, kAcc>(src.from(i), b, ldb, st, i, j);
    // A remainder of 4 or 5 rows in one pass over B, not two of 2: the Winograd conv's GEMMs have
    // one row per tile, 4 at batch 1 on a 4×4 map (M = 4, K = 512, N = 128, B from L3: 7.1 → 4.8 µs).
    if (M - i >= 4) micro<kWide, 4, V, kEpi, kRes, kAct, kAcc>(src.from(i), b, ldb, st, i, j), i += 4;
    for (; i + 2 <= M; i += 2) micro<kWide, 2, V, kEpi, kRes, kAct, kAcc>(src.from(i), b, ldb, st, i, j);
    for (; i < M; ++i) micro<kWide, 1, V, kEpi, kRes, kAct, kAcc>(src.from(i), b, ldb, st, i, j);
}

// kWide: blocks of 4 vectors (6 × 4 accumulators), for AVX-512's 32 registers. Narrower ISAs
// take 8 × 1 blocks: 24 accumulators of 16 floats would spill there, and compiling them for
// AVX2 and the portable fallback took minutes.
template <bool kWide, bool kEpi, bool kRes, Activation kAct, class Src, bool kAcc = false>
inline __attribute__((always_inline)) void gemm_t(const Src& src, const float* b, int64_t ldb, int64_t M, int64_t N,
                                                  const Store& st) {
    int64_t j = 0;
    if (!kWide) {
        for (; j < N; j += NR) column_block<kWide, 1, kEpi, kRes, kAct, kAcc>(src, b, ldb, M, st, j);
        return;
    }
    for (; j + 4 * NR <= N; j += 4 * NR) column_block<kWide, 4, kEpi, kRes, kAct, kAcc>(src, b, ldb, M, st, j);
    switch ((N - j) / NR) {
        case 3: return column_block<kWide, 3, kEpi, kRes, kAct, kAcc>(src, b, ldb, M, st, j);
        case 2: return column_block<kWide, 2, kEpi, kRes, kAct, kAcc>(src, b, ldb, M, st, j);
        case 1: return column_block<kWide, 1, kEpi, kRes, kAct, kAcc>(src, b, ldb, M, st, j);
        default: return;
    }
}

template <bool kWide, bool kRes, class Src>
inline __attribute__((always_inline)) void gemm_act(const Src& src, const float* b, int64_t ldb, int64_t M, int64_t N,
                                                    const Store& st) {
    switch (st.act) {
        case Activation::relu: return gemm_t<kWide, true, kRes, Activation::relu>(src, b, ldb, M, N, st);
        case Activation::relu6: return gemm_t<kWide, true, kRes, Activation::relu6>(src, b, ldb, M, N, st);
        default: return gemm_t<kWide, true, kRes, Activation::none>(src, b, ldb, M, N, st);
    }
}

template <bool kWide, class Src>
inline __attribute__((always_inline)) void gemm_any(const Src& src, const float* b, int64_t ldb, int64_t M, int64_t N,
                                                    const Store& st) {
    if (!st.epilogue) return gemm_t<kWide, false, false, Activation::none>(src, b, ldb, M, N, st);
    if (st.residual) return gemm_act<kWide, true>(src, b, ldb, M, N, st);
    return gemm_act<kWide, false>(src, b, ldb, M, N, st);
}

// st's epilogue on m rows of plain sums (row stride ldp, n columns: st.ncols and its padding).
template <bool kWide, bool kRes, Activation kAct>
inline __attribute__((always_inline)) void epilogue_rows_t(const float* p, int64_t ldp, int64_t m, int64_t n,
                                                           const Store& st) {
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; j += NR)
            store_row<kWide, kRes, kAct>(*reinterpret_cast<const vec*>(p + i * ldp + j), st, i, j);
}

template <bool kWide, bool kRes>
inline __attribute__((always_inline)) void epilogue_rows_act(const float* p, int64_t ldp, int64_t m, int64_t n,
                                                             const Store& st) {
    switch (st.act) {
        case Activation::relu: return epilogue_rows_t<kWide, kRes, Activation::relu>(p, ldp, m, n, st);
        case Activation::relu6: return epilogue_rows_t<kWide, kRes, Activation::relu6>(p, ldp, m, n, st);
        default: return epilogue_rows_t<kWide, kRes, Activation::none>(p, ldp, m, n, st);
    }
}

template <class Src>
BASISRT_AVX512 void gemm_avx512(const Src& src, const float* b, int64_t ldb, int64_t M, int64_t N, const Store& st) {
    gemm_any<true>(src, b, ldb, M, N, st);
}

template <class Src>
void gemm_narrow(const Src& src, const float* b, int64_t ldb, int64_t M, int64_t N, const Store& st);

template <>
BASISRT_NARROW void gemm_narrow(const PlainRows& src, const float* b, int64_t ldb, int64_t M, int64_t N,
                                const Store& st) {
    gemm_any<false>(src, b, ldb, M, N, st);
}

template <class Src>
BASISRT_AVX2 void gemm_avx2(const Src& src, const float* b, int64_t ldb, int64_t M, int64_t N, const Store& st) {
    gemm_any<false>(src, b, ldb, M, N, st);
}

template <class Src>
void gemm_src(const Src& src, const float* b, int64_t ldb, int64_t M, int64_t N, const Store& st) {
    if (use_avx512()) return gemm_avx512(src, b, ldb, M, N, st);
    if (use_avx2_fma()) return gemm_avx2(src, b, ldb, M, N, st);
    gemm_narrow(src, b, ldb, M, N, st);
}

// A[M×K] · B[K×N] → st, N a multiple of NR (packed, zero-padded columns).
void gemm(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t M, int64_t N, int64_t K, const Store& st) {
    gemm_src(PlainRows{a, lda, K}, b, ldb, M, N, st);
}

// Rows of K per block of a GEMM (blocked_gemm): the block's B, kBlockK rows × the N columns,
// stays in L2 (a column block of it in L1) while every pixel of the tile uses it. Unblocked, a
// 3×3 conv at 512 channels streamed its whole B (K = 4608 rows: 1.2 MB per 64 columns) from L3
// for every 6 pixels: 21 GMAC/s dense, 37 for a rank-128 pair's first GEMM.
constexpr int64_t kBlockK = 256;

// out (m × n, with its epilogue) = the m rows of `src` (a tile's windows, or plain rows) · B
// (K × n, row stride ldb), K in blocks of about kBlockK rows: whole taps where a tap has fewer
// channels, else even channel slices of each tap. The sums go to `part` (m × n, row stride n: out's
// own buffer when out has no epilogue), then through out's epilogue.
template <bool kWide, class Src>
inline __attribute__((always_inline)) void blocked_gemm_body(const Src& src, const float* B, int64_t ldb, int64_t m,
                                                             int64_t n, const Store& out, float* part) {
    const int64_t cg = src.width, taps = src.taps;
    if (taps * cg <= kBlockK) return gemm_any<kWide>(src, B, ldb, m, n, out);
    const int64_t slices = (cg + kBlockK - 1) / kBlockK, c_step = (cg + slices - 1) / slices;
    const int64_t tap_step = slices > 1 ? 1 : std::max<int64_t>(1, kBlockK / cg);
    Store partial{part, n};
    partial.acc = part, partial.ldacc = n;
    for (int64_t tap0 = 0; tap0 < taps; tap0 += tap_step)
        for (int64_t c0 = 0; c0 < cg; c0 += c_step) {
            const KBlock<Src> blk{src, tap0, std::min(tap_step, taps - tap0), c0, std::min(c_step, cg - c0)};
            const float* b = B + (tap0 * cg + c0) * ldb;
            if (tap0 == 0 && c0 == 0)
                gemm_t<kWide, false, false, Activation::none, KBlock<Src>, false>(blk, b, ldb, m, n, partial);
            else
                gemm_t<kWide, false, false, Activation::none, KBlock<Src>, true>(blk, b, ldb, m, n, partial);
        }
    // The epilogue in a pass of its own: fused into the last block it took a GEMM instantiation per
    // epilogue variant (minutes of build time) to save a pass over m × n floats still in L2.
    if (!out.epilogue) return;
    if (out.residual) return epilogue_rows_act<kWide, true>(part, n, m, n, out);
    epilogue_rows_act<kWide, false>(part, n, m, n, out);
}
template <class Src>
BASISRT_AVX512 void blocked_gemm_avx512(const Src& src, const float* B, int64_t ldb, int64_t m, int64_t n,
                                        const Store& out, float* part) {
    blocked_gemm_body<true>(src, B, ldb, m, n, out, part);
}
template <class Src>
BASISRT_AVX2 void blocked_gemm_avx2(const Src& src, const float* B, int64_t ldb, int64_t m, int64_t n,
                                    const Store& out, float* part) {
    blocked_gemm_body<false>(src, B, ldb, m, n, out, part);
}
template <class Src>
void blocked_gemm_narrow(const Src& src, const float* B, int64_t ldb, int64_t m, int64_t n, const Store& out,
                         float* part);
template <>
BASISRT_NARROW void blocked_gemm_narrow(const Windows& src, const float* B, int64_t ldb, int64_t m, int64_t n,
                                        const Store& out, float* part) {
    blocked_gemm_body<false>(src, B, ldb, m, n, out, part);
}
template <>
BASISRT_NARROW void blocked_gemm_narrow(const PlainRows& src, const float* B, int64_t ldb, int64_t m, int64_t n,
                                        const Store& out, float* part) {
    blocked_gemm_body<false>(src, B, ldb, m, n, out, part);
}
template <class Src>
void blocked_gemm(const Src& src, const float* B, int64_t ldb, int64_t m, int64_t n, const Store& out, float* part) {
    if (use_avx512()) return blocked_gemm_avx512(src, B, ldb, m, n, out, part);
    if (use_avx2_fma()) return blocked_gemm_avx2(src, B, ldb, m, n, out, part);
    blocked_gemm_narrow(src, B, ldb, m, n, out, part);
}

// Horizontal sum of a vector (narrowing halves: 4 adds instead of 15).
inline __attribute__((always_inline)) float hsum(vec v) {
    const vec8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                   __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const vec4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

// Sums of many vectors at once: fold(a, b) halves the lanes each source owns and packs a's
// sources before b's, so 16 vectors reduce to one vector of their 16 sums in 15 shuffle-pair
// + add steps, where 16 hsums take 16 × 4 shuffles and adds (20 % of the FMAs at 64 channels).
#define BASISRT_FOLD(name, LO, HI) \
    inline __attribute__((always_inline)) vec name(vec a, vec b) { \
        return __builtin_shufflevector(a, b, LO) + __builtin_shufflevector(a, b, HI); \
    }
#define BASISRT_L8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define BASISRT_H8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define BASISRT_L4 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27
#define BASISRT_H4 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31
#define BASISRT_L2 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29
#define BASISRT_H2 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31
#define BASISRT_L1 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define BASISRT_H1 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
BASISRT_FOLD(fold8, BASISRT_L8, BASISRT_H8)  // 1 source of 16 lanes each → 2 of 8
BASISRT_FOLD(fold4, BASISRT_L4, BASISRT_H4)  // 2 of 8 → 4 of 4
BASISRT_FOLD(fold2, BASISRT_L2, BASISRT_H2)  // 4 of 4 → 8 of 2
BASISRT_FOLD(fold1, BASISRT_L1, BASISRT_H1)  // 8 of 2 → 16 of 1

// out[k] = hsum(v[k]) for k < N.
template <int N>
inline __attribute__((always_inline)) void hsums(const vec* v, float* out) {
    if constexpr (N >= 16) {
        const vec a[8] = {fold8(v[0], v[1]),   fold8(v[2], v[3]),   fold8(v[4], v[5]),   fold8(v[6], v[7]),
                          fold8(v[8], v[9]),   fold8(v[10], v[11]), fold8(v[12], v[13]), fold8(v[14], v[15])};
        const vec b[4] = {fold4(a[0], a[1]), fold4(a[2], a[3]), fold4(a[4], a[5]), fold4(a[6], a[7])};
        *reinterpret_cast<vec*>(out) = fold1(fold2(b[0], b[1]), fold2(b[2], b[3]));
        hsums<N - 16>(v + 16, out + 16);
    } else if constexpr (N >= 8) {
        const vec c = fold2(fold4(fold8(v[0], v[1]), fold8(v[2], v[3])), fold4(fold8(v[4], v[5]), fold8(v[6], v[7])));
        const vec d = fold1(c, c);  // lanes 0-7: the 8 sums
        for (int k = 0; k < 8; ++k) out[k] = d[k];
        hsums<N - 8>(v + 8, out + 8);
    } else {
        for (int k = 0; k < N; ++k) out[k] = hsum(v[k]);
    }
}

// A layer with fewer pixel tiles than threads (2×2 maps at batch 1: one tile of 4 pixels) splits
// its ranks across threads when B is above this many floats (256 KB); below, one thread reading B
// beats two parallel passes. With a tile per thread, each reading all of B, splitting was slower:
// 4×4 maps at 512 channels, rank 51: 48 µs unsplit, 55 µs split; 2×2: 37 µs unsplit, 22 µs split.
constexpr int64_t kSplitWeights = 64 * 1024;
constexpr int kDotM = 4, kDotN = 6;  // 24 accumulators + 4 x vectors + 1 B vector: 29 of 32 zmm
// Floats per rank in a tap block of B: the block's kDotN ranks (up to 48 KB, 36 KB at 512
// channels) stay in L1 while the tile's pixels use them; unblocked, K = 2304 or 4608 streamed
// B from L2 for every 4 pixels (1024: 9 % slower at 128 channels; 2048: 3-8 % faster at 256-512).
constexpr int64_t kDotBlockFloats = 2048;

// Low-rank first GEMM without im2col, vectorised over input channels (no padding of small r):
//   t[i][j] (+)= Σ_{tap in [tap0, tap1)} Σ_c x_i[tap][c] · bt[j][tap·cg + c]
// for M pixels × R ranks (t set at tap0 = 0, else added to). Each x vector feeds R FMAs and each
// B vector M FMAs, where the rank-vectorised gemm gets one FMA per broadcast: the gain for r = 6…52.
template <int M, int R>
inline __attribute__((always_inline)) void dot_tile(const Windows& w, int64_t cg, const float* bt, int64_t K,
                                                    int64_t tap0, int64_t tap1, float* const* t, bool add) {
    vec acc[M][R];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < R; ++j) acc[i][j] = vec{};
    for (int64_t tap = tap0; tap < tap1; ++tap) {
        const float* xr[M];
        for (int i = 0; i < M; ++i) xr[i] = w.row(i, tap);
        const float* b = bt + tap * cg;
        for (int64_t c = 0; c < cg; c += NR) {
            vec xv[M];
            for (int i = 0; i < M; ++i) xv[i] = *reinterpret_cast<const vec*>(xr[i] + c);
            for (int j = 0; j < R; ++j) {
                const vec bv = *reinterpret_cast<const vec*>(b + j * K + c);
                for (int i = 0; i < M; ++i) acc[i][j] += xv[i] * bv;
            }
        }
    }
    float sums[M * R + 16];  // + 16: hsums stores whole vectors
    hsums<M * R>(&acc[0][0], sums);
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < R; ++j) t[i][j] = (add ? t[i][j] : 0.f) + sums[i * R + j];
}

// dot_tile on 8-float vectors, for the narrow builds (see micro_narrow): each 16-channel block as
// two halves into the same accumulators, reduced lane by lane at the end.
template <int M, int R>
inline __attribute__((always_inline)) void dot_tile_narrow(const Windows& w, int64_t cg, const float* bt, int64_t K,
                                                           int64_t tap0, int64_t tap1, float* const* t, bool add) {
    vec8 acc[M][R];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < R; ++j) acc[i][j] = vec8{};
    for (int64_t tap = tap0; tap < tap1; ++tap) {
        const float* xr[M];
        for (int i = 0; i < M; ++i) xr[i] = w.row(i, tap);
        const float* b = bt + tap * cg;
        for (int64_t c = 0; c < cg; c += 8) {
            vec8 xv[M];
            for (int i = 0; i < M; ++i) xv[i] = *reinterpret_cast<const vec8*>(xr[i] + c);
            for (int j = 0; j < R; ++j) {
                const vec8 bv = *reinterpret_cast<const vec8*>(b + j * K + c);
                for (int i = 0; i < M; ++i) acc[i][j] += xv[i] * bv;
            }
        }
    }
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < R; ++j) {
            const vec8 a = acc[i][j];
            const float sum = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
            t[i][j] = (add ? t[i][j] : 0.f) + sum;
        }
}

// One chunk of r <= kDotN ranks for M pixels, taps [tap0, tap1), into the rows t[i] (added to
// their sums if `add`).
template <bool kWide, int M>
inline __attribute__((always_inline)) void dot_chunk(const Windows& w, int64_t cg, const float* bt, int64_t K,
                                                     int64_t r, int64_t tap0, int64_t tap1, float* const* t,
                                                     bool add) {
    if constexpr (!kWide) {
        switch (r) {
            case 4: return dot_tile_narrow<M, 4>(w, cg, bt, K, tap0, tap1, t, add);
            case 3: return dot_tile_narrow<M, 3>(w, cg, bt, K, tap0, tap1, t, add);
            case 2: return dot_tile_narrow<M, 2>(w, cg, bt, K, tap0, tap1, t, add);
            default: return dot_tile_narrow<M, 1>(w, cg, bt, K, tap0, tap1, t, add);
        }
    }
    switch (r) {
        case 6: return dot_tile<M, 6>(w, cg, bt, K, tap0, tap1, t, add);
        case 5: return dot_tile<M, 5>(w, cg, bt, K, tap0, tap1, t, add);
        case 4: return dot_tile<M, 4>(w, cg, bt, K, tap0, tap1, t, add);
        case 3: return dot_tile<M, 3>(w, cg, bt, K, tap0, tap1, t, add);
        case 2: return dot_tile<M, 2>(w, cg, bt, K, tap0, tap1, t, add);
        default: return dot_tile<M, 1>(w, cg, bt, K, tap0, tap1, t, add);
    }
}

// Taps of a kernel dimension that read inside the input, summed over the output positions.
inline int64_t taps_inside(int64_t out, int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
    int64_t n = 0;
    for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0, at = o * stride - pad; i < k; ++i, at += dil) n += at >= 0 && at < in;
    return n;
}

// Whether a conv's padding holds over a quarter of its (pixel, tap) products, at 256 input
// channels or more: small maps, where most windows cross the border (a 3×3 conv on a 2×2 map: 20
// of its 36 products, on a 4×4 map 44 of 144), so that dot_gemm skips them (by_tap). Its tap-by-tap
// sums cost a reduction per tap, which fewer channels or fewer skipped products do not repay (one
// process, 2 threads, by_tap ÷ every tap's speed: 512 channels, rank 128, at batch 32 1.67 on a
// 2×2 map and 1.24 on a 4×4 one; at 128 channels on 4×4, 0.88-1.03; 8×8 maps, 16 % padding,
// 0.89-1.04). Decided per layer, not per tile, so that a pixel's sums run in the same order in any
// batch. BASISRT_ALL_TAPS=1 turns it off, read per call, so that an A/B can flip it between calls.
bool padding_heavy(const ConvShape& s) {
    if (s.C_in / s.groups < 256 || std::getenv("BASISRT_ALL_TAPS")) return false;
    const int64_t inside = taps_inside(s.Ho, s.H, s.kh, s.sh, s.ph, s.dh) * taps_inside(s.Wo, s.W, s.kw, s.sw, s.pw, s.dw);
    return 4 * (s.Ho * s.Wo * s.kh * s.kw - inside) > s.Ho * s.Wo * s.kh * s.kw;
}

// T (m × rank, row stride ldt) for the m pixels of `w`. Rank chunks are the outer loop, so a
// chunk of B stays in cache while every pixel of the tile uses it; pixels outer would stream
// all of B (MBs at r = 128) per 4 pixels. Within a chunk, taps are blocked (kDotBlockFloats).
// by_tap (padding_heavy layers): each tap runs on only the pixels it reads inside the image
// instead, their sums added tap by tap: on a 2×2 map 16 of the 36 products, on a 4×4 one 100 of
// 144, with the same weights read.
// kWide: 4 pixels × 6 ranks (24 zmm accumulators); narrower ISAs 2 × 4 (8 of AVX2's 16 ymm, 2 for
// x and one for B: 6 loads per 8 FMAs).
template <bool kWide>
inline __attribute__((always_inline)) void dot_gemm_body(const Windows& w, int64_t m, int64_t cg, const float* bt,
                                                         int64_t rank, float* t, int64_t ldt, bool by_tap) {
    static_assert(kDotN == 6, "dot_chunk dispatches chunks of up to 6 ranks");
    constexpr int kM = kWide ? kDotM : 2, kN = kWide ? kDotN : 4;
    const int64_t K = w.taps * cg;
    const int64_t blocks = (K + kDotBlockFloats - 1) / kDotBlockFloats;
    const int64_t tap_block = (w.taps + blocks - 1) / blocks;
    // Chunks of near-equal size (13 ranks: 5 + 4 + 4, not 6 + 6 + 1): a chunk of one or two ranks
    // loads an x vector per FMA or two, and loads, not FMAs, then set its pace.
    const int64_t chunks = (rank + kN - 1) / kN;
    // by_tap: per tap (m slots each), the pixels whose row of it is inside the image and those rows
    thread_local std::vector<const float*> in_rows;
    thread_local std::vector<int64_t> in_px, in_count, zeros;  // zeros: tap_off of one-row windows
    if (by_tap) {
        for (int64_t i = 0; i < m; ++i)  // the sums are added tap by tap
            std::fill(t + i * ldt, t + i * ldt + rank, 0.f);
        in_rows.resize(std::max<size_t>(in_rows.size(), w.taps * m));
        in_px.resize(std::max<size_t>(in_px.size(), w.taps * m));
        in_count.resize(std::max<size_t>(in_count.size(), w.taps));
        zeros.resize(std::max<size_t>(zeros.size(), w.taps));  // only ever grows: stays all zero
        for (int64_t tap = 0; tap < w.taps; ++tap) {
            int64_t n = 0;
            for (int64_t i = 0; i < m; ++i) {
                const float* row = w.row(i, tap);
                if (row != w.zero) in_rows[tap * m + n] = row, in_px[tap * m + n++] = i;
            }
            in_count[tap] = n;
        }
    }
    for (int64_t k = 0, j = 0; k < chunks; ++k) {
        const int64_t r = rank / chunks + (k < rank % chunks);
        float* trow[kM];
        if (by_tap) {
            for (int64_t tap = 0; tap < w.taps; ++tap) {
                const int64_t n = in_count[tap], *px = in_px.data() + tap * m;
                // the rows as corners of one-tap windows: row(i, tap) = in_rows[tap·m + i] + 0
                const Windows sel{in_rows.data() + tap * m, nullptr, zeros.data(), w.taps, cg};
                int64_t i = 0;
                for (; i + kM <= n; i += kM) {
                    for (int q = 0; q < kM; ++q) trow[q] = t + px[i + q] * ldt + j;
                    dot_chunk<kWide, kM>(sel.from(i), cg, bt + j * K, K, r, tap, tap + 1, trow, true);
                }
                for (; i < n; ++i) {
                    trow[0] = t + px[i] * ldt + j;
                    dot_chunk<kWide, 1>(sel.from(i), cg, bt + j * K, K, r, tap, tap + 1, trow, true);
                }
            }
            j += r;
            continue;
        }
        for (int64_t tap0 = 0; tap0 < w.taps; tap0 += tap_block) {
            const int64_t tap1 = std::min(w.taps, tap0 + tap_block);
            int64_t i = 0;
            for (; i + kM <= m; i += kM) {
                for (int q = 0; q < kM; ++q) trow[q] = t + (i + q) * ldt + j;
                dot_chunk<kWide, kM>(w.from(i), cg, bt + j * K, K, r, tap0, tap1, trow, tap0 > 0);
            }
            for (; i < m; ++i) {
                trow[0] = t + i * ldt + j;
                dot_chunk<kWide, 1>(w.from(i), cg, bt + j * K, K, r, tap0, tap1, trow, tap0 > 0);
            }
        }
        j += r;
    }
}

BASISRT_AVX512 void dot_gemm_avx512(const Windows& w, int64_t m, int64_t cg, const float* bt, int64_t rank, float* t,
                                    int64_t ldt, bool by_tap) {
    dot_gemm_body<true>(w, m, cg, bt, rank, t, ldt, by_tap);
}
BASISRT_AVX2 void dot_gemm_avx2(const Windows& w, int64_t m, int64_t cg, const float* bt, int64_t rank, float* t,
                                int64_t ldt, bool by_tap) {
    dot_gemm_body<false>(w, m, cg, bt, rank, t, ldt, by_tap);
}
BASISRT_NARROW void dot_gemm_narrow(const Windows& w, int64_t m, int64_t cg, const float* bt, int64_t rank, float* t,
                                    int64_t ldt, bool by_tap) {
    dot_gemm_body<false>(w, m, cg, bt, rank, t, ldt, by_tap);
}
void dot_gemm(const Windows& w, int64_t m, int64_t cg, const float* bt, int64_t rank, float* t, int64_t ldt,
              bool by_tap = false) {
    if (use_avx512()) return dot_gemm_avx512(w, m, cg, bt, rank, t, ldt, by_tap);
    if (use_avx2_fma()) return dot_gemm_avx2(w, m, cg, bt, rank, t, ldt, by_tap);
    dot_gemm_narrow(w, m, cg, bt, rank, t, ldt, by_tap);
}

// The windows of pixels [p0, p0+m), group g, into corner[m] and (border windows) rows[m·taps].
// Pixels come in pool-cell order: (n, cell row, cell column, then the pool×pool pixels of the
// cell), which is raster order when pool = 1. Walked incrementally.
Windows tap_windows(const float* x, const ConvShape& s, int64_t g, int64_t p0, int64_t m, const float* zero,
                    const int64_t* tap_off, const float** corner, const float** rows) {
    const int64_t cg = s.C_in / s.groups, taps = s.kh * s.kw;
    const int64_t span_y = (s.kh - 1) * s.dh, span_x = (s.kw - 1) * s.dw;
    const int64_t q = s.pool, Hc = s.Ho / q, Wc = s.Wo / q, cell = p0 / (q * q);
    int64_t n = cell / (Hc * Wc), cy = cell / Wc % Hc, cx = cell % Wc, dy = p0 % (q * q) / q, dx = p0 % q;
    for (int64_t t = 0; t < m; ++t) {
        const float* img = x + n * s.H * s.W * s.ldx + g * cg;
        const int64_t oy = cy * q + dy, ox = cx * q + dx;
        const int64_t y0 = oy * s.sh - s.ph, x0 = ox * s.sw - s.pw;
        if (y0 >= 0 && y0 + span_y < s.H && x0 >= 0 && x0 + span_x < s.W) {
            corner[t] = img + (y0 * s.W + x0) * s.ldx;
        } else {
            corner[t] = nullptr;
            const float** r = rows + t * taps;
            for (int64_t ky = 0, iy = y0; ky < s.kh; ++ky, iy += s.dh) {
                const bool row_in = iy >= 0 && iy < s.H;
                for (int64_t kx = 0, ix = x0; kx < s.kw; ++kx, ix += s.dw)
                    *r++ = row_in && ix >= 0 && ix < s.W ? img + (iy * s.W + ix) * s.ldx : zero;
            }
        }
        if (++dx < q) continue;
        dx = 0;
        if (++dy < q) continue;
        dy = 0;
        if (++cx == Wc) {
            cx = 0;
            if (++cy == Hc) cy = 0, ++n;
        }
    }
    return {corner, rows, tap_off, taps, cg, zero};
}

// The m windows of `w` as contiguous rows of K floats (an im2col tile), for few channels per tap
// (an RGB stem: 3). An inside window's kernel row is kw adjacent pixels, kw·C contiguous floats in
// a dense, ungrouped x: one copy per kernel row (7 of 21 floats for ResNet's stem) instead of one
// per tap; a border window copies tap by tap (zero rows in the padding).
void copy_windows(const Windows& w, int64_t m, const ConvShape& s, float* __restrict cols, int64_t K) {
    const int64_t cg = w.width;
    const bool row_copies = s.groups == 1 && s.ldx == s.C_in && s.dw == 1;
    for (int64_t i = 0; i < m; ++i) {
        float* __restrict dst = cols + i * K;
        if (row_copies && w.corner[i]) {
            const int64_t n = s.kw * cg;
            for (int64_t ky = 0; ky < s.kh; ++ky) {
                const float* __restrict src = w.corner[i] + w.tap_off[ky * s.kw];
                for (int64_t c = 0; c < n; ++c) dst[ky * n + c] = src[c];
            }
            continue;
        }
        for (int64_t tap = 0; tap < w.taps; ++tap) {  // a plain loop: a memcpy call per 3 floats
            const float* src = w.row(i, tap);         // cost more than the GEMM (6 ms of ResNet's 7)
            for (int64_t c = 0; c < cg; ++c) dst[tap * cg + c] = src[c];
        }
    }
}

// The dot path for layers with fewer pixel tiles than threads (small images at batch 1, where
// the weights dominate): threads share out (tile, rank chunk) pairs for T, then (tile, column
// block) pairs for y, so each thread reads part of B and A instead of one thread reading all.
void split_lowrank(const float* x, const float* B, const float* A, const float* bias, const float* residual,
                   float* y, const ConvShape& s, int64_t rank, Activation act, int num_threads,
                   const int64_t* tap_off) {
    const int64_t cg_in = s.C_in / s.groups, cg_out = s.C_out / s.groups, taps = s.kh * s.kw;
    const int64_t K = taps * cg_in, cg_pad = round_up(cg_out, NR), r_pad = round_up(rank, NR);
    const int64_t P = s.N * s.Ho * s.Wo, tiles = (P + kTile - 1) / kTile;
    const int64_t chunks = (rank + kDotN - 1) / kDotN, blocks = cg_pad / NR;
    const PackedLayout packed = packed_layout(s, rank);
    std::vector<float> T(P * r_pad);
    const bool by_tap = padding_heavy(s);
    for (int64_t g = 0; g < s.groups; ++g) {
        parallel_for(tiles * chunks, num_threads, [&](int64_t task) {
            thread_local std::vector<const float*> rows, corner;
            thread_local std::vector<float> zero;
            rows.resize(std::max<size_t>(rows.size(), kTile * taps));
            corner.resize(std::max<size_t>(corner.size(), kTile));
            zero.resize(std::max<size_t>(zero.size(), cg_in));  // only ever grows: stays all zero
            const int64_t p0 = task / chunks * kTile, m = std::min(kTile, P - p0), j = task % chunks * kDotN;
            const Windows w = tap_windows(x, s, g, p0, m, zero.data(), tap_off, corner.data(), rows.data());
            dot_gemm(w, m, cg_in, B + g * packed.b_group + j * K, std::min<int64_t>(kDotN, rank - j),
                     T.data() + p0 * r_pad + j, r_pad, by_tap);
        });
        parallel_for(tiles * blocks, num_threads, [&](int64_t task) {
            const int64_t p0 = task / blocks * kTile, m = std::min(kTile, P - p0), j = task % blocks * NR;
            const int64_t col = g * cg_out + j;
            Store out{y + p0 * s.ldy + col, s.ldy, bias + col, residual ? residual + p0 * s.ldr + col : nullptr,
                      cg_out - j, act, true, s.ldr};
            gemm(T.data() + p0 * r_pad, r_pad, A + g * packed.a_group + j, cg_pad, m, NR, rank, out);
        });
    }
}

// Output pixels per tile: at most kTile, and a multiple of the threads' count of tiles, so that
// a layer of few tiles is not left to one thread (2×2 maps at batch 32: 96 + 32 pixels ran
// 0.34 ms where 64 + 64 run in about 0.23 ms).
int64_t tile_pixels(int64_t P, int num_threads) {
    const int64_t tiles = round_up((P + kTile - 1) / kTile, std::max(num_threads, 1));
    return std::min(kTile, round_up((P + tiles - 1) / tiles, 4));
}

// max(a, b), NaN if either is NaN (max_nan in pool.h), on a vector: kWide (AVX-512) whole,
// otherwise by quarters. On a whole vector, a float compare used as a mask (x != x) is lowered
// lane by lane, so a's NaN test is on its bits there (exponent all ones, mantissa non-zero).
template <bool kWide>
inline __attribute__((always_inline)) vec max_nan_vec(vec a, vec b) {
    if (!kWide) return by_quarters(a, b, [](vec4 x, vec4 y) { return (y > x) | (y != y) ? y : x; });
    typedef int32_t ivec __attribute__((vector_size(NR * sizeof(int32_t)), aligned(4)));
    const ivec a_nan = ((ivec)a & 0x7fffffff) > 0x7f800000;
    const vec m = a > b ? a : b;  // b when either is NaN
    return (vec)(((ivec)m & ~a_nan) | ((ivec)a & a_nan));
}

// out[c] = max of the 4 rows (row stride C) of a 2×2 pool cell, rows[·][c]: one store per vector.
// NaN if any of the 4 is NaN, as in PyTorch's max pool.
template <bool kWide>
inline __attribute__((always_inline)) void max_cell_body(const float* rows, int64_t C, float* out) {
    int64_t c = 0;
    for (; c + NR <= C; c += NR) {
        const vec* r = reinterpret_cast<const vec*>(rows + c);
        const vec a = max_nan_vec<kWide>(r[0], *reinterpret_cast<const vec*>(rows + C + c));
        const vec b = max_nan_vec<kWide>(*reinterpret_cast<const vec*>(rows + 2 * C + c),
                                         *reinterpret_cast<const vec*>(rows + 3 * C + c));
        *reinterpret_cast<vec*>(out + c) = max_nan_vec<kWide>(a, b);
    }
    for (; c < C; ++c) out[c] = max_nan(max_nan(rows[c], rows[C + c]), max_nan(rows[2 * C + c], rows[3 * C + c]));
}
BASISRT_AVX512 void max_cell_avx512(const float* rows, int64_t C, float* out) { max_cell_body<true>(rows, C, out); }
BASISRT_NARROW void max_cell_narrow(const float* rows, int64_t C, float* out) { max_cell_body<false>(rows, C, out); }
void max_cell(const float* rows, int64_t C, float* out) {
    if (use_avx512()) return max_cell_avx512(rows, C, out);
    max_cell_narrow(rows, C, out);
}

// For paths without the pool in their epilogue: conv(unpooled shape, dense buffer), then the 2×2
// max pool of s into y.
template <class Conv>
void pooled_after(const ConvShape& s, float* y, int num_threads, const Conv& conv) {
    ConvShape unpooled = s;
    unpooled.pool = 1, unpooled.ldy = s.C_out;
    std::vector<float> buf(s.N * s.Ho * s.Wo * s.C_out);
    conv(unpooled, buf.data());
    const PoolShape ps{s.N, s.Ho, s.Wo, s.C_out, s.Ho / 2, s.Wo / 2, 2, 2, 2, 2, 0, 0, s.C_out, s.ldy};
    pool_nhwc(buf.data(), y, ps, PoolKind::max, true, num_threads);
}

}  // namespace

void gemm_plain(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t M, int64_t N, int64_t K, float* c,
                int64_t ldc) {
    gemm(a, lda, b, ldb, M, N, K, Store{c, ldc});
}

void gemm_dot(const float* a, int64_t lda, int64_t M, int64_t K, const float* bt, int64_t N, float* c, int64_t ldc) {
    thread_local std::vector<const float*> corner;
    corner.resize(std::max<size_t>(corner.size(), M));
    for (int64_t i = 0; i < M; ++i) corner[i] = a + i * lda;
    static const int64_t tap_off = 0;
    dot_gemm(Windows{corner.data(), nullptr, &tap_off, 1, K}, M, K, bt, N, c, ldc);
}

void gemm_epilogue(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t M, int64_t N, int64_t K,
                   const Epilogue& out) {
    gemm(a, lda, b, ldb, M, N, K,
         Store{out.y, out.ldy, out.bias, out.residual, out.ncols, out.act, true, out.residual ? out.ldr : 0});
}

static BASISRT_AVX512 void store_epilogue_avx512(const float* p, int64_t ldp, int64_t M, int64_t N, const Store& st) {
    if (st.residual) return epilogue_rows_act<true, true>(p, ldp, M, N, st);
    epilogue_rows_act<true, false>(p, ldp, M, N, st);
}

void store_epilogue(const float* p, int64_t ldp, int64_t M, int64_t N, const Epilogue& out) {
    if (!use_avx512()) throw std::logic_error("store_epilogue: built for AVX-512 only (its one caller's ISA)");
    store_epilogue_avx512(p, ldp, M, N,
                          Store{out.y, out.ldy, out.bias, out.residual, out.ncols, out.act, true,
                                out.residual ? out.ldr : 0});
}

bool lowrank_dot_path(int64_t cg_in, int64_t rank) { return rank > 0 && cg_in % kColBlock == 0; }

PackedLayout packed_layout(const ConvShape& s, int64_t rank) {
    if (depthwise_path(s.groups, s.C_in, s.C_out, rank)) return {1, s.kh * s.kw * s.C_in, 0};
    const int64_t K = s.kh * s.kw * (s.C_in / s.groups), cg_pad = round_up(s.C_out / s.groups, kColBlock);
    if (!rank) return {s.groups, K * cg_pad, 0};
    const int64_t r_pad = round_up(rank, kColBlock);
    return {s.groups, lowrank_dot_path(s.C_in / s.groups, rank) ? rank * K : K * r_pad, r_pad * cg_pad};
}

const char* simd_path() {
    if (use_avx512()) return "avx512f";
    if (use_avx2_fma()) return "avx2+fma";
    if (__builtin_cpu_supports("avx2")) return "avx2";
    return "default";
}

void fused_conv_nhwc(const float* x, const float* B, const float* A, const float* bias,
                     const float* residual, float* y, const ConvShape& shape, int64_t rank,
                     Activation act, int num_threads, float alpha, const float* winograd) {
    if (shape.N == 0) return;  // an empty batch (the tile sizing below divides by the pixel count)
    ConvShape s = shape;
    s.ldx = s.ldx ? s.ldx : s.C_in;
    s.ldy = s.ldy ? s.ldy : s.C_out;
    s.ldr = s.ldr ? s.ldr : s.C_out;
    if (s.ldx < s.C_in || s.ldy < s.C_out || s.ldr < s.C_out)
        throw std::invalid_argument("fused_conv_nhwc: a pixel stride is smaller than its channels");
    if (s.groups < 1 || s.C_in % s.groups || s.C_out % s.groups)
        throw std::invalid_argument("fused_conv_nhwc: groups must divide C_in and C_out");
    if (s.pool != 1 && (s.pool != 2 || residual || s.Ho % 2 || s.Wo % 2))
        throw std::invalid_argument("fused_conv_nhwc: a fused pool is 2x2 max over an even output, without residual");
    if (!bias) {  // the epilogue always adds one; zeros that only ever grow, not an allocation per call
        thread_local std::vector<float> zeros;
        if (zeros.size() < static_cast<size_t>(s.C_out)) zeros.resize(s.C_out);
        bias = zeros.data();
    }
    if (winograd) {  // a pair on winograd_path (the bindings check it)
        auto pair = [&](const ConvShape& d, float* out) {
            winograd_pair_nhwc(x, winograd, A, bias, residual, out, d, rank, act, num_threads, alpha);
        };
        return s.pool == 1 ? pair(s, y) : pooled_after(s, y, num_threads, pair);
    }
    if (depthwise_path(s.groups, s.C_in, s.C_out, rank)) {
        auto depthwise = [&](const ConvShape& d, float* out) {
            depthwise_conv_nhwc(x, B, bias, residual, out, d, act, num_threads, alpha);
        };
        return s.pool == 1 ? depthwise(s, y) : pooled_after(s, y, num_threads, depthwise);
    }
    if (grouped_path(s.groups, s.C_in, s.C_out, rank)) {
        auto grouped = [&](const ConvShape& d, float* out) {
            grouped_conv_nhwc(x, B, bias, residual, out, d, act, num_threads, alpha);
        };
        return s.pool == 1 ? grouped(s, y) : pooled_after(s, y, num_threads, grouped);
    }
    const int64_t cg_in = s.C_in / s.groups, cg_out = s.C_out / s.groups;
    const int64_t K = s.kh * s.kw * cg_in, cg_pad = round_up(cg_out, NR);
    const int64_t r_pad = rank ? round_up(rank, NR) : 0;
    const int64_t P = s.N * s.Ho * s.Wo, tile_px = tile_pixels(P, num_threads), tiles = (P + tile_px - 1) / tile_px;
    // A 1×1, stride-1, unpadded conv's im2col is x itself: a plain matrix, no windows.
    const bool direct = s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0 && s.pool == 1;

    const bool dot = lowrank_dot_path(cg_in, rank);
    const bool by_tap = dot && padding_heavy(s);
    const bool windows = dot || !direct;  // reads x through tap_windows
    const PackedLayout packed = packed_layout(s, rank);
    const int64_t taps = s.kh * s.kw;
    std::vector<int64_t> tap_off;  // offset of each tap's row from the window's corner
    for (int64_t ky = 0; ky < s.kh; ++ky)
        for (int64_t kx = 0; kx < s.kw; ++kx) tap_off.push_back((ky * s.dh * s.W + kx * s.dw) * s.ldx);

    if (dot && num_threads > 1 && tiles < num_threads && rank * K > kSplitWeights) {  // split ranks
        auto split = [&](const ConvShape& d, float* out) {
            split_lowrank(x, B, A, bias, residual, out, d, rank, act, num_threads, tap_off.data());
            activate_rows_parallel(out, d.N * d.Ho * d.Wo, d.C_out, d.ldy, act, alpha, num_threads);
        };
        return s.pool == 1 ? split(s, y) : pooled_after(s, y, num_threads, split);  // a few pixels
    }
    const int64_t cell = s.pool * s.pool;  // a tile of whole pool cells: tile_px is a multiple of 4

    parallel_for(tiles, num_threads, [&](int64_t tile) {
        // Per-thread scratch, sized to the largest layer seen: no growth with the number of calls.
        thread_local std::vector<float> t, zero, unpooled, cols;
        thread_local std::vector<const float*> rows, corner;
        if (windows) {
            rows.resize(std::max<size_t>(rows.size(), kTile * taps));
            corner.resize(std::max<size_t>(corner.size(), kTile));
            zero.resize(std::max<size_t>(zero.size(), cg_in));  // only ever grows: stays all zero
        }
        t.resize(std::max<size_t>(t.size(), kTile * r_pad));
        if (cell > 1) unpooled.resize(std::max<size_t>(unpooled.size(), kTile * s.C_out));
        const int64_t p0 = tile * tile_px, m = std::min(tile_px, P - p0);
        for (int64_t g = 0; g < s.groups; ++g) {
            const int64_t col = g * cg_out;
            // a pooled tile goes through `unpooled` (dense rows), pooled below
            Store out = cell > 1 ? Store{unpooled.data() + col, s.C_out, bias + col, nullptr, cg_out, act, true}
                                 : Store{y + p0 * s.ldy + col, s.ldy, bias + col,
                                         residual ? residual + p0 * s.ldr + col : nullptr, cg_out, act, true, s.ldr};
            const float* Bg = B + g * packed.b_group;
            const float* Ag = rank ? A + g * packed.a_group : nullptr;
            // A (plain rows of x, or the implicit im2col of the tile's windows) · B, then · A. K in
            // blocks (blocked_gemm): their partial sums in `t` (T itself for a basis pair).
            auto two_gemms = [&](const auto& src) {
                if (!rank) {
                    if (src.taps * src.width > kBlockK) t.resize(std::max<size_t>(t.size(), kTile * cg_pad));
                    return blocked_gemm(src, Bg, cg_pad, m, cg_pad, out, t.data());
                }
                blocked_gemm(src, Bg, r_pad, m, r_pad, Store{t.data(), r_pad}, t.data());
                gemm(t.data(), r_pad, Ag, cg_pad, m, cg_pad, rank, out);
            };
            if (!windows) {
                two_gemms(PlainRows{x + p0 * s.ldx + g * cg_in, s.ldx, cg_in});
                continue;
            }
            const Windows w = tap_windows(x, s, g, p0, m, zero.data(), tap_off.data(), corner.data(), rows.data());
            if (dot) {  // channel-vectorised: B is (rank × K) per group
                dot_gemm(w, m, cg_in, Bg, rank, t.data(), r_pad, by_tap);
                gemm(t.data(), r_pad, Ag, cg_pad, m, cg_pad, rank, out);
            } else if (cg_in < kIm2colBelow) {
                // Few channels per tap (an RGB stem: 3): the GEMM's inner loop over a tap's
                // channels is too short to pay for its per-tap setup, so the tile's windows are
                // copied into contiguous rows of K first
                cols.resize(std::max<size_t>(cols.size(), kTile * K));
                copy_windows(w, m, s, cols.data(), K);
                two_gemms(PlainRows{cols.data(), K, K});
            } else {
                two_gemms(w);
            }
        }
        // An activation that is not a clamp, on the tile just stored (before its pool: max pool and
        // act do not commute for SiLU, GELU, hard-swish)
        if (cell > 1) activate_rows(unpooled.data(), m, s.C_out, s.C_out, act, alpha);
        else activate_rows(y + p0 * s.ldy, m, s.C_out, s.ldy, act, alpha);
        if (cell > 1)
            for (int64_t c = 0; c < m / cell; ++c)  // each cell's pixels are consecutive rows
                max_cell(unpooled.data() + c * cell * s.C_out, s.C_out, y + (p0 / cell + c) * s.ldy);
    });
}

}  // namespace basisrt
