#include "amx_conv.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "activation.h"
#include "aligned_buffer.h"
#include "simd.h"
#include "thread_pool.h"
#include "winograd_conv.h"
#include "winograd_tiles.h"

// GCC 12's AVX-512 headers build widening and half-extracting intrinsics on _mm512_undefined_*,
// which -Wmaybe-uninitialized then reports at every inlined use: noise, not a defect here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define BASISRT_AMX __attribute__((target("avx512f,avx512vl,avx512bw,avx512bf16,amx-tile,amx-bf16,fma")))

namespace basisrt {
namespace {

constexpr int64_t kRows = 64;  // output pixels per task: four tiles of 16 rows

// CPUID: AVX512 F, BW, VL and BF16 (every bf16 path converts with them), and AMX-BF16 + AMX-TILE.
bool cpu_has_avx512_bf16() {  // (__builtin_cpu_supports also checks that the OS saves the state)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("fma");
}
bool cpu_has_amx_bf16() {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return (d >> 22 & 1) && (d >> 24 & 1) && cpu_has_avx512_bf16();
}

bool request_tile_data() {
#ifdef __linux__
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}

// LDTILECFG's 64 bytes. Every tile 16 rows × 64 bytes: accumulators 0-3 (16 × 16 fp32), A tiles
// 4-5 (16 × 32 bf16), B tiles 6-7 (16 pairs of K rows × 16 columns); tiles 8-15 and the reserved
// bytes zero. A constant in memory: GCC does not know LDTILECFG reads all 64 bytes of its operand
// and dropped the zeroing of a stack copy's last rows (a #GP, or a wrong configuration).
struct TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};
constexpr TileConfig kTileConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

// Loaded per task, released after it: a thread holding tile state makes each of its context
// switches save 8 KiB more.
BASISRT_AMX void configure_tiles() { _tile_loadconfig(&kTileConfig); }

// Where a GEMM's A tiles come from. K runs over `taps` segments of Cp (a multiple of kAmxK)
// elements: ptr(m, t, c) is the first element of rows 16·m.. at tap t, channel c, rows `stride`
// bytes apart; from_tile(m) is the same source starting at tile m.
struct PlainRows {  // rows of a row-major bf16 matrix (lda elements per row)
    const uint16_t* a;
    int64_t lda, Cp;
    const uint16_t* ptr(int m, int64_t t, int64_t c) const { return a + 16 * m * lda + t * Cp + c; }
    int64_t stride() const { return 2 * lda; }
    PlainRows from_tile(int m) const { return {a + 16 * m * lda, lda, Cp}; }
};
struct ImageRows {  // consecutive pixels of the padded input, read in place
    const uint16_t* base;     // tap (0, 0), channel 0 of the first pixel
    const int64_t* tap_off;   // elements from there to tap t
    int64_t step;             // elements from one pixel to the next (Cp)
    const uint16_t* ptr(int m, int64_t t, int64_t c) const { return base + 16 * m * step + tap_off[t] + c; }
    int64_t stride() const { return 2 * step; }
    ImageRows from_tile(int m) const { return {base + 16 * m * step, tap_off, step}; }
};

// c (16·MT × 16·NT fp32, ldc) = A (16·MT rows × taps·Cp, from src) · b (a packed panel whose
// pair row p starts at b + p · ldb, ldb in elements; NT column tiles of 16). MT × NT <= 4
// accumulator tiles (0-3); A in tiles 4, 5 (and 7 when MT is 4), B in 6 (and 7). Four
// accumulators keep four TDPBF16PS chains in flight: with two (one column tile, rank <= 16) the
// block ran at 60 % of the 2 × 2 block's rate.
template <int MT, int NT, class Src>
BASISRT_AMX inline void tile_block(const Src& src, int64_t taps, int64_t Cp, const uint16_t* b, int64_t ldb,
                                   float* c, int64_t ldc) {
    static_assert(NT <= 2 && MT * NT <= 4 && (MT <= 2 || NT == 1));
    _tile_zero(0);
    if constexpr (NT > 1 || MT > 1) _tile_zero(1);
    if constexpr (MT * NT > 2 || (MT == 2 && NT == 1)) _tile_zero(2);
    if constexpr (MT * NT > 2) _tile_zero(3);
    const int64_t stride = src.stride();
    for (int64_t t = 0; t < taps; ++t)
        for (int64_t ch = 0; ch < Cp; ch += kAmxK) {
            const uint16_t* bk = b + (t * Cp + ch) / 2 * ldb;
            _tile_loadd(6, bk, ldb * 2);
            if constexpr (MT == 4) {
                _tile_loadd(4, src.ptr(0, t, ch), stride);
                _tile_dpbf16ps(0, 4, 6);
                _tile_loadd(5, src.ptr(1, t, ch), stride);
                _tile_dpbf16ps(1, 5, 6);
                _tile_loadd(7, src.ptr(2, t, ch), stride);
                _tile_dpbf16ps(2, 7, 6);
                _tile_loadd(4, src.ptr(3, t, ch), stride);
                _tile_dpbf16ps(3, 4, 6);
            } else {
                _tile_loadd(4, src.ptr(0, t, ch), stride);
                if constexpr (MT > 1) _tile_loadd(5, src.ptr(1, t, ch), stride);
                if constexpr (NT > 1) _tile_loadd(7, bk + 2 * kAmxN, ldb * 2);
                _tile_dpbf16ps(0, 4, 6);
                if constexpr (NT > 1) _tile_dpbf16ps(1, 4, 7);
                if constexpr (MT > 1) _tile_dpbf16ps(2, 5, 6);
                if constexpr (MT > 1 && NT > 1) _tile_dpbf16ps(3, 5, 7);
            }
        }
    if constexpr (MT == 4) {
        _tile_stored(0, c, ldc * 4);
        _tile_stored(1, c + 16 * ldc, ldc * 4);
        _tile_stored(2, c + 32 * ldc, ldc * 4);
        _tile_stored(3, c + 48 * ldc, ldc * 4);
    } else {
        _tile_stored(0, c, ldc * 4);
        if constexpr (NT > 1) _tile_stored(1, c + kAmxN, ldc * 4);
        if constexpr (MT > 1) _tile_stored(2, c + 16 * ldc, ldc * 4);
        if constexpr (MT > 1 && NT > 1) _tile_stored(3, c + 16 * ldc + kAmxN, ldc * 4);
    }
}

// c (16·mt rows × cols fp32, ldc) = A (from src) · B's columns [0, cols) (taps·Cp rows, packed
// with ldb elements per pair row: B already offset to the first column); mt in [1, 4].
template <class Src>
BASISRT_AMX void tile_gemm(const Src& src, int mt, int64_t taps, int64_t Cp, const uint16_t* B, int64_t ldb,
                           int64_t cols, float* c, int64_t ldc) {
    int64_t n = 0;
    for (; n + 2 * kAmxN <= cols; n += 2 * kAmxN)
        for (int m = 0; m < mt; m += 2) {
            float* cm = c + 16 * m * ldc + n;
            if (mt - m >= 2) tile_block<2, 2>(src.from_tile(m), taps, Cp, B + 2 * n, ldb, cm, ldc);
            else tile_block<1, 2>(src.from_tile(m), taps, Cp, B + 2 * n, ldb, cm, ldc);
        }
    if (n == cols) return;
    if (mt == 4) {
        tile_block<4, 1>(src, taps, Cp, B + 2 * n, ldb, c + n, ldc);
        return;
    }
    for (int m = 0; m < mt; m += 2) {
        float* cm = c + 16 * m * ldc + n;
        if (mt - m >= 2) tile_block<2, 1>(src.from_tile(m), taps, Cp, B + 2 * n, ldb, cm, ldc);
        else tile_block<1, 1>(src.from_tile(m), taps, Cp, B + 2 * n, ldb, cm, ldc);
    }
}

// The same product without tiles, for CPUs with AVX512-BF16 but no AMX (Cooper Lake, Zen 4):
// VDPBF16PS multiplies 16 columns by one pair of K rows per instruction. Eight rows at a time (or
// ROWS): ROWS × NT accumulators, each B pair row loaded once for the rows, each A pair broadcast once.
// kPairs: Cp is any even count (the scaling GEMM's K: scaling_k), not a multiple of kAmxK.
// The loops over the accumulators are unrolled by pragma: rolled, GCC kept a copy of them on the
// stack (zeroed there at every call, stored after the K loop and reloaded for the stores; for
// NT 1 a REP STOSQ), and whole bf16 plans ran 1.04× slower at batch 32 (paired, same bits; the
// same in quad_rows and scaling_rows).
template <int NT, class Src, int rows = 8, bool kPairs = false>
BASISRT_AVX512BF16 void vec_rows(const Src& src, int m, int r0, int64_t taps, int64_t Cp, const uint16_t* b,
                                 int64_t ldb, float* c, int64_t ldc) {
    __m512 acc[rows][NT];
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i)
#pragma GCC unroll 4
        for (int n = 0; n < NT; ++n) acc[i][n] = _mm512_setzero_ps();
    const int64_t rs = src.stride() / 2;  // elements from one row to the next
    for (int64_t t = 0; t < taps; ++t)
        for (int64_t ch = 0; ch < Cp; ch += kAmxK) {
            const uint16_t* a = src.ptr(m, t, ch) + r0 * rs;
            const uint16_t* bk = b + (t * Cp + ch) / 2 * ldb;
            const int64_t pairs = kPairs ? std::min<int64_t>(kAmxK, Cp - ch) / 2 : kAmxK / 2;
            for (int64_t p = 0; p < pairs; ++p) {
                __m512bh bv[NT];
                for (int n = 0; n < NT; ++n) bv[n] = (__m512bh)_mm512_loadu_si512(bk + p * ldb + 2 * kAmxN * n);
                for (int i = 0; i < rows; ++i) {
                    int32_t pair;
                    std::memcpy(&pair, a + i * rs + 2 * p, sizeof pair);
                    const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
                    for (int n = 0; n < NT; ++n) acc[i][n] = _mm512_dpbf16_ps(acc[i][n], av, bv[n]);
                }
            }
        }
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i)
#pragma GCC unroll 4
        for (int n = 0; n < NT; ++n) _mm512_storeu_ps(c + (16 * m + r0 + i) * ldc + kAmxN * n, acc[i][n]);
}

// c (16 rows from row 16·m, columns 0-15, ldc) = A (from src) · B packed by pack_bf16_quad (a rank of
// at most 8: bf16_quad_path). Lane 2n + q of VDPBF16PS multiplies K rows 4g + 2q and 4g + 2q + 1 of
// column n by the same rows of a pixel, broadcast as 4 bf16 (8 bytes): all 16 lanes work for 8
// columns, where vec_rows pads a rank of 6 to 16 columns (10 idle lanes). A column's two lanes are
// added at the end, in the same order for every pixel; columns 8-15 are stored as zeros.
template <class Src>
BASISRT_AVX512BF16 void quad_rows(const Src& src, int m, int64_t taps, int64_t Cp, const uint16_t* b, float* c,
                                  int64_t ldc) {
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    const int64_t rs = src.stride() / 2;  // elements from one row to the next
    for (int64_t t = 0; t < taps; ++t)
        for (int64_t ch = 0; ch < Cp; ch += kAmxK) {
            const uint16_t* a = src.ptr(m, t, ch);
            const uint16_t* bk = b + (t * Cp + ch) * 8;  // quad k / 4 at (k / 4) · 32 elements
            for (int g = 0; g < kAmxK / 4; ++g) {
                const __m512bh bv = (__m512bh)_mm512_loadu_si512(bk + 32 * g);
                for (int i = 0; i < 16; ++i) {
                    int64_t quad;
                    std::memcpy(&quad, a + i * rs + 4 * g, sizeof quad);
                    acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi64(quad), bv);
                }
            }
        }
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
        const __m512 s = _mm512_add_ps(acc[i], _mm512_permute_ps(acc[i], 0xB1));  // lane 2n: column n
        _mm512_storeu_ps(c + (16 * m + i) * ldc, _mm512_maskz_compress_ps(0x5555, s));
    }
}

// tile_gemm's contract (16·mt rows × cols) on vectors (kPairs: vec_rows'), for the first `rows`
// rows only (the rest of the 16·mt are zeros): with a few pixels (batch 1 on a 2×2 or 4×4 map) the
// rows past them would take most of the multiply-adds.
template <bool kPairs = false, class Src>
BASISRT_AVX512BF16 void vec_gemm(const Src& src, int mt, int64_t taps, int64_t Cp, const uint16_t* B, int64_t ldb,
                                 int64_t cols, float* c, int64_t ldc, int64_t rows) {
    for (int64_t n = 0; n < cols; n += 2 * kAmxN) {
        const int64_t width = std::min<int64_t>(2 * kAmxN, cols - n);
        const uint16_t* b = B + 2 * n;
        for (int m = 0; m < mt; ++m)
            for (int r0 = 0; r0 < 16; r0 += 8) {
                const int64_t left = rows - 16 * m - r0;  // rows of these 8 to compute
                if (left > 4 && width == 2 * kAmxN) vec_rows<2, Src, 8, kPairs>(src, m, r0, taps, Cp, b, ldb, c + n, ldc);
                else if (left > 4) vec_rows<1, Src, 8, kPairs>(src, m, r0, taps, Cp, b, ldb, c + n, ldc);
                else if (left > 0 && width == 2 * kAmxN) vec_rows<2, Src, 4, kPairs>(src, m, r0, taps, Cp, b, ldb, c + n, ldc);
                else if (left > 0) vec_rows<1, Src, 4, kPairs>(src, m, r0, taps, Cp, b, ldb, c + n, ldc);
                for (int r = left > 4 ? 8 : left > 0 ? 4 : 0; r < 8; ++r)
                    std::memset(c + (16 * m + r0 + r) * ldc + n, 0, width * sizeof(float));
            }
    }
}

// dst[0, padded) = bf16(src[0, n)) then zeros (round to nearest even; NaN stays NaN); padded is a
// multiple of 32: whole 64-byte stores, two 16-float loads converted by one instruction.
BASISRT_AMX inline __attribute__((always_inline)) void to_bf16(const float* src, uint16_t* dst, int64_t n,
                                                               int64_t padded) {
    for (int64_t i = 0; i < padded; i += 32) {
        const int64_t lo = std::clamp<int64_t>(n - i, 0, 16), hi = std::clamp<int64_t>(n - i - 16, 0, 16);
        const __m512 a = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << lo) - 1), src + i);
        const __m512 b = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << hi) - 1), src + i + 16);
        _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(b, a));
    }
}

// One row of the scaling GEMM's input: src[0, n) as hi = bf16(src) at dst[0, n), with `hilo` lo =
// bf16(src - hi) at dst[n, 2n), zeros up to k2 (scaling_k). The pair carries 16 of fp32's 24
// mantissa bits; the GEMM multiplies both halves by A (packed from [A; A]), so rounding the
// basis output costs about what rounding the weights does. Without lo the basis output is
// rounded once, as a bf16 map between two convs would be.
BASISRT_AMX inline __attribute__((always_inline)) void split_bf16(const float* src, uint16_t* dst, int64_t n,
                                                                  int64_t k2, bool hilo) {
    const int64_t parts = hilo ? 2 * n : n;
    std::memset(dst + parts, 0, (k2 - parts) * sizeof(uint16_t));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(n - i, 16)) - 1);
        const __m512 a = _mm512_maskz_loadu_ps(m, src + i);
        const __m256bh h = _mm512_cvtneps_pbh(a);
        _mm256_mask_storeu_epi16(dst + i, m, (__m256i)h);
        if (!hilo) continue;
        // lo 0 where hi is Inf or NaN: Inf − Inf would turn an Inf of T into a NaN, where fp32 keeps it
        const __m512 h32 = _mm512_cvtpbh_ps(h);
        const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(h32), _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
        const __m512 lo = _mm512_maskz_sub_ps(finite, a, h32);
        _mm256_mask_storeu_epi16(dst + n + i, m, (__m256i)_mm512_cvtneps_pbh(lo));
    }
}

// dst[0, n) = src[0, n), n a multiple of 32 bf16 (64 bytes).
BASISRT_AMX inline __attribute__((always_inline)) void copy_bf16(const uint16_t* src, uint16_t* dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 32) _mm512_storeu_si512(dst + i, _mm512_loadu_si512(src + i));
}

// The padded input: xp (N, Hp, Wp, Cp) bf16 = x with ph / pw rows and columns of zeros around
// each image and its channels zero-padded to Cp. Every tap of every output pixel then reads
// inside it, with no border test, and a tile can read 16 output pixels' inputs in place.
struct Padded {
    int64_t Hp, Wp, Cp;
};

// dst[0, padded) = src[0, n) then zeros, bf16 bits; padded a multiple of 32.
BASISRT_AMX inline __attribute__((always_inline)) void copy_pad_bf16(const uint16_t* src, uint16_t* dst, int64_t n,
                                                                     int64_t padded) {
    for (int64_t i = 0; i < padded; i += 32) {
        const int64_t k = std::clamp<int64_t>(n - i, 0, 32);
        const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << k) - 1);
        _mm512_storeu_si512(dst + i, _mm512_maskz_loadu_epi16(m, src + i));
    }
}

// Row `row` of xp (image row / g.Hp, padded row row % g.Hp) from x: fp32 (converted) or bf16.
BASISRT_AMX void pad_row(const void* x, bool x_bf16, const ConvShape& s, int64_t ldx, const Padded& g, int64_t row,
                         uint16_t* xp) {
    const int64_t n = row / g.Hp, ih = row % g.Hp - s.ph;
    uint16_t* dst = xp + row * g.Wp * g.Cp;
    if (ih < 0 || ih >= s.H) {
        std::memset(dst, 0, g.Wp * g.Cp * sizeof(uint16_t));
        return;
    }
    std::memset(dst, 0, s.pw * g.Cp * sizeof(uint16_t));
    const int64_t first = (n * s.H + ih) * s.W * ldx;  // the row's first pixel in x, in elements
    const float* x32 = static_cast<const float*>(x) + first;
    const uint16_t* x16 = static_cast<const uint16_t*>(x) + first;
    uint16_t* d = dst + s.pw * g.Cp;
    if (g.Cp < kAmxK) {  // compact (fewer than 16 channels): exactly C_in per pixel
        const __mmask16 m = static_cast<__mmask16>((1u << s.C_in) - 1);
        for (int64_t iw = 0; iw < s.W; ++iw) {
            const __m256i v = x_bf16 ? _mm256_maskz_loadu_epi16(m, x16 + iw * ldx)
                                     : (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x32 + iw * ldx));
            _mm256_mask_storeu_epi16(d + iw * g.Cp, m, v);
        }
    } else if (x_bf16 && ldx == g.Cp) {  // channels a multiple of 32, dense: one copy
        std::memcpy(d, x16, s.W * g.Cp * sizeof(uint16_t));
    } else {
        for (int64_t iw = 0; iw < s.W; ++iw)  // zeros past C_in
            if (x_bf16) copy_pad_bf16(x16 + iw * ldx, d + iw * g.Cp, s.C_in, g.Cp);
            else to_bf16(x32 + iw * ldx, d + iw * g.Cp, s.C_in, g.Cp);
    }
    std::memset(dst + (s.pw + s.W) * g.Cp, 0, (g.Wp - s.pw - s.W) * g.Cp * sizeof(uint16_t));
}

struct Scratch {
    Aligned cols, t16, t, c;  // bf16 ones sized in pairs of elements
    uint16_t* bf16(Aligned& b, int64_t elems) { return reinterpret_cast<uint16_t*>(b.get((elems + 1) / 2)); }
};

// A conv's work, split into tasks of kRows pixels × a chunk of the first GEMM's columns.
//
// Pixels: a stride-1 conv runs on a virtual grid over the padded input, pixel v reading xp from
// pixel v on (plus its taps): 16 consecutive pixels are then 16 consecutive input pixels, one A
// tile read in place, across row and image boundaries. The grid's extra pixels (padding columns
// and rows: ow >= Wo or oh >= Ho, at most 2·pw of each Wp) are computed and dropped. A strided
// conv runs on its real output pixels, each tile's im2col rows copied out of xp (or x) first.
// Columns: a task keeps at most kPanelBytes of B hot while it runs its pixels; with few pixels
// (batch 1, late layers) the columns are also split so that every thread has work: there the
// weights' memory traffic is what takes the time. A basis pair whose columns are split runs in
// two passes, the first writing its fp32 output T for all pixels, the second T · A and the
// epilogue; otherwise each task does both.
struct ConvArgs {
    const uint16_t* xp;  // the padded input, or null: gathered from x itself (fused_conv_bf16_nhwc's in_place)
    Padded g;
    std::vector<int64_t> tap_off;  // elements of xp from a window's corner to tap t
    const uint16_t *B, *A;
    const float* bias;
    const void* residual;  // fp32 or bf16 (io)
    void* y;
    ConvShape s;
    int64_t rank, ldy, ldr, N1, R2, N2;  // R2: the scaling GEMM's K (scaling_k)
    bool hilo;  // the basis output as bf16 hi + lo (split_bf16)
    bool quad;  // B packed by pack_bf16_quad (bf16_quad_path): quad_rows
    bool virt;   // the virtual grid (stride 1)
    bool split;  // a task per tile and chunk of columns (else per tile: see conv_task)
    int64_t P;  // pixels of the grid (virtual: up to the last real one)
    int64_t chunk, chunks, tiles;
    int64_t out_chunk;  // the second pass's output columns per task
    float* T;  // two passes: (tiles · kRows) × N1, the basis conv's output
    Activation act;
    float alpha;
    bool amx;  // tiles; else AVX512-BF16 vectors (bf16_path())
    bool compact;  // amx_compact_k: K is every tap's channels back to back, Kc elements padded
    int64_t Kc;
    Bf16Io io;
    int64_t task_rows = kRows;  // pixels per task (tiles of them): fewer on vectors with few pixels
    bool panels = false;  // B in panels of kPanelCols columns (pack_bf16_b on vectors)
    const void* x = nullptr;  // where xp is null: the input itself (fp32 or bf16: io.x), gathered in place
    int64_t ldx = 0;
};

constexpr int64_t kPanelBytes = 512 * 1024;
constexpr int64_t kPanelCols = 2 * kAmxN;  // B's panels on vectors (pack_bf16_b)

// The scaling GEMM's K: the basis output's hi and lo parts (or hi alone), rank channels each,
// padded to a tile row (kAmxK) on tiles and to a pair on vectors. Never past amx_pair_k(rank),
// A's packed rows: hi alone reads A's rows and then rows of its second copy, against zeros.
// Unpadded, rank 13, 26 and 51 pairs (VGG16 and ResNet-18 at rank 10 %) ran 8-10 % faster in
// bf16 on Zen 4 (hi and lo both).
inline int64_t scaling_k(int64_t rank, bool hilo, bool amx) {
    const int64_t k = hilo ? 2 * rank : rank;
    return amx ? round_up(k, kAmxK) : round_up(k, 2);
}

// The grid's pixels from v on as output pixels (n·Ho + oh)·Wo + ow, or -1 for a virtual grid's
// extra ones: one division for the first, then a step per pixel (two divisions per pixel were a
// third of the epilogue's time).
struct PixelWalk {
    const ConvArgs& c;
    int64_t v, n, oh, ow, base;  // base: the real index of (n, 0, 0)
    PixelWalk(const ConvArgs& c, int64_t v) : c(c), v(v) {
        const int64_t H = c.virt ? c.g.Hp : c.s.Ho, W = c.virt ? c.g.Wp : c.s.Wo, q = v % (H * W);
        n = v / (H * W), oh = q / W, ow = q % W, base = n * c.s.Ho * c.s.Wo;
    }
    int64_t pixel() const {
        return v < c.P && oh < c.s.Ho && ow < c.s.Wo ? base + oh * c.s.Wo + ow : -1;
    }
    void next() {
        ++v;
        if (++ow < (c.virt ? c.g.Wp : c.s.Wo)) return;
        ow = 0;
        if (++oh < (c.virt ? c.g.Hp : c.s.Ho)) return;
        oh = 0;
        ++n;
        base += c.s.Ho * c.s.Wo;
    }
};

// tile_gemm on tiles or vectors, as the machine has them; tiles configured around each task.
template <class Src>
BASISRT_AMX void gemm(const ConvArgs& c, const Src& src, int mt, int64_t taps, int64_t Cp, const uint16_t* B,
                      int64_t ldb, int64_t cols, float* out, int64_t ldo, int64_t rows) {
    if (c.amx) tile_gemm(src, mt, taps, Cp, B, ldb, cols, out, ldo);
    else vec_gemm(src, mt, taps, Cp, B, ldb, cols, out, ldo, rows);
}
BASISRT_AMX void tiles_on(const ConvArgs& c) {
    if (c.amx) configure_tiles();
}
BASISRT_AMX void tiles_off(const ConvArgs& c) {
    if (c.amx) _tile_release();
}

// gather's compact rows (ConvArgs::compact): Kc elements per pixel, tap t's C_in channels at t·C_in.
// A kernel row's taps are adjacent in the padded input when the dilation is 1: one masked copy
// of kw·C_in elements per kernel row, else one per tap.
BASISRT_AMX const uint16_t* gather_compact(const ConvArgs& c, Scratch& sc, int64_t v0, int mt) {
    const ConvShape& s = c.s;
    const int64_t C = s.C_in, taps = s.kh * s.kw;
    const bool by_row = s.dw == 1 && s.kw * C <= 32;
    const int64_t run = by_row ? s.kw * C : C, runs = by_row ? s.kh : taps, step = by_row ? s.kw : 1;
    const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << run) - 1);
    uint16_t* rows = sc.bf16(sc.cols, kRows * c.Kc);
    PixelWalk at(c, v0);
    for (int64_t r = 0; r < 16 * mt; ++r, at.next()) {
        uint16_t* row = rows + r * c.Kc;
        if (at.pixel() < 0) {
            std::memset(row, 0, c.Kc * sizeof(uint16_t));
            continue;
        }
        const uint16_t* src = c.xp + ((at.n * c.g.Hp + at.oh * s.sh) * c.g.Wp + at.ow * s.sw) * C;
        for (int64_t i = 0; i < runs; ++i)
            _mm512_mask_storeu_epi16(row + i * run, m, _mm512_maskz_loadu_epi16(m, src + c.tap_off[i * step]));
        std::memset(row + taps * C, 0, (c.Kc - taps * C) * sizeof(uint16_t));
    }
    return rows;
}

// The im2col rows of the grid's pixels [v0, v0 + 16·mt) (zeros past the last pixel): from xp, or
// where xp is null from x itself, each tap's pixel tested against the image's bounds.
BASISRT_AMX const uint16_t* gather(const ConvArgs& c, Scratch& sc, int64_t v0, int mt) {
    if (c.compact) return gather_compact(c, sc, v0, mt);
    const ConvShape& s = c.s;
    const int64_t taps = s.kh * s.kw, Cp = c.g.Cp;
    uint16_t* rows = sc.bf16(sc.cols, kRows * taps * Cp);
    PixelWalk at(c, v0);
    for (int64_t r = 0; r < 16 * mt; ++r, at.next()) {
        uint16_t* row = rows + r * taps * Cp;
        if (at.pixel() < 0) {
            std::memset(row, 0, taps * Cp * sizeof(uint16_t));
            continue;
        }
        if (c.xp) {
            const uint16_t* src = c.xp + ((at.n * c.g.Hp + at.oh * s.sh) * c.g.Wp + at.ow * s.sw) * Cp;
            for (int64_t tap = 0; tap < taps; ++tap) copy_bf16(src + c.tap_off[tap], row + tap * Cp, Cp);
            continue;
        }
        const int64_t iy0 = at.oh * s.sh - s.ph, ix0 = at.ow * s.sw - s.pw;
        for (int64_t i = 0; i < s.kh; ++i)
            for (int64_t j = 0; j < s.kw; ++j) {
                uint16_t* dst = row + (i * s.kw + j) * Cp;
                const int64_t iy = iy0 + i * s.dh, ix = ix0 + j * s.dw;
                if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) {
                    std::memset(dst, 0, Cp * sizeof(uint16_t));
                    continue;
                }
                const int64_t o = ((at.n * s.H + iy) * s.W + ix) * c.ldx;
                if (!c.io.x) to_bf16(static_cast<const float*>(c.x) + o, dst, s.C_in, Cp);
                else if (s.C_in == Cp) copy_bf16(static_cast<const uint16_t*>(c.x) + o, dst, Cp);
                else copy_pad_bf16(static_cast<const uint16_t*>(c.x) + o, dst, s.C_in, Cp);
            }
    }
    return rows;
}

// t = A (16·mt rows from src, `rows` of them the grid's) · B's columns [j0, j0 + cols): B as one
// VNNI matrix, or panel by panel (c.panels: j0 a panel's first column).
template <class Src>
BASISRT_AMX void basis_product(const ConvArgs& c, const Src& src, int mt, int64_t taps, int64_t Cp, int64_t j0,
                               int64_t cols, float* t, int64_t ldt, int64_t rows) {
    if (!c.panels) return gemm(c, src, mt, taps, Cp, c.B + 2 * j0, 2 * c.N1, cols, t, ldt, rows);
    for (int64_t n = j0; n < j0 + cols; n += kPanelCols) {
        const int64_t width = std::min(kPanelCols, c.N1 - n);
        vec_gemm(src, mt, taps, Cp, c.B + n * taps * Cp, 2 * width, std::min(width, j0 + cols - n), t + n - j0, ldt,
                 rows);
    }
}

// t (16·mt rows × cols, ldt) = the grid's pixels [v0, v0 + 16·mt) · B's columns [j0, j0 + cols), of
// which the first `rows` are the grid's (the rest zeros on vectors); `im2col`: their im2col rows
// (gather), null on the virtual grid.
BASISRT_AMX void basis_gemm(const ConvArgs& c, const uint16_t* im2col, int64_t v0, int mt, int64_t rows, int64_t j0,
                            int64_t cols, float* t, int64_t ldt) {
    const int64_t taps = c.s.kh * c.s.kw, Cp = c.g.Cp;
    if (c.quad) {  // all 16 columns at once (j0 0)
        for (int m = 0; m < mt; ++m) {
            if (im2col && c.compact) quad_rows(PlainRows{im2col, c.Kc, c.Kc}, m, 1, c.Kc, c.B, t, ldt);
            else if (im2col) quad_rows(PlainRows{im2col, taps * Cp, Cp}, m, taps, Cp, c.B, t, ldt);
            else quad_rows(ImageRows{c.xp + v0 * Cp, c.tap_off.data(), Cp}, m, taps, Cp, c.B, t, ldt);
        }
        return;
    }
    if (im2col && c.compact) {  // one "tap" of Kc elements
        basis_product(c, PlainRows{im2col, c.Kc, c.Kc}, mt, 1, c.Kc, j0, cols, t, ldt, rows);
    } else if (im2col) {
        basis_product(c, PlainRows{im2col, taps * Cp, Cp}, mt, taps, Cp, j0, cols, t, ldt, rows);
    } else {
        basis_product(c, ImageRows{c.xp + v0 * Cp, c.tap_off.data(), Cp}, mt, taps, Cp, j0, cols, t, ldt, rows);
    }
}

// 16 values of the epilogue: o + bias (+ the residual, fp32 or bf16 bits), clamped to [lo, hi],
// stored to y as fp32 or rounded to bf16; m masks the columns past C_out. VMAXPS(lo, v) is
// lo > v ? lo : v and VMINPS(hi, v) hi < v ? hi : v: v, the second operand, wins every compare
// that is false, so NaN stays NaN (as PyTorch's clamps keep it), in two instructions where
// compare-and-blend took four (1.00-1.03× per bf16 pair, same bits).
BASISRT_AVX512BF16 inline __attribute__((always_inline)) void finish_vector(
    __m512 o, __m512 bias, const void* res, bool r16, void* y, bool y16, __m512 lo, __m512 hi, __mmask16 m) {
    __m512 v = _mm512_add_ps(o, bias);
    if (res && r16)
        v = _mm512_add_ps(v, _mm512_cvtpbh_ps((__m256bh)_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(res))));
    else if (res)
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, static_cast<const float*>(res)));
    v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
    if (y16) _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y), m, (__m256i)_mm512_cvtneps_pbh(v));
    else _mm512_mask_storeu_ps(static_cast<float*>(y), m, v);
}

// y's columns [j0, j0 + cols) of the grid's pixels [v0, v0 + rows) = clamp(out + bias (+ residual))
// (→ activation); out's rows ldo apart, its column 0 being column j0. A bf16 y gets the fp32
// result rounded; an activation beyond a clamp runs on out's row first (scratch, overwritten).
BASISRT_AMX void epilogue(const ConvArgs& c, float* out, int64_t ldo, int64_t v0, int64_t rows, int64_t j0,
                          int64_t cols) {
    const Clamp cl = clamp_of(c.act);
    const __m512 lo = _mm512_set1_ps(cl.lo), hi = _mm512_set1_ps(cl.hi);
    // c's fields in locals: every store through y could alias them, and reloading them after each
    // store was a fifth of the epilogue's time
    const bool y16 = c.io.y, r16 = c.io.residual, clamps = is_clamp(c.act);
    const bool staged = y16 && !clamps;  // the activation needs the whole fp32 row
    const float* const bias = c.bias + j0;
    const char* const residual = static_cast<const char*>(c.residual);
    char* const ybase = static_cast<char*>(c.y);
    const int64_t ldy = c.ldy, ldr = c.ldr, ysize = y16 ? 2 : 4, rsize = r16 ? 2 : 4;
    const Activation act = c.act;
    const float alpha = c.alpha;
    const __mmask16 tail = static_cast<__mmask16>((1u << (cols % 16)) - 1);
    PixelWalk at(c, v0);
    for (int64_t r = 0; r < rows; ++r, at.next()) {
        const int64_t p = at.pixel();
        if (p < 0) continue;
        float* o = out + r * ldo;
        char* y = ybase + (p * ldy + j0) * ysize;
        const char* res = residual ? residual + (p * ldr + j0) * rsize : nullptr;
        for (int64_t j = 0; j < cols; j += 16) {
            const __mmask16 m = cols - j >= 16 ? __mmask16(0xffff) : tail;
            const __m512 o_j = _mm512_maskz_loadu_ps(m, o + j), bias_j = _mm512_maskz_loadu_ps(m, bias + j);
            const char* res_j = res ? res + j * rsize : nullptr;
            if (staged) finish_vector(o_j, bias_j, res_j, r16, o + j, false, lo, hi, m);
            else finish_vector(o_j, bias_j, res_j, r16, y + j * ysize, y16, lo, hi, m);
        }
        if (clamps) continue;
        if (!y16) {
            activate_rows(reinterpret_cast<float*>(y), 1, cols, ldy, act, alpha);
            continue;
        }
        activate_rows(o, 1, cols, ldo, act, alpha);
        for (int64_t j = 0; j < cols; j += 16) {
            const __mmask16 m = cols - j >= 16 ? __mmask16(0xffff) : tail;
            _mm256_mask_storeu_epi16(reinterpret_cast<uint16_t*>(y) + j, m,
                                     (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, o + j)));
        }
    }
}

// The scaling GEMM with the epilogue in registers (vectors, a clamp activation): for ROWS rows
// of t16 (R2 elements each) whose output pixels are pix (-1: none), y's columns [n, n + 16·NT)
// (up to C_out) = clamp(t16 · A + bias (+ residual)). vec_rows' sums in its order, then the
// epilogue's steps: the same bits as vec_gemm then epilogue, without the fp32 rows' store and
// reload between them. The K loop is its own (one run of pairs, where vec_rows walks taps and
// blocks of 32): the same loop shared from vec_rows built to more scalar work around it and ran
// the rank-6 Winograd pair 2-25 % slower in six alternations of the two builds. Paired, bf16
// maps, same plans: whole bf16 plans (ResNet-18 and VGG16 at rank 10 and 25 %, batch 1 and 32)
// 1.03-1.09× faster, where the convs are bf16.
// Its accumulator loops are unrolled as vec_rows' are, and its epilogue has no branch on a column
// mask: with `if (mask[j])` there GCC kept the accumulators on the stack too. In registers:
// ResNet-18 r10's 1×1 stride-2 shortcut pairs 1.19-1.27× faster, whole bf16 plans 1.01-1.05×
// (paired, same bits).
template <int NT, int ROWS>
BASISRT_AVX512BF16 void scaling_rows(const ConvArgs& c, const uint16_t* t16, const int64_t* pix, int64_t n) {
    __m512 acc[ROWS][NT];
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i)
#pragma GCC unroll 2
        for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_setzero_ps();
    const uint16_t* a = c.A + 2 * n;
    const int64_t lda = 2 * c.N2;
    for (int64_t p = 0; p < c.R2 / 2; ++p) {
        __m512bh bv[NT];
        for (int j = 0; j < NT; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(a + p * lda + 2 * kAmxN * j);
        for (int i = 0; i < ROWS; ++i) {
            int32_t pair;
            std::memcpy(&pair, t16 + i * c.R2 + 2 * p, sizeof pair);
            const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
            for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, bv[j]);
        }
    }
    const Clamp cl = clamp_of(c.act);
    const __m512 lo = _mm512_set1_ps(cl.lo), hi = _mm512_set1_ps(cl.hi);
    const bool y16 = c.io.y, r16 = c.io.residual;
    const int64_t ysize = y16 ? 2 : 4, rsize = r16 ? 2 : 4;
    __m512 bias[NT];
    __mmask16 mask[NT];
    for (int j = 0; j < NT; ++j) {
        const int64_t left = std::clamp<int64_t>(c.s.C_out - n - 16 * j, 0, 16);
        mask[j] = static_cast<__mmask16>((1u << left) - 1);
        bias[j] = _mm512_maskz_loadu_ps(mask[j], c.bias + n + 16 * j);
    }
#pragma GCC unroll 8
    for (int i = 0; i < ROWS; ++i) {
        if (pix[i] < 0) continue;
        char* y = static_cast<char*>(c.y) + (pix[i] * c.ldy + n) * ysize;
        const char* res = c.residual ? static_cast<const char*>(c.residual) + (pix[i] * c.ldr + n) * rsize : nullptr;
#pragma GCC unroll 2
        for (int j = 0; j < NT; ++j)  // every mask[j] has columns (scaling_fused), and an empty one touches no memory
            finish_vector(acc[i][j], bias[j], res ? res + 16 * j * rsize : nullptr, r16, y + 16 * j * ysize, y16,
                          lo, hi, mask[j]);
    }
}

// scaling_rows over `rows` rows of t16 from the grid's pixel v0, y's columns [o0, o0 + cols).
BASISRT_AVX512BF16 void scaling_fused(const ConvArgs& c, const uint16_t* t16, int64_t v0, int64_t rows, int64_t o0,
                                      int64_t cols) {
    const int64_t end = std::min(o0 + cols, c.s.C_out);
    PixelWalk at(c, v0);
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
        int64_t pix[8];
        for (int i = 0; i < 8; ++i, at.next()) pix[i] = r0 + i < rows ? at.pixel() : -1;
        const uint16_t* t = t16 + r0 * c.R2;
        for (int64_t n = o0; n < end; n += 2 * kAmxN) {
            const bool two = end - n > kAmxN;
            if (rows - r0 > 4) {
                if (two) scaling_rows<2, 8>(c, t, pix, n);
                else scaling_rows<1, 8>(c, t, pix, n);
            } else if (two) {
                scaling_rows<2, 4>(c, t, pix, n);
            } else {
                scaling_rows<1, 4>(c, t, pix, n);
            }
        }
    }
}

// The scaling conv and the epilogue on rows [0, 16·mt) of t (the basis output, ldt apart), output
// columns [o0, o0 + cols).
BASISRT_AMX void scaling_gemm(const ConvArgs& c, Scratch& sc, const float* t, int64_t ldt, int64_t v0, int mt,
                              int64_t rows, int64_t o0, int64_t cols) {
    uint16_t* t16 = sc.bf16(sc.t16, kRows * c.R2);  // per row: hi, then lo (split_bf16)
    float* y2 = sc.c.get(kRows * cols);
    for (int64_t r = 0; r < (c.amx ? 16 * mt : rows); ++r)  // vectors read the first `rows` (vec_gemm)
        split_bf16(t + r * ldt, t16 + r * c.R2, c.rank, c.R2, c.hilo);
    if (!c.amx && is_clamp(c.act)) {
        scaling_fused(c, t16, v0, rows, o0, cols);
        return;
    }
    const PlainRows src{t16, c.R2, c.R2};
    if (c.amx) tile_gemm(src, mt, 1, c.R2, c.A + 2 * o0, 2 * c.N2, cols, y2, cols);
    else vec_gemm<true>(src, mt, 1, c.R2, c.A + 2 * o0, 2 * c.N2, cols, y2, cols, rows);
    tiles_off(c);
    epilogue(c, y2, cols, v0, rows, o0, std::min(cols, c.s.C_out - o0));
}

// Task `task` of one pass: pass 0 is the whole conv (or, split in two, the basis conv's columns
// into T), pass 1 the scaling conv on T. A task is one tile and one chunk of columns (`split`), or
// on a strided conv with enough tiles one tile and every chunk, its im2col rows gathered once.
BASISRT_AMX void conv_task(const ConvArgs& c, int pass, int64_t task) {
    thread_local Scratch sc;
    const int64_t tile = pass == 1 ? task % c.tiles : !c.split ? task : task % c.tiles;
    const int64_t v0 = tile * c.task_rows, rows = std::min(c.task_rows, c.P - v0);
    const int mt = static_cast<int>((rows + 15) / 16);
    tiles_on(c);
    if (pass == 1) {
        const int64_t o0 = task / c.tiles * c.out_chunk;
        scaling_gemm(c, sc, c.T + v0 * c.N1, c.N1, v0, mt, rows, o0, std::min(c.out_chunk, c.N2 - o0));
        return;
    }
    const uint16_t* im2col = c.virt ? nullptr : gather(c, sc, v0, mt);
    const int64_t first = c.split ? task / c.tiles : 0, last = c.split ? first + 1 : c.chunks;
    float* t = sc.t.get(kRows * c.N1);
    for (int64_t chunk = first; chunk < last; ++chunk) {
        const int64_t j0 = chunk * c.chunk, cols = std::min(c.chunk, c.N1 - j0);
        if (c.rank && c.chunks > 1) {  // the first of two passes
            basis_gemm(c, im2col, v0, mt, rows, j0, cols, c.T + v0 * c.N1 + j0, c.N1);
        } else {
            basis_gemm(c, im2col, v0, mt, rows, j0, cols, t, cols);
            if (c.rank) {
                scaling_gemm(c, sc, t, cols, v0, mt, rows, 0, c.N2);
                return;
            }
            tiles_off(c);
            epilogue(c, t, cols, v0, rows, j0, std::min(cols, c.s.C_out - j0));
            tiles_on(c);
        }
    }
    tiles_off(c);
}

// The basis conv by Winograd F(2×2, 3×3) on the vector path (winograd_tiles.h; the fp32 one is
// winograd_conv.cpp): per block of tile rows, V (bf16: each transformed point of x rounded once),
// the 16 GEMMs M[ξ] = V[ξ] · U[ξ] by VDPBF16PS into fp32, T = Aᵀ M A in fp32, then the pair's
// scaling conv and epilogue as on the direct path (scaling_gemm), 64 pixels at a time.
namespace wg = winograd;

// Columns of U[ξ] and M: a pair's rank (10 and more), a dense conv's outputs, in whole vectors.
inline int64_t winograd_bf16_cols(int64_t rank, int64_t c_out) { return round_up(rank ? rank : c_out, kAmxN); }

// bf16 elements of V per block (256 KB): the bytes of the fp32 conv's.
constexpr int64_t kBlockElems = 128 * 1024;

// Half `half` of x's channels [o, o + 32) as 16 fp32 lanes, in V's channel order (amx_conv.h's
// pack_winograd_bf16): the even channels, then the odd ones. From bf16 bits a 64-byte load and one
// shift (the even ones) or one mask (the odd ones), where widening each 16 in order took two
// instructions per 16; from fp32 two loads and a permute. `in` false: zeros.
BASISRT_AVX512BF16 inline __attribute__((always_inline)) wg::vec load_half(const void* x, bool x16, int64_t o,
                                                                             int half, bool in) {
    // a masked load of nothing (from x itself) is zeros, without a branch
    const __mmask32 m = in ? ~__mmask32(0) : 0;
    if (!in) o = 0;
    if (x16) {
        const __m512i z = _mm512_maskz_loadu_epi16(m, static_cast<const uint16_t*>(x) + o);
        return (wg::vec)(half ? _mm512_and_si512(z, _mm512_set1_epi32(int32_t(0xffff0000u))) : _mm512_slli_epi32(z, 16));
    }
    const float* x32 = static_cast<const float*>(x) + o;
    const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                                         _mm512_set1_epi32(half));
    return (wg::vec)_mm512_permutex2var_ps(_mm512_maskz_loadu_ps(__mmask16(m), x32), idx,
                                           _mm512_maskz_loadu_ps(__mmask16(m), x32 + 16));
}

// Bᵀ d of one column of a window: x's pixels in column ix of the window rows `row` (first pixels,
// -1 outside the image), the half `half` of channels [c, c + 32) (load_half).
BASISRT_AVX512BF16 inline __attribute__((always_inline)) void window_column(const void* x, bool x16,
                                                                             const ConvShape& s, int64_t ldx,
                                                                             const int64_t (&row)[4], int64_t ix,
                                                                             int64_t c, int half, wg::vec (&out)[4]) {
    wg::vec d[4];
    const bool col_in = ix >= 0 && ix < s.W;
    if (col_in && row[0] >= 0 && row[3] >= 0)  // rows 1-2 lie between
        for (int a = 0; a < 4; ++a) d[a] = load_half(x, x16, row[a] + ix * ldx + c, half, true);
    else
        for (int a = 0; a < 4; ++a) d[a] = load_half(x, x16, row[a] + ix * ldx + c, half, col_in && row[a] >= 0);
    out[0] = d[0] - d[2];
    out[1] = d[1] + d[2];
    out[2] = d[2] - d[1];
    out[3] = d[1] - d[3];
}

// V's rows (a tile each, ldv elements) for tile rows [tr0, tr1), from row t0 on; x fp32 or bf16
// bits. Per tile row, 16 channels (one half of 32) at a time along its tiles: tile tx's window
// columns 0-1 are tile tx − 1's columns 2-3, so each column of x is loaded and transformed (Bᵀ d)
// once, not twice.
BASISRT_AVX512BF16 void winograd_input_bf16(const void* x, bool x16, const ConvShape& s, int64_t ldx, int64_t tr0,
                                            int64_t tr1, uint16_t* V, int64_t t0, int64_t ldv) {
    const int64_t TW = wg::tiles_of(s.Wo), TH = wg::tiles_of(s.Ho), C = s.C_in;
    for (int64_t tr = tr0, t = t0; tr < tr1; ++tr, t += TW) {
        const int64_t n = tr / TH, iy0 = 2 * (tr % TH) - s.ph;
        int64_t row[4];  // each window row's first pixel (element offset in x), or -1 outside the image
        for (int a = 0; a < 4; ++a) row[a] = iy0 + a >= 0 && iy0 + a < s.H ? (n * s.H + iy0 + a) * s.W * ldx : -1;
        for (int64_t c = 0; c < C; c += kAmxK)
            for (int half = 0; half < 2; ++half) {
                wg::vec bd[4][4];  // Bᵀ d of the current tile's window columns: bd[column][a]
                window_column(x, x16, s, ldx, row, -s.pw, c, half, bd[0]);
                window_column(x, x16, s, ldx, row, 1 - s.pw, c, half, bd[1]);
                for (int64_t tx = 0; tx < TW; ++tx) {
                    window_column(x, x16, s, ldx, row, 2 * tx + 2 - s.pw, c, half, bd[2]);
                    window_column(x, x16, s, ldx, row, 2 * tx + 3 - s.pw, c, half, bd[3]);
                    uint16_t* v = V + (t + tx) * ldv + c + 16 * half;
                    for (int a = 0; a < 4; ++a) {
                        const wg::vec r[4] = {bd[0][a], bd[1][a], bd[2][a], bd[3][a]};
                        wg::vec out[4];
                        wg::input_row(r, out);
                        for (int b = 0; b < 4; ++b)
                            _mm256_storeu_si256(reinterpret_cast<__m256i*>(v + (a * 4 + b) * C),
                                                (__m256i)_mm512_cvtneps_pbh((__m512)out[b]));
                    }
                    for (int a = 0; a < 4; ++a) {
                        bd[0][a] = bd[2][a];
                        bd[1][a] = bd[3][a];
                    }
                }
            }
    }
}

// The GEMMs' rows: tiles rounded up to 8, or to 4 for up to 4 (batch 1 on a 2×2 or 4×4 map); to
// 16 for quads (quad_rows: 16 rows at a time).
inline int64_t winograd_rows(int64_t tiles, bool quad) {
    return quad ? round_up(tiles, 16) : tiles <= 4 ? 4 : round_up(tiles, 8);
}

// M[ξ] rows [0, rows) (winograd_rows) = V[ξ] · U[ξ]: fp32 sums of bf16 products. quad: U[ξ] packed
// by pack_bf16_quad (a rank of 1-8), M's columns 8-15 zeros.
BASISRT_AVX512BF16 void winograd_point_bf16(const uint16_t* V, int64_t ldv, int64_t C, const uint16_t* U,
                                            int64_t cols, int64_t p, int64_t rows, float* M, int64_t ldm, bool quad) {
    const PlainRows src{V + p * C, ldv, C};
    if (quad) {
        for (int m = 0; m < rows / 16; ++m) quad_rows(src, m, 1, C, U + p * C * 8, M + p * cols, ldm);
        return;
    }
    const uint16_t* u = U + p * C * cols;
    float* m = M + p * cols;
    if (rows == 4) {  // 4 rows × up to 4 vectors of columns: 16 accumulators, as 8 × 2
        int64_t n = 0;
        for (; n + 4 * kAmxN <= cols; n += 4 * kAmxN)
            vec_rows<4, PlainRows, 4>(src, 0, 0, 1, C, u + 2 * n, 2 * cols, m + n, ldm);
        for (; n < cols; n += kAmxN) vec_rows<1, PlainRows, 4>(src, 0, 0, 1, C, u + 2 * n, 2 * cols, m + n, ldm);
        return;
    }
    for (int64_t n = 0; n < cols; n += 2 * kAmxN)
        for (int64_t r0 = 0; r0 < rows; r0 += 8) {
            if (cols - n >= 2 * kAmxN) vec_rows<2>(src, 0, r0, 1, C, u + 2 * n, 2 * cols, m + n, ldm);
            else vec_rows<1>(src, 0, r0, 1, C, u + 2 * n, 2 * cols, m + n, ldm);
        }
}

// The conv of c (stride 1, 3×3) from x, U as amx_conv.h describes it: per block of tile
// rows, the input transform, the 16 GEMMs and then T = Aᵀ M A with the pair's scaling conv and
// epilogue, kRows pixels at a time.
BASISRT_AVX512BF16 void winograd_bf16(const ConvArgs& c, const void* x, int64_t ldx, const uint16_t* U,
                                      int num_threads) {
    const ConvShape& s = c.s;
    const int64_t C = s.C_in, cols = winograd_bf16_cols(c.rank, s.C_out);
    const int64_t TW = wg::tiles_of(s.Wo), tile_rows = s.N * wg::tiles_of(s.Ho), nt_all = tile_rows * TW;
    if (nt_all == 0) return;
    const int64_t ldv = wg::tile_stride(C, 32), ldm = wg::tile_stride(cols);  // bf16 V: a 64-byte line of padding
    // V's rows for tile rows [tr0, tr1) from row t0, and zeros in the rows up to `rows` (winograd_rows)
    auto transform = [&](uint16_t* V, int64_t tr0, int64_t tr1, int64_t t0, int64_t rows) {
        winograd_input_bf16(x, c.io.x, s, ldx, tr0, tr1, V, t0, ldv);
        const int64_t end = t0 + (tr1 - tr0) * TW;
        std::memset(V + end * ldv, 0, (t0 + rows - end) * ldv * sizeof(uint16_t));
    };
    // The output transform, the scaling conv and the epilogue of tile rows [tr0, tr1), M's from row t0
    auto finish = [&](const float* M, int64_t t0, int64_t tr0, int64_t tr1) {
        thread_local Aligned T_buf;
        thread_local Scratch sc;
        const int64_t first = wg::tile_rows_first_pixel(s, tr0), pixels = wg::tile_rows_pixels(s, tr0, tr1);
        float* T = T_buf.get(round_up(pixels, kRows) * cols);
        wg::output_transform(M, s, tr0, tr1, t0, cols, T);
        std::memset(T + pixels * cols, 0, (round_up(pixels, kRows) - pixels) * cols * sizeof(float));
        for (int64_t v0 = 0; v0 < pixels; v0 += kRows) {
            const int64_t rows = std::min(kRows, pixels - v0);
            float* t = T + v0 * cols;
            if (c.rank) scaling_gemm(c, sc, t, cols, first + v0, static_cast<int>((rows + 15) / 16), rows, 0, c.N2);
            else epilogue(c, t, cols, first + v0, rows, 0, s.C_out);
        }
    };
    const int64_t per_thread = (tile_rows + num_threads - 1) / num_threads;
    if (wg::split_points(nt_all, cols, num_threads)) {
        // Few tiles: every tile's windows at once and the 16 GEMMs split across threads, so that U is
        // read once, not once per thread.
        thread_local Aligned V_all, M_all;
        const int64_t rows = winograd_rows(nt_all, c.quad);
        uint16_t* V = reinterpret_cast<uint16_t*>(V_all.get((rows * ldv + 1) / 2));
        float* M = M_all.get(rows * ldm);
        parallel_for(tile_rows, num_threads, [&](int64_t tr) {
            transform(V, tr, tr + 1, tr * TW, tr + 1 < tile_rows ? TW : rows - tr * TW);
        });
        parallel_for(wg::kPoints, num_threads,
                     [&](int64_t p) { winograd_point_bf16(V, ldv, C, U, cols, p, rows, M, ldm, c.quad); });
        parallel_for(num_threads, num_threads, [&](int64_t i) {
            const int64_t tr0 = i * per_thread, tr1 = std::min(tile_rows, tr0 + per_thread);
            if (tr0 < tr1) finish(M, tr0 * TW, tr0, tr1);
        });
        return;
    }
    const int64_t per = std::min(std::max<int64_t>(1, kBlockElems / (wg::kPoints * C * TW)), per_thread);
    parallel_for((tile_rows + per - 1) / per, num_threads, [&](int64_t block) {
        thread_local Aligned V_buf, M_buf;
        const int64_t tr0 = block * per, tr1 = std::min(tile_rows, tr0 + per);
        const int64_t rows = winograd_rows((tr1 - tr0) * TW, c.quad);
        uint16_t* V = reinterpret_cast<uint16_t*>(V_buf.get((rows * ldv + 1) / 2));
        float* M = M_buf.get(rows * ldm);
        transform(V, tr0, tr1, 0, rows);
        for (int64_t p = 0; p < wg::kPoints; ++p) winograd_point_bf16(V, ldv, C, U, cols, p, rows, M, ldm, c.quad);
        finish(M, 0, tr0, tr1);
    });
}

}  // namespace

bool winograd_bf16_path(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t groups,
                        int64_t c_in, int64_t rank) {
    // ranks 1-8 as quads (the fp32 path keeps them direct: its channel-dot kernel has no padding)
    const bool quad = bf16_quad_path(rank) && kh == 3 && kw == 3 && sh == 1 && sw == 1 && dh == 1 && dw == 1 &&
                      groups == 1;
    return std::strcmp(bf16_path(), "avx512_bf16") == 0 && c_in % kAmxK == 0 &&
           (quad || winograd_path(kh, kw, sh, sw, dh, dw, groups, c_in, rank));
}

int64_t winograd_bf16_elems(int64_t c_in, int64_t rank, int64_t c_out) {
    return wg::kPoints * (bf16_quad_path(rank) ? quad_elems(c_in) : c_in * winograd_bf16_cols(rank, c_out));
}

bool amx_bf16_available() {
    static const bool ok = cpu_has_amx_bf16() && !std::getenv("BASISRT_NO_AMX") && request_tile_data();
    return ok;
}

const char* bf16_path() {
    static const bool vec = cpu_has_avx512_bf16() && !std::getenv("BASISRT_NO_AVX512_BF16");
    return amx_bf16_available() ? "amx" : vec ? "avx512_bf16" : "none";
}

namespace {
// w's element (k, n) as bf16 bits (round to nearest even, NaN quiet), 0 past K × N.
uint16_t bf16_bits(const float* w, int64_t K, int64_t N, int64_t k, int64_t n) {
    if (k >= K || n >= N) return 0;
    uint32_t bits;
    std::memcpy(&bits, w + k * N + n, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>(bits >> 16 | 0x40);
    return static_cast<uint16_t>((bits + 0x7fffu + (bits >> 16 & 1)) >> 16);
}
}  // namespace

void pack_bf16_vnni(const float* w, int64_t K, int64_t N, uint16_t* out) {
    const int64_t Kp = round_up(K, kAmxK), Np = round_up(N, kAmxN);
    for (int64_t k = 0; k < Kp; ++k)
        for (int64_t n = 0; n < Np; ++n) out[(k / 2 * Np + n) * 2 + k % 2] = bf16_bits(w, K, N, k, n);
}

void pack_bf16_b(const float* w, int64_t K, int64_t N, uint16_t* out) {
    if (amx_bf16_available()) return pack_bf16_vnni(w, K, N, out);
    const int64_t Kp = round_up(K, kAmxK), Np = round_up(N, kAmxN);
    for (int64_t n0 = 0; n0 < Np; n0 += kPanelCols) {
        const int64_t width = std::min(kPanelCols, Np - n0);
        uint16_t* panel = out + n0 * Kp;
        for (int64_t k = 0; k < Kp; ++k)
            for (int64_t n = 0; n < width; ++n) panel[(k / 2 * width + n) * 2 + k % 2] = bf16_bits(w, K, N, k, n0 + n);
    }
}

bool bf16_quad_path(int64_t rank) { return rank >= 1 && rank <= 8 && std::strcmp(bf16_path(), "avx512_bf16") == 0; }

void pack_bf16_quad(const float* w, int64_t K, int64_t N, uint16_t* out) {
    if (N > 8) throw std::invalid_argument("pack_bf16_quad takes at most 8 columns");
    for (int64_t k = 0; k < round_up(K, kAmxK); ++k)
        for (int64_t n = 0; n < 8; ++n) out[(k / 4 * 8 + n) * 4 + k % 4] = bf16_bits(w, K, N, k, n);
}

void pack_winograd_bf16(const float* U, int64_t C, int64_t n, bool quad, uint16_t* out) {
    std::vector<float> rows(C * n);
    const int64_t packed = quad ? quad_elems(C) : vnni_elems(C, n);
    for (int64_t p = 0; p < wg::kPoints; ++p) {
        const float* u = U + p * C * n;
        for (int64_t j = 0; j < C; ++j) {  // row j of V's order: within each 32, the even channels, then the odd
            const int64_t c = j - j % kAmxK + (j % kAmxK < kAmxK / 2 ? 2 * (j % kAmxK) : 2 * (j % kAmxK) - kAmxK + 1);
            std::copy(u + c * n, u + (c + 1) * n, rows.begin() + j * n);
        }
        if (quad) pack_bf16_quad(rows.data(), C, n, out + p * packed);
        else pack_bf16_vnni(rows.data(), C, n, out + p * packed);
    }
}

void fused_conv_bf16_nhwc(const void* x, const uint16_t* B, const uint16_t* A, const float* bias,
                          const void* residual, void* y, const ConvShape& s, int64_t rank, Activation act,
                          int num_threads, float alpha, Bf16Io io, const uint16_t* U, bool hilo) {
    if (std::strcmp(bf16_path(), "none") == 0)
        throw std::runtime_error(kNoBf16);
    if (s.groups != 1 || s.pool != 1)
        throw std::invalid_argument("the bf16 conv takes groups 1 and no fused pool");
    if (U && !winograd_bf16_path(s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.groups, s.C_in, rank))
        throw std::invalid_argument("bf16 Winograd weights are for a conv on winograd_bf16_path");
    const int64_t ldx = s.ldx ? s.ldx : s.C_in;
    if (U) {
        ConvArgs c{nullptr, {}, {}, B, A, bias, residual, y, s, rank, s.ldy ? s.ldy : s.C_out,
                   s.ldr ? s.ldr : s.C_out, winograd_bf16_cols(rank, s.C_out), scaling_k(rank, hilo, false),
                   round_up(s.C_out, kAmxN), hilo, bf16_quad_path(rank), false, false, s.N * s.Ho * s.Wo, 0, 0, 0, 0,
                   nullptr, act, alpha, false, false, 0, io};
        winograd_bf16(c, x, ldx, U, num_threads);
        return;
    }
    const bool compact = amx_compact_k(s.C_in);  // compiler/bf16.py packs B the same way (compact_k)
    const bool amx = amx_bf16_available();
    const Padded g{s.H + 2 * s.ph, s.W + 2 * s.pw, compact ? s.C_in : round_up(s.C_in, kAmxK)};
    // The virtual grid where its extra tiles are few (at most 35 % more): not on small maps of a
    // batch (a 4×4 map padded to 6×6 does 2.25× the work), but an 8×8 map of one image is 5 tiles
    // of 16 pixels against 4, where gathering would copy 9 taps per pixel for every chunk. On AMX
    // also with at most two tiles of real pixels (one 4×4 image): reading the weights takes the
    // time, and the extra tiles cost less than the gathers (ResNet-18 r25 batch 1: 0.055 -> 0.050
    // ms per conv). Not on vectors, where each tile of a few rows reads all of B again: one 4×4
    // image, 2 threads, weights out of L2, 128-512 channels at rank 25 %: 1.26-1.65× gathered.
    const int64_t P_virt = ((s.N - 1) * g.Hp + s.Ho - 1) * g.Wp + s.Wo, P_real = s.N * s.Ho * s.Wo;
    const bool virt = !compact && s.sh == 1 && s.sw == 1 &&
                      (round_up(P_virt, 16) * 20 <= round_up(P_real, 16) * 27 || (P_real <= 32 && amx));
    // Gathered from x itself, not from a padded copy, where x is bf16 (the copy would only move
    // the same bytes once more) or the conv strided (it reads a quarter of x, or less, where the
    // copy converts all of it); compact rows keep the copy (its runs of taps). A 1×1 stride-2
    // conv at batch 1 had spent a sixth of its time copying the whole map.
    const bool in_place = !virt && !compact && (io.x || s.sh > 1 || s.sw > 1);
    uint16_t* xp = nullptr;
    // The calling thread's: the program runs image groups on several threads at once. kRows
    // pixels of zeros after the last image: the virtual grid's last tile reads that far.
    thread_local Aligned padded;
    if (!in_place) {
        const int64_t xp_elems = (s.N * g.Hp * g.Wp + kRows) * g.Cp;
        xp = reinterpret_cast<uint16_t*>(padded.get((xp_elems + 1) / 2));
        // Up to 512 KiB the caller copies alone: a barrier cost more than the copy (ResNet-18 and
        // VGG16 r10, batch 1: 4-5 % faster, where a conv's padded input is 37-148 KiB)
        const int pad_threads = s.N * g.Hp * g.Wp * g.Cp * 2 <= (int64_t{512} << 10) ? 1 : num_threads;
        parallel_for(s.N * g.Hp, pad_threads, [&](int64_t row) { pad_row(x, io.x, s, ldx, g, row, xp); });
        std::memset(xp + s.N * g.Hp * g.Wp * g.Cp, 0, kRows * g.Cp * sizeof(uint16_t));
    }

    ConvArgs c{xp, g, {}, B, A, bias, residual, y, s, rank, s.ldy ? s.ldy : s.C_out, s.ldr ? s.ldr : s.C_out,
               round_up(rank ? rank : s.C_out, kAmxN),  // the first GEMM's columns
               scaling_k(rank, hilo, amx), round_up(s.C_out, kAmxN),  // the second's K and columns
               hilo, bf16_quad_path(rank), virt, false, 0, 0, 0, 0, 0, nullptr, act, alpha, amx, compact,
               amx_conv_k(s), io};
    c.panels = !c.amx && !c.quad;  // pack_bf16_b's panels
    c.x = x;
    c.ldx = ldx;
    for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j) c.tap_off.push_back((i * s.dh * g.Wp + j * s.dw) * g.Cp);
    c.P = c.virt ? P_virt : P_real;
    // On vectors, with fewer than kRows pixels per thread, tasks of a thread's share (in whole
    // tiles of 16): kRows would leave one thread most of the pixels (an 8×8 map of one image is 78
    // grid pixels: 64 and 14). At batch 1, 2 threads, rank 25 % (bf16 maps, direct, paired; see
    // RESULTS.md session 27): 256 channels at 8×8 105 → 78 µs, at 4×4 39 → 30 µs; 512 at 4×4 99 →
    // 92 µs; 2×2 and 16×16 to 32×32 ±2 %.
    c.task_rows = c.amx ? kRows : std::min(kRows, round_up((c.P + num_threads - 1) / num_threads, 16));
    c.tiles = (c.P + c.task_rows - 1) / c.task_rows;
    const int64_t K = compact ? c.Kc : s.kh * s.kw * g.Cp;
    c.chunk = c.N1;
    if (2 * K * c.N1 > kPanelBytes) c.chunk = std::max<int64_t>(kPanelBytes / (2 * K) / 32 * 32, 32);
    // Tasks for balance: with fewer tiles than twice the threads the columns split further. A basis
    // pair then runs in two passes, which pays where reading its weights takes the time (B of 1 MiB
    // or more), and on vectors where the first GEMM's MACs do (a million or more: about 9 µs on one
    // core); below both one pass, threads idle or not, was 5-11 % faster on ResNet-18 and VGG16 at
    // batch 1 (rank 10 and 25 %). The MAC rule (session 28, paired, bf16 maps, batch 1): ResNet-18's
    // 256 → 512-channel stride-2 conv at rank 25 % 58 → 38.5 µs, 512-channel 4×4 pairs of rank 51
    // 1.68×, 256-channel 4×4 of rank 64 1.59×; whole plans compiled with it 1.02-1.06× (ResNet-18,
    // VGG16, rank 10 and 25 %). AMX, 15× faster per MAC, keeps the weights rule alone.
    const bool balance = rank == 0 || 2 * K * c.N1 >= (int64_t{1} << 20) ||
                         (!c.amx && c.P * K * c.N1 >= (int64_t{1} << 20));
    const int64_t want = balance ? 2 * static_cast<int64_t>(num_threads) : 0;
    const int64_t align = c.amx ? kAmxN : kPanelCols;  // a chunk starts a panel on vectors
    if (c.tiles < want) c.chunk = std::min(c.chunk, round_up((c.N1 + want / c.tiles - 1) / (want / c.tiles), align));
    c.chunk = std::min(c.chunk, c.N1);
    c.chunks = (c.N1 + c.chunk - 1) / c.chunk;
    c.split = c.virt || c.tiles < want;
    thread_local Aligned basis_out;  // two passes only
    if (rank && c.chunks > 1) c.T = basis_out.get(c.tiles * c.task_rows * c.N1);
    parallel_for(c.split ? c.chunks * c.tiles : c.tiles, num_threads, [&c](int64_t task) { conv_task(c, 0, task); });
    if (rank && c.chunks > 1) {
        const int64_t parts = c.tiles < want ? (want + c.tiles - 1) / c.tiles : 1;
        c.out_chunk = std::min(c.N2, round_up((c.N2 + parts - 1) / parts, kAmxN));
        const int64_t out_chunks = (c.N2 + c.out_chunk - 1) / c.out_chunk;
        parallel_for(c.tiles * out_chunks, num_threads, [&c](int64_t task) { conv_task(c, 1, task); });
    }
    // The calling thread keeps its scratch for the next call, as the program's arena does, up to a
    // bound: a large batch's padded input would otherwise stay for the life of the thread.
    constexpr size_t kKeepFloats = size_t(16) << 20;  // 64 MiB each
    if (padded.size > kKeepFloats) padded = Aligned{};
    if (basis_out.size > kKeepFloats) basis_out = Aligned{};
}

}  // namespace basisrt
