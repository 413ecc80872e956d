"""Which pools a project's models fall into, and what each pool's servers need.

:func:`plan_pools` is the one decision every deployment target starts from (a container image
per pool, a Kubernetes Deployment per pool): pure, from the specs and the flavor of each model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelyard.adapters import get_adapter
from modelyard.errors import ConfigError
from modelyard.spec import Spec


@dataclass(frozen=True)
class Pool:
    """One pool of servers: the models it serves and what its image must carry."""

    name: str
    #: its servers need a GPU: the pool is called ``gpu`` or one of its models asks for
    #: ``cuda[:N]``.
    gpu: bool
    #: the models it serves, sorted.
    models: tuple[str, ...]
    #: the flavors (frameworks) of those models, sorted: all its image needs to install.
    flavors: tuple[str, ...]


def plan_pools(specs: Mapping[str, Spec], flavors: Mapping[str, str]) -> list[Pool]:
    """The project's pools, sorted by name. ``flavors`` gives each model's flavor where its spec
    names none (the registry's newest version, say); a model with neither is a ConfigError."""
    members: dict[str, list[tuple[str, str, bool]]] = {}
    for name, spec in sorted(specs.items()):
        flavor = spec.flavor or flavors.get(name)
        if flavor is None:
            raise ConfigError(f"model {name!r} has no flavor yet: train it once, or set "
                              "'flavor:' in its spec, so its pool knows which framework it needs")
        serving = spec.serving
        accelerated = get_adapter(flavor).accelerated
        pool = serving.pool_for(accelerated=accelerated)
        members.setdefault(pool, []).append((name, flavor, serving.device.startswith("cuda")))
    return [Pool(name=pool, gpu=pool == "gpu" or any(cuda for _, _, cuda in rows),
                 models=tuple(name for name, _, _ in rows),
                 flavors=tuple(sorted({flavor for _, flavor, _ in rows})))
            for pool, rows in sorted(members.items())]
