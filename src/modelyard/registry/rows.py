"""Row-level helpers shared by the registry client and the rollout records.

Each takes the open ``Session`` of the caller's transaction, so a change and its audit event and
alias history are written together or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from modelyard.config import MAX_VERSION
from modelyard.errors import ConfigError, ConflictError, NotFoundError
from modelyard.registry.audit_chain import normalized, queue
from modelyard.registry.records import AliasEvent, Model, ModelVersion, Run
from modelyard.registry.semver import looks_like_semver, parse_semver
from modelyard.registry.tables import (
    AliasEventRow,
    AliasRow,
    ModelRow,
    RunRow,
    VersionRow,
)

PRODUCTION = "production"
# Built once with bound parameters: per-call statements cost more in SQLAlchemy's cache-key
# generation than the query itself (these run on every register and resolve).
_ALIASES_OF_MODEL = select(AliasRow.alias, AliasRow.version).where(
    AliasRow.model_id == bindparam("model_id")
)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,99}$")


def now() -> datetime:
    """The current time, timezone-aware UTC (what the registry stores)."""
    return datetime.now(UTC)


class Reference(NamedTuple):
    """A parsed reference: exactly one of ``version``, ``alias`` or ``semver`` is set."""

    name: str
    version: int | None
    alias: str | None
    semver: str | None


def parse_reference(ref: str) -> Reference:
    """Split ``name``, ``name:3``, ``name@alias`` or ``name@1.4.0`` (a semantic version label).

    A bare name means its ``production`` alias. Aliases start with a letter and labels with a
    digit, so ``@`` is never ambiguous.
    """
    if "@" in ref:
        name, _, after = ref.partition("@")
        if after[:1].isdigit():
            return Reference(check_name(name), None, None, str(parse_semver(after)))
        return Reference(check_name(name), None, check_alias(after), None)
    if ":" in ref:
        name, _, number = ref.rpartition(":")
        if not (number.isascii() and number.isdigit() and len(number) <= 18):
            hint = f" (a label goes after @: {name}@{number})" if looks_like_semver(number) else ""
            raise ConfigError(f"version in {ref!r} must be a number, as in {name}:3{hint}")
        return Reference(check_name(name), int(number), None, None)
    return Reference(check_name(ref), None, PRODUCTION, None)


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Split ``name``, ``name:3`` or ``name@alias`` into ``(name, version, alias)``.

    A bare name means its ``production`` alias. A label (``name@1.4.0``) gives version and
    alias None: :func:`parse_reference` returns the label too.
    """
    name, version, alias, _ = parse_reference(ref)
    return name, version, alias


def check_name(name: str) -> str:
    if not _MODEL_NAME.match(name or ""):
        raise ConfigError(
            f"model name {name!r} is invalid: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    if looks_like_semver(alias or ""):  # name@1.4.0 is a label: an alias can never be one
        raise ConfigError(f"alias {alias!r} looks like a semantic version label; aliases start "
                          "with a letter (e.g. production, staging): give a label with "
                          "'modelyard label MODEL:VERSION LABEL'")
    if not _ALIAS_NAME.match(alias or ""):
        raise ConfigError(
            f"alias {alias!r} is invalid: use lowercase letters, digits, '_' or '-', "
            "starting with a letter (e.g. production, staging)"
        )
    return alias


def model_row(s: Session, name: str, *, lock: bool = False) -> ModelRow:
    query = select(ModelRow).where(ModelRow.name == name)
    if lock:
        query = query.with_for_update()
    row = s.scalars(query).first()
    if row is None:
        known = s.scalars(select(ModelRow.name).order_by(ModelRow.name).limit(20)).all()
        hint = f"; known models: {', '.join(known)}" if known else "; the registry is empty"
        raise NotFoundError(f"no model named '{name}'{hint}")
    return row


def possible_version(version: int) -> bool:
    """Whether ``version`` could exist: a number the database can hold, from 1 up."""
    return 1 <= version <= MAX_VERSION


def version_row(s: Session, model: ModelRow, version: int) -> VersionRow:
    row = None
    if possible_version(version):  # a number past the column's range never reaches the driver
        row = s.scalars(select(VersionRow).where(VersionRow.model_id == model.id,
                                                 VersionRow.version == version)).first()
    if row is None:
        hint = (f"; it has versions 1 to {model.latest_version}" if model.latest_version
                else "; it has no versions yet")
        raise NotFoundError(f"model '{model.name}' has no version {version}{hint}")
    return row


def move_alias(
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
    audit(s, actor, f"alias.{action}", f"{model.name}@{alias}",
           {"version": version, "previous_version": previous, "reason": reason})
    return to_alias_event(event, model.name)


def rollback_target(s: Session, model: ModelRow, alias: str, current: int | None) -> int:
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


def alias_hint(s: Session, model: ModelRow, alias: str) -> str:
    names = s.scalars(select(AliasRow.alias).where(AliasRow.model_id == model.id)).all()
    if names:
        return f"; its aliases: {', '.join(sorted(names))}"
    if alias == PRODUCTION:
        return f"; promote a version first: modelyard promote {model.name} VERSION"
    return ""


def aliases_by_model(s: Session, model_id: int | None = None) -> dict[int, dict[str, int]]:
    query = select(AliasRow.model_id, AliasRow.alias, AliasRow.version)
    if model_id is not None:
        query = query.where(AliasRow.model_id == model_id)
    out: dict[int, dict[str, int]] = {}
    for mid, alias, version in s.execute(query):
        out.setdefault(mid, {})[alias] = version
    return out


def aliases_by_version(s: Session, model_id: int) -> dict[int, tuple[str, ...]]:
    out: dict[int, list[str]] = {}
    for alias, version in s.execute(_ALIASES_OF_MODEL, {"model_id": model_id}):
        out.setdefault(version, []).append(alias)
    return {v: tuple(sorted(a)) for v, a in out.items()}


def audit(s: Session, actor: str, action: str, target: str, details: dict[str, Any]) -> None:
    """Audit a change made in ``s``: appended to the hash chain when ``s`` commits."""
    queue(s, {"at": now(), "actor": actor, "action": action, "target": target,
              "details": normalized(details)})


def to_model(row: ModelRow, aliases: dict[str, int]) -> Model:
    return Model(row.name, row.description, row.latest_version, row.created_at, row.created_by,
                 dict(sorted(aliases.items())))


def to_version(row: VersionRow, name: str, aliases: Sequence[str]) -> ModelVersion:
    return ModelVersion(
        model=name, version=row.version, flavor=row.flavor,
        artifact_digest=row.artifact_digest, artifact_size=row.artifact_size, meta=row.meta,
        signature=row.signature, metrics=row.metrics, params=row.params,
        data_fingerprint=row.data_fingerprint, code_ref=row.code_ref,
        environment=row.environment, reference_stats=row.reference_stats, run_id=row.run_id,
        description=row.description, created_at=row.created_at, created_by=row.created_by,
        aliases=tuple(aliases), semver=row.semver, data_sources=list(row.data_sources or []),
    )


def to_alias_event(row: AliasEventRow, name: str) -> AliasEvent:
    return AliasEvent(name, row.alias, row.version, row.previous_version, row.action, row.actor,
                      row.reason, row.at)


def to_run(row: RunRow) -> Run:
    return Run(row.id, row.model_name, row.status, row.trigger, row.started_at, row.ended_at,
               row.duration_s, row.version, row.promoted, row.metrics, row.gate, row.logs,
               row.failure_reason, row.created_by, row.host, row.pid, row.heartbeat_at,
               row.kind or "train", row.details)
