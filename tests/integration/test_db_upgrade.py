"""``modelyard db upgrade``: creates the schema in an empty database, upgrades an old one, says
the revision, and is a one-line exit 10 when the database cannot be reached."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner, Result
from sqlalchemy import inspect

from modelyard.cli import main
from modelyard.registry import Database
from modelyard.registry import database as database_module

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'r.db'}"


def _upgrade(url: str) -> Result:
    return CliRunner().invoke(main, ["--db", url, "db", "upgrade"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_creates_the_schema_then_has_nothing_to_do(backend, tmp_path, request):
    url = _url(backend, tmp_path, request)
    head = database_module.head_revision()
    first = _upgrade(url)
    assert first.exit_code == 0, first.output
    assert f"upgraded from revision none (empty) to {head}" in first.stdout
    db = Database(url)
    try:
        assert db.revision() == head
        assert "versions" in inspect(db.engine).get_table_names()
    finally:
        db.dispose()
    again = _upgrade(url)
    assert again.exit_code == 0, again.output
    assert f"is at revision {head} (the newest): nothing to do" in again.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrades_a_database_an_older_release_wrote(backend, tmp_path, request):
    url = _url(backend, tmp_path, request)
    db = Database(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(database_module._MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    db.dispose()
    result = _upgrade(url)
    assert result.exit_code == 0, result.output
    assert f"upgraded from revision 0003 to {database_module.head_revision()}" in result.stdout
    from modelyard.registry import Registry

    with Registry.open(db_url=url, home=tmp_path / "home") as registry:
        (event,) = [e for e in registry.audit_events("registry") if e.action == "db.upgrade"]
    assert event.details == {"from": "0003", "to": database_module.head_revision()}


def test_an_unreachable_database_is_one_line_exit_10():
    result = _upgrade("postgresql://nobody@127.0.0.1:1/x")
    assert result.exit_code == 10
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "MODELYARD_DB" in lines[0]
