"""Benchmark statistics and bookkeeping on synthetic samples (no timing assertions)."""
import math

import numpy as np
import pytest
import torch

from basisrt.bench import engines as eng
from basisrt.bench.report import flags, skipped_lines
from basisrt.bench.roofline import Roofline
from basisrt.bench.runner import parse_level
from basisrt.bench.timing import (
    QUIET_CORES,
    Timing,
    flag_disturbed,
    interleaved,
    paired_ratios,
    percentile,
    settle,
    summarize,
)


@pytest.mark.parametrize("q", [0, 10, 25, 50, 90, 100])
def test_percentile_matches_numpy_linear(q):
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 30):
        xs = rng.exponential(size=n).tolist()
        assert percentile(xs, q) == pytest.approx(np.percentile(xs, q))


def test_summarize_and_spread():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.min, s.n, s.mean) == (3.0, 1.0, 5, 3.0)
    assert s.p10 == pytest.approx(1.4) and s.p90 == pytest.approx(4.6)
    assert s.spread == pytest.approx((4.6 - 1.4) / 3.0)
    with pytest.raises(ValueError):
        summarize([])


def test_disturbed_passes_are_flagged_and_left_out():
    walls = [1.0] * 8 + [1.5, 5.0]
    cpus = [1.0] * 8 + [0.5, 5.0]  # pass 8 got half the CPU it needed: preempted; pass 9 is a spike
    f = flag_disturbed(walls, cpus)
    assert f[:8] == [""] * 8 and f[8] == "preempted" and f[9] == "spike"
    t = Timing("x", 1, walls, cpus, f)
    assert t.disturbed == 2 and t.clean() == [1.0] * 8 and not t.too_disturbed
    assert t.stats().median == 1.0
    # most passes disturbed: keep them all, and say so
    t2 = Timing("y", 1, [1.0, 3.0, 3.0, 3.0], [1.0] * 4, ["", "spike", "spike", "spike"])
    assert t2.clean() == t2.walls and t2.too_disturbed


def test_paired_ratios_skip_disturbed_rounds():
    ref = Timing("ref", 1, [2.0, 2.0, 4.0, 2.0], [0] * 4, ["", "", "spike", ""])
    x = Timing("x", 1, [1.0, 0.5, 1.0, 1.0], [0] * 4, ["", "", "", ""])
    assert paired_ratios(ref, x) == [2.0, 4.0, 2.0]


def test_interleaved_rotates_order_and_reports_errors():
    calls = []

    def make(name):
        return lambda: calls.append(name)

    def boom():
        raise RuntimeError("no")

    t = interleaved({"a": make("a"), "b": make("b"), "c": make("c"), "bad": boom}, rounds=3, warmup=1,
                    min_pass_s=0.0)
    timed = calls[3:]  # after one warm-up call each
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(t[n].walls) == 3 for n in "abc")
    assert t["bad"].error.startswith("RuntimeError") and not t["bad"].walls
    assert "stats" in t["a"].to_dict() and "error" in t["bad"].to_dict()


def test_roofline_bound():
    r = Roofline(1, peak_gflops=100.0, bandwidth_gbs=10.0, matmul_n=1, copy_mb=1)
    assert r.bound_s(50_000_000, 1_000) == pytest.approx(1e-3)  # compute bound: 0.1 GFLOP at 100 GFLOP/s
    assert r.bound_s(1, 10_000_000) == pytest.approx(1e-3)  # memory bound: 10 MB at 10 GB/s
    assert r.attainable_gflops(1_000, 1_000) == pytest.approx(20.0)  # intensity 2 flop/byte
    assert r.attainable_gflops(10 ** 9, 1) == 100.0


def test_levels_and_engine_names():
    assert parse_level("r10") == ("ratio", 0.1) and parse_level("energy:0.9") == ("energy", 0.9)
    assert parse_level("paper") == ("paper", 0.9)
    for bad in ("r11", "ratio:0", "ratio:2", "foo"):
        with pytest.raises(ValueError):
            parse_level(bad)
    assert eng.group_of("eager_dense_cl") == "dense" and eng.group_of("basisrt") == "pruned"
    assert eng.kind_of("eager_pruned_cl") == "eager_cl" and eng.kind_of("ort_dense") == "ort"
    assert eng.kind_of("gpu_eager_pruned") == "gpu_eager" and eng.group_of("gpu_eager_dense") == "dense"
    assert eng.device_of("gpu_basisrt_graph") == "cuda" and eng.device_of("basisrt") == "cpu"
    assert set(eng.REFERENCES.values()) <= set(eng.DENSE_ENGINES)


def test_gpu_engines_compare_in_full_fp32():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with pytest.raises(KeyError), eng.full_fp32_on_gpu():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            raise KeyError  # restored on the way out of an error too
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_report_flags_and_skips():
    group = {"engines": {"e": {"disturbed": 2, "passes": 10, "info": {"rel_err": 0.5}}},
             "speedups": {"e": {"vs_eager_dense": {"spread": 0.6}}}, "load": {"foreign_cores": 1.2}}
    f = " ".join(flags(group, "e"))
    assert "disturbed 2/10" in f and "noisy" in f and "busy" in f and "WRONG OUTPUT" in f
    results = {"engine_status": {"gpu_basisrt": {"k": "skipped: no CUDA device"}, "eager_dense": {"k": "ok"}},
               "config": {"engines": ["eager_dense", "gpu_basisrt", "ort_pruned"]},
               "skipped_levels": {"m": {"paper": "why"}}}
    lines = "\n".join(skipped_lines(results))
    assert "`gpu_basisrt`: skipped: no CUDA device" in lines
    assert "`ort_pruned`: not run" in lines and "`paper` on m: why" in lines and "eager_dense" not in lines
    assert not math.isnan(1.0)


def test_interleaved_leaves_idle_time_before_each_pass():
    import time as _time

    stamps = {"a": [], "b": []}
    fns = {k: (lambda k=k: stamps[k].append(_time.perf_counter())) for k in stamps}
    interleaved(fns, rounds=4, warmup=1, min_pass_s=0.0, settle_s=0.01)
    calls = sorted((t, k) for k, ts in stamps.items() for t in ts[1:])  # timed calls (after warm-up)
    gaps = [b[0] - a[0] for a, b in zip(calls, calls[1:])]
    assert len(calls) == 8 and min(gaps) >= 0.01


def test_settle_waits_for_a_spinning_thread_of_this_process():
    """A thread still spinning after its work (as ONNX Runtime's workers do for ~40 ms) holds the
    next pass back until it stops; an idle process waits only the minimum."""
    import threading
    import time as _time

    assert settle(0.01) < 0.1
    stop = _time.perf_counter() + 0.15
    share = []

    def spin():
        c0, w0 = _time.thread_time(), _time.perf_counter()
        while _time.perf_counter() < stop:
            pass
        share.append((_time.thread_time() - c0) / (_time.perf_counter() - w0))

    t = threading.Thread(target=spin)
    t.start()
    waited = settle(0.01)
    t.join()
    if share[0] < 2 * QUIET_CORES:  # other processes kept the spinner off the cores: it did not look busy
        pytest.skip(f"the machine is too busy for this check: the spinning thread got {share[0]:.2f} of a core")
    assert 0.12 < waited < 0.6
    assert settle(0.0, max_s=0.05) < 0.2  # capped
