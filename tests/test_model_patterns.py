"""Blocks of the CNN families users bring, written the way their libraries write them (torchvision,
timm, pytorch-cifar), and the whole real-model architectures of basisrt.zoo: each must compile to
a fully native program, match eager, and save and load. torchvision itself is not a dependency;
basisrt.zoo copies its building blocks (stochastic_depth under its module name, as
`torch.fx.wrap` leaves it in the graph)."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from nets import matches_eager_and_round_trips
from torch import nn

import basisrt
from basisrt import zoo
from basisrt.zoo import SqueezeExcitation, StochasticDepth, channel_shuffle


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def conv_bn_act(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish)
                                     else act()] if act else []))


class TimmSE(nn.Module):
    """timm's SqueezeExcite: a mean with keepdim, and the gate as a function."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.conv_reduce, self.conv_expand = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = F.relu(self.conv_reduce(x_se), inplace=True)
        return x * self.conv_expand(x_se).sigmoid()


class MBConv(nn.Module):
    """torchvision's EfficientNet MBConv: SiLU, SE, stochastic depth before the residual add."""

    def __init__(self, c, expand=4):
        super().__init__()
        e = c * expand
        self.block = nn.Sequential(conv_bn_act(c, e, 1, act=nn.SiLU), conv_bn_act(e, e, 3, groups=e, act=nn.SiLU),
                                   SqueezeExcitation(e, c // 4, activation=nn.SiLU), conv_bn_act(e, c, 1, act=None))
        self.stochastic_depth = StochasticDepth(0.2, "row")

    def forward(self, input):
        result = self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


def hard_sigmoid(x, inplace: bool = False):  # timm's older spelling, written out
    return F.relu6(x + 3.) / 6.


class MobileNetV3Block(nn.Module):
    """torchvision's InvertedResidual (Hardswish, SE with Hardsigmoid); `written_out` spells the
    hard activations as timm's older code did."""

    def __init__(self, c, written_out=False):
        super().__init__()
        self.written_out = written_out
        act = None if written_out else nn.Hardswish
        self.expand, self.dw = conv_bn_act(c, 3 * c, 1, act=act), conv_bn_act(3 * c, 3 * c, 5, groups=3 * c, act=act)
        self.se = SqueezeExcitation(3 * c, c, scale_activation=nn.Hardsigmoid)
        self.project = conv_bn_act(3 * c, c, 1, act=None)

    def forward(self, x):
        y = self.expand(x)
        if self.written_out:
            y = y * hard_sigmoid(y)
        y = self.dw(y)
        if self.written_out:
            y = y * F.relu6(y + 3.) / 6.
        return self.project(self.se(y)) + x


class ShuffleBlock(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual: chunk, branch, cat, shuffle."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, b = stride, cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn_act(cin, cin, 3, stride, groups=cin, act=None),
                                         conv_bn_act(cin, b, 1))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(conv_bn_act(cin if stride > 1 else b, b, 1),
                                     conv_bn_act(b, b, 3, stride, groups=b, act=None), conv_bn_act(b, b, 1))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class DenseLayer(nn.Module):
    """torchvision's _DenseLayer: every layer concatenates all earlier features."""

    def __init__(self, cin, growth):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(2 * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, inputs):
        concated_features = torch.cat(inputs, 1)
        bottleneck_output = self.conv1(self.relu1(self.norm1(concated_features)))
        return self.conv2(self.relu2(self.norm2(bottleneck_output)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, c, growth, layers=3):
        super().__init__({f"denselayer{i + 1}": DenseLayer(c + i * growth, growth) for i in range(layers)})

    def forward(self, init_features):
        features = [init_features]
        for name, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class Fire(nn.Module):
    """torchvision's SqueezeNet Fire module, after a ceil-mode max pool (as SqueezeNet and GoogLeNet)."""

    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.squeeze, self.squeeze_activation = nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True)
        self.expand1x1, self.expand3x3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)
        self.expand1x1_activation, self.expand3x3_activation = nn.ReLU(inplace=True), nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(self.pool(x)))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class Activations(nn.Module):
    """Activations as epilogues, and elementwise ops no conv absorbs: two activated branches summed,
    a map scaled and shifted by numbers, SiLU written out."""

    def __init__(self, c):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)
        self.leaky, self.gelu = nn.LeakyReLU(0.1), nn.GELU()
        self.c = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = self.leaky(self.a(x)) + self.gelu(self.b(x))
        y = F.gelu(self.c(y), approximate="tanh") * 0.5 - 1.0
        return y * torch.sigmoid(y) + F.leaky_relu(x, 0.2)


class Permute(nn.Module):  # torchvision.ops.misc.Permute
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class TorchvisionLayerNorm2d(nn.LayerNorm):  # torchvision.models.convnext.LayerNorm2d
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """torchvision's ConvNeXt block: LayerNorm and the MLP's Linears on the permuted NHWC map, a
    (C, 1, 1) layer scale, stochastic depth; here after a LayerNorm2d + stride-2 conv downsample."""

    def __init__(self, c):
        super().__init__()
        self.downsample = nn.Sequential(TorchvisionLayerNorm2d(c, eps=1e-6), nn.Conv2d(c, 2 * c, 2, 2))
        c *= 2
        self.block = nn.Sequential(nn.Conv2d(c, c, 7, padding=3, groups=c), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c),
                                   Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.stochastic_depth = StochasticDepth(0.1, "row")

    def forward(self, input):
        input = self.downsample(input)
        result = self.layer_scale * self.block(input)
        return self.stochastic_depth(result) + input


class TimmConvNeXtBlock(nn.Module):
    """timm's ConvNeXtBlock (conv_mlp=False): the permutes as methods, a (C,) gamma multiplied on
    the NHWC map, and timm's LayerNorm2d (F.layer_norm between permutes) after it."""

    def __init__(self, c):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.act, self.fc2 = nn.Linear(c, 3 * c), nn.GELU(approximate="tanh"), nn.Linear(3 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.norm2d_weight, self.norm2d_bias = nn.Parameter(torch.rand(c) + 0.5), nn.Parameter(torch.randn(c))
        self.normalized_shape = (c,)

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x)
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = self.fc2(self.act(self.fc1(x)))
        x = x.mul(self.gamma)
        x = x.permute(0, 3, 1, 2)
        x = x + shortcut
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.norm2d_weight, self.norm2d_bias, 1e-6)
        return x.permute(0, 3, 1, 2)


class Net(nn.Module):
    """stem → blocks → global pool → linear, as classification models are."""

    def __init__(self, c, blocks, cout=None, stem_act=nn.ReLU):
        super().__init__()
        self.stem = conv_bn_act(3, c, 3, act=stem_act)
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cout or c, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS = {
    "se_torchvision": lambda: Net(16, [conv_bn_act(16, 32, 3, 2), SqueezeExcitation(32, 8)], 32),
    "se_timm": lambda: Net(16, [conv_bn_act(16, 32, 3, 2), TimmSE(32, 8)], 32),
    "efficientnet_mbconv": lambda: Net(16, [MBConv(16), MBConv(16)], stem_act=nn.SiLU),
    "mobilenetv3": lambda: Net(16, [MobileNetV3Block(16)], stem_act=nn.Hardswish),
    "mobilenetv3_written_out": lambda: Net(16, [MobileNetV3Block(16, written_out=True)]),
    "shufflenetv2": lambda: Net(24, [ShuffleBlock(24, 48, 2), ShuffleBlock(48, 48, 1), ShuffleBlock(48, 48, 1)], 48),
    "densenet": lambda: Net(16, [DenseBlock(16, 8)], 40),
    "squeezenet_ceil_mode": lambda: Net(16, [Fire(16, 8, 16), Fire(32, 8, 16)], 32),
    "activations": lambda: Net(16, [Activations(16)]),
    "convnext_torchvision": lambda: Net(8, [CNBlock(8)], 16, stem_act=None),
    "convnext_timm": lambda: Net(16, [TimmConvNeXtBlock(16)], stem_act=None),
}


def calibrated(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("decomposed", [False, True], ids=["plain", "pruned"])
@pytest.mark.parametrize("name", MODELS)
def test_block_runs_native_matches_eager_and_round_trips(name, decomposed, tmp_path):
    torch.manual_seed(0)
    model = calibrated(MODELS[name]())
    if decomposed:
        model = basisrt.decompose(model).model.eval()
        basisrt.prune_basis(model, "ratio", 0.5)
    x = torch.randn(3, 3, 15, 17)  # odd sizes: ceil-mode windows past the edge, odd shuffles
    with torch.no_grad():
        ref = model(x)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan
    for batch in (x, x[:1], torch.randn(4, 3, 15, 17)):
        with torch.no_grad():
            assert rel_err(compiled(batch), model(batch)) < 1e-5
    assert rel_err(compiled.module(x), ref) < 1e-5  # the same steps through fx
    compiled.save(tmp_path / "p.basisrt")
    assert torch.equal(basisrt.load(tmp_path / "p.basisrt")(x), compiled(x))


def test_explain_names_each_op_that_keeps_the_plan_from_being_native():
    class Blocked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.LocalResponseNorm(2)

        def forward(self, x):
            y = self.norm(self.conv(x))
            return torch.tanh(y) + F.interpolate(y, scale_factor=1.0, mode="bicubic")

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    report = basisrt.explain(Blocked().eval(), x, dense_backend="basisrt")
    assert not report.native
    assert [node for node, _ in report.not_native] == ["norm", "tanh", "interpolate"]
    assert "LocalResponseNorm" in report.not_native[0][1] and "tanh" in report.not_native[1][1]
    assert "not native: 3 ops" in str(report) and "norm" in str(report.plan)
    native = basisrt.explain(MODELS["se_torchvision"]().eval(), torch.randn(2, 3, 8, 8), dense_backend="basisrt")
    assert native.native and native.not_native == [] and str(native).startswith("native")


@pytest.mark.parametrize("name", zoo.MODELS)
def test_zoo_model_pruned_runs_native_and_round_trips(name, tmp_path):
    """Every conv but the stem at rank 10 % (as `basisrt bench` prunes), on small inputs."""
    torch.manual_seed(0)
    shape = (3, 32, 32) if name == "se_resnet18" else (3, 64, 64)
    model = zoo.with_bn_statistics(zoo.MODELS[name](num_classes=10), shape)
    stem = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    model = basisrt.decompose(model, exclude=[stem]).model.eval()
    basisrt.prune_basis(model, "ratio", 0.1)
    x = torch.randn(2, *shape)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5
        assert rel_err(compiled(x[:1]), model(x[:1])) < 1e-5
    compiled.save(tmp_path / "p.basisrt")
    assert torch.equal(basisrt.load(tmp_path / "p.basisrt")(x), compiled(x))


def test_module_names_a_plan_file_cannot_hold_are_renamed(tmp_path):
    """torchvision's RegNet names its blocks "block1-0": the steps made from them save and load."""
    torch.manual_seed(0)
    model = calibrated(nn.Sequential(OrderedDict([("block1-0", conv_bn_act(3, 8)), ("pool", nn.AdaptiveAvgPool2d(1)),
                                                  ("flat", nn.Flatten()), ("fc", nn.Linear(8, 4))])))
    x = torch.randn(2, 3, 9, 9)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None
    compiled.save(tmp_path / "p.basisrt")
    assert torch.equal(basisrt.load(tmp_path / "p.basisrt")(x), compiled(x))


@pytest.mark.parametrize("name", MODELS)
def test_block_empty_batch_and_nan_as_eager(name):
    """An empty batch gives an empty output; a NaN pixel reaches exactly the outputs it reaches
    eagerly (through SE gates, shuffles, gathers and the new activations)."""
    torch.manual_seed(0)
    model = calibrated(MODELS[name]())
    x = torch.randn(2, 3, 15, 17)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled(x[:0]).shape == (0, 10)
    x[0, 0, 3, 3] = float("nan")
    with torch.no_grad():
        ref = model(x)
    out = compiled(x)
    assert torch.isnan(out).any() and torch.equal(torch.isnan(out), torch.isnan(ref))
    assert rel_err(out[1], ref[1]) < 1e-5


@pytest.mark.parametrize("capture", ["fx", "dynamo"])
def test_sum_of_a_stack_becomes_adds_fused_into_the_convs(capture):
    """segmentation_models_pytorch's FPN merges its levels with torch.stack(maps).sum(dim=0)."""
    class Merge(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 5, padding=2)

        def forward(self, x):
            return torch.stack([self.a(x), self.b(x), self.c(x)]).sum(dim=0) + torch.sum(torch.stack((x, x)), 0)[:, :1]

    torch.manual_seed(0)
    model, x = Merge().eval(), torch.randn(2, 3, 8, 8)
    compiled = basisrt.compile(model, x, dense_backend="basisrt", capture=capture)
    assert compiled.native is not None, compiled.plan.not_native
    assert len(compiled.plan.steps) <= 6  # three convs (two with the adds fused), x + x, the slice, one add
    for batch in (1, 3):
        xb = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            assert rel_err(compiled(xb), model(xb)) < 1e-5


class FeatureHead(nn.Module):
    """Classifier heads on (N, C) features: RepViT's BatchNorm1d + Linear twice, averaged, and
    InceptionNeXt's MLP head with a LayerNorm between its linears."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Sequential(nn.BatchNorm1d(16), nn.Linear(16, 5))
        self.dist = nn.Sequential(nn.BatchNorm1d(16), nn.Linear(16, 5))
        self.mlp = nn.Sequential(nn.Linear(16, 12), nn.GELU(), nn.LayerNorm(12), nn.Linear(12, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu(self.conv(x)).mean((2, 3))
        return (self.head(f) + self.dist(f)) / 2 - self.mlp(f) * 0.5


def test_batchnorm1d_layernorm_and_arithmetic_on_features_run_native(tmp_path) -> None:
    torch.manual_seed(0)
    model = FeatureHead()
    for bn in (model.head[0], model.dist[0]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    matches_eager_and_round_trips(compiled, model, x, tmp_path)


def test_a_plan_holding_a_batchnorm1d_saves(tmp_path) -> None:
    """A BatchNorm1d over (N, C, L) stays PyTorch's (not features): the plan still saves and loads."""
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm1d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y.flatten(2)).view_as(y)
    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.randn(2, 3, 5, 5)
    compiled = basisrt.compile(model, x)
    compiled.save(str(tmp_path / "bn1d.basisrt"))
    assert torch.equal(basisrt.load(str(tmp_path / "bn1d.basisrt"))(x), compiled(x))


class GrnBlock(nn.Module):
    """ConvNeXt-V2's block as timm writes its small models (conv MLP): a channels-last LayerNorm, a
    global response norm between the 1×1 convs (an L2 norm over the pixels, divided by its mean over
    the channels, torch.addcmul), and an LPPool2d and a channel mean beside it."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, c, 1)
        self.gamma, self.beta = nn.Parameter(torch.rand(4 * c)), nn.Parameter(torch.rand(4 * c))
        self.lp = nn.LPPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = F.gelu(self.fc1(y))
        g = y.norm(p=2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        y = y + torch.addcmul(self.beta.view(1, -1, 1, 1), self.gamma.view(1, -1, 1, 1), y * n)
        y = x + self.fc2(y)
        return self.lp(y) * torch.sigmoid(y.mean(1, keepdim=True)[:, :, ::2, ::2])


def test_global_response_norm_runs_native(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), GrnBlock()).eval()
    x = torch.randn(2, 3, 10, 12)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    assert sum(s.strategy == "pool" for s in compiled.plan.steps) == 2
    matches_eager_and_round_trips(compiled, model, x, tmp_path)


def test_a_depthwise_conv_with_a_channel_multiplier_runs_as_gather_and_depthwise(tmp_path) -> None:
    """FastViT's downsampling: a 7×7 stride-2 conv of one input channel per group and two outputs."""
    torch.manual_seed(0)
    class Down(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.large, self.small = nn.Conv2d(8, 16, 7, 2, 3, groups=8), nn.Conv2d(8, 16, 3, 2, 1, groups=8)
            self.bn = nn.BatchNorm2d(16)
            self.expand = nn.Conv2d(16, 48, 3, 1, 1, groups=16, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.stem(x))
            return self.expand(F.relu(self.bn(self.large(y) + self.small(y))))

    model = Down().eval()
    x = torch.randn(2, 3, 13, 11)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    assert [s.strategy for s in compiled.plan.steps].count("gather") == 2  # the two branches share one
    matches_eager_and_round_trips(compiled, model, x, tmp_path)


def _native_under_both_captures(model: nn.Module, x: torch.Tensor, tmp_path) -> None:
    for capture in ("fx", "dynamo"):
        compiled = basisrt.compile(model, x, dense_backend="basisrt", capture=capture)
        assert compiled.native is not None, (capture, compiled.plan.not_native)
        matches_eager_and_round_trips(compiled, model, x, tmp_path)


def test_functional_same_padding_conv_and_feature_layer_norm_run_native(tmp_path) -> None:
    """Hugging Face's EfficientNet and ConvNeXt under TorchDynamo: F.conv2d(..., padding="same") and
    F.layer_norm on the pooled (N, C) features, both on constant weights."""
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
            self.dw = nn.Parameter(torch.randn(8, 1, 5, 5) * 0.3)
            self.gamma, self.beta = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(F.conv2d(x, self.w, None, 1, "same"))
            y = F.conv2d(y, self.dw, None, 1, "same", 1, 8)
            return self.fc(F.layer_norm(y.mean((2, 3)), (8,), self.gamma, self.beta, 1e-6))

    torch.manual_seed(0)
    model = Functional().eval()
    x = torch.randn(2, 3, 9, 10)
    _native_under_both_captures(model, x, tmp_path)


def test_linalg_vector_norm_over_pixels_is_an_l2_pool(tmp_path) -> None:
    """Hugging Face's ConvNeXt-V2 spells its GRN's norm torch.linalg.vector_norm (TorchDynamo records
    torch._C._linalg.linalg_vector_norm)."""
    class Norm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y * torch.linalg.vector_norm(y, 2, (2, 3), True)

    torch.manual_seed(0)
    model = Norm().eval()
    x = torch.randn(2, 3, 7, 8)
    _native_under_both_captures(model, x, tmp_path)


class ChannelsLastGrnBlock(nn.Module):
    """Hugging Face's ConvNeXt-V2 block: permute to NHWC, LayerNorm, Linear, GELU, then the global
    response norm on the NHWC map (an L2 norm over dims (1, 2), its mean over the last dim), Linear,
    permute back."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.weight, self.bias = nn.Parameter(torch.rand(1, 1, 1, 4 * c)), nn.Parameter(torch.rand(1, 1, 1, 4 * c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1))))
        g = torch.linalg.vector_norm(y, ord=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        y = self.weight * (y * n) + self.bias + y
        return x + self.fc2(y).permute(0, 3, 1, 2)


def test_a_global_response_norm_inside_a_channels_last_region_runs_native(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ChannelsLastGrnBlock()).eval()
    x = torch.randn(2, 3, 10, 12)
    _native_under_both_captures(model, x, tmp_path)
