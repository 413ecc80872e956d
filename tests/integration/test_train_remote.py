"""Training through a real server process with a trainer's key: the machine that trains never
opens the registry database or store, every version and run names the key's principal, only a
key that may deploy promotes, and an upload is checked whole before anything is stored."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner, Result
from sklearn.linear_model import LogisticRegression

from modelyard.adapters.sklearn import SklearnAdapter
from modelyard.cli import main
from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.registry.audit_chain import verify_session
from modelyard.store import digest_dir
from modelyard.testing import ServerProcess

pytestmark = pytest.mark.integration

TRAIN = textwrap.dedent('''
    import numpy as np
    from sklearn.linear_model import LogisticRegression


    def load():
        rng = np.random.default_rng(0)
        X = rng.normal(size=(200, 3))
        y = (X[:, 0] + X[:, 1] > 0).astype(int)
        return X, y


    def train(X, y, params):
        return LogisticRegression().fit(X, y)
''')
PROJECT = textwrap.dedent('''
    models:
      tiny:
        train: train.py:train
        data: {function: train.py:load}
        metrics: [accuracy]
        gate: {min: {accuracy: 0.7}, champion: {metric: accuracy, max_drop: 0.05}}
''')
ROLES = {"ci": "trainer", "bob": "trainer", "release": "trainer,deployer",
         "app": "predictor", "watcher": "viewer"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("remote-train") / "home"


@pytest.fixture(scope="module")
def keys(home: Path) -> dict[str, str]:
    with Registry.open(Settings.from_env(home=home, actor="tester")) as registry:
        return {name: registry.keys.create_key(name, role).secret
                for name, role in ROLES.items()}


@pytest.fixture(scope="module")
def server(home: Path, keys: dict[str, str]) -> Iterator[ServerProcess]:
    server = ServerProcess(home, args=("--max-upload", "2MiB"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("project")
    (folder / "train.py").write_text(TRAIN)
    (folder / "modelyard.yaml").write_text(PROJECT)
    return folder / "modelyard.yaml"


@pytest.fixture()
def registry(home: Path, server: ServerProcess) -> Iterator[Registry]:
    with Registry.open(Settings.from_env(home=home, actor="tester")) as registry:
        yield registry


def cli(server: ServerProcess, key: str, tmp_path: Path, *args: str) -> Result:
    """The CLI through ``server`` with ``key``; its --home must never be created."""
    unused = tmp_path / "client-home"
    result = CliRunner().invoke(main, ["--home", str(unused), *args],
                                env={"MODELYARD_URL": server.url, "MODELYARD_API_KEY": key})
    assert not unused.exists(), "the CLI opened a local registry"
    return result


def one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_trainer_registers_candidates_and_may_not_promote(
        server: ServerProcess, keys: dict[str, str], registry: Registry, project: Path,
        tmp_path: Path) -> None:
    runs_before = len(registry.list_runs("tiny"))
    refused = cli(server, keys["ci"], tmp_path, "train", "tiny", "--project", str(project))
    line = one_error(refused, 2)
    assert "may train tiny but not promote it" in line and "--no-promote" in line
    assert len(registry.list_runs("tiny")) == runs_before  # refused before any training

    done = cli(server, keys["ci"], tmp_path, "train", "tiny", "--project", str(project),
               "--no-promote", "--force", "--json")
    assert done.exit_code == 0, done.output
    [outcome] = json.loads(done.stdout)
    assert outcome["status"] == "registered"
    version = registry.get_version("tiny", outcome["version"])
    assert version.created_by == "ci" and "production" not in version.aliases
    run = registry.get_run(outcome["run_id"])
    assert (run.status, run.created_by, run.version) == ("succeeded", "ci", version.version)
    assert run.host is not None and run.host.startswith("remote:")
    assert f"registered {version.ref}" in run.logs
    registered = [e for e in registry.audit_events(version.ref)
                  if e.action == "version.register"]
    assert [e.actor for e in registered] == ["ci"]


def test_a_trainer_deployer_promotes_after_gating_against_the_downloaded_champion(
        server: ServerProcess, keys: dict[str, str], registry: Registry, project: Path,
        tmp_path: Path) -> None:
    first = cli(server, keys["release"], tmp_path, "train", "tiny", "--project", str(project),
                "--force", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)[0]["status"] == "promoted"
    champion = registry.resolve("tiny@production")
    assert champion.created_by == "release"

    second = cli(server, keys["release"], tmp_path, "train", "tiny", "--project",
                 str(project), "--force", "--json")
    assert second.exit_code == 0, second.output
    [outcome] = json.loads(second.stdout)
    # the champion's artifact came down from the server and was scored on the same holdout
    assert outcome["champion_metrics"]["accuracy"] == champion.metrics["accuracy"]
    assert outcome["status"] == "promoted"
    moved = registry.alias_history("tiny", "production")[0]
    assert (moved.version, moved.actor) == (outcome["version"], "release")


@pytest.mark.parametrize("who", ["app", "watcher"])
def test_keys_without_the_trainer_role_cannot_train(
        server: ServerProcess, keys: dict[str, str], registry: Registry, project: Path,
        tmp_path: Path, who: str) -> None:
    runs_before = len(registry.list_runs("tiny"))
    line = one_error(cli(server, keys[who], tmp_path, "train", "tiny", "--project",
                         str(project), "--no-promote", "--force"), 2)
    assert "'train' needs one of the roles admin, trainer" in line
    assert len(registry.list_runs("tiny")) == runs_before
    version = registry.list_versions("tiny")[-1].version
    download = httpx.get(f"{server.url}/api/v1/models/tiny/versions/{version}/artifact",
                         headers=_bearer(keys[who]))
    assert download.status_code == 403


# -- uploads by hand ------------------------------------------------------------------------------
def _artifact(folder: Path) -> tuple[Path, dict[str, Any]]:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3))
    y = (X[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    adapter = SklearnAdapter()
    folder.mkdir()
    meta = adapter.save(model, folder)
    record = {"digest": digest_dir(folder), "flavor": "sklearn",
              "meta": {**meta, "task": "classification"},
              "signature": adapter.infer_signature(model, X, y).to_dict(),
              "metrics": {"accuracy": 0.9}}
    return folder, record


def _upload(record: dict[str, Any] | None, folder: Path | None,
            extra: list[tarfile.TarInfo] = ()) -> bytes:  # type: ignore[assignment]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if record is not None:
            data = json.dumps(record).encode()
            info = tarfile.TarInfo("version.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if folder is not None:
            tar.add(folder, arcname="artifact")
        for member in extra:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return buffer.getvalue()


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _post(server: ServerProcess, key: str, body: bytes, *,
          media: str = "application/x-tar") -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/models/handmade/versions", content=body,
                      headers={**_bearer(key), "content-type": media}, timeout=60)


def _member(name: str, *, size: int = 1, kind: bytes = tarfile.REGTYPE,
            target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, target
    return info


def test_an_upload_is_checked_whole_before_anything_is_stored(
        server: ServerProcess, keys: dict[str, str], registry: Registry,
        tmp_path: Path) -> None:
    folder, record = _artifact(tmp_path / "artifact")
    ci = keys["ci"]
    refused = {
        "a path out of the folder": (_upload(record, folder, [_member("../escaped.txt")]),
                                     422),
        "a link out of the folder": (_upload(record, folder, [_member(
            "artifact/passwd", kind=tarfile.SYMTYPE, target="/etc/passwd")]), 422),
        "a link inside the folder": (_upload(record, folder, [_member(
            "artifact/again", kind=tarfile.SYMTYPE, target=".")]), 422),
        "a device": (_upload(record, folder, [_member("artifact/null", kind=tarfile.CHRTYPE)]),
                     422),
        "an entry beside the two": (_upload(record, folder, [_member("extra.txt")]), 422),
        "no record": (_upload(None, folder), 422),
        "a digest that is not the artifact's": (
            _upload({**record, "digest": "0" * 64}, folder), 422),
        "a record that is not one": (_upload({**record, "metrics": [1]}, folder), 422),
        "not a tar": (b"not a tar at all" * 100, 422),
        "over --max-upload": (_upload(record, folder, [_member("artifact/big.bin",
                                                               size=3 << 20)]), 413),
    }
    for what, (body, status) in refused.items():
        answer = _post(server, ci, body)
        assert answer.status_code == status, (what, answer.text)
        assert answer.json()["message"], what
    assert _post(server, ci, _upload(record, folder),
                 media="application/json").status_code == 415
    assert not (tmp_path.parent / "escaped.txt").exists()
    assert "handmade" not in {m.name for m in registry.list_models()}  # nothing stored

    made = _post(server, ci, _upload(record, folder))
    assert made.status_code == 201, made.text
    version = registry.get_version("handmade", made.json()["version"])
    assert version.artifact_digest == record["digest"] and version.created_by == "ci"
    download = httpx.get(f"{server.url}/api/v1/models/handmade/versions/{version.version}"
                         "/artifact", headers=_bearer(ci))
    assert download.status_code == 200
    assert download.headers["x-artifact-digest"] == version.artifact_digest
    assert hashlib.sha256(download.content).hexdigest() == version.artifact_digest
    with registry.db.session() as s:
        assert verify_session(s).intact  # every upload, refused or not, left the chain whole


def test_only_the_runs_owner_reports_on_it(server: ServerProcess, keys: dict[str, str],
                                           registry: Registry, tmp_path: Path) -> None:
    started = httpx.post(f"{server.url}/api/v1/models/owned/runs", json={"pid": 1},
                         headers=_bearer(keys["ci"]))
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    finish = f"{server.url}/api/v1/runs/{run_id}/finish"
    assert httpx.post(finish, json={"status": "succeeded"},
                      headers=_bearer(keys["bob"])).status_code == 403
    assert httpx.post(finish, json={"status": "done"},
                      headers=_bearer(keys["ci"])).status_code == 422
    folder, record = _artifact(tmp_path / "artifact")
    into_foreign = _post(server, keys["bob"], _upload({**record, "run_id": run_id}, folder))
    assert into_foreign.status_code == 403
    beat = httpx.post(f"{server.url}/api/v1/runs/{run_id}/beat", json={},
                      headers=_bearer(keys["ci"]))
    assert beat.json() == {"running": True}
    ended = httpx.post(finish, json={"status": "failed", "failure_reason": "on purpose"},
                       headers=_bearer(keys["ci"]))
    assert ended.status_code == 200 and ended.json()["status"] == "failed"
    assert httpx.post(finish, json={"status": "succeeded"},
                      headers=_bearer(keys["ci"])).status_code == 409
    assert httpx.post(f"{server.url}/api/v1/runs/{run_id}/beat", json={},
                      headers=_bearer(keys["ci"])).json() == {"running": False}
    run = registry.get_run(run_id)
    assert (run.status, run.created_by, run.failure_reason) == ("failed", "ci", "on purpose")


def test_a_runs_live_log_and_its_cancellation_go_through_the_server(
        server: ServerProcess, keys: dict[str, str], registry: Registry, tmp_path: Path) -> None:
    started = httpx.post(f"{server.url}/api/v1/models/owned/runs", json={"pid": 1},
                         headers=_bearer(keys["ci"]))
    run_id = started.json()["id"]
    beat = httpx.post(f"{server.url}/api/v1/runs/{run_id}/beat",
                      json={"logs": "[   0.10s] load data"}, headers=_bearer(keys["ci"]))
    assert beat.json() == {"running": True}
    assert registry.get_run(run_id).logs == "[   0.10s] load data"

    asked = cli(server, keys["bob"], tmp_path, "runs", "cancel", run_id[:8])
    assert asked.exit_code == 0, asked.output
    details = registry.get_run(run_id).details or {}
    assert details["cancel_requested"]["by"] == "bob"  # the key's principal, audited
    assert [e.actor for e in registry.audit_events("owned") if e.action == "run.cancel"] == \
        ["bob"]
    assert cli(server, keys["watcher"], tmp_path, "runs", "cancel", run_id).exit_code == 2
    httpx.post(f"{server.url}/api/v1/runs/{run_id}/finish", json={"status": "failed"},
               headers=_bearer(keys["ci"]))
    one_error(cli(server, keys["ci"], tmp_path, "runs", "cancel", run_id), 4)
