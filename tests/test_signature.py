"""A plan is called and answers as its model: the input by the model's keyword name, the output in
the model's container class (Hugging Face's ModelOutput is an OrderedDict subclass with fields,
torchvision's segmentation models return an OrderedDict, some models a namedtuple)."""
import json
import re
from collections import OrderedDict, namedtuple

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import basisrt
from basisrt.compiler.signature import output_class, resolve_output_class

Pair = namedtuple("Pair", "logits features")


class Outputs(OrderedDict):
    """Like transformers.utils.ModelOutput: keyword construction, attribute access."""

    def __init__(self, **kw):
        super().__init__(**kw)

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


class Net(nn.Module):
    def __init__(self, returns: str):
        super().__init__()
        self.returns = returns
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, pixel_values):
        f = torch.relu(self.conv(pixel_values))
        logits = self.fc(f.mean((2, 3)))
        if self.returns == "pair":
            return Pair(logits, f)
        if self.returns == "ordered":
            return OrderedDict(logits=logits, features=f)
        return Outputs(logits=logits, features=f)


def _compiled(returns: str):
    torch.manual_seed(0)
    model = basisrt.decompose(Net(returns).eval()).model
    x = torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        ref = model(x)
    return model, basisrt.compile(model, x), x, ref


def _values(out):
    return list(out.values()) if isinstance(out, dict) else list(out)


@pytest.mark.parametrize("returns", ["pair", "ordered", "model_output"])
def test_the_plan_returns_the_models_container(returns):
    _, compiled, x, ref = _compiled(returns)
    assert compiled.native is not None
    out = compiled(x)
    assert type(out) is type(ref)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(_values(out), _values(ref)))
    key = 0 if returns == "pair" else "logits"
    assert torch.allclose(out[key], ref[key], rtol=1e-5, atol=1e-5)
    if returns != "ordered":
        assert torch.allclose(out.logits, ref.logits, rtol=1e-5, atol=1e-5)


def test_a_saved_plan_keeps_a_trusted_container_and_warns_about_others(tmp_path):
    _, ordered, x, _ = _compiled("ordered")
    ordered.save(tmp_path / "o.basisrt")
    loaded = basisrt.load(tmp_path / "o.basisrt")
    assert type(loaded(x)) is OrderedDict and torch.equal(loaded(x)["logits"], ordered(x)["logits"])
    # a class of this test module: loading will not import it, and says so
    _, local, x, _ = _compiled("model_output")
    local.save(tmp_path / "m.basisrt")
    with pytest.warns(UserWarning, match=r"returned test_signature\.Outputs; loading imports output classes only"):
        loaded = basisrt.load(tmp_path / "m.basisrt")
    out = loaded(x)
    assert type(out) is dict and torch.equal(out["features"], local(x)["features"])


def test_plain_outputs_record_no_class():
    assert output_class(torch.ones(1)) is None and output_class({"a": 1}) is None and output_class((1,)) is None
    assert output_class(OrderedDict()) is OrderedDict and output_class(Pair(1, 2)) is Pair

    class Tagged(dict):  # a constructor wrap_output cannot call: the plan returns a plain dict
        def __init__(self, tag, **kw):
            super().__init__(**kw)
    assert output_class(Tagged("t", a=1)) is None


def test_the_input_passes_by_the_models_name(tmp_path):
    _, compiled, x, ref = _compiled("ordered")
    assert torch.equal(compiled(pixel_values=x)["logits"], compiled(x)["logits"])
    compiled.save(tmp_path / "p.basisrt")
    loaded = basisrt.load(tmp_path / "p.basisrt")
    assert torch.equal(loaded(pixel_values=x)["logits"], compiled(x)["logits"])
    for args, kwargs in [((), {}), ((x, x), {}), ((), {"x": x}), ((x,), {"pixel_values": x}),
                         ((), {"pixel_values": x, "labels": x})]:
        with pytest.raises(TypeError, match=re.escape("takes one input tensor, positionally (or as pixel_values=...)")):
            loaded(*args, **kwargs)


def _tampered(path, out, **changes):
    with safe_open(str(path), framework="pt") as f:
        plan, tensors = json.loads(f.metadata()["basisrt_plan"]), {k: f.get_tensor(k) for k in f.keys()}
    plan.update(changes)
    save_file(tensors, str(out), metadata={"basisrt_plan": json.dumps(plan)})
    return out


def test_tampered_signatures_are_refused_or_ignored(tmp_path):
    _, compiled, x, _ = _compiled("pair")
    compiled.save(tmp_path / "p.basisrt")
    bad_name = _tampered(tmp_path / "p.basisrt", tmp_path / "n.basisrt",
                         input={"shape": [3, 9, 7], "dtype": "float32", "name": "import os"})
    with pytest.raises(ValueError, match="optionally 'name': an identifier"):
        basisrt.load(bad_name)
    bad_class = _tampered(tmp_path / "p.basisrt", tmp_path / "c.basisrt", output_class="os.system(1)")
    with pytest.raises(ValueError, match="output_class must be a dotted import path"):
        basisrt.load(bad_class)
    for path in ("os.system", "subprocess.Popen", "collections.abc.Mapping", "collections.nothing_here"):
        with pytest.warns(UserWarning, match="plain dict or tuple"):
            assert resolve_output_class(path) is None
    foreign = _tampered(tmp_path / "p.basisrt", tmp_path / "f.basisrt", output_class="subprocess.Popen")
    with pytest.warns(UserWarning, match="loading imports output classes only from"):
        out = basisrt.load(foreign)(x)
    assert type(out) is tuple and torch.equal(out[0], compiled(x).logits)
