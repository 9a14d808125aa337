"""Paired A/B timing of two basisrt source trees (an old and a new build) on the same models.

Each round runs every cell (model, batch) once per tree, in alternating order, each in a fresh
process that imports basisrt from that tree (two builds of one package cannot share a process).
A process compiles the r10 model (every conv but the stem at 10 % of its rank, at the model's
input size, as `basisrt bench` prunes it; `compile` defaults, native plan), warms up, and reports the
median of its timed calls; the report gives, per cell, the median over rounds of each tree and
of the per-round ratio new / old. Run it alone on the machine.

    python bench/ab_compare.py --old /path/to/old/checkout --new . --rounds 6
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch, basisrt
name, batch, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
dense = basisrt.models.create(name).eval()
stem = next(n for n, m in dense.named_modules() if isinstance(m, torch.nn.Conv2d))  # kept whole, as the bench does
model = basisrt.decompose(dense, exclude=(stem,)).model
basisrt.prune_basis(model, "ratio", 0.1)
x = torch.randn(batch, *basisrt.models.input_shape(name))
compiled = basisrt.compile(model.eval(), x, num_threads=2)
for _ in range(max(3, calls // 5)):
    compiled(x)
times = []
for _ in range(calls):
    t = time.perf_counter()
    compiled(x)
    times.append(time.perf_counter() - t)
print(json.dumps({"median_ms": 1e3 * sorted(times)[len(times) // 2], "native": compiled.native is not None}))
"""


def run(root: str, name: str, batch: int, calls: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(batch), str(calls)], env=env, check=True,
                         capture_output=True, text=True, cwd=os.path.abspath(root)).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="source tree of the old build (its basisrt/_C built in place)")
    p.add_argument("--new", default=".", help="source tree of the new build")
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    cells = [(m, b) for m in args.models for b in args.batches]
    samples = {c: {"old": [], "new": []} for c in cells}
    for r in range(args.rounds):
        for cell in cells:
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for side in order:
                res = run(getattr(args, side), *cell, calls=200 if cell[1] == 1 else 30)
                assert res["native"], (side, cell)
                samples[cell][side].append(res["median_ms"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print("| model | batch | old ms | new ms | new / old (median of paired rounds) |")
    print("|---|---:|---:|---:|---:|")
    for (m, b), s in samples.items():
        ratio = statistics.median(n / o for n, o in zip(s["new"], s["old"]))
        print(f"| {m} | {b} | {statistics.median(s['old']):.3f} | {statistics.median(s['new']):.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
