"""The `basisrt` command line."""
from __future__ import annotations

import argparse
import importlib
import sys

import torch

from . import models
from .cost import profile
from .decomposition import decompose


# Modules that each define `add_subcommand(subparsers)` for their own `basisrt <command>`.
SUBCOMMAND_MODULES: tuple[str, ...] = ("basisrt.workflow", "basisrt.bench.cli")


def _demo(args: argparse.Namespace) -> int:
    """Decompose a built-in reference model and show its cost before and after."""
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
          "(full rank costs more; pruning basis vectors is what saves)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="basisrt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="decompose a built-in reference model and print its cost table")
    demo.add_argument("--model", default="vgg16", choices=sorted(models.REFERENCE_MODELS))
    demo.add_argument("--batch", type=int, default=1)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_subcommand(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
