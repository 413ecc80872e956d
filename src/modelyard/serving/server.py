"""Run the server: :func:`serve` starts uvicorn (httptools + uvloop) on the modelyard app.

Several worker processes (``workers > 1``) each build their own app from settings passed through
the environment, so nothing unpicklable crosses the fork, and count their requests in a
Prometheus folder they share (:func:`~modelyard.serving.metrics.shared_dir`), so ``/metrics``
answers for the whole server whichever worker takes the scrape.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, replace
from typing import Any

from modelyard.config import Settings
from modelyard.serving.access import Access, exposure_warning
from modelyard.serving.app import App
from modelyard.serving.metrics import MULTIPROCESS_ENV, shared_dir
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
    sets memory budget, preloading, body limit and timeouts. Listening on an address other
    machines can reach without ``MODELYARD_TOKEN`` logs a warning: anyone there could change
    models.
    """
    import uvicorn

    settings = settings or Settings.from_env()
    options = options or ServeOptions()
    exposed = exposure_warning(host, Access.from_env())
    if exposed is not None:
        log.warning(exposed)
    common: dict[str, Any] = dict(
        host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
        http=_pick("httptools", "h11"), loop=_pick("uvloop", "asyncio"),
        timeout_keep_alive=max(1, round(options.keep_alive_s)),
    )
    if workers > 1:
        _serve_workers(workers, settings, options, common)
        return
    uvicorn.run(App(options=options, settings=settings), **common)


def _serve_workers(workers: int, settings: Settings, options: ServeOptions,
                   common: dict[str, Any]) -> None:
    """Run ``workers`` processes that share one Prometheus view through a fresh folder.

    The workers are spawned, fresh interpreters: the variables set here reach them before they
    import prometheus_client, so each keeps its values in the shared folder from the start.
    """
    import uvicorn

    folder = shared_dir(os.environ.get(MULTIPROCESS_ENV))
    os.environ[MULTIPROCESS_ENV] = folder
    os.environ[_ENV] = json.dumps({"settings": _settings_dict(settings),
                                   "options": asdict(replace(options, metrics_dir=folder))})
    try:
        uvicorn.run("modelyard.serving.server:app_from_env", factory=True, workers=workers,
                    **common)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
