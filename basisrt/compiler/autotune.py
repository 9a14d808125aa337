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

from .fusion import Layer, make_step

_DECISIONS: dict[tuple, str] = {}  # shape key -> "fused", "pair" or "dense"


def layer_inputs(model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
    """The input each submodule sees on its first call with `example_input`, by module name."""
    seen: dict[str, Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=name: seen.setdefault(n, args[0]))
               for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return {n: x for n, x in seen.items() if isinstance(x, Tensor)}


def _median_seconds(steps: dict[str, nn.Module], x: Tensor, repeats: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in steps}
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # GPU launches are asynchronous
    with torch.inference_mode():
        for step in steps.values():  # warm-up (and Triton's own autotune)
            step(x)
        for _ in range(repeats):  # interleaved, so drift hits every candidate alike
            for k, step in steps.items():
                sync()
                t = time.perf_counter()
                step(x)
                sync()
                samples[k].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


class MeasuredChooser:
    """A `fusion.Chooser` that times the candidates on the captured layer inputs."""

    def __init__(self, inputs: dict[str, Tensor], num_threads: int | None, dense_backend: str, repeats: int = 7,
                 backend: str = "cpu"):
        self.inputs, self.num_threads, self.dense_backend, self.repeats = inputs, num_threads, dense_backend, repeats
        self.backend = backend
        self.measured = 0  # decisions timed by this chooser (the rest came from the cache)

    def __call__(self, name: str, fused: Layer, dense: Layer, geometry: dict | None) -> str:
        from .fusion import cost_model_choice

        x = self.inputs.get(name)
        if x is None:
            return cost_model_choice(name, fused, dense, geometry)
        threads = self.num_threads or torch.get_num_threads()
        key = (tuple(fused.weight.shape), tuple(fused.scale.shape), tuple(dense.weight.shape),
               tuple(sorted((geometry or {}).items())), tuple(x.shape), threads, self.dense_backend, self.backend)
        if key not in _DECISIONS:
            steps = {kind: make_step(layer, geometry, self.num_threads, self.dense_backend, kind == "pair", self.backend)
                     for kind, layer in (("fused", fused), ("pair", fused), ("dense", dense))}
            times = _median_seconds(steps, x, self.repeats)
            _DECISIONS[key] = min(times, key=times.get)
            self.measured += 1
        return _DECISIONS[key]


def clear_cache() -> None:
    """Forget every measured decision."""
    _DECISIONS.clear()
