"""basisrt.compile: every reference model compiles and matches eager; fusions; clear errors."""
import threading
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import basisrt
from basisrt import compile, decompose, prune_basis


def rel_err(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


def pruned(name: str, ratio: float = 0.25) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    dense = basisrt.models.create(name).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is really tested
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    model = decompose(dense).model
    prune_basis(model, "ratio", ratio)
    return dense, model


@pytest.mark.parametrize("name, dense_backend", [(n, "torch") for n in sorted(basisrt.models.REFERENCE_MODELS)]
                         + [("resnet18", "basisrt"), ("vit_mlp", "basisrt")])
def test_reference_models_compile_and_match(name, dense_backend):
    dense, model = pruned(name)
    x = torch.randn(3, 3, 32, 32)
    for m in (dense, model):
        compiled = compile(m, x, dense_backend=dense_backend)
        with torch.no_grad():
            ref = m(x)
        assert rel_err(compiled(x), ref) < 1e-5
        assert rel_err(compiled(x[:1]), ref[:1]) < 1e-5  # another batch size
    strategies = Counter(s.strategy for s in compiled.plan.steps)
    assert strategies["fused"] > 0
    assert not any("batch_norm" in s.detail.lower() or s.detail.startswith("BatchNorm") for s in compiled.plan.steps)


def test_fusions_in_plan():
    _, model = pruned("resnet18")
    compiled = compile(model, torch.randn(1, 3, 32, 32))
    names = [type(compiled.module.get_submodule(s.name)).__name__ for s in compiled.plan.steps if s.strategy == "torch"
             and "." in s.name or s.name.isidentifier() and hasattr(compiled.module, s.name)]
    assert "BatchNorm2d" not in names and "ReLU" not in names  # folded / fused away
    steps = [compiled.module.get_submodule(s.name) for s in compiled.plan.steps if s.strategy == "fused"]
    assert sum(s.residual for s in steps) == 8  # one residual add per BasicBlock
    assert sum(s.activation == "relu" for s in steps) == 17


def test_dense_fold_when_rank_too_high():
    model = decompose(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())).model  # full rank: never pays
    x = torch.randn(2, 8, 6, 6)
    compiled = compile(model, x, dense_backend="torch")
    assert [s.strategy for s in compiled.plan.steps] == ["dense-fold"]
    assert rel_err(compiled(x), model(x).detach()) < 1e-5
    assert [s.strategy for s in compile(model, x, prefer_lowrank=False, dense_backend="torch").plan.steps] == [
        "dense-fold"]
    with pytest.raises(ValueError, match="dense_backend"):
        compile(model, x, dense_backend="cuda")


def test_plain_kxk_then_1x1_is_a_basis_pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 6, 3, padding=1), nn.Conv2d(6, 48, 1), nn.BatchNorm2d(48), nn.ReLU()).eval()
    x = torch.randn(2, 32, 9, 7)
    compiled = compile(model, x)
    assert [s.strategy for s in compiled.plan.steps] == ["fused"]
    step = compiled.module.get_submodule(compiled.plan.steps[0].name)
    assert step.rank == 6 and step.activation == "relu"
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5


def test_untraceable_ops_run_through_torch_and_padding_modes_fall_back():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
            self.b = nn.Conv2d(8, 8, 3, padding="same")

        def forward(self, x):
            return torch.sigmoid(self.b(self.a(x))).flatten(1).softmax(-1)

    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = compile(model, x)
    strategies = {s.name: s.strategy for s in compiled.plan.steps}
    assert strategies["a"] == "torch"  # reflect padding: PyTorch runs it
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5


def test_untraceable_model_gets_clear_message():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    # fx cannot trace it, nor Dynamo capture it as one graph: the message says what is left
    with pytest.warns(UserWarning, match="torch.fx cannot trace DataDependent"), \
            pytest.raises(RuntimeError,
                          match="could not capture DataDependent .* torch.compile\\(model, backend='basisrt'\\)"):
        compile(DataDependent(), torch.randn(1, 3))


def test_input_errors_and_layouts():
    _, model = pruned("vgg16", 0.1)
    x = torch.randn(2, 3, 32, 32)
    compiled = compile(model, x)
    with pytest.raises(ValueError, match="shape"):
        compiled(torch.randn(2, 3, 16, 16))
    with pytest.raises(TypeError, match="float32"):
        compiled(x.double())
    with pytest.raises(TypeError, match="torch.Tensor"):
        compiled(x.numpy())
    with pytest.raises(ValueError, match="meta device"):  # no data to run: said before anything else
        compile(model, torch.randn(2, 3, 32, 32, device="meta"))
    ref = compiled(x)
    assert torch.allclose(compiled(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-6)
    assert torch.allclose(compiled(x.transpose(2, 3).contiguous().transpose(2, 3)), ref, atol=1e-6)
    assert ref.is_contiguous()


def test_one_call_matches_the_checked_path_with_a_new_tensor_each_time():
    """A plain input runs in one C++ call (NativeProgram.call_fast): what the checked Python path
    gives, bit for bit, in a new 64-byte-aligned tensor each call; what it does not take (other
    layouts, dtypes, grad, an empty batch) goes the checked way."""
    _, model = pruned("resnet18", 0.1)
    x = torch.randn(2, 3, 32, 32)
    compiled = compile(model, x)
    fast = compiled.native.call_fast(x)
    checked = compiled.native(x, np.zeros(len(compiled.native.op_names)))  # op_seconds: the Python path
    assert fast is not None and fast.shape == checked.shape == (2, 10) and fast.dtype == torch.float32
    assert torch.equal(fast, checked)
    a, b = compiled(x), compiled(x)
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr() and a.data_ptr() % 64 == 0
    a.add_(1)  # the caller's to keep and change
    assert torch.equal(compiled(x), b)
    others = [x.contiguous(memory_format=torch.channels_last), x.double(), x.clone().requires_grad_(), x[:0], x[0]]
    assert all(compiled.native.call_fast(o) is None for o in others)
    assert torch.equal(compiled(others[0]), b) and torch.equal(compiled(others[2]), b)
    assert compiled(others[3]).shape == (0, 10)


def test_threads_share_a_plan():
    _, model = pruned("resnet18", 0.1)
    compiled = compile(model, torch.randn(1, 3, 32, 32))
    inputs = [torch.randn(1 + i % 3, 3, 32, 32) for i in range(6)]
    expected = [compiled(x) for x in inputs]
    results = [None] * len(inputs)

    def run(i):
        for _ in range(3):
            results[i] = compiled(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert torch.equal(got, want)


def test_step_times_cover_fused_steps():
    _, model = pruned("vgg16", 0.1)
    x = torch.randn(1, 3, 32, 32)
    compiled = compile(model, x)
    times = compiled.step_times(x, repeats=2)
    fused = compiled.native.fused_pools  # VGG's five max pools run in the epilogue of the conv before them
    assert len(fused) == 5 and set(fused.values()) <= {n for n, _, _ in times}
    assert {n for n, _, _ in times} | set(fused) == {s.name for s in compiled.plan.steps if s.strategy != "torch"}
    assert all(t > 0 for _, _, t in times)


def test_autotune_matches_eager_and_caches_decisions():
    from basisrt.compiler import autotune

    autotune.clear_cache()
    _, model = pruned("resnet18", 0.25)
    x = torch.randn(2, 3, 32, 32)
    compiled = compile(model, x, autotune=True)
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5
    chosen = Counter(s.strategy for s in compiled.plan.steps)
    n_basis = sum(isinstance(m, basisrt.layers.BasisLayer) for m in model.modules())
    measured = chosen["fused"] + chosen["pair"] + chosen["dense-fold"] + chosen["dense-basisrt"]
    assert measured == n_basis  # every basis layer got a measured choice
    decided = len(autotune._DECISIONS)
    assert 0 < decided < n_basis  # layers of the same shape share one measurement
    compile(model, x, autotune=True)
    assert len(autotune._DECISIONS) == decided  # second compile: all from the cache


def test_autotune_chooses_a_kernel_for_plain_dense_layers():
    from basisrt.compiler import autotune

    autotune.clear_cache()
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()
    x = torch.randn(2, 3, 12, 12)
    compiled = compile(model, x, autotune=True)
    strategies = [s.strategy for s in compiled.plan.steps if s.strategy != "torch"]
    assert len(strategies) == 2 and set(strategies) <= {"dense", "dense-basisrt"}
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5


class _Timed(nn.Module):
    """A fake step taking `seconds`, or `slowed` right after a step with `slows_next` ran."""

    last = None

    def __init__(self, seconds: float, slowed: float | None = None, slows_next: bool = False):
        super().__init__()
        self.seconds, self.slowed, self.slows_next = seconds, slowed, slows_next

    def forward(self, x):
        import time
        after_torch = _Timed.last is not None and _Timed.last.slows_next
        time.sleep(self.slowed if after_torch and self.slowed else self.seconds)
        _Timed.last = self
        return x


@pytest.mark.parametrize("slowdown, expected", [(None, "pair"), (0.012, "fused")])
def test_autotune_charges_torch_steps_the_slowdown_they_cause(slowdown, expected):
    """A PyTorch candidate that is faster alone loses when it slows our next step by more."""
    from basisrt.compiler.autotune import _pick

    steps = {"fused": _Timed(0.004, slowed=slowdown), "pair": _Timed(0.002, slows_next=True)}
    assert _pick(steps, torch.zeros(1), 3, ours=("fused",)) == (expected, "fused")


@pytest.mark.parametrize("faster", ["ours", "mixed"])
def test_default_dense_backend_keeps_the_faster_of_oneDNN_and_native_plans(monkeypatch, faster):
    """dense_backend="auto" (the default): the first conv is a plain dense conv, which the cost
    model gives to oneDNN; the plan of only our kernels (native) is timed against that one."""
    from basisrt.compiler import entry as plan

    timed = {"ours": 1.0, "mixed": 2.0} if faster == "ours" else {"ours": 2.0, "mixed": 1.0}
    monkeypatch.setattr(plan, "paired_seconds", lambda c, x, repeats: {k: timed.get(k, 9.0) for k in c})
    dense = basisrt.models.create("vgg16").eval()
    first = next(n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d))
    model = decompose(dense, exclude=[first]).model  # as the benchmark: the first conv stays plain
    prune_basis(model, "ratio", 0.25)
    x = torch.randn(2, 3, 32, 32)
    compiled = compile(model, x)
    strategies = Counter(s.strategy for s in compiled.plan.steps)
    assert (compiled.native is not None) == (faster == "ours")
    assert (strategies["dense-basisrt"], strategies["dense"]) == ((1, 0) if faster == "ours" else (0, 1))
    assert compile(model, x, dense_backend="torch").native is None  # an explicit backend is kept
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5


class _DisturbedAtFirst(_Timed):
    """A step whose first `calls` calls take `first_s` (as if another process held the core)."""

    def __init__(self, seconds: float, first_s: float, calls: int):
        super().__init__(seconds)
        self.first_s, self.calls = first_s, calls

    def forward(self, x):
        self.calls -= 1
        if self.calls >= 0:
            import time
            time.sleep(self.first_s)
            return x
        return super().forward(x)


def test_autotune_times_again_before_handing_a_layer_to_pytorch():
    """Our kernel timed in a disturbed block loses to oneDNN at first; timed again side by side,
    it wins the layer back."""
    from basisrt.compiler.autotune import _WARMUP, _pick

    steps = {"fused": _DisturbedAtFirst(0.001, first_s=0.004, calls=_WARMUP + 3), "pair": _Timed(0.002)}
    assert _pick(steps, torch.zeros(1), 3, ours=("fused",)) == ("fused", "fused")


@pytest.mark.parametrize("mixed_s, kept", [(2.0, "ours"), (0.5, "mixed"), (0.95, "ours")])
def test_autotune_keeps_the_faster_of_mixed_and_all_basisrt_plans(monkeypatch, mixed_s, kept):
    """When a PyTorch step wins a layer, the whole plan of only our kernels (which runs natively)
    is timed against the mixed plan, and the faster one is kept; the mixed one must win clearly."""
    from basisrt.compiler import autotune
    from basisrt.compiler import entry as plan

    autotune.clear_cache()
    monkeypatch.setattr(autotune, "_pick", lambda *a, **k: ("pair", "fused"))  # oneDNN "wins" every layer
    timed = {"ours": 1.0, "mixed": mixed_s}  # 5 % faster is within the margin the native plan gets
    monkeypatch.setattr(plan, "paired_seconds", lambda c, x, repeats: {k: timed.get(k, 9.0) for k in c})
    _, model = pruned("vgg16", 0.25)
    x = torch.randn(1, 3, 32, 32)
    compiled = compile(model, x, autotune=True)
    strategies = Counter(s.strategy for s in compiled.plan.steps)
    assert (compiled.native is not None) == (kept == "ours")
    n_basis = sum(isinstance(m, basisrt.layers.BasisLayer) for m in model.modules())
    assert strategies["pair"] == (0 if kept == "ours" else n_basis)
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5
    autotune.clear_cache()


class _TanhHead(nn.Module):
    """Convs around an op with no basisrt kernel (tanh): a mixed plan. The view at the end reads a
    PyTorch op's output of a conv step's channels_last layout."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.gain = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)  # an eval BatchNorm of eps 0 (normalize)

    def forward(self, x):
        y = self.b(torch.relu(self.bn(self.a(x))).tanh() * self.gain)
        return (y * 2).view(y.shape[0], -1)


@pytest.mark.parametrize("faster", ["pytorch", "mixed"])
def test_a_mixed_plan_slower_than_pytorch_alone_gives_way(monkeypatch, tmp_path, faster):
    """A mixed plan is timed against the plan of only PyTorch's steps (BatchNorm and activations
    still folded, basis pairs as their two convs), and the faster one is kept."""
    from basisrt.compiler import entry

    asked = []
    timed = {"pytorch": 1.0, "mixed": 2.0, "ours": 3.0} if faster == "pytorch" else \
        {"pytorch": 2.0, "mixed": 1.0, "ours": 3.0}
    monkeypatch.setattr(entry, "paired_seconds", lambda c, x, repeats: asked.append(set(c)) or {k: timed[k] for k in c})
    torch.manual_seed(0)
    model = decompose(_TanhHead().eval()).model
    prune_basis(model, "ratio", 0.5)
    x = torch.randn(2, 3, 9, 7)
    compiled = compile(model, x)
    assert compiled.native is None and {"mixed", "pytorch"} in asked
    kinds = Counter(s.strategy for s in compiled.plan.steps)
    if faster == "pytorch":
        assert kinds["pair"] == 2 and not kinds["fused"] and not kinds["affine"], compiled.plan
        assert all(type(m).__name__ == "TorchConvStep" for n, m in compiled.module.named_modules() if "step" in n)
    else:
        assert kinds["fused"] == 2 and not kinds["pair"], compiled.plan
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5
        compiled.save(tmp_path / "p.basisrt")
        assert torch.equal(basisrt.load(tmp_path / "p.basisrt")(x), compiled(x))
    asked.clear()
    timed["ours"] = 0.1  # the plan of only our kernels wins, and is native
    native = compile(decompose(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())).model, x)
    assert native.native is not None and {"mixed", "pytorch"} not in asked  # a native plan races nothing
