"""Run the server: :func:`serve` starts uvicorn (httptools + uvloop) on the modelyard app.

Several worker processes (``workers > 1``) each build their own app from settings passed through
the environment, so nothing unpicklable crosses the fork.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any

from modelyard.config import Settings
from modelyard.serving.app import App
from modelyard.serving.options import ServeOptions

log = logging.getLogger(__name__)

_ENV = "MODELYARD_SERVE_CONFIG"


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    settings: Settings | None = None,
    options: ServeOptions | None = None,
    workers: int = 1,
    log_level: str = "info",
) -> None:
    """Serve every model with a production alias (and any version on request) until stopped.

    ``settings`` names the registry (default: ``MODELYARD_*`` or ``./.modelyard``); ``options``
    sets memory budget, preloading, body limit and timeouts.
    """
    import uvicorn

    settings = settings or Settings.from_env()
    options = options or ServeOptions()
    common: dict[str, Any] = dict(
        host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
        http=_pick("httptools", "h11"), loop=_pick("uvloop", "asyncio"),
        timeout_keep_alive=max(1, round(options.keep_alive_s)),
    )
    if workers > 1:
        os.environ[_ENV] = json.dumps({"settings": _settings_dict(settings),
                                       "options": asdict(options)})
        uvicorn.run("modelyard.serving.server:app_from_env", factory=True, workers=workers,
                    **common)
        return
    uvicorn.run(App(options=options, settings=settings), **common)


def app_from_env() -> App:
    """Build the app from ``MODELYARD_SERVE_CONFIG`` (set by :func:`serve` for its workers)."""
    raw = json.loads(os.environ.get(_ENV, "{}"))
    s = raw.get("settings")
    settings = Settings(**{**s, "home": __import__("pathlib").Path(s["home"])}) if s else None
    return App(options=ServeOptions(**raw.get("options", {})), settings=settings)


def _settings_dict(settings: Settings) -> dict[str, Any]:
    return {"home": str(settings.home), "db_url": settings.db_url,
            "artifacts": settings.artifacts, "actor": settings.actor}


def _pick(module: str, fallback: str) -> str:
    try:
        __import__(module)
    except ImportError:
        log.info("%s is not installed; using %s (pip install 'uvicorn[standard]')", module,
                 fallback)
        return fallback
    return module


__all__ = ["app_from_env", "serve"]
