"""Third-party model code spells the same operation many ways; each spelling must compile into the
native program and match eager. Models here are written the way other libraries write them."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import basisrt


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32),
                                      nn.ReLU(inplace=True))


class GlobalHead(Features):
    """A global pool to 1×1, then a flatten spelled `spelling`, then a linear head."""

    def __init__(self, spelling):
        super().__init__()
        self.spelling, self.fc = spelling, nn.Linear(32, 10)
        self.gap, self.flatten = nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()

    def forward(self, x):
        x = self.features(x)
        if self.spelling == "view_size":  # pytorch-cifar: F.avg_pool2d(out, 4); out.view(out.size(0), -1)
            x = F.avg_pool2d(x, 4).view(x.size(0), -1)
        elif self.spelling == "reshape_shape":
            x = F.adaptive_avg_pool2d(x, 1)
            x = x.reshape(x.shape[0], -1)
        elif self.spelling == "mean":  # timm / EfficientNet style
            x = x.mean((2, 3))
        elif self.spelling == "mean_keepdim_flatten":
            x = torch.flatten(x.mean([-2, -1], keepdim=True), 1)
        elif self.spelling == "view_minus_one":
            x = F.adaptive_max_pool2d(x, (1, 1)).view(-1, 32)
        elif self.spelling == "nn_flatten":
            x = self.flatten(self.gap(x))
        return self.fc(x)


class MapHead(Features):
    """torchvision's VGG / AlexNet head: an adaptive pool to a map larger than 1×1, flattened in
    NCHW order into a Linear (which the plan runs as a conv over the NHWC map)."""

    def __init__(self, spelling, size=(2, 2)):
        super().__init__()
        self.spelling = spelling
        self.avgpool = nn.AdaptiveAvgPool2d(size)
        self.classifier = nn.Sequential(nn.Linear(32 * size[0] * size[1], 64), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(64, 10))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        if self.spelling == "flatten":
            x = torch.flatten(x, 1)
        elif self.spelling == "view_size":
            x = x.view(x.size(0), -1)
        else:
            x = x.view(-1, self.classifier[0].in_features)
        return self.classifier(x)


class AlexNetHead(MapHead):
    """AlexNet's AdaptiveAvgPool2d((6, 6)) on a map smaller than 6×6 (any input under 224 px):
    windows that overlap and repeat pixels, then the flatten into a Linear."""

    def __init__(self, spelling):
        super().__init__(spelling, (6, 6))


CASES = [GlobalHead(s) for s in ("view_size", "reshape_shape", "mean", "mean_keepdim_flatten", "view_minus_one",
                                 "nn_flatten")] + [MapHead(s) for s in ("flatten", "view_size", "view_minus_one")] + \
    [AlexNetHead("flatten")]


@pytest.mark.parametrize("decomposed", [False, True], ids=["plain", "pruned"])
@pytest.mark.parametrize("model", CASES, ids=lambda m: f"{type(m).__name__}-{m.spelling}")
def test_spelling_runs_native_and_matches_eager(model, decomposed, tmp_path):
    torch.manual_seed(0)
    model = type(model)(model.spelling).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    if decomposed:
        model = basisrt.decompose(model).model.eval()
        basisrt.prune_basis(model, "ratio", 0.5)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")  # our kernels only (auto may pick oneDNN)
    assert compiled.native is not None, compiled.plan
    for batch in (x, x[:1], torch.randn(5, 3, 16, 16)):
        with torch.no_grad():
            assert rel_err(compiled(batch), model(batch)) < 1e-5
    assert rel_err(compiled.module(x), ref) < 1e-5  # the same steps through fx
    mixed = basisrt.compile(model, x, prefer_lowrank=False, dense_backend="torch")  # oneDNN steps, view on NHWC
    assert rel_err(mixed(x), ref) < 1e-5
    compiled.save(tmp_path / "p.basisrt")
    assert rel_err(basisrt.load(tmp_path / "p.basisrt")(x), ref) < 1e-5


def test_flatten_of_a_map_is_not_lowered_without_a_linear_after_it():
    class Out(Features):
        def forward(self, x):
            return torch.flatten(self.features(x), 1)

    model, x = Out().eval(), torch.randn(2, 3, 16, 16)
    compiled = basisrt.compile(model, x)
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-6  # NCHW order, through PyTorch


def test_inplace_activations_fuse():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))

        def forward(self, x):
            x = F.relu(self.a(x), inplace=True)
            x = torch.relu_(self.b(x))
            return F.relu6(self.c(x), True)

    torch.manual_seed(0)
    model, x = InPlace().eval(), torch.randn(2, 8, 6, 6) * 3
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None and [s.strategy for s in compiled.plan.steps] == ["dense"] * 3
    assert ["act=relu," in s.detail or "act=relu6," in s.detail for s in compiled.plan.steps] == [True] * 3
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5


class _ViewAfterEltwise(nn.Module):
    """A tanh (no basisrt kernel: the plan runs step by step), then an add of two pools and a
    `.view(N, -1)`: the view reads an eltwise step's channels_last output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv(x))
        x = F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)
        return self.fc(x.view(x.size(0), -1))


def test_view_of_any_step_output_runs_step_by_step() -> None:
    torch.manual_seed(0)
    model = _ViewAfterEltwise().eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = basisrt.compile(model, x)
    assert compiled.native is None  # the case: fx runs the steps, and the view sees their layout
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
