"""Nothing reachable from Python may crash the process: empty batches on every path, crafted
geometry and thread counts at the C++ entry points, and a seeded fuzz of every basisrt._C entry
point. Each case runs in a child process (tests/isolated.py), so a crash fails its test only."""
import json

import pytest
from isolated import ROOT, run_isolated

PRUNED = """
import torch, basisrt
torch.manual_seed(0)
model = basisrt.decompose(basisrt.models.create("{name}").eval()).model
basisrt.prune_basis(model, "ratio", 0.1)
model.eval()
"""


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "densenet"])
def test_empty_batch_on_native_and_step_by_step_plans(name):
    run_isolated(PRUNED.format(name=name) + """
for kw in ({}, {"dense_backend": "torch", "prefer_lowrank": False}):  # native; oneDNN steps through fx
    compiled = basisrt.compile(model, torch.randn(2, 3, 32, 32), **kw)
    assert (compiled.native is not None) == (kw == {}), kw
    empty = torch.randn(0, 3, 32, 32)
    with torch.no_grad():
        ref = model(empty)
    out = compiled(empty)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert compiled.module(empty).shape == ref.shape  # each step by itself, through fx
    assert compiled(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # and it goes on working
""")


def test_empty_batch_on_triton_plan():
    run_isolated("""
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch, basisrt
from torch import nn
torch.manual_seed(0)
model = basisrt.decompose(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))).model.eval()
basisrt.prune_basis(model, "ratio", 0.5)
compiled = basisrt.compile(model, torch.randn(1, 3, 6, 6), backend="triton")
assert compiled(torch.randn(0, 3, 6, 6)).shape == (0, 8, 4, 4)
""")


def test_kernel_entry_points_accept_an_empty_batch():
    run_isolated("""
import numpy as np, torch
from basisrt import _C
from basisrt.compiler.cpu_steps import ChannelAffineStep, FusedConv2d, PoolStep
torch.manual_seed(0)
x = torch.randn(0, 16, 5, 5)
for step in (FusedConv2d(torch.randn(4, 16, 3, 3), None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                         scale=torch.randn(8, 4), activation="relu"),
             FusedConv2d(torch.randn(16, 1, 3, 3), torch.randn(16), stride=(2, 2), padding=(1, 1), dilation=(1, 1),
                         groups=16),
             FusedConv2d(torch.randn(16, 8, 3, 3), None, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2),
             PoolStep("max", (2, 2)), PoolStep("avg", None), ChannelAffineStep(torch.randn(16), torch.randn(16))):
    assert step(x).shape[0] == 0, step
""")


def test_crafted_program_geometry_is_refused():
    out = run_isolated("""
import numpy as np
from basisrt import _C
p = _C.Program()
a, b = p.add_buffer(8, 8, 16), p.add_buffer(8, 8, 16)
w = np.random.default_rng(0).standard_normal(16 * 16).astype(np.float32)
good = dict(kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1))
relu = _C.Activation.relu
for bad in (dict(kernel=(-1, -1)), dict(stride=(0, 0)), dict(dilation=(0, 1)), dict(padding=(-1, 0)),
            dict(kernel=(2 ** 40, 1)), dict(stride=(2 ** 62, 1))):
    args = {**good, **bad}
    try:
        p.add_conv(a, -1, b, w, None, None, 0, relu, args["kernel"], args["stride"], args["padding"],
                   args["dilation"], 1)
        print("accepted", bad)
    except (ValueError, TypeError) as e:
        print("refused", e)
for ids in ((a, 5, b), (7, -1, b), (a, -1, 0), (a, -1, a), (a, b, b)):
    try:
        p.add_conv(ids[0], ids[1], ids[2], w, None, None, 0, relu, (1, 1), (1, 1), (0, 0), (1, 1), 1)
        print("accepted", ids)
    except ValueError as e:
        print("refused", e)
for hwc in ((0, 1, 1), (-1, 4, 4), (2 ** 30, 2 ** 30, 1)):
    try:
        p.add_buffer(*hwc)
        print("accepted", hwc)
    except ValueError as e:
        print("refused", e)
""")
    assert "accepted" not in out, out
    assert "kernel must be in [1" in out and "stride must be" in out and "dilation must be" in out
    assert "padding must be" in out and "buffer ids out of range" in out


def test_thread_counts_are_capped():
    out = run_isolated("""
import numpy as np, torch, basisrt
from basisrt import _C
torch.manual_seed(0)
model = basisrt.decompose(basisrt.models.create("vgg16").eval()).model
basisrt.prune_basis(model, "ratio", 0.1)
compiled = basisrt.compile(model.eval(), torch.randn(1, 3, 32, 32))
x = torch.randn(1, 3, 32, 32)
for threads in (0, -1, 100000):
    try:
        compiled.native.program.run(x.numpy(), np.zeros(10, np.float32), compiled.native.output.id, threads)
        print("accepted", threads)
    except ValueError as e:
        print("refused", e)
try:
    basisrt.compile(model, x, num_threads=100000)
    print("accepted compile")
except ValueError as e:
    print("refused", e)
# A plan may ask for more threads than there are cores: the pool never grows past the cores.
compiled = basisrt.compile(model, x, num_threads=64, dense_backend="basisrt")
compiled(x)
import os
print("tasks", len(os.listdir("/proc/self/task")), os.cpu_count())
""")
    assert "accepted" not in out, out
    threads, cores = map(int, out.split("tasks")[1].split())
    assert threads <= cores + 8, out  # the interpreter's, torch's and at most cores - 1 pool helpers


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzz_every_c_entry_point(seed):
    """Seeded random mutations of valid calls to every _C entry point (1200 calls per seed, the bf16
    conv and both Winograd paths included where the CPU has them)."""
    out = run_isolated(str(ROOT / "tests" / "fuzz_c_entry_points.py"), str(seed), "1200", timeout=600)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["unexpected"] == [], report
    for entry, counts in report["outcomes"].items():
        assert counts["refused"] > 0 or entry == "fuzz_paths", report  # the mutations reach the checks
        assert counts["ok"] > 0, report  # and valid calls still run
