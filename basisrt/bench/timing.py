"""Timing that holds on a shared, noisy machine (DESIGN §3).

* `Stats` / `summarize`: median with spread (p10 / p90, linear-interpolated percentiles as in
  `numpy.percentile`'s default), over the passes that were not disturbed.
* `interleaved`: warm-up, then many rounds in which every candidate runs one pass, in a rotating
  order, so slow drifts of the machine (another process starting, thermal or frequency changes)
  hit every candidate alike. A pass is `inner` calls timed together, with `inner` calibrated so a
  pass lasts at least `min_pass_s` (the timer's resolution and per-call jitter stay small).
* Disturbance check, per pass: the process's CPU time (all its threads) over the wall time of
  the pass is its CPU utilisation. A pass that got clearly less CPU than that candidate's usual
  (`< util_drop ×` its median utilisation) was preempted by another process; a pass slower than
  `spike ×` the median was hit by something else. Both are flagged and left out of the
  statistics (unless too few passes remain, which is flagged too). Per group, `ForeignLoad`
  measures how much CPU *other* processes used while we timed (Linux /proc/stat; the 1-minute
  load average elsewhere).
* `paired_ratios`: speedups are medians of per-round ratios `t_ref[r] / t_x[r]` of passes that
  ran next to each other, which cancels drifts a ratio of two medians would not.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) with linear interpolation between order statistics."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    s = sorted(samples)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Stats:
    """Summary of timing samples (seconds, or ratios)."""

    median: float
    p10: float
    p90: float
    mean: float
    min: float
    n: int

    @property
    def spread(self) -> float:
        """Relative spread (p90 − p10) / median."""
        return (self.p90 - self.p10) / self.median if self.median else math.inf

    def to_dict(self) -> dict:
        return {**asdict(self), "spread": self.spread}


def summarize(samples: Sequence[float]) -> Stats:
    """Median, p10, p90, mean, min and count of `samples`."""
    if not samples:
        raise ValueError("summarize needs at least one sample")
    return Stats(percentile(samples, 50), percentile(samples, 10), percentile(samples, 90),
                 sum(samples) / len(samples), min(samples), len(samples))


def flag_disturbed(walls: Sequence[float], cpus: Sequence[float], *, util_drop: float = 0.8,
                   spike: float = 2.0) -> list[str]:
    """Per pass: "" if clean, else why it looks disturbed ("preempted" / "spike")."""
    if len(walls) != len(cpus):
        raise ValueError("walls and cpus must have the same length")
    if not walls:
        return []
    utils = [c / w if w > 0 else 0.0 for w, c in zip(walls, cpus)]
    ref_util = percentile(utils, 50)
    ref_wall = percentile(walls, 50)
    flags = []
    for w, u in zip(walls, utils):
        if u < util_drop * ref_util:
            flags.append("preempted")
        elif w > spike * ref_wall:
            flags.append("spike")
        else:
            flags.append("")
    return flags


@dataclass
class Timing:
    """Passes of one candidate: per-call seconds per pass, CPU time per pass, flags."""

    name: str
    inner: int
    walls: list[float] = field(default_factory=list)  # seconds per call, one entry per pass
    cpus: list[float] = field(default_factory=list)  # process CPU seconds per call, per pass
    flags: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def disturbed(self) -> int:
        return sum(bool(f) for f in self.flags)

    def clean(self) -> list[float]:
        """Per-call seconds of the undisturbed passes (all passes if fewer than half are clean)."""
        good = [w for w, f in zip(self.walls, self.flags) if not f]
        return good if len(good) >= max(1, len(self.walls) // 2) else list(self.walls)

    @property
    def too_disturbed(self) -> bool:
        return len(self.walls) > 0 and len(self.clean()) == len(self.walls) and self.disturbed > 0

    def stats(self) -> Stats:
        return summarize(self.clean())

    def to_dict(self) -> dict:
        d = {"name": self.name, "inner": self.inner, "passes": len(self.walls), "disturbed": self.disturbed,
             "too_disturbed": self.too_disturbed, "walls": self.walls, "cpus": self.cpus, "flags": self.flags}
        if self.error:
            d["error"] = self.error
        elif self.walls:
            d["stats"] = self.stats().to_dict()
            d["cpu_util"] = percentile([c / w for w, c in zip(self.walls, self.cpus) if w > 0] or [0.0], 50)
        return d


class ForeignLoad:
    """CPU used by *other* processes while a block ran, in cores (Linux), else the load average."""

    def __init__(self) -> None:
        self.start_busy = _system_busy()
        self.start_own = time.process_time()
        self.start_wall = time.perf_counter()
        self.start_load = _loadavg()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.start_wall
        own = time.process_time() - self.start_own
        busy = _system_busy()
        out = {"wall_s": wall, "loadavg_1m": _loadavg(), "loadavg_1m_before": self.start_load,
               "cpu_count": os.cpu_count()}
        if busy is not None and self.start_busy is not None and wall > 0:
            others = max(0.0, (busy - self.start_busy) - own)
            out["foreign_cores"] = others / wall  # mean number of cores busy with other processes
        return out


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _system_busy() -> float | None:
    """Seconds of CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def calibrate(fn: Callable[[], object], min_pass_s: float, warmup: int) -> int:
    """Run `warmup` calls (at least one) and return how many calls make a pass of ≥ `min_pass_s`."""
    t = math.inf
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return max(1, math.ceil(min_pass_s / max(t, 1e-7)))


QUIET_CORES = 0.1  # the process's threads count as idle below this share of one core
QUIET_STEP_S = 0.005
QUIET_MAX_S = 1.0


def settle(min_s: float, quiet_cores: float = QUIET_CORES, max_s: float = QUIET_MAX_S) -> float:
    """Sleep at least `min_s`, then on until this process's own threads are idle (under
    `quiet_cores` of CPU over a 5 ms step: a thread pool that spins after its work has stopped),
    at most `max_s` in all. Returns the seconds slept. ONNX Runtime's workers kept one of two
    cores busy for about 40 ms after each run here, so a fixed 20 ms idle left the next engine's
    pass sharing its cores with them."""
    start = time.perf_counter()
    if min_s:
        time.sleep(min_s)
    while time.perf_counter() - start < max_s:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(QUIET_STEP_S)
        if (time.process_time() - c0) / max(time.perf_counter() - w0, 1e-9) < quiet_cores:
            break
    return time.perf_counter() - start


def interleaved(candidates: Mapping[str, Callable[[], object]], *, rounds: int, warmup: int = 3,
                min_pass_s: float = 0.01, progress: Callable[[int], None] | None = None,
                util_drop: float = 0.8, spike: float = 2.0, settle_s: float = 0.0) -> dict[str, Timing]:
    """Time every candidate in `rounds` interleaved passes (rotating order) after warm-up.

    At least `settle_s` of idle time, and then as long as this process's threads still use CPU
    (`settle`), precede each pass: thread pools that spin after their work (ONNX Runtime's,
    PyTorch's OpenMP workers) would otherwise run on the cores the next candidate's pass needs
    (measured: basisrt 12.3 ms alone beside eager, 14.3 ms after ONNX Runtime passes).

    A candidate that raises is reported with its error and takes no further part.
    `progress(n)` is called after every round with n = 1.
    """
    names = list(candidates)
    timings: dict[str, Timing] = {}
    for name in names:  # warm-up, interleaved too: every candidate warms in the same machine state
        try:
            timings[name] = Timing(name, calibrate(candidates[name], min_pass_s, warmup))
        except Exception as e:  # noqa: BLE001 - an engine failing at run time is a result, not a crash
            timings[name] = Timing(name, 0, error=f"{type(e).__name__}: {e}")
    live = [n for n in names if not timings[n].error]
    for r in range(rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for name in order:
            t = timings[name]
            if t.error:
                continue
            fn = candidates[name]
            if settle_s:
                settle(settle_s)
            try:
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(t.inner):
                    fn()
                w1, c1 = time.perf_counter(), time.process_time()
            except Exception as e:  # noqa: BLE001
                t.error = f"{type(e).__name__}: {e}"
                continue
            t.walls.append((w1 - w0) / t.inner)
            t.cpus.append((c1 - c0) / t.inner)
        if progress:
            progress(1)
    for t in timings.values():
        if t.walls:
            t.flags = flag_disturbed(t.walls, t.cpus, util_drop=util_drop, spike=spike)
    return timings


def paired_ratios(ref: Timing, other: Timing) -> list[float]:
    """`ref[r] / other[r]` for the rounds where both passes ran and neither was disturbed."""
    out = []
    for i in range(min(len(ref.walls), len(other.walls))):
        if ref.flags[i] or other.flags[i] or other.walls[i] <= 0:
            continue
        out.append(ref.walls[i] / other.walls[i])
    if len(out) < max(1, min(len(ref.walls), len(other.walls)) // 2):  # too disturbed: use every round
        out = [a / b for a, b in zip(ref.walls, other.walls) if b > 0]
    return out
