"""Engines the benchmark compares, each a way to run a model; every one either builds or says why not.

Dense engines run the original model, pruned engines the basis-pruned one:

    eager_dense       PyTorch eager, NCHW                      (the reference)
    eager_dense_cl    PyTorch eager, channels_last
    inductor_dense    torch.compile, inductor with freezing
    ort_dense         ONNX Runtime on the exported model
    basisrt_dense     basisrt.compile of the dense model
    eager_pruned      PyTorch eager, NCHW
    eager_pruned_cl   PyTorch eager, channels_last
    inductor_pruned   torch.compile, inductor with freezing
    ort_pruned        ONNX Runtime on the exported pruned model
    basisrt           basisrt.compile of the pruned model

`build(name, model, x, threads)` returns an `EngineRun` (a zero-argument callable that runs `x`
once, plus details) or raises `EngineSkipped` with the reason (not installed, not available);
any other exception while building is a failure the report shows with its message.
Inductor freezing is switched on with `torch._inductor.config.freezing = True` around the first
(compiling) call: `torch.compile(options={"freezing": True})` is ignored in torch 2.13.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

DENSE_ENGINES = ("eager_dense", "eager_dense_cl", "inductor_dense", "ort_dense", "basisrt_dense")
PRUNED_ENGINES = ("eager_pruned", "eager_pruned_cl", "inductor_pruned", "ort_pruned", "basisrt")
ENGINES = DENSE_ENGINES + PRUNED_ENGINES
REFERENCE = "eager_dense"

DESCRIPTIONS = {
    "eager": "PyTorch eager (NCHW)",
    "eager_cl": "PyTorch eager (channels_last)",
    "inductor": "torch.compile, inductor, freezing",
    "ort": "ONNX Runtime (exported ONNX)",
    "basisrt": "basisrt.compile plan",
}


class EngineSkipped(Exception):
    """The engine cannot run here (not installed, not available); the message says why."""


@dataclass
class EngineRun:
    name: str
    fn: Callable[[], object]
    output: Callable[[], Tensor]
    info: dict = field(default_factory=dict)
    compiled: object = None  # basisrt: the CompiledModel (for per-layer step times)


def group_of(name: str) -> str:
    return "dense" if name in DENSE_ENGINES else "pruned"


def kind_of(name: str) -> str:
    """The engine kind without the dense/pruned suffix: eager, eager_cl, inductor, ort, basisrt."""
    return name.replace("_dense", "").replace("_pruned", "")


def availability() -> dict[str, str]:
    """Engine kind -> "" if its software is installed, else why not (checked without building)."""
    out = {"eager": "", "eager_cl": ""}
    try:
        import torch._inductor  # noqa: F401
        out["inductor"] = ""
    except Exception as e:  # noqa: BLE001
        out["inductor"] = f"torch._inductor not importable: {e}"
    try:
        import onnxruntime  # noqa: F401
        out["ort"] = ""
    except ImportError:
        out["ort"] = 'onnxruntime not installed (pip install -e ".[bench]")'
    import basisrt
    out["basisrt"] = "" if hasattr(basisrt, "compile") else "basisrt.compile not available"
    return out


def _no_grad_call(model: Callable, x: Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return model(x)
    return run


def _eager(model: nn.Module, x: Tensor, channels_last: bool) -> EngineRun:
    if channels_last:
        if x.dim() != 4:
            raise EngineSkipped("channels_last needs a 4-D input")
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fn = _no_grad_call(model.eval(), x)
    return EngineRun("", fn, fn, {"memory_format": "channels_last" if channels_last else "contiguous"})


def _set_dynamo_limits() -> None:
    import torch._dynamo.config as dc
    # every (model, batch, threads) is its own compiled graph: never fall back to eager silently
    for attr in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(dc, attr):
            setattr(dc, attr, max(getattr(dc, attr), 4096))


def _inductor(model: nn.Module, x: Tensor, threads: int) -> EngineRun:
    try:
        import torch._inductor.config as ic
    except Exception as e:  # noqa: BLE001
        raise EngineSkipped(f"torch._inductor not importable: {e}") from e
    _set_dynamo_limits()
    # a private copy: dynamo guards on the module's identity, and inductor bakes the thread count
    # into the generated kernels, so each (model, batch, threads) gets its own compiled graph
    model = copy.deepcopy(model).eval()
    compiled = torch.compile(model, backend="inductor", dynamic=False)
    prev = ic.freezing
    ic.freezing = True
    try:
        with torch.no_grad():
            compiled(x)  # compiles now, with freezing on
    finally:
        ic.freezing = prev
    fn = _no_grad_call(compiled, x)
    return EngineRun("", fn, fn, {"freezing": True, "threads_at_compile": threads})


def _ort(model: nn.Module, x: Tensor, threads: int, export_cache: dict) -> EngineRun:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise EngineSkipped('onnxruntime not installed (pip install -e ".[bench]")') from e
    key = (id(model), tuple(x.shape))
    if key not in export_cache:
        export_cache[key] = _export(model, x)
    path, how = export_cache[key]
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    fn = lambda: sess.run(None, feed)  # noqa: E731
    return EngineRun("", fn, lambda: torch.from_numpy(sess.run(None, feed)[0]),
                     {"exporter": how, "onnxruntime": ort.__version__})


def _export(model: nn.Module, x: Tensor) -> tuple[str, str]:
    """Export to a temporary ONNX file: the TorchScript exporter (fast), else the dynamo one."""
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise EngineSkipped('onnx not installed (pip install -e ".[bench]")') from e
    fd, path = tempfile.mkstemp(suffix=".onnx", prefix="basisrt-bench-")
    os.close(fd)
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs = {"dynamo": dynamo, "input_names": ["x"], "output_names": ["y"]}
                if not dynamo:
                    kwargs["opset_version"] = 17
                else:
                    kwargs["verbose"] = False
                torch.onnx.export(model.eval(), (x,), path, **kwargs)
            return path, "dynamo" if dynamo else "torchscript"
        except Exception as e:  # noqa: BLE001
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(e).__name__}: {str(e)[:200]}")
    raise RuntimeError("ONNX export failed: " + "; ".join(errors))


def _basisrt(model: nn.Module, x: Tensor) -> EngineRun:
    import basisrt
    if not hasattr(basisrt, "compile"):
        raise EngineSkipped("basisrt.compile not available")
    cm = basisrt.compile(model, x, autotune=True)  # per layer: our fused kernel, oneDNN pair or dense fold
    fn = lambda: cm(x)  # noqa: E731 - CompiledModel has eval / no-grad semantics itself
    steps = getattr(getattr(cm, "plan", None), "steps", [])
    strategies: dict[str, int] = {}
    for s in steps:
        strategies[s.strategy] = strategies.get(s.strategy, 0) + 1
    return EngineRun("", fn, fn, {"strategies": strategies}, compiled=cm)


def build(name: str, model: nn.Module, x: Tensor, threads: int, export_cache: dict | None = None) -> EngineRun:
    """Build engine `name` for `model` on input `x` with `threads` threads (set by the caller)."""
    kind = kind_of(name)
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; valid: {', '.join(ENGINES)}")
    if kind == "eager":
        run = _eager(model, x, channels_last=False)
    elif kind == "eager_cl":
        run = _eager(model, x, channels_last=True)
    elif kind == "inductor":
        run = _inductor(model, x, threads)
    elif kind == "ort":
        run = _ort(model, x, threads, export_cache if export_cache is not None else {})
    else:
        run = _basisrt(model, x)
    run.name = name
    return run
