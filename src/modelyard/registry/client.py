"""The registry client: models, immutable versions, aliases with history, runs and audit.

Every change is one database transaction that also writes its audit event, so the registry is
never left half-changed. Version numbers are handed out under a lock on the model's row, so
concurrent registrations from several processes get distinct numbers on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from modelyard.config import Settings
from modelyard.errors import ConfigError, ConflictError, IntegrityError, NotFoundError
from modelyard.registry.database import Database
from modelyard.registry.records import AliasEvent, AuditEvent, Model, ModelVersion, Run
from modelyard.registry.tables import (
    AliasEventRow,
    AliasRow,
    AuditRow,
    ModelRow,
    RunRow,
    VersionRow,
)
from modelyard.store import open_store, pack_dir, unpack
from modelyard.types import ArtifactStore

# Hot-path statements are built once with bound parameters: building them per call (literal
# values) costs more CPU in SQLAlchemy's cache-key generation than the query itself.
_MODELS: Table = ModelRow.__table__  # type: ignore[assignment]
_VERSIONS: Table = VersionRow.__table__  # type: ignore[assignment]
_AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]
_VERSION_COLUMNS = [c for c in _VERSIONS.columns if c.key != "id"]
_INSERT_VERSION = insert(_VERSIONS)
_INSERT_AUDIT = insert(_AUDIT)
# No RETURNING: SQLite before 3.35 (still shipped by some distributions) lacks it.
_BUMP_VERSION = (
    update(_MODELS)
    .where(_MODELS.c.name == bindparam("model_name"))
    .values(latest_version=_MODELS.c.latest_version + 1)
)
_MODEL_NUMBER = select(_MODELS.c.id, _MODELS.c.latest_version).where(
    _MODELS.c.name == bindparam("model_name")
)
_VERSION_BY_NUMBER = (
    select(VersionRow)
    .join(ModelRow, VersionRow.model_id == ModelRow.id)
    .where(ModelRow.name == bindparam("name"), VersionRow.version == bindparam("version"))
)
_VERSION_BY_ALIAS = (
    select(VersionRow)
    .join(ModelRow, VersionRow.model_id == ModelRow.id)
    .join(AliasRow, (AliasRow.model_id == ModelRow.id) & (AliasRow.version == VersionRow.version))
    .where(ModelRow.name == bindparam("name"), AliasRow.alias == bindparam("alias"))
)
_ALIASES_OF_MODEL = select(AliasRow.alias, AliasRow.version).where(
    AliasRow.model_id == bindparam("model_id")
)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,99}$")
PRODUCTION = "production"


def now() -> datetime:
    """The current time, timezone-aware UTC (what the registry stores)."""
    return datetime.now(UTC)


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Split ``name``, ``name:3`` or ``name@alias`` into ``(name, version, alias)``.

    A bare name means its ``production`` alias.
    """
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return _check_name(name), None, _check_alias(alias)
    if ":" in ref:
        name, _, number = ref.rpartition(":")
        if not number.isdigit():
            raise ConfigError(f"version in {ref!r} must be a number, as in {name}:3")
        return _check_name(name), int(number), None
    return _check_name(ref), None, PRODUCTION


class Registry:
    """Models, versions, aliases, runs and audit events in one database plus an artifact store.

    Open the embedded default (or what ``MODELYARD_*`` points at) with :meth:`Registry.open`;
    pass ``db`` and ``store`` in to use others.
    """

    def __init__(self, db: Database, store: ArtifactStore, settings: Settings) -> None:
        self.db = db
        self.store = store
        self.settings = settings

    @classmethod
    def open(cls, settings: Settings | None = None, **overrides: Any) -> Registry:
        """Open (and migrate) the registry named by ``settings`` or the environment."""
        settings = settings or Settings.from_env(**overrides)
        db = Database(settings.db_url)
        db.migrate()
        return cls(db, open_store(settings.artifacts), settings)

    def close(self) -> None:
        """Release database connections."""
        self.db.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- models ---------------------------------------------------------------------------------
    def list_models(self) -> list[Model]:
        """Every model, with its newest version number and current aliases."""
        with self.db.session() as s:
            rows = s.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            aliases = _aliases_by_model(s)
            return [_model(r, aliases.get(r.id, {})) for r in rows]

    def get_model(self, name: str) -> Model:
        """One model by name; :class:`NotFoundError` if there is none."""
        with self.db.session() as s:
            row = _model_row(s, name)
            return _model(row, _aliases_by_model(s, row.id).get(row.id, {}))

    # -- versions -------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        artifact_dir: Path,
        *,
        flavor: str,
        meta: dict[str, Any] | None = None,
        signature: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        data_fingerprint: str | None = None,
        code_ref: dict[str, Any] | None = None,
        environment: dict[str, Any] | None = None,
        reference_stats: dict[str, Any] | None = None,
        run_id: str | None = None,
        description: str = "",
        actor: str | None = None,
    ) -> ModelVersion:
        """Store the artifact folder and record a new immutable version of ``name``.

        The artifact is written (atomically) before the version row exists, so a version never
        points at a missing or partial artifact. The model is created on its first version.
        """
        _check_name(name)
        actor = actor or self.settings.actor
        digest, size = self._store_artifact(Path(artifact_dir))
        with self.db.session(write=True) as s:
            # Core statements, not the ORM unit of work: this is the hot write path.
            model_id, number = _next_version_number(s, name, actor)
            row = VersionRow(
                model_id=model_id,
                version=number,
                flavor=flavor,
                artifact_digest=digest,
                artifact_size=size,
                meta=meta or {},
                signature=signature or {},
                metrics=metrics or {},
                params=params or {},
                data_fingerprint=data_fingerprint,
                code_ref=code_ref or {},
                environment=environment or {},
                reference_stats=reference_stats,
                run_id=run_id,
                description=description,
                created_at=now(),
                created_by=actor,
            )
            s.execute(_INSERT_VERSION, {c.key: getattr(row, c.key) for c in _VERSION_COLUMNS})
            _audit(s, actor, "version.register", f"{name}:{number}",
                   {"flavor": flavor, "digest": digest, "metrics": metrics or {}, "run": run_id})
            return _version(row, name, ())

    def _store_artifact(self, folder: Path) -> tuple[str, int]:
        fd, tmp = tempfile.mkstemp(prefix="modelyard-pack-", suffix=".tar")
        os.close(fd)
        try:
            return self.store.put_file(pack_dir(folder, Path(tmp)))
        finally:
            os.unlink(tmp)

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, newest first."""
        with self.db.session() as s:
            model = _model_row(s, name)
            rows = s.scalars(
                select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.version.desc())
            ).all()
            by_version = _aliases_by_version(s, model.id)
            return [_version(r, name, by_version.get(r.version, ())) for r in rows]

    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version; :class:`NotFoundError` names the versions that do exist."""
        with self.db.session() as s:
            model = _model_row(s, name)
            row = _version_row(s, model, version)
            return _version(row, name, _aliases_by_version(s, model.id).get(version, ()))

    def resolve(self, ref: str) -> ModelVersion:
        """The version a reference names: ``name:3``, ``name@alias`` or ``name`` (production)."""
        name, version, alias = parse_ref(ref)
        with self.db.session() as s:
            found = (
                s.scalars(_VERSION_BY_ALIAS, {"name": name, "alias": alias}).first()
                if alias is not None
                else s.scalars(_VERSION_BY_NUMBER, {"name": name, "version": version}).first()
            )
            if found is not None:
                aliases = _aliases_by_version(s, found.model_id).get(found.version, ())
                return _version(found, name, aliases)
            model = _model_row(s, name)
            if alias is not None:
                version = s.scalar(
                    select(AliasRow.version).where(
                        AliasRow.model_id == model.id, AliasRow.alias == alias
                    )
                )
                if version is None:
                    raise NotFoundError(
                        f"model '{name}' has no alias '{alias}'"
                        + _alias_hint(s, model, alias)
                    )
            assert version is not None  # set by the branch above or by parse_ref
            row = _version_row(s, model, version)
            return _version(row, name, _aliases_by_version(s, model.id).get(version, ()))

    # -- aliases --------------------------------------------------------------------------------
    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str | None = None,
        reason: str = "",
        action: str = "set",
    ) -> AliasEvent:
        """Point ``alias`` at ``version`` (recorded in the alias history and the audit trail)."""
        _check_alias(alias)
        actor = actor or self.settings.actor
        with self.db.session(write=True) as s:
            model = _model_row(s, name, lock=True)
            _version_row(s, model, version)
            return _move_alias(s, model, alias, version, actor, reason, action)

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None,
                     reason: str = "") -> AliasEvent:
        """Remove ``alias`` from ``name`` (recorded like a move)."""
        actor = actor or self.settings.actor
        with self.db.session(write=True) as s:
            model = _model_row(s, name, lock=True)
            return _move_alias(s, model, alias, None, actor, reason, "delete")

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """Every move of ``alias`` (or of all aliases) of ``name``, newest first."""
        with self.db.session() as s:
            model = _model_row(s, name)
            query = select(AliasEventRow).where(AliasEventRow.model_id == model.id)
            if alias is not None:
                query = query.where(AliasEventRow.alias == alias)
            rows = s.scalars(query.order_by(AliasEventRow.at.desc(), AliasEventRow.id.desc()))
            return [_alias_event(r, name) for r in rows]

    def alias_at(self, name: str, alias: str, when: datetime) -> int | None:
        """The version ``alias`` pointed to at time ``when`` (None: it did not exist then)."""
        if when.tzinfo is None:
            raise ConfigError("give the time with a timezone, e.g. 2026-01-31T12:00:00+00:00")
        with self.db.session() as s:
            model = _model_row(s, name)
            row = s.scalars(
                select(AliasEventRow)
                .where(
                    AliasEventRow.model_id == model.id,
                    AliasEventRow.alias == alias,
                    AliasEventRow.at <= when,
                )
                .order_by(AliasEventRow.at.desc(), AliasEventRow.id.desc())
                .limit(1)
            ).first()
            return None if row is None else row.version

    def rollback(
        self,
        name: str,
        *,
        alias: str = PRODUCTION,
        to: int | None = None,
        actor: str | None = None,
        reason: str = "",
    ) -> AliasEvent:
        """Move ``alias`` back to the version it pointed to before (or to version ``to``).

        Versions already rolled away from are skipped, so repeated rollbacks walk back through
        the history instead of flipping between two versions.
        """
        actor = actor or self.settings.actor
        with self.db.session(write=True) as s:
            model = _model_row(s, name, lock=True)
            current = s.scalar(
                select(AliasRow.version).where(
                    AliasRow.model_id == model.id, AliasRow.alias == alias
                )
            )
            if to is None:
                to = _rollback_target(s, model, alias, current)
            _version_row(s, model, to)
            if to == current:
                raise ConflictError(f"{name}@{alias} already points to version {to}")
            return _move_alias(s, model, alias, to, actor, reason or "rollback", "rollback")

    # -- artifacts ------------------------------------------------------------------------------
    def artifact_path(self, version: ModelVersion) -> Path:
        """A local folder holding ``version``'s artifact, verified against its digest.

        Unpacked once into the cache; a digest mismatch raises :class:`IntegrityError` naming the
        version and nothing is loaded.
        """
        target = self.settings.cache_dir / version.artifact_digest
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
            archive = Path(tmp) / "a.tar"
            try:
                self.store.get_file(version.artifact_digest, archive)
            except IntegrityError as exc:
                raise IntegrityError(
                    f"refusing to load {version.ref}: {exc}; the stored artifact is corrupt or "
                    "was changed; re-register the model or restore the artifact store"
                ) from None
            staged = unpack(archive, Path(tmp) / "content")
            try:
                staged.rename(target)
            except OSError:  # another process unpacked it first
                if not target.is_dir():
                    raise
        return target

    def clear_cache(self) -> None:
        """Remove every unpacked artifact (they are unpacked again on the next load)."""
        shutil.rmtree(self.settings.cache_dir, ignore_errors=True)

    # -- runs -----------------------------------------------------------------------------------
    def start_run(self, model: str, *, trigger: str = "manual", actor: str | None = None) -> Run:
        """Record a training run as started."""
        _check_name(model)
        actor = actor or self.settings.actor
        with self.db.session(write=True) as s:
            row = RunRow(
                id=str(uuid.uuid4()), model_name=model, status="running", trigger=trigger,
                started_at=now(), metrics={}, gate={}, logs="", created_by=actor,
            )
            s.add(row)
            _audit(s, actor, "run.start", model, {"run": row.id, "trigger": trigger})
            s.flush()
            return _run(row)

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        version: int | None = None,
        promoted: bool = False,
        metrics: dict[str, Any] | None = None,
        gate: dict[str, Any] | None = None,
        logs: str = "",
        failure_reason: str | None = None,
    ) -> Run:
        """Record how a run ended: ``succeeded``, ``failed`` or ``rejected`` (by its gate)."""
        with self.db.session(write=True) as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise NotFoundError(f"no run {run_id}")
            row.status, row.version, row.promoted = status, version, promoted
            row.metrics, row.gate, row.logs = metrics or {}, gate or {}, logs[-200_000:]
            row.failure_reason = failure_reason
            row.ended_at = now()
            row.duration_s = (row.ended_at - row.started_at).total_seconds()
            _audit(s, row.created_by, f"run.{status}", row.model_name,
                   {"run": run_id, "version": version, "reason": failure_reason})
            return _run(row)

    def get_run(self, run_id: str) -> Run:
        """One run by id (a unique prefix of it is enough)."""
        with self.db.session() as s:
            rows = s.scalars(select(RunRow).where(RunRow.id.startswith(run_id)).limit(2)).all()
            if len(rows) != 1:
                raise NotFoundError(f"no run matches {run_id!r}" if not rows
                                    else f"run id {run_id!r} is ambiguous; give more of it")
            return _run(rows[0])

    def list_runs(self, model: str | None = None, *, limit: int = 50) -> list[Run]:
        """Recent runs, newest first, optionally of one model."""
        with self.db.session() as s:
            query = select(RunRow).order_by(RunRow.started_at.desc()).limit(limit)
            if model is not None:
                query = query.where(RunRow.model_name == model)
            return [_run(r) for r in s.scalars(query)]

    # -- audit ----------------------------------------------------------------------------------
    def record(self, action: str, target: str, details: dict[str, Any] | None = None,
               *, actor: str | None = None) -> None:
        """Add an audit event for a change made outside the registry's own methods."""
        with self.db.session(write=True) as s:
            _audit(s, actor or self.settings.actor, action, target, details or {})

    def audit_events(self, target: str | None = None, *, limit: int = 100) -> list[AuditEvent]:
        """Recent audit events, newest first; ``target`` filters by model name (or ``name:v``)."""
        with self.db.session() as s:
            query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
            if target is not None:
                query = query.where(
                    (AuditRow.target == target)
                    | AuditRow.target.startswith(f"{target}:")
                    | AuditRow.target.startswith(f"{target}@")
                )
            return [
                AuditEvent(r.id, r.at, r.actor, r.action, r.target, r.details)
                for r in s.scalars(query)
            ]


# -- row helpers --------------------------------------------------------------------------------
def _check_name(name: str) -> str:
    if not _MODEL_NAME.match(name or ""):
        raise ConfigError(
            f"model name {name!r} is invalid: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_alias(alias: str) -> str:
    if not _ALIAS_NAME.match(alias or ""):
        raise ConfigError(
            f"alias {alias!r} is invalid: use lowercase letters, digits, '_' or '-', "
            "starting with a letter (e.g. production, staging)"
        )
    return alias


def _model_row(s: Session, name: str, *, lock: bool = False) -> ModelRow:
    query = select(ModelRow).where(ModelRow.name == name)
    if lock:
        query = query.with_for_update()
    row = s.scalars(query).first()
    if row is None:
        known = s.scalars(select(ModelRow.name).order_by(ModelRow.name).limit(20)).all()
        hint = f"; known models: {', '.join(known)}" if known else "; the registry is empty"
        raise NotFoundError(f"no model named '{name}'{hint}")
    return row


def _next_version_number(s: Session, name: str, actor: str) -> tuple[int, int]:
    """Hand out ``name``'s next version number: ``(model id, number)``, creating the model.

    The UPDATE takes the model row's lock (PostgreSQL) inside the writer's transaction (SQLite:
    BEGIN IMMEDIATE), so concurrent registrations queue and get distinct numbers.
    """
    if s.execute(_BUMP_VERSION, {"model_name": name}).rowcount == 0:  # type: ignore[attr-defined]
        _create_model(s, name, actor)
        s.execute(_BUMP_VERSION, {"model_name": name})
    model_id, number = s.execute(_MODEL_NUMBER, {"model_name": name}).one()
    return int(model_id), int(number)


def _create_model(s: Session, name: str, actor: str) -> None:
    values = {"name": name, "description": "", "latest_version": 0, "created_at": now(),
              "created_by": actor}
    if s.get_bind().dialect.name == "postgresql":
        # Two first registrations at once: the loser's insert waits for the winner's commit,
        # then does nothing; only the one that created the model audits it.
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        created = s.scalar(
            pg_insert(_MODELS).values(values).on_conflict_do_nothing(index_elements=["name"])
            .returning(_MODELS.c.id)
        )
        if created is None:
            return
    else:  # SQLite: BEGIN IMMEDIATE already serialises writers
        s.execute(insert(_MODELS), values)
    _audit(s, actor, "model.create", name, {})


def _version_row(s: Session, model: ModelRow, version: int) -> VersionRow:
    row = s.scalars(
        select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.version == version)
    ).first()
    if row is None:
        hint = (f"; it has versions 1 to {model.latest_version}" if model.latest_version
                else "; it has no versions yet")
        raise NotFoundError(f"model '{model.name}' has no version {version}{hint}")
    return row


def _move_alias(
    s: Session, model: ModelRow, alias: str, version: int | None, actor: str, reason: str,
    action: str,
) -> AliasEvent:
    row = s.scalars(
        select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.alias == alias)
    ).first()
    previous = row.version if row is not None else None
    at = now()
    if version is None:
        if row is None:
            raise NotFoundError(f"model '{model.name}' has no alias '{alias}'")
        s.delete(row)
    elif row is None:
        s.add(AliasRow(model_id=model.id, alias=alias, version=version, updated_at=at))
    else:
        row.version, row.updated_at = version, at
    event = AliasEventRow(
        model_id=model.id, alias=alias, version=version, previous_version=previous,
        action=action, actor=actor, reason=reason, at=at,
    )
    s.add(event)
    _audit(s, actor, f"alias.{action}", f"{model.name}@{alias}",
           {"version": version, "previous_version": previous, "reason": reason})
    return _alias_event(event, model.name)


def _rollback_target(s: Session, model: ModelRow, alias: str, current: int | None) -> int:
    # Replay the history as a stack: a move pushes, a rollback pops back to its target. So
    # repeated rollbacks walk back, and a version promoted again after a rollback counts again.
    events = s.scalars(
        select(AliasEventRow)
        .where(AliasEventRow.model_id == model.id, AliasEventRow.alias == alias)
        .order_by(AliasEventRow.at, AliasEventRow.id)
    ).all()
    stack: list[int] = []
    for event in events:
        version = event.version
        if version is None:  # a delete: the last version stays the one to restore
            continue
        if event.action == "rollback":
            if version in stack:
                del stack[len(stack) - stack[::-1].index(version) :]
                continue
            if stack:  # rolled back (with ``to``) to a version this alias never had
                stack.pop()
        if not stack or stack[-1] != version:
            stack.append(version)
    while stack and stack[-1] == current:
        stack.pop()
    if stack:
        return stack[-1]
    raise ConflictError(
        f"{model.name}@{alias} has no earlier version to roll back to; "
        f"name one with --to VERSION"
    )


def _alias_hint(s: Session, model: ModelRow, alias: str) -> str:
    names = s.scalars(select(AliasRow.alias).where(AliasRow.model_id == model.id)).all()
    if names:
        return f"; its aliases: {', '.join(sorted(names))}"
    if alias == PRODUCTION:
        return f"; promote a version first: modelyard promote {model.name} VERSION"
    return ""


def _aliases_by_model(s: Session, model_id: int | None = None) -> dict[int, dict[str, int]]:
    query = select(AliasRow.model_id, AliasRow.alias, AliasRow.version)
    if model_id is not None:
        query = query.where(AliasRow.model_id == model_id)
    out: dict[int, dict[str, int]] = {}
    for mid, alias, version in s.execute(query):
        out.setdefault(mid, {})[alias] = version
    return out


def _aliases_by_version(s: Session, model_id: int) -> dict[int, tuple[str, ...]]:
    out: dict[int, list[str]] = {}
    for alias, version in s.execute(_ALIASES_OF_MODEL, {"model_id": model_id}):
        out.setdefault(version, []).append(alias)
    return {v: tuple(sorted(a)) for v, a in out.items()}


def _audit(s: Session, actor: str, action: str, target: str, details: dict[str, Any]) -> None:
    s.execute(_INSERT_AUDIT, {"at": now(), "actor": actor, "action": action, "target": target,
                              "details": details})


def _model(row: ModelRow, aliases: dict[str, int]) -> Model:
    return Model(row.name, row.description, row.latest_version, row.created_at, row.created_by,
                 dict(sorted(aliases.items())))


def _version(row: VersionRow, name: str, aliases: Sequence[str]) -> ModelVersion:
    return ModelVersion(
        model=name, version=row.version, flavor=row.flavor,
        artifact_digest=row.artifact_digest, artifact_size=row.artifact_size, meta=row.meta,
        signature=row.signature, metrics=row.metrics, params=row.params,
        data_fingerprint=row.data_fingerprint, code_ref=row.code_ref,
        environment=row.environment, reference_stats=row.reference_stats, run_id=row.run_id,
        description=row.description, created_at=row.created_at, created_by=row.created_by,
        aliases=tuple(aliases),
    )


def _alias_event(row: AliasEventRow, name: str) -> AliasEvent:
    return AliasEvent(name, row.alias, row.version, row.previous_version, row.action, row.actor,
                      row.reason, row.at)


def _run(row: RunRow) -> Run:
    return Run(row.id, row.model_name, row.status, row.trigger, row.started_at, row.ended_at,
               row.duration_s, row.version, row.promoted, row.metrics, row.gate, row.logs,
               row.failure_reason, row.created_by)


__all__ = ["PRODUCTION", "Registry", "now", "parse_ref"]
