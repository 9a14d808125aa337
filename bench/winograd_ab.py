"""What the Winograd path of the basis pair is worth (csrc/winograd_conv.h), A/B in one process:
each model compiled twice, as compile does (each Winograd pair timed against its direct path,
kept where faster) and without Winograd weights (BASISRT_NO_WINOGRAD=1 while the second compiles),
timed in interleaved passes.

    PYTHONPATH=. python bench/winograd_ab.py [--models vgg16 resnet18] [--levels r10 r25] \
        [--batches 1 32] [--rounds 7] [--threads 2]
    PYTHONPATH=<dir with a basisrt symlink> /work/tvenv/bin/python bench/winograd_ab.py \
        --models tv:resnet50 tv:resnet18 --size 224 --levels r10 --batches 1

Models and levels are `basisrt bench`'s (every conv but the first decomposed, pruned to the
level's share of its rank, dense_backend="basisrt"); a `SOURCE:NAME` model (tv:, timm:, ...) is
built and calibrated as bench/model_survey.py builds it, at --size. Prints, per cell, the median of the per-round
paired ratios (direct time ÷ Winograd time: above 1, Winograd is faster), its p10-p90, how many
pairs kept their Winograd weights, and the two outputs' relative difference.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

import basisrt
from basisrt import models as model_zoo
from basisrt.bench.runner import make_pruned
from basisrt.bench.timing import interleaved, paired_ratios
from basisrt.compiler.cpu_steps import FusedConv2d

sys.path.insert(0, str(Path(__file__).resolve().parent))  # model_survey, for SOURCE:NAME models


def compiled_pair(model: nn.Module, x: torch.Tensor) -> tuple[basisrt.CompiledModel, basisrt.CompiledModel]:
    with_w = basisrt.compile(model, x, dense_backend="basisrt")
    os.environ["BASISRT_NO_WINOGRAD"] = "1"
    try:
        without = basisrt.compile(model, x, dense_backend="basisrt")
    finally:
        del os.environ["BASISRT_NO_WINOGRAD"]
    return with_w, without


def winograd_steps(compiled: basisrt.CompiledModel) -> str:
    """Pairs that kept their Winograd weights at compile, of those that had them."""
    steps = [m for m in compiled.module.modules() if isinstance(m, FusedConv2d)]
    kept = sum(m.winograd is not None for m in steps)
    return f"{kept} of {kept + sum(m.prefer_direct for m in steps)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    ap.add_argument("--levels", nargs="+", default=["r10", "r25"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224, help="input size of SOURCE:NAME models")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print("| model | level | batch | direct ÷ Winograd (p10-p90) | Winograd ms | pairs by Winograd | rel. diff |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in a.models:
        torch.manual_seed(0)
        if ":" in name:  # a third-party model, as the survey builds it
            import model_survey as ms
            dense, shape = ms.build(name, a.size), (3, a.size, a.size)
            ms.calibrate(dense, a.size)
        else:
            dense, shape = model_zoo.create(name).eval(), model_zoo.input_shape(name)
        first = (ms.first_conv(dense, torch.randn(1, *shape)) if ":" in name
                 else next(n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)))
        decomposed = basisrt.decompose(dense, exclude=[first]).model.eval()
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
                      f"{statistics.median(t['winograd'].clean()) * 1e3:.2f} | {winograd_steps(on)} | {diff:.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
