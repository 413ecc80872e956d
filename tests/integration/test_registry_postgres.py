"""The registry on a real PostgreSQL server: migrations, URLs, errors.

The core registry behaviours (numbering, aliases, alias_at, rollback, runs, audit, atomic writes)
run on both backends from ``tests/unit/test_registry.py`` through the ``any_registry`` fixture;
this module covers what is particular to the database: schema migrations and connections.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from modelyard.config import Settings
from modelyard.errors import StorageError
from modelyard.registry import Database, Registry
from modelyard.registry import database as database_module
from modelyard.registry.database import head_revision
from modelyard.registry.tables import Base

pytestmark = pytest.mark.integration


def _alembic_versions(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]


def test_open_migrates_once_to_head(pg_url, tmp_path, monkeypatch, artifact_dir):
    settings = Settings.from_env(home=tmp_path, db_url=pg_url, actor="tester")
    with Registry.open(settings) as reg:
        assert _alembic_versions(reg.db) == [head_revision()]
        reg.register("iris", artifact_dir(), flavor="sklearn")

    def no_second_upgrade(conn):
        raise AssertionError("a registry at head must not run migrations again")

    monkeypatch.setattr(database_module, "_upgrade", no_second_upgrade)
    with Registry.open(settings) as reg:
        assert _alembic_versions(reg.db) == [head_revision()]
        assert reg.resolve("iris:1").version == 1  # data kept


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migrated_schema_matches_the_table_definitions(backend, tmp_path, request):
    url = (request.getfixturevalue("pg_url") if backend == "postgres"
           else f"sqlite:///{tmp_path / 'r.db'}")
    db = Database(url)
    db.migrate()
    try:
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        db.dispose()
    assert diff == [], "tables.py changed without a migration (alembic revision --autogenerate)"


def test_postgres_scheme_alias_and_timestamps(pg_url, tmp_path, artifact_dir):
    url = pg_url.replace("postgresql://", "postgres://", 1)
    with Registry.open(Settings.from_env(home=tmp_path, db_url=url, actor="tester")) as reg:
        assert reg.db.dialect == "postgresql"
        before = datetime.now(UTC)
        version = reg.register("iris", artifact_dir(), flavor="sklearn")
        stored = reg.get_version("iris", 1).created_at
        assert stored == version.created_at  # microseconds survive the round trip
        assert stored.tzinfo is not None and before <= stored <= datetime.now(UTC)


def test_missing_database_on_a_live_server_is_a_storage_error(pg_url, tmp_path):
    url = pg_url.rpartition("/")[0] + "/modelyard_no_such_database"
    with pytest.raises(StorageError) as err:
        Registry.open(Settings.from_env(home=tmp_path, db_url=url))
    assert "\n" not in str(err.value) and "modelyard_no_such_database" in str(err.value)


def test_registry_survives_a_server_side_disconnect(pg_url, tmp_path, artifact_dir):
    import psycopg  # present: pg_url skipped otherwise

    with Registry.open(Settings.from_env(home=Path(tmp_path), db_url=pg_url)) as reg:
        reg.register("iris", artifact_dir(), flavor="sklearn")
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        # pooled connections were killed; the next call reconnects instead of failing
        assert reg.resolve("iris:1").version == 1
