"""The model cache: load a version on first use, share one load among waiters, evict LRU.

Keys are ``(model name, version)``. ``peek`` is the request hot path (a dict lookup, no await);
``get`` loads what is missing through the ``load`` coroutine it was given, and every request that
arrives while a version is loading awaits the same load. Loading happens wherever ``load`` puts it
(the catalog runs it on a thread), so it never stalls the event loop or other models.

When the loaded versions together cost more than ``max_memory`` bytes (each runner's ``memory``:
what its load measured, see :mod:`~modelyard.serving.footprint`), the least recently used ones
are evicted (their runners drain first); :func:`choose_evictions` is the pure decision.

A version nobody used for ``idle_s`` seconds can be unloaded (:meth:`ModelCache.unload_idle`,
driven by :class:`~modelyard.serving.unloader.IdleUnloader`); its next request loads it again.
Use is stamped by :meth:`ModelCache.touch` (the catalog calls it once per batch) on the cache's
``clock``; :func:`choose_idle` is the pure decision. Every load reports how long it took and why
the version was not loaded (:data:`LOAD_REASONS`) to ``on_load``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, int]

#: why a version was not loaded when a load began (the ``reason`` of the load-time histogram):
#: ``preload`` at start; ``first`` never loaded in this process; ``idle`` unloaded after
#: ``--idle-unload``; ``memory`` evicted under ``--max-memory``; ``reload`` unloaded otherwise
#: (its alias moved away, an OIP unload, its device worker could not be restarted).
LOAD_REASONS = ("preload", "first", "idle", "memory", "reload")
#: why a version was unloaded, and the reason its next load then reports.
_NEXT_LOAD = {"idle": "idle", "memory": "memory"}

#: ``on_load(key, seconds, reason)``: called on the event loop after each successful load.
OnLoad = Callable[[Key, float, str], None]


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


def choose_idle(entries: Sequence[tuple[Key, float]], now: float, idle_s: float,
                keep: Collection[Key] = ()) -> list[Key]:
    """Keys last used ``idle_s`` seconds or more before ``now``, except those in ``keep``.

    ``entries`` are ``(key, last used)`` on one clock.
    """
    return [key for key, used in entries if now - used >= idle_s and key not in keep]


class ModelCache:
    """Loaded runners by ``(name, version)``, loaded on demand and evicted LRU under a budget.

    ``release``, when given, is awaited after an unloaded runner has drained (the catalog frees
    its memory there); ``clock`` stamps use (``time.monotonic``; tests pass their own).
    """

    def __init__(
        self,
        load: Callable[[Key], Awaitable[Any]],
        *,
        max_memory: int | None = None,
        on_change: Callable[[], None] | None = None,
        on_load: OnLoad | None = None,
        release: Callable[[], Awaitable[Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.max_memory = max_memory
        self._on_change = on_change
        self._on_load = on_load
        self._release = release
        self.clock = clock
        self._ready: OrderedDict[Key, Any] = OrderedDict()
        self._loading: dict[Key, asyncio.Future[Any]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: key -> when it was last used (loaded, or a batch of it ran), on ``clock``.
        self._used: dict[Key, float] = {}
        #: key -> why it was last unloaded (``idle``, ``memory`` or ``unloaded``).
        self._unloaded: dict[Key, str] = {}
        self._stopping = False

    def peek(self, key: Key) -> Any | None:
        """The loaded runner for ``key`` or ``None`` (marks it recently used); never awaits."""
        runner = self._ready.get(key)
        if runner is not None:
            self._ready.move_to_end(key)
        return runner

    def is_loading(self, key: Key) -> bool:
        """Whether ``key`` is being loaded now."""
        return key in self._loading

    def touch(self, key: Key) -> None:
        """Mark ``key`` used now (called once per batch, so idle unloading and the LRU order see
        every path, rollouts' included)."""
        self._used[key] = self.clock()
        if key in self._ready:
            self._ready.move_to_end(key)

    def unloaded_because(self, key: Key) -> str | None:
        """Why ``key`` was last unloaded (``idle``, ``memory``, ``unloaded``), if it is not
        loaded and was before."""
        return None if key in self._ready else self._unloaded.get(key)

    async def get(self, key: Key, reason: str | None = None) -> Any:
        """The runner for ``key``, loading it (once, however many callers wait) if needed.

        ``reason`` labels the load when this call starts it (``preload``); otherwise it is
        told from the key's history (:data:`LOAD_REASONS`).
        """
        runner = self.peek(key)
        if runner is not None:
            return runner
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            why = reason or self._why_loading(key)
            asyncio.get_running_loop().create_task(self._fill(key, pending, why))
        return await asyncio.shield(pending)

    def _why_loading(self, key: Key) -> str:
        unloaded = self._unloaded.get(key)
        if unloaded is None:
            return "first"
        return _NEXT_LOAD.get(unloaded, "reload")

    async def _fill(self, key: Key, pending: asyncio.Future[Any], reason: str) -> None:
        start = time.perf_counter()
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
        self._unloaded.pop(key, None)
        self.touch(key)
        pending.set_result(runner)
        if self._on_load is not None:
            self._on_load(key, time.perf_counter() - start, reason)
        entries = [(k, int(getattr(r, "memory", 0))) for k, r in self._ready.items()]
        for old in choose_evictions(entries, self.max_memory, keep=key):
            log.info("evicting %s:%s to stay under the memory budget (%d bytes)", *old,
                     self.max_memory)
            self.evict(old, "memory")
        self._changed()

    def evict(self, key: Key, reason: str = "unloaded") -> asyncio.Task[None] | None:
        """Drop ``key`` now; its runner drains in the background. Returns the draining task.

        ``reason`` (``idle``, ``memory``, ``unloaded``) labels the key's next load.
        """
        runner = self._ready.pop(key, None)
        if runner is None:
            return None
        self._unloaded[key] = reason
        self._used.pop(key, None)
        task = asyncio.get_running_loop().create_task(self._drain(runner))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._changed()
        return task

    async def _drain(self, runner: Any) -> None:
        await runner.close()
        if self._release is not None and not self._stopping:
            del runner  # this frame's reference must not keep the model alive while releasing
            try:
                await self._release()
            except Exception as exc:  # a failed clean-up never fails the unload
                log.warning("could not release the memory of an unloaded version: %s", exc)

    def idle(self, idle_s: float, keep: Collection[Key] = ()) -> list[Key]:
        """Loaded keys unused for ``idle_s`` seconds or more, except ``keep``, oldest use first."""
        entries = sorted(((k, self._used.get(k, 0.0)) for k in self._ready), key=lambda e: e[1])
        return choose_idle(entries, self.clock(), idle_s, keep)

    def unload_idle(self, idle_s: float, keep: Collection[Key] = ()) -> list[Key]:
        """Unload every version unused for ``idle_s`` seconds (except ``keep``); each drains
        first and loads again on its next request. Returns the keys unloaded."""
        keys = self.idle(idle_s, keep)
        for key in keys:
            log.info("unloading %s:%s: no request for %g s; it loads again on the next one",
                     *key, idle_s)
            self.evict(key, "idle")
        return keys

    def loaded(self) -> list[tuple[Key, Any]]:
        """Loaded ``(key, runner)`` pairs, least recently used first."""
        return list(self._ready.items())

    def memory(self) -> int:
        """Bytes loaded runners are charged (what each load measured)."""
        return sum(int(getattr(r, "memory", 0)) for r in self._ready.values())

    async def close(self) -> None:
        """Evict everything and wait for every runner to drain."""
        self._stopping = True  # the process is ending: nothing to hand back
        for key in list(self._ready):
            self.evict(key)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


__all__ = ["LOAD_REASONS", "Key", "ModelCache", "OnLoad", "choose_evictions", "choose_idle"]
