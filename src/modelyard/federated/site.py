"""What a site does in a federated run, apart from Flower: read its own data, describe it, fit
the global weights on it and score them. Nothing but weights, counts and metrics leaves.

The server sends a :class:`Task` (the estimator, its params, the target and feature columns,
the class labels, the metrics) in every message, so a site needs only its data file and
``modelyard federate client``, not the project's ``modelyard.yaml``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, FederationError
from modelyard.federated import estimators
from modelyard.metrics import compute
from modelyard.pipeline.data import Dataset, load_dataset, split
from modelyard.spec import DataSpec


@dataclass(frozen=True)
class Task:
    """What the server asks every site to train, as JSON in each message."""

    model: str
    estimator: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    features: list[str] | None = None
    classes: list[Any] | None = None
    metrics: list[str] = field(default_factory=list)
    holdout: float = 0.2
    seed: int = 0
    epochs: int = 1

    def to_json(self) -> str:
        """The task as sent."""
        return json.dumps(asdict(self), default=_plain)

    @classmethod
    def from_json(cls, text: str) -> Task:
        """The task as received; :class:`FederationError` if it is not one."""
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            raise FederationError(f"the server sent a task this site cannot read: {exc}") from None


@dataclass(frozen=True)
class Update:
    """A site's answer to a training round: new weights, the rows they were fitted on, and the
    fitted model's metrics on the site's own holdout."""

    weights: list[np.ndarray]
    examples: int
    metrics: dict[str, float]


def load(path: str | Path, task: Task) -> Dataset:
    """The site's rows from a CSV or Parquet file (or glob), the task's target and features."""
    spec = DataSpec(path=str(Path(path).absolute()), target=task.target,
                    features=task.features)
    return load_dataset(spec, Path.cwd())


def describe(data: Dataset, task: Task) -> dict[str, Any]:
    """The schema the server plans with: feature names, class labels present and the row count
    (never a row)."""
    classes = (sorted(np.unique(data.y).tolist(), key=str)
               if estimators.is_classifier(task.estimator) else None)
    return {"features": list(data.feature_names), "classes": classes, "rows": len(data)}


def train(task: Task, data: Dataset, weights: list[np.ndarray]) -> Update:
    """Fit the global ``weights`` on this site's training part for ``task.epochs`` passes."""
    fit, held = _parts(data, task)
    model = _model(task, data, weights)
    estimators.fit_local(model, fit.X, fit.y, classes=task.classes, epochs=task.epochs)
    return Update(estimators.get_weights(model), len(fit), _score(model, held, task))


def evaluate(task: Task, data: Dataset, weights: list[np.ndarray]) -> tuple[int, dict[str, float]]:
    """The global ``weights``' metrics on this site's holdout, and its row count."""
    _, held = _parts(data, task)
    return len(held), _score(_model(task, data, weights), held, task)


def _model(task: Task, data: Dataset, weights: list[np.ndarray]) -> Any:
    if task.features is not None and list(data.feature_names) != list(task.features):
        raise FederationError(f"this site's columns {data.feature_names} differ from the "
                              f"model's {task.features}")
    model = estimators.build(task.estimator, task.params, classes=task.classes,
                             features=data.feature_names)
    return estimators.set_weights(model, weights)


def _parts(data: Dataset, task: Task) -> tuple[Dataset, Dataset]:
    if len(data) < 2:
        raise FederationError(f"this site has {len(data)} row(s); it needs at least 2")
    stratify = estimators.is_classifier(task.estimator)
    return split(data, task.holdout, task.seed, stratify)


def _score(model: Any, data: Dataset, task: Task) -> dict[str, float]:
    try:
        return compute(task.metrics, data.y, estimators.predict(model, data.X),
                       missing_scores="skip")
    except ConfigError as exc:
        raise FederationError(f"cannot compute the metrics at this site: {exc}") from None


def _plain(value: Any) -> Any:
    """numpy scalars (class labels) as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


__all__ = ["Task", "Update", "describe", "evaluate", "load", "train"]
