"""Semantic version labels of versions: ``1.4.0`` beside the number ``fraud:7``.

A label is SemVer 2.0's core ``MAJOR.MINOR.PATCH`` (no leading zeros) with an optional
pre-release (``1.4.0-rc.1``); build metadata (``+sha``) is refused, since it would make two
labels that SemVer says are the same version. Pure functions only: parsing, ordering and
bumping; the registry stores and checks uniqueness (see :mod:`modelyard.registry.client`).

Bumping follows what npm and most release tools do, so ``patch`` after ``1.4.0-rc.1`` releases
``1.4.0`` instead of skipping it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from modelyard.errors import ConfigError

#: the bump words ``--semver`` takes besides an explicit label.
BUMPS = ("major", "minor", "patch")
_NUMBER = r"(?:0|[1-9]\d{0,8})"
_IDENT = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(
    rf"^(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?$"
)
#: the most characters a label may have (the column's width).
MAX_LENGTH = 100


@total_ordering
@dataclass(frozen=True)
class SemVer:
    """One parsed label; compares by SemVer 2.0 precedence (a pre-release sorts before its
    release, numeric identifiers numerically and before alphanumeric ones)."""

    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(self.pre)}" if self.pre else core

    def _key(self) -> tuple[tuple[int, int, int], int, tuple[tuple[int, int, str], ...]]:
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch), 0 if self.pre else 1, pre

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._key() < other._key()


def looks_like_semver(text: str) -> bool:
    """Whether ``text`` is a label (``1.4.0``, ``2.0.0-rc.1``), not an alias or a number."""
    return len(text) <= MAX_LENGTH and _SEMVER.match(text) is not None


def parse_semver(text: str) -> SemVer:
    """``"1.4.0-rc.1"`` -> ``SemVer(1, 4, 0, ("rc", "1"))``; :class:`ConfigError` (exit 2) for
    anything that is not a SemVer 2.0 core with an optional pre-release."""
    match = _SEMVER.match(text or "") if len(text or "") <= MAX_LENGTH else None
    if match is None:
        hint = "; build metadata (+...) is not part of a label" if "+" in (text or "") else ""
        raise ConfigError(f"semantic version {text!r} is invalid: give MAJOR.MINOR.PATCH with "
                          f"an optional pre-release, as in 1.4.0 or 2.0.0-rc.1{hint}")
    pre = tuple(match["pre"].split(".")) if match["pre"] else ()
    return SemVer(int(match["major"]), int(match["minor"]), int(match["patch"]), pre)


def bump(highest: SemVer | None, part: str) -> SemVer:
    """The label after ``highest`` for a ``major``, ``minor`` or ``patch`` release.

    With no label yet: ``1.0.0``, ``0.1.0`` or ``0.0.1``. After a pre-release, the release it
    leads to when that is the part asked for (``1.4.0-rc.1`` + patch = ``1.4.0``; ``2.0.0-rc.1``
    + major = ``2.0.0``), else the next one up.
    """
    if part not in BUMPS:
        raise ConfigError(f"cannot bump {part!r}: use major, minor or patch, or give a label "
                          "such as 1.4.0")
    if highest is None:
        return {"major": SemVer(1, 0, 0), "minor": SemVer(0, 1, 0), "patch": SemVer(0, 0, 1)}[part]
    x, y, z, pre = highest.major, highest.minor, highest.patch, bool(highest.pre)
    if part == "major":
        return SemVer(x if pre and y == 0 and z == 0 else x + 1, 0, 0)
    if part == "minor":
        return SemVer(x, y if pre and z == 0 else y + 1, 0)
    return SemVer(x, y, z if pre else z + 1)


def next_label(wanted: str, taken: list[str]) -> str:
    """The label ``--semver wanted`` gives a new version of a model whose labels are ``taken``:
    a bump from the highest of them, or ``wanted`` itself checked as a label."""
    if wanted in BUMPS:
        labels = [parse_semver(t) for t in taken]
        return str(bump(max(labels) if labels else None, wanted))
    return str(parse_semver(wanted))


__all__ = ["BUMPS", "MAX_LENGTH", "SemVer", "bump", "looks_like_semver", "next_label",
           "parse_semver"]
