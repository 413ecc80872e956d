"""What a feature service is and what a request must carry, decided without the store.

:class:`FeatureDefinition` is what a version records of its feature service (its views, their
features and types, a digest over them) and what the server reads back to reach the same
service. :class:`EntityKeys` checks that a request carries every entity key and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.errors import InputError, NotFoundError

#: the ``meta`` key a version's feature definition is stored under.
META_KEY = "features"


@dataclass(frozen=True)
class FeatureView:
    """One feature view a service uses: its name and ``(feature, type)`` pairs, in order."""

    name: str
    features: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"name", "features": [{"name", "dtype"}]}``."""
        return {"name": self.name,
                "features": [{"name": n, "dtype": d} for n, d in self.features]}


@dataclass(frozen=True)
class FeatureDefinition:
    """A feature service as a version was trained on it: where it lives and what it serves.

    ``repo`` is the repository's absolute path (the server opens the same one), ``entities``
    the key columns a request carries, ``views`` the service's feature views in order.
    """

    store: str
    repo: str
    service: str
    entities: tuple[str, ...]
    timestamp: str
    views: tuple[FeatureView, ...]

    @property
    def feature_names(self) -> list[str]:
        """Every feature's column name, view by view (as the store returns them)."""
        return [name for view in self.views for name, _ in view.features]

    @property
    def digest(self) -> str:
        """``sha256:...`` over the service name, its views, features and types (not the repo's
        path): equal digests mean the model asks for the same features."""
        body = json.dumps({"service": self.service, "entities": list(self.entities),
                           "views": [v.to_dict() for v in self.views]},
                          sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()

    def to_meta(self) -> dict[str, Any]:
        """What ``meta["features"]`` holds (the digest included, for lineage to compare)."""
        return {"store": self.store, "repo": self.repo, "service": self.service,
                "entities": list(self.entities), "timestamp": self.timestamp,
                "feature_views": [v.to_dict() for v in self.views],
                "features": self.feature_names, "digest": self.digest}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> FeatureDefinition | None:
        """The definition a version recorded (None: it takes no features from a store);
        raises :class:`ValueError` for a malformed record."""
        raw = meta.get(META_KEY)
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ValueError(f"meta.{META_KEY} must be a mapping")
        try:
            views = tuple(
                FeatureView(str(v["name"]),
                            tuple((str(f["name"]), str(f["dtype"])) for f in v["features"]))
                for v in raw["feature_views"])
            return cls(str(raw["store"]), str(raw["repo"]), str(raw["service"]),
                       tuple(str(e) for e in raw["entities"]), str(raw["timestamp"]), views)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"meta.{META_KEY} lacks {exc}") from None


class EntityKeys:
    """A request's entity keys: records, one record or columns, as a list of key records."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def prepare(self, payload: Any) -> tuple[list[dict[str, Any]], int]:
        """``(rows, n)``: one ``{key: value}`` per row; raises :class:`InputError` naming the
        missing or extra fields."""
        if isinstance(payload, Mapping):
            if payload and all(isinstance(v, list) for v in payload.values()):
                self._check_fields(payload, "the columns")
                lengths = {len(payload[k]) for k in self.keys}
                if len(lengths) != 1 or 0 in lengths:
                    raise InputError("entity key columns must be non-empty and of one length")
                n = lengths.pop()
                return [{k: payload[k][i] for k in self.keys} for i in range(n)], n
            payload = [payload]
        if not isinstance(payload, list) or not payload:
            raise InputError(f"send entity keys ({', '.join(self.keys)}) as records or columns")
        rows = []
        for i, record in enumerate(payload):
            if not isinstance(record, Mapping):
                raise InputError(f"row {i}: expected a record of entity keys "
                                 f"({', '.join(self.keys)})")
            self._check_fields(record, f"row {i}")
            rows.append({k: record[k] for k in self.keys})
        return rows, len(rows)

    def _check_fields(self, record: Mapping[str, Any], where: str) -> None:
        missing = [k for k in self.keys if k not in record]
        if missing:
            raise InputError(f"{where} lacks entity key(s) {', '.join(missing)}; this model "
                             f"fetches its features by {', '.join(self.keys)}")
        extra = sorted(str(k) for k in record if k not in self.keys)
        if extra:
            raise InputError(f"{where} has field(s) {', '.join(extra)} that are not entity "
                             f"keys; this model takes only {', '.join(self.keys)} and fetches "
                             "its features itself")
        nulls = [k for k in self.keys if record[k] is None]
        if nulls:
            raise InputError(f"{where}: entity key(s) {', '.join(nulls)} are null")


def unknown_rows(values: Mapping[str, Sequence[Any]], features: Sequence[str]) -> list[int]:
    """Rows for which the store returned no value of any of ``features`` (an unknown entity,
    or one never materialized)."""
    if not features:
        return []
    n = len(values[features[0]])
    return [i for i in range(n) if all(values[f][i] is None for f in features)]


def unknown_entity(rows: Sequence[Mapping[str, Any]], service: str) -> NotFoundError:
    """The 404 for rows whose entities the online store does not know."""
    shown = "; ".join(", ".join(f"{k}={v!r}" for k, v in row.items()) for row in rows[:5])
    more = f" (+{len(rows) - 5} more)" if len(rows) > 5 else ""
    return NotFoundError(f"no online features of service {service} for {shown}{more}: an "
                         "unknown entity, or its features were never materialized")


__all__ = ["META_KEY", "EntityKeys", "FeatureDefinition", "FeatureView", "unknown_entity",
           "unknown_rows"]
