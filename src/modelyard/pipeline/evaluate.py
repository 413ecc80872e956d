"""Score a saved model on the holdout through the serving input path.

A model is loaded from its artifact folder by its adapter and wrapped in a
:class:`~modelyard.predictor.Predictor`, exactly as a server would load it, so a model that
evaluates here also loads and predicts in production. This runs in the training child: the
framework is already imported there, and the parent (a scheduler, say) never has to import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from modelyard.adapters import get_adapter
from modelyard.devices import resolve_device
from modelyard.errors import AdapterError, ConfigError, InputError, ModelyardError
from modelyard.metrics import compute, get_metric
from modelyard.predictor import Prediction, Predictor
from modelyard.schema import Signature

#: rows per prediction call, so a large image holdout fits in memory.
EVAL_CHUNK = 4096


def load_predictor(
    name: str, version: int, flavor: str, path: Path, meta: dict[str, Any],
    signature: dict[str, Any], task: str | None,
) -> Predictor:
    """Load the artifact folder ``path`` with its adapter, on a GPU when the flavor has one."""
    adapter = get_adapter(flavor)
    device = resolve_device("auto", accelerated=adapter.accelerated,
                            gpu_count=getattr(adapter, "gpu_count", lambda: 0), model=name)
    try:
        model = adapter.load(Path(path), dict(meta), device)
    except ModelyardError:
        raise
    except Exception as exc:  # a framework error, translated once here
        raise AdapterError(f"cannot load {name}:{version}: {type(exc).__name__}: {exc}") from exc
    return Predictor(name=name, version=version, flavor=flavor, model=model, adapter=adapter,
                     signature=Signature.from_dict(signature), device=device, task=task)


def predict_all(predictor: Predictor, X: Any, *, scores: bool) -> Prediction:
    """Validate ``X`` against the signature and predict it in chunks of :data:`EVAL_CHUNK`."""
    batch, n = predictor.signature.prepare(X)
    parts = [predictor.predict_batch(_rows(batch, i, i + EVAL_CHUNK), scores=scores)
             for i in range(0, n, EVAL_CHUNK)]
    if len(parts) == 1:
        return parts[0]
    has_scores = all(p.scores is not None for p in parts)
    return Prediction(
        np.concatenate([p.predictions for p in parts]),
        np.concatenate([p.scores for p in parts]) if has_scores else None,  # type: ignore[misc]
        parts[0].classes,
    )


def describe_outputs(predictor: Predictor, X: Any) -> list[dict[str, Any]]:
    """What ``predictor`` answers (``predictions``, ``scores``: dtype and per-row shape), from
    two rows of ``X``: recorded in the version's signature, so OIP metadata states it before the
    version is ever loaded."""
    batch, _ = predictor.signature.prepare(_rows(X, 0, 2))
    return [f.to_dict() for f in predictor.predict_batch(batch, scores=True).fields()]


def score(predictor: Predictor, X: Any, y: Any, metrics: list[str], *,
          missing_scores: Literal["raise", "skip"] = "raise") -> dict[str, float]:
    """``metrics`` of ``predictor`` on ``(X, y)``; class scores are computed only if needed."""
    needs_scores = any(get_metric(m).needs_scores for m in metrics)
    prediction = predict_all(predictor, X, scores=needs_scores)
    return compute(metrics, y, prediction, missing_scores=missing_scores)


def score_candidate(predictor: Predictor, X: Any, y: Any, metrics: list[str],
                    fairness: list[dict[str, Any]], groups: dict[str, Any],
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``metrics`` of the candidate on ``(X, y)`` and, from the same predictions, the records
    of the ``fairness`` rules (dumps of :class:`~modelyard.spec.FairnessRule`) over the holdout
    rows' ``groups`` (:func:`modelyard.pipeline.fairness.measure`)."""
    if not fairness:
        return score(predictor, X, y, metrics), []
    from modelyard.pipeline.fairness import measure
    from modelyard.spec import FairnessRule

    if predictor.task == "regression":
        raise ConfigError(f"gate.fairness compares class predictions across groups; "
                          f"{predictor.name} is a regression model")
    rules = [FairnessRule.model_validate(rule) for rule in fairness]
    names = [*metrics, *(rule.metric for rule in rules if rule.metric is not None)]
    prediction = predict_all(predictor, X, scores=any(get_metric(m).needs_scores for m in names))
    records = measure(rules, y, prediction.predictions, groups, scores=prediction.scores,
                      classes=prediction.classes)
    return compute(metrics, y, prediction), records


def score_champion(champion: dict[str, Any], X: Any, y: Any,
                   metrics: list[str]) -> dict[str, Any]:
    """Score the production version on the same holdout; a note instead when it cannot be.

    ``champion`` holds ``ref``, ``flavor``, ``path``, ``meta``, ``signature`` and ``task`` (or
    ``error`` when its artifact could not be fetched).
    Returns ``{"ref", "metrics", "note"}``; ``metrics`` is None with a ``note`` saying why.
    """
    ref = champion["ref"]
    if champion.get("error"):
        return {"ref": ref, "metrics": None, "note": f"champion {ref} could not be loaded "
                                                     f"({champion['error']}); comparison skipped"}
    try:
        name, _, number = ref.rpartition(":")
        predictor = load_predictor(name, int(number), champion["flavor"], champion["path"],
                                   champion["meta"], champion["signature"], champion.get("task"))
        values = score(predictor, X, y, metrics, missing_scores="skip")
    except InputError as exc:
        return {"ref": ref, "metrics": None,
                "note": f"champion {ref} cannot take this holdout ({exc}); comparison skipped"}
    except Exception as exc:  # a broken champion must not block its replacement
        return {"ref": ref, "metrics": None,
                "note": f"champion {ref} could not be scored ({exc}); comparison skipped"}
    return {"ref": ref, "metrics": values, "note": None}


def _rows(batch: Any, start: int, stop: int) -> Any:
    return batch.iloc[start:stop] if hasattr(batch, "iloc") else batch[start:stop]


__all__ = ["EVAL_CHUNK", "describe_outputs", "load_predictor", "predict_all", "score",
           "score_candidate", "score_champion"]
