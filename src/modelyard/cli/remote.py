"""The CLI acting through a server: ``MODELYARD_URL`` (or ``--server``) and
``MODELYARD_API_KEY`` make the registry commands call the server's API with the caller's key
instead of opening the registry database, so engineers and CI never hold its credentials.

:class:`RemoteRegistry` answers the calls the commands make of a
:class:`~modelyard.registry.Registry` with the same records, and the server's errors come back
as the same exceptions (so the same one-line messages and exit codes): the server names each
error's class, and a refused key is :class:`~modelyard.errors.UnauthorizedError` (401) or
:class:`~modelyard.errors.ForbiddenError` (403), both exit 2. An unreachable server is a
:class:`~modelyard.errors.StorageError` (exit 10), as an unreachable database is.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
import tempfile
import types
import typing
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from modelyard import errors
from modelyard.errors import ConfigError, ModelyardError, StorageError
from modelyard.monitoring.monitor import (
    DriftCheck,
    FeedbackResult,
    LatencySummary,
    MonitorEvent,
    RequestLookup,
)
from modelyard.monitoring.quality import MetricWindow
from modelyard.registry.client import PRODUCTION, parse_reference
from modelyard.registry.keys import ApiKey, NewKey
from modelyard.registry.owners import Owner
from modelyard.registry.records import AliasEvent, AuditEvent, Model, ModelVersion, Record, Run
from modelyard.rollout.deployments import Deployment, DeploymentEvent
from modelyard.serving.monitor_api import MAX_LABELS
from modelyard.serving.training_api import RECORD, TAR
from modelyard.store import cached_artifact, digest_dir, verify_file

R = TypeVar("R", bound=Record)
URL_ENV = "MODELYARD_URL"
KEY_ENV = "MODELYARD_API_KEY"
#: what a status means when the server's body does not name a modelyard error.
_BY_STATUS: Mapping[int, type[ModelyardError]] = {
    400: errors.ConfigError, 401: errors.UnauthorizedError, 403: errors.ForbiddenError,
    404: errors.NotFoundError, 409: errors.ConflictError, 413: errors.InputError,
    415: errors.InputError, 422: errors.InputError, 429: errors.TooManyAttemptsError,
    503: errors.UnavailableError, 504: errors.RequestTimeoutError}


class Remote:
    """One server's API with one key: JSON in, JSON out, errors as modelyard's."""

    def __init__(self, url: str, key: str | None, *, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{URL_ENV} {url[:100]!r} is not an http(s) URL, e.g. "
                              "https://models.example.com")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s,
                                 transport=transport)

    def get(self, path: str, **params: Any) -> Any:
        """``GET path`` with the query ``params`` (None values left out)."""
        query = {k: v for k, v in params.items() if v is not None}
        return self._call("GET", path, params=query)

    def text(self, path: str, **params: Any) -> str:
        """``GET path`` whose answer is text (JSON lines)."""
        query = {k: v for k, v in params.items() if v is not None}
        return str(self._call("GET", path, params=query, text=True))

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """``POST path`` with a JSON body."""
        return self._call("POST", path, json=dict(body or {}))

    def upload(self, path: str, file: Path, media: str) -> Any:
        """``POST path`` with the file at ``file`` as the body (streamed), answered in JSON."""
        with open(file, "rb") as body:
            return self._call("POST", path, content=body, headers={"content-type": media},
                              timeout=httpx.Timeout(self.http.timeout.read, read=None))

    def download(self, path: str, dest: Path) -> Path:
        """``GET path`` into the file ``dest`` (streamed)."""
        try:
            with self.http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_of(response)
                with open(dest, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return dest

    def _call(self, method: str, path: str, *, text: bool = False, **kw: Any) -> Any:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise error_of(response)
        return response.text if text else response.json()

    def _unreachable(self, exc: httpx.HTTPError) -> StorageError:
        return StorageError(f"cannot reach the modelyard server at {self.url}: {exc}; "
                            f"check {URL_ENV}")

    def close(self) -> None:
        self.http.close()


def error_of(response: httpx.Response) -> ModelyardError:
    """The modelyard error a server's error answer stands for (its class when it names one)."""
    try:
        doc = response.json()
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    message = str(doc.get("message") or doc.get("error") or response.reason_phrase)
    named = getattr(errors, str(doc.get("error", "")), None)
    cls = named if isinstance(named, type) and issubclass(named, ModelyardError) else None
    cls = cls or _BY_STATUS.get(response.status_code, ModelyardError)
    try:
        return cls(message)
    except TypeError:  # an error class that needs more than a message
        return _BY_STATUS.get(response.status_code, ModelyardError)(message)


def record(cls: type[R], data: Mapping[str, Any]) -> R:
    """A registry record back from its ``to_dict`` form (times parsed, lists as tuples)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if isinstance(value, str) and _is(hint, datetime):
            value = datetime.fromisoformat(value)
        elif isinstance(value, list) and _is(hint, tuple):
            value = tuple(value)
        values[f.name] = value
    return cls(**_defaults(cls, values))


def _is(hint: Any, kind: type) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is(h, kind) for h in typing.get_args(hint))
    return hint is kind or typing.get_origin(hint) is kind


def _defaults(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Fields a short form leaves out (a version listed without its signature) as empty."""
    for f in dataclasses.fields(cls):
        if f.name not in values and f.default is dataclasses.MISSING and \
                f.default_factory is dataclasses.MISSING:
            values[f.name] = {} if f.name in ("meta", "signature", "environment") else None
    return values


def _p(name: str) -> str:
    return quote(name, safe="")


class RemoteKeys:
    """:class:`~modelyard.registry.keys.KeyStore`'s calls, through the server (admin key)."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def create_key(self, principal: str, role: str, *, models: str = "*", kind: str = "user",
                   expires: timedelta | None = None, note: str = "",
                   actor: str | None = None) -> NewKey:
        doc = self.remote.post("/api/v1/auth/keys", {
            "principal": principal, "role": role, "models": models, "kind": kind, "note": note,
            "expires_s": None if expires is None else expires.total_seconds()})
        return _new_key(doc)

    def list_keys(self, principal: str | None = None) -> list[ApiKey]:
        doc = self.remote.get("/api/v1/auth/keys", principal=principal)
        return [record(ApiKey, k) for k in doc["keys"]]

    def revoke(self, key_id: str, *, actor: str | None = None) -> ApiKey:
        return record(ApiKey, self.remote.post(f"/api/v1/auth/keys/{_p(key_id)}/revoke"))

    def rotate(self, key_id: str, *, grace: timedelta = timedelta(hours=1),
               actor: str | None = None) -> NewKey:
        doc = self.remote.post(f"/api/v1/auth/keys/{_p(key_id)}/rotate",
                               {"grace_s": grace.total_seconds()})
        return _new_key(doc)


def _new_key(doc: Mapping[str, Any]) -> NewKey:
    return NewKey(record(ApiKey, doc), str(doc["key"]))


class RemoteDeployments:
    """The rollout calls ``deploy`` and ``rollout`` make of
    :class:`~modelyard.rollout.deployments.Deployments`, through the server."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self._described: dict[int, dict[str, Any]] = {}

    def _deployment(self, doc: dict[str, Any]) -> Deployment:
        found = record(Deployment, doc)
        self._described[found.id] = doc
        return found

    def start_declared(self, model: str, version: int, *, strategy: str | None = None,
                       steps: list[int] | None = None, every_s: float | None = None,
                       rules: dict[str, Any] | None = None, key: str | None = None,
                       actor: str | None = None, reason: str = "") -> Deployment:
        return self._deployment(self.remote.post(
            f"/api/v1/models/{_p(model)}/deployments",
            {"version": version, "strategy": strategy, "steps": steps, "every_s": every_s,
             "rules": rules or None, "key": key, "reason": reason}))

    def get(self, model: str) -> Deployment:
        return self._deployment(self.remote.get(f"/api/v1/models/{_p(model)}/deployment"))

    def describe(self, d: Deployment) -> dict[str, Any]:
        """What the server said of ``d`` when it was read (status, traffic, analysis)."""
        return self._described.get(d.id) or self.remote.get(
            f"/api/v1/models/{_p(d.model)}/deployment")

    def history(self, model: str, *, limit: int = 200) -> list[DeploymentEvent]:
        doc = self.remote.get(f"/api/v1/models/{_p(model)}/deployment/history")
        return [record(DeploymentEvent, e) for e in doc["events"][:limit]]

    def _steer(self, action: str, model: str, reason: str) -> Deployment:
        return self._deployment(self.remote.post(
            f"/api/v1/models/{_p(model)}/deployment/{action}", {"reason": reason}))

    def promote(self, model: str, *, actor: str | None = None, reason: str = "") -> Deployment:
        return self._steer("promote", model, reason)

    def abort(self, model: str, *, actor: str | None = None, reason: str = "") -> Deployment:
        return self._steer("abort", model, reason)

    def pause(self, model: str, *, actor: str | None = None, reason: str = "") -> Deployment:
        return self._steer("pause", model, reason)

    def resume(self, model: str, *, actor: str | None = None, reason: str = "") -> Deployment:
        return self._steer("resume", model, reason)

    def rollback(self, model: str, *, actor: str | None = None, reason: str = "") -> Deployment:
        return self._steer("rollback", model, reason)


class RemoteMonitor:
    """The monitoring calls ``monitor`` and ``feedback`` make of
    :class:`~modelyard.monitoring.monitor.Monitor`, through the server."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self._last: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def feedback(self, model: str, labels: list[tuple[str, Any]], *,
                 actor: str | None = None) -> FeedbackResult:
        """Labels in calls of at most the server's limit each, the answers added up."""
        results = [self.remote.post(f"/v1/models/{_p(model)}/feedback", {"labels": [
            {"request_id": r, "label": v} for r, v in labels[i:i + MAX_LABELS]]})
            for i in range(0, len(labels), MAX_LABELS)]
        first = results[0]
        return FeedbackResult(
            model=model, stored=sum(r["stored"] for r in results),
            matched=_total(r.get("matched") for r in results),
            unmatched=[u for r in results for u in r.get("unmatched", [])][:20],
            pending=_total(r.get("pending") for r in results),
            message=str(first.get("message", "")))

    def _metrics(self, model: str, since: datetime | None,
                 every: timedelta | None) -> dict[str, Any]:
        key = (model, since, every)
        if self._last is None or self._last[0] != key:  # metrics and latency: one call
            self._last = (key, self.remote.get(
                f"/api/v1/models/{_p(model)}/metrics", since=_iso(since),
                every=None if every is None else f"{every.total_seconds():g}s"))
        return self._last[1]

    def metrics(self, model: str, *, since: datetime | None = None,
                every: timedelta | None = None) -> list[MetricWindow]:
        doc = self._metrics(model, since, every)
        return [record(MetricWindow, w) for w in doc["windows"]]

    def latency(self, model: str, *, since: datetime | None = None) -> LatencySummary:
        every = self._last[0][2] if self._last and self._last[0][:2] == (model, since) else None
        return record(LatencySummary, self._metrics(model, since, every)["latency"])

    def drift_reports(self, model: str, *, limit: int = 20) -> list[DriftCheck]:
        doc = self.remote.get(f"/api/v1/models/{_p(model)}/drift", limit=limit)
        return [record(DriftCheck, c) for c in doc["checks"]]

    def check_drift(self, model: str, *, version: int | None = None,
                    since: datetime | None = None, actor: str | None = None) -> DriftCheck:
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in
                         (("since", _iso(since)), ("version", version)) if v is not None)
        path = f"/api/v1/models/{_p(model)}/drift" + (f"?{query}" if query else "")
        return record(DriftCheck, self.remote.post(path))

    def events(self, model: str | None = None, *, kind: str | None = None,
               since: datetime | None = None, limit: int = 100) -> list[MonitorEvent]:
        doc = self.remote.get("/api/v1/events", model=model, kind=kind, since=_iso(since),
                              limit=limit)
        return [record(MonitorEvent, e) for e in doc["events"]]

    def lookup(self, model: str, request_id: str) -> RequestLookup:
        return record(RequestLookup, self.remote.get(
            f"/api/v1/models/{_p(model)}/predictions/{_p(request_id)}"))

    def lookup_everywhere(self, request_id: str) -> list[RequestLookup]:
        doc = self.remote.get(f"/api/v1/predictions/{_p(request_id)}")
        return [record(RequestLookup, f) for f in doc["lookups"]]


def _total(values: Any) -> int | None:
    found = [v for v in values if v is not None]
    return sum(found) if found else None


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


class RemoteRegistry:
    """The registry calls the CLI makes, answered by a server's API (see the module doc).
    ``actor`` arguments are ignored: the server records the key's principal."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.keys = RemoteKeys(remote)
        self.deployments = RemoteDeployments(remote)
        self.monitor = RemoteMonitor(remote)
        self._cache: Path | None = None

    def whoami(self) -> dict[str, Any]:
        """The key's principal and grants, as the server sees them."""
        return dict(self.remote.get("/api/v1/auth/whoami"))

    def check_store(self) -> None:
        """Ask the server once, before work that needs it: it answers and takes the key."""
        self.whoami()

    # -- models and versions --------------------------------------------------------------------
    def list_models(self) -> list[Model]:
        return [record(Model, m) for m in self.remote.get("/api/v1/models")["models"]]

    def get_model(self, name: str) -> Model:
        return record(Model, self.remote.get(f"/api/v1/models/{_p(name)}"))

    def list_versions(self, name: str) -> list[ModelVersion]:
        doc = self.remote.get(f"/api/v1/models/{_p(name)}/versions")
        return [record(ModelVersion, v) for v in doc["versions"]]

    def get_version(self, name: str, version: int) -> ModelVersion:
        return record(ModelVersion,
                      self.remote.get(f"/api/v1/models/{_p(name)}/versions/{version}"))

    def resolve(self, ref: str) -> ModelVersion:
        """``name``, ``name:3``, ``name@alias`` or ``name@1.4.0`` to a version, as the registry
        resolves it."""
        name, number, alias, label = parse_reference(ref)
        which = str(number) if number is not None else _p(label or alias or PRODUCTION)
        return record(ModelVersion, self.remote.get(f"/api/v1/models/{_p(name)}/versions/{which}"))

    def card(self, ref: str, fmt: str) -> str:
        """Version ``ref``'s model card as the server generates it (``markdown`` or ``html``)."""
        name, number, alias, label = parse_reference(ref)
        which = str(number) if number is not None else _p(label or alias or PRODUCTION)
        return self.remote.text(f"/api/v1/models/{_p(name)}/versions/{which}/card", format=fmt)

    # -- aliases --------------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int, *, actor: str | None = None,
                  reason: str = "") -> AliasEvent:
        doc = self.remote.post(f"/api/v1/models/{_p(name)}/promote",
                               {"version": version, "alias": alias, "reason": reason})
        return record(AliasEvent, doc["event"])

    def rollback_or_end(self, name: str, *, alias: str = PRODUCTION, to: int | None = None,
                        reason: str = "") -> tuple[AliasEvent | None, dict[str, Any] | None]:
        """Roll ``alias`` back, the server first ending an active rollout of production (as
        ``modelyard rollback`` does locally): ``(alias event or None, ended rollout or None)``."""
        doc = self.remote.post(f"/api/v1/models/{_p(name)}/rollback",
                               {"to": to, "alias": alias, "reason": reason})
        event = doc.get("event")
        return (record(AliasEvent, event) if event else None), doc.get("deployment")

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        doc = self.remote.get(f"/api/v1/models/{_p(name)}/history", alias=alias)
        return [record(AliasEvent, e) for e in doc["events"]]

    def alias_at(self, name: str, alias: str, when: datetime) -> int | None:
        doc = self.remote.get(f"/api/v1/models/{_p(name)}/history", alias=alias,
                              at=when.isoformat())
        return None if doc["version"] is None else int(doc["version"])

    # -- predictions ----------------------------------------------------------------------------
    def predict(self, ref: str, payload: Any, *, scores: bool = False) -> dict[str, Any]:
        """The server's answer for ``payload`` (the CLI's JSON input: records, columns, rows, a
        tensor or strings) from the version ``ref`` names."""
        name, number, _, _ = parse_reference(ref)
        if number is None:
            number = self.resolve(ref).version
        if isinstance(payload, dict):
            body: dict[str, Any] = {"columns": payload}
        elif isinstance(payload, list) and payload and all(isinstance(r, dict) for r in payload):
            body = {"records": payload}
        else:
            body = {"instances": payload}
        return dict(self.remote.post(f"/v1/models/{_p(name)}/versions/{number}/predict",
                                     {**body, "scores": scores}))

    # -- training -------------------------------------------------------------------------------
    def register(self, name: str, artifact_dir: Path, *, flavor: str,
                 meta: dict[str, Any] | None = None, signature: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                 data_fingerprint: str | None = None, code_ref: dict[str, Any] | None = None,
                 environment: dict[str, Any] | None = None,
                 reference_stats: dict[str, Any] | None = None, run_id: str | None = None,
                 description: str = "", actor: str | None = None, semver: str | None = None,
                 data_sources: list[dict[str, Any]] | None = None) -> ModelVersion:
        """Upload the artifact folder with its record; the server registers it (as
        :meth:`Registry.register <modelyard.registry.Registry.register>` does) for the key's
        principal."""
        manifest = {"flavor": flavor, "digest": digest_dir(Path(artifact_dir)), "meta": meta,
                    "signature": signature, "metrics": metrics, "params": params,
                    "data_fingerprint": data_fingerprint, "code_ref": code_ref,
                    "environment": environment, "reference_stats": reference_stats,
                    "run_id": run_id, "description": description, "semver": semver,
                    "data_sources": data_sources or None}
        manifest = {k: v for k, v in manifest.items() if v is not None}
        with tempfile.TemporaryDirectory(prefix="modelyard-upload-") as tmp:
            upload = Path(tmp) / "upload.tar"
            with tarfile.open(upload, "w", dereference=True) as tar:
                info = tarfile.TarInfo(RECORD)
                data = json.dumps(manifest, default=str).encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                tar.add(artifact_dir, arcname="artifact")
            doc = self.remote.upload(f"/api/v1/models/{_p(name)}/versions", upload,
                                     TAR.decode())
        return record(ModelVersion, doc)

    def artifact_path(self, version: ModelVersion) -> Path:
        """A local copy of ``version``'s artifact, downloaded from the server and verified
        against its digest; kept (in a temporary folder) until :meth:`close`."""
        if self._cache is None:
            self._cache = Path(tempfile.mkdtemp(prefix="modelyard-remote-cache-"))

        def fetch(dest: Path) -> Path:
            self.remote.download(f"/api/v1/models/{_p(version.model)}/versions/"
                                 f"{version.version}/artifact", dest)
            verify_file(dest, version.artifact_digest)
            return dest

        return cached_artifact(self._cache, version.artifact_digest, version.ref, fetch)

    def start_run(self, model: str, *, trigger: str = "manual", actor: str | None = None,
                  owner: Owner | None = None, kind: str = "train",
                  details: dict[str, Any] | None = None) -> Run:
        owner = owner or Owner.current()
        return record(Run, self.remote.post(f"/api/v1/models/{_p(model)}/runs", {
            "trigger": trigger, "kind": kind, "details": details, "host": owner.host,
            "pid": owner.pid}))

    def beat_run(self, run_id: str, *, logs: str | None = None) -> bool:
        body = {} if logs is None else {"logs": logs[-200_000:]}
        return bool(self.remote.post(f"/api/v1/runs/{_p(run_id)}/beat", body)["running"])

    def request_cancel(self, run_id: str, *, actor: str | None = None) -> Run:
        """Ask the process running ``run_id`` to stop it (``modelyard runs cancel``)."""
        return record(Run, self.remote.post(f"/api/v1/runs/{_p(run_id)}/cancel"))

    def finish_run(self, run_id: str, *, status: str, version: int | None = None,
                   promoted: bool = False, metrics: dict[str, Any] | None = None,
                   gate: dict[str, Any] | None = None, logs: str = "",
                   failure_reason: str | None = None,
                   details: dict[str, Any] | None = None) -> Run:
        """Record how the run ended; the server judges ``promoted`` from the alias itself."""
        body = json.loads(json.dumps({
            "status": status, "version": version, "metrics": metrics, "gate": gate,
            "logs": logs[-200_000:], "failure_reason": failure_reason, "details": details},
            default=str))
        return record(Run, self.remote.post(f"/api/v1/runs/{_p(run_id)}/finish", body))

    # -- runs and audit -------------------------------------------------------------------------
    def list_runs(self, model: str | None = None, *, limit: int = 50) -> list[Run]:
        doc = self.remote.get("/api/v1/runs", model=model, limit=limit)
        return [record(Run, r) for r in doc["runs"]]

    def get_run(self, run_id: str) -> Run:
        return record(Run, self.remote.get(f"/api/v1/runs/{_p(run_id)}"))

    def audit_events(self, target: str | None = None, *, limit: int = 100) -> list[AuditEvent]:
        doc = self.remote.get("/api/v1/audit", target=target, limit=limit)
        return [record(AuditEvent, e) for e in doc["events"]]

    def close(self) -> None:
        self.remote.close()
        if self._cache is not None:
            shutil.rmtree(self._cache, ignore_errors=True)


__all__ = ["KEY_ENV", "URL_ENV", "Remote", "RemoteKeys", "RemoteRegistry", "error_of", "record"]
