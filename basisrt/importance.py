"""Importance of basis vectors (DESIGN §1): first-order Taylor over target data, or data-free energy.

The accumulation rule lives in one place, `TaylorAccumulator`:

    I_j = ( Σ_batches  α_j · ∂L_b/∂α_j )²

where `L_b` is the loss of batch `b` as `loss_fn` returns it (a mean over the batch for the
usual losses) and `α_j` is the scaling factor of basis vector `j`. The first-order Taylor
expansion of the loss around the current `α` says that removing vector `j` (setting `α_j = 0`)
changes the loss of batch `b` by about `-α_j · ∂L_b/∂α_j`; summing those signed changes over
the data first and squaring after (Molchanov et al. 2019) gives the squared estimated change of
the loss over the whole data set. Summing before squaring lets opposite-signed batch
contributions cancel, as they do in the loss itself.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import BasisLayer

LossFn = Callable[[Tensor, Tensor], Tensor]


class TaylorAccumulator:
    """Holds the accumulation rule: add `α · ∂L/∂α` per batch, square the sums at the end."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.batches = 0

    def add(self, name: str, alpha: Tensor, grad: Tensor) -> None:
        """Add one batch's first-order term `α_j · ∂L_b/∂α_j` for every vector of layer `name`."""
        term = (alpha.detach() * grad.detach()).double()
        self.sums[name] = self.sums[name] + term if name in self.sums else term

    def result(self) -> dict[str, Tensor]:
        """`I_j = (Σ_b α_j · ∂L_b/∂α_j)²` per layer, as float32 tensors of shape (groups · rank,)."""
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
) -> dict[str, Tensor]:
    """First-order Taylor importance of every basis scaling factor, accumulated over `loader`.

    For every batch `(inputs, targets)` of `loader` the loss `loss_fn(model(inputs), targets)` is
    differentiated with respect to the `α` of every basis layer only (no `.grad` of the model is
    written or changed), and `TaylorAccumulator` applies `I_j = (Σ_batches α_j · ∂L/∂α_j)²`.

    Args:
        model: a model decomposed by `basisrt.decompose`.
        loader: iterable of `(inputs, targets)` batches (e.g. a `DataLoader`).
        loss_fn: loss of `(outputs, targets)`; cross-entropy by default.
        max_batches: stop after this many batches.
        train_mode: run the model in training mode (BatchNorm batch statistics, dropout);
            by default eval mode, so BatchNorm statistics are not touched. The model's modes
            are restored afterwards.
        progress: show a tqdm progress bar.
    Returns:
        basis layer name -> importance tensor of shape `(groups · rank,)`, the key format
        `basisrt.prune_basis(..., scores=...)` takes.
    """
    layers = basis_layers(model)
    if not layers:
        raise ValueError("the model has no basis layers: run basisrt.decompose first")
    modes = {m: m.training for m in model.modules()}
    flags = {n: m.alpha.requires_grad for n, m in layers.items()}
    acc = TaylorAccumulator()
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
