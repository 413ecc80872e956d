"""Exact empirical CDFs of a reference sample and a large current sample, compared in a few passes.

The KS test and Wasserstein distance of :mod:`modelyard.monitoring.drift` (``ks_test``,
``wasserstein_distance`` and :func:`~modelyard.monitoring.drift.compare` on numeric features)
measure current values against a reference sample: a :class:`Grid` holds the reference's
distinct values and its CDF at them, built once per feature; :meth:`Grid.count` of the current
values gives :class:`Counts`, whose :meth:`Counts.ks` is the Kolmogorov-Smirnov statistic and
:meth:`Counts.wasserstein` the Wasserstein-1 distance. Both are exact, equal to scipy's
``ks_2samp`` and ``wasserstein_distance`` up to float rounding; :func:`ks_p_value` gives the
KS test's asymptotic p-value.

The reference sample is small (a profile keeps 1,000 values) but the current one may have a
million rows per feature, so it is never sorted: sorting costs ``n log n`` and a copy per
feature, while both statistics only need the current CDF at and just below each reference
value. The current values are counted into the intervals between the reference's distinct
values instead, placed by a lookup table over the reference's range (a few linear array
passes), with each interval's count and sum of values. That is all KS needs: the reference
CDF is flat between its values and the current one rises, so each interval's largest gap lies at
one of its ends. For Wasserstein the per-interval sums give the
area between the CDFs exactly wherever the current CDF stays on one side of the reference's;
only the values of the few intervals where it crosses are sorted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

_LOOKUP_CELLS = 32  # lookup cells per distinct reference value: most hold none or one


class Grid:
    """A reference sample's distinct values, its CDF at them, and a table to place new values.

    :meth:`locate` is ``np.searchsorted(values, x)`` made cheaper for many ``x``: a uniform grid
    of cells over the values' range tells, per cell, how many values lie in earlier cells, and
    the few in the same cell are compared one by one. The cell of a number is computed the same
    monotone way for the values and for ``x``, so rounding can never misplace one.
    """

    def __init__(self, sample: np.ndarray) -> None:
        self.values, counts = np.unique(sample, return_counts=True)
        self.size = int(counts.sum())
        self.cdf = np.cumsum(counts) / self.size
        k = len(self.values)
        span = float(self.values[-1] - self.values[0])
        cells = _LOOKUP_CELLS * k
        scale = cells / span if k > 1 and math.isfinite(span) and span > 0 else 0.0
        # A tiny or huge span would overflow the cell arithmetic: searchsorted does it then.
        self._scale = scale if math.isfinite(scale) else 0.0
        self._cells = cells
        if self._scale:
            own = self._cell(self.values)
            self._before = np.searchsorted(own, np.arange(cells), side="left")
            self._crowded = np.bincount(own, minlength=cells) > 1
            self._padded = np.concatenate([self.values, [np.inf]])

    def _cell(self, x: np.ndarray) -> np.ndarray:
        scaled = x - self.values[0]
        scaled *= self._scale
        np.clip(scaled, 0, self._cells - 1, out=scaled)
        return scaled.astype(np.intp)

    def locate(self, x: np.ndarray) -> np.ndarray:
        """For each ``x``, how many distinct reference values are strictly below it."""
        if not self._scale:
            return np.searchsorted(self.values, x, side="left")
        cell = self._cell(x)
        start = self._before[cell]
        # Values in earlier cells are below x, in later cells above; one may share x's cell.
        where = start + (self._padded[start] < x)
        if self._crowded.any():
            crowded = self._crowded[cell]
            if crowded.any():
                where[crowded] = np.searchsorted(self.values, x[crowded], side="left")
        return where

    def count(self, cur: np.ndarray) -> Counts:
        """Count the current values into the intervals between the reference values."""
        k = len(self.values)
        where = self.locate(cur)
        # bin j holds values in (values[j-1], values[j]]; bin k those above the largest.
        per_bin = np.bincount(where, minlength=k + 1)
        on_value = np.concatenate([self.values, [np.inf]])[where] == cur
        at = (np.bincount(where[on_value], minlength=k + 1)[:k] if on_value.any()
              else np.zeros(k, dtype=np.int64))
        center = float(self.values[k // 2])  # sums of centred values lose less to rounding
        sums = np.bincount(where, weights=cur - center, minlength=k + 1)
        return Counts(self, cur, where, per_bin, at, sums, center)


@dataclass
class Counts:
    """Current values counted against a :class:`Grid`: the current CDF at each reference value."""

    grid: Grid
    cur: np.ndarray
    where: np.ndarray
    per_bin: np.ndarray
    at: np.ndarray
    sums: np.ndarray
    center: float
    n: int = field(init=False)

    def __post_init__(self) -> None:
        self.n = int(self.cur.size)
        upto = np.cumsum(self.per_bin)[:-1]
        self.cdf_at = upto / self.n  # F_cur(v) for each reference value v
        self.cdf_below = (upto - self.at) / self.n  # F_cur just below v

    def ks(self) -> float:
        """sup |F_ref - F_cur|: both are steps, so it is reached at or just below a value."""
        ref = self.grid.cdf
        ref_below = np.concatenate([[0.0], ref[:-1]])
        return float(max(np.abs(ref - self.cdf_at).max(),
                         np.abs(ref_below - self.cdf_below).max()))

    def wasserstein(self) -> float:
        """The area between the two CDFs, interval by interval."""
        values, ref, k, n = self.grid.values, self.grid.cdf, len(self.grid.values), self.n
        u = values - self.center
        # Below the smallest reference value F_ref is 0, above the largest 1.
        total = (self.per_bin[0] * u[0] - self.sums[0]) + (self.sums[k] - self.per_bin[k] * u[-1])
        total /= n
        if k == 1:
            return float(total)
        width = np.diff(values)
        level = ref[:-1]  # F_ref on each interval
        low, high = self.cdf_at[:-1], self.cdf_below[1:]  # F_cur at its two ends
        # The area under F_cur on each interval: its value at the left end, plus what each
        # current value inside adds up to the right end.
        inside = self.per_bin[1:k] * u[1:] - self.sums[1:k]
        area = low * width + inside / n
        crossing = (low < level) & (level < high)
        total += float(np.abs(level * width - area)[~crossing].sum())
        if crossing.any():
            total += self._crossing_area(np.flatnonzero(crossing) + 1)
        return float(total)

    def _crossing_area(self, bins: np.ndarray) -> float:
        """The exact area in intervals where F_cur crosses F_ref: sort their values only."""
        values, ref = self.grid.values, self.grid.cdf
        marked = np.zeros(len(values) + 1, dtype=bool)
        marked[bins] = True
        inside = np.sort(self.cur[marked[self.where]])
        where = np.searchsorted(values, inside, side="left")
        keep = inside < values[np.minimum(where, len(values) - 1)]  # strictly inside
        x, b = inside[keep], where[keep]
        first = np.flatnonzero(np.concatenate([[True], b[1:] != b[:-1]]))
        sizes = np.diff(np.concatenate([first, [len(x)]]))
        rank = np.arange(len(x)) - np.repeat(first, sizes) + 1
        level = ref[b - 1]
        start = self.cdf_at[b - 1]
        after = start + rank / self.n  # F_cur right after each value
        right = np.concatenate([x[1:], [0.0]])
        last = np.concatenate([b[1:] != b[:-1], [True]])
        right[last] = values[b[last]]
        area = float(np.sum((right - x) * np.abs(level - after)))
        head = first  # from the interval's left end to its first value, F_cur is still `start`
        area += float(np.sum((x[head] - values[b[head] - 1]) * np.abs(level[head] - start[head])))
        return area


def ks_p_value(d: float, m: int, n: int) -> float:
    """The asymptotic p-value of a KS statistic ``d`` between samples of ``m`` and ``n`` values.

    Kolmogorov's distribution at the effective size ``m * n / (m + n)``, as scipy's
    ``ks_2samp(method="asymp")`` computes it.
    """
    from scipy.stats import kstwo

    effective = max(1, round(m * n / (m + n)))
    return float(min(max(kstwo.sf(d, effective), 0.0), 1.0))


__all__ = ["Counts", "Grid", "ks_p_value"]
