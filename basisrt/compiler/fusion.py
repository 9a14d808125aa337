"""Graph passes over a torch.fx graph: fold BatchNorm, fuse residual add and activation into
conv/linear steps, drop dropout/identity, and choose per layer between the fused low-rank kernel
and a dense fold (by the cost model in basisrt.cost)."""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..cost import lowrank_pays
from ..layers import BasisConv2d, BasisLinear
from .cpu_kernels import FusedConv2d, FusedLinear, TorchDenseConv2d, conv_padding

_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_ADDS = (operator.add, torch.add, operator.iadd)
_NOOPS = (nn.Dropout, nn.Identity)


class Tracer(fx.Tracer):
    """Keeps basis layers whole, so the plan sees each basis pair as one step."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (BasisConv2d, BasisLinear)) or super().is_leaf_module(m, qualname)


@dataclass
class Layer:
    """A conv/linear being turned into a step: weights in float32, fusions accumulated."""

    weight: Tensor  # dense weight, or basis weight when scale is not None
    bias: Tensor | None
    scale: Tensor | None = None  # (C_out, r) scaling weight of a basis pair
    activation: str | None = None
    residual: fx.Node | None = None

    def scale_output(self, gamma: Tensor, beta: Tensor) -> None:
        """y ← gamma·y + beta per output channel (a folded BatchNorm)."""
        if self.scale is not None:
            self.scale = self.scale * gamma[:, None]
        else:
            self.weight = self.weight * gamma.view(-1, *[1] * (self.weight.dim() - 1))
        self.bias = beta + gamma * (self.bias if self.bias is not None else 0)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _activation(gm: fx.GraphModule, node: fx.Node) -> str | None:
    m = _module(gm, node)
    if m is not None:
        return _ACT_MODULES.get(type(m))
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS and not node.kwargs.get("inplace"):
        return _ACT_FUNCTIONS[node.target]
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    return None


def _as_layer(m: nn.Module, prefer_lowrank: bool) -> tuple[Layer, str] | None:
    """The step a module becomes, and its strategy, or None if the kernel cannot run it."""
    conv = m.basis if isinstance(m, BasisConv2d) else m
    if isinstance(conv, nn.Conv2d) and (conv_padding(conv) is None or conv.weight.dtype != torch.float32):
        return None
    if isinstance(m, (BasisConv2d, BasisLinear)):
        k = m.basis.weight[0].numel()
        if prefer_lowrank and lowrank_pays(k, m.coeff.shape[0], m.rank, m.groups):
            return Layer(m.basis.weight.detach(), m.bias, m.scaling_weight().detach()), "fused"
        return Layer(m.dense_weight().detach(), m.bias), "dense-fold"
    if type(m) in (nn.Conv2d, nn.Linear) and m.weight.dtype == torch.float32:
        return Layer(m.weight.detach(), m.bias), "dense"
    return None


def _pair_with_1x1(gm: fx.GraphModule, node: fx.Node, m: nn.Module, prefer_lowrank: bool):
    """A plain conv whose only user is a plain 1×1 conv (as other factorisation tools emit) is a
    basis pair: returns (Layer, strategy, the 1×1 node), or None."""
    user = _only_user(node)
    second = _module(gm, user) if user is not None else None
    if not (type(m) is nn.Conv2d and type(second) is nn.Conv2d and m.groups == 1 and second.groups == 1
            and second.kernel_size == (1, 1) and second.stride == (1, 1) and conv_padding(second) == (0, 0)
            and m.weight.dtype == second.weight.dtype == torch.float32 and conv_padding(m) is not None):
        return None
    scale = second.weight.detach()[:, :, 0, 0]
    bias = second.bias.detach() if second.bias is not None else None
    if m.bias is not None:  # A(Bx + b1) + b2 = ABx + (A b1 + b2)
        bias = scale @ m.bias.detach() + (bias if bias is not None else 0)
    rank, k = m.out_channels, m.weight[0].numel()
    if prefer_lowrank and lowrank_pays(k, second.out_channels, rank):
        return Layer(m.weight.detach(), bias, scale), "fused", user
    dense = (scale @ m.weight.detach().reshape(rank, -1)).reshape(second.out_channels, *m.weight.shape[1:])
    return Layer(dense, bias), "dense-fold", user


def _fold_bn(gm: fx.GraphModule, node: fx.Node, layer: Layer) -> fx.Node:
    user = _only_user(node)
    bn = _module(gm, user) if user is not None else None
    if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None:
        inv = torch.rsqrt(bn.running_var + bn.eps)
        gamma = inv * (bn.weight.detach() if bn.affine else 1)
        beta = (bn.bias.detach() if bn.affine else 0) - bn.running_mean * gamma
        layer.scale_output(gamma, beta)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
    return node


def _fuse_epilogue(gm: fx.GraphModule, node: fx.Node, layer: Layer) -> None:
    """Residual add (conv output + another tensor), then activation, into the step."""
    user = _only_user(node)
    if (user is not None and user.op == "call_function" and user.target in _ADDS and len(user.args) == 2
            and not user.kwargs and all(isinstance(a, fx.Node) for a in user.args) and user.args[0] is not user.args[1]):
        other = user.args[1] if user.args[0] is node else user.args[0]
        if _shape(other) is None or _shape(other) != _shape(node):  # broadcasting adds stay in torch
            return _fuse_activation(gm, node, layer)
        layer.residual = other
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
    _fuse_activation(gm, node, layer)


def _fuse_activation(gm: fx.GraphModule, node: fx.Node, layer: Layer) -> None:
    user = _only_user(node)
    act = _activation(gm, user) if user is not None else None
    if act is not None:
        layer.activation = act
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _later(a: fx.Node, b: fx.Node) -> fx.Node:
    """Whichever of two nodes comes later in the graph (the step must follow both inputs)."""
    for n in a.graph.nodes:
        if n is a:
            return b
        if n is b:
            return a
    raise AssertionError("nodes from different graphs")


def fuse(gm: fx.GraphModule, prefer_lowrank: bool = True, num_threads: int | None = None,
         dense_backend: str = "torch") -> dict[str, tuple[str, tuple[str, ...]]]:
    """Rewrite `gm` in place into plan steps (node shapes from ShapeProp must be in node.meta);
    returns step name -> (strategy, names of the layers it replaced)."""
    strategies: dict[str, tuple[str, tuple[str, ...]]] = {}
    for node in list(gm.graph.nodes):
        if node not in gm.graph.nodes:  # erased by an earlier fusion (BN, 1×1 partner, add, act)
            continue
        m = _module(gm, node)
        if isinstance(m, _NOOPS) or (isinstance(m, nn.Dropout) and not m.training):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            continue
        if m is None:
            continue
        pair = _pair_with_1x1(gm, node, m, prefer_lowrank)
        sources = (node.target,)
        if pair is not None:  # the 1×1 conv's node stands for the pair from here on
            layer, strategy, second = pair
            sources += (second.target,)
            second.replace_all_uses_with(node)
            gm.graph.erase_node(second)
        else:
            made = _as_layer(m, prefer_lowrank)
            if made is None:
                continue
            layer, strategy = made
        is_conv = isinstance(m, (nn.Conv2d, BasisConv2d))
        if is_conv:
            _fold_bn(gm, node, layer)
        _fuse_epilogue(gm, node, layer)
        name = node.target.replace(".", "_") + "_step"
        conv = (m.basis if isinstance(m, BasisConv2d) else m) if is_conv else None
        geometry = dict(stride=conv.stride, padding=conv_padding(conv), dilation=conv.dilation,
                        groups=conv.groups) if is_conv else dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
        if layer.scale is None and dense_backend == "torch":
            step = TorchDenseConv2d(layer.weight, layer.bias, **geometry, activation=layer.activation,
                                    residual=layer.residual is not None, linear=not is_conv)
        elif is_conv:
            step = FusedConv2d(layer.weight, layer.bias, **geometry, scale=layer.scale, activation=layer.activation,
                               residual=layer.residual is not None, num_threads=num_threads)
        else:
            step = FusedLinear(layer.weight, layer.bias, layer.scale, layer.activation,
                               layer.residual is not None, num_threads)
        gm.add_submodule(name, step)
        anchor = node if layer.residual is None else _later(node, layer.residual)
        with gm.graph.inserting_after(anchor):
            args = (node.args[0],) + ((layer.residual,) if layer.residual is not None else ())
            new = gm.graph.call_module(name, args)
        new.meta = dict(node.meta)  # keeps the shape, so later adds onto this step can fuse
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        strategies[name] = (strategy, sources)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return strategies
