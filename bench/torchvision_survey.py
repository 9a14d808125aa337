"""Survey: which torchvision classification architectures basisrt compiles into a fully native plan
(`compiled.native`, one C++ call), and which ops block the others.

For every model of `torchvision.models.list_models(module=torchvision.models)` (weights=None,
torch.manual_seed(0), eval mode): decompose every conv / linear but the first conv, prune every
basis layer to 10 % of its rank ("ratio", 0.1), `basisrt.compile(model, x)` with
x = randn(2, 3, S, S), and record

  * whether it compiled (or the exception), whether the plan is native, the relative error
    ||compiled(x) - model(x)|| / ||model(x)|| against the eager pruned model,
  * a save / load round trip (`basisrt.load(path)(x)` against `compiled(x)`),
  * for a plan that is not native: its PyTorch steps, and every op that keeps the plan of only
    basisrt kernels (`compile(..., dense_backend="basisrt")`, no timing involved) out of the
    native program. `basisrt.compiler.program.lower` stops at the first such op; `blockers`
    below repeats its checks over the whole graph (treating each blocked op's output as if
    it were a basisrt buffer of its shape) so it lists all of them.

Each model runs in its own subprocess (a crash or a runaway model cannot stop the survey; memory is
returned after each model), with a signal.alarm timeout inside and a hard timeout outside.
Models above --max-params parameters are skipped (slow to decompose on a small machine) and
listed as skipped. Writes JSON (default bench/out/torchvision_survey.json, rewritten after each
model; --resume keeps models already in it) and prints a Markdown table and a summary.

    PYTHONPATH=. python bench/torchvision_survey.py [--models resnet18 mobilenet_v2 ...] [--size 64]
        [--out FILE] [--max-params 100e6] [--timeout 300] [--resume] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import operator
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
DEFAULT_OUT = HERE / "out" / "torchvision_survey.json"
FALLBACK_SIZES = (75, 96, 128, 160, 192, 224)  # tried in order when a model rejects --size


# --------------------------------------------------------------------------- model construction

def model_kwargs(name: str, size: int) -> dict:
    """Constructor arguments: no aux heads, explicit init (no warning), the input size where the
    architecture bakes it in (ViT's position embedding, MaxViT's attention grid)."""
    if name in ("inception_v3", "googlenet"):
        return dict(aux_logits=False, init_weights=True)
    if name.startswith("vit_"):
        return dict(image_size=size)
    if name.startswith("maxvit"):
        return dict(input_size=(size, size))
    return {}


def candidate_sizes(name: str, size: int) -> list[int]:
    first = max(size, 75) if name == "inception_v3" else size
    return [first] + [s for s in FALLBACK_SIZES if s > first]


def build(name: str, size: int):
    import torch
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **model_kwargs(name, size)).eval()


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


# --------------------------------------------------------------------------- blocker analysis

def _fn_name(fn) -> str:
    import torch
    import torch.nn.functional as F
    mod, name = getattr(fn, "__module__", None) or "", getattr(fn, "__name__", str(fn))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if getattr(F, name, None) is fn:
        return f"F.{name}"
    if getattr(torch, name, None) is fn:
        return f"torch.{name}"
    if mod == "builtins":
        return name
    return f"{mod}.{name}"


def _owner(node) -> str:
    """Class of the innermost module whose forward made `node` (from fx's nn_module_stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    return getattr(cls, "__name__", str(cls))


def _shape(node):
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _hw(shape) -> str:
    return f"{shape[2]}x{shape[3]}" if shape is not None and len(shape) == 4 else "?"


def _flatten_source(gm, node):
    """The 4-D node that `node` flattens from dim 1 (program.lower's rule; older basisrt: only
    nn.Flatten / torch.flatten / x.flatten with start_dim=1)."""
    try:
        from basisrt.compiler.patterns import flatten_source
        return flatten_source(gm, node)
    except ImportError:
        from basisrt.compiler.program import _is_flatten
        return node.args[0] if _is_flatten(gm, node) else None


def _is_scalar(node) -> bool:
    try:
        from basisrt.compiler.program import _is_scalar as is_scalar
        return is_scalar(node)
    except ImportError:
        return False


def blockers(gm, input_shape: tuple[int, ...]) -> list[dict]:
    """Every node of the fx plan `gm` that `basisrt.compiler.program.lower` would refuse, with a
    short kind (to count across models), a detail and the module class it sits in.

    The checks are those of program.lower / _add_conv / _add_pool / _add_affine / _add_cat /
    _fusable_pool (copied, not modified; its pattern helpers imported). Unlike lower, it goes on
    after a refusal: the refused node's output becomes a buffer of its shape (4-D: NHWC map;
    2-D: flat), so later nodes are judged as if the refused op were implemented. The first
    entry is checked against the node where the real `lower` stops (`first_blocker_by_lower`)."""
    from torch import fx, nn
    from basisrt.compiler.cpu_kernels import ChannelAffineStep, FusedConv2d, FusedLinear, PoolStep, TorchConvStep
    from basisrt.compiler.program import _is_channel_cat

    class Buf:
        _next = 0

        def __init__(self, hwc, flat, id_=None):
            self.hwc, self.flat = hwc, flat
            if id_ is None:
                id_, Buf._next = Buf._next, Buf._next + 1
            self.id = id_

    found: list[dict] = []
    bufs: dict = {}  # node -> Buf (tensors of a shape the program can hold: 4-D NCHW or 2-D)
    views: set[int] = set()
    fused_pool_nodes: set = set()

    def block(node, kind: str, detail: str = "") -> None:
        found.append(dict(kind=kind, detail=detail, node=node.name, target=str(node.target), owner=_owner(node)))

    def buf_from_meta(node):
        s = _shape(node)
        if s is not None and len(s) == 4:
            return Buf((s[2], s[3], s[1]), False)
        if s is not None and len(s) == 2:
            return Buf((1, 1, s[1]), True)
        return None

    def label(node) -> str:
        if node.op == "call_module":
            return f"call_module {type(gm.get_submodule(node.target)).__name__}"
        if node.op == "call_function":
            return f"call_function {_fn_name(node.target)}" + (" (inplace=True)" if node.kwargs.get("inplace") else "")
        return f"{node.op} {node.target}"

    if len(input_shape) != 3:
        return [dict(kind="input not (C, H, W)", detail=str(input_shape), node="x", target="", owner="")]
    c, h, w = input_shape
    placeholders = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            placeholders += 1
            if placeholders > 1:
                block(node, "a second input")
            bufs[node] = Buf((h, w, c), False)
            continue
        if node.op == "output":
            arg = node.args[0]
            out = bufs.get(arg) if isinstance(arg, fx.Node) else None
            if not isinstance(arg, fx.Node):
                block(node, "output not a single tensor", type(arg).__name__)
            elif out is None:
                block(node, "output of unsupported shape", str(_shape(arg)))
            elif out.id == 0:
                block(node, "output is the input")
            elif out.id in views:
                block(node, "output is a part of a concatenation")
            elif out.flat and out.hwc[:2] != (1, 1):
                block(node, "output is a flattened map larger than 1x1", f"{out.hwc}")
            continue
        if _is_scalar(node):
            continue  # sizes feeding a flatten's shape: lower skips them
        src = _flatten_source(gm, node)
        if src is not None and src in bufs and not bufs[src].flat:
            b = bufs[src]
            bufs[node] = Buf(b.hwc, True, b.id)  # a map larger than 1x1 is fine only for a linear reading it whole
            continue
        if _is_channel_cat(node):
            parts = node.args[0] if node.args else node.kwargs["tensors"]
            pb = [bufs.get(a) for a in parts]
            why = None
            if not parts or None in pb:
                why = "a part not 4-D / 2-D: " + ", ".join(str(_shape(a)) for a in parts if bufs.get(a) is None)
            elif any(p.flat for p in pb):
                why = "of flat (N, C) parts"
            elif any(p.id == 0 for p in pb):
                why = "with the plan input as a part"
            elif any(p.id in views for p in pb):
                why = "a part already in another concatenation"
            elif len({p.id for p in pb}) != len(pb):
                why = "a repeated part"
            elif len({p.hwc[:2] for p in pb}) != 1:
                why = "parts of different sizes"
            if why is not None:
                block(node, f"call_function torch.cat ({why.split(':')[0]})", why)
            else:
                for p in pb:
                    views.add(p.id)
            made = buf_from_meta(node)
            if made is not None:
                bufs[node] = made
            continue
        if node.op == "call_module":
            if node in fused_pool_nodes:
                continue
            m = gm.get_submodule(node.target)
            ins = [bufs.get(a) for a in node.args]
            made = buf_from_meta(node)
            if not isinstance(m, (ChannelAffineStep, FusedConv2d, PoolStep)):
                kind = label(node)
                detail = ""
                if isinstance(m, TorchConvStep):
                    detail = m.extra_repr()
                elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                    kind += f" (output {m.output_size})"
                    detail = f"on a {_hw(_shape(node.args[0]))} map"
                elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and getattr(m, "ceil_mode", False):
                    kind += " (ceil_mode=True)"
                elif isinstance(m, nn.Flatten):
                    kind += " (of a non-4-D tensor or not from dim 1)"
                block(node, kind, detail or f"in {_owner(node) or 'top level'}: {m.extra_repr()[:80]}")
                if made is not None:
                    bufs[node] = made
                continue
            if node.kwargs:
                block(node, f"{label(node)} (keyword arguments)", str(node.kwargs))
            elif None in ins:
                shapes = [_shape(a) if isinstance(a, fx.Node) else a for a, b in zip(node.args, ins) if b is None]
                three_d = any(isinstance(t, tuple) and len(t) == 3 for t in shapes)
                kind = label(node) + (" on a 3-D (tokens) input" if three_d else " on an input of unsupported shape")
                block(node, kind, ", ".join(map(str, shapes)))
            else:
                x = ins[0]
                why = None
                if isinstance(m, PoolStep):
                    if x.flat:
                        why = "on a flat input"
                    elif min(m.geometry(*x.hwc[:2])[2]) < 1:
                        why = "empty output"
                elif isinstance(m, ChannelAffineStep):
                    if x.flat or x.hwc[2] != m.scale.numel():
                        why = "on a flat input or wrong channels"
                else:
                    linear = isinstance(m, FusedLinear)
                    oh, ow = m.output_hw(*x.hwc[:2])
                    if x.flat != linear:
                        why = "on a 4-D input (a linear over the last dim)" if linear else "on a flat input"
                    elif x.hwc[2] != m.in_channels:
                        why = f"input channels {x.hwc[2]} != {m.in_channels}"
                    elif len(ins) != 1 + m.residual:
                        why = "residual arity"
                    elif x.flat and x.hwc[:2] != m.kernel:
                        why = f"on a flattened {x.hwc[0]}x{x.hwc[1]} map it does not read as a conv"
                    elif oh < 1 or ow < 1:
                        why = "empty output"
                    elif m.residual:
                        res = ins[1]
                        if res.hwc != (oh, ow, m.out_channels) or res.flat != linear:
                            why = "residual shape differs"
                    if why is None and type(m) is FusedConv2d and not m.residual and not x.flat \
                            and len(node.users) == 1:  # program._fusable_pool
                        (user,) = node.users
                        pool = gm.get_submodule(user.target) if user.op == "call_module" else None
                        if isinstance(pool, PoolStep) and not user.kwargs and len(user.args) == 1 and \
                                pool.kind == "max" and pool.geometry(oh, ow)[:2] == ((2, 2), (2, 2)) and \
                                pool.padding == (0, 0) and oh % 2 == 0 and ow % 2 == 0:
                            fused_pool_nodes.add(user)
                            bufs[user] = buf_from_meta(user)
                if why is not None:
                    block(node, f"{label(node)} ({why.split(' (')[0].split(' {')[0]})", why)
            if made is not None:
                bufs[node] = made
            continue
        # call_function / call_method / get_attr: nothing of these runs natively
        s = _shape(node)
        ins_shapes = [_shape(a) for a in node.args if isinstance(a, fx.Node)]
        detail = f"in {_owner(node) or 'top level'}; " + " ".join(str(t) for t in ins_shapes) + f" -> {s}"
        kind = label(node)
        if node.op == "get_attr":
            kind = "get_attr (a parameter / buffer read as a tensor)"
        elif node.meta.get("tensor_meta") is None:  # h // 2, ... on sizes: no tensor
            kind = "shape arithmetic (no tensor)"
            detail = f"{label(node)} in {_owner(node) or 'top level'}"
        elif node.op == "call_function" and node.target in (operator.add, operator.iadd) and len(ins_shapes) == 2:
            kind += " (add not fused into a conv)"
        elif node.op == "call_method" and node.target in ("view", "reshape", "flatten") or \
                node.op == "call_function" and _fn_name(node.target) in ("torch.flatten", "torch.reshape"):
            kind += " (not a flatten of an NCHW map from dim 1)"
        block(node, kind, detail)
        made = buf_from_meta(node)
        if made is not None:
            bufs[node] = made
    return found


def first_blocker_by_lower(gm, input_shape) -> tuple[bool, str | None]:
    """(whether program.lower lowers `gm`, the name of the node it stopped at): the real lower,
    watched with sys.settrace (its loop variable `node` when it returns None)."""
    from basisrt.compiler import program
    code, seen = program.lower.__code__, {}

    def local(frame, event, arg):
        if event == "return":
            seen["node"], seen["ret"] = frame.f_locals.get("node"), arg
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is code else None
    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        res = program.lower(gm, input_shape)
    finally:
        sys.settrace(old)
    node = seen.get("node")
    return res is not None, (None if res is not None or node is None else node.name)


# --------------------------------------------------------------------------- one model

class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("per-model timeout")


def _exc(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def _rel_err(out, ref) -> float:
    import torch
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
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


def weight_readers(model, x) -> list[str]:
    """Basis layers whose `.weight` the model's own forward reads (Swin's attention passes
    `self.qkv.weight` to F.linear): found by answering that read with the dense weight."""
    import torch
    from basisrt.layers import BasisConv2d, BasisLinear
    names = {id(m): n for n, m in model.named_modules() if isinstance(m, (BasisConv2d, BasisLinear))}
    hits: list[str] = []
    classes = (BasisConv2d, BasisLinear)
    saved = {c: c.__dict__.get("__getattr__") for c in classes}

    def spy(self, attr):
        if attr == "weight" and id(self) in names:
            hits.append(names[id(self)])
            return self.dense_weight()
        return torch.nn.Module.__getattr__(self, attr)
    try:
        for c in classes:
            c.__getattr__ = spy
        with torch.no_grad():
            model(x)
    finally:
        for c in classes:
            if saved[c] is None:
                del c.__getattr__
            else:
                c.__getattr__ = saved[c]
    return sorted(set(hits))


def survey_model(name: str, size: int, timeout: int, calibrate_bn: bool = True) -> dict:
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
        try:
            with torch.no_grad():
                pruned(x)
        except Exception as e:  # noqa: BLE001 - the decomposed model no longer runs eagerly
            readers = weight_readers(pruned, x)
            r["decompose_breaks_forward"] = _exc(e)
            if not readers:
                raise
            # keep those layers as they are, and survey the rest as asked
            r["also_excluded"] = readers
            exclude += tuple(readers)
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
        r["torch_steps"] = [f"{s.name}: {s.detail}"[:120] for s in compiled.plan.steps if s.strategy == "torch"]
        r["onednn_steps"] = sum("(torch)" in s.detail for s in compiled.plan.steps)  # TorchConvStep
        mark("run")
        try:
            out = compiled(x)
            r["rel_err"] = _rel_err(out, ref)
            r["ref_rms"] = float(ref.double().pow(2).mean().sqrt()) if isinstance(ref, torch.Tensor) else None
        except Timeout:
            raise
        except Exception as e:  # noqa: BLE001
            r["run_error"] = _exc(e)
            out = None
        mark("save_load")
        try:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, f"{name}.basisrt")
                compiled.save(path)
                r["plan_bytes"] = os.path.getsize(path)
                loaded = basisrt.load(path)
                y2 = loaded(x)
                r["loaded_native"] = loaded.native is not None
                if out is not None:
                    r["save_load_equal"] = bool(torch.equal(y2, out))
                    r["save_load_max_diff"] = float((y2 - out).abs().max())
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
            found = blockers(ours.module, tuple(x.shape[1:]))
            lowered, stop = first_blocker_by_lower(ours.module, tuple(x.shape[1:]))
            r["lower_stops_at"] = stop
            if found and stop is not None and found[0]["node"] != stop:
                r["analysis_warning"] = f"lower() stops at {stop}, the analysis' first blocker is {found[0]['node']}"
            r["blockers"] = found
            r["blocker_kinds"] = dict(Counter(b["kind"] for b in found).most_common())
            if found and ours.native is not None:
                r["analysis_warning"] = "ours-only plan lowered, yet the analysis found blockers"
            if not found and ours.native is None:
                r["analysis_warning"] = "ours-only plan did not lower, but the analysis found no blocker"
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

def run_worker(name: str, size: int, timeout: int, calibrate_bn: bool = True) -> dict:
    """`survey_model` in a fresh interpreter: crashes (a signal in C++) are recorded, not fatal."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        tmp = f.name
    cmd = [sys.executable, __file__, "--worker", name, "--size", str(size), "--timeout", str(timeout),
           "--worker-out", tmp] + ([] if calibrate_bn else ["--no-calibrate"])
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
    lines = ["| model | params | S | compiled | native | rel err | save/load | blocking ops (kind ×count) |",
             "| --- | ---: | ---: | --- | --- | ---: | --- | --- |"]
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
        if r.get("also_excluded"):
            notes.append(f"{len(r['also_excluded'])} layers kept undecomposed: the model reads their `.weight` "
                         f"({r['decompose_breaks_forward']})")
        if (r.get("calibration") or {}).get("zero_weights_reinit"):
            notes.append("zero-init weights re-drawn: " + ", ".join(r["calibration"]["zero_weights_reinit"]))
        if r.get("analysis_warning"):
            notes.append(r["analysis_warning"])
        if notes:
            blk = (blk or "–") + " — *" + "; ".join(notes) + "*"
        lines.append(f"| {r['model']} | {_fmt_params(r.get('params'))} | {r['size']} | yes | {native} | {err} | "
                     f"{sl} | {blk or '–'} |")
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
           "- decomposing breaks the eager model (layers whose `.weight` it reads were kept as they are): "
           + ("; ".join(f"{r['model']}: {len(r['also_excluded'])} layers ({r['decompose_breaks_forward']})"
                        for r in done if r.get("also_excluded")) or "none"),
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
            "| # | op kind | models | sole | occurrences | models blocked |", "| ---: | --- | ---: | ---: | ---: | --- |"]
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
    ap.add_argument("--models", nargs="*", help="model names (default: all torchvision classification models)")
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
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        r = survey_model(args.worker, args.size, args.timeout, not args.no_calibrate)
        with open(args.worker_out, "w") as f:
            json.dump(r, f, default=str)
        return 0

    import torch
    import torchvision
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous, rerun = {}, set(args.models or ())
    if args.resume and out.exists():
        previous = {r["model"]: r for r in json.loads(out.read_text())["results"]}
        # --resume --models A B: run A and B again, keep every other model of the file
        names = [n for n in previous if n not in rerun] + [n for n in names if n not in previous or n in rerun]
        order = torchvision.models.list_models(module=torchvision.models)
        names.sort(key=lambda n: order.index(n) if n in order else len(order))
    meta = dict(date=datetime.date.today().isoformat(), torch=torch.__version__, torchvision=torchvision.__version__,
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
            r = dict(model=name, params=params, skipped=f"{params / 1e6:.0f}M parameters > {args.max_params / 1e6:.0f}M")
        else:
            t = time.perf_counter()
            r = survey_model(name, args.size, args.timeout, not args.no_calibrate) if args.in_process else \
                run_worker(name, args.size, args.timeout, not args.no_calibrate)
            r.setdefault("params", params)
            r["wall_seconds"] = round(time.perf_counter() - t, 1)
        results.append(r)
        status = r.get("skipped") or r.get("error") or (
            f"compiled={r.get('compiled')} native={r.get('native')} rel_err={r.get('rel_err', float('nan')):.1e} "
            f"save_load={r.get('save_load')} blockers={list((r.get('blocker_kinds') or {}).items())[:3]}")
        print(f"[{i}/{len(names)}] {name}: {status}", flush=True)
        out.write_text(json.dumps(dict(meta=meta, results=results), indent=1, default=str))
    table, summ = markdown(results), summary(results)
    print("\n" + table + "\n\n" + summ)
    if args.markdown:
        Path(args.markdown).write_text(f"{table}\n\n{summ}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
