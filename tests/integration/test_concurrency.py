"""Several OS processes writing one registry at the same moment, on SQLite and on PostgreSQL.

Each worker is a real process that imports modelyard, opens the registry, prints ``ready`` and
waits for ``go`` on stdin; the test releases them all at once, so their writes really collide.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import Settings
from modelyard.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WORKER = r"""
import json, sys
from pathlib import Path

args = json.loads(sys.argv[1])
from modelyard.config import Settings
from modelyard.registry import Registry

settings = Settings.from_env(home=args["home"], db_url=args["db_url"],
                             artifacts=args["artifacts"], actor=args["actor"])
folders = []
for i in range(args["count"]):
    folder = Path(args["scratch"]) / f"{args['actor']}-{i}"
    folder.mkdir(parents=True)
    # the same bytes in every worker: concurrent puts of one blob must be safe too
    (folder / "model.bin").write_text(f"weights {i}")
    folders.append(folder)

reg = None if args["open_after_go"] else Registry.open(settings)
print("ready", flush=True)
sys.stdin.readline()
if reg is None:
    reg = Registry.open(settings)
got = []
for i, folder in enumerate(folders):
    for name in args["models"]:
        got.append([name, reg.register(name, folder, flavor="test").version])
reg.close()
print(json.dumps(got), flush=True)
"""


def _run_together(n: int, **args: Any) -> list[list[tuple[str, int]]]:
    """Start ``n`` workers, release them at once, and return each one's (model, version) list."""
    procs = []
    for k in range(n):
        payload = json.dumps({**args, "actor": f"worker{k}"})
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, payload], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    try:
        for p in procs:
            line = p.stdout.readline()  # type: ignore[union-attr]
            assert line.strip() == "ready", p.communicate(timeout=60)[1]
        for p in procs:
            p.stdin.write("go\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, f"worker failed:\n{err}"
            results.append([tuple(pair) for pair in json.loads(out.strip().splitlines()[-1])])
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _settings(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    db_url = (request.getfixturevalue("pg_url") if backend == "postgres"
              else f"sqlite:///{tmp_path / 'home' / 'registry.db'}")
    return {"home": str(tmp_path / "home"), "db_url": db_url,
            "artifacts": str(tmp_path / "artifacts"), "scratch": str(tmp_path / "scratch")}


def _open(where: dict[str, Any]) -> Registry:
    return Registry.open(Settings.from_env(home=where["home"], db_url=where["db_url"],
                                           artifacts=where["artifacts"], actor="checker"))


def _assert_consistent(reg: Registry, name: str, results: list[list[tuple[str, int]]]) -> None:
    per_worker = [[v for m, v in got if m == name] for got in results]
    total = sum(len(v) for v in per_worker)
    every = sorted(v for versions in per_worker for v in versions)
    assert every == list(range(1, total + 1)), "versions must be distinct and without gaps"
    for versions in per_worker:
        assert versions == sorted(versions)  # each worker saw its numbers grow
    assert reg.get_model(name).latest_version == total
    assert [v.version for v in reg.list_versions(name)] == list(range(total, 0, -1))
    events = reg.audit_events(name, limit=10_000)
    registers = sorted(e.target for e in events if e.action == "version.register")
    assert registers == sorted(f"{name}:{v}" for v in range(1, total + 1))
    assert [e.action for e in events].count("model.create") == 1
    for version in reg.list_versions(name):
        assert reg.artifact_path(version).joinpath("model.bin").read_text().startswith("weights")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_registrations_get_distinct_version_numbers(tmp_path, backend, request):
    where = _settings(tmp_path, backend, request)
    with _open(where):
        pass  # the schema exists; the model does not, so the first registrations race too
    results = _run_together(3, **where, count=20, models=["churn"], open_after_go=False)
    with _open(where) as reg:
        _assert_consistent(reg, "churn", results)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_first_registrations_of_new_models(tmp_path, backend, request):
    where = _settings(tmp_path, backend, request)
    models = [f"model-{i}" for i in range(8)]
    with _open(where):
        pass
    # every worker registers each brand-new model in the same order: eight creation races
    results = _run_together(3, **where, count=1, models=models, open_after_go=False)
    with _open(where) as reg:
        assert [m.name for m in reg.list_models()] == models
        for name in models:
            _assert_consistent(reg, name, results)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_processes_opening_a_fresh_registry_at_once_all_succeed(tmp_path, backend, request):
    where = _settings(tmp_path, backend, request)
    # nothing exists yet: every worker migrates (or waits for the one that does), then writes
    results = _run_together(3, **where, count=3, models=["fresh"], open_after_go=True)
    with _open(where) as reg:
        _assert_consistent(reg, "fresh", results)
        with reg.db.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert len(rows) == 1
