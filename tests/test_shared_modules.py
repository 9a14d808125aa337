"""A module called more than once in forward (weight sharing) is one plan step per call, each with
the fusions of its own call: every fusion rule, with a shared module, against eager."""
import pytest
import torch
from torch import nn

import basisrt


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


class ConvTwice(nn.Module):
    """The same conv twice, a ReLU between (and none after): the activation belongs to one call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x)))


class ConvBnTwice(nn.Module):
    """Shared conv and BatchNorm (folded per call), ReLU6 after the first call only."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = nn.functional.relu6(self.bn(self.conv(x)))
        return self.bn(self.conv(y))


class ResidualOnce(nn.Module):
    """A shared conv whose output is added to a residual in one call, not in the other."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv(x) + x)
        return self.conv(y)


class SharedPair(nn.Module):
    """A plain 3x3 conv absorbs the 1x1 conv after it as a basis pair; the 1x1 is used again alone."""

    def __init__(self):
        super().__init__()
        self.spatial, self.mix = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.relu(self.mix(self.spatial(x)))
        return self.mix(y)


class SharedPool(nn.Module):
    """One max pool after a conv (fusable into its epilogue) and after a BatchNorm + ReLU."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.pool = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.MaxPool2d(2)

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        return self.pool(torch.relu(self.bn(y)))


class SharedAffine(nn.Module):
    """A BatchNorm that no conv absorbs (pre-activation), called twice, ReLU after one call."""

    def __init__(self):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(torch.relu(self.bn(x)))
        return self.conv(self.bn(y))


class SharedActivationAndLinear(nn.Module):
    """One nn.ReLU instance everywhere (the common style) and a Linear applied twice."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.a, self.b = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 16)

    def forward(self, x):
        y = self.pool(self.act(self.b(self.act(self.a(x))))).flatten(1)
        return self.fc(self.act(self.fc(y)))


MODELS = [ConvTwice, ConvBnTwice, ResidualOnce, SharedPair, SharedPool, SharedAffine, SharedActivationAndLinear]


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics far from the identity, so a lost fold shows
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return model.eval()


@pytest.mark.parametrize("decomposed", [False, True], ids=["plain", "decomposed"])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_shared_module_matches_eager(cls, decomposed, tmp_path):
    torch.manual_seed(0)
    model = _randomise_bn(cls())
    if decomposed:
        model = basisrt.decompose(model).model.eval()
        basisrt.prune_basis(model, "ratio", 0.5)
    x = torch.randn(3, 8, 8, 8)
    with torch.no_grad():
        ref = model(x)
    for kw in ({}, {"dense_backend": "basisrt"}, {"prefer_lowrank": False, "dense_backend": "torch"}):
        compiled = basisrt.compile(model, x, **kw)
        assert rel_err(compiled(x), ref) < 1e-5, (kw, compiled.plan)
        if compiled.native is not None:  # the step-by-step path agrees too
            assert rel_err(compiled.module(x), ref) < 1e-5
    compiled.save(tmp_path / "plan.basisrt")
    assert rel_err(basisrt.load(tmp_path / "plan.basisrt")(x), ref) < 1e-5


def test_every_call_of_a_shared_conv_is_its_own_step():
    torch.manual_seed(0)
    compiled = basisrt.compile(ConvTwice().eval(), torch.randn(1, 8, 8, 8), dense_backend="basisrt")
    steps = [s for s in compiled.plan.steps if s.strategy.startswith("dense")]
    assert len(steps) == 2 and len({s.name for s in steps}) == 2
    assert ["act=relu" in s.detail for s in steps] == [True, False]


def test_autotune_reads_layer_inputs_without_changing_them():
    """A module called twice (torchvision's Bottleneck calls one ReLU three times) gets each call's
    own input while the autotuner records the first (a pre-hook's return value would replace it)."""
    from basisrt.compiler.autotune import layer_inputs

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.ReLU()

        def forward(self, x):
            return self.relu(self.b(self.relu(self.a(x))))

    torch.manual_seed(0)
    model, x = Shared().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    inputs = layer_inputs(model, x)
    assert inputs["relu"].shape == (2, 8, 8, 8) and inputs["b"].shape == (2, 8, 8, 8)
    compiled = basisrt.compile(model, x, autotune=True)
    assert torch.allclose(compiled(x), ref, atol=1e-5)
