// An inverted-residual block's expand 1×1 conv and the depthwise conv that reads it, in one pass
// (MobileNetV2's and EfficientNet's MBConv): the expanded map (6× the block's channels, the largest
// tensor of those networks) never reaches memory. Each task takes a chunk of one image's output
// rows of the depthwise, band by band: it expands just the input rows a band's windows read into
// a thread-local scratch that stays in L2 (the rows it shares with the band before are moved, not
// expanded again), and runs the depthwise conv on it. Both convs are the ordinary kernels
// (fused_conv_nhwc on the rows, depthwise_conv_nhwc on the scratch), so the result is the same as
// running them one after the other.
#pragma once
#include <cstdint>

#include "fused_conv.h"

namespace basisrt {

struct ExpandConv {  // the 1×1, stride-1 expand conv (dense or basis pair), packed as fused_conv_nhwc's
    const float *B, *A, *bias;
    int64_t C_in, rank;
    Activation act;
    float alpha;
};

// x: NHWC (N, H, W, e.C_in) with pixel stride ldx (0: C_in); dw: the depthwise conv on the expanded
// map (C_in = C_out = groups = the expanded channels), w / bias / act / alpha its weights and
// epilogue, dw.ldy the output's pixel stride; no residual, no fused pool. The caller (Program) has
// checked both geometries, and that every window overlaps the image (2·ph <= (kh-1)·dh, the same
// for w).
void expand_depthwise_nhwc(const float* x, int64_t ldx, const ExpandConv& e, const float* w, const float* bias,
                           float* y, const ConvShape& dw, Activation act, float alpha, int num_threads);

}  // namespace basisrt
