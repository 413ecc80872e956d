"""What a training run asks of the machine that runs it: CPUs, GPUs, memory, custom resources.

Declared per model, either beside ``train`` or in the mapping form of ``train``; both give the
same :class:`~modelyard.spec.Spec` fields (``executor``, ``resources``, ``retries``):

.. code-block:: yaml

    models:
      churn:
        train: churn.py:train
        executor: ray                 # where its runs execute: local (default) or ray
        resources: {cpus: 2, gpus: 1, memory: 4GB, custom: {trainer: 1}}
        retries: 2                    # runs again when its worker node dies mid-run
      # the same, with everything about training under train:
      fraud:
        train: {entrypoint: fraud.py:train, executor: ray, resources: {cpus: 2}, retries: 1}

The local executor runs on this machine and ignores the amounts; the Ray executor asks the
cluster for them, so a run waits for a node that has them (``custom`` pins it to nodes started
with that resource: ``ray start --resources '{"trainer": 1}'``).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "ki": 1024, "kib": 1024, "mi": 1024**2,
          "mib": 1024**2, "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
#: the keys the mapping form of ``train`` takes, besides ``entrypoint``
TRAIN_KEYS = ("executor", "resources", "retries")


def parse_size(value: Any) -> int:
    """Bytes from ``4GB``, ``512MiB``, ``1.5g`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"a size, not {value!r}")
    if isinstance(value, int | float):
        size = float(value)
    else:
        match = _SIZE.match(str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{value!r} is not a size: write it like 512MB, 4GB or 2GiB")
        size = float(match.group(1)) * _UNITS[unit]
    if size <= 0:
        raise ValueError(f"a size must be above 0, not {value!r}")
    return int(size)


class ResourcesSpec(BaseModel):
    """The CPUs, GPUs, memory (bytes; ``4GB`` in a spec) and custom resources one run needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpus: float = Field(1.0, ge=0)
    gpus: float = Field(0.0, ge=0)
    memory: int | None = None
    #: resources a cluster's nodes advertise by name (``{"trainer": 1}``)
    custom: dict[str, float] = Field(default_factory=dict)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)

    def to_ray(self) -> dict[str, Any]:
        """The task options Ray takes for these amounts (``num_cpus``, ``num_gpus``, ...)."""
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory is not None:
            options["memory"] = self.memory
        if self.custom:
            options["resources"] = dict(self.custom)
        return options


def flatten_train(data: Any) -> Any:
    """A spec's fields with the mapping form of ``train`` (``{entrypoint, executor, resources,
    retries}``) spread into the top-level fields; anything else comes back as it was."""
    if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
        return data
    form = dict(data["train"])
    unknown = sorted(set(form) - {"entrypoint", *TRAIN_KEYS})
    if unknown or "entrypoint" not in form:
        raise ValueError(f"train as a mapping takes entrypoint (required) and "
                         f"{', '.join(TRAIN_KEYS)}"
                         + (f"; not {', '.join(unknown)}" if unknown else ""))
    twice = sorted(k for k in TRAIN_KEYS if k in form and k in data)
    if twice:
        raise ValueError(f"{', '.join(twice)} given both under train and beside it: keep one")
    out = {**data, "train": form.pop("entrypoint")}
    out.update(form)
    return out


__all__ = ["TRAIN_KEYS", "ResourcesSpec", "flatten_train", "parse_size"]
