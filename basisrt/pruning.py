"""Basis pruning: choose how many basis vectors each layer keeps, and which (DESIGN §1).

Criteria (all per layer, and per group for grouped convs, which keep one rank for every group):
  * "importance": the fewest vectors whose cumulative importance reaches `amount` (a fraction
    of the layer's total); scores come from `basisrt.importance` (Taylor, over target data).
  * "energy": the fewest vectors whose cumulative singular-value energy Σσ² reaches `amount`
    (data-free).
  * "ratio": keep `round(amount · full rank)` vectors, those of largest singular value.
Then `min_rank` and `multiple_of` (kernels run faster on ranks that are multiples of 8 or 16)
adjust the count. Pruning removes basis rows and scaling columns: tensors really shrink.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

import torch
from torch import Tensor, nn

from .layers import BasisConv2d, BasisLayer, BasisLinear

Method = Literal["importance", "energy", "ratio"]


@dataclass
class PruneReport:
    """Per pruned layer: (rank before, rank after), ranks per group."""

    ranks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __str__(self) -> str:
        return "\n".join(f"  {n:<40} rank {a} -> {b}" for n, (a, b) in self.ranks.items())


def keep_count(scores: Tensor, amount: float, method: Method, full_rank: int) -> int:
    """How many vectors one group keeps under `method` (scores ≥ 0, any order)."""
    if method == "ratio":
        return round(amount * full_rank)
    total = scores.sum()
    if total <= 0:
        return 0
    cum = scores.sort(descending=True).values.cumsum(0) / total
    # fewest k with cum[k-1] >= amount (tolerate float rounding at amount == 1)
    return int((cum < amount - 1e-12).sum().item()) + 1


def prune_layer_(layer: BasisConv2d | BasisLinear, scores: Tensor, amount: float, method: Method,
                 min_rank: int = 1, multiple_of: int | None = None) -> tuple[int, int]:
    """Prune one basis layer in place by per-vector `scores`; returns (rank before, after)."""
    g, r = layer.groups, layer.rank
    if scores.shape != (g * r,):
        raise ValueError(f"scores for this layer must have shape ({g * r},), got {tuple(scores.shape)}")
    per_group = scores.detach().view(g, r)
    k = max(keep_count(s, amount, method, layer.full_rank) for s in per_group)
    k = max(k, min_rank)
    if multiple_of:
        k = multiple_of * math.ceil(k / multiple_of)
    k = min(k, r)
    top = per_group.topk(k, dim=1).indices + torch.arange(g, device=scores.device).unsqueeze(1) * r
    layer.select_(top.flatten())
    return r, k


def prune_basis(
    model: nn.Module,
    method: Method = "importance",
    amount: float = 0.9,
    *,
    scores: Mapping[str, Tensor] | None = None,
    min_rank: int = 1,
    multiple_of: int | None = None,
    exclude: tuple[str, ...] = (),
) -> PruneReport:
    """Remove basis vectors from every basis layer of `model`, in place.

    Args:
        model: a model decomposed by `basisrt.decompose`.
        method: "importance" (needs `scores`), "energy" (singular values) or "ratio".
        amount: fraction of importance / energy to keep, or fraction of the rank for "ratio".
        scores: layer name -> per-vector importance, e.g. from `basisrt.taylor_importance`.
        min_rank: never keep fewer vectors per group than this.
        multiple_of: round kept ranks up to a multiple of this (e.g. 8 or 16).
        exclude: names of basis layers to leave untouched.
    """
    if method not in ("importance", "energy", "ratio"):
        raise ValueError(f"unknown pruning method {method!r}: use 'importance', 'energy' or 'ratio'")
    if not 0 < amount <= 1:
        raise ValueError(f"amount must be in (0, 1], got {amount}")
    if min_rank < 1 or (multiple_of is not None and multiple_of < 1):
        raise ValueError("min_rank and multiple_of must be positive")
    if method == "importance" and scores is None:
        raise ValueError("method='importance' needs scores (see basisrt.taylor_importance)")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BasisLayer) and n not in exclude}
    if not layers:
        raise ValueError("the model has no basis layers: run basisrt.decompose first")
    if scores is not None:
        missing = sorted(set(layers) - set(scores)) if method == "importance" else []
        if missing:
            raise ValueError(f"no importance scores for layers {missing}")
    report = PruneReport()
    for name, layer in layers.items():
        if method == "importance":
            s = scores[name].to(layer.alpha.device)
        else:  # energy and ratio both rank by singular value
            s = layer.sigma.square()
        report.ranks[name] = prune_layer_(layer, s, amount, method, min_rank, multiple_of)
    return report
