"""The admin API under ``/api/v1``: what the CLI does to models, aliases and rollouts, over HTTP.

Reads (``GET``) need the ``read`` action (viewer, deployer, trainer, admin), mutations
(``POST``) ``deploy`` (deployer, admin) when auth is enforced; each route's model must be in the
key's scope. Mutations pass the app's dispatcher first: it refuses cross-site requests (a
foreign ``Origin`` 403, a body not declared JSON 415; see :mod:`modelyard.serving.cors`), then
a missing credential (401, with ``WWW-Authenticate: Bearer``) or one without the role (403).
The registry records the actor the credential stands for (:mod:`modelyard.serving.access`):
the key's principal, ``api:token``, or ``api:anonymous`` on a server that enforces nothing.

Registry calls block, so they run on the catalog's registry thread, off the event loop. Errors
answer the app's usual ``{"error", "message"[, "detail"]}`` body with their ``status_code``:
unknown model or version 404, a clash with the registry's state (a rollout already active,
nothing to roll back to, a promote of the served alias to a version this server cannot load)
409, malformed JSON or invalid settings 400, unknown or mistyped body fields and free text over
its bound 422. A rollout's unset settings come from the version's registered spec
(``Deployments.start_declared``), and every rollout answer says what it does and the traffic it
really gets (``Deployments.describe``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from modelyard.errors import BadJSONError, InputError
from modelyard.registry.rows import PRODUCTION
from modelyard.serving.access import TOKEN_ENV, actor_of, in_scope
from modelyard.serving.http import (
    JSON,
    Endpoint,
    Receive,
    RouteTable,
    Scope,
    Send,
    read_body,
    respond,
)

if TYPE_CHECKING:
    from modelyard.serving.catalog import Catalog


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

#: the longest a free-text field may be, in characters: a reason is a sentence or two for the
#: audit trail, not a document (names and aliases have the registry's own rules).
MAX_CHARS = {"reason": 1000, "key": 200}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

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
        elif isinstance(value, str) and len(value) > MAX_CHARS.get(name, len(value)):
            errors.append({"loc": ["body", name], "msg": f"must be at most {MAX_CHARS[name]} "
                                                         f"characters, got {len(value)}"})
        elif isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            # the registry stores 64-bit integers; a larger one would fail in the database
            errors.append({"loc": ["body", name], "msg": "is out of range (a 64-bit integer)"})
        out[name] = value
    if errors:
        fields_named = ", ".join(str(e["loc"][-1]) for e in errors)
        raise InputError(f"invalid request body ({fields_named}); fields: {', '.join(fields)}",
                         errors)
    return out


class CatalogAPI:
    """What every control-plane API over the server's catalog stands on: its registry, the
    registry thread for blocking calls, and request bodies checked against their fields."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.options = catalog.options

    @property
    def registry(self) -> Any:
        return self.catalog.registry

    async def io(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run a blocking registry call on the catalog's registry thread."""
        return await self.catalog.io(fn, *args, **kw)

    async def body(self, scope: Scope, receive: Receive, fields: Fields) -> dict[str, Any]:
        """The JSON body, checked against ``fields`` (the dispatcher already admitted the
        call)."""
        body = await read_body(scope, receive, self.options.max_body_bytes)
        return parse_fields(body, fields)


class AdminAPI(CatalogAPI):
    """The ``/api/v1`` endpoints over the server's catalog (see the module docstring)."""

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(catalog)
        self._deployments: Any = None

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def deployments(self) -> Any:
        if self._deployments is None:
            from modelyard.rollout.deployments import Deployments

            self._deployments = Deployments(self.registry)
        return self._deployments

    @staticmethod
    def actor(scope: Scope) -> str:
        """Who is acting: what the dispatcher authenticated (never a header the client picks)."""
        return actor_of(scope)

    async def _describe(self, d: Any) -> dict[str, Any]:
        """A deployment as status shows it: what it does, and the traffic servers report."""
        return await self.io(self.deployments.describe, d)  # type: ignore[no-any-return]

    # -- reads ----------------------------------------------------------------------------------
    async def admin_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/models``: every registered model with its aliases."""
        models = await self.io(self.registry.list_models)
        shown = in_scope(scope, "read", (m.name for m in models))  # a scoped key: its models
        await _ok(send, {"models": [m.to_dict() for m in models if m.name in shown]})

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
        body = await self.body(scope, receive, _PROMOTE)
        if body["alias"] == self.options.alias:  # what this server serves: load it first
            await self.catalog.check_loads(name, body["version"])
        event = await self.io(self.registry.set_alias, name, body["alias"], body["version"],
                               actor=self.actor(scope), reason=body["reason"])
        await _ok(send, {"event": event.to_dict()})

    async def admin_rollback(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """``POST /api/v1/models/{name}/rollback``: move an alias back (or to version ``to``).

        Like ``modelyard rollback``: rolling back ``production`` first ends the model's active
        rollout, if any (all traffic returns to the stable version, still production). Without
        ``to`` that is all it does; with ``to`` the alias then moves there.
        """
        body = await self.body(scope, receive, _ROLLBACK)
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
        body = await self.body(scope, receive, _START)
        d = await self.io(self.deployments.start_declared, name, body["version"],
                          strategy=body["strategy"], steps=body["steps"],
                          every_s=body["every_s"], rules=body["rules"], key=body["key"],
                          actor=self.actor(scope), reason=body["reason"])
        await respond(send, 201, orjson.dumps(await self._describe(d)), JSON)

    async def _transition(self, scope: Scope, receive: Receive, send: Send, name: str,
                          action: str) -> None:
        body = await self.body(scope, receive, _REASON)
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

    async def admin_deployment_pause(self, scope: Scope, receive: Receive, send: Send,
                                     name: str) -> None:
        """``POST .../deployment/pause``: freeze the traffic split."""
        await self._transition(scope, receive, send, name, "pause")

    async def admin_deployment_resume(self, scope: Scope, receive: Receive, send: Send,
                                      name: str) -> None:
        """``POST .../deployment/resume``: resume a paused rollout."""
        await self._transition(scope, receive, send, name, "resume")


async def _ok(send: Send, doc: Any) -> None:
    await respond(send, 200, orjson.dumps(doc), JSON)


ROUTES: RouteTable = [
    ("GET", "/api/v1/models", Endpoint(AdminAPI.admin_models, action="read")),
    ("GET", "/api/v1/models/{name}/versions", Endpoint(AdminAPI.admin_versions, action="read")),
    ("GET", "/api/v1/models/{name}/deployment", Endpoint(AdminAPI.admin_deployment, action="read")),
    ("GET", "/api/v1/models/{name}/deployment/history",
     Endpoint(AdminAPI.admin_deployment_history, action="read")),
    ("POST", "/api/v1/models/{name}/promote",
     Endpoint(AdminAPI.admin_promote, mutation=True, action="deploy")),
    ("POST", "/api/v1/models/{name}/rollback",
     Endpoint(AdminAPI.admin_rollback, mutation=True, action="deploy")),
    ("POST", "/api/v1/models/{name}/deployments",
     Endpoint(AdminAPI.admin_start_deployment, mutation=True, action="deploy")),
    ("POST", "/api/v1/models/{name}/deployment/promote",
     Endpoint(AdminAPI.admin_deployment_promote, mutation=True, action="deploy")),
    ("POST", "/api/v1/models/{name}/deployment/abort",
     Endpoint(AdminAPI.admin_deployment_abort, mutation=True, action="deploy")),
    ("POST", "/api/v1/models/{name}/deployment/rollback",
     Endpoint(AdminAPI.admin_deployment_rollback, mutation=True, action="deploy")),
    ("POST", "/api/v1/models/{name}/deployment/pause",
     Endpoint(AdminAPI.admin_deployment_pause, mutation=True, action="deploy")),
    ("POST", "/api/v1/models/{name}/deployment/resume",
     Endpoint(AdminAPI.admin_deployment_resume, mutation=True, action="deploy")),
]

__all__ = ["MAX_CHARS", "ROUTES", "TOKEN_ENV", "AdminAPI", "CatalogAPI", "parse_fields"]
