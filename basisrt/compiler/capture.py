"""How a model becomes the fx graph the planner reads.

* "fx": torch.fx symbolic tracing, basis layers kept whole. Fails on Python control flow over
  tensor sizes (`int(x.size(1) * ratio)`, an `if` on a shape, a loop over `torch.split`).
* "dynamo": TorchDynamo runs the model's Python and records the tensor ops (sizes are plain
  ints), every layer inlined; basisrt.compiler.normalize then turns the functional layers back
  into modules and basis pairs. Dynamo specialises sizes to the example's, so the model is
  captured at two batch sizes: an int that differs between the two graphs as a multiple of the
  batch size becomes that multiple of `x.size(0)`; any other difference is refused.
* "auto": fx, and dynamo where fx fails.

`backend` is the `torch.compile` backend (`torch.compile(model, backend="basisrt")`): Dynamo
splits the model where it cannot capture, and each graph of one tensor input is planned by
basisrt.compile; the others run as captured.
"""
from __future__ import annotations

import operator
import warnings

from torch import Tensor, fx, nn

from .fusion import Tracer
from .normalize import _attr

CAPTURES = ("auto", "fx", "dynamo")


def capture(model: nn.Module, example_input: Tensor, how: str = "auto") -> fx.GraphModule:
    """`model` (in eval mode) as an fx GraphModule, by `how` (one of CAPTURES)."""
    if how not in CAPTURES:
        raise ValueError(f"capture must be one of {', '.join(map(repr, CAPTURES))}, got {how!r}")
    name = type(model).__name__
    if how in ("auto", "fx"):
        try:
            return fx.GraphModule(model, Tracer().trace(model))
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
    gm.graph._codegen = fx.graph.CodeGen()  # plain in and out, not export's pytree wrapping
    out = next(n for n in gm.graph.nodes if n.op == "output")
    if isinstance(out.args[0], (tuple, list)) and len(out.args[0]) == 1:
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


# --------------------------------------------------------------------------- torch.compile backend

def backend(gm: fx.GraphModule, example_inputs: list) -> object:
    """The `torch.compile` backend "basisrt": each Dynamo graph whose only non-parameter input is
    one float32 tensor is planned by basisrt.compile (parameters read as frozen constants); the
    others run as captured, with a warning saying why."""
    from .plan import compile as basisrt_compile

    params = [i for i, (n, v) in enumerate(zip(_placeholders(gm), example_inputs))
              if isinstance(v, nn.Parameter) or _is_buffer(n)]
    sizes = [i for i, v in enumerate(example_inputs) if not isinstance(v, Tensor)]  # a dynamic graph's sizes
    inputs = [i for i in range(len(example_inputs)) if i not in params and i not in sizes]
    if len(inputs) != 1:
        warnings.warn(f"basisrt backend: a graph with {len(inputs)} tensor inputs runs as captured "
                      "(a plan takes one tensor)", stacklevel=2)
        return gm.forward
    (xi,) = inputs
    graph = _with_constants(gm, {i: example_inputs[i] for i in params}, xi, sizes)
    if graph is None:
        warnings.warn("basisrt backend: a graph whose size inputs are not sizes of its tensor input runs as "
                      "captured", stacklevel=2)
        return gm.forward
    tuple_out = graph.meta.get("tuple_output", False)
    # Planned on the first call with each image size (a plan is for one; a dynamic graph serves
    # several): Dynamo's example inputs may be fake tensors of symbolic shape.
    plans: dict[tuple, object] = {}

    def run(*args: object) -> object:
        key = tuple(args[xi].shape[1:])
        if key not in plans:
            try:
                plans[key] = basisrt_compile(graph, args[xi], capture="fx")
            except Exception as e:  # noqa: BLE001 - the graph still runs, as captured
                warnings.warn(f"basisrt backend: a graph runs as captured: {e}", stacklevel=2)
                plans[key] = None
        if plans[key] is None:
            return gm.forward(*args)
        y = plans[key](args[xi])
        return (y,) if tuple_out else y
    return run


def _placeholders(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _is_buffer(node: fx.Node) -> bool:
    source = getattr(node.meta.get("grapharg"), "source", None)
    return source is not None and "_buffers" in source.name


class _Graph(nn.Module):
    pass


def _with_constants(gm: fx.GraphModule, constants: dict[int, Tensor], xi: int,
                    sizes: list[int]) -> fx.GraphModule | None:
    """A copy of `gm` with one input, placeholder `xi`: the placeholders at `constants`' positions
    read those tensors (get_attr), those at `sizes` (a dynamic graph's symbolic sizes) become
    `x.size(d)` of that input (None where one is no size of it)."""
    root = _Graph()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    holders = _placeholders(gm)
    x = env[holders[xi]] = graph.placeholder(holders[xi].name)
    x_shape = [str(d) for d in getattr(holders[xi].meta.get("example_value"), "shape", ())]
    for i, node in enumerate(holders):
        if i in constants:
            name = f"_param_{i}"
            root.register_buffer(name, constants[i].detach())
            env[node] = graph.get_attr(name)
        elif i in sizes:
            sym = str(node.meta.get("example_value"))
            if sym not in x_shape:
                return None
            env[node] = graph.call_method("size", (x, x_shape.index(sym)))
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            continue
        env[node] = new = graph.node_copy(node, lambda n: env[n])
        # Dynamo's fake-tensor values (symbolic in a dynamic graph) must not pass for ShapeProp's
        new.meta = {k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")}
        if node.op == "get_attr":
            new.target = f"_attr_{len(env)}"
            root.register_buffer(new.target, _attr(gm, node.target).detach())
        elif node.op == "call_module" and not hasattr(root, node.target.replace(".", "_")):
            new.target = node.target.replace(".", "_")
            root.add_module(new.target, gm.get_submodule(node.target))
    out = fx.GraphModule(root, graph).eval()
    # Dynamo graphs return a tuple; a plan returns the one tensor
    node = next(n for n in out.graph.nodes if n.op == "output")
    out.meta["tuple_output"] = isinstance(node.args[0], (tuple, list)) and len(node.args[0]) == 1
    if out.meta["tuple_output"]:
        node.args = (node.args[0][0],)
        out.recompile()
    return out


def register() -> None:
    """Make "basisrt" a torch.compile backend name (idempotent)."""
    from torch._dynamo import list_backends, register_backend
    if "basisrt" not in list_backends(exclude_tags=()):
        register_backend(name="basisrt")(backend)
