"""Rollouts: routing, analysis and the deployment state machine (pure), and their record.

The persisted deployment record and its transitions (the one module here that does I/O) live in
:mod:`modelyard.rollout.deployments`; a server applies these decisions:

- :func:`~modelyard.rollout.routing.choose_variant` per request,
- :func:`~modelyard.rollout.analysis.analyze` per analysis interval on
  :class:`~modelyard.rollout.stats.WindowStats`,
- and hands the :class:`~modelyard.rollout.decision.Decision` to
  ``Deployments.transition``, which runs :func:`~modelyard.rollout.machine.next_state`.
"""

from modelyard.rollout.analysis import Rules, analyze
from modelyard.rollout.decision import ACTIONS, Decision
from modelyard.rollout.machine import (
    ACTIVE_STATES,
    FINAL_STATES,
    STATES,
    STRATEGIES,
    TRANSITIONS,
    Outcome,
    next_state,
)
from modelyard.rollout.routing import Route, candidate_share, choose_variant
from modelyard.rollout.stats import WindowStats

__all__ = [
    "ACTIONS", "ACTIVE_STATES", "FINAL_STATES", "STATES", "STRATEGIES", "TRANSITIONS",
    "Decision", "Outcome", "Route", "Rules", "WindowStats", "analyze", "candidate_share",
    "choose_variant", "next_state",
]
