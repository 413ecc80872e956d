"""One loaded model version that predicts in-process, with the server's exact input handling.

``modelyard.load("fraud@production")`` returns a :class:`Predictor`; the server wraps the same
object, and the pipeline evaluates candidates through it, so a model behaves identically
wherever it runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.adapters import get_adapter
from modelyard.adapters.base import sums_to_one
from modelyard.devices import resolve_device
from modelyard.errors import AdapterError, ConfigError, ModelyardError
from modelyard.schema import FieldSpec, Signature, dtype_name
from modelyard.types import Adapter

log = logging.getLogger(__name__)

#: ``postprocess`` asks the adapter for class scores itself (none were computed with the labels).
_ASK: Any = object()


@dataclass
class Prediction:
    """Predictions for a batch: labels or values, and class scores when the model has them."""

    predictions: np.ndarray
    scores: np.ndarray | None = None
    classes: tuple[Any, ...] | None = None

    def fields(self) -> tuple[FieldSpec, ...]:
        """Each output's name, dtype and per-row shape (what OIP model metadata states)."""
        out = [_field("predictions", np.asarray(self.predictions))]
        if self.scores is not None:
            out.append(_field("scores", np.asarray(self.scores)))
        return tuple(out)

    def to_dict(self, *, scores: bool = False) -> dict[str, Any]:
        """JSON-ready: ``{"predictions": [...]}`` plus ``"scores"`` and ``"classes"`` if asked."""
        out: dict[str, Any] = {"predictions": self.predictions.tolist()}
        if scores and self.scores is not None:
            out["scores"] = self.scores.tolist()
            if self.classes is not None:
                out["classes"] = list(self.classes)
        return out


@dataclass
class Predictor:
    """A loaded model version: validates input against its signature and predicts batches."""

    name: str
    version: int
    flavor: str
    model: Any
    adapter: Adapter
    signature: Signature
    device: str = "cpu"
    task: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.name}:{self.version}"

    def predict(self, payload: Any) -> np.ndarray:
        """Predict from records, columns, rows, arrays, a DataFrame or strings."""
        return self.predict_full(payload).predictions

    def predict_proba(self, payload: Any) -> np.ndarray:
        """Class scores, one row per input and one column per class."""
        result = self.predict_full(payload, scores=True)
        if result.scores is None:
            raise ConfigError(f"{self.ref} gives no class scores (task: {self.task or 'raw'})")
        return result.scores

    def predict_full(self, payload: Any, *, scores: bool = False) -> Prediction:
        """Validate ``payload`` and predict it; ``scores=True`` also computes class scores."""
        batch, _ = self.signature.prepare(payload)
        return self.predict_batch(batch, scores=scores)

    def predict_batch(self, batch: Any, *, scores: bool = False) -> Prediction:
        """Predict an already prepared batch (what ``Signature.prepare`` returns).

        With ``scores`` a classifier's labels and scores come from one model call when the
        adapter can give both at once (:class:`~modelyard.types.JointPredictor`).
        """
        joint = getattr(self.adapter, "predict_with_scores", None) if (
            scores and self.signature.classes and self.task in (None, "classification")) else None
        try:
            if joint is not None:
                raw, given = joint(self.model, batch)
            else:
                raw, given = self.adapter.predict(self.model, batch), _ASK
        except ModelyardError:
            raise
        except Exception as exc:  # a framework error, translated once here
            raise AdapterError(
                f"{self.ref} failed to predict: {type(exc).__name__}: {exc}"
            ) from exc
        return self.postprocess(raw, batch if scores else None, scores=given)

    def postprocess(self, raw: Any, batch: Any = None, *, scores: Any = _ASK) -> Prediction:
        """Turn raw model output into labels (classification) or values, plus scores.

        Class scores for labels are ``scores`` when the caller has them from the same model
        call (``None``: the model gives none), else the adapter's ``predict_scores`` on
        ``batch`` (when given).
        """
        out = np.asarray(raw) if not isinstance(raw, dict) else raw
        classes = self.signature.classes
        if self.task in (None, "classification") and classes and isinstance(out, np.ndarray):
            if out.ndim == 2 and out.shape[1] == len(classes) and out.dtype.kind == "f":
                probs = _as_probabilities(out)
                labels = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
                return Prediction(_tidy(labels), probs, classes)
            if out.ndim == 1 and (batch is not None or scores is not _ASK):
                probs = (self.adapter.predict_scores(self.model, batch) if scores is _ASK
                         else scores)
                return Prediction(out, None if probs is None else np.asarray(probs), classes)
        if isinstance(out, dict):
            return Prediction(np.asarray(next(iter(out.values()))))
        return Prediction(out)


def open_version(
    version: Any, registry: Any, *, device: str = "auto", task: str | None = None
) -> Predictor:
    """Load a registered ``ModelVersion`` onto ``device`` (verifying its artifact's digest)."""
    adapter = get_adapter(version.flavor)
    resolved = resolve_device(
        device,
        accelerated=adapter.accelerated,
        gpu_count=adapter.gpu_count,
        model=version.ref,
    )
    if device == "auto" and not adapter.accelerated:
        resolved = "cpu"
    path = registry.artifact_path(version)
    try:
        model = adapter.load(path, dict(version.meta), resolved)
    except ModelyardError:
        raise
    except Exception as exc:
        raise AdapterError(f"cannot load {version.ref}: {type(exc).__name__}: {exc}") from exc
    log.info("loaded %s (%s) on %s", version.ref, version.flavor, resolved)
    return Predictor(
        name=version.model,
        version=version.version,
        flavor=version.flavor,
        model=model,
        adapter=adapter,
        signature=Signature.from_dict(version.signature),
        device=resolved,
        task=task or version.meta.get("task"),
        metadata={"metrics": version.metrics, "digest": version.artifact_digest},
    )


def load(ref: str, *, device: str = "auto", registry: Any = None) -> Predictor:
    """Load a model version for in-process prediction: ``"fraud@production"`` or ``"fraud:3"``.

    Uses the registry that ``MODELYARD_DB``/``MODELYARD_ARTIFACTS`` (or ``./.modelyard``) names
    unless one is passed in.
    """
    from modelyard.registry import Registry

    own = registry is None
    reg = Registry.open() if own else registry
    try:
        return open_version(reg.resolve(ref), reg, device=device)
    finally:
        if own:
            reg.close()


def _field(name: str, values: np.ndarray) -> FieldSpec:
    return FieldSpec(name, dtype_name(values.dtype), tuple(int(d) for d in values.shape[1:]))


def _as_probabilities(out: np.ndarray) -> np.ndarray:
    if out.min() >= 0 and sums_to_one(out, 1e-3):
        return out
    shifted = out - out.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _tidy(labels: np.ndarray) -> np.ndarray:
    """Give label arrays a plain dtype (ints stay ints, strings become str)."""
    try:
        return np.asarray(labels.tolist())
    except (TypeError, ValueError):
        return labels


__all__ = ["Prediction", "Predictor", "load", "open_version"]
