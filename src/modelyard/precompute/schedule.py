"""When the scheduler precomputes a model's answers (pure): after a promotion, and on its cron.

A production version that has no precomputed answers yet (no manifest in its store: it was just
promoted, or never precomputed) is precomputed at once when ``on_promotion``; otherwise the
``schedule`` comes due once per cron slot, counted from the model's last precompute run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from modelyard.monitoring import cron

if TYPE_CHECKING:
    from modelyard.registry.records import Run
    from modelyard.spec import PrecomputeSpec

#: the trigger of every precompute run the scheduler starts (``precompute:promotion ...``)
TRIGGER = "precompute"


def precompute_trigger(section: PrecomputeSpec, schedule: str | None, production: int | None,
                       has_answers: bool, last_run_at: datetime | None, now: datetime
                       ) -> str | None:
    """Why the production version's answers are precomputed now, or None.

    ``section`` is the version's registered ``precompute`` section, ``schedule`` the cron of
    the project's spec (which may have changed since), ``has_answers`` whether the version has
    answers in its store, ``last_run_at`` when the model's last precompute run started.
    """
    if production is None:
        return None
    if section.on_promotion and not has_answers:
        return f"{TRIGGER}:promotion: v{production} has no precomputed answers yet"
    if schedule is None:
        return None
    due = cron.last_at_or_before(schedule, now)
    if last_run_at is None or due > last_run_at:
        return f"{TRIGGER}:schedule: {schedule}"
    return None


def last_precompute(runs: Sequence[Run]) -> datetime | None:
    """When the newest precompute run in ``runs`` (newest first) started."""
    return next((r.started_at for r in runs
                 if r.kind == "batch" and r.trigger.startswith(TRIGGER)), None)


__all__ = ["TRIGGER", "last_precompute", "precompute_trigger"]
