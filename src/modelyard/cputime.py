"""CPU and GPU time a piece of work spends: what ``modelyard cost`` charges each model.

Three meters, each as cheap as the work it measures allows:

- **A batch of predictions** (:func:`timed`): the calling thread's CPU time
  (``time.thread_time_ns``) around the whole batch -- input concatenation, the model call and
  the split of its answer -- read twice a batch, never per row. A batch runs on one thread (the
  event loop or one executor thread), so the thread's clock is the batch's and no other
  request's work is charged to it. Time the model spends in threads of its own (an OpenMP or
  BLAS pool) is not on the calling thread's clock: such a model is charged less than it uses
  (the process CPU in ``/proc`` has it, for all models together).
- **GPU time** (:class:`GpuTimer`): for a PyTorch version on a CUDA device, two CUDA events
  recorded on the current stream around the call and the time between them once the second has
  completed: the span the device was working for that batch (gaps between its kernels
  included). Other flavors on a GPU are not timed (their kernels run on streams torch does not
  see): they report no GPU time.
- **A whole run** (:func:`process_cpu_s`): user and system CPU of this process and of its
  waited-for children (``os.times``): a training child measures itself, a batch run its
  process, before and after.

``MODELYARD_COST_ACCOUNTING=0`` turns the per-batch meters off (the overhead benchmark,
``bench/cost.py``, compares both ways in one run); runs are always measured (twice a run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: set to ``0`` to stop charging predictions their CPU and GPU time (for measuring its overhead).
ACCOUNTING_ENV = "MODELYARD_COST_ACCOUNTING"


def accounting_enabled() -> bool:
    """Whether predictions are charged their CPU and GPU time (``MODELYARD_COST_ACCOUNTING``)."""
    return os.environ.get(ACCOUNTING_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def process_cpu_s() -> float:
    """CPU seconds (user and system) this process and its waited-for children have used."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class GpuTimer:
    """Times calls on one CUDA device with a pair of CUDA events (PyTorch versions only)."""

    def __init__(self, torch: Any, device: str) -> None:
        self._torch = torch
        self._device = torch.device(device)

    def run(self, fn: Callable[[], T]) -> tuple[T, float]:
        """Call ``fn`` and return what it returned and the device seconds it kept the GPU busy
        (waits for the device to finish the call's work: the answer needs it anyway)."""
        cuda = self._torch.cuda
        with cuda.device(self._device):
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            start.record()
            value = fn()
            end.record()
            end.synchronize()
        return value, float(start.elapsed_time(end)) / 1000.0


def gpu_timer(flavor: str, device: str) -> GpuTimer | None:
    """A :class:`GpuTimer` for a ``flavor`` version on ``device``; None off CUDA or for flavors
    whose kernels torch cannot time."""
    if flavor != "torch" or not device.startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return GpuTimer(torch, device)


def timed(fn: Callable[[], T], gpu: GpuTimer | None = None) -> tuple[T, float, float]:
    """Call ``fn``; return what it returned, the CPU seconds this thread spent in it, and the
    GPU seconds it took (0.0 without ``gpu``)."""
    start = time.thread_time_ns()
    if gpu is None:
        value, gpu_s = fn(), 0.0
    else:
        value, gpu_s = gpu.run(fn)
    return value, (time.thread_time_ns() - start) / 1e9, gpu_s


__all__ = ["ACCOUNTING_ENV", "GpuTimer", "accounting_enabled", "gpu_timer", "process_cpu_s",
           "timed"]
