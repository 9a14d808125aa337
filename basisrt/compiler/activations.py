"""The one place for the activations a plan step fuses: their names, the C++ kernels' codes
(csrc/fused_conv.h: Activation), how PyTorch modules and functions map to them, and PyTorch's own
formula for the steps PyTorch runs.

A name is one of NAMES, or `leaky_relu(<slope>)` for a leaky ReLU with that negative slope.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .. import _C

# name (as plans store it) -> the C++ kernels' _C.Activation; relu and relu6 are clamps done in the
# kernels' epilogues, the rest a pass over each stored tile (csrc/activation.h)
CODES = {name: getattr(_C.Activation, name or "none") for name in (
    None, "relu", "relu6", "sigmoid", "silu", "hardsigmoid", "hardswish", "leaky_relu", "gelu", "gelu_tanh")}
NAMES = tuple(CODES)
_LEAKY = re.compile(r"leaky_relu\((.+)\)")


def code(name: str | None) -> tuple[_C.Activation, float]:
    """(_C.Activation, leaky ReLU slope) of an activation name; ValueError if unknown."""
    m = _LEAKY.fullmatch(name) if isinstance(name, str) else None
    if m is not None:
        try:
            slope = float(m.group(1))
        except ValueError:
            slope = math.nan
        if not math.isfinite(slope):
            raise ValueError(f"bad leaky ReLU slope in activation {name!r}")
        return CODES["leaky_relu"], slope
    if name == "leaky_relu" or name not in CODES:
        raise ValueError(f"activation must be one of {[n for n in NAMES if n != 'leaky_relu']} or "
                         f"'leaky_relu(<slope>)', got {name!r}")
    return CODES[name], 0.01


def leaky(slope: float) -> str:
    return f"leaky_relu({float(slope)!r})"


def apply(y: Tensor, name: str | None) -> Tensor:
    """PyTorch's own activation `name` of y (in place where PyTorch has an in-place form)."""
    kind, slope = code(name)
    if name is None:
        return y
    if name == "relu":
        return y.relu_()
    if name == "relu6":
        return F.relu6(y, inplace=True)
    if kind == CODES["leaky_relu"]:
        return F.leaky_relu(y, slope, inplace=True)
    if name == "gelu" or name == "gelu_tanh":
        return F.gelu(y, approximate="tanh" if name == "gelu_tanh" else "none")
    return {"sigmoid": torch.sigmoid, "silu": F.silu, "hardsigmoid": F.hardsigmoid, "hardswish": F.hardswish}[name](y)


_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Hardsigmoid: "hardsigmoid",
            nn.Hardswish: "hardswish"}
# In-place forms fuse too: the step's output has the activation as its only user, so no one else
# sees the tensor it would have changed.
_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
              torch.sigmoid: "sigmoid", torch.sigmoid_: "sigmoid", F.sigmoid: "sigmoid", F.silu: "silu",
              F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish"}
_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}


def _clamp(low: object, high: object) -> str | None:
    """The activation a clamp to [low, high] is: relu (0, None) or relu6 (0, 6)."""
    if low == 0 and type(low) is not bool:
        return "relu" if high is None else "relu6" if high == 6 and type(high) is not bool else None
    return None


# hardtanh(x, 0, 6) is relu6: F.relu6 as TorchDynamo records it (Hugging Face's MobileNets), and
# clamps of the same bounds
_CLAMPS = {F.hardtanh: ("input", "min_val", "max_val", "inplace"), torch.clamp: ("input", "min", "max"),
           torch.clip: ("input", "min", "max"), torch.clamp_min: ("input", "min")}
_CLAMP_METHODS = {"clamp": ("min", "max"), "clip": ("min", "max"), "clamp_min": ("min",)}


def of_node(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The activation that `node` applies to its one tensor argument, or None if it is not one."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) is nn.LeakyReLU:
            return leaky(m.negative_slope)
        if type(m) is nn.Hardtanh:
            return _clamp(m.min_val, m.max_val) if len(node.args) == 1 and not node.kwargs else None
        if type(m) is nn.GELU:
            return "gelu_tanh" if m.approximate == "tanh" else "gelu"
        return _MODULES.get(type(m)) if len(node.args) == 1 and not node.kwargs else None
    if node.op == "call_method":
        if node.target in _CLAMP_METHODS and node.args:
            names = _CLAMP_METHODS[node.target]
            if len(node.args) - 1 <= len(names) and set(node.kwargs) <= set(names):
                args = {**dict(zip(names, node.args[1:])), **node.kwargs}
                return _clamp(args.get("min"), args.get("max"))
            return None
        return _METHODS.get(node.target) if len(node.args) == 1 and not node.kwargs else None
    if node.op != "call_function" or not node.args:
        return None
    if node.target is F.leaky_relu:
        args = dict(zip(("input", "negative_slope", "inplace"), node.args), **node.kwargs)
        slope = args.get("negative_slope", 0.01)
        return leaky(slope) if isinstance(slope, (int, float)) and set(args) <= {"input", "negative_slope", "inplace"} \
            else None
    if node.target is F.gelu:
        approximate = node.kwargs.get("approximate", "none")
        ok = len(node.args) == 1 and set(node.kwargs) <= {"approximate"} and approximate in ("none", "tanh")
        return ("gelu_tanh" if approximate == "tanh" else "gelu") if ok else None
    if node.target in _CLAMPS:
        names = _CLAMPS[node.target]
        if len(node.args) > len(names) or not set(node.kwargs) <= set(names[1:]):
            return None
        args = {**dict(zip(names, node.args)), **node.kwargs}
        low, high = (-1.0, 1.0) if node.target is F.hardtanh else (None, None)  # hardtanh's defaults
        return _clamp(args.get(names[1], low), args.get(names[2], high) if len(names) > 2 else None)
    if node.target in _FUNCTIONS and len(node.args) <= 2 and set(node.kwargs) <= {"inplace"}:
        return _FUNCTIONS[node.target]
    return None


__all__ = ["CODES", "NAMES", "apply", "code", "leaky", "of_node"]
