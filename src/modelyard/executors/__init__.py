"""Where training runs execute: executors registered by name (``local``, ``ray``).

A spec names its executor (``executor: ray``), ``modelyard train --executor`` overrides it, and
:func:`get_executor` builds it from :class:`ExecutorOptions` (the cluster's address, the shared
artifact store), read once at the edge. Add one with :func:`register_executor`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from modelyard.errors import ConfigError
from modelyard.types import Executor


@dataclass(frozen=True)
class ExecutorOptions:
    """What executors are built with: the Ray cluster's address (None: ``RAY_ADDRESS``, or a
    Ray started on this machine) and the artifact store both the client and workers see."""

    ray_address: str | None = None
    #: a folder or fsspec URL; the Ray executor stages artifacts under ``<artifacts>/staging``
    artifacts: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, ray_address: str | None = None,
                 artifacts: str | None = None) -> ExecutorOptions:
        """Explicit values first, then ``MODELYARD_RAY_ADDRESS`` and ``MODELYARD_ARTIFACTS``."""
        env = os.environ if env is None else env
        return cls(ray_address or env.get("MODELYARD_RAY_ADDRESS") or None,
                   artifacts or env.get("MODELYARD_ARTIFACTS") or None)


_FACTORIES: dict[str, Callable[[ExecutorOptions], Executor]] = {}


def register_executor(name: str, factory: Callable[[ExecutorOptions], Executor]) -> None:
    """Make ``factory`` build the executor a spec or ``--executor`` calls ``name``."""
    _FACTORIES[name] = factory


def executor_names() -> list[str]:
    """The executors one can name, sorted."""
    return sorted(_FACTORIES)


def get_executor(name: str, options: ExecutorOptions | None = None) -> Executor:
    """The executor called ``name``, built with ``options``; :class:`ConfigError` if unknown."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ConfigError(f"no executor {name!r}: use one of {', '.join(executor_names())}"
                          ) from None
    return factory(options or ExecutorOptions())


def _local(options: ExecutorOptions) -> Executor:
    from modelyard.executors.local import LocalExecutor

    return LocalExecutor()


def _ray(options: ExecutorOptions) -> Executor:
    from modelyard.executors.ray_cluster import RayExecutor  # ray itself loads on first run

    return RayExecutor(address=options.ray_address, artifacts=options.artifacts)


register_executor("local", _local)
register_executor("ray", _ray)

__all__ = ["ExecutorOptions", "executor_names", "get_executor", "register_executor"]
