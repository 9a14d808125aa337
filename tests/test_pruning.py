"""Basis pruning criteria: what each removes, shapes and counts after, and clear errors."""
import pytest
import torch
from torch import nn

from basisrt import decompose, profile, prune_basis
from basisrt.pruning import keep_count


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, groups=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 10))


def test_keep_count_rules():
    s = torch.tensor([1.0, 4.0, 3.0, 2.0])  # sorted: 4 3 2 1, cum 0.4 0.7 0.9 1.0
    assert keep_count(s, 0.7, "importance", 4) == 2
    assert keep_count(s, 0.71, "importance", 4) == 3
    assert keep_count(s, 1.0, "energy", 4) == 4
    assert keep_count(s, 0.5, "ratio", 4) == 2


def test_ratio_prunes_ranks_and_macs():
    model = decompose(net()).model
    x = torch.randn(2, 3, 8, 8)
    before = profile(model, x)
    report = prune_basis(model, "ratio", 0.25)
    assert report.ranks == {"0": (16, 4), "2": (16, 4), "5": (10, 2)}
    assert model[2].basis.weight.shape == (8, 8, 3, 3) and model[2].coeff.shape == (32, 4)
    after = profile(model, x)
    assert after.macs < before.macs / 3 and after.params < before.params / 3
    assert model(x).shape == (2, 10)


def test_energy_keeps_largest_singular_values_and_rounds():
    model = decompose(net()).model
    sigma = model[0].sigma.clone()
    prune_basis(model, "energy", 0.5, multiple_of=8)
    assert model[0].rank == 8 and torch.equal(model[0].sigma, sigma[:8])
    assert all(l.rank % 8 == 0 or l.rank == l.full_rank for l in (model[0], model[2]))


def test_importance_keeps_most_important_and_min_rank():
    model = decompose(net()).model
    scores = {n: torch.zeros(m.alpha.numel()) for n, m in model.named_modules() if hasattr(m, "alpha")}
    scores["0"][[3, 7]] = torch.tensor([5.0, 1.0])
    scores["2"][:] = torch.arange(32.0)  # group 0 holds 0..15, group 1 holds 16..31
    scores["5"][0] = 1.0
    prune_basis(model, "importance", 0.8, scores=scores, min_rank=2)
    assert model[0].rank == 2 and torch.equal(model[0].alpha, torch.ones(2))
    assert model[5].rank == 2
    assert model[2].rank == model[2].basis.weight.shape[0] // 2


def test_full_amount_changes_nothing():
    model = decompose(net()).model
    ref = model(torch.ones(1, 3, 8, 8) * 0.3)
    prune_basis(model, "energy", 1.0)
    assert torch.allclose(model(torch.ones(1, 3, 8, 8) * 0.3), ref, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="nope"), "unknown pruning method"),
    (dict(method="ratio", amount=0.0), "amount"),
    (dict(method="importance"), "needs scores"),
    (dict(method="importance", scores={"0": torch.ones(16)}), "no importance scores"),
    (dict(method="ratio", min_rank=0), "positive"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune_basis(decompose(net()).model, **kwargs)


def test_needs_basis_layers():
    with pytest.raises(ValueError, match="decompose first"):
        prune_basis(net(), "ratio", 0.5)
