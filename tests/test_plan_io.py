"""Saving and loading compiled plans: same outputs, no pickle, no original model class."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from safetensors import safe_open
from safetensors.torch import save_file

import basisrt
from basisrt import compile, decompose, load, prune_basis


def compiled_model(name: str):
    torch.manual_seed(0)
    model = decompose(basisrt.models.create(name).eval()).model
    prune_basis(model, "ratio", 0.25)
    x = torch.randn(2, 3, 32, 32)
    return compile(model, x), x


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
    assert plan["format"] == "basisrt-plan/1" and plan["input"] == {"shape": [3, 32, 32], "dtype": "float32"}
    assert any(m.get("class") == "basisrt.compiler.cpu_kernels.FusedConv2d" for m in plan["modules"].values())


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
    with pytest.raises(ValueError, match="outside what a plan may use"):
        load(bad)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no compiled plan"):
        load(tmp_path / "missing.basisrt")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(ValueError, match="not a basisrt plan"):
        load(plain)
