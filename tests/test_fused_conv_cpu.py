"""The C++ fused conv kernel against a float64 PyTorch reference, on a grid of random shapes.

Every case poisons the output with NaN first, so an element the kernel does not write fails.
"""
import os
import random
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import linear_on_tokens_case

from basisrt import _C
from basisrt.compiler import activations
from basisrt.compiler.cpu_steps import FusedConv2d, FusedLinear, TorchConvStep

# Every activation the kernels fuse: the clamps in the epilogue, the rest in the pass over each tile
ACT_CHOICES = [None, "relu", "relu6", "sigmoid", "silu", "hardsigmoid", "hardswish", "leaky_relu(0.2)", "gelu",
               "gelu_tanh"]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def cases(n: int = 220, seed: int = 0, channel_blocks: bool = False):
    """Random layer shapes; `channel_blocks` makes C_in per group a multiple of 16 and the rank
    positive, which is the channel-vectorised low-rank path (lowrank_dot_path)."""
    rng = random.Random(seed)
    kernels = [(1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (3, 5)]
    out = []
    for i in range(n):
        k = kernels[i % len(kernels)]
        groups = rng.choice([1, 1, 1, 2, 3])
        stride, dilation = (rng.choice([1, 2]), rng.choice([1, 2])), (rng.choice([1, 2]), rng.choice([1, 2]))
        padding = (rng.choice([0, 1, 2]), rng.choice([0, 1, 2]))
        if k == (1, 1) and i % 2:  # the kernel reads these rows straight from x
            stride, padding = (1, 1), (0, 0)
        need = [d * (kk - 1) + 1 - 2 * p for d, kk, p in zip(dilation, k, padding)]
        h, w = rng.randint(max(need[0], 1), max(need[0], 1) + 12), rng.randint(max(need[1], 1), max(need[1], 1) + 12)
        c_in, c_out = groups * rng.randint(1, 12), groups * rng.randint(1, 24)
        rank = rng.choice([0, 1, rng.randint(2, 40)])  # 0: dense kernel; ranks mostly not multiples of 16
        if channel_blocks:
            c_in, rank = groups * 16 * rng.randint(1, 3), rng.choice([1, rng.randint(2, 40)])
        out.append(dict(n=rng.randint(1, 8) if i % 4 else 1, c_in=c_in, c_out=c_out, hw=(h, w), k=k,
                        stride=stride, padding=padding, dilation=dilation, groups=groups, rank=rank,
                        bias=rng.random() < 0.7, act=rng.choice(ACT_CHOICES),
                        residual=rng.random() < 0.4))
    return out


def case_id(c):
    return ("n{n}c{c_in}-{c_out}k{k[0]}{k[1]}s{stride[0]}{stride[1]}p{padding[0]}{padding[1]}"
            "d{dilation[0]}{dilation[1]}g{groups}r{rank}").format(**c)


def depthwise_cases(n: int = 60, seed: int = 4):
    """Random depthwise convs (groups == C_in == C_out), which run their own channel-vectorised kernel."""
    out = []
    for c in cases(n, seed):
        # 8, 12, 24, 45, 72: a last 8 channels as one 8-float vector (with or without a scalar rest)
        ch = random.Random(case_id(c)).choice([2, 3, 8, 12, 16, 17, 24, 32, 45, 72, 96])
        out.append({**c, "c_in": ch, "c_out": ch, "groups": ch, "rank": 0})
    return out


def wide_depthwise_cases():
    """Depthwise convs with rows wide enough for blocks of 4 interior pixels (3, 5 and 7 wide at
    stride 1 and 2: MobileNet's, EfficientNet's, ConvNeXt's; two dilated), where the random cases
    above are mostly narrow."""
    rng, out = random.Random(8), []
    for k, stride, dil in [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (7, 1, 1), (7, 2, 1), (3, 1, 2), (5, 2, 2)]:
        ch = rng.choice([8, 24, 45, 72])
        out.append(dict(n=rng.randint(1, 3), c_in=ch, c_out=ch, hw=(rng.randint(9, 15), rng.randint(19, 33)),
                        k=(k, k), stride=(stride, stride), padding=(dil * (k // 2),) * 2, dilation=(dil, dil),
                        groups=ch, rank=0, bias=rng.random() < 0.7, act=rng.choice(ACT_CHOICES),
                        residual=stride == 1 and rng.random() < 0.6))
    return out


def grouped_cases(n: int = 60, seed: int = 6):
    """Random grouped convs with 4, 8, 12 or 16 output channels per group (ResNeXt's, RegNet's),
    which run their own channel-vectorised kernel; input channels per group 8·k or a few."""
    out = []
    for c in cases(n, seed):
        rng = random.Random(case_id(c))
        g, cg_out = rng.choice([2, 3, 5, 13]), rng.choice([4, 8, 12, 16])
        cg_in = rng.choice([cg_out, 1, 3, 8, 16])
        out.append({**c, "groups": g, "c_in": g * cg_in, "c_out": g * cg_out, "rank": 0})
    return out


def k_blocked_cases(n: int = 24, seed: int = 8):
    """Convs whose K (taps x channels per group) is cut into blocks (csrc/fused_conv.cpp,
    window_gemm): wide groups (more channels than a block: each tap in channel slices) and narrow
    ones over many taps (blocks of whole taps); dense and rank-vectorised pairs (channels per group
    not a multiple of 16), with and without a residual."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        groups = rng.choice([1, 1, 2])
        cg = rng.choice([257, 300, 390, 520]) if i % 2 else rng.choice([29, 45, 70])
        k = rng.choice([(3, 3), (1, 1), (5, 5), (1, 3)]) if i % 2 else rng.choice([(3, 3), (5, 5), (7, 7)])
        if i % 2 == 0 or cg % 16 == 0:
            cg += 0 if cg % 16 else 1  # not a multiple of 16: the rank-vectorised (not the dot) path
        out.append(dict(n=rng.randint(1, 3), c_in=groups * cg, c_out=groups * rng.randint(3, 40), hw=(rng.randint(3, 9),
                        rng.randint(3, 9)), k=k, stride=(1, 1), padding=(k[0] // 2, k[1] // 2), dilation=(1, 1),
                        groups=groups, rank=rng.choice([0, 0, rng.randint(1, 40)]), bias=rng.random() < 0.7,
                        act=rng.choice(ACT_CHOICES), residual=rng.random() < 0.4))
    return out


@pytest.mark.parametrize("c", cases(), ids=case_id)
def test_fused_conv_matches_float64(c):
    check_step(c, FusedConv2d)


def test_first_call_in_a_process_on_the_1x1_dot_path():
    """Per-thread scratch starts empty: a process whose first layer is a 1×1 channel-vectorised
    pair must size it before reading windows (a fresh interpreter, one thread)."""
    code = """
import torch
from basisrt.compiler.cpu_steps import FusedConv2d
torch.manual_seed(0)
basis, scale, x = torch.randn(5, 32, 1, 1), torch.randn(8, 5), torch.randn(2, 32, 7, 7)
step = FusedConv2d(basis, None, scale=scale, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, num_threads=1)
t = torch.nn.functional.conv2d(x.double(), basis.double())
ref = torch.nn.functional.conv2d(t, scale.double()[:, :, None, None])
assert ((step(x).double() - ref).norm() / ref.norm()).item() < 1e-5
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("no_fma", [False, True], ids=["avx2+fma", "avx2"])
def test_narrow_kernels_match_float64(no_fma):
    """The builds for CPUs without AVX-512 (BASISRT_NO_AVX512=1 picks them on one): the AVX2 + FMA
    GEMMs, and with BASISRT_NO_FMA=1 the target_clones ones; the GEMM blocks, the
    channel-vectorised path, the fused pool, pooling, the channel affine map and norms, and the
    eltwise kernel, on their grids."""
    env = {**os.environ, "BASISRT_NO_AVX512": "1", **({"BASISRT_NO_FMA": "1"} if no_fma else {})}
    tests = ["test_fused_conv_matches_float64", "test_fused_lowrank_dot_path_matches_float64",
             "test_k_blocked_windows_match_float64", "test_k_blocked_windows_keep_nan_and_inf",
             "test_fused_max_pool_matches_float64", "test_fused_lowrank_split_across_threads_matches_float64",
             "test_padding_heavy_pairs_match_float64",
             "test_depthwise_conv_matches_float64", "test_grouped_conv_matches_float64"]
    want = "avx2" if no_fma else "avx2+fma"
    code = f"from basisrt import _C; assert _C.simd_path() == {want!r}, _C.simd_path()"
    check = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *[f"{__file__}::{t}" for t in tests],
                          *[os.path.join(os.path.dirname(__file__), f)
                            for f in ("test_pool_cpu.py", "test_channel_affine_cpu.py", "test_eltwise.py")]],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert int(run.stdout.split(" passed")[0].split()[-1]) >= 500


@pytest.mark.parametrize("c", cases(70, seed=1, channel_blocks=True), ids=case_id)
def test_fused_lowrank_dot_path_matches_float64(c):
    assert _C.lowrank_dot_path(c["c_in"] // c["groups"], c["rank"])
    check_step(c, FusedConv2d)


# Big basis weights (rank × K above csrc's kSplitWeights): with 2 threads, a layer of one pixel
# tile (at most 4 pixels) splits ranks and output columns across threads instead of tiles; 1 thread
# does not. The (3, 5) and (7, 7) maps have a tile per thread and K = 4608 / 2304 taps-blocked B.
SPLIT_CASES = [dict(n=n, c_in=c_in, c_out=c_out, hw=hw, k=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                    groups=1, rank=rank, bias=True, act=act, residual=res)
               for n, c_in, c_out, hw, rank, act, res in [(1, 512, 512, (2, 2), 64, "relu", True),
                                                         (2, 512, 200, (1, 2), 71, None, False),
                                                         (1, 256, 96, (1, 3), 130, "relu6", True),
                                                         (2, 512, 200, (3, 5), 71, None, False),
                                                         (1, 256, 96, (7, 7), 130, "relu6", True)]]


@pytest.mark.parametrize("winograd", [True, False], ids=["winograd", "direct"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c", SPLIT_CASES, ids=case_id)
def test_fused_lowrank_split_across_threads_matches_float64(c, threads, winograd):
    check_step(c, FusedConv2d, winograd=winograd, num_threads=threads)


# Pairs on the dot path whose padding holds over a quarter of the (pixel, tap) products, at 256
# input channels per group or more (csrc/fused_conv.cpp, padding_heavy): each tap runs on only
# the pixels it reads inside the image. 4×4 and 2×2 maps, 5×5 kernels, dilation, stride 2, groups,
# batches of several images (the tile path) and of one (the rank split at 2 threads).
def _padded(n, c_in, c_out, hw, k, stride, padding, dilation, groups, rank, act, residual):
    return dict(n=n, c_in=c_in, c_out=c_out, hw=hw, k=(k, k), stride=(stride,) * 2, padding=(padding,) * 2,
                dilation=(dilation,) * 2, groups=groups, rank=rank, bias=True, act=act, residual=residual)


PADDED_CASES = [_padded(3, 512, 96, (4, 4), 3, 1, 1, 1, 1, 20, "relu", True),
                _padded(1, 512, 40, (4, 4), 3, 1, 1, 1, 1, 37, None, False),
                _padded(2, 256, 40, (2, 2), 3, 1, 1, 1, 1, 7, "relu6", False),
                _padded(1, 256, 33, (2, 2), 3, 1, 1, 1, 1, 64, "relu", True),
                _padded(2, 256, 48, (3, 5), 3, 1, 2, 2, 1, 33, None, True),
                _padded(1, 256, 32, (4, 4), 5, 1, 2, 1, 1, 17, "silu", False),
                _padded(4, 288, 50, (3, 3), 3, 2, 1, 1, 1, 9, "relu", False),
                _padded(2, 512, 64, (4, 4), 3, 1, 1, 1, 2, 10, None, True)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c", PADDED_CASES, ids=case_id)
def test_padding_heavy_pairs_match_float64(c, threads):
    check_step(c, FusedConv2d, winograd=False, num_threads=threads)


@pytest.mark.parametrize("c", PADDED_CASES[:4], ids=case_id)
def test_padding_heavy_pairs_keep_nan_and_inf_where_pytorch_has_them(c):
    """A NaN and an infinity in image 1 reach exactly the outputs PyTorch's conv gives them (the
    windows holding them, through the pair's 1×1 conv: every channel of those pixels), and image 0's
    output keeps its bits."""
    gen = torch.Generator().manual_seed(c["c_in"] + c["rank"])
    basis = torch.randn(c["rank"], c["c_in"], *c["k"], generator=gen, dtype=torch.float64) * 0.05
    scale = torch.randn(c["c_out"], c["rank"], generator=gen, dtype=torch.float64)
    conv = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    step = FusedConv2d(basis, None, scale=scale, groups=1, **conv)
    step.winograd = None
    x = torch.randn(2, c["c_in"], *c["hw"], generator=gen, dtype=torch.float64)
    clean = step(x.float())
    x[1, 3, 0, 1], x[1, 7, -1, -1] = float("nan"), float("inf")
    ref = F.conv2d(F.conv2d(x, basis, **conv), scale[:, :, None, None])
    y = step(x.float())
    assert torch.isnan(ref).any() and torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.equal(y[:1], clean[:1])


@pytest.mark.parametrize("c", PADDED_CASES[:4], ids=case_id)
def test_padding_heavy_pairs_are_batch_and_thread_invariant(c, monkeypatch):
    """An image's output is the same bits alone or in a batch, on 1 or 2 threads (the skipped taps
    are chosen per layer, not per tile); and they are not the bits of the path computing every
    tap (BASISRT_ALL_TAPS=1), which agrees to rounding: the skipping is on."""
    x, _, _, step = reference({**c, "n": 5, "residual": False}, FusedConv2d)
    step.winograd = None
    outs = []
    for threads in (1, 2):
        step.num_threads = threads
        outs += [step(x.float())[:1], step(x[:1].float())]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    monkeypatch.setenv("BASISRT_ALL_TAPS", "1")
    every_tap = step(x[:1].float())
    assert not torch.equal(every_tap, outs[0]) and rel_err(every_tap, outs[0].double()) < 1e-6


def with_even_output(c):
    """Case `c` with a bias and without residual, its input grown (by a stride at a time) until it
    holds a whole window and the conv output is even and at least 2 in each dimension."""
    hw = list(c["hw"])
    for i in range(2):
        span = c["dilation"][i] * (c["k"][i] - 1) + 1
        out = lambda n: (n + 2 * c["padding"][i] - span) // c["stride"][i] + 1  # noqa: E731
        while hw[i] < span or out(hw[i]) < 2 or out(hw[i]) % 2:
            hw[i] += c["stride"][i]
    return {**c, "hw": tuple(hw), "bias": True, "residual": False}


# The 2×2 max pool fused after the epilogue (VGG's conv → ReLU → pool): pixels run in pool-cell
# order and never reach memory unpooled. Both packings of B, dense convs, and the batch-1 split.
POOL_CASES = [with_even_output(c) for c in cases(60, seed=2) + cases(30, seed=3, channel_blocks=True)
              + k_blocked_cases(6, seed=9)] + [
    {**SPLIT_CASES[0], "residual": False}, {**SPLIT_CASES[1], "hw": (2, 2), "residual": False}]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c", POOL_CASES, ids=case_id)
def test_fused_max_pool_matches_float64(c, threads):
    x, _, ref, step = reference(c, FusedConv2d, num_threads=threads)
    ref = F.max_pool2d(ref, 2)
    assert ref.count_nonzero() > ref.numel() // 4  # not a case the activation zeroes out
    out = torch.full((ref.shape[0], *ref.shape[2:], ref.shape[1]), float("nan"))  # poisoned, NHWC
    arr = lambda t: None if t is None else t.numpy()  # noqa: E731
    _C.fused_conv_nhwc(x.float().permute(0, 2, 3, 1).contiguous().numpy(), step.B.numpy(), arr(step.A),
                       arr(step.bias), None, out.numpy(), step.kernel, step.stride, step.padding, step.dilation,
                       step.groups, step.rank, activations.code(step.activation)[0], threads, pool=2,
                       alpha=activations.code(step.activation)[1])
    assert torch.isfinite(out).all()
    assert rel_err(out.permute(0, 3, 1, 2), ref) < 1e-5


def test_fused_pool_rejects_what_it_cannot_fuse():
    c = {**SPLIT_CASES[0], "hw": (3, 3)}  # an odd conv output
    x, _, _, step = reference(c, FusedConv2d)
    out = np.zeros((1, 1, 1, c["c_out"]), np.float32)
    with pytest.raises(ValueError, match="pool"):
        _C.fused_conv_nhwc(x.float().permute(0, 2, 3, 1).contiguous().numpy(), step.B.numpy(), step.A.numpy(),
                           step.bias.numpy(), None, out, step.kernel, step.stride, step.padding, step.dilation,
                           1, step.rank, _C.Activation.relu, 1, pool=2)


@pytest.mark.parametrize("c", k_blocked_cases(), ids=case_id)
def test_k_blocked_windows_match_float64(c):
    assert c["rank"] == 0 or not _C.lowrank_dot_path(c["c_in"] // c["groups"], c["rank"])
    assert c["k"][0] * c["k"][1] * c["c_in"] // c["groups"] > 256  # more than one block
    check_step(c, FusedConv2d)


@pytest.mark.parametrize("k, c_in, c_out, act", [(3, 300, 20, "relu6"), (1, 300, 20, "relu"), (7, 45, 37, None)])
def test_k_blocked_windows_keep_nan_and_inf(k, c_in, c_out, act):
    """A NaN or an infinity in x reaches the same outputs as in PyTorch through the blocked sums and
    the separate epilogue pass, the partial last column block (20, 37 columns) included."""
    gen = torch.Generator().manual_seed(k * 1000 + c_in)
    w = torch.randn(c_out, c_in, k, k, generator=gen, dtype=torch.float64) * 0.05
    b = torch.randn(c_out, generator=gen, dtype=torch.float64)
    x = torch.randn(2, c_in, 6, 6, generator=gen, dtype=torch.float64)
    x[0, 5, 2, 3], x[1, 7, 0, 0] = float("nan"), float("inf")
    step = FusedConv2d(w, b, stride=(1, 1), padding=(k // 2, k // 2), dilation=(1, 1), groups=1, activation=act)
    ref = activations.apply(F.conv2d(x, w, b, padding=k // 2), act)
    out = torch.full((2, 6, 6, c_out), -7.0)  # poisoned NHWC (not NaN: NaN is an expected value here)
    y = step(x.float(), out=out)
    assert torch.isnan(ref).any() and torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    finite = torch.isfinite(ref)
    assert rel_err(y[finite], ref[finite]) < 1e-5


@pytest.mark.parametrize("c", cases()[::7], ids=case_id)
def test_torch_step_matches_float64(c):
    """The same steps run as PyTorch convs (what the autotuner may pick instead)."""
    check_step(c, TorchConvStep)


def reference(c, step_cls, **step_kwargs):
    """(x, residual, float64 reference output, the step) for case `c`."""
    gen = torch.Generator().manual_seed(zlib.crc32(case_id(c).encode()))
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    g = c["groups"]
    x = rnd(c["n"], c["c_in"], *c["hw"])
    bias = rnd(c["c_out"]) if c["bias"] else None
    conv = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=g)
    if c["rank"]:
        basis, scale = rnd(g * c["rank"], c["c_in"] // g, *c["k"]), rnd(c["c_out"], c["rank"])
        ref = F.conv2d(F.conv2d(x, basis, **conv), scale[:, :, None, None], bias, groups=g)
        step = step_cls(basis, bias, scale=scale, activation=c["act"], residual=c["residual"], **conv, **step_kwargs)
    else:
        weight = rnd(c["c_out"], c["c_in"] // g, *c["k"])
        ref = F.conv2d(x, weight, bias, **conv)
        step = step_cls(weight, bias, activation=c["act"], residual=c["residual"], **conv, **step_kwargs)
    res = rnd(*ref.shape) if c["residual"] else None
    if res is not None:
        ref = ref + res
    return x, res, activations.apply(ref.clone(), c["act"]), step


def check_step(c, step_cls, winograd: bool = True, **step_kwargs):
    """`winograd=False`: a 3×3 pair the Winograd path would take runs on the direct path."""
    x, res, ref, step = reference(c, step_cls, **step_kwargs)
    if not winograd:
        step.winograd = None
    res32 = None if res is None else res.float()
    if step_cls is FusedConv2d:
        out = torch.full((ref.shape[0], *ref.shape[2:], ref.shape[1]), float("nan"))  # poisoned NHWC
        y = step(x.float(), res32, out=out)
    else:  # PyTorch allocates its own output
        y = step(x.float(), res32)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("rank", [0, 5, 19])
def test_fused_linear_on_tokens(rank):
    x, res, args, ref = linear_on_tokens_case(rank)
    step = FusedLinear(*args, activation="relu", residual=True)
    assert rel_err(step(x.float(), res.float()), ref) < 1e-5


def test_input_layouts_accepted():
    torch.manual_seed(1)
    w = torch.randn(8, 4, 3, 3)
    step = FusedConv2d(w, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    x = torch.randn(2, 4, 9, 9)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    for variant in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        assert rel_err(step(variant), ref) < 1e-5


def test_kernel_rejects_bad_buffers():
    import numpy as np

    from basisrt import _C
    x = np.zeros((1, 5, 5, 4), np.float32)
    out = np.zeros((1, 5, 5, 8), np.float32)
    b = np.zeros((1, 36, 16), np.float32)
    none = _C.Activation.none
    with pytest.raises(ValueError, match="float32"):
        _C.fused_conv_nhwc(x.astype(np.float64), b, None, None, None, out, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0, none,
                           1)
    with pytest.raises(ValueError, match="does not match the conv geometry"):
        _C.fused_conv_nhwc(x, b, None, None, None, out, (3, 3), (1, 1), (0, 0), (1, 1), 1, 0, none, 1)
    with pytest.raises(ValueError, match="needs A"):
        _C.fused_conv_nhwc(x, b, None, None, None, out, (3, 3), (1, 1), (1, 1), (1, 1), 1, 4, none, 1)
    with pytest.raises(ValueError, match="B \\(packed\\) has"):
        _C.fused_conv_nhwc(x, b[:, :10], None, None, None, out, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0, none, 1)
    assert _C.simd_path() in ("avx512f", "avx2+fma", "avx2", "default")
    assert isinstance(_C.__version__, str) and _C.__version__


@pytest.mark.parametrize("in_torch", [False, True])
@pytest.mark.parametrize("rank", [0, 7])
def test_make_step_linear(in_torch, rank):
    """Every linear step `make_step` can build (our kernel or PyTorch, pair or dense) is right."""
    from basisrt.compiler.strategy import Layer, Strategy, make_step

    torch.manual_seed(2)
    x, res = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 5, 12, dtype=torch.float64)
    bias = torch.randn(12, dtype=torch.float64)
    if rank:
        basis, scale = torch.randn(rank, 24, dtype=torch.float64), torch.randn(12, rank, dtype=torch.float64)
        layer, ref = Layer(basis, bias, scale, "relu6"), x @ basis.T @ scale.T + bias
    else:
        weight = torch.randn(12, 24, dtype=torch.float64)
        layer, ref = Layer(weight, bias, None, "relu6"), x @ weight.T + bias
    layer.residual = object()  # any non-None marks a fused residual
    strategy = (Strategy.PAIR if in_torch else Strategy.FUSED) if rank else \
        (Strategy.DENSE if in_torch else Strategy.DENSE_BASISRT)
    step = make_step(strategy, layer, None, dense_backend="torch")
    assert isinstance(step, TorchConvStep if in_torch else FusedLinear)
    assert rel_err(step(x.float(), res.float()), (ref + res).clamp(0, 6)) < 1e-5


def channel_slice(t: torch.Tensor, before: int, after: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """(wide, view): an NHWC array with `before` / `after` extra channels filled with `fill` around
    `t` (NCHW), and the view of t's channels in it, as a concatenation's part is in a plan."""
    n, c, h, w = t.shape
    wide = np.full((n, h, w, before + c + after), fill, np.float32)
    view = wide[..., before:before + c]
    view[...] = t.float().permute(0, 2, 3, 1).numpy()
    return wide, view


# Channel slices of wider buffers in and out (the zero-copy concatenation): the kernel must read
# and write only its own channels, whatever the pixel strides. NaN around x and the residual
# shows any read outside them; a sentinel around y any write outside it.
STRIDED_CASES = (cases()[::9] + cases(70, seed=1, channel_blocks=True)[::5] + SPLIT_CASES[:2]
                 + depthwise_cases(12, seed=5) + grouped_cases(12, seed=7))


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("c", STRIDED_CASES, ids=case_id)
def test_fused_conv_on_channel_slices_matches_float64(c, pool):
    if pool == 2:
        c = with_even_output(c)
    x, res, ref, step = reference(c, FusedConv2d, num_threads=2)
    if pool == 2:
        ref = F.max_pool2d(ref, 2)
    _, xv = channel_slice(x, 3, 5, float("nan"))
    _, rv = channel_slice(res, 7, 1, float("nan")) if res is not None else (None, None)
    sentinel = 12345.0
    wide, yv = channel_slice(torch.full_like(ref, float("nan")), 2, 9, sentinel)
    arr = lambda t: None if t is None else t.numpy()  # noqa: E731
    _C.fused_conv_nhwc(xv, step.B.numpy(), arr(step.A), arr(step.bias), rv, yv, step.kernel, step.stride,
                       step.padding, step.dilation, step.groups, step.rank, activations.code(step.activation)[0], 2,
                       pool=pool, alpha=activations.code(step.activation)[1])
    out = torch.from_numpy(np.ascontiguousarray(yv)).permute(0, 3, 1, 2)
    assert torch.isfinite(out).all() and rel_err(out, ref) < 1e-5
    assert (wide[..., :2] == sentinel).all() and (wide[..., 2 + ref.shape[1]:] == sentinel).all()


def test_kernels_reject_arrays_that_are_not_channel_slices():
    x = np.zeros((1, 5, 5, 4), np.float32)
    out = np.zeros((1, 5, 5, 8), np.float32)
    b = np.zeros((1, 36, 16), np.float32)
    big = np.zeros((1, 5, 10, 8), np.float32)
    for bad in (big[:, :, 1:6, :4], big[:, :, :5, ::2], x.transpose(0, 2, 1, 3)):  # rows apart, channels apart
        with pytest.raises(ValueError, match="channel slice"):
            _C.fused_conv_nhwc(bad, b, None, None, None, out, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0,
                               _C.Activation.none, 1)
    with pytest.raises(ValueError, match="channel slice"):
        _C.pool_nhwc(x, out[..., ::2], (1, 1), (1, 1), (0, 0), _C.PoolKind.max, True, 1)


@pytest.mark.parametrize("c", depthwise_cases() + wide_depthwise_cases(), ids=case_id)
def test_depthwise_conv_matches_float64(c):
    assert _C.depthwise_path(c["groups"], c["c_in"], c["c_out"], 0)
    check_step(c, FusedConv2d)


@pytest.mark.parametrize("c", grouped_cases(), ids=case_id)
def test_grouped_conv_matches_float64(c):
    assert _C.grouped_path(c["groups"], c["c_in"], c["c_out"], 0)
    check_step(c, FusedConv2d)



@pytest.mark.parametrize("cin, rank", [(8, 8), (16, 16), (16, 5), (3, 3)])
def test_packed_shapes_are_what_the_step_stores(cin, rank):
    """cpu_steps.packed_shapes is the one Python statement of the packed layouts: the step stores
    exactly those shapes (also where the basis rank equals K, on and off the channel-dot path) and
    computes the pair right."""
    from basisrt.compiler.cpu_steps import packed_shapes

    torch.manual_seed(cin + rank)
    basis, scale = torch.randn(rank, cin, 1, 1), torch.randn(16, rank)
    step = FusedConv2d(basis, None, scale=scale, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
    b_shape, a_shape = packed_shapes((1, 1), cin, 16, 1, rank)
    assert tuple(step.B.shape) == b_shape and tuple(step.A.shape) == a_shape
    x = torch.randn(2, cin, 5, 3)
    ref = F.conv2d(F.conv2d(x.double(), basis.double()), scale.double()[:, :, None, None])
    assert rel_err(step(x), ref) < 1e-5
