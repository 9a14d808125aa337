"""pytest-benchmark micro-benchmarks of the layer kernels (not part of the default test run:
pyproject's testpaths is tests/). Run them with timing on:

    python -m pytest bench/test_micro_kernels.py --benchmark-enable -p no:cacheprovider

Without --benchmark-enable (pyproject's addopts disable benchmarking) each runs once, as a smoke test.
"""
import pytest
import torch

import basisrt
from basisrt.layers import BasisConv2d

# (C_in, C_out, H=W, batch): VGG16-CIFAR layer shapes
SHAPES = [(64, 64, 32, 8), (256, 256, 8, 8), (512, 512, 4, 8)]
RANKS = [0.5, 0.1]


def _layers(c_in, c_out, rank):
    torch.manual_seed(0)
    dense = torch.nn.Conv2d(c_in, c_out, 3, padding=1).eval()
    basis = BasisConv2d.from_conv(dense).eval()
    full = basis.rank
    keep = torch.arange(max(1, round(rank * full)))
    basis.select_(keep)
    return dense, basis


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.mark.parametrize("c_in,c_out,hw,batch", SHAPES)
def test_dense_conv(benchmark, c_in, c_out, hw, batch):
    dense, _ = _layers(c_in, c_out, 1.0)
    x = torch.randn(batch, c_in, hw, hw)
    with torch.inference_mode():
        benchmark(dense, x)


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("c_in,c_out,hw,batch", SHAPES)
def test_eager_basis_conv(benchmark, c_in, c_out, hw, batch, rank):
    _, basis = _layers(c_in, c_out, rank)
    x = torch.randn(batch, c_in, hw, hw)
    with torch.inference_mode():
        benchmark(basis, x)


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("c_in,c_out,hw,batch", SHAPES)
def test_basisrt_fused_conv(benchmark, c_in, c_out, hw, batch, rank):
    _, basis = _layers(c_in, c_out, rank)
    x = torch.randn(batch, c_in, hw, hw)
    compiled = basisrt.compile(torch.nn.Sequential(basis), x)
    benchmark(compiled, x)
