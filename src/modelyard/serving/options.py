"""Server settings, checked when they are made; ``parse_size`` reads ``--max-memory 2GiB``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelyard.errors import ConfigError
from modelyard.serving import overrides
from modelyard.serving.cors import normalize_origin
from modelyard.serving.pools import Selection
from modelyard.serving.tls import TLSFiles

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(text: str | int | None) -> int | None:
    """Bytes from ``"512MiB"``, ``"2GB"``, ``"1.5G"`` or a plain number; ``None`` stays ``None``."""
    if text is None or isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"size {text!r} is not understood; write e.g. 512MiB, 2GiB or 4GB")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class ServeOptions:
    """How the server behaves; every field has a production-safe default."""

    #: evict least recently used versions when the loaded ones cost more than this many bytes
    #: together, each charged what its load measured (None: no limit).
    max_memory: int | None = None
    #: unload a version no request used for this many seconds; it loads again on its next
    #: request (None: never).
    idle_unload_s: float | None = None
    #: load every version with the ``alias`` alias before reporting ready.
    preload: bool = True
    #: the alias ``/v1/models/{name}/predict`` serves.
    alias: str = "production"
    #: request bodies above this many bytes get 413.
    max_body_bytes: int = 16 * 1024 * 1024
    #: a version upload (training through the server) above this many bytes gets 413; it is
    #: streamed to disk, never held in memory.
    max_upload_bytes: int = 16 * 1024 ** 3
    #: a request body that stops arriving for this many seconds gets 408 (connection closed).
    body_timeout_s: float = 5.0
    #: an idle keep-alive connection is closed after this many seconds.
    keep_alive_s: float = 30.0
    #: a request without a result after this many seconds gets 504.
    request_timeout_s: float = 60.0
    #: how often the registry is polled for alias moves.
    poll_interval_s: float = 1.0
    #: where predictions are logged: ``db``, ``parquet:FOLDER`` or ``off`` (None: the
    #: ``MODELYARD_PREDICTION_LOG`` variable, default ``db``).
    prediction_log: str | None = None
    #: how often monitoring gauges (metrics from labels, latest drift) are refreshed.
    monitor_interval_s: float = 30.0
    #: threads running model calls (one batch per loaded version at a time).
    predict_threads: int = max(4, min(16, (os.cpu_count() or 1) * 2))
    #: threads loading models, so a slow load never blocks predictions.
    load_threads: int = 2
    #: ``host:port`` for OIP v2 over gRPC (None: no gRPC).
    grpc_address: str | None = None
    #: a device worker that has not loaded and warmed its model after this many seconds fails.
    worker_start_timeout_s: float = 300.0
    #: restart attempts in a row for a dead device worker before its version is unloaded.
    worker_max_restarts: int = 5
    #: origins (``https://dashboard.example.com``) whose pages may call this server from a
    #: browser: CORS headers for them, and their mutations are not refused as cross-site.
    #: Empty: CORS is off and only this server's own pages may send mutations.
    cors_origins: tuple[str, ...] = ()
    #: how often logged predictions and labels older than ``monitoring.retention_days`` are
    #: deleted (the first sweep runs a minute after start, or sooner when this is shorter).
    retention_interval_s: float = 3600.0
    #: the folder ``--workers`` processes share their Prometheus metrics through (set by
    #: :func:`~modelyard.serving.server.serve`; None: one process, metrics in memory).
    metrics_dir: str | None = None
    #: serving settings tuned at serve time, by model name (``"*"``: every model), over what
    #: each version registered (``--model-config``; see :mod:`~modelyard.serving.overrides`).
    serving_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: serve only the models of these pools (``--pool``; empty: every pool).
    pools: tuple[str, ...] = ()
    #: serve only these models (``--models``; empty: every model of the served pools).
    models: tuple[str, ...] = ()
    #: seconds a stopping server keeps answering after SIGTERM, ``/readyz`` saying 503
    #: (draining), so load balancers stop sending before it stops accepting (``--drain``).
    drain_s: float = 5.0
    #: seconds the rest of a shutdown may take after the drain: requests in flight finish,
    #: the prediction log flushes; past it what still runs is cancelled (``--grace``).
    grace_s: float = 30.0
    #: the server listens beyond loopback: auth is enforced even before any API key exists
    #: (set by :func:`~modelyard.serving.server.serve` from the host).
    exposed: bool = False
    #: ``--insecure``: do not enforce auth on an exposed server (warned about at start).
    insecure: bool = False
    #: ``--oidc``: the file naming an OpenID Connect issuer whose bearer JWTs are accepted
    #: (see :mod:`~modelyard.serving.oidc`); None: API keys only.
    oidc: str | None = None
    #: ``--public-metrics``: ``/metrics`` answers without a credential even when auth is
    #: enforced (Prometheus scrapes it with no key; it shows model names and traffic).
    public_metrics: bool = False
    #: PEM files: HTTPS and gRPC over TLS with a cert and key; client certificates required
    #: and checked against ``tls_client_ca`` when it is set (serving/tls.py)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    #: applications served beside the API under their own path prefix, each named
    #: ``module:function`` (the function takes the app and returns a
    #: :class:`~modelyard.serving.mounts.Mount`): by default the web console at ``/ui``
    #: (``--no-console``: none). Loaded by name, so nothing in serving imports them.
    mounts: tuple[str, ...] = ("modelyard.console.app:mount",)

    def __post_init__(self) -> None:
        if self.max_memory is not None and self.max_memory <= 0:
            raise ConfigError("max_memory must be a positive number of bytes")
        if self.idle_unload_s is not None and not self.idle_unload_s > 0:
            raise ConfigError("idle_unload_s must be a positive number of seconds, or None to "
                              "keep idle versions loaded")
        if min(self.max_body_bytes, self.max_upload_bytes, self.request_timeout_s,
               self.poll_interval_s, self.monitor_interval_s, self.body_timeout_s,
               self.keep_alive_s) <= 0:
            raise ConfigError("max_body_bytes, max_upload_bytes, request_timeout_s, "
                              "body_timeout_s, keep_alive_s, poll_interval_s and "
                              "monitor_interval_s must be > 0")
        if self.predict_threads < 1 or self.load_threads < 1:
            raise ConfigError("predict_threads and load_threads must be at least 1")
        where = self.prediction_log
        if where is not None and where not in ("db", "off") and not (
                where.startswith("parquet:") and len(where) > len("parquet:")):
            raise ConfigError(f"prediction log {where!r} is not understood; use db, off or "
                              "parquet:FOLDER")
        if self.worker_start_timeout_s <= 0 or self.worker_max_restarts < 1:
            raise ConfigError("worker_start_timeout_s must be > 0 and worker_max_restarts >= 1")
        if isinstance(self.cors_origins, str):
            raise ConfigError("cors_origins must be a list of origins, not one string")
        if "*" in self.cors_origins:
            raise ConfigError("a CORS origin of '*' would let every web page change models on "
                              "this server; list each origin, e.g. https://dashboard.example.com")
        # a list when the options come back from JSON (several server processes)
        object.__setattr__(self, "cors_origins",
                           tuple(dict.fromkeys(normalize_origin(o) for o in self.cors_origins)))
        if not self.retention_interval_s > 0:
            raise ConfigError("retention_interval_s must be > 0")
        object.__setattr__(self, "serving_overrides", overrides.check(self.serving_overrides))
        self._check_lifecycle()
        TLSFiles.of(self.tls_cert, self.tls_key, self.tls_client_ca)

    def _check_lifecycle(self) -> None:
        """Pools, models, drain and grace (lists when the options come back from JSON)."""
        if isinstance(self.pools, str) or isinstance(self.models, str):
            raise ConfigError("pools and models must be lists of names, not one string")
        Selection.of(self.pools, self.models)  # a malformed pool name is a ConfigError here
        object.__setattr__(self, "pools", tuple(self.pools))
        object.__setattr__(self, "mounts", tuple(self.mounts))
        object.__setattr__(self, "models", tuple(self.models))
        if not (0 <= self.drain_s <= 3600 and 0 < self.grace_s <= 3600):
            raise ConfigError("drain_s must be 0 to 3600 seconds and grace_s more than 0, "
                              "at most 3600")

    @property
    def tls(self) -> TLSFiles | None:
        """The TLS files, or ``None`` for plain HTTP and gRPC."""
        return TLSFiles.of(self.tls_cert, self.tls_key, self.tls_client_ca)

    @property
    def selection(self) -> Selection:
        """The models this server serves (``pools`` and ``models``)."""
        return Selection.of(self.pools, self.models)


__all__ = ["ServeOptions", "parse_size"]
