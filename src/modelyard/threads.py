"""Threads that work beside the request path, at a lower scheduling priority than it.

A server's event loop answers requests; the prediction log's writer and the registry's thread
do work no request waits for. On a busy core the kernel's scheduler shares time between them
in slices of milliseconds, so a writer turning a thousand log entries into a chunk could hold
the core for as long while requests wait (``bench/serve.py``'s open loop: W1's p99 at half the
peak went 8-12 ms -> 3-4 ms once the writer ran below the loop's priority). A thread that calls
:func:`run_in_background` gets the CPU the loop leaves, and a share of a saturated core still
(nice :data:`BACKGROUND_NICE`: about a quarter of it), so it keeps up rather than starving.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

#: the nice value of a background thread: the scheduler gives it about a third of the weight
#: of a thread at the default 0.
BACKGROUND_NICE = 5


def run_in_background() -> None:
    """Lower the calling thread's scheduling priority to :data:`BACKGROUND_NICE` (Linux, where
    each thread has its own; elsewhere, or when the system refuses, nothing changes)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


__all__ = ["BACKGROUND_NICE", "run_in_background"]
