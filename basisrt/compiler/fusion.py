"""Graph passes over a torch.fx graph: fold BatchNorm, fuse residual add and activation into
conv/linear steps, drop what is the identity in eval mode (dropout, stochastic depth), and choose
per layer between the fused low-rank kernel and a dense fold (by the cost model in basisrt.cost).
What no conv absorbs still becomes a basisrt step where a kernel can run it: a BatchNorm, a scalar
add / mul or a lone activation a per-channel affine step; a LayerNorm over channels a norm step; an
add or a squeeze-excitation gate's mul an eltwise step; a channel shuffle or slice a gather step."""
from __future__ import annotations

import math
import operator
import re

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..layers import BasisConv2d, BasisLinear, ChannelLayerNorm, MapSoftmax
from . import activations
from .cost_model import cost_model_choice
from .cpu_steps import (
    ChannelAffineStep,
    ChannelGatherStep,
    ChannelNormStep,
    DepthToSpaceStep,
    EltwiseStep,
    GroupNormStep,
    PixelGatherStep,
    ResampleStep,
    SoftmaxStep,
    batchnorm_affine,
    pool_step,
)
from .geometry import ConvGeometry, conv_padding
from .patterns import (
    channel_index,
    flatten_source,
    is_eval_identity,
    pixel_blocks,
    pixel_index,
    pool_module,
    resample_taps,
)
from .strategy import Chooser, Layer, Strategy, make_step

_ADDS = (operator.add, torch.add, operator.iadd)
_MULS = (operator.mul, torch.mul, operator.imul)
_SUBS = (operator.sub, torch.sub)
_DIVS = (operator.truediv, torch.div)
_NOOPS = (nn.Dropout, nn.Dropout2d, nn.Identity)


class Tracer(fx.Tracer):
    """Keeps basis layers (and ChannelLayerNorm and MapSoftmax, whose forwards check their input's
    rank) whole, so the plan sees each basis pair as one step."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (BasisConv2d, BasisLinear, ChannelLayerNorm, MapSoftmax)) or \
            super().is_leaf_module(m, qualname)


def _fresh_name(gm: fx.GraphModule, base: str) -> str:
    """A submodule name not yet in `gm`: a module called more than once becomes one step per call,
    each with its own fusions (the activation after one call is not the one after the other).
    Characters a plan file's names may not hold become "_" (torchvision's RegNet names a block "block1-0")."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", base)
    name, k = base, 1
    while hasattr(gm, name):
        name, k = f"{base}_{k}", k + 1
    return name


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def geometry_of(m: nn.Module) -> ConvGeometry | None:
    """Conv geometry of a conv / basis conv step (None for a linear step)."""
    conv = m.basis if isinstance(m, BasisConv2d) else m
    return ConvGeometry.of(conv) if isinstance(conv, nn.Conv2d) else None


def _candidates(gm: fx.GraphModule, node: fx.Node, m: nn.Module):
    """(fused Layer or None, dense Layer, the absorbed 1×1 node or None) for a module the kernels
    can run, or None. A plain conv whose only user is a plain 1×1 conv (as other factorisation
    tools emit) is a basis pair."""
    conv = m.basis if isinstance(m, BasisConv2d) else m
    if isinstance(conv, nn.Conv2d) and (conv_padding(conv) is None or conv.weight.dtype != torch.float32):
        return None
    if isinstance(m, (BasisConv2d, BasisLinear)):
        fused = Layer(m.basis.weight.detach(), m.bias, m.scaling_weight().detach())
        return fused, Layer(m.dense_weight().detach(), m.bias), None
    if type(m) not in (nn.Conv2d, nn.Linear) or m.weight.dtype != torch.float32:
        return None
    user = _only_user(node)
    second = _module(gm, user) if user is not None else None
    if not (type(m) is nn.Conv2d and type(second) is nn.Conv2d and m.groups == 1 and second.groups == 1
            and second.kernel_size == (1, 1) and second.stride == (1, 1) and conv_padding(second) == (0, 0)
            and second.weight.dtype == torch.float32):
        return None, Layer(m.weight.detach(), m.bias), None
    scale = second.weight.detach()[:, :, 0, 0]
    bias = second.bias.detach() if second.bias is not None else None
    if m.bias is not None:  # A(Bx + b1) + b2 = ABx + (A b1 + b2)
        bias = scale @ m.bias.detach() + (bias if bias is not None else 0)
    dense = (scale @ m.weight.detach().reshape(m.out_channels, -1)).reshape(second.out_channels, *m.weight.shape[1:])
    return Layer(m.weight.detach(), bias, scale), Layer(dense, bias), user


def _fold_bn(gm: fx.GraphModule, node: fx.Node, layer: Layer) -> fx.Node:
    user = _only_user(node)
    affine = batchnorm_affine(_module(gm, user)) if user is not None else None
    if affine is not None:
        layer.scale_output(*affine)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
    return node


def _take_activation(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The activation that is `node`'s only user, removed from the graph (fused into node's step)."""
    user = _only_user(node)
    act = activations.of_node(gm, user) if user is not None else None
    if act is not None:
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
    return act


def _fuse_epilogue(gm: fx.GraphModule, node: fx.Node, layer: Layer) -> None:
    """Residual add (conv output + another tensor), then activation, into the step."""
    user = _only_user(node)
    if (user is not None and user.op == "call_function" and user.target in _ADDS and len(user.args) == 2
            and not user.kwargs and all(isinstance(a, fx.Node) for a in user.args)
            and user.args[0] is not user.args[1]):
        other = user.args[1] if user.args[0] is node else user.args[0]
        # broadcasting adds stay in torch; so does a constant, whose batch of 1 is the example's by chance
        if _shape(other) is None or _shape(other) != _shape(node) or other.op == "get_attr":
            return _fuse_activation(gm, node, layer)
        layer.residual = other
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
    _fuse_activation(gm, node, layer)


def _fuse_activation(gm: fx.GraphModule, node: fx.Node, layer: Layer) -> None:
    act = _take_activation(gm, node)
    if act is not None:
        layer.activation = act


def _flattened_map(gm: fx.GraphModule, node: fx.Node, m: nn.Module) -> tuple[int, int, int] | None:
    """(C, H, W) when linear `node` reads `x.flatten(1)` (in any spelling) of a float32 map larger
    than 1×1: its step is then an H×W conv over the map (FusedLinear's map_chw)."""
    if not isinstance(m, (nn.Linear, BasisLinear)) or len(node.args) != 1 or node.kwargs:
        return None
    src = flatten_source(gm, node.args[0]) if isinstance(node.args[0], fx.Node) else None
    if src is None or not _is_float32_4d(src):
        return None
    _, c, h, w = _shape(src)
    return (c, h, w) if h * w > 1 else None


def _is_float32_4d(node: object) -> bool:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return meta is not None and getattr(meta, "dtype", None) == torch.float32 and len(meta.shape) == 4


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


def fuse(gm: fx.GraphModule, choose: Chooser | None = cost_model_choice, num_threads: int | None = None,
         dense_backend: str = "torch", backend: str = "cpu") -> dict[str, Strategy]:
    """Rewrite `gm` in place into plan steps (node shapes from ShapeProp must be in node.meta).
    `choose` picks fused vs dense per layer (None: always dense). backend "cpu": our C++ kernels
    wherever they apply; "triton": fused pairs as Triton kernels; "torch": every step PyTorch's
    (BatchNorm and activations still folded into the convs). Returns each step's Strategy by step
    name."""
    strategies: dict[str, Strategy] = {}
    _drop_eval_identities(gm)
    _pool_modules(gm)
    if backend == "cpu":
        _channel_gathers(gm, num_threads, strategies)
        _rearrangements(gm, num_threads, strategies)
        _pixel_gathers(gm, num_threads, strategies)
        _resamples(gm, num_threads, strategies)
        _transposed_convs(gm, num_threads, strategies)
        _pixel_shuffles(gm, num_threads, strategies)
    for node in list(gm.graph.nodes):
        if node not in gm.graph.nodes:  # erased by an earlier fusion (BN, 1×1 partner, add, act)
            continue
        m = _module(gm, node)
        ours = m is not None and backend == "cpu" and _is_float32_4d(node.args[0])
        pool = pool_step(m, num_threads, _shape(node.args[0])[2:]) if ours else None
        if pool is not None:  # ours, so a plan of fused steps never wakes PyTorch's OpenMP workers
            node.target = _fresh_name(gm, node.target.replace(".", "_") + "_pool")
            gm.add_submodule(node.target, pool)
            strategies[node.target] = Strategy.POOL
            continue
        if ours and type(m) is ChannelLayerNorm:
            node.target = _fresh_name(gm, node.target.replace(".", "_") + "_norm")
            c = m.normalized_shape[0]
            scale, shift = (m.weight, m.bias) if m.elementwise_affine else (torch.ones(c), torch.zeros(c))
            shift = torch.zeros(c) if shift is None else shift
            gm.add_submodule(node.target, ChannelNormStep(scale, shift, m.eps, _take_activation(gm, node), num_threads))
            strategies[node.target] = Strategy.NORM
            continue
        if ours and type(m) is MapSoftmax:
            node.target = _fresh_name(gm, node.target.replace(".", "_") + "_softmax")
            gm.add_submodule(node.target, SoftmaxStep(m.axis, m.groups, num_threads))
            strategies[node.target] = Strategy.SOFTMAX
            continue
        if ours and type(m) is nn.GroupNorm:
            node.target = _fresh_name(gm, node.target.replace(".", "_") + "_norm")
            c = m.num_channels
            scale, shift = (m.weight, m.bias) if m.affine else (torch.ones(c), torch.zeros(c))
            gm.add_submodule(node.target, GroupNormStep(scale.detach(), shift.detach(), m.num_groups, m.eps,
                                                        _take_activation(gm, node), num_threads))
            strategies[node.target] = Strategy.NORM
            continue
        affine = batchnorm_affine(m) if ours else None
        if affine is not None:  # a BatchNorm no conv absorbed (pre-activation): ours, with its ReLU
            node.target = _fresh_name(gm, node.target.replace(".", "_") + "_affine")
            gm.add_submodule(node.target, ChannelAffineStep(*affine, _take_activation(gm, node), num_threads))
            strategies[node.target] = Strategy.AFFINE
            continue
        found = _candidates(gm, node, m) if m is not None else None
        if found is None:
            continue
        fused, dense, second = found
        geometry = geometry_of(m)
        if second is not None:  # the 1×1 conv's node stands for the pair from here on
            second.replace_all_uses_with(node)
            gm.graph.erase_node(second)
        strategy = Strategy(choose(node.target, fused, dense, geometry)) if choose is not None else Strategy.DENSE
        if strategy is Strategy.DENSE and fused is not None:
            strategy = Strategy.DENSE_FOLD
        layer = dense if strategy.dense else fused
        if geometry is not None:
            _fold_bn(gm, node, layer)
        _fuse_epilogue(gm, node, layer)
        name = _fresh_name(gm, node.target.replace(".", "_") + "_step")
        gm.add_submodule(name, make_step(strategy, layer, geometry, backend=backend, dense_backend=dense_backend,
                                         num_threads=num_threads,
                                         map_chw=_flattened_map(gm, node, m) if geometry is None else None))
        anchor = node if layer.residual is None else _later(node, layer.residual)
        with gm.graph.inserting_after(anchor):
            args = (node.args[0],) + ((layer.residual,) if layer.residual is not None else ())
            new = gm.graph.call_module(name, args)
        new.meta = dict(node.meta)  # keeps the shape, so later adds onto this step can fuse
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        strategies[name] = strategy
    if backend == "cpu":
        _elementwise_steps(gm, num_threads, strategies)
    _views_read_any_layout(gm)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return strategies


def _drop_eval_identities(gm: fx.GraphModule) -> None:
    """Dropout, Identity and stochastic depth in eval mode go, before any fusion: a residual add
    after them then fuses into the conv before them."""
    for node in list(gm.graph.nodes):
        m = _module(gm, node)
        if (isinstance(m, _NOOPS) and not (isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.training)) or \
                is_eval_identity(node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def _replace_with_step(gm: fx.GraphModule, node: fx.Node, kind: Strategy, module: nn.Module, args: tuple,
                       strategies: dict) -> None:
    """`node` becomes a call of step `module` on `args` (same shape metadata), recorded as `kind`."""
    name = _fresh_name(gm, f"{node.name}_{kind}")
    gm.add_submodule(name, module)
    with gm.graph.inserting_before(node):
        new = gm.graph.call_module(name, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    strategies[name] = kind


def _channel_gathers(gm: fx.GraphModule, num_threads: int | None, strategies: dict) -> None:
    """Channel shuffles and channel slices (patterns.channel_index) become gather steps; the ops
    they replace go with the dead code after."""
    for node in list(gm.graph.nodes):
        found = channel_index(node)
        if found is None:
            continue
        src, index = found
        if index == list(range(_shape(src)[1])):
            node.replace_all_uses_with(src)
        else:
            _replace_with_step(gm, node, Strategy.GATHER, ChannelGatherStep(torch.tensor(index), num_threads), (src,),
                               strategies)
    gm.graph.eliminate_dead_code()


def _rearrangements(gm: fx.GraphModule, num_threads: int | None, strategies: dict) -> None:
    """Other moves of a map's elements through views, permutes and slices (patterns.pixel_blocks:
    space-to-depth, patch unfolding, strided slices) become a pixel gather per block of output
    channels, concatenated. Last node first, so a chain becomes one gather from its source."""
    for node in reversed(list(gm.graph.nodes)):
        if node not in gm.graph.nodes or not node.users:
            continue
        found = pixel_blocks(node)
        if found is None:
            continue
        src, blocks = found
        (n, c, *in_hw), out_hw = _shape(src), _shape(node)[2:]
        parts = []
        with gm.graph.inserting_before(node):
            for channels, index, offset in blocks:
                if channels == c and not any(offset):
                    step = PixelGatherStep(torch.tensor(index), in_hw, out_hw, num_threads)
                else:
                    step = DepthToSpaceStep(torch.tensor(index), torch.tensor(offset), channels, in_hw, out_hw,
                                            num_threads)
                name = _fresh_name(gm, f"{node.name}_{Strategy.PIXEL_GATHER}")
                gm.add_submodule(name, step)
                strategies[name] = Strategy.PIXEL_GATHER
                part = gm.graph.call_module(name, (src,))
                part.meta = {"tensor_meta": _extract_tensor_metadata(torch.empty(n, channels, *out_hw, device="meta"))}
                parts.append(part)
            new = parts[0] if len(parts) == 1 else gm.graph.call_function(torch.cat, (parts, 1))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
    gm.graph.eliminate_dead_code()


def _pixel_gathers(gm: fx.GraphModule, num_threads: int | None, strategies: dict) -> None:
    """Nearest upsampling and zero pads no conv absorbed (patterns.pixel_index) become pixel gather steps."""
    for node in list(gm.graph.nodes):
        found = pixel_index(gm, node)
        if found is None:
            continue
        src, index = found
        in_hw, out_hw = _shape(src)[2:], _shape(node)[2:]
        step = PixelGatherStep(torch.tensor(index), in_hw, out_hw, num_threads)
        _replace_with_step(gm, node, Strategy.PIXEL_GATHER, step, (src,), strategies)
    gm.graph.eliminate_dead_code()


def _resamples(gm: fx.GraphModule, num_threads: int | None, strategies: dict) -> None:
    """Bilinear upsampling (patterns.resample_taps) becomes resample steps."""
    for node in list(gm.graph.nodes):
        found = resample_taps(gm, node)
        if found is None:
            continue
        src, ((iy, wy), (ix, wx)) = found
        step = ResampleStep(torch.from_numpy(iy), torch.from_numpy(wy), torch.from_numpy(ix), torch.from_numpy(wx),
                            _shape(src)[2:], num_threads)
        _replace_with_step(gm, node, Strategy.RESAMPLE, step, (src,), strategies)
    gm.graph.eliminate_dead_code()


def transposed_as_conv(m: nn.ConvTranspose2d, in_hw: tuple[int, int], out_hw: tuple[int, int]
                       ) -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor, tuple[int, int]]:
    """A transposed conv (groups 1, dilation 1) as a stride-1 conv computing its s_h·s_w phases side
    by side, then a depth-to-space gather: (conv, index, offset, the conv's output size). Output row
    oy = s·t + r - p is phase r = (oy + p) mod s at row t, and phase r is a conv with taps
    w[s·j + r], j < J = ceil(k / s), read at input rows t - j (flipped); the conv's padding is J - 1,
    or more where the output runs past it. For k a multiple of s (2×2 and 4×4 at stride 2) it does
    the transposed conv's MACs exactly."""
    w = m.weight.detach()
    c_in, c_out, kh, kw = w.shape
    (sh, sw), (ph, pw) = m.stride, m.padding
    jh, jw = -(-kh // sh), -(-kw // sw)
    phases = sh * sw
    weight = torch.zeros(phases * c_out, c_in, jh, jw, dtype=w.dtype)
    for ry in range(sh):
        for rx in range(sw):
            for j in range(jh):
                for i in range(jw):
                    ky, kx = sh * (jh - 1 - j) + ry, sw * (jw - 1 - i) + rx
                    if ky < kh and kx < kw:
                        weight[(ry * sw + rx) * c_out:(ry * sw + rx + 1) * c_out, :, j, i] = w[:, :, ky, kx].t()
    (h, wd), (ho, wo) = in_hw, out_hw
    pad_h = max(jh - 1, (ho - 1 + ph) // sh + 1 - h)
    pad_w = max(jw - 1, (wo - 1 + pw) // sw + 1 - wd)
    conv = nn.Conv2d(c_in, phases * c_out, (jh, jw), padding=(pad_h, pad_w), bias=m.bias is not None, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if m.bias is not None:
            conv.bias.copy_(m.bias.detach().repeat(phases))
    zh, zw = h + 2 * pad_h - jh + 1, wd + 2 * pad_w - jw + 1
    oy, ox = torch.arange(ho)[:, None] + ph, torch.arange(wo)[None, :] + pw
    ty, tx = oy // sh + pad_h - (jh - 1), ox // sw + pad_w - (jw - 1)
    index = (ty * zw + tx).flatten()
    offset = (((oy % sh) * sw + ox % sw) * c_out).flatten()
    return conv, index, offset, (zh, zw)


def _transposed_convs(gm: fx.GraphModule, num_threads: int | None, strategies: dict) -> None:
    """nn.ConvTranspose2d (groups 1, dilation 1, zero padding: U-Net and LinkNet decoders) becomes
    a conv the plan runs as any other, and a depth-to-space gather (transposed_as_conv). A BatchNorm
    and an activation after it act on each pixel's channels, so they move before the gather: the
    BatchNorm folds into the conv, the activation into its epilogue (LinkNet's ConvT → BN → ReLU)."""
    for node in list(gm.graph.nodes):
        m = _module(gm, node)
        # an output_size argument only picks the output padding: the output's shape (ShapeProp) says it
        if type(m) is not nn.ConvTranspose2d or m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" \
                or not set(node.kwargs) <= {"output_size"} or len(node.args) not in (1, 2) or \
                not _is_float32_4d(node.args[0]) or not _is_float32_4d(node):
            continue
        x = node.args[0]
        (n, _, h, w), out = _shape(x), _shape(node)
        conv, index, offset, (zh, zw) = transposed_as_conv(m, (h, w), out[2:])
        name = _fresh_name(gm, node.target.replace(".", "_") + "_phases")
        gm.add_submodule(name, conv)
        with gm.graph.inserting_before(node):
            phases = gm.graph.call_module(name, (x,))
        phases.meta = dict(node.meta)
        phases.meta["tensor_meta"] = _extract_tensor_metadata(torch.empty(n, conv.out_channels, zh, zw, device="meta"))
        _fold_batchnorm_into_phases(gm, node, conv, out[1])
        step = DepthToSpaceStep(index, offset, out[1], (zh, zw), out[2:], num_threads)
        act = _only_user(node)
        if act is None or activations.of_node(gm, act) is None or act.args[0] is not node:
            _replace_with_step(gm, node, Strategy.PIXEL_GATHER, step, (phases,), strategies)
            continue
        act.replace_input_with(node, phases)  # act(phases), then the gather
        act.meta = dict(phases.meta)
        name = _fresh_name(gm, f"{node.name}_{Strategy.PIXEL_GATHER}")
        gm.add_submodule(name, step)
        with gm.graph.inserting_after(act):
            gather = gm.graph.call_module(name, (act,))
        gather.meta = dict(node.meta)
        act.replace_all_uses_with(gather, delete_user_cb=lambda u: u is not gather)
        gm.graph.erase_node(node)
        strategies[name] = Strategy.PIXEL_GATHER
    gm.graph.eliminate_dead_code()


def _fold_batchnorm_into_phases(gm: fx.GraphModule, node: fx.Node, conv: nn.Conv2d, channels: int) -> None:
    """An eval BatchNorm2d that is `node`'s only reader, folded into the phases' `conv` (its C_out
    channels repeated once per phase) and removed."""
    bn = _only_user(node)
    affine = batchnorm_affine(_module(gm, bn)) if bn is not None and bn.args == (node,) and not bn.kwargs else None
    if affine is None or affine[0].numel() != channels:
        return
    gamma, beta = (t.repeat(conv.out_channels // channels) for t in affine)
    with torch.no_grad():
        conv.weight.mul_(gamma[:, None, None, None].to(conv.weight.dtype))
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, dtype=conv.weight.dtype)
        conv.bias = nn.Parameter(bias * gamma + beta)
    bn.replace_all_uses_with(node)
    gm.graph.erase_node(bn)


def _shuffle_factor(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """r of `F.pixel_shuffle(x, r)` / `nn.PixelShuffle(r)(x)` on a 4-D float32 map; None otherwise."""
    m = _module(gm, node)
    if type(m) is nn.PixelShuffle and len(node.args) == 1 and not node.kwargs:
        r = m.upscale_factor
    elif node.op == "call_function" and node.target in (torch.nn.functional.pixel_shuffle, torch.pixel_shuffle) and \
            len(node.args) == 2 and not node.kwargs:
        r = node.args[1]
    else:
        return None
    return r if type(r) is int and r >= 1 and _is_float32_4d(node.args[0]) and _is_float32_4d(node) else None


def _pixel_shuffles(gm: fx.GraphModule, num_threads: int | None, strategies: dict) -> None:
    """Pixel shuffle (depth to space: ESPCN's and EDSR's upsampling) becomes a channel gather to
    phase-major order, then the depth-to-space gather a transposed conv uses: output channel c at
    phase (i, j) is input channel c·r² + i·r + j."""
    for node in list(gm.graph.nodes):
        r = _shuffle_factor(gm, node)
        if r is None:
            continue
        x = node.args[0]
        (_, c_in, h, w), out = _shape(x), _shape(node)
        c = c_in // (r * r)
        order = [cc * r * r + phase for phase in range(r * r) for cc in range(c)]  # phase-major
        with gm.graph.inserting_before(node):
            name = _fresh_name(gm, f"{node.name}_{Strategy.GATHER}")
            gm.add_submodule(name, ChannelGatherStep(torch.tensor(order), num_threads))
            gathered = gm.graph.call_module(name, (x,))
        gathered.meta = dict(x.meta)
        strategies[name] = Strategy.GATHER
        oy, ox = torch.arange(h * r)[:, None], torch.arange(w * r)[None, :]
        index = ((oy // r) * w + ox // r).flatten()
        offset = (((oy % r) * r + ox % r) * c).flatten()
        step = DepthToSpaceStep(index, offset, c, (h, w), out[2:], num_threads)
        _replace_with_step(gm, node, Strategy.PIXEL_GATHER, step, (gathered,), strategies)
    gm.graph.eliminate_dead_code()


def _elementwise_steps(gm: fx.GraphModule, num_threads: int | None, strategies: dict) -> None:
    """What no conv absorbed, on float32 maps: an add or mul of two maps (or of a map and a
    (N, C, 1, 1) gate) becomes an eltwise step, a map plus / times / minus / divided by a number or
    a lone activation a per-channel affine step; each takes the activation after it."""
    for node in list(gm.graph.nodes):
        if node not in gm.graph.nodes or node.op != "call_function" or not _is_float32_4d(node):
            continue
        step = _elementwise_step(gm, node, num_threads)
        if step is None:
            continue
        module, args = step
        act = _take_activation(gm, node)
        if act is not None:
            module.activation = act
        kind = Strategy.ELTWISE if isinstance(module, EltwiseStep) else Strategy.AFFINE
        _replace_with_step(gm, node, kind, module, args, strategies)
    for node in list(gm.graph.nodes):  # activations left alone (after a pool, a concatenation, the input)
        act = activations.of_node(gm, node)
        if act is None or not node.args or not _is_float32_4d(node.args[0]) or not _is_float32_4d(node):
            continue
        c = _shape(node)[1]
        step = ChannelAffineStep(torch.ones(c), torch.zeros(c), act, num_threads)
        _replace_with_step(gm, node, Strategy.AFFINE, step, (node.args[0],), strategies)


def _elementwise_step(gm: fx.GraphModule, node: fx.Node, num_threads: int | None):
    """(step module, its args) for an add / sub / mul / div call `node` a basisrt kernel can run."""
    binary = "add" if node.target in _ADDS else "mul" if node.target in _MULS else \
        "sub" if node.target in _SUBS else "div" if node.target in _DIVS else None
    scalar_ops = (*_ADDS, *_MULS, *_SUBS, *_DIVS)
    if node.kwargs or len(node.args) != 2 or node.target not in scalar_ops:
        return None
    a, b = node.args
    if binary is not None and _is_float32_4d(a) and _is_float32_4d(b):
        if a.op == "get_attr" or b.op == "get_attr":  # a constant has no batch dim to follow the input's
            return None
        sa, sb = _shape(a), _shape(b)
        if _shape(node) == sb != sa:  # the broadcast one second: a gate (N, C, 1, 1), a map (N, 1, H, W)
            if binary in ("sub", "div"):  # gate - map, gate / map: no kernel
                return None
            a, b, sa, sb = b, a, sb, sa
        if sa != _shape(node) or sb[0] != sa[0] or \
                sb[1:] not in (sa[1:], (sa[1], 1, 1), (1, *sa[2:]), (*sa[1:3], 1)):
            return None
        return EltwiseStep(binary, None, num_threads), (a, b)
    number = b if isinstance(a, fx.Node) else a
    x = a if isinstance(a, fx.Node) else b
    if not isinstance(number, (int, float)) or isinstance(number, bool) or not _is_float32_4d(x) or \
            _shape(x) != _shape(node):
        return None
    c = _shape(x)[1]
    scale, shift = 1.0, 0.0
    if binary == "add":
        shift = number
    elif binary == "mul":
        scale = number
    elif binary == "sub":
        scale, shift = (1.0, -number) if x is a else (-1.0, number)
    elif x is a and number != 0 and math.isfinite(1.0 / number):  # x / number (number / x is not affine)
        scale = 1.0 / number  # x · (1 / number): within an ulp of x / number, exact for powers of two
    else:
        return None
    return ChannelAffineStep(torch.full((c,), float(scale)), torch.full((c,), float(shift)), None, num_threads), (x,)


def _pool_modules(gm: fx.GraphModule) -> None:
    """Functional pools and global means (`F.avg_pool2d(x, 4)`, `x.mean((2, 3))`) become calls of
    the equivalent pooling modules, which fuse() then runs with basisrt's pooling kernel."""
    for node in list(gm.graph.nodes):
        found = pool_module(node)
        if found is None:
            continue
        module, flatten = found
        name = _fresh_name(gm, f"{node.name}_module")
        gm.add_submodule(name, module)
        with gm.graph.inserting_before(node):
            pool = gm.graph.call_module(name, (node.args[0],))
            out = gm.graph.call_function(torch.flatten, (pool, 1)) if flatten else pool
        n, c = _shape(node.args[0])[:2]
        pool.meta = dict(node.meta)
        if flatten:  # the pool's own output is (N, C, 1, 1); the flatten's is the mean's
            pool.meta["tensor_meta"] = _extract_tensor_metadata(torch.empty(n, c, 1, 1, device="meta"))
            out.meta = dict(node.meta)
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)


def _views_read_any_layout(gm: fx.GraphModule) -> None:
    """`x.view(...)` becomes `x.reshape(...)`: steps return NCHW tensors stored channels_last, which
    PyTorch's ops after them keep, and `view` cannot flatten (PyTorch raises); reshape copies only
    then. The same values either way: normalize made every write out of place."""
    for node in gm.graph.nodes:
        if node.op == "call_method" and node.target in ("view", "view_as") and \
                not any(isinstance(a, torch.dtype) for a in node.args[1:]):  # view(dtype) reinterprets
            node.target = {"view": "reshape", "view_as": "reshape_as"}[node.target]
