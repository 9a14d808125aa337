#include "expand_depthwise.h"

#include "depthwise_conv.h"
#include "thread_pool.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>

namespace basisrt {
namespace {

// The scratch of expanded rows a band may use: half of this machine's 1 MiB L2, leaving room for
// the band's input and output rows.
constexpr int64_t kScratchFloats = int64_t(1) << 17;

struct Scratch {  // thread-local, grows only
    std::unique_ptr<float, decltype(&std::free)> p{nullptr, &std::free};
    int64_t size = 0;
    float* get(int64_t need) {
        if (size < need) {
            p.reset();
            size = 0;
            void* q = std::aligned_alloc(64, (need * int64_t(sizeof(float)) + 63) / 64 * 64);
            if (!q) throw std::bad_alloc();
            p.reset(static_cast<float*>(q));
            size = need;
        }
        return p.get();
    }
};

}  // namespace

void expand_depthwise_nhwc(const float* x, int64_t ldx, const ExpandConv& e, const float* w, const float* bias,
                           float* y, const ConvShape& dw, Activation act, float alpha, int num_threads) {
    const int64_t E = dw.C_in, W = dw.W, ldy = dw.ldy ? dw.ldy : E, span = (dw.kh - 1) * dw.dh + 1;
    ldx = ldx ? ldx : e.C_in;
    // Output rows per band: as many as keep the scratch within kScratchFloats, and enough bands
    // for every thread when the batch alone does not give them.
    int64_t band = std::max<int64_t>(1, (kScratchFloats / (W * E) - span) / dw.sh + 1);
    const int64_t per_image = (num_threads + dw.N - 1) / dw.N;
    band = std::min(band, (dw.Ho + per_image - 1) / per_image);
    const int64_t bands = (dw.Ho + band - 1) / band;
    parallel_for(dw.N * bands, num_threads, [&](int64_t task) {
        const int64_t n = task / bands, oy0 = task % bands * band, oy1 = std::min(dw.Ho, oy0 + band);
        // input rows [a, b) that the band's windows read (each window overlaps the image)
        const int64_t a = std::max<int64_t>(0, oy0 * dw.sh - dw.ph);
        const int64_t b = std::min(dw.H, (oy1 - 1) * dw.sh - dw.ph + span);
        thread_local Scratch scratch;
        float* t = scratch.get((b - a) * W * E);
        ConvShape es{1, b - a, W, e.C_in, b - a, W, E, 1, 1, 1, 1, 0, 0, 1, 1, 1};
        es.ldx = ldx, es.ldy = E, es.ldr = E;
        fused_conv_nhwc(x + (n * dw.H + a) * W * ldx, e.B, e.A, e.bias, nullptr, t, es, e.rank, e.act, 1, e.alpha);
        ConvShape ds = dw;  // the band as an image of b - a rows, its top padding what remains of dw.ph
        ds.N = 1, ds.H = b - a, ds.Ho = oy1 - oy0, ds.ph = a - (oy0 * dw.sh - dw.ph);
        ds.ldx = E, ds.ldy = ldy, ds.ldr = E;
        depthwise_conv_nhwc(t, w, bias, nullptr, y + (n * dw.Ho + oy0) * dw.Wo * ldy, ds, act, 1, alpha);
    });
}

}  // namespace basisrt
