"""Reference architectures: build, run, trace exactly, and have the structure they advertise."""
import pytest
import torch
import torch.fx
from torch import nn

from basisrt import models

NAMES = ["vgg16", "resnet18", "mobilenetv2", "densenet", "vit_mlp"]


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return models.create(name, **kwargs).eval()


def test_registry_names():
    assert sorted(models.REFERENCE_MODELS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_trace(name, x):
    model = build(name)
    graph = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        out, traced = model(x), graph(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all() and out.std() > 1e-4 and not torch.equal(out[0], out[1])
    torch.testing.assert_close(traced, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_seed(name):
    a, b = build(name), build(name)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_and_plain_layers(name):
    model = build(name, num_classes=7)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(type(m) in (nn.Conv2d, nn.Linear) for m in layers)
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))  # no sharing


def test_create_unknown_name():
    with pytest.raises(ValueError, match="vgg16"):
        models.create("nope")


def test_mobilenetv2_has_depthwise_convs():
    convs = [m for m in build("mobilenetv2").modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups == m.in_channels > 1 and m.out_channels == m.in_channels]
    assert len(depthwise) == 17


def test_densenet_concatenates():
    graph = torch.fx.symbolic_trace(build("densenet"))
    cats = [n for n in graph.graph.nodes if n.op == "call_function" and n.target is torch.cat]
    assert len(cats) == 6 + 12 + 24 + 16


def test_vit_attention_is_linear_layers(x):
    model = build("vit_mlp")
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1 + 4 * 4 + 1


def test_vgg16_and_resnet18_shapes():
    vgg = build("vgg16")
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    resnet = build("resnet18")
    assert sum(isinstance(m, nn.Conv2d) for m in resnet.modules()) == 1 + 16 + 3  # stem, blocks, shortcuts
