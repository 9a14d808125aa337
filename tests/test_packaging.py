"""setup.py names every package of basisrt: a non-editable install gets only those listed."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_lists_every_subpackage() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    packages = next(ast.literal_eval(k.value) for k in call.keywords if k.arg == "packages")
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "basisrt").rglob("__init__.py")}
    assert found <= set(packages), f"setup.py does not list {sorted(found - set(packages))}"


def test_one_version_string() -> None:
    """basisrt.__version__ is the version: the installed metadata and the C++ module report it."""
    from importlib.metadata import version

    import basisrt
    from basisrt import _C

    assert version("basisrt") == basisrt.__version__ == _C.__version__
