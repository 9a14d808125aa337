"""Bring a traced graph to the one form the fusion passes read, whatever the capture (torch.fx or
TorchDynamo) and however the model spells its layers:

* an in-place op (`out.mul_(gain)`, `F.relu(x, inplace=True)`, `x += y`) becomes its out-of-place
  form, and the reads of the tensor it modified that follow it read its result: the passes after
  this one may give each op a fresh output, so a side effect would be lost (timm's NFNets read
  `out` after `out.mul_(skipinit_gain)`);
* shape checks that hold for every batch size (timm's `_assert(x.ndim == 4, ...)`) are dropped;
* values computed from parameters alone (a basis pair's scaling weight, a standardised conv
  weight, a layer scale reshaped) become constants of the plan: an inference plan's weights are
  frozen;
* functional layers on constant weights (`F.conv2d(x, self.weight, ...)`, `F.conv_transpose2d`, `F.linear`, timm's
  `F.batch_norm` inside BatchNormAct2d, every layer of a Dynamo graph) become the nn modules
  they compute;
* `torch.stack(maps).sum(0)` (an FPN's merge) becomes a chain of adds;
* attention written through 3-D and 5-D views (softmaxes, split attention, global context
  pooling) becomes ops on 4-D maps (attention.py);
* a map's L2 norm over its pixels (`x.norm(p=2, dim=(2, 3))`) becomes a global LPPool2d, its mean
  over the channels (`x.mean(1, keepdim=True)`) a 1×1 conv of weight 1/C, `torch.addcmul(a, b, c)`
  a + b·c (ConvNeXt-V2's global response norm);
* a BatchNorm1d, a LayerNorm or an add / sub / mul / div on (N, C) features (a classifier head's:
  RepViT's, InceptionNeXt's) becomes the same op on the features viewed as an (N, C, 1, 1) map, which
  the kernels run (a 1×1 map and its flattening share memory);
* efficient channel attention (ECA: a Conv1d sliding over the globally pooled channels, viewed as
  (N, 1, C), then a gate viewed back to (N, C, 1, 1)) becomes a 1×1 conv with the banded C×C
  weight that computes the same, on the pooled map kept 4-D; `y.expand_as(x)` read only by a
  broadcasting add / mul is dropped;
* channels-last regions (`permute(0, 2, 3, 1)`, LayerNorm / Linear / activations on the last dim,
  `permute(0, 3, 1, 2)`: ConvNeXt) become the same work on the NCHW map (channels_last.py);
* a map times / plus / minus a per-channel constant (a layer scale, `x * self.gamma.view(1, -1, 1, 1)`)
  becomes an eval-mode BatchNorm2d computing exactly that, which the fusion passes fold into the
  conv before it;
* explicit zero padding (`F.pad`, `nn.ZeroPad2d`), the same on both sides, whose only reader is
  a conv: added to that conv's padding;
* a conv of one input channel per group and m > 1 outputs (a depthwise conv with a channel
  multiplier: FastViT's downsampling) becomes a depthwise conv on the input's channels each repeated
  m times (a channel gather), which the depthwise kernel runs instead of the generic grouped one;
* a conv with no bias whose only reader is a 1×1 conv (and a linear into a linear) becomes a
  basis pair: the fusion passes then run it fused or folded, whichever the cost model picks.
  Exact: the composition is one linear map, and the first conv's zero padding is the pair's.

Every pass rewrites `gm` in place and needs ShapeProp's node.meta."""
from __future__ import annotations

import copy
import operator
import re

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..layers import BasisConv2d, BasisLinear, ChannelLayerNorm
from . import activations
from .attention import attention_to_maps
from .channels_last import channels_last_regions
from .fusion import _fresh_name
from .patterns import _PAD_FUNCTIONS, _meta_shape, reduction


def normalize(gm: fx.GraphModule) -> None:
    """Run every pass of this module over `gm` (in place)."""
    _out_of_place(gm)
    _methods_as_functions(gm)
    _drop_static_asserts(gm)
    _drop_no_op_casts(gm)
    _fold_parameter_expressions(gm)
    _functional_layers(gm)
    channels_last_regions(gm)
    _channel_conv1d(gm)
    _drop_broadcast_expands(gm)
    _stacked_sums(gm)
    attention_to_maps(gm)
    _reductions_as_layers(gm)
    _features_as_maps(gm)
    _channel_constants(gm)
    _fold_padding(gm)
    _depth_multiplier_convs(gm)
    _basis_pairs(gm)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


# --------------------------------------------------------------------------- in-place ops

_INPLACE_FUNCTIONS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                      operator.itruediv: operator.truediv}
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "transpose", "permute", "narrow", "expand", "expand_as",
                 "squeeze", "unsqueeze", "flatten", "unflatten", "chunk", "split", "t", "as_strided", "unfold",
                 "select", "diagonal", "swapaxes", "movedim", "__getitem__"}
_VIEW_FUNCTIONS = {operator.getitem, torch.reshape, torch.transpose, torch.permute, torch.narrow, torch.squeeze,
                   torch.unsqueeze, torch.flatten, torch.chunk, torch.split, torch.select, torch.movedim}


def _mutates(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether `node` writes into its first argument."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        return node.target in _INPLACE_FUNCTIONS or node.kwargs.get("inplace") is True or \
            getattr(node.target, "__name__", "").endswith("_") and not node.target.__name__.startswith("_") \
            and getattr(node.target, "__module__", "") in ("torch", "torch.nn.functional")
    if node.op == "call_module":
        return getattr(gm.get_submodule(node.target), "inplace", False) is True
    return False


def _is_view(node: object) -> bool:
    return isinstance(node, fx.Node) and (node.op == "call_method" and node.target in _VIEW_METHODS or
                                          node.op == "call_function" and node.target in _VIEW_FUNCTIONS)


def _out_of_place(gm: fx.GraphModule) -> None:
    """In-place ops as their out-of-place forms, the later reads of their target redirected to
    their result (a write into the model's input no longer reaches the caller's tensor; the
    output is the same). Refused (ValueError naming the op) where that is not the same
    computation: writing into a parameter, or into a view of a tensor read again later."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if not _mutates(gm, node) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        target = node.args[0]
        what = f"{node.op} {getattr(node.target, '__name__', node.target)} ({node.name})"
        if target.op == "get_attr":
            raise ValueError(f"basisrt.compile: {what} writes in place into the parameter or buffer "
                             f"{target.target!r}; a plan's weights are constants")
        chain = [target]
        while _is_view(chain[-1]) and chain[-1].args and isinstance(chain[-1].args[0], fx.Node):
            chain.append(chain[-1].args[0])
        if len(chain) > 1 and any(order[u] > order[node] for c in chain[1:] for u in c.users if u not in chain):
            raise ValueError(f"basisrt.compile: {what} writes in place into a view of {chain[-1].name}, which "
                             "is read again later; write it out of place (y = x * g, not x.mul_(g))")
        if node.op == "call_method":
            node.target = node.target[:-1]
        elif node.op == "call_function" and node.target in _INPLACE_FUNCTIONS:
            node.target = _INPLACE_FUNCTIONS[node.target]
        elif node.op == "call_function" and "inplace" in node.kwargs:
            node.kwargs = {**node.kwargs, "inplace": False}
        elif node.op == "call_function":
            node.target = getattr(torch, node.target.__name__[:-1])
        else:  # a module with inplace=True: a copy of it, out of place (the module may be called elsewhere)
            m = copy.copy(gm.get_submodule(node.target))
            m.inplace = False
            name = _fresh_name(gm, node.target + "_out_of_place")
            gm.add_submodule(name, m)
            node.target = name
        for user in list(target.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(target, node)


_ARITHMETIC_METHODS = {"mul": operator.mul, "add": operator.add, "sub": operator.sub, "div": operator.truediv}


def _methods_as_functions(gm: fx.GraphModule) -> None:
    """`x.mul(y)` as `x * y` (and add, sub, div without keywords): one spelling for the fusion passes."""
    for node in gm.graph.nodes:
        if node.op == "call_method" and node.target in _ARITHMETIC_METHODS and len(node.args) == 2 and \
                not node.kwargs:
            node.op, node.target = "call_function", _ARITHMETIC_METHODS[node.target]


# --------------------------------------------------------------------------- shape checks

_COMPARE = {operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_,
            operator.or_, operator.not_,
            # arithmetic on sizes (HaloNet's `_assert(H % block_size == 0)`)
            operator.mod, operator.floordiv, operator.add, operator.sub, operator.mul}
_UNKNOWN = object()


def _static_value(v: object) -> object:
    """The value of `v` if it is the same for every batch size (a rank, a non-batch dimension,
    a comparison of such), else _UNKNOWN."""
    if not isinstance(v, fx.Node):
        return v if isinstance(v, (int, float, bool, str, type(None))) else _UNKNOWN
    meta = v.meta.get("tensor_meta")
    if v.op == "call_function" and v.target is getattr and len(v.args) == 2:
        shape = _meta_shape(v.args[0])
        if shape is not None and v.args[1] == "ndim":
            return len(shape)
        return _UNKNOWN
    if v.op == "call_function" and v.target is operator.getitem and len(v.args) == 2 and \
            isinstance(v.args[1], int) and isinstance(v.args[0], fx.Node):
        whole = v.args[0]  # x.shape[i] / x.size()[i]
        if whole.op == "call_function" and whole.target is getattr and whole.args[1:] == ("shape",) or \
                whole.op == "call_method" and whole.target == "size" and len(whole.args) == 1:
            shape = _meta_shape(whole.args[0])
            if shape is not None and -len(shape) <= v.args[1] < len(shape) and v.args[1] % len(shape) != 0:
                return shape[v.args[1]]
        return _UNKNOWN
    if v.op == "call_method" and v.target in ("dim", "ndimension") and len(v.args) == 1:
        shape = _meta_shape(v.args[0])
        return len(shape) if shape is not None else _UNKNOWN
    if v.op == "call_method" and v.target == "size" and len(v.args) == 2 and isinstance(v.args[1], int):
        shape = _meta_shape(v.args[0])
        if shape is not None and -len(shape) <= v.args[1] < len(shape) and v.args[1] % len(shape) != 0:
            return shape[v.args[1]]
        return _UNKNOWN
    if v.op == "call_function" and v.target in _COMPARE and meta is None:
        args = [_static_value(a) for a in v.args]
        if _UNKNOWN in args or v.kwargs:
            return _UNKNOWN
        try:
            return v.target(*args)
        except (TypeError, ZeroDivisionError):
            return _UNKNOWN
    return _UNKNOWN


def _drop_static_asserts(gm: fx.GraphModule) -> None:
    """`torch._assert(cond, msg)` whose cond holds for every batch size: nothing to run."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (torch._assert, torch._assert_async) and \
                node.args and _static_value(node.args[0]) is True and not node.users:
            gm.graph.erase_node(node)


def _drop_no_op_casts(gm: fx.GraphModule) -> None:
    """`x.float()` of a float32 tensor, and a disabled autocast region's enter and exit (TorchDynamo
    records `with torch.autocast(..., enabled=False)`: EfficientViT's attention): they change
    nothing in a float32 plan."""
    enter, leave = torch.amp.autocast_mode._enter_autocast, torch.amp.autocast_mode._exit_autocast
    for node in list(gm.graph.nodes):
        x = node.args[0] if node.args else None
        if node.op == "call_method" and node.target == "float" and len(node.args) == 1 and not node.kwargs and \
                isinstance(x, fx.Node) and x.meta.get("tensor_meta") is not None and \
                getattr(x.meta["tensor_meta"], "dtype", None) == torch.float32:
            node.replace_all_uses_with(x)
            gm.graph.erase_node(node)
        elif node.op == "call_function" and node.target is enter and not node.kwargs and len(node.args) >= 3 and \
                node.args[2] is False and all(u.op == "call_function" and u.target is leave for u in node.users):
            for u in list(node.users):
                gm.graph.erase_node(u)
            gm.graph.erase_node(node)


# --------------------------------------------------------------------------- constant folding

_IMPURE = re.compile(r"rand|normal|bernoulli|dropout|uniform|empty|_$")  # random or in-place


def _fold_parameter_expressions(gm: fx.GraphModule) -> None:
    """Nodes whose tensor inputs are all parameters / buffers (get_attr) are computed now and
    read as constants (`_const_k` buffers of `gm`)."""
    constant: dict[fx.Node, Tensor] = {}
    k = 0
    for node in list(gm.graph.nodes):
        if node.op == "get_attr":
            value = _attr(gm, node.target)
            if isinstance(value, Tensor):
                constant[node] = value
            continue
        if node.op not in ("call_function", "call_method") or node.users == {}:
            continue
        inputs = node.all_input_nodes
        name = getattr(node.target, "__name__", str(node.target))
        if not inputs or any(i not in constant for i in inputs) or _IMPURE.search(name) or \
                node.target in (torch._assert, torch._assert_async, getattr):
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: constant[n])
        with torch.no_grad():
            fn = getattr(args[0], node.target) if node.op == "call_method" else node.target
            value = fn(*(args[1:] if node.op == "call_method" else args), **kwargs)
        if not isinstance(value, Tensor):
            continue
        while hasattr(gm, f"_const_{k}"):
            k += 1
        gm.register_buffer(f"_const_{k}", value.detach().clone())
        with gm.graph.inserting_before(node):
            new = gm.graph.get_attr(f"_const_{k}")
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        constant[new] = value


def _attr(gm: fx.GraphModule, target: str) -> object:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- functional layers

_CONVS = (F.conv2d, torch.conv2d)
_CONV_TRANSPOSES = (F.conv_transpose2d, torch.conv_transpose2d)
_LINEARS = (F.linear, torch._C._nn.linear)
_BATCH_NORMS = (F.batch_norm, torch.batch_norm)


def _const(gm: fx.GraphModule, v: object) -> Tensor | None:
    """The tensor of a get_attr node (None for anything else)."""
    if isinstance(v, fx.Node) and v.op == "get_attr":
        value = _attr(gm, v.target)
        return value if isinstance(value, Tensor) else None
    return None


def _args(node: fx.Node, names: tuple[str, ...]) -> dict | None:
    if len(node.args) > len(names) or not set(node.kwargs) <= set(names):
        return None
    return dict(zip(names, node.args), **node.kwargs)


def _conv_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    a = _args(node, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"))
    if a is None:
        return None
    w, b = _const(gm, a.get("weight")), _const(gm, a.get("bias"))
    if w is None or w.dim() != 4 or (a.get("bias") is not None and b is None) or \
            not isinstance(a.get("padding", 0), (int, tuple, list, str)):
        return None
    groups = a.get("groups", 1)
    try:  # padding "same" or "valid" as F.conv2d takes it (Hugging Face's EfficientNet under Dynamo)
        conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), a.get("stride", 1),
                         a.get("padding", 0), a.get("dilation", 1), groups, bias=b is not None, dtype=w.dtype)
    except ValueError:  # "same" with a stride: F.conv2d refuses it too
        return None
    return _with_weights(conv, w, b)


def _conv_transpose_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    a = _args(node, ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"))
    if a is None:
        return None
    w, b = _const(gm, a.get("weight")), _const(gm, a.get("bias"))
    if w is None or w.dim() != 4 or (a.get("bias") is not None and b is None) or \
            not all(isinstance(a.get(k, 0), (int, tuple, list)) for k in ("stride", "padding", "output_padding")):
        return None
    groups = a.get("groups", 1)
    return _with_weights(nn.ConvTranspose2d(w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), a.get("stride", 1),
                                            a.get("padding", 0), a.get("output_padding", 0), groups,
                                            bias=b is not None, dilation=a.get("dilation", 1), dtype=w.dtype), w, b)


def _linear_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    a = _args(node, ("input", "weight", "bias"))
    if a is None:
        return None
    w, b = _const(gm, a.get("weight")), _const(gm, a.get("bias"))
    if w is None or w.dim() != 2 or (a.get("bias") is not None and b is None):
        return None
    return _with_weights(nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype), w, b)


def _with_weights(layer: nn.Module, w: Tensor, b: Tensor | None) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b)
    return layer


def _batch_norm_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    a = _args(node, ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"))
    shape = _meta_shape(a.get("input")) if a is not None else None
    if a is None or a.get("training", False) is not False or shape is None or len(shape) != 4:
        return None
    mean, var = _const(gm, a.get("running_mean")), _const(gm, a.get("running_var"))
    w, b = _const(gm, a.get("weight")), _const(gm, a.get("bias"))
    if mean is None or var is None or (a.get("weight") is not None and w is None) or \
            (a.get("bias") is not None and b is None):
        return None
    bn = nn.BatchNorm2d(shape[1], eps=a.get("eps", 1e-5), dtype=mean.dtype).eval()
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(w if w is not None else torch.ones_like(mean))
        bn.bias.copy_(b if b is not None else torch.zeros_like(mean))
    return bn


def _group_norm_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    a = _args(node, ("input", "num_groups", "weight", "bias", "eps"))
    shape = _meta_shape(a.get("input")) if a is not None else None
    if a is None or shape is None or len(shape) != 4 or type(a.get("num_groups")) is not int:
        return None
    w, b = _const(gm, a.get("weight")), _const(gm, a.get("bias"))
    if (a.get("weight") is not None and w is None) or (a.get("bias") is not None and b is None) or \
            a["num_groups"] < 1 or shape[1] % a["num_groups"]:
        return None
    gn = nn.GroupNorm(a["num_groups"], shape[1], eps=a.get("eps", 1e-5), dtype=w.dtype if w is not None else None)
    with torch.no_grad():
        gn.weight.copy_(w if w is not None else torch.ones(shape[1]))
        gn.bias.copy_(b if b is not None else torch.zeros(shape[1]))
    return gn


def _layer_norm_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """nn.LayerNorm((C,)) of `F.layer_norm` on (N, C) features (a head's, under TorchDynamo: Hugging
    Face's ConvNeXt); on maps, channels_last_regions reads the function itself."""
    a = _args(node, ("input", "normalized_shape", "weight", "bias", "eps"))
    shape = _meta_shape(a.get("input")) if a is not None else None
    if shape is None or len(shape) != 2 or tuple(a.get("normalized_shape") or ()) != (shape[1],):
        return None
    w, b = _const(gm, a.get("weight")), _const(gm, a.get("bias"))
    if (a.get("weight") is not None and w is None) or (a.get("bias") is not None and b is None):
        return None
    ln = nn.LayerNorm(shape[1], eps=a.get("eps", 1e-5), elementwise_affine=w is not None, bias=b is not None)
    with torch.no_grad():
        if w is not None:
            ln.weight.copy_(w)
        if b is not None:
            ln.bias.copy_(b)
    return ln


_GROUP_NORMS = (F.group_norm, torch.group_norm)
_LAYER_NORMS = (F.layer_norm, torch.layer_norm)
_FUNCTIONAL = [(_CONVS, _conv_module), (_LINEARS, _linear_module), (_BATCH_NORMS, _batch_norm_module),
               (_GROUP_NORMS, _group_norm_module), (_CONV_TRANSPOSES, _conv_transpose_module),
               (_LAYER_NORMS, _layer_norm_module)]


def _functional_layers(gm: fx.GraphModule) -> None:
    """`F.conv2d` / `F.conv_transpose2d` / `F.linear` / `F.batch_norm` (eval) / `F.group_norm` /
    `F.layer_norm` (of (N, C) features) on constant weights: the module each computes."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        for targets, make in _FUNCTIONAL:
            if node.target in targets:
                m = make(gm, node)
                if m is not None:
                    base = "bn" if isinstance(m, nn.BatchNorm2d) else "gn" if isinstance(m, nn.GroupNorm) else "layer"
                    _call_module_instead(gm, node, m, base)
                break


def _call_module_instead(gm: fx.GraphModule, node: fx.Node, m: nn.Module, base: str) -> fx.Node:
    name = _fresh_name(gm, base)
    gm.add_submodule(name, m)
    x = node.args[0] if node.args else node.kwargs["input"]
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, (x,))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


# --------------------------------------------------------------------------- channel attention

_VIEWS = ("view", "reshape")


def _is_view_to(node: object, shape: tuple) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_method" and node.target in _VIEWS and \
        _meta_shape(node) == shape


def _pooled_4d(gm: fx.GraphModule, t: fx.Node, before: fx.Node) -> fx.Node | None:
    """`t`, a global mean (N, C) or (N, C, 1, 1) of a map, as an (N, C, 1, 1) node."""
    shape = _meta_shape(t)
    if shape is not None and len(shape) == 4 and shape[2:] == (1, 1):
        return t
    is_mean = t.op == "call_method" and t.target == "mean" or t.op == "call_function" and t.target is torch.mean
    args = dict(zip(("input", "dim", "keepdim"), t.args), **t.kwargs) if is_mean else {}
    src = args.get("input")
    dims = args.get("dim")
    if not is_mean or args.get("keepdim", False) or not isinstance(dims, (tuple, list)) or \
            len(_meta_shape(src) or ()) != 4 or sorted(d % 4 for d in dims) != [2, 3]:
        return None
    with gm.graph.inserting_before(before):
        pooled = gm.graph.call_method("mean", (src, (2, 3)), {"keepdim": True})
    n, c = shape
    meta = t.meta["tensor_meta"]
    pooled.meta = {"tensor_meta": meta._replace(shape=torch.Size((n, c, 1, 1)), stride=(c, 1, 1, 1))}
    return pooled


def _channel_conv1d(gm: fx.GraphModule) -> None:
    """ECA: pooled (N, C) -> view (N, 1, C) -> Conv1d(1, 1, k) -> activations -> view (N, C, 1, 1)
    as pooled (N, C, 1, 1) -> 1×1 Conv2d(C, C) with the banded weight -> the same activations."""
    for node in list(gm.graph.nodes):
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        if type(m) is not nn.Conv1d or (m.in_channels, m.out_channels, m.groups, m.stride) != (1, 1, 1, (1,)) or \
                m.padding_mode != "zeros" or isinstance(m.padding, str) or len(node.args) != 1 or node.kwargs:
            continue
        v = node.args[0]
        shape = _meta_shape(v)
        if shape is None or len(shape) != 3 or shape[1] != 1 or not _is_view_to(v, shape) or \
                not isinstance(v.args[0], fx.Node):
            continue
        n, _, c = shape
        chain, cur = [], node
        while len(cur.users) == 1 and activations.of_node(gm, next(iter(cur.users))) is not None:
            cur = next(iter(cur.users))
            chain.append(cur)
        back = next(iter(cur.users)) if len(cur.users) == 1 else None
        if not _is_view_to(back, (n, c, 1, 1)):
            continue
        pooled = _pooled_4d(gm, v.args[0], node)
        if pooled is None:
            continue
        w, (k,), (p,), (d,) = m.weight.detach().reshape(-1), m.kernel_size, m.padding, m.dilation
        band = torch.zeros(c, c, dtype=w.dtype)
        out = torch.arange(c)
        for j in range(k):  # output channel o reads input channel o + j·d - p
            src = out + j * d - p
            ok = (src >= 0) & (src < c)
            band[out[ok], src[ok]] = w[j]
        conv = nn.Conv2d(c, c, 1, bias=m.bias is not None, dtype=w.dtype)
        _with_weights(conv, band.view(c, c, 1, 1), None if m.bias is None else m.bias.detach().expand(c))
        name = _fresh_name(gm, node.target + "_as_conv2d")
        gm.add_submodule(name, conv)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (pooled,))
        new.meta = dict(back.meta)
        first_user = chain[0] if chain else back
        first_user.replace_input_with(node, new)
        for a in chain:
            a.meta = dict(back.meta)
        back.replace_all_uses_with(chain[-1] if chain else new)
        gm.graph.erase_node(back)
        gm.graph.erase_node(node)


def _drop_broadcast_expands(gm: fx.GraphModule) -> None:
    """`y.expand_as(x)` whose every reader is a broadcasting add / sub / mul / div of it and a
    tensor of x's shape (x itself, or `relu(x)`: MobileViT v2): those broadcast y themselves."""
    binary = (*_AFFINE_OPS,)
    for node in list(gm.graph.nodes):
        if node.op != "call_method" or node.target != "expand_as" or len(node.args) != 2 or node.kwargs:
            continue
        y, x = node.args
        ys, xs = _meta_shape(y), _meta_shape(x)
        if ys is None or xs is None or len(ys) != len(xs) or \
                any(a != b and a != 1 for a, b in zip(ys, xs)) or \
                not all(u.op == "call_function" and u.target in binary and len(u.args) == 2 and
                        _meta_shape(u.args[1 if u.args[0] is node else 0]) == xs for u in node.users):
            continue  # kept where a reader needs the expanded shape itself
        node.replace_all_uses_with(y)
        gm.graph.erase_node(node)


def _sum_over_stack(node: fx.Node) -> list[fx.Node] | None:
    """The maps of `torch.stack(maps).sum(0)` (`torch.sum(torch.stack(maps), dim=0)`), when `node`
    is that sum and the stack has no other reader; None otherwise."""
    if node.op == "call_method" and node.target == "sum":
        args, kwargs = node.args, dict(node.kwargs)
    elif node.op == "call_function" and node.target is torch.sum:
        args, kwargs = node.args, dict(node.kwargs)
    else:
        return None
    dim = args[1] if len(args) > 1 else kwargs.pop("dim", None)
    stack = args[0] if args else None
    if len(args) > 2 or kwargs or dim not in (0, (0,), [0]) or not isinstance(stack, fx.Node) or \
            stack.op != "call_function" or stack.target is not torch.stack or len(stack.users) != 1:
        return None
    parts = stack.args[0] if stack.args else stack.kwargs.get("tensors")
    stack_dim = stack.args[1] if len(stack.args) > 1 else stack.kwargs.get("dim", 0)
    if stack_dim != 0 or not isinstance(parts, (list, tuple)) or len(parts) < 2:
        return None
    shape = _meta_shape(node)
    if not all(isinstance(p, fx.Node) and _meta_shape(p) == shape for p in parts):
        return None
    return list(parts)


def _stacked_sums(gm: fx.GraphModule) -> None:
    """`torch.stack(maps).sum(0)` (an FPN's merge of its levels) becomes maps[0] + maps[1] + ...:
    adds the fusion passes fuse into the convs before them, where the stack copied every map."""
    for node in list(gm.graph.nodes):
        parts = _sum_over_stack(node)
        if parts is None:
            continue
        stack = node.args[0]
        with gm.graph.inserting_before(node):
            total = parts[0]
            for p in parts[1:]:
                total = gm.graph.call_function(operator.add, (total, p))
                total.meta = dict(node.meta)
        node.replace_all_uses_with(total)
        gm.graph.erase_node(node)
        gm.graph.erase_node(stack)


# --------------------------------------------------------------------------- per-channel constants

_AFFINE_OPS = {operator.mul: "mul", torch.mul: "mul", operator.add: "add", torch.add: "add",
               operator.sub: "sub", torch.sub: "sub", operator.truediv: "div", torch.div: "div"}


def _channel_constants(gm: fx.GraphModule) -> None:
    """`x ∘ c` for ∘ in + - * / with x a 4-D float32 map and c a constant of shape (C, 1, 1),
    (1, C, 1, 1) or one element: a BatchNorm2d (eps 0, running mean 0, var 1) that computes x·γ + β exactly."""
    for node in list(gm.graph.nodes):
        op = _AFFINE_OPS.get(node.target) if node.op == "call_function" else None
        if op is None or len(node.args) != 2 or node.kwargs:
            continue
        a, b = node.args
        x, c = (a, _const(gm, b)) if _const(gm, a) is None else (b, _const(gm, a))
        shape = _meta_shape(x)
        if c is None or shape is None or len(shape) != 4 or _meta_shape(node) != shape or \
                x.meta["tensor_meta"].dtype != torch.float32 or c.dtype != torch.float32 or \
                (tuple(c.shape) not in ((shape[1], 1, 1), (1, shape[1], 1, 1)) and c.numel() != 1):
            continue
        c = c.detach().flatten().expand(shape[1]).clone()  # a scalar tensor (a gain) for every channel
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        x_first = x is a
        if op == "div" and not x_first:
            continue  # c / x is not affine
        gamma, beta = {"mul": (c, zero), "add": (one, c), "div": (1.0 / c, zero),
                       "sub": (one, -c) if x_first else (-one, c)}[op]
        bn = nn.BatchNorm2d(shape[1], eps=0.0).eval()
        with torch.no_grad():
            bn.weight.copy_(gamma)
            bn.bias.copy_(beta)
        node.args = (x,)
        _call_module_instead(gm, node, bn, "channel_affine")


# --------------------------------------------------------------------------- depth multipliers

def _depth_multiplier_convs(gm: fx.GraphModule) -> None:
    """nn.Conv2d with groups = in_channels < out_channels (m = out / in outputs per input channel):
    the same weights as a depthwise conv (groups = out_channels) on x[:, [o // m for o]]. Exact:
    output channel o reads input channel o // m either way. Convs of the same input share the
    repeated map (FastViT's 7×7 and 3×3 branches)."""
    repeats: dict[tuple[fx.Node, int], fx.Node] = {}
    for node in list(gm.graph.nodes):
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        if type(m) is not nn.Conv2d or m.groups != m.in_channels or m.out_channels <= m.in_channels or \
                m.groups == 1 or len(node.args) != 1 or node.kwargs or _meta_shape(node.args[0]) is None:
            continue
        mult = m.out_channels // m.in_channels
        n, c, h, w = _meta_shape(node.args[0])
        dw = copy.deepcopy(m)
        dw.in_channels = dw.groups = m.out_channels
        name = _fresh_name(gm, node.target.replace(".", "_") + "_depthwise")
        gm.add_submodule(name, dw)
        key = (node.args[0], m.out_channels)
        if key not in repeats:
            index = [o // mult for o in range(m.out_channels)]
            with gm.graph.inserting_before(node):
                repeats[key] = gm.graph.call_function(operator.getitem, (node.args[0], (slice(None), index)))
            repeats[key].meta = {"tensor_meta": _extract_tensor_metadata(
                torch.empty(n, m.out_channels, h, w, device="meta"))}
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (repeats[key],))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


# --------------------------------------------------------------------------- reductions


def _reductions_as_layers(gm: fx.GraphModule) -> None:
    """On float32 maps: `x.norm(p=2, dim=(2, 3))` (or torch.norm, torch.linalg.vector_norm) an
    nn.LPPool2d(2) over the whole map; `x.mean(1, keepdim=True)` a 1×1 conv to one channel of weight
    1/C; `torch.addcmul(a, b, c)` a + b * c (value 1)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.addcmul:
            a = _args(node, ("input", "tensor1", "tensor2", "value"))
            if a is None or a.get("value", 1) != 1 or _meta_shape(node) is None or \
                    not all(k in a for k in ("input", "tensor1", "tensor2")):
                continue
            with gm.graph.inserting_before(node):
                prod = gm.graph.call_function(operator.mul, (a["tensor1"], a["tensor2"]))
                total = gm.graph.call_function(operator.add, (a["input"], prod))
            prod.meta, total.meta = dict(node.meta), dict(node.meta)
            node.replace_all_uses_with(total)
            gm.graph.erase_node(node)
            continue
        found = reduction(node)
        if found is None or found[0] == "sum":
            continue
        kind, order, a = found
        is_norm, is_mean = kind == "norm", kind == "mean"
        shape = _meta_shape(a.get("input"))
        if shape is None or len(shape) != 4 or a["input"].meta["tensor_meta"].dtype != torch.float32:
            continue
        dims = sorted(d % 4 for d in a["dim"]) if a["dim"] is not None else None
        n, c, h, w = shape
        if is_norm and a.get(order, 2) in (2, 2.0) and dims == [2, 3]:
            layer, keep = nn.LPPool2d(2, (h, w)), a.get("keepdim", False)
        elif is_mean and dims == [1] and a.get("keepdim", False):
            layer, keep = nn.Conv2d(c, 1, 1, bias=False), True
            with torch.no_grad():
                layer.weight.fill_(1.0 / c)
        else:
            continue
        name = _fresh_name(gm, "l2_pool" if is_norm else "channel_mean")
        gm.add_submodule(name, layer)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (a["input"],))
            out = new if keep else gm.graph.call_function(torch.flatten, (new, 1))
        new.meta = {"tensor_meta": _extract_tensor_metadata(
            torch.empty(n, 1 if is_mean else c, 1 if is_norm else h, 1 if is_norm else w, device="meta"))}
        out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)


# --------------------------------------------------------------------------- (N, C) features

def _as_map(gm: fx.GraphModule, x: object, before: fx.Node) -> object:
    """(N, C) float32 node `x` viewed as (N, C, 1, 1) (a new node); anything else as it is."""
    shape = _meta_shape(x)
    if shape is None or len(shape) != 2:
        return x
    with gm.graph.inserting_before(before):
        v = gm.graph.call_method("reshape", (x, (-1, shape[1], 1, 1)))
    v.meta = {"tensor_meta": _extract_tensor_metadata(torch.empty(*shape, 1, 1, device="meta"))}
    return v


def _features_as_maps(gm: fx.GraphModule) -> None:
    """An eval BatchNorm1d, a LayerNorm((C,)) or a binary op (+ - * / of two (N, C) tensors, or of
    one and a number) on float32 (N, C) features: the same op on the features viewed as an
    (N, C, 1, 1) map, flattened back."""
    for node in list(gm.graph.nodes):
        shape = _meta_shape(node)
        if shape is None or len(shape) != 2 or node.meta["tensor_meta"].dtype != torch.float32 or node.kwargs:
            continue
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        c = shape[1]
        if type(m) is nn.BatchNorm1d and len(node.args) == 1 and m.track_running_stats and \
                m.running_var is not None and _meta_shape(node.args[0]) == shape:
            layer = nn.BatchNorm2d(c, eps=m.eps, affine=m.affine).eval()
            layer.load_state_dict(m.state_dict())
        elif type(m) is nn.LayerNorm and len(node.args) == 1 and tuple(m.normalized_shape) == (c,) and \
                _meta_shape(node.args[0]) == shape:
            layer = ChannelLayerNorm(c, eps=m.eps, elementwise_affine=m.elementwise_affine, bias=m.bias is not None)
            layer.load_state_dict(m.state_dict())
        elif node.op == "call_function" and node.target in _AFFINE_OPS and len(node.args) == 2 and \
                all(_meta_shape(a) == shape or type(a) in (int, float) for a in node.args) and \
                any(isinstance(a, fx.Node) for a in node.args):
            layer = None
        else:
            continue
        if layer is not None:
            name = _fresh_name(gm, "features_" + ("bn" if isinstance(layer, nn.BatchNorm2d) else "norm"))
            gm.add_submodule(name, layer)
            with gm.graph.inserting_before(node):
                op = gm.graph.call_module(name, (_as_map(gm, node.args[0], node),))
        else:
            args = tuple(_as_map(gm, a, node) for a in node.args)
            with gm.graph.inserting_before(node):
                op = gm.graph.call_function(node.target, args)
        op.meta = {"tensor_meta": _extract_tensor_metadata(torch.empty(*shape, 1, 1, device="meta"))}
        with gm.graph.inserting_before(node):
            flat = gm.graph.call_function(torch.flatten, (op, 1))
        flat.meta = dict(node.meta)
        node.replace_all_uses_with(flat)
        gm.graph.erase_node(node)


# --------------------------------------------------------------------------- explicit padding

def _zero_pad(gm: fx.GraphModule, node: fx.Node) -> tuple[int, int] | None:
    """(top, left) of a zero pad the same on both sides of H and W, or None."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) is not nn.ZeroPad2d or len(node.args) != 1 or node.kwargs:
            return None
        pads = tuple(m.padding)
    elif node.op == "call_function" and node.target in _PAD_FUNCTIONS:
        a = _args(node, ("input", "pad", "mode", "value"))
        if a is None or a.get("mode", "constant") != "constant" or a.get("value", 0) not in (0, None):
            return None
        pads = tuple(a.get("pad", ()))
    else:
        return None
    if len(pads) != 4 or not all(type(p) is int and p >= 0 for p in pads) or pads[0] != pads[1] or \
            pads[2] != pads[3] or len(_meta_shape(node) or ()) != 4:
        return None
    return pads[2], pads[0]


def _fold_padding(gm: fx.GraphModule) -> None:
    """A symmetric zero pad read only by a conv: part of the conv's own padding."""
    for node in list(gm.graph.nodes):
        pad = _zero_pad(gm, node)
        if pad is None or len(node.users) != 1:
            continue
        (user,) = node.users
        m = gm.get_submodule(user.target) if user.op == "call_module" else None
        conv = m.basis if isinstance(m, BasisConv2d) else m
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str) or \
                user.args != (node,) or user.kwargs:
            continue
        m = copy.deepcopy(m)  # the module may be called elsewhere without the pad
        conv = m.basis if isinstance(m, BasisConv2d) else m
        conv.padding = (conv.padding[0] + pad[0], conv.padding[1] + pad[1])
        name = _fresh_name(gm, user.target + "_padded")
        gm.add_submodule(name, m)
        user.target = name
        user.args = (node.args[0],)
        gm.graph.erase_node(node)


# --------------------------------------------------------------------------- basis pairs

def _basis_pairs(gm: fx.GraphModule) -> None:
    """conv (no bias) -> 1×1 conv, and linear (no bias) -> linear, as basis pairs (BasisConv2d /
    BasisLinear with alpha = 1): each node's only reader is the second layer."""
    for node in list(gm.graph.nodes):
        first = gm.get_submodule(node.target) if node.op == "call_module" else None
        if type(first) not in (nn.Conv2d, nn.Linear) or first.bias is not None or len(node.users) != 1 \
                or node.kwargs:
            continue
        (user,) = node.users
        second = gm.get_submodule(user.target) if user.op == "call_module" else None
        if type(second) is not type(first) or user.args != (node,) or user.kwargs:
            continue
        if isinstance(first, nn.Conv2d):
            if second.kernel_size != (1, 1) or second.stride != (1, 1) or second.padding not in ((0, 0), "valid") \
                    or second.groups != first.groups or first.padding_mode != "zeros" or \
                    isinstance(first.padding, str) and first.padding != "valid":
                continue
            coeff = second.weight.detach().reshape(second.out_channels, -1)
            pair = BasisConv2d(first.requires_grad_(False), coeff, torch.ones(first.out_channels), second.bias)
        else:
            pair = BasisLinear(first.requires_grad_(False), second.weight.detach(), torch.ones(second.in_features),
                               second.bias)
        user.target = node.target
        gm.add_submodule(node.target, pair)  # replaces the first layer under its name
        user.args = node.args
        gm.graph.erase_node(node)
