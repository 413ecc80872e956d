"""The few HTTP pieces the raw ASGI app needs: routing, body reading with a limit, responses.

:func:`match` is a pure router over path segments (``{name}`` segments capture). Each codec
declares its routes as ``(method, path, Endpoint(function))``; the app binds them to the codec
it built (:func:`bind_routes`) and compiles one table, as Starlette's ``Route(path, endpoint)``.
Bodies are read with the size limit enforced both from ``Content-Length`` and while streaming;
compressed bodies (``Content-Encoding: gzip`` or ``deflate``, which ``tritonclient`` can send)
are inflated under the same limit.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MethodType
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs

import orjson

from modelyard.errors import (
    BodyTimeoutError,
    BodyTooLargeError,
    InputError,
    MethodNotAllowedError,
    ModelyardError,
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = [(b"content-type", b"application/json")]
#: how much of a streamed file body is written or sent at a time.
_FILE_CHUNK = 1 << 20


class ClientDisconnectedError(Exception):
    """The client went away before sending its whole body (nothing to answer).

    Not a :class:`~modelyard.errors.ModelyardError`: no one is left to read an answer, so it is
    a signal the dispatcher catches to stop the request quietly, never an error a user sees.
    """


Handler = Callable[..., Awaitable[None]]
H = TypeVar("H")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a route runs: ``answer(scope, receive, send, **captured)``, and how the app's
    dispatcher admits it.

    A codec declares its routes with its class's functions (``Endpoint(OIPHandlers.v2_infer)``)
    and the app binds them to the codec it built (:meth:`bind`). ``mutation``: the request
    changes something, so the dispatcher admits it first (cross-site rules, then the credential:
    :meth:`modelyard.serving.access.Access.admit`); ``untyped``: a mutation whose clients send no
    ``Content-Type`` (tritonclient's repository load/unload). ``action``: what the caller's role
    must allow (:data:`modelyard.registry.policy.ACTIONS`; undeclared, only an admin may call
    it: deny by default); ``sensitive``: a read of what clients sent, which needs a credential
    even when auth is not enforced, as mutations do.
    """

    answer: Handler
    mutation: bool = False
    untyped: bool = False
    action: str = "admin"
    sensitive: bool = False
    media: bytes | None = None

    @property
    def credential_needed(self) -> bool:
        """Whether the route needs a credential even on a server that does not enforce auth
        (when ``MODELYARD_TOKEN`` is set)."""
        return self.mutation or self.sensitive

    @property
    def name(self) -> str:
        """The endpoint's name (its function's), for the API table and docs."""
        return self.answer.__name__

    def bind(self, owner: object) -> Endpoint:
        """This endpoint answering as ``owner``'s method."""
        return replace(self, answer=MethodType(self.answer, owner))


#: ``(method, path, endpoint)``: how a codec declares its routes.
RouteTable = Sequence[tuple[str, str, Endpoint]]


def bind_routes(owner: object, table: RouteTable) -> list[tuple[str, str, Endpoint]]:
    """``table``'s routes answered by ``owner`` (the codec whose class declared them)."""
    return [(method, path, endpoint.bind(owner)) for method, path, endpoint in table]


@dataclass(frozen=True)
class Route(Generic[H]):
    """``method`` + path pattern (segments; ``{x}`` captures) -> handler (an :class:`Endpoint`,
    or any value: a name in the API table). ``literals`` and ``captures`` are the pattern's
    fixed segments and captured ones by position, which :func:`match` compares."""

    method: str
    pattern: tuple[str, ...]
    handler: H
    literals: tuple[tuple[int, str], ...] = field(init=False, compare=False, repr=False)
    captures: tuple[tuple[int, str], ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        fixed = [(i, p) for i, p in enumerate(self.pattern) if p[0] != "{"]
        object.__setattr__(self, "literals", tuple(fixed))
        object.__setattr__(self, "captures", tuple(
            (i, p[1:-1]) for i, p in enumerate(self.pattern) if p[0] == "{"))


def compile_routes(table: Sequence[tuple[str, str, H]]) -> dict[int, list[Route[H]]]:
    """Routes grouped by segment count, for :func:`match`."""
    out: dict[int, list[Route[H]]] = {}
    for method, path, handler in table:
        pattern = tuple(p for p in path.split("/") if p)
        out.setdefault(len(pattern), []).append(Route(method, pattern, handler))
    return out


def match(
    routes: dict[int, list[Route[H]]], method: str, path: str
) -> tuple[H, dict[str, str]] | None:
    """``(handler, captured)`` for a request; ``None`` when no path matches.

    Raises :class:`MethodNotAllowedError` when the path matches only under other methods.
    """
    # empty segments do not count ("/a//b/" is "/a/b"); the common path has none to drop
    parts = path.strip("/").split("/") if "//" not in path else [p for p in path.split("/") if p]
    if parts == [""]:
        parts = []
    allowed: list[str] = []
    for route in routes.get(len(parts), ()):
        for i, want in route.literals:
            if parts[i] != want:
                break
        else:
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route.handler, {name: parts[i] for i, name in route.captures}
            allowed.append(route.method)
    if allowed:
        raise MethodNotAllowedError(
            f"{method} is not allowed on {path}; use {', '.join(sorted(set(allowed)))}", allowed
        )
    return None


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case bytes)."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


class BodyDeadlines:
    """Body reads that may wait at most ``timeout_s`` for the next part of a body.

    :meth:`wrap` gives a handler a ``receive`` that raises :class:`BodyTimeoutError` when the
    client stalls mid-body. One timer for the whole server checks the waiting reads (every
    quarter of the timeout, at most every second) and cancels the late ones, so a request pays
    a dictionary entry, not a timer of its own (an ``asyncio.timeout`` per read cost 5 µs).
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.tick_s = min(1.0, timeout_s / 4)
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def wrap(self, receive: Receive) -> Receive:
        """``receive`` under the deadline (call it from the request's own task)."""
        waiting = self._waiting

        async def receive_body_part() -> dict[str, Any]:
            task = asyncio.current_task()
            if task is None:  # not in a task: nothing to cancel, no deadline
                return await receive()
            waiting[task] = time.monotonic() + self.timeout_s
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.tick_s, self._check)
            try:
                return await receive()
            except asyncio.CancelledError:
                if task not in self._expired:
                    raise
                self._expired.discard(task)
                task.uncancel()
                raise BodyTimeoutError(
                    f"the request body stopped arriving: nothing for {self.timeout_s:g} s; "
                    "send the whole body without pausing") from None
            finally:
                waiting.pop(task, None)

        return receive_body_part

    def _check(self) -> None:
        self._timer = None
        now = time.monotonic()
        for task, deadline in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[task]
                self._expired.add(task)
                task.cancel()  # lands in the read's await: the task is suspended there
        if self._waiting:
            self._timer = asyncio.get_running_loop().call_later(self.tick_s, self._check)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, or :class:`BodyTooLargeError` past ``limit`` bytes."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and (
            len(declared) > 18 or int(declared) > limit):
        raise BodyTooLargeError(f"the body has {declared.decode()[:40]} bytes; the limit is "
                                f"{limit}")
    message = await receive()
    body = message.get("body", b"")
    if message["type"] == "http.disconnect":
        raise ClientDisconnectedError
    if not message.get("more_body", False):
        return inflate(scope, body, limit)
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return inflate(scope, b"".join(chunks), limit)


async def read_body_to_file(scope: Scope, receive: Receive, dest: Path, limit: int) -> int:
    """Stream the request body into the file ``dest``, never holding more than a megabyte of
    it; :class:`BodyTooLargeError` past ``limit`` bytes (what was written is the caller's to
    remove). Returns the body's size. For uploads too large for :func:`read_body`; the body is
    taken as it is sent (no ``Content-Encoding``)."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and (
            len(declared) > 18 or int(declared) > limit):
        raise BodyTooLargeError(f"the body has {declared.decode()[:40]} bytes; the limit is "
                                f"{limit}")
    encoding = header(scope, b"content-encoding")
    if encoding not in (None, b"", b"identity"):
        raise InputError("send this body without Content-Encoding",
                         [{"loc": ["header", "content-encoding"], "msg": "unsupported"}])
    loop = asyncio.get_running_loop()
    size, pending, more = 0, bytearray(), True
    with open(dest, "wb") as out:
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnectedError
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError(f"the body is over the limit of {limit} bytes")
            pending += chunk
            if len(pending) >= _FILE_CHUNK or (not more and pending):
                await loop.run_in_executor(None, out.write, bytes(pending))
                pending.clear()
    return size


async def send_file(send: Send, path: Path, headers: list[tuple[bytes, bytes]]) -> None:
    """Answer 200 with the file at ``path`` as the body, a megabyte at a time."""
    loop = asyncio.get_running_loop()
    size = path.stat().st_size
    await send({"type": "http.response.start", "status": 200,
                "headers": [*headers, (b"content-length", str(size).encode())]})
    with open(path, "rb") as fh:
        while True:
            chunk = await loop.run_in_executor(None, fh.read, _FILE_CHUNK)
            await send({"type": "http.response.body", "body": chunk,
                        "more_body": len(chunk) == _FILE_CHUNK})
            if len(chunk) < _FILE_CHUNK:
                return


def inflate(scope: Scope, body: bytes, limit: int) -> bytes:
    """Decompress a ``gzip``/``deflate`` body without letting it grow past ``limit``."""
    if len(body) > limit:
        raise BodyTooLargeError(f"the body is over the limit of {limit} bytes")
    encoding = header(scope, b"content-encoding")
    if encoding is None or encoding in (b"identity", b""):
        return body
    wbits = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise InputError(f"Content-Encoding {encoding.decode(errors='replace')!r} is not "
                         "supported; send gzip, deflate or identity",
                         [{"loc": ["header", "content-encoding"], "msg": "unsupported"}])
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InputError(f"the body is not valid {encoding.decode()}: {exc}",
                         [{"loc": ["body"], "msg": "cannot decompress"}]) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyTooLargeError(f"the decompressed body is over the limit of {limit} bytes")
    return out


async def respond(send: Send, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a complete response, with its length (no chunked encoding: one write per answer)."""
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status,
                "headers": [*(JSON if headers is None else headers), length]})
    await send({"type": "http.response.body", "body": body})


def error_body(
    exc: BaseException, *, oip: bool = False
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """``(status, body, headers)`` for an error: 4xx/5xx from the error's ``status_code``.

    Native routes answer ``{"error": kind, "message": ..., "detail": [...]}``; OIP routes answer
    ``{"error": message}`` (plus ``detail``), as the protocol specifies.
    """
    if isinstance(exc, ModelyardError):
        status = exc.status_code
        data = exc.to_dict()
    else:
        status = 500
        data = {"error": type(exc).__name__, "message": f"internal error: {exc}"}
    if oip:
        detail = {"detail": data["detail"]} if "detail" in data else {}
        data = {"error": data["message"], **detail}
    headers = list(JSON)
    retry_after = getattr(exc, "retry_after", 1 if status == 503 else None)
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if status == 408:  # the rest of that body may still come: the connection cannot be reused
        headers.append((b"connection", b"close"))
    if isinstance(exc, MethodNotAllowedError):
        headers.append((b"allow", ", ".join(sorted(set(exc.allow))).encode()))
    # an error that needs more than its body to be understood (WWW-Authenticate on a 401)
    headers.extend(getattr(exc, "response_headers", ()))
    return status, orjson.dumps(data), headers



def query_param(scope: Scope, key: str) -> str | None:
    """The last value of ``key`` in the request's query string, or None."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(key)
    return values[-1] if values else None


def query_int(scope: Scope, key: str, default: int) -> int:
    """``key`` from the query as a whole number from 1 to 10000 (``default`` when absent);
    :class:`InputError` (422) naming it otherwise."""
    text = query_param(scope, key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 0 < int(text) <= 10_000:
        raise InputError(f"{key} must be a whole number from 1 to 10000, got {text!r}",
                         [{"loc": ["query", key], "msg": "not a positive integer"}])
    return int(text)


__all__ = [
    "JSON",
    "BodyDeadlines",
    "ClientDisconnectedError",
    "Endpoint",
    "Handler",
    "Route",
    "RouteTable",
    "bind_routes",
    "compile_routes",
    "error_body",
    "header",
    "inflate",
    "match",
    "query_int",
    "query_param",
    "read_body",
    "read_body_to_file",
    "respond",
    "send_file",
]
