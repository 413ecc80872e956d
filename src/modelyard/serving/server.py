"""Run the server: :func:`serve` binds the port and serves the app over HTTP/1.1 on uvloop.

The HTTP/1.1 protocol is our own (:mod:`~modelyard.serving.connection`: httptools parses, a
response is one write), so the event loop spends its time on requests rather than on a general
server's layers; :mod:`~modelyard.serving.httpserver` runs one server process (lifespan,
signals, graceful shutdown).

``workers > 1``: the parent binds the socket and supervises that many worker processes that
inherit it (:mod:`~modelyard.serving.server_workers`). Each builds its own app from settings
passed through the environment, so nothing unpicklable crosses into it, and counts its
requests in a Prometheus folder they share (:func:`~modelyard.serving.metrics.shared_dir`), so
``/metrics`` answers for the whole server whichever worker takes the scrape.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from modelyard.config import Settings
from modelyard.serving.access import insecure_warning, is_loopback
from modelyard.serving.app import App
from modelyard.serving.httpserver import bind, configure_logging, run
from modelyard.serving.options import ServeOptions
from modelyard.serving.server_workers import (
    app_from_env,
    limits_of,
    supervise,
    tls_context,
    worker_config,
)

log = logging.getLogger(__name__)


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
    machines can reach enforces auth (an API key with the right role for every call but
    health and documents) unless ``options.insecure``, which logs a warning. Exits
    (``SystemExit``) with status 3 when the app fails to start.
    """
    settings = settings or Settings.from_env()
    options = replace(options or ServeOptions(), exposed=not is_loopback(host))
    if options.insecure and options.exposed:
        log.warning(insecure_warning(host))
    status = _start(host, port, settings, options, workers, log_level)
    if status:
        raise SystemExit(status)


def _start(host: str, port: int, settings: Settings, options: ServeOptions, workers: int,
           log_level: str) -> int:
    """Bind (a port in use fails before any model loads), then serve in this process or under
    a supervisor of ``workers`` processes; the exit status."""
    configure_logging(log_level)
    with bind(host, port) as sock:
        if workers > 1:
            return supervise(workers, sock, worker_config(settings, options, log_level))
        app = App(options=options, settings=settings)
        return run(app, sock, limits_of(options), drain_s=options.drain_s,
                   grace_s=options.grace_s, on_drain=app.drain, tls=tls_context(options))


__all__ = ["app_from_env", "serve"]
