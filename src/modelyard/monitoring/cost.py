"""Cost per model: what each model's serving, training and batch runs used over a window, what
that costs at given prices, and the cheapest ways to spend less (``modelyard cost``).

Pure: the figures come in as :class:`ServingUsage` (one loaded or once-loaded version, read from
a server's ``/metrics``: :mod:`modelyard.monitoring.cost_sources`) and :class:`RunUsage` (one
training or batch run from the registry), and :func:`build_report` decides.

**The window.** Runs are counted when they started in the window. A server's counters run from
its start: when it started before the window, its CPU seconds and memory are prorated to the
window's share of its uptime (the report says so); whether a version was used in the window is
exact (the time of its last batch).

**Savings**, cheapest to act on first (the largest estimated saving, then those without one):

- ``idle``: a loaded version with no request in the window costs its memory for nothing: unload
  it (``modelyard serve --idle-unload``) or stop serving it;
- ``low-traffic``: a loaded version with fewer than :data:`LOW_TRAFFIC_PER_HOUR` requests an
  hour keeps its memory for rare requests: ``--idle-unload`` loads it on demand instead, and saves
  most of its memory cost (each request after an unload pays one load);
- ``oversized-batch``: ``max_batch_size`` at least :data:`OVERSIZE_FACTOR` times the largest
  batch that formed: a DL model pads or pre-allocates for rows that never come, and queued
  requests wait for a batch that never fills (lower it to what forms);
- ``gpu-underused``: a version on a GPU kept busy less than :data:`GPU_LOW_SHARE` of the window:
  a GPU is the dearest thing a model can hold (serve it on CPU, or share the device).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

#: requests an hour under which a loaded version counts as rarely used.
LOW_TRAFFIC_PER_HOUR = 10.0
#: ``max_batch_size`` this many times the largest batch formed (or more) is oversized.
OVERSIZE_FACTOR = 4
#: a GPU version busy for less than this share of the window is underused.
GPU_LOW_SHARE = 0.1
GIB = 1024**3


@dataclass(frozen=True)
class ServingUsage:
    """One version as a server's ``/metrics`` shows it (totals since the server started)."""

    model: str
    version: str
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    on_gpu: bool = False
    loaded: bool = False
    memory_bytes: float = 0.0
    memory_byte_s: float = 0.0
    requests: float = 0.0
    max_batch_size: int | None = None
    #: the smallest batch-size bucket that holds every batch formed (None: no batch yet)
    largest_batch: float | None = None
    last_request: float | None = None  # Unix time


@dataclass(frozen=True)
class RunUsage:
    """One training or batch run: its model, kind, start and CPU seconds."""

    model: str
    kind: str  # train | batch
    started_at: datetime
    cpu_s: float


@dataclass(frozen=True)
class Prices:
    """What a CPU-hour and a GiB-hour of memory cost (0: not priced)."""

    cpu_hour: float = 0.0
    gb_hour: float = 0.0

    @property
    def priced(self) -> bool:
        """Whether any price was given (else costs are not shown)."""
        return self.cpu_hour > 0 or self.gb_hour > 0

    def of(self, cpu_s: float, gib_hours: float) -> float:
        """The cost of ``cpu_s`` CPU seconds and ``gib_hours`` of memory."""
        return cpu_s / 3600 * self.cpu_hour + gib_hours * self.gb_hour


@dataclass
class ModelCost:
    """What one model used over the window and what it cost."""

    model: str
    serving_cpu_s: float = 0.0
    gpu_s: float = 0.0
    memory_gib_hours: float = 0.0
    train_cpu_s: float = 0.0
    batch_cpu_s: float = 0.0
    requests: float = 0.0
    runs: int = 0
    cost: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class Saving:
    """One way to spend less: the version, why, what to do, and the estimated saving."""

    model: str
    version: str
    kind: str  # idle | low-traffic | oversized-batch | gpu-underused
    advice: str
    saves: float | None = None  # in the prices' currency over the window (None: not estimated)
    saves_gib_hours: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class CostReport:
    """Per-model costs over a window, and the savings found."""

    since: datetime
    until: datetime
    prices: Prices
    models: list[ModelCost] = field(default_factory=list)
    savings: list[Saving] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``modelyard cost --json``)."""
        return {"since": self.since.isoformat(), "until": self.until.isoformat(),
                "prices": asdict(self.prices), "models": [m.to_dict() for m in self.models],
                "savings": [s.to_dict() for s in self.savings], "notes": list(self.notes)}


def build_report(serving: Sequence[ServingUsage], runs: Iterable[RunUsage], prices: Prices, *,
                 since: datetime, until: datetime,
                 server_started: float | None = None) -> CostReport:
    """Per-model costs over ``since``..``until`` and the savings, cheapest to act on first.

    ``serving``: totals since ``server_started`` (Unix time; None: no server was read).
    """
    report = CostReport(since, until, prices)
    window_s = max((until - since).total_seconds(), 1e-9)
    share = _serving_share(since.timestamp(), until.timestamp(), server_started, report.notes)
    models: dict[str, ModelCost] = {}
    for v in serving:
        m = models.setdefault(v.model, ModelCost(v.model))
        m.serving_cpu_s += v.cpu_s * share
        m.gpu_s += v.gpu_s * share
        m.memory_gib_hours += v.memory_byte_s * share / GIB / 3600
        m.requests += v.requests * share
    for run in runs:
        if not since <= run.started_at <= until:
            continue
        m = models.setdefault(run.model, ModelCost(run.model))
        m.runs += 1
        if run.kind == "batch":
            m.batch_cpu_s += run.cpu_s
        else:
            m.train_cpu_s += run.cpu_s
    for m in models.values():
        m.cost = prices.of(m.serving_cpu_s + m.train_cpu_s + m.batch_cpu_s, m.memory_gib_hours)
    report.models = sorted(models.values(), key=lambda m: (-m.cost, -m.serving_cpu_s
                                                           - m.train_cpu_s - m.batch_cpu_s,
                                                           -m.memory_gib_hours, m.model))
    hours = window_s / 3600
    found = [s for v in serving for s in savings_of(v, since.timestamp(), hours, share, prices)]
    report.savings = sorted(found, key=lambda s: (s.saves is None, -(s.saves or 0.0),
                                                  -s.saves_gib_hours, s.model, s.version))
    return report


def run_cpu(runs: Iterable[RunUsage], since: datetime) -> dict[tuple[str, str], float]:
    """CPU seconds of the runs that started at or after ``since``, by ``(model, kind)``."""
    out: dict[tuple[str, str], float] = {}
    for run in runs:
        if run.started_at >= since:
            key = (run.model, run.kind)
            out[key] = out.get(key, 0.0) + run.cpu_s
    return out


def savings_of(v: ServingUsage, since: float, hours: float, share: float,
               prices: Prices) -> list[Saving]:
    """The savings one version offers over a window of ``hours`` starting at ``since`` (Unix
    time); ``share``: the part of its totals that falls in the window."""
    out: list[Saving] = []
    gib_hours = v.memory_bytes / GIB * hours  # held the whole window, if it stays loaded
    if v.loaded:
        used = v.last_request is not None and v.last_request >= since
        if not used:
            out.append(Saving(v.model, v.version, "idle", (
                f"loaded with no request in the window: holds {_size(v.memory_bytes)} for "
                "nothing; unload it (modelyard serve --idle-unload 30m) or stop serving it"),
                _priced(prices, gib_hours), gib_hours))
        elif v.requests * share / max(hours, 1e-9) < LOW_TRAFFIC_PER_HOUR:
            rate = v.requests * share / max(hours, 1e-9)
            out.append(Saving(v.model, v.version, "low-traffic", (
                f"{rate:.1f} requests an hour keep {_size(v.memory_bytes)} loaded; load it on "
                "demand instead (modelyard serve --idle-unload 15m): each request after an "
                "unload waits for one load"), _priced(prices, gib_hours), gib_hours))
    if (v.max_batch_size is not None and v.largest_batch is not None and v.largest_batch > 0
            and v.max_batch_size >= OVERSIZE_FACTOR * v.largest_batch):
        out.append(Saving(v.model, v.version, "oversized-batch", (
            f"max_batch_size is {v.max_batch_size} but no batch had more than "
            f"{v.largest_batch:g} rows; set serving.batching.max_batch_size to "
            f"{_fit(v.largest_batch)} (fewer padded rows and pre-allocated buffers)")))
    if v.on_gpu and v.loaded:
        busy = v.gpu_s * share / max(hours * 3600, 1e-9)
        if busy < GPU_LOW_SHARE:
            out.append(Saving(v.model, v.version, "gpu-underused", (
                f"its GPU was busy {busy:.1%} of the window; serve it on CPU "
                "(serving.device: cpu) or share the device with other models")))
    return out


def _serving_share(since: float, until: float, started: float | None, notes: list[str]) -> float:
    """The share of a server's totals that falls in the window (prorated by uptime)."""
    if started is None:
        notes.append("no server was read: serving CPU and memory are not included "
                     "(give --server URL)")
        return 0.0
    uptime = until - started
    if started >= since or uptime <= 0:
        return 1.0
    share = (until - since) / uptime
    notes.append(f"the server started {_ago(uptime)} ago, before the window: its serving "
                 f"figures are prorated to the window ({share:.0%} of its uptime)")
    return share


def _priced(prices: Prices, gib_hours: float) -> float | None:
    return gib_hours * prices.gb_hour if prices.gb_hour > 0 else None


def _fit(rows: float) -> int:
    """The smallest power of two that holds ``rows``."""
    size = 1
    while size < rows:
        size *= 2
    return size


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _ago(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 3600:.1f} hours" if seconds >= 3600 else f"{seconds / 60:.0f} minutes"


__all__ = ["GPU_LOW_SHARE", "LOW_TRAFFIC_PER_HOUR", "OVERSIZE_FACTOR", "CostReport", "ModelCost",
           "Prices", "RunUsage", "Saving", "ServingUsage", "build_report", "run_cpu",
           "savings_of"]
