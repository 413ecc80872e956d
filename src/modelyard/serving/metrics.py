"""Prometheus metrics of one server, in a registry of its own (two apps never share counters).

Every series has ``model`` and ``version`` labels; request counts and durations also have
``variant``: ``production`` without a rollout, ``stable`` or ``candidate`` while one routes the
model.
Requests for models that do not exist are counted with ``model=""`` so that callers cannot
create unbounded label values.

======================================  =========  ===========================================
``modelyard_requests_total``            counter    requests by protocol, status and variant
``modelyard_request_duration_seconds``  histogram  time from request to response, by variant
``modelyard_queue_seconds``             histogram  time a request waited for its batch
``modelyard_batch_size``                histogram  rows per model call
``modelyard_model_loaded``              gauge      1 for each loaded version
``modelyard_model_memory_bytes``        gauge      estimated bytes held by each loaded version
``modelyard_models_loaded``             gauge      number of loaded versions
``modelyard_worker_up``                 gauge      1 while a version's device worker answers
``modelyard_worker_restarts_total``     counter    device worker restart attempts
``modelyard_shadow_dropped_total``      counter    shadow copies dropped (candidate queue full)
``modelyard_prediction_log_written_total``  counter  predictions written to the prediction log
``modelyard_prediction_log_dropped_total``  counter  predictions dropped (queue full, store down)
``modelyard_prediction_log_pending``    gauge      predictions queued for the log
``modelyard_model_metric``              gauge      a declared metric over the monitoring window,
                                                   from fed-back labels (``metric`` label)
``modelyard_labeled_rows``              gauge      rows with labels in the monitoring window
``modelyard_drift_share``               gauge      share of drifted features, latest drift check
``modelyard_drift_detected``            gauge      1 when the latest check found dataset drift
``modelyard_feature_drift_score``       gauge      latest drift statistic of each feature
======================================  =========  ===========================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The server's metric families; ``for_version`` gives cheap per-version handles."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelyard_requests", "Prediction requests by status.",
            ("model", "version", "protocol", "status", "variant"), registry=r,
        )
        self.duration = Histogram(
            "modelyard_request_duration_seconds", "Time from request to response.",
            ("model", "version", "variant"), buckets=_LATENCY, registry=r,
        )
        self.queue = Histogram(
            "modelyard_queue_seconds", "Time a request waited in the queue for its batch.",
            ("model", "version"), buckets=_LATENCY, registry=r,
        )
        self.batch = Histogram(
            "modelyard_batch_size", "Rows per model call.",
            ("model", "version"), buckets=_BATCH, registry=r,
        )
        self.loaded = Gauge(
            "modelyard_model_loaded", "1 while the version is loaded.",
            ("model", "version"), registry=r,
        )
        self.memory = Gauge(
            "modelyard_model_memory_bytes", "Estimated bytes held by the loaded version.",
            ("model", "version"), registry=r,
        )
        self.count = Gauge(
            "modelyard_models_loaded", "Number of loaded model versions.", registry=r
        )
        self.worker_up = Gauge(
            "modelyard_worker_up", "1 while the version's device worker answers, 0 while down.",
            ("model", "version"), registry=r,
        )
        self.restarts = Counter(
            "modelyard_worker_restarts", "Device worker restart attempts.",
            ("model", "version"), registry=r,
        )
        self.shadow_dropped = Counter(
            "modelyard_shadow_dropped", "Shadow copies dropped because the candidate was busy.",
            ("model", "version"), registry=r,
        )
        self.quality = Gauge(
            "modelyard_model_metric",
            "A declared metric over the monitoring window, computed from fed-back labels.",
            ("model", "version", "variant", "metric"), registry=r,
        )
        self.labeled = Gauge(
            "modelyard_labeled_rows", "Rows with fed-back labels in the monitoring window.",
            ("model", "version", "variant"), registry=r,
        )
        self.drift_share = Gauge(
            "modelyard_drift_share", "Share of drifted features in the latest drift check.",
            ("model", "version"), registry=r,
        )
        self.drift_detected = Gauge(
            "modelyard_drift_detected", "1 when the latest drift check found dataset drift.",
            ("model", "version"), registry=r,
        )
        self.feature_drift = Gauge(
            "modelyard_feature_drift_score", "The latest drift statistic of each feature.",
            ("model", "feature", "test"), registry=r,
        )
        self._status: dict[tuple[str, str, str, int, str], Any] = {}

    def watch_prediction_log(self, predlog: Any) -> None:
        """Export the prediction log's written, dropped and pending counts."""
        self.registry.register(_LogCollector(predlog))

    def set_quality(self, windows: Iterable[Any]) -> None:
        """Replace the metric gauges with these :class:`MetricWindow` values."""
        self.quality.clear()
        self.labeled.clear()
        for w in windows:
            self.labeled.labels(w.model, str(w.version), w.variant).set(w.labeled)
            for metric, value in w.values.items():
                if value is not None:
                    self.quality.labels(w.model, str(w.version), w.variant, metric).set(value)

    def set_drift(self, checks: Iterable[Any]) -> None:
        """Replace the drift gauges with the latest :class:`DriftCheck` of each model."""
        self.drift_share.clear()
        self.drift_detected.clear()
        self.feature_drift.clear()
        for check in checks:
            self.drift_share.labels(check.model, str(check.version)).set(check.share)
            self.drift_detected.labels(check.model, str(check.version)).set(int(check.drifted))
            features = dict(check.report.get("features") or {})
            embedding = check.report.get("embedding")
            if embedding:
                features["embedding"] = embedding
            for feature, found in features.items():
                self.feature_drift.labels(check.model, feature, str(found.get("test", ""))).set(
                    float(found.get("score") or 0.0))

    def for_version(self, model: str, version: str) -> VersionMetrics:
        """Handles bound to one version's labels (looked up once, used per request)."""
        return VersionMetrics(self, model, version)

    def count_request(self, model: str, version: str, protocol: str, status: int,
                      variant: str = "production") -> None:
        """Count one request (children are cached: no label lookup after the first)."""
        key = (model, version, protocol, status, variant)
        child = self._status.get(key)
        if child is None:
            child = self._status[key] = self.requests.labels(model, version, protocol,
                                                             str(status), variant)
        child.inc()

    def set_loaded(self, loaded: Iterable[tuple[str, str, int]]) -> None:
        """Replace the loaded-model gauges with ``(model, version, bytes)`` for each loaded one."""
        rows = list(loaded)
        self.loaded.clear()
        self.memory.clear()
        for model, version, size in rows:
            self.loaded.labels(model, version).set(1)
            self.memory.labels(model, version).set(size)
        self.count.set(len(rows))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class VersionMetrics:
    """Metric children for one ``(model, version)``."""

    __slots__ = ("_batch", "_duration", "_queue", "_server", "_variants", "model", "version")

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self._server = metrics
        self._duration = metrics.duration.labels(model, version, "production")
        self._variants: dict[str, Any] = {}
        self._queue = metrics.queue.labels(model, version)
        self._batch = metrics.batch.labels(model, version)

    def observe_duration(self, seconds: float, variant: str = "production") -> None:
        """Record one request's duration under the variant that answered it."""
        if variant == "production":
            self._duration.observe(seconds)
            return
        child = self._variants.get(variant)
        if child is None:
            child = self._variants[variant] = self._server.duration.labels(
                self.model, self.version, variant)
        child.observe(seconds)

    def observe_batch(self, rows: int, queue_s: list[float]) -> None:
        """Record one batch: its size and how long each of its requests queued."""
        self._batch.observe(rows)
        observe = self._queue.observe
        for q in queue_s:
            observe(q)

    def worker_up(self, up: bool) -> None:
        """Mark the version's device worker up or down (only worker-hosted versions report)."""
        self._server.worker_up.labels(self.model, self.version).set(1 if up else 0)
        self._server.restarts.labels(self.model, self.version)  # the series exists from 0

    def count_restart(self) -> None:
        """Count one attempt to restart the version's device worker."""
        self._server.restarts.labels(self.model, self.version).inc()


class _LogCollector:
    """Reads the prediction log's counters at scrape time (no work on the request path)."""

    def __init__(self, predlog: Any) -> None:
        self.predlog = predlog

    def describe(self) -> list[Any]:
        return list(self.collect())

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        log = self.predlog
        yield CounterMetricFamily("modelyard_prediction_log_written",
                                  "Predictions written to the prediction log.", log.written)
        yield CounterMetricFamily(
            "modelyard_prediction_log_dropped",
            "Predictions dropped from the log (queue full or store failing).", log.dropped)
        yield GaugeMetricFamily("modelyard_prediction_log_pending",
                                "Predictions queued for the prediction log.", log.pending)
        yield CounterMetricFamily(
            "modelyard_prediction_log_cpu_seconds",
            "CPU time the prediction log's writer spent summarising and storing.", log.cpu_s)


__all__ = ["CONTENT_TYPE", "ServerMetrics", "VersionMetrics"]
