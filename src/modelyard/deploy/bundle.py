"""An edge bundle: an ONNX version as a small Python package needing only onnxruntime and numpy.

``write_bundle(registry, version, folder)`` writes, for an ``onnx`` version (an export made by
:mod:`modelyard.pipeline.export`)::

    folder/pyproject.toml             the package: numpy and onnxruntime as its only dependencies
    folder/<package>/__init__.py      the predictor (:mod:`modelyard.deploy.edge_predictor`)
    folder/<package>/model.onnx       the model, the very bytes of the registered artifact
    folder/<package>/signature.json   inputs, classes, task, source and parity figures

``pip install ./folder`` (or the folder on ``sys.path``) and ``<package>.load().predict(rows)``
answer as the registered version does, with no modelyard, server or framework installed: the
model-as-a-dependency pattern for an application or a device.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.errors import ConfigError, ConflictError

if TYPE_CHECKING:
    from modelyard.registry import ModelVersion, Registry

_PREDICTOR = Path(__file__).with_name("edge_predictor.py")
_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{distribution}"
version = "{version}"
description = "{description}"
requires-python = ">=3.10"
dependencies = ["numpy", "onnxruntime"]

[tool.setuptools]
packages = ["{package}"]

[tool.setuptools.package-data]
{package} = ["model.onnx", "signature.json"]
"""


def package_name(model: str) -> str:
    """A Python package name for ``model``'s bundle: ``fraud-v2`` -> ``fraud_v2_model``."""
    name = re.sub(r"\W+", "_", model).strip("_").lower() or "model"
    return f"{'m_' if name[0].isdigit() else ''}{name}_model"


def write_bundle(registry: Registry, version: ModelVersion, folder: Path,
                 package: str | None = None) -> Path:
    """Write ``version`` (flavor ``onnx``) as a package into the new or empty ``folder``.

    Returns the package's folder. Raises :class:`ConfigError` for another flavor and
    :class:`ConflictError` for a ``folder`` that holds files already.
    """
    if version.flavor != "onnx":
        raise ConfigError(f"{version.ref} is a {version.flavor} model: export it to ONNX first "
                          "(modelyard export --bundle does)")
    package = package or package_name(version.model)
    if not package.isidentifier():
        raise ConfigError(f"--package {package!r} is not a Python package name")
    folder = Path(folder)
    check_target(folder)
    artifact = registry.artifact_path(version)  # verified against its digest
    target = folder / package
    target.mkdir(parents=True)
    shutil.copyfile(artifact / str(version.meta.get("file", "model.onnx")), target / "model.onnx")
    shutil.copyfile(_PREDICTOR, target / "__init__.py")
    (target / "signature.json").write_text(json.dumps(_signature(version), indent=2) + "\n")
    (folder / "pyproject.toml").write_text(_PYPROJECT.format(
        distribution=package.replace("_", "-"), version=f"{version.version}.0",
        package=package, description=f"modelyard edge bundle of {version.ref}"))
    return target


def check_target(folder: Path) -> None:
    """Raise :class:`ConflictError` unless ``folder`` is new or an empty folder."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConflictError(f"{folder} is not an empty folder; give a new one")


def _signature(version: ModelVersion) -> dict[str, Any]:
    signature = version.signature or {}
    return {
        "model": version.ref,
        "derived_from": version.meta.get("derived_from"),
        "digest": version.artifact_digest,
        "task": version.meta.get("task"),
        "layout": signature.get("layout", "table"),
        "inputs": signature.get("inputs", []),
        "classes": signature.get("classes"),
        "parity": {k: v for k, v in version.metrics.items() if k.startswith("parity_")},
    }


__all__ = ["check_target", "package_name", "write_bundle"]
