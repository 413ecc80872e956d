"""Import an MLflow model registry: each model version becomes a modelyard version, proven equal.

``import_mlflow(registry, tracking_uri)`` reads the registry through ``MlflowClient`` and brings
each chosen version in through :func:`modelyard.pipeline.bring.register_model` (the path
``modelyard register`` takes), with its source run's params and metrics, its version, model and
run tags, its MLflow signature (mapped, :mod:`modelyard.pipeline.mlflow_mapping`) and its lineage
(run id, experiment, tracking URI) in ``meta["source"]``; then its aliases, and the legacy stages
Production/Staging as ``production``/``staging`` where no alias of that name says otherwise.

Safe formats are taken as they are or loaded by MLflow's flavor without running code (skops with
its type checks, XGBoost UBJSON/JSON, LightGBM text, ``torch.export``, ``.keras``); a pickle
(scikit-learn or LightGBM cloudpickle, a ``torch.save`` model, a custom pyfunc) is refused unless
``trust=True``, and is then loaded once and audited per file like ``register --trust``.

Before a version is registered, modelyard's stored artifact, loaded back, answers the version's
MLflow input example and its answers are compared with the MLflow-loaded model's
(:func:`modelyard.pipeline.parity.judge`): a mismatch refuses that version. Versions imported
before (the same MLflow model, version and run) are skipped, so an import can run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.errors import (
    ImportSourceError,
    ModelyardError,
    NotFoundError,
    UnsafeArtifactError,
)
from modelyard.pipeline.bring import Stored, register_model
from modelyard.pipeline.mlflow_mapping import (
    SOURCE_KIND,
    Artifact,
    SourceVersion,
    check_uri,
    choose_artifact,
    imported,
    map_signature,
    model_name,
    pick_versions,
    plan_aliases,
    source_key,
)
from modelyard.pipeline.parity import Answers, Limits, Parity, judge

if TYPE_CHECKING:
    from modelyard.registry import Registry

#: modelyard flavors whose 2-D inputs are a tensor (rows of one array), not named columns.
_TENSOR_FLAVORS = ("pytorch", "keras")
_PAGE = 200


@dataclass
class Outcome:
    """What happened to one MLflow version: imported, skipped, planned or refused."""

    model: str
    version: int
    action: str
    detail: str = ""
    ref: str | None = None
    error: ModelyardError | None = None

    def line(self) -> str:
        """One line for the terminal."""
        target = f" -> {self.ref}" if self.ref else ""
        return f"{self.action:8} {self.model} v{self.version}{target}: {self.detail}"


@dataclass
class ImportReport:
    """Every version's outcome and every alias set (``model@alias -> ref``)."""

    outcomes: list[Outcome] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def refused(self) -> list[Outcome]:
        """The versions that were refused, in order."""
        return [o for o in self.outcomes if o.action == "refused"]


@dataclass(frozen=True)
class _Source:
    """The MLflow registry being read, and how to ask it."""

    client: Any
    tracking_uri: str
    registry_uri: str


def import_mlflow(
    registry: Registry, tracking_uri: str, *, registry_uri: str | None = None,
    model: str | None = None, all_versions: bool = False, dry_run: bool = False,
    trust: bool = False, limits: Limits | None = None, actor: str | None = None,
) -> ImportReport:
    """Import MLflow model versions into ``registry`` (only the newest of each unless
    ``all_versions``); ``dry_run`` reads and plans but writes nothing.

    Raises :class:`ImportSourceError` for an unreachable tracking/registry URI or an unknown
    ``model``; a version that cannot be brought in is refused in the report, not raised.
    """
    check_uri(tracking_uri, "--tracking-uri")
    if registry_uri:
        check_uri(registry_uri, "--registry-uri")
    # without --registry-uri the registry is the tracking server's, never a process default
    source = _Source(_client(tracking_uri, registry_uri or tracking_uri), tracking_uri,
                     registry_uri or tracking_uri)
    report = ImportReport(dry_run=dry_run)
    for name in _model_names(source, model):
        _import_model(registry, source, name, report,
                      _Options(all_versions, dry_run, trust, limits or Limits(), actor))
    return report


@dataclass(frozen=True)
class _Options:
    all_versions: bool
    dry_run: bool
    trust: bool
    limits: Limits
    actor: str | None


# -- reading MLflow ------------------------------------------------------------------------------
def _client(tracking_uri: str, registry_uri: str) -> Any:
    from modelyard.adapters import require

    tracking = require("mlflow.tracking", "mlflow")
    return tracking.MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)


@contextlib.contextmanager
def _reading(source: _Source, what: str) -> Iterator[None]:
    """Translate what MLflow raises while reading into one :class:`ImportSourceError`."""
    try:
        yield
    except ModelyardError:
        raise
    except Exception as exc:  # MLflow, requests and SQLAlchemy errors alike
        code = str(getattr(exc, "error_code", ""))
        if code == "RESOURCE_DOES_NOT_EXIST":
            raise ImportSourceError(f"{what}: not found in the MLflow registry at "
                                    f"{source.registry_uri}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ImportSourceError(f"cannot read {what} from MLflow at {source.registry_uri}: "
                                f"{type(exc).__name__}: {first[:300]}") from None


def _model_names(source: _Source, model: str | None) -> list[str]:
    if model is not None:
        with _reading(source, f"model {model!r}"):
            return [source.client.get_registered_model(model).name]
    names: list[str] = []
    token = None
    with _reading(source, "the registered models"):
        while True:
            page = source.client.search_registered_models(max_results=_PAGE, page_token=token)
            names.extend(m.name for m in page)
            token = getattr(page, "token", None)
            if not token:
                return names


def _versions(source: _Source, name: str) -> list[SourceVersion]:
    quoted = name.replace("'", "\\'")
    found: list[SourceVersion] = []
    token = None
    with _reading(source, f"the versions of {name!r}"):
        # a search leaves versions' aliases out: the registered model lists them all
        aliases: dict[int, list[str]] = {}
        for alias, number in (source.client.get_registered_model(name).aliases or {}).items():
            aliases.setdefault(int(number), []).append(alias)
        while True:
            page = source.client.search_model_versions(
                f"name='{quoted}'", max_results=_PAGE, page_token=token)
            found.extend(SourceVersion(
                name, int(v.version), v.run_id or None, str(v.current_stage or "None"),
                tuple(sorted(aliases.get(int(v.version), ()))), dict(v.tags or {}),
                v.description or "") for v in page)
            token = getattr(page, "token", None)
            if not token:
                return found


def _run(source: _Source, run_id: str | None) -> dict[str, Any]:
    """The source run's params, metrics, tags and experiment (empty where the run is gone)."""
    if not run_id:
        return {}
    with _reading(source, f"run {run_id}"):
        try:
            run = source.client.get_run(run_id)
        except Exception as exc:
            if str(getattr(exc, "error_code", "")) == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        experiment = source.client.get_experiment(run.info.experiment_id)
    return {"params": dict(run.data.params), "metrics": dict(run.data.metrics),
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "experiment_id": run.info.experiment_id,
            "experiment": experiment.name if experiment is not None else None}


def _download(source: _Source, name: str, version: int, folder: Path) -> Path:
    from mlflow import artifacts

    with _reading(source, f"the artifacts of {name} v{version}"):
        uri = source.client.get_model_version_download_uri(name, str(version))
        return Path(artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(folder), tracking_uri=source.tracking_uri))


# -- one model -----------------------------------------------------------------------------------
def _import_model(registry: Registry, source: _Source, name: str, report: ImportReport,
                  options: _Options) -> None:
    target = model_name(name)
    versions = _versions(source, name)
    done = _already(registry, target)
    numbers: dict[int, int] = {}
    for v in pick_versions(versions, options.all_versions):
        key = source_key(name, v.version, v.run_id)
        if key in done:
            numbers[v.version] = done[key]
            report.outcomes.append(Outcome(name, v.version, "skipped", "imported before",
                                           f"{target}:{done[key]}"))
            continue
        outcome = _import_version(registry, source, v, target, options)
        report.outcomes.append(outcome)
        if outcome.action == "imported" and outcome.ref is not None:
            numbers[v.version] = int(outcome.ref.rpartition(":")[2])
    for v in versions:  # versions imported by earlier runs hold aliases too
        key = source_key(name, v.version, v.run_id)
        if key in done:
            numbers.setdefault(v.version, done[key])
    _apply_aliases(registry, target, plan_aliases(versions), numbers, report, options)


def _already(registry: Registry, target: str) -> dict[tuple[str, int, str], int]:
    try:
        versions = registry.list_versions(target)
    except NotFoundError:
        return {}
    return imported((v.version, v.meta) for v in versions)


def _apply_aliases(registry: Registry, target: str, plan: Mapping[str, int],
                   numbers: Mapping[int, int], report: ImportReport, options: _Options) -> None:
    current: dict[str, int] = {}
    if not options.dry_run and numbers:
        current = dict(registry.get_model(target).aliases)
    for alias, mlflow_version in sorted(plan.items()):
        number = numbers.get(mlflow_version)
        if options.dry_run:
            report.aliases.append(f"{target}@{alias} -> MLflow v{mlflow_version}")
        elif number is None:
            report.aliases.append(f"{target}@{alias}: not set, MLflow v{mlflow_version} was "
                                  "not imported (--all-versions imports it)")
        elif current.get(alias) != number:
            registry.set_alias(target, alias, number, actor=options.actor,
                               reason=f"imported from MLflow (v{mlflow_version})")
            report.aliases.append(f"{target}@{alias} -> {target}:{number}")


# -- one version ---------------------------------------------------------------------------------
def _import_version(registry: Registry, source: _Source, v: SourceVersion, target: str,
                    options: _Options) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="modelyard-mlflow-") as tmp:
        try:
            folder = _download(source, v.model, v.version, Path(tmp))
            mlmodel = _mlmodel(folder)
            files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
            artifact = choose_artifact(mlmodel.flavors, files)
            plan = f"{artifact.flavor} {artifact.path} ({artifact.fmt}" + (
                ")" if artifact.safe else ", a pickle: needs --trust)")
            if options.dry_run:
                return Outcome(v.model, v.version, "planned",
                               f"would import {plan} as a new version of {target}")
            if not artifact.safe and not options.trust:
                raise UnsafeArtifactError(
                    f"{v.model} v{v.version}: {artifact.path} is a {artifact.fmt} pickle, whose "
                    "loading runs the code it names; if you trust this registry, pass --trust "
                    "(each file's sha256 is audited and the version is stored in a safe format)")
            version = _register(registry, source, v, target, folder, mlmodel, artifact, options)
        except ModelyardError as exc:
            return Outcome(v.model, v.version, "refused", str(exc), error=exc)
    parity = version.meta["source"].get("parity")
    checked = (f"parity on {parity['rows']} example rows, max |diff| "
               f"{parity['max_abs_diff']:.3g}" if parity else "no input example: parity "
               "not checked")
    return Outcome(v.model, v.version, "imported", f"{plan}; {checked}", version.ref)


def _mlmodel(folder: Path) -> Any:
    from mlflow.models import Model

    if not (folder / "MLmodel").is_file():
        raise ImportSourceError(f"{folder.name}: no MLmodel file; not an MLflow model")
    return Model.load(str(folder / "MLmodel"))


def _register(registry: Registry, source: _Source, v: SourceVersion, target: str,
              folder: Path, mlmodel: Any, artifact: Artifact, options: _Options) -> Any:
    from modelyard.pipeline.mlflow_loading import load_native, to_register

    run = _run(source, v.run_id)
    example = _example(mlmodel, folder)
    # a file modelyard takes as it is is loaded by MLflow only after modelyard's own check of
    # it passed (in the parity check); anything else MLflow loads first, to hand it over
    native = None if artifact.by_file else load_native(artifact, folder)
    signature = map_signature(
        mlmodel.signature.to_dict() if mlmodel.signature else None,
        tensor=artifact.flavor in _TENSOR_FLAVORS)
    origin = _origin(source, v, run, artifact, folder)
    return register_model(
        registry, target, folder / artifact.path if artifact.by_file else to_register(native),
        sample=example, metrics=run.get("metrics"), params=run.get("params"),
        description=v.description, origin=origin, signature=signature,
        check=_parity_check(native, artifact, folder, example, v, origin, options.limits),
        actor=options.actor)


def _origin(source: _Source, v: SourceVersion, run: Mapping[str, Any], artifact: Artifact,
            folder: Path) -> dict[str, Any]:
    origin: dict[str, Any] = {
        "kind": SOURCE_KIND, "model": v.model, "version": v.version, "run_id": v.run_id,
        "experiment_id": run.get("experiment_id"), "experiment": run.get("experiment"),
        "tracking_uri": source.tracking_uri, "registry_uri": source.registry_uri,
        "stage": v.stage, "aliases": list(v.aliases), "tags": dict(v.tags),
        "run_tags": dict(run.get("tags", {})), "flavor": artifact.flavor,
        "artifact": artifact.path, "format": artifact.fmt,
        "sha256": _sha256(folder / artifact.path),
    }
    if not artifact.safe:
        origin["trusted"] = True  # refused before this point unless trust=True
    return origin


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _example(mlmodel: Any, folder: Path) -> Any:
    try:
        example = mlmodel.load_input_example(str(folder))
    except Exception as exc:
        raise ImportSourceError(f"the input example does not load: {exc}") from None
    if isinstance(example, dict | list | tuple):
        return None  # several named tensors: modelyard's signatures take one input
    return example


# -- parity --------------------------------------------------------------------------------------
def _parity_check(native: Any, artifact: Artifact, folder: Path, example: Any,
                  v: SourceVersion, origin: dict[str, Any], limits: Limits
                  ) -> Callable[[Stored], Mapping[str, float]]:
    """The check ``register_model`` runs on the stored artifact before registering it; the
    figures go to the version's metrics and (through ``origin``) to ``meta["source"]``."""
    from modelyard.pipeline.mlflow_loading import load_native, mlflow_answers

    def check(stored: Stored) -> Mapping[str, float]:
        if example is None:
            return {}
        original = native if native is not None else load_native(artifact, folder)
        theirs = mlflow_answers(original, artifact.flavor, example, stored.task)
        parity = judge(theirs, _modelyard_answers(stored, example), limits)
        if not parity.passed:
            raise ImportSourceError(
                f"{v.model} v{v.version} refused: modelyard's version does not answer like "
                f"MLflow's on the input example ({parity.summary()}): "
                f"{'; '.join(parity.reasons)}; nothing was registered")
        origin["parity"] = _parity_meta(parity)
        return parity.metrics()

    return check


def _parity_meta(parity: Parity) -> dict[str, Any]:
    return {"rows": parity.rows, "max_abs_diff": parity.max_abs_diff,
            "label_agreement": parity.label_agreement}


def _modelyard_answers(stored: Stored, example: Any) -> Answers:
    from modelyard.predictor import Predictor
    from modelyard.schema import Signature

    predictor = Predictor("import", 0, stored.adapter.flavor, stored.model, stored.adapter,
                          Signature.from_dict(stored.signature), "cpu", stored.task)
    batch, _ = predictor.signature.prepare(example)
    answer = predictor.predict_batch(batch, scores=stored.task == "classification")
    if stored.task == "classification" and answer.scores is not None:
        return Answers(np.asarray(answer.scores), np.asarray(answer.predictions))
    values = np.asarray(answer.predictions)
    return Answers(values, _argmax(values) if stored.task != "regression" else None)


def _argmax(values: Any) -> Any:
    arr = np.asarray(values)
    return arr.argmax(axis=1) if arr.ndim == 2 and arr.shape[1] > 1 else None


__all__ = ["ImportReport", "Outcome", "import_mlflow"]
