"""Fairness figures per group, and the gate checks made of them: computed with Fairlearn.

A ``gate.fairness`` rule (:class:`~modelyard.spec.FairnessRule`) names a column of the data
(``group``), a classification metric and bounds. :func:`measure` scores the metric per group of
that column with Fairlearn's ``MetricFrame`` (through the same metric functions as the rest of
modelyard, :mod:`modelyard.metrics`), takes the gap (max - min over the groups that could be
scored) and, for a binary task, Fairlearn's ``demographic_parity_difference`` and
``equalized_odds_difference`` with the last class as positive, as everywhere in modelyard.
Each rule gives one JSON-ready record: the rule, the rows, per group ``n``, the metric value,
the selection rate and true/false positive rates, and the differences. The training child
measures the holdout; the monitor measures the labeled predictions of a window.

:func:`checks` turns the records into gate checks (pure), with every group's figures in the
message a person reads when the candidate is rejected. Fairlearn is imported inside
:func:`measure` only: ``import modelyard`` stays free of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelyard.errors import ConfigError
from modelyard.metrics import get_metric
from modelyard.spec import FairnessRule

log = logging.getLogger(__name__)

#: the group a row with no value in the group column is counted in.
MISSING = "(missing)"
#: where a version's fairness records live in its ``meta``.
META_KEY = "fairness"


def group_key(value: Any) -> str:
    """The name of the group ``value`` falls in: its text (``1.0`` and ``1`` alike, since JSON
    does not tell them apart), :data:`MISSING` for None and NaN."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def group_columns(rules: Sequence[FairnessRule]) -> list[str]:
    """The group columns ``rules`` need, each once, in order."""
    return list(dict.fromkeys(rule.group for rule in rules))


def measure(rules: Sequence[FairnessRule], y_true: Any, predictions: Any, groups:
            Mapping[str, Sequence[Any]], *, scores: Any = None,
            classes: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """One record per rule: the metric per group of the rule's column, its gap and (binary
    tasks) the demographic parity and equalized odds differences. ``groups`` maps each column
    to one value per row; ``scores`` and ``classes`` are what metrics needing scores use."""
    truth, predicted = _flat(y_true), _flat(predictions)
    if len(truth) != len(predicted):
        raise ConfigError(f"{len(truth)} labels but {len(predicted)} predictions")
    return [_measure_rule(rule, truth, predicted, groups, scores, classes) for rule in rules]


def _measure_rule(rule: FairnessRule, truth: np.ndarray, predicted: np.ndarray,
                  groups: Mapping[str, Sequence[Any]], scores: Any,
                  classes: Sequence[Any] | None) -> dict[str, Any]:
    record: dict[str, Any] = {**rule.model_dump(mode="json"), "rows": len(truth), "groups": {},
                              "gap": None, "demographic_parity": None, "equalized_odds": None,
                              "note": None}
    if rule.group not in groups:
        return {**record, "note": f"column {rule.group!r} is not in the data"}
    keys = np.array([group_key(v) for v in groups[rule.group]], dtype=object)
    if len(keys) != len(truth):
        raise ConfigError(f"group column {rule.group!r} has {len(keys)} values for "
                          f"{len(truth)} rows")
    if len(truth) == 0:
        return {**record, "note": "no rows"}
    positive = _positive(truth, predicted, classes)
    frame = _frame(rule, truth, predicted, keys, scores, classes, positive)
    record["groups"] = frame["groups"]
    if rule.metric is not None:
        values = [g["value"] for g in record["groups"].values() if g["value"] is not None]
        record["gap"] = frame["gap"] if values else None
    notes = []
    if len(record["groups"]) < 2:
        notes.append(f"only one group in {rule.group!r}: nothing to compare")
    if positive is None:
        notes.append("demographic parity and equalized odds need two classes")
    else:
        record["demographic_parity"], record["equalized_odds"] = _differences(
            truth, predicted, keys, positive)
    return {**record, "note": "; ".join(notes) or None}


def _frame(rule: FairnessRule, truth: np.ndarray, predicted: np.ndarray, keys: np.ndarray,
           scores: Any, classes: Sequence[Any] | None, positive: Any) -> dict[str, Any]:
    """Per-group figures from Fairlearn's MetricFrame, and the gap of the rule's metric."""
    from fairlearn.metrics import MetricFrame, count

    metrics: dict[str, Any] = {"n": count}
    params: dict[str, dict[str, Any]] = {}
    if rule.metric is not None:
        metrics["value"] = _metric_fn(rule.metric, scores, classes)
        params["value"] = {"rows": np.arange(len(truth))}  # slices the scores per group
    if positive is not None:
        is_pos = (truth == positive).astype(int), (predicted == positive).astype(int)
        rates = {"selection_rate": _rate(None), "tpr": _rate(1), "fpr": _rate(0)}
        for name, fn in rates.items():
            metrics[name] = fn
            params[name] = {"truth": is_pos[0], "chosen": is_pos[1]}
    frame = MetricFrame(metrics=metrics, y_true=truth, y_pred=predicted,
                        sensitive_features=keys, sample_params=params)
    by_group = frame.by_group
    out: dict[str, dict[str, Any]] = {}
    for key, row in by_group.iterrows():
        figures = {name: _number(row[name]) for name in by_group.columns}
        figures["n"] = int(row["n"])
        if rule.metric is not None:
            figures.setdefault("value", None)
        out[str(key)] = figures
    gap = _number(frame.difference()["value"]) if rule.metric is not None else None
    return {"groups": dict(sorted(out.items())), "gap": gap}


def _metric_fn(name: str, scores: Any, classes: Sequence[Any] | None) -> Any:
    metric = get_metric(name)
    all_scores = None if scores is None else np.asarray(scores)
    if metric.needs_scores and all_scores is None:
        raise ConfigError(f"fairness metric {name!r} needs class scores, but the model gives "
                          "none; compare a metric of labels (recall, accuracy, ...)")

    def fn(y_true: Any, y_pred: Any, rows: Any) -> float:
        part = None if all_scores is None else all_scores[np.asarray(rows, dtype=int)]
        try:
            return float(metric.fn(np.asarray(y_true), np.asarray(y_pred), scores=part,
                                   classes=classes))
        except (TypeError, ValueError, IndexError):  # not defined on this group's rows
            return math.nan

    return fn


def _rate(label: int | None) -> Any:
    """The share of rows predicted positive among all rows (None) or among those whose true
    label is ``label`` (1: true positive rate, 0: false positive rate)."""

    def fn(y_true: Any, y_pred: Any, truth: Any, chosen: Any) -> float:
        t, c = np.asarray(truth), np.asarray(chosen)
        among = c if label is None else c[t == label]
        return float(among.mean()) if len(among) else math.nan

    return fn


def _differences(truth: np.ndarray, predicted: np.ndarray, keys: np.ndarray,
                 positive: Any) -> tuple[float | None, float | None]:
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    t, p = (truth == positive).astype(int), (predicted == positive).astype(int)
    dp = demographic_parity_difference(t, p, sensitive_features=keys)
    eo = equalized_odds_difference(t, p, sensitive_features=keys)
    return _number(dp), _number(eo)


def _positive(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[Any] | None) -> Any:
    """The positive label of a binary task (the last class), or None when it is not binary."""
    if classes is not None:
        return list(classes)[-1] if len(classes) == 2 else None
    try:
        labels = np.unique(np.concatenate([truth, predicted]))
    except TypeError:  # unorderable mixed labels
        return None
    return labels[-1] if len(labels) == 2 else None


def _flat(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    return arr.reshape(-1) if arr.ndim > 1 and arr.shape[-1] == 1 else arr


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# -- gate ---------------------------------------------------------------------------------------
def checks(rules: Sequence[FairnessRule],
           records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The gate checks of ``rules`` on their ``records`` (:func:`measure` of the same rules, in
    order): one per bound of each rule, failed when the figure exceeds it or was not computed.
    Records that do not match the rules fail one check saying so."""
    same = len(rules) == len(records) and all(
        rule.group == rec.get("group") and rule.metric == rec.get("metric")
        for rule, rec in zip(rules, records, strict=False))
    if not same:
        return [{"rule": "fairness", "passed": False,
                 "message": "fairness rules were not measured on the holdout"}] if rules else []
    out: list[dict[str, Any]] = []
    for rule, record in zip(rules, records, strict=True):
        bounds = (("gap", rule.max_gap), ("demographic_parity", rule.max_demographic_parity),
                  ("equalized_odds", rule.max_equalized_odds))
        out.extend(_check(record, kind, bound) for kind, bound in bounds if bound is not None)
    return out


_TITLES = {"demographic_parity": "demographic parity difference",
           "equalized_odds": "equalized odds difference"}


def _check(record: Mapping[str, Any], kind: str, bound: float) -> dict[str, Any]:
    value = record.get(kind)
    title = _TITLES.get(kind) or f"{record.get('metric')} gap"
    what = f"{title} across {record['group']}"
    check: dict[str, Any] = {"rule": "fairness", "kind": kind, "group": record["group"],
                             "metric": record.get("metric"), "value": value, "threshold": bound,
                             "groups": record.get("groups") or {}}
    if value is None:
        why = record.get("note") or "no group could be scored"
        return {**check, "passed": False, "message": f"{what} was not computed ({why})"}
    passed = value <= bound + 1e-12  # float noise must not reject an equal model
    side = "within" if passed else ">"
    message = (f"{what} {value:.3f} {side} max {bound:.3f} "
               f"({describe_groups(record, kind)})")
    return {**check, "passed": bool(passed), "message": message}


def describe_groups(record: Mapping[str, Any], kind: str = "gap") -> str:
    """Each group's figures on one line: ``F n=98 recall 0.52; M n=102 recall 0.83``."""
    shown = {"gap": [("value", record.get("metric") or "value")],
             "demographic_parity": [("selection_rate", "selection rate")],
             "equalized_odds": [("tpr", "TPR"), ("fpr", "FPR")]}[kind]
    parts = []
    for name, figures in (record.get("groups") or {}).items():
        values = " ".join(f"{label} {_fmt(figures.get(key))}" for key, label in shown)
        parts.append(f"{name} n={figures.get('n')} {values}")
    return "; ".join(parts) or "no groups"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# -- versions and monitoring --------------------------------------------------------------------
def rules_of(meta: Mapping[str, Any]) -> list[FairnessRule]:
    """The fairness rules a version was gated by (stored in its ``meta``); a malformed record
    is logged and left out, so monitoring goes on."""
    rules = []
    for record in meta.get(META_KEY) or []:
        if not isinstance(record, Mapping):
            continue
        fields = {k: record.get(k) for k in FairnessRule.model_fields if record.get(k) is not None}
        try:
            rules.append(FairnessRule.model_validate(fields))
        except ValueError as exc:
            log.warning("a stored fairness rule is invalid and is not monitored: %s",
                        str(exc).splitlines()[0])
    return rules


def largest_gap(records: Sequence[Mapping[str, Any]]) -> float | None:
    """The largest metric gap of ``records`` (what an alert on ``fairness_gap`` watches)."""
    gaps = [r["gap"] for r in records if r.get("gap") is not None]
    return max(gaps) if gaps else None


def logged_groups(inputs: Mapping[str, Any], column: str, rows: int) -> list[Any] | None:
    """The values of ``column`` in a logged request's inputs summary, or None when the log did
    not keep the column (not a model input, or dropped as sensitive)."""
    values = (inputs.get("columns") or {}).get(column)
    if not isinstance(values, list) or len(values) != rows:
        return None
    return values


__all__ = ["META_KEY", "MISSING", "checks", "describe_groups", "group_columns", "group_key",
           "largest_gap", "logged_groups", "measure", "rules_of"]
