"""What a saved plan may hold (basisrt/compiler/serialize.py reads and writes the files).

A plan file is untrusted input: loading must not run code from it, and every value in it is
checked before anything runs. This module is that contract, as explicit allow-lists:

  * FUNCTIONS: the functions a graph's call_function nodes may call, by identity (pure tensor
    math that compile leaves to PyTorch in traced CNN / ViT models); `getattr` only for the tensor
    attributes in GETATTR_NAMES;
  * METHODS: the tensor methods call_method nodes may call;
  * CLASSES: the module classes a plan may instantiate (basisrt's plan steps and a few simple
    torch.nn modules), each with a check of its attributes (names, types, ranges), of its tensors
    (names, dtypes, shapes against the attributes) and, for basisrt's steps, a shape rule that the
    loader runs on meta tensors in place of the step's kernel;
  * limits on sizes (header, nesting, elements) and the encodable argument values (`decode`).

Anything else is a PlanError (a ValueError) that says what is wrong, and serialize.py adds the
file name.
"""
from __future__ import annotations

import builtins
import importlib
import keyword
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..layers import SOFTMAX_AXES, ChannelLayerNorm, MapSoftmax
from . import activations
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
    packed_shapes,
)
from .gpu_steps import GPUFusedConv2d, GPUFusedLinear


class PlanError(ValueError):
    """A plan file (or a plan being saved) breaks the rules of this module."""


# ------------------------------------------------------------------------------------------ limits

MAX_HEADER_BYTES = 16 << 20  # the safetensors header, which holds the plan JSON
MAX_NODES = MAX_MODULES = MAX_TENSORS = MAX_STEPS = 100_000
MAX_DEPTH = 12  # nesting of one argument / attribute value (lists, tuples, dicts)
MAX_ITEMS = 4096  # elements of one list / tuple / dict value, dims of a tensor
MAX_STR = 4096  # characters of one string
MAX_INT = 1 << 62
MAX_ELEMENTS = 1 << 28  # elements of the input and of any value in the graph, at batch 1 (1 GiB of float32)
MAX_THREADS = 1024
MAX_CHANNELS = 1 << 24
MAX_GEOMETRY = 1 << 16  # kernel, stride, dilation, padding
MAX_RESULT_DEPTH = 4  # nesting of a value a graph node produces (tuples of tensors, shapes)

NAME = re.compile(r"[A-Za-z0-9_]{1,255}")  # one component of a module or tensor name (Dynamo's are long)
NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
DEVICE = re.compile(r"(cpu|cuda)(:[0-9]{1,3})?")

# safetensors dtype names a plan may use, and the torch dtypes they are
FILE_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
               "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
               "BOOL": torch.bool}
INPUT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16}
# dtype names an argument may hold ({"dtype": name}), looked up here, never with getattr(torch, name)
VALUE_DTYPES = {**INPUT_DTYPES, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
                "uint8": torch.uint8, "bool": torch.bool, "long": torch.int64, "int": torch.int32,
                "float": torch.float32, "double": torch.float64, "half": torch.float16}
MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
                  "preserve_format": torch.preserve_format}
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
F32 = (torch.float32,)

# ------------------------------------------------------------------------------- function allow-list

# Public names of the functions call_function nodes may call. What a plan file names is looked up
# in FUNCTIONS (these names and each function's own `module.name`), never imported.
_FUNCTION_NAMES = (
    # Python operators as fx records them (x + y, x[i], x @ y, ...)
    *(f"operator.{n}" for n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pos", "pow", "matmul",
                                "getitem", "iadd", "isub", "imul", "itruediv", "eq", "ne", "lt", "le", "gt", "ge",
                                "invert")),  # ~mask (EdgeNeXt's positional encoding)
    # torch.* tensor math
    *(f"torch.{n}" for n in ("flatten", "cat", "concat", "concatenate", "stack", "add", "sub", "mul", "div",
                             "matmul", "bmm", "sigmoid", "relu", "tanh", "softmax", "log_softmax", "exp", "sqrt",
                             "rsqrt", "abs", "neg", "pow", "erf", "clamp", "maximum", "minimum", "mean", "sum", "amax",
                             "amin", "transpose", "permute", "reshape", "unsqueeze", "squeeze", "chunk", "split",
                             "unbind", "einsum", "conv2d", "conv_transpose2d", "layer_norm", "flip", "roll", "narrow",
                             "where", "addcmul",  # ConvNeXt-V2's global response norm
                             # tensors a model makes (smp's Mix Transformer: an empty placeholder map);
                             # their sizes are bounded by check_result like every value
                             "empty", "zeros", "ones", "eye", "arange")),
    # torch.nn.functional
    *(f"torch.nn.functional.{n}" for n in (
        "relu", "relu6", "gelu", "silu", "hardswish", "hardsigmoid", "leaky_relu", "elu", "mish", "hardtanh",
        "sigmoid", "tanh", "softmax", "log_softmax", "layer_norm", "group_norm", "normalize", "adaptive_avg_pool2d",
        "adaptive_max_pool2d", "avg_pool2d", "max_pool2d", "pad", "interpolate", "dropout", "linear", "conv2d",
        "unfold", "pixel_shuffle", "scaled_dot_product_attention", "conv_transpose2d", "batch_norm",
        "fold", "adaptive_avg_pool1d")),  # Hugging Face's MobileViT-V2 (fold), FocalNet (pool1d)
    "torch.adaptive_avg_pool1d",
    "torch._C._nn.pad",  # F.pad as TorchDynamo records it (EfficientViT's)
    "torch.linalg.vector_norm", "torch._C._linalg.linalg_vector_norm",  # Hugging Face's ConvNeXt-V2 GRN
    "builtins.getattr",  # only with an attribute name from GETATTR_NAMES (checked where it is decoded)
)
GETATTR_NAMES = frozenset({"shape", "dtype", "device", "ndim"})  # what fx records for x.shape, x.dtype, ...
INPLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)  # x += y, ...


def _lookup(public: str) -> Callable:
    module, _, name = public.rpartition(".")
    return getattr(importlib.import_module(module), name)


FUNCTIONS: dict[str, Callable] = {}  # every name a plan may use for a function -> the function
_SAVE_NAMES: dict[int, str] = {}  # id(function) -> the name a saved plan uses for it
for _public in _FUNCTION_NAMES:
    try:
        _fn = _lookup(_public)
    except (ImportError, AttributeError):  # not in this version of torch
        continue
    _legacy = f"{getattr(_fn, '__module__', None)}.{getattr(_fn, '__name__', None)}"
    try:  # the name plans were saved with before this list existed, if it names the same function
        _same = _lookup(_legacy) is _fn
    except (ImportError, AttributeError, ValueError):
        _same = False
    FUNCTIONS[_public] = _fn
    if _same:
        FUNCTIONS[_legacy] = _fn
    _SAVE_NAMES.setdefault(id(_fn), _legacy if _same else _public)
_ALLOWED_FUNCTIONS = {id(f): f for f in FUNCTIONS.values()}


def function_name(fn: Any) -> str | None:
    """The name a plan file calls `fn` by, or None when plans may not call it."""
    return _SAVE_NAMES.get(id(fn)) if _ALLOWED_FUNCTIONS.get(id(fn)) is fn else None


# --------------------------------------------------------------------------------- method allow-list

METHODS = frozenset({
    # shape and layout
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "size", "dim", "numel", "permute",
    "transpose", "t", "contiguous", "unsqueeze", "squeeze", "expand", "expand_as", "chunk", "split", "unbind",
    "narrow", "select", "flip", "roll", "unfold",  # unfold: sliding windows as a view (HaloNet's blocks)
    "repeat",  # Hugging Face's SwiftFormer; the result's size is bounded as every value's
    # dtype (devices: `to`, from the graph's own values)
    "to", "float", "type_as",
    # math
    "mean", "sum", "amax", "amin", "max", "min", "var", "std", "norm", "relu", "sigmoid", "tanh", "softmax",
    "log_softmax", "exp", "sqrt", "rsqrt", "pow", "neg", "abs", "erf", "square", "clamp", "clamp_min", "clamp_max",
    "cumsum", "sin", "cos",  # sinusoidal position encodings (EdgeNeXt's)
    "mul", "add", "sub", "div", "matmul", "bmm", "masked_fill", "where",
    # in place, on the graph's own tensors
    "add_", "mul_", "sub_", "div_", "relu_", "clamp_", "sigmoid_",
})

# ----------------------------------------------------------------------------------- argument values


def _text(v: Any, limit: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


def decode(v: Any, nodes: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """The Python value of a JSON-encoded argument or attribute (the inverse of serialize._encode):
    only the kinds encode writes, within the size limits. `nodes`: graph nodes defined so far."""
    if depth > MAX_DEPTH:
        raise PlanError(f"a value is nested more than {MAX_DEPTH} levels deep")
    if v is None or isinstance(v, (bool, float)):
        return v
    if isinstance(v, int):
        if abs(v) > MAX_INT:
            raise PlanError(f"integer {_text(v)} is out of range")
        return v
    if isinstance(v, str):
        if len(v) > MAX_STR:
            raise PlanError(f"a string of {len(v)} characters is longer than {MAX_STR}")
        return v
    if isinstance(v, list):
        if len(v) > MAX_ITEMS:
            raise PlanError(f"a list of {len(v)} items is longer than {MAX_ITEMS}")
        return [decode(x, nodes, depth + 1) for x in v]
    if not isinstance(v, dict) or len(v) != 1:
        raise PlanError(f"a tagged value must be an object with one key, got {_text(v)}")
    (tag, x), = v.items()
    if tag == "node":
        if nodes is None:
            raise PlanError("a graph node reference is only allowed in the graph")
        if not isinstance(x, str) or x not in nodes:
            raise PlanError(f"refers to node {_text(x)}, which is not defined before it")
        return nodes[x]
    if tag == "tuple":
        if not isinstance(x, list):
            raise PlanError(f"a tuple must hold a list, got {_text(x)}")
        return tuple(decode(x, nodes, depth))
    if tag == "dict":
        if not isinstance(x, dict) or len(x) > MAX_ITEMS:
            raise PlanError(f"a dict must hold an object of at most {MAX_ITEMS} items, got {_text(x)}")
        for k in x:
            if not k.isidentifier() or keyword.iskeyword(k):
                raise PlanError(f"a dict key must be a Python identifier, got {_text(k)}")
        return {k: decode(y, nodes, depth + 1) for k, y in x.items()}
    if tag == "slice":
        if not isinstance(x, list) or len(x) != 3:
            raise PlanError(f"a slice must hold [start, stop, step], got {_text(x)}")
        parts = [decode(y, nodes, depth + 1) for y in x]
        return slice(*parts)
    if tag == "ellipsis" and x is True:
        return Ellipsis
    if tag == "float" and isinstance(x, str) and len(x) <= 64:
        try:
            return float(x)
        except ValueError:
            raise PlanError(f"{_text(x)} is not a float") from None
    if tag == "dtype" and x in VALUE_DTYPES:
        return VALUE_DTYPES[x]
    if tag == "memory_format" and x in MEMORY_FORMATS:
        return MEMORY_FORMATS[x]
    if tag == "device" and isinstance(x, str) and DEVICE.fullmatch(x):
        return torch.device(x)
    raise PlanError(f"unknown or malformed value {_text(v)}")


# ------------------------------------------------------------------------------------ module checks


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]


class Attrs:
    """A module's decoded attributes; each check marks its name used, `done` refuses the rest."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values, self.used = values, set()

    def get(self, name: str) -> Any:
        if name not in self.values:
            raise PlanError(f"attribute {name!r} is missing")
        self.used.add(name)
        return self.values[name]

    def _bad(self, name: str, what: str) -> PlanError:
        return PlanError(f"attribute {name!r} must be {what}, got {_text(self.values[name])}")

    def int(self, name: str, lo: int, hi: int) -> int:
        v = self.get(name)
        if type(v) is not int or not lo <= v <= hi:
            raise self._bad(name, f"an int in [{lo}, {hi}]")
        return v

    def float(self, name: str, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> float:
        v = self.get(name)
        if type(v) not in (int, float) or not math.isfinite(v) or not lo <= v <= hi or (lo_open and v == lo):
            raise self._bad(name, f"a finite number in {'(' if lo_open else '['}{lo}, {hi}]")
        return float(v)

    def bool(self, name: str) -> bool:
        v = self.get(name)
        if type(v) is not bool:
            raise self._bad(name, "True or False")
        return v

    def optional_bool(self, name: str) -> bool:
        """A bool that plans written before it existed lack (False then)."""
        return name in self.values and self.bool(name)

    def eval_mode(self) -> None:
        """`training` is False: a plan is an inference plan (dropout off, batch norm on its statistics)."""
        if self.get("training") is not False:
            raise self._bad("training", "False (plans run in eval mode)")

    def choice(self, name: str, options: tuple) -> Any:
        v = self.get(name)
        if not any(v is o or (type(v) is type(o) and v == o) for o in options):
            raise self._bad(name, f"one of {list(options)}")
        return v

    def ints(self, name: str, n: int, lo: int, hi: int) -> tuple[int, ...]:
        v = self.get(name)
        if not (isinstance(v, tuple) and len(v) == n and all(type(i) is int and lo <= i <= hi for i in v)):
            raise self._bad(name, f"a tuple of {n} ints in [{lo}, {hi}]")
        return v

    def pair(self, name: str, lo: int, hi: int) -> tuple[int, int]:
        return self.ints(name, 2, lo, hi)

    def int_or_pair(self, name: str, lo: int, hi: int) -> tuple[int, int]:
        v = self.get(name)
        pair = (v, v) if type(v) is int else v
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(type(i) is int and lo <= i <= hi for i in pair)):
            raise self._bad(name, f"an int or a pair of ints in [{lo}, {hi}]")
        return pair

    def threads(self, name: str = "num_threads") -> int | None:
        v = self.get(name)
        if v is not None and (type(v) is not int or not 1 <= v <= MAX_THREADS):
            raise self._bad(name, f"None or an int in [1, {MAX_THREADS}]")
        return v

    def activation(self, name: str = "activation") -> None:
        """A name in activations.NAMES or 'leaky_relu(<slope>)' (activations.code)."""
        v = self.get(name)
        try:
            activations.code(v)
        except (TypeError, ValueError):
            raise self._bad(name, f"one of {[n for n in activations.NAMES if n != 'leaky_relu']} or "
                                  "'leaky_relu(<slope>)'") from None

    def none(self, name: str) -> None:
        if self.get(name) is not None:
            raise self._bad(name, "None")

    def done(self) -> None:
        extra = sorted(set(self.values) - self.used)
        if extra:
            raise PlanError(f"unexpected attribute(s) {', '.join(map(repr, extra))}")


class Tensors:
    """A module's registered parameters and buffers (TensorInfo, or None when registered as None);
    each check marks its name used, `done` refuses the rest."""

    def __init__(self, parameters: dict[str, TensorInfo | None], buffers: dict[str, TensorInfo | None]) -> None:
        self.kinds = {"parameter": parameters, "buffer": buffers}
        self.used: set[tuple[str, str]] = set()

    def _get(self, kind: str, name: str, present: bool | None, dtypes: tuple, ndim: int | None,
             shape: tuple[int, ...] | None) -> TensorInfo | None:
        table = self.kinds[kind]
        if name not in table:
            raise PlanError(f"{kind} {name!r} is missing")
        self.used.add((kind, name))
        info = table[name]
        if info is None:
            if present:
                raise PlanError(f"{kind} {name!r} must hold a tensor, it is None")
            return None
        if present is False:
            raise PlanError(f"{kind} {name!r} must be None here, it holds a tensor")
        if info.dtype not in dtypes:
            raise PlanError(f"{kind} {name!r} must be {' or '.join(str(d).removeprefix('torch.') for d in dtypes)}, "
                            f"got {str(info.dtype).removeprefix('torch.')}")
        if ndim is not None and len(info.shape) != ndim:
            raise PlanError(f"{kind} {name!r} must have {ndim} dimensions, got shape {info.shape}")
        if shape is not None and info.shape != tuple(shape):
            raise PlanError(f"{kind} {name!r} must have shape {tuple(shape)}, got {info.shape}")
        if any(s == 0 for s in info.shape):
            raise PlanError(f"{kind} {name!r} is empty (shape {info.shape})")
        return info

    def buffer(self, name: str, shape: tuple[int, ...] | None = None, *, present: bool | None = True,
               dtypes: tuple = F32, ndim: int | None = None) -> TensorInfo | None:
        """present: True (must hold a tensor), False (must be None), None (either)."""
        return self._get("buffer", name, present, dtypes, ndim, shape)

    def parameter(self, name: str, shape: tuple[int, ...] | None = None, *, present: bool | None = True,
                  dtypes: tuple = FLOATS, ndim: int | None = None) -> TensorInfo | None:
        return self._get("parameter", name, present, dtypes, ndim, shape)

    def done(self) -> None:
        extra = sorted(f"{kind} {name!r}" for kind, table in self.kinds.items() for name in table
                       if (kind, name) not in self.used)
        if extra:
            raise PlanError(f"unexpected {', '.join(extra)}")


def _divides(groups: int, **channels: int) -> None:
    for what, c in channels.items():
        if c % groups:
            raise PlanError(f"groups={groups} does not divide {what}={c}")


# -- basisrt's steps (layouts: cpu_steps.py / csrc/fused_conv.h, gpu_steps.py)

def _conv_geometry(a: Attrs, linear: bool, map_hw: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int, int]:
    """Checks what the CPU and GPU fused steps share; returns (kh, kw, in, out, groups). A linear
    step's kernel is `map_hw`: 1×1, or the map it reads flattened (FusedLinear.map_chw)."""
    a.eval_mode()
    kh, kw = a.pair("kernel", 1, MAX_GEOMETRY)
    cin, cout = a.int("in_channels", 1, MAX_CHANNELS), a.int("out_channels", 1, MAX_CHANNELS)
    stride, padding = a.pair("stride", 1, MAX_GEOMETRY), a.pair("padding", 0, MAX_GEOMETRY)
    dilation, groups = a.pair("dilation", 1, MAX_GEOMETRY), a.int("groups", 1, MAX_CHANNELS)
    _divides(groups, in_channels=cin, out_channels=cout)
    a.activation()
    a.bool("residual")
    if linear and ((kh, kw), stride, padding, dilation, groups) != (map_hw, (1, 1), (0, 0), (1, 1), 1):
        raise PlanError(f"a linear step has kernel {map_hw}, stride (1, 1), padding (0, 0), dilation (1, 1), "
                        "groups 1")
    return kh, kw, cin, cout, groups


def _fused_conv(a: Attrs, t: Tensors, linear: bool = False) -> None:
    map_hw = (1, 1)
    if linear:  # None, or the (C, H, W) map it reads flattened, as a conv with an H×W kernel
        chw = a.get("map_chw")
        if chw is not None:
            chw = a.ints("map_chw", 3, 1, MAX_GEOMETRY)
            if chw[0] != a.values.get("in_channels"):
                raise a._bad("map_chw", "None or (C, H, W) with C = in_channels")
            map_hw = chw[1:]
    kh, kw, cin, cout, groups = _conv_geometry(a, linear, map_hw)
    a.threads()
    a.optional_bool("prefer_fp32")
    a.optional_bool("prefer_direct")
    a.optional_bool("bf16_direct")
    a.optional_bool("bf16_hilo")
    rank = a.int("rank", 0, MAX_CHANNELS)
    b_shape, a_shape = packed_shapes((kh, kw), cin, cout, groups, rank)
    t.buffer("B", b_shape)
    if a_shape is None:
        a.none("A")  # a dense step keeps A as a plain None attribute
    else:
        t.buffer("A", a_shape)
    t.buffer("bias", (cout,), present=None)


PRECISIONS = ("ieee", "tf32", "tf32x3")  # kernels/fused_basis_conv.py
_CONFIG_BLOCKS = ("BLOCK_P", "BLOCK_N", "BLOCK_K", "BLOCK_R")


def _gpu_conv(a: Attrs, t: Tensors, linear: bool = False) -> None:
    kh, kw, cin, cout, groups = _conv_geometry(a, linear)
    if groups != 1:
        raise PlanError(f"the Triton step runs groups=1 only, got groups={groups}")
    a.choice("precision", PRECISIONS)
    config = a.get("config")
    if config is not None:
        ok = isinstance(config, dict) and set(config) <= {*_CONFIG_BLOCKS, "num_warps", "num_stages"}
        for key, v in config.items() if ok else ():
            good = ({16, 32, 64, 128, 256} if key in _CONFIG_BLOCKS else
                    {1, 2, 4, 8, 16, 32} if key == "num_warps" else set(range(1, 9)))
            ok = ok and type(v) is int and v in good
        if not ok:
            raise a._bad("config", "None or a dict of BLOCK_P/N/K/R (16..256, powers of two), num_warps, num_stages")
    a.threads()  # accepted and ignored on the GPU
    rank = a.int("rank", 0, MAX_CHANNELS)
    if rank == 0:
        a.none("A")
    t.buffer("B", (kh, kw, cin, rank or cout))
    if rank:
        t.buffer("A", (rank, cout))
    t.buffer("bias", (cout,), present=None)


_LINEAR_ARGS = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)


def _torch_conv(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.activation()
    a.bool("residual")
    linear = a.bool("linear")
    rank = a.int("rank", 0, MAX_CHANNELS)
    args = a.get("conv_args")
    if not isinstance(args, dict) or set(args) != set(_LINEAR_ARGS):
        raise a._bad("conv_args", "a dict of stride, padding, dilation and groups")
    sub = Attrs(args)
    sub.pair("stride", 1, MAX_GEOMETRY), sub.pair("padding", 0, MAX_GEOMETRY), sub.pair("dilation", 1, MAX_GEOMETRY)
    groups = sub.int("groups", 1, MAX_CHANNELS)
    if linear and args != _LINEAR_ARGS:
        raise a._bad("conv_args", f"{_LINEAR_ARGS} for a linear step")
    w = t.buffer("weight", ndim=2 if linear else 4)
    scale = t.buffer("scale", present=rank > 0)
    n = w.shape[0]
    if scale is None:
        cout = n
    else:
        cout = scale.shape[0]
        if scale.shape not in ((cout, rank), (cout, rank, 1, 1)) or (linear and len(scale.shape) != 2):
            raise PlanError(f"buffer 'scale' must be ({cout}, {rank}){'' if linear else ' or (out, rank, 1, 1)'}, "
                            f"got {scale.shape}")
        if n != rank * groups:
            raise PlanError(f"buffer 'weight' has {n} filters, the basis pair needs rank*groups = {rank * groups}")
    if not linear:
        _divides(groups, out_channels=cout, filters=n)
    t.buffer("bias", (cout,), present=None)


def _pool_step(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.choice("kind", tuple(POOL_KINDS))
    kernel, stride = a.get("kernel"), a.get("stride")
    adaptive = a.get("output_size") if "output_size" in a.values else None  # older plans lack it
    if adaptive is not None:  # adaptive windows
        a.pair("output_size", 1, MAX_GEOMETRY)
        if kernel is not None or stride is not None or a.get("padding") != (0, 0):
            raise a._bad("output_size", "set only with kernel None, stride None and padding (0, 0)")
    elif kernel is None:  # global pool: over the whole input
        if stride is not None:
            raise a._bad("stride", "None for a global pool (kernel None)")
        if a.get("padding") != (0, 0):
            raise a._bad("padding", "(0, 0) for a global pool")
    else:
        kh, kw = a.pair("kernel", 1, MAX_GEOMETRY)
        a.pair("stride", 1, MAX_GEOMETRY)
        ph, pw = a.pair("padding", 0, MAX_GEOMETRY)
        if 2 * ph > kh or 2 * pw > kw:
            raise a._bad("padding", f"at most half the kernel {(kh, kw)}")
    a.bool("count_include_pad")
    a.bool("ceil_mode")
    a.threads()


def _channel_affine(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.activation()
    a.threads()
    scale = t.buffer("scale", ndim=1)
    t.buffer("shift", scale.shape)


def _channel_norm(a: Attrs, t: Tensors) -> None:
    _channel_affine(a, t)
    _eps(a)


def _group_norm_step(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.activation()
    a.threads()
    _eps(a)
    scale = t.buffer("scale", ndim=1)
    t.buffer("shift", scale.shape)
    _divides(a.int("groups", 1, MAX_CHANNELS), channels=scale.shape[0])


def _eltwise(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.choice("op", tuple(BINARY_OPS))
    a.activation()
    a.threads()


def _map_softmax(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    axis = a.choice("axis", SOFTMAX_AXES)
    groups = a.int("groups", 1, MAX_CHANNELS)
    if axis != "channels" and groups != 1:
        raise a._bad("groups", "1: only a softmax over channels has groups")


def _softmax_step(a: Attrs, t: Tensors) -> None:
    _map_softmax(a, t)
    a.threads()


def _channel_gather(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.threads()
    t.buffer("index", ndim=1, dtypes=(torch.int64,))


def _pixel_gather(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.threads()
    a.pair("in_hw", 1, MAX_GEOMETRY)
    oh, ow = a.pair("out_hw", 1, MAX_GEOMETRY)
    t.buffer("index", (oh * ow,), dtypes=(torch.int64,))  # its values: checked by the kernel's binding


def _depth_to_space(a: Attrs, t: Tensors) -> None:
    _pixel_gather(a, t)
    oh, ow = a.pair("out_hw", 1, MAX_GEOMETRY)
    a.int("channels", 1, MAX_CHANNELS)
    t.buffer("offset", (oh * ow,), dtypes=(torch.int64,))  # its values: checked by the kernel's binding


def _resample(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.threads()
    a.pair("in_hw", 1, MAX_GEOMETRY)
    rows = t.buffer("row_index", ndim=2, dtypes=(torch.int64,))  # values: checked by the kernel's binding
    cols = t.buffer("col_index", ndim=2, dtypes=(torch.int64,))
    t.buffer("row_weight", tuple(rows.shape), dtypes=(torch.float32,))
    t.buffer("col_weight", tuple(cols.shape), dtypes=(torch.float32,))
    _need(rows.shape[1] == cols.shape[1] and 1 <= rows.shape[1] <= 16 and min(rows.shape[0], cols.shape[0]) >= 1,
          "a resample step needs 1 to 16 taps, as many per row as per column, and an output of at least 1x1")


# -- torch.nn modules (their own constructor arguments; forward runs on meta tensors at load)

def _only_training(a: Attrs, t: Tensors) -> None:
    a.eval_mode()


def _inplace(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.bool("inplace")


def _relu6(a: Attrs, t: Tensors) -> None:
    _inplace(a, t)
    a.choice("min_val", (0.0,)), a.choice("max_val", (6.0,))


def _hardtanh(a: Attrs, t: Tensors) -> None:
    _inplace(a, t)
    if a.float("min_val") > a.float("max_val"):
        raise PlanError("min_val must not exceed max_val")


def _leaky_relu(a: Attrs, t: Tensors) -> None:
    _inplace(a, t)
    a.float("negative_slope")


def _elu(a: Attrs, t: Tensors) -> None:
    _inplace(a, t)
    a.float("alpha")


def _gelu(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.choice("approximate", ("none", "tanh"))


def _softmax(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    if a.get("dim") is not None:
        a.int("dim", -MAX_ITEMS, MAX_ITEMS)


def _flatten(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.int("start_dim", -MAX_ITEMS, MAX_ITEMS), a.int("end_dim", -MAX_ITEMS, MAX_ITEMS)


def _dropout(a: Attrs, t: Tensors) -> None:
    _inplace(a, t)
    a.float("p", 0.0, 1.0)


def _pool2d(a: Attrs, t: Tensors, avg: bool) -> None:
    a.eval_mode()
    kh, kw = a.int_or_pair("kernel_size", 1, MAX_GEOMETRY)
    if a.get("stride") is not None:
        a.int_or_pair("stride", 1, MAX_GEOMETRY)
    ph, pw = a.int_or_pair("padding", 0, MAX_GEOMETRY)
    if 2 * ph > kh or 2 * pw > kw:
        raise a._bad("padding", f"at most half the kernel {(kh, kw)}")
    a.bool("ceil_mode")
    if avg:
        a.bool("count_include_pad")
        if a.get("divisor_override") is not None:
            a.int("divisor_override", 1, MAX_GEOMETRY)
    else:
        a.int_or_pair("dilation", 1, MAX_GEOMETRY)
        a.bool("return_indices")


def _lp_pool2d(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.float("norm_type", 1e-3, 1e3)
    a.int_or_pair("kernel_size", 1, MAX_GEOMETRY)
    if a.get("stride") is not None:
        a.int_or_pair("stride", 1, MAX_GEOMETRY)
    a.bool("ceil_mode")


def _adaptive_pool(a: Attrs, t: Tensors, indices: bool) -> None:
    a.eval_mode()
    v = a.get("output_size")
    sizes = (v, v) if not isinstance(v, tuple) else v
    if len(sizes) != 2 or not all(s is None or (type(s) is int and 1 <= s <= MAX_GEOMETRY) for s in sizes):
        raise a._bad("output_size", f"an int or a pair of ints in [1, {MAX_GEOMETRY}] (or None)")
    if indices:
        a.bool("return_indices")


UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")


def _upsample(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.choice("name", ("Upsample",))
    a.choice("mode", UPSAMPLE_MODES)
    size, factor = a.get("size"), a.get("scale_factor")
    if (size is None) == (factor is None):
        raise PlanError("exactly one of attributes 'size' and 'scale_factor' must be set")
    if size is not None:
        a.int_or_pair("size", 1, MAX_GEOMETRY)
    else:
        pair = (factor, factor) if not isinstance(factor, tuple) else factor
        if not (len(pair) == 2 and all(type(f) in (int, float) and math.isfinite(f) and 0 < f <= 64 for f in pair)):
            raise a._bad("scale_factor", "a number in (0, 64] or a pair of them")
    for name in ("align_corners", "recompute_scale_factor"):
        if a.get(name) is not None:
            a.bool(name)


def _zero_pad(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    a.ints("padding", 4, -MAX_GEOMETRY, MAX_GEOMETRY)
    a.choice("value", (0.0,))


def _eps(a: Attrs) -> None:
    a.float("eps", 0.0, 1.0, lo_open=True)


def _batch_norm(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    c = a.int("num_features", 1, MAX_CHANNELS)
    a.float("eps", 0.0, 1.0)  # 0: normalize's exact per-channel affine (x·γ + β), in a plan of PyTorch steps
    if a.get("momentum") is not None:
        a.float("momentum", 0.0, 1.0)
    affine, stats = a.bool("affine"), a.bool("track_running_stats")
    t.parameter("weight", (c,), present=affine), t.parameter("bias", (c,), present=affine)
    t.buffer("running_mean", (c,), present=stats, dtypes=FLOATS)
    t.buffer("running_var", (c,), present=stats, dtypes=FLOATS)
    t.buffer("num_batches_tracked", (), present=stats, dtypes=(torch.int64,))


def _layer_norm(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    shape = a.get("normalized_shape")
    if not (isinstance(shape, tuple) and 1 <= len(shape) <= 8
            and all(type(s) is int and 1 <= s <= MAX_CHANNELS for s in shape)):
        raise a._bad("normalized_shape", "a tuple of 1 to 8 positive ints")
    _eps(a)
    affine = a.bool("elementwise_affine")
    t.parameter("weight", shape, present=affine)
    t.parameter("bias", shape, present=None if affine else False)


def _channel_layer_norm(a: Attrs, t: Tensors) -> None:
    _layer_norm(a, t)
    if len(a.get("normalized_shape")) != 1:
        raise a._bad("normalized_shape", "(C,): the norm is over each pixel's channels")


def _group_norm(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    groups, c = a.int("num_groups", 1, MAX_CHANNELS), a.int("num_channels", 1, MAX_CHANNELS)
    _divides(groups, num_channels=c)
    _eps(a)
    affine = a.bool("affine")
    t.parameter("weight", (c,), present=affine), t.parameter("bias", (c,), present=affine)


def _linear(a: Attrs, t: Tensors) -> None:
    a.eval_mode()
    cin, cout = a.int("in_features", 1, MAX_CHANNELS), a.int("out_features", 1, MAX_CHANNELS)
    w = t.parameter("weight", (cout, cin))
    t.parameter("bias", (cout,), present=None, dtypes=(w.dtype,))


def _conv2d(a: Attrs, t: Tensors, dims: int = 2) -> None:
    """nn.Conv2d, or with dims=3 nn.Conv3d (LambdaNet's position lambdas)."""
    a.eval_mode()
    cin, cout = a.int("in_channels", 1, MAX_CHANNELS), a.int("out_channels", 1, MAX_CHANNELS)
    groups = a.int("groups", 1, MAX_CHANNELS)
    _divides(groups, in_channels=cin, out_channels=cout)
    kernel = a.ints("kernel_size", dims, 1, MAX_GEOMETRY)
    a.ints("stride", dims, 1, MAX_GEOMETRY), a.ints("dilation", dims, 1, MAX_GEOMETRY)
    if not isinstance(a.get("padding"), str):
        a.ints("padding", dims, 0, MAX_GEOMETRY)
    else:
        a.choice("padding", ("same", "valid"))
    a.choice("transposed", (False,)), a.choice("output_padding", ((0,) * dims,))
    a.choice("padding_mode", ("zeros",))  # other modes need state a plan does not save
    w = t.parameter("weight", (cout, cin // groups, *kernel))
    t.parameter("bias", (cout,), present=None, dtypes=(w.dtype,))


def _conv_transpose2d(a: Attrs, t: Tensors) -> None:
    """nn.ConvTranspose2d as the plan keeps it where it is not lowered (groups, dilation; the GPU
    backend): weight (in, out / groups, kh, kw)."""
    a.eval_mode()
    cin, cout = a.int("in_channels", 1, MAX_CHANNELS), a.int("out_channels", 1, MAX_CHANNELS)
    groups = a.int("groups", 1, MAX_CHANNELS)
    _divides(groups, in_channels=cin, out_channels=cout)
    kh, kw = a.pair("kernel_size", 1, MAX_GEOMETRY)
    sh, sw = a.pair("stride", 1, MAX_GEOMETRY)
    dh, dw = a.pair("dilation", 1, MAX_GEOMETRY)
    a.pair("padding", 0, MAX_GEOMETRY)
    oph, opw = a.pair("output_padding", 0, MAX_GEOMETRY)
    _need(oph < max(sh, dh) and opw < max(sw, dw), "has an output_padding not below its stride or dilation")
    a.choice("transposed", (True,))
    a.choice("padding_mode", ("zeros",))
    w = t.parameter("weight", (cin, cout // groups, kh, kw))
    t.parameter("bias", (cout,), present=None, dtypes=(w.dtype,))


# -------------------------------------------------------------------------------- shape rules (meta)

def _meta(*shape: int) -> Tensor:
    return torch.empty(shape, device="meta")


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise PlanError(message)


def _image(x: Any, channels: int, what: str) -> tuple[int, int, int, int]:
    _need(isinstance(x, Tensor) and x.dim() == 4 and x.dtype == torch.float32,
          f"passes {_describe(x)} to {what}, which takes a 4-D float32 (N, C, H, W) tensor")
    _need(x.shape[1] == channels, f"passes {_describe(x)} to {what}, which takes {channels} channels")
    return tuple(x.shape)


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}"
    return _text(x)


def _residual(m: nn.Module, residual: Any, out: tuple[int, ...]) -> None:
    if m.residual:
        _need(isinstance(residual, Tensor) and tuple(residual.shape) == out and residual.dtype == torch.float32,
              f"passes {_describe(residual)} as the residual, which must be a float32 tensor of the output's "
              f"shape {out}")


def _run_conv(m: nn.Module, x: Any, residual: Any = None) -> Tensor:
    n, _, h, w = _image(x, m.in_channels, "this conv step")
    oh, ow = m.output_hw(h, w)
    _need(oh >= 1 and ow >= 1, f"would make a {oh}x{ow} output of a {h}x{w} input")
    _residual(m, residual, (n, m.out_channels, oh, ow))
    return _meta(n, m.out_channels, oh, ow)


def _run_linear(m: nn.Module, x: Any, residual: Any = None) -> Tensor:
    features = m.in_channels * m.kernel[0] * m.kernel[1]  # kernel > 1×1: a flattened map (map_chw)
    _need(isinstance(x, Tensor) and x.dim() >= 1 and x.dtype == torch.float32 and x.shape[-1] == features,
          f"passes {_describe(x)} to this linear step, which takes a float32 (..., {features}) tensor")
    out = (*x.shape[:-1], m.out_channels)
    _residual(m, residual, out)
    return _meta(*out)


def _run_pool(m: PoolStep, x: Any) -> Tensor:
    _need(isinstance(x, Tensor) and x.dim() == 4, f"passes {_describe(x)} to this pool step, which takes a 4-D tensor")
    n, c, h, w = _image(x, x.shape[1], "this pool step")
    (kh, kw), _, (oh, ow) = m.geometry(h, w)
    fits = getattr(m, "ceil_mode", False) or (kh <= h + 2 * m.padding[0] and kw <= w + 2 * m.padding[1])
    _need(oh >= 1 and ow >= 1 and fits, f"has a pool kernel {(kh, kw)} that does not fit a {h}x{w} input")
    return _meta(n, c, oh, ow)


def _run_affine(m: ChannelAffineStep, x: Any) -> Tensor:
    return _meta(*_image(x, m.scale.numel(), "this channel affine step"))


def _run_eltwise(m: EltwiseStep, a: Any, b: Any) -> Tensor:
    n, c, h, w = _image(a, a.shape[1] if isinstance(a, Tensor) and a.dim() == 4 else 1, "this eltwise step")
    _need(isinstance(b, Tensor) and b.dtype == torch.float32 and
          tuple(b.shape) in ((n, c, h, w), (n, c, 1, 1), (n, 1, h, w), (n, c, h, 1)),
          f"passes {_describe(b)} as the second operand of this eltwise step, which takes ({n}, {c}, {h}, {w}), "
          f"({n}, {c}, 1, 1), ({n}, 1, {h}, {w}) or ({n}, {c}, {h}, 1)")
    return _meta(n, c, h, w)


def _run_gather(m: ChannelGatherStep, x: Any) -> Tensor:
    n, c, h, w = _image(x, x.shape[1] if isinstance(x, Tensor) and x.dim() == 4 else 1, "this gather step")
    _need(m.index.device.type == "meta" or bool(((m.index >= 0) & (m.index < c)).all()),
          f"gathers channels outside the {c} of its input")
    return _meta(n, m.index.numel(), h, w)


def _run_softmax(m: MapSoftmax | SoftmaxStep, x: Any) -> Tensor:
    n, c, h, w = _image(x, x.shape[1] if isinstance(x, Tensor) and x.dim() == 4 else 1, "this softmax")
    _need(m.axis != "channels" or c % m.groups == 0, f"passes {c} channels to a softmax over {m.groups} groups")
    return _meta(n, c, h, w)


def _run_pixel_gather(m: PixelGatherStep, x: Any) -> Tensor:
    n, c, h, w = _image(x, x.shape[1] if isinstance(x, Tensor) and x.dim() == 4 else 1, "this pixel gather step")
    _need((h, w) == tuple(m.in_hw), f"passes a {h}x{w} map to a pixel gather of {m.in_hw[0]}x{m.in_hw[1]} maps")
    return _meta(n, c, *m.out_hw)


def _run_depth_to_space(m: DepthToSpaceStep, x: Any) -> Tensor:
    n, c, h, w = _image(x, x.shape[1] if isinstance(x, Tensor) and x.dim() == 4 else 1, "this depth-to-space step")
    _need((h, w) == tuple(m.in_hw), f"passes a {h}x{w} map to a depth-to-space step of {m.in_hw[0]}x{m.in_hw[1]} maps")
    _need(m.channels <= c, f"passes {c} channels to a depth-to-space step taking blocks of {m.channels}")
    return _meta(n, m.channels, *m.out_hw)


def _run_resample(m: ResampleStep, x: Any) -> Tensor:
    n, c, h, w = _image(x, x.shape[1] if isinstance(x, Tensor) and x.dim() == 4 else 1, "this resample step")
    _need((h, w) == tuple(m.in_hw), f"passes a {h}x{w} map to a resample of {m.in_hw[0]}x{m.in_hw[1]} maps")
    return _meta(n, c, *m.out_hw)


def _run_forward(m: nn.Module, *args: Any) -> Any:
    return m(*args)


@dataclass(frozen=True)
class ModuleSpec:
    cls: type
    check: Callable[[Attrs, Tensors], None]
    run: Callable[..., Any] = _run_forward  # forward on meta tensors, in the load-time shape pass
    inputs: Callable[[nn.Module], int] = lambda m: 1  # positional arguments of its call_module nodes


def _spec(cls: type, check: Callable, run: Callable = _run_forward, inputs: Callable | None = None) -> ModuleSpec:
    return ModuleSpec(cls, check, run, inputs or (lambda m: 1))


_with_residual = lambda m: 1 + bool(m.residual)  # noqa: E731

_SPECS = (
    _spec(FusedConv2d, _fused_conv, _run_conv, _with_residual),
    _spec(FusedLinear, lambda a, t: _fused_conv(a, t, linear=True), _run_linear, _with_residual),
    _spec(TorchConvStep, _torch_conv, _run_forward, _with_residual),
    _spec(PoolStep, _pool_step, _run_pool),
    _spec(ChannelAffineStep, _channel_affine, _run_affine),
    _spec(ChannelNormStep, _channel_norm, _run_affine),
    _spec(GroupNormStep, _group_norm_step, _run_affine),
    _spec(EltwiseStep, _eltwise, _run_eltwise, lambda m: 2),
    _spec(ChannelGatherStep, _channel_gather, _run_gather),
    _spec(SoftmaxStep, _softmax_step, _run_softmax),
    _spec(PixelGatherStep, _pixel_gather, _run_pixel_gather),
    _spec(ResampleStep, _resample, _run_resample),
    _spec(DepthToSpaceStep, _depth_to_space, _run_depth_to_space),
    _spec(GPUFusedConv2d, _gpu_conv, _run_conv, _with_residual),
    _spec(GPUFusedLinear, lambda a, t: _gpu_conv(a, t, linear=True), _run_linear, _with_residual),
    _spec(nn.ReLU, _inplace), _spec(nn.ReLU6, _relu6), _spec(nn.GELU, _gelu), _spec(nn.SiLU, _inplace),
    _spec(nn.Hardswish, _inplace), _spec(nn.Hardsigmoid, _inplace), _spec(nn.Sigmoid, _only_training),
    _spec(nn.Tanh, _only_training), _spec(nn.LeakyReLU, _leaky_relu), _spec(nn.Hardtanh, _hardtanh),
    _spec(nn.ELU, _elu), _spec(nn.Softmax, _softmax), _spec(nn.LogSoftmax, _softmax),
    _spec(nn.Flatten, _flatten), _spec(nn.Identity, _only_training), _spec(nn.Dropout, _dropout),
    _spec(nn.Dropout2d, _dropout), _spec(nn.MaxPool2d, lambda a, t: _pool2d(a, t, avg=False)),
    _spec(nn.AvgPool2d, lambda a, t: _pool2d(a, t, avg=True)), _spec(nn.LPPool2d, _lp_pool2d),
    _spec(nn.AdaptiveAvgPool2d, lambda a, t: _adaptive_pool(a, t, indices=False)),
    _spec(nn.AdaptiveMaxPool2d, lambda a, t: _adaptive_pool(a, t, indices=True)),
    _spec(nn.Upsample, _upsample), _spec(nn.ZeroPad2d, _zero_pad), _spec(nn.BatchNorm2d, _batch_norm),
    _spec(nn.BatchNorm1d, _batch_norm),
    _spec(nn.LayerNorm, _layer_norm), _spec(ChannelLayerNorm, _channel_layer_norm), _spec(nn.GroupNorm, _group_norm),
    _spec(MapSoftmax, _map_softmax, _run_softmax),
    _spec(nn.Linear, _linear),
    _spec(nn.Conv2d, _conv2d), _spec(nn.ConvTranspose2d, _conv_transpose2d),
    _spec(nn.Conv3d, lambda a, t: _conv2d(a, t, dims=3)),
)


def class_path(cls: type) -> str:
    """The name a plan file gives a module class (as plans have always been written)."""
    return f"{cls.__module__}.{cls.__qualname__}"


CLASSES: dict[str, ModuleSpec] = {class_path(s.cls): s for s in _SPECS}
# The names plans written before the step modules' files were renamed give them (tests/data/plan_v1*)
CLASSES.update({path.replace(f".{new}.", f".{old}."): s for path, s in list(CLASSES.items())
                for new, old in (("cpu_steps", "cpu_kernels"), ("gpu_steps", "gpu_kernels")) if f".{new}." in path})
_BY_CLASS = {s.cls: s for s in _SPECS}


def spec_of(cls: type) -> ModuleSpec | None:
    """The spec of exactly `cls` (not of a subclass), or None when plans may not hold it."""
    return _BY_CLASS.get(cls)


def check_module(spec: ModuleSpec, attrs: dict[str, Any], tensors: Tensors) -> None:
    a = Attrs(attrs)
    spec.check(a, tensors)
    a.done()
    tensors.done()


# ------------------------------------------------------------------ guards on values in the graph


def check_call(target: Any, args: tuple, kwargs: dict) -> None:
    """Refuses calls of allowed functions that would still blow up memory or time on plain Python
    values (a repeated sequence, a huge power); tensors are bounded by `check_result`."""
    if getattr(target, "__module__", None) == "_operator":
        if any(isinstance(v, str) for v in args):  # "%*d" % (10**9, 1) would be a gigabyte
            raise PlanError(f"applies operator.{target.__name__} to a string, which plans may not do")
        if target in (operator.mul, operator.imul) and any(isinstance(v, (list, tuple)) for v in args):
            raise PlanError("repeats a sequence (sequence * n), which plans may not do")
    if target is operator.pow and len(args) == 2 and not any(isinstance(v, Tensor) for v in args):
        if not isinstance(args[1], (int, float)) or abs(args[1]) > 64:
            raise PlanError(f"raises a number to the power {_text(args[1])}, beyond what plans may do")
    if target is builtins.getattr and not isinstance(args[0], Tensor):
        raise PlanError(f"reads attribute {args[1]!r} of {_describe(args[0])}; plans read tensor attributes only")


def check_result(v: Any, depth: int = 0) -> None:
    """A value a graph node produced (on meta tensors at batch 1): bounded, of the kinds plans use."""
    if isinstance(v, Tensor):
        if v.numel() > MAX_ELEMENTS:
            raise PlanError(f"produces a tensor of shape {tuple(v.shape)} ({v.numel()} elements at batch 1), "
                            f"more than {MAX_ELEMENTS}")
    elif isinstance(v, (tuple, list)):
        if depth >= MAX_RESULT_DEPTH or len(v) > MAX_ITEMS:
            raise PlanError(f"produces a sequence nested or long beyond the limits ({MAX_ITEMS} items)")
        for x in v:
            check_result(x, depth + 1)
    elif isinstance(v, dict):  # a model's named outputs (torchvision's segmentation models: {"out": ...})
        if depth >= MAX_RESULT_DEPTH or len(v) > MAX_ITEMS:
            raise PlanError(f"produces a dict nested or long beyond the limits ({MAX_ITEMS} items)")
        for k, x in v.items():
            if not isinstance(k, str) or not k.isidentifier() or keyword.iskeyword(k):
                raise PlanError(f"produces a dict keyed by {_text(k)}; plans use dicts keyed by Python identifiers")
            check_result(x, depth + 1)
    elif isinstance(v, bool) or v is None or isinstance(v, (float, torch.dtype, torch.device, torch.memory_format)):
        pass
    elif isinstance(v, int):
        if abs(v) > MAX_INT:
            raise PlanError(f"produces the integer {_text(v)}, out of range")
    else:
        raise PlanError(f"produces a {type(v).__name__}, which plans do not use")


__all__ = ["CLASSES", "FUNCTIONS", "GETATTR_NAMES", "INPLACE_OPERATORS", "METHODS", "ModuleSpec", "PlanError",
           "Tensors", "TensorInfo", "check_call", "check_module", "check_result", "class_path", "decode",
           "function_name", "spec_of"]
