"""Framework adapters (flavors), registered by name in one dict.

Each adapter lives in its own module and imports its framework lazily. ``register_adapter`` adds
one (third parties can register their own); ``get_adapter`` returns the instance for a flavor;
``adapter_for`` picks the flavor of a trained object.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError, FrameworkMissingError
from modelyard.types import Adapter, ArtifactVerifier

#: flavor -> "module:Class", imported on first use so frameworks stay optional.
_BUILTIN: dict[str, str] = {
    "sklearn": "modelyard.adapters.sklearn:SklearnAdapter",
    "xgboost": "modelyard.adapters.xgboost:XGBoostAdapter",
    "lightgbm": "modelyard.adapters.lightgbm:LightGBMAdapter",
    "torch": "modelyard.adapters.torch:TorchAdapter",
    "tensorflow": "modelyard.adapters.tensorflow:TensorFlowAdapter",
    "onnx": "modelyard.adapters.onnx:OnnxAdapter",
    "python": "modelyard.adapters.python:PythonAdapter",
    "graph": "modelyard.adapters.graph:GraphAdapter",
}

#: when picking a flavor for an object, the more specific frameworks go first
#: (an XGBClassifier is also a scikit-learn estimator).
_DETECTION_ORDER = ("xgboost", "lightgbm", "torch", "tensorflow", "onnx", "sklearn", "python")

_adapters: dict[str, Adapter] = {}


def register_adapter(flavor: str, adapter: Adapter) -> None:
    """Register ``adapter`` under ``flavor`` (replacing any adapter of that name)."""
    _adapters[flavor] = adapter


def get_adapter(flavor: str) -> Adapter:
    """The adapter for ``flavor``; raises :class:`ConfigError` for an unknown one."""
    if flavor not in _adapters:
        target = _BUILTIN.get(flavor)
        if target is None:
            raise ConfigError(
                f"unknown flavor {flavor!r}; known flavors: {', '.join(flavors())}"
            )
        module_name, _, cls_name = target.partition(":")
        _adapters[flavor] = getattr(importlib.import_module(module_name), cls_name)()
    return _adapters[flavor]


def flavors() -> list[str]:
    """Every flavor that can be used: built in or registered."""
    return sorted(set(_BUILTIN) | set(_adapters))


def adapter_for(model: Any) -> Adapter:
    """The adapter whose framework ``model`` belongs to (frameworks not installed are skipped)."""
    order = list(_DETECTION_ORDER) + [f for f in _adapters if f not in _DETECTION_ORDER]
    for flavor in order:
        adapter = get_adapter(flavor)
        if adapter.handles(model):
            return adapter
    raise ConfigError(
        f"no adapter handles a {type(model).__module__}.{type(model).__qualname__}; "
        "give the model a predict() method, or name a flavor explicitly"
    )


def artifact_verifier(flavor: str) -> Callable[[Path, dict[str, Any]], None] | None:
    """``flavor``'s check of an artifact before it is stored (``verify``), or ``None``.

    ``None`` for a flavor whose adapter has no check (its format runs no code) and for one no
    adapter is registered for here: loading it needs that adapter, whose ``load`` checks it.
    """
    try:
        adapter = get_adapter(flavor)
    except ConfigError:
        return None
    return adapter.verify if isinstance(adapter, ArtifactVerifier) else None


def require(module: str, extra: str) -> Any:
    """Import a framework module or raise :class:`FrameworkMissingError` with the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FrameworkMissingError(
            f"framework '{extra}' is not installed ({exc}): pip install 'modelyard[{extra}]'"
        ) from None


def is_loaded(module: str) -> bool:
    """Whether ``module`` is already imported (detection never imports a heavy framework)."""
    import sys

    return module in sys.modules


__all__ = [
    "adapter_for",
    "artifact_verifier",
    "flavors",
    "get_adapter",
    "is_loaded",
    "register_adapter",
    "require",
]
