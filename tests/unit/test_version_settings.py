"""A version's registered settings: parsed once, by the spec's models, with one set of defaults."""

import logging
from pathlib import Path

import pytest

from modelyard.errors import ConfigError
from modelyard.monitoring.monitor import Monitor
from modelyard.registry import Registry
from modelyard.rollout.plan import plan_rollout
from modelyard.serving.runner import serving_spec
from modelyard.spec import MonitorSpec, RolloutSpec, ServingSpec, Spec
from modelyard.version_settings import VersionSettings

BASE = {"name": "m", "train": "t.py:train", "data": {"path": "d.csv", "target": "y"}}


def test_the_defaults_are_the_spec_models_own() -> None:
    bare = VersionSettings.from_meta({})
    assert bare == VersionSettings()
    # the same objects a spec that says nothing gets: one place defines every default
    spec = Spec.parse(BASE)
    assert (bare.serving, bare.monitoring, bare.rollout) == (
        spec.serving, spec.monitoring, spec.rollout)
    assert (bare.serving, bare.monitoring, bare.rollout) == (
        ServingSpec(), MonitorSpec(), RolloutSpec())
    assert bare.metrics is None
    assert not bare.serving.model_fields_set and not bare.rollout.model_fields_set


def test_what_the_pipeline_stores_reads_back_the_same(tmp_path: Path) -> None:
    spec = Spec.parse({**BASE, "metrics": ["f1", "accuracy"],
                       "serving": {"device": "cpu", "batching": {"max_delay_ms": 3},
                                   "sample_rate": 0.25, "sensitive": ["card"]},
                       "monitoring": {"window_s": 60, "retention_days": None},
                       "rollout": {"strategy": "canary", "steps": [10, 100]}})
    meta = VersionSettings.from_spec(spec).to_meta()
    assert set(meta) == {"serving", "metrics", "monitoring", "rollout"}
    back = VersionSettings.from_meta(meta)
    assert back == VersionSettings.from_spec(spec)
    assert back.metrics == ("f1", "accuracy")
    assert back.serving.sensitive == {"card": "hash"} and back.serving.sample_rate == 0.25
    assert back.monitoring.retention_days is None and back.monitoring.window_s == 60
    # what a spec chose stays told apart from a default (batching delay, a declared strategy)
    assert "max_delay_ms" in back.serving.batching.model_fields_set
    assert "max_batch_size" not in back.serving.batching.model_fields_set
    assert back.rollout.model_fields_set == {"strategy", "steps"}


def test_a_version_registered_without_the_sections_gets_the_spec_defaults(
        registry: Registry, artifact_dir) -> None:
    version = registry.register("bare", artifact_dir(), flavor="sklearn", meta={},
                                metrics={"rmse": 0.5, "mae": 0.25})
    settings = VersionSettings.of(version)
    assert settings == VersionSettings()
    # every reader sees the same defaults
    assert Monitor.settings(version).monitoring == MonitorSpec()
    assert Monitor.settings(version).monitoring.retention_days == 30
    assert serving_spec(version.meta) == ServingSpec()
    plan = plan_rollout(version.meta)
    assert plan.every_s == RolloutSpec().every_s and plan.rules["metric"] is None
    # monitoring falls back to the metrics measured at registration; rollouts to none
    assert settings.watched_metrics(version.metrics) == ["mae", "rmse"]
    assert VersionSettings.from_meta({"metrics": []}).watched_metrics({"rmse": 1}) == []


@pytest.mark.parametrize(("meta", "field"), [
    ({"serving": {"batching": {"max_queue": 0}}}, "serving.batching.max_queue"),
    ({"serving": {"device": "tpu"}}, "serving.device"),
    ({"serving": {"nonsense": 1}}, "serving.nonsense"),
    ({"monitoring": {"window_s": -1}}, "monitoring.window_s"),
    ({"monitoring": {"alerts": [{"on": "f1"}]}}, "monitoring.alerts.0"),
    ({"rollout": {"strategy": "sideways"}}, "rollout.strategy"),
    ({"rollout": "canary"}, "rollout: expected a mapping, got str"),
    ({"metrics": "f1"}, "metrics: expected a list of metric names"),
])
def test_a_malformed_section_is_a_config_error_naming_the_field(meta, field) -> None:
    with pytest.raises(ConfigError, match="register a new version") as info:
        VersionSettings.from_meta(meta, "fraud:3")
    assert str(info.value).startswith("fraud:3: its registered ")
    assert f"({field}" in str(info.value)


def test_readers_that_must_go_on_use_the_defaults_and_warn_once(
        caplog: pytest.LogCaptureFixture) -> None:
    meta = {"serving": {"sample_rate": 2}, "monitoring": {"window_s": 60},
            "metrics": ["f1"]}
    with caplog.at_level(logging.WARNING, logger="modelyard.version_settings"):
        for _ in range(3):
            settings = VersionSettings.from_meta(meta, "warned:1", strict=False)
    assert settings.serving == ServingSpec()  # only the broken section falls back
    assert settings.monitoring.window_s == 60 and settings.metrics == ("f1",)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1, warned
    assert "warned:1: its registered serving section is invalid (serving.sample_rate" in warned[0]
    assert warned[0].endswith("using the defaults of serving meanwhile")


def test_the_settings_are_frozen() -> None:
    settings = VersionSettings()
    with pytest.raises(AttributeError):
        settings.metrics = ("f1",)  # type: ignore[misc]
