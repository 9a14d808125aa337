"""The one place where the C++ fused conv kernel is launched: weight packing and the step module.

Activations inside a plan are logical NCHW tensors stored channels_last (physically NHWC), so
the kernel reads them without copies and every PyTorch op between steps still sees an ordinary
NCHW tensor.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _C
from ..layers import MapSoftmax
from . import activations
from .geometry import ConvGeometry, window_out

COL_BLOCK = _C.COL_BLOCK  # the kernel's packed column block (csrc/fused_conv.h: kColBlock)


def _round_up(v: int, m: int = COL_BLOCK) -> int:
    return -(-v // m) * m


def packed_shapes(kernel: tuple[int, int], in_channels: int, out_channels: int, groups: int,
                  rank: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Shapes of a conv step's packed B and A (None: no A) as FusedConv2d stores them, in the
    layouts whose sizes csrc/fused_conv.h's packed_layout gives; the plan-file checks use them too.
    Depthwise: B (kh·kw, C). Dense: B (g, K, Cg_pad). Basis pair: B (g, K, r_pad), or (g, r, K) on
    the channel-dot path, and A (g, r_pad, Cg_pad)."""
    k, cg = kernel[0] * kernel[1] * (in_channels // groups), out_channels // groups
    if rank == 0:
        if _C.depthwise_path(groups, in_channels, out_channels, 0):
            return (kernel[0] * kernel[1], out_channels), None
        return (groups, k, _round_up(cg)), None
    dot = _C.lowrank_dot_path(in_channels // groups, rank)
    return (groups, rank, k) if dot else (groups, k, _round_up(rank)), (groups, _round_up(rank), _round_up(cg))


def _taps_last(w: Tensor, groups: int) -> Tensor:
    """(groups*n, Cg, kh, kw) → (groups, K, n) with K in NHWC tap order (ky, kx, ci)."""
    n = w.shape[0] // groups
    return w.permute(0, 2, 3, 1).reshape(groups, n, -1).transpose(1, 2)


def _pad_cols(t: Tensor, cols: int, rows: int | None = None) -> Tensor:
    g, r, c = t.shape
    out = t.new_zeros(g, rows or r, cols)
    out[:, :r, :c] = t
    return out.contiguous()


class FusedConv2d(nn.Module):
    """One plan step: dense conv (rank 0) or basis pair, with bias/BN, residual add and
    activation fused into the C++ kernel's epilogue. Stateless at call time: thread-safe."""

    def __init__(self, weight: Tensor, bias: Tensor | None, *, stride, padding, dilation, groups: int,
                 scale: Tensor | None = None, activation: str | None = None, residual: bool = False,
                 num_threads: int | None = None) -> None:
        super().__init__()
        weight = weight.detach().float()
        self.kernel = tuple(weight.shape[2:])
        self.in_channels = weight.shape[1] * groups
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        activations.code(activation)  # a clear error for an unknown one
        self.groups, self.activation, self.residual = groups, activation, residual
        self.out_channels = scale.shape[0] if scale is not None else weight.shape[0]
        self.num_threads = num_threads
        cg = self.out_channels // groups
        self.rank = 0 if scale is None else scale.shape[1]
        b_shape, a_shape = packed_shapes(self.kernel, self.in_channels, self.out_channels, groups, self.rank)
        if len(b_shape) == 2:  # depthwise: W as (kh·kw, C)
            self.register_buffer("B", weight.reshape(self.out_channels, -1).t().contiguous())
        elif self.rank and _C.lowrank_dot_path(weight.shape[1], self.rank):  # basis, channel-dot path: (g, r, K)
            self.register_buffer("B", _taps_last(weight, groups).transpose(1, 2).contiguous())
        else:  # (g, K, n_pad): the dense weight, or the basis padded
            self.register_buffer("B", _pad_cols(_taps_last(weight, groups), b_shape[2]))
        if a_shape is None:
            self.A = None
        else:  # the scaling weight as (g, r_pad, Cg_pad)
            a = scale.detach().float().reshape(groups, cg, self.rank).transpose(1, 2)
            self.register_buffer("A", _pad_cols(a, a_shape[2], a_shape[1]))
        assert tuple(self.B.shape) == b_shape
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self._bf16 = None  # bf16.Bf16Weights for the bf16 conv: set by compiler/bf16.py's apply_precision
        self.prefer_fp32 = False  # stays fp32 at bf16: measured faster (autotune.faster_in_fp32) or the error bound
        self.prefer_direct = False  # measured faster without its Winograd weights (autotune.faster_direct)
        self.bf16_direct = False  # at bf16, direct, not by Winograd: measured faster (autotune) or the error bound
        # At bf16, a pair's basis output goes to its scaling conv as bf16 hi + lo, not rounded once:
        # compile sets False, the error bound True again (entry.py); plans saved before it lack it (True).
        self.bf16_hilo = True
        self.after_load()

    def after_load(self) -> None:
        """Derives the Winograd weights of a 3×3 pair or dense conv on `_C.winograd_path`
        (csrc/winograd_conv.h) from B: kept beside it, not saved with a plan. None where the compile
        measured the direct path faster (`prefer_direct`), and with BASISRT_NO_WINOGRAD=1."""
        winograd = None
        if (self.B.device.type == "cpu" and not getattr(self, "prefer_direct", False)
                and os.environ.get("BASISRT_NO_WINOGRAD") != "1"
                and _C.winograd_path(*self.kernel, *self.stride, *self.dilation, self.groups, self.in_channels,
                                     self.rank)):
            # cloned: PyTorch's allocator aligns to 64 bytes (numpy's to 16), so no vector load of it
            # spans two cache lines
            winograd = torch.from_numpy(_C.winograd_weights(self.B.numpy(), self.in_channels, self.rank,
                                                            self.out_channels)).clone()
        self.register_buffer("winograd", winograd, persistent=False)

    def winograd_array(self) -> np.ndarray | None:
        """The Winograd weights for the kernel calls, or None."""
        w = getattr(self, "winograd", None)
        return None if w is None else w.numpy()

    @property
    def geometry(self) -> ConvGeometry:
        return ConvGeometry(self.kernel, self.stride, self.padding, self.dilation, self.groups)

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        return self.geometry.output_hw(h, w)

    def forward(self, x: Tensor, residual: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """x: (N, C, H, W) float32, any memory format; `out`: optional NHWC buffer to write into."""
        x = x.contiguous(memory_format=torch.channels_last)
        n, _, h, w = x.shape
        y = torch.empty(n, *self.output_hw(h, w), self.out_channels) if out is None else out
        res = None
        if residual is not None:
            res = residual.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).numpy()
        act, alpha = activations.code(self.activation)
        threads = self.num_threads or torch.get_num_threads()
        if getattr(self, "_bf16", None) is not None:
            w = self._bf16
            _C.fused_conv_bf16_nhwc(x.permute(0, 2, 3, 1).numpy(), w.B, w.A, w.bias, res, y.numpy(), self.kernel,
                                    self.stride, self.padding, self.dilation, self.rank, act, threads, alpha=alpha,
                                    winograd=w.winograd, hilo=getattr(self, "bf16_hilo", True))
            return y.permute(0, 3, 1, 2)
        _C.fused_conv_nhwc(
            x.permute(0, 2, 3, 1).numpy(), self.B.numpy(), None if self.A is None else self.A.numpy(),
            None if self.bias is None else self.bias.numpy(), res, y.numpy(), self.kernel, self.stride,
            self.padding, self.dilation, self.groups, self.rank, act, threads, alpha=alpha,
            winograd=self.winograd_array())
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        kind = f"basis rank {self.rank}" if self.rank else "dense"
        return (f"{kind}, out={self.out_channels}, kernel={self.kernel}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, act={self.activation}, residual={self.residual}"
                + (", prefer_fp32=True" if getattr(self, "prefer_fp32", False) else "")
                + (", prefer_direct=True" if getattr(self, "prefer_direct", False) else "")
                + (", bf16_direct=True" if getattr(self, "bf16_direct", False) else "")
                + (", bf16_hilo=False" if not getattr(self, "bf16_hilo", True) else ""))


class FusedLinear(FusedConv2d):
    """A Linear / BasisLinear step: the same kernel on (rows, 1, 1, C) with a 1×1 kernel.

    With `map_chw = (C, H, W)` the input is a flattened (N, C·H·W) map (`x.flatten(1)` in NCHW
    order) and the step is a conv with an H×W kernel over that map: the native program then reads
    the unflattened NHWC map in place, with no NCHW copy (a classifier after a 7×7 pool)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, scale: Tensor | None = None,
                 activation: str | None = None, residual: bool = False, num_threads: int | None = None,
                 map_chw: tuple[int, int, int] | None = None) -> None:
        c, h, w = map_chw if map_chw is not None else (weight.shape[1], 1, 1)
        super().__init__(weight.reshape(weight.shape[0], c, h, w), bias, stride=(1, 1), padding=(0, 0),
                         dilation=(1, 1), groups=1, scale=scale, activation=activation, residual=residual,
                         num_threads=num_threads)
        self.map_chw = None if map_chw is None else tuple(map_chw)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        lead = x.shape[:-1]
        if self.map_chw is not None:  # (N, C·H·W) in NCHW order: a logical NCHW view of it
            x4 = x.reshape(-1, *self.map_chw)
        else:
            x4 = x.reshape(-1, 1, 1, x.shape[-1]).permute(0, 3, 1, 2)  # logical NCHW over NHWC memory
        r4 = None if residual is None else residual.reshape(-1, 1, 1, self.out_channels).permute(0, 3, 1, 2)
        return super().forward(x4, r4).reshape(*lead, self.out_channels)


class TorchConvStep(nn.Module):
    """A step run by PyTorch's own convs (oneDNN on channels_last): a dense conv/linear, or with
    `scale` a basis pair as two convs (basis, then grouped 1×1). BN stays folded into the weights;
    residual add and activation follow in place. The autotuner picks this where oneDNN beats our
    kernels for a shape."""

    def __init__(self, weight: Tensor, bias: Tensor | None, *, stride, padding, dilation, groups: int,
                 scale: Tensor | None = None, activation: str | None = None, residual: bool = False,
                 linear: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().float().contiguous())
        self.register_buffer("scale", None if scale is None else scale.detach().float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.conv_args = dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), groups=groups)
        activations.code(activation)
        self.activation, self.residual, self.linear = activation, residual, linear
        self.rank = 0 if scale is None else scale.shape[1]
        self.after_load()

    @property
    def geometry(self) -> ConvGeometry:
        kernel = (1, 1) if self.linear else tuple(self.weight.shape[2:])
        return ConvGeometry(kernel, **self.conv_args)

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.conv_args["groups"]

    @property
    def out_channels(self) -> int:
        return (self.weight if self.scale is None else self.scale).shape[0]

    def after_load(self) -> None:
        """oneDNN wants conv weights channels_last (saved tensors come back contiguous)."""
        if not self.linear:
            self.weight = self.weight.contiguous(memory_format=torch.channels_last)
            if self.scale is not None and self.scale.dim() == 2:
                self.scale = self.scale[:, :, None, None].contiguous(memory_format=torch.channels_last)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if self.linear:
            y = F.linear(x, self.weight) if self.scale is not None else F.linear(x, self.weight, self.bias)
            if self.scale is not None:
                y = F.linear(y, self.scale, self.bias)
        else:
            # torch 2.13's channels_last conv segfaults on a 1-wide map with a dilated 1×1 kernel,
            # padding and bias; on so small a map the layout costs nothing, so those stay NCHW
            degenerate = min(x.shape[-2:]) == 1
            x = x.contiguous() if degenerate else x.contiguous(memory_format=torch.channels_last)
            if self.scale is None:
                y = F.conv2d(x, self.weight, self.bias, **self.conv_args)
            else:
                t = F.conv2d(x, self.weight, None, **self.conv_args)
                y = F.conv2d(t, self.scale, self.bias, groups=self.conv_args["groups"])
        if residual is not None:
            y += residual
        return activations.apply(y, self.activation)

    def extra_repr(self) -> str:
        kind = f"basis pair rank {self.rank} (torch)" if self.rank else "dense (torch)"
        return (f"{kind}, weight={tuple(self.weight.shape)}, {'linear' if self.linear else self.conv_args}, "
                f"act={self.activation}, residual={self.residual}")


class PoolStep(nn.Module):
    """Max / average / global-average pooling run by the C++ kernel in basisrt's thread pool, so a
    plan of fused steps never wakes PyTorch's OpenMP workers (which spin on the core the next
    step needs). `kernel` None is a global pool over the whole input, or with `output_size` an
    adaptive pool to that size (PyTorch's windows, which overlap where the sizes do not divide)."""

    output_size: tuple[int, int] | None = None  # plans saved before adaptive pools lack the attribute

    def __init__(self, kind: str, kernel: tuple[int, int] | None, stride: tuple[int, int] | None = None,
                 padding: tuple[int, int] = (0, 0), count_include_pad: bool = True,
                 num_threads: int | None = None, ceil_mode: bool = False,
                 output_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if kind not in POOL_KINDS:
            raise ValueError(f"kind must be one of {list(POOL_KINDS)}, got {kind!r}")
        if output_size is not None and kernel is not None:
            raise ValueError("an adaptive pool (output_size) has no kernel")
        self.output_size = tuple(output_size) if output_size is not None else None
        self.kind, self.kernel, self.padding = kind, kernel, tuple(padding)
        self.stride = tuple(stride) if stride is not None else kernel
        self.count_include_pad, self.num_threads, self.ceil_mode = count_include_pad, num_threads, ceil_mode

    def geometry(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(kernel, stride, output (OH, OW)) on an h×w input (a global pool covers all of it; an
        adaptive pool has kernel (0, 0), the C++ kernel's mark for adaptive windows)."""
        if self.output_size is not None:
            return (0, 0), (1, 1), self.output_size
        (kh, kw), (sh, sw) = (self.kernel, self.stride) if self.kernel is not None else ((h, w), (h, w))
        (ph, pw) = self.padding
        return (kh, kw), (sh, sw), (window_out(h, kh, sh, ph, ceil_mode=self.ceil_mode),
                                   window_out(w, kw, sw, pw, ceil_mode=self.ceil_mode))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.dtype != torch.float32:
            raise ValueError(f"PoolStep expects a 4-D float32 (N, C, H, W) input, got {x.dtype} {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        kernel, stride, (oh, ow) = self.geometry(h, w)
        y = torch.empty(n, oh, ow, c)
        _C.pool_nhwc(x.permute(0, 2, 3, 1).numpy(), y.numpy(), kernel, stride, self.padding, POOL_KINDS[self.kind],
                     self.count_include_pad, self.num_threads or torch.get_num_threads())
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        where = (f"adaptive to {self.output_size}" if self.output_size is not None else
                 "global" if self.kernel is None else
                 f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}")
        return f"{self.kind}, {where}" + (", ceil_mode" if self.ceil_mode else "")


POOL_KINDS = {"max": _C.PoolKind.max, "avg": _C.PoolKind.avg, "l2": _C.PoolKind.l2}


class ChannelAffineStep(nn.Module):
    """y = act(x · scale + shift) per channel, by the C++ kernel: a BatchNorm that no conv before it
    can absorb (pre-activation networks such as DenseNet: BN → ReLU → conv), with the ReLU after it."""

    def __init__(self, scale: Tensor, shift: Tensor, activation: str | None = None,
                 num_threads: int | None = None) -> None:
        super().__init__()
        activations.code(activation)
        self.register_buffer("scale", scale.detach().float().contiguous())
        self.register_buffer("shift", shift.detach().float().contiguous())
        self.activation, self.num_threads = activation, num_threads

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.dtype != torch.float32 or x.shape[1] != self.scale.numel():
            raise ValueError(f"{type(self).__name__} expects a float32 (N, {self.scale.numel()}, H, W) input, "
                             f"got {x.dtype} {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        y = torch.empty(n, h, w, c)
        act, alpha = activations.code(self.activation)
        self._kernel(x.permute(0, 2, 3, 1).numpy(), y.numpy(), act, self.num_threads or torch.get_num_threads(),
                     alpha)
        return y.permute(0, 3, 1, 2)

    def _kernel(self, x: np.ndarray, y: np.ndarray, act: "_C.Activation", threads: int, alpha: float) -> None:
        _C.channel_affine_nhwc(x, self.scale.numpy(), self.shift.numpy(), y, act, threads, alpha=alpha)

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}, act={self.activation}"


class ChannelNormStep(ChannelAffineStep):
    """y = act(layer_norm(x) · scale + shift), the norm over each pixel's channels, by the C++
    kernel: ConvNeXt's LayerNorm2d (compile's ChannelLayerNorm)."""

    def __init__(self, scale: Tensor, shift: Tensor, eps: float, activation: str | None = None,
                 num_threads: int | None = None) -> None:
        super().__init__(scale, shift, activation, num_threads)
        self.eps = float(eps)

    def _kernel(self, x: np.ndarray, y: np.ndarray, act: "_C.Activation", threads: int, alpha: float) -> None:
        _C.channel_norm_nhwc(x, self.scale.numpy(), self.shift.numpy(), y, self.eps, act, threads, alpha=alpha)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"


class GroupNormStep(ChannelAffineStep):
    """y = act(group_norm(x) · scale + shift), the norm over each image's `groups` groups of
    channels, by the C++ kernel: nn.GroupNorm (FPN heads, BiT's ResNetV2)."""

    def __init__(self, scale: Tensor, shift: Tensor, groups: int, eps: float, activation: str | None = None,
                 num_threads: int | None = None) -> None:
        super().__init__(scale, shift, activation, num_threads)
        self.groups, self.eps = int(groups), float(eps)

    def _kernel(self, x: np.ndarray, y: np.ndarray, act: "_C.Activation", threads: int, alpha: float) -> None:
        _C.group_norm_nhwc(x, self.scale.numpy(), self.shift.numpy(), y, self.groups, self.eps, act, threads,
                           alpha=alpha)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.groups}, eps={self.eps}"


BINARY_OPS = {"add": _C.BinaryOp.add, "mul": _C.BinaryOp.mul, "sub": _C.BinaryOp.sub, "div": _C.BinaryOp.div}


class EltwiseStep(nn.Module):
    """y = act(a OP b), OP add, mul, sub or div, by the C++ kernel: an add no conv epilogue absorbs
    (a residual after a stochastic-depth no-op, two branches summed), PoolFormer's pool(x) - x, a
    squeeze-excitation gate, a spatial attention map or a context vector per row: b of a's shape,
    or (N, C, 1, 1) broadcast over the map, (N, 1, H, W) over the channels, (N, C, H, 1) over each
    row."""

    def __init__(self, op: str, activation: str | None = None, num_threads: int | None = None) -> None:
        super().__init__()
        if op not in BINARY_OPS:
            raise ValueError(f"op must be one of {list(BINARY_OPS)}, got {op!r}")
        activations.code(activation)
        self.op, self.activation, self.num_threads = op, activation, num_threads

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        ok = a.dim() == 4 and b.dim() == 4 and a.dtype == b.dtype == torch.float32 and a.shape[0] == b.shape[0]
        if not ok or tuple(b.shape[1:]) not in (tuple(a.shape[1:]), (a.shape[1], 1, 1), (1, *a.shape[2:]),
                                                (*a.shape[1:3], 1)):
            raise ValueError(f"EltwiseStep expects float32 (N, C, H, W) and (N, C, H, W), (N, C, 1, 1), (N, 1, H, W) "
                             f"or (N, C, H, 1) inputs, got {a.dtype} {tuple(a.shape)} and {b.dtype} {tuple(b.shape)}")
        a, b = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))
        n, c, h, w = a.shape
        y = torch.empty(n, h, w, c)
        act, alpha = activations.code(self.activation)
        _C.eltwise_nhwc(a.permute(0, 2, 3, 1).numpy(), b.permute(0, 2, 3, 1).numpy(), y.numpy(), BINARY_OPS[self.op],
                        act, self.num_threads or torch.get_num_threads(), alpha=alpha)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.op}, act={self.activation}"


class ChannelGatherStep(nn.Module):
    """y[:, c] = x[:, index[c]] by the C++ kernel: a channel shuffle or a channel slice (chunk,
    split, x[:, a:b]), so the plan stays native where the model rearranges channels."""

    def __init__(self, index: Tensor, num_threads: int | None = None) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.int64).contiguous())
        self.num_threads = num_threads

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.dtype != torch.float32 or int(self.index.max()) >= x.shape[1]:
            raise ValueError("ChannelGatherStep expects a float32 (N, C, H, W) input with "
                             f"C > {int(self.index.max())}, "
                             f"got {x.dtype} {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)
        n, _, h, w = x.shape
        y = torch.empty(n, h, w, self.index.numel())
        _C.channel_gather_nhwc(x.permute(0, 2, 3, 1).numpy(), self.index.numpy(), y.numpy(),
                               self.num_threads or torch.get_num_threads())
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"channels={self.index.numel()}"


class SoftmaxStep(nn.Module):
    """layers.MapSoftmax by the C++ kernel (softmax.h): over channel groups, each row or each
    image's pixels."""

    def __init__(self, axis: str, groups: int = 1, num_threads: int | None = None) -> None:
        super().__init__()
        MapSoftmax(axis, groups)  # the same argument checks
        self.axis, self.groups, self.num_threads = axis, groups, num_threads

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.dtype != torch.float32 or (self.axis == "channels" and x.shape[1] % self.groups):
            raise ValueError(f"SoftmaxStep expects a float32 (N, C, H, W) input with C a multiple of {self.groups}, "
                             f"got {x.dtype} {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        y = torch.empty(n, h, w, c)
        _C.softmax_nhwc(x.permute(0, 2, 3, 1).numpy(), y.numpy(), getattr(_C.SoftmaxAxis, self.axis), self.groups,
                        self.num_threads or torch.get_num_threads())
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"axis={self.axis!r}, groups={self.groups}"


def _remap(step: nn.Module, x: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int], channels: int | None,
           kernel: Callable[[np.ndarray, np.ndarray, int], None]) -> Tensor:
    """A step from (N, C, *in_hw) float32 maps to (N, channels or C, *out_hw) ones (gathers,
    resampling): `kernel(x, y, threads)` on the NHWC views of x and of y."""
    if x.dim() != 4 or x.dtype != torch.float32 or tuple(x.shape[2:]) != in_hw:
        raise ValueError(f"{type(step).__name__} expects a float32 (N, C, {in_hw[0]}, {in_hw[1]}) input, "
                         f"got {x.dtype} {tuple(x.shape)}")
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.empty(x.shape[0], *out_hw, channels or x.shape[1])
    kernel(x.permute(0, 2, 3, 1).numpy(), y.numpy(), step.num_threads or torch.get_num_threads())
    return y.permute(0, 3, 1, 2)


class PixelGatherStep(nn.Module):
    """Each output pixel a copy of one input pixel of its image, or zeros, by the C++ kernel:
    nearest upsampling (`F.interpolate(mode="nearest")`, `nn.Upsample`), zero padding that no conv
    absorbs (TensorFlow's "same" padding, more on one side), cropping. `index[q]` is the source pixel
    (row-major over H×W) of output pixel q, -1 for zeros; `in_hw` and `out_hw` the map sizes."""

    def __init__(self, index: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int],
                 num_threads: int | None = None) -> None:
        super().__init__()
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.int64).contiguous())
        self.in_hw, self.out_hw, self.num_threads = tuple(in_hw), tuple(out_hw), num_threads

    def forward(self, x: Tensor) -> Tensor:
        return _remap(self, x, self.in_hw, self.out_hw, None,
                      lambda a, b, threads: _C.pixel_gather_nhwc(a, self.index.numpy(), b, threads))

    def extra_repr(self) -> str:
        return f"{self.in_hw} -> {self.out_hw}"


class DepthToSpaceStep(PixelGatherStep):
    """Each output pixel a block of `channels` channels of one input pixel of its image: channels
    [offset[q], offset[q] + channels) of input pixel index[q] (a transposed conv's s² phases, computed
    as one conv, rearranged into its s×s output pixels and cropped: fusion._transposed_convs)."""

    def __init__(self, index: Tensor, offset: Tensor, channels: int, in_hw: tuple[int, int], out_hw: tuple[int, int],
                 num_threads: int | None = None) -> None:
        super().__init__(index, in_hw, out_hw, num_threads)
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.int64).contiguous())
        self.channels = int(channels)

    def forward(self, x: Tensor) -> Tensor:
        return _remap(self, x, self.in_hw, self.out_hw, self.channels,
                      lambda a, b, threads: _C.pixel_gather_nhwc(a, self.index.numpy(), b, threads,
                                                                 offset=self.offset.numpy()))

    def extra_repr(self) -> str:
        return f"{self.in_hw} -> {self.out_hw}, channels={self.channels}"


class ResampleStep(nn.Module):
    """Bilinear upsampling (`F.interpolate(mode="bilinear")`, `nn.Upsample`) by the C++ kernel
    (resample.h): each output pixel the weighted sum of T×T input pixels, separable into per-row
    taps (`row_index`, `row_weight`: out H × T) and per-column taps (out W × T)."""

    def __init__(self, row_index: Tensor, row_weight: Tensor, col_index: Tensor, col_weight: Tensor,
                 in_hw: tuple[int, int], num_threads: int | None = None) -> None:
        super().__init__()
        for name, v, dtype in (("row_index", row_index, torch.int64), ("row_weight", row_weight, torch.float32),
                               ("col_index", col_index, torch.int64), ("col_weight", col_weight, torch.float32)):
            self.register_buffer(name, torch.as_tensor(v, dtype=dtype).contiguous())
        self.in_hw, self.num_threads = tuple(in_hw), num_threads

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.row_index.shape[0], self.col_index.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        return _remap(self, x, self.in_hw, self.out_hw, None, lambda a, b, threads: _C.resample_nhwc(
            a, self.row_index.numpy(), self.row_weight.numpy(), self.col_index.numpy(), self.col_weight.numpy(), b,
            threads))

    def extra_repr(self) -> str:
        return f"{self.in_hw} -> {self.out_hw}, taps={self.row_index.shape[1]}"


def batchnorm_affine(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """(gamma, beta) with bn(x) = gamma·x + beta per channel in eval mode, or None if `bn` is not
    an eval-foldable BatchNorm2d (no running statistics: it normalises by the batch's)."""
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or bn.running_var is None:
        return None
    gamma = torch.rsqrt(bn.running_var + bn.eps) * (bn.weight.detach() if bn.affine else 1)
    beta = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * gamma
    return gamma, beta


def pool_step(m: nn.Module, num_threads: int | None, in_hw: tuple[int, int] | None = None) -> PoolStep | None:
    """The PoolStep doing what pooling module `m` does on an `in_hw` input, or None when the kernel
    cannot (dilation, indices, divisor override). An adaptive pool is a global one to 1×1, a
    uniform one where its output size divides the input's, else adaptive windows."""
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        kind = "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max"
        if isinstance(m, nn.AdaptiveMaxPool2d) and m.return_indices:
            return None
        out = pair(m.output_size)
        if out == (1, 1):
            return PoolStep(kind, None, num_threads=num_threads)
        if in_hw is None and None in out:
            return None
        out = tuple(o if o is not None else i for o, i in zip(out, in_hw or out))
        if in_hw is None or any(i % o for i, o in zip(in_hw, out)):  # windows of different sizes, or overlapping
            return PoolStep(kind, None, num_threads=num_threads, output_size=out)
        window = (in_hw[0] // out[0], in_hw[1] // out[1])  # adaptive windows are uniform then
        return PoolStep(kind, window, window, num_threads=num_threads)
    if isinstance(m, nn.MaxPool2d) and not m.return_indices and pair(m.dilation) == (1, 1):
        return PoolStep("max", pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding),
                        num_threads=num_threads, ceil_mode=m.ceil_mode)
    if isinstance(m, nn.LPPool2d) and m.norm_type == 2 and not m.ceil_mode:  # the root of the sum of squares
        return PoolStep("l2", pair(m.kernel_size), pair(m.stride or m.kernel_size), num_threads=num_threads)
    if isinstance(m, nn.AvgPool2d) and m.divisor_override is None:
        return PoolStep("avg", pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding),
                        m.count_include_pad, num_threads, m.ceil_mode)
    return None


# Every CPU step module: each returns logical NCHW maps stored channels_last (or, a linear step, rows)
STEPS = (FusedConv2d, TorchConvStep, PoolStep, ChannelAffineStep, ChannelNormStep, GroupNormStep, EltwiseStep,
         ChannelGatherStep, PixelGatherStep, ResampleStep, SoftmaxStep)  # DepthToSpaceStep: a PixelGatherStep

__all__ = ["BINARY_OPS", "STEPS", "ChannelAffineStep", "ChannelGatherStep", "ChannelNormStep", "DepthToSpaceStep",
           "EltwiseStep", "GroupNormStep",
           "FusedConv2d", "FusedLinear", "PixelGatherStep", "PoolStep", "ResampleStep", "SoftmaxStep", "TorchConvStep",
           "batchnorm_affine", "pool_step"]
