"""The machine's measured roofline: peak GFLOP/s (large float32 matmuls, and bf16 ones: AMX tiles
through oneDNN where the CPU has them) and memory bandwidth (a large copy), per thread count, and
the bound they put on a layer.

A layer doing `macs` multiply-adds (2 FLOPs each) and moving `bytes` to and from memory can run
no faster than `max(2·macs / peak, bytes / bandwidth)`; its attainable rate is
`min(peak, intensity · bandwidth)` with arithmetic intensity `2·macs / bytes`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class Roofline:
    threads: int
    peak_gflops: float
    bandwidth_gbs: float
    matmul_n: int
    copy_mb: float
    peak_bf16_gflops: float = 0.0  # 0: not measured (results of older runs)

    def bf16(self) -> "Roofline":
        """The same machine for bf16 layers: the bf16 matmul peak (the fp32 one if not measured)."""
        return Roofline(self.threads, self.peak_bf16_gflops or self.peak_gflops, self.bandwidth_gbs, self.matmul_n,
                        self.copy_mb, self.peak_bf16_gflops)

    def bound_s(self, macs: int, nbytes: int) -> float:
        """Fastest possible time (seconds) of a layer with `macs` MACs moving `nbytes` bytes."""
        return max(2 * macs / (self.peak_gflops * 1e9), nbytes / (self.bandwidth_gbs * 1e9))

    def attainable_gflops(self, macs: int, nbytes: int) -> float:
        """min(peak, intensity × bandwidth) for the layer."""
        if nbytes <= 0:
            return self.peak_gflops
        return min(self.peak_gflops, 2 * macs / nbytes * self.bandwidth_gbs)

    def to_dict(self) -> dict:
        return asdict(self)


def _best(fn, repeats: int) -> float:
    fn()  # warm-up (allocation, first-touch, BLAS thread start)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def measure(threads: int, *, matmul_n: int = 2048, copy_mb: float = 128.0, repeats: int = 10) -> Roofline:
    """Measure peak GFLOP/s and copy bandwidth with `threads` intra-op threads (best of `repeats`).

    The best pass, not the median, because a peak is what the machine can do when undisturbed.
    Copy bandwidth counts the bytes read plus the bytes written.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        peaks = {torch.float32: 0.0, torch.bfloat16: 0.0}
        for dtype in peaks:
            for n in (matmul_n // 2, matmul_n):  # the better of two sizes: small fits cache, large amortises
                a = torch.randn(n, n, generator=g).to(dtype)
                b = torch.randn(n, n, generator=g).to(dtype)
                c = torch.empty(n, n, dtype=dtype)
                t = _best(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), repeats)
                peaks[dtype] = max(peaks[dtype], 2 * n ** 3 / t / 1e9)
                del a, b, c
        n = int(copy_mb * 2 ** 20 / 4)
        src = torch.randn(n, generator=g)
        dst = torch.empty_like(src)
        t_cp = _best(lambda: dst.copy_(src), repeats)
    finally:
        torch.set_num_threads(prev)
    return Roofline(threads, peaks[torch.float32], 2 * n * 4 / t_cp / 1e9, matmul_n, copy_mb, peaks[torch.bfloat16])
