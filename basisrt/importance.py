"""Importance of basis vectors (DESIGN §1): first-order Taylor over target data, or data-free energy.

The first-order Taylor expansion of the loss around the current scaling factors says that
removing basis vector `j` (setting `α_j = 0`) changes the loss `L_b` of batch `b` (a mean over
the batch for the usual losses) by about `-t_bj`, `t_bj = α_j · ∂L_b/∂α_j`. How the per-batch
terms become one score is the accumulation rule, in one place (`TaylorAccumulator`):

* `"per_batch"` (default): `I_j = mean_b t_bj²`, squared per mini-batch, then averaged, as
  Molchanov et al. (2019)'s reference code does. Every batch adds evidence of the same kind, so
  the scores' shares (what `prune_basis(method="importance", amount=p)` keeps) do not depend on
  how many batches the data set has.
* `"squared_sum"`: `I_j = (Σ_b t_bj)²`, the squared estimated change of the whole data set's loss.
  A vector whose per-batch effect keeps one sign gains about a factor of the number of batches
  over one whose effect varies in sign, so `p` means something different for every data-set size:
  kept for comparison (it was basisrt's rule before).
"""
from __future__ import annotations

from typing import Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import BasisLayer

LossFn = Callable[[Tensor, Tensor], Tensor]
Rule = Literal["per_batch", "squared_sum"]
RULES: tuple[str, ...] = ("per_batch", "squared_sum")


class TaylorAccumulator:
    """Holds the accumulation rule (module docstring): `add` one batch's terms, `result` the scores."""

    def __init__(self, rule: Rule = "per_batch") -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.rule = rule
        self.sums: dict[str, Tensor] = {}  # float64: Σ_b t_bj² ("per_batch") or Σ_b t_bj ("squared_sum")
        self.batches = 0  # counted by the caller, once per batch

    def add(self, name: str, alpha: Tensor, grad: Tensor) -> None:
        """Add one batch's first-order terms `t_bj = α_j · ∂L_b/∂α_j` for every vector of layer `name`."""
        term = (alpha.detach() * grad.detach()).double()
        if self.rule == "per_batch":
            term = term.square()
        self.sums[name] = self.sums[name] + term if name in self.sums else term

    def result(self) -> dict[str, Tensor]:
        """Per layer, float32 scores of shape (groups · rank,)."""
        if self.rule == "per_batch":
            return {n: (s / max(self.batches, 1)).float() for n, s in self.sums.items()}
        return {n: s.square().float() for n, s in self.sums.items()}


def basis_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> basis layer for every `BasisConv2d` / `BasisLinear` in `model`."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BasisLayer)}


def taylor_importance(
    model: nn.Module,
    loader: Iterable,
    loss_fn: LossFn = F.cross_entropy,
    *,
    max_batches: int | None = None,
    train_mode: bool = False,
    progress: bool = False,
    rule: Rule = "per_batch",
) -> dict[str, Tensor]:
    """First-order Taylor importance of every basis scaling factor, accumulated over `loader`.

    For every batch `(inputs, targets)` of `loader` the loss `loss_fn(model(inputs), targets)` is
    differentiated with respect to the `α` of every basis layer only (no `.grad` of the model is
    written or changed), and `TaylorAccumulator` combines the terms `α_j · ∂L_b/∂α_j` by `rule`.

    Args:
        model: a model decomposed by `basisrt.decompose`.
        loader: iterable of `(inputs, targets)` batches (e.g. a `DataLoader`).
        loss_fn: loss of `(outputs, targets)`; cross-entropy by default.
        max_batches: stop after this many batches.
        train_mode: run the model in training mode (BatchNorm batch statistics, dropout);
            by default eval mode, so BatchNorm statistics are not touched. The model's modes
            are restored afterwards.
        progress: show a tqdm progress bar.
        rule: "per_batch" (default, `mean_b (α_j · ∂L_b/∂α_j)²`) or "squared_sum"
            (`(Σ_b α_j · ∂L_b/∂α_j)²`); the module docstring says why the default is per batch.
    Returns:
        basis layer name -> importance tensor of shape `(groups · rank,)`, the key format
        `basisrt.prune_basis(..., scores=...)` takes.
    """
    layers = basis_layers(model)
    if not layers:
        raise ValueError("the model has no basis layers: run basisrt.decompose first")
    modes = {m: m.training for m in model.modules()}
    flags = {n: m.alpha.requires_grad for n, m in layers.items()}
    acc = TaylorAccumulator(rule)
    batches = loader
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(loader, desc="taylor importance", leave=False, total=_len(loader, max_batches))
    try:
        model.train(train_mode)
        for m in layers.values():
            m.alpha.requires_grad_(True)
        alphas = [m.alpha for m in layers.values()]
        for i, (inputs, targets) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            loss = loss_fn(model(inputs), targets)
            grads = torch.autograd.grad(loss, alphas, allow_unused=True)
            for (name, layer), g in zip(layers.items(), grads):
                acc.add(name, layer.alpha, torch.zeros_like(layer.alpha) if g is None else g)
            acc.batches += 1
    finally:
        for m, training in modes.items():
            m.training = training
        for n, m in layers.items():
            m.alpha.requires_grad_(flags[n])
    if acc.batches == 0:
        raise ValueError("the loader yielded no batches")
    return acc.result()


def energy_importance(model: nn.Module) -> dict[str, Tensor]:
    """Data-free importance: each basis vector's singular-value energy σ_j² (what `prune_basis`
    uses for `method="energy"`), per basis layer."""
    layers = basis_layers(model)
    if not layers:
        raise ValueError("the model has no basis layers: run basisrt.decompose first")
    return {n: m.sigma.detach().square().float().clone() for n, m in layers.items()}


def _len(loader: Iterable, cap: int | None) -> int | None:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return cap
    return n if cap is None else min(n, cap)
