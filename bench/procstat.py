"""What a server process tree spends, read from Linux ``/proc``: CPU by process and by thread,
and memory (RSS and PSS).

CPU time is the measure that holds on a shared machine: requests a second swing with whatever
else runs, while the CPU a server spends per request barely moves. A tree, because a server may
be several processes (``--workers N`` runs them under its own supervisor; device workers are
children too). Threads by name, because the question after "how much" is "where": the event
loop (``MainThread``), the model pool (``modelyard-predict_N``), the prediction log's writer,
gRPC's threads. ``/proc`` knows a thread only by its id; :func:`thread_names` asks ``py-spy``
for the Python name of each id when it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str]:
    """The fields of a ``stat`` file after the command name (which may hold spaces)."""
    return path.read_text().rsplit(")", 1)[1].split()


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (from each task's ``children`` list)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in _tasks(current):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return out


def _tasks(pid: int) -> list[Path]:
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads) so far; 0 once it is gone."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of ``pid`` and each live descendant, by pid."""
    return {p: process_cpu(p) for p in tree(pid)}


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the tree spent between two :func:`tree_cpu` snapshots (a process that started
    in between counts from zero; one that ended in between is lost, which a bench avoids)."""
    return sum(after[p] - before.get(p, 0.0) for p in after)


@dataclass(frozen=True)
class ThreadTime:
    """One thread's CPU seconds so far, with its process and kernel name."""

    pid: int
    tid: int
    comm: str
    cpu_s: float
    #: of which in the kernel (system calls: socket reads and writes, epoll, futexes).
    sys_s: float = 0.0


def thread_cpu(pid: int) -> dict[int, ThreadTime]:
    """CPU seconds so far of every thread of the tree under ``pid``, by thread id."""
    out: dict[int, ThreadTime] = {}
    for p in tree(pid):
        for task in _tasks(p):
            try:
                comm = (task / "comm").read_text().strip()
                fields = _stat_fields(task / "stat")
            except OSError:
                continue
            tid = int(task.name)
            out[tid] = ThreadTime(p, tid, comm, (int(fields[11]) + int(fields[12])) / _TICK,
                                  int(fields[12]) / _TICK)
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names of the tree's threads by thread id, from ``py-spy dump`` (empty
    without py-spy or the permission to read another process)."""
    spy = py_spy()
    if spy is None:
        return {}
    names: dict[int, str] = {}
    for p in tree(pid):
        try:
            out = subprocess.run([spy, "dump", "--json", "--nonblocking", "--pid", str(p)],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
            threads = json.loads(out)
        except (subprocess.SubprocessError, OSError, ValueError):
            continue
        for t in threads:
            if t.get("os_thread_id"):
                names[int(t["os_thread_id"])] = t.get("thread_name") or (
                    "MainThread" if int(t["os_thread_id"]) == p else "?")
    return names


def py_spy() -> str | None:
    """The ``py-spy`` executable: on PATH, or beside this Python (a virtual environment's)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def by_role(before: dict[int, ThreadTime], after: dict[int, ThreadTime],
            names: dict[int, str], kernel: bool = False) -> dict[str, float]:
    """CPU seconds between two :func:`thread_cpu` snapshots, summed by thread role.

    A role is the Python thread name without its pool index (``modelyard-predict_3`` ->
    ``modelyard-predict``), else the kernel's name (threads Python does not know: gRPC's
    pollers, OpenMP), so two workers' event loops add up as one role. ``kernel``: only the
    time spent in the kernel.
    """
    out: dict[str, float] = {}
    for tid, now in after.items():
        then = before.get(tid)
        if kernel:
            spent = now.sys_s - (then.sys_s if then is not None else 0.0)
        else:
            spent = now.cpu_s - (then.cpu_s if then is not None else 0.0)
        if spent <= 0:
            continue
        name = names.get(tid) or f"[{now.comm}]"
        role = name.rstrip("0123456789").rstrip("_-") or name
        out[role] = out.get(role, 0.0) + spent
    return out


def memory(pid: int) -> dict[str, int]:
    """Resident and proportional set size (bytes) of the tree: RSS counts shared pages (numpy,
    torch) in every process, PSS divides them among the processes that share them."""
    rss = pss = 0
    for p in tree(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss += int(rest.split()[0]) * 1024
            elif key == "Pss":
                pss += int(rest.split()[0]) * 1024
    return {"rss": rss, "pss": pss}


__all__ = ["ThreadTime", "by_role", "cpu_between", "memory", "process_cpu", "py_spy",
           "thread_cpu", "thread_names", "tree", "tree_cpu"]
