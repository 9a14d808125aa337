"""The compiled model: a plan's steps as the user sees them (Step, Plan), the callable that runs
them (CompiledModel), and loading a saved plan."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx

from .bf16 import apply_precision, check_precision
from .cpu_steps import STEPS
from .cuda_graph import CUDAGraphRunner
from .program import lower
from .serialize import load_plan, save_plan
from .signature import one_input, wrap_output
from .strategy import Strategy


@dataclass
class Step:
    """One step of the plan as the benchmark and the user see it."""

    name: str
    strategy: Strategy
    macs: int = 0
    detail: str = ""


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    # (node, why) for each op that kept the plan from running as one native program (CPU float32
    # plans; empty when it is native, or on other devices): what to change in the model
    not_native: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"  {s.name:<40} {s.strategy:<13} {s.macs / 1e6:>9.2f} MMACs  {s.detail}" for s in self.steps]
        if self.not_native:
            lines.append(f"  not one native program ({len(self.not_native)} ops run step by step):")
            lines += [f"    {node}: {why}" for node, why in self.not_native]
        return "\n".join(lines)


class CompiledModel:
    """A compiled model: call it like the original (same inputs and outputs, inference only)."""

    def __init__(self, module: fx.GraphModule, plan: Plan, input_shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device | str = "cpu", cuda_graph: bool = False, precision: str = "fp32",
                 input_name: str | None = None, output_class: type | None = None) -> None:
        self.module = module
        self.plan = plan
        self.input_shape = tuple(input_shape)  # without the batch dimension
        self.dtype = dtype
        self.device = torch.device(device)
        # the model's signature (compiler/signature.py): plan(pixel_values=x) and its ModelOutput back
        self.input_name = input_name
        self.output_class = output_class
        # replays a CUDA graph per input shape instead of launching step by step (None: eager)
        self.graphs = CUDAGraphRunner(module, self.device) if cuda_graph else None
        # every step ours: the whole plan runs in one C++ call (None: step by step through fx)
        # (plan.not_native gets every op that keeps it from being one)
        plan.not_native = []
        check_precision(precision, self.device, dtype)
        self.precision = precision  # "bf16": convs in bf16 (compiler/bf16.py)
        apply_precision(module, precision)
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
        return check_input(x, self.device, self.dtype, self.input_shape)

    def __call__(self, *args: Tensor, **kwargs: Tensor) -> Any:
        """Run the plan on one input tensor, passed positionally or by the model's name for it."""
        if self.native is not None and self.graphs is None and self.output_class is None and len(args) == 1 \
                and not kwargs and (y := self.native.call_fast(args[0])) is not None:
            return y  # the C++ call checked what check_input does (or gave None)
        x = self._check(one_input(args, kwargs, self.input_name))
        if self.graphs is not None:
            y = self.graphs(x)  # already a contiguous clone, not the graph's static output
        elif self.native is not None:
            y = self.native(x)
        else:
            with torch.inference_mode():
                y = self.module(x)
            y = y.contiguous() if isinstance(y, Tensor) else y
        return wrap_output(self.output_class, y)

    def step_times(self, x: Tensor, repeats: int = 10) -> list[tuple[str, str, float]]:
        """Median seconds of each step over `repeats` runs of `x` (for per-layer benchmarks), timed
        inside the native program when the plan has one (where a max pool fused into the conv
        before it, `native.fused_pools`, is timed with that conv, and an expand conv run with the
        depthwise conv after it, `native.fused_expands`, with that one), else around each fx step."""
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
            if isinstance(m, STEPS):
                start: dict[str, float] = {}
                handles.append(m.register_forward_pre_hook(
                    lambda mod, a, n=name, s=start: s.__setitem__(n, time.perf_counter())))
                handles.append(m.register_forward_hook(
                    lambda mod, a, o, n=name, s=start: times.setdefault(n, []).append(time.perf_counter() - s[n])))
        try:
            with torch.inference_mode():
                for _ in range(repeats):
                    self.module(x)
        finally:
            for h in handles:
                h.remove()


def check_input(x: object, device: torch.device, dtype: torch.dtype, shape: tuple[int, ...] | None) -> Tensor:
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


def load(path: str, device: torch.device | str | None = None, *, cuda_graph: bool | None = None,
         precision: str | None = None) -> CompiledModel:
    """Load a plan written by `CompiledModel.save`.

    Args:
        path: the plan file.
        device: where the plan runs (default: the device it was saved from). Plans of the CPU
            backend (C++ kernels) run on the CPU only; Triton steps run on CUDA (on the CPU only
            under TRITON_INTERPRET=1, for testing); PyTorch steps run anywhere.
        cuda_graph: capture CUDA graphs on call (default: as compiled, when the target is CUDA;
            off on the CPU).
        precision: "fp32" or "bf16" (default: as compiled). The file holds fp32 weights, so a
            bf16 plan also runs at fp32 (on a machine without AVX512-BF16, for one). At bf16 the
            convs measured faster in fp32 when the plan was compiled at bf16 stay fp32; a plan
            compiled at fp32 runs every conv it can in bf16.

    The file is untrusted input: a ValueError naming it says what is wrong with one that is not a
    valid plan (basisrt/compiler/serialize.py, plan_schema.py), and nothing in it runs before it
    has been checked.
    """
    p = load_plan(path, device, cuda_graph)
    plan = Plan([Step(**{**s, "strategy": Strategy(s["strategy"])}) for s in p.steps])
    try:  # lowering checks what the schema leaves to the kernels (index values, finite weights)
        return CompiledModel(p.module, plan, p.input_shape, p.dtype, p.device, p.cuda_graph,
                             p.precision if precision is None else precision, p.input_name, p.output_class)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


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


