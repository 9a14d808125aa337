"""Attention blocks (split attention, selective kernels, global context, softmax heads): the softmax
kernel against float64, and whole blocks written as third-party models write them compiled into one
native program that matches eager PyTorch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import matches_eager_and_round_trips
from torch import nn

import basisrt
from basisrt import _C
from basisrt.compiler.cpu_steps import SoftmaxStep
from basisrt.layers import MapSoftmax

_AXES = {"channels": _C.SoftmaxAxis.channels, "width": _C.SoftmaxAxis.width, "pixels": _C.SoftmaxAxis.pixels}


def _reference(x: np.ndarray, axis: str, groups: int) -> np.ndarray:
    """float64 softmax of NHWC x over `axis`."""
    t = torch.from_numpy(x).double()
    n, h, w, c = t.shape
    if axis == "channels":  # channel g·(C/groups) + m is member g of softmax m
        return t.reshape(n, h, w, groups, c // groups).softmax(3).reshape(n, h, w, c).numpy()
    if axis == "width":
        return t.softmax(2).numpy()
    return t.reshape(n, h * w, c).softmax(1).reshape(n, h, w, c).numpy()


@pytest.mark.parametrize("seed", range(8))
def test_kernel_against_float64_on_random_shapes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for axis in _AXES:
        n, h, w = (int(v) for v in rng.integers(1, 8, 3))
        groups = int(rng.choice([1, 2, 3, 5])) if axis == "channels" else 1
        c = groups * int(rng.choice([1, 7, 16, 33])) if axis == "channels" else int(rng.choice([1, 3, 17, 40]))
        wide = rng.standard_normal((n, h, w, c + 5)).astype(np.float32) * 4
        x = wide[..., 2:2 + c]  # a channel slice: pixel stride c + 5
        out = np.full((n, h, w, c + 3), np.nan, np.float32)  # poisoned, and wider than the result
        _C.softmax_nhwc(x, out[..., :c], _AXES[axis], groups, 2)
        np.testing.assert_allclose(out[..., :c], _reference(np.ascontiguousarray(x), axis, groups), rtol=1e-5,
                                   atol=1e-7)
        assert np.isnan(out[..., c:]).all()  # outside the slice: untouched


def test_softmax_of_all_channels_in_place() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 21)).astype(np.float32)
    want = _reference(x, "channels", 21)
    _C.softmax_nhwc(x, x, _C.SoftmaxAxis.channels, 21, 1)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("axis", ["width", "pixels"])
def test_one_channel_map_over_rows_and_pixels(axis: str) -> None:
    """A contiguous one-channel map (GCNet's attention logits) takes a path of its own."""
    x = np.random.default_rng(2).standard_normal((3, 7, 29, 1)).astype(np.float32) * 5
    out = np.full_like(x, np.nan)
    _C.softmax_nhwc(x, out, _AXES[axis], 1, 2)
    np.testing.assert_allclose(out, _reference(x, axis, 1), rtol=1e-5, atol=1e-8)


def test_nan_and_infinities_as_pytorch() -> None:
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 4)).astype(np.float32)
    x[0, 0, 0, 1] = np.nan  # its set (pixel (0, 0) over channels; column 0 of row 0; image 0, channel 1)
    x[0, 1, 2, 3] = np.inf
    x[0, 1, 1, 2] = -np.inf
    for axis, groups, to_torch, dim in (("channels", 4, lambda t: t, 3), ("width", 1, lambda t: t, 2)):
        out = np.empty_like(x)
        _C.softmax_nhwc(x, out, _AXES[axis], groups, 1)
        want = torch.from_numpy(x).softmax(dim).numpy()
        np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
        np.testing.assert_allclose(np.nan_to_num(out), np.nan_to_num(want), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("axis, groups, message", [
    (_C.SoftmaxAxis.channels, 3, "groups must divide"),
    (_C.SoftmaxAxis.channels, 0, "groups must divide"),
    (_C.SoftmaxAxis.width, 2, "else be 1"),
])
def test_kernel_refuses_bad_groups(axis, groups: int, message: str) -> None:
    x = np.ones((1, 2, 2, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        _C.softmax_nhwc(x, np.empty_like(x), axis, groups, 1)


def test_layer_and_step_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="axis must be one of"):
        MapSoftmax("rows")
    with pytest.raises(ValueError, match="groups must be a positive int"):
        MapSoftmax("width", 2)
    with pytest.raises(ValueError, match="C a multiple of 3"):
        MapSoftmax("channels", 3)(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="C a multiple of 3"):
        SoftmaxStep("channels", 3)(torch.randn(1, 4, 2, 2))


class SelectiveKernel(nn.Module):
    """SKNet's block as timm writes it: paths stacked along dim 1, their sum pooled, attention
    logits viewed (N, R, C, 1, 1), softmax over the paths, weighted sum."""

    def __init__(self, c: int = 16, paths: int = 2) -> None:
        super().__init__()
        self.paths = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, padding=1 + i, dilation=1 + i), nn.ReLU())
                                   for i in range(paths))
        self.reduce = nn.Conv2d(c, 8, 1)
        self.select = nn.Conv2d(8, c * paths, 1)
        self.r = paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.stack([p(x) for p in self.paths], dim=1)
        attn = self.select(F.relu(self.reduce(x.sum(1).mean((2, 3), keepdim=True))))
        b, c, h, w = attn.shape
        attn = torch.softmax(attn.view(b, self.r, c // self.r, h, w), dim=1)
        return torch.sum(x * attn, dim=1)


class SplitAttention(nn.Module):
    """ResNeSt's split attention: one grouped conv of R·C channels viewed (N, R, C, H, W), and the
    radix softmax over a (N, K, R, -1) view transposed (K = cardinality)."""

    def __init__(self, c: int = 16, radix: int = 2, cardinality: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c * radix, 3, padding=1, groups=radix * cardinality)
        self.fc1 = nn.Conv2d(c, 8, 1, groups=cardinality)
        self.fc2 = nn.Conv2d(8, c * radix, 1, groups=cardinality)
        self.radix, self.cardinality = radix, cardinality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        b, rc, h, w = x.shape
        x = x.reshape((b, self.radix, rc // self.radix, h, w))
        gap = F.relu(self.fc1(x.sum(dim=1).mean((2, 3), keepdim=True)))
        attn = self.fc2(gap)
        attn = attn.view(b, self.cardinality, self.radix, -1).transpose(1, 2)
        attn = F.softmax(attn, dim=1).reshape(b, -1).view(b, -1, 1, 1)
        return (x * attn.reshape((b, self.radix, rc // self.radix, 1, 1))).sum(dim=1).contiguous()


class GlobalContext(nn.Module):
    """GCNet's context block (timm / mmcv): softmax over the pixels of a one-channel map, matmul
    with the map's pixels, a bottleneck added back."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.attn = nn.Conv2d(c, 1, 1)
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = F.softmax(self.attn(x).reshape(b, 1, h * w), dim=-1).unsqueeze(3)
        context = (x.reshape(b, c, h * w).unsqueeze(1) @ attn).view(b, c, 1, 1)
        return x + self.fc2(F.relu(self.fc1(context)))


class LinearAttention(nn.Module):
    """MobileViT v2's separable self-attention (timm): softmax of a query row over the last dim, a
    context vector per row, expanded over the values."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.qkv, self.out = nn.Conv2d(c, 1 + 2 * c, 1), nn.Conv2d(c, c, 1)
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv(x).split([1, self.c, self.c], dim=1)
        context = (key * F.softmax(query, dim=-1)).sum(dim=-1, keepdim=True)
        return x + self.out(F.relu(value) * context.expand_as(value))


class AttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.sk, self.split = SelectiveKernel(), SplitAttention()
        self.gc, self.linear = GlobalContext(), LinearAttention()
        self.head = nn.Conv2d(16, 6, 1)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.linear(self.gc(self.split(self.sk(F.relu(self.stem(x))))))
        logits = self.head(y)
        rows = logits.sum(-1, keepdim=True) + logits.sum((2, 3), keepdim=True)
        return self.softmax(logits), F.softmax(logits * 0.5, dim=-1) + rows


def test_attention_blocks_compile_native_and_match_eager(tmp_path) -> None:
    torch.manual_seed(0)
    model = AttentionNet().eval()
    x = torch.randn(2, 3, 12, 10)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    assert sum(s.strategy == "softmax" for s in compiled.plan.steps) == 6
    matches_eager_and_round_trips(compiled, model, x, tmp_path)


def test_decomposed_attention_blocks_match_the_pruned_model() -> None:
    torch.manual_seed(1)
    model = AttentionNet().eval()
    x = torch.randn(2, 3, 12, 10)
    pruned = basisrt.decompose(model, exclude=("stem",)).model.eval()
    basisrt.prune_basis(pruned, "ratio", 0.5)
    compiled = basisrt.compile(pruned, x)
    assert compiled.native is not None, compiled.plan.not_native
    with torch.no_grad():
        want = pruned(x)
    for got, ref in zip(compiled(x), want):
        assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_mapsoftmax_runs_in_a_torch_plan() -> None:
    """The layer itself (PyTorch ops) where the plan has no native steps: the same values."""
    torch.manual_seed(2)
    x = torch.randn(2, 6, 3, 5)
    for axis, groups, want in (("channels", 6, x.softmax(1)), ("width", 1, x.softmax(3)),
                               ("pixels", 1, x.flatten(2).softmax(2).view_as(x)),
                               ("channels", 2, x.view(2, 2, 3, 3, 5).softmax(1).view_as(x))):
        got = MapSoftmax(axis, groups)(x)
        assert torch.allclose(got, want, atol=1e-7)
        assert torch.allclose(SoftmaxStep(axis, groups, 1)(x), want, atol=1e-6)


def test_a_softmax_over_the_whole_batch_is_not_a_per_image_op() -> None:
    """`attn.flatten().view(1, -1).softmax(1)` on a batch-1 example looks like a softmax over one
    image's channels, but spans every image of a larger batch: it must stay what it is."""

    class WholeBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            attn = self.fc(y.mean((2, 3), keepdim=True))
            return y * attn.flatten().view(1, -1).softmax(1).view_as(attn)

    torch.manual_seed(3)
    model = WholeBatch().eval()
    compiled = basisrt.compile(model, torch.randn(1, 3, 6, 6), dense_backend="basisrt")
    xb = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(compiled(xb), model(xb), rtol=1e-5, atol=1e-6)


def test_attention_plan_on_an_empty_batch_and_nan_as_eager() -> None:
    torch.manual_seed(4)
    model = AttentionNet().eval()
    compiled = basisrt.compile(model, torch.randn(2, 3, 12, 10), dense_backend="basisrt")
    assert compiled.native is not None
    assert [tuple(t.shape) for t in compiled(torch.randn(0, 3, 12, 10))] == [(0, 6, 12, 10)] * 2
    x = torch.randn(2, 3, 12, 10)
    x[1, 0, 5, 5] = float("nan")  # image 1 only: a softmax over its pixels spreads NaN through its maps
    with torch.no_grad():
        want = model(x)
    for got, ref in zip(compiled(x), want):
        assert torch.equal(torch.isnan(got), torch.isnan(ref)) and not torch.isnan(got[0]).any()
        torch.testing.assert_close(got.nan_to_num(), ref.nan_to_num(), rtol=1e-5, atol=1e-5)
