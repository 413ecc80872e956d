"""What a loaded version really costs: the growth of the process's resident memory as it loads.

``--max-memory`` used to compare an estimate (a PyTorch model's tensor bytes, else the artifact's
size) with the budget; a LightGBM or Keras version really holds 5-15 times its artifact, so the
budget meant little. :class:`Footprint` measures instead:

- **A version loaded in the server process** is charged the growth of the process's resident
  set size (``/proc/self/statm``) across its load and warm-up -- or of the bytes the C
  allocator has handed out (glibc's ``mallinfo2``), when more: a load can reuse pages an
  unloaded version or an earlier load left to the allocator and barely grow the resident set
  -- or its old estimate when that is larger still (what its arrays must hold at least).
  Before each reading, :func:`release_memory` collects the young garbage (what the load made
  and dropped) and asks the C allocator to hand free pages back to the system, so a load is
  charged the pages it holds, not what its temporary buffers left in the allocator's free
  lists; after an unload it collects everything, so a model with reference cycles is freed
  now, not at some later collection. What remains of those (glibc keeps the free top of a
  thread's arena, up to the largest temporary buffer a load used) can over-charge a version by
  up to that much.
- **Loads are measured one at a time** (one lock): resident memory belongs to the whole process,
  so two loads at once would each be charged the other's growth. Loads therefore queue behind
  each other; predictions do not wait for them.
- **A framework's first import is its own cost**, not its first version's: importing PyTorch
  or TensorFlow grows the process by 150-600 MB that no eviction gives back. The first version
  of each flavor is loaded twice more, one copy after the other, each while the first lives
  and dropped after it is measured: what a copy grows the process by is what the version alone
  holds (the smaller of the two: the allocator keeps some pages after a first use, once,
  where the version's own memory comes back in every copy); the rest of the first load's
  growth is the flavor's framework cost (exported as ``modelyard_framework_memory_bytes``,
  never evicted and not counted against ``--max-memory``). A first version whose estimate is
  above :data:`REMEASURE_LIMIT` is not loaded again (that could double a large model's
  memory for a moment): it is charged its estimate and the framework the rest. Modules shared
  between flavors (xgboost imports parts of scikit-learn) are charged to whichever flavor
  loads first.
- **A version in a device worker** is charged its worker process's resident memory, read live
  (:class:`~modelyard.serving.supervisor.ProcessRunner`): unloading it ends that process, so
  all of it comes back. GPU memory is not host memory and is not counted.

Where ``/proc`` cannot be read (not Linux), every version is charged its estimate.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: a first version whose estimate is above this many bytes is not loaded again to measure it.
REMEASURE_LIMIT = 256 * 1024 * 1024

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of process ``pid`` (this one by default); 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _libc() -> Any:
    """This process's C library (glibc's ``malloc_trim``/``mallinfo2`` where it has them)."""
    try:
        return ctypes.CDLL(None)
    except OSError:  # Windows
        return None


def malloc_in_use() -> int:
    """Bytes the C allocator has handed out and not had back, over all its arenas (glibc 2.33
    and later); 0 elsewhere."""
    mallinfo2 = getattr(_libc(), "mallinfo2", None)
    if mallinfo2 is None:
        return 0
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def release_memory(full: bool = True) -> None:
    """Free unreachable objects now and return free allocator pages to the system (blocking).

    ``full`` collects every generation, the frozen one too: the server freezes its heap after
    preloading (``app.settle_heap``), so an unloaded preloaded version with reference cycles
    (a Keras model) would otherwise never be freed; that walks the whole heap (about 0.2 s with
    every framework imported). Otherwise only the young generations are collected (what a load
    just made and dropped), which stays quick however large the heap.
    """
    if full:
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        gc.collect()
        if frozen:
            gc.freeze()
    else:
        gc.collect(1)
    trim = getattr(_libc(), "malloc_trim", None)  # glibc only (not musl, macOS)
    if trim is not None:
        trim(ctypes.c_size_t(0))


@dataclass(frozen=True)
class Cost:
    """What one loaded version is charged against ``--max-memory``.

    ``grown``: what the version alone grew the process by -- its resident memory, or the bytes
    the C allocator handed out when more (a load that reuses pages the allocator kept from
    earlier loads barely grows the resident set) -- 0 where it could not be measured;
    ``estimate``: the old estimate; ``framework``: what this load charged its flavor's framework
    (non-zero only for a flavor's first load).
    """

    grown: int
    estimate: int
    framework: int = 0

    @property
    def bytes(self) -> int:
        """The charge: the measured growth, or the estimate when it is larger."""
        return max(self.grown, self.estimate)


class Footprint:
    """Measures loads one at a time and keeps what each flavor's framework cost to import.

    ``rss``, ``in_use`` and ``release`` are the readings (tests pass fakes): the process's
    resident bytes, the C allocator's bytes in use, and :func:`release_memory` (``full=False``
    before each reading, ``True`` after an unload).
    """

    def __init__(self, rss: Callable[[], int] = rss_bytes,
                 release: Callable[[bool], None] = release_memory,
                 remeasure_limit: int = REMEASURE_LIMIT,
                 in_use: Callable[[], int] = malloc_in_use) -> None:
        self._rss = rss
        self._in_use = in_use
        self._release = release
        self.remeasure_limit = remeasure_limit
        #: flavor -> bytes its framework's first import (and lazy set-up) took in this process.
        self.frameworks: dict[str, int] = {}
        self._lock = threading.Lock()

    def measure(self, flavor: str, load: Callable[[], T],
                estimate: Callable[[T], int]) -> tuple[T, Cost]:
        """Run ``load`` (load and warm one version; blocking) and measure what it holds.

        Returns what ``load`` returned and its :class:`Cost`. Waits for any other measured load.
        """
        with self._lock:
            before = self._reading()
            value = load()
            grown = _growth(before, self._reading())
            guess = max(int(estimate(value)), 0)
            if before[0] <= 0:  # no /proc: nothing to measure
                return value, Cost(0, guess)
            if flavor in self.frameworks:
                return value, Cost(grown, guess)
            own = self._own_cost(load, guess)
            framework = max(grown - own, 0)
            self.frameworks[flavor] = framework
            log.info("the %s framework took %.1f MB to import and set up in this process; its "
                     "first version is charged %.1f MB of the %.1f MB its first load grew",
                     flavor, framework / 1e6, own / 1e6, grown / 1e6)
            return value, Cost(own, guess, framework)

    def release(self) -> None:
        """Free what unloaded versions left (blocking); waits for a measured load to finish."""
        with self._lock:
            self._release(True)

    def _own_cost(self, load: Callable[[], T], guess: int) -> int:
        """What the version alone holds, once its framework is imported: the smaller growth of
        two more copies, each loaded while the first lives and dropped after (a cost the
        version has repeats in each copy; what the allocator keeps after a first use, once,
        does not). The estimate for a version too large to load again."""
        if guess > self.remeasure_limit:
            return guess
        growths = []
        for _ in range(2):
            before = self._reading()
            extra = load()
            growths.append(_growth(before, self._reading()))
            del extra  # never started: dropping it frees it
        self._release(False)
        return min(growths)

    def _reading(self) -> tuple[int, int]:
        self._release(False)
        return self._rss(), self._in_use()


def _growth(before: tuple[int, int], after: tuple[int, int]) -> int:
    """The larger of the resident and the allocated growth between two readings (at least 0).

    Resident growth also sees memory outside the C allocator (Python's small-object arenas,
    mapped files); allocated growth sees a load that reuses pages the allocator kept from an
    earlier one (glibc keeps the top of a thread's arena resident, where ``malloc_trim`` does
    not reach), so the larger of the two is the closer to what the version holds.
    """
    return max(after[0] - before[0], after[1] - before[1], 0)


__all__ = ["REMEASURE_LIMIT", "Cost", "Footprint", "malloc_in_use", "release_memory",
           "rss_bytes"]
