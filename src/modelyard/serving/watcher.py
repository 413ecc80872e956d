"""Hot swap: notice alias moves in the registry and switch the served version without a failure.

Every ``poll_interval_s`` the watcher reads the registry's aliases. For each model whose served
alias moved (``modelyard promote`` / ``rollback`` from any process), it loads and warms the new
version while the old one keeps answering, then points the route at the new version in one dict
assignment, and only then evicts the old runner, which finishes its queued requests first.
:func:`alias_moves` is the pure decision. A version that fails to load leaves the old one
serving; ``Catalog.not_served`` records which and why (``/readyz`` and ``/v1/models`` show it)
until a retry succeeds or the alias moves again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from modelyard.serving.catalog import Catalog
from modelyard.serving.poller import Poller

log = logging.getLogger(__name__)

#: a version that failed to load is retried after this many seconds, not on every poll.
RETRY_FAILED_S = 30.0


def alias_moves(
    routes: Mapping[str, int], models: Mapping[str, Mapping[str, int]], alias: str
) -> dict[str, int | None]:
    """Models whose ``alias`` points somewhere other than their route: ``{name: new or None}``.

    ``None`` means the alias (or the whole model) is gone, so the route is dropped.
    """
    moves: dict[str, int | None] = {}
    for name, aliases in models.items():
        target = aliases.get(alias)
        if routes.get(name) != target:
            moves[name] = target
    for name in routes:
        if name not in models:
            moves[name] = None
    return moves


class Watcher(Poller):
    """Poll the registry and apply alias moves to the catalog; ``start``/``stop`` on the loop."""

    doing = "read the registry for alias moves"

    def __init__(self, catalog: Catalog) -> None:
        super().__init__()
        self.catalog = catalog
        self._failed: dict[tuple[str, int], float] = {}
        self._swapping: set[str] = set()

    def interval(self) -> float:
        return float(self.catalog.options.poll_interval_s)

    async def tick(self) -> None:
        await self.poll()

    async def poll(self) -> None:
        """Read the registry once and start a swap for each moved alias."""
        catalog = self.catalog
        models = await catalog.read_registry()
        alias = catalog.options.alias
        moves = alias_moves(catalog.routes, models, alias)
        for name, info in list(catalog.not_served.items()):
            if models.get(name, {}).get(alias) != info["version"]:  # the alias moved on
                catalog.not_served.pop(name, None)
        now = time.monotonic()
        for name, target in moves.items():
            if name in self._swapping:
                continue
            if target is not None and now < self._failed.get((name, target), 0.0):
                continue
            self._swapping.add(name)
            self.spawn(self._swap(name, target))

    async def _swap(self, name: str, target: int | None) -> None:
        catalog = self.catalog
        try:
            old = catalog.routes.get(name)
            if target is not None:
                try:
                    await catalog.cache.get((name, target))  # load + warm; old keeps serving
                except Exception as exc:
                    self._failed[(name, target)] = time.monotonic() + RETRY_FAILED_S
                    log.error("cannot switch %s to version %s, still serving %s: %s",
                              name, target, old, exc)
                    catalog.not_served[name] = {
                        "version": target, "serving": old, "reason": str(exc) or repr(exc),
                        "since": datetime.now(UTC).isoformat(),
                        "retry_in_s": RETRY_FAILED_S}
                    return
                catalog.routes[name] = target  # the atomic switch
            else:
                catalog.routes.pop(name, None)
            catalog.not_served.pop(name, None)
            log.info("%s@%s: version %s -> %s", name, catalog.options.alias, old, target)
            if old is not None and old != target:
                catalog.cache.evict((name, old))  # drains its queue before it is released
        finally:
            self._swapping.discard(name)


__all__ = ["RETRY_FAILED_S", "Watcher", "alias_moves"]
