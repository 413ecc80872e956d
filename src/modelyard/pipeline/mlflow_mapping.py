"""How an MLflow model registry maps onto modelyard's: pure decisions, no MLflow and no I/O.

:mod:`modelyard.pipeline.mlflow_import` reads the MLflow side and applies what these functions
decide: which versions to import (:func:`pick_versions`), where each alias points
(:func:`plan_aliases`: MLflow aliases, then the legacy stages ``Production``/``Staging`` where no
alias of that name says otherwise), which stored file of a version is brought in and whether
loading it runs code (:func:`choose_artifact`), and the MLflow signature as a modelyard one
(:func:`map_signature`). Versions already imported are known by their source
(:func:`source_key`), so an import can run again and skip them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import ImportSourceError

#: legacy MLflow stages and the modelyard alias each becomes.
STAGE_ALIASES = {"Production": "production", "Staging": "staging"}
#: the ``meta["source"]["kind"]`` of an imported version.
SOURCE_KIND = "mlflow"

#: MLflow column types and the modelyard dtype each becomes.
_COLUMN_TYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32",
                 "boolean": "bool", "string": "string"}
_TENSOR_TYPES = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8",
                 "bool"}


@dataclass(frozen=True)
class SourceVersion:
    """One MLflow model version, as read from its registry."""

    model: str
    version: int
    run_id: str | None = None
    stage: str = "None"
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Artifact:
    """The file of an MLflow model that is brought in, and how.

    ``flavor`` is MLflow's flavor name; ``path`` the file inside the model folder; ``fmt`` its
    format; ``safe`` whether loading it runs no code; ``by_file`` whether modelyard takes the file
    as it is (``register_model`` on the path) rather than the object MLflow's flavor loads.
    """

    flavor: str
    path: str
    fmt: str
    safe: bool
    by_file: bool


def check_uri(uri: str, option: str) -> None:
    """Refuse a local store that does not exist, before MLflow would create an empty one there."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?")[0])
        if not path.is_file():
            raise ImportSourceError(f"{option} {uri}: no MLflow database at {path}")
    elif uri.startswith(("file:", "/", ".")):
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        if not path.is_dir():
            raise ImportSourceError(f"{option} {uri}: no MLflow store folder at {path}")


def model_name(name: str) -> str:
    """The modelyard name of an MLflow model: characters modelyard does not allow become '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:200]
    if not cleaned:
        raise ImportSourceError(f"MLflow model {name!r} has no letter or digit to name it by")
    return cleaned


def alias_name(alias: str) -> str | None:
    """The modelyard alias for an MLflow alias (lowercase, '-' for others), or None if none fits."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", alias.lower()).strip("-_")
    cleaned = cleaned.lstrip("0123456789-_")[:100]
    return cleaned or None


def pick_versions(versions: Iterable[SourceVersion], all_versions: bool) -> list[SourceVersion]:
    """The versions to import, oldest first: all of them, or only the newest."""
    ordered = sorted(versions, key=lambda v: v.version)
    return ordered if all_versions else ordered[-1:]


def plan_aliases(versions: Sequence[SourceVersion]) -> dict[str, int]:
    """Where each modelyard alias points (MLflow version numbers), from every version's aliases
    and stages: an MLflow alias wins over a stage of the same name; of several versions in one
    stage, the newest holds the alias."""
    from_aliases: dict[str, int] = {}
    from_stages: dict[str, int] = {}
    for v in sorted(versions, key=lambda v: v.version):
        for alias in v.aliases:
            name = alias_name(alias)
            if name is not None:
                from_aliases[name] = v.version
        stage_alias = STAGE_ALIASES.get(v.stage)
        if stage_alias is not None:
            from_stages[stage_alias] = v.version
    return {**from_stages, **from_aliases}


def source_key(model: str, version: int, run_id: str | None) -> tuple[str, int, str]:
    """What identifies an imported version: the MLflow model, version number and source run."""
    return (model, int(version), run_id or "")


def imported(metas: Iterable[tuple[int, Mapping[str, Any]]]) -> dict[tuple[str, int, str], int]:
    """The modelyard version of each MLflow version already imported, from versions' meta."""
    found: dict[tuple[str, int, str], int] = {}
    for number, meta in metas:
        source = meta.get("source") or {}
        if source.get("kind") == SOURCE_KIND:
            key = source_key(source.get("model", ""), source.get("version", 0),
                             source.get("run_id"))
            found[key] = number
    return found


# -- which file is brought in --------------------------------------------------------------------
def _sklearn(conf: Mapping[str, Any]) -> Artifact:
    fmt = str(conf.get("serialization_format", "cloudpickle"))
    path = str(conf.get("pickled_model", "model.pkl"))
    return Artifact("sklearn", path, fmt, fmt == "skops", by_file=fmt == "skops")


def _xgboost(conf: Mapping[str, Any]) -> Artifact:
    path = str(conf.get("data", "model.xgb"))
    # ubj and json are XGBoost's own formats (data, no code): modelyard takes the file as it is
    return Artifact("xgboost", path, str(conf.get("model_format", "xgb")), True,
                    by_file=path.endswith((".ubj", ".json")))


def _lightgbm(conf: Mapping[str, Any]) -> Artifact:
    path = str(conf.get("data", "model.lgb"))
    fmt = "text" if path.endswith(".lgb") else str(conf.get("serialization_format", "cloudpickle"))
    # a Booster is a text file; the scikit-learn classes are skops (type-checked) or a pickle
    return Artifact("lightgbm", path, fmt, fmt in ("text", "skops"), by_file=fmt == "text")


def _pytorch(conf: Mapping[str, Any]) -> Artifact:
    folder = str(conf.get("model_data", "data"))
    fmt = str(conf.get("serialization_format") or "")
    # MLflow writes data/model.pt2 (torch.export, weights loaded without code) or data/model.pth
    # (torch.save, a pickle); which one is known from the folder, read by the caller
    if fmt == "pickle":
        return Artifact("pytorch", f"{folder}/model.pth", "pickle", False, by_file=False)
    return Artifact("pytorch", f"{folder}/model.pt2", "pt2", True, by_file=True)


def _keras(conf: Mapping[str, Any]) -> Artifact:
    folder = str(conf.get("data", "data"))
    if conf.get("save_exported_model"):
        raise ImportSourceError("a Keras model MLflow saved as an exported SavedModel cannot be "
                                "brought in: log it with save_exported_model=False (.keras)")
    # a .keras archive: modelyard's adapter checks its config before it builds any layer
    return Artifact("keras", f"{folder}/model.keras", "keras", True, by_file=True)


def _pyfunc(conf: Mapping[str, Any]) -> Artifact:
    # a custom pyfunc is a cloudpickled PythonModel: its class is loaded by running the pickle
    return Artifact("python_function", str(conf.get("python_model", "python_model.pkl")),
                    "cloudpickle", False, by_file=False)


#: the MLflow flavors modelyard brings in, most specific first; pyfunc is the fallback.
FLAVORS: dict[str, Callable[[Mapping[str, Any]], Artifact]] = {
    "sklearn": _sklearn, "xgboost": _xgboost, "lightgbm": _lightgbm, "pytorch": _pytorch,
    "keras": _keras, "python_function": _pyfunc,
}


def choose_artifact(flavors: Mapping[str, Mapping[str, Any]], files: Iterable[str] = ()
                    ) -> Artifact:
    """The artifact to bring in from an MLmodel's ``flavors``, or :class:`ImportSourceError`.

    ``files`` are the model folder's relative paths: a PyTorch model's format is the file found.
    """
    present = set(files)
    for name, choose in FLAVORS.items():
        if name not in flavors:
            continue
        conf = dict(flavors[name])
        if name == "pytorch" and f"{conf.get('model_data', 'data')}/model.pth" in present:
            conf["serialization_format"] = "pickle"
        if name == "python_function" and "python_model" not in conf:
            continue  # a loader_module pyfunc of a flavor not listed above
        return choose(conf)
    raise ImportSourceError(
        f"no flavor modelyard can bring in: the model has {', '.join(sorted(flavors)) or 'none'}"
        f"; modelyard takes {', '.join(FLAVORS)}")


# -- the signature -------------------------------------------------------------------------------
def map_signature(signature: Mapping[str, Any] | None, *, tensor: bool,
                  classes: Sequence[Any] | None = None) -> dict[str, Any] | None:
    """An MLflow signature (``{"inputs": "<json>", ...}``) as a modelyard signature dict.

    Named columns become a ``table`` (a DataFrame's); one tensor becomes a ``tensor`` for
    ``tensor=True`` flavors (torch, keras), else 2-D rows of a ``table`` named f0, f1, ...
    Returns None where the spec holds what modelyard has no dtype for (binary, datetime, nested).
    """
    if not signature or not signature.get("inputs"):
        return None
    specs = _specs(signature["inputs"])
    if not specs:
        return None
    if all(s.get("type") == "tensor" for s in specs):
        out = _tensor_inputs(specs, tensor)
    elif any(s.get("type") == "tensor" or s.get("name") is None for s in specs):
        return None
    else:
        out = _column_inputs(specs)
    if out is None:
        return None
    out["outputs"] = []
    if classes is not None:
        out["classes"] = [_plain(c) for c in classes]
    return out


def _specs(raw: Any) -> list[dict[str, Any]]:
    specs = json.loads(raw) if isinstance(raw, str) else raw
    return [dict(s) for s in specs] if isinstance(specs, list) else []


def _column_inputs(specs: list[dict[str, Any]]) -> dict[str, Any] | None:
    inputs = []
    for spec in specs:
        dtype = _COLUMN_TYPES.get(str(spec.get("type")))
        if dtype is None:
            return None
        inputs.append({"name": str(spec["name"]), "dtype": dtype, "shape": []})
    return {"layout": "table", "frame": True, "inputs": inputs}


def _tensor_inputs(specs: list[dict[str, Any]], tensor: bool) -> dict[str, Any] | None:
    if len(specs) != 1:
        return None
    spec = specs[0].get("tensor-spec") or {}
    dtype, shape = str(spec.get("dtype")), [int(d) for d in spec.get("shape", [])]
    if dtype not in _TENSOR_TYPES or len(shape) < 2 or any(d < 0 for d in shape[1:]):
        return None
    if tensor or len(shape) != 2:
        return {"layout": "tensor", "frame": False,
                "inputs": [{"name": "input", "dtype": dtype, "shape": shape[1:]}]}
    columns = [{"name": f"f{i}", "dtype": dtype, "shape": []} for i in range(shape[1])]
    return {"layout": "table", "frame": False, "inputs": columns}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


__all__ = [
    "FLAVORS",
    "SOURCE_KIND",
    "STAGE_ALIASES",
    "Artifact",
    "SourceVersion",
    "alias_name",
    "check_uri",
    "choose_artifact",
    "imported",
    "map_signature",
    "model_name",
    "pick_versions",
    "plan_aliases",
    "source_key",
]
