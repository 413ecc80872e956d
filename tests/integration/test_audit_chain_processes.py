"""Two processes append to one registry's audit chain at once: the chain never forks (every
event follows the one before it), on SQLite and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.registry.audit_chain import chain_rows, verify_session

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]
EVENTS = 60


def _writer(url: str, home: str, who: str, start: Any) -> None:
    settings = Settings.from_env(home=Path(home), db_url=url, actor=who)
    with Registry.open(settings) as reg:
        start.wait(30)
        for i in range(EVENTS):
            reg.record("test.concurrent", f"{who}-{i}", {"i": i})


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_writers_at_once_keep_one_chain(backend, tmp_path, request):
    url = (str(request.getfixturevalue("pg_url")) if backend == "postgres"
           else f"sqlite:///{tmp_path / 'r.db'}")
    settings = Settings.from_env(home=tmp_path / "home", db_url=url, actor="setup")
    with Registry.open(settings):  # migrated once, before the race
        pass
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    writers = [ctx.Process(target=_writer, args=(url, str(tmp_path / "home"), who, start))
               for who in ("alice", "bob")]
    for p in writers:
        p.start()
    start.set()
    for p in writers:
        p.join(120)
        assert p.exitcode == 0
    with Registry.open(settings) as reg, reg.db.session() as s:
        report = verify_session(s)
        rows = list(chain_rows(s))
    assert report.intact, report.reason
    assert report.events == 2 * EVENTS
    assert len({r[6] for r in rows}) == len(rows)  # no two events share a predecessor
    actors = [r[2] for r in rows]
    assert actors.count("alice") == actors.count("bob") == EVENTS
