"""What the bf16 Winograd conv is worth per layer (csrc/amx_conv.cpp, the AVX512-BF16 vector path):
a 3×3 pair (ReLU, fp32 maps) timed three ways, call by call in turn on 2 threads: the fp32
Winograd conv, the direct bf16 conv and the bf16 Winograd conv. Prints medians (µs) and the
bf16 Winograd conv's speed over the other two.

    PYTHONPATH=. python bench/winograd_bf16_ab.py [--batches 32 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from basisrt import _C
from basisrt.compiler.bf16 import packed_bf16
from basisrt.compiler.cpu_steps import FusedConv2d

# (channels, map, rank): ResNet-18's and VGG16's 3×3 pairs at rank 25 % and 10 %, 32×32 input
SHAPES = [(64, 32, 16), (128, 16, 32), (256, 8, 64), (512, 4, 128), (512, 2, 128), (128, 16, 13), (256, 8, 26),
          (512, 4, 51)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 1])
    a = ap.parse_args()
    if not _C.winograd_bf16_path(3, 3, 1, 1, 1, 1, 1, 32, 16):
        raise SystemExit("bf16 Winograd needs the AVX512-BF16 vector path (a CPU without AMX)")
    torch.manual_seed(0)
    print("| C | map | rank | batch | fp32 Winograd µs | bf16 direct µs | bf16 Winograd µs | ÷ fp32 Winograd "
          "| ÷ bf16 direct |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in a.batches:
        for c, hw, r in SHAPES:
            step = FusedConv2d(torch.randn(r, c, 3, 3), torch.randn(c), scale=torch.randn(c, r), stride=(1, 1),
                               padding=(1, 1), dilation=(1, 1), groups=1, activation="relu", num_threads=2)
            x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
            out = torch.empty(n, hw, hw, c)
            w16 = packed_bf16(step)
            ways = {"fp32": None, "direct": w16._replace(winograd=None), "winograd": w16}
            times: dict[str, list[float]] = {k: [] for k in ways}
            for k, w in list(ways.items()) * 3:  # warm
                step._bf16 = w
                step(x, out=out)
            for _ in range(20 if n > 1 else 200):
                for k, w in ways.items():
                    step._bf16 = w
                    t = time.perf_counter()
                    step(x, out=out)
                    times[k].append(time.perf_counter() - t)
            m = {k: statistics.median(v) * 1e6 for k, v in times.items()}
            print(f"| {c} | {hw} | {r} | {n} | {m['fp32']:.0f} | {m['direct']:.0f} | {m['winograd']:.0f} | "
                  f"{m['fp32'] / m['winograd']:.2f} | {m['direct'] / m['winograd']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
