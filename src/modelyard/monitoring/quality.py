"""Model quality in production: declared metrics per version and window, from fed-back labels.

Pure: :func:`metric_windows` takes logged predictions and the labels that arrived for them and
returns one :class:`MetricWindow` per (version, variant), scored with the same metric functions
(:mod:`modelyard.metrics`) that gate training and judge rollouts. A label is one value for a
one-row request, or a list with one value per row. :func:`regression_p_value` tells whether one
version is worse than another on a metric beyond chance (a permutation test over their labeled
rows), which is what rollout analysis asks.

Given the version's fairness rules (``gate.fairness``), each window also measures the rules'
per-group figures over its labeled rows (:func:`modelyard.pipeline.fairness.measure`, with
Fairlearn), the group of each row read from the logged inputs: the group column must be a
model input the log keeps (``sensitive: hash`` keeps it private and its groups apart). The
largest metric gap is the window's ``fairness_gap`` value, which alert rules may watch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.registry.records import Record
from modelyard.spec.monitoring import FAIRNESS_GAP

#: bootstrap resamples behind a standard error, and the rows each one draws at most.
BOOTSTRAP = 200
MAX_BOOTSTRAP_ROWS = 5000

if TYPE_CHECKING:
    from modelyard.monitoring.logstore import LoggedPrediction
    from modelyard.spec import FairnessRule


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
    #: bootstrap standard error of each value (only when asked for: ``errors=True``).
    errors: dict[str, float | None] = field(default_factory=dict)
    #: one record per fairness rule of the version: per group ``n`` and the metric, the gap,
    #: demographic parity and equalized odds differences over the labeled rows.
    fairness: list[dict[str, Any]] = field(default_factory=list)


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
    #: per group column, the logged value of each labeled row (None where the log lacks it)
    groups: dict[str, list[Any]] = field(default_factory=dict)
    #: labeled rows whose logged inputs lack the column, per group column
    unlogged: dict[str, int] = field(default_factory=dict)


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
                   *, group_by_variant: bool = True, errors: bool = False,
                   every: timedelta | None = None,
                   fairness: Sequence[FairnessRule] = ()) -> list[MetricWindow]:
    """Score each version's (and variant's) labeled predictions on the metrics ``names``.

    ``every`` cuts time into windows of that length (aligned to the epoch) and scores each one
    apart: a series per version. ``errors=True`` adds each value's standard error, from
    :data:`BOOTSTRAP` resamples of the labeled rows (what rollout analysis needs to tell a real
    regression from chance). ``fairness`` rules are measured per window from the groups in the
    logged inputs (read them ``with_inputs``); their largest gap is the value ``fairness_gap``.
    """
    step = every.total_seconds() if every is not None else None
    if step is not None and step <= 0:
        raise ValueError("every must be a positive duration")
    columns = list(dict.fromkeys(rule.group for rule in fairness))
    groups = _group(predictions, labels, step, group_by_variant, columns)
    windows = []
    for (_, version, variant), g in sorted(groups.items()):
        values = _score(names, g)
        records = _fairness(fairness, g)
        if any(rule.metric is not None for rule in fairness):
            from modelyard.pipeline.fairness import largest_gap

            values[FAIRNESS_GAP] = largest_gap(records)
        windows.append(MetricWindow(model, version, variant, g.first, g.last, g.requests,
                                    len(g.truth), values, g.mismatched,
                                    _bootstrap(names, g) if errors else {}, records))
    return windows


def _fairness(rules: Sequence[FairnessRule], pairs: _Pairs) -> list[dict[str, Any]]:
    """The rules' records over a window's labeled rows; a column the log never kept, or a
    window without labels, gives records without figures and a note saying why."""
    if not rules:
        return []
    from modelyard.errors import ConfigError
    from modelyard.pipeline.fairness import measure

    scores = np.asarray(pairs.scores) if pairs.all_scored and pairs.scores else None
    logged = {c: v for c, v in pairs.groups.items() if pairs.unlogged.get(c, 0) < len(v)}
    records = []
    for rule in rules:
        try:
            (record,) = measure([rule], np.asarray(pairs.truth), np.asarray(pairs.predicted),
                                logged, scores=scores, classes=pairs.classes)
        except ConfigError as exc:  # a metric these labels cannot score: no figures
            record = {**rule.model_dump(mode="json"), "rows": len(pairs.truth), "groups": {},
                      "gap": None, "demographic_parity": None, "equalized_odds": None,
                      "note": str(exc)}
        if rule.group not in logged and pairs.truth:
            record["note"] = (f"column {rule.group!r} is not in the logged inputs: make it a "
                              "model input (sensitive: hash keeps it private)")
        records.append(record)
    return records


def _group(predictions: Iterable[LoggedPrediction], labels: Mapping[str, Any],
           step: float | None, group_by_variant: bool,
           columns: Sequence[str] = ()) -> dict[tuple[float, int, str], _Pairs]:
    """Labeled rows per (time bucket, version, variant)."""
    groups: dict[tuple[float, int, str], _Pairs] = {}
    for p in predictions:
        bucket = (p.at.timestamp() // step) * step if step is not None else 0.0
        key = (bucket, p.version, p.variant if group_by_variant else "")
        pairs = groups.setdefault(key, _Pairs())
        pairs.requests += 1
        if step is None:
            pairs.first = p.at if pairs.first is None else min(pairs.first, p.at)
            pairs.last = p.at if pairs.last is None else max(pairs.last, p.at)
        else:
            pairs.first = datetime.fromtimestamp(bucket, UTC)
            pairs.last = datetime.fromtimestamp(bucket + step, UTC)
        if p.request_id not in labels or "predictions" not in p.outputs:
            continue
        predicted = p.outputs["predictions"]
        truth = label_rows(labels[p.request_id], p.rows, predicted)
        if truth is None or len(predicted) != len(truth):
            pairs.mismatched += 1
            continue
        pairs.truth.extend(truth)
        pairs.predicted.extend(predicted)
        for column in columns:
            _add_groups(pairs, column, p.inputs, len(truth))
        scores = p.outputs.get("scores")
        if scores is None:
            pairs.all_scored = False
        else:
            pairs.scores.extend(scores)
            if p.outputs.get("classes") is not None:
                pairs.classes = tuple(p.outputs["classes"])
    return groups


def _add_groups(pairs: _Pairs, column: str, inputs: Mapping[str, Any], rows: int) -> None:
    from modelyard.pipeline.fairness import logged_groups

    values = logged_groups(inputs, column, rows)
    if values is None:
        values = [None] * rows
        pairs.unlogged[column] = pairs.unlogged.get(column, 0) + rows
    pairs.groups.setdefault(column, []).extend(values)


def regression_p_value(name: str, predictions: Iterable[LoggedPrediction],
                       labels: Mapping[str, Any], stable: int, candidate: int, *,
                       resamples: int = 0, seed: int = 0) -> float | None:
    """How likely chance alone makes version ``candidate`` look at least this much worse than
    ``stable`` on metric ``name``: a one-sided permutation test over their labeled rows.

    The rows of both versions are pooled and dealt out again at random, keeping each side's
    size; the p-value is the share of deals in which the candidate's side looks at least as much
    worse as it really does. Unlike a z test on bootstrap standard errors it holds on a handful
    of labels: a candidate that missed the 3 positives it met is not "significantly" worse than
    one that caught 6 of 14 (a bootstrap of the 3 misses always scores 0 and claims certainty).
    None when a side has fewer than two labeled rows or the metric cannot score them.
    """
    groups = _group(predictions, labels, None, False)
    s, c = groups.get((0.0, stable, "")), groups.get((0.0, candidate, ""))
    if s is None or c is None or len(s.truth) < 2 or len(c.truth) < 2:
        return None
    observed = _worse_by(name, s, c)
    if observed is None:
        return None
    pooled, n_stable = _pool(s, c)
    rng = np.random.default_rng(seed)
    at_least, dealt = 0, 0
    for _ in range(resamples or BOOTSTRAP):
        order = rng.permutation(len(pooled.truth))
        worse = _worse_by(name, _take(pooled, order[:n_stable]), _take(pooled, order[n_stable:]))
        if worse is not None:
            dealt += 1
            at_least += worse >= observed - 1e-12
    return (1 + at_least) / (1 + dealt) if dealt else None


def _worse_by(name: str, stable: _Pairs, candidate: _Pairs) -> float | None:
    """How much worse ``candidate`` scores than ``stable`` on ``name`` (negative: better)."""
    from modelyard.metrics import greater_is_better

    s, c = _score([name], stable)[name], _score([name], candidate)[name]
    if s is None or c is None or not (np.isfinite(s) and np.isfinite(c)):
        return None
    return s - c if greater_is_better(name) else c - s


def _pool(stable: _Pairs, candidate: _Pairs) -> tuple[_Pairs, int]:
    """Both sides' rows in one set (scores only when both logged them over the same classes),
    at most :data:`MAX_BOOTSTRAP_ROWS` of them, in proportion; and how many are stable's."""
    scored = (stable.all_scored and candidate.all_scored and bool(stable.scores)
              and bool(candidate.scores) and stable.classes == candidate.classes)
    rng = np.random.default_rng(1)
    total = len(stable.truth) + len(candidate.truth)
    keep = min(1.0, MAX_BOOTSTRAP_ROWS / total)
    parts = []
    for side in (stable, candidate):
        n = len(side.truth)
        pick = np.sort(rng.choice(n, max(2, round(n * keep)), replace=False)) if keep < 1 \
            else np.arange(n)
        parts.append((side, pick))
    pooled = _Pairs(classes=stable.classes, all_scored=scored)
    for side, pick in parts:
        pooled.truth.extend(side.truth[i] for i in pick)
        pooled.predicted.extend(side.predicted[i] for i in pick)
        if scored:
            pooled.scores.extend(side.scores[i] for i in pick)
    return pooled, len(parts[0][1])


def _take(pairs: _Pairs, rows: np.ndarray) -> _Pairs:
    return _Pairs(truth=[pairs.truth[i] for i in rows],
                  predicted=[pairs.predicted[i] for i in rows],
                  scores=[pairs.scores[i] for i in rows] if pairs.all_scored else [],
                  classes=pairs.classes, all_scored=pairs.all_scored)


def _bootstrap(names: Sequence[str], pairs: _Pairs, resamples: int = 0,
               seed: int = 0) -> dict[str, float | None]:
    """Standard error of each metric over resamples (with replacement) of the labeled rows."""
    n = len(pairs.truth)
    if n < 2:
        return {name: None for name in names}
    rng = np.random.default_rng(seed)
    truth = np.asarray(pairs.truth, dtype=object)
    predicted = np.asarray(pairs.predicted, dtype=object)
    scores = np.asarray(pairs.scores) if pairs.all_scored and pairs.scores else None
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(resamples or BOOTSTRAP):
        pick = rng.integers(0, n, min(n, MAX_BOOTSTRAP_ROWS))
        sample = _Pairs(truth=truth[pick].tolist(), predicted=predicted[pick].tolist(),
                        scores=[] if scores is None else list(scores[pick]),
                        classes=pairs.classes, all_scored=scores is not None)
        for name, value in _score(names, sample).items():
            if value is not None and np.isfinite(value):
                draws[name].append(value)
    return {name: float(np.std(values, ddof=1)) if len(values) > 1 else None
            for name, values in draws.items()}


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


__all__ = ["MetricWindow", "label_rows", "metric_windows", "regression_p_value"]
