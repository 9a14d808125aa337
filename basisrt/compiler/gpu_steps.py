"""GPU plan steps: the fused Triton basis conv (basisrt.kernels.fused_basis_conv) behind the same
constructor as the CPU step `FusedConv2d`, so the plan can pick a backend per device.

Weights are packed once at construction (B: (kh, kw, C_in, r) NHWC tap order, A: (r, C_out));
activations stay logical NCHW: forward reads any memory format through strides (channels_last is
the fast one) and returns a logical NCHW view of an NHWC (channels_last) output. Stateless at call
time, so one step may be called from several threads / streams at once.

Triton is imported when a step is constructed, not when this module is imported, so
`import basisrt` keeps working without triton; constructing a step without it raises a clear
RuntimeError.
"""
from __future__ import annotations

import importlib

from torch import Tensor, nn

from .geometry import ConvGeometry

TRITON_NEEDED = "compiling a CUDA model needs triton: pip install triton"


def _kernel_module():
    """basisrt.kernels.fused_basis_conv, or a clear RuntimeError when triton is not importable."""
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except ImportError as e:  # includes sys.modules["triton"] = None
        raise RuntimeError(TRITON_NEEDED) from e
    from ..kernels import fused_basis_conv as fk
    if fk.triton is None:  # module was first imported while triton was missing
        fk = importlib.reload(fk)
    return fk


def _kernels():
    from ..kernels import (
        fused_basis_conv,  # already imported by the constructor: a dict lookup
    )
    return fused_basis_conv


class GPUFusedConv2d(nn.Module):
    """One plan step on the GPU: dense conv (scale None) or basis pair (basis conv + 1×1 scaling
    conv in one Triton launch), with bias, residual add and activation in the epilogue.

    Same constructor as `FusedConv2d` (`num_threads` is accepted and ignored), plus keyword-only
    `precision` ("ieee" default; "tf32" for tensor-core speed at ~1e-3 relative error) and
    `config` (pinned tile sizes instead of autotuning, e.g. for CUDA-graph capture).
    groups must be 1 on this path: a ValueError tells the plan to fall back.
    The packed weights are float32 buffers; `.to(device)` / `.half()` move and cast them, and an
    input must match their dtype and device.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, *, stride, padding, dilation, groups: int,
                 scale: Tensor | None = None, activation: str | None = None, residual: bool = False,
                 num_threads: int | None = None, precision: str = "ieee", config: dict | None = None) -> None:
        super().__init__()
        fk = _kernel_module()
        if groups != 1:
            raise ValueError(f"the fused Triton conv supports groups=1 only (got groups={groups}); "
                             "run this layer through PyTorch instead")
        if activation not in fk.ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(fk.ACTIVATIONS)}, got {activation!r}")
        if precision not in fk.PRECISIONS:
            raise ValueError(f"precision must be one of {fk.PRECISIONS}, got {precision!r}")
        if weight.dim() != 4:
            raise ValueError(f"weight must be (out, C_in, kh, kw), got {tuple(weight.shape)}")
        weight = weight.detach().float()
        self.kernel = tuple(weight.shape[2:])
        self.in_channels = weight.shape[1]
        self.stride, self.padding, self.dilation = (fk._pair(stride, "stride"), fk._pair(padding, "padding"),
                                                    fk._pair(dilation, "dilation"))
        self.groups, self.activation, self.residual = groups, activation, residual
        self.precision, self.config, self.num_threads = precision, config, num_threads
        self.register_buffer("B", weight.permute(2, 3, 1, 0).contiguous())  # (kh, kw, C_in, r | C_out)
        if scale is None:
            self.rank = 0
            self.out_channels = weight.shape[0]
            self.A = None
        else:
            scale = scale.detach().float().reshape(scale.shape[0], -1)
            if scale.shape[1] != weight.shape[0]:
                raise ValueError(f"scale is {tuple(scale.shape)} but the basis has {weight.shape[0]} filters")
            self.rank = scale.shape[1]
            self.out_channels = scale.shape[0]
            self.register_buffer("A", scale.t().contiguous())  # (r, C_out)
        if bias is not None and bias.shape != (self.out_channels,):
            raise ValueError(f"bias must be ({self.out_channels},), got {tuple(bias.shape)}")
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def _check_call(self, x: Tensor, residual: Tensor | None) -> None:
        """Clear errors for an input off the weights' dtype / device, or a missing residual."""
        if x.dtype != self.B.dtype or x.device != self.B.device:
            raise ValueError(f"input is {x.dtype} on {x.device} but the step's weights are {self.B.dtype} on "
                             f"{self.B.device}; move the step with .to(...)")
        if self.residual and residual is None:
            raise ValueError("this step was built with residual=True: pass the residual tensor")

    @property
    def geometry(self) -> ConvGeometry:
        return ConvGeometry(self.kernel, self.stride, self.padding, self.dilation, self.groups)

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        return self.geometry.output_hw(h, w)

    def forward(self, x: Tensor, residual: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """x: (N, C_in, H, W) on the weights' device and dtype, any memory format.
        residual: (N, C_out, OH, OW) or None; out: optional NHWC (N, OH, OW, C_out) buffer.
        Returns (N, C_out, OH, OW), physically channels_last."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self._check_call(x, residual)
        res = None if residual is None else residual.permute(0, 2, 3, 1)
        y = _kernels().fused_basis_conv2d(
            x.permute(0, 2, 3, 1), self.B, self.A, self.bias, res, self.stride, self.padding, self.dilation,
            self.activation, self.precision, out=out, config=self.config)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        kind = f"basis rank {self.rank}" if self.rank else "dense"
        return (f"{kind}, out={self.out_channels}, kernel={self.kernel}, stride={self.stride}, padding={self.padding}, "
                f"act={self.activation}, residual={self.residual}, precision={self.precision}, backend=triton")


class GPUFusedLinear(GPUFusedConv2d):
    """A Linear / BasisLinear step on the GPU: the same kernel with a 1×1 kernel over rows."""

    def __init__(self, weight: Tensor, bias: Tensor | None, scale: Tensor | None = None,
                 activation: str | None = None, residual: bool = False, num_threads: int | None = None,
                 precision: str = "ieee", config: dict | None = None) -> None:
        super().__init__(weight[:, :, None, None], bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                         scale=scale, activation=activation, residual=residual, num_threads=num_threads,
                         precision=precision, config=config)

    def forward(self, x: Tensor, residual: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"expected input (..., {self.in_channels}), got {tuple(x.shape)}")
        self._check_call(x, residual)
        return _kernels().fused_basis_linear(x, self.B[0, 0], self.A, self.bias, residual, self.activation,
                                           self.precision, out=out, config=self.config)


__all__ = ["GPUFusedConv2d", "GPUFusedLinear", "TRITON_NEEDED"]
