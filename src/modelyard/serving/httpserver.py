"""Serve an ASGI app over HTTP/1.1 on a uvloop loop: bind, lifespan, signals, graceful stop.

:func:`run` is one server process: the app's lifespan startup, then
:class:`~modelyard.serving.connection.Connection` per client on the bound socket. On SIGTERM or
SIGINT it stops the way a load balancer (a Kubernetes Service, HAProxy) needs, as
:class:`Shutdown` says::

    SIGTERM -> draining: on_drain() (the app's /readyz turns 503); still accepting and
               answering for drain_s, so the balancer's health checks take it out
            -> closing:  stop accepting; idle keep-alive connections close, busy ones answer
               with "Connection: close"; the requests in flight finish
            -> app shutdown (the prediction log flushes); exit

Everything after the drain is bounded by ``grace_s``: the requests in flight get it less a
reserve kept for the app's shutdown (a quarter, at most :data:`SHUTDOWN_RESERVE_S`); what still
runs then is cancelled. A second SIGINT cuts the drain and the grace short; SIGTERM, which a
supervisor and a process group may both send, stays graceful. Nothing here knows modelyard's
app: any ASGI app runs, and ``on_drain`` is how the caller tells its app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelyard.serving.connection import Connection, Limits, Shared

log = logging.getLogger("modelyard.serving.server")

#: seconds the shutdown after the drain may take: requests in flight, then the app's shutdown.
GRACE_S = 30.0
#: the most of the grace period kept for the app's shutdown (a quarter when that is less).
SHUTDOWN_RESERVE_S = 5.0
#: connections the kernel holds for us while the loop is busy.
BACKLOG = 2048
_ASGI = {"version": "3.0", "spec_version": "2.3"}
#: the exit status of a process whose app failed to start (as uvicorn's).
STARTUP_FAILED = 3


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` is one), not yet listening:
    a port in use fails here, before any model loads."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def configure_logging(log_level: str) -> None:
    """Show the server's lines (startup, errors, swaps, rollouts) at ``log_level`` on stderr,
    unless the embedding program configured logging itself."""
    target = logging.getLogger("modelyard.serving")
    target.setLevel(log_level.upper())
    if logging.getLogger().handlers or target.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    target.addHandler(handler)


@dataclass(frozen=True)
class Shutdown:
    """How a server stops: answer ``drain_s`` seconds after ``on_drain`` is called, then take
    at most ``grace_s`` seconds more (see the module's docstring)."""

    drain_s: float = 0.0
    grace_s: float = GRACE_S
    #: called once as the drain starts (an app's readiness turns false); errors are logged.
    on_drain: Callable[[], None] | None = None

    def reserve(self) -> float:
        """Seconds of the grace period kept for the app's shutdown."""
        return min(SHUTDOWN_RESERVE_S, self.grace_s / 4)


def run(app: Any, sock: socket.socket, limits: Limits | None = None, *,
        grace_s: float = GRACE_S, drain_s: float = 0.0,
        on_drain: Callable[[], None] | None = None,
        tls: ssl.SSLContext | None = None) -> int:
    """Serve the ASGI ``app`` on the bound ``sock`` until SIGTERM/SIGINT, on a uvloop loop;
    the exit status (0, or :data:`STARTUP_FAILED`). ``drain_s``, ``grace_s`` and ``on_drain``
    shape the shutdown (:class:`Shutdown`); with ``tls`` every connection is HTTPS."""
    try:
        import uvloop
    except ImportError:  # not built for this platform (Windows): the standard loop serves too
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        stop = Shutdown(drain_s=drain_s, grace_s=grace_s, on_drain=on_drain)
        return loop.run_until_complete(_serve(app, sock, limits or Limits(), stop, tls))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


class Signals:
    """SIGTERM and SIGINT on the running loop: ``stopping`` once one came, ``forced`` once a
    second SIGINT did (a second Ctrl+C means now)."""

    def __init__(self) -> None:
        self.stopping, self.forced = asyncio.Event(), asyncio.Event()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle both signals on ``loop`` (where it can: the main thread, not Windows)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.on_signal, sig)
            except (RuntimeError, ValueError, NotImplementedError):
                log.debug("no handler for %s here: the embedding program stops the server", sig)

    def on_signal(self, sig: signal.Signals) -> None:
        """SIGTERM repeats (a supervisor and a process group both send one) and stays
        graceful; a second SIGINT cuts the drain and the grace short."""
        if sig == signal.SIGINT and self.stopping.is_set():
            self.forced.set()
        self.stopping.set()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when ``forced``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.forced.wait(), seconds)


async def _serve(app: Any, sock: socket.socket, limits: Limits, stop: Shutdown,
                 tls: ssl.SSLContext | None = None) -> int:
    loop = asyncio.get_running_loop()
    signals = Signals()
    signals.install(loop)
    lifespan = Lifespan(app)
    if not await lifespan.startup():
        return STARTUP_FAILED
    address = sock.getsockname()
    shared = Shared(app, limits, server=(str(address[0]), int(address[1])),
                    scheme="https" if tls else "http")
    server = await loop.create_server(lambda: Connection(shared), sock=sock, backlog=BACKLOG,
                                      ssl=tls)
    shared.start()
    log.info("startup complete: serving on %s://%s:%d (process %d; Ctrl+C stops it)",
             shared.scheme, *shared.server, os.getpid())  # type: ignore[misc]
    await signals.stopping.wait()
    await _drain(stop, signals)
    deadline = loop.time() + stop.grace_s
    log.info("shutting down: no new connections; requests in flight have %g s",
             stop.grace_s - stop.reserve())
    server.close()
    shared.close_idle()
    await _finish(shared, deadline - stop.reserve(), signals.forced)
    shared.stop()
    await lifespan.shutdown(max(0.0, deadline - loop.time()))
    log.info("shutdown complete (process %d)", os.getpid())
    return 0


async def _drain(stop: Shutdown, signals: Signals) -> None:
    """Tell the app (its readiness turns false), then keep serving for the drain delay."""
    if stop.on_drain is not None:
        try:
            stop.on_drain()
        except Exception:
            log.exception("on_drain failed; draining anyway")
    if stop.drain_s > 0 and not signals.forced.is_set():
        log.info("draining: not ready, still answering for %g s so load balancers move away "
                 "(process %d)", stop.drain_s, os.getpid())
        await signals.sleep(stop.drain_s)


async def _finish(shared: Shared, deadline: float, forced: asyncio.Event) -> None:
    """Wait until every connection has closed, the deadline (loop time) or a second signal."""
    loop = asyncio.get_running_loop()
    while shared.connections and loop.time() < deadline and not forced.is_set():
        await asyncio.sleep(0.05)
    if shared.connections:
        log.warning("%d connections still busy after the grace period: closing them",
                    len(shared.connections))
        shared.abort()
        await asyncio.sleep(0)  # let the cancelled requests unwind


class Lifespan:
    """The ASGI lifespan protocol, run on the app: startup before serving, shutdown after."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.failed = False

    async def startup(self) -> bool:
        """Run the app's startup; False when it failed (it says why in the log)."""
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self.replies.get()
        if reply is None:  # the app returned: no lifespan, unless it raised
            return not self.failed
        if reply["type"] == "lifespan.startup.failed":
            log.error("startup failed: %s", reply.get("message") or "see above")
            return False
        return True

    async def shutdown(self, timeout_s: float | None = None) -> None:
        """Run the app's shutdown (flushes the prediction log) and wait for it, at most
        ``timeout_s`` seconds (then it is cancelled)."""
        if self.task is None or self.task.done():
            return
        try:
            await asyncio.wait_for(self._shutdown(self.task), timeout_s)
        except TimeoutError:
            log.error("the app's shutdown did not finish within the grace period: cancelled")
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _shutdown(self, task: asyncio.Task[None]) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        reply = await self.replies.get()
        if reply is not None and reply["type"] == "lifespan.shutdown.failed":
            log.error("shutdown failed: %s", reply.get("message"))
        await task

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": {}}
        try:
            await self.app(scope, self.inbox.get, self.replies.put)
        except Exception:
            self.failed = True
            log.exception("the app's lifespan failed")
        finally:
            self.replies.put_nowait(None)


__all__ = ["BACKLOG", "GRACE_S", "SHUTDOWN_RESERVE_S", "STARTUP_FAILED", "Lifespan", "Shutdown",
           "Signals", "bind", "configure_logging", "run"]
