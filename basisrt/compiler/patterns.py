"""Recognisers of graph patterns written in the many spellings third-party models use."""
from __future__ import annotations

import operator
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn


def _meta_shape(node: object) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


Shape = Callable[[fx.Node], "tuple[int, ...] | None"]


def _is_batch_size(node: object, of: fx.Node, _shape: Shape) -> bool:
    """Whether `node` is the batch size of tensor `of`: `t.size(0)`, `t.shape[0]` or `t.size()[0]`
    of `of` or of another activation with the same batch (`F.avg_pool2d(x, 4).view(x.size(0), -1)`)."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method" and node.target == "size":
        t, ok = node.args[0], node.args[1:] == (0,) or (len(node.args) == 1 and node.kwargs == {"dim": 0})
    elif node.op == "call_function" and node.target is operator.getitem and node.args[1:] == (0,) and \
            isinstance(node.args[0], fx.Node):
        shape = node.args[0]
        t = shape.args[0] if shape.args else None
        ok = (shape.op == "call_function" and shape.target is getattr and shape.args[1:] == ("shape",)) or \
            (shape.op == "call_method" and shape.target == "size" and len(shape.args) == 1 and not shape.kwargs)
    else:
        return False
    if not ok or not isinstance(t, fx.Node):
        return False
    a, b = _shape(t), _shape(of)
    return t is of or (t.op != "get_attr" and a is not None and b is not None and len(a) == len(b) == 4 and
                       a[0] == b[0])


def flatten_source(gm: fx.GraphModule, node: fx.Node, shape: Shape | None = None) -> fx.Node | None:
    """The 4-D tensor `node` flattens from dim 1 on, `(N, C, H, W) -> (N, C·H·W)` for every batch
    size N, or None. Spellings: `nn.Flatten()`, `torch.flatten(x, 1)`, `x.flatten(1)`, and
    `x.view` / `x.reshape` / `torch.reshape` with `(x.size(0), -1)`, `(x.shape[0], -1)`,
    `(-1, C·H·W)` or `(x.size(0), C·H·W)`. Tensor shapes come from ShapeProp's node.meta unless
    `shape` says them (a loaded plan has no meta; its program knows each buffer's shape)."""
    _shape = shape or _meta_shape
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        ok = type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim in (-1, 3)
        src = node.args[0] if ok and len(node.args) == 1 and not node.kwargs else None
    elif node.op == "call_function" and node.target is torch.flatten or \
            node.op == "call_method" and node.target == "flatten":
        args = dict(zip(("input", "start_dim", "end_dim"), node.args), **node.kwargs)
        ok = set(args) <= {"input", "start_dim", "end_dim"} and args.get("start_dim", 0) == 1 and \
            args.get("end_dim", -1) in (-1, 3)
        src = args["input"] if ok else None
    elif node.op == "call_method" and node.target in ("view", "reshape") or \
            node.op == "call_function" and node.target is torch.reshape:
        if node.kwargs or len(node.args) < 2:
            return None
        src, dims = node.args[0], node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        shape = _shape(src)
        if shape is None or len(shape) != 4 or len(dims) != 2:
            return None
        features = shape[1] * shape[2] * shape[3]
        first, second = dims
        by_batch = _is_batch_size(first, src, _shape) and second in (-1, features)
        if not (by_batch or (first == -1 and second == features)):
            return None
    else:
        return None
    shape = _shape(src)
    return src if isinstance(src, fx.Node) and shape is not None and len(shape) == 4 else None


_DYNAMIC = object()


class _Dynamic(Exception):
    pass


_BATCH = object()  # the batch size: not a constant of the plan
_SIZE_OPS = {operator.add: operator.add, operator.sub: operator.sub, operator.mul: operator.mul,
             operator.floordiv: operator.floordiv, operator.truediv: operator.truediv}


def _shape_value(v: object) -> object:
    """The value of `v` if only the input's spatial size decides it: a tensor's `.shape` /
    `.size()` (its batch dim _BATCH), `.size(d)`, indexing and slicing them, tuple unpacking
    (`h, w = x.shape[2:]`) and integer arithmetic on them; raises _Dynamic otherwise."""
    if isinstance(v, (list, tuple)):
        return type(v)(_shape_value(a) for a in v)
    if not isinstance(v, fx.Node):
        return v
    args = v.args
    if v.kwargs:
        raise _Dynamic
    is_shape = (v.op == "call_function" and v.target is getattr and args[1:] == ("shape",)) or \
        (v.op == "call_method" and v.target == "size" and len(args) in (1, 2))
    if is_shape:
        shape = _meta_shape(args[0])
        if shape is None:
            raise _Dynamic
        shape = (_BATCH, *shape[1:])
        return shape if len(args) == 1 or v.target is getattr else shape[_shape_value(args[1])]
    if v.op == "call_function" and v.target is operator.getitem:
        whole, index = _shape_value(args[0]), _shape_value(args[1])
        if not isinstance(whole, tuple) or not isinstance(index, (int, slice)):
            raise _Dynamic
        return whole[index]
    if v.op == "call_function" and v.target in _SIZE_OPS and len(args) == 2:
        a, b = _shape_value(args[0]), _shape_value(args[1])
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
            raise _Dynamic
        return _SIZE_OPS[v.target](a, b)
    raise _Dynamic


def _static_sizes(v: object) -> object:
    """`v` with each size computed from tensors' spatial dims (`x.size(2)`, `x.shape[-2:]`,
    `h, w = x.shape[2:]; (2 * h, 2 * w)`) replaced by its ShapeProp value (`F.avg_pool2d(out,
    out.size(2))`: a plan is for one input size, so H and W are constants; the batch is not), or
    _DYNAMIC if something is left that is not a constant."""
    try:
        value = _shape_value(v)
    except (_Dynamic, IndexError, TypeError, ZeroDivisionError):
        return _DYNAMIC

    def has_batch(x: object) -> bool:
        return x is _BATCH or (isinstance(x, (list, tuple)) and any(has_batch(a) for a in x))
    return _DYNAMIC if has_batch(value) else value


_POOL_ARGS = {  # positional parameters of the functional pools, after the input
    F.avg_pool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    F.max_pool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    F.adaptive_avg_pool2d: ("output_size",),
    F.adaptive_max_pool2d: ("output_size", "return_indices"),
}
_POOL_MODULES = {F.avg_pool2d: nn.AvgPool2d, F.max_pool2d: nn.MaxPool2d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
                 F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d}


def pool_module(node: fx.Node) -> tuple[nn.Module, bool] | None:
    """(the nn pooling module computing `node`, whether a flatten follows it) for a functional pool
    (`F.avg_pool2d(x, 2)`, `F.adaptive_avg_pool2d(x, 1)`, ...) or a global mean over H and W
    (`x.mean((2, 3))`: a 1×1 average pool, then a flatten unless keepdim), or None."""
    if node.op == "call_function" and node.target in _POOL_ARGS:
        names = _POOL_ARGS[node.target]
        if len(node.args) - 1 > len(names) or not set(node.kwargs) <= set(names) or not node.args:
            return None
        kw = {k: _static_sizes(v) for k, v in dict(zip(names, node.args[1:]), **node.kwargs).items()}
        if any(v is _DYNAMIC for v in kw.values()) or (node.target is F.avg_pool2d and kw.get("stride") == []):
            return None
        return _POOL_MODULES[node.target](**kw), False
    is_mean = node.op == "call_method" and node.target == "mean" or \
        node.op == "call_function" and node.target is torch.mean
    if not is_mean or len(node.args) < 1:
        return None
    kw = dict(zip(("input", "dim", "keepdim"), node.args), **node.kwargs)
    shape = _meta_shape(node.args[0])
    if set(kw) - {"input", "dim", "keepdim"} or shape is None or len(shape) != 4 or \
            not isinstance(kw.get("dim"), (tuple, list)) or sorted(d % 4 for d in kw["dim"]) != [2, 3]:
        return None
    return nn.AdaptiveAvgPool2d(1), not kw.get("keepdim", False)


__all__ = ["flatten_source", "pool_module"]


_DROPOUTS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)


def is_eval_identity(node: fx.Node) -> bool:
    """Whether `node` is the identity in eval mode as called: a functional dropout with
    training=False (timm's `F.dropout(x, p, training=self.training)`), torchvision's
    `stochastic_depth(x, p, mode, training=False)` (a `torch.fx.wrap`ped function, so a node of its
    own), or one with p = 0."""
    fn = node.target if node.op == "call_function" else None
    if fn in _DROPOUTS:  # F.dropout(x, p, training=False): training defaults to True
        args = dict(zip(("input", "p", "training", "inplace"), node.args), **node.kwargs)
        return set(args) <= {"input", "p", "training", "inplace"} and isinstance(args.get("input"), fx.Node) and \
            (args.get("training", True) is False or args.get("p") == 0)
    if getattr(fn, "__name__", None) != "stochastic_depth" or \
            getattr(fn, "__module__", "") != "torchvision.ops.stochastic_depth":
        return False
    args = dict(zip(("input", "p", "mode", "training"), node.args), **node.kwargs)
    return set(args) <= {"input", "p", "mode", "training"} and isinstance(args.get("input"), fx.Node) and \
        (args.get("training", True) is False or args.get("p") == 0)


_REARRANGE_METHODS = {"view", "reshape", "transpose", "permute", "contiguous", "flatten", "unflatten", "chunk",
                      "split", "narrow", "swapaxes", "unsqueeze", "squeeze"}
_REARRANGE_FUNCTIONS = {torch.transpose, torch.reshape, torch.flatten, torch.permute, torch.chunk, torch.split,
                        torch.narrow, torch.swapaxes, torch.unflatten, torch.unsqueeze, torch.squeeze, operator.getitem}
_SCALAR_FUNCTIONS = {operator.getitem, operator.floordiv, operator.mul, operator.add, operator.sub, getattr}


def _rearranges(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _REARRANGE_METHODS) or \
        (node.op == "call_function" and node.target in _REARRANGE_FUNCTIONS)


def probe_rearranged(node: fx.Node) -> tuple[fx.Node, torch.Tensor] | None:
    """(x, y) when `node` (a tensor of the same batch) is computed from one 4-D float32 map x through
    view / reshape / transpose / permute / flatten / (un)squeeze / chunk / split / getitem alone: y is
    `node` computed from a probe of x's shape whose every element holds its own (flat) index, in
    float64 (exact to 2**53). The ops are also run on a probe of one image more, which must give the
    same values for the first images: a chain that works only at the example's batch
    (`x.view(1, -1)` on a batch-1 example) or moves elements between images is refused."""
    out = _meta_shape(node)
    if out is None or len(out) < 1 or not _rearranges(node) or not node.args:
        return None
    src = node.args[0]
    while isinstance(src, fx.Node) and _rearranges(src) and src.args:
        src = src.args[0]
    shape = _meta_shape(src)
    if not isinstance(src, fx.Node) or shape is None or len(shape) != 4 or shape[0] != out[0] or \
            src.meta["tensor_meta"].dtype != torch.float32:
        return None
    n = shape[0]
    ys = [_run_rearranged(node, src, batch) for batch in (n, n + 1)]
    if any(y is None for y in ys) or tuple(ys[0].shape) != out or tuple(ys[1].shape) != (n + 1, *out[1:]) or \
            not torch.equal(ys[1][:n], ys[0]):
        return None
    return src, ys[0]


def _run_rearranged(node: fx.Node, src: fx.Node, batch: int) -> torch.Tensor | None:
    """probe_rearranged's run of the ops from `src` to `node` on a probe of `batch` images (other
    tensors whose sizes they read: meta tensors of their shape, with `batch` images where they have
    src's); None where the ops fail."""
    shape = _meta_shape(src)
    probe = torch.arange(batch * int(np.prod(shape[1:])), dtype=torch.float64).reshape(batch, *shape[1:])
    values: dict[fx.Node, object] = {src: probe}

    def value(arg: object) -> object:
        if isinstance(arg, dict):
            return {k: value(v) for k, v in arg.items()}
        if isinstance(arg, (list, tuple)):
            return type(arg)(value(a) for a in arg)
        if isinstance(arg, slice):
            return slice(value(arg.start), value(arg.stop), value(arg.step))
        if not isinstance(arg, fx.Node):
            return arg
        reads_shape = arg.op == "call_method" and arg.target == "size" or \
            arg.op == "call_function" and arg.target is getattr and arg.args[1:] == ("shape",)
        if arg not in values and reads_shape and isinstance(arg.args[0], fx.Node) and arg.args[0] not in values:
            # the size of another tensor (a Dynamo graph's `x.size(0)` of the plan input, `b, c, h, w =
            # y.shape` of an earlier map): from its meta
            size = _meta_shape(arg.args[0])
            if size is None:
                raise LookupError(arg.name)
            if size and size[0] == shape[0]:
                size = (batch, *size[1:])
            values[arg.args[0]] = torch.empty(size, device="meta")
        if arg not in values:
            scalar = arg.op == "call_method" and arg.target == "size" or \
                arg.op == "call_function" and arg.target in _SCALAR_FUNCTIONS
            if not (_rearranges(arg) or scalar):
                raise LookupError(arg.name)  # depends on a tensor other than the probe
            args, kwargs = value(arg.args), value(arg.kwargs)
            fn = getattr(args[0], arg.target) if arg.op == "call_method" else arg.target
            values[arg] = fn(*(args[1:] if arg.op == "call_method" else args), **kwargs)
        return values[arg]
    try:
        y = value(node)
    except (LookupError, RuntimeError, TypeError, ValueError, IndexError):
        return None
    return y if isinstance(y, torch.Tensor) else None


def channel_index(node: fx.Node) -> tuple[fx.Node, list[int]] | None:
    """(x, index) when `node` is x's channels in the order `index`, x a 4-D map of the same N, H, W,
    reached through view / reshape / transpose / permute / flatten / chunk / split / getitem
    (`x[:, a:b]`, `x.chunk(2, dim=1)[1]`, a channel shuffle's view → transpose → view). Found by
    running those ops on a probe tensor whose every element is its own index, or None."""
    found = probe_rearranged(node)
    if found is None:
        return None
    src, y = found
    n, c, h, w = _meta_shape(src)
    if y.dim() != 4 or tuple(y.shape[2:]) != (h, w):
        return None
    first = y[0, :, 0, 0].long()
    index = (first // (h * w)).tolist()
    if (first % (h * w)).any() or min(index, default=-1) < 0 or \
            not torch.equal(y, torch.arange(n * c * h * w, dtype=torch.float64).reshape(n, c, h, w)[:, index]):
        return None
    return src, index


MAX_PIXEL_BLOCKS = 64  # beyond this a rearrangement (a transpose of C and H, say) stays a PyTorch op


def pixel_blocks(node: fx.Node) -> tuple[fx.Node, list[tuple[int, list[int], list[int]]]] | None:
    """(x, blocks) when `node` moves the elements of each image of a 4-D map x (same N) through view /
    reshape / permute / getitem ... alone, as a pixel gather per block of output channels: block
    (channels, index, offset) makes the next `channels` output channels, at output pixel q, of
    channels [offset[q], offset[q] + channels) of input pixel index[q]. Space-to-depth (TResNet's
    stem: 16 blocks of the input's channels), MobileViT's unfolding into patches (one block),
    strided slices (YOLOv5's Focus). None when the channels do not fall into at most
    MAX_PIXEL_BLOCKS such blocks."""
    found = probe_rearranged(node)
    if found is None:
        return None
    src, y = found
    n, c, h, w = _meta_shape(src)
    if y.dim() != 4:
        return None
    per_image = c * h * w
    v = y.reshape(n, y.shape[1], -1).long()
    if not torch.equal(v, v[:1] + per_image * torch.arange(n).view(n, 1, 1)):
        return None  # mixes images
    v = v[0]
    chan, pix = v // (h * w), v % (h * w)
    blocks, c0, c_out = [], 0, v.shape[0]
    while c0 < c_out:
        c1 = c0 + 1
        while c1 < c_out and torch.equal(pix[c1], pix[c0]) and torch.equal(chan[c1], chan[c0] + (c1 - c0)):
            c1 += 1
        blocks.append((c1 - c0, pix[c0].tolist(), chan[c0].tolist()))
        if len(blocks) > MAX_PIXEL_BLOCKS:
            return None
        c0 = c1
    return src, blocks


__all__ += ["channel_index", "is_eval_identity", "pixel_blocks", "probe_rearranged"]


_NEAREST = ("nearest", "nearest-exact")
# pads whose every output pixel is a copy of an input pixel (TResNet's anti-aliased downsampling
# reflects its map before the blur)
_COPY_PADS = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
_PAD_FUNCTIONS = (F.pad, torch._C._nn.pad)


def _pixel_op(gm: fx.GraphModule, node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The op of `node` as a function of its first argument, if it moves whole pixels: nearest
    upsampling, a zero pad, a reflection, replication or circular pad; None for anything else."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if len(node.args) != 1 or node.kwargs:
            return None
        if type(m) is nn.Upsample and m.mode in _NEAREST:
            return m
        if type(m) in (nn.ZeroPad2d, nn.ConstantPad2d) and getattr(m, "value", 0.0) == 0 or \
                type(m) in _COPY_PADS:
            return m
        return None
    if node.op != "call_function" or not node.args:
        return None
    if node.target is F.interpolate:
        a = dict(zip(("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
                      "antialias"), node.args), **node.kwargs)
        kw = {k: _static_sizes(v) for k, v in a.items() if k != "input"}  # size=y.shape[-2:]: a constant here
        if kw.get("mode", "nearest") not in _NEAREST or any(v is _DYNAMIC for v in kw.values()):
            return None
        return lambda t: F.interpolate(t, **kw)
    if node.target in _PAD_FUNCTIONS:
        a = dict(zip(("input", "pad", "mode", "value"), node.args), **node.kwargs)
        pad, mode = a.get("pad"), a.get("mode", "constant")
        if mode not in ("constant", "reflect", "replicate", "circular") or \
                mode == "constant" and a.get("value", 0) not in (0, None) or \
                not isinstance(pad, (tuple, list)) or len(pad) != 4 or not all(type(p) is int for p in pad):
            return None
        return lambda t: F.pad(t, list(pad), mode)
    return None


def pixel_index(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, list[int]] | None:
    """(x, index) when `node` is a 4-D float32 map x with every output pixel a copy of input pixel
    index[q] of the same image (row-major over H×W), or zeros where index[q] is -1: nearest
    upsampling, zero, reflection, replication or circular padding, cropping by a negative pad. Found
    by running the op on a probe whose every pixel holds its own index + 1."""
    op = _pixel_op(gm, node)
    x = node.args[0] if op is not None else None
    shape, out = _meta_shape(x), _meta_shape(node)
    if op is None or shape is None or out is None or len(shape) != 4 or len(out) != 4 or \
            out[:2] != shape[:2] or x.meta["tensor_meta"].dtype != torch.float32:
        return None
    h, w = shape[2:]
    probe = torch.arange(1, h * w + 1, dtype=torch.float64).reshape(1, 1, h, w)
    try:
        y = op(probe)
    except (RuntimeError, TypeError, ValueError):
        return None
    if tuple(y.shape[2:]) != tuple(out[2:]) or not torch.equal(y, y.round()):
        return None
    return x, (y.flatten().long() - 1).tolist()


__all__ += ["pixel_index"]



def _interpolate_kwargs(gm: fx.GraphModule, node: fx.Node) -> dict | None:
    """F.interpolate's arguments of an upsampling node (the call, or an nn.Upsample /
    nn.UpsamplingBilinear2d module), sizes resolved to constants; None for anything else."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) not in (nn.Upsample, nn.UpsamplingBilinear2d) or len(node.args) != 1 or node.kwargs:
            return None
        return dict(size=m.size, scale_factor=m.scale_factor, mode=m.mode, align_corners=m.align_corners,
                    recompute_scale_factor=m.recompute_scale_factor)
    if node.op != "call_function" or node.target is not F.interpolate or not node.args:
        return None
    a = dict(zip(("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"),
                 node.args), **node.kwargs)
    kw = {k: _static_sizes(v) for k, v in a.items() if k != "input"}
    return None if any(v is _DYNAMIC for v in kw.values()) else kw


def _linear_taps(n_in: int, n_out: int, align_corners: bool, scale: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Index and weight (n_out × 2) of linear interpolation along one axis, in float32 as PyTorch's
    CPU kernel computes them (UpSample.h: area_pixel_compute_scale, area_pixel_compute_source_index,
    guard_index_and_lambda); both taps even where one weighs 0, as PyTorch reads them (NaN)."""
    f32 = np.float32
    if align_corners:
        s = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0)
    else:
        s = f32(1.0 / scale) if scale is not None and scale > 0 else f32(n_in) / f32(n_out)
    dst = np.arange(n_out).astype(f32)
    real = s * dst if align_corners else np.maximum(s * (dst + f32(0.5)) - f32(0.5), f32(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
    lam = np.clip(real - i0.astype(f32), f32(0), f32(1)).astype(f32)
    i1 = i0 + (i0 < n_in - 1)
    return np.stack([i0, i1], 1), np.stack([f32(1) - lam, lam], 1).astype(f32)


def resample_taps(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, list[tuple[np.ndarray, np.ndarray]]] | None:
    """(x, [(row index, row weight), (column index, column weight)]) when `node` upsamples a 4-D
    float32 map x bilinearly (F.interpolate, nn.Upsample, nn.UpsamplingBilinear2d): the separable
    taps of resample.h, checked against PyTorch's own output on a random map."""
    kw = _interpolate_kwargs(gm, node)
    x = node.args[0] if kw is not None else None
    shape, out = _meta_shape(x), _meta_shape(node)
    if kw is None or kw.get("mode") != "bilinear" or kw.get("antialias") or shape is None or out is None or \
            len(shape) != 4 or len(out) != 4 or out[:2] != shape[:2] or x.meta["tensor_meta"].dtype != torch.float32:
        return None
    scale = kw.get("scale_factor")
    if scale is None or kw.get("recompute_scale_factor") or kw.get("size") is not None:
        scales = (None, None)  # PyTorch then scales by the sizes
    else:
        scales = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
    align = bool(kw.get("align_corners"))
    taps = [_linear_taps(shape[2 + d], out[2 + d], align, scales[d]) for d in range(2)]
    probe = torch.randn(2, 3, *shape[2:], generator=torch.Generator().manual_seed(0))
    args = {k: v for k, v in kw.items() if v is not None}
    try:
        want = F.interpolate(probe, **args)
    except (RuntimeError, TypeError, ValueError):
        return None
    (iy, wy), (ix, wx) = [(torch.from_numpy(i), torch.from_numpy(w).double()) for i, w in taps]
    rows = (probe.double()[:, :, iy] * wy[:, :, None]).sum(3)  # (n, c, Ho, W)
    got = (rows[..., ix] * wx).sum(4)
    # float32 weights: an ulp of the source position off from PyTorch's, on either side (1e-6 of a
    # pixel difference); a wrong formula is off by a good part of one
    if tuple(want.shape) != tuple(got.shape) or float((got - want).abs().max()) > 1e-5 * float(want.abs().max()):
        return None
    return x, taps


__all__ += ["resample_taps"]


VECTOR_NORMS = (torch.linalg.vector_norm, torch._C._linalg.linalg_vector_norm)  # the latter: TorchDynamo's


def reduction(node: fx.Node) -> tuple[str, str, dict] | None:
    """(kind, the name of its order argument, its arguments by name) of a reduction node: kind
    "norm" (`x.norm`, torch.norm, vector_norm: the order argument "p" or "ord"), "mean" or "sum";
    "dim" as a tuple of ints (None when absent or not ints)."""
    if node.op == "call_function" and node.target in VECTOR_NORMS:
        kind, names = "norm", ("input", "ord", "dim", "keepdim")
    elif node.op == "call_method" and node.target == "norm" or node.op == "call_function" and node.target is torch.norm:
        kind, names = "norm", ("input", "p", "dim", "keepdim")
    elif node.op == "call_method" and node.target in ("mean", "sum"):
        kind, names = node.target, ("input", "dim", "keepdim")
    elif node.op == "call_function" and node.target in (torch.mean, torch.sum):
        kind, names = node.target.__name__, ("input", "dim", "keepdim")
    else:
        return None
    if len(node.args) > len(names) or not set(node.kwargs) <= set(names):
        return None
    a = dict(zip(names, node.args), **node.kwargs)
    dims = (a.get("dim"),) if type(a.get("dim")) is int else a.get("dim")
    ok = isinstance(dims, (tuple, list)) and dims and all(type(d) is int for d in dims)
    return kind, names[1] if kind == "norm" else "", {**a, "dim": tuple(dims) if ok else None}
