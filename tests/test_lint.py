"""The habits CI keeps: ruff (pyflakes, import order, line length; pyproject's [tool.ruff]) is
clean, and no module of basisrt imports one that imports it back."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed (it is in the test extra: pip install -e '.[test]')")
    done = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def _imports(path: Path, package: str) -> set[str]:
    """The basisrt modules `path` (module `package`.x) imports, at any depth of its code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names]
            out |= {n for n in names if _is_module(n)} | ({mod} if mod.startswith("basisrt") else set())
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("basisrt")}
    return {m for m in out if _is_module(m)}


def _module_names() -> dict[str, Path]:
    mods = {}
    for p in (ROOT / "basisrt").rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            continue  # a package's __init__ re-exports; the cycles that matter are between modules
        mods[".".join(parts)] = p
    for p in (ROOT / "kernels").glob("*.py"):
        mods["basisrt.kernels." + p.stem] = p
    return mods


MODULES = _module_names()


def _is_module(name: str) -> bool:
    return name in MODULES


def test_no_import_cycle_between_basisrt_modules() -> None:
    graph = {m: _imports(p, m.rsplit(".", 1)[0]) for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_cpp_compiles_without_warnings() -> None:
    """csrc/ is clean under the build's warning flags (setup.py: -Wall -Wextra), as errors here."""
    import sysconfig

    import pybind11

    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    flags = ["-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Wno-psabi", "-Werror", "-DBASISRT_C_VERSION=\"0\"",
             f"-I{ROOT / 'csrc'}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    failures = []
    for src in sorted((ROOT / "csrc").glob("*.cpp")):
        done = subprocess.run([cxx, *flags, str(src)], capture_output=True, text=True)
        if done.returncode:
            failures.append(done.stderr[-2000:])
    assert not failures, "\n".join(failures)
