"""Training runs on a real two-node Ray cluster started here (``ray.cluster_utils.Cluster``): a
head node and a worker node that alone has the custom resource ``trainer``, so a spec that asks
for it trains there. Checks registration, parallel runs, cancellation, a worker node killed
mid-run (failed, or retried), the environment check and the error without Ray.

Kept small for a two-core machine: one CPU and ~80 MB of object store per node, one cluster for
the module. Under ``CI`` a missing Ray fails these tests instead of skipping them.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.errors import EnvironmentMismatchError, NotFoundError, RunCancelled, TrainingError
from modelyard.pipeline import run_pipeline
from modelyard.pipeline.lineage import environment
from modelyard.registry import Registry
from modelyard.spec import Spec, load_project
from modelyard.testing import labeled_frame

pytestmark = pytest.mark.integration

TRAIN_PY = '''
import os
import time
from pathlib import Path


def train(X, y, params):
    from sklearn.linear_model import LogisticRegression

    print("trained on node", os.environ.get("MODELYARD_TEST_NODE", "?"), flush=True)
    return LogisticRegression(max_iter=300).fit(X, y)


def wait(X, y, params):
    """Train after the file 'release' appears; a first attempt says so in 'started'."""
    here = Path(__file__).parent
    first = not (here / "started").exists()
    (here / "started").write_text(str(os.getpid()))
    print("waiting for release on node", os.environ.get("MODELYARD_TEST_NODE", "?"), flush=True)
    deadline = time.monotonic() + 120
    while first and not (here / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return train(X, y, params)
'''

YAML = '''
models:
  clf:
    train: {entrypoint: train.py:train, executor: ray, resources: {cpus: 1, custom: {trainer: 1}}}
    data: {path: "data/*.csv", target: label}
    metrics: [accuracy]
    gate: {min: {accuracy: 0.6}}
  other:
    train: train.py:train
    executor: ray
    data: {path: "data/*.csv", target: label}
    metrics: [accuracy]
  waits:
    train: train.py:wait
    executor: ray
    resources: {cpus: 1, custom: {trainer: 1}}
    data: {path: "data/*.csv", target: label}
    metrics: [accuracy]
  again:
    train: train.py:wait
    executor: ray
    resources: {cpus: 1, custom: {trainer: 1}}
    retries: 1
    data: {path: "data/*.csv", target: label}
    metrics: [accuracy]
  local:
    train: train.py:wait
    data: {path: "data/*.csv", target: label}
    metrics: [accuracy]
'''
_NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        message = "ray is not installed: pip install 'modelyard[ray]'"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)
    return ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwoNodes:
    """The cluster: its head, and the worker node that has the ``trainer`` resource."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        # never Ray's default port 6379: Redis listens there on this machine
        self.cluster = Cluster(initialize_head=True, head_node_args={
            **_NODE, "redis_port": _free_port(), "include_dashboard": False,
            "resources": {"head": 1}, "env_vars": {"MODELYARD_TEST_NODE": "head"},
            # a killed node is noticed in about 2 s, not Ray's default 15-30
            "_system_config": {"health_check_period_ms": 500,
                               "health_check_failure_threshold": 4}})
        self.worker = self.add_worker()

    def add_worker(self) -> Any:
        """Start the worker node; its processes see MODELYARD_TEST_NODE=worker."""
        node = self.cluster.add_node(**_NODE, resources={"trainer": 1},
                                     env_vars={"MODELYARD_TEST_NODE": "worker"})
        self.cluster.wait_for_nodes()
        return node

    def kill_worker(self) -> None:
        self.cluster.remove_node(self.worker, allow_graceful=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoNodes]:
    ray = _require_ray()
    nodes = TwoNodes()
    ray.init(address=nodes.cluster.address, log_to_driver=False, configure_logging=False)
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.cluster.shutdown()


@pytest.fixture()
def project(tmp_path: Path) -> dict[str, Spec]:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    (root / "modelyard.yaml").write_text(YAML)
    labeled_frame(200, seed=1).to_csv(root / "data" / "part-1.csv", index=False)
    return load_project(root / "modelyard.yaml")


def _in_thread(spec: Spec, registry: Registry, box: dict[str, Any]) -> threading.Thread:
    def go() -> None:
        try:
            box["result"] = run_pipeline(spec, registry)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def _wait_for(path: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)


def _versions(registry: Registry, model: str) -> list[int]:
    try:
        return [v.version for v in registry.list_versions(model)]
    except NotFoundError:  # never registered at all
        return []


def _running_run(registry: Registry, model: str) -> str:
    return next(r.id for r in registry.list_runs(model) if r.status == "running")


def test_without_ray_the_ray_executor_says_what_to_install(
        project: dict[str, Spec], registry: Registry, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.chdir(tmp_path / "project")
    result = CliRunner().invoke(main, ["train", "clf", "--executor", "ray"],
                                env={"MODELYARD_HOME": str(tmp_path / "home")})
    assert result.exit_code == 6, result.output
    assert "pip install 'modelyard[ray]'" in result.output
    assert registry.list_runs("clf") == []  # failed before any run was recorded


def test_a_run_trains_on_the_worker_node_and_registers_like_a_local_one(
        cluster: TwoNodes, project: dict[str, Spec], registry: Registry) -> None:
    stages: list[str] = []
    result = run_pipeline(project["clf"], registry, progress=stages.append)
    assert stages == ["load data", "validate", "train", "evaluate", "gate", "register", "promote"]
    assert result.promoted and result.version is not None and result.run.status == "succeeded"
    logs = result.run.logs
    assert "executor: ray" in logs and "running on Ray worker" in logs
    assert "trained on node worker" in logs  # pinned by the custom resource
    version = registry.resolve("clf@production")
    assert version.environment["packages"] == environment()["packages"]
    assert set(version.reference_stats["features"]) == {"x0", "x1", "x2", "x3"}
    assert len(version.data_fingerprint or "") == 64 and version.metrics["accuracy"] > 0.6
    # the files the worker read, with their digests, come back as the version's lineage
    sources = version.data_sources
    assert sources and {s["kind"] for s in sources} == {"file"}
    assert all(len(s["digest"]) == 64 and s["location"].endswith(".csv") for s in sources)
    # the same data, code and spec again: unchanged, decided on the worker, nothing trained
    again = run_pipeline(project["clf"], registry)
    assert again.unchanged is not None and again.unchanged.version == 1


def test_train_all_runs_the_models_at_once_on_the_cluster(
        cluster: TwoNodes, project: dict[str, Spec], registry: Registry, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path / "project")
    (tmp_path / "project" / "modelyard.yaml").write_text(YAML.split("  waits:")[0])
    result = CliRunner().invoke(main, ["train", "--all", "--executor", "ray", "--json"],
                                env={"MODELYARD_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0, result.output
    runs = {r.model: r for r in registry.list_runs()}
    assert runs["clf"].status == runs["other"].status == "succeeded"
    assert registry.resolve("other@production").version == 1
    # both ran at once: each started before the other ended
    assert runs["clf"].started_at < runs["other"].ended_at  # type: ignore[operator]
    assert runs["other"].started_at < runs["clf"].ended_at  # type: ignore[operator]


def test_runs_cancel_stops_the_ray_task_and_logs_streamed_meanwhile(
        cluster: TwoNodes, project: dict[str, Spec], registry: Registry,
        tmp_path: Path) -> None:
    box: dict[str, Any] = {}
    thread = _in_thread(project["waits"], registry, box)
    _wait_for(tmp_path / "project" / "started")
    run_id = _running_run(registry, "waits")
    deadline = time.monotonic() + 20
    while "waiting for release" not in registry.get_run(run_id).logs:  # streamed while it runs
        assert time.monotonic() < deadline, registry.get_run(run_id).logs
        time.sleep(0.2)
    result = CliRunner().invoke(main, ["runs", "cancel", run_id[:8], "--wait", "30"],
                                env={"MODELYARD_HOME": str(tmp_path / "home"),
                                     "MODELYARD_ACTOR": "tester"})
    assert result.exit_code == 0, result.output
    thread.join(30)
    assert isinstance(box.get("error"), RunCancelled), box
    run = registry.get_run(run_id)
    assert run.status == "failed" and run.failure_reason.startswith("cancelled by tester")
    assert _versions(registry, "waits") == []


def test_runs_cancel_stops_a_local_run_too(project: dict[str, Spec], registry: Registry,
                                           tmp_path: Path) -> None:
    box: dict[str, Any] = {}
    thread = _in_thread(project["local"], registry, box)
    started = tmp_path / "project" / "started"
    _wait_for(started)
    pid = int(started.read_text())
    registry.request_cancel(_running_run(registry, "local"))
    thread.join(30)
    assert isinstance(box.get("error"), RunCancelled), box
    run = registry.list_runs("local")[0]
    assert run.status == "failed" and "cancelled" in (run.failure_reason or "")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the training child was killed


def test_a_worker_node_killed_mid_run_fails_the_run_and_registers_nothing(
        cluster: TwoNodes, project: dict[str, Spec], registry: Registry,
        tmp_path: Path) -> None:
    run_pipeline(project["clf"], registry)  # a production version that must stay put
    box: dict[str, Any] = {}
    thread = _in_thread(project["waits"], registry, box)
    _wait_for(tmp_path / "project" / "started")
    cluster.kill_worker()
    try:
        thread.join(60)
        assert isinstance(box.get("error"), TrainingError), box
        run = registry.list_runs("waits")[0]
        assert run.status == "failed" and "was lost" in (run.failure_reason or "")
        assert _versions(registry, "waits") == []
        assert registry.resolve("clf@production").version == 1
    finally:
        cluster.worker = cluster.add_worker()


def test_a_lost_worker_is_retried_when_the_spec_says_retries(
        cluster: TwoNodes, project: dict[str, Spec], registry: Registry,
        tmp_path: Path) -> None:
    box: dict[str, Any] = {}
    thread = _in_thread(project["again"], registry, box)
    _wait_for(tmp_path / "project" / "started")
    cluster.kill_worker()
    cluster.worker = cluster.add_worker()  # the retry needs a node with `trainer`
    thread.join(90)
    assert "result" in box, box
    run = box["result"].run
    assert run.status == "succeeded" and "attempt 1 of 2 lost its worker" in run.logs
    assert _versions(registry, "again") == [1]


def test_a_worker_with_other_framework_versions_is_refused_before_training(
        cluster: TwoNodes, project: dict[str, Spec], registry: Registry,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import modelyard.pipeline.run as run_module

    real = environment()
    claimed = {**real, "packages": {**real["packages"], "scikit-learn": "0.0.1"}}
    monkeypatch.setattr(run_module, "environment", lambda: claimed)  # the client's side
    with pytest.raises(EnvironmentMismatchError, match=r"scikit-learn 0\.0\.1 on the client"):
        run_pipeline(project["clf"], registry)
    run = registry.list_runs("clf")[0]
    assert run.status == "failed" and "differs from the client's" in (run.failure_reason or "")
    assert _versions(registry, "clf") == [] and EnvironmentMismatchError.exit_code == 20


def test_the_scheduler_sends_retraining_to_the_executor_the_spec_names(
        cluster: TwoNodes, project: dict[str, Spec], registry: Registry) -> None:
    from modelyard.executors import ExecutorOptions
    from modelyard.scheduler import Scheduler

    options = ExecutorOptions(artifacts=registry.settings.artifacts)
    scheduler = Scheduler(registry, {"clf": project["clf"]}, executor_options=options)
    actions = scheduler._retrain("clf", project["clf"], "schedule:0 3 * * *")
    assert [a.kind for a in actions][-1] == "retrain", actions
    run = registry.list_runs("clf")[0]
    assert run.status == "succeeded" and run.trigger == "schedule:0 3 * * *"
    assert "executor: ray" in run.logs and "trained on node worker" in run.logs


def test_the_cli_in_its_own_process_connects_by_modelyard_ray_address(
        cluster: TwoNodes, project: dict[str, Spec], registry: Registry,
        tmp_path: Path) -> None:
    import subprocess

    env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "home"),
           "MODELYARD_RAY_ADDRESS": cluster.cluster.address}
    done = subprocess.run([sys.executable, "-c", "from modelyard.cli import main; main()",
                           "train", "clf", "--json"],
                          cwd=tmp_path / "project", env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    run = registry.list_runs("clf")[0]
    assert run.status == "succeeded" and "trained on node worker" in run.logs
