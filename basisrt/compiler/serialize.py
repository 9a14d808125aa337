"""Save and load compiled plans without pickle and without the original model class.

One safetensors file: the tensors of every step, and in its metadata a JSON plan (the fx graph as
a node list, each module as its class and plain attributes, the input signature and the steps)
and a SHA-256 digest of the plan, the tensor table and the tensor bytes (which catches a corrupt
or truncated file; it is not a signature: whoever can write the file can write the digest).

A plan file is untrusted input. Loading runs no code from it: every function, tensor method and
module class it names must be on basisrt's allow-lists (plan_schema.py), and every attribute,
tensor and graph node is checked before anything runs, including one pass of the whole graph on
meta tensors of the plan's input shape (basisrt's steps by their shape rules, so no kernel sees
geometry its checks have not passed). Any problem is one ValueError that names the file.

Tensors are stored on the CPU with the device the plan ran on beside them, so a plan saved from
CUDA loads onto CUDA by default, or onto a device the caller names when its steps can run there.
"""
from __future__ import annotations

import hashlib
import json
import keyword
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import fx, nn

from . import plan_schema as schema
from .backends import resolve_backend
from .bf16 import PRECISIONS
from .cpu_steps import FusedConv2d
from .gpu_steps import GPUFusedConv2d
from .plan_schema import PlanError, TensorInfo
from .signature import class_path, resolve_output_class
from .strategy import Strategy

FORMAT = "basisrt-plan/1"
PLAN_KEY, DIGEST_KEY = "basisrt_plan", "basisrt_sha256"  # safetensors metadata entries
_PLAN_FIELDS = {"format", "input", "device", "cuda_graph", "precision", "output_class", "modules", "graph", "steps"}
# plans written before devices (precisions, output classes) were recorded lack them
_OPTIONAL_FIELDS = {"device", "cuda_graph", "precision", "output_class"}
_STRATEGIES = {s.value for s in Strategy}
_STEP_FIELDS = {"name": str, "strategy": str, "macs": int, "detail": str}
_NODE_FIELDS = {"op", "name", "target", "args", "kwargs"}
_NODE_OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
_ITEMSIZE = {name: torch.empty((), dtype=d).element_size() for name, d in schema.FILE_DTYPES.items()}
_FILE_DTYPE_NAMES = {d: name for name, d in schema.FILE_DTYPES.items()}


_MAKERS = (torch.empty, torch.zeros, torch.ones, torch.eye, torch.arange)  # tensors made from sizes alone


class _NotAPlan(PlanError):
    """The file is no safetensors file with a basisrt plan in it."""


# ---------------------------------------------------------------------------------------------- save

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


def _callable_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__name__', None) or repr(fn)}"


def _node_target(n: fx.Node) -> Any:
    if n.op == "call_function":
        name = schema.function_name(n.target)
        if name is None:
            raise ValueError(f"cannot save a plan calling {_callable_name(n.target)} (node {n.name!r}): not on "
                             "basisrt's list of plan operations")
        return name
    if n.op == "call_method" and n.target not in schema.METHODS:
        raise ValueError(f"cannot save a plan calling tensor method .{n.target}() (node {n.name!r}): not on "
                         "basisrt's list of plan operations")
    return n.target


def _module_entry(name: str, m: nn.Module, leaf: bool) -> dict:
    entry: dict[str, Any] = {
        "parameters": {k: p is not None for k, p in m._parameters.items()},
        # a non-persistent buffer is derived from the others (FusedConv2d.winograd): remade at load
        "buffers": {k: b is not None for k, b in m._buffers.items() if k not in m._non_persistent_buffers_set},
    }
    if leaf:
        cls = type(m)
        if schema.spec_of(cls) is None:
            raise ValueError(f"cannot save a plan holding module {name!r} of class {schema.class_path(cls)}: not on "
                             "basisrt's list of plan modules")
        entry["class"] = schema.class_path(cls)
        entry["attrs"] = {k: _encode(v, f"{name}.{k}") for k, v in vars(m).items()
                          if not k.startswith("_") and not isinstance(v, (torch.Tensor, nn.Module))}
    return entry


def save_plan(compiled: Any, path: str | Path) -> None:
    """Write `compiled` (a CompiledModel: module, plan, input_shape, dtype, device, cuda_graph) to
    one safetensors file at `path`. The plan is checked
    as `load_plan` checks it, so what saves loads; a ValueError says what cannot be saved."""
    gm: fx.GraphModule = compiled.module
    leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    nodes = [{"op": n.op, "name": n.name, "target": _node_target(n), "args": _encode(n.args, n.name),
              "kwargs": _encode(n.kwargs, n.name)} for n in gm.graph.nodes]
    plan = {
        "format": FORMAT,
        "input": {"shape": list(compiled.input_shape), "dtype": str(compiled.dtype).removeprefix("torch."),
                  **({"name": compiled.input_name} if compiled.input_name else {})},
        "device": str(compiled.device),
        "cuda_graph": compiled.cuda_graph,
        "precision": compiled.precision,
        **({"output_class": class_path(compiled.output_class)} if compiled.output_class else {}),
        "modules": {name: _module_entry(name, m, name in leaves) for name, m in gm.named_modules()},
        "graph": nodes,
        "steps": [{**vars(s), "strategy": str(s.strategy)} for s in compiled.plan.steps],
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in gm.state_dict().items()}
    for k, v in tensors.items():
        if v.dtype not in _FILE_DTYPE_NAMES:
            raise ValueError(f"cannot save a plan holding tensor {k!r} of dtype {v.dtype}")
    try:
        _check_plan(plan, {k: TensorInfo(v.dtype, tuple(v.shape)) for k, v in tensors.items()})
    except PlanError as e:
        raise ValueError(f"cannot save this plan: {e}") from None
    Path(path).write_bytes(_serialize(tensors, json.dumps(plan)))


def _serialize(tensors: dict[str, torch.Tensor], plan_text: str) -> bytes:
    """The file's bytes: safetensors with the plan and the digest of plan, tensor table and data."""
    from safetensors.torch import save

    blob = save(tensors, metadata={PLAN_KEY: plan_text})
    n = int.from_bytes(blob[:8], "little")
    table = json.loads(blob[8:8 + n])
    table.pop("__metadata__", None)
    digest = _digest(plan_text, table, [memoryview(blob)[8 + n:]])
    out = save(tensors, metadata={PLAN_KEY: plan_text, DIGEST_KEY: digest})
    m = int.from_bytes(out[:8], "little")
    assert memoryview(out)[8 + m:] == memoryview(blob)[8 + n:], "safetensors laid the tensors out differently"
    return out


def _digest(plan_text: str, table: dict, chunks: Iterable[bytes | memoryview]) -> str:
    h = hashlib.sha256()
    for part in (FORMAT, plan_text, json.dumps(table, sort_keys=True, separators=(",", ":"))):
        h.update(part.encode("utf-8", "surrogatepass") + b"\n")
    for c in chunks:
        h.update(c)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- file reading

@dataclass
class _File:
    metadata: dict[str, str]
    table: dict[str, Any]  # safetensors' tensor table as written: name -> dtype, shape, data_offsets
    data_start: int
    size: int


def _read_header(path: Path) -> _File:
    """The safetensors header of `path`, checked before anything is parsed that its length allows."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(schema.MAX_HEADER_BYTES, size - 8):
            why = ("it is shorter than a safetensors header" if n < 0 else
                   f"its header length {n} is not within the file's {size} bytes and basisrt's limit of "
                   f"{schema.MAX_HEADER_BYTES}")
            raise _NotAPlan(why)
        raw = f.read(n)
    if not raw.startswith(b"{"):
        raise _NotAPlan("its header is not a JSON object")
    try:  # safetensors parses this header too: no duplicate keys it might resolve differently
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _NotAPlan("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _NotAPlan("its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not isinstance(metadata.get(PLAN_KEY), str):
        raise _NotAPlan("no plan in its metadata")
    extra = sorted(set(metadata) - {PLAN_KEY, DIGEST_KEY})
    if extra:
        raise PlanError(f"unexpected metadata entries {extra}")
    return _File(metadata, header, 8 + n, size)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate keys")
    return out


def _tensor_table(file: _File) -> dict[str, TensorInfo]:
    """dtype and shape of every tensor the file holds, each within the file's data."""
    if len(file.table) > schema.MAX_TENSORS:
        raise PlanError(f"the file holds {len(file.table)} tensors, more than {schema.MAX_TENSORS}")
    data = file.size - file.data_start
    infos = {}
    for name, e in file.table.items():
        _tensor_name(name)
        if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"} and e["dtype"] in _ITEMSIZE
                and isinstance(e["shape"], list) and len(e["shape"]) <= 8
                and all(type(s) is int and 0 <= s <= data for s in e["shape"])
                and isinstance(e["data_offsets"], list) and len(e["data_offsets"]) == 2
                and all(type(o) is int for o in e["data_offsets"])):
            raise PlanError(f"tensor {name!r} has a malformed entry in the file's tensor table")
        begin, end = e["data_offsets"]
        if not 0 <= begin <= end <= data or end - begin != math.prod(e["shape"]) * _ITEMSIZE[e["dtype"]]:
            raise PlanError(f"tensor {name!r}: its data offsets do not match its shape and the file's size")
        infos[name] = TensorInfo(schema.FILE_DTYPES[e["dtype"]], tuple(e["shape"]))
    return infos


def _verify_digest(path: Path, file: _File) -> None:
    digest = file.metadata.get(DIGEST_KEY)
    if digest is None:
        return  # written before plans carried a digest

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(file.data_start)
            while chunk := f.read(1 << 20):
                yield chunk

    if _digest(file.metadata[PLAN_KEY], file.table, chunks()) != digest:
        raise PlanError("its contents do not match their SHA-256 digest: the file is corrupt or was altered")


@contextmanager
def _problems(path: Path) -> Iterator[None]:
    """One ValueError naming `path` for whatever goes wrong while reading and checking the plan."""
    try:
        yield
    except _NotAPlan as e:
        raise ValueError(f"{path} is not a basisrt plan file ({e})") from None
    except PlanError as e:
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:  # a decoding or validation path the checks above did not foresee
        raise ValueError(f"{path}: malformed plan ({type(e).__name__}: {_short(str(e))})") from e


def _short(s: str, limit: int = 300) -> str:
    s = " ".join(s.split())
    return s if len(s) <= limit else s[:limit] + "..."


# ----------------------------------------------------------------------------------------- checking

@dataclass
class _Module:
    name: str
    spec: schema.ModuleSpec | None  # None: a container (or the root), no class of its own
    attrs: dict[str, Any]
    parameters: dict[str, bool]
    buffers: dict[str, bool]


@dataclass
class _Checked:
    input_shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    cuda_graph: bool
    precision: str
    input_name: str | None
    output_class: str | None
    modules: list[_Module]  # parents before children
    graph: list[dict]
    steps: list[dict]


def _identifier(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 255 and v.isidentifier() and not keyword.iskeyword(v)


def _tensor_name(name: Any) -> None:
    if not isinstance(name, str) or not all(schema.NAME.fullmatch(p) and not p.startswith("__")
                                            for p in name.split(".")) or name.count(".") > 64:
        raise PlanError(f"{schema._text(name)} is not a valid module or tensor name")


def _dict(v: Any, what: str, limit: int = schema.MAX_ITEMS) -> dict:
    if not isinstance(v, dict) or len(v) > limit:
        raise PlanError(f"{what} must be a JSON object of at most {limit} entries, got {schema._text(v)}")
    return v


def _list(v: Any, what: str, limit: int) -> list:
    if not isinstance(v, list) or len(v) > limit:
        raise PlanError(f"{what} must be a JSON list of at most {limit} entries, got {schema._text(v)}")
    return v


def _check_plan(plan: Any, tensors: dict[str, TensorInfo]) -> _Checked:
    """Everything in `plan` (the decoded JSON) and the file's tensors, checked; the graph is run
    once on meta tensors of the input shape."""
    _dict(plan, "the plan")
    missing, extra = _PLAN_FIELDS - _OPTIONAL_FIELDS - set(plan), set(plan) - _PLAN_FIELDS
    if missing or extra:
        raise PlanError(f"the plan must have fields {sorted(_PLAN_FIELDS)}, got {sorted(plan)}")
    if plan["format"] != FORMAT:
        raise PlanError(f"unsupported plan format {schema._text(plan['format'])}, expected {FORMAT!r}")
    inp = _dict(plan["input"], "input")
    shape, dtype, name = inp.get("shape"), inp.get("dtype"), inp.get("name")
    if (not {"shape", "dtype"} <= set(inp) <= {"shape", "dtype", "name"} or not isinstance(shape, list)
            or not 1 <= len(shape) <= 6 or not all(type(s) is int and 1 <= s <= schema.MAX_ELEMENTS for s in shape)
            or math.prod(shape) > schema.MAX_ELEMENTS or not (name is None or _identifier(name))):
        raise PlanError(f"input must be {{'shape': 1 to 6 positive ints of at most {schema.MAX_ELEMENTS} elements "
                        f"in all, 'dtype': ..., optionally 'name': an identifier}}, got {schema._text(inp)}")
    if dtype not in schema.INPUT_DTYPES:
        raise PlanError(f"input dtype must be one of {sorted(schema.INPUT_DTYPES)}, got {schema._text(dtype)}")
    device = plan.get("device", "cpu")
    if not isinstance(device, str) or not schema.DEVICE.fullmatch(device):
        raise PlanError(f"device must be 'cpu' or 'cuda[:N]', got {schema._text(device)}")
    cuda_graph = plan.get("cuda_graph", False)
    if type(cuda_graph) is not bool:
        raise PlanError(f"cuda_graph must be true or false, got {schema._text(cuda_graph)}")
    precision = plan.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise PlanError(f"precision must be one of {PRECISIONS}, got {schema._text(precision)}")
    output = plan.get("output_class")
    if output is not None and not (isinstance(output, str) and len(output) <= 256
                                   and all(_identifier(p) for p in output.split("."))):
        raise PlanError(f"output_class must be a dotted import path, got {schema._text(output)}")
    checked = _Checked(tuple(shape), schema.INPUT_DTYPES[dtype], device, cuda_graph, precision, name, output,
                       _check_modules(plan["modules"], tensors, schema.INPUT_DTYPES[dtype]),
                       _list(plan["graph"], "graph", schema.MAX_NODES), _check_steps(plan["steps"]))
    _shape_pass(checked, tensors)
    return checked


def _check_modules(modules: Any, tensors: dict[str, TensorInfo], dtype: torch.dtype) -> list[_Module]:
    """The module table; every tensor it declares is in the file (and nothing else is), and every
    floating-point tensor has the plan's input dtype."""
    _dict(modules, "modules", schema.MAX_MODULES)
    if "" not in modules:
        raise PlanError("modules has no root module ''")
    out, declared = [], set()
    for name in sorted(modules, key=lambda n: (n.count(".") if n else -1, n)):
        entry = _dict(modules[name], f"module {name!r}")
        where = f"module {name!r}"
        if name:
            _tensor_name(name)
            parent = name.rpartition(".")[0]
            if parent not in modules:
                raise PlanError(f"{where} has no parent module {parent!r}")
            if "class" in modules[parent]:
                raise PlanError(f"{where} is inside module {parent!r}, a plan step, which has no submodules")
        leaf = "class" in entry
        if set(entry) != ({"parameters", "buffers"} | ({"class", "attrs"} if leaf else set())):
            raise PlanError(f"{where} must have parameters, buffers (and class and attrs for a step), "
                            f"got {sorted(entry)}")
        spec = None
        if leaf:
            cls = entry["class"]
            spec = schema.CLASSES.get(cls) if isinstance(cls, str) else None
            if not name or spec is None:
                shown = cls if isinstance(cls, str) and len(cls) <= 200 else schema._text(cls)
                raise PlanError(f"{where} is of class {shown}, which plans may not hold"
                                if name else "the root module cannot have a class")
            where = f"module {name!r} ({spec.cls.__name__})"
        infos: dict[str, dict[str, TensorInfo | None]] = {}
        for kind in ("parameters", "buffers"):
            table = _dict(entry[kind], f"{where} {kind}")
            infos[kind] = {}
            for k, present in table.items():
                _tensor_name(k)
                if "." in k or type(present) is not bool:
                    raise PlanError(f"{where} {kind} must map names to true or false, got {schema._text({k: present})}")
                full = f"{name}.{k}" if name else k
                if present:
                    if full not in tensors:
                        raise PlanError(f"tensor {full!r} of {where} is not in the file")
                    if tensors[full].dtype.is_floating_point and tensors[full].dtype != dtype:
                        raise PlanError(f"tensor {full!r} is {str(tensors[full].dtype).removeprefix('torch.')}, not "
                                        f"the plan's dtype {str(dtype).removeprefix('torch.')}")
                    declared.add(full)
                infos[kind][k] = tensors.get(full) if present else None
        attrs = {}
        if leaf:
            raw = _dict(entry["attrs"], f"{where} attrs")
            try:
                for k, v in raw.items():
                    if not isinstance(k, str) or not k.isidentifier() or k.startswith("_"):
                        raise PlanError(f"attribute name {schema._text(k)} is not allowed")
                    attrs[k] = schema.decode(v)
                schema.check_module(spec, attrs, schema.Tensors(infos["parameters"], infos["buffers"]))
            except PlanError as e:
                raise PlanError(f"{where}: {e}") from None
        out.append(_Module(name, spec, attrs, entry["parameters"], entry["buffers"]))
    extra = sorted(set(tensors) - declared)
    if extra:
        raise PlanError(f"the file holds tensor(s) no module declares: {', '.join(map(repr, extra[:5]))}")
    return out


def _check_steps(steps: Any) -> list[dict]:
    for i, s in enumerate(_list(steps, "steps", schema.MAX_STEPS)):
        if not (isinstance(s, dict) and set(s) == set(_STEP_FIELDS)
                and all(type(s[k]) is t for k, t in _STEP_FIELDS.items())
                and all(len(s[k]) <= schema.MAX_STR for k in ("name", "strategy", "detail"))
                and 0 <= s["macs"] <= schema.MAX_INT):
            raise PlanError(f"steps[{i}] must be an object of exactly name (str), strategy (str), macs (int >= 0) "
                            f"and detail (str), got {schema._text(s)}")
        if s["strategy"] not in _STRATEGIES:
            raise PlanError(f"steps[{i}] has strategy {schema._text(s['strategy'])}, not one of {sorted(_STRATEGIES)}")
    return steps


# -------------------------------------------------------------------------------------- building

def _module_tree(modules: list[_Module], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The checked modules, holding `tensors` (real, or meta for the shape pass)."""
    root = nn.Module()
    for mod in modules:
        if not mod.name:
            m = root
        elif mod.spec is not None:
            cls = mod.spec.cls
            m = cls.__new__(cls)
            nn.Module.__init__(m)
            for k, v in mod.attrs.items():
                object.__setattr__(m, k, v)
        else:
            m = nn.Module()
        if mod.name:
            parent, _, attr = mod.name.rpartition(".")
            root.get_submodule(parent).add_module(attr, m)
        prefix = f"{mod.name}." if mod.name else ""
        for k, present in mod.parameters.items():
            m.register_parameter(k, nn.Parameter(tensors[prefix + k], requires_grad=False) if present else None)
        for k, present in mod.buffers.items():
            m.register_buffer(k, tensors[prefix + k] if present else None)
        if mod.spec is not None and hasattr(m, "after_load"):
            m.after_load()
    return root


def _graph(nodes: list[Any], root: nn.Module, checked: _Checked) -> tuple[fx.Graph, dict[fx.Node, str]]:
    """The fx graph of the plan's node list, every node checked; and each fx node's name in the file."""
    steps = {m.name: m for m in checked.modules if m.spec is not None}
    tensor_names = {f"{m.name}.{k}" if m.name else k for m in checked.modules
                    for table in (m.parameters, m.buffers) for k, present in table.items() if present}
    graph, env, names = fx.Graph(), {}, {}
    for i, n in enumerate(nodes):
        if not isinstance(n, dict) or set(n) != _NODE_FIELDS:
            raise PlanError(f"graph[{i}] must be an object of exactly {sorted(_NODE_FIELDS)}")
        op, name, target = n["op"], n["name"], n["target"]
        if not isinstance(name, str) or not schema.NODE_NAME.fullmatch(name) or name in env:
            raise PlanError(f"graph[{i}] has an invalid or repeated name {schema._text(name)}")
        try:
            node = _node(op, target, n, i, len(nodes), env, steps, tensor_names, root, graph)
        except PlanError as e:
            raise PlanError(f"node {name!r} {e}") from None
        env[name] = node
        names[node] = name
    if not nodes or nodes[-1]["op"] != "output":
        raise PlanError("the graph must end with its output node")
    return graph, names


def _node(op: Any, target: Any, n: dict, i: int, count: int, env: dict, steps: dict[str, _Module],
          tensor_names: set[str], root: nn.Module, graph: fx.Graph) -> fx.Node:
    if op not in _NODE_OPS:
        raise PlanError(f"has op {schema._text(op)}, not one of {list(_NODE_OPS)}")
    if not isinstance(target, str) or len(target) > schema.MAX_STR:
        raise PlanError(f"has target {schema._text(target)}, not a string")
    try:
        args, kwargs = schema.decode(n["args"], env), schema.decode(n["kwargs"], env)
    except PlanError as e:
        raise PlanError(f"has an invalid argument: {e}") from None
    if not isinstance(args, tuple) or not isinstance(kwargs, dict):
        raise PlanError("has args that are not a tuple or kwargs that are not a dict")
    if op in ("placeholder", "get_attr", "output") and kwargs:
        raise PlanError(f"is a {op} node with kwargs")
    if op == "placeholder":
        if i != 0 or args or not target.isidentifier() or keyword.iskeyword(target) or target == "self":
            raise PlanError("is a graph input, which must be the first node, named by a Python identifier")
        return graph.placeholder(target)
    if i == 0:
        raise PlanError("comes first, where the graph's input (a placeholder node) must be")
    if op == "output":
        if i != count - 1 or len(args) != 1:
            raise PlanError("is an output node, which must be the graph's last node, with one argument")
        return graph.output(args[0])
    if i == count - 1:
        raise PlanError("comes last, where the graph's output node must be")
    if op == "get_attr":
        if target not in tensor_names or args:
            raise PlanError(f"reads {schema._text(target)}, which is not a tensor of this plan")
        return graph.get_attr(target)
    if op == "call_function":
        fn = schema.FUNCTIONS.get(target)
        if fn is None:
            raise PlanError(f"calls {_short(target, 120)}, which plans may not call")
        if fn in schema.INPLACE_OPERATORS:
            _not_a_weight(args)
        if fn is getattr and not (len(args) == 2 and not kwargs and isinstance(args[0], fx.Node)
                                  and args[1] in schema.GETATTR_NAMES):
            raise PlanError(f"calls getattr with {schema._text(args[1:] if args else args)}; plans may read only "
                            f"{sorted(schema.GETATTR_NAMES)} of a graph value")
        return graph.call_function(fn, args, kwargs)
    if op == "call_method":
        if target not in schema.METHODS:
            raise PlanError(f"calls tensor method .{_short(target, 120)}(), which plans may not call")
        if not args or not isinstance(args[0], fx.Node):
            raise PlanError(f"calls method {target!r} of something other than a graph value")
        if target.endswith("_"):
            _not_a_weight(args)
        return graph.create_node("call_method", target, args, kwargs)
    step = steps.get(target)
    if step is None:
        raise PlanError(f"calls module {schema._text(target)}, which is not a plan step of this file")
    module = root.get_submodule(target)
    inputs = step.spec.inputs(module)
    if getattr(module, "inplace", False) is True:
        _not_a_weight(args)
    if kwargs or len(args) != inputs or not all(isinstance(a, fx.Node) for a in args):
        raise PlanError(f"calls module {target!r} with {len(args)} argument(s) and {len(kwargs)} keyword(s); it takes "
                        f"{inputs} graph value(s) and no keywords")
    return graph.create_node("call_module", target, args, kwargs)


def _not_a_weight(args: tuple) -> None:
    """An in-place operation works on a value the graph computed, never on the plan's own tensors
    (steps are shared between threads and calls)."""
    if args and isinstance(args[0], fx.Node) and args[0].op == "get_attr":
        raise PlanError(f"modifies the plan's tensor {args[0].target!r} in place, which plans may not do")


class _ShapePass(fx.Interpreter):
    """Runs the plan on meta tensors: torch ops compute shapes only, basisrt's steps run their
    shape rules, and every value is bounded (plan_schema.check_result)."""

    def __init__(self, gm: fx.GraphModule, names: dict[fx.Node, str], input_shape: tuple[int, ...]) -> None:
        super().__init__(gm)
        self.names, self.input_shape = names, input_shape
        self.extra_traceback = False  # our messages say which node; fx's note would import torch._dynamo

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
            schema.check_result(result)
            return result
        except PlanError as e:
            raise PlanError(f"node {self.names[n]!r} {e}") from None
        except Exception as e:
            what = n.target if isinstance(n.target, str) else schema.function_name(n.target)
            raise PlanError(f"node {self.names[n]!r} ({n.op} {what}) fails on the plan's input shape "
                            f"(1, {', '.join(map(str, self.input_shape))}): {type(e).__name__}: {_short(str(e))}"
                            ) from None

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        schema.check_call(target, args, kwargs)
        if target in _MAKERS:  # on meta too: nothing is allocated before check_result bounds the size
            kwargs = {**kwargs, "device": "meta"}
        return target(*args, **kwargs)

    def call_method(self, target: str, args: tuple, kwargs: dict) -> Any:
        if not isinstance(args[0], torch.Tensor):
            raise PlanError(f"calls method {target!r} of {schema._describe(args[0])}; plans call tensor methods only")
        if target == "to":  # a device TorchDynamo recorded as a constant (EdgeNeXt's .to(x.device)): meta here
            meta = torch.device("meta")
            args = tuple(meta if isinstance(a, (torch.device, str)) else a for a in args)
            kwargs = {k: meta if k == "device" else v for k, v in kwargs.items()}
        return getattr(args[0], target)(*args[1:], **kwargs)

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        m = self.fetch_attr(target)
        return schema.spec_of(type(m)).run(m, *args, **kwargs)


def _shape_pass(checked: _Checked, tensors: dict[str, TensorInfo]) -> None:
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in tensors.items()}
    root = _module_tree(checked.modules, meta)
    graph, names = _graph(checked.graph, root, checked)
    gm = fx.GraphModule(root, graph)
    with torch.no_grad():
        _ShapePass(gm, names, checked.input_shape).run(
            torch.empty((1, *checked.input_shape), dtype=checked.dtype, device="meta"))


# ------------------------------------------------------------------------------------------- loading

def _target_device(checked: _Checked, device: torch.device | str | None, path: Path) -> torch.device:
    """Where the loaded plan runs: `device`, or the one it was saved from; a clear error when its
    steps cannot run there or the device is not on this machine."""
    saved = checked.device
    target = torch.device(saved if device is None else device)
    classes = [m.spec.cls for m in checked.modules if m.spec is not None]
    if target.type != "cpu" and any(issubclass(c, FusedConv2d) for c in classes):
        raise ValueError(f"{path}: this plan holds basisrt's C++ CPU kernels (compiled on {saved}) and cannot run "
                         f"on {target}: compile the model again with an input on {target}")
    has_triton = any(issubclass(c, GPUFusedConv2d) for c in classes)
    if has_triton:
        try:  # CUDA, or the CPU under TRITON_INTERPRET=1; triton installed
            resolve_backend("triton", target)
        except ValueError as e:
            raise ValueError(f"{path}: this plan's fused steps are Triton kernels and cannot run on {target} here: "
                             f"{e}") from e
    if target.type == "cuda":
        index = torch.cuda.current_device() if torch.cuda.is_available() and target.index is None else target.index
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            where = "no CUDA device is available" if not torch.cuda.is_available() else \
                f"only {torch.cuda.device_count()} CUDA device(s) are available"
            hint = ("its Triton steps need a CUDA GPU (on the CPU only under TRITON_INTERPRET=1, for testing)"
                    if has_triton else "load(path, device='cpu') runs it on the CPU")
            raise RuntimeError(f"cannot load this plan {path} (saved from {saved}) onto {target}: {where} on this "
                               f"machine; {hint}")
        target = torch.device("cuda", index)
    return target


@dataclass
class LoadedPlan:
    """What a plan file holds, checked and on its target device (compiled.load wraps it)."""

    module: fx.GraphModule
    steps: list[dict]  # Step fields
    input_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    cuda_graph: bool
    precision: str
    input_name: str | None
    output_class: type | None


def load_plan(path: str | Path, device: torch.device | str | None = None,
              cuda_graph: bool | None = None) -> LoadedPlan:
    """Read a plan written by `save_plan` onto `device` (default: the one it was saved from).
    `cuda_graph` None: as saved when the target is CUDA. A file that is not a valid plan is a
    ValueError naming it and the problem."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compiled plan at {path}")
    with _problems(path):
        file = _read_header(path)
        _verify_digest(path, file)
        table = _tensor_table(file)
        text = file.metadata[PLAN_KEY]
        try:
            plan = json.loads(text)
        except RecursionError:
            raise PlanError("its plan JSON is nested too deeply") from None
        except ValueError as e:
            raise PlanError(f"its plan is not valid JSON ({e})") from None
        checked = _check_plan(plan, table)
    target = _target_device(checked, device, path)
    if cuda_graph is None:
        cuda_graph = checked.cuda_graph and target.type == "cuda"
    with _problems(path):
        tensors = load_file(str(path), device=str(target))
        # safetensors packs tensors back to back: most come back unaligned, and PyTorch's kernels take
        # other paths on them (slower, and last bits unlike the plan that was saved); a copy aligns them
        tensors = {k: v.clone() if v.data_ptr() % 64 else v for k, v in tensors.items()}
        if {k: TensorInfo(v.dtype, tuple(v.shape)) for k, v in tensors.items()} != table:
            raise PlanError("safetensors read other tensors than the checked header declares (did the file change?)")
        root = _module_tree(checked.modules, tensors)
        graph, _ = _graph(checked.graph, root, checked)
        gm = fx.GraphModule(root, graph)
        gm.eval()
    output_class = resolve_output_class(checked.output_class) if checked.output_class else None
    return LoadedPlan(gm, checked.steps, checked.input_shape, checked.dtype, target, cuda_graph, checked.precision,
                      checked.input_name, output_class)
