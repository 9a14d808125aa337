"""`basisrt bench`: the benchmark harness from the command line."""
from __future__ import annotations

import argparse
import shlex
import sys

from .. import models
from ..argtypes import (
    ArgumentTypeError,
    CLIError,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    seed,
    writable_dir,
    writable_file,
)
from . import engines as eng


def level(text: str) -> str:
    """Type: a pruning level `basisrt bench` can make (see runner.parse_level); returned unchanged."""
    from .runner import LEVEL_ALIASES, parse_level
    method, sep, amount = text.partition(":")
    if text not in LEVEL_ALIASES and text not in ("paper", "double"):
        if not sep or method not in ("ratio", "energy"):
            raise ArgumentTypeError(f"unknown pruning level {text!r}: use {', '.join(LEVEL_ALIASES)}, ratio:F, "
                                    "energy:F (F in (0, 1]), paper or double")
        try:
            fraction(amount)
        except ArgumentTypeError:
            raise ArgumentTypeError(f"pruning level {text!r}: the amount after {method}: must be a number in (0, 1]"
                                    ) from None
    try:
        parse_level(text)
    except ValueError as e:
        raise ArgumentTypeError(str(e).replace("%%", "%")) from None
    return text


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark real latency against nominal FLOP savings (engines interleaved)",
        description="Models × pruning levels × batch sizes × threads × engines, timed interleaved; writes "
                    "results.json, results.md and speedup.png into --out.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: vgg16, r10, batch 8, 1 thread, few passes (under a minute)")
    p.add_argument("--models", nargs="+", choices=sorted(models.all_models()), metavar="MODEL",
                   help=f"reference models (default: all of them; quick: vgg16): "
                        f"{', '.join(sorted(models.REFERENCE_MODELS))}; or real-model architectures written as "
                        "their libraries write them (basisrt.zoo): "
                        f"{', '.join(sorted(models.all_models().keys() - models.REFERENCE_MODELS.keys()))}")
    p.add_argument("--levels", nargs="+", type=level, metavar="LEVEL",
                   help="pruning levels (default: r50 r25 r10 paper double; quick: r10): "
                        "r50, r25, r10, ratio:F, energy:F (F in (0, 1]), paper, double")
    p.add_argument("--batches", nargs="+", type=positive_int, metavar="N",
                   help="batch sizes (default: 1 32; quick: 8)")
    p.add_argument("--threads", nargs="+", type=positive_int, metavar="T",
                   help="intra-op thread counts (default: 1 and all cores; quick: 1)")
    p.add_argument("--engines", nargs="+", type=eng.engine_arg, metavar="ENGINE",
                   help=f"engines (default: all): {', '.join(eng.ENGINES)}")
    p.add_argument("--rounds", type=positive_int,
                   help="timed interleaved rounds per configuration (default 30; quick 7)")
    p.add_argument("--warmup", type=nonnegative_int, help="warm-up calls per engine (default 5; quick 1)")
    p.add_argument("--min-pass-ms", type=nonnegative_float,
                   help="shortest timed pass; short calls repeat within a pass (default 50; quick 0)")
    p.add_argument("--settle-ms", type=nonnegative_float,
                   help="idle time before each timed pass, so thread pools that spin after their work "
                        "(ONNX Runtime, OpenMP) do not run into the next engine's pass (default 20)")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer timing")
    p.add_argument("--layer-batch", type=positive_int,
                   help="batch size of the per-layer timing, one of --batches (default: the largest)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", type=writable_dir, default="bench/out", help="output directory (default bench/out)")
    p.add_argument("--results-md", type=writable_file,
                   help="also write the Markdown report here (e.g. bench/RESULTS.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run, check=_check)


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


def _check(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    if args.layer_batch is not None and config.layers and args.layer_batch not in config.batches:
        raise CLIError(f"argument --layer-batch: {args.layer_batch} is not one of the benchmark's batch sizes "
                       f"({' '.join(map(str, config.batches))})")


def _run(args: argparse.Namespace) -> int:
    from .report import realised_table, skipped_lines, write_all
    from .runner import run
    config = config_from_args(args)
    command = "basisrt " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    if not command:
        command = "basisrt bench" + (" --quick" if args.quick else "")
    results = run(config, progress=not args.no_progress, command=command)
    try:
        written = write_all(results, args.out, args.results_md)
    except OSError as e:
        raise CLIError(f"cannot write the benchmark results: {e}", code=1) from e
    print(realised_table(results))
    for line in skipped_lines(results):
        print(line)
    print("\nwritten: " + ", ".join(f"{k} {v}" for k, v in written.items()))
    return 0
