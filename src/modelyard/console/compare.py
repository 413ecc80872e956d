"""Two versions side by side: which metrics, params, signature and environment entries differ
(pure: two version records in, rows out)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Difference:
    """One key of one section, its value in each version and whether they differ."""

    section: str
    key: str
    left: Any
    right: Any

    @property
    def differs(self) -> bool:
        return bool(self.left != self.right)


SECTIONS = ("metrics", "params", "signature", "environment", "code_ref")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b": leaf}`` (lists stay whole)."""
    if not isinstance(value, Mapping):
        return {prefix or "value": value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(inner, Mapping) and inner:
            out.update(flatten(inner, name))
        else:
            out[name] = inner
    return out


def compare(left: Any, right: Any) -> list[Difference]:
    """Every key of every section (:data:`SECTIONS`) in either version, in order."""
    rows: list[Difference] = []
    for section in SECTIONS:
        a = flatten(getattr(left, section, None) or {})
        b = flatten(getattr(right, section, None) or {})
        rows.extend(Difference(section, key, a.get(key), b.get(key))
                    for key in sorted(a.keys() | b.keys()))
    return rows


__all__ = ["SECTIONS", "Difference", "compare", "flatten"]
