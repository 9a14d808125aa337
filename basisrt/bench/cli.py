"""`basisrt bench`: the benchmark harness from the command line."""
from __future__ import annotations

import argparse
import shlex
import sys

from .. import models
from . import engines as eng


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark real latency against nominal FLOP savings (engines interleaved)",
        description="Models × pruning levels × batch sizes × threads × engines, timed interleaved; writes "
                    "results.json, results.md and speedup.png into --out.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: vgg16, r10, batch 8, 1 thread, few passes (under a minute)")
    p.add_argument("--models", nargs="+", choices=sorted(models.REFERENCE_MODELS), metavar="MODEL",
                   help=f"reference models (default: all; quick: vgg16): {', '.join(sorted(models.REFERENCE_MODELS))}")
    p.add_argument("--levels", nargs="+", metavar="LEVEL",
                   help="pruning levels (default: r50 r25 r10 paper double; quick: r10): "
                        "rNN, ratio:F, energy:F, paper, double")
    p.add_argument("--batches", nargs="+", type=int, metavar="N", help="batch sizes (default: 1 32; quick: 8)")
    p.add_argument("--threads", nargs="+", type=int, metavar="T",
                   help="intra-op thread counts (default: 1 and all cores; quick: 1)")
    p.add_argument("--engines", nargs="+", choices=eng.ENGINES, metavar="ENGINE",
                   help=f"engines (default: all): {', '.join(eng.ENGINES)}")
    p.add_argument("--rounds", type=int, help="timed interleaved rounds per configuration (default 30; quick 7)")
    p.add_argument("--warmup", type=int, help="warm-up calls per engine (default 5; quick 1)")
    p.add_argument("--min-pass-ms", type=float, help="shortest timed pass; short calls repeat within a pass "
                                                      "(default 50; quick 0)")
    p.add_argument("--settle-ms", type=float, help="idle time before each timed pass, so thread pools that spin "
                   "after their work (ONNX Runtime, OpenMP) do not run into the next engine's pass (default 20)")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer timing")
    p.add_argument("--layer-batch", type=int, help="batch size of the per-layer timing (default: the largest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/out", help="output directory (default bench/out)")
    p.add_argument("--results-md", help="also write the Markdown report here (e.g. bench/RESULTS.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run)


def config_from_args(args: argparse.Namespace):
    from .runner import BenchConfig
    given = {"models": args.models, "levels": args.levels, "batches": args.batches, "threads": args.threads,
             "engines": args.engines, "rounds": args.rounds, "warmup": args.warmup,
             "min_pass_s": None if args.min_pass_ms is None else args.min_pass_ms / 1e3,
             "settle_s": None if args.settle_ms is None else args.settle_ms / 1e3,
             "layer_batch": args.layer_batch, "seed": args.seed}
    if args.no_layers:
        given["layers"] = False
    if args.quick:
        return BenchConfig.quick_config(**given)
    return BenchConfig(**{k: v for k, v in given.items() if v is not None})


def _run(args: argparse.Namespace) -> int:
    from .report import realised_table, skipped_lines, write_all
    from .runner import run
    config = config_from_args(args)
    command = "basisrt " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    if not command:
        command = "basisrt bench" + (" --quick" if args.quick else "")
    results = run(config, progress=not args.no_progress, command=command)
    written = write_all(results, args.out, args.results_md)
    print(realised_table(results))
    for line in skipped_lines(results):
        print(line)
    print("\nwritten: " + ", ".join(f"{k} {v}" for k, v in written.items()))
    return 0
