"""Lower a plan whose every step is a basisrt CPU kernel to one C++ `_C.Program`, so a call runs
all layers without returning to Python in between (the fx module costs about 11 µs per step).

A channel concatenation costs no copy: each part becomes a view of the concatenation's buffer,
which the part's producer writes and its readers read in place (DenseNet's growing blocks). A part
that cannot be a view (the input, a part of another concatenation: torchvision's DenseNet
concatenates all earlier features in every layer) is copied in by a gather op. A channel slice
(chunk, split, `x[:, a:b]`: ShuffleNet's halves) costs no copy either: a view of its source.

An MBConv's expand 1×1 conv whose only reader is a depthwise conv runs with it as one op
(expand_depthwise.h) when the expanded map is large (_EXPAND_DW_MIN_FLOATS per image): that map,
the largest tensor of MobileNetV2 and EfficientNet, then never reaches memory.

Plans with any other step (oneDNN pairs, ops PyTorch runs, non-trivial flattens, concatenations
that cannot be views, several inputs or outputs) are not lowered and keep running through the fx
module.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, fx, nn

from .. import _C
from . import activations
from .bf16 import Bf16Weights
from .cpu_steps import (
    BINARY_OPS,
    POOL_KINDS,
    ChannelAffineStep,
    ChannelGatherStep,
    ChannelNormStep,
    DepthToSpaceStep,
    EltwiseStep,
    FusedConv2d,
    FusedLinear,
    GroupNormStep,
    PixelGatherStep,
    PoolStep,
    ResampleStep,
    SoftmaxStep,
    TorchConvStep,
)
from .patterns import flatten_source


@dataclass
class _Buffer:
    id: int
    hwc: tuple[int, int, int]
    flat: bool  # the logical tensor is (N, C), not (N, C, H, W)


class NativeProgram:
    """A lowered plan: call it with an NCHW float32 CPU tensor. It returns what the model returns:
    one tensor, or a tuple, list or dict of them (`outputs`: the buffers, in `structure`'s order)."""

    def __init__(self, program: "_C.Program", outputs: list[_Buffer], num_threads: int | None,
                 op_names: list[str], fused_pools: dict[str, str], fused_expands: dict[str, str],
                 structure: object = None) -> None:
        self.program, self.outputs, self.num_threads = program, outputs, num_threads
        self.structure = structure  # the output with each tensor as its index in `outputs`; None: outputs[0]
        self.op_names = op_names  # the plan step each op runs, in order
        self.fused_pools = fused_pools  # pool step -> the conv step whose op runs it after its epilogue
        self.fused_expands = fused_expands  # expand conv step -> the depthwise step whose op runs both
        # (buffer id, flat) of a model returning one tensor: call_fast's one C++ call (else None)
        self._one = (outputs[0].id, outputs[0].flat) if len(outputs) == 1 and structure is None else None

    @property
    def output(self) -> _Buffer:
        """The first output buffer (the only one, for a model returning one tensor)."""
        return self.outputs[0]

    def call_fast(self, x: object) -> Tensor | None:
        """The output for `x` in one C++ call (`Program.call`), where the model returns one tensor and
        `x` is a plain contiguous float32 CPU tensor of the input's shape with at least one image;
        None for anything else, whose caller then checks `x` and names what is wrong. The Python
        steps of __call__ cost 25-40 µs a call after the kernels (batch 1: 5-8 % of ResNet-18 on 32×32)."""
        if self._one is None or type(x) is not Tensor:
            return None
        try:
            a = x.numpy()  # refuses tensors that need grad, live off the CPU, or carry lazy neg / conj bits
        except (RuntimeError, TypeError):
            return None
        y = self.program.call(a, self._one[0], self.num_threads or torch.get_num_threads(), self._one[1])
        return None if y is None else torch.from_numpy(y)

    def __call__(self, x: Tensor, op_seconds: np.ndarray | None = None) -> Tensor | tuple | list | dict:
        """Run the program; `op_seconds` (float64, one per op), if given, gets each op's time added."""
        if op_seconds is None:
            y = self.call_fast(x)
            if y is not None:
                return y
        x = x.contiguous()
        threads = self.num_threads or torch.get_num_threads()
        n = x.shape[0]
        # 4-D outputs come back NCHW from the program itself (a PyTorch permute-copy here woke its
        # OpenMP threads, whose spinning then slowed the next call's ops: 2x on a 64-channel 32x32 map)
        bufs = {b.id: b for b in self.outputs}  # a tensor returned twice: once
        ys = {i: torch.empty(n, b.hwc[2]) if b.flat else torch.empty(n, b.hwc[2], *b.hwc[:2]) for i, b in bufs.items()}
        ids, nchw = list(ys), [b.hwc[:2] != (1, 1) for b in bufs.values()]  # 1×1 maps: NHWC is NCHW
        if len(ids) == 1:
            self.program.run(x.numpy(), ys[ids[0]].numpy(), ids[0], threads, op_seconds, nchw[0])
        else:
            self.program.run_many(x.numpy(), [ys[i].numpy() for i in ids], ids, threads, op_seconds, nchw)
        tensors = [ys[b.id] for b in self.outputs]
        return tensors[0] if self.structure is None else _rebuild(self.structure, tensors)


def _rebuild(structure: object, tensors: list[Tensor]) -> object:
    if isinstance(structure, int):
        return tensors[structure]
    if isinstance(structure, dict):
        return {k: _rebuild(v, tensors) for k, v in structure.items()}
    return type(structure)(_rebuild(v, tensors) for v in structure)  # a tuple or a list


# Maps that only bf16 convs write and read are stored in bf16 (Program.keep_bf16); False keeps them
# fp32, for measuring what that is worth.
BF16_ACTIVATIONS = True


def lower(gm: fx.GraphModule, input_shape: tuple[int, ...],
          refusals: list[tuple[str, str]] | None = None) -> NativeProgram | None:
    """A NativeProgram running `gm` for inputs (N, *input_shape), or None if some step is not ours.
    With a `refusals` list, it gets (node, why) for *every* node that kept the plan from lowering
    (what basisrt.explain reports): a refused node's output then stands in as a buffer of its
    ShapeProp shape, so the nodes after it are judged too."""
    if len(input_shape) != 3:
        if refusals is not None:
            refusals.append(("input", f"the input is {len(input_shape) + 1}-D; a native program takes (N, C, H, W)"))
        return None
    program, buffers, threads, names, fused_pools, fused_expands = _C.Program(), {}, set(), [], {}, {}
    views: set[int] = set()  # buffers that are views: parts of a concatenation, channel slices
    expands: dict[fx.Node, tuple[fx.Node, FusedConv2d, _Buffer]] = {}  # depthwise node -> its expand conv

    class Refused(Exception):
        pass

    def refuse(node: fx.Node, why: str) -> None:
        if refusals is None:
            raise Refused
        refusals.append((node.name, why))
        meta = node.meta.get("tensor_meta")
        dims = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()
        if len(dims) == 4 and min(dims) > 0:
            buffers[node] = _Buffer(program.add_buffer(dims[2], dims[3], dims[1]), (dims[2], dims[3], dims[1]), False)
        elif len(dims) == 2 and min(dims) > 0:
            buffers[node] = _Buffer(program.add_buffer(1, 1, dims[1]), (1, 1, dims[1]), True)

    def shape(node: fx.Node) -> tuple[int, ...] | None:  # every buffer has the batch's N images
        b = buffers.get(node)
        return None if b is None or b.flat else (1, b.hwc[2], *b.hwc[:2])
    c, h, w = input_shape
    try:
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                if buffers:
                    refuse(node, "a second input (a native program has one)")
                    continue
                buffers[node] = _Buffer(program.add_buffer(h, w, c), (h, w, c), False)
            elif node.op == "output":
                leaves: list[fx.Node] = []
                structure = _output_structure(node.args[0], leaves)
                outs = [buffers.get(n) for n in leaves]
                if structure is None or not leaves or any(
                        out is None or out.id == 0 or out.id in views or (out.flat and out.hwc[:2] != (1, 1))
                        for out in outs):
                    refuse(node, "the output is not made of tensors that lowered ops made (one tensor, or a tuple, "
                                 "list or dict of them; not the input, a concatenation's part or a flattened map)")
                if refusals:
                    return None
                if BF16_ACTIVATIONS:
                    program.keep_bf16(sorted({out.id for out in outs}))  # maps between bf16 convs: half the bytes
                return NativeProgram(program, outs, next(iter(threads)) if len(threads) == 1 else None, names,
                                     fused_pools, fused_expands,
                                     None if isinstance(node.args[0], fx.Node) else structure)
            elif _is_scalar(node):
                continue  # a size feeding a flatten's shape; any other user of it is not lowered
            elif _unflattened(node, buffers):
                # (N, C) -> (N, C, 1, 1): the same memory (normalize._features_as_maps views a head's
                # features so, for the kernels of maps)
                src = buffers[node.args[0]]
                buffers[node] = _Buffer(src.id, src.hwc, False)
            elif flatten_source(gm, node, shape) in buffers:
                # (N, C, H, W) -> (N, C·H·W): the same NHWC memory when H = W = 1; a larger map only
                # as the input of a linear step that reads it as a conv (FusedLinear.map_chw)
                src = buffers[flatten_source(gm, node, shape)]
                buffers[node] = _Buffer(src.id, src.hwc, True)
            elif _is_channel_cat(node):
                parts = node.args[0] if node.args else node.kwargs["tensors"]
                made = _add_cat(program, [buffers.get(a) for a in parts], views)
                if made is None:
                    refuse(node, "a concatenation of parts of different sizes, or of flattened tensors")
                else:
                    buffers[node] = made
                    names.extend([node.name] * (program.ops - len(names)))  # its parts' copies, if any
            elif node.op == "call_module":
                if node in buffers:  # a pool fused into the conv before it
                    continue
                m = gm.get_submodule(node.target)
                if node in expands:  # the depthwise conv of an expand conv left for it
                    expand, e, x = expands.pop(node)
                    buffers[node] = _add_expand_depthwise(program, e, m, x)
                    fused_expands[expand.target] = node.target
                    threads.update((e.num_threads, m.num_threads))
                    names.extend([node.target] * (program.ops - len(names)))
                    continue
                ins = [buffers.get(a) for a in node.args]
                dw = _fusable_depthwise(gm, node, m, ins)
                if dw is not None:
                    expands[dw] = (node, m, ins[0])
                    continue
                if not isinstance(m, _LOWERED):
                    refuse(node, f"{type(m).__name__} runs in PyTorch: {_module_reason(m)}")
                    continue
                if node.kwargs or None in ins:
                    refuse(node, "reads a value that is not a lowered tensor")
                    continue
                pool = _fusable_pool(gm, node, m, ins[0])
                if isinstance(m, PoolStep):
                    made = _add_pool(program, m, ins[0])
                elif isinstance(m, ChannelAffineStep):
                    made = _add_affine(program, m, ins[0])
                elif isinstance(m, EltwiseStep):
                    made = _add_eltwise(program, m, ins)
                elif isinstance(m, ChannelGatherStep):
                    made = None if any(u.op == "output" for u in node.users) else \
                        _add_slice_view(program, m.index.numpy(), ins[0], views)
                    made = made or _add_gather(program, m.index.numpy(), ins[0])
                elif isinstance(m, PixelGatherStep):
                    made = _add_pixel_gather(program, m, ins[0])
                elif isinstance(m, ResampleStep):
                    made = _add_resample(program, m, ins[0])
                elif isinstance(m, SoftmaxStep):
                    made = _add_softmax(program, m, ins[0])
                else:
                    made = _add_conv(program, m, ins, pool is not None)
                if made is None:
                    refuse(node, f"{type(m).__name__} on an input it cannot read natively "
                                 f"({'a flattened' if ins[0].flat else 'an unflattened'} tensor of shape "
                                 f"{ins[0].hwc})")
                    continue
                buffers[node if pool is None else pool] = made
                if pool is not None:
                    fused_pools[pool.target] = node.target
                threads.add(m.num_threads)
                names.extend([node.target] * (program.ops - len(names)))  # none for a slice view
            else:
                refuse(node, _function_reason(node))
    except Refused:
        return None
    return None


def _output_structure(v: object, leaves: list[fx.Node]) -> object:
    """`v` (the graph's output) with each node replaced by its index in `leaves` (appended), or None
    if it holds anything but nodes in tuples, lists and dicts keyed by strings."""
    if isinstance(v, fx.Node):
        leaves.append(v)
        return len(leaves) - 1
    if isinstance(v, dict):
        items = {k: _output_structure(x, leaves) for k, x in v.items()}
        return None if any(not isinstance(k, str) or x is None for k, x in items.items()) else items
    if isinstance(v, (tuple, list)):
        items = [_output_structure(x, leaves) for x in v]
        return None if any(x is None for x in items) else (tuple(items) if isinstance(v, tuple) else items)
    return None


def _module_reason(m: nn.Module) -> str:
    if isinstance(m, TorchConvStep):
        return "the plan chose oneDNN for this layer (dense_backend='torch' or 'auto' timing)"
    return "no basisrt kernel for this module (or for its settings)"


def _function_reason(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else \
        f"{getattr(node.target, '__module__', '') or ''}.{getattr(node.target, '__name__', node.target)}".lstrip(".")
    what = f"{node.op} {target}"
    if node.op == "get_attr":
        return f"{what}: a parameter or buffer read as a tensor"
    return f"{what}: no basisrt kernel for this op (or its arguments / shapes)"


_LOWERED = (ChannelAffineStep, ChannelGatherStep, EltwiseStep, FusedConv2d, PixelGatherStep, PoolStep, ResampleStep,
            SoftmaxStep)


def _is_scalar(node: fx.Node) -> bool:
    """`x.size(...)`, `x.shape` or an item of either: a Python value, not a tensor."""
    if node.op == "call_method" and node.target == "size":
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return True
    return node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node) \
        and _is_scalar(node.args[0])


def _unflattened(node: fx.Node, buffers: dict) -> bool:
    """Whether `node` is `x.reshape(-1, C, 1, 1)` (or view) of x, (N, C) features in a flat buffer of
    a 1×1 map."""
    if node.op != "call_method" or node.target not in ("view", "reshape") or node.kwargs or len(node.args) < 2:
        return False
    src = buffers.get(node.args[0])
    dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
    return src is not None and src.flat and src.hwc[:2] == (1, 1) and tuple(dims) == (-1, src.hwc[2], 1, 1)


def _is_channel_cat(node: fx.Node) -> bool:
    """torch.cat of a list along dim 1 or -3, the channels of the 4-D parts `_add_cat` accepts."""
    if node.op != "call_function" or node.target not in (torch.cat, torch.concat, torch.concatenate):
        return False
    args = dict(zip(("tensors", "dim"), node.args), **node.kwargs)
    return set(args) <= {"tensors", "dim"} and isinstance(args["tensors"], (list, tuple)) and \
        args.get("dim", 0) in (1, -3)


def _add_cat(program: "_C.Program", parts: list[_Buffer | None], views: set[int]) -> _Buffer | None:
    """The concatenation's buffer, with each part made a view of its channels, or copied in when it
    cannot be one (the plan input, a part of another concatenation, a repeated part); None for a
    flattened part or parts of different sizes."""
    if not parts or None in parts or any(p.flat for p in parts) or len({p.hwc[:2] for p in parts}) != 1:
        return None
    hwc = (*parts[0].hwc[:2], sum(p.hwc[2] for p in parts))
    out = _Buffer(program.add_buffer(*hwc), hwc, False)
    offset, seen = 0, set()
    for p in parts:
        if p.id == 0 or p.id in views or p.id in seen:
            # a view of these channels of `out`, written by a copy of the part
            slot = program.add_buffer(*p.hwc)
            program.alias(slot, out.id, offset)
            program.add_gather(p.id, slot, np.arange(p.hwc[2], dtype=np.int64))
        else:
            program.alias(p.id, out.id, offset)
            views.add(p.id)
        seen.add(p.id)
        offset += p.hwc[2]
    return out


def _bf16(m: nn.Module) -> Bf16Weights | None:
    """Step m's bf16 weights (compiler/bf16.py), None when it runs fp32."""
    return getattr(m, "_bf16", None)


def _fusable_pool(gm: fx.GraphModule, node: fx.Node, m: nn.Module, x: _Buffer) -> fx.Node | None:
    """The 2×2, stride-2 max pool that is the only user of conv `node`, if the conv kernel can run
    it in its epilogue (VGG's conv → ReLU → pool): the unpooled map then never reaches memory."""
    if type(m) is not FusedConv2d or m.residual or x.flat or len(node.users) != 1 or _bf16(m) is not None:
        return None
    (user,) = node.users
    pool = gm.get_submodule(user.target) if user.op == "call_module" else None
    if not isinstance(pool, PoolStep) or user.kwargs or len(user.args) != 1:
        return None
    h, w = m.output_hw(*x.hwc[:2])
    fits = pool.kind == "max" and pool.geometry(h, w)[:2] == ((2, 2), (2, 2)) and pool.padding == (0, 0)
    return user if fits and h % 2 == 0 and w % 2 == 0 else None


_EXPAND_DW_MIN_FLOATS = 1 << 17  # per image: smaller expanded maps stay in L2 between two ops anyway


def _fusable_depthwise(gm: fx.GraphModule, node: fx.Node, m: nn.Module, ins: list[_Buffer | None]) -> fx.Node | None:
    """The depthwise conv node that is the only reader of 1×1 conv `node`, if the two can run as one
    expand_dw op (no residual, no fused pool, every window overlapping the image, a large expanded map).
    At precision bf16 too: the op runs its expand conv in fp32, and keeping the expanded map out of
    memory was worth more than bf16 (MobileNetV2 0.93×, EfficientNet-B0 0.83× of fp32 without it)."""
    if type(m) is not FusedConv2d or m.kernel != (1, 1) or m.stride != (1, 1) or m.padding != (0, 0) or \
            m.groups != 1 or m.residual or node.kwargs or len(ins) != 1 or ins[0] is None or ins[0].flat or \
            ins[0].hwc[2] != m.in_channels or len(node.users) != 1:
        return None
    (user,) = node.users
    d = gm.get_submodule(user.target) if user.op == "call_module" else None
    h, w, _ = ins[0].hwc
    e = m.out_channels
    if type(d) is not FusedConv2d or user.args != (node,) or user.kwargs or d.residual or d.rank or \
            not d.groups == d.in_channels == d.out_channels == e or h * w * e < _EXPAND_DW_MIN_FLOATS or \
            any(2 * p > (k - 1) * dl for p, k, dl in zip(d.padding, d.kernel, d.dilation)) or \
            _fusable_pool(gm, user, d, _Buffer(-1, (h, w, e), False)) is not None:
        return None
    return user


def _add_expand_depthwise(program: "_C.Program", e: FusedConv2d, d: FusedConv2d, x: _Buffer) -> _Buffer:
    h, w = d.output_hw(*x.hwc[:2])
    out = _Buffer(program.add_buffer(h, w, d.out_channels), (h, w, d.out_channels), False)
    arr = lambda t: None if t is None else t.numpy()  # noqa: E731
    act, alpha = activations.code(e.activation)
    dw_act, dw_alpha = activations.code(d.activation)
    program.add_expand_depthwise(x.id, out.id, e.B.numpy(), arr(e.A), arr(e.bias), e.rank, act, alpha, d.B.numpy(),
                                 arr(d.bias), dw_act, dw_alpha, d.kernel, d.stride, d.padding, d.dilation)
    return out


def _add_conv(program: "_C.Program", m: FusedConv2d, ins: list[_Buffer], pool: bool = False) -> _Buffer | None:
    """The conv op (with a 2×2 max pool after its epilogue if `pool`) and its output buffer."""
    x = ins[0]
    linear = isinstance(m, FusedLinear)
    if x.flat != linear or x.hwc[2] != m.in_channels or len(ins) != 1 + m.residual:
        return None
    if x.flat and x.hwc[:2] != m.kernel:  # a flattened map is read whole by the linear's H×W kernel
        return None
    h, w = m.output_hw(*x.hwc[:2])
    if h < 1 or w < 1:
        return None
    if pool:
        h, w = h // 2, w // 2
    out = _Buffer(program.add_buffer(h, w, m.out_channels), (h, w, m.out_channels), linear)
    res = ins[1] if m.residual else None
    if res is not None and (res.hwc != out.hwc or res.flat != out.flat):
        return None
    arr = lambda t: None if t is None else t.numpy()  # noqa: E731
    act, alpha = activations.code(m.activation)
    if _bf16(m) is not None:
        w = _bf16(m)
        program.add_conv_bf16(x.id, -1 if res is None else res.id, out.id, w.B, w.A, w.bias, m.rank, act, m.kernel,
                              m.stride, m.padding, m.dilation, alpha=alpha, winograd=w.winograd,
                              hilo=getattr(m, "bf16_hilo", True))
        return out
    program.add_conv(x.id, -1 if res is None else res.id, out.id, m.B.numpy(), arr(m.A), arr(m.bias), m.rank,
                     act, m.kernel, m.stride, m.padding, m.dilation, m.groups, 2 if pool else 1, alpha=alpha,
                     winograd=m.winograd_array())
    return out


def _add_affine(program: "_C.Program", m: ChannelAffineStep, x: _Buffer) -> _Buffer | None:
    """An affine op, or a norm op for a ChannelNormStep / GroupNormStep (ChannelAffineSteps with eps)."""
    if x.flat or x.hwc[2] != m.scale.numel():
        return None
    out = _Buffer(program.add_buffer(*x.hwc), x.hwc, False)
    act, alpha = activations.code(m.activation)
    if isinstance(m, ChannelNormStep):
        program.add_norm(x.id, out.id, m.scale.numpy(), m.shift.numpy(), m.eps, act, alpha=alpha)
    elif isinstance(m, GroupNormStep):
        program.add_group_norm(x.id, out.id, m.scale.numpy(), m.shift.numpy(), m.groups, m.eps, act, alpha=alpha)
    else:
        program.add_affine(x.id, out.id, m.scale.numpy(), m.shift.numpy(), act, alpha=alpha)
    return out


def _add_eltwise(program: "_C.Program", m: EltwiseStep, ins: list[_Buffer]) -> _Buffer | None:
    if len(ins) != 2 or any(b.flat for b in ins):
        return None
    a, b = ins
    if b.hwc not in (a.hwc, (1, 1, a.hwc[2]), (*a.hwc[:2], 1), (a.hwc[0], 1, a.hwc[2])):
        return None
    out = _Buffer(program.add_buffer(*a.hwc), a.hwc, False)
    act, alpha = activations.code(m.activation)
    program.add_eltwise(a.id, b.id, out.id, BINARY_OPS[m.op], act, alpha=alpha)
    return out


def _add_gather(program: "_C.Program", index: np.ndarray, x: _Buffer) -> _Buffer | None:
    if x.flat or index.size == 0 or int(index.max()) >= x.hwc[2]:
        return None
    hwc = (*x.hwc[:2], int(index.size))
    out = _Buffer(program.add_buffer(*hwc), hwc, False)
    program.add_gather(x.id, out.id, np.ascontiguousarray(index, dtype=np.int64))
    return out


def _add_slice_view(program: "_C.Program", index: np.ndarray, x: _Buffer, views: set[int]) -> _Buffer | None:
    """A channel slice (`x[:, a:b]`, a chunk or split) as a view of channels [a, b) of x's buffer,
    read in place with x's pixel stride as a concatenation's parts are; None when it cannot be one
    (the plan's input, a flattened map, not one run of channels)."""
    n = int(index.size)
    if x.flat or x.id == 0 or n == 0 or not np.array_equal(index, np.arange(index[0], index[0] + n)) or \
            index[0] + n > x.hwc[2]:
        return None
    hwc = (*x.hwc[:2], n)
    out = _Buffer(program.add_buffer(*hwc), hwc, False)
    program.alias(out.id, x.id, int(index[0]))
    views.add(out.id)  # a later concatenation copies it in, as any part that is already a view
    return out


def _add_pixel_gather(program: "_C.Program", m: PixelGatherStep, x: _Buffer) -> _Buffer | None:
    """A pixel gather op; a DepthToSpaceStep's copies a block of channels of each pixel (its offsets)."""
    if x.flat or x.hwc[:2] != m.in_hw:
        return None
    blocks = isinstance(m, DepthToSpaceStep)
    hwc = (*m.out_hw, m.channels if blocks else x.hwc[2])
    out = _Buffer(program.add_buffer(*hwc), hwc, False)
    program.add_pixel_gather(x.id, out.id, np.ascontiguousarray(m.index.numpy(), dtype=np.int64),
                             offset=m.offset.numpy() if blocks else None)
    return out


def _add_resample(program: "_C.Program", m: ResampleStep, x: _Buffer) -> _Buffer | None:
    if x.flat or x.hwc[:2] != m.in_hw:
        return None
    hwc = (*m.out_hw, x.hwc[2])
    out = _Buffer(program.add_buffer(*hwc), hwc, False)
    program.add_resample(x.id, out.id, m.row_index.numpy(), m.row_weight.numpy(), m.col_index.numpy(),
                         m.col_weight.numpy())
    return out


def _add_softmax(program: "_C.Program", m: SoftmaxStep, x: _Buffer) -> _Buffer | None:
    if x.flat or (m.axis == "channels" and x.hwc[2] % m.groups):
        return None
    out = _Buffer(program.add_buffer(*x.hwc), x.hwc, False)
    program.add_softmax(x.id, out.id, getattr(_C.SoftmaxAxis, m.axis), m.groups)
    return out


def _add_pool(program: "_C.Program", m: PoolStep, x: _Buffer) -> _Buffer | None:
    if x.flat:
        return None
    h, w, c = x.hwc
    kernel, stride, (oh, ow) = m.geometry(h, w)
    if oh < 1 or ow < 1:
        return None
    out = _Buffer(program.add_buffer(oh, ow, c), (oh, ow, c), False)
    program.add_pool(x.id, out.id, kernel, stride, m.padding, POOL_KINDS[m.kind], m.count_include_pad)
    return out


__all__ = ["NativeProgram", "lower"]
