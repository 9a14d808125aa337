"""Attention that models write through 3-D and 5-D views, rewritten as ops on 4-D maps that the
plan runs natively (passes of normalize; node shapes from ShapeProp's node.meta):

* a softmax over any dim of a rearranged (N, C, 1, 1) vector (ResNeSt's radix softmax: view
  (N, K, R, -1), transpose(1, 2), softmax(1); SKNet's view (N, R, C, 1, 1), softmax(1)): a channel
  gather into the softmax's order, MapSoftmax over channel groups, viewed back;
* a softmax over dim 1 or the last dim of a map, or over a map's flattened pixels
  (`x.reshape(N, C, H * W).softmax(-1)`: GCNet): MapSoftmax;
* split attention's (N, R, C, H, W) tensors, a stack of R maps along dim 1 or a map's channels viewed
  so, combined part by part and summed over dim 1 (SKNet, ResNeSt): R maps (the stacked ones, or
  channel slices) and adds;
* GCNet's context, `x.view(N, 1, C, H * W) @ p.view(N, 1, H * W, 1)` for a map x and a one-channel
  map p: the sum over the pixels of x · p (a mul broadcast over the channels, then a mean times H·W);
* a sum over H and / or W of a map: an average pool times its window.

Each rewrite computes the same values (up to float rounding of the sums) in ops the fusion passes
turn into native steps; what is not recognised stays as it was."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..layers import MapSoftmax
from .fusion import _fresh_name
from .patterns import _meta_shape, probe_rearranged


def attention_to_maps(gm: fx.GraphModule) -> None:
    """Every rewrite of this module, in order (each pass reads what the one before made)."""
    _vector_softmaxes(gm)
    _map_softmaxes(gm)
    _split_sums(gm)
    _context_matmuls(gm)
    _spatial_sums(gm)
    gm.graph.eliminate_dead_code()


def _new(gm: fx.GraphModule, before: fx.Node, op: str, target: object, args: tuple, shape: tuple[int, ...],
         kwargs: dict | None = None) -> fx.Node:
    """A node inserted before `before`, with the meta of a float32 tensor of `shape`."""
    with gm.graph.inserting_before(before):
        node = gm.graph.create_node(op, target, args, kwargs or {})
    node.meta = {"tensor_meta": _extract_tensor_metadata(torch.empty(shape, device="meta"))}
    return node


def _module(gm: fx.GraphModule, before: fx.Node, m: nn.Module, x: fx.Node, shape: tuple[int, ...]) -> fx.Node:
    name = _fresh_name(gm, "softmax")
    gm.add_submodule(name, m)
    return _new(gm, before, "call_module", name, (x,), shape)


def _replace(gm: fx.GraphModule, node: fx.Node, new: fx.Node) -> None:
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _is_float32(node: object) -> bool:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return getattr(meta, "dtype", None) == torch.float32


# --------------------------------------------------------------------------- softmax

def _softmax_of(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, int] | None:
    """(input, dim ≥ 0) of a softmax call (`F.softmax`, `torch.softmax`, `x.softmax`, nn.Softmax)
    on a float32 tensor, without a dtype; None otherwise."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) is not nn.Softmax or m.dim is None or len(node.args) != 1 or node.kwargs:
            return None
        x, dim = node.args[0], m.dim
    elif node.op == "call_function" and node.target in (F.softmax, torch.softmax) or \
            node.op == "call_method" and node.target == "softmax":
        names = ("input", "dim", "_stacklevel", "dtype") if node.target is F.softmax else ("input", "dim", "dtype")
        if len(node.args) > len(names):
            return None
        a = dict(zip(names, node.args), **node.kwargs)
        if set(a) - set(names) or a.get("dtype") is not None:
            return None
        x, dim = a.get("input"), a.get("dim")
    else:
        return None
    shape = _meta_shape(x)
    if shape is None or not _is_float32(x) or type(dim) is not int or not -len(shape) <= dim < len(shape):
        return None
    return x, dim % len(shape)


def _vector_softmaxes(gm: fx.GraphModule) -> None:
    """A softmax over dim d ≥ 1 of a rearrangement of an (N, C, 1, 1) map (attention logits):
    gather the channels so each softmax's members are C / R apart, MapSoftmax over R groups, and
    view the result back into the softmax's shape."""
    for node in list(gm.graph.nodes):
        found = _softmax_of(gm, node)
        probed = probe_rearranged(found[0]) if found is not None and found[1] >= 1 else None
        if probed is None:
            continue
        dim, (src, y) = found[1], probed
        n, c, h, w = _meta_shape(src)
        k = y.dim()
        per_image = c * torch.arange(n, dtype=y.dtype).view(-1, *(1,) * (k - 1))
        if (h, w) != (1, 1) or y.shape[0] != n or not torch.equal(y, y[:1] + per_image):
            continue  # a view that mixes images
        order = [0, dim, *(i for i in range(1, k) if i != dim)]  # the softmax's dim first after the batch
        moved = y[:1].permute(order)
        r, rest = moved.shape[1], tuple(moved.shape[2:])
        index = moved.reshape(-1).long().tolist()  # image 0's values: its channel indices
        members = len(index)
        x = src if index == list(range(c)) else \
            _new(gm, node, "call_function", operator.getitem, (src, (slice(None), index)), (n, members, 1, 1))
        sm = _module(gm, node, MapSoftmax("channels", r), x, (n, members, 1, 1))
        back = _new(gm, node, "call_method", "reshape", (sm, (-1, r, *rest)), (n, r, *rest))
        if order != list(range(k)):
            inverse = sorted(range(k), key=order.__getitem__)
            back = _new(gm, node, "call_method", "permute", (back, *inverse), _meta_shape(node))
        _replace(gm, node, back)


def _map_softmaxes(gm: fx.GraphModule) -> None:
    """softmax(dim=1) or softmax(dim=-1) of a map, and a softmax over the flattened pixels of a map
    (`x.reshape(N, C, H * W)` in pixel order): MapSoftmax."""
    for node in list(gm.graph.nodes):
        found = _softmax_of(gm, node)
        if found is None:
            continue
        t, dim = found
        shape = _meta_shape(t)
        if len(shape) == 4 and dim in (1, 3):
            m = MapSoftmax("channels", shape[1]) if dim == 1 else MapSoftmax("width")
            _replace(gm, node, _module(gm, node, m, t, shape))
            continue
        probed = probe_rearranged(t) if len(shape) == 3 and dim == 2 else None
        if probed is None:
            continue
        src, y = probed
        n, c, h, w = _meta_shape(src)
        if shape != (n, c, h * w) or not torch.equal(y, torch.arange(y.numel(), dtype=y.dtype).reshape(shape)):
            continue  # not the map's own pixel order
        sm = _module(gm, node, MapSoftmax("pixels"), src, (n, c, h, w))
        _replace(gm, node, _new(gm, node, "call_method", "reshape", (sm, (-1, c, h * w)), shape))


# --------------------------------------------------------------------------- split attention

_VIEWS = (("call_method", "view"), ("call_method", "reshape"), ("call_function", torch.reshape))
_BINARY = {operator.mul: operator.mul, torch.mul: operator.mul, operator.add: operator.add,
           torch.add: operator.add}


def _dim_one_sum(node: fx.Node) -> fx.Node | None:
    """x of `x.sum(1)` / `torch.sum(x, dim=1)` (no keepdim, no dtype); None otherwise."""
    if not (node.op == "call_method" and node.target == "sum" or
            node.op == "call_function" and node.target is torch.sum):
        return None
    a = dict(zip(("input", "dim", "keepdim"), node.args), **node.kwargs)
    if set(a) - {"input", "dim", "keepdim"} or a.get("keepdim", False) or a.get("dim") not in (1, (1,), [1]):
        return None
    return a["input"] if isinstance(a.get("input"), fx.Node) else None


def _split_sums(gm: fx.GraphModule) -> None:
    """(N, R, C, H, W) tensors as R maps: `torch.stack(maps, dim=1)`, or a map's (N, R·C, H, W)
    viewed as (N, R, C, H, W) (its channel slices); a mul / add of two such part by part (a part
    of R = 1 broadcast); the sum over dim 1 as adds of the parts."""
    parts: dict[fx.Node, list[fx.Node]] = {}
    for node in list(gm.graph.nodes):
        shape = _meta_shape(node)
        if shape is not None and len(shape) == 5 and _is_float32(node):
            n, r, c, h, w = shape
            if node.op == "call_function" and node.target is torch.stack:
                a = dict(zip(("tensors", "dim"), node.args), **node.kwargs)
                maps = a.get("tensors")
                if a.get("dim") == 1 and isinstance(maps, (list, tuple)) and \
                        all(isinstance(x, fx.Node) and _meta_shape(x) == (n, c, h, w) for x in maps):
                    parts[node] = list(maps)
            elif (node.op, node.target) in _VIEWS and isinstance(node.args[0], fx.Node) and \
                    _meta_shape(node.args[0]) == (n, r * c, h, w):
                x = node.args[0]
                parts[node] = [_new(gm, node, "call_function", operator.getitem,
                                    (x, (slice(None), slice(i * c, (i + 1) * c))), (n, c, h, w)) for i in range(r)]
            elif node.op == "call_function" and node.target in _BINARY and len(node.args) == 2 and not node.kwargs and \
                    all(a in parts for a in node.args):
                pa, pb = (parts[a] for a in node.args)
                if len(pa) in (1, r) and len(pb) in (1, r):
                    op = _BINARY[node.target]
                    pairs = [(pa[min(i, len(pa) - 1)], pb[min(i, len(pb) - 1)]) for i in range(r)]
                    parts[node] = [_new(gm, node, "call_function", op, ab, (n, c, h, w)) for ab in pairs]
            continue
        x = _dim_one_sum(node)
        if x is None or x not in parts or shape is None or len(shape) != 4:
            continue
        total = parts[x][0]
        for p in parts[x][1:]:
            total = _new(gm, node, "call_function", operator.add, (total, p), shape)
        _replace(gm, node, total)


# --------------------------------------------------------------------------- global context

def _pixel_view(node: object) -> tuple[fx.Node, tuple[int, ...]] | None:
    """(x, shape) when `node` is a 4-D map x viewed in its own element order (no transpose) as `shape`."""
    probed = probe_rearranged(node) if isinstance(node, fx.Node) else None
    if probed is None:
        return None
    x, y = probed
    if not torch.equal(y, torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape)):
        return None
    return x, tuple(y.shape)


def _context_matmuls(gm: fx.GraphModule) -> None:
    """`x.view(N, 1, C, H·W) @ p.view(N, 1, H·W, 1)` (any number of leading 1s; p one channel): the
    sum over pixels of x · p, as (x * p).mean((2, 3), keepdim=True) * (H·W), viewed as the matmul's
    result."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (operator.matmul, torch.matmul) or \
                len(node.args) != 2 or node.kwargs or not _is_float32(node):
            continue
        a, b = (_pixel_view(v) for v in node.args)
        if a is None or b is None:
            continue
        (x, sa), (p, sb) = a, b
        n, c, h, w = _meta_shape(x)
        ones = (1,) * (len(sa) - 3)
        if _meta_shape(p) != (n, 1, h, w) or sa != (n, *ones, c, h * w) or sb != (n, *ones, h * w, 1):
            continue
        weighted = _new(gm, node, "call_function", operator.mul, (x, p), (n, c, h, w))
        mean = _new(gm, node, "call_method", "mean", (weighted, (2, 3)), (n, c, 1, 1), {"keepdim": True})
        total = _new(gm, node, "call_function", operator.mul, (mean, float(h * w)), (n, c, 1, 1))
        _replace(gm, node, _new(gm, node, "call_method", "reshape", (total, (-1, *ones, c, 1)), (n, *ones, c, 1)))


def _spatial_sums(gm: fx.GraphModule) -> None:
    """`x.sum(dims, keepdim=True)` over H and / or W of a map: `F.avg_pool2d(x, window) * window
    size` (a sum over both without keepdim: a mean over both, times H·W)."""
    for node in list(gm.graph.nodes):
        if not (node.op == "call_method" and node.target == "sum" or
                node.op == "call_function" and node.target is torch.sum):
            continue
        a = dict(zip(("input", "dim", "keepdim"), node.args), **node.kwargs)
        x, dims, keepdim = a.get("input"), a.get("dim"), a.get("keepdim", False)
        shape = _meta_shape(x)
        if set(a) - {"input", "dim", "keepdim"} or shape is None or len(shape) != 4 or not _is_float32(x):
            continue
        dims = (dims,) if type(dims) is int else dims
        if not isinstance(dims, (tuple, list)) or not dims or not all(type(d) is int and -4 <= d < 4 for d in dims):
            continue
        dims = sorted({d % 4 for d in dims})
        n, c, h, w = shape
        if keepdim and dims in ([2], [3], [2, 3]):
            window = (h if 2 in dims else 1, w if 3 in dims else 1)
            out = (n, c, h // window[0], w // window[1])
            pooled = _new(gm, node, "call_function", F.avg_pool2d, (x, window), out)
        elif not keepdim and dims == [2, 3]:
            window, out = (h, w), (n, c)
            pooled = _new(gm, node, "call_method", "mean", (x, (2, 3)), out)
        else:
            continue
        _replace(gm, node, _new(gm, node, "call_function", operator.mul, (pooled, float(window[0] * window[1])), out))
