"""How a model becomes the fx graph the planner reads.

* "fx": torch.fx symbolic tracing, basis layers kept whole. Fails on Python control flow over
  tensor sizes (`int(x.size(1) * ratio)`, an `if` on a shape, a loop over `torch.split`).
* "dynamo": TorchDynamo runs the model's Python and records the tensor ops (sizes are plain
  ints), every layer inlined; basisrt.compiler.normalize then turns the functional layers back
  into modules and basis pairs. Dynamo specialises sizes to the example's, so the model is
  captured at two batch sizes: an int that differs between the two graphs as a multiple of the
  batch size becomes that multiple of `x.size(0)`; any other difference is refused.
* "auto": fx, and dynamo where fx fails.

The `torch.compile` backend, which plans the graphs Dynamo hands it, is basisrt.compiler.torch_compile_backend.
"""
from __future__ import annotations

import operator
import warnings

import torch.utils._pytree as pytree
from torch import Tensor, fx, nn

from .fusion import Tracer

CAPTURES = ("auto", "fx", "dynamo")


def capture(model: nn.Module, example_input: Tensor, how: str = "auto") -> fx.GraphModule:
    """`model` (in eval mode) as an fx GraphModule, by `how` (one of CAPTURES)."""
    if how not in CAPTURES:
        raise ValueError(f"capture must be one of {', '.join(map(repr, CAPTURES))}, got {how!r}")
    name = type(model).__name__
    if how in ("auto", "fx"):
        try:
            return _plain_output(fx.GraphModule(model, Tracer().trace(model)))
        except Exception as e:  # fx raises many kinds; say what happened and where to look
            if how == "fx":
                raise RuntimeError(f"basisrt.compile could not trace {name} with torch.fx: {e} "
                                   "(capture='dynamo' runs the model's Python instead)") from e
            first = (str(e).strip().splitlines() or [""])[0]
            warnings.warn(f"basisrt.compile: torch.fx cannot trace {name} ({type(e).__name__}: {first}); "
                          "capturing it with TorchDynamo instead (capture='dynamo')", stacklevel=3)
    try:
        return dynamo_graph(model, example_input)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise RuntimeError(f"basisrt.compile could not capture {name} with torch.fx nor with TorchDynamo "
                           f"({type(e).__name__}: {first}). "
                           "For a model Dynamo must split into several graphs, use "
                           "torch.compile(model, backend='basisrt')") from e


def _plain_output(gm: fx.GraphModule) -> fx.GraphModule:
    """A namedtuple the model returns, which fx records as a call of its class, returned as a plain
    tuple of its fields instead (the plan's output_class rebuilds it; compiler/signature.py)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    v = out.args[0]
    if not (isinstance(v, fx.Node) and v.op == "call_function" and isinstance(v.target, type)
            and issubclass(v.target, tuple) and hasattr(v.target, "_fields")):
        return gm
    fields = v.target._fields
    given = {**dict(zip(fields, v.args)), **v.kwargs}
    if set(given) != set(fields) or len(v.args) > len(fields):
        return gm  # defaults or a custom constructor: leave it be
    out.args = (tuple(given[f] for f in fields),)
    if not v.users:
        gm.graph.erase_node(v)
    gm.recompile()
    return gm


def _export(model: nn.Module, x: Tensor) -> fx.GraphModule:
    import torch._dynamo
    with torch.no_grad():
        gm, _ = torch._dynamo.export(model, assume_static_by_default=True)(x)
    return gm


def dynamo_graph(model: nn.Module, example_input: Tensor) -> fx.GraphModule:
    """One Dynamo graph of `model` valid for every batch size (see the module docstring)."""
    sample = example_input[:1]
    batches = (2, 3)
    graphs = [_export(model, sample.expand(b, *sample.shape[1:]).contiguous()) for b in batches]
    gm = _generalise_batch(*graphs, batches)
    info = getattr(gm.graph._codegen, "pytree_info", None)
    gm.graph._codegen = fx.graph.CodeGen()  # plain in and out, not export's pytree wrapping
    out = next(n for n in gm.graph.nodes if n.op == "output")
    if info is not None and info.out_spec is not None and isinstance(out.args[0], (tuple, list)):
        # the model's own output structure (a dict, a tuple of tensors), not export's flat list
        out.args = (pytree.tree_unflatten(list(out.args[0]), info.out_spec),)
    elif isinstance(out.args[0], (tuple, list)) and len(out.args[0]) == 1:
        out.args = (out.args[0][0],)
    gm.recompile()
    return gm


def _generalise_batch(a: fx.GraphModule, b: fx.GraphModule, batches: tuple[int, int]) -> fx.GraphModule:
    """Graph `a` (captured at batch batches[0]) with each int argument that is k·batch in both
    captures computed from the input's batch size."""
    na, nb = list(a.graph.nodes), list(b.graph.nodes)
    if len(na) != len(nb):
        raise ValueError("the model records different operations at batch sizes 2 and 3")
    placeholders = [n for n in na if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"a native plan takes one tensor input; the captured graph takes {len(placeholders)}")
    x = placeholders[0]
    pairs = dict(zip(na, nb))
    batch_node: list[fx.Node] = []

    def batch_times(k: int) -> fx.Node:
        if not batch_node:
            with a.graph.inserting_after(x):
                batch_node.append(a.graph.call_method("size", (x, 0)))
        if k == 1:
            return batch_node[0]
        with a.graph.inserting_after(batch_node[0]):
            return a.graph.call_function(operator.mul, (batch_node[0], k))

    def merge(u: object, v: object, where: fx.Node) -> object:
        if isinstance(u, fx.Node):
            if not isinstance(v, fx.Node) or pairs.get(u) is not v:
                raise ValueError(f"{where.name}: the graphs at batch sizes 2 and 3 differ")
            return u
        if isinstance(u, (list, tuple)):
            if type(u) is not type(v) or len(u) != len(v):
                raise ValueError(f"{where.name}: the graphs at batch sizes 2 and 3 differ")
            return type(u)(merge(p, q, where) for p, q in zip(u, v))
        if isinstance(u, dict):
            if not isinstance(v, dict) or u.keys() != v.keys():
                raise ValueError(f"{where.name}: the graphs at batch sizes 2 and 3 differ")
            return {k: merge(u[k], v[k], where) for k in u}
        if u == v and type(u) is type(v):
            return u
        if type(u) is int and type(v) is int and u % batches[0] == 0 and v % batches[1] == 0 and \
                u // batches[0] == v // batches[1]:
            return batch_times(u // batches[0])
        raise ValueError(f"{where.name} ({where.op} {getattr(where.target, '__name__', where.target)}): an "
                         f"argument depends on the input size other than through the batch ({u!r} / {v!r})")

    for u in na:
        v = pairs[u]
        if u.op != v.op or u.target != v.target:
            raise ValueError(f"{u.name}: the graphs at batch sizes 2 and 3 differ")
        if u.op in ("placeholder", "get_attr"):
            continue
        u.args = merge(u.args, v.args, u)
        u.kwargs = merge(u.kwargs, v.kwargs, u)
    a.recompile()
    return a
