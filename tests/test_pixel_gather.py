"""Pixel gathers: nearest upsampling and zero padding as one C++ copy kernel, in plans and native
programs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import matches_eager_and_round_trips
from torch import nn

import basisrt
from basisrt import _C
from basisrt.compiler.cpu_steps import PixelGatherStep


def _reference(x: np.ndarray, index: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    n, h, w, c = x.shape
    flat = np.concatenate([x.reshape(n, h * w, c), np.zeros((n, 1, c), x.dtype)], axis=1)  # -1: the zero row
    return flat[:, index, :].reshape(n, *out_hw, c)


@pytest.mark.parametrize("seed", range(6))
def test_kernel_against_reference_on_random_shapes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, h, w, c = (int(v) for v in rng.integers(1, 9, 4))
    c = int(rng.choice([c, 17, 33]))
    oh, ow = (int(v) for v in rng.integers(1, 12, 2))
    index = rng.integers(-1, h * w, oh * ow).astype(np.int64)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    out = np.full((n, oh, ow, c), np.nan, np.float32)  # poisoned: every element must be written
    _C.pixel_gather_nhwc(x, index, out, 2)
    np.testing.assert_array_equal(out, _reference(x, index, (oh, ow)))


def test_kernel_reads_and_writes_channel_slices() -> None:
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((2, 3, 4, 12)).astype(np.float32)
    out_wide = np.full((2, 2, 2, 9), np.nan, np.float32)
    index = np.array([0, 5, -1, 11], np.int64)
    _C.pixel_gather_nhwc(wide[..., 2:7], index, out_wide[..., 3:8], 1)
    np.testing.assert_array_equal(out_wide[..., 3:8], _reference(np.ascontiguousarray(wide[..., 2:7]), index, (2, 2)))
    assert np.isnan(out_wide[..., :3]).all() and np.isnan(out_wide[..., 8:]).all()  # outside the slice: untouched


@pytest.mark.parametrize("index, message", [
    (np.array([0, 1, 2], np.int64), "one entry per output pixel"),
    (np.array([0, 1, 2, 12], np.int64), "outside the input's pixels"),
    (np.array([0, 1, 2, -2], np.int64), "outside the input's pixels"),
    (np.array([0, 1, 2, 3], np.int32), "int64"),
])
def test_kernel_refuses_bad_indices(index: np.ndarray, message: str) -> None:
    x = np.ones((1, 3, 4, 2), np.float32)
    with pytest.raises(ValueError, match=message):
        _C.pixel_gather_nhwc(x, index, np.zeros((1, 2, 2, 2), np.float32), 1)


class UpsampleNet(nn.Module):
    """The ways models write it: nn.Upsample, F.interpolate with a size read off another map or a
    fractional scale, TensorFlow's "same" padding (one more row and column after), ZeroPad2d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.pad = nn.ZeroPad2d((1, 0, 2, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.a(x))
        z = self.down(F.pad(y, (0, 1, 0, 1)))
        z = self.up(z) + F.interpolate(z, size=y.shape[-2:], mode="nearest")
        z = F.interpolate(self.c(z), scale_factor=1.5, mode="nearest")
        return self.pad(z).mean((2, 3))


def test_upsampling_and_padding_run_native(tmp_path) -> None:
    torch.manual_seed(0)
    model = UpsampleNet().eval()
    x = torch.randn(2, 3, 10, 10)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    assert sum(s.strategy == "pixel_gather" for s in compiled.plan.steps) == 5
    for batch in (1, 2, 5):
        xb = torch.randn(batch, 3, 10, 10)
        with torch.no_grad():
            ref = model(xb)
        assert float((compiled(xb) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    compiled.save(str(tmp_path / "up.basisrt"))
    loaded = basisrt.load(str(tmp_path / "up.basisrt"))
    assert loaded.native is not None and torch.equal(loaded(x), compiled(x))


def test_step_refuses_a_map_of_another_size() -> None:
    step = PixelGatherStep(torch.arange(4), (2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"expects a float32 \(N, C, 2, 2\) input"):
        step(torch.randn(1, 3, 3, 3))


def test_bilinear_is_not_a_gather() -> None:
    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(self.conv(x), scale_factor=2, mode="bilinear")
    x = torch.randn(1, 3, 5, 5)
    model = Bilinear().eval()
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert [s.strategy for s in compiled.plan.steps if s.strategy in ("pixel_gather", "resample")] == ["resample"]
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-6)


def test_empty_batch_and_nan_as_eager() -> None:
    torch.manual_seed(0)
    model = UpsampleNet().eval()
    compiled = basisrt.compile(model, torch.randn(2, 3, 10, 10), dense_backend="basisrt")
    assert compiled.native is not None
    assert compiled(torch.randn(0, 3, 10, 10)).shape == (0, 8)
    x = torch.randn(2, 3, 10, 10)
    x[1, 0, 4, 4] = float("nan")
    with torch.no_grad():
        ref = model(x)
    y = compiled(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.isnan(y[1]).any() and not torch.isnan(y[0]).any()


def test_sizes_computed_from_shapes_are_constants() -> None:
    """segmentation_models_pytorch's U-Net: `h, w = skip.shape[2:]` unpacked, then
    `F.interpolate(x, size=(h, w))`; and arithmetic on sizes (`x.size(2) * 2`)."""
    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shapes = [t.shape[2:] for t in (x, x[:, :1])]
            h, w = shapes[1]
            y = self.down(x)
            up = F.interpolate(y, size=(h, w), mode="nearest")
            twice = F.interpolate(y, size=(y.size(2) * 2, y.shape[-1] * 2), mode="bilinear")
            return up + twice

    x = torch.randn(2, 3, 10, 10)
    model = Decoder().eval()
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    assert [s.strategy for s in compiled.plan.steps if s.strategy in ("pixel_gather", "resample")] == \
        ["pixel_gather", "resample"]
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


class CopyPadNet(nn.Module):
    """Pads that copy pixels: TResNet's reflection before its blur-downsampling conv, and the
    replication and circular modes, as functions and as modules."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.blur = nn.Conv2d(8, 8, 3, stride=2, groups=8)
        self.reflect = nn.ReflectionPad2d((2, 1, 0, 1))
        self.replicate = nn.ReplicationPad2d(1)
        self.b = nn.Conv2d(8, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blur(F.pad(F.relu(self.a(x)), [1, 1, 1, 1], mode="reflect"))
        y = self.b(self.replicate(self.reflect(y)))
        return F.pad(y, (1, 2, 2, 1), mode="circular") + F.pad(y, (1, 2, 2, 1), mode="replicate")


def test_reflection_replication_and_circular_pads_run_native(tmp_path) -> None:
    torch.manual_seed(0)
    model = CopyPadNet().eval()
    x = torch.randn(2, 3, 11, 9)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    assert sum(s.strategy == "pixel_gather" for s in compiled.plan.steps) == 5
    matches_eager_and_round_trips(compiled, model, x, tmp_path, batches=(1, 2, 5))


class RearrangeNet(nn.Module):
    """Elements moved by views, permutes and slices: TResNet's space-to-depth stem, YOLOv5's Focus
    (four strided slices concatenated), MobileViT's unfolding of a map into patches and back."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(48, 16, 3, padding=1)
        self.b = nn.Conv2d(12, 16, 1)
        self.c = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        s2d = x.view(n, c, h // 4, 4, w // 4, 4).permute(0, 3, 5, 1, 2, 4).contiguous()
        s2d = s2d.view(n, c * 16, h // 4, w // 4)
        y = self.a(s2d)
        focus = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        z = F.max_pool2d(self.b(focus), 2)
        t = y + z
        b, ch, th, tw = t.shape
        patches = t.reshape(b, ch, th // 2, 2, tw // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, ch, 4, -1)
        u = F.relu(self.c(patches))
        u = u.reshape(b, 8, 2, 2, th // 2, tw // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, 8, th, tw)
        return u


def test_space_to_depth_slices_and_patches_run_native(tmp_path) -> None:
    torch.manual_seed(0)
    model = RearrangeNet().eval()
    x = torch.randn(2, 3, 16, 24)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    # 16 blocks of the stem, 4 slices, the unfolding and the folding back
    assert sum(s.strategy == "pixel_gather" for s in compiled.plan.steps) == 22
    matches_eager_and_round_trips(compiled, model, x, tmp_path)
