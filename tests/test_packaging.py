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


def test_serving_extras_bring_uvicorns_fast_loop_and_parser() -> None:
    """uvicorn runs on uvloop and httptools only when they are installed (asyncio + h11 otherwise,
    slower per request): every extra that serves installs uvicorn[standard], as SERVING.md measured."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("serve", "ray", "test"):
        uvicorn = [d for d in extras[name] if d.startswith("uvicorn")]
        assert uvicorn and all(d.startswith("uvicorn[standard]") for d in uvicorn), (name, uvicorn)
