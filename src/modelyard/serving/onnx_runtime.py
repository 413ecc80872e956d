"""Serve a version through its ONNX derivative: ``serving.runtime: onnx``.

A version whose serving section says ``runtime: onnx`` (registered with it, or set for its model
at serve time with ``--model-config``) is answered by ONNX Runtime running the ONNX version
derived from it (``modelyard export MODEL:V --format onnx``, which ``modelyard train`` runs for
such a spec). The server never converts on load: a conversion is checked for parity and
registered as a version of its own, which is a decision for a command that can report it, not
for a request that waits. A version without a derivative is refused (a
:class:`~modelyard.errors.ConflictError`, 409) naming that command.

What changes is what runs predict; everything else stays the source version's:
:func:`served_record` gives the catalog a record with the source's name, version, signature and
task and the derivative's artifact, so metrics, the prediction log, monitoring and rollouts see
the source version; :func:`as_source` makes the ONNX model answer in the source's shape
(labels, class scores, the dtypes recorded at training), so a client cannot tell but by speed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.errors import ConflictError
from modelyard.predictor import Predictor
from modelyard.schema import FieldSpec, Signature
from modelyard.types import Adapter

log = logging.getLogger(__name__)

#: the runtime that serves a version through its ONNX derivative.
ONNX = "onnx"
#: signature dtype names -> the numpy dtype an answer is cast back to.
_DTYPES = {"string": object, "bool": np.bool_}


def derivative(versions: Iterable[Any], source: Any) -> Any | None:
    """The ONNX version derived from ``source`` among ``versions``, or ``None``.

    A derivative names ``source`` in ``meta["derived_from"]`` and carries its artifact digest
    (``meta["source_digest"]``); of several (an export, then an int8 one), the newest serves:
    the last export made is the one its author chose.
    """
    found = [v for v in versions
             if v.flavor == ONNX and v.meta.get("derived_from") == source.ref
             and v.meta.get("source_digest") == source.artifact_digest]
    return max(found, key=lambda v: int(v.version), default=None)


def served_record(registry: Any, record: Any) -> Any:
    """The record the catalog loads for ``record`` under ``runtime: onnx`` (blocking).

    An ONNX version is itself already: it is returned as is. Otherwise the derivative's
    artifact and flavor under ``record``'s name, version, signature and task;
    :class:`ConflictError` naming the export command when there is none.
    """
    if record.flavor == ONNX:
        return record
    found = derivative(registry.list_versions(record.model), record)
    if found is None:
        raise ConflictError(
            f"{record.ref} is served with runtime onnx but has no ONNX export; run "
            f"`modelyard export {record.ref} --format onnx`, or serve it with runtime native")
    log.info("%s: served by ONNX Runtime from %s", record.ref, found.ref)
    return dataclasses.replace(
        record, flavor=ONNX, artifact_digest=found.artifact_digest,
        artifact_size=found.artifact_size,
        meta={**found.meta, "task": record.meta.get("task"), "served_by": found.ref,
              "source_flavor": record.flavor})


def batches_as_accelerated(record: Any, adapter: Adapter, device: str) -> bool:
    """Whether ``record`` batches as a deep-learning model on a GPU (waiting ``max_delay_ms``
    for a fuller batch): its flavor's kind (its source's under ``runtime: onnx``, so a tree
    model served by ONNX Runtime answers an idle server at once, as it did natively) on a
    ``cuda`` device. On the CPU a wait only delays the answer: the batch forms from what
    queued while the previous one ran (W2 in turn at 1,500-2,600 requests/s: median p99 10-18
    ms without the 2 ms wait, 16-32 with it)."""
    if not device.startswith("cuda"):
        return False
    source = record.meta.get("source_flavor")
    if source is None or source == record.flavor:
        return bool(adapter.accelerated)
    from modelyard.adapters import get_adapter

    return bool(get_adapter(str(source)).accelerated)


def as_source(predictor: Predictor) -> Predictor:
    """``predictor`` (an ONNX model) answering as its source version does; see
    :class:`SourceShaped`."""
    if isinstance(predictor.adapter, SourceShaped):
        return predictor
    return dataclasses.replace(
        predictor, adapter=SourceShaped(predictor.adapter, predictor.signature),
        metadata={**predictor.metadata, "runtime": ONNX})


class SourceShaped:
    """The ONNX adapter, its answers put back in the shape the source version gives.

    A converted classifier answers ``label`` and ``probabilities`` tensors (float32); its source
    answered labels from ``predict`` and float64 scores from ``predict_scores``. ``predict`` gives
    the labels, ``predict_scores`` the probabilities, ``predict_with_scores`` both from one
    session run, each cast to the dtype the source's signature recorded at training. A model
    with one output (a network's logits, a regressor's values) passes through, a 1-D one cast
    to the recorded dtype of ``predictions``.
    """

    flavor: ClassVar[str] = ONNX
    extra: ClassVar[str] = ONNX
    accelerated: ClassVar[bool] = True

    def __init__(self, inner: Adapter, signature: Signature) -> None:
        self.inner = inner
        answers = {f.name: f for f in signature.answers}
        self._labels = _dtype(answers.get("predictions"))
        self._scores = _dtype(answers.get("scores"))

    @classmethod
    def gpu_count(cls) -> int:
        """CUDA devices ONNX Runtime can use here."""
        from modelyard.adapters.onnx import OnnxAdapter

        return OnnxAdapter.gpu_count()

    def handles(self, model: Any) -> bool:
        """What the ONNX adapter handles."""
        return self.inner.handles(model)

    def save(self, model: Any, path: Path, *, sample: Any = None) -> dict[str, Any]:
        """Save as the ONNX adapter does."""
        return self.inner.save(model, path, sample=sample)

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """Load as the ONNX adapter does."""
        return self.inner.load(path, meta, device)

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """Infer as the ONNX adapter does."""
        return self.inner.infer_signature(model, X, y)

    def predict(self, model: Any, batch: Any) -> Any:
        """Labels (a classifier) or the single output, as the source answers them."""
        return self._shape(self.inner.predict(model, batch))[0]

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """Class probabilities in the source's dtype, or ``None``."""
        return self._shape(self.inner.predict(model, batch))[1]

    def predict_with_scores(self, model: Any, batch: Any) -> tuple[Any, Any]:
        """``(predict, predict_scores)`` from one session run."""
        return self._shape(self.inner.predict(model, batch))

    def _shape(self, out: Any) -> tuple[Any, Any]:
        if not isinstance(out, Mapping):
            arr = np.asarray(out)
            return (_cast(arr, self._labels) if arr.ndim == 1 else arr), None
        probs = next((v for k, v in out.items()
                      if "prob" in k.lower() and getattr(v, "ndim", 0) == 2), None)
        labels = out.get("label")
        if labels is None:
            labels = next(iter(out.values()))
        return (_cast(np.asarray(labels), self._labels),
                None if probs is None else _cast(np.asarray(probs), self._scores))


def _dtype(spec: FieldSpec | None) -> Any:
    if spec is None:
        return None
    return _DTYPES.get(spec.dtype, spec.dtype)


def _cast(values: np.ndarray, dtype: Any) -> np.ndarray:
    """``values`` in the recorded ``dtype`` (left as they are when none was recorded)."""
    if dtype is None or values.dtype == np.dtype(dtype):
        return values
    return values.astype(dtype)


__all__ = ["ONNX", "SourceShaped", "as_source", "batches_as_accelerated", "derivative",
           "served_record"]
