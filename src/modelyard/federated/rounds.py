"""The server side of a federated run, apart from Flower: plan the task from the sites'
schemas, average their weights, then gate and register each round's global model.

Each round's global model is scored on the spec's holdout (its ``data`` section, split as
``train`` splits it) when the spec has one, and compared with ``production`` there; without
one, on the sites' own holdouts (their metrics averaged by rows), with no champion comparison.
Either way each site's own metrics are kept.
A model that passes the gate is registered as a new version, linked to the run, with the
round, the sites that took part and each site's metrics in ``meta["federated"]``; a rejected
round registers nothing and the next round goes on. The run records every round in
``details["federated"]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.errors import (
    ConfigError,
    FederationError,
    GateFailed,
    ModelyardError,
    NotFoundError,
)
from modelyard.federated import estimators
from modelyard.federated.site import Task
from modelyard.metrics import compute, get_metric, greater_is_better
from modelyard.pipeline.gate import evaluate_gate
from modelyard.registry import PRODUCTION

if TYPE_CHECKING:
    from modelyard.pipeline.data import Dataset
    from modelyard.registry import Registry
    from modelyard.spec import Spec


@dataclass(frozen=True)
class SiteReport:
    """What one site answered in a round: its rows and its metrics (never its data)."""

    site: str
    examples: int
    metrics: dict[str, float]
    #: what was scored on the site's holdout: its own ``update`` or the ``global`` average
    of: str = "update"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as stored on the version and the run."""
        return {"site": self.site, "examples": self.examples, "metrics": dict(self.metrics),
                "of": self.of}


@dataclass
class RoundRecord:
    """How one round ended: the global model's metrics, the gate, the version (if any)."""

    round: int
    sites: list[str]
    metrics: dict[str, float]
    gate: dict[str, Any]
    version: int | None = None
    promoted: bool = False
    site_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as stored in the run's details."""
        return {"round": self.round, "sites": self.sites, "metrics": self.metrics,
                "gate": self.gate, "version": self.version, "promoted": self.promoted,
                "site_metrics": self.site_metrics}


def weighted_average(updates: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """Federated averaging: each array averaged over the sites, weighted by their rows."""
    if not updates:
        raise FederationError("no site sent an update this round")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise FederationError("the sites trained on 0 rows this round")
    first = [np.shape(w) for w in updates[0][0]]
    for weights, _ in updates[1:]:
        if [np.shape(w) for w in weights] != first:
            raise FederationError(f"sites sent parameters of different shapes: {first} and "
                                  f"{[np.shape(w) for w in weights]}")
    return [sum((np.asarray(weights[i], dtype=np.float64) * (n / total)
                 for weights, n in updates), np.zeros(first[i]))
            for i in range(len(first))]


def mean_metrics(reports: Sequence[SiteReport]) -> dict[str, float]:
    """Each metric averaged over the sites that report it, weighted by their rows."""
    names = sorted({m for r in reports for m in r.metrics})
    out: dict[str, float] = {}
    for name in names:
        having = [r for r in reports if name in r.metrics and r.examples > 0]
        rows = sum(r.examples for r in having)
        if rows:
            out[name] = sum(r.metrics[name] * r.examples for r in having) / rows
    return out


def plan(spec: Spec, schemas: Mapping[str, Mapping[str, Any]],
         holdout: Dataset | None) -> Task:
    """The task every site trains, from the spec and what the sites said of their data: the
    features must agree; the classes are the union of theirs, the holdout's and the spec's."""
    fed = spec.federated
    if fed is None:
        raise FederationError(f"{spec.name} declares no federated section")
    if not schemas and holdout is None:
        raise FederationError("no site described its data")
    features = _agreed_features(schemas, holdout)
    classes = None
    if estimators.is_classifier(fed.estimator):
        found = set(fed.classes or [])
        for schema in schemas.values():
            found.update(schema.get("classes") or [])
        if holdout is not None:
            found.update(np.unique(holdout.y).tolist())
        classes = sorted(found, key=str)
    data = spec.data
    return Task(model=spec.name, estimator=fed.estimator, target=_target(spec),
                params=dict(spec.params), features=features, classes=classes,
                metrics=list(spec.metrics), holdout=data.holdout if data else 0.2,
                seed=data.seed if data else 0, epochs=fed.local_epochs)


def check_spec(spec: Spec) -> None:
    """Refuse, before any site trains, a spec ``federate`` cannot run (:class:`ConfigError`)."""
    if spec.federated is None:
        raise ConfigError(f"{spec.name} declares no federated section: add one with its "
                          "estimator, e.g. federated: {estimator: SGDClassifier}")
    if spec.gate.fairness:
        raise ConfigError(f"{spec.name}: federate does not measure gate.fairness (its groups "
                          "are in rows the server never sees); remove it from this spec")
    for name in spec.metrics:  # a typo fails before any site trains
        get_metric(name)


def probe(spec: Spec) -> Task:
    """The task sent before the first round, for the sites to describe their data."""
    if spec.federated is None:
        raise FederationError(f"{spec.name} declares no federated section")
    return Task(model=spec.name, estimator=spec.federated.estimator, target=_target(spec))


def _target(spec: Spec) -> str:
    fed = spec.federated
    target = (fed.target if fed is not None else None) or (
        spec.data.target if spec.data is not None else None)
    if not target:
        raise FederationError(f"{spec.name}: name the label column as federated.target (or "
                              "data.target), so the sites know which of their columns to learn")
    return target


def _agreed_features(schemas: Mapping[str, Mapping[str, Any]],
                     holdout: Dataset | None) -> list[str]:
    named = {site: list(s.get("features") or []) for site, s in schemas.items()}
    if holdout is not None:
        named["the server's holdout"] = list(holdout.feature_names)
    (first_site, features), *rest = named.items()
    for site, other in rest:
        if other != features:
            raise FederationError(f"{site} has the columns {other}, {first_site} has "
                                  f"{features}: every site needs the same feature columns")
    return features


class Federation:
    """One federated run of ``spec`` on the server: gates and registers each round's model."""

    def __init__(self, spec: Spec, registry: Registry, run_id: str, *,
                 holdout: Dataset | None, actor: str | None = None) -> None:
        check_spec(spec)
        self.spec, self.registry, self.run_id = spec, registry, run_id
        self.holdout, self.actor = holdout, actor
        self.task: Task | None = None
        self.rounds: list[RoundRecord] = []
        self.lines: list[str] = []
        self.started = time.monotonic()

    def start(self, schemas: Mapping[str, Mapping[str, Any]]) -> tuple[Task, list[np.ndarray]]:
        """Plan the task from the sites' schemas; the task and the starting weights."""
        self.task = plan(self.spec, schemas, self.holdout)
        rows = ", ".join(f"{site} {s.get('rows')} rows" for site, s in schemas.items())
        self.note((f"sites: {rows}; " if rows else "")
                  + f"features {self.task.features}"
                  + (f"; classes {self.task.classes}" if self.task.classes else ""))
        model = self._build()
        return self.task, estimators.get_weights(model)

    def conclude(self, number: int, weights: list[np.ndarray],
                 reports: Sequence[SiteReport]) -> RoundRecord:
        """Score round ``number``'s global ``weights``, gate them and register them if they
        pass; ``reports`` are the sites' metrics on their own holdouts (of these weights when
        the server has no holdout: then the gate sees their average by rows)."""
        model = estimators.set_weights(self._build(), weights)
        site_metrics = {r.site: r.to_dict() for r in reports}
        if self.holdout is not None:
            metrics = compute(self.spec.metrics, self.holdout.y,
                              estimators.predict(model, self.holdout.X), missing_scores="skip")
        else:
            metrics = mean_metrics(reports)
        champion = self._champion()
        gate = evaluate_gate(self.spec.gate, metrics, champion.get("metrics"), greater_is_better,
                             champion_ref=champion.get("ref"), champion_note=champion.get("note"))
        record = RoundRecord(number, [r.site for r in reports], metrics,
                             {**gate.to_dict(), "champion": champion}, site_metrics=site_metrics)
        self.rounds.append(record)
        if gate.passed:
            self._register(model, record, has_champion=champion.get("ref") is not None)
        else:
            self.note(f"round {number}: rejected: {'; '.join(gate.reasons)}")
        return record

    def finish(self) -> None:
        """Record how the run ended: succeeded when a round registered a version, else
        rejected (:class:`GateFailed`)."""
        last = self.rounds[-1] if self.rounds else None
        registered = [r for r in self.rounds if r.version is not None]
        status = "succeeded" if registered else "rejected"
        self.registry.finish_run(
            self.run_id, status=status,
            version=registered[-1].version if registered else None,
            promoted=any(r.promoted for r in registered),
            metrics=last.metrics if last else {}, gate=last.gate if last else {},
            logs="\n".join(self.lines), details=self.details())
        if not registered:
            reasons = last.gate.get("reasons", []) if last else ["no round ran"]
            raise GateFailed(f"{self.spec.name}: no round's model passed the gate: "
                             f"{'; '.join(reasons)}", list(reasons))

    def fail(self, reason: str) -> None:
        """Record the run as failed with ``reason`` (the rounds so far stay recorded)."""
        self.note(f"failed: {reason}")
        registered = [r for r in self.rounds if r.version is not None]
        self.registry.finish_run(self.run_id, status="failed", failure_reason=reason,
                                 version=registered[-1].version if registered else None,
                                 logs="\n".join(self.lines), details=self.details())

    def details(self) -> dict[str, Any]:
        """What the run stores beside what it had: the task (no data) and every round."""
        before = self.registry.get_run(self.run_id).details or {}
        return {**before, "federated": {
            "task": json.loads(self.task.to_json()) if self.task else None,
            "rounds": [r.to_dict() for r in self.rounds]}}

    def note(self, line: str) -> None:
        """A line of the run's log, with the seconds since the federation started; written
        into the run at once, so ``modelyard federate`` and ``runs show`` follow it."""
        self.lines.append(f"[{time.monotonic() - self.started:7.2f}s] {line}")
        self._write_logs()

    def _write_logs(self) -> None:
        self.registry.beat_run(self.run_id, logs="\n".join(self.lines))

    def _build(self) -> Any:
        assert self.task is not None
        return estimators.build(self.task.estimator, self.task.params,
                                classes=self.task.classes, features=self.task.features or [])

    def _register(self, model: Any, record: RoundRecord, *, has_champion: bool) -> None:
        from modelyard.pipeline.bring import register_model
        from modelyard.version_settings import VersionSettings

        spec = self.spec
        holdout = self.holdout
        lineage = {"run": self.run_id, "round": record.round, "sites": record.sites,
                   "site_metrics": record.site_metrics,
                   "evaluated_on": "server holdout" if holdout is not None else "site holdouts"}
        version = register_model(
            self.registry, spec.name, model, sample=holdout.X if holdout is not None else None,
            labels=holdout.y if holdout is not None else None, metrics=record.metrics,
            description=spec.description, settings=VersionSettings.from_spec(spec),
            actor=self.actor, run_id=self.run_id, meta={"federated": lineage})
        record.version = version.version
        promote = spec.gate.promote and not (spec.rollout.staged and has_champion)
        if promote:
            self.registry.set_alias(spec.name, PRODUCTION, version.version, actor=self.actor,
                                    reason=f"federated run {self.run_id}: round {record.round} "
                                           "passed its gate")
            record.promoted = True
        self.note(f"round {record.round}: registered {version.ref}"
                  + (" and promoted to production" if promote else "")
                  + f" ({_show(record.metrics)}; sites {', '.join(record.sites)})")

    def _champion(self) -> dict[str, Any]:
        """``production``'s metrics on the same holdout, or a note why there are none."""
        try:
            version = self.registry.resolve(f"{self.spec.name}@{PRODUCTION}")
        except NotFoundError:
            return {"ref": None, "metrics": None, "note": None}
        if self.holdout is None:
            return {"ref": version.ref, "metrics": None,
                    "note": "no server holdout (data section) to score it on"}
        from modelyard.pipeline.evaluate import score_champion

        champion: dict[str, Any] = {
            "ref": version.ref, "flavor": version.flavor, "meta": dict(version.meta),
            "signature": dict(version.signature), "task": version.meta.get("task")}
        try:
            champion["path"] = str(self.registry.artifact_path(version))
        except ModelyardError as exc:
            champion["error"] = str(exc)
        return score_champion(champion, self.holdout.X, self.holdout.y, self.spec.metrics)


def server_holdout(spec: Spec) -> Dataset | None:
    """The holdout part of the spec's ``data`` (split as ``train`` splits it: the rows the
    champion was scored on), or None when the spec has no data section."""
    if spec.data is None:
        return None
    from modelyard.pipeline.data import load_dataset, split

    dataset = load_dataset(spec.data, spec.root)
    stratify = spec.data.stratify and spec.task != "regression"
    return split(dataset, spec.data.holdout, spec.data.seed, stratify)[1]


def _show(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "no metrics"


__all__ = ["Federation", "RoundRecord", "SiteReport", "check_spec", "mean_metrics", "plan", "probe",
           "server_holdout",
           "weighted_average"]
