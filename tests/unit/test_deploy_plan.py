"""Pools from a project: each model lands where its spec says; each pool knows its needs."""

import pytest

from modelyard.deploy.plan import Pool, plan_pools
from modelyard.errors import ConfigError
from modelyard.spec import Spec


def spec(name, flavor=None, **serving):
    return Spec(name=name, train="train.py:train", data={"path": "x.csv", "target": "y"},
                flavor=flavor, serving=serving)


def test_models_split_into_cpu_and_gpu_pools_by_device_and_flavor():
    specs = {s.name: s for s in (spec("fraud", "sklearn"), spec("churn", "xgboost", device="cpu"),
                                 spec("digits", "torch"), spec("tickets", "tensorflow",
                                                               device="cpu"))}
    assert plan_pools(specs, {}) == [
        Pool("cpu", gpu=False, models=("churn", "fraud", "tickets"),
             flavors=("sklearn", "tensorflow", "xgboost")),
        Pool("gpu", gpu=True, models=("digits",), flavors=("torch",)),
    ]


def test_a_named_pool_needs_a_gpu_when_a_model_in_it_asks_for_cuda():
    specs = {"a": spec("a", "torch", device="cuda:0", pool="nlp"),
             "b": spec("b", "sklearn", pool="nlp")}
    assert plan_pools(specs, {}) == [Pool("nlp", gpu=True, models=("a", "b"),
                                          flavors=("sklearn", "torch"))]


def test_the_flavor_comes_from_the_registry_when_the_spec_names_none():
    assert plan_pools({"a": spec("a")}, {"a": "lightgbm"})[0].flavors == ("lightgbm",)
    with pytest.raises(ConfigError, match="'a' has no flavor"):
        plan_pools({"a": spec("a")}, {})
