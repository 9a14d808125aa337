"""Engines the benchmark compares, each a way to run a model; every one either builds or says why not.

Dense engines run the original model, pruned engines the basis-pruned one. On the CPU:

    eager_dense       PyTorch eager, NCHW                      (the CPU reference)
    eager_dense_cl    PyTorch eager, channels_last
    inductor_dense    torch.compile, inductor with freezing
    ort_dense         ONNX Runtime on the exported model
    ov_dense          OpenVINO on the exported model, f32 (INFERENCE_PRECISION_HINT=f32)
    ov_dense_bf16     OpenVINO at its default precision: bf16 on a CPU with AMX / AVX512-BF16
    basisrt_dense     basisrt.compile of the dense model
    eager_pruned      PyTorch eager, NCHW
    eager_pruned_cl   PyTorch eager, channels_last
    inductor_pruned   torch.compile, inductor with freezing
    ort_pruned        ONNX Runtime on the exported pruned model
    ov_pruned         OpenVINO, f32
    ov_pruned_bf16    OpenVINO at its default precision (bf16 where the CPU has it)
    basisrt           basisrt.compile of the pruned model
    basisrt_bf16      the same at precision="bf16" (AMX tiles or AVX512-BF16; the MAC cost model picks the layers,
                      convs measured faster in fp32 stay fp32, and compile's max_error=1e-2 bound holds the
                      output on the bench's input, the example input, within 1e-2 of the fp32 plan's;
                      each engine's error on a fresh input of that shape is reported beside it)

On a CUDA GPU (each call synchronised, so a pass times the whole GPU run; compared only with
each other, against their own reference):

    gpu_eager_dense       PyTorch eager (cuDNN)                (the GPU reference)
    gpu_eager_pruned      PyTorch eager: each basis pair as two cuDNN convs
    gpu_inductor_pruned   torch.compile, inductor with freezing
    gpu_basisrt           basisrt.compile of the pruned model: fused Triton basis convs
    gpu_basisrt_graph     the same plan captured as CUDA graphs (compile(cuda_graph=True))

`build(name, model, x, threads)` returns an `EngineRun` (a zero-argument callable that runs `x`
once, plus details) or raises `EngineSkipped` with the reason (not installed, not available,
no CUDA device); any other exception while building is a failure the report shows with its message.
Inductor freezing is switched on with `torch._inductor.config.freezing = True` around the first
(compiling) call: `torch.compile(options={"freezing": True})` is ignored in torch 2.13.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

GPU_DENSE_ENGINES = ("gpu_eager_dense",)
GPU_PRUNED_ENGINES = ("gpu_eager_pruned", "gpu_inductor_pruned", "gpu_basisrt", "gpu_basisrt_graph")
GPU_ENGINES = GPU_DENSE_ENGINES + GPU_PRUNED_ENGINES
DENSE_ENGINES = ("eager_dense", "eager_dense_cl", "inductor_dense", "ort_dense", "ov_dense", "ov_dense_bf16",
                 "basisrt_dense") + GPU_DENSE_ENGINES
PRUNED_ENGINES = ("eager_pruned", "eager_pruned_cl", "inductor_pruned", "ort_pruned", "ov_pruned", "ov_pruned_bf16",
                  "basisrt", "basisrt_bf16") + GPU_PRUNED_ENGINES
ENGINES = DENSE_ENGINES + PRUNED_ENGINES
REFERENCE = "eager_dense"
DEVICES = ("cpu", "cuda")
REFERENCES = {"cpu": REFERENCE, "cuda": "gpu_eager_dense"}  # speedups compare engines on one device only
NO_CUDA = "no CUDA device on this machine"
OPENVINO_MISSING = 'openvino not installed (pip install -e ".[bench]")'

DESCRIPTIONS = {
    "eager": "PyTorch eager (NCHW)",
    "eager_cl": "PyTorch eager (channels_last)",
    "inductor": "torch.compile, inductor, freezing",
    "ort": "ONNX Runtime (exported ONNX)",
    "ov": "OpenVINO (exported ONNX), f32",
    "ov_bf16": "OpenVINO (exported ONNX), its default precision: bf16 on this CPU",
    "basisrt": "basisrt.compile plan",
    "basisrt_bf16": "basisrt.compile plan, precision='bf16'",
    "gpu_eager": "PyTorch eager (cuDNN; a basis pair is two convs)",
    "gpu_inductor": "torch.compile, inductor, freezing",
    "gpu_basisrt": "basisrt.compile plan, fused Triton basis convs",
    "gpu_basisrt_graph": "basisrt.compile plan, fused Triton basis convs, CUDA graph",
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
    # the output for another input of the build input's shape: the error off the example input,
    # which basisrt's bf16 plan is fitted to (its error bound); None where an engine cannot say
    run_on: Callable[[Tensor], object] | None = None


def engine_arg(name: str) -> str:
    """argparse type of an engine name: an error that names the bad one without listing all of
    them (--help does)."""
    import argparse
    if name not in ENGINES:
        raise argparse.ArgumentTypeError(f"unknown engine {name!r} (--help lists the {len(ENGINES)} engines)")
    return name


def tolerance(name: str) -> float:
    """Largest relative error against eager float32 that engine `name` may show: bf16 arithmetic
    (8 mantissa bits) lands at 3e-3 to 1e-2 on whole models, float32 far under 1e-3."""
    return 3e-2 if name.endswith("_bf16") else 1e-3


def group_of(name: str) -> str:
    return "dense" if name in DENSE_ENGINES else "pruned"


def kind_of(name: str) -> str:
    """The engine kind without the dense/pruned suffix: eager, eager_cl, inductor, ort, ov, ov_bf16,
    basisrt, gpu_eager, gpu_inductor, gpu_basisrt, gpu_basisrt_graph."""
    return name.replace("_dense", "").replace("_pruned", "")


def device_of(name: str) -> str:
    """"cuda" for the GPU engines, else "cpu"."""
    return "cuda" if name in GPU_ENGINES else "cpu"


@contextlib.contextmanager
def full_fp32_on_gpu():
    """TF32 off for cuDNN and matmuls while the GPU engines build and run: basisrt's Triton kernel
    computes full fp32 by default ("ieee"), so every GPU engine does the same arithmetic."""
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


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
    out["ov"] = out["ov_bf16"] = "" if importlib.util.find_spec("openvino") else OPENVINO_MISSING
    out["basisrt"] = ""
    from .. import _C
    out["basisrt_bf16"] = "" if _C.bf16_path() != "none" else "this CPU has no AVX512-BF16 (nor AMX)"
    gpu = "" if torch.cuda.is_available() else NO_CUDA
    out["gpu_eager"] = gpu
    out["gpu_inductor"] = gpu or out["inductor"]
    out["gpu_basisrt"] = out["gpu_basisrt_graph"] = gpu or _triton_missing() or out["basisrt"]
    return out


def _triton_missing() -> str:
    return "" if importlib.util.find_spec("triton") is not None else "triton not installed (pip install triton)"


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
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return EngineRun("", fn, fn, {"memory_format": "channels_last" if channels_last else "contiguous"},
                     run_on=lambda t: _no_grad_call(model, t.contiguous(memory_format=fmt))())


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
    return EngineRun("", fn, fn, {"freezing": True, "threads_at_compile": threads},
                     run_on=lambda t: _no_grad_call(compiled, t)())


def _exported(model: nn.Module, x: Tensor, export_cache: dict) -> tuple[str, str]:
    """The ONNX file of (model, x's shape), exported once for every engine that reads ONNX."""
    key = (id(model), tuple(x.shape))
    if key not in export_cache:
        export_cache[key] = _export(model, x)
    return export_cache[key]


def remove_exports(export_cache: dict) -> None:
    """Deletes the ONNX files `_exported` wrote for `export_cache` (once every engine that reads
    them is built: ONNX Runtime and OpenVINO hold their models in memory)."""
    for path, _ in export_cache.values():
        _remove_export(path)
    export_cache.clear()


def _remove_export(path: str) -> None:
    for p in (path, path + ".data"):  # the dynamo exporter may write the weights beside it
        with contextlib.suppress(OSError):
            os.remove(p)


def _ort(model: nn.Module, x: Tensor, threads: int, export_cache: dict) -> EngineRun:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise EngineSkipped('onnxruntime not installed (pip install -e ".[bench]")') from e
    path, how = _exported(model, x, export_cache)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feed = {name: x.numpy()}
    fn = lambda: sess.run(None, feed)  # noqa: E731
    return EngineRun("", fn, lambda: torch.from_numpy(sess.run(None, feed)[0]),
                     {"exporter": how, "onnxruntime": ort.__version__},
                     run_on=lambda t: torch.from_numpy(sess.run(None, {name: t.numpy()})[0]))


def _openvino(model: nn.Module, x: Tensor, threads: int, export_cache: dict, bf16: bool) -> EngineRun:
    """OpenVINO's CPU plugin on the exported model, latency mode, one stream of `threads` threads:
    f32 (precision hint), or its default precision where that is bf16 (AMX / AVX512-BF16 CPUs)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise EngineSkipped(OPENVINO_MISSING) from e
    core = ov.Core()
    if bf16 and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise EngineSkipped("this CPU has no bf16: OpenVINO's default here is f32 (the ov_* engine)")
    path, how = _exported(model, x, export_cache)
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if not bf16:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request, feed, out = compiled.create_infer_request(), {0: x.numpy()}, compiled.output(0)
    fn = lambda: request.infer(feed, share_inputs=True)  # noqa: E731 - x read in place, no copy per call
    other = compiled.create_infer_request()  # not `request`, whose input may be x's own memory by then
    return EngineRun("", fn, lambda: torch.from_numpy(request.infer(feed)[out].copy()),
                     {"exporter": how, "openvino": ov.__version__,
                      "precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()},
                     run_on=lambda t: torch.from_numpy(other.infer({0: t.numpy()})[out].copy()))


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
    _remove_export(path)
    raise RuntimeError("ONNX export failed: " + "; ".join(errors))


def _basisrt(model: nn.Module, x: Tensor, autotune: bool = True, cuda_graph: bool = False,
             precision: str = "fp32") -> EngineRun:
    import basisrt
    # autotune: per layer our fused kernel, the pair as two library convs, or the dense fold
    cm = basisrt.compile(model, x, autotune=autotune, cuda_graph=cuda_graph, precision=precision)
    fn = lambda: cm(x)  # noqa: E731 - CompiledModel has eval / no-grad semantics itself
    steps = cm.plan.steps
    strategies: dict[str, int] = {}
    for s in steps:
        strategies[s.strategy] = strategies.get(s.strategy, 0) + 1
    return EngineRun("", fn, fn, {"strategies": strategies}, compiled=cm, run_on=cm)


def _synchronised(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` then wait for the GPU: CUDA launches return before the work is done."""
    def run() -> object:
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


def _gpu(kind: str, model: nn.Module, x: Tensor, threads: int) -> EngineRun:
    """A GPU engine on copies of `model` and `x` moved to CUDA; EngineSkipped without CUDA."""
    if not torch.cuda.is_available():
        raise EngineSkipped(NO_CUDA)
    model, x = copy.deepcopy(model).eval().cuda(), x.cuda()
    if kind == "gpu_eager":
        run = EngineRun("", _no_grad_call(model, x), _no_grad_call(model, x),
                        run_on=lambda t: _no_grad_call(model, t)())
    elif kind == "gpu_inductor":
        run = _inductor(model, x, threads)
    else:
        if _triton_missing():
            raise EngineSkipped(_triton_missing())
        # the MAC cost model, not autotune: fused wherever it pays, so the fused kernel is what is timed
        run = _basisrt(model, x, autotune=False, cuda_graph=kind == "gpu_basisrt_graph")
    run.fn = _synchronised(run.fn)
    on_host = run.run_on
    run.run_on = (lambda t: on_host(t.to(x.device))) if on_host is not None else None
    run.info.update(device=str(x.device), gpu=torch.cuda.get_device_name(x.device))
    return run


def build(name: str, model: nn.Module, x: Tensor, threads: int, export_cache: dict | None = None) -> EngineRun:
    """Build engine `name` for `model` on input `x` with `threads` threads (set by the caller)."""
    kind = kind_of(name)
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; valid: {', '.join(ENGINES)}")
    if device_of(name) == "cuda":
        run = _gpu(kind, model, x, threads)
    elif kind == "eager":
        run = _eager(model, x, channels_last=False)
    elif kind == "eager_cl":
        run = _eager(model, x, channels_last=True)
    elif kind == "inductor":
        run = _inductor(model, x, threads)
    elif kind == "ort":
        run = _ort(model, x, threads, export_cache if export_cache is not None else {})
    elif kind in ("ov", "ov_bf16"):
        run = _openvino(model, x, threads, export_cache if export_cache is not None else {}, kind == "ov_bf16")
    elif kind == "basisrt_bf16":
        if availability()["basisrt_bf16"]:
            raise EngineSkipped(availability()["basisrt_bf16"])
        # autotune times fp32 kernels (and oneDNN pairs, which would stay fp32): the MAC model instead
        run = _basisrt(model, x, autotune=False, precision="bf16")
    else:
        run = _basisrt(model, x)
    run.name = name
    return run
