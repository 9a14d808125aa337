"""Cost accounting in one place: MACs and bytes of dense and basis layers, and `profile`
(the compiler's choices built on these counts: basisrt.compiler.cost_model).

MACs of a dense conv/linear with K = (C_in/groups)·kh·kw inputs per output, at P output pixels
(or tokens): P·K·C_out. A basis pair of rank r per group: P·r·groups·K (basis conv) +
P·C_out·r (scaling conv) = P·r·(groups·K + C_out). Biases, BN and activations are not MACs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .layers import BasisConv2d, BasisLayer, BasisLinear, inside_basis_layer


def dense_macs(pixels: int, k: int, c_out: int) -> int:
    """MACs of a dense conv/linear: P·K·C_out (K per group)."""
    return pixels * k * c_out


def basis_macs(pixels: int, k: int, c_out: int, rank: int, groups: int = 1) -> int:
    """MACs of a basis pair with `rank` vectors per group: P·r·(groups·K + C_out)."""
    return pixels * rank * (groups * k + c_out)


@dataclass
class LayerCost:
    """Cost of one layer for one forward pass of the example input."""

    name: str
    kind: str
    params: int
    macs: int = 0
    weight_bytes: int = 0
    act_bytes: int = 0  # input read + output written
    intermediate_bytes: int = 0  # basis layers: T written and read back when not fused
    rank: str = ""


@dataclass
class CostReport:
    """Per-layer costs and model totals (`params` counts every parameter of the model once)."""

    layers: list[LayerCost] = field(default_factory=list)
    params: int = 0

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def bytes(self) -> int:
        return sum(l.weight_bytes + l.act_bytes + l.intermediate_bytes for l in self.layers)

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "bytes": self.bytes,
                "layers": [asdict(l) for l in self.layers]}

    def table(self, all_layers: bool = False) -> str:
        """A text table: by default only the layers that do MACs."""
        rows = [l for l in self.layers if all_layers or l.macs]
        w = max([len(l.name) for l in rows] + [5])
        out = [f"{'layer':<{w}}  {'kind':<12} {'rank':>9} {'params':>10} {'MMACs':>9} {'MB moved':>9}"]
        for l in rows:
            mb = (l.weight_bytes + l.act_bytes + l.intermediate_bytes) / 1e6
            out.append(f"{l.name:<{w}}  {l.kind:<12} {l.rank:>9} {l.params:>10,} {l.macs / 1e6:>9.2f} {mb:>9.2f}")
        out.append(f"{'total':<{w}}  {'':<12} {'':>9} {self.params:>10,} {self.macs / 1e6:>9.2f} "
                   f"{self.bytes / 1e6:>9.2f}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _layer_cost(name: str, m: nn.Module, x: Tensor, y: Tensor) -> LayerCost:
    params = sum(p.numel() for p in m.parameters(recurse=isinstance(m, BasisLayer)))
    c = LayerCost(name, type(m).__name__, params, act_bytes=_nbytes(x) + _nbytes(y))
    if isinstance(m, (nn.Conv2d, BasisConv2d)):
        conv = m.basis if isinstance(m, BasisConv2d) else m
        pixels = y.shape[0] * y.shape[2] * y.shape[3] if y.dim() == 4 else y.shape[1] * y.shape[2]
        k = conv.weight[0].numel()
        c_out = y.shape[-3]
    elif isinstance(m, (nn.Linear, BasisLinear)):
        pixels, k, c_out = y.numel() // y.shape[-1], x.shape[-1], y.shape[-1]
    else:
        c.weight_bytes = sum(_nbytes(p) for p in m.parameters(recurse=False))
        return c
    if isinstance(m, BasisLayer):
        c.macs = basis_macs(pixels, k, c_out, m.rank, m.groups)
        c.rank = f"{m.rank}/{m.full_rank}"
        # inference weights: basis + coeff·diag(alpha) + bias (alpha folds into coeff)
        c.weight_bytes = sum(_nbytes(t) for t in (m.basis.weight, m.coeff) + ((m.bias,) if m.bias is not None else ()))
        c.intermediate_bytes = 2 * pixels * m.rank * m.groups * y.element_size()
    else:
        c.macs = dense_macs(pixels, k, c_out)
        c.weight_bytes = sum(_nbytes(p) for p in m.parameters())
    return c


@torch.no_grad()
def profile(model: nn.Module, example_input: Tensor | tuple) -> CostReport:
    """Per-layer parameters, MACs and bytes moved for one forward pass of `example_input`.

    Exact for Conv2d, Linear and basis layers; other leaf modules (BatchNorm, activations,
    pooling) are listed with their parameters and activation bytes and no MACs. Operations
    outside modules (e.g. a functional matmul) are not counted. The model runs in eval mode
    (so BatchNorm statistics are not touched) and is returned to its previous mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"profile expects an nn.Module, got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    report = CostReport(params=sum(p.numel() for p in model.parameters()))
    seen: dict[int, LayerCost] = {}
    modes = {m: m.training for m in model.modules()}

    def hook(name: str):
        def record(m: nn.Module, args: tuple, out: object) -> None:
            if not (args and isinstance(args[0], Tensor) and isinstance(out, Tensor)):
                return
            c = _layer_cost(name, m, args[0], out)
            if id(m) in seen:  # a module called twice: add its work, count its params once
                prev = seen[id(m)]
                prev.macs += c.macs
                prev.act_bytes += c.act_bytes
                prev.intermediate_bytes += c.intermediate_bytes
            else:
                seen[id(m)] = c
                report.layers.append(c)
        return record

    handles = []
    for name, m in model.named_modules():
        if not inside_basis_layer(model, name) and (isinstance(m, BasisLayer) or not any(True for _ in m.children())):
            handles.append(m.register_forward_hook(hook(name)))
    try:
        model.eval()
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return report


def nominal_speedup(dense: CostReport, pruned: CostReport) -> float:
    """How many times fewer MACs `pruned` needs than `dense`."""
    return dense.macs / pruned.macs if pruned.macs else math.inf
