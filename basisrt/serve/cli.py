"""`basisrt serve PLAN...`: saved plans behind HTTP (Open Inference Protocol v2)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..argtypes import (
    CLIError,
    int_range,
    nonnegative_float,
    positive_float,
    positive_int,
)


def _run(args: argparse.Namespace) -> int:
    try:
        from .app import ServeConfig, model_names
        from .server import serve
    except ImportError as e:
        raise CLIError(f"{e.name} is not installed; pip install 'basisrt[serve]'") from None
    try:
        models = model_names(args.plans)
    except ValueError as e:
        raise CLIError(str(e)) from None
    for name, path in models.items():
        if not Path(path).is_file():
            raise CLIError(f"model {name}: no plan file at {path}")
    config = ServeConfig(models, args.max_batch_size, args.max_delay_ms, args.max_queue, args.timeout_ms,
                         args.max_body_mb, args.threads, args.grace_s, args.keep_alive_s, args.precision)
    if args.ray:
        try:
            from .ray import run as run_on_ray
        except ImportError as e:
            raise CLIError(f"{e.name} is not installed; pip install 'basisrt[ray]'") from None
        config.models = {name: str(Path(path).resolve()) for name, path in config.models.items()}
        return run_on_ray(config, args.host, args.port, args.replicas)
    return serve(config, args.host, args.port, args.log_level)


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve saved plans over HTTP (Open Inference Protocol v2) with dynamic batching",
        description="Serve plans saved by CompiledModel.save over HTTP: KServe v2 / Triton protocol (JSON and "
                    "binary tensors), dynamic batching, Prometheus metrics at /metrics, graceful shutdown on SIGTERM.")
    p.add_argument("plans", nargs="+", metavar="PLAN", help="a plan file (model name: its stem) or NAME=PATH")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int_range(0, 65535, "a port number"), default=8000)
    p.add_argument("--max-batch-size", type=positive_int, default=32, help="rows per batch at most")
    p.add_argument("--max-delay-ms", type=nonnegative_float, default=2.0,
                   help="how long a request that arrived while the model was busy may wait for a fuller batch")
    p.add_argument("--max-queue", type=positive_int, default=256, help="queued requests per model before 503s")
    p.add_argument("--timeout-ms", type=positive_float, default=10000.0,
                   help="a request that has not started by then gets 504")
    p.add_argument("--max-body-mb", type=positive_float, default=64.0, help="larger bodies get 413")
    p.add_argument("--threads", type=positive_int, help="kernel threads (default: torch's)")
    p.add_argument("--grace-s", type=nonnegative_float, default=20.0,
                   help="on SIGTERM, how long queued and running work may take to finish")
    p.add_argument("--keep-alive-s", type=positive_float, default=5.0,
                   help="close a client's idle connection after this many seconds (more for clients that pause)")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="run every plan at this precision (default: as saved; a bf16 plan's file holds fp32 weights, "
                        "so --precision fp32 serves it on a CPU without bf16)")
    p.add_argument("--ray", action="store_true",
                   help="serve as a Ray Serve deployment (local Ray, or the cluster RAY_ADDRESS names)")
    p.add_argument("--replicas", type=positive_int, default=1, help="Ray Serve replicas (with --ray)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(run=_run)
