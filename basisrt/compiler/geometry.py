"""A conv's geometry as one value, and the output-size formulas (PyTorch's), in one place."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


def window_out(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil_mode: bool = False) -> int:
    """Outputs of a sliding window along one axis (conv and pool). In ceil mode (pools) the last
    window must start inside the input or its left padding (csrc/shape_checks.h: window_out_ceil),
    so a window larger than the input still makes one output, as PyTorch's pools do (Hugging Face's
    EfficientNet pools its 7×7 map with AvgPool2d(1280, ceil_mode=True))."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def conv_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Symmetric zero padding of `conv` as (ph, pw), or None if the kernels cannot do it."""
    if conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, symmetric zero padding, dilation and groups of a conv step."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry | None:
        """`conv`'s geometry, or None when its padding is not one the kernels run."""
        padding = conv_padding(conv)
        if padding is None:
            return None
        return cls(tuple(conv.kernel_size), tuple(conv.stride), padding, tuple(conv.dilation), conv.groups)

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """The output map's (H, W) for an H×W input."""
        return (window_out(h, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0]),
                window_out(w, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1]))

    def conv_kwargs(self) -> dict:
        """stride, padding, dilation and groups, as the step modules and F.conv2d take them."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


LINEAR = ConvGeometry()  # a Linear step: a 1×1 conv over (rows, 1, 1, C)
