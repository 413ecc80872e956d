"""Executors by name, the spec's resources and the mapping form of train, the environment check:
the pure parts of training elsewhere (the real cluster: tests/integration/test_ray_train)."""

from __future__ import annotations

import sys

import pytest

from modelyard.errors import ConfigError, EnvironmentMismatchError
from modelyard.executors import ExecutorOptions, executor_names, get_executor
from modelyard.executors.local import LocalExecutor
from modelyard.pipeline.job import check_environment, environment_differences
from modelyard.pipeline.lineage import environment, spec_hash
from modelyard.resources import parse_size
from modelyard.spec import Spec
from modelyard.types import Executor

BASE = {"name": "m", "data": {"path": "d.csv", "target": "y"}}


def test_executors_are_registered_by_name_and_an_unknown_one_is_a_config_error() -> None:
    assert {"local", "ray"} <= set(executor_names())
    local = get_executor("local")
    assert isinstance(local, LocalExecutor) and isinstance(local, Executor)
    with pytest.raises(ConfigError, match="no executor 'spark': use one of local, ray"):
        get_executor("spark")


def test_options_come_from_explicit_values_then_the_environment() -> None:
    env = {"MODELYARD_RAY_ADDRESS": "10.0.0.1:6380", "MODELYARD_ARTIFACTS": "s3://b/a"}
    assert ExecutorOptions.from_env(env) == ExecutorOptions("10.0.0.1:6380", "s3://b/a")
    assert ExecutorOptions.from_env(env, ray_address="h:1").ray_address == "h:1"


def test_the_ray_executor_without_ray_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.errors import FrameworkMissingError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(FrameworkMissingError, match=r"pip install 'modelyard\[ray\]'"):
        get_executor("ray")


def test_resources_beside_train_and_in_its_mapping_form_are_the_same_spec() -> None:
    beside = Spec.parse({**BASE, "train": "t.py:fit", "executor": "ray", "retries": 2,
                         "resources": {"cpus": 2, "gpus": 1, "memory": "4GB",
                                       "custom": {"trainer": 1}}})
    mapping = Spec.parse({**BASE, "train": {"entrypoint": "t.py:fit", "executor": "ray",
                                            "retries": 2, "resources": {
                                                "cpus": 2, "gpus": 1, "memory": "4GB",
                                                "custom": {"trainer": 1}}}})
    assert beside == mapping and mapping.train == "t.py:fit"
    assert mapping.resources.to_ray() == {"num_cpus": 2, "num_gpus": 1, "memory": 4 * 10**9,
                                          "resources": {"trainer": 1}}
    plain = Spec.parse({**BASE, "train": "t.py:fit"})
    assert (plain.executor, plain.retries, plain.resources.to_ray()) == (
        "local", 0, {"num_cpus": 1.0, "num_gpus": 0.0})
    # where a run executes does not change the model: no retrain for moving it to a cluster
    assert spec_hash(plain) == spec_hash(beside)


@pytest.mark.parametrize("bad", [
    {"train": {"executor": "ray"}},
    {"train": {"entrypoint": "t.py:fit", "gpu": 1}},
    {"train": {"entrypoint": "t.py:fit", "retries": 1}, "retries": 2},
    {"train": "t.py:fit", "resources": {"memory": "lots"}},
    {"train": "t.py:fit", "retries": -1},
    {"train": "t.py:fit", "executor": "Ray Cluster"},
])
def test_a_bad_training_declaration_is_a_config_error(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Spec.parse({**BASE, **bad})


def test_sizes() -> None:
    assert parse_size("512MiB") == 512 * 1024**2 and parse_size(1000) == 1000
    assert parse_size("1.5g") == 1_500_000_000
    for bad in ("-1GB", "0", "ten", True):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_environment_differences_name_python_and_packages_not_the_platform() -> None:
    here = environment()
    assert environment_differences(here, {**here, "platform": "elsewhere"}) == []
    other = {**here, "python": "3.0.0",
             "packages": {**here["packages"], "scikit-learn": "0.0.1", "newpkg": "1"}}
    found = environment_differences(here, other)
    assert found[0] == f"python {here['python']} on the client, 3.0.0 on the worker"
    assert "newpkg not installed on the client, 1 on the worker" in found
    check_environment(here, "this test")  # the same: no error
    with pytest.raises(EnvironmentMismatchError, match="on this test differs"):
        check_environment(other, "this test")


def test_a_ray_address_where_nothing_listens_fails_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")  # the integration tests require it under CI
    import socket

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh CLI process
    from modelyard.executors.ray_cluster import RayExecutor

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        RayExecutor(address=f"127.0.0.1:{port}", artifacts="/tmp").connect()
