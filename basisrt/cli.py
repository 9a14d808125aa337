"""The `basisrt` command line."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections import Counter

import torch

from . import models
from .argtypes import CLIError, check, fraction, positive_int, seed, writable_dir
from .bench import engines as bench_engines
from .cost import profile
from .decomposition import decompose

# Modules that each define `add_subcommand(subparsers)` for their own `basisrt <command>`.
SUBCOMMAND_MODULES: tuple[str, ...] = ("basisrt.workflow", "basisrt.bench.cli", "basisrt.serve.cli")


def _check_demo(args: argparse.Namespace) -> None:
    if not args.no_bench:  # the benchmark's output directory matters only when it runs
        check("--out", writable_dir, args.out)


def _demo(args: argparse.Namespace) -> int:
    """The whole story on a built-in model: decompose → prune → compile → benchmark."""
    torch.manual_seed(args.seed)
    model = models.create(args.model).eval()
    x = torch.randn(args.batch, 3, 32, 32)
    dense = profile(model, x)
    report = decompose(model)
    basis = profile(report.model, x)
    with torch.no_grad():
        ref, out = model(x), report.model(x)
    err = ((out - ref).norm() / ref.norm()).item()
    print(f"# {args.model}: dense model\n{dense.table()}\n")
    print(f"# {args.model}: after basisrt.decompose (full rank)\n{report}\n\n{basis.table()}\n")
    print(f"full-rank decomposition error ‖out−ref‖/‖ref‖ = {err:.2e} (float32)")
    print(f"params {dense.params:,} -> {basis.params:,}; MACs {dense.macs / 1e6:.1f}M -> {basis.macs / 1e6:.1f}M "
          "(full rank costs more; pruning basis vectors is what saves)\n")
    if args.no_bench:
        return 0
    import copy

    import basisrt

    from .bench.report import realised_table, skipped_lines, write_all
    from .bench.runner import BenchConfig, run
    from .cost import nominal_speedup
    from .pruning import prune_basis

    level = f"ratio:{args.rank:g}"
    pruned = copy.deepcopy(report.model)
    prune_basis(pruned, "ratio", args.rank)
    cost = profile(pruned, x)
    print(f"# {args.model}: after basisrt.prune_basis(model, 'ratio', {args.rank:g})\n{cost.table()}\n")
    print(f"nominal speedup {nominal_speedup(dense, cost):.2f}x "
          f"({dense.macs / 1e6:.1f}M -> {cost.macs / 1e6:.1f}M MACs)")
    try:
        compiled = basisrt.compile(pruned, x, autotune=True)
    except (RuntimeError, ValueError, TypeError) as e:  # what compile raises for a model it cannot take
        raise CLIError(f"basisrt.compile cannot compile the pruned {args.model}: {type(e).__name__}: {e}",
                       code=1) from e
    with torch.no_grad():
        y, y_ref = compiled(x), pruned(x)
    steps = compiled.plan.steps
    chosen = dict(Counter(str(step.strategy) for step in steps))
    print(f"basisrt.compile: {len(steps)} steps {chosen}; ‖out−pruned‖/‖pruned‖ = "
          f"{((y - y_ref).norm() / y_ref.norm()).item():.2e}\n")
    engines = args.engines or ["eager_dense", "eager_dense_cl", "ort_dense", "basisrt_dense", "eager_pruned",
                               "eager_pruned_cl", "ort_pruned", "basisrt"]
    config = BenchConfig.quick_config(models=[args.model], levels=[level], batches=[args.bench_batch],
                                      engines=engines, seed=args.seed)
    config.layers = False
    print(f"# benchmark (quick, engines interleaved; batch {args.bench_batch}, 1 thread)")
    results = run(config, progress=not args.no_progress, command=f"basisrt demo --model {args.model}",
                  prepared={args.model: (model, report.model)})
    try:
        written = write_all(results, args.out)
    except OSError as e:
        raise CLIError(f"cannot write the benchmark results to {args.out}: {e}", code=1) from e
    print(realised_table(results))
    for line in skipped_lines(results):
        print(line)
    print(f"\nrealised = measured ÷ nominal speedup. Plot: {written.get('png', 'not written (matplotlib missing)')}; "
          f"report: {written['md']}; raw: {written['json']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="basisrt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="decompose, prune, compile and benchmark a built-in reference model")
    demo.add_argument("--model", default="vgg16", choices=sorted(models.REFERENCE_MODELS))
    demo.add_argument("--batch", type=positive_int, default=1)
    demo.add_argument("--seed", type=seed, default=0)
    demo.add_argument("--rank", type=fraction, default=0.1,
                      help="fraction of each layer's rank to keep, in (0, 1] (default 0.1)")
    demo.add_argument("--bench-batch", type=positive_int, default=8, help="batch size of the benchmark (default 8)")
    demo.add_argument("--engines", nargs="+", type=bench_engines.engine_arg, metavar="ENGINE",
                      help="benchmark engines (default: all but torch.compile, whose compile takes ~30 s; "
                           "see basisrt bench --help)")
    demo.add_argument("--out", default="bench/out", help="where the benchmark writes JSON, Markdown and plot")
    demo.add_argument("--no-bench", action="store_true", help="stop after the cost tables")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(run=_demo, check=_check_demo)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_subcommand(sub)
    args = parser.parse_args(argv)  # argparse reports a bad argument value itself (usage, error, exit 2)
    try:
        if getattr(args, "check", None):  # checks across arguments, before any work starts
            args.check(args)
        return args.run(args)
    except CLIError as e:  # a user-level failure: one line, no traceback
        message = " ".join(str(e).split())
        print(f"basisrt {args.command}: error: {message}", file=sys.stderr)
        sys.exit(e.code)


if __name__ == "__main__":
    sys.exit(main())
