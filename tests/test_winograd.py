"""3×3 basis pairs and dense convs on the Winograd F(2×2, 3×3) path (csrc/winograd_conv.cpp) against a float64
reference, on random shapes: odd maps (tiles cut by the last row or column), padding 0-2,
residuals, every activation, fused pools, channel slices. Outputs are poisoned with NaN first.
Each case also checks that the path ran: its result differs in the last bits from the direct
path's, while both stay within the float32 tolerance."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_fused_conv_cpu import ACT_CHOICES, rel_err

from basisrt import _C, compile, decompose, load, prune_basis
from basisrt.compiler import activations, entry
from basisrt.compiler.cpu_steps import FusedConv2d

pytestmark = pytest.mark.skipif(not _C.winograd_path(3, 3, 1, 1, 1, 1, 1, 16, 16),
                                reason="the Winograd path needs an AVX-512 CPU")


def on_path(c_in: int, rank: int) -> bool:
    return _C.winograd_path(3, 3, 1, 1, 1, 1, 1, c_in, rank)


def cases(n: int = 40, seed: int = 0):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        c_in = 16 * rng.randint(1, 6)
        rank = 16 * rng.randint(1, 5) if len(out) % 3 == 0 else rng.randint(1, 80)  # both layouts of U
        rank = 0 if len(out) % 6 == 5 else rank  # a dense conv
        if not on_path(c_in, rank):
            continue
        pad = rng.choice([0, 1, 1, 2])
        big = len(out) % 5 == 1  # many tile rows: several blocks of tiles per thread
        low = max(1, 3 - 2 * pad) if len(out) % 4 == 3 else 9 - 2 * pad  # some maps of a tile or a few
        h, w = rng.randint(low, 20 + 30 * big), rng.randint(low, 20 + 30 * big)
        out.append(dict(n=rng.randint(1, 4), c_in=c_in, c_out=rng.randint(1, 70), hw=(h, w), pad=pad, rank=rank,
                        act=rng.choice(ACT_CHOICES), residual=rng.random() < 0.4, bias=rng.random() < 0.8))
    return out


# So few tiles that U's columns outnumber them 8 times over (one image, 2×2 to 4×4 maps at large
# ranks): on two threads the 16 GEMMs split across the threads (kSplitColumnsPerTile).
FEW_TILES = [dict(n=1, c_in=64, c_out=96, hw=(2, 2), pad=1, rank=128, act="relu", residual=True, bias=True),
             dict(n=1, c_in=32, c_out=40, hw=(4, 3), pad=1, rank=80, act=None, residual=False, bias=True),
             dict(n=1, c_in=64, c_out=64, hw=(4, 4), pad=1, rank=50, act="relu6", residual=False, bias=False),
             dict(n=1, c_in=48, c_out=150, hw=(3, 3), pad=1, rank=0, act="relu", residual=True, bias=True)]


def reference(x, basis, scale, bias, residual, act):
    """The pair (basis, then the 1×1 `scale`), or the dense conv `basis` when scale is None."""
    b = None if bias is None else bias.double()
    y = F.conv2d(x.double(), basis.double(), None if scale is not None else b, 1, act[1])
    if scale is not None:
        y = F.conv2d(y, scale.double()[:, :, None, None], b)
    if residual is not None:
        y = y + residual.double()
    return activations.apply(y, act[0])


def run(step: FusedConv2d, x, residual, winograd: bool, pool: int = 1, ldx: int = 0, threads: int = 2):
    """The pair through the kernel binding, on the Winograd weights or without them (the direct path)."""
    xs = x.permute(0, 2, 3, 1).contiguous()
    if ldx:  # x as a channel slice of a wider NHWC map
        wide = torch.randn(*xs.shape[:3], ldx)
        wide[..., 3:3 + xs.shape[3]] = xs
        xs = wide[..., 3:3 + xs.shape[3]]
    n, h, w, _ = xs.shape
    ho, wo = step.output_hw(h, w)
    y = torch.full((n, ho // pool, wo // pool, step.out_channels), float("nan"))
    res = None if residual is None else residual.permute(0, 2, 3, 1).contiguous().numpy()
    code, alpha = activations.code(step.activation)
    bias = None if step.bias is None else step.bias.numpy()
    a = None if step.A is None else step.A.numpy()
    _C.fused_conv_nhwc(xs.numpy(), step.B.numpy(), a, bias, res, y.numpy(), step.kernel, step.stride,
                       step.padding, step.dilation, 1, step.rank, code, threads, pool=pool, alpha=alpha,
                       winograd=step.winograd.numpy() if winograd else None)
    return y.permute(0, 3, 1, 2)


@pytest.mark.parametrize("case", cases() + FEW_TILES,
                         ids=lambda c: "n{n}c{c_in}-{c_out}r{rank}hw{hw[0]}x{hw[1]}p{pad}".format(**c))
def test_winograd_pair_matches_float64(case):
    torch.manual_seed(case["rank"] * 1000 + case["c_in"])
    n, (h, w), pad = case["n"], case["hw"], case["pad"]
    dense = case["rank"] == 0
    basis = torch.randn(case["c_out"] if dense else case["rank"], case["c_in"], 3, 3) * 0.2
    scale = None if dense else torch.randn(case["c_out"], case["rank"]) * 0.2
    bias = torch.randn(case["c_out"]) if case["bias"] else None
    x = torch.randn(n, case["c_in"], h, w)
    residual = torch.randn(n, case["c_out"], h + 2 * pad - 2, w + 2 * pad - 2) if case["residual"] else None
    step = FusedConv2d(basis, bias, stride=(1, 1), padding=(pad, pad), dilation=(1, 1), groups=1, scale=scale,
                       activation=case["act"], residual=case["residual"])
    # a dense conv: its outputs padded to whole vectors; a rank under 16: one padded vector
    c_in, cols = case["c_in"], max(case["rank"], 16) if case["rank"] else -(-case["c_out"] // 16) * 16
    assert tuple(step.winograd.shape) == ((16, c_in, cols) if cols % 16 == 0 else (16, cols, c_in))  # 2 layouts
    ref = reference(x, basis, scale, bias, residual, (case["act"], pad))
    out = run(step, x, residual, winograd=True)
    assert rel_err(out, ref) < 1e-5
    assert not torch.equal(out, run(step, x, residual, winograd=False))  # the Winograd path ran
    # one thread: blocks of tiles; two: the 16 GEMMs split across threads where the tiles are few. Same bits.
    assert torch.equal(run(step, x, residual, winograd=True, threads=1), out)
    assert torch.equal(step(x, residual), out)  # the step passes its Winograd weights


@pytest.mark.parametrize("hw", [(8, 8), (11, 14), (16, 10)])
def test_winograd_pair_with_a_fused_pool_and_a_channel_slice(hw):
    torch.manual_seed(hw[0])
    basis, scale = torch.randn(40, 32, 3, 3) * 0.2, torch.randn(24, 40) * 0.2
    step = FusedConv2d(basis, torch.randn(24), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                       scale=scale, activation="relu")
    x = torch.randn(3, 32, *hw)
    ref = reference(x, basis, scale, step.bias, None, ("relu", 1))
    out = run(step, x, None, winograd=True, ldx=48)
    assert rel_err(out, ref) < 1e-5
    if hw[0] % 2 == 0 and hw[1] % 2 == 0:
        pooled = run(step, x, None, winograd=True, pool=2)
        assert torch.equal(pooled, F.max_pool2d(out, 2))  # the pool of the same conv values


def test_results_do_not_depend_on_the_batch_or_the_threads():
    """An image's output is the same bits alone and in a batch, on one thread or two (the
    threads split tiles, or the 16 GEMMs where the tiles are few: one image at 2×2)."""
    torch.manual_seed(0)
    step = FusedConv2d(torch.randn(32, 64, 3, 3) * 0.1, torch.randn(64), stride=(1, 1), padding=(1, 1),
                       dilation=(1, 1), groups=1, scale=torch.randn(64, 32) * 0.1, activation="relu")
    for hw in (2, 3, 12, 40):
        x = torch.randn(5, 64, hw, hw)
        batch = run(step, x, None, winograd=True)
        for i in range(5):
            for threads in (1, 2):
                assert torch.equal(run(step, x[i:i + 1], None, winograd=True, threads=threads), batch[i:i + 1])


def test_compile_keeps_the_winograd_weights_where_they_are_faster(tmp_path, monkeypatch):
    """compile times each Winograd pair against its direct path (autotune.faster_direct), marks
    `prefer_direct` on those faster without, drops their weights, and saves the choice."""
    model = small_pruned_model()
    x = torch.randn(2, 32, 12, 12)
    asked = []

    def measured(winograd_plan, direct_plan, inp):
        steps = {n: m for n, m in direct_plan.module.named_modules() if isinstance(m, FusedConv2d)}
        assert steps and all(m.winograd is None for m in steps.values()) and torch.equal(inp, x)
        asked.append(sorted(n for n, m in winograd_plan.module.named_modules()
                            if getattr(m, "winograd", None) is not None))
        return asked[0][:1]

    def confirmed(plan, trial, inp, names, charge=None):  # timed again in the plan they would join
        direct = {n for n, m in trial.module.named_modules() if getattr(m, "prefer_direct", False)}
        assert direct == names and all(trial.module.get_submodule(n).winograd is None for n in names)
        return sorted(names)
    monkeypatch.setattr(entry, "faster_direct", measured)
    monkeypatch.setattr(entry, "faster_in", confirmed)
    compiled = compile(model, x, dense_backend="basisrt")
    assert len(asked) == 1 and len(asked[0]) == 2
    steps = {n: m for n, m in compiled.module.named_modules() if isinstance(m, FusedConv2d)}
    assert [n for n, m in steps.items() if m.prefer_direct] == asked[0][:1]
    assert [n for n, m in steps.items() if m.winograd is not None] == asked[0][1:]
    assert "prefer_direct=True" in next(s.detail for s in compiled.plan.steps if s.name == asked[0][0])
    compiled.save(tmp_path / "plan.brt")
    loaded = load(tmp_path / "plan.brt")
    assert [n for n, m in loaded.module.named_modules() if isinstance(m, FusedConv2d) and m.winograd is not None] \
        == asked[0][1:]
    with torch.no_grad():
        assert torch.equal(loaded(x), compiled(x))
        assert rel_err(compiled(x), model(x).double()) < 1e-5


def test_winograd_weights_and_bad_arguments():
    torch.manual_seed(0)
    step = FusedConv2d(torch.randn(26, 16, 3, 3), None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                       scale=torch.randn(8, 26))
    # U[ξ] = (G g Gᵀ)[ξ]: the float64 transform of the basis
    g = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    basis = step.B.double().reshape(26, 3, 3, 16).permute(0, 3, 1, 2)  # (r, c, ky, kx)
    u = torch.einsum("ai,rcij,bj->abrc", g, basis, g).reshape(16, 26, 16)  # rank 26: (16, rank, C)
    assert torch.allclose(step.winograd.double(), u, rtol=1e-6, atol=1e-7)
    wide = FusedConv2d(torch.randn(32, 16, 3, 3), None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                       scale=torch.randn(8, 32))  # rank 32: (16, C, rank)
    basis = wide.B.double().reshape(32, 3, 3, 16).permute(0, 3, 1, 2)
    u = torch.einsum("ai,rcij,bj->abcr", g, basis, g).reshape(16, 16, 32)
    assert torch.allclose(wide.winograd.double(), u, rtol=1e-6, atol=1e-7)
    padded = FusedConv2d(torch.randn(13, 16, 3, 3), None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                         scale=torch.randn(8, 13))  # rank 13: (16, C, 16), its last 3 columns zero
    basis = padded.B.double().reshape(13, 3, 3, 16).permute(0, 3, 1, 2)
    u = torch.einsum("ai,rcij,bj->abcr", g, basis, g).reshape(16, 16, 13)
    assert torch.allclose(padded.winograd[:, :, :13].double(), u, rtol=1e-6, atol=1e-7)
    assert not padded.winograd[:, :, 13:].any()
    low = FusedConv2d(torch.randn(9, 16, 3, 3), None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                      scale=torch.randn(8, 9))
    assert low.winograd is None  # rank under 10: the direct path
    dense = FusedConv2d(torch.randn(20, 16, 3, 3), None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    w = dense.B.double()[0, :, :20].reshape(3, 3, 16, 20).permute(3, 2, 0, 1)  # (out, c, ky, kx)
    u = torch.einsum("ai,ocij,bj->abco", g, w, g).reshape(16, 16, 20)  # dense: (16, C, outputs padded to 32)
    assert torch.allclose(dense.winograd[:, :, :20].double(), u, rtol=1e-6, atol=1e-7)
    assert not dense.winograd[:, :, 20:].any()
    with pytest.raises(ValueError, match="B .packed. has"):
        _C.winograd_weights(np.zeros(10, np.float32), 16, 26, 8)
    with pytest.raises(ValueError, match="multiple of 16"):
        _C.winograd_weights(np.zeros(9 * 20 * 26, np.float32), 20, 26, 8)
    x, y = np.ones((1, 8, 8, 16), np.float32), np.zeros((1, 8, 8, 8), np.float32)
    args = (step.B.numpy(), step.A.numpy(), None, None, y, (3, 3), (1, 1), (1, 1), (1, 1), 1, 26,
            _C.Activation.none, 1)
    with pytest.raises(ValueError, match="winograd has"):
        _C.fused_conv_nhwc(x, *args, winograd=np.zeros(5, np.float32))
    strided = FusedConv2d(torch.randn(26, 16, 3, 3), None, stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1,
                          scale=torch.randn(8, 26))
    assert strided.winograd is None
    with pytest.raises(ValueError, match="winograd weights are for a conv on winograd_path"):
        _C.fused_conv_nhwc(x, strided.B.numpy(), strided.A.numpy(), None, None, np.zeros((1, 4, 4, 8), np.float32),
                           (3, 3), (2, 2), (1, 1), (1, 1), 1, 26, _C.Activation.none, 1, winograd=step.winograd.numpy())


def small_pruned_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(32, 48, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(48, 48, 3, padding=1), torch.nn.ReLU()).eval()
    model = decompose(model).model
    prune_basis(model, "ratio", 0.6)  # ranks 29: on the Winograd path
    return model


def test_a_saved_plan_remakes_its_winograd_weights(tmp_path, monkeypatch):
    """The Winograd weights are derived from B, not saved: a loaded plan makes them again and
    gives the same bits, native and step by step."""
    monkeypatch.setattr(entry, "WINOGRAD_CHOICE", False)  # every pair keeps them, whatever the timing
    model = small_pruned_model()
    x = torch.randn(2, 32, 12, 12)
    compiled = compile(model, x, dense_backend="basisrt")
    steps = [m for m in compiled.module.modules() if isinstance(m, FusedConv2d)]
    assert steps and all(m.winograd is not None for m in steps)
    compiled.save(tmp_path / "plan.brt")
    loaded = load(tmp_path / "plan.brt")
    assert all(m.winograd is not None for m in loaded.module.modules() if isinstance(m, FusedConv2d))
    with torch.no_grad():
        assert torch.equal(loaded(x), compiled(x))
        assert rel_err(compiled(x), model(x).double()) < 1e-5


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_pixel_stays_within_its_tiles_and_its_image(value):
    """A tile's transform mixes its whole 4×4 window, so a NaN or Inf input reaches the outputs of
    every tile whose window holds it: those eager makes non-finite, and at most one row or column
    beyond (an Inf may come out NaN). Other outputs, and other images, are as on finite data."""
    torch.manual_seed(0)
    step = FusedConv2d(torch.randn(32, 16, 3, 3) * 0.2, torch.randn(16), stride=(1, 1), padding=(1, 1),
                       dilation=(1, 1), groups=1, scale=torch.randn(16, 32) * 0.2)
    x = torch.randn(2, 16, 12, 12)
    clean = step(x)
    x[1, 3, 5, 6] = value
    out = step(x)
    bad = ~torch.isfinite(out[1]).all(0)  # (H, W): outputs with a non-finite channel
    eager = torch.zeros(12, 12, dtype=torch.bool)
    eager[4:7, 5:8] = True  # the 3×3 neighbourhood eager's conv reads the pixel from
    assert torch.equal(bad & eager, eager)
    tile_rows, tile_cols = torch.zeros(12, 12, dtype=torch.bool), torch.zeros(12, 12, dtype=torch.bool)
    tile_rows[4:8], tile_cols[:, 4:8] = True, True  # the tiles whose 4×4 windows hold row 5 / column 6
    assert not (bad & ~(tile_rows & tile_cols)).any()
    assert torch.equal(out[0], clean[0])
    assert torch.equal(out[1][:, ~(tile_rows & tile_cols)], clean[1][:, ~(tile_rows & tile_cols)])
