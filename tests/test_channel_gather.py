"""The channel gather kernel (shuffles, slices, any channel index) against numpy indexing, on
channel slices of wider buffers with the output poisoned; and channel slices lowered as views."""
import numpy as np
import pytest
import torch
from torch import nn

import basisrt
from basisrt import _C


def shuffle_index(c: int, groups: int = 2) -> np.ndarray:
    """torchvision's channel_shuffle: out channel j reads in channel (j % g)·(c / g) + j // g."""
    j = np.arange(c)
    return (j % groups) * (c // groups) + j // groups


INDICES = {
    "shuffle2": shuffle_index(116),  # two runs zipped: the vectorised path
    "shuffle2_small": shuffle_index(4),
    "shuffle2_half": shuffle_index(58)[:29],  # a chunk of a shuffle: still two zipped runs, odd length
    "shuffle4": shuffle_index(48, 4),
    "slice": np.arange(7, 40),
    "reverse": np.arange(33)[::-1].copy(),
    "repeat": np.array([3, 3, 0, 5, 1, 1, 2]),
    "zip_then_not": np.array([0, 10, 1, 11, 2, 13, 3, 14]),  # zip-like start, then not
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", INDICES)
def test_channel_gather_matches_numpy_on_channel_slices(name, threads):
    index = INDICES[name].astype(np.int64)
    c_in, c_out = int(index.max()) + 3, index.size
    rng = np.random.default_rng(c_in + c_out)
    wide_x = rng.standard_normal((3, 5, 7, c_in + 4)).astype(np.float32)
    x = wide_x[..., 1:1 + c_in]
    wide_y = np.full((3, 5, 7, c_out + 3), 7.0, np.float32)
    wide_y[..., 2:2 + c_out] = np.nan
    _C.channel_gather_nhwc(x, index, wide_y[..., 2:2 + c_out], threads)
    np.testing.assert_array_equal(wide_y[..., 2:2 + c_out], x[..., index])
    assert (wide_y[..., :2] == 7).all() and (wide_y[..., 2 + c_out:] == 7).all()


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: chunk, a branch on one half, concatenation, shuffle."""

    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.ReLU(), nn.Conv2d(h, h, 3, padding=1, groups=h),
                                    nn.Conv2d(h, h, 1), nn.ReLU())

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch(x2)), dim=1)
        b, c, h, w = out.shape
        return out.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


def test_channel_slices_are_views_in_the_native_program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), ShuffleUnit(24), ShuffleUnit(24), nn.Conv2d(24, 8, 1)).eval()
    x = torch.randn(3, 3, 9, 11)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    native = compiled.native
    assert native is not None
    gathers = [n for n, _, _ in compiled.step_times(x, 1) if "gather" in n]
    steps = [s.name for s in compiled.plan.steps if str(s.strategy) == "gather"]
    # each unit: two slices (views: no op, and so no time of their own) and one shuffle (an op);
    # the first half, a view already, is copied into the concatenation by an op timed as the cat
    assert len(steps) == 2 * 3 and gathers == [s for s in steps if s.startswith("view")]
    assert len(native.op_names) == native.program.ops
    for batch in (x, x[:1]):
        with torch.no_grad():
            torch.testing.assert_close(compiled(batch), model(batch), rtol=1e-5, atol=1e-5)
