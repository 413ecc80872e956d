"""Precomputed predictions in-process: the freshness decisions, the spec section, request
payloads by key, and the job (resume, refresh, CLI) on an embedded registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from click.testing import CliRunner

from modelyard.batch import ChunkDone
from modelyard.cli import main
from modelyard.errors import ConfigError, InputError
from modelyard.precompute.freshness import (
    Split,
    Stored,
    encode_answer,
    is_fresh,
    key_of,
    merge,
    source_of,
    split_rows,
)
from modelyard.precompute.job import precompute, read_manifest, section_of, should_restart
from modelyard.precompute.lookup import key_query
from modelyard.precompute.stores import open_store
from modelyard.predictor import load
from modelyard.registry import Registry
from modelyard.serving.precomputed import has_inputs, has_keys, keys_of, renumbered, rows_of
from modelyard.spec import Spec, parse_duration
from modelyard.testing.models import register_hgb, tabular_data
from modelyard.version_settings import VersionSettings

FEATURES = [f"f{i}" for i in range(4)]


# -- decisions ----------------------------------------------------------------------------------
def test_an_answer_is_fresh_only_within_its_ttl() -> None:
    assert is_fresh(100.0, 150.0, 60.0)
    assert not is_fresh(100.0, 160.0, 60.0)
    assert not is_fresh(300.0, 100.0, 60.0)  # a writer's clock far ahead does not keep it


def test_rows_split_into_fresh_answers_and_live_rows() -> None:
    scored = encode_answer(1, [0.2, 0.8], [0, 1])
    found = {"a": Stored(scored, 95.0), "b": Stored(scored, 10.0),
             "c": Stored(encode_answer(0), 95.0), "d": Stored(b"not json", 95.0)}
    split = split_rows(["a", "b", None, "zz", "c", "d"], found, 100.0, 60.0, scores=False)
    assert sorted(split.hits) == [0, 4] and split.live == [1, 2, 3, 5]
    assert split.source == "mixed"
    # asked for scores: an answer stored without them goes live
    assert split_rows(["a", "c"], found, 100.0, 60.0, scores=True).live == [1]
    assert split_rows(["a"], found, 100.0, 60.0, scores=False).source == "precomputed"
    assert split_rows(["zz"], found, 100.0, 60.0, scores=False).source == "live"


def test_merge_puts_rows_back_in_request_order() -> None:
    split = Split({1: {"prediction": "s", "scores": [0.1, 0.9]}}, [0, 2])
    predictions, scores = merge(3, split, ["l0", "l2"], [[1, 0], [0, 1]], scores_wanted=True)
    assert predictions == ["l0", "s", "l2"]
    assert scores == [[1, 0], [0.1, 0.9], [0, 1]]
    assert merge(3, split, ["l0", "l2"], None, scores_wanted=False)[1] is None
    assert (source_of(0, 0), source_of(2, 0), source_of(0, 2)) == ("live", "precomputed", "live")


def test_keys_are_text_and_unusable_keys_are_none() -> None:
    assert [key_of(v) for v in (42, 42.0, "x-1", 1.5)] == ["42", "42", "x-1", "1.5"]
    assert [key_of(v) for v in (None, True, [1], {"a": 1}, "", "k" * 501)] == [None] * 6


def test_payloads_by_key_records_and_columns() -> None:
    records = [{"id": 1, "f0": 0.5}, {"f0": 0.1}, {"id": "7", "f0": 0.2}]
    assert has_keys(records, "id") and not has_keys([{"f0": 1}], "id")
    assert keys_of(records, "id") == ["1", None, "7"]
    assert rows_of(records, [0, 2], "id", drop=True) == [{"f0": 0.5}, {"f0": 0.2}]
    columns = {"id": [1, 2], "f0": [0.5, 0.6]}
    assert keys_of(columns, "id") == ["1", "2"] and has_keys(columns, "id")
    assert rows_of(columns, [1], "id", drop=True) == {"f0": [0.6]}
    assert rows_of(columns, [1], "id", drop=False) == {"id": [2], "f0": [0.6]}
    assert keys_of({"id": 5, "f0": 1.0}, "id") == ["5"]  # one record
    assert has_inputs([{"f0": 1}], ["f0"]) and not has_inputs([{"f0": 1}, {}], ["f0"])
    assert has_inputs(columns, ["f0"]) and not has_inputs(columns, ["f1"])


def test_errors_of_the_live_rows_name_the_requests_rows() -> None:
    # the live part held request rows 1 and 3; its row 1 (request row 3) lacked f2
    exc = renumbered(InputError("record 1 has no 'f2'", [{"loc": [1, "f2"], "msg": "field "
                                                            "required"}]), [1, 3], "id")
    assert exc.errors == [{"loc": [3, "f2"], "msg": "field required"}]
    assert str(exc) == ("the rows without a fresh precomputed answer for their id must carry "
                        "the model's inputs: 3.f2: field required")
    columns = renumbered(InputError("x", [{"loc": ["f1", 0], "msg": "bad"}]), [2], "id")
    assert columns.errors == [{"loc": ["f1", 2], "msg": "bad"}]
    one = renumbered(InputError("x", [{"loc": ["f1"], "msg": "field required"}]), [4], "id")
    assert one.errors == [{"loc": [4, "f1"], "msg": "field required"}]


def test_the_input_row_query_binds_the_key() -> None:
    sql = key_query("SELECT * FROM people;", "id")
    assert sql == ("SELECT * FROM (SELECT * FROM people) AS modelyard_q "
                   "WHERE CAST(modelyard_q.id AS TEXT) = :key LIMIT 1")


# -- the spec section ---------------------------------------------------------------------------
def spec(**precompute: Any) -> Spec:
    return Spec.parse({"name": "m", "train": "t.py:train", "data": {"function": "t.py:load"},
                       "precompute": {"input": "data/*.parquet", "key": "id", **precompute}})


def test_durations_and_defaults() -> None:
    assert [parse_duration(v) for v in (90, "90", "90s", "15m", "24h", "7d", "1.5h")] == [
        90, 90, 90, 900, 86400, 604800, 5400]
    section = spec().precompute
    assert section is not None
    assert (section.store, section.ttl, section.on_promotion, section.schedule) == (
        "registry", 86400.0, True, None)
    assert spec(ttl="2h", store="redis://cache:6379/0").precompute.ttl == 7200  # type: ignore[union-attr]


@pytest.mark.parametrize(("fields", "named"), [
    ({"ttl": "soon"}, "precompute.ttl"),
    ({"ttl": 0}, "precompute.ttl"),
    ({"ttl": True}, "precompute.ttl"),
    ({"store": "memcached://x"}, "precompute.store"),
    ({"key": "id; DROP TABLE x"}, "precompute.key"),
    ({"schedule": "daily"}, "precompute.schedule"),
    ({"input": "sql:SELECT 1"}, "needs url"),
    ({"refresh": True}, "precompute.refresh"),
])
def test_bad_sections_name_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        spec(**fields)


def test_the_section_travels_with_the_version() -> None:
    settings = VersionSettings.from_spec(spec(ttl="1h"))
    back = VersionSettings.from_meta(orjson.loads(orjson.dumps(settings.to_meta())))
    assert back.precompute == settings.precompute
    assert VersionSettings.from_meta({}).precompute is None
    with pytest.raises(ConfigError, match=r"precompute\.ttl"):
        VersionSettings.from_meta({"precompute": {"input": "x", "key": "id", "ttl": "x"}})
    assert VersionSettings.from_meta({"precompute": {"input": "x"}}, strict=False
                                     ).precompute is None


# -- the job ------------------------------------------------------------------------------------
@pytest.fixture()
def reg(registry: Registry, tmp_path: Path) -> Registry:
    X, _ = tabular_data(n_rows=50, n_features=4, seed=1)
    df = pd.DataFrame(X, columns=FEATURES)
    df.insert(0, "id", np.arange(50, dtype=np.int64) + 1000)
    df.to_parquet(tmp_path / "population.parquet")
    register_hgb(registry, "tab", max_iter=5, n_features=4, meta={"precompute": {
        "input": str(tmp_path / "population.parquet"), "key": "id", "chunk_rows": 20}})
    return registry


class Stop(Exception):
    pass


def test_a_killed_run_resumes_and_a_finished_one_refreshes(reg: Registry,
                                                           tmp_path: Path) -> None:
    def kill_after_first(done: ChunkDone) -> None:
        raise Stop

    with pytest.raises(Stop):
        precompute(reg, "tab", on_chunk=kill_after_first)
    version = reg.resolve("tab")
    half = read_manifest(reg, version, section_of(version))
    assert half is not None and (half.chunks_done, half.complete) == (1, False)
    assert not should_restart(half) and should_restart(None)

    resumed = precompute(reg, "tab")
    assert (resumed.status, resumed.resumed_chunks, resumed.rows) == ("succeeded", 1, 50)
    refreshed = precompute(reg, "tab")
    assert (refreshed.resumed_chunks, refreshed.rows, refreshed.chunks) == (0, 50, 3)
    assert [r.status for r in reg.list_runs("tab")] == ["succeeded", "succeeded", "failed"]

    store = open_store(reg.db.url)
    try:
        stored = store.read("tab", 1, ["1000", "1049", "5"])
    finally:
        store.close()
    assert set(stored) == {"1000", "1049"}
    answer = orjson.loads(stored["1000"].answer)
    df = pd.read_parquet(tmp_path / "population.parquet").iloc[:1]
    live = load("tab", registry=reg).predict_full(df[FEATURES].to_numpy(), scores=True)
    assert answer["prediction"] == live.predictions.tolist()[0]
    assert answer["scores"] == pytest.approx(live.scores.tolist()[0])
    assert answer["classes"] == [0, 1]


def invoke(home: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def test_the_cli_precomputes_and_fails_with_its_exit_codes(reg: Registry,
                                                          tmp_path: Path) -> None:
    home = reg.settings.home
    done = invoke(home, "precompute", "tab", "--json")
    assert done.exit_code == 0, done.output
    assert orjson.loads(done.stdout)["rows"] == 50
    register_hgb(reg, "plain", max_iter=5, n_features=4)
    missing = invoke(home, "precompute", "plain")
    assert missing.exit_code == 2
    assert "registered without a precompute section" in missing.stderr
    assert invoke(home, "precompute", "nope").exit_code == 3
    # the sink is a batch output like any other
    batch = invoke(home, "batch", "plain", "-i", str(tmp_path / "population.parquet"),
                   "-o", "precomputed:registry", "--key", "id")
    assert batch.exit_code == 0, batch.output
    no_key = invoke(home, "batch", "plain", "-i", str(tmp_path / "population.parquet"),
                    "-o", "precomputed:registry", "--restart")
    assert no_key.exit_code == 2 and "exactly one --key" in no_key.stderr


# -- when the scheduler runs it (pure) ----------------------------------------------------------
def test_when_the_scheduler_precomputes() -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from modelyard.precompute.schedule import last_precompute, precompute_trigger

    section = spec().precompute
    quiet = spec(on_promotion=False).precompute
    assert section is not None and quiet is not None
    at = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    before_2am, after_2am = at.replace(hour=1), at.replace(hour=3)
    assert precompute_trigger(section, None, None, False, None, at) is None  # nothing served
    assert precompute_trigger(section, None, 3, False, None, at) == (
        "precompute:promotion: v3 has no precomputed answers yet")
    assert precompute_trigger(quiet, None, 3, False, None, at) is None
    assert precompute_trigger(section, "0 2 * * *", 3, True, before_2am, at) == (
        "precompute:schedule: 0 2 * * *")
    assert precompute_trigger(section, "0 2 * * *", 3, True, after_2am, at) is None
    assert precompute_trigger(quiet, "0 2 * * *", 3, False, None, at) is not None

    runs = [SimpleNamespace(kind="train", trigger="schedule: x", started_at=after_2am),
            SimpleNamespace(kind="batch", trigger="manual", started_at=after_2am),
            SimpleNamespace(kind="batch", trigger="precompute:manual", started_at=before_2am)]
    assert last_precompute(runs) == before_2am  # type: ignore[arg-type]
    assert last_precompute([]) is None
