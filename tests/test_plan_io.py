"""Saving and loading compiled plans: same outputs, no pickle, no original model class."""
import copy
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import fx, nn

import basisrt
from basisrt import compile, decompose, load, prune_basis


def compiled_model(name: str, **options):
    torch.manual_seed(0)
    model = decompose(basisrt.models.create(name).eval()).model
    prune_basis(model, "ratio", 0.25)
    x = torch.randn(2, 3, 32, 32)
    return compile(model, x, **options), x


@pytest.mark.parametrize("name", sorted(basisrt.models.REFERENCE_MODELS))
def test_round_trip_every_reference_model(name, tmp_path):
    compiled, x = compiled_model(name)
    path = tmp_path / f"{name}.basisrt"
    compiled.save(path)
    loaded = load(path)
    assert torch.equal(loaded(x), compiled(x))
    assert [s.strategy for s in loaded.plan.steps] == [s.strategy for s in compiled.plan.steps]
    with pytest.raises(ValueError, match="shape"):  # the input signature travels with the plan
        loaded(torch.randn(2, 3, 16, 16))


@functools.lru_cache(maxsize=1)
def reference_variants(name: str) -> dict[str, nn.Module]:
    """The reference model `name` plain, decomposed, and decomposed with 90 % of each basis pruned."""
    torch.manual_seed(0)
    plain = basisrt.models.create(name).eval()
    decomposed = decompose(plain).model.eval()
    pruned = copy.deepcopy(decomposed)
    prune_basis(pruned, "ratio", 0.1)
    return {"plain": plain, "decomposed": decomposed, "pruned": pruned.eval()}


def _same_plan(a, b) -> None:
    """Two CompiledModels hold the same program: graph, step classes and attributes, tensors."""
    def program(gm):
        index = {n: i for i, n in enumerate(gm.graph.nodes)}
        nodes = [(n.op, n.target if isinstance(n.target, str) else n.target.__name__,
                  fx.node.map_arg((n.args, n.kwargs), index.__getitem__)) for n in gm.graph.nodes]
        steps = {n.target: gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"}
        return nodes, {k: (type(m), {a: v for a, v in vars(m).items() if not a.startswith("_")})
                       for k, m in steps.items()}
    assert program(a.module) == program(b.module)
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# Every plan compile makes of a reference model (plain, decomposed, pruned) saves, loads and computes
# the same: PyTorch's dense convs, basisrt's (the two plans compile's default dense_backend="auto"
# times against each other; test_round_trip_every_reference_model runs the default itself) and
# Triton steps. Interpreted Triton is far too slow for whole models on the CPU, so there the loaded
# plan is compared step by step instead of run.
@pytest.mark.parametrize("options", ["dense_backend=torch", "dense_backend=basisrt", "backend=triton"])
@pytest.mark.parametrize("variant", ["plain", "decomposed", "pruned"])
@pytest.mark.parametrize("name", sorted(basisrt.models.REFERENCE_MODELS))
def test_every_compiled_reference_plan_round_trips(name, variant, options, tmp_path):
    key, _, value = options.partition("=")
    if options == "backend=triton" and (importlib.util.find_spec("triton") is None
                                        or os.environ.get("TRITON_INTERPRET") != "1"):
        pytest.skip("Triton steps on CPU tensors need triton and TRITON_INTERPRET=1")
    model = reference_variants(name)[variant]
    x = torch.randn(2, 3, 32, 32)
    compiled = compile(model, x, **{key: value})
    path = tmp_path / "plan.basisrt"
    compiled.save(path)
    loaded = load(path)
    _same_plan(loaded, compiled)
    assert [vars(s) for s in loaded.plan.steps] == [vars(s) for s in compiled.plan.steps]
    assert (loaded.native is None) == (compiled.native is None)
    if key != "backend":
        assert torch.equal(loaded(x), compiled(x))


def test_loads_in_a_process_without_the_model_class(tmp_path):
    class LocalNet(nn.Module):  # exists only inside this test: the loading process cannot import it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            y = torch.relu(self.conv2(y) + y)
            return self.head(y.mean((2, 3)))

    torch.manual_seed(0)
    model = decompose(LocalNet().eval()).model
    prune_basis(model, "ratio", 0.5)
    x = torch.randn(2, 3, 12, 12)
    compiled = compile(model, x)
    path, data = tmp_path / "local.basisrt", tmp_path / "io.safetensors"
    compiled.save(path)
    save_file({"x": x, "y": compiled(x)}, str(data))
    code = f"""
import torch, basisrt
from safetensors.torch import load_file
plan = basisrt.load({str(path)!r})
io = load_file({str(data)!r})
assert torch.equal(plan(io["x"]), io["y"])
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_plan_metadata_is_json_and_weights_are_tensors(tmp_path):
    compiled, _ = compiled_model("vgg16")
    path = tmp_path / "vgg.basisrt"
    compiled.save(path)
    with safe_open(str(path), framework="pt") as f:
        plan = json.loads(f.metadata()["basisrt_plan"])
        assert len(list(f.keys())) > 0
    assert plan["format"] == "basisrt-plan/1"
    assert plan["input"] == {"shape": [3, 32, 32], "dtype": "float32", "name": "input"}
    assert any(m.get("class") == "basisrt.compiler.cpu_steps.FusedConv2d" for m in plan["modules"].values())


@pytest.mark.parametrize("tamper", ["function", "module class"])
def test_load_refuses_foreign_code(tmp_path, tamper):
    compiled, _ = compiled_model("vit_mlp")
    path = tmp_path / "p.basisrt"
    compiled.save(path)
    with safe_open(str(path), framework="pt") as f:
        plan, tensors = json.loads(f.metadata()["basisrt_plan"]), {k: f.get_tensor(k) for k in f.keys()}
    if tamper == "function":
        next(n for n in plan["graph"] if n["op"] == "call_function")["target"] = "os.system"
    else:
        next(m for m in plan["modules"].values() if "class" in m)["class"] = "subprocess.Popen"
    bad = tmp_path / "bad.basisrt"
    save_file(tensors, str(bad), metadata={"basisrt_plan": json.dumps(plan)})
    message = (r"node '\w+' calls os.system, which plans may not call" if tamper == "function" else
               r"module '[\w.]+' is of class subprocess.Popen, which plans may not hold")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: {message}$"):
        load(bad)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no compiled plan"):
        load(tmp_path / "missing.basisrt")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(ValueError, match="not a basisrt plan"):
        load(plain)


# ---- plans of the Triton backend (CPU tensors under the interpreter here, CUDA on a GPU machine) ------------

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # conftest sets it on machines without CUDA
TRITON_DEV = "cpu" if INTERPRETED else "cuda"
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or not (INTERPRETED or torch.cuda.is_available()),
    reason="needs triton, and a CUDA GPU or TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def triton_plan(tmp_path, device: str = TRITON_DEV):
    """A small pruned net compiled with Triton steps (and one cuDNN/oneDNN step), saved."""
    from nets import pruned_net
    model = pruned_net().to(device)
    x = torch.randn(2, 3, 12, 10, device=device)
    compiled = compile(model, x, backend="triton")
    path = tmp_path / "triton.basisrt"
    compiled.save(path)
    return compiled, x, path


def _retag(path, out, **changes):
    """A copy of the plan file at `path` with top-level plan fields changed (None: removed)."""
    with safe_open(str(path), framework="pt") as f:
        plan, tensors = json.loads(f.metadata()["basisrt_plan"]), {k: f.get_tensor(k) for k in f.keys()}
    plan = {k: v for k, v in {**plan, **changes}.items() if v is not None}
    save_file(tensors, str(out), metadata={"basisrt_plan": json.dumps(plan)})
    return out


@needs_triton
def test_triton_plan_round_trip(tmp_path):
    compiled, x, path = triton_plan(tmp_path)
    steps = {type(m).__name__ for m in compiled.module.modules()}
    assert {"GPUFusedConv2d", "GPUFusedLinear"} <= steps
    for loaded in (load(path), load(path, device=TRITON_DEV)):
        assert {type(m).__name__ for m in loaded.module.modules()} == steps
        assert loaded.device.type == TRITON_DEV and not loaded.cuda_graph
        assert torch.equal(loaded(x), compiled(x))
    with safe_open(str(path), framework="pt") as f:
        plan = json.loads(f.metadata()["basisrt_plan"])
    assert plan["device"].startswith(TRITON_DEV) and plan["cuda_graph"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@needs_triton
def test_cuda_plan_without_cuda_is_a_clear_error(tmp_path):
    _, x, path = triton_plan(tmp_path)
    cuda_plan = _retag(path, tmp_path / "from_cuda.basisrt", device="cuda:0", cuda_graph=True)
    with pytest.raises(RuntimeError, match=r"saved from cuda:0\) onto cuda:0: no CUDA device is available on this "
                                           r"machine; its Triton steps need a CUDA GPU"):
        load(cuda_plan)
    on_cpu = load(cuda_plan, device="cpu")  # the interpreter runs its Triton steps on the CPU
    assert on_cpu.device == torch.device("cpu") and not on_cpu.cuda_graph  # graphs are a CUDA-only mode
    assert torch.equal(on_cpu(x), load(path)(x))
    with pytest.raises(ValueError, match="cuda_graph=True needs a plan on a CUDA device"):
        load(cuda_plan, device="cpu", cuda_graph=True)


@needs_triton
def test_triton_plan_on_cpu_needs_the_interpreter(tmp_path, monkeypatch):
    _, _, path = triton_plan(tmp_path)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="fused steps are Triton kernels and cannot run on cpu.*TRITON_INTERPRET=1"):
        load(path, device="cpu")


def test_cpu_plan_refuses_other_devices(tmp_path):
    compiled, _ = compiled_model("vit_mlp", dense_backend="basisrt")  # a plan holding our C++ kernels
    path = tmp_path / "cpu.basisrt"
    compiled.save(path)
    with pytest.raises(ValueError, match=r"C\+\+ CPU kernels \(compiled on cpu\) and cannot run on cuda"):
        load(path, device="cuda")
    old = _retag(path, tmp_path / "old.basisrt", device=None, cuda_graph=None)  # written before devices were recorded
    assert load(old).device == torch.device("cpu") and not load(old).cuda_graph


@needs_cuda
@needs_triton
def test_cuda_plan_round_trip_with_cuda_graph(tmp_path):
    from nets import pruned_net
    model = pruned_net().cuda()
    x = torch.randn(2, 3, 12, 10, device="cuda")
    compiled = compile(model, x, cuda_graph=True)
    path = tmp_path / "cuda.basisrt"
    compiled.save(path)
    loaded = load(path)
    assert loaded.device == x.device and loaded.cuda_graph
    torch.testing.assert_close(loaded(x), compiled(x), rtol=1e-6, atol=1e-6)
    assert not load(path, cuda_graph=False).cuda_graph


def _saves_and_loads_under_both_captures(model: nn.Module, x: torch.Tensor, tmp_path) -> list:
    """The plans of `model` under fx and TorchDynamo, each saved, loaded and matching the model."""
    plans = []
    for capture in ("fx", "dynamo"):
        compiled = basisrt.compile(model, x, capture=capture)
        compiled.save(str(tmp_path / f"{capture}.basisrt"))
        with torch.no_grad():
            assert torch.allclose(basisrt.load(str(tmp_path / f"{capture}.basisrt"))(x), model(x), atol=1e-5)
        plans.append(compiled)
    return plans


def test_plans_with_addcmul_and_dynamo_pads_save(tmp_path):
    """ConvNeXt-V2's global response norm (torch.addcmul) and EfficientViT's constant pad of one, as
    TorchDynamo records it (torch._C._nn.pad): ops that stay PyTorch's, in plans that must save."""
    class Grn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.gamma, self.beta = nn.Parameter(torch.rand(1, 8, 1, 1)), nn.Parameter(torch.rand(1, 8, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            gx = y.norm(p=2, dim=(2, 3), keepdim=True)
            y = torch.addcmul(self.beta + y, self.gamma, y * (gx / (gx.mean(dim=1, keepdim=True) + 1e-6)))
            return F.pad(y, (0, 0, 0, 1), mode="constant", value=1.0)

    torch.manual_seed(0)
    model = Grn().eval()
    x = torch.randn(2, 3, 5, 6)
    _saves_and_loads_under_both_captures(model, x, tmp_path)


def test_plans_with_size_asserts_autocast_off_and_eye_save(tmp_path):
    """HaloNet's `_assert(H % block == 0)` (dropped: it holds for every batch) and `Tensor.unfold`,
    EdgeNeXt's `~mask` and sinusoidal positions (arange, cumsum, sin, cos), EfficientViT's
    `with torch.autocast(..., enabled=False)` and `.float()` of float32 (nothing to do), and a made
    identity (`torch.eye`, BoTNet-style): plans that compile must also save."""
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape
            torch._assert(h % 2 == 0, "even height")
            y = self.conv(x).float()
            with torch.autocast("cpu", enabled=False):
                y = F.relu(y)
            y = torch.where(~(y > 0.5), y * 0.5, y)  # EdgeNeXt inverts a mask
            windows = y.unfold(3, 2, 1)  # HaloNet's sliding blocks, a view
            position = torch.arange(w, dtype=torch.float32).cumsum(0).sin() + torch.arange(w, dtype=torch.float32).cos()
            return y @ (torch.eye(w) * 2) + windows.sum(-1).mean(-1, keepdim=True) + position

    torch.manual_seed(0)
    model = Odd().eval()
    x = torch.randn(2, 3, 6, 5)
    for compiled in _saves_and_loads_under_both_captures(model, x, tmp_path):
        names = {str(getattr(n.target, "__name__", n.target)) for n in compiled.module.graph.nodes}
        assert not names & {"_assert", "float", "_enter_autocast", "_exit_autocast"}, names


def test_a_plan_holding_a_conv3d_saves(tmp_path):
    """LambdaNet's position lambdas: a Conv3d over the channels viewed as depth, left to PyTorch."""
    class Lambda(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.conv_lambda = nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.conv_lambda(y.unsqueeze(1)).sum(1) + y

    torch.manual_seed(0)
    model = Lambda().eval()
    x = torch.randn(2, 3, 6, 7)
    compiled = basisrt.compile(model, x)
    compiled.save(str(tmp_path / "lambda.basisrt"))
    with torch.no_grad():
        assert torch.allclose(basisrt.load(str(tmp_path / "lambda.basisrt"))(x), model(x), atol=1e-5)


def test_plans_with_fold_repeat_pool1d_and_long_names_save(tmp_path):
    """Hugging Face's MobileViT-V2 (F.unfold / F.fold patches), SwiftFormer (`.repeat`), FocalNet
    (adaptive_avg_pool1d over tokens), CvT's module names, which TorchDynamo flattens into one name
    of over 128 characters, and EdgeNeXt's `.to(x.device)` (a constant device under TorchDynamo):
    plans that compile must also save."""
    class Hf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            long = nn.Module()
            setattr(long, "projection_" * 14, nn.Conv2d(4, 4, 1))
            self.stage = long

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = getattr(self.stage, "projection_" * 14)(self.conv(x))
            patches = F.unfold(y, kernel_size=2, stride=2)
            y = F.fold(patches * 2, output_size=y.shape[-2:], kernel_size=2, stride=2)
            tokens = y.flatten(2)
            pooled = torch.adaptive_avg_pool1d(tokens, 1).unsqueeze(-1) * torch.ones(1).to(x.device)
            return y + pooled.repeat(1, 1, y.shape[2], y.shape[3])

    torch.manual_seed(0)
    model = Hf().eval()
    x = torch.randn(2, 3, 6, 4)
    _saves_and_loads_under_both_captures(model, x, tmp_path)


def test_loaded_tensors_are_aligned(tmp_path):
    """safetensors packs tensors back to back; PyTorch's GEMMs take other paths on unaligned
    weights (last bits unlike the plan that was saved), so loading aligns every tensor."""
    compiled, x = compiled_model("vit_mlp", dense_backend="torch")
    compiled.save(tmp_path / "p.basisrt")
    loaded = load(tmp_path / "p.basisrt")
    assert all(t.data_ptr() % 64 == 0 for t in loaded.module.state_dict().values())
    assert torch.equal(loaded(x), compiled(x))
