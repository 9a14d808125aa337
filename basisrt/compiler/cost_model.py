"""The compiler's cost model in one place: what each step costs, and the rules that choose
between ways of running it (by MAC count, by measured time, mixed plan against native plan).

MAC counts themselves are basisrt.cost's (dense_macs, basis_macs); the timing procedures that
feed the measured rules are autotune's.
"""
from __future__ import annotations

import math

from torch import nn

from .. import _C
from ..cost import basis_macs, dense_macs
from .cpu_steps import FusedConv2d, FusedLinear, TorchConvStep, _round_up
from .geometry import ConvGeometry
from .gpu_steps import GPUFusedConv2d, GPUFusedLinear
from .strategy import Layer, Strategy

# A mixed plan (some PyTorch steps, step by step) is kept over the all-native one only if it times
# this much faster: the native program also keeps PyTorch's spinning OpenMP workers away from
# whatever runs next, which the timing does not see, and one disturbed timing block once handed a
# ResNet-18 plan to a mixed plan twice as slow.
NATIVE_MARGIN = 0.9


def lowrank_pays(k: int, c_out: int, rank: int, groups: int = 1) -> bool:
    """True when the basis pair needs fewer MACs than the dense layer it came from (K per group)."""
    return basis_macs(1, k, c_out, rank, groups) < dense_macs(1, k, c_out)


def grouped_lowrank_pays(cg_in: int, taps: int, c_out: int, rank: int, groups: int) -> bool:
    """For a grouped conv: True when the basis pair needs fewer vector lanes of multiply-adds per
    output pixel than the dense fold, in the CPU kernels' shapes. A group's few output channels or
    ranks fill a vector only in part: off the channel-dot path (lowrank_dot_path) the rank is
    padded to whole vectors, and a dense group of 4 to 16 output channels runs on the grouped
    kernel's 4- or 8-float vectors (grouped_path). By MACs, a rank-1 pair of 8-channel groups (RegNetY,
    ResNeXt) looked 8x cheaper and ran 1.4x slower than the dense fold."""
    c_in, cg_out, k = cg_in * groups, c_out // groups, taps * cg_in
    first = k * rank if _C.lowrank_dot_path(cg_in, rank) else k * _round_up(rank)  # COL_BLOCK lanes
    grouped_lanes = 8 if cg_out % 8 == 0 else 4  # the grouped kernel's vectors
    dense = k * (_round_up(cg_out, grouped_lanes) if _C.grouped_path(groups, c_in, c_out, 0) else _round_up(cg_out))
    return first + rank * _round_up(cg_out) < dense


def cost_model_choice(name: str, fused: Layer | None, dense: Layer, geometry: ConvGeometry | None) -> Strategy:
    """A `strategy.Chooser`: the fused low-rank kernel when it needs fewer MACs than the dense fold
    (for a grouped conv: fewer vector lanes of them, grouped_lowrank_pays)."""
    if fused is None:
        return Strategy.DENSE
    groups = geometry.groups if geometry else 1
    c_out, rank = fused.scale.shape
    if groups > 1 and not _C.depthwise_path(groups, fused.weight.shape[1] * groups, c_out, 0):
        pays = grouped_lowrank_pays(fused.weight.shape[1], fused.weight[0].numel() // fused.weight.shape[1],
                                    c_out, rank, groups)
    else:
        pays = lowrank_pays(fused.weight[0].numel(), c_out, rank, groups)
    return Strategy.FUSED if pays else Strategy.DENSE


def torch_wins(torch_s: float, ours_s: float, native_loss_s: float = 0.0, penalty_s: float = 0.0) -> bool:
    """Whether a PyTorch step that times `torch_s` beats our `ours_s`, once charged what the plan
    loses by leaving the native program (`native_loss_s`) and the slowdown its spinning workers
    cause our next step (`penalty_s`, when measured)."""
    return torch_s + native_loss_s + max(penalty_s, 0.0) < ours_s


def keep_mixed(mixed_s: float, native_s: float) -> bool:
    """Whether the mixed plan's time beats the all-native plan's by NATIVE_MARGIN."""
    return mixed_s < NATIVE_MARGIN * native_s


def step_macs(m: nn.Module, out_shape: tuple[int, ...] | None) -> int:
    """MACs a step module runs to produce an output of `out_shape` ((N, C, H, W) for a conv,
    (..., C) for a linear): what it runs, so a dense fold counts dense MACs and a basis pair its
    two convs. 0 for modules that do no MACs, or an unknown shape."""
    if out_shape is None:
        return 0
    if isinstance(m, (FusedConv2d, GPUFusedConv2d, TorchConvStep)):
        g, cin, cout, rank = m.geometry, m.in_channels, m.out_channels, m.rank
        linear = isinstance(m, (FusedLinear, GPUFusedLinear)) or getattr(m, "linear", False)
    elif isinstance(m, (nn.Conv2d, nn.Linear)):  # run by PyTorch as it is
        linear = isinstance(m, nn.Linear)
        g = ConvGeometry(kernel=(1, 1) if linear else tuple(m.kernel_size), groups=getattr(m, "groups", 1))
        cin, cout, rank = m.weight.shape[1] * g.groups, m.weight.shape[0], 0
    else:
        return 0
    pixels = math.prod(out_shape[:-1]) if linear else out_shape[0] * math.prod(out_shape[2:])
    k = g.kernel[0] * g.kernel[1] * cin // g.groups
    return basis_macs(pixels, k, cout, rank, g.groups) if rank else dense_macs(pixels, k, cout)
