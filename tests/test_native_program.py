"""Plans whose every step is a basisrt kernel run as one C++ program (no Python between layers)."""
import os
import threading

import numpy as np
import pytest
import torch
from torch import nn

import basisrt
from basisrt import _C, compile, decompose, load, prune_basis
from basisrt.compiler.program import NativeProgram


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def pruned(name, ratio=0.3):
    torch.manual_seed(0)
    model = decompose(basisrt.models.create(name).eval()).model
    prune_basis(model, "ratio", ratio)
    return model.eval()


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "mobilenetv2", "densenet"])
def test_all_basisrt_plans_run_natively_and_match_eager(name):
    model = pruned(name)
    x = torch.randn(3, 3, 32, 32)
    compiled = compile(model, x, dense_backend="basisrt")
    assert isinstance(compiled.native, NativeProgram)
    with torch.no_grad():
        ref = model(x)
    for batch in (x, x[:1], torch.randn(5, 3, 32, 32)):  # the arena grows and shrinks with the batch
        with torch.no_grad():
            assert rel_err(compiled(batch), model(batch)) < 1e-5
    assert torch.equal(compiled(x), compiled.module(x).contiguous())  # same kernels as the step-by-step path
    assert rel_err(compiled(x.contiguous(memory_format=torch.channels_last)), ref) < 1e-5


@pytest.mark.parametrize("name,threads", [("vgg16", 2), ("resnet18", 2), ("resnet18", 1)])
def test_batches_run_in_image_groups(name, threads):
    model = pruned(name)
    x = torch.randn(8, 3, 32, 32)
    compiled = compile(model, x, dense_backend="basisrt", num_threads=threads)
    program = compiled.native.program
    segments = program.segments(8, threads)
    assert [s[0] for s in segments] == [0] + [s[1] for s in segments[:-1]] and segments[-1][1] == program.ops
    assert segments[-1][2] == 8 // threads  # the later ops: one group per thread
    assert all(1 <= images < 8 // threads for *_, images in segments[:-1])  # the early ones: L2-sized groups
    assert program.segments(1, 2) == [(0, program.ops, 1)]  # batch 1: threads over tiles instead
    assert program.segments(7, 2)[-1][2] == 7  # an uneven split: the later ops take the whole batch
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5
    assert torch.equal(compiled(x), compiled.module(x).contiguous())  # per-pixel sums do not depend on the grouping
    seconds = np.zeros(compiled.native.program.ops)
    compiled.native(x, seconds)
    assert (seconds > 0).all()
    assert [n for n, *_ in compiled.step_times(x, 2)] == compiled.native.op_names


@pytest.mark.parametrize("name,batch,threads", [("resnet18", 1, 2), ("resnet18", 8, 2), ("densenet", 8, 1),
                                                ("mobilenetv2", 4, 2)])
def test_buffers_share_arena_memory_when_their_lifetimes_do_not_overlap(name, batch, threads):
    # conftest sets BASISRT_POISON_ARENA=1: the arena is all NaN before each call, so an op reading
    # memory that another buffer left behind (instead of what this call wrote there) fails below
    assert os.environ.get("BASISRT_POISON_ARENA") == "1"
    model = pruned(name)
    x = torch.randn(batch, 3, 32, 32)
    compiled = compile(model, x, dense_backend="basisrt", num_threads=threads)
    program, output = compiled.native.program, compiled.native.output.id
    planned = program.arena_floats(batch, [output], threads)
    every = sum(h * w * c for h, w, c, parent in program.buffers if parent < 0) - np.prod(compiled.native.output.hwc)
    assert 0 < planned < every / 2  # chains and residual blocks reuse most of their memory
    for _ in range(2):  # the second call runs in memory the first left full of values
        with torch.no_grad():
            assert rel_err(compiled(x), model(x)) < 1e-5
    with pytest.raises(ValueError, match="N must be"):
        program.arena_floats(0, [output], threads)


class _Residuals(nn.Module):
    """Residual convs where writing the output over the residual is and is not allowed: `a` is the
    residual of two convs (only the second may take its memory), `c(b) + b` reads its residual as
    its input (3x3 windows: never in place), and the last conv's residual dies there."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.stem, self.c1, self.c2 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1)
        self.c3, self.c4, self.head = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1), nn.Conv2d(c, 8, 1)

    def forward(self, x):
        a = torch.relu(self.stem(x))
        b = torch.relu(self.c1(a) + a)  # a is read again below: not in place
        b = torch.relu(self.c2(b) + a)  # a dies here: in place
        b = self.c3(b) + b  # the residual is the input: not in place
        return self.head(self.c4(torch.relu(b)) + b)  # b dies at c4: in place


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 6])
def test_a_conv_writes_over_the_residual_that_dies_there(precision, batch, monkeypatch):
    """The arena plan puts a conv's output in its residual's memory where the residual has no
    later reader and is not the conv's input; with the arena poisoned before every call, a wrong
    sharing would read NaN or stale values."""
    if precision == "bf16":
        if _C.bf16_path() == "none":
            pytest.skip("this CPU has no AVX512-BF16 (nor AMX)")
        from basisrt.compiler import entry
        monkeypatch.setattr(entry, "BF16_CHOICE_PASSES", 0)  # every conv in bf16, bf16 maps between them
    torch.manual_seed(0)
    model = _Residuals().eval()
    x = torch.randn(batch, 3, 12, 10)
    compiled = compile(model, x, dense_backend="basisrt", precision=precision)
    program, output = compiled.native.program, compiled.native.output.id
    in_place = program.arena_floats(batch, [output], 2)
    program.in_place = False  # every output in memory of its own
    apart = program.arena_floats(batch, [output], 2)
    if precision == "fp32":  # (at bf16 some maps are half the size, and c4's output is bf16, b not)
        one_map, image = 12 * 10 * 32, 12 * 10 * 3
        # live at once: two maps and the input at most; without the in-place rule c2's and c4's
        # outputs were third maps beside their residual and their input
        assert in_place <= 2 * one_map + image + 16 and apart >= 3 * one_map
    with torch.no_grad():
        want = model(x)
    separate = compiled(x)
    program.in_place = True
    for _ in range(2):
        got = compiled(x)
        assert rel_err(got, want) < (1e-5 if precision == "fp32" else 3e-2)
        assert torch.equal(got, separate)


def test_plans_with_pytorch_steps_stay_step_by_step():
    x = torch.randn(2, 3, 32, 32)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    assert compile(model, x, dense_backend="torch").native is None  # oneDNN steps
    native = compile(model, x, dense_backend="basisrt")
    assert native.native is not None and rel_err(native(x), model(x).detach()) < 1e-5
    flat = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
    compiled = compile(flat, x, dense_backend="basisrt")  # a flattened H×W > 1 output is in NCHW order
    assert compiled.native is None and rel_err(compiled(x), flat(x).detach()) < 1e-5
    head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 5)).eval()
    compiled = compile(head, x, dense_backend="basisrt")  # the linear reads the map as a 30×30 conv
    assert compiled.native is not None and rel_err(compiled(x), head(x).detach()) < 1e-5


@pytest.mark.parametrize("name", ["resnet18", "densenet"])
def test_native_plan_survives_save_and_load(tmp_path, name):
    x = torch.randn(2, 3, 32, 32)
    compiled = compile(pruned(name), x, dense_backend="basisrt")
    compiled.save(tmp_path / "plan.brt")
    loaded = load(tmp_path / "plan.brt")
    assert loaded.native is not None
    assert torch.equal(loaded(x), compiled(x))


def test_native_plan_is_thread_safe():
    model = pruned("vgg16")
    compiled = compile(model, torch.randn(1, 3, 32, 32), dense_backend="basisrt")
    inputs = [torch.randn(b, 3, 32, 32) for b in (1, 2, 3, 4, 8, 2)]  # 4 and 8 run in image groups
    with torch.no_grad():
        refs = [model(t) for t in inputs]
    errors = []

    def work(i):
        for _ in range(3):
            if rel_err(compiled(inputs[i]), refs[i]) > 1e-5:
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_program_rejects_bad_ops_and_inputs():
    p = _C.Program()
    a, b = p.add_buffer(4, 4, 16), p.add_buffer(2, 2, 16)
    with pytest.raises(ValueError, match="buffer ids"):
        p.add_pool(a, 7, (2, 2), (2, 2), (0, 0), _C.PoolKind.max, True)
    with pytest.raises(ValueError, match="does not match"):
        p.add_pool(a, b, (2, 2), (1, 1), (0, 0), _C.PoolKind.max, True)
    with pytest.raises(ValueError, match="B \\(packed\\)"):
        p.add_conv(a, -1, b, torch.zeros(3).numpy(), None, None, 0, _C.Activation.none, (2, 2), (2, 2), (0, 0), (1, 1),
                   1)
    p.add_pool(a, b, (2, 2), (2, 2), (0, 0), _C.PoolKind.max, True)
    with pytest.raises(ValueError, match="NCHW"):
        p.run(torch.zeros(1, 4, 4, 16).numpy(), torch.zeros(1, 2, 2, 16).numpy(), b, 1)
    x = torch.randn(2, 16, 4, 4)
    y = torch.full((2, 2, 2, 16), float("nan"))
    p.run(x.numpy(), y.numpy(), b, 2)
    torch.testing.assert_close(y.permute(0, 3, 1, 2), torch.nn.functional.max_pool2d(x, 2))


@pytest.mark.parametrize("channels,hw,batch", [(21, (9, 11), 3), (16, (64, 1), 1), (48, (1, 1), 2), (3, (130, 7), 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_program_writes_nchw_outputs_itself(channels, hw, batch, threads):
    """A 4-D output comes back NCHW from the program (its own transpose: a PyTorch permute-copy
    woke PyTorch's OpenMP threads, whose spinning slowed the next call): the NHWC output's values,
    every element written (poisoned first), for channels and maps off the transpose's blocks."""
    p = _C.Program()
    a, b = p.add_buffer(hw[0] * 2, hw[1] * 2, channels), p.add_buffer(*hw, channels)
    p.add_pool(a, b, (2, 2), (2, 2), (0, 0), _C.PoolKind.max, True)
    x = torch.randn(batch, channels, hw[0] * 2, hw[1] * 2)
    nhwc = torch.full((batch, *hw, channels), float("nan"))
    nchw = torch.full((batch, channels, *hw), float("nan"))
    p.run(x.numpy(), nhwc.numpy(), b, threads)
    p.run(x.numpy(), nchw.numpy(), b, threads, nchw=True)
    assert torch.equal(nchw, nhwc.permute(0, 3, 1, 2))
    assert torch.equal(nchw, torch.nn.functional.max_pool2d(x, 2))
    outs = [np.full((batch, channels, *hw), np.nan, np.float32)]
    p.run_many(x.numpy(), outs, [b], threads, None, [True])
    assert torch.equal(torch.from_numpy(outs[0]), nchw)


def test_compiled_4d_outputs_are_contiguous_nchw():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 40, 3, padding=1)).eval()
    x = torch.randn(2, 3, 13, 9)
    compiled = compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None
    y = compiled(x)
    assert y.shape == (2, 40, 13, 9) and y.is_contiguous()
    with torch.no_grad():
        assert rel_err(y, model(x)) < 1e-5


@pytest.mark.parametrize("hw, fused", [((8, 8), 2), ((7, 7), 0), ((6, 10), 1)])
def test_max_pools_fuse_into_the_conv_before_them_where_they_can(hw, fused):
    """A 2×2 max pool runs in its conv's epilogue when the conv output is even and the pool is the
    conv's only user; otherwise it stays a pool op. Either way the program matches eager."""
    torch.manual_seed(0)
    model = decompose(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(32, 8, 1))).model.eval()
    x = torch.randn(4, 3, *hw)
    compiled = compile(model, x, dense_backend="basisrt", num_threads=2)
    assert len(compiled.native.fused_pools) == fused
    assert len(compiled.native.op_names) == 5 - fused
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5
    assert torch.equal(compiled(x), compiled.module(x).contiguous())  # the max of the same values



class Concats(nn.Module):
    """Channel concatenations whose parts come from each kind of op (a conv with a residual, a
    pre-activation BN + ReLU, a 1×1 conv, a pool), nested, and read by a conv, a pool and as a
    residual. Other `case`s hold a concatenation whose parts cannot all be views."""

    def __init__(self, case: str = "views"):
        super().__init__()
        self.case = case
        self.stem, self.a = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.bn, self.b = nn.BatchNorm2d(16), nn.Conv2d(32, 8, 1)
        self.pool, self.c, self.out_pool = nn.MaxPool2d(3, 1, 1), nn.Conv2d(72, 16, 3, padding=1), nn.AvgPool2d(2)

    def forward(self, x):
        s = self.stem(x)
        a = self.a(s) + s
        if self.case == "input":
            return torch.cat([x, a], 1)
        if self.case == "repeated":
            return torch.cat([a, a], 1)
        if self.case == "height":
            return torch.cat([a, s], 2)
        cat1 = torch.cat([a, torch.relu(self.bn(s))], 1)
        if self.case == "two_cats":  # `a` cannot be a view in both
            return torch.cat([torch.cat([a, s], 1), cat1], 1)
        cat2 = torch.cat(tensors=[cat1, self.b(cat1), self.pool(cat1)], dim=-3)
        y = self.c(cat2) + a  # reads cat2 from the buffer it writes into, and a view as residual
        return self.out_pool(torch.cat((y, cat2), 1))


def with_bn_statistics(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.normal_(1, 0.2)
            m.bias.data.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("threads", [1, 2])
def test_concatenations_run_in_place_and_match_eager(threads):
    torch.manual_seed(0)
    model = with_bn_statistics(Concats())
    x = torch.randn(8, 3, 10, 12)
    compiled = compile(model, x, dense_backend="basisrt", num_threads=threads)
    assert compiled.native is not None
    assert [s.strategy for s in compiled.plan.steps].count("affine") == 1
    if threads == 2:  # views inside image groups too
        assert all(images < 8 for *_, images in compiled.native.program.segments(8, threads))
    for batch in (x, x[:1], x[:3]):
        with torch.no_grad():
            assert rel_err(compiled(batch), model(batch)) < 1e-5
        assert torch.equal(compiled(batch), compiled.module(batch).contiguous())  # copies or views: same bits


@pytest.mark.parametrize("case", ["input", "repeated", "height", "two_cats"])
def test_concatenations_that_cannot_be_views(case):
    """A part that cannot be a view (the plan input, a part repeated, a part of two
    concatenations) is copied in by a gather op: still native. Parts of different heights are
    not a channel concatenation: the plan runs step by step."""
    torch.manual_seed(0)
    model = with_bn_statistics(Concats(case))
    x = torch.randn(2, 3, 10, 12)
    compiled = compile(model, x, dense_backend="basisrt")
    assert (compiled.native is None) == (case == "height")
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5
        assert rel_err(compiled(x[:1]), model(x[:1])) < 1e-5


def test_program_rejects_bad_views():
    p = _C.Program()
    x, a, b, wide, small = (p.add_buffer(4, 4, 8), p.add_buffer(4, 4, 8), p.add_buffer(4, 4, 8),
                            p.add_buffer(4, 4, 16), p.add_buffer(2, 2, 16))
    for args, match in [((x, wide, 0), "out of range"), ((a, small, 0), "does not fit"), ((a, wide, 9), "does not fit"),
                        ((a, a, 0), "out of range")]:
        with pytest.raises(ValueError, match=match):
            p.alias(*args)
    p.alias(a, wide, 0)
    p.alias(b, wide, 8)
    with pytest.raises(ValueError, match="already a view"):
        p.alias(a, wide, 8)
    one, whole = p.add_buffer(4, 4, 8), p.add_buffer(4, 4, 8)  # a concatenation of one part
    p.alias(one, whole, 0)
    with pytest.raises(ValueError, match="cannot hold itself"):
        p.alias(whole, one, 0)
    p.add_affine(x, a, np.ones(8, np.float32), np.zeros(8, np.float32), _C.Activation.none)
    with pytest.raises(ValueError, match="output buffer is a view"):
        p.run(np.zeros((1, 8, 4, 4), np.float32), np.zeros((1, 4, 4, 8), np.float32), a, 1)
