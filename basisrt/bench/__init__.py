"""The benchmark harness (DESIGN §3): real latency against nominal FLOP savings, engines in one run.

    basisrt bench --quick                      smoke run (under a minute)
    basisrt bench --out bench/full --results-md bench/RESULTS.md   the full run

Modules: `timing` (interleaved timer, median / p10 / p90, disturbance check), `engines` (what is
compared, with skip reasons), `roofline` (measured peak and bandwidth), `layers` (per-layer eager
timing), `runner` (the sweep), `report` (JSON / Markdown / PNG), `cli` (`basisrt bench`).
"""
from .runner import BenchConfig, run

__all__ = ["BenchConfig", "run"]
