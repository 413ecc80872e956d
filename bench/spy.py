"""Where a server's CPU goes under load: ``py-spy record`` per thread, summed into µs a request.

``record`` samples a running process (``--nonblocking``: the server is never paused, so the
profile does not slow what it measures; ``--threads``: each stack starts with its thread; idle
threads are left out, so samples are CPU). ``summarize`` turns the collapsed stacks into a
table per thread role -- the event loop, the model pool, the log writer -- with the functions
that spend most, both their own time ("self": the innermost Python frame, which includes the C
code it calls) and everything below them ("total"), in µs per request.

Run standalone on a server you started: ``python bench/spy.py PID --seconds 10 --requests N``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from procstat import py_spy  # a sibling script

_THREAD = re.compile(r"^thread \((\d+)\): ?(.*)$")
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
RATE = 250


def record(pid: int, seconds: float, out: Path, rate: int = RATE, cpu: str | None = "1",
           subprocesses: bool = False) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` on ``pid`` (pinned to ``cpu``); wait on the returned process."""
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    cmd = [spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
           "--rate", str(rate), "--nonblocking", "--threads", "--format", "raw", "-o", str(out)]
    if subprocesses:
        cmd.append("--subprocesses")
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _role(name: str) -> str:
    """``modelyard-predict_3`` -> ``modelyard-predict``: pool threads add up as one role."""
    return name.rstrip("0123456789").rstrip("_-") or name


def _function(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    name, where = match.groups()
    return f"{name} ({Path(where).name})"


def load(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """Stacks by thread role: ``[(frames outermost first, samples)]``."""
    stacks: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        head = _THREAD.match(frames[0])
        role = _role(head.group(2)) if head and head.group(2) else "?"
        stacks[role].append(([_function(f) for f in frames[1:]], int(count)))
    return stacks


#: frames every stack of a thread passes through (entry points, the loop's and the pools'
#: own frames): left out of the "total" column, where they would only say "everything".
GENERIC = frozenset({
    "<module>", "_run_module_as_main", "_run_code", "Command.main", "Command.__call__",
    "Command.invoke", "Context.invoke", "pass_context.<locals>.new_func", "run", "serve",
    "Server.run", "asyncio_run", "Runner.run", "Thread._bootstrap", "Thread._bootstrap_inner",
    "Thread.run", "_worker", "_WorkItem.run", "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once", "Handle._run"})
#: what an innermost frame's own samples are when the frame is only the way in.
SELF_MEANS = {"Runner.run": "the event loop's C code (uvloop: sockets, epoll, callbacks)",
              "_worker": "the pool thread between work items (waiting for the core or GIL)"}


def summarize(path: Path, requests: float, rate: int = RATE, top: int = 10,
              measured_us: dict[str, float] | None = None) -> str:
    """Per thread role: its µs of CPU per request, then its top functions (self and total).

    py-spy counts a thread's sample whenever it is not idle, which on a busy core includes
    waiting for the core or the GIL; with ``measured_us`` (the role's CPU from ``/proc``) each
    role's samples are scaled to what it really spent, so py-spy gives the shares and ``/proc``
    the sizes.
    """
    lines = []
    stacks = load(path)
    roles = sorted(stacks, key=lambda r: -sum(n for _, n in stacks[r]))
    for role in roles:
        rows = stacks[role]
        total = sum(n for _, n in rows)
        spied_us = total * 1e6 / rate / max(requests, 1.0)
        real_us = (measured_us or {}).get(role, spied_us)
        per_sample = real_us / total
        own: Counter[str] = Counter()
        below: Counter[str] = Counter()
        for frames, n in rows:
            if frames:
                own[frames[-1]] += n
            for f in set(frames):
                below[f] += n
        lines.append(f"  {role}: {real_us:.1f} us/request (py-spy saw {spied_us:.1f})")
        lines.append(f"    {'self':>6}  {'total':>6}  function (us/request)")
        for f, n in own.most_common(top):
            name = SELF_MEANS.get(f.split(" (")[0], f)
            lines.append(f"    {n * per_sample:>6.1f}  {below[f] * per_sample:>6.1f}  {name}")
        shown = [(f, n) for f, n in below.most_common()
                 if f.split(" (")[0] not in GENERIC and f not in dict(own.most_common(top))]
        for f, n in shown[:top]:
            lines.append(f"    {own[f] * per_sample:>6.1f}  {n * per_sample:>6.1f}  {f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=float, required=True,
                        help="requests answered while recording (divides the samples)")
    parser.add_argument("--out", default="profile.txt")
    args = parser.parse_args()
    out = Path(args.out)
    record(args.pid, args.seconds, out, cpu=None).wait()
    print(summarize(out, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
