"""Window statistics of one variant: requests, errors, a latency histogram, labels, agreement.

A server keeps one :class:`WindowStats` per (model, variant) for the current analysis window and
records into it on the request path (``observe``: a few integer additions, no allocation in the
common case). Windows from several processes combine with :meth:`WindowStats.merge` after a
round trip through :meth:`to_dict` / :meth:`from_dict`, so analysis can run on all the traffic.

Latency lives in a fixed log-spaced histogram (10 % wide buckets from 0.1 ms to ~2 min), so the
p99 is exact to one bucket and merging two windows is adding counts. The histogram holds every
request's bucket, so rank statistics over all of a window's requests (the tests of
:mod:`modelyard.rollout.analysis`) need no sample of raw latencies: they are exact to one bucket,
whatever the traffic, and windows from any number of processes merge without loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

_LOW_S = 1e-4  # the first bucket holds everything up to 0.1 ms
_GROWTH = 1.1
#: how much wider each latency bucket is than the one before (10 %).
GROWTH = _GROWTH
_BUCKETS = 150  # 1e-4 * 1.1**149 ~ 145 s; slower requests share the last bucket
_LOG_GROWTH = math.log(_GROWTH)


def bucket_of(latency_s: float) -> int:
    """The histogram bucket index of a latency in seconds."""
    if latency_s <= _LOW_S:
        return 0
    return min(_BUCKETS - 1, math.ceil(math.log(latency_s / _LOW_S) / _LOG_GROWTH))


def bucket_upper_s(index: int) -> float:
    """The upper bound (seconds) of histogram bucket ``index``."""
    return _LOW_S * _GROWTH**index


@dataclass
class WindowStats:
    """Counts for one variant over one analysis window; add windows with :meth:`merge`.

    ``metric_value`` is the model's declared metric over the ``labeled`` predictions whose labels
    have arrived (None: none yet). ``compared``/``agreed`` count shadow comparisons: how many
    shadow answers were compared with the primary answer and how many agreed.
    """

    requests: int = 0
    errors: int = 0
    latency_buckets: dict[int, int] = field(default_factory=dict)
    labeled: int = 0
    metric_value: float | None = None
    #: standard error of ``metric_value`` (a bootstrap over the labeled rows; None: unknown).
    metric_se: float | None = None
    #: the candidate's only: how likely chance alone makes it look at least this much worse
    #: than stable on the metric (a permutation test over both sides' labeled rows; None:
    #: unknown). Computed on the merged labels, so windows do not merge it.
    metric_p: float | None = None
    compared: int = 0
    agreed: int = 0

    def observe(self, latency_s: float, *, error: bool = False) -> None:
        """Count one request (and its latency, and whether it failed)."""
        self.requests += 1
        if error:
            self.errors += 1
        index = bucket_of(latency_s)
        self.latency_buckets[index] = self.latency_buckets.get(index, 0) + 1

    def compare(self, agreed: bool) -> None:
        """Count one shadow comparison."""
        self.compared += 1
        if agreed:
            self.agreed += 1

    @property
    def error_rate(self) -> float:
        """Errors per request (0 for an empty window)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def agreement(self) -> float | None:
        """Share of shadow comparisons that agreed (None: nothing compared)."""
        return self.agreed / self.compared if self.compared else None

    def quantile_s(self, q: float) -> float | None:
        """Latency quantile ``q`` (0..1) in seconds, as its bucket's upper bound (None: empty)."""
        total = sum(self.latency_buckets.values())
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for index in sorted(self.latency_buckets):
            seen += self.latency_buckets[index]
            if seen >= rank:
                return bucket_upper_s(index)
        return bucket_upper_s(max(self.latency_buckets))

    def count_from(self, index: int) -> tuple[int, int]:
        """``(requests timed in bucket index or slower ones, requests timed)``."""
        slow = sum(c for i, c in self.latency_buckets.items() if i >= index)
        return slow, sum(self.latency_buckets.values())

    @property
    def p99_s(self) -> float | None:
        """The 99th percentile latency in seconds (None: no requests timed)."""
        return self.quantile_s(0.99)

    def merge(self, other: WindowStats) -> WindowStats:
        """A new window holding both windows' counts.

        The metric is combined as a mean weighted by labeled count: exact for metrics that are
        means over rows (accuracy, MAE), an approximation for the others (F1, RMSE, BLEU).
        """
        buckets = dict(self.latency_buckets)
        for index, count in other.latency_buckets.items():
            buckets[index] = buckets.get(index, 0) + count
        return WindowStats(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            latency_buckets=buckets,
            labeled=self.labeled + other.labeled,
            metric_value=_weighted(self.metric_value, self.labeled,
                                   other.metric_value, other.labeled),
            metric_se=_weighted_se(self.metric_se, self.labeled, other.metric_se,
                                   other.labeled),
            compared=self.compared + other.compared,
            agreed=self.agreed + other.agreed,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (bucket indexes become strings, as JSON keys must)."""
        return {
            "requests": self.requests, "errors": self.errors,
            "latency_buckets": {str(k): v for k, v in sorted(self.latency_buckets.items())},
            "labeled": self.labeled, "metric_value": self.metric_value,
            "metric_se": self.metric_se, "metric_p": self.metric_p,
            "compared": self.compared, "agreed": self.agreed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowStats:
        """The window :meth:`to_dict` wrote."""
        return cls(
            requests=int(data.get("requests", 0)), errors=int(data.get("errors", 0)),
            latency_buckets={int(k): int(v) for k, v in data.get("latency_buckets", {}).items()},
            labeled=int(data.get("labeled", 0)), metric_value=data.get("metric_value"),
            metric_se=data.get("metric_se"), metric_p=data.get("metric_p"),
            compared=int(data.get("compared", 0)), agreed=int(data.get("agreed", 0)),
        )


def _weighted(a: float | None, na: int, b: float | None, nb: int) -> float | None:
    if a is None or na == 0:
        return b if nb else None
    if b is None or nb == 0:
        return a
    return (a * na + b * nb) / (na + nb)


def _weighted_se(a: float | None, na: int, b: float | None, nb: int) -> float | None:
    """The standard error of the labeled-count weighted mean of two estimates."""
    if a is None or na == 0:
        return b if nb else None
    if b is None or nb == 0:
        return a
    return math.sqrt((na * a) ** 2 + (nb * b) ** 2) / (na + nb)


__all__ = ["GROWTH", "WindowStats", "bucket_of", "bucket_upper_s"]
