"""The HTTP/1.1 server's connections: an asyncio protocol per client, parsed by httptools.

:class:`Connection` turns bytes into ASGI calls of the app and the app's messages into bytes,
with as few Python steps as a request allows: the head is parsed by httptools (C), the scope is a
plain dict, a body that has fully arrived is handed over in one ``http.request`` message, and a
response whose body comes in one message is one ``transport.write`` (status line, headers and
body joined once). What a real server owes its clients is here too: keep-alive and
``Connection: close``, HTTP/1.0, pipelined requests answered in order, chunked request bodies
(httptools decodes them), ``Expect: 100-continue`` (answered when the app first reads), limits on
the request head (431/414) and on the time it, or a pause in its body, may take, the keep-alive
idle timeout, 400 for what is not HTTP, ``HEAD`` without a body, back-pressure both ways and
the client's disconnect delivered as ``http.disconnect``.

:class:`Shared` is what every connection of one server shares: the app, the limits, the ``Date``
header of this second and one timer that closes the connections whose deadline passed (a
request pays a float store, not a timer of its own). The body size limit is the app's
(:func:`~modelyard.serving.http.read_body`); a body that pauses too long makes ``receive`` raise
:class:`~modelyard.errors.BodyTimeoutError`, and the scope's ``modelyard.body_timeout``
extension tells the app so (it adds no deadline of its own).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NoReturn
from urllib.parse import unquote

import httptools
import orjson

from modelyard.errors import BodyTimeoutError

log = logging.getLogger("modelyard.serving.server")

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

_ASGI = {"version": "3.0", "spec_version": "2.3"}
#: says to the app that this server times out a stalled body itself (``receive`` raises
#: :class:`BodyTimeoutError`), so the app adds no deadline of its own to each request
_EXTENSIONS: dict[str, dict[str, Any]] = {"modelyard.body_timeout": {}}
_STATUS = {int(s): f"HTTP/1.1 {int(s)} {s.phrase}\r\n".encode() for s in HTTPStatus}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP = b"connection: keep-alive\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})

# why reading is paused: a connection reads again only when no reason is left
_WRITE, _BODY, _PIPELINE, _REJECTED = 1, 2, 4, 8

_now = time.monotonic


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server before it is refused or its connection closed."""

    #: the request line and headers together (431 past it).
    head_bytes: int = 32 * 1024
    #: header lines in one request (431 past it).
    headers: int = 100
    #: the request target (414 past it).
    url_bytes: int = 8 * 1024
    #: seconds a request's head may take to arrive, and a body may pause (then ``receive``
    #: raises :class:`BodyTimeoutError`); a new connection must start a request as soon.
    head_timeout_s: float = 5.0
    #: seconds an idle keep-alive connection stays open.
    keep_alive_s: float = 30.0
    #: body bytes held for the app before reading pauses until it takes them.
    body_buffer: int = 256 * 1024
    #: requests read ahead of the one being answered before reading pauses.
    pipeline: int = 16


def error_response(status: int, message: str) -> bytes:
    """A whole ``Connection: close`` JSON error response (the app's error shape)."""
    body = orjson.dumps({"error": HTTPStatus(status).phrase.replace(" ", ""),
                         "message": message})
    return b"".join((_STATUS[status], b"date: ", formatdate(usegmt=True).encode(),
                     b"\r\nserver: modelyard\r\ncontent-type: application/json\r\n",
                     b"content-length: %d\r\n" % len(body), _CLOSE, b"\r\n", body))


class Shared:
    """What the connections of one server share: the app, limits, ``Date``, the deadline timer."""

    def __init__(self, app: App, limits: Limits | None = None,
                 server: tuple[str, int] | None = None, scheme: str = "http") -> None:
        self.app = app
        self.limits = limits or Limits()
        self.server = server
        self.scheme = scheme  # "https" when the server's listener speaks TLS
        self.connections: set[Connection] = set()
        self.closing = False
        self.tick_s = min(1.0, self.limits.head_timeout_s / 4, self.limits.keep_alive_s / 4)
        self.fixed = b""
        self._timer: asyncio.TimerHandle | None = None
        self._stamp()

    def _stamp(self) -> None:
        self.fixed = b"date: %s\r\nserver: modelyard\r\n" % formatdate(usegmt=True).encode()

    def start(self) -> None:
        """Start the once-a-tick timer (``Date`` and deadlines) on the running loop."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        self._stamp()
        now = _now()
        for conn in [c for c in self.connections if 0 < c.deadline <= now]:
            conn.expire()
        self._timer = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def stop(self) -> None:
        """Stop the timer (the server is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close_idle(self) -> None:
        """Shutting down: close every idle connection; busy ones close after their answer."""
        self.closing = True
        for conn in list(self.connections):
            conn.shutdown()

    def abort(self) -> None:
        """The grace period is over: cancel what still runs and drop every connection."""
        for conn in list(self.connections):
            conn.abort()


class Cycle:
    """One request and its response: the ASGI ``receive`` and ``send`` the app is called with."""

    __slots__ = ("body", "chunked", "complete", "conn", "disconnected", "done", "expect", "head",
                 "head_only", "keep_alive", "read_all", "scope", "started", "task", "timed_out",
                 "waiter")

    def __init__(self, conn: Connection, scope: dict[str, Any], keep_alive: bool,
                 expect: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect = expect  # 100-continue owed before the app's first read
        self.head_only = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.complete = False  # the whole request body has arrived
        self.read_all = False  # ... and the app has taken it
        self.disconnected = False
        self.started = False  # http.response.start received
        self.done = False  # the last body part sent
        self.chunked = False
        self.head: bytes | None = None  # the response head, written with the first body part
        self.task: asyncio.Task[None] | None = None
        self.timed_out = False  # the body paused past the head timeout
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """Let a ``receive`` waiting for body bytes, the body's end or a disconnect go on."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> dict[str, Any]:
        """The next ASGI message: the body (whole when it has arrived), then ``http.disconnect``
        once the response is sent or the client has gone."""
        if not (self.body or self.complete or self.disconnected or self.done):
            await self._wait_for_body()
        elif self.read_all and not (self.disconnected or self.done):
            await self._wait()
        if self.disconnected or self.done or self.read_all:
            return {"type": "http.disconnect"}
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        if self.complete:
            self.read_all = True
        else:
            self.conn.resume(_BODY)
        return {"type": "http.request", "body": data, "more_body": not self.complete}

    async def _wait_for_body(self) -> None:
        conn = self.conn
        if self.expect:
            self.expect = False
            conn.write(_CONTINUE)
        conn.resume(_BODY)
        timeout_s = conn.shared.limits.head_timeout_s
        conn.deadline = _now() + timeout_s
        try:
            await self._wait()
        finally:
            conn.deadline = 0.0
        if self.timed_out:
            raise BodyTimeoutError(
                f"the request body stopped arriving: nothing for {timeout_s:g} s; "
                "send the whole body without pausing")

    async def _wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        """Take an ASGI message: the head is kept and written with the first body part."""
        if message["type"] == "http.response.body" and self.started and not self.done:
            more = message.get("more_body", False)
            self.conn.write_body(self, message.get("body", b""), more)
            if more and self.conn.write_paused:
                await self.conn.drain()
        elif message["type"] == "http.response.start" and not self.started:
            self.head = self.conn.response_head(self, message["status"],
                                                message.get("headers", ()))
            self.started = True
        else:
            raise RuntimeError(f"unexpected ASGI message {message['type']!r} "
                               f"(response started: {self.started}, done: {self.done})")


class Connection(asyncio.Protocol):
    """One client connection: parse requests, run the app on each in order, write answers."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.loop: Any = None  # the running loop, from connection_made
        self.client: tuple[str, int] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect = False
        self.head_bytes = self.head_slack = self.chunk = 0
        self.in_head = False  # a request's head has started and not ended
        self.reading: Cycle | None = None  # the request whose body is arriving
        self.active: Cycle | None = None  # the request being answered
        self.queue: deque[Cycle] = deque()  # pipelined requests waiting their turn
        self.paused = 0
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.rejection: bytes | None = None
        self.refusal: tuple[int, str] | None = None  # why a callback stopped the parser
        self.closed = False
        self.deadline = 0.0

    # -- transport events -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register; the first request's head must begin within the head timeout."""
        self.transport = transport
        # kept: asyncio.get_running_loop() costs a getpid() system call on Python 3.11
        self.loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.shared.connections.add(self)
        self.deadline = _now() + self.shared.limits.head_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        """The client has gone: every request of this connection learns it."""
        self.closed = True
        self.deadline = 0.0
        self.shared.connections.discard(self)
        for cycle in (self.active, *self.queue):
            if cycle is not None:
                cycle.disconnected = True
                cycle.wake()
        if self.reading is not None:
            self.reading.disconnected = True
            self.reading.wake()
        self.queue.clear()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse what it cannot parse (400) or what is over a limit."""
        if self.rejection is not None:
            return
        self.chunk = len(data)
        if self.in_head:
            self.head_bytes += self.chunk
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._no_upgrade()
        except httptools.HttpParserCallbackError:
            if self.refusal is None:
                raise
            self.reject(*self.refusal)
        except httptools.HttpParserError as exc:
            self.reject(400, f"the request is not valid HTTP/1.1 ({exc}); check the client")
        else:
            # the chunk a head began in counts from the next one: its share is not known here
            if self.in_head and self.head_bytes - self.head_slack > self.shared.limits.head_bytes:
                self.reject(431, "the request's headers are too large; send at most "
                                 f"{self.shared.limits.head_bytes} bytes of them")

    def _no_upgrade(self) -> None:
        """An ``Upgrade`` request (WebSocket, h2c) is answered as plain HTTP, then closed:
        what follows its head is not HTTP/1.1 the parser can read."""
        last = self.queue[-1] if self.queue else self.active
        if last is not None:
            last.keep_alive = False
        self.pause(_REJECTED)

    def eof_received(self) -> bool | None:
        """The client closed its side: close ours (a request in flight sees a disconnect)."""
        return None

    def pause_writing(self) -> None:
        """The client reads slower than we answer: stop reading until it catches up."""
        self.write_paused = True
        self.pause(_WRITE)

    def resume_writing(self) -> None:
        """The write buffer has drained: read again, let a streaming response go on."""
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.resume(_WRITE)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is low again (or the client is gone)."""
        if self.write_paused and not self.closed:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def pause(self, reason: int) -> None:
        """Stop reading for ``reason`` (several may hold at once)."""
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        """``reason`` no longer holds; read again when no other does."""
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    # -- parser callbacks (httptools calls these from feed_data) --------------------------------
    def on_message_begin(self) -> None:
        """A request starts: its head must arrive within the head timeout."""
        self.url = b""
        self.headers = []
        self.expect = False
        self.in_head = True
        self.head_bytes = self.head_slack = self.chunk  # at most this chunk so far
        self.deadline = _now() + self.shared.limits.head_timeout_s

    def _refuse(self, status: int, message: str) -> NoReturn:
        """Stop the parser from inside a callback: :meth:`data_received` answers ``status``."""
        self.refusal = (status, message)
        raise ValueError(message)  # httptools raises it again as HttpParserCallbackError

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self.url += url
        if len(self.url) > self.shared.limits.url_bytes:
            self._refuse(414, f"the request target is over {self.shared.limits.url_bytes} "
                                 "bytes; send long inputs in the body")

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header line (names lower-cased, as ASGI wants them)."""
        name = name.lower()
        self.headers.append((name, value))
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect = True
        if len(self.headers) > self.shared.limits.headers:
            self._refuse(431, f"the request has more than {self.shared.limits.headers} "
                                 "header lines")

    def on_headers_complete(self) -> None:
        """The head is in: build the scope and run the app now, or after the ones before it."""
        self.in_head = False
        self.deadline = 0.0  # the app's own body timeout governs from here
        if self.head_bytes > self.shared.limits.head_bytes:
            self._check_head_size()
        parser = self.parser
        version = parser.get_http_version()
        path, query = self._target()
        method = parser.get_method()
        scope = {"type": "http", "asgi": _ASGI, "http_version": version,
                 "server": self.shared.server, "client": self.client, "scheme": self.shared.scheme,
                 "method": _METHODS.get(method) or method.decode("ascii"), "root_path": "",
                 "path": path, "raw_path": self.url.partition(b"?")[0], "query_string": query,
                 "headers": self.headers, "extensions": _EXTENSIONS}
        cycle = Cycle(self, scope, parser.should_keep_alive() and not self.shared.closing,
                      self.expect)
        self.reading = cycle
        if self.active is None:
            self._start(cycle)
        else:
            self.queue.append(cycle)
            if len(self.queue) >= self.shared.limits.pipeline:
                self.pause(_PIPELINE)

    def _check_head_size(self) -> None:
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.shared.limits.head_bytes:
            self._refuse(431, "the request's headers are too large; send at most "
                                 f"{self.shared.limits.head_bytes} bytes of them")

    def _target(self) -> tuple[str, bytes]:
        """``(path, query)``: the path percent-decoded, as ASGI wants it."""
        url = self.url
        if url[:1] == b"/":
            raw, _, query = url.partition(b"?")
        else:  # absolute-form (a proxy's) or '*'
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._refuse(400, "the request target is not a valid URL")
            raw, query = parsed.path or b"/", parsed.query or b""
        path = raw.decode("latin-1")
        return (unquote(path) if "%" in path else path), query

    def on_body(self, body: bytes) -> None:
        """Body bytes (chunked encoding already removed): keep them for the app's next read."""
        cycle = self.reading
        if cycle is None or cycle.done:  # answered already: what is left is dropped
            return
        cycle.body.append(body)
        cycle.wake()
        if len(cycle.body) > 1 and sum(map(len, cycle.body)) > self.shared.limits.body_buffer:
            self.pause(_BODY)

    def on_message_complete(self) -> None:
        """The request has fully arrived."""
        cycle = self.reading
        self.reading = None
        if cycle is not None:
            cycle.complete = True
            cycle.wake()
            if cycle.done and self.active is None:  # its answer went out before its body ended
                self._next()

    # -- running the app ------------------------------------------------------------------------
    def _start(self, cycle: Cycle) -> None:
        self.active = cycle
        cycle.task = self.loop.create_task(self._run(cycle))

    async def _run(self, cycle: Cycle) -> None:
        try:
            await self.shared.app(cycle.scope, cycle.receive, cycle.send)
        except asyncio.CancelledError:
            self._close()
            raise
        except Exception:
            log.exception("%s %s failed", cycle.scope["method"], cycle.scope["path"][:200])
            self._unfinished(cycle, "the server failed while answering; see its log")
        else:
            if not cycle.done:
                self._unfinished(cycle, "the server gave no answer; see its log")
        finally:
            cycle.task = None  # no cycle between the request and its task: plain refcounting

    def _unfinished(self, cycle: Cycle, message: str) -> None:
        """The app stopped without a whole answer: 500 if nothing was sent yet, else close."""
        if cycle.done or cycle.disconnected or self.closed:  # a failure after the answer: logged
            return
        if cycle.started:
            self._close()
            return
        cycle.keep_alive = False
        cycle.started = cycle.done = True
        self.write(error_response(500, message))
        self.active = None
        self._close()

    def response_head(self, cycle: Cycle, status: int, headers: Any) -> bytes:
        """The status line and headers, checked for line breaks; decides the body's framing."""
        parts = [_STATUS.get(status) or b"HTTP/1.1 %d \r\n" % status, self.shared.fixed]
        length = False
        lines = 4  # status line, date, server, the blank line
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                length = True
            elif lower == b"connection":
                if value.lower() == b"close":
                    cycle.keep_alive = False
                continue
            parts.extend((name, b": ", value, b"\r\n"))
            lines += 1
        if not length and status not in _NO_BODY_STATUS and status >= 200 \
                and not cycle.head_only:
            if cycle.scope["http_version"] == "1.1":
                parts.append(_CHUNKED)
                cycle.chunked = True
            else:  # an HTTP/1.0 client learns the body's end from the close
                cycle.keep_alive = False
            lines += 1
        lines += self._connection_header(cycle, parts)
        parts.append(b"\r\n")
        head = b"".join(parts)
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise ValueError("a response header holds a line break")
        return head

    def _connection_header(self, cycle: Cycle, parts: list[bytes]) -> int:
        # a client still waiting for 100-continue may never send the body we would have to skip
        if not cycle.keep_alive or self.shared.closing or (
                cycle.expect and not cycle.complete):
            cycle.keep_alive = False
            parts.append(_CLOSE)
            return 1
        if cycle.scope["http_version"] == "1.0":
            parts.append(_KEEP)
            return 1
        return 0

    def write_body(self, cycle: Cycle, body: bytes, more: bool) -> None:
        """Write a body part, with the head before the first one and the framing it needs."""
        if cycle.head_only:
            body = b""
        elif cycle.chunked:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (
                b"" if more else _LAST_CHUNK)
        if cycle.head is not None:
            body = cycle.head + body
            cycle.head = None
        if body and not self.closed:
            self.transport.write(body)
        if not more:
            cycle.done = True
            cycle.wake()
            self._finished(cycle)

    def write(self, data: bytes) -> None:
        """Write raw bytes (an interim or error response) unless the client has gone."""
        if not self.closed:
            self.transport.write(data)

    def _finished(self, cycle: Cycle) -> None:
        """A response went out: close, or answer the next pipelined request, or wait idle."""
        self.active = None
        if not cycle.keep_alive:
            self._close()
        elif cycle.complete:
            self._next()
        else:  # the rest of its body is read and dropped, within the head timeout
            self.deadline = _now() + self.shared.limits.head_timeout_s
            self.resume(_BODY)

    def _next(self) -> None:
        if self.queue:
            self._start(self.queue.popleft())
            if len(self.queue) < self.shared.limits.pipeline:
                self.resume(_PIPELINE)
        elif self.rejection is not None:
            self.write(self.rejection)
            self._close()
        elif self.shared.closing:
            self._close()
        elif self.in_head:  # the next request's head is arriving: on its own clock now
            self.deadline = _now() + self.shared.limits.head_timeout_s
        else:
            self.deadline = _now() + self.shared.limits.keep_alive_s

    def reject(self, status: int, message: str) -> None:
        """Refuse what the parser found wrong: answer after the requests before it, then close."""
        self.rejection = error_response(status, message)
        self.in_head = False
        self.reading = None
        self.pause(_REJECTED)
        if self.active is None and not self.queue:
            self._next()

    # -- closing --------------------------------------------------------------------------------
    def expire(self) -> None:
        """The deadline passed: an idle connection, a head or a dropped body that stalled
        (closed), or a body the app waits for (its ``receive`` raises)."""
        self.deadline = 0.0
        cycle = self.active
        if cycle is None:
            self._close()
        elif cycle.waiter is not None and not cycle.read_all:
            cycle.timed_out = True
            cycle.wake()

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the answers in hand."""
        if self.active is None and not self.queue:
            self._close()

    def abort(self) -> None:
        """Stop everything now (the shutdown's grace period is over)."""
        for cycle in (self.active, *self.queue):
            if cycle is not None and cycle.task is not None:
                cycle.task.cancel()
        if not self.closed:
            self.transport.abort()

    def _close(self) -> None:
        if not self.closed and not self.transport.is_closing():
            self.transport.close()
        self.deadline = 0.0


__all__ = ["Connection", "Cycle", "Limits", "Shared", "error_response"]
