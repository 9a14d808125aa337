"""What skipping the products against the padding is worth (csrc/fused_conv.cpp, padding_heavy:
on small maps each tap of the dot path runs on only the pixels it reads inside the image), A/B in
one process: every call alternates the default and BASISRT_ALL_TAPS=1 (every tap's products),
which the kernel reads per call.

    PYTHONPATH=. python bench/padding_taps_ab.py [--calls 300] [--threads 2] [--copies 6]

Layers: basis pairs on the direct path (their Winograd weights dropped), the 3×3 shapes of the
512- and 256-channel stages of VGG16 / ResNet-18 on CIFAR inputs at ranks 25 % and 10 %, batch 1
and 32; the weights rotate over `--copies` copies so that they come from L3, as in a plan. Prints
per layer the median of the per-call ratios (every tap ÷ skipped: above 1, skipping is faster) and
both medians; the Python call (~10 µs) is inside both.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from basisrt.compiler.cpu_steps import FusedConv2d

# (channels, map, rank, batch)
LAYERS = [(512, 2, 128, 1), (512, 4, 128, 1), (512, 2, 51, 1), (512, 4, 51, 1), (256, 4, 64, 1),
          (512, 2, 128, 32), (512, 4, 128, 32), (512, 2, 51, 32), (512, 4, 51, 32), (256, 4, 64, 32)]


def pair(c: int, r: int, threads: int) -> FusedConv2d:
    step = FusedConv2d(torch.randn(r, c, 3, 3) * 0.05, torch.randn(c), stride=(1, 1), padding=(1, 1),
                       dilation=(1, 1), groups=1, scale=torch.randn(c, r) * 0.1, activation="relu",
                       num_threads=threads)
    step.winograd = None  # the direct (dot) path, where the skipping is
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--copies", type=int, default=6)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print("| channels | map | rank | batch | every tap ÷ skipped | skipped µs | every tap µs |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, hw, r, n in LAYERS:
        steps = [pair(c, r, a.threads) for _ in range(a.copies)]
        x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
        out = torch.empty(n, hw, hw, c)
        calls = a.calls if n == 1 else max(20, a.calls // 10)
        skipped, every = [], []
        with torch.inference_mode():
            for i in range(calls + 10):
                step = steps[i % len(steps)]
                order = (False, True) if i % 2 else (True, False)  # neither always runs first
                for all_taps in order:
                    if all_taps:
                        os.environ["BASISRT_ALL_TAPS"] = "1"
                    t = time.perf_counter()
                    step(x, out=out)
                    dt = time.perf_counter() - t
                    os.environ.pop("BASISRT_ALL_TAPS", None)
                    if i >= 10:
                        (every if all_taps else skipped).append(dt)
        ratio = statistics.median(e / s for e, s in zip(every, skipped))
        print(f"| {c} | {hw}×{hw} | {r} | {n} | {ratio:.2f} | {statistics.median(skipped) * 1e6:.0f} | "
              f"{statistics.median(every) * 1e6:.0f} |", flush=True)


if __name__ == "__main__":
    main()
