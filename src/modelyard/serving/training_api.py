"""Training through a server: what ``modelyard train --server URL`` calls with a trainer's key,
so the machine that trains never holds the registry's database or store credentials.

=======================================================  =======================================
route                                                    what it does
=======================================================  =======================================
``POST /api/v1/models/{name}/runs``                      record a run started by the caller
``POST /api/v1/runs/{run_id}/beat``                      the caller's run is still at work
``POST /api/v1/runs/{run_id}/finish``                    how the caller's run ended
``POST /api/v1/runs/{run_id}/cancel``                    ask a run's process to stop it
``POST /api/v1/models/{name}/versions``                  register a version: its artifact and
                                                         record in one ``application/x-tar`` body
``GET /api/v1/models/{name}/versions/{version}/artifact``  a version's artifact (the champion the
                                                         gate scores against), as stored
=======================================================  =======================================

All need the ``train`` action (trainer, admin) on the model. A run belongs to the principal
that started it: only it (or an admin) beats, finishes or registers into it. Moving
``production`` is not training: the pipeline's promotion calls the deployer's route, so a key
that only trains registers candidates and leaves traffic alone (``trainer,deployer`` keys do
both; see docs/security.md).

The upload is a tar holding ``version.json`` (the record: flavor, metrics, signature, lineage,
reference statistics, the artifact's digest) and ``artifact/`` (the folder the adapter saved).
It is streamed to disk under ``--max-upload``, its members checked before anything is written
(plain files and folders only, unpacking to no more than ``--max-upload``), unpacked with
tar's ``data`` filter (nothing outside the folder), the artifact re-digested and compared with the
digest the client computed before sending, and then registered exactly as a local run
registers (the flavor's loader checks it first; nothing unsafe is ever stored). The actor of
every audit event is the caller's principal.
"""

from __future__ import annotations

import asyncio
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import orjson

from modelyard.errors import (
    BodyTooLargeError,
    ConflictError,
    ForbiddenError,
    InputError,
    IntegrityError,
    NotFoundError,
)
from modelyard.registry.owners import Owner
from modelyard.registry.records import ModelVersion, Run
from modelyard.registry.rows import check_name
from modelyard.serving.access import actor_of, identity_of_scope, in_scope
from modelyard.serving.admin import CatalogAPI, Fields, parse_fields
from modelyard.serving.http import (
    JSON,
    Endpoint,
    Receive,
    RouteTable,
    Scope,
    Send,
    read_body_to_file,
    respond,
    send_file,
)
from modelyard.serving.registry_api import parse_version
from modelyard.store import digest_dir, unpack

#: the media type of a version upload and of an artifact download.
TAR = b"application/x-tar"
#: the name of the record inside an upload, beside the ``artifact/`` folder.
RECORD = "version.json"
#: how a run may end (``running`` is how it starts).
ENDINGS = ("succeeded", "failed", "rejected", "unchanged")
#: what ``host`` a run started through the API records: never this machine's name, so its
#: liveness is judged by its heartbeat alone (a pid means nothing on the server's host).
REMOTE_HOST = "remote:"
_MAX_RECORD = 64 * 1024 * 1024
#: the most files and folders one upload may hold.
_MAX_MEMBERS = 100_000
_OPT_STR: tuple[type, ...] = (str, type(None))
_OPT_DICT: tuple[type, ...] = (dict, type(None))

_START: Fields = {"trigger": ((str,), False, "manual"), "kind": ((str,), False, "train"),
                  "details": (_OPT_DICT, False, None), "host": ((str,), False, "unknown"),
                  "pid": ((int,), False, 0)}
_BEAT: Fields = {"logs": (_OPT_STR, False, None)}
_FINISH: Fields = {"status": ((str,), True, None), "version": ((int, type(None)), False, None),
                   "metrics": (_OPT_DICT, False, None), "gate": (_OPT_DICT, False, None),
                   "logs": ((str,), False, ""), "failure_reason": (_OPT_STR, False, None),
                   "details": (_OPT_DICT, False, None)}
_RECORD: Fields = {"digest": ((str,), True, None), "flavor": ((str,), True, None),
                   "meta": ((dict,), False, None), "signature": ((dict,), False, None),
                   "metrics": ((dict,), False, None), "params": ((dict,), False, None),
                   "data_fingerprint": (_OPT_STR, False, None),
                   "code_ref": ((dict,), False, None), "environment": ((dict,), False, None),
                   "reference_stats": (_OPT_DICT, False, None),
                   "run_id": (_OPT_STR, False, None), "description": ((str,), False, ""),
                   "semver": (_OPT_STR, False, None),
                   "data_sources": ((list, type(None)), False, None)}


class TrainingAPI(CatalogAPI):
    """Runs and version uploads for a trainer's key (see the module docstring)."""

    # -- runs -----------------------------------------------------------------------------------
    async def start_run(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        """``POST /api/v1/models/{name}/runs``: a run of ``name``, started by the caller."""
        body = await self.body(scope, receive, _START)
        if body["kind"] not in ("train", "batch"):
            raise _invalid("kind", "must be train or batch")
        owner = Owner(f"{REMOTE_HOST}{body['host']}"[:255], max(0, body["pid"]))
        run = await self.io(self.registry.start_run, name, trigger=body["trigger"][:100],
                            actor=actor_of(scope), owner=owner, kind=body["kind"],
                            details=body["details"])
        await respond(send, 201, orjson.dumps(run.to_dict()), JSON)

    async def beat_run(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        """``POST /api/v1/runs/{run_id}/beat``: ``{"running": false}`` once the run has ended;
        ``logs``, the run's log so far (``runs show`` shows a live run's progress)."""
        body = await self.body(scope, receive, _BEAT)
        run = await self._own_run(scope, run_id)
        running = await self.io(self.registry.beat_run, run.id, logs=body["logs"])
        await respond(send, 200, orjson.dumps({"running": running}), JSON)

    async def finish_run(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        """``POST /api/v1/runs/{run_id}/finish``: record how the caller's run ended.

        ``promoted`` is not taken from the client: it is whether ``production`` points at the
        run's version when the run finishes (the deployer's route moved it, or not)."""
        body = await self.body(scope, receive, _FINISH)
        if body["status"] not in ENDINGS:
            raise _invalid("status", f"must be one of {', '.join(ENDINGS)}")
        run = await self._own_run(scope, run_id)
        if run.status != "running":
            raise ConflictError(f"run {run.id} already ended: {run.status}")
        version = body["version"]
        promoted = version is not None and await self.io(self._is_production, run.model,
                                                         version)
        finished = await self.io(
            self.registry.finish_run, run.id, status=body["status"], version=version,
            promoted=promoted, metrics=body["metrics"], gate=body["gate"], logs=body["logs"],
            failure_reason=body["failure_reason"], details=body["details"])
        await respond(send, 200, orjson.dumps(finished.to_dict()), JSON)

    async def cancel_run(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        """``POST /api/v1/runs/{run_id}/cancel``: ask the process running a run of a model the
        caller may train to stop it (409 when it is not running)."""
        await self.body(scope, receive, {})
        run: Run = await self.io(self.registry.get_run, run_id)
        if not in_scope(scope, "train", [run.model]):
            raise NotFoundError(f"no run {run_id!r}")
        asked = await self.io(self.registry.request_cancel, run.id, actor=actor_of(scope))
        await respond(send, 200, orjson.dumps(asked.to_dict()), JSON)

    def _is_production(self, name: str, version: int) -> bool:
        return bool(self.registry.get_model(name).aliases.get("production") == version)

    async def _own_run(self, scope: Scope, run_id: str) -> Run:
        """The run ``run_id`` when the caller may train its model and started it (or is an
        admin); a run outside the caller's scope is answered as if it did not exist."""
        run: Run = await self.io(self.registry.get_run, run_id)
        if not in_scope(scope, "train", [run.model]):
            raise NotFoundError(f"no run {run_id!r}")
        identity = identity_of_scope(scope)
        admin = any(g.role == "admin" for g in identity.grants)
        if run.created_by != identity.actor and not admin:
            raise ForbiddenError(f"run {run.id[:8]} was started by {run.created_by}: only its "
                                 "owner (or an admin) may report on it")
        return run

    # -- versions -------------------------------------------------------------------------------
    async def register_version(self, scope: Scope, receive: Receive, send: Send,
                               name: str) -> None:
        """``POST /api/v1/models/{name}/versions``: register an uploaded artifact and record."""
        check_name(name)
        limit = self.catalog.options.max_upload_bytes
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory(prefix="modelyard-upload-") as tmp:
            upload = Path(tmp) / "upload.tar"
            await read_body_to_file(scope, receive, upload, limit)
            content, record = await loop.run_in_executor(None, _open_upload, upload,
                                                          Path(tmp) / "content", limit)
            if record["run_id"] is not None:
                run = await self._own_run(scope, record["run_id"])
                if run.model != name or run.status != "running":
                    raise ConflictError(f"run {run.id[:8]} is a {run.status} run of "
                                        f"{run.model}: register into a running run of {name}")
            # the default pool, not the registry thread: packing a large artifact takes a while
            version: ModelVersion = await loop.run_in_executor(
                None, self._register, name, content, record, actor_of(scope))
        await respond(send, 201, orjson.dumps(version.to_dict()), JSON)

    def _register(self, name: str, content: Path, record: dict[str, Any],
                  actor: str) -> ModelVersion:
        fields = {k: v for k, v in record.items() if k not in ("digest", "flavor")}
        version: ModelVersion = self.registry.register(
            name, content / "artifact", flavor=record["flavor"], actor=actor, **fields)
        return version

    async def artifact(self, scope: Scope, receive: Receive, send: Send, name: str,
                       version: str) -> None:
        """``GET /api/v1/models/{name}/versions/{version}/artifact``: the packed artifact as
        stored (decrypted), verified against its digest (``X-Artifact-Digest``)."""
        found: ModelVersion = await self.io(self.registry.get_version, name,
                                            parse_version(version))
        digest = found.artifact_digest
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory(prefix="modelyard-download-") as tmp:
            path = await loop.run_in_executor(None, self.registry.store.get_file, digest,
                                              Path(tmp) / "artifact.tar")
            await send_file(send, path, [(b"content-type", TAR),
                                         (b"x-artifact-digest", digest.encode())])

def _open_upload(upload: Path, dest: Path, limit: int) -> tuple[Path, dict[str, Any]]:
    """The unpacked upload and its record, checked: a safe tar of ``version.json`` and
    ``artifact/`` only, of plain files and folders that unpack to at most ``limit`` bytes,
    whose artifact has the digest the record names."""
    _check_members(upload, limit)
    try:
        content = unpack(upload, dest)
    except IntegrityError as exc:
        raise _invalid("body", f"the upload is not a safe tar of {RECORD} and artifact/: "
                               f"{exc}") from None
    upload.unlink()
    names = {p.name for p in content.iterdir()}
    if names != {RECORD, "artifact"} or not (content / "artifact").is_dir() \
            or not (content / RECORD).is_file():
        raise _invalid("body", f"the upload must hold exactly {RECORD} and the folder "
                               f"artifact/; it holds {', '.join(sorted(names)) or 'nothing'}")
    if (content / RECORD).stat().st_size > _MAX_RECORD:
        raise _invalid(RECORD, f"over {_MAX_RECORD >> 20} MiB")
    record = parse_fields((content / RECORD).read_bytes(), _RECORD)
    actual = digest_dir(content / "artifact")
    if actual != record["digest"]:
        raise _invalid("digest", f"the artifact's digest is {actual[:12]}, the upload says "
                                 f"{str(record['digest'])[:12]}: it changed on the way; "
                                 "send it again")
    return content, record


def _check_members(upload: Path, limit: int) -> None:
    """Refuse, before anything is written, an upload with links or special files (the client
    sends the files links point to) or one that would unpack to more than ``limit`` bytes or
    :data:`_MAX_MEMBERS` entries (sparse members claim sizes their bytes do not hold)."""
    total = 0
    try:
        with tarfile.open(upload, "r:") as tar:
            for count, member in enumerate(tar, start=1):
                if not (member.isreg() or member.isdir()):
                    raise _invalid("body", f"{member.name[:200]!r} is a link or a special "
                                           "file; send plain files and folders only")
                total += member.size
                if total > limit or count > _MAX_MEMBERS:
                    raise BodyTooLargeError(f"the upload unpacks to more than {limit} bytes "
                                            f"or {_MAX_MEMBERS} entries")
    except tarfile.TarError as exc:
        raise _invalid("body", f"the upload is not a tar: {exc}") from None


def _invalid(field: str, message: str) -> InputError:
    return InputError(f"{field}: {message}", [{"loc": ["body", field], "msg": message}])


ROUTES: RouteTable = [
    ("POST", "/api/v1/models/{name}/runs",
     Endpoint(TrainingAPI.start_run, mutation=True, action="train")),
    ("POST", "/api/v1/runs/{run_id}/beat",
     Endpoint(TrainingAPI.beat_run, mutation=True, action="train")),
    ("POST", "/api/v1/runs/{run_id}/finish",
     Endpoint(TrainingAPI.finish_run, mutation=True, action="train")),
    ("POST", "/api/v1/runs/{run_id}/cancel",
     Endpoint(TrainingAPI.cancel_run, mutation=True, action="train")),
    ("POST", "/api/v1/models/{name}/versions",
     Endpoint(TrainingAPI.register_version, mutation=True, action="train", media=TAR)),
    ("GET", "/api/v1/models/{name}/versions/{version}/artifact",
     Endpoint(TrainingAPI.artifact, action="train")),
]

__all__ = ["ENDINGS", "RECORD", "REMOTE_HOST", "ROUTES", "TAR", "TrainingAPI"]
