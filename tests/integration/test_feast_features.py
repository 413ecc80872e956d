"""Features from a real Feast repository made here: a parquet offline store (FileSource), a
SQLite online store, ``apply`` and ``materialize`` through Feast's Python API.

Training rows get each feature as of the row's timestamp and never a later value; a model
trained through ``modelyard train`` records the feature service; the server fetches the online
values of a whole batch in one call, predicts on them and logs them; unknown entities and
missing keys are clear 4xx answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

DRIVERS = list(range(1, 41))
#: feature rows are written on these days of January 2024 (one row per driver per day)
WRITE_DAYS = [1, 5, 10, 15]
FEATURES = ["conv_rate", "trips"]


def _needs_feast() -> Any:
    from modelyard.errors import FrameworkMissingError
    from modelyard.features.feast_store import import_feast

    try:
        return import_feast()  # as modelyard imports it: the environment left as it was
    except FrameworkMissingError as exc:
        message = f"feast is not installed ({exc}): pip install 'modelyard[feast]'"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)


def _at(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, tzinfo=UTC)


def _value(driver: int, day: int) -> tuple[float, int]:
    """The feature values written for ``driver`` on ``day``: distinct for every write, so a
    training row shows exactly which write it was given."""
    return driver / 100 + day * 10.0, driver * 1000 + day


@dataclass
class Repo:
    path: Path
    service: str = "driver_activity"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """A Feast repository: driver stats written on :data:`WRITE_DAYS`, applied, and the
    latest values materialized into the SQLite online store."""
    feast = _needs_feast()
    import pandas as pd
    from feast.types import Float64, Int64

    root = tmp_path_factory.mktemp("feast_repo")
    (root / "data").mkdir()
    (root / "feature_store.yaml").write_text(textwrap.dedent("""\
        project: modelyard_test
        registry: data/registry.db
        provider: local
        online_store:
          type: sqlite
          path: data/online.db
        offline_store:
          type: file
        entity_key_serialization_version: 3
        """))
    rows = [{"driver_id": d, "event_timestamp": _at(day), "conv_rate": _value(d, day)[0],
             "trips": _value(d, day)[1], "created": _at(day)}
            for day in WRITE_DAYS for d in DRIVERS]
    pd.DataFrame(rows).to_parquet(root / "data" / "driver_stats.parquet")
    source = feast.FileSource(path=str(root / "data" / "driver_stats.parquet"),
                              timestamp_field="event_timestamp",
                              created_timestamp_column="created")
    driver = feast.Entity(name="driver", join_keys=["driver_id"],
                          value_type=feast.ValueType.INT64)
    view = feast.FeatureView(name="driver_stats", entities=[driver], ttl=timedelta(days=60),
                             schema=[feast.Field(name="conv_rate", dtype=Float64),
                                     feast.Field(name="trips", dtype=Int64)],
                             source=source, online=True)
    service = feast.FeatureService(name="driver_activity", features=[view])
    store = feast.FeatureStore(repo_path=str(root))
    store.apply([driver, view, service])
    store.materialize(_at(1) - timedelta(days=1), _at(WRITE_DAYS[-1]) + timedelta(hours=1))
    return Repo(root)


def entity_rows() -> Any:
    """Labelled events: each driver at hours between the writes (and one before any write)."""
    import pandas as pd

    rows = []
    for d in DRIVERS:
        for day, hour in [(1, 0), (3, 12), (5, 0), (9, 23), (12, 6), (20, 1)]:
            rows.append({"driver_id": d, "event_timestamp": _at(day, hour),
                         "label": int((d + day) % 3 == 0)})
    rows.append({"driver_id": 7, "event_timestamp": _at(1) - timedelta(hours=1), "label": 1})
    return pd.DataFrame(rows)


def _spec(repo: Repo) -> Any:
    from modelyard.spec import FeaturesSpec

    return FeaturesSpec(repo=str(repo.path), service=repo.service, entities=["driver_id"])


def test_a_training_row_never_gets_a_value_written_after_its_timestamp(
        repo: Repo, tmp_path: Path) -> None:
    from modelyard.pipeline.feature_data import load_feature_dataset
    from modelyard.spec import DataSpec

    events = entity_rows()
    events.to_parquet(tmp_path / "events.parquet")
    data = DataSpec(path=str(tmp_path / "events.parquet"), target="label")
    loaded = load_feature_dataset(data, _spec(repo), tmp_path)

    # the event an hour before any write has nothing to join: left out, counted
    assert loaded.unknown == 1
    kept = events.iloc[:-1].reset_index(drop=True)
    X, y = loaded.dataset.X, loaded.dataset.y
    assert list(X.columns) == FEATURES
    assert len(X) == len(kept)
    for i, event in kept.iterrows():
        ts = event["event_timestamp"]
        # the latest write at or before the event, never one after it
        day = max(d for d in WRITE_DAYS if _at(d) <= ts)
        assert (X["conv_rate"][i], X["trips"][i]) == _value(int(event["driver_id"]), day), i
        assert y[i] == event["label"]
    # a row exactly at a write's time gets that write; an hour before the next, still the old
    at_write = kept.index[(kept["driver_id"] == 3) & (kept["event_timestamp"] == _at(5))][0]
    assert X["trips"][at_write] == _value(3, 5)[1]
    before = kept.index[(kept["driver_id"] == 3) & (kept["event_timestamp"] == _at(9, 23))][0]
    assert X["trips"][before] == _value(3, 5)[1]

    definition = loaded.definition
    assert definition["service"] == repo.service
    assert definition["features"] == FEATURES
    assert definition["feature_views"] == [{"name": "driver_stats", "features": [
        {"name": "conv_rate", "dtype": "Float64"}, {"name": "trips", "dtype": "Int64"}]}]
    assert definition["digest"].startswith("sha256:") and len(definition["digest"]) == 71


def test_a_fairness_group_of_the_entity_rows_is_kept_but_never_trained_on(
        repo: Repo, tmp_path: Path) -> None:
    from modelyard.pipeline.feature_data import load_feature_dataset
    from modelyard.spec import DataSpec

    events = entity_rows()
    events["city"] = ["north" if d % 2 else "south" for d in events["driver_id"]]
    events.to_parquet(tmp_path / "events.parquet")
    data = DataSpec(path=str(tmp_path / "events.parquet"), target="label")
    dataset = load_feature_dataset(data, _spec(repo), tmp_path, ["city"]).dataset
    assert dataset.feature_names == FEATURES  # the server fetches these, and only these
    kept = events.iloc[:-1].reset_index(drop=True)  # the row before any write is left out
    assert dataset.groups["city"].tolist() == kept["city"].tolist()


def test_entity_rows_without_their_keys_or_timestamp_are_refused(
        repo: Repo, tmp_path: Path) -> None:
    from modelyard.errors import ConfigError, DataValidationError
    from modelyard.pipeline.feature_data import load_feature_dataset
    from modelyard.spec import DataSpec, FeaturesSpec

    entity_rows().drop(columns=["event_timestamp"]).to_parquet(tmp_path / "e.parquet")
    data = DataSpec(path=str(tmp_path / "e.parquet"), target="label")
    with pytest.raises(DataValidationError, match="lack event_timestamp"):
        load_feature_dataset(data, _spec(repo), tmp_path)
    entity_rows().to_parquet(tmp_path / "e.parquet")
    with pytest.raises(ConfigError, match="'nope' is not in the Feast registry"):
        load_feature_dataset(data, FeaturesSpec(repo=str(repo.path), service="nope",
                                                entities=["driver_id"]), tmp_path)
    with pytest.raises(ConfigError, match=r"holds no feature_store\.yaml"):
        load_feature_dataset(data, FeaturesSpec(repo="elsewhere", service="s",
                                                entities=["driver_id"]), tmp_path)


@pytest.fixture(scope="module")
def trained(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained from the service's features through ``modelyard train``; its home."""
    from click.testing import CliRunner

    from modelyard.cli import main

    project = tmp_path_factory.mktemp("project")
    entity_rows().to_csv(project / "events.csv", index=False)
    (project / "train.py").write_text(textwrap.dedent("""\
        from sklearn.linear_model import LogisticRegression

        def train(X, y, params):
            return LogisticRegression(max_iter=200).fit(X, y)
        """))
    (project / "modelyard.yaml").write_text(json.dumps({"models": {"drivers": {
        "train": "train.py:train",
        "data": {"path": "events.csv", "target": "label"},
        "features": {"repo": str(repo.path), "service": repo.service,
                     "entities": ["driver_id"]},
        "task": "classification", "metrics": ["accuracy"],
        "validation": {"min_rows": 10},
    }}}))
    home = project / "home"
    result = CliRunner().invoke(main, ["--home", str(home), "train", "drivers",
                                       "--project", str(project / "modelyard.yaml")])
    assert result.exit_code == 0, result.output
    return home


def test_a_model_trained_through_modelyard_train_records_its_feature_service(
        repo: Repo, trained: Path) -> None:
    from modelyard.config import Settings
    from modelyard.registry import Registry

    with Registry.open(Settings.from_env(home=trained)) as reg:
        version = reg.get_version("drivers", 1)
        assert version.get_signature().names == FEATURES
        recorded = version.meta["features"]
        sources = {s["kind"]: s for s in version.data_sources}
    # Feast's metrics module sets these for itself on import; left set, they would turn the
    # server's own /metrics (and every process it starts) to prometheus multi-process mode
    assert not {"PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"} & set(os.environ)
    # the lineage names the entity rows' file and the service, with its definition's digest
    assert sources["file"]["location"].endswith("events.csv")
    assert len(sources["file"]["digest"]) == 64
    assert sources["feast"]["location"] == repo.service
    assert "sha256:" + sources["feast"]["digest"] == recorded["digest"]
    assert recorded["store"] == "feast"
    assert recorded["service"] == repo.service
    assert recorded["repo"] == str(repo.path)
    assert recorded["entities"] == ["driver_id"]
    assert recorded["features"] == FEATURES
    assert recorded["feature_views"][0]["name"] == "driver_stats"
    assert recorded["digest"].startswith("sha256:")


def test_train_names_a_feature_service_feast_does_not_know_in_one_line(
        repo: Repo, trained: Path) -> None:
    from click.testing import CliRunner

    from modelyard.cli import main

    project = trained.parent
    spec = json.loads((project / "modelyard.yaml").read_text())
    spec["models"]["drivers"]["features"]["service"] = "nope"
    (project / "other.yaml").write_text(json.dumps(spec))
    result = CliRunner().invoke(main, ["--home", str(project / "home2"), "train", "drivers",
                                       "--project", str(project / "other.yaml")])
    assert result.exit_code == 2, result.output
    assert "feature service 'nope' is not in the Feast registry" in result.output


def _online(repo: Repo, drivers: list[int]) -> np.ndarray:
    """The online values of ``drivers`` (those materialized: the last write)."""
    return np.array([list(_value(d, WRITE_DAYS[-1])) for d in drivers], dtype=float)


def test_one_fetch_per_formed_batch_and_each_answer_from_the_online_values(
        repo: Repo, trained: Path) -> None:
    from modelyard.config import Settings
    from modelyard.features.definition import FeatureDefinition
    from modelyard.features.feast_store import OnlineFeatures
    from modelyard.predictor import load
    from modelyard.registry import Registry
    from modelyard.serving.batching import BatchPolicy
    from modelyard.serving.features import FeatureRunner

    with Registry.open(Settings.from_env(home=trained)) as reg:
        record = reg.get_version("drivers", 1)
        predictor = load("drivers:1", registry=reg)
    definition = FeatureDefinition.from_meta(record.meta)
    assert definition is not None
    online = OnlineFeatures(definition)
    calls: list[int] = []

    def fetch(rows: Any) -> dict[str, list[Any]]:
        calls.append(len(rows))
        return online.fetch(rows)

    # a long delay and room for all: the requests below form one batch
    runner = FeatureRunner(predictor, BatchPolicy(64, 0.2, 1024, 30.0), keys=["driver_id"],
                           service=definition.service, fetch=fetch)
    requests = [[{"driver_id": 1}, {"driver_id": 2}], [{"driver_id": 3}], [{"driver_id": 999}],
                {"driver_id": [4, 5, 6]}]

    async def run() -> list[Any]:
        runner.start()
        futures = [runner.submit(*runner.prepare(r)) for r in requests]
        out = await asyncio.gather(*futures, return_exceptions=True)
        await runner.close()
        return out

    answers = asyncio.run(run())
    assert calls == [7]  # every entity row of the batch in one call
    want = predictor.predict(_online(repo, [1, 2, 3, 4, 5, 6]))
    assert answers[0].predictions.tolist() == want[:2].tolist()
    assert answers[1].predictions.tolist() == want[2:3].tolist()
    assert answers[3].predictions.tolist() == want[3:].tolist()
    # the model's input is logged: the values fetched, not the keys sent
    np.testing.assert_array_equal(np.asarray(answers[0].logged, dtype=float),
                                  _online(repo, [1, 2]))
    # the unknown entity fails alone, with a 404 naming it
    assert getattr(answers[2], "status_code", None) == 404
    assert "driver_id=999" in str(answers[2])


def test_the_server_answers_entity_keys_from_the_online_store_and_logs_what_it_fetched(
        repo: Repo, trained: Path) -> None:
    import httpx

    from modelyard.config import Settings
    from modelyard.predictor import load
    from modelyard.registry import Registry
    from modelyard.testing import ServerProcess

    with Registry.open(Settings.from_env(home=trained)) as reg:
        predictor = load("drivers:1", registry=reg)
    with ServerProcess(trained) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/v1/models/drivers/predict", headers={"X-Request-Id": "feast-1"},
                   json={"records": [{"driver_id": 8}, {"driver_id": 9}], "scores": True})
        assert r.status_code == 200, r.text
        full = predictor.predict_full(_online(repo, [8, 9]), scores=True)
        assert r.json()["predictions"] == full.predictions.tolist()
        assert r.json()["scores"] == full.scores.tolist()

        # the prediction log holds the fetched features (it writes in the background)
        logged = _logged(c, "drivers", "feast-1")
        assert logged["inputs"] == {"columns": {
            "conv_rate": _online(repo, [8, 9])[:, 0].tolist(),
            "trips": _online(repo, [8, 9])[:, 1].tolist()}}, logged

        # an entity the online store does not know: 404 naming it
        r = c.post("/v1/models/drivers/predict", json={"records": [{"driver_id": 999}]})
        assert r.status_code == 404, r.text
        assert "driver_id=999" in r.json()["message"]
        # no entity key, or features sent instead of keys: 422 naming the fields
        r = c.post("/v1/models/drivers/predict", json={"records": [{"id": 8}]})
        assert r.status_code == 422, r.text
        assert "lacks entity key(s) driver_id" in r.json()["message"]
        r = c.post("/v1/models/drivers/predict",
                   json={"records": [{"driver_id": 8, "conv_rate": 0.5}]})
        assert r.status_code == 422, r.text
        assert "conv_rate" in r.json()["message"]


def _logged(c: Any, model: str, request_id: str) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 30
    while True:
        r = c.get(f"/api/v1/models/{model}/predictions/{request_id}")
        if r.status_code == 200 and r.json().get("predictions"):
            return r.json()["predictions"][0]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
