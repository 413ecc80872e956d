"""Each numeric feature's reference distribution beside its current one, for the drift picture.

The reference is the histogram the version's profile recorded at training (20 bins); the
current one counts the logged inputs (a bounded read of recent requests) in the same bins, the
values outside the reference's range in its end bins. Both as shares, so they draw on one scale.
Pure: reference statistics and logged input summaries in, bars out.
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

    @property
    def peak(self) -> float:
        """The tallest bar of either (the drawing's scale)."""
        return max([*self.reference, *self.current, 1e-12])


def _shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [float(c) / total if total else 0.0 for c in counts]


def _values(inputs: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    found: list[float] = []
    for summary in inputs:
        column = (summary.get("columns") or {}).get(name) if isinstance(summary, Mapping) else None
        if column:
            found.extend(v for v in column if isinstance(v, int | float) and not isinstance(v,
                                                                                          bool))
    values = np.asarray(found, dtype=float)
    return values[np.isfinite(values)]


def distributions(reference: Mapping[str, Any] | None,
                  inputs: Sequence[Mapping[str, Any]]) -> list[Distribution]:
    """The numeric features of ``reference`` (a table profile) with their current shares."""
    if not reference or reference.get("kind", "table") != "table":
        return []
    out: list[Distribution] = []
    for name, feature in list((reference.get("features") or {}).items())[:MAX_FEATURES]:
        histogram = feature.get("histogram") if isinstance(feature, Mapping) else None
        if not histogram:
            continue
        edges = [float(e) for e in histogram["edges"]]
        values = np.clip(_values(inputs, name), edges[0], edges[-1])
        counts = np.histogram(values, bins=edges)[0] if values.size else [0] * (len(edges) - 1)
        out.append(Distribution(name, edges, _shares(histogram["counts"]),
                                _shares(list(counts)), int(values.size)))
    return out


__all__ = ["MAX_FEATURES", "Distribution", "distributions"]
