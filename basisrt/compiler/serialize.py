"""Save and load compiled plans without pickle and without the original model class.

One safetensors file: the tensors of every step, and in its metadata a JSON plan (the fx graph as
a node list, each module as its class and plain attributes, the input signature and the steps).
Loading runs no code from the file: functions resolve only inside torch / operator / math /
builtins, and module classes only inside torch.nn and basisrt.

Tensors are stored on the CPU with the device the plan ran on beside them, so a plan saved from
CUDA loads onto CUDA by default, or onto a device the caller names when its steps can run there.
"""
from __future__ import annotations

import builtins
import importlib
import json
import math
import operator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import fx, nn

FORMAT = "basisrt-plan/1"
_FUNCTION_MODULES = ("torch", "_operator", "operator", "math", "builtins")
_CLASS_MODULES = ("torch.nn.", "basisrt.")


def _resolve(path: str, allowed: tuple[str, ...]) -> Any:
    module, _, name = path.rpartition(".")
    if not any(module == a or module.startswith(a.rstrip(".") + ".") for a in allowed):
        raise ValueError(f"plan refers to {path!r}, outside what a plan may use ({', '.join(allowed)})")
    return getattr(importlib.import_module(module), name)


def _function_path(fn: Any) -> str:
    path = f"{fn.__module__}.{fn.__name__}"
    if _resolve(path, _FUNCTION_MODULES) is not fn:
        raise ValueError(f"cannot save a plan calling {fn!r}: it does not resolve back from {path!r}")
    return path


def _encode(v: Any, where: str) -> Any:
    """JSON form of an fx argument or a module attribute (tuples, dtypes etc. tagged)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return {"float": repr(v)} if not math.isfinite(v) else v
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if isinstance(v, (tuple, torch.Size)):
        return {"tuple": [_encode(x, where) for x in v]}
    if isinstance(v, list):
        return [_encode(x, where) for x in v]
    if isinstance(v, dict):
        return {"dict": {k: _encode(x, where) for k, x in v.items()}}
    if isinstance(v, slice):
        return {"slice": [_encode(x, where) for x in (v.start, v.stop, v.step)]}
    if v is Ellipsis:
        return {"ellipsis": True}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.memory_format):
        return {"memory_format": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    raise ValueError(f"cannot save a plan holding {type(v).__name__} at {where}")


def _decode(v: Any, nodes: dict[str, fx.Node] | None = None) -> Any:
    if isinstance(v, list):
        return [_decode(x, nodes) for x in v]
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    if tag == "node":
        return nodes[x]
    if tag == "tuple":
        return tuple(_decode(y, nodes) for y in x)
    if tag == "dict":
        return {k: _decode(y, nodes) for k, y in x.items()}
    if tag == "slice":
        return slice(*(_decode(y, nodes) for y in x))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "float":
        return float(x)
    if tag in ("dtype", "memory_format"):
        value = getattr(torch, x)
        if not isinstance(value, (torch.dtype, torch.memory_format)):
            raise ValueError(f"plan names an unknown {tag} {x!r}")
        return value
    if tag == "device":
        return torch.device(x)
    raise ValueError(f"plan holds an unknown tag {tag!r}")


def _module_entry(name: str, m: nn.Module, leaf: bool) -> dict:
    entry: dict[str, Any] = {
        "parameters": {k: p is not None for k, p in m._parameters.items()},
        "buffers": {k: b is not None for k, b in m._buffers.items()},
    }
    if leaf:
        cls = type(m)
        entry["class"] = f"{cls.__module__}.{cls.__qualname__}"
        _resolve(entry["class"], _CLASS_MODULES)
        entry["attrs"] = {k: _encode(v, f"{name}.{k}") for k, v in vars(m).items()
                          if not k.startswith("_") and not isinstance(v, (torch.Tensor, nn.Module))}
    return entry


def save_plan(compiled, path: str | Path) -> None:
    """Write `compiled` (a CompiledModel) to one safetensors file at `path`."""
    gm: fx.GraphModule = compiled.module
    leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    nodes = []
    for n in gm.graph.nodes:
        target = _function_path(n.target) if n.op == "call_function" else n.target
        nodes.append({"op": n.op, "name": n.name, "target": target,
                      "args": _encode(n.args, n.name), "kwargs": _encode(n.kwargs, n.name)})
    plan = {
        "format": FORMAT,
        "input": {"shape": list(compiled.input_shape), "dtype": str(compiled.dtype).removeprefix("torch.")},
        "device": str(compiled.device),
        "cuda_graph": compiled.cuda_graph,
        "modules": {name: _module_entry(name, m, name in leaves) for name, m in gm.named_modules()},
        "graph": nodes,
        "steps": [vars(s) for s in compiled.plan.steps],
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in gm.state_dict().items()}
    save_file(tensors, str(path), metadata={"basisrt_plan": json.dumps(plan)})


def _target_device(plan: dict, device: torch.device | str | None) -> torch.device:
    """Where the loaded plan runs: `device`, or the one it was saved from; a clear error when its
    steps cannot run there or the device is not on this machine."""
    from .cpu_kernels import FusedConv2d
    from .gpu_kernels import GPUFusedConv2d
    from .plan import _resolve_backend

    saved = plan.get("device", "cpu")  # plans written before devices were recorded ran on the CPU
    target = torch.device(saved if device is None else device)
    classes = [_resolve(m["class"], _CLASS_MODULES) for m in plan["modules"].values() if "class" in m]
    if target.type != "cpu" and any(issubclass(c, FusedConv2d) for c in classes):
        raise ValueError(f"this plan holds basisrt's C++ CPU kernels (compiled on {saved}) and cannot run on "
                         f"{target}: compile the model again with an input on {target}")
    has_triton = any(issubclass(c, GPUFusedConv2d) for c in classes)
    if has_triton:
        try:  # CUDA, or the CPU under TRITON_INTERPRET=1; triton installed
            _resolve_backend("triton", target)
        except ValueError as e:
            raise ValueError(f"this plan's fused steps are Triton kernels and cannot run on {target} here: {e}") from e
    if target.type == "cuda":
        index = torch.cuda.current_device() if torch.cuda.is_available() and target.index is None else target.index
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            where = "no CUDA device is available" if not torch.cuda.is_available() else \
                f"only {torch.cuda.device_count()} CUDA device(s) are available"
            hint = ("its Triton steps need a CUDA GPU (on the CPU only under TRITON_INTERPRET=1, for testing)"
                    if has_triton else "load(path, device='cpu') runs it on the CPU")
            raise RuntimeError(f"cannot load this plan (saved from {saved}) onto {target}: {where} on this "
                               f"machine; {hint}")
        target = torch.device("cuda", index)
    return target


def load_plan(path: str | Path, device: torch.device | str | None = None, cuda_graph: bool | None = None):
    """Read a plan written by `save_plan` onto `device` (default: the one it was saved from);
    returns a CompiledModel ready to call. `cuda_graph` None: as saved when the target is CUDA."""
    from .plan import CompiledModel, Plan, Step

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compiled plan at {path}")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "basisrt_plan" not in meta:
        raise ValueError(f"{path} is not a basisrt plan (no plan in its metadata)")
    plan = json.loads(meta["basisrt_plan"])
    if plan.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported plan format {plan.get('format')!r}, expected {FORMAT!r}")
    target = _target_device(plan, device)
    if cuda_graph is None:
        cuda_graph = plan.get("cuda_graph", False) and target.type == "cuda"
    tensors = load_file(str(path), device=str(target))

    root = nn.Module()
    for name, entry in sorted(plan["modules"].items(), key=lambda kv: kv[0].count(".") if kv[0] else -1):
        if name and "class" in entry:
            cls = _resolve(entry["class"], _CLASS_MODULES)
            m = cls.__new__(cls)
            nn.Module.__init__(m)
            for k, v in entry["attrs"].items():
                object.__setattr__(m, k, _decode(v))
        elif name:
            m = nn.Module()
        else:
            m = root
        if name:
            parent, _, attr = name.rpartition(".")
            root.get_submodule(parent).add_module(attr, m)
        prefix = f"{name}." if name else ""
        for k, present in entry["parameters"].items():
            m.register_parameter(k, nn.Parameter(tensors[prefix + k], requires_grad=False) if present else None)
        for k, present in entry["buffers"].items():
            m.register_buffer(k, tensors[prefix + k] if present else None)

    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for n in plan["graph"]:
        args, kwargs = _decode(n["args"], env), _decode(n["kwargs"], env)
        if n["op"] == "placeholder":
            node = graph.placeholder(n["target"])
        elif n["op"] == "output":
            node = graph.output(args[0])
        elif n["op"] == "get_attr":
            node = graph.get_attr(n["target"])
        elif n["op"] == "call_function":
            node = graph.call_function(_resolve(n["target"], _FUNCTION_MODULES), args, kwargs)
        elif n["op"] in ("call_method", "call_module"):
            node = graph.create_node(n["op"], n["target"], args, kwargs)
        else:
            raise ValueError(f"plan holds an unknown graph op {n['op']!r}")
        env[n["name"]] = node
    gm = fx.GraphModule(root, graph)
    for m in gm.modules():
        if hasattr(m, "after_load"):
            m.after_load()
    dtype = _decode({"dtype": plan["input"]["dtype"]})
    return CompiledModel(gm, Plan([Step(**s) for s in plan["steps"]]), tuple(plan["input"]["shape"]), dtype, target,
                         cuda_graph)
