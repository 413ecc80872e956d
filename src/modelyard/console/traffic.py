"""What the server itself measured for each model: requests, errors, p50 and p99 latency.

Read from the server's Prometheus families (every worker's under ``--workers``:
``ServerMetrics.samples_of``; ``modelyard_requests``,
``modelyard_request_duration_seconds``), so the overview costs a walk over in-memory series,
never a scan of the prediction log. Percentiles are estimated from the histogram's buckets as
Prometheus's ``histogram_quantile`` does (linear within a bucket). Pure functions over samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Traffic:
    """One model's requests since this server started."""

    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return None if not self.requests else self.errors / self.requests


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram given as sorted ``(upper bound, cumulative count)``."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            share = 0.0 if inside <= 0 else (rank - below) / inside
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def by_model(requests: Iterable[Any], durations: Iterable[Any]) -> dict[str, Traffic]:
    """Each model's :class:`Traffic` from the samples of the two families' ``collect()``."""
    counts: dict[str, list[int]] = {}
    for sample in requests:
        if not sample.name.endswith("_total"):
            continue
        tally = counts.setdefault(sample.labels["model"], [0, 0])
        tally[0] += int(sample.value)
        if str(sample.labels.get("status", "200")).startswith("5"):
            tally[1] += int(sample.value)
    buckets: dict[str, dict[float, float]] = {}
    for sample in durations:
        if sample.name.endswith("_bucket"):
            per = buckets.setdefault(sample.labels["model"], {})
            bound = float(sample.labels["le"])
            per[bound] = per.get(bound, 0.0) + float(sample.value)
    out: dict[str, Traffic] = {}
    for model in counts.keys() | buckets.keys():
        ordered = sorted(buckets.get(model, {}).items())
        p50, p99 = quantile(0.5, ordered), quantile(0.99, ordered)
        total, errors = counts.get(model, [0, 0])
        out[model] = Traffic(total, errors, None if p50 is None else p50 * 1000,
                             None if p99 is None else p99 * 1000)
    return out


__all__ = ["Traffic", "by_model", "quantile"]
