"""Smoke test: `basisrt bench --quick` runs end to end and writes its outputs; engines that cannot
run are reported with a reason. No timing assertions."""
import builtins
import copy
import glob
import json
import os
import tempfile

import pytest
import torch
from torch import Tensor

from basisrt.bench import engines as eng
from basisrt.bench.report import gpu_section, markdown, realised_table, skipped_lines
from basisrt.bench.runner import BenchConfig, run
from basisrt.cli import main


def _exports() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "basisrt-bench-*.onnx*")))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    before = _exports()
    assert main(["bench", "--quick", "--no-progress", "--out", str(out), "--results-md", str(out / "R.md")]) == 0
    assert _exports() <= before  # the ONNX files exported for ONNX Runtime / OpenVINO are deleted
    return out


def test_quick_writes_json_markdown_png(quick, capsys):
    results = json.loads((quick / "results.json").read_text())
    assert (quick / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (quick / "results.md").read_text()
    assert "Realised vs nominal" in md and "Smoke run" in md and "eager_pruned" in md
    assert "speedup.png" in (quick / "R.md").read_text()
    assert results["config"]["quick"] and results["rooflines"]["1"]["peak_gflops"] > 0
    (g,) = [g for g in results["groups"] if g["device"] == "cpu"]
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
    for name, e in g["engines"].items():  # every engine's error on a fresh input too
        assert e["info"]["rel_err_fresh"] < eng.tolerance(name), name
    assert "rel err, fresh input" in md
    assert "Realised" not in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_without_cuda_the_gpu_table_says_not_measured(quick):
    results = json.loads((quick / "results.json").read_text())
    assert all(g["device"] == "cpu" for g in results["groups"])
    gpu = (quick / "results.md").read_text().split("## GPU", 1)[1].split("\n## ", 1)[0]
    for name in eng.GPU_ENGINES:
        row = f"| {name} | {eng.DESCRIPTIONS[eng.kind_of(name)]} | not measured: no CUDA device on this machine |"
        assert row in gpu
        assert set(results["engine_status"][name].values()) == {"skipped: no CUDA device on this machine"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_with_cuda_the_gpu_engines_are_timed(quick):
    results = json.loads((quick / "results.json").read_text())
    (g,) = [g for g in results["groups"] if g["device"] == "cuda"]
    assert set(g["engines"]) == set(eng.GPU_ENGINES)
    assert g["speedups"]["gpu_basisrt"]["vs_eager_dense"]["ref"] == "gpu_eager_dense"
    assert "| gpu_basisrt_graph |" in "\n".join(gpu_section(results))


def test_gpu_groups_render_in_the_gpu_section_only(quick):
    """A GPU group (here the quick run's CPU group relabelled) appears in the GPU table, not the CPU one."""
    results = json.loads((quick / "results.json").read_text())
    cpu = next(g for g in results["groups"] if g["device"] == "cpu")
    renamed = {"eager_dense": "gpu_eager_dense", "eager_pruned": "gpu_eager_pruned", "basisrt": "gpu_basisrt"}
    gpu = copy.deepcopy(cpu)
    gpu["device"] = "cuda"
    gpu["engines"] = {renamed[n]: e for n, e in cpu["engines"].items() if n in renamed}
    gpu["speedups"] = {renamed[n]: s for n, s in cpu["speedups"].items() if n in renamed}
    results["groups"] = [cpu, gpu]
    results["machine"]["gpu"] = "Test GPU"
    section = "\n".join(gpu_section(results))
    assert "GPU: Test GPU." in section and "not measured" not in section
    assert "| vgg16 | r10 | 8 | 1 | gpu_basisrt |" in section and "| eager_pruned |" not in section
    assert "gpu_" not in realised_table(results)
    assert "| vgg16 | r10 | 8 | 1 | gpu_basisrt |" in markdown(results)


def test_unavailable_engines_are_reported_as_skipped(monkeypatch, tmp_path):
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
    assert "onnxruntime not installed" in next(iter(status["ort_pruned"].values()))
    assert set(results["groups"][0]["engines"]) == {"eager_dense", "eager_pruned", "basisrt"}
    lines = "\n".join(skipped_lines(results))
    assert "onnxruntime not installed" in lines and "`basisrt`" not in lines
    assert "onnxruntime not installed" in markdown(results)
    assert eng.availability()["ort"].startswith("onnxruntime not installed")


@pytest.mark.parametrize("name", ["ov_pruned", "ov_pruned_bf16"])
def test_openvino_engines_match_eager(name):
    """OpenVINO f32 (its precision hint) within float32 rounding; at its default precision bf16
    where the CPU has it (within bf16's tolerance), else skipped with the reason."""
    pytest.importorskip("openvino")
    from nets import pruned_net
    model, x = pruned_net().eval(), torch.randn(2, 3, 12, 10)
    cache: dict = {}
    try:
        run = eng.build(name, model, x, 1, cache)
    except eng.EngineSkipped as e:
        assert name.endswith("_bf16") and "no bf16" in str(e)
        return
    ((path, _),) = cache.values()
    eng.remove_exports(cache)  # the compiled model no longer needs its file
    assert not os.path.exists(path) and not cache
    with torch.no_grad():
        ref = model(x)
    assert ((run.output() - ref).norm() / ref.norm()).item() < eng.tolerance(name)
    assert run.info["precision"] == ("bf16" if name.endswith("_bf16") else "f32")


@pytest.mark.parametrize("name", ["eager_pruned", "eager_pruned_cl", "ort_pruned", "ov_pruned", "ov_pruned_bf16",
                                  "basisrt", "basisrt_bf16"])
def test_engines_answer_for_a_fresh_input_and_keep_timing_theirs(name):
    """run_on gives an engine's output for another input of the build input's shape (the bench's
    error off the example input), and leaves the timed call on the build input: OpenVINO's timed
    request reads x in place, so a fresh input must not go through it."""
    from nets import pruned_net
    # a fresh input far from x: this net's output moves 0.4 % between two standard normal inputs
    model, x, fresh = pruned_net().eval(), torch.randn(2, 3, 12, 10), 20 * torch.randn(2, 3, 12, 10)
    x_before = x.clone()
    try:
        run = eng.build(name, model, x, 1, {})
    except eng.EngineSkipped as e:
        pytest.skip(str(e))
    with torch.no_grad():
        ref, ref_fresh = model(x), model(fresh)
    rel = lambda y, r: ((torch.as_tensor(y).float() - r).norm() / r.norm()).item()  # noqa: E731
    run.fn()  # a timed call first: OpenVINO's request then shares x's memory
    assert rel(run.run_on(fresh), ref_fresh) < eng.tolerance(name)
    assert torch.equal(x, x_before)
    out = run.fn()
    if isinstance(out, Tensor):
        assert rel(out, ref) < eng.tolerance(name)
    assert rel(run.output(), ref) < eng.tolerance(name) and rel(ref, ref_fresh) > 0.3
