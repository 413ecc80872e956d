"""The model cache: load a version on first use, share one load among waiters, evict LRU.

Keys are ``(model name, version)``. ``peek`` is the request hot path (a dict lookup, no await);
``get`` loads what is missing through the ``load`` coroutine it was given, and every request that
arrives while a version is loading awaits the same load. Loading happens wherever ``load`` puts it
(the catalog runs it on a thread), so it never stalls the event loop or other models.

When the loaded versions together hold more than ``max_memory`` bytes, the least recently used
ones are evicted (their runners drain first); :func:`choose_evictions` is the pure decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, int]


def choose_evictions(
    entries: Sequence[tuple[Key, int]], max_memory: int | None, keep: Key | None = None
) -> list[Key]:
    """Keys to evict, least recently used first, until the rest fit ``max_memory`` bytes.

    ``entries`` are ``(key, bytes)`` from least to most recently used. ``keep`` (the version just
    loaded) is never chosen, so a model larger than the budget still serves alone.
    """
    if max_memory is None:
        return []
    total = sum(size for _, size in entries)
    out: list[Key] = []
    for key, size in entries:
        if total <= max_memory:
            break
        if key == keep:
            continue
        out.append(key)
        total -= size
    return out


class ModelCache:
    """Loaded runners by ``(name, version)``, loaded on demand and evicted LRU under a budget."""

    def __init__(
        self,
        load: Callable[[Key], Awaitable[Any]],
        *,
        max_memory: int | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._load = load
        self.max_memory = max_memory
        self._on_change = on_change
        self._ready: OrderedDict[Key, Any] = OrderedDict()
        self._loading: dict[Key, asyncio.Future[Any]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def peek(self, key: Key) -> Any | None:
        """The loaded runner for ``key`` or ``None`` (marks it recently used); never awaits."""
        runner = self._ready.get(key)
        if runner is not None:
            self._ready.move_to_end(key)
        return runner

    def is_loading(self, key: Key) -> bool:
        """Whether ``key`` is being loaded now."""
        return key in self._loading

    async def get(self, key: Key) -> Any:
        """The runner for ``key``, loading it (once, however many callers wait) if needed."""
        runner = self.peek(key)
        if runner is not None:
            return runner
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            asyncio.get_running_loop().create_task(self._fill(key, pending))
        return await asyncio.shield(pending)

    async def _fill(self, key: Key, pending: asyncio.Future[Any]) -> None:
        try:
            runner = await self._load(key)
        except BaseException as exc:
            self._loading.pop(key, None)
            if not pending.done():
                pending.set_exception(exc)
                pending.exception()  # retrieved: a load nobody awaits any more is not an error
            if not isinstance(exc, Exception):
                raise
            return
        self._ready[key] = runner
        self._loading.pop(key, None)
        pending.set_result(runner)
        entries = [(k, int(getattr(r, "memory", 0))) for k, r in self._ready.items()]
        for old in choose_evictions(entries, self.max_memory, keep=key):
            log.info("evicting %s:%s to stay under the memory budget", *old)
            self.evict(old)
        self._changed()

    def evict(self, key: Key) -> asyncio.Task[None] | None:
        """Drop ``key`` now; its runner drains in the background. Returns the draining task."""
        runner = self._ready.pop(key, None)
        if runner is None:
            return None
        task = asyncio.get_running_loop().create_task(runner.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._changed()
        return task

    def loaded(self) -> list[tuple[Key, Any]]:
        """Loaded ``(key, runner)`` pairs, least recently used first."""
        return list(self._ready.items())

    def memory(self) -> int:
        """Bytes held by loaded runners (their estimates)."""
        return sum(int(getattr(r, "memory", 0)) for r in self._ready.values())

    async def close(self) -> None:
        """Evict everything and wait for every runner to drain."""
        for key in list(self._ready):
            self.evict(key)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


__all__ = ["Key", "ModelCache", "choose_evictions"]
