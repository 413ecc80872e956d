"""Serve an ASGI app over HTTP/1.1 on a uvloop loop: bind, lifespan, signals, graceful stop.

:func:`run` is one server process: the app's lifespan startup, then
:class:`~modelyard.serving.connection.Connection` per client on the bound socket; on SIGTERM or
SIGINT it stops accepting, closes idle keep-alive connections, lets the requests in flight
finish within :data:`GRACE_S` (a second SIGINT cuts that short; SIGTERM, which a supervisor and
a process group may both send, stays graceful), then runs the app's shutdown (the prediction
log flushes there). Nothing here knows modelyard's app: any ASGI app runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

from modelyard.serving.connection import Connection, Limits, Shared

log = logging.getLogger("modelyard.serving.server")

#: seconds the requests in flight have to finish once a shutdown begins.
GRACE_S = 30.0
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


def run(app: Any, sock: socket.socket, limits: Limits | None = None, *,
        grace_s: float = GRACE_S) -> int:
    """Serve the ASGI ``app`` on the bound ``sock`` until SIGTERM/SIGINT, on a uvloop loop;
    the exit status (0, or :data:`STARTUP_FAILED`)."""
    try:
        import uvloop
    except ImportError:  # not built for this platform (Windows): the standard loop serves too
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(app, sock, limits or Limits(), grace_s))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


async def _serve(app: Any, sock: socket.socket, limits: Limits, grace_s: float) -> int:
    loop = asyncio.get_running_loop()
    stopping, forced = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        # a second Ctrl+C cuts the grace period short; SIGTERM repeats (a supervisor and a
        # process group both send one) and stays graceful
        if sig == signal.SIGINT and stopping.is_set():
            forced.set()
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, Windows
            log.debug("no handler for %s here: the embedding program stops the server", sig)
    lifespan = Lifespan(app)
    if not await lifespan.startup():
        return STARTUP_FAILED
    address = sock.getsockname()
    shared = Shared(app, limits, server=(str(address[0]), int(address[1])))
    server = await loop.create_server(lambda: Connection(shared), sock=sock, backlog=BACKLOG)
    shared.start()
    log.info("startup complete: serving on http://%s:%d (process %d; Ctrl+C stops it)",
             *shared.server, os.getpid())  # type: ignore[misc]
    await stopping.wait()
    log.info("shutting down: no new connections; requests in flight have %g s", grace_s)
    server.close()
    shared.close_idle()
    await _drain(shared, grace_s, forced)
    shared.stop()
    await lifespan.shutdown()
    log.info("shutdown complete (process %d)", os.getpid())
    return 0


async def _drain(shared: Shared, grace_s: float, forced: asyncio.Event) -> None:
    """Wait until every connection has closed, the grace period ends or a second signal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
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

    async def shutdown(self) -> None:
        """Run the app's shutdown (flushes the prediction log) and wait for it."""
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        reply = await self.replies.get()
        if reply is not None and reply["type"] == "lifespan.shutdown.failed":
            log.error("shutdown failed: %s", reply.get("message"))
        await self.task

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": {}}
        try:
            await self.app(scope, self.inbox.get, self.replies.put)
        except Exception:
            self.failed = True
            log.exception("the app's lifespan failed")
        finally:
            self.replies.put_nowait(None)


__all__ = ["BACKLOG", "GRACE_S", "STARTUP_FAILED", "Lifespan", "bind", "configure_logging", "run"]
