"""The ray batch engine's decisions (actor resources, pool size, --actor-resource), its
one-line error without Ray, and that nothing imports Ray until a job asks for the engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelyard.batch import BatchJob, score
from modelyard.batch.ray_engine import (
    INSTALL_HINT,
    ActorShape,
    actor_shape,
    default_actors,
    parse_resources,
)
from modelyard.errors import ConfigError
from modelyard.registry import Registry


@pytest.mark.parametrize(("device", "accelerated", "gpus", "want"), [
    ("cpu", False, 0, ActorShape(1.0, 0.0, {}, "cpu")),
    ("auto", False, 4, ActorShape(1.0, 0.0, {}, "cpu")),   # a tree model never takes a GPU
    ("auto", True, 0, ActorShape(1.0, 0.0, {}, "cpu")),    # no GPU in the cluster: CPUs
    ("auto", True, 2, ActorShape(1.0, 1.0, {}, "cuda")),   # deep learning where GPUs are
    ("cuda:3", True, 0, ActorShape(1.0, 1.0, {}, "cuda")),  # asked for: waits for one
    ("cpu", True, 8, ActorShape(1.0, 0.0, {}, "cpu")),
])
def test_an_actor_asks_for_a_gpu_where_the_versions_device_does(
        device: str, accelerated: bool, gpus: float, want: ActorShape) -> None:
    assert actor_shape(device, accelerated=accelerated, cluster_gpus=gpus) == want


def test_custom_resources_ride_along_and_size_the_pool() -> None:
    shape = actor_shape("cpu", accelerated=False, cluster_gpus=0, resources={"node_b": 1.0})
    assert shape.resources == {"node_b": 1.0}
    assert default_actors(shape, {"CPU": 8.0, "node_b": 2.0}) == 2
    assert default_actors(shape, {"CPU": 8.0}) == 1  # none offered yet: one, which waits
    gpu = actor_shape("cuda", accelerated=True, cluster_gpus=0)
    assert default_actors(gpu, {"CPU": 32.0, "GPU": 4.0}) == 4
    assert default_actors(actor_shape("cpu", accelerated=False, cluster_gpus=0),
                          {"CPU": 6.0}) == 6


def test_actor_resources_are_parsed_and_bad_ones_refused() -> None:
    assert parse_resources(["node_b=1", "ssd", "half=0.5"]) == (
        ("node_b", 1.0), ("ssd", 1.0), ("half", 0.5))
    for bad in ("=1", "x=0", "x=lots"):
        with pytest.raises(ConfigError, match="--actor-resource"):
            parse_resources([bad])
    with pytest.raises(ConfigError, match="--actors must be at least 1"):
        BatchJob("m", "in", "out", actors=0)


def test_without_ray_the_engine_says_what_to_install(registry: Registry,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError) as caught:
        score(BatchJob("m", "in", "out", engine="ray"), registry)
    assert str(caught.value) == f"--engine ray needs Ray: {INSTALL_HINT}"


def test_importing_modelyard_and_its_batch_cli_never_imports_ray() -> None:
    code = ("import sys, modelyard, modelyard.batch, modelyard.batch.ray_engine, modelyard.cli;"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_a_cluster_failure_is_the_modelyard_error_at_its_root_or_unavailable() -> None:
    from modelyard.batch.ray_engine import cluster_failure
    from modelyard.errors import AdapterError, UnavailableError

    class TaskError(Exception):  # as Ray wraps an actor's error: .cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__("task failed")
            self.cause = cause

    root = AdapterError("fraud:3 failed to predict")
    wrapped = RuntimeError("Ray Data")
    wrapped.__cause__ = TaskError(root)
    assert cluster_failure(wrapped) is root
    lost = cluster_failure(ConnectionError("The actor died\nmore"))
    assert isinstance(lost, UnavailableError)
    assert str(lost).startswith("the Ray cluster stopped scoring (ConnectionError: The actor "
                                "died); every chunk committed before is kept")
