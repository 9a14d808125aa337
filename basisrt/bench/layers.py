"""Per-layer timing in eager mode: capture each layer's input in one forward pass, then time the
layers on their captured inputs, interleaved (the same timer as whole models).

The layers are those `basisrt.profile` counts MACs for (a basis layer is one unit: its basis and
scaling convs together), so each timing lines up with the cost report's MACs and bytes.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..cost import CostReport
from .timing import Timing, interleaved


@torch.no_grad()
def capture_inputs(model: nn.Module, x: Tensor, names: set[str]) -> dict[str, Tensor]:
    """Input tensor of every module in `names` during one eval forward pass of `x` (first call)."""
    inputs: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(mod: nn.Module, args: tuple, out: object) -> None:  # returns None: output unchanged
            if name not in inputs and args and isinstance(args[0], Tensor):
                inputs[name] = args[0].detach().clone()
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if n in names]
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return inputs


def time_layers(model: nn.Module, x: Tensor, cost: CostReport, *, rounds: int, warmup: int,
                min_pass_s: float, progress: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Seconds per call of every layer of `cost` that does MACs, run alone on its captured input."""
    names = {l.name for l in cost.layers if l.macs}
    inputs = capture_inputs(model, x, names)
    modules = dict(model.named_modules())

    def call(m: nn.Module, t: Tensor) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return m(t)
        return run

    candidates = {n: call(modules[n], inputs[n]) for n in (l.name for l in cost.layers) if n in inputs}
    return interleaved(candidates, rounds=rounds, warmup=warmup, min_pass_s=min_pass_s, progress=progress)
