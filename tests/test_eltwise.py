"""The eltwise kernel's four shapes of its second operand: a's shape, a gate of one pixel per image
(squeeze-excitation, (N, C, 1, 1)), a map of one channel per pixel (spatial attention, (N, 1, H, W):
CBAM, PAN), one pixel per row (MobileViT v2's context vector, (N, C, H, 1)); alone, in plans and in
native programs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import basisrt
from basisrt import _C
from basisrt.compiler import activations
from basisrt.compiler.cpu_steps import EltwiseStep

OPS = {"add": torch.add, "mul": torch.mul, "sub": torch.sub, "div": torch.div}


@pytest.mark.parametrize("act", [None, "relu", "silu"])
@pytest.mark.parametrize("op", ["add", "mul", "sub", "div"])
@pytest.mark.parametrize("b_shape", ["same", "gate", "map", "row"])
@pytest.mark.parametrize("n,c,h,w", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 4, 9), (1, 64, 8, 8)])
def test_kernel_matches_float64_on_channel_slices(n, c, h, w, b_shape, op, act):
    gen = torch.Generator().manual_seed(n * 100 + c + h)
    a = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    b = torch.randn(*{"same": (n, c, h, w), "gate": (n, c, 1, 1), "map": (n, 1, h, w), "row": (n, c, h, 1)}[b_shape],
                    generator=gen, dtype=torch.float64)
    ref = OPS[op](a, b)
    ref = F.silu(ref) if act == "silu" else ref.relu() if act == "relu" else ref
    wide_a = np.full((n, h, w, c + 3), np.nan, np.float32)  # NaN around the operands: a read outside shows
    wide_a[..., 1:1 + c] = a.float().permute(0, 2, 3, 1).numpy()
    cb = b.shape[1]
    wide_b = np.full((*b.permute(0, 2, 3, 1).shape[:3], cb + 2), np.nan, np.float32)
    wide_b[..., 2:2 + cb] = b.float().permute(0, 2, 3, 1).numpy()
    wide_y = np.full((n, h, w, c + 2), 7.0, np.float32)  # a sentinel around y: a write outside shows
    wide_y[..., 1:1 + c] = np.nan
    _C.eltwise_nhwc(wide_a[..., 1:1 + c], wide_b[..., 2:2 + cb], wide_y[..., 1:1 + c], _C.BinaryOp.__members__[op],
                    activations.code(act)[0], 2)
    out = torch.from_numpy(np.ascontiguousarray(wide_y[..., 1:1 + c])).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert (wide_y[..., :1] == 7).all() and (wide_y[..., 1 + c:] == 7).all()


def test_map_broadcast_keeps_nan_and_inf_as_pytorch():
    a, b = torch.randn(2, 5, 3, 4), torch.randn(2, 1, 3, 4)
    b[0, 0, 1, 2], b[1, 0, 0, 0], a[1, 3, 2, 2] = float("nan"), float("inf"), float("nan")
    for op in OPS:
        got, want = EltwiseStep(op, "relu", 2)(a, b), torch.relu(OPS[op](a, b))
        assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got).any()
        torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("b_shape, message", [((1, 4, 4, 2), "one channel per pixel"), ((1, 1, 4, 3), "a's shape"),
                                              ((1, 2, 2, 1), "one pixel per image")])
def test_kernel_refuses_other_shapes(b_shape, message):
    with pytest.raises(ValueError, match=message):
        _C.eltwise_nhwc(np.zeros((1, 4, 4, 3), np.float32), np.zeros(b_shape, np.float32),
                        np.zeros((1, 4, 4, 3), np.float32), _C.BinaryOp.mul, activations.code(None)[0], 1)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        EltwiseStep("mul")(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4))


class SpatialAttention(nn.Module):
    """CBAM's spatial attention (a gate map from the channel mean and max), PAN's attention product
    with the map first, and a squeeze-excitation gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.att = nn.Conv2d(2, 1, 7, padding=3)
        self.att2 = nn.Conv2d(16, 1, 1)
        self.se = nn.Conv2d(16, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        gate = torch.sigmoid(self.att(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)))
        y = y * gate
        y = torch.mul(self.att2(y), y)  # (N, 1, H, W) first
        return y * torch.sigmoid(self.se(F.adaptive_avg_pool2d(y, 1))) + self.att2(y)


def test_spatial_attention_models_run_native(tmp_path):
    torch.manual_seed(0)
    model, x = SpatialAttention().eval(), torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        ref = model(x)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert sum(s.strategy == "eltwise" for s in compiled.plan.steps) >= 3
    torch.testing.assert_close(compiled(x), ref, rtol=1e-5, atol=1e-5)
    assert not any("mul" in node and "eltwise" not in node for node, _ in compiled.plan.not_native), \
        compiled.plan.not_native
    compiled.save(tmp_path / "att.basisrt")
    assert torch.equal(basisrt.load(tmp_path / "att.basisrt")(x), compiled(x))


def test_a_map_times_its_broadcast_runs_native():
    """PAN's GAU: torch.mul(map (N, 1, H, W), features (N, C, H, W)) with every other op ours."""
    class Gau(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 1, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.mul(F.relu(self.a(x)), self.b(x)) + torch.relu(self.a(x))

    torch.manual_seed(0)
    model, x = Gau().eval(), torch.randn(2, 3, 6, 6)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_parameter_added_to_a_map_follows_the_batch():
    """A (1, C, H, W) parameter (a position embedding) looks like a map when the example input has
    batch 1: it stays a PyTorch add, broadcast over any batch, not an eltwise step of two maps."""
    class Pos(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pos = nn.Parameter(torch.randn(1, 4, 5, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + self.pos

    torch.manual_seed(0)
    model = Pos().eval()
    compiled = basisrt.compile(model, torch.randn(1, 3, 5, 5), dense_backend="basisrt")
    x = torch.randn(3, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


class PoolMixer(nn.Module):
    """PoolFormer's token mixer (pool(x) - x) in a GroupNorm residual block, a map minus a gate, and
    (gate_first) a gate minus a map, which has no kernel and stays PyTorch's."""

    def __init__(self, gate_first: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(1, 8)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.scale = nn.Parameter(torch.rand(8, 1, 1))
        self.gate_first = gate_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        z = self.norm(y)
        y = y + self.scale * (self.pool(z) - z)
        gate = y.mean((2, 3), keepdim=True)
        return (gate - y) if self.gate_first else (y - gate) * 2


@pytest.mark.parametrize("gate_first", [False, True])
def test_a_map_minus_a_map_or_a_gate_runs_native(gate_first: bool) -> None:
    torch.manual_seed(0)
    model = PoolMixer(gate_first).eval()
    x = torch.randn(2, 3, 7, 9)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    if gate_first:
        assert [why.split(":")[0] for _, why in compiled.plan.not_native] == ["call_function _operator.sub"]
    else:
        assert compiled.native is not None, compiled.plan.not_native
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), rtol=1e-5, atol=1e-5)
