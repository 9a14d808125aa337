"""Full-rank decomposition reproduces every reference model (DESIGN §1 exactness)."""
import pytest
import torch

import basisrt
from basisrt.cli import main as cli_main


@pytest.mark.parametrize("name", sorted(basisrt.models.REFERENCE_MODELS))
@pytest.mark.parametrize("batch", [1, 3])
def test_full_rank_model_exact(name, batch):
    torch.manual_seed(0)
    model = basisrt.models.create(name).eval()
    x = torch.randn(batch, 3, 32, 32)
    report = basisrt.decompose(model)
    assert report.decomposed, "every reference model has decomposable layers"
    with torch.no_grad():
        ref, out = model(x), report.model(x)
    err = ((out - ref).norm() / ref.norm()).item()
    assert err < 1e-5, f"{name}: relative error {err:.2e}"
    if name == "mobilenetv2":
        assert any("depthwise" in why for why in report.skipped.values())


def test_cli_demo_runs(capsys):
    assert cli_main(["demo", "--model", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "decomposition error" in out and "BasisConv2d" in out
