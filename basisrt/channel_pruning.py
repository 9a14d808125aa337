"""Channel pruning with torch-pruning, and double pruning (DESIGN §1).

`channel_prune` removes whole output channels of the dense model's Conv2d / Linear layers with
torch-pruning's dependency graph, which keeps residual adds, concatenations, grouped convs and
the BatchNorms that follow them consistent. Channel importance is torch-pruning's first-order
Taylor importance `|Σ w · ∂L/∂w|` per channel group (gradients accumulated over a few batches)
or weight magnitude (data-free). The classifier head never loses outputs.

`double_prune` is the paper's combination: channel-prune the dense model first, then decompose
what remains and basis-prune it (`basisrt.prune_basis`). Training between the steps (the
paper's basis-scaling transfer) is composed by `basisrt.workflow` / `bench/paper_experiment.py`
from `channel_prune`, `decompose`, `basisrt.transfer.iterative_prune`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .decomposition import DecomposeReport, decompose
from .importance import LossFn, taylor_importance
from .layers import BasisLayer
from .pruning import Method, PruneReport, prune_basis
from .transfer import find_head

ChannelImportance = Literal["taylor", "magnitude"]


@dataclass
class ChannelPruneReport:
    """Output channels (or features) per Conv2d / Linear layer, before -> after, and parameter counts."""

    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    params: tuple[int, int] = (0, 0)

    def __str__(self) -> str:
        lines = [f"channel pruning: params {self.params[0]:,} -> {self.params[1]:,}"]
        lines += [f"  {n:<40} channels {a} -> {b}" for n, (a, b) in self.channels.items() if a != b]
        return "\n".join(lines)


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def channel_prune(
    model: nn.Module,
    example_inputs: Tensor,
    amount: float,
    *,
    importance: ChannelImportance = "taylor",
    loader: Iterable | None = None,
    loss_fn: LossFn = F.cross_entropy,
    max_batches: int | None = None,
    head: str | None = None,
    ignored_layers: Sequence[nn.Module] = (),
    round_to: int | None = None,
    global_pruning: bool = False,
) -> ChannelPruneReport:
    """Remove the fraction `amount` of output channels of every prunable layer, in place.

    Args:
        model: a dense model (plain Conv2d / Linear: channel-prune before `decompose`).
        example_inputs: an input batch for tracing the dependency graph.
        amount: fraction of channels removed per layer (of the whole model with
            `global_pruning`), in [0, 1).
        importance: "taylor" (needs `loader`: gradients of `loss_fn` accumulated over
            `max_batches` batches, the model in eval mode) or "magnitude" (L2 norm, data-free).
        head: name of the classifier head kept whole (default: the last Linear); with
            `ignored_layers`, modules whose outputs are not pruned.
        round_to: keep channel counts multiples of this (e.g. 8 or 16).
    Returns:
        A `ChannelPruneReport` (per layer output widths before/after, parameter counts).
    """
    import torch_pruning as tp

    if any(isinstance(m, BasisLayer) for m in model.modules()):
        raise ValueError("channel_prune works on the dense model: channel-prune first, then decompose")
    if not 0 <= amount < 1:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    before, params_before = _widths(model), sum(p.numel() for p in model.parameters())
    if amount == 0:
        return ChannelPruneReport({n: (w, w) for n, w in before.items()}, (params_before, params_before))
    ignored = [model.get_submodule(head or find_head(model)), *ignored_layers]
    if importance == "taylor":
        if loader is None:
            raise ValueError("importance='taylor' needs a loader of (inputs, targets) batches")
        imp = tp.importance.TaylorImportance()
    elif importance == "magnitude":
        imp = tp.importance.MagnitudeImportance(p=2)
    else:
        raise ValueError(f"unknown channel importance {importance!r}: use 'taylor' or 'magnitude'")

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {m: m.training for m in model.modules()}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        pruner = tp.pruner.BasePruner(model, example_inputs, importance=imp, pruning_ratio=amount,
                                      ignored_layers=ignored, round_to=round_to, global_pruning=global_pruning)
        if importance == "taylor":
            model.eval()
            model.zero_grad(set_to_none=True)
            seen = 0
            for i, (inputs, targets) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                loss_fn(model(inputs), targets).backward()
                seen += 1
            if not seen:
                raise ValueError("the loader yielded no batches")
        pruner.step()
    finally:
        model.zero_grad(set_to_none=True)
        for m, training in modes.items():
            m.training = training
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))
    after = _widths(model)
    return ChannelPruneReport({n: (w, after[n]) for n, w in before.items()},
                              (params_before, sum(p.numel() for p in model.parameters())))


@dataclass
class DoublePruneReport:
    """What `double_prune` did: the model, its channel pruning, decomposition and basis pruning."""

    model: nn.Module
    channels: ChannelPruneReport
    decomposition: DecomposeReport
    basis: PruneReport

    def __str__(self) -> str:
        return f"{self.channels}\n{self.decomposition}\nbasis pruning:\n{self.basis}"


def double_prune(
    model: nn.Module,
    example_inputs: Tensor,
    *,
    channel_amount: float = 0.5,
    basis_method: Method = "importance",
    basis_amount: float = 0.9,
    channel_importance: ChannelImportance = "taylor",
    loader: Iterable | None = None,
    loss_fn: LossFn = F.cross_entropy,
    max_batches: int | None = None,
    head: str | None = None,
    decompose_head: bool = False,
    min_rank: int = 1,
    multiple_of: int | None = None,
    round_to: int | None = None,
    inplace: bool = False,
) -> DoublePruneReport:
    """Channel-prune the dense `model`, then decompose it and basis-prune what remains.

    `loader` feeds both Taylor importances (channels: torch-pruning's; basis vectors:
    `basisrt.taylor_importance`). The classifier head keeps its outputs and stays dense unless
    `decompose_head`. With `channel_amount=0` and `basis_amount=1` ("energy"/"ratio") the result
    computes the same function as `model`.
    """
    if not inplace:
        model = copy.deepcopy(model)
    head = head or find_head(model)
    channels = channel_prune(model, example_inputs, channel_amount, importance=channel_importance, loader=loader,
                             loss_fn=loss_fn, max_batches=max_batches, head=head, round_to=round_to)
    dec = decompose(model, exclude=() if decompose_head else (head,), inplace=True)
    scores = None
    if basis_method == "importance":
        if loader is None:
            raise ValueError("basis_method='importance' needs a loader")
        scores = taylor_importance(dec.model, loader, loss_fn, max_batches=max_batches)
    basis = prune_basis(dec.model, basis_method, basis_amount, scores=scores, min_rank=min_rank,
                        multiple_of=multiple_of)
    return DoublePruneReport(dec.model, channels, dec, basis)
