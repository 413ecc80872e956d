"""The promotion gate, as a pure decision: thresholds, the champion comparison and fairness
bounds per group, with reasons.

``evaluate_gate`` takes the candidate's and the champion's metrics on the same holdout and says
whether the candidate may be registered and promoted, and why not, in sentences a person reads
in a run log: ``f1 0.58 < min 0.60``. Fairness rules are judged on the records the training
child measured (:mod:`modelyard.pipeline.fairness`), each group's figures in the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelyard.pipeline import fairness as fairness_checks
from modelyard.spec import GateSpec


@dataclass(frozen=True)
class GateResult:
    """Whether the candidate passed; ``reasons`` says why not, ``checks`` records every rule."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as stored with the run."""
        return {"passed": self.passed, "reasons": list(self.reasons), "checks": list(self.checks)}


def evaluate_gate(
    gate: GateSpec,
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    greater_is_better: Callable[[str], bool],
    *,
    champion_ref: str | None = None,
    champion_note: str | None = None,
    fairness: Sequence[Mapping[str, Any]] = (),
) -> GateResult:
    """Apply ``gate`` to the candidate's metrics and (if there is one) the champion's.

    ``champion_ref`` names the champion in reasons (``fraud:3``). Without a champion the champion
    rule passes, with ``champion_note`` (or "no production version yet") as its message.
    ``fairness`` holds the candidate's record of each of ``gate.fairness``'s rules, in order.
    """
    checks: list[dict[str, Any]] = []
    for metric, bound in gate.min.items():
        checks.append(_bound(metric, candidate.get(metric), bound, "min"))
    for metric, bound in gate.max.items():
        checks.append(_bound(metric, candidate.get(metric), bound, "max"))
    if gate.champion is not None:
        checks.append(_champion(gate.champion.metric, gate.champion.max_drop, candidate,
                                champion, greater_is_better(gate.champion.metric),
                                champion_ref or "production", champion_note))
    checks.extend(fairness_checks.checks(gate.fairness, fairness))
    reasons = [c["message"] for c in checks if not c["passed"]]
    return GateResult(not reasons, reasons, checks)


def _bound(metric: str, value: float | None, bound: float, kind: str) -> dict[str, Any]:
    check: dict[str, Any] = {"rule": kind, "metric": metric, "value": value, "threshold": bound}
    if value is None:
        return {**check, "passed": False, "message": f"{metric} was not computed"}
    a, b = _fmt(value, bound)
    if kind == "min":
        passed, message = value >= bound, f"{metric} {a} < min {b}"
    else:
        passed, message = value <= bound, f"{metric} {a} > max {b}"
    return {**check, "passed": bool(passed),
            "message": message if not passed else f"{metric} {a} within {kind} {b}"}


def _champion(
    metric: str,
    max_drop: float,
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    higher_better: bool,
    ref: str,
    note: str | None,
) -> dict[str, Any]:
    value = candidate.get(metric)
    check: dict[str, Any] = {"rule": "champion", "metric": metric, "value": value,
                             "max_drop": max_drop, "champion": ref}
    if value is None:
        return {**check, "passed": False, "message": f"{metric} was not computed"}
    best = None if champion is None else champion.get(metric)
    if best is None:
        reason = note or (f"champion {ref} has no {metric} on this holdout" if champion is not None
                          else "no production version yet")
        return {**check, "champion_value": None, "passed": True,
                "message": f"champion rule skipped: {reason}"}
    # how much worse the candidate is, in the metric's own direction (negative: better)
    worse_by = (best - value) if higher_better else (value - best)
    passed = worse_by <= max_drop + 1e-12  # float noise must not reject an equal model
    a, b = _fmt(value, best)
    gap, allowed = _fmt(abs(worse_by), max_drop)
    if passed:
        message = f"{metric} {a} vs champion {ref} ({b}), allowed drop {allowed}"
    else:
        side = "below" if higher_better else "above"
        message = f"{metric} {a} is {gap} {side} champion {ref} ({b}), allowed drop {allowed}"
    return {**check, "champion_value": best, "passed": bool(passed), "message": message}


def _fmt(*values: float) -> tuple[str, ...]:
    """Format with 2 decimals, or more where 2 would make different values look equal."""
    for decimals in range(2, 7):
        shown = tuple(f"{v:.{decimals}f}" for v in values)
        if len(set(shown)) == len(set(values)):
            return shown
    return tuple(f"{v:.6g}" for v in values)


__all__ = ["GateResult", "evaluate_gate"]
