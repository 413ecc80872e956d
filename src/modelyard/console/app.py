"""The web console's ASGI app, mounted by ``modelyard serve`` at ``/ui``.

Pages are server-rendered (:mod:`~modelyard.console.render`); htmx refreshes the live parts
(overview numbers, a rollout's steps) by asking the same URL with ``HX-Request``, which answers
only the part. Every page is admitted by the server's own
:class:`~modelyard.serving.access.Access` (``read`` on the model), with the key from the
session cookie (:mod:`~modelyard.console.session`); a button shows only when the caller may
``deploy``. A button's POST, once its CSRF token checks, is sent to the JSON API in-process with
the same key (``POST /api/v1/models/{name}/...``): the same validation, admission and audit
record (naming the key's principal) as any API client's, nothing written twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import orjson

from modelyard.console import pages
from modelyard.console.exchange import HTML, Request, Response, redirect
from modelyard.console.render import STATIC, render
from modelyard.console.session import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    check_csrf,
    clear_cookie,
    new_secret,
    parse_cookies,
    same_origin,
    set_cookie,
)
from modelyard.errors import (
    ForbiddenError,
    MethodNotAllowedError,
    ModelyardError,
    NotFoundError,
    UnauthorizedError,
)
from modelyard.serving.access import identity_of_scope
from modelyard.serving.http import Receive, Scope, Send, compile_routes, header, match, read_body
from modelyard.serving.mounts import Mount

log = logging.getLogger(__name__)

PREFIX = "/ui"
_MEDIA = {".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8",
          ".txt": b"text/plain; charset=utf-8", ".md": b"text/plain; charset=utf-8",
          ".png": b"image/png", ".svg": b"image/svg+xml"}
#: the biggest form the console accepts (a login, a button), in bytes.
MAX_FORM_BYTES = 16 * 1024


Handler = Callable[..., Awaitable[Response]]


class Console:
    """The console over one server app (see the module docstring)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.secure = server.options.tls_cert is not None
        self.routes = compile_routes(pages.routes(self))

    @property
    def enforced(self) -> bool:
        """Whether pages need a signed-in key (else the console is open, like the API)."""
        return bool(self.server.access.enforced)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cookies = parse_cookies(header(scope, b"cookie"))
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode(
            "latin-1"), keep_blank_values=True).items()}
        request = Request(scope, receive, cookies, query, self)
        if not cookies.get(CSRF_COOKIE):  # every browser gets its CSRF secret on first sight
            cookies[CSRF_COOKIE] = new_secret()
            request.set_cookies.append(set_cookie(CSRF_COOKIE, cookies[CSRF_COOKIE],
                                                  secure=self.secure))
        try:
            response = await self._answer(request)
        except ModelyardError as exc:
            response = self._failure(request, exc)
        except Exception as exc:  # a bug: say so in a page, log it once
            log.exception("console %s failed", scope["path"][:200])
            response = self._failure(request, exc)
        await self._send(send, request, response)

    async def _answer(self, request: Request) -> Response:
        scope = request.scope
        path = scope["path"].removeprefix(PREFIX) or "/"
        found = match(self.routes, scope["method"], path)
        if found is None:
            raise NotFoundError(f"no console page {scope['path'][:200]}")
        handler, params = found
        if scope["method"] == "POST":
            await self._check_post(request)
        return await handler(request, **params)

    async def _check_post(self, request: Request) -> None:
        """A POST must come from this server's pages: same origin, a matching CSRF token."""
        if not same_origin(header(request.scope, b"origin"), header(request.scope, b"host")):
            raise ForbiddenError("a console form was sent from another site")
        body = await read_body(request.scope, request.receive, MAX_FORM_BYTES)
        request.form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                                       keep_blank_values=True).items()}
        check_csrf(request.cookies, request.form)

    # -- who is asking --------------------------------------------------------------------------
    def credential_scope(self, request: Request, key: str | None = None) -> Scope:
        """The request's scope with the session's key as its bearer credential."""
        key = key if key is not None else request.cookies.get(SESSION_COOKIE)
        headers = [(k, v) for k, v in request.scope.get("headers", ())
                   if not (key and k == b"authorization")]
        if key:
            headers.append((b"authorization", b"Bearer " + key.encode("latin-1", "replace")))
        return {**request.scope, "headers": headers}

    async def admit(self, request: Request, action: str = "read",
                    model: str | None = None) -> None:
        """Let the page through for ``action`` on ``model`` (raises 401/403) and remember who."""
        scope = self.credential_scope(request)
        await self.server.access.admit(scope, action, model,
                                       credential_needed=action != "read")
        request.identity = identity_of_scope(scope)

    async def call_api(self, request: Request, path: str, body: dict[str, Any]) -> tuple[int,
                                                                                          Any]:
        """POST ``body`` to the JSON API in-process with the session's key: (status, answer)."""
        scope = self.credential_scope(request)
        scope = {**scope, "method": "POST", "path": path, "raw_path": path.encode(),
                 "query_string": b"",
                 "headers": [(k, v) for k, v in scope["headers"]
                             if k in (b"authorization", b"host", b"user-agent")]
                 + [(b"content-type", b"application/json")]}
        payload = orjson.dumps(body)
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        answer: dict[str, Any] = {"status": 500, "body": b""}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        await self.server(scope, receive, send)
        try:
            doc = orjson.loads(answer["body"]) if answer["body"] else None
        except orjson.JSONDecodeError:
            doc = None
        return int(answer["status"]), doc

    # -- answers --------------------------------------------------------------------------------
    def _failure(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, UnauthorizedError) and request.scope["method"] == "GET":
            return redirect(f"{PREFIX}/login?next={quote(request.scope['path'])}")
        status = exc.status_code if isinstance(exc, ModelyardError) else 500
        message = str(exc) if isinstance(exc, ModelyardError) else "the console failed: see " \
            "the server's log"
        headers = []
        if isinstance(exc, MethodNotAllowedError):
            headers.append((b"allow", ", ".join(exc.allow).encode()))
        body = render("error.html", **request.context(status=status, message=message))
        return Response(body, status, headers=headers)

    async def _send(self, send: Send, request: Request, response: Response) -> None:
        headers = [(b"content-type", response.media), *response.headers,
                   *((b"set-cookie", c) for c in request.set_cookies)]
        if response.media == HTML:
            headers += [(b"cache-control", b"no-store"), (b"x-frame-options", b"DENY"),
                        (b"content-security-policy",
                         b"default-src 'self'; style-src 'self' 'unsafe-inline'; "
                         b"frame-ancestors 'none'; form-action 'self'"),
                        (b"referrer-policy", b"same-origin")]
        headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        body = b"" if request.scope["method"] == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})

    # -- session --------------------------------------------------------------------------------
    async def login(self, request: Request, key: str) -> Response:
        """Check ``key`` through Access; on success the session cookie holds it (a server
        that needs no credential keeps none: its pages are open)."""
        if not self.server.access.required:
            return redirect(_next(request))
        scope = self.credential_scope(request, key)
        try:
            await self.server.access.admit(scope, "describe", None, credential_needed=True)
        except (UnauthorizedError, ForbiddenError) as exc:
            body = render("login.html", **request.context(error=str(exc), next=_next(request)))
            return Response(body, 403)
        request.set_cookies.append(set_cookie(SESSION_COOKIE, key, secure=self.secure,
                                              max_age=SESSION_MAX_AGE_S))
        # a new session gets a new CSRF secret: tokens from before signing in stop working
        request.set_cookies.append(set_cookie(CSRF_COOKIE, new_secret(), secure=self.secure))
        return redirect(_next(request))

    def logout(self, request: Request) -> Response:
        """End the session: the cookie is removed."""
        request.set_cookies.append(clear_cookie(SESSION_COOKIE, secure=self.secure))
        request.set_cookies.append(set_cookie(CSRF_COOKIE, new_secret(), secure=self.secure))
        return redirect(f"{PREFIX}/login?{urlencode({'msg': 'signed out'})}")

    @staticmethod
    def static(name: str) -> Response:
        """A static file; the vendored ones carry their version in their name, the console's
        own are asked for with their hash, so both are cached for a year."""
        base = STATIC.resolve()
        path = (STATIC / name).resolve()
        if not path.is_file() or base not in path.parents:
            raise NotFoundError(f"no static file {name[:100]!r}")
        media = _MEDIA.get(path.suffix, b"application/octet-stream")
        return Response(path.read_bytes(), media=media, headers=[
            (b"cache-control", b"public, max-age=31536000, immutable"),
            (b"x-content-type-options", b"nosniff")])


def _next(request: Request) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    target = request.form.get("next") or request.query.get("next") or PREFIX + "/"
    if not target.startswith(PREFIX + "/") and target != PREFIX:
        return PREFIX + "/"
    return target


def mount(server: Any) -> Mount:
    """The console as ``modelyard serve`` mounts it (``ServeOptions.mounts``)."""
    return Mount(PREFIX, Console(server), name="console")


__all__ = ["PREFIX", "Console", "mount"]
