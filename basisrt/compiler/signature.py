"""The model's call signature as a plan keeps it, so the plan is a drop-in for the model: the
input's keyword name (`plan(pixel_values=x)`, as Hugging Face's pipelines call models) and the
output's container class (Hugging Face's ModelOutput, an OrderedDict, a namedtuple), which the
graph itself flattens into a plain dict or tuple.

A saved plan names the class by its import path; loading imports it only from the packages in
TRUSTED_PACKAGES (a plan file is untrusted input, and importing a module runs its code) and only
if it is a container of the same kind, else the plan returns the plain dict or tuple."""
from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any

from torch import nn

TRUSTED_PACKAGES = ("collections", "transformers", "torchvision", "timm")


def input_name(model: nn.Module) -> str | None:
    """The name `model.forward` gives its first argument, if it can be passed by keyword."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
        return None
    return params[0].name


def output_class(out: Any) -> type | None:
    """The container class of a model's output where a plan's plain dict or tuple would lose it,
    if wrap_output can rebuild it from the plain one."""
    cls = type(out)
    if cls in (dict, tuple, list) or not (isinstance(out, dict) or isinstance(out, tuple) and hasattr(cls, "_fields")):
        return None
    plain = dict(out) if isinstance(out, dict) else tuple(out)
    try:
        rebuilt = wrap_output(cls, plain)
    except Exception:  # noqa: BLE001 - a constructor of its own: the plan returns the plain container
        return None
    return cls if type(rebuilt) is cls else None


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_output_class(path: str) -> type | None:
    """The class a plan file names as its output container, or None (with a warning) where it is
    not one loading may import: outside TRUSTED_PACKAGES, not installed, or not a container."""
    module, _, qualname = path.rpartition(".")
    why = None
    if module.split(".")[0] not in TRUSTED_PACKAGES or not qualname.isidentifier():
        why = f"loading imports output classes only from {', '.join(TRUSTED_PACKAGES)}"
    else:
        try:
            cls = getattr(importlib.import_module(module), qualname, None)
        except ImportError as e:
            cls, why = None, f"cannot import {module} ({e})"
        if why is None and not (isinstance(cls, type) and (issubclass(cls, dict) or
                                                           (issubclass(cls, tuple) and hasattr(cls, "_fields")))):
            why = "it is not a dict or namedtuple class"
    if why is None:
        return cls
    warnings.warn(f"basisrt.load: the plan's model returned {path}; {why}, so the plan returns a plain dict or "
                  "tuple of the same tensors", stacklevel=4)  # basisrt.load's caller
    return None


def wrap_output(cls: type | None, out: Any) -> Any:
    """The plan's plain output in the model's own container class."""
    if cls is None:
        return out
    if isinstance(out, dict) and issubclass(cls, dict):
        return cls(**out)
    if isinstance(out, tuple) and issubclass(cls, tuple):
        return cls(*out)
    return out


def one_input(args: tuple, kwargs: dict, name: str | None) -> Any:
    """The single input of a call `plan(*args, **kwargs)`: positional, or by the model's name for it."""
    if len(args) == 1 and not kwargs:
        return args[0]
    if not args and name is not None and set(kwargs) == {name}:
        return kwargs[name]
    by_name = f" (or as {name}=...)" if name else ""
    got = [*(f"{len(args)} positional" for _ in args[:1]), *(f"{k}=" for k in kwargs)]
    raise TypeError(f"a compiled plan takes one input tensor, positionally{by_name}; got {', '.join(got) or 'none'}")
