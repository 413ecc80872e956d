"""Serving settings tuned at serve time: ``modelyard serve --model-config FILE``.

A version carries the serving settings its spec declared (``meta["serving"]``: batching,
device, isolation, sample rate, ...); the file changes them for this server without registering
a new version::

    models:
      "*":                       # every model (a model's own entry goes on top)
        batching: {max_queue: 4096}
      fraud:
        batching: {max_batch_size: 64, max_delay_ms: 1}
      sentiment:
        sample_rate: 0.1
        isolation: inline

Each entry takes the fields of the spec's ``serving`` section except ``sensitive`` (which
fields the prediction log hides is the version's promise, not a tuning knob) and ``replicas``
(``--workers`` runs copies). The file is checked when the server starts: a field that does not
exist or a value out of range is a one-line :class:`~modelyard.errors.ConfigError` naming the
model and the field. :func:`tuned` is the one place an override meets a version's parsed
settings (:class:`~modelyard.version_settings.VersionSettings`), through :func:`merged`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modelyard.errors import ConfigError
from modelyard.spec import ServingSpec, load_yaml

#: the entry that applies to every model.
EVERY_MODEL = "*"
#: serving fields a serve config may not change (see the module docstring).
FIXED = frozenset({"sensitive", "replicas"})


def merged(registered: Mapping[str, Any] | None, override: Mapping[str, Any]) -> dict[str, Any]:
    """A version's serving settings with ``override`` on top; nested sections (``batching``)
    merge field by field, so an override of ``max_batch_size`` keeps the version's delay."""
    out = dict(registered or {})
    for key, value in override.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = {**below, **value}
        else:
            out[key] = value
    return out


def for_model(overrides: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
    """The override of one model: the every-model entry, then the model's own on top."""
    return merged(overrides.get(EVERY_MODEL), overrides.get(name) or {})


def tuned(serving: ServingSpec, overrides: Mapping[str, Mapping[str, Any]],
          model: str) -> ServingSpec:
    """A version's registered serving section with this server's override for ``model`` on
    top (the section itself when there is none). The fields the version set stay set, so a
    classic model's registered ``max_delay_ms`` still counts as chosen."""
    override = for_model(overrides, model)
    if not override:
        return serving
    return ServingSpec.model_validate(merged(serving.model_dump(exclude_unset=True), override))


def check(overrides: Any, where: str = "serve config") -> dict[str, dict[str, Any]]:
    """``overrides`` checked: model name -> serving fields; :class:`ConfigError` if not."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: 'models' must map model names (or \"*\") to serving "
                          "settings")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in overrides.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: models.{name} must be a mapping of serving settings, "
                              "e.g. {batching: {max_batch_size: 64}}")
        fixed = sorted(FIXED & set(entry))
        if fixed:
            raise ConfigError(f"{where}: models.{name}.{fixed[0]} cannot be changed at serve "
                              "time; register a new version with the spec's serving section")
        try:
            ServingSpec.model_validate(dict(entry))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{where}: models.{name}.{field}: {err['msg']}") from None
        out[str(name)] = dict(entry)
    return out


def load(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check a serve config file (YAML, ``models:`` at the top)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the serve config {file}: {exc}") from None
    doc = load_yaml(text, where=str(file)) or {}
    if not isinstance(doc, Mapping) or set(doc) - {"models"}:
        raise ConfigError(f"{file}: the top level takes 'models' only, e.g. "
                          "models: {fraud: {batching: {max_batch_size: 64}}}")
    return check(doc.get("models") or {}, str(file))


__all__ = ["EVERY_MODEL", "FIXED", "check", "for_model", "load", "merged", "tuned"]
