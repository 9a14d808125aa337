"""What `compile(precision="bf16", max_error=...)` does to whole models: each model compiled at bf16
with the default bound (1e-2) and without one (max_error=None); their relative errors against
the pruned model in fp32 on the example input and on another random input, the convs the bound
moved (basis output as hi + lo, bf16 → fp32), the bf16 convs direct rather than by Winograd (by
timing or by the bound) and the compile times.

    PYTHONPATH=. python bench/bf16_error_bound.py [--models vgg16 resnet18] [--levels r25 r10] [--batches 1 32]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import basisrt
from basisrt import models as model_zoo
from basisrt.bench.runner import make_pruned
from basisrt.compiler.cpu_steps import FusedConv2d


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    ap.add_argument("--levels", nargs="+", default=["r25", "r10"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    a = ap.parse_args()
    torch.set_num_threads(2)
    print("| model | level | batch | max_error | error (example) | error (other input) | bf16 hi + lo "
          "| bf16 direct, not Winograd | bf16 → fp32 (all) | compile s |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in a.models:
        torch.manual_seed(0)
        dense, shape = model_zoo.create(name).eval(), model_zoo.input_shape(name)
        first = next(n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d))
        decomposed = basisrt.decompose(dense, exclude=[first]).model.eval()
        for level in a.levels:
            pruned, _ = make_pruned(dense, decomposed, level, shape)
            for batch in a.batches:
                x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
                other = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch + 1000))
                with torch.no_grad():
                    ref, ref_other = pruned(x).double(), pruned(other).double()
                for bound in (1e-2, None):
                    start = time.perf_counter()
                    c = basisrt.compile(pruned, x, precision="bf16", max_error=bound)
                    seconds = time.perf_counter() - start
                    steps = [m for m in c.module.modules() if isinstance(m, FusedConv2d)]
                    hilo = sum(m.rank > 0 and m.bf16_hilo and not m.prefer_fp32 for m in steps)
                    direct = sum(m.bf16_direct for m in steps)
                    fp32 = sum(m.prefer_fp32 for m in steps)
                    with torch.no_grad():
                        err, err_other = rel(c(x), ref), rel(c(other), ref_other)
                    print(f"| {name} | {level} | {batch} | {bound} | {err:.1e} | {err_other:.1e} | {hilo} | {direct} | "
                          f"{fp32} ({len(steps)}) | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
