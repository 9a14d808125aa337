"""Channel pruning (torch-pruning) and double pruning on residual and concatenating models."""
import pytest
import torch
from torch import nn

from basisrt import BasisConv2d, decompose, models, profile
from basisrt.channel_pruning import channel_prune, double_prune


def data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))]


def resnet():
    torch.manual_seed(0)
    return models.ResNet((1, 1)).eval()  # residual adds, identity and 1×1 projection shortcuts


def densenet():
    torch.manual_seed(0)
    return models.densenet(block_config=(2, 2)).eval()  # torch.cat of dense layers, transition


@pytest.mark.parametrize("make", [resnet, densenet], ids=["resnet", "densenet"])
def test_channel_prune_keeps_graph_consistent(make):
    model = make()
    loader = data()
    x = loader[0][0]
    before = profile(model, x[:1])
    report = channel_prune(model, x[:1], 0.5, loader=loader)
    assert model(x).shape == (8, 10)
    assert report.channels["fc"] == (report.channels["fc"][0], 10)  # the head keeps its outputs
    shrunk = [n for n, (a, b) in report.channels.items() if b < a]
    assert shrunk and all(b >= 1 for a, b in report.channels.values())
    assert report.params[1] == sum(p.numel() for p in model.parameters()) < before.params
    assert profile(model, x[:1]).macs < before.macs
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("make", [resnet, densenet], ids=["resnet", "densenet"])
def test_double_prune_residual_and_concat(make):
    model = make()
    loader = data()
    x = loader[0][0]
    dense = profile(model, x[:1])
    r = double_prune(model, x[:1], channel_amount=0.5, basis_method="importance", basis_amount=0.9,
                     loader=loader, multiple_of=8)
    assert r.model is not model and isinstance(model.fc, nn.Linear)  # the input model is untouched
    assert r.model(x).shape == (8, 10)
    assert type(r.model.fc) is nn.Linear  # the head stays dense
    assert any(isinstance(m, BasisConv2d) for m in r.model.modules())
    assert r.basis.ranks and all(b <= a and (b % 8 == 0 or b == a) for a, b in r.basis.ranks.values())
    after = profile(r.model, x[:1])
    assert sum(b for _, b in r.basis.ranks.values()) < sum(a for a, _ in r.basis.ranks.values())
    assert r.channels.params[1] < dense.params and after.params < dense.params and after.macs < dense.macs


def test_nothing_pruned_means_same_outputs():
    model = resnet()
    x = data()[0][0]
    r = double_prune(model, x[:1], channel_amount=0.0, basis_method="energy", basis_amount=1.0)
    assert all(a == b for a, b in r.channels.channels.values())
    assert all(a == b for a, b in r.basis.ranks.values())
    with torch.no_grad():
        torch.testing.assert_close(r.model(x), model(x), rtol=1e-4, atol=1e-4)


def test_magnitude_on_vgg_style_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(32, 10))
    x = torch.randn(2, 3, 8, 8)
    report = channel_prune(model, x, 0.5, importance="magnitude", round_to=4)
    # the grouped conv loses outputs in whole groups' worth and stays grouped
    assert model(x).shape == (2, 10) and report.channels["3"] == (32, 16) and model[3].groups == 4
    with pytest.raises(ValueError, match="dense model"):
        channel_prune(decompose(model).model, x, 0.5, importance="magnitude")
    with pytest.raises(ValueError, match="needs a loader"):
        channel_prune(model, x, 0.5)
    with pytest.raises(ValueError, match="amount"):
        channel_prune(model, x, 1.0, importance="magnitude")
