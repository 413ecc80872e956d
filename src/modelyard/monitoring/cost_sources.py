"""Where ``modelyard cost`` reads its figures: a server's ``/metrics`` and the registry's runs.

Serving is read from the running server's ``/metrics`` (the same text Prometheus scrapes, every
worker process of the server summed; see :mod:`modelyard.serving.cost_metrics`) rather than
stored: the counters are cumulative, so one read gives the totals since the server started, and
nothing is written on the prediction path. Runs are read from the registry (or through the
server's API with ``--server``): each training and batch run records ``cpu_s`` in its details.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from modelyard.errors import ConfigError
from modelyard.monitoring.cost import RunUsage, ServingUsage

_Key = tuple[str, str]
#: how many runs one page of the registry returns while looking back for the window's start.
_PAGE = 500


def serving_usage(text: str) -> tuple[list[ServingUsage], float | None]:
    """The versions a server's ``/metrics`` text describes, and when the server started (Unix
    time; None if the text has no ``modelyard_server_start_time_seconds``)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, dict[_Key, float]] = defaultdict(lambda: defaultdict(float))
    buckets: dict[_Key, list[tuple[float, float]]] = defaultdict(list)
    started: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "modelyard_server_start_time_seconds":
                    started = s.value if started is None else min(started, s.value)
                    continue
                key = (s.labels.get("model", ""), s.labels.get("version", ""))
                if not key[0]:
                    continue
                if s.name == "modelyard_batch_size_bucket":
                    buckets[key].append((_le(s.labels.get("le", "+Inf")), s.value))
                elif s.name in _WANTED:
                    values[s.name][key] += s.value
    except ValueError as exc:
        raise ConfigError(f"the server's /metrics is not Prometheus text ({exc}); is the URL a "
                          "modelyard server?") from None
    keys = set(values["modelyard_model_loaded"]) | set(values["modelyard_model_cpu_seconds_total"])
    return [_usage(key, values, buckets.get(key, [])) for key in sorted(keys)], started


_WANTED = frozenset({
    "modelyard_model_cpu_seconds_total", "modelyard_model_gpu_seconds_total",
    "modelyard_model_memory_byte_seconds_total", "modelyard_model_memory_bytes",
    "modelyard_model_loaded", "modelyard_requests_total", "modelyard_model_max_batch_size",
    "modelyard_model_last_request_timestamp_seconds"})


def _usage(key: _Key, values: dict[str, dict[_Key, float]],
           batch_buckets: list[tuple[float, float]]) -> ServingUsage:
    def get(name: str) -> float | None:
        return values[name].get(key)

    limit = get("modelyard_model_max_batch_size")
    return ServingUsage(
        model=key[0], version=key[1],
        cpu_s=get("modelyard_model_cpu_seconds_total") or 0.0,
        gpu_s=get("modelyard_model_gpu_seconds_total") or 0.0,
        on_gpu=get("modelyard_model_gpu_seconds_total") is not None,
        loaded=(get("modelyard_model_loaded") or 0.0) > 0,
        memory_bytes=get("modelyard_model_memory_bytes") or 0.0,
        memory_byte_s=get("modelyard_model_memory_byte_seconds_total") or 0.0,
        requests=get("modelyard_requests_total") or 0.0,
        max_batch_size=None if limit is None else int(limit),
        largest_batch=largest_batch(batch_buckets),
        last_request=get("modelyard_model_last_request_timestamp_seconds") or None,
    )


def largest_batch(batch_buckets: Iterable[tuple[float, float]]) -> float | None:
    """The smallest histogram bound that holds every batch (cumulative ``(le, count)`` pairs);
    None when no batch ran. Past the last finite bound: that bound."""
    ordered = sorted(batch_buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    finite = [le for le, _ in ordered if le != float("inf")]
    for le, count in ordered:
        if count >= total:
            return le if le != float("inf") else (finite[-1] if finite else None)
    return None


def _le(text: str) -> float:
    return float("inf") if text in ("+Inf", "Inf") else float(text)


def run_usage(registry: Any, since: datetime) -> list[RunUsage]:
    """The training and batch runs that started at or after ``since``, with their CPU seconds
    (runs recorded before their CPU was measured count 0)."""
    out: list[RunUsage] = []
    offset = 0
    while True:
        page = _runs_page(registry, offset)
        out.extend(usage_of(run) for run in page if run.started_at >= since)
        if len(page) < _PAGE or page[-1].started_at < since:
            return out
        offset += _PAGE


def usage_of(run: Any) -> RunUsage:
    """One :class:`~modelyard.registry.Run` as a :class:`RunUsage` (``details.cpu_s``, 0 for
    runs recorded before runs measured their CPU)."""
    cpu = (run.details or {}).get("cpu_s")
    return RunUsage(run.model, run.kind or "train", run.started_at,
                    float(cpu) if isinstance(cpu, int | float) else 0.0)


def _runs_page(registry: Any, offset: int) -> list[Any]:
    try:
        return list(registry.list_runs(limit=_PAGE, offset=offset))
    except TypeError:  # a server's API pages by limit only
        return list(registry.list_runs(limit=_PAGE)) if offset == 0 else []


__all__ = ["largest_batch", "run_usage", "serving_usage", "usage_of"]
