"""Basis layers: a conv/linear split into a frozen orthonormal basis and a scaled 1×1 mix.

`BasisConv2d` computes `scaling(basis(x))` where
  * `basis` is an `nn.Conv2d` whose `groups*r` filters are orthonormal rows of Vᵀ
    (same stride, padding, padding mode, dilation and groups as the original conv), and
  * the BasisScalingConv is a grouped 1×1 conv with weight `coeff · diag(alpha)`
    (`coeff = U·S`, shape (C_out, r)) and the original bias.
Only `alpha` (the basis scaling factors, initialised to 1) is trainable; at alpha = 1 the pair
computes the original layer. `BasisLinear` is the same with K = in_features.

`ChannelLayerNorm` is LayerNorm over each pixel's channels of an NCHW map, which compile makes of
the channels-last LayerNorms ConvNeXt writes. `MapSoftmax` is a softmax over one axis of an NCHW
map, which compile makes of the attention softmaxes models write through 3-D and 5-D views.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .svd import factorize


def _frozen(t: Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False)


class _BasisLayer(nn.Module):
    """What basis conv and basis linear share: factors, scaling factors, pruning, folding."""

    groups: int
    basis: nn.Conv2d | nn.Linear

    def _init_scaling(self, coeff: Tensor, sigma: Tensor, bias: Tensor | None, groups: int) -> None:
        self.groups = groups
        self.full_rank = coeff.shape[1]
        self.coeff = _frozen(coeff)  # U·S, (C_out, r)
        self.alpha = nn.Parameter(torch.ones(sigma.numel(), dtype=coeff.dtype, device=coeff.device))
        self.bias = _frozen(bias)
        self.register_buffer("sigma", sigma.detach().clone())  # singular values, for energy pruning

    @property
    def rank(self) -> int:
        """Basis vectors kept per group."""
        return self.coeff.shape[1]

    def scaling_weight(self) -> Tensor:
        """The BasisScalingConv weight `coeff · diag(alpha)`, shape (C_out, r)."""
        g, r = self.groups, self.rank
        return (self.coeff.view(g, -1, r) * self.alpha.view(g, 1, r)).reshape(-1, r)

    def dense_weight(self) -> Tensor:
        """Fold the pair back into one weight `W' = (U·S·diag(alpha)) · Vᵀ` (original shape)."""
        g, r = self.groups, self.rank
        b = self.basis.weight
        a = self.scaling_weight().view(g, -1, r)
        w = torch.bmm(a, b.reshape(g, r, -1))  # (g, C_out/g, K)
        return w.reshape(self.coeff.shape[0], *b.shape[1:])

    @torch.no_grad()
    def select_(self, keep: Tensor) -> "_BasisLayer":
        """Keep only the basis vectors `keep` (indices into 0..groups*rank-1), in place.

        Rows of the basis and columns of the scaling conv really go away. Every group must keep
        the same number of vectors (the grouped 1×1 conv needs a uniform rank).
        """
        keep = torch.as_tensor(keep, dtype=torch.long, device=self.alpha.device).flatten().unique(sorted=True)
        g, r = self.groups, self.rank
        if keep.numel() == 0 or keep.min() < 0 or keep.max() >= g * r:
            raise ValueError(f"keep must hold between 1 and {g * r} indices in [0, {g * r})")
        per_group = torch.bincount(keep // r, minlength=g)
        if (per_group != per_group[0]).any():
            raise ValueError(f"every group must keep the same number of basis vectors, got {per_group.tolist()}")
        new_r = int(per_group[0])
        local = (keep % r).view(g, new_r)
        coeff = self.coeff.view(g, -1, r).gather(2, local.unsqueeze(1).expand(-1, self.coeff.shape[0] // g, -1))
        self.coeff = _frozen(coeff.reshape(-1, new_r))
        self.basis.weight = _frozen(self.basis.weight[keep])
        self._set_basis_width(g * new_r)
        self.alpha = nn.Parameter(self.alpha[keep].detach().clone(), requires_grad=self.alpha.requires_grad)
        self.sigma = self.sigma[keep].clone()
        return self

    def _set_basis_width(self, n: int) -> None:
        raise NotImplementedError

    @property
    def weight(self) -> Tensor:
        """The dense weight the pair computes (a fresh tensor, not a parameter), for the models
        that read their layers' `.weight` (its dtype, or to call F.linear with it themselves)."""
        return self.dense_weight()


class BasisConv2d(_BasisLayer):
    """A `Conv2d` as a basis conv (orthonormal filters) followed by a BasisScalingConv."""

    def __init__(self, basis: nn.Conv2d, coeff: Tensor, sigma: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        if basis.bias is not None:
            raise ValueError("the basis conv carries no bias; pass the bias separately")
        self.basis = basis.requires_grad_(False)
        self._init_scaling(coeff, sigma, bias, basis.groups)
        self.in_channels, self.out_channels = basis.in_channels, coeff.shape[0]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "BasisConv2d":
        """Exact full-rank decomposition of `conv` (SVD per group, in float64)."""
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"BasisConv2d.from_conv takes an nn.Conv2d, got {type(conv).__name__}")
        f = factorize(conv.weight, conv.groups)
        basis = nn.Conv2d(
            conv.in_channels, f.basis.shape[0], conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, bias=False, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        basis.weight = _frozen(f.basis)
        return cls(basis, f.coeff, f.sigma, None if conv.bias is None else conv.bias)

    def _set_basis_width(self, n: int) -> None:
        self.basis.out_channels = n

    # the geometry of the conv it replaced, which models read (Hugging Face's MobileNets pad by
    # `conv.stride` and `conv.kernel_size` in their forward)
    kernel_size = property(lambda self: self.basis.kernel_size)
    stride = property(lambda self: self.basis.stride)
    padding = property(lambda self: self.basis.padding)
    dilation = property(lambda self: self.basis.dilation)
    padding_mode = property(lambda self: self.basis.padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        t = self.basis(x)
        w = self.scaling_weight()
        return F.conv2d(t, w.view(*w.shape, 1, 1), self.bias, groups=self.groups)

    def to_conv(self) -> nn.Conv2d:
        """The dense conv this pair computes (alpha folded in)."""
        b = self.basis
        conv = nn.Conv2d(b.in_channels, self.out_channels, b.kernel_size, b.stride, b.padding, b.dilation,
                         b.groups, bias=self.bias is not None, padding_mode=b.padding_mode,
                         device=b.weight.device, dtype=b.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        b = self.basis
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={b.kernel_size}, stride={b.stride}, "
                f"rank={self.rank}/{self.full_rank}, groups={self.groups}, bias={self.bias is not None}")


class BasisLinear(_BasisLayer):
    """An `nn.Linear` as a basis projection (orthonormal rows) followed by scaling."""

    def __init__(self, basis: nn.Linear, coeff: Tensor, sigma: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        if basis.bias is not None:
            raise ValueError("the basis projection carries no bias; pass the bias separately")
        self.basis = basis.requires_grad_(False)
        self._init_scaling(coeff, sigma, bias, 1)
        self.in_features, self.out_features = basis.in_features, coeff.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "BasisLinear":
        """Exact full-rank decomposition of `linear` (SVD in float64)."""
        if type(linear) is not nn.Linear:
            raise TypeError(f"BasisLinear.from_linear takes an nn.Linear, got {type(linear).__name__}")
        f = factorize(linear.weight)
        basis = nn.Linear(linear.in_features, f.basis.shape[0], bias=False,
                          device=linear.weight.device, dtype=linear.weight.dtype)
        basis.weight = _frozen(f.basis)
        return cls(basis, f.coeff, f.sigma, linear.bias)

    def _set_basis_width(self, n: int) -> None:
        self.basis.out_features = n

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.basis(x), self.scaling_weight(), self.bias)

    def to_linear(self) -> nn.Linear:
        """The dense linear layer this pair computes (alpha folded in)."""
        w = self.basis.weight
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}/{self.full_rank}, bias={self.bias is not None}")


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an (N, C, H, W) map (ConvNeXt's LayerNorm2d):
    what compile makes of `permute(0, 2, 3, 1) → LayerNorm(C) → permute(0, 3, 1, 2)`."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"ChannelLayerNorm expects an (N, C, H, W) input, got shape {tuple(x.shape)}")
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


SOFTMAX_AXES = ("channels", "width", "pixels")


class MapSoftmax(nn.Module):
    """Softmax of an (N, C, H, W) map over one axis:

    * "channels": over `groups` interleaved groups of C / groups channels, channel g·C/groups + m
      being member g of softmax m (split attention's softmax over its radix: SKNet, ResNeSt);
      groups = C is `softmax(dim=1)`;
    * "width": over each row, per channel (`softmax(dim=-1)`: MobileViT v2's linear attention);
    * "pixels": over each image's H×W pixels, per channel (GCNet's context attention)."""

    def __init__(self, axis: str, groups: int = 1) -> None:
        super().__init__()
        if axis not in SOFTMAX_AXES:
            raise ValueError(f"MapSoftmax: axis must be one of {SOFTMAX_AXES}, got {axis!r}")
        if type(groups) is not int or groups < 1 or (axis != "channels" and groups != 1):
            raise ValueError(f"MapSoftmax: groups must be a positive int (1 unless axis is 'channels'), got {groups!r}")
        self.axis, self.groups = axis, groups

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or (self.axis == "channels" and x.shape[1] % self.groups):
            raise ValueError(f"MapSoftmax expects an (N, C, H, W) input with C a multiple of {self.groups}, got shape "
                             f"{tuple(x.shape)}")
        n, c, h, w = x.shape
        if self.axis == "channels":
            return x.reshape(n, self.groups, c // self.groups, h, w).softmax(1).reshape(n, c, h, w)
        if self.axis == "width":
            return x.softmax(3)
        return x.reshape(n, c, h * w).softmax(2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"axis={self.axis!r}, groups={self.groups}"


BasisLayer = (BasisConv2d, BasisLinear)


def inside_basis_layer(model: nn.Module, name: str) -> bool:
    """Whether module `name` of `model` is a part (e.g. `.basis`) of a basis layer."""
    parts = name.split(".") if name else []
    return any(isinstance(model.get_submodule(".".join(parts[:i])), BasisLayer) for i in range(1, len(parts)))


def scaling_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The basis scaling factors `alpha` of every basis layer in `model`."""
    return [m.alpha for m in model.modules() if isinstance(m, BasisLayer)]
