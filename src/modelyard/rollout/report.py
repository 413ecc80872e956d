"""What a rollout does and how it ends, in plain words, and the traffic it really gets. Pure.

A deployment record says what the rollout *plans*: its strategy, its step, the candidate's share.
Whether traffic flows that way depends on the servers: each one applies a rollout only once both
versions are loaded and warmed, and then publishes its window of requests every poll. So
:func:`traffic` reads those published windows: a rollout that no server applies reports a
candidate share of 0, whatever its step plans, with the reason; and :func:`explain` says, per
strategy, who answers requests, what analysis checks and what ends the rollout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from modelyard.rollout.machine import auto_promotes
from modelyard.rollout.routing import RoutedDeployment, candidate_share

#: how recent a server's published window must be for status to count its traffic (servers
#: publish every poll, about once a second).
FRESH_S = 10.0


class ReportedDeployment(RoutedDeployment, Protocol):
    """What a report reads of a deployment (the registry's ``Deployment`` has it)."""

    @property
    def stable_version(self) -> int | None: ...
    @property
    def candidate_version(self) -> int: ...
    @property
    def key(self) -> str | None: ...
    @property
    def active(self) -> bool: ...


def _every(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


def explain(d: ReportedDeployment) -> str:
    """Who answers requests, what analysis checks and what ends the rollout, in a few sentences."""
    stable = "no version" if d.stable_version is None else f"v{d.stable_version}"
    cand = f"v{d.candidate_version}"
    if d.state == "promoted":
        return f"Ended: {cand} was promoted and serves as production."
    if d.state in ("rolled_back", "aborted"):
        done = "rolled back" if d.state == "rolled_back" else "aborted"
        return f"Ended: {done}; {stable} serves all traffic."
    percent = f"{d.steps[d.step]:g}%"
    every = _every(d.every_s)
    doing = _doing(d, stable, cand, percent)
    ends = _ends(d, stable, cand, every)
    paused = ("Paused: the split stays as it is, analysis can only roll back; "
              f"'modelyard rollout resume {d.model}' continues. ") if d.state == "paused" else ""
    return f"{paused}{doing} {ends}"


def _doing(d: ReportedDeployment, stable: str, cand: str, percent: str) -> str:
    if d.state == "pending":
        return (f"Blue-green: {cand} is loading and warming while {stable} answers every "
                "request; once it answers, servers switch all traffic to it at once.")
    if d.strategy == "canary":
        plan = " -> ".join(f"{p}%" for p in d.steps)
        return (f"Canary: {cand} answers {percent} of requests, {stable} the rest "
                f"(step {d.step + 1} of {len(d.steps)}: {plan}).")
    if d.strategy == "shadow":
        return (f"Shadow: {stable} answers every request; {percent} of them are copied to "
                f"{cand}, whose answers are compared with stable's and never reach clients.")
    if d.strategy == "ab":
        key = f"the {d.key!r} header or input field" if d.key else "the X-Request-Key header"
        return (f"A/B: {percent} of users get {cand}, the rest {stable}; a user, keyed by {key}, "
                "always sees the same side.")
    kind = "Blue-green: switched;" if d.strategy == "blue-green" else "Direct:"
    return f"{kind} {cand} answers every request while {stable} stays ready to take it back."


def _ends(d: ReportedDeployment, stable: str, cand: str, every: str) -> str:
    checks = "errors, latency" + (" and shadow agreement" if d.strategy == "shadow" else "") + \
        (f" and {d.rules['metric']} on fed-back labels" if d.rules.get("metric") else "")
    rollback = f"a failed check rolls back to {stable} at once"
    if not auto_promotes(d):
        return (f"Every {every} analysis compares {checks}; {rollback}, but it never promotes "
                f"by itself: end it with 'modelyard rollout promote {d.model}' ({cand} becomes "
                f"production) or 'modelyard rollout abort {d.model}'.")
    if d.strategy == "canary" and d.step < len(d.steps) - 1:
        return (f"Every {every} analysis compares {checks}; passing after the step's dwell "
                f"advances, the last step promotes {cand} to production; {rollback}.")
    return (f"Every {every} analysis compares {checks}; passing after the dwell promotes {cand} "
            f"to production; {rollback}.")


def traffic(d: ReportedDeployment, windows: Iterable[Any]) -> dict[str, Any]:
    """The traffic the rollout's current revision really gets, from the servers' ``windows``
    (records with ``process`` and ``stats``, fresh ones of this revision only).

    ``candidate_percent`` is the planned share only where at least one server routes the rollout
    and its candidate is loaded; otherwise 0, and ``note`` says why.
    """
    planned = candidate_share(d) * 100.0
    rows = list(windows)
    serving = [w.process for w in rows if _candidate_serving(w.stats)]
    requests = {v: sum(int((w.stats.get(v) or {}).get("requests", 0)) for w in rows)
                for v in ("stable", "candidate")}
    out: dict[str, Any] = {"servers": sorted(w.process for w in rows),
                           "planned_candidate_percent": planned,
                           "candidate_percent": planned if serving else 0.0,
                           "requests": requests, "note": ""}
    analysis = [str(w.stats["analysis"]) for w in rows if w.stats.get("analysis")]
    if analysis:
        out["analysis"] = analysis[0]
    if not d.active:
        out["candidate_percent"] = planned
        out["note"] = "the rollout has ended; servers serve the production alias"
    elif not rows:
        out["note"] = ("no server routes this rollout yet: servers load and warm both versions "
                       "before they split traffic (or none is running)")
    elif not serving:
        out["note"] = "the candidate is not loaded on any server; every request goes to stable"
    elif d.state == "pending":
        out["note"] = "the candidate is warming; every request goes to stable"
    return out


def _candidate_serving(stats: Mapping[str, Any]) -> bool:
    return bool(stats.get("candidate_serving", True))


def report(d: ReportedDeployment, windows: Iterable[Any]) -> dict[str, Any]:
    """``explain`` and ``traffic`` together, as status shows them (JSON-ready)."""
    return {"explain": explain(d), "traffic": traffic(d, windows)}


__all__ = ["FRESH_S", "ReportedDeployment", "explain", "report", "traffic"]
