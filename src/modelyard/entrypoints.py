"""Find user code named in a spec: ``path/to/file.py:function`` or ``package.module:function``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from modelyard.errors import ConfigError


def import_file(path: Path) -> ModuleType:
    """Import a Python file once per process (by absolute path) and return the module."""
    path = path.absolute()
    if not path.is_file():
        raise ConfigError(f"cannot import {path}: no such file")
    key = "modelyard_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    # Let the file import its neighbours (helpers next to the train function).
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[key]
        raise ConfigError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def resolve_callable(ref: str | Callable[..., Any], root: Path) -> Callable[..., Any]:
    """The function ``ref`` names, relative to ``root`` for file paths."""
    if callable(ref):
        return ref
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"entrypoint {ref!r} must look like file.py:function or module:function")
    if target.endswith(".py") or "/" in target:
        module = import_file((root / target) if not Path(target).is_absolute() else Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"cannot import {target!r} for {ref!r}: {exc}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)  # type: ignore[assignment]
        if fn is None:
            raise ConfigError(f"{target} has no {attr!r} (from entrypoint {ref!r})")
    if not callable(fn):
        raise ConfigError(f"entrypoint {ref!r} is not callable")
    return fn  # type: ignore[return-value]


def callable_ref(fn: Callable[..., Any]) -> str:
    """A ``file.py:qualname`` reference that :func:`resolve_callable` can import again."""
    module = sys.modules.get(fn.__module__)
    file = getattr(module, "__file__", None)
    if file is None or "<locals>" in fn.__qualname__:
        raise ConfigError(
            f"{fn.__qualname__} must be a top-level function in a file to run in its own process"
        )
    if fn.__module__.startswith("modelyard_user_") or fn.__module__ == "__main__":
        return f"{Path(file).absolute()}:{fn.__qualname__}"
    return f"{fn.__module__}:{fn.__qualname__}"


__all__ = ["callable_ref", "import_file", "resolve_callable"]
