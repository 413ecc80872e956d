"""One rollout's analysis windows across server processes: pure, no I/O.

Several server processes (``--workers``, several hosts) share one registry and decide a rollout
once, on all their traffic. Each process keeps its own window of the deployment's current
revision (:class:`ProcessWindow`): a :class:`~modelyard.rollout.stats.WindowStats` per variant,
which its request path counts into and which restarts whenever the revision moves. Every poll it
publishes :meth:`ProcessWindow.snapshot`. Every :attr:`ProcessWindow.interval_s` (at least
:data:`MIN_ANALYSIS_S`) it reads the windows of its revision published in the last
:func:`fresh_seconds`; only the :func:`leader` among them (the smallest process name, itself
included even before it ever published) goes on: it merges them (:func:`gather_windows`,
:func:`merge_windows`) and decides (:func:`judge`). The first analysis of a revision waits
:func:`settle_seconds` (:data:`SETTLE_POLLS` polls), so the other processes have applied the
revision at their next poll and published their share; a process that stops publishing drops
out of the merge, and of the leadership, after the freshness window.

The loop that reads and writes these (publish, read the published windows, add labels, write
the decision) is :class:`modelyard.serving.rollouts.Rollouts`. Time comes in as ``now`` (the
monotonic clock when left out), so everything here is tested without processes or sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from modelyard.rollout.analysis import Rules, analyze
from modelyard.rollout.decision import Decision
from modelyard.rollout.routing import candidate_share
from modelyard.rollout.stats import WindowStats

#: the analysis interval's floor in seconds (``every_s`` below it is clamped up).
MIN_ANALYSIS_S = 1.0
#: the variants a window holds, as published.
VARIANTS = ("stable", "candidate")
#: a published window counts (and its process may lead) for this many polls, at least
#: :data:`MIN_FRESH_S`: a process that stopped publishing hands over leadership after that.
FRESH_POLLS = 3
MIN_FRESH_S = 5.0
#: the first analysis of a revision waits this many polls: the other processes apply the
#: revision at their next poll and publish its window in the same one.
SETTLE_POLLS = 2


def fresh_seconds(poll_s: float) -> float:
    """How old a published window may be and still count, for processes polling every
    ``poll_s`` seconds."""
    return max(MIN_FRESH_S, FRESH_POLLS * poll_s)


def settle_seconds(poll_s: float) -> float:
    """The least wait before the first analysis of a revision, for ``poll_s``-second polls."""
    return SETTLE_POLLS * poll_s


class ProcessWindow:
    """This process's window of one deployment's current revision, and when to analyse it.

    ``settle_s``: the least time before the first analysis of a revision (see
    :func:`settle_seconds`). ``outdated``: the registry refused this process's window because
    the deployment moved on; no analysis until the next poll applies the new revision.
    ``dropped`` counts shadow copies dropped over the deployment's life in this process.
    """

    def __init__(self, deployment: Any, *, settle_s: float = 0.0,
                 now: float | None = None) -> None:
        self.settle_s = settle_s
        self.dropped = 0
        self.update(deployment, now)

    @property
    def ident(self) -> tuple[int, int]:
        """``(id, revision)`` of the deployment applied."""
        return (self.deployment.id, self.deployment.revision)

    @property
    def interval_s(self) -> float:
        """Seconds between two analyses of this rollout."""
        return max(MIN_ANALYSIS_S, self.deployment.every_s)

    @property
    def candidate_serving(self) -> bool:
        """Whether the candidate can answer here (the server's window knows its runner)."""
        return True

    def update(self, deployment: Any, now: float | None = None) -> None:
        """Take a newer revision of the same deployment; its window starts afresh."""
        now = time.monotonic() if now is None else now
        self.deployment = deployment
        self.rules = Rules.from_dict(deployment.rules)
        self.stats = {"stable": WindowStats(), "candidate": WindowStats()}
        self.outdated = False
        #: the last analysis this process made of the revision (published for status)
        self.analysis = ""
        self.next_analysis = now + max(self.interval_s, self.settle_s)

    def due(self, now: float) -> bool:
        """Whether to analyse now: the interval has passed, the rollout is progressing and
        this process's revision is current. Schedules the next look when it is."""
        if now < self.next_analysis or self.deployment.state != "progressing" or self.outdated:
            return False
        self.next_analysis = now + self.interval_s
        return True

    def snapshot(self) -> dict[str, Any]:
        """This process's window as published (JSON): both variants, and shadow drops."""
        data: dict[str, Any] = {v: self.stats[v].to_dict() for v in VARIANTS}
        data["candidate_serving"] = self.candidate_serving
        if self.analysis:
            data["analysis"] = self.analysis
        if self.dropped:
            data["shadow_dropped"] = self.dropped
        return data


def gather_windows(process: str, own: Mapping[str, WindowStats],
                   published: Iterable[Any]) -> dict[str, dict[str, WindowStats]]:
    """Each process's windows of one revision, by process name: the ``published`` ones (records
    with ``process`` and ``stats``), with this ``process``'s live window ``own`` in place of its
    older published copy (and counted even before it ever published)."""
    windows: dict[str, dict[str, WindowStats]] = {}
    for w in published:
        if w.process != process:
            windows[w.process] = {v: WindowStats.from_dict(w.stats.get(v) or {})
                                  for v in VARIANTS}
    windows[process] = {v: own[v] for v in VARIANTS}
    return windows


def leader(windows: Mapping[str, Any]) -> str:
    """The process that analyses a revision: the smallest name among those with a window."""
    return min(windows)


def merge_windows(windows: Mapping[str, Mapping[str, WindowStats]]) -> dict[str, WindowStats]:
    """Both variants' windows over every process (new objects; the inputs are not changed)."""
    merged = {v: WindowStats() for v in VARIANTS}
    for per_variant in windows.values():
        for v in VARIANTS:
            merged[v] = merged[v].merge(per_variant[v])
    return merged


def window_details(windows: Mapping[str, Mapping[str, WindowStats]],
                   merged: Mapping[str, WindowStats]) -> dict[str, Any]:
    """What a decision records about the traffic behind it: the merged request counts and each
    process's share."""
    return {"stable_requests": merged["stable"].requests,
            "candidate_requests": merged["candidate"].requests,
            "processes": {p: {v: w[v].requests for v in VARIANTS}
                          for p, w in sorted(windows.items())}}


def shadow_dropped(process: str, own: int, published: Iterable[Any]) -> int:
    """Shadow copies dropped by every process: ``own`` plus what the others published."""
    return own + sum(int(w.stats.get("shadow_dropped", 0)) for w in published
                     if w.process != process)


def judge(deployment: Any, rules: Rules, windows: Mapping[str, Mapping[str, WindowStats]],
          merged: Mapping[str, WindowStats], *, dropped: int = 0) -> Decision:
    """The leader's decision over the ``merged`` windows, with the traffic behind it (and the
    shadow copies ``dropped``) in its details.

    Where stable answers a share of the traffic (shadow, or a candidate below 100 %), analysis
    waits for enough stable requests too, to compare with (see
    :func:`~modelyard.rollout.analysis.analyze`).
    """
    baseline = deployment.strategy == "shadow" or candidate_share(deployment) < 1.0
    decision = analyze(merged["stable"], merged["candidate"], rules, deployment.step,
                       len(deployment.steps), baseline=baseline)
    decision.details.update(window_details(windows, merged))
    if dropped:
        decision.details["shadow_dropped"] = dropped
    return decision


__all__ = [
    "FRESH_POLLS", "MIN_ANALYSIS_S", "MIN_FRESH_S", "SETTLE_POLLS", "VARIANTS", "ProcessWindow",
    "fresh_seconds", "gather_windows", "judge", "leader", "merge_windows", "settle_seconds",
    "shadow_dropped", "window_details",
]
