"""Reference architectures (randomly initialised, CIFAR-style 3×32×32 inputs).

Every model is built from plain `nn.Conv2d` / `nn.Linear` / norm / activation modules (one module
per use, no weight sharing, no functional convs) and traces with `torch.fx.symbolic_trace`, so
`basisrt.decompose` and `basisrt.compile` can rewrite any of them.

    vgg16        13 conv3×3 + BN + ReLU, 5 max-pools, Linear(512, classes)
    resnet18     CIFAR ResNet-18: residual adds, 1×1 projection shortcuts
    mobilenetv2  CIFAR MobileNetV2: depthwise convs, inverted residuals
    densenet     DenseNet-BC: channel concatenation (torch.cat), bottlenecks, transitions
    vit_mlp      small ViT: token Linear layers, attention from matmul + softmax
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["REFERENCE_MODELS", "create", "densenet", "mobilenetv2", "resnet18", "vgg16", "vit_mlp"]


def _init(model: nn.Module) -> nn.Module:
    """Deterministic (given the torch seed) init keeping activations O(1) in eval mode: Kaiming fan-in
    convs (fan-out would shrink depthwise convs by their width), unit norms, small Linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv (no bias, 'same' padding) followed by BatchNorm."""
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


# ---------------------------------------------------------------------------------------- VGG16

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR VGG16: 13 conv3×3-BN-ReLU, 5 MaxPool2d(2), flatten, Linear(512, num_classes)."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [*_conv_bn(c, v), nn.ReLU(inplace=False)]
            c = v
    return _init(nn.Sequential(nn.Sequential(*layers), nn.Flatten(1), nn.Linear(512, num_classes)))


# ------------------------------------------------------------------------------------- ResNet18

class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus identity or 1×1 conv-BN shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3)
        change = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride)) if change else nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3×3 stride-1 stem, no max-pool, 4 stages of BasicBlocks, global avg-pool, Linear."""

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, 64), nn.ReLU(inplace=False))
        stages, c = [], 64
        for i, (n, w) in enumerate(zip(blocks, (64, 128, 256, 512))):
            blocks = [BasicBlock(c if j == 0 else w, w, 2 if i and j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            c = w
        self.layers = nn.Sequential(*stages)
        self.pool, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18 (2-2-2-2 BasicBlocks, widths 64-128-256-512)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


# ---------------------------------------------------------------------------------- MobileNetV2

def _divisible(v: float, d: int = 8) -> int:
    """Round channel count `v` to a multiple of `d`, never below 90% of `v` (as in torchvision)."""
    r = max(d, int(v + d / 2) // d * d)
    return r + d if r < 0.9 * v else r


class InvertedResidual(nn.Module):
    """[1×1 expand-BN-ReLU6] → depthwise 3×3-BN-ReLU6 → 1×1 project-BN, residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.ReLU6(inplace=False)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=False)]
        layers += _conv_bn(hidden, c_out, 1)
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


_MBV2 = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """CIFAR MobileNetV2: stride-1 stem and stride-1 second stage (32→16→8→4), 1280-wide head."""
    c = _divisible(32 * width_mult)
    last = _divisible(1280 * max(1.0, width_mult))
    layers: list[nn.Module] = [*_conv_bn(in_channels, c, 3, 1), nn.ReLU6(inplace=False)]
    for t, ch, n, s in _MBV2:
        out = _divisible(ch * width_mult)
        for i in range(n):
            layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
            c = out
    layers += [*_conv_bn(c, last, 1), nn.ReLU6(inplace=False)]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.2), nn.Linear(last, num_classes)]
    return _init(nn.Sequential(nn.Sequential(*layers), *head))


# ------------------------------------------------------------------------------------- DenseNet

class DenseLayer(nn.Module):
    """DenseNet-BC bottleneck BN-ReLU-1×1conv(4k)-BN-ReLU-3×3conv(k); output concatenated to input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x))))))
        return torch.cat([x, new], 1)


class DenseNet(nn.Module):
    """DenseNet-BC for 32×32 inputs: 3×3 stem, dense blocks, transitions BN-ReLU-1×1conv-AvgPool2d(2)."""

    def __init__(self, growth_rate: int = 12, block_config: Sequence[int] = (6, 12, 24, 16),
                 compression: float = 0.5, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        c = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
        for i, n in enumerate(block_config):
            for _ in range(n):
                layers.append(DenseLayer(c, growth_rate))
                c += growth_rate
            if i < len(block_config) - 1:
                c_out = int(c * compression)
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=False), nn.Conv2d(c, c_out, 1, bias=False),
                           nn.AvgPool2d(2)]
                c = c_out
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=False)]
        self.features = nn.Sequential(*layers)
        self.pool, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def densenet(num_classes: int = 10, in_channels: int = 3, growth_rate: int = 12,
             block_config: Sequence[int] = (6, 12, 24, 16)) -> nn.Module:
    """Small DenseNet-BC (growth 12, blocks 6-12-24-16, compression 0.5): ~1M parameters."""
    return DenseNet(growth_rate, block_config, 0.5, num_classes, in_channels)


# -------------------------------------------------------------------------------------- ViT-MLP

class Attention(nn.Module):
    """Multi-head self-attention from a qkv Linear, matmul + softmax, and an output Linear."""

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        assert dim % heads == 0, f"dim {dim} not divisible by heads {heads}"
        self.heads, self.tokens, self.scale = heads, tokens, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, dim = self.tokens, self.heads, self.proj.in_features
        qkv = self.qkv(x).reshape(-1, n, 3, h, dim // h).permute(2, 0, 3, 1, 4)  # (3, B, h, n, d)
        attn = torch.softmax((qkv[0] @ qkv[1].transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ qkv[2]).transpose(1, 2).reshape(-1, n, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, tokens: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Small ViT: non-overlapping patches → Linear embedding + learned positions → blocks → LN → mean → Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        assert image_size % patch_size == 0, f"image_size {image_size} not divisible by patch_size {patch_size}"
        self.patch_size, tokens = patch_size, (image_size // patch_size) ** 2
        self.embed = nn.Linear(in_channels * patch_size ** 2, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, tokens) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)
        _init(self)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.patch_size, stride=self.patch_size).transpose(1, 2)  # (B, tokens, C·p·p)
        x = self.blocks(self.embed(patches) + self.pos)
        return self.head(self.norm(x).mean(1))


def vit_mlp(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
            dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: int = 2) -> nn.Module:
    """Small ViT built from nn.Linear layers (64 tokens of dim 128, 4 blocks, 4 heads by default)."""
    return ViT(num_classes, in_channels, image_size, patch_size, dim, depth, heads, mlp_ratio)


# ------------------------------------------------------------------------------------- registry

REFERENCE_MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16, "resnet18": resnet18, "mobilenetv2": mobilenetv2, "densenet": densenet, "vit_mlp": vit_mlp,
}


def all_models() -> dict[str, Callable[..., nn.Module]]:
    """The reference models and the real-model architectures of basisrt.zoo, by name."""
    from . import zoo
    return {**REFERENCE_MODELS, **zoo.MODELS}


def input_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) of one input of model `name`: 32×32 for the reference (CIFAR) models, the zoo's own."""
    from . import zoo
    return zoo.INPUT_SHAPES.get(name, (3, 32, 32))


def create(name: str, **kwargs) -> nn.Module:
    """Build model `name` (a key of REFERENCE_MODELS or basisrt.zoo.MODELS) with constructor `kwargs`."""
    from . import zoo
    found = all_models()
    if name not in found:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(found))}")
    return zoo.create(name, **kwargs) if name in zoo.MODELS else found[name](**kwargs)
