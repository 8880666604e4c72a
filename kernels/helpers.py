"""Helpers every floor uses, written once here, the lowest floor that needs them: a ceiling
division, a warning given once per key, and a package's public names loaded on first use.

(``kernels`` is a namespace portion beside Hugging Face's ``kernels``; this module's name is not
one of theirs.)
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Hashable, Mapping

__all__ = ["cdiv", "warn_once", "lazy_exports"]


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers (b > 0): the blocks of ``b`` needed to cover ``a`` items."""
    return -(-a // b)


def warn_once(seen: set, key: Hashable, message: str, category: type[Warning] = UserWarning, *,
              stacklevel: int = 2, log: Callable[[str], None] | None = None) -> bool:
    """Give ``message`` the first time ``key`` is added to ``seen``; nothing after. Returns True
    when it warned.

    ``seen`` is the caller's registry: a module's set (once per process) or an object's (once per
    instance). ``log`` (e.g. ``logger.warning``) replaces ``warnings.warn``; ``stacklevel`` counts
    from the caller of ``warn_once``, as ``warnings.warn`` counts from its own caller.
    """
    if key in seen:
        return False
    seen.add(key)
    if log is not None:
        log(message)
    else:
        warnings.warn(message, category, stacklevel=stacklevel + 1)
    return True


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for a package whose public names ``{name: module}`` are imported
    from their modules on first use: ``import package`` (and ``--help``) stays light, without torch
    or diffusers until a name is used. ``namespace`` is the package's ``globals()``."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
