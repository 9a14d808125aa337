"""Transfer learning with basis scaling (DESIGN §1) and the paper's iterative pruning schedule.

On the target data only the basis scaling factors `α`, the normalisation layers and a new
classifier head are trained; the basis filters and `U·S` stay frozen, so no individual weight of
the source model is fine-tuned. `iterative_prune` runs the paper's loop

    train → Taylor importance → basis-prune → train → importance → prune → … → train

with one pruning amount per step. Everything is seeded (`seed_everything`, seeded loaders).
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .importance import LossFn, Rule, taylor_importance
from .layers import BasisLayer, BasisLinear
from .pruning import Method, PruneReport, prune_basis

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def find_head(model: nn.Module) -> str:
    """Name of the classifier head: the last `nn.Linear` (or `BasisLinear`) in module order."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, BasisLinear)) and n]
    if not names:
        raise ValueError("the model has no Linear layer to use as classifier head: pass head=...")
    return names[-1]


def replace_head(model: nn.Module, num_classes: int, head: str | None = None, seed: int | None = None) -> str:
    """Put a new, freshly initialised `nn.Linear(in_features, num_classes)` at `head` (default:
    `find_head`), in place; returns the head's name."""
    head = head or find_head(model)
    old = model.get_submodule(head)
    in_features = old.in_features
    ref = next(old.parameters())
    if seed is not None:
        torch.manual_seed(seed)
    new = nn.Linear(in_features, num_classes, device=ref.device, dtype=ref.dtype)
    parent, _, attr = head.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
    return head


def setup_basis_transfer(model: nn.Module, head: str | None = None, train_norm: bool = True) -> list[nn.Parameter]:
    """Freeze everything except the basis scaling factors `α`, the normalisation layers' affine
    parameters (if `train_norm`) and the classifier `head` (default: `find_head`); in place.

    Returns the trainable parameters. The model must already be decomposed (basis layers).
    """
    if not any(isinstance(m, BasisLayer) for m in model.modules()):
        raise ValueError("the model has no basis layers: run basisrt.decompose first")
    head = head or find_head(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, BasisLayer):
            m.alpha.requires_grad_(True)
        elif train_norm and isinstance(m, NORM_TYPES):
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
    for p in model.get_submodule(head).parameters():
        p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def train(
    model: nn.Module,
    loader: Iterable,
    epochs: int = 1,
    *,
    lr: float = 1e-2,
    loss_fn: LossFn = F.cross_entropy,
    params: Sequence[nn.Parameter] | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    desc: str = "train",
) -> list[float]:
    """Train the parameters that require grad (or `params`) with Adam; returns mean loss per epoch.

    Deterministic given the torch seed and a seeded loader (`basisrt.data.loader`).
    """
    params = list(params) if params is not None else trainable_parameters(model)
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    history = []
    model.train()
    for epoch in range(epochs):
        batches = loader
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", leave=False)
        total, n = 0.0, 0
        for inputs, targets in batches:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            opt.step()
            total += loss.item() * len(targets)
            n += len(targets)
            if progress:
                batches.set_postfix(loss=f"{loss.item():.3f}")
        history.append(total / max(n, 1))
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy of `model` (eval mode) on `loader`, in [0, 1]."""
    was = model.training
    model.eval()
    correct = total = 0
    for inputs, targets in loader:
        correct += (model(inputs).argmax(-1) == targets).sum().item()
        total += len(targets)
    model.train(was)
    return correct / max(total, 1)


@torch.no_grad()
def recalibrate_norms(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm's running mean and variance on `loader`, in place.

    Pruning changes what each BatchNorm sees, but its running statistics still describe the
    model before the prune; evaluated as is, a freshly pruned model can be far worse than it is
    (DESIGN §1). The statistics are reset and recomputed as an exact average over the batches
    (momentum None; a norm called several times per forward averages over all its calls). Only
    the norms run in training mode: dropout stays off, so it neither inflates the variances nor
    draws random numbers. The model's modes and the norms' momenta are restored afterwards, also
    when the loader raises (the statistics then hold the batches seen so far). Returns the number
    of norms re-estimated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    try:
        with modes_kept(model):
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
            model.eval()
            for m in norms:
                m.train()
            for i, (inputs, _) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                model(inputs)
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
    return len(norms)


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's training flag on exit, whatever the body set."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def first_layer(model: nn.Module, example_inputs: Tensor, types: type | tuple[type, ...] = BasisLayer) -> str:
    """Name of the first module of `types` that `model(example_inputs)` runs (its input layer),
    found with forward hooks rather than module order, which need not be execution order."""
    seen: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: seen.append(n) if not seen else None)
             for n, m in model.named_modules() if isinstance(m, types)]
    try:
        with torch.no_grad(), modes_kept(model):
            model.eval()(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
        raise ValueError(f"the model runs no {' / '.join(names)} on these inputs")
    return seen[0]


@dataclass
class PruneStep:
    """One step of the iterative schedule."""

    amount: float
    ranks: dict[str, tuple[int, int]]
    loss: list[float]
    accuracy: float | None = None


@dataclass
class ScheduleReport:
    steps: list[PruneStep] = field(default_factory=list)

    def __str__(self) -> str:
        lines = []
        for i, s in enumerate(self.steps):
            if not s.ranks:
                acc = "" if s.accuracy is None else f", accuracy {s.accuracy:.4f}"
                lines.append(f"final training{acc}")
                continue
            kept = sum(b for _, b in s.ranks.values())
            full = sum(a for a, _ in s.ranks.values())
            acc = "" if s.accuracy is None else f", accuracy {s.accuracy:.4f}"
            lines.append(f"step {i}: amount {s.amount}, rank kept {kept}/{full}{acc}")
        return "\n".join(lines)


def iterative_prune(
    model: nn.Module,
    train_loader: Iterable,
    schedule: Sequence[float],
    *,
    method: Method = "importance",
    epochs: int = 1,
    final_epochs: int | None = None,
    lr: float = 1e-2,
    loss_fn: LossFn = F.cross_entropy,
    min_rank: int = 1,
    multiple_of: int | None = None,
    exclude: tuple[str, ...] = (),
    importance_batches: int | None = None,
    rule: Rule = "per_batch",
    eval_loader: Iterable | None = None,
    recalibrate: bool = True,
    progress: bool = True,
) -> ScheduleReport:
    """The paper's schedule on a decomposed model prepared by `setup_basis_transfer`, in place:
    for each `amount` in `schedule`: train `epochs` → importance (Taylor over `train_loader` for
    method "importance") → `prune_basis(method, amount)`; then train `final_epochs` (default
    `epochs`). Trainable parameters are re-collected after each prune (pruning replaces `α`).

    `rule` is the Taylor accumulation rule (`basisrt.importance`). `exclude` names basis layers
    never to prune. With `recalibrate`, BatchNorm statistics are re-estimated on `train_loader`
    right after each prune (`recalibrate_norms`). Returns the per-step ranks, losses and (with
    `eval_loader`) accuracies after each step's pruning and after the final training.
    """
    report = ScheduleReport()
    for i, amount in enumerate(schedule):
        loss = train(model, train_loader, epochs, lr=lr, loss_fn=loss_fn, progress=progress,
                     desc=f"step {i + 1}/{len(schedule)} train") if epochs else []
        scores = None
        if method == "importance":
            scores = taylor_importance(model, train_loader, loss_fn, max_batches=importance_batches,
                                       progress=progress, rule=rule)
        pr: PruneReport = prune_basis(model, method, amount, scores=scores, min_rank=min_rank,
                                      multiple_of=multiple_of, exclude=exclude)
        if recalibrate:
            recalibrate_norms(model, train_loader, importance_batches)
        acc = evaluate(model, eval_loader) if eval_loader is not None else None
        report.steps.append(PruneStep(amount, pr.ranks, loss, acc))
    final = epochs if final_epochs is None else final_epochs
    if final:
        loss = train(model, train_loader, final, lr=lr, loss_fn=loss_fn, progress=progress, desc="final train")
        acc = evaluate(model, eval_loader) if eval_loader is not None else None
        report.steps.append(PruneStep(float("nan"), {}, loss, acc))
    return report
