"""Full-rank exactness of basis layers, gradient flow, and decompose()'s choices and errors."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import basisrt
from basisrt import (
    BasisConv2d,
    BasisLinear,
    decompose,
    decompose_layer,
    prune_basis,
    scaling_parameters,
)
from basisrt.decomposition import why_not


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def conv_cases(n: int = 60, seed: int = 0):
    """Random single-conv configurations covering the variety DESIGN §4 asks for."""
    rng = random.Random(seed)
    kernels = [(1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1)]
    cases = []
    for i in range(n):
        groups = rng.choice([1, 1, 2, 4])
        k = kernels[i % len(kernels)]
        stride = rng.choice([1, 2])
        dilation = rng.choice([1, 2]) if max(k) > 1 else 1
        padding = rng.choice([0, 1, 2, "same", "valid"] if stride == 1 else [0, 1, 2])
        c_in = groups * rng.randint(1, 6)
        c_out = groups * rng.randint(1, 7)
        need = [dilation * (kk - 1) + 1 for kk in k]
        h, w = (rng.randint(need[0], need[0] + 9), rng.randint(need[1], need[1] + 9))
        cases.append(dict(c_in=c_in, c_out=c_out, k=k, stride=stride, padding=padding, dilation=dilation,
                          groups=groups, bias=rng.random() < 0.5, n=rng.choice([1, 3]), hw=(h, w)))
    return cases


def _conv_case_id(c: dict) -> str:
    return "c{c_in}-{c_out}k{k[0]}x{k[1]}s{stride}p{padding}d{dilation}g{groups}".format(**c)


@pytest.mark.parametrize("case", conv_cases(), ids=_conv_case_id)
def test_conv_full_rank_exact(case):
    torch.manual_seed(0)
    conv = nn.Conv2d(case["c_in"], case["c_out"], case["k"], case["stride"], case["padding"], case["dilation"],
                     case["groups"], bias=case["bias"])
    x = torch.randn(case["n"], case["c_in"], *case["hw"])
    if why_not(conv) is not None:  # depthwise / rank 1: must refuse, with a reason
        with pytest.raises(ValueError, match="cannot decompose"):
            decompose_layer(conv)
        return
    layer = decompose_layer(conv)
    assert isinstance(layer, BasisConv2d)
    with torch.no_grad():
        assert rel_err(layer(x), conv(x)) < 1e-5
        conv64 = conv.double()  # the SVD itself is exact to float64 precision
        assert rel_err(decompose_layer(conv64)(x.double()), conv64(x.double())) < 1e-12


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes(mode):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode=mode)
    x = torch.randn(2, 4, 7, 9)
    with torch.no_grad():
        assert rel_err(decompose_layer(conv)(x), conv(x)) < 1e-5


def test_basis_is_orthonormal_and_shapes():
    conv = nn.Conv2d(8, 12, (3, 5), groups=2)
    layer = decompose_layer(conv)
    r = layer.rank
    assert r == min(6, 4 * 15) and layer.groups == 2
    b = layer.basis.weight.reshape(2, r, -1).double()
    eye = torch.eye(r, dtype=torch.float64).expand(2, r, r)
    assert torch.allclose(b @ b.transpose(1, 2), eye, atol=1e-6)
    assert layer.coeff.shape == (12, r) and layer.alpha.shape == (2 * r,)
    assert torch.all(layer.alpha == 1)
    assert torch.allclose(layer.dense_weight(), conv.weight, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 7), (16, 3), (33, 33)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank_exact(shape, bias):
    torch.manual_seed(2)
    lin = nn.Linear(*shape, bias=bias)
    layer = decompose_layer(lin)
    assert isinstance(layer, BasisLinear) and layer.rank == min(shape)
    x = torch.randn(4, 3, shape[0])  # extra leading dims are fine
    with torch.no_grad():
        assert rel_err(layer(x), lin(x)) < 1e-5
        assert torch.allclose(layer.to_linear()(x), lin(x), atol=1e-5)


def test_gradients_reach_only_alpha():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    model = decompose(model).model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.alpha", "3.alpha"}
    model(torch.randn(2, 3, 8, 8)).square().sum().backward()
    for name, p in model.named_parameters():
        if name.endswith("alpha"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert [p.shape for p in scaling_parameters(model)] == [(8,), (5,)]


def test_alpha_scales_basis_vectors():
    """Zeroing alpha_j equals removing basis vector j: the paper's pruning semantics."""
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 5, 5)
    layer, pruned = decompose_layer(conv), decompose_layer(conv)
    with torch.no_grad():
        layer.alpha[2] = 0
        pruned.select_(torch.tensor([0, 1, 3, 4, 5]))
        assert pruned.rank == 5 and pruned.basis.weight.shape[0] == 5 and pruned.basis.out_channels == 5
        assert rel_err(pruned(x), layer(x)) < 1e-5


def test_select_keeps_groups_uniform():
    layer = decompose_layer(nn.Conv2d(4, 8, 3, groups=2))  # rank 4 per group
    with pytest.raises(ValueError, match="same number"):
        layer.select_(torch.tensor([0, 1, 4]))
    layer.select_(torch.tensor([0, 1, 4, 7]))
    assert layer.rank == 2 and layer.coeff.shape == (8, 2) and layer.basis.weight.shape[0] == 4


def test_decompose_report_and_skips():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, groups=8, padding=1),  # depthwise
        nn.Conv2d(8, 1, 1), nn.ConvTranspose2d(1, 4, 2), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    report = decompose(model)
    assert report.model is not model and isinstance(model[0], nn.Conv2d)  # not in place by default
    assert set(report.decomposed) == {"0", "5"}
    assert "depthwise" in report.skipped["1"]
    assert "rank 1" in report.skipped["2"]
    assert "ConvTranspose2d" in report.skipped["3"]
    assert "skipped" in str(report)
    x = torch.randn(2, 3, 15, 15)
    with torch.no_grad():
        assert rel_err(report.model(x), model(x)) < 1e-5


def test_decompose_include_exclude_inplace():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    report = decompose(model, exclude=["0"], inplace=True)
    assert report.model is model and isinstance(model[0], nn.Conv2d) and isinstance(model[2], BasisConv2d)
    assert report.skipped == {"0": "excluded by the caller"}
    with pytest.raises(ValueError, match="does not have"):
        decompose(model, exclude=["conv_typo"])
    with pytest.raises(ValueError, match="cannot decompose 2"):
        decompose(model, include=["2"])  # already a basis layer
    again = decompose(model, include=["0"])
    assert list(again.decomposed) == ["0"]


def test_shared_module_gets_one_replacement():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    out = decompose(model).model
    assert out[0] is out[2] and isinstance(out[0], BasisConv2d)


@pytest.mark.parametrize("bad, err, match", [
    (nn.ConvTranspose2d(3, 4, 3), ValueError, "unsupported layer type ConvTranspose2d"),
    (nn.Conv1d(3, 4, 3), ValueError, "unsupported layer type Conv1d"),
    (nn.Conv2d(4, 4, 3, groups=4), ValueError, "depthwise"),
    (nn.LazyConv2d(4, 3), ValueError, "lazy"),
    ("not a model", TypeError, "nn.Module"),
])
def test_clear_errors(bad, err, match):
    with pytest.raises(err, match=match):
        decompose(bad)


def test_integer_weights_refused():
    conv = nn.Conv2d(3, 4, 3)
    conv.weight = nn.Parameter(torch.ones(4, 3, 3, 3, dtype=torch.int32), requires_grad=False)
    with pytest.raises(ValueError, match="not floating point"):
        decompose_layer(conv)


def test_float64_model_stays_float64():
    conv = nn.Conv2d(3, 5, 3).double()
    layer = decompose_layer(conv)
    assert layer.basis.weight.dtype == layer.coeff.dtype == layer.alpha.dtype == torch.float64


def test_models_that_read_their_layers_attributes_still_run():
    """Hugging Face's MobileNets pad by `conv.stride`, `conv.kernel_size` and `conv.dilation` in
    their forward; other models read `layer.weight` (its dtype, or to call F.linear with it). A
    basis layer answers as the layer it replaced, and the decomposed, pruned model compiles native."""
    class TfPadding(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, dilation=1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            c = self.conv
            pad_h = max((c.kernel_size[0] - 1) * c.dilation[0] + 1 - c.stride[0], 0)
            pad_w = max((c.kernel_size[1] - 1) * c.dilation[1] + 1 - c.stride[1], 0)
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
            y = c(x.to(self.fc.weight.dtype)).mean((2, 3))
            return F.linear(y, self.fc.weight, self.fc.bias) + self.fc(y)

    torch.manual_seed(0)
    model = TfPadding().eval()
    x = torch.randn(2, 3, 9, 8)
    decomposed = decompose(model).model
    conv, fc = decomposed.conv, decomposed.fc
    assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.padding_mode) == \
        ((3, 3), (2, 2), (0, 0), (1, 1), "zeros")
    assert torch.allclose(conv.weight, model.conv.weight, atol=1e-6) and fc.weight.shape == (5, 8)
    with torch.no_grad():
        assert rel_err(decomposed(x), model(x)) < 1e-5
    prune_basis(decomposed, "ratio", 0.5)
    compiled = basisrt.compile(decomposed, x)
    with torch.no_grad():
        assert rel_err(compiled(x), decomposed(x)) < 1e-5
