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
