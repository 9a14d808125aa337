"""Inputs and models compile cannot take get one clear error naming the problem; inputs eager
accepts (requiring grad, lazily negated) the compiled plan accepts too."""
import warnings

import pytest
import torch
from nets import pruned_net
from torch import nn

import basisrt


@pytest.fixture(scope="module")
def plan():
    model = pruned_net()
    return model, basisrt.compile(model, torch.randn(2, 3, 8, 8))


def test_inputs_eager_accepts_run(plan):
    model, compiled = plan
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    y = compiled(x.clone().requires_grad_())
    assert not y.requires_grad and torch.allclose(y, ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(compiled(torch._neg_view(-x)), ref, rtol=1e-4, atol=1e-5)  # negative bit set
    assert torch.allclose(compiled(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad,error,words", [
    (lambda: torch.randn(2, 3, 8, 8).to_sparse(), TypeError, "to_dense"),
    (lambda: torch.empty(2, 3, 8, 8, device="meta"), ValueError, "meta device"),
    (lambda: torch.randn(2, 3, 8, 8, dtype=torch.float64), TypeError, "float64"),
    (lambda: torch.randn(2, 3, 9, 8), ValueError, "shape (N, 3, 8, 8)"),
    (lambda: torch.randn(3, 8, 8), ValueError, "shape (N, 3, 8, 8)"),
    (lambda: [[1.0]], TypeError, "torch.Tensor"),
])
def test_bad_inputs_name_the_problem(plan, bad, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        plan[1](bad())


def test_two_input_model_is_refused_clearly():
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    with pytest.raises(ValueError, match=r"one tensor input; Two.forward takes 2 \(a, b\)"):
        basisrt.compile(Two().eval(), torch.randn(1, 3, 4, 4))


def test_optional_second_argument_is_fine():
    class Optional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x, scale: float = 2.0):
            return self.conv(x) * scale

    model, x = Optional().eval(), torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(basisrt.compile(model, x)(x), model(x), atol=1e-5)


def test_meta_model_is_refused_clearly():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="meta device.*load its weights"):
        basisrt.compile(model, torch.randn(1, 3, 6, 6))


def test_meta_or_sparse_example_input_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(ValueError, match="meta device"):
        basisrt.compile(model, torch.empty(1, 3, 6, 6, device="meta"))
    with pytest.raises(TypeError, match="to_dense"):
        basisrt.compile(model, torch.randn(1, 3, 6, 6).to_sparse())


def test_training_mode_warns_and_compiles_as_eval():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(UserWarning, match="training mode.*eval"):
        compiled = basisrt.compile(model, x)
    assert model.training  # the caller's model is left as it was
    with torch.no_grad():
        assert torch.allclose(compiled(x), model.eval()(x), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        basisrt.compile(model.eval(), x)  # no warning in eval mode


@pytest.mark.parametrize("threads", [0, -2, 100_000, 2.5])
def test_thread_count_out_of_range(threads):
    with pytest.raises(ValueError, match="num_threads"):
        basisrt.compile(nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 6, 6), num_threads=threads)


def test_example_input_the_model_cannot_take_is_one_clear_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    with pytest.raises(ValueError, match=r"Sequential fails on example_input of shape \(1, 3, 9, 9\): RuntimeError"):
        basisrt.compile(model, torch.randn(1, 3, 9, 9))
