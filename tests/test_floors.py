"""The floors hold: import-linter's contract in pyproject.toml (``[tool.importlinter]``) passes, a
new upward import (inside a function, too) breaks it, and every module is on a floor.

The contract runs on a copy of the five packages with ``kernels/__init__.py`` added: ours is a
namespace portion beside Hugging Face's regular ``kernels`` package, which would otherwise be the
one import-linter finds (and ours would go unchecked).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sparse_vdit", "adaspa", "kernels", "search", "pipelines")
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")

needs_linter = pytest.mark.skipif(LINT is None, reason="needs import-linter: pip install -e '.[test]'")


def _tree(tmp_path: Path) -> Path:
    """The packages' sources under tmp_path, ``kernels`` made a regular package."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    (tmp_path / "kernels" / "__init__.py").write_text("")
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([LINT, "--no-cache", str(ROOT / "pyproject.toml")], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=600)


@needs_linter
def test_the_floors_and_no_cycles_hold(tmp_path):
    done = _lint(_tree(tmp_path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


@needs_linter
def test_an_upward_import_inside_a_function_breaks_the_floors(tmp_path):
    tree = _tree(tmp_path)
    helpers = tree / "kernels" / "helpers.py"
    helpers.write_text(helpers.read_text() + "\n\ndef _upward():\n    from search import run  # noqa: F401\n")
    done = _lint(tree)
    assert done.returncode != 0
    assert "kernels.helpers -> search" in done.stdout, done.stdout[-4000:]


def test_every_module_is_on_a_floor():
    """The core floor lists sparse_vdit's modules one by one (the commands above it are a package
    of sparse_vdit): a new core module must be placed on it."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    floors = next(c for c in config["contracts"] if c["id"] == "floors")["layers"]
    named = {m.strip() for layer in floors for m in layer.replace("|", ":").split(":")}
    core = {f"sparse_vdit.{p.stem}" for p in (ROOT / "sparse_vdit").glob("*.py") if p.stem != "__init__"}
    assert core <= named, f"not on a floor: {sorted(core - named)}"
    assert {"sparse_vdit.cli", "search", "pipelines", "adaspa", "kernels"} <= named


def test_old_module_paths_are_the_moved_modules():
    """Every old path imports, as the very module now at its new path (one object: classes and
    module state are shared), submodules of a moved package included."""
    import importlib

    from sparse_vdit._moved import MOVED, new_name

    for old in [*MOVED, "pipelines.evaluation.run", "pipelines.evaluation.methods.adaspa"]:
        assert importlib.import_module(old) is importlib.import_module(new_name(old)), old
    from pipelines.evaluation.videos import slug, write_video  # what pipelines/proxy/train.py imports
    from pipelines.videos import slug as new_slug, write_video as new_write

    assert (slug, write_video) == (new_slug, new_write)
    from pipelines.evaluation import EvalReport, evaluate
    from sparse_vdit import evaluate as public

    assert evaluate is public and EvalReport.__module__ == "sparse_vdit.cli.evaluation.report"
