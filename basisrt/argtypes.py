"""Argument types and checks shared by the `basisrt` subcommands.

Each type function takes the command-line text and returns the value, or raises
`argparse.ArgumentTypeError` with a short message; argparse then prints the usage and
`basisrt <cmd>: error: argument --flag: <message>` and exits with status 2, before any work starts.
Checks that need several arguments, and user-level failures found while running (a checkpoint
that is not a model, a file that cannot be written), raise `CLIError`: `basisrt.cli.main` prints
`basisrt <cmd>: error: <message>` as one line on stderr and exits with its `code`.

The file-system checks only look (stat, access): they never create or remove anything.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable

ArgumentTypeError = argparse.ArgumentTypeError

SEED_MAX = 2**32 - 1  # numpy.random.seed's limit (basisrt.transfer.seed_everything seeds numpy too)


class CLIError(Exception):
    """A user-level failure of a `basisrt` command: reported as one line, no traceback, exit `code`
    (2: the arguments are wrong; 1: the run could not be completed, e.g. an output not written)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------ numbers

def _parse(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_range(lo: int, hi: int | None = None, what: str | None = None) -> Callable[[str], int]:
    """Type: an integer in [lo, hi] (hi None: no upper bound)."""
    what = what or (f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]")

    def parse(text: str) -> int:
        value = _parse(text, int)
        if value < lo or (hi is not None and value > hi):
            raise ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = "int"
    return parse


def float_range(lo: float, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
                what: str | None = None) -> Callable[[str], float]:
    """Type: a finite float between lo and hi (hi None: no upper bound); `*_open` excludes that end."""
    if what is None:
        upper = "inf)" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
        what = f"in {'(' if lo_open else '['}{lo:g}, {upper}"

    def parse(text: str) -> float:
        value = _parse(text, float)
        if value < lo or (lo_open and value == lo) or (hi is not None and (value > hi or (hi_open and value == hi))):
            raise ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_range(1, what="a positive integer")
nonnegative_int = int_range(0, what="a non-negative integer")
seed = int_range(0, SEED_MAX, what=f"an integer in [0, {SEED_MAX}]")
positive_float = float_range(0, lo_open=True, what="a positive number")
nonnegative_float = float_range(0, what="a non-negative number")
# what to keep: a rank ratio, an energy / importance fraction, a basis-pruning amount
fraction = float_range(0, 1, lo_open=True)
# what to remove: a channel-pruning amount (0: none; removing everything is not pruning)
removal_fraction = float_range(0, 1, hi_open=True)


def fraction_list(text: str) -> list[float]:
    """Type: comma-separated fractions in (0, 1]; empty entries are skipped ("" is the empty list)."""
    values = []
    for entry in (t.strip() for t in text.split(",")):
        if not entry:
            continue
        try:
            values.append(fraction(entry))
        except ArgumentTypeError as e:
            raise ArgumentTypeError(f"entry {entry!r}: {e}" if "," in text else str(e)) from None
    return values


# ------------------------------------------------------------------------------ files

def _stat_error(text: str, e: OSError) -> ArgumentTypeError:
    return ArgumentTypeError(f"cannot access {text}: {e.strerror or e}")


def existing_file(text: str) -> str:
    """Type: a regular file that exists and is readable (returned unchanged)."""
    p = Path(text)
    try:
        if not p.exists():
            return _missing(text, p)
        if p.is_dir():
            raise ArgumentTypeError(f"{text} is a directory, not a file")
        if not p.is_file():
            raise ArgumentTypeError(f"{text} is not a regular file")
    except OSError as e:
        raise _stat_error(text, e) from None
    if not os.access(p, os.R_OK):
        raise ArgumentTypeError(f"cannot read {text}: permission denied")
    return text


def _missing(text: str, p: Path):
    """Raise the error for a path that does not exist: no such file, or a parent that is a file."""
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ArgumentTypeError(f"no such file: {text} ({parent} is not a directory)")
            break
    raise ArgumentTypeError(f"no such file: {text}")


def _nearest_existing(p: Path) -> Path:
    for parent in p.absolute().parents:
        if parent.exists():
            return parent
    return Path(p.absolute().anchor)


def _writable_dir_error(directory: Path) -> str | None:
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable"
    return None


def writable_file(text: str) -> str:
    """Type: a file path that can be written: an existing writable file, or a new file in an existing
    writable directory (the writers do not create directories). Returned unchanged."""
    p = Path(text)
    try:
        if p.exists():
            if p.is_dir():
                raise ArgumentTypeError(f"{text} is a directory; give a file name")
            if not os.access(p, os.W_OK):
                raise ArgumentTypeError(f"cannot write {text}: permission denied")
            return text
        parent = p.parent
        if not parent.exists():
            ancestor = _nearest_existing(p)
            why = _writable_dir_error(ancestor) if not ancestor.is_dir() else f"directory {parent} does not exist"
            raise ArgumentTypeError(f"cannot write {text}: {why}")
        error = _writable_dir_error(parent)
    except OSError as e:
        raise _stat_error(text, e) from None
    if error:
        raise ArgumentTypeError(f"cannot write {text}: {error}")
    return text


def writable_dir(text: str) -> str:
    """Type: an output directory: an existing writable directory, or one that can be created (its
    nearest existing ancestor is a writable directory). Nothing is created here. Returned unchanged."""
    p = Path(text)
    try:
        if p.exists():
            if not p.is_dir():
                raise ArgumentTypeError(f"{text} exists and is not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ArgumentTypeError(f"directory {text} is not writable")
            return text
        error = _writable_dir_error(_nearest_existing(p))
    except OSError as e:
        raise _stat_error(text, e) from None
    if error:
        raise ArgumentTypeError(f"cannot create {text}: {error}")
    return text


def check(flag: str, type_fn: Callable[[str], object], text: str):
    """Apply an argument type after parsing (for checks that depend on other arguments);
    a failure becomes a `CLIError` naming `flag`."""
    try:
        return type_fn(text)
    except ArgumentTypeError as e:
        raise CLIError(f"argument {flag}: {e}") from None
