"""Survey: which third-party CNN architectures basisrt compiles into a fully native plan
(`compiled.native`, one C++ call), and which ops block the others.

Models are named `SOURCE:NAME`:
  * `tv:resnet18` (or plain `resnet18`): torchvision.models.get_model(name, weights=None);
    `tv:all` = every torchvision classification model; segmentation ones too (`tv:fcn_resnet50`,
    no backbone weights);
  * `smp:Unet`, `smp:FPN/mobilenet_v2`: segmentation_models_pytorch.create_model(arch,
    encoder_name=ENCODER (default resnet34), encoder_weights=None, classes=5);
  * `timm:resnet18`: timm.create_model(name, pretrained=False, num_classes=10);
  * `hf:MobileNetV2`: Hugging Face transformers' `MobileNetV2ForImageClassification(MobileNetV2Config())`
    (random init from the default config, at the config's image_size);
  * `cifar:ResNet18`: kuangliu/pytorch-cifar's `models.ResNet18()` (32x32 inputs), from a checkout
    at $PYTORCH_CIFAR (git clone of github.com/kuangliu/pytorch-cifar; not part of this repo);
    `cifar:all` = the constructors listed in CIFAR_MODELS.

For every model (torch.manual_seed(0), eval mode, BatchNorm statistics calibrated, see
calibrate()): decompose every conv / linear but the first conv, prune every basis layer to 10 % of
its rank ("ratio", 0.1), `basisrt.compile(model, x)` with x = randn(2, 3, S, S), and record

  * whether it compiled (or the exception), whether the plan is native, the relative error
    ||compiled(x) - model(x)|| / ||model(x)|| against the eager pruned model,
  * a save / load round trip (`basisrt.load(path)(x)` against `compiled(x)`),
  * for a plan that is not native: its PyTorch steps, and every op that keeps the plan of only
    basisrt kernels (`compile(..., dense_backend="basisrt")`, no timing involved) out of the
    native program: that plan's `plan.not_native` (what `basisrt.explain` reports).

Each model runs in its own subprocess (a crash or a runaway model cannot stop the survey; memory is
returned after each model), with a signal.alarm timeout inside and a hard timeout outside.
Models above --max-params parameters are skipped (slow to decompose on a small machine) and
listed as skipped. Writes JSON (default bench/out/model_survey.json, rewritten after each
model; --resume keeps models already in it) and prints a Markdown table and a summary.

    PYTHONPATH=. PYTORCH_CIFAR=/path/to/pytorch-cifar python bench/model_survey.py
        [--models tv:all cifar:all timm:resnet18 ...] [--size 64] [--out FILE] [--max-params 100e6]
        [--timeout 300] [--resume] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "out" / "model_survey.json"
FALLBACK_SIZES = (75, 96, 128, 160, 192, 224)  # tried in order when a model rejects --size


# --------------------------------------------------------------------------- model construction

# pytorch-cifar's constructors (models/__init__.py), one per architecture family and size
CIFAR_MODELS = ("VGG('VGG11')", "VGG('VGG16')", "ResNet18()", "ResNet50()", "PreActResNet18()", "GoogLeNet()",
                "DenseNet121()", "ResNeXt29_2x64d()", "MobileNet()", "MobileNetV2()", "DPN26()", "ShuffleNetG2()",
                "SENet18()", "ShuffleNetV2(1)", "EfficientNetB0()", "RegNetX_200MF()", "RegNetY_400MF()",
                "SimpleDLA()", "DLA()", "PNASNetA()", "LeNet()")


def split_name(name: str) -> tuple[str, str]:
    source, _, rest = name.partition(":")
    return (source, rest) if rest else ("tv", name)


def model_kwargs(name: str, size: int) -> dict:
    """torchvision constructor arguments: no aux heads, explicit init (no warning), the input size
    where the architecture bakes it in (ViT's position embedding, MaxViT's attention grid)."""
    if name in ("inception_v3", "googlenet"):
        return dict(aux_logits=False, init_weights=True)
    if name.startswith("vit_"):
        return dict(image_size=size)
    if name.startswith("maxvit"):
        return dict(input_size=(size, size))
    if name.startswith(("fcn_", "deeplabv3_", "lraspp_")):  # segmentation: no ImageNet backbone download
        return dict(weights_backbone=None) if name.startswith("lraspp") else dict(weights_backbone=None, aux_loss=False)
    return {}


def candidate_sizes(name: str, size: int) -> list[int]:
    source, short = split_name(name)
    if source == "cifar":
        return [32]
    if source == "hf":
        config_size = getattr(_hf_config(short), "image_size", None)
        return [config_size if isinstance(config_size, int) else size]
    first = max(size, 75) if short == "inception_v3" else size
    return [first] + [s for s in FALLBACK_SIZES if s > first]


def build(name: str, size: int):
    import torch
    torch.manual_seed(0)
    source, short = split_name(name)
    if source == "tv":
        import torchvision
        return torchvision.models.get_model(short, weights=None, **model_kwargs(short, size)).eval()
    if source == "timm":
        import timm
        return timm.create_model(short, pretrained=False, num_classes=10).eval()
    if source == "hf":
        import transformers
        return getattr(transformers, f"{short}ForImageClassification")(_hf_config(short)).eval()
    if source == "smp":  # segmentation_models_pytorch: "smp:Unet" or "smp:FPN/mobilenet_v2" (encoder)
        import segmentation_models_pytorch as smp
        arch, _, encoder = short.partition("/")
        return smp.create_model(arch, encoder_name=encoder or "resnet34", encoder_weights=None, classes=5).eval()
    if source == "cifar":
        root = os.environ.get("PYTORCH_CIFAR")
        if not root:
            raise RuntimeError("set PYTORCH_CIFAR to a checkout of github.com/kuangliu/pytorch-cifar")
        if root not in sys.path:
            sys.path.insert(0, root)
        import models as cifar  # noqa: F401 - pytorch-cifar's package, evaluated below
        return eval(f"cifar.{short}", {"cifar": cifar}).eval()
    raise ValueError(f"unknown model source {source!r} in {name!r} (tv, timm, hf, smp, cifar)")


def _hf_config(short: str):
    import transformers
    return getattr(transformers, f"{short}Config")()


def expand(names: list[str]) -> list[str]:
    """`tv:all` and `cifar:all` to their model lists."""
    out: list[str] = []
    for n in names:
        if n == "tv:all":
            import torchvision
            out += torchvision.models.list_models(module=torchvision.models)
        elif n == "cifar:all":
            out += [f"cifar:{c}" for c in CIFAR_MODELS]
        else:
            out.append(n)
    return out


def count_params(name: str, size: int) -> int:
    """Parameter count without allocating (the model built on the meta device), at the first
    candidate size the constructor accepts (ViT-H/14 needs a multiple of 14)."""
    import torch
    error = None
    for s in candidate_sizes(name, size):
        try:
            with torch.device("meta"):
                m = build(name, s)
            return sum(p.numel() for p in m.parameters())
        except Exception as e:  # noqa: BLE001
            error = error or e
    raise error


# --------------------------------------------------------------------------- one model

class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("per-model timeout")


def _exc(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def _tensors(v) -> list:
    """A model output's tensors: the tensor, or those of a tuple / list / dict (segmentation: {"out": ...})."""
    if isinstance(v, dict):
        return [t for k in sorted(v) for t in _tensors(v[k])]
    return [t for x in v for t in _tensors(x)] if isinstance(v, (tuple, list)) else [v]


def _rel_err(out, ref) -> float:
    import torch
    outs, refs = _tensors(out), _tensors(ref)
    if len(outs) != len(refs):
        return float("inf")
    num = sum(float(torch.linalg.vector_norm((o.double() - r.double()).flatten())) ** 2 for o, r in zip(outs, refs))
    den = sum(float(torch.linalg.vector_norm(r.double().flatten())) ** 2 for r in refs)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return math.sqrt(num) / math.sqrt(den)


def first_conv(model, x) -> str | None:
    """Name of the first Conv2d the forward pass runs (hooks, not declaration order)."""
    import torch
    from torch import nn
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: order.append(n))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order[0] if order else None


def calibrate(model, size: int) -> dict:
    """Make a randomly initialised model numerically meaningful, so the relative error says
    something: (1) a Conv2d / Linear whose weight is all zeros (ViT's head) gets N(0, 0.02²)
    weights, else the output is the constant bias; (2) every BatchNorm's running statistics are
    set to the batch statistics of 8 random images (one train-mode pass, momentum=None), else
    BN is the identity in eval mode and activations vanish or blow up with depth (GoogLeNet's
    output underflows to exactly 0). Parameters other than the zero weights are not touched."""
    import torch
    from torch import nn
    done = dict(zero_weights_reinit=[], batchnorms=0)
    g = torch.Generator().manual_seed(2)
    for n, m in model.named_modules():
        if type(m) in (nn.Conv2d, nn.Linear) and not m.weight.detach().any():
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
            done["zero_weights_reinit"].append(n)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, that batch's statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 3, size, size, generator=g))
        model.eval()
        for m in bns:
            m.momentum = 0.1
        done["batchnorms"] = len(bns)
    return done


def time_against_eager(eager, compiled, x, rounds: int, peers: dict | None = None) -> dict:
    """Eager time / compiled time on x, with `peers` (name -> a call of another engine on x) timed
    in the same rounds, each as its time / the compiled plan's (above 1: basisrt is faster).
    basisrt bench's interleaved passes (rotating order, each pass after the process's threads have
    gone idle): alternating call by call, each engine ran beside the spinning workers of the one
    before it (PyTorch's OpenMP threads after eager, ONNX Runtime's after it). Medians of the
    rounds' paired ratios, with their range."""
    import torch

    from basisrt.bench.timing import interleaved, paired_ratios
    fns = {"eager": lambda: eager(x), "basisrt": lambda: compiled(x), **(peers or {})}
    with torch.inference_mode():
        timings = interleaved(fns, rounds=rounds, warmup=2, min_pass_s=0.05, settle_s=0.02)
    ours = timings["basisrt"]
    if ours.error:
        raise RuntimeError(f"timing basisrt: {ours.error}")
    mid = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    ratios = {k: paired_ratios(t, ours) for k, t in timings.items() if not t.error and t.walls}
    if "eager" not in ratios:
        raise RuntimeError(f"timing eager: {timings['eager'].error}")
    out = dict(batch=x.shape[0], rounds=rounds, speedup=mid(ratios["eager"]), speedup_min=min(ratios["eager"]),
               speedup_max=max(ratios["eager"]), eager_ms=mid(timings["eager"].walls) * 1e3,
               basisrt_ms=mid(ours.walls) * 1e3)
    if peers:
        out["peers"] = {k: dict(ms=mid(timings[k].walls) * 1e3, ratio=mid(ratios[k]), ratio_min=min(ratios[k]),
                                ratio_max=max(ratios[k])) for k in peers if k in ratios}
        out["peer_run_errors"] = {k: timings[k].error for k in peers if timings[k].error}
    return out


def build_peers(names: list[str], model, x) -> tuple[dict, dict]:
    """basisrt bench's engines (`ort_pruned`, `ov_pruned`, ...) on `model` and `x`: (name -> a call
    on x, name -> why it could not be built)."""
    import torch

    from basisrt.bench.engines import build as build_engine
    from basisrt.bench.engines import remove_exports
    fns, errors, cache = {}, {}, {}
    try:
        for name in names:
            try:
                fns[name] = build_engine(name, model, x, torch.get_num_threads(), cache).fn
            except Timeout:
                raise
            except Exception as e:  # noqa: BLE001
                errors[name] = _exc(e)
    finally:
        remove_exports(cache)
    return fns, errors


def survey_model(name: str, size: int, timeout: int, calibrate_bn: bool = True, time_rounds: int = 0,
                 time_batch: int = 1, peers: list[str] | None = None) -> dict:
    import torch

    import basisrt

    r: dict = dict(model=name, stage="build")
    stage_t = {}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    t0 = time.perf_counter()

    def mark(stage: str) -> None:
        stage_t[r["stage"]] = round(time.perf_counter() - t0, 1)
        r["stage"] = stage

    try:
        # the smallest input size the architecture accepts, starting at `size`
        model = x = None
        errors = []
        for s in candidate_sizes(name, size):
            try:
                model = build(name, s)
                torch.manual_seed(1)
                x = torch.randn(2, 3, s, s)
                with torch.no_grad():
                    model(x)
                r["size"] = s
                break
            except Timeout:
                raise
            except Exception as e:  # noqa: BLE001
                errors.append(f"{s}: {_exc(e)}")
                model = None
        if model is None:
            r["error"] = "no input size works: " + " | ".join(errors)
            return r
        if errors:
            r["size_note"] = errors[0]
        r["params"] = sum(p.numel() for p in model.parameters())
        if calibrate_bn:
            r["calibration"] = calibrate(model, r["size"])
        mark("decompose")
        first = first_conv(model, x)
        r["first_conv"] = first
        exclude = (first,) if first else ()
        report = basisrt.decompose(model, exclude=exclude)
        pruned = report.model.eval()
        r["decomposed"], r["not_decomposed"] = len(report.decomposed), len(report.skipped)
        r["skipped_reasons"] = dict(Counter(v.split(":")[0] for v in report.skipped.values()))
        mark("prune")
        basisrt.prune_basis(pruned, "ratio", 0.1)
        r["params_pruned"] = sum(p.numel() for p in pruned.parameters())
        with torch.no_grad():
            ref = pruned(x)
        mark("compile")
        try:
            compiled = basisrt.compile(pruned, x)
        except Timeout:
            raise
        except Exception as e:  # noqa: BLE001
            r["compiled"] = False
            r["compile_error"] = _exc(e)
            r["compile_traceback"] = traceback.format_exc()[-2000:]
            return r
        r["compiled"] = True
        r["native"] = compiled.native is not None
        r["strategies"] = dict(Counter(s.strategy for s in compiled.plan.steps))
        r["torch_steps"] = [f"{s.name}: {s.detail}"[:120] for s in compiled.plan.steps
                            if s.strategy == basisrt.compiler.Strategy.TORCH]
        r["onednn_steps"] = sum("(torch)" in s.detail for s in compiled.plan.steps)  # TorchConvStep
        mark("run")
        try:
            out = compiled(x)
            r["rel_err"] = _rel_err(out, ref)
            refs = _tensors(ref)
            r["ref_rms"] = (float(torch.cat([t.double().flatten() for t in refs]).pow(2).mean().sqrt())
                            if all(isinstance(t, torch.Tensor) for t in refs) else None)
        except Timeout:
            raise
        except Exception as e:  # noqa: BLE001
            r["run_error"] = _exc(e)
            out = None
        if time_rounds and out is not None:
            mark("time")
            torch.manual_seed(2)
            xt = torch.randn(time_batch, 3, r["size"], r["size"])
            fns, r["peer_errors"] = build_peers(peers or [], pruned, xt)
            r["timing"] = time_against_eager(pruned, compiled, xt, time_rounds, peers=fns)
        mark("save_load")
        try:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "model.basisrt")
                compiled.save(path)
                r["plan_bytes"] = os.path.getsize(path)
                loaded = basisrt.load(path)
                y2 = loaded(x)
                r["loaded_native"] = loaded.native is not None
                if out is not None:
                    pairs = list(zip(_tensors(y2), _tensors(out)))
                    r["save_load_equal"] = len(pairs) == len(_tensors(out)) and all(torch.equal(a, b) for a, b in pairs)
                    r["save_load_max_diff"] = max(float((a - b).abs().max()) for a, b in pairs)
                r["save_load"] = "ok" if r.get("save_load_equal", False) else "differs"
        except Timeout:
            raise
        except Exception as e:  # noqa: BLE001
            r["save_load"] = "error"
            r["save_load_error"] = _exc(e)
        if not r["native"]:
            # the plan of only basisrt kernels (what "auto" also builds, then times against the
            # mixed one): deterministic, and the one whose remaining ops are the real blockers
            mark("blockers")
            ours = basisrt.compile(pruned, x, dense_backend="basisrt")
            r["native_ours_only"] = ours.native is not None
            found = [dict(node=node, why=why) for node, why in ours.plan.not_native]
            r["blockers"] = found
            r["blocker_kinds"] = dict(Counter(_kind(b["why"]) for b in found).most_common())
        mark("done")
    except Timeout:
        r["error"] = f"timeout after {timeout} s in stage {r['stage']}"
    except Exception as e:  # noqa: BLE001
        r["error"] = f"{_exc(e)} (stage {r['stage']})"
        r["traceback"] = traceback.format_exc()[-2000:]
    finally:
        signal.alarm(0)
        r["seconds"] = stage_t
        r["seconds_total"] = round(time.perf_counter() - t0, 1)
    return r


# --------------------------------------------------------------------------- driver and report

def _kind(why: str) -> str:
    """A refusal's kind, to count across models: "get_attr <name>" counts as one kind."""
    kind = why.split(":")[0]
    return "get_attr" if kind.startswith("get_attr ") else kind


def run_worker(name: str, size: int, timeout: int, calibrate_bn: bool = True, time_rounds: int = 0,
               time_batch: int = 1, peers: list[str] | None = None) -> dict:
    """`survey_model` in a fresh interpreter: crashes (a signal in C++) are recorded, not fatal."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        tmp = f.name
    cmd = [sys.executable, __file__, "--worker", name, "--size", str(size), "--timeout", str(timeout),
           "--worker-out", tmp, "--time", str(time_rounds), "--time-batch", str(time_batch)] + \
        ([] if calibrate_bn else ["--no-calibrate"]) + (["--peers", *peers] if peers else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 120)
        try:
            with open(tmp) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            tail = (p.stderr or "").strip().splitlines()[-3:]
            why = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit code {p.returncode}"
            return dict(model=name, error=f"worker crashed ({why}): " + " / ".join(tail))
    except subprocess.TimeoutExpired:
        return dict(model=name, error=f"hard timeout after {timeout + 120} s (worker killed)")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fmt_params(n) -> str:
    return f"{n / 1e6:.1f}M" if isinstance(n, (int, float)) else "?"


def _short_kind(kind: str) -> str:
    return kind.replace("call_function ", "").replace("call_module ", "").replace("call_method ", ".")


def markdown(results: list[dict], top: int = 4) -> str:
    timed = any(r.get("timing") for r in results)
    lines = ["| model | params | S | compiled | native | rel err | save/load | blocking ops (kind ×count) |",
             "| --- | ---: | ---: | --- | --- | ---: | --- | --- |"]
    if timed:  # eager pruned model's time / the plan's (median of rounds, with their range), and the plan's ms
        lines = [lines[0] + " eager ÷ basisrt | basisrt ms |", lines[1] + " ---: | ---: |"]
    peered = any((r.get("timing") or {}).get("peers") or r.get("peer_errors") for r in results)
    if peered:  # each peer's time / the plan's, as the eager column
        lines = [lines[0] + " peer ÷ basisrt |", lines[1] + " --- |"]
    for r in results:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {_fmt_params(r.get('params'))} | – | skipped | – | – | – | "
                         f"{r['skipped']} |")
            continue
        if "compiled" not in r:
            lines.append(f"| {r['model']} | {_fmt_params(r.get('params'))} | {r.get('size', '–')} | "
                         f"**error** | – | – | – | {r.get('error', '?')[:160]} |")
            continue
        if not r["compiled"]:
            lines.append(f"| {r['model']} | {_fmt_params(r.get('params'))} | {r['size']} | **no**: "
                         f"{r['compile_error'][:160]} | – | – | – | – |")
            continue
        native = "**yes**" if r["native"] else "no"
        if not r["native"] and r.get("native_ours_only"):
            native = "no (ours-only plan: yes)"
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else f"run error: {r.get('run_error', '?')}"
        if "rel_err" in r and not r["rel_err"] <= 1e-5:
            err = f"**{err}**"
        if not r.get("ref_rms") and "rel_err" in r:
            err += " (ref = 0!)"
        sl = r.get("save_load", "?")
        if sl == "error":
            sl = f"**error**: {r.get('save_load_error', '')[:100]}"
        elif sl == "differs":
            sl = f"**differs** (max {r.get('save_load_max_diff', float('nan')):.1e})"
        kinds = r.get("blocker_kinds") or {}
        blk = "; ".join(f"{_short_kind(k)} ×{n}" for k, n in list(kinds.items())[:top])
        if len(kinds) > top:
            blk += f"; +{len(kinds) - top} more kinds"
        if r.get("error"):
            blk = f"error: {r['error'][:120]}" + (f"; {blk}" if blk else "")
        notes = []
        if (r.get("calibration") or {}).get("zero_weights_reinit"):
            notes.append("zero-init weights re-drawn: " + ", ".join(r["calibration"]["zero_weights_reinit"]))
        if notes:
            blk = (blk or "–") + " — *" + "; ".join(notes) + "*"
        lines.append(f"| {r['model']} | {_fmt_params(r.get('params'))} | {r['size']} | yes | {native} | {err} | "
                     f"{sl} | {blk or '–'} |")
    if timed:
        for i, r in enumerate(results, 2):
            t = r.get("timing")
            lines[i] += (f" {t['speedup']:.2f}× ({t['speedup_min']:.2f}–{t['speedup_max']:.2f}) | "
                         f"{t['basisrt_ms']:.2f} |" if t else " – | – |")
            if peered:
                peers = (t or {}).get("peers") or {}
                cells = [f"{k.removesuffix('_pruned')} {v['ratio']:.2f}×" for k, v in peers.items()]
                failed = {**(r.get("peer_errors") or {}), **((t or {}).get("peer_run_errors") or {})}
                cells += [f"{k.removesuffix('_pruned')}: failed" for k in failed]
                lines[i] += f" {', '.join(cells) or '–'} |"
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    done = [r for r in results if not r.get("skipped")]
    compiled = [r for r in done if r.get("compiled")]
    native = [r for r in compiled if r.get("native")]
    ours = [r for r in compiled if not r.get("native") and r.get("native_ours_only")]
    errors = [r for r in done if "compiled" not in r or r.get("error")]
    wrong = [r for r in compiled if "rel_err" in r and not r["rel_err"] <= 1e-5]
    sl_bad = [r for r in compiled if r.get("save_load") != "ok"]
    skipped = [r for r in results if r.get("skipped")]
    out = [f"- models: {len(results)} listed, {len(skipped)} skipped, {len(done)} surveyed",
           f"- compiled: {len(compiled)} / {len(done)}; failed to compile: "
           + (", ".join(r["model"] for r in done if r.get("compiled") is False) or "none"),
           f"- native (`compiled.native is not None`): {len(native)} / {len(compiled)}: "
           + (", ".join(r["model"] for r in native) or "none"),
           "- not native under the default compile, but the plan of only basisrt kernels lowers "
           "(\"auto\" timed the mixed plan faster): " + (", ".join(r["model"] for r in ours) or "none"),
           "- errors / timeouts / crashes: " + ("; ".join(f"{r['model']}: {r.get('error')}" for r in errors) or "none"),
           "- rel err > 1e-5: " + ("; ".join(f"{r['model']} {r['rel_err']:.2e}" for r in wrong) or "none"),
           "- reference output exactly 0 (rel err meaningless): " + (", ".join(
               r["model"] for r in compiled if "rel_err" in r and not r.get("ref_rms")) or "none"),
           "- reference output tiny (RMS < 1e-4; float32 rel err still valid): " + (", ".join(
               f"{r['model']} ({r['ref_rms']:.1e})" for r in compiled
               if "rel_err" in r and r.get("ref_rms") and r["ref_rms"] < 1e-4) or "none"),
           "- save/load not equal or failing: " + ("none" if not sl_bad else "")]
    by_message: dict[str, list[str]] = {}
    for r in sl_bad:
        by_message.setdefault(f"{r.get('save_load')}: {r.get('save_load_error', '')}".strip(), []).append(r["model"])
    out += [f"  - {', '.join(models)}: {msg}" for msg, models in by_message.items()]
    per_kind: dict[str, list[str]] = {}
    occurrences: Counter = Counter()
    for r in compiled:
        for k, n in (r.get("blocker_kinds") or {}).items():
            per_kind.setdefault(k, []).append(r["model"])
            occurrences[k] += n
    blocked = [r for r in compiled if r.get("blocker_kinds")]
    out += ["", f"Blocking op kinds, ranked by the number of models each blocks ({len(blocked)} models blocked; "
            "\"sole\" = models this kind alone blocks):", "",
            "| # | op kind | models | sole | occurrences | models blocked |",
            "| ---: | --- | ---: | ---: | ---: | --- |"]
    for i, (k, models) in enumerate(sorted(per_kind.items(), key=lambda kv: (-len(kv[1]), kv[0])), 1):
        sole = sum(1 for r in compiled if list((r.get("blocker_kinds") or {}).keys()) == [k])
        out.append(f"| {i} | `{k}` | {len(models)} | {sole} | {occurrences[k]} | {', '.join(models)} |")
    groups: dict[tuple, list[str]] = {}
    for r in blocked:
        groups.setdefault(tuple(sorted(r["blocker_kinds"])), []).append(r["model"])
    out += ["", "Blocked models grouped by the exact set of op kinds blocking them (all of a set must be "
            "implemented to make those models native):", ""]
    for kinds, models in sorted(groups.items(), key=lambda kv: (len(kv[0]), -len(kv[1]))):
        out.append(f"- {len(kinds)} kinds → {', '.join(models)}: " + "; ".join(f"`{_short_kind(k)}`" for k in kinds))
    return "\n".join(out)


def _versions() -> dict:
    import importlib
    out = {}
    for m in ("torchvision", "timm"):
        try:
            out[m] = importlib.import_module(m).__version__
        except ImportError:
            pass
    return out


def _basisrt_version() -> str:
    """Where basisrt was imported from, and its git commit (or $BASISRT_COMMIT for a copy)."""
    import basisrt
    where = Path(basisrt.__file__).resolve().parent.parent
    commit = os.environ.get("BASISRT_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip() or "?"
        except (OSError, subprocess.SubprocessError):
            commit = "?"
    return f"{where} @ {commit}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="SOURCE:NAME model names (default: tv:all)")
    ap.add_argument("--size", type=int, default=64, help="input size S (larger where a model needs it)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    ap.add_argument("--markdown", help="also write the table and summary to this Markdown file")
    ap.add_argument("--max-params", type=float, default=100e6, help="skip models with more parameters")
    ap.add_argument("--timeout", type=int, default=900,
                    help="seconds per model (convnext_base took 628 s on 2 busy cores)")
    ap.add_argument("--resume", action="store_true",
                    help="keep models already in --out (those named by --models run again)")
    ap.add_argument("--no-calibrate", action="store_true",
                    help="keep torchvision's init as it is (BatchNorm as identity, zero heads): see calibrate()")
    ap.add_argument("--in-process", action="store_true", help="no subprocess per model (no crash isolation)")
    ap.add_argument("--time", type=int, default=0, metavar="ROUNDS",
                    help="also time the compiled plan against the eager pruned model (and --peers): this many "
                         "rounds of interleaved passes, as basisrt bench times (0: no timing)")
    ap.add_argument("--time-batch", type=int, default=1, help="batch size of the timing")
    ap.add_argument("--peers", nargs="*", default=[], metavar="ENGINE",
                    help="basisrt bench engines timed in the same rounds on the same pruned model (e.g. ort_pruned "
                         "ov_pruned inductor_pruned; needs --time)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        r = survey_model(args.worker, args.size, args.timeout, not args.no_calibrate, args.time, args.time_batch,
                         args.peers)
        with open(args.worker_out, "w") as f:
            json.dump(r, f, default=str)
        return 0

    import torch
    names = expand(args.models or ["tv:all"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous, rerun = {}, set(args.models or ())
    if args.resume and out.exists():
        previous = {r["model"]: r for r in json.loads(out.read_text())["results"]}
        # --resume --models A B: run A and B again, keep every other model of the file
        names = [n for n in previous if n not in rerun] + [n for n in names if n not in previous or n in rerun]
    meta = dict(date=datetime.date.today().isoformat(), torch=torch.__version__, versions=_versions(),
                command=" ".join([Path(sys.executable).name, *sys.argv]), size=args.size,
                max_params=args.max_params, prune="decompose(exclude=first conv) + prune_basis('ratio', 0.1)",
                batch=2, threads=torch.get_num_threads(), calibrate=not args.no_calibrate,
                basisrt=_basisrt_version())
    results = []
    for i, name in enumerate(names, 1):
        if name in previous and name not in rerun and \
                not previous[name].get("error", "").startswith(("hard timeout", "worker crashed")):
            results.append(previous[name])
            print(f"[{i}/{len(names)}] {name}: kept from {out}", flush=True)
            continue
        try:
            params = count_params(name, args.size)
        except Exception as e:  # noqa: BLE001
            params = None
            print(f"  could not count parameters of {name}: {_exc(e)}", flush=True)
        if params is not None and params > args.max_params:
            why = f"{params / 1e6:.0f}M parameters > {args.max_params / 1e6:.0f}M"
            r = dict(model=name, params=params, skipped=why)
        else:
            t = time.perf_counter()
            options = (args.size, args.timeout, not args.no_calibrate, args.time, args.time_batch, args.peers)
            r = survey_model(name, *options) if args.in_process else run_worker(name, *options)
            r.setdefault("params", params)
            r["wall_seconds"] = round(time.perf_counter() - t, 1)
        results.append(r)
        status = r.get("skipped") or r.get("error") or (
            f"compiled={r.get('compiled')} native={r.get('native')} rel_err={r.get('rel_err', float('nan')):.1e} "
            f"save_load={r.get('save_load')} blockers={list((r.get('blocker_kinds') or {}).items())[:3]}" +
            (f" eager/basisrt {r['timing']['speedup']:.2f}x ({r['timing']['eager_ms']:.2f} / "
             f"{r['timing']['basisrt_ms']:.2f} ms)" if r.get("timing") else "") +
            "".join(f" {k}/basisrt {v['ratio']:.2f}x" for k, v in (r.get("timing") or {}).get("peers", {}).items()) +
            "".join(f" {k}: {v[:80]}" for k, v in (r.get("peer_errors") or {}).items()))
        print(f"[{i}/{len(names)}] {name}: {status}", flush=True)
        out.write_text(json.dumps(dict(meta=meta, results=results), indent=1, default=str))
    table, summ = markdown(results), summary(results)
    print("\n" + table + "\n\n" + summ)
    if args.markdown:
        Path(args.markdown).write_text(f"{table}\n\n{summ}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
