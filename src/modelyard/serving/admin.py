"""The admin API under ``/api/v1``: what the CLI does to models, aliases and rollouts, over HTTP.

Reads (``GET``) are open. Mutations (``POST``) need ``Authorization: Bearer <token>`` when the
environment variable ``MODELYARD_TOKEN`` was set when the app was built: a missing token answers
401 (with ``WWW-Authenticate: Bearer``), a wrong one 403. The registry records the actor ``api``,
or ``api:<X-Actor header>`` when the caller names itself.

Registry calls block, so they run on the catalog's registry thread, off the event loop. Errors
answer the app's usual ``{"error", "message"[, "detail"]}`` body with their ``status_code``:
unknown model or version 404, a clash with the registry's state (a rollout already active,
nothing to roll back to, a promote of the served alias to a version this server cannot load)
409, malformed JSON or invalid settings 400, unknown or mistyped body fields 422. A rollout's
unset settings come from the version's registered spec (``Deployments.start_declared``), and
every rollout answer says what it does and the traffic it really gets
(``Deployments.describe``).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from modelyard.errors import InputError, ModelyardError
from modelyard.registry.rows import PRODUCTION
from modelyard.serving.http import (
    JSON,
    Receive,
    Scope,
    Send,
    error_body,
    header,
    read_body,
    respond,
)
from modelyard.serving.protocol_v1 import BadJSONError

if TYPE_CHECKING:
    from modelyard.serving.app import App

TOKEN_ENV = "MODELYARD_TOKEN"
ACTOR = "api"
_MAX_ACTOR = 100

#: ``(method, path, handler)``; the app registers these next to its own routes.
ADMIN_ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/api/v1/models", "admin_models"),
    ("GET", "/api/v1/models/{name}/versions", "admin_versions"),
    ("GET", "/api/v1/models/{name}/deployment", "admin_deployment"),
    ("GET", "/api/v1/models/{name}/deployment/history", "admin_deployment_history"),
    ("POST", "/api/v1/models/{name}/promote", "admin_promote"),
    ("POST", "/api/v1/models/{name}/rollback", "admin_rollback"),
    ("POST", "/api/v1/models/{name}/deployments", "admin_start_deployment"),
    ("POST", "/api/v1/models/{name}/deployment/promote", "admin_deployment_promote"),
    ("POST", "/api/v1/models/{name}/deployment/abort", "admin_deployment_abort"),
    ("POST", "/api/v1/models/{name}/deployment/rollback", "admin_deployment_rollback"),
]


class UnauthorizedError(ModelyardError):
    """A mutating call came without ``Authorization: Bearer <token>``."""

    status_code = 401


class ForbiddenError(ModelyardError):
    """A mutating call's bearer token does not match the server's ``MODELYARD_TOKEN``."""

    status_code = 403


# -- body fields: name -> (accepted types, required, default) ----------------------------------
_INT = (int,)
_OPT_INT = (int, type(None))
_STR = (str,)
_OPT_STR = (str, type(None))
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_LIST = (list, type(None))
_OPT_DICT = (dict, type(None))

Fields = dict[str, tuple[tuple[type, ...], bool, Any]]

_PROMOTE: Fields = {"version": (_INT, True, None), "alias": (_STR, False, PRODUCTION),
                    "reason": (_STR, False, "")}
_ROLLBACK: Fields = {"to": (_OPT_INT, False, None), "alias": (_STR, False, PRODUCTION),
                     "reason": (_STR, False, "")}
# unset settings come from the version's registered rollout spec (Deployments.start_declared)
_START: Fields = {"version": (_INT, True, None), "strategy": (_OPT_STR, False, None),
                  "steps": (_OPT_LIST, False, None), "every_s": (_OPT_NUM, False, None),
                  "key": (_OPT_STR, False, None), "rules": (_OPT_DICT, False, None),
                  "reason": (_STR, False, "")}
_REASON: Fields = {"reason": (_STR, False, "")}

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "an object", type(None): "null"}


def parse_fields(body: bytes, fields: Fields) -> dict[str, Any]:
    """The body's JSON object checked against ``fields`` (an empty body is ``{}``).

    :class:`BadJSONError` (400) for unparseable JSON; :class:`InputError` (422), with one
    ``detail`` entry per problem, for a non-object, an unknown or missing field or a wrong type.
    """
    if body.strip():
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadJSONError(f"the body is not valid JSON: {exc}") from None
    else:
        doc = {}
    if not isinstance(doc, dict):
        raise InputError("the body must be a JSON object",
                         [{"loc": ["body"], "msg": "not an object"}])
    errors = [{"loc": ["body", k], "msg": "unknown field"} for k in sorted(set(doc) - set(fields))]
    out: dict[str, Any] = {}
    for name, (types, required, default) in fields.items():
        if name not in doc:
            if required:
                errors.append({"loc": ["body", name], "msg": "field required"})
            out[name] = default
            continue
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, types):  # bool is not a number here
            want = " or ".join(_TYPE_NAMES[t] for t in types)
            errors.append({"loc": ["body", name], "msg": f"must be {want}"})
        out[name] = value
    if errors:
        fields_named = ", ".join(str(e["loc"][-1]) for e in errors)
        raise InputError(f"invalid request body ({fields_named}); fields: {', '.join(fields)}",
                         errors)
    return out


class AdminAPI:
    """The ``admin_*`` handlers the app routes ``/api/v1`` to (see the module docstring)."""

    def __init__(self, app: App) -> None:
        self.app = app
        token = os.environ.get(TOKEN_ENV, "")
        self.token: bytes | None = token.encode() if token else None
        self._deployments: Any = None

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def registry(self) -> Any:
        return self.app.catalog.registry

    @property
    def deployments(self) -> Any:
        if self._deployments is None:
            from modelyard.rollout.deployments import Deployments

            self._deployments = Deployments(self.registry)
        return self._deployments

    async def io(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run a blocking registry call on the catalog's registry thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.app.catalog.io_pool, partial(fn, *args, **kw))

    def _authorize(self, scope: Scope) -> None:
        """Raise 401/403 unless the call carries the configured bearer token (if any)."""
        if self.token is None:
            return
        given = header(scope, b"authorization")
        if given is None or not given.strip():
            raise UnauthorizedError("this call needs 'Authorization: Bearer <token>' "
                                    f"(the server's {TOKEN_ENV})")
        scheme, _, credential = given.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not credential.strip():
            raise UnauthorizedError("send the token as 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(credential.strip(), self.token):
            raise ForbiddenError("the bearer token is not valid for this server")

    @staticmethod
    def actor(scope: Scope) -> str:
        """``api``, or ``api:<X-Actor>`` when the caller names itself."""
        raw = header(scope, b"x-actor")
        if raw is None:
            return ACTOR
        name = "".join(c for c in raw.decode("utf-8", "replace") if c.isprintable()).strip()
        return f"{ACTOR}:{name[:_MAX_ACTOR]}" if name else ACTOR

    async def authorized(self, scope: Scope, send: Send) -> bool:
        """Check the bearer token; False when a 401 was answered (a wrong token raises 403)."""
        try:
            self._authorize(scope)
        except UnauthorizedError as exc:
            status, body, headers = error_body(exc)
            await respond(send, status, body, [*headers, (b"www-authenticate", b"Bearer")])
            return False
        return True

    async def _mutation(self, scope: Scope, receive: Receive, send: Send,
                        fields: Fields) -> dict[str, Any] | None:
        """Authorize, then read and check the body; ``None`` when an auth error was answered."""
        if not await self.authorized(scope, send):
            return None
        body = await read_body(scope, receive, self.app.options.max_body_bytes)
        return parse_fields(body, fields)

    async def _describe(self, d: Any) -> dict[str, Any]:
        """A deployment as status shows it: what it does, and the traffic servers report."""
        return await self.io(self.deployments.describe, d)  # type: ignore[no-any-return]

    # -- reads ----------------------------------------------------------------------------------
    async def admin_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/models``: every registered model with its aliases."""
        models = await self.io(self.registry.list_models)
        await _ok(send, {"models": [m.to_dict() for m in models]})

    async def admin_versions(self, scope: Scope, receive: Receive, send: Send,
                             name: str) -> None:
        """``GET /api/v1/models/{name}/versions``: newest first, without bulky metadata."""
        versions = await self.io(self.registry.list_versions, name)
        await _ok(send, {"model": name, "versions": [v.to_dict(full=False) for v in versions]})

    async def admin_deployment(self, scope: Scope, receive: Receive, send: Send,
                               name: str) -> None:
        """``GET /api/v1/models/{name}/deployment``: the current rollout (404: never had one)."""
        await _ok(send, await self._describe(await self.io(self.deployments.get, name)))

    async def admin_deployment_history(self, scope: Scope, receive: Receive, send: Send,
                                       name: str) -> None:
        """``GET /api/v1/models/{name}/deployment/history``: transitions, newest first."""
        events = await self.io(self.deployments.history, name)
        await _ok(send, {"model": name, "events": [e.to_dict() for e in events]})

    # -- aliases --------------------------------------------------------------------------------
    async def admin_promote(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """``POST /api/v1/models/{name}/promote``: point an alias (production) at a version."""
        body = await self._mutation(scope, receive, send, _PROMOTE)
        if body is None:
            return
        if body["alias"] == self.app.options.alias:  # what this server serves: load it first
            await self.app.catalog.check_loads(name, body["version"])
        event = await self.io(self.registry.set_alias, name, body["alias"], body["version"],
                               actor=self.actor(scope), reason=body["reason"])
        await _ok(send, {"event": event.to_dict()})

    async def admin_rollback(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """``POST /api/v1/models/{name}/rollback``: move an alias back (or to version ``to``).

        Like ``modelyard rollback``: rolling back ``production`` first ends the model's active
        rollout, if any (all traffic returns to the stable version, still production). Without
        ``to`` that is all it does; with ``to`` the alias then moves there.
        """
        body = await self._mutation(scope, receive, send, _ROLLBACK)
        if body is None:
            return
        actor = self.actor(scope)
        ended = None
        if body["alias"] == PRODUCTION:
            ended = await self.io(self._end_active_rollout, name, actor, body["reason"])
        deployment = None if ended is None else await self._describe(ended)
        if ended is not None and body["to"] is None:
            await _ok(send, {"event": None, "deployment": deployment})
            return
        event = await self.io(self.registry.rollback, name, alias=body["alias"], to=body["to"],
                               actor=actor, reason=body["reason"])
        await _ok(send, {"event": event.to_dict(), "deployment": deployment})

    def _end_active_rollout(self, name: str, actor: str, reason: str) -> Any:
        from modelyard.errors import NotFoundError

        self.registry.get_model(name)  # 404 for an unknown model before anything else
        try:
            current = self.deployments.get(name)
        except NotFoundError:
            return None
        if not current.active:
            return None
        return self.deployments.rollback(name, actor=actor, reason=reason or "rollback")

    # -- rollouts -------------------------------------------------------------------------------
    async def admin_start_deployment(self, scope: Scope, receive: Receive, send: Send,
                                     name: str) -> None:
        """``POST /api/v1/models/{name}/deployments``: start rolling a version out (201)."""
        body = await self._mutation(scope, receive, send, _START)
        if body is None:
            return
        d = await self.io(self.deployments.start_declared, name, body["version"],
                          strategy=body["strategy"], steps=body["steps"],
                          every_s=body["every_s"], rules=body["rules"], key=body["key"],
                          actor=self.actor(scope), reason=body["reason"])
        await respond(send, 201, orjson.dumps(await self._describe(d)), JSON)

    async def _transition(self, scope: Scope, receive: Receive, send: Send, name: str,
                          action: str) -> None:
        body = await self._mutation(scope, receive, send, _REASON)
        if body is None:
            return
        method = getattr(self.deployments, action)
        d = await self.io(method, name, actor=self.actor(scope), reason=body["reason"])
        await _ok(send, await self._describe(d))

    async def admin_deployment_promote(self, scope: Scope, receive: Receive, send: Send,
                                       name: str) -> None:
        """``POST .../deployment/promote``: end the rollout with the candidate as production."""
        await self._transition(scope, receive, send, name, "promote")

    async def admin_deployment_abort(self, scope: Scope, receive: Receive, send: Send,
                                     name: str) -> None:
        """``POST .../deployment/abort``: cancel the rollout; traffic back to stable."""
        await self._transition(scope, receive, send, name, "abort")

    async def admin_deployment_rollback(self, scope: Scope, receive: Receive, send: Send,
                                        name: str) -> None:
        """``POST .../deployment/rollback``: the candidate is bad; traffic back to stable."""
        await self._transition(scope, receive, send, name, "rollback")


async def _ok(send: Send, doc: Any) -> None:
    await respond(send, 200, orjson.dumps(doc), JSON)


__all__ = ["ADMIN_ROUTES", "TOKEN_ENV", "AdminAPI", "ForbiddenError", "UnauthorizedError",
           "parse_fields"]
