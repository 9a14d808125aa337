"""What `compile(precision="bf16", max_error=...)` does to whole models: each model compiled at bf16
with the default bound (1e-2) and without one (max_error=None), or at the bounds --bounds names;
their relative errors against the pruned model in fp32 on the example input and on another random
input, the convs the bound moved (basis output as hi + lo, bf16 → fp32), the bf16 convs direct
rather than by Winograd (by timing or by the bound) and the compile times. The norm of the pruned
model's output on the example input is printed with each model: the relative error of any bf16
engine grows as that signal shrinks. With --vs-openvino, each plan is also timed against
OpenVINO bf16 on the same pruned model (basisrt bench's `ov_pruned_bf16` engine), all plans and
OpenVINO interleaved in the same rounds (basisrt bench's timing): OpenVINO's time ÷ the plan's,
median of the rounds' paired ratios, and OpenVINO's own error.

    PYTHONPATH=. python bench/bf16_error_bound.py [--models vgg16 resnet18] [--levels r25 r10] [--batches 1 32]
        [--bounds 1e-2 2e-2 none] [--vs-openvino [--rounds 11]]
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


def bound_arg(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def paired_vs_openvino(plans: dict, pruned: nn.Module, x: torch.Tensor, rounds: int) -> tuple[dict, float]:
    """OpenVINO bf16's time ÷ each plan's (median of paired rounds) and OpenVINO's relative error."""
    from basisrt.bench import engines as eng
    from basisrt.bench.timing import interleaved, paired_ratios
    ov = eng.build("ov_pruned_bf16", pruned, x, torch.get_num_threads())
    with torch.no_grad():
        ref = pruned(x).double()
        ov_err = rel(ov.output(), ref)
    fns = {"ov": ov.fn, **{k: (lambda c=c: c(x)) for k, c in plans.items()}}
    with torch.inference_mode():
        t = interleaved(fns, rounds=rounds, warmup=3, min_pass_s=0.05, settle_s=0.02)
    mid = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {k: mid(paired_ratios(t["ov"], t[k])) for k in plans}, ov_err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    ap.add_argument("--levels", nargs="+", default=["r25", "r10"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--bounds", nargs="+", type=bound_arg, default=[1e-2, None],
                    help="max_error values ('none': no bound)")
    ap.add_argument("--vs-openvino", action="store_true", help="time each plan against OpenVINO bf16, interleaved")
    ap.add_argument("--rounds", type=int, default=11, help="interleaved rounds with --vs-openvino")
    a = ap.parse_args()
    torch.set_num_threads(2)
    vs = " | OpenVINO bf16 ÷ plan, time (its error)" if a.vs_openvino else ""
    print("| model | level | batch | max_error | error (example) | error (other input) | bf16 hi + lo "
          f"| bf16 direct, not Winograd | bf16 → fp32 (all) | compile s{vs} |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if vs else ""))
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
                print(f"{name} {level} batch {batch}: output norm {ref.norm().item():.2e} (pruned, fp32)", flush=True)
                plans, rows = {}, {}
                for bound in a.bounds:
                    start = time.perf_counter()
                    c = basisrt.compile(pruned, x, precision="bf16", max_error=bound)
                    seconds = time.perf_counter() - start
                    steps = [m for m in c.module.modules() if isinstance(m, FusedConv2d)]
                    hilo = sum(m.rank > 0 and m.bf16_hilo and not m.prefer_fp32 for m in steps)
                    direct = sum(m.bf16_direct for m in steps)
                    fp32 = sum(m.prefer_fp32 for m in steps)
                    with torch.no_grad():
                        err, err_other = rel(c(x), ref), rel(c(other), ref_other)
                    plans[bound] = c
                    rows[bound] = (f"| {name} | {level} | {batch} | {bound} | {err:.1e} | {err_other:.1e} | {hilo} | "
                                   f"{direct} | {fp32} ({len(steps)}) | {seconds:.1f} |")
                    if not a.vs_openvino:
                        print(rows[bound], flush=True)
                if a.vs_openvino:
                    ratios, ov_err = paired_vs_openvino(plans, pruned, x, a.rounds)
                    for bound, row in rows.items():
                        print(f"{row} {ratios[bound]:.2f} ({ov_err:.1e}) |", flush=True)


if __name__ == "__main__":
    main()
