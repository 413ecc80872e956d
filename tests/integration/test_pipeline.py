"""Real training runs through the whole pipeline: child processes, registry, gate and promotion."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.errors import (
    DataValidationError,
    GateFailed,
    NotFoundError,
    TrainingError,
    UnsafeArtifactError,
)
from modelyard.pipeline import run_pipeline
from modelyard.predictor import open_version
from modelyard.registry import Registry
from modelyard.registry.owners import is_running, this_host
from modelyard.spec import ChampionRule, GateSpec, Spec, load_project
from modelyard.testing import labeled_frame

pytestmark = pytest.mark.integration

TRAIN_PY = '''
import os
import signal
import time

import numpy as np


def train(X, y, params):
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    print("training on", len(X), "rows")
    if params.get("weak"):
        return DummyClassifier(strategy="uniform", random_state=0).fit(X, y)
    return LogisticRegression(C=params.get("C", 1.0), max_iter=500).fit(X, y)


def boom(X, y, params):
    print("about to fail")
    raise ValueError("bad hyperparameter")


def slow(X, y, params):
    time.sleep(60)


def crash(X, y, params):
    os.kill(os.getpid(), signal.SIGKILL)


def linger(X, y, params):
    from pathlib import Path

    pid_file = Path(__file__).parent / params["pid_file"]
    pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
    pid_file.with_suffix(".tmp").replace(pid_file)
    time.sleep(600)


def blobs():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 3, 3, 3]], dtype=np.float32)
    y = rng.integers(0, 3, 600)
    X = (centers[y] + rng.normal(scale=0.7, size=(600, 4))).astype(np.float32)
    return X, y.astype(np.int64)


def torch_mlp(X, y, params):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    for _ in range(params.get("epochs", 60)):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
    return net
'''

YAML = '''
models:
  clf:
    train: train.py:train
    data: {path: "data/*.csv", target: label}
    metrics: [accuracy, f1, roc_auc]
    gate: {min: {accuracy: 0.6}, champion: {metric: f1, max_drop: 0.0}}
  boom:
    train: train.py:boom
    data: {path: "data/*.csv", target: label}
  slow:
    train: train.py:slow
    data: {path: "data/*.csv", target: label}
    timeout_s: 1
  crash:
    train: train.py:crash
    data: {path: "data/*.csv", target: label}
  linger:
    train: train.py:linger
    data: {path: "data/*.csv", target: label}
    params: {pid_file: training.pid}
  checked:
    train: train.py:train
    data: {path: "bad/*.csv", target: label}
    validation: {min_rows: 10, max_missing: 0.0, ranges: {x0: [-10, 10]}}
  mlp:
    train: train.py:torch_mlp
    data: {function: "train.py:blobs"}
    metrics: [accuracy, f1_macro, log_loss]
    gate: {min: {accuracy: 0.8}}
'''


@pytest.fixture()
def project(tmp_path: Path) -> dict[str, Spec]:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "train.py").write_text(textwrap.dedent(TRAIN_PY))
    (root / "modelyard.yaml").write_text(YAML)
    labeled_frame(300, seed=1).to_csv(root / "data" / "part-1.csv", index=False)
    return load_project(root / "modelyard.yaml")


def test_first_run_registers_and_promotes(project: dict[str, Spec], registry: Registry):
    stages: list[str] = []
    result = run_pipeline(project["clf"], registry, progress=stages.append, actor="ci")
    assert stages == ["load data", "validate", "train", "evaluate", "gate", "register", "promote"]
    assert result.promoted and result.version is not None and result.version.version == 1
    assert result.run.status == "succeeded" and result.run.version == 1
    assert result.metrics["accuracy"] > 0.8 and set(result.metrics) == {"accuracy", "f1",
                                                                          "roc_auc"}
    assert result.champion_metrics is None and result.gate.passed
    assert "training on 240 rows" in result.run.logs
    version = registry.resolve("clf@production")
    assert version.version == 1 and version.flavor == "sklearn"
    assert version.meta["task"] == "classification" and version.run_id == result.run.id
    assert len(version.data_fingerprint or "") == 64
    assert version.environment["packages"]["scikit-learn"]
    assert "git_sha" in version.code_ref
    assert set(version.reference_stats["features"]) == {"x0", "x1", "x2", "x3"}
    events = registry.alias_history("clf", "production")
    assert events[0].reason.startswith(f"run {result.run.id}: gate passed")
    predictor = open_version(version, registry)
    assert predictor.predict([{"x0": 3.0, "x1": 0.0, "x2": 0.0, "x3": 0.0}]).tolist() == [1]


def test_nothing_new_registers_nothing_unless_forced(project: dict[str, Spec],
                                                     registry: Registry):
    first = run_pipeline(project["clf"], registry)
    stages: list[str] = []
    again = run_pipeline(project["clf"], registry, progress=stages.append)
    assert stages == ["load data", "validate"]  # nothing trained
    assert again.unchanged is not None and again.unchanged.ref == "clf:1"
    assert again.version is None and not again.promoted and not again.gate.passed
    assert (again.run.status, again.run.version) == ("unchanged", None)
    assert again.run.failure_reason.startswith("unchanged: identical to clf:1")
    assert [v.version for v in registry.list_versions("clf")] == [1]
    assert registry.get_run(first.run.id).status == "succeeded"

    forced = run_pipeline(project["clf"], registry, force=True)
    assert forced.unchanged is None and forced.version is not None
    assert forced.version.version == 2
    # each of data, params and spec counts: any change trains and registers
    other_params = project["clf"].model_copy(update={"params": {"C": 0.5}})
    assert run_pipeline(other_params, registry).version.version == 3
    assert run_pipeline(other_params, registry).unchanged.ref == "clf:3"
    other_spec = other_params.model_copy(update={"description": "now documented"})
    assert run_pipeline(other_spec, registry).version.version == 4
    labeled_frame(50, seed=9).to_csv(project["clf"].root / "data" / "part-9.csv", index=False)
    assert run_pipeline(other_spec, registry).version.version == 5
    # and so does the code (the project is no git repository: its .py files are hashed)
    train_py = project["clf"].root / "train.py"
    train_py.write_text(train_py.read_text() + "\n# a change\n")
    assert run_pipeline(other_spec, registry).version.version == 6
    assert run_pipeline(other_spec, registry).unchanged.ref == "clf:6"


def test_worse_candidate_is_rejected_and_production_stays(project: dict[str, Spec],
                                                          registry: Registry):
    run_pipeline(project["clf"], registry)
    weak = project["clf"].model_copy(update={"params": {"weak": True}})
    with pytest.raises(GateFailed) as info:
        run_pipeline(weak, registry, trigger="schedule")
    err = info.value
    assert any("below champion clf:1" in r for r in err.reasons)
    assert "production stays at clf:1" in str(err)
    run = registry.get_run(err.run_id)
    assert run.status == "rejected" and run.trigger == "schedule" and run.version is None
    assert run.gate["passed"] is False and run.gate["champion"]["ref"] == "clf:1"
    assert [v.version for v in registry.list_versions("clf")] == [1]
    assert registry.resolve("clf@production").version == 1


def test_new_data_is_picked_up_and_a_lenient_gate_passes(project: dict[str, Spec],
                                                         registry: Registry):
    first = run_pipeline(project["clf"], registry)
    labeled_frame(200, seed=2).to_csv(project["clf"].root / "data" / "part-2.csv", index=False)
    lenient = project["clf"].model_copy(update={"gate": GateSpec(
        champion=ChampionRule(metric="f1", max_drop=0.5))})
    second = run_pipeline(lenient, registry, promote=False)
    assert second.version is not None and second.version.version == 2
    assert not second.promoted and registry.resolve("clf@production").version == 1
    assert second.version.data_fingerprint != first.version.data_fingerprint
    assert second.champion_metrics is not None and "f1" in second.champion_metrics
    assert 0.8 < second.metrics["roc_auc"] <= 1.0


def test_a_train_function_that_raises_is_a_failed_run(project: dict[str, Spec],
                                                       registry: Registry):
    with pytest.raises(TrainingError) as info:
        run_pipeline(project["boom"], registry)
    message = str(info.value)
    assert "train function raised ValueError: bad hyperparameter" in message
    assert f"see logs: modelyard runs show {info.value.run_id}" in message
    run = registry.get_run(info.value.run_id)
    assert run.status == "failed" and "bad hyperparameter" in (run.failure_reason or "")
    assert "about to fail" in run.logs and "Traceback" in run.logs
    with pytest.raises(NotFoundError):
        registry.list_versions("boom")


def test_malformed_data_fails_validation_with_a_report(project: dict[str, Spec],
                                                        registry: Registry):
    bad = project["checked"].root / "bad"
    bad.mkdir()
    frame = labeled_frame(30, seed=3)
    frame.loc[0, "x0"] = 99.0
    frame.loc[1:3, "x1"] = np.nan
    frame.to_csv(bad / "d.csv", index=False)
    with pytest.raises(DataValidationError) as info:
        run_pipeline(project["checked"], registry)
    assert str(info.value).startswith("training data failed 2 checks:")
    assert len(info.value.report) == 2
    run = registry.get_run(info.value.run_id)
    assert run.status == "failed" and "training data failed these checks:" in run.logs


def test_timeout_stops_training(project: dict[str, Spec], registry: Registry):
    with pytest.raises(TrainingError, match=r"longer than timeout_s=1s and was stopped"):
        run_pipeline(project["slow"], registry)


def test_a_killed_child_is_reported(project: dict[str, Spec], registry: Registry):
    with pytest.raises(TrainingError, match="killed by signal SIGKILL") as info:
        run_pipeline(project["crash"], registry)
    assert registry.get_run(info.value.run_id).status == "failed"


def test_a_decorated_callable_trains_in_the_child(tmp_path: Path, registry: Registry):
    from modelyard.entrypoints import import_file

    (tmp_path / "decl.py").write_text(textwrap.dedent(TRAIN_PY))
    module = import_file(tmp_path / "decl.py")
    spec = Spec.parse({"name": "decl", "train": module.train, "root": tmp_path,
                       "data": {"function": module.blobs}, "metrics": ["accuracy"]})
    result = run_pipeline(spec, registry)
    assert result.version is not None and result.metrics["accuracy"] > 0.8


def test_a_torch_model_goes_through_the_pipeline(project: dict[str, Spec], registry: Registry):
    pytest.importorskip("torch")
    result = run_pipeline(project["mlp"], registry)
    assert result.version is not None and result.version.flavor == "torch"
    assert result.metrics["accuracy"] > 0.8 and result.metrics["log_loss"] < 1.0
    # what the saved model answers is recorded, so OIP metadata states it before any load
    assert result.version.signature["outputs"] == [
        {"name": "predictions", "dtype": "int64", "shape": []},
        {"name": "scores", "dtype": "float32", "shape": [3]}]
    predictor = open_version(registry.resolve("mlp@production"), registry)
    labels = predictor.predict(np.array([[0, 0, 0, 0], [3, 3, 0, 0]], dtype=np.float32))
    assert labels.tolist() == [0, 1]


CUSTOM_STEP = '''
from sklearn.base import BaseEstimator, TransformerMixin


class Doubler(TransformerMixin, BaseEstimator):
    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X * 2.0
'''

CUSTOM_TRAIN = '''
from custom_steps import Doubler
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline


def train(X, y, params):
    return make_pipeline(Doubler(), LogisticRegression()).fit(X, y)
'''


def test_custom_classes_need_trusted_types(tmp_path: Path, registry: Registry,
                                           monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "custom"
    (root / "data").mkdir(parents=True)
    (root / "custom_steps.py").write_text(CUSTOM_STEP)
    (root / "train.py").write_text(CUSTOM_TRAIN)
    labeled_frame(200, seed=3).to_csv(root / "data" / "part-1.csv", index=False)
    base = {"name": "custom", "train": "train.py:train", "root": root,
            "data": {"path": "data/*.csv", "target": "label"}, "metrics": ["accuracy"]}

    with pytest.raises(UnsafeArtifactError, match=r"custom_steps\.Doubler"):
        run_pipeline(Spec.parse(base), registry)
    with pytest.raises(NotFoundError):
        registry.get_model("custom")  # nothing was registered

    trusted = Spec.parse({**base, "trusted_types": ["custom_steps.Doubler"]})
    result = run_pipeline(trusted, registry)
    monkeypatch.syspath_prepend(str(root))  # the class must be importable where it loads
    model = open_version(result.version, registry)
    assert model.predict(labeled_frame(5, seed=4).drop(columns="label")).shape == (5,)


def _wait_for(condition: Callable[[], object], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s  # a bound on a hang, not a speed requirement
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_a_train_command_killed_with_sigkill_is_shown_abandoned(project: dict[str, Spec],
                                                                 tmp_path: Path):
    spec = project["linger"]
    home = tmp_path / "home"
    pid_file = spec.root / "training.pid"
    command = [sys.executable, "-c", "from modelyard.cli import main; main()", "--home",
               str(home), "train", "linger", "--project", str(spec.root / "modelyard.yaml")]
    train = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(pid_file.exists, "the train function to start")
        child = int(pid_file.read_text())
        assert is_running(child, None)
        train.kill()  # SIGKILL: no handler runs, nothing records how the run ended
        train.wait()
    finally:
        if train.poll() is None:
            train.kill()
            train.wait()

    listed = CliRunner().invoke(main, ["--home", str(home), "runs", "linger", "--json"])
    assert listed.exit_code == 0, listed.output
    [run] = json.loads(listed.stdout)
    assert run["status"] == "failed"
    assert run["failure_reason"] == f"abandoned: process {train.pid} on {this_host()} is gone"
    shown = CliRunner().invoke(main, ["--home", str(home), "runs", "show", run["id"]])
    assert "abandoned" in shown.stdout and "running" not in shown.stdout.splitlines()[0]
    # the training child follows its parent instead of training on for no one
    _wait_for(lambda: not is_running(child, None), "the orphaned training child to end", 60)
