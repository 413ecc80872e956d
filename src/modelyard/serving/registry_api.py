"""The rest of the registry over HTTP, so the CLI can act through a server with a key
(``MODELYARD_URL``): one model, one version in full, alias history, runs, the audit trail, and
API keys (admin only).

Reads need ``read`` (viewer, deployer, trainer, admin) on the model they name; lists show only
the models a scoped key covers. Keys need ``admin``; a key made here is shown once in the
answer, as ``modelyard auth create-key`` prints it. Blocking registry calls run on the
catalog's registry thread.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from modelyard.config import MAX_VERSION
from modelyard.errors import ForbiddenError, InputError, NotFoundError
from modelyard.governance.card import CardFormat, gather, render
from modelyard.monitoring.monitor import Monitor
from modelyard.registry.audit_chain import ChainReport, chain_rows, export_record, verify_session
from modelyard.registry.keys import describe
from modelyard.serving.access import actor_of, identity_of_scope, in_scope
from modelyard.serving.admin import CatalogAPI, Fields
from modelyard.serving.http import (
    JSON,
    Endpoint,
    Receive,
    RouteTable,
    Scope,
    Send,
    query_int,
    query_param,
    respond,
)

_CREATE_KEY: Fields = {"principal": ((str,), True, None), "role": ((str,), True, None),
                       "models": ((str,), False, "*"), "kind": ((str,), False, "user"),
                       "expires_s": ((int, float, type(None)), False, None),
                       "note": ((str,), False, "")}
_ROTATE: Fields = {"grace_s": ((int, float), False, 3600)}


class RegistryAPI(CatalogAPI):
    """``/api/v1`` reads of the registry and key management (see the module docstring)."""

    # -- models and versions --------------------------------------------------------------------
    async def registry_model(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """``GET /api/v1/models/{name}``: the model, its newest version and aliases."""
        model = await self.io(self.registry.get_model, name)
        await _ok(send, model.to_dict())

    async def registry_version(self, scope: Scope, receive: Receive, send: Send, name: str,
                               version: str) -> None:
        """``GET /api/v1/models/{name}/versions/{version}``: one version in full; ``version``
        is its number, an alias (``production``) or a semantic version label (``1.4.0``)."""
        if version.isascii() and version.isdigit():
            found = await self.io(self.registry.get_version, name, parse_version(version))
        else:
            found = await self.io(self.registry.resolve, f"{name}@{version}")
        await _ok(send, found.to_dict())

    async def registry_card(self, scope: Scope, receive: Receive, send: Send, name: str,
                            version: str) -> None:
        """``GET /api/v1/models/{name}/versions/{version}/card[?format=html]``: the version's
        model card, Markdown (default) or one HTML page (:mod:`modelyard.governance.card`)."""
        fmt = query_param(scope, "format") or "markdown"
        if fmt not in ("markdown", "html"):
            raise InputError(f"format must be markdown or html, got {fmt[:40]!r}",
                             [{"loc": ["query", "format"], "msg": "markdown or html"}])
        ref = (f"{name}:{parse_version(version)}" if version.isascii() and version.isdigit()
               else f"{name}@{version}")
        text = await self.io(self._card, ref, fmt)
        media = b"text/html; charset=utf-8" if fmt == "html" else b"text/markdown; charset=utf-8"
        # the page styles itself inline and runs nothing: a browser may not load anything else
        await respond(send, 200, text.encode(), [
            (b"content-type", media),
            (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")])

    def _card(self, ref: str, fmt: CardFormat) -> str:
        return render(gather(self.registry, Monitor(self.registry), ref), fmt)

    async def registry_history(self, scope: Scope, receive: Receive, send: Send,
                               name: str) -> None:
        """``GET /api/v1/models/{name}/history[?alias=A][&at=ISO]``: every alias move, newest
        first; with ``at``, the version the alias (default production) pointed to then."""
        alias, at = query_param(scope, "alias"), query_param(scope, "at")
        if at is not None:
            when = _time(at)
            alias = alias or "production"
            version = await self.io(self.registry.alias_at, name, alias, when)
            await _ok(send, {"model": name, "alias": alias, "at": when.isoformat(),
                             "version": version})
            return
        events = await self.io(self.registry.alias_history, name, alias)
        await _ok(send, {"model": name, "events": [e.to_dict() for e in events]})

    # -- runs and audit -------------------------------------------------------------------------
    async def registry_runs(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/runs[?model=M][&limit=N]``: recent runs, newest first."""
        model = query_param(scope, "model")
        runs = await self.io(self.registry.list_runs, model, limit=query_int(scope, "limit", 50))
        shown = in_scope(scope, "read", {r.model for r in runs})
        await _ok(send, {"runs": [r.to_dict() for r in runs if r.model in shown]})

    async def registry_run(self, scope: Scope, receive: Receive, send: Send,
                           run_id: str) -> None:
        """``GET /api/v1/runs/{run_id}``: one run (a unique prefix of its id), with its logs."""
        run = await self.io(self.registry.get_run, run_id)
        if not in_scope(scope, "read", [run.model]):  # as if it did not exist
            raise NotFoundError(f"no run {run_id!r}")
        await _ok(send, run.to_dict())

    async def registry_audit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/audit[?target=T][&limit=N]``: who changed what, newest first; a scoped
        key sees its models' events only."""
        target = query_param(scope, "target")
        events = await self.io(self.registry.audit_events, target,
                               limit=query_int(scope, "limit", 50))
        shown = in_scope(scope, "read", {_model_of(e.target) for e in events})
        await _ok(send, {"events": [e.to_dict() for e in events
                                    if _model_of(e.target) in shown]})

    async def audit_verify(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/audit/verify[?head=HASH]`` (admin): walk the hash chain; the report
        says whether it is intact, how many events verify, the head, the first bad event."""
        report = await self.io(self._verify, query_param(scope, "head"))
        await _ok(send, {**dataclasses.asdict(report), "intact": report.intact})

    def _verify(self, anchor: str | None) -> ChainReport:
        with self.registry.db.session() as s:
            return verify_session(s, anchor=anchor)

    async def audit_export(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/audit/export[?after=ID][&limit=N]`` (admin): up to N events (default
        10000) with an id above ``after`` in chain order, as JSON lines with both hashes; page
        with the last id."""
        after = query_param(scope, "after")
        if after is not None and not (after.isascii() and after.isdigit() and len(after) < 19):
            raise InputError(f"after must be an event id, got {after[:40]!r}",
                             [{"loc": ["query", "after"], "msg": "not a whole number"}])
        lines = await self.io(self._export, int(after or 0), query_int(scope, "limit", 10_000))
        await respond(send, 200, lines, [(b"content-type", b"application/x-ndjson")])

    def _export(self, after_id: int, limit: int) -> bytes:
        with self.registry.db.session() as s:
            rows = chain_rows(s, after_id=after_id)
            try:
                return b"".join(orjson.dumps(export_record(row), option=orjson.OPT_SORT_KEYS)
                                + b"\n" for row in itertools.islice(rows, limit))
            finally:
                rows.close()

    # -- keys -----------------------------------------------------------------------------------
    async def auth_whoami(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/auth/whoami``: the caller's principal, key and grants (what the
        remote CLI checks before work that needs a role, such as promoting after training)."""
        identity = identity_of_scope(scope)
        expires = identity.expires_at
        await _ok(send, {"principal": identity.actor, "key": identity.key_id,
                         "grants": [{"role": g.role, "models": g.models}
                                    for g in identity.grants],
                         "expires_at": None if expires is None else expires.isoformat()})

    async def auth_keys(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /api/v1/auth/keys[?principal=P]``: every key, never a secret."""
        keys = await self.io(self.registry.keys.list_keys, query_param(scope, "principal"))
        at = datetime.now(UTC)
        await _ok(send, {"keys": [describe(k, at) for k in keys]})

    async def auth_create_key(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /api/v1/auth/keys``: a new key, its secret in ``key`` (shown this once)."""
        body = await self.body(scope, receive, _CREATE_KEY)
        expires = body["expires_s"]
        made = await self.io(self.registry.keys.create_key, body["principal"], body["role"],
                             models=body["models"], kind=body["kind"], note=body["note"],
                             expires=None if expires is None else timedelta(seconds=expires),
                             actor=actor_of(scope))
        await _new_key(send, made)

    async def auth_revoke_key(self, scope: Scope, receive: Receive, send: Send,
                              key_id: str) -> None:
        """``POST /api/v1/auth/keys/{key_id}/revoke``: end a key now."""
        await self.body(scope, receive, {})
        self._not_own_key(scope, key_id)
        key = await self.io(self.registry.keys.revoke, key_id, actor=actor_of(scope))
        await _ok(send, describe(key, datetime.now(UTC)))

    async def auth_rotate_key(self, scope: Scope, receive: Receive, send: Send,
                              key_id: str) -> None:
        """``POST /api/v1/auth/keys/{key_id}/rotate``: a new key like it; the old one works for
        ``grace_s`` more seconds."""
        body = await self.body(scope, receive, _ROTATE)
        if not 0 <= body["grace_s"] <= 90 * 86400:
            raise InputError("grace_s must be from 0 to 90 days in seconds",
                             [{"loc": ["body", "grace_s"], "msg": "out of range"}])
        made = await self.io(self.registry.keys.rotate, key_id,
                             grace=timedelta(seconds=body["grace_s"]), actor=actor_of(scope))
        await _new_key(send, made)

    @staticmethod
    def _not_own_key(scope: Scope, key_id: str) -> None:
        """An admin cannot revoke the key it is calling with (it would lock itself out)."""
        if identity_of_scope(scope).key_id == key_id:
            raise ForbiddenError("this is the key making the call: revoke it with another "
                                 "admin key, or rotate it")


def parse_version(text: str) -> int:
    """A version number from a path segment; 404 naming it when it is not one."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_VERSION:
        raise NotFoundError(f"no version {text[:20]!r}: versions are numbered 1, 2, 3, ...")
    return int(text)


def _time(text: str) -> Any:
    from modelyard.config import parse_since

    try:
        return parse_since(text)
    except Exception:
        raise InputError(f"at must be an ISO 8601 time, got {text[:40]!r}",
                         [{"loc": ["query", "at"], "msg": "not a time"}]) from None


def _model_of(target: str) -> str:
    """The model an audit target names (``fraud``, ``fraud:3``, ``fraud@production``)."""
    return target.split(":", 1)[0].split("@", 1)[0]


async def _ok(send: Send, doc: Any) -> None:
    await respond(send, 200, orjson.dumps(doc), JSON)


async def _new_key(send: Send, made: Any) -> None:
    await respond(send, 201, orjson.dumps({**describe(made.key, datetime.now(UTC)),
                                           "key": made.secret}), JSON)


ROUTES: RouteTable = [
    ("GET", "/api/v1/models/{name}", Endpoint(RegistryAPI.registry_model, action="read")),
    ("GET", "/api/v1/models/{name}/versions/{version}",
     Endpoint(RegistryAPI.registry_version, action="read")),
    ("GET", "/api/v1/models/{name}/versions/{version}/card",
     Endpoint(RegistryAPI.registry_card, action="read")),
    ("GET", "/api/v1/models/{name}/history",
     Endpoint(RegistryAPI.registry_history, action="read")),
    ("GET", "/api/v1/runs", Endpoint(RegistryAPI.registry_runs, action="read")),
    ("GET", "/api/v1/runs/{run_id}", Endpoint(RegistryAPI.registry_run, action="read")),
    ("GET", "/api/v1/audit", Endpoint(RegistryAPI.registry_audit, action="read")),
    ("GET", "/api/v1/audit/verify", Endpoint(RegistryAPI.audit_verify, action="admin")),
    ("GET", "/api/v1/audit/export", Endpoint(RegistryAPI.audit_export, action="admin")),
    ("GET", "/api/v1/auth/whoami", Endpoint(RegistryAPI.auth_whoami, action="describe")),
    ("GET", "/api/v1/auth/keys", Endpoint(RegistryAPI.auth_keys, action="admin")),
    ("POST", "/api/v1/auth/keys",
     Endpoint(RegistryAPI.auth_create_key, mutation=True, action="admin")),
    ("POST", "/api/v1/auth/keys/{key_id}/revoke",
     Endpoint(RegistryAPI.auth_revoke_key, mutation=True, action="admin")),
    ("POST", "/api/v1/auth/keys/{key_id}/rotate",
     Endpoint(RegistryAPI.auth_rotate_key, mutation=True, action="admin")),
]

__all__ = ["ROUTES", "RegistryAPI", "parse_version"]
