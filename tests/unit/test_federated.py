"""The parts of federated training that need no Flower: a scikit-learn model's weights read and
set, a site's training step on its own file, averaging, and each round's gate and registration
in a real (SQLite) registry; the ``federate`` command's refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.errors import ConfigError, FederationError, GateFailed
from modelyard.federated import estimators, site
from modelyard.federated.deployment import config_arg, parse_address
from modelyard.federated.rounds import (
    Federation,
    SiteReport,
    mean_metrics,
    plan,
    server_holdout,
    weighted_average,
)
from modelyard.registry import Registry
from modelyard.spec import Spec
from modelyard.testing import labeled_frame

FEATURES = ["x0", "x1", "x2", "x3"]


@pytest.mark.parametrize("name", ["LogisticRegression", "SGDClassifier", "SGDRegressor",
                                  "MLPClassifier", "MLPRegressor"])
def test_weights_read_from_one_model_fit_another_built_alike(name: str) -> None:
    rows = labeled_frame(200, seed=1)
    classes = [0, 1] if estimators.is_classifier(name) else None
    target = rows.label.to_numpy() if classes else rows.x0.to_numpy()
    params = {"random_state": 0, **({"hidden_layer_sizes": [8]} if "MLP" in name else {})}
    trained = estimators.build(name, params, classes=classes, features=FEATURES)
    estimators.fit_local(trained, rows[FEATURES], target, classes=classes, epochs=3)
    other = estimators.build(name, params, classes=classes, features=FEATURES)
    estimators.set_weights(other, estimators.get_weights(trained))
    np.testing.assert_allclose(other.predict(rows[FEATURES]), trained.predict(rows[FEATURES]))


def test_weights_of_another_shape_are_refused() -> None:
    model = estimators.build("SGDClassifier", {}, classes=[0, 1], features=FEATURES)
    with pytest.raises(FederationError, match="do not fit"):
        estimators.set_weights(model, [np.zeros((1, 3)), np.zeros(1)])


def test_logistic_regression_refuses_a_site_without_every_class() -> None:
    rows = labeled_frame(100, seed=2)
    model = estimators.build("LogisticRegression", {}, classes=[0, 1, 2], features=FEATURES)
    with pytest.raises(FederationError, match=r"no rows of \[2\].*SGDClassifier"):
        estimators.fit_local(model, rows[FEATURES], rows.label.to_numpy(), classes=[0, 1, 2],
                             epochs=1)


def test_weighted_average_weights_each_site_by_its_rows() -> None:
    out = weighted_average([([np.array([1.0, 1.0]), np.array([0.0])], 1),
                            ([np.array([5.0, 9.0]), np.array([4.0])], 3)])
    np.testing.assert_allclose(out[0], [4.0, 7.0])
    np.testing.assert_allclose(out[1], [3.0])
    with pytest.raises(FederationError, match="different shapes"):
        weighted_average([([np.zeros(2)], 1), ([np.zeros(3)], 1)])
    with pytest.raises(FederationError, match="no site"):
        weighted_average([])


def test_mean_metrics_weights_sites_by_rows() -> None:
    reports = [SiteReport("a", 100, {"accuracy": 0.9}), SiteReport("b", 300, {"accuracy": 0.5}),
               SiteReport("c", 0, {"accuracy": 0.0})]
    assert mean_metrics(reports) == pytest.approx({"accuracy": 0.6})


def test_a_site_trains_on_its_file_and_sends_weights_counts_and_metrics(tmp_path: Path) -> None:
    labeled_frame(300, seed=5).to_csv(tmp_path / "site.csv", index=False)
    task = site.Task.from_json(site.Task(
        model="risk", estimator="SGDClassifier", target="label",
        params={"loss": "log_loss", "random_state": 0}, features=FEATURES, classes=[0, 1],
        metrics=["accuracy"], epochs=5).to_json())
    data = site.load(tmp_path / "site.csv", task)
    assert site.describe(data, task) == {"features": FEATURES, "classes": [0, 1], "rows": 300}
    start = estimators.get_weights(estimators.build("SGDClassifier", task.params,
                                                    classes=[0, 1], features=FEATURES))
    update = site.train(task, data, start)
    assert update.examples == 240  # the holdout's 20% stays at the site for its metrics
    assert update.metrics["accuracy"] > 0.8
    assert not np.allclose(update.weights[0], start[0])
    rows, metrics = site.evaluate(task, data, update.weights)
    assert rows == 60 and metrics["accuracy"] == pytest.approx(update.metrics["accuracy"])

    other = site.Task(**{**task.__dict__, "features": ["x0", "x1", "x2", "other"]})
    with pytest.raises(Exception, match="other"):
        site.train(other, site.load(tmp_path / "site.csv", task), start)


def _spec(tmp_path: Path, **gate: Any) -> Spec:
    labeled_frame(400, seed=7).to_csv(tmp_path / "server.csv", index=False)
    return Spec.parse({
        "name": "risk", "root": tmp_path, "data": {"path": "server.csv", "target": "label"},
        "params": {"loss": "log_loss", "random_state": 0}, "metrics": ["accuracy"],
        "gate": gate, "federated": {"estimator": "SGDClassifier"}})


def _good_weights(task: site.Task, tmp_path: Path) -> list[np.ndarray]:
    labeled_frame(500, seed=8).to_csv(tmp_path / "site.csv", index=False)
    data = site.load(tmp_path / "site.csv", task)
    start = estimators.get_weights(estimators.build(task.estimator, task.params,
                                                    classes=task.classes, features=FEATURES))
    return site.train(task, data, start).weights


def test_each_round_is_gated_and_a_passing_one_registered_with_its_lineage(
        registry: Registry, tmp_path: Path) -> None:
    spec = _spec(tmp_path, min={"accuracy": 0.8}, champion={"metric": "accuracy",
                                                            "max_drop": 0.0})
    run = registry.start_run("risk", kind="federated", details={"flower": {"rounds": 3}})
    federation = Federation(spec, registry, run.id, holdout=server_holdout(spec))
    task, start = federation.start({})
    assert (task.features, task.classes) == (FEATURES, [0, 1])

    reports = [SiteReport("site-a", 240, {"accuracy": 0.91}),
               SiteReport("site-b", 160, {"accuracy": 0.88})]
    zero = [np.zeros_like(w) for w in start]  # predicts one class: about half right
    first = federation.conclude(1, zero, reports)
    assert first.version is None and not first.gate["passed"]
    assert registry.list_models() == []

    good = _good_weights(task, tmp_path)
    second = federation.conclude(2, good, reports)
    assert (second.version, second.promoted) == (1, True)
    version = registry.get_version("risk", 1)
    assert version.run_id == run.id and version.metrics["accuracy"] >= 0.8
    assert version.meta["federated"]["round"] == 2
    assert version.meta["federated"]["sites"] == ["site-a", "site-b"]
    assert version.meta["federated"]["site_metrics"]["site-b"]["metrics"] == {"accuracy": 0.88}

    third = federation.conclude(3, zero, reports)  # worse than the champion it just made
    assert third.version is None
    assert any("champion risk:1" in reason for reason in third.gate["reasons"])
    federation.finish()
    finished = registry.get_run(run.id)
    assert (finished.status, finished.version, finished.promoted) == ("succeeded", 1, True)
    details = finished.details or {}
    assert details["flower"] == {"rounds": 3}  # what the run started with stays
    assert [r["version"] for r in details["federated"]["rounds"]] == [None, 1, None]


def test_a_run_no_round_passes_ends_rejected(registry: Registry, tmp_path: Path) -> None:
    spec = _spec(tmp_path, min={"accuracy": 0.99})
    run = registry.start_run("risk", kind="federated")
    federation = Federation(spec, registry, run.id, holdout=server_holdout(spec))
    _, start = federation.start({})
    federation.conclude(1, start, [SiteReport("a", 10, {"accuracy": 0.5})])
    with pytest.raises(GateFailed, match="no round's model passed"):
        federation.finish()
    assert registry.get_run(run.id).status == "rejected"


def test_without_a_server_holdout_the_sites_must_agree_and_their_metrics_gate(
        registry: Registry, tmp_path: Path) -> None:
    spec = Spec.parse({"name": "risk", "root": tmp_path, "metrics": ["accuracy"],
                       "gate": {"min": {"accuracy": 0.7}},
                       "federated": {"estimator": "SGDClassifier", "classes": [0, 1],
                                     "target": "label"}})
    assert server_holdout(spec) is None
    schemas = {"a": {"features": FEATURES, "classes": [0], "rows": 10},
               "b": {"features": ["x0", "x1"], "classes": [1], "rows": 10}}
    with pytest.raises(FederationError, match="same feature columns"):
        plan(spec, schemas, None)
    schemas["b"]["features"] = FEATURES
    assert plan(spec, schemas, None).classes == [0, 1]
    run = registry.start_run("risk", kind="federated")
    federation = Federation(spec, registry, run.id, holdout=None)
    _, start = federation.start(schemas)
    record = federation.conclude(1, start, [SiteReport("a", 30, {"accuracy": 0.9}),
                                            SiteReport("b", 10, {"accuracy": 0.5}, "global")])
    assert record.metrics == pytest.approx({"accuracy": 0.8})
    assert record.version == 1
    assert registry.get_version("risk", 1).meta["federated"]["evaluated_on"] == "site holdouts"


def test_a_federated_spec_needs_no_train_function_but_a_known_estimator() -> None:
    spec = Spec.parse({"name": "m", "federated": {"estimator": "MLPClassifier",
                                                  "target": "y"}})
    assert spec.federated is not None and spec.federated.rounds == 3
    with pytest.raises(ConfigError, match=r"federated\.target required"):
        Spec.parse({"name": "m", "federated": {"estimator": "MLPClassifier"}})
    with pytest.raises(ConfigError, match="estimator"):
        Spec.parse({"name": "m", "federated": {"estimator": "RandomForestClassifier",
                                               "target": "y"}})
    with pytest.raises(ConfigError, match="train and data required"):
        Spec.parse({"name": "m"})


def test_flower_config_values_are_quoted_and_addresses_checked() -> None:
    assert config_arg({"data": "/a b/c.csv", "rounds": 3}) == "data='/a b/c.csv' rounds=3"
    with pytest.raises(ConfigError, match="cannot hold"):
        config_arg({"data": "it's.csv"})
    assert parse_address("0.0.0.0:9092") == ("0.0.0.0", 9092)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_address("localhost")


def test_federate_refuses_in_one_line_with_its_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "modelyard.yaml").write_text(
        "models:\n  plain:\n    train: t.py:train\n    data: {path: d.csv, target: y}\n")
    runner = CliRunner()
    home = ["--home", str(tmp_path / "home")]
    project = ["--project", str(tmp_path / "modelyard.yaml")]

    out = runner.invoke(main, [*home, "federate", "plain", *project])
    assert out.exit_code == 2 and "--insecure" in out.output
    out = runner.invoke(main, [*home, "federate", "nope", *project, "--insecure"])
    assert out.exit_code == 3 and "declares no model 'nope'" in out.output
    out = runner.invoke(main, [*home, "federate", "plain", *project, "--insecure"])
    assert out.exit_code == 2 and "no federated section" in out.output
    (tmp_path / "fair.yaml").write_text(
        "models:\n  fair:\n    metrics: [accuracy]\n"
        "    gate: {fairness: [{group: sex, metric: accuracy, max_gap: 0.1}]}\n"
        "    federated: {estimator: SGDClassifier, target: y}\n")
    out = runner.invoke(main, [*home, "federate", "fair", "--project",
                               str(tmp_path / "fair.yaml"), "--insecure"])
    assert out.exit_code == 2 and "gate.fairness" in out.output, out.output
    out = runner.invoke(main, [*home, "federate", "plain", *project, "--insecure",
                               "--address", "nowhere"])
    assert out.exit_code == 2 and "HOST:PORT" in out.output
    out = runner.invoke(main, ["federate", "client", "plain", "--data",
                               str(tmp_path / "missing.csv"), "--insecure"])
    assert out.exit_code == 2 and "no such file" in out.output
    out = runner.invoke(main, ["--server", "http://127.0.0.1:9", "federate", "plain", *project,
                               "--insecure"])
    assert out.exit_code == 2 and "cannot act through a server" in out.output
