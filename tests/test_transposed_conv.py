"""Transposed convs (U-Net and LinkNet decoders) as a stride-1 conv of all their phases and a
depth-to-space gather (fusion.transposed_as_conv), and pixel shuffles as a channel gather and the same
depth-to-space gather, in plans and native programs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import matches_eager_and_round_trips
from torch import nn

import basisrt
from basisrt import _C
from basisrt.compiler.cpu_steps import DepthToSpaceStep
from basisrt.compiler.fusion import transposed_as_conv

CASES = [  # (kernel, stride, padding, output_padding, H, W)
    (4, 2, 1, 0, 5, 6), (2, 2, 0, 0, 4, 3), (3, 2, 1, 1, 5, 5), (3, 1, 1, 0, 4, 7), (5, 3, 2, 2, 4, 4),
    (3, 2, 0, 0, 3, 2), (1, 1, 0, 0, 3, 3), (7, 4, 3, 1, 2, 3), ((3, 4), (1, 2), (0, 1), (0, 1), 5, 4),
]


@pytest.mark.parametrize("k, s, p, op, h, w", CASES)
def test_phases_conv_and_gather_equal_the_transposed_conv_in_float64(k, s, p, op, h, w):
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(5, 7, k, s, p, op).double()
    x = torch.randn(2, 5, h, w, dtype=torch.float64)
    ref = ct(x).detach()
    conv, index, offset, zhw = transposed_as_conv(ct, (h, w), tuple(ref.shape[2:]))
    z = conv(x).detach()
    assert tuple(z.shape[2:]) == zhw
    flat = z.permute(0, 2, 3, 1).reshape(2, -1, z.shape[1])  # (N, pixels, channels)
    got = torch.stack([flat[:, i, o:o + 7] for i, o in zip(index.tolist(), offset.tolist())], 1)
    got = got.reshape(2, *ref.shape[2:], 7).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_gather_kernel_copies_channel_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 12)).astype(np.float32)
    index = rng.integers(-1, 12, 10).astype(np.int64)
    offset = rng.integers(0, 8, 10).astype(np.int64)
    out = np.full((2, 2, 5, 5), np.nan, np.float32)
    _C.pixel_gather_nhwc(x, index, out, 2, offset=offset)
    flat = x.reshape(2, 12, 12)
    want = np.stack([flat[:, i, o:o + 5] if i >= 0 else np.zeros((2, 5), np.float32)
                     for i, o in zip(index, offset)], 1).reshape(2, 2, 5, 5)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("offset, message", [(np.full(10, 8, np.int64), "outside the input's 12"),
                                             (np.full(10, -1, np.int64), "outside"),
                                             (np.zeros(9, np.int64), "one entry per output pixel"),
                                             (np.zeros(10, np.int32), "int64")])
def test_gather_kernel_refuses_bad_offsets(offset, message):
    with pytest.raises(ValueError, match=message):
        _C.pixel_gather_nhwc(np.zeros((1, 3, 4, 12), np.float32), np.zeros(10, np.int64),
                             np.zeros((1, 2, 5, 5), np.float32), 1, offset=offset)
    with pytest.raises(ValueError, match="x's N and C"):
        _C.pixel_gather_nhwc(np.zeros((1, 3, 4, 12), np.float32), np.zeros(10, np.int64),
                             np.zeros((1, 2, 5, 5), np.float32), 1)


class Decoder(nn.Module):
    """LinkNet's TransposeX2 (4×4, stride 2, BN, ReLU), U-Net's 2×2 up-convs, a 3×3 with
    output_padding, a transposed conv given an output_size, and one the plan leaves to PyTorch
    (groups 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.up3 = nn.ConvTranspose2d(8, 4, 2, stride=2, bias=False)
        self.grouped = nn.ConvTranspose2d(4, 4, 3, padding=1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up2(self.up1(F.relu(self.enc(x))))
        y = self.up3(F.relu(y), output_size=[2 * y.shape[2], 2 * y.shape[3]])
        return self.grouped(y)


@pytest.mark.parametrize("capture", ["fx", "dynamo"])
def test_decoders_run_natively_but_for_grouped_transposed_convs(capture, tmp_path):
    torch.manual_seed(0)
    model = Decoder().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 17, 15)
    compiled = basisrt.compile(model, x, dense_backend="basisrt", capture=capture)
    assert sum(s.strategy == "pixel_gather" for s in compiled.plan.steps) == 3
    # up1's BN and ReLU fold into its conv; the ReLU after up2 does too under Dynamo, and stays a step
    # under fx, where y.shape (up3's output_size) reads up2 as well
    assert sum(s.strategy == "affine" for s in compiled.plan.steps) == (1 if capture == "fx" else 0)
    assert len(compiled.plan.not_native) == 1 and "ConvTranspose2d" in compiled.plan.not_native[0][1]
    matches_eager_and_round_trips(compiled, model, x, tmp_path)


def test_a_decoder_of_supported_transposed_convs_is_native():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(6, 4, 2, stride=2)).eval()
    x = torch.randn(2, 3, 10, 12)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert compiled(torch.randn(0, 3, 10, 12)).shape == (0, 4, 20, 24)


def test_step_refuses_a_map_of_another_size():
    step = DepthToSpaceStep(torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), 2, (2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"expects a float32 \(N, C, 2, 2\) input"):
        step(torch.randn(1, 3, 3, 3))


class SuperResolution(nn.Module):
    """ESPCN-style upsampling: a conv to C·r² channels, then pixel shuffle (module and function)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 5, padding=2), nn.Conv2d(16, 3 * 9, 3, padding=1)
        self.shuffle, self.c = nn.PixelShuffle(3), nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.c(self.shuffle(self.b(F.relu(self.a(x))))), 2)


@pytest.mark.parametrize("capture", ["fx", "dynamo"])
def test_pixel_shuffle_runs_native_and_exact(capture, tmp_path):
    torch.manual_seed(0)
    model, x = SuperResolution().eval(), torch.randn(2, 3, 7, 9)
    compiled = basisrt.compile(model, x, dense_backend="basisrt", capture=capture)
    assert compiled.native is not None, compiled.plan.not_native
    assert [s.strategy for s in compiled.plan.steps].count("pixel_gather") == 2
    matches_eager_and_round_trips(compiled, model, x, tmp_path)
