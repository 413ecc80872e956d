"""Each feature's reference distribution beside its current one, for the drift picture.

A numeric feature's reference is the histogram the version's profile recorded at training (20
bins); the current one counts the logged inputs (a bounded read of recent requests) in the same
bins, the values outside the reference's range in its end bins. A categorical feature's bars are
its most frequent values at training, then "other" (every other value, and values never seen at
training). Both as shares, so they draw on one scale. Pure: reference statistics and logged
input summaries in, bars out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: features drawn at most (the rest are in the drift table).
MAX_FEATURES = 24


@dataclass(frozen=True)
class Distribution:
    """One feature: its bin edges and the share of values in each bin, reference and current."""

    name: str
    edges: list[float]
    reference: list[float]
    current: list[float]
    rows: int
    #: a categorical feature's values, one a bar (``edges`` is then empty)
    labels: list[str] | None = None

    @property
    def peak(self) -> float:
        """The tallest bar of either (the drawing's scale)."""
        return max([*self.reference, *self.current, 1e-12])


def _shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [float(c) / total if total else 0.0 for c in counts]


def _column(inputs: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    found: list[Any] = []
    for summary in inputs:
        column = (summary.get("columns") or {}).get(name) if isinstance(summary, Mapping) else None
        if column:
            found.extend(v for v in column if v is not None)
    return found


def _values(inputs: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    values = np.asarray([v for v in _column(inputs, name)
                         if isinstance(v, int | float) and not isinstance(v, bool)], dtype=float)
    return values[np.isfinite(values)]


def _numeric(name: str, histogram: Mapping[str, Any],
             inputs: Sequence[Mapping[str, Any]]) -> Distribution:
    edges = [float(e) for e in histogram["edges"]]
    values = np.clip(_values(inputs, name), edges[0], edges[-1])
    counts = np.histogram(values, bins=edges)[0] if values.size else [0] * (len(edges) - 1)
    return Distribution(name, edges, _shares(histogram["counts"]), _shares(list(counts)),
                        int(values.size))


def _categorical(name: str, feature: Mapping[str, Any],
                 inputs: Sequence[Mapping[str, Any]]) -> Distribution:
    seen = {str(k): int(v) for k, v in (feature.get("values") or {}).items()}
    other = max(0, int(feature.get("count") or sum(seen.values())) - sum(seen.values()))
    current = [str(v) for v in _column(inputs, name)]
    counted = {label: 0 for label in seen}
    rest = 0
    for value in current:
        if value in counted:
            counted[value] += 1
        else:
            rest += 1
    labels = [*seen, "other"]
    return Distribution(name, [], _shares([*seen.values(), other]),
                        _shares([*counted.values(), rest]), len(current), labels)


def distributions(reference: Mapping[str, Any] | None,
                  inputs: Sequence[Mapping[str, Any]]) -> list[Distribution]:
    """The features of ``reference`` (a table profile) with their current shares: numeric ones
    by their training histogram's bins, categorical ones by their most frequent values."""
    if not reference or reference.get("kind", "table") != "table":
        return []
    out: list[Distribution] = []
    for name, feature in list((reference.get("features") or {}).items())[:MAX_FEATURES]:
        if not isinstance(feature, Mapping):
            continue
        if feature.get("histogram"):
            out.append(_numeric(name, feature["histogram"], inputs))
        elif feature.get("type") == "categorical" and feature.get("values"):
            out.append(_categorical(name, feature, inputs))
    return out


__all__ = ["MAX_FEATURES", "Distribution", "distributions"]
