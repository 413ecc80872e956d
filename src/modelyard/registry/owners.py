"""Who runs a training run: the process that recorded it, and whether that process still lives.

A run records its owner when it starts: the host name, the pid and a *start token* (the boot's
id and the process's start time, read from ``/proc``), so a pid the kernel has since handed to
another process is not mistaken for the owner. The owner's process also beats a heartbeat into
the run every :data:`HEARTBEAT_S` seconds while it runs.

:func:`abandoned` (pure) judges a running run: on this host, its process must exist and carry
the same start token; on another host, where no process can be asked, its heartbeat must be
younger than :data:`STALE_AFTER_S`. The registry applies the verdict when runs are read, so a
``modelyard train`` killed with SIGKILL shows as failed ("abandoned: process PID on HOST is
gone"), never as running forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

#: seconds between a running run's heartbeats.
HEARTBEAT_S = 30.0
#: a run on another host whose heartbeat is older than this is judged abandoned (ten beats
#: missed: a busy database or a paused VM does not end a live run).
STALE_AFTER_S = 300.0
_PROC = Path("/proc")
log = logging.getLogger(__name__)
_MAX_HOST = 255


@dataclass(frozen=True)
class Owner:
    """A process that runs a training run: host, pid and start token (None where unknown)."""

    host: str
    pid: int
    start: str | None = None

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        pid = os.getpid()
        return cls(this_host(), pid, start_token(pid))


def this_host() -> str:
    """This machine's name as runs record it."""
    return socket.gethostname()[:_MAX_HOST]


def start_token(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of process ``pid``, None if unknown or gone.

    Linux only (``/proc``); elsewhere a run's process is judged by its pid and heartbeat.
    """
    stat = _stat(pid)
    if stat is None:
        return None
    try:
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        boot = "?"
    return f"{boot}:{stat[19]}"  # field 22 of /proc/PID/stat: start time since boot


def is_running(pid: int, token: str | None) -> bool:
    """Whether process ``pid`` on this host lives and, given its start ``token``, is that one.

    A zombie (dead, not yet reaped by its parent) counts as gone.
    """
    if pid <= 0:
        return False
    if _PROC.is_dir():
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return token is None or start_token(pid) == token
    try:
        os.kill(pid, 0)  # no /proc (macOS): signal 0 asks whether the pid exists
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal (it exists), or a platform without signal 0
        return True
    return True


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    # the command name is in parentheses and may itself hold spaces and parentheses
    fields = text[text.rfind(")") + 2:].split()
    return fields if len(fields) > 19 else None


def abandoned(*, host: str | None, pid: int | None, start: str | None,
              heartbeat_at: datetime | None, started_at: datetime, here: str, now: datetime,
              alive: Callable[[int, str | None], bool] = is_running,
              stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why a *running* run is abandoned, or None while its owner may still be at work.

    On this host (``host == here``) ``alive(pid, start)`` decides; on another, the heartbeat's
    age. A run without an owner (recorded before owners were) is never judged.
    """
    if host is None or pid is None:
        return None
    if host == here:
        return None if alive(pid, start) else f"abandoned: process {pid} on {host} is gone"
    last = heartbeat_at or started_at
    silent = now - last
    if silent <= timedelta(seconds=stale_after_s):
        return None
    return (f"abandoned: process {pid} on {host} is gone (no heartbeat for "
            f"{silent.total_seconds():.0f}s)")


@contextlib.contextmanager
def beating(beat: Callable[[], object], every_s: float, name: str) -> Iterator[None]:
    """Call ``beat`` every ``every_s`` seconds on a thread while the block runs: how a process
    keeps a claim alive (a run's heartbeat, a lease). A failing beat is logged, and the next
    one tries again, since a database blip must not end a live claim."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every_s):
            try:
                beat()
            except Exception:
                log.warning("%s failed; trying again in %.0f s", name, every_s, exc_info=True)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "Owner", "abandoned", "beating", "is_running",
           "start_token", "this_host"]
