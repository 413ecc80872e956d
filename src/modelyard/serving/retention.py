"""The server keeps the prediction log within ``monitoring.retention_days``.

A :class:`RetentionSweeper` runs :meth:`Monitor.enforce_retention
<modelyard.monitoring.monitor.Monitor.enforce_retention>` a minute after the server starts and
every ``retention_interval_s`` (an hour) after that: each model's logged predictions and labels
older than its production version's ``monitoring.retention_days`` (30 by default) are deleted,
in batches from the database, by whole days from Parquet. Every server process sweeps: the
deletes are idempotent, so several servers sharing a registry only repeat a cheap query.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from modelyard.serving.poller import Poller

if TYPE_CHECKING:
    from modelyard.monitoring.monitor import RetentionResult
    from modelyard.serving.monitor_api import MonitorAPI
    from modelyard.serving.options import ServeOptions

log = logging.getLogger(__name__)

#: the first sweep waits this long (or the interval, if shorter): startup has other work to do.
FIRST_SWEEP_S = 60.0


class RetentionSweeper(Poller):
    """Deletes what ``monitoring.retention_days`` no longer keeps, every interval."""

    doing = "delete predictions past their retention"

    def __init__(self, options: ServeOptions, api: MonitorAPI) -> None:
        super().__init__()
        self.options = options
        self.api = api  # its Monitor reads the server's own log store
        self._swept = False

    def interval(self) -> float:
        every = float(self.options.retention_interval_s)
        return every if self._swept else min(FIRST_SWEEP_S, every)

    async def tick(self) -> None:
        self._swept = True
        await asyncio.get_running_loop().run_in_executor(None, self.sweep)

    def sweep(self) -> list[RetentionResult]:
        """One sweep over every model (blocking); what it deleted, each deletion logged."""
        results = self.api.monitor.enforce_retention()
        for r in results:
            if r.predictions or r.labels:
                log.info("%s: deleted %d logged predictions and %d labels older than %g days",
                         r.model, r.predictions, r.labels, r.retention_days)
        return results


__all__ = ["FIRST_SWEEP_S", "RetentionSweeper"]
