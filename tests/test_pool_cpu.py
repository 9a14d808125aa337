"""The C++ NHWC pooling kernel (PoolStep) against PyTorch's float64 pooling, outputs poisoned."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import basisrt
from basisrt import _C
from basisrt.compiler.cpu_steps import PoolStep, pool_step


def cases(n: int = 60, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = (rng.randint(1, 4), rng.randint(1, 4))
        pad = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        stride = (rng.randint(1, 3), rng.randint(1, 3))
        hw = (rng.randint(max(k[0] - 2 * pad[0], 1), 11), rng.randint(max(k[1] - 2 * pad[1], 1), 11))
        out.append(dict(kind=("max", "avg")[i % 2], k=k, pad=pad, stride=stride, hw=hw, n=rng.randint(1, 4),
                        c=rng.choice([1, 3, 16, 17, 40]), include=rng.random() < 0.5, ceil=i % 4 >= 2))
    return out


def reference(c, x):
    if c["kind"] == "max":
        return F.max_pool2d(x, c["k"], c["stride"], c["pad"], ceil_mode=c["ceil"])
    return F.avg_pool2d(x, c["k"], c["stride"], c["pad"], count_include_pad=c["include"], ceil_mode=c["ceil"])


@pytest.mark.parametrize("c", cases(), ids=lambda c: "{kind}k{k}s{stride}p{pad}hw{hw}c{c}ceil{ceil}".format(**c))
def test_pool_matches_float64(c):
    """Floor and ceil mode (the output size decides which: the kernel clips the last windows)."""
    x = torch.randn(c["n"], c["c"], *c["hw"], dtype=torch.float64)
    ref = reference(c, x)
    out = torch.full((ref.shape[0], *ref.shape[2:], ref.shape[1]), float("nan"))  # poisoned NHWC
    _C.pool_nhwc(x.float().permute(0, 2, 3, 1).contiguous().numpy(), out.numpy(), c["k"], c["stride"], c["pad"],
                 getattr(_C.PoolKind, c["kind"]), c["include"], 2)
    y = out.permute(0, 3, 1, 2)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
    step = pool_step((nn.MaxPool2d if c["kind"] == "max" else nn.AvgPool2d)(
        c["k"], c["stride"], c["pad"], ceil_mode=c["ceil"], **({} if c["kind"] == "max" else
                                                                {"count_include_pad": c["include"]})), 2)
    assert step.geometry(*c["hw"])[2] == tuple(ref.shape[2:])
    torch.testing.assert_close(step(x.float()).double(), ref, rtol=1e-6, atol=1e-6)


def test_global_average_and_module_mapping():
    x = torch.randn(2, 24, 5, 7)
    y = PoolStep("avg", None)(x)
    torch.testing.assert_close(y, F.adaptive_avg_pool2d(x, 1))
    assert pool_step(nn.AdaptiveAvgPool2d((2, 2)), None).output_size == (2, 2)  # adaptive windows
    assert pool_step(nn.AdaptiveAvgPool2d((2, 2)), None, (6, 4)).kernel == (3, 2)  # uniform ones
    assert pool_step(nn.AdaptiveAvgPool2d((None, 3)), None, (5, 7)).output_size == (5, 3)
    assert pool_step(nn.AdaptiveMaxPool2d(2, return_indices=True), None, (4, 4)) is None
    assert pool_step(nn.MaxPool2d(2, ceil_mode=True), None).ceil_mode
    assert pool_step(nn.MaxPool2d(3, 2, 1), None).stride == (2, 2)
    assert pool_step(nn.AvgPool2d(2, divisor_override=3), None) is None


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("hw,out", [((1, 1), (6, 6)), ((2, 2), (7, 7)), ((4, 6), (6, 4)), ((5, 7), (3, 2)),
                                    ((13, 11), (6, 5)), ((3, 3), (3, 3))])
def test_adaptive_pool_matches_float64_where_windows_overlap(kind, hw, out):
    """AlexNet's AdaptiveAvgPool2d((6, 6)) and VGG's (7, 7) on maps of any size: windows that
    overlap, differ in size, or repeat one pixel (upsampling)."""
    torch.manual_seed(hw[0] * 31 + out[1])
    x = torch.randn(3, 19, *hw, dtype=torch.float64)
    ref = (F.adaptive_avg_pool2d if kind == "avg" else F.adaptive_max_pool2d)(x, out)
    y = torch.full((3, *out, 19), float("nan"))  # poisoned NHWC
    _C.pool_nhwc(x.float().permute(0, 2, 3, 1).contiguous().numpy(), y.numpy(), (0, 0), (1, 1), (0, 0),
                 getattr(_C.PoolKind, kind), True, 2)
    torch.testing.assert_close(y.permute(0, 3, 1, 2).double(), ref, rtol=1e-6, atol=1e-6)
    module = nn.AdaptiveAvgPool2d(out) if kind == "avg" else nn.AdaptiveMaxPool2d(out)
    step = pool_step(module, 2, hw)
    torch.testing.assert_close(step(x.float()).double(), ref, rtol=1e-6, atol=1e-6)


def test_bad_pool_geometry_is_a_clear_error():
    x = torch.randn(1, 2, 4, 4).permute(0, 2, 3, 1).contiguous()
    with pytest.raises(ValueError, match="padding at most half"):
        _C.pool_nhwc(x.numpy(), torch.empty(1, 4, 4, 2).numpy(), (2, 2), (1, 1), (2, 2), _C.PoolKind.max, True, 1)
    with pytest.raises(ValueError, match="does not match"):
        _C.pool_nhwc(x.numpy(), torch.empty(1, 3, 3, 2).numpy(), (2, 2), (2, 2), (0, 0), _C.PoolKind.max, True, 1)
    with pytest.raises(ValueError, match="adaptive pool"):
        _C.pool_nhwc(x.numpy(), torch.empty(1, 3, 3, 2).numpy(), (0, 0), (1, 1), (1, 1), _C.PoolKind.avg, True, 1)
    with pytest.raises(ValueError, match="kernel"):
        _C.pool_nhwc(x.numpy(), torch.empty(1, 3, 3, 2).numpy(), (0, 2), (1, 1), (0, 0), _C.PoolKind.avg, True, 1)
    with pytest.raises(ValueError, match="4-D float32"):
        PoolStep("max", (2, 2))(torch.randn(2, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("k, stride, hw, c", [((2, 2), None, (6, 7), 16), ((3, 2), (1, 2), (7, 5), 17),
                                              ((9, 11), None, (9, 11), 3), ((1, 1), (2, 1), (5, 4), 40)])
def test_l2_pool_matches_float64(k, stride, hw, c):
    """LPPool2d(2): the root of each window's sum of squares (a whole map's: ConvNeXt-V2's norm)."""
    x = torch.randn(3, c, *hw, dtype=torch.float64)
    ref = F.lp_pool2d(x, 2, k, stride)
    step = pool_step(nn.LPPool2d(2, k, stride), 2)
    assert step.kind == "l2" and step.geometry(*hw)[2] == tuple(ref.shape[2:])
    torch.testing.assert_close(step(x.float()).double(), ref, rtol=1e-6, atol=1e-6)
    x[0, 0, 0, 0] = float("nan")
    assert torch.isnan(step(x.float())[0, 0, 0, 0])
    assert pool_step(nn.LPPool2d(3, 2), None) is None and pool_step(nn.LPPool2d(2, 2, ceil_mode=True), None) is None


@pytest.mark.parametrize("kind, k, stride, pad", [("avg", 1280, None, 0), ("max", (9, 4), (5, 3), 1), ("avg", 8, 2, 3)])
def test_ceil_mode_window_larger_than_the_map(kind, k, stride, pad):
    """Hugging Face's EfficientNet pools its 7×7 map with AvgPool2d(1280, ceil_mode=True): one
    window, clipped to the map, as PyTorch gives."""
    x = torch.randn(2, 5, 7, 6)
    module = (nn.AvgPool2d if kind == "avg" else nn.MaxPool2d)(k, stride, pad, ceil_mode=True)
    ref = module(x.double())
    step = pool_step(module, 2)
    assert step.geometry(7, 6)[2] == tuple(ref.shape[2:])
    torch.testing.assert_close(step(x).double(), ref, rtol=1e-6, atol=1e-6)
    model = nn.Sequential(nn.Conv2d(5, 5, 1), module).eval()
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
