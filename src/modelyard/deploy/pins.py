"""Which exact packages an image needs: a requirement set closed over this environment's versions.

:func:`pin_closure` walks a distribution's requirements (with the extras asked for) through what
is installed here and pins each one to its installed version, so the image runs what the project
was trained and tested with. It is pure: the installed distributions come from a lookup, which
:func:`installed` answers from :mod:`importlib.metadata`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from modelyard.errors import ConfigError


@dataclass(frozen=True)
class Installed:
    """One installed distribution: its name, version and ``Requires-Dist`` lines."""

    name: str
    version: str
    requires: tuple[str, ...] = ()


@dataclass(frozen=True, order=True)
class Pin:
    """``name==version``: one line of an image's requirements."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


Lookup = Callable[[str], Installed | None]


def pin_closure(requires: Iterable[str], extras: Collection[str], lookup: Lookup, *,
                needed_by: str = "modelyard") -> list[Pin]:
    """Every distribution ``requires`` pulls in (with ``extras``), pinned as installed, sorted.

    A requirement whose marker excludes this platform is skipped; one that is not installed, or
    installed at a version its specifier refuses, is a :class:`ConfigError` naming it.
    """
    pins: dict[str, Pin] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(line, frozenset(extras), needed_by) for line in requires]
    while todo:
        line, active, parent = todo.pop()
        req = _parse(line, parent)
        if not _applies(req.marker, active):
            continue
        dist = lookup(req.name)
        if dist is None:
            raise ConfigError(f"{req.name} (needed by {parent}) is not installed in this "
                              f"environment; install it (pip install '{req}') so its version "
                              "can be pinned")
        if not req.specifier.contains(dist.version, prereleases=True):
            raise ConfigError(f"{dist.name} {dist.version} is installed but {parent} needs "
                              f"{req}; install a matching version")
        key = canonicalize_name(dist.name)
        pins[key] = Pin(key, dist.version)
        visit = (key, frozenset(req.extras))
        if visit not in seen:
            seen.add(visit)
            todo.extend((child, frozenset(req.extras), dist.name) for child in dist.requires)
    return sorted(pins.values())


def installed(name: str) -> Installed | None:
    """The distribution ``name`` as installed in this interpreter's environment, or ``None``."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Installed(dist.metadata["Name"], dist.version, tuple(dist.requires or ()))


def _parse(line: str, parent: str) -> Requirement:
    try:
        return Requirement(line)
    except InvalidRequirement as exc:
        raise ConfigError(f"{parent} declares a requirement that cannot be read: {exc}") from None


def _applies(marker: Marker | None, extras: frozenset[str]) -> bool:
    """Whether a requirement applies here with these extras (``extra == ""`` when none)."""
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in extras or {""})


__all__ = ["Installed", "Lookup", "Pin", "installed", "pin_closure"]
