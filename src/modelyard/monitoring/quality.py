"""Model quality in production: declared metrics per version and window, from fed-back labels.

Pure: :func:`metric_windows` takes logged predictions and the labels that arrived for them and
returns one :class:`MetricWindow` per (version, variant), scored with the same metric functions
(:mod:`modelyard.metrics`) that gate training and judge rollouts. A label is one value for a
one-row request, or a list with one value per row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.registry.records import Record

if TYPE_CHECKING:
    from modelyard.monitoring.predlog import LoggedPrediction
    from modelyard.registry import Registry


@dataclass(frozen=True)
class MetricWindow(Record):
    """Declared metrics of one version (and variant) over a time window, from labeled rows."""

    model: str
    version: int
    variant: str
    start: datetime | None
    end: datetime | None
    requests: int  # logged requests in the window
    labeled: int  # rows whose label arrived
    values: dict[str, float | None] = field(default_factory=dict)
    #: labels that could not be matched to their prediction (a row count mismatch).
    mismatched: int = 0


@dataclass
class _Pairs:
    requests: int = 0
    mismatched: int = 0
    first: datetime | None = None
    last: datetime | None = None
    truth: list[Any] = field(default_factory=list)
    predicted: list[Any] = field(default_factory=list)
    scores: list[Any] = field(default_factory=list)
    classes: tuple[Any, ...] | None = None
    all_scored: bool = True


def label_rows(label: Any, rows: int, predicted: Sequence[Any]) -> list[Any] | None:
    """The per-row labels of a request with ``rows`` rows, or None when they do not fit."""
    if rows == 1:
        if isinstance(label, list) and len(label) == 1 and not (
                predicted and isinstance(predicted[0], list)):
            return label
        return [label]
    if isinstance(label, list) and len(label) == rows:
        return label
    return None


def metric_windows(model: str, predictions: Iterable[LoggedPrediction],
                   labels: Mapping[str, Any], names: Sequence[str],
                   *, group_by_variant: bool = True) -> list[MetricWindow]:
    """Score each version's (and variant's) labeled predictions on the metrics ``names``."""
    groups: dict[tuple[int, str], _Pairs] = {}
    for p in predictions:
        key = (p.version, p.variant if group_by_variant else "")
        pairs = groups.setdefault(key, _Pairs())
        pairs.requests += 1
        pairs.first = p.at if pairs.first is None else min(pairs.first, p.at)
        pairs.last = p.at if pairs.last is None else max(pairs.last, p.at)
        if p.request_id not in labels or "predictions" not in p.outputs:
            continue
        predicted = p.outputs["predictions"]
        truth = label_rows(labels[p.request_id], p.rows, predicted)
        if truth is None or len(predicted) != len(truth):
            pairs.mismatched += 1
            continue
        pairs.truth.extend(truth)
        pairs.predicted.extend(predicted)
        scores = p.outputs.get("scores")
        if scores is None:
            pairs.all_scored = False
        else:
            pairs.scores.extend(scores)
            if p.outputs.get("classes") is not None:
                pairs.classes = tuple(p.outputs["classes"])
    return [MetricWindow(model, version, variant, g.first, g.last, g.requests, len(g.truth),
                         _score(names, g), g.mismatched)
            for (version, variant), g in sorted(groups.items())]


def _score(names: Sequence[str], pairs: _Pairs) -> dict[str, float | None]:
    from modelyard.errors import ConfigError
    from modelyard.metrics import compute
    from modelyard.predictor import Prediction

    if not pairs.truth:
        return {name: None for name in names}
    scores = np.asarray(pairs.scores) if pairs.all_scored and pairs.scores else None
    prediction = Prediction(np.asarray(pairs.predicted), scores, pairs.classes)
    out: dict[str, float | None] = {}
    for name in names:
        # a metric these labels cannot score (AUC without logged scores, say) stays None
        with contextlib.suppress(ConfigError):
            out.update(compute([name], pairs.truth, prediction, missing_scores="skip"))
        out.setdefault(name, None)
    return out


def rollout_metric(registry: Registry, model: str, metric: str, versions: Mapping[str, int],
                   since: datetime | None) -> dict[str, tuple[int, float | None]]:
    """``variant -> (labeled rows, metric value)`` of a rollout's versions since ``since``.

    What rollout analysis compares for the declared metric; reads the prediction log and the
    labels that have arrived.
    """
    from modelyard.monitoring.monitor import Monitor

    by_version = Monitor(registry).metrics(model, since=since, names=[metric],
                                           versions=list(versions.values()), by_variant=False)
    found = {w.version: w for w in by_version}
    out: dict[str, tuple[int, float | None]] = {}
    for variant, version in versions.items():
        window = found.get(version)
        out[variant] = (0, None) if window is None else (window.labeled,
                                                          window.values.get(metric))
    return out


__all__ = ["MetricWindow", "label_rows", "metric_windows", "rollout_metric"]
