"""Channels-last regions: `x.permute(0, 2, 3, 1)`, per-pixel work on the last dim, then
`.permute(0, 3, 1, 2)` back, as ConvNeXt writes its blocks (LayerNorm and the MLP's Linears on
NHWC) and LayerNorm2d (permute, F.layer_norm, permute), rewritten into the same work on the NCHW
map: a Linear becomes a 1×1 conv, a LayerNorm over the last dim a ChannelLayerNorm, a (C,)
constant a (C, 1, 1) one. A plan's steps hold NCHW maps stored channels-last, so the permutes cost
nothing once gone, and the convs and norms run as basisrt kernels.

A region is every node reached from the first permute before the permute back; it is rewritten
only when each of them works pixel by pixel on the last dim (so the result is the same whichever
dim holds the channels), or is an L2 norm, mean or sum over some dims with keepdim (ConvNeXt-V2's
global response norm: the dims are renumbered for NCHW), and nothing outside it reads one of them.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..layers import BasisConv2d, BasisLinear, ChannelLayerNorm
from . import activations
from .fusion import _fresh_name
from .patterns import _meta_shape, is_eval_identity, reduction

_TO_NHWC, _TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
_BINARY = {operator.mul, torch.mul, operator.add, torch.add, operator.sub, torch.sub, operator.truediv, torch.div}
_IDENTITIES = (nn.Dropout, nn.Identity)
_NCHW_DIM = (0, 2, 3, 1)  # where each NHWC dim is in NCHW


def channels_last_regions(gm: fx.GraphModule) -> None:
    """Rewrite every channels-last region of `gm` (in place; ShapeProp's node.meta needed)."""
    for start in list(gm.graph.nodes):
        if start in gm.graph.nodes and _permutation(start) == _TO_NHWC:
            found = _region(gm, start)
            if found is not None:
                _rewrite(gm, start, *found)


def _permutation(node: fx.Node) -> tuple[int, ...] | None:
    """The dims of a 4-D `x.permute(...)` / `torch.permute(x, ...)` node, or None."""
    if not (node.op == "call_method" and node.target == "permute" or
            node.op == "call_function" and node.target is torch.permute) or node.kwargs or len(node.args) < 2:
        return None
    dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
    shape = _meta_shape(node.args[0])
    if shape is None or len(shape) != 4 or len(dims) != 4 or not all(type(d) is int for d in dims):
        return None
    return tuple(d % 4 for d in dims)


def _region(gm: fx.GraphModule, start: fx.Node) -> tuple[list[fx.Node], list[fx.Node]] | None:
    """(the region's nodes in graph order, the permutes back), or None when it cannot be rewritten."""
    shape = _meta_shape(start)
    inside, ends, todo = {start}, [], [start]
    while todo:
        for user in todo.pop().users:
            if user in inside or user in ends:
                continue
            if _permutation(user) == _TO_NCHW:
                ends.append(user)
                continue
            out = _meta_shape(user)  # the region's N, H, W (H, W reduced to 1: a pixel reduction)
            if out is None or len(out) != 4 or out[0] != shape[0] or \
                    any(o not in (s, 1) for o, s in zip(out[1:3], shape[1:3])) or \
                    user.meta["tensor_meta"].dtype != torch.float32:
                return None
            inside.add(user)
            todo.append(user)
    nodes = [n for n in gm.graph.nodes if n in inside and n is not start]
    if not ends or not all(_per_pixel(gm, n, inside) for n in nodes):
        return None
    return nodes, ends


def _per_pixel(gm: fx.GraphModule, node: fx.Node, inside: set) -> bool:
    """Whether `node` maps each pixel's last-dim vector on its own, reading only region nodes and
    per-channel constants."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        one_input = len(node.args) == 1 and not node.kwargs and node.args[0] in inside
        if type(m) is nn.LayerNorm:
            return one_input and len(m.normalized_shape) == 1
        return one_input and (type(m) in (nn.Linear, BasisLinear) or isinstance(m, _IDENTITIES) and not m.training
                              or activations.of_node(gm, node) is not None)
    found = _reduction(node)
    if found is not None:
        return found["input"] in inside
    if node.op != "call_function":
        return False
    if node.target is F.layer_norm:
        return _layer_norm_args(gm, node, inside, _meta_shape(node)[3]) is not None
    if node.target in _BINARY:
        if len(node.args) != 2 or node.kwargs:
            return False
        c = _meta_shape(node)[3]
        return all(a in inside or _channel_constant(gm, a, c) is not None for a in node.args) and \
            any(a in inside for a in node.args)
    return (activations.of_node(gm, node) is not None or is_eval_identity(node)) and node.args[0] in inside


def _reduction(node: fx.Node) -> dict | None:
    """The arguments by name of an L2 norm, mean or sum over given dims with keepdim."""
    found = reduction(node)
    if found is None:
        return None
    kind, order, a = found
    if a["dim"] is None or a.get("keepdim") is not True or kind == "norm" and a.get(order, 2) not in (2, 2.0):
        return None
    return a


def _layer_norm_args(gm: fx.GraphModule, node: fx.Node, inside: set, c: int) -> dict | None:
    """F.layer_norm's arguments by name, if it normalises over the last dim (of size c)."""
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    if len(node.args) > len(names) or not set(node.kwargs) <= set(names):
        return None
    a = dict(zip(names, node.args), **node.kwargs)
    if a["input"] not in inside or tuple(a["normalized_shape"]) != (c,) or \
            not isinstance(a.get("eps", 1e-5), float):
        return None
    for key in ("weight", "bias"):
        if a.get(key) is not None and _channel_constant(gm, a[key], c) is None:
            return None
    return a


def _channel_constant(gm: fx.GraphModule, v: object, c: int) -> Tensor | None:
    """A number, or the float32 tensor of a get_attr node with c elements along its last dim only."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return torch.tensor(float(v))
    if not isinstance(v, fx.Node) or v.op != "get_attr":
        return None
    t = gm
    for part in v.target.split("."):
        t = getattr(t, part)
    if not isinstance(t, Tensor) or t.dtype != torch.float32 or t.dim() > 4 or \
            (t.numel() != 1 and (t.shape[-1] != c or t.numel() != c)):
        return None
    return t.detach()


def _rewrite(gm: fx.GraphModule, start: fx.Node, nodes: list[fx.Node], ends: list[fx.Node]) -> None:
    for node in nodes:
        n, h, w, c = _meta_shape(node)
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, nn.LayerNorm):
                _swap_module(gm, node, _channel_norm(m.weight, m.bias, m.normalized_shape[0], m.eps))
            elif type(m) in (nn.Linear, BasisLinear):
                _swap_module(gm, node, _as_conv(m))
        elif node.target is F.layer_norm:
            a = _layer_norm_args(gm, node, set(nodes) | {start}, c)
            weight, bias = (_channel_constant(gm, a.get(k), c) if a.get(k) is not None else None
                            for k in ("weight", "bias"))
            norm = _channel_norm(weight, bias, c, a.get("eps", 1e-5))
            name = _fresh_name(gm, "channel_norm")
            gm.add_submodule(name, norm)
            node.op, node.target, node.args, node.kwargs = "call_module", name, (a["input"],), {}
        elif node.op == "call_function" and node.target in _BINARY:
            node.args = tuple(_as_nchw_constant(gm, node, a, c) for a in node.args)
        elif (a := _reduction(node)) is not None:  # dim is the third argument of a norm, else the second
            dims = tuple(sorted(_NCHW_DIM[d % 4] for d in a["dim"]))
            i = 2 if reduction(node)[0] == "norm" else 1
            if i < len(node.args):
                node.args = (*node.args[:i], dims, *node.args[i + 1:])
            else:
                node.kwargs = {**node.kwargs, "dim": dims}
        node.meta["tensor_meta"] = _extract_tensor_metadata(torch.empty(n, c, h, w, device="meta"))
    start.replace_all_uses_with(start.args[0])
    gm.graph.erase_node(start)
    for end in ends:
        end.replace_all_uses_with(end.args[0])
        gm.graph.erase_node(end)


def _channel_norm(weight: Tensor | None, bias: Tensor | None, c: int, eps: float) -> ChannelLayerNorm:
    norm = ChannelLayerNorm(c, eps=eps, elementwise_affine=weight is not None or bias is not None)
    if norm.elementwise_affine:
        with torch.no_grad():
            norm.weight.copy_(weight.flatten() if weight is not None else torch.ones(c))
            norm.bias.copy_(bias.flatten() if bias is not None else torch.zeros(c))
    return norm.eval()


def _as_conv(m: nn.Module) -> nn.Module:
    """The 1×1 conv (or basis pair of 1×1 convs) computing linear layer `m` on each pixel."""
    lin = m.basis if isinstance(m, BasisLinear) else m
    conv = nn.Conv2d(lin.in_features, lin.out_features, 1, bias=lin.bias is not None, dtype=lin.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(lin.weight[:, :, None, None])
        if lin.bias is not None:
            conv.bias.copy_(lin.bias)
    if not isinstance(m, BasisLinear):
        return conv.eval()
    pair = BasisConv2d(conv.requires_grad_(False), m.coeff.detach(), m.sigma, m.bias)
    with torch.no_grad():
        pair.alpha.copy_(m.alpha)
    return pair.eval()


def _swap_module(gm: fx.GraphModule, node: fx.Node, m: nn.Module) -> None:
    name = _fresh_name(gm, node.target.replace(".", "_") + "_nchw")
    gm.add_submodule(name, m)
    node.target = name


def _as_nchw_constant(gm: fx.GraphModule, node: fx.Node, v: object, c: int) -> object:
    """`v` for the NCHW form of binary op `node`: a (C,) constant as (C, 1, 1)."""
    t = _channel_constant(gm, v, c) if isinstance(v, fx.Node) and v.op == "get_attr" else None
    if t is None or t.numel() == 1:
        return v
    name = _fresh_name(gm, "channel_constant")
    gm.register_buffer(name, t.reshape(c, 1, 1).clone())
    with gm.graph.inserting_before(node):
        return gm.graph.get_attr(name)
