"""Capture and normalisation: models torch.fx cannot trace (TorchDynamo instead), the torch.compile
backend, and layers written the ways third-party libraries write them (functional layers on
parameters, timm's BatchNormAct2d with its shape assert, explicit low-rank pairs)."""
from __future__ import annotations

import importlib.metadata
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import basisrt


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def _bn_with_stats(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


class SplitShuffleBlock(nn.Module):
    """pytorch-cifar's ShuffleNetV2 block: sizes through int() and tuple unpacking (fx cannot trace)."""

    def __init__(self, c: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.ratio = ratio
        half = int(c * ratio)
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = _bn_with_stats(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = _bn_with_stats(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = int(x.size(1) * self.ratio)
        x1, x2 = x[:, :c, :, :], x[:, c:, :, :]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = torch.cat([x1, out], 1)
        n, c, h, w = out.size()
        return out.view(n, 2, c // 2, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class UntraceableNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = _bn_with_stats(16)
        self.block = SplitShuffleBlock(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        if x.size(2) > 4:  # an `if` on a size: fx cannot trace it
            x = F.max_pool2d(x, 2)
        x = self.block(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1))


def _pruned(model: nn.Module, ratio: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    pm = basisrt.decompose(model.eval()).model.eval()
    basisrt.prune_basis(pm, "ratio", ratio)
    return pm


@pytest.fixture(scope="module")
def untraceable() -> tuple[nn.Module, basisrt.CompiledModel]:
    torch.manual_seed(0)
    pm = _pruned(UntraceableNet())
    with pytest.warns(UserWarning, match="torch.fx cannot trace UntraceableNet"):
        compiled = basisrt.compile(pm, torch.randn(2, 3, 12, 12), dense_backend="basisrt")
    return pm, compiled


def test_untraceable_model_is_captured_by_dynamo_native_for_every_batch(untraceable) -> None:
    pm, compiled = untraceable
    assert compiled.native is not None, compiled.plan.not_native
    for batch in (1, 2, 3, 7):
        x = torch.randn(batch, 3, 12, 12)
        with torch.no_grad():
            ref = pm(x)
        y = compiled(x)
        assert y.shape == ref.shape
        assert _rel_err(y, ref) < 1e-5, batch


def test_dynamo_captured_plan_saves_and_loads(untraceable, tmp_path) -> None:
    pm, compiled = untraceable
    x = torch.randn(3, 3, 12, 12)
    compiled.save(str(tmp_path / "p.basisrt"))
    loaded = basisrt.load(str(tmp_path / "p.basisrt"))
    assert loaded.native is not None
    assert torch.equal(loaded(x), compiled(x))


def test_capture_fx_says_what_to_try() -> None:
    with pytest.raises(RuntimeError, match="capture='dynamo'"):
        basisrt.compile(UntraceableNet().eval(), torch.randn(2, 3, 12, 12), capture="fx")
    with pytest.raises(ValueError, match="capture must be one of"):
        basisrt.compile(UntraceableNet().eval(), torch.randn(2, 3, 12, 12), capture="jit")


def test_dynamo_capture_refuses_sizes_it_cannot_generalise() -> None:
    from torch import fx

    from basisrt.compiler.capture import _generalise_batch

    def graph(batch: int, other: int) -> fx.GraphModule:
        g = fx.Graph()
        x = g.placeholder("x")
        g.output(g.call_method("view", (x, batch, other)))
        return fx.GraphModule(nn.Module(), g)
    merged = _generalise_batch(graph(2, 30), graph(3, 30), (2, 3))  # 2 -> 3 is the batch: x.size(0)
    assert merged(torch.zeros(5, 30)).shape == (5, 30)
    with pytest.raises(ValueError, match="depends on the input size other than through the batch"):
        _generalise_batch(graph(2, 30), graph(3, 31), (2, 3))


class Breaky(nn.Module):
    """A data-dependent branch: Dynamo splits the model there."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _bn_with_stats(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), _bn_with_stats(16), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.mean().item() > -1e9:
            y = y * 2.0
        return self.b(y)


def test_torch_compile_backend_plans_each_graph() -> None:
    import basisrt.compiler.torch_compile_backend as plan_module
    torch.manual_seed(0)
    pm = _pruned(Breaky())
    planned: list[basisrt.CompiledModel] = []
    original = plan_module.basisrt_compile

    def spy(*args, **kwargs):
        planned.append(original(*args, **kwargs))
        return planned[-1]
    torch._dynamo.reset()
    plan_module.basisrt_compile = spy
    try:
        compiled = torch.compile(pm, backend=basisrt.dynamo_backend)
        for batch, size in ((2, 10), (5, 10), (3, 12), (2, 14)):  # new sizes: Dynamo's dynamic shapes
            x = torch.randn(batch, 3, size, size)
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)  # no graph left to run as captured
                y = compiled(x)
            with torch.no_grad():
                assert _rel_err(y, pm(x)) < 1e-5
    finally:
        plan_module.basisrt_compile = original
        torch._dynamo.reset()
    assert len(planned) >= 2  # the graph before the branch and the one after it
    assert any(p.native is not None for p in planned)  # the one after it: convs, pool, linear


def test_backend_name_registered_by_the_installed_package() -> None:
    names = [ep.name for ep in importlib.metadata.entry_points(group="torch_dynamo_backends")]
    if "basisrt" not in names:
        if os.environ.get("CI"):
            pytest.fail("the installed basisrt does not declare its torch_dynamo_backends entry point")
        pytest.skip("basisrt installed without its entry points (reinstall with pip install -e .)")
    torch._dynamo.reset()
    try:
        pm = _pruned(Breaky())
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            assert _rel_err(torch.compile(pm, backend="basisrt")(x), pm(x)) < 1e-5
    finally:
        torch._dynamo.reset()


# --------------------------------------------------------------------------- normalisation

class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: the BatchNorm as F.batch_norm on its own parameters, after an assert
    on the input's rank, then an activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        torch._assert((x.shape[1] == self.num_features) & (x.size(-1) > 0), "channels")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return F.silu(x)


class StdConv2d(nn.Conv2d):
    """timm's weight-standardised conv: the weight computed from the parameter on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = StdConv2d(3, 12, 3, padding=1)
        self.bn = BatchNormAct2d(12)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
        self.down = nn.Conv2d(12, 4, 3, padding=1, bias=False)  # an explicit low-rank pair:
        self.up = nn.Conv2d(4, 16, 1)  # 3x3 to rank 4, then 1x1 out
        self.fc_w = nn.Parameter(torch.randn(7, 16) * 0.2)
        self.layer_scale = nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        x = self.up(self.down(x)) * self.layer_scale.view(1, -1, 1, 1)
        return F.linear(x.mean((2, 3)), self.fc_w)


def test_functional_layers_become_native_steps() -> None:
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        ref = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # traced by fx, no Dynamo fallback
        compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    assert _rel_err(compiled(x), ref) < 1e-5
    assert not any(s.name.startswith(("mul", "batch_norm", "conv2d", "linear")) for s in compiled.plan.steps)
    # the explicit pair is planned as one basis pair (fused or folded), not as two convs
    pairs = [s for s in compiled.plan.steps if s.strategy in ("fused", "dense-fold")]
    assert pairs, compiled.plan


def test_static_assert_that_fails_is_kept() -> None:
    """Only asserts that hold are dropped: a model asserting the wrong rank still fails as eager."""

    class Wrong(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            torch._assert(y.ndim == 3, "rank 3 expected")
            return y
    with pytest.raises(Exception, match="rank 3 expected"):
        basisrt.compile(Wrong().eval(), torch.randn(1, 3, 4, 4))


class NormFreeBlock(nn.Module):
    """timm's NFNet block habits: explicit symmetric F.pad / ZeroPad2d before a conv with no padding,
    F.dropout(training=self.training), an in-place gain on a tensor read again afterwards
    (`out.mul_(self.skipinit_gain)`, then `out * self.alpha + shortcut`), scalar parameters."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d(1)
        self.conv1 = nn.Conv2d(c, c, 3)
        self.conv2 = nn.Conv2d(c, c, 3)
        self.skipinit_gain = nn.Parameter(torch.tensor(0.7))
        self.alpha = nn.Parameter(torch.tensor([1.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(self.pad(x)))
        out = self.conv2(F.pad(out, (1, 1, 1, 1)))
        out = F.dropout(out, 0.2, training=self.training)
        out.mul_(self.skipinit_gain)
        return F.relu(out.mul(self.alpha) + x.mul(1.5), inplace=True)


def test_inplace_gain_padding_and_dropout_lowered_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), NormFreeBlock(), NormFreeBlock()).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = model(x)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    assert _rel_err(compiled(x), ref) < 1e-5
    x2 = torch.randn(3, 3, 9, 9)
    with torch.no_grad():
        assert _rel_err(compiled(x2), model(x2)) < 1e-5


def test_inplace_writes_that_cannot_be_made_pure_are_refused() -> None:
    class IntoParameter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.count = nn.Parameter(torch.zeros(1), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.count.add_(1)
            return self.conv(x) * self.count

    class IntoView(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y[:, :2].mul_(2.0)  # writes into y through a view; y is read afterwards
            return y + 1

    with pytest.raises(ValueError, match="writes in place into the parameter or buffer 'count'"):
        basisrt.compile(IntoParameter().eval(), torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="writes in place into a view of"):
        basisrt.compile(IntoView().eval(), torch.randn(1, 3, 4, 4))


class EcaBlock(nn.Module):
    """timm's EcaModule: a Conv1d over the pooled channels, a sigmoid gate, expand_as, multiply."""

    def __init__(self, k: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2 * dilation, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)
        y = self.conv(y)
        y = y.sigmoid().view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


def test_efficient_channel_attention_runs_native(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), EcaBlock(5), nn.Conv2d(16, 9, 3),
                          EcaBlock(3, dilation=2), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(2, 3, 10, 10)
    compiled = basisrt.compile(model, x, dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    for batch in (1, 3):
        xb = torch.randn(batch, 3, 10, 10)
        with torch.no_grad():
            assert _rel_err(compiled(xb), model(xb)) < 1e-5
    compiled.save(str(tmp_path / "eca.basisrt"))
    assert torch.equal(basisrt.load(str(tmp_path / "eca.basisrt"))(x), compiled(x))


def test_dynamo_inlined_transposed_convs_save_and_load(tmp_path) -> None:
    """Dynamo inlines nn.ConvTranspose2d into torch.conv_transpose2d on the module's weight (LinkNet's
    decoder in segmentation_models_pytorch): the plan makes it a module again, runs it natively
    (fusion.transposed_as_conv), and saves and loads."""
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = nn.Sequential(nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(F.relu(self.conv(x)))

    torch.manual_seed(0)
    model, x = Up().eval(), torch.randn(2, 3, 8, 8)
    compiled = basisrt.compile(model, x, capture="dynamo", dense_backend="basisrt")
    assert compiled.native is not None, compiled.plan.not_native
    with torch.no_grad():
        assert _rel_err(compiled(x), model(x)) < 1e-5
    compiled.save(str(tmp_path / "up.basisrt"))
    assert torch.equal(basisrt.load(str(tmp_path / "up.basisrt"))(x), compiled(x))


def test_a_plan_making_tensors_saves_and_loads(tmp_path) -> None:
    """segmentation_models_pytorch's Mix Transformer encoder returns torch.empty(B, 0, H, W) as a
    placeholder feature; torch.zeros / ones made from the input's size likewise."""
    class Makes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, _, h, w = x.shape
            placeholder = torch.empty([b, 0, h, w], dtype=x.dtype, device=x.device)
            return torch.cat([self.conv(x), placeholder], 1) + torch.zeros(b, 4, h, w) + torch.ones(1, 4, 1, 1)

    torch.manual_seed(0)
    model, x = Makes().eval(), torch.randn(2, 3, 6, 6)
    compiled = basisrt.compile(model, x)
    compiled.save(str(tmp_path / "m.basisrt"))
    loaded = basisrt.load(str(tmp_path / "m.basisrt"))
    for batch in (x, torch.randn(3, 3, 6, 6)):
        with torch.no_grad():
            assert _rel_err(loaded(batch), model(batch)) < 1e-5
    from test_plan_tamper import _tampered

    def huge(plan, tensors):
        node = next(n for n in plan["graph"] if n["op"] == "call_function" and n["target"].endswith(".zeros"))
        node["args"] = {"tuple": [100_000, 100_000, 1000]}
    bad = _tampered(tmp_path / "m.basisrt", tmp_path / "huge.basisrt", huge)
    with pytest.raises(ValueError, match="more than"):  # refused on meta tensors: nothing allocated
        basisrt.load(str(bad))
