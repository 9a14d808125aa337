"""The per-channel affine step (a BatchNorm no conv absorbs, with its activation) against float64."""
import numpy as np
import pytest
import torch
from torch import nn

from basisrt import _C
from basisrt.compiler import activations
from basisrt.compiler.cpu_steps import ChannelAffineStep, batchnorm_affine

ACTS = {None: lambda t: t, "relu": torch.relu, "relu6": lambda t: t.clamp(0, 6)}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("act", [None, "relu", "relu6"])
@pytest.mark.parametrize("n,c,h,w", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 9, 4), (1, 64, 16, 16), (4, 33, 13, 11)])
def test_channel_affine_matches_float64_on_channel_slices(n, c, h, w, act, threads):
    gen = torch.Generator().manual_seed(n * 1000 + c * 10 + h)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * 4
    scale = torch.randn(c, generator=gen, dtype=torch.float64)
    shift = torch.randn(c, generator=gen, dtype=torch.float64)
    shift[0] = 30.0  # channel 0 stays positive: no case the activation zeroes out
    ref = ACTS[act](x * scale[:, None, None] + shift[:, None, None])
    wide_x = np.full((n, h, w, c + 5), np.nan, np.float32)  # NaN around x: a read outside shows
    wide_x[..., 2:2 + c] = x.float().permute(0, 2, 3, 1).numpy()
    wide_y = np.full((n, h, w, c + 3), 7.0, np.float32)  # a sentinel around y: a write outside shows
    wide_y[..., 1:1 + c] = np.nan
    _C.channel_affine_nhwc(wide_x[..., 2:2 + c], scale.float().numpy(), shift.float().numpy(), wide_y[..., 1:1 + c],
                           activations.code(act)[0], threads)
    out = torch.from_numpy(np.ascontiguousarray(wide_y[..., 1:1 + c])).permute(0, 3, 1, 2)
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-6
    assert (wide_y[..., :1] == 7).all() and (wide_y[..., 1 + c:] == 7).all()


def test_step_matches_batchnorm_and_relu():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(12).eval()
    bn.running_mean.normal_(0, 0.5)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.normal_(1, 0.3)
    bn.bias.data.normal_(0, 0.3)
    step = ChannelAffineStep(*batchnorm_affine(bn), "relu")
    x = torch.randn(3, 12, 6, 5)
    for variant in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(step(variant), torch.relu(bn(x)).detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="float32 \\(N, 12, H, W\\)"):
        step(torch.randn(3, 11, 6, 5))
    assert batchnorm_affine(nn.BatchNorm2d(4, track_running_stats=False)) is None  # normalises by the batch


@pytest.mark.parametrize("act", [None, "relu", "relu6"])  # a clamp is the kernel's own (ReLU was once dropped)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,c,h,w", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 9, 4), (1, 64, 16, 16), (2, 97, 3, 5),
                                     (1, 768, 2, 2)])
def test_channel_norm_matches_float64_layer_norm_on_channel_slices(n, c, h, w, threads, act):
    gen = torch.Generator().manual_seed(n * 1000 + c * 10 + h)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * 3 + 5  # an offset: centring matters
    scale = torch.randn(c, generator=gen, dtype=torch.float64)
    shift = torch.randn(c, generator=gen, dtype=torch.float64)
    eps = 1e-6
    ref = ACTS[act](torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (c,), scale, shift, eps).permute(0, 3, 1, 2))
    wide_x = np.full((n, h, w, c + 5), np.nan, np.float32)  # NaN around x: a read outside shows
    wide_x[..., 2:2 + c] = x.float().permute(0, 2, 3, 1).numpy()
    wide_y = np.full((n, h, w, c + 3), 7.0, np.float32)  # a sentinel around y: a write outside shows
    wide_y[..., 1:1 + c] = np.nan
    _C.channel_norm_nhwc(wide_x[..., 2:2 + c], scale.float().numpy(), shift.float().numpy(), wide_y[..., 1:1 + c],
                         eps, activations.code(act)[0], threads)
    out = torch.from_numpy(np.ascontiguousarray(wide_y[..., 1:1 + c])).permute(0, 3, 1, 2)
    assert torch.isfinite(out).all()
    if c > 1 and ref.norm() > 0:  # one channel normalises to exactly 0: the output is the shift
        assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-6
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert (wide_y[..., :1] == 7).all() and (wide_y[..., 1 + c:] == 7).all()


def test_channel_norm_step_as_layer_norm_with_nan_and_inf_per_pixel():
    from basisrt.compiler.cpu_steps import ChannelNormStep
    from basisrt.layers import ChannelLayerNorm
    torch.manual_seed(0)
    norm = ChannelLayerNorm(24, eps=1e-6).eval()
    norm.weight.data.uniform_(0.5, 1.5), norm.bias.data.normal_(0, 0.5)
    step = ChannelNormStep(norm.weight, norm.bias, norm.eps, "gelu")
    x = torch.randn(2, 24, 5, 3) * 2 + 1
    x[0, 3, 1, 1], x[1, 7, 4, 2] = float("nan"), float("inf")  # one pixel each: NaN there only, as PyTorch
    ref = torch.nn.functional.gelu(norm(x)).detach()
    out = step(x)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).sum() == 2 * 24
    torch.testing.assert_close(out.nan_to_num(), ref.nan_to_num(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="float32 \\(N, 24, H, W\\)"):
        step(torch.randn(2, 23, 5, 3))
    with pytest.raises(ValueError, match="eps"):
        _C.channel_norm_nhwc(np.zeros((1, 1, 1, 4), np.float32), np.ones(4, np.float32), np.zeros(4, np.float32),
                             np.zeros((1, 1, 1, 4), np.float32), float("nan"), activations.code(None)[0], 1)


@pytest.mark.parametrize("act", [None, "relu", "relu6", "silu"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,c,h,w,groups", [(1, 1, 1, 2, 1), (2, 6, 5, 7, 3), (3, 17, 9, 4, 17), (1, 64, 16, 16, 32),
                                            (2, 96, 3, 5, 4), (1, 40, 1, 1, 8), (2, 256, 28, 28, 32)])
def test_group_norm_matches_float64_on_channel_slices(n, c, h, w, groups, threads, act):
    gen = torch.Generator().manual_seed(n * 1000 + c * 10 + groups)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * 3 + 5  # an offset: centring matters
    scale = torch.randn(c, generator=gen, dtype=torch.float64)
    shift = torch.randn(c, generator=gen, dtype=torch.float64)
    eps = 1e-5
    ref = torch.nn.functional.group_norm(x, groups, scale, shift, eps)
    ref = torch.nn.functional.silu(ref) if act == "silu" else ACTS[act](ref)
    wide_x = np.full((n, h, w, c + 5), np.nan, np.float32)  # NaN around x: a read outside shows
    wide_x[..., 2:2 + c] = x.float().permute(0, 2, 3, 1).numpy()
    wide_y = np.full((n, h, w, c + 3), 7.0, np.float32)  # a sentinel around y: a write outside shows
    wide_y[..., 1:1 + c] = np.nan
    _C.group_norm_nhwc(wide_x[..., 2:2 + c], scale.float().numpy(), shift.float().numpy(), wide_y[..., 1:1 + c],
                       groups, eps, activations.code(act)[0], threads)
    out = torch.from_numpy(np.ascontiguousarray(wide_y[..., 1:1 + c])).permute(0, 3, 1, 2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert (wide_y[..., :1] == 7).all() and (wide_y[..., 1 + c:] == 7).all()


def test_group_norm_step_with_nan_and_inf_per_group():
    """A NaN or Inf makes its image's group NaN, nothing else, as in PyTorch; bad groups and eps refused."""
    from basisrt.compiler.cpu_steps import GroupNormStep
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 24, eps=1e-6).eval()
    norm.weight.data.uniform_(0.5, 1.5), norm.bias.data.normal_(0, 0.5)
    step = GroupNormStep(norm.weight, norm.bias, 4, norm.eps, "relu")
    x = torch.randn(2, 24, 5, 3) * 2 + 1
    x[0, 3, 1, 1], x[1, 13, 4, 2] = float("nan"), float("inf")  # group 0 of image 0, group 2 of image 1
    ref = torch.relu(norm(x)).detach()
    out = step(x)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).sum() == 2 * 6 * 5 * 3
    torch.testing.assert_close(out.nan_to_num(), ref.nan_to_num(), rtol=1e-5, atol=1e-6)
    args = (np.zeros((1, 2, 2, 6), np.float32), np.ones(6, np.float32), np.zeros(6, np.float32),
            np.zeros((1, 2, 2, 6), np.float32))
    with pytest.raises(ValueError, match="groups must divide"):
        _C.group_norm_nhwc(*args, 4, 1e-5, activations.code(None)[0], 1)
    with pytest.raises(ValueError, match="eps"):
        _C.group_norm_nhwc(*args, 3, float("nan"), activations.code(None)[0], 1)
    assert _C.group_norm_nhwc(np.zeros((0, 2, 2, 6), np.float32), *args[1:3], np.zeros((0, 2, 2, 6), np.float32), 3,
                              1e-5, activations.code(None)[0], 1) is None  # an empty batch


def test_norms_with_a_clamp_run_native_as_eager(tmp_path):
    """LayerNorm2d and GroupNorm (module and functional, fx and Dynamo) followed by ReLU / ReLU6 /
    SiLU: native, the activation applied (a ReLU after a channel norm was once dropped), saved."""
    from torch import nn

    import basisrt

    class Norms(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.ln, self.gn = nn.Conv2d(3, 8, 3), nn.LayerNorm(8), nn.GroupNorm(4, 8)

        def forward(self, x):
            y = torch.relu(self.ln(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
            return torch.nn.functional.relu6(self.gn(y)) + torch.nn.functional.silu(
                torch.nn.functional.group_norm(y, 2))

    torch.manual_seed(0)
    model, x = Norms().eval(), torch.randn(2, 3, 8, 8)
    for capture in ("fx", "dynamo"):
        compiled = basisrt.compile(model, x, dense_backend="basisrt", capture=capture)
        assert compiled.native is not None, compiled.plan.not_native
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    compiled.save(tmp_path / "n.basisrt")
    assert torch.equal(basisrt.load(tmp_path / "n.basisrt")(x), compiled(x))
