"""Bilinear upsampling as one C++ kernel (resample.h), in plans and native programs; and native
programs of models with several outputs (a tuple, a list or a dict, as torchvision's segmentation
models return)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import basisrt
from basisrt import _C
from basisrt.compiler.cpu_steps import ResampleStep
from basisrt.compiler.patterns import _linear_taps


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within 1e-5 of the largest value: the float32 weights are PyTorch's, off by an ulp of the source
    position (up to 1e-6 of a pixel's difference for maps of tens of pixels), as PyTorch's are."""
    torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=1e-5 * max(1.0, float(want.abs().max())))


def _run_kernel(x: torch.Tensor, out_hw: tuple[int, int], align_corners: bool, scale: float | None = None,
                threads: int = 2) -> torch.Tensor:
    """The kernel on NCHW x, taps as the compiler derives them; the output poisoned first."""
    (iy, wy), (ix, wx) = [_linear_taps(x.shape[2 + d], out_hw[d], align_corners, scale) for d in range(2)]
    xn = x.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.full((x.shape[0], *out_hw, x.shape[1]), np.nan, np.float32)
    _C.resample_nhwc(xn, iy, wy, ix, wx, out, threads)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


@pytest.mark.parametrize("seed", range(8))
def test_kernel_matches_float64_bilinear(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, h, w = (int(v) for v in rng.integers(1, 10, 3))
    c = int(rng.choice([1, 3, 16, 21, 35]))
    oh, ow = (int(v) for v in rng.integers(1, 30, 2))
    align = bool(seed % 2)
    x = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32))
    got = _run_kernel(x, (oh, ow), align)
    want = F.interpolate(x.double(), size=(oh, ow), mode="bilinear", align_corners=align)
    assert not torch.isnan(got).any()
    _assert_close(got, want)
    torch.testing.assert_close(got, F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=align),
                               rtol=1e-6, atol=1e-6)  # PyTorch's own float32 kernel: the same weights


@pytest.mark.parametrize("scale", [2.0, 1.7, 0.6, 8.0])
def test_kernel_matches_float64_with_a_scale_factor(scale: float) -> None:
    """A scale factor (not recomputed) places the taps by 1 / scale, not by the size ratio."""
    torch.manual_seed(1)
    x = torch.randn(2, 5, 7, 9)
    want = F.interpolate(x.double(), scale_factor=scale, mode="bilinear")
    _assert_close(_run_kernel(x, tuple(want.shape[2:]), False, scale), want)


def test_kernel_reads_and_writes_channel_slices() -> None:
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((2, 4, 5, 12)).astype(np.float32)
    out_wide = np.full((2, 7, 9, 10), np.nan, np.float32)
    (iy, wy), (ix, wx) = _linear_taps(4, 7, False, None), _linear_taps(5, 9, False, None)
    _C.resample_nhwc(wide[..., 2:7], iy, wy, ix, wx, out_wide[..., 3:8], 1)
    x = torch.from_numpy(np.ascontiguousarray(wide[..., 2:7])).permute(0, 3, 1, 2).double()
    want = F.interpolate(x, size=(7, 9), mode="bilinear").permute(0, 2, 3, 1)
    _assert_close(torch.from_numpy(out_wide[..., 3:8]), want)
    assert np.isnan(out_wide[..., :3]).all() and np.isnan(out_wide[..., 8:]).all()  # outside the slice: untouched


def test_kernel_keeps_nan_and_inf_as_pytorch() -> None:
    """Every tap is read, a zero-weighted one too: NaN and Inf spread exactly as in PyTorch."""
    x = torch.randn(1, 3, 6, 6)
    x[0, 0, 2, 3], x[0, 1, 5, 5], x[0, 2, 0, 0] = float("nan"), float("inf"), -float("inf")
    for align in (False, True):
        got = _run_kernel(x, (11, 13), align)
        want = F.interpolate(x, size=(11, 13), mode="bilinear", align_corners=align)
        assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got).any()
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        finite = torch.isfinite(want)
        _assert_close(got[finite], want[finite])


@pytest.mark.parametrize("change, message", [
    (lambda a: a.__setitem__(0, a[0].copy() + 9), "outside"),
    (lambda a: a.__setitem__(1, np.full_like(a[1], np.inf)), "not finite"),
    (lambda a: a.__setitem__(0, a[0].astype(np.int32)), "int64"),
    (lambda a: (a.__setitem__(2, a[2][:, :1].copy()), a.__setitem__(3, a[3][:, :1].copy())), "same number of taps"),
    (lambda a: a.__setitem__(0, a[0][:-1].copy()), "row_weight must have row_index's shape"),
])
def test_kernel_refuses_bad_taps(change, message: str) -> None:
    taps = [*_linear_taps(3, 6, False, None), *_linear_taps(4, 8, False, None)]
    change(taps)
    with pytest.raises(ValueError, match=message):
        _C.resample_nhwc(np.ones((1, 3, 4, 2), np.float32), *taps, np.zeros((1, 6, 8, 2), np.float32), 1)


class Decoder(nn.Module):
    """The spellings of bilinear upsampling: nn.Upsample, nn.UpsamplingBilinear2d (align_corners),
    F.interpolate to another map's size, by a fractional scale; DeepLab's pooled branch (1×1 to
    the map's size); and a dict output, as torchvision's segmentation models return."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.up_ac = nn.UpsamplingBilinear2d(scale_factor=2)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = F.relu(self.a(x))
        z = F.relu(self.down(y))
        pooled = F.interpolate(F.adaptive_avg_pool2d(z, 1), size=z.shape[-2:], mode="bilinear", align_corners=False)
        z = self.up(z + pooled) + self.up_ac(z) + y
        out = F.interpolate(self.head(z), scale_factor=1.5, mode="bilinear")
        return {"out": out, "aux": self.head(y)}


@pytest.mark.parametrize("capture", ["fx", "dynamo"])
def test_bilinear_models_run_native_with_dict_output(tmp_path, capture: str) -> None:
    """Dynamo's export flattens the output: the plan puts the model's dict back."""
    torch.manual_seed(0)
    model = Decoder().eval()
    x = torch.randn(2, 3, 10, 10)
    compiled = basisrt.compile(model, x, dense_backend="basisrt", capture=capture)
    assert compiled.native is not None, compiled.plan.not_native
    assert sum(s.strategy == "resample" for s in compiled.plan.steps) == 4
    for batch in (1, 3):
        xb = torch.randn(batch, 3, 10, 10)
        with torch.no_grad():
            ref = model(xb)
        got = compiled(xb)
        assert isinstance(got, dict) and list(got) == ["out", "aux"]
        for k in ref:
            assert got[k].shape == ref[k].shape
            assert float((got[k] - ref[k]).abs().max()) <= 1e-5 * float(ref[k].abs().max())
    compiled.save(str(tmp_path / "seg.basisrt"))
    loaded = basisrt.load(str(tmp_path / "seg.basisrt"))
    assert loaded.native is not None
    a, b = loaded(x), compiled(x)
    assert all(torch.equal(a[k], b[k]) for k in ("out", "aux"))


class TwoHeads(nn.Module):
    """Logits and features, the same tensor twice, in a tuple holding a list."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor):
        f = F.relu(self.conv(x))
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1))
        return logits, [f, logits]


@pytest.mark.parametrize("capture", ["fx", "dynamo"])
def test_several_outputs_run_native(capture: str) -> None:
    torch.manual_seed(0)
    model = TwoHeads().eval()
    x = torch.randn(3, 3, 8, 8)
    compiled = basisrt.compile(model, x, dense_backend="basisrt", capture=capture)
    assert compiled.native is not None, compiled.plan.not_native
    got = compiled(x)
    with torch.no_grad():
        ref = model(x)
    assert isinstance(got, tuple) and isinstance(got[1], list)
    for g, r in ((got[0], ref[0]), (got[1][0], ref[1][0]), (got[1][1], ref[1][1])):
        assert g.shape == r.shape and torch.allclose(g, r, atol=1e-5)
    assert compiled(torch.randn(0, 3, 8, 8))[1][0].shape == (0, 8, 8, 8)


def test_an_output_holding_the_input_or_a_constant_runs_step_by_step() -> None:
    class Passes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor):
            return self.conv(x), x

    x = torch.randn(1, 3, 4, 4)
    compiled = basisrt.compile(Passes().eval(), x, dense_backend="basisrt")
    assert compiled.native is None
    assert any(node == "output" for node, _ in compiled.plan.not_native)
    assert torch.equal(compiled(x)[1], x)


def test_program_run_many_refuses_bad_outputs() -> None:
    torch.manual_seed(0)
    compiled = basisrt.compile(TwoHeads().eval(), torch.randn(1, 3, 8, 8), dense_backend="basisrt")
    program, x = compiled.native.program, np.zeros((1, 3, 8, 8), np.float32)
    ids = [b.id for b in compiled.native.outputs][:2]
    outs = [np.zeros((1, *program.buffers[i][:3]), np.float32) for i in ids]
    with pytest.raises(ValueError, match="listed twice"):
        program.run_many(x, outs, [ids[0], ids[0]], 1)
    with pytest.raises(ValueError, match="one out array per output"):
        program.run_many(x, outs[:1], ids, 1)
    with pytest.raises(ValueError, match="no output"):
        program.run_many(x, [], [], 1)
    with pytest.raises(ValueError, match="out of range"):
        program.run_many(x, outs, [ids[0], 10_000], 1)
    with pytest.raises(ValueError, match="one nchw flag per output"):
        program.run_many(x, outs, ids, 1, None, [True])


def _plan_with_resample_changed(tmp_path, change):
    from test_plan_tamper import _tampered
    torch.manual_seed(0)
    x = torch.randn(1, 3, 10, 10)
    basisrt.compile(Decoder().eval(), x, dense_backend="basisrt").save(str(tmp_path / "ok.basisrt"))
    return _tampered(tmp_path / "ok.basisrt", tmp_path / "bad.basisrt", change)


def _first_resample(tensors: dict, name: str) -> str:
    return next(k for k in sorted(tensors) if k.endswith("." + name))


@pytest.mark.parametrize("change, message", [
    (lambda p, t: t[_first_resample(t, "row_index")].add_(100), r"row index\[\d+\] = \d+ is outside"),
    (lambda p, t: t[_first_resample(t, "col_weight")].fill_(float("nan")), "column weight.* is not finite"),
    (lambda p, t: t.update({_first_resample(t, "col_index"): t[_first_resample(t, "col_index")][:, :1].contiguous()}),
     "must have shape|as many per row as per column"),
    (lambda p, t: t.update({_first_resample(t, "row_weight"): t[_first_resample(t, "row_weight")].double()}),
     "float64"),
], ids=["index out of range", "nan weight", "taps differ", "float64 weights"])
def test_tampered_resample_steps_fail_to_load(tmp_path, change, message: str) -> None:
    bad = _plan_with_resample_changed(tmp_path, change)
    with pytest.raises(ValueError, match=message) as e:
        basisrt.load(str(bad))
    assert str(e.value).startswith(f"{bad}: "), str(e.value)


def test_empty_batch() -> None:
    compiled = basisrt.compile(Decoder().eval(), torch.randn(2, 3, 10, 10), dense_backend="basisrt")
    assert compiled.native is not None
    out = compiled(torch.randn(0, 3, 10, 10))
    assert out["out"].shape == (0, 5, 15, 15) and out["aux"].shape == (0, 5, 10, 10)


def test_step_refuses_a_map_of_another_size() -> None:
    (iy, wy), (ix, wx) = _linear_taps(2, 4, False, None), _linear_taps(2, 4, False, None)
    step = ResampleStep(torch.from_numpy(iy), torch.from_numpy(wy), torch.from_numpy(ix), torch.from_numpy(wx), (2, 2))
    with pytest.raises(ValueError, match=r"expects a float32 \(N, C, 2, 2\) input"):
        step(torch.randn(1, 3, 3, 3))


def test_antialiased_or_bicubic_resizing_stays_in_pytorch() -> None:
    class Resize(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=(5, 5), mode="bilinear", antialias=True) + \
                F.interpolate(x, size=(5, 5), mode="bicubic")

    x = torch.randn(1, 3, 9, 9)
    compiled = basisrt.compile(Resize().eval(), x)
    assert not any(s.strategy == "resample" for s in compiled.plan.steps)
    torch.testing.assert_close(compiled(x), Resize()(x))


def test_narrow_builds() -> None:
    """The kernel tests on the AVX2 / portable builds (BASISRT_NO_AVX512=1)."""
    env = {**os.environ, "BASISRT_NO_AVX512": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                          "-k", "kernel"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert int(run.stdout.split(" passed")[0].split()[-1]) >= 15
