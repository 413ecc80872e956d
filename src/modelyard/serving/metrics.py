"""Prometheus metrics of one server, in a registry of its own (two apps never share counters).

Under ``--workers N`` every worker process counts its own requests: :func:`shared_dir` names a
fresh folder before the workers start, prometheus-client's multiprocess mode keeps each
worker's values in files there, and whichever worker answers ``/metrics`` sums them (gauges
by their ``multiprocess_mode``: loaded versions by the most, memory by the sum, a worker up
by the least of the live processes). The monitoring gauges come from the shared registry
database, so the answering worker's own values are the server's.

Every series has ``model`` and ``version`` labels; request counts and durations also have
``variant``: ``production`` without a rollout, ``stable`` or ``candidate`` while one routes the
model.
Requests for models that do not exist are counted with ``model=""`` so that callers cannot
create unbounded label values.

======================================  =========  ===========================================
``modelyard_requests_total``            counter    requests by protocol, status and variant
``modelyard_request_duration_seconds``  histogram  time from request to response, by variant
``modelyard_prediction_source_total``   counter    requests of models with precomputed answers
                                                   by ``source``: precomputed, live, mixed
``modelyard_queue_seconds``             histogram  time a request waited for its batch
``modelyard_batch_size``                histogram  rows per model call
``modelyard_model_loaded``              gauge      1 for each loaded version
``modelyard_model_memory_bytes``        gauge      bytes each loaded version is charged against
                                                   ``--max-memory``: the resident memory its load
                                                   grew the process by (or its estimate, when
                                                   larger); a device worker's resident memory
``modelyard_framework_memory_bytes``    gauge      what a framework's first import and set-up
                                                   took (``framework`` label: the flavor); never
                                                   evicted, not charged to the budget
``modelyard_memory_budget_bytes``       gauge      ``--max-memory`` (absent without one)
``modelyard_models_loaded``             gauge      number of loaded versions
``modelyard_model_load_seconds``        histogram  time to load and warm a version, by
                                                   ``reason``: ``preload``, ``first``, ``idle``
                                                   (after ``--idle-unload``), ``memory`` (after
                                                   an eviction), ``reload``
``modelyard_worker_up``                 gauge      1 while a version's device worker answers
``modelyard_worker_restarts_total``     counter    device worker restart attempts
``modelyard_shadow_dropped_total``      counter    shadow copies dropped (candidate queue full)
``modelyard_prediction_log_written_total``  counter  predictions written to the prediction log
``modelyard_prediction_log_dropped_total``  counter  predictions dropped (queue full, store down)
``modelyard_prediction_log_pending``    gauge      predictions queued for the log
``modelyard_prediction_log_cpu_seconds_total``  counter  CPU the log's writer spent
``modelyard_prediction_log_dropping``   gauge      1 while the log drops at least as much as it
                                                   writes (over the last minute): alert on it
``modelyard_model_metric``              gauge      a declared metric over the monitoring window,
                                                   from fed-back labels (``metric`` label)
``modelyard_labeled_rows``              gauge      rows with labels in the monitoring window
``modelyard_drift_share``               gauge      share of drifted features, latest drift check
``modelyard_drift_detected``            gauge      1 when the latest check found dataset drift
``modelyard_feature_drift_score``       gauge      latest drift statistic of each feature
``modelyard_run_cpu_seconds``           gauge      CPU of the model's training and batch runs
                                                   started in the last 30 days (``kind``)
======================================  =========  ===========================================

What each version costs (CPU and GPU seconds, memory over time, its batch limit and last
request) is in :mod:`modelyard.serving.cost_metrics`.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from modelyard.errors import ConfigError
from modelyard.serving.cost_metrics import CostMetrics

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_LOAD = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: one gauge sample: its label values and its value.
_Sample = tuple[tuple[str, ...], float]


#: the most seconds a batch's charge waits before it is added to the CPU and GPU counters (under
#: ``--workers``, a worker that answers no scrape adds it with its next batch after that)
CHARGE_FLUSH_S = 1.0
#: the variable prometheus-client reads, when it is imported, to keep values in files.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def shared_dir(parent: str | None = None) -> str:
    """A fresh, empty folder for the worker processes' metric files (under ``parent`` if given).

    Fresh per server start: files left by an earlier run would add its counts to this one's.
    """
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="modelyard-metrics-", dir=parent)


class ServerMetrics:
    """The server's metric families; ``for_version`` gives cheap per-version handles.

    ``multiprocess_dir``: the folder the worker processes of one server share (``--workers``);
    prometheus-client must have been imported with ``PROMETHEUS_MULTIPROC_DIR`` naming it.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is not None and not _values_in_files():
            raise ConfigError(f"metrics shared by worker processes need {MULTIPROCESS_ENV} set "
                              "before prometheus_client is imported; start the server with "
                              "modelyard serve --workers N")
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelyard_requests", "Prediction requests by status.",
            ("model", "version", "protocol", "status", "variant"), registry=r,
        )
        self.sources = Counter(
            "modelyard_prediction_source", "Prediction requests of models with precomputed "
            "answers, by where their answer came from (precomputed, live, mixed).",
            ("model", "version", "source"), registry=r,
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
            ("model", "version"), registry=r, multiprocess_mode="livemax",
        )
        self.memory = Gauge(
            "modelyard_model_memory_bytes",
            "Bytes the loaded version is charged against the memory budget: the resident memory "
            "its load and warm-up grew the process by (or its estimate when larger); a device "
            "worker's resident memory.",
            ("model", "version"), registry=r, multiprocess_mode="livesum",
        )
        self.framework_memory = Gauge(
            "modelyard_framework_memory_bytes",
            "Resident memory a framework's first import and set-up took in the process; never "
            "evicted and not charged to the memory budget.",
            ("framework",), registry=r, multiprocess_mode="livesum",
        )
        self.budget = Gauge(
            "modelyard_memory_budget_bytes",
            "The memory budget (--max-memory) the loaded versions are evicted under.",
            registry=r, multiprocess_mode="livesum",
        )
        self.count = Gauge(
            "modelyard_models_loaded", "Number of loaded model versions.", registry=r,
            multiprocess_mode="livesum",
        )
        self.load_time = Histogram(
            "modelyard_model_load_seconds",
            "Time to load and warm a version, by why it was not loaded: preload, first, idle "
            "(unloaded after --idle-unload), memory (evicted under --max-memory), reload.",
            ("model", "version", "reason"), buckets=_LOAD, registry=r,
        )
        self.worker_up = Gauge(
            "modelyard_worker_up", "1 while the version's device worker answers, 0 while down.",
            ("model", "version"), registry=r, multiprocess_mode="livemin",
        )
        self.restarts = Counter(
            "modelyard_worker_restarts", "Device worker restart attempts.",
            ("model", "version"), registry=r,
        )
        self.auth_failures = Counter(
            "modelyard_auth_failures", "Refused credentials: missing, invalid (unknown, "
            "expired, revoked), forbidden (no role or out of scope).",
            ("reason",), registry=r,
        )
        self.shadow_dropped = Counter(
            "modelyard_shadow_dropped", "Shadow copies dropped because the candidate was busy.",
            ("model", "version"), registry=r,
        )
        self.cost = CostMetrics(r)
        # read from the shared registry database, the same in every worker: plain values
        # rendered by whichever process answers, never summed across workers
        self._monitoring = _MonitoringCollector()
        r.register(self._monitoring)
        self._log: _LogMetrics | None = None
        self._on_scrape: list[Callable[[], None]] = []
        self._loaded_keys: set[tuple[str, str]] = set()
        self._status: dict[tuple[str, str, str, int, str], Any] = {}

    def watch_prediction_log(self, predlog: Any) -> None:
        """Export the prediction log's written, dropped, pending and dropping state.

        Read on the log's writer thread after each wake and at every scrape, so each worker
        process's counts reach the shared files within about a second.
        """
        self._log = _LogMetrics(predlog, self.registry)
        watchers = getattr(predlog, "watchers", None)
        if watchers is not None:
            watchers.append(self._log.sync)

    def set_quality(self, windows: Iterable[Any]) -> None:
        """Replace the metric gauges with these :class:`MetricWindow` values."""
        quality: list[_Sample] = []
        labeled: list[_Sample] = []
        for w in windows:
            labeled.append(((w.model, str(w.version), w.variant), float(w.labeled)))
            quality.extend(((w.model, str(w.version), w.variant, metric), float(value))
                           for metric, value in w.values.items() if value is not None)
        self._monitoring.replace(quality=quality, labeled=labeled)

    def set_drift(self, checks: Iterable[Any]) -> None:
        """Replace the drift gauges with the latest :class:`DriftCheck` of each model."""
        share: list[_Sample] = []
        detected: list[_Sample] = []
        scores: list[_Sample] = []
        for check in checks:
            share.append(((check.model, str(check.version)), float(check.share)))
            detected.append(((check.model, str(check.version)), float(int(check.drifted))))
            features = dict(check.report.get("features") or {})
            embedding = check.report.get("embedding")
            if embedding:
                features["embedding"] = embedding
            scores.extend(((check.model, feature, str(found.get("test", ""))),
                           float(found.get("score") or 0.0)) for feature, found in features.items())
        self._monitoring.replace(drift_share=share, drift_detected=detected,
                                 feature_drift=scores)

    def set_run_cpu(self, cpu: dict[tuple[str, str], float]) -> None:
        """Replace the run CPU gauge with ``{(model, kind): seconds}``."""
        self._monitoring.replace(run_cpu=[(key, value) for key, value in sorted(cpu.items())])

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

    def count_source(self, model: str, version: str, source: str) -> None:
        """Count one request of a model with precomputed answers under where its answer came
        from (``precomputed``, ``live`` or ``mixed``)."""
        self.sources.labels(model, version, source).inc()

    def set_loaded(self, loaded: Iterable[tuple[str, str, int]]) -> None:
        """Replace the loaded-model gauges with ``(model, version, bytes)`` for each loaded one."""
        rows = {(model, version): size for model, version, size in loaded}
        for key in self._loaded_keys - rows.keys():
            # zero first: under --workers the value lives on in the shared file after remove()
            self.loaded.labels(*key).set(0)
            self.memory.labels(*key).set(0)
            self.loaded.remove(*key)
            self.memory.remove(*key)
        for (model, version), size in rows.items():
            self.loaded.labels(model, version).set(1)
            self.memory.labels(model, version).set(size)
        self._loaded_keys = set(rows)
        self.count.set(len(rows))

    def set_framework(self, framework: str, size: int) -> None:
        """Record what importing and setting up ``framework`` (a flavor) took, in bytes."""
        self.framework_memory.labels(framework).set(size)

    def auth_failed(self, reason: str) -> None:
        """Count one refused credential (``missing``, ``invalid``, ``forbidden``)."""
        self.auth_failures.labels(reason).inc()

    def set_budget(self, size: int | None) -> None:
        """Export the memory budget (nothing without one)."""
        if size is not None:
            self.budget.set(size)

    def observe_load(self, model: str, version: str, reason: str, seconds: float) -> None:
        """Record one load of a version and why it was not loaded (see ``LOAD_REASONS``)."""
        self.load_time.labels(model, version, reason).observe(seconds)

    def refresh_on_scrape(self, refresh: Callable[[], None]) -> None:
        """Call ``refresh`` before each exposition (values that change without an event)."""
        self._on_scrape.append(refresh)

    def samples_of(self, family: Any) -> list[Any]:
        """Every sample of ``family`` (one of this object's metrics): this process's, or every
        worker's together under ``--workers`` (what ``/metrics`` would show of it)."""
        if self.multiprocess_dir is None:
            return [s for metric in family.collect() for s in metric.samples]
        wanted = {metric.name for metric in family.describe()}
        merged = MultiProcessCollector(None, self.multiprocess_dir)  # read now, registered nowhere
        return [s for metric in merged.collect() if metric.name in wanted
                for s in metric.samples]

    def render(self) -> bytes:
        """The text exposition format: this process's series, or every worker's under
        ``--workers``."""
        if self._log is not None:
            self._log.sync()
        for refresh in self._on_scrape:
            refresh()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        _forget_dead_workers(self.multiprocess_dir)
        merged = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(merged, self.multiprocess_dir)
        merged.register(self._monitoring)
        return generate_latest(merged)


class VersionMetrics:
    """Metric children for one ``(model, version)``."""

    __slots__ = ("_batch", "_charges", "_cpu", "_duration", "_flushed", "_gpu", "_queue",
                 "_server", "_variants", "last_request", "model", "version")

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self._server = metrics
        self._duration = metrics.duration.labels(model, version, "production")
        self._variants: dict[str, Any] = {}
        self._queue = metrics.queue.labels(model, version)
        self._batch = metrics.batch.labels(model, version)
        self._cpu = metrics.cost.cpu.labels(model, version)
        self._gpu: Any = None
        #: ``(cpu_s, gpu_s)`` of batches not yet in the counters: an append is atomic and costs
        #: a tenth of a counter's increment (which takes a lock), and a batch's thread and a
        #: scrape may both flush (each charge is popped by exactly one of them)
        self._charges: deque[tuple[float, float]] = deque()
        self._flushed = 0.0
        #: Unix time of the version's last charged batch (None: none yet)
        self.last_request: float | None = None

    def charge(self, cpu_s: float, gpu_s: float = 0.0) -> None:
        """Charge one batch's CPU and GPU seconds (once per batch, from the thread that ran it);
        they reach the counters within :data:`CHARGE_FLUSH_S`, at a scrape or when unloaded."""
        self._charges.append((cpu_s, gpu_s))
        now = self.last_request = time.time()
        if now - self._flushed >= CHARGE_FLUSH_S:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Add the charges not yet counted to the counters (any thread)."""
        self._flushed = time.time() if now is None else now
        cpu = gpu = 0.0
        charges = self._charges
        while charges:
            try:
                c, g = charges.popleft()
            except IndexError:  # another flush took the last one
                break
            cpu += c
            gpu += g
        if cpu:
            self._cpu.inc(cpu)
        if gpu:
            self.on_gpu().inc(gpu)

    def on_gpu(self) -> Any:
        """The version's GPU-seconds counter; calling it makes the series exist from 0 (which
        also tells ``modelyard cost`` the version runs on a GPU)."""
        if self._gpu is None:
            self._gpu = self._server.cost.gpu.labels(self.model, self.version)
        return self._gpu

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


class _LogMetrics:
    """The prediction log's counters as metrics: its totals copied in as they grow.

    Real counters rather than a collector reading the log at scrape time, so that under
    ``--workers`` every worker's counts are in the shared files, not only the answering one's.
    """

    def __init__(self, predlog: Any, registry: CollectorRegistry) -> None:
        self.predlog = predlog
        self.written = Counter("modelyard_prediction_log_written",
                               "Predictions written to the prediction log.", registry=registry)
        self.dropped = Counter(
            "modelyard_prediction_log_dropped",
            "Predictions dropped from the log (queue full, summary failed or store failing).",
            registry=registry)
        self.cpu = Counter(
            "modelyard_prediction_log_cpu_seconds",
            "CPU time the prediction log's writer spent summarising and storing.",
            registry=registry)
        self.pending = Gauge("modelyard_prediction_log_pending",
                             "Predictions queued for the prediction log.", registry=registry,
                             multiprocess_mode="livesum")
        self.dropping = Gauge(
            "modelyard_prediction_log_dropping",
            "1 while the prediction log drops at least as many predictions as it writes "
            "(over the last minute).", registry=registry, multiprocess_mode="livemax")
        self._seen = (0, 0, 0.0)
        self._lock = threading.Lock()

    def sync(self) -> None:
        """Add what the log counted since the last call; set its pending and dropping state."""
        log = self.predlog
        with self._lock:  # the writer thread and a scrape may both call it
            now = (log.written, log.dropped, log.cpu_s)
            for counter, before, after in zip((self.written, self.dropped, self.cpu), self._seen,
                                              now, strict=True):
                if after > before:
                    counter.inc(after - before)
            self._seen = now
            self.pending.set(log.pending)
            self.dropping.set(1 if log.health().dropping else 0)


class _MonitoringCollector:
    """The monitoring gauges (metrics from labels, drift), as plain values replaced whole."""

    _FAMILIES = {
        "quality": ("modelyard_model_metric",
                    "A declared metric over the monitoring window, computed from fed-back labels.",
                    ("model", "version", "variant", "metric")),
        "labeled": ("modelyard_labeled_rows",
                    "Rows with fed-back labels in the monitoring window.",
                    ("model", "version", "variant")),
        "drift_share": ("modelyard_drift_share",
                        "Share of drifted features in the latest drift check.",
                        ("model", "version")),
        "drift_detected": ("modelyard_drift_detected",
                           "1 when the latest drift check found dataset drift.",
                           ("model", "version")),
        "feature_drift": ("modelyard_feature_drift_score",
                          "The latest drift statistic of each feature.",
                          ("model", "feature", "test")),
        "run_cpu": ("modelyard_run_cpu_seconds",
                    "CPU seconds of the model's training and batch runs that started in the "
                    "last 30 days (from the registry).", ("model", "kind")),
    }

    def __init__(self) -> None:
        self._values: dict[str, list[_Sample]] = {key: [] for key in self._FAMILIES}

    def replace(self, **families: list[_Sample]) -> None:
        """Swap in new samples for the named families (each one assignment: no lock needed)."""
        self._values = {**self._values, **families}

    def describe(self) -> list[Any]:
        return list(self.collect())

    def collect(self) -> Iterable[Any]:
        values = self._values
        for key, (name, documentation, labels) in self._FAMILIES.items():
            family = GaugeMetricFamily(name, documentation, labels=labels)
            for label_values, value in values[key]:
                family.add_metric(label_values, value)
            yield family


def _values_in_files() -> bool:
    """Whether prometheus-client was imported in multiprocess mode (values kept in files)."""
    return prometheus_values.ValueClass is not prometheus_values.MutexValue


def _forget_dead_workers(folder: str) -> None:
    """Drop the live gauges of worker processes that have died (a restarted worker is new)."""
    pids = {name.rsplit("_", 1)[-1].removesuffix(".db") for name in os.listdir(folder)
            if name.startswith("gauge_live")}
    for pid in pids:
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


__all__ = ["CONTENT_TYPE", "MULTIPROCESS_ENV", "ServerMetrics", "VersionMetrics", "shared_dir"]
