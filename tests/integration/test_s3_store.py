"""The artifact store on S3 for real: moto's server on 127.0.0.1 is the endpoint, reached through
s3fs with the endpoint, credentials and region from the environment only.

One "node" trains (a ``modelyard train`` process with its own folder), two replicas serve (two
``modelyard serve`` processes, each with its own empty folder); they share nothing but the
PostgreSQL registry and the bucket. A second version is promoted and both replicas swap to it
with no failed request. Then what users expect of a remote store: no half-visible upload, a
changed object refused, an unreachable endpoint or a wrong key a one-line error with exit 10
within a bound, and a restarted replica that needs no download.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from modelyard.errors import IntegrityError, StorageError
from modelyard.registry import Registry
from modelyard.store import open_store
from modelyard.testing import ServerProcess, labeled_frame, register_constant

pytestmark = pytest.mark.integration

PREFIX = "models"

TRAIN_PY = '''
def train(X, y, params):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=params.get("C", 1.0), max_iter=500).fit(X, y)
'''

YAML = '''
models:
  clf:
    train: train.py:train
    data: {path: "data/*.csv", target: label}
    metrics: [accuracy]
'''

RECORD = {"x0": 0.5, "x1": -0.2, "x2": 1.0, "x3": 0.0}


@pytest.fixture()
def node(tmp_path: Path) -> Path:
    """The training node's own folder: the project (code and data) and nothing else."""
    root = tmp_path / "node"
    (root / "project" / "data").mkdir(parents=True)
    (root / "project" / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    (root / "project" / "modelyard.yaml").write_text(YAML)
    labeled_frame(300, seed=1).to_csv(root / "project" / "data" / "part1.csv", index=False)
    return root


@pytest.fixture()
def bucket(s3_server: Any) -> str:
    return str(s3_server.new_bucket())


@pytest.fixture()
def s3_env(s3_server: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Everything a process needs to reach the bucket, as environment variables only (also set
    here, for the registry this test opens itself)."""
    env = s3_server.env(MODELYARD_ARTIFACTS=f"s3://{bucket}/{PREFIX}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return dict(env)


def _modelyard(cwd: Path, env: dict[str, str], *args: str,
               timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the modelyard CLI in ``cwd`` with ``env`` over this process's environment."""
    return subprocess.run(
        [sys.executable, "-c", "from modelyard.cli import main; main()", *args],
        cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout_s)


def _objects(s3_server: Any, bucket: str) -> dict[str, int]:
    """Every key in the bucket and its size."""
    listed = s3_server.client().list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["Size"] for o in listed.get("Contents", [])}


def _key(digest: str) -> str:
    return f"{PREFIX}/{digest[:2]}/{digest}"


class _Load:
    """Requests to every replica in turn from a thread until stopped: each answer's status and
    the version that answered, per replica."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.answers: list[tuple[str, int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                for url in self.urls:
                    try:
                        r = client.post(f"{url}/v1/models/clf/predict",
                                        json={"records": [RECORD]})
                        version = r.json().get("version") if r.status_code == 200 else None
                        self.answers.append((url, r.status_code, version))
                    except httpx.HTTPError:
                        self.answers.append((url, 0, None))
                time.sleep(0.01)

    def latest(self, url: str) -> int | None:
        mine = [v for u, _, v in self.answers if u == url]
        return mine[-1] if mine else None


def _wait_for(condition: Any, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s  # a bound on a hang, not a speed requirement
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_train_on_a_node_serve_from_two_replicas_and_both_swap_on_promote(
        node: Path, tmp_path: Path, s3_server: Any, bucket: str, s3_env: dict[str, str],
        pg_url: str) -> None:
    shared = {**s3_env, "MODELYARD_DB": pg_url}
    project = str(node / "project" / "modelyard.yaml")
    home = ("--home", str(node / "home"))
    first = _modelyard(node, shared, *home, "train", "clf", "-p", project)
    assert first.returncode == 0, first.stderr

    replicas = [ServerProcess(tmp_path / f"replica-{name}" / "home", wait=False,
                              env={**shared, "MODELYARD_PREDICTION_LOG": "off"})
                for name in ("a", "b")]
    try:
        for replica in replicas:
            replica.wait_ready()
        with httpx.Client(timeout=30) as client:
            for replica in replicas:
                r = client.post(f"{replica.url}/v1/models/clf/predict", json={"records": [RECORD]})
                assert r.status_code == 200, r.text
                assert r.json()["version"] == 1

        with _Load([r.url for r in replicas]) as load:
            second = _modelyard(node, shared, *home, "train", "clf", "-p", project, "--force",
                                "--no-promote")
            assert second.returncode == 0, second.stderr
            promoted = _modelyard(node, shared, *home, "promote", "clf", "2")
            assert promoted.returncode == 0, promoted.stderr
            _wait_for(lambda: all(load.latest(r.url) == 2 for r in replicas),
                      "both replicas to serve version 2")
            time.sleep(0.5)  # a few more requests after the swap, to both
        failed = [a for a in load.answers if a[1] != 200]
        assert not failed, f"{len(failed)} of {len(load.answers)} requests failed: {failed[:5]}"
        for replica in replicas:
            seen = [v for u, _, v in load.answers if u == replica.url]
            assert seen[-1] == 2 and 1 in seen  # served 1, swapped to 2 under load
            assert len(seen) >= 20, f"only {len(seen)} requests reached {replica.url}"
    finally:
        for replica in replicas:
            replica.stop()

    with Registry.open(Settings.from_env(home=tmp_path / "reader", db_url=pg_url)) as reg:
        versions = {v.version: v for v in reg.list_versions("clf")}
    assert set(versions) == {1, 2}
    # the artifacts' bytes live in the bucket, under their digests, and nothing else is there
    # (no temporary key from an upload)
    assert _objects(s3_server, bucket) == {
        _key(v.artifact_digest): v.artifact_size for v in versions.values()}
    for v in versions.values():
        body = s3_server.client().get_object(Bucket=bucket, Key=_key(v.artifact_digest))["Body"]
        assert hashlib.sha256(body.read()).hexdigest() == v.artifact_digest
    # nothing was written to a shared local path: the node holds its project and its own home
    # without an artifacts folder, each replica only what it unpacked into its own cache
    assert not (node / "home" / "artifacts").exists()
    assert not (node / ".modelyard").exists()
    digests = {v.artifact_digest for v in versions.values()}
    for name in ("a", "b"):
        cache = tmp_path / f"replica-{name}" / "home" / "cache"
        assert {p.name for p in cache.iterdir() if not p.name.startswith(".")} <= digests
        assert not (tmp_path / f"replica-{name}" / "home" / "artifacts").exists()


def _predict_const(url: str) -> int:
    r = httpx.post(f"{url}/v1/models/const/predict", json={"instances": [[0, 0, 0]]}, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["predictions"][0])


def test_an_idle_reload_and_a_restart_load_from_the_verified_cache_without_the_store(
        tmp_path: Path, s3_server: Any, bucket: str, s3_env: dict[str, str]) -> None:
    home = tmp_path / "replica" / "home"
    with Registry.open(Settings.from_env(home=tmp_path / "node", actor="tester")) as reg:
        version = register_constant(reg, "const", 7)
        db = reg.settings.db_url
    env = {**s3_env, "MODELYARD_DB": db, "MODELYARD_PREDICTION_LOG": "off"}
    with ServerProcess(home, env=env, args=("--idle-unload", "1s")) as server:
        assert _predict_const(server.url) == 7
        # the object leaves the bucket; the version, idle, is unloaded, and its next request
        # loads it again from the unpacked copy its digest check accepts (content-addressed,
        # so that copy is never stale)
        s3_server.client().delete_object(Bucket=bucket, Key=_key(version.artifact_digest))
        _wait_for(lambda: "const:1" in httpx.get(f"{server.url}/readyz").json().get("idle", []),
                  "the idle version to be unloaded")
        assert _predict_const(server.url) == 7
        metrics = httpx.get(f"{server.url}/metrics").text
        assert re.search(r'modelyard_model_load_seconds_count\{[^}]*reason="idle"[^}]*\} 1',
                         metrics), "the version was not reloaded after going idle"
    # a replica restarted on the same folder loads without the store too
    with ServerProcess(home, env=env) as server:
        assert _predict_const(server.url) == 7
    # while a replica with an empty folder has to download it, and is told it is missing
    with Registry.open(Settings.from_env(home=tmp_path / "fresh", db_url=db)) as reg, \
            pytest.raises(IntegrityError, match=r"refusing to load const:1.*missing"):
        reg.artifact_path(reg.get_version("const", 1))


def test_an_object_changed_in_the_bucket_is_refused(
        tmp_path: Path, s3_server: Any, bucket: str, s3_env: dict[str, str]) -> None:
    with Registry.open(Settings.from_env(home=tmp_path / "node", actor="tester")) as reg:
        version = register_constant(reg, "const", 3)
        db = reg.settings.db_url
    key = _key(version.artifact_digest)
    assert _objects(s3_server, bucket) == {key: version.artifact_size}
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"not the model that was stored")
    reader = tmp_path / "reader"
    with Registry.open(Settings.from_env(home=reader, db_url=db)) as reg, \
            pytest.raises(IntegrityError, match=r"refusing to load const:1.*digest mismatch"):
        reg.artifact_path(reg.get_version("const", 1))
    # nothing of the refused download is left to be loaded by mistake
    assert not any(p.is_file() for p in (reader / "cache").rglob("*"))


def test_a_bucket_that_does_not_exist_is_one_line_when_writing(
        tmp_path: Path, s3_env: dict[str, str]) -> None:
    store = open_store(f"s3://modelyard-missing-{uuid.uuid4().hex[:12]}/models")
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    with pytest.raises(StorageError, match=r"cannot write artifact to s3://modelyard-missing-"
                                           r".*create the bucket") as caught:
        store.put_file(blob)
    assert "\n" not in str(caught.value)


def _fails_fast(node: Path, env: dict[str, str], bound_s: float, *args: str) -> str:
    """Run a command that needs the store; it must exit 10 with one line within ``bound_s``
    (default: ``train``, which asks the store before it trains)."""
    command = args or ("train", "clf", "-p", str(node / "project" / "modelyard.yaml"))
    started = time.monotonic()
    out = _modelyard(node, env, "--home", str(node / "home"), *command, timeout_s=bound_s + 60)
    elapsed = time.monotonic() - started
    assert out.returncode == 10, (out.returncode, out.stderr)
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    assert elapsed < bound_s, f"took {elapsed:.1f} s"
    return out.stderr.strip()


def test_an_unreachable_endpoint_is_a_one_line_error_with_exit_10_before_training(
        node: Path, s3_env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens here once the socket is closed
    env = {**s3_env, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{closed}",
           "MODELYARD_STORE_TIMEOUT": "2s"}
    line = _fails_fast(node, env, 30)
    assert line.startswith("error: cannot read s3://") and "EndpointConnectionError" in line
    assert "AWS_ENDPOINT_URL_S3" in line


def test_an_endpoint_that_never_answers_times_out_within_the_bound(
        node: Path, s3_env: dict[str, str]) -> None:
    with socket.socket() as hole:  # accepts connections (the kernel does) and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        env = {**s3_env, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{hole.getsockname()[1]}",
               "MODELYARD_STORE_TIMEOUT": "1s"}
        # three tries of a second each and their backoff, well short of a hang; the rest of
        # the bound is for starting Python on a busy machine
        line = _fails_fast(node, env, 45)
    assert "ReadTimeoutError" in line


def test_a_wrong_key_is_a_one_line_error_with_exit_10_for_train_and_serve(
        node: Path, s3_env: dict[str, str]) -> None:
    env = {**s3_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    line = _fails_fast(node, env, 30)
    assert line.startswith("error: cannot read s3://") and "refused the credentials" in line
    assert "not-the-secret" not in line
    served = _fails_fast(node, {**s3_env, "AWS_ACCESS_KEY_ID": "AKIANOTAREALKEY00000"}, 30,
                         "serve", "--port", "0")
    assert "refused the credentials" in served


@pytest.fixture(autouse=True)
def _no_stray_registry() -> Iterator[None]:
    before = Path.cwd() / ".modelyard"
    existed = before.exists()
    yield
    assert before.exists() == existed, "a test wrote a registry into the working folder"
