"""The monitoring facade: ``Monitor(registry)``, called by the server, CLI, admin API, scheduler.

::

    m = Monitor(registry)
    m.feedback("fraud", {"req-1": 1, "req-2": 0})      # delayed labels, by request id
    m.metrics("fraud")                                  # declared metrics per version, last window
    m.latency("fraud")                                  # p50/p99 of logged requests
    m.check_drift("fraud")                              # logged inputs vs reference statistics
    m.drift_reports("fraud"); m.events("fraud")
    m.lookup("fraud", "req-1")                          # what the log holds of one request
    m.enforce_retention()                               # delete what monitoring.retention_days
                                                        # no longer keeps (the server does this)

Settings per model come from its production version (its registered ``monitoring:`` section and
metric names, read through :class:`~modelyard.version_settings.VersionSettings`): the window, the
rows a drift check needs, the drift share that makes the dataset drifted and how long the log
keeps requests. Predictions are read from the prediction log's
store (:func:`modelyard.monitoring.logstore.open_store`); labels, drift reports and events live in
the registry database.

Labels are stored whether or not their prediction is logged yet, and joined to it whenever
metrics are computed, so feedback sent right after an answer (before the log's writer has run)
counts once the prediction is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from sqlalchemy import delete, func, select

from modelyard.errors import ConfigError, MonitoringError, NotFoundError
from modelyard.monitoring.logstore import (
    DatabaseStore,
    LogBatch,
    LoggedPrediction,
    LogStore,
    open_store,
)
from modelyard.monitoring.quality import MetricWindow, metric_windows, regression_p_value
from modelyard.pipeline.fairness import rules_of
from modelyard.registry.records import Record
from modelyard.registry.rows import audit, model_row, now
from modelyard.registry.tables import DriftReportRow, LabelRow, MonitorEventRow
from modelyard.version_settings import VersionSettings

if TYPE_CHECKING:
    from modelyard.registry import Registry
    from modelyard.registry.records import ModelVersion
    from modelyard.spec import FairnessRule

#: most logged requests one metric or drift computation reads (the newest ones).
MAX_REQUESTS = 50_000
MAX_REQUEST_ID = 100
_UNSET: Any = object()


@dataclass(frozen=True)
class FeedbackResult(Record):
    """What a feedback call stored: labels written, and how many match a logged prediction.

    A label whose prediction is not logged yet (the log writes about once a second) is kept
    and joined when it is: ``pending`` counts those. ``matched`` and ``pending`` are None where
    the store is not searched at feedback time (Parquet files).
    """

    model: str
    stored: int
    matched: int | None
    unmatched: list[str] = field(default_factory=list)  # the first few request ids not logged
    pending: int | None = None
    message: str = ""


@dataclass(frozen=True)
class RequestLookup(Record):
    """One request id's logged predictions (a shadow copy shares its request's id) and label."""

    model: str
    request_id: str
    #: each with ``at``, ``version``, ``variant``, ``latency_ms``, ``rows``, ``inputs`` (the
    #: summary the log keeps) and ``outputs`` (``{"error": status}`` for a failed request).
    predictions: list[dict[str, Any]]
    labeled: bool = False
    label: Any = None


@dataclass(frozen=True)
class RetentionResult(Record):
    """What one retention sweep deleted of a model: requests and labels from before ``before``."""

    model: str
    retention_days: float
    before: datetime
    predictions: int
    labels: int


@dataclass(frozen=True)
class LatencySummary(Record):
    """Latency of a model's logged requests over a window (None: nothing logged)."""

    model: str
    requests: int
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float | None = None  # share of logged requests that failed (5xx)


@dataclass(frozen=True)
class DriftCheck(Record):
    """One stored drift check: share of drifted features, the verdict and per-feature detail."""

    id: int
    model: str
    version: int
    at: datetime
    window_start: datetime | None
    window_end: datetime | None
    rows: int
    share: float
    drifted: bool
    report: dict[str, Any]


@dataclass(frozen=True)
class MonitorEvent(Record):
    """Something monitoring noticed or did (an alert, a retraining trigger, a run's result)."""

    id: int
    at: datetime
    model: str
    kind: str
    name: str
    severity: str
    message: str
    details: dict[str, Any]


class Monitor:
    """Prediction log reads, feedback, metrics, latency, drift and events for registered models."""

    def __init__(self, registry: Registry, store: LogStore | None = _UNSET) -> None:
        self.registry = registry
        self.store = open_store(registry) if store is _UNSET else store

    # -- model settings -------------------------------------------------------------------------
    def watched_version(self, model: str, version: int | None = None) -> ModelVersion:
        """The version monitoring compares with: ``version``, else production, else the latest."""
        if version is not None:
            return self.registry.get_version(model, version)
        found = self.registry.get_model(model)
        served = found.aliases.get("production") or found.latest_version
        if not served:
            raise NotFoundError(f"model '{model}' has no versions yet; train it first")
        return self.registry.get_version(model, served)

    @staticmethod
    def settings(version: ModelVersion) -> VersionSettings:
        """The version's registered settings; a malformed section is logged and its defaults
        apply (monitoring every other model must go on), as do a missing one's."""
        return VersionSettings.of(version, strict=False)

    def _since(self, model: str, since: datetime | None,
               settings: VersionSettings | None = None) -> datetime:
        """``since``, else the start of the window of the watched version (read once)."""
        if since is not None:
            return since
        settings = settings or self.settings(self.watched_version(model))
        return now() - timedelta(seconds=settings.monitoring.window_s)

    # -- prediction log -------------------------------------------------------------------------
    def log_predictions(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Write prediction log rows directly (the server's log does this in batches): each a
        mapping of :data:`~modelyard.monitoring.logstore.LOG_COLUMNS` (see
        :meth:`LogBatch.of <modelyard.monitoring.logstore.LogBatch.of>`)."""
        if self.store is None:
            raise ConfigError("the prediction log is off (MODELYARD_PREDICTION_LOG=off)")
        try:
            batch = LogBatch.of(rows)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"a prediction log row is missing or has a bad field: {exc}") from exc
        self.store.write(batch)
        return len(batch)

    def predictions(self, model: str, *, since: datetime | None = None,
                    until: datetime | None = None, version: int | None = None,
                    versions: Sequence[int] | None = None, limit: int | None = MAX_REQUESTS,
                    with_inputs: bool = True) -> list[LoggedPrediction]:
        """Logged requests of ``model`` in ``[since, until)``, oldest first."""
        if self.store is None:
            return []
        if version is not None:
            versions = [version]
        return self.store.read(model, since=since, until=until, versions=versions, limit=limit,
                               with_inputs=with_inputs)

    # -- feedback -------------------------------------------------------------------------------
    def feedback(self, model: str, labels: Mapping[str, Any] | Iterable[tuple[str, Any]],
                 *, actor: str | None = None) -> FeedbackResult:
        """Store ground truth by request id (a later label for the same id replaces it); audited
        as ``labels.store`` under ``actor``."""
        pairs = list(labels.items()) if isinstance(labels, Mapping) else list(labels)
        if not pairs:
            raise ConfigError("feedback needs at least one {request_id, label} pair")
        for request_id, label in pairs:
            if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
                raise ConfigError(f"request_id must be a string of 1 to {MAX_REQUEST_ID} "
                                  f"characters, got {request_id!r}")
            if label is None:
                raise ConfigError(f"label of request {request_id!r} is missing (null)")
            try:
                orjson.dumps(label)
            except TypeError:
                raise ConfigError(f"label of request {request_id!r} is not JSON: "
                                  f"{type(label).__name__}") from None
        by_id = dict(pairs)  # the last label of a repeated id wins
        who = actor or self.registry.settings.actor
        at = now()
        with self.registry.db.session(write=True) as s:
            model_row(s, model)  # unknown model: NotFoundError before anything is written
            _upsert_labels(s, [{"model": model, "request_id": r, "label": v, "at": at,
                                "actor": who} for r, v in by_id.items()])
            # labels steer rollbacks and retraining: who sent them is part of the record
            audit(s, who, "labels.store", model, {"labels": len(by_id)})
        return _feedback_result(model, list(by_id), self._logged_ids(model, list(by_id)))

    def _logged_ids(self, model: str, request_ids: list[str]) -> set[str] | None:
        """Which of ``request_ids`` are logged; None where finding out costs a scan of files."""
        if not isinstance(self.store, DatabaseStore):
            return None
        return {p.request_id for p in self.store.find(model, request_ids)}

    def lookup(self, model: str, request_id: str) -> RequestLookup:
        """What the log holds of one request, and its label: :class:`NotFoundError` if nothing."""
        self.registry.get_model(model)  # an unknown model: NotFoundError naming it
        found = self.store.find(model, [request_id]) if self.store is not None else []
        labels = self.labels(model, [request_id])
        if not found:
            where = ("the prediction log is off (MODELYARD_PREDICTION_LOG=off)"
                     if self.store is None else
                     "it was not sampled (serving.sample_rate), not written yet (the log writes "
                     "about once a second), deleted by monitoring.retention_days, or never "
                     "answered")
            raise NotFoundError(f"no logged prediction of '{model}' has request id "
                                f"{request_id!r}: {where}"
                                + ("; a label is stored for it" if labels else ""))
        predictions = [{"at": p.at.isoformat(), "version": p.version, "variant": p.variant,
                        "latency_ms": p.latency_ms, "rows": p.rows, "inputs": p.inputs,
                        "outputs": p.outputs} for p in found]
        return RequestLookup(model, request_id, predictions, request_id in labels,
                             labels.get(request_id))

    def lookup_everywhere(self, request_id: str) -> list[RequestLookup]:
        """:meth:`lookup` of ``request_id`` in every model's log (ids are unique per model only);
        :class:`NotFoundError` when no model logged it."""
        found = []
        for model in self.registry.list_models():
            with contextlib.suppress(NotFoundError):
                found.append(self.lookup(model.name, request_id))
        if not found:
            raise NotFoundError(f"no model's prediction log has request id {request_id!r}: it "
                                "was not sampled, not written yet, deleted by "
                                "monitoring.retention_days, or never answered")
        return found

    def labels(self, model: str, request_ids: Sequence[str]) -> dict[str, Any]:
        """The labels that arrived for ``request_ids``."""
        out: dict[str, Any] = {}
        with self.registry.db.session() as s:
            for chunk in _chunks(list(dict.fromkeys(request_ids)), 500):
                rows = s.execute(select(LabelRow.request_id, LabelRow.label).where(
                    LabelRow.model == model, LabelRow.request_id.in_(chunk)))
                out.update((request_id, label) for request_id, label in rows)
        return out

    # -- retention ------------------------------------------------------------------------------
    def enforce_retention(self, *, at: datetime | None = None) -> list[RetentionResult]:
        """Delete each model's logged predictions and labels older than its
        ``monitoring.retention_days`` (read from the watched version; None keeps them)."""
        results = []
        current = at or now()
        for found in self.registry.list_models():
            if not found.latest_version:
                continue
            days = self.settings(self.watched_version(found.name)).monitoring.retention_days
            if days is None:
                continue
            before = current - timedelta(days=days)
            predictions = (self.store.delete_before(found.name, before)
                           if self.store is not None else 0)
            results.append(RetentionResult(found.name, days, before, predictions,
                                           self._delete_labels(found.name, before)))
        return results

    def _delete_labels(self, model: str, before: datetime, batch: int = 5000) -> int:
        """Delete the labels of ``model`` that arrived before ``before``, ``batch`` at a time."""
        old = select(LabelRow.id).where(LabelRow.model == model, LabelRow.at < before)
        total = 0
        while True:
            with self.registry.db.session(write=True) as s:
                result = s.execute(delete(LabelRow).where(LabelRow.id.in_(old.limit(batch))),
                                   execution_options={"synchronize_session": False})
                deleted = int(getattr(result, "rowcount", 0) or 0)
            total += deleted
            if deleted < batch:
                return total

    def labels_since(self, model: str, since: datetime | None) -> int:
        """How many labels of ``model`` arrived since ``since`` (all, when None)."""
        query = select(func.count()).select_from(LabelRow).where(LabelRow.model == model)
        if since is not None:
            query = query.where(LabelRow.at >= since)
        with self.registry.db.session() as s:
            return int(s.scalar(query) or 0)

    # -- metrics and latency --------------------------------------------------------------------
    def metrics(self, model: str, *, since: datetime | None = None,
                until: datetime | None = None, version: int | None = None,
                versions: Sequence[int] | None = None, names: Sequence[str] | None = None,
                by_variant: bool = True, errors: bool = False,
                every: timedelta | None = None) -> list[MetricWindow]:
        """Declared metrics per version (and variant) over the window, from fed-back labels;
        ``every`` splits the window into a series, ``errors`` adds bootstrap standard errors.
        Without ``names``, the watched version's declared metrics and its fairness rules (with
        the ``fairness_gap`` value; their groups are read from the logged inputs)."""
        settings = None
        rules: list[FairnessRule] = []
        if names is None or since is None:
            watched = self.watched_version(model)
            settings = self.settings(watched)
            if names is None:
                names = settings.watched_metrics(watched.metrics)
                rules = rules_of(watched.meta)
        start = self._since(model, since, settings)
        logged = self.predictions(model, since=start, until=until, version=version,
                                  versions=versions, with_inputs=bool(rules))
        labels = self.labels(model, [p.request_id for p in logged])
        return metric_windows(model, logged, labels, names, group_by_variant=by_variant,
                              errors=errors, every=every, fairness=rules)

    def latency(self, model: str, *, since: datetime | None = None) -> LatencySummary:
        """p50 and p99 latency of the answered requests in the window, and the share that
        failed (5xx) among the logged ones."""
        logged = self.predictions(model, since=self._since(model, since), with_inputs=False)
        if not logged:
            return LatencySummary(model, 0, None, None)
        answered = [p.latency_ms for p in logged if "error" not in p.outputs]
        error_rate = round(1.0 - len(answered) / len(logged), 6)
        if not answered:
            return LatencySummary(model, len(logged), None, None, error_rate)
        p50, p99 = np.percentile(np.asarray(answered, dtype=float), [50, 99])
        return LatencySummary(model, len(logged), round(float(p50), 3), round(float(p99), 3),
                              error_rate)

    # -- drift ----------------------------------------------------------------------------------
    def check_drift(self, model: str, *, version: int | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    actor: str | None = None, store: bool = True) -> DriftCheck:
        """Compare logged inputs in the window with the version's reference statistics; a stored
        check is audited as ``drift.check`` under ``actor``."""
        from modelyard.monitoring.drift import compare
        from modelyard.monitoring.summary import current_from_log

        watched = self.watched_version(model, version)
        if not watched.reference_stats:
            raise MonitoringError(f"{watched.ref} has no reference statistics to compare with; "
                                  "retrain it with this modelyard version")
        declared = self.settings(watched)
        settings = declared.monitoring
        start = self._since(model, since, declared)
        end = until or now()
        logged = [p for p in self.predictions(model, since=start, until=end)
                  if "error" not in p.outputs]
        rows = sum(p.rows for p in logged)
        if rows < settings.min_rows:
            raise MonitoringError(
                f"{model}: {rows} logged rows since {start:%Y-%m-%d %H:%M:%S}, a drift check "
                f"needs {settings.min_rows} (monitoring.min_rows); send traffic or widen --since")
        current = current_from_log([p.inputs for p in logged], watched.reference_stats)
        report = compare(watched.reference_stats, current, drift_share=settings.drift_share)
        row = DriftReportRow(model=model, version=watched.version, at=end, window_start=start,
                             window_end=end, rows=report.rows, share=report.share,
                             drifted=report.drifted, report=report.to_dict(),
                             created_by=actor or self.registry.settings.actor)
        if store:
            with self.registry.db.session(write=True) as s:
                s.add(row)
                s.flush()
                audit(s, row.created_by, "drift.check", f"{model}:{watched.version}",
                      {"check": row.id, "rows": report.rows, "share": report.share,
                       "drifted": report.drifted})
                return _drift_check(row)
        return _drift_check(row, 0)

    def drift_reports(self, model: str, *, limit: int = 20) -> list[DriftCheck]:
        """Stored drift checks of ``model``, newest first."""
        with self.registry.db.session() as s:
            model_row(s, model)
            rows = s.scalars(select(DriftReportRow).where(DriftReportRow.model == model)
                             .order_by(DriftReportRow.id.desc()).limit(limit))
            return [_drift_check(r) for r in rows]

    def latest_drift(self) -> dict[str, DriftCheck]:
        """Each model's newest stored drift check, by model name (one query)."""
        newest = select(func.max(DriftReportRow.id)).group_by(DriftReportRow.model)
        with self.registry.db.session() as s:
            rows = s.scalars(select(DriftReportRow).where(DriftReportRow.id.in_(newest)))
            return {r.model: _drift_check(r) for r in rows}

    # -- events ---------------------------------------------------------------------------------
    def add_event(self, model: str, kind: str, name: str, message: str, *,
                  severity: str = "info", details: Mapping[str, Any] | None = None,
                  ) -> MonitorEvent:
        """Record a monitoring event (and an audit event ``monitor.<kind>`` on the model)."""
        if severity not in ("info", "warning", "critical"):
            raise ConfigError(f"severity {severity!r}: use info, warning or critical")
        row = MonitorEventRow(at=now(), model=model, kind=kind, name=name, severity=severity,
                              message=message, details=dict(details or {}))
        with self.registry.db.session(write=True) as s:
            s.add(row)
            audit(s, "monitor", f"monitor.{kind}", model,
                  {"name": name, "severity": severity, "message": message})
            s.flush()
            return _event(row)

    def events(self, model: str | None = None, *, kind: str | None = None,
               name: str | None = None, since: datetime | None = None,
               limit: int = 100) -> list[MonitorEvent]:
        """Monitoring events, newest first, filtered by model, kind, name and time."""
        query = select(MonitorEventRow)
        if model is not None:
            query = query.where(MonitorEventRow.model == model)
        if kind is not None:
            query = query.where(MonitorEventRow.kind == kind)
        if name is not None:
            query = query.where(MonitorEventRow.name == name)
        if since is not None:
            query = query.where(MonitorEventRow.at >= since)
        with self.registry.db.session() as s:
            rows = s.scalars(query.order_by(MonitorEventRow.id.desc()).limit(limit))
            return [_event(r) for r in rows]


def _feedback_result(model: str, request_ids: list[str],
                     logged: set[str] | None) -> FeedbackResult:
    """How many labels met their prediction, and what happens to the others."""
    stored = len(request_ids)
    if logged is None:
        return FeedbackResult(model, stored, None, [], None,
                              "labels stored; the Parquet prediction log is not searched at "
                              "feedback time: labels join their predictions when metrics are "
                              "computed")
    unmatched = [r for r in request_ids if r not in logged]
    if not unmatched:
        return FeedbackResult(model, stored, stored, [], 0,
                              "every label matches a logged prediction")
    return FeedbackResult(
        model, stored, stored - len(unmatched), unmatched[:20], len(unmatched),
        f"{len(unmatched)} of {stored} labels match no logged prediction yet: they are kept and "
        "joined when the prediction is logged (servers write their log about once a second); "
        "a request that was not sampled (serving.sample_rate) or never answered never matches")


def _upsert_labels(s: Any, rows: list[dict[str, Any]]) -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for chunk in _chunks(rows, 500):
        stmt = insert(LabelRow).values(chunk)
        s.execute(stmt.on_conflict_do_update(
            index_elements=["model", "request_id"],
            set_={"label": stmt.excluded.label, "at": stmt.excluded.at,
                  "actor": stmt.excluded.actor}))


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _drift_check(row: DriftReportRow, ident: int | None = None) -> DriftCheck:
    return DriftCheck(row.id if ident is None else ident, row.model, row.version, row.at,
                      row.window_start, row.window_end, row.rows, row.share, row.drifted,
                      dict(row.report))


def _event(row: MonitorEventRow) -> MonitorEvent:
    return MonitorEvent(row.id, row.at, row.model, row.kind, row.name, row.severity,
                        row.message, dict(row.details))


def rollout_metric(registry: Registry, model: str, metric: str, versions: Mapping[str, int],
                   since: datetime | None,
                   ) -> dict[str, tuple[int, float | None, float | None, float | None]]:
    """``variant -> (labeled rows, metric value, its standard error, p)`` of a rollout's
    versions, where ``p`` (the candidate's only) is how likely chance alone makes the candidate
    look at least this much worse than stable (:func:`~.quality.regression_p_value`).

    What rollout analysis compares for the declared metric, over the labels fed back for
    predictions made since ``since``; reads the prediction log and the labels table.
    """
    monitor = Monitor(registry)
    logged = monitor.predictions(model, since=monitor._since(model, since),
                                 versions=list(versions.values()), with_inputs=False)
    labels = monitor.labels(model, [p.request_id for p in logged])
    windows = metric_windows(model, logged, labels, [metric], group_by_variant=False,
                             errors=True)
    found = {w.version: w for w in windows}
    stable, candidate = versions.get("stable"), versions.get("candidate")
    p_value = None if stable is None or candidate is None or stable == candidate else \
        regression_p_value(metric, logged, labels, stable, candidate)
    out: dict[str, tuple[int, float | None, float | None, float | None]] = {}
    for variant, version in versions.items():
        window = found.get(version)
        p = p_value if variant == "candidate" else None
        out[variant] = (0, None, None, p) if window is None else (
            window.labeled, window.values.get(metric), window.errors.get(metric), p)
    return out


__all__ = ["DriftCheck", "FeedbackResult", "LatencySummary", "MetricWindow", "Monitor",
           "MonitorEvent", "MonitoringError", "RequestLookup", "RetentionResult", "rollout_metric"]
