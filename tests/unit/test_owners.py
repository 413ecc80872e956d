"""Run owners: a live process is told from a dead one, a reused pid, a zombie or a silent host."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from modelyard.registry.owners import (
    STALE_AFTER_S,
    Owner,
    abandoned,
    is_running,
    start_token,
    this_host,
)

linux = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="start tokens need /proc")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def test_this_process_is_running_and_owns_its_token():
    me = Owner.current()
    assert (me.host, me.pid) == (this_host(), os.getpid())
    assert is_running(me.pid, me.start)
    assert is_running(me.pid, None)


def test_an_ended_process_is_not_running():
    pid = _dead_pid()
    assert not is_running(pid, None)
    assert not is_running(-1, None) and not is_running(0, None)


@linux
def test_a_reused_pid_is_not_the_owner():
    token = start_token(os.getpid())
    assert token is not None and token == start_token(os.getpid())
    boot, _, ticks = token.rpartition(":")
    # the same pid, started at another moment (or in another boot): another process
    assert not is_running(os.getpid(), f"{boot}:{int(ticks) + 1}")
    assert not is_running(os.getpid(), f"another-boot:{ticks}")


@linux
def test_a_zombie_is_not_running():
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 30
        while is_running(child.pid, None) and time.monotonic() < deadline:
            time.sleep(0.01)  # it exits at once, but stays a zombie until reaped
        assert not is_running(child.pid, None)
        with open(f"/proc/{child.pid}/stat") as fh:
            assert fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        child.wait()


def test_abandoned_judges_this_host_by_the_process():
    common = {"host": "here", "pid": 42, "start": "b:1", "heartbeat_at": T0 - timedelta(days=1),
              "started_at": T0 - timedelta(days=1), "here": "here", "now": T0}
    assert abandoned(**common, alive=lambda pid, start: True) is None  # old heartbeat, alive
    assert abandoned(**common, alive=lambda pid, start: False) == (
        "abandoned: process 42 on here is gone")
    seen = []
    abandoned(**common, alive=lambda pid, start: seen.append((pid, start)) or True)
    assert seen == [(42, "b:1")]


def test_abandoned_judges_other_hosts_by_the_heartbeat():
    def judge(beat_age_s: float | None) -> str | None:
        beat = None if beat_age_s is None else T0 - timedelta(seconds=beat_age_s)
        return abandoned(host="there", pid=7, start=None, heartbeat_at=beat,
                         started_at=T0 - timedelta(hours=2), here="here", now=T0,
                         alive=lambda pid, start: pytest.fail("no process is asked on a peer"))

    assert judge(10) is None
    assert judge(STALE_AFTER_S) is None
    assert judge(STALE_AFTER_S + 1) == (
        f"abandoned: process 7 on there is gone (no heartbeat for {STALE_AFTER_S + 1:.0f}s)")
    assert judge(None) is not None  # never beat: judged from its start, two hours ago


def test_runs_without_an_owner_are_never_judged():
    for host, pid in ((None, 1), ("here", None)):
        assert abandoned(host=host, pid=pid, start=None, heartbeat_at=None,
                         started_at=T0 - timedelta(days=9), here="here", now=T0,
                         alive=lambda pid, start: False) is None
