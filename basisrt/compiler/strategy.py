"""How each plan step runs: the Strategy names, and the one factory that builds a conv/linear
step module from (strategy, layer, geometry, backend)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

from torch import Tensor, fx, nn

from .cpu_steps import FusedConv2d, FusedLinear, TorchConvStep
from .geometry import LINEAR, ConvGeometry


class Strategy(str, Enum):
    """A plan step's kind (`Step.strategy`; plan files store the value)."""

    FUSED = "fused"  # basis pair by our low-rank kernel: basis conv and scaling conv in one pass
    PAIR = "pair"  # basis pair as two PyTorch (oneDNN) convs
    DENSE = "dense"  # one dense conv by the plan's dense backend (a plain layer)
    DENSE_FOLD = "dense-fold"  # a basis pair folded into one dense conv, by the plan's dense backend
    DENSE_BASISRT = "dense-basisrt"  # one dense conv by our kernel, whatever the plan's dense backend
    POOL = "pool"
    AFFINE = "affine"  # a BatchNorm, scalar op or activation no conv absorbed
    NORM = "norm"  # a layer norm over each pixel's channels
    ELTWISE = "eltwise"  # an add or gate mul of two maps
    GATHER = "gather"  # a channel shuffle or slice
    PIXEL_GATHER = "pixel_gather"  # nearest upsampling or zero padding no conv absorbed
    RESAMPLE = "resample"  # bilinear upsampling
    SOFTMAX = "softmax"  # a softmax over channel groups, rows or pixels (attention)
    TORCH = "torch"  # run by PyTorch

    __str__ = str.__str__  # "fused", not "Strategy.FUSED", in tables and f-strings
    __format__ = str.__format__

    @property
    def dense(self) -> bool:
        """Runs one dense conv (the basis pair folded, if it was one)."""
        return self in (Strategy.DENSE, Strategy.DENSE_FOLD, Strategy.DENSE_BASISRT)

    def ours(self) -> Strategy:
        """The same work by our kernels only (a plan that must run as one native program)."""
        return {Strategy.DENSE: Strategy.DENSE_BASISRT, Strategy.DENSE_FOLD: Strategy.DENSE_BASISRT,
                Strategy.PAIR: Strategy.FUSED}.get(self, self)


@dataclass
class Layer:
    """A conv/linear being turned into a step: weights in float32, fusions accumulated."""

    weight: Tensor  # dense weight, or basis weight when scale is not None
    bias: Tensor | None
    scale: Tensor | None = None  # (C_out, r) scaling weight of a basis pair
    activation: str | None = None
    residual: fx.Node | None = None

    def scale_output(self, gamma: Tensor, beta: Tensor) -> None:
        """y ← gamma·y + beta per output channel (a folded BatchNorm)."""
        if self.scale is not None:
            self.scale = self.scale * gamma[:, None]
        else:
            self.weight = self.weight * gamma.view(-1, *[1] * (self.weight.dim() - 1))
        self.bias = beta + gamma * (self.bias if self.bias is not None else 0)


# Picks how a layer runs: FUSED or PAIR for a basis pair (`fused` is None for a plain layer), or a
# dense strategy (DENSE: the plan's dense backend; DENSE_BASISRT: ours).
Chooser = Callable[[str, "Layer | None", Layer, "ConvGeometry | None"], Strategy]


def make_step(strategy: Strategy, layer: Layer, geometry: ConvGeometry | None, *, backend: str = "cpu",
              dense_backend: str = "torch", num_threads: int | None = None,
              map_chw: tuple[int, int, int] | None = None) -> nn.Module:
    """The step module that runs `layer` by `strategy` (a basis layer for FUSED / PAIR, a dense one
    otherwise). `geometry` None is a linear step, reading a flattened (C, H, W) map when `map_chw`
    is given. backend "triton": fused pairs run the Triton kernel (groups 1, the epilogues it
    has), everything else PyTorch (our C++ kernels are CPU-only); backend "torch": every layer by
    PyTorch (a basis pair as its two convs)."""
    strategy = Strategy(strategy)
    if strategy.dense != (layer.scale is None):
        kind = "dense" if layer.scale is None else "basis"
        raise ValueError(f"strategy {strategy.value} does not run a {kind} layer")
    residual = layer.residual is not None
    conv = geometry or LINEAR
    if backend == "triton":
        if strategy is Strategy.FUSED and layer.activation in (None, "relu", "relu6") and conv.groups == 1:
            from .gpu_steps import GPUFusedConv2d, GPUFusedLinear  # triton is optional
            if geometry is None:
                return GPUFusedLinear(layer.weight, layer.bias, layer.scale, layer.activation, residual)
            return GPUFusedConv2d(layer.weight, layer.bias, **conv.conv_kwargs(), scale=layer.scale,
                                  activation=layer.activation, residual=residual)
        in_torch = True
    elif backend == "torch":
        in_torch = True
    elif strategy is Strategy.DENSE_BASISRT or strategy is Strategy.FUSED:
        in_torch = False
    elif strategy is Strategy.PAIR:
        in_torch = True
    else:
        in_torch = dense_backend == "torch"
    if in_torch:
        return TorchConvStep(layer.weight, layer.bias, **conv.conv_kwargs(), scale=layer.scale,
                             activation=layer.activation, residual=residual, linear=geometry is None)
    if geometry is not None:
        return FusedConv2d(layer.weight, layer.bias, **conv.conv_kwargs(), scale=layer.scale,
                           activation=layer.activation, residual=residual, num_threads=num_threads)
    return FusedLinear(layer.weight, layer.bias, layer.scale, layer.activation, residual, num_threads, map_chw)
