"""Old module paths of modules that moved to their floor, kept importable: the old name is the new
module itself (one module object, so classes and state are shared), not a copy.

A stub file at the old path calls ``alias(__name__)``; a moved package's submodules follow it
through a finder on ``sys.meta_path`` (installed by the first alias). The new module is imported
by name (a string), so the floors contract (``pyproject.toml``, ``[tool.importlinter]``) sees
only the stub's import of this module: these aliases, like the public face, are lazy on purpose.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["MOVED", "alias", "new_name"]

# old module path -> new one; a moved package's submodules follow it unless listed themselves.
MOVED = {
    "sparse_vdit.cli_args": "sparse_vdit.cli.args",
    "sparse_vdit.selfcheck": "sparse_vdit.cli.check",
    "pipelines.demo": "sparse_vdit.cli.demo",
    "search.command": "sparse_vdit.cli.search_command",
    "pipelines.evaluation": "sparse_vdit.cli.evaluation",
    "pipelines.evaluation.command": "sparse_vdit.cli.eval_command",
    "pipelines.evaluation.videos": "pipelines.videos",
}


def new_name(old: str) -> str | None:
    """Where module ``old`` lives now, or None when it has not moved."""
    if old in MOVED:
        return MOVED[old]
    package = max((p for p in MOVED if old.startswith(p + ".")), key=len, default=None)
    return None if package is None else MOVED[package] + old[len(package):]


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves an old path with the module at its new one."""

    def find_spec(self, name, path=None, target=None):
        return None if new_name(name) is None else importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return importlib.import_module(new_name(spec.name))

    def exec_module(self, module) -> None:
        return None



def alias(old: str) -> None:
    """Make module ``old`` (a stub's ``__name__``) the module at its new path, for this and every
    later import, and let its submodules follow."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
    sys.modules[old] = importlib.import_module(new_name(old))
