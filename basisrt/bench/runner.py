"""The benchmark run: models × pruning levels × batch sizes × threads × engines, timed interleaved.

For each (model, threads, batch) the dense engines are built once; for each pruning level the
pruned engines are built and timed *together with* the dense ones, interleaved in one
`timing.interleaved` call, so every ratio compares passes that ran side by side. Nominal cost
comes from `basisrt.profile` (the one place for MACs); nothing here recomputes MACs.

CPU and GPU engines are timed in separate groups (a group's "device"), each against the eager
dense engine of its own device: a GPU-vs-CPU ratio says nothing about basisrt. GPU groups are
timed at the first thread count only (host threads barely touch GPU time), with TF32 off.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from .. import models as model_zoo
from ..compiler import Strategy
from ..cost import CostReport, nominal_speedup, profile
from ..decomposition import decompose
from ..pruning import prune_basis
from . import engines as eng
from .layers import time_layers
from .roofline import Roofline, measure
from .timing import ForeignLoad, Timing, interleaved, paired_ratios, summarize

LEVEL_ALIASES = {"r50": ("ratio", 0.5), "r25": ("ratio", 0.25), "r10": ("ratio", 0.1)}
LEVEL_HELP = ("r50 / r25 / r10 (keep that %% of each layer's rank), ratio:F, energy:F (singular-value energy), "
              "paper (Taylor importance 0.9 on synthetic calibration data), double (channel 0.5 + Taylor 0.9)")


# the dense inductor compile alone takes ~20-40 s on two cores: the quick run times inductor on the
# pruned model only (the full run, and `--engines`, have both)
QUICK_LEAVES_OUT = ("inductor_dense",)


BUILD_SETTLE = 10  # idle before building an engine, in units of the per-pass settle time


class LevelSkipped(Exception):
    """A pruning level that cannot be produced here; the message says why."""


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: sorted(model_zoo.REFERENCE_MODELS))
    levels: list[str] = field(default_factory=lambda: ["r50", "r25", "r10", "paper", "double"])
    batches: list[int] = field(default_factory=lambda: [1, 32])
    threads: list[int] = field(default_factory=lambda: sorted({1, os.cpu_count() or 1}))
    engines: list[str] = field(default_factory=lambda: list(eng.ENGINES))
    rounds: int = 30
    warmup: int = 5
    min_pass_s: float = 0.05
    settle_s: float = 0.02  # idle time before each timed pass (see timing.interleaved)
    layers: bool = True
    layer_batch: int | None = None  # default: the largest batch
    layer_threads: int | None = None  # default: the first thread count
    layer_rounds: int = 15
    roofline_repeats: int = 10
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides) -> "BenchConfig":
        """Finishes in well under a minute on two cores: one model, one level, one batch, one thread."""
        base = dict(models=["vgg16"], levels=["r10"], batches=[8], threads=[1], rounds=7, warmup=1,
                    min_pass_s=0.0, layer_rounds=3, roofline_repeats=3, quick=True,
                    engines=[e for e in eng.ENGINES if e not in QUICK_LEAVES_OUT])
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def parse_level(spec: str) -> tuple[str, float]:
    """'r10' -> ('ratio', 0.1); 'energy:0.9' -> ('energy', 0.9); 'paper' / 'double' -> (spec, 0.9)."""
    if spec in LEVEL_ALIASES:
        return LEVEL_ALIASES[spec]
    if spec in ("paper", "double"):
        return spec, 0.9
    method, _, amount = spec.partition(":")
    if method not in ("ratio", "energy") or not amount:
        raise ValueError(f"unknown pruning level {spec!r}: use {LEVEL_HELP}")
    value = float(amount)
    if not 0 < value <= 1:
        raise ValueError(f"pruning level {spec!r}: the amount must be in (0, 1]")
    return method, value


def _calibration(dense: nn.Module, shape: tuple[int, ...], seed: int, batches: int = 4, size: int = 16):
    """Synthetic calibration batches: random inputs labelled by the dense model's own argmax (the
    reference models are randomly initialised; there is no target data set to take)."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(size, *shape, generator=g) for _ in range(batches)]
    with torch.no_grad():
        return [(x, dense.eval()(x).argmax(-1)) for x in xs]


def make_pruned(dense: nn.Module, decomposed: nn.Module, spec: str, input_shape: tuple[int, ...],
                seed: int = 0) -> tuple[nn.Module, str]:
    """The pruned model for level `spec` and a one-line description; LevelSkipped if it cannot be made."""
    method, amount = parse_level(spec)
    if method in ("ratio", "energy"):
        m = copy.deepcopy(decomposed)
        prune_basis(m, method, amount)
        return m.eval(), f"{method} {amount:g} (basisrt.prune_basis)"
    loader = _calibration(dense, input_shape, seed)
    if method == "paper":
        try:
            from ..importance import taylor_importance
        except ImportError as e:
            raise LevelSkipped(f"basisrt.importance.taylor_importance not available: {e}") from e
        m = copy.deepcopy(decomposed)
        scores = taylor_importance(m, loader)
        prune_basis(m, "importance", amount, scores=scores)
        return m.eval(), f"Taylor importance {amount:g} on {len(loader)} synthetic calibration batches"
    try:
        from ..channel_pruning import double_prune
    except ImportError as e:
        raise LevelSkipped(f"basisrt.channel_pruning.double_prune not available: {e}") from e
    try:
        report = double_prune(dense, loader[0][0][:1], channel_amount=0.5, basis_method="importance",
                              basis_amount=amount, loader=loader)
    except ImportError as e:
        raise LevelSkipped(f"double pruning needs a missing package: {e}") from e
    return report.model.eval(), f"double pruning: channels 0.5 then Taylor importance {amount:g} (synthetic data)"


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()}
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def _rel_err(out: object, ref: torch.Tensor) -> float:
    if isinstance(out, (list, tuple)):
        out = out[0]
    out = torch.as_tensor(out).float().cpu().reshape(ref.shape)
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _speedups(timings: dict[str, Timing], nominal: dict[str, float], reference: str = eng.REFERENCE
              ) -> tuple[dict, str | None]:
    """Per engine: nominal speedup, and measured ones against `reference` (eager dense on the same
    device; the key stays "vs_eager_dense") and against the fastest dense engine of the group."""
    ok = {n: t for n, t in timings.items() if t.walls and not t.error}
    dense = {n: t.stats().median for n, t in ok.items() if eng.group_of(n) == "dense"}
    fastest = min(dense, key=dense.get) if dense else None
    out = {}
    for name, t in ok.items():
        row = {"nominal": nominal[name]}
        for key, ref in (("vs_eager_dense", reference if reference in ok else None),
                         ("vs_fastest_dense", fastest)):
            if ref is None:
                continue
            ratios = paired_ratios(ok[ref], t)
            s = summarize(ratios)
            row[key] = {"ref": ref, **s.to_dict(), "realised": s.median / nominal[name]}
        out[name] = row
    return out, fastest


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc="bench", unit="pass", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.bar:
            self.bar.update(n)

    def status(self, text: str) -> None:
        if self.bar:
            self.bar.set_postfix_str(text[:60], refresh=True)

    def write(self, text: str) -> None:
        if self.bar:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def run(config: BenchConfig, *, progress: bool = True, command: str = "",
        log: Callable[[str], None] | None = None,
        prepared: dict[str, tuple[nn.Module, nn.Module]] | None = None) -> dict:
    """Run the benchmark; returns the raw results (what `report.write_all` turns into files).

    `prepared` maps a model name to its (dense, decomposed) pair already built by the caller
    (e.g. `basisrt demo`), so it is not built and decomposed again.
    """
    unknown = [e for e in config.engines if e not in eng.ENGINES]
    if unknown:
        raise ValueError(f"unknown engines {unknown}; valid: {', '.join(eng.ENGINES)}")
    for m in config.models:
        if m not in model_zoo.all_models() and m not in (prepared or {}):
            raise ValueError(f"unknown model {m!r}; valid: {', '.join(sorted(model_zoo.all_models()))}")
    for spec in config.levels:
        parse_level(spec)
    engines = [e for e in eng.ENGINES if e in config.engines]
    for device, reference in eng.REFERENCES.items():  # every ratio is against eager dense: always time it
        if reference not in engines and (device == "cpu" or any(eng.device_of(e) == device for e in engines)):
            engines.insert(0, reference)
    layer_batch = config.layer_batch or max(config.batches)
    layer_threads = config.layer_threads or config.threads[0]

    results: dict = {"command": command, "config": asdict(config), "machine": machine_info(),
                     "availability": eng.availability(), "rooflines": {}, "levels": {}, "skipped_levels": {},
                     "groups": [], "layers": [], "engine_status": {}}
    n_groups = len(config.models) * len(config.threads) * len(config.batches) * len(config.levels)
    n_layer = len(config.models) * len(config.levels) * (2 if config.layers else 0)
    bar = _Progress(n_groups * config.rounds + n_layer * config.layer_rounds, progress)
    say = log or bar.write
    prev_threads = torch.get_num_threads()
    try:
        with eng.full_fp32_on_gpu():  # GPU engines compare like with like (see engines)
            for threads in config.threads:
                bar.status(f"roofline, {threads} threads")
                results["rooflines"][str(threads)] = measure(threads, repeats=config.roofline_repeats).to_dict()
            for model_name in config.models:
                shape = model_zoo.input_shape(model_name)
                if prepared and model_name in prepared:
                    dense, decomposed = (m.eval() for m in prepared[model_name])
                else:
                    torch.manual_seed(config.seed)
                    dense = model_zoo.create(model_name).eval()
                    # every conv but the first (3 input channels: nothing to prune there), as in the issue
                    first = next((n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)), None)
                    decomposed = decompose(dense, exclude=[first] if first else []).model.eval()
                pruned: dict[str, nn.Module] = {}
                for spec in config.levels:
                    bar.status(f"{model_name}: pruning {spec}")
                    try:
                        pruned[spec], desc = make_pruned(dense, decomposed, spec, shape, config.seed)
                        results["levels"].setdefault(model_name, {})[spec] = desc
                    except LevelSkipped as e:
                        results["skipped_levels"].setdefault(model_name, {})[spec] = str(e)
                        say(f"[bench] {model_name} {spec}: skipped: {e}")
                        bar.update(config.rounds * len(config.threads) * len(config.batches))
                    except Exception as e:  # noqa: BLE001 - a level that fails is reported, not fatal
                        results["skipped_levels"].setdefault(model_name, {})[spec] = f"failed: {type(e).__name__}: {e}"
                        say(f"[bench] {model_name} {spec}: failed: {type(e).__name__}: {e}")
                        bar.update(config.rounds * len(config.threads) * len(config.batches))
                for threads in config.threads:
                    torch.set_num_threads(threads)
                    for batch in config.batches:
                        _run_shape(results, config, engines, model_name, dense, pruned, threads, batch,
                                   layer_batch, layer_threads, bar, say, shape)
                if any(eng.kind_of(e).endswith("inductor") for e in engines):
                    torch._dynamo.reset()  # free the compiled graphs of this model
    finally:
        torch.set_num_threads(prev_threads)
        bar.close()
    return results


def _build(results: dict, name: str, model: nn.Module, x: torch.Tensor, threads: int, cache: dict,
           ref: torch.Tensor, say, key: str, settle_s: float = 0.0,
           fresh: tuple[torch.Tensor, torch.Tensor] | None = None) -> eng.EngineRun | None:
    """Engine `name` built on `x` with its error against `ref`, and against fresh[1] on the input
    fresh[0] (another of x's shape: an engine that fits its plan to x, as basisrt's bf16 error
    bound does, shows there how far that fit carries)."""
    status = results["engine_status"]
    time.sleep(settle_s)  # an engine that measures while building (basisrt's autotune) sees a quiet machine
    try:
        run = eng.build(name, model, x, threads, cache)
    except eng.EngineSkipped as e:
        status.setdefault(name, {})[key] = f"skipped: {e}"
        return None
    except Exception as e:  # noqa: BLE001 - a failing engine is a result
        msg = f"failed: {type(e).__name__}: {str(e)[:300]}"
        status.setdefault(name, {})[key] = msg
        say(f"[bench] {name} ({key}): {msg}")
        return None
    try:
        run.info["rel_err"] = _rel_err(run.output(), ref)
    except Exception as e:  # noqa: BLE001
        run.info["rel_err"] = math.nan
        run.info["output_error"] = f"{type(e).__name__}: {e}"
    err = run.info["rel_err"]
    if fresh is not None and run.run_on is not None:
        try:
            run.info["rel_err_fresh"] = _rel_err(run.run_on(fresh[0]), fresh[1])
        except Exception as e:  # noqa: BLE001
            run.info["rel_err_fresh"] = math.nan
            run.info["output_error"] = f"{type(e).__name__}: {e}"
    tol, err_fresh = eng.tolerance(name), run.info.get("rel_err_fresh")
    if err < tol and (err_fresh is None or err_fresh < tol):
        status.setdefault(name, {})[key] = "ok"
    else:
        fresh_note = "" if err_fresh is None else f", {err_fresh:.2e} on a fresh input"
        status.setdefault(name, {})[key] = f"wrong output: rel err {err:.2e}{fresh_note}"
    return run


def _run_shape(results, config, engines, model_name, dense, pruned, threads, batch, layer_batch,
               layer_threads, bar, say, shape=(3, 32, 32)) -> None:
    g = torch.Generator().manual_seed(config.seed + batch)
    x = torch.randn(batch, *shape, generator=g)
    x_fresh = torch.randn(batch, *shape, generator=g)  # each engine's error off the input it was built on
    dense_cost = profile(dense, x)
    with torch.no_grad():
        dense_ref = dense(x)
        fresh = (x_fresh, dense(x_fresh))
    cache: dict = {}  # exported ONNX files, deleted when this shape's engines are built and timed
    try:
        _run_shape_engines(results, config, engines, model_name, dense, pruned, threads, batch, layer_batch,
                           layer_threads, bar, say, x, dense_cost, dense_ref, cache, fresh)
    finally:
        eng.remove_exports(cache)


def _run_shape_engines(results, config, engines, model_name, dense, pruned, threads, batch, layer_batch,
                       layer_threads, bar, say, x, dense_cost, dense_ref, cache, fresh) -> None:
    # GPU engines once per batch, at the first thread count
    devices = [d for d in eng.DEVICES if d == "cpu" or threads == config.threads[0]]
    dense_runs: dict[str, dict[str, eng.EngineRun]] = {d: {} for d in devices}
    for name in (e for e in engines if eng.group_of(e) == "dense" and eng.device_of(e) in devices):
        bar.status(f"{model_name} b{batch} t{threads}: build {name}")
        run = _build(results, name, dense, x, threads, cache, dense_ref, say, f"{model_name}/dense/b{batch}/t{threads}",
                     BUILD_SETTLE * config.settle_s, fresh)
        if run:
            dense_runs[eng.device_of(name)][name] = run
    for spec, pm in pruned.items():
        key = f"{model_name}/{spec}/b{batch}/t{threads}"
        pruned_cost = profile(pm, x)
        with torch.no_grad():
            pruned_ref = pm(x)
            pruned_fresh = (fresh[0], pm(fresh[0]))
        for device in devices:
            runs = dict(dense_runs[device])
            for name in (e for e in engines if eng.group_of(e) == "pruned" and eng.device_of(e) == device):
                bar.status(f"{key}: build {name}")
                run = _build(results, name, pm, x, threads, cache, pruned_ref, say, key, BUILD_SETTLE * config.settle_s,
                             pruned_fresh)
                if run:
                    runs[name] = run
            if not runs:  # e.g. no CUDA: every GPU engine was skipped, with its reason in engine_status
                continue
            _time_group(results, config, runs, model_name, spec, batch, threads, device, dense_cost, pruned_cost, bar)
            if device == "cpu" and config.layers and batch == layer_batch and threads == layer_threads:
                _per_layer(results, config, model_name, spec, dense, pm, x, dense_cost, pruned_cost, runs, threads, bar)


def _time_group(results, config, runs: dict[str, eng.EngineRun], model_name, spec, batch, threads, device,
                dense_cost: CostReport, pruned_cost: CostReport, bar) -> None:
    """Time one device's engines interleaved and record the group with its speedups."""
    bar.status(f"{model_name}/{spec}/b{batch}: timing {len(runs)} {device} engines")
    load = ForeignLoad()
    timings = interleaved({n: r.fn for n, r in runs.items()}, rounds=config.rounds, warmup=config.warmup,
                          min_pass_s=config.min_pass_s, progress=bar.update if device == "cpu" else None,
                          settle_s=config.settle_s)
    machine_load = load.stop()
    nominal = {n: (1.0 if eng.group_of(n) == "dense" else nominal_speedup(dense_cost, pruned_cost)) for n in runs}
    speedups, fastest = _speedups(timings, nominal, eng.REFERENCES[device])
    group = {"model": model_name, "level": spec, "batch": batch, "threads": threads, "device": device,
             "dense_macs": dense_cost.macs, "pruned_macs": pruned_cost.macs,
             "nominal_speedup": nominal_speedup(dense_cost, pruned_cost), "fastest_dense": fastest,
             "load": machine_load, "engines": {}, "speedups": speedups}
    for n, r in runs.items():
        group["engines"][n] = {**timings[n].to_dict(), "info": r.info}
        if r.compiled is not None and getattr(r.compiled, "plan", None) is not None:
            group["engines"][n]["plan_macs"] = sum(getattr(s, "macs", 0) for s in r.compiled.plan.steps)
    results["groups"].append(group)


def _per_layer(results, config, model_name, spec, dense, pm, x, dense_cost: CostReport, pruned_cost: CostReport,
               runs, threads, bar) -> None:
    roof = Roofline(**results["rooflines"][str(threads)])
    basis_run = runs.get("basisrt")
    plan = {}
    if basis_run is not None and basis_run.compiled is not None:
        plan = {_layer_name(s.name, pruned_cost): s for s in basis_run.compiled.plan.steps}
    for engine, model, cost in (("eager_dense", dense, dense_cost), ("eager_pruned", pm, pruned_cost)):
        bar.status(f"{model_name}/{spec}: per-layer {engine}")
        timings = time_layers(model, x, cost, rounds=config.layer_rounds, warmup=config.warmup,
                              min_pass_s=config.min_pass_s / 10, progress=bar.update)
        by_name = {l.name: l for l in cost.layers}
        for name, t in timings.items():
            if t.error or not t.walls:
                continue
            l = by_name[name]
            nbytes = l.weight_bytes + l.act_bytes + l.intermediate_bytes
            results["layers"].append(_layer_row(model_name, spec, x.shape[0], threads, engine, name, l.kind, l.rank,
                                                l.macs, nbytes, t.stats(), roof,
                                                plan[name].strategy if name in plan else ""))
    # basisrt's plans, timed inside the native program; the steps that run bf16 against the bf16 peak
    for engine in ("basisrt", "basisrt_bf16"):
        run = runs.get(engine)
        if run is None or not hasattr(run.compiled, "step_times"):
            continue
        steps_plan = {_layer_name(s.name, pruned_cost): s for s in run.compiled.plan.steps}
        by_name = {l.name: l for l in pruned_cost.layers}
        try:
            steps = run.compiled.step_times(x, max(3, config.layer_rounds))
        except Exception as e:  # noqa: BLE001
            results["engine_status"].setdefault(engine, {})[f"{model_name}/{spec}/step_times"] = f"failed: {e}"
            continue
        for step, strategy, seconds in steps:
            name = _layer_name(step, pruned_cost)
            l = by_name.get(name)
            macs = steps_plan[name].macs if name in steps_plan else (l.macs if l else 0)
            nbytes = 0
            if l is not None:  # a fused step never writes the rank-r intermediate to memory
                nbytes = l.weight_bytes + l.act_bytes + (0 if strategy == Strategy.FUSED else l.intermediate_bytes)
            s = summarize([seconds])
            kind, rank = (l.kind, l.rank) if l else ("", "")
            bf16 = getattr(_submodule(run.compiled.module, step), "_bf16", None) is not None
            results["layers"].append(_layer_row(model_name, spec, x.shape[0], threads, engine, name, kind, rank,
                                                macs, nbytes, s, roof.bf16() if bf16 else roof, strategy))


def _submodule(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def _layer_name(step: str, cost: CostReport) -> str:
    """The cost-report layer a plan step computes: the same name, or the plan's `a_b_step` for `a.b`."""
    names = {l.name for l in cost.layers}
    if step in names:
        return step
    for n in names:
        if n.replace(".", "_") + "_step" == step:
            return n
    return step


def _layer_row(model, level, batch, threads, engine, name, kind, rank, macs, nbytes, stats, roof: Roofline,
               strategy: str) -> dict:
    t = stats.median
    bound = roof.bound_s(macs, nbytes) if nbytes else 2 * macs / (roof.peak_gflops * 1e9)
    return {"model": model, "level": level, "batch": batch, "threads": threads, "engine": engine, "layer": name,
            "kind": kind, "rank": rank, "macs": macs, "bytes": nbytes, "median_s": t, "p10_s": stats.p10,
            "p90_s": stats.p90, "gflops": 2 * macs / t / 1e9 if t > 0 else 0.0, "bound_s": bound,
            "attainable_gflops": roof.attainable_gflops(macs, nbytes) if nbytes else roof.peak_gflops,
            "of_bound": bound / t if t > 0 else 0.0, "strategy": strategy}
