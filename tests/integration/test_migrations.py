"""Migrations: the schema matches tables.py, and registries written by older versions (0001:
before deployments, 0002: before monitoring, 0003: before run owners, 0004: a prediction log of
one row per request, 0005: before batch runs, 0006: before the audit chain, 0009: before
semver labels and data lineage) upgrade with their data kept, and downgrade, on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime, column, insert, inspect

from modelyard.config import Settings
from modelyard.registry import Database, Registry
from modelyard.registry import database as database_module
from modelyard.registry.audit_chain import verify_session
from modelyard.registry.tables import AliasRow, AuditRow, Base, ModelRow, RunRow, VersionRow
from modelyard.rollout.deployments import Deployments
from modelyard.store import open_store

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'r.db'}"


def _alembic(db: Database, revision: str, *, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(database_module._MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def _revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


MONITORING_TABLES = {"predictions", "labels", "drift_reports", "monitor_events", "leases",
                     "deployment_windows"}


def test_head_is_0010():
    assert database_module.head_revision() == "0010"


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrated_schema_matches_the_tables(backend, tmp_path, request):
    db = Database(_url(backend, tmp_path, request))
    db.migrate()
    try:
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        db.dispose()
    assert diff == [], "tables.py and the migrations disagree"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_0001_registry_upgrades_with_its_data(backend, tmp_path, request, artifact_dir):
    url = _url(backend, tmp_path, request)
    db = Database(url)
    _alembic(db, "0001")
    assert _revision(db) == "0001"
    assert "deployments" not in inspect(db.engine).get_table_names()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with db.engine.begin() as conn:  # a registry written before deployments existed
        conn.execute(insert(ModelRow.__table__), {
            "id": 1, "name": "iris", "description": "", "latest_version": 2, "created_at": at,
            "created_by": "old"})
        for number in (1, 2):
            conn.execute(insert(VersionRow.__table__), {
                "model_id": 1, "version": number, "flavor": "sklearn",
                "artifact_digest": "0" * 64, "artifact_size": 1, "meta": {}, "signature": {},
                "metrics": {}, "params": {}, "code_ref": {}, "environment": {},
                "description": "", "created_at": at, "created_by": "old"})
        conn.execute(insert(AliasRow.__table__), {
            "model_id": 1, "alias": "production", "version": 1, "updated_at": at})

    db.migrate()  # what Registry.open does
    assert _revision(db) == database_module.head_revision()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    settings = Settings.from_env(home=tmp_path / "home", db_url=url, actor="tester")
    reg = Registry(db, open_store(settings.artifacts), settings)
    assert reg.resolve("iris").version == 1
    d = Deployments(reg).start("iris", 2, "canary")
    assert (d.stable_version, d.candidate_version, d.state) == (1, 2, "progressing")

    _alembic(db, "0001", down=True)  # and back: the deployments go, the registry stays
    assert "deployments" not in inspect(db.engine).get_table_names()
    with db.engine.connect() as conn:  # read as 0001 wrote it: today's rows have more columns
        assert conn.exec_driver_sql("SELECT count(*) FROM versions").scalar() == 2
        assert conn.exec_driver_sql(
            "SELECT version FROM aliases WHERE alias = 'production'").scalar() == 1
    db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_0002_registry_gains_the_monitoring_tables_and_keeps_its_rollouts(
        backend, tmp_path, request, artifact_dir):
    url = _url(backend, tmp_path, request)
    db = Database(url)
    db.migrate()  # written by today's code (its audit events need the chain's columns) ...
    settings = Settings.from_env(home=tmp_path / "home", db_url=url, actor="tester")
    reg = Registry(db, open_store(settings.artifacts), settings)
    for _ in range(2):
        reg.register("iris", artifact_dir(), flavor="sklearn")
    reg.set_alias("iris", "production", 1)
    started = Deployments(reg).start("iris", 2, "canary")
    _alembic(db, "0002", down=True)  # ... then taken back to 0002 with its data
    assert not MONITORING_TABLES & set(inspect(db.engine).get_table_names())

    db.migrate()
    assert _revision(db) == database_module.head_revision()
    assert set(inspect(db.engine).get_table_names()) >= MONITORING_TABLES
    assert Deployments(reg).get("iris").id == started.id

    _alembic(db, "0002", down=True)
    assert not MONITORING_TABLES & set(inspect(db.engine).get_table_names())
    assert Deployments(reg).get("iris").id == started.id
    db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_0003_registry_keeps_its_runs_and_gains_run_owners(backend, tmp_path, request):
    url = _url(backend, tmp_path, request)
    db = Database(url)
    _alembic(db, "0003")
    assert "pid" not in {c["name"] for c in inspect(db.engine).get_columns("runs")}
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with db.engine.begin() as conn:  # a run recorded before runs had owners, still "running"
        conn.execute(insert(RunRow.__table__).values(
            id="old-run", model_name="iris", status="running", trigger="manual", started_at=at,
            promoted=False, metrics={}, gate={}, logs="", created_by="old"))

    db.migrate()
    assert _revision(db) == database_module.head_revision()
    settings = Settings.from_env(home=tmp_path / "home", db_url=url, actor="tester")
    reg = Registry(db, open_store(settings.artifacts), settings)
    old = reg.get_run("old-run")
    # no owner: nothing can tell whether it lives, so it is left as it was
    assert (old.status, old.host, old.pid, old.heartbeat_at) == ("running", None, None, None)
    new = reg.start_run("iris")
    assert new.pid is not None and new.host is not None

    _alembic(db, "0003", down=True)
    assert "pid" not in {c["name"] for c in inspect(db.engine).get_columns("runs")}
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM runs").scalar() == 2
    db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_0004_prediction_log_becomes_chunks_and_reads_back_the_same(
        backend, tmp_path, request):
    from sqlalchemy import table

    from modelyard.monitoring.logstore import DatabaseStore

    url = _url(backend, tmp_path, request)
    db = Database(url)
    _alembic(db, "0004")
    t0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    old = [{"request_id": f"r{i}", "model": "fraud" if i < 300 else "other",
            "version": 1 + (i // 100) % 2, "variant": "canary" if i % 7 == 0 else "production",
            "at": (t0 + timedelta(seconds=i)).replace(tzinfo=None), "latency_ms": 1.25 + i,
            "rows": 1, "inputs": {"columns": {"amount": [float(i)], "card": ["x"]}},
            "outputs": {"predictions": [i % 2], "scores": [[0.5, 0.5]], "classes": [0, 1]}}
           for i in range(310)]
    with db.engine.begin() as conn:  # the log as 0004's writer left it: a row per request
        columns = ("request_id", "model", "version", "variant", "at", "latency_ms", "rows",
                   "inputs", "outputs")
        # "at" typed, as 0004's writer bound it: SQLAlchemy's own format, whatever sqlite3
        # adapters another library registered in this process (Feast's SQLite store does)
        typed = [column(c, DateTime()) if c == "at" else column(c) for c in columns]
        conn.execute(insert(table("predictions", *typed)),
                     [{**row, "inputs": json.dumps(row["inputs"]),
                       "outputs": json.dumps(row["outputs"])} for row in old])
    db.migrate()
    assert _revision(db) == database_module.head_revision()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    settings = Settings.from_env(home=tmp_path / "home", db_url=url, actor="tester")
    store = DatabaseStore(Registry(db, open_store(settings.artifacts), settings))
    got = store.read("fraud")
    assert [p.request_id for p in got] == [f"r{i}" for i in range(300)]
    for p, row in zip(got, old, strict=False):
        assert (p.version, p.variant, p.at, p.latency_ms, p.rows, p.inputs, p.outputs) == (
            row["version"], row["variant"], row["at"].replace(tzinfo=UTC), row["latency_ms"],
            1, row["inputs"], row["outputs"])
    assert [p.request_id for p in store.find("other", ["r305", "r1"])] == ["r305"]
    assert store.delete_before("fraud", t0 + timedelta(seconds=150)) == 150
    assert len(store.read("fraud")) == 150

    _alembic(db, "0004", down=True)  # back to a row per request (the log does not survive)
    assert "predictions" in inspect(db.engine).get_table_names()
    db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_0005_registry_keeps_its_runs_as_training_runs_and_gains_batch_runs(
        backend, tmp_path, request):
    url = _url(backend, tmp_path, request)
    db = Database(url)
    _alembic(db, "0005")
    assert "kind" not in {c["name"] for c in inspect(db.engine).get_columns("runs")}
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with db.engine.begin() as conn:  # a training run recorded before batch runs existed
        conn.execute(insert(RunRow.__table__).values(
            id="old-run", model_name="iris", status="succeeded", trigger="manual",
            started_at=at, promoted=False, metrics={}, gate={}, logs="", created_by="old"))

    db.migrate()
    assert _revision(db) == database_module.head_revision()
    settings = Settings.from_env(home=tmp_path / "home", db_url=url, actor="tester")
    reg = Registry(db, open_store(settings.artifacts), settings)
    old = reg.get_run("old-run")
    assert (old.kind, old.details) == ("train", None)
    batch = reg.start_run("iris", kind="batch", details={"input": "in/*.parquet"})
    done = reg.finish_run(batch.id, status="succeeded", version=1,
                          details={"input": "in/*.parquet", "rows": 10, "errors": 0})
    assert (done.kind, done.details["rows"]) == ("batch", 10)

    _alembic(db, "0005", down=True)
    assert "kind" not in {c["name"] for c in inspect(db.engine).get_columns("runs")}
    with db.engine.connect() as conn:  # the runs stay, training and batch alike
        kept = {row[0] for row in conn.exec_driver_sql("SELECT id FROM runs")}
    assert kept == {"old-run", batch.id}
    db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_0006_registry_chains_its_existing_audit_events(backend, tmp_path, request):
    url = _url(backend, tmp_path, request)
    db = Database(url)
    _alembic(db, "0006")
    at = datetime(2026, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    with db.engine.begin() as conn:  # audit events written before the chain existed
        for i in range(2500):  # more than one page of the backfill
            conn.execute(insert(AuditRow.__table__), {
                "at": at + timedelta(seconds=i), "actor": "old", "action": "version.register",
                "target": f"iris:{i}", "details": {"i": i, "x": [1.5, None, "é"]}})

    db.migrate()
    settings = Settings.from_env(home=tmp_path / "home", db_url=url, actor="tester")
    reg = Registry(db, open_store(settings.artifacts), settings)
    reg.record("after.upgrade", "iris", {})
    with db.session() as s:
        report = verify_session(s)
    assert report.intact, report.reason
    assert report.events == 2501

    _alembic(db, "0006", down=True)
    assert "hash" not in {c["name"] for c in inspect(db.engine).get_columns("audit_events")}
    db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_0009_registry_gains_labels_and_data_sources(backend, tmp_path, request, artifact_dir):
    url = _url(backend, tmp_path, request)
    db = Database(url)
    _alembic(db, "0009")
    settings = Settings.from_env(home=tmp_path / "home", db_url=url, actor="tester")
    with db.engine.begin() as conn:  # a version written before labels existed
        conn.execute(insert(ModelRow.__table__), {
            "name": "old", "description": "", "latest_version": 1,
            "created_at": datetime(2026, 1, 1, tzinfo=UTC), "created_by": "old"})
        conn.execute(insert(VersionRow.__table__).values(
            model_id=1, version=1, flavor="python", artifact_digest="0" * 64, artifact_size=1,
            meta={}, signature={}, metrics={}, params={}, code_ref={}, environment={},
            description="", created_at=datetime(2026, 1, 1, tzinfo=UTC), created_by="old"))

    db.migrate()
    reg = Registry(db, open_store(settings.artifacts), settings)
    old = reg.get_version("old", 1)
    assert (old.semver, old.data_sources) == (None, [])
    assert reg.label("old", 1, "1.0.0").semver == "1.0.0"
    reg.register("old", artifact_dir("n"), flavor="python", semver="minor",
                 data_sources=[{"kind": "file", "location": "/d/a.csv", "digest": "c" * 64}])
    assert reg.resolve("old@1.1.0").version == 2
    assert [t.ref for t in reg.trained_on(digest="c" * 64)] == ["old:2"]

    _alembic(db, "0009", down=True)
    assert "semver" not in {c["name"] for c in inspect(db.engine).get_columns("versions")}
    assert "data_sources" not in inspect(db.engine).get_table_names()
    with db.engine.connect() as conn:  # the versions stay
        assert conn.exec_driver_sql("SELECT count(*) FROM versions").scalar() == 2
    db.dispose()
