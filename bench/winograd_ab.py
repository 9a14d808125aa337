"""What the Winograd path of the basis pair is worth (csrc/winograd_conv.h), A/B in one process:
each model compiled twice, with its pairs' Winograd weights and without them
(BASISRT_NO_WINOGRAD=1 while the second compiles), timed in interleaved passes.

    PYTHONPATH=. python bench/winograd_ab.py [--models vgg16 resnet18] [--levels r10 r25] \
        [--batches 1 32] [--rounds 7] [--threads 2]

Models and levels are `basisrt bench`'s (every conv but the first decomposed, pruned to the
level's share of its rank, dense_backend="basisrt"). Prints, per cell, the median of the per-round
paired ratios (direct time ÷ Winograd time: above 1, Winograd is faster), its p10-p90, the number
of pairs that run by Winograd at that input size, and the two outputs' relative difference.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch
from torch import nn

import basisrt
from basisrt import models as model_zoo
from basisrt.bench.runner import make_pruned
from basisrt.bench.timing import interleaved, paired_ratios
from basisrt.compiler.cpu_steps import FusedConv2d


def compiled_pair(model: nn.Module, x: torch.Tensor) -> tuple[basisrt.CompiledModel, basisrt.CompiledModel]:
    with_w = basisrt.compile(model, x, dense_backend="basisrt")
    os.environ["BASISRT_NO_WINOGRAD"] = "1"
    try:
        without = basisrt.compile(model, x, dense_backend="basisrt")
    finally:
        del os.environ["BASISRT_NO_WINOGRAD"]
    return with_w, without


def winograd_steps(compiled: basisrt.CompiledModel, x: torch.Tensor) -> int:
    """Pairs with Winograd weights whose input map is large enough for them to run (16 tiles)."""
    sizes: dict[nn.Module, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: sizes.__setitem__(m, tuple(a[0].shape[-2:])))
             for m in compiled.module.modules() if isinstance(m, FusedConv2d) and m.winograd is not None]
    with torch.no_grad():
        compiled.module(x)
    for h in hooks:
        h.remove()
    tiles = lambda s: -(-s // 2)  # noqa: E731 - 2×2 output tiles of a 3×3 conv with padding 1
    return sum(tiles(h) * tiles(w) >= 16 for h, w in sizes.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    ap.add_argument("--levels", nargs="+", default=["r10", "r25"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print("| model | level | batch | direct ÷ Winograd (p10-p90) | Winograd ms | pairs by Winograd | rel. diff |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in a.models:
        torch.manual_seed(0)
        dense = model_zoo.create(name).eval()
        first = next(n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d))
        decomposed = basisrt.decompose(dense, exclude=[first]).model.eval()
        shape = model_zoo.input_shape(name)
        for level in a.levels:
            pruned, _ = make_pruned(dense, decomposed, level, shape)
            for batch in a.batches:
                x = torch.randn(batch, *shape)
                on, off = compiled_pair(pruned, x)
                with torch.no_grad():
                    y_on, y_off = on(x), off(x)
                    diff = ((y_on - y_off).norm() / y_off.norm()).item()
                    t = interleaved({"winograd": lambda: on(x), "direct": lambda: off(x)}, rounds=a.rounds,
                                    settle_s=0.02)
                ratios = sorted(paired_ratios(t["direct"], t["winograd"]))
                lo, hi = ratios[len(ratios) // 10], ratios[-1 - len(ratios) // 10]
                print(f"| {name} | {level} | {batch} | {statistics.median(ratios):.2f} ({lo:.2f}-{hi:.2f}) | "
                      f"{statistics.median(t['winograd'].clean()) * 1e3:.2f} | {winograd_steps(on, x)} | {diff:.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
