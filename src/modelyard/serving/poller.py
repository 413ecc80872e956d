"""The server's background loops (alias watcher, rollouts, monitoring gauges, the API-keys
watch) share this shape.

A :class:`Poller` calls :meth:`Poller.tick` every :meth:`Poller.interval` seconds on the event
loop until stopped. A failing tick is logged and the loop goes on (the registry may be briefly
unreachable; serving must not stop). Work a tick starts in the background goes through
:meth:`Poller.spawn`, so :meth:`Poller.stop` can wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any


class Poller:
    """``start`` / ``stop`` a loop running :meth:`tick` every :meth:`interval` seconds."""

    #: what a tick does, for the warning when one fails ("could not <doing>: ...").
    doing = "poll"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        #: background work ticks started (applying a deployment, swapping a version, ...).
        self.spawned: set[asyncio.Task[Any]] = set()

    def interval(self) -> float:
        """Seconds between ticks (read before each one, so settings may change)."""
        raise NotImplementedError

    async def tick(self) -> None:
        """One round of work."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop and wait for the work it spawned."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.spawned:
            await asyncio.gather(*list(self.spawned), return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; :meth:`stop` waits for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self.spawned.add(task)
        task.add_done_callback(self.spawned.discard)
        return task

    async def _run(self) -> None:
        log = logging.getLogger(type(self).__module__)
        while True:
            await asyncio.sleep(self.interval())
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not %s: %s", self.doing, exc)


__all__ = ["Poller"]
