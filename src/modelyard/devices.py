"""Device placement: turn ``cpu``, ``cuda[:N]`` or ``auto`` into a real device, or say why not."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from modelyard.errors import DeviceError

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(auto|cpu|cuda(?::(\d+))?)$")
_POOL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def validate_device(device: str) -> str:
    """Check the spelling of a device; raises :class:`ValueError` with what is accepted."""
    if not _DEVICE.match(device):
        raise ValueError(f"device {device!r} is not one of 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def validate_pool(pool: str) -> str:
    """Check a pool name: what a Kubernetes object name allows (``cpu``, ``gpu``, ``nlp-a100``)."""
    if not _POOL.match(pool):
        raise ValueError(f"pool {pool!r} must be 1-63 lowercase letters, digits or '-', "
                         "starting and ending with a letter or digit")
    return pool


def default_pool(device: str, *, accelerated: bool) -> str:
    """The pool a model serves from when its spec names none: ``gpu`` where its device asks
    for one (``cuda[:N]``, or ``auto`` for a deep-learning flavor), otherwise ``cpu``."""
    if device.startswith("cuda") or (device == "auto" and accelerated):
        return "gpu"
    return "cpu"


def cpu_quota(cpu_max: str | None) -> int | None:
    """CPUs a cgroup v2 ``cpu.max`` (``"200000 100000"``: quota and period in µs) allows,
    rounded up; None for no limit (``"max 100000"``) or nothing readable."""
    parts = (cpu_max or "").split()
    if len(parts) != 2 or not (parts[0].isdigit() and parts[1].isdigit()) or not int(parts[1]):
        return None
    return max(1, -(-int(parts[0]) // int(parts[1])))


def compute_threads(affinity: int, cpu_max: str | None) -> int | None:
    """Threads the frameworks' thread pools (OpenMP, BLAS, torch) should use, when fewer than
    they would pick themselves: they count the CPUs the process may run on, not the CPU time a
    container's quota (a Kubernetes CPU limit) allows, and so run more threads than the quota
    can keep busy, each throttled in turn. None: their own choice is right."""
    quota = cpu_quota(cpu_max)
    return quota if quota is not None and quota < affinity else None


def resolve_device(
    requested: str,
    *,
    accelerated: bool,
    gpu_count: Callable[[], int],
    model: str = "model",
) -> str:
    """The device to load on.

    ``auto`` picks ``cuda:0`` for an accelerated flavor when a GPU is present and otherwise falls
    back to ``cpu`` (logged). An explicit ``cuda[:N]`` that is not available is an error, never a
    silent fallback: the spec asked for it.
    """
    match = _DEVICE.match(requested)
    if match is None:
        raise DeviceError(
            f"{model}: device {requested!r} is not valid; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        )
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        if accelerated and gpu_count() > 0:
            return "cuda:0"
        if accelerated:
            log.info("%s: no GPU found, device 'auto' falls back to cpu", model)
        return "cpu"
    if not accelerated:
        raise DeviceError(
            f"{model}: this flavor runs on cpu only, but the spec asks for {requested!r}; "
            "set device: cpu or auto"
        )
    index = int(match.group(2) or 0)
    available = gpu_count()
    if index >= available:
        raise DeviceError(
            f"{model}: device {requested!r} requested but this machine has "
            f"{available} CUDA device(s); set device: auto to fall back to cpu"
        )
    return f"cuda:{index}"


__all__ = ["resolve_device", "validate_device"]
