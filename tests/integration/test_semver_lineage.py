"""Semantic version labels and data lineage end to end: the registry on SQLite and PostgreSQL
(labels unique per model, given once, audited, usable in references; the reverse query "which
versions were trained on this file / table"), real training runs that record their files,
query or function, and the CLI (train --semver, label, lineage, show, versions) with its exit
codes, and the REST API's label references."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from modelyard.cli import main
from modelyard.config import Settings
from modelyard.errors import ConfigError, ConflictError, NotFoundError
from modelyard.pipeline import run_pipeline
from modelyard.registry import Registry
from modelyard.registry.provenance import sql_source
from modelyard.spec import Spec, load_project
from modelyard.testing import labeled_frame

pytestmark = pytest.mark.integration

TRAIN_PY = '''
def train(X, y, params):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=200).fit(X, y)


def load():
    import pandas as pd
    from modelyard.testing import labeled_frame

    frame = labeled_frame(120, seed=3)
    return frame.drop(columns=["label"]), frame["label"]
'''


def _yaml(sql_url: str) -> str:
    return textwrap.dedent(f'''
        models:
          files:
            train: train.py:train
            data: {{path: "data/*.csv", target: label}}
            validation: {{min_rows: 10}}
          fromsql:
            train: train.py:train
            data:
              sql: "SELECT x0, x1, x2, x3, label FROM public_rows AS r ORDER BY r.id"
              url: "{sql_url}"
              target: label
            validation: {{min_rows: 10}}
          fromfn:
            train: train.py:train
            data: {{function: "train.py:load"}}
            validation: {{min_rows: 10}}
    ''')


def _sqlite_rows(path: Path) -> str:
    frame = labeled_frame(120, seed=2)
    frame.insert(0, "id", range(len(frame)))
    with sqlite3.connect(path) as conn:
        frame.to_sql("public_rows", conn, index=False)
    return f"sqlite:///{path}"


@pytest.fixture()
def project(tmp_path: Path) -> dict[str, Spec]:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    (root / "modelyard.yaml").write_text(_yaml(_sqlite_rows(tmp_path / "source.db")))
    labeled_frame(80, seed=1).to_csv(root / "data" / "part-1.csv", index=False)
    labeled_frame(80, seed=4).to_csv(root / "data" / "part-2.csv", index=False)
    return load_project(root / "modelyard.yaml")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the registry, on SQLite and PostgreSQL -------------------------------------------------------
def test_labels_bump_are_unique_given_once_and_resolve(any_registry: Registry, artifact_dir):
    reg = any_registry
    first = reg.register("fraud", artifact_dir("a"), flavor="python", semver="minor")
    assert first.semver == "0.1.0"
    assert reg.register("fraud", artifact_dir("b"), flavor="python",
                        semver="1.4.0-rc.1").semver == "1.4.0-rc.1"
    assert reg.register("fraud", artifact_dir("c"), flavor="python",
                        semver="patch").semver == "1.4.0"  # the release the rc led to
    unlabelled = reg.register("fraud", artifact_dir("d"), flavor="python")
    assert unlabelled.semver is None
    assert reg.register("other", artifact_dir("e"), flavor="python",
                        semver="1.4.0").semver == "1.4.0"  # unique per model only

    assert reg.resolve("fraud@1.4.0").version == 3
    assert reg.resolve("fraud@0.1.0").version == 1
    with pytest.raises(NotFoundError, match=r"no version labelled 9\.0\.0; its labels: 1\.4\.0"):
        reg.resolve("fraud@9.0.0")

    with pytest.raises(ConflictError, match=r"fraud@1\.4\.0 is already version 3") as err:
        reg.register("fraud", artifact_dir("f"), flavor="python", semver="1.4.0")
    assert err.value.exit_code == 4
    assert reg.get_model("fraud").latest_version == 4  # the refused registration left nothing
    with pytest.raises(ConfigError, match=r"MAJOR\.MINOR\.PATCH"):
        reg.register("fraud", artifact_dir("g"), flavor="python", semver="1.4")

    labelled = reg.label("fraud", 4, "minor")
    assert labelled.semver == "1.5.0" and reg.get_version("fraud", 4).semver == "1.5.0"
    with pytest.raises(ConflictError, match=r"already labelled 1\.5\.0"):
        reg.label("fraud", 4, "2.0.0")
    reg.register("fraud", artifact_dir("h"), flavor="python")
    with pytest.raises(ConflictError, match="is already version 1"):
        reg.label("fraud", 5, "0.1.0")
    event = reg.audit_events("fraud:4", limit=1)[0]
    assert (event.action, event.details["semver"]) == ("version.label", "1.5.0")
    assert reg.audit_events("fraud:1", limit=1)[0].details["semver"] == "0.1.0"
    assert [v.semver for v in reg.list_versions("fraud")] == [None, "1.5.0", "1.4.0",
                                                             "1.4.0-rc.1", "0.1.0"]


def test_concurrent_bumps_get_distinct_labels(any_registry: Registry, artifact_dir):
    from concurrent.futures import ThreadPoolExecutor

    folders = [artifact_dir(f"w{i}") for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda f: any_registry.register("busy", f, flavor="python",
                                                             semver="patch"), folders))
    assert sorted(v.semver or "" for v in done) == ["0.0.1", "0.0.2", "0.0.3", "0.0.4"]


def test_reverse_query_by_path_digest_and_table(any_registry: Registry, artifact_dir, tmp_path):
    reg = any_registry
    file_a = {"kind": "file", "location": str(tmp_path / "a.csv"), "digest": "a" * 64}
    file_b = {"kind": "file", "location": str(tmp_path / "b_x.csv"), "digest": "b" * 64}
    query = sql_source('SELECT * FROM "Public"."Trans_Actions" t JOIN merchants m ON t.m = m.id',
                       "postgresql://etl:hunter2@db/warehouse")
    reg.register("fraud", artifact_dir("1"), flavor="python", data_sources=[file_a],
                 semver="1.0.0")
    reg.register("fraud", artifact_dir("2"), flavor="python", data_sources=[file_a, file_b])
    reg.register("churn", artifact_dir("3"), flavor="python", data_sources=[query])
    reg.register("plain", artifact_dir("4"), flavor="python")

    by_path = reg.trained_on(path=tmp_path / "a.csv")
    assert [(t.ref, t.kind) for t in by_path] == [("fraud:2", "file"), ("fraud:1", "file")]
    assert by_path[1].semver == "1.0.0" and by_path[0].digest == "a" * 64
    assert [t.ref for t in reg.trained_on(digest="B" * 64)] == ["fraud:2"]
    # a table: as written (case and quotes aside), or without its schema
    for name in ("public.trans_actions", "Trans_Actions", '"Public"."Trans_Actions"'):
        found = reg.trained_on(table=name)
        assert [(t.ref, t.kind, t.location) for t in found] == [
            ("churn:1", "table", "public.trans_actions")], name
    assert reg.trained_on(table="transXactions") == []  # '_' is no wildcard
    assert reg.trained_on(table="actions") == []  # a suffix of a name is not the name
    assert [t.ref for t in reg.trained_on(table="merchants")] == ["churn:1"]
    assert reg.trained_on(path=tmp_path / "a.csv", model="churn") == []
    version = reg.get_version("churn", 1)
    assert version.data_sources[0]["location"] == "postgresql://etl@db/warehouse"
    assert "hunter2" not in json.dumps(version.to_dict())
    with pytest.raises(ConfigError, match="data_sources"):
        reg.register("fraud", artifact_dir("5"), flavor="python",
                     data_sources=[{"kind": "file"}])


# -- training runs record their data ------------------------------------------------------------
def test_a_run_records_its_files_and_takes_a_label(project, registry: Registry):
    result = run_pipeline(project["files"], registry, semver="major")
    version = result.version
    assert version is not None and version.semver == "1.0.0"
    root = project["files"].root
    files = sorted(root.glob("data/*.csv"))
    assert version.data_sources == [
        {"kind": "file", "location": str(f.absolute()), "digest": _sha(f),
         "size": f.stat().st_size} for f in files]
    assert registry.resolve("files@1.0.0").version == 1

    # a new file arrives: the next version records three files, the old one keeps two
    labeled_frame(40, seed=9).to_csv(root / "data" / "part-3.csv", index=False)
    second = run_pipeline(project["files"], registry, semver="minor").version
    assert second is not None and second.semver == "1.1.0" and len(second.data_sources) == 3
    assert [t.ref for t in registry.trained_on(path=files[0])] == ["files:2", "files:1"]
    assert [t.ref for t in registry.trained_on(path=root / "data" / "part-3.csv")] == ["files:2"]

    with pytest.raises(ConflictError, match=r"files@1\.1\.0 is already version 2"):
        run_pipeline(project["files"], registry, semver="1.1.0", force=True)
    assert registry.list_runs("files", limit=5)[0].status == "succeeded"  # refused before a run


def test_a_run_records_its_query_and_its_function(project, registry: Registry, tmp_path):
    sql = run_pipeline(project["fromsql"], registry).version
    assert sql is not None
    (source,) = sql.data_sources
    assert source["kind"] == "sql" and source["location"] == f"sqlite:///{tmp_path / 'source.db'}"
    assert source["tables"] == ["public_rows"] and "ORDER BY r.id" in source["query"]
    assert [t.ref for t in registry.trained_on(table="public_rows")] == ["fromsql:1"]

    fn = run_pipeline(project["fromfn"], registry).version
    assert fn is not None
    assert fn.data_sources == [{"kind": "function", "location": "train.py:load",
                                "digest": None}]


def test_a_query_against_postgresql_is_recorded_and_found(pg_url: str, pg_registry: Registry,
                                                          tmp_path: Path):
    from sqlalchemy import create_engine

    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE SCHEMA sales")
            frame = labeled_frame(100, seed=5)
            frame.to_sql("orders", conn, schema="sales", index=False)
    finally:
        engine.dispose()
    root = tmp_path / "pgproject"
    root.mkdir()
    (root / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    (root / "modelyard.yaml").write_text(textwrap.dedent(f'''
        models:
          orders:
            train: train.py:train
            data: {{sql: "SELECT * FROM sales.orders", url: "{pg_url}", target: label}}
            validation: {{min_rows: 10}}
    '''))
    spec = load_project(root / "modelyard.yaml")["orders"]
    version = run_pipeline(spec, pg_registry, semver="0.1.0").version
    assert version is not None and version.semver == "0.1.0"
    assert version.data_sources[0]["tables"] == ["sales.orders"]
    found = pg_registry.trained_on(table="orders")
    assert [(t.ref, t.semver, t.location) for t in found] == [("orders:1", "0.1.0",
                                                               "sales.orders")]


def test_a_composed_model_takes_a_label_too(registry: Registry):
    from modelyard.testing import register_constant

    register_constant(registry, "one", 1)
    register_constant(registry, "zero", 0)
    spec = Spec.parse({"name": "vote", "graph": {"kind": "ensemble", "members": ["one", "zero"],
                                                 "rule": "vote"}})
    version = run_pipeline(spec, registry, semver="major").version
    assert version is not None and version.flavor == "graph" and version.semver == "1.0.0"
    assert registry.resolve("vote@1.0.0").version == 1 and version.data_sources == []


# -- the command line ---------------------------------------------------------------------------
def _cli(home: Path):
    def run(*args: str) -> Result:
        return CliRunner().invoke(main, ["--home", str(home), *args])
    return run


def _one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_train_label_lineage_show_versions(project, tmp_path, monkeypatch):
    root = project["files"].root
    monkeypatch.chdir(root)
    run = _cli(tmp_path / "home")
    result = run("train", "files", "--semver", "1.4.0")
    assert result.exit_code == 0, result.output
    assert "files:1 = files@1.4.0" in result.stdout

    line = _one_error(run("train", "files", "--semver", "1.4.0", "--force"), 4)
    assert "files@1.4.0 is already version 1" in line
    line = _one_error(run("train", "files", "--semver", "v1.4.0"), 2)
    assert "MAJOR.MINOR.PATCH" in line
    result = run("train", "files", "--force")
    assert result.exit_code == 0, result.output

    result = run("label", "files:2", "patch")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "labelled files:2 as files@1.4.1"
    assert "already labelled 1.4.1" in _one_error(run("label", "files:2", "2.0.0"), 4)
    assert "files:2 is already labelled" in _one_error(run("label", "files@1.4.1", "3.0.0"), 4)
    assert "no version 9" in _one_error(run("label", "files:9", "3.0.0"), 3)
    assert "looks like a semantic" in _one_error(
        run("promote", "files", "1", "--alias", "1.0.0"), 2)

    shown = run("show", "files@1.4.0")
    assert shown.exit_code == 0, shown.output
    assert "files:1  = files@1.4.0" in shown.stdout and "trained on" in shown.stdout
    assert "part-1.csv" in shown.stdout
    as_json = json.loads(run("show", "files@1.4.1", "--json").stdout)
    assert as_json["semver"] == "1.4.1" and len(as_json["data_sources"]) == 2
    listed = run("versions", "files")
    assert "1.4.1" in listed.stdout and "1.4.0" in listed.stdout

    # lineage: by path (relative), by a copy's content, by digest; a table nobody read
    found = json.loads(run("lineage", "data/part-1.csv", "--json").stdout)
    assert [(f["model"], f["version"], f["semver"]) for f in found] == [
        ("files", 2, "1.4.1"), ("files", 1, "1.4.0")]
    copy = tmp_path / "elsewhere.csv"
    copy.write_bytes((root / "data" / "part-2.csv").read_bytes())
    assert len(json.loads(run("lineage", str(copy), "--json").stdout)) == 2
    digest = _sha(root / "data" / "part-1.csv")
    assert len(json.loads(run("lineage", f"sha256:{digest}", "--json").stdout)) == 2
    table = run("lineage", "data/part-1.csv", "--model", "files")
    assert "files:2" in table.stdout and "1.4.1" in table.stdout
    nothing = run("lineage", "warehouse.nothing")
    assert nothing.exit_code == 0 and "no version records warehouse.nothing" in nothing.stdout


# -- the REST API -------------------------------------------------------------------------------
@pytest.fixture()
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Registry]]:
    from modelyard.serving import ServeOptions, create_app
    from modelyard.testing import register_constant

    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        register_constant(reg, "fraud", 1)
        register_constant(reg, "fraud", 2, promote=False)
        reg.label("fraud", 2, "1.4.0")
        app = create_app(reg, ServeOptions(poll_interval_s=3600, preload=False))
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://modelyard") as client:
                yield client, reg
        finally:
            await app.shutdown()


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_api_resolves_labels_and_shows_them(api):
    client, _ = api
    r = await client.get("/api/v1/models/fraud/versions/1.4.0")
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["semver"]) == (2, "1.4.0")
    r = await client.get("/api/v1/models/fraud/versions/1")
    assert r.json()["semver"] is None and r.json()["data_sources"] == []
    r = await client.get("/api/v1/models/fraud/versions/2.0.0")
    assert r.status_code == 404 and "labelled 2.0.0" in r.text
    r = await client.get("/api/v1/models/fraud/versions/1.4")
    assert r.status_code == 400
    r = await client.get("/api/v1/models/fraud/versions")
    assert [v.get("semver") for v in r.json()["versions"]] == ["1.4.0", None]


def test_training_through_a_server_labels_and_records_its_data(project, tmp_path):
    """``train --server`` with a trainer's key: the label and the data sources travel in the
    upload, and a label reference resolves through the server."""
    from modelyard.testing import ServerProcess

    home = tmp_path / "server-home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        key = reg.keys.create_key("ci", "trainer").secret
    root = project["files"].root
    unused = tmp_path / "client-home"

    def remote(*args: str) -> Result:
        return CliRunner().invoke(main, ["--home", str(unused), *args],
                                  env={"MODELYARD_URL": server.url, "MODELYARD_API_KEY": key})

    with ServerProcess(home) as server:
        done = remote("train", "files", "--project", str(root / "modelyard.yaml"),
                      "--no-promote", "--semver", "2.0.0-rc.1")
        assert done.exit_code == 0, done.output
        shown = remote("show", "files@2.0.0-rc.1", "--json")
        assert shown.exit_code == 0, shown.output
        version = json.loads(shown.stdout)
        assert version["version"] == 1 and version["created_by"] == "ci"
        assert [s["digest"] for s in version["data_sources"]] == [
            _sha(f) for f in sorted(root.glob("data/*.csv"))]
        line = _one_error(remote("label", "files:1", "2.0.0"), 2)  # needs the database
        assert "server" in line
    assert not unused.exists()
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        assert [t.ref for t in reg.trained_on(path=root / "data" / "part-1.csv")] == ["files:1"]
        event = reg.audit_events("files:1", limit=1)[0]
        assert (event.actor, event.details["semver"]) == ("ci", "2.0.0-rc.1")
