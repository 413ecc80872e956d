"""Batch scoring on a real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``:
a head and a worker node, one CPU each, the worker offering the custom resource ``scorer`` that
pins the scoring actors to it).

The ray engine's output must be the local engine's, file for file and byte for byte (answers,
errors file, manifest); a run stopped mid-way (interrupted, or its driver process SIGKILLed)
releases its actor and resumes from its last committed chunk on either engine (the CLI
included); losing the worker node mid-run fails the run cleanly (UnavailableError, recorded
failed, the output resumable once a node is back); and a model that fails on the cluster fails
the run with its own error. Under ``CI`` a missing Ray fails instead of
skipping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelyard.batch import BatchJob, ChunkDone, score
from modelyard.errors import AdapterError, UnavailableError
from modelyard.predictor import load
from modelyard.registry import Registry
from modelyard.testing.models import register_hgb, register_probe, tabular_data

pytestmark = pytest.mark.integration
FEATURES = [f"f{i}" for i in range(4)]
PINNED = (("scorer", 1.0),)
STORE_BYTES = 100 * 1024 * 1024


@dataclass
class TwoNodes:
    """The cluster, its address and the worker node (replaced when a test kills it)."""

    cluster: Any
    address: str
    worker: Any

    def add_worker(self) -> None:
        self.worker = self.cluster.add_node(num_cpus=1, resources={"scorer": 1},
                                            object_store_memory=STORE_BYTES)
        self.cluster.wait_for_nodes()


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        message = "Ray is not installed (pip install 'modelyard[ray]')"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)
    if ray.is_initialized():  # another module's cluster: this one starts its own
        ray.shutdown()
    # not 6379, where the machine's Redis listens; quick health checks so a lost node is seen
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "object_store_memory": STORE_BYTES, "gcs_server_port": _free_port(),
        "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                           "health_check_initial_delay_ms": 0}})
    nodes = TwoNodes(cluster, cluster.address, None)
    try:
        nodes.add_worker()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        yield nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def frame(n: int) -> pd.DataFrame:
    X, _ = tabular_data(n_rows=n, n_features=4, seed=5)
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "id", np.arange(n, dtype=np.int64))
    return df


def files(folder: Path) -> dict[str, bytes]:
    """Every file of a batch output, by path inside it, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture()
def tab_input(registry: Registry, tmp_path: Path) -> Path:
    register_hgb(registry, "tab", max_iter=10, n_features=4)
    df = frame(1200).astype({"f2": object})
    df.loc[[5, 333, 700, 1101], "f2"] = None  # refused rows, with the server's reason
    path = tmp_path / "in.parquet"
    df.to_parquet(path, row_group_size=250)
    return path


def test_the_cluster_writes_what_the_local_engine_writes(
        two_nodes: TwoNodes, registry: Registry, tab_input: Path, tmp_path: Path) -> None:
    local = score(BatchJob("tab", str(tab_input), str(tmp_path / "local"), key=("id",),
                           chunk_rows=150, scores=True), registry)
    # the actor runs on the worker node, the only one offering "scorer" (that it does is
    # shown by the test that kills that node)
    on_ray = score(BatchJob("tab", str(tab_input), str(tmp_path / "ray"), key=("id",),
                            chunk_rows=150, scores=True, engine="ray",
                            actor_resources=PINNED, actors=1), registry)
    assert files(tmp_path / "ray") == files(tmp_path / "local")  # parts, _errors/, manifest
    assert (on_ray.rows, on_ray.errors, on_ray.chunks) == (local.rows, local.errors, 8)
    assert on_ray.errors == 4
    errors = pd.read_parquet(tmp_path / "ray" / "_errors").sort_values("id")
    assert errors["id"].tolist() == [5, 333, 700, 1101]
    ray_run, local_run = registry.list_runs("tab")
    assert ray_run.id == on_ray.run_id and ray_run.kind == "batch"
    assert ray_run.status == "succeeded" and ray_run.details["engine"] == "ray"
    assert local_run.details["engine"] == "local"
    assert (ray_run.details["rows"], ray_run.details["errors"]) == (1196, 4)
    assert ray_run.details["rows_per_s"] > 0 and ray_run.metrics["rows"] == 1196


def test_a_run_stopped_midway_resumes_on_either_engine(
        two_nodes: TwoNodes, registry: Registry, tab_input: Path, tmp_path: Path) -> None:
    want = files(_local_reference(registry, tab_input, tmp_path))

    def stop_after_third(done: ChunkDone) -> None:
        if done.index == 2:
            raise KeyboardInterrupt

    # stopped on the cluster, resumed by the CLI on the cluster
    out = tmp_path / "ray-then-ray"
    job = BatchJob("tab", str(tab_input), str(out), key=("id",), chunk_rows=150,
                   scores=True, engine="ray", actor_resources=PINNED, actors=1)
    with pytest.raises(KeyboardInterrupt):
        score(job, registry, on_chunk=stop_after_third)
    stopped = registry.list_runs("tab")[0]
    assert stopped.status == "failed" and "KeyboardInterrupt" in (stopped.failure_reason or "")
    _wait_released()  # the stopped run's actor is gone: the worker node's resource is free
    assert json.loads((out / "_manifest.json").read_text())["chunks_done"] == 3
    cli = [str(Path(sys.executable).with_name("modelyard")), "--home",
           str(registry.settings.home), "batch", "tab", "-i", str(tab_input), "-o", str(out),
           "--key", "id", "--chunk-rows", "150", "--scores", "--engine", "ray",
           "--actor-resource", "scorer=1", "--actors", "1", "--json"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MODELYARD_RAY_ADDRESS": two_nodes.address})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["resumed_chunks"], summary["rows"], summary["status"]) == (3, 1196,
                                                                              "succeeded")
    assert files(out) == want
    assert registry.list_runs("tab")[0].details["engine"] == "ray"

    # a driver SIGKILLed after its third chunk, resumed locally
    out = tmp_path / "killed-then-local"
    script = textwrap.dedent(f"""
        import os, signal
        from modelyard.batch import BatchJob, score
        from modelyard.config import Settings
        from modelyard.registry import Registry

        def die(done):
            if done.index == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        with Registry.open(Settings.from_env(home={str(registry.settings.home)!r})) as reg:
            score(BatchJob("tab", {str(tab_input)!r}, {str(out)!r}, key=("id",), chunk_rows=150,
                           scores=True, engine="ray", ray_address={two_nodes.address!r},
                           actor_resources={PINNED!r}, actors=1), reg, on_chunk=die)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    resumed = score(BatchJob("tab", str(tab_input), str(out), key=("id",), chunk_rows=150,
                             scores=True), registry)
    assert resumed.resumed_chunks == 3 and files(out) == want
    killed = registry.list_runs("tab")[1]
    assert killed.status == "failed" and "abandoned" in (killed.failure_reason or "")
    _wait_released()  # Ray ended the dead driver's actor


def _wait_released(timeout_s: float = 20.0) -> None:
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("scorer", 0.0) < 1.0:
        assert time.monotonic() < deadline, "a stopped run left its actor holding the node"
        time.sleep(0.2)


def _local_reference(registry: Registry, tab_input: Path, tmp_path: Path) -> Path:
    out = tmp_path / "reference"
    score(BatchJob("tab", str(tab_input), str(out), key=("id",), chunk_rows=150, scores=True),
          registry)
    return out


def test_losing_the_worker_node_fails_the_run_cleanly_and_it_resumes(
        two_nodes: TwoNodes, registry: Registry, tmp_path: Path) -> None:
    # a slow model (50 ms a chunk), so the node dies with most chunks still to score
    register_probe(registry, "slow", n_features=3, delay_s=0.05)
    X = np.random.default_rng(0).random((1000, 3))
    pd.DataFrame(X, columns=["f0", "f1", "f2"]).assign(id=np.arange(1000)).to_parquet(
        tmp_path / "in.parquet")
    out = tmp_path / "out"
    job = BatchJob("slow", str(tmp_path / "in.parquet"), str(out), key=("id",), chunk_rows=25,
                   engine="ray", actor_resources=PINNED, actors=1)

    def kill_worker(done: ChunkDone) -> None:
        if done.index == 1:
            two_nodes.cluster.remove_node(two_nodes.worker, allow_graceful=False)

    with pytest.raises(UnavailableError, match="the Ray cluster stopped scoring"):
        score(job, registry, on_chunk=kill_worker)
    failed = registry.list_runs("slow")[0]
    assert failed.status == "failed"
    assert "the Ray cluster stopped scoring (Actor" in (failed.failure_reason or "")
    assert failed.details["engine"] == "ray"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert 2 <= manifest["chunks_done"] < 40 and not manifest["complete"]
    assert failed.details["chunks"] == manifest["chunks_done"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]

    two_nodes.add_worker()  # a node is back: the run goes on from the last committed chunk
    resumed = score(job, registry)
    assert resumed.status == "succeeded"
    assert resumed.resumed_chunks == manifest["chunks_done"] and resumed.rows == 1000
    got = pd.read_parquet(out).sort_values("id")
    assert got["id"].tolist() == list(range(1000))  # every row once: no duplicate, no gap
    want = load("slow", registry=registry).predict(X)
    assert got["predictions"].tolist() == want.tolist()


def test_a_model_that_fails_on_the_cluster_fails_the_run_with_its_own_error(
        two_nodes: TwoNodes, registry: Registry, tmp_path: Path) -> None:
    register_probe(registry, "broken", n_features=3, fail_predict=True)
    pd.DataFrame(np.ones((60, 3)), columns=["f0", "f1", "f2"]).to_parquet(tmp_path / "in.pq")
    job = BatchJob("broken", str(tmp_path / "in.pq"), str(tmp_path / "out"), chunk_rows=20,
                   engine="ray", actor_resources=PINNED, actors=1)
    with pytest.raises(AdapterError, match="fails every real request on purpose"):
        score(job, registry)
    failed = registry.list_runs("broken")[0]
    assert failed.status == "failed" and "on purpose" in (failed.failure_reason or "")
