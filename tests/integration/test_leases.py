"""Leases on SQLite and PostgreSQL: one holder at a time, expiry, and racing takers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.registry.leases import Leases

pytestmark = pytest.mark.integration


class Clock:
    """A settable clock, so leases expire without waiting."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_one_holder_at_a_time(any_registry: Registry):
    leases = Leases(any_registry)
    assert leases.holder("retrain:fraud") is None
    assert leases.acquire("retrain:fraud", "a", ttl_s=60)
    assert leases.holder("retrain:fraud") == "a"
    assert not leases.acquire("retrain:fraud", "b", ttl_s=60)
    assert leases.acquire("retrain:fraud", "a", ttl_s=60)  # a holder may take it again
    assert leases.acquire("retrain:churn", "b", ttl_s=60)  # another name is another lease
    leases.release("retrain:fraud", "b")  # not b's: left alone
    assert leases.holder("retrain:fraud") == "a"
    leases.release("retrain:fraud", "a")
    assert leases.holder("retrain:fraud") is None
    assert leases.acquire("retrain:fraud", "b", ttl_s=60)


def test_an_expired_lease_is_free_to_take(any_registry: Registry):
    clock = Clock()
    leases = Leases(any_registry, clock=clock)
    assert leases.acquire("job", "dead-scheduler", ttl_s=10)
    clock.advance(9)
    assert not leases.acquire("job", "b", ttl_s=10)
    assert leases.holder("job") == "dead-scheduler"
    clock.advance(2)
    assert leases.holder("job") is None
    assert leases.acquire("job", "b", ttl_s=10)
    assert not leases.renew("job", "dead-scheduler", ttl_s=10)  # it lost it
    assert leases.holder("job") == "b"


def test_renew_extends_only_the_holders_lease(any_registry: Registry):
    clock = Clock()
    leases = Leases(any_registry, clock=clock)
    assert not leases.renew("job", "a", ttl_s=10)  # nothing to renew
    leases.acquire("job", "a", ttl_s=10)
    clock.advance(8)
    assert leases.renew("job", "a", ttl_s=10)
    clock.advance(8)  # 16 s after taking it, 8 after renewing
    assert leases.holder("job") == "a" and not leases.acquire("job", "b", ttl_s=10)
    clock.advance(5)
    assert leases.renew("job", "a", ttl_s=10)  # expired, but no one else took it


def test_bad_arguments_say_what_to_do(any_registry: Registry):
    leases = Leases(any_registry)
    with pytest.raises(ConfigError, match="ttl_s must be above 0"):
        leases.acquire("job", "a", ttl_s=0)
    with pytest.raises(ConfigError, match="1 to 200 characters"):
        leases.acquire("", "a", ttl_s=5)
    with pytest.raises(ConfigError, match="1 to 200 characters"):
        leases.renew("job", "x" * 201, ttl_s=5)


def _race(registry: Registry, name: str, takers: int = 8) -> list[str]:
    leases = Leases(registry)
    start = threading.Barrier(takers)
    won: list[str] = []
    errors: list[BaseException] = []

    def take(holder: str) -> None:
        try:
            start.wait()
            if leases.acquire(name, holder, ttl_s=60):
                won.append(holder)
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(f"t{i}",)) for i in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return won


def test_threads_racing_for_a_new_lease_one_wins(any_registry: Registry):
    for round_ in range(5):
        won = _race(any_registry, f"race-{round_}")
        assert len(won) == 1
        assert Leases(any_registry).holder(f"race-{round_}") == won[0]


def test_threads_racing_for_an_expired_lease_one_wins(any_registry: Registry):
    past = Leases(any_registry, clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    for round_ in range(5):
        assert past.acquire(f"stale-{round_}", "dead", ttl_s=1)
        won = _race(any_registry, f"stale-{round_}")
        assert len(won) == 1
        assert Leases(any_registry).holder(f"stale-{round_}") == won[0]


TAKER = textwrap.dedent("""
    import sys, time
    from modelyard.config import Settings
    from modelyard.registry import Registry
    from modelyard.registry.leases import Leases

    url, home, holder, go = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    with Registry.open(Settings.from_env(home=home, db_url=url)) as registry:
        leases = Leases(registry)
        leases.holder("warm-up")  # connect before the start line
        time.sleep(max(0.0, go - time.time()))
        print("won" if leases.acquire("proc-race", holder, ttl_s=60) else "lost")
""")


def test_processes_racing_for_a_lease_one_wins(any_registry: Registry, tmp_path: Path):
    script = tmp_path / "taker.py"
    script.write_text(TAKER)
    go = time.time() + 4.0  # every process is connected and waiting by then
    url = any_registry.settings.db_url
    procs = [subprocess.Popen(
        [sys.executable, str(script), url, str(tmp_path / "home"), f"p{i}", str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["lost", "lost", "lost", "won"]
    winner = f"p{results.index('won')}"
    assert Leases(any_registry).holder("proc-race") == winner
