"""Save and load compiled plans without pickle and without the original model class.

One safetensors file: the tensors of every step, and in its metadata a JSON plan (the fx graph as
a node list, each module as its class and plain attributes, the input signature and the steps).
Loading runs no code from the file: functions resolve only inside torch / operator / math /
builtins, and module classes only inside torch.nn and basisrt.
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
        "modules": {name: _module_entry(name, m, name in leaves) for name, m in gm.named_modules()},
        "graph": nodes,
        "steps": [vars(s) for s in compiled.plan.steps],
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in gm.state_dict().items()}
    save_file(tensors, str(path), metadata={"basisrt_plan": json.dumps(plan)})


def load_plan(path: str | Path):
    """Read a plan written by `save_plan`; returns a CompiledModel ready to call."""
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
    tensors = load_file(str(path))

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
    return CompiledModel(gm, Plan([Step(**s) for s in plan["steps"]]), tuple(plan["input"]["shape"]), dtype)
