"""3×3 convs by Winograd F(2×2, 3×3) in bf16 (csrc/amx_conv.cpp, the AVX512-BF16 vector path)
against a float64 reference that rounds what the kernel rounds (each transformed window V, each
U[ξ], bf16 inputs), on random shapes: odd maps, padding 0-2, ranks not multiples of 16, dense
convs, residuals, every activation; batches of tiles on two threads and the 16 GEMMs split
across threads. Outputs are poisoned with NaN first."""
import random
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_bf16 import _bits, _from_bits, bf16
from test_fused_conv_cpu import ACT_CHOICES, rel_err

import basisrt
from basisrt import _C, compile, decompose, prune_basis
from basisrt.compiler import activations, entry
from basisrt.compiler import bf16 as bf16_module
from basisrt.compiler.bf16 import packed_bf16
from basisrt.compiler.compiled import CompiledModel
from basisrt.compiler.cpu_steps import FusedConv2d

pytestmark = pytest.mark.skipif(not _C.winograd_bf16_path(3, 3, 1, 1, 1, 1, 1, 32, 16),
                                reason="bf16 Winograd runs on the AVX512-BF16 vector path (no AMX)")

AT = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)


def cases(n: int = 36, seed: int = 5):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        c_in = 32 * rng.randint(1, 4)
        rank = 0 if len(out) % 6 == 5 else rng.choice([16, 32, 64, rng.randint(10, 80)])
        pad = rng.choice([0, 1, 1, 2])
        small = len(out) % 3 == 0  # batch 1 on a few tiles: the 16 GEMMs split across the threads
        low = max(1, 3 - 2 * pad)
        h, w = (rng.randint(low, 6), rng.randint(low, 6)) if small else (rng.randint(low, 40), rng.randint(low, 40))
        out.append(dict(n=1 if small else rng.randint(1, 3), c_in=c_in, c_out=rng.randint(1, 70), hw=(h, w),
                        pad=pad, rank=rank, act=rng.choice(ACT_CHOICES), residual=rng.random() < 0.4,
                        bias=rng.random() < 0.8))
    return out


# Ranks 1-8 run by Winograd in bf16 only (quads: pack_bf16_quad): the fp32 path keeps them direct.
QUADS = [dict(c, rank=r) for c, r in zip(cases(12, seed=9), [1, 2, 3, 4, 5, 6, 7, 8, 6, 6, 3, 8])]


def case_id(c):
    return "n{n}c{c_in}-{c_out}r{rank}hw{hw[0]}x{hw[1]}p{pad}".format(**c)


def make(c):
    """(step, x, residual) for case c, the step holding its bf16 weights (Winograd ones too)."""
    g = torch.Generator().manual_seed(zlib.crc32(case_id(c).encode()))
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    n, (h, w), pad = c["n"], c["hw"], c["pad"]
    dense = c["rank"] == 0
    basis = rnd(c["c_out"] if dense else c["rank"], c["c_in"], 3, 3) * 0.2
    scale = None if dense else rnd(c["c_out"], c["rank"]) * 0.2
    step = FusedConv2d(basis, rnd(c["c_out"]) if c["bias"] else None, stride=(1, 1), padding=(pad, pad),
                       dilation=(1, 1), groups=1, scale=scale, activation=c["act"], residual=c["residual"],
                       num_threads=2)
    step._bf16 = packed_bf16(step)
    assert step._bf16.winograd is not None
    x = rnd(n, c["c_in"], h, w)
    res = rnd(n, c["c_out"], h + 2 * pad - 2, w + 2 * pad - 2) if c["residual"] else None
    return step, x, res


def input_transform(d: torch.Tensor) -> torch.Tensor:
    """Bᵀ d B over the last two dims, in d's dtype with the kernel's adds in its order (float32:
    the same bits, so that rounding V to bf16 rounds the same values)."""
    def rows(t):  # Bᵀ t: over dim -2
        t0, t1, t2, t3 = t.unbind(-2)
        return torch.stack([t0 - t2, t1 + t2, t2 - t1, t1 - t3], -2)
    return rows(rows(d).transpose(-1, -2)).transpose(-1, -2)


def winograd_reference(step: FusedConv2d, x: torch.Tensor, res: torch.Tensor | None, hilo: bool = True) -> torch.Tensor:
    """What the kernel computes, in float64 but for V: Bᵀ d B of each tile's 4×4 window in float32 as
    the kernel adds it, rounded to bf16,
    U (the step's fp32 Winograd weights) rounded to bf16, M = Σ_c V U exact, T = Aᵀ M A, then the
    scaling conv with A rounded to bf16 (the kernel carries T as bf16 hi + lo: fp32-like; without
    `hilo`, T rounded to bf16)."""
    n, c_in, h, w = x.shape
    p = step.padding[0]
    ho, wo = h + 2 * p - 2, w + 2 * p - 2
    th, tw = -(-ho // 2), -(-wo // 2)
    xp = F.pad(x.double(), (p, max(0, 2 * tw + 2 - p - w), p, max(0, 2 * th + 2 - p - h)))
    win = xp.unfold(2, 4, 2).unfold(3, 4, 2)[:, :, :th, :tw]  # (n, c, th, tw, 4, 4)
    v = bf16(input_transform(win.float()).double())
    u = step.winograd if step.winograd is not None else torch.from_numpy(  # ranks 1-8: fp32 keeps them direct
        _C.winograd_weights(step.B.numpy(), c_in, step.rank, step.out_channels))
    u = u.double()
    if u.shape[1] != c_in:  # (16, rank, C): the fp32 channel-dot layout
        u = u.transpose(1, 2)
    cols = step.rank or step.out_channels
    u = bf16(u[:, :, :cols]).reshape(4, 4, c_in, cols)
    m = torch.einsum("nctuab,abcr->ntuabr", v, u)
    t = torch.einsum("ia,ntuabr,jb->nrtiuj", AT, m, AT).reshape(n, cols, 2 * th, 2 * tw)[:, :, :ho, :wo]
    if step.rank:
        a = step.A[0, :step.rank, :step.out_channels].t().double()
        t = F.conv2d(t.float().double() if hilo else bf16(t.float()).double(), bf16(a)[:, :, None, None])
    if step.bias is not None:
        t = t + step.bias.double()[None, :, None, None]
    if res is not None:
        t = t + res.double()
    return activations.apply(t, step.activation)


def run(step, x, res, threads=2, winograd=True, x16=False, r16=False, y16=False, hilo=True):
    """The step's bf16 conv through the binding, each of x, residual and out fp32 or bf16 bits."""
    ho, wo = step.output_hw(*x.shape[2:])
    xs, rs = x.permute(0, 2, 3, 1).contiguous(), None if res is None else res.permute(0, 2, 3, 1).contiguous()
    y = torch.full((x.shape[0], ho, wo, step.out_channels), float("nan"))  # poisoned
    out = _bits(y) if y16 else y.numpy()
    ra = None if rs is None else _bits(rs) if r16 else rs.numpy()
    w = step._bf16
    act, alpha = activations.code(step.activation)
    _C.fused_conv_bf16_nhwc(_bits(xs) if x16 else xs.numpy(), w.B, w.A, w.bias, ra, out, step.kernel, step.stride,
                            step.padding, step.dilation, step.rank, act, threads, alpha=alpha,
                            winograd=w.winograd if winograd else None, hilo=hilo)
    return (_from_bits(out) if y16 else y).permute(0, 3, 1, 2)


@pytest.mark.parametrize("c", cases() + QUADS, ids=case_id)
def test_winograd_bf16_matches_float64(c):
    step, x, res = make(c)
    out = run(step, x, res)
    assert torch.isfinite(out).all()
    assert rel_err(out, winograd_reference(step, x, res)) < 2e-5  # the fp32 sums' rounding (216 cases: 3.4e-6)
    direct = run(step, x, res, winograd=False)
    assert not torch.equal(out, direct)  # the Winograd path ran
    assert rel_err(out, direct.double()) < 1.5e-2  # within what bf16 gives, against the direct bf16 conv
    assert torch.equal(run(step, x, res, threads=1), out)  # one thread: the same bits
    assert torch.equal(step(x, res), out)  # the step passes its Winograd weights


@pytest.mark.parametrize("c", [c for c in cases() if c["rank"]][::3], ids=case_id)
def test_winograd_bf16_hi_alone_rounds_the_basis_output_once(c):
    """hilo=False: T rounded to bf16 once before the scaling conv, as the reference rounds it. T's
    fp32 sums run in another order than the reference's, so a few values round to the other bf16
    neighbour: a looser bound than with hi + lo, and at most half the distance to T unrounded (on a
    3×3 map, 405 outputs, a few such values make 5.4e-4; 30 cases: 1.0e-3 to 1.7e-3 from T unrounded)."""
    step, x, res = make(c)
    out = run(step, x, res, hilo=False)
    assert torch.isfinite(out).all()
    once = rel_err(out, winograd_reference(step, x, res, hilo=False))
    assert once < 1e-3 and once < 0.5 * rel_err(out, winograd_reference(step, x, res, hilo=True))
    assert not torch.equal(out, run(step, x, res))  # T was rounded
    assert torch.equal(run(step, x, res, threads=1, hilo=False), out)
    step.bf16_hilo = False
    assert torch.equal(step(x, res), out)  # the step passes its flag


@pytest.mark.parametrize("c", cases()[:12:2], ids=case_id)
def test_bf16_maps_in_and_out_are_the_fp32_io_conv_rounded(c):
    """x, residual and out as bf16 bits (a native program's maps between bf16 convs): exactly the
    fp32-io conv on the rounded x and residual, its output rounded to bf16."""
    step, x, res = make(c)
    x, res = bf16(x), None if res is None else bf16(res)
    want = run(step, x, res)
    for io in [(True, False, False), (False, True, False), (False, False, True), (True, True, True)]:
        got = run(step, x, res, x16=io[0], r16=io[1], y16=io[2])
        assert torch.equal(got, bf16(want) if io[2] else want), io


def test_an_image_gives_the_same_bits_alone_and_in_a_batch():
    c = dict(n=5, c_in=64, c_out=48, hw=(9, 9), pad=1, rank=32, act="relu", residual=False, bias=True)
    for hw in [(2, 2), (3, 3), (9, 9), (30, 30)]:  # the GEMMs split across threads at batch 1 on 2×2, or tiles
        step, x, _ = make({**c, "hw": hw})
        batch = run(step, x, None)
        for i in range(x.shape[0]):
            for threads in (1, 2):
                assert torch.equal(run(step, x[i:i + 1], None, threads=threads), batch[i:i + 1])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_pixel_stays_within_its_tiles_and_its_image(value):
    """As on the fp32 Winograd path (test_winograd.py): the outputs eager makes non-finite are,
    and nothing outside the tiles whose windows hold the pixel, nor in another image, changes."""
    c = dict(n=2, c_in=32, c_out=16, hw=(12, 12), pad=1, rank=32, act=None, residual=False, bias=True)
    step, x, _ = make(c)
    clean = run(step, x, None)
    x[1, 3, 5, 6] = value
    out = run(step, x, None)
    bad = ~torch.isfinite(out[1]).all(0)
    eager = torch.zeros(12, 12, dtype=torch.bool)
    eager[4:7, 5:8] = True
    assert torch.equal(bad & eager, eager)
    tiles = torch.zeros(12, 12, dtype=torch.bool)
    tiles[4:8, 4:8] = True  # the tiles whose 4×4 windows hold row 5 and column 6
    assert not (bad & ~tiles).any()
    assert torch.equal(out[0], clean[0]) and torch.equal(out[1][:, ~tiles], clean[1][:, ~tiles])


def test_packing_and_bad_arguments():
    step, x, _ = make(dict(n=1, c_in=32, c_out=8, hw=(6, 6), pad=1, rank=26, act=None, residual=False, bias=True))
    u = step._bf16.winograd
    assert u.dtype == np.uint16 and u.size == 16 * 32 * 32  # 16 × C × rank rounded up to 16
    # U[ξ] packed as pack_bf16_vnni packs the fp32 U[ξ] (stored (rank × C) for rank 26), its rows in
    # the kernel's channel order: within each 32, the even channels, then the odd ones
    order = torch.cat([torch.arange(0, 32, 2), torch.arange(1, 32, 2)])
    for p in (0, 7, 15):
        rows = step.winograd[p].t()[order].contiguous()
        assert np.array_equal(u[p * 32 * 32:(p + 1) * 32 * 32], _C.pack_bf16_vnni(F.pad(rows, (0, 6)).numpy()))
    with pytest.raises(ValueError, match="multiples of 32"):
        _C.pack_winograd_bf16(np.zeros((16, 48, 16), np.float32), 16)
    with pytest.raises(ValueError, match="16 x C x n"):
        _C.pack_winograd_bf16(np.zeros((9, 32, 16), np.float32), 16)
    w = step._bf16
    args = (np.zeros((1, 6, 6, 32), np.float32), w.B, w.A, w.bias, None, np.zeros((1, 6, 6, 8), np.float32),
            (3, 3), (1, 1), (1, 1), (1, 1), 26, _C.Activation.none, 1)
    with pytest.raises(ValueError, match="winograd has"):
        _C.fused_conv_bf16_nhwc(*args, winograd=u[:-2])
    with pytest.raises(ValueError, match="16-bit"):
        _C.fused_conv_bf16_nhwc(*args, winograd=u.astype(np.float32))
    strided = FusedConv2d(torch.randn(26, 32, 3, 3), None, stride=(2, 2), padding=(1, 1), dilation=(1, 1),
                          groups=1, scale=torch.randn(8, 26))
    assert packed_bf16(strided).winograd is None
    s16 = packed_bf16(strided)
    with pytest.raises(ValueError, match="winograd_bf16_path"):
        _C.fused_conv_bf16_nhwc(np.zeros((1, 6, 6, 32), np.float32), s16.B, s16.A, s16.bias, None,
                                np.zeros((1, 3, 3, 8), np.float32), (3, 3), (2, 2), (1, 1), (1, 1), 26,
                                _C.Activation.none, 1, winograd=u)
    odd = FusedConv2d(torch.randn(26, 48, 3, 3), None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                      scale=torch.randn(8, 26))
    assert odd.winograd is not None and packed_bf16(odd).winograd is None  # 48 channels: fp32 Winograd only


def _two_pairs() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU()).eval()
    model = decompose(model).model
    prune_basis(model, "ratio", 0.5)  # ranks 32
    return model


def _steps(compiled) -> list[FusedConv2d]:
    return [m for m in compiled.module.modules() if isinstance(m, FusedConv2d)]


def test_a_compiled_bf16_plan_runs_its_winograd_convs_natively(monkeypatch):
    """compile(precision="bf16") packs bf16 Winograd weights for the 3×3 convs on the path (also
    where the fp32 plan measured the direct path faster), and the native program runs them (its
    output differs from the same plan without them)."""
    monkeypatch.setattr(entry, "BF16_CHOICE_PASSES", 0)  # every conv bf16, whatever the timing
    monkeypatch.setattr(entry, "WINOGRAD_CHOICE", False)
    model, x = _two_pairs(), torch.randn(2, 32, 12, 12)
    compiled = compile(model, x, precision="bf16", max_error=None)
    steps = _steps(compiled)
    assert compiled.native is not None and len(steps) == 2
    assert all(m._bf16 is not None and m._bf16.winograd is not None for m in steps)
    for m in steps:  # as if the fp32 plan had kept the direct path
        m.winograd = None
    assert all(packed_bf16(m).winograd is not None for m in steps)
    monkeypatch.setattr(bf16_module, "_winograd_bf16", lambda m: None)
    direct = compile(model, x, precision="bf16", max_error=None)
    with torch.no_grad():
        ref, got, got_direct = model(x).double(), compiled(x), direct(x)
    assert not torch.equal(got, got_direct)
    assert 1e-5 < rel_err(got, ref) < 3e-2 and rel_err(got_direct, ref) < 3e-2


def test_winograd_convs_measured_faster_direct_go_direct(tmp_path, monkeypatch):
    """compile(precision="bf16") asks which convs by Winograd in bf16 run faster as the direct bf16
    conv (against the plan with `bf16_direct` on every conv), marks those (saved with the plan), and
    the others keep Winograd."""
    monkeypatch.setattr(entry, "BF16_CHOICE_PASSES", 0)
    model, x = _two_pairs(), torch.randn(2, 32, 12, 12)
    asked = []

    def measured(wino_plan, direct_plan, inp):
        assert all(m.bf16_direct for m in _steps(direct_plan)) and torch.equal(inp, x)
        asked.append(sorted(n for n, m in wino_plan.module.named_modules()
                            if getattr(m, "_bf16", None) is not None and m._bf16.winograd is not None))
        return asked[-1][:1]

    def confirmed(plan, trial, inp, names, charge=None):  # timed again in the plan they would join
        if trial.precision == "bf16":  # not the fp32 Winograd choice before it
            assert {n for n, m in trial.module.named_modules() if getattr(m, "bf16_direct", False)} == names
        return sorted(names)
    monkeypatch.setattr(entry, "faster_bf16_direct", measured)
    monkeypatch.setattr(entry, "faster_in", confirmed)
    compiled = compile(model, x, precision="bf16", max_error=None)
    assert len(asked) == 1 and len(asked[0]) == 2
    first, second = (compiled.module.get_submodule(n) for n in asked[0])
    assert first.bf16_direct and first._bf16.winograd is None
    assert not second.bf16_direct and second._bf16.winograd is not None
    compiled.save(tmp_path / "plan.brt")
    loaded = basisrt.load(tmp_path / "plan.brt", precision="bf16")
    assert [m.bf16_direct for m in _steps(loaded)] == [m.bf16_direct for m in _steps(compiled)]
    with torch.no_grad():
        assert torch.equal(loaded(x), compiled(x))


def test_max_error_bounds_the_bf16_plan_against_the_fp32_plan(tmp_path, monkeypatch):
    """Over max_error, pairs carry their basis output as hi + lo (`bf16_hilo`), convs by Winograd
    go direct (`bf16_direct`), bf16 convs go fp32 (`prefer_fp32`), until the plan's output on the
    example input is within it; the choice is saved with the plan. A loose bound changes nothing."""
    monkeypatch.setattr(entry, "BF16_CHOICE_PASSES", 0)
    model, x = _two_pairs(), torch.randn(2, 32, 12, 12)
    fp32 = compile(model, x)
    loose = compile(model, x, precision="bf16", max_error=0.5)
    assert not any(m.bf16_hilo or m.bf16_direct or m.prefer_fp32 for m in _steps(loose))
    with torch.no_grad():
        err = rel_err(loose(x), fp32(x).double())
        assert 1e-5 < err < 3e-2
    first = compile(model, x, precision="bf16", max_error=err * 0.98)  # a change or two
    assert any(m.bf16_hilo or m.bf16_direct or m.prefer_fp32 for m in _steps(first))
    with torch.no_grad():
        assert rel_err(first(x), fp32(x).double()) <= err * 0.98
    tight = compile(model, x, precision="bf16", max_error=1e-7)
    assert all(m.prefer_fp32 and m._bf16 is None for m in _steps(tight))
    assert all("prefer_fp32=True" in s.detail for s in tight.plan.steps if s.name.endswith("step"))
    with torch.no_grad():
        assert rel_err(tight(x), fp32(x).double()) <= 1e-7
    tight.save(tmp_path / "plan.brt")
    loaded = basisrt.load(tmp_path / "plan.brt", precision="bf16")
    assert all(m.prefer_fp32 for m in _steps(loaded))
    first.save(tmp_path / "first.brt")
    flags = lambda c: [(m.bf16_hilo, m.bf16_direct, m.prefer_fp32) for m in _steps(c)]  # noqa: E731
    assert flags(basisrt.load(tmp_path / "first.brt", precision="bf16")) == flags(first)
    with torch.no_grad():
        assert torch.equal(loaded(x), tight(x))


def test_the_bound_makes_the_cheapest_change_per_error_first(monkeypatch):
    """The changes are made in the order of error taken off per second added: with fp32 timed as
    free and the other changes as costly, a bound just under the plan's error sets fp32 only."""
    monkeypatch.setattr(entry, "BF16_CHOICE_PASSES", 0)
    cost = {"prefer_fp32": -0.5, "bf16_hilo": 1.0, "bf16_direct": 1.0}
    monkeypatch.setattr(entry, "_change_costs", lambda *a: {(n, f): cost[f] for n, f in a[-1]})
    model, x = _two_pairs(), torch.randn(2, 32, 12, 12)
    with torch.no_grad():
        err = rel_err(compile(model, x, precision="bf16", max_error=None)(x), compile(model, x)(x).double())
    bounded = compile(model, x, precision="bf16", max_error=err * 0.98)
    assert any(m.prefer_fp32 for m in _steps(bounded))
    assert not any(m.bf16_hilo or m.bf16_direct for m in _steps(bounded))


def test_the_bound_keeps_no_change_it_holds_without(monkeypatch):
    """After the bound holds, each change it holds without is undone: with hi + lo and the direct
    conv timed as free (so made first) and fp32 as costly, undoing any change left breaks the bound."""
    monkeypatch.setattr(entry, "BF16_CHOICE_PASSES", 0)
    monkeypatch.setattr(entry, "_change_costs", lambda *a: {(n, f): 5.0 * (f == "prefer_fp32") for n, f in a[-1]})
    model, x = _two_pairs(), torch.randn(2, 32, 12, 12)
    fp32 = compile(model, x)
    with torch.no_grad():
        want = fp32(x)
        bound = entry._relative_error(compile(model, x, precision="bf16", max_error=None)(x), want) * 0.6
        bounded = compile(model, x, precision="bf16", max_error=bound)
        assert entry._relative_error(bounded(x), want) <= bound
        made = [(m, f) for m in _steps(bounded) for f in ("bf16_hilo", "bf16_direct", "prefer_fp32")
                if getattr(m, f) and (m.rank or f != "bf16_hilo")]
        assert made
        for m, flag in made:
            setattr(m, flag, False)
            undone = CompiledModel(bounded.module, bounded.plan, bounded.input_shape, torch.float32, "cpu", False,
                                   "bf16")
            assert entry._relative_error(undone(x), want) > bound, flag
            setattr(m, flag, True)


@pytest.mark.parametrize("bad", [0, -1e-2, float("inf"), float("nan"), "1e-2", True])
def test_bad_max_error_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="max_error must be a positive number or None"):
        compile(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8), max_error=bad)


def test_the_bound_compares_where_the_fp32_output_is_finite():
    want = torch.tensor([1.0, float("nan"), 3.0, float("inf")])
    assert entry._relative_error(torch.tensor([1.0, float("nan"), 3.0, float("inf")]), want) == 0
    assert entry._relative_error((torch.tensor([1.0, 0.0, 3.0, 0.0]),), (want,)) == 0  # NaN and inf not compared
    assert entry._relative_error({"a": torch.tensor([1.0, 5.0, 3.0, 0.0])}, {"a": want}) == 0
    assert entry._relative_error(torch.tensor([float("nan"), 0.0, 3.0, 0.0]), want) == float("inf")
    assert abs(entry._relative_error(torch.tensor([1.0, 0.0, 4.0, 0.0]), want) - 0.1 ** 0.5) < 1e-12


def test_channel_slices_in_and_out():
    """x, residual and out as channel slices of wider NHWC maps (a native program's concatenations):
    the same bits as contiguous arrays."""
    c = dict(n=2, c_in=64, c_out=24, hw=(7, 10), pad=1, rank=32, act="relu", residual=True, bias=True)
    step, x, res = make(c)
    want = run(step, x, res)
    xs, rs = x.permute(0, 2, 3, 1).contiguous(), res.permute(0, 2, 3, 1).contiguous()
    wide_x = torch.randn(*xs.shape[:3], 96)
    wide_x[..., 16:80] = xs
    wide_r = torch.randn(*rs.shape[:3], 40)
    wide_r[..., 8:32] = rs
    wide_y = torch.full((*rs.shape[:3], 50), float("nan"))
    w = step._bf16
    act, alpha = activations.code(step.activation)
    _C.fused_conv_bf16_nhwc(wide_x[..., 16:80].numpy(), w.B, w.A, w.bias, wide_r[..., 8:32].numpy(),
                            wide_y[..., 5:29].numpy(), step.kernel, step.stride, step.padding, step.dilation, step.rank,
                            act, 2, alpha=alpha, winograd=w.winograd)
    assert torch.equal(wide_y[..., 5:29].permute(0, 3, 1, 2), want)
    assert torch.isnan(wide_y[..., :5]).all() and torch.isnan(wide_y[..., 29:]).all()  # nothing else written
