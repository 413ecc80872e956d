"""Bring an existing model in: register a model trained elsewhere as a version like a trained one.

``register_model(registry, name, model_or_path)`` takes a fitted object or a file: a
pickle/joblib file of a scikit-learn, XGBoost or LightGBM model, an XGBoost ``.json``/``.ubj``,
a LightGBM text model (``.txt``, ``.lgb``), a TorchScript ``.pt``/``.ts`` or ``torch.export``
``.pt2`` archive, a Keras ``.keras`` file, an ``.onnx`` or ``.skops`` file, or a folder an
adapter saved (one holding ``model.skops``, ``model.ubj``, ...). The flavor is picked from the
loaded object's type, the same way ``train`` picks it (:func:`modelyard.adapters.adapter_for`).

Safe loading is the same as for trained models. Formats that run no code, or that their adapter
checks before loading (``.pt2``, TorchScript, ``.keras``, ``.skops``), are stored as they are and
loaded through that check. A pickle runs whatever code it names while loading, so it is refused
(:class:`UnsafeArtifactError`) unless ``trust=True`` is passed for that one file: it is then
loaded once, here, and re-saved in its adapter's safe format (scikit-learn as skops, whose type
checks still apply); the file's sha256 goes into the version's ``meta["source"]`` and the audit
log with ``"trusted": true``. The stored version never holds the pickle.

With a ``sample`` of input rows the version gets a signature inferred from it, reference
statistics for drift (:func:`modelyard.pipeline.profile.profile`) and the sample's fingerprint as
its data lineage, with this environment's package versions, as a trained version does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.adapters import adapter_for, get_adapter, require
from modelyard.adapters.base import listed
from modelyard.adapters.pickles import pickle_imports
from modelyard.errors import AdapterError, ConfigError, ModelyardError, UnsafeArtifactError
from modelyard.pipeline.lineage import environment, fingerprint
from modelyard.pipeline.profile import profile
from modelyard.types import Adapter
from modelyard.version_settings import VersionSettings

if TYPE_CHECKING:
    from modelyard.registry import ModelVersion, Registry

#: the audit action recorded when a pickle was loaded because the user trusted it.
TRUST_ACTION = "version.trust"
#: file names the adapters write into an artifact folder (a folder an adapter saved).
_ADAPTER_FILES = ("model.skops", "model.ubj", "model.json", "model.txt", "model.pt2",
                  "model.ts", "model.keras", "model.onnx")
#: rows of the sample an adapter gets to trace or export with.
_SAMPLE_ROWS = 8


@dataclass
class _Brought:
    """An artifact folder ready to store, the adapter that wrote it and what it came from."""

    adapter: Adapter
    meta: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Request:
    """What the caller asked: the flavor (``auto``), the sample, and whether a pickle is trusted."""

    flavor: str
    sample: Any
    trust: bool


@dataclass(frozen=True)
class Stored:
    """The artifact as it will be stored, loaded back: what a ``check`` gets to judge."""

    adapter: Adapter
    model: Any
    signature: dict[str, Any]
    task: str


_Loader = Callable[[Path, Path, _Request], _Brought]
#: a caller's last look at the stored artifact: metrics to record, or an exception to refuse it.
Check = Callable[[Stored], Mapping[str, float]]


def register_model(
    registry: Registry, name: str, model_or_path: Any, *, flavor: str = "auto",
    sample: Any = None, labels: Any = None, metrics: Mapping[str, float] | None = None,
    description: str = "", task: str | None = None, trust: bool = False,
    settings: VersionSettings | None = None, actor: str | None = None,
    run_id: str | None = None, meta: Mapping[str, Any] | None = None,
    semver: str | None = None,
    params: Mapping[str, Any] | None = None, origin: Mapping[str, Any] | None = None,
    signature: Mapping[str, Any] | None = None, check: Check | None = None,
) -> ModelVersion:
    """Register a model trained elsewhere (an object or a file) as a new version of ``name``.

    ``sample`` (input rows) gives the signature, reference statistics and data fingerprint;
    ``labels`` (optional) tell classification from regression where the model does not say.
    ``trust=True`` allows loading a pickle/joblib file (it runs code): recorded in the audit.
    ``run_id`` links the version to the run that made it; ``meta`` adds to its metadata.
    ``semver`` labels the version (``1.4.0``, or ``major``/``minor``/``patch`` to bump).
    An importer passes ``origin`` (where the model came from, merged into ``meta["source"]``; an
    object it unpickled says ``"trusted": true`` there and is audited like a trusted file),
    ``params``, a ``signature`` it mapped (used instead of the one inferred from ``sample``)
    and a ``check`` that sees the stored artifact loaded before anything is registered: it
    returns metrics to record with the version, or raises to refuse it.
    Raises :class:`UnsafeArtifactError` for an untrusted pickle, :class:`ConfigError` for a file
    or object no adapter handles, :class:`AdapterError` when the framework fails.
    """
    request = _Request(flavor, sample, trust)
    with tempfile.TemporaryDirectory(prefix="modelyard-bring-") as tmp:
        folder = Path(tmp) / "artifact"
        folder.mkdir()
        brought = _bring(model_or_path, folder, request)
        adapter = brought.adapter
        model = _load(adapter, folder, brought.meta)  # proof the stored artifact loads
        task = task or _task(model, brought.meta, labels)
        found = _with_classes(dict(signature) if signature else
                              _signature(adapter, model, sample, labels), model, task)
        checked = check(Stored(adapter, model, found, task)) if check is not None else {}
        # ``origin`` is read after the check, which may add what it measured to it
        source = {**brought.source, **(origin or {})}
        version_meta = {**brought.meta, "task": task, "source": source,
                        **_settings_meta(settings), **(meta or {})}
        version = registry.register(
            name, folder, flavor=adapter.flavor, meta=version_meta, signature=found,
            metrics={k: float(v) for k, v in {**(metrics or {}), **checked}.items()},
            params=dict(params or {}),
            data_fingerprint=fingerprint(sample, labels) if sample is not None else None,
            environment=environment(),
            reference_stats=profile(sample) if sample is not None else None,
            run_id=run_id, description=description, actor=actor, semver=semver,
        )
    if version.meta["source"].get("trusted"):
        registry.record(TRUST_ACTION, version.ref, dict(version.meta["source"]), actor=actor)
    return version


# -- where the model comes from ------------------------------------------------------------------
def _bring(model_or_path: Any, folder: Path, request: _Request) -> _Brought:
    if not isinstance(model_or_path, str | Path):
        return _save_object(model_or_path, folder, request, {
            "kind": "object",
            "class": f"{type(model_or_path).__module__}.{type(model_or_path).__qualname__}"})
    path = Path(model_or_path)
    if path.is_dir():
        path = _adapter_file(path)
    if not path.is_file():
        raise ConfigError(f"cannot register {model_or_path}: no such file or folder")
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise ConfigError(
            f"cannot register {path.name}: unknown model file type {path.suffix or '(none)'!r}; "
            f"give one of {', '.join(sorted(_LOADERS))} or a folder an adapter saved")
    return loader(path, folder, request)


def _adapter_file(folder: Path) -> Path:
    for name in _ADAPTER_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"cannot register the folder {folder}: it holds none of "
                      f"{', '.join(_ADAPTER_FILES)}; give the model file itself")


def _source(path: Path, fmt: str, *, trusted: bool = False) -> dict[str, Any]:
    return {"kind": "file", "path": str(path.resolve()), "format": fmt,
            "sha256": _sha256(path), "trusted": trusted}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_object(model: Any, folder: Path, request: _Request,
                 source: dict[str, Any]) -> _Brought:
    """Save a loaded object with its adapter (the flavor's own, safe format)."""
    adapter = adapter_for(model) if request.flavor == "auto" else get_adapter(request.flavor)
    sample = request.sample
    head = sample[:_SAMPLE_ROWS] if sample is not None else None
    try:
        meta = adapter.save(model, folder, sample=head)
    except ModelyardError:
        raise
    except Exception as exc:  # a framework error, translated once here
        raise AdapterError(f"{adapter.flavor}: could not save {type(model).__name__}: "
                           f"{type(exc).__name__}: {exc}") from exc
    return _Brought(adapter, meta, source)


def _load_pickle(path: Path, folder: Path, request: _Request) -> _Brought:
    """Unpickle a file the user trusts (it runs code), then re-save it in a safe format."""
    source = _source(path, "pickle", trusted=True)
    if not request.trust:
        with open(path, "rb") as f:
            names = sorted(pickle_imports(f.read(64 << 20)))
        raise UnsafeArtifactError(
            f"refusing to load {path.name}: a pickle runs the code it names while loading "
            f"({listed(names)}) and modelyard cannot check it; if you made this file, pass "
            "--trust (trust=True) to load it this once: its sha256 is audited and the version "
            "is stored in its flavor's safe format")
    joblib = require("joblib", "sklearn")
    try:
        model = joblib.load(path)
    except Exception as exc:
        raise AdapterError(f"cannot unpickle {path.name}: {type(exc).__name__}: {exc}") from exc
    return _save_object(model, folder, request, source)


def _load_xgboost(path: Path, folder: Path, request: _Request) -> _Brought:
    """An XGBoost model file, rebuilt as the scikit-learn class its objective implies."""
    xgb = require("xgboost", "xgboost")
    try:
        booster = xgb.Booster()
        booster.load_model(str(path))
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        cls = (xgb.XGBClassifier if objective.startswith(("binary:logistic", "multi:"))
               else xgb.XGBRegressor if objective.startswith("reg:") else None)
        model: Any = booster
        if cls is not None:
            model = cls()
            model.load_model(str(path))
    except Exception as exc:
        raise AdapterError(f"xgboost: cannot load {path.name}: {exc}") from exc
    return _save_object(model, folder, request, _source(path, f"xgboost{path.suffix}"))


def _load_text(path: Path, folder: Path, request: _Request) -> _Brought:
    """A LightGBM text model (``Booster.save_model``)."""
    lgb = require("lightgbm", "lightgbm")
    try:
        model = lgb.Booster(model_file=str(path))
    except Exception as exc:
        raise AdapterError(f"lightgbm: cannot load {path.name} as a LightGBM model: "
                           f"{exc}") from exc
    return _save_object(model, folder, request, _source(path, "lightgbm-text"))


def _native(flavor: str, file: str, meta: dict[str, Any]) -> _Loader:
    """A loader for a file its adapter stores as it is (its ``load`` checks it first)."""

    def load(path: Path, folder: Path, request: _Request) -> _Brought:
        _same_flavor(request, flavor, path)
        shutil.copyfile(path, folder / file)
        return _Brought(get_adapter(flavor), {"file": file, **meta},
                        _source(path, f"{flavor}{path.suffix}"))

    return load


def _load_torch(path: Path, folder: Path, request: _Request) -> _Brought:
    """A TorchScript archive (``torch.jit.save``) or a ``torch.export`` program."""
    if _is_torchscript(path):
        return _native("torch", "model.ts", {"format": "torchscript"})(path, folder, request)
    return _native("torch", "model.pt2", {"format": "export"})(path, folder, request)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in n or n.startswith("code/") for n in archive.namelist())
    except zipfile.BadZipFile:
        raise ConfigError(f"cannot register {path.name}: not a TorchScript or torch.export "
                          "archive (a torch.save pickle is not accepted: script or export "
                          "the module, or register the object with its sample)") from None


def _same_flavor(request: _Request, flavor: str, path: Path) -> None:
    if request.flavor not in ("auto", flavor):
        raise ConfigError(f"{path.name} is a {flavor} model, not {request.flavor}; "
                          "use --flavor auto")


_LOADERS: dict[str, _Loader] = {
    ".pkl": _load_pickle, ".pickle": _load_pickle, ".joblib": _load_pickle,
    ".json": _load_xgboost, ".ubj": _load_xgboost,
    ".txt": _load_text, ".lgb": _load_text,
    ".pt": _load_torch, ".pt2": _load_torch, ".ts": _load_torch,
    ".keras": _native("tensorflow", "model.keras", {}),
    ".onnx": _native("onnx", "model.onnx", {}),
    ".skops": _native("sklearn", "model.skops", {}),
}


# -- what the version records ---------------------------------------------------------------------
def _load(adapter: Adapter, folder: Path, meta: dict[str, Any]) -> Any:
    try:
        return adapter.load(folder, dict(meta), "cpu")
    except ModelyardError:
        raise
    except Exception as exc:
        raise AdapterError(f"{adapter.flavor}: the stored model does not load: "
                           f"{type(exc).__name__}: {exc}") from exc


def _task(model: Any, meta: Mapping[str, Any], labels: Any) -> str:
    """``classification``, ``regression`` or ``raw``, from the model, else from ``labels``."""
    from modelyard.pipeline.child import infer_task

    if meta.get("kind") in ("classifier", "regressor"):  # LightGBM
        return "classification" if meta["kind"] == "classifier" else "regression"
    if meta.get("class") in ("XGBClassifier", "XGBRFClassifier"):
        return "classification"
    if meta.get("class") in ("XGBRegressor", "XGBRFRegressor"):
        return "regression"
    found = infer_task(model, labels if labels is not None else np.zeros((0, 0)))
    if found == "raw" and labels is None and hasattr(model, "predict_proba"):
        return "classification"
    return found


def _signature(adapter: Adapter, model: Any, sample: Any, labels: Any) -> dict[str, Any]:
    if sample is None:
        return {}
    try:
        return adapter.infer_signature(model, sample, labels).to_dict()
    except ModelyardError:
        raise
    except Exception as exc:
        raise AdapterError(f"{adapter.flavor}: cannot infer a signature from the sample: "
                           f"{exc}") from exc


def _with_classes(signature: dict[str, Any], model: Any, task: str) -> dict[str, Any]:
    """A classifier's signature names its classes; without labels they come from the model."""
    classes = getattr(model, "classes_", None)
    if task != "classification" or not signature or signature.get("classes") is not None \
            or classes is None:
        return signature
    return {**signature, "classes": [c.item() if hasattr(c, "item") else c for c in classes]}


def _settings_meta(settings: VersionSettings | None) -> dict[str, Any]:
    """Serving, monitoring and rollout sections (defaults unless given), as a trained version's
    meta holds them; no declared metric names unless the settings name some."""
    meta = (settings or VersionSettings()).to_meta()
    if settings is None or settings.metrics is None:
        meta.pop("metrics")
    return meta


__all__ = ["TRUST_ACTION", "Check", "Stored", "register_model"]
