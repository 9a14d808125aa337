"""`basisrt.compile`: trace, fuse, and wrap the result as a drop-in callable."""
from __future__ import annotations

import copy
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..cost import profile
from .cpu_steps import ChannelAffineStep, FusedConv2d, PoolStep, TorchConvStep
from .autotune import MeasuredChooser, layer_inputs, paired_seconds
from .cuda_graph import CUDAGraphRunner, require_cuda_device
from .capture import capture as capture_graph
from .fusion import Chooser, Layer, cost_model_choice, fuse
from .normalize import normalize
from .program import lower
from .serialize import load_plan, save_plan


@dataclass
class Step:
    """One step of the plan as the benchmark and the user see it."""

    name: str
    # "fused" (our low-rank kernel), "pair" (two oneDNN convs), "dense" / "dense-fold", "pool",
    # "affine" (a BatchNorm, a scalar op or an activation no conv absorbed), "eltwise" (an add or
    # gate mul of two maps), "gather" (a channel shuffle or slice), "torch"
    strategy: str
    macs: int = 0
    detail: str = ""


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    # (node, why) for each op that kept the plan from running as one native program (CPU float32
    # plans; empty when it is native, or on other devices): what to change in the model
    not_native: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"  {s.name:<40} {s.strategy:<10} {s.macs / 1e6:>9.2f} MMACs  {s.detail}" for s in self.steps]
        if self.not_native:
            lines.append(f"  not one native program ({len(self.not_native)} ops run step by step):")
            lines += [f"    {node}: {why}" for node, why in self.not_native]
        return "\n".join(lines)


class CompiledModel:
    """A compiled model: call it like the original (same inputs and outputs, inference only)."""

    def __init__(self, module: fx.GraphModule, plan: Plan, input_shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device | str = "cpu", cuda_graph: bool = False) -> None:
        self.module = module
        self.plan = plan
        self.input_shape = tuple(input_shape)  # without the batch dimension
        self.dtype = dtype
        self.device = torch.device(device)
        # replays a CUDA graph per input shape instead of launching step by step (None: eager)
        self.graphs = CUDAGraphRunner(module, self.device) if cuda_graph else None
        # every step ours: the whole plan runs in one C++ call (None: step by step through fx)
        # (plan.not_native gets every op that keeps it from being one)
        plan.not_native = []
        self.native = (lower(module, self.input_shape, plan.not_native)
                       if self.device.type == "cpu" and dtype == torch.float32 else None)

    @property
    def cuda_graph(self) -> bool:
        """Whether calls run through captured CUDA graphs."""
        return self.graphs is not None

    def save(self, path: str) -> None:
        """Write the plan (weights in safetensors, plan as JSON in its metadata, with the device
        and the cuda_graph setting) to one file; `basisrt.load(path)` runs it without the original
        model class, `basisrt.load(path, device=...)` on another device its steps can run on."""
        save_plan(self, path)

    def _check(self, x: object) -> Tensor:
        """`x` checked against the plan's signature, as a plain tensor the kernels can read."""
        return _plain_input(x, self.device, self.dtype, self.input_shape)

    def __call__(self, x: Tensor) -> Tensor:
        x = self._check(x)
        if self.graphs is not None:
            return self.graphs(x)  # already a contiguous clone, not the graph's static output
        if self.native is not None:
            return self.native(x)
        with torch.inference_mode():
            y = self.module(x)
        return y.contiguous() if isinstance(y, Tensor) else y

    def step_times(self, x: Tensor, repeats: int = 10) -> list[tuple[str, str, float]]:
        """Median seconds of each step over `repeats` runs of `x` (for per-layer benchmarks), timed
        inside the native program when the plan has one (where a max pool fused into the conv
        before it, `native.fused_pools`, is timed with that conv), else around each fx step."""
        self._check(x)
        times: dict[str, list[float]] = {}
        if self.native is not None:
            for _ in range(repeats):
                seconds = np.zeros(len(self.native.op_names))
                self.native(x, seconds)
                for n, t in zip(self.native.op_names, seconds):
                    times.setdefault(n, []).append(float(t))
        else:
            self._fx_step_times(x, repeats, times)
        strategy = {s.name: s.strategy for s in self.plan.steps}
        return [(n, strategy.get(n, "?"), sorted(t)[len(t) // 2]) for n, t in times.items()]

    def _fx_step_times(self, x: Tensor, repeats: int, times: dict[str, list[float]]) -> None:
        handles = []
        for name, m in self.module.named_modules():
            if isinstance(m, (ChannelAffineStep, FusedConv2d, PoolStep, TorchConvStep)):
                start: dict[str, float] = {}
                handles.append(m.register_forward_pre_hook(lambda mod, a, n=name, s=start: s.__setitem__(n, time.perf_counter())))
                handles.append(m.register_forward_hook(
                    lambda mod, a, o, n=name, s=start: times.setdefault(n, []).append(time.perf_counter() - s[n])))
        try:
            with torch.inference_mode():
                for _ in range(repeats):
                    self.module(x)
        finally:
            for h in handles:
                h.remove()


def _plain_input(x: object, device: torch.device, dtype: torch.dtype, shape: tuple[int, ...] | None) -> Tensor:
    """`x` as a plain dense tensor (detached, no lazy negation or conjugation), or a clear error
    naming what does not match the plan: type, layout, device, dtype or shape."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise TypeError(f"expected a dense tensor, got a {x.layout} one: call .to_dense() on it first")
    if x.device.type == "meta":
        raise ValueError("the input is on the meta device (a shape without data): pass a tensor with values")
    if x.device.type != device.type:
        raise ValueError(f"this plan runs on {device.type}; the input is on {x.device}")
    if x.dtype != dtype:
        raise TypeError(f"expected a {dtype} input, got {x.dtype}")
    if shape is not None and tuple(x.shape[1:]) != shape:
        raise ValueError(f"expected input of shape (N, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    # inference only: gradients are not tracked (as under torch.no_grad), lazy views are resolved
    return x.detach().resolve_neg().resolve_conj()


def _check_model(model: nn.Module, example_input: Tensor, num_threads: int | None) -> None:
    """Clear errors (and a warning) for what compile cannot or will not do with `model`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile expects an nn.Module, got {type(model).__name__}")
    _plain_input(example_input, example_input.device, example_input.dtype, None)
    if num_threads is not None and (not isinstance(num_threads, int) or not 1 <= num_threads <= MAX_THREADS):
        raise ValueError(f"num_threads must be None or an int in [1, {MAX_THREADS}], got {num_threads!r}")
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(f"{type(model).__name__} has parameters on the meta device (shapes without values): load "
                         "its weights first (model.to_empty(device='cpu'), then load_state_dict)")
    if model.training:
        warnings.warn(f"basisrt.compile: {type(model).__name__} is in training mode; the plan runs it as in eval mode "
                      "(BatchNorm running statistics, no dropout). Call model.eval() first to silence this.",
                      stacklevel=3)


def _check_single_input(model: nn.Module, graph: fx.Graph) -> None:
    required = [n.target for n in graph.nodes if n.op == "placeholder" and not n.args]
    if len(required) > 1:
        raise ValueError(f"basisrt.compile runs models of one tensor input; {type(model).__name__}.forward takes "
                         f"{len(required)} ({', '.join(map(str, required))})")


MAX_THREADS = 1024  # the C++ kernels' cap (csrc/shape_checks.h: kMaxThreads)


def compile(model: nn.Module, example_input: Tensor, *, prefer_lowrank: bool = True, autotune: bool = False,
            num_threads: int | None = None, dense_backend: str = "auto", backend: str = "auto",
            cuda_graph: bool = False, capture: str = "auto") -> CompiledModel:
    """Compile `model` for inference into a plan of fused kernels (C++ on the CPU, Triton on CUDA).

    Traces with torch.fx (basis layers stay whole; TorchDynamo where fx cannot), folds BatchNorm into the preceding conv,
    fuses residual adds and activations (ReLU, ReLU6, SiLU, sigmoid, hard-swish, hard-sigmoid,
    leaky ReLU, GELU) into the conv epilogue, drops what is the identity in eval mode (dropout,
    stochastic depth), and picks per layer the fused low-rank kernel or a dense fold, whichever
    needs fewer MACs. Pools, squeeze-excitation gates, unfused adds, channel shuffles and slices
    and concatenations run in basisrt's kernels too; when every op does, the plan is one native
    C++ program (`.native`), else `.plan.not_native` (and `basisrt.explain`) says which ops kept
    it from being one. Operations the plan does not own run through PyTorch. The model itself is
    not modified.

    Args:
        model: a float32 model (plain, decomposed or pruned). It is compiled as in eval mode
            (BatchNorm running statistics, no dropout): a model in training mode gets a warning.
        example_input: an input of the shape the plan will be called with (batch may differ).
        prefer_lowrank: if False, fold every basis pair to a dense conv.
        autotune: choose per layer by timing on `example_input` instead of by the MAC count:
            our fused kernel, the pair as two oneDNN convs or the dense fold for a basis pair, our
            dense kernel or oneDNN for a plain conv. A PyTorch step is charged the slowdown its
            spinning OpenMP workers cause our next step. Decisions are cached per shape.
        num_threads: kernel threads (default: torch.get_num_threads() at call time).
        dense_backend: "torch" runs dense steps with PyTorch's conv (oneDNN, faster on big dense
            convs), "basisrt" with our C++ kernel. "auto" (default) starts from "torch", and on the
            CPU also builds the plan of only our kernels, which runs as one C++ program without a
            Python round trip per step, and keeps whichever is faster on `example_input`.
        backend: "auto" (CUDA input: "triton", else "cpu"), "cpu" (C++ kernels) or "triton"
            (fused pairs as Triton kernels, other steps through PyTorch; on CPU tensors only
            under TRITON_INTERPRET=1, for testing).
        cuda_graph: capture the plan as a CUDA graph on the first call with each input shape and
            replay it afterwards (saves the per-step launch cost; CUDA plans only). Outputs are
            fresh tensors, never the graph's static buffers.
        capture: how the model becomes a graph (basisrt.compiler.capture): "fx" (torch.fx
            tracing), "dynamo" (TorchDynamo runs the model's Python: sizes used as ints, `if`s
            on shapes; one graph, valid for any batch size), "auto" (default): fx, and Dynamo
            with a warning where fx cannot trace the model.
    """
    if not isinstance(example_input, Tensor):
        raise TypeError("example_input must be a torch.Tensor")
    _check_model(model, example_input, num_threads)
    example_input = _plain_input(example_input, example_input.device, example_input.dtype, None)
    if cuda_graph:
        require_cuda_device(example_input.device)  # before the work of tracing
    backend = _resolve_backend(backend, example_input.device)
    if dense_backend not in ("auto", "torch", "basisrt"):
        raise ValueError(f"dense_backend must be 'auto', 'torch' or 'basisrt', got {dense_backend!r}")
    try_ours = autotune or dense_backend == "auto"
    dense_backend = "torch" if dense_backend == "auto" else dense_backend
    model = copy.deepcopy(model).eval()
    gm = capture_graph(model, example_input, capture)
    _check_single_input(model, gm.graph)
    with torch.no_grad():
        try:
            ShapeProp(gm).propagate(example_input)
        except Exception as e:  # the model's own error on this input, without fx's long trace
            cause = e.__cause__ or e
            raise ValueError(f"basisrt.compile: {type(model).__name__} fails on example_input of shape "
                             f"{tuple(example_input.shape)}: {type(cause).__name__}: {cause}") from e
    normalize(gm)
    cost = {l.name: l.macs for l in profile(model, example_input).layers}
    if not prefer_lowrank:
        choose = None
    elif autotune:
        choose = MeasuredChooser(layer_inputs(model, example_input), num_threads, dense_backend, backend=backend,
                                 steps=sum(n.op in ("call_module", "call_function", "call_method") for n in gm.graph.nodes))
    else:
        choose = cost_model_choice
    compiled = _build(copy.deepcopy(gm), choose, cost, example_input, num_threads, dense_backend, backend, cuda_graph)
    if try_ours and compiled.native is None and backend == "cpu":
        # Some PyTorch step keeps the whole plan out of the native program; time the plan of
        # only our kernels against it and keep the faster.
        ours = _build(gm, _ours_only(choose), cost, example_input, num_threads, dense_backend, backend, cuda_graph)
        if ours.native is not None:
            times = paired_seconds({"mixed": compiled, "ours": ours}, example_input, repeats=7)
            # The native plan keeps PyTorch's spinning threads away from whatever runs next, which
            # this timing does not see: the mixed plan must win clearly.
            compiled = compiled if times["mixed"] < NATIVE_MARGIN * times["ours"] else ours
    return compiled


# A mixed plan (some PyTorch steps) is kept over the native one only if this much faster. A bench
# run (session 4) once kept a ResNet-18 plan with 4 oneDNN pairs at 32 ms over the 15 ms native one:
# both had been timed in separate blocks, and something disturbed one of them.
NATIVE_MARGIN = 0.9


def _ours_only(choose: Chooser | None) -> Chooser:
    """`choose` restricted to our kernels: the measured chooser picks the fastest of ours; a fixed
    choice swaps PyTorch's dense conv for ours and the oneDNN pair for the fused kernel."""
    if isinstance(choose, MeasuredChooser):
        choose.ours_only = True
        return choose

    def ours(name: str, fused: Layer | None, dense: Layer, geometry: dict | None) -> str:
        kind = choose(name, fused, dense, geometry) if choose is not None else "dense"
        return {"dense": "dense-basisrt", "pair": "fused"}.get(kind, kind)
    return ours


def _build(gm: fx.GraphModule, choose, cost: dict[str, int], example_input: Tensor, num_threads: int | None,
           dense_backend: str, backend: str, cuda_graph: bool) -> CompiledModel:
    """Fuse `gm` (in place) into plan steps and wrap it with its Plan."""
    strategies = fuse(gm, choose, num_threads, dense_backend, backend)
    gm.eval()  # an inference plan: the step modules fuse() adds start in training mode
    plan = Plan()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            strategy, sources = strategies.get(node.target, ("torch", (node.target,)))
            macs = sum(cost.get(src, 0) for src in sources)
            plan.steps.append(Step(node.target, strategy, macs, gm.get_submodule(node.target).extra_repr()))
        elif node.op in ("call_function", "call_method"):
            plan.steps.append(Step(node.name, "torch", 0, str(getattr(node.target, "__name__", node.target))))
    return CompiledModel(gm, plan, tuple(example_input.shape[1:]), example_input.dtype, example_input.device,
                         cuda_graph)


def _resolve_backend(backend: str, device: torch.device) -> str:
    """Which step kernels a plan on `device` uses; clear errors for what cannot work."""
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "cpu"
    if backend not in ("cpu", "triton"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'triton', got {backend!r}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"the CPU backend needs a CPU model and input, got {device}")
    if backend == "triton":
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"the Triton backend runs on CUDA devices, got {device}")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' on CPU tensors runs only under TRITON_INTERPRET=1 (for testing)")
        from .gpu_steps import _kernel_module
        _kernel_module()  # a clear RuntimeError now if triton is missing, not deep in a step
    return backend


def load(path: str, device: torch.device | str | None = None, *, cuda_graph: bool | None = None) -> CompiledModel:
    """Load a plan written by `CompiledModel.save`.

    Args:
        path: the plan file.
        device: where the plan runs (default: the device it was saved from). Plans of the CPU
            backend (C++ kernels) run on the CPU only; Triton steps run on CUDA (on the CPU only
            under TRITON_INTERPRET=1, for testing); PyTorch steps run anywhere.
        cuda_graph: capture CUDA graphs on call (default: as compiled, when the target is CUDA;
            off on the CPU).

    The file is untrusted input: a ValueError naming it says what is wrong with one that is not a
    valid plan (basisrt/compiler/serialize.py, plan_schema.py), and nothing in it runs before it
    has been checked.
    """
    return load_plan(path, device, cuda_graph)


@dataclass
class Explanation:
    """What basisrt.compile makes of a model (basisrt.explain)."""

    native: bool  # the whole plan runs as one C++ program
    not_native: list[tuple[str, str]]  # (node, why) for each op that keeps it from being one
    plan: Plan

    def __str__(self) -> str:
        head = ("native: the whole plan runs as one C++ program" if self.native else
                f"not native: {len(self.not_native)} ops keep the plan from running as one C++ program "
                "(each runs through PyTorch, between steps that return to Python)")
        return f"{head}\n{self.plan}"


def explain(model: nn.Module, example_input: Tensor, **compile_options) -> Explanation:
    """Compile `model` (options as for basisrt.compile) and say which ops kept the plan from
    running as one native program, and why: what to change in the model, or to ask basisrt for."""
    compiled = compile(model, example_input, **compile_options)
    return Explanation(compiled.native is not None, list(compiled.plan.not_native), compiled.plan)
