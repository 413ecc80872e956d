"""``modelyard serve --workers N``: worker processes sharing one listening socket, supervised.

The parent binds the socket and starts ``N`` fresh interpreters that inherit it
(``python -c ... worker_main``, the socket's descriptor passed, the settings in
``MODELYARD_SERVE_CONFIG``); each loads its own models, listens once its app has started and
accepts from the one queue the kernel keeps for the socket, so a busy worker takes fewer new
connections and a worker restarting loses none that were queued (per-worker ``SO_REUSEPORT``
sockets hash connections to a worker, busy or not, and drop the ones queued on a socket that
closes). The parent only watches: a worker that dies is started again, after a pause that
doubles with each quick death (0.5 s up to 30 s; a worker that lived a minute starts the count
again); one that fails its app's startup stops the whole server, as it would fail again. SIGTERM
or SIGINT to the parent closes its copy of the socket, sends SIGTERM to every worker, which
drains as a single server does (``/readyz`` 503 at once, still accepting on its copy for
``--drain``, then closing within ``--grace``), and waits for them, restarting none: a worker that
exits meanwhile stays down. One still running ``drain + grace + 10`` seconds later is killed. A
worker whose parent dies gets SIGTERM from the kernel (Linux), so none outlive it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any

from modelyard.config import Settings
from modelyard.serving.app import App
from modelyard.serving.connection import Limits
from modelyard.serving.httpserver import STARTUP_FAILED, configure_logging, run
from modelyard.serving.metrics import MULTIPROCESS_ENV, shared_dir
from modelyard.serving.options import ServeOptions
from modelyard.serving.tls import server_context

log = logging.getLogger("modelyard.serving.server")

_ENV = "MODELYARD_SERVE_CONFIG"
_FD_ENV = "MODELYARD_SERVE_FD"
_PARENT_ENV = "MODELYARD_SERVE_PARENT"
_WORKER = ("from modelyard.serving.server_workers import worker_main; "
           "raise SystemExit(worker_main())")
#: the first pause before a dead worker starts again, and the longest.
BACKOFF_S = (0.5, 30.0)
#: a worker that lived this long has its quick-death count reset.
STEADY_S = 60.0
#: seconds past its drain and grace a stopping worker has before it is killed.
KILL_AFTER_S = 10.0


def supervise(count: int, sock: socket.socket, config: dict[str, Any]) -> int:
    """Run ``count`` workers on the bound ``sock`` until SIGTERM/SIGINT; the exit status.

    The workers share a fresh Prometheus folder (``PROMETHEUS_MULTIPROC_DIR``), removed at exit
    so the next start counts from zero.
    """
    folder = shared_dir(os.environ.get(MULTIPROCESS_ENV))
    env = {**os.environ, MULTIPROCESS_ENV: folder,
           _ENV: json.dumps(with_metrics_dir(config, folder)),
           _FD_ENV: str(sock.fileno()), _PARENT_ENV: str(os.getpid())}
    options = ServeOptions(**config["options"])
    try:
        return Supervisor(count, sock, env,
                          stop_s=options.drain_s + options.grace_s + KILL_AFTER_S).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Supervisor:
    """Keeps ``count`` worker processes alive on one socket until told to stop."""

    def __init__(self, count: int, sock: socket.socket, env: dict[str, str], *,
                 stop_s: float = 30.0 + KILL_AFTER_S) -> None:
        self.count = count
        #: seconds the workers have to stop before the late ones are killed.
        self.stop_s = stop_s
        self.sock = sock
        self.env = env
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.born: dict[int, float] = {}
        self.deaths: dict[int, int] = {}
        self.due: dict[int, float] = {}  # slots waiting to start again, and when
        self.stopping = False

    def run(self) -> int:
        """Start the workers, keep them alive, stop them on a signal; the exit status."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in range(self.count):
                self._spawn(slot)
            log.info("supervising %d workers (process %d)", self.count, os.getpid())
            status = self._watch()
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _spawn(self, slot: int) -> None:
        self.workers[slot] = subprocess.Popen([sys.executable, "-c", _WORKER], env=self.env,
                                              pass_fds=(self.sock.fileno(),))
        self.born[slot] = time.monotonic()
        log.info("worker %d started (process %d)", slot, self.workers[slot].pid)

    def _watch(self) -> int:
        while not self.stopping:
            time.sleep(0.1)  # a signal ends the sleep early
            for slot, proc in list(self.workers.items()):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                if code == STARTUP_FAILED:
                    log.error("worker %d (process %d) failed to start its app: stopping",
                              slot, proc.pid)
                    self._stop_all()
                    return STARTUP_FAILED
                self._died(slot, code)
            now = time.monotonic()
            for slot, when in list(self.due.items()):
                if when <= now:
                    del self.due[slot]
                    self._spawn(slot)
        return 0

    def _died(self, slot: int, code: int) -> None:
        """Schedule the worker in ``slot`` to start again, later the more often it dies."""
        proc = self.workers.pop(slot)
        lived = time.monotonic() - self.born[slot]
        deaths = 0 if lived >= STEADY_S else self.deaths.get(slot, 0) + 1
        self.deaths[slot] = deaths
        pause = min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** max(0, deaths - 1))
        log.warning("worker %d (process %d) exited with status %s after %.1f s; starting "
                    "another in %g s", slot, proc.pid, code, lived, pause)
        self.due[slot] = time.monotonic() + pause

    def _stop_all(self) -> None:
        """Stop accepting, SIGTERM every worker, wait for their drain; SIGKILL the late ones."""
        self.sock.close()
        self.due.clear()
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_s
        for slot, proc in self.workers.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (process %d) did not stop: killing it", slot, proc.pid)
                proc.kill()
                proc.wait()
        self.workers.clear()


def worker_main() -> int:
    """A worker: build the app from the environment and serve on the inherited socket."""
    _die_with_parent(int(os.environ.get(_PARENT_ENV, "0")))
    configure_logging(json.loads(os.environ.get(_ENV, "{}")).get("log_level", "info"))
    sock = socket.socket(fileno=int(os.environ[_FD_ENV]))
    app, options = app_from_env(), options_from_env()
    return run(app, sock, limits_of(options), drain_s=options.drain_s, grace_s=options.grace_s,
               on_drain=app.drain, tls=tls_context(options))


def tls_context(options: ServeOptions) -> ssl.SSLContext | None:
    """The HTTPS context the options name (each worker builds its own), or ``None``."""
    files = options.tls
    return None if files is None else server_context(files)


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies; leave at once if it already has."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if parent and os.getppid() != parent:
        raise SystemExit(0)


def limits_of(options: ServeOptions) -> Limits:
    """The connection limits the serve options imply: a request's head may stall as long as
    its body may (``body_timeout_s``); idle keep-alive connections last ``keep_alive_s``."""
    return Limits(head_timeout_s=options.body_timeout_s, keep_alive_s=options.keep_alive_s)


def worker_config(settings: Settings, options: ServeOptions, log_level: str) -> dict[str, Any]:
    """What a worker process needs to build its app (JSON: it travels in the environment)."""
    return {"settings": _settings_dict(settings), "options": asdict(options),
            "log_level": log_level}


def app_from_env() -> App:
    """Build the app from ``MODELYARD_SERVE_CONFIG`` (set by :func:`serve` for its workers)."""
    raw = json.loads(os.environ.get(_ENV, "{}"))
    s = raw.get("settings")
    settings = Settings(**{**s, "home": Path(s["home"]), "artifact_previous_keys": tuple(
        s.get("artifact_previous_keys", ()))}) if s else None
    options = ServeOptions(**raw.get("options", {}))
    return App(options=options, settings=settings)


def options_from_env() -> ServeOptions:
    """The serve options in ``MODELYARD_SERVE_CONFIG`` (a worker's limits come from them)."""
    return ServeOptions(**json.loads(os.environ.get(_ENV, "{}")).get("options", {}))


def with_metrics_dir(config: dict[str, Any], folder: str) -> dict[str, Any]:
    """``config`` with the workers' shared Prometheus folder in its options."""
    options = ServeOptions(**config["options"])
    return {**config, "options": asdict(replace(options, metrics_dir=folder))}


def _settings_dict(settings: Settings) -> dict[str, Any]:
    return {"home": str(settings.home), "db_url": settings.db_url,
            "artifacts": settings.artifacts, "actor": settings.actor,
            "store_timeout_s": settings.store_timeout_s,
            "baked_artifacts": settings.baked_artifacts,
            # the workers inherit this process's environment, where these came from anyway
            "artifact_key": settings.artifact_key,
            "artifact_previous_keys": list(settings.artifact_previous_keys)}


__all__ = ["KILL_AFTER_S", "Supervisor", "app_from_env", "limits_of", "supervise", "worker_config",
           "worker_main"]
