"""Unpruned (dense) models: `basisrt.compile` against eager PyTorch (oneDNN) in one process.

For each model and batch: eager, `compile(..., dense_backend="basisrt")` (our kernels only) and the
default compile (`"auto"`: oneDNN steps, or the all-ours native plan where that is faster),
interleaved for --rounds rounds; prints eager ÷ each (the median of the per-round ratios), whether
the plan is native, and the relative error against eager. Run alone:

    PYTHONPATH=. python bench/dense_vs_eager.py [--models resnet18 vgg16 tv:resnet50] [--batches 1 32]

`NAME` is one of basisrt.models (CIFAR-sized inputs); `tv:NAME` is torchvision's (weights=None,
224×224; needs torchvision installed).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import basisrt


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name.startswith("tv:"):
        import torchvision
        return torchvision.models.get_model(name[3:], weights=None).eval(), (3, 224, 224)
    return basisrt.models.create(name).eval(), tuple(basisrt.models.input_shape(name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | batch | ours only | native | default | native | rel err |")
    print("| --- | ---: | ---: | --- | ---: | --- | ---: |")
    for name in args.models:
        model, shape = build(name)
        for batch in args.batches:
            x = torch.randn(batch, *shape)
            with torch.no_grad():
                engines = {"eager": model, "ours": basisrt.compile(model, x, dense_backend="basisrt"),
                           "auto": basisrt.compile(model, x)}
                ref = model(x)
                err = max(((engines[k](x) - ref).norm() / ref.norm()).item() for k in ("ours", "auto"))
                times: dict[str, list[float]] = {k: [] for k in engines}
                for _ in range(args.rounds):
                    for k, f in engines.items():
                        f(x)
                        t = time.perf_counter()
                        f(x)
                        f(x)
                        times[k].append((time.perf_counter() - t) / 2)
            speed = {k: statistics.median(e / t for e, t in zip(times["eager"], times[k])) for k in ("ours", "auto")}
            native = {k: "yes" if engines[k].native is not None else "no" for k in ("ours", "auto")}
            print(f"| {name} | {batch} | {speed['ours']:.2f}× | {native['ours']} | {speed['auto']:.2f}× | "
                  f"{native['auto']} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
