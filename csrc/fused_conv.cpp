#include "fused_conv.h"

#include "thread_pool.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace basisrt {
namespace {

constexpr int64_t kTile = 96;  // output pixels per tile: cols (96×K) and T (96×r) stay in L2
constexpr int64_t MR = 8, NR = kColBlock;

// One row block of NR floats; GCC lowers it to 1 zmm, 2 ymm or 4 xmm per the target clone.
typedef float vec __attribute__((vector_size(NR * sizeof(float)), aligned(4)));

// C[M×NR] = A[M×K] · B[K×NR] for M <= MR rows, one vector accumulator per row.
template <int64_t M>
inline __attribute__((always_inline)) void micro(const float* a, int64_t lda, const float* b, int64_t ldb,
                                                 float* c, int64_t ldc, int64_t K) {
    vec acc[M];
    for (int64_t i = 0; i < M; ++i) acc[i] = vec{};
    for (int64_t k = 0; k < K; ++k) {
        const vec bk = *reinterpret_cast<const vec*>(b + k * ldb);
        for (int64_t i = 0; i < M; ++i) acc[i] += a[i * lda + k] * bk;
    }
    for (int64_t i = 0; i < M; ++i) *reinterpret_cast<vec*>(c + i * ldc) = acc[i];
}

// C[M×N] = A[M×K] · B[K×N], N a multiple of NR (packed, zero-padded columns).
#define BASISRT_SIMD __attribute__((target_clones("avx512f", "avx2", "default")))
BASISRT_SIMD void gemm(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                       int64_t M, int64_t N, int64_t K) {
    for (int64_t j = 0; j < N; j += NR) {
        int64_t i = 0;
        for (; i + MR <= M; i += MR) micro<MR>(a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, K);
        for (; i + 4 <= M; i += 4) micro<4>(a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, K);
        for (; i < M; ++i) micro<1>(a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, K);
    }
}

// Gather the im2col rows of pixels [p0, p0+m) for group g into cols (m × K, K = kh·kw·Cg).
void im2col_tile(const float* x, const ConvShape& s, int64_t g, int64_t p0, int64_t m, float* cols) {
    const int64_t cg = s.C_in / s.groups, K = s.kh * s.kw * cg;
    for (int64_t t = 0; t < m; ++t) {
        const int64_t p = p0 + t, n = p / (s.Ho * s.Wo), oy = p / s.Wo % s.Ho, ox = p % s.Wo;
        float* row = cols + t * K;
        for (int64_t ky = 0; ky < s.kh; ++ky) {
            const int64_t iy = oy * s.sh - s.ph + ky * s.dh;
            for (int64_t kx = 0; kx < s.kw; ++kx, row += cg) {
                const int64_t ix = ox * s.sw - s.pw + kx * s.dw;
                if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) {
                    std::memset(row, 0, cg * sizeof(float));
                } else {
                    std::memcpy(row, x + ((n * s.H + iy) * s.W + ix) * s.C_in + g * cg, cg * sizeof(float));
                }
            }
        }
    }
}

inline float activate(float v, Activation act) {
    if (act == Activation::relu) return v > 0.f ? v : 0.f;
    if (act == Activation::relu6) return std::min(std::max(v, 0.f), 6.f);
    return v;
}

}  // namespace

const char* simd_path() {
    if (__builtin_cpu_supports("avx512f")) return "avx512f";
    if (__builtin_cpu_supports("avx2")) return "avx2";
    return "default";
}

void fused_conv_nhwc(const float* x, const float* B, const float* A, const float* bias,
                     const float* residual, float* y, const ConvShape& s, int64_t rank,
                     Activation act, int num_threads) {
    if (s.groups < 1 || s.C_in % s.groups || s.C_out % s.groups)
        throw std::invalid_argument("fused_conv_nhwc: groups must divide C_in and C_out");
    const int64_t cg_in = s.C_in / s.groups, cg_out = s.C_out / s.groups;
    const int64_t K = s.kh * s.kw * cg_in, cg_pad = round_up(cg_out, NR);
    const int64_t r_pad = rank ? round_up(rank, NR) : 0;
    const int64_t P = s.N * s.Ho * s.Wo, tiles = (P + kTile - 1) / kTile;
    // A 1×1, stride-1, unpadded conv reads its rows straight from x: no im2col copy.
    const bool direct = s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0;

    parallel_for(tiles, num_threads, [&](int64_t tile) {
        // Per-thread scratch, sized to the largest layer seen: no growth with the number of calls.
        thread_local std::vector<float> cols, t, out;
        cols.resize(std::max<size_t>(cols.size(), direct ? 0 : kTile * K));
        t.resize(std::max<size_t>(t.size(), kTile * r_pad));
        out.resize(std::max<size_t>(out.size(), kTile * cg_pad));
        const int64_t p0 = tile * kTile, m = std::min(kTile, P - p0);
        for (int64_t g = 0; g < s.groups; ++g) {
            const float* a_rows;
            int64_t lda;
            if (direct) {
                a_rows = x + p0 * s.C_in + g * cg_in;
                lda = s.C_in;
            } else {
                im2col_tile(x, s, g, p0, m, cols.data());
                a_rows = cols.data();
                lda = K;
            }
            if (rank) {
                gemm(a_rows, lda, B + g * K * r_pad, r_pad, t.data(), r_pad, m, r_pad, K);
                gemm(t.data(), r_pad, A + g * r_pad * cg_pad, cg_pad, out.data(), cg_pad, m, cg_pad, rank);
            } else {
                gemm(a_rows, lda, B + g * K * cg_pad, cg_pad, out.data(), cg_pad, m, cg_pad, K);
            }
            for (int64_t i = 0; i < m; ++i) {  // epilogue: bias, residual, activation, store
                const int64_t off = (p0 + i) * s.C_out + g * cg_out;
                const float* o = out.data() + i * cg_pad;
                for (int64_t j = 0; j < cg_out; ++j) {
                    float v = o[j] + (bias ? bias[g * cg_out + j] : 0.f);
                    if (residual) v += residual[off + j];
                    y[off + j] = activate(v, act);
                }
            }
        }
    });
}

}  // namespace basisrt
