"""What should happen to a rollout next: the one value analysis, people and the machine share.

Analysis produces ``promote``, ``advance``, ``hold`` or ``rollback`` (``automatic=True``); a
person's command produces any :data:`ACTIONS` entry with ``automatic=False``. The state machine
(:func:`modelyard.rollout.machine.next_state`) treats the two differently only where it matters:
an automatic step forward waits for the dwell time and never promotes a strategy that needs a
person (A/B, shadow); a person's step forward does not wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard.errors import ConfigError

Action = Literal[
    "activate", "advance", "promote", "hold", "rollback", "abort", "pause", "resume",
]
ACTIONS: tuple[str, ...] = (
    "activate", "advance", "promote", "hold", "rollback", "abort", "pause", "resume",
)


@dataclass(frozen=True)
class Decision:
    """One decision about a rollout: the action, why, and whether analysis (not a person) made it.

    ``details`` carries the numbers behind an analysis decision (rates, p99s, p-values) so they
    can be stored in the deployment's history and shown to people.
    """

    action: Action
    reasons: tuple[str, ...] = ()
    automatic: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def manual(cls, action: str, reason: str = "") -> Decision:
        """A person's decision (``modelyard rollout promote``, the admin API)."""
        if action not in ACTIONS:
            raise ConfigError(f"unknown rollout action {action!r}; use one of {', '.join(ACTIONS)}")
        return cls(action, (reason,) if reason else (), automatic=False)  # type: ignore[arg-type]

    @property
    def reason(self) -> str:
        """The reasons as one line."""
        return "; ".join(self.reasons)


__all__ = ["ACTIONS", "Action", "Decision"]
