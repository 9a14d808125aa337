"""Taylor importance equals an explicit autograd computation; energy importance is σ²."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from basisrt import decompose, prune_basis
from basisrt.importance import TaylorAccumulator, energy_importance, taylor_importance


def small_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, groups=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    model = decompose(net).model.eval()
    with torch.no_grad():  # α away from 1 so that α·∂L/∂α is not just the gradient
        for m in model.modules():
            if hasattr(m, "alpha"):
                m.alpha.uniform_(0.5, 1.5)
    return model


def batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 2, 6, 6, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("rule", ["per_batch", "squared_sum"])
def test_taylor_matches_explicit_autograd(rule):
    model = small_model()
    data = batches()
    scores = taylor_importance(model, data, F.cross_entropy, rule=rule)
    names = ["0", "3", "6"]
    assert sorted(scores) == names
    alphas = [model.get_submodule(n).alpha for n in names]
    terms = [[] for _ in alphas]
    for x, y in data:  # t_bj = α_j ∂L_b/∂α_j, by hand
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), alphas)
        for t, a, g in zip(terms, alphas, grads):
            t.append((a * g).double())
    for n, t in zip(names, terms):
        t = torch.stack(t)
        want = t.square().mean(0) if rule == "per_batch" else t.sum(0).square()
        assert scores[n].shape == model.get_submodule(n).alpha.shape
        torch.testing.assert_close(scores[n], want.float(), rtol=1e-5, atol=1e-12)
        assert (scores[n] > 0).any()


def test_per_batch_rule_does_not_depend_on_the_number_of_batches():
    """The same batch seen k times gives the same scores by the per-batch rule; the squared sum
    grows by k², which is why it cannot be the default (the shares pruning keeps would move with
    the data set's size once batches differ)."""
    model = small_model()
    one = batches(1)
    for rule, factor in (("per_batch", 1.0), ("squared_sum", 9.0)):
        a, b = taylor_importance(model, one, rule=rule), taylor_importance(model, one * 3, rule=rule)
        for n in a:
            torch.testing.assert_close(b[n], a[n] * factor, rtol=1e-5, atol=1e-12)


def test_taylor_leaves_model_untouched():
    model = small_model()
    bn = model[1]
    mean, flags = bn.running_mean.clone(), [p.requires_grad for p in model.parameters()]
    model.train()
    taylor_importance(model, batches(1), max_batches=1)
    assert model.training and torch.equal(bn.running_mean, mean)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_max_batches_and_rule():
    model = small_model()
    data = batches(3)
    assert all(torch.equal(a, b) for a, b in zip(taylor_importance(model, data, max_batches=1).values(),
                                                  taylor_importance(model, data[:1]).values()))
    for rule, want in (("squared_sum", [16.0, 4.0]), ("per_batch", [20.0, 1.0])):  # (2-6)², (-1-1)²; (4+36)/2, (1+1)/2
        acc = TaylorAccumulator(rule)
        acc.add("l", torch.tensor([2.0, 1.0]), torch.tensor([1.0, -1.0]))
        acc.add("l", torch.tensor([2.0, 1.0]), torch.tensor([-3.0, -1.0]))
        acc.batches = 2
        torch.testing.assert_close(acc.result()["l"], torch.tensor(want))
    with pytest.raises(ValueError, match="rule must be one of"):
        TaylorAccumulator("sum")


def test_importance_drives_prune_basis():
    model = small_model()
    scores = taylor_importance(model, batches())
    prune_basis(model, "importance", 0.9, scores=scores)
    assert model(torch.randn(2, 2, 6, 6)).shape == (2, 5)


def test_energy_and_errors():
    model = small_model()
    e = energy_importance(model)
    torch.testing.assert_close(e["0"], model[0].sigma.square().float())
    with pytest.raises(ValueError, match="decompose first"):
        taylor_importance(nn.Linear(2, 2), [(torch.randn(1, 2), torch.tensor([0]))])
    with pytest.raises(ValueError, match="no batches"):
        taylor_importance(model, [])
