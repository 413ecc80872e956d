"""Serving settings tuned at serve time (``modelyard serve --model-config``): checked when the
server starts, merged over what each version registered, applied to its batching and log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.config import Settings
from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app, overrides
from modelyard.serving.runner import batch_policy, serving_spec
from modelyard.spec import ServingSpec
from modelyard.testing import register_constant, register_hgb

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


def tune(registered: dict[str, Any], override: dict[str, Any]) -> ServingSpec:
    """``registered`` as a version carries it, tuned for model ``m`` by ``override``."""
    return overrides.tuned(serving_spec({"serving": registered}, "m:1"), {"m": override}, "m")


def test_an_override_merges_field_by_field_over_the_registered_settings() -> None:
    registered = {"batching": {"max_batch_size": 8, "max_delay_ms": 3}, "sample_rate": 0.5}
    spec = tune(registered, {"batching": {"max_batch_size": 64}})
    assert spec.batching.max_batch_size == 64
    assert spec.batching.max_delay_ms == 3  # the version's own delay stays
    assert spec.sample_rate == 0.5
    assert tune(registered, {}).batching.max_batch_size == 8
    assert tune({}, {"sample_rate": 0.1}).sample_rate == 0.1
    untouched = serving_spec({"serving": registered}, "m:1")
    assert overrides.tuned(untouched, {"other": {"sample_rate": 0.1}}, "m") is untouched


def test_every_model_then_its_own_entry() -> None:
    tuned = overrides.check({"*": {"batching": {"max_queue": 9, "max_batch_size": 2}},
                             "fraud": {"batching": {"max_batch_size": 64}}})
    assert overrides.for_model(tuned, "fraud") == {
        "batching": {"max_queue": 9, "max_batch_size": 64}}
    assert overrides.for_model(tuned, "other") == {
        "batching": {"max_queue": 9, "max_batch_size": 2}}
    assert overrides.for_model({}, "fraud") == {}


def test_an_explicit_delay_at_serve_time_makes_a_classic_model_wait() -> None:
    spec = tune({}, {"batching": {"max_delay_ms": 1.5, "max_batch_size": 48}})
    policy = batch_policy(spec, accelerated=False)
    assert (policy.max_batch_size, policy.max_delay_s) == (48, 0.0015)
    assert batch_policy(tune({}, {}), accelerated=False).max_delay_s == 0.0
    # a delay the version chose stays chosen under an override of something else
    chosen = tune({"batching": {"max_delay_ms": 4}}, {"batching": {"max_batch_size": 8}})
    assert batch_policy(chosen, accelerated=False).max_delay_s == 0.004


@pytest.mark.parametrize(("entry", "fragment"), [
    ({"fraud": {"batching": {"max_batch_size": 0}}}, "models.fraud.batching.max_batch_size"),
    ({"fraud": {"batchng": {}}}, "models.fraud.batchng"),
    ({"fraud": {"sensitive": ["card"]}}, "models.fraud.sensitive cannot be changed"),
    ({"fraud": {"replicas": 2}}, "models.fraud.replicas cannot be changed"),
    ({"fraud": 64}, "models.fraud must be a mapping"),
    ({"*": {"sample_rate": 2}}, "models.*.sample_rate"),
    ([1, 2], "'models' must map model names"),
])
def test_a_bad_entry_is_one_error_naming_the_model_and_field(entry: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        overrides.check(entry)
    assert fragment in str(info.value)
    with pytest.raises(ConfigError):
        ServeOptions(serving_overrides=entry)  # the options check it too (worker processes)


def test_the_file(tmp_path: Path) -> None:
    good = tmp_path / "serve.yaml"
    good.write_text("models:\n  fraud:\n    batching: {max_batch_size: 64, max_delay_ms: 1}\n"
                    "  '*':\n    sample_rate: 0.25\n")
    assert overrides.load(good) == {"fraud": {"batching": {"max_batch_size": 64,
                                                           "max_delay_ms": 1}},
                                    "*": {"sample_rate": 0.25}}
    for text, fragment in [("fraud: {}\n", "top level takes 'models' only"),
                           ("models: [\n", "not valid YAML"),
                           ("models:\n  fraud: {batching: {max_batch_size: -1}}\n",
                            "max_batch_size")]:
        good.write_text(text)
        with pytest.raises(ConfigError) as info:
            overrides.load(good)
        assert fragment in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        overrides.load(tmp_path / "missing.yaml")


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        register_hgb(reg, "tabular", max_iter=5, n_features=3,
                     meta={"serving": {"batching": {"max_batch_size": 8}}})
        register_constant(reg, "const", 1)
        yield reg


async def test_a_server_applies_the_overrides_to_each_model(registry: Registry) -> None:
    tuned = {"tabular": {"batching": {"max_batch_size": 64, "max_delay_ms": 2},
                         "sample_rate": 0.0},
             "*": {"batching": {"max_queue": 99}}}
    app = create_app(registry, ServeOptions(poll_interval_s=3600, serving_overrides=tuned))
    await app.startup()
    try:
        await app.wait_ready()
        tabular = app.catalog.runner_now("tabular")
        const = app.catalog.runner_now("const")
        assert tabular is not None and const is not None
        assert tabular.batcher.policy.max_batch_size == 64  # over the registered 8
        assert tabular.batcher.policy.max_delay_s == 0.002
        assert tabular.batcher.policy.max_queue == 99
        assert const.batcher.policy.max_batch_size == 32  # its own (the default)
        assert const.batcher.policy.max_queue == 99
        assert tabular.log_policy.sample_rate == 0.0  # the log samples none of it
        assert const.log_policy.sample_rate == 1.0
    finally:
        await app.shutdown()


def test_serve_refuses_a_bad_config_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("models:\n  fraud: {batching: {max_batch_size: 0}}\n")
    result = CliRunner().invoke(main, ["--home", str(tmp_path / "home"), "serve",
                                       "--model-config", str(bad)])
    assert result.exit_code == 2
    assert "models.fraud.batching.max_batch_size" in result.output
    assert "Traceback" not in result.output
