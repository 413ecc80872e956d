"""Applications served beside the API under a path prefix (the web console at ``/ui``).

A mount is named ``module:function`` in :attr:`~modelyard.serving.options.ServeOptions.mounts`;
the function takes the :class:`~modelyard.serving.app.App` (its catalog, access rules and data
plane) and returns a :class:`Mount`. The app hands every request under the prefix to the
mount's ASGI callable before its own route table, so a mount's pages are not API routes (not in
the OpenAPI document) and the layers above serving (the console) plug in by name: serving never
imports them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.entrypoints import resolve_callable
from modelyard.errors import ConfigError
from modelyard.serving.http import Receive, Scope, Send

log = logging.getLogger(__name__)

ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Mount:
    """``prefix`` (``/ui``) and the ASGI callable answering every path under it; ``startup``
    and ``shutdown`` run with the app's."""

    prefix: str
    app: ASGI
    startup: Callable[[], Awaitable[None]] | None = None
    shutdown: Callable[[], Awaitable[None]] | None = None
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/") or len(self.prefix) < 2:
            raise ConfigError(f"mount prefix {self.prefix!r} must look like /ui")

    def owns(self, path: str) -> bool:
        """Whether ``path`` is this mount's (the prefix itself or below it)."""
        return path == self.prefix or path.startswith(self.prefix + "/")


def load_mounts(names: Sequence[str], app: Any) -> list[Mount]:
    """The mounts ``names`` build for ``app``; one that cannot be imported is left out with a
    warning (the API still serves), one that builds something else is a :class:`ConfigError`."""
    mounts: list[Mount] = []
    for name in names:
        try:
            factory = resolve_callable(name, Path.cwd())
        except ConfigError as exc:
            log.warning("not serving %s: %s", name, exc)
            continue
        made = factory(app)
        if not isinstance(made, Mount):
            raise ConfigError(f"{name} must return a modelyard.serving.mounts.Mount, "
                              f"got {type(made).__name__}")
        mounts.append(made)
    return mounts


def mount_for(mounts: Sequence[Mount], path: str) -> Mount | None:
    """The mount that owns ``path``, or None (the API's route table answers it)."""
    for found in mounts:
        if found.owns(path):
            return found
    return None


__all__ = ["ASGI", "Mount", "load_mounts", "mount_for"]
