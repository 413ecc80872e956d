"""The feature-store parts decided without a store: the spec section, what a version records of
its feature service (and its digest), a request's entity keys, unknown entities."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from modelyard.errors import ConfigError, InputError
from modelyard.features import EntityKeys, FeatureDefinition, FeatureView, unknown_rows
from modelyard.features.definition import unknown_entity
from modelyard.spec import FeaturesSpec, Spec


def definition(**changes: Any) -> FeatureDefinition:
    fields: dict[str, Any] = {
        "store": "feast", "repo": "/srv/features", "service": "driver_activity",
        "entities": ("driver_id",), "timestamp": "event_timestamp",
        "views": (FeatureView("driver_stats", (("conv_rate", "Float64"), ("trips", "Int64"))),
                  FeatureView("driver_day", (("km", "Float32"),)))}
    return FeatureDefinition(**{**fields, **changes})


def test_a_definition_round_trips_through_meta_with_its_features_in_order() -> None:
    d = definition()
    meta = {"features": d.to_meta(), "task": "classification"}
    assert meta["features"]["features"] == ["conv_rate", "trips", "km"]
    assert meta["features"]["feature_views"][1] == {
        "name": "driver_day", "features": [{"name": "km", "dtype": "Float32"}]}
    back = FeatureDefinition.from_meta(meta)
    assert back == d
    assert back is not None and back.digest == d.digest
    assert FeatureDefinition.from_meta({"task": "classification"}) is None
    with pytest.raises(ValueError, match="lacks 'feature_views'"):
        FeatureDefinition.from_meta({"features": {"store": "feast", "repo": "r"}})


def test_the_digest_follows_the_features_not_where_the_repository_lies() -> None:
    d = definition()
    assert d.digest == definition(repo="/elsewhere").digest
    assert d.digest != definition(service="other").digest
    assert d.digest != definition(views=d.views[:1]).digest
    retyped = (FeatureView("driver_stats", (("conv_rate", "Float32"), ("trips", "Int64"))),
               d.views[1])
    assert d.digest != definition(views=retyped).digest
    assert d.digest.startswith("sha256:") and len(d.digest) == 71


def test_entity_keys_take_records_one_record_or_columns() -> None:
    keys = EntityKeys(["driver_id", "city"])
    assert keys.prepare([{"driver_id": 1, "city": "a"}, {"driver_id": 2, "city": "b"}]) == (
        [{"driver_id": 1, "city": "a"}, {"driver_id": 2, "city": "b"}], 2)
    assert keys.prepare({"driver_id": 1, "city": "a"}) == ([{"driver_id": 1, "city": "a"}], 1)
    assert keys.prepare({"driver_id": [1, 2], "city": ["a", "b"]}) == (
        [{"driver_id": 1, "city": "a"}, {"driver_id": 2, "city": "b"}], 2)


@pytest.mark.parametrize(("payload", "message"), [
    ([{"driver_id": 1}], "row 0 lacks entity key(s) city"),
    ([{"driver_id": 1, "city": "a", "trips": 3}], "row 0 has field(s) trips that are not"),
    ([{"driver_id": None, "city": "a"}], "row 0: entity key(s) driver_id are null"),
    ({"driver_id": [1, 2], "city": ["a"]}, "non-empty and of one length"),
    ({"driver_id": [1]}, "the columns lacks entity key(s) city"),
    ([], "send entity keys (driver_id, city)"),
    ([1, 2], "row 0: expected a record of entity keys"),
    ("driver 1", "send entity keys"),
])
def test_entity_keys_refuse_what_is_missing_extra_or_null(payload: Any, message: str) -> None:
    with pytest.raises(InputError) as caught:
        EntityKeys(["driver_id", "city"]).prepare(payload)
    assert message in str(caught.value)
    assert caught.value.status_code == 422


def test_rows_with_no_value_of_any_feature_are_unknown_entities() -> None:
    values = {"driver_id": [1, 2, 3], "a": [0.5, None, None], "b": [None, None, 7]}
    assert unknown_rows(values, ["a", "b"]) == [1]
    assert unknown_rows(values, ["a"]) == [1, 2]
    err = unknown_entity([{"driver_id": i} for i in range(7)], "svc")
    assert err.status_code == 404
    assert "driver_id=0; driver_id=1" in str(err) and "(+2 more)" in str(err)


def test_the_features_section_is_checked_where_the_spec_is_read() -> None:
    body = {"name": "m", "train": "t.py:train", "data": {"path": "e.csv", "target": "y"}}
    spec = Spec.parse({**body, "features": {"repo": "feature_repo", "service": "s",
                                             "entities": ["driver_id"]}})
    assert spec.features == FeaturesSpec(repo="feature_repo", service="s",
                                         entities=["driver_id"])
    assert spec.features is not None and spec.features.timestamp == "event_timestamp"
    with pytest.raises(ConfigError, match=r"features\.entities: List should have at least 1"):
        Spec.parse({**body, "features": {"repo": "r", "service": "s", "entities": []}})
    with pytest.raises(ConfigError, match="entities names a column twice"):
        Spec.parse({**body, "features": {"repo": "r", "service": "s",
                                         "entities": ["a", "a"]}})
    with pytest.raises(ConfigError, match="timestamp column cannot also be an entity key"):
        Spec.parse({**body, "features": {"repo": "r", "service": "s", "entities": ["t"],
                                         "timestamp": "t"}})
    with pytest.raises(ConfigError, match=r"features\.store: Input should be 'feast'"):
        Spec.parse({**body, "features": {"store": "tecton", "repo": "r", "service": "s",
                                         "entities": ["a"]}})
    with pytest.raises(ConfigError, match="a graph spec trains nothing: remove features"):
        Spec.parse({"name": "g", "graph": {"kind": "sequence", "steps": ["a", "b"]},
                    "features": {"repo": "r", "service": "s", "entities": ["a"]}})


# -- the serving side: a FeatureRunner over a real model, its store a table in memory ---------
def feature_runner(table: dict[int, dict[str, Any]], calls: list[int]) -> Any:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from modelyard.adapters import get_adapter
    from modelyard.predictor import Predictor
    from modelyard.serving.batching import BatchPolicy
    from modelyard.serving.features import FeatureRunner

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"rate": rng.random(60), "trips": rng.integers(0, 50, 60).astype(float)})
    y = (X["rate"] > 0.5).astype(int).to_numpy()
    adapter = get_adapter("sklearn")
    model = LogisticRegression().fit(X, y)
    predictor = Predictor("m", 1, "sklearn", model, adapter, adapter.infer_signature(model, X, y))

    def fetch(rows: Any) -> dict[str, list[Any]]:
        calls.append(len(rows))
        found = [table.get(r["driver_id"], {}) for r in rows]
        return {"driver_id": [r["driver_id"] for r in rows],
                "rate": [f.get("rate") for f in found], "trips": [f.get("trips") for f in found]}

    return FeatureRunner(predictor, BatchPolicy(64, 0.05, 1024, 10.0), keys=["driver_id"],
                         service="svc", fetch=fetch)


def test_a_feature_runner_fetches_once_per_batch_and_fails_bad_requests_alone() -> None:
    import asyncio

    import numpy as np

    table = {1: {"rate": 0.9, "trips": 3}, 2: {"rate": 0.1, "trips": 40},
             3: {"rate": None, "trips": 5}}
    calls: list[int] = []
    runner = feature_runner(table, calls)
    assert runner.batcher.policy.inline_s == 0.0  # never on the event loop

    async def run() -> list[Any]:
        runner.start()
        futures = [runner.submit(*runner.prepare(p)) for p in
                   ([{"driver_id": 1}], [{"driver_id": 7}], [{"driver_id": 3}],
                    {"driver_id": [2, 1]})]
        out = await asyncio.gather(*futures, return_exceptions=True)
        await runner.close()
        return out

    ok1, unknown, null, ok2 = asyncio.run(run())
    assert calls == [5]
    want = runner.predictor.predict(np.array([[0.9, 3.0], [0.1, 40.0], [0.9, 3.0]]))
    assert ok1.predictions.tolist() == want[:1].tolist()
    assert ok2.predictions.tolist() == want[1:].tolist()
    np.testing.assert_array_equal(np.asarray(ok2.logged, dtype=float), [[0.1, 40.0], [0.9, 3.0]])
    assert unknown.status_code == 404 and "driver_id=7" in str(unknown)
    assert null.status_code == 422 and "rate" in str(null)


def test_a_rollout_re_prepares_for_a_candidate_that_takes_other_inputs() -> None:
    from modelyard.serving.rollouts import ActiveRollout
    from modelyard.serving.runner import Runner

    features = feature_runner({}, [])
    plain = Runner(features.predictor, features.batcher.policy)

    @dataclass
    class Deployment:  # the fields a rollout reads of its deployment record
        strategy: str = "shadow"
        steps: tuple[int, ...] = (100,)
        state: str = "progressing"
        step: int = 0
        id: int = 1
        model: str = "m"
        revision: int = 1
        every_s: float = 60.0
        step_started_at: Any = None
        rules: dict[str, Any] = field(default_factory=dict)
        key: str | None = None
        stable_version: int = 1
        candidate_version: int = 2

    assert not ActiveRollout(Deployment(), plain, features).same_inputs
    assert ActiveRollout(Deployment(), features, features).same_inputs
