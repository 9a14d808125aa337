"""`decompose(model)`: replace every eligible Conv2d / Linear by its exact basis form."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

from torch import nn

from .layers import BasisConv2d, BasisLayer, BasisLinear, inside_basis_layer
from .svd import full_rank

_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)


@dataclass
class DecomposeReport:
    """What `decompose` did: the model, each decomposed layer's rank, each skipped layer's reason."""

    model: nn.Module
    decomposed: dict[str, str] = field(default_factory=dict)  # name -> "rank r x groups g"
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it was left as is

    def __str__(self) -> str:
        lines = [f"decomposed {len(self.decomposed)} layers, left {len(self.skipped)} as they are"]
        lines += [f"  {n:<40} {d}" for n, d in self.decomposed.items()]
        lines += [f"  {n:<40} skipped: {why}" for n, why in self.skipped.items()]
        return "\n".join(lines)


def why_not(module: nn.Module) -> str | None:
    """Why `module` cannot (usefully) be decomposed, or None if it can."""
    if isinstance(module, BasisLayer):
        return "already a basis layer"
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return "lazy layer with uninitialised weights: run one forward pass first"
    if isinstance(module, _UNSUPPORTED):
        return f"unsupported layer type {type(module).__name__}: only Conv2d and Linear are decomposed"
    if type(module) not in (nn.Conv2d, nn.Linear):
        return f"unsupported layer type {type(module).__name__}: only Conv2d and Linear are decomposed"
    if not module.weight.is_floating_point():
        return f"weight dtype {module.weight.dtype} is not floating point"
    groups = getattr(module, "groups", 1)
    if groups > 1 and groups == module.in_channels:
        return "depthwise conv (rank 1 per group): nothing to gain"
    if full_rank(module.weight.shape, groups) <= 1:
        return "rank 1 per group: nothing to prune"
    return None


def decompose_layer(module: nn.Module) -> BasisConv2d | BasisLinear:
    """The exact basis form of one Conv2d or Linear; raises ValueError naming why it cannot be."""
    reason = why_not(module)
    if reason is not None:
        raise ValueError(f"cannot decompose {type(module).__name__}: {reason}")
    return BasisConv2d.from_conv(module) if isinstance(module, nn.Conv2d) else BasisLinear.from_linear(module)


def decompose(
    model: nn.Module,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    inplace: bool = False,
) -> DecomposeReport:
    """Replace every eligible `nn.Conv2d` and `nn.Linear` in `model` by a basis layer.

    Each replacement is an exact full-rank SVD decomposition (DESIGN §1), so the model computes
    the same function; only the scaling factors `alpha` are trainable afterwards. Depthwise convs,
    rank-1 layers and unsupported layer types are left as they are and listed in
    `report.skipped` with the reason.

    Args:
        model: the model (or a single layer) to decompose.
        include: if given, decompose only these module names; one that cannot be decomposed
            raises ValueError.
        exclude: module names to leave as they are (e.g. the first conv or the classifier).
        inplace: modify `model` itself instead of a deep copy.
    Returns:
        A `DecomposeReport`; `report.model` is the decomposed model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"decompose expects an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    names = {n for n, _ in model.named_modules(remove_duplicate=False)}
    wanted = None if include is None else set(include)
    exclude = set(exclude)
    for arg, given in (("include", wanted or set()), ("exclude", exclude)):
        unknown = sorted(given - names)
        if unknown:
            raise ValueError(f"{arg} names modules the model does not have: {unknown}")

    report = DecomposeReport(model)
    if isinstance(model, (nn.Conv2d, nn.Linear, *_UNSUPPORTED)):  # a single layer
        report.model = decompose_layer(model)
        report.decomposed[""] = _describe(report.model)
        return report

    replaced: dict[int, nn.Module] = {}  # a module shared by several parents gets one replacement
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if name == "" or (wanted is not None and name not in wanted):
            continue
        is_layer = isinstance(module, (nn.Conv2d, nn.Linear, *_UNSUPPORTED)) or isinstance(module, BasisLayer)
        if not is_layer or inside_basis_layer(model, name):
            continue
        if name in exclude:
            report.skipped[name] = "excluded by the caller"
            continue
        if id(module) not in replaced:
            reason = why_not(module)
            if reason is not None:
                if wanted is not None:
                    raise ValueError(f"cannot decompose {name} ({type(module).__name__}): {reason}")
                report.skipped[name] = reason
                continue
            replaced[id(module)] = decompose_layer(module)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, replaced[id(module)])
        report.decomposed[name] = _describe(replaced[id(module)])
    return report


def _describe(layer: BasisConv2d | BasisLinear) -> str:
    return f"{type(layer).__name__} rank {layer.rank}/{layer.full_rank}" + (
        f" x {layer.groups} groups" if layer.groups > 1 else "")
