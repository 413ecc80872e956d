"""Registry rows for semantic version labels and data lineage, each inside the caller's
transaction: a version's label (unique per model) and its indexed data sources, and the
reverse question "which versions were trained on this file / this table?"."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, insert, or_, select
from sqlalchemy.orm import Session

from modelyard.errors import ConfigError, ConflictError
from modelyard.registry.provenance import TABLE, index_rows, normalize_table
from modelyard.registry.records import TrainedOn
from modelyard.registry.semver import next_label
from modelyard.registry.tables import DataSourceRow, ModelRow, VersionRow

#: at most this many versions answer one lineage question (newest first).
MAX_ANSWERS = 1000


def labels_of(s: Session, model_id: int) -> dict[str, int]:
    """Every label of a model: label -> version number."""
    query = select(VersionRow.semver, VersionRow.version).where(
        VersionRow.model_id == model_id, VersionRow.semver.is_not(None))
    return {str(label): int(number) for label, number in s.execute(query)}


def new_label(s: Session, model_id: int, name: str, wanted: str) -> str:
    """The label ``wanted`` (``1.4.0``, or ``major``/``minor``/``patch`` to bump from the
    model's highest) gives a version of ``name``; :class:`ConflictError` (exit 4) when another
    version of it already has that label. Call it under the model's write lock."""
    taken = labels_of(s, model_id)
    label = next_label(wanted, list(taken))
    if label in taken:
        raise ConflictError(f"{name}@{label} is already version {taken[label]}: a label names "
                            "one version of a model; give another (or --semver patch to bump)")
    return label


def add_sources(s: Session, version_id: int, sources: list[dict[str, Any]]) -> None:
    """Index a new version's data sources for :func:`trained_on`."""
    rows = [{"version_id": version_id, "kind": kind, "location": location, "digest": digest}
            for kind, location, digest in index_rows(sources)]
    if rows:
        s.execute(insert(DataSourceRow), rows)


def trained_on(s: Session, *, path: str | None = None, digest: str | None = None,
               table: str | None = None, model: str | None = None) -> list[TrainedOn]:
    """The versions whose recorded sources match: a file by its absolute ``path`` or its sha256
    ``digest``, a ``table`` by name (``transactions`` also matches ``public.transactions``),
    newest first; only ``model``'s when given."""
    matches: list[ColumnElement[bool]] = []
    if path is not None:
        matches.append((DataSourceRow.kind == "file") & (DataSourceRow.location == path))
    if digest is not None:
        matches.append(DataSourceRow.digest == digest.lower())
    if table is not None:
        wanted = normalize_table(table)
        if not wanted:
            raise ConfigError(f"table name {table!r} is empty")
        qualified = DataSourceRow.location.endswith(f".{wanted}", autoescape=True)
        matches.append((DataSourceRow.kind == TABLE)
                       & or_(DataSourceRow.location == wanted, qualified))
    if not matches:
        raise ConfigError("name a file (path or sha256) or a table to look for")
    query = (select(DataSourceRow, VersionRow.version, VersionRow.semver, VersionRow.created_at,
                    ModelRow.name)
             .join(VersionRow, DataSourceRow.version_id == VersionRow.id)
             .join(ModelRow, VersionRow.model_id == ModelRow.id)
             .where(or_(*matches))
             .order_by(VersionRow.created_at.desc(), VersionRow.id.desc(), DataSourceRow.id)
             .limit(MAX_ANSWERS))
    if model is not None:
        query = query.where(ModelRow.name == model)
    return [TrainedOn(name, version, semver, row.kind, row.location, row.digest, created)
            for row, version, semver, created, name in s.execute(query)]


__all__ = ["MAX_ANSWERS", "add_sources", "labels_of", "new_label", "trained_on"]
