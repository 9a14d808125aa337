"""Basis-scaling transfer: what trains, what stays frozen, the iterative schedule, determinism."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from basisrt import data as datasets
from basisrt import decompose
from basisrt.transfer import (
    evaluate,
    find_head,
    iterative_prune,
    replace_head,
    seed_everything,
    setup_basis_transfer,
    train,
)


def source():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def target():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (96,), generator=g)
    x = torch.randn(96, 1, 8, 8, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def prepared():
    model = source()
    head = replace_head(model, 3, seed=0)
    model = decompose(model, exclude=(head,)).model
    setup_basis_transfer(model)
    return model


def test_only_alpha_norm_and_head_train():
    model = prepared()
    assert find_head(model) == "9" and model[9].out_features == 3 and type(model[9]) is nn.Linear
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.alpha", "4.alpha", "1.weight", "1.bias", "5.weight", "5.bias", "9.weight", "9.bias"}
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    alpha = model[0].alpha.clone()
    train(model, datasets.loader(target(), 32, shuffle=True), 1, progress=False)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.equal(model[0].alpha, alpha)


def test_iterative_schedule_prunes_and_runs():
    model = prepared()
    data = target()
    loader = datasets.loader(data, 32, shuffle=True)
    report = iterative_prune(model, loader, [0.99, 0.9], epochs=1, eval_loader=datasets.loader(data, 64),
                             progress=False)
    assert len(report.steps) == 3  # two prune steps and the final training
    first, second = report.steps[0].ranks, report.steps[1].ranks
    assert set(first) == {"0", "4"}
    assert all(second[n][0] == first[n][1] and second[n][1] <= second[n][0] for n in first)
    assert model[4].rank == second["4"][1] and model[4].alpha.requires_grad
    assert model(data.tensors[0][:5]).shape == (5, 3)
    assert 0 <= report.steps[-1].accuracy <= 1 and "step 0" in str(report)


def test_seeded_runs_are_identical():
    def run():
        seed_everything(3)
        model = prepared()
        iterative_prune(model, datasets.loader(target(), 32, shuffle=True, seed=3), [0.95], epochs=1, progress=False)
        return model

    a, b = run(), run()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert evaluate(a, datasets.loader(target(), 64)) == evaluate(b, datasets.loader(target(), 64))
