"""Latency of a compiled plan at 1 and 2 threads, on a quiet machine and with another process
keeping one core busy (issue 4: 2-thread latency should stay within 2× of 1-thread).

    python bench/busy_neighbour.py [--model resnet18] [--ratio 0.1] [--batch 1]
"""
import argparse
import subprocess
import sys
import time

import torch

import basisrt
from basisrt.bench.timing import summarize


def median_ms(fn, x, n: int = 30) -> float:
    fn(x)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn(x)
        samples.append(time.perf_counter() - t)
    return summarize(samples).median * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    torch.manual_seed(0)
    model = basisrt.decompose(basisrt.models.create(a.model).eval()).model
    basisrt.prune_basis(model, "ratio", a.ratio)
    x = torch.randn(a.batch, 3, 32, 32)
    plans = {n: basisrt.compile(model, x, num_threads=n) for n in (1, 2)}
    quiet = {n: median_ms(c, x) for n, c in plans.items()}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = {n: median_ms(c, x) for n, c in plans.items()}
    finally:
        hog.kill()
    for label, r in (("quiet", quiet), ("busy neighbour", busy)):
        print(f"{label:<15} 1 thread {r[1]:.2f} ms, 2 threads {r[2]:.2f} ms, ratio {r[2] / r[1]:.2f}")


if __name__ == "__main__":
    main()
