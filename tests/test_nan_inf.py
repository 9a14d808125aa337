"""NaN and ±Inf through every C++ kernel and through compiled plans, as PyTorch propagates them.

One NaN input pixel makes eager PyTorch return NaN logits; a plan must too, not finite numbers:
relu(NaN) = relu6(NaN) = NaN, relu(inf) = inf, relu6(inf) = 6, relu/relu6(-inf) = 0, and a max
pool window holding a NaN gives NaN. Inputs are random non-zero data with a few NaN / +Inf / -Inf
at random positions; outputs are compared with a float64 PyTorch reference: the same NaN, +Inf
and -Inf positions, and close finite values. Inf through a conv gives ±Inf, or NaN where terms of
both signs meet (Inf - Inf), the same way in both: that depends only on the signs of the terms.

The kernels are built per ISA (csrc/simd.h); test_narrow_kernels reruns this file's kernel tests
with BASISRT_NO_AVX512=1, so an AVX-512 machine covers both builds.
"""
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import basisrt
from basisrt import _C, compile, decompose, prune_basis
from basisrt.compiler import activations
from basisrt.compiler.cpu_steps import ChannelAffineStep, FusedConv2d, PoolStep

ACTS = {None: lambda t: t, "relu": torch.relu, "relu6": F.relu6}
SPECIALS = {"nan": [float("nan")] * 3, "inf": [float("inf"), float("inf"), -float("inf"), -float("inf")],
            "mixed": [float("nan"), float("inf"), -float("inf")]}


def generator(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(gen, *shape) -> torch.Tensor:
    """Random float64 data, bounded away from zero (never all-zero data)."""
    t = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return torch.where(t.abs() < 0.05, 0.05 * torch.sign(t) + (t == 0) * 0.05, t)


def poison(t: torch.Tensor, gen, kind: str, columns: int | None = None) -> torch.Tensor:
    """t with SPECIALS[kind] written at distinct random positions (of its first `columns`
    columns only, if given)."""
    t = t.clone()
    part = t if columns is None else t[..., :columns]
    values = SPECIALS[kind]
    where = torch.randperm(part.numel(), generator=gen)[:len(values)]
    flat = part.reshape(-1)
    flat[where] = torch.tensor(values[:len(where)], dtype=t.dtype)
    part.copy_(flat.view_as(part))
    return t


def assert_same(out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4, atol: float | None = None) -> None:
    """NaN, +Inf and -Inf at the same positions, finite values close (atol: relative to the
    largest finite value unless given)."""
    out = out.double()
    assert out.shape == ref.shape
    for name, f in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        diff = f(out) != f(ref)
        assert not diff.any(), f"{name} at {diff.sum().item()} positions differs, e.g. {diff.nonzero()[:4].tolist()}"
    finite = torch.isfinite(ref)
    assert finite.any()
    atol = rtol * ref[finite].abs().max().item() if atol is None else atol
    torch.testing.assert_close(out[finite], ref[finite], rtol=rtol, atol=atol)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.float().permute(0, 2, 3, 1).contiguous().numpy()


# ---- convs: every path of _C.fused_conv_nhwc ---------------------------------------------------

# name: (c_in, c_out, kernel, padding, groups, rank, n, hw). Channels are chosen so that both whole
# 16-float vectors and partial column blocks are written; outputs are even for the 2×2 pool.
CONVS = {
    "dense": (5, 20, (3, 3), (1, 1), 1, 0, 2, (8, 6)),
    "dense_grouped": (6, 30, (3, 3), (1, 1), 3, 0, 1, (6, 6)),  # 10 per group: a partial, masked last vector
    "dense_1x1": (7, 40, (1, 1), (0, 0), 1, 0, 2, (6, 4)),  # x read as plain rows (no windows)
    "lowrank": (12, 24, (3, 3), (1, 1), 1, 5, 2, (8, 6)),  # rank padded to 16: 0 · NaN in the padding
    "lowrank_1x1": (7, 33, (1, 1), (0, 0), 1, 19, 1, (6, 8)),
    "dot": (32, 20, (3, 3), (1, 1), 1, 7, 2, (6, 6)),  # channel-vectorised low-rank path
    "dot_grouped": (32, 24, (3, 3), (1, 1), 2, 4, 1, (8, 8)),
    "depthwise": (17, 17, (3, 3), (1, 1), 17, 0, 2, (6, 8)),
    "grouped_4": (16, 16, (3, 3), (1, 1), 4, 0, 2, (6, 10)),  # the narrow-group kernel: 4-float vectors
    "grouped_8": (24, 48, (3, 3), (1, 1), 6, 0, 2, (6, 10)),  # the narrow-group kernel: 8-float vectors
    "grouped_16": (32, 32, (3, 3), (1, 1), 2, 0, 1, (8, 6)),  # 16 per group: 16-float vectors on AVX-512
    # rank · K above kSplitWeights and 2 pixel tiles for 4 threads: ranks and columns split
    # across threads (csrc split_lowrank). Specials only in column 0, so columns 2-3 stay finite.
    "split": (512, 24, (3, 3), (1, 1), 1, 16, 1, (2, 4)),
}
THREADS = {"split": 4}


def conv_case(name: str, act, residual: bool, kind: str):
    """(x, residual, float64 reference output before pooling, step) with x (and the residual)
    poisoned by `kind`."""
    c_in, c_out, k, pad, groups, rank, n, hw = CONVS[name]
    gen = generator(name, act, residual, kind)
    x = poison(randn(gen, n, c_in, *hw), gen, kind, 1 if name == "split" else None)
    bias = randn(gen, c_out)
    conv = dict(stride=(1, 1), padding=pad, dilation=(1, 1), groups=groups)
    if rank:
        basis, scale = randn(gen, groups * rank, c_in // groups, *k), randn(gen, c_out, rank)
        ref = F.conv2d(F.conv2d(x, basis, **conv), scale[:, :, None, None], bias, groups=groups)
        step = FusedConv2d(basis, bias, scale=scale, activation=act, residual=residual,
                           num_threads=THREADS.get(name, 2), **conv)
        assert _C.lowrank_dot_path(c_in // groups, rank) == name.startswith(("dot", "split"))
    else:
        weight = randn(gen, c_out, c_in // groups, *k)
        ref = F.conv2d(x, weight, bias, **conv)
        step = FusedConv2d(weight, bias, activation=act, residual=residual, num_threads=2, **conv)
        assert _C.depthwise_path(groups, c_in, c_out, 0) == (name == "depthwise")
        assert _C.grouped_path(groups, c_in, c_out, 0) == name.startswith("grouped")
    res = poison(randn(gen, *ref.shape), gen, kind) if residual else None
    if res is not None:
        ref = ref + res
    return x, res, ACTS[act](ref), step


@pytest.mark.parametrize("kind", list(SPECIALS))
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", [None, "relu", "relu6"])
@pytest.mark.parametrize("name", list(CONVS))
def test_conv_propagates_like_torch(name, act, residual, kind):
    x, res, ref, step = conv_case(name, act, residual, kind)
    out = torch.full((ref.shape[0], *ref.shape[2:], ref.shape[1]), 7.0)  # NHWC, a value no output has
    y = step(x.float(), None if res is None else res.float(), out=out)
    assert torch.isnan(ref).any() or kind == "inf"
    assert_same(y, ref)


@pytest.mark.parametrize("kind", list(SPECIALS))
@pytest.mark.parametrize("act", [None, "relu", "relu6"])
@pytest.mark.parametrize("name", list(CONVS))
def test_fused_max_pool_propagates_like_torch(name, act, kind):
    """The 2×2 max pool after the epilogue (pool=2): fused in the tile, or after the conv for
    the depthwise and split paths."""
    x, _, ref, step = conv_case(name, act, False, kind)
    ref = F.max_pool2d(ref, 2)
    out = torch.full((ref.shape[0], *ref.shape[2:], ref.shape[1]), 7.0)
    arr = lambda t: None if t is None else t.numpy()  # noqa: E731
    _C.fused_conv_nhwc(nhwc(x), step.B.numpy(), arr(step.A), arr(step.bias), None, out.numpy(), step.kernel,
                       step.stride, step.padding, step.dilation, step.groups, step.rank, activations.code(act)[0],
                       step.num_threads, pool=2)
    assert_same(out.permute(0, 3, 1, 2), ref)


@pytest.mark.parametrize("groups", [1, 2])
def test_fused_max_pool_nan_at_each_cell_position(groups):
    """A NaN at each of the 4 positions of a 2×2 cell (1×1 conv: NaN only there): a max whose
    compare is false for NaN keeps it or drops it depending on the operand it sits in."""
    gen = generator("cell", groups)
    c_in, c_out = 4, 36  # two whole vectors and a partial block of output channels per image
    x = randn(gen, 1, c_in, 6, 8).abs()
    weight = randn(gen, c_out, c_in // groups, 1, 1).abs()  # positive outputs: the ReLU keeps them
    for cell, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        x[0, 0, 2 * (cell // 2) + dy, 2 * (cell % 2) + dx] = float("nan")
    ref = F.max_pool2d(torch.relu(F.conv2d(x, weight, groups=groups)), 2)
    assert ref.isnan().sum() == 4 * c_out // groups
    step = FusedConv2d(weight, None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=groups)
    for threads in (1, 2):
        out = torch.full((1, 3, 4, c_out), 7.0)
        _C.fused_conv_nhwc(nhwc(x), step.B.numpy(), None, None, None, out.numpy(), (1, 1), (1, 1), (0, 0), (1, 1),
                           groups, 0, activations.code("relu")[0], threads, pool=2)
        assert_same(out.permute(0, 3, 1, 2), ref)


# ---- pooling: _C.pool_nhwc ---------------------------------------------------------------------

POOLS = [  # kind, kernel, stride, padding, count_include_pad
    ("max", (2, 2), (2, 2), (0, 0), True), ("max", (3, 3), (2, 2), (1, 1), True), ("max", (3, 2), (1, 1), (1, 1), True),
    ("avg", (2, 2), (2, 2), (0, 0), True), ("avg", (3, 3), (2, 2), (1, 1), True),
    ("avg", (3, 3), (1, 2), (1, 1), False),
]


@pytest.mark.parametrize("kind", list(SPECIALS))
@pytest.mark.parametrize("c", [3, 16, 21])
@pytest.mark.parametrize("pool", POOLS, ids=lambda p: "{}k{}s{}p{}{}".format(p[0], *p[1:4], "" if p[4] else "x"))
def test_pool_propagates_like_torch(pool, c, kind):
    how, k, s, p, include = pool
    gen = generator(pool, c, kind)
    x = poison(randn(gen, 2, c, 7, 9), gen, kind)
    ref = F.max_pool2d(x, k, s, p) if how == "max" else F.avg_pool2d(x, k, s, p, count_include_pad=include)
    out = torch.full((ref.shape[0], *ref.shape[2:], ref.shape[1]), 7.0)
    _C.pool_nhwc(nhwc(x), out.numpy(), k, s, p, getattr(_C.PoolKind, how), include, 2)
    assert_same(out.permute(0, 3, 1, 2), ref, rtol=1e-5)


@pytest.mark.parametrize("kind", list(SPECIALS))
def test_global_pools_propagate_like_torch(kind):
    gen = generator("global", kind)
    x = poison(randn(gen, 3, 20, 5, 7), gen, kind)
    assert_same(PoolStep("avg", None, num_threads=2)(x.float()), F.adaptive_avg_pool2d(x, 1), rtol=1e-5)
    out = torch.full((3, 1, 1, 20), 7.0)
    _C.pool_nhwc(nhwc(x), out.numpy(), (5, 7), (5, 7), (0, 0), _C.PoolKind.max, True, 2)
    assert_same(out.permute(0, 3, 1, 2), F.adaptive_max_pool2d(x, 1), rtol=1e-5)


def test_max_pool_nan_at_each_window_position():
    """NaN first, last and in between in a window, next to larger values, per channel."""
    x = torch.arange(1.0, 1.0 + 2 * 19 * 6 * 6, dtype=torch.float64).reshape(2, 19, 6, 6)
    for i, (y, xx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (2, 3), (5, 5)]):
        x[i % 2, (3 * i) % 19, y, xx] = float("nan")
    for k, s in (((2, 2), (2, 2)), ((3, 3), (1, 1))):
        ref = F.max_pool2d(x, k, s)
        out = torch.full((ref.shape[0], *ref.shape[2:], ref.shape[1]), 7.0)
        _C.pool_nhwc(nhwc(x), out.numpy(), k, s, (0, 0), _C.PoolKind.max, True, 1)
        assert_same(out.permute(0, 3, 1, 2), ref, rtol=1e-6)


# ---- channel affine: _C.channel_affine_nhwc ---------------------------------------------------

@pytest.mark.parametrize("kind", list(SPECIALS))
@pytest.mark.parametrize("c", [5, 16, 37])
@pytest.mark.parametrize("act", [None, "relu", "relu6"])
def test_channel_affine_propagates_like_torch(act, c, kind):
    gen = generator("affine", act, c, kind)
    x = poison(randn(gen, 2, c, 5, 6), gen, kind)
    scale, shift = randn(gen, c), randn(gen, c)
    ref = ACTS[act](x * scale[:, None, None] + shift[:, None, None])
    out = ChannelAffineStep(scale, shift, act, num_threads=2)(x.float())
    assert_same(out, ref, rtol=1e-5)


@pytest.mark.parametrize("act", [None, "relu", "relu6"])
def test_activations_on_specials_exactly(act):
    """The activation itself on NaN, ±Inf, ±0 and values around 0 and 6, through the affine map
    (scale 1, shift 0) and through a conv's epilogue (as the residual added to a small conv)."""
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -1.0, -0.0, 0.0, 3.0, 6.0, 7.5, -7.5,
                             1e30, -1e30, 5.999, 6.001, float("nan"), 2.0, 0.5] * 2, dtype=torch.float64)
    c = specials.numel()  # 34 channels: two whole vectors and a partial block
    x = specials.reshape(1, c, 1, 1).repeat(2, 1, 3, 2)
    ref = ACTS[act](x)
    out = ChannelAffineStep(torch.ones(c), torch.zeros(c), act, num_threads=1)(x.float())
    assert_same(out, ref, rtol=1e-6, atol=0)
    # The conv epilogue: residual + a finite conv output, then the activation.
    gen = generator("epi", act)
    inp, weight = randn(gen, 2, 3, 3, 2), randn(gen, c, 3, 1, 1) * 1e-3
    conv = F.conv2d(inp, weight)
    ref = ACTS[act](conv + x)
    step = FusedConv2d(weight, None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, activation=act,
                       residual=True, num_threads=1)
    assert_same(step(inp.float(), x.float()), ref, rtol=1e-5, atol=1e-5)


# ---- whole plans: the native program ----------------------------------------------------------

def test_native_program_propagates_like_float64_torch():
    """A plan of every op kind the native program runs (convs with fused epilogues and pool,
    max / avg / global pools, a channel affine with ReLU, a depthwise conv), against the float64
    eager model: the same NaN / ±Inf positions."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(16)
    bn.running_mean.normal_(0, 0.5), bn.running_var.uniform_(0.5, 2)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          bn, nn.ReLU(),  # no conv before it absorbs it: a channel affine op
                          nn.Conv2d(16, 24, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(3, 1, 1),
                          nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.ReLU(), nn.AvgPool2d(2)).eval()
    gen = generator("program")
    x = randn(gen, 3, 3, 16, 16)
    x[0, 1, 4, 5] = float("nan")
    x[1, 0, 10, 2] = float("inf")
    x[2, 2, 0, 15] = -float("inf")
    compiled = compile(model, x.float(), dense_backend="basisrt")
    assert compiled.native is not None
    with torch.no_grad():
        ref = model.double()(x)
    out = compiled(x.float())
    assert out.isnan().any() and torch.isfinite(out).any()
    assert_same(out, ref)


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_whole_model_nan_pixel(name):
    """One NaN pixel in one image of a batch: that image's logits are NaN in both eager and the
    compiled plan; the other images are untouched."""
    torch.manual_seed(0)
    model = decompose(basisrt.models.create(name).eval()).model
    prune_basis(model, "ratio", 0.1)
    model.eval()
    gen = generator("model", name)
    x = randn(gen, 3, 3, 32, 32).float()
    # dense_backend="basisrt": "auto" times a mixed plan against the native one and may keep either
    compiled = compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None
    x[1, 0, 13, 17] = float("nan")
    with torch.no_grad():
        ref = model(x)
    out = compiled(x)
    assert torch.equal(out.isnan(), ref.isnan())
    assert ref[1].isnan().all() and not ref[[0, 2]].isnan().any()
    for i in (0, 2):
        assert ((out[i] - ref[i]).norm() / ref[i].norm()).item() < 1e-4
    assert torch.equal(compiled.module(x).isnan(), ref.isnan())  # the step-by-step path too


# ---- the other ISA build ---------------------------------------------------------------------

def test_narrow_kernels():
    """The kernel tests above on the AVX2 builds without FMA (BASISRT_NO_AVX512=1 and
    BASISRT_NO_FMA=1 pick them; the AVX2 + FMA GEMMs are what already ran on an AVX2 machine)."""
    env = {**os.environ, "BASISRT_NO_AVX512": "1", "BASISRT_NO_FMA": "1"}
    check = subprocess.run([sys.executable, "-c", "from basisrt import _C; print(_C.simd_path())"], env=env,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-2000:]
    if check.stdout.strip() != "avx2":
        pytest.skip(f"no AVX2 build here ({check.stdout.strip()})")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                          "-k", "not whole_model and not native_program and not narrow"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert int(run.stdout.split(" passed")[0].split()[-1]) >= 300
