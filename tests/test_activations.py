"""The activations the kernels apply after a tile is stored (csrc/activation.cpp: 8-float vectors
plus a scalar tail) against PyTorch's own, on random values and on the special ones."""
import pytest
import torch

from basisrt.compiler import activations
from basisrt.compiler.cpu_steps import ChannelAffineStep, EltwiseStep

NAMES = ["sigmoid", "silu", "hardsigmoid", "hardswish", "leaky_relu(0.2)", "leaky_relu(-1.5)", "gelu", "gelu_tanh"]
SPECIALS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 88.0, -88.0, 89.0, -89.0,
            100.0, -100.0, 1e30, -1e30, 6.0, -6.0]


@pytest.mark.parametrize("name", NAMES)
def test_activation_matches_pytorch_on_random_and_special_values(name):
    torch.manual_seed(0)
    c = 19  # two 8-float vectors and a scalar tail per pixel
    x = torch.randn(3, c, 5, 7) * 4
    x.view(-1)[: len(SPECIALS) * 13: 13] = torch.tensor(SPECIALS)  # spread over vector lanes and the tail
    step = ChannelAffineStep(torch.ones(c), torch.zeros(c), name, num_threads=2)
    # the reference in float64: PyTorch's float32 CPU kernels differ by ISA at the special values
    # (its AVX-512 gelu gives NaN at +inf, its AVX2 one inf)
    ref = lambda t: activations.apply(t.double(), name).float()  # noqa: E731
    torch.testing.assert_close(step(x), ref(x), rtol=2e-6, atol=1e-6, equal_nan=True)
    gate = torch.rand(3, c, 1, 1) + 0.5  # the same pass after an eltwise op
    torch.testing.assert_close(EltwiseStep("mul", name, 2)(x, gate), ref(x * gate),
                               rtol=2e-6, atol=1e-6, equal_nan=True)


def test_activation_names():
    assert activations.code("leaky_relu(0.25)") == (activations.CODES["leaky_relu"], 0.25)
    for bad in ["leaky_relu", "leaky_relu(nan)", "leaky_relu(x)", "tanh", 3, "RELU"]:
        with pytest.raises(ValueError, match="activation must be one of|bad leaky"):
            activations.code(bad)


def test_clamps_to_zero_and_six_are_relu6_and_fuse():
    """F.relu6 as TorchDynamo records it is hardtanh(x, 0, 6) (Hugging Face's MobileNets): it, the
    module and the clamps of the same bounds are the fused relu6 / relu; other bounds are not."""
    import torch.nn.functional as F
    from torch import fx, nn

    import basisrt

    spellings = {
        "relu6": [lambda y: F.hardtanh(y, 0.0, 6.0), nn.Hardtanh(0, 6), lambda y: torch.clamp(y, 0, 6),
                  lambda y: y.clamp(min=0.0, max=6.0), lambda y: torch.clip(y, min=0, max=6)],
        "relu": [lambda y: y.clamp_min(0), lambda y: torch.clamp(y, min=0), lambda y: y.clamp(0)],
        None: [lambda y: F.hardtanh(y), lambda y: torch.clamp(y, -1, 6), lambda y: y.clamp(0, 5),
               lambda y: y.clamp(max=6)],
    }

    class Net(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), act

        def forward(self, x):
            return self.act(self.conv(x))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6) * 8
    for want, acts in spellings.items():
        for act in acts:
            model = Net(act).eval()
            gm = fx.symbolic_trace(model)
            node = next(n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")
                        and n.target != "conv")
            assert activations.of_node(gm, node) == want, (want, node.format_node())
            compiled = basisrt.compile(model, x)
            with torch.no_grad():
                torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
            if want is not None:
                assert compiled.native is not None and len(compiled.plan.steps) == 1, compiled.plan
