"""Pools: which models this server serves (``--pool``, ``--models``) and where the others are.

A model belongs to one pool, the one its served version's ``serving`` section names
(:meth:`~modelyard.spec.ServingSpec.pool_for`: ``serving.pool``, else ``gpu`` or ``cpu`` by its
device and flavor); a model without the served alias goes by its newest version. The section is
read as this server loads the version (``--model-config`` on top), so a pool changes with a
promotion: the model leaves the servers of its old pool and the new pool's servers take it.

Every server of a project reads the same registry, so each knows every model's pool. The
:class:`Selection` says which this one serves; a request for another gets a 404 that names the
pool serving it (:meth:`Selection.refusal`). The decisions here are pure;
:class:`~modelyard.serving.catalog.Catalog` applies them to its registry snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelyard.adapters import get_adapter
from modelyard.devices import validate_pool
from modelyard.errors import ConfigError
from modelyard.serving.overrides import tuned
from modelyard.version_settings import VersionSettings


@dataclass(frozen=True)
class Placement:
    """Where a model version serves: its ``pool`` and the ``device`` its serving section asks
    for (``auto``, ``cpu``, ``cuda[:N]``; the device it runs on is known once it is loaded)."""

    pool: str
    device: str


def placement(record: Any, overrides: Mapping[str, Mapping[str, Any]]) -> Placement:
    """The placement of a registry version (``record``) under this server's ``overrides``."""
    serving = tuned(VersionSettings.of(record, strict=False).serving, overrides, record.model)
    return Placement(serving.pool_for(accelerated=_accelerated(record.flavor)), serving.device)


def _accelerated(flavor: str) -> bool:
    try:
        return get_adapter(flavor).accelerated
    except ConfigError:  # a flavor this install lacks cannot load anywhere: it stays on cpu
        return False


def split_names(values: Iterable[str]) -> tuple[str, ...]:
    """Names from repeated and comma-separated options (``--pool cpu,nlp --pool gpu``), in
    order, each once."""
    return tuple(dict.fromkeys(n for value in values for n in value.replace(",", " ").split()))


@dataclass(frozen=True)
class Selection:
    """The models one server serves: those in ``pools`` and named in ``models``; an empty set
    restricts nothing, so the default serves every model of every pool."""

    pools: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()

    @classmethod
    def of(cls, pools: Iterable[str] = (), models: Iterable[str] = ()) -> Selection:
        """A selection from option values; :class:`ConfigError` names a malformed pool."""
        try:
            checked = frozenset(validate_pool(p) for p in pools)
        except ValueError as exc:
            raise ConfigError(f"--pool: {exc}") from None
        return cls(checked, frozenset(models))

    @property
    def everything(self) -> bool:
        """Whether every model is served here (no ``--pool``, no ``--models``)."""
        return not (self.pools or self.models)

    def serves(self, name: str, pool: str | None) -> bool:
        """Whether model ``name`` of pool ``pool`` is served here (``None``: a model with no
        version yet has no pool, and only ``models`` can pass it by)."""
        in_pool = not self.pools or pool is None or pool in self.pools
        return in_pool and (not self.models or name in self.models)

    def describe(self) -> str:
        """What this server serves, in words: ``pool 'cpu'``, ``models 'a', 'b'``, ..."""
        parts = []
        if self.pools:
            parts.append(_words("pool", self.pools))
        if self.models:
            parts.append(_words("model", self.models))
        return " and ".join(parts) or "every pool"

    def refusal(self, name: str, pool: str) -> str:
        """Why a request for model ``name`` of pool ``pool`` is answered 404 here."""
        if self.pools and pool not in self.pools:
            return (f"model '{name}' is served by the '{pool}' pool; this server serves "
                    f"{self.describe()}")
        return (f"model '{name}' (pool '{pool}') is not served by this server, which serves "
                f"{self.describe()}; send it to a server that serves it")

    def to_dict(self) -> dict[str, list[str] | None]:
        """What ``/readyz`` and the server metadata say this server serves (None: every)."""
        return {"pools": sorted(self.pools) or None, "models": sorted(self.models) or None}


def _words(kind: str, names: frozenset[str]) -> str:
    quoted = ", ".join(f"'{n}'" for n in sorted(names))
    return f"{kind}{'s' if len(names) > 1 else ''} {quoted}"


__all__ = ["Placement", "Selection", "placement", "split_names"]
