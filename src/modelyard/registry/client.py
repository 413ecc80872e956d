"""The registry client: models, immutable versions, aliases with history, runs and audit.

Every change is one database transaction that also writes its audit event, so the registry is
never left half-changed. Version numbers are handed out under a lock on the model's row, so
concurrent registrations from several processes get distinct numbers on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from modelyard.adapters import artifact_verifier
from modelyard.config import Settings
from modelyard.encryption import artifact_store
from modelyard.errors import ConfigError, ConflictError, NotFoundError
from modelyard.registry.database import Database
from modelyard.registry.keys import KeyStore
from modelyard.registry.provenance import check_sources
from modelyard.registry.provenance_rows import add_sources, labels_of, new_label, trained_on
from modelyard.registry.records import AliasEvent, AuditEvent, Model, ModelVersion, TrainedOn
from modelyard.registry.rows import (
    PRODUCTION,
    alias_hint,
    aliases_by_model,
    aliases_by_version,
    audit,
    check_alias,
    check_name,
    model_row,
    move_alias,
    now,
    parse_ref,
    parse_reference,
    possible_version,
    rollback_target,
    to_alias_event,
    to_model,
    to_version,
    version_row,
)
from modelyard.registry.runs import RunLedger
from modelyard.registry.semver import BUMPS, parse_semver
from modelyard.registry.tables import (
    AliasEventRow,
    AliasRow,
    AuditRow,
    ModelRow,
    VersionRow,
)
from modelyard.store import cached_artifact, pack_dir, unpack
from modelyard.types import ArtifactStore

log = logging.getLogger(__name__)

# Hot-path statements are built once with bound parameters: building them per call (literal
# values) costs more CPU in SQLAlchemy's cache-key generation than the query itself.
_MODELS: Table = ModelRow.__table__  # type: ignore[assignment]
_VERSIONS: Table = VersionRow.__table__  # type: ignore[assignment]
_VERSION_COLUMNS = [c for c in _VERSIONS.columns if c.key != "id"]
_INSERT_VERSION = insert(_VERSIONS)
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




#: a digest no content has (not a sha256 of anything stored): asking for it tests the store
_NO_BLOB = "0" * 64


class Registry(RunLedger):
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
        return cls(db, artifact_store(settings), settings)

    @property
    def keys(self) -> KeyStore:
        """Principals and API keys (see :mod:`modelyard.registry.keys`)."""
        return KeyStore(self.db)

    def check_store(self) -> None:
        """Ask the artifact store once whether it answers, before work that needs it.

        An unreachable store or refused credentials then fail at once with a one-line
        :class:`StorageError` (exit 10), not after a training run or at a server's first load.
        The question is about a blob that cannot exist, so it reads nothing.
        """
        self.store.exists(_NO_BLOB)

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
            aliases = aliases_by_model(s)
            return [to_model(r, aliases.get(r.id, {})) for r in rows]

    def versions_at_alias(self, alias: str) -> dict[str, ModelVersion]:
        """By model name, the version ``alias`` names (one query: the console's overview)."""
        with self.db.session() as s:
            query = (select(VersionRow, ModelRow.name)
                     .join(ModelRow, VersionRow.model_id == ModelRow.id)
                     .join(AliasRow, (AliasRow.model_id == ModelRow.id)
                           & (AliasRow.version == VersionRow.version))
                     .where(AliasRow.alias == alias))
            return {name: to_version(row, name, (alias,)) for row, name in s.execute(query)}

    def last_moves(self, alias: str) -> dict[str, AliasEvent]:
        """By model name, the latest move of ``alias``: since when and why (one query)."""
        newest = (select(func.max(AliasEventRow.id)).where(AliasEventRow.alias == alias)
                  .group_by(AliasEventRow.model_id))
        with self.db.session() as s:
            query = (select(AliasEventRow, ModelRow.name)
                     .join(ModelRow, AliasEventRow.model_id == ModelRow.id)
                     .where(AliasEventRow.id.in_(newest)))
            return {name: to_alias_event(row, name) for row, name in s.execute(query)}

    def get_model(self, name: str) -> Model:
        """One model by name; :class:`NotFoundError` if there is none."""
        with self.db.session() as s:
            row = model_row(s, name)
            return to_model(row, aliases_by_model(s, row.id).get(row.id, {}))

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
        semver: str | None = None,
        data_sources: list[dict[str, Any]] | None = None,
    ) -> ModelVersion:
        """Store the artifact folder and record a new immutable version of ``name``.

        The artifact is written (atomically) before the version row exists, so a version never
        points at a missing or partial artifact. The model is created on its first version.
        What is stored is first checked by the flavor's adapter: an artifact that loading would
        refuse (:class:`UnsafeArtifactError`) is never stored and never becomes a version.
        ``semver`` labels it: ``1.4.0``, or ``major``/``minor``/``patch`` to bump from the
        model's highest label (:class:`ConflictError` when the label is taken).
        ``data_sources`` is what it was trained on (:mod:`modelyard.registry.provenance`).
        """
        check_name(name)
        if semver is not None and semver not in BUMPS:
            parse_semver(semver)  # a malformed label fails before the artifact is stored
        if data_sources:
            check_sources(data_sources)
        actor = actor or self.settings.actor
        digest, size = self._store_artifact(Path(artifact_dir), flavor, meta or {})
        with self.db.session(write=True) as s:
            # Core statements, not the ORM unit of work: this is the hot write path.
            model_id, number = _next_version_number(s, name, actor)
            label = None if semver is None else new_label(s, model_id, name, semver)
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
                semver=label,
                data_sources=data_sources or None,
            )
            done = cast("CursorResult[Any]", s.execute(
                _INSERT_VERSION, {c.key: getattr(row, c.key) for c in _VERSION_COLUMNS}))
            if data_sources:
                key = done.inserted_primary_key
                assert key is not None  # one row inserted: its id
                add_sources(s, int(key[0]), data_sources)
            details: dict[str, Any] = {"flavor": flavor, "digest": digest,
                                       "metrics": metrics or {}, "run": run_id}
            if label is not None:
                details["semver"] = label
            audit(s, actor, "version.register", f"{name}:{number}", details)
            return to_version(row, name, ())

    def label(self, name: str, version: int, semver: str, *,
              actor: str | None = None) -> ModelVersion:
        """Give version ``version`` of ``name`` its semantic version label, once (audited).

        ``semver`` is a label (``1.4.0``) or ``major``/``minor``/``patch`` to bump from the
        model's highest. :class:`ConflictError` when the version already has a label (labels
        are immutable, like versions) or another version has this one.
        """
        if semver not in BUMPS:
            parse_semver(semver)
        actor = actor or self.settings.actor
        with self.db.session(write=True) as s:
            model = model_row(s, name, lock=True)
            row = version_row(s, model, version)
            if row.semver is not None:
                raise ConflictError(f"{name}:{version} is already labelled {row.semver}; a "
                                    "label, once given, never changes: label a new version")
            row.semver = new_label(s, model.id, name, semver)
            audit(s, actor, "version.label", f"{name}:{version}", {"semver": row.semver})
            s.flush()
            return to_version(row, name, aliases_by_version(s, model.id).get(version, ()))

    def trained_on(self, *, path: str | Path | None = None, digest: str | None = None,
                   table: str | None = None, model: str | None = None) -> list[TrainedOn]:
        """Which versions were trained on a file (its absolute ``path``, or its sha256
        ``digest``) or a ``table`` (named in their SQL), newest first; only ``model``'s when
        given. A source matching several ways is listed once per way."""
        where = None if path is None else str(Path(path).absolute())
        with self.db.session() as s:
            return trained_on(s, path=where, digest=digest, table=table, model=model)

    def register_model(self, name: str, model_or_path: Any, **options: Any) -> ModelVersion:
        """Register a model trained elsewhere: :func:`modelyard.pipeline.bring.register_model`."""
        from modelyard.pipeline.bring import register_model
        return register_model(self, name, model_or_path, **options)

    def _store_artifact(self, folder: Path, flavor: str, meta: dict[str, Any]) -> tuple[str, int]:
        with tempfile.TemporaryDirectory(prefix="modelyard-pack-") as tmp:
            archive = pack_dir(folder, Path(tmp) / "artifact.tar")
            verify = artifact_verifier(flavor)
            if verify is not None:
                # check the packed bytes that will be stored, not the folder, which its owner
                # could change between a check and the packing
                verify(unpack(archive, Path(tmp) / "content"), meta)
            return self.store.put_file(archive)

    def list_versions(self, name: str, *, limit: int | None = None,
                      offset: int = 0) -> list[ModelVersion]:
        """The versions of ``name``, newest first (a page of ``limit`` after ``offset``)."""
        with self.db.session() as s:
            model = model_row(s, name)
            rows = s.scalars(
                select(VersionRow)
                .where(VersionRow.model_id == model.id)
                .order_by(VersionRow.version.desc()).limit(limit).offset(offset)
            ).all()
            by_version = aliases_by_version(s, model.id)
            return [to_version(r, name, by_version.get(r.version, ())) for r in rows]

    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version; :class:`NotFoundError` names the versions that do exist."""
        with self.db.session() as s:
            model = model_row(s, name)
            row = version_row(s, model, version)
            return to_version(row, name, aliases_by_version(s, model.id).get(version, ()))

    def resolve(self, ref: str) -> ModelVersion:
        """The version a reference names: ``name:3``, ``name@alias``, ``name@1.4.0`` (a label)
        or ``name`` (production)."""
        name, version, alias, semver = parse_reference(ref)
        if semver is not None:
            return self._by_label(name, semver)
        with self.db.session() as s:
            found = None
            if alias is not None:
                found = s.scalars(_VERSION_BY_ALIAS, {"name": name, "alias": alias}).first()
            elif version is not None and possible_version(version):
                found = s.scalars(_VERSION_BY_NUMBER, {"name": name, "version": version}).first()
            if found is not None:
                aliases = aliases_by_version(s, found.model_id).get(found.version, ())
                return to_version(found, name, aliases)
            model = model_row(s, name)
            if alias is not None:
                version = s.scalar(
                    select(AliasRow.version).where(
                        AliasRow.model_id == model.id, AliasRow.alias == alias
                    )
                )
                if version is None:
                    raise NotFoundError(
                        f"model '{name}' has no alias '{alias}'"
                        + alias_hint(s, model, alias)
                    )
            assert version is not None  # set by the branch above or by parse_ref
            row = version_row(s, model, version)
            return to_version(row, name, aliases_by_version(s, model.id).get(version, ()))

    def _by_label(self, name: str, semver: str) -> ModelVersion:
        with self.db.session() as s:
            model = model_row(s, name)
            row = s.scalars(select(VersionRow).where(VersionRow.model_id == model.id,
                                                     VersionRow.semver == semver)).first()
            if row is None:
                labels = sorted(labels_of(s, model.id), key=parse_semver, reverse=True)[:10]
                hint = (f"; its labels: {', '.join(labels)}" if labels
                        else "; it has no labels: give one with modelyard label "
                             f"{name}:VERSION {semver}")
                raise NotFoundError(f"model '{name}' has no version labelled {semver}{hint}")
            return to_version(row, name, aliases_by_version(s, model.id).get(row.version, ()))

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
        check_alias(alias)
        actor = actor or self.settings.actor
        with self.db.session(write=True) as s:
            model = model_row(s, name, lock=True)
            version_row(s, model, version)
            return move_alias(s, model, alias, version, actor, reason, action)

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None,
                     reason: str = "") -> AliasEvent:
        """Remove ``alias`` from ``name`` (recorded like a move)."""
        actor = actor or self.settings.actor
        with self.db.session(write=True) as s:
            model = model_row(s, name, lock=True)
            return move_alias(s, model, alias, None, actor, reason, "delete")

    def alias_history(self, name: str, alias: str | None = None, *,
                      limit: int | None = None) -> list[AliasEvent]:
        """Every move of ``alias`` (or of all aliases) of ``name``, newest first (the newest
        ``limit`` of them when given)."""
        with self.db.session() as s:
            model = model_row(s, name)
            query = select(AliasEventRow).where(AliasEventRow.model_id == model.id)
            if alias is not None:
                query = query.where(AliasEventRow.alias == alias)
            rows = s.scalars(query.order_by(AliasEventRow.at.desc(), AliasEventRow.id.desc())
                             .limit(limit))
            return [to_alias_event(r, name) for r in rows]

    def alias_at(self, name: str, alias: str, when: datetime) -> int | None:
        """The version ``alias`` pointed to at time ``when`` (None: it did not exist then)."""
        if when.tzinfo is None:
            raise ConfigError("give the time with a timezone, e.g. 2026-01-31T12:00:00+00:00")
        with self.db.session() as s:
            model = model_row(s, name)
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
            model = model_row(s, name, lock=True)
            current = s.scalar(
                select(AliasRow.version).where(
                    AliasRow.model_id == model.id, AliasRow.alias == alias
                )
            )
            if to is None:
                to = rollback_target(s, model, alias, current)
            version_row(s, model, to)
            if to == current:
                raise ConflictError(f"{name}@{alias} already points to version {to}")
            return move_alias(s, model, alias, to, actor, reason or "rollback", "rollback")

    # -- artifacts ------------------------------------------------------------------------------
    def artifact_path(self, version: ModelVersion) -> Path:
        """A local folder holding ``version``'s artifact, verified against its digest.

        Unpacked once into ``<home>/cache/<digest>/`` and checked again on every call: the
        folder is re-packed in memory (:func:`~modelyard.store.digest_dir`) and must give back
        the digest, so a changed or added file is caught; such a copy is logged, removed and
        unpacked again from the store. A digest mismatch in the store itself raises
        :class:`IntegrityError` naming the version, and nothing is loaded.
        """
        return cached_artifact(
            self.settings.cache_dir, version.artifact_digest, version.ref,
            lambda dest: self.store.get_file(version.artifact_digest, dest))

    def clear_cache(self) -> None:
        """Remove every unpacked artifact (they are unpacked again on the next load)."""
        shutil.rmtree(self.settings.cache_dir, ignore_errors=True)

    # -- audit ----------------------------------------------------------------------------------
    def record(self, action: str, target: str, details: dict[str, Any] | None = None,
               *, actor: str | None = None) -> None:
        """Add an audit event for a change made outside the registry's own methods."""
        with self.db.session(write=True) as s:
            audit(s, actor or self.settings.actor, action, target, details or {})

    def audit_events(self, target: str | None = None, *, limit: int = 100, offset: int = 0,
                     actor: str | None = None, action: str | None = None,
                     since: datetime | None = None,
                     until: datetime | None = None) -> list[AuditEvent]:
        """Recent audit events, newest first, a page of ``limit`` after ``offset``; filtered by
        model (``target``: ``name`` or ``name:v``), ``actor``, ``action`` and time."""
        with self.db.session() as s:
            query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit).offset(offset)
            for column, value in ((AuditRow.actor, actor), (AuditRow.action, action)):
                if value is not None:
                    query = query.where(column == value)
            if since is not None:
                query = query.where(AuditRow.at >= since)
            if until is not None:
                query = query.where(AuditRow.at < until)
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
    audit(s, actor, "model.create", name, {})


__all__ = ["PRODUCTION", "Registry", "now", "parse_ref", "parse_reference"]
