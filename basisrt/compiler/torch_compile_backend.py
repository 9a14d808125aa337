"""The `torch.compile` backend "basisrt" (`torch.compile(model, backend="basisrt")`, registered
through the `torch_dynamo_backends` entry point): Dynamo splits the model where it cannot capture,
each graph of one tensor input is planned by basisrt.compile, and the others run as captured."""
from __future__ import annotations

import warnings

from torch import Tensor, fx, nn

from .entry import compile as basisrt_compile
from .normalize import _attr


def backend(gm: fx.GraphModule, example_inputs: list) -> object:
    """The `torch.compile` backend "basisrt": each Dynamo graph whose only non-parameter input is
    one float32 tensor is planned by basisrt.compile (parameters read as frozen constants); the
    others run as captured, with a warning saying why."""
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
