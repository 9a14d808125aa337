"""What the native program's in-place rule is worth (`Program.in_place`: a conv writes its output
over a residual map that dies at it), A/B in one process on third-party models.

    PYTHONPATH=<dir with a basisrt symlink> /work/tvenv/bin/python bench/in_place_ab.py \
        [--models tv:resnet50 tv:resnet18 ...] [--size 224] [--rounds 8]

Each model is built as bench/model_survey.py builds it (random init, BatchNorm calibrated, every
conv / linear but the first decomposed and pruned to 10 % of its rank), compiled with
dense_backend="basisrt" (one native program), and run at batch 1 in rounds that alternate the rule
on and off (7 calls each after 3 warm-up calls): the median of the rounds' paired ratios, and the
arena each layout needs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import model_survey as ms  # noqa: E402
import torch  # noqa: E402

import basisrt  # noqa: E402


def ab(name: str, size: int, rounds: int) -> str:
    model = ms.build(name, size)
    ms.calibrate(model, size)
    x = torch.randn(1, 3, size, size)
    pruned = basisrt.decompose(model, exclude=(ms.first_conv(model, x),)).model.eval()
    basisrt.prune_basis(pruned, "ratio", 0.1)
    compiled = basisrt.compile(pruned, x, dense_backend="basisrt")
    if compiled.native is None:
        return f"{name}: not one native program"
    program, output = compiled.native.program, compiled.native.output.id
    times: dict[bool, list[float]] = {True: [], False: []}
    arena_mb = {}
    for _ in range(rounds):
        for on in (True, False):
            program.in_place = on
            arena_mb[on] = program.arena_floats(1, [output], torch.get_num_threads()) * 4 / 1e6
            for _ in range(3):
                compiled(x)
            samples = []
            for _ in range(7):
                t = time.perf_counter()
                compiled(x)
                samples.append(time.perf_counter() - t)
            times[on].append(statistics.median(samples))
    program.in_place = True
    ratios = [off / on for on, off in zip(times[True], times[False])]
    return (f"{name}: in place {statistics.median(times[True]) * 1e3:.2f} ms, apart "
            f"{statistics.median(times[False]) * 1e3:.2f} ms, apart / in place {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}); arena {arena_mb[True]:.1f} against {arena_mb[False]:.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tv:resnet50", "tv:convnext_tiny", "tv:resnet18",
                                                    "tv:mobilenet_v2", "tv:regnet_y_400mf"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for name in a.models:
        print(ab(name, a.size, a.rounds), flush=True)


if __name__ == "__main__":
    main()
