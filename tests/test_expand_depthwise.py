"""An MBConv's expand 1×1 conv and its depthwise conv as one native op (csrc/expand_depthwise.cpp):
the same answer as the two ops apart, and as eager, on odd sizes, strides, kernels and bands."""
import numpy as np
import pytest
import torch
from torch import nn

import basisrt
from basisrt import _C
from basisrt.compiler import program as lowering


class InvertedResidual(nn.Module):
    def __init__(self, c, e, k, stride, act, rank_pair):
        super().__init__()
        expand = [nn.Conv2d(c, rank_pair, 1, bias=False), nn.Conv2d(rank_pair, e, 1, bias=False)] if rank_pair \
            else [nn.Conv2d(c, e, 1, bias=False)]
        self.block = nn.Sequential(*expand, nn.BatchNorm2d(e), act(),
                                   nn.Conv2d(e, e, k, stride, k // 2, groups=e, bias=False), nn.BatchNorm2d(e), act(),
                                   nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))
        self.stride = stride

    def forward(self, x):
        y = self.block(x)
        return y + x if self.stride == 1 else y


def calibrated(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


CASES = [  # c, e, k, stride, act, rank pair (0: dense expand), H, W
    (8, 48, 3, 1, nn.ReLU6, 2, 15, 17),
    (8, 40, 3, 2, nn.SiLU, 0, 16, 13),
    (16, 96, 5, 1, nn.SiLU, 3, 9, 31),
    (12, 72, 5, 2, nn.Hardswish, 0, 21, 7),
    (4, 17, 3, 1, nn.ReLU, 0, 1, 5),  # one row; channels not a multiple of the vector
    # rows of 64 × 192 floats: several bands per chunk, each moving the rows it shares with the last
    (16, 192, 5, 1, nn.SiLU, 3, 40, 64),
    (16, 192, 3, 2, nn.ReLU6, 0, 41, 64),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[0]}e{c[1]}k{c[2]}s{c[3]}r{c[5]}hw{c[6]}x{c[7]}")
def test_expand_depthwise_op_matches_two_ops_and_eager(case, monkeypatch):
    c, e, k, stride, act, rank, h, w = case
    torch.manual_seed(sum(case[:4]) + h)
    model = calibrated(InvertedResidual(c, e, k, stride, act, rank))
    x = torch.randn(3, c, h, w)
    monkeypatch.setattr(lowering, "_EXPAND_DW_MIN_FLOATS", 1 << 40)
    apart = basisrt.compile(model, x, dense_backend="basisrt")
    monkeypatch.setattr(lowering, "_EXPAND_DW_MIN_FLOATS", 0)
    fused = basisrt.compile(model, x, dense_backend="basisrt")
    assert fused.native is not None and len(fused.native.fused_expands) == 1, fused.plan
    assert not apart.native.fused_expands and len(apart.native.op_names) == len(fused.native.op_names) + 1
    assert len(fused.native.op_names) == fused.native.program.ops
    for batch in (x, x[:1], torch.randn(5, c, h, w)):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                ref = model(batch)
            out = fused(batch)
            torch.testing.assert_close(out, apart(batch), rtol=1e-6, atol=1e-6)
            assert ((out.double() - ref.double()).norm() / ref.double().norm()).item() < 1e-5
    torch.set_num_threads(2)


def test_expand_depthwise_keeps_nan_where_eager_has_it(monkeypatch):
    monkeypatch.setattr(lowering, "_EXPAND_DW_MIN_FLOATS", 0)
    torch.manual_seed(1)
    model = calibrated(InvertedResidual(8, 48, 3, 1, nn.SiLU, 2))
    x = torch.randn(2, 8, 12, 11)
    x[0, 2, 5, 6] = float("nan")
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native.fused_expands
    with torch.no_grad():
        ref = model(x)
    out = compiled(x)
    assert torch.isnan(out).any() and torch.equal(torch.isnan(out), torch.isnan(ref))


def test_expand_depthwise_refuses_bad_geometry():
    p = _C.Program()
    a, b, big = p.add_buffer(8, 8, 4), p.add_buffer(8, 8, 16), p.add_buffer(12, 12, 16)
    w = np.zeros(16 * 16, np.float32)
    with pytest.raises(ValueError, match="overlapping the image"):  # padding 3 on a 3×3 kernel
        p.add_expand_depthwise(a, big, np.zeros(4 * 16, np.float32), None, None, 0, _C.Activation.none, 0.0,
                               np.zeros(9 * 16, np.float32), None, _C.Activation.none, 0.0, (3, 3), (1, 1), (3, 3),
                               (1, 1))
    with pytest.raises(ValueError, match="B"):
        p.add_expand_depthwise(a, b, w[:3], None, None, 0, _C.Activation.none, 0.0, np.zeros(9 * 16, np.float32),
                               None, _C.Activation.none, 0.0, (3, 3), (1, 1), (1, 1), (1, 1))
