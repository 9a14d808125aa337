"""Smoke test: `basisrt bench --quick` runs end to end and writes its outputs; engines that cannot
run are reported with a reason. No timing assertions."""
import builtins
import json

import pytest

import basisrt
from basisrt.bench import engines as eng
from basisrt.bench.report import markdown, skipped_lines
from basisrt.bench.runner import BenchConfig, run
from basisrt.cli import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--quick", "--no-progress", "--out", str(out), "--results-md", str(out / "R.md")]) == 0
    return out


def test_quick_writes_json_markdown_png(quick, capsys):
    results = json.loads((quick / "results.json").read_text())
    assert (quick / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (quick / "results.md").read_text()
    assert "Realised vs nominal" in md and "Smoke run" in md and "eager_pruned" in md
    assert "speedup.png" in (quick / "R.md").read_text()
    assert results["config"]["quick"] and results["rooflines"]["1"]["peak_gflops"] > 0
    (g,) = results["groups"]
    assert g["nominal_speedup"] > 1 and g["dense_macs"] > g["pruned_macs"]
    s = g["speedups"]["eager_pruned"]
    assert s["nominal"] == g["nominal_speedup"] and s["vs_eager_dense"]["median"] > 0
    assert "realised" in s["vs_eager_dense"] and "vs_fastest_dense" in s
    # every configured engine is either timed or reported with a reason: none silently dropped
    for name in results["config"]["engines"]:
        status = results["engine_status"].get(name)
        assert status, f"{name} neither ran nor was reported"
        assert name in g["engines"] or all(v.startswith(("skipped", "failed")) for v in status.values())
    assert any(r["engine"] == "eager_pruned" and r["gflops"] > 0 for r in results["layers"])
    assert "Realised" not in capsys.readouterr().err


def test_unavailable_engines_are_reported_as_skipped(monkeypatch, tmp_path):
    monkeypatch.delattr(basisrt, "compile", raising=False)
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    cfg = BenchConfig.quick_config(models=["vit_mlp"], batches=[2], rounds=2, engines=[
        "eager_dense", "eager_pruned", "ort_pruned", "basisrt"])
    cfg.layers = False
    results = run(cfg, progress=False)
    status = results["engine_status"]
    assert list(status["basisrt"].values()) == ["skipped: basisrt.compile not available"]
    assert "onnxruntime not installed" in next(iter(status["ort_pruned"].values()))
    assert set(results["groups"][0]["engines"]) == {"eager_dense", "eager_pruned"}
    lines = "\n".join(skipped_lines(results))
    assert "basisrt.compile not available" in lines and "onnxruntime not installed" in lines
    assert "basisrt.compile not available" in markdown(results)
    assert eng.availability()["basisrt"] == "basisrt.compile not available"
