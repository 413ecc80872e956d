"""The model server: runners, dynamic batching, model cache, hot swap, REST and OIP v2.

``create_app()`` builds the ASGI app; ``serve()`` runs it on modelyard's own HTTP/1.1 server;
``command.serve`` is the ``modelyard serve`` click command. Names are imported on first use, so
the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.serving.app import App, create_app
    from modelyard.serving.options import ServeOptions, parse_size
    from modelyard.serving.server import serve

_LAZY = {
    "App": "modelyard.serving.app",
    "create_app": "modelyard.serving.app",
    "ServeOptions": "modelyard.serving.options",
    "parse_size": "modelyard.serving.options",
    "serve": "modelyard.serving.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["App", "ServeOptions", "create_app", "parse_size", "serve"]
