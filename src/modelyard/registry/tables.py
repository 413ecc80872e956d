"""The registry's tables (SQLAlchemy 2). Changes to these need an Alembic migration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC on every database and read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of every registry table."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    #: the highest version number handed out; bumped under a row lock to number versions.
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_version_number"),
                      UniqueConstraint("model_id", "semver", name="uq_version_semver"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    flavor: Mapped[str] = mapped_column(String(50))
    artifact_digest: Mapped[str] = mapped_column(String(64))
    artifact_size: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)  # adapter metadata needed to load
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    code_ref: Mapped[dict[str, Any]] = mapped_column(JSON)
    environment: Mapped[dict[str, Any]] = mapped_column(JSON)
    reference_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    # migration 0010: the semantic version label (unique per model, given once, never changed)
    # and the data it was trained on (registry/provenance.py; indexed in data_sources)
    semver: Mapped[str | None] = mapped_column(String(100), nullable=True)
    data_sources: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)


class DataSourceRow(Base):
    """One source a version was trained on (migration 0010), indexed for the reverse question
    "which versions were trained on this file / this table?": a ``file`` (absolute path and
    sha256), a ``sql`` query (its database, no password), each ``table`` the query reads, a
    data ``function``."""

    __tablename__ = "data_sources"
    __table_args__ = (
        Index("ix_data_sources_location", "kind", "location"),
        Index("ix_data_sources_digest", "digest"),
        Index("ix_data_sources_version", "version_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    location: Mapped[str] = mapped_column(String(1000))
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias", name="uq_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AliasEventRow(Base):
    """One move of an alias. ``version`` is None when the alias was removed."""

    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_lookup", "model_id", "alias", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(100))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(20), default="set")  # set | rollback | delete
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_model", "model_name", "started_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    # running | succeeded | failed | rejected | unchanged
    status: Mapped[str] = mapped_column(String(20))
    trigger: Mapped[str] = mapped_column(String(100), default="manual")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    gate: Mapped[dict[str, Any]] = mapped_column(JSON)
    logs: Mapped[str] = mapped_column(Text, default="")
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200))
    # the process that runs it (migration 0004): a running run whose process is gone, or whose
    # heartbeat stopped, is finished as failed ("abandoned") instead of showing as running
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: tells a reused pid apart: the boot and the process's start time (see registry.owners)
    process_start: Mapped[str | None] = mapped_column(String(100), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # what ran (migration 0006): "train" (the pipeline) or "batch" (batch scoring), and what a
    # batch run read and wrote (input fingerprint, output location, rows and errors)
    kind: Mapped[str] = mapped_column(String(20), server_default="train")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_target", "target", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(300))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: the audit chain (registry/audit_chain.py): the previous event's hash and this one's;
    #: NULL only inside the transaction that appends the row
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class DeploymentRow(Base):
    """One rollout of a model's candidate; the newest row of a model is its current deployment.

    ``revision`` is bumped on every change: a transition names the revision it decided on, so
    of several processes applying the same decision exactly one wins.
    """

    __tablename__ = "deployments"
    __table_args__ = (
        Index("ix_deployments_model", "model_id", "id"),
        Index("ix_deployments_updated", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    stable_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    candidate_version: Mapped[int] = mapped_column(Integer)
    strategy: Mapped[str] = mapped_column(String(20))  # direct | blue-green | canary | shadow | ab
    steps: Mapped[list[Any]] = mapped_column(JSON)  # candidate percentages, one per step
    step: Mapped[int] = mapped_column(Integer, default=0)  # index into steps
    every_s: Mapped[float] = mapped_column(Float)  # dwell time of each step
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)  # analysis thresholds
    key: Mapped[str | None] = mapped_column(String(200), nullable=True)  # A/B stickiness key
    # pending | progressing | paused | promoted | rolled_back | aborted
    state: Mapped[str] = mapped_column(String(20))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    step_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeploymentEventRow(Base):
    """One transition of a deployment: who or what caused it, and why."""

    __tablename__ = "deployment_events"
    __table_args__ = (Index("ix_deployment_events_deployment", "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(20))
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)  # None: started
    to_state: Mapped[str] = mapped_column(String(20))
    step: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer)  # the deployment's revision after it
    actor: Mapped[str] = mapped_column(String(200))  # "user:<name>" or "analysis"
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON)  # the analysis numbers, if any
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeploymentWindowRow(Base):
    """One server process's analysis window of a deployment revision (both variants' counts).

    Each process upserts its row every poll; the analysing process merges every row of the
    revision, so a decision rests on all the traffic, not one process's share of it.
    """

    __tablename__ = "deployment_windows"
    __table_args__ = (
        UniqueConstraint("deployment_id", "revision", "process", name="uq_deployment_window"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    process: Mapped[str] = mapped_column(String(200))
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"stable": {...}, "candidate": {...}}
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PredictionRow(Base):
    """Logged prediction requests (sampled) of one version and variant, written together: what
    went in, what came out, how fast, packed as :mod:`modelyard.monitoring.chunk` describes."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_model_last_at", "model", "last_at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(20))
    #: when its first and last request were answered.
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: how many requests it holds.
    size: Mapped[int] = mapped_column(Integer)
    id_hashes: Mapped[bytes] = mapped_column(LargeBinary)  # CRC-32 of each request id, <u4
    requests: Mapped[bytes] = mapped_column(LargeBinary)  # ids, times, latencies, rows
    inputs: Mapped[bytes] = mapped_column(LargeBinary)
    outputs: Mapped[bytes] = mapped_column(LargeBinary)


class LabelRow(Base):
    """Ground truth for one prediction request, sent at any time after it (feedback)."""

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("model", "request_id", name="uq_label_request"),
        Index("ix_labels_model_at", "model", "at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    request_id: Mapped[str] = mapped_column(String(100))
    label: Mapped[Any] = mapped_column(JSON)  # one value, or a list with one per input row
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))


class DriftReportRow(Base):
    """One drift check of a model's logged inputs against its version's reference statistics."""

    __tablename__ = "drift_reports"
    __table_args__ = (Index("ix_drift_reports_model", "model", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rows: Mapped[int] = mapped_column(Integer)
    share: Mapped[float] = mapped_column(Float)  # share of features that drifted
    drifted: Mapped[bool] = mapped_column(Boolean)  # the dataset-level verdict
    report: Mapped[dict[str, Any]] = mapped_column(JSON)  # per feature: test, score, verdict
    created_by: Mapped[str] = mapped_column(String(200))


class MonitorEventRow(Base):
    """Something monitoring noticed or did: an alert fired, a retraining triggered, a run done."""

    __tablename__ = "monitor_events"
    __table_args__ = (Index("ix_monitor_events_model", "model", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    model: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(50))  # alert | trigger | retrain | ...
    name: Mapped[str] = mapped_column(String(200))  # the rule or trigger that fired
    severity: Mapped[str] = mapped_column(String(20))  # info | warning | critical
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class LeaseRow(Base):
    """A named lease one process holds until ``expires_at`` (one retraining per model, ...)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PrecomputedRow(Base):
    """A precomputed answer of one version for one key (migration 0008; the online store
    ``store: registry``). ``written_at`` is unix seconds: the server compares it with the TTL."""

    __tablename__ = "precomputed"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    answer: Mapped[str] = mapped_column(Text)
    written_at: Mapped[float] = mapped_column(Float)


class PrecomputedManifestRow(Base):
    """The batch manifest of a version's last precompute run (resume, or start afresh)."""

    __tablename__ = "precomputed_manifests"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    manifest: Mapped[str] = mapped_column(Text)



class PrincipalRow(Base):
    """A user or a service account (migration 0009): who an API key stands for."""

    __tablename__ = "principals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # "user" or "service"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiKeyRow(Base):
    """One API key (migration 0009): its public id, a slow salted hash of its secret (never the
    secret), the role and model scope it grants, and when it expires or was revoked."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_principal", "principal_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"))
    role: Mapped[str] = mapped_column(String(40))
    models: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    note: Mapped[str] = mapped_column(String(300), server_default="")


__all__ = [
    "AliasEventRow", "AliasRow", "ApiKeyRow", "AuditRow", "Base", "DataSourceRow",
    "DeploymentEventRow",
    "DeploymentRow", "DeploymentWindowRow", "DriftReportRow", "LabelRow", "LeaseRow", "ModelRow",
    "MonitorEventRow", "PrecomputedManifestRow", "PrecomputedRow", "PredictionRow",
    "PrincipalRow", "RunRow", "UTCDateTime", "VersionRow",
]
