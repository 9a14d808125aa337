"""Measured choice between the fused low-rank step and the dense fold, cached per shape.

The cost model (fewer MACs wins) is blind to how well each kernel runs a given shape; the
autotuner times the candidates on the layer's real input (our fused kernel, the pair as two
oneDNN convs, the dense fold) and keeps the fastest. Decisions
depend only on shapes, threads and backend, so they are cached for the process.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from .cost_model import cost_model_choice, torch_wins
from .cpu_steps import TorchConvStep
from .geometry import ConvGeometry
from .strategy import Layer, Strategy, make_step

# shape key -> (the choice, the best of our kernels)
_DECISIONS: dict[tuple, tuple[Strategy, Strategy]] = {}


def layer_inputs(model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
    """The input each submodule sees on its first call with `example_input`, by module name."""
    seen: dict[str, Tensor] = {}

    def keep(name: str, args: tuple) -> None:  # None: a pre-hook that returns a value replaces the input
        seen.setdefault(name, args[0])
    handles = [m.register_forward_pre_hook(lambda mod, args, n=name: keep(n, args))
               for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return {n: x for n, x in seen.items() if isinstance(x, Tensor)}


# A PyTorch step wakes PyTorch's OpenMP workers, which then spin for milliseconds on the cores
# the plan's next step needs (measured: a fused step right after a oneDNN conv ran up to 2x
# slower than after 5 ms of quiet). The tuner charges each PyTorch candidate that slowdown,
# measured on our kernel run right after it.
_QUIET_S = 0.005  # long enough for the OpenMP workers to stop spinning, short enough to stay warm
STEP_OVERHEAD_S = 10e-6  # measured cost of one step through the fx module (a fused step on a tiny input)
_WARMUP = 6  # a new step's first calls run up to 2x slow (fresh output pages, packed weights not in cache)


def median_seconds(steps: dict[str, nn.Module], x: Tensor, repeats: int) -> dict[str, float]:
    """Each candidate timed in its own block of back-to-back calls (as inside a plan), after a
    short quiet spell, so one candidate's spinning threads do not slow the next one down."""
    times: dict[str, float] = {}
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # GPU launches are asynchronous
    with torch.inference_mode():
        for k, step in steps.items():
            time.sleep(_QUIET_S)
            for _ in range(_WARMUP):  # and Triton's own autotune
                step(x)
            samples = []
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                step(x)
                sync()
                samples.append(time.perf_counter() - t)
            times[k] = sorted(samples)[len(samples) // 2]
    return times


def paired_seconds(candidates: dict[str, nn.Module], x: Tensor, repeats: int) -> dict[str, float]:
    """Fastest seconds of each candidate over `repeats` rounds in which every candidate runs once,
    one after the other: a disturbance (another process, threads still spinning) hits all of them
    alike instead of whichever block it fell into, and the minimum drops it, as a disturbance only
    ever adds time. For whole plans and second opinions, whose calls are long."""
    samples: dict[str, list[float]] = {k: [] for k in candidates}
    with torch.inference_mode():
        for step in candidates.values():
            for _ in range(2):
                step(x)
        for _ in range(repeats):
            for k, step in candidates.items():
                time.sleep(_QUIET_S)
                t = time.perf_counter()
                step(x)
                samples[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in samples.items()}


def step_seconds(plans: list, x: Tensor, rounds: int = 3, repeats: int = 10,
                 budget_s: float = 0.25) -> list[dict[str, float]]:
    """Each plan's (CompiledModel's) seconds per step on `x`, timed as `faster_in` says: the plans
    run alternately, `rounds` times, and each step keeps its fastest median."""
    start = time.perf_counter()
    with torch.inference_mode():
        for p in plans:  # warm, and what a call of each costs
            p(x)
    repeats = max(3, min(repeats, int(budget_s * len(plans) / 2 / (time.perf_counter() - start))))
    times: list[dict[str, float]] = [{} for _ in plans]
    for _ in range(rounds):
        for seen, p in zip(times, plans):
            for name, _, t in p.step_times(x, repeats):
                seen[name] = min(t, seen.get(name, t))
    return times


def faster_in(plan, other, x: Tensor, names: set[str], rounds: int = 3, repeats: int = 10,
              budget_s: float = 0.25, charge: dict[str, str] | None = None) -> list[str]:
    """The steps `names` of `plan` (a CompiledModel) that run faster in `other` (the same plan run
    another way), each timed inside its plan on `x`: inside the native program where there is one,
    so with the maps its neighbours leave it and the caches the rest of the plan leaves, without a
    Python call around it. The plans run alternately, and each step keeps its fastest median over
    the rounds. `charge`: {op: step} of `plan` whose time is the step's too (a pool that `other`'s
    step runs in its epilogue). Fewer repeats (not under 3) where one round of calls would take
    over `budget_s`: a large input at batch 32 runs for a second."""
    if not names:
        return []
    mine, theirs = step_seconds([plan, other], x, rounds, repeats, budget_s)
    for op, step in (charge or {}).items():
        if step in mine and op in mine:
            mine[step] += mine[op]
    return [n for n in sorted(names) if n in mine and n in theirs and theirs[n] < mine[n]]


def faster_in_fp32(bf16_plan, fp32_plan, x: Tensor, **timing) -> list[str]:
    """The bf16-capable steps of `bf16_plan` (a CompiledModel at precision bf16) that run faster in
    `fp32_plan` (the same plan at fp32), timed by `faster_in`. A pool that the fp32 conv runs in
    its epilogue (bf16 convs do not) is charged to the bf16 side as the pool's own op.

    bf16 is not faster everywhere: the vector path (no AMX) pads a low rank to 16 columns of its
    first GEMM (32 on tiles), and a small map at batch 1 is one task; on Zen 4, VGG16's rank-10 %
    basis convs at batch 1 ran 1.2-2.9x slower in bf16 than in fp32, and 1.1-1.7x faster at rank
    25 %, batch 32 (session 24, before the fp32 and bf16 Winograd convs)."""
    capable = {name for name, m in bf16_plan.module.named_modules() if getattr(m, "_bf16", None) is not None}
    pools = fp32_plan.native.fused_pools if fp32_plan.native is not None else {}
    return faster_in(bf16_plan, fp32_plan, x, capable, charge=pools, **timing)


def faster_direct(winograd_plan, direct_plan, x: Tensor, **timing) -> list[str]:
    """The steps of `winograd_plan` holding Winograd weights (FusedConv2d.winograd) that run faster
    in `direct_plan` (the same plan without them), timed by `faster_in`. A Winograd conv does 4/9
    of the (first) GEMM's MACs but reads 16/9 of its weights: where few pixels share them (batch 1,
    small maps), the weights' traffic sets the pace (torchvision ResNet-50 at rank 10 %, batch 1:
    its 7×7 pairs of 512 channels 160 against 135 µs, its 14×14 ones of 256 channels 111 against
    137)."""
    names = {name for name, m in winograd_plan.module.named_modules() if getattr(m, "winograd", None) is not None}
    return faster_in(winograd_plan, direct_plan, x, names, **timing)


def faster_bf16_direct(winograd_plan, direct_plan, x: Tensor, **timing) -> list[str]:
    """The steps of `winograd_plan` (at bf16) that run their basis conv by Winograd in bf16 and run
    faster in `direct_plan` (the same plan with `bf16_direct` on them), timed by `faster_in`. Ranks
    of 10 and more ran 1.27-2.38x faster by Winograd (session 25); ranks 1-8 (quads) at 64
    channels, batch 32, with bf16 maps in and out, 10-20 % slower (ResNet-18 rank 10 %: 1.29-1.31 ms
    direct against 1.44-1.57 ms), where at batch 1 the plan ran 7 % faster by Winograd."""
    names = {name for name, m in winograd_plan.module.named_modules()
             if getattr(m, "_bf16", None) is not None and m._bf16.winograd is not None}
    return faster_in(winograd_plan, direct_plan, x, names, **timing)


def _after_seconds(first: nn.Module, then: nn.Module, x: Tensor, repeats: int) -> float:
    """Median time of `then` called right after `first`, as it would run next in a plan."""
    samples = []
    with torch.inference_mode():
        for _ in range(repeats):
            first(x)
            t = time.perf_counter()
            then(x)
            samples.append(time.perf_counter() - t)
    return sorted(samples)[len(samples) // 2]


def _pick(steps: dict[Strategy, nn.Module], x: Tensor, repeats: int, ours: tuple[Strategy, ...],
          native_loss_s: float = 0.0) -> tuple[Strategy, Strategy]:
    """(the fastest candidate, our fastest), where a PyTorch candidate is charged the slowdown it
    causes our next step and `native_loss_s`, what the plan loses by running step by step."""
    times = median_seconds(steps, x, repeats)
    best_ours = min(ours, key=times.get)
    best = min(times, key=times.get)
    if best in ours or x.is_cuda:
        return best, best_ours
    if not torch_wins(times[best], times[best_ours], native_loss_s):
        return best_ours, best_ours
    # PyTorch wins: time the two again, side by side, and keep each one's better figure, so that
    # one disturbed block of ours does not hand the layer (and the plan's native run) away.
    again = paired_seconds({k: steps[k] for k in (best_ours, best)}, x, repeats)
    times = {k: min(times[k], again[k]) for k in (best_ours, best)}
    if not torch_wins(times[best], times[best_ours], native_loss_s):
        return best_ours, best_ours
    penalty = _after_seconds(steps[best], steps[best_ours], x, repeats) - times[best_ours]
    return (best if torch_wins(times[best], times[best_ours], native_loss_s, penalty) else best_ours), best_ours


class MeasuredChooser:
    """A `strategy.Chooser` that times the candidates on the captured layer inputs."""

    def __init__(self, inputs: dict[str, Tensor], num_threads: int | None, dense_backend: str, repeats: int = 9,
                 backend: str = "cpu", steps: int = 0):
        self.inputs, self.num_threads, self.dense_backend, self.repeats = inputs, num_threads, dense_backend, repeats
        self.backend = backend
        # A plan of only our kernels runs as one C++ program, saving the fx module's per-step cost.
        self.native_loss_s = steps * STEP_OVERHEAD_S if backend == "cpu" else 0.0
        self.measured = 0  # decisions timed by this chooser (the rest came from the cache)
        self.ours_only = False  # pick only among our kernels (from the same measurements)

    def __call__(self, name: str, fused: Layer | None, dense: Layer, geometry: ConvGeometry | None) -> Strategy:
        x = self.inputs.get(name)
        if x is None or (fused is None and self.backend != "cpu"):
            return cost_model_choice(name, fused, dense, geometry)
        if x.dim() == 4:  # as inside a plan: a layout conversion per call would be timed into every candidate
            x = x.contiguous(memory_format=torch.channels_last)
        threads = self.num_threads or torch.get_num_threads()
        key = (self.native_loss_s, None if fused is None else (tuple(fused.weight.shape), tuple(fused.scale.shape)),
               tuple(dense.weight.shape), geometry, tuple(x.shape), threads,
               self.dense_backend, self.backend)
        if key not in _DECISIONS:
            # Ours first: the torch candidates' spinning workers must not be timed into our kernels.
            kinds = [Strategy.FUSED, Strategy.PAIR] if fused is not None else []
            kinds += [Strategy.DENSE_BASISRT, Strategy.DENSE]
            steps = {kind: make_step(kind, dense if kind.dense else fused, geometry, backend=self.backend,
                                     dense_backend=self.dense_backend, num_threads=self.num_threads)
                     for kind in kinds}
            ours = tuple(k for k, m in steps.items() if not isinstance(m, TorchConvStep)) or tuple(steps)
            _DECISIONS[key] = _pick(steps, x, self.repeats, ours, self.native_loss_s)
            self.measured += 1
        return _DECISIONS[key][1 if self.ours_only else 0]


def clear_cache() -> None:
    """Forget every measured decision."""
    _DECISIONS.clear()
