"""The model server: runners, dynamic batching, model cache, hot swap, REST and OIP v2.

``create_app()`` builds the ASGI app; ``serve()`` runs it under uvicorn; ``command.serve`` is the
``modelyard serve`` click command.
"""

from modelyard.serving.app import App, create_app
from modelyard.serving.options import ServeOptions, parse_size
from modelyard.serving.server import serve

__all__ = ["App", "ServeOptions", "create_app", "parse_size", "serve"]
