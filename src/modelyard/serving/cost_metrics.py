"""The metrics ``modelyard cost`` reads: what each loaded version spends, per process.

=================================================  =======  ======================================
``modelyard_model_cpu_seconds_total``              counter  CPU seconds the version's batches
                                                            took (this process's thread, or its
                                                            device worker's)
``modelyard_model_gpu_seconds_total``              counter  GPU seconds of a PyTorch version on
                                                            CUDA (present from 0 for such
                                                            versions: it also says "on a GPU")
``modelyard_model_memory_byte_seconds_total``      counter  the version's memory charge
                                                            integrated over the time it was
                                                            loaded (bytes x seconds)
``modelyard_model_max_batch_size``                 gauge    the version's ``max_batch_size``
``modelyard_model_last_request_timestamp_seconds`` gauge    when a batch of it last ran (Unix
                                                            time; absent: none since it loaded)
``modelyard_server_start_time_seconds``            gauge    when the server started (Unix time)
=================================================  =======  ======================================

CPU and GPU seconds are charged once per batch by the thread that ran it (see
:mod:`modelyard.cputime`) and reach the counters within a second, at each scrape and when the
version unloads (:meth:`~modelyard.serving.metrics.VersionMetrics.charge`). The memory
integral, the batch limit and the last request are brought up to date at each scrape of
``/metrics`` (``modelyard cost`` scrapes before it reads): a version is charged its memory from
when it loaded, or from the previous scrape, until now. Under ``--workers`` every process counts
its own, and ``/metrics`` sums the counters and takes the latest request and the largest limit
of all processes (prometheus-client's multiprocess files, as for the other series); the memory
integral of a process advances when that process answers a scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class LoadedCost:
    """What one loaded version looks like at a scrape (from the catalog's runners)."""

    model: str
    version: str
    memory: int
    loaded_at: float  # Unix time
    max_batch_size: int
    last_request: float | None  # Unix time of its last batch (None: none yet)


class CostMetrics:
    """The cost families of one server's registry (see the module's table)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        labels = ("model", "version")
        self.cpu = Counter("modelyard_model_cpu_seconds",
                           "CPU seconds the version's prediction batches took.", labels,
                           registry=r)
        self.gpu = Counter("modelyard_model_gpu_seconds",
                           "GPU seconds the version's prediction batches took (PyTorch on "
                           "CUDA).", labels, registry=r)
        self.memory_seconds = Counter(
            "modelyard_model_memory_byte_seconds",
            "The version's memory charge integrated over the time it was loaded (byte-seconds).",
            labels, registry=r)
        self.max_batch = Gauge("modelyard_model_max_batch_size",
                               "The version's max_batch_size (rows per model call).", labels,
                               registry=r, multiprocess_mode="max")
        self.last_request = Gauge(
            "modelyard_model_last_request_timestamp_seconds",
            "When a batch of the version last ran (Unix time).", labels, registry=r,
            multiprocess_mode="max")
        self.started = Gauge("modelyard_server_start_time_seconds",
                             "When the server started (Unix time).", registry=r,
                             multiprocess_mode="min")
        self.started.set(time.time())
        self._integrated: dict[tuple[str, str], float] = {}

    def report(self, loaded: Iterable[LoadedCost], now: float | None = None) -> None:
        """Bring the memory integral, batch limits and last requests up to ``now``."""
        now = time.time() if now is None else now
        seen: dict[tuple[str, str], float] = {}
        for v in loaded:
            key = (v.model, v.version)
            since = max(self._integrated.get(key, v.loaded_at), v.loaded_at)
            if now > since and v.memory > 0:
                self.memory_seconds.labels(*key).inc(v.memory * (now - since))
            self.max_batch.labels(*key).set(v.max_batch_size)
            if v.last_request is not None:
                self.last_request.labels(*key).set(v.last_request)
            seen[key] = now
        self._integrated = seen


__all__ = ["CostMetrics", "LoadedCost"]
