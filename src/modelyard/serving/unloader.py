"""Idle unloading (``--idle-unload DURATION``): a version nobody asked for lately gives its
memory back, and its next request loads it again.

Every few seconds :class:`IdleUnloader` asks the cache for the versions whose last batch ran
``idle_s`` or more ago (:meth:`~modelyard.serving.cache.ModelCache.unload_idle`) and unloads
them: each drains what it has queued, then its memory is released. Any version may go, the
served alias's included: ``/readyz`` stays 200 (the model still answers, after a load) and
lists it under ``idle``. A request for it waits for one load, shared by every request that
arrives meanwhile; the load is counted in ``modelyard_model_load_seconds{reason="idle"}``.

The versions an active rollout routes stay loaded (``keep``): the rollout would load an
unloaded one again at its next poll, so unloading it would only make it cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from modelyard.serving.cache import Key, ModelCache
from modelyard.serving.poller import Poller

#: the longest wait between two looks for idle versions.
MAX_INTERVAL_S = 30.0


def check_interval(idle_s: float) -> float:
    """Seconds between looks: a tenth of ``idle_s`` (a version goes at most 10 % late), at most
    :data:`MAX_INTERVAL_S`."""
    return min(idle_s / 10, MAX_INTERVAL_S)


def rollout_versions(active: Mapping[str, Any]) -> set[Key]:
    """The versions active rollouts route (``Rollouts.active``: model -> held rollout)."""
    return {(name, int(version)) for name, held in active.items()
            for version in (held.deployment.stable_version, held.deployment.candidate_version)
            if version is not None}


class IdleUnloader(Poller):
    """Unload versions unused for ``idle_s`` seconds, except those ``keep()`` names."""

    doing = "unload idle versions"

    def __init__(self, cache: ModelCache, idle_s: float,
                 keep: Callable[[], Collection[Key]] = frozenset) -> None:
        super().__init__()
        self.cache = cache
        self.idle_s = idle_s
        self._keep = keep

    def interval(self) -> float:
        return check_interval(self.idle_s)

    async def tick(self) -> None:
        """Unload what has been idle long enough (its draining runs in the background)."""
        self.cache.unload_idle(self.idle_s, self._keep())


__all__ = ["MAX_INTERVAL_S", "IdleUnloader", "check_interval", "rollout_versions"]
