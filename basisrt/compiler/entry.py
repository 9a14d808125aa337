"""`basisrt.compile` and `basisrt.explain`: capture, normalise, fuse, and wrap the result as a
drop-in callable; on the CPU, the race between the mixed plan and the all-native one."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .autotune import (
    MeasuredChooser,
    faster_bf16_direct,
    faster_direct,
    faster_in,
    faster_in_fp32,
    layer_inputs,
    paired_seconds,
    step_seconds,
)
from .backends import resolve_backend
from .bf16 import check_precision
from .capture import capture as capture_graph
from .compiled import CompiledModel, Explanation, Plan, Step, check_input
from .cost_model import cost_model_choice, keep_mixed, step_macs
from .cpu_steps import FusedConv2d
from .cuda_graph import require_cuda_device
from .fusion import fuse
from .geometry import ConvGeometry
from .normalize import normalize
from .signature import input_name, output_class
from .strategy import Chooser, Layer, Strategy


def _check_model(model: nn.Module, example_input: Tensor, num_threads: int | None) -> None:
    """Clear errors (and a warning) for what compile cannot or will not do with `model`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile expects an nn.Module, got {type(model).__name__}")
    check_input(example_input, example_input.device, example_input.dtype, None)
    if num_threads is not None and (not isinstance(num_threads, int) or not 1 <= num_threads <= MAX_THREADS):
        raise ValueError(f"num_threads must be None or an int in [1, {MAX_THREADS}], got {num_threads!r}")
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(f"{type(model).__name__} has parameters on the meta device (shapes without values): load "
                         "its weights first (model.to_empty(device='cpu'), then load_state_dict)")
    if model.training:
        warnings.warn(f"basisrt.compile: {type(model).__name__} is in training mode; the plan runs it as in eval mode "
                      "(BatchNorm running statistics, no dropout). Call model.eval() first to silence this.",
                      stacklevel=3)


def _check_single_input(model: nn.Module, graph: fx.Graph) -> None:
    required = [n.target for n in graph.nodes if n.op == "placeholder" and not n.args]
    if len(required) > 1:
        raise ValueError(f"basisrt.compile runs models of one tensor input; {type(model).__name__}.forward takes "
                         f"{len(required)} ({', '.join(map(str, required))})")


# Each Winograd conv (pair or dense) timed against its direct path at compile
# (autotune.faster_direct); False keeps all their Winograd weights (tests that need the path
# whatever the timing says)
WINOGRAD_CHOICE = True
BF16_CHOICE_PASSES = 3  # each one only moves convs to fp32, so it ends; two sufficed on VGG16 and ResNet-18
MAX_THREADS = 1024  # the C++ kernels' cap (csrc/shape_checks.h: kMaxThreads)


def compile(model: nn.Module, example_input: Tensor, *, prefer_lowrank: bool = True, autotune: bool = False,
            num_threads: int | None = None, dense_backend: str = "auto", backend: str = "auto",
            cuda_graph: bool = False, capture: str = "auto", precision: str = "fp32",
            max_error: float | None = 1e-2) -> CompiledModel:
    """Compile `model` for inference into a plan of fused kernels (C++ on the CPU, Triton on CUDA).

    Traces with torch.fx (basis layers stay whole; TorchDynamo where fx cannot), folds BatchNorm
    into the preceding conv, fuses residual adds and activations (ReLU, ReLU6, SiLU, sigmoid,
    hard-swish, hard-sigmoid, leaky ReLU, GELU) into the conv epilogue, drops what is the identity
    in eval mode (dropout, stochastic depth), and picks per layer the fused low-rank kernel or a
    dense fold, whichever needs fewer MACs. Pools, squeeze-excitation gates, unfused adds, channel
    shuffles and slices and concatenations run in basisrt's kernels too; when every op does, the
    plan is one native C++ program (`.native`), else `.plan.not_native` (and `basisrt.explain`) says
    which ops kept it from being one. Operations the plan does not own run through PyTorch. The
    model itself is not modified.

    Args:
        model: a float32 model (plain, decomposed or pruned). It is compiled as in eval mode
            (BatchNorm running statistics, no dropout): a model in training mode gets a warning.
        example_input: an input of the shape the plan will be called with (batch may differ).
        prefer_lowrank: if False, fold every basis pair to a dense conv.
        autotune: choose per layer by timing on `example_input` instead of by the MAC count:
            our fused kernel, the pair as two oneDNN convs or the dense fold for a basis pair, our
            dense kernel or oneDNN for a plain conv. A PyTorch step is charged the slowdown its
            spinning OpenMP workers cause our next step. Decisions are cached per shape.
        num_threads: kernel threads (default: torch.get_num_threads() at call time).
        dense_backend: "torch" runs dense steps with PyTorch's conv (oneDNN, per conv often a
            little faster), "basisrt" with our C++ kernel. "auto" (default) starts from "torch", and on the
            CPU also builds the plan of only our kernels, which runs as one C++ program without a
            Python round trip per step, and keeps whichever is faster on `example_input`. A plan
            that still mixes PyTorch's ops with ours is then timed against the plan of only
            PyTorch's steps (BatchNorm and activations folded, basis pairs as two convs), and
            the faster kept: handing over between the two at every op can cost more than our
            kernels save (transformer blocks), and compiling must not make a model slower.
        backend: "auto" (CUDA input: "triton", else "cpu"), "cpu" (C++ kernels) or "triton"
            (fused pairs as Triton kernels, other steps through PyTorch; on CPU tensors only
            under TRITON_INTERPRET=1, for testing).
        cuda_graph: capture the plan as a CUDA graph on the first call with each input shape and
            replay it afterwards (saves the per-step launch cost; CUDA plans only). Outputs are
            fresh tensors, never the graph's static buffers.
        capture: how the model becomes a graph (basisrt.compiler.capture): "fx" (torch.fx
            tracing), "dynamo" (TorchDynamo runs the model's Python: sizes used as ints, `if`s
            on shapes; one graph, valid for any batch size), "auto" (default): fx, and Dynamo
            with a warning where fx cannot trace the model.
        precision: "fp32" (default), or "bf16": convs and linears with one group run with bf16
            weights and fp32 accumulation, on AMX tiles, or on AVX512-BF16 vectors where the CPU
            has no AMX (about 1e-2 relative error on whole models, as other engines' bf16 modes);
            maps between bf16 convs (and pools) are bf16, the other ops and their maps fp32, and
            so is a basis pair's output between its two convs (rounded once, as a map). Each
            such conv is timed on `example_input` in both precisions, inside the plan, and one
            that runs faster in fp32 stays fp32 (`prefer_fp32` on its step, saved with the plan):
            without AMX a low rank or a small map at batch 1 often does. CPU plans on machines
            with AVX512-BF16 only (Intel Cooper Lake, Sapphire Rapids or newer; AMD Zen 4 or
            newer); elsewhere a ValueError. Dense convs then run on basisrt's kernel
            (dense_backend "auto" means "basisrt"). Where the CPU has no AMX, 3×3 stride-1 convs
            with input channels in multiples of 32 run by Winograd in bf16 (the transformed input
            rounded to bf16 too: about 1.5x the direct bf16 conv's error per layer).
        max_error: at precision "bf16", the largest relative error (‖y − y_fp32‖ / ‖y_fp32‖) of
            the plan's output on `example_input` against the fp32 plan's. Where it is exceeded,
            convs change one at a time until it holds, in the order of error taken off per second
            added (each change tried alone first): a pair carries its basis output as two bf16
            parts (hi + lo, about fp32's error there), a conv by Winograd goes back to the direct
            bf16 conv, a bf16 conv goes to fp32 (`bf16_hilo`, `bf16_direct`, `prefer_fp32` on
            their steps, saved with the plan). None: no bound. The bound holds on `example_input`
            only: give a batch of representative inputs (on one random image of a random-init
            VGG16, whose output is tiny, other images gave up to 2.5e-2 under a bound of 1e-2).
    """
    if not isinstance(example_input, Tensor):
        raise TypeError("example_input must be a torch.Tensor")
    _check_model(model, example_input, num_threads)
    example_input = check_input(example_input, example_input.device, example_input.dtype, None)
    if cuda_graph:
        require_cuda_device(example_input.device)  # before the work of tracing
    backend = resolve_backend(backend, example_input.device)
    check_precision(precision, example_input.device, example_input.dtype)
    if max_error is not None and (isinstance(max_error, bool) or not isinstance(max_error, (int, float))
                                  or not 0 < max_error < float("inf")):
        raise ValueError(f"max_error must be a positive number or None, got {max_error!r}")
    if dense_backend not in ("auto", "torch", "basisrt"):
        raise ValueError(f"dense_backend must be 'auto', 'torch' or 'basisrt', got {dense_backend!r}")
    if precision == "bf16" and dense_backend == "auto":
        dense_backend = "basisrt"  # PyTorch's dense conv steps would stay fp32
    try_ours = autotune or dense_backend == "auto"
    dense_backend = "torch" if dense_backend == "auto" else dense_backend
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        try:  # the output's container class, which the graph flattens (compiler/signature.py)
            returns = output_class(model(example_input[:1]))
        except Exception:  # noqa: BLE001 - the model's own error; ShapeProp below reports it with context
            returns = None
    gm = capture_graph(model, example_input, capture)
    _check_single_input(model, gm.graph)
    with torch.no_grad():
        try:
            ShapeProp(gm).propagate(example_input)
        except Exception as e:  # the model's own error on this input, without fx's long trace
            cause = e.__cause__ or e
            raise ValueError(f"basisrt.compile: {type(model).__name__} fails on example_input of shape "
                             f"{tuple(example_input.shape)}: {type(cause).__name__}: {cause}") from e
    normalize(gm)
    if not prefer_lowrank:
        choose = None
    elif autotune:
        steps = sum(n.op in ("call_module", "call_function", "call_method") for n in gm.graph.nodes)
        choose = MeasuredChooser(layer_inputs(model, example_input), num_threads, dense_backend, backend=backend,
                                 steps=steps)
    else:
        choose = cost_model_choice
    race_pytorch = try_ours and backend == "cpu" and precision == "fp32"  # an explicit dense_backend is kept
    compiled = _build(copy.deepcopy(gm), choose, example_input, num_threads, dense_backend, backend, cuda_graph,
                      precision, max_error)
    if try_ours and compiled.native is None and backend == "cpu":
        # Some PyTorch step keeps the whole plan out of the native program; time the plan of
        # only our kernels against it and keep the faster.
        ours = _build(copy.deepcopy(gm) if race_pytorch else gm, _ours_only(choose), example_input, num_threads,
                      dense_backend, backend, cuda_graph, precision, max_error)  # gm itself kept for the PyTorch plan
        if ours.native is not None:
            times = paired_seconds({"mixed": compiled, "ours": ours}, example_input, repeats=7)
            compiled = compiled if keep_mixed(times["mixed"], times["ours"]) else ours
    if race_pytorch and compiled.native is None:
        # A mixed plan hands over between PyTorch and our kernels at every op boundary (in
        # transformer blocks, dozens per block), and each side's threads get in the other's way:
        # it can run slower than PyTorch alone. Keep the plan of only PyTorch's steps where it is
        # faster, so compiling never costs speed.
        pytorch = _build(gm, _pytorch_only(choose), example_input, num_threads, "torch", "torch", cuda_graph,
                         precision, max_error)
        times = paired_seconds({"mixed": compiled, "pytorch": pytorch}, example_input, repeats=7)
        compiled = pytorch if times["pytorch"] < times["mixed"] else compiled
    compiled.input_name, compiled.output_class = input_name(model), returns
    return compiled


def _ours_only(choose: Chooser | None) -> Chooser:
    """`choose` restricted to our kernels: the measured chooser picks the fastest of ours; a fixed
    choice swaps PyTorch's dense conv for ours and the oneDNN pair for the fused kernel."""
    if isinstance(choose, MeasuredChooser):
        choose.ours_only = True
        return choose

    def ours(name: str, fused: Layer | None, dense: Layer, geometry: ConvGeometry | None) -> Strategy:
        return Strategy(choose(name, fused, dense, geometry) if choose is not None else Strategy.DENSE).ours()
    return ours


def _pytorch_only(choose: Chooser | None) -> Chooser:
    """`choose` with PyTorch's convs for ours: a basis pair as its two convs, a dense conv oneDNN's."""
    def pytorch(name: str, fused: Layer | None, dense: Layer, geometry: ConvGeometry | None) -> Strategy:
        s = Strategy(choose(name, fused, dense, geometry)) if choose is not None else Strategy.DENSE
        return {Strategy.FUSED: Strategy.PAIR, Strategy.DENSE_BASISRT: Strategy.DENSE}.get(s, s)
    return pytorch


def _build(gm: fx.GraphModule, choose: Chooser | None, example_input: Tensor, num_threads: int | None,
           dense_backend: str, backend: str, cuda_graph: bool, precision: str = "fp32",
           max_error: float | None = None) -> CompiledModel:
    """Fuse `gm` (in place) into plan steps and wrap it with its Plan."""
    strategies = fuse(gm, choose, num_threads, dense_backend, backend)
    gm.eval()  # an inference plan: the step modules fuse() adds start in training mode
    plan = Plan()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            strategy = strategies.get(node.target, Strategy.TORCH)
            m = gm.get_submodule(node.target)
            plan.steps.append(Step(node.target, strategy, step_macs(m, _out_shape(node)), m.extra_repr()))
        elif node.op in ("call_function", "call_method"):
            plan.steps.append(Step(node.name, Strategy.TORCH, 0, str(getattr(node.target, "__name__", node.target))))
    args = (tuple(example_input.shape[1:]), example_input.dtype, example_input.device, cuda_graph)
    if WINOGRAD_CHOICE:
        _choose_direct(gm, plan, args, example_input)
    if precision == "bf16":  # pairs round their basis output once (the error bound may split it)
        for m in gm.modules():
            if isinstance(m, FusedConv2d) and m.rank:
                m.bf16_hilo = False
    compiled = CompiledModel(gm, plan, *args, precision)
    if precision == "bf16":
        if WINOGRAD_CHOICE:
            compiled = _choose_bf16_direct(gm, plan, args, example_input, compiled)
        # The convs that run faster in fp32 stay fp32. Again on the new plan: a bf16 conv can lose
        # what it gained from a neighbour's bf16 map once that neighbour is fp32 (VGG16's stem).
        fp32 = CompiledModel(copy.deepcopy(gm), copy.copy(plan), *args, "fp32")
        for _ in range(BF16_CHOICE_PASSES):
            slower = _confirmed(gm, plan, args, example_input, compiled, "prefer_fp32",
                                faster_in_fp32(compiled, fp32, example_input))
            if not slower:
                break
            for name in slower:
                gm.get_submodule(name).prefer_fp32 = True
            for step in plan.steps:
                if step.name in slower:
                    step.detail = gm.get_submodule(step.name).extra_repr()
            compiled = CompiledModel(gm, plan, *args, precision)
        if max_error is not None:
            compiled = _bound_bf16_error(gm, plan, args, example_input, fp32, compiled, max_error)
    return compiled


def _relative_error(got: object, want: object) -> float:
    """‖got − want‖ / ‖want‖ over every tensor of two outputs of the same structure, where `want`
    is finite (an example input may hold NaN); inf where `got` is not finite and `want` is."""
    def leaves(o: object) -> list[Tensor]:
        if isinstance(o, Tensor):
            return [o]
        items = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()
        return [t for i in items for t in leaves(i)]
    diff = ref = 0.0
    for g, w in zip(leaves(got), leaves(want)):
        finite = torch.isfinite(w)
        g, w = g.double()[finite], w.double()[finite]
        if not torch.isfinite(g).all():
            return float("inf")
        diff, ref = diff + float((g - w).norm() ** 2), ref + float(w.norm() ** 2)
    return (diff / max(ref, 1e-300)) ** 0.5


def _bound_bf16_error(gm: fx.GraphModule, plan: Plan, args: tuple, x: Tensor, fp32: CompiledModel,
                      compiled: CompiledModel, max_error: float) -> CompiledModel:
    """The bf16 plan with its output on `x` within `max_error` (relative) of the fp32 plan's, where
    it was not. Three changes per conv take error off: a pair's basis output carried as bf16 hi +
    lo (`bf16_hilo`: twice the scaling conv's MACs), a conv by Winograd back to the direct bf16
    conv (`bf16_direct`: its error per layer is about 1.5x the direct conv's), the conv in fp32
    (`prefer_fp32`). Each is tried alone for the error it takes off, and timed for what it adds
    (`_change_costs`); they are made in the order of error taken off per second added, those that
    add none first, until the bound holds; then each change the bound holds without is undone,
    the costliest first. By kind instead (every conv's cheapest change first), VGG16 at rank 10 %,
    batch 32 ended with 4 direct convs at 2x the Winograd conv's time. Saved with the plan, as the
    timed choices are."""
    with torch.inference_mode():
        want = fp32(x)
        err = _relative_error(compiled(x), want)
        if err <= max_error:
            return compiled
        options = [(name, flag) for name, m in gm.named_modules() if getattr(m, "_bf16", None) is not None
                   for flag in ("bf16_hilo", "bf16_direct", "prefer_fp32") if _can_change(m, flag)]
        costs = _change_costs(gm, plan, args, x, fp32, compiled, options)
        scored = []
        for name, flag in options:  # each flag False now: set alone, then back
            m = gm.get_submodule(name)
            setattr(m, flag, True)
            gain = err - _relative_error(CompiledModel(gm, plan, *args, "bf16")(x), want)
            setattr(m, flag, False)
            cost = costs.get((name, flag), 0.0)
            scored.append(((0, -gain) if gain > 0 and cost <= 0 else (1, -gain / cost) if gain > 0
                           else (2, -gain), name, flag, cost))
        made: list[tuple[float, str, str]] = []  # (seconds added, conv, flag) of each change made
        held = False
        for _, name, flag, cost in sorted(scored):
            m = gm.get_submodule(name)
            if m.prefer_fp32:  # already fp32: its other flags change nothing
                continue
            setattr(m, flag, True)
            made.append((cost, name, flag))
            compiled = CompiledModel(gm, plan, *args, "bf16")
            held = _relative_error(compiled(x), want) <= max_error
            if held:
                break
        if held and len(made) > 1:
            # A change alone took off error that later ones may take off too: undo each that the
            # bound does without, the costliest first (VGG16 at rank 10 %, batch 32: 8 changes made).
            for _, name, flag in sorted(made, reverse=True):
                setattr(gm.get_submodule(name), flag, False)
                if _relative_error(CompiledModel(gm, plan, *args, "bf16")(x), want) > max_error:
                    setattr(gm.get_submodule(name), flag, True)
            compiled = CompiledModel(gm, plan, *args, "bf16")  # the flags as they are now
    for step in plan.steps:
        if step.name in {name for _, name, _ in made}:
            step.detail = gm.get_submodule(step.name).extra_repr()
    return compiled  # built after the last flag set


def _can_change(m: FusedConv2d, flag: str) -> bool:
    """Whether the error bound's change `flag` applies to bf16 step `m` (and is not made yet)."""
    if flag == "bf16_hilo":
        return bool(m.rank) and not m.bf16_hilo
    if flag == "bf16_direct":
        return m._bf16.winograd is not None
    return True


def _change_costs(gm: fx.GraphModule, plan: Plan, args: tuple, x: Tensor, fp32: CompiledModel,
                  compiled: CompiledModel, options: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Seconds each change (conv, flag) adds to its conv: the plan timed against the same plan with
    each kind of change made on every conv at once (and the fp32 plan), step by step, interleaved
    as the per-conv precision choice times them. A pool that the fp32 conv fuses counts as the bf16
    conv's. Timed from one call per candidate instead (the first version), ops of 20-100 µs at
    batch 1 were off by tens of percent, and VGG16 at rank 25 %, batch 1 ran 1.4x slower."""
    variants = []
    with torch.inference_mode(False):  # a copy's weights as inference tensors: no version (bf16._packed_once)
        for flag in ("bf16_hilo", "bf16_direct"):
            if any(f == flag for _, f in options):
                variant = copy.deepcopy(gm)
                for name, f in options:
                    if f == flag:
                        setattr(variant.get_submodule(name), flag, True)
                variants.append((flag, CompiledModel(variant, copy.copy(plan), *args, "bf16")))
    variants.append(("prefer_fp32", fp32))
    now, *then = step_seconds([compiled] + [v for _, v in variants], x)
    pools = fp32.native.fused_pools if fp32.native is not None else {}
    for pool, conv in pools.items():  # the fp32 conv runs the pool its bf16 one leaves to an op
        now[conv] = now.get(conv, 0.0) + now.get(pool, 0.0)
    return {(name, flag): seconds[name] - now[name] for (flag, _), seconds in zip(variants, then)
            for name, f in options if f == flag and name in seconds and name in now}


def _choose_direct(gm: fx.GraphModule, plan: Plan, args: tuple, x: Tensor) -> None:
    """Marks `prefer_direct` (saved with the plan) on the Winograd convs that run faster on the
    direct path at this input, and drops their Winograd weights. The direct plan is a copy: a plan
    that is not native times its steps on their modules."""
    if not any(getattr(m, "winograd", None) is not None for m in gm.modules()):
        return
    direct = copy.deepcopy(gm)
    for m in direct.modules():
        if isinstance(m, FusedConv2d):
            m.winograd = None
    with_weights = CompiledModel(gm, plan, *args, "fp32")
    slower = _confirmed(gm, plan, args, x, with_weights, "prefer_direct",
                        faster_direct(with_weights, CompiledModel(direct, copy.copy(plan), *args, "fp32"), x))
    for name in slower:
        m = gm.get_submodule(name)
        m.prefer_direct = True
        m.after_load()
    for step in plan.steps:
        if step.name in slower:
            step.detail = gm.get_submodule(step.name).extra_repr()


def _choose_bf16_direct(gm: fx.GraphModule, plan: Plan, args: tuple, x: Tensor,
                        compiled: CompiledModel) -> CompiledModel:
    """Marks `bf16_direct` (saved with the plan) on the convs by Winograd in bf16 that run faster as
    the direct bf16 conv at this input (autotune.faster_bf16_direct), and returns the plan then."""
    direct = copy.deepcopy(gm)
    for m in direct.modules():
        if isinstance(m, FusedConv2d):
            m.bf16_direct = True
    slower = _confirmed(gm, plan, args, x, compiled, "bf16_direct",
                        faster_bf16_direct(compiled, CompiledModel(direct, copy.copy(plan), *args, "bf16"), x))
    if not slower:
        return compiled
    for name in slower:
        gm.get_submodule(name).bf16_direct = True
    for step in plan.steps:
        if step.name in slower:
            step.detail = gm.get_submodule(step.name).extra_repr()
    return CompiledModel(gm, plan, *args, "bf16")


def _confirmed(gm: fx.GraphModule, plan: Plan, args: tuple, x: Tensor, compiled: CompiledModel, flag: str,
               names: list[str]) -> list[str]:
    """Of `names`, the steps of `compiled` timed faster with `flag` set in a plan that sets it on
    every step, those still faster in a second timing with it set on them alone, the plan they
    would join (`faster_in` again). A step of 30-100 µs whose two ways differ by 10-30 % still
    comes out the wrong way round in some timings: ResNet-18 at rank 25 %, batch 1, bf16, its
    512-channel 4×4 convs ran 1.1-1.3x slower direct than by Winograd in most timings of either
    plan, faster direct in up to 6 of 12; one timing alone took them direct in 3 of 10 compiles."""
    if not names:
        return []
    trial = copy.deepcopy(gm)
    for name in names:
        m = trial.get_submodule(name)
        setattr(m, flag, True)
        if flag == "prefer_direct":
            m.after_load()  # drops its Winograd weights
    other = CompiledModel(trial, copy.copy(plan), *args, compiled.precision)
    charge = other.native.fused_pools if flag == "prefer_fp32" and other.native is not None else None
    return faster_in(compiled, other, x, set(names), charge=charge)


def _out_shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def explain(model: nn.Module, example_input: Tensor, **compile_options) -> Explanation:
    """Compile `model` (options as for basisrt.compile) and say which ops kept the plan from
    running as one native program, and why: what to change in the model, or to ask basisrt for."""
    compiled = compile(model, example_input, **compile_options)
    return Explanation(compiled.native is not None, list(compiled.plan.not_native), compiled.plan)
