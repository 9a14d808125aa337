"""The fp32 fused basis pair against oneDNN's basis conv alone, one thread, in GMAC/s: how close
our GEMMs come to the FMA peak on the rank-25 % layers of VGG16 / ResNet-18 (CIFAR shapes). The
pair's figure counts the direct MACs (9·C·r + r·C per pixel) also where it runs by Winograd
(csrc/winograd_conv.h), which takes fewer: beside it, the same pair on the direct path.
oneDNN runs only the 3x3 basis conv (rank output channels), we run it and the 1x1 scaling conv
with the epilogue: a lower bound on the gap. Then the same layers dense (the unpruned 3x3 conv),
and dense 1x1 convs of ResNet-50 / MobileNet shapes, and convs whose output channels per group are
not a multiple of 16 (ShuffleNet, MobileNetV3, RegNetY, ResNeXt): our dense kernel (bias + ReLU
fused) against oneDNN's conv. Run alone:
`python bench/basis_pair_micro.py [--batch 32] [--reps 30]`."""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from basisrt.compiler.cpu_steps import FusedConv2d

SHAPES = [(64, 32, 16), (128, 16, 32), (256, 8, 64), (512, 4, 128)]  # channels, map size, rank (25 %)
POINTWISE = [(256, 1024, 14, 8), (1024, 256, 14, 8), (2048, 512, 7, 8), (512, 2048, 7, 8), (960, 160, 7, 32)]
# Output channels per group not a multiple of 16 (the last vector of a group partial): ShuffleNetV2,
# MobileNetV3 / MnasNet 1x1 convs; RegNetY's grouped 3x3 (groups of 8 and 24), ResNeXt's (4 and 8);
# MobileNetV3's depthwise convs of 72 and 120 channels. (c_in, c_out, kernel, groups, map, batch)
ODD_WIDTHS = [(116, 116, 1, 1, 28, 8), (40, 120, 1, 1, 28, 8), (104, 104, 3, 13, 28, 8), (120, 120, 3, 5, 28, 8),
              (128, 128, 3, 32, 56, 2), (256, 256, 3, 32, 28, 8), (72, 72, 3, 72, 56, 4), (120, 120, 5, 120, 28, 4)]


def median_s(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| channels | map | rank | ours: pair, GMAC/s | ours: pair, direct path | oneDNN: basis conv alone, GMAC/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, hw, r in SHAPES:
        torch.manual_seed(0)
        w, scale = torch.randn(r, c, 3, 3) * 0.05, torch.randn(c, r) * 0.1
        pair = FusedConv2d(w, torch.randn(c), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                           scale=scale, activation="relu", num_threads=1)
        x = torch.randn(args.batch, c, hw, hw).contiguous(memory_format=torch.channels_last)
        wl = w.contiguous(memory_format=torch.channels_last)
        pixels = args.batch * hw * hw
        ours = pixels * (9 * c * r + r * c) / median_s(lambda: pair(x), args.reps) / 1e9
        winograd, pair.winograd = pair.winograd, None  # without its Winograd weights: the direct path
        direct = pixels * (9 * c * r + r * c) / median_s(lambda: pair(x), args.reps) / 1e9
        pair.winograd = winograd
        with torch.no_grad():
            onednn = pixels * 9 * c * r / median_s(lambda: F.conv2d(x, wl, None, 1, 1), args.reps) / 1e9
        print(f"| {c} | {hw}x{hw} | {r} | {ours:.0f} | {direct:.0f} | {onednn:.0f} |", flush=True)
    print("\n| channels | map | ours: dense conv, GMAC/s | oneDNN: dense conv, GMAC/s |")
    print("| ---: | ---: | ---: | ---: |")
    for c, hw, _ in SHAPES:
        ours, onednn = dense_pair(c, c, 3, hw, args.batch, args.reps)
        print(f"| {c} | {hw}x{hw} | {ours:.0f} | {onednn:.0f} |", flush=True)
    print("\n| 1x1 conv | map | batch | ours: dense conv, GMAC/s | oneDNN: dense conv, GMAC/s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for cin, cout, hw, n in POINTWISE:
        ours, onednn = dense_pair(cin, cout, 1, hw, n, args.reps)
        print(f"| {cin}→{cout} | {hw}x{hw} | {n} | {ours:.0f} | {onednn:.0f} |", flush=True)
    print("\n| conv | groups | map | batch | ours: dense conv, GMAC/s | oneDNN: dense conv, GMAC/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for cin, cout, k, groups, hw, n in ODD_WIDTHS:
        ours, onednn = dense_pair(cin, cout, k, hw, n, args.reps, groups)
        print(f"| {k}x{k} {cin}→{cout} | {groups} | {hw}x{hw} | {n} | {ours:.0f} | {onednn:.0f} |", flush=True)


def dense_pair(cin: int, cout: int, k: int, hw: int, batch: int, reps: int, groups: int = 1) -> tuple[float, float]:
    """GMAC/s of our dense k x k conv (stride 1, same padding, bias + ReLU) and of oneDNN's."""
    torch.manual_seed(0)
    w = torch.randn(cout, cin // groups, k, k) * 0.05
    dense = FusedConv2d(w, torch.randn(cout), stride=(1, 1), padding=(k // 2, k // 2), dilation=(1, 1),
                        groups=groups, activation="relu", num_threads=1)
    x = torch.randn(batch, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    wl = w.contiguous(memory_format=torch.channels_last)
    macs = batch * hw * hw * k * k * cin // groups * cout
    ours = macs / median_s(lambda: dense(x), reps) / 1e9
    with torch.no_grad():
        onednn = macs / median_s(lambda: F.conv2d(x, wl, None, 1, k // 2, 1, groups), reps) / 1e9
    return ours, onednn


if __name__ == "__main__":
    main()
