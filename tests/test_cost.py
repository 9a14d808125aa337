"""Cost accounting: MACs cross-checked with torch's FlopCounterMode (which reports 2×MACs)."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import basisrt
from basisrt import decompose, profile
from basisrt.compiler.cost_model import grouped_lowrank_pays, lowrank_pays
from basisrt.cost import basis_macs, dense_macs


def flops_per_module(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    fc = FlopCounterMode(display=False)
    with torch.no_grad(), fc:
        model(x)
    prefix = type(model).__name__
    return {k[len(prefix) + 1:] if k != prefix else "": sum(v.values()) for k, v in fc.get_flop_counts().items()}


def check_against_counter(model: nn.Module, x: torch.Tensor):
    model.eval()
    report = profile(model, x)
    counted = flops_per_module(model, x)
    layers = [l for l in report.layers if l.macs]
    assert layers
    for l in layers:
        assert counted[l.name] == 2 * l.macs, l.name
    assert report.params == sum(p.numel() for p in model.parameters())
    return report


def small_net():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, (1, 3), stride=2, groups=4), nn.ReLU(),
        nn.Conv2d(32, 32, 3, groups=32, padding=1),  # depthwise, stays dense
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_dense_and_basis_macs_match_flop_counter():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 9)
    dense = check_against_counter(small_net(), x)
    basis = check_against_counter(decompose(small_net()).model, x)
    # full-rank basis layers cost more than the dense ones (that is why pruning matters)
    assert basis.macs > dense.macs
    by_name = {l.name: l for l in basis.layers}
    first = by_name["0"]
    assert first.kind == "BasisConv2d" and first.rank == "16/16"
    p = 2 * 11 * 9
    assert first.macs == basis_macs(p, 27, 16, 16) == p * 16 * (27 + 16)
    assert first.intermediate_bytes == 2 * p * 16 * 4


def test_pruned_basis_macs_drop_and_match_counter():
    torch.manual_seed(1)
    model = decompose(nn.Sequential(nn.Conv2d(8, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3))).model
    model[2].select_(torch.arange(5))
    x = torch.randn(1, 8, 12, 12)
    report = check_against_counter(model, x)
    l = {l.name: l for l in report.layers}["2"]
    assert l.rank == "5/64" and l.macs == 8 * 8 * 5 * (32 * 9 + 64)
    assert l.params == 5 * 32 * 9 + 64 * 5 + 5 + 64  # basis, coeff, alpha, bias


def test_linear_on_tokens_and_shared_module():
    lin = nn.Linear(16, 24)
    model = nn.Sequential(lin, nn.GELU(), nn.Linear(24, 16), lin)
    x = torch.randn(2, 7, 16)
    report = check_against_counter(model, x)
    shared = {l.name: l for l in report.layers}["0"]
    assert shared.macs == 2 * dense_macs(14, 16, 24)  # called twice, params once
    assert report.params == 16 * 24 + 24 + 24 * 16 + 16


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "mobilenetv2", "densenet", "vit_mlp"])
def test_reference_models_against_counter(name):
    torch.manual_seed(0)
    model = basisrt.models.create(name)
    x = torch.randn(1, 3, 32, 32)
    dense = profile(model.eval(), x)
    basis = profile(decompose(model).model, x)
    counted = flops_per_module(model, x)
    for l in dense.layers:
        if l.macs:
            assert counted[l.name] == 2 * l.macs, l.name
    if name != "vit_mlp":  # its attention matmuls are functional, not layers
        assert counted[""] == 2 * dense.macs
    assert basis.params > 0 and basis.macs >= dense.macs * 0.99


def test_profile_restores_training_mode_and_bn_stats():
    model = small_net().train()
    before = model[1].running_mean.clone()
    profile(model, torch.randn(2, 3, 8, 8))
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, before)


def test_lowrank_pays_threshold():
    k, c_out = 9 * 64, 64  # pays when r < K·C_out/(K+C_out) = 57.6
    assert lowrank_pays(k, c_out, 57) and not lowrank_pays(k, c_out, 58)


def test_grouped_lowrank_pays_counts_vector_lanes():
    """Grouped 3x3 convs (8 groups): the rule the session-18 timings of our kernels gave (fused
    pair against dense fold at rank 10 % and 50 %, 2 threads)."""
    # 8 channels per group: a rank-1 pair is 1/8 of the MACs, but pads its rank to 16 lanes where
    # the dense fold runs 8-lane vectors (measured 0.34 ms fused, 0.25 ms dense)
    assert not grouped_lowrank_pays(8, 9, 64, 1, 8) and not grouped_lowrank_pays(8, 9, 64, 4, 8)
    # 16 per group: the channel-dot path, no rank padding (0.43 against 0.56 ms)
    assert grouped_lowrank_pays(16, 9, 128, 2, 8)
    # 24 per group: the rank padded to 16 lanes still beats 24 outputs padded to 32 (0.87 against 1.2 ms)
    assert grouped_lowrank_pays(24, 9, 192, 2, 8)
    # 4 per group: a full-rank pair (rank 4) never pays
    assert not grouped_lowrank_pays(4, 9, 32, 4, 8)


def test_table_lists_layers_and_total():
    text = profile(small_net(), torch.randn(1, 3, 8, 8)).table()
    assert text.splitlines()[-1].startswith("total") and "Conv2d" in text


def test_profile_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        profile("model", torch.randn(1))
