"""Plans whose every step is a basisrt kernel run as one C++ program (no Python between layers)."""
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


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "mobilenetv2"])
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


def test_plans_with_pytorch_steps_or_concat_stay_step_by_step():
    x = torch.randn(2, 3, 32, 32)
    assert compile(pruned("densenet"), x).native is None  # torch.cat is not a program op
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    assert compile(model, x, dense_backend="torch").native is None  # oneDNN steps
    native = compile(model, x, dense_backend="basisrt")
    assert native.native is not None and rel_err(native(x), model(x).detach()) < 1e-5
    flat = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 5)).eval()
    compiled = compile(flat, x, dense_backend="basisrt")  # flattening H×W > 1 reorders NHWC memory
    assert compiled.native is None and rel_err(compiled(x), flat(x).detach()) < 1e-5


def test_native_plan_survives_save_and_load(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    compiled = compile(pruned("resnet18"), x, dense_backend="basisrt")
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
        p.add_pool(a, 7, (2, 2), (2, 2), (0, 0), 0, True)
    with pytest.raises(ValueError, match="does not match"):
        p.add_pool(a, b, (2, 2), (1, 1), (0, 0), 0, True)
    with pytest.raises(ValueError, match="B \\(packed\\)"):
        p.add_conv(a, -1, b, torch.zeros(3).numpy(), None, None, 0, 0, (2, 2), (2, 2), (0, 0), (1, 1), 1)
    p.add_pool(a, b, (2, 2), (2, 2), (0, 0), 0, True)
    with pytest.raises(ValueError, match="NCHW"):
        p.run(torch.zeros(1, 4, 4, 16).numpy(), torch.zeros(1, 2, 2, 16).numpy(), b, 1)
    x = torch.randn(2, 16, 4, 4)
    y = torch.full((2, 2, 2, 16), float("nan"))
    p.run(x.numpy(), y.numpy(), b, 2)
    torch.testing.assert_close(y.permute(0, 3, 1, 2), torch.nn.functional.max_pool2d(x, 2))


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
