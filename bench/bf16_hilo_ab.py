"""What rounding a pair's basis output to bf16 once is worth (csrc/amx_conv.cpp, `hilo`): the bf16
plan of each #19 model (autotune, no error bound), and the same plan with every pair's basis
output carried as bf16 hi + lo (`bf16_hilo`, the scaling GEMM's K twice as long), called in turn
on 2 threads. Prints each plan's median, the per-call speed ratio (median) and each plan's
relative error against the fp32 plan on the example input.

    PYTHONPATH=. python bench/bf16_hilo_ab.py [--models vgg16 resnet18] [--levels r10 r25] [--batches 1 32]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import basisrt
from basisrt import models
from basisrt.bench.runner import make_pruned
from basisrt.compiler.compiled import CompiledModel
from basisrt.compiler.cpu_steps import FusedConv2d
from basisrt.compiler.entry import _relative_error
from basisrt.decomposition import decompose


def with_hilo(c: CompiledModel) -> CompiledModel:
    """`c`'s plan with every pair's basis output as hi + lo."""
    gm = copy.deepcopy(c.module)
    for m in gm.modules():
        if isinstance(m, FusedConv2d) and m.rank:
            m.bf16_hilo = True
    return CompiledModel(gm, c.plan, c.input_shape, c.dtype, c.device, False, "bf16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    ap.add_argument("--levels", nargs="+", default=["r10", "r25"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    a = ap.parse_args()
    torch.set_num_threads(2)
    print("| model | rank | batch | hi alone ms | hi + lo ms | speed ratio | error: hi alone / hi + lo |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in a.models:
        torch.manual_seed(0)
        dense = getattr(models, name)().eval()
        first = next(n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d))  # as basisrt bench
        decomposed = decompose(dense, exclude=[first]).model
        for level in a.levels:
            pruned, _ = make_pruned(dense, decomposed, level, (3, 32, 32))
            for n in a.batches:
                x = torch.randn(n, 3, 32, 32)
                fp32 = basisrt.compile(pruned, x, autotune=True)
                hi = basisrt.compile(pruned, x, autotune=True, precision="bf16", max_error=None)
                hilo = with_hilo(hi)
                times: dict[str, list[float]] = {"hi": [], "hilo": []}
                with torch.inference_mode():
                    want = fp32(x)
                    err = {k: _relative_error(c(x), want) for k, c in (("hi", hi), ("hilo", hilo))}
                    for _ in range(40 if n == 1 else 8):
                        for k, c in (("hi", hi), ("hilo", hilo)):
                            t = time.perf_counter()
                            c(x)
                            times[k].append(time.perf_counter() - t)
                ratio = statistics.median(b / h for h, b in zip(times["hi"], times["hilo"]))
                print(f"| {name} | {level[1:]} % | {n} | {statistics.median(times['hi']) * 1e3:.3f} | "
                      f"{statistics.median(times['hilo']) * 1e3:.3f} | {ratio:.2f} | "
                      f"{err['hi']:.1e} / {err['hilo']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
