"""Whether a converted model answers like its original: a pure judgement on two sets of answers.

``judge(original, converted, limits)`` compares the scores (class probabilities, regression
values or raw outputs) by their largest absolute difference, relative to the original's scale
where that is above 1, and the labels by the share of rows on which they agree. It does no I/O:
:mod:`modelyard.pipeline.export` computes the answers and applies the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Answers:
    """One model's answers on the parity sample: scores (``(n, ...)`` floats) and labels."""

    scores: Any
    labels: Any = None


@dataclass(frozen=True)
class Limits:
    """How close is close enough: score difference (relative above a scale of 1) and labels."""

    max_abs_diff: float = 1e-4
    min_label_agreement: float = 0.99


@dataclass(frozen=True)
class Parity:
    """The measured figures and the verdict; ``reasons`` says why it failed."""

    rows: int
    max_abs_diff: float
    scale: float
    label_agreement: float | None
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """The figures as a version's metrics (``parity_*``)."""
        out = {"parity_rows": float(self.rows), "parity_max_abs_diff": self.max_abs_diff}
        if self.label_agreement is not None:
            out["parity_label_agreement"] = self.label_agreement
        return out

    def summary(self) -> str:
        """One line: rows, the score difference and the label agreement."""
        agreement = ("" if self.label_agreement is None
                     else f", labels agree on {self.label_agreement:.2%}")
        return (f"{self.rows} rows: max |score difference| {self.max_abs_diff:.3g}"
                f"{agreement}")


def judge(original: Answers, converted: Answers, limits: Limits) -> Parity:
    """Compare ``converted``'s answers with ``original``'s on the same rows."""
    a = np.asarray(original.scores, dtype=np.float64)
    b = np.asarray(converted.scores, dtype=np.float64)
    reasons: list[str] = []
    if a.size != b.size or len(a) != len(b):
        return Parity(len(a), float("inf"), 1.0, None, False,
                      [f"the outputs differ in shape: {a.shape} against {b.shape}"])
    b = b.reshape(a.shape)
    rows = len(a)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    max_diff = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
    scale = max(1.0, float(np.nanmax(np.abs(a)))) if a.size else 1.0
    if max_diff > limits.max_abs_diff * scale:
        reasons.append(f"scores differ by up to {max_diff:.3g}, over the tolerance "
                       f"{limits.max_abs_diff:g}" + (f" x scale {scale:.3g}" if scale > 1 else ""))
    agreement = _agreement(original.labels, converted.labels)
    if agreement is not None and agreement < limits.min_label_agreement:
        reasons.append(f"labels agree on {agreement:.2%} of rows, under "
                       f"{limits.min_label_agreement:.2%}")
    return Parity(rows, max_diff, scale, agreement, not reasons, reasons)


def _agreement(a: Any, b: Any) -> float | None:
    if a is None or b is None:
        return None
    left, right = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if len(left) != len(right):
        return 0.0
    if not len(left):
        return 1.0
    if left.dtype.kind in "iufb" and right.dtype.kind in "iufb":
        same = left.astype(np.float64) == right.astype(np.float64)
    else:
        same = left.astype(str) == right.astype(str)
    return float(same.mean())


__all__ = ["Answers", "Limits", "Parity", "judge"]
