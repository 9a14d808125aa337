#include "expand_depthwise.h"

#include "aligned_buffer.h"
#include "depthwise_conv.h"
#include "thread_pool.h"

#include <algorithm>
#include <cstring>

namespace basisrt {
namespace {

// The scratch of expanded rows a band may use: half of this machine's 1 MiB L2, leaving room for
// the band's input and output rows.
constexpr int64_t kScratchFloats = int64_t(1) << 17;

}  // namespace

void expand_depthwise_nhwc(const float* x, int64_t ldx, const ExpandConv& e, const float* w, const float* bias,
                           float* y, const ConvShape& dw, Activation act, float alpha, int num_threads) {
    const int64_t E = dw.C_in, W = dw.W, ldy = dw.ldy ? dw.ldy : E, span = (dw.kh - 1) * dw.dh + 1;
    const int64_t row = W * E;  // floats of one expanded row
    ldx = ldx ? ldx : e.C_in;
    // Output rows per band: as many as keep the scratch within kScratchFloats.
    const int64_t band = std::max<int64_t>(1, (kScratchFloats / row - span) / dw.sh + 1);
    // A task is one image's chunk of output rows, taken band after band: the rows a band shares
    // with the one before move to the scratch's start instead of being expanded again (5×5 windows
    // share 4 of each band's rows). Chunks: enough for every thread when the batch alone is not.
    const int64_t chunks = std::min(dw.Ho, (num_threads + dw.N - 1) / dw.N);
    const int64_t chunk = (dw.Ho + chunks - 1) / chunks;
    parallel_for(dw.N * chunks, num_threads, [&](int64_t task) {
        const int64_t n = task / chunks, c0 = task % chunks * chunk, c1 = std::min(dw.Ho, c0 + chunk);
        thread_local Aligned scratch;
        float* t = scratch.get(static_cast<size_t>(((band - 1) * dw.sh + span) * row));
        int64_t held0 = 0, held1 = 0;  // input rows [held0, held1) in the scratch, from its start
        for (int64_t oy0 = c0; oy0 < c1; oy0 += band) {
            const int64_t oy1 = std::min(c1, oy0 + band);
            // input rows [a, b) that the band's windows read (each window overlaps the image)
            const int64_t a = std::max<int64_t>(0, oy0 * dw.sh - dw.ph);
            const int64_t b = std::min(dw.H, (oy1 - 1) * dw.sh - dw.ph + span);
            int64_t from = a;
            if (held0 <= a && a < held1) {  // rows [a, held1) are expanded already
                std::memmove(t, t + (a - held0) * row, (held1 - a) * row * sizeof(float));
                from = held1;
            }
            if (from < b) {
                ConvShape es{1, b - from, W, e.C_in, b - from, W, E, 1, 1, 1, 1, 0, 0, 1, 1, 1};
                es.ldx = ldx, es.ldy = E, es.ldr = E;
                fused_conv_nhwc(x + (n * dw.H + from) * W * ldx, e.B, e.A, e.bias, nullptr, t + (from - a) * row, es,
                                e.rank, e.act, 1, e.alpha);
            }
            held0 = a, held1 = b;
            ConvShape ds = dw;  // the band as an image of b - a rows, its top padding what remains of dw.ph
            ds.N = 1, ds.H = b - a, ds.Ho = oy1 - oy0, ds.ph = a - (oy0 * dw.sh - dw.ph);
            ds.ldx = E, ds.ldy = ldy, ds.ldr = E;
            depthwise_conv_nhwc(t, w, bias, nullptr, y + (n * dw.Ho + oy0) * dw.Wo * ldy, ds, act, 1, alpha);
        }
    });
}

}  // namespace basisrt
