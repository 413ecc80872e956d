"""Plain records the registry returns: immutable snapshots, safe to pass between threads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from modelyard.schema import Signature


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True)
class Record:
    """Base of every record: ``to_dict`` gives a JSON-ready form (for ``--json`` and the API)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: _iso(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Model(Record):
    """A named model: its versions are numbered 1, 2, 3, ...; aliases point at them."""

    name: str
    description: str
    latest_version: int
    created_at: datetime
    created_by: str
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersion(Record):
    """One immutable trained artifact with its lineage."""

    model: str
    version: int
    flavor: str
    artifact_digest: str
    artifact_size: int
    meta: dict[str, Any]
    signature: dict[str, Any]
    metrics: dict[str, Any]
    params: dict[str, Any]
    data_fingerprint: str | None
    code_ref: dict[str, Any]
    environment: dict[str, Any]
    reference_stats: dict[str, Any] | None
    run_id: str | None
    description: str
    created_at: datetime
    created_by: str
    aliases: tuple[str, ...] = ()
    #: its semantic version label (``1.4.0``), None until given; once given it never changes
    semver: str | None = None
    #: the data it was trained on: files with their sha256, a query with its database and
    #: tables, a data function (see :mod:`modelyard.registry.provenance`); empty if unknown
    data_sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """``name:version``, the form every command accepts."""
        return f"{self.model}:{self.version}"

    def get_signature(self) -> Signature:
        """The version's :class:`~modelyard.schema.Signature`."""
        return Signature.from_dict(self.signature)

    def to_dict(self, *, full: bool = True) -> dict[str, Any]:
        data = super().to_dict()
        data["aliases"] = list(self.aliases)
        if not full:
            for key in ("meta", "signature", "reference_stats", "environment", "data_sources"):
                data.pop(key)
        return data


@dataclass(frozen=True)
class AliasEvent(Record):
    """One move of an alias: from ``previous_version`` to ``version`` (None: removed)."""

    model: str
    alias: str
    version: int | None
    previous_version: int | None
    action: str
    actor: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class Run(Record):
    """One run and how it ended: a training run of the pipeline, or a batch scoring run."""

    id: str
    model: str
    status: str
    trigger: str
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    version: int | None
    promoted: bool
    metrics: dict[str, Any]
    gate: dict[str, Any]
    logs: str
    failure_reason: str | None
    created_by: str
    #: the process that runs it, and its last heartbeat (None for runs recorded before these)
    host: str | None = None
    pid: int | None = None
    heartbeat_at: datetime | None = None
    #: ``train`` or ``batch``; a batch run's ``details`` say what it read and wrote
    kind: str = "train"
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrainedOn(Record):
    """A version that was trained on a source asked about (``modelyard lineage``): which
    version, and the source that matched (its kind, location and digest)."""

    model: str
    version: int
    semver: str | None
    kind: str
    location: str
    digest: str | None
    created_at: datetime

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class AuditEvent(Record):
    """Who changed what, when, and the details."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


__all__ = ["AliasEvent", "AuditEvent", "Model", "ModelVersion", "Record", "Run", "TrainedOn"]
