"""Data checks end to end: ``modelyard train`` refuses a stale batch and a batch whose
distribution moved from the last accepted one (exit 5, one line per failed check), records
why on the run, and compares the next batch with the last one that passed; a Great
Expectations suite fails a batch as one more check."""

from __future__ import annotations

import json
import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from modelyard.cli import main
from modelyard.errors import DataValidationError
from modelyard.pipeline import run_pipeline
from modelyard.registry import Registry
from modelyard.spec import load_project

TRAIN = textwrap.dedent('''
    from sklearn.linear_model import LogisticRegression


    def train(X, y, params):
        return LogisticRegression().fit(X, y)
''')

PROJECT = textwrap.dedent('''
    models:
      fraud:
        train: train.py:train
        data: {path: batch.csv, target: label, features: [amount, age]}
        metrics: [accuracy]
        validation:
          min_rows: 50
          freshness: {column: ts, max_age: 24h}
          unique: [id]
          shift: {max_null_increase: 0.05, max_drift_share: 0.3}
          volume: {min_ratio: 0.5, max_ratio: 2.0, window: 5}
''')


def batch(n: int = 300, *, seed: int = 0, shift: float = 0.0, age: timedelta = timedelta(0),
          start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.normal(50 + shift, 10, n)
    newest = datetime.now(UTC) - age
    return pd.DataFrame({
        "id": np.arange(start, start + n),
        "ts": [(newest - timedelta(minutes=i)).isoformat() for i in range(n)],
        "amount": amount,
        "age": rng.integers(18, 80, n),
        "label": (amount + rng.normal(0, 5, n) > 50 + shift).astype(int),
    })


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.py").write_text(TRAIN)
    (folder / "modelyard.yaml").write_text(PROJECT)
    return folder


def run(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(tmp_path / "home"), *args])


def train(tmp_path: Path, project: Path, data: pd.DataFrame) -> Result:
    data.to_csv(project / "batch.csv", index=False)
    return run(tmp_path, "train", "fraud", "--project", str(project / "modelyard.yaml"))


def last_run(tmp_path: Path) -> dict:
    result = run(tmp_path, "runs", "fraud", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]


def test_a_stale_batch_fails_with_exit_5_and_the_run_shows_why(tmp_path: Path,
                                                               project: Path) -> None:
    result = train(tmp_path, project, batch(age=timedelta(days=3)))
    assert result.exit_code == 5, result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: training data failed 1 check: "
                                                     "freshness: the newest 'ts' is ")
    assert "older than the 1d allowed (validation.freshness.max_age)" in errors[0]
    recorded = last_run(tmp_path)
    assert recorded["status"] == "failed"
    assert "freshness" in recorded["failure_reason"]
    assert recorded["details"]["checks"]["failed"][0].startswith("freshness: ")
    listed = run(tmp_path, "runs", "fraud")
    assert "freshness" in listed.stdout
    shown = run(tmp_path, "runs", "show", recorded["id"][:8])
    assert "  - freshness: the newest 'ts'" in shown.stdout


def test_a_shifted_batch_fails_against_the_last_accepted_one(tmp_path: Path,
                                                             project: Path) -> None:
    first = train(tmp_path, project, batch(seed=0))
    assert first.exit_code == 0, first.output
    accepted = last_run(tmp_path)
    assert accepted["status"] == "succeeded"
    profile = accepted["details"]["batch_profile"]
    assert profile["rows"] == 300 and profile["columns"]["id"] == "int64"
    assert profile["reference"]["features"]["amount"]["type"] == "numeric"

    moved = batch(seed=1, shift=25.0, start=300)
    moved.loc[:60, "age"] = np.nan
    moved.loc[3, "id"] = 301
    result = train(tmp_path, project, moved)
    assert result.exit_code == 5, result.output
    report = [line.strip() for line in result.stderr.splitlines() if line.startswith("  - ")]
    message = result.stderr.splitlines()[0]
    assert message.startswith("error: training data failed 4 checks: column 'age'")
    everything = message + "\n" + "\n".join(report)
    assert "unique: key 'id': 1 row(s) repeat a key (e.g. id=301)" in everything
    assert "null shift: column 'age' is 20.3% missing, up from 0.0%" in everything
    assert "distribution shift: 1 of 2 feature(s) drifted" in everything
    assert "'amount' (ks " in everything
    assert last_run(tmp_path)["details"]["checks"]["failed"][-1].startswith(
        "distribution shift: ")

    # the refused batch is not an accepted one: the next batch is compared with the first
    again = train(tmp_path, project, batch(seed=2, start=600))
    assert again.exit_code == 0, again.output
    small = train(tmp_path, project, batch(100, seed=3, start=900))
    assert small.exit_code == 5, small.output
    assert ("volume: 100 rows is 0.33x the median 300 of the last 2 accepted batch(es), below "
            "the 0.5x allowed (validation.volume.min_ratio)") in small.stderr


def test_a_great_expectations_suite_fails_a_batch(tmp_path: Path, project: Path) -> None:
    _needs_great_expectations()
    suite = {"name": "fraud-suite", "expectations": [
        {"type": "expect_column_values_to_be_between",
         "kwargs": {"column": "amount", "min_value": 0, "max_value": 100}},
        {"type": "expect_column_values_to_be_in_set",
         "kwargs": {"column": "label", "value_set": [0, 1]}},
    ]}
    (project / "suite.json").write_text(json.dumps(suite))
    (project / "modelyard.yaml").write_text(PROJECT.replace(
        "      min_rows: 50\n", "      min_rows: 50\n      expectations: suite.json\n"))
    data = batch(seed=4)
    data.loc[[2, 7], "amount"] = [250.0, -3.0]
    result = train(tmp_path, project, data)
    assert result.exit_code == 5, result.output
    assert ("expectations 'fraud-suite': expect_column_values_to_be_between(column='amount', "
            "min_value=0.0, max_value=100.0): 2 unexpected value(s) (e.g. 250.0, -3.0) "
            "(validation.expectations)") in result.stderr
    assert "expect_column_values_to_be_in_set" not in result.stderr  # that one passed
    data.loc[[2, 7], "amount"] = [55.0, 45.0]
    assert train(tmp_path, project, data).exit_code == 0

    # an expectation Great Expectations does not know is refused, not silently left out
    suite["expectations"].append({"type": "expect_nonsense", "kwargs": {}})
    (project / "suite.json").write_text(json.dumps(suite))
    result = train(tmp_path, project, data)
    assert result.exit_code == 2, result.output
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "error: validation.expectations: suite 'fraud-suite': cannot use expect_nonsense({}): "
        "unknown type, or arguments it does not take"]


def test_the_accepted_profile_round_trips_on_both_databases(project: Path,
                                                           any_registry: Registry) -> None:
    """The pipeline itself, on SQLite and PostgreSQL: the profile stored in the run's JSON
    details is read back as the next run's history."""
    (project / "modelyard.yaml").write_text(PROJECT.replace(
        "      min_rows: 50\n", "      min_rows: 50\n      same_schema: true\n"))
    batch(seed=0).to_csv(project / "batch.csv", index=False)
    spec = load_project(project / "modelyard.yaml")["fraud"]
    first = run_pipeline(spec, any_registry)
    assert first.run.details["batch_profile"]["rows"] == 300
    assert any_registry.get_run(first.run.id).details["batch_profile"]["columns"] == {
        "amount": "float64", "age": "int64", "id": "int64", "ts": "string"}
    batch(seed=1, start=300).drop(columns=["age"]).assign(age=1.5).to_csv(
        project / "batch.csv", index=False)
    with pytest.raises(DataValidationError) as caught:
        run_pipeline(spec, any_registry)
    assert ("schema: column 'age' changed dtype from int64 to float64 since the previous "
            "accepted batch (validation.same_schema)") in caught.value.report
    failed = any_registry.get_run(caught.value.run_id)  # type: ignore[attr-defined]
    assert failed.status == "failed" and failed.details["checks"]["failed"] == \
        caught.value.report


def _needs_great_expectations() -> None:
    try:
        import great_expectations  # noqa: F401
    except ImportError:
        message = "Great Expectations is not installed (pip install 'modelyard[checks]')"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)
