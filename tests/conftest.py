"""Shared fixtures: registries on SQLite and on the local PostgreSQL, and tiny artifact folders.

PostgreSQL tests get a database of their own, created here and dropped afterwards. Where the
server is unreachable they are skipped with the reason, except under ``CI``, where a missing
server is a failure so that nothing is silently skipped.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from modelyard.config import Settings
from modelyard.registry import Registry

PG_ADMIN_URL = os.environ.get(
    "MODELYARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)

ArtifactDir = Callable[..., Path]


def pg_server_url(dbname: str) -> str:
    """The URL of database ``dbname`` on the test PostgreSQL server."""
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def _admin_connect() -> Any:
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)


def _pg_unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL at {PG_ADMIN_URL} is not usable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


@contextlib.contextmanager
def _pg_database() -> Iterator[str]:
    try:
        import psycopg
    except ImportError:
        _pg_unavailable("psycopg is not installed (pip install 'modelyard[postgres]')")
    name = f"modelyard_test_{uuid.uuid4().hex[:12]}"
    try:
        with _admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _pg_unavailable(str(exc).strip().splitlines()[0])
    try:
        yield pg_server_url(name)
    finally:
        with _admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped at the end of the test."""
    with _pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def _pg_shared_url() -> Iterator[str]:
    # Creating and migrating a database costs ~1.5 s; registry tests share one, emptied per test.
    with _pg_database() as url:
        from modelyard.registry import Database

        db = Database(url)
        db.migrate()
        db.dispose()
        yield url


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[Registry]:
    """An embedded (SQLite) registry with its artifacts in ``tmp_path``."""
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        yield reg


@pytest.fixture()
def pg_registry(tmp_path: Path, _pg_shared_url: str) -> Iterator[Registry]:
    """An empty registry on PostgreSQL (a database shared by the session), artifacts in tmp."""
    from modelyard.registry.tables import Base

    settings = Settings.from_env(home=tmp_path / "home", db_url=_pg_shared_url, actor="tester")
    with Registry.open(settings) as reg:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with reg.db.engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        yield reg


@pytest.fixture()
def artifact_dir(tmp_path: Path) -> ArtifactDir:
    """Build a tiny artifact folder: ``artifact_dir("weights-1")`` gives distinct content."""
    counter = iter(range(1_000_000))

    def make(content: str = "weights", name: str | None = None) -> Path:
        folder = tmp_path / "artifacts-src" / (name or f"a{next(counter)}")
        (folder / "sub").mkdir(parents=True)
        (folder / "model.bin").write_text(content)
        (folder / "sub" / "meta.json").write_text('{"k": 1}')
        return folder

    return make


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def any_registry(request: pytest.FixtureRequest) -> Registry:
    """The same test on the embedded SQLite registry and on PostgreSQL."""
    fixture = "registry" if request.param == "sqlite" else "pg_registry"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]
