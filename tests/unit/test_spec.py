"""Specs: yaml and decorator give the same validated object; bad declarations fail clearly."""

import textwrap

import pytest

from modelyard.errors import ConfigError
from modelyard.spec import ServingSpec, Spec, declared, load_project, model

GOOD = """
models:
  fraud:
    train: train.py:train
    data: {path: "data/*.csv", target: is_fraud}
    metrics: [f1, accuracy]
    gate: {min: {f1: 0.5}, champion: {metric: f1, max_drop: 0.01}}
    serving: {device: cpu, batching: {max_batch_size: 64, max_delay_ms: 1}}
    rollout: {strategy: canary, steps: [10, 50, 100]}
    retrain: {schedule: "0 3 * * *", drift_share: 0.3}
"""


def write(tmp_path, text, name="modelyard.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_yaml_spec_is_validated_and_rooted(tmp_path):
    specs = load_project(write(tmp_path, GOOD))
    spec = specs["fraud"]
    assert spec.root == tmp_path
    assert spec.gate.champion.max_drop == 0.01
    assert spec.serving.batching.max_batch_size == 64
    assert spec.rollout.steps == [10, 50, 100]
    assert spec.data.holdout == 0.2


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("models:\n  m:\n    train: t.py:f\n    data: {path: a.csv}\n", "target"),
        ("models:\n  m:\n    train: t.py:f\n    data: {path: a.csv, target: y}\n"
         "    gate: {min: {auc: 0.5}}\n", "auc"),
        ("models:\n  m:\n    train: t.py:f\n    data: {path: a.csv, target: y}\n"
         "    serving: {device: gpu}\n", "device"),
        ("models:\n  m:\n    train: t.py:f\n    data: {path: a.csv, target: y}\n"
         "    colour: red\n", "colour"),
        ("models:\n  m:\n    train: t.py:f\n    data: {path: a.csv, target: y}\n"
         "    retrain: {schedule: 'every day'}\n", "cron"),
        ("models: [1, 2]\n", "models"),
        ("models:\n  m: {train: [\n", "not valid YAML"),
        ("nodes: {}\n", "top level"),
    ],
)
def test_bad_yaml_names_the_problem(tmp_path, body, fragment):
    with pytest.raises(ConfigError) as info:
        load_project(write(tmp_path, body))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_project_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="modelyard init"):
        load_project(tmp_path / "modelyard.yaml")


def test_decorator_builds_the_same_spec(tmp_path):
    @model(name="deco", data={"path": "x.csv", "target": "y"}, metrics=["f1"],
           gate={"min": {"f1": 0.1}})
    def train(X, y, params):
        return None

    assert isinstance(train.spec, Spec)
    assert declared()["deco"] is train.spec
    assert train.spec.train is train
    from_yaml = Spec.parse({"name": "deco", "train": "t.py:train",
                            "data": {"path": "x.csv", "target": "y"},
                            "metrics": ["f1"], "gate": {"min": {"f1": 0.1}}})
    assert from_yaml.gate == train.spec.gate


def test_include_imports_decorated_specs(tmp_path):
    (tmp_path / "models.py").write_text(textwrap.dedent("""
        import modelyard

        @modelyard.model(name="included", data={"function": "models.py:data"}, metrics=["rmse"])
        def train(X, y, params):
            return None
    """))
    specs = load_project(write(tmp_path, "include: [models.py]\n"))
    assert "included" in specs
    assert specs["included"].root == tmp_path


def test_monitoring_rules_watch_declared_metrics_or_known_signals():
    base = {"name": "m", "train": "t.py:train", "data": {"path": "d.csv", "target": "y"},
            "metrics": ["f1"]}
    spec = Spec.parse({**base, "monitoring": {"alerts": [
        {"on": "f1", "below": 0.7}, {"on": "drift_share", "above": 0.3, "severity": "critical"},
        {"on": "p99_ms", "above": 50}]}, "serving": {"sensitive": ["card"]}})
    assert [r.title for r in spec.monitoring.alerts] == [
        "f1 below 0.7", "drift_share above 0.3", "p99_ms above 50.0"]
    assert spec.serving.sensitive == {"card": "hash"}
    with pytest.raises(ConfigError, match="watch accuracy: use a metric listed under metrics"):
        Spec.parse({**base, "monitoring": {"alerts": [{"on": "accuracy", "below": 0.9}]}})
    with pytest.raises(ConfigError, match="exactly one of above or below"):
        Spec.parse({**base, "monitoring": {"alerts": [{"on": "f1"}]}})
    with pytest.raises(ConfigError, match="sensitive"):
        Spec.parse({**base, "serving": {"sensitive": {"card": "encrypt"}}})


def test_alert_rules_key_on_loads_from_yaml(tmp_path):
    # YAML 1.1 reads `on` as the boolean true; the project loader keeps YAML 1.2 booleans only
    path = write(tmp_path, """
        models:
          fraud:
            train: train.py:train
            data: {path: "data/*.csv", target: is_fraud}
            metrics: [f1]
            serving: {preload: false}
            monitoring:
              alerts:
                - {on: f1, below: 0.5, severity: critical}
                - on: drift_share
                  above: 0.3
            retrain: {auto_rollout: yes, schedule: "0 3 * * *"}
    """)
    spec = load_project(path)["fraud"]
    assert [(r.on, r.below, r.above) for r in spec.monitoring.alerts] == [
        ("f1", 0.5, None), ("drift_share", None, 0.3)]
    assert spec.serving.preload is False  # true/false stay booleans
    # `yes` is a string now, and pydantic reads the string "yes" as a boolean
    assert spec.retrain.auto_rollout is True


@pytest.mark.parametrize("raw", [b"models:\n  fraud: \xff\xfe\n", b"\x80models: {}\n"])
def test_a_project_that_is_not_utf8_is_a_config_error(tmp_path, raw):
    path = tmp_path / "modelyard.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=r"not UTF-8 text .*line \d+.*save it as UTF-8"):
        load_project(path)


def test_the_prediction_log_is_kept_30_days_unless_the_spec_says_otherwise():
    base = {"name": "m", "train": "t.py:train", "data": {"path": "d.csv", "target": "y"}}
    assert Spec.parse(base).monitoring.retention_days == 30
    assert Spec.parse({**base, "monitoring": {"retention_days": 0.5}}).monitoring.retention_days \
        == 0.5
    assert Spec.parse({**base, "monitoring": {"retention_days": None}}).monitoring \
        .retention_days is None  # kept forever
    with pytest.raises(ConfigError, match="retention_days"):
        Spec.parse({**base, "monitoring": {"retention_days": 0}})
ROLLOUT_BASE = "models:\n  m:\n    train: t.py:f\n    data: {path: a.csv, target: y}\n" \
               "    metrics: [f1]\n"


@pytest.mark.parametrize(
    ("rollout", "fragment"),
    [
        ("{strategy: canary, metric: auc}", "rollout.metric auc is not listed"),
        ("{strategy: ab, steps: [10, 50]}", "one percentage"),
        ("{strategy: ab, steps: [100]}", "both groups"),
        ("{strategy: blue-green, steps: [50, 100]}", "switches all traffic at once"),
        ("{max_p99_ratio: 0.5}", "max_p99_ratio"),
        ("{max_latency_ratio: 0.9}", "max_latency_ratio"),
    ],
)
def test_a_rollout_section_that_cannot_start_fails_when_loaded(tmp_path, rollout, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_project(write(tmp_path, f"{ROLLOUT_BASE}    rollout: {rollout}\n"))


def test_a_declared_rollout_stages_the_new_version():
    fields = {"name": "m", "train": "t.py:f", "data": {"path": "a.csv", "target": "y"},
              "metrics": ["f1"]}
    assert not Spec.parse(fields).rollout.staged  # direct by default: production moves
    staged = Spec.parse({**fields, "rollout": {"strategy": "shadow", "steps": [20],
                                               "metric": "f1"}}).rollout
    assert staged.staged and staged.metric == "f1" and staged.steps == [20]


@pytest.mark.parametrize(("serving", "accelerated", "pool"), [
    ({}, False, "cpu"),                       # auto on a classic flavor: the CPU pool
    ({}, True, "gpu"),                        # auto on a deep-learning flavor: the GPU pool
    ({"device": "cpu"}, True, "cpu"),
    ({"device": "cuda:1"}, False, "gpu"),
    ({"device": "cuda", "pool": "nlp-a100"}, True, "nlp-a100"),
])
def test_a_model_serves_from_the_pool_its_device_implies_unless_named(serving, accelerated, pool):
    assert ServingSpec(**serving).pool_for(accelerated=accelerated) == pool


@pytest.mark.parametrize("pool", ["GPU", "-cpu", "a_b", "x" * 64, ""])
def test_a_pool_name_must_be_a_kubernetes_name(pool):
    with pytest.raises(ValueError, match="pool"):
        ServingSpec(pool=pool)
