"""The TensorFlow flavor: Keras 3 models saved as ``model.keras`` and loaded in safe mode."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.adapters import is_loaded, require
from modelyard.adapters.base import (
    artifact_file,
    check_gpu,
    listed,
    parse_device,
    probabilities,
    trusted_names,
)
from modelyard.adapters.keras_archive import check_keras
from modelyard.errors import AdapterError, UnsafeArtifactError
from modelyard.schema import Signature

_FILE = "model.keras"

#: the device each loaded model was placed on, so its predictions run there too.
_PLACED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _tf() -> Any:
    # TensorFlow prints C++ info logs on import unless told not to; respect a user's setting.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("tensorflow", TensorFlowAdapter.extra)


def _keras() -> Any:
    _tf()
    return require("keras", TensorFlowAdapter.extra)


class TensorFlowAdapter:
    """Save, load and run Keras 3 models, including ones that take raw strings.

    A model whose first layer is ``TextVectorization`` takes an array of Python strings; numeric
    models take arrays. Loading first reads the archive's ``config.json`` (:meth:`verify`): a
    ``Lambda`` layer's Python bytecode, or an object from outside Keras that ``trusted_types``
    does not list, raises :class:`UnsafeArtifactError` naming it; then Keras loads it in
    ``safe_mode``, which refuses bytecode again.
    """

    flavor: ClassVar[str] = "tensorflow"
    extra: ClassVar[str] = "tensorflow"
    accelerated: ClassVar[bool] = True

    @classmethod
    def gpu_count(cls) -> int:
        """GPUs TensorFlow can use here."""
        return len(_tf().config.list_physical_devices("GPU"))

    def handles(self, model: Any) -> bool:
        """Whether ``model`` is a Keras model."""
        if not is_loaded("keras"):
            return False
        import keras

        return isinstance(model, keras.Model)

    def save(
        self, model: Any, path: Path, *, sample: Any = None, trusted_types: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Write ``model.keras`` into ``path``; ``trusted_types`` names your registered objects.

        Raises :class:`UnsafeArtifactError` now, not at deploy time, when loading would refuse
        the model (a ``Lambda`` layer, say); nothing is left in ``path`` then.
        """
        keras = _keras()
        target = Path(path) / _FILE
        try:
            keras.saving.save_model(model, target)
        except Exception as exc:
            raise AdapterError(f"tensorflow: could not save {model.name!r}: {exc}") from exc
        meta: dict[str, Any] = {"file": _FILE, "keras_version": keras.__version__}
        if trusted_types:
            meta["trusted_types"] = sorted({str(t) for t in trusted_types})
        try:
            self.verify(path, meta)
        except UnsafeArtifactError:
            target.unlink(missing_ok=True)
            raise
        return meta

    def verify(self, path: Path, meta: dict[str, Any]) -> None:
        """Refuse (:class:`UnsafeArtifactError`) an archive loading would refuse; loads nothing.

        A folder without the model file passes: there is nothing to run, and loading it fails.
        """
        target = artifact_file(path, meta, _FILE, self.flavor)
        if not target.is_file():
            return
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise AdapterError(f"tensorflow: cannot read {target.name}: {exc}") from exc
        refused = check_keras(data, trusted_names(meta).__contains__)
        if refused:
            raise UnsafeArtifactError(
                f"tensorflow: refusing to load {target.name}: it holds {listed(refused)}, "
                "which would run Python code from the artifact; replace a Lambda layer with a "
                "layer class registered with keras.saving.register_keras_serializable, and list "
                "your own registered classes under trusted_types in the model's spec"
            )

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """Load ``model.keras`` onto ``device``: checked first, then with ``safe_mode=True``."""
        index = parse_device(device, flavor=self.flavor, accelerated=self.accelerated)
        if index is not None:
            check_gpu(index, self.gpu_count(), self.flavor)
        self.verify(path, meta)
        tf, keras = _tf(), _keras()
        placement = "/CPU:0" if index is None else f"/GPU:{index}"
        target = artifact_file(path, meta, _FILE, self.flavor)
        try:
            with tf.device(placement):
                model = keras.saving.load_model(target, safe_mode=True)
        except Exception as exc:
            if "safe_mode" in str(exc):
                raise UnsafeArtifactError(
                    f"tensorflow: {target.name} needs to run deserialised Python code (a Lambda "
                    "layer, say), which is refused; replace the Lambda with a registered custom "
                    "layer (keras.saving.register_keras_serializable) and save it again"
                ) from exc
            raise AdapterError(f"tensorflow: could not load {target.name}: {exc}") from exc
        _PLACED[model] = placement
        return model

    def predict(self, model: Any, batch: Any) -> Any:
        """The model's output as numpy (a dict of arrays for several named outputs)."""
        tf = _tf()
        x = _as_tensor(tf, batch)
        placement = _PLACED.get(model)
        try:
            if placement is None:
                out = model.predict_on_batch(x)
            else:
                with tf.device(placement):
                    out = model.predict_on_batch(x)
        except Exception as exc:
            raise AdapterError(f"tensorflow: {model.name!r} predict failed: {exc}") from exc
        if isinstance(out, list | tuple):
            if len(out) == 1:
                return _to_numpy(out[0])
            return {f"output_{i}": _to_numpy(v) for i, v in enumerate(out)}
        return _to_numpy(out)

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """Class probabilities for an ``(n, k>1)`` output (logits are soft-maxed), else ``None``."""
        return probabilities(self.predict(model, batch))

    def predict_with_scores(self, model: Any, batch: Any) -> tuple[Any, Any]:
        """The output and its class probabilities from one forward pass."""
        out = self.predict(model, batch)
        return out, probabilities(out)

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """A tensor signature; strings give a ``string`` input of shape ``()``."""
        return Signature.infer(X, y, layout="tensor")


def _as_tensor(tf: Any, batch: Any) -> Any:
    if hasattr(batch, "to_numpy"):  # a DataFrame
        batch = batch.to_numpy()
    arr = np.asarray(batch)
    if arr.dtype.kind in "OUS":  # raw text for a TextVectorization input
        return tf.convert_to_tensor(arr.astype(object), dtype=tf.string)
    return tf.convert_to_tensor(arr)


def _to_numpy(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_numpy(v) for k, v in value.items()}
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    return np.asarray(value)


__all__ = ["TensorFlowAdapter"]
