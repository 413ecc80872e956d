"""Batch data checks on generated frames: freshness, volume, null and distribution shift,
unique keys, schema changes; each fails with a sentence naming its spec field, and passes on
good data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from modelyard.errors import DataValidationError
from modelyard.pipeline import checks
from modelyard.pipeline.data import Dataset
from modelyard.pipeline.validation import check_all
from modelyard.spec import ValidationSpec
from modelyard.spec.training import FreshnessRule, VolumeRule

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def frame(n: int = 400, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(n),
        "amount": rng.normal(100 + shift, 10, n),
        "country": rng.choice(["FR", "DE", "ES"], n),
        "ts": pd.date_range(NOW - timedelta(hours=n), periods=n, freq="h"),
    })


def dataset(df: pd.DataFrame, features: tuple[str, ...] = ("amount", "country")) -> Dataset:
    others = df[[c for c in df.columns if c not in features]]
    return Dataset(df[list(features)], np.arange(len(df)) % 2, list(features), True,
                   others=others)


def columns(df: pd.DataFrame) -> dict[str, pd.Series]:
    return {str(c): df[c] for c in df.columns}


def rules(**fields) -> ValidationSpec:
    return ValidationSpec.model_validate({"min_rows": 1, **fields})


# -- freshness ----------------------------------------------------------------------------------
def test_freshness_passes_fresh_and_names_a_stale_batch():
    df = frame()  # newest row: one hour before NOW
    rule = FreshnessRule(column="ts", max_age="2h")
    assert checks.freshness_failures(columns(df), rule, now=NOW) == []
    [line] = checks.freshness_failures(columns(df), rule, now=NOW + timedelta(days=2))
    assert line.startswith("freshness: the newest 'ts' is 2026-12-06T11:00:00+00:00, 2.04d old")
    assert "older than the 2h allowed (validation.freshness.max_age)" in line


def test_freshness_reads_strings_and_epoch_seconds_and_reports_no_timestamps():
    rule = FreshnessRule(column="ts", max_age=3600)
    iso = {"ts": pd.Series(["2026-12-06T10:30:00Z", "2026-12-06T11:30:00+00:00", None])}
    assert checks.freshness_failures(iso, rule, now=NOW) == []
    epoch = {"ts": np.array([NOW.timestamp() - 7200.0])}
    assert "2h old" in checks.freshness_failures(epoch, rule, now=NOW)[0]
    assert checks.freshness_failures({"ts": pd.Series(["n/a", None])}, rule, now=NOW) == [
        "freshness: column 'ts' holds no timestamps (validation.freshness.column)"]
    assert checks.freshness_failures({}, rule, now=NOW) == [
        "freshness: column 'ts' is missing (validation.freshness.column)"]


def test_max_age_takes_durations_and_refuses_nonsense():
    assert FreshnessRule(column="ts", max_age="1d").max_age == 86400
    with pytest.raises(ValidationError, match="not a duration"):
        FreshnessRule(column="ts", max_age="soon")


# -- volume -------------------------------------------------------------------------------------
def test_volume_against_the_median_of_the_window():
    rule = VolumeRule(min_ratio=0.5, max_ratio=2.0, window=3)
    assert checks.volume_failures(100, [100, 90, 120, 5000], rule) == []  # 5000: outside window
    [low] = checks.volume_failures(40, [100, 90, 120], rule)
    assert low == ("volume: 40 rows is 0.40x the median 100 of the last 3 accepted batch(es), "
                   "below the 0.5x allowed (validation.volume.min_ratio)")
    [high] = checks.volume_failures(201, [100], rule)
    assert "above the 2x allowed (validation.volume.max_ratio)" in high
    assert checks.volume_failures(1, [], rule) == []  # no accepted batch yet: nothing to compare


def test_volume_refuses_max_below_min():
    with pytest.raises(ValidationError, match="max_ratio"):
        VolumeRule(min_ratio=2, max_ratio=1)


# -- shift --------------------------------------------------------------------------------------
def test_null_shift_names_each_column_that_lost_values():
    failures = checks.null_shift_failures({"a": 0.20, "b": 0.02, "new": 0.9},
                                          {"a": 0.01, "b": 0.0}, 0.05)
    assert failures == [
        "null shift: column 'a' is 20.0% missing, up from 1.0% in the previous accepted batch, "
        "more than the 5.0% allowed (validation.shift.max_null_increase)"]


def test_distribution_shift_uses_the_drift_tests_against_the_previous_profile():
    before = checks.batch_profile(columns(frame()), 400, frame()[["amount", "country"]])
    same = frame(seed=1)[["amount", "country"]]
    assert checks.drift_failures(before["reference"], same, 0.3) == []
    moved = frame(seed=1, shift=15.0)[["amount", "country"]]
    [line] = checks.drift_failures(before["reference"], moved, 0.3)
    assert line.startswith("distribution shift: 1 of 2 feature(s) drifted from the previous "
                           "accepted batch (50%, more than the 30% allowed, "
                           "validation.shift.max_drift_share): 'amount' (ks ")
    assert checks.drift_failures(before["reference"], moved, 0.5) == []


def test_shift_cannot_compare_when_no_feature_is_left():
    before = checks.batch_profile(columns(frame()), 400, frame()[["amount"]])
    [line] = checks.drift_failures(before["reference"], pd.DataFrame({"other": [1.0]}), 0.3)
    assert line.startswith("distribution shift: cannot compare with the previous accepted batch")


# -- unique keys --------------------------------------------------------------------------------
def test_unique_single_and_composite_keys():
    df = pd.DataFrame({"id": [1, 2, 3, 2, 2], "day": ["a", "a", "b", "b", "a"]})
    assert checks.unique_failures(columns(df), ["id"]) == [
        "unique: key 'id': 2 row(s) repeat a key (e.g. id=2) (validation.unique)"]
    assert checks.unique_failures(columns(df), ["id", "day"]) == [
        "unique: key (id, day): 1 row(s) repeat a key (e.g. id=2, day='a') (validation.unique)"]
    assert checks.unique_failures(columns(df.iloc[:3]), ["id", "day"]) == []
    assert checks.unique_failures(columns(df), ["id", "nope"]) == [
        "unique: key (id, nope): column(s) 'nope' missing (validation.unique)"]


def test_unique_spec_forms():
    assert rules(unique=["id"]).unique == [["id"]]
    assert rules(unique=["customer", "day"]).unique == [["customer", "day"]]
    assert rules(unique=[["id"], ["customer", "day"]]).unique == [["id"], ["customer", "day"]]
    assert rules(unique="id").unique == [["id"]]


# -- schema -------------------------------------------------------------------------------------
def test_schema_changes_are_named_column_by_column():
    before = checks.schema_of(columns(frame()))
    assert before == {"id": "int64", "amount": "float64", "country": "string", "ts": "datetime"}
    after = frame().drop(columns=["country"]).assign(id=lambda d: d["id"].astype(str), extra=1.5)
    assert checks.schema_failures(checks.schema_of(columns(after)), before) == [
        "schema: column 'extra' (float64) was added since the previous accepted batch "
        "(validation.same_schema)",
        "schema: column 'country' (string) was removed since the previous accepted batch "
        "(validation.same_schema)",
        "schema: column 'id' changed dtype from int64 to string since the previous accepted "
        "batch (validation.same_schema)",
    ]


# -- all together, as a run does ----------------------------------------------------------------
def test_check_all_returns_the_profile_and_compares_with_history():
    spec = rules(freshness={"column": "ts", "max_age": "2h"}, unique=["id"],
                 volume={"window": 2}, shift={}, same_schema=True)
    first = check_all(dataset(frame()), spec, now=NOW)  # no history: only its own checks
    assert first["rows"] == 400 and first["columns"]["ts"] == "datetime"
    assert set(first["nulls"]) == {"amount", "country", "id", "ts"}
    assert first["reference"]["kind"] == "table"
    assert check_all(dataset(frame(seed=2)), spec, history=[first], now=NOW)["rows"] == 400

    bad = frame(150, seed=3, shift=20.0)
    bad.loc[:40, "amount"] = np.nan
    bad.loc[5, "id"] = 6
    with pytest.raises(DataValidationError) as caught:
        check_all(dataset(bad), spec.model_copy(update={"max_missing": 1.0}), history=[first],
                  now=NOW + timedelta(hours=5))
    report = caught.value.report
    assert [line.split(":")[0] for line in report] == [
        "freshness", "unique", "volume", "null shift", "distribution shift"]
    assert caught.value.exit_code == 5


# -- Great Expectations suites (read here without it; run in tests/integration) -----------------
def test_a_suite_file_is_read_in_either_format_and_refused_when_it_is_not_one(tmp_path):
    from modelyard.errors import ConfigError
    from modelyard.pipeline.expectations import load_suite

    old = {"expectation_suite_name": "legacy", "expectations": [
        {"expectation_type": "expect_column_to_exist", "kwargs": {"column": "id"}}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_suite(tmp_path / "old.json") == {"name": "legacy", "expectations": [
        {"type": "expect_column_to_exist", "kwargs": {"column": "id"}, "meta": {}}]}
    (tmp_path / "none.json").write_text('{"name": "x"}')
    with pytest.raises(ConfigError, match="has no 'expectations' list"):
        load_suite(tmp_path / "none.json")
    (tmp_path / "typeless.json").write_text('{"expectations": [{"kwargs": {}}]}')
    with pytest.raises(ConfigError, match="every expectation needs a 'type'"):
        load_suite(tmp_path / "typeless.json")
    with pytest.raises(ConfigError, match="no suite file"):
        load_suite(tmp_path / "missing.json")
