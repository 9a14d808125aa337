"""Basis-scaling transfer: what trains, what stays frozen, the iterative schedule, determinism."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from basisrt import data as datasets
from basisrt import decompose
from basisrt.transfer import (
    evaluate,
    find_head,
    first_layer,
    iterative_prune,
    recalibrate_norms,
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


def test_recalibrate_norms_gives_the_exact_statistics_and_restores_modes():
    model = prepared()
    data = target()
    bn = model[1]
    bn.running_mean.fill_(5.0)
    model.eval()
    momentum = bn.momentum
    assert recalibrate_norms(model, datasets.loader(data, 32)) == 2
    with torch.no_grad():
        feats = model[0](data.tensors[0])
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    batch_vars = [feats[i:i + 32].var((0, 2, 3)) for i in range(0, len(feats), 32)]  # unbiased, per batch
    assert torch.allclose(bn.running_var, torch.stack(batch_vars).mean(0), atol=1e-4)
    assert not model.training and bn.momentum == momentum


def test_recalibration_keeps_dropout_off_and_skips_untracked_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout(0.5), nn.BatchNorm2d(4),
                          nn.BatchNorm2d(4, track_running_stats=False))
    x = torch.randn(64, 1, 8, 8)
    model.train()
    rng = torch.get_rng_state()
    assert recalibrate_norms(model, [(x, None)]) == 1
    assert torch.equal(torch.get_rng_state(), rng)  # no dropout mask was drawn
    with torch.no_grad():
        feats = model[0](x)
    assert torch.allclose(model[2].running_var, feats.var((0, 2, 3)), rtol=1e-4)  # without dropout's inflation
    assert model.training and all(m.training for m in model)  # modes restored


def test_iterative_prune_recalibrates_after_each_prune():
    """Right after a prune, with recalibration, the norms hold the pruned model's statistics."""
    model = prepared()
    loader = datasets.loader(target(), 32, shuffle=True)
    iterative_prune(model, loader, [0.5], epochs=0, final_epochs=0, method="ratio", progress=False)
    with torch.no_grad():
        feats = model[0](target().tensors[0])
    assert torch.allclose(model[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)


def test_first_layer_follows_execution_not_module_order():
    class Reordered(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Conv2d(8, 8, 3, padding=1)
            self.early = nn.Conv2d(1, 8, 3, padding=1)

        def forward(self, x):
            return self.late(self.early(x))

    model = Reordered()
    x = torch.randn(1, 1, 8, 8)
    assert first_layer(model, x, (nn.Conv2d,)) == "early"
    assert first_layer(decompose(model).model, x) == "early"
    with pytest.raises(ValueError, match="runs no BasisConv2d / BasisLinear"):
        first_layer(nn.Sequential(nn.ReLU()), x)


def test_workflow_keeps_the_input_layer_whole():
    from basisrt.workflow import WorkflowConfig, run_workflow
    data = target()
    cfg = WorkflowConfig(schedule=(0.5,), method="ratio", epochs=1, progress=False)
    kept = run_workflow(source(), data, data, 3, cfg).model
    assert kept[0].rank == kept[0].full_rank and kept[4].rank < kept[4].full_rank
    cfg.keep_first = False
    pruned = run_workflow(source(), data, data, 3, cfg).model
    assert pruned[0].rank < pruned[0].full_rank
    # an input layer decompose skips (depthwise) keeps nothing else from pruning
    dw = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, groups=2), nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8),
                       nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    x, y = data.tensors
    two = TensorDataset(x.repeat(1, 2, 1, 1), y)
    cfg.keep_first = True
    pruned = run_workflow(dw, two, two, 3, cfg).model
    assert type(pruned[0]) is nn.Conv2d and pruned[1].rank < pruned[1].full_rank
