"""A user mistake on the `basisrt` command line is one clear error and exit status 2, never a
traceback, and is found before any work (building, training, benchmarking) starts."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import basisrt
import basisrt.bench.runner
import basisrt.cli
import basisrt.workflow
from basisrt import argtypes
from basisrt.cli import main

REPO = Path(__file__).resolve().parents[1]


class WorkStarted(Exception):
    pass


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Whatever starts real work fails the test loudly: every check must come before it."""
    def started(*args, **kwargs):
        raise WorkStarted("the command started working")

    monkeypatch.setattr(basisrt.workflow, "run_workflow", started)
    monkeypatch.setattr(basisrt.workflow, "train_source", started)
    monkeypatch.setattr(basisrt.bench.runner, "run", started)
    monkeypatch.setattr(basisrt.cli, "profile", started)


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "regular_file"
    f.write_text("not a directory")
    return f


def fails(capsys, *argv, one_line=False) -> str:
    """Run `basisrt *argv`: exit status 2, no traceback, the error last on stderr; returns that line."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"basisrt {argv[0]}: error: "), err
    if one_line:
        assert len(lines) == 1, err
    else:
        assert lines[0].startswith(f"usage: basisrt {argv[0]}"), err
    assert len(lines[-1]) < 400
    assert elapsed < 5, f"took {elapsed:.1f} s: did work start?"
    return lines[-1]


# ------------------------------------------------------------------------------ demo

@pytest.mark.parametrize("argv, flag, says", [
    (["--batch", "-1"], "--batch", "positive integer"),
    (["--batch", "0"], "--batch", "positive integer"),
    (["--batch", "two"], "--batch", "expected an integer"),
    (["--rank", "0"], "--rank", "(0, 1]"),
    (["--rank", "1.5"], "--rank", "(0, 1]"),
    (["--rank", "nan"], "--rank", "finite"),
    (["--bench-batch", "0"], "--bench-batch", "positive integer"),
    (["--seed", "-1"], "--seed", "[0, 4294967295]"),
    (["--model", "alexnet"], "--model", "invalid choice"),
    (["--engines", "eager_dense", "turbo"], "--engines", "unknown engine 'turbo'"),
])
def test_demo_bad_argument(capsys, argv, flag, says):
    line = fails(capsys, "demo", *argv)
    assert f"argument {flag}: " in line and says in line


def test_demo_unwritable_out(capsys, a_file):
    line = fails(capsys, "demo", "--out", a_file / "out", one_line=True)
    assert "argument --out: " in line and "is not a directory" in line


def test_demo_out_is_not_checked_without_the_benchmark(a_file):
    with pytest.raises(WorkStarted):  # --no-bench never writes --out
        main(["demo", "--no-bench", "--out", str(a_file / "out")])


# ------------------------------------------------------------------------------ prune

@pytest.mark.parametrize("argv, flag, says", [
    (["--channel-amount", "1.5"], "--channel-amount", "[0, 1)"),
    (["--channel-amount", "1"], "--channel-amount", "[0, 1)"),
    (["--channel-amount", "-0.5"], "--channel-amount", "[0, 1)"),
    (["--schedule", "-0.2"], "--schedule", "(0, 1]"),
    (["--schedule", "0.9,1.2"], "--schedule", "entry '1.2'"),
    (["--schedule", "0.9,abc"], "--schedule", "expected a number"),
    (["--checkpoint", "missing.pt"], "--checkpoint", "no such file"),
    (["--lr", "0"], "--lr", "positive number"),
    (["--lr", "inf"], "--lr", "finite"),
    (["--epochs", "-1"], "--epochs", "non-negative integer"),
    (["--source-epochs", "-2"], "--source-epochs", "non-negative integer"),
    (["--batch-size", "0"], "--batch-size", "positive integer"),
    (["--min-rank", "0"], "--min-rank", "positive integer"),
    (["--multiple-of", "0"], "--multiple-of", "positive integer"),
    (["--size", "0"], "--size", "positive integer"),
    (["--limit", "1"], "--limit", ">= 2"),
    (["--seed", str(2**32)], "--seed", "[0, 4294967295]"),
    (["--model", "alexnet"], "--model", "invalid choice"),
    (["--target", "cifar"], "--target", "invalid choice"),
    (["--method", "random"], "--method", "invalid choice"),
])
def test_prune_bad_argument(capsys, argv, flag, says):
    line = fails(capsys, "prune", *argv)
    assert f"argument {flag}: " in line and says in line


def test_prune_checkpoint_is_a_directory(capsys, tmp_path):
    assert "is a directory" in fails(capsys, "prune", "--checkpoint", tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read and write anything")
def test_prune_unreadable_checkpoint_and_read_only_out(capsys, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    ckpt.chmod(0)
    assert "permission denied" in fails(capsys, "prune", "--checkpoint", ckpt)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "not writable" in fails(capsys, "prune", "--out", ro / "x.pt")
        assert "not writable" in fails(capsys, "bench", "--out", ro / "out")
    finally:
        ro.chmod(0o700)


def test_read_only_directory_as_seen_by_access(capsys, monkeypatch, tmp_path):
    """The same checks where os.access says no (as it would for a non-root user; root passes them)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "model.pt").write_bytes(b"x")
    real_access = os.access
    monkeypatch.setattr(argtypes.os, "access", lambda path, mode: Path(path) not in (ro, ro / "model.pt")
                        and real_access(path, mode))
    assert "cannot read" in fails(capsys, "prune", "--checkpoint", ro / "model.pt")
    assert f"directory {ro} is not writable" in fails(capsys, "prune", "--out", ro / "x.pt")
    assert "permission denied" in fails(capsys, "prune", "--out", ro / "model.pt")
    assert f"{ro} is not writable" in fails(capsys, "bench", "--out", ro / "new" / "out")
    assert "not writable" in fails(capsys, "bench", "--out", ro)


def test_prune_unwritable_out_is_caught_before_training(capsys, a_file, tmp_path):
    line = fails(capsys, "prune", "--out", a_file / "x.pt")
    assert "argument --out: " in line and "is not a directory" in line
    line = fails(capsys, "prune", "--out", tmp_path / "missing" / "x.pt")
    assert "argument --out: " in line and "does not exist" in line
    assert "is a directory" in fails(capsys, "prune", "--out", tmp_path)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("content, says", [
    (b"not a checkpoint", "cannot load"),
    (b"", "cannot load"),
    ({"w": torch.zeros(2)}, "holds a state_dict, not a model"),
    ([1, 2], "holds a list, not a model"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), "no nn.Linear layer"),
    (nn.Sequential(nn.Flatten(1), nn.Linear(3, 10)), "does not accept the 1×16×16 inputs"),
    (nn.Sequential(nn.Flatten(1), nn.Linear(256, 10)), "no Conv2d or Linear layer besides the head"),
])
def test_prune_bad_checkpoint(capsys, tmp_path, content, says):
    pytest.importorskip("sklearn", reason="the target data set needs scikit-learn")
    ckpt = tmp_path / "model.pt"
    if isinstance(content, bytes):
        ckpt.write_bytes(content)
    else:
        torch.save(content, ckpt)
    line = fails(capsys, "prune", "--checkpoint", ckpt, "--out", tmp_path / "x.pt", one_line=True)
    assert "--checkpoint" in line and str(ckpt) in line and says in line
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("decomposed", [False, True])
def test_prune_valid_checkpoint_reaches_the_workflow(tmp_path, decomposed):
    """A whole saved model passes the checks, also one already in basis form (a `basisrt prune` output)."""
    pytest.importorskip("sklearn", reason="the target data set needs scikit-learn")
    model = basisrt.workflow.small_vgg()
    if decomposed:
        model = basisrt.decompose(model, exclude=("3",)).model
    torch.save(model, tmp_path / "model.pt")
    with pytest.raises(WorkStarted):
        main(["prune", "--checkpoint", str(tmp_path / "model.pt"), "--limit", "40", "--out", str(tmp_path / "x.pt")])


def test_prune_model_that_does_not_take_the_input_size(capsys, tmp_path):
    pytest.importorskip("sklearn", reason="the target data set needs scikit-learn")
    line = fails(capsys, "prune", "--model", "vit_mlp", "--out", tmp_path / "x.pt", one_line=True)
    assert "--model vit_mlp does not accept the 1×16×16 inputs of --size 16" in line


def test_prune_valid_arguments_reach_the_workflow(tmp_path):
    pytest.importorskip("sklearn", reason="the target data set needs scikit-learn")
    with pytest.raises(WorkStarted):
        main(["prune", "--limit", "40", "--schedule", "0.9,,0.8", "--channel-amount", "0", "--out",
              str(tmp_path / "x.pt")])
    with pytest.raises(WorkStarted):  # an empty schedule: no basis pruning
        main(["prune", "--limit", "40", "--schedule", "", "--out", str(tmp_path / "x.pt")])


# ------------------------------------------------------------------------------ bench

@pytest.mark.parametrize("argv, flag, says", [
    (["--levels", "r20"], "--levels", "unknown pruning level 'r20'"),
    (["--levels", "r10", "ratio:2"], "--levels", "(0, 1]"),
    (["--levels", "energy:x"], "--levels", "(0, 1]"),
    (["--levels", "ratio:"], "--levels", "(0, 1]"),
    (["--batches", "8", "0"], "--batches", "positive integer"),
    (["--threads", "-1"], "--threads", "positive integer"),
    (["--rounds", "0"], "--rounds", "positive integer"),
    (["--warmup", "-1"], "--warmup", "non-negative integer"),
    (["--min-pass-ms", "nan"], "--min-pass-ms", "finite"),
    (["--settle-ms", "-5"], "--settle-ms", "non-negative number"),
    (["--layer-batch", "0"], "--layer-batch", "positive integer"),
    (["--seed", "-1"], "--seed", "[0, 4294967295]"),
    (["--models", "alexnet"], "--models", "invalid choice"),
    (["--engines", "turbo"], "--engines", "unknown engine 'turbo'"),
])
def test_bench_bad_argument(capsys, argv, flag, says):
    line = fails(capsys, "bench", *argv)
    assert f"argument {flag}: " in line and says in line


def test_bench_unwritable_outputs(capsys, a_file, tmp_path):
    line = fails(capsys, "bench", "--quick", "--out", a_file / "out")
    assert "argument --out: " in line and "is not a directory" in line
    line = fails(capsys, "bench", "--out", a_file)
    assert "argument --out: " in line and "not a directory" in line
    line = fails(capsys, "bench", "--results-md", tmp_path / "missing" / "R.md")
    assert "argument --results-md: " in line and "does not exist" in line


def test_bench_layer_batch_must_be_timed(capsys):
    line = fails(capsys, "bench", "--batches", "1", "32", "--layer-batch", "8", one_line=True)
    assert "argument --layer-batch: 8 is not one of" in line
    with pytest.raises(WorkStarted):
        main(["bench", "--quick", "--layer-batch", "8"])


def test_bench_valid_arguments_reach_the_run(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(WorkStarted):
        main(["bench", "--quick", "--levels", "r10", "ratio:0.5", "energy:1", "paper", "double",
              "--out", str(out), "--results-md", str(tmp_path / "R.md")])
    assert not (tmp_path / "a").exists()  # checking --out creates nothing


# ------------------------------------------------------------------------------ the types themselves

def test_argtypes_values_and_no_junk(tmp_path):
    assert argtypes.fraction("1") == 1.0 and argtypes.removal_fraction("0") == 0.0
    assert argtypes.fraction_list(" 0.9, 0.5 ,") == [0.9, 0.5] and argtypes.fraction_list("") == []
    assert argtypes.positive_int("3") == 3 and argtypes.seed("0") == 0
    deep = tmp_path / "x" / "y" / "z"
    assert argtypes.writable_dir(str(deep)) == str(deep)
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "f.txt"
    existing.write_text("keep")
    assert argtypes.writable_file(str(existing)) == str(existing) and existing.read_text() == "keep"
    assert argtypes.existing_file(str(existing)) == str(existing)
    for bad in ("0", "1.01", "-1", "nan", "x"):
        with pytest.raises(argtypes.ArgumentTypeError):
            argtypes.fraction(bad)


# ------------------------------------------------------------------------------ the real command

@pytest.mark.parametrize("argv, flag", [
    (["demo", "--batch", "-1"], "--batch"),
    (["prune", "--channel-amount", "1.5"], "--channel-amount"),
    (["prune", "--out", "{file}/x.pt"], "--out"),
    (["bench", "--out", "{file}/out"], "--out"),
])
def test_command_line_exits_2_without_traceback(tmp_path, a_file, argv, flag):
    argv = [a.format(file=a_file) for a in argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "basisrt.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith(f"basisrt {argv[0]}: error: argument {flag}: ")
    assert elapsed < 30, f"took {elapsed:.1f} s: did work start?"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regular_file"]  # nothing written
