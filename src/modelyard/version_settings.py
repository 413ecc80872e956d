"""What a registered version declares for its life after training: serving, monitoring, rollout.

The pipeline registers each version with its spec's ``serving``, ``monitoring`` and ``rollout``
sections and its metric names in ``meta`` (:meth:`VersionSettings.to_meta`). Every reader — the
server placing, batching and logging a version, the monitor and its retention sweep, rollout
planning — reads them back through :meth:`VersionSettings.of`, once, into this one frozen
object. The sections are parsed by the spec's own models (:class:`~modelyard.spec.ServingSpec`,
:class:`~modelyard.spec.MonitorSpec`, :class:`~modelyard.spec.RolloutSpec`), so every default
is written in one place, :mod:`modelyard.spec`: a version registered without a section (by
hand, or before the section was stored) gets that model's defaults, and the fields a spec set
stay told apart from defaults (``model_fields_set``), as batching and rollout planning need.

A malformed stored section is a :class:`~modelyard.errors.ConfigError` naming the field. A
reader that must keep working whatever one version holds (the server loading a version, the
monitor's sweeps over every model) passes ``strict=False``: that section's defaults apply and
a warning naming the field is logged once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from modelyard.errors import ConfigError
from modelyard.spec import MonitorSpec, PrecomputeSpec, RolloutSpec, ServingSpec

if TYPE_CHECKING:
    from modelyard.registry.records import ModelVersion
    from modelyard.spec import Spec

log = logging.getLogger(__name__)

_Section = TypeVar("_Section", bound=BaseModel)
#: the warnings already logged, so a server polling a broken version says so once.
_warned: set[str] = set()


@dataclass(frozen=True)
class VersionSettings:
    """A version's registered ``serving``, ``monitoring`` and ``rollout`` sections and metrics.

    Build it with :meth:`of` (a registry version) or :meth:`from_meta`. ``metrics`` is the
    declared metric names, ``None`` when the version declared none.
    """

    serving: ServingSpec = field(default_factory=ServingSpec)
    monitoring: MonitorSpec = field(default_factory=MonitorSpec)
    rollout: RolloutSpec = field(default_factory=RolloutSpec)
    metrics: tuple[str, ...] | None = None
    #: the ``precompute`` section (None: the version's answers are never precomputed)
    precompute: PrecomputeSpec | None = None

    @classmethod
    def of(cls, version: ModelVersion, *, strict: bool = True) -> VersionSettings:
        """The settings registered with ``version`` (see :meth:`from_meta`)."""
        return cls.from_meta(version.meta, version.ref, strict=strict)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], ref: str = "the version", *,
                  strict: bool = True) -> VersionSettings:
        """Parse a version's ``meta``; a missing section gets the spec's defaults.

        A malformed section raises :class:`ConfigError` naming ``ref`` and the field, or with
        ``strict=False`` gives that section's defaults and logs the same words as a warning.
        """
        return cls(serving=_section(meta, "serving", ServingSpec, ref, strict),
                   monitoring=_section(meta, "monitoring", MonitorSpec, ref, strict),
                   rollout=_section(meta, "rollout", RolloutSpec, ref, strict),
                   metrics=_metrics(meta, ref, strict),
                   precompute=_precompute(meta, ref, strict))

    @classmethod
    def from_spec(cls, spec: Spec) -> VersionSettings:
        """What a version trained from ``spec`` carries."""
        return cls(serving=spec.serving, monitoring=spec.monitoring, rollout=spec.rollout,
                   metrics=tuple(spec.metrics), precompute=spec.precompute)

    def to_meta(self) -> dict[str, Any]:
        """The sections as the registry stores them in a version's ``meta``."""
        return {
            # unset serving and rollout fields stay unset, so a chosen max_delay_ms or strategy
            # is told from the default when they are read back
            "serving": self.serving.model_dump(exclude_unset=True),
            "metrics": list(self.metrics or ()),
            "monitoring": self.monitoring.model_dump(mode="json"),
            "rollout": self.rollout.model_dump(mode="json", exclude_unset=True),
            **({} if self.precompute is None else
               {"precompute": self.precompute.model_dump(mode="json")}),
        }

    def watched_metrics(self, measured: Mapping[str, Any]) -> list[str]:
        """The metric names monitoring computes: the declared ones, else those ``measured`` at
        training (a version registered by hand declares none)."""
        return list(self.metrics) if self.metrics is not None else sorted(measured)


def _section(meta: Mapping[str, Any], name: str, model: type[_Section], ref: str,
             strict: bool) -> _Section:
    raw = meta.get(name)
    try:
        return _parse(model, name, {} if raw is None else raw, ref)
    except ConfigError as exc:
        if strict:
            raise
        _warn_once(f"{exc}; using the defaults of {name} meanwhile")
        return model.model_validate({})


def _parse(model: type[_Section], name: str, raw: Any, ref: str) -> _Section:
    """``raw`` validated by the section's spec model, or :class:`ConfigError` naming the field."""
    if not isinstance(raw, Mapping):
        where, why = name, f"expected a mapping, got {type(raw).__name__}"
    else:
        try:
            return model.model_validate(dict(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where, why = ".".join([name, *(str(p) for p in first["loc"])]), first["msg"]
    raise ConfigError(f"{ref}: its registered {name} section is invalid ({where}: {why}); "
                      "register a new version from a valid spec")


def _precompute(meta: Mapping[str, Any], ref: str, strict: bool) -> PrecomputeSpec | None:
    if meta.get("precompute") is None:
        return None
    try:
        return _parse(PrecomputeSpec, "precompute", meta["precompute"], ref)
    except ConfigError as exc:
        if strict:
            raise
        _warn_once(f"{exc}; answering live meanwhile")
        return None


def _metrics(meta: Mapping[str, Any], ref: str, strict: bool) -> tuple[str, ...] | None:
    raw = meta.get("metrics")
    if raw is None:
        return None
    if isinstance(raw, list | tuple) and all(isinstance(n, str) for n in raw):
        return tuple(raw)
    message = (f"{ref}: its registered metrics are invalid (metrics: expected a list of metric "
               f"names, got {raw!r:.80}); register a new version from a valid spec")
    if strict:
        raise ConfigError(message)
    _warn_once(f"{message}; using none meanwhile")
    return None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


__all__ = ["VersionSettings"]
