"""One conv step at fp32 and at bf16 (AMX), for the table in bench/RESULTS.md (issue #19).
Run alone, on a CPU with AMX: `python bench/bf16_step_micro.py`."""
import time

import numpy as np
import torch

from basisrt import _C
from basisrt.compiler.bf16 import packed_bf16
from basisrt.compiler.cpu_steps import FusedConv2d

# (C_in, C_out, H = W, rank (0: dense), batch)
LAYERS = [(64, 64, 56, 6, 1), (64, 64, 56, 16, 1), (256, 256, 28, 26, 1), (256, 256, 28, 64, 1),
          (512, 512, 14, 51, 1), (512, 512, 14, 128, 1), (256, 256, 28, 0, 1), (256, 256, 28, 64, 8),
          (512, 512, 14, 128, 8),
          (3, 64, 32, 0, 1), (3, 64, 32, 0, 32), (3, 64, 224, 0, 1)]  # RGB stems: compact K (27 -> 32)


def median_s(step, x, reps: int = 30) -> float:
    for _ in range(3):
        step(x)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    if not _C.amx_bf16_available():
        raise SystemExit("this CPU (or OS) has no AMX-BF16 tiles")
    torch.manual_seed(0)
    print("| layer | fp32 | bf16 | speedup | rel. error |\n|---|---:|---:|---:|---:|")
    for cin, cout, hw, rank, n in LAYERS:
        w = torch.randn(rank or cout, cin, 3, 3) * 0.05
        scale = torch.randn(cout, rank) * 0.1 if rank else None
        step = FusedConv2d(w, torch.randn(cout), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                           scale=scale, activation="relu", num_threads=2)
        x = torch.randn(n, cin, hw, hw).contiguous(memory_format=torch.channels_last)
        t32, y32 = median_s(step, x), step(x)
        step._bf16 = packed_bf16(step)
        t16, y16 = median_s(step, x), step(x)
        err = ((y16 - y32).norm() / y32.norm()).item()
        kind = f"rank {rank}" if rank else "dense"
        print(f"| {cin}→{cout} at {hw}×{hw}, {kind}, batch {n} | {t32 * 1e3:.3f} ms | {t16 * 1e3:.3f} ms | "
              f"{t32 / t16:.2f}× | {err:.1e} |")


if __name__ == "__main__":
    main()
