"""Helpers the adapters share: device parsing, CUDA counting, class-label post-processing."""

from __future__ import annotations

import ctypes
import importlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from modelyard.errors import AdapterError, ConfigError, DeviceError, UnsafeArtifactError

_RESOLVED = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(device: str, *, flavor: str, accelerated: bool) -> int | None:
    """The CUDA index of a resolved device (``None`` for ``cpu``), or :class:`DeviceError`.

    ``load`` receives a device already resolved by :func:`modelyard.devices.resolve_device`; this
    re-checks it at the adapter boundary so a wrong string never reaches the framework.
    """
    match = _RESOLVED.match(device)
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise DeviceError(
            f"{flavor}: cannot load on device {device!r}; use 'cpu' or 'cuda:N' "
            "(or 'auto' in the spec)"
        )
    if match.group(1) == "cpu":
        return None
    if not accelerated:
        raise DeviceError(
            f"{flavor}: this flavor runs on cpu only, cannot load on {device!r}; "
            "set device: cpu or auto"
        )
    return int(match.group(2) or 0)


def artifact_file(path: Path, meta: dict[str, Any], default: str, flavor: str) -> Path:
    """The model file ``meta["file"]`` names (``default`` when unset), inside the folder ``path``.

    The name comes from the version's metadata, so it is checked: an absolute path or one that
    climbs out (``..``) would load a file nobody verified, and raises
    :class:`UnsafeArtifactError`.
    """
    name = str(meta.get("file", default))
    parts = PurePosixPath(name).parts
    if (not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name
            or not name.isprintable()):
        raise UnsafeArtifactError(
            f"{flavor}: the version's metadata names the model file {name!r}, which is not inside "
            "its artifact; register the model again with the file its adapter writes"
        )
    return Path(path) / name


def trusted_names(meta: dict[str, Any]) -> frozenset[str]:
    """The names a version's ``trusted_types`` lists (what its spec trusts deliberately)."""
    listed = meta.get("trusted_types")
    if not isinstance(listed, list | tuple):
        return frozenset()
    return frozenset(name for name in listed if isinstance(name, str))


def listed(names: Iterable[str], limit: int = 12) -> str:
    """Names from an artifact, for a one-line message: escaped, shortened, at most ``limit``.

    The names come from the file being refused, so they may hold newlines or run for pages.
    """
    names = list(names)
    shown = [n if n.isprintable() and len(n) <= 160 else repr(n[:160]) for n in names[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


def check_gpu(index: int, available: int, flavor: str) -> None:
    """Raise :class:`DeviceError` when CUDA device ``index`` is not one of ``available``."""
    if index >= available:
        raise DeviceError(
            f"{flavor}: device 'cuda:{index}' requested but {available} CUDA device(s) are "
            "usable by this framework; set device: auto to fall back to cpu"
        )


def cuda_device_count() -> int:
    """How many CUDA devices this process may use, without initialising CUDA.

    Asks NVML (the driver's management library) rather than the CUDA runtime, because
    initialising CUDA before a server forks its workers breaks CUDA in the children. Honours
    ``CUDA_VISIBLE_DEVICES``. Returns 0 when there is no NVIDIA driver.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 0
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return 0
        count = ctypes.c_uint(0)
        ok = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
        nvml.nvmlShutdown()
    except (OSError, AttributeError):
        return 0
    total = count.value if ok else 0
    if visible is None:
        return total
    return min(total, len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"]))


def classify(output: Any, classes: Sequence[Any] | None = None) -> np.ndarray:
    """Class labels from per-class scores: argmax of an ``(n, k)`` array, mapped to ``classes``.

    A single column (``(n,)`` or ``(n, 1)``) is read as the probability of the positive class and
    thresholded at 0.5 -- pass probabilities, not logits. Without ``classes`` the labels are the
    column indices.
    """
    scores = np.asarray(output)
    if scores.ndim == 2 and scores.shape[1] > 1:
        index = scores.argmax(axis=1)
    elif scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1):
        index = (scores.reshape(-1) > 0.5).astype(np.int64)
    else:
        raise ValueError(f"cannot classify an output of shape {scores.shape}; expected (n, k)")
    if classes is None:
        return index
    return np.asarray(classes)[index]


def probabilities(output: Any) -> Any:
    """Class probabilities from an ``(n, k>1)`` output, or ``None`` for any other output.

    Rows that already are probabilities (in [0, 1], summing to 1) are returned unchanged; any
    other rows are read as logits and soft-maxed.
    """
    if not isinstance(output, np.ndarray) or output.ndim != 2 or output.shape[1] < 2:
        return None
    out = output.astype(np.float64, copy=False)
    if out.min() >= 0 and out.max() <= 1 and sums_to_one(out, 1e-4):
        return output
    shifted = np.exp(out - out.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def labels_from_scores(classes: Any, scores: Any,
                       predict_rows: Callable[[np.ndarray], Any]) -> np.ndarray:
    """The labels a classifier's ``predict`` gives, from its class probabilities ``(n, k)``.

    For a model whose decision is the largest of its class scores (trees, boosting, linear
    models, naive Bayes, ...): ``classes[argmax]``, with ``classes`` the model's own
    ``classes_`` (an array: the labels keep ``predict``'s dtype). The probabilities are a
    monotone function of the scores the model decides on, so the argmax agrees except where two
    probabilities are (within rounding) equal while the scores behind them were not, or the
    model breaks ties its own way (``raw >= 0``); those rows go to ``predict_rows(indices)``.
    """
    proba = np.asarray(scores)
    labels = np.asarray(classes).take(proba.argmax(axis=1))
    if proba.shape[1] > 1 and len(proba):
        top2 = np.partition(proba, -2, axis=1)[:, -2:]
        tolerance = 8 * np.finfo(proba.dtype).eps if proba.dtype.kind == "f" else 0
        near = np.flatnonzero(top2[:, 1] - top2[:, 0] <= tolerance)
        if near.size:
            labels[near] = np.asarray(predict_rows(near))
    return labels


def take_rows(batch: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of a batch: an array, a DataFrame, or a list (of strings)."""
    if hasattr(batch, "iloc"):
        return batch.iloc[index]
    if isinstance(batch, np.ndarray):
        return batch[index]
    return [batch[i] for i in index]


def sums_to_one(values: np.ndarray, atol: float) -> bool:
    """Whether every row sums to 1 within ``atol`` (``np.allclose(sums, 1, atol=atol)``, whose
    relative part adds 1e-5, at a fraction of its cost: it runs on every batch)."""
    sums = values.sum(axis=1, dtype=np.float64)
    return bool((np.abs(sums - 1.0) <= atol + 1e-5).all())


def plain(values: Any) -> list[Any]:
    """A JSON-ready list from an array of class labels (numpy scalars become Python ones)."""
    return list(np.asarray(values).tolist())


def class_ref(cls: type, flavor: str) -> str:
    """``"module:QualName"`` of ``cls``; :class:`ConfigError` if a server could not import it."""
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ConfigError(
            f"{flavor}: class {cls.__qualname__} is defined in "
            f"{'a function' if '<locals>' in cls.__qualname__ else 'the __main__ script'}, so a "
            "server cannot import it to load the model; move it into a module of your project"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def import_ref(ref: str, flavor: str) -> Any:
    """The object named by a ``"module:QualName"`` reference written by :func:`class_ref`."""
    module_name, _, qualname = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise AdapterError(
            f"{flavor}: cannot import {ref} to load the model ({exc}); install the project that "
            "defines it or add it to PYTHONPATH"
        ) from exc
    return obj


__all__ = [
    "artifact_file",
    "check_gpu",
    "class_ref",
    "classify",
    "cuda_device_count",
    "import_ref",
    "labels_from_scores",
    "listed",
    "parse_device",
    "plain",
    "probabilities",
    "sums_to_one",
    "take_rows",
    "trusted_names",
]
